//! Message → chunks, with header compression against the previous message per chunk stream.

use bytes::{BufMut, BytesMut};

use super::header::{
    basic_header_bytes, basic_header_len, write_chunk_header, HeaderFormat, MessageHeader,
    EXTENDED_TIMESTAMP, MAX_CHUNK_HEADER_LEN, MAX_MESSAGE_LENGTH,
};
use super::{DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE};

/// What the previous message on one chunk stream looked like to the peer.
#[derive(Debug, Clone, Copy)]
struct SentHeader {
    chunk_stream_id: u32,
    timestamp: u32,
    /// The timestamp value last sent in a header (absolute after type 0, as the peer sees it).
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
}

/// Cuts messages into chunks, compressing headers against the previous message on the same
/// chunk stream.
///
/// Header choice: type 0 on a chunk stream's first message, when the stream id changes or the
/// timestamp goes backwards; type 1 when length or type id change; type 2 when only the delta
/// changes; type 3 when everything, delta included, repeats. Continuation chunks are type 3 and
/// repeat the extended timestamp when there is one (librtmp and FMS expect it; ffmpeg too).
#[derive(Debug)]
pub struct ChunkEncoder {
    chunk_size: u32,
    streams: Vec<SentHeader>,
}

/// The bytes that start every continuation chunk of one message: a type-3 basic header and,
/// when the message uses one, the repeated extended timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContinuationHeader {
    bytes: [u8; 7],
    len: u8,
}

impl ContinuationHeader {
    fn new(chunk_stream_id: u32, timestamp_field: u32) -> Self {
        let (basic, basic_len) = basic_header_bytes(HeaderFormat::Type3, chunk_stream_id);
        let mut bytes = [0u8; 7];
        bytes[..basic_len].copy_from_slice(&basic[..basic_len]);
        let mut len = basic_len;
        if timestamp_field >= EXTENDED_TIMESTAMP {
            bytes[len..len + 4].copy_from_slice(&timestamp_field.to_be_bytes());
            len += 4;
        }
        ContinuationHeader { bytes, len: len as u8 }
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl Default for ChunkEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkEncoder {
    /// An encoder at the default chunk size of 128.
    pub fn new() -> Self {
        ChunkEncoder { chunk_size: DEFAULT_CHUNK_SIZE, streams: Vec::new() }
    }

    /// Our chunk size from now on. Send the Set Chunk Size message (with the old size) first.
    ///
    /// # Panics
    /// If `size` is outside `1..=MAX_CHUNK_SIZE`.
    pub fn set_chunk_size(&mut self, size: u32) {
        assert!((1..=MAX_CHUNK_SIZE).contains(&size), "chunk size {size} outside 1..=2^31-1");
        self.chunk_size = size;
    }

    /// The chunk size we write with.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Appends the chunks of one message to `out`.
    ///
    /// # Panics
    /// If `payload` is longer than 16 MiB - 1 or `chunk_stream_id` is outside `2..=65599`.
    pub fn encode(
        &mut self,
        chunk_stream_id: u32,
        timestamp: u32,
        type_id: u8,
        stream_id: u32,
        payload: &[u8],
        out: &mut BytesMut,
    ) {
        assert!(payload.len() <= MAX_MESSAGE_LENGTH as usize, "message of {} bytes", payload.len());
        let chunk_size = self.chunk_size as usize;
        let continuations = payload.len().saturating_sub(1) / chunk_size;
        out.reserve(
            MAX_CHUNK_HEADER_LEN + payload.len() + continuations * (basic_header_len(chunk_stream_id) + 4),
        );

        let continuation =
            self.begin_message(chunk_stream_id, timestamp, type_id, stream_id, payload.len() as u32, out);
        let mut chunks = payload.chunks(chunk_size);
        if let Some(first) = chunks.next() {
            out.put_slice(first);
        }
        for chunk in chunks {
            out.put_slice(continuation.as_bytes());
            out.put_slice(chunk);
        }
    }

    /// Writes only the first chunk header of a message of `length` bytes and records it for
    /// header compression; returns the header that precedes each later chunk. The caller then
    /// writes the payload cut at [`chunk_size`](Self::chunk_size) bytes, the continuation header
    /// between chunks (what [`encode`](Self::encode) does, usable with shared payload buffers).
    ///
    /// # Panics
    /// If `length` does not fit 24 bits or `chunk_stream_id` is outside `2..=65599`.
    pub fn begin_message(
        &mut self,
        chunk_stream_id: u32,
        timestamp: u32,
        type_id: u8,
        stream_id: u32,
        length: u32,
        out: &mut BytesMut,
    ) -> ContinuationHeader {
        let slot = self.streams.iter().position(|s| s.chunk_stream_id == chunk_stream_id);
        let (format, delta) = match slot.map(|i| self.streams[i]) {
            Some(prev) if prev.stream_id == stream_id && timestamp >= prev.timestamp => {
                let delta = timestamp - prev.timestamp;
                let format = if prev.length != length || prev.type_id != type_id {
                    HeaderFormat::Type1
                } else if prev.delta != delta {
                    HeaderFormat::Type2
                } else {
                    HeaderFormat::Type3
                };
                (format, delta)
            }
            _ => (HeaderFormat::Type0, timestamp),
        };
        let header = MessageHeader { timestamp: delta, length, type_id, stream_id };
        write_chunk_header(out, format, chunk_stream_id, &header);

        let sent = SentHeader { chunk_stream_id, timestamp, delta, length, type_id, stream_id };
        match slot {
            Some(i) => self.streams[i] = sent,
            None => self.streams.push(sent),
        }
        ContinuationHeader::new(chunk_stream_id, delta)
    }
}
