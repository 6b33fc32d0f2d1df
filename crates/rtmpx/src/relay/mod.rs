//! Relays: pushing local streams to upstream servers and pulling missing streams from one.
//!
//! - Push: every stream published to an app with `push` entries gets one task per matching
//!   upstream. The task is a router [`Player`] (with its own queue bound,
//!   `relay.max_relay_queue_bytes`), so a dead or slow upstream only makes that queue drop to the
//!   next keyframe: the local publisher and players never wait. The task reconnects with capped
//!   exponential backoff while the publisher is live and stops when the router says
//!   `Unpublished`.
//! - Pull: a player asking for a stream that is not live in an app with `pull` starts one pull
//!   per stream; it plays the stream upstream and publishes it into the router like a local
//!   publisher, so every local player shares it. It ends `linger_secs` after the last player left.
//! - Loops: pushes start only for streams published by a client session; a pulled stream is
//!   never pushed, so it cannot go back to its origin. (Two servers pushing the same app to each
//!   other still loop: do not configure that.)

pub use crate::config::relay as config;
mod pull;
mod push;
mod splice;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::logsafe::Escaped;
use rtmpx_client::{ClientOptions, RtmpUrl};
use rtmpx_router::{Frame, MediaKind, Publisher, Router, SessionInfo, StreamKey};
use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Config;
use crate::fan_out::{Batching, Scope};
use crate::load::Load;
use crate::session::{NodePull, Relays, SessionContext};
use crate::sync::lock;
use config::RelaySection;

/// Which way a relay moves a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Push,
    Pull,
}

/// Where a relay is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    Connecting,
    Connected,
    /// Waiting out the backoff after a failure.
    Retrying,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Retrying => "retrying",
        }
    }
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Push => "push",
            Direction::Pull => "pull",
        }
    }
}

/// One relay for stats (JSON-able). The URL never carries a stream key or query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelayState {
    pub id: u64,
    pub app: String,
    pub stream: String,
    pub direction: Direction,
    pub url: String,
    pub state: LinkState,
    /// Transport bytes sent (push) or received (pull) over all connections.
    pub bytes: u64,
    pub last_error: Option<String>,
    /// Connections made after the first.
    pub reconnects: u64,
}

/// The sessions' context, with relays that start on its publishes and plays (for the
/// composition root and the fuzz targets).
pub fn session_context(
    config: Arc<Config>,
    shutdown: watch::Receiver<bool>,
) -> (SessionContext, RelayManager) {
    let load = Arc::<Load>::default();
    let relays = RelayManager::new(shutdown.clone(), load.clone(), crate::session::fan_out_scope);
    let session = SessionContext::new(config, shutdown, load, Arc::new(relays.clone()));
    (session, relays)
}

impl Relays for RelayManager {
    /// A client session started publishing `key`: starts its pushes. Call right after the
    /// router accepted the publish; the relay players are primed from the router's caches.
    fn start_pushes(&self, router: &Router, config: &Config, key: &StreamKey) {
        let Some(app) = config.app(&key.app) else { return };
        for target in app.relays.push.iter().filter(|p| p.matches(&key.name)) {
            let Ok(app_url) = config::upstream_app(&target.url) else { continue };
            let remote_name = target.name.apply(&key.name);
            let shown = config::redacted(&app_url, &remote_name, target.name.is_secret());
            let status = self.register(key, Direction::Push, shown);
            let session = SessionInfo { id: status.id, peer: status.url(), variant: "relay-push" };
            let player =
                router.play_with_queue_limit(key.clone(), session, config.relay.max_relay_queue_bytes);
            let job = push::PushJob {
                player,
                app_url,
                remote_name,
                options: RelayOptions::new(&config.relay, config.timeouts.write),
                status,
                shutdown: self.inner.shutdown.clone(),
            };
            tokio::spawn(job.run());
        }
    }

    /// A player asked for `key`: starts the app's pull unless the stream is live or a pull runs.
    /// Call after the player subscribed (the pull ends when the stream has no players).
    fn ensure_pull(&self, router: &Router, config: &Config, key: &StreamKey) {
        let Some(pull) = config.app(&key.app).and_then(|app| app.relays.pull.as_ref()) else { return };
        let Ok(app_url) = config::upstream_app(&pull.url) else { return };
        self.start_pull(router, config, key, app_url, pull.linger, None);
    }

    /// Whether a pull of `key` runs.
    fn is_pulling(&self, key: &StreamKey) -> bool {
        lock(&self.inner.pulls).contains_key(key)
    }

    /// Cluster: a player asked for `key`, which another node publishes. Starts one pull from
    /// the owner that follows `origin` (the directory's owner) and ends when the entry does.
    fn ensure_cluster_pull(&self, router: &Router, config: &Config, key: &StreamKey, pull: NodePull) {
        let NodePull { owner: origin, linger } = pull;
        let Some(owner) = origin.borrow().clone() else { return };
        let Ok(app_url) = config::upstream_app(&format!("{owner}/{}", key.app)) else { return };
        self.start_pull(router, config, key, app_url, linger, Some(origin));
    }
}

/// Starts pushes and pulls and knows every running relay. Cheap to clone.
#[derive(Clone)]
pub struct RelayManager {
    inner: Arc<Inner>,
}

struct Inner {
    next_id: AtomicU64,
    relays: Mutex<BTreeMap<u64, RelayState>>,
    /// The running pull of each stream (by relay id).
    pulls: Mutex<HashMap<StreamKey, u64>>,
    shutdown: watch::Receiver<bool>,
    /// Pulled streams batch their players' writes under load like published ones.
    load: Arc<Load>,
    /// How pulled streams' fan-outs run (the session layer's RTMPE pairing).
    scope: Scope,
}

impl RelayManager {
    pub fn new(shutdown: watch::Receiver<bool>, load: Arc<Load>, scope: Scope) -> Self {
        RelayManager {
            inner: Arc::new(Inner {
                next_id: AtomicU64::new(1),
                relays: Mutex::new(BTreeMap::new()),
                pulls: Mutex::new(HashMap::new()),
                shutdown,
                load,
                scope,
            }),
        }
    }

    /// Every running relay, by id.
    pub fn states(&self) -> Vec<RelayState> {
        lock(&self.inner.relays).values().cloned().collect()
    }

    /// Starts a pull of `key` from `app_url` unless the stream is live or a pull runs.
    fn start_pull(
        &self,
        router: &Router,
        config: &Config,
        key: &StreamKey,
        app_url: RtmpUrl,
        linger: Duration,
        origin: Option<watch::Receiver<Option<String>>>,
    ) {
        let mut pulls = lock(&self.inner.pulls);
        // Under the lock: a pull that is ending unpublishes before it leaves the table.
        if pulls.contains_key(key) || router.is_live(key) {
            return;
        }
        let shown = config::redacted(&app_url, &key.name, false);
        let status = self.register(key, Direction::Pull, shown);
        pulls.insert(key.clone(), status.id);
        drop(pulls);
        let job = pull::PullJob {
            router: router.clone(),
            key: key.clone(),
            app_url,
            linger,
            options: RelayOptions::new(&config.relay, config.timeouts.write),
            manager: self.clone(),
            status,
            shutdown: self.inner.shutdown.clone(),
            batching: Batching::new(&config.server, self.inner.load.clone()),
            scope: self.inner.scope,
            origin,
        };
        tokio::spawn(job.run());
    }

    /// Whether the pull `id` of `key` should end: no players for `linger`. Decided under the
    /// pull table's lock so a player arriving meanwhile either keeps it or starts a new one.
    /// When it should, the pull's publisher is dropped under the lock too.
    fn pull_idle(
        &self,
        router: &Router,
        key: &StreamKey,
        id: u64,
        idle_since: &mut Option<Instant>,
        linger: Duration,
        publisher: &mut Option<Publisher>,
    ) -> bool {
        if router.player_count(key) > 0 {
            *idle_since = None;
            return false;
        }
        if idle_since.get_or_insert_with(Instant::now).elapsed() < linger {
            return false;
        }
        let mut pulls = lock(&self.inner.pulls);
        if router.player_count(key) > 0 {
            *idle_since = None;
            return false;
        }
        *publisher = None;
        if pulls.get(key) == Some(&id) {
            pulls.remove(key);
        }
        true
    }

    fn forget_pull(&self, key: &StreamKey, id: u64) {
        let mut pulls = lock(&self.inner.pulls);
        if pulls.get(key) == Some(&id) {
            pulls.remove(key);
        }
    }

    fn register(&self, key: &StreamKey, direction: Direction, url: String) -> Status {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let state = RelayState {
            id,
            app: key.app.clone(),
            stream: key.name.clone(),
            direction,
            url,
            state: LinkState::Connecting,
            bytes: 0,
            last_error: None,
            reconnects: 0,
        };
        lock(&self.inner.relays).insert(id, state);
        Status { id, inner: self.inner.clone(), bytes_before: 0, connections: 0 }
    }
}

/// A relay's entry in the table; removed when the relay ends.
struct Status {
    id: u64,
    inner: Arc<Inner>,
    /// Bytes of earlier connections.
    bytes_before: u64,
    connections: u64,
}

impl Status {
    fn update(&self, change: impl FnOnce(&mut RelayState)) {
        if let Some(state) = lock(&self.inner.relays).get_mut(&self.id) {
            change(state);
        }
    }

    fn url(&self) -> String {
        lock(&self.inner.relays).get(&self.id).map(|s| s.url.clone()).unwrap_or_default()
    }

    fn connecting(&self) {
        self.update(|s| s.state = LinkState::Connecting);
    }

    fn connected(&mut self) {
        self.connections += 1;
        let reconnects = self.connections - 1;
        self.update(|s| {
            s.state = LinkState::Connected;
            s.reconnects = reconnects;
        });
    }

    /// Bytes of the current connection so far.
    fn bytes(&self, current: u64) {
        let total = self.bytes_before + current;
        self.update(|s| s.bytes = total);
    }

    /// The current connection ended with `current` bytes.
    fn connection_done(&mut self, current: u64) {
        self.bytes(current);
        self.bytes_before += current;
    }

    fn retrying(&self, error: &str) {
        let error = error.to_owned();
        self.update(|s| {
            s.state = LinkState::Retrying;
            s.last_error = Some(error);
        });
    }
}

impl Drop for Status {
    fn drop(&mut self) {
        lock(&self.inner.relays).remove(&self.id);
    }
}

/// What every relay connection needs from the configuration.
#[derive(Clone)]
struct RelayOptions {
    client: ClientOptions,
    backoff_initial: Duration,
    backoff_max: Duration,
    /// A write to the upstream that makes no progress for this long ends the connection.
    write_timeout: Duration,
}

impl RelayOptions {
    fn new(section: &RelaySection, write_timeout: Duration) -> Self {
        let connect_timeout = section.connect_timeout;
        let mut client = ClientOptions::default();
        client.tls.ca_file = section.ca_file.clone();
        client.tls.dangerous_accept_any_certificate = section.insecure;
        client.connect_timeout = connect_timeout;
        client.command_timeout = connect_timeout;
        client.flash_ver = "FMLE/3.0 (compatible; rtmpx relay)".into();
        // Relays follow reconnect requests (push.rs, pull.rs) unless told not to.
        client.caps_ex = if section.follow_reconnect { rtmpx_client::CAPS_EX_RECONNECT } else { 0 };
        RelayOptions {
            client,
            backoff_initial: section.backoff_initial,
            backoff_max: section.backoff_max,
            write_timeout,
        }
    }
}

/// Capped exponential backoff: initial, 2×, 4×... up to max; `reset` after a good connection.
#[derive(Debug, Clone)]
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max, next: initial }
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// A connection that stayed up this long was good: the backoff starts over after it.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// The latest metadata and sequence headers of a stream, to start each upstream connection.
#[derive(Default)]
struct Headers {
    metadata: Option<Frame>,
    /// The latest sequence start of every (kind, track), in arrival order (Enhanced RTMP
    /// multitrack has one per track).
    sequence_starts: Vec<(MediaKind, u8, Frame)>,
    has_video: bool,
}

impl Headers {
    /// Remembers `frame` if it is a header; true if it was.
    fn update(&mut self, frame: &Frame) -> bool {
        if frame.kind == MediaKind::Video {
            self.has_video = true;
        }
        match frame.kind {
            MediaKind::Data => self.metadata = Some(frame.clone()),
            MediaKind::Video | MediaKind::Audio if frame.info.sequence_header => {
                let tracks = frame.sequence_start_tracks();
                self.sequence_starts
                    .retain(|(kind, track, _)| *kind != frame.kind || !tracks.contains(track));
                self.sequence_starts
                    .extend(tracks.into_iter().map(|track| (frame.kind, track, frame.clone())));
            }
            _ => return false,
        }
        true
    }

    /// Metadata, then each video and each audio sequence start once (a ManyTracks one is kept
    /// per track).
    fn all(&self) -> Vec<Frame> {
        let mut all: Vec<Frame> = self.metadata.iter().cloned().collect();
        for kind in [MediaKind::Video, MediaKind::Audio] {
            for (_, _, frame) in self.sequence_starts.iter().filter(|(k, _, _)| *k == kind) {
                if !all.iter().any(|sent| sent.payload.as_ptr() == frame.payload.as_ptr()) {
                    all.push(frame.clone());
                }
            }
        }
        all
    }
}

fn log_retry(
    direction: Direction,
    stream: &StreamKey,
    url: &str,
    error: &str,
    delay: Duration,
    attempt: u32,
) {
    warn!(
        "relay {} {} -> {url}: {}; retrying in {}ms (attempt {attempt})",
        direction_name(direction),
        Escaped(stream),
        Escaped(error),
        delay.as_millis()
    );
}

fn log_connected(direction: Direction, stream: &StreamKey, url: &str, reconnects: u64, scheme: &str) {
    info!(
        "relay {} {} {} {url}: connected over {scheme} (reconnects={reconnects})",
        direction_name(direction),
        Escaped(stream),
        if direction == Direction::Push { "->" } else { "<-" }
    );
}

fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Push => "push",
        Direction::Pull => "pull",
    }
}

/// `scheme://host:port/app` of an upstream, without queries or the stream (it may be a key).
fn redacted_url(url: &RtmpUrl) -> String {
    format!("{}://{}/{}", url.scheme, url.authority(), url.app.split('?').next().unwrap_or_default())
}

/// The upstream URL of one stream.
fn stream_url(app_url: &RtmpUrl, name: &str) -> RtmpUrl {
    RtmpUrl { stream: name.to_owned(), ..app_url.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rtmpx_router::PlayerEvent;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_millis(3000));
        let delays: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000, 3000, 3000, 3000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }

    #[test]
    fn relays_announce_the_reconnect_capability_unless_configured_not_to() {
        let on = RelayOptions::new(&RelaySection::default(), Duration::from_secs(1));
        assert_eq!(on.client.caps_ex, rtmpx_client::CAPS_EX_RECONNECT);
        let section = RelaySection { follow_reconnect: false, ..RelaySection::default() };
        assert_eq!(RelayOptions::new(&section, Duration::from_secs(1)).client.caps_ex, 0);
    }

    #[test]
    fn headers_keep_the_latest_of_each_kind() {
        let mut h = Headers::default();
        let meta = Frame::metadata(0, Bytes::from_static(b"\x02\x00\x0aonMetaData"));
        let avc_header = Frame::video(0, Bytes::from_static(&[0x17, 0x00, 0, 0, 0, 1, 0x64]));
        let avc_header2 = Frame::video(5, Bytes::from_static(&[0x17, 0x00, 0, 0, 0, 1, 0x4d]));
        let aac_header = Frame::audio(0, Bytes::from_static(&[0xAF, 0x00, 0x12, 0x10]));
        let key = Frame::video(40, Bytes::from_static(&[0x17, 0x01, 0, 0, 0, 9]));
        let aac = Frame::audio(40, Bytes::from_static(&[0xAF, 0x01, 7]));
        assert!(!h.has_video);
        assert!(h.update(&meta) && h.update(&avc_header) && h.update(&aac_header) && h.update(&avc_header2));
        assert!(!h.update(&key) && !h.update(&aac));
        assert!(h.has_video);
        let kept: Vec<u32> = h.all().into_iter().map(|f| f.timestamp).collect();
        assert_eq!(kept, [0, 5, 0], "metadata, newest video header, audio header");
        // A second audio track (FFmpeg's OneTrack multitrack, track 1) is kept beside track 0.
        let second_track = Frame::audio(0, Bytes::from_static(b"\x95\x00mp4a\x01\x11\x90"));
        assert!(h.update(&second_track));
        assert_eq!(h.all().len(), 4);
        assert!(h.all()[3].info.multitrack);
    }

    fn test_config(text: &str) -> Config {
        Config::from_toml(text, "t").unwrap()
    }

    const BASE: &str = "[[listener]]\nproto = \"rtmp\"\naddr = \"127.0.0.1:0\"\n";

    #[tokio::test]
    async fn pushes_start_per_matching_target_and_end_with_the_publisher() {
        let config = test_config(&format!(
            "{BASE}[[app]]\nname = \"live\"\npush = [\
             {{ url = \"rtmp://127.0.0.1:9/up\", name = \"fixed:SECRET\" }},\
             {{ url = \"rtmp://127.0.0.1:9/up?tok=1\", name = \"rename:{{name}}_hd\", streams = \"cam*\" }}]\n\
             [relay]\nbackoff_initial_ms = 10\nbackoff_max_ms = 20\n"
        ));
        let (_tx, rx) = watch::channel(false);
        let manager = RelayManager::new(rx, Arc::default(), crate::fan_out::plain);
        let router = Router::new(Default::default());
        let info = SessionInfo { id: 1, peer: "p".into(), variant: "rtmp" };

        let other = StreamKey::new("live", "other");
        let publisher = router.publish(other.clone(), info.clone()).unwrap();
        manager.start_pushes(&router, &config, &other);
        let states = manager.states();
        assert_eq!(states.len(), 1, "only the unfiltered target: {states:?}");
        assert_eq!(states[0].url, "rtmp://127.0.0.1:9/up/<key>");
        assert_eq!(states[0].direction, Direction::Push);
        assert_eq!(router.player_count(&other), 1, "the push is a router player");

        let cam = StreamKey::new("live", "cam1");
        let cam_publisher = router.publish(cam.clone(), info).unwrap();
        manager.start_pushes(&router, &config, &cam);
        let urls: Vec<String> = manager.states().into_iter().map(|s| s.url).collect();
        assert!(urls.contains(&"rtmp://127.0.0.1:9/up/cam1_hd".to_owned()), "{urls:?}");
        assert_eq!(manager.states().len(), 3);

        // Port 9 refuses: the relays retry and record the error.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !manager.states().iter().all(|s| s.state == LinkState::Retrying || s.last_error.is_some()) {
            assert!(Instant::now() < deadline, "{:?}", manager.states());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(manager.states().iter().all(|s| s.last_error.is_some() && s.bytes == 0));

        drop(publisher);
        drop(cam_publisher);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !manager.states().is_empty() || router.player_count(&cam) != 0 {
            assert!(Instant::now() < deadline, "relays outlive their publisher: {:?}", manager.states());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn one_pull_per_stream_and_it_ends_after_the_last_player() {
        let config = test_config(&format!(
            "{BASE}[[app]]\nname = \"edge\"\npull = {{ url = \"rtmp://127.0.0.1:9/origin\", linger_secs = 0 }}\n\
             [relay]\nbackoff_initial_ms = 10\nbackoff_max_ms = 20\n"
        ));
        let (_tx, rx) = watch::channel(false);
        let manager = RelayManager::new(rx, Arc::default(), crate::fan_out::plain);
        let router = Router::new(Default::default());
        let key = StreamKey::new("edge", "s");
        let info = SessionInfo { id: 1, peer: "p".into(), variant: "rtmp" };
        let player = router.play(key.clone(), info.clone());
        manager.ensure_pull(&router, &config, &key);
        let second = router.play(key.clone(), info);
        manager.ensure_pull(&router, &config, &key);
        let states = manager.states();
        assert_eq!(states.len(), 1, "{states:?}");
        assert_eq!(
            (states[0].direction, states[0].url.as_str()),
            (Direction::Pull, "rtmp://127.0.0.1:9/origin/s")
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(manager.states().len(), 1, "players remain: the pull stays (retrying)");
        drop(player);
        drop(second);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !manager.states().is_empty() {
            assert!(Instant::now() < deadline, "pull outlived its players: {:?}", manager.states());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(lock(&manager.inner.pulls).is_empty());
    }

    /// An upstream that accepts the publish and then never reads again.
    async fn stalling_upstream(listener: tokio::net::TcpListener) {
        use rand::SeedableRng;
        use rtmpx_core::session::{ServerConfig, ServerEvent, ServerSession};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut session =
            ServerSession::new(ServerConfig::default(), &mut rand::rngs::StdRng::from_entropy());
        let mut buf = vec![0; 16 * 1024];
        let mut publishing = false;
        while !publishing {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "the relay hung up before publishing");
            session.handle_input(&buf[..n]).unwrap();
            while let Some(event) = session.poll_event() {
                match event {
                    ServerEvent::ConnectRequested(_) => session.accept_connect().unwrap(),
                    ServerEvent::PublishRequested { stream_id, .. } => {
                        session.accept_publish(stream_id).unwrap();
                        publishing = true;
                    }
                    _ => {}
                }
            }
            while let Some(bytes) = session.poll_transmit() {
                tcp.write_all(&bytes).await.unwrap();
            }
        }
        // Keep the connection open, unread.
        std::future::pending::<()>().await;
        drop(tcp);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_upstream_never_holds_up_the_publisher_or_local_players() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(stalling_upstream(listener));
        let config = test_config(&format!(
            "{BASE}[[app]]\nname = \"live\"\npush = [{{ url = \"rtmp://127.0.0.1:{port}/up\" }}]\n\
             [relay]\nmax_relay_queue_bytes = 65536\nbackoff_initial_ms = 5000\n[timeouts]\nwrite_secs = 1\n"
        ));
        let (_tx, rx) = watch::channel(false);
        let manager = RelayManager::new(rx, Arc::default(), crate::fan_out::plain);
        let mut router_config = rtmpx_router::RouterConfig::default();
        router_config.player_queue_bytes = 64 << 20;
        let router = Router::new(router_config);
        let key = StreamKey::new("live", "big");
        let info = SessionInfo { id: 1, peer: "p".into(), variant: "rtmp" };
        let publisher = router.publish(key.clone(), info.clone()).unwrap();
        let mut local = router.play(key.clone(), info);
        manager.start_pushes(&router, &config, &key);
        let deadline = Instant::now() + Duration::from_secs(10);
        while manager.states().first().map(|s| s.state) != Some(LinkState::Connected) {
            assert!(Instant::now() < deadline, "{:?}", manager.states());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // 64 KiB keyframes, as fast as the relay can pass them, until the unread connection's
        // socket buffers are full and the relay's write times out. Every send stays instant.
        let keyframe = {
            let mut body = vec![0x55; 64 * 1024];
            body[..5].copy_from_slice(&[0x17, 1, 0, 0, 0]);
            Bytes::from(body)
        };
        publisher.send(Frame::video(0, Bytes::from_static(&[0x17, 0x00, 0, 0, 0, 1, 0x64, 0, 0x1f])));
        let (mut sent, mut received, mut slowest) = (1usize, 0usize, Duration::ZERO);
        let deadline = Instant::now() + Duration::from_secs(30);
        let state = loop {
            let before = Instant::now();
            publisher.send(Frame::video(sent as u32 * 40, keyframe.clone()));
            slowest = slowest.max(before.elapsed());
            sent += 1;
            while let Some(event) = local.try_recv() {
                received += usize::from(matches!(event, PlayerEvent::Frame(_)));
            }
            if sent % 16 == 0 {
                let state = manager.states().remove(0);
                if state.state == LinkState::Retrying {
                    break state;
                }
                assert!(Instant::now() < deadline, "the relay never noticed the stall: {state:?}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        assert!(slowest < Duration::from_millis(100), "the publisher waited {slowest:?}");
        assert_eq!((received, local.dropped_frames()), (sent, 0), "the local player got everything");
        assert!(router.streams()[0].dropped_frames > 0, "the relay's bounded queue dropped frames");
        assert!(state.last_error.as_deref().unwrap_or_default().contains("stopped reading"), "{state:?}");
        assert!(state.bytes > 1 << 20, "{state:?}");
        drop(publisher);
    }

    /// One pull's upstream, scripted: the connection's session and socket.
    struct ScriptedUpstream {
        tcp: tokio::net::TcpStream,
        session: rtmpx_core::session::ServerSession,
    }

    impl ScriptedUpstream {
        /// Accepts a connection and answers until the client asks to play; returns the stream
        /// id, the play not yet accepted.
        async fn accept_until_play(listener: &tokio::net::TcpListener) -> (ScriptedUpstream, u32) {
            use rand::SeedableRng;
            use rtmpx_core::session::{ServerConfig, ServerEvent, ServerSession};
            use tokio::io::AsyncReadExt;
            let (tcp, _) = listener.accept().await.unwrap();
            let session =
                ServerSession::new(ServerConfig::default(), &mut rand::rngs::StdRng::from_entropy());
            let mut up = ScriptedUpstream { tcp, session };
            let mut buf = vec![0; 16 * 1024];
            loop {
                let n = up.tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "the pull hung up before playing");
                up.session.handle_input(&buf[..n]).unwrap();
                let mut play = None;
                while let Some(event) = up.session.poll_event() {
                    match event {
                        ServerEvent::ConnectRequested(_) => up.session.accept_connect().unwrap(),
                        ServerEvent::PlayRequested { stream_id, .. } => play = Some(stream_id),
                        _ => {}
                    }
                }
                up.flush().await;
                if let Some(stream_id) = play {
                    return (up, stream_id);
                }
            }
        }

        /// Accepts the play and sends the AVC header and `frames` (timestamp, payload).
        async fn play(&mut self, stream_id: u32, frames: &[(u32, &'static [u8])]) {
            self.session.accept_play(stream_id, "s").unwrap();
            self.send(stream_id, &[(0, &[0x17, 0x00, 0, 0, 0, 1, 0x64, 0, 0x1f])]).await;
            self.send(stream_id, frames).await;
        }

        async fn send(&mut self, stream_id: u32, frames: &[(u32, &'static [u8])]) {
            for &(timestamp, payload) in frames {
                assert!(self.session.send_media(
                    stream_id,
                    rtmpx_core::session::MediaKind::Video,
                    timestamp,
                    payload
                ));
            }
            self.flush().await;
        }

        async fn flush(&mut self) {
            use tokio::io::AsyncWriteExt;
            while let Some(bytes) = self.session.poll_transmit() {
                self.tcp.write_all(&bytes).await.unwrap();
            }
        }
    }

    /// Waits for the next frame the local player gets; an unpublish fails the test.
    async fn next_frame(player: &mut rtmpx_router::Player) -> Frame {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match player.try_recv() {
                    Some(PlayerEvent::Frame(frame)) => return frame,
                    Some(PlayerEvent::Unpublished) => panic!("the local players saw the stream end"),
                    Some(_) => {}
                    None => player.changed().await,
                }
            }
        })
        .await
        .expect("no frame within 5 s")
    }

    /// How the old upstream stops while the pull's move is still connecting.
    #[derive(Clone, Copy)]
    enum OldUpstreamStops {
        Unpublishes,
        Closes,
    }

    /// A draining origin asks the pull to move and stops (its publisher, a push relay that moved
    /// first, leaves; or it closes the connection) before the pull's new connection plays: the
    /// local players keep the stream and go on with the new upstream's frames.
    async fn a_pull_moving_keeps_its_players_when_the_old_upstream(stops: OldUpstreamStops) {
        let old = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let new = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (old_port, new_port) = (old.local_addr().unwrap().port(), new.local_addr().unwrap().port());
        let config = test_config(&format!(
            "{BASE}[[app]]\nname = \"edge\"\npull = {{ url = \"rtmp://127.0.0.1:{old_port}/origin\" }}\n"
        ));
        let (_tx, rx) = watch::channel(false);
        let manager = RelayManager::new(rx, Arc::default(), crate::fan_out::plain);
        let router = Router::new(Default::default());
        let key = StreamKey::new("edge", "s");
        let mut local = router.play(key.clone(), SessionInfo { id: 1, peer: "p".into(), variant: "rtmp" });
        manager.ensure_pull(&router, &config, &key);

        let (mut a, a_id) = ScriptedUpstream::accept_until_play(&old).await;
        a.play(a_id, &[(0, b"\x17\x01\0\0\0old-key"), (40, b"\x27\x01\0\0\0old-inter")]).await;
        assert!(!next_frame(&mut local).await.is_media(), "the AVC header first");
        assert_eq!(&next_frame(&mut local).await.payload[5..], b"old-key");
        assert_eq!(&next_frame(&mut local).await.payload[5..], b"old-inter");

        let request = rtmpx_core::session::ReconnectRequest {
            tc_url: Some(format!("rtmp://127.0.0.1:{new_port}/origin")),
            description: "draining".into(),
        };
        assert!(a.session.send_reconnect_request(&request), "relays announce the capability");
        a.flush().await;
        // The pull connects to the new upstream; before that one plays, the old one stops.
        let (mut b, b_id) = ScriptedUpstream::accept_until_play(&new).await;
        match stops {
            OldUpstreamStops::Unpublishes => {
                a.session.notify_unpublish(a_id);
                a.flush().await;
            }
            OldUpstreamStops::Closes => drop(a),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !matches!(local.try_recv(), Some(PlayerEvent::Unpublished)),
            "the stream ended while the pull was moving"
        );
        b.play(b_id, &[(5000, b"\x17\x01\0\0\0new-key"), (5040, b"\x27\x01\0\0\0new-inter")]).await;
        let key_frame = next_frame(&mut local).await;
        assert_eq!(&key_frame.payload[5..], b"new-key");
        assert!(
            key_frame.timestamp > 40 && key_frame.timestamp < 1000,
            "continues the timeline: {}",
            key_frame.timestamp
        );
        assert_eq!(&next_frame(&mut local).await.payload[5..], b"new-inter");
        assert_eq!(manager.states()[0].reconnects, 1, "{:?}", manager.states());
    }

    #[tokio::test]
    async fn a_pull_moving_keeps_its_players_when_the_old_upstream_unpublishes_first() {
        a_pull_moving_keeps_its_players_when_the_old_upstream(OldUpstreamStops::Unpublishes).await;
    }

    #[tokio::test]
    async fn a_pull_moving_keeps_its_players_when_the_old_upstream_closes_first() {
        a_pull_moving_keeps_its_players_when_the_old_upstream(OldUpstreamStops::Closes).await;
    }
}
