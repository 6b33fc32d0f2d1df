//! IP networks in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or a bare address) for the
//! allow/deny lists.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address prefix. IPv4-mapped IPv6 peers (`::ffff:a.b.c.d`, seen on dual-stack listeners)
/// match IPv4 networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(u128::from(u32::from(net)) << 96, u128::from(u32::from(ip)) << 96, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(u128::from(net), u128::from(ip), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - u32::from(prefix));
    a & mask == b & mask
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr =
            addr.trim().parse().map_err(|_| format!("{text:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("{text:?}: prefix length must be 0..={max}")),
            },
        };
        Ok(IpNet { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> serde::Deserialize<'de> for IpNet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether `ip` may do something guarded by `allow` and `deny`: a deny match always refuses;
/// a non-empty allow list must match.
pub fn permitted(ip: IpAddr, allow: &[IpNet], deny: &[IpNet]) -> Result<(), &'static str> {
    if deny.iter().any(|n| n.contains(ip)) {
        return Err("address is in the deny list");
    }
    if !allow.is_empty() && !allow.iter().any(|n| n.contains(ip)) {
        return Err("address is not in the allow list");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_prefixes() {
        assert!(net("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(net("192.168.1.0/24").contains(ip("192.168.1.77")));
        assert!(!net("192.168.1.0/24").contains(ip("192.168.2.1")));
        assert!(net("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(net("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!net("127.0.0.1").contains(ip("127.0.0.2")));
        // Host bits in the network are ignored, as in most firewalls.
        assert!(net("10.1.2.3/8").contains(ip("10.9.9.9")));
    }

    #[test]
    fn v6_and_mapped() {
        assert!(net("2001:db8::/32").contains(ip("2001:db8:1::5")));
        assert!(!net("2001:db8::/32").contains(ip("2001:db9::1")));
        assert!(net("::/0").contains(ip("::1")));
        assert!(net("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
        assert!(!net("127.0.0.0/8").contains(ip("::1")));
        assert!(!net("::/0").contains(ip("1.2.3.4")), "families do not mix");
    }

    #[test]
    fn parse_errors() {
        for bad in ["", "10.0.0.0/33", "::/129", "10.0.0/8", "x/8", "10.0.0.0/-1", "10.0.0.0/"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad:?}");
        }
        assert_eq!(net("10.0.0.0/8").to_string(), "10.0.0.0/8");
    }

    #[test]
    fn allow_and_deny() {
        let allow = [net("10.0.0.0/8")];
        let deny = [net("10.1.0.0/16")];
        assert!(permitted(ip("10.2.0.1"), &allow, &deny).is_ok());
        assert!(permitted(ip("10.1.0.1"), &allow, &deny).is_err());
        assert!(permitted(ip("192.168.0.1"), &allow, &deny).is_err());
        assert!(permitted(ip("192.168.0.1"), &[], &deny).is_ok());
        assert!(permitted(ip("10.1.0.1"), &[], &deny).is_err());
    }
}
