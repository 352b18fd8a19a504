use proptest::prelude::*;

use super::*;
use crate::store::chunk::stored;
use crate::store::chunk::tests::{arb_sample, disk, sample};

fn key(org: &str, agent: &str) -> (OrgId, AgentId) {
    (OrgId::new(org), AgentId::new(agent))
}

fn encode_owned(entries: &[((OrgId, AgentId), Sample)]) -> Result<Vec<u8>, WalError> {
    encode(entries.iter().map(|((o, a), s)| (o, a, s)))
}

fn assert_round_trip(entries: &[((OrgId, AgentId), Sample)]) {
    let bytes = encode_owned(entries).expect("encodable");
    let record = decode(&bytes).expect("intact record");
    let got: Vec<(AgentKey, Sample)> = record.iter().map(|(k, s)| (k.clone(), s.clone())).collect();
    let want: Vec<(AgentKey, Sample)> = entries
        .iter()
        .map(|((org, agent), s)| {
            let key = AgentKey {
                org: org.clone(),
                agent: agent.clone(),
            };
            (key, stored(s).expect("storable"))
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(record.entries.len(), entries.len());
}

#[test]
fn a_batch_of_many_agents_round_trips_with_keys_interned() {
    let mut entries = Vec::new();
    for (i, agent) in ["0123456789abcdef", "agent-1", "abc", "fedcba9876543210"]
        .iter()
        .enumerate()
    {
        for seq in 1..=3 {
            let org = if i % 2 == 0 { "default" } else { "acme" };
            let ms = 1_700_000_000_000 + seq * 500 + i as u64;
            entries.push((key(org, agent), sample(seq + 10 * i as u64, ms)));
        }
    }
    // A later entry stamped before the first one (a re-sent, buffered sample).
    entries.push((key("default", "abc"), sample(99, 1_600_000_000_000)));
    assert_round_trip(&entries);
    let record = decode(&encode_owned(&entries).expect("encodable")).expect("intact");
    assert_eq!(record.keys.len(), 4);
    assert_eq!(record.keys[1].org.as_str(), "acme");
    assert_eq!(record.keys[3].agent.as_str(), "fedcba9876543210");
}

#[test]
fn the_same_agent_in_two_orgs_is_two_keys() {
    let entries = [
        (key("a", "x1"), sample(1, 1_700_000_000_000)),
        (key("b", "x1"), sample(1, 1_700_000_000_000)),
    ];
    assert_round_trip(&entries);
}

#[test]
fn an_empty_batch_is_a_valid_record() {
    let bytes = encode(std::iter::empty()).expect("encodable");
    assert_eq!(bytes.len(), 5);
    assert_eq!(decode(&bytes), Ok(WalRecord::default()));
}

#[test]
fn hex_agent_ids_take_half_the_room() {
    let hex = [(
        key("o", "00112233445566778899aabbccddeeff"),
        sample(1, 1_700_000_000_000),
    )];
    let text = [(
        key("o", "00112233445566778899aabbccddeefg"),
        sample(1, 1_700_000_000_000),
    )];
    let (hex_len, text_len) = (
        encode_owned(&hex).expect("encodable").len(),
        encode_owned(&text).expect("encodable").len(),
    );
    assert_eq!(text_len - hex_len, 16);
    assert_round_trip(&hex);
    assert_round_trip(&text);
}

#[test]
fn a_bad_id_or_sample_is_refused_and_leaves_the_buffer_as_it_was() {
    let mut out = vec![7, 7, 7];
    let good = sample(1, 1_700_000_000_000);
    for bad_id in ["", "UPPER", "a/b", &"x".repeat(65)] {
        let (org, agent) = key("default", bad_id);
        assert_eq!(
            encode_into(&mut out, [(&org, &agent, &good)]),
            Err(WalError::InvalidId(bad_id.to_owned()))
        );
        assert_eq!(out, [7, 7, 7]);
    }
    let (org, agent) = key("default", "a1");
    let unstorable = Sample {
        cpu_percent: f64::NAN,
        ..sample(5, 0)
    };
    assert!(matches!(
        encode_into(
            &mut out,
            [(&org, &agent, &good), (&org, &agent, &unstorable)]
        ),
        Err(WalError::Sample { seq: 5, .. })
    ));
    assert_eq!(out, [7, 7, 7]);
    encode_into(&mut out, [(&org, &agent, &good)]).expect("encodable");
    assert_eq!(out[..3], [7, 7, 7]);
    assert!(decode(&out[3..]).is_ok());
}

#[test]
fn every_strict_prefix_and_any_appended_byte_fail_the_checksum() {
    let entries = [(key("default", "ab12"), sample(1, 1_700_000_000_000))];
    let bytes = encode_owned(&entries).expect("encodable");
    for len in 0..bytes.len() {
        assert!(decode(&bytes[..len]).is_err(), "prefix {len}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(
        decode(&longer),
        Err(WalError::Decode(DecodeError::Checksum))
    );
}

#[test]
fn a_newer_version_with_a_good_checksum_is_refused_as_a_version() {
    let mut bytes = encode(std::iter::empty()).expect("encodable");
    bytes[0] = WAL_VERSION + 1;
    let crc = checksum(bytes[0], &bytes[5..]);
    bytes[1..5].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(
        decode(&bytes),
        Err(WalError::Decode(DecodeError::Version {
            found: WAL_VERSION + 1,
            expected: WAL_VERSION
        }))
    );
}

#[test]
fn scaled_integers_round_trip_at_the_edges() {
    for v in [
        0,
        1,
        2,
        3,
        1 << 30,
        (1 << 30) + 1,
        100 << 30,
        u64::MAX,
        1 << 63,
    ] {
        let mut out = Vec::new();
        put_scaled(&mut out, v);
        let mut r = ByteReader::new(&out);
        assert_eq!(read_scaled(&mut r, "v"), Ok(v));
        assert!(r.is_empty());
    }
    // A mantissa that would lose bits when shifted.
    let mut out = Vec::new();
    put_uvarint128(&mut out, (u128::from(u64::MAX) << 6) | 1);
    assert!(read_scaled(&mut ByteReader::new(&out), "v").is_err());
}

#[test]
fn a_batch_of_one_sample_per_agent_costs_under_sixty_bytes_each() {
    let entries: Vec<((OrgId, AgentId), Sample)> = (0..2_000u64)
        .map(|i| {
            let mut s = sample(86_400 + i, 1_700_000_000_000 + i % 100);
            s.disks = vec![disk("/", 20 << 30, 100 << 30)];
            (key("default", &format!("{:016x}", i * 0x9e37_79b9)), s)
        })
        .collect();
    let bytes = encode_owned(&entries).expect("encodable");
    let per_sample = bytes.len() as f64 / entries.len() as f64;
    assert!(per_sample < 60.0, "{per_sample} bytes per sample");
}

proptest! {
    #[test]
    fn any_batch_round_trips(
        samples in prop::collection::vec(arb_sample(), 0..30),
        agents in prop::collection::vec((0usize..3, 0usize..4), 30),
    ) {
        let orgs = ["default", "acme", "o-1"];
        let ids = ["0a1b", "agent-7", "ffffffffffffffff", "z"];
        let entries: Vec<((OrgId, AgentId), Sample)> = samples
            .into_iter()
            .zip(agents)
            .map(|(s, (o, a))| (key(orgs[o], ids[a]), s))
            .collect();
        assert_round_trip(&entries);
    }

    #[test]
    fn a_flipped_bit_is_always_caught_by_the_checksum(
        seq in 1u64..1_000_000,
        bit in any::<prop::sample::Index>(),
    ) {
        let entries = [(key("default", "0123456789abcdef"), sample(seq, 1_700_000_000_000))];
        let mut bytes = encode_owned(&entries).expect("encodable");
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert_eq!(decode(&bytes), Err(WalError::Decode(DecodeError::Checksum)));
    }

    #[test]
    fn garbage_never_panics_even_behind_a_valid_checksum(
        payload in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let _outcome = decode(&payload);
        let mut bytes = vec![WAL_VERSION, 0, 0, 0, 0];
        bytes.extend(&payload);
        let crc = checksum(WAL_VERSION, &payload);
        bytes[1..5].copy_from_slice(&crc.to_le_bytes());
        let _outcome = decode(&bytes);
    }
}
