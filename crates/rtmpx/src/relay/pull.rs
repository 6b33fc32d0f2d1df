//! One pull relay: plays a stream upstream and publishes it into the local router.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use crate::logsafe::Escaped;
use rtmpx_client::{ClientEvent, Connection, MediaKind, RtmpUrl};
use rtmpx_router::{Frame, Publisher, Router, SessionInfo, StreamKey};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::fan_out::{Batching, FanOut, Scope};

use super::splice::{Splicer, Step};
use super::{log_connected, log_retry, stream_url, Backoff, Direction, RelayManager, RelayOptions, Status};

/// How often a pull looks at its player count.
const CHECK_EVERY: Duration = Duration::from_millis(250);

pub(super) struct PullJob {
    pub(super) router: Router,
    pub(super) key: StreamKey,
    pub(super) app_url: RtmpUrl,
    pub(super) linger: Duration,
    pub(super) options: RelayOptions,
    pub(super) manager: RelayManager,
    pub(super) status: Status,
    pub(super) shutdown: watch::Receiver<bool>,
    /// Pulled streams batch their players' writes like published ones.
    pub(super) batching: Batching,
    /// How the session layer runs a fan-out (RTMPE pairing).
    pub(super) scope: Scope,
    /// Cluster pulls: the owning node's URL as the directory says (None: the entry is gone).
    pub(super) origin: Option<watch::Receiver<Option<String>>>,
}

/// Why a pull stops.
enum Stop {
    NoPlayers,
    PublishedLocally,
    OriginGone,
    Shutdown,
}

impl Stop {
    fn reason(&self) -> &'static str {
        match self {
            Stop::NoPlayers => "no players left",
            Stop::PublishedLocally => "the stream is published locally",
            Stop::OriginGone => "the stream left the cluster directory",
            Stop::Shutdown => "shutting down",
        }
    }
}

struct Pulling {
    idle_since: Option<Instant>,
    publisher: Option<Publisher>,
}

impl PullJob {
    pub(super) async fn run(mut self) {
        let key = self.key.clone();
        let url = self.status.url();
        let mut source = stream_url(&self.app_url, &key.name);
        let options = self.options.clone();
        let mut backoff = Backoff::new(self.options.backoff_initial, self.options.backoff_max);
        let mut state = Pulling { idle_since: None, publisher: None };
        let mut tick = tokio::time::interval(CHECK_EVERY);
        let mut attempt = 0u32;
        info!("relay pull {} <- {url}: starting (a player asked for it)", Escaped(&key));
        let stop = 'relay: loop {
            match self.current_origin() {
                Some(None) => break 'relay Stop::OriginGone,
                Some(Some(owner)) => source = owner,
                None => {}
            }
            self.status.connecting();
            attempt += 1;
            let connect = connect_owned(source.clone(), options.clone());
            tokio::pin!(connect);
            let outcome = loop {
                tokio::select! {
                    outcome = &mut connect => break outcome,
                    _ = tick.tick() => if let Some(stop) = self.should_stop(&mut state) { break 'relay stop },
                    _ = self.shutdown.changed() => break 'relay Stop::Shutdown,
                }
            };
            let error = match outcome {
                Ok(conn) => {
                    self.status.connected();
                    log_connected(
                        Direction::Pull,
                        &key,
                        &url,
                        self.status.connections - 1,
                        source.scheme.as_str(),
                    );
                    let since = Instant::now();
                    let mut upstream = Upstream { conn, target: source.clone() };
                    let result = self.receive(&mut upstream, &mut state, &mut tick).await;
                    // A reconnect request may have moved the pull: retries go where it went.
                    source = upstream.target.clone();
                    let conn = upstream.conn;
                    state.publisher = None;
                    self.status.connection_done(conn.bytes_in());
                    if since.elapsed() >= super::STABLE_CONNECTION {
                        backoff.reset();
                        attempt = 1;
                    }
                    match result {
                        Ok(stop) => {
                            let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
                            break stop;
                        }
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            let delay = backoff.next_delay();
            self.status.retrying(&error);
            log_retry(Direction::Pull, &key, &url, &error, delay, attempt);
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    _ = tick.tick() => if let Some(stop) = self.should_stop(&mut state) { break 'relay stop },
                    _ = self.shutdown.changed() => break 'relay Stop::Shutdown,
                }
            }
        };
        drop(state);
        self.manager.forget_pull(&key, self.status.id);
        info!("relay pull {} <- {url}: pull ended ({})", Escaped(&key), stop.reason());
    }

    /// Cluster pulls: where the stream is now (`Some(None)` when it left the directory).
    fn current_origin(&self) -> Option<Option<RtmpUrl>> {
        let owner = self.origin.as_ref()?.borrow().clone();
        let app =
            owner.and_then(|node| super::config::upstream_app(&format!("{node}/{}", self.key.app)).ok());
        Some(app.map(|app| stream_url(&app, &self.key.name)))
    }

    fn should_stop(&self, state: &mut Pulling) -> Option<Stop> {
        if matches!(self.current_origin(), Some(None)) {
            return Some(Stop::OriginGone);
        }
        let Pulling { idle_since, publisher } = state;
        let idle = self.manager.pull_idle(
            &self.router,
            &self.key,
            self.status.id,
            idle_since,
            self.linger,
            publisher,
        );
        idle.then_some(Stop::NoPlayers)
    }

    /// Publishes what the upstream plays until it fails or the pull should stop. A reconnect
    /// request opens a second connection that takes over without a gap ([`Splicer`]).
    async fn receive(
        &mut self,
        upstream: &mut Upstream,
        state: &mut Pulling,
        tick: &mut tokio::time::Interval,
    ) -> Result<Stop, String> {
        let mut fan_out = FanOut::new(self.batching.clone(), self.scope);
        let mut splicer = Splicer::new();
        let mut moving: Option<(Connecting, RtmpUrl)> = None;
        let mut next: Option<Upstream> = None;
        // The current upstream stopped while a move was connecting (a draining origin's push
        // relays move first, then it closes): the new connection takes over as soon as it plays.
        let mut stopped_while_moving = false;
        // That stop was the connection ending: nothing more to read from it.
        let mut current_closed = false;
        // Cluster pulls: the owner the directory named when this connection started; a change
        // moves the pull (make-before-break), as a reconnect request does.
        let mut directory_owner = self.current_origin().flatten();
        let mut out = Vec::new();
        loop {
            let deadline = splicer.deadline();
            tokio::select! {
                event = upstream.conn.next_event(), if !current_closed => match event {
                    Ok(None) | Err(_) if next.is_some() => {
                        // The old connection went first: the new one takes over now.
                        self.take_over(&mut splicer, &mut out, upstream, next.take().expect("checked"));
                    }
                    Ok(None) | Err(_) if moving.is_some() => {
                        // Players keep the stream: the move's connection continues it.
                        (stopped_while_moving, current_closed) = (true, true);
                    }
                    Ok(None) => return Err("the upstream closed the connection".into()),
                    Err(e) => return Err(e.to_string()),
                    Ok(Some(ClientEvent::Media(media))) => {
                        if splicer.on_current(frame_of(media), &mut out) == Step::Switched {
                            self.switch(upstream, next.take().expect("moving"));
                        }
                    }
                    Ok(Some(ClientEvent::Status { code, .. })) => {
                        debug!(stream = %self.key, %code, "relay pull: status from the upstream");
                        if code.ends_with("UnpublishNotify") || code.ends_with("Play.Stop") {
                            if let Some(new) = next.take() {
                                self.take_over(&mut splicer, &mut out, upstream, new);
                            } else if moving.is_some() {
                                // Players keep the stream: the move's connection continues it.
                                stopped_while_moving = true;
                            } else {
                                // The upstream publisher left: so do we, until media flows again.
                                state.publisher = None;
                            }
                        }
                    }
                    Ok(Some(ClientEvent::Rejected { code, description })) => {
                        return Err(format!("rejected: {code}: {description}"))
                    }
                    Ok(Some(ClientEvent::ReconnectRequested(request))) => {
                        let key = &self.key;
                        match upstream.target.reconnect_target(request.tc_url.as_deref()) {
                            _ if self.options.client.caps_ex & rtmpx_client::CAPS_EX_RECONNECT == 0 => {
                                info!("relay pull {key}: reconnect request ignored (relay.follow_reconnect = false)");
                            }
                            Ok(_) if moving.is_some() || next.is_some() => {
                                debug!("relay pull {key}: reconnect request while already moving: ignored");
                            }
                            Ok(target) => {
                                info!(
                                    "relay pull {key}: the upstream asks to reconnect ({}) to {}: connecting there",
                                    request.description,
                                    super::redacted_url(&target)
                                );
                                moving = Some(self.start_move(upstream, target));
                            }
                            Err(e) => warn!("relay pull {key}: reconnect request with a bad tcUrl: {e}"),
                        }
                    }
                    Ok(Some(_)) => {}
                },
                outcome = pending_connect(&mut moving) => {
                    let (_, target) = moving.take().expect("polled");
                    match outcome {
                        Ok(conn) if std::mem::take(&mut stopped_while_moving) => {
                            info!("relay pull {}: playing at {}, taking over (the old upstream stopped)", self.key, super::redacted_url(&target));
                            splicer.begin_move();
                            self.take_over(&mut splicer, &mut out, upstream, Upstream { conn, target });
                            current_closed = false;
                        }
                        Ok(conn) => {
                            info!("relay pull {}: playing at {}, switching on a common keyframe", self.key, super::redacted_url(&target));
                            next = Some(Upstream { conn, target });
                            splicer.begin_move();
                        }
                        Err(e) => {
                            // Stay; once this upstream goes, retries go to the new place.
                            warn!("relay pull {}: could not move to {}: {e}; staying", self.key, super::redacted_url(&target));
                            if std::mem::take(&mut stopped_while_moving) {
                                if current_closed {
                                    return Err(format!("the upstream closed the connection and the move failed: {e}"));
                                }
                                state.publisher = None;
                            }
                        }
                    }
                }
                event = next_event(&mut next) => match event {
                    Ok(Some(ClientEvent::Media(media))) => {
                        if splicer.on_next(frame_of(media), &mut out) == Step::Switched {
                            self.switch(upstream, next.take().expect("moving"));
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        warn!("relay pull {}: the new connection failed before it took over; staying", self.key);
                        next = None;
                        splicer = splicer.abandon_move();
                    }
                },
                () = sleep_until_opt(deadline) => {
                    if let Some(new) = next.take() {
                        self.take_over(&mut splicer, &mut out, upstream, new);
                    }
                }
                _ = fan_out.window_end() => {
                    if let Some(publisher) = &state.publisher {
                        fan_out.flush(publisher).await;
                    }
                }
                _ = tick.tick() => {
                    self.status.bytes(upstream.conn.bytes_in());
                    if let Some(stop) = self.should_stop(state) {
                        return Ok(stop);
                    }
                    let owner = self.current_origin().flatten();
                    if owner != directory_owner && moving.is_none() && next.is_none() {
                        directory_owner.clone_from(&owner);
                        if let Some(target) = owner.filter(|owner| *owner != upstream.target) {
                            info!(
                                "relay pull {}: the cluster directory moved the stream to {}: connecting there",
                                self.key,
                                super::redacted_url(&target)
                            );
                            moving = Some(self.start_move(upstream, target));
                        }
                    }
                }
                _ = self.shutdown.changed() => return Ok(Stop::Shutdown),
            }
            for frame in out.drain(..) {
                if state.publisher.is_none() {
                    let session =
                        SessionInfo { id: self.status.id, peer: self.status.url(), variant: "relay-pull" };
                    match self.router.publish(self.key.clone(), session) {
                        Ok(publisher) => state.publisher = Some(publisher),
                        Err(_) => return Ok(Stop::PublishedLocally),
                    }
                }
                if let Some(publisher) = &state.publisher {
                    fan_out.send(publisher, frame).await;
                }
            }
        }
    }

    /// Starts a make-before-break move to `target`: its connection is made while `upstream`
    /// plays on. Should `upstream` end first, retries go to `target` too.
    fn start_move(&self, upstream: &mut Upstream, target: RtmpUrl) -> (Connecting, RtmpUrl) {
        let connecting: Connecting = Box::pin(connect_owned(target.clone(), self.options.clone()));
        upstream.target = target.clone();
        (connecting, target)
    }

    /// The new connection takes over now: the splicer ends the move, then the connections swap.
    fn take_over(
        &mut self,
        splicer: &mut Splicer,
        out: &mut Vec<Frame>,
        upstream: &mut Upstream,
        new: Upstream,
    ) {
        splicer.take_over(out);
        self.switch(upstream, new);
    }

    /// The new connection replaces the current one, which closes in the background.
    fn switch(&mut self, upstream: &mut Upstream, next: Upstream) {
        let old = std::mem::replace(upstream, next);
        self.status.connection_done(old.conn.bytes_in());
        self.status.connected();
        info!(
            "relay pull {}: moved to {} (reconnects={})",
            self.key,
            super::redacted_url(&upstream.target),
            self.status.connections - 1
        );
        let conn = old.conn;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
        });
    }
}

/// The upstream connection a pull plays from.
struct Upstream {
    conn: Connection,
    target: RtmpUrl,
}

/// A connect and play in flight.
type Connecting = Pin<Box<dyn Future<Output = Result<Connection, String>> + Send>>;

fn frame_of(media: rtmpx_client::Media) -> Frame {
    match media.kind {
        MediaKind::Audio => Frame::audio(media.timestamp, media.payload),
        MediaKind::Video => Frame::video(media.timestamp, media.payload),
        MediaKind::Data => Frame::metadata(media.timestamp, media.payload),
    }
}

async fn connect_owned(source: RtmpUrl, options: RelayOptions) -> Result<Connection, String> {
    connect(&source, &options).await
}

async fn pending_connect(moving: &mut Option<(Connecting, RtmpUrl)>) -> Result<Connection, String> {
    match moving {
        Some((connecting, _)) => connecting.await,
        None => std::future::pending().await,
    }
}

async fn next_event(next: &mut Option<Upstream>) -> rtmpx_client::Result<Option<ClientEvent>> {
    match next {
        Some(upstream) => upstream.conn.next_event().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

async fn connect(source: &RtmpUrl, options: &RelayOptions) -> Result<Connection, String> {
    let mut conn = Connection::connect(source, &options.client).await.map_err(|e| e.to_string())?;
    conn.play(&source.stream).await.map_err(|e| e.to_string())?;
    Ok(conn)
}
