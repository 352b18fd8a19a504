//! Rebuilding the engine from the store at start: every unfinished command, its invocations as
//! stored, and from its history the cursor each invocation ended at and the tail chunks of
//! its output. Nothing else is needed: the deadlines, the rollout and the agents' next
//! sessions take it from there.

use super::state::{Inv, State};
use crate::command::output::{Kept, TailChunk};
use crate::command::record::CommandEvent;
use crate::command::rollout::Limits;
use crate::store::{Store, StoreError};

/// Invocations or events read from the store at a time.
const LOAD_PAGE: usize = 10_000;
/// Bytes of events read from the store at a time.
const LOAD_PAGE_BYTES: usize = 16 << 20;

/// The engine's state as the store holds it.
///
/// # Errors
///
/// The store's; `Corrupt` for a command whose invocations are not numbered `0..n`.
pub(super) fn load(store: &dyn Store) -> Result<State, StoreError> {
    let mut state = State::default();
    for record in store.active_commands()? {
        let (org, id) = (record.org.clone(), record.id.clone());
        let corrupt = |detail: String| StoreError::Corrupt {
            key: format!("{org}/c/{id}"),
            detail,
        };
        let mut invs: Vec<Inv> = Vec::with_capacity(record.n_invocations as usize);
        let mut after = None;
        loop {
            let page = store.invocations(&org, &id, after, LOAD_PAGE)?;
            let Some(last) = page.last() else {
                break;
            };
            after = Some(last.n);
            for invocation in page {
                if invocation.n as usize != invs.len() {
                    return Err(corrupt(format!(
                        "invocation {} found where {} was expected",
                        invocation.n,
                        invs.len()
                    )));
                }
                invs.push(Inv::new(invocation));
            }
        }
        if invs.len() != record.n_invocations as usize {
            return Err(corrupt(format!(
                "{} invocations stored, {} expected",
                invs.len(),
                record.n_invocations
            )));
        }
        let mut cursor = 0;
        loop {
            let events = store.command_events(
                &org,
                &id,
                cursor,
                record.last_cursor,
                LOAD_PAGE,
                LOAD_PAGE_BYTES,
            )?;
            if events.is_empty() {
                break;
            }
            for (at, event) in events {
                cursor = at;
                match event {
                    CommandEvent::Invocation(invocation) if invocation.state.is_terminal() => {
                        if let Some(inv) = invs.get_mut(invocation.n as usize) {
                            inv.terminal_cursor = at;
                        }
                    }
                    CommandEvent::Output(output) if output.tail => {
                        if let Some(inv) = invs.get_mut(output.n as usize) {
                            let kept = inv.kept.get_or_insert_with(Box::default);
                            let len = output.data.len() as u64;
                            kept.tail.push_back(TailChunk { cursor: at, len });
                            kept.tail_bytes += len;
                        }
                    }
                    CommandEvent::Invocation(_) | CommandEvent::Output(_) => {}
                }
            }
        }
        for inv in &mut invs {
            let head = inv.record.head_bytes;
            if head > 0 || inv.kept.is_some() {
                let kept = inv.kept.get_or_insert_with(|| Box::new(Kept::default()));
                kept.head_bytes = head;
            }
            // The history's tail is what is really kept.
            if let Some(kept) = &inv.kept {
                inv.record.tail_bytes = kept.tail_bytes;
            }
        }
        let limits = Limits::resolve(&record.rollout, record.runnable)
            .map_err(|e| corrupt(format!("rollout policy: {e}")))?;
        let next_cursor = record.last_cursor + 1;
        tracing::info!(command = %id, %org, invocations = invs.len(), "resuming command");
        state.install(record, limits, invs, next_cursor, true);
    }
    Ok(state)
}
