//! RTMPT and RTMPTS: RTMP tunnelled in HTTP POST requests.
//!
//! Each tunnel session is a bounded in-memory duplex pipe ([`pipe`]) whose far end goes to
//! [`session::run`] like any TCP connection: the core and the router never learn it is HTTP.
//! [`http`] answers the requests (`/open/1`, `/send`, `/idle`, `/close`), [`table`] holds the
//! sessions by unguessable id with their limits, and [`sniff`] lets an `rtmp` (or `rtmps`) port
//! serve RTMPT too by looking at a connection's first byte.

pub mod http;
pub mod pipe;
pub mod sniff;
pub mod table;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info};

pub use http::serve_connection as serve_http;
pub use table::SessionTable;

use crate::acme::Acme;
use crate::admission::Admissions;
use crate::session::{self, Origin, SessionContext};
use crate::task;

/// What the transports share: the sessions' context, the RTMPT tunnel sessions, the connection
/// limits and the ACME challenges the listeners answer.
pub struct TransportContext {
    pub session: Arc<SessionContext>,
    /// RTMPT/RTMPTS sessions of every listener.
    pub tunnels: SessionTable,
    /// Connection limits (`limits.max_connections*`, the open-files limit).
    pub admissions: Arc<Admissions>,
    /// Certificates from an ACME CA, when `[tls.acme]` is set (its challenges are answered on
    /// the listeners).
    pub acme: OnceLock<Arc<Acme>>,
    /// The listeners' certificate stores (files and the development certificate), for `/metrics`.
    pub certificates: OnceLock<Vec<Arc<crate::tls::CertStore>>>,
}

impl TransportContext {
    pub fn new(session: Arc<SessionContext>) -> TransportContext {
        let config = session.config();
        let tunnel_tag = config.cluster.as_ref().and_then(|c| c.tunnel_tag_byte());
        TransportContext {
            tunnels: SessionTable::with_tag(tunnel_tag),
            admissions: Arc::new(Admissions::new(session.config.clone(), session.metrics.clone())),
            acme: OnceLock::new(),
            certificates: OnceLock::new(),
            session,
        }
    }
}

/// Serves a connection on a port that carries RTMP and RTMPT: RTMP bytes go to the session driver
/// as `rtmp`, an HTTP request to the tunnel as `http`. Used by the `rtmp` listener (transports
/// `Tcp`/`Http`) and, inside TLS, by the `rtmps` listener (`Tls`/`HttpTls`).
pub async fn serve_sniffed<S>(
    stream: S,
    peer: SocketAddr,
    rtmp: Origin,
    http: Origin,
    transport: Arc<TransportContext>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let wait = transport.session.config().timeouts.handshake;
    // An HTTP client has as long for its first request's head as an RTMP client for its first
    // byte. Boxed apart: reading a head takes buffers the rest of the connection does not need.
    let sniffed = task::boxed(move || async move {
        match sniff::sniff(stream).await? {
            Some((sniff::FirstByte::Http, stream)) => {
                Ok(Some((sniff::FirstByte::Http, sniff::read_head(stream).await?)))
            }
            other => Ok(other),
        }
    });
    let stream = match tokio::time::timeout(wait, sniffed).await {
        Ok(Ok(Some(sniffed))) => sniffed,
        Ok(Ok(None)) => return,
        Ok(Err::<_, std::io::Error>(e)) => {
            return debug!(%peer, "connection failed before its first request: {e}")
        }
        Err(_) => return debug!(%peer, "no first byte or request head within the handshake timeout"),
    };
    // Boxed apart: a plain RTMP session's task does not carry the HTTP server's state.
    match stream {
        (sniff::FirstByte::Http, stream) => {
            task::boxed(move || serve_head_read(stream, peer, http, transport)).await
        }
        (sniff::FirstByte::Rtmp, stream) => {
            let ctx = transport.session.clone();
            task::boxed(move || session::run(stream, peer, rtmp, ctx)).await
        }
    }
}

/// Serves a connection of an `rtmpt` listener (or the HTTP inside an `rtmpts` one): its first
/// request head must arrive within the handshake timeout, as on a transport port.
pub async fn serve_tunnel<S>(stream: S, peer: SocketAddr, http: Origin, transport: Arc<TransportContext>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let wait = transport.session.config().timeouts.handshake;
    let head = task::boxed(move || async move {
        match sniff::sniff(stream).await? {
            Some((_, stream)) => sniff::read_head(stream).await.map(Some),
            None => Ok(None),
        }
    });
    match tokio::time::timeout(wait, head).await {
        Ok(Ok(Some(stream))) => task::boxed(move || serve_head_read(stream, peer, http, transport)).await,
        Ok(Ok(None)) => {}
        Ok(Err::<_, std::io::Error>(e)) => debug!(%peer, "connection failed before its first request: {e}"),
        Err(_) => debug!(%peer, "no request head within the handshake timeout"),
    }
}

/// Serves an HTTP connection whose first request head is read: a plain HTTP-FLV `GET` outside
/// hyper ([`crate::flv::direct`]: an idle player then costs no HTTP state), the rest with hyper.
async fn serve_head_read<S>(
    stream: sniff::Prefixed<S>,
    peer: SocketAddr,
    http: Origin,
    transport: Arc<TransportContext>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let player = http.http_flv.then(|| crate::flv::direct::player_request(stream.buffered())).flatten();
    // Each boxed apart: the task of an idle player does not carry hyper's connection.
    match player {
        Some(request) => {
            let (io, ctx) = (stream.into_inner(), transport.session.clone());
            task::boxed(move || crate::flv::direct::serve(request, io, peer, http.transport, ctx)).await
        }
        None => task::boxed(move || serve_http(stream, peer, http, transport)).await,
    }
}

/// Closes tunnel sessions that went without a request for `rtmpt.idle_timeout_secs` (the
/// client vanished without `/close`), and those whose client hung up the connection of its last
/// request and did not come back within `rtmpt.hangup_timeout_ms`. Runs until the task is
/// dropped.
pub async fn reap_idle_sessions(transport: Arc<TransportContext>) {
    loop {
        let (idle, hung_up) = {
            let config = transport.session.config();
            (config.rtmpt.idle_timeout, config.rtmpt.hangup_timeout)
        };
        let period = (idle.min(hung_up) / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        tokio::time::sleep(period).await;
        let expired = transport.tunnels.expire(idle, hung_up);
        if expired.idle > 0 {
            info!(
                expired = expired.idle,
                expired_total = transport.tunnels.expired_total(),
                open = transport.tunnels.len(),
                "rtmpt sessions expired after {}s without a request",
                idle.as_secs()
            );
        }
        if expired.hung_up > 0 {
            info!(
                closed = expired.hung_up,
                open = transport.tunnels.len(),
                "rtmpt sessions closed: their client hung up without /close"
            );
        }
    }
}
