//! The workspace-agent, for real: the binary in a hardened workspace container
//! (user 1000, read-only root, pids limit 128, 256 MiB), driven over HTTP and
//! WebSocket from outside the way the backend drives it.
//!
//! Each test acquires its own workspace from a [`LocalBerth`] with a warm pool of
//! one, so the tests run side by side.

use std::time::{Duration, Instant};

use berth_tests::{
    agent::{AgentClient, ExecOutcome, acquire, encode, error_code},
    system::LocalBerth,
};
use berth_wire::{ExecEvent, ProcessList};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

async fn workspace(tag: &str) -> (LocalBerth, AgentClient) {
    let berth = LocalBerth::start(1).await;
    assert!(
        berth.wait_pool(1, Duration::from_secs(60)).await,
        "pool never filled"
    );
    let agent = acquire(&berth, tag).await;
    (berth, agent)
}

/// Processes in the workspace whose command line contains `needle`.
async fn processes_matching(agent: &AgentClient, needle: &str) -> Vec<String> {
    // `ps -o pid,args` lists the container's processes; drop our own grep/ps line.
    let out = agent.sh("ps -o pid,args").await;
    out.stdout_text()
        .lines()
        .filter(|l| l.contains(needle) && !l.contains("ps -o"))
        .map(str::to_owned)
        .collect()
}

async fn wait_no_processes(agent: &AgentClient, needle: &str, limit: Duration) -> Vec<String> {
    let start = Instant::now();
    loop {
        let left = processes_matching(agent, needle).await;
        if left.is_empty() || start.elapsed() > limit {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn health(agent: &AgentClient) -> Value {
    let resp = agent
        .http
        .get(agent.url("/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("agent answers /health");
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_reports_exit_codes_signals_output_and_its_processes() {
    let (berth, agent) = workspace("exec").await;

    // Exit codes, stdout and stderr apart, env and cwd.
    let out = agent
        .exec(
            json!({"shell": "echo out; echo err >&2; echo $GREETING; pwd; exit 3",
                     "env": {"GREETING": "hi there"}}),
        )
        .await;
    assert!(matches!(out.events.first(), Some(ExecEvent::Started { pid }) if *pid > 1));
    assert_eq!(out.stdout_text(), "out\nhi there\n/workspace\n");
    assert_eq!(out.stderr_text(), "err\n");
    assert_eq!(
        (out.code, out.signal, out.timed_out),
        (Some(3), None, false)
    );
    assert!(matches!(out.events.last(), Some(ExecEvent::Exit { .. })));
    let out = agent.exec(json!({"cmd": ["true"]})).await;
    assert_eq!(out.code, Some(0));
    agent.exec(json!({"cmd": ["mkdir", "sub"]})).await;
    let out = agent.exec(json!({"cmd": ["pwd"], "cwd": "sub"})).await;
    assert_eq!(out.stdout_text(), "/workspace/sub\n");
    // A shell command that is not found: the shell says so, with 127.
    let out = agent.sh("no-such-program").await;
    assert_eq!(out.code, Some(127));
    assert!(out.stderr_text().contains("not found"), "{out:?}");
    // Killed by a signal: no code, the signal's number.
    let out = agent.sh("kill -TERM $$; sleep 5").await;
    assert_eq!((out.code, out.signal), (None, Some(15)));

    // stdin is written and closed.
    let out = agent
        .exec(json!({"cmd": ["sh", "-c", "cat; echo done"], "stdin": "from stdin\n"}))
        .await;
    assert_eq!(out.stdout_text(), "from stdin\ndone\n");

    // Binary output travels as base64 and is said to; a UTF-8 character split
    // across reads arrives whole.
    let out = agent.sh("printf '\\377\\000\\101'").await;
    assert_eq!(out.stdout, [0xff, 0x00, 0x41]);
    assert!(
        out.events
            .iter()
            .any(|e| matches!(e, ExecEvent::Stdout { base64: true, .. }))
    );
    let out = agent
        .sh("printf 'h\\303'; sleep 0.1; printf '\\251llo'")
        .await;
    assert_eq!(out.stdout_text(), "héllo");

    // max_output_bytes cuts the output, says so, and lets the command finish.
    let out = agent
        .exec(json!({"shell": "seq 1 200000; echo finished >&2", "max_output_bytes": 1000}))
        .await;
    assert_eq!(out.stdout.len() + out.stderr.len(), 1000);
    assert!(
        out.truncated && out.code == Some(0),
        "{:?}",
        out.events.last()
    );
    let marks: Vec<_> = out
        .events
        .iter()
        .filter(|e| matches!(e, ExecEvent::Truncated { limit_bytes: 1000 }))
        .collect();
    assert_eq!(marks.len(), 1);

    // A running command is listed, counted as activity, and can be signalled.
    let resp = agent
        .exec_raw(
            &json!({"shell": "trap 'echo got TERM; exit 7' TERM; while :; do sleep 0.05; done"}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let stream = tokio::spawn(async move {
        let text = resp.text().await.unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<ExecEvent>(l).unwrap())
            .collect::<Vec<_>>()
    });
    let mut listed = ProcessList { processes: vec![] };
    for _ in 0..50 {
        listed = agent
            .request(reqwest::Method::GET, "/v1/processes")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !listed.processes.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(listed.processes.len(), 1, "{listed:?}");
    let pid = listed.processes[0].pid;
    assert_eq!(listed.processes[0].argv[0], "/bin/sh");
    let activity = health(&agent).await["activity"].clone();
    assert_eq!(activity["attached_streams"], 1, "{activity}");
    assert_eq!(activity["running_commands"], 1, "{activity}");
    assert!(activity["processes"].as_u64().unwrap() >= 1, "{activity}");
    assert!(activity["last_request_ms"].as_u64().unwrap() > 0);
    let resp = agent
        .request(
            reqwest::Method::POST,
            &format!("/v1/processes/{pid}/signal"),
        )
        .json(&json!({"signal": "TERM"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let events = tokio::time::timeout(Duration::from_secs(10), stream)
        .await
        .expect("signalled command ends")
        .unwrap();
    let mut out = ExecOutcome::default();
    events.into_iter().for_each(|e| out.push(e));
    assert_eq!(out.stdout_text(), "got TERM\n");
    assert_eq!(out.code, Some(7));
    let activity: Value = agent
        .request(reqwest::Method::GET, "/v1/activity")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(activity["running_commands"], 0, "{activity}");
    assert_eq!(activity["attached_streams"], 0, "{activity}");
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_disconnects_kill_the_whole_process_group() {
    let (berth, agent) = workspace("kill").await;

    // A timeout kills the command, its children and its grandchildren.
    let started = Instant::now();
    let out = agent
        .exec(json!({
            "shell": "sleep 301 & (sleep 302 & sh -c 'sleep 303' & wait) & echo up; wait",
            "timeout_ms": 700
        }))
        .await;
    assert!(out.timed_out, "{:?}", out.events);
    assert_eq!((out.code, out.signal), (None, Some(9)));
    assert_eq!(out.stdout_text(), "up\n");
    assert!(started.elapsed() < Duration::from_secs(5));
    let left = wait_no_processes(&agent, "sleep 30", Duration::from_secs(3)).await;
    assert!(left.is_empty(), "survivors of the timeout: {left:?}");

    // A client that goes away kills the group too, even if it prints nothing.
    let resp = agent
        .exec_raw(&json!({"shell": "sleep 311 & (sleep 312 &); sleep 313"}))
        .await;
    let mut resp = resp;
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("started"));
    assert!(
        !processes_matching(&agent, "sleep 31").await.is_empty(),
        "the command was running"
    );
    drop(resp);
    let left = wait_no_processes(&agent, "sleep 31", Duration::from_secs(5)).await;
    assert!(left.is_empty(), "survivors of the disconnect: {left:?}");

    // Nothing is left as a zombie: the agent (PID 1) reaps orphans (a killed
    // process is a zombie for the moment before it is reaped, so allow a few).
    let mut zombies = String::new();
    for _ in 0..50 {
        zombies = agent
            .sh("ps -o stat,pid | grep -c '^Z' || true")
            .await
            .stdout_text()
            .trim()
            .to_owned();
        if zombies == "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(zombies, "0", "zombies left unreaped");
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_stopped_by_the_pids_limit_and_the_agent_survives() {
    let (berth, agent) = workspace("forkbomb").await;
    let out = agent
        .exec(json!({"shell": "bomb() { bomb | bomb & }; bomb; sleep 60", "timeout_ms": 3000}))
        .await;
    assert!(out.timed_out, "{:?}", out.events.last());
    // The agent kept serving throughout and still starts commands afterwards, once
    // the bomb's processes are killed and reaped.
    assert_eq!(health(&agent).await["status"], "ok");
    let start = Instant::now();
    let ok = loop {
        let resp = agent.exec_raw(&json!({"cmd": ["echo", "alive"]})).await;
        if resp.status() == 200 {
            let text = resp.text().await.unwrap();
            if text.contains("alive") {
                break true;
            }
        }
        if start.elapsed() > Duration::from_secs(15) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(ok, "the agent could not start a command after the bomb");
    let start = Instant::now();
    let mut processes = u64::MAX;
    while start.elapsed() < Duration::from_secs(15) {
        processes = health(&agent).await["activity"]["processes"]
            .as_u64()
            .unwrap();
        if processes == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(processes, 0, "bomb processes left behind");
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_mib_of_output_arrives_intact_and_execs_run_concurrently() {
    let (berth, agent) = workspace("bulk").await;
    let made = agent
        .sh("head -c 104857600 /dev/urandom > /tmp/big && sha256sum /tmp/big")
        .await;
    assert_eq!(made.code, Some(0), "{}", made.stderr_text());
    let want = made
        .stdout_text()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let out = agent.exec(json!({"cmd": ["cat", "/tmp/big"]})).await;
    assert_eq!(out.code, Some(0));
    assert_eq!(out.stdout.len(), 104_857_600);
    assert_eq!(hex(&Sha256::digest(&out.stdout)), want);
    drop(out);
    agent.sh("rm /tmp/big").await;

    // Sixteen commands at once, each with its own output.
    let runs = (0..16).map(|i| {
        let agent = agent.clone();
        tokio::spawn(async move {
            let out = agent
                .exec(json!({"shell": format!("sleep 0.3; seq 1 {}", 1000 + i)}))
                .await;
            (i, out)
        })
    });
    let started = Instant::now();
    for run in futures_util::future::join_all(runs).await {
        let (i, out) = run.unwrap();
        assert_eq!(out.code, Some(0));
        let want: String = (1..=1000 + i).map(|n| format!("{n}\n")).collect();
        assert_eq!(out.stdout_text(), want, "command {i}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "16 commands of 0.3 s ran one after another: {:?}",
        started.elapsed()
    );
    berth.stop().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_confined_to_the_workspace_root() {
    let (berth, agent) = workspace("files").await;

    // Round trip of binary content, with a mode, into directories made on the way.
    let content: Vec<u8> = (0..1_048_576u32).map(|i| (i * 7 % 251) as u8).collect();
    let resp = agent
        .request(
            reqwest::Method::PUT,
            &format!(
                "/v1/files?path={}&mode={}",
                encode("src/deep/data.bin"),
                encode("750")
            ),
        )
        .body(content.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = agent.get_file("/workspace/src/deep/data.bin").await;
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), content.as_slice());
    let st = agent
        .sh("stat -c '%a %u' src/deep/data.bin; ls -a src/deep")
        .await;
    assert_eq!(
        st.stdout_text(),
        "750 1000\n.\n..\ndata.bin\n",
        "no temp file left"
    );

    // Overwrite keeps the mode; list shows kinds and sizes.
    assert_eq!(
        agent.put_file("src/deep/data.bin", "small").await.status(),
        200
    );
    agent.sh("ln -s data.bin src/deep/link").await;
    let list: Value = agent
        .request(
            reqwest::Method::GET,
            &format!("/v1/files/list?path={}", encode("src/deep")),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["entries"][0]["name"], "data.bin");
    assert_eq!(list["entries"][0]["kind"], "file");
    assert_eq!(list["entries"][0]["size"], 5);
    assert_eq!(list["entries"][0]["mode"], 0o750);
    assert_eq!(list["entries"][1]["kind"], "symlink");
    // A symlink inside the root is followed.
    let got = agent.get_file("src/deep/link").await;
    assert_eq!(got.text().await.unwrap(), "small");

    // mkdir, then delete: a non-empty directory only with recursive=true.
    let resp = agent
        .request(reqwest::Method::POST, "/v1/files/mkdir")
        .json(&json!({"path": "made/a/b", "parents": true, "mode": "700"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = agent
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/files?path={}", encode("made")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await.1, "directory_not_empty");
    let resp = agent
        .request(
            reqwest::Method::DELETE,
            &format!(
                "/v1/files?path={}&recursive={}",
                encode("made"),
                encode("true")
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(agent.get_file("made").await.status(), 404);

    // Escapes, planted by the workspace itself: symlinks out of the root, absolute
    // and relative, to a directory and to a file, through /proc.
    let planted = agent
        .sh("echo secret > /tmp/secret && mkdir -p /tmp/outside && \
             ln -s /tmp/secret s-abs && ln -s ../tmp/secret s-rel && \
             ln -s /tmp/outside d-abs && ln -s ../tmp d-rel && ln -s / rootlink && \
             ln -s /proc/1/root proc-root && ln -s src/../.. sneaky && \
             mkdir -p inner && ln -s ../../tmp inner/up")
        .await;
    assert_eq!(planted.code, Some(0), "{}", planted.stderr_text());
    for path in [
        "s-abs",
        "s-rel",
        "d-abs/x",
        "d-rel/secret",
        "rootlink/tmp/secret",
        "proc-root/tmp/secret",
        "sneaky/tmp/secret",
        "inner/up/secret",
        "../tmp/secret",
        "src/../../tmp/secret",
        "/tmp/secret",
        "/workspace/../tmp/secret",
    ] {
        let (status, code, body) = error_code(agent.get_file(path).await).await;
        assert_eq!(
            (status, code.as_str()),
            (403, "path_escape"),
            "GET {path}: {body}"
        );
    }
    for path in [
        "d-abs/new",
        "d-rel/new",
        "s-abs",
        "inner/up/new",
        "/tmp/new",
    ] {
        let (status, code, body) = error_code(agent.put_file(path, "pwned").await).await;
        assert_eq!(
            (status, code.as_str()),
            (403, "path_escape"),
            "PUT {path}: {body}"
        );
    }
    for path in ["d-abs", "rootlink", "proc-root/etc"] {
        let resp = agent
            .request(
                reqwest::Method::GET,
                &format!("/v1/files/list?path={}", encode(path)),
            )
            .send()
            .await
            .unwrap();
        let (status, code, body) = error_code(resp).await;
        assert_eq!(
            (status, code.as_str()),
            (403, "path_escape"),
            "list {path}: {body}"
        );
    }
    let resp = agent
        .request(reqwest::Method::POST, "/v1/files/mkdir")
        .json(&json!({"path": "d-rel/made", "parents": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await.1, "path_escape");
    // Deleting a symlink removes the link, never its target.
    let resp = agent
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/files?path={}", encode("s-abs")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let check = agent
        .sh("cat /tmp/secret; ls /tmp/outside | wc -l; ls /tmp; test -e s-abs || echo gone")
        .await;
    assert_eq!(check.stdout_text(), "secret\n0\noutside\nsecret\ngone\n");
    // A FIFO does not hang the agent.
    agent.sh("mkfifo pipe").await;
    assert_eq!(
        error_code(agent.get_file("pipe").await).await.1,
        "not_a_file"
    );
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_named_error_and_the_agent_keeps_serving() {
    let (berth, agent) = workspace("bad-input").await;
    let post_exec = |body: &'static str| {
        agent
            .request(reqwest::Method::POST, "/v1/exec")
            .header("content-type", "application/json")
            .body(body)
    };
    let get_file =
        |query: &'static str| agent.request(reqwest::Method::GET, &format!("/v1/files?{query}"));
    // (request, status, code, a word the message must contain)
    let cases: Vec<(reqwest::RequestBuilder, u16, &str, &str)> = vec![
        (
            post_exec("{not json"),
            400,
            "invalid_json",
            "key must be a string",
        ),
        (post_exec(""), 400, "invalid_json", "empty body"),
        (post_exec("42"), 400, "invalid_json", "invalid type"),
        (
            post_exec(r#"{"cmd":["true"],"colour":1}"#),
            400,
            "invalid_json",
            "unknown field `colour`",
        ),
        (
            post_exec(r#"{"cmd":"true"}"#),
            400,
            "invalid_json",
            "invalid type",
        ),
        (
            post_exec(r#"{"cmd":["true"],"timeout_ms":-1}"#),
            400,
            "invalid_json",
            "invalid value",
        ),
        (
            post_exec(r#"{"cmd":["true"],"env":{"A":1}}"#),
            400,
            "invalid_json",
            "invalid type",
        ),
        (
            post_exec(r#"{"cmd":[]}"#),
            400,
            "invalid_field",
            "argv must not be empty",
        ),
        (
            post_exec(r#"{}"#),
            400,
            "invalid_field",
            "one of `cmd` and `shell`",
        ),
        (
            post_exec(r#"{"cmd":["true"],"shell":"true"}"#),
            400,
            "invalid_field",
            "only one",
        ),
        (
            post_exec(r#"{"cmd":[""]}"#),
            400,
            "invalid_field",
            "argv[0]",
        ),
        (
            post_exec(r#"{"shell":"   "}"#),
            400,
            "invalid_field",
            "shell",
        ),
        (
            post_exec(r#"{"cmd":["a\u0000b"]}"#),
            400,
            "invalid_field",
            "NUL",
        ),
        (
            post_exec(r#"{"cmd":["true"],"cwd":"/nope"}"#),
            400,
            "invalid_field",
            "/nope is not a directory",
        ),
        (
            post_exec(r#"{"cmd":["true"],"cwd":""}"#),
            400,
            "invalid_field",
            "cwd",
        ),
        (
            post_exec(r#"{"cmd":["true"],"timeout_ms":0}"#),
            400,
            "invalid_field",
            "at least 1",
        ),
        (
            post_exec(r#"{"cmd":["true"],"timeout_ms":999999999999}"#),
            400,
            "invalid_field",
            "a week",
        ),
        (
            post_exec(r#"{"cmd":["true"],"env":{"A=B":"x"}}"#),
            400,
            "invalid_field",
            "A=B",
        ),
        (
            post_exec(r#"{"cmd":["true"],"env":{"":"x"}}"#),
            400,
            "invalid_field",
            "variable name",
        ),
        (
            post_exec(r#"{"cmd":["true"],"pty":{"rows":24,"cols":80}}"#),
            400,
            "invalid_field",
            "/v1/exec/ws",
        ),
        (
            post_exec(r#"{"cmd":["no-such-program","x"]}"#),
            422,
            "command_not_found",
            "no-such-program",
        ),
        (
            post_exec(r#"{"cmd":["/tmp"]}"#),
            422,
            "command_not_executable",
            "/tmp",
        ),
        (
            agent
                .http
                .post(agent.url("/v1/exec"))
                .body(r#"{"cmd":["true"]}"#),
            401,
            "unauthorized",
            "bearer",
        ),
        (
            agent
                .http
                .post(agent.url("/v1/exec"))
                .bearer_auth("0123456789abcdef0123456789abcdef")
                .body(r#"{"cmd":["true"]}"#),
            401,
            "unauthorized",
            "bearer",
        ),
        (
            agent
                .http
                .post(agent.url("/v1/exec"))
                .basic_auth("user", Some(&agent.token))
                .body(r#"{"cmd":["true"]}"#),
            401,
            "unauthorized",
            "bearer",
        ),
        (
            agent
                .http
                .post(agent.url("/v1/claim"))
                .body(r#"{"workspace_id":"w2","token":"0123456789abcdef0123"}"#),
            409,
            "already_claimed",
            "already claimed",
        ),
        (
            agent
                .http
                .post(agent.url("/v1/claim"))
                .body(r#"{"workspace_id":"w2","token":"short"}"#),
            400,
            "invalid_field",
            "16 characters",
        ),
        (
            agent
                .http
                .post(agent.url("/v1/claim"))
                .body(r#"{"workspace_id":"w","token":"0123456789abcdef0","x":1}"#),
            400,
            "invalid_json",
            "unknown field `x`",
        ),
        (
            agent.request(reqwest::Method::GET, "/v1/files"),
            400,
            "invalid_field",
            "`path` query parameter",
        ),
        (
            get_file("path=%FF%FE"),
            400,
            "invalid_path",
            "not valid UTF-8",
        ),
        (get_file("path=a%00b"), 400, "invalid_path", "NUL"),
        (
            get_file("path=%zz"),
            400,
            "invalid_path",
            "percent-encoding",
        ),
        (get_file("path="), 400, "invalid_path", "empty"),
        (
            get_file("path=../etc/passwd"),
            403,
            "path_escape",
            "outside the workspace root",
        ),
        (
            get_file("path=/etc/passwd"),
            403,
            "path_escape",
            "outside the workspace root",
        ),
        (get_file("path=nope.txt"), 404, "file_not_found", "nope.txt"),
        (get_file("path=."), 409, "is_a_directory", "directory"),
        (
            get_file("path=x&colour=red"),
            400,
            "invalid_field",
            "colour",
        ),
        (
            agent
                .request(reqwest::Method::PUT, "/v1/files?path=f&mode=4755")
                .body("x"),
            400,
            "invalid_field",
            "beyond rwx",
        ),
        (
            agent
                .request(reqwest::Method::PUT, "/v1/files?path=f&mode=rw")
                .body("x"),
            400,
            "invalid_field",
            "octal",
        ),
        (
            agent.request(reqwest::Method::DELETE, "/v1/files?path=/workspace"),
            400,
            "invalid_path",
            "root itself",
        ),
        (
            agent.request(reqwest::Method::DELETE, "/v1/files?path=nope"),
            404,
            "file_not_found",
            "nope",
        ),
        (
            agent.request(reqwest::Method::GET, "/v1/files/list?path=nope/deeper"),
            404,
            "file_not_found",
            "nope/deeper",
        ),
        (
            agent
                .request(reqwest::Method::POST, "/v1/files/mkdir")
                .body(r#"{"path":"/workspace"}"#),
            409,
            "already_exists",
            "already exists",
        ),
        (
            agent
                .request(reqwest::Method::POST, "/v1/files/mkdir")
                .body(r#"{"path":"m","mode":"999"}"#),
            400,
            "invalid_field",
            "octal",
        ),
        (
            agent
                .request(reqwest::Method::POST, "/v1/files/mkdir")
                .body(r#"{"dir":"m"}"#),
            400,
            "invalid_json",
            "unknown field `dir`",
        ),
        (
            agent
                .request(reqwest::Method::POST, "/v1/processes/abc/signal")
                .body(r#"{"signal":"TERM"}"#),
            400,
            "invalid_field",
            "not a process id",
        ),
        (
            agent
                .request(reqwest::Method::POST, "/v1/processes/99999/signal")
                .body(r#"{"signal":"TERM"}"#),
            404,
            "process_not_found",
            "99999",
        ),
        (
            agent
                .request(reqwest::Method::POST, "/v1/processes/1/signal")
                .body(r#"{"signal":"SIGNOPE"}"#),
            400,
            "invalid_field",
            "SIGNOPE",
        ),
        (
            agent
                .request(reqwest::Method::POST, "/v1/processes/1/signal")
                .body(r#"{"signal":"KILL"}"#),
            404,
            "process_not_found",
            "pid 1",
        ),
        (
            agent.request(reqwest::Method::GET, "/v1/nope"),
            404,
            "not_found",
            "no such route",
        ),
        (
            agent.request(reqwest::Method::DELETE, "/v1/exec"),
            405,
            "method_not_allowed",
            "method",
        ),
        (
            agent.request(reqwest::Method::GET, "/v1/exec/ws"),
            400,
            "websocket_required",
            "WebSocket",
        ),
        (
            agent.http.get(agent.url("/v1/exec/ws")),
            401,
            "unauthorized",
            "bearer",
        ),
        (
            agent.http.get(agent.url("/v1/processes")),
            401,
            "unauthorized",
            "bearer",
        ),
        (
            agent.http.get(agent.url("/v1/files?path=x")),
            401,
            "unauthorized",
            "bearer",
        ),
        (
            agent.http.get(agent.url("/v1/activity")),
            401,
            "unauthorized",
            "bearer",
        ),
    ];
    assert!(cases.len() >= 30);
    let n = cases.len();
    for (i, (req, status, code, word)) in cases.into_iter().enumerate() {
        let resp = req.send().await.unwrap_or_else(|e| panic!("case {i}: {e}"));
        let (got_status, got_code, body) = error_code(resp).await;
        assert_eq!(
            (got_status, got_code.as_str()),
            (status, code),
            "case {i}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(word),
            "case {i}: {word:?} not in {message:?}"
        );
    }
    // A body over max_request_bytes is refused from its Content-Length, before it
    // is read (sent raw: the agent answers and closes while a client still writes).
    let resp = raw_http(
        agent.url.trim_start_matches("http://"),
        &format!(
            "POST /v1/exec HTTP/1.1\r\nhost: agent\r\nauthorization: Bearer {}\r\n\
             content-length: {}\r\n\r\n{{\"cmd\":[\"cat\"],\"stdin\":\"xxxx",
            agent.token,
            2 << 20
        ),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains(r#""code":"body_too_large""#), "{resp}");
    assert!(
        resp.contains("max_request_bytes limit of 1048576 bytes"),
        "{resp}"
    );

    // Still serving, and nothing was started or left behind by the refusals.
    assert_eq!(health(&agent).await["activity"]["running_commands"], 0);
    let out = agent.exec(json!({"cmd": ["echo", "still here"]})).await;
    assert_eq!(out.stdout_text(), "still here\n");
    eprintln!("{n} bad requests answered");
    berth.stop().await;
}

/// Opens a WebSocket session and sends the start request.
async fn session(
    agent: &AgentClient,
    start: Value,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = agent.url("/v1/exec/ws").replacen("http://", "ws://", 1);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", agent.token).parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text(start.to_string())).await.unwrap();
    ws
}

/// Reads session events until `until` holds for the output so far, or the exit.
async fn read_until(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    out: &mut ExecOutcome,
    until: impl Fn(&ExecOutcome) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !until(out) && !out.exited {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .unwrap_or_else(|_| panic!("timed out; so far: {out:?}"));
        match msg {
            Some(Ok(Message::Text(t))) => out.push(serde_json::from_str(&t).unwrap()),
            Some(Ok(_)) => {}
            _ => break,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sessions_take_stdin_signals_and_a_pty() {
    let (berth, agent) = workspace("ws").await;

    // Pipes: stdin in, stdout out, close stdin ends `cat`.
    let mut ws = session(&agent, json!({"cmd": ["cat"]})).await;
    ws.send(Message::text(r#"{"type":"stdin","data":"hello\n"}"#))
        .await
        .unwrap();
    ws.send(Message::binary(b"raw bytes\n".to_vec()))
        .await
        .unwrap();
    let mut out = ExecOutcome::default();
    read_until(&mut ws, &mut out, |o| o.stdout.ends_with(b"raw bytes\n")).await;
    assert_eq!(out.stdout_text(), "hello\nraw bytes\n");
    // A refused message gets an error event and the session goes on.
    ws.send(Message::text(r#"{"type":"resize","rows":1,"cols":1}"#))
        .await
        .unwrap();
    ws.send(Message::text(r#"{"type":"bogus"}"#)).await.unwrap();
    ws.send(Message::text(r#"{"type":"close_stdin"}"#))
        .await
        .unwrap();
    read_until(&mut ws, &mut out, |_| false).await;
    assert_eq!(out.code, Some(0), "{:?}", out.events);
    let errors: Vec<_> = out
        .events
        .iter()
        .filter_map(|e| match e {
            ExecEvent::Error { code, .. } => Some(code.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(errors, ["invalid_field", "invalid_json"]);

    // A pty of the asked size; resize reaches it; input is echoed by the terminal.
    let mut ws = session(
        &agent,
        json!({"shell": "stty size; read a; stty size; read b; echo got:$b", "pty": {"rows": 30, "cols": 100}}),
    )
    .await;
    let mut out = ExecOutcome::default();
    read_until(&mut ws, &mut out, |o| o.stdout_text().contains("30 100")).await;
    ws.send(Message::text(r#"{"type":"resize","rows":40,"cols":120}"#))
        .await
        .unwrap();
    ws.send(Message::text(r#"{"type":"stdin","data":"\n"}"#))
        .await
        .unwrap();
    read_until(&mut ws, &mut out, |o| o.stdout_text().contains("40 120")).await;
    ws.send(Message::text(r#"{"type":"stdin","data":"typed\n"}"#))
        .await
        .unwrap();
    read_until(&mut ws, &mut out, |_| false).await;
    let text = out.stdout_text();
    assert!(
        text.contains("typed\r\n"),
        "the terminal echoes input: {text:?}"
    );
    assert!(text.contains("got:typed"), "{text:?}");
    assert_eq!(out.code, Some(0));
    assert!(out.stderr.is_empty(), "a pty merges stderr into stdout");

    // Ctrl-C typed into the pty interrupts the foreground job; a signal message too.
    let mut ws = session(
        &agent,
        json!({"cmd": ["sleep", "321"], "pty": {"rows": 24, "cols": 80}}),
    )
    .await;
    let mut out = ExecOutcome::default();
    read_until(&mut ws, &mut out, |o| !o.events.is_empty()).await;
    ws.send(Message::text(r#"{"type":"stdin","data":"\u0003"}"#))
        .await
        .unwrap();
    read_until(&mut ws, &mut out, |_| false).await;
    assert_eq!(out.signal, Some(2), "{:?}", out.events);
    let mut ws = session(&agent, json!({"cmd": ["sleep", "322"]})).await;
    let mut out = ExecOutcome::default();
    read_until(&mut ws, &mut out, |o| !o.events.is_empty()).await;
    ws.send(Message::text(r#"{"type":"signal","signal":"SIGUSR1"}"#))
        .await
        .unwrap();
    read_until(&mut ws, &mut out, |_| false).await;
    assert_eq!(out.signal, Some(10), "{:?}", out.events);

    // A bad start request gets an error event and a close.
    let mut ws = session(&agent, json!({"cmd": []})).await;
    let mut out = ExecOutcome::default();
    read_until(&mut ws, &mut out, |o| !o.events.is_empty()).await;
    assert!(
        matches!(&out.events[..], [ExecEvent::Error { code, .. }] if code == "invalid_field"),
        "{:?}",
        out.events
    );

    // A client that goes away kills the session's command.
    let mut ws = session(&agent, json!({"shell": "sleep 323 & sleep 324"})).await;
    let mut out = ExecOutcome::default();
    read_until(&mut ws, &mut out, |o| !o.events.is_empty()).await;
    assert_eq!(health(&agent).await["activity"]["attached_streams"], 1);
    drop(ws);
    let left = wait_no_processes(&agent, "sleep 32", Duration::from_secs(5)).await;
    assert!(left.is_empty(), "survivors of the closed session: {left:?}");
    assert_eq!(health(&agent).await["activity"]["attached_streams"], 0);

    // An interactive shell on a pty runs each job in a group of its own; closing
    // the session still kills them all (the whole session goes).
    let mut ws = session(
        &agent,
        json!({"cmd": ["sh", "-i"], "pty": {"rows": 24, "cols": 80}}),
    )
    .await;
    ws.send(Message::text(
        r#"{"type":"stdin","data":"sleep 331 &\nsleep 332\n"}"#,
    ))
    .await
    .unwrap();
    let start = Instant::now();
    while processes_matching(&agent, "sleep 33").await.len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "jobs never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(ws);
    let left = wait_no_processes(&agent, "sleep 33", Duration::from_secs(5)).await;
    assert!(left.is_empty(), "jobs of the closed pty session: {left:?}");
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_also_listens_on_a_unix_socket() {
    let (berth, agent) = workspace("unix").await;
    // A second agent in the same container, on a socket only (as in a workspace
    // with no network), reached from the host through the container's root.
    let started = agent
        .sh(
            "setsid workspace-agent --listen unix:/tmp/agent.sock --root /workspace \
             --max-file-bytes 1000 \
             >/tmp/agent.log 2>&1 & \
             for i in $(seq 50); do [ -S /tmp/agent.sock ] && break; sleep 0.05; done; \
             ls -l /tmp/agent.sock",
        )
        .await;
    assert!(
        started.stdout_text().starts_with("srw-rw----"),
        "{started:?}"
    );
    let name = agent.container().await;
    let pid = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.State.Pid}}", &name])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_owned();
    let socket = format!("/proc/{pid}/root/tmp/agent.sock");

    let health = unix_request(&socket, "GET", "/health", None, "").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let token = "unix-socket-token-0123456789";
    let claim = format!(r#"{{"workspace_id":"ws-unix","token":"{token}"}}"#);
    let resp = unix_request(&socket, "POST", "/v1/claim", None, &claim).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let resp = unix_request(
        &socket,
        "POST",
        "/v1/exec",
        Some(token),
        r#"{"cmd":["echo","over the socket"]}"#,
    )
    .await;
    assert!(
        resp.contains(r#"{"event":"stdout","data":"over the socket\n"}"#),
        "{resp}"
    );
    let resp = unix_request(&socket, "POST", "/v1/exec", None, r#"{"cmd":["true"]}"#).await;
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    // Its configured upload limit is enforced and named; nothing is left behind.
    let big = "x".repeat(4000);
    let resp = unix_request(&socket, "PUT", "/v1/files?path=big", Some(token), &big).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains(r#""code":"file_too_large""#), "{resp}");
    assert!(
        resp.contains("max_file_bytes limit of 1000 bytes"),
        "{resp}"
    );
    let resp = unix_request(&socket, "PUT", "/v1/files?path=small", Some(token), "ok").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let left = agent.sh("ls -a /workspace").await;
    assert_eq!(left.stdout_text(), ".\n..\nsmall\n");
    berth.stop().await;
}

/// One HTTP/1.1 request over a Unix socket; returns the whole response as text.
async fn unix_request(
    socket: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .unwrap_or_else(|e| panic!("connect {socket}: {e}"));
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: agent\r\nconnection: close\r\n{auth}\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut resp))
        .await
        .expect("response in time")
        .unwrap();
    resp
}

/// Writes `request` to a TCP address as is and returns what comes back until close.
async fn raw_http(addr: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}
