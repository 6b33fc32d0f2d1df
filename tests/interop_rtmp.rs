//! Plain RTMP against real clients: ffmpeg publishes, ffmpeg and rtmpdump play, ffprobe judges
//! what they recorded. Plus the abuse cases: a player that stops reading, a second publisher,
//! and malformed input on a real socket, each next to a healthy player that must not notice.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use rtmpx_core::session::{ClientConfig, ClientEvent, ClientSession};
use rtmpx_testkit::{
    assert_good_recording, exclusive, publish, publish_testsrc, record_ffmpeg, record_rtmpdump, require_tool,
    Gateway, PublishOptions, TempDir, DEFAULT_TEST_CONFIG,
};

use rtmpx_testkit::rtmp_client;

const LOG_WAIT: Duration = Duration::from_secs(10);

fn require_clients() {
    for tool in ["ffmpeg", "ffprobe", "rtmpdump"] {
        require_tool(tool);
    }
}

/// Waits for the gateway to log that `stream` (e.g. "live/a") is being published.
fn wait_publishing(gw: &Gateway, stream: &str) {
    let line = gw.wait_for_log_line(&["publishing", stream], LOG_WAIT);
    assert!(line.is_some(), "no `publishing` log line for {stream}; log:\n{}", gw.logs());
}

#[test]
fn ffmpeg_and_rtmpdump_record_a_stream_published_by_ffmpeg() {
    let _serial = exclusive();
    require_clients();
    let gw = Gateway::start_default();
    let dir = TempDir::new("record-both");
    let url = gw.url("rtmp", "live", "a");

    let mut publisher = publish_testsrc(&url, 8.0);
    wait_publishing(&gw, "live/a");
    thread::sleep(Duration::from_secs(1));
    let (ff_out, rd_out) = (dir.file("ffmpeg.flv"), dir.file("rtmpdump.flv"));
    let mut ffmpeg = record_ffmpeg(&url, &ff_out, 4.0);
    let mut rtmpdump = record_rtmpdump(&url, &rd_out, 4.0);

    assert!(ffmpeg.finish().success(), "{}", ffmpeg.describe());
    rtmpdump.finish();
    assert!(publisher.finish().success(), "{}", publisher.describe());

    // About 4 s each: 100 video frames at 25 fps and 172 AAC frames; allow for a slow start
    // (even without a GOP cache, waiting up to a second for a keyframe, nginx-rtmp gives 79).
    assert_good_recording("ffmpeg player", &ff_out, 76, 130);
    let rd = assert_good_recording("rtmpdump player", &rd_out, 76, 130);
    assert!(rd.has_metadata, "rtmpdump got no onMetaData: {}", rd.summary());
}

#[test]
fn late_joiner_starts_on_a_keyframe_with_metadata_and_timestamps_near_zero() {
    let _serial = exclusive();
    require_clients();
    let gw = Gateway::start_default();
    let dir = TempDir::new("late-joiner");
    let url = gw.url("rtmp", "live", "late");

    let mut publisher = publish_testsrc(&url, 9.0);
    wait_publishing(&gw, "live/late");
    thread::sleep(Duration::from_secs(3));
    let (ff_out, rd_out) = (dir.file("ffmpeg.flv"), dir.file("rtmpdump.flv"));
    let mut rtmpdump = record_rtmpdump(&url, &rd_out, 3.0);
    let mut ffmpeg = record_ffmpeg(&url, &ff_out, 3.0);

    rtmpdump.finish();
    assert!(ffmpeg.finish().success(), "{}", ffmpeg.describe());
    assert!(publisher.finish().success(), "{}", publisher.describe());

    // ffmpeg runs with -copyinkf, so a player started mid-GOP would show a non-keyframe first.
    assert_good_recording("late ffmpeg player", &ff_out, 60, 100);
    // rtmpdump writes tags as received: metadata and timestamps are what the gateway sent.
    let rd = assert_good_recording("late rtmpdump player", &rd_out, 60, 100);
    assert!(rd.has_metadata, "late player got no onMetaData: {}", rd.summary());
    let first = rd.first_timestamp.expect("timestamps");
    assert!(first < 1.0, "late player's first timestamp is {first} s, want < 1 s: {}", rd.summary());
}

#[test]
fn ten_players_each_start_on_a_keyframe_and_get_the_whole_stream() {
    let _serial = exclusive();
    require_clients();
    let gw = Gateway::start_default();
    let dir = TempDir::new("ten-players");
    let url = gw.url("rtmp", "live", "many");

    let mut publisher = publish_testsrc(&url, 9.0);
    wait_publishing(&gw, "live/many");
    thread::sleep(Duration::from_secs(1));
    let outputs: Vec<_> = (0..10).map(|i| dir.file(&format!("player{i}.flv"))).collect();
    let mut players: Vec<_> = outputs.iter().map(|out| record_ffmpeg(&url, out, 5.0)).collect();
    for player in &mut players {
        assert!(player.finish().success(), "{}", player.describe());
    }
    assert!(publisher.finish().success(), "{}", publisher.describe());

    // 5 s each: 125 video frames, 215 AAC frames.
    let counts: Vec<usize> = outputs
        .iter()
        .enumerate()
        .map(|(i, out)| assert_good_recording(&format!("player {i}"), out, 100, 170).video_frames)
        .collect();
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(max - min <= 25, "players' video frame counts differ by more than a GOP: {counts:?}");
}

/// The stalled-player test's gateway: a 1 MiB player queue, so the stalled player overflows
/// it within seconds once the kernel's socket buffers (about 4 MiB on loopback) are full.
const SMALL_QUEUE_CONFIG: &str = r#"
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:0"

[[app]]
name = "live"

[limits]
player_queue_bytes = 1048576
"#;

#[test]
fn a_stalled_player_neither_slows_other_players_nor_grows_memory() {
    let _serial = exclusive();
    require_clients();
    let gw = Gateway::start(SMALL_QUEUE_CONFIG);
    let dir = TempDir::new("stalled");
    let url = gw.url("rtmp", "live", "stall");
    let baseline = gw.rss_kib();

    // 8 Mbit/s (x264 CBR with filler): well past what the kernel buffers for the stalled
    // socket, so the gateway's own queue for it fills and must be bounded. (At 2.5 Mbit/s the
    // kernel absorbs all of a 10 s stream and the gateway never notices the stall.)
    let options = PublishOptions { video_cbr: Some("8000k"), ..PublishOptions::new(16.0) };
    let mut publisher = publish(&url, &options);
    wait_publishing(&gw, "live/stall");

    // Plays, then never reads again; a tiny receive buffer makes the gateway's writes block soon.
    let mut stalled = RawClient::connect(gw.addr("rtmp"), "live", Some(4096));
    let stalled_peer = format!("peer=127.0.0.1:{} ", stalled.local_port());
    stalled.play("stall");

    let out = dir.file("healthy.flv");
    let mut healthy = record_ffmpeg(&url, &out, 10.0);
    let mut peak = baseline;
    while healthy.try_status().is_none() && healthy.started().elapsed() < Duration::from_secs(40) {
        peak = peak.max(gw.rss_kib());
        thread::sleep(Duration::from_millis(250));
    }
    assert!(healthy.finish().success(), "{}", healthy.describe());
    peak = peak.max(gw.rss_kib());

    // 10 s: 250 video frames at 25 fps, 430 AAC frames.
    assert_good_recording("player next to a stalled one", &out, 200, 340);
    let growth_mib = peak.saturating_sub(baseline) as f64 / 1024.0;
    eprintln!("[e2e] rtmpx RSS: baseline {baseline} KiB, peak {peak} KiB");
    assert!(
        growth_mib < 64.0,
        "gateway RSS grew {growth_mib:.1} MiB (baseline {baseline} KiB, peak {peak} KiB) with a stalled player"
    );
    if let Some(status) = publisher.try_status() {
        assert!(status.success(), "the publisher suffered: {}", publisher.describe());
    }

    // Proof that the stall was real: the stalled player was sent much less than the healthy one.
    drop(stalled);
    let stalled_line = gw.wait_for_log_line(&["closed", &stalled_peer], LOG_WAIT);
    let stalled_line =
        stalled_line.unwrap_or_else(|| panic!("no close line for the stalled player:\n{}", gw.logs()));
    let logs = gw.logs();
    let healthy_line = logs
        .lines()
        .find(|l| l.contains("closed: peer=") && l.contains("role=player") && !l.contains(&stalled_peer));
    let healthy_line =
        healthy_line.unwrap_or_else(|| panic!("no close line for the healthy player:\n{}", gw.logs()));
    let (stalled_out, healthy_out) = (field_u64(&stalled_line, "out="), field_u64(healthy_line, "out="));
    eprintln!("[e2e] bytes sent: stalled player {stalled_out}, healthy player {healthy_out}");
    assert!(
        stalled_out + 2_000_000 < healthy_out,
        "the stalled player did not stall (sent {stalled_out} B vs {healthy_out} B to the healthy one)"
    );
}

/// `out=1234B` in a session's close line → 1234.
fn field_u64(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.trim_end_matches('B').parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

#[test]
fn a_second_publisher_is_rejected_and_a_player_started_before_the_publisher_gets_the_stream() {
    let _serial = exclusive();
    require_clients();
    let gw = Gateway::start_default();
    let dir = TempDir::new("second-publisher");
    let url = gw.url("rtmp", "live", "s");

    let out = dir.file("early.flv");
    let mut early_player = record_ffmpeg(&url, &out, 4.0);
    let playing = gw.wait_for_log_line(&["playing", "live/s"], LOG_WAIT);
    assert!(playing.is_some(), "the early player is not playing; log:\n{}", gw.logs());

    let mut first = publish_testsrc(&url, 8.0);
    wait_publishing(&gw, "live/s");
    thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let mut second = publish_testsrc(&url, 3.0);
    let status = second.finish();
    assert!(!status.success(), "the second publisher was not rejected: {}", second.describe());
    assert!(started.elapsed() < Duration::from_secs(10), "rejection took {:?}", started.elapsed());
    assert!(
        gw.wait_for_log("already published", LOG_WAIT),
        "no `already published` log line; log:\n{}",
        gw.logs()
    );

    assert!(early_player.finish().success(), "{}", early_player.describe());
    assert!(first.finish().success(), "the first publisher suffered: {}", first.describe());
    assert_good_recording("player started before the publisher", &out, 75, 130);
}

/// One attack on a fresh connection: what to send after connect, and which words its log line
/// may give as the reason.
struct Attack {
    name: &'static str,
    bytes: Vec<u8>,
    reasons: &'static [&'static str],
}

fn attacks() -> Vec<Attack> {
    use rand::{RngCore, SeedableRng};
    const ANY: &[&str] = &["malformed", "limit exceeded", "protocol violation"];
    const LIMIT: &[&str] = &["limit exceeded"];

    // 0xFF: a type-3 header on chunk stream 63, which has no previous header to continue.
    let mut garbage = vec![0u8; 4096];
    rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut garbage);
    garbage[0] = 0xFF;

    // A header announcing 16 MiB - 1 (over the 8 MiB default cap), then a first chunk.
    let mut huge = chunk_header(0, 3, 0, 0xFF_FFFF, 20, 0);
    huge.extend_from_slice(&[0u8; CHUNK_SIZE]);

    // 70,000 tiny data messages cycling over all 65,598 ids (2..=65599, the most the basic
    // header can name); the default keeps state for 64.
    let name = b"\x02\x00\x05@noop";
    let mut many = Vec::new();
    for i in 0..70_000u32 {
        many.extend(chunked(3 + i % 65_597, 18, 0, name));
    }

    // A command whose argument is 100,000 objects deep ({"a": {"a": ...}}).
    let mut deep = b"\x02\x00\x04noop\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05".to_vec();
    for _ in 0..100_000 {
        deep.extend_from_slice(b"\x03\x00\x01a");
    }
    deep.push(0x05);

    vec![
        Attack { name: "garbage after connect", bytes: garbage, reasons: ANY },
        Attack { name: "Set Chunk Size 0", bytes: chunked(2, 1, 0, &0u32.to_be_bytes()), reasons: ANY },
        Attack {
            name: "Set Chunk Size 2^31-1",
            bytes: chunked(2, 1, 0, &0x7FFF_FFFFu32.to_be_bytes()),
            reasons: LIMIT,
        },
        Attack { name: "message of 16 MiB - 1", bytes: huge, reasons: LIMIT },
        Attack { name: "70,000 chunk stream ids", bytes: many, reasons: LIMIT },
        Attack {
            name: "AMF nested 100,000 deep",
            bytes: chunked(3, 20, 0, &deep),
            reasons: &["limit exceeded", "malformed"],
        },
    ]
}

#[test]
fn malformed_input_closes_only_that_connection() {
    let _serial = exclusive();
    require_clients();
    let gw = Gateway::start_default();
    let dir = TempDir::new("malformed");
    let url = gw.url("rtmp", "live", "m");

    let mut publisher = publish_testsrc(&url, 60.0);
    wait_publishing(&gw, "live/m");
    let out = dir.file("bystander.flv");
    let mut bystander = record_ffmpeg(&url, &out, 60.0);
    thread::sleep(Duration::from_secs(1));

    let mut failures = Vec::new();
    for attack in attacks() {
        if let Err(why) = run_attack(&gw, &attack) {
            failures.push(format!("{}: {why}", attack.name));
        }
        thread::sleep(Duration::from_millis(500));
    }
    // Long enough for the frame count to mean something even when the attacks are quick.
    while bystander.started().elapsed() < Duration::from_secs(7) {
        thread::sleep(Duration::from_millis(100));
    }
    let elapsed = bystander.started().elapsed().as_secs_f64();
    bystander.stop();
    assert!(publisher.try_status().is_none(), "the publisher died: {}", publisher.describe());
    drop(publisher);

    assert!(failures.is_empty(), "attacks not handled:\n{}\nlog:\n{}", failures.join("\n"), gw.logs());
    // 25 fps for the time it ran, less a start-up second and a margin.
    let min_video = ((elapsed - 1.5) * 25.0 * 0.8) as usize;
    let report = assert_good_recording("bystander player", &out, min_video, min_video);
    assert!(report.video_span() > elapsed - 3.0, "bystander stalled: {} in {elapsed:.1} s", report.summary());
}

fn run_attack(gw: &Gateway, attack: &Attack) -> Result<(), String> {
    let mut client = RawClient::connect(gw.addr("rtmp"), "live", None);
    let port = client.local_port();
    // The peer may close mid-write; that is the point, so write errors are fine.
    let _ = client.send_raw(&attack.bytes);
    client.wait_closed(Duration::from_secs(5))?;
    let peer = format!("peer=127.0.0.1:{port} ");
    let line = gw
        .wait_for_log_line(&["closed", &peer], Duration::from_secs(3))
        .ok_or_else(|| format!("no `closed` log line for {peer}"))?;
    let reason = line.split("reason=").nth(1).unwrap_or_default();
    if attack.reasons.iter().any(|r| reason.contains(r)) {
        Ok(())
    } else {
        Err(format!("log line gives no reason among {:?}: {line}", attack.reasons))
    }
}

// ---------------------------------------------------------------------------------------------
// A raw RTMP client: the core's client session over a blocking socket, for attacks and stalls.

/// Our outgoing chunk size, announced by the session right after connect.
const CHUNK_SIZE: usize = 4096;

struct RawClient {
    stream: TcpStream,
    session: ClientSession,
}

impl RawClient {
    /// Connects and completes handshake and `connect` (panics after 10 s). `recv_buffer` sets
    /// SO_RCVBUF before connecting.
    fn connect(addr: SocketAddr, app: &str, recv_buffer: Option<usize>) -> RawClient {
        let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)
            .expect("creating a socket");
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("setting SO_RCVBUF");
        }
        socket.connect_timeout(&addr.into(), Duration::from_secs(5)).expect("connecting to the gateway");
        let stream: TcpStream = socket.into();
        stream.set_nodelay(true).expect("TCP_NODELAY");
        stream.set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
        let mut config = ClientConfig::new(app, &format!("rtmp://{addr}/{app}"));
        config.chunk_size = CHUNK_SIZE as u32;
        let session = ClientSession::new(config, &mut rand::thread_rng());
        let mut client = RawClient { stream, session };
        client.pump_until("connect", |e| matches!(e, ClientEvent::Connected));
        client.flush().expect("sending Set Chunk Size");
        client
    }

    fn local_port(&self) -> u16 {
        self.stream.local_addr().expect("local address").port()
    }

    /// Plays `stream` and returns once the gateway says it started.
    fn play(&mut self, stream: &str) {
        self.session.play(stream);
        self.pump_until("play", |e| matches!(e, ClientEvent::PlayStarted { .. } | ClientEvent::Media(_)));
    }

    fn flush(&mut self) -> io::Result<()> {
        while let Some(bytes) = self.session.poll_transmit() {
            self.stream.write_all(&bytes)?;
        }
        Ok(())
    }

    /// Moves bytes both ways until an event satisfies `done`; panics on rejection or after 10 s.
    fn pump_until(&mut self, what: &str, done: impl Fn(&ClientEvent) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            self.flush().unwrap_or_else(|e| panic!("{what}: writing: {e}"));
            while let Some(event) = self.session.poll_event() {
                if let ClientEvent::Rejected { code, description } = &event {
                    panic!("{what}: rejected: {code} {description}");
                }
                if done(&event) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "{what}: no answer within 10 s");
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("{what}: the gateway closed the connection"),
                Ok(n) => {
                    self.session.handle_input(&buf[..n]).unwrap_or_else(|e| panic!("{what}: {e}"));
                }
                Err(e) if is_timeout(&e) => {}
                Err(e) => panic!("{what}: reading: {e}"),
            }
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.flush()?;
        self.stream.write_all(bytes)
    }

    /// Reads and discards until the gateway closes the connection (EOF or reset).
    fn wait_closed(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 64 * 1024];
        while Instant::now() < deadline {
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {}
                Err(_) => return Ok(()),
            }
        }
        Err(format!("connection still open after {timeout:?}"))
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted)
}

/// Basic header (1, 2 or 3 bytes by id) and a type-0 message header.
fn chunk_header(fmt: u8, csid: u32, timestamp: u32, length: u32, type_id: u8, stream_id: u32) -> Vec<u8> {
    let mut out = basic_header(fmt, csid);
    out.extend_from_slice(&timestamp.min(0xFF_FFFF).to_be_bytes()[1..]);
    out.extend_from_slice(&length.to_be_bytes()[1..]);
    out.push(type_id);
    out.extend_from_slice(&stream_id.to_le_bytes());
    out
}

fn basic_header(fmt: u8, csid: u32) -> Vec<u8> {
    match csid {
        2..=63 => vec![fmt << 6 | csid as u8],
        64..=319 => vec![fmt << 6, (csid - 64) as u8],
        _ => vec![fmt << 6 | 1, ((csid - 64) & 0xFF) as u8, ((csid - 64) >> 8) as u8],
    }
}

/// A whole message in chunks of [`CHUNK_SIZE`]: type 0 header first, type 3 after.
fn chunked(csid: u32, type_id: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = chunk_header(0, csid, 0, payload.len() as u32, type_id, stream_id);
    for (i, piece) in payload.chunks(CHUNK_SIZE).enumerate() {
        if i > 0 {
            out.extend(basic_header(3, csid));
        }
        out.extend_from_slice(piece);
    }
    out
}

#[test]
fn chunk_helpers_encode_headers_as_the_spec_says() {
    // Known answers: one-, two- and three-byte basic headers (RTMP spec 5.3.1.1).
    assert_eq!(basic_header(0, 3), [0x03]);
    assert_eq!(basic_header(3, 63), [0xFF]);
    assert_eq!(basic_header(0, 64), [0x00, 0x00]);
    assert_eq!(basic_header(1, 319), [0x40, 0xFF]);
    assert_eq!(basic_header(0, 320), [0x01, 0x00, 0x01]);
    assert_eq!(basic_header(0, 65_599), [0x01, 0xFF, 0xFF]);
    let msg = chunked(2, 1, 0, &4096u32.to_be_bytes());
    assert_eq!(msg, [0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0, 0, 0x10, 0]);
    let long = chunked(3, 20, 1, &[7u8; CHUNK_SIZE + 1]);
    assert_eq!(long.len(), 12 + CHUNK_SIZE + 1 + 1);
    assert_eq!(long[12 + CHUNK_SIZE], 0xC3);
}

#[test]
fn sigterm_stops_the_gateway_and_closes_its_clients() {
    let _serial = exclusive();
    let mut gw = Gateway::start_default();
    let mut player = RawClient::connect(gw.addr("rtmp"), "live", None);
    player.play("nothing-yet");
    gw.signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "rtmpx did not exit cleanly on SIGTERM: {status:?}");
    assert!(gw.logs().contains("rtmpx stopped"), "log:\n{}", gw.logs());
    player.wait_closed(Duration::from_secs(1)).expect("the player's connection is closed");
}

/// Plays `live/{stream}` with rtmpx-core's client for `window` (after a second of warm-up) and
/// returns (media messages, bursts): a burst is media arriving within 20 ms of the previous read.
fn media_bursts(gw: &Gateway, stream: &str, window: Duration) -> (usize, usize) {
    use rtmp_client::{attempt, tcp, Intent, Outcome};
    let addr = gw.addr("rtmp");
    let tc_url = format!("rtmp://{addr}/live");
    let (outcome, mut conn) = attempt(
        tcp(addr),
        rtmpx_core::handshake::HandshakeVersion::Plain,
        "live",
        &tc_url,
        Intent::Play(stream.into()),
        LOG_WAIT,
    );
    assert_eq!(outcome, Outcome::Started);
    // The GOP cache comes at once; batching shows on the live frames after it.
    conn.pump(Duration::from_secs(1)).expect("player connection closed");
    let mut buf = vec![0u8; 256 * 1024];
    let (mut messages, mut bursts, mut last_media) = (0, 0, None::<Instant>);
    let end = Instant::now() + window;
    while Instant::now() < end {
        match conn.wire.read(&mut buf) {
            Ok(0) => panic!("the gateway closed the player"),
            Ok(n) => conn.session.handle_input(&buf[..n]).expect("client session"),
            Err(e) if is_timeout(&e) => continue,
            Err(e) => panic!("reading: {e}"),
        }
        let mut got_media = false;
        while let Some(event) = conn.session.poll_event() {
            if matches!(event, ClientEvent::Media(_)) {
                messages += 1;
                got_media = true;
            }
        }
        if got_media {
            let now = Instant::now();
            if last_media.is_none_or(|at| now - at > Duration::from_millis(20)) {
                bursts += 1;
            }
            last_media = Some(now);
        }
        assert!(conn.flush(), "the gateway closed the player");
    }
    (messages, bursts)
}

#[test]
fn write_coalescing_sends_media_in_batches_and_loses_nothing() {
    let _serial = exclusive();
    require_clients();
    // Load-driven batching off, so that the plain run writes frames as they come even when the
    // machine running the suite is busy.
    let config = |ms: u64| {
        format!("[server]\nwrite_coalesce_ms = {ms}\nwrite_coalesce_under_load_ms = 0\n{DEFAULT_TEST_CONFIG}")
    };
    let dir = TempDir::new("coalesce");
    let mut measured = Vec::new();
    for ms in [0u64, 300] {
        let gw = Gateway::start(&config(ms));
        let url = gw.url("rtmp", "live", "c");
        let mut publisher = publish_testsrc(&url, 9.0);
        wait_publishing(&gw, "live/c");
        let out = dir.file(&format!("ffmpeg-{ms}.flv"));
        let mut ffmpeg = record_ffmpeg(&url, &out, 4.0);
        let (messages, bursts) = media_bursts(&gw, "c", Duration::from_secs(3));
        assert!(ffmpeg.finish().success(), "{}", ffmpeg.describe());
        assert!(publisher.finish().success(), "{}", publisher.describe());
        // A real player still gets every frame, in order, decodable.
        assert_good_recording(&format!("ffmpeg player, write_coalesce_ms = {ms}"), &out, 76, 130);
        measured.push((ms, messages, bursts));
    }
    eprintln!("(write_coalesce_ms, media messages, bursts): {measured:?}");
    let [(_, plain_messages, plain_bursts), (_, batched_messages, batched_bursts)] = measured[..] else {
        unreachable!()
    };
    // 3 s of 25 fps video and ~43 AAC frames per second: about 200 messages either way.
    for messages in [plain_messages, batched_messages] {
        assert!((150..=260).contains(&messages), "{measured:?}");
    }
    // Written as they come, 25 video and ~43 audio frames a second arrive in dozens of separate
    // bursts (ffmpeg -re paces them, a busy machine merges some); batched per 300 ms window, in
    // about ten.
    assert!(plain_bursts >= 30 && plain_bursts >= 2 * batched_bursts, "{measured:?}");
    assert!((6..=16).contains(&batched_bursts), "{measured:?}");
}
