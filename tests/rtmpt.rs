//! End-to-end tests of RTMPT (RTMP tunnelled in HTTP) with real clients: ffmpeg, ffprobe, rtmpdump
//! and nginx as a reverse proxy, against the real `rtmpx` binary (`rtmpx-testkit` runs them).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rtmpx_testkit::{
    admin_addr, assert_good_recording, exclusive, free_port, metrics, publish_testsrc, record_ffmpeg,
    record_rtmpdump, rss_kib_of, sample, Gateway, Proc, TempDir,
};

const PUBLISH_SECS: f64 = 6.0;
/// The player joins ~0.5 s after the publisher and records this much of the stream.
const RECORD_SECS: f64 = 4.5;

const BASE_CONFIG: &str = r#"
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:0"

[[listener]]
proto = "rtmpt"
addr = "127.0.0.1:0"

[[app]]
name = "live"
"#;

fn play_ffmpeg(url: &str, out: &Path) -> Proc {
    record_ffmpeg(url, out, RECORD_SECS)
}

fn play_rtmpdump(url: &str, out: &Path) -> Proc {
    record_rtmpdump(url, out, RECORD_SECS)
}

/// Publishes for PUBLISH_SECS to `publish_url` while `player` records `play_url`, then checks
/// the recording: both codecs, decodable, about RECORD_SECS of frames.
fn publish_and_play(publish_url: &str, play_url: &str, player: fn(&str, &Path) -> Proc, gateway: &Gateway) {
    let dir = TempDir::new("media");
    let recording = dir.file("play.flv");
    let mut publisher = publish_testsrc(publish_url, PUBLISH_SECS);
    assert!(
        gateway.wait_for_log("publishing", Duration::from_secs(10)),
        "publisher did not start:\n{}\n{}",
        publisher.output(),
        gateway.logs()
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut player = player(play_url, &recording);
    let status = publisher.finish();
    assert!(status.success(), "publisher failed: {status}\n{}", gateway.logs());
    player.finish();
    // 4.5 s at 25 fps and ~43 AAC frames/s.
    assert_good_recording(&format!("{publish_url} -> {play_url}"), &recording, 75, 130);
}

/// Waits up to 5 s for a session-closed log line with `variant`, `stream` and `role`.
fn closed(gw: &Gateway, variant: &str, stream: &str, role: &str) -> bool {
    let fields = [format!(" variant={variant} "), format!(" stream={stream} "), format!(" role={role} ")];
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let log = gw.logs();
        if log.lines().any(|l| l.contains(" closed: ") && fields.iter().all(|f| l.contains(f.as_str()))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn ffmpeg_publishes_and_plays_over_rtmpt() {
    let _one = exclusive();
    let gw = Gateway::start(BASE_CONFIG);
    let url = format!("rtmpt://{}/live/t", gw.addr("rtmpt"));
    publish_and_play(&url, &url, play_ffmpeg, &gw);
    assert!(closed(&gw, "rtmpt", "live/t", "publisher"), "{}", gw.logs());
    assert!(closed(&gw, "rtmpt", "live/t", "player"), "ffmpeg closes its tunnel session:\n{}", gw.logs());
}

#[test]
fn rtmpdump_plays_over_rtmpt_what_rtmp_publishes() {
    let _one = exclusive();
    let gw = Gateway::start(BASE_CONFIG);
    let publish_url = format!("rtmp://{}/live/d", gw.addr("rtmp"));
    let play_url = format!("rtmpt://{}/live/d", gw.addr("rtmpt"));
    publish_and_play(&publish_url, &play_url, play_rtmpdump, &gw);
    assert!(gw.logs().contains("variant=\"rtmpt\" stream=live/d"), "{}", gw.logs());
}

const TLS_CONFIG: &str = r#"
[[listener]]
proto = "rtmps"
addr = "127.0.0.1:0"

[[listener]]
proto = "rtmpts"
addr = "127.0.0.1:0"

[[app]]
name = "live"

[tls]
cert_dir = "$DIR/certs"
"#;

/// RTMPTS: the tunnel over TLS, on an `rtmpts` listener and inside the `rtmps` listener's TLS
/// (port sharing). ffmpeg publishes and plays; rtmpdump plays. ffmpeg and rtmpdump do not verify
/// certificates by default, so the development certificate does.
#[test]
fn rtmpts_with_ffmpeg_and_rtmpdump_on_its_own_port_and_the_rtmps_port() {
    let _one = exclusive();
    let gw = Gateway::start(TLS_CONFIG);
    let dedicated = format!("rtmpts://{}/live", gw.addr("rtmpts"));
    let shared_port = format!("rtmpts://{}/live", gw.addr("rtmps"));
    publish_and_play(&format!("{dedicated}/a"), &format!("{shared_port}/a"), play_ffmpeg, &gw);
    assert!(closed(&gw, "rtmpts", "live/a", "publisher"), "{}", gw.logs());
    let log = gw.logs();
    assert!(log.contains("variant=\"rtmpts\" stream=live/a"), "{log}");
    publish_and_play(&format!("{shared_port}/b"), &format!("{dedicated}/b"), play_rtmpdump, &gw);
    assert_eq!(gw.logs().matches("variant=\"rtmpts\" stream=live/b").count(), 2, "{}", gw.logs());
}

/// Session ids do not cross from HTTPS to plain HTTP or back.
#[test]
fn rtmpts_ids_do_not_work_over_plain_http() {
    let config = format!("{TLS_CONFIG}\n[[listener]]\nproto = \"rtmpt\"\naddr = \"127.0.0.1:0\"\n");
    let gw = Gateway::start(&config);
    let mut plain = Http::connect(gw.addr("rtmpt"));
    let plain_id = plain.open();
    let tls_id = https_open(&gw.addr("rtmpts").to_string());
    assert_eq!(plain.post(&format!("/idle/{tls_id}/0"), &[0]).status, 404, "an RTMPTS id over plain HTTP");
    assert_eq!(plain.post(&format!("/idle/{plain_id}/0"), &[0]).status, 200);
}

/// Opens an RTMPTS session with openssl's client (no TLS crate in the tests) and returns its id.
fn https_open(addr: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("running openssl s_client");
    let request = "POST /open/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1\r\n\r\n\0";
    child.stdin.as_mut().unwrap().write_all(request.as_bytes()).unwrap();
    let mut reply = String::new();
    let started = Instant::now();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while started.elapsed() < Duration::from_secs(10) && stdout.read_line(&mut line).unwrap_or(0) > 0 {
        reply.push_str(&line);
        if line.trim().len() == 32 {
            break;
        }
        line.clear();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    let id = reply.lines().last().unwrap().trim().to_owned();
    assert!(id.len() == 32 && id.bytes().all(|c| c.is_ascii_hexdigit()), "{reply}");
    id
}

/// RTMPE inside the tunnel (RTMPTE): the core does RTMPE, the tunnel only carries bytes.
#[test]
fn rtmpdump_plays_over_rtmpte() {
    let _one = exclusive();
    let gw = Gateway::start(BASE_CONFIG);
    let publish_url = format!("rtmp://{}/live/e", gw.addr("rtmp"));
    let play_url = format!("rtmpte://{}/live/e", gw.addr("rtmpt"));
    publish_and_play(&publish_url, &play_url, play_rtmpdump, &gw);
    assert!(gw.logs().contains("variant=\"rtmpte\" stream=live/e"), "{}", gw.logs());
}

const ADMIN_CONFIG: &str = r#"
[admin]
addr = "127.0.0.1:0"
"#;

/// rtmpdump (librtmp) quits a tunnelled play with a `send` carrying deleteStream and hangs up,
/// without `/close`: the session ends within a couple of seconds (rtmpt.hangup_timeout_ms), not
/// after the 30 s idle expiry, so /metrics counts no phantom player.
#[test]
fn a_session_ends_soon_after_rtmpdump_hangs_up_over_rtmpt_and_rtmpte() {
    let _one = exclusive();
    let gw = Gateway::start(&format!("{BASE_CONFIG}{ADMIN_CONFIG}"));
    let admin = admin_addr(&gw);
    let mut publisher = publish_testsrc(&format!("rtmp://{}/live/h", gw.addr("rtmp")), 30.0);
    assert!(gw.wait_for_log("publishing", Duration::from_secs(10)), "{}", publisher.describe());
    let dir = TempDir::new("hangup");
    for variant in ["rtmpte", "rtmpt"] {
        let players = format!("rtmpx_sessions{{variant=\"{variant}\",role=\"player\"}}");
        let url = format!("{variant}://{}/live/h", gw.addr("rtmpt"));
        let mut player = record_rtmpdump(&url, &dir.file(&format!("{variant}.flv")), 60.0);
        let started = Instant::now();
        while sample(&metrics(admin), &players) == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{variant} never played: {}",
                player.describe()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(2));
        player.stop();
        let stopped = Instant::now();
        while sample(&metrics(admin), &players) != 0 {
            assert!(
                stopped.elapsed() < Duration::from_secs(4),
                "{variant}: rtmpdump quit {:?} ago and its player is still counted:\n{}",
                stopped.elapsed(),
                gw.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(closed(&gw, variant, "live/h", "player"), "{}", gw.logs());
        assert_eq!(sample(&metrics(admin), "rtmpx_rtmpt_sessions"), 0, "{variant}");
    }
    assert_eq!(sample(&metrics(admin), "rtmpx_rtmpt_sessions_expired_total"), 0, "no idle expiry was needed");
    assert_eq!(gw.count_log("their client hung up"), 2, "{}", gw.logs());
    publisher.stop();
}

/// The `rtmp` port also serves RTMPT (it tells HTTP from RTMP by the first byte): an RTMPT
/// publisher on it is played over plain RTMP from the same port.
#[test]
fn rtmp_port_serves_rtmpt_too_and_variants_meet() {
    let _one = exclusive();
    let gw = Gateway::start(BASE_CONFIG);
    let shared_port = gw.addr("rtmp");
    publish_and_play(
        &format!("rtmpt://{shared_port}/live/s"),
        &format!("rtmp://{shared_port}/live/s"),
        play_ffmpeg,
        &gw,
    );
    assert!(closed(&gw, "rtmpt", "live/s", "publisher"), "{}", gw.logs());
    assert!(closed(&gw, "rtmp", "live/s", "player"), "{}", gw.logs());
}

/// nginx as an HTTP reverse proxy in front of the RTMPT listener: ffmpeg publishes through it,
/// rtmpdump (librtmp's strict response parser) and ffmpeg play through it.
#[test]
fn through_an_nginx_reverse_proxy() {
    let _one = exclusive();
    let gw = Gateway::start(BASE_CONFIG);
    let dir = TempDir::new("nginx");
    let port = free_port();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log {dir}/access.log;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
           fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://{upstream};\n\
               proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering off;\n    }}\n  }}\n}}\n",
        dir = dir.path().display(),
        upstream = gw.addr("rtmpt"),
    );
    std::fs::write(dir.file("nginx.conf"), conf).unwrap();
    // One process (master_process off), so killing it at the end leaves no orphaned worker.
    let mut command = Command::new("nginx");
    command.arg("-c").arg(dir.file("nginx.conf")).arg("-p").arg(dir.path());
    let nginx = Proc::spawn("nginx", command, None, Duration::from_secs(300));
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "nginx did not start:\n{}", nginx.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("rtmpt://127.0.0.1:{port}/live/n");
    publish_and_play(&url, &url, play_rtmpdump, &gw);
    let access = std::fs::read_to_string(dir.file("access.log")).unwrap_or_default();
    assert!(access.contains("POST /open/1"), "requests went through nginx:\n{access}");
    assert!(access.contains("POST /send/"), "{access}");
    // librtmp sends its last `send` and `close` and hangs up at once, so nginx may drop them:
    // that session ends by idle expiry. Both sessions came in over the tunnel.
    let log = gw.logs();
    assert!(
        log.contains("publishing session=1 peer=127.0.0.1")
            && log.contains("variant=\"rtmpt\" stream=live/n"),
        "{log}"
    );
    assert_eq!(log.matches("variant=\"rtmpt\" stream=live/n").count(), 2, "publisher and player:\n{log}");
}

/// A minimal HTTP/1.1 keep-alive client for raw tunnel requests.
struct Http {
    stream: BufReader<TcpStream>,
}

struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Http {
    fn connect(addr: SocketAddr) -> Http {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Http { stream: BufReader::new(stream) }
    }

    fn post(&mut self, path: &str, body: &[u8]) -> Reply {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-fcs\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.stream.get_mut().write_all(&request).unwrap();
        let mut head = String::new();
        loop {
            let mut line = String::new();
            assert!(self.stream.read_line(&mut line).unwrap() > 0, "connection closed; head so far: {head}");
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let status = head[9..12].parse().unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap_or_else(|| panic!("no Title-Case Content-Length in {head}"))
            .trim()
            .parse()
            .unwrap();
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).unwrap();
        Reply { status, head, body }
    }

    fn open(&mut self) -> String {
        let reply = self.post("/open/1", &[0]);
        assert_eq!(reply.status, 200, "{}", reply.head);
        let text = String::from_utf8(reply.body).unwrap();
        let id = text.strip_suffix('\n').expect("the id ends with exactly one newline");
        assert!(!id.ends_with('\n'));
        id.to_owned()
    }
}

/// C0 + C1 of a plain handshake.
fn c0c1() -> Vec<u8> {
    let mut bytes = vec![3u8];
    bytes.extend((0..1536u32).map(|i| (i * 7) as u8));
    bytes
}

#[test]
fn tunnel_requests_ids_and_sequence_numbers() {
    let gw = Gateway::start(BASE_CONFIG);
    let mut http = Http::connect(gw.addr("rtmpt"));

    // Flash Player's probe gets 404, as from FMS and Red5.
    assert_eq!(http.post("/fcs/ident2", &[0]).status, 404);

    let id = http.open();
    assert_eq!(id.len(), 32, "128 bits in hex: {id}");
    assert!(id.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
    assert_ne!(http.open(), id, "every open gets a fresh id");

    // The handshake completes in one round trip: S0 + S1 + S2 after the polling byte.
    let reply = http.post(&format!("/send/{id}/0"), &c0c1());
    assert_eq!(reply.status, 200);
    assert!(reply.head.starts_with("HTTP/1.1 200 "), "librtmp's status-line check: {}", reply.head);
    assert!(reply.head.contains("Content-Type: application/x-fcs"), "{}", reply.head);
    assert_eq!(reply.body.len(), 1 + 1 + 1536 + 1536, "polling byte + S0 + S1 + S2");
    assert_eq!(reply.body[0], 0x01, "data flowed: shortest polling interval");
    assert_eq!(reply.body[1], 3, "S0");

    // Empty polls raise the polling interval.
    let mut intervals = Vec::new();
    for seq in 1..=6 {
        let reply = http.post(&format!("/idle/{id}/{seq}"), &[0]);
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body.len(), 1, "nothing to say, only the polling byte");
        intervals.push(reply.body[0]);
    }
    assert_eq!(intervals, [0x03, 0x05, 0x09, 0x11, 0x21, 0x21]);

    // Replays and gaps are rejected; the session goes on.
    assert_eq!(http.post(&format!("/idle/{id}/6"), &[0]).status, 400, "replayed sequence number");
    assert_eq!(http.post(&format!("/idle/{id}/9"), &[0]).status, 400, "gap");
    assert_eq!(http.post(&format!("/idle/{id}/7"), &[0]).status, 200, "the expected number still works");

    // Guessed ids (random, or one digit off) and malformed ones get 404.
    let mut wrong = id.clone().into_bytes();
    wrong[31] = if wrong[31] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    for path in [
        format!("/idle/{wrong}/8"),
        "/idle/00000000000000000000000000000000/8".to_string(),
        format!("/idle/{}/8", id.to_uppercase()),
        format!("/idle/{}/8", &id[..31]),
        format!("/send/{id}x/8"),
        "/idle/1/8".to_string(),
    ] {
        let reply = http.post(&path, &[0]);
        assert_eq!(reply.status, 404, "{path}");
        assert!(reply.body.is_empty(), "404s say nothing");
    }

    // Closed ids cannot be reused, not even with the next sequence number.
    assert_eq!(http.post(&format!("/close/{id}/8"), &[0]).status, 200);
    assert_eq!(http.post(&format!("/idle/{id}/9"), &[0]).status, 404);
    assert_eq!(http.post(&format!("/send/{id}/9"), &c0c1()).status, 404);

    // An id is not tied to the connection that opened it (proxies spread requests), but it is
    // tied to the listener's transport; a second connection can use a live one.
    let live = http.open();
    let mut other = Http::connect(gw.addr("rtmp"));
    assert_eq!(
        other.post(&format!("/idle/{live}/0"), &[0]).status,
        200,
        "same transport (HTTP) on the shared port"
    );
}

/// A session whose client closed the connection of its last request ends after
/// rtmpt.hangup_timeout_ms, unless the client goes on over another connection (proxies).
#[test]
fn a_hang_up_ends_the_session_unless_the_client_comes_back() {
    let gw = Gateway::start(&format!("{BASE_CONFIG}\n[rtmpt]\nhangup_timeout_ms = 300\n"));
    let addr = gw.addr("rtmpt");
    let mut first = Http::connect(addr);
    let gone = first.open();
    let moving = first.open();
    let mut second = Http::connect(addr);
    let stays = second.open();
    drop(first);
    // `moving` goes on over a new connection, as through a proxy that connects per request.
    let mut third = Http::connect(addr);
    assert_eq!(third.post(&format!("/idle/{moving}/0"), &[0]).status, 200);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(third.post(&format!("/idle/{gone}/0"), &[0]).status, 404, "hung up and gone");
    assert_eq!(third.post(&format!("/idle/{moving}/1"), &[0]).status, 200, "came back in time");
    assert_eq!(second.post(&format!("/idle/{stays}/0"), &[0]).status, 200, "its connection is open");
    assert!(gw.wait_for_log("their client hung up", Duration::from_secs(2)), "{}", gw.logs());
}

#[test]
fn limits_on_sessions_and_request_bodies() {
    let gw = Gateway::start(&format!(
        "{BASE_CONFIG}\n[rtmpt]\nmax_sessions_per_ip = 2\nmax_request_body = 4096\n"
    ));
    let mut http = Http::connect(gw.addr("rtmpt"));
    let id = http.open();
    http.open();
    assert_eq!(http.post("/open/1", &[0]).status, 503, "third session from one address");
    assert!(gw.wait_for_log("rtmpt.max_sessions_per_ip", Duration::from_secs(5)), "{}", gw.logs());
    let mut fresh = Http::connect(gw.addr("rtmpt"));
    assert_eq!(
        fresh.post(&format!("/send/{id}/0"), &vec![3u8; 5000]).status,
        413,
        "body over max_request_body"
    );
    assert_eq!(http.post(&format!("/close/{id}/0"), &[0]).status, 200);
    http.open();
}

#[test]
fn idle_sessions_expire_and_are_counted() {
    let gw = Gateway::start(&format!("{BASE_CONFIG}\n[rtmpt]\nidle_timeout_secs = 1\n"));
    let mut http = Http::connect(gw.addr("rtmpt"));
    let kept = http.open();
    let dropped = http.open();
    // `kept` polls every 300 ms; `dropped` never again.
    for seq in 0..8 {
        assert_eq!(http.post(&format!("/idle/{kept}/{seq}"), &[0]).status, 200, "an active session stays");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(http.post(&format!("/idle/{dropped}/0"), &[0]).status, 404, "the idle session was reaped");
    assert!(gw.wait_for_log("rtmpt sessions expired", Duration::from_secs(2)), "{}", gw.logs());
    assert!(gw.logs().contains("expired_total=1"), "{}", gw.logs());
}

/// 1,000 open but idle tunnel sessions (each a live gateway session waiting for its handshake)
/// stay within 64 KiB each.
#[test]
fn a_thousand_idle_sessions_stay_small() {
    const SESSIONS: usize = 1000;
    let _one = exclusive();
    let gw = Gateway::start(&format!(
        // Tunnel sessions count against max_connections_per_ip too.
        "{BASE_CONFIG}\n[timeouts]\nhandshake_secs = 300\n[limits]\nmax_connections_per_ip = 2000\n[rtmpt]\nmax_sessions_per_ip = 2000\nidle_timeout_secs = 300\n"
    ));
    let addr = gw.addr("rtmpt");
    let mut connections: Vec<Http> = (0..4).map(|_| Http::connect(addr)).collect();
    // Warm up allocator arenas and runtime threads first.
    for c in connections.iter_mut() {
        for _ in 0..20 {
            let id = c.open();
            assert_eq!(c.post(&format!("/close/{id}/0"), &[0]).status, 200);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib_of(gw.pid()).expect("gateway RSS");
    let mut ids = Vec::new();
    for i in 0..SESSIONS {
        ids.push(connections[i % 4].open());
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib_of(gw.pid()).expect("gateway RSS");
    let per_session = (after.saturating_sub(before) * 1024) / SESSIONS as u64;
    eprintln!(
        "RSS {before} KiB -> {after} KiB with {SESSIONS} idle tunnel sessions: {per_session} bytes each"
    );
    assert!(per_session < 64 * 1024, "{per_session} bytes per idle session");
    // They are all alive.
    for (i, id) in ids.iter().enumerate().step_by(97) {
        assert_eq!(connections[i % 4].post(&format!("/idle/{id}/0"), &[0]).status, 200);
    }
}
