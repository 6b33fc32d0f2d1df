//! Pairs RTMPE players' encryption within one fan-out. RC4 is a chain of dependent table loads;
//! two players' streams in one loop ([`ServerSession::seal_output_paired`]) encrypt 1.7x the bytes
//! per second of one at a time. The first RTMPE player of a pair is parked with its frame encoded
//! but not yet encrypted; the next one seals both and writes both. A player left over at the end
//! of the fan-out is sealed alone.
//!
//! [`ServerSession::seal_output_paired`]: rtmpx_core::session::ServerSession::seal_output_paired

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rtmpx_router::{DirectSend, PlayerWaker};

use super::io::{IoState, SessionIo};

thread_local! {
    static PAIRING: RefCell<Pairing> = const { RefCell::new(Pairing { active: false, parked: None }) };
}

/// Fan-out writes of RTMPE players: [sealed in a pair, sealed alone] (for `/metrics`).
static SEALS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// How many of the fan-out's RTMPE writes were encrypted in a pair, and how many alone.
pub(crate) fn seal_counts() -> (u64, u64) {
    (SEALS[0].load(Ordering::Relaxed), SEALS[1].load(Ordering::Relaxed))
}

struct Pairing {
    /// A fan-out is running on this thread (outside one, players write at once).
    active: bool,
    parked: Option<Parked>,
}

/// An RTMPE player whose output is encoded but neither encrypted nor written yet.
pub(super) struct Parked {
    pub io: Arc<SessionIo>,
    pub waker: PlayerWaker,
}

impl Parked {
    /// Writes what the parked player holds (encrypting what is left unsealed), or leaves it to
    /// the player's task when the task is using the session.
    fn write_alone(self) {
        match self.io.state.try_lock() {
            Ok(mut io) if io.publisher_may_write() => {
                SEALS[1].fetch_add(1, Ordering::Relaxed);
                self.finish(io.write_now())
            }
            _ => self.waker.wake(),
        }
    }

    fn finish(&self, sent: DirectSend) {
        if sent == DirectSend::SentWakeTask {
            self.waker.wake();
        }
    }
}

/// The fan-out [`Scope`](crate::fan_out::Scope) of the gateway's sessions, also around each job
/// a hot stream's shard delivers ([`rtmpx_router::ShardConfig`]).
pub(crate) fn scope(fan_out: &mut dyn FnMut()) {
    paired(fan_out)
}

/// Runs a fan-out with RTMPE players' encryption paired on this thread.
pub(super) fn paired<R>(fan_out: impl FnOnce() -> R) -> R {
    /// Ends the pairing even if the fan-out panics (the parked player's task then writes).
    struct End;
    impl Drop for End {
        fn drop(&mut self) {
            let parked = PAIRING.with(|pairing| {
                let mut pairing = pairing.borrow_mut();
                pairing.active = false;
                pairing.parked.take()
            });
            match parked {
                Some(parked) if std::thread::panicking() => parked.waker.wake(),
                Some(parked) => parked.write_alone(),
                None => {}
            }
        }
    }
    PAIRING.with(|pairing| pairing.borrow_mut().active = true);
    let _end = End;
    fan_out()
}

/// Offers an RTMPE player whose output was just encoded (`io`, locked; `me`, the same session for
/// parking). `None`: no fan-out pairs on this thread, the caller writes as usual. Otherwise the
/// player is parked, or sealed with the parked partner and both are written.
pub(super) fn offer(io: &mut IoState, me: impl FnOnce() -> Parked) -> Option<DirectSend> {
    let partner = PAIRING.with(|pairing| {
        let mut pairing = pairing.borrow_mut();
        if !pairing.active {
            return Err(());
        }
        let partner = pairing.parked.take();
        if partner.is_none() {
            pairing.parked = Some(me());
        }
        Ok(partner)
    });
    let Ok(partner) = partner else { return None };
    let Some(partner) = partner else { return Some(DirectSend::Sent) };
    match partner.io.state.try_lock() {
        Ok(mut theirs) => {
            io.session.seal_output_paired(&mut theirs.session);
            SEALS[0].fetch_add(2, Ordering::Relaxed);
            if theirs.publisher_may_write() {
                partner.finish(theirs.write_now());
            } else {
                // Its task is writing; it takes the sealed output with the rest.
                partner.waker.wake();
            }
        }
        // Its task holds the session: it encrypts and writes its own output.
        Err(_) => partner.waker.wake(),
    }
    Some(io.write_now())
}
