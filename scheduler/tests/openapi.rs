//! The OpenAPI document: generated from the code, served at `/openapi.json`, the
//! same as the checked-in `scheduler/openapi.json`, version 3.1, and covering every
//! route with its errors. Refresh the file after an API change with
//! `BERTH_WRITE_OPENAPI=1 cargo test -p berth-scheduler --test openapi`.

use berth_scheduler::{Config, Scheduler, store::Store};
use serde_json::Value;

const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");

/// Every route the router serves, as (method, path).
const ROUTES: &[(&str, &str)] = &[
    ("get", "/"),
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("post", "/v1/workspaces"),
    ("get", "/v1/workspaces"),
    ("get", "/v1/workspaces/{id}"),
    ("delete", "/v1/workspaces/{id}"),
    ("post", "/v1/workspaces/{id}/keepalive"),
    ("post", "/v1/workspaces/{id}/checkpoint"),
    ("get", "/v1/conversations/{id}/checkpoints"),
    ("delete", "/v1/conversations/{id}"),
    ("get", "/v1/workspaces/{id}/egress"),
    ("put", "/v1/workspaces/{id}/egress"),
    ("get", "/v1/hosts"),
    ("post", "/v1/hosts/{id}/drain"),
    ("post", "/v1/hosts/{id}/report"),
    ("get", "/v1/fleet"),
    ("get", "/v1/pools"),
    ("put", "/v1/pools/{template}"),
];

#[test]
fn the_checked_in_document_is_the_generated_one() {
    let generated = berth_scheduler::openapi::document();
    if std::env::var_os("BERTH_WRITE_OPENAPI").is_some() {
        std::fs::write(CHECKED_IN, &generated).unwrap();
    }
    let file = std::fs::read_to_string(CHECKED_IN).unwrap_or_default();
    assert!(
        file == generated,
        "scheduler/openapi.json is out of date: run \
         BERTH_WRITE_OPENAPI=1 cargo test -p berth-scheduler --test openapi"
    );
}

#[test]
fn every_route_is_documented_with_its_errors() {
    let doc: Value = serde_json::from_str(&berth_scheduler::openapi::document()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            documented.push((method.clone(), path.clone()));
            let responses = op["responses"].as_object().unwrap();
            let open = matches!(path.as_str(), "/healthz" | "/openapi.json");
            if !open {
                assert!(
                    responses.contains_key("401") && responses.contains_key("503"),
                    "{method} {path}: its 401 and 503 are not documented"
                );
                assert!(
                    op["security"].is_array(),
                    "{method} {path}: no security requirement"
                );
            }
            for (status, r) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    let desc = r["description"].as_str().unwrap_or("");
                    assert!(
                        desc.contains('`'),
                        "{method} {path} {status}: the description names no error code"
                    );
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}: errors are ErrorBody"
                    );
                }
            }
        }
    }
    let mut want: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    want.sort();
    documented.sort();
    assert_eq!(
        documented, want,
        "documented routes differ from the router's"
    );
}

/// Bounds the document states by hand match the code's.
#[test]
fn documented_bounds_match_the_code() {
    let doc: Value = serde_json::from_str(&berth_scheduler::openapi::document()).unwrap();
    let target = &doc["components"]["schemas"]["SetPool"]["properties"]["target"];
    assert_eq!(
        target["maximum"].as_u64(),
        Some(berth_scheduler::MAX_POOL_TARGET as u64),
        "{target}"
    );
    let conv = &doc["components"]["schemas"]["CreateWorkspace"]["properties"]["conversation_id"];
    assert_eq!(conv["maxLength"], 256, "{conv}");
    assert_eq!(conv["minLength"], 1, "{conv}");
}

#[tokio::test]
async fn the_served_document_is_the_generated_one() {
    let scheduler = Scheduler::new(
        Config {
            api_token: Some("backend-token-0123456789".into()),
            operator_token: Some("operator-token-0123456789".into()),
            ..Config::default()
        },
        Store::memory(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/openapi.json", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(berth_scheduler::run(scheduler, listener, async move {
        let _ = rx.await;
    }));
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 200, "served without a token");
    assert_eq!(
        resp.headers()["content-type"],
        "application/json",
        "as JSON"
    );
    assert_eq!(
        resp.text().await.unwrap(),
        berth_scheduler::openapi::document()
    );
    let _ = tx.send(());
}
