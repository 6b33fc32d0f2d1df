//! Chunk header layouts: the basic header (format + chunk stream id) and message headers 0–3.
//!
//! Writing lives here as free functions so a fan-out writer can emit a message's first chunk
//! header on its own and send the (shared) payload separately.

use bytes::{BufMut, BytesMut};

/// Largest chunk stream id the 3-byte basic header can carry (64 + 65535).
pub const MAX_CHUNK_STREAM_ID: u32 = 65_599;
/// Smallest chunk stream id a sender may use (0 and 1 are the escapes of the basic header).
pub const MIN_CHUNK_STREAM_ID: u32 = 2;
/// Timestamp field value that announces a 4-byte extended timestamp.
pub const EXTENDED_TIMESTAMP: u32 = 0xFF_FFFF;
/// Largest message length the 3-byte length field can carry.
pub const MAX_MESSAGE_LENGTH: u32 = 0xFF_FFFF;
/// Longest chunk header: 3-byte basic header, 11-byte type-0 header, 4-byte extended timestamp.
pub const MAX_CHUNK_HEADER_LEN: usize = 3 + 11 + 4;

/// The message header format in the top two bits of a chunk's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderFormat {
    /// 11 bytes: absolute timestamp, length, type id, message stream id.
    Type0 = 0,
    /// 7 bytes: timestamp delta, length, type id (same stream id).
    Type1 = 1,
    /// 3 bytes: timestamp delta (same length, type id and stream id).
    Type2 = 2,
    /// No message header: continuation, or a new message repeating the previous header and delta.
    Type3 = 3,
}

impl HeaderFormat {
    fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => HeaderFormat::Type0,
            1 => HeaderFormat::Type1,
            2 => HeaderFormat::Type2,
            _ => HeaderFormat::Type3,
        }
    }

    /// Bytes of the message header after the basic header (without the extended timestamp).
    pub fn message_header_len(self) -> usize {
        match self {
            HeaderFormat::Type0 => 11,
            HeaderFormat::Type1 => 7,
            HeaderFormat::Type2 => 3,
            HeaderFormat::Type3 => 0,
        }
    }
}

/// The fields a chunk header can carry. `timestamp` is the value as sent: absolute for type 0,
/// the delta for types 1–3; values of [`EXTENDED_TIMESTAMP`] and up go in the extended field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    /// The timestamp field as sent (see above).
    pub timestamp: u32,
    /// Message length in bytes.
    pub length: u32,
    /// Message type (see [`crate::message::type_id`]).
    pub type_id: u8,
    /// Message stream id (0: the connection).
    pub stream_id: u32,
}

/// Length of the basic header for a chunk stream id (smallest form).
pub fn basic_header_len(chunk_stream_id: u32) -> usize {
    match chunk_stream_id {
        0..=63 => 1,
        64..=319 => 2,
        _ => 3,
    }
}

/// Length of a whole chunk header as [`write_chunk_header`] writes it.
pub fn chunk_header_len(format: HeaderFormat, chunk_stream_id: u32, timestamp: u32) -> usize {
    let extended = if timestamp >= EXTENDED_TIMESTAMP { 4 } else { 0 };
    basic_header_len(chunk_stream_id) + format.message_header_len() + extended
}

/// A basic header in its smallest form, as bytes (`.0[..len]`).
///
/// # Panics
/// If `chunk_stream_id` is outside `2..=65599`.
pub fn basic_header_bytes(format: HeaderFormat, chunk_stream_id: u32) -> ([u8; 3], usize) {
    assert!(
        (MIN_CHUNK_STREAM_ID..=MAX_CHUNK_STREAM_ID).contains(&chunk_stream_id),
        "chunk stream id {chunk_stream_id} outside 2..=65599"
    );
    let fmt = (format as u8) << 6;
    match chunk_stream_id {
        0..=63 => ([fmt | chunk_stream_id as u8, 0, 0], 1),
        64..=319 => ([fmt, (chunk_stream_id - 64) as u8, 0], 2),
        _ => {
            let [low, high] = ((chunk_stream_id - 64) as u16).to_le_bytes();
            ([fmt | 1, low, high], 3)
        }
    }
}

/// Writes a basic header in its smallest form.
///
/// # Panics
/// If `chunk_stream_id` is outside `2..=65599`.
pub fn write_basic_header(out: &mut BytesMut, format: HeaderFormat, chunk_stream_id: u32) {
    let (bytes, len) = basic_header_bytes(format, chunk_stream_id);
    out.put_slice(&bytes[..len]);
}

/// Writes one chunk header: basic header, the message header fields `format` carries, and the
/// extended timestamp when `header.timestamp` needs it (also for type 3, which is how librtmp
/// and FMS repeat it on continuation chunks).
///
/// # Panics
/// If the chunk stream id is outside `2..=65599` or the length does not fit 24 bits.
pub fn write_chunk_header(
    out: &mut BytesMut,
    format: HeaderFormat,
    chunk_stream_id: u32,
    header: &MessageHeader,
) {
    write_basic_header(out, format, chunk_stream_id);
    let extended = header.timestamp >= EXTENDED_TIMESTAMP;
    if format != HeaderFormat::Type3 {
        put_u24(out, header.timestamp.min(EXTENDED_TIMESTAMP));
    }
    if matches!(format, HeaderFormat::Type0 | HeaderFormat::Type1) {
        assert!(header.length <= MAX_MESSAGE_LENGTH, "message length {} over 24 bits", header.length);
        put_u24(out, header.length);
        out.put_u8(header.type_id);
    }
    if format == HeaderFormat::Type0 {
        out.put_u32_le(header.stream_id);
    }
    if extended {
        out.put_u32(header.timestamp);
    }
}

fn put_u24(out: &mut BytesMut, value: u32) {
    out.put_slice(&value.to_be_bytes()[1..]);
}

pub(crate) fn read_u24(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]])
}

/// Parses a basic header: `(format, chunk stream id, bytes used)`, or `None` when `data` is too
/// short. Every byte pattern is a valid basic header.
pub(crate) fn parse_basic_header(data: &[u8]) -> Option<(HeaderFormat, u32, usize)> {
    let first = *data.first()?;
    let format = HeaderFormat::from_bits(first >> 6);
    match first & 0x3F {
        0 => Some((format, 64 + u32::from(*data.get(1)?), 2)),
        1 => {
            let low = *data.get(1)?;
            let high = *data.get(2)?;
            Some((format, 64 + u32::from(u16::from_le_bytes([low, high])), 3))
        }
        id => Some((format, u32::from(id), 1)),
    }
}
