//! What the router needs to know about media without decoding it: which video messages are
//! keyframes, which audio/video messages are codec sequence headers, and which codec it is.
//!
//! Reads the first bytes of FLV-style audio (type 8) and video (type 9) message bodies, legacy
//! and Enhanced RTMP (ExVideoTagHeader / ExAudioTagHeader, FourCC codecs).

pub mod enhanced;

use enhanced::{ExTag, MediaType, PacketKind};

/// What one audio or video message is, for caching and drop decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MediaInfo {
    /// A video frame a decoder of the default track can start from.
    pub keyframe: bool,
    /// A decoder configuration record (AVC/HEVC/AV1/VP9 config, AAC AudioSpecificConfig) of at
    /// least one track.
    pub sequence_header: bool,
    /// The codec of the first track, when the header names one.
    pub codec: Option<Codec>,
    /// The first track's id: 0 (the default track) outside multitrack.
    pub track: u8,
    /// Whether the message carries the default track (track 0).
    pub default_track: bool,
    /// An Enhanced RTMP header (ExAudioTagHeader/ExVideoTagHeader).
    pub enhanced: bool,
    /// An Enhanced RTMP multitrack message.
    pub multitrack: bool,
    /// What a player without Enhanced RTMP support can be given.
    pub legacy: LegacyForm,
}

/// How a message reaches a player that announced no Enhanced RTMP support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LegacyForm {
    /// A legacy tag: as it is.
    #[default]
    AsIs,
    /// The default track rewritten into a legacy tag ([`legacy_payload`]).
    Rewrite,
    /// Nothing a legacy player can read (another track, a FourCC codec without legacy form).
    Unreadable,
}

/// A codec, legacy (FLV codec id) or Enhanced RTMP (FourCC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// AVC (FLV id 7, `avc1`).
    H264,
    /// HEVC (`hvc1`, or FLV id 12 of the Chinese extension).
    Hevc,
    /// `av01`.
    Av1,
    /// `vp09`.
    Vp9,
    /// `vp08`.
    Vp8,
    /// `vvc1`.
    Vvc,
    /// Another video codec: its FourCC or FLV codec id.
    OtherVideo(u32),
    /// AAC (FLV id 10, `mp4a`).
    Aac,
    /// MP3 (FLV id 2, `.mp3`).
    Mp3,
    /// `Opus`.
    Opus,
    /// `fLaC`.
    Flac,
    /// `ac-3`.
    Ac3,
    /// `ec-3`.
    Eac3,
    /// Another audio codec: its FourCC or FLV sound format.
    OtherAudio(u32),
}

impl Codec {
    /// A short name for logs and stats ("h264", "aac", ...).
    pub fn name(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::Hevc => "hevc",
            Codec::Av1 => "av1",
            Codec::Vp9 => "vp9",
            Codec::Vp8 => "vp8",
            Codec::Vvc => "vvc",
            Codec::OtherVideo(_) => "video",
            Codec::Aac => "aac",
            Codec::Mp3 => "mp3",
            Codec::Opus => "opus",
            Codec::Flac => "flac",
            Codec::Ac3 => "ac3",
            Codec::Eac3 => "eac3",
            Codec::OtherAudio(_) => "audio",
        }
    }
}

const VIDEO_FRAME_KEY: u8 = 1;
const VIDEO_FRAME_COMMAND: u8 = 5;

/// Classifies an Enhanced RTMP message; a malformed one yields no codec and no legacy form
/// (sessions reject those before they reach the router: [`validate`]).
fn inspect_enhanced(media: MediaType, body: &[u8]) -> MediaInfo {
    let unreadable = MediaInfo { enhanced: true, legacy: LegacyForm::Unreadable, ..MediaInfo::default() };
    let Ok(Some(tag)) = ExTag::parse(media, body) else { return unreadable };
    let mut info = MediaInfo { multitrack: tag.multitrack.is_some(), ..unreadable };
    if tag.is_command() {
        // Seek start/end: the default track's business, and meaningless to legacy players.
        info.default_track = true;
        return info;
    }
    for (index, track) in tag.tracks().enumerate() {
        let Ok(track) = track else { break };
        if index == 0 {
            info.codec = Some(track.codec);
            info.track = track.id;
        }
        info.sequence_header |= track.packet == PacketKind::SequenceStart;
        // The first track 0 is the default track (a repeated id is not another default track).
        if track.id == 0 && !info.default_track {
            info.default_track = true;
            info.keyframe = track.keyframe;
            if track.to_legacy().is_some() {
                info.legacy = LegacyForm::Rewrite;
            }
        }
    }
    info
}

/// The default track of an enhanced message in the legacy tag form, when [`LegacyForm::Rewrite`].
pub fn legacy_payload(media: MediaType, body: &[u8]) -> Option<Vec<u8>> {
    let tag = ExTag::parse(media, body).ok()??;
    let track = tag.tracks().flatten().find(|track| track.id == 0)?;
    Some(track.to_legacy()?.to_vec())
}

/// Checks an audio/video body: legacy tags always pass; an Enhanced RTMP message must parse
/// completely (every track of a multitrack message).
pub fn validate(media: MediaType, body: &[u8]) -> crate::Result<()> {
    match ExTag::parse(media, body)? {
        Some(tag) => tag.validate(),
        None => Ok(()),
    }
}

/// Classifies a video message body (message type 9).
pub fn inspect_video(body: &[u8]) -> MediaInfo {
    let Some(&first) = body.first() else { return MediaInfo::default() };
    if enhanced::is_enhanced(MediaType::Video, body) {
        return inspect_enhanced(MediaType::Video, body);
    }
    let frame_type = first >> 4;
    let codec_id = first & 0x0F;
    let codec = match codec_id {
        7 => Codec::H264,
        12 => Codec::Hevc, // legacy extension used by some Chinese CDNs (and SRS)
        13 => Codec::Av1,
        other => Codec::OtherVideo(u32::from(other)),
    };
    let base = MediaInfo { codec: Some(codec), default_track: true, ..MediaInfo::default() };
    if frame_type == VIDEO_FRAME_COMMAND {
        return base;
    }
    let has_packet_type = matches!(codec_id, 7 | 12 | 13);
    let sequence_header = has_packet_type && body.get(1) == Some(&0);
    let keyframe =
        frame_type == VIDEO_FRAME_KEY && !sequence_header && !(has_packet_type && body.get(1) == Some(&2));
    MediaInfo { keyframe, sequence_header, ..base }
}

/// Classifies an audio message body (message type 8).
pub fn inspect_audio(body: &[u8]) -> MediaInfo {
    let Some(&first) = body.first() else { return MediaInfo::default() };
    let base = MediaInfo { default_track: true, ..MediaInfo::default() };
    match first >> 4 {
        10 => MediaInfo { sequence_header: body.get(1) == Some(&0), codec: Some(Codec::Aac), ..base },
        2 | 14 => MediaInfo { codec: Some(Codec::Mp3), ..base },
        9 => inspect_enhanced(MediaType::Audio, body),
        other => MediaInfo { codec: Some(Codec::OtherAudio(u32::from(other))), ..base },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avc_legacy_headers() {
        let seq = inspect_video(&[0x17, 0x00, 0, 0, 0, 1, 0x64]);
        assert!(seq.sequence_header && !seq.keyframe);
        assert_eq!(seq.codec, Some(Codec::H264));
        let key = inspect_video(&[0x17, 0x01, 0, 0, 0]);
        assert!(key.keyframe && !key.sequence_header);
        let inter = inspect_video(&[0x27, 0x01, 0, 0, 0]);
        assert!(!inter.keyframe && !inter.sequence_header);
        let end_of_seq = inspect_video(&[0x17, 0x02, 0, 0, 0]);
        assert!(!end_of_seq.keyframe);
        assert_eq!(inspect_video(&[]), MediaInfo::default());
    }

    #[test]
    fn enhanced_video_headers() {
        // 0x80 | keyframe(1)<<4 | SequenceStart(0), "hvc1"
        let seq = inspect_video(&[0x90, b'h', b'v', b'c', b'1', 1, 2]);
        assert!(seq.sequence_header && !seq.keyframe);
        assert_eq!(seq.codec, Some(Codec::Hevc));
        // keyframe, CodedFramesX (3), "av01"
        let key = inspect_video(&[0x93, b'a', b'v', b'0', b'1', 9]);
        assert!(key.keyframe);
        assert_eq!(key.codec, Some(Codec::Av1));
        // inter frame (2), CodedFrames (1), "vp09"
        let inter = inspect_video(&[0xA1, b'v', b'p', b'0', b'9']);
        assert!(!inter.keyframe && !inter.sequence_header);
        assert_eq!(inter.codec, Some(Codec::Vp9));
        // truncated FourCC: still no panic
        assert_eq!(inspect_video(&[0x90, b'h']).codec, None);
    }

    #[test]
    fn aac_headers() {
        assert!(inspect_audio(&[0xAF, 0x00, 0x12, 0x10]).sequence_header);
        let raw = inspect_audio(&[0xAF, 0x01, 0x21]);
        assert!(!raw.sequence_header);
        assert_eq!(raw.codec, Some(Codec::Aac));
        assert_eq!(inspect_audio(&[0x2F]).codec, Some(Codec::Mp3));
        let opus = inspect_audio(&[0x90, b'O', b'p', b'u', b's']);
        assert!(opus.sequence_header);
        assert_eq!(opus.codec, Some(Codec::Opus));
    }

    #[test]
    fn multitrack_default_track_and_legacy_form() {
        // FFmpeg's second audio track: OneTrack, track 1, SequenceStart.
        let second = inspect_audio(b"\x95\x00mp4a\x01\x12\x10");
        assert!(second.sequence_header && second.multitrack && second.enhanced);
        assert_eq!((second.track, second.default_track, second.legacy), (1, false, LegacyForm::Unreadable));
        // Two renditions, keyframe: track 0 makes it a keyframe with a legacy form.
        let body = b"\x96\x13avc1\x00\x00\x00\x01\xAA\x01\x00\x00\x01\xBB";
        let both = inspect_video(body);
        assert!(both.keyframe && both.default_track);
        assert_eq!(both.legacy, LegacyForm::Rewrite);
        assert_eq!(legacy_payload(MediaType::Video, body).unwrap(), [0x17, 1, 0, 0, 0, 0xAA]);
        // Only track 1 keyframe: not a keyframe of the default track.
        let other = inspect_video(b"\x96\x03avc1\x01\xBB");
        assert!(!other.keyframe && !other.default_track);
        // AV1 has no legacy form.
        assert_eq!(inspect_video(b"\x93av01\x09").legacy, LegacyForm::Unreadable);
        assert_eq!(inspect_audio(&[0xAF, 1, 0]).legacy, LegacyForm::AsIs);
        assert!(validate(MediaType::Audio, b"\x95\x10mp4a\x00\x00\x00\x09").is_err());
    }

    /// Found by the enhanced_media fuzz target: track 0 twice, the first one too short for a
    /// legacy form. Only the first track 0 counts, for the legacy form as for the keyframe.
    #[test]
    fn repeated_default_track_uses_the_first() {
        let body = b"\x96\x11avc1\x00\x00\x00\x00\x00\x00\x00\x04\x00\xf8\xab\x00";
        let info = inspect_video(body);
        assert_eq!(info.legacy, LegacyForm::Unreadable);
        assert_eq!(legacy_payload(MediaType::Video, body), None);
    }
}
