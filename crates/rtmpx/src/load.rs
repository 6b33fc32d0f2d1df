//! How busy the runtime's worker threads are, and whether fan-out should batch its writes.
//!
//! Writing every frame to every player at once gives the lowest latency, and costs one system
//! call per frame per player. When the workers are busy most of the time that cost decides how
//! many players a core can serve (and, once they are saturated, how late everyone is), so the
//! gateway then batches each player's media in short windows (`server.write_coalesce_under_load_ms`):
//! half the CPU per delivered byte at 1,000 players for ~20 ms of latency (BENCHMARKS.md).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use crate::config::ConfigHandle;

/// Busy fraction (over one sample) at which batching starts.
pub const BATCH_ABOVE: f64 = 0.70;
/// Busy fraction (while batching, which about halves the fan-out's cost) at which it stops: far
/// enough below the start that writing at once again does not push the load straight back up.
pub const UNBATCH_BELOW: f64 = 0.30;
/// While batching: at this load the window doubles (up to [`MAX_WINDOW_FACTOR`] times the
/// configured one), under [`SHRINK_BELOW`] it halves again (not below the configured one).
pub const GROW_ABOVE: f64 = 0.90;
pub const SHRINK_BELOW: f64 = 0.50;
pub const MAX_WINDOW_FACTOR: u32 = 4;
const SAMPLE: Duration = Duration::from_millis(250);

/// The current verdict, read by every fan-out.
#[derive(Debug, Default)]
pub struct Load {
    batching: AtomicBool,
    busy_permille: AtomicU32,
    /// How many times the configured window batches use now (1..=MAX_WINDOW_FACTOR).
    window_factor: AtomicU32,
}

impl Load {
    /// Whether players' media should be written in windows now (never while
    /// `write_coalesce_under_load_ms` is 0).
    pub fn batching(&self) -> bool {
        self.batching.load(Ordering::Relaxed)
    }

    /// The batch window now, for a configured window of `base`.
    pub fn window(&self, base: Duration) -> Duration {
        base * self.window_factor.load(Ordering::Relaxed).max(1)
    }

    /// How long fan-out holds players' media now: `always` (`write_coalesce_ms`) if set, else the
    /// load-driven window while batching (`write_coalesce_under_load_ms`), else zero.
    pub fn batch_window(&self, always: Duration, under_load: Duration) -> Duration {
        if !always.is_zero() {
            always
        } else if self.batching() {
            self.window(under_load)
        } else {
            Duration::ZERO
        }
    }

    /// Busy fraction of the workers over the last sample, 0.0..=1.0.
    pub fn busy(&self) -> f64 {
        f64::from(self.busy_permille.load(Ordering::Relaxed)) / 1000.0
    }

    /// Takes one busy-fraction sample; returns `Some(new state)` when batching turns on or off.
    /// `enabled`: batching on load is configured at all.
    pub fn update(&self, busy: f64, enabled: bool) -> Option<bool> {
        self.busy_permille.store((busy.clamp(0.0, 1.0) * 1000.0) as u32, Ordering::Relaxed);
        let was = self.batching();
        let now = enabled && if was { busy > UNBATCH_BELOW } else { busy >= BATCH_ABOVE };
        self.batching.store(now, Ordering::Relaxed);
        let factor = self.window_factor.load(Ordering::Relaxed).max(1);
        let factor = match (was && now, busy) {
            (false, _) => 1,
            (true, b) if b >= GROW_ABOVE => (factor * 2).min(MAX_WINDOW_FACTOR),
            (true, b) if b < SHRINK_BELOW => (factor / 2).max(1),
            (true, _) => factor,
        };
        self.window_factor.store(factor, Ordering::Relaxed);
        (now != was).then_some(now)
    }
}

/// Samples the runtime's worker busy time until the task is dropped.
pub async fn monitor(load: Arc<Load>, config: ConfigHandle) {
    let metrics = tokio::runtime::Handle::current().metrics();
    let busy_total =
        || (0..metrics.num_workers()).map(|w| metrics.worker_total_busy_duration(w)).sum::<Duration>();
    let (mut last_at, mut last_busy) = (Instant::now(), busy_total());
    loop {
        tokio::time::sleep(SAMPLE).await;
        let (now, busy) = (Instant::now(), busy_total());
        let capacity = (now - last_at).as_secs_f64() * metrics.num_workers() as f64;
        let fraction = (busy - last_busy).as_secs_f64() / capacity.max(1e-9);
        (last_at, last_busy) = (now, busy);
        let under_load_ms = config.get().server.write_coalesce_under_load_ms;
        match load.update(fraction, under_load_ms > 0) {
            Some(true) => info!(
                "workers {:.0} % busy: batching players' media in {} ms windows (longer while saturated)",
                fraction * 100.0,
                under_load_ms
            ),
            Some(false) => {
                info!("workers {:.0} % busy: writing players' media at once again", fraction * 100.0)
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batching_starts_high_and_stops_only_well_below() {
        let load = Load::default();
        assert_eq!(load.update(0.5, true), None);
        assert!(!load.batching());
        assert_eq!(load.update(0.75, true), Some(true));
        // Batching halves the cost: 40 % now means ~80 % unbatched, so it stays on.
        assert_eq!(load.update(0.4, true), None);
        assert!(load.batching());
        assert_eq!(load.update(0.2, true), Some(false));
        assert_eq!(load.update(0.69, true), None);
        assert!(!load.batching());
        assert!((load.busy() - 0.69).abs() < 0.001);
        // Switched off in the configuration: never batches, the load is still reported.
        assert_eq!(load.update(0.95, false), None);
        assert!(!load.batching());
        assert!((load.busy() - 0.95).abs() < 0.001);
    }

    #[test]
    fn batch_window_is_the_fixed_one_else_the_load_driven_one_while_busy() {
        let load = Load::default();
        let (always, under_load) = (Duration::from_millis(300), Duration::from_millis(20));
        assert_eq!(load.batch_window(always, under_load), always);
        assert_eq!(load.batch_window(Duration::ZERO, under_load), Duration::ZERO);
        load.update(0.8, true);
        assert_eq!(load.batch_window(Duration::ZERO, under_load), under_load);
        assert_eq!(load.batch_window(always, under_load), always);
    }

    #[test]
    fn window_grows_while_saturated_and_shrinks_back() {
        let load = Load::default();
        let base = Duration::from_millis(20);
        assert_eq!(load.window(base), base);
        load.update(0.95, true);
        // The first saturated sample only turns batching on.
        assert_eq!(load.window(base), base);
        load.update(0.95, true);
        assert_eq!(load.window(base), base * 2);
        for _ in 0..5 {
            load.update(0.99, true);
        }
        assert_eq!(load.window(base), base * MAX_WINDOW_FACTOR);
        load.update(0.7, true);
        assert_eq!(load.window(base), base * MAX_WINDOW_FACTOR);
        load.update(0.4, true);
        assert_eq!(load.window(base), base * 2);
        load.update(0.1, true);
        assert!(!load.batching());
        assert_eq!(load.window(base), base);
    }
}
