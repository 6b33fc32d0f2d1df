//! What the router needs to know about media without decoding it: which video messages are
//! keyframes, which audio/video messages are codec sequence headers, and which codec it is.
//!
//! Reads the first bytes of FLV-style audio (type 8) and video (type 9) message bodies, legacy
//! and Enhanced RTMP (ExVideoTagHeader / ExAudioTagHeader, FourCC codecs).

/// What one audio or video message is, for caching and drop decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MediaInfo {
    /// A video frame a decoder can start from.
    pub keyframe: bool,
    /// A decoder configuration record (AVC/HEVC/AV1/VP9 config, AAC AudioSpecificConfig).
    pub sequence_header: bool,
    /// The codec, when the header names one.
    pub codec: Option<Codec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    H264,
    Hevc,
    Av1,
    Vp9,
    OtherVideo(u32),
    Aac,
    Mp3,
    Opus,
    OtherAudio(u32),
}

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::Hevc => "hevc",
            Codec::Av1 => "av1",
            Codec::Vp9 => "vp9",
            Codec::OtherVideo(_) => "video",
            Codec::Aac => "aac",
            Codec::Mp3 => "mp3",
            Codec::Opus => "opus",
            Codec::OtherAudio(_) => "audio",
        }
    }
}

const VIDEO_FRAME_KEY: u8 = 1;
const VIDEO_FRAME_COMMAND: u8 = 5;
const ENHANCED_FLAG: u8 = 0x80;

fn fourcc(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?))
}

fn video_fourcc(code: u32) -> Codec {
    match &code.to_be_bytes() {
        b"avc1" => Codec::H264,
        b"hvc1" => Codec::Hevc,
        b"av01" => Codec::Av1,
        b"vp09" => Codec::Vp9,
        _ => Codec::OtherVideo(code),
    }
}

/// Classifies a video message body (message type 9).
pub fn inspect_video(body: &[u8]) -> MediaInfo {
    let Some(&first) = body.first() else { return MediaInfo::default() };
    if first & ENHANCED_FLAG != 0 {
        // Enhanced RTMP: [1 bit flag][3 bits frame type][4 bits packet type][FourCC].
        let frame_type = (first >> 4) & 0x07;
        let packet_type = first & 0x0F;
        let codec = fourcc(&body[1..]).map(video_fourcc);
        // Packet types: 0 SequenceStart, 1 CodedFrames, 2 SequenceEnd, 3 CodedFramesX,
        // 4 Metadata, 5 MPEG2TSSequenceStart, 6 Multitrack, 7 ModEx.
        let sequence_header = packet_type == 0 || packet_type == 5;
        let coded = packet_type == 1 || packet_type == 3;
        return MediaInfo { keyframe: coded && frame_type == VIDEO_FRAME_KEY, sequence_header, codec };
    }
    let frame_type = first >> 4;
    let codec_id = first & 0x0F;
    let codec = match codec_id {
        7 => Codec::H264,
        12 => Codec::Hevc, // legacy extension used by some Chinese CDNs (and SRS)
        13 => Codec::Av1,
        other => Codec::OtherVideo(u32::from(other)),
    };
    if frame_type == VIDEO_FRAME_COMMAND {
        return MediaInfo { keyframe: false, sequence_header: false, codec: Some(codec) };
    }
    let has_packet_type = matches!(codec_id, 7 | 12 | 13);
    let sequence_header = has_packet_type && body.get(1) == Some(&0);
    let keyframe =
        frame_type == VIDEO_FRAME_KEY && !sequence_header && !(has_packet_type && body.get(1) == Some(&2));
    MediaInfo { keyframe, sequence_header, codec: Some(codec) }
}

/// Classifies an audio message body (message type 8).
pub fn inspect_audio(body: &[u8]) -> MediaInfo {
    let Some(&first) = body.first() else { return MediaInfo::default() };
    let format = first >> 4;
    match format {
        10 => {
            MediaInfo { keyframe: false, sequence_header: body.get(1) == Some(&0), codec: Some(Codec::Aac) }
        }
        2 | 14 => MediaInfo { codec: Some(Codec::Mp3), ..MediaInfo::default() },
        9 => {
            // Enhanced RTMP ExAudioTagHeader: packet type in the low nibble, then FourCC.
            let packet_type = first & 0x0F;
            let codec = fourcc(&body[1..]).map(|c| match &c.to_be_bytes() {
                b"mp4a" => Codec::Aac,
                b"Opus" => Codec::Opus,
                b".mp3" => Codec::Mp3,
                _ => Codec::OtherAudio(c),
            });
            MediaInfo { keyframe: false, sequence_header: packet_type == 0, codec }
        }
        other => MediaInfo { codec: Some(Codec::OtherAudio(u32::from(other))), ..MediaInfo::default() },
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
}
