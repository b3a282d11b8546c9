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
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_wire::ecs as wire_ecs;

// --- the binaries ------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Binary {
    Scheduler,
    Hostd,
    Agent,
    Proxy,
}

impl Binary {
    const ALL: [Binary; 4] = [
        Binary::Scheduler,
        Binary::Hostd,
        Binary::Agent,
        Binary::Proxy,
    ];

    fn file(self) -> &'static str {
        match self {
            Binary::Scheduler => "scheduler",
            Binary::Hostd => "hostd",
            Binary::Agent => "workspace-agent",
            Binary::Proxy => "credential-proxy",
        }
    }

    /// The production command line's help: the scheduler runs `serve`.
    fn help_args(self) -> &'static [&'static str] {
        match self {
            Binary::Scheduler => &["serve", "--help"],
            _ => &["--help"],
        }
    }

    /// The crate sources the binary is built from.
    fn src(self) -> &'static str {
        match self {
            Binary::Scheduler => "scheduler/src",
            Binary::Hostd => "hostd/src",
            Binary::Agent => "agent/src",
            Binary::Proxy => "proxy/src",
        }
    }

    fn path(self) -> PathBuf {
        let path = berth_tests::bin_dir().join(self.file());
        assert!(
            path.is_file(),
            "{} is not built ({}): run `cargo build --workspace --bins` first",
            self.file(),
            path.display()
        );
        path
    }
}

impl std::fmt::Display for Binary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.file())
    }
}

/// What one binary accepts.
#[derive(Debug, Default)]
struct Accepts {
    /// `[env: NAME]` annotations of `--help`.
    help_env: BTreeSet<String>,
    /// Variables the binary's own code reads outside clap.
    code_env: BTreeSet<String>,
    /// Every `--flag` of `--help`.
    flags: BTreeSet<String>,
    /// `--flag` → its environment variable.
    flag_env: BTreeMap<String, String>,
    /// Options the `Usage:` line lists outside `[...]`.
    required_flags: BTreeSet<String>,
}

impl Accepts {
    fn env(&self, name: &str) -> bool {
        self.help_env.contains(name) || self.code_env.contains(name)
    }

    /// The environment variable of `flag`, which must exist.
    fn env_of(&self, binary: Binary, flag: &str) -> &str {
        self.flag_env.get(flag).unwrap_or_else(|| {
            panic!(
                "{binary} --help no longer shows {flag} with an [env: …] annotation; \
                 flags with variables: {:?}",
                self.flag_env
            )
        })
    }
}

fn accepts(binary: Binary) -> Accepts {
    let out = Command::new(binary.path())
        .args(binary.help_args())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {binary} --help: {e}"));
    assert!(
        out.status.success(),
        "{binary} {:?} failed: {}",
        binary.help_args(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut a = parse_help(&String::from_utf8_lossy(&out.stdout));
    a.code_env = code_env(&repo().join(binary.src()));
    a
}

/// Reads clap's help: option lines start with `-`, the `[env: NAME…]` annotation
/// follows on the same or a later line of the same option.
fn parse_help(text: &str) -> Accepts {
    let mut a = Accepts::default();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(usage) = t.strip_prefix("Usage:") {
            a.required_flags = usage_required(usage);
            continue;
        }
        if t.starts_with('-') {
            current = t
                .split_whitespace()
                .map(|w| w.trim_end_matches(','))
                .find(|w| w.starts_with("--"))
                .map(str::to_owned);
            if let Some(f) = &current {
                a.flags.insert(f.clone());
            }
        }
        let mut rest = line;
        while let Some(i) = rest.find("[env: ") {
            rest = &rest[i + "[env: ".len()..];
            let name = env_name_prefix(rest);
            if !name.is_empty() {
                a.help_env.insert(name.to_owned());
                if let Some(f) = &current {
                    a.flag_env.insert(f.clone(), name.to_owned());
                }
            }
        }
    }
    a
}

/// `--flag`s of a usage line that are not inside `[...]`.
fn usage_required(usage: &str) -> BTreeSet<String> {
    let mut depth = 0usize;
    let mut outside = String::new();
    for c in usage.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 => outside.push(c),
            _ => {}
        }
    }
    outside
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(str::to_owned)
        .collect()
}

/// The leading `[A-Z0-9_]+` of `s`.
fn env_name_prefix(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Every `BERTH_…` (or other upper-case) variable name the crate's code reads by a
/// literal name outside clap. Unit tests (after `#[cfg(test)]`) are left out.
fn code_env(dir: &Path) -> BTreeSet<String> {
    const READS: [&str; 5] = [
        "env::var(\"",
        "env::var_os(\"",
        "try_from_env(\"",
        // the credential-proxy's configuration overrides (`config::Env`)
        "env.get(\"",
        "parse_env(env, \"",
    ];
    let mut found = BTreeSet::new();
    for file in files_under(dir, ".rs") {
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for pattern in READS {
            for (i, _) in code.match_indices(pattern) {
                let name = env_name_prefix(&code[i + pattern.len()..]);
                if !name.is_empty() {
                    found.insert(name.to_owned());
                }
            }
        }
    }
    found
}

fn all_accepts() -> BTreeMap<Binary, Accepts> {
    let all: BTreeMap<Binary, Accepts> = Binary::ALL.iter().map(|&b| (b, accepts(b))).collect();
    // The parsing must have found what these binaries are known for, or every check
    // below would pass on empty sets.
    for (b, at_least, anchors) in [
        (
            Binary::Scheduler,
            15,
            &["BERTH_RUNTIME", "BERTH_ECS_CLUSTER", "BERTH_HOST_TOKEN"][..],
        ),
        (
            Binary::Hostd,
            15,
            &["BERTH_HOST_RUNTIME", "BERTH_SCHEDULER_URL"][..],
        ),
        (Binary::Agent, 4, &["BERTH_AGENT_LISTEN"][..]),
        (Binary::Proxy, 2, &["BERTH_PROXY_CONFIG"][..]),
    ] {
        let a = &all[&b];
        assert!(
            a.help_env.len() >= at_least,
            "{b} --help showed only {} environment variables ({:?}): is the help format still clap's?",
            a.help_env.len(),
            a.help_env
        );
        for name in anchors {
            assert!(
                a.help_env.contains(*name),
                "{b} --help does not show {name}: {:?}",
                a.help_env
            );
        }
    }
    // The credential-proxy documents its overrides in one list; the code scan must
    // have found every one of them (else the scan's patterns have gone stale).
    let listed = proxy_override_list();
    assert!(listed.len() >= 5, "proxy/src/config.rs ENV_VARS not found");
    let missing: Vec<_> = listed.difference(&all[&Binary::Proxy].code_env).collect();
    assert!(
        missing.is_empty(),
        "the scan of proxy/src missed overrides the proxy lists in config::ENV_VARS: {missing:?}"
    );
    all
}

/// `pub const ENV_VARS: &[&str] = &[ "…", … ];` of proxy/src/config.rs.
fn proxy_override_list() -> BTreeSet<String> {
    let text = read("proxy/src/config.rs");
    let Some(start) = text.find("pub const ENV_VARS") else {
        return BTreeSet::new();
    };
    let body = &text[start..];
    let body = &body[..body.find("];").unwrap_or(body.len())];
    body.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| !s.is_empty() && env_name_prefix(s) == *s)
        .map(str::to_owned)
        .collect()
}

// --- the repository ------------------------------------------------------------------

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn files_under(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if !name.starts_with('.') {
                    todo.push(p);
                }
            } else if name.ends_with(suffix) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

// --- the deployment ----------------------------------------------------------------

/// One environment variable the deployment sets.
#[derive(Debug, Clone)]
struct Setting {
    name: String,
    /// As written: an HCL expression, or an env-file / shell value.
    value: String,
    /// Which of Berth's binaries reads it; `None` for anything else (the backend).
    binary: Option<Binary>,
    /// Where it goes: `container scheduler`, `/etc/berth/hostd.env`, `output scheduler_secrets`.
    consumer: String,
    /// `file:line`.
    at: String,
}

#[derive(Debug, Default)]
struct Deployment {
    settings: Vec<Setting>,
    /// Flags on the hostd unit's ExecStart (with the unit file:line).
    hostd_flags: Vec<(String, String)>,
    /// `BERTH_…` in code this reader does not understand: each must be taught to it.
    unaccounted: Vec<String>,
}

impl Deployment {
    fn of(&self, binary: Binary) -> impl Iterator<Item = &Setting> {
        self.settings
            .iter()
            .filter(move |s| s.binary == Some(binary))
    }

    /// Settings of one container of a task definition.
    fn container(&self, name: &str) -> Vec<&Setting> {
        let want = format!("container {name}");
        self.settings
            .iter()
            .filter(|s| s.consumer == want)
            .collect()
    }

    /// What hostd's environment file holds after boot: the AMI's file plus user-data.
    fn hostd_env(&self) -> BTreeMap<String, &Setting> {
        self.settings
            .iter()
            .filter(|s| s.binary == Some(Binary::Hostd) && s.consumer.ends_with("hostd.env"))
            .map(|s| (s.name.clone(), s))
            .collect()
    }
}

/// Which binary a container definition runs, by its container name.
fn container_binary(name: &str) -> Result<Option<Binary>, String> {
    match name {
        "scheduler" => Ok(Some(Binary::Scheduler)),
        n if n == wire_ecs::WORKSPACE_CONTAINER => Ok(Some(Binary::Agent)),
        n if n == wire_ecs::PROXY_CONTAINER => Ok(Some(Binary::Proxy)),
        // The operator's backend (terraform/modules/backend): not built here, so its
        // settings are not checked against a binary.
        "backend" => Ok(None),
        other => Err(format!(
            "container `{other}` runs none of the binaries deploy_flags.rs knows; \
             map it in container_binary()"
        )),
    }
}

fn has_berth_token(s: &str) -> bool {
    s.match_indices("BERTH_")
        .any(|(i, _)| i == 0 || !s.as_bytes()[i - 1].is_ascii_alphanumeric())
}

fn berth_tokens(s: &str) -> Vec<String> {
    s.match_indices("BERTH_")
        .filter(|(i, _)| *i == 0 || !s.as_bytes()[*i - 1].is_ascii_alphanumeric())
        .map(|(i, _)| env_name_prefix(&s[i..]).to_owned())
        .collect()
}

/// A line of HCL, without its comment.
fn hcl_code(line: &str) -> &str {
    let mut in_str = false;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '"' if prev != '\\' => in_str = !in_str,
            '#' if !in_str => return &line[..i],
            '/' if !in_str && line[i..].starts_with("//") => return &line[..i],
            _ => {}
        }
        prev = c;
    }
    line
}

/// `"text"` without interpolation → text.
fn hcl_literal(expr: &str) -> Option<String> {
    let e = expr.trim();
    let inner = e.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains("${") || inner.contains('"') && !inner.contains("\\\"") {
        return None;
    }
    Some(inner.replace("\\\"", "\"").replace("\\\\", "\\"))
}

/// One fmt-ed HCL file as a tree of blocks, by indentation: an opener is a line
/// ending in `{`, `[` or `(`, closed by the next line at its indentation that starts
/// with a closer.
struct Hcl {
    lines: Vec<String>,
    indent: Vec<usize>,
    /// Innermost-last openers enclosing each line (not the line itself).
    ancestors: Vec<Vec<usize>>,
    /// Opener → its closing line.
    close: BTreeMap<usize, usize>,
}

impl Hcl {
    fn parse(text: &str) -> Hcl {
        let lines: Vec<String> = text
            .lines()
            .map(|l| hcl_code(l).trim_end().to_owned())
            .collect();
        let indent: Vec<usize> = lines
            .iter()
            .map(|l| l.len() - l.trim_start().len())
            .collect();
        let mut stack: Vec<usize> = Vec::new();
        let mut ancestors = Vec::with_capacity(lines.len());
        let mut close = BTreeMap::new();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            if t.starts_with(['}', ']', ')'])
                && let Some(&top) = stack.last()
                && indent[top] == indent[i]
            {
                stack.pop();
                close.insert(top, i);
            }
            ancestors.push(stack.clone());
            if t.ends_with(['{', '[', '(']) {
                stack.push(i);
            }
        }
        Hcl {
            lines,
            indent,
            ancestors,
            close,
        }
    }

    /// `key = value` lines directly inside the block opened at `open`.
    fn children(&self, open: usize) -> Vec<(usize, String, String)> {
        let end = self.close.get(&open).copied().unwrap_or(self.lines.len());
        let want = self.indent[open] + 2;
        (open + 1..end)
            .filter(|&i| self.indent[i] == want)
            .filter_map(|i| {
                let (k, v) = self.lines[i].trim().split_once('=')?;
                let k = k.trim();
                (!k.is_empty() && !k.contains(' ')).then(|| (i, k.to_owned(), v.trim().to_owned()))
            })
            .collect()
    }

    fn child(&self, open: usize, key: &str) -> Option<String> {
        self.children(open)
            .into_iter()
            .find(|(_, k, _)| k == key)
            .map(|(_, _, v)| v)
    }

    /// The key an opener line assigns (`environment = [` → `environment`).
    fn key_of(&self, open: usize) -> Option<String> {
        let (k, _) = self.lines[open].trim().split_once('=')?;
        Some(k.trim().to_owned())
    }

    /// Openers that define a container: direct `name = "…"` and `image = …`.
    fn containers(&self) -> Vec<(usize, String)> {
        self.close
            .keys()
            .filter(|&&o| self.lines[o].ends_with('{'))
            .filter_map(|&o| {
                let name = hcl_literal(&self.child(o, "name")?)?;
                self.child(o, "image")?;
                Some((o, name))
            })
            .collect()
    }
}

/// `{ name = "N", value = EXPR }` (or `valueFrom`) on one line.
fn inline_entry(line: &str) -> Option<(String, String)> {
    let t = line.trim().trim_end_matches(',');
    let body = t.strip_prefix('{')?.strip_suffix('}')?.trim();
    let after_name = body
        .strip_prefix("name")?
        .trim_start()
        .strip_prefix('=')?
        .trim_start();
    let name_end = after_name.strip_prefix('"')?.find('"')? + 2;
    let name = after_name[1..name_end - 1].to_owned();
    let rest = after_name[name_end..]
        .trim_start()
        .strip_prefix(',')?
        .trim_start();
    let value = rest
        .strip_prefix("valueFrom")
        .or_else(|| rest.strip_prefix("value"))?
        .trim_start()
        .strip_prefix('=')?
        .trim();
    Some((name, value.to_owned()))
}

fn terraform_settings(dep: &mut Deployment) {
    for file in files_under(&repo().join("terraform"), ".tf") {
        let at = rel(&file);
        let hcl = Hcl::parse(&std::fs::read_to_string(&file).unwrap());
        let containers = hcl.containers();
        let mut seen = BTreeSet::new();

        // Environment entries: one-line objects, and multi-line `{ name = … value = … }`.
        let mut entries: Vec<(usize, String, String)> = Vec::new();
        for (i, l) in hcl.lines.iter().enumerate() {
            if let Some((n, v)) = inline_entry(l) {
                entries.push((i, n, v));
            }
        }
        for (&open, _) in hcl.close.iter() {
            if hcl.lines[open].trim() != "{" {
                continue;
            }
            let children = hcl.children(open);
            let Some((name_line, name)) = children
                .iter()
                .find(|(_, k, _)| k == "name")
                .and_then(|(i, _, v)| Some((*i, hcl_literal(v)?)))
            else {
                continue;
            };
            let value = hcl
                .child(open, "value")
                .or_else(|| hcl.child(open, "valueFrom"));
            if let Some(v) = value {
                seen.insert(name_line);
                entries.push((open, name, v));
            }
        }
        for (i, name, value) in entries {
            seen.insert(i);
            let owner = hcl.ancestors[i]
                .iter()
                .rev()
                .find_map(|a| containers.iter().find(|(o, _)| o == a))
                .map(|(_, n)| n.clone())
                .or_else(|| {
                    // A list in `locals { L = … }` that a container takes as `local.L`.
                    let chain = &hcl.ancestors[i];
                    let top = chain
                        .iter()
                        .position(|&a| hcl.lines[a].trim() == "locals {")?;
                    let key = hcl.key_of(*chain.get(top + 1)?)?;
                    containers
                        .iter()
                        .find(|(o, _)| {
                            hcl.children(*o)
                                .iter()
                                .any(|(_, _, v)| *v == format!("local.{key}"))
                        })
                        .map(|(_, n)| n.clone())
                });
            let Some(container) = owner else {
                if has_berth_token(&name) {
                    dep.unaccounted.push(format!(
                        "{at}:{}: {name} is set in no container definition this test can find",
                        i + 1
                    ));
                }
                continue;
            };
            match container_binary(&container) {
                Ok(binary) => dep.settings.push(Setting {
                    name,
                    value,
                    binary,
                    consumer: format!("container {container}"),
                    at: format!("{at}:{}", i + 1),
                }),
                Err(e) => dep.unaccounted.push(format!("{at}:{}: {e}", i + 1)),
            }
        }

        // Output maps that document a binary's settings: `BERTH_X = …` keys.
        for (&open, _) in hcl.close.iter() {
            let head = hcl.lines[open].trim();
            let Some(output) = head
                .strip_prefix("output \"")
                .and_then(|r| r.split('"').next())
            else {
                continue;
            };
            let binary = if output.starts_with("scheduler_") {
                Some(Binary::Scheduler)
            } else if output.starts_with("hostd_") {
                Some(Binary::Hostd)
            } else {
                None
            };
            let end = hcl.close[&open];
            for i in open + 1..end {
                let l = hcl.lines[i].trim();
                let Some((k, v)) = l.split_once('=') else {
                    continue;
                };
                let k = k.trim();
                if !has_berth_token(k) || env_name_prefix(k) != k {
                    continue;
                }
                seen.insert(i);
                match binary {
                    Some(b) => dep.settings.push(Setting {
                        name: k.to_owned(),
                        value: v.trim().to_owned(),
                        binary: Some(b),
                        consumer: format!("output {output}"),
                        at: format!("{at}:{}", i + 1),
                    }),
                    None => dep.unaccounted.push(format!(
                        "{at}:{}: output `{output}` names {k}, and this test cannot tell which binary it is for",
                        i + 1
                    )),
                }
            }
        }

        // Anything else that names a BERTH_ variable in code (descriptions are prose).
        for (i, l) in hcl.lines.iter().enumerate() {
            let t = l.trim_start();
            if seen.contains(&i) || t.starts_with("description") || !has_berth_token(t) {
                continue;
            }
            dep.unaccounted.push(format!(
                "{at}:{}: `{}` names {:?}; teach deploy_flags.rs which binary reads it",
                i + 1,
                t,
                berth_tokens(t)
            ));
        }
    }
}

/// `set_key /etc/berth/hostd.env KEY VALUE` in the hosts' boot script(s), and any
/// other line of ami/scripts or a template that writes a BERTH_ key to hostd.env.
fn host_script_settings(dep: &mut Deployment) {
    let mut scripts = files_under(&repo().join("terraform"), ".tftpl");
    scripts.extend(files_under(&repo().join("ami/scripts"), ".sh"));
    for file in scripts {
        let at = rel(&file);
        for (i, line) in std::fs::read_to_string(&file).unwrap().lines().enumerate() {
            let t = line.trim();
            if t.starts_with('#') || !has_berth_token(t) {
                continue;
            }
            let words: Vec<&str> = t.split_whitespace().collect();
            if words.len() >= 4 && words[0] == "set_key" && words[1].ends_with("hostd.env") {
                let value = words[3..].join(" ");
                let value = value
                    .strip_prefix('\'')
                    .and_then(|v| v.strip_suffix('\''))
                    .or_else(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
                    .unwrap_or(&value)
                    .to_owned();
                dep.settings.push(Setting {
                    name: words[2].to_owned(),
                    value,
                    binary: Some(Binary::Hostd),
                    consumer: words[1].to_owned(),
                    at: format!("{at}:{}", i + 1),
                });
            } else if t.contains("hostd.env") {
                dep.unaccounted.push(format!(
                    "{at}:{}: `{t}` writes {:?} to hostd.env in a form deploy_flags.rs does not read",
                    i + 1,
                    berth_tokens(t)
                ));
            }
            // Other BERTH_ names in these scripts are the scripts' own inputs
            // (provision.sh's BERTH_ROOT, BERTH_INPUTS, …), read by no binary.
        }
    }
}

/// ami/files/hostd.env and the unit that starts hostd with it.
fn ami_settings(dep: &mut Deployment) {
    let env_file = "ami/files/hostd.env";
    let target = env_file_target();
    for (i, line) in read(env_file).lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let Some((k, v)) = t.split_once('=') else {
            dep.unaccounted
                .push(format!("{env_file}:{}: `{t}` is not KEY=VALUE", i + 1));
            continue;
        };
        dep.settings.push(Setting {
            name: k.trim().to_owned(),
            value: v.trim().to_owned(),
            binary: Some(Binary::Hostd),
            consumer: target.clone(),
            at: format!("{env_file}:{}", i + 1),
        });
    }
    let unit_file = "ami/files/berth-hostd.service";
    for (i, line) in read(unit_file).lines().enumerate() {
        let Some(cmd) = line.trim().strip_prefix("ExecStart=") else {
            continue;
        };
        let mut words = cmd.split_whitespace();
        let program = words
            .next()
            .unwrap_or_default()
            .trim_start_matches(['-', '@', '+', '!']);
        assert!(
            program.ends_with("/hostd"),
            "{unit_file}:{}: ExecStart runs {program}, not hostd",
            i + 1
        );
        for w in words {
            if w.starts_with("--") {
                let flag = w.split('=').next().unwrap_or(w).to_owned();
                dep.hostd_flags
                    .push((flag, format!("{unit_file}:{}", i + 1)));
            }
        }
    }
}

/// Where provision.sh installs ami/files/hostd.env.
fn env_file_target() -> String {
    read("ami/scripts/provision.sh")
        .lines()
        .find(|l| l.trim_start().starts_with("install_file") && l.contains("/hostd.env\""))
        .and_then(|l| l.split_whitespace().last().map(str::to_owned))
        .expect("ami/scripts/provision.sh does not install hostd.env with install_file")
}

fn deployment() -> Deployment {
    let mut dep = Deployment::default();
    terraform_settings(&mut dep);
    host_script_settings(&mut dep);
    ami_settings(&mut dep);
    assert!(
        dep.unaccounted.is_empty(),
        "settings this test cannot attribute to a binary:\n  {}",
        dep.unaccounted.join("\n  ")
    );
    for b in Binary::ALL {
        let n = dep.of(b).filter(|s| s.name.starts_with("BERTH_")).count();
        assert!(
            n > 0,
            "found no BERTH_ setting the deployment gives to {b}: is the reader broken?"
        );
    }
    dep
}

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
        // Long enough for the token checks (16 characters at least).
        _ => "placeholder-0123456789abcdef".into(),
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
