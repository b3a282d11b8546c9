//! Malformed and hostile requests against the scheduler's real HTTP API (in this
//! process, memory state, no hosts): each gets its status and stable code as JSON,
//! and the service keeps serving.

use std::time::Duration;

use berth_scheduler::{Config, Scheduler, store::Store};
use serde_json::{Value, json};

const TOKEN: &str = "backend-token-0123456789";
const OPERATOR: &str = "operator-token-0123456789";

async fn start() -> (String, tokio::sync::oneshot::Sender<()>) {
    let config = Config {
        api_token: Some(TOKEN.into()),
        operator_token: Some(OPERATOR.into()),
        host_token: "host-token-0123456789".into(),
        ..Config::default()
    };
    let scheduler = Scheduler::new(config, Store::memory());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(berth_scheduler::run(scheduler, listener, async move {
        let _ = rx.await;
    }));
    (url, tx)
}

struct Case {
    what: &'static str,
    method: reqwest::Method,
    path: String,
    content_type: Option<&'static str>,
    body: Option<Vec<u8>>,
    token: Option<&'static str>,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
}

fn case(what: &'static str, method: reqwest::Method, path: &str) -> Case {
    Case {
        what,
        method,
        path: path.into(),
        content_type: None,
        body: None,
        token: Some(TOKEN),
        status: 0,
        code: "",
        field: None,
    }
}

impl Case {
    fn json(mut self, v: Value) -> Self {
        self.content_type = Some("application/json");
        self.body = Some(v.to_string().into_bytes());
        self
    }
    fn raw(mut self, ct: Option<&'static str>, body: &[u8]) -> Self {
        self.content_type = ct;
        self.body = Some(body.to_vec());
        self
    }
    fn token(mut self, t: Option<&'static str>) -> Self {
        self.token = t;
        self
    }
    fn expect(mut self, status: u16, code: &'static str) -> Self {
        self.status = status;
        self.code = code;
        self
    }
    fn field(mut self, f: &'static str) -> Self {
        self.field = Some(f);
        self
    }
}

fn create(v: Value) -> Value {
    let mut body = json!({"conversation_id": "c-hostile"});
    for (k, x) in v.as_object().unwrap() {
        body[k] = x.clone();
    }
    body
}

#[tokio::test]
async fn malformed_and_hostile_requests_get_their_codes_and_the_service_keeps_serving() {
    use reqwest::Method as M;
    let (url, stop) = start().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()
        .unwrap();
    let long = "x".repeat(300);
    let many_labels: serde_json::Map<String, Value> =
        (0..40).map(|i| (format!("l{i}"), json!("v"))).collect();
    let w = "/v1/workspaces";
    let cases = vec![
        case("unknown route", M::GET, "/nope").expect(404, "not_found"),
        case("unknown nested route", M::POST, "/v1/workspaces/x/y/z").json(json!({})).expect(404, "not_found"),
        case("wrong method on pools", M::DELETE, "/v1/pools").expect(405, "method_not_allowed"),
        case("wrong method on workspaces", M::PUT, w).json(json!({})).expect(405, "method_not_allowed"),
        case("2 MiB body", M::POST, w).raw(Some("application/json"), &vec![b' '; 2 * 1024 * 1024]).expect(413, "body_too_large"),
        case("text body", M::POST, w).raw(Some("text/plain"), b"hello").expect(415, "unsupported_media_type"),
        case("form body (curl -d)", M::POST, w).raw(Some("application/x-www-form-urlencoded"), b"a=b").expect(415, "unsupported_media_type"),
        case("not JSON", M::POST, w).raw(Some("application/json"), b"{not json").expect(400, "invalid_json"),
        case("empty object", M::POST, w).json(json!({})).expect(400, "invalid_json"),
        case("wrong type", M::POST, w).json(json!({"conversation_id": 5})).expect(400, "invalid_json"),
        case("unknown field", M::POST, w).json(create(json!({"sudo": true}))).expect(400, "invalid_json"),
        case("array body", M::POST, w).json(json!([1, 2])).expect(400, "invalid_json"),
        case("null body", M::POST, w).json(Value::Null).expect(400, "invalid_json"),
        case("a struct spelt as an array", M::POST, w).json(json!(["c-array"])).expect(400, "invalid_json"),
        case("an egress change spelt as an array", M::PUT, "/v1/workspaces/ws-nope/egress").json(json!([[]])).expect(400, "invalid_json"),
        case("a pool target spelt as an array", M::PUT, "/v1/pools/default").json(json!([3])).token(Some(OPERATOR)).expect(400, "invalid_json"),
        case("empty id", M::POST, w).json(json!({"conversation_id": ""})).expect(422, "invalid_field").field("conversation_id"),
        case("huge id", M::POST, w).json(json!({"conversation_id": long})).expect(422, "invalid_field").field("conversation_id"),
        case("control chars in id", M::POST, w).json(json!({"conversation_id": "a\u{0}b"})).expect(422, "invalid_field").field("conversation_id"),
        case("unknown template", M::POST, w).json(create(json!({"template": "gpu"}))).expect(422, "invalid_field").field("template"),
        case("ttl zero", M::POST, w).json(create(json!({"ttl_seconds": 0}))).expect(422, "invalid_field").field("ttl_seconds"),
        case("ttl huge", M::POST, w).json(create(json!({"ttl_seconds": u64::MAX}))).expect(422, "invalid_field").field("ttl_seconds"),
        case("negative ttl", M::POST, w).json(create(json!({"ttl_seconds": -1}))).expect(400, "invalid_json"),
        case("too many labels", M::POST, w).json(create(json!({"labels": many_labels}))).expect(422, "invalid_field").field("labels"),
        case("long label key", M::POST, w).json(create(json!({"labels": {long.clone(): "v"}}))).expect(422, "invalid_field").field("labels"),
        case("bad env name", M::POST, w).json(create(json!({"env": {"A-B": "x"}}))).expect(422, "invalid_field").field("env"),
        case("platform env", M::POST, w).json(create(json!({"env": {"BERTH_SLOT_ID": "x"}}))).expect(422, "invalid_field").field("env"),
        case("IP egress", M::POST, w).json(create(json!({"egress": [{"host": "169.254.169.254"}]}))).expect(422, "ip_literal_not_allowed").field("egress[0].host"),
        case("numeric-looking egress", M::POST, w).json(create(json!({"egress": [{"host": "2852039166"}]}))).expect(422, "invalid_field").field("egress[0].host"),
        case("credential route nobody allowed", M::POST, w).json(create(json!({"credentials": [{"prefix": "/x/", "upstream": "https://api.example.com", "auth": "bearer", "secret": "s"}]}))).expect(422, "upstream_not_allowed").field("credentials[0].upstream"),
        case("escaping file", M::POST, w).json(create(json!({"files": [{"path": "../../etc/passwd", "content": "x"}]}))).expect(422, "invalid_field").field("files[0].path"),
        case("unknown workspace", M::GET, "/v1/workspaces/ws-nope").expect(404, "workspace_not_found"),
        case("unicode workspace id", M::GET, "/v1/workspaces/%F0%9F%92%A5").expect(404, "workspace_not_found"),
        case("delete unknown", M::DELETE, "/v1/workspaces/ws-nope").expect(404, "workspace_not_found"),
        case("keepalive unknown", M::POST, "/v1/workspaces/ws-nope/keepalive").json(json!({})).expect(404, "workspace_not_found"),
        case("egress of unknown", M::GET, "/v1/workspaces/ws-nope/egress").expect(404, "workspace_not_found"),
        case("egress bad json", M::PUT, "/v1/workspaces/ws-nope/egress").raw(Some("application/json"), b"[").expect(400, "invalid_json"),
        case("pool of unknown template", M::PUT, "/v1/pools/gpu").json(json!({"target": 1})).token(Some(OPERATOR)).expect(404, "template_not_found"),
        case("negative pool", M::PUT, "/v1/pools/default").json(json!({"target": -1})).token(Some(OPERATOR)).expect(400, "invalid_json"),
        case("absurd pool", M::PUT, "/v1/pools/default").json(json!({"target": 10_000_000})).token(Some(OPERATOR)).expect(422, "invalid_field").field("target"),
        case("drain unknown host", M::POST, "/v1/hosts/h-nope/drain").token(Some(OPERATOR)).expect(404, "host_not_found"),
        case("report without host token", M::POST, "/v1/hosts/h1/report").json(json!({})).token(None).expect(401, "unauthorized"),
        case("report with the backend token", M::POST, "/v1/hosts/h1/report").json(json!({})).expect(401, "unauthorized"),
        case("create without token", M::POST, w).json(create(json!({}))).token(None).expect(401, "unauthorized"),
        case("create with a wrong token", M::POST, w).json(create(json!({}))).token(Some("backend-token-012345678X")).expect(401, "unauthorized"),
        case("list without token", M::GET, w).token(None).expect(401, "unauthorized"),
        case("hosts with the backend token", M::GET, "/v1/hosts").expect(401, "operator_token_required"),
        case("pools with the backend token", M::GET, "/v1/pools").expect(401, "operator_token_required"),
        case("set a pool with the backend token", M::PUT, "/v1/pools/default").json(json!({"target": 1})).expect(401, "operator_token_required"),
        case("drain with the backend token", M::POST, "/v1/hosts/h1/drain").expect(401, "operator_token_required"),
        case("metrics without a token", M::GET, "/metrics").token(None).expect(401, "operator_token_required"),
        case("fleet page with the backend token", M::GET, "/").expect(401, "operator_token_required"),
        case("fleet JSON with the backend token", M::GET, "/v1/fleet").expect(401, "operator_token_required"),
        case("fleet JSON without a token", M::GET, "/v1/fleet").token(None).expect(401, "operator_token_required"),
        case("workspaces with the operator token", M::GET, w).token(Some(OPERATOR)).expect(401, "unauthorized"),
        case("no host has room", M::POST, w).json(json!({"conversation_id": "💥 unicode is fine 会話"})).expect(503, "no_capacity"),
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for c in cases {
        let mut req = http.request(c.method.clone(), format!("{url}{}", c.path));
        if let Some(t) = c.token {
            req = req.bearer_auth(t);
        }
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        if let Some(b) = c.body.clone() {
            req = req.body(b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", c.what));
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(status, c.status, "{}: {text}", c.what);
        assert!(
            ct.starts_with("application/json"),
            "{}: content-type {ct:?}: {text}",
            c.what
        );
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", c.what));
        assert_eq!(body["error"]["code"], c.code, "{}: {text}", c.what);
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}",
            c.what
        );
        if let Some(f) = c.field {
            assert_eq!(body["error"]["field"], f, "{}: {text}", c.what);
        }
    }
    // The operator's routes with the operator's token: bearer, or HTTP Basic as a
    // browser sends it for the fleet page.
    for path in ["/v1/hosts", "/v1/pools", "/metrics"] {
        let r = http
            .get(format!("{url}{path}"))
            .bearer_auth(OPERATOR)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let page = http
        .get(format!("{url}/"))
        .basic_auth("on-call", Some(OPERATOR))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<html"));
    // Still serving.
    let ok = http.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let listed = http
        .get(format!("{url}{w}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let _ = stop.send(());
}
