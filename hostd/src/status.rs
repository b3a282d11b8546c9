//! What on-call sees: the status page (`/`), its JSON (`/status`) and `/metrics`,
//! rendered from one [`StatusView`] so the three never disagree.
//!
//! The page is plain HTML with no script and no external resource (it is read on a
//! host that may be half-broken, through an SSH tunnel): the verdict first, then
//! capacity, every check with its reason, the slots, and the last events.

use std::collections::BTreeMap;

use berth_wire::{HostEvent, HostReport, SlotState, html_escape as esc};
use serde::Serialize;

use crate::netfilter::EgressPolicy;

/// Everything the status endpoints show.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    #[serde(flatten)]
    pub report: HostReport,
    pub version: String,
    /// Where the host rules are applied (`host`, a namespace path), or `None` when
    /// configured off.
    pub host_rules: Option<String>,
    #[serde(serialize_with = "egress_json")]
    pub egress: EgressPolicy,
    /// Newest first.
    pub events: Vec<HostEvent>,
    pub counters: BTreeMap<String, u64>,
}

fn egress_json<S: serde::Serializer>(p: &EgressPolicy, s: S) -> Result<S::Ok, S::Error> {
    serde_json::json!({
        "workspace_uid": p.workspace_uid,
        "proxy_uid": p.proxy_uid,
        "proxy_task_credentials": p.proxy_task_credentials,
    })
    .serialize(s)
}

fn ago(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

fn bar(label: &str, used: u64, total: u64, unit: &str) -> String {
    let pct = (used * 100).checked_div(total).unwrap_or(100).min(100);
    let colour = if pct >= 90 {
        "#c0392b"
    } else if pct >= 70 {
        "#d68910"
    } else {
        "#2e86c1"
    };
    format!(
        "<div class=cap><span class=l>{label}</span><span class=bar><span style=\"width:{pct}%;background:{colour}\"></span></span>\
         <span>{used} of {total}{unit} ({pct}%)</span></div>"
    )
}

fn state_name(s: SlotState) -> &'static str {
    match s {
        SlotState::Starting => "starting",
        SlotState::Ready => "ready",
        SlotState::Unhealthy => "unhealthy",
        SlotState::Withdrawn => "withdrawn",
    }
}

/// The HTML status page.
pub fn page(v: &StatusView) -> String {
    let r = &v.report;
    let now = r.reported_at_ms;
    let failing: Vec<_> = r.checks.iter().filter(|c| !c.ok).collect();
    let verdict = if r.checks.is_empty() {
        "<p class=\"verdict bad\">NOT COMPLIANT: no check has run yet</p>".to_owned()
    } else if failing.is_empty() {
        format!(
            "<p class=\"verdict ok\">COMPLIANT: all {} checks pass</p>",
            r.checks.len()
        )
    } else {
        format!(
            "<p class=\"verdict bad\">NOT COMPLIANT: {} of {} checks failing ({}); the scheduler places nothing here</p>",
            failing.len(),
            r.checks.len(),
            esc(&failing
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "))
        )
    };
    let checks: String = r
        .checks
        .iter()
        .map(|c| {
            format!(
                "<tr class={cls}><td>{name}</td><td class=res>{res}</td><td>{detail}</td><td>{when}</td></tr>",
                cls = if c.ok { "ok" } else { "bad" },
                name = esc(&c.name),
                res = if c.ok { "pass" } else { "FAIL" },
                detail = esc(&c.detail),
                when = ago(now, c.checked_at_ms),
            )
        })
        .collect();
    let host_rules = match &v.host_rules {
        Some(target) => format!("host rules applied in: {}", esc(target)),
        None => "host rules: <b>off</b> (configuration); bridge-mode metadata blocks are not managed by this hostd".to_owned(),
    };
    let allocatable = r.memory_total_mib.saturating_sub(r.memory_system_mib);
    let overcommit = if allocatable == 0 {
        "no memory left for slots after the system reserve".to_owned()
    } else {
        format!(
            "{:.2}× of allocatable memory",
            r.memory_limit_total_mib as f64 / allocatable as f64
        )
    };
    let capacity_note = format!(
        "<p>branch limit: {src}{warn} · memory: {total} MiB total, {sys} MiB kept for the system, \
         {alloc} MiB allocatable · slots reserve {res} MiB (what placement counts) and may grow to \
         {lim} MiB together (their limits): {overcommit}</p>",
        src = esc(&r.branch_limit_source),
        warn = if r.branch_limit_source.starts_with("unknown") {
            " <b class=warn>(set --branch-limit to the instance's real figure)</b>"
        } else {
            ""
        },
        total = r.memory_total_mib,
        sys = r.memory_system_mib,
        alloc = allocatable,
        res = r.memory_reserved_mib,
        lim = r.memory_limit_total_mib,
    );
    let over: Vec<_> = r
        .slots
        .iter()
        .filter_map(|s| {
            s.memory_idle_mib
                .filter(|idle| *idle > s.memory_mib)
                .map(|idle| (idle, s.memory_mib))
        })
        .collect();
    let capacity_note = if let Some((idle, reserved)) = over.iter().max() {
        format!(
            "{capacity_note}<p class=warn>{} slots use more memory at idle than their template \
             reserves (up to {idle} MiB against {reserved} MiB): placement under-counts this host; \
             raise --memory-reservation-mib</p>",
            over.len()
        )
    } else {
        capacity_note
    };
    let slots: String = r
        .slots
        .iter()
        .map(|s| {
            format!(
                "<tr class={cls}><td>{id}</td><td>{t}</td><td>{st}</td><td>{age}</td><td>{res} / {lim} MiB</td><td>{idle}</td><td>{rules}</td><td>{reason}</td><td>{url}</td></tr>",
                cls = match s.state {
                    SlotState::Ready => "ok",
                    SlotState::Starting => "",
                    _ => "bad",
                },
                id = esc(&s.slot_id),
                t = esc(&s.template),
                st = state_name(s.state),
                age = if s.created_at_ms == 0 { "-".into() } else { ago(now, s.created_at_ms) },
                res = s.memory_mib,
                lim = s.memory_limit_mib,
                idle = s.memory_idle_mib.map(|m| format!("{m} MiB")).unwrap_or_else(|| "-".into()),
                rules = s.rules_verified_at_ms.map(|t| format!("verified {}", ago(now, t))).unwrap_or_else(|| "not verified".into()),
                reason = esc(s.reason.as_deref().unwrap_or("")),
                url = esc(&s.agent_url),
            )
        })
        .collect();
    let events: String = if v.events.is_empty() {
        "<tr><td colspan=4>no events since hostd started</td></tr>".to_owned()
    } else {
        v.events
            .iter()
            .map(|e| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    ago(now, e.at_ms),
                    esc(&e.kind),
                    esc(e.subject.as_deref().unwrap_or("")),
                    esc(&e.message)
                )
            })
            .collect()
    };
    format!(
        "<!doctype html><html><head><meta charset=utf-8><title>hostd {id}</title>\
         <meta http-equiv=refresh content=5><style>\
         body{{font:14px/1.4 sans-serif;margin:1.5em;color:#222}}\
         table{{border-collapse:collapse;margin-bottom:1.5em}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}}\
         tr.bad td{{background:#fdecea}}tr.ok td.res{{color:#1e8449}}\
         .verdict{{font-size:18px;font-weight:bold;padding:6px 10px}}.verdict.ok{{background:#e9f7ef;color:#1e8449}}.verdict.bad{{background:#fdecea;color:#c0392b}}\
         .cap{{margin:4px 0}}.cap .l{{display:inline-block;width:9em}}.bar{{display:inline-block;width:300px;height:12px;background:#eee;margin-right:8px;vertical-align:middle}}\
         .bar span{{display:block;height:12px}}.warn{{color:#c0392b}}</style></head><body>\
         <h1>hostd {id}</h1>\
         <p>version {ver} · runtime {rt} · instance type {it} · API {url}</p>{verdict}\
         <h2>Capacity</h2>{branches}{memory}{capacity_note}\
         <h2>Checks</h2><table><tr><th>check</th><th>result</th><th>detail</th><th>last run</th></tr>{checks}</table>\
         <p>egress lock: workspace uid {wu} reaches loopback only; proxy uid {pu} may go out; \
         ECS credential endpoint for the proxy: {cred} · {host_rules}</p>\
         <h2>Slots ({n})</h2><table><tr><th>slot</th><th>template</th><th>state</th><th>age</th>\
         <th>memory reserved / limit</th><th>idle use</th><th>egress rules</th><th>reason</th><th>agent</th></tr>{slots}</table>\
         <h2>Last events</h2><table><tr><th>when</th><th>kind</th><th>subject</th><th>what</th></tr>{events}</table>\
         </body></html>",
        id = esc(&r.host_id),
        ver = esc(&v.version),
        rt = esc(&r.runtime),
        it = esc(&r.instance_type),
        url = esc(&r.hostd_url),
        branches = bar(
            "branches",
            u64::from(r.branches_used),
            u64::from(r.branch_limit),
            ""
        ),
        memory = bar(
            "memory reserved",
            r.memory_reserved_mib,
            allocatable,
            " MiB"
        ),
        wu = v.egress.workspace_uid,
        pu = v.egress.proxy_uid,
        cred = if v.egress.proxy_task_credentials {
            "open"
        } else {
            "closed"
        },
        n = r.slots.len(),
    )
}

/// Prometheus text: slots by state, capacity, each check's state and failures, and
/// the journal's counters.
pub fn metrics(r: &HostReport, counters: &BTreeMap<String, u64>) -> String {
    let mut out = String::new();
    out.push_str(
        "# HELP berth_hostd_slots Slots on this host by state.\n# TYPE berth_hostd_slots gauge\n",
    );
    for st in [
        SlotState::Starting,
        SlotState::Ready,
        SlotState::Unhealthy,
        SlotState::Withdrawn,
    ] {
        let n = r.slots.iter().filter(|s| s.state == st).count();
        out.push_str(&format!(
            "berth_hostd_slots{{state=\"{}\"}} {n}\n",
            state_name(st)
        ));
    }
    out.push_str(&format!(
        "# HELP berth_hostd_branch_limit Slots (awsvpc tasks) this host may run.\n# TYPE berth_hostd_branch_limit gauge\n\
         berth_hostd_branch_limit {}\n\
         # HELP berth_hostd_memory_reserved_mib Memory reserved by slots (what placement counts).\n# TYPE berth_hostd_memory_reserved_mib gauge\n\
         berth_hostd_memory_reserved_mib {}\n\
         # HELP berth_hostd_memory_limit_total_mib Sum of the slots' memory limits.\n# TYPE berth_hostd_memory_limit_total_mib gauge\n\
         berth_hostd_memory_limit_total_mib {}\n\
         # HELP berth_hostd_memory_allocatable_mib Memory offered to slots (total less the system reserve).\n# TYPE berth_hostd_memory_allocatable_mib gauge\n\
         berth_hostd_memory_allocatable_mib {}\n\
         # HELP berth_hostd_compliant 1 when every policy check passes.\n# TYPE berth_hostd_compliant gauge\n\
         berth_hostd_compliant {}\n\
         # HELP berth_hostd_check_ok Each policy check's last result (1 pass, 0 fail).\n# TYPE berth_hostd_check_ok gauge\n",
        r.branch_limit,
        r.memory_reserved_mib,
        r.memory_limit_total_mib,
        r.memory_total_mib.saturating_sub(r.memory_system_mib),
        u8::from(r.compliant),
    ));
    for c in &r.checks {
        out.push_str(&format!(
            "berth_hostd_check_ok{{check=\"{}\"}} {}\n",
            c.name,
            u8::from(c.ok)
        ));
    }
    let over = r
        .slots
        .iter()
        .filter(|s| s.memory_idle_mib.is_some_and(|idle| idle > s.memory_mib))
        .count();
    out.push_str(&format!(
        "# HELP berth_hostd_slots_over_reservation Slots that used more memory at idle than their template reserves.\n\
         # TYPE berth_hostd_slots_over_reservation gauge\nberth_hostd_slots_over_reservation {over}\n"
    ));
    out.push_str("# HELP berth_hostd_check_failures_total Failed runs of each policy check.\n# TYPE berth_hostd_check_failures_total counter\n");
    for c in &r.checks {
        let n = counters
            .get(&format!("check_failures:{}", c.name))
            .copied()
            .unwrap_or(0);
        out.push_str(&format!(
            "berth_hostd_check_failures_total{{check=\"{}\"}} {n}\n",
            c.name
        ));
    }
    out.push_str("# HELP berth_hostd_audit_failures_total Containers failing each audit check.\n# TYPE berth_hostd_audit_failures_total counter\n");
    for (k, n) in counters {
        if let Some(check) = k.strip_prefix("audit_failures:") {
            out.push_str(&format!(
                "berth_hostd_audit_failures_total{{check=\"{check}\"}} {n}\n"
            ));
        }
    }
    for (kind, help) in [
        (
            "rules_reapplied",
            "Egress or host rules found altered or missing and restored.",
        ),
        (
            "rules_applied",
            "Egress locks applied to slots found after a restart.",
        ),
        ("container_stopped", "Containers stopped by the audit."),
        (
            "slot_withdrawn",
            "Slots withdrawn because their lock-down could not be proven.",
        ),
    ] {
        let n = counters.get(kind).copied().unwrap_or(0);
        out.push_str(&format!(
            "# HELP berth_hostd_{kind}_total {help}\n# TYPE berth_hostd_{kind}_total counter\nberth_hostd_{kind}_total {n}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_wire::{PolicyCheck, SlotInfo};

    fn view() -> StatusView {
        StatusView {
            report: HostReport {
                host_id: "h<1>".into(),
                runtime: "docker".into(),
                hostd_url: "http://127.0.0.1:7701".into(),
                instance_type: "local".into(),
                branch_limit: 10,
                branch_limit_source: "unknown instance type: conservative default".into(),
                branches_used: 2,
                memory_total_mib: 1000,
                memory_system_mib: 200,
                memory_reserved_mib: 64,
                memory_limit_total_mib: 1200,
                draining: false,
                compliant: false,
                slots: vec![SlotInfo {
                    slot_id: "s1".into(),
                    template: "default".into(),
                    host_id: "h1".into(),
                    agent_url: "http://172.18.0.2:9000".into(),
                    state: SlotState::Withdrawn,
                    memory_mib: 32,
                    memory_limit_mib: 320,
                    memory_idle_mib: Some(40),
                    reason: Some("egress lock cannot be proven: <x>".into()),
                    rules_verified_at_ms: Some(9_000),
                    created_at_ms: 1_000,
                    claim_secret: None,
                }],
                reported_at_ms: 10_000,
                checks: vec![
                    PolicyCheck {
                        name: "slot_rules".into(),
                        ok: false,
                        detail: "1 of 1 slots withdrawn".into(),
                        checked_at_ms: 9_000,
                    },
                    PolicyCheck {
                        name: "container_audit".into(),
                        ok: true,
                        detail: "2 running containers audited".into(),
                        checked_at_ms: 9_000,
                    },
                ],
            },
            version: "0.1.0".into(),
            host_rules: None,
            egress: EgressPolicy::default(),
            events: vec![HostEvent {
                at_ms: 9_500,
                kind: "slot_withdrawn".into(),
                subject: Some("s1".into()),
                message: "withdrawn".into(),
            }],
            counters: [
                ("check_failures:slot_rules".to_owned(), 3),
                ("audit_failures:no_cap_add".to_owned(), 1),
            ]
            .into(),
        }
    }

    #[test]
    fn the_page_says_what_fails_and_why_escaped() {
        let html = page(&view());
        assert!(
            html.contains("NOT COMPLIANT: 1 of 2 checks failing (slot_rules)"),
            "{html}"
        );
        assert!(html.contains("<td class=res>FAIL</td><td>1 of 1 slots withdrawn</td>"));
        assert!(html.contains("hostd h&lt;1&gt;"));
        assert!(html.contains("egress lock cannot be proven: &lt;x&gt;"));
        assert!(
            html.contains(
                "<td>withdrawn</td><td>9 s ago</td><td>32 / 320 MiB</td><td>40 MiB</td><td>verified 1 s ago</td>"
            ),
            "{html}"
        );
        assert!(
            html.contains("1 slots use more memory at idle than their template reserves (up to 40 MiB against 32 MiB)"),
            "{html}"
        );
        assert!(
            html.contains("800 MiB allocatable") && html.contains("1.50× of allocatable memory"),
            "{html}"
        );
        assert!(html.contains("set --branch-limit"));
        assert!(html.contains("64 of 800 MiB (8%)"));
        assert!(html.contains("host rules: <b>off</b>"));
        assert!(html.contains("2 of 10 (20%)"));
    }

    #[test]
    fn metrics_count_failures_per_check_and_audit_check() {
        let m = metrics(&view().report, &view().counters);
        assert!(m.contains("berth_hostd_check_ok{check=\"slot_rules\"} 0\n"));
        assert!(m.contains("berth_hostd_check_failures_total{check=\"slot_rules\"} 3\n"));
        assert!(m.contains("berth_hostd_audit_failures_total{check=\"no_cap_add\"} 1\n"));
        assert!(m.contains("berth_hostd_slots{state=\"withdrawn\"} 1\n"));
        assert!(m.contains("berth_hostd_compliant 0\n"));
        assert!(m.contains("berth_hostd_memory_limit_total_mib 1200\n"));
        assert!(m.contains("berth_hostd_memory_allocatable_mib 800\n"));
        assert!(m.contains("berth_hostd_slots_over_reservation 1\n"));
    }

    #[test]
    fn the_json_keeps_the_report_fields_at_the_top() {
        let v = serde_json::to_value(view()).unwrap();
        assert_eq!(v["host_id"], "h<1>");
        assert_eq!(v["egress"]["proxy_uid"], 2000);
        assert_eq!(v["events"][0]["kind"], "slot_withdrawn");
    }
}
