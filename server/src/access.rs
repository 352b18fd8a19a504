//! Who may call what: the one table of RPC × access rule, enforced for every request by
//! [`crate::auth::AuthLayer`] before any handler runs.
//!
//! A method of a `tether.v1` service that has no row is refused, so a new RPC cannot ship
//! without a decision here; the end-to-end matrix test iterates this table and checks that it
//! covers every method of the proto's services.

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
