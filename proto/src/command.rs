//! The bounds of commands that both ends apply: the server refuses a `SendCommandRequest`
//! beyond them (`INVALID_ARGUMENT`, naming the field) and refuses an agent's `CommandReport`
//! beyond them (the stream ends with `INVALID_ARGUMENT`); clients and agents check them before
//! sending, so that what they send is accepted.
//!
//! A command travels in one message (to the server, then in every offer), so its parts are
//! bounded well below the 1 MiB default message limit, together with room for the rest.

use std::time::Duration;

/// Most bytes of `ExecSpec.stdin`.
pub const MAX_STDIN_BYTES: usize = 256 << 10;
/// Most entries of `ExecSpec.argv`.
pub const MAX_ARGV_ITEMS: usize = 1024;
/// Most bytes of all of `ExecSpec.argv` together.
pub const MAX_ARGV_BYTES: usize = 128 << 10;
/// Most entries of `ExecSpec.env`.
pub const MAX_ENV_VARS: usize = 256;
/// Most bytes of all of `ExecSpec.env`'s names and values together.
pub const MAX_ENV_BYTES: usize = 64 << 10;
/// Longest `ExecSpec.working_dir`, in bytes.
pub const MAX_WORKING_DIR_BYTES: usize = 4096;
/// Longest `SendCommandRequest.description`, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
/// Longest `SendCommandRequest.idempotency_key`, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
/// Most agent ids one command may name in `CommandTargets.agent_ids`.
pub const MAX_TARGET_IDS: usize = 10_000;
/// Longest `SendCommandRequest.timeout` (and `SleepSpec.duration`).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Longest `SendCommandRequest.deliver_within`.
pub const MAX_DELIVER_WITHIN: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a `SendCommand` idempotency key is remembered.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Most output bytes in one `CommandUpdate` (all its chunks together).
pub const MAX_UPDATE_OUTPUT_BYTES: usize = 64 << 10;
/// Most chunks in one `CommandUpdate`.
pub const MAX_CHUNKS_PER_UPDATE: usize = 16;
/// Most updates in one `CommandReport`.
pub const MAX_UPDATES_PER_REPORT: usize = 512;
/// Longest `CommandUpdate.reason` the server keeps, in bytes (a longer one is cut, and
/// control or format characters are left out: a result is never refused for its wording).
pub const MAX_REASON_BYTES: usize = 1024;
/// Most ids in `Hello.journaled_invocation_ids` (the agent's journal keeps at most this many
/// entries).
pub const MAX_JOURNALED_INVOCATIONS: usize = 10_000;
