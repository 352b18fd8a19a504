//! How the `collect` built-in asks the sampler for a sample now.
//!
//! The sample itself takes the normal metrics path (numbered in the sample buffer, sent,
//! acked); `collect` only learns its seq. The sampler answers every waiting request after each
//! sample it takes, so a request made just before a regular tick is answered by that tick.

use std::sync::{Mutex, PoisonError};

use tokio::sync::{Notify, oneshot};

/// Requests for a sample, shared by the command subsystem and the sampler.
#[derive(Debug, Default)]
pub struct SampleTrigger {
    waiters: Mutex<Vec<oneshot::Sender<u64>>>,
    wake: Notify,
}

// === impl SampleTrigger ===

impl SampleTrigger {
    /// Asks for a sample; the receiver gets its seq once it is in the sample buffer.
    pub(crate) fn request(&self) -> oneshot::Receiver<u64> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tx);
        self.wake.notify_one();
        rx
    }

    /// Resolves when a sample was requested (a request made while nobody waits is remembered).
    pub(crate) async fn requested(&self) {
        self.wake.notified().await;
    }

    /// Tells every waiting request that the sample with `seq` is buffered.
    pub(crate) fn taken(&self, seq: u64) {
        let waiters =
            std::mem::take(&mut *self.waiters.lock().unwrap_or_else(PoisonError::into_inner));
        for waiter in waiters {
            // A requester that gave up (timed out, cancelled) no longer listens.
            let _ = waiter.send(seq);
        }
    }
}
