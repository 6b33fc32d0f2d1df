//! Operations end to end: the admin listener (`/metrics`, the JSON API, kicking, the status page
//! in headless Chromium), configuration reload, graceful drain, and the Docker files.
//!
//! The numbers are checked against what the clients did: ffmpeg's own count of the bytes it
//! published, the size of what rtmpdump recorded, which variants and roles were started.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use rtmpx_testkit::browser;
use rtmpx_testkit::{
    admin_addr, exclusive, http, metrics, probe, record_ffmpeg, record_rtmpdump, require_tool, run_bounded,
    sample, Gateway, Proc, TempDir,
};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Helpers

/// The admin listener's address, from `admin listener on ADDR: ...`.
fn get_json(addr: SocketAddr, path: &str) -> Value {
    let reply = http(addr, "GET", path, None);
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("GET {path}: {e}: {}", reply.body))
}

fn sessions_gauge(text: &str, variant: &str, role: &str) -> u64 {
    sample(text, &format!("rtmpx_sessions{{variant=\"{variant}\",role=\"{role}\"}}"))
}

/// Polls `check` every 200 ms until it returns `Some` or `limit` passes.
fn wait_until<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

fn sessions_of(addr: SocketAddr) -> Vec<Value> {
    get_json(addr, "/api/v1/sessions").as_array().unwrap().clone()
}

fn find_session<'a>(sessions: &'a [Value], variant: &str, role: &str) -> &'a Value {
    sessions
        .iter()
        .find(|s| s["variant"] == variant && s["role"] == role)
        .unwrap_or_else(|| panic!("no {variant} {role} in {sessions:#?}"))
}

/// ffmpeg publishing testsrc + sine in real time, writing its `-progress` report to `progress`
/// (its `total_size` is what it handed to the RTMP protocol).
fn publish_with_progress(url: &str, seconds: u32, progress: &Path) -> Proc {
    require_tool("ffmpeg");
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"]);
    cmd.args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"]);
    cmd.args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]);
    cmd.args(["-t", &seconds.to_string()]);
    cmd.args(["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "25"]);
    cmd.args(["-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k"]);
    cmd.arg("-progress").arg(progress);
    cmd.args(["-f", "flv", url]);
    Proc::spawn("ffmpeg-publish", cmd, None, Duration::from_secs(u64::from(seconds) + 40))
}

/// The last `total_size=` of an ffmpeg `-progress` file.
fn progress_total_size(progress: &Path) -> u64 {
    let text = std::fs::read_to_string(progress).expect("reading ffmpeg's progress file");
    text.lines().rev().find_map(|l| l.strip_prefix("total_size=")?.trim().parse().ok()).expect("total_size")
}

/// `|a - b| <= 5% of b + 16 KiB`: wire bytes and file bytes differ by framing (FLV tag headers
/// versus RTMP chunk headers, the handshake and commands).
fn assert_close(what: &str, wire: u64, reference: u64) {
    let margin = reference / 20 + 16 * 1024;
    eprintln!("{what}: gateway {wire} B, client {reference} B");
    assert!(
        wire.abs_diff(reference) <= margin,
        "{what}: the gateway counted {wire} bytes, the client {reference} (margin {margin})"
    );
}

fn rtmps_config(dir: &TempDir, extra: &str) -> String {
    format!(
        r#"
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:0"

[[listener]]
proto = "rtmps"
addr = "127.0.0.1:0"

[[app]]
name = "live"

[tls]
cert_dir = "{}"

[admin]
addr = "127.0.0.1:0"
{extra}
"#,
        dir.file("certs").display()
    )
}

// ---------------------------------------------------------------------------------------------
// Metrics and the JSON API

#[test]
fn metrics_and_api_follow_a_live_multi_variant_session() {
    let _serial = exclusive();
    let dir = TempDir::new("ops-metrics");
    let gw = Gateway::start(&rtmps_config(&dir, ""));
    let admin = admin_addr(&gw);

    // Handshake failures of three kinds, and a connect to an unknown app.
    let rtmp_addr = gw.addr("rtmp");
    let mut garbage = TcpStream::connect(rtmp_addr).unwrap();
    garbage.write_all(&[0x01; 1537]).unwrap();
    let mut half = TcpStream::connect(rtmp_addr).unwrap();
    half.write_all(&[0x03; 100]).unwrap();
    drop(half);
    let mut not_tls = TcpStream::connect(gw.addr("rtmps")).unwrap();
    not_tls.write_all(&[0x03; 1537]).unwrap();
    let mut dump = Command::new("rtmpdump");
    dump.args([
        "-q",
        "--live",
        "-m",
        "5",
        "-r",
        &gw.url("rtmp", "live", "x").replace("/live/", "/nope/"),
        "-o",
        "/dev/null",
    ]);
    require_tool("rtmpdump");
    run_bounded(dump, Duration::from_secs(30));
    let failures = wait_until(Duration::from_secs(15), || {
        let m = metrics(admin);
        let counts: Vec<u64> = ["protocol", "closed", "tls"]
            .iter()
            .map(|r| sample(&m, &format!("rtmpx_handshake_failures_total{{reason=\"{r}\"}}")))
            .collect();
        counts.iter().all(|&c| c >= 1).then_some(m)
    })
    .unwrap_or_else(|| panic!("handshake failures not counted:\n{}", metrics(admin)));
    assert_eq!(sample(&failures, "rtmpx_handshake_failures_total{reason=\"protocol\"}"), 1);
    assert_eq!(sample(&failures, "rtmpx_handshake_failures_total{reason=\"tls\"}"), 1);
    assert_eq!(sample(&failures, "rtmpx_auth_denials_total{action=\"connect\"}"), 1);
    drop((garbage, not_tls));

    // rtmp publisher, rtmps player (ffmpeg), rtmpe player (rtmpdump).
    let progress = dir.file("progress.txt");
    let mut publisher = publish_with_progress(&gw.url("rtmp", "live", "multi"), 14, &progress);
    assert!(gw.wait_for_log_line(&["publishing", "live/multi"], Duration::from_secs(20)).is_some());
    let rtmpe_file = dir.file("rtmpe.flv");
    let mut rtmpe_player =
        record_rtmpdump(&gw.url("rtmp", "live", "multi").replace("rtmp://", "rtmpe://"), &rtmpe_file, 40.0);
    let mut rtmps_player = record_ffmpeg(&gw.url("rtmps", "live", "multi"), &dir.file("rtmps.flv"), 30.0);
    // RTMPT on the rtmp port (it tells HTTP from RTMP by the first byte).
    let rtmpt_url = gw.url("rtmp", "live", "multi").replace("rtmp://", "rtmpt://");
    let mut rtmpt_player = record_ffmpeg(&rtmpt_url, &dir.file("rtmpt.flv"), 30.0);

    let all_flowing = wait_until(Duration::from_secs(20), || {
        let s = sessions_of(admin);
        let roles = s.iter().filter(|s| s["role"] != "none").count();
        (roles == 4 && s.iter().all(|s| s["bytes_out"].as_u64() > Some(20_000) || s["role"] == "publisher"))
            .then_some(())
    });
    assert!(all_flowing.is_some(), "four sessions with media did not show up: {:#?}", sessions_of(admin));
    // Let the bitrate window fill a little.
    thread::sleep(Duration::from_secs(3));
    let sessions = sessions_of(admin);
    let m = metrics(admin);

    // Counts by variant and role.
    assert_eq!(sessions.len(), 4, "{sessions:#?}");
    assert_eq!(sessions_gauge(&m, "rtmp", "publisher"), 1);
    assert_eq!(sessions_gauge(&m, "rtmps", "player"), 1);
    assert_eq!(sessions_gauge(&m, "rtmpe", "player"), 1);
    assert_eq!(sessions_gauge(&m, "rtmpt", "player"), 1);
    assert_eq!(sessions_gauge(&m, "rtmp", "player"), 0);
    assert_eq!(sessions_gauge(&m, "rtmps", "publisher"), 0);
    assert_eq!(sample(&m, "rtmpx_sessions_opened_total{variant=\"rtmpe\"}"), 1);
    assert_eq!(sample(&m, "rtmpx_streams"), 1);
    // A few live sessions keep the workers far from busy: no batching.
    assert_eq!(sample(&m, "rtmpx_write_batching"), 0);
    assert!(sample(&m, "rtmpx_worker_busy_percent") < 70, "{m}");
    assert_eq!(sample(&m, "rtmpx_publishers"), 1);
    assert_eq!(sample(&m, "rtmpx_players"), 3);
    assert_eq!(sample(&m, "rtmpx_stream_players{app=\"live\",stream=\"multi\"}"), 3);
    assert_eq!(sample(&m, "rtmpx_rtmpt_sessions"), 1);
    // ffmpeg polls several times a second while it plays.
    assert!(sample(&m, "rtmpx_rtmpt_polls_total") > 10, "{m}");

    // The JSON sessions.
    let publisher_json = find_session(&sessions, "rtmp", "publisher");
    for s in &sessions {
        assert_eq!(s["app"], "live");
        assert_eq!(s["stream"], "multi");
        assert_eq!(s["video_codec"], "h264");
        assert_eq!(s["audio_codec"], "aac");
        assert!(s["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(s["uptime_secs"].as_f64().unwrap() >= 2.0, "{s}");
    }
    // testsrc 320x240 with x264 ultrafast + 64k AAC: a few hundred kb/s.
    let publish_rate = publisher_json["bitrate_in_bps"].as_u64().unwrap();
    assert!((60_000..5_000_000).contains(&publish_rate), "publisher bitrate {publish_rate}");
    for variant in ["rtmps", "rtmpe", "rtmpt"] {
        let player = find_session(&sessions, variant, "player");
        let rate = player["bitrate_out_bps"].as_u64().unwrap();
        assert!(
            rate > publish_rate / 3 && rate < publish_rate * 3,
            "{variant} player {rate} vs {publish_rate}"
        );
    }
    // The metrics were scraped after the JSON: they hold at least what the JSON said.
    let json_in = publisher_json["bytes_in"].as_u64().unwrap();
    let metric_in = sample(&m, "rtmpx_bytes_in_total{variant=\"rtmp\"}");
    assert!(metric_in >= json_in && metric_in < json_in + 2_000_000, "metric {metric_in} vs json {json_in}");

    // The JSON streams.
    let streams = get_json(admin, "/api/v1/streams");
    let stream = &streams.as_array().unwrap()[0];
    assert_eq!(stream["app"], "live");
    assert_eq!(stream["stream"], "multi");
    assert_eq!(stream["players"], 3);
    assert_eq!(stream["player_variants"], serde_json::json!({ "rtmpe": 1, "rtmps": 1, "rtmpt": 1 }));
    assert_eq!(stream["publisher"]["variant"], "rtmp");
    assert_eq!(stream["publisher"]["session"], publisher_json["id"]);
    assert!(stream["media_bytes_in"].as_u64().unwrap() > 10_000);

    // Kick the rtmps player: it disappears, its ffmpeg ends, the others go on.
    let rtmps_id = find_session(&sessions, "rtmps", "player")["id"].as_u64().unwrap();
    let single = get_json(admin, &format!("/api/v1/sessions/{rtmps_id}"));
    assert_eq!(single["variant"], "rtmps");
    let kicked = http(admin, "DELETE", &format!("/api/v1/sessions/{rtmps_id}"), None);
    assert_eq!(kicked.status, 202, "{}", kicked.body);
    let gone = wait_until(Duration::from_secs(10), || {
        let s = sessions_of(admin);
        (!s.iter().any(|s| s["id"] == rtmps_id)).then_some(s)
    })
    .expect("the kicked session is still listed");
    assert_eq!(gone.len(), 3, "{gone:#?}");
    assert!(gw
        .wait_for_log_line(
            &["closed", "variant=rtmps", "kicked through the admin API"],
            Duration::from_secs(5)
        )
        .is_some());
    let m = metrics(admin);
    assert_eq!(sessions_gauge(&m, "rtmps", "player"), 0);
    assert_eq!(sessions_gauge(&m, "rtmpe", "player"), 1);
    assert_eq!(sample(&m, "rtmpx_admin_kicks_total"), 1);
    assert_eq!(http(admin, "DELETE", &format!("/api/v1/sessions/{rtmps_id}"), None).status, 404);
    assert_eq!(http(admin, "GET", &format!("/api/v1/sessions/{rtmps_id}"), None).status, 404);
    let kicked_player_exit = wait_until(Duration::from_secs(15), || rtmps_player.try_status());
    assert!(kicked_player_exit.is_some(), "the kicked ffmpeg player still runs");

    // After the publisher ends: bytes against what the clients counted.
    let status = publisher.finish();
    assert!(status.success(), "{}", publisher.describe());
    thread::sleep(Duration::from_secs(1));
    rtmpe_player.stop();
    rtmpt_player.stop();
    assert!(
        wait_until(Duration::from_secs(10), || sessions_of(admin).is_empty().then_some(())).is_some(),
        "sessions left: {:#?}",
        sessions_of(admin)
    );
    let m = metrics(admin);
    assert_close(
        "publisher bytes in",
        sample(&m, "rtmpx_bytes_in_total{variant=\"rtmp\"}"),
        progress_total_size(&progress),
    );
    let recorded = std::fs::metadata(&rtmpe_file).unwrap().len();
    assert!(recorded > 100_000, "rtmpdump recorded only {recorded} bytes");
    assert_close("rtmpe player bytes out", sample(&m, "rtmpx_bytes_out_total{variant=\"rtmpe\"}"), recorded);
    assert_eq!(sample(&m, "rtmpx_streams"), 0);
    assert_eq!(sample(&m, "rtmpx_dropped_frames_total"), 0);
    let report = probe(&rtmpe_file);
    assert!(report.video_frames > 100, "{}", report.summary());
}

#[test]
fn admin_token_is_required_when_configured() {
    let _serial = exclusive();
    let dir = TempDir::new("ops-token");
    let gw = Gateway::start(&rtmps_config(&dir, "token = \"0123456789abcdef\""));
    let admin = admin_addr(&gw);
    for path in ["/", "/metrics", "/api/v1/sessions", "/api/v1/streams"] {
        let denied = http(admin, "GET", path, None);
        assert_eq!(denied.status, 401, "{path} without a token");
        assert!(denied.headers.contains("www-authenticate: bearer"), "{}", denied.headers);
        assert_eq!(
            http(admin, "GET", path, Some("0123456789abcdeX")).status,
            401,
            "{path} with a wrong token"
        );
        assert_eq!(http(admin, "GET", path, Some("0123456789abcdef")).status, 200, "{path} with the token");
    }
    assert_eq!(http(admin, "GET", "/metrics?token=0123456789abcdef", None).status, 200);
    assert_eq!(http(admin, "POST", "/api/v1/reload", None).status, 401);
    assert_eq!(http(admin, "DELETE", "/api/v1/sessions/1", None).status, 401);
    // Unknown paths and methods, with the token.
    assert_eq!(http(admin, "GET", "/nope", Some("0123456789abcdef")).status, 404);
    assert_eq!(http(admin, "PUT", "/metrics", Some("0123456789abcdef")).status, 405);
    // The scheme in any case (RFC 9110), any Host: the token is what counts.
    for auth in ["bearer 0123456789abcdef", "BEARER 0123456789abcdef"] {
        assert_eq!(admin_status(admin, "evil.example", Some(auth)), 200, "{auth}");
    }
    assert_eq!(admin_status(admin, "127.0.0.1", Some("Basic 0123456789abcdef")), 401);
}

/// The status of `GET /api/v1/streams` sent with `Host: host` and an optional `Authorization`.
fn admin_status(admin: SocketAddr, host: &str, authorization: Option<&str>) -> u16 {
    let mut stream = TcpStream::connect(admin).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    write!(stream, "GET /api/v1/streams HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status: {reply:?}"))
}

#[test]
fn without_a_token_the_admin_api_answers_only_addresses_and_listed_names() {
    let _serial = exclusive();
    let dir = TempDir::new("ops-host");
    let gw = Gateway::start(&rtmps_config(&dir, "hosts = [\"rtmpx\"]"));
    let admin = admin_addr(&gw);
    let port = admin.port();
    for host in
        [format!("127.0.0.1:{port}"), format!("localhost:{port}"), "[::1]".into(), format!("rtmpx:{port}")]
    {
        assert_eq!(admin_status(admin, &host, None), 200, "{host}");
    }
    // A page on a name that resolves to 127.0.0.1 (DNS rebinding) gets nothing.
    for host in [format!("evil.example:{port}"), "127.0.0.1.nip.io".into(), "rtmpx.evil".into()] {
        assert_eq!(admin_status(admin, &host, None), 421, "{host}");
    }
}

// ---------------------------------------------------------------------------------------------
// The status page in a real browser

/// The DOM after the page's scripts ran (`--virtual-time-budget` lets its fetches finish).
fn rendered_dom(url: &str, profile: &Path) -> String {
    let mut cmd = browser::headless_chromium(profile);
    cmd.args(["--virtual-time-budget=5000", "--dump-dom", url]);
    let (status, dom, stderr) = run_bounded(cmd, Duration::from_secs(90));
    assert!(status.success(), "chromium failed ({status}):\n{stderr}");
    dom
}

#[test]
fn status_page_lists_the_live_stream_in_a_headless_browser() {
    let _serial = exclusive();
    require_tool("chromium");
    let dir = TempDir::new("ops-browser");
    let gw = Gateway::start(&rtmps_config(&dir, "token = \"browser-token-123\""));
    let admin = admin_addr(&gw);
    let mut publisher = rtmpx_testkit::publish_testsrc(&gw.url("rtmp", "live", "browser"), 20.0);
    assert!(gw.wait_for_log_line(&["publishing", "live/browser"], Duration::from_secs(20)).is_some());
    let mut player = record_rtmpdump(&gw.url("rtmps", "live", "browser"), &dir.file("p.flv"), 30.0);
    assert!(gw.wait_for_log_line(&["playing", "live/browser"], Duration::from_secs(20)).is_some());
    // Codecs are known once the sequence headers went through.
    thread::sleep(Duration::from_secs(2));

    let dom = rendered_dom(&format!("http://{admin}/?token=browser-token-123"), &dir.file("chromium"));
    let row_start = dom
        .find("data-stream=\"live/browser\"")
        .unwrap_or_else(|| panic!("no row for live/browser in the rendered page:\n{dom}"));
    let row = &dom[row_start..row_start + dom[row_start..].find("</tr>").unwrap()];
    assert!(row.contains("rtmp 127.0.0.1:"), "publisher variant missing: {row}");
    assert!(row.contains("h264 + aac"), "codecs missing: {row}");
    assert!(row.contains("rtmps × 1"), "player variant missing: {row}");
    assert!(row.contains("kb/s") || row.contains("Mb/s"), "bitrate missing: {row}");
    assert!(dom.contains("data-session="), "no session rows:\n{dom}");
    assert!(dom.contains("<div id=\"summary\" class=\"muted\">1 streams, 1 players"), "{dom}");

    // Without the token the page itself is refused.
    let dom = rendered_dom(&format!("http://{admin}/"), &dir.file("chromium"));
    assert!(!dom.contains("data-stream="), "{dom}");
    assert!(dom.contains("missing or wrong admin token"), "{dom}");
    player.stop();
    publisher.stop();
}

// ---------------------------------------------------------------------------------------------
// Reload

const RELOAD_BASE: &str = r#"
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"
"#;

/// App `live` accepting publishers with `?key=KEY`, and a per-address connection limit.
fn reload_config(key: &str, per_ip: usize) -> String {
    format!(
        "{RELOAD_BASE}\n[[app]]\nname = \"live\"\npublish_keys = [\"{key}\"]\n\n[limits]\nmax_connections_per_ip = {per_ip}\n"
    )
}

/// Whether the gateway closes a fresh TCP connection at once (refused by a limit) rather than
/// waiting for its handshake.
fn closed_at_once(addr: SocketAddr) -> bool {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => panic!("the gateway sent something to a client that sent nothing"),
    }
}

#[test]
fn reload_applies_new_rules_and_keeps_live_sessions() {
    let _serial = exclusive();
    let mut gw = Gateway::start(&reload_config("old-key", 50));
    let admin = admin_addr(&gw);
    let dir = TempDir::new("ops-reload");
    let rtmp = gw.addr("rtmp");

    let mut publisher = rtmpx_testkit::publish_testsrc(&gw.url("rtmp", "live", "keep?key=old-key"), 16.0);
    assert!(gw.wait_for_log_line(&["publishing", "live/keep"], Duration::from_secs(20)).is_some());
    let recording = dir.file("keep.flv");
    let mut player = record_rtmpdump(&gw.url("rtmp", "live", "keep"), &recording, 40.0);
    assert!(gw.wait_for_log_line(&["playing", "live/keep"], Duration::from_secs(20)).is_some());
    thread::sleep(Duration::from_secs(2));
    let player_out_before =
        find_session(&sessions_of(admin), "rtmp", "player")["bytes_out"].as_u64().unwrap();

    // New rules: a new stream key on `live`, three connections per address (two are live).
    std::fs::write(gw.config_path(), reload_config("new-key", 3)).unwrap();
    gw.signal("HUP");
    let line = gw
        .wait_for_log_line(&["configuration reloaded"], Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no reload logged:\n{}", gw.logs()));
    assert!(line.contains("\"app\"") && line.contains("\"limits\""), "{line}");

    // A new publisher with the old key is refused, one with the new key is taken...
    let mut refused = rtmpx_testkit::publish_testsrc(&gw.url("rtmp", "live", "new?key=old-key"), 2.0);
    let status = refused.finish();
    assert!(!status.success(), "the old key still worked after the reload: {}", refused.describe());
    assert!(
        gw.wait_for_log_line(
            &["publish denied: publishing refused: stream key not accepted", "live/new"],
            Duration::from_secs(5)
        )
        .is_some(),
        "{}",
        gw.logs()
    );
    let mut accepted = rtmpx_testkit::publish_testsrc(&gw.url("rtmp", "live", "new?key=new-key"), 2.0);
    assert!(accepted.finish().success(), "the new key was refused: {}", accepted.describe());
    // ...the third connection is admitted and the fourth refused.
    let third = TcpStream::connect(rtmp).unwrap();
    thread::sleep(Duration::from_millis(300));
    assert!(closed_at_once(rtmp), "a 4th connection from 127.0.0.1 was admitted");
    assert!(gw.wait_for_log("max_connections_per_ip reached", Duration::from_secs(5)));

    // The live publisher and player went on (testsrc is a few hundred kb/s).
    let flowing = wait_until(Duration::from_secs(10), || {
        let sessions = sessions_of(admin);
        find_session(&sessions, "rtmp", "publisher");
        let out = find_session(&sessions, "rtmp", "player")["bytes_out"].as_u64().unwrap();
        (out > player_out_before + 100_000).then_some(())
    });
    assert!(flowing.is_some(), "the player stalled after the reload: {:#?}", sessions_of(admin));
    let m = metrics(admin);
    assert_eq!(sample(&m, "rtmpx_auth_denials_total{action=\"publish\"}"), 1);
    assert!(sample(&m, "rtmpx_auth_denials_total{action=\"connection_limit\"}") >= 1);
    assert_eq!(sample(&m, "rtmpx_config_reloads_total{result=\"ok\"}"), 1);

    // An invalid file is rejected with its reason, over HTTP and SIGHUP; the rules stay.
    std::fs::write(gw.config_path(), format!("{}[server]\nchunk_size = 1\n", reload_config("old-key", 50)))
        .unwrap();
    let rejected = http(admin, "POST", "/api/v1/reload", None);
    assert_eq!(rejected.status, 422, "{}", rejected.body);
    assert!(rejected.body.contains("server.chunk_size"), "{}", rejected.body);
    gw.signal("HUP");
    assert!(gw
        .wait_for_log_line(&["configuration reload rejected", "server.chunk_size"], Duration::from_secs(10))
        .is_some());
    assert!(wait_until(Duration::from_secs(5), || {
        (sample(&metrics(admin), "rtmpx_config_reloads_total{result=\"rejected\"}") == 2).then_some(())
    })
    .is_some());
    assert!(closed_at_once(rtmp), "the per-address limit was lost with the bad file");
    drop(third);

    // A listener change is reported as needing a restart; the rest applies.
    let moved = reload_config("new-key", 3)
        .replace("addr = \"127.0.0.1:0\"\n\n[admin]", "addr = \"127.0.0.1:1\"\n\n[admin]");
    std::fs::write(gw.config_path(), moved).unwrap();
    let reply = http(admin, "POST", "/api/v1/reload", None);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let report: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(report["restart_needed"], serde_json::json!(["listener"]), "{report}");
    assert_eq!(report["applied"], serde_json::json!([]), "{report}");
    assert!(gw.wait_for_log("need a restart", Duration::from_secs(5)));

    // The stream played to its end in one piece.
    assert!(publisher.finish().success(), "{}", publisher.describe());
    thread::sleep(Duration::from_secs(1));
    player.stop();
    let report = probe(&recording);
    assert!(
        report.video_span() >= 11.0,
        "the player lost the stream around the reload: {}",
        report.summary()
    );
    assert!(gw.is_running());
}

// ---------------------------------------------------------------------------------------------
// Graceful drain

#[test]
fn sigterm_lets_live_players_finish_then_exits() {
    let _serial = exclusive();
    let mut gw = Gateway::start(
        "[[listener]]\nproto = \"rtmp\"\naddr = \"127.0.0.1:0\"\n[[app]]\nname = \"live\"\n\
         [server]\nshutdown_grace_secs = 40\n",
    );
    let rtmp = gw.addr("rtmp");
    let dir = TempDir::new("ops-drain");
    let mut publisher = rtmpx_testkit::publish_testsrc(&gw.url("rtmp", "live", "drain"), 10.0);
    assert!(gw.wait_for_log_line(&["publishing", "live/drain"], Duration::from_secs(20)).is_some());
    let recording = dir.file("drain.flv");
    let mut player = record_rtmpdump(&gw.url("rtmp", "live", "drain"), &recording, 60.0);
    assert!(gw.wait_for_log_line(&["playing", "live/drain"], Duration::from_secs(20)).is_some());
    // A connection stuck in its handshake: closed at once by the drain.
    let mut idle = TcpStream::connect(rtmp).unwrap();
    idle.write_all(&[0x03; 10]).unwrap();
    thread::sleep(Duration::from_secs(1));

    let term_at = Instant::now();
    gw.signal("TERM");
    assert!(gw.wait_for_log("draining", Duration::from_secs(5)), "{}", gw.logs());
    // New connections are refused; the idle one is closed; the stream goes on.
    thread::sleep(Duration::from_millis(500));
    assert!(TcpStream::connect_timeout(&rtmp, Duration::from_secs(2)).is_err(), "the listener still accepts");
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(idle.read(&mut buf), Ok(0) | Err(_)));
    assert!(gw.wait_for_log_line(&["closed", "gateway shutting down"], Duration::from_secs(5)).is_some());
    thread::sleep(Duration::from_secs(2));
    assert!(gw.is_running(), "the gateway quit before its live stream ended");

    // When the publisher finishes, the player is let go and the gateway stops, long before the
    // 40 s grace period.
    assert!(publisher.finish().success(), "{}", publisher.describe());
    let exit = gw.wait_exit(Duration::from_secs(25)).expect("rtmpx did not exit after its last stream");
    assert!(exit.success(), "{exit:?}");
    assert!(term_at.elapsed() < Duration::from_secs(35));
    assert!(gw.logs().contains("rtmpx stopped"));
    assert!(!gw.logs().contains("grace period over"), "{}", gw.logs());
    player.finish();
    let report = probe(&recording);
    assert!(report.video_span() >= 7.0, "the player was cut short: {}", report.summary());
}

// ---------------------------------------------------------------------------------------------
// Docker

#[test]
fn docker_compose_parses_and_its_gateway_config_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let compose = root.join("docker-compose.yml");
    // Debian's python3 has python3-yaml (scripts/test.sh installs it).
    let script = r#"
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
services = doc["services"]
gw, origin = services["rtmpx"], services["origin"]
print("ports", " ".join(str(p) for p in gw["ports"]))
print("volumes", " ".join(str(v) for v in gw["volumes"]))
print("depends", " ".join(gw.get("depends_on", [])))
print("origin_image", origin.get("image", origin.get("build", "")))
print("build", gw["build"]["dockerfile"] if isinstance(gw["build"], dict) else gw["build"])
print("nofile", gw.get("ulimits", {}).get("nofile", {}).get("soft", 0))
cluster = [n for n, s in services.items() if "cluster" in s.get("profiles", [])]
print("cluster", " ".join(sorted(cluster)))
print("redis_image", services["redis"]["image"])
print("node_configs", " ".join(services[n]["command"][-1] for n in ("node-a", "node-b")))
print("node_volumes", " ".join(str(v) for n in ("node-a", "node-b") for v in services[n]["volumes"]))
print("balancer", services["balancer"]["image"], " ".join(str(v) for v in services["balancer"]["volumes"]))
"#;
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| Command::new(p).args(["-c", "import yaml"]).output().is_ok_and(|o| o.status.success()))
        .expect("a python3 with PyYAML (Debian: python3-yaml)");
    let mut cmd = Command::new(python);
    cmd.args(["-c", script]).arg(&compose);
    let (status, out, err) = run_bounded(cmd, Duration::from_secs(30));
    assert!(status.success(), "docker-compose.yml does not parse:\n{err}");
    let field = |name: &str| {
        out.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')).unwrap_or_default().to_owned()
    };
    let ports = field("ports");
    for port in ["1935:1935", "443:443", "80:80", "8080:8080"] {
        assert!(ports.contains(port), "port {port} is not published: {ports}");
    }
    assert!(field("volumes").contains("/etc/rtmpx"), "config not mounted: {out}");
    assert!(field("depends").contains("origin"), "{out}");
    // One descriptor per connection: the default max_connections (20000) plus the reserve.
    let nofile: u64 = field("nofile").parse().unwrap_or(0);
    assert!(nofile >= 20_000 + 128, "ulimits.nofile.soft is {nofile}: {out}");
    // The cluster profile: Redis and two nodes (each with its own config) behind HAProxy.
    assert_eq!(field("cluster"), "balancer node-a node-b redis", "{out}");
    assert!(field("redis_image").starts_with("redis"), "{out}");
    assert_eq!(field("node_configs"), "/etc/rtmpx/node-a.toml /etc/rtmpx/node-b.toml", "{out}");
    assert!(field("node_volumes").contains("./deploy/cluster:/etc/rtmpx"), "{out}");
    assert!(
        field("balancer").starts_with("haproxy") && field("balancer").contains("deploy/cluster/haproxy.cfg"),
        "{out}"
    );
    for node in ["node-a", "node-b"] {
        let mut check = Command::new(rtmpx_testkit::rtmpx_binary());
        check.arg("check-config").arg(root.join(format!("deploy/cluster/{node}.toml")));
        let (status, out, err) = run_bounded(check, Duration::from_secs(30));
        assert!(status.success(), "deploy/cluster/{node}.toml: {out}{err}");
        assert!(std::fs::read_to_string(root.join(format!("deploy/cluster/{node}.toml")))
            .unwrap()
            .contains(&format!("rtmp://{node}:1935")));
    }
    rtmpx_testkit::require_tool("haproxy");
    let mut check = Command::new("haproxy");
    check.arg("-c").arg("-f").arg(root.join("deploy/cluster/haproxy.cfg"));
    let (status, out, err) = run_bounded(check, Duration::from_secs(30));
    assert!(status.success(), "deploy/cluster/haproxy.cfg: {out}{err}");

    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
    let stages =
        dockerfile.lines().filter(|l| l.trim_start().to_ascii_uppercase().starts_with("FROM ")).count();
    assert!(stages >= 2, "the Dockerfile is not multi-stage");

    // The config the compose file mounts passes check-config.
    let config = root.join("deploy/rtmpx.toml");
    let mut check = Command::new(rtmpx_testkit::rtmpx_binary());
    check.arg("check-config").arg(&config);
    let (status, out, err) = run_bounded(check, Duration::from_secs(30));
    assert!(status.success(), "deploy/rtmpx.toml: {out}{err}");
}

/// `deploy/rtmpx.service`: enough descriptors for the default `max_connections` plus the reserve,
/// more time to stop than the documented drain, and a reload that is the SIGHUP reload.
#[test]
fn systemd_unit_gives_descriptors_and_drain_time() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("deploy/rtmpx.service")).expect("deploy/rtmpx.service");
    let value = |key: &str| {
        unit.lines()
            .find_map(|line| line.trim().strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("{key} missing:\n{unit}"))
            .trim()
            .to_owned()
    };
    let nofile: u64 = value("LimitNOFILE").parse().unwrap_or(0);
    assert!(nofile >= 20_000 + 128, "LimitNOFILE={nofile}");
    let stop: u64 = value("TimeoutStopSec").parse().unwrap_or(0);
    assert!(stop > 30, "TimeoutStopSec={stop} must exceed server.shutdown_grace_secs (30)");
    assert!(value("ExecReload").contains("-HUP"), "{unit}");
    assert!(value("ExecStart").contains("serve --config"), "{unit}");
}
