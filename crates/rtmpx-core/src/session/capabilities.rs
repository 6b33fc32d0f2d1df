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

/// What a peer announced. Empty: a legacy peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnhancedCapabilities {
    /// `fourCcList`: codecs the peer supports (any direction).
    pub fourcc_list: Vec<String>,
    /// `videoFourCcInfoMap`: FourCC and `FOURCC_CAN_*` flags.
    pub video_fourcc_info: Vec<(String, u32)>,
    /// `audioFourCcInfoMap`: FourCC and `FOURCC_CAN_*` flags.
    pub audio_fourcc_info: Vec<(String, u32)>,
    /// `capsEx` bits (`CAPS_EX_*`).
    pub caps_ex: u32,
}

fn fourcc_info(value: Option<&Amf0Value>) -> Vec<(String, u32)> {
    let Some(props) = value.and_then(Amf0Value::properties) else { return Vec::new() };
    props
        .iter()
        .filter(|(key, _)| key.len() <= 4)
        .filter_map(|(key, value)| Some((key.clone(), value.as_f64()? as u32)))
        .take(MAX_ENTRIES)
        .collect()
}

impl EnhancedCapabilities {
    /// Reads the properties of a `connect` command object or of a `_result` object.
    pub fn from_properties(props: &Properties) -> Self {
        let get = |key: &str| props.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        let fourcc_list = match get("fourCcList") {
            Some(Amf0Value::StrictArray(items)) => items
                .iter()
                .filter_map(Amf0Value::as_str)
                .filter(|code| code.len() <= 4)
                .take(MAX_ENTRIES)
                .map(str::to_owned)
                .collect(),
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
        let all = |list: &[&str]| {
            std::iter::once(("*".to_owned(), FOURCC_CAN_FORWARD))
                .chain(list.iter().map(|code| ((*code).to_owned(), FOURCC_CAN_FORWARD)))
                .collect()
        };
        EnhancedCapabilities {
            fourcc_list: VIDEO_FOURCCS.iter().chain(&AUDIO_FOURCCS).map(|code| (*code).to_owned()).collect(),
            video_fourcc_info: all(&VIDEO_FOURCCS),
            audio_fourcc_info: all(&AUDIO_FOURCCS),
            caps_ex: CAPS_EX_MULTITRACK | CAPS_EX_MOD_EX | CAPS_EX_TIMESTAMP_NANO_OFFSET,
        }
    }

    /// As properties of a `connect` object or `_result` object.
    pub fn to_properties(&self) -> Properties {
        let map = |entries: &[(String, u32)]| {
            Amf0Value::Object(entries.iter().map(|(k, v)| (k.clone(), f64::from(*v).into())).collect())
        };
        vec![
            (
                "fourCcList".to_owned(),
                Amf0Value::StrictArray(self.fourcc_list.iter().map(|c| c.as_str().into()).collect()),
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
        assert_eq!(caps.audio_fourcc_info, [("Opus".to_owned(), FOURCC_CAN_DECODE)]);
    }
}
