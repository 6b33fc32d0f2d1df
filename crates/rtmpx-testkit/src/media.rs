//! What a recording holds (ffprobe, a decode with ffmpeg) and the test source files.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{flv_tags, require_tool, run_bounded};

/// An H.264 (keyframe every second) and AAC FLV file of `seconds`, made by ffmpeg from testsrc
/// and a sine, for publishers that read a file.
pub fn make_testsrc_flv(path: &Path, seconds: u32) {
    require_tool("ffmpeg");
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"]);
    cmd.args([
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=25",
        "-f",
        "lavfi",
        "-i",
        "sine=sample_rate=44100",
    ]);
    cmd.args(["-t", &seconds.to_string(), "-c:v", "libx264", "-preset", "ultrafast", "-g", "25"]);
    cmd.args(["-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k", "-f", "flv"]).arg(path);
    let (status, _, err) = run_bounded(cmd, Duration::from_secs(60));
    assert!(status.success(), "making the source FLV: {err}");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    Video,
    Audio,
    Other,
}

#[derive(Debug, Clone)]
pub struct Packet {
    pub kind: PacketKind,
    /// Seconds; FLV stores dts, pts = dts + composition offset.
    pub dts: Option<f64>,
    pub pts: Option<f64>,
    pub keyframe: bool,
}

/// What a recorded FLV file holds, from ffprobe (packets, streams) and a scan of its tags.
#[derive(Debug, Clone, Default)]
pub struct ProbeReport {
    pub packets: Vec<Packet>,
    pub video_frames: usize,
    pub audio_frames: usize,
    pub first_video_is_keyframe: bool,
    /// Video dts never goes backwards.
    pub video_dts_monotonic: bool,
    /// Audio dts never goes backwards.
    pub audio_dts_monotonic: bool,
    /// Smallest dts of any audio or video packet (seconds).
    pub first_timestamp: Option<f64>,
    /// Largest dts of any audio or video packet (seconds).
    pub last_timestamp: Option<f64>,
    pub video_codec: Option<String>,
    pub audio_codec: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// The file has an `onMetaData` script tag.
    pub has_metadata: bool,
}

impl ProbeReport {
    /// One line for assertion messages.
    pub fn summary(&self) -> String {
        format!(
            "video={} ({:?} {:?}x{:?}, first key={}, monotonic={}) audio={} ({:?}, monotonic={}) ts={:?}..{:?} \
             metadata={}",
            self.video_frames,
            self.video_codec,
            self.width,
            self.height,
            self.first_video_is_keyframe,
            self.video_dts_monotonic,
            self.audio_frames,
            self.audio_codec,
            self.audio_dts_monotonic,
            self.first_timestamp,
            self.last_timestamp,
            self.has_metadata
        )
    }

    /// Seconds between the first and last video packet.
    pub fn video_span(&self) -> f64 {
        let times: Vec<f64> =
            self.packets.iter().filter(|p| p.kind == PacketKind::Video).filter_map(|p| p.dts).collect();
        match (times.first(), times.last()) {
            (Some(a), Some(b)) => b - a,
            _ => 0.0,
        }
    }
}

/// Runs ffprobe on a file (bounded to 60 s) and returns its stdout; panics on failure.
fn ffprobe(path: &Path, args: &[&str]) -> String {
    require_tool("ffprobe");
    let mut cmd = Command::new("ffprobe");
    cmd.args(["-v", "error"]).args(args).arg(path);
    let (status, stdout, stderr) = run_bounded(cmd, Duration::from_secs(60));
    assert!(status.success(), "ffprobe {args:?} {} failed ({status}): {stderr}", path.display());
    stdout
}

/// `key=value|key=value` (ffprobe's compact writer) → map.
fn compact_fields(line: &str) -> BTreeMap<&str, &str> {
    line.split('|').filter_map(|kv| kv.split_once('=')).collect()
}

/// Probes a recorded FLV file: its packets (kind, dts, pts, key flag), stream parameters and
/// whether it has onMetaData.
pub fn probe(path: &Path) -> ProbeReport {
    assert!(path.exists(), "{} was not written", path.display());
    let mut report = ProbeReport::default();

    let packets =
        ffprobe(path, &["-show_entries", "packet=codec_type,pts_time,dts_time,flags", "-of", "compact=p=0"]);
    for line in packets.lines() {
        let f = compact_fields(line);
        let kind = match f.get("codec_type").copied() {
            Some("video") => PacketKind::Video,
            Some("audio") => PacketKind::Audio,
            _ => PacketKind::Other,
        };
        let time = |k: &str| f.get(k).and_then(|v| v.parse::<f64>().ok());
        let keyframe = f.get("flags").is_some_and(|flags| flags.starts_with('K'));
        report.packets.push(Packet { kind, dts: time("dts_time"), pts: time("pts_time"), keyframe });
    }

    let mut last_video = f64::NEG_INFINITY;
    let mut last_audio = f64::NEG_INFINITY;
    report.video_dts_monotonic = true;
    report.audio_dts_monotonic = true;
    for p in &report.packets {
        let dts = p.dts.or(p.pts);
        match p.kind {
            PacketKind::Video => {
                if report.video_frames == 0 {
                    report.first_video_is_keyframe = p.keyframe;
                }
                report.video_frames += 1;
                if let Some(t) = dts {
                    report.video_dts_monotonic &= t >= last_video;
                    last_video = t;
                }
            }
            PacketKind::Audio => {
                report.audio_frames += 1;
                if let Some(t) = dts {
                    report.audio_dts_monotonic &= t >= last_audio;
                    last_audio = t;
                }
            }
            PacketKind::Other => continue,
        }
        if let Some(t) = dts {
            report.first_timestamp = Some(report.first_timestamp.map_or(t, |f| f.min(t)));
            report.last_timestamp = Some(report.last_timestamp.map_or(t, |l| l.max(t)));
        }
    }

    let streams =
        ffprobe(path, &["-show_entries", "stream=codec_type,codec_name,width,height", "-of", "compact=p=0"]);
    for line in streams.lines() {
        let f = compact_fields(line);
        let codec = f.get("codec_name").map(|s| s.to_string());
        match f.get("codec_type").copied() {
            Some("video") => {
                report.video_codec = codec;
                report.width = f.get("width").and_then(|v| v.parse().ok());
                report.height = f.get("height").and_then(|v| v.parse().ok());
            }
            Some("audio") => report.audio_codec = codec,
            _ => {}
        }
    }

    report.has_metadata = flv_tags(path).iter().any(|t| t.is_on_metadata());
    report
}

/// Decodes the whole file with ffmpeg; `Err` with ffmpeg's complaints if it fails or prints
/// any error.
pub fn decode_check(path: &Path) -> Result<(), String> {
    require_tool("ffmpeg");
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-nostdin", "-v", "error", "-i"]).arg(path).args(["-f", "null", "-"]);
    let (status, _, stderr) = run_bounded(cmd, Duration::from_secs(120));
    if status.success() && stderr.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("decoding {} ({status}): {stderr}", path.display()))
    }
}

/// Asserts what every good recording of the test source has: H.264 320x240 and AAC, at least
/// `min_video`/`min_audio` packets, a keyframe first, monotonic timestamps, a clean decode.
pub fn assert_good_recording(label: &str, path: &Path, min_video: usize, min_audio: usize) -> ProbeReport {
    let report = probe(path);
    let s = report.summary();
    eprintln!("[e2e] {label}: {s}");
    assert_eq!(report.video_codec.as_deref(), Some("h264"), "{label}: {s}");
    assert_eq!(report.audio_codec.as_deref(), Some("aac"), "{label}: {s}");
    assert_eq!((report.width, report.height), (Some(320), Some(240)), "{label}: {s}");
    assert!(report.video_frames >= min_video, "{label}: want >= {min_video} video frames: {s}");
    assert!(report.audio_frames >= min_audio, "{label}: want >= {min_audio} audio frames: {s}");
    assert!(report.first_video_is_keyframe, "{label}: first video frame is not a keyframe: {s}");
    assert!(report.video_dts_monotonic && report.audio_dts_monotonic, "{label}: timestamps go back: {s}");
    if let Err(e) = decode_check(path) {
        panic!("{label}: {e}");
    }
    report
}
