//! Retention of finished commands: every interval, commands that finished longer ago than the
//! retention (default 30 days) are deleted with their invocations, history and idempotency
//! key, one commit per command, through the writer like every other write.
//!
//! Unfinished commands are never deleted (every invocation ends within days: the delivery
//! window and the timeout are bounded), and a finished command is never written again, so a
//! deletion cannot race a change of the command it deletes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::store::{Store, Write};
use crate::writer::WriterHandle;

/// Most commands one pass deletes; the next pass continues.
const PASS_LIMIT: usize = 1000;

/// Deletes commands finished more than `retention` ago, every `interval`, until `shutdown`.
pub async fn run(
    store: Arc<dyn Store>,
    writer: WriterHandle,
    retention: Duration,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let Some(cutoff) = SystemTime::now().checked_sub(retention) else {
            continue;
        };
        let reader = store.clone();
        let expired =
            match tokio::task::spawn_blocking(move || reader.expired_commands(cutoff, PASS_LIMIT))
                .await
            {
                Ok(Ok(expired)) => expired,
                Ok(Err(e)) => {
                    tracing::warn!("command retention failed to read: {e}");
                    continue;
                }
                Err(e) => {
                    tracing::warn!("command retention task failed: {e}");
                    continue;
                }
            };
        let mut removed = 0;
        for command in expired {
            let write = Write::DeleteCommand {
                org: command.org.clone(),
                command: command.id.clone(),
                n_invocations: command.n_invocations,
                last_cursor: command.last_cursor,
                idempotency_key: command.idempotency_key.clone(),
            };
            match writer.commit(vec![write]).await {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(command = %command.id, "command retention failed to delete: {e}");
                    break;
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "retention removed finished commands");
        }
    }
}
