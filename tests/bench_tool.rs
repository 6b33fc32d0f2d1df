//! The load generator end to end: `rtmpx-bench` publishes and plays against the real gateway on
//! every variant (the players on the variant, the publisher on plain RTMP, as `scripts/bench.sh`
//! runs it) and against nginx-rtmp, and its JSON summary must describe what really happened.

use std::process::Command;
use std::time::Duration;

use rtmpx_testkit::{
    exclusive, make_testsrc_flv, require_tool, rtmpx_bench_binary, run_bounded, Gateway, NginxRtmp, TempDir,
};
use serde_json::Value;

const PLAYERS: u64 = 3;

const CONFIG: &str = r#"
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:0"

[[listener]]
proto = "rtmps"
addr = "127.0.0.1:0"

[[listener]]
proto = "rtmpt"
addr = "127.0.0.1:0"

[[listener]]
proto = "rtmpts"
addr = "127.0.0.1:0"

[[app]]
name = "live"

[tls]
cert_dir = "$DIR/certs"
"#;

/// Runs rtmpx-bench (one publisher, [`PLAYERS`] players, a 3 s window) and returns its JSON summary.
/// Keyframes every second: nginx-rtmp starts its players on the next keyframe (no GOP cache), so
/// they are all live by the window.
fn bench(dir: &TempDir, label: &str, url: &str, play_url: &str, server_pid: u32, extra: &[&str]) -> Value {
    let json = dir.file(&format!("{label}.json"));
    let mut cmd = Command::new(rtmpx_bench_binary());
    cmd.args(extra);
    cmd.args(["--url", url, "--play-url", play_url, "--players", &PLAYERS.to_string()]);
    cmd.args([
        "--bitrate",
        "1M",
        "--gop",
        "1",
        "--warmup",
        "1.5",
        "--duration",
        "3",
        "--insecure",
        "--quiet",
    ]);
    cmd.args(["--label", label, "--server-pid", &server_pid.to_string(), "--json"]).arg(&json);
    let (status, stdout, stderr) = run_bounded(cmd, Duration::from_secs(60));
    assert!(status.success(), "rtmpx-bench {label} failed ({status}):\n{stdout}{stderr}");
    // The human summary goes to stdout as well.
    assert!(stdout.contains("publish-to-play latency"), "{label}: no summary table:\n{stdout}");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("{label}: no JSON: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{label}: bad JSON {e}: {text}"))
}

#[track_caller]
fn assert_sound(run: &Value, variant: &str) {
    let label = run["label"].as_str().unwrap_or("?");
    let num = |key: &str| run[key].as_f64().unwrap_or_else(|| panic!("{label}: no {key} in {run}"));
    assert_eq!(run["variant"], variant, "{run}");
    assert_eq!(run["errors"], 0, "{label}: {}", run["first_error"]);
    assert_eq!(run["players_connected"], PLAYERS, "{run}");
    assert_eq!(run["frames_dropped"], 0, "{run}");
    // 1 Mbit/s of video and 128 kbit/s of audio offered to each player over the window.
    let (delivered, expected) = (num("delivered_mbps"), num("expected_mbps"));
    eprintln!(
        "[bench-tool] {label}: {delivered:.2} of {expected:.2} Mbit/s, latency p50/p99 {:.2}/{:.2} ms, {} samples",
        num("latency_ms_p50"),
        num("latency_ms_p99"),
        num("latency_samples")
    );
    assert!(expected > 3.0 && delivered > 0.8 * expected && delivered < 1.3 * expected, "{label}: {run}");
    // Every player measured the latency of (nearly) every video frame of the 3 s window, from
    // the send time the publisher embeds: 25 fps.
    assert!(num("latency_samples") >= 0.9 * (PLAYERS * 25 * 3) as f64, "{label}: {run}");
    let (p50, p99) = (num("latency_ms_p50"), num("latency_ms_p99"));
    assert!(p50 > 0.0 && p50 <= p99 && p99 < 1000.0, "{label}: latency {p50} / {p99} ms");
    assert!(num("connect_ms_p50") > 0.0, "{label}: {run}");
    // The server's CPU and memory came from /proc/PID (a light server may use less than one
    // 10 ms clock tick over this small window, so its CPU may read 0, never null).
    assert!(num("server_cpu_secs_per_delivered_gb") >= 0.0, "{label}: {run}");
    assert!(num("server_rss_before_kib") > 0.0, "{label}: {run}");
}

#[test]
fn rtmpx_bench_measures_every_variant_against_the_gateway() {
    let _serial = exclusive();
    let dir = TempDir::new("bench-tool");
    let gw = Gateway::start(CONFIG);
    for variant in ["rtmp", "rtmps", "rtmpt", "rtmpts", "rtmpe", "rtmpte"] {
        let stream = format!("b-{variant}");
        let publish = gw.url("rtmp", "live", &stream);
        // RTMPE and RTMPTE ride the rtmp and rtmpt listeners.
        let listener = variant.replace("rtmpte", "rtmpt").replace("rtmpe", "rtmp");
        let play = gw.url(&listener, "live", &stream).replacen(
            &format!("{listener}://"),
            &format!("{variant}://"),
            1,
        );
        let run = bench(&dir, variant, &publish, &play, gw.pid(), &[]);
        assert_sound(&run, variant);
    }
    // Browser-style players on the rtmp port.
    for (variant, scheme) in [("http-flv", "http"), ("ws-flv", "ws")] {
        let stream = format!("b-{scheme}");
        let publish = gw.url("rtmp", "live", &stream);
        let play = format!("{scheme}://{}/live/{stream}.flv", gw.addr("rtmp"));
        let run = bench(&dir, variant, &publish, &play, gw.pid(), &[]);
        assert_sound(&run, variant);
    }
}

#[test]
fn rtmpx_bench_publishes_an_flv_file_and_times_its_frames() {
    let _serial = exclusive();
    let dir = TempDir::new("bench-tool-flv");
    let source = dir.file("source.flv");
    make_testsrc_flv(&source, 6);
    let gw = Gateway::start(CONFIG);
    let url = gw.url("rtmp", "live", "file");
    let run = bench(&dir, "flv", &url, &url, gw.pid(), &["--flv", source.to_str().unwrap()]);
    let num = |key: &str| run[key].as_f64().unwrap_or_else(|| panic!("no {key} in {run}"));
    eprintln!("[bench-tool] flv: {run}");
    assert_eq!(run["input"], source.to_str().unwrap(), "{run}");
    assert!(run["bitrate_bps"].is_null() && run["expected_mbps"].is_null(), "{run}");
    assert_eq!(run["errors"], 0, "{run}");
    assert_eq!(run["players_connected"], PLAYERS, "{run}");
    assert_eq!(run["frames_dropped"], 0, "{run}");
    // Every player gets what the file publishes, and times each frame (25 video and ~43 AAC
    // frames a second) through the tool's table of send times keyed by content.
    let (delivered, ingested) = (num("delivered_mbps"), num("ingested_mbps"));
    assert!(delivered > 0.8 * 3.0 * ingested && delivered < 1.3 * 3.0 * ingested, "{run}");
    assert!(num("latency_samples") >= 0.9 * (PLAYERS * 68 * 3) as f64, "{run}");
    assert!(num("latency_ms_p99") < 1000.0, "{run}");
}

#[test]
fn rtmpx_bench_measures_nginx_rtmp() {
    let _serial = exclusive();
    require_tool("nginx");
    let dir = TempDir::new("bench-tool-nginx");
    let nginx = NginxRtmp::start();
    let url = nginx.url("live", "bench");
    let run = bench(&dir, "nginx", &url, &url, nginx.pid(), &[]);
    assert_sound(&run, "rtmp");
}
