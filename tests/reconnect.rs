//! Enhanced RTMP reconnect requests end to end: rtmpx relays (push and pull) move when their
//! upstream asks, through the admin API and on a graceful shutdown, and players downstream
//! record every frame with no gap; FFmpeg 9, which does not announce the capability, is not
//! asked, and keeps publishing when asked anyway.

use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use rtmpx_testkit::{
    admin_addr, assert_good_recording, exclusive, ffmpeg9, flv_tags, http, publish_testsrc, record_ffmpeg,
    require_tool, Gateway, Proc, TempDir,
};

const LOG_WAIT: Duration = Duration::from_secs(20);

fn require_clients() {
    for tool in ["ffmpeg", "ffprobe"] {
        require_tool(tool);
    }
}

fn wait_line(gw: &Gateway, needles: &[&str]) -> String {
    gw.wait_for_log_line(needles, LOG_WAIT)
        .unwrap_or_else(|| panic!("no log line with {needles:?}; log:\n{}", gw.logs()))
}

/// The video tags (timestamp ms, payload) of an FLV recording.
fn video_tags(path: &Path) -> Vec<(u32, Vec<u8>)> {
    flv_tags(path)
        .into_iter()
        .filter(|t| t.tag_type == 9 && t.data.get(1) == Some(&1))
        .map(|t| (t.timestamp, t.data))
        .collect()
}

/// Checks `recording` against `reference` (the same stream recorded where no reconnect
/// happened): its pictures are a contiguous run of the reference's (none missing, none
/// repeated, same order), and no two consecutive ones are more than 0.5 s apart. Returns the
/// number of pictures and the largest gap in ms.
fn assert_every_picture_once(label: &str, recording: &Path, reference: &Path) -> (usize, u32) {
    let reference = video_tags(reference);
    let tags = video_tags(recording);
    assert!(tags.len() > 100, "{label}: only {} pictures", tags.len());
    // testsrc repeats pictures now and then: align the whole run, not picture by picture.
    let matching =
        |start: usize| tags.iter().zip(&reference[start..]).take_while(|((_, a), (_, b))| a == b).count();
    let best = (0..reference.len()).map(|start| (matching(start), start)).max().unwrap_or((0, 0));
    if best.0 < tags.len() {
        let at = tags[best.0].0;
        let before = if best.0 > 0 { tags[best.0 - 1].0 } else { 0 };
        panic!(
            "{label}: {} of {} pictures follow the reference; then the picture at {at} ms (after {before} ms) \
             is not the next one: missing, repeated or out of order",
            best.0,
            tags.len()
        );
    }
    let largest_gap = tags.windows(2).map(|w| w[1].0.saturating_sub(w[0].0)).max().unwrap_or(0);
    assert!(largest_gap <= 500, "{label}: a video gap of {largest_gap} ms");
    (tags.len(), largest_gap)
}

/// The ids of the sessions on `stream` with `role`, from `/api/v1/sessions`.
fn sessions(admin: std::net::SocketAddr, stream: &str, role: &str) -> Vec<u64> {
    let reply = http(admin, "GET", "/api/v1/sessions", None);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let all: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON");
    all.as_array()
        .expect("an array")
        .iter()
        .filter(|s| s["stream"].as_str() == Some(stream) && s["role"].as_str() == Some(role))
        .filter_map(|s| s["id"].as_u64())
        .collect()
}

/// `POST path` with a JSON body; returns (status, body).
fn post_json(addr: std::net::SocketAddr, path: &str, json: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connecting to admin");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{json}",
        json.len()
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("reading the admin reply");
    let status = raw.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code");
    (status, raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

fn origin_config(extra: &str) -> String {
    format!(
        r#"
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:0"

[[app]]
name = "live"

[admin]
addr = "127.0.0.1:0"
{extra}
"#
    )
}

/// An edge that pushes `live` to `origin_port` and pulls `edge` from it.
fn edge_config(origin_port: u16) -> String {
    format!(
        r#"
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:0"

[[app]]
name = "live"
push = [{{ url = "rtmp://127.0.0.1:{origin_port}/live" }}]

[[app]]
name = "edge"
pull = {{ url = "rtmp://127.0.0.1:{origin_port}/live", linger_secs = 0 }}

[relay]
backoff_initial_ms = 200
backoff_max_ms = 1000
"#
    )
}

#[test]
fn admin_reconnect_moves_a_push_and_a_pull_without_a_gap() {
    let _serial = exclusive();
    require_clients();
    let origin = Gateway::start(&origin_config(""));
    let admin = admin_addr(&origin);
    let edge = Gateway::start(&edge_config(origin.addr("rtmp").port()));
    let dir = TempDir::new("reconnect-admin");

    let mut publisher = publish_testsrc(&edge.url("rtmp", "live", "cam"), 16.0);
    wait_line(&edge, &["relay push live/cam", "connected over rtmp"]);
    let reference_file = dir.file("reference.flv");
    let mut reference = record_ffmpeg(&edge.url("rtmp", "live", "cam"), &reference_file, 13.0);
    thread::sleep(Duration::from_millis(500));
    // Downstream of the push (a player on the origin) and of the pull (a player on the edge).
    let pushed_file = dir.file("pushed.flv");
    let mut pushed = record_ffmpeg(&origin.url("rtmp", "live", "cam"), &pushed_file, 10.0);
    let pulled_file = dir.file("pulled.flv");
    let mut pulled = record_ffmpeg(&edge.url("rtmp", "edge", "cam"), &pulled_file, 10.0);
    wait_line(&edge, &["relay pull edge/cam", "connected over rtmp"]);
    thread::sleep(Duration::from_secs(3));

    // On the origin: the edge's push (publisher) and pull (player), and ffmpeg's player.
    let push_session = sessions(admin, "cam", "publisher");
    assert_eq!(push_session.len(), 1, "one publisher");
    let mut moved = 0;
    for id in sessions(admin, "cam", "player") {
        let reply = http(admin, "POST", &format!("/api/v1/sessions/{id}/reconnect"), None);
        match reply.status {
            202 => moved += 1,
            // ffmpeg's player did not announce capsEx Reconnect.
            409 => assert!(reply.body.contains("capsEx"), "{}", reply.body),
            other => panic!("reconnect of player {id}: {other} {}", reply.body),
        }
    }
    assert_eq!(moved, 1, "exactly one player (the edge's pull) follows reconnect requests");
    let reply = http(admin, "POST", &format!("/api/v1/sessions/{}/reconnect", push_session[0]), None);
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(http(admin, "POST", "/api/v1/sessions/999999/reconnect", None).status, 404);
    assert_eq!(
        http(admin, "GET", &format!("/api/v1/sessions/{}/reconnect", push_session[0]), None).status,
        405
    );

    wait_line(&origin, &["reconnect request sent", "operator"]);
    let took_over = wait_line(&origin, &["publishing (taking over"]);
    assert!(took_over.contains("live/cam"), "{took_over}");
    wait_line(&edge, &["relay push live/cam: moved to rtmp://127.0.0.1"]);
    wait_line(&edge, &["relay pull edge/cam: moved to rtmp://127.0.0.1"]);

    for recorder in [&mut pushed, &mut pulled, &mut reference] {
        assert!(recorder.finish().success(), "{}", recorder.describe());
    }
    let _ = publisher.finish();
    for (label, file) in [("player on the origin", &pushed_file), ("player of the pull", &pulled_file)] {
        let report = assert_good_recording(label, file, 200, 300);
        assert!(report.video_span() >= 9.5, "{label}: {}", report.summary());
        let (pictures, gap) = assert_every_picture_once(label, file, &reference_file);
        eprintln!("[e2e] {label}: {pictures} pictures, each once, largest gap {gap} ms");
    }
    // The old connections left cleanly, and nothing retried.
    assert_eq!(edge.count_log("retrying in"), 0, "{}", edge.logs());
}

#[test]
fn an_origin_shutting_down_sends_its_relays_to_the_replacement_origin() {
    let _serial = exclusive();
    require_clients();
    let replacement = Gateway::start(&origin_config(""));
    let next_url = format!("rtmp://127.0.0.1:{}", replacement.addr("rtmp").port());
    let mut origin = Gateway::start(&origin_config(&format!(
        "[server]\nreconnect_url = \"{next_url}\"\nshutdown_grace_secs = 20\n"
    )));
    let edge = Gateway::start(&edge_config(origin.addr("rtmp").port()));
    let dir = TempDir::new("reconnect-drain");

    let mut publisher = publish_testsrc(&edge.url("rtmp", "live", "cam"), 16.0);
    wait_line(&edge, &["relay push live/cam", "connected over rtmp"]);
    let reference_file = dir.file("reference.flv");
    let mut reference = record_ffmpeg(&edge.url("rtmp", "live", "cam"), &reference_file, 13.0);
    thread::sleep(Duration::from_millis(500));
    let pulled_file = dir.file("pulled.flv");
    let mut pulled = record_ffmpeg(&edge.url("rtmp", "edge", "cam"), &pulled_file, 10.0);
    wait_line(&edge, &["relay pull edge/cam", "connected over rtmp"]);
    thread::sleep(Duration::from_secs(3));

    let stopping = Instant::now();
    origin.signal("TERM");
    let asked = wait_line(&origin, &["asked the clients that follow Enhanced RTMP reconnect requests"]);
    assert!(asked.contains("sessions=2") && asked.contains(&next_url), "{asked}");
    wait_line(&edge, &["relay push live/cam: moved to", &next_url]);
    wait_line(&edge, &["relay pull edge/cam: moved to", &next_url]);
    // Its clients gone, the old origin exits long before its grace period ends.
    let status = origin.wait_exit(Duration::from_secs(15)).expect("the origin did not exit");
    assert!(status.success(), "{status}");
    let drained_in = stopping.elapsed();
    assert!(drained_in < Duration::from_secs(12), "drain took {drained_in:?}");
    wait_line(&replacement, &["publishing", "live/cam"]);

    for recorder in [&mut pulled, &mut reference] {
        assert!(recorder.finish().success(), "{}", recorder.describe());
    }
    let _ = publisher.finish();
    let report = assert_good_recording("player of the pull", &pulled_file, 200, 300);
    assert!(report.video_span() >= 9.5, "{}", report.summary());
    let (pictures, gap) = assert_every_picture_once("player of the pull", &pulled_file, &reference_file);
    eprintln!(
        "[e2e] drain: origin gone in {drained_in:?}; {pictures} pictures, each once, largest gap {gap} ms"
    );
    assert_eq!(edge.count_log("retrying in"), 0, "{}", edge.logs());
}

/// FFmpeg 9 announces Enhanced RTMP codecs (`fourCcList`) but not `capsEx`, and has no reconnect
/// handling: rtmpx does not ask it, and when an operator forces the request it ignores the
/// status and keeps publishing.
#[test]
fn ffmpeg9_is_not_asked_to_reconnect_and_ignores_a_forced_request() {
    let _serial = exclusive();
    require_clients();
    let ffmpeg = ffmpeg9();
    let gw = Gateway::start(&origin_config(""));
    let admin = admin_addr(&gw);
    let dir = TempDir::new("reconnect-ffmpeg9");
    let mut cmd = Command::new(ffmpeg);
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"]);
    cmd.args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"]);
    cmd.args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "10"]);
    cmd.args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p"]);
    cmd.args(["-c:a", "aac", "-f", "flv"]).arg(gw.url("rtmp", "live", "ff9"));
    let mut publisher = Proc::spawn("ffmpeg9-publish", cmd, None, Duration::from_secs(40));
    wait_line(&gw, &["publishing", "live/ff9"]);
    let out = dir.file("ff9.flv");
    let mut player = record_ffmpeg(&gw.url("rtmp", "live", "ff9"), &out, 7.0);
    thread::sleep(Duration::from_secs(2));

    let id = sessions(admin, "ff9", "publisher")[0];
    let refused = http(admin, "POST", &format!("/api/v1/sessions/{id}/reconnect"), None);
    assert_eq!(refused.status, 409, "FFmpeg 9 announced no capsEx: {}", refused.body);
    let forced = http(
        admin,
        "POST",
        &format!("/api/v1/sessions/{id}/reconnect?force=1&tcUrl=rtmp%3A%2F%2F127.0.0.1%3A9%2Flive"),
        None,
    );
    assert_eq!(forced.status, 202, "{}", forced.body);
    assert!(
        forced.body.contains("\"capable\": false") && forced.body.contains("rtmp://127.0.0.1:9/live"),
        "{}",
        forced.body
    );
    let sent = wait_line(&gw, &["reconnect request sent"]);
    assert!(sent.contains("rtmp://127.0.0.1:9/live"), "{sent}");
    // The JSON form, and a body that is not one.
    let path = format!("/api/v1/sessions/{id}/reconnect?force=1");
    let (status, body) = post_json(admin, &path, r#"{"tcUrl": 9}"#);
    assert_eq!(status, 400, "{body}");
    let (status, body) = post_json(admin, &path, r#"{"tcUrl": "rtmp://127.0.0.1:9/json"}"#);
    assert_eq!(status, 202, "{body}");
    wait_line(&gw, &["reconnect request sent", "rtmp://127.0.0.1:9/json"]);

    assert!(player.finish().success(), "{}", player.describe());
    assert!(publisher.finish().success(), "FFmpeg 9 failed after the request: {}", publisher.describe());
    let report = assert_good_recording("player of FFmpeg 9", &out, 150, 250);
    assert!(report.video_span() >= 6.5, "{}", report.summary());
    let times: Vec<u32> = video_tags(&out).iter().map(|(ts, _)| *ts).collect();
    let gap = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    assert!(gap <= 500, "a video gap of {gap} ms");
    // One publish from start to end: FFmpeg neither left nor came back.
    assert_eq!(gw.count_log("publishing"), 1, "{}", gw.logs());
    let closed = wait_line(&gw, &["session", "closed", "role=publisher"]);
    assert!(!closed.contains("Kicked"), "{closed}");
}
