//! The scheduler's OpenAPI 3.1 document, generated from the handlers' annotations
//! (`utoipa`), served at `/openapi.json` and checked into the repository as
//! `scheduler/openapi.json` (a test keeps the two the same; to refresh the file:
//! `BERTH_WRITE_OPENAPI=1 cargo test -p berth-scheduler --test openapi`).

use utoipa::{
    Modify, OpenApi,
    openapi::security::{Http, HttpAuthScheme, SecurityScheme},
};

use crate::api;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Berth scheduler",
        description = "Per-conversation workspaces for AI agents: the backend's API \
            (workspaces) and on-call's (hosts, pools, the fleet). Every error is \
            `{\"error\": {\"code\", \"message\", \"field\"?}}` with a stable `code`; \
            `503` answers carry `Retry-After`.",
        license(name = "Apache-2.0"),
    ),
    paths(
        api::create_workspace,
        api::list_workspaces,
        api::get_workspace,
        api::delete_workspace,
        api::keepalive,
        api::checkpoint_workspace,
        api::list_checkpoints,
        api::delete_conversation,
        api::get_egress,
        api::put_egress,
        api::host_report,
        api::list_hosts,
        api::drain_host,
        api::pools,
        api::set_pool,
        api::fleet_json,
        api::fleet_page,
        api::metrics,
        api::healthz,
        api::openapi,
    ),
    modifiers(&Security),
    tags(
        (name = "workspaces", description = "The backend's calls (the backend token)"),
        (name = "operator", description = "On-call's calls (the operator token); `/healthz` is open"),
        (name = "hosts", description = "hostd's heartbeat (each host's own token)"),
        (name = "checkpoints", description = "A conversation's files kept across workspaces (the backend token)"),
    )
)]
pub struct ApiDoc;

/// The three bearer tokens: the backend's, the operator's and each host's.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        for (name, what) in [
            ("backend", "BERTH_API_TOKEN: the backend's token"),
            (
                "operator",
                "BERTH_OPERATOR_TOKEN: on-call's token (also as the HTTP Basic password)",
            ),
            (
                "host",
                "each host's token, derived from the fleet's host secret",
            ),
        ] {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.description = Some(what.to_owned());
            components.add_security_scheme(name, SecurityScheme::Http(http));
        }
    }
}

/// The document as served (pretty JSON, ending in a newline).
pub fn document() -> String {
    let mut json = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    json.push('\n');
    json
}
