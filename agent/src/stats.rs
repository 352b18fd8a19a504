//! Live counters about the agent, shared with whoever spawned it (the binary, the server's
//! `--dev` mode, the end-to-end tests).
//!
//! Every counter is an atomic updated by the agent's tasks and read through a getter; reading
//! never blocks the agent.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Sentinel for "no RTT measured yet".
const NO_RTT: u64 = u64::MAX;
/// Sentinel for "no clock offset measured yet".
const NO_OFFSET: i64 = i64::MIN;

/// Counters describing what the agent has done so far.
#[derive(Debug)]
pub struct AgentStats {
    connected: AtomicBool,
    sessions_started: AtomicU64,
    samples_taken: AtomicU64,
    samples_sent: AtomicU64,
    samples_acked_seq: AtomicU64,
    samples_dropped: AtomicU64,
    samples_buffered: AtomicU64,
    samples_acked: AtomicU64,
    messages_sent: AtomicU64,
    reports_deferred: AtomicU64,
    session_failures: AtomicU64,
    invocations_accepted: AtomicU64,
    invocations_started: AtomicU64,
    invocations_finished: AtomicU64,
    events_spooled: AtomicU64,
    events_sent: AtomicU64,
    events_acked_seq: AtomicU64,
    events_pending: AtomicU64,
    events_spool_bytes: AtomicU64,
    events_dropped: AtomicU64,
    events_rate_limited: AtomicU64,
    events_rejected: AtomicU64,
    last_rtt_micros: AtomicU64,
    last_clock_offset_micros: AtomicI64,
    agent_id: Mutex<Option<String>>,
    session_id: Mutex<Option<String>>,
}

impl AgentStats {
    /// Fresh counters: disconnected, nothing sent.
    pub fn new() -> Self {
        Self {
            connected: AtomicBool::new(false),
            sessions_started: AtomicU64::new(0),
            samples_taken: AtomicU64::new(0),
            samples_sent: AtomicU64::new(0),
            samples_acked_seq: AtomicU64::new(0),
            samples_dropped: AtomicU64::new(0),
            samples_buffered: AtomicU64::new(0),
            samples_acked: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            reports_deferred: AtomicU64::new(0),
            session_failures: AtomicU64::new(0),
            invocations_accepted: AtomicU64::new(0),
            invocations_started: AtomicU64::new(0),
            invocations_finished: AtomicU64::new(0),
            events_spooled: AtomicU64::new(0),
            events_sent: AtomicU64::new(0),
            events_acked_seq: AtomicU64::new(0),
            events_pending: AtomicU64::new(0),
            events_spool_bytes: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
            events_rate_limited: AtomicU64::new(0),
            events_rejected: AtomicU64::new(0),
            last_rtt_micros: AtomicU64::new(NO_RTT),
            last_clock_offset_micros: AtomicI64::new(NO_OFFSET),
            agent_id: Mutex::new(None),
            session_id: Mutex::new(None),
        }
    }

    /// Events appended to the spool (the agent's own included).
    pub fn events_spooled(&self) -> u64 {
        self.events_spooled.load(Ordering::Relaxed)
    }

    /// Events written to a stream, re-sends included.
    pub fn events_sent(&self) -> u64 {
        self.events_sent.load(Ordering::Relaxed)
    }

    /// Highest event seq the server acknowledged.
    pub fn events_acked_seq(&self) -> u64 {
        self.events_acked_seq.load(Ordering::Relaxed)
    }

    /// Events in the spool not yet acknowledged (about: a partly acknowledged segment counts
    /// whole).
    pub fn events_pending(&self) -> u64 {
        self.events_pending.load(Ordering::Relaxed)
    }

    /// Bytes of the spool on disk.
    pub fn events_spool_bytes(&self) -> u64 {
        self.events_spool_bytes.load(Ordering::Relaxed)
    }

    /// Events the full spool dropped.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped.load(Ordering::Relaxed)
    }

    /// Events the rate limit dropped.
    pub fn events_rate_limited(&self) -> u64 {
        self.events_rate_limited.load(Ordering::Relaxed)
    }

    /// Events the server rejected (listed in an `EventAck`).
    pub fn events_rejected(&self) -> u64 {
        self.events_rejected.load(Ordering::Relaxed)
    }

    pub(crate) fn event_spooled(&self) {
        self.events_spooled.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_events_sent(&self, n: usize) {
        self.events_sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn events_acked(&self, seq: u64) {
        self.events_acked_seq.fetch_max(seq, Ordering::Relaxed);
    }

    pub(crate) fn set_events(&self, pending: u64, spool_bytes: u64) {
        self.events_pending.store(pending, Ordering::Relaxed);
        self.events_spool_bytes
            .store(spool_bytes, Ordering::Relaxed);
    }

    pub(crate) fn add_events_dropped(&self, n: u64) {
        self.events_dropped.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn event_rate_limited(&self) {
        self.events_rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_events_rejected(&self, n: usize) {
        self.events_rejected.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Whether a session is established (a `Welcome` arrived and the stream is still open).
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Number of sessions established, i.e. `Welcome`s received.
    pub fn sessions_started(&self) -> u64 {
        self.sessions_started.load(Ordering::Relaxed)
    }

    /// Number of samples taken by the collector.
    pub fn samples_taken(&self) -> u64 {
        self.samples_taken.load(Ordering::Relaxed)
    }

    /// Number of samples written to a stream, re-sends included.
    pub fn samples_sent(&self) -> u64 {
        self.samples_sent.load(Ordering::Relaxed)
    }

    /// Highest sequence number the server reported durable (`MetricsAck` or `Welcome`).
    pub fn samples_acked_seq(&self) -> u64 {
        self.samples_acked_seq.load(Ordering::Relaxed)
    }

    /// Samples dropped unacknowledged because the buffer was full.
    pub fn samples_dropped(&self) -> u64 {
        self.samples_dropped.load(Ordering::Relaxed)
    }

    /// Samples currently buffered awaiting acknowledgement.
    pub fn samples_buffered(&self) -> u64 {
        self.samples_buffered.load(Ordering::Relaxed)
    }

    /// Number of samples removed from the buffer because the server reported them durable.
    pub fn samples_acked(&self) -> u64 {
        self.samples_acked.load(Ordering::Relaxed)
    }

    /// Number of messages written to a stream (`Hello`, reports, pings, goodbyes).
    pub fn messages_sent(&self) -> u64 {
        self.messages_sent.load(Ordering::Relaxed)
    }

    /// Metrics reports the server deferred (`MetricsDeferred`): their samples were sent again.
    pub fn reports_deferred(&self) -> u64 {
        self.reports_deferred.load(Ordering::Relaxed)
    }

    /// Number of sessions that failed (could not open, broke, or timed out), as opposed to
    /// ending in an orderly way.
    pub fn session_failures(&self) -> u64 {
        self.session_failures.load(Ordering::Relaxed)
    }

    /// Round-trip time measured by the latest `Pong`.
    pub fn last_rtt(&self) -> Option<Duration> {
        match self.last_rtt_micros.load(Ordering::Relaxed) {
            NO_RTT => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// Server clock minus agent clock in microseconds, from the latest `Pong` (positive: the
    /// server's clock is ahead).
    pub fn last_clock_offset(&self) -> Option<i64> {
        match self.last_clock_offset_micros.load(Ordering::Relaxed) {
            NO_OFFSET => None,
            micros => Some(micros),
        }
    }

    /// The agent id, once loaded from the state directory or received from enrollment.
    pub fn agent_id(&self) -> Option<String> {
        lock(&self.agent_id).clone()
    }

    /// The id of the live session, if connected.
    pub fn session_id(&self) -> Option<String> {
        lock(&self.session_id).clone()
    }

    // --- updates, by the agent's own tasks ---

    /// Command invocations journaled as accepted (about to run).
    pub fn invocations_accepted(&self) -> u64 {
        self.invocations_accepted.load(Ordering::Relaxed)
    }

    /// Command invocations whose process (or built-in) started.
    pub fn invocations_started(&self) -> u64 {
        self.invocations_started.load(Ordering::Relaxed)
    }

    /// Command invocations that reached a terminal state in this process.
    pub fn invocations_finished(&self) -> u64 {
        self.invocations_finished.load(Ordering::Relaxed)
    }

    pub(crate) fn invocation_accepted(&self) {
        self.invocations_accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn invocation_started(&self) {
        self.invocations_started.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn invocation_finished(&self) {
        self.invocations_finished.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_agent_id(&self, agent_id: &str) {
        *lock(&self.agent_id) = Some(agent_id.to_owned());
    }

    pub(crate) fn session_established(&self, session_id: &str) {
        *lock(&self.session_id) = Some(session_id.to_owned());
        self.sessions_started.fetch_add(1, Ordering::Relaxed);
        self.connected.store(true, Ordering::Relaxed);
    }

    pub(crate) fn session_closed(&self) {
        self.connected.store(false, Ordering::Relaxed);
        *lock(&self.session_id) = None;
    }

    pub(crate) fn sample_taken(&self) {
        self.samples_taken.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_samples_sent(&self, n_samples: usize) {
        self.samples_sent.fetch_add(
            u64::try_from(n_samples).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn add_samples_acked(&self, n_samples: usize) {
        self.samples_acked.fetch_add(
            u64::try_from(n_samples).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn message_sent(&self) {
        self.messages_sent.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn report_deferred(&self) {
        self.reports_deferred.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn session_failed(&self) {
        self.session_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn acked(&self, durable_seq: u64) {
        self.samples_acked_seq
            .fetch_max(durable_seq, Ordering::Relaxed);
    }

    pub(crate) fn set_buffer(&self, n_buffered: usize, n_dropped: u64) {
        self.samples_buffered.store(
            u64::try_from(n_buffered).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.samples_dropped.store(n_dropped, Ordering::Relaxed);
    }

    pub(crate) fn set_clock(&self, rtt: Duration, offset_micros: i64) {
        let rtt_micros = u64::try_from(rtt.as_micros()).unwrap_or(NO_RTT - 1);
        self.last_rtt_micros
            .store(rtt_micros.min(NO_RTT - 1), Ordering::Relaxed);
        self.last_clock_offset_micros
            .store(offset_micros.max(NO_OFFSET + 1), Ordering::Relaxed);
    }
}

impl Default for AgentStats {
    fn default() -> Self {
        Self::new()
    }
}

/// Locks a stats mutex; a poisoned one still holds a usable value.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_session_and_clock() {
        let stats = AgentStats::new();
        assert!(!stats.connected());
        assert_eq!(stats.last_rtt(), None);
        assert_eq!(stats.last_clock_offset(), None);

        stats.session_established("s1");
        stats.set_clock(Duration::from_millis(3), -1500);
        stats.acked(10);
        stats.acked(4);
        assert!(stats.connected());
        assert_eq!(stats.session_id().as_deref(), Some("s1"));
        assert_eq!(stats.last_rtt(), Some(Duration::from_millis(3)));
        assert_eq!(stats.last_clock_offset(), Some(-1500));
        assert_eq!(stats.samples_acked_seq(), 10);

        stats.session_closed();
        assert!(!stats.connected());
        assert_eq!(stats.sessions_started(), 1);
    }
}
