//! The sampler: samples into the shared buffer at the server's metrics interval, connected or
//! not, and on demand for the `collect` command.
//!
//! **Invariants:** nothing is sampled before the first `Welcome` says the interval, and the
//! interval follows every later `Welcome`; a collector that blocks is only ever called on a
//! blocking thread; a full buffer drops its oldest unacknowledged samples, said in the log (at
//! most once per thousand drops), never blocks the sampler.

use std::sync::PoisonError;

use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, warn};

use super::SharedCollector;
use crate::session::Shared;

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
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
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
                    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
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
        let (seq, dropped) = {
            let mut buffer = shared.buffer();
            let seq = buffer.push(sample);
            shared.stats.set_buffer(buffer.len(), buffer.dropped());
            (seq, buffer.dropped())
        };
        shared.stats.sample_taken();
        shared.new_samples.notify_one();
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
