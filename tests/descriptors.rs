//! File descriptors against the real binary (issue 16, failure 4): started with the common
//! service limit (soft `nofile` far below `max_connections`), the gateway raises its soft limit to
//! the hard one, admits no more connections than leave `limits.reserved_descriptors` free, and so
//! keeps the admin listener and new clients working while an attacker holds every connection it
//! can get. Players of a stream nobody publishes are closed after
//! `timeouts.unpublished_play_secs`, players of a live stream are not.

use rtmpx_testkit::rtmp_client;

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rtmp_client::{attempt, tcp, Intent, Outcome};
use rtmpx_core::handshake::HandshakeVersion;
use rtmpx_testkit::{admin_addr, exclusive, http, Gateway, TempDir};

const CONFIG: &str = r#"
[[listener]]
proto = "rtmp"
addr = "127.0.0.1:0"

[[app]]
name = "live"

[admin]
addr = "127.0.0.1:0"

[limits]
reserved_descriptors = 128

[timeouts]
handshake_secs = 60
"#;

/// Whether the gateway closed `stream` (read returns end of stream or an error at once).
fn is_closed(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

#[test]
fn with_a_low_open_files_limit_the_admin_listener_and_new_clients_keep_working() {
    let _serial = exclusive();
    // Soft 200, hard 400: the gateway may raise itself to 400 and then admit 400 - 128.
    let gw =
        Gateway::start_under(&["prlimit", "--nofile=200:400", "--"], TempDir::new("fds"), CONFIG, "info");
    assert!(
        gw.wait_for_log("open-files limit raised from 200 to 400", Duration::from_secs(5)),
        "{}",
        gw.logs()
    );
    assert!(gw.wait_for_log("at most 272 connections are admitted", Duration::from_secs(5)), "{}", gw.logs());

    // The attacker opens far more connections than the limit allows and holds them.
    let addr = gw.addr("rtmp");
    let mut held: Vec<TcpStream> = (0..450).filter_map(|_| TcpStream::connect(addr).ok()).collect();
    std::thread::sleep(Duration::from_secs(1));
    let open = held.iter_mut().map(is_closed).filter(|closed| !closed).count();
    assert!((262..=272).contains(&open), "{open} connections stayed open; log:\n{}", gw.logs());

    // The reserve keeps the admin API answering.
    let admin = admin_addr(&gw);
    let started = Instant::now();
    let reply = http(admin, "GET", "/api/v1/streams", None);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(started.elapsed() < Duration::from_secs(2), "admin took {:?}", started.elapsed());
    assert_eq!(gw.count_log("accept failed"), 0, "{}", gw.logs());
    assert!(gw.count_log("connection refused") <= 2, "refusals are logged once per 10 s:\n{}", gw.logs());

    // Once the attacker lets go, a real client gets in.
    drop(held);
    std::thread::sleep(Duration::from_millis(500));
    let (outcome, _conn) = attempt(
        tcp(addr),
        HandshakeVersion::Plain,
        "live",
        &format!("rtmp://{addr}/live"),
        Intent::Play("after".into()),
        Duration::from_secs(10),
    );
    assert_eq!(outcome, Outcome::Started);
}

#[test]
fn players_of_a_stream_nobody_publishes_time_out() {
    let _serial = exclusive();
    let config =
        format!("{CONFIG}unpublished_play_secs = 2\n").replace("handshake_secs = 60", "handshake_secs = 10");
    let gw = Gateway::start(&config);
    let addr = gw.addr("rtmp");
    let play = |name: &str| {
        let (outcome, conn) = attempt(
            tcp(addr),
            HandshakeVersion::Plain,
            "live",
            &format!("rtmp://{addr}/live"),
            Intent::Play(name.into()),
            Duration::from_secs(10),
        );
        assert_eq!(outcome, Outcome::Started, "{name}");
        conn
    };
    let publish = |name: &str| {
        let (outcome, conn) = attempt(
            tcp(addr),
            HandshakeVersion::Plain,
            "live",
            &format!("rtmp://{addr}/live"),
            Intent::Publish(name.into()),
            Duration::from_secs(10),
        );
        assert_eq!(outcome, Outcome::Started, "{name}");
        conn
    };
    let started = Instant::now();
    let mut waiting = play("nobody");
    let mut publisher = publish("live-one");
    let mut watching = play("live-one");
    // A publisher that comes and goes: its player waits again from the unpublish on.
    let later = publish("comes-and-goes");
    let mut patient = play("comes-and-goes");
    drop(later);

    assert!(rtmp_client::closed_within(waiting.wire.as_mut(), Duration::from_secs(5)));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(2) && waited < Duration::from_secs(5), "{waited:?}");
    assert!(
        gw.wait_for_log_line(
            &["closed:", "live/nobody", "the stream was not published"],
            Duration::from_secs(2)
        )
        .is_some(),
        "{}",
        gw.logs()
    );
    assert!(rtmp_client::closed_within(patient.wire.as_mut(), Duration::from_secs(5)));

    // The player of the live stream stays (the publisher keeps its idle timeout busy).
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let _ = publisher.pump(Duration::from_millis(100));
        assert!(watching.pump(Duration::from_millis(100)).is_ok(), "the live stream's player was closed");
    }
}
