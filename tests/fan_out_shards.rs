//! One hot stream served by both worker threads (`worker_threads = 2`): its players are split into
//! fan-out shards (rtmpx-router's `ShardConfig`), and every player, plain or RTMPE, still gets every
//! frame, in order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rtmpx_core::handshake::HandshakeVersion;
use rtmpx_core::session::{ClientEvent, MediaKind};
use rtmpx_testkit::rtmp_client::{attempt, tcp, Conn, Intent, Outcome};
use rtmpx_testkit::{exclusive, Gateway, TempDir};

const PLAYERS: usize = 300;
const FRAMES: u32 = 300;

const CONFIG: &str = r#"
[server]
worker_threads = 2

[[listener]]
proto = "rtmp"
addr = "127.0.0.1:0"

[[app]]
name = "live"

[limits]
max_connections = 1000
max_connections_per_ip = 1000
rtmpe_handshakes_per_ip = 0

[timeouts]
handshake_secs = 30
"#;

fn connect(gw: &Gateway, version: HandshakeVersion, intent: Intent) -> Conn {
    let addr = gw.addr("rtmp");
    let (outcome, conn) =
        attempt(tcp(addr), version, "live", &format!("rtmp://{addr}/live"), intent, Duration::from_secs(30));
    assert_eq!(outcome, Outcome::Started, "log:\n{}", gw.logs());
    conn
}

/// Video frame `n`: a keyframe every 25, 3 kB, its number after the AVC header.
fn frame(n: u32) -> Vec<u8> {
    let mut payload = vec![if n.is_multiple_of(25) { 0x17 } else { 0x27 }, 0x01, 0, 0, 0];
    payload.extend_from_slice(&n.to_be_bytes());
    payload.resize(3_000, 0x5a);
    payload
}

#[test]
fn every_player_of_a_hot_stream_on_two_worker_threads_gets_every_frame_in_order() {
    let _serial = exclusive();
    let gw = Gateway::start_in(TempDir::new("shards"), CONFIG, "info,rtmpx_router=debug");
    let done = Arc::new(AtomicBool::new(false));
    let players: Vec<_> = (0..PLAYERS)
        .map(|i| {
            // Every tenth player is RTMPE: its shard pairs their encryption.
            let version = if i % 10 == 0 { HandshakeVersion::Rtmpe } else { HandshakeVersion::Plain };
            let mut player = connect(&gw, version, Intent::Play("hot".into()));
            let done = done.clone();
            thread::spawn(move || {
                let mut got = Vec::new();
                while !done.load(Ordering::Relaxed) && got.len() < FRAMES as usize {
                    let Ok(events) = player.pump(Duration::from_millis(20)) else { break };
                    for event in events {
                        if let ClientEvent::Media(media) = event {
                            if media.kind == MediaKind::Video {
                                got.push(u32::from_be_bytes(media.payload[5..9].try_into().unwrap()));
                            }
                        }
                    }
                }
                got
            })
        })
        .collect();
    let mut publisher = connect(&gw, HandshakeVersion::Plain, Intent::Publish("hot".into()));
    let stream_id = publisher.stream_id.unwrap();
    for n in 0..FRAMES {
        publisher.session.send_media(stream_id, MediaKind::Video, n * 40, &frame(n));
        assert!(publisher.flush(), "the publisher was cut off; log:\n{}", gw.logs());
        thread::sleep(Duration::from_millis(10));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !players.iter().all(|p| p.is_finished()) {
        thread::sleep(Duration::from_millis(50));
    }
    done.store(true, Ordering::Relaxed);
    let expected: Vec<u32> = (0..FRAMES).collect();
    for (i, player) in players.into_iter().enumerate() {
        let got = player.join().unwrap();
        assert_eq!(got, expected, "player {i} (RTMPE: {})", i % 10 == 0);
    }
    assert!(gw.count_log("stream's fan-out sharded") == 1, "the stream was not sharded; log:\n{}", gw.logs());
}
