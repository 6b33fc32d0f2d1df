//! Enhanced RTMP v2 (veovera enhanced-rtmp) audio and video tag headers: ExAudioTagHeader and
//! ExVideoTagHeader with FourCC codecs, ModEx (TimestampNanoOffset) and multitrack (OneTrack,
//! ManyTracks, ManyTracksManyCodecs).
//!
//! Bounded and allocation-free: [`ExTag::parse`] reads the header, [`ExTag::tracks`] walks the
//! tracks one by one over the borrowed body. Payloads are never changed here; ModEx and the nano
//! offset stay in the bytes that are forwarded.

use crate::{Error, Result};

use super::Codec;

/// Audio (message type 8) or video (message type 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    /// Message type 8.
    Audio,
    /// Message type 9.
    Video,
}

/// What a track's packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// A decoder configuration (SequenceStart, or video MPEG2TSSequenceStart).
    SequenceStart,
    /// Coded frames (video CodedFrames/CodedFramesX, audio CodedFrames).
    CodedFrames,
    /// The end of a sequence (the decoder may be flushed).
    SequenceEnd,
    /// Video metadata (HDR), audio MultichannelConfig, video commands: forwarded, never cached.
    Other,
}

/// How the tracks of a multitrack message are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MultitrackType {
    /// Several tracks of one codec, one track per message.
    OneTrack,
    /// Several tracks of one codec in one message.
    ManyTracks,
    /// Several tracks with their own codecs in one message.
    ManyTracksManyCodecs,
}

// Packet types shared by audio and video where they mean the same.
const PACKET_SEQUENCE_START: u8 = 0;
const PACKET_CODED_FRAMES: u8 = 1;
const PACKET_SEQUENCE_END: u8 = 2;
const VIDEO_PACKET_CODED_FRAMES_X: u8 = 3;
const VIDEO_PACKET_METADATA: u8 = 4;
const VIDEO_PACKET_MPEG2TS_SEQUENCE_START: u8 = 5;
const VIDEO_PACKET_MULTITRACK: u8 = 6;
const AUDIO_PACKET_MULTICHANNEL_CONFIG: u8 = 4;
const AUDIO_PACKET_MULTITRACK: u8 = 5;
const PACKET_MOD_EX: u8 = 7;
const MOD_EX_TIMESTAMP_OFFSET_NANO: u8 = 0;
const VIDEO_FRAME_KEY: u8 = 1;
const VIDEO_FRAME_COMMAND: u8 = 5;
const SOUND_FORMAT_EX_HEADER: u8 = 9;
/// A header has at most this many ModEx blocks; real encoders send one (the nano offset).
const MAX_MOD_EX: usize = 8;

/// Whether a message body starts with an Enhanced RTMP header.
pub fn is_enhanced(media: MediaType, body: &[u8]) -> bool {
    match (media, body.first()) {
        (MediaType::Video, Some(first)) => first & 0x80 != 0,
        (MediaType::Audio, Some(first)) => first >> 4 == SOUND_FORMAT_EX_HEADER,
        _ => false,
    }
}

/// The codec a FourCC names.
pub fn codec_of(media: MediaType, fourcc: u32) -> Codec {
    match (media, &fourcc.to_be_bytes()) {
        (MediaType::Video, b"avc1") => Codec::H264,
        (MediaType::Video, b"hvc1") => Codec::Hevc,
        (MediaType::Video, b"av01") => Codec::Av1,
        (MediaType::Video, b"vp09") => Codec::Vp9,
        (MediaType::Video, b"vp08") => Codec::Vp8,
        (MediaType::Video, b"vvc1") => Codec::Vvc,
        (MediaType::Video, _) => Codec::OtherVideo(fourcc),
        (MediaType::Audio, b"mp4a") => Codec::Aac,
        (MediaType::Audio, b".mp3") => Codec::Mp3,
        (MediaType::Audio, b"Opus") => Codec::Opus,
        (MediaType::Audio, b"fLaC") => Codec::Flac,
        (MediaType::Audio, b"ac-3") => Codec::Ac3,
        (MediaType::Audio, b"ec-3") => Codec::Eac3,
        (MediaType::Audio, _) => Codec::OtherAudio(fourcc),
    }
}

/// One parsed Enhanced RTMP header; the tracks follow at `body`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExTag<'a> {
    /// Audio or video.
    pub media: MediaType,
    /// Video frame type (1 key, 2 inter, 3 disposable, 4 generated key, 5 command); 0 for audio.
    pub frame_type: u8,
    /// The packet type every track carries (after ModEx and Multitrack are resolved).
    pub packet_type: u8,
    /// `None` outside a multitrack message.
    pub multitrack: Option<MultitrackType>,
    /// TimestampNanoOffset from a ModEx block, carried in the bytes unchanged.
    pub nano_offset: Option<u32>,
    /// The FourCC of every track, except for ManyTracksManyCodecs (one per track).
    fourcc: Option<u32>,
    body: &'a [u8],
}

/// One track of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Track<'a> {
    /// 0 outside multitrack: the default track.
    pub id: u8,
    /// The track's codec as a FourCC.
    pub fourcc: u32,
    /// The codec that FourCC names.
    pub codec: Codec,
    /// What the packet carries.
    pub packet: PacketKind,
    /// A video frame a decoder can start from (coded frames of a key frame).
    pub keyframe: bool,
    /// The track's payload after its header fields (for AVC/HEVC/VVC CodedFrames it starts with
    /// the composition time).
    pub data: &'a [u8],
    /// The raw packet type, for a rewrite into the legacy tag form.
    pub packet_type: u8,
    /// The message's video frame type (0 for audio).
    pub frame_type: u8,
}

fn malformed(what: &'static str) -> Error {
    Error::Media(what)
}

fn take<'a>(bytes: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8]> {
    if bytes.len() < n {
        return Err(malformed(what));
    }
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    Ok(head)
}

fn read_u8(bytes: &mut &[u8], what: &'static str) -> Result<u8> {
    Ok(take(bytes, 1, what)?[0])
}

fn read_fourcc(bytes: &mut &[u8]) -> Result<u32> {
    let raw = take(bytes, 4, "truncated FourCC")?;
    Ok(u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]))
}

fn read_u24(bytes: &mut &[u8], what: &'static str) -> Result<u32> {
    let raw = take(bytes, 3, what)?;
    Ok(u32::from_be_bytes([0, raw[0], raw[1], raw[2]]))
}

impl<'a> ExTag<'a> {
    /// Parses the header of an audio or video body. `Ok(None)`: a legacy (pre-2023) tag.
    /// Reserved packet types, a Multitrack inside a Multitrack, unknown multitrack types and
    /// truncated fields are errors.
    pub fn parse(media: MediaType, body: &'a [u8]) -> Result<Option<ExTag<'a>>> {
        if !is_enhanced(media, body) {
            return Ok(None);
        }
        let mut rest = body;
        let first = read_u8(&mut rest, "empty message")?;
        let frame_type = match media {
            MediaType::Video => (first >> 4) & 0x07,
            MediaType::Audio => 0,
        };
        let mut packet_type = first & 0x0F;
        let mut nano_offset = None;
        let mut mod_ex_count = 0;
        while packet_type == PACKET_MOD_EX {
            mod_ex_count += 1;
            if mod_ex_count > MAX_MOD_EX {
                return Err(malformed("too many ModEx blocks"));
            }
            let mut size = usize::from(read_u8(&mut rest, "truncated ModEx size")?) + 1;
            if size == 256 {
                let raw = take(&mut rest, 2, "truncated ModEx size")?;
                size = usize::from(u16::from_be_bytes([raw[0], raw[1]])) + 1;
            }
            let data = take(&mut rest, size, "truncated ModEx data")?;
            let next = read_u8(&mut rest, "truncated ModEx type")?;
            if next >> 4 == MOD_EX_TIMESTAMP_OFFSET_NANO {
                if data.len() < 3 {
                    return Err(malformed("TimestampNanoOffset shorter than 3 bytes"));
                }
                nano_offset = Some(u32::from_be_bytes([0, data[0], data[1], data[2]]));
            }
            packet_type = next & 0x0F;
        }
        let multitrack_type = match media {
            MediaType::Video => VIDEO_PACKET_MULTITRACK,
            MediaType::Audio => AUDIO_PACKET_MULTITRACK,
        };
        if media == MediaType::Video
            && frame_type == VIDEO_FRAME_COMMAND
            && packet_type != VIDEO_PACKET_METADATA
        {
            // A video command (seek start/end): one byte, no FourCC and no tracks.
            read_u8(&mut rest, "truncated video command")?;
            return Ok(Some(ExTag {
                media,
                frame_type,
                packet_type,
                multitrack: None,
                nano_offset,
                fourcc: None,
                body: &[],
            }));
        }
        let mut multitrack = None;
        if packet_type == multitrack_type {
            let byte = read_u8(&mut rest, "truncated multitrack type")?;
            multitrack = Some(match byte >> 4 {
                0 => MultitrackType::OneTrack,
                1 => MultitrackType::ManyTracks,
                2 => MultitrackType::ManyTracksManyCodecs,
                _ => return Err(malformed("unknown multitrack type")),
            });
            packet_type = byte & 0x0F;
            if packet_type == multitrack_type || packet_type == PACKET_MOD_EX {
                return Err(malformed("multitrack packet type inside multitrack"));
            }
        }
        check_packet_type(media, packet_type)?;
        let fourcc = match multitrack {
            Some(MultitrackType::ManyTracksManyCodecs) => None,
            _ => Some(read_fourcc(&mut rest)?),
        };
        Ok(Some(ExTag { media, frame_type, packet_type, multitrack, nano_offset, fourcc, body: rest }))
    }

    /// Whether this is a video command (no tracks).
    pub fn is_command(&self) -> bool {
        self.media == MediaType::Video
            && self.frame_type == VIDEO_FRAME_COMMAND
            && self.packet_type != VIDEO_PACKET_METADATA
    }

    /// The tracks, in message order. An item is an error when the message lies about sizes;
    /// the walk stops after the first error.
    pub fn tracks(&self) -> Tracks<'a> {
        Tracks { tag: *self, rest: self.body, done: self.is_command() }
    }

    /// Walks every track: `Ok` when the whole message is well formed.
    pub fn validate(&self) -> Result<()> {
        for track in self.tracks() {
            track?;
        }
        Ok(())
    }
}

fn check_packet_type(media: MediaType, packet_type: u8) -> Result<()> {
    let known = match media {
        MediaType::Video => packet_type <= VIDEO_PACKET_MPEG2TS_SEQUENCE_START,
        MediaType::Audio => matches!(
            packet_type,
            PACKET_SEQUENCE_START
                | PACKET_CODED_FRAMES
                | PACKET_SEQUENCE_END
                | AUDIO_PACKET_MULTICHANNEL_CONFIG
        ),
    };
    if known {
        Ok(())
    } else {
        Err(malformed(match media {
            MediaType::Video => "unknown video packet type",
            MediaType::Audio => "unknown audio packet type",
        }))
    }
}

fn packet_kind(media: MediaType, packet_type: u8) -> PacketKind {
    match (media, packet_type) {
        (_, PACKET_SEQUENCE_START) | (MediaType::Video, VIDEO_PACKET_MPEG2TS_SEQUENCE_START) => {
            PacketKind::SequenceStart
        }
        (_, PACKET_CODED_FRAMES) | (MediaType::Video, VIDEO_PACKET_CODED_FRAMES_X) => PacketKind::CodedFrames,
        (_, PACKET_SEQUENCE_END) => PacketKind::SequenceEnd,
        _ => PacketKind::Other,
    }
}

/// Iterator over the tracks of an [`ExTag`].
#[derive(Debug, Clone)]
pub struct Tracks<'a> {
    tag: ExTag<'a>,
    rest: &'a [u8],
    done: bool,
}

impl<'a> Tracks<'a> {
    fn next_track(&mut self) -> Result<Track<'a>> {
        let tag = &self.tag;
        let fourcc = match tag.fourcc {
            Some(fourcc) => fourcc,
            None => read_fourcc(&mut self.rest)?,
        };
        let (id, data) = match tag.multitrack {
            None => {
                self.done = true;
                (0, std::mem::take(&mut self.rest))
            }
            Some(MultitrackType::OneTrack) => {
                let id = read_u8(&mut self.rest, "truncated track id")?;
                self.done = true;
                (id, std::mem::take(&mut self.rest))
            }
            Some(_) => {
                let id = read_u8(&mut self.rest, "truncated track id")?;
                let size = read_u24(&mut self.rest, "truncated track size")? as usize;
                let data = take(&mut self.rest, size, "track size beyond the message")?;
                self.done = self.rest.is_empty();
                (id, data)
            }
        };
        let packet = packet_kind(tag.media, tag.packet_type);
        let keyframe = tag.media == MediaType::Video
            && packet == PacketKind::CodedFrames
            && tag.frame_type == VIDEO_FRAME_KEY;
        Ok(Track {
            id,
            fourcc,
            codec: codec_of(tag.media, fourcc),
            packet,
            keyframe,
            data,
            packet_type: tag.packet_type,
            frame_type: tag.frame_type,
        })
    }
}

impl<'a> Iterator for Tracks<'a> {
    type Item = Result<Track<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.next_track();
        if item.is_err() {
            self.done = true;
        }
        Some(item)
    }
}

/// A track rewritten into the legacy (pre-2023) tag form: a few header bytes, then `data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegacyTag<'a> {
    header: [u8; 5],
    header_len: usize,
    /// The track's payload, unchanged.
    pub data: &'a [u8],
}

impl LegacyTag<'_> {
    /// The legacy tag header bytes that go before `data`.
    pub fn header(&self) -> &[u8] {
        &self.header[..self.header_len]
    }

    /// Header plus data.
    pub fn len(&self) -> usize {
        self.header_len + self.data.len()
    }

    /// Never: a legacy tag always has a header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The legacy message body.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        out.extend_from_slice(self.header());
        out.extend_from_slice(self.data);
        out
    }
}

impl<'a> Track<'a> {
    /// This track in the legacy tag form, where one exists (AVC video, AAC and MP3 audio).
    pub fn to_legacy(&self) -> Option<LegacyTag<'a>> {
        let tag = |bytes: &[u8], data: &'a [u8]| {
            let mut header = [0; 5];
            header[..bytes.len()].copy_from_slice(bytes);
            Some(LegacyTag { header, header_len: bytes.len(), data })
        };
        match self.codec {
            Codec::H264 => {
                let frame_type = if self.frame_type == 0 { 2 } else { self.frame_type };
                let first = (frame_type << 4) | 7;
                match self.packet_type {
                    PACKET_SEQUENCE_START => tag(&[0x17, 0, 0, 0, 0], self.data),
                    PACKET_CODED_FRAMES if self.data.len() >= 3 => tag(&[first, 1], self.data),
                    VIDEO_PACKET_CODED_FRAMES_X => tag(&[first, 1, 0, 0, 0], self.data),
                    PACKET_SEQUENCE_END => tag(&[0x17, 2, 0, 0, 0], &[]),
                    _ => None,
                }
            }
            // AAC, 44 kHz, 16 bit, stereo: the flags legacy players expect for AAC.
            Codec::Aac => match self.packet_type {
                PACKET_SEQUENCE_START => tag(&[0xAF, 0], self.data),
                PACKET_CODED_FRAMES => tag(&[0xAF, 1], self.data),
                _ => None,
            },
            Codec::Mp3 if self.packet_type == PACKET_CODED_FRAMES => tag(&[0x2F], self.data),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(body: &[u8]) -> ExTag<'_> {
        ExTag::parse(MediaType::Video, body).unwrap().unwrap()
    }

    fn audio(body: &[u8]) -> ExTag<'_> {
        ExTag::parse(MediaType::Audio, body).unwrap().unwrap()
    }

    #[test]
    fn legacy_tags_are_not_enhanced() {
        assert_eq!(ExTag::parse(MediaType::Video, &[0x17, 0, 0, 0, 0]).unwrap(), None);
        assert_eq!(ExTag::parse(MediaType::Audio, &[0xAF, 0, 0x12]).unwrap(), None);
        assert_eq!(ExTag::parse(MediaType::Audio, &[]).unwrap(), None);
    }

    #[test]
    fn single_track_video_and_audio() {
        let tag = video(b"\x90hvc1\x01\x02");
        let track = tag.tracks().next().unwrap().unwrap();
        assert_eq!((track.id, track.codec, track.packet), (0, Codec::Hevc, PacketKind::SequenceStart));
        assert_eq!(track.data, &[1, 2]);
        let key = video(b"\x93av01\x09").tracks().next().unwrap().unwrap();
        assert!(key.keyframe);
        assert_eq!(key.codec, Codec::Av1);
        let inter = video(b"\xA1vp08\x00\x00\x00").tracks().next().unwrap().unwrap();
        assert!(!inter.keyframe);
        assert_eq!(inter.codec, Codec::Vp8);
        for (fourcc, codec) in
            [(b"Opus", Codec::Opus), (b"fLaC", Codec::Flac), (b"ac-3", Codec::Ac3), (b"ec-3", Codec::Eac3)]
        {
            let mut body = vec![0x91];
            body.extend_from_slice(fourcc);
            let track = audio(&body).tracks().next().unwrap().unwrap();
            assert_eq!((track.codec, track.packet), (codec, PacketKind::CodedFrames));
        }
    }

    #[test]
    fn one_track_audio_as_ffmpeg_sends_it() {
        // SoundFormat 9 | Multitrack(5), OneTrack(0) | SequenceStart(0), "mp4a", track 1, ASC.
        let body = b"\x95\x00mp4a\x01\x12\x10";
        let tag = audio(body);
        assert_eq!(tag.multitrack, Some(MultitrackType::OneTrack));
        let tracks: Vec<_> = tag.tracks().collect::<Result<_>>().unwrap();
        assert_eq!(tracks.len(), 1);
        assert_eq!(
            (tracks[0].id, tracks[0].codec, tracks[0].packet),
            (1, Codec::Aac, PacketKind::SequenceStart)
        );
        assert_eq!(tracks[0].data, &[0x12, 0x10]);
        assert_eq!(tracks[0].to_legacy().unwrap().to_vec(), vec![0xAF, 0, 0x12, 0x10]);
    }

    #[test]
    fn many_tracks_and_many_codecs() {
        // keyframe | Multitrack(6); ManyTracks(1) | CodedFrames(1); "avc1"; two tracks.
        let body = b"\x96\x11avc1\x00\x00\x00\x04\x00\x00\x00\xAA\x01\x00\x00\x04\x00\x00\x00\xBB";
        let tracks: Vec<_> = video(body).tracks().collect::<Result<_>>().unwrap();
        assert_eq!(tracks.iter().map(|t| t.id).collect::<Vec<_>>(), [0, 1]);
        assert!(tracks.iter().all(|t| t.keyframe && t.codec == Codec::H264));
        let legacy = tracks[0].to_legacy().unwrap().to_vec();
        assert_eq!(legacy, [0x17, 1, 0, 0, 0, 0xAA]);
        // ManyTracksManyCodecs(2) | SequenceStart(0); per track FourCC.
        let body = b"\x96\x20avc1\x00\x00\x00\x02\x01\x02hvc1\x01\x00\x00\x01\x03";
        let tracks: Vec<_> = video(body).tracks().collect::<Result<_>>().unwrap();
        assert_eq!(
            tracks.iter().map(|t| (t.id, t.codec, t.packet)).collect::<Vec<_>>(),
            [(0, Codec::H264, PacketKind::SequenceStart), (1, Codec::Hevc, PacketKind::SequenceStart)]
        );
        assert_eq!(tracks[0].to_legacy().unwrap().to_vec(), [0x17, 0, 0, 0, 0, 1, 2]);
        assert_eq!(tracks[1].to_legacy(), None);
    }

    #[test]
    fn mod_ex_nano_offset_is_read_and_skipped() {
        // ModEx(7): size 3-1=2, data 0x000102, then ModExType 0 | CodedFramesX(3), "avc1".
        let tag = video(b"\x97\x02\x00\x01\x02\x03avc1\xEE");
        assert_eq!(tag.nano_offset, Some(0x0102));
        let track = tag.tracks().next().unwrap().unwrap();
        assert!(track.keyframe);
        assert_eq!(track.data, &[0xEE]);
        assert_eq!(track.to_legacy().unwrap().to_vec(), [0x17, 1, 0, 0, 0, 0xEE]);
    }

    #[test]
    fn malformed_messages_are_errors() {
        let cases: [(MediaType, &[u8], &str); 8] = [
            (MediaType::Video, b"\x90hv", "truncated FourCC"),
            (MediaType::Audio, b"\x93Opus", "unknown audio packet type"),
            (MediaType::Video, b"\x98avc1", "unknown video packet type"),
            (MediaType::Video, b"\x96\x06avc1", "multitrack packet type inside multitrack"),
            (MediaType::Audio, b"\x95\x30mp4a\x00", "unknown multitrack type"),
            (MediaType::Video, b"\x97\x05\x01", "truncated ModEx data"),
            // ManyTracks: the size of track 1 claims more bytes than the message has.
            (
                MediaType::Audio,
                b"\x95\x11mp4a\x00\x00\x00\x01\xAA\x01\x00\x10\x00\xBB",
                "track size beyond the message",
            ),
            (MediaType::Audio, b"\x95\x21Opus\x00\x00", "truncated track size"),
        ];
        for (media, body, reason) in cases {
            let result = ExTag::parse(media, body).and_then(|tag| tag.unwrap().validate());
            assert_eq!(result, Err(Error::Media(reason)), "{body:x?}");
        }
    }

    #[test]
    fn video_command_has_no_tracks() {
        let tag = video(&[0xD0, 0x00]);
        assert!(tag.is_command());
        assert_eq!(tag.tracks().count(), 0);
        assert!(ExTag::parse(MediaType::Video, &[0xD0]).is_err());
    }

    proptest::proptest! {
        /// Any bytes: no panic, and every track's data lies inside the message.
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), audio in proptest::prelude::any::<bool>()) {
            let media = if audio { MediaType::Audio } else { MediaType::Video };
            if let Ok(Some(tag)) = ExTag::parse(media, &body) {
                let mut total = 0;
                for track in tag.tracks().flatten() {
                    total += track.data.len();
                    if let Some(legacy) = track.to_legacy() {
                        proptest::prop_assert!(legacy.len() <= track.data.len() + 5);
                    }
                }
                proptest::prop_assert!(total <= body.len());
            }
        }

        /// Well-formed ManyTracks messages parse back to what was written.
        #[test]
        fn many_tracks_round_trip(tracks in proptest::collection::vec((proptest::prelude::any::<u8>(), proptest::collection::vec(proptest::prelude::any::<u8>(), 0..16)), 1..6)) {
            let mut body = vec![0x95, 0x11];
            body.extend_from_slice(b"Opus");
            for (id, data) in &tracks {
                body.push(*id);
                body.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                body.extend_from_slice(data);
            }
            let parsed: Vec<_> = audio(&body).tracks().collect::<Result<_>>().unwrap();
            proptest::prop_assert_eq!(parsed.len(), tracks.len());
            for (track, (id, data)) in parsed.iter().zip(&tracks) {
                proptest::prop_assert_eq!(track.id, *id);
                proptest::prop_assert_eq!(track.data, &data[..]);
                proptest::prop_assert_eq!(track.codec, Codec::Opus);
            }
        }
    }
}
