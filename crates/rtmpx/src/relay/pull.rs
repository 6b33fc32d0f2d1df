//! One pull relay: plays a stream upstream and publishes it into the local router.

use std::time::{Duration, Instant};

use rtmpx_client::{ClientEvent, Connection, MediaKind, RtmpUrl};
use rtmpx_router::{Frame, Publisher, Router, RouterError, SessionInfo, StreamKey};
use tokio::sync::watch;
use tracing::{debug, info};

use crate::session::{Batching, FanOut};

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
        info!("relay pull {key} <- {url}: starting (a player asked for it)");
        let stop = 'relay: loop {
            match self.current_origin() {
                Some(None) => break 'relay Stop::OriginGone,
                Some(Some(owner)) => source = owner,
                None => {}
            }
            self.status.connecting();
            attempt += 1;
            let connect = connect(&source, &options);
            tokio::pin!(connect);
            let outcome = loop {
                tokio::select! {
                    outcome = &mut connect => break outcome,
                    _ = tick.tick() => if let Some(stop) = self.should_stop(&mut state) { break 'relay stop },
                    _ = self.shutdown.changed() => break 'relay Stop::Shutdown,
                }
            };
            let error = match outcome {
                Ok(mut conn) => {
                    self.status.connected();
                    log_connected(
                        Direction::Pull,
                        &key,
                        &url,
                        self.status.connections - 1,
                        source.scheme.as_str(),
                    );
                    let since = Instant::now();
                    let result = self.receive(&mut conn, &mut state, &mut tick).await;
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
        info!("relay pull {key} <- {url}: pull ended ({})", stop.reason());
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

    /// Publishes what the upstream plays until it fails or the pull should stop.
    async fn receive(
        &mut self,
        conn: &mut Connection,
        state: &mut Pulling,
        tick: &mut tokio::time::Interval,
    ) -> Result<Stop, String> {
        let mut fan_out = FanOut::new(self.batching.clone());
        loop {
            tokio::select! {
                event = conn.next_event() => match event {
                    Ok(None) => return Err("the upstream closed the connection".into()),
                    Err(e) => return Err(e.to_string()),
                    Ok(Some(ClientEvent::Media(media))) => {
                        if state.publisher.is_none() {
                            let session = SessionInfo { id: self.status.id, peer: self.status.url(), variant: "relay-pull" };
                            match self.router.publish(self.key.clone(), session) {
                                Ok(publisher) => state.publisher = Some(publisher),
                                Err(RouterError::AlreadyPublishing) => return Ok(Stop::PublishedLocally),
                            }
                        }
                        let frame = match media.kind {
                            MediaKind::Audio => Frame::audio(media.timestamp, media.payload),
                            MediaKind::Video => Frame::video(media.timestamp, media.payload),
                            MediaKind::Data => Frame::metadata(media.timestamp, media.payload),
                        };
                        if let Some(publisher) = &state.publisher {
                            fan_out.send(publisher, frame).await;
                        }
                    }
                    Ok(Some(ClientEvent::Status { code, .. })) => {
                        debug!(stream = %self.key, %code, "relay pull: status from the upstream");
                        if code.ends_with("UnpublishNotify") || code.ends_with("Play.Stop") {
                            // The upstream publisher left: so do we, until media flows again.
                            state.publisher = None;
                        }
                    }
                    Ok(Some(ClientEvent::Rejected { code, description })) => {
                        return Err(format!("rejected: {code}: {description}"))
                    }
                    Ok(Some(_)) => {}
                },
                _ = fan_out.window_end() => {
                    if let Some(publisher) = &state.publisher {
                        fan_out.flush(publisher).await;
                    }
                }
                _ = tick.tick() => {
                    self.status.bytes(conn.bytes_in());
                    if let Some(stop) = self.should_stop(state) {
                        return Ok(stop);
                    }
                }
                _ = self.shutdown.changed() => return Ok(Stop::Shutdown),
            }
        }
    }
}

async fn connect(source: &RtmpUrl, options: &RelayOptions) -> Result<Connection, String> {
    let mut conn = Connection::connect(source, &options.client).await.map_err(|e| e.to_string())?;
    conn.play(&source.stream).await.map_err(|e| e.to_string())?;
    Ok(conn)
}
