//! The writer's watchdog over a store commit that does not return.
//!
//! The writer is the only path to the store, so a commit that never returns stops everything
//! that must be durable: no sample, update or handler write is acked again, and the queues fill
//! to their bounds. sled 0.34 can get there without any error: its flush waits until every log
//! buffer up to the flushed position is written, each buffer is written by a task on sled's
//! own I/O thread pool, and a task that panics kills its thread and leaves its buffer unwritten,
//! so the stable position never passes it and every later flush waits forever (the store's
//! [`Store::stall_detail`](crate::store::Store::stall_detail) says how many of sled's I/O
//! threads are left). The store cannot be reopened in the same process (sled's pool and its
//! broken state are process-wide, and its file lock is held), but a new process recovers it
//! from the log like any crash.
//!
//! So [`watch`] reports a commit running past [`REPORT_EVERY`] (a warning every interval,
//! `tether_writer_commit_running_seconds`, `tether_writer_commit_stalls_total`), and
//! past the configured limit (`--store-stall-limit`) gives up: the writer ends the process
//! with [`STORE_STALLED_EXIT_CODE`], for its supervisor to restart it. That keeps the
//! durability contract: nothing in the stalled commit was acked, and everything acked before
//! it is durable, so the restarted server loses nothing it promised; agents re-send what was
//! not acked.

use std::time::Duration;

use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;

use crate::metrics::Metrics;

/// How long a commit runs before it is reported (and again after each further interval).
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The exit status of a server that gave up on a stalled store (`EX_TEMPFAIL`: a restart is
/// expected to work).
pub const STORE_STALLED_EXIT_CODE: i32 = 75;

/// Waits for `commit`, reporting while it runs past [`REPORT_EVERY`]; once it has run for
/// `limit`, calls `give_up` (which is not expected to return) with how long it ran. `detail`
/// describes the store's state for the reports.
///
/// # Errors
///
/// The commit task's, if it panicked or was cancelled.
pub(super) async fn watch<T>(
    mut commit: JoinHandle<T>,
    limit: Duration,
    metrics: &Metrics,
    detail: impl Fn() -> String,
    give_up: impl FnOnce(Duration),
) -> Result<T, JoinError> {
    let started = Instant::now();
    let mut next = started + REPORT_EVERY.min(limit);
    let mut stalled = false;
    let mut give_up = Some(give_up);
    loop {
        tokio::select! {
            joined = &mut commit => {
                if stalled {
                    metrics.writer_commit_running_seconds.set(0);
                    tracing::warn!(
                        seconds = started.elapsed().as_secs(),
                        "the stalled store commit returned"
                    );
                }
                return joined;
            }
            () = tokio::time::sleep_until(next) => {}
        }
        let running = started.elapsed();
        if !stalled {
            stalled = true;
            metrics.writer_commit_stalls.inc();
        }
        metrics
            .writer_commit_running_seconds
            .set(i64::try_from(running.as_secs()).unwrap_or(i64::MAX));
        if running >= limit {
            tracing::error!(
                seconds = running.as_secs(),
                limit_seconds = limit.as_secs(),
                store = %detail(),
                "a store commit has not returned within the stall limit: the store is stuck; \
                 stopping the server so that a restart recovers it (nothing in the commit was \
                 acknowledged, so nothing acknowledged is lost)"
            );
            if let Some(give_up) = give_up.take() {
                give_up(running);
            }
        } else {
            // A warning until the limit: a fan-out to 100,000 agents on a loaded machine can
            // take over 10 s to commit and still be fine.
            tracing::warn!(
                seconds = running.as_secs(),
                limit_seconds = limit.as_secs(),
                store = %detail(),
                "a store commit has not returned: nothing is acknowledged until it does"
            );
        }
        next += REPORT_EVERY;
    }
}

/// Ends the process with [`STORE_STALLED_EXIT_CODE`]: what the writer does with a stalled
/// store. No destructor runs and nothing is flushed: the stuck store could not flush anyway,
/// and its recovery at the next start is the same as after a crash.
pub(super) fn exit_for_restart(running: Duration) {
    eprintln!(
        "error: the store stopped making progress (a commit ran {} s); exiting with status \
         {STORE_STALLED_EXIT_CODE} so that a restart recovers it",
        running.as_secs()
    );
    std::process::exit(STORE_STALLED_EXIT_CODE);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit that does not return within the limit is reported, then given up on; one that
    /// returns in time is neither.
    #[tokio::test(start_paused = true)]
    async fn a_commit_that_does_not_return_is_reported_then_given_up_on() {
        let metrics = Metrics::new();
        // An async stand-in for the blocking commit, so the paused clock can run ahead.
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let hung = tokio::spawn(async move {
            let _ = released.await;
        });
        let (gave_up_tx, gave_up_rx) = tokio::sync::oneshot::channel();
        let watcher = tokio::spawn({
            let metrics = metrics.clone();
            async move {
                watch(
                    hung,
                    Duration::from_secs(25),
                    &metrics,
                    || "test store".to_owned(),
                    move |running| {
                        let _ = gave_up_tx.send(running);
                    },
                )
                .await
            }
        });
        let running = gave_up_rx.await.expect("given up on");
        assert!(running >= Duration::from_secs(25), "{running:?}");
        assert_eq!(metrics.writer_commit_stalls.get(), 1);
        assert!(metrics.writer_commit_running_seconds.get() >= 25);
        // Should the commit return after all, the writer goes on with it.
        release.send(()).expect("the commit waits");
        watcher.await.expect("watcher").expect("commit");
        assert_eq!(metrics.writer_commit_running_seconds.get(), 0);

        let quick = tokio::spawn(async { 7 });
        let value = watch(
            quick,
            Duration::from_secs(25),
            &metrics,
            String::new,
            |_| panic!("a quick commit is never given up on"),
        )
        .await
        .expect("commit");
        assert_eq!(value, 7);
        assert_eq!(metrics.writer_commit_stalls.get(), 1);
    }
}
