//! The fleet at a glance, for on-call: `GET /` (a page) and `GET /v1/fleet` (the
//! same data as JSON).
//!
//! The page answers "is the fleet healthy, and if not, where?" before anything
//! else: a banner says healthy, or lists each problem (a dead host, a host failing a
//! policy check, a pool below its target, the state being rebuilt); below are the
//! pools with ready/target bars, the hosts with capacity bars (ENI-trunk branches,
//! memory) and their failing checks with a link to each host's own status page, and
//! the latest events this replica saw (placements, failures, replacements, reaps).

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use super::*;
use berth_wire::html_escape as esc;

/// Events kept for the page.
pub const EVENTS_KEPT: usize = 50;

/// How long a pool may stay below its target (but not empty) before the page calls
/// it a problem: every hand-out dips it until the refill catches up.
pub const POOL_BELOW_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Something the scheduler did or found that on-call should see.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FleetEvent {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// Stable kind: `placed`, `acquire_failed`, `replaced`, `workspace_lost`,
    /// `claim_recovered`, `idle_reaped`, `expired`, `slot_start_failed`,
    /// `orphan_stopped`, `state_rebuilt`, `host_forgotten`.
    pub kind: &'static str,
    /// The workspace, slot or host concerned.
    pub subject: String,
    pub message: String,
}

/// The latest [`EVENTS_KEPT`] events of this replica, oldest first.
#[derive(Default)]
pub struct Events(std::sync::Mutex<VecDeque<FleetEvent>>);

impl Events {
    pub fn record(&self, kind: &'static str, subject: &str, message: String) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == EVENTS_KEPT {
            q.pop_front();
        }
        q.push_back(FleetEvent {
            at_ms: now_ms(),
            kind,
            subject: subject.to_owned(),
            message,
        });
    }

    pub fn latest(&self) -> Vec<FleetEvent> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// `GET /v1/fleet`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FleetView {
    pub generated_at_ms: u64,
    /// This replica, and whether it leads the reconcilers now.
    pub replica: String,
    pub leading: bool,
    /// No problem below.
    pub healthy: bool,
    /// One line per problem, worst first.
    pub problems: Vec<String>,
    /// `ok`, or `rebuilding` while the state is rebuilt after a store loss.
    pub state: &'static str,
    pub workspaces: WorkspaceCounts,
    pub pools: Vec<PoolLevel>,
    pub hosts: Vec<FleetHost>,
    /// Newest last.
    pub events: Vec<FleetEvent>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
pub struct WorkspaceCounts {
    pub ready: usize,
    pub claiming: usize,
    pub lost: usize,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PoolLevel {
    pub template: String,
    pub ready: usize,
    pub target: usize,
    /// Slots being started for the pool by this replica.
    pub starting: usize,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FleetHost {
    pub host_id: String,
    pub instance_type: String,
    /// hostd's own status page.
    pub status_url: String,
    pub healthy: bool,
    pub last_seen_ms_ago: u64,
    pub draining: bool,
    pub compliant: bool,
    pub failing_checks: Vec<FailingCheck>,
    pub branches_used: u32,
    pub branch_limit: u32,
    /// What placement counts: the slots' reservations, of what the system leaves.
    pub memory_reserved_mib: u64,
    pub memory_available_mib: u64,
    pub slots_warm: usize,
    pub slots_claimed: usize,
    /// Slots hostd reports unhealthy or withdrawn.
    pub slots_failing: usize,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FailingCheck {
    pub name: String,
    pub detail: String,
}

impl Scheduler {
    /// Everything the fleet page shows.
    pub async fn fleet_view(&self) -> Result<FleetView, StoreError> {
        let store = &self.inner.store;
        let records = store.hosts().await?;
        let views = self.views_of(&records);
        let sizes = store.pool_sizes().await?;
        let warm = store.warm_slots().await?;
        let workspaces = store.workspaces().await?;
        let marked = store.state_marked().await?;
        let now = now_ms();

        let mut counts = WorkspaceCounts::default();
        let mut claimed: HashMap<&str, usize> = HashMap::new();
        for r in &workspaces {
            match r.status {
                WorkspaceStatus::Ready => counts.ready += 1,
                WorkspaceStatus::Claiming => counts.claiming += 1,
                WorkspaceStatus::Lost => counts.lost += 1,
            }
            if r.status != WorkspaceStatus::Lost {
                *claimed.entry(r.workspace.host_id.as_str()).or_default() += 1;
            }
        }
        let mut warm_on: HashMap<&str, usize> = HashMap::new();
        for w in &warm {
            *warm_on.entry(w.host_id.as_str()).or_default() += 1;
        }

        let mut problems = Vec::new();
        if !marked {
            problems.push(
                "state being rebuilt from the hosts (the store lost its data or is new): creates answer 503 state_rebuilding"
                    .to_owned(),
            );
        }
        let mut hosts: Vec<FleetHost> = records
            .iter()
            .zip(&views)
            .map(|(h, v)| {
                let r = &h.report;
                let failing_checks: Vec<FailingCheck> = r
                    .checks
                    .iter()
                    .filter(|c| !c.ok)
                    .map(|c| FailingCheck {
                        name: c.name.clone(),
                        detail: c.detail.clone(),
                    })
                    .collect();
                let last_seen_ms_ago = now.saturating_sub(h.last_seen_ms);
                if !v.healthy {
                    problems.push(format!(
                        "host {} dead: no heartbeat for {} s",
                        r.host_id,
                        last_seen_ms_ago / 1000
                    ));
                } else if !r.compliant {
                    let names: Vec<&str> = failing_checks.iter().map(|c| c.name.as_str()).collect();
                    problems.push(format!(
                        "host {} not compliant (nothing placed there): {}",
                        r.host_id,
                        if names.is_empty() {
                            "see its page".to_owned()
                        } else {
                            names.join(", ")
                        }
                    ));
                }
                let slots_failing = r
                    .slots
                    .iter()
                    .filter(|s| {
                        matches!(
                            s.state,
                            berth_wire::SlotState::Unhealthy | berth_wire::SlotState::Withdrawn
                        )
                    })
                    .count();
                FleetHost {
                    host_id: r.host_id.clone(),
                    instance_type: r.instance_type.clone(),
                    status_url: format!("{}/", r.hostd_url.trim_end_matches('/')),
                    healthy: v.healthy,
                    last_seen_ms_ago,
                    draining: v.draining,
                    compliant: r.compliant,
                    failing_checks,
                    branches_used: r.branches_used,
                    branch_limit: r.branch_limit,
                    memory_reserved_mib: r.memory_reserved_mib,
                    memory_available_mib: r.memory_total_mib.saturating_sub(r.memory_system_mib),
                    slots_warm: warm_on.get(r.host_id.as_str()).copied().unwrap_or(0),
                    slots_claimed: claimed.get(r.host_id.as_str()).copied().unwrap_or(0),
                    slots_failing,
                }
            })
            .collect();
        // Worst first: dead, then not compliant, then the rest by name.
        hosts.sort_by_key(|h| (h.healthy, h.compliant, h.host_id.clone()));
        let pools = self.pool_levels(&sizes);
        // A pool dips below its target with every hand-out until the refill
        // catches up: a problem when it is empty, or below for a minute.
        {
            let mut below = self
                .inner
                .pools_below_since
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            below.retain(|t, _| pools.iter().any(|p| &p.template == t && p.ready < p.target));
            for p in &pools {
                if p.ready >= p.target {
                    continue;
                }
                let since = *below
                    .entry(p.template.clone())
                    .or_insert_with(std::time::Instant::now);
                if p.ready == 0 {
                    problems.push(format!(
                        "pool {} empty (target {}, {} starting): creates start cold",
                        p.template, p.target, p.starting
                    ));
                } else if since.elapsed() >= POOL_BELOW_GRACE {
                    problems.push(format!(
                        "pool {} below target for {} s: {} of {} ready ({} starting)",
                        p.template,
                        since.elapsed().as_secs(),
                        p.ready,
                        p.target,
                        p.starting
                    ));
                }
            }
        }
        Ok(FleetView {
            generated_at_ms: now,
            replica: self.inner.replica_id.clone(),
            leading: self.inner.leading.load(Ordering::Relaxed) > 0,
            healthy: problems.is_empty(),
            problems,
            state: if marked { "ok" } else { "rebuilding" },
            workspaces: counts,
            pools,
            hosts,
            events: self.inner.events.latest(),
        })
    }

    /// Each pool's level: ready (from `sizes`, the store's), target, starting.
    pub fn pool_levels(&self, sizes: &BTreeMap<String, usize>) -> Vec<PoolLevel> {
        self.pool_targets()
            .into_iter()
            .map(|(template, target)| PoolLevel {
                ready: sizes.get(&template).copied().unwrap_or(0),
                starting: self.refilling(&template),
                template,
                target,
            })
            .collect()
    }

    /// Notes an event for the fleet page.
    pub(crate) fn event(&self, kind: &'static str, subject: &str, message: String) {
        self.inner.events.record(kind, subject, message);
    }
}

/// A bar `used` of `total`, with a class by how full it is (or by `bad` for pools,
/// where empty is the problem).
fn bar(used: u64, total: u64, label: &str, low_is_bad: bool) -> String {
    let pct = used
        .saturating_mul(100)
        .checked_div(total)
        .unwrap_or(0)
        .min(100);
    let class = if low_is_bad {
        match pct {
            100 => "ok",
            50..=99 => "warn",
            _ => "bad",
        }
    } else {
        match pct {
            0..=79 => "ok",
            80..=94 => "warn",
            _ => "bad",
        }
    };
    format!(
        "<div class=bar title=\"{label}\"><div class=\"fill {class}\" style=\"width:{pct}%\"></div>\
         <span>{label}</span></div>",
        label = esc(label)
    )
}

fn ago(ms: u64) -> String {
    match ms / 1000 {
        s if s < 60 => format!("{s} s ago"),
        s if s < 3600 => format!("{} min ago", s / 60),
        s => format!("{} h ago", s / 3600),
    }
}

fn time_of(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em;margin:0 0 .4em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
.banner{padding:.7em 1em;border-radius:6px;font-weight:600}\
.banner.ok{background:#e3f4e1;color:#1b5e20}.banner.bad{background:#fde2e1;color:#8e1c16}\
.banner ul{margin:.3em 0 0;font-weight:400}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.35em .6em;border-bottom:1px solid #ddd;vertical-align:top}\
th{background:#f4f4f4;font-weight:600}\
.bar{position:relative;width:14em;height:1.3em;background:#eee;border-radius:3px;overflow:hidden}\
.bar span{position:absolute;left:.4em;top:0;font-size:.85em;line-height:1.3em}\
.fill{height:100%}.fill.ok{background:#9ccc9c}.fill.warn{background:#f2c57c}.fill.bad{background:#ef9a9a}\
.dead{color:#b71c1c;font-weight:600}.warnt{color:#a15c00}.muted{color:#777}\
.check{color:#b71c1c}";

/// The fleet page: `view` as HTML, every value escaped.
pub fn page(view: &FleetView) -> String {
    let mut out = String::with_capacity(8 * 1024);
    out.push_str(&format!(
        "<!doctype html><html><head><meta charset=utf-8><title>Berth fleet</title>\
         <meta http-equiv=refresh content=5><style>{STYLE}</style></head><body>\
         <h1>Berth fleet</h1>"
    ));
    if view.healthy {
        out.push_str("<div class=\"banner ok\">Fleet healthy: every host alive and compliant, every pool at its target.</div>");
    } else {
        out.push_str(&format!(
            "<div class=\"banner bad\">{} problem{}<ul>",
            view.problems.len(),
            if view.problems.len() == 1 { "" } else { "s" }
        ));
        for p in &view.problems {
            out.push_str(&format!("<li>{}</li>", esc(p)));
        }
        out.push_str("</ul></div>");
    }
    let alive = view.hosts.iter().filter(|h| h.healthy).count();
    out.push_str(&format!(
        "<p>{} workspaces in use ({} being claimed, {} lost) · {} of {} hosts alive · \
         state {} · replica {}{}</p>",
        view.workspaces.ready,
        view.workspaces.claiming,
        view.workspaces.lost,
        alive,
        view.hosts.len(),
        esc(view.state),
        esc(&view.replica),
        if view.leading { " (leader)" } else { "" }
    ));

    out.push_str(
        "<h2>Pools</h2><table><tr><th>template</th><th>ready / target</th><th>starting</th></tr>",
    );
    if view.pools.is_empty() {
        out.push_str("<tr><td colspan=3 class=muted>no pools configured</td></tr>");
    }
    for p in &view.pools {
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.template),
            bar(
                p.ready as u64,
                p.target as u64,
                &format!("{} / {}", p.ready, p.target),
                true
            ),
            p.starting
        ));
    }
    out.push_str("</table>");

    out.push_str(
        "<h2>Hosts</h2><table><tr><th>host</th><th>state</th><th>ENI-trunk branches</th>\
         <th>memory reserved</th><th>slots (warm · claimed · failing)</th><th>failing checks</th></tr>",
    );
    if view.hosts.is_empty() {
        out.push_str("<tr><td colspan=6 class=muted>no host has reported</td></tr>");
    }
    for h in &view.hosts {
        let state = if !h.healthy {
            format!(
                "<span class=dead>DEAD</span> <span class=muted>(last heartbeat {})</span>",
                ago(h.last_seen_ms_ago)
            )
        } else if !h.compliant {
            "<span class=dead>not compliant</span>".to_owned()
        } else if h.draining {
            "<span class=warnt>draining</span>".to_owned()
        } else {
            "alive".to_owned()
        };
        let checks = if h.failing_checks.is_empty() {
            "<span class=muted>none</span>".to_owned()
        } else {
            h.failing_checks
                .iter()
                .map(|c| {
                    format!(
                        "<div class=check><b>{}</b>: {}</div>",
                        esc(&c.name),
                        esc(&c.detail)
                    )
                })
                .collect()
        };
        out.push_str(&format!(
            "<tr><td><a href=\"{url}\">{id}</a><br><span class=muted>{itype}</span></td><td>{state}</td>\
             <td>{branches}</td><td>{memory}</td><td>{warm} · {claimed} · {failing}</td><td>{checks}</td></tr>",
            url = esc(&h.status_url),
            id = esc(&h.host_id),
            itype = esc(&h.instance_type),
            branches = bar(
                u64::from(h.branches_used),
                u64::from(h.branch_limit),
                &format!("{} / {}", h.branches_used, h.branch_limit),
                false
            ),
            memory = bar(
                h.memory_reserved_mib,
                h.memory_available_mib,
                &format!("{} / {} MiB", h.memory_reserved_mib, h.memory_available_mib),
                false
            ),
            warm = h.slots_warm,
            claimed = h.slots_claimed,
            failing = h.slots_failing,
        ));
    }
    out.push_str("</table>");

    out.push_str("<h2>Recent events <span class=muted>(this replica, newest first)</span></h2><table><tr><th>time (UTC)</th><th>kind</th><th>subject</th><th>what</th></tr>");
    if view.events.is_empty() {
        out.push_str("<tr><td colspan=4 class=muted>nothing yet</td></tr>");
    }
    for e in view.events.iter().rev() {
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            time_of(e.at_ms),
            esc(e.kind),
            esc(&e.subject),
            esc(&e.message)
        ));
    }
    out.push_str("</table><p class=muted>Refreshes every 5 s. The same data: <code>GET /v1/fleet</code>.</p></body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> FleetView {
        FleetView {
            generated_at_ms: 0,
            replica: "r-1".into(),
            leading: true,
            healthy: false,
            problems: vec!["host <h2> dead: no heartbeat for 9 s".into()],
            state: "ok",
            workspaces: WorkspaceCounts::default(),
            pools: vec![PoolLevel {
                template: "default".into(),
                ready: 1,
                target: 4,
                starting: 2,
            }],
            hosts: vec![FleetHost {
                host_id: "h<1>".into(),
                instance_type: "m6i.large".into(),
                status_url: "http://10.0.0.5:7701/".into(),
                healthy: true,
                last_seen_ms_ago: 500,
                draining: false,
                compliant: false,
                failing_checks: vec![FailingCheck {
                    name: "host_rules_v4".into(),
                    detail: "chain <missing>".into(),
                }],
                branches_used: 9,
                branch_limit: 10,
                memory_reserved_mib: 100,
                memory_available_mib: 1000,
                slots_warm: 3,
                slots_claimed: 6,
                slots_failing: 0,
            }],
            events: vec![FleetEvent {
                at_ms: 3_600_000 + 61_000,
                kind: "placed",
                subject: "ws-1".into(),
                message: "warm on h1".into(),
            }],
        }
    }

    #[test]
    fn the_page_shows_problems_bars_checks_and_links_all_escaped() {
        let html = page(&view());
        assert!(
            html.contains("1 problem<ul><li>host &lt;h2&gt; dead"),
            "{html}"
        );
        assert!(html.contains("<a href=\"http://10.0.0.5:7701/\">h&lt;1&gt;</a>"));
        assert!(html.contains("<b>host_rules_v4</b>: chain &lt;missing&gt;"));
        // 9 of 10 branches: a bar at 90 %, warned; memory at 10 %, fine.
        assert!(
            html.contains("class=\"fill warn\" style=\"width:90%\""),
            "{html}"
        );
        assert!(html.contains("class=\"fill ok\" style=\"width:10%\""));
        // A pool at a quarter of its target is the problem colour.
        assert!(html.contains("class=\"fill bad\" style=\"width:25%\""));
        assert!(html.contains("<td>01:01:01</td><td>placed</td><td>ws-1</td>"));
        assert!(!html.contains("<h2> dead"), "unescaped host name");
        // No header cell is empty.
        assert!(!html.contains("<th></th>"));
    }

    #[test]
    fn a_healthy_fleet_says_so_and_empty_tables_say_why() {
        let mut v = view();
        v.healthy = true;
        v.problems.clear();
        v.hosts.clear();
        v.events.clear();
        let html = page(&v);
        assert!(html.contains("Fleet healthy"));
        assert!(html.contains("no host has reported"));
        assert!(html.contains("nothing yet"));
    }

    #[test]
    fn events_keep_the_latest_only() {
        let e = Events::default();
        for i in 0..(EVENTS_KEPT + 5) {
            e.record("placed", &format!("ws-{i}"), String::new());
        }
        let kept = e.latest();
        assert_eq!(kept.len(), EVENTS_KEPT);
        assert_eq!(kept[0].subject, "ws-5");
    }
}
