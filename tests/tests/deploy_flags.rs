//! The deployment and the binaries agree (issue 10, item 7), checked against the
//! binaries themselves rather than a hand-written list:
//!
//! - what each binary accepts comes from its real `--help` (clap's `[env: NAME]`
//!   annotations and `--flag`s) plus the variables its own code reads outside clap
//!   (`env::var("…")`, `EnvFilter::try_from_env("…")`, the credential-proxy's
//!   configuration overrides);
//! - what the deployment passes is read from `terraform/` (container definitions,
//!   output maps, the hosts' user-data) and `ami/` (`hostd.env`, the systemd unit);
//! - what is required comes from the scheduler itself: `scheduler serve` is run in ECS
//!   mode and every configuration error it gives names what it still needs. It never
//!   reaches the network: the instance metadata service is switched off, the ECS
//!   endpoint is a closed loopback port, the state store is `memory`, and the listen
//!   address is one this test holds, so the scheduler stops (exit 69) right after its
//!   configuration is accepted. hostd in ECS mode reads instance metadata as it starts,
//!   so it is never run here: its requirements are checked from its `--help` names.
//!
//! Run `cargo build --workspace --bins` first: the binaries under test are the built
//! ones in `target/debug`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_tests::deployment::{binaries::*, settings::*};
use berth_wire::ecs as wire_ecs;

// --- running the scheduler safely ----------------------------------------------------

/// A value for a deployed setting when the scheduler is run here: the literal when
/// the deployment writes one, the Terraform variable's default when it has one, else
/// a placeholder of the right shape.
fn probe_value(s: &Setting) -> String {
    if let Some(v) = hcl_literal(&s.value) {
        return v;
    }
    // `var.x`, or `tostring(var.x)` for a number the container needs as text.
    let expr = s.value.trim();
    let expr = expr
        .strip_prefix("tostring(")
        .and_then(|e| e.strip_suffix(')'))
        .unwrap_or(expr);
    if let Some(var) = expr.strip_prefix("var.")
        && let Some(file) = s.at.split(':').next()
        && let Some(default) = variable_default(Path::new(file), var)
    {
        return default;
    }
    placeholder(&s.name)
}

fn placeholder(name: &str) -> String {
    match name {
        "BERTH_AGENT_NETWORKS" => "10.40.0.0/16".into(),
        "BERTH_POOLS" => "default=1".into(),
        // Long enough for the token checks (16 characters at least), and one of its
        // own per setting, as real secrets are (the operator's token must differ
        // from the backend's).
        _ => format!("placeholder-{}-0123456789abcdef", name.to_ascii_lowercase()),
    }
}

/// `default = "…"` of `variable "var"` in the module of `file`.
fn variable_default(file: &Path, var: &str) -> Option<String> {
    let dir = repo().join(file).parent()?.to_path_buf();
    for f in files_under(&dir, ".tf") {
        let hcl = Hcl::parse(&std::fs::read_to_string(&f).ok()?);
        for (&open, _) in hcl.close.iter() {
            if hcl.lines[open].trim() == format!("variable \"{var}\" {{") {
                return hcl.child(open, "default").and_then(|d| {
                    // A quoted string, or a bare number or boolean.
                    hcl_literal(&d).or_else(|| {
                        let bare = d.trim();
                        (bare.parse::<f64>().is_ok() || bare == "true" || bare == "false")
                            .then(|| bare.to_owned())
                    })
                });
            }
        }
    }
    None
}

struct Run {
    code: Option<i32>,
    stderr: String,
}

/// `scheduler serve` with `settings` and the safety overrides, which always win: no
/// instance metadata, no AWS endpoint but a closed loopback port, no shared AWS
/// config, the in-memory store, and a listen address held by this test.
fn run_scheduler(a: &Accepts, settings: &BTreeMap<String, String>) -> Run {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let listen = held.local_addr().unwrap().to_string();
    // A port nothing listens on: bound and released, and discard (9) as the fallback.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(9);
    let b = Binary::Scheduler;
    // `env_of` panics when the scheduler no longer shows one of these: it is not run
    // at all unless its endpoint, store and listen address can be pinned here.
    let overrides = [
        (a.env_of(b, "--listen").to_owned(), listen),
        (a.env_of(b, "--state").to_owned(), "memory".to_owned()),
        (
            a.env_of(b, "--ecs-endpoint").to_owned(),
            format!("http://127.0.0.1:{closed}"),
        ),
    ];
    let mut child = Command::new(b.path())
        .arg("serve")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(settings)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLEDEPLOYFLAGS")
        .env("AWS_SECRET_ACCESS_KEY", "deploy-flags-not-a-secret")
        .env("AWS_CONFIG_FILE", "/nonexistent/berth-deploy-flags/config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/berth-deploy-flags/credentials",
        )
        .env("BERTH_LOG", "warn")
        .envs(overrides)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start scheduler serve");
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(held);
    Run {
        code,
        stderr: reader.join().unwrap_or_default(),
    }
}

/// Variables a scheduler error names, directly or through a `--flag`. A clap error's
/// `Usage:` line repeats the options that were given, so it is left out.
fn named_in(a: &Accepts, stderr: &str) -> BTreeSet<String> {
    let stderr = stderr.split("\nUsage:").next().unwrap_or_default();
    let mut names: BTreeSet<String> = berth_tokens(stderr)
        .into_iter()
        .filter(|n| a.env(n))
        .collect();
    for w in stderr.split(|c: char| c.is_whitespace() || "()`',".contains(c)) {
        if let Some(env) = a.flag_env.get(w) {
            names.insert(env.clone());
        }
    }
    names
}

// --- the checks ----------------------------------------------------------------------

#[test]
fn every_deployed_setting_is_one_its_binary_accepts() {
    let all = all_accepts();
    let dep = deployment();
    let mut problems = Vec::new();
    for s in &dep.settings {
        let Some(b) = s.binary else { continue };
        if !s.name.starts_with("BERTH_") {
            continue; // AWS_REGION, the proxy settings of ordinary tools, …
        }
        if !all[&b].env(&s.name) {
            let mut known: Vec<_> = all[&b].help_env.union(&all[&b].code_env).cloned().collect();
            known.retain(|n| n.starts_with("BERTH_"));
            problems.push(format!(
                "{}: {} is given to {b} ({}), which does not accept it.\n    {b} accepts: {}",
                s.at,
                s.name,
                s.consumer,
                known.join(" ")
            ));
        }
    }
    for (flag, at) in &dep.hostd_flags {
        if !all[&Binary::Hostd].flags.contains(flag) {
            problems.push(format!("{at}: hostd has no flag {flag}"));
        }
    }
    assert!(
        problems.is_empty(),
        "the deployment passes settings its binaries do not accept:\n  {}",
        problems.join("\n  ")
    );
    let mut checked: BTreeMap<Binary, BTreeSet<&str>> = BTreeMap::new();
    for s in &dep.settings {
        if let Some(b) = s.binary {
            checked.entry(b).or_default().insert(&s.name);
        }
    }
    for (b, names) in checked {
        println!("{b}: {}", names.into_iter().collect::<Vec<_>>().join(" "));
    }
}

#[test]
fn every_required_setting_is_deployed() {
    let all = all_accepts();
    let dep = deployment();
    let s = &all[&Binary::Scheduler];
    let sched = Binary::Scheduler;
    let mut problems = Vec::new();

    // The scheduler's container, as Terraform defines it.
    let container = dep.container("scheduler");
    let deployed: BTreeMap<&str, &Setting> =
        container.iter().map(|x| (x.name.as_str(), *x)).collect();

    // A fleet: the ECS runtime and a shared state store. The binary's defaults
    // (docker, memory) start fine, so the binary cannot say these are missing.
    let runtime_env = s.env_of(sched, "--runtime");
    let state_env = s.env_of(sched, "--state");
    match deployed
        .get(runtime_env)
        .map(|x| (x, hcl_literal(&x.value)))
    {
        Some((_, Some(v))) if v == "ecs" => {}
        Some((x, _)) => problems.push(format!(
            "{}: {runtime_env} is {}, not \"ecs\"",
            x.at, x.value
        )),
        None => problems.push(format!(
            "the scheduler container does not get {runtime_env}=ecs"
        )),
    }
    match deployed.get(state_env) {
        Some(x) if hcl_literal(&x.value).as_deref() == Some("memory") => problems.push(format!(
            "{}: {state_env} is memory; a fleet needs the shared store",
            x.at
        )),
        Some(_) => {}
        None => problems.push(format!(
            "the scheduler container does not get {state_env}: every replica would keep its own state"
        )),
    }

    // Slots whose agent answers outside the VPC are discarded only when the scheduler
    // knows the VPC's range; empty means any address.
    let networks_env = s.env_of(sched, "--agent-networks");
    match deployed.get(networks_env) {
        Some(x) if hcl_literal(&x.value).is_some_and(|v| v.trim().is_empty()) => {
            problems.push(format!(
                "{}: {networks_env} is empty, which lets agents be anywhere",
                x.at
            ))
        }
        Some(_) => {}
        None => problems.push(format!(
            "the scheduler container does not get {networks_env} (the VPC's CIDR)"
        )),
    }

    // What ECS mode needs, as the scheduler says: start from the ECS runtime alone
    // and add whatever each configuration error names, until it gets past its
    // configuration (to the held listen address, exit 69).
    let mut env: BTreeMap<String, String> =
        BTreeMap::from([(runtime_env.to_owned(), "ecs".to_owned())]);
    let mut required: BTreeMap<String, String> = BTreeMap::new();
    for name in &s.required_flags {
        let e = s.env_of(sched, name).to_owned();
        required.insert(e, format!("`scheduler serve` usage lists {name}"));
    }
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds <= 16, "the scheduler keeps asking for more: {env:?}");
        let run = run_scheduler(s, &env);
        match run.code {
            Some(69) if run.stderr.contains("cannot listen") => break,
            Some(2) | Some(64) => {
                let new: Vec<String> = named_in(s, &run.stderr)
                    .into_iter()
                    .filter(|n| !env.contains_key(n))
                    .collect();
                assert!(
                    !new.is_empty(),
                    "scheduler serve refused its configuration without naming a setting it lacks \
                     (set: {:?}):\n{}",
                    env.keys(),
                    run.stderr
                );
                for n in new {
                    let why = run
                        .stderr
                        .lines()
                        .find(|l| l.contains("error"))
                        .unwrap_or("")
                        .trim();
                    required.insert(n.clone(), why.to_owned());
                    let v = deployed
                        .get(n.as_str())
                        .map_or_else(|| placeholder(&n), |x| probe_value(x));
                    env.insert(n, v);
                }
            }
            other => panic!(
                "scheduler serve in ECS mode ended with {other:?} instead of a configuration \
                 error or failing to listen:\n{}",
                run.stderr
            ),
        }
    }
    assert!(
        required.len() >= 3,
        "the scheduler in ECS mode asked for only {required:?}: the probe is not reaching its checks"
    );
    for (name, why) in &required {
        if !deployed.contains_key(name.as_str()) {
            problems.push(format!(
                "the scheduler in ECS mode needs {name} ({why}), and its container \
                 (terraform/modules/scheduler) does not get it"
            ));
        }
    }

    // Exactly what the container gets (placeholders where Terraform computes the
    // value) is a configuration the scheduler accepts.
    let full: BTreeMap<String, String> = container
        .iter()
        .map(|x| (x.name.clone(), probe_value(x)))
        .collect();
    let run = run_scheduler(s, &full);
    if !(run.code == Some(69) && run.stderr.contains("cannot listen")) {
        problems.push(format!(
            "scheduler serve with the container's settings {:?} does not get past its \
             configuration (exit {:?}):\n{}",
            full.keys(),
            run.code,
            run.stderr
        ));
    }
    println!(
        "scheduler, ECS mode, requires (derived from its errors): {}",
        required.keys().cloned().collect::<Vec<_>>().join(" ")
    );

    // hostd in ECS mode (not run: it reads instance metadata at start). It needs the
    // runtime, a host token and the scheduler; it must advertise an address the
    // scheduler can reach when it listens on all of them.
    let h = &all[&Binary::Hostd];
    let hb = Binary::Hostd;
    let env_file = dep.hostd_env();
    let runtime = h.env_of(hb, "--runtime");
    match env_file.get(runtime) {
        Some(x) if x.value == "ecs" => {}
        Some(x) => problems.push(format!("{}: {runtime}={}, not ecs", x.at, x.value)),
        None => problems.push(format!("hostd.env does not set {runtime}=ecs")),
    }
    let (token, token_file) = (h.env_of(hb, "--token"), h.env_of(hb, "--token-file"));
    if !env_file.contains_key(token) && !env_file.contains_key(token_file) {
        problems.push(format!("hostd.env has neither {token} nor {token_file}"));
    }
    if let Some(x) = env_file.get(token_file) {
        let writes = read("terraform/modules/ecs_cluster/user-data.sh.tftpl")
            .lines()
            .find_map(|l| l.trim().strip_prefix("token_file=").map(str::to_owned));
        if writes.as_deref() != Some(x.value.as_str()) {
            problems.push(format!(
                "{}: hostd reads its token from {}, the boot script writes {writes:?}",
                x.at, x.value
            ));
        }
    }
    let scheduler_url = h.env_of(hb, "--scheduler-url");
    if !env_file.contains_key(scheduler_url) {
        problems.push(format!("hostd.env does not get {scheduler_url}"));
    }
    let listen = h.env_of(hb, "--listen");
    let advertise = h.env_of(hb, "--advertise-url");
    let listens_everywhere = env_file
        .get(listen)
        .is_none_or(|x| x.value.starts_with("0.0.0.0:") || x.value.starts_with("[::]:"));
    match env_file.get(advertise) {
        Some(x) if x.value.contains("0.0.0.0") || !x.value.starts_with("http") => {
            problems.push(format!(
                "{}: {advertise}={} is not an address the scheduler can reach",
                x.at, x.value
            ))
        }
        None if listens_everywhere => problems.push(format!(
            "hostd listens on all addresses and nothing sets {advertise}: it would tell the \
             scheduler to call http://0.0.0.0:…"
        )),
        _ => {}
    }

    // The workspace container gets the same settings hostd's docker runtime gives a
    // workspace (the agent's listen address and root, and the proxy for ordinary
    // tools), except the per-slot ones, which the scheduler adds to each RunTask.
    let agent = dep.container(wire_ecs::WORKSPACE_CONTAINER);
    let agent_env: BTreeMap<&str, &Setting> = agent.iter().map(|x| (x.name.as_str(), *x)).collect();
    let (slot, secret) = ("SLOT-SENTINEL", "SECRET-SENTINEL");
    let docker_env = berth_hostd::docker::workspace_env(slot, secret);
    assert!(
        docker_env.len() >= 4,
        "hostd's workspace_env is nearly empty: {docker_env:?}"
    );
    for kv in &docker_env {
        let (k, v) = kv.split_once('=').expect("KEY=VALUE");
        if v.contains(slot) || v.contains(secret) {
            continue;
        }
        match agent_env.get(k) {
            Some(x) if hcl_literal(&x.value).as_deref() == Some(v) => {}
            Some(x) => problems.push(format!(
                "{}: {k} is {} in the task definition; hostd's docker runtime gives a workspace {v:?}",
                x.at, x.value
            )),
            None => problems.push(format!(
                "the {} container does not get {k}={v} (hostd's docker runtime gives every workspace this)",
                wire_ecs::WORKSPACE_CONTAINER
            )),
        }
    }
    for per_task in [wire_ecs::ENV_TEMPLATE, wire_ecs::ENV_CLAIM_SECRET_SHA256] {
        for c in [wire_ecs::WORKSPACE_CONTAINER, wire_ecs::PROXY_CONTAINER] {
            if let Some(x) = dep.container(c).into_iter().find(|x| x.name == per_task) {
                problems.push(format!(
                    "{}: {per_task} is in the task definition; the scheduler sets it per RunTask",
                    x.at
                ));
            }
        }
    }

    // Options the agent's and the proxy's usage lines require (none today) must be set.
    for b in [Binary::Agent, Binary::Proxy] {
        let c = if b == Binary::Agent {
            wire_ecs::WORKSPACE_CONTAINER
        } else {
            wire_ecs::PROXY_CONTAINER
        };
        for flag in &all[&b].required_flags {
            let e = all[&b].env_of(b, flag);
            if !dep.container(c).iter().any(|x| x.name == e) {
                problems.push(format!(
                    "{b} requires {flag} ({e}); container {c} does not get it"
                ));
            }
        }
    }

    assert!(
        problems.is_empty(),
        "required settings are missing or wrong:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn ami_hostd_unit_starts_in_ecs_mode_without_images() {
    let all = all_accepts();
    let dep = deployment();
    let h = &all[&Binary::Hostd];
    let hb = Binary::Hostd;
    let env_file = dep.hostd_env();
    let mut problems = Vec::new();

    let runtime = h.env_of(hb, "--runtime");
    if env_file.get(runtime).map(|x| x.value.as_str()) != Some("ecs") {
        problems.push(format!(
            "hostd.env + user-data do not set {runtime}=ecs: {:?}",
            env_file.get(runtime)
        ));
    }
    // Images are the docker runtime's: ECS tasks name their own.
    for flag in ["--workspace-image", "--proxy-image"] {
        let e = h.env_of(hb, flag);
        if let Some(x) = env_file.get(e) {
            problems.push(format!(
                "{}: {e} is set; hostd in ECS mode takes no images",
                x.at
            ));
        }
        if let Some((_, at)) = dep.hostd_flags.iter().find(|(f, _)| f == flag) {
            problems.push(format!(
                "{at}: ExecStart passes {flag}; hostd in ECS mode takes no images"
            ));
        }
    }
    if let Some((_, at)) = dep.hostd_flags.iter().find(|(f, _)| f == "--runtime") {
        problems.push(format!(
            "{at}: ExecStart sets --runtime; the environment file says ecs"
        ));
    }

    // The unit reads the file provision.sh installs and user-data completes, and
    // every variable its own lines use is set there.
    let unit = read("ami/files/berth-hostd.service");
    let installed = env_file_target();
    let unit_reads: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("EnvironmentFile="))
        .map(|p| p.trim_start_matches('-'))
        .collect();
    if unit_reads != [installed.as_str()] {
        problems.push(format!(
            "berth-hostd.service reads {unit_reads:?}; provision.sh installs hostd.env at {installed}"
        ));
    }
    for s in dep
        .settings
        .iter()
        .filter(|s| s.consumer.ends_with("hostd.env"))
    {
        if s.consumer != installed {
            problems.push(format!(
                "{}: writes {} to {}, hostd reads {installed}",
                s.at, s.name, s.consumer
            ));
        }
    }
    for (i, l) in unit.lines().enumerate() {
        if l.trim_start().starts_with('#') {
            continue;
        }
        for name in berth_tokens(l) {
            if !env_file.contains_key(&name) {
                problems.push(format!(
                    "ami/files/berth-hostd.service:{}: uses {name}, which hostd.env does not set",
                    i + 1
                ));
            }
        }
    }

    // The advertised address: the instance's own, computed at boot, on the port
    // hostd listens on.
    let advertise = h.env_of(hb, "--advertise-url");
    let listen = h.env_of(hb, "--listen");
    let port = env_file
        .get(listen)
        .and_then(|x| x.value.rsplit_once(':').map(|(_, p)| p.to_owned()))
        .unwrap_or_else(|| berth_wire::ports::HOSTD.to_string());
    match env_file.get(advertise) {
        Some(x)
            if x.at.starts_with("terraform/")
                && x.value.starts_with("http://")
                && !x.value.contains("0.0.0.0")
                && x.value.ends_with(&format!(":{port}")) => {}
        other => problems.push(format!(
            "{advertise} must be set at boot (user-data) to http://<this instance's private \
             address>:{port}, hostd's listen port; got {other:?}"
        )),
    }

    assert!(
        problems.is_empty(),
        "the AMI's hostd would not start as an ECS host:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn deploy_md_walks_through_these_settings() {
    let dep = deployment();
    let doc = read("docs/DEPLOY.md");
    let title = "## A staging fleet, step by step";
    let start = doc
        .find(title)
        .unwrap_or_else(|| panic!("docs/DEPLOY.md has no section \"{title}\""));
    let section = &doc[start + title.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    assert!(
        section.contains("tests/tests/deploy_flags.rs"),
        "the staging section must say that tests/tests/deploy_flags.rs checks it"
    );
    let mut missing = BTreeSet::new();
    for s in dep.settings.iter().filter(|s| s.binary.is_some()) {
        if !mentions(section, &s.name) {
            missing.insert(format!("{} ({}, {})", s.name, s.consumer, s.at));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/DEPLOY.md \"{title}\" does not mention:\n  {}",
        missing.into_iter().collect::<Vec<_>>().join("\n  ")
    );
}

/// `name` appears in `text` as a whole word (BERTH_HOST_TOKEN is not BERTH_HOST_TOKEN_FILE).
fn mentions(text: &str, name: &str) -> bool {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    text.match_indices(name).any(|(i, _)| {
        !word(text[..i].chars().next_back()) && !word(text[i + name.len()..].chars().next())
    })
}
