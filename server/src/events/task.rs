//! The events task: the one place that changes stored events. Agents' reports, lifecycle
//! changes and retention all queue here and are applied in order, so every read-modify-write
//! (the dedupe mark, a fingerprint's count, an hourly count, the change log's next cursor) sees
//! the result of every change before it, without locks on the store.
//!
//! Invariant: a job is answered `Ok` only after the commit that holds its writes is durable
//! (through the writer, like every write); when a commit fails, nothing of its jobs is kept in
//! memory either (the next job reads the store again), and every job in it gets the error.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::day_cache::{self, DayCache};
use super::hub::{Hub, Published};
use super::keys::{self, Change, ChangeEntry, EventKey, EventRecord, EventState, NewEvent};
use super::query::Filter;
use super::rollup;
use super::{EventsConfig, Shared};
use crate::domain::{AgentId, AuditEntry, OrgId};
use crate::error::ServerError;
use crate::store::{EventTable, Store};
use crate::writer::WriterHandle;

/// Most writes one commit of reports gathers (sled keeps memory for batches that rewrite more
/// than about 500 keys; see `store/sled.rs`).
const MAX_BATCH_WRITES: usize = 400;
/// Most events whose state one commit of a lifecycle change rewrites.
const LIFECYCLE_CHUNK: usize = 128;
/// Most entries one commit of retention removes.
const PURGE_CHUNK: usize = 256;

/// One agent report's events, checked and within the agent's rate.
pub struct Report {
    pub org: OrgId,
    pub agent: AgentId,
    pub events: Vec<NewEvent>,
    /// The highest seq of the report, rejected events included: all are settled once this
    /// commits.
    pub max_seq: u64,
}

/// A report queued for the task.
pub struct ReportJob {
    pub report: Report,
    /// The agent's settled mark after the commit.
    pub done: oneshot::Sender<Result<u64, ServerError>>,
}

/// What a lifecycle call does to the events it selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Acknowledge,
    Resolve,
    Reopen,
}

impl Action {
    /// The state an event in `state` moves to, or `None` if the action leaves it.
    fn apply(self, state: EventState) -> Option<EventState> {
        match (self, state) {
            (Action::Acknowledge, EventState::New) => Some(EventState::Acknowledged),
            (Action::Resolve, EventState::New | EventState::Acknowledged) => {
                Some(EventState::Resolved)
            }
            (Action::Reopen, EventState::Acknowledged | EventState::Resolved) => {
                Some(EventState::New)
            }
            _ => None,
        }
    }

    fn change(self) -> Change {
        match self {
            Action::Acknowledge => Change::Acknowledged,
            Action::Resolve => Change::Resolved,
            Action::Reopen => Change::Reopened,
        }
    }
}

/// Which events a lifecycle call selects.
pub enum Target {
    Ids(Vec<EventKey>),
    Filter(Box<Filter>),
}

pub struct LifecycleJob {
    pub org: OrgId,
    pub action: Action,
    /// Who asks, as events record it.
    pub by: String,
    pub target: Target,
    pub audit: AuditEntry,
    /// How many events changed state.
    pub done: oneshot::Sender<Result<u64, ServerError>>,
}

pub struct PurgeJob {
    pub orgs: Vec<OrgId>,
    pub now_ms: u64,
    pub done: oneshot::Sender<Result<u64, ServerError>>,
}

pub enum Job {
    Report(ReportJob),
    Lifecycle(LifecycleJob),
    Purge(PurgeJob),
}

pub struct Task {
    pub store: Arc<dyn Store>,
    pub writer: WriterHandle,
    pub shared: Arc<Shared>,
    /// Where durable changes go live to watchers.
    pub hub: Arc<Hub>,
    /// The days statistics cached, dropped once a commit that wrote them is durable.
    pub day_cache: Arc<DayCache>,
    pub config: EventsConfig,
    pub jobs: mpsc::Receiver<Job>,
}

/// Plans reports and changes into an overlay's writes: the reads and rules of a commit, apart
/// from the commit itself.
struct Planner<'a> {
    store: &'a dyn Store,
    shared: &'a Shared,
    config: &'a EventsConfig,
}

impl Planner<'_> {
    /// The cursor after which `org`'s next change goes: the overlay's, else the last stored.
    fn next_cursor(&self, overlay: &mut Overlay<'_>, org: &OrgId) -> Result<u64, ServerError> {
        let last = match overlay.cursors.get(org) {
            Some(c) => *c,
            None => self.shared.last_cursor(self.store, org)?,
        };
        overlay.cursors.insert(org.clone(), last + 1);
        Ok(last + 1)
    }

    /// Logs `change` of the event stored at key `event`, as `record` (what the change
    /// committed, for the hub).
    fn log_change(
        &self,
        overlay: &mut Overlay<'_>,
        org: &OrgId,
        (event, record): (Vec<u8>, &EventRecord),
        change: Change,
        at_ms: u64,
    ) -> Result<(), ServerError> {
        let cursor = self.next_cursor(overlay, org)?;
        if let Some(published) = &mut overlay.published {
            published.push((
                org.clone(),
                Published {
                    cursor,
                    change,
                    event: Arc::new(record.clone()),
                },
            ));
        }
        let entry = ChangeEntry {
            event,
            change,
            at_ms,
        };
        let value = keys::encode(&entry).map_err(|e| ServerError::Internal(e.to_string()))?;
        overlay.put(org, EventTable::Changes, keys::cursor_key(cursor), value);
        Ok(())
    }

    /// Plans one report's writes into `overlay`: nothing if it is refused.
    fn report(
        &self,
        overlay: &mut Overlay<'_>,
        report: &Report,
        now_ms: u64,
    ) -> Result<u64, ServerError> {
        let (org, agent) = (&report.org, &report.agent);
        let mark_key = keys::mark_key(agent);
        let mark = overlay
            .get(org, EventTable::Marks, &mark_key)?
            .and_then(|v| keys::decode_u64(&v))
            .unwrap_or(0);
        let ceiling = mark.saturating_add(self.config.max_seq_jump);
        if report.max_seq > ceiling {
            return Err(ServerError::invalid(format!(
                "event seq {} is too far ahead of the last settled seq {mark} (at most {} ahead)",
                report.max_seq, self.config.max_seq_jump
            )));
        }
        for event in &report.events {
            if event.seq != 0 && event.seq <= mark {
                continue; // re-sent: already stored
            }
            self.store_event(overlay, org, agent, event, now_ms)?;
        }
        let settled = mark.max(report.max_seq);
        if settled != mark {
            overlay.put(org, EventTable::Marks, mark_key, keys::encode_u64(settled));
        }
        Ok(settled)
    }

    fn store_event(
        &self,
        overlay: &mut Overlay<'_>,
        org: &OrgId,
        agent: &AgentId,
        event: &NewEvent,
        now_ms: u64,
    ) -> Result<(), ServerError> {
        let time_ms = keys::millis(event.time);
        let window_ms = super::ms(self.config.fingerprint_window);
        self.count_hours(overlay, org, agent, event, time_ms, now_ms)?;
        let fingerprint_key = (!event.fingerprint.is_empty())
            .then(|| keys::fingerprint_key(agent, &event.fingerprint));
        if let Some(fk) = &fingerprint_key
            && let Some(event_key) = overlay.get(org, EventTable::Fingerprints, fk)?
            && let Some(raw) = overlay.get(org, EventTable::Events, &event_key)?
        {
            match keys::decode::<EventRecord>(&raw) {
                Some(mut record)
                    if time_ms.abs_diff(record.last_seen_ms) <= window_ms
                        || (record.first_seen_ms..=record.last_seen_ms).contains(&time_ms) =>
                {
                    record.count += 1;
                    record.first_seen_ms = record.first_seen_ms.min(time_ms);
                    record.last_seen_ms = record.last_seen_ms.max(time_ms);
                    let value =
                        keys::encode(&record).map_err(|e| ServerError::Internal(e.to_string()))?;
                    overlay.put(org, EventTable::Events, event_key.clone(), value);
                    return self.log_change(
                        overlay,
                        org,
                        (event_key, &record),
                        Change::Repeated,
                        now_ms,
                    );
                }
                Some(_) => {}
                None => {
                    tracing::warn!(org = %org, agent = %agent, "a stored event does not decode; its repeat is stored as a new event")
                }
            }
        }
        let record = EventRecord {
            agent: agent.clone(),
            seq: event.seq,
            time_ms,
            kind: event.kind.clone(),
            severity: event.severity,
            message: event.message.clone(),
            attributes: event.attributes.clone(),
            fingerprint: event.fingerprint.clone(),
            count: 1,
            first_seen_ms: time_ms,
            last_seen_ms: time_ms,
            state: EventState::New,
            received_at_ms: now_ms,
            state_changed_by: String::new(),
            state_changed_at_ms: None,
            acknowledged_by: String::new(),
            acknowledged_at_ms: None,
        };
        let key = record.key().to_bytes();
        let value = keys::encode(&record).map_err(|e| ServerError::Internal(e.to_string()))?;
        overlay.put(org, EventTable::Events, key.clone(), value);
        if let Some(fk) = fingerprint_key {
            overlay.put(org, EventTable::Fingerprints, fk, key.clone());
        }
        self.log_change(overlay, org, (key, &record), Change::Created, now_ms)
    }

    /// Adds one occurrence to its hour's and its day's counts, in the same commit as the event:
    /// unless the hour is already past the counts' retention (then its day's rows, which
    /// retention keeps until the whole day is past, are not written either).
    fn count_hours(
        &self,
        overlay: &mut Overlay<'_>,
        org: &OrgId,
        agent: &AgentId,
        event: &NewEvent,
        time_ms: u64,
        now_ms: u64,
    ) -> Result<(), ServerError> {
        let hour = keys::hour_of(time_ms);
        let oldest = now_ms.saturating_sub(keys::millis(
            keys::from_millis(0) + self.config.stats_retention,
        ));
        if hour + keys::HOUR_MS <= oldest {
            return Ok(());
        }
        overlay.add(
            org,
            EventTable::KindHours,
            keys::kind_hour_key(hour, event.severity, &event.kind),
        )?;
        overlay.add(
            org,
            EventTable::AgentHours,
            keys::agent_hour_key(hour, agent, event.severity, &event.kind),
        )?;
        let (day, severity) = (rollup::day_of(hour), event.severity);
        for (table, key) in [
            (EventTable::HourTotals, rollup::hour_total_key(hour)),
            (
                EventTable::KindSeries,
                rollup::kind_series_key(&event.kind, hour),
            ),
            (EventTable::DayKinds, rollup::day_kind_key(day, &event.kind)),
            (EventTable::DayAgents, rollup::day_agent_key(day, agent)),
        ] {
            overlay.add_counts(org, table, key, severity)?;
        }
        Ok(())
    }
}

impl Task {
    fn planner(&self) -> Planner<'_> {
        Planner {
            store: &*self.store,
            shared: &self.shared,
            config: &self.config,
        }
    }

    /// Runs until `shutdown` (finishing the job at hand) or until every sender is gone.
    pub async fn run(mut self, shutdown: tokio_util::sync::CancellationToken) {
        let mut pending: Option<Job> = None;
        loop {
            let job = match pending.take() {
                Some(job) => job,
                None => tokio::select! {
                    job = self.jobs.recv() => match job {
                        Some(job) => job,
                        None => return,
                    },
                    () = shutdown.cancelled() => return,
                },
            };
            match job {
                Job::Report(first) => {
                    let mut reports = vec![first];
                    let mut n_events = reports[0].report.events.len();
                    while n_events * 3 < MAX_BATCH_WRITES {
                        match self.jobs.try_recv() {
                            Ok(Job::Report(next)) => {
                                n_events += next.report.events.len();
                                reports.push(next);
                            }
                            Ok(other) => {
                                pending = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.reports(reports).await;
                }
                Job::Lifecycle(job) => {
                    let result = self.lifecycle(&job).await;
                    let _ = job.done.send(result); // the caller may have gone: nothing to tell
                }
                Job::Purge(job) => {
                    let result = self.purge(&job).await;
                    let _ = job.done.send(result); // the caller may have gone: nothing to tell
                }
            }
        }
    }

    /// Commits `overlay`'s writes (with `audit`), then records the new cursors and publishes
    /// the changes to the hub: only once they are durable. The cached days of the daily rows
    /// it wrote are invalidated once it is durable, or failed (what reached the store is then
    /// unknown), before any of its jobs is answered.
    async fn commit(
        &self,
        overlay: Overlay<'_>,
        audit: Option<AuditEntry>,
    ) -> Result<(), ServerError> {
        let Overlay {
            writes,
            cursors,
            published,
            ..
        } = overlay;
        if writes.is_empty() && audit.is_none() {
            return Ok(());
        }
        let days = day_cache::touched(&writes);
        let committed = async {
            self.writer
                .reserve()
                .await?
                .submit(writes, audit)?
                .wait()
                .await
        }
        .await;
        if !days.is_empty() {
            self.day_cache.invalidate(days);
        }
        committed?;
        for (org, cursor) in cursors {
            self.shared.publish(&org, cursor);
        }
        if let Some(published) = published {
            self.hub.publish(&published);
        }
        Ok(())
    }

    async fn reports(&self, reports: Vec<ReportJob>) {
        let mut overlay = Overlay::new(&*self.store);
        let now_ms = keys::millis(std::time::SystemTime::now());
        let mut answers = Vec::with_capacity(reports.len());
        for report in reports {
            let result = self.planner().report(&mut overlay, &report.report, now_ms);
            answers.push((report.done, result));
        }
        match self.commit(overlay, None).await {
            Ok(()) => {
                for (done, result) in answers {
                    let _ = done.send(result); // a session that ended needs no answer
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "events not stored: the commit failed");
                let text = e.to_string();
                for (done, _) in answers {
                    let error = match &e {
                        ServerError::Unavailable => ServerError::Unavailable,
                        _ => ServerError::Internal(text.clone()),
                    };
                    let _ = done.send(Err(error)); // a session that ended needs no answer
                }
            }
        }
    }

    async fn lifecycle(&self, job: &LifecycleJob) -> Result<u64, ServerError> {
        let org = &job.org;
        let selected: Vec<(Vec<u8>, EventRecord)> = match &job.target {
            Target::Ids(ids) => {
                let mut found = Vec::with_capacity(ids.len());
                for id in ids {
                    let key = id.to_bytes();
                    let record = self
                        .store
                        .event_entry(org, EventTable::Events, &key)?
                        .and_then(|raw| keys::decode::<EventRecord>(&raw))
                        .ok_or_else(|| {
                            ServerError::NotFound(format!("event {} not found", id.id()))
                        })?;
                    found.push((key, record));
                }
                found
            }
            Target::Filter(filter) => filter.scan(&*self.store, org, usize::MAX)?,
        };
        let now_ms = keys::millis(std::time::SystemTime::now());
        let changing: Vec<_> = selected
            .into_iter()
            .filter_map(|(key, record)| job.action.apply(record.state).map(|to| (key, record, to)))
            .collect();
        let total = changing.len() as u64;
        let mut chunks = changing.chunks(LIFECYCLE_CHUNK).peekable();
        if chunks.peek().is_none() {
            self.commit(Overlay::new(&*self.store), Some(job.audit.clone()))
                .await?;
            return Ok(0);
        }
        while let Some(chunk) = chunks.next() {
            let mut overlay = Overlay::new(&*self.store);
            for (key, record, to) in chunk {
                let mut record = record.clone();
                record.state = *to;
                record.state_changed_by = job.by.clone();
                record.state_changed_at_ms = Some(now_ms);
                match job.action {
                    Action::Acknowledge => {
                        record.acknowledged_by = job.by.clone();
                        record.acknowledged_at_ms = Some(now_ms);
                    }
                    Action::Reopen => {
                        record.acknowledged_by.clear();
                        record.acknowledged_at_ms = None;
                    }
                    Action::Resolve => {}
                }
                let value =
                    keys::encode(&record).map_err(|e| ServerError::Internal(e.to_string()))?;
                overlay.put(org, EventTable::Events, key.clone(), value);
                self.planner().log_change(
                    &mut overlay,
                    org,
                    (key.clone(), &record),
                    job.action.change(),
                    now_ms,
                )?;
            }
            // The audit entry goes with the last chunk: it records the call's success.
            let audit = chunks.peek().is_none().then(|| job.audit.clone());
            self.commit(overlay, audit).await?;
        }
        Ok(total)
    }

    /// Removes raw events, fingerprints and changes past the events retention, and hourly
    /// counts past theirs (daily counts once their whole day is), in chunks. The newest change of an org always stays: it numbers the
    /// next one.
    async fn purge(&self, job: &PurgeJob) -> Result<u64, ServerError> {
        let raw_cutoff = job.now_ms.saturating_sub(super::ms(self.config.retention));
        let stats_cutoff = keys::hour_of(job.now_ms.saturating_sub(keys::millis(
            keys::from_millis(0) + self.config.stats_retention,
        )));
        let mut removed = 0;
        for org in &job.orgs {
            let cutoff_key = keys::time_floor(raw_cutoff);
            removed += self
                .purge_range(org, EventTable::Events, &[], Some(&cutoff_key), |_, _| true)
                .await?;
            // Fingerprints whose event is gone.
            removed += self
                .purge_range(org, EventTable::Fingerprints, &[], None, |_, value| {
                    value < cutoff_key.as_slice()
                })
                .await?;
            let last = self.shared.last_cursor(&*self.store, org)?;
            removed += self
                .purge_range(
                    org,
                    EventTable::Changes,
                    &[],
                    Some(&keys::cursor_key(last)),
                    |_, value| {
                        keys::decode::<ChangeEntry>(value).is_none_or(|c| c.at_ms < raw_cutoff)
                    },
                )
                .await?;
            let hours_key = keys::time_floor(stats_cutoff);
            for table in [
                EventTable::KindHours,
                EventTable::AgentHours,
                EventTable::HourTotals,
            ] {
                removed += self
                    .purge_range(org, table, &[], Some(&hours_key), |_, _| true)
                    .await?;
            }
            removed += self.purge_kind_series(org, stats_cutoff).await?;
            // A day goes once all of it is past: its row never covers less than the hours kept.
            let days_key = keys::time_floor(rollup::day_of(stats_cutoff));
            for table in [EventTable::DayKinds, EventTable::DayAgents] {
                removed += self
                    .purge_range(org, table, &[], Some(&days_key), |_, _| true)
                    .await?;
            }
        }
        Ok(removed)
    }

    /// Removes the rows of [`EventTable::KindSeries`] before `cutoff`, kind by kind (one seek
    /// per kind, then only the rows removed).
    async fn purge_kind_series(&self, org: &OrgId, cutoff: u64) -> Result<u64, ServerError> {
        let mut removed = 0;
        let mut from = Vec::new();
        loop {
            let first = self
                .store
                .event_entries(org, EventTable::KindSeries, &from, None, false)
                .next();
            let Some(entry) = first else {
                return Ok(removed);
            };
            let (key, _) = entry?;
            let Some(nul) = key.iter().position(|&b| b == 0) else {
                tracing::warn!(org = %org, "a kind series key has no kind; skipped");
                from = key;
                from.push(0);
                continue;
            };
            from = key[..=nul].to_vec();
            let mut to = from.clone();
            to.extend_from_slice(&cutoff.to_be_bytes());
            removed += self
                .purge_range(org, EventTable::KindSeries, &from, Some(&to), |_, _| true)
                .await?;
            from[nul] = 1; // past every hour of this kind
        }
    }

    /// Removes the entries of `table` from `from` and before `to` (all with `None`) that
    /// `doomed` picks, in chunks. Stops at the first entry `doomed` spares when `to` is set (tables in time order:
    /// change log entries are in time order too).
    async fn purge_range(
        &self,
        org: &OrgId,
        table: EventTable,
        from: &[u8],
        to: Option<&[u8]>,
        doomed: impl Fn(&[u8], &[u8]) -> bool,
    ) -> Result<u64, ServerError> {
        let mut removed = 0;
        loop {
            let mut keys_out = Vec::new();
            let mut stop = false;
            for entry in self.store.event_entries(org, table, from, to, false) {
                let (key, value) = entry?;
                if !doomed(&key, &value) {
                    if to.is_some() {
                        stop = true;
                        break;
                    }
                    continue;
                }
                keys_out.push(key);
                if keys_out.len() >= PURGE_CHUNK {
                    break;
                }
            }
            if keys_out.is_empty() {
                return Ok(removed);
            }
            let n = keys_out.len();
            let mut overlay = Overlay::new(&*self.store);
            for key in keys_out {
                overlay.delete(org, table, key);
            }
            self.commit(overlay, None).await?;
            removed += n as u64;
            if stop || n < PURGE_CHUNK {
                return Ok(removed);
            }
        }
    }
}

mod bulk;
mod overlay;

use self::overlay::Overlay;
#[cfg(test)]
pub(crate) mod tests;

pub use self::bulk::{BulkLoader, Loaded};
