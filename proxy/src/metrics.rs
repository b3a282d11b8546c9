//! Counters for `/metrics` (Prometheus text format).
//!
//! Labels are route names, status classes, refusal codes and secret names — all
//! from the configuration or from a fixed set, so a client cannot grow the label
//! space, and no value ever comes from a header.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// All counters.
#[derive(Default)]
pub struct Metrics {
    /// (route, status class) → requests answered by an upstream.
    requests: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// code → requests the proxy refused or failed itself.
    refused: Mutex<BTreeMap<&'static str, u64>>,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// TCP connects to upstreams actually attempted (after every check passed).
    pub upstream_connects: Arc<AtomicU64>,
    /// Response headers dropped because they echoed an injected credential.
    pub echoes_dropped: AtomicU64,
    /// Credentials overwritten in response bodies.
    pub echoes_redacted: Arc<AtomicU64>,
    pub connections_rejected: AtomicU64,
    pub connections_open: AtomicU64,
    pub tunnels: AtomicU64,
}

/// `2xx`… for a status.
pub fn class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

impl Metrics {
    pub fn answered(&self, route: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        match m.get_mut(&(route.to_owned(), class(status))) {
            Some(n) => *n += 1,
            None => {
                m.insert((route.to_owned(), class(status)), 1);
            }
        }
    }

    pub fn refused(&self, code: &'static str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    /// Renders everything; `secrets` is (name, stale, failures, age seconds, has value).
    pub fn render(&self, secrets: &[(String, bool, u64, Option<u64>, bool)]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP berth_proxy_requests_total Requests forwarded, by route and upstream status class.\n\
             # TYPE berth_proxy_requests_total counter"
        );
        for ((route, class), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "berth_proxy_requests_total{{route=\"{route}\",status=\"{class}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP berth_proxy_refused_total Requests the proxy refused or could not forward, by error code.\n\
             # TYPE berth_proxy_refused_total counter"
        );
        let refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        let total: u64 = refused.values().sum();
        for (code, n) in refused.iter() {
            let _ = writeln!(out, "berth_proxy_refused_total{{code=\"{code}\"}} {n}");
        }
        let _ = writeln!(out, "berth_proxy_refused_all_total {total}");
        for (name, help, v) in [
            (
                "berth_proxy_request_bytes_total",
                "Request body bytes sent upstream.",
                &self.bytes_in,
            ),
            (
                "berth_proxy_response_bytes_total",
                "Response body bytes sent to the workspace.",
                &self.bytes_out,
            ),
            (
                "berth_proxy_upstream_connects_total",
                "TCP connections to upstreams attempted after all address checks passed.",
                &self.upstream_connects,
            ),
            (
                "berth_proxy_echoed_credentials_dropped_total",
                "Response headers dropped because they echoed an injected credential.",
                &self.echoes_dropped,
            ),
            (
                "berth_proxy_echoed_credentials_redacted_total",
                "Occurrences of an injected credential overwritten in response bodies.",
                &self.echoes_redacted,
            ),
            (
                "berth_proxy_connections_rejected_total",
                "Client connections closed because max_connections was reached.",
                &self.connections_rejected,
            ),
            (
                "berth_proxy_tunnels_total",
                "CONNECT tunnels opened.",
                &self.tunnels,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP berth_proxy_connections_open Client connections open.\n\
             # TYPE berth_proxy_connections_open gauge\n\
             berth_proxy_connections_open {}",
            self.connections_open.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP berth_proxy_secret_stale 1 when the last refresh of a secret failed (the last good value is kept).\n\
             # TYPE berth_proxy_secret_stale gauge"
        );
        for (name, stale, _, _, _) in secrets {
            let _ = writeln!(
                out,
                "berth_proxy_secret_stale{{secret=\"{name}\"}} {}",
                u8::from(*stale)
            );
        }
        let _ = writeln!(
            out,
            "# HELP berth_proxy_secret_available 1 when a value of the secret is held.\n\
             # TYPE berth_proxy_secret_available gauge"
        );
        for (name, _, _, _, has) in secrets {
            let _ = writeln!(
                out,
                "berth_proxy_secret_available{{secret=\"{name}\"}} {}",
                u8::from(*has)
            );
        }
        let _ = writeln!(
            out,
            "# HELP berth_proxy_secret_refresh_failures_total Failed refreshes per secret.\n\
             # TYPE berth_proxy_secret_refresh_failures_total counter"
        );
        for (name, _, failures, _, _) in secrets {
            let _ = writeln!(
                out,
                "berth_proxy_secret_refresh_failures_total{{secret=\"{name}\"}} {failures}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP berth_proxy_secret_age_seconds Seconds since the last successful refresh.\n\
             # TYPE berth_proxy_secret_age_seconds gauge"
        );
        for (name, _, _, age, _) in secrets {
            if let Some(age) = age {
                let _ = writeln!(
                    out,
                    "berth_proxy_secret_age_seconds{{secret=\"{name}\"}} {age}"
                );
            }
        }
        out
    }
}
