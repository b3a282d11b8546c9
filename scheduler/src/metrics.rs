//! `/metrics`: the scheduler's counters and levels in Prometheus's text format, and
//! the create latency histogram.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{Scheduler, store::StoreError};

/// Upper bounds (seconds) of the create latency buckets: sub-millisecond for warm
/// creates, up to the 30 s deadline for cold ones.
pub const BUCKETS: [f64; 16] = [
    0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

/// How a create ended, one histogram series each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A warm slot was claimed for it.
    Warm,
    /// A slot was started for it.
    Cold,
    /// The conversation already had a workspace.
    Existing,
    /// An error answered.
    Error,
}

impl From<berth_wire::Source> for Outcome {
    fn from(s: berth_wire::Source) -> Self {
        match s {
            berth_wire::Source::Warm => Self::Warm,
            berth_wire::Source::Cold => Self::Cold,
        }
    }
}

impl Outcome {
    const ALL: [Outcome; 4] = [Self::Warm, Self::Cold, Self::Existing, Self::Error];

    fn label(self) -> &'static str {
        match self {
            Self::Warm => "warm",
            Self::Cold => "cold",
            Self::Existing => "existing",
            Self::Error => "error",
        }
    }
}

/// One cumulative histogram per [`Outcome`], lock-free.
#[derive(Default)]
pub struct AcquireHistogram {
    series: [Series; 4],
}

#[derive(Default)]
struct Series {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl AcquireHistogram {
    pub fn record(&self, outcome: Outcome, took: Duration) {
        let s = &self.series[outcome as usize];
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            s.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        s.count.fetch_add(1, Ordering::Relaxed);
        s.sum_us.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The histogram in Prometheus's text format.
    pub fn render(&self, out: &mut String) {
        let name = "berth_acquire_duration_seconds";
        out.push_str(&format!(
            "# HELP {name} POST /v1/workspaces, from the request read to the answer, by outcome.\n\
             # TYPE {name} histogram\n"
        ));
        for o in Outcome::ALL {
            let s = &self.series[o as usize];
            let mut cumulative = 0;
            for (i, le) in BUCKETS.iter().enumerate() {
                cumulative += s.buckets[i].load(Ordering::Relaxed);
                out.push_str(&format!(
                    "{name}_bucket{{outcome=\"{}\",le=\"{le}\"}} {cumulative}\n",
                    o.label()
                ));
            }
            let count = s.count.load(Ordering::Relaxed);
            out.push_str(&format!(
                "{name}_bucket{{outcome=\"{l}\",le=\"+Inf\"}} {count}\n\
                 {name}_sum{{outcome=\"{l}\"}} {}\n{name}_count{{outcome=\"{l}\"}} {count}\n",
                s.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
                l = o.label()
            ));
        }
    }
}

/// Everything `/metrics` shows.
pub async fn render(s: &Scheduler) -> Result<String, StoreError> {
    let c = s.counters();
    let mut out = String::new();
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
        ));
    };
    counter(
        &mut out,
        "berth_acquired_warm_total",
        "Workspaces handed out from a warm pool.",
        c.acquired_warm.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_acquired_cold_total",
        "Workspaces started for the request.",
        c.acquired_cold.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_acquire_failed_total",
        "Acquires that failed.",
        c.acquire_failed.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_replaced_lost_total",
        "Workspaces replaced because their host died.",
        c.replaced_lost.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_slots_started_total",
        "Slots started on hosts.",
        c.slots_started.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_slot_start_failed_total",
        "Slot starts that failed.",
        c.slot_start_failed.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_reaped_total",
        "Workspaces removed at expiry.",
        c.reaped.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_agent_address_refused_total",
        "Slots discarded because their agent address was outside --agent-networks.",
        c.agent_address_refused.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_host_refusals_total",
        "Slots a host refused (ECS failures[]); placement then tried another host.",
        c.host_refusals.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_orphans_stopped_total",
        "Running slots no state knew, stopped after the orphan grace period.",
        c.orphans_stopped.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_scale_out_requested_total",
        "Warm slots started through the runtime's scale-out path (no host had room).",
        c.scale_out_requested.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_pool_shrunk_total",
        "Warm slots stopped because their pool was above its target.",
        c.pool_shrunk.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_claims_recovered_total",
        "Bindings left Claiming by a replica that died mid-claim, removed with their slot.",
        c.claims_recovered.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_workspaces_lost_total",
        "Workspaces marked lost because their host's heartbeats stopped.",
        c.workspaces_lost.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_hosts_forgotten_total",
        "Hosts removed from the state after their retention without a heartbeat.",
        c.hosts_forgotten.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_idle_reaped_total",
        "Workspaces released after their idle timeout (no stream, process or egress).",
        c.idle_reaped.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_state_rebuilds_total",
        "Times the leader rebuilt the state from the hosts (the store was fresh or had lost its data).",
        c.state_rebuilds.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_checkpoints_total",
        "Checkpoints stored (on request, before a release, before reaping).",
        c.checkpoints.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_checkpoints_failed_total",
        "Checkpoints that failed (refused by the agent, the host or the store); the workspace was kept unless it expired.",
        c.checkpoints_failed.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_restores_total",
        "New workspaces handed out with their conversation's latest checkpoint restored.",
        c.restores.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_restores_failed_total",
        "Restores refused (archive missing, corrupt, over the limits or hostile); the slot was discarded.",
        c.restores_failed.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "berth_fenced_writes_total",
        "Leader writes the state store refused because this replica's lease had moved on.",
        c.fenced_writes.load(Ordering::Relaxed),
    );
    for (name, v) in s.runtime_metrics() {
        counter(
            &mut out,
            name,
            "Counted by the runtime (see docs/OPERATIONS.md).",
            v,
        );
    }
    out.push_str(
        "# HELP berth_pool_ready Warm slots ready per template.\n# TYPE berth_pool_ready gauge\n",
    );
    for (t, n) in s.store().pool_sizes().await? {
        out.push_str(&format!("berth_pool_ready{{template=\"{t}\"}} {n}\n"));
    }
    s.acquire_histogram().render(&mut out);
    let views = s.host_views().await?;
    out.push_str("# HELP berth_hosts Hosts known, by health.\n# TYPE berth_hosts gauge\n");
    let healthy = views.iter().filter(|v| v.healthy).count();
    out.push_str(&format!(
        "berth_hosts{{state=\"healthy\"}} {healthy}\nberth_hosts{{state=\"dead\"}} {}\n",
        views.len() - healthy
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_cumulative_per_outcome() {
        let h = AcquireHistogram::default();
        h.record(Outcome::Warm, Duration::from_micros(400));
        h.record(Outcome::Warm, Duration::from_micros(900));
        h.record(Outcome::Warm, Duration::from_secs(60));
        h.record(Outcome::Cold, Duration::from_secs(3));
        let mut out = String::new();
        h.render(&mut out);
        let line = |s: &str| out.lines().any(|l| l == s);
        assert!(line(
            "berth_acquire_duration_seconds_bucket{outcome=\"warm\",le=\"0.00025\"} 0"
        ));
        assert!(line(
            "berth_acquire_duration_seconds_bucket{outcome=\"warm\",le=\"0.0005\"} 1"
        ));
        assert!(line(
            "berth_acquire_duration_seconds_bucket{outcome=\"warm\",le=\"0.001\"} 2"
        ));
        assert!(line(
            "berth_acquire_duration_seconds_bucket{outcome=\"warm\",le=\"30\"} 2"
        ));
        assert!(line(
            "berth_acquire_duration_seconds_bucket{outcome=\"warm\",le=\"+Inf\"} 3"
        ));
        assert!(line(
            "berth_acquire_duration_seconds_count{outcome=\"warm\"} 3"
        ));
        assert!(line(
            "berth_acquire_duration_seconds_bucket{outcome=\"cold\",le=\"2.5\"} 0"
        ));
        assert!(line(
            "berth_acquire_duration_seconds_bucket{outcome=\"cold\",le=\"5\"} 1"
        ));
        assert!(line(
            "berth_acquire_duration_seconds_count{outcome=\"error\"} 0"
        ));
    }
}
