//! The HTTP server of the sniffed ports (hyper): RTMPT's `open`, `send`, `idle`, `close` over
//! HTTP/1.1 keep-alive, and the HTTP-FLV / WebSocket-FLV players ([`crate::flv`]).

use std::convert::Infallible;
use std::future::poll_fn;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;
use tracing::{debug, warn};

use super::pipe::{pipe, PipeEnd};
use super::table::{ConnectionId, OpenRefused, SessionId, TableLimits, TunnelIo};
use super::TransportContext;
use crate::budget::Charge;
use crate::config::RtmptSection;
use crate::flv::deadline::WriteDeadline;
use crate::flv::http::{FlvBody, FlvConn};
use crate::session::{self, Origin};
use crate::sync::lock;

/// Bytes buffered in each direction between the tunnel and its gateway session. A player that
/// polls slowly fills the pipe; the session's writes then wait and its router queue drops to
/// the next keyframe, exactly as with a slow TCP reader.
pub const PIPE_CAPACITY: usize = 64 * 1024;
/// Largest response body; the rest waits for the next poll.
pub const RESPONSE_CAP: usize = 256 * 1024;
/// How long an `idle` poll waits for the session to have something to say.
pub const IDLE_WAIT: Duration = Duration::from_millis(20);
/// How long a `send` waits for the session to consume the request and reply.
pub const SEND_WAIT: Duration = Duration::from_secs(2);

const CONTENT_TYPE_FCS: &str = "application/x-fcs";

/// Polling intervals sent as the first body byte: short while data flows, growing while idle.
const POLLING_STEPS: [u8; 6] = [0x01, 0x03, 0x05, 0x09, 0x11, 0x21];

/// Sessions one connection remembers having served, to report its hang-up to them.
const SESSIONS_PER_CONNECTION: usize = 16;

struct Ctx {
    transport: Arc<TransportContext>,
    peer: SocketAddr,
    origin: Origin,
    connection: ConnectionId,
    /// Sessions this connection carried requests for, most recent last.
    served: std::sync::Mutex<Vec<SessionId>>,
    flv: FlvConn,
}

impl Ctx {
    fn served(&self, id: SessionId) {
        let mut served = lock(&self.served);
        served.retain(|&s| s != id);
        if served.len() == SESSIONS_PER_CONNECTION {
            served.remove(0);
        }
        served.push(id);
    }
}

/// Every answer's body: RTMPT's are whole, FLV players' are streams.
type AnyBody = Either<Full<Bytes>, FlvBody>;

/// Serves HTTP requests on one HTTP/1.1 connection until the client closes it or shutdown; a
/// WebSocket-FLV player then goes on on the same task.
pub async fn serve_connection<S>(io: S, peer: SocketAddr, origin: Origin, transport: Arc<TransportContext>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = transport.session.config();
    let request_timeout = config.rtmpt.request_timeout;
    let mut shutdown = transport.session.shutdown_signal();
    let connection = transport.tunnels.connection();
    let write_timed_out = Arc::default();
    let io = WriteDeadline::new(io, config.timeouts.write, Arc::clone(&write_timed_out));
    let flv = FlvConn {
        ctx: transport.session.clone(),
        peer,
        transport: origin.transport,
        write_timed_out,
        upgrade: Default::default(),
    };
    let ctx = Arc::new(Ctx { transport, peer, origin, connection, served: Default::default(), flv });
    let service_ctx = ctx.clone();
    let service = service_fn(move |request| {
        let ctx = service_ctx.clone();
        async move { Ok::<_, Infallible>(handle(request, &ctx).await) }
    });
    let mut builder = http1::Builder::new();
    // librtmp looks for `Content-` case-sensitively: header names go out in Title-Case.
    builder
        .title_case_headers(true)
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(request_timeout)
        .max_header_size(super::sniff::MAX_HEAD)
        .max_buf_size(64 * 1024);
    let connection = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                debug!(%peer, "http connection ended: {e}");
            }
            // librtmp's last request is a `send` (deleteStream) on a connection it then closes.
            let served = std::mem::take(&mut *lock(&ctx.served));
            for id in served {
                ctx.transport.tunnels.hung_up(id, ctx.connection);
            }
        }
        _ = shutdown.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = timeout(request_timeout, connection).await;
        }
    }
    // Run here rather than on a task of its own: the connection keeps its place in the limits.
    let upgraded = lock(&ctx.flv.upgrade).take();
    if let Some(job) = upgraded {
        crate::flv::ws::run(job).await;
    }
}

/// The dispatch point of the HTTP ports: POST is the RTMPT tunnel; GET, HEAD and OPTIONS are
/// HTTP-FLV and WebSocket-FLV players (404 for other paths) where the listener serves them.
async fn handle(request: Request<Incoming>, ctx: &Ctx) -> Response<AnyBody> {
    // ACME HTTP-01 validations (tls.acme): one path prefix, answered apart from RTMPT and FLV.
    if let Some(token) = request.uri().path().strip_prefix(crate::acme::CHALLENGE_PATH) {
        let challenges = ctx.transport.acme.get().map(|acme| acme.challenges());
        return crate::acme::http01_response(challenges, request.method(), token).map(Either::Left);
    }
    if request.method() != Method::POST && ctx.origin.http_flv {
        return crate::flv::http::answer(request, &ctx.flv).await.map(Either::Right);
    }
    handle_rtmpt(request, ctx).await.map(Either::Left)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Send,
    Idle,
    Close,
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Open,
    Session { command: Command, id: SessionId, seq: u64 },
}

/// `None` for anything that is not an RTMPT request naming a well-formed id; the caller answers
/// 404 without saying why. `/fcs/ident2` lands here too: FMS and Red5 (without a configured
/// ident2) answer it with 404, and Flash Player then goes on with `/open/1`.
fn route(method: &Method, path: &str) -> Option<Route> {
    if method != Method::POST {
        return None;
    }
    let mut parts = path.strip_prefix('/')?.split('/');
    let command = parts.next()?;
    let route = match command {
        "open" => {
            parts.next()?.parse::<u32>().ok()?;
            Route::Open
        }
        "send" | "idle" | "close" => {
            let id = SessionId::parse(parts.next()?)?;
            let seq = parts.next()?;
            if seq.is_empty() || seq.len() > 19 || !seq.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let command = match command {
                "send" => Command::Send,
                "idle" => Command::Idle,
                _ => Command::Close,
            };
            Route::Session { command, id, seq: seq.parse().ok()? }
        }
        _ => return None,
    };
    parts.next().is_none().then_some(route)
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn fcs(body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_FCS));
    headers.insert(CONNECTION, HeaderValue::from_static("Keep-Alive"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn handle_rtmpt(request: Request<Incoming>, ctx: &Ctx) -> Response<Full<Bytes>> {
    let config = ctx.transport.session.config();
    let limits = &config.rtmpt;
    let route = route(request.method(), request.uri().path());
    // The body is always read (bounded) so the connection stays usable for the next request.
    // Its memory counts against the client address's budget until the request is answered.
    let mut charge = ctx.transport.session.budgets.charge(ctx.peer.ip());
    let budget = config.limits.max_memory_per_ip;
    let body = match read_body(request, limits, &mut charge, budget).await {
        Ok(body) => body,
        Err(status) => {
            if status == StatusCode::SERVICE_UNAVAILABLE {
                warn!(peer = %ctx.peer, "rtmpt request refused: over limits.max_memory_per_ip");
            }
            return empty(status);
        }
    };
    match route {
        None => empty(StatusCode::NOT_FOUND),
        Some(Route::Open) => open(ctx, limits),
        Some(Route::Session { command, id, seq }) => {
            ctx.transport.session.metrics.rtmpt_poll();
            match timeout(limits.request_timeout, session_request(ctx, command, id, seq, body)).await {
                Ok(response) => response,
                Err(_) => {
                    // The session's byte stream may be cut mid-request: it cannot go on.
                    ctx.transport.tunnels.remove(id);
                    warn!(peer = %ctx.peer, "rtmpt request timed out; session closed");
                    empty(StatusCode::SERVICE_UNAVAILABLE)
                }
            }
        }
    }
}

/// Collects a request body up to `max_request_body`, charging what it holds to `charge`
/// (`SERVICE_UNAVAILABLE` when the address's budget would be passed).
async fn read_body(
    request: Request<Incoming>,
    limits: &RtmptSection,
    charge: &mut Charge,
    budget: usize,
) -> Result<Bytes, StatusCode> {
    let declared = request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limits.max_request_body as u64) {
        return Err(StatusCode::PAYLOAD_TOO_LARGE);
    }
    let mut body = request.into_body();
    let collect = async {
        // One frame (the usual case) is kept as it is; more are joined.
        let mut first: Option<Bytes> = None;
        let mut joined = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(|_| StatusCode::BAD_REQUEST)?.into_data() else { continue };
            let held = first.as_ref().map_or(0, Bytes::len) + joined.len() + data.len();
            if held > limits.max_request_body {
                return Err(StatusCode::PAYLOAD_TOO_LARGE);
            }
            charge.set(held.max(joined.capacity()), budget).map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
            match first.take() {
                None if joined.is_empty() => first = Some(data),
                previous => {
                    if let Some(previous) = previous {
                        joined.extend_from_slice(&previous);
                    }
                    joined.extend_from_slice(&data);
                }
            }
        }
        Ok(first.unwrap_or_else(|| joined.freeze()))
    };
    match timeout(limits.request_timeout, collect).await {
        Err(_) => Err(StatusCode::REQUEST_TIMEOUT),
        Ok(result) => result,
    }
}

fn open(ctx: &Ctx, limits: &RtmptSection) -> Response<Full<Bytes>> {
    // A tunnel session counts like a connection against max_connections(_per_ip).
    let Some(admission) = ctx.transport.admissions.admit(ctx.peer.ip()) else {
        return empty(StatusCode::SERVICE_UNAVAILABLE);
    };
    let (gateway_end, tunnel_end) = pipe(PIPE_CAPACITY);
    let table_limits =
        TableLimits { max_sessions: limits.max_sessions, max_sessions_per_ip: limits.max_sessions_per_ip };
    let session = match ctx.transport.tunnels.open(
        ctx.peer.ip(),
        ctx.origin.transport,
        tunnel_end,
        table_limits,
        ctx.connection,
    ) {
        Ok(session) => session,
        Err(refused) => {
            let why = match refused {
                OpenRefused::TooManySessions => "rtmpt.max_sessions",
                OpenRefused::TooManyForAddress => "rtmpt.max_sessions_per_ip",
            };
            warn!(peer = %ctx.peer, "rtmpt open refused: {why} reached");
            return empty(StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    debug!(peer = %ctx.peer, id = ?session.id, "rtmpt session opened");
    ctx.served(session.id);
    let run = session::run(gateway_end, ctx.peer, ctx.origin, ctx.transport.session.clone());
    tokio::spawn(async move {
        let _admission = admission;
        run.await
    });
    // Exactly one trailing byte: librtmp drops the last byte of this body, ffmpeg trims white space.
    fcs(Bytes::from(format!("{}\n", session.id)))
}

async fn session_request(
    ctx: &Ctx,
    command: Command,
    id: SessionId,
    seq: u64,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let tunnels = &ctx.transport.tunnels;
    let Some(session) = tunnels.touch(id, ctx.origin.transport, ctx.connection) else {
        return empty(StatusCode::NOT_FOUND);
    };
    ctx.served(id);
    let mut io = session.io.lock().await;
    if let Some(expected) = io.next_seq {
        if seq != expected {
            debug!(peer = %ctx.peer, id = ?id, seq, expected, "rtmpt request out of sequence rejected");
            return empty(StatusCode::BAD_REQUEST);
        }
    }
    io.next_seq = Some(seq.saturating_add(1));
    if command == Command::Close {
        drop(io);
        tunnels.remove(id);
        debug!(peer = %ctx.peer, id = ?id, "rtmpt session closed by the client");
        return fcs(Bytes::from_static(&[0]));
    }
    // `idle` carries one filler byte that is not part of the RTMP stream.
    let input = if command == Command::Send { body } else { Bytes::new() };
    let mut out = BytesMut::with_capacity(1 + PIPE_CAPACITY.min(4096));
    out.extend_from_slice(&[0]);
    let ended = exchange(&mut io, &input, &mut out).await;
    if out.len() == 1 && ended {
        drop(io);
        tunnels.remove(id);
        return empty(StatusCode::NOT_FOUND);
    }
    if out.len() > 1 {
        io.empty_polls = 0;
    } else {
        io.empty_polls = io.empty_polls.saturating_add(1);
    }
    out[0] = POLLING_STEPS[(io.empty_polls as usize).min(POLLING_STEPS.len() - 1)];
    if ended {
        // The session said its last words; the next request gets 404.
        drop(io);
        tunnels.remove(id);
    }
    fcs(out.freeze())
}

/// Feeds `input` to the session and collects its output into `out` (after the polling byte):
/// for a `send`, everything the session wrote until it has consumed the bytes and waits for more;
/// for an `idle` poll, the first complete batch that arrives within [`IDLE_WAIT`]. Returns whether
/// the session has ended.
async fn exchange(io: &mut TunnelIo, mut input: &[u8], out: &mut BytesMut) -> bool {
    let pipe = &io.pipe;
    let sent = !input.is_empty();
    // Write the request while taking replies, so neither direction can stall the other.
    while !input.is_empty() {
        let room = room(out);
        tokio::select! {
            written = poll_fn(|cx| pipe.poll_write_to(cx, input)) => match written {
                Ok(n) => input = &input[n..],
                Err(_) => return drain_now(pipe, out),
            },
            read = poll_fn(|cx| pipe.poll_read_into(cx, out, room)), if room > 0 => if read == 0 {
                return true;
            },
        }
    }
    if sent {
        // Parked on read with nothing left: the session has consumed the request and, since it
        // flushes before reading again, written all of its reply.
        if read_until(pipe, out, poll_fn(|cx| pipe.poll_peer_parked(cx)), SEND_WAIT).await {
            return true;
        }
    } else {
        match timeout(IDLE_WAIT, poll_fn(|cx| pipe.poll_read_into(cx, out, room(out)))).await {
            Err(_) => return false,
            Ok(0) => return true,
            Ok(_) => {}
        }
        // Something arrived: take the rest of that batch (the session flushes after each).
        if read_until(pipe, out, poll_fn(|cx| pipe.poll_peer_flushed(cx)), SEND_WAIT).await {
            return true;
        }
    }
    drain_now(pipe, out)
}

/// Room left in the response body.
fn room(out: &BytesMut) -> usize {
    (RESPONSE_CAP + 1).saturating_sub(out.len())
}

/// Reads into `out` until `until` completes, the response is full or `limit` passes. Returns
/// whether the session has ended.
async fn read_until(
    pipe: &PipeEnd,
    out: &mut BytesMut,
    until: impl Future<Output = ()>,
    limit: Duration,
) -> bool {
    tokio::pin!(until);
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    loop {
        let room = room(out);
        if room == 0 {
            return false;
        }
        tokio::select! {
            _ = &mut until => return false,
            _ = &mut deadline => return false,
            read = poll_fn(|cx| pipe.poll_read_into(cx, out, room)) => if read == 0 {
                return true;
            },
        }
    }
}

/// Takes what is buffered now, up to the cap; returns whether the session has ended.
fn drain_now(pipe: &PipeEnd, out: &mut BytesMut) -> bool {
    while room(out) > 0 {
        match pipe.try_read_into(out, room(out)) {
            Some(0) => return true,
            Some(_) => {}
            None => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> SessionId {
        SessionId::parse("00112233445566778899aabbccddeeff").unwrap()
    }

    #[test]
    fn routes() {
        let post = Method::POST;
        assert_eq!(route(&post, "/open/1"), Some(Route::Open));
        let send = route(&post, "/send/00112233445566778899aabbccddeeff/7");
        assert_eq!(send, Some(Route::Session { command: Command::Send, id: id(), seq: 7 }));
        let idle = route(&post, "/idle/00112233445566778899aabbccddeeff/0");
        assert_eq!(idle, Some(Route::Session { command: Command::Idle, id: id(), seq: 0 }));
        let close = route(&post, "/close/00112233445566778899aabbccddeeff/12");
        assert_eq!(close, Some(Route::Session { command: Command::Close, id: id(), seq: 12 }));
        for bad in [
            "/fcs/ident2",
            "/open",
            "/open/x",
            "/send/00112233445566778899aabbccddeeff",
            "/send/00112233445566778899aabbccddeeff/",
            "/send/00112233445566778899aabbccddeeff/1/2",
            "/send/00112233445566778899aabbccddeeff/-1",
            "/send/00112233445566778899aabbccddeeff/+1",
            "/send/00112233445566778899aabbccddeeff/99999999999999999999",
            "/send/short/1",
            "/fetch/00112233445566778899aabbccddeeff/1",
            "send/00112233445566778899aabbccddeeff/1",
            "/",
        ] {
            assert_eq!(route(&post, bad), None, "{bad}");
        }
        assert_eq!(route(&Method::GET, "/open/1"), None);
    }

    async fn echo_session(gateway: PipeEnd) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut gateway = gateway;
        let mut buf = [0u8; 1024];
        loop {
            let n = gateway.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            if &buf[..n] == b"quit" {
                gateway.write_all(b"bye").await.unwrap();
                return;
            }
            // Reply in two writes, then flush, as the session driver does.
            gateway.write_all(&buf[..n]).await.unwrap();
            gateway.write_all(b"!").await.unwrap();
            gateway.flush().await.unwrap();
        }
    }

    fn tunnel_io(pipe: PipeEnd) -> TunnelIo {
        TunnelIo { pipe, next_seq: None, empty_polls: 0 }
    }

    #[tokio::test]
    async fn a_send_returns_the_whole_reply_at_once() {
        let (gateway, tunnel) = pipe(64);
        tokio::spawn(echo_session(gateway));
        let mut io = tunnel_io(tunnel);
        let mut out = BytesMut::from(&[0u8][..]);
        let started = std::time::Instant::now();
        assert!(!exchange(&mut io, b"hello", &mut out).await);
        assert_eq!(&out[..], b"\0hello!");
        assert!(started.elapsed() < Duration::from_millis(500), "no fixed waiting");
        let mut out = BytesMut::from(&[0u8][..]);
        assert!(!exchange(&mut io, &[], &mut out).await, "an idle poll of a quiet session");
        assert_eq!(&out[..], b"\0");
        let mut out = BytesMut::from(&[0u8][..]);
        assert!(exchange(&mut io, b"quit", &mut out).await, "the session ended");
        assert_eq!(&out[..], b"\0bye", "its last words are delivered");
    }

    #[tokio::test]
    async fn a_request_larger_than_the_pipe_does_not_deadlock() {
        let (gateway, tunnel) = pipe(64);
        tokio::spawn(echo_session(gateway));
        let mut io = tunnel_io(tunnel);
        let input: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut out = BytesMut::from(&[0u8][..]);
        let ended = timeout(Duration::from_secs(5), exchange(&mut io, &input, &mut out)).await.unwrap();
        assert!(!ended);
        // The echo answers each read it makes with the bytes and a '!'.
        let echoed: Vec<u8> = out[1..].iter().copied().filter(|&c| c != b'!').collect();
        assert_eq!(echoed, input);
    }

    #[tokio::test]
    async fn responses_stop_at_the_cap() {
        let (mut gateway, tunnel) = pipe(PIPE_CAPACITY);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let chunk = vec![7u8; 16 * 1024];
            loop {
                // Never flushed: the batch never ends, only the cap stops the response.
                if gateway.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let mut io = tunnel_io(tunnel);
        let mut out = BytesMut::from(&[0u8][..]);
        assert!(!exchange(&mut io, &[], &mut out).await);
        assert_eq!(out.len(), RESPONSE_CAP + 1);
        drop(io);
        writer.await.unwrap();
    }

    #[test]
    fn polling_steps_grow() {
        assert!(POLLING_STEPS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(POLLING_STEPS[0], 1);
    }
}
