//! Where the proxy may connect: address classification, resolution, checked connects.
//!
//! Background: a name on the allowlist says nothing about where it points. DNS can
//! answer with 127.0.0.1, 10.0.0.5, the instance metadata service, or a public
//! address first and a private one a second later (rebinding). So the proxy resolves
//! every upstream itself, refuses the whole answer if any address in it is
//! forbidden, and then connects to exactly an address it checked — the socket is
//! never given a name to resolve again. A route may widen this for named ranges
//! (`allow_private_upstream`, for tests and in-VPC services); metadata addresses
//! are never allowed.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;

use crate::config::DnsMode;

/// An address range, `addr/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.parse().map_err(|_| format!("{s:?}: not an address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix must be 0..={max}"))?
        };
        Ok(Self { addr, prefix })
    }
}

impl Cidr {
    /// Whether `ip` lies in this range (IPv4 and IPv6 never match each other).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    if a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

/// Why an address may not be connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forbidden {
    /// Cloud metadata and credential endpoints; never allowed.
    Metadata,
    Loopback,
    Private,
    LinkLocal,
    SharedCgnat,
    Multicast,
    Unspecified,
    /// IPv4-mapped, IPv4-compatible, NAT64, 6to4 or Teredo: an IPv4 address in
    /// IPv6 clothing.
    Embedded,
    /// Documentation, benchmarking, broadcast and other reserved ranges.
    Reserved,
}

impl Forbidden {
    /// A stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Metadata => "metadata",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::LinkLocal => "link_local",
            Self::SharedCgnat => "cgnat",
            Self::Multicast => "multicast",
            Self::Unspecified => "unspecified",
            Self::Embedded => "ipv4_embedded",
            Self::Reserved => "reserved",
        }
    }
}

const METADATA: [IpAddr; 5] = [
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 23)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)),
];

/// Classifies `ip`; `None` means a public unicast address.
pub fn classify(ip: IpAddr) -> Option<Forbidden> {
    if METADATA.contains(&ip) {
        return Some(Forbidden::Metadata);
    }
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Forbidden> {
    let o = ip.octets();
    let in_net = |net: [u8; 4], bits: u8| prefix_eq(&net, &o, bits);
    if in_net([0, 0, 0, 0], 8) {
        Some(Forbidden::Unspecified)
    } else if in_net([127, 0, 0, 0], 8) {
        Some(Forbidden::Loopback)
    } else if in_net([10, 0, 0, 0], 8)
        || in_net([172, 16, 0, 0], 12)
        || in_net([192, 168, 0, 0], 16)
    {
        Some(Forbidden::Private)
    } else if in_net([169, 254, 0, 0], 16) {
        Some(Forbidden::LinkLocal)
    } else if in_net([100, 64, 0, 0], 10) {
        Some(Forbidden::SharedCgnat)
    } else if in_net([224, 0, 0, 0], 4) {
        Some(Forbidden::Multicast)
    } else if in_net([240, 0, 0, 0], 4)
        || in_net([192, 0, 0, 0], 24)
        || in_net([192, 0, 2, 0], 24)
        || in_net([198, 18, 0, 0], 15)
        || in_net([198, 51, 100, 0], 24)
        || in_net([203, 0, 113, 0], 24)
    {
        Some(Forbidden::Reserved)
    } else {
        None
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<Forbidden> {
    let o = ip.octets();
    let in_net = |net: Ipv6Addr, bits: u8| prefix_eq(&net.octets(), &o, bits);
    if ip.is_unspecified() {
        Some(Forbidden::Unspecified)
    } else if ip.is_loopback() {
        Some(Forbidden::Loopback)
    } else if in_net(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96)
        || in_net(Ipv6Addr::UNSPECIFIED, 96)
        || in_net(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96)
        || in_net(Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48)
        || in_net(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16)
        || in_net(Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32)
    {
        Some(Forbidden::Embedded)
    } else if in_net(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7) {
        Some(Forbidden::Private)
    } else if in_net(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10)
        || in_net(Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10)
    {
        Some(Forbidden::LinkLocal)
    } else if in_net(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8) {
        Some(Forbidden::Multicast)
    } else if in_net(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32)
        || in_net(Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64)
    {
        Some(Forbidden::Reserved)
    } else {
        None
    }
}

/// What a target may resolve to beyond public addresses.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    pub allow: Vec<Cidr>,
}

impl AddressPolicy {
    pub fn from_strings(ranges: &[String]) -> Result<Self, String> {
        Ok(Self {
            allow: ranges.iter().map(|r| r.parse()).collect::<Result<_, _>>()?,
        })
    }

    /// `Err` with the reason when `ip` may not be used.
    pub fn check(&self, ip: IpAddr) -> Result<(), Forbidden> {
        match classify(ip) {
            None => Ok(()),
            Some(Forbidden::Metadata) => Err(Forbidden::Metadata),
            Some(reason) if self.allow.iter().any(|c| c.contains(ip)) => {
                let _ = reason;
                Ok(())
            }
            Some(reason) => Err(reason),
        }
    }
}

/// Resolution failed or returned nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// No answer (or the name is not in `[hosts]` with `dns = "hosts-only"`).
    #[error("{host}: no address")]
    NotFound { host: String },
    /// The resolver failed.
    #[error("{host}: resolver failed: {source}")]
    Io {
        host: String,
        source: std::io::Error,
    },
}

/// A boxed future, for the object-safe [`Resolve`] trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Turns a host name into addresses. Tests substitute scripted answers.
pub trait Resolve: Send + Sync + 'static {
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, ResolveError>>;
}

/// `[hosts]` first, then (unless hosts-only) the system resolver.
pub struct SystemResolver {
    hosts: BTreeMap<String, Vec<IpAddr>>,
    mode: DnsMode,
}

impl SystemResolver {
    pub fn new(hosts: BTreeMap<String, Vec<IpAddr>>, mode: DnsMode) -> Self {
        let hosts = hosts
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        Self { hosts, mode }
    }
}

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, ResolveError>> {
        Box::pin(async move {
            if let Ok(ip) = host.parse::<IpAddr>() {
                return Ok(vec![ip]);
            }
            if let Some(addrs) = self.hosts.get(host) {
                return Ok(addrs.clone());
            }
            if self.mode == DnsMode::HostsOnly {
                return Err(ResolveError::NotFound {
                    host: host.to_owned(),
                });
            }
            // Hosts were checked by config::check_host_name, so getaddrinfo never
            // sees a numeric form it would read as an address.
            let addrs: Vec<IpAddr> = tokio::net::lookup_host((host, 0))
                .await
                .map_err(|source| ResolveError::Io {
                    host: host.to_owned(),
                    source,
                })?
                .map(|a| a.ip())
                .collect();
            if addrs.is_empty() {
                return Err(ResolveError::NotFound {
                    host: host.to_owned(),
                });
            }
            Ok(addrs)
        })
    }
}

/// Why an upstream connection was not made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The target is not configured at all (defence in depth: the connector only
    /// knows configured upstreams).
    #[error("{host}:{port} is not a configured upstream")]
    NotConfigured { host: String, port: u16 },
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// An answer held an address the policy forbids; nothing was connected.
    #[error("{host} resolved to a forbidden address ({})", reason.as_str())]
    Forbidden { host: String, reason: Forbidden },
    /// Every checked address refused or timed out.
    #[error("{host}:{port}: connect failed: {source}")]
    Tcp {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    /// The TLS handshake failed (including certificate verification).
    #[error("{host}: TLS handshake failed: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("{host}:{port}: connect timed out")]
    Timeout { host: String, port: u16 },
}

/// Resolves `host`, checks every answer, connects TCP to a checked address.
pub async fn connect_checked(
    resolver: &dyn Resolve,
    policy: &AddressPolicy,
    host: &str,
    port: u16,
    on_attempt: impl Fn(),
) -> Result<tokio::net::TcpStream, ConnectError> {
    let addrs = resolver.resolve(host).await?;
    for ip in &addrs {
        if let Err(reason) = policy.check(*ip) {
            return Err(ConnectError::Forbidden {
                host: host.to_owned(),
                reason,
            });
        }
    }
    let mut last = None;
    for ip in addrs {
        on_attempt();
        match tokio::net::TcpStream::connect(SocketAddr::new(ip, port)).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(ConnectError::Tcp {
        host: host.to_owned(),
        port,
        source: last.unwrap_or_else(|| std::io::Error::other("no address")),
    })
}

/// Shared handle.
pub type SharedResolver = Arc<dyn Resolve>;

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn classifies_the_dangerous_ranges() {
        for (a, want) in [
            ("169.254.169.254", Forbidden::Metadata),
            ("169.254.170.2", Forbidden::Metadata),
            ("fd00:ec2::254", Forbidden::Metadata),
            ("127.0.0.1", Forbidden::Loopback),
            ("127.255.0.9", Forbidden::Loopback),
            ("::1", Forbidden::Loopback),
            ("10.0.0.1", Forbidden::Private),
            ("172.31.255.255", Forbidden::Private),
            ("192.168.1.1", Forbidden::Private),
            ("fd12::1", Forbidden::Private),
            ("169.254.1.1", Forbidden::LinkLocal),
            ("fe80::1", Forbidden::LinkLocal),
            ("100.64.0.1", Forbidden::SharedCgnat),
            ("224.0.0.1", Forbidden::Multicast),
            ("ff02::1", Forbidden::Multicast),
            ("0.0.0.0", Forbidden::Unspecified),
            ("::", Forbidden::Unspecified),
            ("::ffff:127.0.0.1", Forbidden::Embedded),
            ("::ffff:8.8.8.8", Forbidden::Embedded),
            ("64:ff9b::a9fe:a9fe", Forbidden::Embedded),
            ("2002:a9fe:a9fe::1", Forbidden::Embedded),
            ("255.255.255.255", Forbidden::Reserved),
        ] {
            assert_eq!(classify(ip(a)), Some(want), "{a}");
        }
        for a in ["8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700::1111"] {
            assert_eq!(classify(ip(a)), None, "{a}");
        }
    }

    #[test]
    fn policy_widens_named_ranges_but_never_metadata() {
        let p =
            AddressPolicy::from_strings(&["127.0.0.0/8".into(), "169.254.0.0/16".into()]).unwrap();
        assert!(p.check(ip("127.0.0.1")).is_ok());
        assert_eq!(p.check(ip("10.0.0.1")), Err(Forbidden::Private));
        assert_eq!(p.check(ip("169.254.169.254")), Err(Forbidden::Metadata));
        assert!(p.check(ip("169.254.1.1")).is_ok());
        assert!("1.2.3.4/40".parse::<Cidr>().is_err());
        assert!(
            "10.1.0.0/9"
                .parse::<Cidr>()
                .unwrap()
                .contains(ip("10.127.0.1"))
        );
        assert!(
            !"10.1.0.0/9"
                .parse::<Cidr>()
                .unwrap()
                .contains(ip("10.128.0.1"))
        );
    }

    struct Scripted(std::sync::Mutex<Vec<Vec<IpAddr>>>);
    impl Resolve for Scripted {
        fn resolve<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, ResolveError>> {
            let next = self.0.lock().unwrap().remove(0);
            Box::pin(async move { Ok(next) })
        }
    }

    #[tokio::test]
    async fn every_connect_rechecks_so_rebinding_and_mixed_answers_fail() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let resolver = Scripted(std::sync::Mutex::new(vec![
            vec![ip("127.0.0.1")],
            vec![ip("10.0.0.1")],
            vec![ip("127.0.0.1"), ip("169.254.169.254")],
            vec![ip("64:ff9b::a9fe:a9fe")],
        ]));
        let policy = AddressPolicy::from_strings(&["127.0.0.1/32".into()]).unwrap();
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let count = || {
            attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        };
        assert!(
            connect_checked(&resolver, &policy, "a.test", port, count)
                .await
                .is_ok()
        );
        for want in [Forbidden::Private, Forbidden::Metadata, Forbidden::Embedded] {
            match connect_checked(&resolver, &policy, "a.test", port, count).await {
                Err(ConnectError::Forbidden { reason, .. }) => assert_eq!(reason, want),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
