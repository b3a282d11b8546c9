//! Proof that the test bed uses the real parts: Debian's redis-server through the
//! `redis` crate, moto's ECS through `aws-sdk-ecs`, and the Docker engine through
//! `bollard`, with everything cleaned up afterwards.

use std::collections::HashMap;

use berth_tests::{docker, moto::MotoServer, redis_server::RedisServer};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};

#[tokio::test]
async fn redis_commands_go_through_the_redis_crate_to_a_real_server() {
    let server = RedisServer::start().unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("berth:k")
        .arg("v1")
        .query_async(&mut con)
        .await
        .unwrap();
    let got: String = redis::cmd("GET")
        .arg("berth:k")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(got, "v1");
    let n: i64 = redis::cmd("INCRBY")
        .arg("berth:n")
        .arg(41)
        .query_async(&mut con)
        .await
        .unwrap();
    let n2: i64 = redis::cmd("INCR")
        .arg("berth:n")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!((n, n2), (41, 42));
    // It is the server we started: it reports our port.
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(
        info.contains(&format!("tcp_port:{}", server.port())),
        "{info}"
    );
}

#[tokio::test]
async fn ecs_calls_go_through_aws_sdk_ecs_to_moto() {
    let moto = MotoServer::start().unwrap();
    let ecs = moto.ecs();
    let cluster = ecs
        .create_cluster()
        .cluster_name("berth-test")
        .send()
        .await
        .unwrap();
    let arn = cluster
        .cluster()
        .and_then(|c| c.cluster_arn())
        .unwrap_or_default();
    assert!(arn.ends_with(":cluster/berth-test"), "{arn}");

    use aws_sdk_ecs::types::{ContainerDefinition, NetworkMode, PortMapping};
    let container = |name: &str, port: i32, user: &str| {
        ContainerDefinition::builder()
            .name(name)
            .image(format!("berth/{name}:local"))
            .memory(128)
            .user(user)
            .readonly_root_filesystem(true)
            .port_mappings(PortMapping::builder().container_port(port).build())
            .build()
    };
    let td = ecs
        .register_task_definition()
        .family("berth-workspace")
        .network_mode(NetworkMode::Awsvpc)
        .container_definitions(container("workspace-agent", 9000, "1000"))
        .container_definitions(container("credential-proxy", 8080, "2000"))
        .send()
        .await
        .unwrap();
    let td = td.task_definition().unwrap();
    assert_eq!(td.family(), Some("berth-workspace"));
    assert_eq!(td.network_mode(), Some(&NetworkMode::Awsvpc));
    assert_eq!(
        td.task_role_arn(),
        None,
        "workspace tasks carry no task role"
    );
    let names: Vec<_> = td
        .container_definitions()
        .iter()
        .filter_map(|c| c.name())
        .collect();
    assert_eq!(names, ["workspace-agent", "credential-proxy"]);

    // A typed error comes back for a cluster that does not exist.
    let err = ecs
        .list_tasks()
        .cluster("no-such-cluster")
        .send()
        .await
        .unwrap_err();
    let service_err = err.into_service_error();
    assert!(
        service_err.is_cluster_not_found_exception(),
        "{service_err:?}"
    );
}

#[tokio::test]
async fn containers_start_through_bollard_and_are_labelled_for_cleanup() {
    let (ws_image, _) = docker::images().clone();
    let client = docker::connect().await;
    let name = format!("berth-test-{}", uuid::Uuid::new_v4().simple());
    let labels = HashMap::from([(docker::TEST_RUN.to_owned(), docker::run_id().to_owned())]);
    let created = client
        .create_container(
            Some(CreateContainerOptionsBuilder::new().name(&name).build()),
            bollard::models::ContainerCreateBody {
                image: Some(ws_image),
                entrypoint: Some(vec!["/bin/sh".into(), "-c".into(), "exit 7".into()]),
                labels: Some(labels),
                host_config: Some(bollard::models::HostConfig {
                    network_mode: Some("none".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    client.start_container(&created.id, None).await.unwrap();
    use futures_util::StreamExt;
    let mut wait = client.wait_container(
        &created.id,
        Some(WaitContainerOptionsBuilder::new().build()),
    );
    let code = match wait.next().await {
        Some(Ok(r)) => r.status_code,
        // bollard reports a non-zero exit as an error carrying the code.
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
        other => panic!("unexpected wait result: {other:?}"),
    };
    assert_eq!(code, 7);
    let mine = docker::containers_labelled(docker::TEST_RUN, docker::run_id());
    assert!(mine.contains(&created.id[..12].to_owned()), "{mine:?}");
    client
        .remove_container(
            &created.id,
            Some(RemoveContainerOptionsBuilder::new().force(true).build()),
        )
        .await
        .unwrap();
}

#[test]
fn run_ids_of_dead_processes_are_recognised_as_leftovers() {
    assert!(docker::run_is_alive(docker::run_id()));
    assert!(!docker::run_is_alive("999999999-1"));
    assert!(!docker::run_is_alive("garbage"));
    // Our own pid with a wrong start time is a reused pid, not this run.
    assert!(!docker::run_is_alive(&format!("{}-1", std::process::id())));
}

#[tokio::test]
async fn sweep_removes_a_crashed_runs_leftovers_only() {
    let (ws_image, _) = docker::images().clone();
    let out = std::process::Command::new("docker")
        .args(["create", "--network", "none", "--label"])
        .arg(format!("{}=999999999-1", docker::TEST_RUN))
        .arg(&ws_image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dead = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(docker::sweep_leftovers() >= 1);
    let left = docker::containers_labelled(docker::TEST_RUN, "999999999-1");
    assert!(left.is_empty(), "leftover survived: {left:?} ({dead})");
}
