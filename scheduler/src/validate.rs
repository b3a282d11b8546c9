//! What the backend may ask for, checked before anything is bound or started.
//!
//! The environment a conversation brings (`env`) is pushed to the slot's agent at
//! claim and handed to every command it runs; it is never written to the state
//! store or a log (its values may be secrets). Names are plain identifiers; what
//! the platform itself sets (`BERTH_*`, the proxy settings that send ordinary tools
//! through the credential-proxy) cannot be replaced; sizes are capped so a claim
//! stays small.

use std::collections::BTreeMap;

use berth_wire::CreateWorkspace;

use crate::{ApiError, Config};

/// Variables one request may set.
pub const MAX_ENV_VARS: usize = 64;
/// Bytes of one variable's name.
pub const MAX_ENV_NAME: usize = 128;
/// Bytes of one variable's value.
pub const MAX_ENV_VALUE: usize = 4096;
/// Bytes of all names and values together.
pub const MAX_ENV_TOTAL: usize = 32 * 1024;

/// Checks a create request: every field the backend sends, each error naming it.
pub fn create(req: &CreateWorkspace, template: &str, config: &Config) -> Result<(), ApiError> {
    let conv = &req.conversation_id;
    if conv.is_empty() || conv.len() > 256 {
        return Err(ApiError::InvalidField {
            field: "conversation_id",
            reason: "must be 1 to 256 characters".into(),
        });
    }
    if conv.chars().any(|c| c.is_control()) {
        return Err(ApiError::InvalidField {
            field: "conversation_id",
            reason: "must not contain control characters".into(),
        });
    }
    if !config.pools.contains_key(template) {
        // Templates are configured; their targets change at run time.
        return Err(ApiError::InvalidField {
            field: "template",
            reason: format!("unknown template `{template}`"),
        });
    }
    if let Some(ttl) = req.ttl_seconds
        && (ttl == 0 || ttl > config.max_ttl_seconds)
    {
        return Err(ApiError::InvalidField {
            field: "ttl_seconds",
            reason: format!("must be between 1 and {}", config.max_ttl_seconds),
        });
    }
    env(&req.env)?;
    Ok(())
}

/// Whether the platform owns `name` (the request may not set it).
fn reserved(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper.starts_with("BERTH_")
        || matches!(
            upper.as_str(),
            "HTTP_PROXY" | "HTTPS_PROXY" | "NO_PROXY" | "ALL_PROXY"
        )
}

/// Checks a conversation's environment.
pub fn env(env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let bad = |reason: String| ApiError::InvalidField {
        field: "env",
        reason,
    };
    if env.len() > MAX_ENV_VARS {
        return Err(bad(format!(
            "{} variables; at most {MAX_ENV_VARS}",
            env.len()
        )));
    }
    let mut total = 0;
    for (name, value) in env {
        let valid = !name.is_empty()
            && name.len() <= MAX_ENV_NAME
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(bad(format!(
                "{name:?} is not a variable name (letters, digits and _, not starting with a digit, at most {MAX_ENV_NAME})"
            )));
        }
        if reserved(name) {
            return Err(bad(format!(
                "{name} is set by the platform and cannot be replaced"
            )));
        }
        if value.len() > MAX_ENV_VALUE {
            return Err(bad(format!(
                "the value of {name} is {} bytes; at most {MAX_ENV_VALUE}",
                value.len()
            )));
        }
        if value.contains('\0') {
            return Err(bad(format!("the value of {name} contains a NUL byte")));
        }
        total += name.len() + value.len();
    }
    if total > MAX_ENV_TOTAL {
        return Err(bad(format!(
            "{total} bytes of names and values; at most {MAX_ENV_TOTAL}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(name: &str, value: &str) -> BTreeMap<String, String> {
        [(name.to_owned(), value.to_owned())].into()
    }

    fn reason(e: ApiError) -> String {
        match e {
            ApiError::InvalidField {
                field: "env",
                reason,
            } => reason,
            other => panic!("not an env error: {other:?}"),
        }
    }

    #[test]
    fn plain_names_and_values_pass() {
        assert!(env(&one("GREETING", "hello there")).is_ok());
        assert!(env(&one("_private_1", "")).is_ok());
        assert!(env(&BTreeMap::new()).is_ok());
    }

    #[test]
    fn bad_names_are_refused_and_named() {
        for name in ["", "1ABC", "A-B", "A=B", "A B", "ÄB"] {
            let r = reason(env(&one(name, "x")).unwrap_err());
            assert!(r.contains("is not a variable name"), "{name}: {r}");
        }
        let long = "A".repeat(MAX_ENV_NAME + 1);
        assert!(env(&one(&long, "x")).is_err());
    }

    #[test]
    fn what_the_platform_sets_cannot_be_replaced() {
        for name in [
            "BERTH_CLAIM_SECRET_SHA256",
            "berth_x",
            "HTTPS_PROXY",
            "http_proxy",
            "NO_PROXY",
            "ALL_PROXY",
        ] {
            let r = reason(env(&one(name, "x")).unwrap_err());
            assert!(r.contains("set by the platform"), "{name}: {r}");
        }
    }

    #[test]
    fn sizes_are_capped() {
        let r = reason(env(&one("BIG", &"x".repeat(MAX_ENV_VALUE + 1))).unwrap_err());
        assert!(r.contains("BIG") && r.contains("at most"), "{r}");
        let many: BTreeMap<String, String> = (0..=MAX_ENV_VARS)
            .map(|i| (format!("V{i}"), "x".into()))
            .collect();
        assert!(reason(env(&many).unwrap_err()).contains("variables"));
        let heavy: BTreeMap<String, String> = (0..10)
            .map(|i| (format!("V{i}"), "x".repeat(4000)))
            .collect();
        assert!(reason(env(&heavy).unwrap_err()).contains("bytes of names and values"));
        assert!(reason(env(&one("NUL", "a\0b")).unwrap_err()).contains("NUL"));
    }
}
