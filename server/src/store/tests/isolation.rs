//! Key isolation in the conformance suite: agent ids that are prefixes of one another, and
//! orgs, never see each other's records, samples or transitions.

use super::*;

pub(crate) fn check_prefix_agent_ids_isolated(store: &dyn Store) {
    // `ab-c` sorts before `ab/`, `abc` after it: neither may leak into a scan of `ab`.
    let agents = ["ab", "abc", "ab-c", "a"];
    let mut writes = Vec::new();
    for (agent_idx, agent) in agents.iter().enumerate() {
        let base = 100 * agent_idx as u64;
        for seq in 1..=3 {
            writes.push(put_sample("acme", agent, sample(base + seq, 1_000 * seq)));
        }
        for ms in [1_000 + base, 2_000 + base] {
            writes.push(Write::PutTransition(transition(
                "acme",
                agent,
                ms,
                AgentStatus::Offline,
                AgentStatus::Online,
            )));
        }
    }
    store.commit_writes(&writes).expect("commit");

    for (agent_idx, agent) in agents.iter().enumerate() {
        let base = 100 * agent_idx as u64;
        assert_eq!(
            all_seqs(store, "acme", agent),
            [base + 1, base + 2, base + 3],
            "samples of {agent}"
        );
        assert_eq!(
            transition_times(store, "acme", agent, 10),
            [u128::from(2_000 + base), u128::from(1_000 + base)],
            "transitions of {agent}"
        );
    }
}

pub(crate) fn check_orgs_isolated(store: &dyn Store) {
    // Org ids that are prefixes of each other, and the same agent and token ids in each.
    let orgs = ["acme", "acme-eu", "acmecorp"];
    let mut writes = Vec::new();
    for (org_idx, org_id) in orgs.iter().enumerate() {
        let n = org_idx as u64;
        writes.push(Write::PutAgent(agent(
            org_id,
            "web-1",
            &format!("web of {org_id}"),
        )));
        writes.push(put_live(org_id, "web-1", live(AgentStatus::Online, n)));
        writes.push(put_sample(org_id, "web-1", sample(10 + n, 1_000 + n)));
        writes.push(Write::PutTransition(transition(
            org_id,
            "web-1",
            5_000 + n,
            AgentStatus::Offline,
            AgentStatus::Online,
        )));
        writes.push(Write::PutToken(token(org_id, "tok-1", Role::Admin, None)));
        writes.push(Write::PutEnrollmentToken(enrollment_token(org_id, "enr-1")));
    }
    store.commit_writes(&writes).expect("commit");

    let snapshot = load_sorted(store);
    assert_eq!(snapshot.agents.len(), orgs.len());
    assert_eq!(snapshot.tokens.len(), orgs.len());
    assert_eq!(snapshot.enrollment_tokens.len(), orgs.len());
    for (org_idx, org_id) in orgs.iter().enumerate() {
        let n = org_idx as u64;
        let (stored, stored_live) = &snapshot.agents[org_idx];
        assert_eq!(stored, &agent(org_id, "web-1", &format!("web of {org_id}")));
        // `load` folds the newest sample (seq 10 + n) into the live summary's durable mark.
        let stored_live = stored_live.as_ref().expect("live record");
        assert_eq!(
            (
                stored_live.status,
                stored_live.reason,
                stored_live.since,
                stored_live.last_seq
            ),
            (
                AgentStatus::Online,
                StatusReason::Activity,
                at(3_000),
                10 + n
            )
        );
        assert_eq!(snapshot.tokens[org_idx].org, org(org_id));
        assert_eq!(snapshot.enrollment_tokens[org_idx].org, org(org_id));
        assert_eq!(
            all_seqs(store, org_id, "web-1"),
            [10 + n],
            "samples of {org_id}"
        );
        assert_eq!(
            transition_times(store, org_id, "web-1", 10),
            [u128::from(5_000 + n)],
            "transitions of {org_id}"
        );
    }
}
