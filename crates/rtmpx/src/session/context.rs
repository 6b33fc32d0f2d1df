//! What every session shares: the router, the configuration, authorisation, the registry and
//! the limits. Built by the composition root (`server.rs`); transports hand it to [`super::run`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rtmpx_router::{Router, RouterConfig};
use tokio::sync::watch;

use crate::auth::Gate;
use crate::budget::AddressBudgets;
use crate::cluster::Cluster;
use crate::config::{Config, ConfigHandle};
use crate::load::Load;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::relay::RelayManager;
use crate::rtmpe_budget::RtmpeBudget;
use crate::shutdown::Shutdown;

/// The handles a session (RTMP or HTTP-FLV) works with.
pub struct SessionContext {
    pub router: Router,
    pub config: ConfigHandle,
    next_id: AtomicU64,
    pub shutdown: Shutdown,
    /// Counters for `/metrics` (ops).
    pub metrics: Arc<Metrics>,
    /// Live sessions for the admin API and the metrics (ops).
    pub sessions: Arc<Registry>,
    /// Publish/play authorisation and per-app/per-stream limits.
    pub auth: Gate,
    /// Whether fan-out batches its writes now (workers busy).
    pub load: Arc<Load>,
    /// Push and pull relays.
    pub relays: RelayManager,
    /// RTMPE handshakes each address may still start (`limits.rtmpe_handshakes_per_ip`).
    pub rtmpe_budget: RtmpeBudget,
    /// Memory held per client address (`limits.max_memory_per_ip`).
    pub budgets: Arc<AddressBudgets>,
    /// The Redis stream directory shared with other nodes (`[cluster]`).
    pub cluster: Option<Cluster>,
}

impl SessionContext {
    pub fn new(config: Arc<Config>, shutdown: watch::Receiver<bool>) -> SessionContext {
        let load = Arc::<Load>::default();
        let router = Router::new(router_config(&config));
        // The section was validated with the configuration; starting only fails outside a runtime.
        let cluster = config.cluster.as_ref().and_then(|section| {
            Cluster::start(section, router.clone(), shutdown.clone())
                .map_err(|e| tracing::error!("cluster disabled: {e}"))
                .ok()
        });
        let metrics = Arc::<Metrics>::default();
        SessionContext {
            router,
            cluster,
            config: ConfigHandle::new(config),
            next_id: AtomicU64::new(1),
            shutdown: Shutdown::new(shutdown.clone()),
            sessions: Arc::new(Registry::new(metrics.clone())),
            metrics,
            load: load.clone(),
            auth: Gate::new(),
            budgets: Arc::default(),
            relays: RelayManager::new(shutdown, load, super::seal_pairing::scope),
            rtmpe_budget: Default::default(),
        }
    }

    /// The configuration in force now: read once per event.
    pub fn config(&self) -> Arc<Config> {
        self.config.get()
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.receiver()
    }
}

/// The router's part of the configuration.
pub fn router_config(config: &Config) -> RouterConfig {
    RouterConfig {
        player_queue_bytes: config.limits.player_queue_bytes,
        gop_cache: config.server.gop_cache,
        max_gop_bytes: config.limits.max_gop_bytes,
        max_header_bytes: config.limits.max_header_bytes,
    }
}
