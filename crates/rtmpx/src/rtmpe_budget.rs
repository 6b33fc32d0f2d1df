//! How many RTMPE handshakes one address may start: each costs two Diffie-Hellman modular
//! exponentiations (about 1 ms of a core, BENCHMARKS.md) before any authorisation, so a single
//! address could otherwise keep cores busy. A token bucket per address (per /64 for IPv6):
//! `limits.rtmpe_handshakes_per_ip` a second, bursts of four seconds' worth.

use crate::sync::lock;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Buckets kept before full ones are dropped (a full bucket is the same as none).
const PRUNE_ABOVE: usize = 4096;
/// A burst may use this many seconds of the rate at once (e.g. a page of players starting).
const BURST_SECS: f64 = 4.0;

#[derive(Default)]
pub struct RtmpeBudget {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RtmpeBudget {
    /// Takes one handshake from `ip`'s budget at `per_sec` (0: unlimited); `false` when it is spent.
    pub fn take(&self, ip: IpAddr, per_sec: u32) -> bool {
        self.take_at(ip, per_sec, Instant::now())
    }

    fn take_at(&self, ip: IpAddr, per_sec: u32, now: Instant) -> bool {
        if per_sec == 0 {
            return true;
        }
        let rate = f64::from(per_sec);
        let capacity = rate * BURST_SECS;
        let refilled = |bucket: &Bucket| {
            (bucket.tokens + now.saturating_duration_since(bucket.at).as_secs_f64() * rate).min(capacity)
        };
        let mut buckets = lock(&self.buckets);
        if buckets.len() > PRUNE_ABOVE {
            buckets.retain(|_, bucket| refilled(bucket) < capacity);
        }
        let bucket = buckets.entry(source(ip)).or_insert(Bucket { tokens: capacity, at: now });
        bucket.tokens = refilled(bucket);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return false;
        }
        bucket.tokens -= 1.0;
        true
    }

    /// Addresses with a bucket (for tests).
    #[cfg_attr(not(test), allow(dead_code, reason = "read by the tests"))]
    pub fn tracked(&self) -> usize {
        lock(&self.buckets).len()
    }
}

/// The unit one budget covers: an IPv4 address, or the /64 of an IPv6 address (one host usually
/// has a whole /64).
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let budget = RtmpeBudget::default();
        let (ip, start) = (IpAddr::from([10, 0, 0, 1]), Instant::now());
        let burst = (0..1000).take_while(|_| budget.take_at(ip, 50, start)).count();
        assert_eq!(burst, 200);
        assert!(budget.take_at(IpAddr::from([10, 0, 0, 2]), 50, start), "other addresses have their own");
        // One second later: 50 more, not 51.
        let later = start + Duration::from_secs(1);
        assert_eq!((0..1000).take_while(|_| budget.take_at(ip, 50, later)).count(), 50);
        assert!(budget.take_at(ip, 0, later), "0 is unlimited");
    }

    #[test]
    fn an_ipv6_host_is_one_source_per_64() {
        let budget = RtmpeBudget::default();
        let now = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(budget.take_at(a, 1, now));
        let taken = (0..10).filter(|_| budget.take_at(b, 1, now)).count();
        assert_eq!(taken, 3, "the same /64 shares a burst of 4");
        assert!(budget.take_at("2001:db8:1:3::1".parse().unwrap(), 1, now));
    }

    #[test]
    fn full_buckets_are_pruned() {
        let budget = RtmpeBudget::default();
        let now = Instant::now();
        for i in 0..=PRUNE_ABOVE as u32 {
            assert!(budget.take_at(IpAddr::from(i.to_be_bytes()), 10, now));
        }
        budget.take_at(IpAddr::from([1, 1, 1, 1]), 10, now + Duration::from_secs(10));
        assert_eq!(budget.tracked(), 1);
    }
}
