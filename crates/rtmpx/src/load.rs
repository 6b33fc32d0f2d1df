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

use crate::server::Shared;

/// Busy fraction (over one sample) at which batching starts.
pub const BATCH_ABOVE: f64 = 0.70;
/// Busy fraction (while batching, which about halves the fan-out's cost) at which it stops: far
/// enough below the start that writing at once again does not push the load straight back up.
pub const UNBATCH_BELOW: f64 = 0.30;
const SAMPLE: Duration = Duration::from_millis(250);

/// The current verdict, read by every fan-out.
#[derive(Debug, Default)]
pub struct Load {
    batching: AtomicBool,
    busy_permille: AtomicU32,
}

impl Load {
    /// Whether players' media should be written in windows now.
    pub fn batching(&self) -> bool {
        self.batching.load(Ordering::Relaxed)
    }

    /// Busy fraction of the workers over the last sample, 0.0..=1.0.
    pub fn busy(&self) -> f64 {
        f64::from(self.busy_permille.load(Ordering::Relaxed)) / 1000.0
    }

    /// Takes one busy-fraction sample; returns `Some(new state)` when batching turns on or off.
    pub fn update(&self, busy: f64) -> Option<bool> {
        self.busy_permille.store((busy.clamp(0.0, 1.0) * 1000.0) as u32, Ordering::Relaxed);
        let was = self.batching();
        let now = if was { busy > UNBATCH_BELOW } else { busy >= BATCH_ABOVE };
        self.batching.store(now, Ordering::Relaxed);
        (now != was).then_some(now)
    }
}

/// Samples the runtime's worker busy time until the task is dropped.
pub async fn monitor(shared: Arc<Shared>) {
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
        if shared.config().server.write_coalesce_under_load_ms == 0 {
            shared.load.update(0.0);
            continue;
        }
        match shared.load.update(fraction) {
            Some(true) => info!(
                "workers {:.0} % busy: batching players' media in {} ms windows",
                fraction * 100.0,
                shared.config().server.write_coalesce_under_load_ms
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
        assert_eq!(load.update(0.5), None);
        assert!(!load.batching());
        assert_eq!(load.update(0.75), Some(true));
        // Batching halves the cost: 40 % now means ~80 % unbatched, so it stays on.
        assert_eq!(load.update(0.4), None);
        assert!(load.batching());
        assert_eq!(load.update(0.2), Some(false));
        assert_eq!(load.update(0.69), None);
        assert!(!load.batching());
        assert!((load.busy() - 0.69).abs() < 0.001);
    }
}
