//! The role matrix: every RPC of the role table × every kind of caller.

use tether_server::access::Access;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_every_caller_as_the_role_table_says() {
    let world = World::new().await;
    let server = &world.server;
    let callers = world.callers();
    let targets = Targets {
        cancel_command: world.acme.cancel_command.clone(),
        steer_command: world.acme.steer_command.clone(),
        subject: world.acme.subject.0.clone(),
        victim_agent: world.acme.victim_agent.clone(),
        victim_token: world.acme.victim_token.clone(),
        victim_enrollment: world.acme.victim_enrollment.clone(),
        n_callers: callers.len(),
        subject_event: world.acme.subject_event.clone(),
    };

    // Audit trails before the matrix, to check afterwards what the matrix's calls added.
    let trail_admins = [
        (ACME, server.admin_as(Some(&world.acme.first_admin)).await),
        (
            GLOBEX,
            server.admin_as(Some(&world.globex.first_admin)).await,
        ),
        ("default", server.admin().await),
    ];
    let mut baselines = BTreeMap::new();
    for (org, admin) in &trail_admins {
        let last = all_audit(admin).await.last().map_or(0, |e| e.seq);
        baselines.insert(*org, last);
    }

    let mut cells = Vec::new();
    let mut expected_audit: BTreeMap<&str, Vec<AuditKey>> = BTreeMap::new();
    for (serial, (method, access, mutating)) in RPC_ACCESS.iter().enumerate() {
        for (column, caller) in callers.iter().enumerate() {
            let (names_object, result) = invoke(
                method,
                &targets,
                &caller.clients,
                serial * callers.len() + column,
            )
            .await;
            let want = expected(*access, &caller.who, names_object);
            let got = result.as_ref().err().map_or(Code::Ok, Status::code);
            cells.push((*method, caller.name, want, got, result.err()));

            // What the audit trail of the caller's org must record for this call: every denial
            // of an identifiable token, and every mutating call that got past the gate.
            let outcome = match got {
                Code::Unauthenticated | Code::PermissionDenied | Code::ResourceExhausted => {
                    Some(pb::AuditOutcome::Denied)
                }
                Code::Ok if *mutating => Some(pb::AuditOutcome::Succeeded),
                _ if *mutating => Some(pb::AuditOutcome::Failed),
                _ => None,
            };
            if let (Some(outcome), Some(org), Some(id)) = (outcome, caller.org, &caller.token_id) {
                expected_audit.entry(org).or_default().push((
                    (*method).to_owned(),
                    id.clone(),
                    outcome as i32,
                    got as i32,
                ));
            }
        }
    }

    let wrong: Vec<_> = cells
        .iter()
        .filter(|(_, _, want, got, _)| want != got)
        .collect();
    if !wrong.is_empty() {
        let mut table = format!(
            "{} of {} cells differ from the role table:\n{:<46} {:<20} {:<18} {:<18} message\n",
            wrong.len(),
            cells.len(),
            "method",
            "caller",
            "expected",
            "got"
        );
        for (method, caller, want, got, status) in &wrong {
            table.push_str(&format!(
                "{method:<46} {caller:<20} {:<18} {:<18} {}\n",
                format!("{want:?}"),
                format!("{got:?}"),
                status.as_ref().map_or("", Status::message)
            ));
        }
        panic!("{table}");
    }
    assert_eq!(cells.len(), RPC_ACCESS.len() * callers.len());

    // Every denial and every mutating call is in its org's audit trail, once; nothing else is.
    for (org, admin) in &trail_admins {
        let mut want = expected_audit.remove(org).unwrap_or_default();
        want.sort();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut got = audit_after(admin, baselines[org]).await;
            got.sort();
            if got == want || tokio::time::Instant::now() >= deadline {
                assert_eq!(
                    got, want,
                    "audit trail of org {org}: (method, actor, outcome, status) of the matrix's calls"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    server_stop(world).await;
}

/// The role table has a row for every method of the proto's services, and no other.
#[test]
fn the_role_table_covers_every_rpc_of_the_proto() {
    use prost::Message as _;
    let fds = prost_types::FileDescriptorSet::decode(tether_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set decodes");
    let mut methods: Vec<String> = fds
        .file
        .iter()
        .filter(|f| f.package() == "tether.v1")
        .flat_map(|f| {
            f.service.iter().flat_map(|s| {
                s.method
                    .iter()
                    .map(move |m| format!("/tether.v1.{}/{}", s.name(), m.name()))
            })
        })
        .collect();
    methods.sort();
    let mut rows: Vec<String> = RPC_ACCESS.iter().map(|(m, _, _)| (*m).to_owned()).collect();
    rows.sort();
    assert_eq!(rows, methods);
}

/// Whether a token with `have` passes `AtLeast(need)`: admin ⊇ operator ⊇ viewer.
fn covers(have: Role, need: Role) -> bool {
    let rank = |r: Role| match r {
        Role::Agent => 0,
        Role::Viewer => 1,
        Role::Operator => 2,
        Role::Admin => 3,
    };
    rank(have) >= rank(need)
}

/// The answer the spec prescribes for `who` calling a method with rule `access` on org acme's
/// objects (`names_object`: the request names one object by id).
fn expected(access: Access, who: &Who, names_object: bool) -> Code {
    let allowed = match (access, who) {
        (_, Who::Nobody) => return Code::Unauthenticated,
        (_, Who::RevokedAgent) => return Code::PermissionDenied,
        (Access::Enrollment, Who::Enrollment) | (Access::Agent, Who::Agent) => true,
        (Access::AtLeast(need), Who::User { role, .. }) => covers(*role, need),
        (Access::ServerAdmin, Who::User { server_admin, .. }) => *server_admin,
        _ => false,
    };
    match who {
        _ if !allowed => Code::PermissionDenied,
        Who::User { org, .. } if names_object && *org != ACME => Code::NotFound,
        _ => Code::Ok,
    }
}
