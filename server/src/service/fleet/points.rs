//! `GetMetrics`' points: raw samples averaged per step ([`Aggregator`]), rollup buckets merged
//! per step ([`RollupAggregator`]), and which of the two a step reads ([`resolution_for`]).
//! Both hold only their answer (at most `max_points` points, the newest), never the range.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use crate::domain::{AgentId, MetricsPoint, OrgId, SampleTotals};
use crate::store::{Resolution, Rollup, RollupBucket, Store, StoreError};

/// Most samples one `GetMetrics` call reads to compute its points.
pub const MAX_METRICS_SAMPLES_READ: usize = 500_000;

/// What points to compute: from `start` to `end` by `step` (0: one per sample), at most
/// `max_points` (the newest).
#[derive(Clone, Copy, Debug)]
pub struct PointRange {
    pub start: SystemTime,
    pub end: SystemTime,
    pub step: Duration,
    pub max_points: usize,
}

/// The points of one agent's metrics over `range`: what `GetMetrics` answers once its request
/// is checked, from raw samples (disk totals, at most [`MAX_METRICS_SAMPLES_READ`]) or from
/// rollups as [`resolution_for`] says. Blocking.
///
/// # Errors
///
/// The store's, when a read fails.
pub fn read_points(
    store: &dyn Store,
    org: &OrgId,
    agent: &AgentId,
    range: &PointRange,
) -> Result<Vec<MetricsPoint>, StoreError> {
    let PointRange {
        start,
        end,
        step,
        max_points,
    } = *range;
    match resolution_for(step) {
        None if step.is_zero() => newest_samples(store, org, agent, range),
        None => {
            let mut points = Aggregator::new(start, step, max_points);
            for totals in store
                .sample_totals(org, agent, start, end)
                .take(MAX_METRICS_SAMPLES_READ)
            {
                points.push(&totals?);
            }
            Ok(points.finish())
        }
        Some(resolution) => {
            let mut points = RollupAggregator::new(start, step, max_points);
            let first_bucket = bucket_start(start, resolution);
            for bucket in store.rollups(org, agent, resolution, first_bucket, end) {
                points.push(&bucket?);
            }
            Ok(points.finish())
        }
    }
}

/// Where [`newest_samples`] starts looking back from the end of the range.
const FIRST_TAIL_WINDOW: Duration = Duration::from_secs(3600);

/// Step zero: each sample is a point and only the newest `max_points` are kept, so the range is
/// read back from its end in windows that double (from [`FIRST_TAIL_WINDOW`]) until one holds
/// more than `max_points` samples or reaches `start`. The oldest sample of such a window only
/// gives the next its rate, so the points are exactly those of reading the whole range, at the
/// cost of about twice the samples they need instead of all the range holds. All windows
/// together read at most [`MAX_METRICS_SAMPLES_READ`] samples.
fn newest_samples(
    store: &dyn Store,
    org: &OrgId,
    agent: &AgentId,
    range: &PointRange,
) -> Result<Vec<MetricsPoint>, StoreError> {
    let mut window = FIRST_TAIL_WINDOW;
    let mut budget = MAX_METRICS_SAMPLES_READ;
    loop {
        let from = range
            .end
            .checked_sub(window)
            .filter(|from| *from > range.start)
            .unwrap_or(range.start);
        let mut points = Aggregator::new(from, Duration::ZERO, range.max_points);
        let mut n_samples = 0;
        for totals in store
            .sample_totals(org, agent, from, range.end)
            .take(budget)
        {
            points.push(&totals?);
            n_samples += 1;
        }
        budget -= n_samples;
        if from == range.start || n_samples > range.max_points || budget == 0 {
            return Ok(points.finish());
        }
        window = window.saturating_mul(2);
    }
}

/// The resolution `GetMetrics` reads for `step`: `None` (raw samples) below 5 minutes, 5-minute
/// rollups from 5 minutes, 1-hour rollups from 1 hour. A step at least as wide as a bucket
/// loses nothing to the rollup's coarser edges but the rounding of its own to whole buckets.
pub fn resolution_for(step: Duration) -> Option<Resolution> {
    Resolution::ALL
        .into_iter()
        .rev()
        .find(|r| step.as_millis() >= u128::from(r.width_ms()))
}

/// Averages samples, given in time order, into points of width `step` starting at `start`;
/// `step` zero makes each sample its own point. Network rates come from the counter delta to
/// the previous sample (skipped across a counter reset). Empty steps produce no point. Holds at
/// most `max_points` points (the newest) and never a sample, so any range costs its answer only.
pub struct Aggregator {
    start: SystemTime,
    step_ms: u128,
    max_points: usize,
    points: VecDeque<MetricsPoint>,
    /// The bucket being filled: its number, its time and its sums.
    current: Option<(u128, SystemTime, Acc)>,
    /// Where the current bucket ends (with a step): a sample before it and at or after the
    /// bucket's time joins it without the bucket being computed again.
    current_end: SystemTime,
    /// Time and network counters of the previous sample.
    previous: Option<(SystemTime, u64, u64)>,
}

#[derive(Default)]
struct Acc {
    n: u32,
    cpu: f64,
    load: [f64; 3],
    mem_used: u128,
    mem_total: u128,
    swap_used: u128,
    swap_total: u128,
    disk_used: u128,
    disk_total: u128,
    rx_rate: f64,
    tx_rate: f64,
    n_rates: u32,
    processes: u64,
}

impl Aggregator {
    pub fn new(start: SystemTime, step: Duration, max_points: usize) -> Self {
        Self {
            start,
            step_ms: step.as_millis(),
            max_points,
            points: VecDeque::new(),
            current: None,
            current_end: start,
            previous: None,
        }
    }

    /// Adds the next sample (in time order).
    pub fn push(&mut self, sample: &SampleTotals) {
        let at = sample.time.get();
        let in_current = self.step_ms > 0
            && matches!(&self.current, Some((_, time, _)) if *time <= at)
            && at < self.current_end;
        if !in_current {
            self.enter(sample);
        }
        let previous =
            self.previous
                .replace((at, sample.network_rx_bytes, sample.network_tx_bytes));
        let Some((_, _, acc)) = self.current.as_mut() else {
            return;
        };
        acc.add(sample, previous);
    }

    /// Makes the bucket of `sample` the current one, if it is not already.
    fn enter(&mut self, sample: &SampleTotals) {
        let at = sample.time.get();
        let offset = at
            .duration_since(self.start)
            .unwrap_or_default()
            .as_millis();
        let (bucket, bucket_time) = match offset.checked_div(self.step_ms) {
            None => (u128::from(sample.seq), at),
            Some(bucket) => {
                let ms = |bucket: u128| u64::try_from(bucket * self.step_ms).unwrap_or(u64::MAX);
                let end = self
                    .start
                    .checked_add(Duration::from_millis(ms(bucket + 1)));
                // With no representable end, every later sample computes its bucket.
                self.current_end = end.unwrap_or(self.start);
                (bucket, self.start + Duration::from_millis(ms(bucket)))
            }
        };
        if self.current.as_ref().is_none_or(|(b, _, _)| *b != bucket) {
            if let Some((_, time, acc)) = self.current.take() {
                self.keep(acc.finish(time));
            }
            self.current = Some((bucket, bucket_time, Acc::default()));
        }
    }

    /// The points, oldest first.
    pub fn finish(mut self) -> Vec<MetricsPoint> {
        if let Some((_, time, acc)) = self.current.take() {
            self.keep(acc.finish(time));
        }
        self.points.into()
    }

    fn keep(&mut self, point: MetricsPoint) {
        if self.points.len() == self.max_points {
            self.points.pop_front();
        }
        if self.max_points > 0 {
            self.points.push_back(point);
        }
    }
}

impl Acc {
    fn add(&mut self, sample: &SampleTotals, previous: Option<(SystemTime, u64, u64)>) {
        self.n += 1;
        self.cpu += sample.cpu_percent;
        for (sum, v) in self.load.iter_mut().zip(sample.load) {
            *sum += v;
        }
        self.mem_used += u128::from(sample.memory_used_bytes);
        self.mem_total += u128::from(sample.memory_total_bytes);
        self.swap_used += u128::from(sample.swap_used_bytes);
        self.swap_total += u128::from(sample.swap_total_bytes);
        self.disk_used += u128::from(sample.disk_used_bytes);
        self.disk_total += u128::from(sample.disk_total_bytes);
        self.processes += u64::from(sample.process_count);
        if let Some((time, rx, tx)) = previous {
            let dt = sample
                .time
                .get()
                .duration_since(time)
                .unwrap_or_default()
                .as_secs_f64();
            if dt > 0.0 && sample.network_rx_bytes >= rx && sample.network_tx_bytes >= tx {
                self.rx_rate += (sample.network_rx_bytes - rx) as f64 / dt;
                self.tx_rate += (sample.network_tx_bytes - tx) as f64 / dt;
                self.n_rates += 1;
            }
        }
    }

    fn finish(self, time: SystemTime) -> MetricsPoint {
        let n = u128::from(self.n.max(1));
        let nf = f64::from(self.n.max(1));
        let rates = f64::from(self.n_rates.max(1));
        let avg = |v: u128| u64::try_from(v / n).unwrap_or(u64::MAX);
        MetricsPoint {
            time,
            sample_count: self.n,
            cpu_percent: self.cpu / nf,
            load: self.load.map(|sum| sum / nf),
            memory_used_bytes: avg(self.mem_used),
            memory_total_bytes: avg(self.mem_total),
            swap_used_bytes: avg(self.swap_used),
            swap_total_bytes: avg(self.swap_total),
            disk_used_bytes: avg(self.disk_used),
            disk_total_bytes: avg(self.disk_total),
            network_rx_bytes_per_second: self.rx_rate / rates,
            network_tx_bytes_per_second: self.tx_rate / rates,
            process_count: u32::try_from(self.processes / u64::from(self.n.max(1)))
                .unwrap_or(u32::MAX),
        }
    }
}

/// The start of the bucket of `resolution` that holds `time`.
pub fn bucket_start(time: SystemTime, resolution: Resolution) -> SystemTime {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let width = u128::from(resolution.width_ms());
    let start = since.as_millis() / width * width;
    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(start).unwrap_or(u64::MAX))
}

/// Merges rollup buckets, given in bucket order, into points of width `step` starting at
/// `start`: a bucket joins the point whose step holds its start, or the first point if it
/// starts before `start`. Holds at most `max_points` points (the newest).
pub struct RollupAggregator {
    start: SystemTime,
    step: Duration,
    max_points: usize,
    points: VecDeque<MetricsPoint>,
    /// The point being filled: its index and its merged rollup.
    current: Option<(u128, Rollup)>,
}

impl RollupAggregator {
    /// `step` must not be zero (rollups are read only for steps of 5 minutes and more).
    pub fn new(start: SystemTime, step: Duration, max_points: usize) -> Self {
        Self {
            start,
            step: step.max(Duration::from_millis(1)),
            max_points,
            points: VecDeque::new(),
            current: None,
        }
    }

    /// Adds the next bucket (in bucket order).
    pub fn push(&mut self, bucket: &RollupBucket) {
        let offset = bucket
            .start
            .get()
            .duration_since(self.start)
            .unwrap_or_default()
            .as_millis();
        let index = offset / self.step.as_millis();
        match &mut self.current {
            Some((current, rollup)) if *current == index => rollup.merge(&bucket.rollup),
            _ => {
                self.flush();
                self.current = Some((index, bucket.rollup));
            }
        }
    }

    /// The points, oldest first.
    pub fn finish(mut self) -> Vec<MetricsPoint> {
        self.flush();
        self.points.into()
    }

    fn flush(&mut self) {
        let Some((index, rollup)) = self.current.take() else {
            return;
        };
        let offset = u64::try_from(index * self.step.as_millis()).unwrap_or(u64::MAX);
        let time = self.start + Duration::from_millis(offset);
        if self.points.len() == self.max_points {
            self.points.pop_front();
        }
        if self.max_points > 0 {
            self.points.push_back(point_of(time, &rollup));
        }
    }
}

/// The point a merged rollup makes: means over its samples (gauges in hundredths become
/// percentages and load figures), rates over its rate intervals.
fn point_of(time: SystemTime, r: &Rollup) -> MetricsPoint {
    let n = r.count.max(1);
    let mean = |sum: i128| u64::try_from(sum / i128::from(n)).unwrap_or(u64::MAX);
    let hundredths = |sum: i128| sum as f64 / n as f64 / 100.0;
    let rate = |sum: i128| sum as f64 / r.rate_count.max(1) as f64;
    MetricsPoint {
        time,
        sample_count: u32::try_from(r.count).unwrap_or(u32::MAX),
        cpu_percent: hundredths(r.cpu.sum),
        load: [
            hundredths(r.load[0].sum),
            hundredths(r.load[1].sum),
            hundredths(r.load[2].sum),
        ],
        memory_used_bytes: mean(r.memory_used.sum),
        memory_total_bytes: mean(r.memory_total.sum),
        swap_used_bytes: mean(r.swap_used.sum),
        swap_total_bytes: mean(r.swap_total.sum),
        disk_used_bytes: mean(r.disk_used.sum),
        disk_total_bytes: mean(r.disk_total.sum),
        network_rx_bytes_per_second: rate(r.net_rx_rate.sum),
        network_tx_bytes_per_second: rate(r.net_tx_rate.sum),
        process_count: u32::try_from(mean(r.process_count.sum)).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DiskUsage, Sample};

    fn aggregate(samples: &[Sample], start: SystemTime, step: Duration) -> Vec<MetricsPoint> {
        let mut points = Aggregator::new(start, step, usize::MAX);
        for sample in samples {
            points.push(&SampleTotals::of(sample));
        }
        points.finish()
    }

    fn sample(seq: u64, secs: u64, cpu: f64, rx: u64) -> Sample {
        Sample {
            seq,
            time: crate::domain::Time::new(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
                .expect("a time after 1970"),
            cpu_percent: cpu,
            load: [0.0; 3],
            memory_used_bytes: 100,
            memory_total_bytes: 200,
            swap_used_bytes: 0,
            swap_total_bytes: 0,
            disks: vec![],
            network_rx_bytes: rx,
            network_tx_bytes: 0,
            uptime: Duration::ZERO,
            process_count: 10,
        }
    }

    #[test]
    fn aggregate_averages_into_steps() {
        let samples = vec![
            sample(1, 0, 10.0, 0),
            sample(2, 10, 20.0, 1000),
            sample(3, 60, 30.0, 1600),
        ];
        let points = aggregate(&samples, SystemTime::UNIX_EPOCH, Duration::from_secs(60));
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].sample_count, 2);
        assert!((points[0].cpu_percent - 15.0).abs() < 1e-9);
        assert!((points[0].network_rx_bytes_per_second - 100.0).abs() < 1e-9);
        assert_eq!(points[1].sample_count, 1);
        assert!((points[1].network_rx_bytes_per_second - 12.0).abs() < 1e-9);
    }

    #[test]
    fn samples_join_the_step_that_holds_them_whatever_the_start() {
        // Half a millisecond past 1 s: stored times are whole milliseconds, the start is not.
        let start = SystemTime::UNIX_EPOCH + Duration::from_micros(1_000_500);
        let samples: Vec<Sample> = [
            1_001, 1_999, 2_000, 2_001, 2_999, 3_000, 3_000, 5_500, 9_001,
        ]
        .into_iter()
        .zip(1..)
        .map(|(ms, seq)| Sample {
            time: crate::domain::Time::new(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
                .expect("a time after 1970"),
            ..sample(seq, 0, 1.0, 0)
        })
        .collect();
        let points = aggregate(&samples, start, Duration::from_secs(1));
        let got: Vec<(Duration, u32)> = points
            .iter()
            .map(|p| {
                (
                    p.time.duration_since(start).expect("after start"),
                    p.sample_count,
                )
            })
            .collect();
        let secs = Duration::from_secs;
        // 2,000 ms is 999.5 ms after the start: still the first step.
        assert_eq!(
            got,
            [(secs(0), 3), (secs(1), 4), (secs(4), 1), (secs(8), 1)]
        );
    }

    #[test]
    fn zero_step_returns_every_sample() {
        let samples = vec![sample(1, 0, 10.0, 0), sample(2, 1, 20.0, 0)];
        let points = aggregate(&samples, SystemTime::UNIX_EPOCH, Duration::ZERO);
        assert_eq!(points.len(), 2);
    }

    #[test]
    fn disks_are_averaged_from_their_totals() {
        let disk = |used, total| DiskUsage {
            mount_point: "/".to_owned(),
            used_bytes: used,
            total_bytes: total,
        };
        let mut first = sample(1, 0, 0.0, 0);
        first.disks = vec![disk(10, 100), disk(30, 100)];
        let mut second = sample(2, 1, 0.0, 0);
        second.disks = vec![disk(60, 300)];
        let points = aggregate(
            &[first, second],
            SystemTime::UNIX_EPOCH,
            Duration::from_secs(60),
        );
        assert_eq!(
            (points[0].disk_used_bytes, points[0].disk_total_bytes),
            (50, 250)
        );
    }

    #[test]
    fn a_bucket_overlapping_the_range_start_joins_the_first_point() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(3_600 + 600);
        assert_eq!(
            bucket_start(start, Resolution::OneHour),
            SystemTime::UNIX_EPOCH + Duration::from_secs(3_600)
        );
        let bucket = |secs: u64, count: u64| RollupBucket {
            start: crate::domain::Time::new(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
                .expect("in range"),
            rollup: Rollup {
                count,
                ..Rollup::default()
            },
        };
        let mut points = RollupAggregator::new(start, Duration::from_secs(3_600), 10);
        // Before the start: the first point. Then by start: 7,200 s is in the first step
        // (4,200..7,800), 10,800 s in the second.
        points.push(&bucket(3_600, 2));
        points.push(&bucket(7_200, 3));
        points.push(&bucket(10_800, 4));
        let points = points.finish();
        let counts: Vec<(SystemTime, u32)> =
            points.iter().map(|p| (p.time, p.sample_count)).collect();
        assert_eq!(
            counts,
            [(start, 5), (start + Duration::from_secs(3_600), 4)]
        );
    }

    #[test]
    fn the_step_chooses_the_resolution() {
        let minutes = |m: u64| Duration::from_secs(60 * m);
        assert_eq!(resolution_for(Duration::ZERO), None);
        assert_eq!(resolution_for(minutes(5) - Duration::from_millis(1)), None);
        assert_eq!(resolution_for(minutes(5)), Some(Resolution::FiveMinutes));
        assert_eq!(resolution_for(minutes(59)), Some(Resolution::FiveMinutes));
        assert_eq!(resolution_for(minutes(60)), Some(Resolution::OneHour));
        assert_eq!(resolution_for(minutes(60 * 24)), Some(Resolution::OneHour));
    }

    /// Points from rollups equal points from the same samples read raw, when the step is a
    /// whole number of buckets and the range starts on a bucket.
    #[test]
    fn rollup_points_equal_raw_points_on_bucket_edges() {
        use crate::store::rollup::RollupBuilder;
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_400);
        let samples: Vec<Sample> = (0..120)
            .map(|i| {
                let mut s = sample(i + 1, 1_700_000_400 + i * 10, (i % 9) as f64, i * 1_000);
                s.memory_used_bytes = 1_000 + i;
                s.disks = vec![DiskUsage {
                    mount_point: "/".to_owned(),
                    used_bytes: 10 * i,
                    total_bytes: 10_000,
                }];
                s
            })
            .collect();
        let step = Duration::from_secs(600);
        let raw = aggregate(&samples, start, step);
        let mut builder = RollupBuilder::new(Resolution::FiveMinutes);
        let mut buckets = Vec::new();
        for s in &samples {
            buckets.extend(builder.push(s).expect("storable"));
        }
        buckets.extend(builder.close());
        let mut points = RollupAggregator::new(start, step, usize::MAX);
        for (ms, rollup) in buckets {
            let start = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
            points.push(&RollupBucket {
                start: crate::domain::Time::new(start).expect("in range"),
                rollup,
            });
        }
        let from_rollups = points.finish();
        assert_eq!(from_rollups.len(), raw.len());
        for (r, p) in from_rollups.iter().zip(&raw) {
            assert_eq!((r.time, r.sample_count), (p.time, p.sample_count));
            assert!((r.cpu_percent - p.cpu_percent).abs() < 1e-9);
            assert_eq!(r.memory_used_bytes, p.memory_used_bytes);
            assert_eq!(r.disk_used_bytes, p.disk_used_bytes);
            assert_eq!(r.process_count, p.process_count);
        }
        // The raw aggregator has no rate for the range's first sample; rollups carry it
        // from the sample before, which here does not exist either: the same rates.
        assert!(
            (from_rollups[1].network_rx_bytes_per_second - raw[1].network_rx_bytes_per_second)
                .abs()
                < 1.0
        );
    }

    /// Step zero reads back from the end in windows; its points must be those of the whole
    /// range, rates included, whether the first window suffices, it doubles, or it reaches the
    /// start.
    #[test]
    fn the_newest_samples_read_from_the_end_equal_the_whole_range() {
        use crate::store::{SledStore, Write};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        let (org, agent) = (OrgId::new("acme"), AgentId::new("web-1"));
        let base = 1_700_000_000;
        // One a minute for 10 hours, counters growing unevenly.
        let writes: Vec<Write> = (1..=600)
            .map(|seq| Write::PutSample {
                org: org.clone(),
                agent: agent.clone(),
                sample: sample(seq, base + 60 * seq, seq as f64 % 7.0, seq * seq * 13),
            })
            .collect();
        store.commit_writes(&writes).expect("commit");
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(base);
        let end = start + Duration::from_secs(601 * 60);
        // 60 and 120: windows holding exactly as many samples as points (one short of a rate).
        for max_points in [10, 60, 100, 120, 599, 600, 1_000] {
            let range = PointRange {
                start,
                end,
                step: Duration::ZERO,
                max_points,
            };
            let got = read_points(&store, &org, &agent, &range).expect("read");
            let mut whole = Aggregator::new(start, Duration::ZERO, max_points);
            for totals in store.sample_totals(&org, &agent, start, end) {
                whole.push(&totals.expect("read"));
            }
            let want = whole.finish();
            assert_eq!(want.len(), max_points.min(600));
            assert_eq!(got, want, "max_points {max_points}");
        }
    }

    #[test]
    fn only_the_newest_points_are_kept() {
        let mut points = Aggregator::new(SystemTime::UNIX_EPOCH, Duration::ZERO, 3);
        for seq in 1..=10 {
            points.push(&SampleTotals::of(&sample(seq, seq, seq as f64, 0)));
        }
        let cpu: Vec<f64> = points.finish().iter().map(|p| p.cpu_percent).collect();
        assert_eq!(cpu, [8.0, 9.0, 10.0]);
        let mut none = Aggregator::new(SystemTime::UNIX_EPOCH, Duration::ZERO, 0);
        none.push(&SampleTotals::of(&sample(1, 1, 1.0, 0)));
        assert!(none.finish().is_empty());
    }
}
