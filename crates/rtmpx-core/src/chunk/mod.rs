//! The chunk stream codec: messages cut into chunks with compressed headers, both directions.
//!
//! - [`ChunkDecoder`]: bytes → [`RawMessage`]s, bounded by [`ChunkLimits`].
//! - [`ChunkEncoder`]: messages → bytes, with header compression per chunk stream.
//! - [`header`]: the header layouts, for writers that send shared payloads themselves.

mod decoder;
mod encoder;
pub mod header;
#[cfg(test)]
mod tests;

use bytes::Bytes;

pub use decoder::{ChunkDecoder, ChunkInput, MAX_PIN_FACTOR};
pub use encoder::{ChunkEncoder, ContinuationHeader};
pub use header::{HeaderFormat, MessageHeader};

/// Chunk size both sides start with.
pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// Largest chunk size the spec allows (31 bits).
pub const MAX_CHUNK_SIZE: u32 = 0x7FFF_FFFF;
/// Protocol control messages travel on chunk stream 2.
pub const CONTROL_CHUNK_STREAM: u32 = 2;

/// Bounds on what a peer can make the decoder hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChunkLimits {
    /// Largest Set Chunk Size accepted from the peer (at most [`MAX_CHUNK_SIZE`]).
    pub max_chunk_size: u32,
    /// Largest message length accepted (the header field allows up to 16 MiB - 1).
    pub max_message_size: u32,
    /// Most chunk stream ids with state at once.
    pub max_chunk_streams: usize,
    /// Most bytes held in partly received messages across all chunk streams.
    pub max_buffered_bytes: usize,
}

impl Default for ChunkLimits {
    fn default() -> Self {
        ChunkLimits {
            max_chunk_size: 1 << 24,
            max_message_size: 8 << 20,
            max_chunk_streams: 64,
            max_buffered_bytes: 16 << 20,
        }
    }
}

/// A whole message as it came off the chunk stream: absolute timestamp, payload shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// The chunk stream it arrived on.
    pub chunk_stream_id: u32,
    /// Absolute timestamp in milliseconds.
    pub timestamp: u32,
    /// Message type (see [`crate::message::type_id`]).
    pub type_id: u8,
    /// Message stream id (0: the connection).
    pub stream_id: u32,
    /// The whole message body.
    pub payload: Bytes,
}

/// Feeds arbitrary bytes to a decoder with default limits, in up to three fragments cut where
/// the first bytes say, checking invariants on the way: for fuzz targets. Never panics on its
/// own unless the decoder misbehaves.
#[cfg(any(test, fuzzing, feature = "fuzzing"))]
pub(crate) fn fuzz_decode(data: &[u8]) {
    let mut decoder = ChunkDecoder::new(ChunkLimits::default());
    let limits = ChunkLimits::default();
    let (first_cut, second_cut) = match data {
        [a, b, ..] => {
            let first = usize::from(*a) * data.len() / 256;
            (first, first + (data.len() - first) * usize::from(*b) / 256)
        }
        _ => (0, 0),
    };
    let mut buf = bytes::BytesMut::new();
    for fragment in [&data[..first_cut], &data[first_cut..second_cut], &data[second_cut..]] {
        buf.extend_from_slice(fragment);
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(message)) => {
                    assert!(message.payload.len() <= limits.max_message_size as usize);
                    assert!(buf.len() < before, "a message without consuming input");
                }
                Ok(None) => break,
                Err(_) => return,
            }
            assert!(decoder.buffered_bytes() <= limits.max_buffered_bytes);
            assert!(decoder.chunk_stream_count() <= limits.max_chunk_streams);
        }
    }
}
