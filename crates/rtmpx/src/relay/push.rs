//! One push relay: a router player that republishes its stream to one upstream.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use crate::logsafe::Escaped;
use rtmpx_client::{ClientEvent, Connection, RtmpUrl};
use rtmpx_router::{Frame, Player, PlayerEvent};
use tokio::sync::watch;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::{log_connected, log_retry, stream_url, Backoff, Direction, Headers, RelayOptions, Status};

/// Events forwarded before one flush.
const BATCH: usize = 64;

pub(super) struct PushJob {
    pub(super) player: Player,
    pub(super) app_url: RtmpUrl,
    pub(super) remote_name: String,
    pub(super) options: RelayOptions,
    pub(super) status: Status,
    pub(super) shutdown: watch::Receiver<bool>,
}

/// Why a connected push stopped without an error.
enum End {
    PublisherLeft,
    Shutdown,
}

/// The upstream connection a push is publishing on.
struct Upstream {
    conn: Connection,
    stream_id: u32,
    target: RtmpUrl,
}

/// A connect and publish in flight.
type Connecting = Pin<Box<dyn Future<Output = Result<(Connection, u32), String>> + Send>>;

impl PushJob {
    pub(super) async fn run(mut self) {
        let key = self.player.key().clone();
        let url = self.status.url();
        let mut target = stream_url(&self.app_url, &self.remote_name);
        let mut headers = Headers::default();
        let mut backoff = Backoff::new(self.options.backoff_initial, self.options.backoff_max);
        let mut attempt = 0u32;
        info!("relay push {} -> {url}: starting", Escaped(&key));
        let reason = loop {
            self.status.connecting();
            attempt += 1;
            let connect = connect(&target, &self.options);
            let outcome = tokio::select! {
                outcome = connect => outcome,
                () = drain_until_unpublished(&mut self.player, &mut headers) => break "publisher left",
                _ = self.shutdown.changed() => break "shutting down",
            };
            let error = match outcome {
                Ok((conn, stream_id)) => {
                    self.status.connected();
                    log_connected(
                        Direction::Push,
                        &key,
                        &url,
                        self.status.connections - 1,
                        target.scheme.as_str(),
                    );
                    let since = Instant::now();
                    let mut upstream = Upstream { conn, stream_id, target: target.clone() };
                    let result = self.forward(&mut upstream, &mut headers).await;
                    // A reconnect request may have moved the push: retries go where it went.
                    target = upstream.target.clone();
                    let Upstream { mut conn, stream_id, .. } = upstream;
                    self.status.connection_done(conn.bytes_out());
                    if since.elapsed() >= super::STABLE_CONNECTION {
                        backoff.reset();
                        attempt = 1;
                    }
                    match result {
                        Ok(end) => {
                            // A goodbye to the upstream, bounded: it may be the slow one.
                            let bye = async {
                                let _ = conn.close_stream(stream_id).await;
                                let _ = conn.close().await;
                            };
                            let _ = timeout(Duration::from_secs(2), bye).await;
                            break match end {
                                End::PublisherLeft => "publisher left",
                                End::Shutdown => "shutting down",
                            };
                        }
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            let delay = backoff.next_delay();
            self.status.retrying(&error);
            log_retry(Direction::Push, &key, &url, &error, delay, attempt);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = drain_until_unpublished(&mut self.player, &mut headers) => break "publisher left",
                _ = self.shutdown.changed() => break "shutting down",
            }
        };
        info!("relay push {} -> {url}: stopped ({})", Escaped(&key), Escaped(&reason));
    }

    /// Sends headers, then media from the next keyframe on, until the publisher leaves or the
    /// upstream fails. Timestamps restart near zero on each connection, and continue across a
    /// move after a reconnect request: the new connection publishes while the old one goes on,
    /// takes over at the next keyframe, and then the old one says goodbye (make-before-break).
    async fn forward(&mut self, upstream: &mut Upstream, headers: &mut Headers) -> Result<End, String> {
        let write_timeout = self.options.write_timeout;
        // An upstream that answered no Enhanced RTMP (nginx-rtmp) is served as a legacy player:
        // the default tracks, in legacy tags.
        let legacy = !upstream.conn.server_capabilities().is_enhanced();
        if legacy {
            let (key, url) = (self.player.key(), self.status.url());
            info!("relay push {key} -> {url}: the upstream is a legacy server, forwarding the default tracks only");
        }
        let for_upstream =
            |frame: &Frame| if legacy { frame.for_legacy_player() } else { Some(frame.clone()) };
        for frame in headers.all().iter().filter_map(for_upstream) {
            send(&mut upstream.conn, upstream.stream_id, &frame, 0, write_timeout).await?;
        }
        let mut awaiting_keyframe = true;
        let mut base: Option<u32> = None;
        let mut last_ts = 0u32;
        let mut moving: Option<Connecting> = None;
        // Connected and publishing at the new place, waiting for a keyframe to switch.
        let mut next: Option<Upstream> = None;
        let mut next_target: Option<RtmpUrl> = None;
        loop {
            tokio::select! {
                event = self.player.recv() => {
                    let mut event = event;
                    for _ in 0..BATCH {
                        let Some(current) = event.take() else { break };
                        match current {
                            PlayerEvent::Unpublished => return Ok(End::PublisherLeft),
                            PlayerEvent::PublishStarted => {}
                            PlayerEvent::Frame(frame) => {
                                let ts = base.map_or(0, |b| frame.timestamp.saturating_sub(b));
                                let is_header = headers.update(&frame);
                                let Some(frame) = for_upstream(&frame) else {
                                    event = self.player.try_recv();
                                    continue;
                                };
                                if is_header {
                                    send(&mut upstream.conn, upstream.stream_id, &frame, ts, write_timeout).await?;
                                } else if awaiting_keyframe && headers.has_video && !frame.is_keyframe() {
                                    // The upstream starts decodable: nothing before a keyframe.
                                } else {
                                    if next.is_some() && (frame.is_keyframe() || !headers.has_video) {
                                        self.switch(upstream, next.take().expect("checked"), headers, ts).await?;
                                    }
                                    awaiting_keyframe = false;
                                    let base = *base.get_or_insert(frame.timestamp);
                                    let ts = frame.timestamp.saturating_sub(base);
                                    last_ts = ts;
                                    send(&mut upstream.conn, upstream.stream_id, &frame, ts, write_timeout).await?;
                                }
                            }
                            _ => {}
                        }
                        event = self.player.try_recv();
                    }
                    timeout(write_timeout, upstream.conn.flush())
                        .await
                        .map_err(|_| "the upstream stopped reading".to_string())?
                        .map_err(|e| e.to_string())?;
                    self.status.bytes(upstream.conn.bytes_out());
                }
                event = upstream.conn.next_event() => match event {
                    Ok(None) | Err(_) if next.is_some() => {
                        // The old upstream went first: go on at the new place from a keyframe.
                        let new = next.take().expect("checked");
                        let old = std::mem::replace(upstream, new);
                        self.status.connection_done(old.conn.bytes_out());
                        self.status.connected();
                        let ts = last_ts;
                        for frame in headers.all().iter().filter_map(for_upstream) {
                            send(&mut upstream.conn, upstream.stream_id, &frame, ts, write_timeout).await?;
                        }
                        awaiting_keyframe = true;
                        info!(
                            "relay push {}: moved to {} (the old upstream closed first; reconnects={})",
                            self.player.key(),
                            super::redacted_url(&upstream.target),
                            self.status.connections - 1
                        );
                    }
                    Ok(None) => return Err("the upstream closed the connection".into()),
                    Err(e) => return Err(e.to_string()),
                    Ok(Some(ClientEvent::Rejected { code, description })) => {
                        return Err(format!("rejected: {code}: {description}"))
                    }
                    Ok(Some(ClientEvent::Status { code, description, .. })) => {
                        if code.contains("Failed") || code.contains("Error") || code.contains("BadName") {
                            return Err(format!("{code}: {description}"));
                        }
                        warn!(code = %Escaped(&code), description = %Escaped(&description), "relay push: status from the upstream");
                    }
                    Ok(Some(ClientEvent::ReconnectRequested(request))) => {
                        let key = self.player.key();
                        match upstream.target.reconnect_target(request.tc_url.as_deref()) {
                            _ if self.options.client.caps_ex & rtmpx_client::CAPS_EX_RECONNECT == 0 => {
                                info!("relay push {key}: reconnect request ignored (relay.follow_reconnect = false)");
                            }
                            Ok(_) if moving.is_some() || next.is_some() => {
                                debug!("relay push {key}: reconnect request while already moving: ignored");
                            }
                            Ok(new_target) => {
                                info!(
                                    "relay push {key}: the upstream asks to reconnect ({}) to {}: connecting there",
                                    request.description,
                                    super::redacted_url(&new_target)
                                );
                                moving = Some(Box::pin(connect_owned(new_target.clone(), self.options.clone())));
                                // Should this connection end first, retries go there too.
                                upstream.target = new_target.clone();
                                next_target = Some(new_target);
                            }
                            Err(e) => warn!("relay push {key}: reconnect request with a bad tcUrl: {e}"),
                        }
                    }
                    Ok(Some(_)) => {}
                },
                outcome = pending_connect(&mut moving) => {
                    moving = None;
                    let key = self.player.key();
                    let new_target = next_target.take().expect("set with moving");
                    match outcome {
                        Ok((conn, stream_id)) => {
                            info!("relay push {key}: publishing at {}, switching at the next keyframe", super::redacted_url(&new_target));
                            next = Some(Upstream { conn, stream_id, target: new_target });
                        }
                        Err(e) => {
                            // Stay; once this upstream goes, retries go to the new place.
                            warn!("relay push {key}: could not move to {}: {e}; staying", super::redacted_url(&new_target));
                        }
                    }
                }
                _ = self.shutdown.changed() => return Ok(End::Shutdown),
            }
        }
    }

    /// Makes `next` the upstream: headers, then (by the caller) the keyframe go there; the old
    /// connection unpublishes and closes in the background.
    async fn switch(
        &mut self,
        upstream: &mut Upstream,
        next: Upstream,
        headers: &Headers,
        timestamp: u32,
    ) -> Result<(), String> {
        // What the old connection holds goes out before the new one starts (an upstream that
        // takes the stream over ignores the old connection's frames from then on).
        let _ = timeout(self.options.write_timeout, upstream.conn.flush()).await;
        let old = std::mem::replace(upstream, next);
        self.status.connection_done(old.conn.bytes_out());
        self.status.connected();
        let write_timeout = self.options.write_timeout;
        let legacy = !upstream.conn.server_capabilities().is_enhanced();
        let headers = headers.all();
        let headers =
            headers
                .iter()
                .filter_map(|frame| if legacy { frame.for_legacy_player() } else { Some(frame.clone()) });
        for frame in headers {
            send(&mut upstream.conn, upstream.stream_id, &frame, timestamp, write_timeout).await?;
        }
        info!(
            "relay push {}: moved to {} (reconnects={})",
            self.player.key(),
            super::redacted_url(&upstream.target),
            self.status.connections - 1
        );
        let Upstream { mut conn, stream_id, .. } = old;
        tokio::spawn(async move {
            let bye = async {
                let _ = conn.close_stream(stream_id).await;
                let _ = conn.close().await;
            };
            let _ = timeout(Duration::from_secs(2), bye).await;
        });
        Ok(())
    }
}

async fn connect_owned(target: RtmpUrl, options: RelayOptions) -> Result<(Connection, u32), String> {
    connect(&target, &options).await
}

/// The connect in flight, or never.
async fn pending_connect(moving: &mut Option<Connecting>) -> Result<(Connection, u32), String> {
    match moving {
        Some(connecting) => connecting.await,
        None => std::future::pending().await,
    }
}

async fn connect(target: &RtmpUrl, options: &RelayOptions) -> Result<(Connection, u32), String> {
    let mut conn = Connection::connect(target, &options.client).await.map_err(|e| e.to_string())?;
    let stream_id = conn.publish(&target.stream).await.map_err(|e| e.to_string())?;
    Ok((conn, stream_id))
}

async fn send(
    conn: &mut Connection,
    stream_id: u32,
    frame: &Frame,
    timestamp: u32,
    write_timeout: Duration,
) -> Result<(), String> {
    let kind = frame.kind;
    timeout(write_timeout, conn.send(stream_id, kind, timestamp, &frame.payload))
        .await
        .map_err(|_| "the upstream stopped reading".to_string())?
        .map_err(|e| e.to_string())
}

/// Takes the player's events while not connected (media is dropped, headers kept) and returns
/// when the publisher leaves.
async fn drain_until_unpublished(player: &mut Player, headers: &mut Headers) {
    loop {
        match player.recv().await {
            Some(PlayerEvent::Unpublished) | None => return,
            Some(PlayerEvent::Frame(frame)) => {
                headers.update(&frame);
            }
            Some(_) => {}
        }
    }
}
