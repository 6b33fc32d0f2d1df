//! Real clients publishing and recording: ffmpeg, rtmpdump, GStreamer, python3-librtmp.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{python3_with_librtmp, require_tool, Proc, TempDir};

/// What [`publish`] sends.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub seconds: f64,
    pub size: &'static str,
    pub fps: u32,
    /// Constant video bitrate (x264 pads with filler), e.g. "2500k"; `None`: whatever x264 makes.
    pub video_cbr: Option<&'static str>,
    /// More output options before the URL, e.g. `-tls_verify 1 -ca_file ca.pem`.
    pub output_args: Vec<String>,
}

impl PublishOptions {
    pub fn new(seconds: f64) -> PublishOptions {
        PublishOptions { seconds, size: "320x240", fps: 25, video_cbr: None, output_args: Vec::new() }
    }
}

/// ffmpeg publishing `testsrc` (H.264, keyframe every second) and a 440 Hz sine (AAC) in real
/// time for `seconds`.
pub fn publish_testsrc(url: &str, seconds: f64) -> Proc {
    publish(url, &PublishOptions::new(seconds))
}

/// ffmpeg publishing the test source as `options` say.
pub fn publish(url: &str, options: &PublishOptions) -> Proc {
    require_tool("ffmpeg");
    publish_by(Path::new("ffmpeg"), url, options)
}

/// [`publish`] by another ffmpeg executable, e.g. [`ffmpeg9`](crate::ffmpeg9) (rtmps that
/// verifies certificates, rtmpte, Enhanced RTMP).
pub fn publish_by(ffmpeg: &Path, url: &str, options: &PublishOptions) -> Proc {
    let mut cmd = Command::new(ffmpeg);
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"]);
    cmd.args(["-f", "lavfi", "-i", &format!("testsrc=size={}:rate={}", options.size, options.fps)]);
    cmd.args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]);
    cmd.args(["-t", &options.seconds.to_string()]);
    cmd.args(["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency"]);
    cmd.args(["-g", &options.fps.to_string(), "-pix_fmt", "yuv420p"]);
    if let Some(rate) = options.video_cbr {
        cmd.args(["-b:v", rate, "-minrate", rate, "-maxrate", rate, "-bufsize", rate]);
        cmd.args(["-x264-params", "nal-hrd=cbr"]);
    }
    cmd.args(["-c:a", "aac", "-b:a", "64k", "-f", "flv"]).args(&options.output_args).arg(url);
    let budget = Duration::from_secs_f64(options.seconds) + Duration::from_secs(30);
    let name = ffmpeg.file_name().map_or("ffmpeg".into(), |n| n.to_string_lossy());
    Proc::spawn(&format!("{name}-publish"), cmd, None, budget)
}

/// ffmpeg playing `url` and copying `seconds` (of stream time) of it into the FLV file `out`,
/// unchanged except that timestamps start at 0. Gives up when
/// nothing arrives for 10 s (`-rw_timeout`), so a player started before the publisher waits.
pub fn record_ffmpeg(url: &str, out: &Path, seconds: f64) -> Proc {
    require_tool("ffmpeg");
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"]);
    cmd.args(["-rw_timeout", "10000000", "-i", url]);
    // -copyinkf: keep video before the first keyframe too, so the file shows where the
    // server started the player (ffmpeg drops those frames by default).
    cmd.args(["-t", &seconds.to_string(), "-c", "copy", "-copyinkf", "-f", "flv"]).arg(out);
    let budget = Duration::from_secs_f64(seconds) + Duration::from_secs(30);
    Proc::spawn("ffmpeg-record", cmd, None, budget)
}

/// rtmpdump saving the live stream `url` to `out` for `seconds` of wall time. rtmpdump's
/// `--stop` does not end a live recording, so the guard interrupts it (SIGINT: it closes the
/// file and exits with 2, "incomplete"); `-m 10` makes it give up after 10 s without data.
/// Unlike ffmpeg it writes tags exactly as received (timestamps, onMetaData).
pub fn record_rtmpdump(url: &str, out: &Path, seconds: f64) -> Proc {
    require_tool("rtmpdump");
    let mut cmd = Command::new("rtmpdump");
    cmd.args(["-q", "--live", "-m", "10", "-r", url, "-o"]).arg(out);
    let wall = Duration::from_secs_f64(seconds);
    Proc::spawn("rtmpdump", cmd, Some(wall), wall + Duration::from_secs(30))
}

/// GStreamer's `rtmp2src` saving the live stream `url` (an FLV byte stream, header included) to
/// `out` for `seconds` of wall time; SIGINT with `-e` ends it with an EOS, so the file is whole.
pub fn record_gstreamer(url: &str, out: &Path, seconds: f64) -> Proc {
    require_tool("gstreamer");
    let mut cmd = Command::new("gst-launch-1.0");
    cmd.args(["-q", "-e", "rtmp2src"]).arg(format!("location={url}"));
    cmd.args(["!", "filesink"]).arg(format!("location={}", out.display()));
    let wall = Duration::from_secs_f64(seconds);
    Proc::spawn("gstreamer", cmd, Some(wall), wall + Duration::from_secs(30))
}

/// The audio and video tags of an FLV file written one by one with librtmp's RTMP_Write, paced
/// by their timestamps (script tags and the file header crash python3-librtmp's RTMP_Write).
/// Exits 3 when the publish is refused.
const LIBRTMP_PUBLISHER: &str = r#"
import sys, time, librtmp
url, path = sys.argv[1], sys.argv[2]
data = open(path, 'rb').read()
conn = librtmp.RTMP(url, live=True)
conn.connect()
try:
    stream = conn.create_stream(writeable=True)
except Exception as e:
    print("refused:", e)
    sys.exit(3)
pos, start, tags = 13, time.time(), 0
while pos + 11 <= len(data):
    kind, size = data[pos], int.from_bytes(data[pos+1:pos+4], 'big')
    ts = int.from_bytes(data[pos+4:pos+7], 'big') | (data[pos+7] << 24)
    tag = data[pos:pos+15+size]
    pos += 15 + size
    if kind not in (8, 9):
        continue
    delay = ts / 1000.0 - (time.time() - start)
    if delay > 0:
        time.sleep(delay)
    stream.write(tag)
    tags += 1
stream.close()
conn.close()
print("tags", tags)
"#;

/// python3-librtmp publishing `flv` (see [`make_testsrc_flv`]) to `url` (any librtmp scheme:
/// rtmp, rtmpe, rtmpt, rtmpte, rtmps) in real time. The script lives in `dir`.
pub fn publish_librtmp(url: &str, flv: &Path, dir: &TempDir) -> Proc {
    let python = python3_with_librtmp()
        .unwrap_or_else(|| panic!("python3-librtmp is missing (scripts/test.sh installs it)"));
    let script = dir.file("librtmp_publish.py");
    if !script.exists() {
        fs::write(&script, LIBRTMP_PUBLISHER).expect("writing the librtmp publisher script");
    }
    let mut cmd = Command::new(python);
    cmd.arg(&script).arg(url).arg(flv);
    Proc::spawn("librtmp-publish", cmd, None, Duration::from_secs(60))
}
