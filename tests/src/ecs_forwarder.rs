//! A recording, fault-injecting forwarder between the scheduler and moto.
//!
//! moto holds ECS's API state but never throttles, never answers `failures[]` and
//! never reads placement constraints. This forwarder (on a free loopback port, in
//! the test process) passes every ECS call (awsJson 1.1: `POST /` with an
//! `X-Amz-Target` naming the action) to moto and records it — when it came, the
//! action, the request and the answer — so tests can assert what the scheduler
//! sent (the constraint naming a host, the bucket's pacing) and the ECS-agent
//! stand-ins can start the tasks whose RunTask named their instance. Faults, armed
//! per action and consumed one per call, are answered by the forwarder itself
//! without reaching moto:
//!
//! - [`Fault::Throttle`]: `400 ThrottlingException`, as ECS answers a caller over its
//!   bucket;
//! - [`Fault::ServerError`]: `500 ServerException`;
//! - [`Fault::RunTaskFailure`]: a RunTask whose constraint names an instance is
//!   answered `{"tasks": [], "failures": [{"reason": …}]}` (e.g. `RESOURCE:ENI`).
//!
//! Nothing here connects anywhere but moto on loopback.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

/// One call that passed through (or was answered by a fault).
#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    /// The action, e.g. `RunTask`.
    pub action: String,
    pub request: Value,
    pub status: u16,
    pub response: Value,
    /// Answered by an injected fault, not by moto.
    pub injected: bool,
}

/// A fault to inject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    Throttle {
        action: String,
    },
    ServerError {
        action: String,
    },
    /// RunTask constrained to `instance_id` fails with `reason`.
    RunTaskFailure {
        instance_id: String,
        reason: String,
    },
}

#[derive(Default)]
struct Shared {
    records: Vec<Recorded>,
    faults: VecDeque<Fault>,
    /// Scale-out play: unconstrained RunTask tasks are held PROVISIONING …
    hold_unplaced: bool,
    /// ListTasks answered in pages of this many ARNs (moto answers all at once).
    page_size: Option<usize>,
    unplaced: std::collections::BTreeSet<String>,
    /// … until a new instance (container instance ARN) is there to take them.
    place_on: Option<String>,
}

/// The forwarder; stops with the test's runtime.
#[derive(Clone)]
pub struct EcsForwarder {
    port: u16,
    shared: Arc<Mutex<Shared>>,
}

#[derive(Clone)]
struct Ctx {
    moto: String,
    http: reqwest::Client,
    shared: Arc<Mutex<Shared>>,
}

/// The RunTask constraint's instance, if the request names one.
pub fn constrained_instance(request: &Value) -> Option<String> {
    request["placementConstraints"]
        .as_array()?
        .iter()
        .filter(|c| c["type"] == "memberOf")
        .find_map(|c| {
            c["expression"]
                .as_str()?
                .strip_prefix("ec2InstanceId == ")
                .map(|s| s.trim().to_owned())
        })
}

impl EcsForwarder {
    /// Starts forwarding to moto at `moto_endpoint`.
    pub async fn start(moto_endpoint: &str) -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let ctx = Ctx {
            moto: moto_endpoint.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            shared: shared.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind forwarder");
        let port = listener.local_addr().expect("addr").port();
        let app = Router::new().fallback(forward).with_state(ctx);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { port, shared }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Arms `fault` `times` times (each matching call consumes one).
    pub fn inject(&self, fault: Fault, times: usize) {
        let mut s = self.lock();
        for _ in 0..times {
            s.faults.push_back(fault.clone());
        }
    }

    /// Answers ListTasks in pages of `n` task ARNs with a `nextToken`, as ECS does
    /// for long lists, so that the caller's pagination is exercised.
    pub fn page_list_tasks(&self, n: usize) {
        self.lock().page_size = Some(n.max(1));
    }

    /// Plays ECS managed scaling for tasks started without an instance constraint:
    /// RunTask and DescribeTasks answer them PROVISIONING (no instance) until
    /// [`Self::place_unplaced_on`] names the instance that "came up".
    pub fn hold_unplaced(&self) {
        self.lock().hold_unplaced = true;
    }

    /// From now on the held tasks are RUNNING on `container_instance_arn`.
    pub fn place_unplaced_on(&self, container_instance_arn: &str) {
        self.lock().place_on = Some(container_instance_arn.to_owned());
    }

    /// Faults armed and not yet consumed.
    pub fn faults_left(&self) -> usize {
        self.lock().faults.len()
    }

    /// Every call so far, in order.
    pub fn records(&self) -> Vec<Recorded> {
        self.lock().records.clone()
    }

    /// Calls of `action` so far.
    pub fn calls_of(&self, action: &str) -> Vec<Recorded> {
        self.lock()
            .records
            .iter()
            .filter(|r| r.action == action)
            .cloned()
            .collect()
    }

    /// Records from index `from` on (for followers such as the stand-ins).
    pub fn records_from(&self, from: usize) -> Vec<Recorded> {
        let s = self.lock();
        s.records.get(from..).map(<[_]>::to_vec).unwrap_or_default()
    }
}

fn error(status: StatusCode, kind: &str, message: &str) -> (StatusCode, Value) {
    (status, json!({"__type": kind, "message": message}))
}

async fn forward(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let action = target.rsplit('.').next().unwrap_or("").to_owned();
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // An armed fault for this call, if any (consumed).
    let fault = {
        let mut s = ctx.shared.lock().unwrap_or_else(|e| e.into_inner());
        let pos = s.faults.iter().position(|f| match f {
            Fault::Throttle { action: a } | Fault::ServerError { action: a } => *a == action,
            Fault::RunTaskFailure { instance_id, .. } => {
                action == "RunTask"
                    && constrained_instance(&request).as_deref() == Some(instance_id.as_str())
            }
        });
        pos.and_then(|i| s.faults.remove(i))
    };
    let (status, response, injected) = match fault {
        Some(Fault::Throttle { .. }) => {
            let (s, v) = error(
                StatusCode::BAD_REQUEST,
                "ThrottlingException",
                "Rate exceeded",
            );
            (s, v, true)
        }
        Some(Fault::ServerError { .. }) => {
            let (s, v) = error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServerException",
                "injected by the test forwarder",
            );
            (s, v, true)
        }
        Some(Fault::RunTaskFailure {
            instance_id,
            reason,
        }) => (
            StatusCode::OK,
            json!({"tasks": [], "failures": [{
                "arn": format!("arn:aws:ecs:us-east-1:123456789012:container-instance/{instance_id}"),
                "reason": reason,
                "detail": "injected by the test forwarder"
            }]}),
            true,
        ),
        None => {
            let page_size = ctx
                .shared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .page_size;
            let paging = page_size.filter(|_| action == "ListTasks");
            let body = match (&paging, request.as_object()) {
                // moto gets the whole question; the forwarder cuts the pages.
                (Some(_), Some(o)) => {
                    let mut whole = o.clone();
                    whole.remove("nextToken");
                    whole.remove("maxResults");
                    Bytes::from(Value::Object(whole).to_string())
                }
                _ => body,
            };
            let mut req = ctx.http.post(format!("{}/", ctx.moto)).body(body.to_vec());
            for (k, v) in &headers {
                if k != "host" && k != "content-length" {
                    req = req.header(k, v);
                }
            }
            match req.send().await {
                Ok(r) => {
                    let status = StatusCode::from_u16(r.status().as_u16())
                        .unwrap_or(StatusCode::BAD_GATEWAY);
                    let bytes = r.bytes().await.unwrap_or_default();
                    let v = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&bytes).chars().take(2000).collect())
                    });
                    let v = match paging {
                        Some(n) if status == StatusCode::OK => page(&request, v, n),
                        _ => v,
                    };
                    (status, v, false)
                }
                Err(e) => {
                    let (s, v) = error(StatusCode::BAD_GATEWAY, "ForwarderError", &e.to_string());
                    (s, v, true)
                }
            }
        }
    };
    let response = {
        let mut s = ctx.shared.lock().unwrap_or_else(|e| e.into_inner());
        rewrite_unplaced(&mut s, &action, &request, response)
    };
    ctx.shared
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .records
        .push(Recorded {
            at: Instant::now(),
            action,
            request,
            status: status.as_u16(),
            response: response.clone(),
            injected,
        });
    (
        status,
        [("content-type", "application/x-amz-json-1.1")],
        response.to_string(),
    )
        .into_response()
}

/// One page of a whole ListTasks answer: from the offset the request's `nextToken`
/// names, `n` ARNs, and a `nextToken` while more remain.
fn page(request: &Value, mut whole: Value, n: usize) -> Value {
    let from = request["nextToken"]
        .as_str()
        .and_then(|t| t.strip_prefix("berth-page-"))
        .and_then(|o| o.parse::<usize>().ok())
        .unwrap_or(0);
    let arns: Vec<Value> = whole["taskArns"].as_array().cloned().unwrap_or_default();
    let end = (from + n).min(arns.len());
    whole["taskArns"] = Value::Array(arns.get(from..end).map(<[_]>::to_vec).unwrap_or_default());
    match whole.as_object_mut() {
        Some(o) if end < arns.len() => {
            o.insert("nextToken".into(), json!(format!("berth-page-{end}")));
        }
        Some(o) => {
            o.remove("nextToken");
        }
        None => {}
    }
    whole
}

/// The scale-out play (see [`EcsForwarder::hold_unplaced`]) on moto's answer.
fn rewrite_unplaced(s: &mut Shared, action: &str, request: &Value, mut response: Value) -> Value {
    if !s.hold_unplaced {
        return response;
    }
    let Some(tasks) = response.get_mut("tasks").and_then(Value::as_array_mut) else {
        return response;
    };
    if action == "RunTask" && constrained_instance(request).is_none() {
        for t in tasks.iter() {
            if let Some(arn) = t["taskArn"].as_str() {
                s.unplaced.insert(arn.to_owned());
            }
        }
    } else if action != "DescribeTasks" {
        return response;
    }
    for t in tasks.iter_mut() {
        let held = t["taskArn"]
            .as_str()
            .is_some_and(|a| s.unplaced.contains(a));
        if !held || !t.is_object() {
            continue;
        }
        match &s.place_on {
            None => {
                t["lastStatus"] = json!("PROVISIONING");
                if let Some(o) = t.as_object_mut() {
                    o.remove("containerInstanceArn");
                }
            }
            Some(ci) => {
                t["containerInstanceArn"] = json!(ci);
                t["lastStatus"] = json!("RUNNING");
            }
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_answers_are_cut_into_pages_that_chain() {
        let whole = json!({"taskArns": ["a", "b", "c"]});
        let p1 = page(&json!({}), whole.clone(), 2);
        assert_eq!(
            p1,
            json!({"taskArns": ["a", "b"], "nextToken": "berth-page-2"})
        );
        let p2 = page(&json!({"nextToken": "berth-page-2"}), whole, 2);
        assert_eq!(p2, json!({"taskArns": ["c"]}));
    }

    #[test]
    fn the_constraint_names_the_instance() {
        let req = json!({"placementConstraints": [
            {"type": "memberOf", "expression": "ec2InstanceId == i-0abc"}]});
        assert_eq!(constrained_instance(&req).as_deref(), Some("i-0abc"));
        assert_eq!(constrained_instance(&json!({})), None);
    }
}
