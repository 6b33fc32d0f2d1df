//! Graceful drain on SIGTERM/SIGINT.
//!
//! First, clients that follow Enhanced RTMP reconnect requests are asked to move (to
//! `server.reconnect_url`, or where they are); they reconnect and leave on their own.
//! The listeners close at once (new connections are refused). Publishers go on, and players go
//! on while their stream is live, for up to `server.shutdown_grace_secs`; sessions with nothing
//! (left) to do are closed along the way: connections that neither publish nor play, players
//! whose stream ended, publishers that unpublished. When the grace period ends, or on a second
//! signal, every remaining session is told goodbye and closed.

use std::time::Duration;

use rtmpx_router::StreamKey;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::config::Config;
use crate::metrics::Role;
use crate::registry::ReconnectOrder;
use crate::session::SessionContext;
use crate::shutdown;

/// How often idle sessions are looked for while draining.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// How long the goodbyes may take after the grace period.
const GOODBYE_TIME: Duration = Duration::from_secs(3);

const DRAIN_REASON: &str = "gateway shutting down";

/// Closes sessions that have nothing to finish; returns how many were asked to close.
fn close_idle_sessions(ctx: &SessionContext) -> usize {
    let mut closed = 0;
    for entry in ctx.sessions.entries() {
        let state = entry.state();
        let busy = match (state.role, &state.app, &state.stream) {
            (Role::Publisher | Role::Player, Some(app), Some(stream)) => {
                ctx.router.is_live(&StreamKey::new(app, stream))
            }
            _ => false,
        };
        if !busy {
            entry.kick(DRAIN_REASON);
            closed += 1;
        }
    }
    closed
}

/// Asks every client that follows Enhanced RTMP reconnect requests to move (to
/// `server.reconnect_url`, or where it is): they connect anew and then leave, before the drain
/// has to close anyone. Returns how many were asked.
fn request_reconnects(ctx: &SessionContext, config: &Config) -> usize {
    let mut asked = 0;
    for entry in ctx.sessions.entries().iter().filter(|e| e.reconnect_capable()) {
        let app = entry.state().app.unwrap_or_default();
        let tc_url = config.server.reconnect_tc_url(&app);
        entry.request_reconnect(ReconnectOrder { tc_url, description: DRAIN_REASON.into() });
        asked += 1;
    }
    asked
}

pub async fn drain(
    ctx: &SessionContext,
    sessions: &mut JoinSet<()>,
    mut accept_tasks: JoinSet<()>,
    shutdown: &watch::Sender<bool>,
) {
    accept_tasks.shutdown().await;
    let config = ctx.config();
    let asked = request_reconnects(ctx, &config);
    if asked > 0 {
        info!(
            sessions = asked,
            to = config.server.reconnect_url.as_deref().unwrap_or("(the URL each used)"),
            "draining: asked the clients that follow Enhanced RTMP reconnect requests to move"
        );
    }
    let grace = config.server.shutdown_grace;
    let live = ctx.sessions.entries().len();
    if live > 0 {
        // On the terminal too, not only in the log: whoever pressed Ctrl-C is waiting.
        eprintln!(
            "rtmpx: stopping; {live} session(s) may finish for up to {}s. Press Ctrl-C again to stop at once.",
            grace.as_secs()
        );
    }
    info!(
        sessions = ctx.sessions.entries().len(),
        "draining: listeners closed; publishers and players of live streams may go on for up to {}s \
         (send the signal again to stop at once)",
        grace.as_secs()
    );
    let deadline = tokio::time::Instant::now() + grace;
    let again = shutdown::signalled();
    tokio::pin!(again);
    let mut check = tokio::time::interval(CHECK_EVERY);
    // Sessions are in the registry; RTMPT sessions run outside `sessions` (their HTTP
    // connections are in it, and close once the shutdown signal goes out).
    while !ctx.sessions.is_empty() {
        tokio::select! {
            _ = check.tick() => {
                close_idle_sessions(ctx);
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = tokio::time::sleep_until(deadline) => {
                warn!(left = ctx.sessions.entries().len(), "grace period over: closing the remaining sessions");
                break;
            }
            _ = &mut again => {
                warn!(left = ctx.sessions.entries().len(), "second signal: closing the remaining sessions now");
                break;
            }
        }
    }
    let _ = shutdown.send(true);
    let goodbyes = tokio::time::timeout(GOODBYE_TIME, async {
        while sessions.join_next().await.is_some() {}
        while !ctx.sessions.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    if goodbyes.await.is_err() {
        warn!(left = sessions.len(), "dropping connections that did not close in time");
        sessions.shutdown().await;
    }
}
