//! The sampler: samples into the shared buffer at the server's metrics interval, connected or
//! not, and on demand for the `collect` command.
//!
//! **Invariants:** nothing is sampled before the first `Welcome` says the interval, and the
//! interval follows every later `Welcome`; ticks stay on the interval's grid (a late one moves
//! no other); a collector that blocks is only ever called on a blocking thread; a full buffer
//! drops its oldest unacknowledged samples, said in the log (at most once per thousand drops),
//! never blocks the sampler.

use std::sync::PoisonError;

use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, warn};

use super::SharedCollector;
use crate::session::Shared;

/// A late tick does not move the ticks after it: samples stay on the interval's grid, so the
/// agent takes exactly one sample per interval on average however late its runtime wakes it
/// (with `Delay`, each tick's lateness was added to the interval: a busy process sampled at
/// `interval + lateness`, e.g. 10 % fewer samples than configured at 500 ms with 50 ms of
/// scheduling delay). A tick missed altogether (a suspended machine) is skipped, not made up
/// in a burst.
const MISSED_TICKS: MissedTickBehavior = MissedTickBehavior::Skip;

/// The sampler: idle until the first `Welcome` gives a metrics interval, then one sample per
/// interval into the shared buffer, connected or not, plus one whenever the `collect` command
/// asks. Follows interval changes from later `Welcome`s. Never returns: it stops when dropped.
pub(crate) async fn sample_forever(
    collector: &SharedCollector,
    shared: &Shared,
) -> std::convert::Infallible {
    let blocks = collector
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .blocks();
    let mut interval_rx = shared.metrics_interval.subscribe();
    let mut period = loop {
        if let Some(period) = *interval_rx.borrow_and_update() {
            break period;
        }
        // The sender lives in `shared`, which outlives this future.
        if interval_rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    };
    // The first tick fires at once: the first sample follows the first Welcome immediately.
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MISSED_TICKS);
    let mut reported_drops = 0;
    let trigger = shared.commands.sampler();
    loop {
        tokio::select! {
            changed = interval_rx.changed() => {
                if changed.is_err() {
                    return std::future::pending().await;
                }
                let new_period = *interval_rx.borrow_and_update();
                if let Some(new_period) = new_period
                    && new_period != period
                {
                    debug!(?new_period, "metrics interval changed");
                    period = new_period;
                    ticker = tokio::time::interval_at(Instant::now() + period, period);
                    ticker.set_missed_tick_behavior(MISSED_TICKS);
                }
                continue;
            }
            _ = ticker.tick() => {}
            // The `collect` command: a sample now, through the normal path.
            () = trigger.requested() => {}
        }
        let sample = if blocks {
            let collector = collector.clone();
            let sample = tokio::task::spawn_blocking(move || {
                collector
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .sample()
            })
            .await;
            match sample {
                Ok(sample) => sample,
                Err(err) => {
                    warn!("failed to take a sample: {err}");
                    continue;
                }
            }
        } else {
            collector
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .sample()
        };
        if let Some(events) = &shared.events {
            events.observe(&sample).await;
        }
        let (seq, dropped, wake) = {
            let mut buffer = shared.buffer();
            let seq = buffer.push(sample);
            shared.stats.set_buffer(buffer.len(), buffer.dropped());
            (seq, buffer.dropped(), buffer.wakes(seq))
        };
        shared.stats.sample_taken();
        if wake {
            shared.new_samples.notify_one();
        }
        trigger.taken(seq);
        if dropped > reported_drops && (reported_drops == 0 || dropped - reported_drops >= 1000) {
            warn!(
                samples_dropped = dropped,
                "sample buffer full: dropping the oldest unacknowledged samples"
            );
            reported_drops = dropped;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::time::Instant;

    use super::sample_forever;
    use crate::command::{CommandConfig, CommandPolicy, Commands};
    use crate::session::Shared;
    use crate::stats::AgentStats;
    use crate::synthetic::SyntheticCollector;

    /// A tick the runtime serves late is sampled late, but the next one is still due on the
    /// interval's grid: a busy agent takes one sample per interval, not one per interval plus
    /// its scheduling delay.
    #[tokio::test(start_paused = true)]
    async fn a_late_tick_does_not_move_the_ticks_after_it() {
        let period = Duration::from_millis(500);
        let config = CommandConfig::default();
        let policy = Arc::new(CommandPolicy::new(&config).expect("default policy"));
        let stats = Arc::new(AgentStats::new());
        let shared = Arc::new(Shared::new(
            16,
            stats.clone(),
            Commands::in_memory(policy, &config, stats),
        ));
        let collector: super::SharedCollector = Arc::new(Mutex::new(Box::new(
            SyntheticCollector::new("h", "hw", "os"),
        )));
        let start = Instant::now();
        let sampler = tokio::spawn({
            let shared = shared.clone();
            async move { sample_forever(&collector, &shared).await }
        });
        shared.metrics_interval.send_replace(Some(period));

        shared.new_samples.notified().await;
        assert_eq!(start.elapsed(), Duration::ZERO, "the first sample at once");
        // The runtime is busy when the second tick is due and serves it 100 ms late.
        tokio::time::advance(period + Duration::from_millis(100)).await;
        shared.new_samples.notified().await;
        assert_eq!(start.elapsed(), period + Duration::from_millis(100));
        // Nothing else runs: the clock moves straight to the sampler's next tick.
        shared.new_samples.notified().await;
        assert_eq!(
            start.elapsed(),
            2 * period,
            "the third sample on the grid, not 100 ms after it"
        );
        assert_eq!(shared.buffer().len(), 3);
        sampler.abort();
    }
}
