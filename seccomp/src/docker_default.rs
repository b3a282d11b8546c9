//! Docker's default seccomp profile, as facts, for comparison with ours.
//!
//! An operator reviewing a change to `workspace.json` asks "how far are we from what
//! Docker ships?". To answer without fetching anything, this module records what
//! moby's `profiles/seccomp/default.json` allows as lists of syscall names and builds
//! a [`Profile`] from them with the same includes/excludes structure, so that our own
//! resolver decides it exactly as Docker would for a given container.
//!
//! Reference point: moby v26 and later (2024–): `io_uring_*` removed from the allow list
//! (moby#46762), `socket` allowed for every family but `AF_VSOCK`, and the syscalls of
//! kernels 6.5–6.7 added (moby#47341: `cachestat`, `fchmodat2`, `map_shadow_stack`,
//! `futex_wake`, `futex_wait`, `futex_requeue`; `set_mempolicy_home_node` behind
//! `CAP_SYS_NICE`). Names that exist only on 32-bit ABIs (`chown32`, `_llseek`,
//! `socketcall`, the `*_time64` calls...) are left out: neither x86_64 nor aarch64
//! has them, and our profile admits no 32-bit ABI.
//!
//! Docker 20.10 (this repository's CI engine) ships an older default with `io_uring_*`
//! allowed; that only widens the gap the report shows.

use crate::profile::{Action, ArgCondition, CmpOp, Condition, Profile, SyscallRule};

/// Allowed for everyone, whatever the capabilities.
pub const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "clock_adjtime",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "futex_requeue",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "sendfile",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsuid",
    "setgid",
    "setgroups",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "socketpair",
    "splice",
    "stat",
    "statfs",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "times",
    "tkill",
    "truncate",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "write",
    "writev",
];

/// Allowed from kernel 4.8 on (before it, seccomp could be bypassed with ptrace).
pub const ALLOWED_FROM_KERNEL_4_8: &[&str] = &["process_vm_readv", "process_vm_writev", "ptrace"];

/// Allowed on x86 only.
pub const ALLOWED_ON_AMD64: &[&str] = &["arch_prctl", "modify_ldt"];

/// `personality` values allowed: Linux, Linux32, UNAME26 with and without Linux32, query.
pub const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// `AF_VSOCK`: the one socket family Docker's default refuses.
pub const REFUSED_SOCKET_FAMILY: u64 = 40;

/// Namespace flags `clone` may not carry without `CAP_SYS_ADMIN` (`CLONE_NEW*`).
pub const CLONE_NAMESPACE_MASK: u64 = 0x7e02_0000;

/// Allowed only when the container holds the capability.
pub const BY_CAPABILITY: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    ("CAP_SYS_TIME", &["settimeofday", "clock_settime"]),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// Docker's default profile, rebuilt from the facts above (64-bit names only).
pub fn profile() -> Profile {
    let mut rules = vec![allow(ALLOWED, Condition::default(), Condition::default())];
    rules.push(allow(
        ALLOWED_FROM_KERNEL_4_8,
        Condition {
            min_kernel: Some("4.8".into()),
            ..Condition::default()
        },
        Condition::default(),
    ));
    rules.push(with_args(
        allow(&["socket"], Condition::default(), Condition::default()),
        vec![arg(0, CmpOp::Ne, REFUSED_SOCKET_FAMILY)],
    ));
    for &p in PERSONALITIES {
        rules.push(with_args(
            allow(&["personality"], Condition::default(), Condition::default()),
            vec![arg(0, CmpOp::Eq, p)],
        ));
    }
    rules.push(allow(
        ALLOWED_ON_AMD64,
        Condition {
            arches: vec!["amd64".into(), "x32".into(), "x86".into()],
            ..Condition::default()
        },
        Condition::default(),
    ));
    for (cap, names) in BY_CAPABILITY {
        rules.push(allow(names, caps(cap), Condition::default()));
    }
    let mut clone = allow(&["clone"], Condition::default(), caps("CAP_SYS_ADMIN"));
    clone.args = vec![ArgCondition {
        index: 0,
        value: CLONE_NAMESPACE_MASK,
        value_two: 0,
        op: CmpOp::MaskedEq,
    }];
    rules.push(clone);
    let mut clone3 = allow(&["clone3"], Condition::default(), caps("CAP_SYS_ADMIN"));
    clone3.action = Action::Errno;
    clone3.errno_ret = Some(38);
    rules.push(clone3);

    Profile {
        default_action: Action::Errno,
        default_errno_ret: Some(1),
        architectures: vec!["SCMP_ARCH_X86_64".into(), "SCMP_ARCH_AARCH64".into()],
        arch_map: Vec::new(),
        syscalls: rules,
        flags: Vec::new(),
        listener_path: None,
        listener_metadata: None,
    }
}

fn allow(names: &[&str], includes: Condition, excludes: Condition) -> SyscallRule {
    SyscallRule {
        name: None,
        names: names.iter().map(|n| (*n).to_owned()).collect(),
        action: Action::Allow,
        errno_ret: None,
        args: Vec::new(),
        comment: String::new(),
        includes,
        excludes,
    }
}

fn with_args(mut rule: SyscallRule, args: Vec<ArgCondition>) -> SyscallRule {
    rule.args = args;
    rule
}

fn arg(index: u32, op: CmpOp, value: u64) -> ArgCondition {
    ArgCondition {
        index,
        value,
        value_two: 0,
        op,
    }
}

fn caps(cap: &str) -> Condition {
    Condition {
        caps: vec![cap.to_owned()],
        ..Condition::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        resolve::{ResolvedProfile, Runtime, Verdict},
        syscalls::{self, Arch},
    };

    #[test]
    fn every_name_is_a_64_bit_syscall() {
        let all = ALLOWED
            .iter()
            .chain(ALLOWED_FROM_KERNEL_4_8)
            .chain(ALLOWED_ON_AMD64)
            .chain(BY_CAPABILITY.iter().flat_map(|(_, n)| n.iter()));
        for name in all {
            assert!(syscalls::is_known(name), "{name}");
        }
        let mut sorted = ALLOWED.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ALLOWED.len(), "a name is listed twice");
    }

    #[test]
    fn resolves_like_docker_for_a_capless_container() {
        let docker = ResolvedProfile::resolve(&profile(), &Runtime::workspace(Arch::X86_64));
        assert_eq!(docker.evaluate("ptrace", [0; 6]), Verdict::Allow);
        assert_eq!(docker.evaluate("mount", [0; 6]), Verdict::Errno(1));
        assert_eq!(docker.evaluate("clone3", [0; 6]), Verdict::Errno(38));
        assert_eq!(docker.evaluate("io_uring_setup", [0; 6]), Verdict::Errno(1));
        assert_eq!(
            docker.evaluate("socket", [40, 1, 0, 0, 0, 0]),
            Verdict::Errno(1)
        );
        assert_eq!(
            docker.evaluate("socket", [38, 5, 0, 0, 0, 0]),
            Verdict::Allow
        );
        assert_eq!(docker.evaluate("arch_prctl", [0; 6]), Verdict::Allow);
        let mut admin = Runtime::workspace(Arch::X86_64);
        admin.caps.push("CAP_SYS_ADMIN".into());
        let docker = ResolvedProfile::resolve(&profile(), &admin);
        assert_eq!(docker.evaluate("clone3", [0; 6]), Verdict::Allow);
    }
}
