//! What both roles share once the handshake is done: the byte buffers, the RTMPE cipher, the
//! chunk codec and acknowledgement bookkeeping.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

use crate::amf::{encode_amf0, Amf0Value};
use crate::chunk::{ChunkDecoder, ChunkEncoder, ChunkLimits, RawMessage};
use crate::handshake::{HandshakeOutcome, Rc4Pair};
use crate::message::{type_id, BandwidthLimit, Command, UserControl};
use crate::Result;

use super::{csid, StatusLevel};

/// Shared payloads shorter than this are copied: a small copy costs less than an extra piece
/// (and an iovec) per player.
const SHARE_MIN_PAYLOAD: usize = 1024;
/// Headers are written into `output` blocks of at least this size, so splitting header pieces
/// off it allocates once per block rather than once per header.
const HEADER_BLOCK: usize = 4096;
/// The smallest input allocation; larger ones double with what is buffered.
const MIN_INPUT_ALLOCATION: usize = 4096;
/// Input beyond one whole chunk (at most a message) that doubling may reserve room for.
const INPUT_SLACK: usize = 64 * 1024;

pub(crate) struct Link {
    /// Received bytes not yet parsed (already decrypted).
    pub input: BytesMut,
    /// Finished pieces that go out before `output`, in order: chunk headers split off `output`
    /// and slices of shared media payloads (zero-copy fan-out, never with RTMPE).
    pieces: VecDeque<Bytes>,
    pieces_len: usize,
    /// Bytes to send; `output[..sealed]` is already encrypted (RTMPE) or ready.
    output: BytesMut,
    sealed: usize,
    pub cipher: Option<Rc4Pair>,
    pub decoder: ChunkDecoder,
    pub encoder: ChunkEncoder,
    /// Reused for message bodies we build (commands, control), so sending allocates nothing.
    scratch: BytesMut,
    pub bytes_received: u64,
    /// Whole messages taken off the input so far.
    pub messages_decoded: u64,
    /// The decoder's message size limit: what one chunk can make the input hold.
    max_message_size: usize,
    /// What the decoder was told about the input's allocation.
    decoder_input_allocation: usize,
    last_ack: u64,
    /// The peer's Window Acknowledgement Size: we acknowledge every this many bytes.
    pub ack_window: u32,
}

impl Link {
    pub(super) fn new(limits: ChunkLimits) -> Self {
        Link {
            // Buffers grow with use; an idle connection should cost little memory.
            input: BytesMut::new(),
            pieces: VecDeque::new(),
            pieces_len: 0,
            output: BytesMut::new(),
            sealed: 0,
            cipher: None,
            decoder: ChunkDecoder::new(limits),
            encoder: ChunkEncoder::new(),
            scratch: BytesMut::new(),
            bytes_received: 0,
            messages_decoded: 0,
            max_message_size: limits.max_message_size as usize,
            decoder_input_allocation: 0,
            last_ack: 0,
            ack_window: 2_500_000,
        }
    }

    /// Appends received bytes, decrypting them when the session is RTMPE.
    pub(super) fn receive(&mut self, data: &[u8]) {
        self.bytes_received += data.len() as u64;
        self.reserve_input(data.len());
        let start = self.input.len();
        self.input.extend_from_slice(data);
        if let Some(cipher) = &mut self.cipher {
            cipher.decrypt(&mut self.input[start..]);
        }
    }

    /// Whether a read may be decoded where it lies ([`next_message_from`](Self::next_message_from)):
    /// nothing waits in the input, and no cipher has to run over the bytes first.
    pub(super) fn can_decode_borrowed(&self) -> bool {
        self.input.is_empty() && self.cipher.is_none()
    }

    /// Counts `len` received bytes that are decoded where they lie.
    pub(super) fn count_received(&mut self, len: usize) {
        self.bytes_received += len as u64;
    }

    /// The next message from borrowed bytes; `data` moves past what it used. Each payload is
    /// copied once, into its message (the input buffer is skipped).
    pub(super) fn next_message_from(&mut self, data: &mut &[u8]) -> Result<Option<RawMessage>> {
        let message = self.decoder.decode(data)?;
        self.messages_decoded += u64::from(message.is_some());
        Ok(message)
    }

    /// Keeps what is left of a borrowed read (an incomplete chunk, or messages waiting behind a
    /// decision) in the input for the next call.
    pub(super) fn keep_unread(&mut self, rest: &[u8]) {
        if !rest.is_empty() {
            self.reserve_input(rest.len());
            self.input.extend_from_slice(rest);
        }
    }

    /// Makes room for `additional` input bytes and tells the decoder how large the input's
    /// allocation is: messages it hands out as slices of the input keep all of it alive.
    fn reserve_input(&mut self, additional: usize) {
        if self.input.capacity() - self.input.len() >= additional || self.input.try_reclaim(additional) {
            // Same allocation (reclaimed in place when nothing else held it).
            if self.input.capacity() > self.decoder_input_allocation {
                self.decoder_input_allocation = self.input.capacity();
                self.decoder.set_input_allocation(self.decoder_input_allocation);
            }
            return;
        }
        let needed = self.input.len() + additional;
        // Doubling, but never far past the largest chunk the decoder waits for (one message).
        let most = self.max_message_size.saturating_add(INPUT_SLACK);
        let capacity = needed.max((self.input.len() * 2).min(most)).max(MIN_INPUT_ALLOCATION);
        let mut fresh = BytesMut::with_capacity(capacity);
        fresh.extend_from_slice(&self.input);
        self.input = fresh;
        self.decoder_input_allocation = self.input.capacity();
        self.decoder.set_input_allocation(self.decoder_input_allocation);
    }

    /// Runs one handshake step (`step` reads the input and writes the output buffer). When the
    /// handshake completes, installs the RTMPE cipher (bytes already buffered after it are
    /// decrypted) and drops the handshake-sized input buffer: most sessions send little after it.
    pub(super) fn advance_handshake(
        &mut self,
        step: impl FnOnce(&mut BytesMut, &mut BytesMut) -> Result<Option<HandshakeOutcome>>,
    ) -> Result<Option<HandshakeOutcome>> {
        let Some(mut outcome) = step(&mut self.input, &mut self.output)? else { return Ok(None) };
        if self.input.is_empty() {
            self.input = BytesMut::new();
        }
        if let Some(cipher) = outcome.cipher.take() {
            self.start_cipher(cipher);
        }
        Ok(Some(outcome))
    }

    /// Installs the RTMPE cipher; bytes already buffered after the handshake are decrypted.
    fn start_cipher(&mut self, mut cipher: Rc4Pair) {
        cipher.decrypt(&mut self.input[..]);
        self.sealed = self.output.len(); // the handshake itself goes out in clear
        self.cipher = Some(cipher);
    }

    /// Memory the receive side holds: the input buffer and partly received messages.
    pub(super) fn held_input_bytes(&self) -> usize {
        self.input.capacity() + self.decoder.partial_capacity()
    }

    pub(super) fn next_message(&mut self) -> Result<Option<RawMessage>> {
        let message = self.decoder.decode(&mut self.input)?;
        self.messages_decoded += u64::from(message.is_some());
        Ok(message)
    }

    /// Sends an Acknowledgement when the peer's window has been passed.
    pub(super) fn acknowledge_if_due(&mut self) {
        if self.ack_window > 0 && self.bytes_received - self.last_ack >= u64::from(self.ack_window) {
            self.last_ack = self.bytes_received;
            let seq = (self.bytes_received & 0xFFFF_FFFF) as u32;
            self.send_control(type_id::ACKNOWLEDGEMENT, &seq.to_be_bytes());
        }
    }

    pub(super) fn raw_output(&mut self) -> &mut BytesMut {
        &mut self.output
    }

    pub(super) fn output_len(&self) -> usize {
        self.pieces_len + self.output.len()
    }

    pub(super) fn has_output(&self) -> bool {
        !self.pieces.is_empty() || !self.output.is_empty()
    }

    /// The next piece queued for the peer (encrypted if needed); call until `None`.
    pub(super) fn take_output(&mut self) -> Option<Bytes> {
        if let Some(piece) = self.pieces.pop_front() {
            self.pieces_len -= piece.len();
            return Some(piece);
        }
        if self.output.is_empty() {
            return None;
        }
        if let Some(cipher) = &mut self.cipher {
            cipher.encrypt(&mut self.output[self.sealed..]);
        }
        self.sealed = 0;
        Some(self.output.split().freeze())
    }

    /// Encrypts the unsealed output of two RTMPE links in one pass (the cipher's table loads of
    /// two streams overlap); [`take_output`](Self::take_output) then hands it out as is. Links
    /// without a cipher are left alone.
    pub(super) fn seal_pair(a: &mut Link, b: &mut Link) {
        let (Some(a_cipher), Some(b_cipher)) = (&mut a.cipher, &mut b.cipher) else { return };
        Rc4Pair::encrypt_pair(a_cipher, &mut a.output[a.sealed..], b_cipher, &mut b.output[b.sealed..]);
        a.sealed = a.output.len();
        b.sealed = b.output.len();
    }

    pub(super) fn is_encrypted(&self) -> bool {
        self.cipher.is_some()
    }

    pub(super) fn send_message(
        &mut self,
        csid: u32,
        timestamp: u32,
        type_id: u8,
        stream_id: u32,
        payload: &[u8],
    ) {
        self.encoder.encode(csid, timestamp, type_id, stream_id, payload, &mut self.output);
    }

    /// Like [`send_message`](Self::send_message), but the payload is not copied: its chunks go
    /// out as slices of `payload` between header pieces. RTMPE sessions and small payloads copy.
    pub(super) fn send_message_shared(
        &mut self,
        csid: u32,
        timestamp: u32,
        type_id: u8,
        stream_id: u32,
        payload: &Bytes,
    ) {
        if self.cipher.is_some() || payload.len() < SHARE_MIN_PAYLOAD {
            return self.send_message(csid, timestamp, type_id, stream_id, payload);
        }
        let length = payload.len() as u32;
        self.reserve_header_room();
        let continuation =
            self.encoder.begin_message(csid, timestamp, type_id, stream_id, length, &mut self.output);
        let chunk_size = self.encoder.chunk_size() as usize;
        let mut at = 0;
        while at < payload.len() {
            if at > 0 {
                self.reserve_header_room();
                self.output.put_slice(continuation.as_bytes());
            }
            let header = self.output.split().freeze();
            self.push_piece(header);
            let end = payload.len().min(at + chunk_size);
            self.push_piece(payload.slice(at..end));
            at = end;
        }
    }

    fn reserve_header_room(&mut self) {
        if self.output.capacity() - self.output.len() < crate::chunk::header::MAX_CHUNK_HEADER_LEN {
            self.output.reserve(HEADER_BLOCK);
        }
    }

    fn push_piece(&mut self, piece: Bytes) {
        self.pieces_len += piece.len();
        self.pieces.push_back(piece);
    }

    /// Gives back buffer memory while nothing is queued (idle connections).
    pub(super) fn release_buffers(&mut self) {
        if self.output.is_empty() && self.output.capacity() > 0 {
            self.output = BytesMut::new();
        }
        if self.input.is_empty() && self.input.capacity() > 0 {
            self.input = BytesMut::new();
        }
        if self.pieces.is_empty() && self.pieces.capacity() > 0 {
            self.pieces = VecDeque::new();
        }
        if self.scratch.is_empty() && self.scratch.capacity() > 0 {
            self.scratch = BytesMut::new();
        }
    }

    fn send_scratch(&mut self, csid: u32, type_id: u8, stream_id: u32) {
        let body = self.scratch.split();
        self.encoder.encode(csid, 0, type_id, stream_id, &body, &mut self.output);
        self.scratch.unsplit(body);
        self.scratch.clear();
    }

    pub(super) fn send_control(&mut self, type_id: u8, payload: &[u8]) {
        self.encoder.encode(csid::CONTROL, 0, type_id, 0, payload, &mut self.output);
    }

    pub(super) fn send_user_control(&mut self, event: UserControl) {
        event.encode(&mut self.scratch);
        self.send_scratch(csid::CONTROL, type_id::USER_CONTROL, 0);
    }

    pub(super) fn send_window_ack_size(&mut self, size: u32) {
        self.send_control(type_id::WINDOW_ACK_SIZE, &size.to_be_bytes());
    }

    pub(super) fn send_peer_bandwidth(&mut self, size: u32, limit: BandwidthLimit) {
        let mut body = [0u8; 5];
        body[..4].copy_from_slice(&size.to_be_bytes());
        body[4] = limit.to_byte();
        self.send_control(type_id::SET_PEER_BANDWIDTH, &body);
    }

    /// Sends Set Chunk Size and switches the encoder after it.
    pub(super) fn send_chunk_size(&mut self, size: u32) {
        self.send_control(type_id::SET_CHUNK_SIZE, &size.to_be_bytes());
        self.encoder.set_chunk_size(size);
    }

    pub(super) fn send_command(&mut self, csid: u32, stream_id: u32, command: &Command) {
        command.encode(&mut self.scratch);
        self.send_scratch(csid, type_id::COMMAND_AMF0, stream_id);
    }

    /// Sends a command built from values without constructing a [`Command`].
    pub(super) fn send_values(&mut self, csid: u32, type_id: u8, stream_id: u32, values: &[Amf0Value]) {
        for v in values {
            encode_amf0(v, &mut self.scratch);
        }
        self.send_scratch(csid, type_id, stream_id);
    }

    /// `onStatus` on a message stream.
    pub(super) fn send_status(&mut self, stream_id: u32, level: StatusLevel, code: &str, description: &str) {
        let info = Amf0Value::object([
            ("level", level.into()),
            ("code", Amf0Value::from(code)),
            ("description", Amf0Value::from(description)),
        ]);
        self.send_values(
            csid::STREAM_COMMAND,
            type_id::COMMAND_AMF0,
            stream_id,
            &["onStatus".into(), 0.0.into(), Amf0Value::Null, info],
        );
    }
}
