use super::*;

// crc: u32 4
// kind: u8 1
// seg num: u64 9 (varint)
// pid: u64 9 (varint)
// len: u64 9 (varint)
/// Log messages have a header that might eb up to this length.
pub const MAX_MSG_HEADER_LEN: usize = 32;

/// Log segments have a header of this length.
pub const SEG_HEADER_LEN: usize = 20;

/// The minimum number of items per segment.
/// Items larger than this fraction of an `io_buf`
/// will be stored as an off-log blob.
pub const MINIMUM_ITEMS_PER_SEGMENT: usize = 4;

/// During testing, this should never be exceeded.
#[allow(unused)]
pub const MAX_SPACE_AMPLIFICATION: f64 = 5.;

pub(crate) const META_PID: PageId = 0;
pub(crate) const COUNTER_PID: PageId = 1;
pub(crate) const BATCH_MANIFEST_PID: PageId = PageId::max_value() - 666;

pub(crate) const PAGE_CONSOLIDATION_THRESHOLD: usize = 10;

/// A leaf whose keys and values take more than this many bytes is split by size (Tether's
/// change), not only past 16 items: with large values (a write-ahead record, a compressed
/// chunk) a 16-item leaf serialized whole is over a quarter of a 128 KiB segment, so every
/// rewrite of it became a blob file of its own. Split this way, a leaf stays under about
/// `LEAF_SPLIT_BYTES` plus one value, and is written inline in the log.
pub(crate) const LEAF_SPLIT_BYTES: u64 = 12 * 1024;
/// A segment whose live bytes fall to this percentage of it is handed to the cleaner. Upstream
/// 50; Tether's 65 keeps sled's files nearer the records (with the cleaner draining every
/// segment it is given, `TETHER-PATCH.md`): 1.52 → 1.27 times the records at 30 simulated days
/// of the store's writes, for 6 % more bytes written. 80 took them to 1.14 times but cost the
/// server memory in the fleet benchmark (0.7 KiB an agent).
pub(crate) const SEGMENT_CLEANUP_THRESHOLD: usize = 65;

// Allows for around 1 trillion items to be stored
// 2^37 * (assuming 50% node fill, 8 items per leaf)
// and well below 1% of nodes being non-leaf nodes.
#[cfg(target_pointer_width = "64")]
pub(crate) const MAX_PID_BITS: usize = 37;

// Allows for around 32 billion items to be stored
// 2^32 * (assuming 50% node fill of 8 items per leaf)
// and well below 1% of nodes being non-leaf nodes.
// Assumed to be enough for a 32-bit system.
#[cfg(target_pointer_width = "32")]
pub(crate) const MAX_PID_BITS: usize = 32;
