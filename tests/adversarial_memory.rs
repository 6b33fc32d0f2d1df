//! What one client address can make the gateway hold (issue 16, memory): the resident memory
//! (/proc/PID/status VmRSS) of the real `rtmpx` binary is sampled during each attack and its
//! growth must stay under a bound that the attack would pass many times over without the limits.
//!
//! - a publisher's GOP filled with empty and one-byte frames (per-frame overhead is counted);
//! - one-byte frames behind ignored multi-MiB messages (a small frame must not pin the buffer);
//! - partial 8 MiB messages on many connections (`limits.max_memory_per_ip`), and one trickled
//!   a byte at a time (`timeouts.partial_message_secs`);
//! - RTMPT sessions (counted by `max_connections_per_ip`) and unfinished RTMPT bodies (charged to
//!   the address's budget);
//! - many players of a big stream that stop reading (their queued frames are charged).

use rtmpx_testkit::rtmp_client;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rtmp_client::{attempt, tcp, Conn, Intent, Outcome, Wire};
use rtmpx_core::handshake::HandshakeVersion;
use rtmpx_core::session::{ClientEvent, MediaKind};
use rtmpx_testkit::{exclusive, Gateway};

const CONFIG: &str = r#"
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:0"

[[listener]]
proto = "rtmpt"
addr = "127.0.0.1:0"

[[app]]
name = "live"

[limits]
max_gop_bytes = 4194304

[timeouts]
handshake_secs = 10
idle_secs = 60
partial_message_secs = 4
"#;

/// The gateway with `limits` added to its `[limits]` section.
fn start(limits: &str) -> Gateway {
    Gateway::start(&CONFIG.replace("[limits]\n", &format!("[limits]\n{limits}")))
}

fn session(gw: &Gateway, intent: Intent) -> Conn {
    let addr = gw.addr("rtmp");
    let (outcome, conn) = attempt(
        tcp(addr),
        HandshakeVersion::Plain,
        "live",
        &format!("rtmp://{addr}/live"),
        intent,
        Duration::from_secs(10),
    );
    assert_eq!(outcome, Outcome::Started, "log:\n{}", gw.logs());
    conn
}

/// One message as a type-0 chunk and type-3 continuations on `csid` (2..=63).
fn message(csid: u8, type_id: u8, stream_id: u32, payload: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = vec![csid, 0, 0, 0];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(type_id);
    out.extend_from_slice(&stream_id.to_le_bytes());
    for (i, piece) in payload.chunks(chunk.max(1)).enumerate() {
        if i > 0 {
            out.push(0xC0 | csid);
        }
        out.extend_from_slice(piece);
    }
    out
}

fn set_chunk_size(size: u32) -> Vec<u8> {
    message(2, 1, 0, &size.to_be_bytes(), 128)
}

/// Waits until the gateway has handled everything sent on `conn` so far: it answers a ping
/// (User Control 6) only after the bytes before it. Reads the socket raw for the answer; false
/// when the gateway closed the connection instead.
fn settle(conn: &mut Conn) -> bool {
    let marker = [0x00, 0x07, 0xDE, 0xAD, 0xBE, 0xEF];
    let ping = message(2, 4, 0, &[0x00, 0x06, 0xDE, 0xAD, 0xBE, 0xEF], 128);
    if conn.wire.write_all(&ping).and_then(|_| conn.wire.flush()).is_err() {
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seen = Vec::new();
    let mut buf = [0u8; 65536];
    while !seen.windows(marker.len()).any(|w| w == marker) {
        assert!(Instant::now() < deadline, "no ping answer");
        match conn.wire.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return false,
        }
    }
    true
}

/// The highest VmRSS growth over `baseline` seen while sampling for `duration`.
fn peak_growth_kib(gw: &Gateway, baseline: u64, duration: Duration) -> u64 {
    let deadline = Instant::now() + duration;
    let mut peak = gw.rss_kib();
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        peak = peak.max(gw.rss_kib());
    }
    peak.saturating_sub(baseline)
}

const MIB: u64 = 1024;

#[test]
fn a_gop_of_empty_and_one_byte_frames_stays_bounded() {
    // Without per-frame accounting 1.2 MB of one-byte frames held ~90 MiB in the GOP, and
    // 1 MB of one-byte type-3 headers (empty messages) ~56 MiB.
    let _serial = exclusive();
    let gw = start("");
    let mut publisher = session(&gw, Intent::Publish("tiny".into()));
    let stream_id = publisher.stream_id.unwrap();
    let baseline = gw.rss_kib();
    let mut attack = message(6, 9, stream_id, &[0x17, 1, 0, 0, 0, 0x65, 0x88], 128);
    // An empty audio message on chunk stream 4, then a million one-byte type-3 headers: each
    // starts another empty message.
    attack.extend(message(4, 8, stream_id, &[], 128));
    attack.extend(std::iter::repeat_n(0xC4u8, 1_000_000));
    // A one-byte audio message on chunk stream 5, then 600,000 more of them at two bytes each.
    attack.extend(message(5, 8, stream_id, &[0xAF], 128));
    for _ in 0..600_000 {
        attack.extend_from_slice(&[0xC5, 0xAF]);
    }
    publisher.wire.write_all(&attack).unwrap();
    assert!(settle(&mut publisher), "log:\n{}", gw.logs());
    let growth = peak_growth_kib(&gw, baseline, Duration::from_secs(1));
    eprintln!("[tiny frames] {} KiB sent, VmRSS +{growth} KiB", attack.len() / 1024);
    // The GOP bound is 4 MiB with overhead; allocator slack on top.
    assert!(growth < 24 * MIB, "VmRSS grew by {growth} KiB; log:\n{}", gw.logs());
    assert!(gw.count_log("closed:") == 0, "a bounded publisher is not cut off; log:\n{}", gw.logs());
    // The stream still works: a player joins and gets the next keyframe.
    let mut player = session(&gw, Intent::Play("tiny".into()));
    publisher.wire.write_all(&message(6, 9, stream_id, &[0x17, 1, 0, 0, 0, 0x65, 0x88], 128)).unwrap();
    let events = player.pump(Duration::from_secs(1)).unwrap();
    assert!(events
        .iter()
        .any(|e| matches!(e, rtmpx_core::session::ClientEvent::Media(m) if m.payload[0] == 0x17)));
}

#[test]
fn one_byte_frames_do_not_pin_large_input_buffers() {
    // Without copying, each cached 2-byte frame kept its 2 MiB input buffer alive: +80 MiB.
    let _serial = exclusive();
    let gw = start("");
    let mut publisher = session(&gw, Intent::Publish("pin".into()));
    let stream_id = publisher.stream_id.unwrap();
    let baseline = gw.rss_kib();
    publisher.wire.write_all(&set_chunk_size(4 << 20)).unwrap();
    publisher.wire.write_all(&message(6, 9, stream_id, &[0x17, 1, 0, 0, 0, 0x65, 0x88], 4 << 20)).unwrap();
    let ignored = vec![0u8; 2 << 20];
    for _ in 0..40 {
        // Type 16 (shared object, AMF3) is ignored; the audio frame after it is cached.
        publisher.wire.write_all(&message(8, 16, stream_id, &ignored, 4 << 20)).unwrap();
        publisher.wire.write_all(&message(4, 8, stream_id, &[0xAF, 0x01], 4 << 20)).unwrap();
    }
    assert!(settle(&mut publisher), "log:\n{}", gw.logs());
    let growth = peak_growth_kib(&gw, baseline, Duration::from_secs(1));
    eprintln!("[pinned buffers] 40 x 2 MiB ignored + 2-byte frames, VmRSS +{growth} KiB");
    assert!(growth < 24 * MIB, "VmRSS grew by {growth} KiB; log:\n{}", gw.logs());
    assert!(gw.count_log("closed:") == 0, "the publisher is not cut off; log:\n{}", gw.logs());
}

#[test]
fn partial_messages_are_bounded_per_address_and_time_out() {
    // 12 connections, each with one 8 MiB message partly buffered and a second 7 MiB into its
    // first chunk: ~200 MiB without a per-address budget. The budget is 64 MiB (default).
    let _serial = exclusive();
    let gw = start("");
    let baseline = gw.rss_kib();
    let mut conns: Vec<Conn> = (0..12).map(|_| session(&gw, Intent::Connect)).collect();
    for conn in &mut conns {
        // Chunk size 8 MiB - 1; an 8 MiB message (type 16, ignored) all but its last byte; a
        // second one 7 MiB into its first chunk. Writes to a connection closed for the budget fail.
        let mut bytes = set_chunk_size((8 << 20) - 1);
        bytes.extend_from_slice(&[4, 0, 0, 0, 0x80, 0, 0, 16, 0, 0, 0, 0]);
        bytes.resize(bytes.len() + (8 << 20) - 1, 1);
        bytes.extend_from_slice(&[5, 0, 0, 0, 0x80, 0, 0, 16, 0, 0, 0, 0]);
        bytes.resize(bytes.len() + (7 << 20), 2);
        let _ = conn.wire.write_all(&bytes);
        let _ = conn.wire.flush();
    }
    let growth = peak_growth_kib(&gw, baseline, Duration::from_secs(3));
    let over = gw.count_log("max_memory_per_ip");
    eprintln!("[partial messages] 12 connections, VmRSS +{growth} KiB, {over} closed over the budget");
    assert!(over >= 4, "the per-address budget never closed a connection; log:\n{}", gw.logs());
    // The budget plus what one read and buffer doubling may overshoot, plus allocator slack.
    assert!(growth < 112 * MIB, "VmRSS grew by {growth} KiB; log:\n{}", gw.logs());
    drop(conns);

    // A partial message trickled a byte every 300 ms keeps the connection busy but not alive.
    let mut slow = session(&gw, Intent::Connect);
    slow.wire.write_all(&[4, 0, 0, 0, 0, 0x10, 0, 16, 0, 0, 0, 0]).unwrap();
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(10) {
        if slow.wire.write_all(&[0]).and_then(|_| slow.wire.flush()).is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 1024];
        match slow.wire.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Err(e) if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                closed = true;
                break;
            }
            _ => {}
        }
        thread::sleep(Duration::from_millis(300));
    }
    let took = started.elapsed();
    assert!(
        closed && took >= Duration::from_secs(3),
        "trickled partial message: closed={closed} after {took:?}"
    );
    assert!(
        gw.wait_for_log_line(&["closed:", "a message left incomplete"], Duration::from_secs(5)).is_some(),
        "log:\n{}",
        gw.logs()
    );
}

#[test]
fn stream_caches_of_many_publishers_are_bounded_per_address() {
    // Ten publishers from one address, each with 6 MiB metadata, 6 MiB AVC and AAC sequence
    // headers and a 12 MiB GOP: ~300 MiB cached without limits. Headers over max_header_bytes
    // are not cached; GOPs count against the 64 MiB budget, which closes publishers past it.
    let _serial = exclusive();
    let gw = Gateway::start(&CONFIG.replace("max_gop_bytes = 4194304", "max_gop_bytes = 16777216"));
    let baseline = gw.rss_kib();
    let big = 6 << 20;
    let mut metadata = vec![0u8; big];
    metadata[..13].copy_from_slice(b"\x02\x00\x0aonMetaData");
    let mut avc = vec![0u8; big];
    avc[..2].copy_from_slice(&[0x17, 0x00]);
    let mut aac = vec![0u8; big];
    aac[..2].copy_from_slice(&[0xAF, 0x00]);
    let mut key = vec![0u8; 1 << 20];
    key[..2].copy_from_slice(&[0x17, 0x01]);
    let mut inter = vec![0u8; 1 << 20];
    inter[..2].copy_from_slice(&[0x27, 0x01]);
    let mut publishers = Vec::new();
    for i in 0..10 {
        let mut publisher = session(&gw, Intent::Publish(format!("cache{i}")));
        let id = publisher.stream_id.unwrap();
        let mut bytes = set_chunk_size(8 << 20);
        bytes.extend(message(5, 18, id, &metadata, 8 << 20));
        bytes.extend(message(6, 9, id, &avc, 8 << 20));
        bytes.extend(message(4, 8, id, &aac, 8 << 20));
        bytes.extend(message(6, 9, id, &key, 8 << 20));
        for _ in 0..11 {
            bytes.extend(message(6, 9, id, &inter, 8 << 20));
        }
        // A publisher closed over the budget fails to write: go on with the next.
        let _ = publisher.wire.write_all(&bytes);
        publishers.push(publisher);
    }
    for publisher in &mut publishers {
        settle(publisher);
    }
    let growth = peak_growth_kib(&gw, baseline, Duration::from_secs(1));
    let over = gw.count_log("closed:");
    eprintln!("[stream caches] 10 publishers, VmRSS +{growth} KiB, {over} closed over the budget");
    assert!(over >= 2, "no publisher was closed over the budget; log:\n{}", gw.logs());
    assert!(growth < 112 * MIB, "VmRSS grew by {growth} KiB; log:\n{}", gw.logs());
    assert!(gw.wait_for_log("max_memory_per_ip", Duration::from_secs(1)));
}

/// Sends one HTTP request head (and `body`) on a new connection to `addr`.
fn http_start(addr: std::net::SocketAddr, path: &str, length: usize, body: &[u8]) -> TcpStream {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-fcs\r\nContent-Length: {length}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).unwrap();
    let _ = conn.write_all(body);
    conn
}

/// The status of the response on `conn`, if one arrives within `limit`.
fn http_status(conn: &mut TcpStream, limit: Duration) -> Option<u16> {
    let deadline = Instant::now() + limit;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if data.len() >= 12 {
            return String::from_utf8_lossy(&data[9..12]).parse().ok();
        }
        match conn.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    }
    None
}

#[test]
fn rtmpt_sessions_and_unfinished_bodies_count_against_the_address() {
    let _serial = exclusive();
    let gw = start("max_connections_per_ip = 20\nmax_message_size = 1048576\nmax_memory_per_ip = 16777216\n");
    let addr = gw.addr("rtmpt");
    // Tunnel sessions count like connections: with the opening connection itself, at most 20.
    let mut opener = TcpStream::connect(addr).unwrap();
    opener.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut opened = 0;
    let mut refused = 0;
    for _ in 0..30 {
        opener.write_all(b"POST /open/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n\0").unwrap();
        match http_status(&mut opener, Duration::from_secs(5)) {
            Some(200) => opened += 1,
            Some(503) => refused += 1,
            other => panic!("unexpected answer {other:?}"),
        }
        // The rest of the response (its body) is read with the next status or discarded.
        thread::sleep(Duration::from_millis(20));
        let mut sink = [0u8; 4096];
        let _ = opener.read(&mut sink);
    }
    eprintln!("[rtmpt] {opened} sessions opened, {refused} refused");
    assert!(opened <= 19 && refused >= 11, "opened {opened}, refused {refused}; log:\n{}", gw.logs());
    drop(opener);
    // Let the opened sessions' handshake timeout free their places.
    assert!(gw.wait_for_log_count("closed:", opened, Duration::from_secs(20)), "log:\n{}", gw.logs());

    // Unfinished 1 MiB bodies (900 KiB sent) on 19 connections: 17 MiB wanted, 16 MiB allowed.
    let baseline = gw.rss_kib();
    let body = vec![0u8; 900 << 10];
    let mut conns: Vec<TcpStream> =
        (0..19).map(|i| http_start(addr, &format!("/send/{i}/1"), 1 << 20, &body)).collect();
    let growth = peak_growth_kib(&gw, baseline, Duration::from_secs(2));
    let unavailable = conns
        .iter_mut()
        .map(|conn| http_status(conn, Duration::from_millis(300)))
        .filter(|s| *s == Some(503))
        .count();
    eprintln!("[rtmpt bodies] VmRSS +{growth} KiB, {unavailable} requests refused over the budget");
    assert!(unavailable >= 1, "no body was refused over the budget; log:\n{}", gw.logs());
    assert!(growth < 40 * MIB, "VmRSS grew by {growth} KiB");
}

/// Plain TCP to `addr` from `source` (every 127/8 address is loopback: another client address),
/// with a receive buffer of `receive_buffer` bytes when not 0 (set before connecting, so the
/// window stays small).
fn tcp_from(addr: std::net::SocketAddr, source: [u8; 4], receive_buffer: usize) -> Box<dyn Wire> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&std::net::SocketAddr::from((source, 0)).into()).unwrap();
    if receive_buffer > 0 {
        socket.set_recv_buffer_size(receive_buffer).unwrap();
    }
    socket.connect(&addr.into()).unwrap_or_else(|e| panic!("connecting to {addr} from {source:?}: {e}"));
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    stream.set_nodelay(true).unwrap();
    Box::new(stream)
}

fn session_from(gw: &Gateway, source: [u8; 4], receive_buffer: usize, intent: Intent) -> Conn {
    let addr = gw.addr("rtmp");
    let wire = tcp_from(addr, source, receive_buffer);
    let url = format!("rtmp://{addr}/live");
    let (outcome, conn) =
        attempt(wire, HandshakeVersion::Plain, "live", &url, intent, Duration::from_secs(10));
    assert_eq!(outcome, Outcome::Started, "log:\n{}", gw.logs());
    conn
}

#[test]
fn players_that_stop_reading_are_bounded_per_address() {
    // 40 players of one address join a 256 KiB-per-frame stream one after another and stop
    // reading (4 KiB receive buffers): each pins the next 8 MiB of frames in its queue
    // (player_queue_bytes), ~320 MiB for `write_secs` without the budget. Charged to the address,
    // the players past 64 MiB are closed. The publisher and a reading canary come from other
    // addresses; the canary must get every frame, in order.
    let _serial = exclusive();
    let gw = Gateway::start(
        &CONFIG.replace("partial_message_secs = 4\n", "partial_message_secs = 4\nwrite_secs = 120\n"),
    );
    const FRAME: usize = 256 << 10;
    const FRAMES_PER_PLAYER: u32 = 36; // 9 MiB: more than one player's queue holds
    const PLAYERS: u32 = 40;
    let mut publisher = session_from(&gw, [127, 0, 0, 2], 0, Intent::Publish("big".into()));
    let id = publisher.stream_id.unwrap();
    publisher.wire.write_all(&set_chunk_size(1 << 20)).unwrap();

    let received = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut canary = session_from(&gw, [127, 0, 0, 3], 0, Intent::Play("big".into()));
    let canary = thread::spawn({
        let (received, done) = (received.clone(), done.clone());
        move || -> Result<(), String> {
            while !done.load(Ordering::Relaxed) {
                let events = canary.pump(Duration::from_millis(50)).map_err(|_| "the canary was closed")?;
                for event in events {
                    let ClientEvent::Media(media) = event else { continue };
                    if media.kind != MediaKind::Video {
                        continue;
                    }
                    let index = u32::from_be_bytes(media.payload[5..9].try_into().unwrap());
                    let expected = received.load(Ordering::Relaxed);
                    if index != expected || media.payload.len() != FRAME {
                        return Err(format!(
                            "frame {index} ({} B), expected {expected}",
                            media.payload.len()
                        ));
                    }
                    received.store(expected + 1, Ordering::Relaxed);
                }
            }
            Ok(())
        }
    });
    let mut sent = 0u32;
    // A keyframe every 8 frames: a 2 MiB GOP, cached, so each player starts at once.
    let mut send_frames = |publisher: &mut Conn, count: u32| {
        let mut bytes = Vec::new();
        for _ in 0..count {
            let mut payload = vec![0u8; FRAME];
            payload[0] = if sent.is_multiple_of(8) { 0x17 } else { 0x27 };
            payload[1] = 0x01;
            payload[5..9].copy_from_slice(&sent.to_be_bytes());
            bytes.extend(message(6, 9, id, &payload, 1 << 20));
            sent += 1;
        }
        publisher.wire.write_all(&bytes).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while received.load(Ordering::Relaxed) < sent {
            assert!(
                Instant::now() < deadline,
                "the canary got {} of {sent} frames",
                received.load(Ordering::Relaxed)
            );
            thread::sleep(Duration::from_millis(10));
        }
    };
    // Warm up (the allocator, the canary's buffers), then measure from there.
    send_frames(&mut publisher, FRAMES_PER_PLAYER);
    let baseline = gw.rss_kib();
    let mut peak = baseline;
    let mut stalled = Vec::new();
    for _ in 0..PLAYERS {
        // Once the address is at its budget, a new player may be closed at once (the GOP it
        // starts with cannot be charged): that is one of the closes counted below.
        let addr = gw.addr("rtmp");
        let wire = tcp_from(addr, [127, 0, 0, 1], 4096);
        let url = format!("rtmp://{addr}/live");
        let intent = Intent::Play("big".into());
        stalled.push(attempt(wire, HandshakeVersion::Plain, "live", &url, intent, Duration::from_secs(10)));
        send_frames(&mut publisher, FRAMES_PER_PLAYER);
        peak = peak.max(gw.rss_kib());
    }
    let growth = peak_growth_kib(&gw, baseline, Duration::from_secs(1)).max(peak - baseline);
    let started = stalled.iter().filter(|(outcome, _)| *outcome == Outcome::Started).count();
    done.store(true, Ordering::Relaxed);
    let canary = canary.join().unwrap();
    let closed = gw.count_log("frames queued for a player that is not reading");
    eprintln!("[stalled players] {PLAYERS} players ({started} started), {sent} frames of 256 KiB, VmRSS +{growth} KiB, {closed} closed over the budget");
    assert_eq!(canary, Ok(()), "log:\n{}", gw.logs());
    assert!(growth < 112 * MIB, "VmRSS grew by {growth} KiB; log:\n{}", gw.logs());
    assert!(closed >= 20, "{closed} stalled players closed; log:\n{}", gw.logs());
    assert!(gw.wait_for_log_line(&["closed:", "max_memory_per_ip"], Duration::from_secs(1)).is_some());
    assert_eq!(gw.count_log("role=publisher"), 0, "the publisher was closed; log:\n{}", gw.logs());
    drop(stalled);
}
