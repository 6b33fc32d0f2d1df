//! What one client address may make the gateway hold in memory, all its connections together:
//! receive buffers and partial messages, the caches of the streams it publishes, unfinished
//! RTMPT request bodies, the frames queued for its players that they have not read. Each holder
//! keeps a [`Charge`] up to date; growing past the address's budget is refused and the holder
//! closes its connection (or answers the request with an error).

use crate::sync::lock;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

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

/// A player's queue billed to its address (the router calls it from the publisher's task):
/// counts the frames the player pins, payload plus per-frame overhead, as if nobody else shared
/// them, because they cannot be freed while it lags. The first refusal is kept for the log.
pub struct QueueCharge {
    charge: Charge,
    limit: usize,
    refused: Arc<OnceLock<OverBudget>>,
}

impl QueueCharge {
    pub fn new(charge: Charge, limit: usize) -> (QueueCharge, Arc<OnceLock<OverBudget>>) {
        let refused = Arc::new(OnceLock::new());
        (QueueCharge { charge, limit, refused: refused.clone() }, refused)
    }
}

impl rtmpx_router::MemoryCharge for QueueCharge {
    fn set(&mut self, bytes: usize) -> bool {
        match self.charge.set(bytes, self.limit) {
            Ok(()) => true,
            Err(over) => {
                let _ = self.refused.set(over);
                false
            }
        }
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

    #[test]
    fn a_player_that_does_not_read_is_billed_to_its_address_and_cut_off() {
        use bytes::Bytes;
        use rtmpx_router::{Frame, PlayerEvent, Router, SessionInfo, StreamKey, CHARGE_STEP, FRAME_OVERHEAD};

        const LIMIT: usize = 1 << 20;
        const FRAME: usize = 64 << 10;
        let budgets = Arc::new(AddressBudgets::default());
        let router = Router::new(Default::default());
        let key = StreamKey::new("live", "big");
        let info = |id| SessionInfo { id, peer: "p".into(), variant: "rtmp" };
        let publisher = router.publish(key.clone(), info(0)).unwrap();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let play = |id, ip| {
            let mut player = router.play(key.clone(), info(id));
            let (charge, refused) = QueueCharge::new(budgets.charge(ip), LIMIT);
            assert!(player.set_memory_charge(Box::new(charge)));
            assert!(matches!(player.try_recv(), Some(PlayerEvent::PublishStarted)));
            (player, refused)
        };
        let (mut reader, reader_refused) = play(1, a);
        let (mut stalled, stalled_refused) = play(2, a);
        let (mut elsewhere, _) = play(3, b);
        let frame = |first: u8| {
            let mut payload = vec![0u8; FRAME];
            payload[..2].copy_from_slice(&[first, 0x01]);
            Frame::video(0, Bytes::from(payload))
        };
        for i in 0..14 {
            publisher.send(frame(if i == 0 { 0x17 } else { 0x27 }));
            assert!(matches!(reader.try_recv(), Some(PlayerEvent::Frame(f)) if f.payload.len() == FRAME));
            // Billed rounded up to steps: the stalled player pins what it queued.
            let pinned = (i + 1) * (FRAME + FRAME_OVERHEAD);
            if !stalled.is_over_budget() {
                assert!(budgets.held(a) >= pinned, "frame {i}: {} < {pinned}", budgets.held(a));
            }
        }
        // The reader, caught up, is billed nothing; the stalled player was refused at its 14th
        // frame (15 steps, plus the reader's 2 for the frame it had not read yet, pass 16),
        // emptied, and billed nothing more.
        assert!(stalled.is_over_budget());
        assert_eq!(stalled_refused.get().map(|over| over.limit), Some(LIMIT));
        assert!(stalled.try_recv().is_none());
        assert_eq!(stalled.dropped_frames(), 14);
        assert_eq!(budgets.held(a), 0);
        assert!(!reader.is_over_budget() && reader_refused.get().is_none());
        // Another address has its own budget: its player holds all 14 frames.
        assert!(!elsewhere.is_over_budget());
        assert_eq!(budgets.held(b), 15 * CHARGE_STEP);
        let mut received = 0;
        while let Some(event) = elsewhere.try_recv() {
            received += usize::from(matches!(event, PlayerEvent::Frame(_)));
        }
        assert_eq!(received, 14);
        assert_eq!(budgets.held(b), 0, "released as the queue is read");
        drop((reader, stalled, elsewhere));
        assert_eq!((budgets.held(a), budgets.held(b)), (0, 0));
    }
}
