//! HTTP-FLV and WebSocket-FLV players: `GET /app/stream.flv` on the ports that serve RTMPT.
//!
//! A player is a router subscription whose frames become FLV tags ([`rtmpx_core::flv`]):
//! [`http`] streams them as a never-ending response body, [`ws`] as binary WebSocket messages.
//! Authorisation, limits, the slow-player queue, the registry, metrics and the session log line
//! are the RTMP player's, through [`FlvSession`].

pub mod deadline;
pub mod direct;
pub mod http;
pub mod ws;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtmpx_core::flv::{FlvWriter, TagKind};
use rtmpx_core::session::ConnectRequest;
use rtmpx_router::{MediaKind, Player, PlayerEvent, SessionInfo, StreamKey};
use tracing::{info, warn};

use crate::auth::{self, Grant};
use crate::budget::{OverBudget, QueueCharge};
use crate::error::Error;
use crate::metrics::{Denial, Role, Variant};
use crate::registry::SessionGuard;
use crate::session::{pull_if_not_live, SessionContext, Transport};

/// Output gathered before one write (one WebSocket message, or before the body yields).
pub const WRITE_BATCH: usize = 64 * 1024;

/// Resolves once the gateway is shutting down (at once if it already is).
pub async fn shutting_down(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|down| *down).await.is_ok();
}

/// Whether the cluster directory has `key` on another node (then it is pulled here, not a 404).
async fn published_on_another_node(ctx: &SessionContext, key: &StreamKey) -> bool {
    match &ctx.cluster {
        Some(cluster) => matches!(cluster.locate(key).await, Ok(Some(_))),
        None => false,
    }
}

/// `/app/stream.flv` → (`app`, `stream`); `None` for any other path.
pub fn route(path: &str) -> Option<(&str, &str)> {
    let (app, file) = path.strip_prefix('/')?.split_once('/')?;
    let stream = file.strip_suffix(".flv")?;
    let valid = |s: &str| !s.is_empty() && !s.contains('/') && s.len() <= 256;
    (valid(app) && valid(stream)).then_some((app, stream))
}

/// The variant of a player on `transport`: `http-flv`, `https-flv`, `ws-flv` or `wss-flv`.
pub fn variant(transport: Transport, websocket: bool) -> Variant {
    let tls = matches!(transport, Transport::Tls | Transport::HttpTls);
    match (tls, websocket) {
        (false, false) => Variant::HttpFlv,
        (true, false) => Variant::HttpsFlv,
        (false, true) => Variant::WsFlv,
        (true, true) => Variant::WssFlv,
    }
}

/// What the HTTP request said about the player, for authorisation and callbacks.
pub struct PlayRequest<'a> {
    pub app: &'a str,
    /// The stream name with the request's query (`name?key=...`), as an RTMP play carries it.
    pub stream: String,
    /// `http://host/app` (for `tcurl` in callbacks).
    pub tc_url: String,
    pub page_url: Option<String>,
    pub user_agent: Option<String>,
}

/// Why a player was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such app, or the stream is not live (and players do not wait).
    NotFound,
    /// Authorisation or a limit said no.
    Forbidden,
}

/// One FLV player: its router subscription, limit slot, registry entry and log line.
pub struct FlvSession {
    ctx: Arc<SessionContext>,
    id: u64,
    peer: SocketAddr,
    variant: Variant,
    started: Instant,
    stream: String,
    registry: SessionGuard,
    player: Option<Player>,
    /// Holds the player's limit slot; dropping it sends `on_play_done` when configured.
    grant: Option<Grant>,
    writer: FlvWriter,
    /// `timeouts.unpublished_play_secs` when the player was opened (zero: waits for ever).
    unpublished_play: Duration,
    /// Tracks to announce in the FLV header (from the stream's codecs when it is live).
    tracks: (bool, bool),
    bytes_in: u64,
    bytes_out: u64,
    /// How it ended, for the log line; `None` is a normal close.
    end: Option<Error>,
    /// Set when the player's queue could not be billed to its address (then emptied).
    queue_refused: Arc<OnceLock<OverBudget>>,
}

impl FlvSession {
    /// Authorises the play and subscribes to the stream (unless `subscribe` is false: HEAD).
    pub async fn open(
        ctx: &Arc<SessionContext>,
        peer: SocketAddr,
        variant: Variant,
        request: PlayRequest<'_>,
        subscribe: bool,
    ) -> Result<FlvSession, Refusal> {
        let id = ctx.next_session_id();
        let registry = SessionGuard::open(&ctx.sessions, id, peer, variant);
        registry.handshake_complete(variant);
        let name = auth::query::split_name(&request.stream).0.to_owned();
        let mut session = FlvSession {
            ctx: ctx.clone(),
            id,
            peer,
            variant,
            started: Instant::now(),
            stream: format!("{}/{name}", request.app),
            registry,
            player: None,
            grant: None,
            writer: FlvWriter::new(),
            unpublished_play: Duration::ZERO,
            tracks: (true, true),
            bytes_in: 0,
            bytes_out: 0,
            queue_refused: Arc::default(),
            end: None,
        };
        let config = ctx.config();
        let connect = ConnectRequest {
            app: request.app.to_owned(),
            tc_url: Some(request.tc_url.clone()),
            flash_ver: request.user_agent.clone(),
            swf_url: None,
            page_url: request.page_url.clone(),
            object_encoding: 0.0,
            properties: Default::default(),
        };
        let client = match ctx.auth.connect(&config, id, peer, &connect).await {
            Ok(client) => client,
            Err(denial) => {
                let missing = config.app(auth::normalize_app(request.app)).is_none();
                warn!(session = id, %peer, variant = variant.name(), app = request.app, "connect rejected: {}", denial.reason);
                ctx.metrics.denied(Denial::Connect);
                session.end = Some(Error::Denied(denial.reason));
                return Err(if missing { Refusal::NotFound } else { Refusal::Forbidden });
            }
        };
        session.registry.entry().set_app(&client.app);
        // HTTP players start at once at the live edge: RTMP's `start = -2, duration = -1`.
        let live_edge = rtmpx_core::session::PlayRequest::from_args(None, None, Some(false));
        let grant = match ctx.auth.play(&config, &client, &request.stream, live_edge).await {
            Ok(grant) => grant,
            Err(denial) => {
                warn!(session = id, %peer, variant = variant.name(), stream = %session.stream, code = %denial.code, "play denied: {}", denial.reason);
                ctx.metrics.denied(Denial::Play);
                session.end = Some(Error::Denied(denial.reason));
                return Err(Refusal::Forbidden);
            }
        };
        let key = StreamKey::new(&client.app, &grant.name);
        session.stream = key.to_string();
        let pulled = config.app(&client.app).is_some_and(|app| app.relays.pull.is_some());
        let waits = config.http_flv.wait_for_publisher || pulled;
        if !waits && !ctx.router.is_live(&key) && !published_on_another_node(ctx, &key).await {
            grant.cancel();
            session.end = Some(Error::Kicked("the stream is not live"));
            return Err(Refusal::NotFound);
        }
        if !subscribe {
            grant.cancel();
            return Ok(session);
        }
        if let Some(snapshot) = ctx.router.streams().into_iter().find(|s| s.key == key) {
            if snapshot.video_codec.is_some() || snapshot.audio_codec.is_some() {
                session.tracks = (snapshot.audio_codec.is_some(), snapshot.video_codec.is_some());
            }
        }
        session.unpublished_play = config.timeouts.unpublished_play;
        let info = SessionInfo { id, peer: peer.to_string(), variant: variant.name() };
        let player = ctx.router.play(key.clone(), info);
        // What its queue holds counts against the address, as for RTMP players.
        let (charge, refused) =
            QueueCharge::new(ctx.budgets.charge(peer.ip()), config.limits.max_memory_per_ip);
        player.set_memory_charge(Box::new(charge));
        session.queue_refused = refused;
        session.player = Some(player);
        session.grant = Some(grant);
        session.registry.entry().set_role(Role::Player, &key.name);
        info!(session = id, %peer, variant = variant.name(), stream = %crate::logsafe::Escaped(&key), "playing");
        pull_if_not_live(ctx, &config, &key);
        Ok(session)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn player(&mut self) -> Option<&mut Player> {
        self.player.as_mut()
    }

    /// The registry entry (kicks, counters), shareable with futures that outlive a borrow.
    pub fn entry(&self) -> Arc<crate::registry::SessionEntry> {
        self.registry.shared_entry()
    }

    pub fn context(&self) -> &Arc<SessionContext> {
        &self.ctx
    }

    /// Records how the session ended (the first reason wins).
    pub fn end(&mut self, why: Error) {
        self.end.get_or_insert(why);
    }

    /// When this player, waiting for a publisher, is to be closed ([`Self::wait_expired`]), as an
    /// RTMP player is after `timeouts.unpublished_play_secs`: each one holds a connection.
    pub fn wait_deadline(&self) -> Option<Instant> {
        let since = self.player.as_ref()?.unpublished_since()?;
        (!self.unpublished_play.is_zero()).then(|| since + self.unpublished_play)
    }

    /// Ends a player whose stream was not published in time.
    pub fn wait_expired(&mut self) {
        self.end(Error::Timeout("the stream was not published"));
    }

    pub fn add_in(&mut self, n: usize) {
        self.bytes_in += n as u64;
        self.registry.entry().add_in(n);
    }

    /// Turns queued router events into FLV pieces in `out`, up to about [`WRITE_BATCH`] bytes.
    /// Returns false when the stream ended (its publisher left) or its queue went over the
    /// address's memory budget: the player is done.
    pub fn take_queued(&mut self, out: &mut VecDeque<Bytes>) -> bool {
        if let Some(over) = self.queue_refused.get().copied() {
            warn!(session = self.id, peer = %self.peer, "{over} (frames queued for a player that is not reading)");
            self.end(over.into());
            return false;
        }
        let mut produced = 0;
        while produced < WRITE_BATCH {
            let Some(event) = self.player.as_mut().and_then(Player::try_recv) else { break };
            match self.encode(event, out) {
                Some(n) => produced += n,
                None => return false,
            }
        }
        if let Some(player) = &self.player {
            self.registry.entry().set_dropped_frames(player.dropped_frames());
        }
        true
    }

    /// Encodes one event; `None` when it ends the stream.
    fn encode(&mut self, event: PlayerEvent, out: &mut VecDeque<Bytes>) -> Option<usize> {
        let frame = match event {
            PlayerEvent::PublishStarted => return Some(0),
            PlayerEvent::Unpublished => {
                // A new publisher may change codecs mid-file, which FLV players do not follow:
                // they reconnect instead.
                self.end(Error::Kicked("the stream was unpublished"));
                return None;
            }
            PlayerEvent::Frame(frame) => frame,
            _ => return Some(0),
        };
        let mut n = 0;
        if !self.writer.started() {
            let header = self.writer.header(self.tracks.0, self.tracks.1);
            n += header.len();
            out.push_back(header);
        }
        let kind = match frame.kind {
            MediaKind::Audio => TagKind::Audio,
            MediaKind::Video => TagKind::Video,
            MediaKind::Data => TagKind::Script,
        };
        n += self.writer.tag(kind, frame.timestamp, &frame.payload, out);
        self.bytes_out += n as u64;
        self.registry.entry().add_out(n);
        Some(n)
    }
}

impl Drop for FlvSession {
    fn drop(&mut self) {
        // Leave the router before `on_play_done` goes out (the grant drops after this).
        self.player = None;
        let reason = self.end.as_ref().map_or_else(|| "closed".to_string(), Error::to_string);
        let role = if self.grant.is_some() { Role::Player } else { Role::None }.name();
        let line = format!(
            "session {} closed: peer={} variant={} handshake=- stream={} role={role} in={}B out={}B duration={:.1}s reason={reason}",
            self.id,
            self.peer,
            self.variant,
            self.stream,
            self.bytes_in,
            self.bytes_out,
            self.started.elapsed().as_secs_f64(),
        );
        match &self.end {
            None | Some(Error::Kicked(_)) => info!("{line}"),
            Some(_) => warn!("{line}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/live/cam.flv"), Some(("live", "cam")));
        assert_eq!(route("/live/a.b.flv"), Some(("live", "a.b")));
        for bad in
            ["/live/cam", "/live/.flv", "//cam.flv", "/live/x/cam.flv", "/cam.flv", "/", "live/cam.flv"]
        {
            assert_eq!(route(bad), None, "{bad}");
        }
    }

    #[test]
    fn variants() {
        assert_eq!(variant(Transport::Tcp, false), Variant::HttpFlv);
        assert_eq!(variant(Transport::Http, true), Variant::WsFlv);
        assert_eq!(variant(Transport::Tls, false), Variant::HttpsFlv);
        assert_eq!(variant(Transport::HttpTls, true), Variant::WssFlv);
    }
}
