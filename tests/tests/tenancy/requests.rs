//! The matrix's requests: for each RPC of the contract, one minimal valid request naming org
//! acme's objects, in one place, so that a new RPC is one edit here (`EventService`'s are in
//! `events.rs`).

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::*;

mod events;

/// Calls `method` with a minimal valid request naming acme's objects. Returns whether the
/// request names one object by id, and the call's outcome (streams count as `Ok` once they
/// deliver their first message).
pub(super) async fn invoke(
    method: &str,
    t: &Targets,
    c: &Clients,
    serial: usize,
) -> (bool, Result<(), Status>) {
    if let Some(answer) = events::invoke(method, t, c).await {
        return answer;
    }
    let (mut agent, mut fleet, mut admin) = (c.agent.clone(), c.fleet.clone(), c.admin.clone());
    let mut commands = c.commands.clone();
    let mut alerts = c.alerts.clone();
    let own_rule = format!("matrix-{}", serial % t.n_callers);
    match method {
        "/tether.v1.AgentService/Enroll" => (
            false,
            drop_ok(
                agent
                    .enroll(pb::EnrollRequest {
                        system_info: Some(system_info("matrix-enrolled")),
                        ..Default::default()
                    })
                    .await,
            ),
        ),
        "/tether.v1.AgentService/Connect" => {
            let (tx, rx) = mpsc::channel(4);
            let hello = pb::connect_request::Message::Hello(tether_tests::hello(
                &t.subject,
                "acme-subject",
                &[],
            ));
            tx.send(pb::ConnectRequest {
                message: Some(hello),
            })
            .await
            .expect("queue Hello");
            let result = async {
                let mut stream = agent.connect(ReceiverStream::new(rx)).await?.into_inner();
                match tokio::time::timeout(STREAM_WAIT, stream.message()).await {
                    Ok(Ok(Some(pb::ConnectResponse {
                        message: Some(pb::connect_response::Message::Welcome(_)),
                    }))) => Ok(()),
                    Ok(Err(status)) => Err(status),
                    other => panic!("Connect: expected Welcome, got {other:?}"),
                }
            }
            .await;
            drop(tx);
            (false, result)
        }
        "/tether.v1.FleetService/ListAgents" => (
            false,
            drop_ok(fleet.list_agents(pb::ListAgentsRequest::default()).await),
        ),
        "/tether.v1.FleetService/GetAgent" => (
            true,
            drop_ok(
                fleet
                    .get_agent(pb::GetAgentRequest {
                        agent_id: t.subject.clone(),
                    })
                    .await,
            ),
        ),
        "/tether.v1.FleetService/WatchAgents" => {
            let result = async {
                let mut stream = fleet
                    .watch_agents(pb::WatchAgentsRequest::default())
                    .await?
                    .into_inner();
                match tokio::time::timeout(STREAM_WAIT, stream.message()).await {
                    Ok(Ok(Some(_))) => Ok(()),
                    Ok(Err(status)) => Err(status),
                    other => panic!("WatchAgents: expected an event, got {other:?}"),
                }
            }
            .await;
            (false, result)
        }
        "/tether.v1.FleetService/GetMetrics" => (
            true,
            drop_ok(
                fleet
                    .get_metrics(pb::GetMetricsRequest {
                        agent_id: t.subject.clone(),
                        ..Default::default()
                    })
                    .await,
            ),
        ),
        "/tether.v1.FleetService/GetFleetSummary" => (
            false,
            drop_ok(
                fleet
                    .get_fleet_summary(pb::GetFleetSummaryRequest::default())
                    .await,
            ),
        ),
        "/tether.v1.FleetService/GetServerConfig" => (
            false,
            drop_ok(
                fleet
                    .get_server_config(pb::GetServerConfigRequest::default())
                    .await,
            ),
        ),
        "/tether.v1.CommandService/SendCommand" => {
            let mut request = tether_tests::exec_request(
                vec!["/bin/true".into()],
                tether_tests::command_agent(&[&t.subject]),
            );
            if let Some(targets) = request.targets.as_mut() {
                targets.include_offline = true;
            }
            (true, drop_ok(commands.send_command(request).await))
        }
        "/tether.v1.CommandService/GetCommand" => (
            true,
            drop_ok(
                commands
                    .get_command(pb::GetCommandRequest {
                        command_id: t.steer_command.clone(),
                    })
                    .await,
            ),
        ),
        "/tether.v1.CommandService/ListCommands" => (
            false,
            drop_ok(
                commands
                    .list_commands(pb::ListCommandsRequest::default())
                    .await,
            ),
        ),
        "/tether.v1.CommandService/ListInvocations" => (
            true,
            drop_ok(
                commands
                    .list_invocations(pb::ListInvocationsRequest {
                        command_id: t.steer_command.clone(),
                        ..Default::default()
                    })
                    .await,
            ),
        ),
        "/tether.v1.CommandService/WatchCommand" => {
            let result = async {
                let mut stream = commands
                    .watch_command(pb::WatchCommandRequest {
                        command_id: t.steer_command.clone(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                match tokio::time::timeout(STREAM_WAIT, stream.message()).await {
                    Ok(Ok(Some(_))) => Ok(()),
                    Ok(Err(status)) => Err(status),
                    other => panic!("WatchCommand: expected the command, got {other:?}"),
                }
            }
            .await;
            (true, result)
        }
        "/tether.v1.CommandService/CancelCommand" => (
            true,
            drop_ok(
                commands
                    .cancel_command(pb::CancelCommandRequest {
                        command_id: t.cancel_command.clone(),
                    })
                    .await,
            ),
        ),
        "/tether.v1.CommandService/PauseCommand" => (
            true,
            drop_ok(
                commands
                    .pause_command(pb::PauseCommandRequest {
                        command_id: t.steer_command.clone(),
                    })
                    .await,
            ),
        ),
        "/tether.v1.CommandService/ResumeCommand" => (
            true,
            drop_ok(
                commands
                    .resume_command(pb::ResumeCommandRequest {
                        command_id: t.steer_command.clone(),
                    })
                    .await,
            ),
        ),
        "/tether.v1.AdminService/CreateOrg" => (
            false,
            drop_ok(
                admin
                    .create_org(pb::CreateOrgRequest {
                        org_id: format!("matrix-{serial}"),
                        display_name: String::new(),
                    })
                    .await,
            ),
        ),
        "/tether.v1.AdminService/ListOrgs" => (
            false,
            drop_ok(admin.list_orgs(pb::ListOrgsRequest::default()).await),
        ),
        "/tether.v1.AdminService/CreateToken" => (
            false,
            drop_ok(
                admin
                    .create_token(pb::CreateTokenRequest {
                        name: format!("matrix-{serial}"),
                        role: pb::Role::Viewer as i32,
                        ttl: None,
                    })
                    .await,
            ),
        ),
        "/tether.v1.AdminService/ListTokens" => (
            false,
            drop_ok(admin.list_tokens(pb::ListTokensRequest::default()).await),
        ),
        "/tether.v1.AdminService/RevokeToken" => (
            true,
            drop_ok(
                admin
                    .revoke_token(pb::RevokeTokenRequest {
                        token_id: t.victim_token.clone(),
                    })
                    .await,
            ),
        ),
        "/tether.v1.AdminService/DeleteAgent" => (
            true,
            drop_ok(
                admin
                    .delete_agent(pb::DeleteAgentRequest {
                        agent_id: t.victim_agent.clone(),
                    })
                    .await,
            ),
        ),
        "/tether.v1.AdminService/AllowAgentReclaim" => (
            true,
            drop_ok(
                admin
                    .allow_agent_reclaim(pb::AllowAgentReclaimRequest {
                        agent_id: t.subject.clone(),
                        ttl: None,
                    })
                    .await,
            ),
        ),
        "/tether.v1.AdminService/ListAuditEvents" => (
            false,
            drop_ok(
                admin
                    .list_audit_events(pb::ListAuditEventsRequest::default())
                    .await,
            ),
        ),
        "/tether.v1.AdminService/CreateEnrollmentToken" => (
            false,
            drop_ok(
                admin
                    .create_enrollment_token(pb::CreateEnrollmentTokenRequest::default())
                    .await,
            ),
        ),
        "/tether.v1.AdminService/ListEnrollmentTokens" => (
            false,
            drop_ok(
                admin
                    .list_enrollment_tokens(pb::ListEnrollmentTokensRequest::default())
                    .await,
            ),
        ),
        "/tether.v1.AdminService/RevokeEnrollmentToken" => (
            true,
            drop_ok(
                admin
                    .revoke_enrollment_token(pb::RevokeEnrollmentTokenRequest {
                        token_id: t.victim_enrollment.clone(),
                    })
                    .await,
            ),
        ),
        "/tether.v1.AdminService/Backup" => {
            let result = async {
                let mut stream = admin.backup(pb::BackupRequest {}).await?.into_inner();
                match tokio::time::timeout(STREAM_WAIT, stream.message()).await {
                    Ok(Ok(Some(_))) => Ok(()),
                    Ok(Err(status)) => Err(status),
                    other => panic!("Backup: expected a part, got {other:?}"),
                }
            }
            .await;
            (false, result)
        }
        "/tether.v1.AlertService/CreateAlertRule" => (
            false,
            drop_ok(
                alerts
                    .create_alert_rule(pb::CreateAlertRuleRequest {
                        rule: Some(pb::AlertRule {
                            name: own_rule,
                            kind: pb::AlertRuleKind::AgentOffline as i32,
                            for_duration: Some(prost_types::Duration {
                                seconds: 60,
                                nanos: 0,
                            }),
                            ..Default::default()
                        }),
                    })
                    .await,
            ),
        ),
        "/tether.v1.AlertService/ListAlertRules" => (
            false,
            drop_ok(alerts.list_alert_rules(pb::ListAlertRulesRequest {}).await),
        ),
        // Each caller deletes the rule it created in its own org (see `Targets::n_callers`).
        "/tether.v1.AlertService/DeleteAlertRule" => (
            false,
            drop_ok(
                alerts
                    .delete_alert_rule(pb::DeleteAlertRuleRequest { name: own_rule })
                    .await,
            ),
        ),
        "/tether.v1.AlertService/ListAlerts" => (
            false,
            drop_ok(alerts.list_alerts(pb::ListAlertsRequest::default()).await),
        ),
        "/tether.v1.AlertService/WatchAlerts" => {
            let result = async {
                let mut stream = alerts
                    .watch_alerts(pb::WatchAlertsRequest {})
                    .await?
                    .into_inner();
                match tokio::time::timeout(STREAM_WAIT, stream.message()).await {
                    Ok(Ok(Some(_))) => Ok(()),
                    Ok(Err(status)) => Err(status),
                    other => panic!("WatchAlerts: expected an event, got {other:?}"),
                }
            }
            .await;
            (false, result)
        }
        other => panic!(
            "add a case for {other} to tests/tests/tenancy/requests.rs `invoke`: a minimal valid \
             request naming org acme's objects"
        ),
    }
}

/// A unary answer without its body.
fn drop_ok<T>(result: Result<tonic::Response<T>, Status>) -> Result<(), Status> {
    result.map(drop)
}
