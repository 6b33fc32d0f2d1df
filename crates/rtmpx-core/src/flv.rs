//! FLV writer for live delivery (HTTP-FLV, WebSocket-FLV): RTMP audio, video and data messages
//! become FLV tags (FLV specification v10.1, annex E).
//!
//! An RTMP message body already is an FLV tag body, so a tag is an 11-byte header in front of
//! the shared payload. Each tag's 4-byte `PreviousTagSize` is written in front of the next tag's
//! header, so a tag costs two pieces (prefix and payload) and payloads are never copied; the
//! file header ends with `PreviousTagSize0`'s place, which the first prefix fills.

use bytes::{BufMut, Bytes, BytesMut};

/// Tag types of the FLV file format (the RTMP message type ids of the same messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagKind {
    /// Message type 8.
    Audio = 8,
    /// Message type 9.
    Video = 9,
    /// AMF0 data (`onMetaData`), message type 18.
    Script = 18,
}

/// Tag header bytes.
pub const TAG_HEADER_LEN: usize = 11;
/// Largest payload a tag can carry (24-bit DataSize).
pub const MAX_TAG_DATA: usize = 0x00FF_FFFF;
/// Payloads up to this size are copied next to their header: one piece is cheaper than two.
const COPY_SMALLER_THAN: usize = 256;

/// The 9-byte FLV file header (signature, version 1, which tracks the stream has).
pub fn file_header(audio: bool, video: bool) -> [u8; 9] {
    let flags = (u8::from(audio) << 2) | u8::from(video);
    [b'F', b'L', b'V', 1, flags, 0, 0, 0, 9]
}

/// The tag header for a payload of `data_size` bytes at `timestamp` ms (stream id always 0).
pub fn tag_header(kind: TagKind, timestamp: u32, data_size: usize) -> [u8; TAG_HEADER_LEN] {
    let size = (data_size.min(MAX_TAG_DATA) as u32).to_be_bytes();
    let ts = timestamp.to_be_bytes();
    // TimestampExtended carries the upper 8 bits after the lower 24.
    [kind as u8, size[1], size[2], size[3], ts[1], ts[2], ts[3], ts[0], 0, 0, 0]
}

/// Turns a sequence of messages into an FLV byte stream, as pieces to be written in order.
#[derive(Debug, Default)]
pub struct FlvWriter {
    started: bool,
    /// Size of the last tag (header + data), written in front of the next one.
    last_tag_size: u32,
}

impl FlvWriter {
    /// A writer that has not written the file header yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the file header has been produced.
    pub fn started(&self) -> bool {
        self.started
    }

    /// The file header; call once, before the first tag.
    pub fn header(&mut self, audio: bool, video: bool) -> Bytes {
        self.started = true;
        self.last_tag_size = 0;
        Bytes::copy_from_slice(&file_header(audio, video))
    }

    /// Appends one tag to `out`: one piece for small payloads, else the prefix and the shared
    /// payload. Payloads larger than a tag can hold are skipped (RTMP limits are lower anyway).
    /// Returns the bytes appended.
    pub fn tag(
        &mut self,
        kind: TagKind,
        timestamp: u32,
        payload: &Bytes,
        out: &mut impl Extend<Bytes>,
    ) -> usize {
        if payload.len() > MAX_TAG_DATA {
            return 0;
        }
        let small = payload.len() < COPY_SMALLER_THAN;
        let mut prefix = BytesMut::with_capacity(4 + TAG_HEADER_LEN + if small { payload.len() } else { 0 });
        prefix.put_u32(self.last_tag_size);
        prefix.put_slice(&tag_header(kind, timestamp, payload.len()));
        self.last_tag_size = (TAG_HEADER_LEN + payload.len()) as u32;
        let total = prefix.len() + payload.len();
        if small {
            prefix.put_slice(payload);
            out.extend([prefix.freeze()]);
        } else {
            out.extend([prefix.freeze(), payload.clone()]);
        }
        total
    }

    /// The `PreviousTagSize` of the last tag, which ends a complete file.
    pub fn trailer(&self) -> Bytes {
        Bytes::copy_from_slice(&self.last_tag_size.to_be_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a written stream back as (type, timestamp, data), checking every PreviousTagSize.
    fn parse(stream: &[u8]) -> Vec<(u8, u32, Vec<u8>)> {
        assert_eq!(&stream[..3], b"FLV");
        let mut at = 9;
        let mut previous = 0u32;
        let mut tags = Vec::new();
        while at + 4 <= stream.len() {
            let size = u32::from_be_bytes(stream[at..at + 4].try_into().unwrap());
            assert_eq!(size, previous, "PreviousTagSize at {at}");
            at += 4;
            if at == stream.len() {
                break;
            }
            let h = &stream[at..at + TAG_HEADER_LEN];
            let len = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
            let ts = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
            let data = stream[at + TAG_HEADER_LEN..at + TAG_HEADER_LEN + len].to_vec();
            tags.push((h[0], ts, data));
            previous = (TAG_HEADER_LEN + len) as u32;
            at += TAG_HEADER_LEN + len;
        }
        assert_eq!(at, stream.len(), "no trailing bytes");
        tags
    }

    #[test]
    fn tags_round_trip_with_sizes_and_extended_timestamps() {
        let mut writer = FlvWriter::new();
        let mut pieces: Vec<Bytes> = vec![writer.header(true, true)];
        let small = Bytes::from_static(&[0xAF, 1, 2, 3]);
        let large = Bytes::from(vec![0x17; 5000]);
        let script = Bytes::from_static(b"\x02\x00\x0aonMetaData\x08\x00\x00\x00\x00\x00\x00\x09");
        let mut total = 0;
        total += writer.tag(TagKind::Script, 0, &script, &mut pieces);
        total += writer.tag(TagKind::Audio, 40, &small, &mut pieces);
        total += writer.tag(TagKind::Video, 0x1234_5678, &large, &mut pieces);
        pieces.push(writer.trailer());
        let stream: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
        assert_eq!(stream.len(), 9 + total + 4);
        assert_eq!(stream[4], 0x05, "audio and video flags");
        let tags = parse(&stream);
        assert_eq!(tags.len(), 3);
        assert_eq!((tags[0].0, tags[0].1, &tags[0].2[..]), (18, 0, &script[..]));
        assert_eq!((tags[1].0, tags[1].1, &tags[1].2[..]), (8, 40, &small[..]));
        assert_eq!((tags[2].0, tags[2].1, tags[2].2.len()), (9, 0x1234_5678, 5000));
    }

    #[test]
    fn large_payloads_are_shared_not_copied() {
        let mut writer = FlvWriter::new();
        let payload = Bytes::from(vec![9u8; 4096]);
        let mut pieces = Vec::new();
        writer.tag(TagKind::Video, 1, &payload, &mut pieces);
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[1].as_ptr(), payload.as_ptr());
    }

    #[test]
    fn header_flags() {
        assert_eq!(file_header(false, true)[4], 1);
        assert_eq!(file_header(true, false)[4], 4);
    }
}
