//! What publishers send: synthetic H.264/AAC-shaped frames that carry their send time, or the
//! tags of a real FLV file (whose send times go into a side table keyed by content).

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use rtmpx_client::MediaKind;

/// Marks a synthetic video frame; follows the FLV video header, NALU length and NAL header.
pub const MAGIC: &[u8; 8] = b"RTMPXBEN";
/// FLV video tag header (5) + NALU length (4) + NAL header (1).
const STAMP_AT: usize = 10;
/// Magic, send time (ns since the tool's epoch), sequence number.
pub const MIN_VIDEO_FRAME: usize = STAMP_AT + 8 + 8 + 8;

/// `@setDataFrame` `onMetaData` with an empty ECMA array, as encoders send first.
pub fn metadata() -> Vec<u8> {
    let mut out = Vec::new();
    for s in ["@setDataFrame", "onMetaData"] {
        out.push(0x02);
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, 0, 9]);
    out
}

/// AVC sequence header: an AVCDecoderConfigurationRecord with a 1280x720 High profile SPS/PPS.
pub fn avc_sequence_header() -> Vec<u8> {
    const SPS: &[u8] = &[
        0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10,
        0x00, 0x00, 0x03, 0x03, 0x20, 0xf1, 0x83, 0x19, 0x60,
    ];
    const PPS: &[u8] = &[0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0];
    let mut out = vec![0x17, 0x00, 0, 0, 0, 0x01, 0x64, 0x00, 0x1f, 0xff, 0xe1];
    out.extend_from_slice(&(SPS.len() as u16).to_be_bytes());
    out.extend_from_slice(SPS);
    out.push(1);
    out.extend_from_slice(&(PPS.len() as u16).to_be_bytes());
    out.extend_from_slice(PPS);
    out
}

/// AAC-LC 44.1 kHz stereo AudioSpecificConfig.
pub fn aac_sequence_header() -> Vec<u8> {
    vec![0xaf, 0x00, 0x12, 0x10]
}

/// Fills `buf[..size]` as one AVC NALU frame stamped with `send_ns` and `seq`.
/// `buf` must hold at least `size` bytes, `size >= MIN_VIDEO_FRAME`.
pub fn write_video_frame(buf: &mut [u8], size: usize, keyframe: bool, send_ns: u64, seq: u64) {
    let frame = &mut buf[..size];
    frame[0] = if keyframe { 0x17 } else { 0x27 };
    frame[1] = 0x01;
    frame[2..5].fill(0);
    frame[5..9].copy_from_slice(&((size - 9) as u32).to_be_bytes());
    frame[9] = if keyframe { 0x65 } else { 0x41 };
    frame[STAMP_AT..STAMP_AT + 8].copy_from_slice(MAGIC);
    frame[STAMP_AT + 8..STAMP_AT + 16].copy_from_slice(&send_ns.to_be_bytes());
    frame[STAMP_AT + 16..STAMP_AT + 24].copy_from_slice(&seq.to_be_bytes());
}

/// The send time and sequence number of a synthetic video frame, if it is one.
pub fn read_stamp(payload: &[u8]) -> Option<(u64, u64)> {
    if payload.len() < MIN_VIDEO_FRAME || payload[1] != 0x01 || &payload[STAMP_AT..STAMP_AT + 8] != MAGIC {
        return None;
    }
    let word = |at: usize| u64::from_be_bytes(payload[at..at + 8].try_into().unwrap_or_default());
    Some((word(STAMP_AT + 8), word(STAMP_AT + 16)))
}

/// Whether a payload is a sequence header (AVC/HEVC/AAC packet type 0) or script data.
pub fn is_config(kind: MediaKind, payload: &[u8]) -> bool {
    match kind {
        MediaKind::Data => true,
        MediaKind::Video => payload.len() >= 2 && payload[0] & 0x0f == 7 && payload[1] == 0,
        MediaKind::Audio => payload.len() >= 2 && payload[0] >> 4 == 10 && payload[1] == 0,
    }
}

/// Frame sizes for a synthetic stream: keyframes `KEY_RATIO` times an inter frame, averaging
/// `bitrate` over a GOP.
pub struct SyntheticPlan {
    pub fps: f64,
    pub gop_frames: u64,
    pub key_size: usize,
    pub inter_size: usize,
    pub audio_size: usize,
    /// AAC frames per second (44100 / 1024), or 0 without audio.
    pub audio_fps: f64,
}

const KEY_RATIO: f64 = 8.0;

impl SyntheticPlan {
    pub fn new(video_bps: f64, audio_bps: f64, fps: f64, gop_secs: f64) -> Self {
        let gop_frames = (fps * gop_secs).round().max(1.0) as u64;
        let avg = video_bps / 8.0 / fps;
        let inter = avg * gop_frames as f64 / (KEY_RATIO + gop_frames as f64 - 1.0);
        let inter_size = (inter as usize).max(MIN_VIDEO_FRAME);
        let key_size = ((inter * KEY_RATIO) as usize).max(MIN_VIDEO_FRAME);
        let audio_fps = if audio_bps > 0.0 { 44_100.0 / 1024.0 } else { 0.0 };
        let audio_size = if audio_bps > 0.0 { ((audio_bps / 8.0 / audio_fps) as usize).max(8) } else { 0 };
        SyntheticPlan { fps, gop_frames, key_size, inter_size, audio_size, audio_fps }
    }
}

/// One tag of an FLV file.
#[derive(Clone)]
pub struct FlvTag {
    pub kind: MediaKind,
    pub timestamp: u32,
    pub payload: Bytes,
}

/// Parses an FLV file's audio, video and script tags (others are skipped).
pub fn parse_flv(data: &[u8]) -> Result<Vec<FlvTag>, String> {
    if data.len() < 9 || &data[..3] != b"FLV" {
        return Err("not an FLV file".into());
    }
    let header_len = u32::from_be_bytes([data[5], data[6], data[7], data[8]]) as usize;
    let mut at = header_len.checked_add(4).ok_or("bad header")?;
    let bytes = Bytes::copy_from_slice(data);
    let mut tags = Vec::new();
    while at + 11 <= data.len() {
        let tag_type = data[at] & 0x1f;
        let size = u32::from_be_bytes([0, data[at + 1], data[at + 2], data[at + 3]]) as usize;
        let timestamp = u32::from_be_bytes([data[at + 7], data[at + 4], data[at + 5], data[at + 6]]);
        let body = at + 11;
        if body + size > data.len() {
            break; // a truncated last tag
        }
        let kind = match tag_type {
            8 => Some(MediaKind::Audio),
            9 => Some(MediaKind::Video),
            18 => Some(MediaKind::Data),
            _ => None,
        };
        if let Some(kind) = kind {
            if size > 0 {
                tags.push(FlvTag { kind, timestamp, payload: bytes.slice(body..body + size) });
            }
        }
        at = body + size + 4;
    }
    if tags.is_empty() {
        return Err("no tags".into());
    }
    Ok(tags)
}

/// A cheap content fingerprint: length and FNV-1a over the first and last 32 bytes.
pub fn fingerprint(payload: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf29ce484222325 ^ payload.len() as u64;
    let head = &payload[..payload.len().min(32)];
    let tail = &payload[payload.len().saturating_sub(32)..];
    for byte in head.iter().chain(tail) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash
}

/// Send times of the frames one publisher sent from a file, in order, for players to look up.
/// Players keep a cursor and search forward a bounded distance (frames may be dropped).
pub struct SideTable {
    inner: Mutex<SideInner>,
}

struct SideInner {
    /// Absolute index of `entries[0]`.
    base: u64,
    entries: VecDeque<(u64, u64)>,
}

const SIDE_TABLE_LEN: usize = 8192;
const SEARCH_AHEAD: u64 = 1024;

impl Default for SideTable {
    fn default() -> Self {
        SideTable {
            inner: Mutex::new(SideInner { base: 0, entries: VecDeque::with_capacity(SIDE_TABLE_LEN) }),
        }
    }
}

impl SideTable {
    pub fn push(&self, fingerprint: u64, send_ns: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.entries.len() == SIDE_TABLE_LEN {
            inner.entries.pop_front();
            inner.base += 1;
        }
        inner.entries.push_back((fingerprint, send_ns));
    }

    /// Finds `fingerprint` at or after `*cursor`; returns its send time and how many table
    /// entries were skipped, and moves the cursor past it. A player's first lookup (cursor
    /// `None`) searches backwards from the newest entry instead.
    pub fn lookup(&self, cursor: &mut Option<u64>, fingerprint: u64) -> Option<(u64, u64)> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let end = inner.base + inner.entries.len() as u64;
        let found = match *cursor {
            Some(from) => {
                let from = from.max(inner.base);
                (from..end.min(from + SEARCH_AHEAD))
                    .find(|&i| inner.entries[(i - inner.base) as usize].0 == fingerprint)
                    .map(|i| (i, i - from))
            }
            None => (inner.base..end)
                .rev()
                .take(SEARCH_AHEAD as usize)
                .find(|&i| inner.entries[(i - inner.base) as usize].0 == fingerprint)
                .map(|i| (i, 0)),
        };
        let (index, skipped) = found?;
        *cursor = Some(index + 1);
        Some((inner.entries[(index - inner.base) as usize].1, skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trip() {
        let mut buf = vec![0u8; 5000];
        write_video_frame(&mut buf, 3000, true, 123_456_789, 42);
        assert_eq!(read_stamp(&buf[..3000]), Some((123_456_789, 42)));
        assert_eq!(&buf[5..9], &2991u32.to_be_bytes());
        assert!(!is_config(MediaKind::Video, &buf));
        assert!(is_config(MediaKind::Video, &avc_sequence_header()));
        assert!(is_config(MediaKind::Audio, &aac_sequence_header()));
        buf[12] ^= 1;
        assert_eq!(read_stamp(&buf[..3000]), None);
        assert_eq!(read_stamp(&buf[..20]), None);
    }

    #[test]
    fn plan_averages_the_bitrate() {
        let plan = SyntheticPlan::new(2_500_000.0, 0.0, 25.0, 2.0);
        let gop_bytes = plan.key_size + plan.inter_size * (plan.gop_frames as usize - 1);
        let bps = gop_bytes as f64 * 8.0 / 2.0;
        assert!((bps - 2_500_000.0).abs() < 2_000.0, "{bps}");
        assert_eq!(plan.gop_frames, 50);
    }

    #[test]
    fn flv_tags_are_parsed() {
        let mut file = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00".to_vec();
        for (kind, ts, body) in [(9u8, 0x0100_0002u32, &b"\x17\x00abc"[..]), (8, 40, &b"\xaf\x01zz"[..])] {
            file.push(kind);
            file.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
            file.extend_from_slice(&ts.to_be_bytes()[1..]);
            file.push((ts >> 24) as u8);
            file.extend_from_slice(&[0, 0, 0]);
            file.extend_from_slice(body);
            file.extend_from_slice(&((body.len() + 11) as u32).to_be_bytes());
        }
        let tags = parse_flv(&file).unwrap();
        assert_eq!(tags.len(), 2);
        assert_eq!(tags[0].timestamp, 0x0100_0002);
        assert_eq!(&tags[0].payload[..], b"\x17\x00abc");
        assert_eq!(tags[1].kind, MediaKind::Audio);
        assert!(parse_flv(b"nope").is_err());
    }

    #[test]
    fn side_table_follows_cursor_and_counts_skips() {
        let table = SideTable::default();
        for i in 0..10u64 {
            table.push(i % 3, 100 + i);
        }
        let mut cursor = None;
        // First lookup: newest match (entry 9 has fingerprint 0).
        assert_eq!(table.lookup(&mut cursor, 0), Some((109, 0)));
        let mut cursor = Some(2);
        assert_eq!(table.lookup(&mut cursor, 1), Some((104, 2)));
        assert_eq!(cursor, Some(5));
        assert_eq!(table.lookup(&mut cursor, 7), None);
    }
}
