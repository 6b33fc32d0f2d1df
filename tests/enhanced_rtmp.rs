//! Enhanced RTMP v2 end to end with FFmpeg 9: multitrack audio and video, AV1 + Opus, late
//! joiners that must get every track's sequence start, the same through a push relay between
//! two rtmpx nodes, and legacy players (rtmpdump, Debian's FFmpeg 5.1, a push to nginx-rtmp)
//! that must get only the default tracks in legacy tags.
//!
//! FFmpeg's player cannot extend its `connect` object; `-rtmp_conn "O:1 NN:capsEx:2 O:0"`
//! announces Multitrack in an object argument, which rtmpx reads as the command object's.

use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Duration;

use rtmpx_testkit::{
    admin_addr, assert_good_recording, exclusive, ffmpeg9, flv_tags, http, metrics, record_ffmpeg,
    record_gstreamer, record_rtmpdump, require_tool, run_bounded, Gateway, NginxRtmp, Proc, TempDir,
};

const LOG_WAIT: Duration = Duration::from_secs(20);

/// A player joins this long after the publisher started: after the first keyframes and
/// sequence starts went by.
const LATE: Duration = Duration::from_secs(3);

fn wait_line(gw: &Gateway, needles: &[&str]) -> String {
    gw.wait_for_log_line(needles, LOG_WAIT)
        .unwrap_or_else(|| panic!("no log line with {needles:?}; log:\n{}", gw.logs()))
}

/// FFmpeg 9 publishing lavfi sources in real time: `streams` are the `-map`/codec arguments.
fn publish_ffmpeg9(url: &str, seconds: u32, streams: &[&str]) -> Proc {
    let mut cmd = Command::new(ffmpeg9());
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"]);
    cmd.args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"]);
    cmd.args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]);
    cmd.args(["-f", "lavfi", "-i", "sine=frequency=880:sample_rate=44100"]);
    cmd.args(streams);
    cmd.args(["-g", "25", "-t", &seconds.to_string(), "-f", "flv", url]);
    Proc::spawn("ffmpeg9-publish", cmd, None, Duration::from_secs(u64::from(seconds) + 60))
}

/// Two AAC tracks (48 kHz default track, 44.1 kHz track 1) and H.264.
const TWO_AUDIO_TRACKS: &[&str] =
    &["-map", "0:v", "-map", "1:a", "-map", "2:a", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"];

/// FFmpeg 9 playing `url` into a Matroska file (which holds any number of tracks of any codec).
fn record_ffmpeg9(url: &str, out: &Path, seconds: f64, enhanced: bool) -> Proc {
    let mut cmd = Command::new(ffmpeg9());
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "warning", "-y", "-rw_timeout", "10000000"]);
    if enhanced {
        cmd.args(["-rtmp_conn", "O:1 NN:capsEx:2 O:0"]);
    }
    cmd.args(["-i", url, "-map", "0:v?", "-map", "0:a?", "-c", "copy", "-t", &seconds.to_string()]);
    cmd.args(["-f", "matroska"]).arg(out);
    Proc::spawn("ffmpeg9-record", cmd, None, Duration::from_secs_f64(seconds) + Duration::from_secs(40))
}

/// One stream of a recording, decoded by ffprobe (`-count_frames`).
#[derive(Debug, PartialEq)]
struct Decoded {
    kind: String,
    codec: String,
    /// Sample rate for audio, width for video.
    param: u32,
    frames: u32,
}

fn decoded_streams(path: &Path) -> Vec<Decoded> {
    require_tool("ffprobe");
    assert!(path.exists(), "{} was not written", path.display());
    let mut cmd = Command::new("ffprobe");
    cmd.args(["-v", "error", "-count_frames", "-show_entries"]);
    cmd.args(["stream=codec_type,codec_name,sample_rate,width,nb_read_frames", "-of", "compact=p=0"]);
    cmd.arg(path);
    let (status, out, err) = run_bounded(cmd, Duration::from_secs(120));
    assert!(status.success(), "ffprobe {}: {err}", path.display());
    out.lines()
        .map(|line| {
            let field = |key: &str| {
                line.split('|')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                    .unwrap_or("")
                    .to_owned()
            };
            let kind = field("codec_type");
            let param = if kind == "audio" { field("sample_rate") } else { field("width") };
            Decoded {
                codec: field("codec_name"),
                param: param.parse().unwrap_or(0),
                frames: field("nb_read_frames").parse().unwrap_or(0),
                kind,
            }
        })
        .collect()
}

/// Checks that every stream of `path` has the expected (kind, codec, param) and decoded at
/// least `min_frames` frames, and that FFmpeg 9 decodes the whole file without an error.
fn assert_every_track_decodes(label: &str, path: &Path, expected: &[(&str, &str, u32)], min_frames: u32) {
    let streams = decoded_streams(path);
    eprintln!("[e2e] {label}: {streams:?}");
    let got: Vec<(&str, &str, u32)> =
        streams.iter().map(|s| (s.kind.as_str(), s.codec.as_str(), s.param)).collect();
    assert_eq!(got, expected, "{label}: streams");
    for stream in &streams {
        assert!(stream.frames >= min_frames, "{label}: too few decoded frames in {stream:?}");
    }
    let mut cmd = Command::new(ffmpeg9());
    cmd.args(["-hide_banner", "-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0", "-f", "null", "-"]);
    let (status, _, err) = run_bounded(cmd, Duration::from_secs(120));
    assert!(status.success() && err.trim().is_empty(), "{label}: decoding failed ({status}): {err}");
}

/// No tag of an FLV recording is in Enhanced RTMP form.
fn assert_only_legacy_tags(label: &str, path: &Path) {
    let tags = flv_tags(path);
    assert!(!tags.is_empty(), "{label}: empty recording");
    for tag in &tags {
        let first = tag.data.first().copied().unwrap_or(0);
        let enhanced = match tag.tag_type {
            8 => first >> 4 == 9,
            9 => first & 0x80 != 0,
            _ => false,
        };
        assert!(!enhanced, "{label}: an Enhanced RTMP tag reached a legacy player: {:02x?}", &tag.data[..8]);
    }
}

fn admin_config() -> &'static str {
    r#"
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:0"

[[app]]
name = "live"

[admin]
addr = "127.0.0.1:0"
"#
}

#[test]
fn multitrack_audio_reaches_late_players_enhanced_with_every_track_legacy_with_the_default_one() {
    let _serial = exclusive();
    for tool in ["ffmpeg", "ffprobe", "rtmpdump", "gstreamer"] {
        require_tool(tool);
    }
    let dir = TempDir::new("ertmp-audio");
    let gw = Gateway::start(admin_config());
    let url = gw.url("rtmp", "live", "mt");
    let mut publisher = publish_ffmpeg9(&url, 14, TWO_AUDIO_TRACKS);
    wait_line(&gw, &["publishing", "live/mt"]);
    thread::sleep(LATE);

    let enhanced_out = dir.file("enhanced.mkv");
    let mut enhanced = record_ffmpeg9(&url, &enhanced_out, 5.0, true);
    let mut legacy_ffmpeg = record_ffmpeg(&url, &dir.file("ffmpeg51.flv"), 5.0);
    let mut legacy_rtmpdump = record_rtmpdump(&url, &dir.file("rtmpdump.flv"), 6.0);
    let mut legacy_gstreamer = record_gstreamer(&url, &dir.file("gstreamer.flv"), 6.0);
    assert!(gw.wait_for_log_count("playing", 4, LOG_WAIT), "{}", gw.logs());
    thread::sleep(Duration::from_secs(2));

    // The API, the metrics and the status page see every track and who is legacy.
    let admin = admin_addr(&gw);
    let streams: serde_json::Value =
        serde_json::from_str(&http(admin, "GET", "/api/v1/streams", None).body).unwrap();
    let stream = &streams.as_array().unwrap()[0];
    let tracks: Vec<String> = stream["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| format!("{}{}:{}", t["kind"].as_str().unwrap(), t["id"], t["codec"].as_str().unwrap()))
        .collect();
    assert_eq!(tracks, ["video0:h264", "audio0:aac", "audio1:aac"], "{stream}");
    assert_eq!(stream["legacy_players"], 3, "{stream}");
    let sessions: serde_json::Value =
        serde_json::from_str(&http(admin, "GET", "/api/v1/sessions", None).body).unwrap();
    let enhanced_players = sessions
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["role"] == "player" && s["enhanced"] == true)
        .count();
    assert_eq!(enhanced_players, 1, "{sessions}");
    let text = metrics(admin);
    assert!(
        text.contains(r#"rtmpx_stream_track{app="live",stream="mt",kind="audio",track="1",codec="aac"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"rtmpx_stream_legacy_players{app="live",stream="mt"} 3"#), "{text}");

    assert!(enhanced.finish().success(), "{}", enhanced.describe());
    assert!(legacy_ffmpeg.finish().success(), "{}", legacy_ffmpeg.describe());
    legacy_rtmpdump.finish();
    legacy_gstreamer.finish();
    assert!(publisher.finish().success(), "{}", publisher.describe());

    // The late enhanced player: video and both audio tracks, each with its own configuration.
    assert_every_track_decodes(
        "enhanced late player",
        &enhanced_out,
        &[("video", "h264", 320), ("audio", "aac", 48000), ("audio", "aac", 44100)],
        60,
    );
    // Legacy players: a clean file of the default tracks, never an Enhanced RTMP tag.
    for name in ["ffmpeg51.flv", "rtmpdump.flv", "gstreamer.flv"] {
        let path = dir.file(name);
        assert_only_legacy_tags(name, &path);
        assert_good_recording(name, &path, 60, 100);
        let audio: Vec<u32> =
            decoded_streams(&path).iter().filter(|s| s.kind == "audio").map(|s| s.param).collect();
        assert_eq!(audio, [48000], "{name}: only the default audio track");
    }
}

#[test]
fn av1_with_opus_and_two_video_renditions_reach_a_late_enhanced_player() {
    let _serial = exclusive();
    require_tool("ffprobe");
    let dir = TempDir::new("ertmp-av1");
    let gw = Gateway::start_default();

    let av1_url = gw.url("rtmp", "live", "av1");
    let streams = ["-map", "0:v", "-map", "1:a", "-c:v", "libsvtav1", "-preset", "12", "-c:a", "libopus"];
    let mut publisher = publish_ffmpeg9(&av1_url, 10, &streams);
    wait_line(&gw, &["publishing", "live/av1"]);
    thread::sleep(LATE);
    let av1_out = dir.file("av1.mkv");
    let mut player = record_ffmpeg9(&av1_url, &av1_out, 4.0, true);
    // A legacy player of an AV1 + Opus stream gets nothing it cannot parse (here: nothing at all).
    let legacy_out = dir.file("legacy.flv");
    let mut legacy = record_rtmpdump(&av1_url, &legacy_out, 3.0);
    assert!(player.finish().success(), "{}", player.describe());
    legacy.finish();
    assert!(publisher.finish().success(), "{}", publisher.describe());
    assert_every_track_decodes(
        "AV1 + Opus late player",
        &av1_out,
        &[("video", "av1", 320), ("audio", "opus", 48000)],
        50,
    );
    // rtmpdump writes its file once something arrives; it may get onMetaData, never media.
    if legacy_out.exists() {
        let media = flv_tags(&legacy_out).iter().filter(|tag| tag.tag_type != 18).count();
        assert_eq!(media, 0, "AV1/Opus tags reached a legacy player");
    }

    // Two H.264 renditions: FFmpeg 9 sends the second as multitrack video, track 1.
    let url = gw.url("rtmp", "live", "renditions");
    let streams = [
        "-map",
        "0:v",
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-s:v:1",
        "160x120",
        "-c:a",
        "aac",
    ];
    let mut publisher = publish_ffmpeg9(&url, 10, &streams);
    wait_line(&gw, &["publishing", "live/renditions"]);
    thread::sleep(LATE);
    let out = dir.file("renditions.mkv");
    let mut player = record_ffmpeg9(&url, &out, 4.0, true);
    let legacy_out = dir.file("renditions-legacy.flv");
    let mut legacy = record_ffmpeg(&url, &legacy_out, 4.0);
    assert!(player.finish().success(), "{}", player.describe());
    assert!(legacy.finish().success(), "{}", legacy.describe());
    assert!(publisher.finish().success(), "{}", publisher.describe());
    assert_every_track_decodes(
        "two renditions late player",
        &out,
        &[("video", "h264", 320), ("video", "h264", 160), ("audio", "aac", 48000)],
        50,
    );
    assert_only_legacy_tags("legacy player of two renditions", &legacy_out);
    assert_good_recording("legacy player of two renditions", &legacy_out, 50, 80);
}

#[test]
fn push_relays_forward_every_track_to_rtmpx_and_the_default_tracks_to_nginx_rtmp() {
    let _serial = exclusive();
    for tool in ["ffmpeg", "ffprobe", "rtmpdump", "nginx"] {
        require_tool(tool);
    }
    let dir = TempDir::new("ertmp-relay");
    let nginx = NginxRtmp::start();
    let origin = Gateway::start_default();
    let origin_port = origin.addr("rtmp").port();
    let edge = Gateway::start(&format!(
        r#"
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:0"

[[app]]
name = "live"
push = [{{ url = "rtmp://127.0.0.1:{origin_port}/live" }}, {{ url = "rtmp://127.0.0.1:{nginx_port}/live" }}]

[relay]
backoff_initial_ms = 200
"#,
        nginx_port = nginx.port()
    ));
    let mut publisher = publish_ffmpeg9(&edge.url("rtmp", "live", "relayed"), 14, TWO_AUDIO_TRACKS);
    wait_line(&edge, &[&format!("-> rtmp://127.0.0.1:{origin_port}/live"), "connected over rtmp"]);
    let legacy_line = wait_line(&edge, &["the upstream is a legacy server"]);
    assert!(legacy_line.contains(&nginx.port().to_string()), "{legacy_line}");
    assert_eq!(
        edge.count_log("the upstream is a legacy server"),
        1,
        "rtmpx answered as enhanced: {}",
        edge.logs()
    );
    wait_line(&origin, &["publishing", "live/relayed"]);
    thread::sleep(LATE);

    let origin_out = dir.file("origin.mkv");
    let mut origin_player = record_ffmpeg9(&origin.url("rtmp", "live", "relayed"), &origin_out, 5.0, true);
    let nginx_out = dir.file("nginx.flv");
    let mut nginx_player = record_rtmpdump(&nginx.url("live", "relayed"), &nginx_out, 6.0);
    assert!(origin_player.finish().success(), "{}", origin_player.describe());
    nginx_player.finish();
    assert!(publisher.finish().success(), "{}", publisher.describe());

    assert_every_track_decodes(
        "late player on the origin, through the push relay",
        &origin_out,
        &[("video", "h264", 320), ("audio", "aac", 48000), ("audio", "aac", 44100)],
        60,
    );
    assert_only_legacy_tags("player of nginx-rtmp, through the push relay", &nginx_out);
    assert_good_recording("player of nginx-rtmp, through the push relay", &nginx_out, 60, 100);
}

/// Malformed multitrack messages (a track size beyond the message, a truncated FourCC, a
/// reserved packet type): each closes its own publisher with a line that says why, while a
/// healthy stream and its player carry on.
#[test]
fn malformed_multitrack_messages_close_only_their_publisher() {
    let _serial = exclusive();
    require_tool("ffprobe");
    let dir = TempDir::new("ertmp-malformed");
    let gw = Gateway::start_default();
    let healthy_url = gw.url("rtmp", "live", "healthy");
    let mut publisher = publish_ffmpeg9(&healthy_url, 10, TWO_AUDIO_TRACKS);
    wait_line(&gw, &["publishing", "live/healthy"]);
    let out = dir.file("healthy.mkv");
    let mut player = record_ffmpeg9(&healthy_url, &out, 6.0, true);
    wait_line(&gw, &["playing", "live/healthy"]);

    let cases: [(&str, &[u8], &str); 3] = [
        ("audio", b"\x95\x11mp4a\x00\x00\x00\x01\xAA\x01\x00\x00\x10\xBB", "track size beyond the message"),
        ("video", b"\x96\x10av", "truncated FourCC"),
        ("audio", b"\x93Opus\x00", "unknown audio packet type"),
    ];
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for (n, (kind, payload, reason)) in cases.into_iter().enumerate() {
        let url = rtmpx_client::RtmpUrl::parse(&gw.url("rtmp", "live", &format!("bad{n}"))).unwrap();
        let closed_by_server = runtime.block_on(async {
            let options = rtmpx_client::ClientOptions::default();
            let mut conn = rtmpx_client::Connection::connect(&url, &options).await.unwrap();
            let stream_id = conn.publish(&url.stream).await.unwrap();
            let kind =
                if kind == "audio" { rtmpx_client::MediaKind::Audio } else { rtmpx_client::MediaKind::Video };
            conn.send(stream_id, kind, 0, payload).await.unwrap();
            conn.flush().await.unwrap();
            let end = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match conn.next_event().await {
                        Ok(Some(_)) => continue,
                        Ok(None) | Err(_) => return true,
                    }
                }
            });
            end.await.unwrap_or(false)
        });
        assert!(closed_by_server, "the gateway kept a publisher that sent {payload:02x?}");
        let line = wait_line(&gw, &[&format!("stream=live/bad{n}"), "closed"]);
        assert!(line.contains(&format!("malformed enhanced media: {reason}")), "{line}");
    }

    assert!(player.finish().success(), "{}", player.describe());
    assert!(publisher.finish().success(), "{}", publisher.describe());
    assert_eq!(gw.count_log("stream=live/healthy role=publisher"), 1, "{}", gw.logs());
    assert_every_track_decodes(
        "player of the healthy stream",
        &out,
        &[("video", "h264", 320), ("audio", "aac", 48000), ("audio", "aac", 44100)],
        100,
    );
}
