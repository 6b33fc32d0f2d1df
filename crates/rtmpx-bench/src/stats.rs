//! Lock-free counters and histograms shared by thousands of tasks, and /proc sampling.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Sub-buckets per power of two: about 6 % resolution.
const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = 64 * SUB as usize;

/// A log-linear histogram of u64 values (microseconds here), recordable from any thread.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect() }
    }
}

pub(crate) fn bucket_index(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let msb = 63 - value.leading_zeros();
    let shift = msb - SUB_BITS;
    (((msb - SUB_BITS + 1) as u64) << SUB_BITS | ((value >> shift) & (SUB - 1))) as usize
}

/// The smallest value of a bucket and its width.
pub(crate) fn bucket_range(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < SUB {
        return (index, 1);
    }
    let major = index >> SUB_BITS;
    let minor = index & (SUB - 1);
    let shift = major - 1;
    ((SUB | minor) << shift, 1 << shift)
}

impl Histogram {
    pub fn record(&self, value: u64) {
        self.buckets[bucket_index(value)].fetch_add(1, Relaxed);
    }

    pub fn reset(&self) {
        for bucket in self.buckets.iter() {
            bucket.store(0, Relaxed);
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// The value below which a fraction `q` of the samples lie (bucket midpoint), 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let target = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= target {
                let (low, width) = bucket_range(i);
                return low + width / 2;
            }
        }
        0
    }

    pub fn max(&self) -> u64 {
        match self.buckets.iter().rposition(|b| b.load(Relaxed) > 0) {
            Some(i) => {
                let (low, width) = bucket_range(i);
                low + width - 1
            }
            None => 0,
        }
    }
}

/// Everything the tasks count. Counters only grow; phases take differences.
#[derive(Default)]
pub struct Stats {
    pub players_connected: AtomicU64,
    pub players_failed: AtomicU64,
    pub players_ended: AtomicU64,
    pub publishers_live: AtomicU64,
    pub publishers_failed: AtomicU64,
    pub errors: AtomicU64,
    /// Transport bytes received by players.
    pub rx_bytes: AtomicU64,
    /// Audio/video/data messages received by players.
    pub rx_frames: AtomicU64,
    /// Frames players never got (gaps in the publishers' sequence numbers).
    pub dropped: AtomicU64,
    /// Transport bytes written by publishers.
    pub tx_bytes: AtomicU64,
    pub tx_frames: AtomicU64,
    /// Publisher frames sent more than 100 ms after their due time (the load tool fell behind).
    pub tx_late: AtomicU64,
    /// Publish-to-receive latency, microseconds, since the measurement window began.
    pub latency: Histogram,
    /// The same for the last progress interval.
    pub latency_interval: Histogram,
    /// Transport + handshake + connect, microseconds.
    pub connect_time: Histogram,
    /// `play` to `NetStream.Play.Start` (or to the command being written for idle players).
    pub play_time: Histogram,
    pub first_error: std::sync::Mutex<Option<String>>,
}

impl Stats {
    pub fn error(&self, what: String) {
        self.errors.fetch_add(1, Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(what);
        }
    }
}

/// CPU seconds (user + system) and resident memory of a process, from the kernel's accounting.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    pub cpu_secs: f64,
    pub rss_kib: u64,
}

/// `pid` None samples this process.
pub fn sample_process(pid: Option<u32>) -> Option<ProcSample> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_owned(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Some(ProcSample { cpu_secs: (utime + stime) as f64 / ticks, rss_kib })
}

/// One thread of a process: its id, name and CPU seconds (user + system) so far.
#[derive(Debug, Clone)]
pub struct ThreadSample {
    pub tid: u32,
    pub name: String,
    pub cpu_secs: f64,
}

/// Every thread of `pid`, from `/proc/PID/task/TID/stat` (a thread gone meanwhile is skipped).
pub fn sample_threads(pid: u32) -> Vec<ThreadSample> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut threads: Vec<ThreadSample> = tasks
        .flatten()
        .filter_map(|task| {
            let tid: u32 = task.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let name = stat[stat.find('(')? + 1..stat.rfind(')')?].to_owned();
            let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(ThreadSample { tid, name, cpu_secs: (utime + stime) as f64 / ticks })
        })
        .collect();
    threads.sort_by_key(|thread| thread.tid);
    threads
}

/// CPU seconds each thread of `end` used since `start` (threads that did nothing left out), and
/// each one's share of what the threads named like a tokio worker used together.
pub fn thread_cpu_between(start: &[ThreadSample], end: &[ThreadSample]) -> Vec<(ThreadSample, Option<f64>)> {
    let used: Vec<ThreadSample> = end
        .iter()
        .map(|thread| {
            let before = start.iter().find(|t| t.tid == thread.tid).map_or(0.0, |t| t.cpu_secs);
            ThreadSample { cpu_secs: thread.cpu_secs - before, ..thread.clone() }
        })
        .filter(|thread| thread.cpu_secs > 0.0)
        .collect();
    let is_worker = |thread: &ThreadSample| thread.name.contains("worker");
    let workers: f64 = used.iter().filter(|t| is_worker(t)).map(|t| t.cpu_secs).sum();
    used.into_iter()
        .map(|thread| {
            let share = (is_worker(&thread) && workers > 0.0).then(|| thread.cpu_secs / workers);
            (thread, share)
        })
        .collect()
}

/// Raises the soft open-file limit to the hard one; returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_contain_their_values() {
        let mut previous_end = 0;
        for index in 0..(40 * SUB as usize) {
            let (low, width) = bucket_range(index);
            assert_eq!(low, previous_end, "bucket {index}");
            previous_end = low + width;
            assert_eq!(bucket_index(low), index);
            assert_eq!(bucket_index(low + width - 1), index);
        }
        assert!(bucket_index(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles_within_resolution() {
        let h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 - 5000.0).abs() / 5000.0 < 0.07, "{p50}");
        assert!((p99 - 9900.0).abs() / 9900.0 < 0.07, "{p99}");
        assert!(h.max() >= 10_000 && h.max() < 10_700);
        assert_eq!(h.count(), 10_000);
        h.reset();
        assert_eq!(h.quantile(0.5), 0);
    }

    #[test]
    fn thread_shares_split_the_workers_cpu() {
        let sample = |tid, name: &str, cpu_secs| ThreadSample { tid, name: name.into(), cpu_secs };
        let start = [sample(1, "rtmpx", 1.0), sample(2, "tokio-runtime-worker", 2.0)];
        let end = [
            sample(1, "rtmpx", 1.0),
            sample(2, "tokio-runtime-worker", 5.0),
            sample(3, "tokio-runtime-worker", 1.0),
        ];
        let used = thread_cpu_between(&start, &end);
        let summary: Vec<(u32, f64, Option<f64>)> =
            used.iter().map(|(t, s)| (t.tid, t.cpu_secs, *s)).collect();
        assert_eq!(summary, [(2, 3.0, Some(0.75)), (3, 1.0, Some(0.25))]);
        assert!(!sample_threads(std::process::id()).is_empty());
    }

    #[test]
    fn own_process_is_sampled() {
        let sample = sample_process(None).expect("/proc/self");
        assert!(sample.rss_kib > 0);
    }
}
