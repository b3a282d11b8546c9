//! Header hygiene in both directions.
//!
//! Background: whatever the workspace sends is untrusted. Credentials it carries
//! (its own or forged ones), hop-by-hop headers (including any header it names in
//! `Connection`, which could otherwise make a naive proxy drop the credential it
//! just injected) and forwarding headers are removed before the proxy adds its own.
//! On the way back, hop-by-hop headers are removed and any header whose value
//! contains an injected credential is dropped, so an upstream that echoes request
//! headers cannot hand the secret to the workspace.

use http::header::{self, HeaderMap, HeaderName};

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the non-standard ones in use.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Client headers that carry credentials or would let the client speak for the
/// proxy, removed from every request.
const CLIENT_STRIPPED: &[&str] = &[
    "authorization",
    "cookie",
    "cookie2",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "forwarded",
    "x-real-ip",
    "expect",
];

/// Prefixes of removed client headers: AWS's signing headers, forwarding headers.
const CLIENT_PREFIXES: &[&str] = &["x-amz-", "x-forwarded-"];

/// Names a route may not choose as its injected header.
pub fn is_reserved(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    HOP_BY_HOP.contains(&n.as_str()) || n == "host" || n == "content-length"
}

/// Removes the names listed in `Connection` and the hop-by-hop set.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(*n);
    }
}

/// Everything removed from a client request before injection: hop-by-hop,
/// credentials, forwarding headers, Host, and the route's own injected header.
pub fn strip_request(headers: &mut HeaderMap, injected: Option<&HeaderName>) {
    strip_hop_by_hop(headers);
    for n in CLIENT_STRIPPED {
        headers.remove(*n);
    }
    let prefixed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| CLIENT_PREFIXES.iter().any(|p| k.as_str().starts_with(p)))
        .cloned()
        .collect();
    for n in prefixed {
        headers.remove(n);
    }
    headers.remove(header::HOST);
    if let Some(n) = injected {
        headers.remove(n);
    }
}

/// Hop-by-hop headers and any header echoing one of `secrets` are removed from a
/// response; returns how many echoes were dropped.
pub fn strip_response(headers: &mut HeaderMap, secrets: &[&[u8]]) -> usize {
    strip_hop_by_hop(headers);
    let secrets: Vec<&[u8]> = secrets.iter().copied().filter(|s| s.len() >= 8).collect();
    if secrets.is_empty() {
        return 0;
    }
    let echoed: Vec<HeaderName> = headers
        .iter()
        .filter(|(_, v)| {
            secrets
                .iter()
                .any(|s| v.as_bytes().windows(s.len()).any(|w| w == *s))
        })
        .map(|(k, _)| k.clone())
        .collect();
    let n = echoed.len();
    for k in echoed {
        headers.remove(k);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_credentials_hop_by_hop_and_connection_listed_names() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer mine"),
            ("x-amz-security-token", "t"),
            ("x-amz-date", "2000"),
            ("proxy-authorization", "Basic x"),
            ("cookie", "a=b"),
            ("x-forwarded-host", "evil://169.254.169.254"),
            ("connection", "x-keep, keep-alive"),
            ("x-keep", "1"),
            ("x-api-key", "k"),
            ("host", "169.254.169.254"),
            ("content-type", "application/json"),
            ("x-custom-token", "mine"),
        ] {
            h.append(k, v.parse().unwrap());
        }
        strip_request(&mut h, Some(&HeaderName::from_static("x-custom-token")));
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["content-type"]);
    }

    #[test]
    fn response_headers_echoing_a_secret_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("x-echo", "Bearer sk-123456789".parse().unwrap());
        h.insert("content-type", "text/plain".parse().unwrap());
        h.insert("connection", "content-type".parse().unwrap());
        assert_eq!(strip_response(&mut h, &[b"sk-123456789"]), 1);
        assert!(h.is_empty());
    }
}
