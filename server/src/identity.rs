//! Machine identity: which agent an enrollment becomes, how two machines holding one agent
//! credential are told apart from one machine restarting, and the locks and limits that keep
//! both decisions race-free and cheap.
//!
//! The rules (docs/security.md, "Identity", says them for operators):
//!
//! - A hardware id is a hint, never a proof. [`decide`] lets an enrollment take over an existing
//!   agent only with proof (the agent's valid previous credential) or an admin's permission
//!   (a per-agent reclaim, or a token created with `allow_reclaim`); otherwise the enrollment
//!   is a new agent, and agents sharing a hardware id are flagged `duplicate_hardware_id`.
//! - Enrollments are serialized per (org, hardware id), and every change of one agent's
//!   identity (take-over, deletion, reclaim permission) per agent, by [`IdentityLocks`]: the
//!   decision, the commit and the registry update happen under the lock, so a deleted agent is
//!   never brought back and only one credential of an agent is ever valid. Lock order: a
//!   hardware lock before an agent lock, never the other way round.
//! - [`ReenrollLimiter`] bounds how often one hardware id the org already knows may enroll.
//! - [`NewAgentSlots`] counts the new agents of each org that are being enrolled but not yet
//!   in the registry, so that concurrent enrollments together never pass the org's agent limit.
//! - [`IdentityWatch`] remembers, per agent, which agent processes recently lost their session
//!   to another process. A process that comes back and replaces the one that replaced it is
//!   the signature of two machines sharing one credential (a restarted agent never comes
//!   back: its process is gone): the agent is flagged `identity_conflict`, and past
//!   [`ConflictPolicy::max_replacements`] within the window the newcomer is refused.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::domain::{AgentId, OrgId, SystemInfo, Time};
use crate::rate::TokenBucket;

/// Most recently displaced agent processes remembered per agent.
const MAX_DISPLACED: usize = 8;

/// The identity state every handler shares: the locks, the re-enrollment limiter and the
/// slots of new agents being enrolled.
pub struct Identity {
    pub locks: IdentityLocks,
    pub reenroll: ReenrollLimiter,
    pub new_agents: NewAgentSlots,
}

impl Identity {
    pub fn new(reenroll: ReenrollRate) -> Self {
        Self {
            locks: IdentityLocks::default(),
            reenroll: ReenrollLimiter::new(reenroll),
            new_agents: NewAgentSlots::default(),
        }
    }
}

// === the org's agent limit ===

/// New agents of each org between the limit check and their insertion into the registry.
///
/// Invariant: every new agent is inserted through [`NewAgentSlot::fill`], which runs under the
/// same mutex as [`NewAgentSlots::take`]'s check, so `agents in the registry + slots taken`
/// never exceeds the limit, whatever the number of concurrent enrollments.
#[derive(Default)]
pub struct NewAgentSlots {
    pending: Mutex<HashMap<OrgId, usize>>,
}

/// One new agent's place under its org's limit; given back when dropped.
pub struct NewAgentSlot<'a> {
    slots: &'a NewAgentSlots,
    /// `None` once given back.
    org: Option<OrgId>,
}

impl NewAgentSlots {
    /// Takes a slot for one more agent of `org` if `existing()` (the agents the registry
    /// holds) plus the slots already taken stays below `max`; `None` at the limit.
    pub fn take(
        &self,
        org: &OrgId,
        max: usize,
        existing: impl FnOnce() -> usize,
    ) -> Option<NewAgentSlot<'_>> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let taken = pending.get(org).copied().unwrap_or(0);
        if existing() + taken >= max {
            return None;
        }
        *pending.entry(org.clone()).or_insert(0) += 1;
        Some(NewAgentSlot {
            slots: self,
            org: Some(org.clone()),
        })
    }

    /// Slots taken for `org` and not given back (for tests).
    pub fn taken(&self, org: &OrgId) -> usize {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.get(org).copied().unwrap_or(0)
    }

    fn give_back(pending: &mut HashMap<OrgId, usize>, org: &OrgId) {
        if let Some(taken) = pending.get_mut(org) {
            *taken -= 1;
            if *taken == 0 {
                pending.remove(org);
            }
        }
    }
}

impl NewAgentSlot<'_> {
    /// Runs `insert` (which puts the agent into the registry) and gives the slot back in one
    /// step, so that no check sees the agent counted twice or not at all.
    pub fn fill<T>(mut self, insert: impl FnOnce() -> T) -> T {
        let org = self.org.take().expect("a slot is given back once");
        let mut pending = self.slots.pending.lock().unwrap_or_else(|e| e.into_inner());
        let inserted = insert();
        NewAgentSlots::give_back(&mut pending, &org);
        inserted
    }
}

impl Drop for NewAgentSlot<'_> {
    fn drop(&mut self) {
        if let Some(org) = self.org.take() {
            let mut pending = self.slots.pending.lock().unwrap_or_else(|e| e.into_inner());
            NewAgentSlots::give_back(&mut pending, &org);
        }
    }
}

// === enrollment decision ===

/// Why an enrollment may take over an existing agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The machine presented the agent's valid credential.
    Proof,
    /// An admin allowed this agent to be reclaimed (`AllowAgentReclaim`).
    AdminReclaim,
    /// The enrollment token allows reclaiming the one disconnected agent with this hardware id.
    TokenReclaim,
}

impl Claim {
    /// How the audit trail names it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Proof => "proved by its previous credential",
            Self::AdminReclaim => "reclaim allowed by an admin",
            Self::TokenReclaim => "reclaim allowed by the enrollment token",
        }
    }
}

/// Another agent of the org with the enrolling machine's hardware id.
#[derive(Clone, Debug, PartialEq)]
pub struct HardwareMate {
    pub id: AgentId,
    pub connected: bool,
    pub reclaim_until: Option<SystemTime>,
}

/// Which agent an enrollment becomes.
#[derive(Clone, Debug, PartialEq)]
pub enum EnrollDecision {
    /// Take over this existing agent.
    Reuse { agent: AgentId, claim: Claim },
    /// A new agent; `sharing` are the agents already using the hardware id (all of them, and
    /// the new one, are flagged `duplicate_hardware_id`).
    New { sharing: Vec<AgentId> },
}

/// Decides which agent an enrollment becomes. `proven` is the agent whose valid credential the
/// machine presented (and that still exists); `mates` are the org's agents with the machine's
/// hardware id (none for an empty hardware id).
pub fn decide(
    proven: Option<AgentId>,
    token_allows_reclaim: bool,
    mates: &[HardwareMate],
    now: SystemTime,
) -> EnrollDecision {
    if let Some(agent) = proven {
        return EnrollDecision::Reuse {
            agent,
            claim: Claim::Proof,
        };
    }
    if let Some(mate) = mates
        .iter()
        .find(|m| m.reclaim_until.is_some_and(|until| now < until))
    {
        return EnrollDecision::Reuse {
            agent: mate.id.clone(),
            claim: Claim::AdminReclaim,
        };
    }
    if let [only] = mates
        && token_allows_reclaim
        && !only.connected
    {
        return EnrollDecision::Reuse {
            agent: only.id.clone(),
            claim: Claim::TokenReclaim,
        };
    }
    EnrollDecision::New {
        sharing: mates.iter().map(|m| m.id.clone()).collect(),
    }
}

// === locks ===

/// What an identity lock serializes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LockKey {
    /// Enrollments reporting this hardware id in this org.
    Hardware(OrgId, String),
    /// Changes of this agent's identity: take-over, deletion, reclaim permission.
    Agent(OrgId, AgentId),
}

/// Async locks by key, created on first use and forgotten once unused.
#[derive(Default)]
pub struct IdentityLocks {
    locks: Mutex<LockMap>,
}

#[derive(Default)]
struct LockMap {
    by_key: HashMap<LockKey, Weak<tokio::sync::Mutex<()>>>,
    /// Size at which unused entries are swept next (amortised: twice the size left after a
    /// sweep), so the map holds about as many entries as locks in use.
    sweep_at: usize,
}

/// Holds one identity lock until dropped.
pub struct IdentityGuard {
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl IdentityLocks {
    /// Waits for the lock of `key`.
    ///
    /// # Cancellation
    ///
    /// Cancel-safe: dropping the future before it resolves takes no lock.
    pub async fn lock(&self, key: LockKey) -> IdentityGuard {
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            if map.by_key.len() >= map.sweep_at {
                map.by_key.retain(|_, lock| lock.strong_count() > 0);
                map.sweep_at = (map.by_key.len() * 2).max(64);
            }
            match map.by_key.get(&key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    map.by_key.insert(key, Arc::downgrade(&lock));
                    lock
                }
            }
        };
        IdentityGuard {
            _guard: lock.lock_owned().await,
        }
    }

    /// How many keys the map remembers (for tests of its bound).
    pub fn n_keys(&self) -> usize {
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_key
            .len()
    }
}

// === re-enrollment rate ===

/// How often one hardware id the org already knows may enroll again.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReenrollRate {
    pub per_minute: u32,
    pub burst: u32,
}

/// A token bucket per (org, hardware id); buckets that refilled are forgotten.
pub struct ReenrollLimiter {
    rate: ReenrollRate,
    buckets: Mutex<BucketMap>,
}

#[derive(Default)]
struct BucketMap {
    by_key: HashMap<(OrgId, String), TokenBucket>,
    sweep_at: usize,
}

impl ReenrollLimiter {
    pub fn new(rate: ReenrollRate) -> Self {
        Self {
            rate,
            buckets: Mutex::default(),
        }
    }

    /// Takes one re-enrollment of `hardware_id` in `org` at `now`.
    ///
    /// # Errors
    ///
    /// How long to wait before the next one is allowed.
    pub fn take(
        &self,
        org: &OrgId,
        hardware_id: &str,
        now: std::time::Instant,
    ) -> Result<(), Duration> {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if map.by_key.len() >= map.sweep_at {
            map.by_key.retain(|_, bucket| !bucket.is_full(now));
            map.sweep_at = (map.by_key.len() * 2).max(1024);
        }
        let per_second = f64::from(self.rate.per_minute) / 60.0;
        let burst = f64::from(self.rate.burst);
        let bucket = map
            .by_key
            .entry((org.clone(), hardware_id.to_owned()))
            .or_insert_with(|| TokenBucket::new(per_second, burst, now));
        if bucket.try_take(now) {
            Ok(())
        } else {
            Err(bucket.time_to_next(now))
        }
    }

    /// How many hardware ids the limiter remembers (for tests of its bound).
    pub fn n_tracked(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_key
            .len()
    }
}

// === two machines, one credential ===

/// When sessions replacing each other count as an identity conflict.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConflictPolicy {
    /// How long a displaced process, and a conflict, are remembered; the flag clears once no
    /// conflict happened for this long.
    pub window: Duration,
    /// Conflicting replacements allowed within the window; the next conflicting session is
    /// refused (`FAILED_PRECONDITION`) and the incumbent keeps its session.
    pub max_replacements: u32,
}

/// Who holds a session: the agent process (its instance id) on a machine.
#[derive(Clone, Debug, PartialEq)]
pub struct Host {
    pub instance_id: String,
    pub hostname: String,
    pub hardware_id: String,
    pub boot_time: Option<Time>,
}

impl Host {
    pub fn new(instance_id: &str, info: &SystemInfo) -> Self {
        Self {
            instance_id: instance_id.to_owned(),
            hostname: info.hostname.clone(),
            hardware_id: info.hardware_id.clone(),
            boot_time: info.boot_time,
        }
    }

    /// Identifies the agent process: its instance id, or (for agents that send none) the
    /// machine as it describes itself, boot time included.
    pub fn key(&self) -> u64 {
        let mut hasher = std::hash::DefaultHasher::new();
        if self.instance_id.is_empty() {
            (&self.hostname, &self.hardware_id, self.boot_time).hash(&mut hasher);
        } else {
            self.instance_id.hash(&mut hasher);
        }
        hasher.finish()
    }

    /// Whether `other` runs on the same machine, booted at the same time.
    pub fn same_machine(&self, other: &Host) -> bool {
        self.hostname == other.hostname
            && self.hardware_id == other.hardware_id
            && self.boot_time == other.boot_time
    }

    fn describe(&self) -> String {
        let booted = self.boot_time.map_or_else(
            || "unknown boot time".to_owned(),
            |t| format!("booted {}", humantime::format_rfc3339_seconds(t.get())),
        );
        let instance = if self.instance_id.is_empty() {
            String::new()
        } else {
            format!(", agent instance {}", self.instance_id)
        };
        format!(
            "{:?} (hardware id {:?}, {booted}{instance})",
            self.hostname, self.hardware_id
        )
    }
}

/// Longest conflict detail kept and shown (the agent list, watch events, the refusal and the
/// audit trail carry it): the machines' own descriptions are agent-chosen text.
pub const MAX_CONFLICT_DETAIL_BYTES: usize = 1024;

/// What the server tells operators and the refused agent about a conflict between `a` (the
/// session in place) and `b` (the newcomer), at most [`MAX_CONFLICT_DETAIL_BYTES`]. The
/// agent-chosen parts are quoted with Rust's escaping, so the detail holds no control or
/// format character whatever the agents reported.
pub fn conflict_detail(a: &Host, b: &Host) -> String {
    let detail = if a.same_machine(b) {
        format!(
            "two agent processes on {} share one state directory (instances {:?} and {:?})",
            a.describe(),
            a.instance_id,
            b.instance_id
        )
    } else {
        format!(
            "two machines share this agent's credential: {} and {} keep replacing each \
             other's session",
            a.describe(),
            b.describe()
        )
    };
    crate::audit::bounded(&detail, MAX_CONFLICT_DETAIL_BYTES)
}

/// What the refused newcomer is told to do.
pub fn conflict_remedy(a: &Host, b: &Host) -> &'static str {
    if a.same_machine(b) {
        "stop one of the two agent processes, or give each its own --state-dir"
    } else {
        "on the machine that is a copy, stop tether-agent, delete its state directory \
         (state.json) and start it again with --enroll-token: it enrolls as a new agent, and \
         this one keeps its identity (see docs/security.md, Identity)"
    }
}

/// What a replacement by another agent process means ([`IdentityWatch::on_replace`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replacement {
    /// A process replaced one that did not come back (a restart, a reconnect from a new
    /// process): nothing to flag.
    Ordinary,
    /// A process replaced the one that had replaced it: two live processes share the
    /// credential. `first` when this raised the flag.
    Conflict { first: bool },
    /// Past the allowed number of conflicts: the newcomer must be refused.
    Refused,
}

/// Per-agent memory of processes that lost their session to another process, and of the
/// conflicts seen. Allocated only for agents whose sessions were replaced by another process,
/// and dropped once it has nothing left to remember.
#[derive(Debug, Default)]
pub struct IdentityWatch {
    /// Processes (by [`Host::key`]) whose session another process replaced, and when.
    displaced: VecDeque<(u64, Instant)>,
    /// Conflicting replacements and refusals within the window, oldest first.
    conflicts: VecDeque<Instant>,
    /// What the last conflict was between; empty while not flagged.
    pub detail: String,
    /// Set by the first refusal: from then on every conflicting newcomer is refused, until
    /// no conflict happened for a whole window (a refused agent retries slowly, so counting
    /// alone would let it back in between its retries).
    refusing: bool,
    /// When a conflicting replacement that was let in was last audited (at most once per
    /// [`AUDIT_INTERVAL`] per agent; every one is counted). Refusals are audited within the
    /// credential's refusal budget (`audit::RefusalAudits`), like every other refusal.
    last_audit: Option<Instant>,
}

/// Least time between two audit records of one agent's conflicting replacements.
pub const AUDIT_INTERVAL: Duration = Duration::from_secs(60);

impl IdentityWatch {
    /// Records that the session of process `old` is being replaced by one of process `new`
    /// (`old != new`) at `now`, and says what it means.
    pub fn on_replace(
        &mut self,
        old: u64,
        new: u64,
        now: Instant,
        policy: &ConflictPolicy,
    ) -> Replacement {
        self.expire(now, policy);
        let was_flagged = self.is_flagged();
        let ping_pong = self.displaced.iter().any(|(key, _)| *key == new);
        if ping_pong {
            let refused = self.refusing || self.conflicts.len() >= policy.max_replacements as usize;
            self.refusing |= refused;
            self.conflicts.push_back(now);
            while self.conflicts.len() > policy.max_replacements as usize + 1 {
                self.conflicts.pop_front();
            }
            if refused {
                // The newcomer keeps being recognised for as long as it keeps trying.
                self.remember(new, now);
                return Replacement::Refused;
            }
            self.remember(old, now);
            return Replacement::Conflict {
                first: !was_flagged,
            };
        }
        self.remember(old, now);
        Replacement::Ordinary
    }

    /// Forgets what is older than the window at `now`. Returns whether that cleared the flag.
    pub fn expire(&mut self, now: Instant, policy: &ConflictPolicy) -> bool {
        let was_flagged = self.is_flagged();
        let fresh = |at: &Instant| now.saturating_duration_since(*at) < policy.window;
        self.displaced.retain(|(_, at)| fresh(at));
        self.conflicts.retain(fresh);
        if !self.is_flagged() {
            self.detail.clear();
            self.refusing = false;
        }
        was_flagged && !self.is_flagged()
    }

    /// Whether something remembered is older than the window at `now`: [`Self::expire`]
    /// has work to do.
    pub fn needs_expiry(&self, now: Instant, policy: &ConflictPolicy) -> bool {
        let stale = |at: &Instant| now.saturating_duration_since(*at) >= policy.window;
        self.displaced.front().is_some_and(|(_, at)| stale(at))
            || self.conflicts.front().is_some_and(stale)
    }

    /// Whether a conflict happened within the window (as of the last update).
    pub fn is_flagged(&self) -> bool {
        !self.conflicts.is_empty()
    }

    /// Whether nothing is left to remember.
    pub fn is_empty(&self) -> bool {
        self.displaced.is_empty() && self.conflicts.is_empty()
    }

    /// Whether a conflicting replacement let in at `now` should be audited, and records that
    /// it is.
    pub fn audit_due(&mut self, now: Instant) -> bool {
        let due = self
            .last_audit
            .is_none_or(|at| now.saturating_duration_since(at) >= AUDIT_INTERVAL);
        if due {
            self.last_audit = Some(now);
        }
        due
    }

    fn remember(&mut self, key: u64, now: Instant) {
        self.displaced.retain(|(k, _)| *k != key);
        self.displaced.push_back((key, now));
        while self.displaced.len() > MAX_DISPLACED {
            self.displaced.pop_front();
        }
    }
}

#[cfg(test)]
mod tests;
