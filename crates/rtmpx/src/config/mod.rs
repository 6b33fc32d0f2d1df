//! Configuration: TOML with serde, validated before anything starts.
//!
//! `config/rtmpx.toml` documents every key; [`DEFAULT_CONFIG`] is what runs with no file.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod acme;
pub mod cidr;
pub mod cluster;
mod handle;
pub mod relay;

use self::acme::AcmeSection;
use self::cidr::IpNet;
use self::relay::{PullConfig, PushConfig, RelaySection};
use crate::error::{Error, Result};
pub use handle::ConfigHandle;

/// The configuration used when no file is given (also `config/default.toml`).
pub const DEFAULT_CONFIG: &str = include_str!("../../../../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(rename = "listener", default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(rename = "app", default)]
    pub apps: Vec<AppConfig>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub rtmpt: RtmptSection,
    /// HTTP-FLV and WebSocket-FLV playback (`GET /app/stream.flv`) on rtmp/rtmpt ports.
    #[serde(default)]
    pub http_flv: HttpFlvSection,
    #[serde(default)]
    pub tls: TlsSection,
    /// Push/pull relays: upstream TLS trust, backoff, queue bound (see `config/relay.rs`).
    #[serde(default)]
    pub relay: RelaySection,
    /// The admin HTTP listener (metrics, JSON API, status page); off without `[admin]`.
    pub admin: Option<AdminSection>,
    /// Several nodes sharing a stream directory in Redis; off without `[cluster]`.
    pub cluster: Option<cluster::ClusterSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Outgoing chunk size sent to every client after connect.
    pub chunk_size: u32,
    /// Cache the last GOP so players start at once.
    pub gop_cache: bool,
    /// `shutdown_grace_secs`: on SIGTERM/SIGINT, how long publishers and players may go on after
    /// the listeners close.
    #[serde(rename = "shutdown_grace_secs", deserialize_with = "duration::secs")]
    pub shutdown_grace: Duration,
    /// Runtime worker threads; 0 means one per core.
    pub worker_threads: usize,
    /// Players' media may wait this long (ms) for more media to share its write: fewer,
    /// larger writes cost much less CPU per byte. 0 writes every batch at once.
    pub write_coalesce_ms: u64,
    /// When the worker threads are busy (70 % and more), players' media is batched in windows of
    /// this many ms until the load falls under 30 %; 0 never batches on load.
    pub write_coalesce_under_load_ms: u64,
    /// On shutdown, clients that follow Enhanced RTMP reconnect requests are asked to move here
    /// (`rtmp://host:port`, the client's app appended, or `rtmp://host:port/app` as is). Unset:
    /// they are asked to reconnect to the URL they used.
    pub reconnect_url: Option<String>,
}

impl ServerSection {
    /// The tcUrl a client of `app` is asked to reconnect to on shutdown (`None`: its own).
    pub fn reconnect_tc_url(&self, app: &str) -> Option<String> {
        let url = self.reconnect_url.as_deref()?;
        let (_, rest) = url.split_once("://")?;
        let has_app = rest.split_once('/').is_some_and(|(_, path)| !path.trim_matches('/').is_empty());
        Some(if has_app { url.to_owned() } else { format!("{}/{app}", url.trim_end_matches('/')) })
    }
}

/// Checks `server.reconnect_url`: an RTMP URL of any variant with a host.
fn validate_reconnect_url(url: &str) -> std::result::Result<(), String> {
    let fail = |why: &str| Err(format!("server.reconnect_url: {url:?} {why}"));
    let Some((scheme, rest)) = url.split_once("://") else { return fail("is not a URL (scheme://host)") };
    if !["rtmp", "rtmps", "rtmpt", "rtmpts", "rtmpe", "rtmpte"]
        .contains(&scheme.to_ascii_lowercase().as_str())
    {
        return fail("must be rtmp, rtmps, rtmpt, rtmpts, rtmpe or rtmpte");
    }
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    if authority.is_empty()
        || authority.starts_with(':')
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return fail("needs a host and no spaces");
    }
    Ok(())
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            chunk_size: 4096,
            gop_cache: true,
            shutdown_grace: Duration::from_secs(30),
            worker_threads: 0,
            write_coalesce_ms: 0,
            write_coalesce_under_load_ms: 20,
            reconnect_url: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// RTMP; an HTTP request arriving here is served as RTMPT on the same port.
    Rtmp,
    /// RTMPT: RTMP tunnelled in HTTP POST requests.
    Rtmpt,
    /// RTMPS: RTMP inside TLS; an HTTP request inside the TLS is served as RTMPTS.
    Rtmps,
    /// RTMPTS: RTMPT inside TLS (HTTPS).
    Rtmpts,
}

impl Proto {
    pub fn scheme(self) -> &'static str {
        match self {
            Proto::Rtmp => "rtmp",
            Proto::Rtmpt => "rtmpt",
            Proto::Rtmps => "rtmps",
            Proto::Rtmpts => "rtmpts",
        }
    }

    /// Whether connections on this listener start with a TLS handshake.
    pub fn is_tls(self) -> bool {
        matches!(self, Proto::Rtmps | Proto::Rtmpts)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub proto: Proto,
    pub addr: SocketAddr,
    /// RTMPE on this listener: "allow" (default), "require" or "forbid".
    #[serde(default)]
    pub encryption: Encryption,
    /// TLS listeners: certificates chosen by SNI, the first for clients without SNI, or "acme"
    /// (`[tls.acme]`). Empty means the ACME certificate when `[tls.acme]` is set, else the
    /// generated development certificate in `tls.cert_dir`.
    #[serde(default)]
    pub tls: ListenerCerts,
    /// Serve `GET /app/stream.flv` as HTTP-FLV or WebSocket-FLV here (rtmp, rtmpt and, inside
    /// TLS, rtmps and rtmpts listeners).
    #[serde(default = "yes")]
    pub http_flv: bool,
}

/// A listener's `tls`: certificate files, or `"acme"`. Reads as the list of files (empty for ACME).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerCerts {
    pub files: Vec<CertPaths>,
    pub acme: bool,
}

impl std::ops::Deref for ListenerCerts {
    type Target = [CertPaths];
    fn deref(&self) -> &[CertPaths] {
        &self.files
    }
}

impl<'de> Deserialize<'de> for ListenerCerts {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ListenerCerts;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"acme\" or a list of { cert, key }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<ListenerCerts, E> {
                match v {
                    "acme" => Ok(ListenerCerts { files: Vec::new(), acme: true }),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> std::result::Result<ListenerCerts, A::Error> {
                let files = Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
                Ok(ListenerCerts { files, acme: false })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A PEM certificate chain (leaf first) and its PEM private key (PKCS#8, PKCS#1 or SEC1).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Whether a listener accepts RTMPE (the C0 version byte 6/8/9) besides plain RTMP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    #[default]
    Allow,
    Require,
    Forbid,
}

impl Encryption {
    pub fn policy(self) -> rtmpx_core::handshake::EncryptionPolicy {
        use rtmpx_core::handshake::EncryptionPolicy;
        match self {
            Encryption::Allow => EncryptionPolicy::Allow,
            Encryption::Require => EncryptionPolicy::Require,
            Encryption::Forbid => EncryptionPolicy::Forbid,
        }
    }
}

/// One `[[app]]`: what clients may do there, grouped by concern (the TOML keys stay flat).
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "AppFields")]
pub struct AppConfig {
    pub name: String,
    pub publish: bool,
    pub play: bool,
    /// Keys, tokens and address rules (see the auth module and config/rtmpx.toml).
    pub auth: AppAuth,
    /// nginx-rtmp compatible HTTP callbacks (http:// URLs).
    pub callbacks: AppCallbacks,
    pub limits: AppLimits,
    pub relays: AppRelays,
}

/// Who may publish and play in an app.
#[derive(Debug, Clone, Default)]
pub struct AppAuth {
    /// Publishing needs one of these keys: as `?key=K` on the stream name, or as the name itself.
    pub publish_keys: Vec<String>,
    /// Playing needs one of these keys, presented the same way.
    pub play_keys: Vec<String>,
    /// Signed expiring tokens in the stream name's query.
    pub token: Option<TokenConfig>,
    /// Addresses that may publish (any when empty), then those that may not.
    pub allow_publish: Vec<IpNet>,
    pub deny_publish: Vec<IpNet>,
    /// Addresses that may play (any when empty), then those that may not.
    pub allow_play: Vec<IpNet>,
    pub deny_play: Vec<IpNet>,
}

/// The HTTP callbacks of an app and how long each may take.
#[derive(Debug, Clone)]
pub struct AppCallbacks {
    /// Asked before a `connect` is accepted (a 3xx moves the client to another app).
    pub on_connect: Option<String>,
    /// Asked before a publish or a play is allowed (a 3xx renames the stream).
    pub on_publish: Option<String>,
    pub on_play: Option<String>,
    /// Told when a publish or play ends (`on_done` for both).
    pub on_done: Option<String>,
    pub on_publish_done: Option<String>,
    pub on_play_done: Option<String>,
    /// `callback_timeout_ms`: no answer in time denies.
    pub timeout: Duration,
}

/// Per-app overrides of `[limits]`.
#[derive(Debug, Clone, Default)]
pub struct AppLimits {
    /// Overrides `limits.max_publishers_per_app`.
    pub max_publishers: Option<usize>,
    /// Overrides `limits.max_players_per_stream`.
    pub max_players_per_stream: Option<usize>,
}

/// An app's relays.
#[derive(Debug, Clone, Default)]
pub struct AppRelays {
    /// Upstreams every stream published here is republished to.
    pub push: Vec<PushConfig>,
    /// Where streams that are not live here are pulled from when a player asks.
    pub pull: Option<PullConfig>,
}

impl From<AppFields> for AppConfig {
    fn from(f: AppFields) -> AppConfig {
        AppConfig {
            name: f.name,
            publish: f.publish,
            play: f.play,
            auth: AppAuth {
                publish_keys: f.publish_keys,
                play_keys: f.play_keys,
                token: f.token,
                allow_publish: f.allow_publish,
                deny_publish: f.deny_publish,
                allow_play: f.allow_play,
                deny_play: f.deny_play,
            },
            callbacks: AppCallbacks {
                on_connect: f.on_connect,
                on_publish: f.on_publish,
                on_play: f.on_play,
                on_done: f.on_done,
                on_publish_done: f.on_publish_done,
                on_play_done: f.on_play_done,
                timeout: Duration::from_millis(f.callback_timeout_ms),
            },
            limits: AppLimits {
                max_publishers: f.max_publishers,
                max_players_per_stream: f.max_players_per_stream,
            },
            relays: AppRelays { push: f.push, pull: f.pull },
        }
    }
}

/// `[[app]]` as it is written: flat keys (grouped in [`AppConfig`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppFields {
    name: String,
    #[serde(default = "yes")]
    publish: bool,
    #[serde(default = "yes")]
    play: bool,
    // Authorisation (see the auth module and config/rtmpx.toml).
    /// Publishing needs one of these keys: as `?key=K` on the stream name, or as the name itself.
    #[serde(default)]
    publish_keys: Vec<String>,
    /// Playing needs one of these keys, presented the same way.
    #[serde(default)]
    play_keys: Vec<String>,
    /// Signed expiring tokens in the stream name's query.
    #[serde(default)]
    token: Option<TokenConfig>,
    #[serde(default)]
    allow_publish: Vec<IpNet>,
    #[serde(default)]
    deny_publish: Vec<IpNet>,
    #[serde(default)]
    allow_play: Vec<IpNet>,
    #[serde(default)]
    deny_play: Vec<IpNet>,
    /// nginx-rtmp compatible HTTP callbacks (http:// URLs).
    #[serde(default)]
    on_connect: Option<String>,
    #[serde(default)]
    on_publish: Option<String>,
    #[serde(default)]
    on_play: Option<String>,
    #[serde(default)]
    on_done: Option<String>,
    #[serde(default)]
    on_publish_done: Option<String>,
    #[serde(default)]
    on_play_done: Option<String>,
    /// How long a callback may take; no answer in time denies.
    #[serde(default = "default_callback_timeout_ms")]
    callback_timeout_ms: u64,
    /// Overrides `limits.max_publishers_per_app` for this app.
    #[serde(default)]
    max_publishers: Option<usize>,
    /// Overrides `limits.max_players_per_stream` for this app.
    #[serde(default)]
    max_players_per_stream: Option<usize>,
    /// Upstreams every stream published here is republished to.
    #[serde(default)]
    push: Vec<PushConfig>,
    /// Where streams that are not live here are pulled from when a player asks.
    #[serde(default)]
    pull: Option<PullConfig>,
}

/// `[app.token]`: `?expires=UNIX&token=HEX(HMAC-SHA256(secret, "app/stream/expires"))`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub secret: String,
    /// Whether publishing needs a token.
    #[serde(default = "yes")]
    pub publish: bool,
    /// Whether playing needs a token.
    #[serde(default = "yes")]
    pub play: bool,
    /// Refuse tokens that expire further ahead than this (unlimited when unset).
    #[serde(default)]
    pub max_ttl_secs: Option<u64>,
}

fn yes() -> bool {
    true
}

fn default_callback_timeout_ms() -> u64 {
    5000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Largest Set Chunk Size accepted from a client.
    pub max_chunk_size: u32,
    /// Largest RTMP message accepted.
    pub max_message_size: u32,
    /// Most chunk stream ids with state per connection.
    pub max_chunk_streams: usize,
    /// Deepest AMF nesting accepted.
    pub max_amf_depth: usize,
    /// Bytes of media queued for one player before it drops to the next keyframe.
    pub player_queue_bytes: usize,
    /// Streams being published at once in one app.
    pub max_publishers_per_app: usize,
    /// Players of one stream at once.
    pub max_players_per_stream: usize,
    /// File descriptors kept free for the admin listener, callbacks, relays and files: at most
    /// (the process's open-files limit − this) connections are admitted.
    pub reserved_descriptors: usize,
    /// RTMPE handshakes one address (IPv6: one /64) may start per second, in bursts of four
    /// seconds' worth; each costs about 1 ms of a core. 0 is unlimited.
    pub rtmpe_handshakes_per_ip: u32,
    /// Memory one client address may make the gateway hold, all its connections together:
    /// receive buffers and partial messages, caches of the streams it publishes, unfinished
    /// RTMPT request bodies. The connection that would pass it is closed.
    pub max_memory_per_ip: usize,
    /// A published stream's cached GOP (with per-frame overhead) stops being cached past this.
    pub max_gop_bytes: usize,
    /// Largest metadata or sequence header cached for late joiners (larger ones are passed on
    /// live, not cached).
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 20_000,
            max_connections_per_ip: 1_000,
            max_chunk_size: 1 << 24,
            max_message_size: 8 << 20,
            max_chunk_streams: 64,
            max_amf_depth: 32,
            player_queue_bytes: 8 << 20,
            max_publishers_per_app: 1_000,
            max_players_per_stream: 10_000,
            reserved_descriptors: 128,
            rtmpe_handshakes_per_ip: 50,
            max_memory_per_ip: 64 << 20,
            max_gop_bytes: 16 << 20,
            max_header_bytes: 64 << 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// `handshake_secs`: from accept to a completed handshake and connect.
    #[serde(rename = "handshake_secs", deserialize_with = "duration::secs")]
    pub handshake: Duration,
    /// `idle_secs`: a publisher (or a connection that neither plays nor publishes) that sends
    /// nothing.
    #[serde(rename = "idle_secs", deserialize_with = "duration::secs")]
    pub idle: Duration,
    /// `write_secs`: a write that makes no progress (the peer stopped reading).
    #[serde(rename = "write_secs", deserialize_with = "duration::secs")]
    pub write: Duration,
    /// `unpublished_play_secs`: a player (RTMP, or a waiting HTTP-FLV/WebSocket-FLV one) of a
    /// stream that nobody publishes (each one holds a file descriptor); 0 waits for ever, as
    /// nginx-rtmp does.
    #[serde(rename = "unpublished_play_secs", deserialize_with = "duration::secs")]
    pub unpublished_play: Duration,
    /// `partial_message_secs`: a message left incomplete this long closes the connection,
    /// however slowly its bytes trickle in (each partial message is timed from its first chunk).
    #[serde(rename = "partial_message_secs", deserialize_with = "duration::secs")]
    pub partial_message: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            write: Duration::from_secs(30),
            unpublished_play: Duration::from_secs(60),
            partial_message: Duration::from_secs(30),
        }
    }
}

/// Durations in the configuration, written as whole seconds (`*_secs` keys) or milliseconds
/// (`*_ms` keys).
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn secs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_secs)
    }

    pub fn millis<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

/// RTMPT/RTMPTS (HTTP tunnel) sessions, on `rtmpt` listeners and on `rtmp` ports that see HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtmptSection {
    /// `idle_timeout_secs`: a tunnel session with no request for this long is closed (the
    /// client vanished).
    #[serde(rename = "idle_timeout_secs", deserialize_with = "duration::secs")]
    pub idle_timeout: Duration,
    /// Open tunnel sessions in total.
    pub max_sessions: usize,
    /// Open tunnel sessions per client address (the proxy's address behind a reverse proxy).
    pub max_sessions_per_ip: usize,
    /// Largest request body accepted (one `send` of client bytes).
    pub max_request_body: usize,
    /// `request_timeout_secs`: reading one request's headers and body, and waiting between
    /// keep-alive requests.
    #[serde(rename = "request_timeout_secs", deserialize_with = "duration::secs")]
    pub request_timeout: Duration,
    /// `hangup_timeout_ms`: a session whose client closed the connection of its last request
    /// ends when no request arrives on another connection within this long.
    #[serde(rename = "hangup_timeout_ms", deserialize_with = "duration::millis")]
    pub hangup_timeout: Duration,
}

impl Default for RtmptSection {
    fn default() -> Self {
        RtmptSection {
            idle_timeout: Duration::from_secs(30),
            max_sessions: 10_000,
            max_sessions_per_ip: 200,
            max_request_body: 1 << 20,
            request_timeout: Duration::from_secs(30),
            hangup_timeout: Duration::from_millis(2000),
        }
    }
}

/// HTTP-FLV and WebSocket-FLV players (browsers: mpegts.js, flv.js; ffmpeg, curl).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpFlvSection {
    /// `Access-Control-Allow-Origin` of the answers; empty sends none.
    pub allow_origin: String,
    /// A stream that is not live: false answers 404 at once, true waits for its publisher like
    /// an RTMP player.
    pub wait_for_publisher: bool,
}

impl Default for HttpFlvSection {
    fn default() -> Self {
        HttpFlvSection { allow_origin: "*".into(), wait_for_publisher: false }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// Where the self-signed development certificate lives (generated when missing).
    pub cert_dir: PathBuf,
    /// Names the development certificate covers besides localhost, 127.0.0.1 and ::1.
    pub hosts: Vec<String>,
    /// `handshake_timeout_secs`: from TCP accept to a finished TLS handshake.
    #[serde(rename = "handshake_timeout_secs", deserialize_with = "duration::secs")]
    pub handshake_timeout: Duration,
    /// TLS 1.3 session tickets sent after each handshake. 0 keeps librtmp clients (rtmpdump)
    /// working: they fail on any record that carries no application data.
    pub tls13_session_tickets: usize,
    /// Certificates from an ACME CA (`[tls.acme]`, see `config/acme.rs`).
    pub acme: Option<AcmeSection>,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            cert_dir: PathBuf::from("certs"),
            hosts: vec!["localhost".into()],
            handshake_timeout: Duration::from_secs(10),
            tls13_session_tickets: 0,
            acme: None,
        }
    }
}

impl Config {
    /// Parses and validates TOML text; `origin` names it in messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let config: Config = toml::from_str(text)
            .map_err(|e| Error::Config { origin: origin.to_owned(), message: e.to_string() })?;
        config.validate().map_err(|message| Error::Config { origin: origin.to_owned(), message })?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Io { context: format!("reading {}", path.display()), source: e })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    pub fn embedded_default() -> Self {
        Self::from_toml(DEFAULT_CONFIG, "embedded default config")
            .expect("the embedded default config is valid")
    }

    /// Loads `path`, or the embedded default when `None`.
    pub fn load_or_default(path: Option<&PathBuf>) -> Result<Self> {
        match path {
            Some(p) => Self::load(p),
            None => Ok(Self::embedded_default()),
        }
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.listeners.is_empty() {
            return Err(
                "no [[listener]] configured: add one, e.g. proto = \"rtmp\", addr = \"0.0.0.0:1935\"".into(),
            );
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if let Some(j) = self.listeners[..i].iter().position(|o| sockets_clash(o.addr, l.addr)) {
                return Err(format!(
                    "listener[{i}].addr: {} clashes with listener[{j}].addr {} (one port, one listener)",
                    l.addr, self.listeners[j].addr
                ));
            }
            if let Some(admin) = self.admin.as_ref().filter(|a| sockets_clash(a.addr, l.addr)) {
                return Err(format!(
                    "admin.addr: {} clashes with listener[{i}].addr {} (give the admin listener its own port)",
                    admin.addr, l.addr
                ));
            }
            if (!l.tls.is_empty() || l.tls.acme) && !l.proto.is_tls() {
                return Err(format!(
                    "listener[{i}].tls: only TLS listeners (proto = \"rtmps\") take certificates"
                ));
            }
            if l.tls.acme && self.tls.acme.is_none() {
                return Err(format!("listener[{i}].tls: \"acme\" needs a [tls.acme] section"));
            }
        }
        if self.apps.is_empty() {
            return Err("no [[app]] configured: add one, e.g. name = \"live\"".into());
        }
        for (i, app) in self.apps.iter().enumerate() {
            if app.name.is_empty() || app.name.contains(['/', '?', ' ']) {
                return Err(format!(
                    "app[{i}].name: {:?} must be non-empty without '/', '?' or spaces",
                    app.name
                ));
            }
            if self.apps[..i].iter().any(|o| o.name == app.name) {
                return Err(format!("app[{i}].name: {:?} is defined twice", app.name));
            }
            validate_app_auth(i, app)?;
            self::relay::validate_app(i, &app.relays.push, app.relays.pull.as_ref())?;
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        let s = &self.server;
        in_range("server.chunk_size", s.chunk_size, 128..=65_536)?;
        in_range("server.write_coalesce_ms", s.write_coalesce_ms, 0..=1000)?;
        in_range("server.write_coalesce_under_load_ms", s.write_coalesce_under_load_ms, 0..=1000)?;
        in_range("server.worker_threads", s.worker_threads, 0..=1024)?;
        if let Some(url) = &s.reconnect_url {
            validate_reconnect_url(url)?;
        }
        let l = &self.limits;
        in_range("limits.max_chunk_size", l.max_chunk_size, 128..=0x7FFF_FFFF)?;
        in_range("limits.max_message_size", l.max_message_size, 1024..=0xFF_FFFF)?;
        in_range("limits.max_chunk_streams", l.max_chunk_streams, 4..=65_599)?;
        in_range("limits.max_amf_depth", l.max_amf_depth, 2..=256)?;
        if l.player_queue_bytes < 64 * 1024 {
            return Err(format!("limits.player_queue_bytes: {} is below 65536", l.player_queue_bytes));
        }
        if l.max_publishers_per_app == 0 || l.max_players_per_stream == 0 {
            return Err(
                "limits.max_publishers_per_app and limits.max_players_per_stream must be at least 1".into()
            );
        }
        if l.max_connections == 0 || l.max_connections_per_ip == 0 {
            return Err("limits.max_connections and limits.max_connections_per_ip must be at least 1".into());
        }
        if l.max_memory_per_ip < 2 * l.max_message_size as usize {
            return Err(format!(
                "limits.max_memory_per_ip: {} is below twice limits.max_message_size ({})",
                l.max_memory_per_ip, l.max_message_size
            ));
        }
        let t = &self.timeouts;
        if t.handshake.is_zero() || t.idle.is_zero() || t.write.is_zero() || t.partial_message.is_zero() {
            return Err("timeouts.*_secs must be at least 1".into());
        }
        let r = &self.rtmpt;
        if r.idle_timeout.is_zero() || r.request_timeout.is_zero() {
            return Err("rtmpt.idle_timeout_secs and rtmpt.request_timeout_secs must be at least 1".into());
        }
        if r.max_sessions == 0 || r.max_sessions_per_ip == 0 {
            return Err("rtmpt.max_sessions and rtmpt.max_sessions_per_ip must be at least 1".into());
        }
        in_range("rtmpt.hangup_timeout_ms", r.hangup_timeout.as_millis(), 100..=600_000)?;
        in_range("rtmpt.max_request_body", r.max_request_body, 4096..=64 << 20)?;
        self.relay.validate()?;
        let tls = &self.tls;
        if tls.handshake_timeout.is_zero() {
            return Err("tls.handshake_timeout_secs must be at least 1".into());
        }
        if tls.tls13_session_tickets > 16 {
            return Err(format!("tls.tls13_session_tickets: {} is above 16", tls.tls13_session_tickets));
        }
        if let Some(admin) = &self.admin {
            admin.validate()?;
        }
        if let Some(acme) = &tls.acme {
            self::acme::validate(acme, &self.listeners)?;
        }
        if let Some(bad) =
            tls.hosts.iter().find(|h| h.is_empty() || h.contains(|c: char| c.is_whitespace() || c == '/'))
        {
            return Err(format!("tls.hosts: {bad:?} is not a host name"));
        }
        Ok(())
    }

    pub fn app(&self, name: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.name == name)
    }
}

/// Whether two listening sockets cannot both be bound: the same port on the same address, or on
/// an address and the wildcard that covers it (`[::]` takes IPv4 too on Linux). Port 0 asks the
/// system for a free port each time, so it never clashes.
fn sockets_clash(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let (x, y) = (a.ip(), b.ip());
    let covers = |wild: std::net::IpAddr, other: std::net::IpAddr| {
        wild.is_unspecified() && (wild.is_ipv6() || other.is_ipv4() || other.is_unspecified())
    };
    x == y || covers(x, y) || covers(y, x)
}

/// The one range check of the configuration: `key: value is outside a..=b`.
pub(crate) fn in_range<T>(key: &str, value: T, range: RangeInclusive<T>) -> std::result::Result<(), String>
where
    T: PartialOrd + std::fmt::Display,
{
    if range.contains(&value) {
        return Ok(());
    }
    Err(format!("{key}: {value} is outside {}..={}", range.start(), range.end()))
}

fn validate_app_auth(i: usize, app: &AppConfig) -> std::result::Result<(), String> {
    for (field, keys) in [("publish_keys", &app.auth.publish_keys), ("play_keys", &app.auth.play_keys)] {
        if let Some(bad) = keys.iter().find(|k| k.is_empty() || k.contains(['?', '&', '/', ' '])) {
            return Err(format!(
                "app[{i}].{field}: {bad:?} must be non-empty without '?', '&', '/' or spaces"
            ));
        }
    }
    if let Some(token) = &app.auth.token {
        if token.secret.len() < 16 {
            return Err(format!("app[{i}].token.secret: use at least 16 characters"));
        }
    }
    let callbacks = [
        ("on_connect", &app.callbacks.on_connect),
        ("on_publish", &app.callbacks.on_publish),
        ("on_play", &app.callbacks.on_play),
        ("on_done", &app.callbacks.on_done),
        ("on_publish_done", &app.callbacks.on_publish_done),
        ("on_play_done", &app.callbacks.on_play_done),
    ];
    for (field, url) in callbacks {
        let Some(url) = url else { continue };
        let valid = url.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("http://"))
            && url.parse::<hyper::Uri>().is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()));
        if !valid {
            return Err(format!("app[{i}].{field}: {url:?} is not an http:// URL (https is not supported)"));
        }
    }
    in_range(&format!("app[{i}].callback_timeout_ms"), app.callbacks.timeout.as_millis(), 100..=60_000)?;
    if app.limits.max_publishers == Some(0) || app.limits.max_players_per_stream == Some(0) {
        return Err(format!("app[{i}].max_publishers and max_players_per_stream must be at least 1"));
    }
    Ok(())
}

/// `[admin]` in the configuration (served by the binary's `admin` module).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Where the admin HTTP server listens. Keep it on localhost or behind a firewall.
    pub addr: SocketAddr,
    /// When set, every request must carry `Authorization: Bearer <token>` (or `?token=`).
    pub token: Option<String>,
    /// Without a token, the host names (besides IP addresses and `localhost`) requests may carry
    /// in `Host`; any other name is refused (DNS rebinding).
    pub hosts: Vec<String>,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection { addr: SocketAddr::from(([127, 0, 0, 1], 8080)), token: None, hosts: Vec::new() }
    }
}

impl AdminSection {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if let Some(token) = &self.token {
            if token.len() < 8 || !token.chars().all(|c| c.is_ascii_graphic()) {
                return Err("admin.token: use at least 8 printable ASCII characters without spaces".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded_default();
        assert_eq!(c.listeners[0].proto, Proto::Rtmp);
        assert!(c.app("live").is_some());
    }

    #[test]
    fn documented_example_is_valid() {
        Config::from_toml(include_str!("../../../../config/rtmpx.toml"), "rtmpx.toml").unwrap();
    }

    #[test]
    fn reconnect_url_is_checked_and_gets_the_app_when_it_has_none() {
        let base = "[[listener]]\nproto = \"rtmp\"\naddr = \"127.0.0.1:1935\"\n[[app]]\nname = \"live\"\n";
        let with =
            |url: &str| Config::from_toml(&format!("{base}[server]\nreconnect_url = \"{url}\"\n"), "t");
        let c = with("rtmps://next.example.com:4443/").unwrap();
        assert_eq!(c.server.reconnect_tc_url("live").as_deref(), Some("rtmps://next.example.com:4443/live"));
        let c = with("rtmp://10.0.0.2/other").unwrap();
        assert_eq!(c.server.reconnect_tc_url("live").as_deref(), Some("rtmp://10.0.0.2/other"));
        assert_eq!(Config::from_toml(base, "t").unwrap().server.reconnect_tc_url("live"), None);
        for bad in ["next.example.com", "http://h/live", "rtmp:///live", "rtmp://h /live"] {
            let err = with(bad).unwrap_err().to_string();
            assert!(err.contains("server.reconnect_url"), "{bad}: {err}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let err = |text: &str| Config::from_toml(text, "t").unwrap_err().to_string();
        let base = "[[listener]]\nproto = \"rtmp\"\naddr = \"127.0.0.1:1935\"\n[[app]]\nname = \"live\"\n";
        assert!(err(&format!("{base}[server]\nchunk_size = 1\n")).contains("server.chunk_size"));
        assert!(err(&format!("{base}[limits]\nmax_chunk_streams = 1\n")).contains("limits.max_chunk_streams"));
        assert!(err(&format!("{base}[server]\nbogus = 1\n")).contains("bogus"));
        assert!(err("[[app]]\nname = \"live\"\n").contains("no [[listener]]"));
        assert!(err(&base.replace("rtmp\"", "ftp\"")).contains("ftp"));
        assert!(err(&format!("{base}[[listener]]\nproto = \"rtmp\"\naddr = \"127.0.0.1:1935\"\n"))
            .contains("listener[1].addr: 127.0.0.1:1935 clashes with listener[0].addr"));
        let wildcard = format!("{base}[[listener]]\nproto = \"rtmpt\"\naddr = \"0.0.0.0:1935\"\n");
        assert!(err(&wildcard).contains("listener[1].addr"));
        let admin = format!("{base}[admin]\naddr = \"127.0.0.1:1935\"\n");
        assert!(err(&admin).contains("admin.addr: 127.0.0.1:1935 clashes with listener[0].addr"));
        assert!(err(&base.replace("127.0.0.1:1935", "nonsense")).contains("addr"));
        assert!(err(&format!("{base}[rtmpt]\nmax_request_body = 10\n")).contains("rtmpt.max_request_body"));
        assert!(err(&format!("{base}[rtmpt]\nidle_timeout_secs = 0\n")).contains("rtmpt.idle_timeout_secs"));
        let plain_with_cert =
            base.replace("1935\"\n", "1935\"\ntls = [{ cert = \"c.pem\", key = \"k.pem\" }]\n");
        assert!(err(&plain_with_cert).contains("listener[0].tls"));
        assert!(
            err(&format!("{base}[tls]\nhandshake_timeout_secs = 0\n")).contains("tls.handshake_timeout_secs")
        );
        assert!(err(&format!("{base}[tls]\nhosts = [\"a b\"]\n")).contains("tls.hosts"));
    }

    #[test]
    fn sockets_clash_on_one_port_when_one_address_covers_the_other() {
        let clash = |a: &str, b: &str| sockets_clash(a.parse().unwrap(), b.parse().unwrap());
        assert!(clash("127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(clash("0.0.0.0:8080", "127.0.0.1:8080"));
        assert!(clash("127.0.0.1:8080", "0.0.0.0:8080"));
        assert!(clash("[::]:8080", "127.0.0.1:8080"), "a dual-stack wildcard takes IPv4 too");
        assert!(clash("0.0.0.0:8080", "[::]:8080"));
        assert!(!clash("127.0.0.1:8080", "127.0.0.1:8081"));
        assert!(!clash("127.0.0.1:8080", "127.0.0.2:8080"));
        assert!(!clash("0.0.0.0:8080", "[::1]:8080"), "an IPv4 wildcard leaves IPv6 alone");
        assert!(!clash("127.0.0.1:0", "127.0.0.1:0"), "port 0 is a fresh port each time");
    }

    #[test]
    fn relays_parse_and_bad_ones_name_the_key() {
        // The documented example's edge app is commented out (its origin does not exist).
        let documented = include_str!("../../../../config/rtmpx.toml");
        let edge = documented.replace(
            "# [[app]]\n# name = \"edge\"\n# publish = false\n# pull =",
            "[[app]]\nname = \"edge\"\npublish = false\npull =",
        );
        assert_ne!(edge, documented, "the example still shows an edge app");
        let c = Config::from_toml(&edge, "rtmpx.toml").unwrap();
        let edge = c.app("edge").expect("the uncommented edge app");
        assert_eq!(edge.relays.pull.as_ref().map(|p| p.linger), Some(Duration::from_secs(5)));
        assert_eq!(c.relay.backoff_initial, Duration::from_millis(500));
        let base = "[[listener]]\nproto = \"rtmp\"\naddr = \"127.0.0.1:0\"\n[[app]]\nname = \"live\"\n";
        let c = Config::from_toml(
            &format!("{base}push = [{{ url = \"rtmps://h/a\", name = \"rename:{{name}}_hd\", streams = \"c*\" }}]\n"),
            "t",
        )
        .unwrap();
        assert_eq!(c.apps[0].relays.push[0].name.apply("cam"), "cam_hd");
        let err = |text: &str| Config::from_toml(text, "t").unwrap_err().to_string();
        assert!(err(&format!("{base}push = [{{ url = \"ftp://h/a\" }}]\n")).contains("app[0].push[0].url"));
        assert!(
            err(&format!("{base}push = [{{ url = \"rtmp://h/a\", name = \"bogus\" }}]\n")).contains("bogus")
        );
        assert!(err(&format!("{base}pull = {{ url = \"rtmp://h\" }}\n")).contains("app[0].pull.url"));
        assert!(err(&format!("{base}[relay]\nbackoff_initial_ms = 0\n")).contains("relay.backoff"));
        assert!(err(&format!("{base}[relay]\nmax_relay_queue_bytes = 1\n")).contains("max_relay_queue_bytes"));
    }

    #[test]
    fn rtmps_listener_with_certificates() {
        let text = "[[listener]]\nproto = \"rtmps\"\naddr = \"127.0.0.1:443\"\n\
                    tls = [{ cert = \"a.pem\", key = \"a.key\" }, { cert = \"b.pem\", key = \"b.key\" }]\n\
                    [[app]]\nname = \"live\"\n[tls]\ncert_dir = \"/tmp/x\"\nhandshake_timeout_secs = 3\n";
        let c = Config::from_toml(text, "t").unwrap();
        assert_eq!(c.listeners[0].proto, Proto::Rtmps);
        assert_eq!(c.listeners[0].tls.len(), 2);
        assert_eq!(c.listeners[0].tls[1].key, PathBuf::from("b.key"));
        assert_eq!(c.tls.cert_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.tls.handshake_timeout, Duration::from_secs(3));
        assert_eq!(c.tls.hosts, ["localhost"]);
        assert_eq!(c.tls.tls13_session_tickets, 0);
    }

    #[test]
    fn rtmpt_listener_and_section_parse() {
        let text = "[[listener]]\nproto = \"rtmpt\"\naddr = \"127.0.0.1:0\"\n[[app]]\nname = \"live\"\n\
                    [rtmpt]\nidle_timeout_secs = 2\nmax_sessions_per_ip = 5\n";
        let c = Config::from_toml(text, "t").unwrap();
        assert_eq!(c.listeners[0].proto, Proto::Rtmpt);
        assert_eq!(c.rtmpt.idle_timeout, Duration::from_secs(2));
        assert_eq!(c.rtmpt.max_sessions_per_ip, 5);
        assert_eq!(c.rtmpt.max_sessions, 10_000);
        let tls = text
            .replace("\"rtmpt\"", "\"rtmpts\"")
            .replace("0\"\n", "0\"\ntls = [{ cert = \"c\", key = \"k\" }]\n");
        let c = Config::from_toml(&tls, "t").unwrap();
        assert_eq!(c.listeners[0].proto, Proto::Rtmpts);
        assert!(c.listeners[0].proto.is_tls());
        assert_eq!(c.listeners[0].tls.len(), 1);
    }
}
