//! Events: what agents report happening on their machines, stored, queried, acknowledged,
//! counted and streamed (`docs/events.md`).
//!
//! # What an `EventAck` means
//!
//! The session checks a report (its shape ends the stream when wrong; each event's content and
//! the agent's rate are judged alone, as rejections), then hands the events to the events task
//! (`task.rs`) and answers only once the task's commit, through the writer, is durable: every
//! event up to the ack is stored, counted in its hour, or was rejected. Events at or below the
//! agent's settled mark are re-sends and add nothing.
//!
//! # Invariants
//!
//! - One task changes stored events; everything else reads the store (`query.rs`,
//!   `watch_stream.rs`), so reads never see half a change (a commit is atomic), or takes the
//!   changes the task publishes to the hub (`hub.rs`) once their commit is durable.
//! - Every occurrence of an event is counted once in its hour (by kind and severity, and by
//!   agent) in the same commit that stores or repeats it.
//! - Each org's change log numbers changes 1, 2, 3, … in commit order; the newest entry is
//!   never purged, so a cursor is never reused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::config::ConfigError;
use crate::domain::{AgentId, OrgId};
use crate::error::ServerError;
use crate::store::{EventTable, Store};
use crate::writer::WriterHandle;

pub mod agent_day;
pub mod day_cache;
pub mod hub;
pub mod keys;
pub mod query;
pub mod rate;
pub mod rollup;
#[cfg(test)]
pub(crate) mod sample;
mod stats;
pub mod task;
pub mod watch_stream;

pub use self::keys::{EventKey, EventRecord, EventState, NewEvent, Severity};
pub use self::query::{Filter, Stats, StatsQuery};
pub use self::task::{Action, Target};

/// Default time raw events are kept.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
/// Default time hourly counts are kept.
pub const DEFAULT_STATS_RETENTION: Duration = Duration::from_secs(730 * 24 * 3600);
/// Default window within which a repeated fingerprint counts on one event.
pub const DEFAULT_FINGERPRINT_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Default events per agent and minute before the excess is dropped.
pub const DEFAULT_RATE_PER_MINUTE: u32 = 600;
/// Most a report's seq may be ahead of the agent's settled mark.
pub const DEFAULT_MAX_SEQ_JUMP: u64 = 1_000_000;
/// Jobs waiting for the events task.
const QUEUE: usize = 1024;

/// How the server keeps events.
#[derive(Clone, Debug, PartialEq)]
pub struct EventsConfig {
    pub retention: Duration,
    pub stats_retention: Duration,
    pub fingerprint_window: Duration,
    pub rate_per_minute: u32,
    /// Window over which an agent's dropped events are counted and reported once.
    pub rate_window: Duration,
    pub max_seq_jump: u64,
    /// Most bytes the day cache of `GetEventStats` holds (`day_cache.rs`).
    pub stats_cache_bytes: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            retention: DEFAULT_RETENTION,
            stats_retention: DEFAULT_STATS_RETENTION,
            fingerprint_window: DEFAULT_FINGERPRINT_WINDOW,
            rate_per_minute: DEFAULT_RATE_PER_MINUTE,
            rate_window: rate::DEFAULT_WINDOW,
            max_seq_jump: DEFAULT_MAX_SEQ_JUMP,
            stats_cache_bytes: day_cache::MAX_BYTES,
        }
    }
}

impl EventsConfig {
    /// Checks the settings against each other.
    ///
    /// A zero fingerprint window is valid: every event is then its own stored event.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] names the setting that cannot work: a zero retention, rate or
    /// rate window (every event would be dropped or deleted at once), or counts kept for less
    /// time than the raw events they count.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self.retention.is_zero() || self.stats_retention.is_zero() {
            return invalid(
                "event retention and event stats retention must be greater than zero".into(),
            );
        }
        if self.stats_retention < self.retention {
            return invalid(format!(
                "event stats retention ({}) must be at least the event retention ({}): the \
                 hourly counts answer for every event still kept",
                humantime::format_duration(self.stats_retention),
                humantime::format_duration(self.retention)
            ));
        }
        if self.rate_per_minute == 0 || self.rate_window.is_zero() || self.max_seq_jump == 0 {
            return invalid(
                "the event rate per minute, its window and the seq jump limit must be greater \
                 than zero"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Whole milliseconds of `d`, saturating.
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The newest committed cursor of each org: after which the events task numbers the next
/// change, and where a watch without a cursor starts.
#[derive(Default)]
pub struct Shared {
    cursors: Mutex<HashMap<OrgId, u64>>,
}

impl Shared {
    /// The newest committed cursor of `org` (0 before its first change).
    ///
    /// # Errors
    ///
    /// The store's, reading it the first time.
    pub fn last_cursor(&self, store: &dyn Store, org: &OrgId) -> Result<u64, ServerError> {
        let mut cursors = self.cursors.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(last) = cursors.get(org) {
            return Ok(*last);
        }
        let last = match store
            .event_entries(org, EventTable::Changes, &[], None, true)
            .next()
        {
            Some(entry) => keys::cursor_from_key(&entry?.0).unwrap_or(0),
            None => 0,
        };
        cursors.insert(org.clone(), last);
        Ok(last)
    }

    fn publish(&self, org: &OrgId, cursor: u64) {
        let mut cursors = self.cursors.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(last) = cursors.get_mut(org) {
            *last = cursor;
        }
    }
}

/// The handle every session and handler shares.
pub struct Events {
    jobs: mpsc::Sender<task::Job>,
    pub shared: Arc<Shared>,
    pub store: Arc<dyn Store>,
    pub config: EventsConfig,
    pub limiter: rate::RateLimiter,
    /// Open watches against their caps.
    pub watches: Arc<watch_stream::WatchSlots>,
    /// Committed changes, fanned out live to the watchers that match them.
    pub hub: Arc<hub::Hub>,
    /// Whole days of the daily counts, for statistics; the task invalidates what it writes.
    pub day_cache: Arc<day_cache::DayCache>,
}

impl Events {
    /// The handle and the task to spawn (it runs until every handle is dropped).
    pub fn new(
        store: Arc<dyn Store>,
        writer: WriterHandle,
        config: EventsConfig,
        watches: Arc<watch_stream::WatchSlots>,
        hub: Arc<hub::Hub>,
        day_counters: crate::metrics::DayCacheCounters,
    ) -> (Arc<Self>, task::Task) {
        let (jobs, rx) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared::default());
        let day_cache = day_cache::DayCache::new(config.stats_cache_bytes, day_cache::MAX_VERSIONS);
        let day_cache = Arc::new(day_cache.counted(day_counters));
        let task = task::Task {
            store: store.clone(),
            writer,
            shared: shared.clone(),
            hub: hub.clone(),
            day_cache: day_cache.clone(),
            config: config.clone(),
            jobs: rx,
        };
        let events = Arc::new(Self {
            jobs,
            shared,
            store,
            limiter: rate::RateLimiter::new(config.rate_per_minute, config.rate_window),
            watches,
            hub,
            day_cache,
            config,
        });
        (events, task)
    }

    /// The agent's settled mark: the highest event seq stored or rejected (0 if none).
    ///
    /// # Errors
    ///
    /// The store's.
    pub fn settled_seq(&self, org: &OrgId, agent: &AgentId) -> Result<u64, ServerError> {
        Ok(self
            .store
            .event_entry(org, EventTable::Marks, &keys::mark_key(agent))?
            .and_then(|v| keys::decode_u64(&v))
            .unwrap_or(0))
    }

    async fn run<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, ServerError>>) -> task::Job,
    ) -> Result<T, ServerError> {
        let (done, wait) = oneshot::channel();
        self.jobs
            .send(job(done))
            .await
            .map_err(|_| ServerError::Unavailable)?;
        wait.await.map_err(|_| ServerError::Unavailable)?
    }

    /// Stores a report's events; returns the agent's settled mark once durable.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a seq too far ahead; `Internal` or `Unavailable` when the commit
    /// failed or the server is stopping (nothing of the report is stored).
    pub async fn ingest(
        &self,
        org: OrgId,
        agent: AgentId,
        events: Vec<NewEvent>,
        max_seq: u64,
    ) -> Result<u64, ServerError> {
        self.run(|done| {
            task::Job::Report(task::ReportJob {
                report: task::Report {
                    org,
                    agent,
                    events,
                    max_seq,
                },
                done,
            })
        })
        .await
    }

    /// Applies a lifecycle change; returns how many events changed state.
    ///
    /// # Errors
    ///
    /// `NotFound` for an id the org does not hold (nothing changes); the commit's errors.
    pub async fn change_state(
        &self,
        org: OrgId,
        action: Action,
        by: String,
        target: Target,
        audit: crate::domain::AuditEntry,
    ) -> Result<u64, ServerError> {
        self.run(|done| {
            task::Job::Lifecycle(task::LifecycleJob {
                org,
                action,
                by,
                target,
                audit,
                done,
            })
        })
        .await
    }

    /// Removes what is past retention in `orgs`; returns how many entries went.
    ///
    /// # Errors
    ///
    /// The store's or the commit's; what was removed stays removed.
    pub async fn purge(
        &self,
        orgs: Vec<OrgId>,
        now: std::time::SystemTime,
    ) -> Result<u64, ServerError> {
        let now_ms = keys::millis(now);
        self.run(|done| task::Job::Purge(task::PurgeJob { orgs, now_ms, done }))
            .await
    }
}

/// Removes what is past retention, every `interval`, until `shutdown`.
pub async fn run_retention(
    events: Arc<Events>,
    orgs: Arc<crate::service::Orgs>,
    interval: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let ids = orgs.list().into_iter().map(|o| o.id).collect();
        match events.purge(ids, std::time::SystemTime::now()).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "event retention removed old entries"),
            Err(e) => tracing::warn!("event retention failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(config: &EventsConfig) -> String {
        config.validate().expect_err("must be refused").to_string()
    }

    #[test]
    fn settings_that_would_drop_or_delete_every_event_are_refused() {
        EventsConfig::default()
            .validate()
            .expect("defaults are valid");
        let with = |f: fn(&mut EventsConfig)| {
            let mut c = EventsConfig::default();
            f(&mut c);
            c
        };
        assert!(err(&with(|c| c.retention = Duration::ZERO)).contains("retention"));
        assert!(err(&with(|c| c.rate_per_minute = 0)).contains("rate"));
        assert!(err(&with(|c| c.rate_window = Duration::ZERO)).contains("rate"));
        assert!(err(&with(|c| c.max_seq_jump = 0)).contains("seq"));
        let shorter = with(|c| c.stats_retention = c.retention - Duration::from_secs(1));
        assert!(err(&shorter).contains("at least the event retention"));
        // A zero fingerprint window only turns folding off.
        with(|c| c.fingerprint_window = Duration::ZERO)
            .validate()
            .expect("a zero fingerprint window is valid");
    }
}
