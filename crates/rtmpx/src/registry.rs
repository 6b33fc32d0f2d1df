//! The live sessions, for the admin API and the metrics: who, which variant, what they publish
//! or play, bytes, bitrate, and a way to kick one.
//!
//! The session driver opens a [`SessionGuard`] per connection (dropping it removes the entry and moves
//! its bytes into the metrics), updates it as the session goes, and selects on
//! [`SessionEntry::kicked`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use tokio::sync::Notify;

use crate::error::Error;
use crate::metrics::{HandshakeFailure, LiveSessions, Metrics, Role, Variant};
use crate::sync::lock;

/// Bitrates are measured over this much time (samples every [`SAMPLE_EVERY`]).
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// The live sessions by id; closing one moves its totals into the metrics it owns.
pub struct Registry {
    map: DashMap<u64, Arc<SessionEntry>>,
    metrics: Arc<Metrics>,
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>) -> Registry {
        Registry { map: DashMap::new(), metrics }
    }

    /// The counters sessions add to when they open and close.
    #[cfg(test)]
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The live sessions' numbers for `/metrics`.
    pub fn live(&self) -> LiveSessions {
        let mut live = LiveSessions::default();
        for entry in self.map.iter() {
            let state = entry.state();
            let v = state.variant as usize;
            live.sessions[v][state.role as usize] += 1;
            if state.handshake_done {
                live.bytes_in[v] += entry.bytes_in();
                live.bytes_out[v] += entry.bytes_out();
            }
            live.dropped_frames += entry.dropped_frames();
        }
        live
    }

    pub fn get(&self, id: u64) -> Option<Arc<SessionEntry>> {
        self.map.get(&id).map(|e| e.value().clone())
    }

    /// Every live session, ordered by id (oldest first).
    pub fn entries(&self) -> Vec<Arc<SessionEntry>> {
        let mut all: Vec<_> = self.map.iter().map(|e| e.value().clone()).collect();
        all.sort_by_key(|e| e.id);
        all
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Asks a session to close, saying `why` in its log line; false when there is no such session.
    pub fn kick(&self, id: u64, why: &'static str) -> bool {
        match self.get(id) {
            Some(entry) => {
                entry.kick(why);
                true
            }
            None => false,
        }
    }

    /// Records every session's byte counts for the bitrate window (called every [`SAMPLE_EVERY`]).
    pub fn sample_rates(&self) {
        let now = Instant::now();
        for entry in self.map.iter() {
            let entry = entry.value();
            let sample = (now, entry.bytes_in(), entry.bytes_out());
            let mut window = lock(&entry.rates);
            window.push_back(sample);
            // Keep one sample at least RATE_WINDOW old, so the window always spans RATE_WINDOW.
            while window.len() > 2 && now.duration_since(window[1].0) >= RATE_WINDOW {
                window.pop_front();
            }
        }
    }
}

/// What can change about a session after it opened.
#[derive(Debug, Clone)]
pub struct EntryState {
    pub variant: Variant,
    /// Whether the handshake completed (before that, `variant` may still turn into rtmpe).
    pub handshake_done: bool,
    pub app: Option<String>,
    /// The stream it publishes or plays (as `role` says).
    pub stream: Option<String>,
    pub role: Role,
    /// The client announced Enhanced RTMP in `connect` (a player then gets every track).
    pub enhanced: bool,
}

/// A reconnect request for a session to send to its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconnectOrder {
    /// `None`: the client reconnects to its current tcUrl.
    pub tc_url: Option<String>,
    pub description: String,
}

/// One live session.
pub struct SessionEntry {
    pub id: u64,
    pub peer: SocketAddr,
    pub started: Instant,
    pub started_at: SystemTime,
    state: Mutex<EntryState>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    dropped_frames: AtomicU64,
    kick: Notify,
    kick_reason: Mutex<&'static str>,
    /// Whether the client's `connect` announced Enhanced RTMP's Reconnect capability.
    reconnect_capable: AtomicBool,
    reconnect: Notify,
    /// The reconnect request to send (tcUrl, description), taken by the session's task.
    reconnect_order: Mutex<Option<ReconnectOrder>>,
    /// (when, bytes in, bytes out), oldest first.
    rates: Mutex<VecDeque<(Instant, u64, u64)>>,
}

impl SessionEntry {
    pub fn state(&self) -> EntryState {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, EntryState> {
        lock(&self.state)
    }

    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }

    pub fn dropped_frames(&self) -> u64 {
        self.dropped_frames.load(Ordering::Relaxed)
    }

    pub fn add_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn add_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn set_dropped_frames(&self, total: u64) {
        self.dropped_frames.store(total, Ordering::Relaxed);
    }

    pub fn set_app(&self, app: &str) {
        self.lock().app = Some(app.to_owned());
    }

    pub fn set_enhanced(&self, enhanced: bool) {
        self.lock().enhanced = enhanced;
    }

    pub fn set_role(&self, role: Role, stream: &str) {
        let mut state = self.lock();
        state.role = role;
        state.stream = Some(stream.to_owned());
    }

    /// Asks the session to close (it says goodbye to its client first).
    pub fn kick(&self, why: &'static str) {
        *lock(&self.kick_reason) = why;
        self.kick.notify_one();
    }

    /// Resolves with the reason when someone asks this session to close.
    pub async fn kicked(&self) -> &'static str {
        self.kick.notified().await;
        *lock(&self.kick_reason)
    }

    /// Records whether the client follows reconnect requests (from its `connect`).
    pub fn set_reconnect_capable(&self, capable: bool) {
        self.reconnect_capable.store(capable, Ordering::Relaxed);
    }

    pub fn reconnect_capable(&self) -> bool {
        self.reconnect_capable.load(Ordering::Relaxed)
    }

    /// Asks the session to send its client a reconnect request (a newer order replaces one not
    /// yet sent).
    pub fn request_reconnect(&self, order: ReconnectOrder) {
        *lock(&self.reconnect_order) = Some(order);
        self.reconnect.notify_one();
    }

    /// Resolves with the next reconnect request to send.
    pub async fn reconnect_requested(&self) -> ReconnectOrder {
        loop {
            self.reconnect.notified().await;
            if let Some(order) = lock(&self.reconnect_order).take() {
                return order;
            }
        }
    }

    /// Bits per second in and out over the last [`RATE_WINDOW`] (since the start for younger
    /// sessions).
    pub fn bitrates(&self) -> (u64, u64) {
        let now = Instant::now();
        let (since, base_in, base_out) = lock(&self.rates).front().copied().unwrap_or((self.started, 0, 0));
        let secs = now.duration_since(since).as_secs_f64();
        if secs < 0.5 {
            return (0, 0);
        }
        let rate = |now: u64, then: u64| (now.saturating_sub(then) as f64 * 8.0 / secs) as u64;
        (rate(self.bytes_in(), base_in), rate(self.bytes_out(), base_out))
    }
}

/// A session's place in the registry; dropping it removes the entry and counts its totals.
pub struct SessionGuard {
    registry: Arc<Registry>,
    entry: Arc<SessionEntry>,
}

impl SessionGuard {
    /// Registers session `id`, whose variant is `variant` until the handshake says otherwise.
    pub fn open(registry: &Arc<Registry>, id: u64, peer: SocketAddr, variant: Variant) -> SessionGuard {
        let entry = Arc::new(SessionEntry {
            id,
            peer,
            started: Instant::now(),
            started_at: SystemTime::now(),
            state: Mutex::new(EntryState {
                variant,
                handshake_done: false,
                app: None,
                stream: None,
                role: Role::None,
                enhanced: false,
            }),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            dropped_frames: AtomicU64::new(0),
            kick: Notify::new(),
            kick_reason: Mutex::new("kicked"),
            reconnect_capable: AtomicBool::new(false),
            reconnect: Notify::new(),
            reconnect_order: Mutex::new(None),
            rates: Mutex::new(VecDeque::new()),
        });
        registry.map.insert(id, entry.clone());
        SessionGuard { registry: registry.clone(), entry }
    }

    pub fn entry(&self) -> &SessionEntry {
        &self.entry
    }

    /// The entry itself, for counters updated outside the session's task.
    pub fn shared_entry(&self) -> Arc<SessionEntry> {
        Arc::clone(&self.entry)
    }

    /// The handshake completed as `variant`.
    pub fn handshake_complete(&self, variant: Variant) {
        let mut state = self.entry.lock();
        state.variant = variant;
        state.handshake_done = true;
        drop(state);
        self.registry.metrics.session_opened(variant);
    }

    /// Counts how the session ended (a handshake failure when it never got that far).
    pub fn finish(&self, result: &Result<(), Error>) {
        if !self.entry.lock().handshake_done && !matches!(result, Err(Error::Kicked(_))) {
            self.registry.metrics.handshake_failed(HandshakeFailure::of(result));
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.registry.map.remove(&self.entry.id);
        let variant = self.entry.lock().variant;
        let e = &self.entry;
        self.registry.metrics.session_closed(variant, e.bytes_in(), e.bytes_out(), e.dropped_frames());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::MetricsView;

    fn registry() -> Arc<Registry> {
        Arc::new(Registry::new(Arc::default()))
    }

    fn render(registry: &Registry) -> String {
        crate::metrics::render(&MetricsView::sessions(registry.metrics(), registry.live()))
    }

    #[test]
    fn a_guard_registers_its_session_and_moves_its_bytes_into_the_totals_on_drop() {
        let registry = registry();
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let guard = SessionGuard::open(&registry, 7, peer, Variant::Rtmp);
        guard.entry().add_in(1000);
        guard.entry().add_out(500);
        guard.entry().set_app("live");
        guard.entry().set_role(Role::Player, "s");
        // Before the handshake the bytes count under no variant yet (it may become rtmpe).
        assert!(render(&registry).contains("rtmpx_bytes_in_total{variant=\"rtmpe\"} 0"));
        guard.handshake_complete(Variant::Rtmpe);
        let text = render(&registry);
        assert!(text.contains("rtmpx_sessions{variant=\"rtmpe\",role=\"player\"} 1"), "{text}");
        assert!(text.contains("rtmpx_bytes_in_total{variant=\"rtmpe\"} 1000"), "{text}");
        let state = registry.get(7).unwrap().state();
        assert_eq!((state.app.as_deref(), state.stream.as_deref()), (Some("live"), Some("s")));
        guard.entry().add_out(250);
        drop(guard);
        assert!(registry.get(7).is_none());
        let text = render(&registry);
        assert!(text.contains("rtmpx_sessions{variant=\"rtmpe\",role=\"player\"} 0"), "{text}");
        assert!(text.contains("rtmpx_bytes_out_total{variant=\"rtmpe\"} 750"), "{text}");
        assert!(text.contains("rtmpx_sessions_opened_total{variant=\"rtmpe\"} 1"), "{text}");
    }

    #[test]
    fn sessions_that_never_finish_the_handshake_count_as_failures() {
        let registry = registry();
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        for (id, result) in [
            (1, Err(Error::Timeout("handshake and connect"))),
            (2, Ok(())),
            (3, Err(Error::Kicked("gateway shutting down"))),
        ] {
            let guard = SessionGuard::open(&registry, id, peer, Variant::Rtmp);
            guard.finish(&result);
        }
        let text = render(&registry);
        assert!(text.contains("rtmpx_handshake_failures_total{reason=\"timeout\"} 1"), "{text}");
        assert!(text.contains("rtmpx_handshake_failures_total{reason=\"closed\"} 1"), "{text}");
        assert!(text.contains("rtmpx_handshake_failures_total{reason=\"protocol\"} 0"), "{text}");
    }

    #[tokio::test]
    async fn a_kick_wakes_the_session_with_its_reason() {
        let registry = registry();
        let guard = SessionGuard::open(&registry, 9, "127.0.0.1:1".parse().unwrap(), Variant::Rtmp);
        assert!(registry.kick(9, "kicked through the admin API"));
        assert!(!registry.kick(10, "nobody"));
        let why = tokio::time::timeout(Duration::from_secs(1), guard.entry().kicked()).await.unwrap();
        assert_eq!(why, "kicked through the admin API");
    }

    #[tokio::test]
    async fn a_reconnect_order_reaches_the_session_once() {
        let registry = registry();
        let guard = SessionGuard::open(&registry, 9, "127.0.0.1:1".parse().unwrap(), Variant::Rtmp);
        let entry = guard.entry();
        assert!(!entry.reconnect_capable());
        entry.set_reconnect_capable(true);
        assert!(entry.reconnect_capable());
        let first = ReconnectOrder { tc_url: None, description: "a".into() };
        let second = ReconnectOrder { tc_url: Some("rtmp://b/live".into()), description: "b".into() };
        entry.request_reconnect(first);
        entry.request_reconnect(second.clone());
        let order = tokio::time::timeout(Duration::from_secs(1), entry.reconnect_requested()).await.unwrap();
        assert_eq!(order, second, "the newest order wins");
        let again = tokio::time::timeout(Duration::from_millis(100), entry.reconnect_requested()).await;
        assert!(again.is_err(), "sent once");
    }

    #[test]
    fn bitrates_cover_the_window() {
        let registry = registry();
        let guard = SessionGuard::open(&registry, 1, "127.0.0.1:1".parse().unwrap(), Variant::Rtmp);
        let entry = guard.entry();
        // Samples 12 s, 8 s and 4 s ago: the window starts at the oldest one within reach.
        let now = Instant::now();
        {
            let mut rates = entry.rates.lock().unwrap();
            rates.push_back((now - Duration::from_secs(12), 0, 0));
            rates.push_back((now - Duration::from_secs(8), 0, 0));
            rates.push_back((now - Duration::from_secs(4), 10_000, 0));
        }
        entry.add_in(20_000);
        let (bps_in, bps_out) = entry.bitrates();
        // 20,000 bytes over 12 s.
        assert!((13_000..=13_700).contains(&bps_in), "{bps_in}");
        assert_eq!(bps_out, 0);
        registry.sample_rates();
        // The 12 s old sample stays while the next one (8 s) is younger than the window.
        assert_eq!(entry.rates.lock().unwrap().len(), 4);
    }
}
