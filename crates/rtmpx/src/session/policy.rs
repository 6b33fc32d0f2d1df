//! What the gateway decides on the session's requests: connect, publish and play go through
//! authorisation, the router, relays and the cluster; refusals are told to the client and logged.

use std::sync::Arc;

use rtmpx_core::session::{
    ConnectRequest, MediaKind, PlayRequest, PublishMode, ServerEvent, ServerSession, CAPS_EX_RECONNECT,
};
use rtmpx_router::{Frame, PlayOptions, PlayerEvent, StreamKey};
use tracing::{debug, info, trace, warn};

use super::direct::DirectPlayer;
use super::io::{deliver, SessionIo};
use super::{seal_pairing, Connection, NodePull, Playing, Publishing, SessionContext};
use crate::auth::{self, Action};
use crate::budget::QueueCharge;
use crate::error::{Error, Result};
use crate::fan_out::{Batching, FanOut};
use crate::logsafe::Escaped;
use crate::metrics::{Denial, Role};
use crate::task;

pub(super) async fn handle_event(
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
        // Connect, publish and play are rare and their futures large (they may wait for HTTP
        // callbacks): boxed, so the session's own future stays small (memory per idle player).
        ServerEvent::ConnectRequested(request) => {
            task::boxed(|| on_connect(request, out, conn, ctx, connected)).await?
        }
        ServerEvent::PublishRequested { stream_id, stream_name, mode } => {
            task::boxed(|| on_publish(stream_id, &stream_name, mode, out, conn, ctx)).await?
        }
        ServerEvent::PlayRequested { stream_id, stream_name, request } => {
            task::boxed(|| on_play(stream_id, &stream_name, request, out, conn, ctx)).await?
        }
        ServerEvent::Media(media) => {
            if let Some(p) = &mut conn.publishing {
                if p.stream_id == media.stream_id {
                    let frame = match media.kind {
                        MediaKind::Audio => Frame::audio(media.timestamp, media.payload),
                        MediaKind::Video => Frame::video(media.timestamp, media.payload),
                        MediaKind::Data => Frame::metadata(media.timestamp, media.payload),
                    };
                    p.fan_out.offer(&p.publisher, frame).await;
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
        ServerEvent::Unknown { stream_id, type_id, len } => {
            trace!(session = conn.id, stream_id, type_id, len, "skipped a message of an unhandled type");
        }
        _ => {}
    }
    Ok(())
}

async fn on_connect(
    request: ConnectRequest,
    out: &Arc<SessionIo>,
    conn: &mut Connection,
    ctx: &SessionContext,
    connected: &mut bool,
) -> Result<()> {
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
        return refuse_second(Action::Publish, stream_id, stream_name, out, conn);
    }
    let config = ctx.config();
    let Some(client) = conn.client.as_ref() else {
        return Err(Error::Denied("publish before connect".into()));
    };
    let grant = match ctx.auth.publish(&config, client, stream_name, mode).await {
        Ok(grant) => grant,
        Err(denial) => {
            return deny(&mut out.lock().session, conn, ctx, stream_id, Action::Publish, stream_name, denial)
        }
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
            conn.role = Role::Publisher;
            conn.registry.entry().set_role(Role::Publisher, &key.name);
            conn.stream_name = Some(key.name.clone());
            let fan_out = FanOut::new(Batching::new(&config.server, ctx.load.clone()), seal_pairing::scope);
            let takeover = publisher.is_takeover();
            conn.publishing =
                Some(Box::new(Publishing { stream_id, publisher, fan_out, _grant: grant, _claim: claim }));
            if takeover {
                // A reconnecting client: it replaces the live publisher at its first keyframe, and
                // the stream's pushes go on.
                info!(session = conn.id, peer = %conn.peer, variant = conn.variant().name(), stream = %Escaped(&key), "publishing (taking over from the reconnecting publisher)");
            } else {
                info!(session = conn.id, peer = %conn.peer, variant = conn.variant().name(), stream = %Escaped(&key), "publishing");
                // Relays: republish to the app's push upstreams (pulled streams never come here).
                ctx.relays.start_pushes(&ctx.router, &config, &key);
            }
        }
        Err(_) => {
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
    request: PlayRequest,
    out: &Arc<SessionIo>,
    conn: &mut Connection,
    ctx: &SessionContext,
) -> Result<()> {
    let app = conn.app.clone().unwrap_or_default();
    if conn.playing.is_some() {
        return refuse_second(Action::Play, stream_id, stream_name, out, conn);
    }
    let config = ctx.config();
    let Some(client) = conn.client.as_ref() else { return Err(Error::Denied("play before connect".into())) };
    let grant = match ctx.auth.play(&config, client, stream_name, request).await {
        Ok(grant) => grant,
        Err(denial) => {
            return deny(&mut out.lock().session, conn, ctx, stream_id, Action::Play, stream_name, denial)
        }
    };
    let key = StreamKey::new(&app, &grant.name);
    // A player that announced no Enhanced RTMP gets only the tracks and tags it can parse.
    let legacy = !out.lock().session.peer_capabilities().is_enhanced();
    let mut player =
        ctx.router.play_with(key.clone(), conn.info(), PlayOptions::default().with_legacy(legacy));
    // What its queue holds counts against the address (a refusal closes it in the driver).
    let (charge, queue_refused) =
        QueueCharge::new(ctx.budgets.charge(conn.peer.ip()), config.limits.max_memory_per_ip);
    player.set_memory_charge(Box::new(charge));
    {
        let mut st = out.lock();
        st.session.accept_play(stream_id, &key.name)?;
        // A live stream announces itself at once and needs no PublishNotify; anything else that
        // is already queued is delivered as usual.
        match player.try_recv() {
            Some(PlayerEvent::PublishStarted) | None => {}
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
    conn.role = Role::Player;
    conn.registry.entry().set_role(Role::Player, &key.name);
    conn.stream_name = Some(key.name.clone());
    conn.playing = Some(Playing { stream_id, player, _grant: grant, queue_refused });
    info!(session = conn.id, peer = %conn.peer, variant = conn.variant().name(), stream = %Escaped(&key), legacy, "playing");
    pull_if_not_live(ctx, &config, &key);
    Ok(())
}

/// A player's stream that is not live here is pulled from the app's upstream, if it has one, or
/// else from the cluster node that publishes it.
pub(crate) fn pull_if_not_live(ctx: &SessionContext, config: &Arc<crate::config::Config>, key: &StreamKey) {
    ctx.relays.ensure_pull(&ctx.router, config, key);
    pull_from_cluster(ctx, config, key);
}

/// Cluster: a stream that is not live here (nor pulled from a configured upstream) is looked up
/// in the directory and pulled from its node, in a task of its own so the play never waits.
/// While players of it wait here (not published anywhere yet, or its pull ended because the
/// publisher left), it is looked up again every heartbeat, so a publish on any node reaches them;
/// one loop per stream, ending when its last player leaves.
fn pull_from_cluster(ctx: &SessionContext, config: &Arc<crate::config::Config>, key: &StreamKey) {
    let Some(cluster) = ctx.cluster.clone() else { return };
    let static_pull = config.app(&key.app).is_some_and(|app| app.relays.pull.is_some());
    if static_pull || ctx.router.is_live(key) || ctx.relays.is_pulling(key) {
        return;
    }
    let Some(waiting) = cluster.wait_for(key) else { return };
    let (router, relays, config, key) = (ctx.router.clone(), ctx.relays.clone(), config.clone(), key.clone());
    tokio::spawn(async move {
        let _waiting = waiting;
        let mut heartbeat = tokio::time::interval(cluster.heartbeat_interval());
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut looked_up = false;
        loop {
            // The first tick is at once: the first look-up does not wait.
            heartbeat.tick().await;
            if router.player_count(&key) == 0 {
                return;
            }
            if router.is_live(&key) || relays.is_pulling(&key) {
                continue;
            }
            // While Redis is away the look-up fails closed; the first one says so in the log.
            if looked_up && !cluster.redis_up() {
                continue;
            }
            looked_up = true;
            if let Ok(Some(owner)) = cluster.locate(&key).await {
                let origin = cluster.follow(&key, &owner);
                relays.ensure_cluster_pull(
                    &router,
                    &config,
                    &key,
                    NodePull { owner: origin, linger: cluster.linger() },
                );
            }
        }
    });
}

/// A second publish (or play) on one connection is refused; the session goes on.
fn refuse_second(
    action: Action,
    stream_id: u32,
    stream_name: &str,
    out: &SessionIo,
    conn: &Connection,
) -> Result<()> {
    let (app, stream) = (conn.app.as_deref().unwrap_or_default(), auth::query::split_name(stream_name).0);
    let doing = match action {
        Action::Publish => "publishing",
        Action::Play => "playing",
    };
    warn!(session = conn.id, peer = %conn.peer, app = %Escaped(app), stream = %Escaped(stream), "{} rejected: already {doing}", action.name());
    let mut io = out.lock();
    match action {
        Action::Publish => {
            io.session.reject_publish(stream_id, "NetStream.Publish.BadName", "Already publishing.")?
        }
        Action::Play => io.session.reject_play(stream_id, "NetStream.Play.Failed", "Already playing.")?,
    }
    Ok(())
}

/// Tells the client why (`onStatus` error), logs the reason, and ends the session: a client
/// guessing keys or tokens pays a new connection and handshake per attempt.
fn deny(
    session: &mut ServerSession,
    conn: &Connection,
    ctx: &SessionContext,
    stream_id: u32,
    action: Action,
    stream_name: &str,
    denial: auth::Denial,
) -> Result<()> {
    let (what, name) = (action.name(), auth::query::split_name(stream_name).0);
    let app = conn.app.as_deref().unwrap_or("-");
    warn!(session = conn.id, peer = %conn.peer, variant = %conn.variant(), stream = %Escaped(format_args!("{app}/{name}")), code = %denial.code, "{what} denied: {}", Escaped(&denial.reason));
    match action {
        Action::Publish => {
            ctx.metrics.denied(Denial::Publish);
            session.reject_publish(stream_id, denial.code, &denial.reason)?;
        }
        Action::Play => {
            ctx.metrics.denied(Denial::Play);
            session.reject_play(stream_id, denial.code, &denial.reason)?;
        }
    }
    Err(Error::Denied(denial.reason))
}
