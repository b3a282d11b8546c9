//! What each Berth binary accepts: its real `--help` (clap's `[env: NAME]`
//! annotations, flags, the `Usage:` line) plus the variables its own code reads by
//! name outside clap. Used by `tests/tests/deploy_flags.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::settings::{files_under, read, repo};
// --- the binaries ------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Binary {
    Scheduler,
    Hostd,
    Agent,
    Proxy,
}

impl Binary {
    pub const ALL: [Binary; 4] = [
        Binary::Scheduler,
        Binary::Hostd,
        Binary::Agent,
        Binary::Proxy,
    ];

    pub fn file(self) -> &'static str {
        match self {
            Binary::Scheduler => "scheduler",
            Binary::Hostd => "hostd",
            Binary::Agent => "workspace-agent",
            Binary::Proxy => "credential-proxy",
        }
    }

    /// The production command line's help: the scheduler runs `serve`.
    pub fn help_args(self) -> &'static [&'static str] {
        match self {
            Binary::Scheduler => &["serve", "--help"],
            _ => &["--help"],
        }
    }

    /// The crate sources the binary is built from.
    pub fn src(self) -> &'static str {
        match self {
            Binary::Scheduler => "scheduler/src",
            Binary::Hostd => "hostd/src",
            Binary::Agent => "agent/src",
            Binary::Proxy => "proxy/src",
        }
    }

    pub fn path(self) -> PathBuf {
        let path = crate::bin_dir().join(self.file());
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
pub struct Accepts {
    /// `[env: NAME]` annotations of `--help`.
    pub help_env: BTreeSet<String>,
    /// Variables the binary's own code reads outside clap.
    pub code_env: BTreeSet<String>,
    /// Every `--flag` of `--help`.
    pub flags: BTreeSet<String>,
    /// `--flag` → its environment variable.
    pub flag_env: BTreeMap<String, String>,
    /// Options the `Usage:` line lists outside `[...]`.
    pub required_flags: BTreeSet<String>,
}

impl Accepts {
    pub fn env(&self, name: &str) -> bool {
        self.help_env.contains(name) || self.code_env.contains(name)
    }

    /// The environment variable of `flag`, which must exist.
    pub fn env_of(&self, binary: Binary, flag: &str) -> &str {
        self.flag_env.get(flag).unwrap_or_else(|| {
            panic!(
                "{binary} --help no longer shows {flag} with an [env: …] annotation; \
                 flags with variables: {:?}",
                self.flag_env
            )
        })
    }
}

pub fn accepts(binary: Binary) -> Accepts {
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
pub fn parse_help(text: &str) -> Accepts {
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
pub fn usage_required(usage: &str) -> BTreeSet<String> {
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
pub fn env_name_prefix(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Every `BERTH_…` (or other upper-case) variable name the crate's code reads by a
/// literal name outside clap. Unit tests (after `#[cfg(test)]`) are left out.
pub fn code_env(dir: &Path) -> BTreeSet<String> {
    pub const READS: [&str; 5] = [
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

pub fn all_accepts() -> BTreeMap<Binary, Accepts> {
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
pub fn proxy_override_list() -> BTreeSet<String> {
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
