//! HTTP-FLV and WebSocket-FLV end to end: the real `rtmpx` binary published to by ffmpeg and
//! played by ffmpeg, curl, a WebSocket client, raw sockets and headless Chromium (mpegts.js and
//! the built-in preview page).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use rtmpx_testkit::{
    admin_addr, assert_good_recording, exclusive, flv_tags, metrics, publish, record_ffmpeg, require_tool,
    run_bounded, sample, Gateway, PublishOptions, TempDir,
};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

use rtmpx_testkit::browser;
use rtmpx_testkit::rtmp_client;

const CONFIG: &str = r#"
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:0"

[[listener]]
proto = "rtmps"
addr = "127.0.0.1:0"

[[app]]
name = "live"

[[app]]
name = "keyed"
play_keys = ["right-key"]

[tls]
cert_dir = "$DIR/certs"

[timeouts]
write_secs = 2

[admin]
addr = "127.0.0.1:0"
"#;

/// Starts the gateway and ffmpeg publishing `app/stream` for `seconds`; returns once the stream
/// is live and its first GOP is cached.
fn live(app: &str, stream: &str, seconds: f64) -> (Gateway, rtmpx_testkit::Proc) {
    live_with(app, stream, &PublishOptions::new(seconds))
}

fn live_with(app: &str, stream: &str, options: &PublishOptions) -> (Gateway, rtmpx_testkit::Proc) {
    let gw = Gateway::start(CONFIG);
    let publisher = publish(&gw.url("rtmp", app, stream), options);
    assert!(gw
        .wait_for_log_line(&["publishing", &format!("{app}/{stream}")], Duration::from_secs(20))
        .is_some());
    thread::sleep(Duration::from_millis(1500));
    (gw, publisher)
}

/// A request's answer head: status, lower-cased headers, and body bytes read with it.
struct Head {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

/// Sends `request` (a whole HTTP request) and reads the answer's head.
fn send(addr: SocketAddr, request: &str) -> (TcpStream, Head) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let head = read_head(&mut stream);
    (stream, head)
}

fn get(addr: SocketAddr, path: &str) -> (TcpStream, Head) {
    send(addr, &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: e2e\r\n\r\n"))
}

fn read_head(stream: &mut TcpStream) -> Head {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = stream.read(&mut buf).unwrap_or_else(|e| panic!("reading an answer head: {e}; got {raw:?}"));
        assert!(n > 0, "closed before an answer head; got {:?}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code");
    Head { status, headers: head, body: raw[end + 4..].to_vec() }
}

/// Reads until the peer closes or `limit` passes; returns what arrived and whether it closed.
fn read_for(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + limit;
    let mut all = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return (all, true),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (all, true),
        }
    }
    (all, false)
}

/// curl saving `url` for `seconds` of wall time (it is cut off then: exit 28).
fn curl_record(url: &str, out: &Path, seconds: u32) {
    require_tool("curl");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-k", "--max-time", &seconds.to_string(), "-o"]).arg(out).arg(url);
    let (status, _, stderr) = run_bounded(cmd, Duration::from_secs(seconds as u64 + 20));
    assert_eq!(status.code(), Some(28), "curl should run until its time limit: {stderr}");
    keep_whole_tags(out);
}

/// A live stream cut at an arbitrary byte: drops the partial tag at the end, as a player would.
fn keep_whole_tags(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    assert!(
        bytes.len() > 13 && bytes.starts_with(b"FLV"),
        "{} is no FLV: {} bytes",
        path.display(),
        bytes.len()
    );
    let mut at = 9 + 4;
    while at + 11 <= bytes.len() {
        let size = u32::from_be_bytes([0, bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        if at + 11 + size + 4 > bytes.len() {
            break;
        }
        at += 11 + size + 4;
    }
    std::fs::write(path, &bytes[..at]).unwrap();
}

/// The largest step between consecutive video timestamps of an FLV file, in ms.
fn largest_video_gap(path: &Path) -> u32 {
    let times: Vec<u32> = flv_tags(path).iter().filter(|t| t.tag_type == 9).map(|t| t.timestamp).collect();
    assert!(times.len() > 10, "{}: {} video tags", path.display(), times.len());
    times.windows(2).map(|w| w[1].saturating_sub(w[0])).max().unwrap()
}

#[test]
fn ffmpeg_and_curl_record_valid_flv_over_http_and_https() {
    let _serial = exclusive();
    let (gw, mut publisher) = live("live", "x", 20.0);
    let (http, https) = (gw.addr("rtmp"), gw.addr("rtmps"));

    // The answer of a browser-style player: FLV, open to any origin, no length, no keep-alive.
    let (_, head) = get(http, "/live/x.flv");
    assert_eq!(head.status, 200, "{}", head.headers);
    for header in ["content-type: video/x-flv", "access-control-allow-origin: *", "connection: close"] {
        assert!(head.headers.contains(header), "{header} missing: {}", head.headers);
    }
    assert!(!head.headers.contains("content-length"), "{}", head.headers);
    let (_, head) = send(http, &format!("HEAD /live/x.flv HTTP/1.1\r\nHost: {http}\r\n\r\n"));
    assert_eq!(head.status, 200, "{}", head.headers);
    assert!(head.headers.contains("content-type: video/x-flv") && head.body.is_empty(), "{}", head.headers);
    // Streams that are not live, unknown apps and other paths: 404 at once.
    for path in ["/live/nobody.flv", "/nowhere/x.flv", "/live/x", "/favicon.ico", "/"] {
        let started = Instant::now();
        let (_, head) = get(http, path);
        assert_eq!(head.status, 404, "{path}: {}", head.headers);
        assert!(started.elapsed() < Duration::from_secs(3), "{path} answered late");
    }

    let dir = TempDir::new("http-flv-recordings");
    let mut ffmpeg_http =
        record_ffmpeg(&format!("http://{http}/live/x.flv"), &dir.file("ffmpeg-http.flv"), 5.0);
    let mut ffmpeg_https =
        record_ffmpeg(&format!("https://{https}/live/x.flv"), &dir.file("ffmpeg-https.flv"), 5.0);
    let curl_http = {
        let (url, out) = (format!("http://{http}/live/x.flv"), dir.file("curl-http.flv"));
        thread::spawn(move || curl_record(&url, &out, 6))
    };
    curl_record(&format!("https://{https}/live/x.flv"), &dir.file("curl-https.flv"), 6);
    curl_http.join().unwrap();
    assert!(ffmpeg_http.finish().success(), "{}", ffmpeg_http.describe());
    assert!(ffmpeg_https.finish().success(), "{}", ffmpeg_https.describe());
    for name in ["ffmpeg-http.flv", "ffmpeg-https.flv", "curl-http.flv", "curl-https.flv"] {
        assert_good_recording(name, &dir.file(name), 75, 100);
    }
    // Each file starts with onMetaData and the sequence headers (the GOP cache's instant start).
    let tags = flv_tags(&dir.file("curl-http.flv"));
    assert!(tags[0].is_on_metadata(), "first tag: {:?}", tags[0].tag_type);
    assert!(tags.iter().find(|t| t.tag_type == 9).unwrap().is_video_keyframe());

    let text = metrics(admin_addr(&gw));
    assert!(sample(&text, r#"rtmpx_sessions_opened_total{variant="http-flv"}"#) >= 4, "{text}");
    assert!(sample(&text, r#"rtmpx_sessions_opened_total{variant="https-flv"}"#) >= 2, "{text}");
    assert!(sample(&text, r#"rtmpx_bytes_out_total{variant="https-flv"}"#) > 100_000, "{text}");
    for variant in ["http-flv", "https-flv"] {
        let needle = format!("variant={variant} handshake=- stream=live/x role=player");
        assert!(
            gw.wait_for_log(&needle, Duration::from_secs(5)),
            "no session line for {variant}:\n{}",
            gw.logs()
        );
    }
    publisher.stop();
}

#[test]
fn a_wrong_key_gets_403_and_nothing_else() {
    let _serial = exclusive();
    let (gw, mut publisher) = live("keyed", "x", 12.0);
    let addr = gw.addr("rtmp");
    for path in ["/keyed/x.flv", "/keyed/x.flv?key=wrong-key"] {
        let (mut stream, head) = get(addr, path);
        assert_eq!(head.status, 403, "{path}: {}", head.headers);
        assert!(head.headers.contains("content-length: 0"), "{}", head.headers);
        let (more, _) = read_for(&mut stream, Duration::from_millis(500));
        assert!(head.body.is_empty() && more.is_empty(), "{path}: media after a 403");
    }
    // A WebSocket player with the wrong key gets the same 403 and no upgrade.
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let upgrade = format!(
        "GET /keyed/x.flv?key=nope HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    );
    let (_, head) = send(addr, &upgrade);
    assert_eq!(head.status, 403, "{}", head.headers);
    // The right key plays.
    let (mut stream, head) = get(addr, "/keyed/x.flv?key=right-key");
    assert_eq!(head.status, 200, "{}", head.headers);
    let (more, _) = read_for(&mut stream, Duration::from_secs(1));
    let body = [head.body, more].concat();
    assert!(body.len() > 1000, "{} bytes", body.len());
    drop(stream);
    let text = metrics(admin_addr(&gw));
    assert!(sample(&text, r#"rtmpx_auth_denials_total{action="play"}"#) >= 3, "{text}");
    assert_eq!(gw.count_log("play denied"), 3, "{}", gw.logs());
    publisher.stop();
}

#[test]
fn websocket_flv_plays_and_bogus_websocket_input_is_closed() {
    let _serial = exclusive();
    let (gw, mut publisher) = live("live", "ws", 14.0);
    let addr = gw.addr("rtmp");
    let connect = || {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (ws, answer) = tungstenite::client(format!("ws://{addr}/live/ws.flv"), stream).unwrap();
        assert_eq!(answer.status(), 101);
        ws
    };
    // A good player gets the FLV stream in binary messages, header first.
    let mut ws = connect();
    let mut flv = Vec::new();
    while flv.len() < 200_000 {
        match ws.read().unwrap() {
            Message::Binary(data) => flv.extend_from_slice(&data),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(&flv[..4], b"FLV\x01");
    let dir = TempDir::new("ws-flv");
    std::fs::write(dir.file("ws.flv"), &flv).unwrap();
    keep_whole_tags(&dir.file("ws.flv"));
    assert_good_recording("ws-flv", &dir.file("ws.flv"), 20, 20);
    // Pings are answered; data from the client ends the session with 1008.
    ws.send(Message::Ping(b"hi"[..].into())).unwrap();
    ws.send(Message::Text("hello".into())).unwrap();
    let close = loop {
        match ws.read() {
            Ok(Message::Close(frame)) => break frame,
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Policy));
    // An unmasked client frame is a protocol error: the gateway closes the connection.
    let mut raw = connect().get_ref().try_clone().unwrap();
    raw.write_all(&[0x82, 0x03, 1, 2, 3]).unwrap();
    let (_, closed) = read_for(&mut raw, Duration::from_secs(5));
    assert!(closed, "an unmasked frame left the connection open");
    // A frame longer than a play socket takes: closed too (its payload is never buffered).
    let mut raw = connect().get_ref().try_clone().unwrap();
    let mut huge = vec![0x82, 0xFF];
    huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
    huge.extend_from_slice(&[0, 0, 0, 0]);
    raw.write_all(&huge).unwrap();
    let (_, closed) = read_for(&mut raw, Duration::from_secs(5));
    assert!(closed, "a 1 TiB frame header left the connection open");
    // A bad upgrade gets its status.
    let (_, head) = send(
        addr,
        &format!(
            "GET /live/ws.flv HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ),
    );
    assert_eq!(head.status, 426, "{}", head.headers);
    assert!(head.headers.contains("sec-websocket-version: 13"), "{}", head.headers);
    assert!(gw.wait_for_log("variant=ws-flv handshake=- stream=live/ws role=player", Duration::from_secs(5)));
    let text = metrics(admin_addr(&gw));
    assert!(sample(&text, r#"rtmpx_sessions_opened_total{variant="ws-flv"}"#) >= 3, "{text}");
    publisher.stop();
}

#[test]
fn malformed_http_and_data_on_a_play_socket_get_a_status_or_a_close() {
    let _serial = exclusive();
    let (gw, mut publisher) = live("live", "x", 14.0);
    let addr = gw.addr("rtmp");
    // A player that records throughout: it must see no gap.
    let dir = TempDir::new("http-flv-bad-input");
    let watcher = {
        let (url, out) = (format!("http://{addr}/live/x.flv"), dir.file("watcher.flv"));
        thread::spawn(move || curl_record(&url, &out, 8))
    };
    let baseline = gw.rss_kib();

    let (_, head) = send(addr, "GET /live/x.flv HTTP/9.9\r\n\r\n");
    assert!(head.status == 400 || head.status == 505, "{}", head.headers);
    // Bytes that cannot start a request are closed at once (tunnel::sniff), without an answer.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(b"GET\x01 / HTTP/1.1\r\n\r\n").unwrap();
    let (answer, closed) = read_for(&mut stream, Duration::from_secs(5));
    assert!(closed && answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    let (_, head) = send(addr, "DELETE /live/x.flv HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(head.status, 405, "{}", head.headers);
    // Huge headers: refused with 431 once the limit is reached, never buffered without bound.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(b"GET /live/x.flv HTTP/1.1\r\nHost: a\r\n").unwrap();
    let filler = format!("X-Filler: {}\r\n", "a".repeat(1000));
    let mut refused = false;
    for _ in 0..1000 {
        if stream.write_all(filler.as_bytes()).is_err() {
            refused = true;
            break;
        }
    }
    let (answer, closed) = read_for(&mut stream, Duration::from_secs(5));
    let answer = String::from_utf8_lossy(&answer);
    assert!(closed || refused, "1 MB of headers left the connection open");
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer}");
    // A player that sends data after its request: the stream goes on, its input is not kept.
    let (mut chatty, head) = get(addr, "/live/x.flv");
    assert_eq!(head.status, 200);
    let junk = vec![b'j'; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(3);
    chatty.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut sent = 0usize;
    while Instant::now() < deadline && sent < 8 << 20 {
        match chatty.write(&junk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(sent < 8 << 20, "the gateway read 8 MiB sent on a play socket");
    drop(chatty);

    watcher.join().unwrap();
    assert_good_recording("watcher", &dir.file("watcher.flv"), 100, 100);
    let gap = largest_video_gap(&dir.file("watcher.flv"));
    assert!(gap <= 200, "the watching player saw a {gap} ms gap");
    let rss = gw.rss_kib();
    assert!(rss < baseline + 16 * 1024, "VmRSS {baseline} KiB -> {rss} KiB");
    publisher.stop();
}

#[test]
fn a_reader_that_stops_is_cut_by_the_write_timeout_alone() {
    let _serial = exclusive();
    // 5 Mbit/s fills the kernel's socket buffers of a stalled player within seconds.
    let options = PublishOptions { video_cbr: Some("5000k"), ..PublishOptions::new(24.0) };
    let (gw, mut publisher) = live_with("live", "x", &options);
    let addr = gw.addr("rtmp");
    let dir = TempDir::new("http-flv-slow");
    let watcher = {
        let (url, out) = (format!("http://{addr}/live/x.flv"), dir.file("watcher.flv"));
        thread::spawn(move || curl_record(&url, &out, 16))
    };
    // Two players that read their answer head and then never read again, with small buffers.
    let mut stalled = Vec::new();
    for ws in [false, true] {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&addr.into()).unwrap();
        let mut stream: TcpStream = socket.into();
        let upgrade = if ws {
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        } else {
            ""
        };
        write!(stream, "GET /live/x.flv HTTP/1.1\r\nHost: {addr}\r\n{upgrade}\r\n").unwrap();
        let head = read_head(&mut stream);
        assert_eq!(head.status, if ws { 101 } else { 200 });
        stalled.push(stream);
    }
    for variant in ["http-flv", "ws-flv"] {
        let line = gw.wait_for_log_line(
            &["closed:", &format!("variant={variant} "), "the client stopped reading"],
            Duration::from_secs(30),
        );
        assert!(line.is_some(), "the stalled {variant} player was never cut:\n{}", gw.logs());
    }
    watcher.join().unwrap();
    assert_good_recording("watcher", &dir.file("watcher.flv"), 300, 300);
    let gap = largest_video_gap(&dir.file("watcher.flv"));
    assert!(gap <= 200, "the watching player saw a {gap} ms gap");
    drop(stalled);
    assert!(publisher.try_status().is_none(), "the publisher was cut: {}", publisher.describe());
    assert_eq!(gw.count_log("role=publisher"), 0, "{}", gw.logs());
    publisher.stop();
}

#[test]
fn chromium_plays_http_flv_and_ws_flv_with_mpegts_js() {
    let _serial = exclusive();
    let (gw, mut publisher) = live("live", "browser", 60.0);
    let addr = gw.addr("rtmp");
    let dir = TempDir::new("mpegts-js");
    for scheme in ["http", "ws"] {
        let page = browser::mpegts_page(&dir, &format!("{scheme}://{addr}/live/browser.flv"));
        let mut chromium = browser::Chromium::open(&dir.file(&format!("profile-{scheme}")), &page);
        let progress = chromium.wait_for_playback(
            "({t: document.querySelector('video').currentTime, \
               frames: document.querySelector('video').getVideoPlaybackQuality().totalVideoFrames, \
               error: window.playerError || null})",
            Duration::from_secs(40),
        );
        eprintln!("[e2e] mpegts.js over {scheme}: {progress}");
        chromium.screenshot(&dir.file(&format!("mpegts-{scheme}.png")));
    }
    let text = metrics(admin_addr(&gw));
    assert!(sample(&text, r#"rtmpx_sessions_opened_total{variant="http-flv"}"#) >= 1, "{text}");
    assert!(sample(&text, r#"rtmpx_sessions_opened_total{variant="ws-flv"}"#) >= 1, "{text}");
    publisher.stop();
}

#[test]
fn the_preview_page_shows_moving_video() {
    let _serial = exclusive();
    let (gw, mut publisher) = live("live", "preview", 60.0);
    let admin = admin_addr(&gw);
    let dir = TempDir::new("preview-page");
    // The status page links each live stream to its preview: follow the link as a user would.
    let profile = TempDir::new("preview-profile");
    let mut chromium = browser::Chromium::open(profile.path(), &format!("http://{admin}/"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let link = loop {
        let href =
            chromium.eval("document.querySelector('a.watch') && document.querySelector('a.watch').href");
        if let Some(href) = href.as_str() {
            break href.to_owned();
        }
        assert!(Instant::now() < deadline, "no watch link on the status page");
        thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(link, format!("http://{admin}/watch/live/preview"));
    chromium.eval("document.querySelector('a.watch').click()");
    let progress = chromium.wait_for_playback(
        "({t: window.preview ? window.preview.mediaTime : 0, frames: window.preview ? window.preview.framesDecoded : 0, \
           error: window.preview ? window.preview.error : null, codec: document.getElementById('codec').textContent, \
           bitrate: document.getElementById('bitrate').textContent})",
        Duration::from_secs(40),
    );
    eprintln!("[e2e] preview page: {progress}");
    assert!(progress["codec"].as_str().unwrap_or_default().contains("avc1"), "{progress}");
    let shot = dir.file("preview.png");
    chromium.screenshot(&shot);
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000);
    eprintln!("[e2e] preview screenshot kept at {}", shot.display());
    dir.keep();
    publisher.stop();
}

#[test]
fn a_player_waits_for_its_publisher_when_configured() {
    let _serial = exclusive();
    let gw = Gateway::start(&format!(
        "{CONFIG}\n[http_flv]\nwait_for_publisher = true\nallow_origin = \"https://example.com\"\n"
    ));
    let addr = gw.addr("rtmp");
    let dir = TempDir::new("http-flv-wait");
    let (mut early, head) = get(addr, "/live/later.flv");
    assert_eq!(head.status, 200, "{}", head.headers);
    assert!(head.headers.contains("access-control-allow-origin: https://example.com"), "{}", head.headers);
    let (nothing, closed) = read_for(&mut early, Duration::from_millis(500));
    assert!(nothing.is_empty() && !closed, "a waiting player got {} bytes", nothing.len());
    let recording = {
        let (url, out) = (format!("http://{addr}/live/later.flv"), dir.file("later.flv"));
        thread::spawn(move || curl_record(&url, &out, 8))
    };
    thread::sleep(Duration::from_secs(1));
    let mut publisher = publish(&gw.url("rtmp", "live", "later"), &PublishOptions::new(10.0));
    recording.join().unwrap();
    assert_good_recording("waited", &dir.file("later.flv"), 50, 50);
    let (media, _) = read_for(&mut early, Duration::from_secs(1));
    assert!(media.len() > 10_000, "the early player got {} bytes", media.len());
    publisher.stop();
}

/// 1,000 idle players of `play_url` (a fresh gateway each, players waiting for their publisher):
/// the gateway's RSS growth per player in KiB, as `rtmpx-bench --idle` measures it.
fn idle_kib_per_player(variant: &str, dir: &TempDir) -> f64 {
    let gw = Gateway::start(&format!("{CONFIG}\n[http_flv]\nwait_for_publisher = true\n"));
    let addr = gw.addr("rtmp");
    let json = dir.file(&format!("{variant}.json"));
    let mut cmd = Command::new(rtmpx_testkit::rtmpx_bench_binary());
    cmd.args(["--url", &gw.url("rtmp", "live", "idle"), "--idle", "--publishers", "0", "--players", "1000"]);
    if variant != "rtmp" {
        cmd.args(["--play-url", &format!("{variant}://{addr}/live/idle.flv")]);
    }
    cmd.args([
        "--connect-concurrency",
        "128",
        "--warmup",
        "2",
        "--duration",
        "1",
        "--quiet",
        "--label",
        variant,
    ]);
    cmd.args(["--server-pid", &gw.pid().to_string(), "--json"]).arg(&json);
    let (status, stdout, stderr) = run_bounded(cmd, Duration::from_secs(120));
    assert!(status.success(), "rtmpx-bench {variant} failed ({status}):\n{stdout}{stderr}");
    let run: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(run["players_connected"], 1000, "{run}");
    assert_eq!(run["errors"], 0, "{run}");
    let per_player = run["server_rss_per_player_kib"].as_f64().unwrap_or_else(|| panic!("no RSS in {run}"));
    eprintln!("[e2e] idle {variant} player: {per_player:.2} KiB");
    per_player
}

#[test]
fn idle_http_flv_players_cost_about_what_idle_rtmp_players_cost() {
    let _serial = exclusive();
    let dir = TempDir::new("http-flv-idle");
    let rtmp = idle_kib_per_player("rtmp", &dir);
    let http = idle_kib_per_player("http", &dir);
    assert!(rtmp > 1.0, "an idle RTMP player cost {rtmp:.2} KiB: the measurement is broken");
    assert!(http <= 1.3 * rtmp, "an idle HTTP-FLV player costs {http:.2} KiB, an RTMP one {rtmp:.2} KiB");
}

#[test]
fn wss_flv_plays_through_an_rtmpts_listener() {
    let _serial = exclusive();
    let gw = Gateway::start(&format!("{CONFIG}\n[[listener]]\nproto = \"rtmpts\"\naddr = \"127.0.0.1:0\"\n"));
    let mut publisher = publish(&gw.url("rtmp", "live", "wss"), &PublishOptions::new(14.0));
    assert!(gw.wait_for_log("publishing", Duration::from_secs(20)), "{}", gw.logs());
    thread::sleep(Duration::from_millis(1500));
    let addr = gw.addr("rtmpts");
    let tls = rtmp_client::tls_with_read_timeout(addr, Duration::from_secs(10));
    let (mut ws, answer) = tungstenite::client(format!("wss://{addr}/live/wss.flv"), tls).unwrap();
    assert_eq!(answer.status(), 101);
    let mut flv = Vec::new();
    while flv.len() < 200_000 {
        match ws.read().unwrap() {
            Message::Binary(data) => flv.extend_from_slice(&data),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(&flv[..4], b"FLV\x01");
    let dir = TempDir::new("wss-flv");
    std::fs::write(dir.file("wss.flv"), &flv).unwrap();
    keep_whole_tags(&dir.file("wss.flv"));
    assert_good_recording("wss-flv", &dir.file("wss.flv"), 20, 20);
    let playing = gw.wait_for_log_line(&["playing", "wss-flv"], Duration::from_secs(5));
    assert!(playing.is_some(), "{}", gw.logs());
    drop(ws);
    publisher.stop();
}

/// Players that wait for a publisher (`wait_for_publisher`) are closed after
/// `timeouts.unpublished_play_secs`, as RTMP players are: each holds a connection. HTTP-FLV
/// (served outside hyper, and by hyper after a preflight) and WebSocket-FLV; a player whose
/// stream is published in time is not.
#[test]
fn waiting_players_are_closed_when_nobody_publishes_in_time() {
    let _serial = exclusive();
    let config = CONFIG.replace("write_secs = 2", "write_secs = 2\nunpublished_play_secs = 2");
    let gw = Gateway::start(&format!("{config}\n[http_flv]\nwait_for_publisher = true\n"));
    let addr = gw.addr("rtmp");
    let started = Instant::now();
    let (mut plain, head) = get(addr, "/live/never.flv");
    assert_eq!(head.status, 200, "{}", head.headers);
    // A GET after a CORS preflight on the same connection is served by hyper's path.
    let mut preflighted = TcpStream::connect(addr).unwrap();
    write!(
        preflighted,
        "OPTIONS /live/never.flv HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://a.example\r\n\
         Access-Control-Request-Method: GET\r\n\r\n"
    )
    .unwrap();
    assert_eq!(read_head(&mut preflighted).status, 204);
    write!(preflighted, "GET /live/never.flv HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    assert_eq!(read_head(&mut preflighted).status, 200);
    let ws_stream = TcpStream::connect(addr).unwrap();
    ws_stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut ws, answer) = tungstenite::client(format!("ws://{addr}/live/never.flv"), ws_stream).unwrap();
    assert_eq!(answer.status(), 101);
    // A player of a stream published in time stays.
    let (mut served, head) = get(addr, "/live/soon.flv");
    assert_eq!(head.status, 200, "{}", head.headers);
    let mut publisher = publish(&gw.url("rtmp", "live", "soon"), &PublishOptions::new(8.0));

    for (label, stream) in [("plain", &mut plain), ("preflighted", &mut preflighted)] {
        let (bytes, closed) = read_for(stream, Duration::from_secs(6));
        assert!(closed, "the {label} HTTP-FLV player was not closed");
        assert!(bytes.len() < 64, "the {label} player got {} bytes", bytes.len());
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1500), "closed after {waited:?}, before the limit");
    match ws.read() {
        Ok(Message::Close(Some(frame))) => {
            assert_eq!(frame.code, CloseCode::Away);
            assert_eq!(frame.reason, "the stream was not published");
        }
        other => panic!("the waiting WebSocket player got {other:?}"),
    }
    let needle = "stream=live/never role=player in=0B out=0B";
    assert!(gw.wait_for_log_count(needle, 3, Duration::from_secs(5)), "{}", gw.logs());
    let log = gw.logs();
    let closes: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
    assert!(closes.iter().all(|l| l.contains("reason=timed out: the stream was not published")), "{log}");
    assert!(closes.iter().any(|l| l.contains("variant=ws-flv")), "{log}");
    let (media, closed) = read_for(&mut served, Duration::from_secs(2));
    assert!(!closed && media.len() > 10_000, "the served player got {} bytes, closed: {closed}", media.len());
    publisher.stop();
}
