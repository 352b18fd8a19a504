//! Webhook delivery: one queue and one worker task per webhook (URL, format and secret), so a
//! receiver that is down or slow holds back only its own notifications.
//!
//! Invariants: [`Deliveries::send`] never waits (evaluation, RPCs and the writer never wait on
//! a webhook); each queue holds at most `queue` notifications, and when full the oldest goes
//! (counted as `dropped`, logged); an attempt lasts at most `timeout`; a failed attempt is
//! retried after an exponential backoff (`retry_first`, doubled, capped at `retry_max`) up to
//! `max_attempts`, then the notification is `failed`. A 4xx other than 408/429 is not retried.
//! Notifications are not stored: alerts are (`ListAlerts` has them), and a notification still
//! queued at shutdown is lost.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::payload::{DELIVERY_HEADER, SIGNATURE_HEADER, signature};
use super::post::{PostError, post};
use super::rule::Webhook;
use crate::metrics::alerts::AlertMetrics;

/// How webhooks are called.
#[derive(Clone, Debug, PartialEq)]
pub struct DeliverySettings {
    /// Longest one attempt may take, from connecting to the response head.
    pub timeout: Duration,
    /// Wait before the second attempt; doubled before each further one.
    pub retry_first: Duration,
    /// Longest wait between two attempts.
    pub retry_max: Duration,
    /// Attempts per notification, the first included.
    pub max_attempts: u32,
    /// Notifications waiting per webhook.
    pub queue: usize,
}

/// One notification for one webhook.
#[derive(Clone, Debug)]
pub struct Notification {
    pub body: Bytes,
    /// Sent as `X-Tether-Delivery`, the same on every attempt.
    pub id: String,
    /// What it is about, for log lines: `{org}/{rule}`.
    pub about: String,
}

/// Every webhook's queue and worker.
pub struct Deliveries {
    queues: Mutex<HashMap<Webhook, Arc<Queue>>>,
    settings: DeliverySettings,
    metrics: AlertMetrics,
    tls: Arc<rustls::ClientConfig>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

/// The notifications waiting for one webhook.
struct Queue {
    items: Mutex<VecDeque<Notification>>,
    ready: Notify,
}

// === impl Deliveries ===

impl Deliveries {
    /// Workers are spawned on `tasks` as webhooks are first used, and end on `cancel`.
    pub fn new(
        settings: DeliverySettings,
        metrics: AlertMetrics,
        tasks: TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            queues: Mutex::new(HashMap::new()),
            settings,
            metrics,
            tls: super::post::tls_config(),
            tasks,
            cancel,
        }
    }

    /// Queues `notification` for `webhook` without waiting; when the queue is full, its oldest
    /// notification is dropped.
    pub fn send(&self, webhook: &Webhook, notification: Notification) {
        let queue = {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(queue) = queues.get(webhook) {
                queue.clone()
            } else {
                let queue = Arc::new(Queue {
                    items: Mutex::new(VecDeque::new()),
                    ready: Notify::new(),
                });
                queues.insert(webhook.clone(), queue.clone());
                self.tasks.spawn(work(
                    webhook.clone(),
                    queue.clone(),
                    self.settings.clone(),
                    self.metrics.clone(),
                    self.tls.clone(),
                    self.cancel.clone(),
                ));
                queue
            }
        };
        let dropped = {
            let mut items = queue.items.lock().unwrap_or_else(|e| e.into_inner());
            let dropped = (items.len() >= self.settings.queue.max(1)).then(|| items.pop_front());
            items.push_back(notification);
            dropped.flatten()
        };
        match dropped {
            Some(old) => {
                self.metrics.outcome("dropped");
                tracing::warn!(
                    url = %webhook.url,
                    about = %old.about,
                    delivery = %old.id,
                    queue = self.settings.queue,
                    "webhook queue full: dropped its oldest notification"
                );
            }
            None => {
                self.metrics.delivery_queue.inc();
            }
        }
        queue.ready.notify_one();
    }
}

// === impl Queue ===

impl Queue {
    fn pop(&self) -> Option<Notification> {
        self.items
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }
}

/// One webhook's worker: sends its notifications in order, each until delivered, refused or
/// out of attempts.
async fn work(
    webhook: Webhook,
    queue: Arc<Queue>,
    settings: DeliverySettings,
    metrics: AlertMetrics,
    tls: Arc<rustls::ClientConfig>,
    cancel: CancellationToken,
) {
    loop {
        let notification = loop {
            if let Some(n) = queue.pop() {
                break n;
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = queue.ready.notified() => {}
            }
        };
        metrics.delivery_queue.dec();
        let delivered = tokio::select! {
            () = cancel.cancelled() => return,
            outcome = deliver(&webhook, &notification, &settings, &metrics, &tls) => outcome,
        };
        metrics.outcome(if delivered { "delivered" } else { "failed" });
    }
}

/// Sends one notification, retrying transient failures. Returns whether it was delivered.
async fn deliver(
    webhook: &Webhook,
    notification: &Notification,
    settings: &DeliverySettings,
    metrics: &AlertMetrics,
    tls: &Arc<rustls::ClientConfig>,
) -> bool {
    let mut headers = vec![(DELIVERY_HEADER, notification.id.clone())];
    if let Some(secret) = &webhook.secret {
        headers.push((SIGNATURE_HEADER, signature(secret, &notification.body)));
    }
    let mut delay = settings.retry_first;
    for attempt in 1..=settings.max_attempts.max(1) {
        let sent = tokio::time::timeout(
            settings.timeout,
            post(&webhook.url, &headers, notification.body.clone(), tls),
        )
        .await
        .unwrap_or_else(|_| {
            Err(PostError::Transient(format!(
                "no answer within {}",
                humantime::format_duration(settings.timeout)
            )))
        });
        let error = match sent {
            Ok(_) => {
                tracing::debug!(url = %webhook.url, about = %notification.about, attempt, "webhook delivered");
                return true;
            }
            Err(PostError::Permanent(e)) => {
                tracing::warn!(url = %webhook.url, about = %notification.about, delivery = %notification.id, "webhook refused the notification, not retried: {e}");
                return false;
            }
            Err(PostError::Transient(e)) => e,
        };
        if attempt == settings.max_attempts.max(1) {
            tracing::warn!(url = %webhook.url, about = %notification.about, delivery = %notification.id, attempts = attempt, "webhook failed, giving up: {error}");
            return false;
        }
        tracing::info!(url = %webhook.url, about = %notification.about, attempt, retry_in = %humantime::format_duration(delay), "webhook failed, will retry: {error}");
        metrics.delivery_retries.inc();
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(settings.retry_max);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::rule::PayloadFormat;

    fn notification(n: usize) -> Notification {
        Notification {
            body: Bytes::from(format!("{{\"n\":{n}}}")),
            id: format!("d-{n}"),
            about: "o/r".to_owned(),
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_its_oldest_and_never_makes_the_sender_wait() {
        // A receiver that accepts and never answers: the worker's first attempt hangs.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let metrics = crate::metrics::Metrics::new();
        let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
        let settings = DeliverySettings {
            timeout: Duration::from_secs(600),
            retry_first: Duration::from_secs(1),
            retry_max: Duration::from_secs(1),
            max_attempts: 1,
            queue: 2,
        };
        let deliveries = Deliveries::new(
            settings,
            metrics.alerts.clone(),
            tasks.clone(),
            cancel.clone(),
        );
        let webhook = Webhook {
            url,
            format: PayloadFormat::Json,
            secret: None,
        };
        deliveries.send(&webhook, notification(0));
        let (_held, _) = listener.accept().await.expect("the worker connects");
        for n in 1..=4 {
            deliveries.send(&webhook, notification(n));
        }
        let dropped = metrics
            .alerts
            .deliveries
            .get_or_create(&crate::metrics::alerts::OutcomeLabels { outcome: "dropped" })
            .get();
        assert_eq!(dropped, 2, "notifications 1 and 2 went, 3 and 4 wait");
        assert_eq!(metrics.alerts.delivery_queue.get(), 2);
        let queued: Vec<String> = deliveries.queues.lock().expect("lock")[&webhook]
            .items
            .lock()
            .expect("lock")
            .iter()
            .map(|n| n.id.clone())
            .collect();
        assert_eq!(queued, ["d-3", "d-4"]);
        cancel.cancel();
        tasks.close();
        tasks.wait().await;
    }
}
