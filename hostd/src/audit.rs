//! The container audit: what every container of a workspace task must be, checked
//! against what the engine says it is.
//!
//! # Background
//! hostd makes its slots hardened, but a container's settings can come from
//! elsewhere: an operator's `docker run` with Berth's labels, a task definition edited
//! in the console, a future code path that forgets a flag. The audit does not trust
//! how a container was made; it reads the engine's own record of it (`docker inspect`)
//! every period and stops any workspace-task container that fails a check, so a
//! weakened workspace lives at most one period. Checks are pure functions over
//! [`ContainerFacts`], so each is unit-tested with the one field it looks at changed.

use crate::privileged::ContainerFacts;

/// What the audit expects of one kind of container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectations {
    /// The seccomp profile (Docker JSON) the container must carry, compared as JSON;
    /// `None`: the daemon's default, which is then checked on its own.
    pub seccomp_profile: Option<serde_json::Value>,
    /// The container must share another container's network namespace
    /// (`container:<id>`), as a slot's workspace joins its proxy's.
    pub joins_netns: bool,
    /// A host directory the container may have mounted, read-only (a slot's proxy
    /// gets its template's configuration directory this way).
    pub read_only_bind: Option<String>,
}

/// One failed check: its stable name and what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: &'static str,
    pub found: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.check, self.found)
    }
}

/// Every check `c` fails (empty: compliant).
pub fn audit(c: &ContainerFacts, want: &Expectations) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut fail = |check: &'static str, found: String| out.push(Finding { check, found });

    let uid = c.user.split(':').next().unwrap_or("");
    if uid.is_empty() || uid == "0" || uid == "root" {
        fail(
            "non_root",
            format!(
                "runs as user `{}`",
                if c.user.is_empty() {
                    "(image default)"
                } else {
                    c.user.as_str()
                }
            ),
        );
    }
    if c.privileged {
        fail("not_privileged", "privileged: true".into());
    }
    if !c.cap_drop.iter().any(|cap| cap.eq_ignore_ascii_case("ALL")) {
        fail("cap_drop_all", format!("CapDrop is {:?}", c.cap_drop));
    }
    if !c.cap_add.is_empty() {
        fail("no_cap_add", format!("CapAdd is {:?}", c.cap_add));
    }
    if !c.security_opt.iter().any(|o| {
        o == "no-new-privileges" || o == "no-new-privileges:true" || o == "no-new-privileges=true"
    }) {
        fail("no_new_privileges", "no-new-privileges is not set".into());
    }
    if !c.readonly_rootfs {
        fail("readonly_rootfs", "the root filesystem is writable".into());
    }
    match seccomp_of(&c.security_opt) {
        Seccomp::Unconfined => fail("seccomp", "seccomp=unconfined".into()),
        Seccomp::Daemon => {
            if want.seccomp_profile.is_some() {
                fail(
                    "seccomp",
                    "runs with the daemon's default profile, not Berth's".into(),
                );
            }
        }
        Seccomp::Given(text) => {
            if let Some(expected) = &want.seccomp_profile {
                match serde_json::from_str::<serde_json::Value>(text) {
                    Ok(v) if &v == expected => {}
                    Ok(_) => fail(
                        "seccomp",
                        "carries a seccomp profile that is not Berth's".into(),
                    ),
                    Err(_) => fail(
                        "seccomp",
                        "carries a seccomp profile that is not JSON".into(),
                    ),
                }
            }
        }
    }
    if c.pids_limit.unwrap_or(0) <= 0 {
        fail("pids_limit", "no pids limit".into());
    }
    if c.memory_limit <= 0 {
        fail("memory_limit", "no memory limit".into());
    }
    let host_mounts: Vec<&str> = c
        .mounts
        .iter()
        .filter(|(kind, source, read_only)| {
            kind != "tmpfs"
                && !(kind == "bind" && *read_only && want.read_only_bind.as_deref() == Some(source))
        })
        .map(|(_, source, _)| source.as_str())
        .collect();
    if !host_mounts.is_empty() {
        fail("no_host_mounts", format!("mounts {host_mounts:?}"));
    }
    if c.devices > 0 {
        fail("no_devices", format!("{} host devices", c.devices));
    }
    for (what, mode) in [
        ("network", &c.network_mode),
        ("pid", &c.pid_mode),
        ("ipc", &c.ipc_mode),
        ("uts", &c.uts_mode),
        ("userns", &c.userns_mode),
    ] {
        if mode == "host" {
            fail(
                "no_host_namespaces",
                format!("shares the host's {what} namespace"),
            );
        }
    }
    if want.joins_netns && !c.network_mode.starts_with("container:") {
        fail(
            "shares_task_netns",
            format!(
                "network mode `{}`, not its proxy's namespace",
                c.network_mode
            ),
        );
    }
    out
}

enum Seccomp<'a> {
    Daemon,
    Unconfined,
    Given(&'a str),
}

/// The seccomp setting in a container's `SecurityOpt` (`seccomp=<json>` as Docker
/// stores a given profile, `seccomp=unconfined`, or nothing: the daemon's default).
fn seccomp_of(opts: &[String]) -> Seccomp<'_> {
    for o in opts {
        if let Some(v) = o
            .strip_prefix("seccomp=")
            .or_else(|| o.strip_prefix("seccomp:"))
        {
            return if v == "unconfined" {
                Seccomp::Unconfined
            } else {
                Seccomp::Given(v)
            };
        }
    }
    Seccomp::Daemon
}

/// Whether the Docker daemon's default seccomp profile is Berth's: `daemon.json`
/// (its text) names a `seccomp-profile`, that file (`read` gives its text) is Berth's
/// profile as JSON, and the running daemon reports that path in its security
/// options (`docker info`; it reports `profile=default` or `builtin` for Docker's own).
/// ECS tasks get the daemon's default, so on an ECS host this is the workspace's
/// seccomp profile. `Ok` carries what was verified, `Err` what is wrong.
pub fn daemon_seccomp(
    daemon_json: &str,
    read: impl Fn(&str) -> std::io::Result<String>,
    security_options: &[String],
    expected: &serde_json::Value,
) -> Result<String, String> {
    let config: serde_json::Value = serde_json::from_str(daemon_json)
        .map_err(|e| format!("the daemon's config is not JSON: {e}"))?;
    let path = config
        .get("seccomp-profile")
        .and_then(|p| p.as_str())
        .ok_or("the daemon's config sets no seccomp-profile: containers without a profile of their own get Docker's default")?;
    let text =
        read(path).map_err(|e| format!("cannot read the daemon's seccomp profile {path}: {e}"))?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) if &v == expected => {}
        Ok(_) => return Err(format!("{path} is not Berth's workspace profile")),
        Err(e) => return Err(format!("{path} is not JSON: {e}")),
    }
    let running = security_options
        .iter()
        .find_map(|o| {
            let mut fields = o.split(',');
            (fields.next() == Some("name=seccomp"))
                .then(|| fields.find_map(|f| f.strip_prefix("profile=")))
                .flatten()
        })
        .ok_or("the running daemon reports no seccomp support")?;
    if running != path {
        return Err(format!(
            "the running daemon uses seccomp profile `{running}`, not {path}: restart dockerd to load it"
        ));
    }
    Ok(format!("the daemon's default profile is Berth's ({path})"))
}

/// Joins findings into one line for events and the status page.
pub fn summary(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(Finding::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> serde_json::Value {
        serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []})
    }

    fn good() -> ContainerFacts {
        ContainerFacts {
            id: "c1".into(),
            name: "berth-s1-ws".into(),
            running: true,
            user: "1000:1000".into(),
            cap_drop: vec!["ALL".into()],
            security_opt: vec![
                "no-new-privileges:true".into(),
                format!("seccomp={}", profile()),
            ],
            readonly_rootfs: true,
            pids_limit: Some(128),
            memory_limit: 256 << 20,
            mounts: vec![("tmpfs".into(), String::new(), false)],
            network_mode: "container:abc".into(),
            pid_mode: String::new(),
            ipc_mode: "private".into(),
            ..ContainerFacts::default()
        }
    }

    fn want() -> Expectations {
        Expectations {
            seccomp_profile: Some(profile()),
            joins_netns: true,
            read_only_bind: None,
        }
    }

    fn checks(c: &ContainerFacts) -> Vec<&'static str> {
        audit(c, &want()).into_iter().map(|f| f.check).collect()
    }

    #[test]
    fn a_slot_workspace_passes() {
        assert_eq!(audit(&good(), &want()), vec![]);
    }

    #[test]
    fn each_weakening_fails_its_own_check() {
        type Weaken = Box<dyn Fn(&mut ContainerFacts)>;
        let cases: Vec<(&str, Weaken)> = vec![
            ("non_root", Box::new(|c| c.user = "0:0".into())),
            ("non_root", Box::new(|c| c.user = String::new())),
            ("not_privileged", Box::new(|c| c.privileged = true)),
            (
                "cap_drop_all",
                Box::new(|c| c.cap_drop = vec!["NET_RAW".into()]),
            ),
            (
                "no_cap_add",
                Box::new(|c| c.cap_add = vec!["SYS_ADMIN".into()]),
            ),
            (
                "no_new_privileges",
                Box::new(|c| c.security_opt.retain(|o| !o.starts_with("no-new"))),
            ),
            ("readonly_rootfs", Box::new(|c| c.readonly_rootfs = false)),
            (
                "seccomp",
                Box::new(|c| {
                    c.security_opt =
                        vec!["no-new-privileges:true".into(), "seccomp=unconfined".into()]
                }),
            ),
            (
                "seccomp",
                Box::new(|c| c.security_opt = vec!["no-new-privileges:true".into()]),
            ),
            (
                "seccomp",
                Box::new(|c| {
                    c.security_opt = vec![
                        "no-new-privileges:true".into(),
                        "seccomp={\"defaultAction\":\"SCMP_ACT_ALLOW\"}".into(),
                    ]
                }),
            ),
            ("pids_limit", Box::new(|c| c.pids_limit = None)),
            ("memory_limit", Box::new(|c| c.memory_limit = 0)),
            (
                "no_host_mounts",
                Box::new(|c| {
                    c.mounts
                        .push(("bind".into(), "/var/run/docker.sock".into(), false))
                }),
            ),
            ("no_devices", Box::new(|c| c.devices = 1)),
            (
                "no_host_namespaces",
                Box::new(|c| c.pid_mode = "host".into()),
            ),
            (
                "shares_task_netns",
                Box::new(|c| c.network_mode = "bridge".into()),
            ),
        ];
        for (expected, weaken) in cases {
            let mut c = good();
            weaken(&mut c);
            assert_eq!(checks(&c), vec![expected], "weakening for {expected}");
        }
    }

    #[test]
    fn only_the_named_directory_may_be_mounted_and_only_read_only() {
        let want = Expectations {
            read_only_bind: Some("/etc/berth/proxy-config".into()),
            ..want()
        };
        let mut c = good();
        c.mounts
            .push(("bind".into(), "/etc/berth/proxy-config".into(), true));
        assert!(audit(&c, &want).is_empty());
        for (source, ro) in [("/etc/berth/proxy-config", false), ("/", true)] {
            let mut c = good();
            c.mounts.push(("bind".into(), source.into(), ro));
            assert_eq!(
                audit(&c, &want)[0].check,
                "no_host_mounts",
                "{source} ro={ro}"
            );
        }
        // Without the expectation, none is allowed.
        let mut c = good();
        c.mounts
            .push(("bind".into(), "/etc/berth/proxy-config".into(), true));
        assert_eq!(audit(&c, &self::want())[0].check, "no_host_mounts");
    }

    #[test]
    fn the_daemon_default_profile_is_accepted_where_expected() {
        let mut c = good();
        c.security_opt = vec!["no-new-privileges:true".into()];
        let daemon = Expectations {
            seccomp_profile: None,
            joins_netns: false,
            read_only_bind: None,
        };
        assert!(audit(&c, &daemon).is_empty());
        c.security_opt.push("seccomp=unconfined".into());
        assert_eq!(audit(&c, &daemon)[0].check, "seccomp");
    }

    #[test]
    fn the_daemon_default_profile_must_be_berths_and_loaded() {
        let expected = profile();
        let berth = profile().to_string();
        let read = |p: &str| match p {
            "/etc/docker/berth.json" => Ok(berth.clone()),
            "/etc/docker/other.json" => Ok("{\"defaultAction\":\"SCMP_ACT_ALLOW\"}".to_owned()),
            _ => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        };
        let loaded = vec!["name=seccomp,profile=/etc/docker/berth.json".to_owned()];
        let cfg = r#"{"seccomp-profile": "/etc/docker/berth.json"}"#;
        assert!(daemon_seccomp(cfg, read, &loaded, &expected).is_ok());
        let err =
            |cfg: &str, opts: &[String]| daemon_seccomp(cfg, read, opts, &expected).unwrap_err();
        assert!(err("{}", &loaded).contains("sets no seccomp-profile"));
        assert!(
            err(r#"{"seccomp-profile": "/etc/docker/other.json"}"#, &loaded)
                .contains("is not Berth's")
        );
        assert!(err(r#"{"seccomp-profile": "/nope.json"}"#, &loaded).contains("cannot read"));
        assert!(
            err(cfg, &["name=seccomp,profile=default".to_owned()])
                .contains("uses seccomp profile `default`")
        );
        assert!(err(cfg, &["name=apparmor".to_owned()]).contains("no seccomp support"));
        assert!(err("not json", &loaded).contains("not JSON"));
    }

    #[test]
    fn the_summary_names_every_failed_check() {
        let mut c = good();
        c.cap_add = vec!["NET_ADMIN".into()];
        c.readonly_rootfs = false;
        let s = summary(&audit(&c, &want()));
        assert!(
            s.contains("no_cap_add: CapAdd is [\"NET_ADMIN\"]") && s.contains("readonly_rootfs"),
            "{s}"
        );
    }
}
