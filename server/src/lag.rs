//! The runtime's scheduling lag: how long a task that became ready waits before it runs.
//!
//! A probe task sleeps [`PROBE_INTERVAL`] at a time and records how late it wakes
//! (`tether_runtime_lag_seconds`). On a server with CPU to spare that is about a millisecond;
//! when the runtime's CPU is the limit, every connection whose socket became readable waits in
//! the run queue behind the others, and the probe waits in the same queue. Beside the agents'
//! own ack waits (`tether_agent_ack_latency_seconds`) and the writer's commits, it says which
//! part of a slow ack is the server's CPU: in the fleet benchmark at a full core it stays at
//! 2–9 ms while acks wait 130–250 ms (the rest is the writer's batches and the agents' side).

use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;
use tokio_util::sync::CancellationToken;

/// How often the probe wakes when the runtime keeps up.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(10);

/// Records the probe's lateness into `histogram` every [`PROBE_INTERVAL`] until `shutdown`.
pub async fn run(histogram: Histogram, shutdown: CancellationToken) {
    loop {
        let asleep = tokio::time::Instant::now();
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
        let late = asleep.elapsed().saturating_sub(PROBE_INTERVAL);
        histogram.observe(late.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::histogram::exponential_buckets;

    use super::*;

    /// The histogram's buckets as (upper bound, cumulative count).
    fn buckets(histogram: &Histogram) -> Vec<(f64, u64)> {
        use prometheus_client::encoding::text::encode;
        use prometheus_client::registry::Registry;
        let mut registry = Registry::default();
        registry.register("lag", "", histogram.clone());
        let mut text = String::new();
        encode(&mut text, &registry).expect("encode");
        text.lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("lag_bucket{le=\"")?;
                let (le, count) = rest.split_once("\"} ")?;
                Some((le.parse().ok()?, count.parse().ok()?))
            })
            .collect()
    }

    /// A runtime thread kept busy for 200 ms makes the probe record a wake-up at least that
    /// late; before, every wake-up was prompt.
    #[tokio::test(flavor = "current_thread")]
    async fn a_busy_runtime_shows_as_lag() {
        let histogram = Histogram::new(exponential_buckets(0.1, 2.0, 2));
        let shutdown = CancellationToken::new();
        let probe = tokio::spawn(run(histogram.clone(), shutdown.clone()));
        // Let the probe go to sleep, then hold the only runtime thread.
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(200));
        // The probe runs next; wait until it has recorded a late wake-up (over 100 ms).
        let late = |histogram: &Histogram| {
            let buckets = buckets(histogram);
            let prompt = buckets.first().map_or(0, |&(_, n)| n);
            let all = buckets.last().map_or(0, |&(_, n)| n);
            all - prompt
        };
        let mut turns = 0;
        while late(&histogram) == 0 {
            tokio::task::yield_now().await;
            turns += 1;
            assert!(
                turns < 100_000,
                "the probe never recorded the blocked thread"
            );
        }
        shutdown.cancel();
        probe.await.expect("the probe ends on shutdown");
    }
}
