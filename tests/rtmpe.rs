//! RTMPE against real clients: rtmpdump (librtmp) plays and python3-librtmp publishes over
//! rtmpe://, rtmpx's own client role speaks every RTMPE type, and listeners can require or forbid
//! encryption. Which types librtmp asks for and gets is read from the gateway's session log.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use rtmpx_core::handshake::HandshakeVersion;
use rtmpx_core::session::{ClientConfig, ClientEvent, ClientSession, MediaKind};
use rtmpx_testkit::{
    admin_addr, assert_good_recording, exclusive, make_testsrc_flv, metrics, publish_librtmp,
    publish_testsrc, record_ffmpeg, record_rtmpdump, require_tool, run_bounded, sample, Gateway, TempDir,
};

const CONFIG: &str = r#"
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:0"

[[listener]]
proto = "rtmps"
addr = "127.0.0.1:0"

[[app]]
name = "live"

[tls]
cert_dir = "$CERTS"

[admin]
addr = "127.0.0.1:0"
"#;

fn rtmpe(url: &str) -> String {
    url.replacen("rtmp://", "rtmpe://", 1)
}

fn start(dir: &TempDir) -> Gateway {
    Gateway::start(&CONFIG.replace("$CERTS", &dir.file("certs").display().to_string()))
}

/// The gateway's close line for the session that played or published `stream` with `role`.
fn close_line(gw: &Gateway, stream: &str, role: &str) -> String {
    let needles = ["closed:", &format!("stream={stream} "), &format!("role={role}")];
    gw.wait_for_log_line(&needles, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no close line for {role} of {stream}; log:\n{}", gw.logs()))
}

#[test]
fn rtmpdump_plays_over_rtmpe_what_ffmpeg_publishes_over_rtmp() {
    let _serial = exclusive();
    require_tool("rtmpdump");
    let dir = TempDir::new("rtmpe-play");
    let gw = start(&dir);
    let url = gw.url("rtmp", "live", "e");
    let mut publisher = publish_testsrc(&url, 7.0);
    assert!(gw.wait_for_log_line(&["publishing", "live/e"], Duration::from_secs(10)).is_some());
    thread::sleep(Duration::from_millis(500));
    let out = dir.file("rtmpe.flv");
    let mut player = record_rtmpdump(&rtmpe(&url), &out, 4.0);
    player.finish();
    assert!(publisher.finish().success(), "{}", publisher.describe());
    assert_good_recording("rtmpdump over rtmpe", &out, 76, 130);
    let line = close_line(&gw, "live/e", "player");
    // librtmp always asks for type 6 and takes the type the server answers; rtmpx answers 8
    // (XTEA signatures) to librtmp's FP10-style C1, as librtmp's own server does.
    assert!(line.contains("variant=rtmpe handshake=rtmpe-6>8"), "{line}");
}

/// `rtmpx_rtmpe_fan_out_writes_total{sealed=KIND}` from `/metrics`.
fn rtmpe_fan_out_writes(gw: &Gateway, kind: &str) -> u64 {
    sample(&metrics(admin_addr(gw)), &format!("rtmpx_rtmpe_fan_out_writes_total{{sealed=\"{kind}\"}}"))
}

/// `players` rtmpdump players record over rtmpe:// what ffmpeg publishes; each recording must be
/// whole. Returns the fan-out's (paired, alone) RTMPE writes.
fn rtmpdump_players_over_rtmpe(label: &str, extra_config: &str, players: usize) -> (u64, u64) {
    let _serial = exclusive();
    require_tool("rtmpdump");
    let dir = TempDir::new(label);
    let config =
        format!("{CONFIG}{extra_config}").replace("$CERTS", &dir.file("certs").display().to_string());
    let gw = Gateway::start(&config);
    let url = gw.url("rtmp", "live", label);
    let recorders: Vec<_> = (0..players)
        .map(|i| {
            let out = dir.file(&format!("rtmpe-{i}.flv"));
            (record_rtmpdump(&rtmpe(&url), &out, 7.0), out)
        })
        .collect();
    let playing = format!("variant=\"rtmpe\" stream=live/{label}");
    assert!(
        gw.wait_for_log_count(&playing, players, Duration::from_secs(10)),
        "{players} rtmpdump players did not start:\n{}",
        gw.logs()
    );
    let mut publisher = publish_testsrc(&url, 6.0);
    for (mut player, out) in recorders {
        player.finish();
        assert_good_recording(&format!("{label}: rtmpdump over rtmpe"), &out, 140, 240);
    }
    assert!(publisher.finish().success(), "{}", publisher.describe());
    let (paired, alone) = (rtmpe_fan_out_writes(&gw, "paired"), rtmpe_fan_out_writes(&gw, "alone"));
    eprintln!("[e2e] {label}: RTMPE fan-out writes: {paired} paired, {alone} alone");
    (paired, alone)
}

#[test]
fn three_rtmpdump_players_over_rtmpe_each_record_the_whole_stream() {
    // The fan-out encrypts RTMPE players two at a time (one interleaved RC4 pass) and the odd one
    // alone; each player's bytes must still decrypt with its own key.
    let (paired, alone) = rtmpdump_players_over_rtmpe("three", "", 3);
    // ~410 frames in 6 s: two players of each in a pair, the third alone (a frame may take a
    // player's queue instead).
    assert!(paired >= 400 && alone >= 200, "three live RTMPE players: {paired} paired, {alone} alone");
}

#[test]
fn rtmpe_players_are_paired_when_writes_are_batched_too() {
    // With write coalescing the publisher's task writes each window's batch: paired there as well.
    let (paired, alone) = rtmpdump_players_over_rtmpe("batched", "\n[server]\nwrite_coalesce_ms = 200\n", 2);
    // ~30 windows in 6 s, each a pair (without pairing in the batch flush this is 0).
    assert!(paired >= 40, "two batched RTMPE players: {paired} paired, {alone} alone");
}

#[test]
fn librtmp_publishes_over_rtmpe_and_plays_back_over_rtmp_and_rtmps() {
    let _serial = exclusive();
    let dir = TempDir::new("rtmpe-publish");
    let source = dir.file("source.flv");
    make_testsrc_flv(&source, 8);
    let gw = start(&dir);
    let url = gw.url("rtmp", "live", "py");
    let mut publisher = publish_librtmp(&rtmpe(&url), &source, &dir);
    assert!(gw.wait_for_log_line(&["publishing", "live/py", "rtmpe"], Duration::from_secs(10)).is_some());
    thread::sleep(Duration::from_millis(500));
    let (plain, tls) = (dir.file("plain.flv"), dir.file("tls.flv"));
    let mut plain_player = record_ffmpeg(&url, &plain, 4.0);
    let mut tls_player = record_ffmpeg(&gw.url("rtmps", "live", "py"), &tls, 4.0);
    assert!(plain_player.finish().success(), "{}", plain_player.describe());
    assert!(tls_player.finish().success(), "{}", tls_player.describe());
    assert!(publisher.finish().success(), "{}", publisher.describe());
    assert_good_recording("rtmp player of an rtmpe publisher", &plain, 76, 130);
    assert_good_recording("rtmps player of an rtmpe publisher", &tls, 76, 130);
    let line = close_line(&gw, "live/py", "publisher");
    assert!(line.contains("variant=rtmpe"), "{line}");
}

/// rtmpx's client role over a real socket until `done` says stop; returns the events seen.
fn drive_client(
    addr: std::net::SocketAddr,
    version: HandshakeVersion,
    mut act: impl FnMut(&mut ClientSession, &ClientEvent),
    done: impl Fn(&[ClientEvent]) -> bool,
) -> Vec<ClientEvent> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut config = ClientConfig::new("live", &format!("rtmp://{addr}/live"));
    config.version = version;
    let mut session = ClientSession::new(config, &mut rand::thread_rng());
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = vec![0u8; 65536];
    while !done(&events) {
        assert!(Instant::now() < deadline, "{version:?}: gave up; events: {events:?}");
        while let Some(bytes) = session.poll_transmit() {
            stream.write_all(&bytes).unwrap();
        }
        match stream.read(&mut buf) {
            Ok(0) => panic!("{version:?}: closed by the gateway; events: {events:?}"),
            Ok(n) => session.handle_input(&buf[..n]).unwrap(),
            Err(_) => {}
        }
        while let Some(event) = session.poll_event() {
            act(&mut session, &event);
            events.push(event);
        }
    }
    while let Some(bytes) = session.poll_transmit() {
        stream.write_all(&bytes).unwrap();
    }
    events
}

#[test]
fn rtmpx_client_role_publishes_and_plays_over_every_rtmpe_type() {
    let _serial = exclusive();
    let dir = TempDir::new("rtmpe-client");
    let gw = start(&dir);
    let addr = gw.addr("rtmp");
    for (i, version) in
        [HandshakeVersion::Rtmpe, HandshakeVersion::RtmpeXtea, HandshakeVersion::RtmpeBlowfish]
            .into_iter()
            .enumerate()
    {
        let name = format!("c{i}");
        let frames: Vec<Vec<u8>> =
            (0..20u8).map(|n| [&[0x17u8, 1, 0, 0, 0][..], &vec![n; 3000][..]].concat()).collect();
        // The player waits first, so every frame the publisher sends reaches it live.
        let player_name = name.clone();
        let player = thread::spawn(move || {
            drive_client(
                addr,
                version,
                |s, e| {
                    if matches!(e, ClientEvent::Connected) {
                        s.play(&player_name)
                    }
                },
                |events| {
                    events
                        .iter()
                        .filter(|e| matches!(e, ClientEvent::Media(m) if m.kind == MediaKind::Video))
                        .count()
                        >= 20
                },
            )
        });
        assert!(gw
            .wait_for_log_line(&["playing", &format!("live/{name}"), "rtmpe"], Duration::from_secs(10))
            .is_some());
        let to_send = frames.clone();
        drive_client(
            addr,
            version,
            |s, e| match e {
                ClientEvent::Connected => s.publish(&name),
                ClientEvent::PublishStarted { stream_id } => {
                    for (n, f) in to_send.iter().enumerate() {
                        s.send_media(*stream_id, MediaKind::Video, n as u32 * 40, f);
                    }
                }
                _ => {}
            },
            |events| events.iter().any(|e| matches!(e, ClientEvent::PublishStarted { .. })),
        );
        let events = player.join().unwrap();
        let got: Vec<&[u8]> = events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Media(m) if m.kind == MediaKind::Video => Some(&m.payload[..]),
                _ => None,
            })
            .collect();
        assert_eq!(got.len(), 20, "{version:?}");
        for (sent, received) in frames.iter().zip(got) {
            assert_eq!(&sent[..], received, "{version:?}: payload changed on the way");
        }
        let t = version.to_byte();
        let line = close_line(&gw, &format!("live/{name}"), "publisher");
        assert!(line.contains(&format!("handshake=rtmpe-{t}>{t}")), "{line}");
    }
}

#[test]
fn listeners_can_require_or_forbid_rtmpe() {
    let _serial = exclusive();
    require_tool("rtmpdump");
    let config = r#"
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:0"
encryption = "require"

[[app]]
name = "live"
"#;
    let gw = Gateway::start(config);
    let url = gw.url("rtmp", "live", "x");
    let mut cmd = Command::new("rtmpdump");
    cmd.args(["--live", "-m", "3", "-r", &url, "-o", "/dev/null"]);
    let (_, _, err) = run_bounded(cmd, Duration::from_secs(20));
    assert!(err.contains("handshake failed"), "plain rtmpdump on a require listener: {err}");
    assert!(gw.wait_for_log("plain RTMP refused: RTMPE required", Duration::from_secs(5)), "{}", gw.logs());
    let mut cmd = Command::new("rtmpdump");
    cmd.args(["--live", "-m", "2", "-r", &rtmpe(&url), "-o", "/dev/null"]);
    let (_, out, err) = run_bounded(cmd, Duration::from_secs(20));
    assert!(!err.contains("handshake failed"), "rtmpe on a require listener: {out}{err}");
    assert!(gw.wait_for_log("variant=rtmpe handshake=rtmpe-6>8", Duration::from_secs(10)), "{}", gw.logs());

    let gw = Gateway::start(&config.replace("require", "forbid"));
    let mut cmd = Command::new("rtmpdump");
    cmd.args(["--live", "-m", "3", "-r", &rtmpe(&gw.url("rtmp", "live", "x")), "-o", "/dev/null"]);
    let (_, _, err) = run_bounded(cmd, Duration::from_secs(20));
    assert!(err.contains("handshake failed"), "rtmpe on a forbid listener: {err}");
    assert!(gw.wait_for_log("RTMPE refused by policy", Duration::from_secs(5)), "{}", gw.logs());
}
