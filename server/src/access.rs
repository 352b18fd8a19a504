//! Who may call what: the one table of RPC × access rule, enforced for every request by
//! [`crate::gate::AuthLayer`] before any handler runs. Handlers do not check roles again:
//! changing who may call an RPC is one edit of [`RPC_ACCESS`].
//!
//! A method of a `tether.v1` service that has no row is refused, so a new RPC cannot ship
//! without a decision here; the end-to-end matrix test iterates this table and checks that it
//! covers every method of the proto's services. What is not a role stays with the handler:
//! `Connect` checks that an agent credential connects only as its own agent (identity).

use crate::auth::{Principal, role_name};
use crate::domain::Role;

/// The rule for one RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// An enrollment token.
    Enrollment,
    /// An agent credential (the handler checks it is the agent's own).
    Agent,
    /// An API token whose role includes this one (admin ⊇ operator ⊇ viewer).
    AtLeast(Role),
    /// The server admin (the bootstrap admin token).
    ServerAdmin,
}

/// Prefix of every method path of Tether's own services.
pub const SERVICE_PREFIX: &str = "/tether.v1.";

/// Every Tether RPC with its rule and whether it changes state (and so is audited on success).
pub const RPC_ACCESS: &[(&str, Access, bool)] = &[
    ("/tether.v1.AgentService/Enroll", Access::Enrollment, true),
    ("/tether.v1.AgentService/Connect", Access::Agent, false),
    (
        "/tether.v1.FleetService/ListAgents",
        Access::AtLeast(Role::Viewer),
        false,
    ),
    (
        "/tether.v1.FleetService/GetAgent",
        Access::AtLeast(Role::Viewer),
        false,
    ),
    (
        "/tether.v1.FleetService/WatchAgents",
        Access::AtLeast(Role::Viewer),
        false,
    ),
    (
        "/tether.v1.FleetService/GetMetrics",
        Access::AtLeast(Role::Viewer),
        false,
    ),
    (
        "/tether.v1.FleetService/GetFleetSummary",
        Access::AtLeast(Role::Viewer),
        false,
    ),
    (
        "/tether.v1.FleetService/GetServerConfig",
        Access::AtLeast(Role::Viewer),
        false,
    ),
    (
        "/tether.v1.CommandService/SendCommand",
        Access::AtLeast(Role::Operator),
        true,
    ),
    (
        "/tether.v1.CommandService/GetCommand",
        Access::AtLeast(Role::Viewer),
        false,
    ),
    (
        "/tether.v1.CommandService/ListCommands",
        Access::AtLeast(Role::Viewer),
        false,
    ),
    (
        "/tether.v1.CommandService/ListInvocations",
        Access::AtLeast(Role::Viewer),
        false,
    ),
    (
        "/tether.v1.CommandService/WatchCommand",
        Access::AtLeast(Role::Viewer),
        false,
    ),
    (
        "/tether.v1.CommandService/CancelCommand",
        Access::AtLeast(Role::Operator),
        true,
    ),
    (
        "/tether.v1.CommandService/PauseCommand",
        Access::AtLeast(Role::Operator),
        true,
    ),
    (
        "/tether.v1.CommandService/ResumeCommand",
        Access::AtLeast(Role::Operator),
        true,
    ),
    (
        "/tether.v1.EventService/ListEvents",
        Access::AtLeast(Role::Viewer),
        false,
    ),
    (
        "/tether.v1.EventService/GetEvent",
        Access::AtLeast(Role::Viewer),
        false,
    ),
    (
        "/tether.v1.EventService/AcknowledgeEvents",
        Access::AtLeast(Role::Operator),
        true,
    ),
    (
        "/tether.v1.EventService/ResolveEvents",
        Access::AtLeast(Role::Operator),
        true,
    ),
    (
        "/tether.v1.EventService/ReopenEvents",
        Access::AtLeast(Role::Operator),
        true,
    ),
    (
        "/tether.v1.EventService/WatchEvents",
        Access::AtLeast(Role::Viewer),
        false,
    ),
    (
        "/tether.v1.EventService/GetEventStats",
        Access::AtLeast(Role::Viewer),
        false,
    ),
    (
        "/tether.v1.AdminService/CreateOrg",
        Access::ServerAdmin,
        true,
    ),
    (
        "/tether.v1.AdminService/ListOrgs",
        Access::ServerAdmin,
        false,
    ),
    (
        "/tether.v1.AdminService/CreateToken",
        Access::AtLeast(Role::Admin),
        true,
    ),
    (
        "/tether.v1.AdminService/ListTokens",
        Access::AtLeast(Role::Admin),
        false,
    ),
    (
        "/tether.v1.AdminService/RevokeToken",
        Access::AtLeast(Role::Admin),
        true,
    ),
    (
        "/tether.v1.AdminService/DeleteAgent",
        Access::AtLeast(Role::Admin),
        true,
    ),
    (
        "/tether.v1.AdminService/AllowAgentReclaim",
        Access::AtLeast(Role::Admin),
        true,
    ),
    (
        "/tether.v1.AdminService/ListAuditEvents",
        Access::AtLeast(Role::Admin),
        false,
    ),
    (
        "/tether.v1.AdminService/CreateEnrollmentToken",
        Access::AtLeast(Role::Admin),
        true,
    ),
    (
        "/tether.v1.AdminService/ListEnrollmentTokens",
        Access::AtLeast(Role::Admin),
        false,
    ),
    (
        "/tether.v1.AdminService/RevokeEnrollmentToken",
        Access::AtLeast(Role::Admin),
        true,
    ),
];

/// The rule for `method`, or `None` if the table has no row for it.
pub fn rule(method: &str) -> Option<(Access, bool)> {
    RPC_ACCESS
        .iter()
        .find(|(m, _, _)| *m == method)
        .map(|(_, access, mutating)| (*access, *mutating))
}

/// Whether `principal` passes `rule`.
pub fn allows(rule: Access, principal: &Principal) -> bool {
    match (rule, principal) {
        (Access::Enrollment, Principal::Enrollment) | (Access::Agent, Principal::Agent { .. }) => {
            true
        }
        (Access::AtLeast(role), Principal::User { role: have, .. }) => rank(*have) >= rank(role),
        (Access::ServerAdmin, Principal::User { server_admin, .. }) => *server_admin,
        _ => false,
    }
}

/// What `rule` requires, for the message of a refusal.
pub fn requirement(rule: Access) -> String {
    match rule {
        Access::Enrollment => "an enrollment token".to_owned(),
        Access::Agent => "an agent credential".to_owned(),
        Access::AtLeast(role) => format!("a token with the {} role", role_name(role)),
        Access::ServerAdmin => "the server admin token".to_owned(),
    }
}

/// How much a role may do; a token passes `AtLeast(r)` when its rank is at least `r`'s.
pub fn rank(role: Role) -> u8 {
    match role {
        Role::Agent => 0,
        Role::Viewer => 1,
        Role::Operator => 2,
        Role::Admin => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_unique_and_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for (method, _, _) in RPC_ACCESS {
            assert!(method.starts_with(SERVICE_PREFIX), "{method}");
            assert!(seen.insert(*method), "duplicate row for {method}");
        }
    }

    #[test]
    fn allows_follows_the_role_order_and_the_principal_kind() {
        let user = |role, server_admin| Principal::User {
            name: "t".to_owned(),
            role,
            server_admin,
        };
        let agent = Principal::Agent {
            agent: crate::domain::AgentId::new("a-1"),
        };
        let viewer = Access::AtLeast(Role::Viewer);
        let operator = Access::AtLeast(Role::Operator);
        let admin = Access::AtLeast(Role::Admin);
        for (rule, principal, want) in [
            (viewer, user(Role::Viewer, false), true),
            (viewer, user(Role::Admin, false), true),
            (operator, user(Role::Viewer, false), false),
            (operator, user(Role::Operator, false), true),
            (admin, user(Role::Operator, false), false),
            (admin, user(Role::Admin, false), true),
            (viewer, agent.clone(), false),
            (viewer, Principal::Enrollment, false),
            (Access::ServerAdmin, user(Role::Admin, false), false),
            (Access::ServerAdmin, user(Role::Admin, true), true),
            (Access::Agent, agent.clone(), true),
            (Access::Agent, user(Role::Admin, true), false),
            (Access::Enrollment, Principal::Enrollment, true),
            (Access::Enrollment, agent, false),
        ] {
            assert_eq!(allows(rule, &principal), want, "{rule:?} {principal:?}");
        }
    }

    #[test]
    fn table_covers_every_method_of_the_proto() {
        use prost::Message as _;
        let fds = prost_types::FileDescriptorSet::decode(tether_proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set decodes");
        let mut n = 0;
        for file in fds.file.iter().filter(|f| f.package() == "tether.v1") {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/tether.v1.{}/{}", service.name(), method.name());
                    assert!(rule(&path).is_some(), "no access rule for {path}");
                    n += 1;
                }
            }
        }
        assert_eq!(
            n,
            RPC_ACCESS.len(),
            "the table has rows for methods the proto lacks"
        );
    }
}
