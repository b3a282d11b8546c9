//! The comparison of a profile with Docker's default, for people reviewing a change.
//!
//! Both profiles are resolved the same way for the same container (one architecture,
//! every capability dropped), then every syscall of that architecture is put in one
//! class: allowed by both, refused by ours only (with our reason), allowed for fewer
//! arguments, added by ours, refused by both. `seccomp-report` prints it as Markdown,
//! and `seccomp/README.md` carries the output for `workspace.json` (a test keeps the
//! two identical, so the README cannot drift from the profile).

use std::fmt::Write as _;

use crate::{
    docker_default,
    profile::Profile,
    resolve::{ResolvedProfile, Runtime, Treatment},
    syscalls::Arch,
};

/// Where a syscall stands, ours against Docker's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// Docker's default lets some call through; ours lets none.
    Refused,
    /// Both let some calls through, with different argument rules.
    Narrowed,
    /// Ours lets some call through; Docker's default lets none.
    Added,
    /// Neither runs it, but the answers differ (e.g. ENOSYS instead of EPERM).
    RefusedDifferently,
    /// Neither runs it, and our profile names it with a reason.
    RefusedByBothNamed,
    /// Neither runs it; ours by its default action.
    RefusedByBoth,
    /// Both run it the same way.
    AllowedByBoth,
}

/// One syscall's line in the comparison.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: &'static str,
    pub class: Class,
    pub docker: Treatment,
    pub ours: Treatment,
    /// Our profile's comments on the rules that decide it (empty if only the default).
    pub reason: String,
}

/// Every syscall of one architecture, classified.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub arch: Arch,
    pub rows: Vec<Row>,
}

/// Compares `ours` with Docker's default for Berth's runtime on `arch`.
pub fn compare(ours: &Profile, arch: Arch) -> Comparison {
    let runtime = Runtime::workspace(arch);
    let ours = ResolvedProfile::resolve(ours, &runtime);
    let docker = ResolvedProfile::resolve(&docker_default::profile(), &runtime);
    let rows = arch
        .names()
        .map(|name| {
            let d = docker.treatment(name);
            let o = ours.treatment(name);
            let reason = ours.reasons(name).join(" ");
            let class = match (d.allows_some(), o.allows_some()) {
                (true, false) => Class::Refused,
                (false, true) => Class::Added,
                (true, true) if d == o => Class::AllowedByBoth,
                (true, true) => Class::Narrowed,
                (false, false) if d != o => Class::RefusedDifferently,
                (false, false) if !reason.is_empty() => Class::RefusedByBothNamed,
                (false, false) => Class::RefusedByBoth,
            };
            Row {
                name,
                class,
                docker: d,
                ours: o,
                reason,
            }
        })
        .collect();
    Comparison { arch, rows }
}

// === impl Comparison ===

impl Comparison {
    pub fn of(&self, class: Class) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(move |r| r.class == class)
    }

    fn count(&self, pred: impl Fn(&Row) -> bool) -> usize {
        self.rows.iter().filter(|r| pred(r)).count()
    }

    /// The comparison as Markdown (what `seccomp-report` prints and the README holds).
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let total = self.rows.len();
        let docker_runs = self.count(|r| r.docker.allows_some());
        let ours_runs = self.count(|r| r.ours.allows_some());
        let by_args = |t: &Treatment| matches!(t, Treatment::ByArguments { .. });
        let _ = writeln!(
            out,
            "Compared on {arch}, for a container with every capability dropped (Docker \
             resolves its default profile per container; see `src/docker_default.rs` for \
             the reference version). {total} syscalls exist on {arch}: Docker's default \
             lets {docker_runs} run ({} only for some arguments), ours lets {ours_runs} \
             run ({} only for some arguments).",
            self.count(|r| by_args(&r.docker)),
            self.count(|r| by_args(&r.ours)),
            arch = self.arch,
        );
        let sections = [
            (
                Class::Refused,
                "Refused by ours, allowed by Docker's default",
            ),
            (
                Class::Narrowed,
                "Allowed by both, for fewer arguments in ours",
            ),
            (
                Class::Added,
                "Added: allowed by ours, refused by Docker's default",
            ),
            (
                Class::RefusedDifferently,
                "Refused by both, with a different answer",
            ),
            (
                Class::RefusedByBothNamed,
                "Refused by both, and named in ours with a reason",
            ),
        ];
        for (class, title) in sections {
            let rows: Vec<&Row> = self.of(class).collect();
            let _ = writeln!(out, "\n#### {title} ({})\n", rows.len());
            if rows.is_empty() {
                let _ = writeln!(out, "None.");
                continue;
            }
            let _ = writeln!(out, "| syscall | Docker's default | ours | why |");
            let _ = writeln!(out, "| --- | --- | --- | --- |");
            for r in rows {
                let _ = writeln!(
                    out,
                    "| `{}` | {} | {} | {} |",
                    r.name,
                    cell(&r.docker.to_string()),
                    cell(&r.ours.to_string()),
                    cell(&r.reason)
                );
            }
        }
        for (class, title) in [
            (Class::AllowedByBoth, "Allowed by both, the same way"),
            (
                Class::RefusedByBoth,
                "Refused by both, by the default action (EPERM)",
            ),
        ] {
            let names: Vec<String> = self.of(class).map(|r| format!("`{}`", r.name)).collect();
            let _ = writeln!(out, "\n#### {title} ({})\n", names.len());
            let _ = writeln!(out, "{}", names.join(", "));
        }
        out
    }
}

/// Keeps a table cell on one line and its pipes from splitting it.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace() -> Comparison {
        compare(&crate::workspace_profile().unwrap(), Arch::X86_64)
    }

    #[test]
    fn every_refusal_of_a_docker_allowed_call_has_a_reason() {
        let c = workspace();
        let missing: Vec<&str> = c
            .of(Class::Refused)
            .filter(|r| r.reason.is_empty())
            .map(|r| r.name)
            .collect();
        assert_eq!(
            missing,
            Vec::<&str>::new(),
            "refused without a reason in workspace.json"
        );
        for class in [Class::Narrowed, Class::Added, Class::RefusedDifferently] {
            for r in c.of(class) {
                assert!(!r.reason.is_empty(), "{} ({class:?}) has no reason", r.name);
            }
        }
    }

    #[test]
    fn the_headline_refusals_are_where_they_belong() {
        let c = workspace();
        let class_of = |name: &str| c.rows.iter().find(|r| r.name == name).unwrap().class;
        for name in ["ptrace", "process_vm_readv", "memfd_secret", "modify_ldt"] {
            assert_eq!(class_of(name), Class::Refused, "{name}");
        }
        for name in ["socket", "socketpair", "personality"] {
            assert_eq!(class_of(name), Class::Narrowed, "{name}");
        }
        assert_eq!(class_of("mseal"), Class::Added);
        assert_eq!(class_of("io_uring_setup"), Class::RefusedDifferently);
        for name in [
            "keyctl",
            "bpf",
            "mount",
            "unshare",
            "userfaultfd",
            "kexec_load",
        ] {
            assert_eq!(class_of(name), Class::RefusedByBothNamed, "{name}");
        }
        assert_eq!(
            class_of("clone3"),
            Class::RefusedByBothNamed,
            "ENOSYS in both"
        );
        assert_eq!(
            class_of("clone"),
            Class::AllowedByBoth,
            "same namespace mask"
        );
        assert_eq!(class_of("read"), Class::AllowedByBoth);
    }

    #[test]
    fn readme_holds_the_current_table() {
        let readme = include_str!("../README.md");
        let begin = "<!-- BEGIN seccomp-report x86_64 -->\n";
        let end = "<!-- END seccomp-report -->";
        let start = readme.find(begin).expect("README lacks the report markers") + begin.len();
        let stop = readme[start..]
            .find(end)
            .expect("README lacks the end marker")
            + start;
        assert!(
            readme[start..stop] == workspace().markdown(),
            "seccomp/README.md is stale: paste the output of \
             `cargo run -p berth-seccomp --bin seccomp-report` between its markers"
        );
    }
}
