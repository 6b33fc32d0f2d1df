//! Enhanced RTMP capabilities of `connect` and its `_result`: `fourCcList`,
//! `videoFourCcInfoMap`, `audioFourCcInfoMap` and `capsEx`.

use crate::amf::{Amf0Value, Properties};

/// `capsEx` bits.
pub const CAPS_EX_RECONNECT: u32 = 0x01;
/// `capsEx` bit: multitrack audio/video.
pub const CAPS_EX_MULTITRACK: u32 = 0x02;
/// `capsEx` bit: ModEx signals in media headers.
pub const CAPS_EX_MOD_EX: u32 = 0x04;
/// `capsEx` bit: nanosecond timestamp offsets.
pub const CAPS_EX_TIMESTAMP_NANO_OFFSET: u32 = 0x08;

/// `[audio|video]FourCcInfoMap` flags.
pub const FOURCC_CAN_DECODE: u32 = 0x01;
/// `FourCcInfoMap` flag: can encode the codec.
pub const FOURCC_CAN_ENCODE: u32 = 0x02;
/// `FourCcInfoMap` flag: can forward the codec untouched.
pub const FOURCC_CAN_FORWARD: u32 = 0x04;

/// Every FourCC rtmpx parses (and forwards); "*" stands for any other.
pub const VIDEO_FOURCCS: [&str; 6] = ["avc1", "hvc1", "av01", "vp09", "vp08", "vvc1"];
/// Every audio FourCC rtmpx parses (and forwards).
pub const AUDIO_FOURCCS: [&str; 6] = ["mp4a", ".mp3", "Opus", "fLaC", "ac-3", "ec-3"];

/// At most this many FourCC entries are kept from a peer (the rest is ignored).
const MAX_ENTRIES: usize = 32;

/// A codec's FourCC as Enhanced RTMP names it (`"hvc1"`, `".mp3"`, or `"*"` for any other): 1 to
/// 4 bytes kept inline, so a session holding a peer's list costs 4 bytes per entry, not a string.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FourCc([u8; 4]);

impl FourCc {
    /// `None` for an empty code, one longer than 4 bytes, or one with a NUL.
    pub fn new(code: &str) -> Option<FourCc> {
        let bytes = code.as_bytes();
        if bytes.is_empty() || bytes.len() > 4 || bytes.contains(&0) {
            return None;
        }
        let mut inline = [0u8; 4];
        inline[..bytes.len()].copy_from_slice(bytes);
        Some(FourCc(inline))
    }

    /// The code as announced.
    pub fn as_str(&self) -> &str {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(4);
        // Made from a whole &str of at most 4 bytes: always valid.
        std::str::from_utf8(&self.0[..len]).unwrap_or_default()
    }
}

impl std::fmt::Debug for FourCc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl PartialEq<&str> for FourCc {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// What a peer announced. Empty: a legacy peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnhancedCapabilities {
    /// `fourCcList`: codecs the peer supports (any direction).
    pub fourcc_list: Vec<FourCc>,
    /// `videoFourCcInfoMap`: FourCC and `FOURCC_CAN_*` flags.
    pub video_fourcc_info: Vec<(FourCc, u32)>,
    /// `audioFourCcInfoMap`: FourCC and `FOURCC_CAN_*` flags.
    pub audio_fourcc_info: Vec<(FourCc, u32)>,
    /// `capsEx` bits (`CAPS_EX_*`).
    pub caps_ex: u32,
}

fn fourcc_info(value: Option<&Amf0Value>) -> Vec<(FourCc, u32)> {
    let Some(props) = value.and_then(Amf0Value::properties) else { return Vec::new() };
    props
        .iter()
        .filter_map(|(key, value)| Some((FourCc::new(key)?, value.as_f64()? as u32)))
        .take(MAX_ENTRIES)
        .collect()
}

impl EnhancedCapabilities {
    /// Reads the properties of a `connect` command object or of a `_result` object.
    pub fn from_properties(props: &Properties) -> Self {
        let get = |key: &str| props.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        let fourcc_list = match get("fourCcList") {
            Some(Amf0Value::StrictArray(items)) => {
                items.iter().filter_map(Amf0Value::as_str).filter_map(FourCc::new).take(MAX_ENTRIES).collect()
            }
            _ => Vec::new(),
        };
        let caps_ex = get("capsEx").and_then(Amf0Value::as_f64).map_or(0, |n| n as u32);
        EnhancedCapabilities {
            fourcc_list,
            video_fourcc_info: fourcc_info(get("videoFourCcInfoMap")),
            audio_fourcc_info: fourcc_info(get("audioFourCcInfoMap")),
            caps_ex,
        }
    }

    /// Whether the peer announced Enhanced RTMP at all: it then parses ExHeaders and multitrack.
    pub fn is_enhanced(&self) -> bool {
        !self.fourcc_list.is_empty()
            || !self.video_fourcc_info.is_empty()
            || !self.audio_fourcc_info.is_empty()
            || self.caps_ex != 0
    }

    /// rtmpx's own: it forwards every codec, parses multitrack, ModEx and the nano offset.
    pub fn gateway() -> Self {
        let fourcc = |code: &str| FourCc::new(code).expect("a valid FourCC");
        let all = |list: &[&str]| {
            std::iter::once("*")
                .chain(list.iter().copied())
                .map(|code| (fourcc(code), FOURCC_CAN_FORWARD))
                .collect()
        };
        EnhancedCapabilities {
            fourcc_list: VIDEO_FOURCCS.iter().chain(&AUDIO_FOURCCS).map(|code| fourcc(code)).collect(),
            video_fourcc_info: all(&VIDEO_FOURCCS),
            audio_fourcc_info: all(&AUDIO_FOURCCS),
            caps_ex: CAPS_EX_MULTITRACK | CAPS_EX_MOD_EX | CAPS_EX_TIMESTAMP_NANO_OFFSET,
        }
    }

    /// As properties of a `connect` object or `_result` object.
    pub fn to_properties(&self) -> Properties {
        let map = |entries: &[(FourCc, u32)]| {
            Amf0Value::Object(
                entries.iter().map(|(k, v)| (k.as_str().to_owned(), f64::from(*v).into())).collect(),
            )
        };
        vec![
            (
                "fourCcList".to_owned(),
                Amf0Value::StrictArray(self.fourcc_list.iter().map(|code| code.as_str().into()).collect()),
            ),
            ("videoFourCcInfoMap".to_owned(), map(&self.video_fourcc_info)),
            ("audioFourCcInfoMap".to_owned(), map(&self.audio_fourcc_info)),
            ("capsEx".to_owned(), f64::from(self.caps_ex).into()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_legacy() {
        let gateway = EnhancedCapabilities::gateway();
        assert!(gateway.is_enhanced());
        assert_eq!(EnhancedCapabilities::from_properties(&gateway.to_properties()), gateway);
        let legacy = vec![("app".to_owned(), Amf0Value::from("live"))];
        assert!(!EnhancedCapabilities::from_properties(&legacy).is_enhanced());
    }

    #[test]
    fn reads_what_clients_send() {
        // FFmpeg's -rtmp_enhanced_codecs: fourCcList only.
        let props = vec![(
            "fourCcList".to_owned(),
            Amf0Value::StrictArray(vec!["hvc1".into(), "av01".into(), "toolong".into()]),
        )];
        let caps = EnhancedCapabilities::from_properties(&props);
        assert_eq!(caps.fourcc_list, ["hvc1", "av01"]);
        assert!(caps.is_enhanced());
        let props = vec![
            ("capsEx".to_owned(), 2.0.into()),
            ("audioFourCcInfoMap".to_owned(), Amf0Value::object([("Opus", 1.0.into())])),
        ];
        let caps = EnhancedCapabilities::from_properties(&props);
        assert_eq!(caps.caps_ex, CAPS_EX_MULTITRACK);
        assert_eq!(caps.audio_fourcc_info, [(FourCc::new("Opus").unwrap(), FOURCC_CAN_DECODE)]);
    }

    #[test]
    fn fourccs_are_one_to_four_bytes_kept_inline() {
        assert_eq!(std::mem::size_of::<FourCc>(), 4);
        for code in ["*", ".mp3", "hvc1", "ac-3", "é"] {
            assert_eq!(FourCc::new(code).unwrap().as_str(), code);
        }
        for bad in ["", "toolong", "a\0b"] {
            assert!(FourCc::new(bad).is_none(), "{bad:?}");
        }
        // A map key longer than four bytes is ignored, as in the list.
        let props = vec![("videoFourCcInfoMap".to_owned(), Amf0Value::object([("hevc1", 1.0.into())]))];
        assert!(EnhancedCapabilities::from_properties(&props).video_fourcc_info.is_empty());
    }
}
