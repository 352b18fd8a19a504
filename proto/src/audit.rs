//! The audit chain's hash, as the contract defines it next to `AuditEvent` in `admin.proto`.
//!
//! `hash` = SHA-256(`prev_hash` ‖ protobuf encoding of the event with `prev_hash` and `hash`
//! empty); the first event of an org's chain has a `prev_hash` of 32 zero bytes ([`GENESIS`]);
//! `seq` increases by one per event. The server computes it when it places an entry in the chain
//! and `tetherctl audit verify` recomputes it, both with [`event_hash`], so the two can never
//! disagree on the definition.

use prost::Message as _;
use sha2::{Digest as _, Sha256};

use crate::v1::AuditEvent;

/// Length of a hash of the chain.
pub const HASH_LEN: usize = 32;

/// `prev_hash` of the first event of every chain.
pub const GENESIS: [u8; HASH_LEN] = [0; HASH_LEN];

/// The hash `event` must carry: SHA-256(`event.prev_hash` ‖ the encoding of `event` with
/// `prev_hash` and `hash` cleared). `event.hash` itself is ignored.
pub fn event_hash(event: &AuditEvent) -> [u8; HASH_LEN] {
    let mut bare = event.clone();
    bare.prev_hash.clear();
    bare.hash.clear();
    let mut hasher = Sha256::new();
    hasher.update(&event.prev_hash);
    hasher.update(bare.encode_to_vec());
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_covers_prev_hash_and_the_bare_encoding() {
        let mut event = AuditEvent {
            seq: 1,
            org_id: "default".into(),
            method: "/tether.v1.AdminService/CreateToken".into(),
            prev_hash: GENESIS.to_vec(),
            ..AuditEvent::default()
        };
        let mut input = GENESIS.to_vec();
        let mut bare = event.clone();
        bare.prev_hash.clear();
        input.extend(bare.encode_to_vec());
        let expected: [u8; HASH_LEN] = Sha256::digest(&input).into();
        assert_eq!(event_hash(&event), expected);

        // The stored hash does not feed itself; any other field does.
        event.hash = vec![7; HASH_LEN];
        assert_eq!(event_hash(&event), expected);
        event.target = "t".into();
        assert_ne!(event_hash(&event), expected);
        event.target.clear();
        event.prev_hash = vec![1; HASH_LEN];
        assert_ne!(event_hash(&event), expected);
    }
}
