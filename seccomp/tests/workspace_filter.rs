//! The workspace profile, translated to BPF and installed in a forked process, refuses
//! every probed call with the profile's own errno while ordinary work carries on; and
//! without the filter the same calls reach the kernel and get other answers, so it is
//! the filter — not the kernel — that refuses them.

mod common;

use std::path::PathBuf;

use berth_seccomp::probe::{self, ProbeConfig, Report};
use common::{in_child, is_root, scratch_dir};

fn config(scratch: PathBuf) -> ProbeConfig {
    ProbeConfig {
        scratch,
        exec_target: PathBuf::from(env!("CARGO_BIN_EXE_seccomp-probe")),
    }
}

fn filtered_report(tag: &str) -> Report {
    let filter = berth_seccomp::workspace_filter().expect("workspace profile compiles");
    let scratch = scratch_dir(tag);
    let cfg = config(scratch.clone());
    let report = in_child(move || {
        filter.apply().expect("filter installs");
        probe::run(&cfg)
    });
    let _ = std::fs::remove_dir_all(&scratch);
    report.unwrap_or_else(|e| panic!("filtered child failed: {e:?}"))
}

#[test]
fn refused_calls_fail_with_the_profiles_errno_and_work_goes_on() {
    let report = filtered_report("refused");
    assert_eq!(report.status.seccomp, "2", "the child runs in filter mode");
    assert_eq!(report.status.no_new_privs, "1");
    assert_eq!(
        report.status.seccomp_filters, "3",
        "base + ENOSYS + EPROTONOSUPPORT filters are stacked"
    );
    assert!(
        report.refused.len() >= 40,
        "{} calls probed",
        report.refused.len()
    );
    for r in &report.refused {
        if let Some(o) = &r.outcome {
            assert_eq!(
                (o.ret, o.errno, o.killed_by_signal),
                (-1, Some(r.expected_errno), None),
                "{} must fail with errno {}",
                r.name,
                r.expected_errno
            );
        }
    }
    for w in &report.work {
        assert!(w.ok, "{} failed under the filter: {}", w.name, w.detail);
    }
    assert!(report.all_as_expected(), "{:#?}", report.deviations());
}

#[test]
fn the_headline_calls_get_their_specific_errnos() {
    let report = filtered_report("headline");
    let errno_of = |name: &str| {
        let r = report
            .refused
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("{name} was not probed"));
        r.outcome.as_ref().and_then(|o| o.errno)
    };
    assert_eq!(errno_of("clone3(NULL, 0)"), Some(libc::ENOSYS));
    assert_eq!(
        errno_of("io_uring_setup(1, bad params)"),
        Some(libc::ENOSYS)
    );
    assert_eq!(errno_of("unshare(CLONE_NEWUSER)"), Some(libc::EPERM));
    assert_eq!(
        errno_of("keyctl(GET_KEYRING_ID, session)"),
        Some(libc::EPERM)
    );
    assert_eq!(errno_of("bpf(invalid command)"), Some(libc::EPERM));
    assert_eq!(errno_of("userfaultfd(invalid flags)"), Some(libc::EPERM));
    assert_eq!(errno_of("perf_event_open(NULL attr)"), Some(libc::EPERM));
    assert_eq!(errno_of("ptrace(PEEKDATA, no such pid)"), Some(libc::EPERM));
    assert_eq!(errno_of("mount(bad fstype pointer)"), Some(libc::EPERM));
    assert_eq!(errno_of("socket(AF_ALG)"), Some(libc::EPERM));
    assert_eq!(errno_of("socket(AF_VSOCK)"), Some(libc::EPERM));
    assert_eq!(
        errno_of("socket(AF_NETLINK, NETLINK_AUDIT)"),
        Some(libc::EPROTONOSUPPORT)
    );
    assert_eq!(
        errno_of("personality(ADDR_NO_RANDOMIZE)"),
        Some(libc::EPERM)
    );
}

#[test]
fn without_the_filter_the_probed_calls_reach_the_kernel() {
    if !is_root() {
        eprintln!("skipped: the control run needs root, so that capabilities do not refuse");
        return;
    }
    let scratch = scratch_dir("control");
    let cfg = config(scratch.clone());
    let report = in_child(move || probe::run(&cfg)).expect("unfiltered child reports");
    let _ = std::fs::remove_dir_all(&scratch);
    assert_eq!(
        report.status.seccomp, "0",
        "the control child has no filter"
    );
    let calls = probe::refused_calls();
    let mut checked = 0;
    for (call, r) in calls.iter().zip(&report.refused) {
        let (true, Some(o)) = (call.control, &r.outcome) else {
            continue;
        };
        checked += 1;
        assert_ne!(
            o.errno,
            Some(call.errno),
            "{}: unfiltered, the kernel itself answers errno {}, so the filtered run proves \
             nothing for it; choose arguments the kernel answers differently",
            call.name,
            call.errno
        );
    }
    assert!(checked >= 35, "only {checked} calls had a control");
    assert!(
        report.work.iter().all(|w| w.ok),
        "{:#?}",
        report.deviations()
    );
}

#[test]
fn the_model_and_the_kernel_agree() {
    // evaluate() is what the report and the docs rely on; hold it to the kernel.
    let resolved = berth_seccomp::workspace_resolved().unwrap();
    let report = filtered_report("model");
    for (call, r) in probe::refused_calls().iter().zip(&report.refused) {
        let Some(o) = &r.outcome else { continue };
        let predicted = resolved.evaluate(call.syscall, call.model_args());
        assert_eq!(
            predicted,
            berth_seccomp::Verdict::Errno(o.errno.unwrap_or(0) as u32),
            "{}",
            call.name
        );
    }
}
