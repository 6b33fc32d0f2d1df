//! One push relay: a router player that republishes its stream to one upstream.

use std::time::{Duration, Instant};

use rtmpx_client::{ClientEvent, Connection, MediaKind, RtmpUrl};
use rtmpx_router::{Frame, FrameKind, Player, PlayerEvent};
use tokio::sync::watch;
use tokio::time::timeout;
use tracing::{info, warn};

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

impl PushJob {
    pub(super) async fn run(mut self) {
        let key = self.player.key().clone();
        let url = self.status.url();
        let target = stream_url(&self.app_url, &self.remote_name);
        let mut headers = Headers::default();
        let mut backoff = Backoff::new(self.options.backoff_initial, self.options.backoff_max);
        let mut attempt = 0u32;
        info!("relay push {key} -> {url}: starting");
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
                Ok((mut conn, stream_id)) => {
                    self.status.connected();
                    log_connected(
                        Direction::Push,
                        &key,
                        &url,
                        self.status.connections - 1,
                        target.scheme.as_str(),
                    );
                    let since = Instant::now();
                    let result = self.forward(&mut conn, stream_id, &mut headers).await;
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
        info!("relay push {key} -> {url}: stopped ({reason})");
    }

    /// Sends headers, then media from the next keyframe on, until the publisher leaves or the
    /// upstream fails. Timestamps restart near zero on each connection.
    async fn forward(
        &mut self,
        conn: &mut Connection,
        stream_id: u32,
        headers: &mut Headers,
    ) -> Result<End, String> {
        let write_timeout = self.options.write_timeout;
        // An upstream that answered no Enhanced RTMP (nginx-rtmp) is served as a legacy player:
        // the default tracks, in legacy tags.
        let legacy = !conn.server_capabilities().is_enhanced();
        if legacy {
            let (key, url) = (self.player.key(), self.status.url());
            info!("relay push {key} -> {url}: the upstream is a legacy server, forwarding the default tracks only");
        }
        let for_upstream =
            |frame: &Frame| if legacy { frame.for_legacy_player() } else { Some(frame.clone()) };
        for frame in headers.all().iter().filter_map(for_upstream) {
            send(conn, stream_id, &frame, 0, write_timeout).await?;
        }
        let mut awaiting_keyframe = true;
        let mut base: Option<u32> = None;
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
                                let is_header = headers.update(&frame);
                                let Some(frame) = for_upstream(&frame) else {
                                    event = self.player.try_recv();
                                    continue;
                                };
                                if is_header {
                                    let ts = base.map_or(0, |b| frame.timestamp.saturating_sub(b));
                                    send(conn, stream_id, &frame, ts, write_timeout).await?;
                                } else if awaiting_keyframe && headers.has_video && !frame.is_keyframe() {
                                    // The upstream starts decodable: nothing before a keyframe.
                                } else {
                                    awaiting_keyframe = false;
                                    let base = *base.get_or_insert(frame.timestamp);
                                    let ts = frame.timestamp.saturating_sub(base);
                                    send(conn, stream_id, &frame, ts, write_timeout).await?;
                                }
                            }
                        }
                        event = self.player.try_recv();
                    }
                    timeout(write_timeout, conn.flush())
                        .await
                        .map_err(|_| "the upstream stopped reading".to_string())?
                        .map_err(|e| e.to_string())?;
                    self.status.bytes(conn.bytes_out());
                }
                event = conn.next_event() => match event {
                    Ok(None) => return Err("the upstream closed the connection".into()),
                    Err(e) => return Err(e.to_string()),
                    Ok(Some(ClientEvent::Rejected { code, description })) => {
                        return Err(format!("rejected: {code}: {description}"))
                    }
                    Ok(Some(ClientEvent::Status { code, description, .. })) => {
                        if code.contains("Failed") || code.contains("Error") || code.contains("BadName") {
                            return Err(format!("{code}: {description}"));
                        }
                        warn!(%code, %description, "relay push: status from the upstream");
                    }
                    Ok(Some(_)) => {}
                },
                _ = self.shutdown.changed() => return Ok(End::Shutdown),
            }
        }
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
    let kind = match frame.kind {
        FrameKind::Audio => MediaKind::Audio,
        FrameKind::Video => MediaKind::Video,
        FrameKind::Metadata => MediaKind::Data,
    };
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
            Some(PlayerEvent::PublishStarted) => {}
        }
    }
}
