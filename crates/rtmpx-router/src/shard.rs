//! A hot stream's fan-out spread over the runtime's worker threads.
//!
//! Past [`ShardConfig::min_players`] players a stream's players are split into shards (one per
//! worker thread by default), each served by its own task that the runtime may run on any worker.
//! The publisher's task then hands each frame over once per shard (a job in the shard's queue and
//! one notify) instead of visiting every player; the shard's task does the per-player work the
//! publisher did before (direct write when caught up, else queue and notify).
//!
//! Order: every job (frame, publish start or end, publisher replaced, batch flush) has a sequence
//! number, and each player records the last one it was given, under its own lock. Whoever delivers
//! a job to a player (its shard, or the publisher spilling an overflowing shard) skips it when the
//! player has it already, so a player never sees a job twice or out of order. A joining player
//! starts at the current number (the caches primed it with everything before); a leaving one is
//! set past every number.
//!
//! Overflow: a shard that falls [`SHARD_QUEUE_JOBS`] jobs or [`SHARD_QUEUE_BYTES`] behind (its
//! worker is saturated or not scheduled) is spilled by the publisher: its backlog goes into its
//! players' own queues, as every frame did before direct writes, under the players' queue policy.
//! The publisher never waits for a shard, nothing is dropped that a player's queue would not drop,
//! and the shard's memory stays bounded.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::queue::PlayerQueue;
use crate::{lock, Frame, PlayerShared};

/// Jobs a shard may lag behind its publisher before the publisher spills it.
pub const SHARD_QUEUE_JOBS: usize = 256;
/// Payload bytes a shard may lag behind before it is spilled.
pub const SHARD_QUEUE_BYTES: usize = 4 << 20;
/// Longest stretch a shard's task delivers before it yields to the worker's other tasks (as the
/// gateway's publisher does).
const SHARD_SLICE: Duration = Duration::from_millis(5);

/// Wraps each job a shard delivers (the gateway pairs RTMPE players' encryption in it, as it does
/// around the publisher's own fan-out).
pub type FanOutScope = fn(&mut dyn FnMut());

/// How hot streams are spread over worker threads ([`Router::set_sharding`](crate::Router::set_sharding)).
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ShardConfig {
    /// Shards per hot stream: 0, one per worker thread of the runtime the publisher runs on; 1 or
    /// outside a runtime, none.
    pub shards: usize,
    /// A stream is sharded once it has more players than this at a frame, and served from the
    /// publisher's task again once at most half as many are left (small streams keep the direct
    /// path and its latency).
    pub min_players: usize,
    /// Wraps each job a shard delivers.
    pub scope: Option<FanOutScope>,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig { shards: 0, min_players: 64, scope: None }
    }
}

impl ShardConfig {
    /// `shards: 0` turned into the worker count of the runtime the caller runs on (1 outside a
    /// runtime), so the per-frame check is a comparison.
    pub(crate) fn resolved(mut self) -> Self {
        if self.shards == 0 {
            self.shards = tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers());
        }
        self
    }
}

/// What a job does to each player of a shard.
#[derive(Clone)]
pub(crate) enum Work {
    Frame {
        frame: Frame,
        has_video: bool,
        /// More frames follow at once ([`Publisher::send_more`](crate::Publisher::send_more)).
        more: bool,
    },
    Control(Control),
    /// A batch window ended: sinks write what they hold.
    Flush,
}

/// A publish start, end or takeover, for every player's queue.
#[derive(Clone, Copy)]
pub(crate) enum Control {
    PublishStarted,
    Unpublished,
    PublisherReplaced,
}

impl Control {
    pub(crate) fn apply(self, queue: &mut PlayerQueue) {
        match self {
            Control::PublishStarted => queue.push_publish_started(),
            Control::Unpublished => queue.push_unpublished(),
            Control::PublisherReplaced => queue.push_publisher_replaced(),
        }
    }
}

#[derive(Clone)]
struct Job {
    seq: u64,
    work: Work,
}

impl Job {
    fn bytes(&self) -> usize {
        match &self.work {
            Work::Frame { frame, .. } => frame.payload.len(),
            _ => 0,
        }
    }
}

/// A job's frame as each player gets it: the legacy form is built once per job.
struct JobFrame<'a> {
    frame: &'a Frame,
    legacy: Option<Option<Frame>>,
}

impl<'a> JobFrame<'a> {
    fn new(frame: &'a Frame) -> Self {
        JobFrame { frame, legacy: None }
    }

    fn for_player(&mut self, legacy: bool) -> Option<&Frame> {
        if !legacy {
            return Some(self.frame);
        }
        self.legacy.get_or_insert_with(|| self.frame.for_legacy_player()).as_ref()
    }
}

/// Gives `player` a job it does not have yet. `queue_only`: no direct write (a spill); returns
/// whether the player's task must be notified.
fn deliver(
    player: &PlayerShared,
    seq: u64,
    work: &Work,
    frame: Option<&mut JobFrame<'_>>,
    queue_only: bool,
) -> bool {
    let mut state = lock(&player.state);
    if state.delivered >= seq {
        return false;
    }
    state.delivered = seq;
    match work {
        Work::Frame { has_video, more, .. } => {
            let Some(frame) = frame.and_then(|frame| frame.for_player(player.legacy)) else {
                // Nothing it can read; it may hold frames of this run that it could.
                return !more && !queue_only && state.flush_sink();
            };
            if state.over_budget || (!queue_only && state.try_direct(frame, *more, &player.notify)) {
                return false;
            }
            state.queue_billed(frame.clone(), *has_video, player);
        }
        Work::Control(control) => control.apply(&mut state.queue),
        Work::Flush => {
            // A spill leaves the writing to the player's task.
            return queue_only || state.flush_sink();
        }
    }
    true
}

#[derive(Default)]
struct ShardQueue {
    jobs: VecDeque<Job>,
    bytes: usize,
    closed: bool,
}

struct Shard {
    queue: Mutex<ShardQueue>,
    /// Replaced, never edited, so the task can take a snapshot with one refcount.
    members: Mutex<Arc<Vec<Arc<PlayerShared>>>>,
    notify: Notify,
}

impl Shard {
    fn members(&self) -> Arc<Vec<Arc<PlayerShared>>> {
        Arc::clone(&lock(&self.members))
    }

    fn edit_members(&self, edit: impl FnOnce(&mut Vec<Arc<PlayerShared>>)) {
        let mut members = lock(&self.members);
        let mut edited = Vec::clone(&members);
        edit(&mut edited);
        *members = Arc::new(edited);
    }

    fn close(&self) {
        lock(&self.queue).closed = true;
        self.notify.notify_one();
    }

    /// Delivers the oldest job to every member; false when there is none.
    fn deliver_next(&self) -> bool {
        let Some(job) = lock(&self.queue).jobs.front().cloned() else { return false };
        // Taken after the job: every player that joined before it was pushed is in the snapshot.
        let members = self.members();
        let mut frame = match &job.work {
            Work::Frame { frame, .. } => Some(JobFrame::new(frame)),
            _ => None,
        };
        for player in members.iter() {
            if deliver(player, job.seq, &job.work, frame.as_mut(), false) {
                player.notify.notify_one();
            }
        }
        // Popped only now (a spill meanwhile took it already), so an empty queue means idle.
        let mut queue = lock(&self.queue);
        if queue.jobs.front().is_some_and(|front| front.seq == job.seq) {
            queue.jobs.pop_front();
            queue.bytes -= job.bytes();
        }
        true
    }

    /// Delivers jobs for up to [`SHARD_SLICE`]; true if some are left.
    fn run_slice(&self, scope: Option<FanOutScope>) -> bool {
        let started = Instant::now();
        loop {
            let mut delivered = false;
            let mut one = || delivered = self.deliver_next();
            match scope {
                Some(scope) => scope(&mut one),
                None => one(),
            }
            if !delivered {
                return false;
            }
            if started.elapsed() >= SHARD_SLICE {
                return true;
            }
        }
    }

    /// The publisher's side of an overflow: the backlog goes into the members' own queues.
    fn spill(&self) {
        let jobs = {
            let mut queue = lock(&self.queue);
            queue.bytes = 0;
            std::mem::take(&mut queue.jobs)
        };
        tracing::debug!(jobs = jobs.len(), "fan-out shard behind, its backlog queued on its players");
        let mut frames: Vec<Option<JobFrame<'_>>> = jobs
            .iter()
            .map(|job| match &job.work {
                Work::Frame { frame, .. } => Some(JobFrame::new(frame)),
                _ => None,
            })
            .collect();
        for player in self.members().iter() {
            let mut notify = false;
            for (job, frame) in jobs.iter().zip(frames.iter_mut()) {
                notify |= deliver(player, job.seq, &job.work, frame.as_mut(), true);
            }
            if notify {
                player.notify.notify_one();
            }
        }
    }
}

async fn serve(shard: Arc<Shard>, scope: Option<FanOutScope>) {
    loop {
        let (closed, idle) = {
            let queue = lock(&shard.queue);
            (queue.closed, queue.jobs.is_empty())
        };
        if closed {
            return;
        }
        if idle {
            // notify_one leaves a permit when nobody waits: a push before this await is not lost.
            shard.notify.notified().await;
            continue;
        }
        // Sinks write to sockets from here: tokio's cooperative budget would refuse writes after
        // the 128th and turn them into wake-ups (see the gateway's fan-out). Bounded by the slice.
        let more = tokio::task::unconstrained(async { shard.run_slice(scope) }).await;
        if more {
            tokio::task::yield_now().await;
        }
    }
}

/// A sharded stream's shards. Dropping it ends their tasks.
pub(crate) struct ShardSet {
    shards: Vec<Arc<Shard>>,
    /// The last job's number.
    seq: u64,
    min_players: usize,
}

impl ShardSet {
    /// Shards `players` into `config.shards` (resolved: [`ShardConfig::resolved`]) on the
    /// publisher's runtime; `None` for fewer than two shards or outside a runtime.
    pub(crate) fn start(players: &[Arc<PlayerShared>], config: &ShardConfig, seq: u64) -> Option<ShardSet> {
        let count = config.shards;
        let handle = tokio::runtime::Handle::try_current().ok().filter(|_| count > 1)?;
        let shards: Vec<Arc<Shard>> = (0..count)
            .map(|i| {
                let members: Vec<Arc<PlayerShared>> =
                    players.iter().skip(i).step_by(count).cloned().collect();
                Arc::new(Shard {
                    queue: Mutex::default(),
                    members: Mutex::new(Arc::new(members)),
                    notify: Notify::new(),
                })
            })
            .collect();
        for player in players {
            lock(&player.state).delivered = seq;
        }
        for shard in &shards {
            handle.spawn(serve(Arc::clone(shard), config.scope));
        }
        tracing::debug!(shards = count, players = players.len(), "stream's fan-out sharded");
        Some(ShardSet { shards, seq, min_players: config.min_players })
    }

    /// Adds a player (already primed with everything up to now) to the smallest shard.
    pub(crate) fn join(&mut self, player: &Arc<PlayerShared>) {
        lock(&player.state).delivered = self.seq;
        let smallest =
            self.shards.iter().min_by_key(|shard| lock(&shard.members).len()).expect("at least two");
        smallest.edit_members(|members| members.push(Arc::clone(player)));
    }

    /// Takes a player out; it gets nothing more, even from a job being delivered now.
    pub(crate) fn leave(&mut self, player: &Arc<PlayerShared>) {
        lock(&player.state).delivered = u64::MAX;
        for shard in &self.shards {
            if lock(&shard.members).iter().any(|member| Arc::ptr_eq(member, player)) {
                shard.edit_members(|members| members.retain(|member| !Arc::ptr_eq(member, player)));
                return;
            }
        }
    }

    /// Hands a job to every shard (one push and one notify each); spills a shard too far behind.
    pub(crate) fn push(&mut self, work: Work) {
        self.seq += 1;
        let job = Job { seq: self.seq, work };
        for shard in &self.shards {
            let over = {
                let mut queue = lock(&shard.queue);
                queue.bytes += job.bytes();
                queue.jobs.push_back(job.clone());
                queue.jobs.len() > SHARD_QUEUE_JOBS || queue.bytes > SHARD_QUEUE_BYTES
            };
            if over {
                shard.spill();
            }
            shard.notify.notify_one();
        }
    }

    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether the stream is small enough again to be served from the publisher's task and every
    /// shard is idle (nothing of the old order can be left behind then).
    pub(crate) fn may_dissolve(&self, players: usize) -> bool {
        players <= self.min_players / 2 && self.shards.iter().all(|shard| lock(&shard.queue).jobs.is_empty())
    }
}

impl Drop for ShardSet {
    fn drop(&mut self) {
        for shard in &self.shards {
            shard.close();
        }
    }
}
