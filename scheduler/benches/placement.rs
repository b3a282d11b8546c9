//! Placement decisions per second over 1,000 hosts held in memory (target in
//! DESIGN.md: ≥ 50,000/s). Run: `cargo bench -p berth-scheduler --bench placement`.
//!
//! Each decision is what the scheduler does for one slot: filter the fleet to
//! healthy, compliant, non-draining hosts with a free branch and enough memory, and
//! pick by the configured strategy. Host capacities are varied and change between
//! decisions (one host's free branches drop), so no result is reused.

use std::time::Instant;

use berth_scheduler::placement::{HostView, Strategy, choose_index};

fn fleet(n: usize) -> Vec<HostView> {
    // A small deterministic generator: no dependency, same fleet every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| HostView {
            host_id: format!("i-{i:017x}"),
            healthy: next() % 50 != 0,
            compliant: next() % 100 != 0,
            draining: next() % 40 == 0,
            branches_free: u32::try_from(next() % 61).unwrap_or(0),
            memory_free_mib: next() % 32_768,
        })
        .collect()
}

fn main() {
    let hosts_n = 1_000;
    let decisions: u32 = 200_000;
    for strategy in [Strategy::Spread, Strategy::BinPack] {
        let mut hosts = fleet(hosts_n);
        let mut placed = 0u64;
        let start = Instant::now();
        for i in 0..decisions {
            if let Some(i) = choose_index(&hosts, 512, strategy) {
                placed += 1;
                hosts[i].branches_free -= 1;
            }
            // Capacity comes back as workspaces end, so the fleet never runs dry.
            let j = usize::try_from(i).unwrap_or(0) % hosts_n;
            hosts[j].branches_free = (hosts[j].branches_free + 1).min(60);
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "placement {strategy:?}: {decisions} decisions over {hosts_n} hosts in {secs:.3} s \
             = {:.0} decisions/s ({placed} placed)",
            f64::from(decisions) / secs
        );
    }
}
