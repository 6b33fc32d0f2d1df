//! File descriptors: every connection holds one, and a gateway out of them can accept nobody,
//! not even the admin listener. The soft limit is raised to the hard one at start, and the
//! connections admitted are capped so that a reserve stays free.

use std::time::Duration;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. Returns (before, now), or `None` where
/// the limit cannot be read.
pub fn raise_limit() -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        let (before, hard) = rlimit::Resource::NOFILE.get().ok()?;
        let now = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!("could not raise the open-files limit from {before} to {hard}: {e}");
                before
            }
        };
        Some((before, now))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Connections that may be admitted with `limit` descriptors, `reserve` of which stay free for
/// the admin listener, callbacks, relays and files.
pub fn connection_cap(limit: u64, reserve: usize) -> usize {
    usize::try_from(limit).unwrap_or(usize::MAX).saturating_sub(reserve)
}

/// How long an accept loop waits after `failures` failed accepts in a row (out of descriptors,
/// mostly): 10 ms doubling to 1 s, so it neither spins nor stays deaf once descriptors are free.
pub fn accept_backoff(failures: u32) -> Duration {
    Duration::from_millis(10u64 << failures.saturating_sub(1).min(7)).min(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_keeps_the_reserve_free() {
        assert_eq!(connection_cap(1024, 128), 896);
        assert_eq!(connection_cap(100, 128), 0);
        assert_eq!(connection_cap(u64::MAX, 128), usize::MAX - 128);
    }

    #[test]
    fn accept_backs_off_up_to_a_second() {
        assert_eq!(accept_backoff(1), Duration::from_millis(10));
        assert_eq!(accept_backoff(2), Duration::from_millis(20));
        assert_eq!(accept_backoff(7), Duration::from_millis(640));
        assert_eq!(accept_backoff(8), Duration::from_secs(1));
        assert_eq!(accept_backoff(1000), Duration::from_secs(1));
    }

    #[cfg(unix)]
    #[test]
    fn the_soft_limit_reaches_the_hard_limit() {
        let (_, now) = raise_limit().expect("RLIMIT_NOFILE is readable");
        let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
        assert_eq!(now, soft);
        // Linux caps the soft limit at nr_open when the hard limit is unlimited.
        assert!(soft == hard || hard == rlimit::INFINITY, "soft {soft} hard {hard}");
    }
}
