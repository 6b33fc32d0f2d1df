//! The running gateway: shared state, listeners, connection limits and shutdown.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtmpx_router::{Router, RouterConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::admin;
use crate::config::{Config, ListenerConfig, Proto};
use crate::error::{Error, Result};
use crate::metrics::{Denial, HandshakeFailure, Metrics};
use crate::registry::Registry;
use crate::relay::{RelayManager, RelayState};
use crate::reload::Reloader;
use crate::session::{Origin, Transport};
use crate::tls::{self, TlsAcceptor};
use crate::tunnel::{self, SessionTable};

/// State every session and listener shares.
pub struct Shared {
    pub router: Router,
    config: Mutex<Arc<Config>>,
    next_id: AtomicU64,
    shutdown: watch::Receiver<bool>,
    connections: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// RTMPT/RTMPTS sessions of every listener.
    pub tunnels: SessionTable,
    /// Push and pull relays.
    pub relays: RelayManager,
    /// Counters for `/metrics` (ops).
    pub metrics: Metrics,
    /// Live sessions for the admin API (ops).
    pub sessions: Registry,
    /// Publish/play authorisation and per-app/per-stream limits.
    pub auth: crate::auth::Gate,
    /// Whether fan-out batches its writes now (workers busy).
    pub load: Arc<crate::load::Load>,
    /// The Redis stream directory shared with other nodes (`[cluster]`).
    pub cluster: Option<crate::cluster::Cluster>,
}

impl Shared {
    pub fn new(config: Arc<Config>, shutdown: watch::Receiver<bool>) -> Shared {
        let load = Arc::<crate::load::Load>::default();
        let router = Router::new(router_config(&config));
        // The section was validated with the configuration; starting only fails outside a runtime.
        let cluster = config.cluster.as_ref().and_then(|section| {
            crate::cluster::Cluster::start(section, router.clone(), shutdown.clone())
                .map_err(|e| tracing::error!("cluster disabled: {e}"))
                .ok()
        });
        let tunnel_tag = config.cluster.as_ref().and_then(|c| c.tunnel_tag_byte());
        Shared {
            router,
            cluster,
            config: Mutex::new(config),
            next_id: AtomicU64::new(1),
            shutdown: shutdown.clone(),
            connections: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            tunnels: SessionTable::with_tag(tunnel_tag),
            metrics: Metrics::default(),
            sessions: Registry::default(),
            load: load.clone(),
            auth: crate::auth::Gate::new(),
            relays: RelayManager::new(shutdown, load),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.lock().expect("config lock").clone()
    }

    /// Swaps in a validated configuration (reload); sessions read it at their next decision.
    pub fn replace_config(&self, config: Arc<Config>) {
        *self.config.lock().expect("config lock") = config;
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// Every running relay (for stats): direction, redacted URL, state, bytes, last error.
    pub fn relay_states(&self) -> Vec<RelayState> {
        self.relays.states()
    }

    /// Counts a new connection against the limits; `None` when a limit is hit.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admission> {
        let limits = self.config().limits.clone();
        let total = self.connections.fetch_add(1, Ordering::AcqRel) + 1;
        if total > limits.max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            self.metrics.denied(Denial::ConnectionLimit);
            warn!(%ip, limit = limits.max_connections, "connection refused: max_connections reached");
            return None;
        }
        let mut per_ip = self.per_ip.lock().expect("per-ip lock");
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= limits.max_connections_per_ip {
            drop(per_ip);
            self.connections.fetch_sub(1, Ordering::AcqRel);
            self.metrics.denied(Denial::ConnectionLimit);
            warn!(%ip, limit = limits.max_connections_per_ip, "connection refused: max_connections_per_ip reached");
            return None;
        }
        *count += 1;
        Some(Admission { shared: self.clone(), ip })
    }
}

/// Releases a connection's place in the limits when the session ends.
struct Admission {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::AcqRel);
        let mut per_ip = self.shared.per_ip.lock().expect("per-ip lock");
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

pub fn router_config(config: &Config) -> RouterConfig {
    RouterConfig {
        player_queue_bytes: config.limits.player_queue_bytes,
        gop_cache: config.server.gop_cache,
        ..RouterConfig::default()
    }
}

/// Binds every listener, prints where to publish and play, and serves until SIGINT/SIGTERM,
/// then drains (see [`crate::drain`]). SIGHUP reloads `config_path` and the TLS certificates.
pub async fn serve(config: Config, config_path: Option<PathBuf>) -> Result<()> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let config = Arc::new(config);
    let shared = Arc::new(Shared::new(config.clone(), shutdown_rx));

    let listener_tls = tls::listener_acceptors(&config)?;
    let mut hangup = Hangup::new()?;
    let mut listeners = Vec::new();
    for (lc, tls) in config.listeners.iter().zip(listener_tls.acceptors) {
        let listener = TcpListener::bind(lc.addr).await.map_err(Error::io(format!(
            "binding {} listener on {}",
            lc.proto.scheme(),
            lc.addr
        )))?;
        let local = listener.local_addr().map_err(Error::io("reading the bound address"))?;
        announce(lc, local, &config);
        listeners.push((lc.clone(), listener, tls));
    }
    let reloader = Arc::new(Reloader::new(shared.clone(), config_path, listener_tls.stores.clone()));
    let mut background = JoinSet::new();
    background.spawn(admin::sample_bitrates(shared.clone()));
    background.spawn(crate::load::monitor(shared.clone()));
    if let Some(settings) = &config.admin {
        let server = admin::start(settings, shared.clone(), reloader.clone()).await?;
        background.spawn(async move {
            let _ = server.await;
        });
    }
    info!("rtmpx ready");

    let mut sessions = JoinSet::new();
    let mut accept_tasks = JoinSet::new();
    // Bounded: under a connect flood the accept loops wait (the kernel's backlog absorbs the
    // rest) instead of queueing sockets in memory without limit.
    let (session_tx, mut session_rx) = tokio::sync::mpsc::channel::<Accepted>(ACCEPT_QUEUE);
    for (lc, listener, tls) in listeners {
        let tx = session_tx.clone();
        let mut stop = shared.shutdown_signal();
        accept_tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            let _ = stream.set_nodelay(true);
                            if tx.send((stream, peer, lc.clone(), tls.clone())).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            // Out of file descriptors and the like: back off instead of spinning.
                            warn!(addr = %lc.addr, "accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        });
    }
    drop(session_tx);
    accept_tasks.spawn(tunnel::reap_idle_sessions(shared.clone()));

    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => break,
            _ = hangup.recv() => {
                let reloader = reloader.clone();
                // A failed reload is logged and keeps the running configuration.
                let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
            }
            Some((stream, peer, listener, tls)) = session_rx.recv() => {
                let Some(admission) = shared.admit(peer.ip()) else { continue };
                let shared = shared.clone();
                sessions.spawn(async move {
                    let _admission = admission;
                    let encryption = listener.encryption.policy();
                    let origin = |transport| Origin { transport, encryption };
                    // Each protocol's future is boxed on its own: a task's memory is then what its
                    // protocol needs, not the largest of them (TLS and HTTP states are big, and
                    // memory per idle plain-RTMP player is a target).
                    match listener.proto {
                        Proto::Rtmp => {
                            Box::pin(tunnel::serve_sniffed(stream, peer, origin(Transport::Tcp), origin(Transport::Http), shared)).await
                        }
                        Proto::Rtmpt => Box::pin(tunnel::serve_http(stream, peer, origin(Transport::Http), shared)).await,
                        Proto::Rtmps | Proto::Rtmpts => {
                            let tls = tls.expect("TLS listeners have an acceptor");
                            Box::pin(async move {
                                match tls.accept(stream, peer).await {
                                    Ok(stream) if listener.proto == Proto::Rtmps => {
                                        let (rtmp, http) = (origin(Transport::Tls), origin(Transport::HttpTls));
                                        tunnel::serve_sniffed(stream, peer, rtmp, http, shared).await
                                    }
                                    Ok(stream) => tunnel::serve_http(stream, peer, origin(Transport::HttpTls), shared).await,
                                    Err(e) => {
                                        shared.metrics.handshake_failed(HandshakeFailure::Tls);
                                        warn!(%peer, "{e}")
                                    }
                                }
                            })
                            .await
                        }
                    }
                });
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }

    drop(session_rx);
    crate::drain::drain(&shared, &mut sessions, accept_tasks, &shutdown_tx).await;
    background.shutdown().await;
    info!("rtmpx stopped");
    Ok(())
}

fn announce(lc: &ListenerConfig, local: SocketAddr, config: &Config) {
    let host = if local.ip().is_unspecified() { "127.0.0.1".to_string() } else { local.ip().to_string() };
    let host = if local.is_ipv6() && !local.ip().is_unspecified() { format!("[{host}]") } else { host };
    for app in &config.apps {
        let url = format!("{}://{}:{}/{}/<stream>", lc.proto.scheme(), host, local.port(), app.name);
        let what = match (app.publish, app.play) {
            (true, true) => "publish and play",
            (true, false) => "publish",
            (false, true) => "play",
            (false, false) => "nothing (app disabled)",
        };
        info!("{} listener on {local}: {what} at {url}", lc.proto.scheme());
    }
    if matches!(lc.proto, Proto::Rtmp | Proto::Rtmps) {
        let tunnel = if lc.proto == Proto::Rtmp { "rtmpt" } else { "rtmpts" };
        info!(
            "{} listener on {local}: also serves {tunnel} (HTTP requests) on the same port",
            lc.proto.scheme()
        );
    }
}

/// Accepted connections waiting for the main loop to admit them.
const ACCEPT_QUEUE: usize = 1024;

/// A connection on its way from its listener to a session task.
type Accepted = (TcpStream, SocketAddr, ListenerConfig, Option<TlsAcceptor>);

/// SIGHUP, which asks for the certificates to be read again (never fires off Unix).
struct Hangup {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Hangup {
    fn new() -> Result<Self> {
        Ok(Hangup {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(Error::io("installing the SIGHUP handler"))?,
        })
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if self.signal.recv().await.is_some() {
            return;
        }
        std::future::pending::<()>().await
    }
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
