//! Routing: streams keyed by app/stream, one publisher, many players.
//!
//! Knows nothing of transports or RTMP sessions. A [`Publisher`] pushes [`Frame`]s; every
//! [`Player`] of the same [`StreamKey`] gets them through its own bounded queue. Late joiners are
//! primed from caches (metadata, sequence headers, the GOP from the last keyframe).
//!
//! A player that is caught up (nothing queued) may take frames straight from the publisher through
//! a [`DirectSink`]: the publisher's task encodes and writes them, as nginx-rtmp does, so a
//! caught-up player costs no queue entry and no task wake-up per frame. A sink that cannot take a
//! frame at once (its socket is full, its session is busy) refuses it and the frame is queued.
//!
//! Locking: the router's stream map, then a stream's state, then a player's queue; all held
//! briefly and never across an await. A sink is only tried (never waited for) under the queue
//! lock, so a session holding its own lock while popping its queue cannot deadlock with it. The
//! publisher's per-frame cost is one stream lock plus one queue lock and one `Bytes` refcount
//! increment per player.

mod queue;
mod rebase;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use rtmpx_core::media::{inspect_audio, inspect_video, Codec, MediaInfo};
use tokio::sync::Notify;

use queue::{Entry, PlayerQueue};
use rebase::Rebaser;

/// Limits. Changing them with [`Router::set_config`] affects players and publishes that start later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouterConfig {
    /// Bound on each player's queued payload bytes.
    pub player_queue_bytes: usize,
    /// Cache the GOP from the last keyframe so late joiners start with a picture at once.
    pub gop_cache: bool,
    /// A GOP larger than this stops being cached until the next keyframe.
    pub max_gop_bytes: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig { player_queue_bytes: 8 << 20, gop_cache: true, max_gop_bytes: 32 << 20 }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RouterError {
    #[error("the stream already has a publisher")]
    AlreadyPublishing,
}

/// `app/name`, the identity of a stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    pub app: String,
    pub name: String,
}

impl StreamKey {
    /// `app` loses leading/trailing '/'; the stream name loses any "?query" (tokens and such).
    pub fn new(app: &str, stream_name_with_query: &str) -> Self {
        let name = stream_name_with_query.split('?').next().unwrap_or_default();
        StreamKey { app: app.trim_matches('/').to_owned(), name: name.to_owned() }
    }
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.app, self.name)
    }
}

/// Who is publishing or playing, for logs and stats.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub id: u64,
    pub peer: String,
    /// The transport variant ("rtmp", "rtmps", "rtmpt", ...).
    pub variant: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Audio,
    Video,
    Metadata,
}

/// One audio, video or data message. The payload is shared, never copied, across players.
#[derive(Clone, Debug)]
pub struct Frame {
    pub kind: FrameKind,
    pub timestamp: u32,
    pub payload: Bytes,
    pub info: MediaInfo,
}

impl Frame {
    pub fn audio(timestamp: u32, payload: Bytes) -> Self {
        let info = inspect_audio(&payload);
        Frame { kind: FrameKind::Audio, timestamp, payload, info }
    }

    pub fn video(timestamp: u32, payload: Bytes) -> Self {
        let info = inspect_video(&payload);
        Frame { kind: FrameKind::Video, timestamp, payload, info }
    }

    /// `payload` is the AMF0 body ("onMetaData", ECMA array); opaque to the router.
    pub fn metadata(timestamp: u32, payload: Bytes) -> Self {
        Frame { kind: FrameKind::Metadata, timestamp, payload, info: MediaInfo::default() }
    }

    /// Audio or video that is not a sequence header.
    pub fn is_media(&self) -> bool {
        self.kind != FrameKind::Metadata && !self.info.sequence_header
    }

    pub fn is_keyframe(&self) -> bool {
        self.kind == FrameKind::Video && self.info.keyframe
    }
}

/// What a [`DirectSink`] did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectSend {
    /// Sent (or committed to the transport in order); nothing else to do.
    Sent,
    /// Committed, but the player's task must finish the write (its socket was full): wake it.
    SentWakeTask,
    /// Not taken: queue the frame as usual.
    Refused,
}

/// Takes frames from the publisher's task for a caught-up player. Implemented by whoever drives
/// the player's session; must never block.
pub trait DirectSink: Send + Sync {
    /// Offers `frame` with the player's own (rebased) `timestamp`. A sink that batches writes may
    /// only encode it and write it on [`flush`](Self::flush).
    fn try_send(&self, frame: &Frame, timestamp: u32) -> DirectSend;

    /// Writes what `try_send` held back ([`Publisher::flush_direct`]). `Refused`: the player's
    /// task must do it.
    fn flush(&self) -> DirectSend {
        DirectSend::Sent
    }
}

#[derive(Clone, Debug)]
pub enum PlayerEvent {
    PublishStarted,
    Frame(Frame),
    Unpublished,
}

/// State of one stream for stats.
#[derive(Clone, Debug)]
pub struct StreamSnapshot {
    pub key: StreamKey,
    pub publisher: Option<SessionInfo>,
    pub players: usize,
    pub video_codec: Option<&'static str>,
    pub audio_codec: Option<&'static str>,
    /// Payload bytes received from the current publisher.
    pub bytes_in: u64,
    /// Frames received from the current publisher.
    pub frames_in: u64,
    /// Frames dropped for slow players since the stream entry appeared (departed players included).
    pub dropped_frames: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take every stream down with it; the data stays consistent
    // because no operation here leaves it half-updated across a panic point.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The fan-out hub. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<RouterInner>,
}

struct RouterInner {
    config: Mutex<RouterConfig>,
    streams: Mutex<HashMap<StreamKey, Arc<Stream>>>,
    next_id: AtomicU64,
}

struct Stream {
    key: StreamKey,
    state: Mutex<StreamState>,
}

#[derive(Default)]
struct StreamState {
    /// Set when the entry left the router map; whoever finds it must look the key up again.
    removed: bool,
    publisher: Option<ActivePublisher>,
    players: Vec<Arc<PlayerShared>>,
    cache: Cache,
    bytes_in: u64,
    frames_in: u64,
    dropped_by_departed: u64,
}

struct ActivePublisher {
    token: u64,
    session: SessionInfo,
    config: RouterConfig,
}

#[derive(Default)]
struct Cache {
    metadata: Option<Frame>,
    video_header: Option<Frame>,
    audio_header: Option<Frame>,
    /// From the last keyframe on, audio included; empty while not caching.
    gop: Vec<Frame>,
    gop_bytes: usize,
    has_video: bool,
    video_codec: Option<Codec>,
    audio_codec: Option<Codec>,
}

impl Cache {
    fn update(&mut self, frame: &Frame, config: &RouterConfig) {
        let len = frame.payload.len();
        match frame.kind {
            FrameKind::Metadata => self.metadata = Some(frame.clone()),
            FrameKind::Video => {
                self.has_video = true;
                if frame.info.codec.is_some() {
                    self.video_codec = frame.info.codec;
                }
                if frame.info.sequence_header {
                    self.video_header = Some(frame.clone());
                    // The cached GOP belongs to the previous configuration.
                    self.clear_gop();
                } else if frame.info.keyframe {
                    self.clear_gop();
                    if config.gop_cache && len <= config.max_gop_bytes {
                        self.gop.push(frame.clone());
                        self.gop_bytes = len;
                    }
                } else {
                    self.extend_gop(frame, config);
                }
            }
            FrameKind::Audio => {
                if frame.info.codec.is_some() {
                    self.audio_codec = frame.info.codec;
                }
                if frame.info.sequence_header {
                    self.audio_header = Some(frame.clone());
                } else {
                    self.extend_gop(frame, config);
                }
            }
        }
    }

    fn extend_gop(&mut self, frame: &Frame, config: &RouterConfig) {
        if self.gop.is_empty() {
            return;
        }
        let len = frame.payload.len();
        if self.gop_bytes + len > config.max_gop_bytes {
            tracing::debug!(gop_bytes = self.gop_bytes, "GOP exceeds max_gop_bytes, not cached");
            self.clear_gop();
        } else {
            self.gop.push(frame.clone());
            self.gop_bytes += len;
        }
    }

    fn clear_gop(&mut self) {
        self.gop.clear();
        self.gop_bytes = 0;
    }

    /// Primes a late joiner's queue: headers, then the GOP if it fits, else wait for a keyframe.
    fn prime(&self, queue: &mut PlayerQueue) {
        let headers = [&self.metadata, &self.video_header, &self.audio_header];
        for frame in headers.into_iter().flatten() {
            queue.push_unchecked(frame.clone());
        }
        if !self.has_video {
            return;
        }
        if !self.gop.is_empty() && queue.fits(self.gop_bytes, self.gop.len()) {
            for frame in &self.gop {
                queue.push_unchecked(frame.clone());
            }
        } else {
            queue.await_keyframe();
        }
    }
}

struct PlayerShared {
    id: u64,
    state: Mutex<PlayerState>,
    notify: Notify,
}

struct PlayerState {
    queue: PlayerQueue,
    rebaser: Rebaser,
    sink: Option<Arc<dyn DirectSink>>,
}

impl PlayerState {
    /// Hands a live frame to the sink when nothing is queued before it; false if it must be queued.
    fn try_direct(&mut self, frame: &Frame, notify: &Notify) -> bool {
        let Some(sink) = &self.sink else { return false };
        if !self.queue.is_caught_up() {
            return false;
        }
        // Mapping is idempotent for the newest frame, so a refused frame maps the same when popped.
        let timestamp = self.rebaser.map(frame.kind, frame.is_media(), frame.timestamp);
        match sink.try_send(frame, timestamp) {
            DirectSend::Sent => true,
            DirectSend::SentWakeTask => {
                notify.notify_one();
                true
            }
            DirectSend::Refused => false,
        }
    }
}

impl Router {
    pub fn new(config: RouterConfig) -> Self {
        Router {
            inner: Arc::new(RouterInner {
                config: Mutex::new(config),
                streams: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    pub fn config(&self) -> RouterConfig {
        *lock(&self.inner.config)
    }

    /// New limits apply to players and publishes that start afterwards.
    pub fn set_config(&self, config: RouterConfig) {
        *lock(&self.inner.config) = config;
    }

    /// The stream's entry with its state locked (an entry removed concurrently is looked up again).
    fn with_stream<R>(&self, key: &StreamKey, action: impl FnOnce(&Arc<Stream>, &mut StreamState) -> R) -> R {
        loop {
            let stream = {
                let mut streams = lock(&self.inner.streams);
                let entry = streams.entry(key.clone());
                entry
                    .or_insert_with(|| Arc::new(Stream { key: key.clone(), state: Mutex::default() }))
                    .clone()
            };
            let mut state = lock(&stream.state);
            if !state.removed {
                return action(&stream, &mut state);
            }
        }
    }

    /// Claims the stream; fails with [`RouterError::AlreadyPublishing`] while another publisher is live.
    pub fn publish(&self, key: StreamKey, session: SessionInfo) -> Result<Publisher, RouterError> {
        let config = self.config();
        let token = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let stream = self.with_stream(&key, |stream, state| {
            if let Some(active) = &state.publisher {
                tracing::debug!(stream = %key, session = session.id, live = active.session.id, "publish refused: already publishing");
                return Err(RouterError::AlreadyPublishing);
            }
            tracing::debug!(stream = %key, session = session.id, peer = %session.peer, variant = session.variant, "publish");
            state.publisher = Some(ActivePublisher { token, session, config });
            state.cache = Cache::default();
            state.bytes_in = 0;
            state.frames_in = 0;
            for player in &state.players {
                lock(&player.state).queue.push_publish_started();
                player.notify.notify_one();
            }
            Ok(Arc::clone(stream))
        })?;
        Ok(Publisher { router: Arc::clone(&self.inner), stream, key, token })
    }

    /// Subscribes to the stream, published or not. A live stream primes the player from its caches.
    pub fn play(&self, key: StreamKey, session: SessionInfo) -> Player {
        let limit = self.config().player_queue_bytes;
        self.play_with_queue_limit(key, session, limit)
    }

    /// [`play`](Self::play) with its own queue bound instead of `player_queue_bytes` (relays).
    pub fn play_with_queue_limit(&self, key: StreamKey, session: SessionInfo, limit: usize) -> Player {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(PlayerShared {
            id,
            state: Mutex::new(PlayerState {
                queue: PlayerQueue::new(limit),
                rebaser: Rebaser::default(),
                sink: None,
            }),
            notify: Notify::new(),
        });
        let stream = self.with_stream(&key, |stream, state| {
            let live = state.publisher.is_some();
            tracing::debug!(stream = %key, session = session.id, peer = %session.peer, variant = session.variant, live, "play");
            if live {
                let queue = &mut lock(&shared.state).queue;
                queue.push_publish_started();
                state.cache.prime(queue);
            }
            state.players.push(Arc::clone(&shared));
            Arc::clone(stream)
        });
        Player { router: Arc::clone(&self.inner), stream, key, shared }
    }

    /// Whether the stream currently has a publisher.
    pub fn is_live(&self, key: &StreamKey) -> bool {
        let stream = lock(&self.inner.streams).get(key).cloned();
        stream.is_some_and(|stream| lock(&stream.state).publisher.is_some())
    }

    /// Players subscribed to the stream now (0 for an unknown stream).
    pub fn player_count(&self, key: &StreamKey) -> usize {
        let stream = lock(&self.inner.streams).get(key).cloned();
        stream.map_or(0, |stream| lock(&stream.state).players.len())
    }

    pub fn streams(&self) -> Vec<StreamSnapshot> {
        let streams: Vec<Arc<Stream>> = lock(&self.inner.streams).values().cloned().collect();
        let mut snapshots: Vec<StreamSnapshot> = streams
            .iter()
            .filter_map(|stream| {
                let state = lock(&stream.state);
                if state.removed {
                    return None;
                }
                let dropped_live: u64 =
                    state.players.iter().map(|player| lock(&player.state).queue.dropped()).sum();
                Some(StreamSnapshot {
                    key: stream.key.clone(),
                    publisher: state.publisher.as_ref().map(|active| active.session.clone()),
                    players: state.players.len(),
                    video_codec: state.cache.video_codec.map(Codec::name),
                    audio_codec: state.cache.audio_codec.map(Codec::name),
                    bytes_in: state.bytes_in,
                    frames_in: state.frames_in,
                    dropped_frames: state.dropped_by_departed + dropped_live,
                })
            })
            .collect();
        snapshots.sort_by(|a, b| a.key.cmp(&b.key));
        snapshots
    }
}

impl RouterInner {
    /// Drops the map entry when nobody uses the stream any more. Called with the map locked.
    fn remove_if_unused(
        streams: &mut HashMap<StreamKey, Arc<Stream>>,
        stream: &Arc<Stream>,
        state: &mut StreamState,
    ) {
        if state.publisher.is_none() && state.players.is_empty() && !state.removed {
            state.removed = true;
            if streams.get(&stream.key).is_some_and(|entry| Arc::ptr_eq(entry, stream)) {
                streams.remove(&stream.key);
            }
        }
    }
}

/// The right to push frames into a stream. Dropping it unpublishes.
pub struct Publisher {
    router: Arc<RouterInner>,
    stream: Arc<Stream>,
    key: StreamKey,
    token: u64,
}

impl Publisher {
    /// Caches and fans out a frame. Never blocks on players and never awaits.
    pub fn send(&self, frame: Frame) {
        let mut state = lock(&self.stream.state);
        let state = &mut *state;
        let Some(active) = state.publisher.as_ref().filter(|active| active.token == self.token) else {
            return;
        };
        let config = active.config;
        state.bytes_in += frame.payload.len() as u64;
        state.frames_in += 1;
        state.cache.update(&frame, &config);
        let has_video = state.cache.has_video;
        for player in &state.players {
            let mut player_state = lock(&player.state);
            if player_state.try_direct(&frame, &player.notify) {
                continue;
            }
            player_state.queue.push_frame(frame.clone(), has_video);
            drop(player_state);
            player.notify.notify_one();
        }
    }

    /// Lets every player's sink write what it held back: with write batching the publisher's task
    /// calls this once per batch window instead of a timer per player.
    pub fn flush_direct(&self) {
        let state = lock(&self.stream.state);
        for player in &state.players {
            let player_state = lock(&player.state);
            let Some(sink) = &player_state.sink else { continue };
            if sink.flush() != DirectSend::Sent {
                player.notify.notify_one();
            }
        }
    }

    pub fn key(&self) -> &StreamKey {
        &self.key
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let mut streams = lock(&self.router.streams);
        let mut state = lock(&self.stream.state);
        if state.publisher.as_ref().is_none_or(|active| active.token != self.token) {
            return;
        }
        tracing::debug!(stream = %self.key, "unpublish");
        state.publisher = None;
        state.cache = Cache::default();
        for player in &state.players {
            lock(&player.state).queue.push_unpublished();
            player.notify.notify_one();
        }
        RouterInner::remove_if_unused(&mut streams, &self.stream, &mut state);
    }
}

/// Wakes a player's task from outside the router ([`Player::waker`]).
#[derive(Clone)]
pub struct PlayerWaker(Weak<PlayerShared>);

impl PlayerWaker {
    pub fn wake(&self) {
        if let Some(shared) = self.0.upgrade() {
            shared.notify.notify_one();
        }
    }
}

/// A subscription to one stream. Dropping it leaves.
pub struct Player {
    router: Arc<RouterInner>,
    stream: Arc<Stream>,
    key: StreamKey,
    shared: Arc<PlayerShared>,
}

impl Player {
    /// Waits for the next event. Cancel-safe. Currently never returns `None`.
    pub async fn recv(&mut self) -> Option<PlayerEvent> {
        loop {
            if let Some(event) = self.try_recv() {
                return Some(event);
            }
            // notify_one stores a permit when nobody waits, so a push between the check above
            // and this await is not lost.
            self.shared.notify.notified().await;
        }
    }

    /// The next event if one is queued; timestamps are rebased for this player.
    pub fn try_recv(&mut self) -> Option<PlayerEvent> {
        let mut state = lock(&self.shared.state);
        let state = &mut *state;
        let entry = state.queue.pop()?;
        Some(match entry {
            Entry::PublishStarted => {
                state.rebaser.publish_started();
                PlayerEvent::PublishStarted
            }
            Entry::Unpublished => PlayerEvent::Unpublished,
            Entry::Frame(mut frame) => {
                frame.timestamp = state.rebaser.map(frame.kind, frame.is_media(), frame.timestamp);
                PlayerEvent::Frame(frame)
            }
        })
    }

    /// Returns when something was queued since the last call, or a [`DirectSink`] asked for its
    /// task ([`DirectSend::SentWakeTask`]); at once if events are queued. Cancel-safe.
    pub async fn changed(&self) {
        if !lock(&self.shared.state).queue.is_empty() {
            return;
        }
        // A push between the check and this await leaves a permit: nothing is lost.
        self.shared.notify.notified().await;
    }

    /// [`changed`](Self::changed) as a future that owns what it needs, for poll-based consumers
    /// (an HTTP response body) that cannot hold a borrow of the player across polls.
    pub fn changed_owned(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        async move {
            if !lock(&shared.state).queue.is_empty() {
                return;
            }
            shared.notify.notified().await;
        }
    }

    /// A handle that wakes this player's task ([`changed`](Self::changed) returns), for a sink that
    /// finishes a write after its `try_send` returned. Does not keep the player alive.
    pub fn waker(&self) -> PlayerWaker {
        PlayerWaker(Arc::downgrade(&self.shared))
    }

    /// Lets the publisher's task hand frames straight to `sink` while this player is caught up
    /// (`None`: everything goes through the queue again).
    pub fn set_direct_sink(&self, sink: Option<Arc<dyn DirectSink>>) {
        lock(&self.shared.state).sink = sink;
    }

    /// Frames discarded because this player fell behind.
    pub fn dropped_frames(&self) -> u64 {
        lock(&self.shared.state).queue.dropped()
    }

    /// Payload bytes waiting in this player's queue.
    pub fn queued_bytes(&self) -> usize {
        lock(&self.shared.state).queue.bytes()
    }

    pub fn key(&self) -> &StreamKey {
        &self.key
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        let mut streams = lock(&self.router.streams);
        let mut state = lock(&self.stream.state);
        if let Some(index) = state.players.iter().position(|player| player.id == self.shared.id) {
            state.players.swap_remove(index);
            let mut player_state = lock(&self.shared.state);
            state.dropped_by_departed += player_state.queue.dropped();
            // The sink may hold the session that owns this player; let it go now.
            player_state.sink = None;
        }
        tracing::debug!(stream = %self.key, "player left");
        RouterInner::remove_if_unused(&mut streams, &self.stream, &mut state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}

    #[test]
    fn thread_safety() {
        assert_send_sync::<Router>();
        assert_send::<Publisher>();
        assert_send::<Player>();
    }

    #[test]
    fn recv_future_is_send() {
        fn check<F: std::future::Future + Send>(_: F) {}
        let router = Router::new(RouterConfig::default());
        let mut player = router
            .play(StreamKey::new("live", "a"), SessionInfo { id: 1, peer: "p".into(), variant: "rtmp" });
        check(player.recv());
    }
}
