//! Overload, over real sockets: an agent stops only when it is revoked and has no enrollment
//! token to enroll again with, whatever else a server answers.
//!
//! - `agent_policy.rs`: real agents and the simulator against a server answering every gRPC
//!   code there is (and one there is not) keep retrying and honour the server's delay; revoked,
//!   they stop without a token and enroll again with one.

mod agent_policy;
