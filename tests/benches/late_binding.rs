//! Warm acquire with a full set of per-conversation settings against a bare warm
//! acquire, in one run on one system (`docs/BENCHMARKS.md`, "late binding").
//!
//! `cargo bench -p berth-tests --bench late_binding` (needs Docker, moto from
//! tests/run.sh, and `cargo build --bins` first). `BERTH_BENCH_ROUNDS` (default 40)
//! sets the acquires of each kind. The two kinds alternate, so both see the same
//! machine; each acquire waits (unmeasured) until the pool holds a warm slot, and is
//! released afterwards. Full settings: 10 env vars, 5 egress rules, 2 credential
//! routes (bearer, secrets in moto's Secrets Manager on the host network's gateway).
//! Any cold hand-out fails the run.

use std::time::{Duration, Instant};

use berth_proxy_testbed::TempDir;
use berth_scheduler::templates::{TemplatePolicy, Templates};
use berth_tests::moto::MotoServer;
use berth_tests::system::{LocalBerth, Options};
use berth_wire::{Source, Workspace};
use serde_json::{Value, json};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("late_binding: bench");
        return;
    }
    let rounds: usize = std::env::var("BERTH_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let config_dir = TempDir::new("bench-late-binding").unwrap();
    let policy = TemplatePolicy {
        egress_allowed: vec!["*".into()],
        upstreams: vec!["*.bench.test".into()],
        secrets: vec!["bench/*".into()],
        allow_private: vec!["172.16.0.0/12".into(), "192.168.0.0/16".into()],
        ..TemplatePolicy::default()
    };
    let berth = LocalBerth::start_with(Options {
        pool: 0,
        proxy_config_dir: Some(config_dir.path().to_path_buf()),
        proxy_env: berth_tests::moto::proxy_env(),
        templates: Some(Templates {
            policies: [("default".to_owned(), policy)].into(),
        }),
        ..Options::default()
    })
    .await;
    let gw = berth.gateway();
    let moto = MotoServer::start_on(&gw.to_string()).expect("moto");
    let sm = moto.secretsmanager();
    for name in ["bench/one", "bench/two"] {
        sm.create_secret()
            .name(name)
            .secret_string(format!("{name}-value-0123456789"))
            .send()
            .await
            .expect("secret");
    }
    std::fs::write(
        config_dir.path().join("proxy.toml"),
        format!(
            "dns = \"hosts-only\"\n[hosts]\n\"a.bench.test\" = [\"{gw}\"]\n\"b.bench.test\" = [\"{gw}\"]\n\
             [secrets_manager]\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\n",
            moto.endpoint()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(config_dir.path(), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::set_permissions(
            config_dir.path().join("proxy.toml"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }
    berth.set_pool(6).await;
    assert!(
        berth.wait_pool(6, Duration::from_secs(120)).await,
        "pool never filled"
    );

    let env: serde_json::Map<String, Value> = (0..10)
        .map(|i| {
            (
                format!("SETTING_{i}"),
                json!(format!("value number {i} of ten")),
            )
        })
        .collect();
    let full = json!({
        "env": env,
        "egress": [
            {"host": "pypi.org"}, {"host": "*.pythonhosted.org"}, {"host": "github.com"},
            {"host": "*.githubusercontent.com"}, {"host": "registry.npmjs.org", "ports": [443, 8443]},
        ],
        "credentials": [
            {"prefix": "/one/", "upstream": "https://a.bench.test:8443", "auth": "bearer", "secret": "bench/one"},
            {"prefix": "/two/", "upstream": "https://b.bench.test:8443/v1", "auth": "header", "header": "x-api-key", "secret": "bench/two"},
        ],
    });
    let mut bare_ms = Vec::new();
    let mut full_ms = Vec::new();
    let mut cold = 0;
    println!("{rounds} acquires of each kind, alternating");
    for i in 0..rounds * 2 {
        assert!(
            berth.wait_pool(2, Duration::from_secs(60)).await,
            "pool did not refill"
        );
        let with_settings = i % 2 == 1;
        let mut body = if with_settings {
            full.clone()
        } else {
            json!({})
        };
        body["conversation_id"] = json!(format!("bench-{i}"));
        let start = Instant::now();
        let resp = berth
            .http
            .post(format!("{}/v1/workspaces", berth.api))
            .json(&body)
            .send()
            .await
            .expect("scheduler");
        let status = resp.status();
        let text = resp.text().await.expect("answer");
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        assert!(status.is_success(), "{status}: {text}");
        let ws: Workspace = serde_json::from_str(&text).expect("workspace");
        if ws.source == Source::Cold {
            cold += 1;
        }
        if with_settings {
            full_ms.push(ms);
        } else {
            bare_ms.push(ms);
        }
        let _ = berth
            .http
            .delete(format!("{}/v1/workspaces/{}", berth.api, ws.id))
            .send()
            .await;
        if (i + 1) % 20 == 0 {
            println!("  {} of {} acquires", i + 1, rounds * 2);
        }
    }
    berth.stop().await;
    assert_eq!(cold, 0, "a hand-out was cold");
    for v in [&mut bare_ms, &mut full_ms] {
        v.sort_by(f64::total_cmp);
    }
    let (b50, b99) = (percentile(&bare_ms, 0.5), percentile(&bare_ms, 0.99));
    let (f50, f99) = (percentile(&full_ms, 0.5), percentile(&full_ms, 0.99));
    println!("bare warm acquire:          p50 {b50:.2} ms  p99 {b99:.2} ms");
    println!("with full claim settings:   p50 {f50:.2} ms  p99 {f99:.2} ms");
    println!(
        "ratio (full / bare):        p50 {:.2}x  p99 {:.2}x  (target <= 1.5x); cold hand-outs: {cold}",
        f50 / b50,
        f99 / b99
    );
}
