//! A hot stream's fan-out on several worker threads (`rtmpx_router::ShardConfig`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtmpx_router::{
    DirectSend, DirectSink, Frame, Player, PlayerEvent, Publisher, Router, SessionInfo, ShardConfig,
    StreamKey, SHARD_QUEUE_JOBS,
};

fn session(id: u64) -> SessionInfo {
    SessionInfo { id, peer: format!("127.0.0.1:{}", 40000 + id), variant: "rtmp" }
}

fn key() -> StreamKey {
    StreamKey::new("live", "hot")
}

/// Frame `n` of the test stream: AAC audio, or video with a keyframe every 10 frames, `n` in the
/// payload so every delivery can be checked.
fn numbered(n: u32, video: bool) -> Frame {
    let mut payload = if !video {
        vec![0xAF, 0x01]
    } else if n.is_multiple_of(10) {
        vec![0x17, 0x01, 0, 0, 0]
    } else {
        vec![0x27, 0x01, 0, 0, 0]
    };
    payload.extend_from_slice(&n.to_be_bytes());
    let payload = Bytes::from(payload);
    if video {
        Frame::video(n, payload)
    } else {
        Frame::audio(n, payload)
    }
}

fn number(frame: &Frame) -> u32 {
    let tail = &frame.payload[frame.payload.len() - 4..];
    u32::from_be_bytes(tail.try_into().unwrap())
}

/// A player's output: what its sink took and what its task popped, in one log behind one lock,
/// as the gateway's session does (a sink that finds it busy refuses, so the frame is queued).
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<u32>>,
    threads: Mutex<HashSet<ThreadId>>,
}

impl DirectSink for Recorder {
    fn try_send(&self, frame: &Frame, _timestamp: u32, _more: bool) -> DirectSend {
        let Ok(mut seen) = self.seen.try_lock() else { return DirectSend::Refused };
        seen.push(number(frame));
        self.threads.lock().unwrap().insert(std::thread::current().id());
        DirectSend::Sent
    }
}

struct TestPlayer {
    player: Player,
    sink: Option<Arc<Recorder>>,
    /// The log of a player without a sink.
    own: Recorder,
}

impl TestPlayer {
    fn new(router: &Router, id: u64, direct: bool) -> TestPlayer {
        let player = router.play(key(), session(id));
        let sink = direct.then(|| {
            let sink = Arc::new(Recorder::default());
            player.set_direct_sink(Some(sink.clone()));
            sink
        });
        TestPlayer { player, sink, own: Recorder::default() }
    }

    /// Everything received, in order, after popping what is queued.
    fn received(&mut self) -> Vec<u32> {
        let mut seen = self.sink.as_deref().unwrap_or(&self.own).seen.lock().unwrap();
        while let Some(event) = self.player.try_recv() {
            if let PlayerEvent::Frame(frame) = event {
                seen.push(number(&frame));
            }
        }
        seen.clone()
    }
}

fn sharded_router(min_players: usize, scope: Option<rtmpx_router::FanOutScope>) -> Router {
    let router = Router::new(Default::default());
    let mut sharding = ShardConfig::default();
    sharding.shards = 2;
    sharding.min_players = min_players;
    sharding.scope = scope;
    router.set_sharding(sharding);
    router
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn publish(router: &Router) -> Publisher {
    router.publish(key(), session(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_player_of_a_sharded_stream_gets_every_frame_in_order_from_the_workers() {
    let router = sharded_router(8, None);
    let mut players: Vec<TestPlayer> = (1..=40).map(|id| TestPlayer::new(&router, id, id % 4 != 0)).collect();
    let publisher = publish(&router);
    players.iter_mut().for_each(|p| assert!(p.received().is_empty()));
    const FRAMES: u32 = 600;
    // In rounds the shards keep up with (a busy machine could otherwise make them spill).
    for round in 0..6 {
        for n in round * 100..(round + 1) * 100 {
            publisher.send(numbered(n, false));
        }
        let sent = (round + 1) as usize * 100;
        wait_for("every frame at every player", || players.iter_mut().all(|p| p.received().len() >= sent))
            .await;
    }
    let expected: Vec<u32> = (0..FRAMES).collect();
    for (i, player) in players.iter_mut().enumerate() {
        assert_eq!(player.received(), expected, "player {i}");
        assert_eq!(player.player.dropped_frames(), 0);
    }
    // The publisher (this test's thread, outside the runtime's workers) only handed frames over.
    let here = std::thread::current().id();
    let threads: HashSet<ThreadId> = players
        .iter()
        .filter_map(|p| p.sink.as_ref())
        .flat_map(|sink| sink.threads.lock().unwrap().clone())
        .collect();
    assert!(
        !threads.is_empty() && !threads.contains(&here),
        "direct writes ran on {threads:?}, publisher on {here:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_stream_is_served_from_the_publishers_task() {
    let router = sharded_router(64, None);
    let mut players: Vec<TestPlayer> = (1..=10).map(|id| TestPlayer::new(&router, id, true)).collect();
    let publisher = publish(&router);
    players.iter_mut().for_each(|p| assert!(p.received().is_empty()));
    for n in 0..20 {
        publisher.send(numbered(n, false));
    }
    let here = std::thread::current().id();
    for player in &players {
        // Synchronously, on the publisher's thread: no hop for a small stream.
        let sink = player.sink.as_ref().unwrap();
        assert_eq!(*sink.seen.lock().unwrap(), (0..20).collect::<Vec<_>>());
        assert_eq!(*sink.threads.lock().unwrap(), HashSet::from([here]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_joining_and_leaving_during_a_sharded_fan_out_get_a_gapless_run() {
    let router = sharded_router(8, None);
    let mut players: Vec<TestPlayer> = (1..=20).map(|id| TestPlayer::new(&router, id, id % 2 == 0)).collect();
    let publisher = publish(&router);
    players.iter_mut().for_each(|p| assert!(p.received().is_empty()));
    const FRAMES: u32 = 2_000;
    let sender = {
        tokio::spawn(async move {
            for n in 0..FRAMES {
                publisher.send(numbered(n, true));
                if n % 20 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            publisher
        })
    };
    let mut left = 0;
    let mut next_id = 100;
    while !sender.is_finished() {
        // Joiners are primed from the GOP cache, then get the live frames from their shard.
        players.push(TestPlayer::new(&router, next_id, next_id % 2 == 0));
        next_id += 1;
        if players.len() > 30 {
            players.swap_remove(3);
            left += 1;
        }
        tokio::time::sleep(Duration::from_micros(300)).await;
    }
    let _publisher = sender.await.unwrap();
    assert!(left > 0 && next_id > 105, "the stream ended before players came and went ({next_id}, {left})");
    wait_for("every player to reach the last frame", || {
        players.iter_mut().all(|p| p.received().last() == Some(&(FRAMES - 1)))
    })
    .await;
    for player in &mut players {
        let got = player.received();
        let first = got[0];
        assert!(first.is_multiple_of(10), "a player started at {first}, not a keyframe");
        assert_eq!(got, (first..FRAMES).collect::<Vec<_>>(), "a gap, a repeat or a reordering");
        assert_eq!(player.player.dropped_frames(), 0);
    }
}

static STALL_ARMED: AtomicBool = AtomicBool::new(false);
static STALL: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// Blocks the first shard task that enters while armed (outside any player's lock) until released.
fn stalling_scope(work: &mut dyn FnMut()) {
    if STALL_ARMED.swap(false, Ordering::SeqCst) {
        let (stalled, released) = &STALL;
        let mut stalled = stalled.lock().unwrap();
        *stalled = true;
        while *stalled {
            stalled = released.wait(stalled).unwrap();
        }
    }
    work()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_stalled_shard_stalls_neither_the_publisher_nor_the_other_shard_and_loses_nothing() {
    let router = sharded_router(8, Some(stalling_scope));
    let mut players: Vec<TestPlayer> = (1..=20).map(|id| TestPlayer::new(&router, id, true)).collect();
    let publisher = publish(&router);
    players.iter_mut().for_each(|p| assert!(p.received().is_empty()));
    publisher.send(numbered(0, false)); // shards the stream
    wait_for("the first frame", || players.iter_mut().all(|p| p.received() == [0])).await;
    /// Releases the stalled shard even when an assertion fails (the runtime waits for it).
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            STALL_ARMED.store(false, Ordering::SeqCst);
            *STALL.0.lock().unwrap_or_else(|e| e.into_inner()) = false;
            STALL.1.notify_all();
        }
    }
    let release = Release;
    STALL_ARMED.store(true, Ordering::SeqCst);
    publisher.send(numbered(1, false));
    wait_for("a shard to stall", || *STALL.0.lock().unwrap()).await;
    // Well past the shard queue's bound: the publisher spills the stalled shard and goes on.
    let frames = 2 * SHARD_QUEUE_JOBS as u32 + 50;
    for n in 2..frames {
        publisher.send(numbered(n, false));
    }
    assert!(*STALL.0.lock().unwrap(), "the publisher finished while the shard was stalled");
    let expected: Vec<u32> = (0..frames).collect();
    // The other shard's players have everything from their shard; the stalled one's have what the
    // spills queued for them (all but the stalled shard's last, short backlog).
    let half = players.len() / 2;
    wait_for("the other shard's players", || {
        players.iter_mut().map(|p| p.received() == expected).filter(|&done| done).count() >= half - 1
    })
    .await;
    let stalled: Vec<usize> = (0..players.len()).filter(|&i| players[i].received() != expected).collect();
    assert!(!stalled.is_empty(), "no player waited for the stalled shard");
    for &i in &stalled {
        let got = players[i].received();
        assert!(got.len() > SHARD_QUEUE_JOBS, "player {i}: nothing spilled ({} frames)", got.len());
        assert_eq!(got, (0..got.len() as u32).collect::<Vec<_>>(), "player {i}");
    }
    drop(release);
    wait_for("the stalled shard to catch up", || {
        players.iter_mut().all(|p| p.received().len() >= expected.len())
    })
    .await;
    for (i, player) in players.iter_mut().enumerate() {
        assert_eq!(player.received(), expected, "player {i}");
        assert_eq!(player.player.dropped_frames(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublish_reaches_sharded_players_after_every_frame_before_it() {
    let router = sharded_router(8, None);
    let mut players: Vec<Player> = (1..=20).map(|id| router.play(key(), session(id))).collect();
    for round in 0..3u32 {
        let publisher = publish(&router);
        for n in 0..100 {
            publisher.send(numbered(round * 1000 + n, false));
        }
        drop(publisher);
    }
    for player in &mut players {
        let mut events = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while events.len() < 3 * 102 {
            assert!(Instant::now() < deadline, "{} events", events.len());
            match tokio::time::timeout(Duration::from_secs(20), player.recv()).await.unwrap().unwrap() {
                PlayerEvent::PublishStarted => events.push(u32::MAX),
                PlayerEvent::Unpublished => events.push(u32::MAX - 1),
                PlayerEvent::Frame(frame) => events.push(number(&frame)),
                other => panic!("unexpected {other:?}"),
            }
        }
        let mut expected = Vec::new();
        for round in 0..3 {
            expected.push(u32::MAX);
            expected.extend((0..100).map(|n| round * 1000 + n));
            expected.push(u32::MAX - 1);
        }
        assert_eq!(events, expected);
    }
}

/// Encodes without writing until flushed, as the gateway's sink does while batching.
#[derive(Default)]
struct Batcher {
    held: Mutex<Vec<u32>>,
    written: Mutex<Vec<u32>>,
}

impl DirectSink for Batcher {
    fn try_send(&self, frame: &Frame, _timestamp: u32, _more: bool) -> DirectSend {
        self.held.lock().unwrap().push(number(frame));
        DirectSend::Sent
    }

    fn flush(&self) -> DirectSend {
        let held = std::mem::take(&mut *self.held.lock().unwrap());
        self.written.lock().unwrap().extend(held);
        DirectSend::Sent
    }
}

/// 20 players of a sharded stream, each with a sink of type `S`, told the publish started.
fn players_with_sinks<S: DirectSink + Default + 'static>(
    router: &Router,
) -> (Vec<(Player, Arc<S>)>, Publisher) {
    let mut players: Vec<(Player, Arc<S>)> = (1..=20)
        .map(|id| {
            let player = router.play(key(), session(id));
            let sink = Arc::new(S::default());
            player.set_direct_sink(Some(sink.clone()));
            (player, sink)
        })
        .collect();
    let publisher = publish(router);
    for (player, _) in &mut players {
        assert!(matches!(player.try_recv(), Some(PlayerEvent::PublishStarted)));
    }
    (players, publisher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_flush_reaches_sharded_sinks_after_the_frames_before_it() {
    let router = sharded_router(8, None);
    let (players, publisher) = players_with_sinks::<Batcher>(&router);
    for n in 0..100 {
        publisher.send(numbered(n, false));
    }
    publisher.flush_direct();
    let expected: Vec<u32> = (0..100).collect();
    wait_for("every sink to write its batch", || {
        players.iter().all(|(_, sink)| *sink.written.lock().unwrap() == expected)
    })
    .await;
    assert!(players.iter().all(|(_, sink)| sink.held.lock().unwrap().is_empty()));
}

/// Holds frames while more follow and writes the run with its last, as the gateway's sink does.
#[derive(Default)]
struct RunWriter {
    held: Mutex<Vec<u32>>,
    writes: Mutex<Vec<Vec<u32>>>,
}

impl DirectSink for RunWriter {
    fn try_send(&self, frame: &Frame, _timestamp: u32, more: bool) -> DirectSend {
        let mut held = self.held.lock().unwrap();
        held.push(number(frame));
        if !more {
            self.writes.lock().unwrap().push(std::mem::take(&mut *held));
        }
        DirectSend::Sent
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_sinks_get_one_read_of_frames_as_one_run() {
    let router = sharded_router(8, None);
    let (players, publisher) = players_with_sinks::<RunWriter>(&router);
    for n in 0..9 {
        publisher.send_more(numbered(n, false));
    }
    publisher.send(numbered(9, false));
    publisher.send(numbered(10, false));
    let expected = vec![(0..10).collect::<Vec<u32>>(), vec![10]];
    wait_for("every sink to write the run, then the single frame", || {
        players.iter().all(|(_, sink)| *sink.writes.lock().unwrap() == expected)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_shrinks_is_served_from_the_publishers_task_again_without_a_gap() {
    let router = sharded_router(8, None);
    let mut players: Vec<TestPlayer> = (1..=20).map(|id| TestPlayer::new(&router, id, true)).collect();
    let publisher = publish(&router);
    players.iter_mut().for_each(|p| assert!(p.received().is_empty()));
    for n in 0..50 {
        publisher.send(numbered(n, false));
    }
    wait_for("the sharded frames", || players.iter_mut().all(|p| p.received().len() == 50)).await;
    players.truncate(4); // half the threshold
                         // Once its shards are idle, a frame is delivered before send returns, from this thread.
    let here = std::thread::current().id();
    let mut n = 50;
    loop {
        publisher.send(numbered(n, false));
        let sink = players[0].sink.clone().unwrap();
        if sink.seen.lock().unwrap().last() == Some(&n) && sink.threads.lock().unwrap().contains(&here) {
            break;
        }
        assert!(n < 1_000, "never served from the publisher's task again");
        n += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    wait_for("the last frame", || players.iter_mut().all(|p| p.received().last() == Some(&n))).await;
    for player in &mut players {
        assert_eq!(player.received(), (0..=n).collect::<Vec<_>>());
    }
}
