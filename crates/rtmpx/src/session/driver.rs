//! The session's event loop: one [`Driver`] per connection waits on every source of work at once
//! (the client's bytes, the player's queue, the publisher's batch window, the registry's kick and
//! reconnect orders, deadlines, shutdown) and handles each in a method of its own.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::SeedableRng;
use rtmpx_core::handshake::{EncryptionPolicy, HandshakeVersion};
use rtmpx_core::session::{ReconnectRequest, ServerConfig, ServerEvent, ServerSession, StatusLevel};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::{info, warn};

use super::io::{deliver, flush, poll_read_into, IoState, SessionIo};
use super::{policy, Connection, Playing, Publishing, SessionContext, WRITE_BATCH};
use crate::config::{Config, Timeouts};
use crate::error::{Error, Result};
use crate::fan_out::{sleep_until_opt, Batching};
use crate::registry::ReconnectOrder;

/// How long after a reconnect request the client's new publish may take its stream over.
const TAKEOVER_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Longest stretch a publisher's task fans out before it yields to the worker's other sessions.
const FAN_OUT_SLICE: std::time::Duration = std::time::Duration::from_millis(5);

/// What an event leaves the loop with: go on, or end the session with this result.
type Step = ControlFlow<Result<()>>;

fn server_config(config: &Config, encryption: EncryptionPolicy) -> ServerConfig {
    let mut sc = ServerConfig::default();
    sc.chunk_size = config.server.chunk_size;
    sc.encryption = encryption;
    sc.chunk_limits.max_chunk_size = config.limits.max_chunk_size;
    sc.chunk_limits.max_message_size = config.limits.max_message_size;
    sc.chunk_limits.max_chunk_streams = config.limits.max_chunk_streams;
    sc.chunk_limits.max_buffered_bytes = (config.limits.max_message_size as usize).saturating_mul(2);
    sc.amf_limits.max_depth = config.limits.max_amf_depth;
    sc
}

pub(super) async fn drive<S>(
    stream: S,
    conn: &mut Connection,
    encryption: EncryptionPolicy,
    ctx: &SessionContext,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // One snapshot for the connection's own settings (a reload applies to new connections).
    let config = ctx.config();
    let session = ServerSession::new(server_config(&config, encryption), &mut StdRng::from_entropy());
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
    let driver = Driver::new(&out, conn, ctx, &config);
    drop(config);
    let result = driver.run().await;
    // The router lets go of the session when the player leaves; the session is over either way.
    if let Some(p) = &conn.playing {
        p.player.set_direct_sink(None);
    }
    conn.bytes_out = out.lock().bytes_out;
    result
}

/// One connection's event loop and the state it keeps between events.
struct Driver<'a> {
    out: &'a Arc<SessionIo>,
    conn: &'a mut Connection,
    ctx: &'a SessionContext,
    /// As the connection started (one snapshot; a reload applies to new connections).
    timeouts: Timeouts,
    memory_limit: usize,
    rtmpe_per_ip: u32,
    /// What is pending of an incomplete message (ServerSession::incomplete_input) and since when:
    /// it must complete in `partial_message_secs`, however slowly its bytes trickle in.
    partial: Option<((u64, u64), Instant)>,
    handshake_deadline: Instant,
    connected: bool,
    last_read: Instant,
    /// Set after input from a connection that publishes nothing: once its answers are written,
    /// its buffers go back (an idle player should cost little memory).
    release_after_flush: bool,
    /// Write coalescing for a player behind its queue: media held back until `hold_until` (or
    /// WRITE_BATCH bytes), the same window the publisher's direct writes use.
    batching: Batching,
    hold_until: Option<Instant>,
    /// The session's deadline ([`Driver::deadline`]) and the partial message's.
    deadline_timer: LazyTimer,
    partial_timer: LazyTimer,
}

/// A timer that is only ever moved earlier. A deadline that moved later (the idle deadline moves
/// with every read) is picked up when the timer fires, so a busy connection touches the runtime's
/// timer wheel about once per timeout instead of once per read.
#[derive(Default)]
struct LazyTimer {
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl LazyTimer {
    /// Resolves once `deadline` has passed; never without one.
    async fn expired(&mut self, deadline: Option<Instant>) {
        let Some(at) = deadline else { return std::future::pending().await };
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if sleep.deadline() > at {
            sleep.as_mut().reset(at);
        }
        loop {
            sleep.as_mut().await;
            if Instant::now() >= at {
                return;
            }
            // It fired for an earlier deadline that has moved on since.
            sleep.as_mut().reset(at);
        }
    }
}

impl<'a> Driver<'a> {
    fn new(
        out: &'a Arc<SessionIo>,
        conn: &'a mut Connection,
        ctx: &'a SessionContext,
        config: &Config,
    ) -> Driver<'a> {
        let now = Instant::now();
        Driver {
            out,
            conn,
            ctx,
            timeouts: config.timeouts.clone(),
            memory_limit: config.limits.max_memory_per_ip,
            rtmpe_per_ip: config.limits.rtmpe_handshakes_per_ip,
            partial: None,
            handshake_deadline: now + config.timeouts.handshake,
            connected: false,
            last_read: now,
            release_after_flush: false,
            batching: Batching::new(&config.server, ctx.load.clone()),
            hold_until: None,
            deadline_timer: LazyTimer::default(),
            partial_timer: LazyTimer::default(),
        }
    }

    async fn run(mut self) -> Result<()> {
        let mut shutdown = self.ctx.shutdown_signal();
        let (out, ctx, peer_ip, rtmpe_per_ip) = (self.out, self.ctx, self.conn.peer.ip(), self.rtmpe_per_ip);
        // An RTMPE handshake costs two modular exponentiations before anything is authorised.
        let admit_c0 = |c0: u8| {
            let rtmpe = HandshakeVersion::from_byte(c0).is_some_and(|v| v.is_encrypted());
            if rtmpe && !ctx.rtmpe_budget.take(peer_ip, rtmpe_per_ip) {
                return Err(Error::RateLimited(
                    "RTMPE handshakes from this address (limits.rtmpe_handshakes_per_ip)",
                ));
            }
            Ok(())
        };
        // Made once and kept across loop turns: registering with a Notify on every read shows up
        // in the profile of a publisher's task (one loop turn per frame).
        let entry = self.conn.registry.shared_entry();
        let kicked = entry.kicked();
        tokio::pin!(kicked);
        let reconnect = entry.reconnect_requested();
        tokio::pin!(reconnect);
        let shutdown_changed = shutdown.changed();
        tokio::pin!(shutdown_changed);
        loop {
            if self.hold_until.is_none() {
                if self.conn.playing.is_some() {
                    // A player that does not read waits here; its queue's bill may be refused meanwhile.
                    tokio::select! {
                        written = flush(out, self.timeouts.write) => written?,
                        () = player_over_budget(&self.conn.playing) => {}
                    }
                } else {
                    flush(out, self.timeouts.write).await?;
                }
            }
            if let Some(over) = self.conn.playing.as_ref().and_then(|p| p.queue_refused.get().copied()) {
                warn!(session = self.conn.id, peer = %self.conn.peer, "{over} (frames queued for a player that is not reading)");
                return Err(over.into());
            }
            {
                let mut st = out.lock();
                if st.session.is_closed() {
                    return Ok(());
                }
                if std::mem::take(&mut self.release_after_flush) && st.pending.is_empty() {
                    st.session.release_buffers();
                    st.pending = VecDeque::new();
                }
            }
            let deadline = self.deadline();
            let first_read = self.conn.bytes_in == 0;
            let partial_deadline = self.partial.map(|(_, since)| since + self.timeouts.partial_message);
            let step = tokio::select! {
                _ = &mut shutdown_changed => ControlFlow::Break(self.goodbye(Ok(())).await),
                read = poll_fn(|cx| poll_read_into(out, cx, first_read.then_some(&admit_c0 as &dyn Fn(u8) -> Result<()>))) => {
                    let (n, verdict) = match read {
                        Ok(read) => read,
                        Err(e) => return Err(Error::io("reading from the client")(e)),
                    };
                    self.on_input(n, verdict).await
                }
                () = self.partial_timer.expired(partial_deadline) => {
                    ControlFlow::Break(Err(Error::Timeout("a message left incomplete")))
                }
                _ = fan_out_window_end(&mut self.conn.publishing) => self.on_fan_out_window_end().await,
                _ = player_changed(&self.conn.playing) => self.on_player_changed(),
                _ = sleep_until_opt(self.hold_until) => {
                    self.hold_until = None;
                    ControlFlow::Continue(())
                }
                order = &mut reconnect => {
                    reconnect.set(entry.reconnect_requested());
                    self.on_reconnect_order(order)
                }
                why = &mut kicked => ControlFlow::Break(self.goodbye(Err(Error::Kicked(why))).await),
                () = self.deadline_timer.expired(deadline.map(|(at, _)| at)) => {
                    ControlFlow::Break(Err(Error::Timeout(deadline.map_or("", |(_, why)| why))))
                }
            };
            if let ControlFlow::Break(result) = step {
                return result;
            }
        }
    }

    /// When the session ends unless something happens, and why.
    fn deadline(&self) -> Option<(Instant, &'static str)> {
        if !self.connected {
            Some((self.handshake_deadline, "handshake and connect"))
        } else if let (Some(playing), None) = (&self.conn.playing, &self.conn.publishing) {
            // Players may send nothing for a long time; their writes are bounded instead. A stream
            // nobody publishes holds them only so long (each one holds a file descriptor).
            let limit = self.timeouts.unpublished_play;
            playing
                .player
                .unpublished_since()
                .filter(|_| !limit.is_zero())
                .map(|since| (Instant::from_std(since) + limit, "the stream was not published"))
        } else {
            Some((self.last_read + self.timeouts.idle, "no data from the client"))
        }
    }

    /// `n` bytes from the client went into the session (`verdict`: how it took them): handles
    /// the events they made, then checks the memory they hold.
    async fn on_input(&mut self, n: usize, verdict: Result<()>) -> Step {
        // Answers go out at once, with any media held back.
        self.hold_until = None;
        if n == 0 {
            return ControlFlow::Break(Ok(()));
        }
        let conn = &mut *self.conn;
        conn.bytes_in += n as u64;
        conn.registry.entry().add_in(n);
        self.last_read = Instant::now();
        self.release_after_flush = conn.publishing.is_none();
        let mut outcome = verdict;
        let mut slice_started = std::time::Instant::now();
        loop {
            let event = self.out.lock().session.poll_event();
            let Some(event) = event else { break };
            if !matches!(event, ServerEvent::Media(_)) {
                // Media offered so far goes out before anything else happens.
                finish_fan_out(conn).await;
            }
            // Connect/publish/play decisions may wait for an HTTP callback; meanwhile nothing
            // is read, and the session holds what the client pipelined.
            if let Err(e) = policy::handle_event(event, self.out, conn, self.ctx, &mut self.connected).await {
                outcome = Err(e);
                break;
            }
            // One read may hold hundreds of small messages, each fanned out to every
            // player outside tokio's budget: let the worker's other sessions run now and then.
            if slice_started.elapsed() >= FAN_OUT_SLICE {
                finish_fan_out(conn).await;
                tokio::task::yield_now().await;
                slice_started = std::time::Instant::now();
            }
        }
        finish_fan_out(conn).await;
        if let Err(e) = outcome {
            // Whatever the session produced before the error (e.g. a reject) still goes out.
            let _ = flush(self.out, self.timeouts.write).await;
            return ControlFlow::Break(Err(e));
        }
        let (held_input, oldest) = {
            let st = self.out.lock();
            (st.session.held_input_bytes(), st.session.incomplete_input())
        };
        self.partial = match (oldest, self.partial) {
            (Some(marker), Some((seen, since))) if marker == seen => Some((seen, since)),
            (Some(marker), _) => Some((marker, Instant::now())),
            (None, _) => None,
        };
        let held = held_input + conn.publishing.as_ref().map_or(0, |p| p.publisher.cached_bytes());
        if let Err(over) = conn.memory.set(held, self.memory_limit) {
            warn!(session = conn.id, peer = %conn.peer, "{over}");
            return ControlFlow::Break(Err(over.into()));
        }
        ControlFlow::Continue(())
    }

    /// The publisher's batch window ended: its players' held media goes out.
    async fn on_fan_out_window_end(&mut self) -> Step {
        if let Some(p) = &self.conn.publishing {
            p.fan_out.flush(&p.publisher).await;
        }
        ControlFlow::Continue(())
    }

    /// The player's queue has something: encode it, maybe holding media for a shared write.
    fn on_player_changed(&mut self) -> Step {
        let only_frames = deliver_queued(self.out, self.conn);
        if let Some(p) = &self.conn.playing {
            self.conn.registry.entry().set_dropped_frames(p.player.dropped_frames());
        }
        // A player behind its queue batches like the direct path (the same window).
        let window = self.batching.window();
        self.hold_until =
            if !window.is_zero() && only_frames && self.out.lock().session.pending_output() < WRITE_BATCH {
                self.hold_until.or_else(|| Some(Instant::now() + window))
            } else {
                None
            };
        ControlFlow::Continue(())
    }

    /// The admin API or a drain asks the client to reconnect.
    fn on_reconnect_order(&mut self, order: ReconnectOrder) -> Step {
        let conn = &*self.conn;
        let request = ReconnectRequest { tc_url: order.tc_url, description: order.description };
        if self.out.lock().session.send_reconnect_request(&request) {
            // Its new connection may take over what this one publishes (make-before-break).
            if let Some(p) = &conn.publishing {
                p.publisher.allow_takeover(TAKEOVER_WINDOW);
            }
            info!(session = conn.id, peer = %conn.peer, tc_url = request.tc_url.as_deref().unwrap_or("(the same)"), "reconnect request sent: {}", request.description);
        }
        self.hold_until = None;
        ControlFlow::Continue(())
    }

    /// Shutdown or a kick: tells the client, writes what is left, and ends with `result`.
    async fn goodbye(&mut self, result: Result<()>) -> Result<()> {
        say_goodbye(&mut self.out.lock().session, self.conn);
        let _ = flush(self.out, self.timeouts.write).await;
        result
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
        only_frames &= deliver(event, &mut st, playing.stream_id);
    }
    only_frames
}

/// Sends the media the publisher offered from the read being handled.
async fn finish_fan_out(conn: &mut Connection) {
    if let Some(p) = &mut conn.publishing {
        p.fan_out.finish(&p.publisher).await;
    }
}

async fn fan_out_window_end(publishing: &mut Option<Box<Publishing>>) {
    match publishing {
        Some(p) => p.fan_out.window_end().await,
        None => std::future::pending().await,
    }
}

async fn player_over_budget(playing: &Option<Playing>) {
    match playing {
        Some(p) => p.player.over_budget().await,
        None => std::future::pending().await,
    }
}

async fn player_changed(playing: &Option<Playing>) {
    match playing {
        Some(p) => p.player.changed().await,
        None => std::future::pending().await,
    }
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
    use std::time::Duration;

    use super::*;

    /// Whether `expired` resolves within `within` (paused time: advanced exactly).
    async fn fires_within(timer: &mut LazyTimer, deadline: Option<Instant>, within: Duration) -> bool {
        tokio::time::timeout(within, timer.expired(deadline)).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_lazy_timer_fires_at_the_latest_deadline_only() {
        let mut timer = LazyTimer::default();
        assert!(!fires_within(&mut timer, None, Duration::from_secs(60)).await, "no deadline, no fire");
        let start = Instant::now();

        // Armed for 10 s; the deadline then moves on (reads) without touching the timer.
        assert!(
            !fires_within(&mut timer, Some(start + Duration::from_secs(10)), Duration::from_secs(5)).await
        );
        let moved = start + Duration::from_secs(20);
        assert!(
            !fires_within(&mut timer, Some(moved), Duration::from_secs(10)).await,
            "fired at the old deadline"
        );
        assert!(fires_within(&mut timer, Some(moved), Duration::from_secs(6)).await);
        assert!(Instant::now() >= moved);

        // A deadline earlier than the armed one takes effect at once.
        let later = Instant::now() + Duration::from_secs(30);
        assert!(!fires_within(&mut timer, Some(later), Duration::from_secs(1)).await);
        let sooner = Instant::now() + Duration::from_secs(2);
        assert!(fires_within(&mut timer, Some(sooner), Duration::from_secs(3)).await);
        assert!(Instant::now() < later);
    }
}
