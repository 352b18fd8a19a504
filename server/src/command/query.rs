//! The read side of commands: one command, a page of commands, a page of one command's
//! invocations. All from the store, which holds every change once it is durable, so a reader
//! never sees a state the server could still lose.

use std::sync::Arc;

use crate::command::record::{
    CommandPage, CommandQuery, CommandRecord, InvocationPage, InvocationQuery,
};
use crate::domain::{CommandId, OrgId};
use crate::error::ServerError;
use crate::store::{Store, StoreError};

/// Most commands one `ListCommands` page reads to fill a filtered page.
pub const MAX_COMMAND_SCAN: usize = 10_000;
/// Most invocations one `ListInvocations` page reads to fill a filtered page.
pub const MAX_INVOCATION_SCAN: usize = 100_000;

/// Runs a blocking store call off the async threads.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ServerError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| ServerError::Internal(e.to_string()))?
        .map_err(ServerError::from)
}

/// Command `id` of `org`.
///
/// # Errors
///
/// `NOT_FOUND` for a command not in `org`; `INTERNAL` if the store fails.
pub async fn command(
    store: &Arc<dyn Store>,
    org: &OrgId,
    id: &CommandId,
) -> Result<CommandRecord, ServerError> {
    let (store, org, key) = (store.clone(), org.clone(), id.clone());
    blocking(move || store.command(&org, &key))
        .await?
        .ok_or_else(|| ServerError::NotFound(format!("command {id}")))
}

/// One page of `org`'s commands, newest first.
///
/// # Errors
///
/// `INTERNAL` if the store fails.
pub async fn commands(
    store: &Arc<dyn Store>,
    org: &OrgId,
    query: CommandQuery,
) -> Result<CommandPage, ServerError> {
    let (store, org) = (store.clone(), org.clone());
    blocking(move || store.commands(&org, &query, MAX_COMMAND_SCAN)).await
}

/// One page of the invocations of a command of `org`.
///
/// # Errors
///
/// `NOT_FOUND` for a command not in `org`; `INTERNAL` if the store fails.
pub async fn invocations(
    store: &Arc<dyn Store>,
    org: &OrgId,
    query: InvocationQuery,
) -> Result<InvocationPage, ServerError> {
    let total = command(store, org, &query.command).await?.n_invocations;
    let (store, org) = (store.clone(), org.clone());
    blocking(move || {
        let InvocationQuery {
            command,
            states,
            mut after,
            page_size,
        } = query;
        let mut page = InvocationPage::default();
        let mut scanned = 0;
        while scanned < MAX_INVOCATION_SCAN {
            let chunk = store.invocations(&org, &command, after, page_size.max(1))?;
            let Some(last) = chunk.last() else {
                return Ok(page);
            };
            let last = last.n;
            for invocation in chunk {
                scanned += 1;
                if states.is_empty() || states.contains(&invocation.state) {
                    let n = invocation.n;
                    page.invocations.push(invocation);
                    if page.invocations.len() == page_size {
                        page.next_after = (n + 1 < total).then_some(n);
                        return Ok(page);
                    }
                }
            }
            after = Some(last);
        }
        page.next_after = after;
        Ok(page)
    })
    .await
}
