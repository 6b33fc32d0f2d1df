//! The chunk stream codec: messages cut into chunks with compressed headers, both directions.
// CONTRACT (implemented by the chunk work): keep these public signatures.

use bytes::{Bytes, BytesMut};

use crate::Result;

/// Chunk size both sides start with.
pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// Largest chunk size the spec allows (31 bits).
pub const MAX_CHUNK_SIZE: u32 = 0x7FFF_FFFF;
/// Protocol control messages travel on chunk stream 2.
pub const CONTROL_CHUNK_STREAM: u32 = 2;

/// Bounds on what a peer can make the decoder hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    pub chunk_stream_id: u32,
    pub timestamp: u32,
    pub type_id: u8,
    pub stream_id: u32,
    pub payload: Bytes,
}

/// Reassembles messages from chunks. Applies Set Chunk Size (type 1) and Abort (type 2) itself,
/// since they change how the very next chunk parses, and still returns them.
pub struct ChunkDecoder {
    _private: (),
}

impl ChunkDecoder {
    pub fn new(limits: ChunkLimits) -> Self {
        let _ = limits;
        todo!()
    }

    /// Consumes whole chunks from the front of `buf` until a message completes (returned) or
    /// more bytes are needed (`Ok(None)`; a partial chunk stays in `buf`). Call again until `None`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<RawMessage>> {
        let _ = buf;
        todo!()
    }

    /// The peer's current chunk size.
    pub fn chunk_size(&self) -> u32 {
        todo!()
    }
}

/// Cuts messages into chunks, compressing headers against the previous message on the same
/// chunk stream.
pub struct ChunkEncoder {
    _private: (),
}

impl Default for ChunkEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkEncoder {
    pub fn new() -> Self {
        todo!()
    }

    /// Our chunk size from now on. Send the Set Chunk Size message (with the old size) first.
    pub fn set_chunk_size(&mut self, size: u32) {
        let _ = size;
        todo!()
    }

    pub fn chunk_size(&self) -> u32 {
        todo!()
    }

    /// Appends the chunks of one message to `out`.
    pub fn encode(
        &mut self,
        chunk_stream_id: u32,
        timestamp: u32,
        type_id: u8,
        stream_id: u32,
        payload: &[u8],
        out: &mut BytesMut,
    ) {
        let _ = (chunk_stream_id, timestamp, type_id, stream_id, payload, out);
        todo!()
    }
}
