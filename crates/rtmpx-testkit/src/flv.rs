//! FLV files read tag by tag.

use std::fs;
use std::path::Path;

/// One FLV tag: type 8 audio, 9 video, 18 script data.
#[derive(Debug, Clone)]
pub struct FlvTag {
    pub tag_type: u8,
    /// Milliseconds, with the extension byte.
    pub timestamp: u32,
    pub data: Vec<u8>,
}

impl FlvTag {
    /// A script tag whose first AMF0 value is the string "onMetaData".
    pub fn is_on_metadata(&self) -> bool {
        const NAME: &[u8] = b"\x02\x00\x0aonMetaData";
        self.tag_type == 18 && self.data.starts_with(NAME)
    }

    /// A video tag with frame type 1 (keyframe) carrying media (not an AVC sequence header).
    pub fn is_video_keyframe(&self) -> bool {
        self.tag_type == 9 && self.data.first().is_some_and(|b| b >> 4 == 1)
    }
}

/// The tags of an FLV file (stops quietly at a truncated last tag, as players do).
pub fn flv_tags(path: &Path) -> Vec<FlvTag> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut tags = Vec::new();
    if bytes.len() < 9 || &bytes[..3] != b"FLV" {
        return tags;
    }
    let header_len = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) as usize;
    // Header, then PreviousTagSize0.
    let mut at = header_len + 4;
    while at + 11 <= bytes.len() {
        let h = &bytes[at..at + 11];
        let size = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
        let timestamp = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
        let end = at + 11 + size;
        if end > bytes.len() {
            break;
        }
        tags.push(FlvTag { tag_type: h[0] & 0x1f, timestamp, data: bytes[at + 11..end].to_vec() });
        at = end + 4;
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TempDir;

    #[test]
    fn flv_tags_are_read() {
        let dir = TempDir::new("flv-unit");
        let path = dir.file("t.flv");
        let mut flv = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00".to_vec();
        let data = b"\x02\x00\x0aonMetaData\x08\x00\x00\x00\x00\x00\x00\x09";
        flv.extend_from_slice(&[18, 0, 0, data.len() as u8, 0x00, 0x01, 0x02, 0x03, 0, 0, 0]);
        flv.extend_from_slice(data);
        flv.extend_from_slice(&(11 + data.len() as u32).to_be_bytes());
        flv.extend_from_slice(&[9, 0, 0, 5]); // truncated video tag
        fs::write(&path, flv).unwrap();
        let tags = flv_tags(&path);
        assert_eq!(tags.len(), 1);
        assert!(tags[0].is_on_metadata());
        assert_eq!(tags[0].timestamp, 0x0300_0102);
    }
}
