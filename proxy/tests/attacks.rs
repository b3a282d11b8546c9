//! The attack suite: each case is something a hostile workspace would try against
//! the real `credential-proxy` binary. Every case asserts the refusal (status and
//! stable code), that nothing reached an upstream it should not have (the echo
//! upstreams record every request; the proxy's own connect counter shows no
//! socket was opened), and that the proxy keeps serving afterwards.
//!
//! Numbers in comments refer to "Threats the tests must try" in the design notes.

mod bed;

use std::time::{Duration, Instant};

use bed::{API_KEY, Bed, TOKEN};

macro_rules! attack_test {
    ($name:ident, $body:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let mut bed = Bed::start().await;
            let f: fn(&mut Bed) = $body;
            f(&mut bed);
            bed.assert_serving();
            bed.assert_log_clean();
        }
    };
}

// 1. Host spoofing.
attack_test!(host_header_does_not_choose_the_upstream, |bed| {
    let before = bed.up.count();
    // Routing ignores Host; the upstream sees its own name.
    let r = bed.raw(b"GET /mcp/x HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    let seen = bed.up.seen().pop().unwrap();
    assert_eq!(
        seen.header("host"),
        Some(format!("api.allowed.test:{}", bed.up.port()).as_str())
    );
    // A path no route serves stays refused whatever Host says.
    let before2 = bed.up.count();
    let r = bed.raw(
        b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n",
    );
    bed.assert_refused(&r, 403, Some("route_not_allowed"), before2);
    assert!(bed.up.count() > before);
});

attack_test!(duplicate_host_is_refused, |bed| {
    let before = bed.up.count();
    let r = bed.raw(
        b"GET /mcp/x HTTP/1.1\r\nHost: api.allowed.test\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n",
    );
    bed.assert_refused(&r, 400, Some("bad_host"), before);
});

attack_test!(absolute_form_disagreeing_with_host_is_refused, |bed| {
    let before = bed.up.count();
    let req = format!(
        "GET https://api.allowed.test:{}/v1/x HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n",
        bed.up.port()
    );
    let r = bed.raw(req.as_bytes());
    bed.assert_refused(&r, 400, Some("bad_host"), before);
});

// 2. Metadata by absolute form, in every spelling.
attack_test!(
    absolute_form_to_metadata_in_any_spelling_is_refused_before_connecting,
    |bed| {
        let connects = bed.connects();
        for target in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/latest/meta-data/",
            "http://169.254.170.2/v2/credentials",
            "http://2852039166/latest/meta-data/",
            "http://0251.0376.0251.0376/latest/meta-data/",
            "http://0xa9fea9fe/latest/meta-data/",
            "http://169.254.169.254.nip.io/latest/meta-data/",
            "http://allowed.test@169.254.169.254/",
            "https://api.allowed.test.evil.test/v1/x",
        ] {
            let before = bed.up.count();
            let req = format!("GET {target} HTTP/1.1\r\nConnection: close\r\n\r\n");
            let r = bed.raw(req.as_bytes());
            assert!(r.status == 403 || r.status == 400, "{target}: {r:?}");
            bed.assert_refused(&r, r.status, None, before);
        }
        // assert_serving opened at most one pooled connection; none went elsewhere.
        assert!(bed.connects() - connects <= 1.0);
    }
);

// 3. CONNECT.
attack_test!(connect_to_anything_off_the_allowlist_is_refused, |bed| {
    let own = bed.addr().port();
    let up = bed.up.port();
    let connects = bed.connects();
    for target in [
        "10.0.0.1:443".to_owned(),
        format!("127.0.0.1:{own}"),
        "[::ffff:127.0.0.1]:443".to_owned(),
        "169.254.169.254:80".to_owned(),
        format!("api.allowed.test:{up}"),
        "mirror.allowed.test:22".to_owned(),
        "MIRROR.allowed.test.:22".to_owned(),
    ] {
        let before = bed.up.count();
        let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
        let r = bed.raw(req.as_bytes());
        bed.assert_refused(&r, 403, Some("connect_not_allowed"), before);
    }
    // An IPv6 zone id does not even parse as an authority.
    let r = bed.raw(b"CONNECT [fe80::1%25eth0]:443 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.status == 400 || r.status == 403, "{r:?}");
    assert!(bed.connects() - connects <= 1.0);
});

attack_test!(
    connect_passthrough_reaches_only_the_allowlisted_target,
    |bed| {
        let target = format!("mirror.allowed.test:{}", bed.up.port());
        let connections = bed.up.connections();
        let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
        let out =
            berth_proxy_testbed::raw_all(bed.addr(), req.as_bytes(), Duration::from_millis(500))
                .expect("connect");
        assert!(
            String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"),
            "{out:?}"
        );
        assert_eq!(bed.up.connections(), connections + 1);
    }
);

// 4. DNS answers.
attack_test!(
    allowlisted_names_resolving_to_forbidden_addresses_are_refused_before_connecting,
    |bed| {
        let connects = bed.connects();
        let connections = bed.up.connections();
        for (path, code) in [
            ("/loopback/x", "upstream_address_forbidden"),
            ("/private/x", "upstream_address_forbidden"),
            ("/meta/latest/meta-data/", "upstream_address_metadata"),
            ("/meta6/latest/meta-data/", "upstream_address_metadata"),
            ("/nat64/x", "upstream_address_forbidden"),
            ("/mapped/x", "upstream_address_forbidden"),
            ("/mixed/x", "upstream_address_forbidden"),
        ] {
            let before = bed.up.count();
            let r = bed.get(path, &[]);
            bed.assert_refused(&r, 403, Some(code), before);
        }
        // Not one socket was opened for them (assert_serving reuses the pool).
        assert!(
            bed.connects() - connects <= 1.0,
            "proxy connected somewhere"
        );
        assert!(bed.up.connections() - connections <= 1);
    }
);

// 5. Allowlist matching.
attack_test!(allowlist_matching_is_exact, |bed| {
    let port = bed.up.port();
    for target in [
        format!("https://api.allowed.test.:{port}/v1/x"),
        format!("https://api.allowed.test.evil.test:{port}/v1/x"),
        format!("https://xn--pi-6kc.allowed.test:{port}/v1/x"),
        format!("https://api.allowed.test:{}/v1/x", port.wrapping_add(1)),
    ] {
        let before = bed.up.count();
        let req = format!("GET {target} HTTP/1.1\r\nConnection: close\r\n\r\n");
        let r = bed.raw(req.as_bytes());
        bed.assert_refused(&r, 403, Some("upstream_not_allowed"), before);
    }
    // A homoglyph (Cyrillic а) is not even a valid request target.
    let before = bed.up.count();
    let r = bed
        .raw("GET https://аpi.allowed.test/v1/x HTTP/1.1\r\nConnection: close\r\n\r\n".as_bytes());
    bed.assert_refused(&r, 400, None, before);
    // Mixed case is the same DNS name and goes to the configured upstream.
    let req = format!(
        "GET https://API.Allowed.Test:{port}/v1/case HTTP/1.1\r\nConnection: close\r\n\r\n"
    );
    let r = bed.raw(req.as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(bed.up.seen().pop().unwrap().target, "/v1/case");
});

attack_test!(
    fragments_backslashes_and_forwarded_hosts_change_nothing,
    |bed| {
        let before = bed.up.count();
        let r = bed.get("/mcp%23/x", &[]);
        bed.assert_refused(&r, 403, Some("route_not_allowed"), before);
        let before = bed.up.count();
        let r = bed.get("/mcp/..\\..\\bedrock/x", &[]);
        bed.assert_refused(&r, 400, Some("bad_path"), before);
        let r = bed.get(
            "/mcp/fwd",
            &[
                ("X-Forwarded-Host", "evil://169.254.169.254"),
                ("Forwarded", "host=169.254.169.254"),
                ("X-Real-IP", "169.254.169.254"),
            ],
        );
        assert_eq!(r.status, 200);
        let seen = bed.up.seen().pop().unwrap();
        for h in ["x-forwarded-host", "forwarded", "x-real-ip"] {
            assert_eq!(seen.header(h), None, "{h} passed through");
        }
    }
);

// 6. Redirects.
attack_test!(redirects_are_returned_not_followed, |bed| {
    let connects = bed.connects();
    let before = bed.up.count();
    let r = bed.get("/mcp/redirect", &[]);
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location").as_deref(),
        Some("http://169.254.169.254/latest/meta-data/")
    );
    assert_eq!(bed.up.count(), before + 1, "exactly the one request");
    assert!(bed.connects() - connects <= 1.0);
});

// 7. Client-sent credentials.
attack_test!(client_credentials_never_reach_the_upstream, |bed| {
    let r = bed.raw(
        b"GET /mcp/creds HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer client-forged\r\nAUTHORIZATION: Basic Y2xpZW50\r\n\
          x-api-key: client-key\r\nX-Amz-Security-Token: client-token\r\nx-amz-date: 20000101T000000Z\r\n\
          Proxy-Authorization: Basic cHJveHk=\r\nCookie: session=client\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = bed.up.seen().pop().unwrap();
    assert_eq!(seen.header_count("authorization"), 1);
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    for (k, v) in &seen.headers {
        assert!(!v.contains("client"), "client value passed on in {k}: {v}");
        assert!(
            !k.starts_with("x-amz-")
                && k != "cookie"
                && k != "proxy-authorization"
                && k != "x-api-key"
        );
    }
    // The header route overwrites the client's copy of its own header.
    let r = bed.get("/keyed/x", &[("X-API-KEY", "client-key")]);
    assert_eq!(r.status, 200);
    let seen = bed.up.seen().pop().unwrap();
    assert_eq!(seen.header_count("x-api-key"), 1);
    assert_eq!(seen.header("x-api-key"), Some(API_KEY));
    // Whitespace before the colon is not a header name anyone may use.
    let before = bed.up.count();
    let r = bed.raw(b"GET /mcp/x HTTP/1.1\r\nHost: x\r\nAuthorization : Bearer forged\r\nConnection: close\r\n\r\n");
    bed.assert_refused(&r, 400, None, before);
});

// 8. Secret leaks.
attack_test!(upstreams_echoing_credentials_do_not_leak_them, |bed| {
    for path in ["/mcp/echo-auth", "/keyed/echo-auth"] {
        let r = bed.get(path, &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-plain").as_deref(), Some("fine"));
        assert!(
            !r.head.contains(TOKEN) && !r.head.contains(API_KEY),
            "{}",
            r.head
        );
    }
    assert!(
        bed.proxy
            .metric("berth_proxy_echoed_credentials_dropped_total")
            .unwrap()
            >= 2.0
    );
    // The echo upstream also repeats every request header in its JSON body.
    for path in ["/mcp/echo-body", "/keyed/echo-body"] {
        let r = bed.get(path, &[]);
        assert_eq!(r.status, 200);
        let text = r.body_text();
        assert!(!text.contains(TOKEN) && !text.contains(API_KEY), "{text}");
        assert!(
            text.contains("Bearer ****") || text.contains("\"x-api-key\",\"****"),
            "{text}"
        );
    }
    assert!(
        bed.proxy
            .metric("berth_proxy_echoed_credentials_redacted_total")
            .unwrap()
            >= 2.0
    );
    let before = bed.up.count();
    let r = bed.send("TRACE", "/mcp/x", &[], b"");
    bed.assert_refused(&r, 405, Some("method_not_allowed"), before);
});

attack_test!(tls_failures_fail_closed_and_send_nothing, |bed| {
    let before = bed.up.count();
    let r = bed.get("/untrusted/x", &[]);
    bed.assert_refused(&r, 502, Some("upstream_tls_failed"), before);
    assert_eq!(bed.untrusted.count(), 0);
    assert!(
        bed.untrusted.connections() >= 1,
        "the handshake was attempted"
    );
    assert!(!r.body_text().contains(TOKEN));
});

// 9. Smuggling.
attack_test!(
    content_length_with_transfer_encoding_cannot_smuggle,
    |bed| {
        let before = bed.up.count();
        let out = berth_proxy_testbed::raw_all(
        bed.addr(),
        b"POST /mcp/a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /loopback/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    )
    .unwrap();
        let text = String::from_utf8_lossy(&out);
        // The body is read as chunked (empty), Content-Length dropped, the connection
        // closed after the one request: the smuggled request is never read.
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
        let seen = bed.up.seen();
        assert_eq!(seen.len(), before + 1);
        assert!(seen.iter().all(|s| !s.target.contains("smuggled")));
        assert_eq!(seen.last().unwrap().body.len(), 0);
        // The proxy framed the request itself: never both framings upstream.
        let last = seen.last().unwrap();
        assert!(
            last.header("content-length").is_none() || last.header("transfer-encoding").is_none()
        );
        assert_ne!(last.header("content-length"), Some("4"));
    }
);

attack_test!(malformed_framing_is_refused, |bed| {
    for req in [
        &b"POST /mcp/a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"[..],
        b"POST /mcp/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST /mcp/a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /mcp/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n",
        b"GET /mcp/a HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
        b"GET /mcp/a HTTP/1.1\r\nHost: x\r\nX-Nul: a\0b\r\n\r\n",
        b"GET /mcp/a HTTP/1.1\r\nHost: x\r\nX-Cr: a\rb\r\n\r\n",
    ] {
        let before = bed.up.count();
        let r = bed.raw(req);
        assert_eq!(r.status, 400, "{}: {r:?}", String::from_utf8_lossy(req));
        // A broken chunk is only seen while streaming: the upstream may have
        // received the start of that request, but never a complete one.
        if String::from_utf8_lossy(req).contains("ffffffff") {
            assert!(bed.up.seen()[before..].iter().all(|s| s.body.is_empty()));
            bed.assert_serving();
        } else {
            bed.assert_refused(&r, r.status, None, before);
        }
    }
});

attack_test!(
    bare_lf_and_pipelining_are_read_one_request_at_a_time,
    |bed| {
        let before = bed.up.count();
        let out = berth_proxy_testbed::raw_all(
        bed.addr(),
        b"GET /mcp/one HTTP/1.1\nHost: x\n\nGET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /mcp/three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .unwrap();
        let text = String::from_utf8_lossy(&out);
        let statuses: Vec<&str> = text
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| &text[i + 9..i + 12])
            .collect();
        // Either the bare-LF request is refused as a whole, or each request is
        // judged on its own; the metadata request is refused either way.
        // (the absolute-form one is refused because it names another host than Host).
        let refused = |s: &&str| *s == "400" || *s == "403";
        assert!(
            (statuses.len() == 3
                && statuses[0] == "200"
                && refused(&statuses[1])
                && statuses[2] == "200")
                || statuses.first().is_some_and(|s| *s == "400"),
            "{text}"
        );
        let seen = bed.up.seen();
        assert!(
            seen[before..]
                .iter()
                .all(|s| s.target == "/v1/one" || s.target == "/v1/three")
        );
    }
);

// 10. Header abuse.
attack_test!(oversized_and_numerous_headers_get_431, |bed| {
    let before = bed.up.count();
    let big = "a".repeat(70 * 1024);
    let r = bed.raw(format!("GET /mcp/x HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes());
    bed.assert_refused(&r, 431, None, before);
    let before = bed.up.count();
    let mut many = String::from("GET /mcp/x HTTP/1.1\r\nHost: x\r\n");
    for i in 0..10_000 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let r = bed.raw(many.as_bytes());
    bed.assert_refused(&r, 431, None, before);
});

attack_test!(
    connection_header_cannot_strip_the_injected_credential,
    |bed| {
        let r = bed.get(
            "/mcp/x",
            &[("Connection", "authorization, x-api-key, close")],
        );
        assert_eq!(r.status, 200);
        let seen = bed.up.seen().pop().unwrap();
        assert_eq!(
            seen.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        let r = bed.get("/keyed/x", &[("Connection", "x-api-key, close")]);
        assert_eq!(r.status, 200);
        assert_eq!(
            bed.up.seen().pop().unwrap().header("x-api-key"),
            Some(API_KEY)
        );
    }
);

// 11. Exhaustion.
attack_test!(bodies_over_the_limit_get_413, |bed| {
    let before = bed.up.count();
    let r = bed.raw(b"POST /mcp/x HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\nConnection: close\r\n\r\nabc");
    bed.assert_refused(&r, 413, Some("body_too_large"), before);
    // Chunked, no length declared: cut off at the limit while streaming.
    let mut req = b"POST /mcp/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..20 {
        req.extend_from_slice(b"1000\r\n");
        req.extend_from_slice(&[b'a'; 4096]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let before = bed.up.count();
    let r = bed.raw(&req);
    assert_eq!(r.status, 413, "{r:?}");
    // The upstream saw at most the start of it, never a complete body.
    assert!(bed.up.seen()[before..].iter().all(|s| s.body.is_empty()));
    assert!(bed.up.seen().iter().all(|s| s.body.len() <= 65536));
});

attack_test!(
    slowloris_connections_are_closed_at_the_header_timeout,
    |bed| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(bed.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let start = Instant::now();
        s.write_all(b"GET /mcp/x HTTP/1.1\r\nHost: x\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let _ = s.write_all(b"X-Slow: 1\r\n");
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap_or(0);
        let waited = start.elapsed();
        assert!(
            waited < Duration::from_millis(3000),
            "still open after {waited:?}"
        );
        assert!(
            waited >= Duration::from_millis(900),
            "closed too early: {waited:?}"
        );
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
    }
);

attack_test!(
    streams_pass_unbuffered_and_client_disconnects_are_survived,
    |bed| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(bed.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /mcp/stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let start = Instant::now();
        let mut got = Vec::new();
        let mut first = None;
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if first.is_none() && String::from_utf8_lossy(&got).contains("chunk0") {
                first = Some(start.elapsed());
            }
        }
        let total = start.elapsed();
        let first = first.expect("first chunk");
        assert!(String::from_utf8_lossy(&got).contains("chunk2"));
        assert!(
            total - first >= Duration::from_millis(500),
            "buffered: first at {first:?}, end at {total:?}"
        );
        // Now leave in the middle of a stream.
        let mut s = std::net::TcpStream::connect(bed.addr()).unwrap();
        s.write_all(b"GET /mcp/stream HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let _ = s.read(&mut buf);
        drop(s);
        std::thread::sleep(Duration::from_millis(100));
    }
);

// 13. Method and path policy, upgrades, traversal.
attack_test!(route_method_and_path_policy_holds, |bed| {
    let before = bed.up.count();
    let r = bed.get("/bedrock/model/m/invoke", &[]);
    bed.assert_refused(&r, 405, Some("method_not_allowed"), before);
    let before = bed.up.count();
    let r = bed.send("POST", "/bedrock/model/m/delete", &[], b"{}");
    bed.assert_refused(&r, 403, Some("path_not_allowed"), before);
    let before = bed.up.count();
    let r = bed.send("POST", "/bedrock/model/a/b/invoke", &[], b"{}");
    bed.assert_refused(&r, 403, Some("path_not_allowed"), before);
    let r = bed.send(
        "POST",
        "/bedrock/model/anthropic.claude-3%3A0/invoke",
        &[],
        b"{}",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        bed.up.seen().pop().unwrap().target,
        "/model/anthropic.claude-3%3A0/invoke"
    );
});

attack_test!(path_traversal_and_encoded_prefixes_are_refused, |bed| {
    for (path, status, code) in [
        ("/bedrock/../mcp/x", 400, "bad_path"),
        ("/mcp/../bedrock/model/m/invoke", 400, "bad_path"),
        ("/bedrock/%2e%2e/mcp/x", 400, "bad_path"),
        ("/bedrock%2f..%2fmcp/x", 400, "bad_path"),
        ("/mcp//x", 400, "bad_path"),
        ("/%6dcp/x", 403, "route_not_allowed"),
        ("/MCP/x", 403, "route_not_allowed"),
        ("/mcp", 403, "route_not_allowed"),
    ] {
        let before = bed.up.count();
        let r = bed.get(path, &[]);
        bed.assert_refused(&r, status, Some(code), before);
    }
});

attack_test!(upgrades_are_refused, |bed| {
    for headers in [
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ][..],
        &[
            ("Upgrade", "h2c"),
            ("Connection", "Upgrade, HTTP2-Settings"),
            ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ][..],
    ] {
        let before = bed.up.count();
        let r = bed.get("/mcp/x", headers);
        bed.assert_refused(&r, 403, Some("upgrade_not_allowed"), before);
    }
    let before = bed.up.count();
    let out = berth_proxy_testbed::raw_all(
        bed.addr(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        Duration::from_secs(2),
    )
    .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(!text.starts_with("HTTP/1.1 2"), "{text}");
    assert_eq!(bed.up.count(), before);
});

// The admin endpoints do not echo anything either.
attack_test!(health_and_metrics_hold_no_secret, |bed| {
    let h = bed.get("/health", &[]);
    let m = bed.get("/metrics", &[]);
    assert_eq!(h.status, 200);
    assert_eq!(m.status, 200);
    for r in [&h, &m] {
        assert!(!r.body_text().contains(TOKEN) && !r.body_text().contains(API_KEY));
    }
    let v: serde_json::Value = serde_json::from_slice(&h.body).unwrap();
    assert_eq!(v["secrets"]["mcp"]["state"], "fresh");
});

// One audit line per request: route, method, upstream, status, bytes, latency,
// workspace — and no credential or query value.
attack_test!(
    audit_lines_name_the_request_but_hold_no_secret_or_query_value,
    |bed| {
        let r = bed.send(
            "POST",
            "/mcp/audited?api_key=query-secret-value",
            &[("Authorization", "Bearer client-secret-value")],
            b"0123456789",
        );
        assert_eq!(r.status, 200);
        let before = bed.up.count();
        let r = bed.get("/nowhere?token=query-secret-value", &[]);
        bed.assert_refused(&r, 403, Some("route_not_allowed"), before);
        std::thread::sleep(Duration::from_millis(200));
        let log = bed.proxy.log();
        let line = log
            .lines()
            .find(|l| l.contains("path=/mcp/audited"))
            .unwrap_or_else(|| panic!("no audit line:\n{log}"));
        for part in [
            "audit",
            "workspace_id=ws-attack",
            "route=mcp",
            "method=POST",
            "upstream_host=api.allowed.test",
            "status=200",
            "bytes_in=10",
            "latency_ms=",
            "completed=true",
        ] {
            assert!(line.contains(part), "{part} missing: {line}");
        }
        assert!(
            log.lines().any(|l| l.contains("path=/nowhere")
                && l.contains("code=\"route_not_allowed\"")
                || l.contains("path=/nowhere") && l.contains("code=route_not_allowed")),
            "{log}"
        );
        assert!(
            !log.contains("query-secret-value") && !log.contains("client-secret-value"),
            "{log}"
        );
    }
);

// 11. Exhaustion: connections beyond max_connections are closed at once, and the
// proxy serves again as soon as one is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed() {
    use std::io::{Read, Write};
    let mut bed = Bed::start_full("", &[("BERTH_PROXY_MAX_CONNECTIONS", "4")]).await;
    std::thread::sleep(Duration::from_millis(100));
    let held: Vec<std::net::TcpStream> = (0..4)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(bed.addr()).unwrap();
            s.write_all(b"GET /mcp/held HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = std::net::TcpStream::connect(bed.addr()).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let _ = extra.write_all(b"GET /mcp/x HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = [0u8; 64];
    let n = extra.read(&mut buf).unwrap_or(0);
    assert_eq!(
        n,
        0,
        "the fifth connection was served: {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        bed.proxy
            .metric("berth_proxy_connections_rejected_total")
            .unwrap()
            >= 1.0
    );
    bed.assert_serving();
    bed.assert_log_clean();
}
