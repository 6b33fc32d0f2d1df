//! Drives one server-side RTMP session over any byte stream (TCP, TLS, HTTP tunnel) and
//! connects it to the router. Transports only hand over a duplex stream and a variant name.
//!
//! Like hyper's `proto/h1`: [`io`] reads and writes the transport, [`direct`] lets the
//! publisher's task write to caught-up players, [`driver`] is the event loop (one method per
//! event source), [`policy`] decides on connect/publish/play, and [`run`] logs the summary line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rtmpx_core::handshake::EncryptionPolicy;
use rtmpx_router::{Player, Publisher, SessionInfo};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};

mod context;
mod direct;
mod driver;
mod io;
mod policy;
mod seal_pairing;

pub use context::{router_config, NodePull, Relays, SessionContext};
pub(crate) use policy::pull_if_not_live;
/// How the relays' pulls run a fan-out: with the sessions' RTMPE pairing.
pub(crate) use seal_pairing::scope as fan_out_scope;
pub(crate) use seal_pairing::seal_counts as rtmpe_seal_counts;

use crate::auth;
use crate::budget::Charge;
use crate::error::{Error, OverBudget};
use crate::fan_out::FanOut;
use crate::logsafe::Escaped;
use crate::metrics::{Role, Variant};
use crate::registry::SessionGuard;

/// Bytes of player output gathered before one write: fewer, larger writes.
const WRITE_BATCH: usize = 64 * 1024;

/// The transport a session arrived on, before RTMPE is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
    /// RTMPT: the HTTP tunnel over plain TCP.
    Http,
    /// RTMPTS: the HTTP tunnel over TLS.
    HttpTls,
}

impl Transport {
    /// The variant for logs and metrics, given whether the handshake was RTMPE.
    pub fn variant(self, encrypted: bool) -> Variant {
        match (self, encrypted) {
            (Transport::Tcp, false) => Variant::Rtmp,
            (Transport::Tcp, true) => Variant::Rtmpe,
            // RTMPE inside TLS is not a variant of its own.
            (Transport::Tls, _) => Variant::Rtmps,
            (Transport::Http, false) => Variant::Rtmpt,
            (Transport::Http, true) => Variant::Rtmpte,
            // RTMPE inside TLS is not a variant of its own.
            (Transport::HttpTls, _) => Variant::Rtmpts,
        }
    }
}

/// Where a session came from: its transport and what its listener allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub transport: Transport,
    /// Whether RTMPE is allowed, required or forbidden on this listener.
    pub encryption: EncryptionPolicy,
    /// Whether an HTTP `GET` of `/app/stream.flv` plays HTTP-FLV or WebSocket-FLV here.
    pub http_flv: bool,
}

impl From<Transport> for Origin {
    fn from(transport: Transport) -> Self {
        Origin { transport, encryption: EncryptionPolicy::Allow, http_flv: true }
    }
}

struct Playing {
    stream_id: u32,
    player: Player,
    /// Holds the player's limit slot; dropping it sends `on_done` when configured.
    _grant: auth::Grant,
    /// Set when the router refused to bill the player's queue to its address (then emptied).
    queue_refused: Arc<std::sync::OnceLock<OverBudget>>,
}

struct Publishing {
    stream_id: u32,
    publisher: Publisher,
    fan_out: FanOut,
    _grant: auth::Grant,
    /// The stream's entry in the cluster directory (removed on drop).
    _claim: Option<crate::cluster::Claim>,
}

/// Everything about one connection that outlives a single event.
struct Connection {
    id: u64,
    peer: SocketAddr,
    transport: Transport,
    encrypted: bool,
    /// "simple", "digest" or "rtmpe-6>8" (type the client asked for > type in force).
    handshake: String,
    app: Option<String>,
    /// Who connected, as `connect` was accepted (for publish/play decisions and callbacks).
    client: Option<auth::Client>,
    stream_name: Option<String>,
    role: Role,
    publishing: Option<Box<Publishing>>,
    playing: Option<Playing>,
    bytes_in: u64,
    bytes_out: u64,
    /// The session's entry in the admin registry (ops).
    registry: SessionGuard,
    /// What this connection holds (receive buffers, caches of its stream), charged to its address.
    memory: Charge,
}

impl Connection {
    fn variant(&self) -> Variant {
        self.transport.variant(self.encrypted)
    }

    fn info(&self) -> SessionInfo {
        SessionInfo { id: self.id, peer: self.peer.to_string(), variant: self.variant().name() }
    }
}

/// Runs a session to its end and logs one line about it.
pub async fn run<S>(stream: S, peer: SocketAddr, origin: impl Into<Origin>, ctx: Arc<SessionContext>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Origin { transport, encryption, .. } = origin.into();
    let started = Instant::now();
    let id = ctx.next_session_id();
    let mut conn = Connection {
        id,
        peer,
        transport,
        encrypted: false,
        handshake: "-".into(),
        app: None,
        client: None,
        stream_name: None,
        role: Role::None,
        publishing: None,
        playing: None,
        bytes_in: 0,
        bytes_out: 0,
        registry: SessionGuard::open(&ctx.sessions, id, peer, transport.variant(false)),
        memory: ctx.budgets.charge(peer.ip()),
    };
    debug!(session = conn.id, %peer, "session opened");
    let result = driver::drive(stream, &mut conn, encryption, &ctx).await;
    // A peer that resets or vanishes after a normal session is a normal close for logs.
    let result = match result {
        Err(Error::Io { source, .. })
            if matches!(
                source.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ) && conn.role != Role::None =>
        {
            Ok(())
        }
        other => other,
    };
    conn.registry.finish(&result);
    let reason = match &result {
        Ok(()) => "closed".to_string(),
        Err(e) => e.to_string(),
    };
    let app_stream = match (&conn.app, &conn.stream_name) {
        (Some(a), Some(s)) => format!("{a}/{s}"),
        (Some(a), None) => a.clone(),
        _ => "-".into(),
    };
    let line = format!(
        "session {} closed: peer={} variant={} handshake={} stream={} role={} in={}B out={}B duration={:.1}s reason={}",
        conn.id,
        conn.peer,
        conn.variant(),
        conn.handshake,
        Escaped(&app_stream),
        conn.role.name(),
        conn.bytes_in,
        conn.bytes_out,
        started.elapsed().as_secs_f64(),
        Escaped(&reason)
    );
    if result.is_ok() {
        info!("{line}");
    } else {
        warn!("{line}");
    }
}
