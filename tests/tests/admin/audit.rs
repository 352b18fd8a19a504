//! The hash-chained audit trail: what it records, verifying it, and what tampering with the
//! stored chain shows.

use super::*;

/// One expected audit event: (method, actor token id, actor role, target, outcome, status).
type Expected = (
    &'static str,
    String,
    pb::Role,
    String,
    pb::AuditOutcome,
    Code,
);

const CREATE_TOKEN: &str = "/tether.v1.AdminService/CreateToken";
const REVOKE_TOKEN: &str = "/tether.v1.AdminService/RevokeToken";
const CREATE_ENROLLMENT: &str = "/tether.v1.AdminService/CreateEnrollmentToken";
const REVOKE_ENROLLMENT: &str = "/tether.v1.AdminService/RevokeEnrollmentToken";
const ENROLL: &str = "/tether.v1.AgentService/Enroll";
const DELETE_AGENT: &str = "/tether.v1.AdminService/DeleteAgent";
const LIST_AGENTS: &str = "/tether.v1.FleetService/ListAgents";

/// Every audit event visible to `admin`, following pages, with `filter` applied.
async fn audit(admin: &AdminClient, filter: pb::ListAuditEventsRequest) -> Vec<pb::AuditEvent> {
    tether_tests::list_audit(admin, filter).await
}

/// Checks the chain as `admin.proto` defines it, independently of the CLI's checker.
fn check_chain_by_hand(events: &[pb::AuditEvent]) {
    let mut prev = vec![0u8; 32];
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.seq, i as u64 + 1, "seq is contiguous from 1");
        assert_eq!(event.prev_hash, prev, "seq {}: prev_hash", event.seq);
        let mut bare = event.clone();
        bare.prev_hash.clear();
        bare.hash.clear();
        let mut hasher = Sha256::new();
        hasher.update(&event.prev_hash);
        hasher.update(bare.encode_to_vec());
        assert_eq!(
            hasher.finalize().as_slice(),
            event.hash.as_slice(),
            "seq {}: hash",
            event.seq
        );
        prev.clone_from(&event.hash);
    }
}

/// An org "acme" whose audit trail holds a known series of calls: mutating ones that succeed
/// or fail, and refused ones. Returns the server, acme's first admin secret and the events the
/// trail must hold, in order.
async fn audited_org(dir: &std::path::Path) -> (TestServer, String, Vec<Expected>) {
    let server = TestServer::start(fast_config(dir)).await;
    let org = server.create_org("acme").await;
    let secret = org.admin_secret;
    let me = token_id(&secret).to_owned();
    let mut admin = server.admin_as(Some(&secret)).await;
    let mut want: Vec<Expected> = Vec::new();
    let ok = pb::AuditOutcome::Succeeded;
    let admin_role = pb::Role::Admin;

    let viewer = create_token(&mut admin, "viewer", pb::Role::Viewer, None).await;
    let viewer_id = token_id(&viewer.secret).to_owned();
    want.push((
        CREATE_TOKEN,
        me.clone(),
        admin_role,
        viewer_id.clone(),
        ok,
        Code::Ok,
    ));
    let doomed = create_token(&mut admin, "doomed", pb::Role::Viewer, None).await;
    let doomed_id = token_id(&doomed.secret).to_owned();
    want.push((
        CREATE_TOKEN,
        me.clone(),
        admin_role,
        doomed_id.clone(),
        ok,
        Code::Ok,
    ));
    admin
        .revoke_token(pb::RevokeTokenRequest {
            token_id: doomed_id.clone(),
        })
        .await
        .expect("revoke token");
    want.push((
        REVOKE_TOKEN,
        me.clone(),
        admin_role,
        doomed_id.clone(),
        ok,
        Code::Ok,
    ));

    let e1 = enrollment_token(&mut admin, Default::default()).await;
    let e1_id = token_id(&e1.secret).to_owned();
    want.push((
        CREATE_ENROLLMENT,
        me.clone(),
        admin_role,
        e1_id.clone(),
        ok,
        Code::Ok,
    ));
    admin
        .revoke_enrollment_token(pb::RevokeEnrollmentTokenRequest {
            token_id: e1_id.clone(),
        })
        .await
        .expect("revoke enrollment token");
    want.push((
        REVOKE_ENROLLMENT,
        me.clone(),
        admin_role,
        e1_id.clone(),
        ok,
        Code::Ok,
    ));
    let e2 = enrollment_token(&mut admin, Default::default()).await;
    let e2_id = token_id(&e2.secret).to_owned();
    want.push((
        CREATE_ENROLLMENT,
        me.clone(),
        admin_role,
        e2_id.clone(),
        ok,
        Code::Ok,
    ));

    let agent = enroll_with(&server, &e2.secret, "audited")
        .await
        .expect("enroll");
    want.push((
        ENROLL,
        e2_id.clone(),
        pb::Role::Unspecified,
        agent.agent_id.clone(),
        ok,
        Code::Ok,
    ));
    admin
        .delete_agent(pb::DeleteAgentRequest {
            agent_id: agent.agent_id.clone(),
        })
        .await
        .expect("delete agent");
    want.push((
        DELETE_AGENT,
        me.clone(),
        admin_role,
        agent.agent_id,
        ok,
        Code::Ok,
    ));

    // Refused calls.
    let denied = pb::AuditOutcome::Denied;
    let err = server
        .admin_as(Some(&viewer.secret))
        .await
        .create_token(pb::CreateTokenRequest {
            name: "sneaky".to_owned(),
            role: pb::Role::Admin as i32,
            ttl: None,
        })
        .await
        .expect_err("a viewer cannot create tokens");
    assert_eq!(err.code(), Code::PermissionDenied);
    want.push((
        CREATE_TOKEN,
        viewer_id.clone(),
        pb::Role::Viewer,
        String::new(),
        denied,
        Code::PermissionDenied,
    ));
    let err = server
        .fleet_as(Some(&doomed.secret))
        .await
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .expect_err("revoked");
    assert_eq!(err.code(), Code::Unauthenticated);
    want.push((
        LIST_AGENTS,
        doomed_id,
        pb::Role::Viewer,
        String::new(),
        denied,
        Code::Unauthenticated,
    ));
    let err = enroll_with(&server, &e1.secret, "late")
        .await
        .expect_err("revoked enrollment token");
    assert_eq!(err.code(), Code::PermissionDenied);
    want.push((
        ENROLL,
        e1_id,
        pb::Role::Unspecified,
        String::new(),
        denied,
        Code::PermissionDenied,
    ));

    // A permitted call that fails.
    let absent = "0123456789abcdef";
    let err = admin
        .revoke_token(pb::RevokeTokenRequest {
            token_id: absent.to_owned(),
        })
        .await
        .expect_err("absent token");
    assert_eq!(err.code(), Code::NotFound);
    want.push((
        REVOKE_TOKEN,
        me,
        admin_role,
        absent.to_owned(),
        pb::AuditOutcome::Failed,
        Code::NotFound,
    ));

    // Refusals are audited asynchronously: wait until every event is there.
    let n = want.len();
    eventually("every audited call in the trail", || {
        let admin = admin.clone();
        async move { (audit(&admin, Default::default()).await.len() >= n).then_some(()) }
    })
    .await;
    (server, secret, want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_every_mutating_and_refused_call_in_a_verifiable_chain() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, secret, want) = audited_org(dir.path()).await;
    let admin = server.admin_as(Some(&secret)).await;
    let events = audit(&admin, Default::default()).await;

    let got: Vec<Expected> = events
        .iter()
        .map(|e| {
            let method = [
                CREATE_TOKEN,
                REVOKE_TOKEN,
                CREATE_ENROLLMENT,
                REVOKE_ENROLLMENT,
                ENROLL,
                DELETE_AGENT,
                LIST_AGENTS,
            ]
            .into_iter()
            .find(|m| *m == e.method)
            .unwrap_or_else(|| panic!("unexpected audited method: {e:?}"));
            (
                method,
                e.actor_token_id.clone(),
                pb::Role::try_from(e.actor_role).expect("role"),
                e.target.clone(),
                pb::AuditOutcome::try_from(e.outcome).expect("outcome"),
                Code::from(e.status_code),
            )
        })
        .collect();
    assert_eq!(got, want, "one event per call, in call order");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=want.len() as u64).collect::<Vec<_>>());
    for event in &events {
        assert_eq!(event.org_id, "acme");
        assert!(event.time.is_some(), "{event:?}");
        if event.outcome != pb::AuditOutcome::Succeeded as i32 {
            assert!(!event.message.is_empty(), "a refusal says why: {event:?}");
        }
    }
    let named = &events[0];
    assert_eq!(named.actor_name, "acme-admin");

    // Filters.
    let filtered = |req: pb::ListAuditEventsRequest| {
        let admin = admin.clone();
        async move {
            audit(&admin, req)
                .await
                .into_iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>()
        }
    };
    let seqs_where = |f: &dyn Fn(&Expected) -> bool| {
        want.iter()
            .enumerate()
            .filter(|(_, e)| f(e))
            .map(|(i, _)| i as u64 + 1)
            .collect::<Vec<_>>()
    };
    let by_method = filtered(pb::ListAuditEventsRequest {
        method: CREATE_TOKEN.to_owned(),
        ..Default::default()
    })
    .await;
    assert_eq!(by_method, seqs_where(&|e| e.0 == CREATE_TOKEN));
    assert_eq!(by_method.len(), 3);
    let viewer = want[0].3.clone();
    let by_actor = filtered(pb::ListAuditEventsRequest {
        actor_token_id: viewer.clone(),
        ..Default::default()
    })
    .await;
    assert_eq!(by_actor, seqs_where(&|e| e.1 == viewer));
    assert_eq!(by_actor.len(), 1);
    for outcome in [
        pb::AuditOutcome::Succeeded,
        pb::AuditOutcome::Denied,
        pb::AuditOutcome::Failed,
    ] {
        let by_outcome = filtered(pb::ListAuditEventsRequest {
            outcome: outcome as i32,
            ..Default::default()
        })
        .await;
        assert_eq!(by_outcome, seqs_where(&|e| e.4 == outcome), "{outcome:?}");
    }
    let paged = filtered(pb::ListAuditEventsRequest {
        page_size: 5,
        ..Default::default()
    })
    .await;
    assert_eq!(paged, (1..=want.len() as u64).collect::<Vec<_>>());

    // The chain verifies, by the CLI's checker, by hand, and through `tetherctl audit verify`.
    let summary = tetherctl::verify_chain(&events).expect("intact chain");
    assert_eq!(summary.last_seq, want.len() as u64);
    check_chain_by_hand(&events);
    server
        .cli_as(&secret, &["audit", "verify"])
        .await
        .expect("tetherctl audit verify");
    server.stop().await;
}

/// The store of the stopped server in `data_dir`, opened to tamper with its audit records.
fn stored(data_dir: &std::path::Path) -> RawStore {
    RawStore::open(data_dir.join("store")).expect("open the stopped server's store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modified_audit_event_breaks_the_chain() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, secret, want) = audited_org(dir.path()).await;
    server.stop().await;

    let modified = 3;
    let store = stored(dir.path());
    let value = store
        .audit_record("acme", modified)
        .expect("read")
        .expect("the record exists");
    let mut record: serde_json::Value = serde_json::from_slice(&value).expect("json");
    assert_eq!(record["seq"], modified);
    record["entry"]["target"] = "someone-else".into();
    store
        .put_audit_record(
            "acme",
            modified,
            &serde_json::to_vec(&record).expect("json"),
        )
        .expect("write");
    drop(store);

    let server = TestServer::start(fast_config(dir.path())).await;
    let admin = server.admin_as(Some(&secret)).await;
    let events = audit(&admin, Default::default()).await;
    assert_eq!(
        events.len(),
        want.len(),
        "the server serves the chain as stored"
    );
    assert_eq!(events[modified as usize - 1].target, "someone-else");
    assert_eq!(
        tetherctl::verify_chain(&events),
        Err(tetherctl::ChainError::HashMismatch { seq: modified })
    );
    let err = server
        .cli_as(&secret, &["audit", "verify"])
        .await
        .expect_err("tetherctl audit verify fails");
    assert!(
        matches!(
            err,
            tetherctl::CliError::AuditChainBroken(tetherctl::ChainError::HashMismatch { seq })
                if seq == modified
        ),
        "{err:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_audit_event_leaves_a_gap() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, secret, want) = audited_org(dir.path()).await;
    server.stop().await;

    let deleted = 5;
    let removed = stored(dir.path())
        .remove_audit_record("acme", deleted)
        .expect("remove");
    assert!(removed, "the record existed");

    let server = TestServer::start(fast_config(dir.path())).await;
    let admin = server.admin_as(Some(&secret)).await;
    let events = audit(&admin, Default::default()).await;
    assert_eq!(events.len(), want.len() - 1);
    assert_eq!(
        tetherctl::verify_chain(&events),
        Err(tetherctl::ChainError::Gap {
            after: deleted - 1,
            first_missing: deleted,
            last_missing: deleted,
        })
    );
    let err = server
        .cli_as(&secret, &["audit", "verify"])
        .await
        .expect_err("tetherctl audit verify fails");
    assert!(
        matches!(
            err,
            tetherctl::CliError::AuditChainBroken(tetherctl::ChainError::Gap { first_missing, .. })
                if first_missing == deleted
        ),
        "{err:?}"
    );
    // New events continue the chain after the gap.
    let mut admin = admin.clone();
    create_token(&mut admin, "after", pb::Role::Viewer, None).await;
    let events = audit(&admin, Default::default()).await;
    assert_eq!(events.last().map(|e| e.seq), Some(want.len() as u64 + 1));
    server.stop().await;
}

/// Events stored before their fields were bounded can be far larger than any written today: a
/// trail of such events is still served in pages a standard client accepts (4 MiB), and
/// `tetherctl audit` and `audit verify` read it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_stored_events_are_served_in_pages_clients_accept() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, secret, want) = audited_org(dir.path()).await;
    server.stop().await;

    // Every event gets a 500 KB target: 6 MB of events, more than one 4 MiB message.
    const TARGET_BYTES: usize = 500 * 1000;
    let n = want.len() as u64;
    let store = stored(dir.path());
    let mut records = Vec::new();
    for seq in 1..=n {
        let value = store
            .audit_record("acme", seq)
            .expect("read")
            .expect("exists");
        let mut record: serde_json::Value = serde_json::from_slice(&value).expect("json");
        record["entry"]["target"] = format!("{seq}-{}", "t".repeat(TARGET_BYTES)).into();
        store
            .put_audit_record("acme", seq, &serde_json::to_vec(&record).expect("json"))
            .expect("write");
        records.push(record);
    }
    drop(store);

    // Served in pages under the client's default limit; the chain is broken by the edit.
    let server = TestServer::start(fast_config(dir.path())).await;
    let mut admin = server.admin_as(Some(&secret)).await;
    let mut events = Vec::new();
    let mut request = pb::ListAuditEventsRequest::default();
    let mut pages = 0;
    loop {
        let page = admin
            .list_audit_events(request.clone())
            .await
            .expect("a page within the client's 4 MiB limit")
            .into_inner();
        assert!(
            page.encoded_len() <= 4 << 20,
            "{} bytes",
            page.encoded_len()
        );
        pages += 1;
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert!(pages > 1, "the trail needs several pages");
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>()
    );
    let err = server
        .cli_as(&secret, &["audit", "verify"])
        .await
        .expect_err("the edited chain does not verify");
    assert!(
        matches!(
            err,
            tetherctl::CliError::AuditChainBroken(tetherctl::ChainError::HashMismatch { seq: 1 })
        ),
        "{err:?}"
    );
    server.stop().await;

    // Re-chain the large events as a server of old would have: now the trail verifies.
    let mut prev = vec![0u8; 32];
    let store = stored(dir.path());
    for (event, record) in events.iter_mut().zip(&mut records) {
        event.prev_hash.clone_from(&prev);
        let hash = tetherctl::event_hash(event).to_vec();
        record["prev_hash"] = serde_json::json!(prev);
        record["hash"] = serde_json::json!(hash);
        store
            .put_audit_record(
                "acme",
                event.seq,
                &serde_json::to_vec(&record).expect("json"),
            )
            .expect("write");
        prev = hash;
    }
    drop(store);
    let server = TestServer::start(fast_config(dir.path())).await;
    let listing = server
        .cli_as(&secret, &["audit", "-o", "json"])
        .await
        .expect("tetherctl audit");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&listing).expect("json");
    assert_eq!(listed.len() as u64, n);
    let verdict = server
        .cli_as(&secret, &["audit", "verify"])
        .await
        .expect("tetherctl audit verify");
    assert!(
        verdict.starts_with(&format!("audit chain OK: {n} events")),
        "{verdict}"
    );
    server.stop().await;
}
