//! Counters of the gateway, rendered in the Prometheus text format by [`render`].
//!
//! Gauges (sessions, streams, players) are read from the session registry and the router at
//! scrape time, so they can never drift; counters are atomics bumped where things happen.
//! Bytes by variant = bytes of closed sessions (added at close) + bytes of live sessions whose
//! variant is known (the RTMPE flag is learnt at the end of the handshake), so each counter only
//! grows.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use rtmpx_router::StreamSnapshot;

use crate::error::Error;

/// How a client reached the gateway: the label of logs and metrics. RTMPE inside TLS is no
/// variant of its own (it counts as rtmps or rtmpts).
/// Its value is its slot in the metric arrays; [`Variant::ALL`] has the order of the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// RTMP over TCP, and with RTMPE (RC4 after a Diffie-Hellman handshake).
    Rtmp,
    Rtmpe,
    /// RTMP in TLS.
    Rtmps,
    /// RTMP tunnelled in HTTP, with RTMPE, and in TLS.
    Rtmpt,
    Rtmpte,
    Rtmpts,
    /// HTTP-FLV players, plain and in TLS.
    HttpFlv,
    HttpsFlv,
    /// WebSocket-FLV players, plain and in TLS.
    WsFlv,
    WssFlv,
}

impl Variant {
    /// Every variant, in the order of the `/metrics` output.
    pub const ALL: [Variant; 10] = [
        Variant::Rtmp,
        Variant::Rtmps,
        Variant::Rtmpt,
        Variant::Rtmpts,
        Variant::Rtmpe,
        Variant::Rtmpte,
        Variant::HttpFlv,
        Variant::HttpsFlv,
        Variant::WsFlv,
        Variant::WssFlv,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Rtmp => "rtmp",
            Variant::Rtmps => "rtmps",
            Variant::Rtmpt => "rtmpt",
            Variant::Rtmpts => "rtmpts",
            Variant::Rtmpe => "rtmpe",
            Variant::Rtmpte => "rtmpte",
            Variant::HttpFlv => "http-flv",
            Variant::HttpsFlv => "https-flv",
            Variant::WsFlv => "ws-flv",
            Variant::WssFlv => "wss-flv",
        }
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

const VARIANTS: usize = Variant::ALL.len();

/// What a session does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Handshaking, or connected without publishing or playing.
    None,
    Publisher,
    Player,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::None, Role::Publisher, Role::Player];

    pub fn name(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Publisher => "publisher",
            Role::Player => "player",
        }
    }
}

/// Why a connection never finished its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// No handshake (and connect) within `timeouts.handshake_secs`.
    Timeout,
    /// The peer closed or reset the connection before finishing it.
    Closed,
    /// Bytes that are no RTMP handshake, or an RTMPE handshake the listener forbids.
    Protocol,
    /// The TLS handshake of an RTMPS connection failed or timed out.
    Tls,
    /// An RTMPE handshake over its address's budget (`limits.rtmpe_handshakes_per_ip`).
    RateLimited,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 5] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::Closed,
        HandshakeFailure::Protocol,
        HandshakeFailure::Tls,
        HandshakeFailure::RateLimited,
    ];

    pub fn name(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Tls => "tls",
            HandshakeFailure::RateLimited => "rate_limited",
        }
    }

    /// The reason of a session that ended with `result` before its handshake completed.
    pub fn of(result: &Result<(), Error>) -> HandshakeFailure {
        match result {
            Ok(()) | Err(Error::Io { .. }) => HandshakeFailure::Closed,
            Err(Error::Timeout(_)) => HandshakeFailure::Timeout,
            Err(Error::TlsHandshake(_)) => HandshakeFailure::Tls,
            Err(Error::RateLimited(_)) => HandshakeFailure::RateLimited,
            Err(_) => HandshakeFailure::Protocol,
        }
    }
}

/// What a client was refused by the configured rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// connect to an application that does not exist (or that the client may not use).
    Connect,
    Publish,
    Play,
    /// A connection refused by `max_connections` or `max_connections_per_ip`.
    ConnectionLimit,
}

impl Denial {
    pub const ALL: [Denial; 4] = [Denial::Connect, Denial::Publish, Denial::Play, Denial::ConnectionLimit];

    pub fn name(self) -> &'static str {
        match self {
            Denial::Connect => "connect",
            Denial::Publish => "publish",
            Denial::Play => "play",
            Denial::ConnectionLimit => "connection_limit",
        }
    }
}

/// The gateway's counters, shared by the registry, the sessions and the transports.
#[derive(Default)]
pub struct Metrics {
    sessions_opened: [AtomicU64; VARIANTS],
    closed_bytes_in: [AtomicU64; VARIANTS],
    closed_bytes_out: [AtomicU64; VARIANTS],
    closed_dropped_frames: AtomicU64,
    handshake_failures: [AtomicU64; HandshakeFailure::ALL.len()],
    denials: [AtomicU64; 4],
    kicks: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    rtmpt_polls: AtomicU64,
}

impl Metrics {
    /// A session's handshake completed and it is now counted as `variant`.
    pub fn session_opened(&self, variant: Variant) {
        self.sessions_opened[variant as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A session ended: its bytes and dropped frames move into the totals.
    pub fn session_closed(&self, variant: Variant, bytes_in: u64, bytes_out: u64, dropped_frames: u64) {
        let i = variant as usize;
        self.closed_bytes_in[i].fetch_add(bytes_in, Ordering::Relaxed);
        self.closed_bytes_out[i].fetch_add(bytes_out, Ordering::Relaxed);
        self.closed_dropped_frames.fetch_add(dropped_frames, Ordering::Relaxed);
    }

    pub fn handshake_failed(&self, reason: HandshakeFailure) {
        self.handshake_failures[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn denied(&self, what: Denial) {
        self.denials[what as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn kicked(&self) {
        self.kicks.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reloaded(&self, ok: bool) {
        let counter = if ok { &self.reloads_ok } else { &self.reloads_failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// One RTMPT request (`/idle`, `/send`, `/close`) for a session.
    pub fn rtmpt_poll(&self) {
        self.rtmpt_polls.fetch_add(1, Ordering::Relaxed);
    }
}

/// Live sessions' numbers by variant, read from the session registry at scrape time.
#[derive(Debug, Default)]
pub struct LiveSessions {
    /// Open sessions by variant and [`Role`].
    pub sessions: [[u64; Role::ALL.len()]; VARIANTS],
    /// Bytes of live sessions whose handshake completed, by variant.
    pub bytes_in: [u64; VARIANTS],
    pub bytes_out: [u64; VARIANTS],
    pub dropped_frames: u64,
}

/// One relay as `/metrics` shows it.
#[derive(Debug)]
pub struct RelaySample {
    pub app: String,
    pub stream: String,
    pub direction: &'static str,
    pub url: String,
    pub state: &'static str,
    pub bytes: u64,
    pub reconnects: u64,
}

/// Everything [`render`] prints, gathered by whoever serves `/metrics`.
pub struct MetricsView<'a> {
    pub counters: &'a Metrics,
    pub live: LiveSessions,
    pub streams: Vec<StreamSnapshot>,
    /// How busy the runtime's workers were (0..=1).
    pub worker_busy: f64,
    pub write_batching: bool,
    /// RTMPE players' fan-out writes: (sealed in a pair, sealed alone).
    pub rtmpe_seals: (u64, u64),
    pub relays: Vec<RelaySample>,
    /// The cluster directory's lines, already in the text format (empty without `[cluster]`).
    pub cluster: String,
    pub rtmpt_sessions: usize,
    pub rtmpt_sessions_expired: u64,
    /// The certificates' expiry and the ACME orders, already in the text format.
    pub tls: String,
}

impl<'a> MetricsView<'a> {
    /// The sessions' numbers alone: no streams, relays, cluster, tunnels or ACME.
    pub fn sessions(counters: &'a Metrics, live: LiveSessions) -> MetricsView<'a> {
        MetricsView {
            counters,
            live,
            streams: Vec::new(),
            worker_busy: 0.0,
            write_batching: false,
            rtmpe_seals: (0, 0),
            relays: Vec::new(),
            cluster: String::new(),
            rtmpt_sessions: 0,
            rtmpt_sessions_expired: 0,
            tls: String::new(),
        }
    }
}

fn relay_labels(r: &RelaySample) -> [(&'static str, &str); 4] {
    [("app", &r.app), ("stream", &r.stream), ("direction", r.direction), ("url", &r.url)]
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Escapes a label value (backslash, quote, newline) for the text format.
fn label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Prometheus text being written (others add their own lines: the cluster directory).
#[derive(Default)]
pub struct Out(String);

impl Out {
    pub fn into_string(self) -> String {
        self.0
    }

    pub fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.sample_of(name, labels, &value);
    }

    /// A sample that may be negative (e.g. seconds to an expiry that passed).
    pub fn sample_signed(&mut self, name: &str, labels: &[(&str, &str)], value: i64) {
        self.sample_of(name, labels, &value);
    }

    fn sample_of(&mut self, name: &str, labels: &[(&str, &str)], value: &dyn std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", label_value(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// The Prometheus text exposition (format 0.0.4) of everything the gateway counts.
pub fn render(view: &MetricsView) -> String {
    let m = view.counters;
    let LiveSessions {
        sessions: live_sessions,
        bytes_in: live_in,
        bytes_out: live_out,
        dropped_frames: live_dropped,
    } = &view.live;
    let streams = &view.streams;

    let mut out = Out(String::with_capacity(8 * 1024));
    out.header("rtmpx_sessions", "gauge", "Open sessions by variant and role.");
    for (v, variant) in Variant::ALL.map(|v| (v as usize, v.name())) {
        for role in Role::ALL {
            out.sample(
                "rtmpx_sessions",
                &[("variant", variant), ("role", role.name())],
                live_sessions[v][role as usize],
            );
        }
    }
    out.header(
        "rtmpx_sessions_opened_total",
        "counter",
        "Sessions that completed their handshake, by variant.",
    );
    for (v, variant) in Variant::ALL.map(|v| (v as usize, v.name())) {
        out.sample("rtmpx_sessions_opened_total", &[("variant", variant)], get(&m.sessions_opened[v]));
    }
    out.header("rtmpx_streams", "gauge", "Streams with a publisher or players.");
    out.sample("rtmpx_streams", &[], streams.len() as u64);
    out.header("rtmpx_publishers", "gauge", "Streams with a live publisher.");
    out.sample("rtmpx_publishers", &[], streams.iter().filter(|s| s.publisher.is_some()).count() as u64);
    out.header("rtmpx_players", "gauge", "Players subscribed to a stream.");
    out.sample("rtmpx_players", &[], streams.iter().map(|s| s.players as u64).sum());
    out.header(
        "rtmpx_worker_busy_percent",
        "gauge",
        "How busy the runtime's workers were over the last 250 ms.",
    );
    out.sample("rtmpx_worker_busy_percent", &[], (view.worker_busy * 100.0).round() as u64);
    out.header(
        "rtmpx_write_batching",
        "gauge",
        "1 while players' media is batched because the workers are busy (write_coalesce_under_load_ms).",
    );
    out.sample("rtmpx_write_batching", &[], u64::from(view.write_batching));
    let (paired, alone) = view.rtmpe_seals;
    out.header(
        "rtmpx_rtmpe_fan_out_writes_total",
        "counter",
        "RTMPE players' fan-out writes, by whether their RC4 ran paired with another player's (faster) or alone.",
    );
    out.sample("rtmpx_rtmpe_fan_out_writes_total", &[("sealed", "paired")], paired);
    out.sample("rtmpx_rtmpe_fan_out_writes_total", &[("sealed", "alone")], alone);
    out.header(
        "rtmpx_bytes_in_total",
        "counter",
        "Bytes received from clients (after TLS/HTTP), by variant.",
    );
    for (v, variant) in Variant::ALL.map(|v| (v as usize, v.name())) {
        out.sample("rtmpx_bytes_in_total", &[("variant", variant)], get(&m.closed_bytes_in[v]) + live_in[v]);
    }
    out.header("rtmpx_bytes_out_total", "counter", "Bytes sent to clients (before TLS/HTTP), by variant.");
    for (v, variant) in Variant::ALL.map(|v| (v as usize, v.name())) {
        out.sample(
            "rtmpx_bytes_out_total",
            &[("variant", variant)],
            get(&m.closed_bytes_out[v]) + live_out[v],
        );
    }
    out.header(
        "rtmpx_handshake_failures_total",
        "counter",
        "Connections that never finished the handshake, by reason.",
    );
    for reason in HandshakeFailure::ALL {
        out.sample(
            "rtmpx_handshake_failures_total",
            &[("reason", reason.name())],
            get(&m.handshake_failures[reason as usize]),
        );
    }
    out.header(
        "rtmpx_auth_denials_total",
        "counter",
        "Requests refused by the configured rules, by what was asked.",
    );
    for what in Denial::ALL {
        out.sample("rtmpx_auth_denials_total", &[("action", what.name())], get(&m.denials[what as usize]));
    }
    out.header("rtmpx_dropped_frames_total", "counter", "Frames skipped for players that could not keep up.");
    out.sample("rtmpx_dropped_frames_total", &[], get(&m.closed_dropped_frames) + live_dropped);
    out.header("rtmpx_stream_dropped_frames", "gauge", "Frames skipped for slow players of each stream.");
    for s in streams {
        out.sample(
            "rtmpx_stream_dropped_frames",
            &[("app", &s.key.app), ("stream", &s.key.name)],
            s.dropped_frames,
        );
    }
    out.header("rtmpx_stream_players", "gauge", "Players of each stream.");
    for s in streams {
        out.sample("rtmpx_stream_players", &[("app", &s.key.app), ("stream", &s.key.name)], s.players as u64);
    }
    out.header(
        "rtmpx_stream_legacy_players",
        "gauge",
        "Players of each stream without Enhanced RTMP support.",
    );
    for s in streams {
        let labels = [("app", s.key.app.as_str()), ("stream", s.key.name.as_str())];
        out.sample("rtmpx_stream_legacy_players", &labels, s.legacy_players as u64);
    }
    out.header(
        "rtmpx_stream_track",
        "gauge",
        "The audio and video tracks of each stream, by id and codec (always 1).",
    );
    for s in streams {
        for t in &s.tracks {
            let id = t.id.to_string();
            let labels = [
                ("app", s.key.app.as_str()),
                ("stream", s.key.name.as_str()),
                ("kind", t.kind.name()),
                ("track", id.as_str()),
                ("codec", t.codec),
            ];
            out.sample("rtmpx_stream_track", &labels, 1);
        }
    }
    out.header("rtmpx_stream_bytes_in", "gauge", "Media payload bytes from each stream's current publisher.");
    for s in streams {
        out.sample("rtmpx_stream_bytes_in", &[("app", &s.key.app), ("stream", &s.key.name)], s.bytes_in);
    }
    let relays = &view.relays;
    out.header("rtmpx_relay_state", "gauge", "Relays by state (1 for the current state).");
    for r in relays {
        let labels = relay_labels(r);
        out.sample("rtmpx_relay_state", &[&labels[..], &[("state", r.state)]].concat(), 1);
    }
    out.header("rtmpx_relay_bytes_total", "counter", "Bytes a relay sent (push) or received (pull).");
    for r in relays {
        out.sample("rtmpx_relay_bytes_total", &relay_labels(r), r.bytes);
    }
    out.header("rtmpx_relay_reconnects_total", "counter", "Connections a relay made after its first.");
    for r in relays {
        out.sample("rtmpx_relay_reconnects_total", &relay_labels(r), r.reconnects);
    }
    out.0.push_str(&view.cluster);
    out.header("rtmpx_rtmpt_sessions", "gauge", "Open RTMPT and RTMPTS tunnel sessions.");
    out.sample("rtmpx_rtmpt_sessions", &[], view.rtmpt_sessions as u64);
    out.header(
        "rtmpx_rtmpt_sessions_expired_total",
        "counter",
        "Tunnel sessions closed for going without requests.",
    );
    out.sample("rtmpx_rtmpt_sessions_expired_total", &[], view.rtmpt_sessions_expired);
    out.header("rtmpx_rtmpt_polls_total", "counter", "RTMPT requests (send, idle, close) for open sessions.");
    out.sample("rtmpx_rtmpt_polls_total", &[], get(&m.rtmpt_polls));
    out.header("rtmpx_admin_kicks_total", "counter", "Sessions closed through the admin API.");
    out.sample("rtmpx_admin_kicks_total", &[], get(&m.kicks));
    out.header("rtmpx_config_reloads_total", "counter", "Configuration reloads by result.");
    out.sample("rtmpx_config_reloads_total", &[("result", "ok")], get(&m.reloads_ok));
    out.sample("rtmpx_config_reloads_total", &[("result", "rejected")], get(&m.reloads_failed));
    out.0.push_str(&view.tls);
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_have_a_slot_and_a_name_each() {
        let slots: std::collections::BTreeSet<_> = Variant::ALL.iter().map(|&v| v as usize).collect();
        assert_eq!(slots, (0..VARIANTS).collect(), "every slot once");
        let names: std::collections::BTreeSet<_> = Variant::ALL.iter().map(|v| v.name()).collect();
        assert_eq!(names.len(), VARIANTS);
        assert_eq!(Variant::WssFlv.to_string(), "wss-flv");
    }

    #[test]
    fn handshake_failures_are_classified() {
        use HandshakeFailure as H;
        assert_eq!(H::of(&Err(Error::Timeout("handshake and connect"))), H::Timeout);
        assert_eq!(H::of(&Ok(())), H::Closed);
        assert_eq!(H::of(&Err(Error::Rtmp(rtmpx_core::Error::Handshake("bad version")))), H::Protocol);
        assert_eq!(H::of(&Err(Error::TlsHandshake("x".into()))), H::Tls);
    }

    #[test]
    fn samples_escape_label_values() {
        let mut out = Out(String::new());
        out.sample("m", &[("a", "x\"y\\z\n")], 7);
        out.sample("n", &[], 0);
        assert_eq!(out.0, "m{a=\"x\\\"y\\\\z\\n\"} 7\nn 0\n");
    }
}
