//! The cluster: nodes share a stream directory in Redis, so a player on any node finds a stream
//! published on any other (its node pulls it from the owner, see `relay`).
//!
//! - Each stream published here is claimed as `rtmpx:stream:APP/NAME`, a hash of the owner's node
//!   URL, a claim token, codecs and start time, by a Lua script: atomic, refused when another node
//!   owns it. The heartbeat refreshes our entries' TTL (re-registering them after Redis was away);
//!   dropping the [`Claim`] deletes the entry if the token is still ours.
//! - Only publish (claim), play (look-up) and the heartbeat task talk to Redis, each bounded by a
//!   short timeout; nothing on the per-message path does.
//! - Redis unavailable: local publishes are accepted (registered when Redis returns) and look-ups
//!   fail closed (no pull), with one log line per outage.

pub use crate::config::cluster as config;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use rtmpx_router::{Router, StreamKey};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::timeout;
use tracing::{info, warn};

use crate::metrics::Out;
use crate::sync::lock;
use config::ClusterSection;

const STREAM_PREFIX: &str = "rtmpx:stream:";
const NODE_PREFIX: &str = "rtmpx:node:";
/// Longest a publish or a play waits for Redis.
const CALL_TIMEOUT: Duration = Duration::from_millis(800);

/// Sets the entry unless another node owns it; returns "" when it is ours, else the owner.
const CLAIM_SCRIPT: &str = r"
local owner = redis.call('HGET', KEYS[1], 'node')
if owner and owner ~= ARGV[1] then return owner end
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'token', ARGV[2], 'started', ARGV[3], 'codecs', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return ''
";

/// Deletes the entry only if it still carries our claim token.
const RELEASE_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

fn stream_key(key: &StreamKey) -> String {
    format!("{STREAM_PREFIX}{}/{}", key.app, key.name)
}

/// This node's view of the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    section: ClusterSection,
    redis: ConnectionManager,
    router: Router,
    claim_script: redis::Script,
    release_script: redis::Script,
    /// Streams published here, by key.
    claims: Mutex<HashMap<StreamKey, LocalClaim>>,
    /// Streams pulled from other nodes: the owner as the heartbeat last saw it (None: gone).
    follows: Mutex<HashMap<StreamKey, watch::Sender<Option<String>>>>,
    /// Streams published here whose directory entry names another node, and that node (warned once).
    conflicts: Mutex<HashMap<StreamKey, String>>,
    /// Streams that players here wait for and that are looked up every heartbeat (one loop each).
    waiting: Mutex<HashSet<StreamKey>>,
    redis_up: AtomicBool,
    /// Since when Redis answers without a failure. An entry missing for less than a TTL after an
    /// outage may just not be registered again yet (Redis restarted empty).
    answering_since: Mutex<Option<Instant>>,
    view: Mutex<View>,
    lookups_failed: AtomicU64,
    claims_refused: AtomicU64,
    pulls_started: AtomicU64,
}

#[derive(Clone)]
struct LocalClaim {
    token: String,
    started: u64,
}

/// The directory as the last heartbeat saw it, for `/api/v1/cluster` and `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct View {
    pub node: String,
    pub redis_up: bool,
    /// Nodes whose heartbeat is live, this one included.
    pub nodes: Vec<String>,
    pub streams: Vec<DirectoryEntry>,
    /// Streams pulled here from other nodes now.
    pub remote_pulls: usize,
    pub pulls_started: u64,
    pub lookups_failed: u64,
    pub claims_refused: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DirectoryEntry {
    pub app: String,
    pub stream: String,
    pub node: String,
    pub codecs: String,
    /// Unix seconds.
    pub started: u64,
}

/// Another node publishes the stream.
#[derive(Debug)]
pub struct Refused {
    pub owner: String,
}

/// A stream of this node in the directory; dropping it removes the entry.
pub struct Claim {
    cluster: Cluster,
    key: StreamKey,
    token: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let inner = &self.cluster.inner;
        {
            let mut claims = lock(&inner.claims);
            if claims.get(&self.key).is_some_and(|c| c.token == self.token) {
                claims.remove(&self.key);
            }
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (cluster, key, token) = (self.cluster.clone(), self.key.clone(), std::mem::take(&mut self.token));
        runtime.spawn(async move {
            let mut redis = cluster.inner.redis.clone();
            let mut call = cluster.inner.release_script.key(stream_key(&key));
            call.arg(&token);
            if let Ok(Err(e)) | Err(e) =
                timeout(CALL_TIMEOUT, call.invoke_async::<i64>(&mut redis)).await.map_err(timed_out)
            {
                // The entry expires within the TTL anyway.
                warn!("cluster: removing {key} from the directory failed: {e}");
            }
        });
    }
}

/// A look-up loop for a stream players wait for here; dropping it ends the loop's claim on the key.
pub struct Waiting {
    cluster: Cluster,
    key: StreamKey,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        lock(&self.cluster.inner.waiting).remove(&self.key);
    }
}

fn timed_out(_: tokio::time::error::Elapsed) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "timed out"))
}

impl Cluster {
    /// Connects lazily to the directory and starts the heartbeat (until `shutdown`).
    pub fn start(
        section: &ClusterSection,
        router: Router,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Cluster, String> {
        let client =
            redis::Client::open(section.redis.as_str()).map_err(|e| format!("cluster.redis: {e}"))?;
        let settings = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let redis = ConnectionManager::new_lazy_with_config(client, settings)
            .map_err(|e| format!("cluster.redis: {e}"))?;
        let cluster = Cluster {
            inner: Arc::new(Inner {
                section: section.clone(),
                redis,
                router,
                claim_script: redis::Script::new(CLAIM_SCRIPT),
                release_script: redis::Script::new(RELEASE_SCRIPT),
                claims: Mutex::new(HashMap::new()),
                follows: Mutex::new(HashMap::new()),
                waiting: Mutex::new(HashSet::new()),
                conflicts: Mutex::new(HashMap::new()),
                // Assumed up until a call fails, so the first failure is logged.
                redis_up: AtomicBool::new(true),
                answering_since: Mutex::new(Some(Instant::now())),
                view: Mutex::new(View { node: section.node.clone(), ..View::default() }),
                lookups_failed: AtomicU64::new(0),
                claims_refused: AtomicU64::new(0),
                pulls_started: AtomicU64::new(0),
            }),
        };
        tokio::spawn(cluster.clone().heartbeat(shutdown));
        info!("cluster: node {} with the directory at {}", section.node, section.redis);
        Ok(cluster)
    }

    pub fn node(&self) -> &str {
        &self.inner.section.node
    }

    pub fn linger(&self) -> Duration {
        self.inner.section.linger
    }

    /// Registers `key`, just published here. Refused when another node owns it; accepted (and
    /// registered by a later heartbeat) when Redis does not answer.
    pub async fn claim(&self, key: &StreamKey) -> Result<Claim, Refused> {
        let local = LocalClaim { token: format!("{:016x}", rand::random::<u64>()), started: unix_now() };
        match timeout(CALL_TIMEOUT, self.run_claim(key, &local, "")).await.map_err(timed_out) {
            Ok(Ok(None)) => self.redis_answered(),
            Ok(Ok(Some(owner))) => {
                self.redis_answered();
                self.inner.claims_refused.fetch_add(1, Ordering::Relaxed);
                return Err(Refused { owner });
            }
            Ok(Err(e)) | Err(e) => {
                self.redis_failed(&e);
                warn!("cluster: {key} is published here unregistered (Redis unavailable); registered when Redis returns");
            }
        }
        let token = local.token.clone();
        lock(&self.inner.claims).insert(key.clone(), local);
        Ok(Claim { cluster: self.clone(), key: key.clone(), token })
    }

    /// The node publishing `key` when it is another one; `Err` when the directory cannot say
    /// (Redis unavailable: the look-up fails closed, nothing is pulled).
    pub async fn locate(&self, key: &StreamKey) -> Result<Option<String>, ()> {
        let mut redis = self.inner.redis.clone();
        let call = redis::cmd("HGET").arg(stream_key(key)).arg("node").clone();
        match timeout(CALL_TIMEOUT, call.query_async::<Option<String>>(&mut redis)).await.map_err(timed_out) {
            Ok(Ok(owner)) => {
                self.redis_answered();
                Ok(owner.filter(|owner| owner != self.node()))
            }
            Ok(Err(e)) | Err(e) => {
                self.redis_failed(&e);
                self.inner.lookups_failed.fetch_add(1, Ordering::Relaxed);
                warn!("cluster: look-up of {key} failed ({e}): not pulling it from another node");
                Err(())
            }
        }
    }

    /// Players here wait for `key`, not live here: the caller looks it up every heartbeat while
    /// they wait. `None` when such a loop already runs for `key`.
    pub fn wait_for(&self, key: &StreamKey) -> Option<Waiting> {
        let new = lock(&self.inner.waiting).insert(key.clone());
        new.then(|| Waiting { cluster: self.clone(), key: key.clone() })
    }

    /// How often the directory is refreshed and waiting players' streams are looked up again.
    pub fn heartbeat_interval(&self) -> Duration {
        self.inner.section.heartbeat
    }

    /// Whether Redis answered the last call (a look-up while it is away fails closed anyway).
    pub fn redis_up(&self) -> bool {
        self.inner.redis_up.load(Ordering::Relaxed)
    }

    /// The owner of `key` as each heartbeat sees it, for a pull from `owner` to follow.
    pub fn follow(&self, key: &StreamKey, owner: &str) -> watch::Receiver<Option<String>> {
        let mut follows = lock(&self.inner.follows);
        if let Some(sender) = follows.get(key).filter(|s| !s.is_closed()) {
            return sender.subscribe();
        }
        let (sender, receiver) = watch::channel(Some(owner.to_owned()));
        follows.insert(key.clone(), sender);
        self.inner.pulls_started.fetch_add(1, Ordering::Relaxed);
        receiver
    }

    /// `/metrics` lines: the directory as the last heartbeat saw it, and this node's pulls from
    /// others.
    pub fn render_metrics(&self, out: &mut Out) {
        let view = self.view();
        out.header("rtmpx_cluster_redis_up", "gauge", "Whether the Redis stream directory answers.");
        out.sample("rtmpx_cluster_redis_up", &[], u64::from(view.redis_up));
        out.header("rtmpx_cluster_nodes", "gauge", "Nodes with a live heartbeat in the directory.");
        out.sample("rtmpx_cluster_nodes", &[], view.nodes.len() as u64);
        out.header("rtmpx_cluster_streams", "gauge", "Streams in the directory by owning node.");
        let mut by_node: std::collections::BTreeMap<&str, u64> =
            view.nodes.iter().map(|n| (n.as_str(), 0)).collect();
        for entry in &view.streams {
            *by_node.entry(entry.node.as_str()).or_default() += 1;
        }
        for (node, count) in by_node {
            out.sample("rtmpx_cluster_streams", &[("node", node)], count);
        }
        out.header("rtmpx_cluster_remote_pulls", "gauge", "Streams this node pulls from other nodes now.");
        out.sample("rtmpx_cluster_remote_pulls", &[], view.remote_pulls as u64);
        out.header("rtmpx_cluster_pulls_started_total", "counter", "Pulls from other nodes started.");
        out.sample("rtmpx_cluster_pulls_started_total", &[], view.pulls_started);
        out.header(
            "rtmpx_cluster_lookups_failed_total",
            "counter",
            "Look-ups that failed (Redis unavailable).",
        );
        out.sample("rtmpx_cluster_lookups_failed_total", &[], view.lookups_failed);
        out.header(
            "rtmpx_cluster_claims_refused_total",
            "counter",
            "Publishes refused because another node publishes the stream.",
        );
        out.sample("rtmpx_cluster_claims_refused_total", &[], view.claims_refused);
    }

    /// The directory as the last heartbeat saw it.
    pub fn view(&self) -> View {
        let mut view = lock(&self.inner.view).clone();
        view.redis_up = self.inner.redis_up.load(Ordering::Relaxed);
        view.remote_pulls = lock(&self.inner.follows).values().filter(|s| !s.is_closed()).count();
        view.pulls_started = self.inner.pulls_started.load(Ordering::Relaxed);
        view.lookups_failed = self.inner.lookups_failed.load(Ordering::Relaxed);
        view.claims_refused = self.inner.claims_refused.load(Ordering::Relaxed);
        view
    }

    async fn run_claim(
        &self,
        key: &StreamKey,
        claim: &LocalClaim,
        codecs: &str,
    ) -> redis::RedisResult<Option<String>> {
        let mut redis = self.inner.redis.clone();
        let mut call = self.inner.claim_script.key(stream_key(key));
        call.arg(self.node())
            .arg(&claim.token)
            .arg(claim.started)
            .arg(codecs)
            .arg(self.inner.section.ttl.as_millis() as u64);
        let owner: String = call.invoke_async(&mut redis).await?;
        Ok(Some(owner).filter(|o| !o.is_empty()))
    }

    fn redis_answered(&self) {
        lock(&self.inner.answering_since).get_or_insert_with(Instant::now);
        if !self.inner.redis_up.swap(true, Ordering::Relaxed) {
            info!("cluster: Redis at {} answers again", self.inner.section.redis);
        }
    }

    fn redis_failed(&self, error: &redis::RedisError) {
        *lock(&self.inner.answering_since) = None;
        if self.inner.redis_up.swap(false, Ordering::Relaxed) {
            warn!(
                "cluster: Redis at {} unavailable ({error}): local streams go on, streams of other nodes cannot be found until it returns",
                self.inner.section.redis
            );
        }
    }

    async fn heartbeat(self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.inner.section.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let limit = self.inner.section.heartbeat.max(CALL_TIMEOUT);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let mut outcome = timeout(limit, self.beat()).await.map_err(timed_out).and_then(|r| r);
            if outcome.is_err() {
                // The first call after an outage only tells the connection manager to reconnect.
                tokio::time::sleep(Duration::from_millis(100)).await;
                outcome = timeout(limit, self.beat()).await.map_err(timed_out).and_then(|r| r);
            }
            match outcome {
                Ok(view) => {
                    let was_up = self.inner.redis_up.load(Ordering::Relaxed);
                    self.redis_answered();
                    if !was_up {
                        info!("cluster: {} local streams registered again", lock(&self.inner.claims).len());
                    }
                    *lock(&self.inner.view) = view;
                }
                Err(e) => self.redis_failed(&e),
            }
        }
    }

    /// One heartbeat: refresh (or re-register) our streams and our node, update the owners that
    /// pulls follow, and read the directory.
    async fn beat(&self) -> redis::RedisResult<View> {
        let codecs: HashMap<StreamKey, String> = self
            .inner
            .router
            .streams()
            .into_iter()
            .map(|s| {
                let codecs: Vec<&str> = [s.video_codec, s.audio_codec].into_iter().flatten().collect();
                (s.key, codecs.join(","))
            })
            .collect();
        let claims: Vec<(StreamKey, LocalClaim)> =
            lock(&self.inner.claims).iter().map(|(k, c)| (k.clone(), c.clone())).collect();
        for (key, claim) in &claims {
            let codecs = codecs.get(key).map(String::as_str).unwrap_or_default();
            let owner = self.run_claim(key, claim, codecs).await?;
            // Said once per other owner, not every heartbeat.
            let mut conflicts = lock(&self.inner.conflicts);
            match owner {
                Some(owner) if conflicts.get(key) != Some(&owner) => {
                    warn!(
                        "cluster: {key} is published here and on {owner} (registered there while Redis was away); the directory names {owner}"
                    );
                    conflicts.insert(key.clone(), owner);
                }
                Some(_) => {}
                None => {
                    conflicts.remove(key);
                }
            }
        }
        lock(&self.inner.conflicts).retain(|key, _| claims.iter().any(|(k, _)| k == key));
        let mut redis = self.inner.redis.clone();
        let ttl = self.inner.section.ttl.as_millis() as u64;
        redis::cmd("SET")
            .arg(format!("{NODE_PREFIX}{}", self.node()))
            .arg(unix_now())
            .arg("PX")
            .arg(ttl)
            .query_async::<()>(&mut redis)
            .await?;

        let followed: Vec<StreamKey> = {
            let mut follows = lock(&self.inner.follows);
            follows.retain(|_, sender| !sender.is_closed());
            follows.keys().cloned().collect()
        };
        let ttl_passed =
            lock(&self.inner.answering_since).is_some_and(|since| since.elapsed() >= self.inner.section.ttl);
        for key in followed {
            let owner: Option<String> =
                redis::cmd("HGET").arg(stream_key(&key)).arg("node").query_async(&mut redis).await?;
            if owner.is_none() && !ttl_passed {
                continue;
            }
            if let Some(sender) = lock(&self.inner.follows).get(&key) {
                sender.send_if_modified(|seen| {
                    let changed = *seen != owner;
                    seen.clone_from(&owner);
                    changed
                });
            }
        }

        let mut nodes: Vec<String> = scan(&mut redis, NODE_PREFIX)
            .await?
            .into_iter()
            .map(|k| k[NODE_PREFIX.len()..].to_owned())
            .collect();
        nodes.sort();
        let keys = scan(&mut redis, STREAM_PREFIX).await?;
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("HGETALL").arg(key);
        }
        let rows: Vec<HashMap<String, String>> =
            if keys.is_empty() { Vec::new() } else { pipe.query_async(&mut redis).await? };
        let mut streams: Vec<DirectoryEntry> = keys
            .iter()
            .zip(rows)
            .filter_map(|(key, mut row)| {
                let (app, stream) = key[STREAM_PREFIX.len()..].split_once('/')?;
                Some(DirectoryEntry {
                    app: app.to_owned(),
                    stream: stream.to_owned(),
                    node: row.remove("node")?,
                    codecs: row.remove("codecs").unwrap_or_default(),
                    started: row.get("started").and_then(|s| s.parse().ok()).unwrap_or_default(),
                })
            })
            .collect();
        streams.sort_by(|a, b| (&a.app, &a.stream).cmp(&(&b.app, &b.stream)));
        Ok(View { node: self.node().to_owned(), redis_up: true, nodes, streams, ..View::default() })
    }
}

/// Every key starting with `prefix` (SCAN, so Redis is never blocked by a long listing).
async fn scan(redis: &mut ConnectionManager, prefix: &str) -> redis::RedisResult<Vec<String>> {
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(500)
            .query_async(redis)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}
