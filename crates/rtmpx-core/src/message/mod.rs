//! RTMP messages on top of the chunk stream: type ids, protocol control, user control events,
//! commands and data messages, and aggregate splitting.

mod command;
mod user_control;

pub use command::Command;
pub use user_control::UserControl;

use bytes::{Buf, Bytes};

use crate::chunk::MAX_PIN_FACTOR;
use crate::{Error, Result};

/// Message type ids (RTMP spec section 5.4 and 7.1).
pub mod type_id {
    /// Protocol control: the sender's new chunk size.
    pub const SET_CHUNK_SIZE: u8 = 1;
    /// Protocol control: drop a partly sent message.
    pub const ABORT: u8 = 2;
    /// Protocol control: bytes received so far.
    pub const ACKNOWLEDGEMENT: u8 = 3;
    /// User control events (StreamBegin, ping...).
    pub const USER_CONTROL: u8 = 4;
    /// Protocol control: how often the peer should acknowledge.
    pub const WINDOW_ACK_SIZE: u8 = 5;
    /// Protocol control: the peer's output bandwidth limit.
    pub const SET_PEER_BANDWIDTH: u8 = 6;
    /// Audio data.
    pub const AUDIO: u8 = 8;
    /// Video data.
    pub const VIDEO: u8 = 9;
    /// Data message in AMF3 (a leading 0 byte, then AMF0 in practice).
    pub const DATA_AMF3: u8 = 15;
    /// Shared object in AMF3 (not supported).
    pub const SHARED_OBJECT_AMF3: u8 = 16;
    /// Command in AMF3 (a leading 0 byte, then AMF0 in practice).
    pub const COMMAND_AMF3: u8 = 17;
    /// Data message (`onMetaData`, `@setDataFrame`) in AMF0.
    pub const DATA_AMF0: u8 = 18;
    /// Shared object in AMF0 (not supported).
    pub const SHARED_OBJECT_AMF0: u8 = 19;
    /// Command in AMF0.
    pub const COMMAND_AMF0: u8 = 20;
    /// Several audio/video/data messages in one.
    pub const AGGREGATE: u8 = 22;
}

/// Set Peer Bandwidth limit types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BandwidthLimit {
    /// Limit output to the window.
    Hard,
    /// Limit to the window or the current limit, whichever is smaller.
    Soft,
    /// Hard if the last limit was hard, else ignored.
    Dynamic,
}

impl BandwidthLimit {
    /// The limit type byte.
    pub fn to_byte(self) -> u8 {
        match self {
            BandwidthLimit::Hard => 0,
            BandwidthLimit::Soft => 1,
            BandwidthLimit::Dynamic => 2,
        }
    }
}

/// Reads the 4-byte big-endian value that protocol control messages carry.
pub fn read_u32_payload(payload: &[u8], what: &'static str) -> Result<u32> {
    let bytes: [u8; 4] = payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::Protocol(format!("{what} message shorter than 4 bytes")))?;
    Ok(u32::from_be_bytes(bytes))
}

/// A data message body with the `@setDataFrame` wrapper removed: publishers (ffmpeg, OBS) send
/// `@setDataFrame, "onMetaData", {...}` and players must get `"onMetaData", {...}`. The result
/// is a slice of the original payload, not a copy. Returns `None` when the body is not
/// `@setDataFrame`.
pub fn strip_set_data_frame(payload: &Bytes) -> Option<Bytes> {
    const PREFIX: &[u8] = b"\x02\x00\x0d@setDataFrame";
    payload.starts_with(PREFIX).then(|| payload.slice(PREFIX.len()..))
}

/// The name of a data message (first AMF0 string), e.g. `onMetaData`, without decoding the rest.
pub fn data_message_name(payload: &[u8]) -> Option<&str> {
    if payload.first() != Some(&0x02) || payload.len() < 3 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([payload[1], payload[2]]));
    std::str::from_utf8(payload.get(3..3 + len)?).ok()
}

/// One sub-message of an aggregate message (type 22), sliced out of the aggregate's payload
/// (copied when small next to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregatePart {
    /// Audio, video or data (see [`type_id`]).
    pub type_id: u8,
    /// Absolute timestamp in milliseconds.
    pub timestamp: u32,
    /// The sub-message's body.
    pub payload: Bytes,
}

/// Splits an aggregate message into its FLV-tag-shaped parts. Timestamps are made relative to
/// the aggregate's own timestamp, as the spec says: part time - first part time + aggregate time.
pub fn split_aggregate(aggregate_timestamp: u32, mut payload: Bytes) -> Result<Vec<AggregatePart>> {
    let mut parts = Vec::new();
    let mut first_ts = None;
    let total = payload.len();
    while !payload.is_empty() {
        if payload.len() < 11 {
            return Err(Error::Protocol("truncated aggregate sub-message header".into()));
        }
        let type_id = payload[0];
        let size = (usize::from(payload[1]) << 16) | (usize::from(payload[2]) << 8) | usize::from(payload[3]);
        let ts = u32::from_be_bytes([payload[7], payload[4], payload[5], payload[6]]);
        payload.advance(11);
        if payload.len() < size {
            return Err(Error::Protocol("aggregate sub-message longer than the aggregate".into()));
        }
        // A part much smaller than the aggregate is copied: a slice would keep all of it alive.
        let body = if size.saturating_mul(MAX_PIN_FACTOR) < total {
            let body = Bytes::copy_from_slice(&payload[..size]);
            payload.advance(size);
            body
        } else {
            payload.split_to(size)
        };
        // Back pointer (4 bytes), absent after the last part in some encoders.
        payload.advance(payload.len().min(4));
        let base = *first_ts.get_or_insert(ts);
        parts.push(AggregatePart {
            type_id,
            timestamp: aggregate_timestamp.wrapping_add(ts.wrapping_sub(base)),
            payload: body,
        });
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_data_frame_is_stripped_without_copy() {
        let mut body = b"\x02\x00\x0d@setDataFrame".to_vec();
        body.extend_from_slice(b"\x02\x00\x0aonMetaData\x08\x00\x00\x00\x00\x00\x00\x09");
        let payload = Bytes::from(body);
        let stripped = strip_set_data_frame(&payload).unwrap();
        assert_eq!(data_message_name(&stripped), Some("onMetaData"));
        assert_eq!(stripped.as_ptr(), payload[16..].as_ptr());
        assert!(strip_set_data_frame(&stripped).is_none());
    }

    #[test]
    fn aggregate_parts_are_rebased() {
        let mut agg = Vec::new();
        for (ts, body) in [(1000u32, &b"\x17\x01abc"[..]), (1040, &b"\x27\x01de"[..])] {
            agg.push(9);
            agg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
            agg.extend_from_slice(&ts.to_be_bytes()[1..]);
            agg.push((ts >> 24) as u8);
            agg.extend_from_slice(&[0, 0, 0]);
            agg.extend_from_slice(body);
            agg.extend_from_slice(&(body.len() as u32 + 11).to_be_bytes());
        }
        let parts = split_aggregate(500, Bytes::from(agg)).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!((parts[0].timestamp, parts[1].timestamp), (500, 540));
        assert_eq!(&parts[1].payload[..], b"\x27\x01de");
        assert!(split_aggregate(0, Bytes::from_static(&[9, 0, 0, 50, 0, 0, 0, 0, 0, 0, 0, 1])).is_err());
    }
}
