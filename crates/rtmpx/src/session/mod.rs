//! Drives one server-side RTMP session over any byte stream (TCP, TLS, HTTP tunnel) and
//! connects it to the router. Transports only hand over a duplex stream and a variant name.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Waker};
use std::time::Instant;

use bytes::{Buf, Bytes};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rtmpx_core::handshake::EncryptionPolicy;
use rtmpx_core::session::{
    MediaKind, PublishMode, ReconnectRequest, ServerConfig, ServerEvent, ServerSession, StatusLevel,
    CAPS_EX_RECONNECT,
};
use rtmpx_router::{
    DirectSend, DirectSink, Frame, FrameKind, PlayOptions, Player, PlayerEvent, PlayerWaker, Publisher,
    RouterError, SessionInfo, StreamKey,
};
use std::cell::RefCell;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::timeout;
use tracing::{debug, info, warn};

mod context;
mod seal_pairing;

pub use context::{router_config, SessionContext};
pub(crate) use seal_pairing::seal_counts as rtmpe_seal_counts;

use crate::auth;
use crate::budget::Charge;
use crate::error::{Error, Result};
use crate::fan_out::{sleep_until_opt, Batching, FanOut};
use crate::logsafe::Escaped;
use crate::metrics::{Denial, Role};
use crate::registry::{SessionEntry, SessionGuard};

/// Bytes of player output gathered before one write: fewer, larger writes.
const WRITE_BATCH: usize = 64 * 1024;
const READ_BUFFER: usize = 16 * 1024;
/// Pieces handed to one vectored write (Linux takes up to 1024 iovecs; 64 cover a 64 KiB batch
/// of 4 KiB chunks with their headers).
const MAX_IOVECS: usize = 64;
/// How long after a reconnect request the client's new publish may take its stream over.
const TAKEOVER_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Longest stretch a publisher's task fans out before it yields to the worker's other sessions.
const FAN_OUT_SLICE: std::time::Duration = std::time::Duration::from_millis(5);

thread_local! {
    /// Reads land here and go straight into the session, so an idle connection holds no read
    /// buffer of its own (memory per idle player is a target).
    static READ_SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_BUFFER].into_boxed_slice());
}

/// Reads what the stream has into the thread's scratch buffer and feeds it to the session.
/// Returns the bytes read (0 at end of stream) and the session's verdict on them. On the first
/// read, `admit_first` sees the first byte (C0) before the session does any work for it.
fn poll_read_into(
    out: &SessionIo,
    cx: &mut Context<'_>,
    admit_first: Option<&dyn Fn(u8) -> Result<()>>,
) -> Poll<std::io::Result<(usize, Result<()>)>> {
    READ_SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let mut buf = ReadBuf::new(&mut scratch[..]);
        let mut out = out.lock();
        let out = &mut *out;
        match Pin::new(&mut out.stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                let data = buf.filled();
                let verdict = match (data.first(), admit_first) {
                    (None, _) => Ok(()),
                    (Some(&c0), Some(admit)) => {
                        admit(c0).and_then(|()| out.session.handle_input(data).map_err(Error::from))
                    }
                    (Some(_), None) => out.session.handle_input(data).map_err(Error::from),
                };
                Poll::Ready(Ok((data.len(), verdict)))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
}

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
    /// The variant name for logs and metrics, given whether the handshake was RTMPE.
    pub fn variant(self, encrypted: bool) -> &'static str {
        match (self, encrypted) {
            (Transport::Tcp, false) => "rtmp",
            (Transport::Tcp, true) => "rtmpe",
            // RTMPE inside TLS is not a variant of its own.
            (Transport::Tls, _) => "rtmps",
            (Transport::Http, false) => "rtmpt",
            (Transport::Http, true) => "rtmpte",
            // RTMPE inside TLS is not a variant of its own.
            (Transport::HttpTls, _) => "rtmpts",
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
    /// Since when the stream has had no publisher (`None` while it is live).
    unpublished_since: Option<tokio::time::Instant>,
    /// Holds the player's limit slot; dropping it sends `on_done` when configured.
    _grant: auth::Grant,
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
    role: &'static str,
    publishing: Option<Publishing>,
    playing: Option<Playing>,
    bytes_in: u64,
    bytes_out: u64,
    /// The session's entry in the admin registry (ops).
    registry: SessionGuard,
    /// What this connection holds (receive buffers, caches of its stream), charged to its address.
    memory: Charge,
}

impl Connection {
    fn variant(&self) -> &'static str {
        self.transport.variant(self.encrypted)
    }

    fn info(&self) -> SessionInfo {
        SessionInfo { id: self.id, peer: self.peer.to_string(), variant: self.variant() }
    }
}

fn server_config(ctx: &SessionContext, encryption: EncryptionPolicy) -> ServerConfig {
    let config = ctx.config();
    let mut sc = ServerConfig { chunk_size: config.server.chunk_size, encryption, ..ServerConfig::default() };
    sc.chunk_limits.max_chunk_size = config.limits.max_chunk_size;
    sc.chunk_limits.max_message_size = config.limits.max_message_size;
    sc.chunk_limits.max_chunk_streams = config.limits.max_chunk_streams;
    sc.chunk_limits.max_buffered_bytes = (config.limits.max_message_size as usize).saturating_mul(2);
    sc.amf_limits.max_depth = config.limits.max_amf_depth;
    sc
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
        role: "none",
        publishing: None,
        playing: None,
        bytes_in: 0,
        bytes_out: 0,
        registry: SessionGuard::open(&ctx.sessions, id, peer, transport.variant(false)),
        memory: ctx.budgets.charge(peer.ip()),
    };
    debug!(session = conn.id, %peer, "session opened");
    let result = drive(stream, &mut conn, encryption, &ctx).await;
    // A peer that resets or vanishes after a normal session is a normal close for logs.
    let result = match result {
        Err(Error::Io { source, .. })
            if matches!(
                source.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ) && conn.role != "none" =>
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
        conn.role,
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

/// A duplex byte stream a session runs over (TCP, TLS, an HTTP tunnel's pipe).
trait Transported: AsyncRead + AsyncWrite + Send + Unpin {}

impl<S: AsyncRead + AsyncWrite + Send + Unpin> Transported for S {}

/// A session's core state and its transport, shared by the session's task and, while the session
/// plays and is caught up, by the publisher's task ([`DirectPlayer`]). Locked briefly and never
/// across an await.
struct SessionIo {
    state: Mutex<IoState>,
}

struct IoState {
    session: ServerSession,
    /// The transport, read by the task and written by whoever holds the lock (one lock for both
    /// directions: cheaper than splitting it, and reads happen only in the task anyway).
    stream: Box<dyn Transported>,
    /// Output pieces not yet written (chunk headers and slices of shared payloads).
    pending: VecDeque<Bytes>,
    /// Whether media payloads go out uncopied (the writer takes vectored writes).
    shared_payloads: bool,
    /// Set while a write waits for the socket (or failed): only the task writes then, with its
    /// own waker, and the publisher queues frames instead.
    task_flush: bool,
    /// A direct write's error, for the task to report.
    failed: Option<std::io::Error>,
    bytes_out: u64,
    entry: Arc<SessionEntry>,
}

impl SessionIo {
    fn lock(&self) -> MutexGuard<'_, IoState> {
        // Nothing in IoState is left half-updated by a panic; keep serving.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl IoState {
    /// Moves what the session produced into `pending`, counting it.
    fn collect(&mut self) {
        while let Some(piece) = self.session.poll_transmit() {
            self.bytes_out += piece.len() as u64;
            self.entry.add_out(piece.len());
            self.pending.push_back(piece);
        }
    }

    /// Writes everything pending, then flushes the writer (TLS buffers records).
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Err(e));
        }
        self.collect();
        ready!(poll_write_pieces(&mut self.stream, &mut self.pending, cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    /// Whether a task other than the session's may write now: the session's own task is not
    /// writing (after a full socket or an error only it writes, with its own waker).
    fn publisher_may_write(&self) -> bool {
        !self.task_flush && self.pending.is_empty()
    }

    /// Writes from a task that is not the session's: on Pending (socket full) or an error the
    /// session's task is woken to wait with its own waker and report.
    fn write_now(&mut self) -> DirectSend {
        match self.poll_write_out(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => DirectSend::Sent,
            Poll::Ready(Err(e)) => {
                self.failed = Some(e);
                self.task_flush = true;
                DirectSend::SentWakeTask
            }
            Poll::Pending => {
                self.task_flush = true;
                DirectSend::SentWakeTask
            }
        }
    }

    fn encode(&mut self, stream_id: u32, frame: &Frame, timestamp: u32) {
        let kind = match frame.kind {
            FrameKind::Audio => MediaKind::Audio,
            FrameKind::Video => MediaKind::Video,
            FrameKind::Metadata => MediaKind::Data,
        };
        if self.shared_payloads {
            self.session.send_media_shared(stream_id, kind, timestamp, &frame.payload);
        } else {
            self.session.send_media(stream_id, kind, timestamp, &frame.payload);
        }
    }
}

/// Lets the publisher's task encode and write a frame for a caught-up player at once (no queue
/// entry, no wake-up of the player's task), as long as the player's socket takes it.
struct DirectPlayer {
    io: Arc<SessionIo>,
    /// The session's stream the player plays on.
    stream_id: u32,
    /// Wakes the player's task when a write finished after `try_send` returned (RTMPE pairing).
    waker: PlayerWaker,
    /// While batching, frames are only encoded and the publisher's task writes them at the end of
    /// its window ([`FanOut::flush`]).
    batching: Batching,
}

impl DirectSink for DirectPlayer {
    fn try_send(&self, frame: &Frame, timestamp: u32) -> DirectSend {
        // Busy (the player's task is reading or delivering): queue it, never wait.
        let Ok(mut io) = self.io.state.try_lock() else { return DirectSend::Refused };
        if !io.publisher_may_write() {
            return DirectSend::Refused;
        }
        io.encode(self.stream_id, frame, timestamp);
        if !self.batching.window().is_zero() && io.session.pending_output() < WRITE_BATCH {
            // Written by the publisher's next flush_direct.
            return DirectSend::Sent;
        }
        self.write(&mut io)
    }

    fn flush(&self) -> DirectSend {
        let Ok(mut io) = self.io.state.try_lock() else { return DirectSend::Refused };
        if !io.publisher_may_write() {
            // The task is writing; it takes everything the session holds.
            return DirectSend::Refused;
        }
        if io.session.pending_output() == 0 {
            return DirectSend::Sent;
        }
        self.write(&mut io)
    }
}

impl DirectPlayer {
    /// Writes what the session holds; RTMPE output waits to be encrypted with another player's.
    fn write(&self, io: &mut IoState) -> DirectSend {
        if io.session.is_encrypted() {
            let me = || seal_pairing::Parked { io: Arc::clone(&self.io), waker: self.waker.clone() };
            if let Some(sent) = seal_pairing::offer(io, me) {
                return sent;
            }
        }
        io.write_now()
    }
}

async fn drive<S>(
    stream: S,
    conn: &mut Connection,
    encryption: EncryptionPolicy,
    ctx: &SessionContext,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let session = ServerSession::new(server_config(ctx, encryption), &mut StdRng::from_entropy());
    // Streams that take vectored writes get media payloads uncopied (one buffer for all players).
    let shared_payloads = stream.is_write_vectored();
    let out = Arc::new(SessionIo {
        state: Mutex::new(IoState {
            session,
            stream: Box::new(stream),
            pending: VecDeque::new(),
            shared_payloads,
            task_flush: false,
            failed: None,
            bytes_out: 0,
            entry: conn.registry.shared_entry(),
        }),
    });
    let result = drive_io(&out, conn, ctx).await;
    // The router lets go of the session when the player leaves; the session is over either way.
    if let Some(p) = &conn.playing {
        p.player.set_direct_sink(None);
    }
    conn.bytes_out = out.lock().bytes_out;
    result
}

async fn drive_io(out: &Arc<SessionIo>, conn: &mut Connection, ctx: &SessionContext) -> Result<()> {
    // One snapshot for the connection's own settings (limits and timeouts apply as it started).
    let config = ctx.config();
    let timeouts = config.timeouts.clone();
    let memory_limit = config.limits.max_memory_per_ip;
    // What is pending of an incomplete message (ServerSession::incomplete_input) and since when:
    // it must complete in `partial_message_secs`, however slowly its bytes trickle in.
    let mut partial: Option<((u64, u64), tokio::time::Instant)> = None;
    let mut shutdown = ctx.shutdown_signal();
    let handshake_deadline = tokio::time::Instant::now() + timeouts.handshake();
    let mut connected = false;
    let mut last_read = tokio::time::Instant::now();
    // Set after input from a connection that publishes nothing: once its answers are written,
    // its buffers go back (an idle player should cost little memory).
    let mut release_after_flush = false;
    // Write coalescing for a player behind its queue: media held back until this instant (or
    // WRITE_BATCH bytes), the same window the publisher's direct writes use.
    let batching = Batching::new(&config.server, ctx.load.clone());
    let mut hold_until: Option<tokio::time::Instant> = None;
    let peer_ip = conn.peer.ip();
    let rtmpe_per_ip = config.limits.rtmpe_handshakes_per_ip;
    // A reload replaces the configuration; this connection keeps only what it copied.
    drop(config);
    // An RTMPE handshake costs two modular exponentiations before anything is authorised.
    let admit_c0 = |c0: u8| {
        let rtmpe = rtmpx_core::handshake::HandshakeVersion::from_byte(c0).is_some_and(|v| v.is_encrypted());
        if rtmpe && !ctx.rtmpe_budget.take(peer_ip, rtmpe_per_ip) {
            return Err(Error::RateLimited(
                "RTMPE handshakes from this address (limits.rtmpe_handshakes_per_ip)",
            ));
        }
        Ok(())
    };

    loop {
        if hold_until.is_none() {
            flush(out, timeouts.write()).await?;
        }
        {
            let mut st = out.lock();
            if st.session.is_closed() {
                return Ok(());
            }
            if std::mem::take(&mut release_after_flush) && st.pending.is_empty() {
                st.session.release_buffers();
                st.pending = VecDeque::new();
            }
        }
        let deadline = if !connected {
            Some((handshake_deadline, "handshake and connect"))
        } else if let (Some(playing), None) = (&conn.playing, &conn.publishing) {
            // Players may send nothing for a long time; their writes are bounded instead. A stream
            // nobody publishes holds them only so long (each one holds a file descriptor).
            let limit = timeouts.unpublished_play();
            playing
                .unpublished_since
                .filter(|_| !limit.is_zero())
                .map(|since| (since + limit, "the stream was not published"))
        } else {
            Some((last_read + timeouts.idle(), "no data from the client"))
        };
        let first_read = conn.bytes_in == 0;
        tokio::select! {
            _ = shutdown.changed() => {
                say_goodbye(&mut out.lock().session, conn);
                let _ = flush(out, timeouts.write()).await;
                return Ok(());
            }
            read = poll_fn(|cx| poll_read_into(out, cx, first_read.then_some(&admit_c0 as &dyn Fn(u8) -> Result<()>))) => {
                // Answers go out at once, with any media held back.
                hold_until = None;
                let (n, verdict) = read.map_err(Error::io("reading from the client"))?;
                if n == 0 {
                    return Ok(());
                }
                conn.bytes_in += n as u64;
                conn.registry.entry().add_in(n);
                last_read = tokio::time::Instant::now();
                release_after_flush = conn.publishing.is_none();
                let mut outcome = verdict;
                let mut slice_started = std::time::Instant::now();
                loop {
                    let event = out.lock().session.poll_event();
                    let Some(event) = event else { break };
                    // Connect/publish/play decisions may wait for an HTTP callback; meanwhile nothing
                    // is read, and the session holds what the client pipelined.
                    if let Err(e) = handle_event(event, out, conn, ctx, &mut connected).await {
                        outcome = Err(e);
                        break;
                    }
                    // One read may hold hundreds of small messages, each fanned out to every
                    // player outside tokio's budget: let the worker's other sessions run now and then.
                    if slice_started.elapsed() >= FAN_OUT_SLICE {
                        tokio::task::yield_now().await;
                        slice_started = std::time::Instant::now();
                    }
                }
                if let Err(e) = outcome {
                    // Whatever the session produced before the error (e.g. a reject) still goes out.
                    let _ = flush(out, timeouts.write()).await;
                    return Err(e);
                }
                let (held_input, oldest) = {
                    let st = out.lock();
                    (st.session.held_input_bytes(), st.session.incomplete_input())
                };
                partial = match (oldest, partial) {
                    (Some(marker), Some((seen, since))) if marker == seen => Some((seen, since)),
                    (Some(marker), _) => Some((marker, tokio::time::Instant::now())),
                    (None, _) => None,
                };
                let held = held_input + conn.publishing.as_ref().map_or(0, |p| p.publisher.cached_bytes());
                if let Err(over) = conn.memory.set(held, memory_limit) {
                    warn!(session = conn.id, peer = %conn.peer, "{over}");
                    return Err(over.into());
                }
            }
            _ = sleep_until_opt(partial.map(|(_, since)| since + timeouts.partial_message())) => {
                return Err(Error::Timeout("a message left incomplete"));
            }
            _ = fan_out_window_end(&mut conn.publishing) => {
                if let Some(p) = &conn.publishing {
                    p.fan_out.flush(&p.publisher).await;
                }
            }
            _ = player_changed(&conn.playing) => {
                let only_frames = deliver_queued(out, conn);
                if let Some(p) = &conn.playing {
                    conn.registry.entry().set_dropped_frames(p.player.dropped_frames());
                }
                // A player behind its queue batches like the direct path (the same window).
                let window = batching.window();
                hold_until = if !window.is_zero() && only_frames && out.lock().session.pending_output() < WRITE_BATCH {
                    hold_until.or_else(|| Some(tokio::time::Instant::now() + window))
                } else {
                    None
                };
            }
            _ = sleep_until_opt(hold_until) => {
                hold_until = None;
            }
            order = conn.registry.entry().reconnect_requested() => {
                let request = ReconnectRequest { tc_url: order.tc_url, description: order.description };
                if out.lock().session.send_reconnect_request(&request) {
                    // Its new connection may take over what this one publishes (make-before-break).
                    if let Some(p) = &conn.publishing {
                        p.publisher.allow_takeover(TAKEOVER_WINDOW);
                    }
                    info!(session = conn.id, peer = %conn.peer, tc_url = request.tc_url.as_deref().unwrap_or("(the same)"), "reconnect request sent: {}", request.description);
                }
                hold_until = None;
            }
            why = conn.registry.entry().kicked() => {
                say_goodbye(&mut out.lock().session, conn);
                let _ = flush(out, timeouts.write()).await;
                return Err(Error::Kicked(why));
            }
            _ = sleep_until_opt(deadline.map(|(at, _)| at)) => {
                return Err(Error::Timeout(deadline.map_or("", |(_, why)| why)));
            }
        }
    }
}

/// Encodes what the player's queue holds, up to [`WRITE_BATCH`] bytes of output. Popping and
/// encoding happen under the session lock, so a direct frame can never overtake a queued one.
/// Returns whether everything was media (which may wait for write coalescing).
fn deliver_queued(out: &SessionIo, conn: &mut Connection) -> bool {
    let Some(playing) = conn.playing.as_mut() else { return false };
    let mut st = out.lock();
    let mut only_frames = true;
    while st.session.pending_output() < WRITE_BATCH {
        let Some(event) = playing.player.try_recv() else { break };
        match event {
            PlayerEvent::PublishStarted => playing.unpublished_since = None,
            PlayerEvent::Unpublished => playing.unpublished_since = Some(tokio::time::Instant::now()),
            PlayerEvent::Frame(_) => {}
        }
        only_frames &= deliver(event, &mut st, playing.stream_id);
    }
    only_frames
}

async fn fan_out_window_end(publishing: &mut Option<Publishing>) {
    match publishing {
        Some(p) => p.fan_out.window_end().await,
        None => std::future::pending().await,
    }
}

async fn player_changed(playing: &Option<Playing>) {
    match playing {
        Some(p) => p.player.changed().await,
        None => std::future::pending().await,
    }
}

/// Writes everything the session has queued, with the task's waker, under one write timeout for
/// the whole batch. The publisher stays off the writer until this is done.
async fn flush(out: &SessionIo, write_timeout: std::time::Duration) -> Result<()> {
    {
        let mut st = out.lock();
        st.collect();
        if st.pending.is_empty() && st.failed.is_none() && !st.task_flush {
            return Ok(());
        }
        st.task_flush = true;
    }
    let written = timeout(
        write_timeout,
        poll_fn(|cx| {
            let mut st = out.lock();
            let poll = st.poll_write_out(cx);
            if poll.is_ready() {
                st.task_flush = false;
            }
            poll
        }),
    )
    .await;
    match written {
        Ok(result) => result.map_err(Error::io("writing to the client")),
        Err(_) => Err(Error::Timeout("the client stopped reading")),
    }
}

/// Writes and drops pieces of `pending`, up to [`MAX_IOVECS`] per system call, until it is empty
/// or the writer would block. What was written is gone from `pending` at once.
fn poll_write_pieces<W>(
    writer: &mut W,
    pending: &mut VecDeque<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<()>>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    while !pending.is_empty() {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let count = pending.len().min(MAX_IOVECS);
        for (slice, piece) in slices.iter_mut().zip(pending.iter()) {
            *slice = IoSlice::new(piece);
        }
        let written = ready!(Pin::new(&mut *writer).poll_write_vectored(cx, &slices[..count]))?;
        if written == 0 {
            return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
        }
        consume(pending, written);
    }
    Poll::Ready(Ok(()))
}

/// Drops the first `n` bytes of the pieces.
fn consume(pending: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = pending.front_mut() else { return };
        if front.len() <= n {
            n -= front.len();
            pending.pop_front();
        } else {
            front.advance(n);
            return;
        }
    }
}

/// Encodes one router event for the player on `stream_id`. Returns whether it was a media frame
/// (which may wait for write coalescing).
fn deliver(event: PlayerEvent, out: &mut IoState, stream_id: u32) -> bool {
    match event {
        PlayerEvent::PublishStarted => {
            out.session.notify_publish(stream_id);
            false
        }
        PlayerEvent::Unpublished => {
            out.session.notify_unpublish(stream_id);
            false
        }
        PlayerEvent::Frame(frame) => {
            out.encode(stream_id, &frame, frame.timestamp);
            true
        }
    }
}

async fn handle_event(
    event: ServerEvent,
    out: &Arc<SessionIo>,
    conn: &mut Connection,
    ctx: &SessionContext,
    connected: &mut bool,
) -> Result<()> {
    match event {
        ServerEvent::HandshakeComplete { requested, version, digest } => {
            conn.encrypted = version.is_encrypted();
            conn.registry.handshake_complete(conn.variant());
            conn.handshake = match (version.is_encrypted(), digest) {
                (true, _) => format!("rtmpe-{}>{}", requested.to_byte(), version.to_byte()),
                (false, true) => "digest".into(),
                (false, false) => "simple".into(),
            };
            debug!(session = conn.id, ?requested, ?version, digest, "handshake complete");
        }
        ServerEvent::ConnectRequested(request) => {
            // Queries (keys, tokens) stay out of the logs.
            let app_name = auth::normalize_app(&request.app);
            let tc_url = request.tc_url.as_deref().map(|u| auth::query::split_name(u).0);
            debug!(
                session = conn.id,
                app = %Escaped(app_name),
                tc_url = ?tc_url.map(Escaped),
                flash_ver = ?request.flash_ver.as_deref().map(Escaped),
                "connect"
            );
            let config = ctx.config();
            match ctx.auth.connect(&config, conn.id, conn.peer, &request).await {
                Ok(client) => {
                    conn.registry.entry().set_app(&client.app);
                    conn.registry.entry().set_reconnect_capable(request.caps_ex() & CAPS_EX_RECONNECT != 0);
                    conn.app = Some(client.app.clone());
                    conn.client = Some(client);
                    *connected = true;
                    let mut st = out.lock();
                    let capabilities = st.session.peer_capabilities();
                    if capabilities.is_enhanced() {
                        debug!(session = conn.id, caps_ex = capabilities.caps_ex, fourcc = ?capabilities.fourcc_list, "client announced Enhanced RTMP");
                    }
                    conn.registry.entry().set_enhanced(capabilities.is_enhanced());
                    st.session.accept_connect()?;
                }
                Err(denial) => {
                    warn!(session = conn.id, peer = %conn.peer, app = %Escaped(app_name), "connect rejected: {}", Escaped(&denial.reason));
                    ctx.metrics.denied(Denial::Connect);
                    out.lock().session.reject_connect(&denial.reason)?;
                    return Err(Error::Denied(denial.reason));
                }
            }
        }
        ServerEvent::PublishRequested { stream_id, stream_name, mode } => {
            on_publish(stream_id, &stream_name, mode, out, conn, ctx).await?
        }
        ServerEvent::PlayRequested { stream_id, stream_name, start, duration, reset } => {
            on_play(stream_id, &stream_name, (start, duration, reset), out, conn, ctx).await?
        }
        ServerEvent::Media(media) => {
            if let Some(p) = &mut conn.publishing {
                if p.stream_id == media.stream_id {
                    let frame = match media.kind {
                        MediaKind::Audio => Frame::audio(media.timestamp, media.payload),
                        MediaKind::Video => Frame::video(media.timestamp, media.payload),
                        MediaKind::Data => Frame::metadata(media.timestamp, media.payload),
                    };
                    p.fan_out.send(&p.publisher, frame).await;
                }
            }
        }
        ServerEvent::StreamClosed { stream_id } => {
            if conn.publishing.as_ref().is_some_and(|p| p.stream_id == stream_id) {
                conn.publishing = None;
                debug!(session = conn.id, "unpublished");
            }
            if conn.playing.as_ref().is_some_and(|p| p.stream_id == stream_id) {
                conn.playing = None;
            }
        }
        ServerEvent::PauseChanged { .. } => {}
    }
    Ok(())
}

async fn on_publish(
    stream_id: u32,
    stream_name: &str,
    mode: PublishMode,
    out: &Arc<SessionIo>,
    conn: &mut Connection,
    ctx: &SessionContext,
) -> Result<()> {
    let app = conn.app.clone().unwrap_or_default();
    if conn.publishing.is_some() {
        let stream = auth::query::split_name(stream_name).0;
        warn!(session = conn.id, peer = %conn.peer, app = %Escaped(&app), stream = %Escaped(stream), "publish rejected: already publishing");
        out.lock().session.reject_publish(stream_id, "NetStream.Publish.BadName", "Already publishing.")?;
        return Ok(());
    }
    let config = ctx.config();
    let Some(client) = conn.client.as_ref() else {
        return Err(Error::Denied("publish before connect".into()));
    };
    let grant = match ctx.auth.publish(&config, client, stream_name, mode).await {
        Ok(grant) => grant,
        Err(denial) => return deny(&mut out.lock().session, conn, ctx, stream_id, true, stream_name, denial),
    };
    let key = StreamKey::new(&app, &grant.name);
    match ctx.router.publish(key.clone(), conn.info()) {
        Ok(publisher) => {
            let claim = match &ctx.cluster {
                Some(cluster) => match cluster.claim(&key).await {
                    Ok(claim) => Some(claim),
                    Err(refused) => {
                        drop(publisher);
                        grant.cancel();
                        warn!(session = conn.id, peer = %conn.peer, stream = %Escaped(&key), owner = refused.owner, "publish rejected: the stream is published on another node");
                        out.lock().session.reject_publish(
                            stream_id,
                            "NetStream.Publish.BadName",
                            "Stream is already published.",
                        )?;
                        return Ok(());
                    }
                },
                None => None,
            };
            out.lock().session.accept_publish(stream_id)?;
            conn.role = "publisher";
            conn.registry.entry().set_role(Role::Publisher, &key.name);
            conn.stream_name = Some(key.name.clone());
            let fan_out = FanOut::new(Batching::new(&config.server, ctx.load.clone()), seal_pairing::scope);
            let takeover = publisher.is_takeover();
            conn.publishing =
                Some(Publishing { stream_id, publisher, fan_out, _grant: grant, _claim: claim });
            if takeover {
                // A reconnecting client: it replaces the live publisher at its first keyframe, and
                // the stream's pushes go on.
                info!(session = conn.id, peer = %conn.peer, variant = conn.variant(), stream = %Escaped(&key), "publishing (taking over from the reconnecting publisher)");
            } else {
                info!(session = conn.id, peer = %conn.peer, variant = conn.variant(), stream = %Escaped(&key), "publishing");
                // Relays: republish to the app's push upstreams (pulled streams never come here).
                ctx.relays.start_pushes(&ctx.router, &config, &key);
            }
        }
        Err(RouterError::AlreadyPublishing) => {
            grant.cancel();
            warn!(session = conn.id, peer = %conn.peer, stream = %Escaped(&key), "publish rejected: stream is already published");
            out.lock().session.reject_publish(
                stream_id,
                "NetStream.Publish.BadName",
                "Stream is already published.",
            )?;
        }
    }
    Ok(())
}

async fn on_play(
    stream_id: u32,
    stream_name: &str,
    (start, duration, reset): (f64, f64, bool),
    out: &Arc<SessionIo>,
    conn: &mut Connection,
    ctx: &SessionContext,
) -> Result<()> {
    let app = conn.app.clone().unwrap_or_default();
    if conn.playing.is_some() {
        let stream = auth::query::split_name(stream_name).0;
        warn!(session = conn.id, peer = %conn.peer, app = %Escaped(&app), stream = %Escaped(stream), "play rejected: already playing");
        out.lock().session.reject_play(stream_id, "NetStream.Play.Failed", "Already playing.")?;
        return Ok(());
    }
    let config = ctx.config();
    let Some(client) = conn.client.as_ref() else { return Err(Error::Denied("play before connect".into())) };
    let grant = match ctx.auth.play(&config, client, stream_name, start, duration, reset).await {
        Ok(grant) => grant,
        Err(denial) => {
            return deny(&mut out.lock().session, conn, ctx, stream_id, false, stream_name, denial)
        }
    };
    let key = StreamKey::new(&app, &grant.name);
    // A player that announced no Enhanced RTMP gets only the tracks and tags it can parse.
    let legacy = !out.lock().session.peer_capabilities().is_enhanced();
    let mut player =
        ctx.router.play_with(key.clone(), conn.info(), PlayOptions { legacy, ..PlayOptions::default() });
    let mut unpublished_since = (!ctx.router.is_live(&key)).then(tokio::time::Instant::now);
    {
        let mut st = out.lock();
        st.session.accept_play(stream_id, &key.name)?;
        // A live stream announces itself at once and needs no PublishNotify; anything else that
        // is already queued is delivered as usual.
        match player.try_recv() {
            // (It may have gone live since the look above.)
            Some(PlayerEvent::PublishStarted) => unpublished_since = None,
            None => {}
            Some(event) => {
                deliver(event, &mut st, stream_id);
            }
        }
        // Caught up, the player takes frames from the publisher's task directly.
        let sink = DirectPlayer {
            io: Arc::clone(out),
            stream_id,
            waker: player.waker(),
            batching: Batching::new(&config.server, ctx.load.clone()),
        };
        player.set_direct_sink(Some(Arc::new(sink)));
    }
    conn.role = "player";
    conn.registry.entry().set_role(Role::Player, &key.name);
    conn.stream_name = Some(key.name.clone());
    conn.playing = Some(Playing { stream_id, player, unpublished_since, _grant: grant });
    info!(session = conn.id, peer = %conn.peer, variant = conn.variant(), stream = %Escaped(&key), legacy, "playing");
    // Relays: a stream that is not live here is pulled from the app's upstream, if it has one.
    ctx.relays.ensure_pull(&ctx.router, &config, &key);
    pull_from_cluster(ctx, &config, &key);
    Ok(())
}

/// Cluster: a stream that is not live here (nor pulled from a configured upstream) is looked up
/// in the directory and pulled from its node, in a task of its own so the play never waits.
fn pull_from_cluster(ctx: &SessionContext, config: &Arc<crate::config::Config>, key: &StreamKey) {
    let Some(cluster) = ctx.cluster.clone() else { return };
    let static_pull = config.app(&key.app).is_some_and(|app| app.pull.is_some());
    if static_pull || ctx.router.is_live(key) || ctx.relays.is_pulling(key) {
        return;
    }
    let (router, relays, config, key) = (ctx.router.clone(), ctx.relays.clone(), config.clone(), key.clone());
    tokio::spawn(async move {
        if let Ok(Some(owner)) = cluster.locate(&key).await {
            let origin = cluster.follow(&key, &owner);
            relays.ensure_cluster_pull(&router, &config, &key, origin, cluster.linger());
        }
    });
}

/// Tells the client why (`onStatus` error), logs the reason, and ends the session: a client
/// guessing keys or tokens pays a new connection and handshake per attempt.
fn deny(
    session: &mut ServerSession,
    conn: &Connection,
    ctx: &SessionContext,
    stream_id: u32,
    publish: bool,
    stream_name: &str,
    denial: auth::Denial,
) -> Result<()> {
    let (what, name) = (if publish { "publish" } else { "play" }, auth::query::split_name(stream_name).0);
    let app = conn.app.as_deref().unwrap_or("-");
    warn!(session = conn.id, peer = %conn.peer, variant = %conn.variant(), stream = %Escaped(format_args!("{app}/{name}")), code = %denial.code, "{what} denied: {}", Escaped(&denial.reason));
    if publish {
        ctx.metrics.denied(Denial::Publish);
        session.reject_publish(stream_id, denial.code, &denial.reason)?;
    } else {
        ctx.metrics.denied(Denial::Play);
        session.reject_play(stream_id, denial.code, &denial.reason)?;
    }
    Err(Error::Denied(denial.reason))
}

fn say_goodbye(session: &mut ServerSession, conn: &Connection) {
    if let Some(p) = &conn.playing {
        session.notify_unpublish(p.stream_id);
    }
    if let Some(p) = &conn.publishing {
        session.send_status(
            p.stream_id,
            StatusLevel::Status,
            "NetStream.Unpublish.Success",
            "Server is shutting down.",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes at most `max` bytes per write, vectored or not.
    struct Trickle {
        written: Vec<u8>,
        max: usize,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.max);
            self.written.extend_from_slice(&buf[..n]);
            self.calls += 1;
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut room = self.max;
            for buf in bufs {
                let n = buf.len().min(room);
                self.written.extend_from_slice(&buf[..n]);
                room -= n;
            }
            self.calls += 1;
            Poll::Ready(Ok(self.max - room))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn pieces_are_written_in_order_across_partial_writes() {
        let pieces: Vec<Bytes> =
            (0..200u32).map(|i| Bytes::from(vec![i as u8; (i % 7 + 1) as usize])).collect();
        let expected: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
        let mut pending: VecDeque<Bytes> = pieces.into_iter().collect();
        let mut sink = Trickle { written: Vec::new(), max: 5, calls: 0 };
        poll_fn(|cx| poll_write_pieces(&mut sink, &mut pending, cx)).await.unwrap();
        assert!(pending.is_empty());
        assert_eq!(sink.written, expected);
        assert_eq!(sink.calls, expected.len().div_ceil(5));
    }

    #[test]
    fn consume_splits_a_piece() {
        let mut pending: VecDeque<Bytes> =
            [&b"abc"[..], b"defg", b"h"].into_iter().map(Bytes::from_static).collect();
        consume(&mut pending, 5);
        assert_eq!(pending, [Bytes::from_static(b"fg"), Bytes::from_static(b"h")]);
        consume(&mut pending, 3);
        assert!(pending.is_empty());
        consume(&mut pending, 1);
    }
}
