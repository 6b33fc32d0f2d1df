//! The direct path: a caught-up player's frames are encoded and written by the publisher's task.

use std::sync::Arc;

use rtmpx_router::{DirectSend, DirectSink, Frame, PlayerWaker};

use super::io::{IoState, SessionIo};
use super::{seal_pairing, WRITE_BATCH};
use crate::fan_out::Batching;

/// Lets the publisher's task encode and write a frame for a caught-up player at once (no queue
/// entry, no wake-up of the player's task), as long as the player's socket takes it.
pub(super) struct DirectPlayer {
    pub(super) io: Arc<SessionIo>,
    /// The session's stream the player plays on.
    pub(super) stream_id: u32,
    /// Wakes the player's task when a write finished after `try_send` returned (RTMPE pairing).
    pub(super) waker: PlayerWaker,
    /// While batching, frames are only encoded and the publisher's task writes them at the end of
    /// its window ([`FanOut::flush`]).
    pub(super) batching: Batching,
}

impl DirectSink for DirectPlayer {
    fn try_send(&self, frame: &Frame, timestamp: u32, more: bool) -> DirectSend {
        // Busy (the player's task is reading or delivering): queue it, never wait.
        let Ok(mut io) = self.io.state.try_lock() else { return DirectSend::Refused };
        if !io.publisher_may_write() {
            return DirectSend::Refused;
        }
        io.encode(self.stream_id, frame, timestamp);
        if (more || !self.batching.window().is_zero()) && io.session.pending_output() < WRITE_BATCH {
            // Written with the publisher's next frame or by its next flush_direct.
            return DirectSend::Sent;
        }
        self.write(&mut io)
    }

    fn flush(&self) -> DirectSend {
        let Ok(mut io) = self.io.state.try_lock() else { return DirectSend::Refused };
        if !io.publisher_may_write() {
            // The task is writing; it takes everything the session holds.
            return DirectSend::Refused;
        }
        if io.session.pending_output() == 0 {
            return DirectSend::Sent;
        }
        self.write(&mut io)
    }
}

impl DirectPlayer {
    /// Writes what the session holds; RTMPE output waits to be encrypted with another player's.
    fn write(&self, io: &mut IoState) -> DirectSend {
        if io.session.is_encrypted() {
            let me = || seal_pairing::Parked { io: Arc::clone(&self.io), waker: self.waker.clone() };
            if let Some(sent) = seal_pairing::offer(io, me) {
                return sent;
            }
        }
        io.write_now()
    }
}
