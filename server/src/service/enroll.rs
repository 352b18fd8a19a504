//! The `Enroll` use case: which agent an enrolling machine becomes, made durable, then applied
//! to the token cache and the registry.
//!
//! The rules are `crate::identity`'s (a hardware id is a hint, never a proof). What this file
//! adds is their order: the re-enrollment rate, then one use of the enrollment token, then, under
//! the lock of (org, hardware id), the decision; a take-over also takes the lock of the agent it
//! takes over (the lock `DeleteAgent` and `AllowAgentReclaim` take) and checks the decision
//! again under it; then the commit; then the cache (the new credential in, the superseded ones
//! out) and the registry. So a deleted agent is never brought back, concurrent enrollments of
//! one machine leave exactly one valid credential, and superseded credentials are deleted
//! rather than kept revoked: re-enrolling costs no memory or disk that stays.

use std::time::SystemTime;

use crate::auth::{self, Caller, CredentialCheck, Secret};
use crate::domain::{
    AgentId, AgentRecord, AgentStatus, EnrollmentTokenRecord, Labels, LiveRecord, OrgId, Role,
    StatusReason, TokenId,
};
use crate::error::ServerError;
use crate::identity::{Claim, EnrollDecision, IdentityGuard, LockKey, decide};
use crate::service::AppState;
use crate::service::agent::{ENROLL, merge_labels, random_id};
use crate::store::Write;

/// A successful enrollment: the agent the machine now is, and its new credential.
#[derive(Debug)]
pub struct Enrolled {
    pub agent: AgentId,
    pub org: OrgId,
    pub credential: Secret,
}

/// Enrolls the machine described by `enrollment` with the enrollment token `caller` presented.
///
/// # Errors
///
/// `RESOURCE_EXHAUSTED` for a hardware id re-enrolling over its rate (with a retry delay) or
/// an org at its agent limit, `PERMISSION_DENIED` for an unusable enrollment token,
/// `INVALID_ARGUMENT` for too many labels, `INTERNAL` if the commit fails.
pub async fn enroll(
    state: &AppState,
    caller: &Caller,
    enrollment: crate::domain::Enrollment,
) -> Result<Enrolled, ServerError> {
    let org = &caller.org;
    let hardware_id = enrollment.system_info.hardware_id.clone();
    if state.registry.knows_hardware(org, &hardware_id)
        && let Err(after) =
            state
                .identity
                .reenroll
                .take(org, &hardware_id, std::time::Instant::now())
    {
        state.metrics.limit("reenroll_per_hardware_id");
        return Err(ServerError::RetryLater {
            message: format!(
                "hardware id {hardware_id:?} re-enrolled more than {} times a minute; retry in \
                 {}s",
                state.config.limits.reenroll_per_minute,
                after.as_secs().max(1)
            ),
            after,
        });
    }
    let token = state.auth.reserve_enrollment(&caller.token)?;
    let result = enroll_reserved(state, caller, &token, enrollment).await;
    if result.is_err() {
        state.auth.release_enrollment(&caller.token);
    }
    result
}

/// What [`decide_under_locks`] settled on, with the locks that keep it true.
struct Decided {
    decision: EnrollDecision,
    /// Why a presented previous credential proved nothing, for the audit trail.
    proof_note: Option<String>,
    _agent_lock: Option<IdentityGuard>,
}

/// Enrolls with a use of `token` already reserved.
async fn enroll_reserved(
    state: &AppState,
    caller: &Caller,
    token: &EnrollmentTokenRecord,
    enrollment: crate::domain::Enrollment,
) -> Result<Enrolled, ServerError> {
    let org = caller.org.clone();
    let _hardware_lock = state
        .identity
        .locks
        .lock(LockKey::Hardware(
            org.clone(),
            enrollment.system_info.hardware_id.clone(),
        ))
        .await;
    let decided = decide_under_locks(state, &org, token, &enrollment).await;
    let now = SystemTime::now();
    // A new agent's place under the org's limit, held until the registry has it.
    let mut new_slot = None;
    let (record, claim, superseded, sharing) = match &decided.decision {
        EnrollDecision::Reuse { agent, claim } => {
            let existing = state
                .registry
                .get(&org, agent)
                .ok_or_else(|| ServerError::Internal(format!("agent {agent} vanished")))?;
            let record = take_over(
                std::sync::Arc::unwrap_or_clone(existing.record),
                token,
                &enrollment,
            );
            let superseded = state.auth.all_agent_credentials(agent);
            (record, Some(*claim), superseded, Vec::new())
        }
        EnrollDecision::New { sharing } => {
            let max = state.config.limits.max_agents_per_org;
            let Some(slot) = state
                .identity
                .new_agents
                .take(&org, max, || state.registry.n_agents(&org))
            else {
                state.metrics.limit("max_agents_per_org");
                return Err(ServerError::ResourceExhausted(format!(
                    "org {org} has reached its limit of {max} agents"
                )));
            };
            new_slot = Some(slot);
            let id = fresh_agent_id(state, &org);
            let record = new_record(id, &org, token, &enrollment, now);
            (record, None, Vec::new(), sharing.clone())
        }
    };
    if record.labels.len() > state.config.limits.max_labels {
        return Err(ServerError::invalid(format!(
            "the agent's and the enrollment token's labels together exceed {} labels",
            state.config.limits.max_labels
        )));
    }
    let agent = record.id.clone();
    let (mut credential_record, credential) =
        auth::issue(org.clone(), Role::Agent, format!("agent {agent}"), now);
    credential_record.agent = Some(agent.clone());

    let mut writes = vec![
        Write::PutAgent(record.clone()),
        Write::PutToken(credential_record.clone()),
    ];
    writes.extend(superseded.iter().map(|t| Write::DeleteToken {
        org: t.org.clone(),
        id: t.id.clone(),
    }));
    if claim.is_none() {
        writes.push(Write::PutLive {
            org: org.clone(),
            agent: agent.clone(),
            live: LiveRecord {
                status: AgentStatus::Offline,
                reason: StatusReason::Enrolled,
                since: now,
                last_seen: None,
                last_seq: 0,
            },
        });
    }
    let note = audit_note(
        claim,
        &sharing,
        &record.system_info.hardware_id,
        decided.proof_note.as_deref(),
    );
    let mut audit = crate::audit::entry(caller, ENROLL, agent.as_str(), Ok(()));
    audit.message = crate::audit::bounded(&note, crate::audit::MAX_MESSAGE_BYTES);
    // The token's current record (with every use reserved so far) is queued under the cache
    // lock, so writes of its count reach the store in order; the queue slot is taken before,
    // since nothing may wait under that lock (the identity locks may be held across it).
    let slot = state.writer.reserve().await?;
    let pending = state.auth.with_enrollment(&token.id, |current| {
        if let Some(current) = current {
            writes.push(Write::PutEnrollmentToken(current.clone()));
        }
        slot.submit(writes, Some(audit))
    })?;
    pending.wait().await?;

    // The new credential works from here on; the superseded ones stop at once (their open
    // streams end), before the registry ends the session they may hold.
    state.auth.insert_token(credential_record);
    let superseded: Vec<TokenId> = superseded.into_iter().map(|t| t.id).collect();
    state.auth.remove_tokens(&superseded);
    match new_slot {
        Some(slot) => slot.fill(|| state.registry.enrolled(record)),
        None => state.registry.enrolled(record),
    };
    let outcome = match claim {
        Some(Claim::Proof) => "proof",
        Some(Claim::AdminReclaim) => "admin_reclaim",
        Some(Claim::TokenReclaim) => "token_reclaim",
        None if sharing.is_empty() => "new",
        None => "duplicate_hardware_id",
    };
    state.metrics.enrollment(outcome);
    if sharing.is_empty() {
        tracing::info!(%agent, %org, enrollment_token = %token.id, outcome, "agent enrolled");
    } else {
        let sharing: Vec<&str> = sharing.iter().map(AgentId::as_str).collect();
        let sharing = sharing.join(",");
        tracing::warn!(%agent, %org, enrollment_token = %token.id, %sharing, "{note}");
    }
    Ok(Enrolled {
        agent,
        org,
        credential,
    })
}

/// Decides which agent the enrollment becomes, under the hardware lock the caller holds. A
/// take-over also takes the agent's lock and is decided again under it: a deletion, another
/// take-over or a reclaim permission may have changed things while it waited.
async fn decide_under_locks(
    state: &AppState,
    org: &OrgId,
    token: &EnrollmentTokenRecord,
    enrollment: &crate::domain::Enrollment,
) -> Decided {
    let hardware_id = &enrollment.system_info.hardware_id;
    let mut agent_lock: Option<(AgentId, IdentityGuard)> = None;
    loop {
        let (proven, proof_note) = check_proof(state, org, enrollment);
        let mates = state.registry.hardware_mates(org, hardware_id);
        let decision = decide(proven, token.allow_reclaim, &mates, SystemTime::now());
        let EnrollDecision::Reuse { agent, .. } = &decision else {
            return Decided {
                decision,
                proof_note,
                _agent_lock: agent_lock.map(|(_, guard)| guard),
            };
        };
        if agent_lock
            .as_ref()
            .is_some_and(|(locked, _)| locked == agent)
        {
            return Decided {
                decision,
                proof_note,
                _agent_lock: agent_lock.map(|(_, guard)| guard),
            };
        }
        // Taking another agent's lock while holding one could deadlock against a take-over
        // going the other way: let go first, then decide again under the new lock.
        drop(agent_lock.take());
        let guard = state
            .identity
            .locks
            .lock(LockKey::Agent(org.clone(), agent.clone()))
            .await;
        agent_lock = Some((agent.clone(), guard));
    }
}

/// The agent the presented previous credential proves (one that still exists), and, when it
/// proves nothing, why.
fn check_proof(
    state: &AppState,
    org: &OrgId,
    enrollment: &crate::domain::Enrollment,
) -> (Option<AgentId>, Option<String>) {
    let Some(presented) = &enrollment.previous_credential else {
        return (None, None);
    };
    match state.auth.check_agent_credential(org, presented) {
        CredentialCheck::Valid(agent)
            if state.registry.get(org, &agent).is_some()
                && !state.registry.is_deleted(org, &agent) =>
        {
            (Some(agent), None)
        }
        CredentialCheck::Valid(agent) | CredentialCheck::Revoked(agent) => (
            None,
            Some(format!(
                "the previous credential (of agent {agent}, deleted) proves nothing"
            )),
        ),
        CredentialCheck::Invalid => (
            None,
            Some("the previous credential is not valid and proves nothing".to_owned()),
        ),
    }
}

/// The record of `existing` after a take-over: the machine's new facts, its first enrollment
/// time, its pinned labels plus the token's (the existing ones win: a re-enrollment never
/// drops or changes a pinned label), and no reclaim permission (it is used).
fn take_over(
    existing: AgentRecord,
    token: &EnrollmentTokenRecord,
    enrollment: &crate::domain::Enrollment,
) -> AgentRecord {
    let mut pinned: Labels = token.labels.clone();
    pinned.extend(existing.pinned_labels);
    AgentRecord {
        labels: merge_labels(enrollment.labels.clone(), &pinned),
        name: display_name(enrollment),
        system_info: enrollment.system_info.clone(),
        pinned_labels: pinned,
        reclaim_until: None,
        ..existing
    }
}

/// The record of a new agent `id`.
fn new_record(
    id: AgentId,
    org: &OrgId,
    token: &EnrollmentTokenRecord,
    enrollment: &crate::domain::Enrollment,
    now: SystemTime,
) -> AgentRecord {
    AgentRecord {
        id,
        org: org.clone(),
        name: display_name(enrollment),
        labels: merge_labels(enrollment.labels.clone(), &token.labels),
        system_info: enrollment.system_info.clone(),
        enrolled_at: now,
        pinned_labels: token.labels.clone(),
        reclaim_until: None,
    }
}

fn display_name(enrollment: &crate::domain::Enrollment) -> String {
    if enrollment.name.is_empty() {
        enrollment.system_info.hostname.clone()
    } else {
        enrollment.name.clone()
    }
}

/// A random agent id no agent of `org`, present or deleted, has.
fn fresh_agent_id(state: &AppState, org: &OrgId) -> AgentId {
    loop {
        let id = AgentId::new(random_id());
        if state.registry.get(org, &id).is_none() && !state.registry.is_deleted(org, &id) {
            return id;
        }
    }
}

/// What the audit record of a successful enrollment says beyond "succeeded".
fn audit_note(
    claim: Option<Claim>,
    sharing: &[AgentId],
    hardware_id: &str,
    proof_note: Option<&str>,
) -> String {
    let mut parts = Vec::new();
    match claim {
        Some(claim) => parts.push(format!("took over the agent: {}", claim.describe())),
        None if sharing.is_empty() => {}
        None => {
            let ids: Vec<&str> = sharing.iter().map(AgentId::as_str).collect();
            parts.push(format!(
                "new agent: hardware id {hardware_id:?} is also reported by agent(s) {}; all are \
                 flagged duplicate_hardware_id",
                ids.join(", ")
            ));
        }
    }
    parts.extend(proof_note.map(str::to_owned));
    parts.join("; ")
}
