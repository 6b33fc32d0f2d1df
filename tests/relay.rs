//! Relays end to end: pushes to nginx-rtmp and to a second rtmpx over RTMPS, a pull from
//! nginx-rtmp shared by two players, and a push that survives its upstream's restart while a
//! local player keeps receiving.

use std::thread;
use std::time::{Duration, Instant};

use rtmpx_testkit::{
    admin_addr, assert_good_recording, exclusive, free_port, http, publish_testsrc, record_ffmpeg,
    record_rtmpdump, require_tool, Gateway, NginxRtmp, PacketKind, ProbeReport, TempDir,
};

const LOG_WAIT: Duration = Duration::from_secs(15);

fn require_clients() {
    for tool in ["ffmpeg", "ffprobe", "rtmpdump"] {
        require_tool(tool);
    }
}

fn wait_line(gw: &Gateway, needles: &[&str]) -> String {
    gw.wait_for_log_line(needles, LOG_WAIT)
        .unwrap_or_else(|| panic!("no log line with {needles:?}; log:\n{}", gw.logs()))
}

/// Largest step between consecutive video timestamps (seconds).
fn largest_video_gap(report: &ProbeReport) -> f64 {
    let times: Vec<f64> =
        report.packets.iter().filter(|p| p.kind == PacketKind::Video).filter_map(|p| p.dts).collect();
    times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}

#[test]
fn rtmpt_publisher_is_pushed_to_nginx_rtmp_with_a_renamed_stream() {
    let _serial = exclusive();
    require_clients();
    let nginx = NginxRtmp::start();
    let gw = Gateway::start(&format!(
        r#"
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:0"

[[listener]]
proto = "rtmpt"
addr = "127.0.0.1:0"

[[app]]
name = "live"
push = [{{ url = "rtmp://127.0.0.1:{port}/live", name = "rename:{{name}}_up" }}]

[relay]
backoff_initial_ms = 200
backoff_max_ms = 2000

[admin]
addr = "127.0.0.1:0"
"#,
        port = nginx.port()
    ));
    let dir = TempDir::new("relay-nginx");
    let url = format!("rtmpt://{}/live/t", gw.addr("rtmpt"));
    let mut publisher = publish_testsrc(&url, 9.0);
    wait_line(&gw, &["publishing", "live/t", "rtmpt"]);
    let connected = wait_line(&gw, &["relay push live/t ->", "connected over rtmp"]);
    let upstream = format!("rtmp://127.0.0.1:{}/live/t_up", nginx.port());
    assert!(connected.contains(&upstream) && connected.contains("reconnects=0"), "{connected}");

    // The relay's state is in the stats API and the metrics, without the stream key.
    thread::sleep(Duration::from_secs(1));
    let admin = admin_addr(&gw);
    let relays = http(admin, "GET", "/api/v1/relays", None);
    assert_eq!(relays.status, 200);
    let relays: serde_json::Value = serde_json::from_str(&relays.body).expect("JSON");
    let relay = &relays[0];
    assert_eq!(
        (relay["direction"].as_str(), relay["state"].as_str()),
        (Some("push"), Some("connected")),
        "{relays}"
    );
    assert_eq!((relay["app"].as_str(), relay["stream"].as_str()), (Some("live"), Some("t")), "{relays}");
    assert!(relay["url"].as_str().is_some_and(|u| u.ends_with("/live/t_up")), "{relays}");
    let metrics = http(admin, "GET", "/metrics", None).body;
    let state = metrics
        .lines()
        .find(|l| l.starts_with("rtmpx_relay_state{") && l.contains(r#"state="connected""#))
        .unwrap_or_else(|| panic!("no connected relay in the metrics:\n{metrics}"));
    assert!(state.ends_with(" 1") && state.contains(r#"direction="push""#), "{state}");
    let bytes: u64 = metrics
        .lines()
        .find(|l| l.starts_with("rtmpx_relay_bytes_total{"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("relay bytes in the metrics");
    assert!(bytes > 10_000, "about a second of 320x240 test video went out: {bytes} bytes");

    let out = dir.file("from-nginx.flv");
    let mut recorder = record_ffmpeg(&upstream, &out, 4.0);
    assert!(recorder.finish().success(), "{}", recorder.describe());
    let report = assert_good_recording("nginx player", &out, 60, 100);
    assert!(report.video_span() >= 3.0, "{}", report.summary());

    assert!(publisher.finish().success(), "{}", publisher.describe());
    let stopped = wait_line(&gw, &["relay push live/t ->", "stopped"]);
    assert!(stopped.contains("publisher left"), "{stopped}");
    assert_eq!(gw.count_log("retrying in"), 0, "the push never failed; log:\n{}", gw.logs());
}

#[test]
fn push_over_rtmps_to_a_second_gateway_is_played_there_over_rtmpe() {
    let _serial = exclusive();
    require_clients();
    let certs = TempDir::new("relay-certs");
    let origin = Gateway::start(&format!(
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
"#,
        certs.path().display()
    ));
    let ca = certs.file("ca.pem");
    assert!(ca.exists(), "the origin wrote no development CA");
    let rtmps = origin.addr("rtmps");
    // The development certificate names 127.0.0.1: the relay verifies it against the local CA.
    let edge = Gateway::start(&format!(
        r#"
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:0"

[[app]]
name = "live"
push = [{{ url = "rtmps://127.0.0.1:{port}/live" }}]

[relay]
ca_file = "{ca}"
backoff_initial_ms = 200
"#,
        port = rtmps.port(),
        ca = ca.display()
    ));
    let dir = TempDir::new("relay-rtmps");
    let mut publisher = publish_testsrc(&edge.url("rtmp", "live", "s"), 9.0);
    wait_line(&edge, &["relay push live/s ->", "connected over rtmps"]);
    wait_line(&origin, &["publishing", "live/s", "rtmps"]);

    thread::sleep(Duration::from_secs(1));
    let rtmpe_url = origin.url("rtmp", "live", "s").replace("rtmp://", "rtmpe://");
    let out = dir.file("rtmpe.flv");
    let mut recorder = record_rtmpdump(&rtmpe_url, &out, 4.0);
    recorder.finish();
    let report = assert_good_recording("rtmpe player on the origin", &out, 50, 80);
    assert!(report.has_metadata, "metadata crossed the relay: {}", report.summary());
    let closed = wait_line(&origin, &["closed:", "role=player"]);
    assert!(closed.contains("variant=rtmpe"), "{closed}");

    assert!(publisher.finish().success(), "{}", publisher.describe());
    wait_line(&edge, &["relay push live/s ->", "stopped (publisher left)"]);
    let closed = wait_line(&origin, &["closed:", "role=publisher"]);
    assert!(closed.contains("variant=rtmps"), "{closed}");
}

#[test]
fn pull_from_nginx_is_shared_by_two_players_and_ends_after_them() {
    let _serial = exclusive();
    require_clients();
    let nginx = NginxRtmp::start();
    let dir = TempDir::new("relay-pull");
    let mut publisher = publish_testsrc(&nginx.url("live", "o"), 14.0);
    thread::sleep(Duration::from_millis(1500));
    let edge = Gateway::start(&format!(
        r#"
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:0"

[[app]]
name = "edge"
publish = false
pull = {{ url = "rtmp://127.0.0.1:{port}/live", linger_secs = 1 }}

[relay]
backoff_initial_ms = 200
"#,
        port = nginx.port()
    ));
    let url = edge.url("rtmp", "edge", "o");
    let (ffmpeg_out, rtmpdump_out) = (dir.file("ffmpeg.flv"), dir.file("rtmpdump.flv"));
    let mut first = record_ffmpeg(&url, &ffmpeg_out, 4.0);
    let connected = wait_line(&edge, &["relay pull edge/o <-", "connected over rtmp"]);
    assert!(connected.contains(&format!("rtmp://127.0.0.1:{}/live/o", nginx.port())), "{connected}");
    let mut second = record_rtmpdump(&url, &rtmpdump_out, 4.0);
    assert!(first.finish().success(), "{}", first.describe());
    second.finish();
    assert_good_recording("ffmpeg on the edge", &ffmpeg_out, 60, 100);
    assert_good_recording("rtmpdump on the edge", &rtmpdump_out, 50, 80);
    assert_eq!(
        edge.count_log(": starting (a player asked for it)"),
        1,
        "one shared pull; log:\n{}",
        edge.logs()
    );

    // Both players are gone: after the linger the pull ends, while nginx still has the stream.
    let left = Instant::now();
    let ended = wait_line(&edge, &["relay pull edge/o <-", "pull ended"]);
    assert!(ended.contains("no players left"), "{ended}");
    assert!(left.elapsed() < Duration::from_secs(10), "the pull lingered too long");
    assert!(publisher.try_status().is_none(), "the origin stream outlived the pull as intended");
    let closed = wait_line(&edge, &["closed:", "role=player"]);
    assert!(closed.contains("stream=edge/o"), "{closed}");

    // A new player starts a new pull.
    let out = dir.file("again.flv");
    let mut again = record_ffmpeg(&url, &out, 2.0);
    assert!(again.finish().success(), "{}", again.describe());
    assert_good_recording("a later player", &out, 30, 50);
    assert_eq!(edge.count_log(": starting (a player asked for it)"), 2, "log:\n{}", edge.logs());
    publisher.finish();
}

#[test]
fn push_reconnects_after_the_upstream_restarts_and_local_players_never_stall() {
    let _serial = exclusive();
    require_clients();
    let port = free_port();
    let upstream_config =
        format!("[[listener]]\nproto = \"rtmp\"\naddr = \"127.0.0.1:{port}\"\n[[app]]\nname = \"live\"\n");
    let upstream = Gateway::start(&upstream_config);
    let local = Gateway::start(&format!(
        r#"
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:0"

[[app]]
name = "live"
push = [{{ url = "rtmp://127.0.0.1:{port}/live" }}]

[relay]
backoff_initial_ms = 200
backoff_max_ms = 1600
"#
    ));
    let dir = TempDir::new("relay-restart");
    let url = local.url("rtmp", "live", "r");
    let mut publisher = publish_testsrc(&url, 22.0);
    wait_line(&local, &["relay push live/r ->", "connected over rtmp (reconnects=0)"]);
    let local_out = dir.file("local.flv");
    let recording_secs = 14.0;
    let mut local_player = record_rtmpdump(&url, &local_out, recording_secs);
    thread::sleep(Duration::from_secs(2));

    drop(upstream);
    let killed = Instant::now();
    let deadline = killed + LOG_WAIT;
    while local.count_log("retrying in") < 3 {
        assert!(Instant::now() < deadline, "no retries after the upstream died; log:\n{}", local.logs());
        thread::sleep(Duration::from_millis(50));
    }
    // Backoff doubles: 200 ms, 400 ms, 800 ms...
    let logs = local.logs();
    for delay in
        ["retrying in 200ms (attempt 1)", "retrying in 400ms (attempt 2)", "retrying in 800ms (attempt 3)"]
    {
        assert!(logs.contains(delay), "no `{delay}`; log:\n{logs}");
    }
    let outage = Duration::from_secs(3);
    if let Some(rest) = outage.checked_sub(killed.elapsed()) {
        thread::sleep(rest);
    }

    let upstream = Gateway::start(&upstream_config);
    wait_line(&local, &["relay push live/r ->", "connected over rtmp (reconnects=1)"]);
    wait_line(&upstream, &["publishing", "live/r"]);
    let upstream_out = dir.file("upstream.flv");
    let mut upstream_player = record_ffmpeg(&upstream.url("rtmp", "live", "r"), &upstream_out, 3.0);
    assert!(upstream_player.finish().success(), "{}", upstream_player.describe());
    assert_good_recording("player on the restarted upstream", &upstream_out, 45, 80);

    local_player.finish();
    let report = assert_good_recording("local player across the outage", &local_out, 200, 300);
    let gap = largest_video_gap(&report);
    assert!(gap < 0.5, "local video stalled for {gap:.2}s: {}", report.summary());
    // The recording covers its wall time: frames kept coming while the upstream was down.
    assert!(report.video_span() >= recording_secs - 3.0, "{}", report.summary());
    assert!(publisher.finish().success(), "{}", publisher.describe());
    wait_line(&local, &["relay push live/r ->", "stopped (publisher left)"]);
}
