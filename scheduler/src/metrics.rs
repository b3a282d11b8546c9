//! `/metrics`: the scheduler's counters and levels in Prometheus's text format.

use std::sync::atomic::Ordering;

use crate::{Scheduler, store::StoreError};

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
    let views = s.host_views().await?;
    out.push_str("# HELP berth_hosts Hosts known, by health.\n# TYPE berth_hosts gauge\n");
    let healthy = views.iter().filter(|v| v.healthy).count();
    out.push_str(&format!(
        "berth_hosts{{state=\"healthy\"}} {healthy}\nberth_hosts{{state=\"dead\"}} {}\n",
        views.len() - healthy
    ));
    Ok(out)
}
