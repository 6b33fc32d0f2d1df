//! Configuration reload (SIGHUP and `POST /api/v1/reload`).
//!
//! The file is parsed and validated first; an invalid file changes nothing. A valid one is
//! swapped into the [`ConfigHandle`] at once: apps, limits, timeouts, auth rules and the rest are read where
//! they are used, so new connections and new publish/play requests follow them while live
//! sessions go on. The router gets its new settings and every certificate file is read again.
//! What only a restart can change (listener addresses, the admin listener, the development
//! certificate settings) is reported and keeps its running value.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tracing::{error, info, warn};

use rtmpx_router::Router;

use crate::config::{Config, ConfigHandle};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::session::{router_config, SessionContext};
use crate::sync::lock;
use crate::tls::CertStore;

/// Top-level keys whose changes need a restart: they describe sockets and certificate stores
/// created at start.
const RESTART_KEYS: [&str; 3] = ["listener", "admin", "tls"];

/// What a successful reload did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReloadReport {
    /// The file read, or none when running on the embedded default.
    pub file: Option<String>,
    /// Top-level keys (sections) that changed and are now in force.
    pub applied: Vec<String>,
    /// Changed keys that keep their running value until a restart.
    pub restart_needed: Vec<String>,
    /// SHA-256 fingerprints of the certificates in use after the reload.
    pub certificates: Vec<String>,
    /// Certificate files that could not be read again (their old certificates stay in use).
    pub certificate_errors: Vec<String>,
}

pub struct Reloader {
    config: ConfigHandle,
    router: Router,
    metrics: Arc<Metrics>,
    path: Option<PathBuf>,
    stores: Vec<Arc<CertStore>>,
    /// The configuration in force as a TOML table, for the list of changed keys. Also
    /// serialises reloads.
    running: Mutex<toml::Table>,
}

fn read_table(path: &std::path::Path) -> Option<toml::Table> {
    std::fs::read_to_string(path).ok()?.parse::<toml::Table>().ok()
}

impl Reloader {
    /// `path` is the file the gateway started from (`None`: the embedded default).
    pub fn new(ctx: &SessionContext, path: Option<PathBuf>, stores: Vec<Arc<CertStore>>) -> Self {
        let running = match &path {
            Some(p) => read_table(p).unwrap_or_default(),
            None => crate::config::DEFAULT_CONFIG.parse().unwrap_or_default(),
        };
        Reloader {
            config: ctx.config.clone(),
            router: ctx.router.clone(),
            metrics: ctx.metrics.clone(),
            path,
            stores,
            running: Mutex::new(running),
        }
    }

    /// Reloads and logs the outcome; on error the running configuration stays.
    pub fn reload(&self) -> Result<ReloadReport> {
        let result = self.try_reload();
        self.metrics.reloaded(result.is_ok());
        match &result {
            Ok(report) => {
                info!(
                    applied = ?report.applied,
                    restart_needed = ?report.restart_needed,
                    "configuration reloaded; live sessions continue"
                );
                if !report.restart_needed.is_empty() {
                    warn!(
                        "changes to {} need a restart; they keep their running values until then",
                        report.restart_needed.join(", ")
                    );
                }
            }
            Err(e) => error!("configuration reload rejected, the running configuration stays: {e}"),
        }
        result
    }

    fn try_reload(&self) -> Result<ReloadReport> {
        let mut running = lock(&self.running);
        let mut report = ReloadReport {
            file: self.path.as_ref().map(|p| p.display().to_string()),
            applied: Vec::new(),
            restart_needed: Vec::new(),
            certificates: Vec::new(),
            certificate_errors: Vec::new(),
        };
        if let Some(path) = &self.path {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Io { context: format!("reading {}", path.display()), source: e })?;
            let origin = path.display().to_string();
            let mut config = Config::from_toml(&text, &origin)?;
            let mut table: toml::Table = text
                .parse()
                .map_err(|e: toml::de::Error| Error::Config { origin, message: e.to_string() })?;

            let old = self.config.get();
            let mut keys: Vec<&String> = running.keys().chain(table.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                if running.get(key) == table.get(key) {
                    continue;
                }
                if RESTART_KEYS.contains(&key.as_str()) {
                    report.restart_needed.push(key.clone());
                } else {
                    report.applied.push(key.clone());
                }
            }
            // Keep what is really running for the keys that need a restart.
            config.listeners = old.listeners.clone();
            config.admin = old.admin.clone();
            config.tls = old.tls.clone();
            for key in RESTART_KEYS {
                match running.get(key) {
                    Some(value) => table.insert(key.to_owned(), value.clone()),
                    None => table.remove(key),
                };
            }
            self.router.set_config(router_config(&config));
            self.config.replace(Arc::new(config));
            *running = table;
        }
        for store in &self.stores {
            match store.reload() {
                Ok(()) => info!(fingerprints = ?store.fingerprints(), "TLS certificates reloaded"),
                Err(e) => {
                    error!("TLS certificate reload failed, keeping the certificates in use: {e}");
                    report.certificate_errors.push(e.to_string());
                }
            }
            report.certificates.extend(store.fingerprints());
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[[listener]]\nproto = \"rtmp\"\naddr = \"127.0.0.1:0\"\n[[app]]\nname = \"live\"\n";

    fn setup(
        text: &str,
    ) -> (Arc<SessionContext>, Reloader, std::path::PathBuf, tokio::sync::watch::Sender<bool>) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("rtmpx-reload-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let ctx =
            Arc::new(crate::relay::session_context(Arc::new(Config::from_toml(text, "t").unwrap()), rx).0);
        let reloader = Reloader::new(&ctx, Some(path.clone()), Vec::new());
        (ctx, reloader, path, tx)
    }

    #[test]
    fn a_valid_file_is_applied_and_the_changed_sections_reported() {
        let (ctx, reloader, path, _tx) = setup(BASE);
        let changed = format!(
            "{}\npublish = false\n[limits]\nmax_connections_per_ip = 3\nplayer_queue_bytes = 100000\n",
            BASE.trim_end()
        );
        std::fs::write(&path, changed).unwrap();
        let report = reloader.reload().unwrap();
        assert_eq!(report.applied, ["app", "limits"]);
        assert!(report.restart_needed.is_empty());
        let config = ctx.config();
        assert!(!config.app("live").unwrap().publish);
        assert_eq!(config.limits.max_connections_per_ip, 3);
        assert_eq!(ctx.router.config().player_queue_bytes, 100_000);
        // The same file again changes nothing.
        assert!(reloader.reload().unwrap().applied.is_empty());
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn an_invalid_file_changes_nothing() {
        let (ctx, reloader, path, _tx) = setup(BASE);
        std::fs::write(&path, format!("{BASE}[limits]\nmax_amf_depth = 1\n")).unwrap();
        let err = reloader.reload().unwrap_err().to_string();
        assert!(err.contains("limits.max_amf_depth"), "{err}");
        std::fs::write(&path, "[[app]\nname = ").unwrap();
        assert!(reloader.reload().is_err());
        assert_eq!(ctx.config().limits.max_amf_depth, 32);
        assert!(ctx.config().app("live").unwrap().publish);
        let view = crate::metrics::MetricsView::sessions(&ctx.metrics, ctx.sessions.live());
        let metrics = crate::metrics::render(&view);
        assert!(metrics.contains("rtmpx_config_reloads_total{result=\"rejected\"} 2"), "{metrics}");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn listener_changes_wait_for_a_restart() {
        let (ctx, reloader, path, _tx) = setup(BASE);
        std::fs::write(&path, BASE.replace("127.0.0.1:0", "127.0.0.1:1936") + "[timeouts]\nidle_secs = 5\n")
            .unwrap();
        let report = reloader.reload().unwrap();
        assert_eq!(report.restart_needed, ["listener"]);
        assert_eq!(report.applied, ["timeouts"]);
        let config = ctx.config();
        assert_eq!(config.listeners[0].addr.port(), 0, "the running listener stays in the config");
        assert_eq!(config.timeouts.idle, std::time::Duration::from_secs(5));
        // Still different from what runs: reported again.
        assert_eq!(reloader.reload().unwrap().restart_needed, ["listener"]);
        let _ = std::fs::remove_file(path);
    }
}
