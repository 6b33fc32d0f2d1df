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
//! A hot stream uses every worker thread: past [`ShardConfig::min_players`] players (64) and with
//! more than one worker, a stream's players are split into one shard per worker, each served by
//! its own task. The publisher's task then hands each frame to each shard once (a queue push and a
//! notify) and the shards do the per-player work above, in parallel. Jobs are numbered so that no
//! player gets one twice or out of order, and a shard that falls behind is spilled into its
//! players' queues by the publisher, which never waits for a shard (module `shard`).
//!
//! Locking: the router's stream map, then a stream's state, then a player's queue; all held
//! briefly and never across an await. A sink is only tried (never waited for) under the queue
//! lock, so a session holding its own lock while popping its queue cannot deadlock with it. The
//! publisher's per-frame cost is one stream lock plus one queue lock and one `Bytes` refcount
//! increment per player.

mod queue;
mod rebase;
mod shard;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use rtmpx_core::media::enhanced::{ExTag, MediaType, PacketKind};
use rtmpx_core::media::{inspect_audio, inspect_video, legacy_payload, Codec, LegacyForm, MediaInfo};
use tokio::sync::Notify;

/// What a [`Frame`] carries: the core's media kind, so sessions and the router speak one type.
pub use rtmpx_core::session::MediaKind;

use queue::{Entry, PlayerQueue};
use rebase::Rebaser;
use shard::{Control, ShardSet, Work};

pub use shard::{FanOutScope, ShardConfig, SHARD_QUEUE_BYTES, SHARD_QUEUE_JOBS};

/// Limits. Changing them with [`Router::set_config`] affects players and publishes that start later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouterConfig {
    /// Bound on each player's queued payload bytes.
    pub player_queue_bytes: usize,
    /// Cache the GOP from the last keyframe so late joiners start with a picture at once.
    pub gop_cache: bool,
    /// A GOP larger than this (payload plus [`FRAME_OVERHEAD`] per frame) stops being cached
    /// until the next keyframe.
    pub max_gop_bytes: usize,
    /// Metadata or a sequence header larger than this is passed on but not cached.
    pub max_header_bytes: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            player_queue_bytes: 8 << 20,
            gop_cache: true,
            max_gop_bytes: 16 << 20,
            max_header_bytes: 64 << 10,
        }
    }
}

/// What a cached frame costs besides its payload (the frame itself, its slot, the payload's
/// shared header and allocator rounding), so that many tiny frames count for what they hold.
pub const FRAME_OVERHEAD: usize = 160;

/// What the router refuses.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouterError {
    /// A second publisher for a stream (the first must leave first).
    #[error("the stream already has a publisher")]
    AlreadyPublishing,
}

/// `app/name`, the identity of a stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    /// The application (no leading or trailing '/').
    pub app: String,
    /// The stream name without its query string.
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
    /// The gateway's session id.
    pub id: u64,
    /// The peer's address.
    pub peer: String,
    /// The transport variant ("rtmp", "rtmps", "rtmpt", ...).
    pub variant: &'static str,
}

/// One audio, video or data message. The payload is shared, never copied, across players.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Audio, video or data.
    pub kind: MediaKind,
    /// Milliseconds as the publisher stamped them (each player rebases them).
    pub timestamp: u32,
    /// The message body, shared by every player.
    pub payload: Bytes,
    /// Codec, keyframe and sequence header, inspected once on arrival.
    pub info: MediaInfo,
}

impl Frame {
    /// An audio frame, inspected for codec and sequence header.
    pub fn audio(timestamp: u32, payload: Bytes) -> Self {
        let info = inspect_audio(&payload);
        Frame { kind: MediaKind::Audio, timestamp, payload, info }
    }

    /// A video frame, inspected for codec, keyframe and sequence header.
    pub fn video(timestamp: u32, payload: Bytes) -> Self {
        let info = inspect_video(&payload);
        Frame { kind: MediaKind::Video, timestamp, payload, info }
    }

    /// `payload` is the AMF0 body ("onMetaData", ECMA array); opaque to the router.
    pub fn metadata(timestamp: u32, payload: Bytes) -> Self {
        Frame { kind: MediaKind::Data, timestamp, payload, info: MediaInfo::default() }
    }

    /// Audio or video that is not a sequence header.
    pub fn is_media(&self) -> bool {
        self.kind != MediaKind::Data && !self.info.sequence_header
    }

    /// A video frame a decoder can start from.
    pub fn is_keyframe(&self) -> bool {
        self.kind == MediaKind::Video && self.info.keyframe
    }

    fn media_type(&self) -> Option<MediaType> {
        match self.kind {
            MediaKind::Audio => Some(MediaType::Audio),
            MediaKind::Video => Some(MediaType::Video),
            MediaKind::Data => None,
        }
    }

    /// The ids of the tracks whose sequence start this frame carries (0 for a legacy header).
    pub fn sequence_start_tracks(&self) -> Vec<u8> {
        let Some(media) = self.media_type() else { return Vec::new() };
        match ExTag::parse(media, &self.payload) {
            Ok(Some(tag)) => tag
                .tracks()
                .flatten()
                .filter(|track| track.packet == PacketKind::SequenceStart)
                .map(|track| track.id)
                .collect(),
            _ => vec![0],
        }
    }

    /// What a player without Enhanced RTMP support gets: the frame, the default track in the
    /// legacy tag form, or nothing.
    pub fn for_legacy_player(&self) -> Option<Frame> {
        match self.info.legacy {
            LegacyForm::AsIs => Some(self.clone()),
            LegacyForm::Unreadable => None,
            LegacyForm::Rewrite => {
                let payload = legacy_payload(self.media_type()?, &self.payload)?;
                let info =
                    MediaInfo { enhanced: false, multitrack: false, legacy: LegacyForm::AsIs, ..self.info };
                Some(Frame {
                    kind: self.kind,
                    timestamp: self.timestamp,
                    payload: Bytes::from(payload),
                    info,
                })
            }
        }
    }
}

/// How a player subscribes ([`Router::play_with`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlayOptions {
    /// Its own queue bound instead of `player_queue_bytes` (relays).
    pub queue_limit: Option<usize>,
    /// A player that announced no Enhanced RTMP support: it gets only what it can parse
    /// ([`Frame::for_legacy_player`]).
    pub legacy: bool,
}

impl PlayOptions {
    /// These options with `queue_limit` set.
    pub fn with_queue_limit(mut self, limit: usize) -> Self {
        self.queue_limit = Some(limit);
        self
    }

    /// These options with `legacy` set.
    pub fn with_legacy(mut self, legacy: bool) -> Self {
        self.legacy = legacy;
        self
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
    /// only encode it and write it on [`flush`](Self::flush). `more`: the publisher has more
    /// frames at hand that follow at once ([`Publisher::send_more`]), so this one may wait for
    /// their write.
    fn try_send(&self, frame: &Frame, timestamp: u32, more: bool) -> DirectSend;

    /// Writes what `try_send` held back ([`Publisher::flush_direct`]). `Refused`: the player's
    /// task must do it.
    fn flush(&self) -> DirectSend {
        DirectSend::Sent
    }
}

/// Bills the memory a player's queue holds to whoever answers for it (the gateway: the client
/// address's budget). Called from the publisher's task under the player's lock: must be cheap.
pub trait MemoryCharge: Send {
    /// Sets the bytes billed. `false`: refused (over budget), the bill stays as it was; the
    /// player's queue is then emptied and the player marked [`Player::is_over_budget`].
    fn set(&mut self, bytes: usize) -> bool;
}

/// Queued memory is billed in steps of this (rounded up), so a lagging player touches its bill
/// about once per step of growth or shrinkage, not per frame; an empty queue is billed nothing.
pub const CHARGE_STEP: usize = 64 << 10;

/// What a player receives.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum PlayerEvent {
    /// A publisher arrived (the player waited for it).
    PublishStarted,
    /// Media in order, caches first.
    Frame(Frame),
    /// The publisher left; the player may wait for the next one.
    Unpublished,
}

/// State of one stream for stats.
#[derive(Clone, Debug)]
pub struct StreamSnapshot {
    /// The stream.
    pub key: StreamKey,
    /// Who publishes it, if anyone.
    pub publisher: Option<SessionInfo>,
    /// How many players are attached.
    pub players: usize,
    /// Codecs of the default tracks.
    pub video_codec: Option<&'static str>,
    /// Codec of the default audio track.
    pub audio_codec: Option<&'static str>,
    /// Every track seen (sequence starts, and the default tracks), ordered by kind and id.
    pub tracks: Vec<TrackSnapshot>,
    /// Players that announced no Enhanced RTMP support (they get the default tracks only).
    pub legacy_players: usize,
    /// Payload bytes received from the current publisher.
    pub bytes_in: u64,
    /// Frames received from the current publisher.
    pub frames_in: u64,
    /// Frames dropped for slow players since the stream entry appeared (departed players included).
    pub dropped_frames: u64,
}

/// One audio or video track of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackSnapshot {
    /// Audio or video.
    pub kind: MediaKind,
    /// Track id (0: the default track).
    pub id: u8,
    /// Codec name ("h264", "aac", ...).
    pub codec: &'static str,
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
    sharding: Mutex<ShardConfig>,
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
    /// A publisher that will take over from `publisher` (see [`Publisher::allow_takeover`]).
    standby: Option<Standby>,
    players: Vec<Arc<PlayerShared>>,
    cache: Cache,
    bytes_in: u64,
    frames_in: u64,
    dropped_by_departed: u64,
    /// Set while the players are served by shards on the worker threads (a hot stream).
    shards: Option<ShardSet>,
    /// The last shard job's number, kept across shardings so numbers never repeat.
    shard_seq: u64,
}

struct ActivePublisher {
    token: u64,
    session: SessionInfo,
    config: RouterConfig,
    sharding: ShardConfig,
    /// The publisher was asked to reconnect: until then a new publish may take the stream over.
    takeover_until: Option<std::time::Instant>,
}

/// A publisher waiting to take the stream over at its first keyframe (make-before-break).
struct Standby {
    publisher: ActivePublisher,
    /// Its metadata and sequence headers so far, sent on when it takes over.
    headers: Vec<Frame>,
}

#[derive(Default)]
struct Cache {
    metadata: Option<Frame>,
    /// The latest sequence start of every (kind, track): late joiners need each track's.
    headers: Vec<CachedHeader>,
    /// Codec of every track seen in a sequence start, and of the default tracks.
    track_codecs: Vec<(MediaKind, u8, Codec)>,
    /// From the last keyframe on, audio included; empty while not caching.
    gop: Vec<Frame>,
    gop_bytes: usize,
    has_video: bool,
    video_codec: Option<Codec>,
    audio_codec: Option<Codec>,
}

struct CachedHeader {
    kind: MediaKind,
    track: u8,
    frame: Frame,
}

impl Cache {
    /// Keeps a sequence start for each track it carries (a ManyTracks message may carry several).
    /// Caches a sequence start for each track it names, replacing the tracks' older ones; one
    /// larger than `max_bytes` replaces them with nothing (an older one would no longer match).
    fn store_header(&mut self, frame: &Frame, max_bytes: usize) {
        let tracks = frame.sequence_start_tracks();
        self.headers.retain(|cached| cached.kind != frame.kind || !tracks.contains(&cached.track));
        for track in tracks.into_iter().filter(|_| frame.payload.len() <= max_bytes) {
            self.headers.push(CachedHeader { kind: frame.kind, track, frame: frame.clone() });
        }
        if let (Some(media), true) = (frame.media_type(), frame.info.multitrack) {
            if let Ok(Some(tag)) = ExTag::parse(media, &frame.payload) {
                for track in tag.tracks().flatten() {
                    self.note_codec(frame.kind, track.id, track.codec);
                }
            }
        }
    }

    fn note_codec(&mut self, kind: MediaKind, track: u8, codec: Codec) {
        match self.track_codecs.iter_mut().find(|(k, id, _)| *k == kind && *id == track) {
            Some(entry) => entry.2 = codec,
            None => self.track_codecs.push((kind, track, codec)),
        }
    }

    fn update(&mut self, frame: &Frame, config: &RouterConfig) {
        let len = frame.payload.len();
        // Too large to keep for late joiners: an older one would no longer match either.
        let header = || (len <= config.max_header_bytes).then(|| frame.clone());
        if let (Some(codec), false) = (frame.info.codec, frame.info.multitrack) {
            self.note_codec(frame.kind, 0, codec);
        }
        match frame.kind {
            MediaKind::Data => self.metadata = header(),
            MediaKind::Video => {
                self.has_video = true;
                if frame.info.codec.is_some() && frame.info.default_track {
                    self.video_codec = frame.info.codec;
                }
                if frame.info.sequence_header {
                    self.store_header(frame, config.max_header_bytes);
                    // The cached GOP belongs to the previous configuration of the default track.
                    if frame.info.default_track {
                        self.clear_gop();
                    }
                } else if frame.info.keyframe {
                    self.clear_gop();
                    if config.gop_cache && len + FRAME_OVERHEAD <= config.max_gop_bytes {
                        self.gop.push(frame.clone());
                        self.gop_bytes = len;
                    }
                } else {
                    self.extend_gop(frame, config);
                }
            }
            MediaKind::Audio => {
                if frame.info.codec.is_some() && frame.info.default_track {
                    self.audio_codec = frame.info.codec;
                }
                if frame.info.sequence_header {
                    self.store_header(frame, config.max_header_bytes);
                } else {
                    self.extend_gop(frame, config);
                }
            }
        }
    }

    fn track_snapshots(&self) -> Vec<TrackSnapshot> {
        let mut tracks: Vec<TrackSnapshot> = self
            .track_codecs
            .iter()
            .map(|&(kind, id, codec)| TrackSnapshot { kind, id, codec: codec.name() })
            .collect();
        tracks.sort_by_key(|track| (track.kind != MediaKind::Video, track.id));
        tracks
    }

    fn extend_gop(&mut self, frame: &Frame, config: &RouterConfig) {
        if self.gop.is_empty() {
            return;
        }
        let len = frame.payload.len();
        let held = self.gop_bytes + len + (self.gop.len() + 1) * FRAME_OVERHEAD;
        if held > config.max_gop_bytes {
            tracing::debug!(gop_bytes = self.gop_bytes, "GOP exceeds max_gop_bytes, not cached");
            self.clear_gop();
        } else {
            self.gop.push(frame.clone());
            self.gop_bytes += len;
        }
    }

    fn clear_gop(&mut self) {
        // A new allocation: a long GOP of tiny frames must not leave a large Vec behind.
        self.gop = Vec::new();
        self.gop_bytes = 0;
    }

    /// Memory the cache holds: payloads plus per-frame overhead.
    fn held_bytes(&self) -> usize {
        let headers = self.metadata.iter().chain(self.headers.iter().map(|cached| &cached.frame));
        let header_bytes: usize = headers.map(|frame| frame.payload.len() + FRAME_OVERHEAD).sum();
        header_bytes + self.gop_bytes + self.gop.capacity() * FRAME_OVERHEAD
    }

    /// Primes a late joiner's queue: metadata and every track's sequence start, then the GOP if
    /// it fits, else wait for a keyframe. A legacy player gets only what it can parse.
    fn prime(&self, queue: &mut PlayerQueue, legacy: bool) {
        let deliver = |frame: &Frame| if legacy { frame.for_legacy_player() } else { Some(frame.clone()) };
        if let Some(metadata) = &self.metadata {
            queue.push_unchecked(metadata.clone());
        }
        // Video headers first, as publishers send them; a ManyTracks header is cached once per track.
        let mut sent: Vec<&Bytes> = Vec::new();
        for kind in [MediaKind::Video, MediaKind::Audio] {
            for cached in self.headers.iter().filter(|cached| cached.kind == kind) {
                if sent.iter().any(|payload| payload.as_ptr() == cached.frame.payload.as_ptr()) {
                    continue;
                }
                sent.push(&cached.frame.payload);
                if let Some(frame) = deliver(&cached.frame) {
                    queue.push_unchecked(frame);
                }
            }
        }
        if !self.has_video {
            return;
        }
        if !self.gop.is_empty() && queue.fits(self.gop_bytes, self.gop.len()) {
            for frame in self.gop.iter().filter_map(deliver) {
                queue.push_unchecked(frame);
            }
        } else {
            queue.await_keyframe();
        }
    }
}

struct PlayerShared {
    id: u64,
    legacy: bool,
    state: Mutex<PlayerState>,
    notify: Notify,
    /// Signalled once when the queue's bill is refused ([`Player::over_budget`]).
    evicted: Notify,
}

struct PlayerState {
    queue: PlayerQueue,
    rebaser: Rebaser,
    sink: Option<Arc<dyn DirectSink>>,
    /// Where the queue's memory is billed ([`Player::set_memory_charge`]) and how much is billed.
    charge: Option<Box<dyn MemoryCharge>>,
    charged: usize,
    /// The bill was refused: the queue was emptied and takes nothing more.
    over_budget: bool,
    /// The last shard job this player was given (see [`shard`]).
    delivered: u64,
}

impl PlayerState {
    fn new(queue: PlayerQueue) -> Self {
        PlayerState {
            queue,
            rebaser: Rebaser::default(),
            sink: None,
            charge: None,
            charged: 0,
            over_budget: false,
            delivered: 0,
        }
    }

    /// Brings the bill in line with what the queue holds when it left its band: grew past the
    /// bill, fell a step under it, or emptied. On refusal the queue is emptied at once, so the
    /// memory is free before the player's task even notices; returns false then.
    fn recharge(&mut self) -> bool {
        if self.over_budget {
            return false;
        }
        let Some(charge) = &mut self.charge else { return true };
        let held = self.queue.held_bytes();
        let wanted = held.div_ceil(CHARGE_STEP) * CHARGE_STEP;
        if held <= self.charged && self.charged <= wanted + CHARGE_STEP && (held > 0 || self.charged == 0) {
            return true;
        }
        if charge.set(wanted) {
            self.charged = wanted;
            return true;
        }
        self.over_budget = true;
        self.queue.clear();
        self.sink = None;
        charge.set(0);
        self.charged = 0;
        false
    }

    /// Queues a live frame and bills it; a refused bill empties the queue and wakes whoever
    /// waits for [`Player::over_budget`].
    fn queue_billed(&mut self, frame: Frame, has_video: bool, player: &PlayerShared) {
        self.queue.push_frame(frame, has_video);
        if !self.recharge() {
            player.evicted.notify_one();
        }
    }

    /// Lets the sink write what it holds; true when the player's task must do it instead.
    fn flush_sink(&self) -> bool {
        self.sink.as_ref().is_some_and(|sink| sink.flush() != DirectSend::Sent)
    }

    /// Hands a live frame to the sink when nothing is queued before it; false if it must be queued.
    fn try_direct(&mut self, frame: &Frame, more: bool, notify: &Notify) -> bool {
        let Some(sink) = &self.sink else { return false };
        if !self.queue.is_caught_up() {
            return false;
        }
        // Mapping is idempotent for the newest frame, so a refused frame maps the same when popped.
        let timestamp = self.rebaser.map(frame.kind, frame.is_media(), frame.timestamp);
        match sink.try_send(frame, timestamp, more) {
            DirectSend::Sent => true,
            DirectSend::SentWakeTask => {
                notify.notify_one();
                true
            }
            DirectSend::Refused => false,
        }
    }
}

/// Lets a player's sink write what it holds; its task does it when the sink cannot.
fn flush_sink(player: &PlayerShared) {
    if lock(&player.state).flush_sink() {
        player.notify.notify_one();
    }
}

impl Router {
    /// A router with no streams.
    pub fn new(config: RouterConfig) -> Self {
        Router {
            inner: Arc::new(RouterInner {
                config: Mutex::new(config),
                sharding: Mutex::new(ShardConfig::default()),
                streams: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// The current settings.
    pub fn config(&self) -> RouterConfig {
        *lock(&self.inner.config)
    }

    /// New limits apply to players and publishes that start afterwards.
    pub fn set_config(&self, config: RouterConfig) {
        *lock(&self.inner.config) = config;
    }

    /// How hot streams spread over worker threads now.
    pub fn sharding(&self) -> ShardConfig {
        *lock(&self.inner.sharding)
    }

    /// How hot streams spread over worker threads; applies to publishes that start afterwards.
    pub fn set_sharding(&self, sharding: ShardConfig) {
        *lock(&self.inner.sharding) = sharding;
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
        // Resolved once per publish (not per frame): how many shards this runtime can use.
        let sharding = self.sharding().resolved();
        let token = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (stream, takeover) = self.with_stream(&key, |stream, state| {
            if let Some(active) = &state.publisher {
                let open = active.takeover_until.is_some_and(|until| std::time::Instant::now() < until);
                if open && state.standby.is_none() {
                    tracing::debug!(stream = %key, session = session.id, live = active.session.id, "publish: takes over at its first keyframe");
                    let publisher = ActivePublisher { token, session, config, sharding, takeover_until: None };
                    state.standby = Some(Standby { publisher, headers: Vec::new() });
                    return Ok((Arc::clone(stream), true));
                }
                tracing::debug!(stream = %key, session = session.id, live = active.session.id, "publish refused: already publishing");
                return Err(RouterError::AlreadyPublishing);
            }
            tracing::debug!(stream = %key, session = session.id, peer = %session.peer, variant = session.variant, "publish");
            state.publisher = Some(ActivePublisher { token, session, config, sharding, takeover_until: None });
            state.cache = Cache::default();
            state.bytes_in = 0;
            state.frames_in = 0;
            state.broadcast(Control::PublishStarted);
            Ok((Arc::clone(stream), false))
        })?;
        Ok(Publisher { router: Arc::clone(&self.inner), stream, key, token, takeover })
    }

    /// Subscribes to the stream, published or not. A live stream primes the player from its caches.
    pub fn play(&self, key: StreamKey, session: SessionInfo) -> Player {
        let limit = self.config().player_queue_bytes;
        self.play_with_queue_limit(key, session, limit)
    }

    /// [`play`](Self::play) with its own queue bound instead of `player_queue_bytes` (relays).
    pub fn play_with_queue_limit(&self, key: StreamKey, session: SessionInfo, limit: usize) -> Player {
        self.play_with(key, session, PlayOptions { queue_limit: Some(limit), ..PlayOptions::default() })
    }

    /// [`play`](Self::play) with options (queue bound, legacy player).
    pub fn play_with(&self, key: StreamKey, session: SessionInfo, options: PlayOptions) -> Player {
        let limit = options.queue_limit.unwrap_or_else(|| self.config().player_queue_bytes);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let legacy = options.legacy;
        let shared = Arc::new(PlayerShared {
            id,
            legacy,
            state: Mutex::new(PlayerState::new(PlayerQueue::new(limit))),
            notify: Notify::new(),
            evicted: Notify::new(),
        });
        let stream = self.with_stream(&key, |stream, state| {
            let live = state.publisher.is_some();
            tracing::debug!(stream = %key, session = session.id, peer = %session.peer, variant = session.variant, live, legacy, "play");
            if live {
                let queue = &mut lock(&shared.state).queue;
                queue.push_publish_started();
                state.cache.prime(queue, legacy);
            }
            state.players.push(Arc::clone(&shared));
            if let Some(shards) = &mut state.shards {
                shards.join(&shared);
            }
            Arc::clone(stream)
        });
        // Waiting until it receives a publish start (queued at once when the stream is live; a
        // publish that ends before the player took its start is erased from the queue).
        let unpublished_since = Some(std::time::Instant::now());
        Player { router: Arc::clone(&self.inner), stream, key, shared, unpublished_since }
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

    /// A snapshot of every stream, for stats and the admin API.
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
                    tracks: state.cache.track_snapshots(),
                    legacy_players: state.players.iter().filter(|player| player.legacy).count(),
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

// Debug without taking locks: printing a router, publisher or player must never block or
// deadlock (it may happen inside a log call while a lock is held).
impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("key", &self.key)
            .field("takeover", &self.takeover)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Player {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Player").field("key", &self.key).finish_non_exhaustive()
    }
}

/// The right to push frames into a stream. Dropping it unpublishes.
pub struct Publisher {
    router: Arc<RouterInner>,
    stream: Arc<Stream>,
    key: StreamKey,
    token: u64,
    /// Whether it came as a takeover of a live publisher ([`Publisher::allow_takeover`]).
    takeover: bool,
}

impl Publisher {
    /// Caches and fans out a frame. Never blocks on players and never awaits. Empty frames carry
    /// nothing (not even a codec byte) and are dropped.
    pub fn send(&self, frame: Frame) {
        self.send_frame(frame, false)
    }

    /// [`send`](Self::send) for a frame that more follow at once (one read of the publisher's
    /// socket held several): direct players may encode it and write it with the next, so the
    /// frames of one read cost each player one write. The run ends with a `send`; a player that
    /// cannot take that last frame (a legacy player, an unreadable frame) is told to write what
    /// it holds.
    pub fn send_more(&self, frame: Frame) {
        self.send_frame(frame, true)
    }

    fn send_frame(&self, frame: Frame, more: bool) {
        if frame.payload.is_empty() {
            return;
        }
        let mut state = lock(&self.stream.state);
        let state = &mut *state;
        if state.standby.as_ref().is_some_and(|standby| standby.publisher.token == self.token) {
            if !frame.is_media() {
                let standby = state.standby.as_mut().expect("checked");
                standby.headers.retain(|kept| !same_header_class(kept, &frame));
                standby.headers.push(frame);
                return;
            }
            if state.cache.has_video && !frame.is_keyframe() {
                return;
            }
            for header in state.take_over() {
                state.fan_out(self.token, header, false);
            }
        }
        state.fan_out(self.token, frame, more);
    }

    /// Lets every player's sink write what it held back: with write batching the publisher's task
    /// calls this once per batch window instead of a timer per player.
    pub fn flush_direct(&self) {
        let mut state = lock(&self.stream.state);
        if let Some(shards) = &mut state.shards {
            shards.push(Work::Flush);
            return;
        }
        for player in &state.players {
            flush_sink(player);
        }
    }

    /// The stream this publisher feeds.
    pub fn key(&self) -> &StreamKey {
        &self.key
    }

    /// Lets one new publish of this stream, within `window`, take it over (its client was asked
    /// to reconnect): the new publisher waits in standby and replaces this one at its first
    /// keyframe, or when this one leaves. Players see no unpublish and no gap.
    pub fn allow_takeover(&self, window: std::time::Duration) {
        let mut state = lock(&self.stream.state);
        if let Some(active) = state.publisher.as_mut().filter(|active| active.token == self.token) {
            active.takeover_until = Some(std::time::Instant::now() + window);
        }
    }

    /// Whether this publish took over a live publisher (it starts no pushes of its own: the
    /// stream's continue).
    pub fn is_takeover(&self) -> bool {
        self.takeover
    }

    /// Memory the stream's caches hold for late joiners (GOP, metadata, sequence headers),
    /// per-frame overhead included: what this publisher makes the gateway keep.
    pub fn cached_bytes(&self) -> usize {
        lock(&self.stream.state).cache.held_bytes()
    }
}

/// Whether two header frames are of one kind (metadata, video or audio sequence header).
fn same_header_class(a: &Frame, b: &Frame) -> bool {
    a.kind == b.kind
        && a.info.sequence_header == b.info.sequence_header
        && a.sequence_start_tracks() == b.sequence_start_tracks()
}

impl StreamState {
    /// Caches and fans out a frame of the publisher `token` (nothing if it is not the active one).
    fn fan_out(&mut self, token: u64, frame: Frame, more: bool) {
        let Some(active) = self.publisher.as_ref().filter(|active| active.token == token) else {
            return;
        };
        let config = active.config;
        let sharding = active.sharding;
        self.bytes_in += frame.payload.len() as u64;
        self.frames_in += 1;
        self.cache.update(&frame, &config);
        let has_video = self.cache.has_video;
        self.reshard(&sharding);
        if let Some(shards) = &mut self.shards {
            shards.push(Work::Frame { frame, has_video, more });
            return;
        }
        // Built once, on the first legacy player that needs it.
        let mut legacy_frame: Option<Option<Frame>> = None;
        for player in &self.players {
            let frame = if player.legacy {
                match legacy_frame.get_or_insert_with(|| frame.for_legacy_player()) {
                    Some(legacy) => &*legacy,
                    None => {
                        if !more {
                            // It may hold frames of this run that it could read.
                            flush_sink(player);
                        }
                        continue;
                    }
                }
            } else {
                &frame
            };
            let mut player_state = lock(&player.state);
            if player_state.over_budget || player_state.try_direct(frame, more, &player.notify) {
                continue;
            }
            player_state.queue_billed(frame.clone(), has_video, player);
            drop(player_state);
            player.notify.notify_one();
        }
    }

    /// Shards a stream that grew past `min_players`, and serves one that shrank from here again.
    fn reshard(&mut self, sharding: &ShardConfig) {
        match &self.shards {
            None if sharding.shards > 1 && self.players.len() > sharding.min_players => {
                self.shards = ShardSet::start(&self.players, sharding, self.shard_seq);
            }
            Some(shards) if shards.may_dissolve(self.players.len()) => {
                self.shard_seq = shards.seq();
                self.shards = None;
                tracing::debug!(
                    players = self.players.len(),
                    "stream's fan-out back on the publisher's task"
                );
            }
            _ => {}
        }
    }

    /// Gives every player a publish start, end or takeover: through the shards when sharded (in
    /// order with the frames they still hold), else at once.
    fn broadcast(&mut self, control: Control) {
        if let Some(shards) = &mut self.shards {
            shards.push(Work::Control(control));
            return;
        }
        for player in &self.players {
            control.apply(&mut lock(&player.state).queue);
            player.notify.notify_one();
        }
    }

    /// The standby publisher replaces the active one; returns its headers that differ from the
    /// cached ones (to be sent on).
    fn take_over(&mut self) -> Vec<Frame> {
        let Some(standby) = self.standby.take() else { return Vec::new() };
        tracing::debug!(session = standby.publisher.session.id, "publisher taken over");
        self.publisher = Some(standby.publisher);
        self.broadcast(Control::PublisherReplaced);
        let cache = &self.cache;
        let is_cached = |header: &Frame| {
            let mut cached = cache.metadata.iter().chain(cache.headers.iter().map(|cached| &cached.frame));
            cached.any(|c| c.payload == header.payload)
        };
        standby.headers.into_iter().filter(|header| !is_cached(header)).collect()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let mut streams = lock(&self.router.streams);
        let mut state = lock(&self.stream.state);
        if state.standby.as_ref().is_some_and(|standby| standby.publisher.token == self.token) {
            state.standby = None;
            return;
        }
        if state.publisher.as_ref().is_none_or(|active| active.token != self.token) {
            return;
        }
        if state.standby.is_some() {
            // The old publisher left first: the standby takes over now.
            let token = state.standby.as_ref().map_or(0, |standby| standby.publisher.token);
            for header in state.take_over() {
                state.fan_out(token, header, false);
            }
            return;
        }
        tracing::debug!(stream = %self.key, "unpublish");
        state.publisher = None;
        state.cache = Cache::default();
        state.broadcast(Control::Unpublished);
        RouterInner::remove_if_unused(&mut streams, &self.stream, &mut state);
    }
}

/// Wakes a player's task from outside the router ([`Player::waker`]).
#[derive(Clone)]
pub struct PlayerWaker(Weak<PlayerShared>);

impl PlayerWaker {
    /// Wakes the player's task (no-op once the player is gone).
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
    /// Since when the stream has had no publisher, as this player's events tell it (`None`
    /// while one publishes).
    unpublished_since: Option<std::time::Instant>,
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
    #[must_use]
    pub fn try_recv(&mut self) -> Option<PlayerEvent> {
        let mut state = lock(&self.shared.state);
        let state = &mut *state;
        loop {
            let entry = state.queue.pop()?;
            // Shrinking is never refused (and an emptied queue is not billed again).
            state.recharge();
            return Some(match entry {
                Entry::PublishStarted => {
                    state.rebaser.publish_started();
                    self.unpublished_since = None;
                    PlayerEvent::PublishStarted
                }
                Entry::Unpublished => {
                    self.unpublished_since = Some(std::time::Instant::now());
                    PlayerEvent::Unpublished
                }
                Entry::PublisherReplaced => {
                    state.rebaser.publisher_replaced();
                    continue;
                }
                Entry::Frame(mut frame) => {
                    frame.timestamp = state.rebaser.map(frame.kind, frame.is_media(), frame.timestamp);
                    PlayerEvent::Frame(frame)
                }
            });
        }
    }

    /// Since when the stream has had no publisher, as far as this player's events went: from
    /// the play, and from each unpublish it received, until the next publish start it received
    /// (for a live stream, the first event). Lets a transport close players of a stream nobody
    /// publishes (each holds a connection).
    pub fn unpublished_since(&self) -> Option<std::time::Instant> {
        self.unpublished_since
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

    /// Bills what this player's queue holds to `charge` from now on (at once for what is queued
    /// already, e.g. a late joiner's GOP). Returns false if that was refused (see
    /// [`MemoryCharge::set`]).
    pub fn set_memory_charge(&self, charge: Box<dyn MemoryCharge>) -> bool {
        let mut state = lock(&self.shared.state);
        state.charge = Some(charge);
        state.charged = 0;
        let billed = state.recharge();
        if !billed {
            self.shared.evicted.notify_one();
            // Consumers that only wait for changes (HTTP-FLV) look at once.
            self.shared.notify.notify_one();
        }
        billed
    }

    /// Whether the queue's bill was refused: the queue was emptied, takes nothing more, and the
    /// player should be closed.
    pub fn is_over_budget(&self) -> bool {
        lock(&self.shared.state).over_budget
    }

    /// Returns once the queue's bill was refused (at once if it was before). Cancel-safe.
    pub async fn over_budget(&self) {
        loop {
            if self.is_over_budget() {
                return;
            }
            self.shared.evicted.notified().await;
        }
    }

    /// Frames discarded because this player fell behind.
    pub fn dropped_frames(&self) -> u64 {
        lock(&self.shared.state).queue.dropped()
    }

    /// Payload bytes waiting in this player's queue.
    pub fn queued_bytes(&self) -> usize {
        lock(&self.shared.state).queue.bytes()
    }

    /// The stream this player plays.
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
            if let Some(shards) = &mut state.shards {
                shards.leave(&self.shared);
            }
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
