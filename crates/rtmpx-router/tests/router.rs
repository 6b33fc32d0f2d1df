//! The router against its contract: publish/play fan-out, caches, limits and slow players.

use std::time::Duration;

use bytes::Bytes;
use rtmpx_router::{
    DirectSend, DirectSink, Frame, MediaKind, PlayOptions, Player, PlayerEvent, Router, RouterConfig,
    RouterError, SessionInfo, StreamKey,
};

fn session(id: u64) -> SessionInfo {
    SessionInfo { id, peer: format!("127.0.0.1:{}", 40000 + id), variant: "rtmp" }
}

/// The default router settings with one change.
fn config(change: impl FnOnce(&mut RouterConfig)) -> RouterConfig {
    let mut config = RouterConfig::default();
    change(&mut config);
    config
}

fn key() -> StreamKey {
    StreamKey::new("live", "cam")
}

fn body(head: &[u8], size: usize) -> Bytes {
    let mut payload = vec![0x55u8; size.max(head.len())];
    payload[..head.len()].copy_from_slice(head);
    Bytes::from(payload)
}

fn video_header(ts: u32) -> Frame {
    Frame::video(ts, body(&[0x17, 0x00, 0, 0, 0, 0x01, 0x64, 0x00, 0x1F], 40))
}
fn keyframe(ts: u32, size: usize) -> Frame {
    Frame::video(ts, body(&[0x17, 0x01, 0, 0, 0], size))
}
fn inter(ts: u32, size: usize) -> Frame {
    Frame::video(ts, body(&[0x27, 0x01, 0, 0, 0], size))
}
fn audio_header(ts: u32) -> Frame {
    Frame::audio(ts, body(&[0xAF, 0x00, 0x12, 0x10], 4))
}
fn aac(ts: u32, size: usize) -> Frame {
    Frame::audio(ts, body(&[0xAF, 0x01, 0x21], size))
}
fn metadata(ts: u32) -> Frame {
    Frame::metadata(ts, body(b"\x02\x00\x0aonMetaData\x08\x00\x00\x00\x00", 30))
}

/// A compact description of an event for assertions: (kind tag, timestamp).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Seen {
    Started,
    Unpublished,
    Meta(u32),
    VideoHeader(u32),
    AudioHeader(u32),
    Key(u32),
    Inter(u32),
    Audio(u32),
}

fn describe(event: &PlayerEvent) -> Seen {
    match event {
        PlayerEvent::PublishStarted => Seen::Started,
        PlayerEvent::Unpublished => Seen::Unpublished,
        PlayerEvent::Frame(frame) => match frame.kind {
            MediaKind::Data => Seen::Meta(frame.timestamp),
            MediaKind::Video if frame.info.sequence_header => Seen::VideoHeader(frame.timestamp),
            MediaKind::Video if frame.info.keyframe => Seen::Key(frame.timestamp),
            MediaKind::Video => Seen::Inter(frame.timestamp),
            MediaKind::Audio if frame.info.sequence_header => Seen::AudioHeader(frame.timestamp),
            MediaKind::Audio => Seen::Audio(frame.timestamp),
        },
        other => panic!("an event the router does not send: {other:?}"),
    }
}

fn drain(player: &mut Player) -> Vec<Seen> {
    std::iter::from_fn(|| player.try_recv()).map(|event| describe(&event)).collect()
}

fn send_headers(publisher: &rtmpx_router::Publisher, ts: u32) {
    publisher.send(metadata(ts));
    publisher.send(video_header(ts));
    publisher.send(audio_header(ts));
}

#[test]
fn late_joiner_gets_headers_gop_and_rebased_timestamps() {
    let router = Router::new(RouterConfig::default());
    let publisher = router.publish(key(), session(1)).unwrap();
    send_headers(&publisher, 0);
    publisher.send(keyframe(1000, 500));
    publisher.send(aac(1010, 50));
    publisher.send(inter(1033, 100));
    // Second GOP: the cache restarts here.
    let gop_key = keyframe(2000, 500);
    publisher.send(gop_key.clone());
    publisher.send(aac(1995, 50));
    publisher.send(inter(2033, 100));
    publisher.send(aac(2043, 50));

    let mut player = router.play(key(), session(2));
    let first = player.try_recv().unwrap();
    assert!(matches!(first, PlayerEvent::PublishStarted));
    let mut events = vec![describe(&first)];
    let mut gop_start_payload = None;
    while let Some(event) = player.try_recv() {
        if let PlayerEvent::Frame(frame) = &event {
            if frame.info.keyframe && gop_start_payload.is_none() {
                gop_start_payload = Some(frame.payload.clone());
            }
        }
        events.push(describe(&event));
    }
    assert_eq!(
        events,
        vec![
            Seen::Started,
            Seen::Meta(0),
            Seen::VideoHeader(0),
            Seen::AudioHeader(0),
            Seen::Key(0),
            Seen::Audio(0), // 1995 is before the keyframe: clamped to 0
            Seen::Inter(33),
            Seen::Audio(43),
        ]
    );
    // Shared, not copied.
    assert_eq!(gop_start_payload.unwrap().as_ptr(), gop_key.payload.as_ptr());

    publisher.send(inter(2066, 100));
    publisher.send(aac(2064, 50));
    assert_eq!(drain(&mut player), vec![Seen::Inter(66), Seen::Audio(64)]);
}

#[test]
fn late_joiner_without_usable_gop_waits_for_keyframe() {
    let router = Router::new(config(|c| c.max_gop_bytes = 1000));
    let publisher = router.publish(key(), session(1)).unwrap();
    send_headers(&publisher, 0);
    publisher.send(keyframe(0, 600));
    publisher.send(inter(40, 600)); // GOP now 1200 > 1000: no longer cached
    publisher.send(inter(80, 100));

    let mut player = router.play(key(), session(2));
    assert_eq!(
        drain(&mut player),
        vec![Seen::Started, Seen::Meta(0), Seen::VideoHeader(0), Seen::AudioHeader(0)]
    );
    publisher.send(inter(120, 100));
    publisher.send(aac(125, 10));
    assert_eq!(drain(&mut player), vec![], "nothing undecodable before the keyframe");
    publisher.send(keyframe(160, 600));
    publisher.send(aac(170, 10));
    assert_eq!(drain(&mut player), vec![Seen::Key(0), Seen::Audio(10)]);
    assert_eq!(player.dropped_frames(), 0, "skipping to the first keyframe is not a drop");
}

#[test]
fn gop_cache_disabled_means_no_gop() {
    let router = Router::new(config(|c| c.gop_cache = false));
    let publisher = router.publish(key(), session(1)).unwrap();
    send_headers(&publisher, 0);
    publisher.send(keyframe(0, 100));
    publisher.send(inter(40, 100));
    let mut player = router.play(key(), session(2));
    assert_eq!(
        drain(&mut player),
        vec![Seen::Started, Seen::Meta(0), Seen::VideoHeader(0), Seen::AudioHeader(0)]
    );
    publisher.send(keyframe(80, 100));
    assert_eq!(drain(&mut player), vec![Seen::Key(0)]);
}

#[test]
fn audio_only_stream_caches_header_only() {
    let router = Router::new(RouterConfig::default());
    let publisher = router.publish(key(), session(1)).unwrap();
    publisher.send(audio_header(0));
    for ts in (0..500).step_by(23) {
        publisher.send(aac(ts, 20));
    }
    let mut player = router.play(key(), session(2));
    assert_eq!(drain(&mut player), vec![Seen::Started, Seen::AudioHeader(0)]);
    publisher.send(aac(1000, 20));
    publisher.send(aac(1023, 20));
    assert_eq!(drain(&mut player), vec![Seen::Audio(0), Seen::Audio(23)]);
    let snapshot = &router.streams()[0];
    assert_eq!(snapshot.audio_codec, Some("aac"));
    assert_eq!(snapshot.video_codec, None);
}

#[tokio::test]
async fn player_waiting_before_publish_gets_started_and_frames() {
    let router = Router::new(RouterConfig::default());
    let mut player = router.play(key(), session(2));
    assert!(player.try_recv().is_none());
    assert!(!router.is_live(&key()));

    let receiver = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < 6 {
            let event = player.recv().await.expect("router alive");
            seen.push(describe(&event));
        }
        seen
    });
    // Let the receiver park in recv() first.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let publisher = router.publish(key(), session(1)).unwrap();
    assert!(router.is_live(&key()));
    send_headers(&publisher, 5000);
    publisher.send(keyframe(5000, 100));
    publisher.send(inter(5040, 100));
    let seen = tokio::time::timeout(Duration::from_secs(5), receiver).await.unwrap().unwrap();
    assert_eq!(
        seen,
        vec![
            Seen::Started,
            Seen::Meta(0),
            Seen::VideoHeader(0),
            Seen::AudioHeader(0),
            Seen::Key(0),
            Seen::Inter(40),
        ]
    );
}

#[tokio::test]
async fn recv_wakes_for_each_live_frame() {
    let router = Router::new(RouterConfig::default());
    let publisher = router.publish(key(), session(1)).unwrap();
    let mut player = router.play(key(), session(2));
    assert!(matches!(player.recv().await, Some(PlayerEvent::PublishStarted)));
    let receiver = tokio::spawn(async move {
        let mut timestamps = Vec::new();
        while timestamps.len() < 50 {
            if let Some(PlayerEvent::Frame(frame)) = player.recv().await {
                timestamps.push(frame.timestamp);
            }
        }
        timestamps
    });
    for i in 0..50u32 {
        let frame = if i % 10 == 0 { keyframe(i * 40, 100) } else { inter(i * 40, 100) };
        publisher.send(frame);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let timestamps = tokio::time::timeout(Duration::from_secs(5), receiver).await.unwrap().unwrap();
    assert_eq!(timestamps, (0..50).map(|i| i * 40).collect::<Vec<_>>());
}

#[test]
fn unpublish_notifies_and_next_publisher_continues_monotonic() {
    let router = Router::new(RouterConfig::default());
    let mut player = router.play(key(), session(9));
    let publisher = router.publish(key(), session(1)).unwrap();
    send_headers(&publisher, 0);
    publisher.send(keyframe(100, 100));
    publisher.send(aac(120, 10));
    publisher.send(inter(140, 100));
    drop(publisher);
    assert!(!router.is_live(&key()));
    assert_eq!(
        drain(&mut player),
        vec![
            Seen::Started,
            Seen::Meta(0),
            Seen::VideoHeader(0),
            Seen::AudioHeader(0),
            Seen::Key(0),
            Seen::Audio(20),
            Seen::Inter(40),
            Seen::Unpublished,
        ]
    );
    // Still subscribed: the next publisher restarts its clock at 0.
    let publisher = router.publish(key(), session(3)).unwrap();
    send_headers(&publisher, 0);
    publisher.send(keyframe(0, 100));
    publisher.send(aac(10, 10));
    publisher.send(inter(40, 100));
    assert_eq!(
        drain(&mut player),
        vec![
            Seen::Started,
            Seen::Meta(0),
            Seen::VideoHeader(40),
            Seen::AudioHeader(20),
            Seen::Key(41),
            Seen::Audio(51),
            Seen::Inter(81),
        ]
    );
}

#[test]
fn second_publisher_is_refused_until_first_leaves() {
    let router = Router::new(RouterConfig::default());
    let first = router.publish(key(), session(1)).unwrap();
    assert_eq!(first.key(), &key());
    let refused = router.publish(StreamKey::new("/live/", "cam?token=abc"), session(2));
    assert_eq!(refused.err(), Some(RouterError::AlreadyPublishing));
    // Another stream name is independent.
    let other = router.publish(StreamKey::new("live", "other"), session(3)).unwrap();
    drop(first);
    let second = router.publish(key(), session(2)).unwrap();
    assert_eq!(router.streams()[0].publisher.as_ref().unwrap().id, 2);
    drop(second);
    drop(other);
    assert!(router.streams().is_empty());
}

#[test]
fn ten_players_each_get_every_frame() {
    let router = Router::new(RouterConfig::default());
    let mut players: Vec<Player> = (0..10).map(|i| router.play(key(), session(10 + i))).collect();
    let publisher = router.publish(key(), session(1)).unwrap();
    send_headers(&publisher, 0);
    let mut sent = Vec::new();
    for i in 0..1000u32 {
        let frame = match i % 3 {
            0 if i % 60 == 0 => keyframe(i * 10, 300),
            0 => inter(i * 10, 200),
            _ => aac(i * 10, 30),
        };
        sent.push(frame.payload.clone());
        publisher.send(frame);
        // Read some players eagerly, others only at the end.
        for player in players.iter_mut().take(5) {
            while player.try_recv().is_some() {}
        }
    }
    let mut late = players.split_off(5);
    for player in &mut late {
        let events: Vec<PlayerEvent> = std::iter::from_fn(|| player.try_recv()).collect();
        assert_eq!(events.len(), 1 + 3 + sent.len());
        let payloads: Vec<Bytes> = events
            .into_iter()
            .filter_map(|event| match event {
                PlayerEvent::Frame(frame) if frame.is_media() => Some(frame.payload),
                _ => None,
            })
            .collect();
        assert_eq!(payloads, sent);
        assert_eq!(player.dropped_frames(), 0);
    }
    assert_eq!(router.streams()[0].players, 10);
    assert_eq!(router.streams()[0].dropped_frames, 0);
}

#[test]
fn threads_publish_and_play_concurrently() {
    let router = Router::new(RouterConfig::default());
    let frames = 2000u32;
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let mut player = router.play(key(), session(100 + i));
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
                runtime.block_on(async move {
                    let mut last = None;
                    let mut count = 0;
                    while count < frames {
                        match tokio::time::timeout(Duration::from_secs(10), player.recv()).await {
                            Ok(Some(PlayerEvent::Frame(frame))) => {
                                assert!(last.is_none_or(|last| frame.timestamp > last));
                                last = Some(frame.timestamp);
                                count += 1;
                            }
                            Ok(Some(_)) => {}
                            other => panic!("reader {i} stalled after {count}: {other:?}"),
                        }
                    }
                    count
                })
            })
        })
        .collect();
    let publisher_router = router.clone();
    let writer = std::thread::spawn(move || {
        let publisher = publisher_router.publish(key(), session(1)).unwrap();
        for i in 0..frames {
            let frame = if i % 50 == 0 { keyframe(i, 200) } else { inter(i, 200) };
            publisher.send(frame);
        }
    });
    // Joiners and leavers racing with the publisher.
    for i in 0..200 {
        let player = router.play(key(), session(1000 + i));
        drop(player);
    }
    writer.join().unwrap();
    for reader in readers {
        assert_eq!(reader.join().unwrap(), frames);
    }
    assert!(router.streams().is_empty());
}

#[test]
fn stalled_player_stays_bounded_while_others_get_everything() {
    let limit = 64 * 1024;
    let router = Router::new(config(|c| c.player_queue_bytes = limit));
    let publisher = router.publish(key(), session(1)).unwrap();
    let stalled = router.play(key(), session(2));
    let mut reader = router.play(key(), session(3));
    send_headers(&publisher, 0);
    let largest = 4000;
    let mut received = 0;
    let mut max_stalled = 0;
    for i in 0..3000u32 {
        let frame = if i % 100 == 0 { keyframe(i * 20, largest) } else { inter(i * 20, 1000) };
        publisher.send(frame);
        if i % 7 == 0 {
            publisher.send(metadata(i * 20)); // headers keep coming while the player is stalled
        }
        while let Some(event) = reader.try_recv() {
            if matches!(event, PlayerEvent::Frame(ref frame) if frame.is_media()) {
                received += 1;
            }
        }
        max_stalled = max_stalled.max(stalled.queued_bytes());
    }
    assert_eq!(received, 3000);
    assert_eq!(reader.dropped_frames(), 0);
    assert!(max_stalled <= limit + largest, "stalled queue reached {max_stalled}");
    assert!(max_stalled > limit / 2);
    assert!(stalled.dropped_frames() > 2500, "{}", stalled.dropped_frames());
    assert_eq!(router.streams()[0].dropped_frames, stalled.dropped_frames());
}

#[test]
fn dropping_player_resumes_at_keyframe_after_draining() {
    let limit = 74 + 10_000; // headers plus ten 1000-byte frames
    let router = Router::new(config(|c| c.player_queue_bytes = limit));
    let publisher = router.publish(key(), session(1)).unwrap();
    let mut player = router.play(key(), session(2));
    send_headers(&publisher, 0);
    // 12 frames of 1000 bytes: the queue holds 10, then drops.
    for i in 0..12u32 {
        let frame = if i == 0 { keyframe(i * 40, 1000) } else { inter(i * 40, 1000) };
        publisher.send(frame);
    }
    assert_eq!(player.dropped_frames(), 2);
    // A keyframe while still full: dropped too, and so is what follows.
    publisher.send(keyframe(12 * 40, 1000));
    publisher.send(inter(13 * 40, 1000));
    publisher.send(aac(13 * 40, 100));
    assert_eq!(player.dropped_frames(), 5);
    // A video header is never dropped.
    publisher.send(video_header(14 * 40));

    // Over the bound, the new video header superseded the queued one.
    let before = drain(&mut player);
    assert_eq!(before.len(), 1 + 2 + 10 + 1);
    assert_eq!(before.iter().filter(|seen| matches!(seen, Seen::VideoHeader(_))).count(), 1);
    assert_eq!(before.last(), Some(&Seen::VideoHeader(560)));
    // Drained, but inter frames still wait for a keyframe.
    publisher.send(inter(15 * 40, 1000));
    publisher.send(aac(15 * 40, 100));
    assert_eq!(drain(&mut player), vec![]);
    publisher.send(keyframe(16 * 40, 1000));
    publisher.send(aac(16 * 40 + 5, 100));
    publisher.send(inter(17 * 40, 1000));
    assert_eq!(drain(&mut player), vec![Seen::Key(640), Seen::Audio(645), Seen::Inter(680)]);
    assert_eq!(player.dropped_frames(), 7);
}

#[test]
fn stream_key_normalization() {
    let key = StreamKey::new("/live/", "cam?token=abc&x=1");
    assert_eq!(key.app, "live");
    assert_eq!(key.name, "cam");
    assert_eq!(key.to_string(), "live/cam");
    assert_eq!(key, StreamKey::new("live", "cam"));
    assert_eq!(StreamKey::new("app/inst", "s").to_string(), "app/inst/s");
    assert_eq!(StreamKey::new("live", "?only").name, "");
    assert_eq!(StreamKey::new("live", "a/b").name, "a/b");
}

#[test]
fn streams_snapshot_counts() {
    let router = Router::new(config(|c| c.player_queue_bytes = 1000));
    let publisher = router.publish(key(), session(7)).unwrap();
    let _idle = router.play(StreamKey::new("live", "idle"), session(8));
    let stalled = router.play(key(), session(9));
    let mut reader = router.play(key(), session(10));
    let frames = [
        metadata(0),      // 30 bytes
        video_header(0),  // 40
        audio_header(0),  // 4
        keyframe(0, 600), // stalled: 674 queued
        inter(40, 600),   // stalled: 674 + 600 > 1000, dropped
        aac(50, 100),     // stalled: dropped (waiting for a keyframe)
    ];
    for frame in frames {
        publisher.send(frame);
        while reader.try_recv().is_some() {}
    }

    let snapshots = router.streams();
    assert_eq!(snapshots.len(), 2);
    let idle = &snapshots[1];
    assert_eq!(idle.key.to_string(), "live/idle");
    assert!(idle.publisher.is_none());
    assert_eq!((idle.players, idle.bytes_in, idle.frames_in), (1, 0, 0));
    let cam = &snapshots[0];
    assert_eq!(cam.key, key());
    assert_eq!(cam.publisher.as_ref().map(|session| session.id), Some(7));
    assert_eq!(cam.players, 2);
    assert_eq!(cam.video_codec, Some("h264"));
    assert_eq!(cam.audio_codec, Some("aac"));
    assert_eq!(cam.frames_in, 6);
    assert_eq!(cam.bytes_in, 30 + 40 + 4 + 600 + 600 + 100);
    assert_eq!(cam.dropped_frames, 2);
    // Drops of a departed player still count for the stream.
    drop(stalled);
    let cam = router.streams().into_iter().find(|snapshot| snapshot.key == key()).unwrap();
    assert_eq!((cam.players, cam.dropped_frames), (1, 2));
}

#[test]
fn stream_entries_are_removed_when_empty() {
    let router = Router::new(RouterConfig::default());
    // Player only.
    let player = router.play(key(), session(1));
    assert_eq!(router.streams().len(), 1);
    drop(player);
    assert!(router.streams().is_empty());
    // Publisher only.
    let publisher = router.publish(key(), session(2)).unwrap();
    publisher.send(keyframe(0, 100));
    drop(publisher);
    assert!(router.streams().is_empty());
    // Publisher leaves first, player keeps the entry alive, then leaves.
    let publisher = router.publish(key(), session(3)).unwrap();
    let player = router.play(key(), session(4));
    drop(publisher);
    assert_eq!(router.streams().len(), 1);
    assert!(router.streams()[0].publisher.is_none());
    drop(player);
    assert!(router.streams().is_empty());
    // Many keys come and go.
    for i in 0..100 {
        let key = StreamKey::new("live", &format!("s{i}"));
        let publisher = router.publish(key.clone(), session(i)).unwrap();
        let player = router.play(key, session(1000 + i));
        drop(player);
        drop(publisher);
    }
    assert!(router.streams().is_empty());
}

#[test]
fn new_config_applies_to_new_players() {
    let router = Router::new(config(|c| c.player_queue_bytes = 1000));
    let publisher = router.publish(key(), session(1)).unwrap();
    let small = router.play(key(), session(2));
    router.set_config(config(|c| c.player_queue_bytes = 100_000));
    assert_eq!(router.config().player_queue_bytes, 100_000);
    let large = router.play(key(), session(3));
    publisher.send(keyframe(0, 500));
    for i in 1..20 {
        publisher.send(inter(i * 40, 500));
    }
    assert!(small.dropped_frames() > 0);
    assert_eq!(large.dropped_frames(), 0);
    assert_eq!(large.queued_bytes(), 20 * 500);
}

#[test]
fn player_with_own_queue_limit_drops_at_its_bound() {
    let router = Router::new(RouterConfig::default());
    let publisher = router.publish(key(), session(1)).unwrap();
    let mut relay = router.play_with_queue_limit(key(), session(2), 100_000);
    let mut normal = router.play(key(), session(3));
    send_headers(&publisher, 0);
    publisher.send(keyframe(0, 30_000));
    for i in 1..10 {
        publisher.send(inter(i * 40, 30_000));
    }
    assert!(relay.queued_bytes() <= 100_000, "relay queue {}", relay.queued_bytes());
    assert!(relay.dropped_frames() > 0);
    assert_eq!(normal.dropped_frames(), 0, "the default 8 MiB queue holds all");
    assert!(drain(&mut relay).starts_with(&[Seen::Started, Seen::Meta(0)]));
    assert_eq!(drain(&mut normal).len(), 1 + 3 + 10);
}

#[test]
fn player_count_follows_players() {
    let router = Router::new(RouterConfig::default());
    assert_eq!(router.player_count(&key()), 0);
    let a = router.play(key(), session(1));
    let b = router.play(key(), session(2));
    assert_eq!(router.player_count(&key()), 2);
    drop(a);
    assert_eq!(router.player_count(&key()), 1);
    drop(b);
    assert_eq!(router.player_count(&key()), 0);
    assert!(router.streams().is_empty());
}

/// A sink that takes frames while `open` and records what it got (kind, player timestamp).
struct RecordingSink {
    open: std::sync::atomic::AtomicBool,
    wake: bool,
    got: std::sync::Mutex<Vec<Seen>>,
}

impl RecordingSink {
    fn new(open: bool, wake: bool) -> std::sync::Arc<Self> {
        std::sync::Arc::new(RecordingSink {
            open: std::sync::atomic::AtomicBool::new(open),
            wake,
            got: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn set_open(&self, open: bool) {
        self.open.store(open, std::sync::atomic::Ordering::SeqCst);
    }

    fn got(&self) -> Vec<Seen> {
        self.got.lock().unwrap().clone()
    }
}

impl DirectSink for RecordingSink {
    fn try_send(&self, frame: &Frame, timestamp: u32, _more: bool) -> DirectSend {
        if !self.open.load(std::sync::atomic::Ordering::SeqCst) {
            return DirectSend::Refused;
        }
        let mut rebased = frame.clone();
        rebased.timestamp = timestamp;
        self.got.lock().unwrap().push(describe(&PlayerEvent::Frame(rebased)));
        if self.wake {
            DirectSend::SentWakeTask
        } else {
            DirectSend::Sent
        }
    }
}

#[test]
fn caught_up_player_takes_frames_directly_with_its_own_timestamps() {
    let router = Router::new(RouterConfig::default());
    let publisher = router.publish(key(), session(1)).unwrap();
    send_headers(&publisher, 5000);
    publisher.send(keyframe(5000, 100));
    publisher.send(aac(5010, 10));
    let mut player = router.play(key(), session(2));
    let sink = RecordingSink::new(true, false);
    player.set_direct_sink(Some(sink.clone()));
    // Queued first (the primed caches): the sink must not overtake them.
    publisher.send(inter(5040, 50));
    assert!(sink.got().is_empty(), "frames went around a non-empty queue");
    assert_eq!(
        drain(&mut player),
        [
            Seen::Started,
            Seen::Meta(0),
            Seen::VideoHeader(0),
            Seen::AudioHeader(0),
            Seen::Key(0),
            Seen::Audio(10),
            Seen::Inter(40)
        ]
    );
    // Caught up: frames bypass the queue, rebased on the same timeline.
    publisher.send(aac(5050, 10));
    publisher.send(inter(5080, 50));
    assert_eq!(sink.got(), [Seen::Audio(50), Seen::Inter(80)]);
    assert!(player.try_recv().is_none());
}

#[test]
fn refused_frames_are_queued_in_order_and_direct_resumes_after_the_queue() {
    let router = Router::new(RouterConfig::default());
    let publisher = router.publish(key(), session(1)).unwrap();
    let mut player = router.play(key(), session(2));
    assert_eq!(drain(&mut player), [Seen::Started]);
    let sink = RecordingSink::new(false, false);
    player.set_direct_sink(Some(sink.clone()));
    publisher.send(keyframe(0, 100));
    // Open now, but a frame is queued: the next one must queue behind it.
    sink.set_open(true);
    publisher.send(inter(40, 50));
    assert!(sink.got().is_empty());
    assert_eq!(drain(&mut player), [Seen::Key(0), Seen::Inter(40)]);
    publisher.send(inter(80, 50));
    assert_eq!(sink.got(), [Seen::Inter(80)]);
    // Unpublish always goes through the queue.
    drop(publisher);
    assert_eq!(drain(&mut player), [Seen::Unpublished]);
}

#[tokio::test]
async fn sink_asking_for_its_task_wakes_the_player() {
    let router = Router::new(RouterConfig::default());
    let publisher = router.publish(key(), session(1)).unwrap();
    let mut player = router.play(key(), session(2));
    assert_eq!(drain(&mut player), [Seen::Started]);
    player.set_direct_sink(Some(RecordingSink::new(true, true)));
    publisher.send(keyframe(0, 100));
    // Nothing queued, yet `changed` returns: the sink asked for the task.
    tokio::time::timeout(Duration::from_secs(1), player.changed()).await.expect("no wake-up");
    assert!(player.try_recv().is_none());
    let sink = RecordingSink::new(true, false);
    player.set_direct_sink(Some(sink.clone()));
    publisher.send(inter(40, 50));
    assert!(
        tokio::time::timeout(Duration::from_millis(50), player.changed()).await.is_err(),
        "woken for nothing"
    );
    assert_eq!(sink.got(), [Seen::Inter(40)]);
}

#[test]
fn player_waiting_for_a_keyframe_is_not_served_directly_until_then() {
    let router = Router::new(config(|c| c.gop_cache = false));
    let publisher = router.publish(key(), session(1)).unwrap();
    send_headers(&publisher, 0);
    publisher.send(keyframe(0, 100));
    let mut player = router.play(key(), session(2));
    let sink = RecordingSink::new(true, false);
    player.set_direct_sink(Some(sink.clone()));
    assert_eq!(
        drain(&mut player),
        [Seen::Started, Seen::Meta(0), Seen::VideoHeader(0), Seen::AudioHeader(0)]
    );
    // No GOP: inter frames and audio before the next keyframe are skipped, not sent.
    publisher.send(inter(40, 50));
    publisher.send(aac(50, 10));
    assert!(sink.got().is_empty());
    assert!(player.try_recv().is_none());
    publisher.send(keyframe(80, 100));
    assert_eq!(drain(&mut player), [Seen::Key(0)]);
    publisher.send(inter(120, 50));
    assert_eq!(sink.got(), [Seen::Inter(40)]);
}

#[test]
fn a_reconnecting_publisher_takes_over_at_its_first_keyframe_without_an_unpublish() {
    let router = Router::new(RouterConfig::default());
    let old = router.publish(key(), session(1)).unwrap();
    send_headers(&old, 0);
    old.send(keyframe(1000, 100));
    let mut player = router.play(key(), session(2));
    assert_eq!(
        drain(&mut player),
        [Seen::Started, Seen::Meta(0), Seen::VideoHeader(0), Seen::AudioHeader(0), Seen::Key(0)]
    );

    assert_eq!(router.publish(key(), session(3)).err(), Some(RouterError::AlreadyPublishing));
    old.allow_takeover(Duration::from_secs(60));
    let new = router.publish(key(), session(3)).unwrap();
    assert!(new.is_takeover() && !old.is_takeover());
    assert_eq!(router.publish(key(), session(4)).err(), Some(RouterError::AlreadyPublishing), "one standby");
    // The newcomer's headers and frames before its keyframe wait; the old publisher goes on.
    send_headers(&new, 1040);
    new.send(inter(1040, 10));
    old.send(inter(1040, 10));
    assert_eq!(drain(&mut player), [Seen::Inter(40)]);
    // Its keyframe: it takes over (identical headers are not repeated) and the old one is ignored.
    new.send(keyframe(1080, 100));
    old.send(inter(1080, 10));
    new.send(aac(1090, 10));
    assert_eq!(drain(&mut player), [Seen::Key(80), Seen::Audio(90)]);
    assert_eq!(router.streams()[0].publisher.as_ref().map(|p| p.id), Some(3));
    drop(old);
    new.send(inter(1120, 10));
    assert_eq!(drain(&mut player), [Seen::Inter(120)], "the old one leaving unpublishes nothing");
    assert!(router.is_live(&key()));
    // The window closes: no more takeovers.
    new.allow_takeover(Duration::ZERO);
    assert_eq!(router.publish(key(), session(5)).err(), Some(RouterError::AlreadyPublishing));
    drop(new);
    assert_eq!(drain(&mut player), [Seen::Unpublished]);
}

#[test]
fn a_standby_publisher_takes_over_when_the_old_one_leaves_first_and_restarted_timestamps_continue() {
    let router = Router::new(RouterConfig::default());
    let old = router.publish(key(), session(1)).unwrap();
    send_headers(&old, 0);
    old.send(keyframe(5000, 100));
    old.send(inter(5040, 10));
    let mut player = router.play(key(), session(2));
    drain(&mut player);
    old.allow_takeover(Duration::from_secs(60));
    let new = router.publish(key(), session(3)).unwrap();
    // A changed video header waits in standby and goes out at the takeover.
    new.send(Frame::video(0, body(&[0x17, 0x00, 0, 0, 0, 0x01, 0x4d, 0x00, 0x1F], 40)));
    drop(old);
    assert!(router.is_live(&key()));
    // Timestamps restart at 0: the player's timeline continues after its last frame.
    new.send(inter(0, 10));
    new.send(inter(40, 10));
    assert_eq!(drain(&mut player), [Seen::VideoHeader(40), Seen::Inter(41), Seen::Inter(81)]);
    // A standby that leaves before taking over changes nothing.
    new.allow_takeover(Duration::from_secs(60));
    let third = router.publish(key(), session(4)).unwrap();
    drop(third);
    new.send(inter(80, 10));
    assert_eq!(drain(&mut player), [Seen::Inter(121)]);
}

#[test]
fn empty_frames_are_dropped() {
    let router = Router::new(RouterConfig::default());
    let publisher = router.publish(key(), session(1)).unwrap();
    let mut player = router.play(key(), session(2));
    drain(&mut player);
    publisher.send(keyframe(0, 100));
    let cached = publisher.cached_bytes();
    for ts in 0..10_000 {
        publisher.send(Frame::audio(ts, Bytes::new()));
        publisher.send(Frame::video(ts, Bytes::new()));
    }
    assert_eq!(publisher.cached_bytes(), cached, "empty frames are not cached");
    assert_eq!(drain(&mut player), vec![Seen::Key(0)]);
    assert_eq!(router.streams()[0].frames_in, 1);
}

#[test]
fn tiny_frames_count_their_overhead_in_the_gop() {
    // 10,000 one-byte frames are 10 KB of payload but far more memory: the GOP bound sees that.
    let max_gop_bytes = 200_000;
    let router = Router::new(config(|c| c.max_gop_bytes = max_gop_bytes));
    let publisher = router.publish(key(), session(1)).unwrap();
    publisher.send(keyframe(0, 100));
    let mut most = 0;
    for ts in 1..=10_000 {
        publisher.send(Frame::audio(ts, Bytes::from_static(&[0xAF])));
        most = most.max(publisher.cached_bytes());
    }
    assert!(most <= max_gop_bytes * 2, "the cache reached {most} bytes");
    // The GOP passed its bound and was dropped: a late joiner waits for the next keyframe.
    let mut player = router.play(key(), session(2));
    assert_eq!(drain(&mut player), vec![Seen::Started]);
    assert!(publisher.cached_bytes() < 1000, "{}", publisher.cached_bytes());
    publisher.send(keyframe(20_000, 100));
    // (Timestamps are rebased: the player's first frame is at 0.)
    assert_eq!(drain(&mut player), vec![Seen::Key(0)]);
}

#[test]
fn oversized_headers_reach_players_but_are_not_cached() {
    let router = Router::new(config(|c| c.max_header_bytes = 1000));
    let publisher = router.publish(key(), session(1)).unwrap();
    let mut early = router.play(key(), session(2));
    drain(&mut early);
    send_headers(&publisher, 0);
    let big_meta = Frame::metadata(10, body(b"\x02\x00\x0aonMetaData\x08", 5000));
    let big_header = Frame::video(10, body(&[0x17, 0x00, 0, 0, 0], 5000));
    publisher.send(big_meta);
    publisher.send(big_header);
    assert!(publisher.cached_bytes() < 1000, "{}", publisher.cached_bytes());
    assert_eq!(
        drain(&mut early),
        vec![Seen::Meta(0), Seen::VideoHeader(0), Seen::AudioHeader(0), Seen::Meta(0), Seen::VideoHeader(0)]
    );
    // A late joiner gets neither the large ones nor the stale ones they replaced.
    let mut late = router.play(key(), session(3));
    assert_eq!(drain(&mut late), vec![Seen::Started, Seen::AudioHeader(0)]);
    // Normal-sized ones are cached again.
    send_headers(&publisher, 20);
    let mut later = router.play(key(), session(4));
    assert_eq!(
        drain(&mut later),
        vec![Seen::Started, Seen::Meta(0), Seen::VideoHeader(0), Seen::AudioHeader(0)]
    );
}

/// A player knows since when its stream has had no publisher, from its own events: from the
/// play until it receives a publish start, and from each unpublish it receives. A player whose
/// stream's publisher left before it took the publish start is still waiting.
#[test]
fn players_know_since_when_their_stream_is_unpublished() {
    let router = Router::new(RouterConfig::default());
    let before = std::time::Instant::now();
    let mut early = router.play(key(), session(2));
    let since = early.unpublished_since().expect("a play of a stream nobody publishes waits");
    assert!(since >= before);

    let publisher = router.publish(key(), session(1)).unwrap();
    assert_eq!(early.unpublished_since(), Some(since), "only what the player received counts");
    assert!(matches!(early.try_recv(), Some(PlayerEvent::PublishStarted)));
    assert_eq!(early.unpublished_since(), None);
    let mut late = router.play(key(), session(3));
    assert!(late.unpublished_since().is_some(), "until it takes the publish start");
    assert!(matches!(late.try_recv(), Some(PlayerEvent::PublishStarted)));
    assert_eq!(late.unpublished_since(), None, "a play of a live stream, once started");
    let never_started = router.play(key(), session(4));

    drop(publisher);
    let left = std::time::Instant::now();
    assert!(matches!(early.try_recv(), Some(PlayerEvent::Unpublished)));
    assert!(early.unpublished_since().is_some_and(|since| since >= left));
    assert!(matches!(late.try_recv(), Some(PlayerEvent::Unpublished)));
    assert!(late.unpublished_since().is_some());
    // Its publish start was erased with the publish: it waits from its play on.
    assert!(never_started.unpublished_since().is_some_and(|since| since < left));
}

/// Records whether each frame came with more behind it, and how often it was flushed.
#[derive(Default)]
struct RunSink {
    more: std::sync::Mutex<Vec<bool>>,
    flushes: std::sync::atomic::AtomicUsize,
}

impl DirectSink for RunSink {
    fn try_send(&self, _frame: &Frame, _timestamp: u32, more: bool) -> DirectSend {
        self.more.lock().unwrap().push(more);
        DirectSend::Sent
    }

    fn flush(&self) -> DirectSend {
        self.flushes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        DirectSend::Sent
    }
}

impl RunSink {
    fn seen(&self) -> (Vec<bool>, usize) {
        (self.more.lock().unwrap().clone(), self.flushes.load(std::sync::atomic::Ordering::SeqCst))
    }
}

#[test]
fn frames_of_one_read_reach_sinks_as_a_run_and_a_player_that_skips_its_end_is_flushed() {
    let router = Router::new(RouterConfig::default());
    let publisher = router.publish(key(), session(1)).unwrap();
    let mut player = router.play(key(), session(2));
    let mut legacy = router.play_with(key(), session(3), PlayOptions::default().with_legacy(true));
    assert_eq!(drain(&mut player), [Seen::Started]);
    assert_eq!(drain(&mut legacy), [Seen::Started]);
    let (sink, legacy_sink) =
        (std::sync::Arc::new(RunSink::default()), std::sync::Arc::new(RunSink::default()));
    player.set_direct_sink(Some(sink.clone()));
    legacy.set_direct_sink(Some(legacy_sink.clone()));

    publisher.send_more(keyframe(0, 100));
    publisher.send_more(aac(10, 10));
    publisher.send(inter(40, 50));
    assert_eq!(sink.seen(), (vec![true, true, false], 0));
    assert_eq!(legacy_sink.seen(), (vec![true, true, false], 0));

    // The run ends with a frame a legacy player cannot read (AV1): it is told to write what it
    // holds instead, so the frames it took do not wait for the next run.
    publisher.send_more(inter(80, 50));
    publisher.send(Frame::video(120, Bytes::from_static(b"\x93av01\x09")));
    assert_eq!(sink.seen(), (vec![true, true, false, true, false], 0));
    assert_eq!(legacy_sink.seen(), (vec![true, true, false, true], 1));
}
