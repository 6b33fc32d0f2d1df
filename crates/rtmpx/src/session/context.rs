//! What every session shares: the router, the configuration, authorisation, the registry and
//! the limits. Built by the composition root (`server.rs`); transports hand it to [`super::run`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rtmpx_router::{Router, RouterConfig, StreamKey};
use tokio::sync::watch;

use crate::auth::Gate;
use crate::budget::AddressBudgets;
use crate::cluster::Cluster;
use crate::config::{Config, ConfigHandle};
use crate::load::Load;
use crate::metrics::Metrics;
use crate::registry::Registry;
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
    /// Push and pull relays (started on publishes and plays).
    pub relays: Arc<dyn Relays>,
    /// RTMPE handshakes each address may still start (`limits.rtmpe_handshakes_per_ip`).
    pub rtmpe_budget: RtmpeBudget,
    /// Memory held per client address (`limits.max_memory_per_ip`).
    pub budgets: Arc<AddressBudgets>,
    /// The Redis stream directory shared with other nodes (`[cluster]`).
    pub cluster: Option<Cluster>,
}

impl SessionContext {
    /// `load` is shared with the relays' fan-outs; `relays` start on publishes and plays.
    pub fn new(
        config: Arc<Config>,
        shutdown: watch::Receiver<bool>,
        load: Arc<Load>,
        relays: Arc<dyn Relays>,
    ) -> SessionContext {
        let router = Router::new(router_config(&config));
        // A hot stream's shards pair RTMPE players' encryption as the publisher's fan-out does.
        let mut sharding = rtmpx_router::ShardConfig::default();
        sharding.scope = Some(super::seal_pairing::scope);
        router.set_sharding(sharding);
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
            load,
            auth: Gate::new(),
            budgets: Arc::default(),
            relays,
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

/// What sessions start in the relays (the relay module's `RelayManager`, which sits above the
/// sessions and is handed in by the composition root).
pub trait Relays: Send + Sync {
    /// Republishes a stream just published here to its app's push upstreams.
    fn start_pushes(&self, router: &Router, config: &Config, key: &StreamKey);
    /// Pulls a stream a player asked for from its app's upstream, when it has one.
    fn ensure_pull(&self, router: &Router, config: &Config, key: &StreamKey);
    fn is_pulling(&self, key: &StreamKey) -> bool;
    /// Pulls a stream from the cluster node that publishes it.
    fn ensure_cluster_pull(&self, router: &Router, config: &Config, key: &StreamKey, pull: NodePull);
}

/// A pull from another cluster node.
pub struct NodePull {
    /// The stream's owner as the directory says (`None`: the entry is gone, the pull ends).
    pub owner: watch::Receiver<Option<String>>,
    /// How long the pull outlives its last player.
    pub linger: Duration,
}

/// The router's part of the configuration.
pub fn router_config(config: &Config) -> RouterConfig {
    let mut router = RouterConfig::default();
    router.player_queue_bytes = config.limits.player_queue_bytes;
    router.gop_cache = config.server.gop_cache;
    router.max_gop_bytes = config.limits.max_gop_bytes;
    router.max_header_bytes = config.limits.max_header_bytes;
    router
}
