//! User Control messages (type 4): stream lifecycle events and pings.

use bytes::BufMut;

use crate::{Error, Result};

/// A User Control message (type 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserControl {
    /// The stream is ready to carry data.
    StreamBegin(u32),
    /// Playback of the stream ended.
    StreamEof(u32),
    /// No more data on the stream for now.
    StreamDry(u32),
    /// The client's playback buffer length.
    SetBufferLength {
        /// The stream it applies to.
        stream_id: u32,
        /// Buffer length in milliseconds.
        millis: u32,
    },
    /// The stream is recorded (not live).
    StreamIsRecorded(u32),
    /// A ping with the sender's timestamp, to be echoed.
    PingRequest(u32),
    /// The echo of a ping request.
    PingResponse(u32),
    /// Event types we do not act on (e.g. SWF verification 26/27, buffer empty/ready 31/32).
    Other {
        /// The event type.
        event_type: u16,
    },
}

impl UserControl {
    /// Parses a User Control payload.
    pub fn parse(payload: &[u8]) -> Result<Self> {
        let short = || Error::Protocol("user control message too short".into());
        if payload.len() < 2 {
            return Err(short());
        }
        let event_type = u16::from_be_bytes([payload[0], payload[1]]);
        let word = |at: usize| -> Result<u32> {
            payload.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])).ok_or_else(short)
        };
        Ok(match event_type {
            0 => UserControl::StreamBegin(word(2)?),
            1 => UserControl::StreamEof(word(2)?),
            2 => UserControl::StreamDry(word(2)?),
            3 => UserControl::SetBufferLength { stream_id: word(2)?, millis: word(6)? },
            4 => UserControl::StreamIsRecorded(word(2)?),
            6 => UserControl::PingRequest(word(2)?),
            7 => UserControl::PingResponse(word(2)?),
            other => UserControl::Other { event_type: other },
        })
    }

    /// Writes the payload (event type and data).
    pub fn encode(&self, out: &mut impl BufMut) {
        let (event, a, b) = match *self {
            UserControl::StreamBegin(id) => (0u16, id, None),
            UserControl::StreamEof(id) => (1, id, None),
            UserControl::StreamDry(id) => (2, id, None),
            UserControl::SetBufferLength { stream_id, millis } => (3, stream_id, Some(millis)),
            UserControl::StreamIsRecorded(id) => (4, id, None),
            UserControl::PingRequest(t) => (6, t, None),
            UserControl::PingResponse(t) => (7, t, None),
            UserControl::Other { event_type } => (event_type, 0, None),
        };
        out.put_u16(event);
        out.put_u32(a);
        if let Some(b) = b {
            out.put_u32(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_known_bytes() {
        let mut out = Vec::new();
        UserControl::SetBufferLength { stream_id: 1, millis: 3000 }.encode(&mut out);
        assert_eq!(out, [0, 3, 0, 0, 0, 1, 0, 0, 0x0B, 0xB8]);
        assert_eq!(
            UserControl::parse(&out).unwrap(),
            UserControl::SetBufferLength { stream_id: 1, millis: 3000 }
        );
        for ev in [
            UserControl::StreamBegin(1),
            UserControl::StreamEof(2),
            UserControl::StreamDry(3),
            UserControl::StreamIsRecorded(4),
            UserControl::PingRequest(77),
            UserControl::PingResponse(78),
        ] {
            let mut out = Vec::new();
            ev.encode(&mut out);
            assert_eq!(UserControl::parse(&out).unwrap(), ev);
        }
        assert!(UserControl::parse(&[0, 0, 1]).is_err());
        assert_eq!(UserControl::parse(&[0, 31, 0, 0, 0, 1]).unwrap(), UserControl::Other { event_type: 31 });
    }
}
