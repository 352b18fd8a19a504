//! What the fleet simulator measures for the benchmark: [`LatencyHistogram`], a lock-free
//! histogram of durations, for the ack latency (time from writing a sample to the
//! `MetricsAck` that covers it); and [`ArrivalLog`], the wall-clock times at which command
//! offers reached the simulated agents (the benchmark subtracts the time it sent the command).
//!
//! Buckets grow geometrically by 5 % from 1 µs up to about 10 minutes, so a percentile is
//! exact to within 5 %. Recording is one atomic add; many agents share one histogram. An
//! arrival log counts per Unix millisecond and is drained by every stats record, so it holds
//! at most one entry per millisecond of one stats interval.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// Ratio between consecutive bucket bounds.
const GROWTH: f64 = 1.05;
/// Number of buckets: 1.05^430 µs ≈ 1,300 s.
const N_BUCKETS: usize = 430;

/// Counts of durations per geometric bucket.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
}

/// A copy of a histogram's counts, which can be subtracted, merged and queried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencySnapshot {
    counts: Vec<u64>,
}

// === impl LatencyHistogram ===

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            buckets: (0..N_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Counts one duration.
    pub fn record(&self, latency: Duration) {
        self.record_n(latency, 1);
    }

    /// Counts `n` occurrences of one duration (e.g. every event of one acked report).
    pub fn record_n(&self, latency: Duration, n: u64) {
        self.buckets[bucket_of(latency)].fetch_add(n, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            counts: self
                .buckets
                .iter()
                .map(|count| count.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

// === impl LatencySnapshot ===

impl LatencySnapshot {
    /// An empty snapshot.
    pub fn empty() -> Self {
        Self {
            counts: vec![0; N_BUCKETS],
        }
    }

    /// Counts recorded since `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            counts: self
                .counts
                .iter()
                .zip(&earlier.counts)
                .map(|(now, then)| now.saturating_sub(*then))
                .collect(),
        }
    }

    /// Adds another snapshot's counts (e.g. from another simulator process).
    pub fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
    }

    /// Number of durations counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1), or `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (idx, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(upper_bound(idx));
            }
        }
        Some(upper_bound(N_BUCKETS - 1))
    }

    /// Non-empty buckets as `(upper bound in µs, count)`: a compact form for JSON.
    pub fn to_sparse(&self) -> Vec<(u64, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .map(|(idx, count)| (upper_bound(idx).as_micros() as u64, *count))
            .collect()
    }

    /// The inverse of [`LatencySnapshot::to_sparse`].
    pub fn from_sparse(buckets: &[(u64, u64)]) -> Self {
        let mut snapshot = Self::empty();
        for (upper_micros, count) in buckets {
            // A bucket's bound is `GROWTH^idx` rounded to a microsecond: invert it by rounding.
            let idx = ((*upper_micros).max(1) as f64).ln() / GROWTH.ln();
            snapshot.counts[(idx.round() as usize).min(N_BUCKETS - 1)] += count;
        }
        snapshot
    }
}

/// Arrivals counted per wall-clock millisecond since the Unix epoch, until drained.
#[derive(Debug, Default)]
pub struct ArrivalLog {
    per_ms: Mutex<BTreeMap<u64, u64>>,
    total: AtomicU64,
}

// === impl ArrivalLog ===

impl ArrivalLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one arrival at `at` (a time before the epoch counts as 0).
    pub fn record(&self, at: SystemTime) {
        let ms = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        *self
            .per_ms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(ms)
            .or_default() += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// The arrivals since the last drain, as `(Unix ms, count)` in time order.
    pub fn drain(&self) -> Vec<(u64, u64)> {
        std::mem::take(&mut *self.per_ms.lock().unwrap_or_else(PoisonError::into_inner))
            .into_iter()
            .collect()
    }

    /// Arrivals counted since the log was created, drained or not.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

fn bucket_of(latency: Duration) -> usize {
    let micros = latency.as_micros().max(1) as f64;
    let idx = micros.ln() / GROWTH.ln();
    // The first bucket whose bound is at least the duration.
    (idx.ceil().max(0.0) as usize).min(N_BUCKETS - 1)
}

fn upper_bound(idx: usize) -> Duration {
    Duration::from_micros(GROWTH.powi(idx as i32).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_five_percent() {
        let histogram = LatencyHistogram::new();
        for ms in 1..=100 {
            histogram.record(Duration::from_millis(ms));
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count(), 100);
        let p50 = snapshot.quantile(0.5).expect("non-empty").as_secs_f64() * 1000.0;
        let p99 = snapshot.quantile(0.99).expect("non-empty").as_secs_f64() * 1000.0;
        assert!((50.0..=52.5).contains(&p50), "{p50}");
        assert!((99.0..=104.0).contains(&p99), "{p99}");
    }

    #[test]
    fn sparse_round_trip_and_since() {
        let histogram = LatencyHistogram::new();
        histogram.record(Duration::from_micros(300));
        let before = histogram.snapshot();
        histogram.record(Duration::from_millis(7));
        histogram.record(Duration::from_secs(2));
        let delta = histogram.snapshot().since(&before);
        assert_eq!(delta.count(), 2);
        let back = LatencySnapshot::from_sparse(&delta.to_sparse());
        assert_eq!(back, delta);
        assert!(LatencySnapshot::empty().quantile(0.5).is_none());
    }

    #[test]
    fn arrivals_are_counted_per_millisecond_and_drained_once() {
        let log = ArrivalLog::new();
        let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        log.record(at(1_000));
        log.record(at(1_000));
        log.record(at(999));
        log.record(at(1_002) + Duration::from_micros(900));
        assert_eq!(log.drain(), vec![(999, 1), (1_000, 2), (1_002, 1)]);
        assert_eq!(log.drain(), Vec::new());
        log.record(at(5));
        assert_eq!(log.total(), 5);
        assert_eq!(log.drain(), vec![(5, 1)]);
    }
}
