//! Connection admission: the total and per-address connection limits, and the cap the process's
//! file descriptors set (see [`crate::descriptors`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::warn;

use crate::config::ConfigHandle;
use crate::logsafe::Throttle;
use crate::metrics::{Denial, Metrics};
use crate::sync::lock;

/// Counts admitted connections (and RTMPT sessions) against `limits.max_connections*`.
pub struct Admissions {
    config: ConfigHandle,
    metrics: Arc<Metrics>,
    connections: AtomicUsize,
    /// Connections the process's file descriptors allow.
    descriptor_cap: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Admissions {
    pub fn new(config: ConfigHandle, metrics: Arc<Metrics>) -> Admissions {
        Admissions {
            config,
            metrics,
            connections: AtomicUsize::new(0),
            descriptor_cap: AtomicUsize::new(usize::MAX),
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    /// Admits at most `cap` connections whatever `max_connections` says.
    pub fn set_descriptor_cap(&self, cap: usize) {
        self.descriptor_cap.store(cap, Ordering::Relaxed);
    }

    /// Counts a new connection (or RTMPT session) against the limits; `None` when a limit is hit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admission> {
        let limits = self.config.get().limits.clone();
        let cap = limits.max_connections.min(self.descriptor_cap.load(Ordering::Relaxed));
        let total = self.connections.fetch_add(1, Ordering::AcqRel) + 1;
        if total > cap {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            self.metrics.denied(Denial::ConnectionLimit);
            let which = if cap < limits.max_connections { "the open-files limit" } else { "max_connections" };
            if let Some(held_back) = REFUSED_TOTAL_LOG.allow() {
                warn!(%ip, limit = cap, held_back, "connection refused: {which} reached");
            }
            return None;
        }
        let mut per_ip = lock(&self.per_ip);
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= limits.max_connections_per_ip {
            drop(per_ip);
            self.connections.fetch_sub(1, Ordering::AcqRel);
            self.metrics.denied(Denial::ConnectionLimit);
            if let Some(held_back) = REFUSED_PER_IP_LOG.allow() {
                warn!(%ip, limit = limits.max_connections_per_ip, held_back, "connection refused: max_connections_per_ip reached");
            }
            return None;
        }
        *count += 1;
        Some(Admission { admissions: self.clone(), ip })
    }
}

/// Releases a connection's place in the limits when the session ends.
pub struct Admission {
    admissions: Arc<Admissions>,
    ip: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.admissions.connections.fetch_sub(1, Ordering::AcqRel);
        let mut per_ip = lock(&self.admissions.per_ip);
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Refused connections are logged at most once per 10 s for each limit (a flood would fill the
/// log); `held_back` says how many were refused in between.
static REFUSED_TOTAL_LOG: Throttle = Throttle::new(Duration::from_secs(10));
static REFUSED_PER_IP_LOG: Throttle = Throttle::new(Duration::from_secs(10));
