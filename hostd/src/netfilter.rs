//! The netfilter rules hostd owns: the egress lock inside every slot's network
//! namespace, and the host's metadata blocks. Pure: this module writes rulesets and
//! judges what `iptables-save` read back; [`crate::privileged`] loads and reads them.
//!
//! # Background
//! A workspace task is two containers in one network namespace: the workspace (its
//! agent and the untrusted code it runs, uid [`uids::WORKSPACE`]) and the
//! credential-proxy (uid [`uids::PROXY`]). They share one address, so no security
//! group or host firewall can tell their traffic apart; only a rule *inside* the
//! namespace can, with netfilter's owner match on the sending socket's uid. The egress
//! lock ([`EGRESS_CHAIN`], hooked first in `OUTPUT`) therefore says, in order:
//!
//! 1. the metadata service (169.254.169.254, fd00:ec2::254, and its NAT64 form) and
//!    the ECS credential endpoint (169.254.170.2) are refused to every uid — the
//!    proxy's alone may reach the credential endpoint when it signs with the task's
//!    own credentials (a switch, off by default);
//! 2. the workspace's uid may not resolve names: Docker's embedded DNS (127.0.0.11)
//!    and any port 53 are refused to it, so DNS cannot carry data out (the proxy
//!    resolves the names it needs);
//! 3. the proxy's admin port ([`berth_wire::ports::PROXY_ADMIN`]) is refused to the
//!    workspace's uid on every address; then loopback is allowed (the workspace
//!    reaches the proxy on 127.0.0.1:8080);
//! 4. replies of connections that came in are allowed (the backend reaching the agent);
//! 5. the proxy's uid may go out; everything else is refused.
//!
//! Refusals are REJECTs, not DROPs, so a tool in the workspace fails at once with a
//! clear error instead of hanging until its timeout.
//!
//! The host rules ([`HOST_CHAIN`]) block the metadata addresses for bridge-mode
//! containers. They hook into Docker's `DOCKER-USER` chain, which Docker evaluates
//! before its own rules and re-links on every restart without emptying; hooking
//! `FORWARD` directly would be bypassed the next time dockerd inserts its rules above
//! ours. Docker makes no IPv6 `DOCKER-USER` unless its ip6tables support is on; then
//! the IPv6 rules hook `FORWARD` itself, where no Docker rule can precede them. In ECS
//! mode the credential endpoint is DNATed to the host's 127.0.0.1:51679, so it meets
//! `INPUT`, not `FORWARD`: [`HOST_INPUT_CHAIN`] refuses it from every interface but
//! loopback (the ECS agent's own).
//!
//! Verification compares the read-back chain line by line with what we would write,
//! in the exact form `iptables-save` prints; anything else in the chain, a missing
//! line, or a hook that is no longer first counts as altered.

use berth_wire::uids;

use crate::privileged::Family;

/// Berth's egress chain inside every slot's network namespace.
pub const EGRESS_CHAIN: &str = "BERTH-EGRESS";
/// Berth's chain for forwarded (bridge-mode) traffic on the host.
pub const HOST_CHAIN: &str = "BERTH-HOST";
/// Berth's chain for the ECS credential endpoint's DNAT target on the host.
pub const HOST_INPUT_CHAIN: &str = "BERTH-HOST-INPUT";

/// The instance metadata service, IPv4.
pub const IMDS_V4: &str = "169.254.169.254";
/// The instance metadata service on Nitro's IPv6 endpoint.
pub const IMDS_V6: &str = "fd00:ec2::254";
/// 169.254.169.254 behind a NAT64 gateway (64:ff9b::/96).
pub const IMDS_NAT64: &str = "64:ff9b::a9fe:a9fe";
/// The ECS agent's task-credential endpoint.
pub const ECS_CREDENTIALS: &str = "169.254.170.2";
/// Where the ECS agent DNATs the credential endpoint on the host.
pub const ECS_CREDENTIALS_PORT: u16 = 51679;
/// Docker's embedded DNS server in user-defined networks.
pub const DOCKER_DNS: &str = "127.0.0.11";

/// What the egress lock allows, beyond its fixed rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EgressPolicy {
    pub workspace_uid: u32,
    pub proxy_uid: u32,
    /// The proxy's uid may reach the ECS credential endpoint (it signs requests with
    /// the task's own credentials). Off by default.
    pub proxy_task_credentials: bool,
}

impl Default for EgressPolicy {
    fn default() -> Self {
        Self {
            workspace_uid: uids::WORKSPACE,
            proxy_uid: uids::PROXY,
            proxy_task_credentials: false,
        }
    }
}

/// Which host rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostPolicy {
    /// ECS mode with the credential endpoint closed: refuse its DNAT target to tasks.
    pub block_credential_dnat: bool,
}

/// A chain of ours, the rules it should hold, and the built-in or Docker chain that
/// must jump to it first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    pub chain: &'static str,
    pub hook: &'static str,
    /// Rules as `iptables-save` prints them, without the `-A <chain> ` prefix.
    pub rules: Vec<String>,
}

/// How a read-back chain differs from its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// The hook chain itself is absent (e.g. no `DOCKER-USER`).
    NoHookChain { hook: &'static str },
    /// The hook does not jump to our chain first.
    HookMissing {
        chain: &'static str,
        hook: &'static str,
    },
    /// Our chain's rules differ: what is missing and what is extra.
    Rules {
        chain: &'static str,
        missing: Vec<String>,
        extra: Vec<String>,
    },
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::NoHookChain { hook } => write!(f, "chain {hook} does not exist"),
            Drift::HookMissing { chain, hook } => {
                write!(f, "{hook} does not jump to {chain} first")
            }
            Drift::Rules {
                chain,
                missing,
                extra,
            } => {
                write!(f, "{chain}: ")?;
                if missing.is_empty() && extra.is_empty() {
                    return write!(f, "rules out of order");
                }
                if !missing.is_empty() {
                    write!(f, "{} missing (first: `{}`)", missing.len(), missing[0])?;
                }
                if !extra.is_empty() {
                    if !missing.is_empty() {
                        f.write_str("; ")?;
                    }
                    write!(f, "{} unexpected (first: `{}`)", extra.len(), extra[0])?;
                }
                Ok(())
            }
        }
    }
}

fn reject(family: Family) -> &'static str {
    match family {
        Family::V4 => "-j REJECT --reject-with icmp-admin-prohibited",
        Family::V6 => "-j REJECT --reject-with icmp6-adm-prohibited",
    }
}

/// The egress lock for one family.
pub fn egress_spec(p: &EgressPolicy, family: Family) -> ChainSpec {
    let rej = reject(family);
    let ws = p.workspace_uid;
    let proxy = p.proxy_uid;
    let mut rules = Vec::new();
    match family {
        Family::V4 => {
            rules.push(format!("-d {IMDS_V4}/32 {rej}"));
            if p.proxy_task_credentials {
                rules.push(format!(
                    "-d {ECS_CREDENTIALS}/32 -m owner --uid-owner {proxy} -j ACCEPT"
                ));
            }
            rules.push(format!("-d {ECS_CREDENTIALS}/32 {rej}"));
            rules.push(format!(
                "-d {DOCKER_DNS}/32 -m owner --uid-owner {ws} {rej}"
            ));
        }
        Family::V6 => {
            rules.push(format!("-d {IMDS_V6}/128 {rej}"));
            rules.push(format!("-d {IMDS_NAT64}/128 {rej}"));
        }
    }
    rules.push(format!(
        "-p udp -m owner --uid-owner {ws} -m udp --dport 53 {rej}"
    ));
    rules.push(format!(
        "-p tcp -m owner --uid-owner {ws} -m tcp --dport 53 -j REJECT --reject-with tcp-reset"
    ));
    // The proxy's admin channel is hostd's alone: the workspace may not even
    // open a connection to it (its claim secret is the second lock).
    rules.push(format!(
        "-p tcp -m owner --uid-owner {ws} -m tcp --dport {} -j REJECT --reject-with tcp-reset",
        berth_wire::ports::PROXY_ADMIN
    ));
    rules.push("-o lo -j ACCEPT".into());
    rules.push("-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".into());
    rules.push(format!("-m owner --uid-owner {proxy} -j ACCEPT"));
    rules.push(rej.to_owned());
    ChainSpec {
        chain: EGRESS_CHAIN,
        hook: "OUTPUT",
        rules,
    }
}

/// The host's rules for one family; `docker_user_v6` says whether Docker made an
/// IPv6 `DOCKER-USER` (else IPv6 hooks `FORWARD`).
pub fn host_specs(p: &HostPolicy, family: Family, docker_user_v6: bool) -> Vec<ChainSpec> {
    let mut specs = Vec::new();
    match family {
        Family::V4 => {
            specs.push(ChainSpec {
                chain: HOST_CHAIN,
                hook: "DOCKER-USER",
                rules: vec![
                    format!("-d {IMDS_V4}/32 -j DROP"),
                    format!("-d {ECS_CREDENTIALS}/32 -j DROP"),
                ],
            });
            if p.block_credential_dnat {
                specs.push(ChainSpec {
                    chain: HOST_INPUT_CHAIN,
                    hook: "INPUT",
                    rules: vec![format!(
                        "-d 127.0.0.1/32 ! -i lo -p tcp -m tcp --dport {ECS_CREDENTIALS_PORT} -j DROP"
                    )],
                });
            }
        }
        Family::V6 => specs.push(ChainSpec {
            chain: HOST_CHAIN,
            hook: if docker_user_v6 {
                "DOCKER-USER"
            } else {
                "FORWARD"
            },
            rules: vec![
                format!("-d {IMDS_V6}/128 -j DROP"),
                format!("-d {IMDS_NAT64}/128 -j DROP"),
            ],
        }),
    }
    specs
}

/// The lines of chain `chain` in `saved` (an `iptables-save` dump), prefix removed.
fn chain_lines<'a>(saved: &'a str, chain: &str) -> Vec<&'a str> {
    let prefix = format!("-A {chain} ");
    saved
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

/// Whether `saved` declares chain `chain`.
pub fn has_chain(saved: &str, chain: &str) -> bool {
    saved.lines().any(|l| {
        l.strip_prefix(':')
            .and_then(|c| c.split_whitespace().next())
            == Some(chain)
    })
}

/// How `saved` differs from `specs` (empty: it matches).
pub fn drift(saved: &str, specs: &[ChainSpec]) -> Vec<Drift> {
    let mut out = Vec::new();
    for spec in specs {
        if !has_chain(saved, spec.hook) && !is_builtin(spec.hook) {
            out.push(Drift::NoHookChain { hook: spec.hook });
            continue;
        }
        let jump = format!("-j {}", spec.chain);
        if chain_lines(saved, spec.hook).first() != Some(&jump.as_str()) {
            out.push(Drift::HookMissing {
                chain: spec.chain,
                hook: spec.hook,
            });
        }
        let found = chain_lines(saved, spec.chain);
        let want: Vec<&str> = spec.rules.iter().map(String::as_str).collect();
        if found != want {
            out.push(Drift::Rules {
                chain: spec.chain,
                missing: want
                    .iter()
                    .filter(|r| !found.contains(r))
                    .map(|r| (*r).to_owned())
                    .collect(),
                extra: found
                    .iter()
                    .filter(|r| !want.contains(r))
                    .map(|r| (*r).to_owned())
                    .collect(),
            });
        }
    }
    out
}

fn is_builtin(chain: &str) -> bool {
    matches!(chain, "INPUT" | "OUTPUT" | "FORWARD")
}

/// An `iptables-restore --noflush` transaction that refills our chains and, where
/// the read-back `saved` shows a hook not jumping to them first, inserts the jump at
/// the top. Chains that are not ours are never declared (declaring a chain under
/// `--noflush` empties it).
pub fn restore_text(saved: &str, specs: &[ChainSpec]) -> String {
    let mut out = String::from("*filter\n");
    for spec in specs {
        out.push_str(&format!(":{} - [0:0]\n", spec.chain));
    }
    for spec in specs {
        let jump = format!("-j {}", spec.chain);
        if chain_lines(saved, spec.hook).first() != Some(&jump.as_str()) {
            out.push_str(&format!("-I {} 1 {jump}\n", spec.hook));
        }
        for r in &spec.rules {
            out.push_str(&format!("-A {} {r}\n", spec.chain));
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// A transaction that empties our chains and unhooks them (hostd's cleanup on exit):
/// every jump to them found in `saved` is deleted, then the chains are emptied and
/// removed.
pub fn removal_text(saved: &str, specs: &[ChainSpec]) -> Option<String> {
    let mut out = String::from("*filter\n");
    let mut any = false;
    for spec in specs {
        let jump = format!("-j {}", spec.chain);
        for l in chain_lines(saved, spec.hook) {
            if l == jump {
                out.push_str(&format!("-D {} {jump}\n", spec.hook));
            }
        }
        if has_chain(saved, spec.chain) {
            any = true;
            out.push_str(&format!("-F {}\n-X {}\n", spec.chain, spec.chain));
        }
    }
    out.push_str("COMMIT\n");
    any.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str =
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";

    fn saved_with(specs: &[ChainSpec]) -> String {
        let mut s = String::from(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n",
        );
        for spec in specs {
            s.push_str(&format!(":{} - [0:0]\n", spec.chain));
        }
        for spec in specs {
            s.push_str(&format!("-A {} -j {}\n", spec.hook, spec.chain));
            for r in &spec.rules {
                s.push_str(&format!("-A {} {r}\n", spec.chain));
            }
        }
        s.push_str("COMMIT\n");
        s
    }

    #[test]
    fn egress_refuses_metadata_first_and_ends_with_a_reject() {
        let spec = egress_spec(&EgressPolicy::default(), Family::V4);
        assert_eq!(
            spec.rules[0],
            "-d 169.254.169.254/32 -j REJECT --reject-with icmp-admin-prohibited"
        );
        assert!(spec.rules[1].starts_with("-d 169.254.170.2/32 -j REJECT"));
        assert_eq!(
            spec.rules.last().unwrap(),
            "-j REJECT --reject-with icmp-admin-prohibited"
        );
        let lo = spec
            .rules
            .iter()
            .position(|r| r == "-o lo -j ACCEPT")
            .unwrap();
        let dns = spec
            .rules
            .iter()
            .position(|r| r.contains("--dport 53"))
            .unwrap();
        assert!(
            dns < lo,
            "DNS refusal must precede the loopback accept (127.0.0.11 is loopback)"
        );
        let admin = spec
            .rules
            .iter()
            .position(|r| r.contains("--dport 8081") && r.contains("--uid-owner 1000"))
            .expect("the proxy's admin port is refused to the workspace");
        assert!(
            admin < lo,
            "the admin refusal must precede the loopback accept (hostd alone pushes policy)"
        );
        assert!(
            spec.rules
                .iter()
                .any(|r| r == "-m owner --uid-owner 2000 -j ACCEPT")
        );
        assert!(
            !spec
                .rules
                .iter()
                .any(|r| r.contains("--uid-owner 1000 -j ACCEPT"))
        );
    }

    #[test]
    fn credential_switch_lets_only_the_proxy_reach_the_endpoint() {
        let p = EgressPolicy {
            proxy_task_credentials: true,
            ..EgressPolicy::default()
        };
        let spec = egress_spec(&p, Family::V4);
        let allow = spec
            .rules
            .iter()
            .position(|r| r == "-d 169.254.170.2/32 -m owner --uid-owner 2000 -j ACCEPT")
            .unwrap();
        let deny = spec
            .rules
            .iter()
            .position(|r| r.starts_with("-d 169.254.170.2/32 -j REJECT"))
            .unwrap();
        assert!(allow < deny);
        assert!(
            !egress_spec(&EgressPolicy::default(), Family::V4)
                .rules
                .iter()
                .any(|r| r.contains("170.2/32 -m owner"))
        );
    }

    #[test]
    fn ipv6_lock_covers_imds_and_nat64() {
        let spec = egress_spec(&EgressPolicy::default(), Family::V6);
        assert_eq!(
            spec.rules[0],
            "-d fd00:ec2::254/128 -j REJECT --reject-with icmp6-adm-prohibited"
        );
        assert_eq!(
            spec.rules[1],
            "-d 64:ff9b::a9fe:a9fe/128 -j REJECT --reject-with icmp6-adm-prohibited"
        );
        assert!(!spec.rules.iter().any(|r| r.contains("127.0.0.11")));
    }

    #[test]
    fn empty_table_drifts_and_restore_inserts_the_hook() {
        let specs = [egress_spec(&EgressPolicy::default(), Family::V4)];
        let d = drift(EMPTY, &specs);
        assert!(d.contains(&Drift::HookMissing {
            chain: EGRESS_CHAIN,
            hook: "OUTPUT"
        }));
        let text = restore_text(EMPTY, &specs);
        assert!(
            text.contains(":BERTH-EGRESS - [0:0]\n-I OUTPUT 1 -j BERTH-EGRESS\n"),
            "{text}"
        );
        assert!(text.ends_with("COMMIT\n"));
    }

    #[test]
    fn a_matching_table_has_no_drift_and_restore_keeps_the_hook_once() {
        let specs = [egress_spec(&EgressPolicy::default(), Family::V6)];
        let saved = saved_with(&specs);
        assert!(drift(&saved, &specs).is_empty());
        assert!(!restore_text(&saved, &specs).contains("-I OUTPUT"));
    }

    #[test]
    fn an_altered_rule_is_named() {
        let specs = [egress_spec(&EgressPolicy::default(), Family::V4)];
        let saved = saved_with(&specs).replace(
            "-A BERTH-EGRESS -m owner --uid-owner 2000 -j ACCEPT\n",
            "-A BERTH-EGRESS -m owner --uid-owner 1000 -j ACCEPT\n",
        );
        let d = drift(&saved, &specs);
        assert_eq!(d.len(), 1);
        let msg = d[0].to_string();
        assert!(
            msg.contains("1 missing")
                && msg.contains("1 unexpected")
                && msg.contains("uid-owner 1000"),
            "{msg}"
        );
    }

    #[test]
    fn a_hook_below_another_rule_is_drift() {
        let specs = [egress_spec(&EgressPolicy::default(), Family::V4)];
        let saved = saved_with(&specs).replace(
            "-A OUTPUT -j BERTH-EGRESS\n",
            "-A OUTPUT -j ACCEPT\n-A OUTPUT -j BERTH-EGRESS\n",
        );
        assert_eq!(
            drift(&saved, &specs),
            vec![Drift::HookMissing {
                chain: EGRESS_CHAIN,
                hook: "OUTPUT"
            }]
        );
    }

    #[test]
    fn host_rules_need_docker_user_and_never_declare_it() {
        let specs = host_specs(&HostPolicy::default(), Family::V4, false);
        assert_eq!(
            drift(EMPTY, &specs),
            vec![Drift::NoHookChain {
                hook: "DOCKER-USER"
            }]
        );
        let with_docker = EMPTY.replace(
            "COMMIT",
            ":DOCKER-USER - [0:0]\n-A DOCKER-USER -j RETURN\nCOMMIT",
        );
        let text = restore_text(&with_docker, &specs);
        assert!(
            !text.contains(":DOCKER-USER"),
            "declaring DOCKER-USER under --noflush would empty it"
        );
        assert!(text.contains("-I DOCKER-USER 1 -j BERTH-HOST\n"));
    }

    #[test]
    fn ipv6_host_rules_hook_forward_without_docker_user() {
        assert_eq!(
            host_specs(&HostPolicy::default(), Family::V6, false)[0].hook,
            "FORWARD"
        );
        assert_eq!(
            host_specs(&HostPolicy::default(), Family::V6, true)[0].hook,
            "DOCKER-USER"
        );
    }

    #[test]
    fn ecs_credential_dnat_is_refused_off_loopback() {
        let specs = host_specs(
            &HostPolicy {
                block_credential_dnat: true,
            },
            Family::V4,
            false,
        );
        assert_eq!(specs[1].chain, HOST_INPUT_CHAIN);
        assert_eq!(
            specs[1].rules[0],
            "-d 127.0.0.1/32 ! -i lo -p tcp -m tcp --dport 51679 -j DROP"
        );
    }

    #[test]
    fn removal_unhooks_and_deletes_our_chains_only() {
        let specs = [egress_spec(&EgressPolicy::default(), Family::V4)];
        let text = removal_text(&saved_with(&specs), &specs).unwrap();
        assert_eq!(
            text,
            "*filter\n-D OUTPUT -j BERTH-EGRESS\n-F BERTH-EGRESS\n-X BERTH-EGRESS\nCOMMIT\n"
        );
        assert!(removal_text(EMPTY, &specs).is_none());
    }
}
