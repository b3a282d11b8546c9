//! Which addresses the scheduler may connect to agents at.
//!
//! Hosts report their slots' agent URLs and the scheduler connects to them to
//! claim. With `--agent-networks` (the VPC's CIDR in a fleet; loopback and the
//! test's Docker networks in tests) a report naming an address anywhere else —
//! a metadata address, a fictional address from a fake, another network — is
//! refused before any connection is tried.

use std::net::IpAddr;

/// An IPv4 or IPv6 network, `ADDR/PREFIX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let net: IpAddr = a
            .parse()
            .map_err(|_| format!("network `{s}`: `{a}` is not an IP address"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("network `{s}`: prefix `{p}` is not 0 to {max}"))?
        };
        Ok(Self { net, prefix })
    }

    /// Parses a comma-separated list; empty gives none.
    pub fn parse_list(s: &str) -> Result<Vec<Self>, String> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(Self::parse)
            .collect()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
            if prefix == 0 {
                0
            } else {
                bits >> (width - prefix)
            }
        }
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                masked(u32::from(n).into(), self.prefix, 32)
                    == masked(u32::from(a).into(), self.prefix, 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                masked(u128::from(n), self.prefix, 128) == masked(u128::from(a), self.prefix, 128)
            }
            // An IPv4-mapped IPv6 address is its IPv4 address.
            (IpAddr::V4(_), IpAddr::V6(a)) => a
                .to_ipv4_mapped()
                .is_some_and(|v4| self.contains(IpAddr::V4(v4))),
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// Whether `url`'s host is an IP address inside one of `allowed` (any URL when
/// `allowed` is empty). A host name is refused when a list is set: names are
/// resolved later, so their address could not be checked here.
pub fn url_allowed(url: &str, allowed: &[Cidr]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    let Some(host) = parsed.host_str() else {
        return false;
    };
    let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    else {
        return false;
    };
    allowed.iter().any(|c| c.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_their_addresses_and_nothing_else() {
        let lo = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(lo.contains("127.1.2.3".parse().unwrap()));
        assert!(!lo.contains("10.0.0.1".parse().unwrap()));
        assert!(lo.contains("::ffff:127.0.0.1".parse().unwrap()));
        let bridge = Cidr::parse("172.18.0.0/16").unwrap();
        assert!(bridge.contains("172.18.255.2".parse().unwrap()));
        assert!(!bridge.contains("172.19.0.2".parse().unwrap()));
        let one = Cidr::parse("::1").unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
    }

    #[test]
    fn bad_networks_are_refused_with_the_part_named() {
        assert!(
            Cidr::parse("10.0.0.0/33")
                .unwrap_err()
                .contains("prefix `33`")
        );
        assert!(Cidr::parse("ten/8").unwrap_err().contains("`ten`"));
        assert_eq!(Cidr::parse_list(" , ").unwrap(), vec![]);
    }

    #[test]
    fn agent_urls_outside_the_networks_are_refused() {
        let allowed = Cidr::parse_list("127.0.0.0/8,172.18.0.0/16").unwrap();
        assert!(url_allowed("http://172.18.0.5:9000", &allowed));
        assert!(url_allowed("http://127.0.0.1:9000", &allowed));
        // moto's fictional ENI addresses, metadata, and names are all refused.
        assert!(!url_allowed("http://10.0.3.7:9000", &allowed));
        assert!(!url_allowed("http://169.254.169.254/", &allowed));
        assert!(!url_allowed("http://[fd00:ec2::254]/", &allowed));
        assert!(!url_allowed("http://agent.internal:9000", &allowed));
        assert!(!url_allowed("not a url", &allowed));
        assert!(url_allowed("http://10.0.3.7:9000", &[]));
    }
}
