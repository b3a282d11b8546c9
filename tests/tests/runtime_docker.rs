//! The scheduler's docker runtime against a real hostd: what it lists is what hostd
//! runs, and a slot it stops is gone from the engine.

use std::time::Duration;

use berth_scheduler::{
    clients::Clients,
    runtime::{HostTarget, HostdRuntime, Runtime},
};
use berth_tests::{docker, system::LocalBerth};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_runtime_lists_and_stops_what_hostd_runs() {
    let berth = LocalBerth::start(2).await;
    assert!(
        berth.wait_pool(2, Duration::from_secs(60)).await,
        "pool never filled"
    );
    let runtime = HostdRuntime::new(Clients::new(berth.host_secret.clone()));
    let host = HostTarget {
        host_id: berth.host_id.clone(),
        hostd_url: berth.hostd_url.clone(),
    };
    let listed = runtime
        .list_slots(std::slice::from_ref(&host))
        .await
        .unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        listed
            .iter()
            .all(|s| s.template == "default" && s.host_id == berth.host_id)
    );

    let gone = &listed[0].slot_id;
    runtime.stop_slot(&host, gone, "test").await.unwrap();
    assert!(
        docker::containers_labelled(berth_wire::labels::SLOT, gone).is_empty(),
        "the slot's containers remain"
    );
    let after = runtime
        .list_slots(std::slice::from_ref(&host))
        .await
        .unwrap();
    assert!(after.iter().all(|s| &s.slot_id != gone), "{after:?}");
    // Stopping it again is not an error.
    runtime.stop_slot(&host, gone, "again").await.unwrap();
    berth.stop().await;
}
