//! Chunks → messages.
//!
//! Timestamp rules (spec 5.3.1.2, matching what ffmpeg's and librtmp's readers compute):
//! - type 0 carries the absolute timestamp, and that value also becomes the chunk stream's
//!   "delta": a type-3 chunk that starts a new message right after a type-0 message adds the
//!   type-0 timestamp again (spec 5.3.1.2.4). Encoders (ffmpeg, ours) only send such a type 3
//!   when that is the intended result.
//! - types 1 and 2 carry a delta added to the previous message's timestamp (wrapping).
//! - a type-3 chunk starting a new message reuses length, type, stream id and adds the last delta.
//!
//! Extended timestamps on type-3 chunks: the spec, librtmp, FMS and current ffmpeg repeat the
//! 4-byte extended timestamp after every type-3 basic header once the stream's last type 0/1/2
//! header had one; some writers leave it out. So when 4 bytes follow that equal the expected
//! value (the last extended value sent) they are consumed, otherwise they are payload. Both for
//! continuation chunks and for type-3 chunks starting a new message. Residual risks, both rare:
//! payload that starts with exactly those 4 bytes after a writer that omits them, and ffmpeg's
//! type-3 new message whose (over 4.6-hour) delta differs from the previous extended value.

use bytes::{Buf, Bytes, BytesMut};

use super::header::{parse_basic_header, read_u24, HeaderFormat, EXTENDED_TIMESTAMP};
use super::{ChunkLimits, RawMessage, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE};
use crate::{Error, Result};

const SET_CHUNK_SIZE: u8 = 1;
const ABORT: u8 = 2;
/// A partial message buffer starts at this many chunks (capped by the message length), then
/// grows with the bytes received, so an advertised length costs nothing until it arrives.
const INITIAL_CHUNKS_RESERVED: usize = 4;
/// A message that arrives in one chunk shares the input buffer only if the buffer's allocation
/// is at most this many times its size; smaller ones are copied out, so a tiny frame kept in a
/// cache cannot pin a huge input buffer.
pub const MAX_PIN_FACTOR: usize = 4;

/// Where the decoder reads chunks from: the session's input buffer, whose bytes a one-chunk
/// message may share, or bytes borrowed for one call (a read buffer), which it copies.
pub trait ChunkInput {
    /// The bytes not yet consumed.
    fn unread(&self) -> &[u8];
    /// Consumes `n` bytes (at most `unread().len()`).
    fn consume(&mut self, n: usize);
    /// Consumes `n` bytes and returns them without a copy, if this input can lend them.
    fn lend(&mut self, n: usize) -> Option<Bytes>;
}

impl ChunkInput for BytesMut {
    fn unread(&self) -> &[u8] {
        self
    }

    fn consume(&mut self, n: usize) {
        self.advance(n);
    }

    fn lend(&mut self, n: usize) -> Option<Bytes> {
        Some(self.split_to(n).freeze())
    }
}

impl ChunkInput for &[u8] {
    fn unread(&self) -> &[u8] {
        self
    }

    fn consume(&mut self, n: usize) {
        *self = &self[n..];
    }

    fn lend(&mut self, _n: usize) -> Option<Bytes> {
        None
    }
}

/// What one chunk stream remembers between chunks.
#[derive(Debug)]
struct StreamState {
    chunk_stream_id: u32,
    /// Absolute timestamp of the latest message started on this chunk stream.
    timestamp: u32,
    /// The timestamp value of the latest type 0/1/2 header, extended value included.
    delta: u32,
    /// Whether that header used the extended timestamp field.
    extended: bool,
    length: u32,
    type_id: u8,
    stream_id: u32,
    /// Payload received so far of a message that spans chunks.
    partial: BytesMut,
    in_progress: bool,
    /// Which partial message this is (see [`ChunkDecoder::oldest_partial`]).
    partial_number: u64,
}

/// A chunk whose header parsed and whose payload is all in the buffer.
#[derive(Debug)]
struct ChunkPlan {
    format: HeaderFormat,
    chunk_stream_id: u32,
    slot: Option<usize>,
    /// Bytes of basic header, message header and extended timestamp.
    header_len: usize,
    /// Timestamp value carried by a type 0/1/2 header (extended value included).
    timestamp: u32,
    extended: bool,
    length: u32,
    type_id: u8,
    stream_id: u32,
    new_message: bool,
    payload_len: usize,
}

/// Reassembles messages from chunks. Applies Set Chunk Size (type 1) and Abort (type 2) itself,
/// since they change how the very next chunk parses, and still returns them.
///
/// A type 0/1/2 header on a chunk stream with a message in progress continues that message when
/// it repeats its length, type id and stream id (some encoders repeat full headers), and
/// otherwise drops the partial message and starts the new one.
#[derive(Debug)]
pub struct ChunkDecoder {
    limits: ChunkLimits,
    chunk_size: u32,
    /// Few in practice (2–8); searched linearly, bounded by `limits.max_chunk_streams`.
    streams: Vec<StreamState>,
    /// Payload bytes held in partial messages across all chunk streams.
    buffered: usize,
    /// Size of the allocation the caller's input buffer lives in (0: unknown, always share).
    input_allocation: usize,
    /// Numbers partial messages as they start, to tell an old one from a new one.
    partials_started: u64,
}

impl ChunkDecoder {
    /// A decoder at the default chunk size of 128.
    pub fn new(limits: ChunkLimits) -> Self {
        let limits = ChunkLimits { max_chunk_size: limits.max_chunk_size.min(MAX_CHUNK_SIZE), ..limits };
        ChunkDecoder {
            limits,
            chunk_size: DEFAULT_CHUNK_SIZE,
            streams: Vec::new(),
            buffered: 0,
            input_allocation: 0,
            partials_started: 0,
        }
    }

    /// Consumes whole chunks from the front of `buf` until a message completes (returned) or
    /// more bytes are needed (`Ok(None)`; a partial chunk stays in `buf`). Call again until `None`.
    ///
    /// A message that arrives in one chunk shares `buf`'s memory when `buf` can lend it (a
    /// `BytesMut`); a longer one is assembled once. A borrowed `&[u8]` is consumed by moving its
    /// start: what is left when this returns `Ok(None)` is an incomplete chunk the caller keeps.
    /// After an error the connection is beyond repair: drop the decoder.
    pub fn decode(&mut self, buf: &mut impl ChunkInput) -> Result<Option<RawMessage>> {
        loop {
            let Some(plan) = self.plan_chunk(buf.unread())? else {
                return Ok(None);
            };
            if let Some(message) = self.consume_chunk(buf, plan)? {
                self.apply_control(&message)?;
                return Ok(Some(message));
            }
        }
    }

    /// The peer's current chunk size.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Payload bytes held in partly received messages.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Tells the decoder how large an allocation the input buffer given to
    /// [`decode`](Self::decode) lives in: one-chunk messages under 1/[`MAX_PIN_FACTOR`] of it
    /// are then copied instead of sharing it.
    pub fn set_input_allocation(&mut self, bytes: usize) {
        self.input_allocation = bytes;
    }

    /// The oldest partly received message, by the order partial messages started (numbers only
    /// grow). A caller that sees the same number for too long knows a message is stuck, however
    /// many bytes trickle in meanwhile.
    pub fn oldest_partial(&self) -> Option<u64> {
        self.streams.iter().filter(|s| s.in_progress).map(|s| s.partial_number).min()
    }

    /// Chunk streams with state.
    pub fn chunk_stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Memory held by partly received messages (their buffers' capacity).
    pub fn partial_capacity(&self) -> usize {
        self.streams.iter().map(|s| s.partial.capacity()).sum()
    }

    fn find(&self, chunk_stream_id: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.chunk_stream_id == chunk_stream_id)
    }

    /// Parses the chunk at the front of `data` without changing anything. `None`: incomplete.
    fn plan_chunk(&self, data: &[u8]) -> Result<Option<ChunkPlan>> {
        let Some((format, chunk_stream_id, mut pos)) = parse_basic_header(data) else {
            return Ok(None);
        };
        let slot = self.find(chunk_stream_id);
        let state = slot.map(|i| &self.streams[i]);
        let state = match (state, format) {
            (Some(state), _) => Some(state),
            (None, HeaderFormat::Type0) => {
                if self.streams.len() >= self.limits.max_chunk_streams {
                    return Err(Error::limit(
                        "chunk streams",
                        self.streams.len() + 1,
                        self.limits.max_chunk_streams,
                    ));
                }
                None
            }
            (None, _) => {
                return Err(Error::Chunk("compressed chunk header on a chunk stream with no previous header"))
            }
        };

        let header_len = format.message_header_len();
        let Some(fields) = data.get(pos..pos + header_len) else {
            return Ok(None);
        };
        pos += header_len;
        let (timestamp_field, length, type_id, stream_id) = match (format, state) {
            (HeaderFormat::Type0, _) => (
                read_u24(&fields[0..3]),
                read_u24(&fields[3..6]),
                fields[6],
                u32::from_le_bytes([fields[7], fields[8], fields[9], fields[10]]),
            ),
            (HeaderFormat::Type1, Some(s)) => {
                (read_u24(&fields[0..3]), read_u24(&fields[3..6]), fields[6], s.stream_id)
            }
            (HeaderFormat::Type2, Some(s)) => (read_u24(&fields[0..3]), s.length, s.type_id, s.stream_id),
            (HeaderFormat::Type3, Some(s)) => (s.delta, s.length, s.type_id, s.stream_id),
            (_, None) => return Err(Error::Chunk("compressed chunk header without state")),
        };

        let mut timestamp = timestamp_field;
        let mut extended = false;
        if format != HeaderFormat::Type3 {
            if timestamp_field == EXTENDED_TIMESTAMP {
                let Some(ext) = data.get(pos..pos + 4) else {
                    return Ok(None);
                };
                timestamp = u32::from_be_bytes([ext[0], ext[1], ext[2], ext[3]]);
                extended = true;
                pos += 4;
            }
        } else if let Some(s) = state.filter(|s| s.extended) {
            // Repeated extended timestamp or payload: decide on the bytes that are there.
            let expected = s.delta.to_be_bytes();
            let present = &data[pos..data.len().min(pos + 4)];
            if present == &expected[..present.len()] {
                if present.len() < 4 {
                    return Ok(None);
                }
                pos += 4;
            }
        }

        if matches!(format, HeaderFormat::Type0 | HeaderFormat::Type1)
            && length > self.limits.max_message_size
        {
            return Err(Error::limit("message length", length, self.limits.max_message_size));
        }

        let new_message = match state {
            Some(s) if s.in_progress => {
                format != HeaderFormat::Type3
                    && (length != s.length || type_id != s.type_id || stream_id != s.stream_id)
            }
            _ => true,
        };
        let received = match state {
            Some(s) if !new_message => s.partial.len(),
            _ => 0,
        };
        let payload_len = (length as usize - received).min(self.chunk_size as usize);
        if data.len() - pos < payload_len {
            return Ok(None);
        }
        Ok(Some(ChunkPlan {
            format,
            chunk_stream_id,
            slot,
            header_len: pos,
            timestamp,
            extended,
            length,
            type_id,
            stream_id,
            new_message,
            payload_len,
        }))
    }

    /// Takes a planned chunk off `buf`; returns the message it completes, if any.
    fn consume_chunk(&mut self, buf: &mut impl ChunkInput, plan: ChunkPlan) -> Result<Option<RawMessage>> {
        let slot = match plan.slot {
            Some(slot) => slot,
            None => {
                self.streams.push(StreamState {
                    chunk_stream_id: plan.chunk_stream_id,
                    timestamp: 0,
                    delta: 0,
                    extended: false,
                    length: 0,
                    type_id: 0,
                    stream_id: 0,
                    partial: BytesMut::new(),
                    in_progress: false,
                    partial_number: 0,
                });
                self.streams.len() - 1
            }
        };
        buf.consume(plan.header_len);
        let state = &mut self.streams[slot];

        if plan.new_message {
            if state.in_progress {
                self.buffered -= state.partial.len();
                state.partial = BytesMut::new();
                state.in_progress = false;
            }
            match plan.format {
                HeaderFormat::Type0 => state.timestamp = plan.timestamp,
                HeaderFormat::Type1 | HeaderFormat::Type2 => {
                    state.timestamp = state.timestamp.wrapping_add(plan.timestamp)
                }
                HeaderFormat::Type3 => state.timestamp = state.timestamp.wrapping_add(state.delta),
            }
            if plan.format != HeaderFormat::Type3 {
                state.delta = plan.timestamp;
                state.extended = plan.extended;
            }
            state.length = plan.length;
            state.type_id = plan.type_id;
            state.stream_id = plan.stream_id;

            if plan.payload_len == plan.length as usize {
                // The whole message is in this chunk: hand out the input's own bytes, unless
                // they would keep a much larger buffer alive or the input only lends them.
                let small = plan.payload_len.saturating_mul(MAX_PIN_FACTOR) < self.input_allocation;
                let shared = if small { None } else { buf.lend(plan.payload_len) };
                let payload = shared.unwrap_or_else(|| {
                    let payload = Bytes::copy_from_slice(&buf.unread()[..plan.payload_len]);
                    buf.consume(plan.payload_len);
                    payload
                });
                return Ok(Some(message_of(state, payload)));
            }
            let initial = plan.payload_len.saturating_mul(INITIAL_CHUNKS_RESERVED).min(plan.length as usize);
            state.partial = BytesMut::with_capacity(initial);
            state.in_progress = true;
            self.partials_started += 1;
            state.partial_number = self.partials_started;
        }

        let buffered = self.buffered + plan.payload_len;
        if buffered > self.limits.max_buffered_bytes {
            return Err(Error::limit("buffered message bytes", buffered, self.limits.max_buffered_bytes));
        }
        self.buffered = buffered;
        state.partial.extend_from_slice(&buf.unread()[..plan.payload_len]);
        buf.consume(plan.payload_len);

        if state.partial.len() < state.length as usize {
            return Ok(None);
        }
        self.buffered -= state.partial.len();
        state.in_progress = false;
        let payload = std::mem::take(&mut state.partial).freeze();
        Ok(Some(message_of(state, payload)))
    }

    fn apply_control(&mut self, message: &RawMessage) -> Result<()> {
        match message.type_id {
            SET_CHUNK_SIZE => {
                let size = control_value(message, "Set Chunk Size payload shorter than 4 bytes")?;
                if size & 0x8000_0000 != 0 {
                    return Err(Error::Chunk("Set Chunk Size with the top bit set"));
                }
                if size == 0 {
                    return Err(Error::Chunk("Set Chunk Size of 0"));
                }
                if size > self.limits.max_chunk_size {
                    return Err(Error::limit("chunk size", size, self.limits.max_chunk_size));
                }
                self.chunk_size = size;
            }
            ABORT => {
                let aborted = control_value(message, "Abort payload shorter than 4 bytes")?;
                if let Some(slot) = self.find(aborted) {
                    let state = &mut self.streams[slot];
                    if state.in_progress {
                        self.buffered -= state.partial.len();
                        state.partial = BytesMut::new();
                        state.in_progress = false;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn message_of(state: &StreamState, payload: Bytes) -> RawMessage {
    RawMessage {
        chunk_stream_id: state.chunk_stream_id,
        timestamp: state.timestamp,
        type_id: state.type_id,
        stream_id: state.stream_id,
        payload,
    }
}

fn control_value(message: &RawMessage, short: &'static str) -> Result<u32> {
    match message.payload.get(..4) {
        Some(b) => Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        None => Err(Error::Chunk(short)),
    }
}
