//! Fixtures shared by the unit tests of the writer and the registry: records and samples of
//! synthetic agents, and a store whose commits can be made to fail. With the `test-support`
//! feature the end-to-end tests use the failing store too ([`crate::server::start_with_store`]);
//! nothing in the server or its binary reaches it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::command::record::{
    CommandEvent, CommandPage, CommandQuery, CommandRecord, InvocationRecord,
};
use crate::domain::{
    AgentId, AgentRecord, AuditRecord, CommandId, OrgId, Sample, SampleTotals, SystemInfo,
    Transition,
};
use crate::store::{self, Encoded, SledStore, Snapshot, Store, StoreError, Write};

/// An enrolled agent `id` of `org` whose machine has hardware id `hardware_id`.
pub fn agent_record(org: &str, id: &str, hardware_id: &str) -> AgentRecord {
    AgentRecord {
        id: AgentId::new(id),
        org: OrgId::new(org),
        name: id.to_owned(),
        labels: [("env".to_owned(), "prod".to_owned())].into(),
        system_info: SystemInfo {
            hostname: format!("{id}.example"),
            os_name: "linux".to_owned(),
            hardware_id: hardware_id.to_owned(),
            ..SystemInfo::default()
        },
        enrolled_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000),
        pinned_labels: Default::default(),
        reclaim_until: None,
    }
}

/// A plausible sample with `seq`, taken now.
pub fn sample(seq: u64) -> Sample {
    Sample {
        seq,
        time: crate::domain::Time::now(),
        cpu_percent: 10.0,
        load: [0.5; 3],
        memory_used_bytes: 100,
        memory_total_bytes: 1000,
        swap_used_bytes: 0,
        swap_total_bytes: 0,
        disks: vec![],
        network_rx_bytes: 0,
        network_tx_bytes: 0,
        uptime: Duration::from_secs(60),
        process_count: 10,
    }
}

/// A real [`SledStore`] whose commits fail, without writing anything, while
/// [`FailingStore::fail`] is set, and take longer while [`FailingStore::slow`] says so: the two
/// things a healthy disk will not do on request.
pub struct FailingStore {
    pub inner: SledStore,
    pub fail: AtomicBool,
    /// The keys each successful commit put, in commit order, for tests that count writes.
    #[cfg(test)]
    pub puts: std::sync::Mutex<Vec<Vec<Vec<u8>>>>,
    /// Extra time each commit takes, in milliseconds.
    pub commit_delay_ms: AtomicU64,
}

impl FailingStore {
    pub fn new(inner: SledStore) -> Self {
        Self {
            inner,
            fail: AtomicBool::new(false),
            #[cfg(test)]
            puts: std::sync::Mutex::default(),
            commit_delay_ms: AtomicU64::new(0),
        }
    }

    pub fn fail(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }

    /// Makes every commit take `delay` longer (a slow disk); zero restores the real pace.
    pub fn slow(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.commit_delay_ms.store(ms, Ordering::SeqCst);
    }
}

impl Store for FailingStore {
    fn load(&self) -> store::Result<Snapshot> {
        self.inner.load()
    }

    fn encode(&self, write: &Write) -> store::Result<Encoded> {
        self.inner.encode(write)
    }

    fn commit(&self, writes: Vec<Encoded>) -> store::Result<()> {
        let delay = self.commit_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            // Commits run on the blocking pool, as a slow disk's would.
            std::thread::sleep(Duration::from_millis(delay));
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Backend(Box::new(std::io::Error::other(
                "injected commit failure",
            ))));
        }
        #[cfg(test)]
        let keys: Vec<Vec<u8>> = writes
            .iter()
            .flat_map(Encoded::puts)
            .map(|(key, _)| key.to_vec())
            .collect();
        self.inner.commit(writes)?;
        #[cfg(test)]
        self.puts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(keys);
        Ok(())
    }

    fn export(&self, visit: &mut crate::store::Visit<'_>) -> store::Result<u64> {
        self.inner.export(visit)
    }

    fn samples(
        &self,
        org: &OrgId,
        agent: &AgentId,
        from: SystemTime,
        to: SystemTime,
        limit: usize,
    ) -> store::Result<Vec<Sample>> {
        self.inner.samples(org, agent, from, to, limit)
    }

    fn sample_totals<'a>(
        &'a self,
        org: &OrgId,
        agent: &AgentId,
        from: SystemTime,
        to: SystemTime,
    ) -> Box<dyn Iterator<Item = store::Result<SampleTotals>> + 'a> {
        self.inner.sample_totals(org, agent, from, to)
    }

    fn transitions(
        &self,
        org: &OrgId,
        agent: &AgentId,
        limit: usize,
    ) -> store::Result<Vec<Transition>> {
        self.inner.transitions(org, agent, limit)
    }

    fn audit_records(
        &self,
        org: &OrgId,
        after: u64,
        limit: usize,
    ) -> store::Result<Vec<AuditRecord>> {
        self.inner.audit_records(org, after, limit)
    }

    fn rollups<'a>(
        &'a self,
        org: &OrgId,
        agent: &AgentId,
        resolution: store::Resolution,
        from: SystemTime,
        to: SystemTime,
    ) -> Box<dyn Iterator<Item = store::Result<store::RollupBucket>> + 'a> {
        self.inner.rollups(org, agent, resolution, from, to)
    }

    fn compact(
        &self,
        now: SystemTime,
        checkpoint: store::Checkpoint<'_>,
    ) -> store::Result<store::Compacted> {
        self.inner.compact(now, checkpoint)
    }

    fn purge(&self, retention: &store::Retention) -> store::Result<store::Purged> {
        self.inner.purge(retention)
    }

    fn memory(&self) -> store::StoreMemory {
        self.inner.memory()
    }

    fn active_commands(&self) -> store::Result<Vec<CommandRecord>> {
        self.inner.active_commands()
    }

    fn command(&self, org: &OrgId, id: &CommandId) -> store::Result<Option<CommandRecord>> {
        Store::command(&self.inner, org, id)
    }

    fn commands(
        &self,
        org: &OrgId,
        query: &CommandQuery,
        max_scan: usize,
    ) -> store::Result<CommandPage> {
        Store::commands(&self.inner, org, query, max_scan)
    }

    fn invocations(
        &self,
        org: &OrgId,
        command: &CommandId,
        after: Option<u32>,
        limit: usize,
    ) -> store::Result<Vec<InvocationRecord>> {
        Store::invocations(&self.inner, org, command, after, limit)
    }

    fn command_events(
        &self,
        org: &OrgId,
        command: &CommandId,
        after: u64,
        until: u64,
        limit: usize,
        max_bytes: usize,
    ) -> store::Result<Vec<(u64, CommandEvent)>> {
        Store::command_events(&self.inner, org, command, after, until, limit, max_bytes)
    }

    fn idempotent_command(
        &self,
        org: &OrgId,
        key: &str,
        since: SystemTime,
    ) -> store::Result<Option<CommandId>> {
        Store::idempotent_command(&self.inner, org, key, since)
    }

    fn expired_commands(
        &self,
        cutoff: SystemTime,
        limit: usize,
    ) -> store::Result<Vec<CommandRecord>> {
        Store::expired_commands(&self.inner, cutoff, limit)
    }

    fn event_entry(
        &self,
        org: &OrgId,
        table: store::EventTable,
        key: &[u8],
    ) -> store::Result<Option<Vec<u8>>> {
        Store::event_entry(&self.inner, org, table, key)
    }

    fn event_entries<'a>(
        &'a self,
        org: &OrgId,
        table: store::EventTable,
        from: &[u8],
        to: Option<&[u8]>,
        reverse: bool,
    ) -> store::EventEntries<'a> {
        Store::event_entries(&self.inner, org, table, from, to, reverse)
    }
}
