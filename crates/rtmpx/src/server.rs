//! The composition root: builds the contexts every part works with, binds the listeners, and
//! serves until shutdown. Nothing else in the crate imports this module.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::acme::Acme;
use crate::admin;
use crate::admission::{Admission, Admissions};
use crate::config::{Config, ListenerConfig, Proto};
use crate::error::{Error, Result};
use crate::logsafe::Throttle;
use crate::metrics::HandshakeFailure;
use crate::relay;
use crate::reload::Reloader;
use crate::session::{Origin, Transport};
use crate::shutdown;
use crate::task;
use crate::tls::{self, TlsAcceptor};
use crate::tunnel::{self, TransportContext};

/// Every check `serve` makes before it binds, beyond [`Config`]'s own validation: the files
/// the configuration names (certificates and keys, the development certificate's directory,
/// the relays' CA file) can be read and used. `rtmpx check-config` runs exactly this too.
/// Errors name the key; `origin` names the file.
pub fn check_before_start(config: &Config, origin: &str) -> Result<()> {
    let fail = |message: String| Error::Config { origin: origin.to_owned(), message };
    let mut needs_dev_cert = false;
    for (i, listener) in config.listeners.iter().enumerate() {
        if !listener.proto.is_tls() {
            continue;
        }
        needs_dev_cert |= listener.tls.is_empty();
        for (j, paths) in listener.tls.iter().enumerate() {
            tls::check_files(paths).map_err(|e| {
                let key = match &e {
                    Error::Certificate { path, .. } if *path == paths.key.display().to_string() => "key",
                    _ => "cert",
                };
                fail(format!("listener[{i}].tls[{j}].{key}: {e}"))
            })?;
        }
    }
    if needs_dev_cert {
        check_dev_cert_dir(&config.tls.cert_dir).map_err(|e| fail(format!("tls.cert_dir: {e}")))?;
    }
    if let Some(ca_file) = &config.relay.ca_file {
        let mut options = rtmpx_client::TlsOptions::default();
        options.ca_file = Some(ca_file.clone());
        options.check().map_err(|e| fail(format!("relay.ca_file: {e}")))?;
    }
    Ok(())
}

/// The development certificate in `dir`, when there is one, loads (else the first start writes
/// one there).
fn check_dev_cert_dir(dir: &std::path::Path) -> std::result::Result<(), String> {
    if dir.exists() && !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let files = crate::devcert::DevCert::in_dir(dir);
    if files.cert.exists() && files.key.exists() {
        tls::check_files(&files.leaf()).map_err(|e| format!("the development certificate: {e}"))?;
    }
    Ok(())
}

/// Binds every listener, prints where to publish and play, and serves until SIGINT/SIGTERM,
/// then drains (see [`crate::drain`]). SIGHUP reloads `config_path` and the TLS certificates.
pub async fn serve(config: Config, config_path: Option<PathBuf>) -> Result<()> {
    let origin = config_path.as_ref().map_or("embedded default config".into(), |p| p.display().to_string());
    check_before_start(&config, &origin)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let config = Arc::new(config);
    let (session, relays) = relay::session_context(config.clone(), shutdown_rx);
    let session = Arc::new(session);
    let transports = Arc::new(TransportContext::new(session.clone()));
    check_descriptors(&transports.admissions, &config);

    // The cached ACME certificate (if any) serves at once; orders run in the background, so a
    // CA that is down or slow never holds up the listeners.
    let acme = config.tls.acme.clone().map(Acme::new);
    if let Some(acme) = &acme {
        let _ = transports.acme.set(acme.clone());
    }
    let listener_tls = tls::listener_acceptors(&config, acme.as_ref())?;
    let _ = transports.certificates.set(listener_tls.stores.clone());
    let mut hangup = Hangup::new()?;
    let mut listeners = Vec::new();
    for (lc, tls) in config.listeners.iter().zip(listener_tls.acceptors) {
        let listener = bind(lc).await?;
        let local = listener.local_addr().map_err(Error::io("reading the bound address"))?;
        announce(lc, local, &config);
        listeners.push((lc.clone(), listener, tls));
    }
    warn_open_publishing(&config);
    let flv = listeners.iter().filter(|(lc, ..)| lc.http_flv);
    let flv = flv.filter_map(|(lc, listener, _)| Some((lc.proto.is_tls(), listener.local_addr().ok()?)));
    let flv_listeners = flv.collect();
    let reloader = Arc::new(Reloader::new(&session, config_path, listener_tls.stores.clone()));
    let mut background = JoinSet::new();
    background.spawn(admin::sample_bitrates(session.sessions.clone()));
    background.spawn(crate::load::monitor(session.load.clone(), session.config.clone()));
    if let Some(acme) = acme {
        background.spawn(acme.run());
    }
    if let Some(settings) = &config.admin {
        let server =
            admin::start(settings, transports.clone(), relays, reloader.clone(), flv_listeners).await?;
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
        let mut stop = session.shutdown_signal();
        let admissions = transports.admissions.clone();
        accept_tasks.spawn(async move {
            let failed_log = Throttle::new(Duration::from_secs(10));
            let mut failures = 0u32;
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            failures = 0;
                            // Admitted here, so that a refused connection gives its descriptor
                            // back at once and the queue holds only admitted ones.
                            let Some(admission) = admissions.admit(peer.ip()) else { continue };
                            let _ = stream.set_nodelay(true);
                            if tx.send((stream, peer, lc.clone(), tls.clone(), admission)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            // Out of file descriptors and the like: back off instead of spinning,
                            // and say so once in a while, not hundreds of times a second.
                            failures = failures.saturating_add(1);
                            if let Some(held_back) = failed_log.allow() {
                                warn!(addr = %lc.addr, held_back, "accept failed: {e}");
                            }
                            tokio::time::sleep(crate::descriptors::accept_backoff(failures)).await;
                        }
                    }
                }
            }
        });
    }
    drop(session_tx);
    accept_tasks.spawn(tunnel::reap_idle_sessions(transports.clone()));

    let signal = shutdown::signalled();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => break,
            _ = hangup.recv() => {
                let reloader = reloader.clone();
                // A failed reload is logged and keeps the running configuration.
                let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
            }
            Some((stream, peer, listener, tls, admission)) = session_rx.recv() => {
                sessions.spawn(connection(stream, peer, &listener, tls, admission, transports.clone()));
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }

    drop(session_rx);
    crate::drain::drain(&session, &mut sessions, accept_tasks, &shutdown_tx).await;
    background.shutdown().await;
    info!("rtmpx stopped");
    Ok(())
}

/// A connection's task: its protocol's future, built in its own box ([`task::boxed`]), so that a
/// task's memory is what its protocol needs (TLS and HTTP states are big, and memory per idle
/// plain-RTMP player is a target). `admission` is held until the connection ends.
fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    listener: &ListenerConfig,
    tls: Option<TlsAcceptor>,
    admission: Admission,
    transports: Arc<TransportContext>,
) -> task::Boxed<'static> {
    let (encryption, http_flv) = (listener.encryption.policy(), listener.http_flv);
    let origin = move |transport| Origin { transport, encryption, http_flv };
    match listener.proto {
        Proto::Rtmp => task::boxed(move || async move {
            let _admission = admission;
            tunnel::serve_sniffed(stream, peer, origin(Transport::Tcp), origin(Transport::Http), transports)
                .await
        }),
        Proto::Rtmpt => task::boxed(move || async move {
            let _admission = admission;
            tunnel::serve_tunnel(stream, peer, origin(Transport::Http), transports).await
        }),
        proto @ (Proto::Rtmps | Proto::Rtmpts) => task::boxed(move || async move {
            let _admission = admission;
            let tls = tls.expect("TLS listeners have an acceptor");
            match tls.accept(stream, peer).await {
                Ok(stream) if proto == Proto::Rtmps => {
                    let (rtmp, http) = (origin(Transport::Tls), origin(Transport::HttpTls));
                    tunnel::serve_sniffed(stream, peer, rtmp, http, transports).await
                }
                Ok(stream) => {
                    tunnel::serve_tunnel(stream, peer, origin(Transport::HttpTls), transports).await
                }
                Err(Error::AcmeValidation) => {}
                Err(e) => {
                    transports.session.metrics.handshake_failed(HandshakeFailure::Tls);
                    warn!(%peer, "{e}")
                }
            }
        }),
    }
}

/// `rtmpx cert --acme`: the cached certificate while it is not due for renewal, else one order,
/// its challenges answered on the configured listeners meanwhile (HTTP-01 on rtmp/rtmpt ports,
/// TLS-ALPN-01 on rtmps ports; no RTMP is served).
pub async fn issue_acme_certificate(config: Config) -> Result<Arc<crate::acme::Issued>> {
    let settings =
        config.tls.acme.clone().ok_or_else(|| Error::Acme("the configuration has no [tls.acme]".into()))?;
    let acme = Acme::new(settings);
    if let Some(current) = acme.certificate().filter(|c| !c.due()) {
        return Ok(current);
    }
    let (_stop, shutdown) = watch::channel(false);
    let config = Arc::new(config);
    let (session, _relays) = relay::session_context(config.clone(), shutdown);
    let transports = Arc::new(TransportContext::new(Arc::new(session)));
    let _ = transports.acme.set(acme.clone());
    let listener_tls = tls::listener_acceptors(&config, Some(&acme))?;
    let mut answering = JoinSet::new();
    for (lc, tls) in config.listeners.iter().zip(listener_tls.acceptors) {
        let listener = bind(lc).await?;
        let origin =
            Origin { transport: Transport::Http, encryption: lc.encryption.policy(), http_flv: false };
        let (proto, transports) = (lc.proto, transports.clone());
        answering.spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let (transports, tls) = (transports.clone(), tls.clone());
                tokio::spawn(async move {
                    match (proto, tls) {
                        (Proto::Rtmp | Proto::Rtmpt, _) => {
                            tunnel::serve_http(stream, peer, origin, transports).await
                        }
                        (Proto::Rtmps, Some(tls)) => drop(tls.accept(stream, peer).await),
                        _ => {}
                    }
                });
            }
        });
    }
    let result = acme.renew().await;
    answering.shutdown().await;
    result
}

async fn bind(lc: &ListenerConfig) -> Result<TcpListener> {
    let context = format!("binding {} listener on {}", lc.proto.scheme(), lc.addr);
    TcpListener::bind(lc.addr).await.map_err(Error::io(context))
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
    if lc.http_flv {
        let (http, ws) = if lc.proto.is_tls() { ("https", "wss") } else { ("http", "ws") };
        for app in config.apps.iter().filter(|app| app.play) {
            let path = format!("{host}:{}/{}/<stream>.flv", local.port(), app.name);
            info!(
                "{} listener on {local}: HTTP-FLV {http}://{path} and WebSocket-FLV {ws}://{path}",
                lc.proto.scheme()
            );
        }
    }
    if matches!(lc.proto, Proto::Rtmp | Proto::Rtmps) {
        let tunnel = if lc.proto == Proto::Rtmp { "rtmpt" } else { "rtmpts" };
        info!(
            "{} listener on {local}: also serves {tunnel} (HTTP requests) on the same port",
            lc.proto.scheme()
        );
    }
}

/// Says which apps anyone who reaches a non-loopback listener may publish to (the embedded
/// default's `live`, for one).
fn warn_open_publishing(config: &Config) {
    let Some(exposed) = config.listeners.iter().find(|l| !l.addr.ip().is_loopback()) else { return };
    for app in config.apps.iter().filter(|a| a.publish) {
        let guarded = !app.auth.publish_keys.is_empty()
            || app.auth.token.as_ref().is_some_and(|t| t.publish)
            || !app.auth.allow_publish.is_empty()
            || app.callbacks.on_publish.is_some();
        if !guarded {
            warn!(
                "app {}: anyone who reaches {} may publish; require a key with publish_keys = [\"...\"] \
                 (or [app.token], allow_publish, on_publish) in its [[app]]",
                app.name, exposed.addr
            );
        }
    }
}

/// Admitted connections waiting for the main loop to start their sessions.
const ACCEPT_QUEUE: usize = 1024;

/// A connection on its way from its listener to a session task.
type Accepted = (TcpStream, SocketAddr, ListenerConfig, Option<TlsAcceptor>, Admission);

/// Raises the open-files limit, caps admitted connections so that `limits.reserved_descriptors`
/// stay free, and warns when `max_connections` cannot be reached under the limit.
fn check_descriptors(admissions: &Admissions, config: &Config) {
    let Some((before, limit)) = crate::descriptors::raise_limit() else { return };
    if limit > before {
        info!("open-files limit raised from {before} to {limit}");
    }
    let reserve = config.limits.reserved_descriptors;
    let cap = crate::descriptors::connection_cap(limit, reserve);
    admissions.set_descriptor_cap(cap);
    if cap < config.limits.max_connections {
        warn!(
            "limits.max_connections = {} needs {} file descriptors with limits.reserved_descriptors = {reserve}, \
             but the open-files limit is {limit}: at most {cap} connections are admitted \
             (raise LimitNOFILE in the systemd unit, `ulimits: nofile` in Docker, or `ulimit -n`)",
            config.limits.max_connections,
            config.limits.max_connections.saturating_add(reserve),
        );
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory per idle player is a target (BENCHMARKS.md, "Idle capacity"), and it once doubled
    /// unnoticed: a connection's task kept room for futures it had boxed. Sizes of the futures a
    /// plain RTMP connection lives in, with room for ordinary growth.
    #[tokio::test]
    async fn a_plain_rtmp_connection_lives_in_small_futures() {
        let config = Arc::new(Config::embedded_default());
        let listener_config =
            config.listeners.iter().find(|l| l.proto == Proto::Rtmp).expect("an rtmp listener").clone();
        let (_stop, shutdown) = watch::channel(false);
        let transports =
            Arc::new(TransportContext::new(Arc::new(relay::session_context(config, shutdown).0)));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let peer = listener.local_addr().expect("address");
        let stream = TcpStream::connect(peer).await.expect("connect");
        let admission = transports.admissions.admit(peer.ip()).expect("admitted");

        let task = connection(stream, peer, &listener_config, None, admission, transports.clone());
        let task_bytes = std::mem::size_of_val(&*task);
        assert!(task_bytes <= 1024, "a connection's task state is {task_bytes} bytes");

        let (_client, server) = tokio::io::duplex(1024);
        let session = crate::session::run(server, peer, Transport::Tcp, transports.session.clone());
        let session_bytes = std::mem::size_of_val(&session);
        assert!(session_bytes <= 4096, "an RTMP session's future is {session_bytes} bytes");
    }
}
