//! What one client address may make the gateway hold in memory, all its connections together:
//! receive buffers and partial messages, the caches of the streams it publishes, unfinished
//! RTMPT request bodies. Each holder keeps a [`Charge`] up to date; growing past the address's
//! budget is refused and the holder closes its connection (or answers the request with an error).

use crate::sync::lock;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub use crate::error::OverBudget;

/// Bytes held per address. Updates are atomic on the address's own counter; the map lock is only
/// taken when a holder appears or goes.
#[derive(Default)]
pub struct AddressBudgets {
    held: Mutex<HashMap<IpAddr, Arc<AtomicUsize>>>,
}

impl AddressBudgets {
    /// A holder for `ip`, holding nothing yet.
    pub fn charge(self: &Arc<Self>, ip: IpAddr) -> Charge {
        let counter = lock(&self.held).entry(ip).or_default().clone();
        Charge { budgets: self.clone(), ip, counter, held: 0 }
    }

    /// Bytes charged to `ip` now.
    #[cfg_attr(not(test), allow(dead_code, reason = "read by the tests"))]
    pub fn held(&self, ip: IpAddr) -> usize {
        let counter = lock(&self.held).get(&ip).cloned();
        counter.map_or(0, |counter| counter.load(Ordering::Relaxed))
    }
}

/// One holder's share of its address's budget; released when dropped.
pub struct Charge {
    budgets: Arc<AddressBudgets>,
    ip: IpAddr,
    counter: Arc<AtomicUsize>,
    held: usize,
}

impl Charge {
    /// Sets what this holder holds now. Growing so that the address holds more than `limit` is
    /// refused (the charge stays as it was); shrinking always succeeds.
    pub fn set(&mut self, bytes: usize, limit: usize) -> Result<(), OverBudget> {
        if bytes > self.held {
            let extra = bytes - self.held;
            let before = self.counter.fetch_add(extra, Ordering::AcqRel);
            if before + extra > limit {
                self.counter.fetch_sub(extra, Ordering::AcqRel);
                return Err(OverBudget { total: before + extra, limit });
            }
        } else {
            self.counter.fetch_sub(self.held - bytes, Ordering::AcqRel);
        }
        self.held = bytes;
        Ok(())
    }

    #[cfg_attr(not(test), allow(dead_code, reason = "read by the tests"))]
    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let _ = self.set(0, usize::MAX);
        let mut held = lock(&self.budgets.held);
        // Let go of ours under the lock: if only the map's reference is left, nobody else charges
        // this address and its entry goes.
        drop(std::mem::take(&mut self.counter));
        if held.get(&self.ip).is_some_and(|counter| Arc::strong_count(counter) == 1) {
            held.remove(&self.ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_bounded_across_its_holders() {
        let budgets = Arc::new(AddressBudgets::default());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let mut first = budgets.charge(a);
        let mut second = budgets.charge(a);
        let mut other = budgets.charge(b);
        first.set(600, 1000).unwrap();
        assert_eq!(second.set(500, 1000), Err(OverBudget { total: 1100, limit: 1000 }));
        assert_eq!(second.held(), 0);
        second.set(400, 1000).unwrap();
        // Another address has its own budget.
        other.set(1000, 1000).unwrap();
        // Shrinking is always allowed, and frees room for the others.
        first.set(100, 1000).unwrap();
        second.set(900, 1000).unwrap();
        assert_eq!(budgets.held(a), 1000);
        drop(first);
        assert_eq!(budgets.held(a), 900);
        drop(second);
        assert_eq!(budgets.held(a), 0);
        assert!(!budgets.held.lock().unwrap().contains_key(&a), "entries go with their last holder");
    }
}
