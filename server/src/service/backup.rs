//! `AdminService.Backup`: a consistent snapshot of the running server's store, streamed as a
//! backup file (`backup.rs`, `store/dump.rs`).
//!
//! The call is audited first (so the backup holds the record of itself), then the store's
//! records are written, quiesced, to a spool file in the data directory (`backup::write`:
//! the writer waits for that local copy only), and only then streamed. **Invariant (a reader
//! costs only itself):** one backup at a time (`RESOURCE_EXHAUSTED` for a second); the stream
//! is fed by one producer through a queue of [`QUEUED_PARTS`] parts, so a client that does not
//! read holds at most that much memory, its spool file and the backup slot, and after
//! [`IDLE_TIMEOUT`] without reading it loses all three (`DEADLINE_EXCEEDED`). Neither the
//! writer nor any other call ever waits for a backup's reader.

use std::io::{Read, Seek, SeekFrom};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use futures::Stream;
use tether_proto as pb;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::task::TaskTracker;
use tonic::Status;

use crate::auth::Caller;
use crate::error::ServerError;
use crate::service::AppState;

/// The method, as audited.
pub const BACKUP: &str = "/tether.v1.AdminService/Backup";
/// Bytes of the file in one `data` part.
pub const PART_BYTES: usize = 256 * 1024;
/// Parts queued ahead of the client.
const QUEUED_PARTS: usize = 2;
/// How long a part may wait for the client to take it before the backup is ended.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub type BackupStream = Pin<Box<dyn Stream<Item = Result<pb::BackupResponse, Status>> + Send>>;

/// The backups of one server: the one slot, and the tracker its producers run under.
pub struct Backups {
    slot: Arc<Semaphore>,
    tasks: TaskTracker,
    idle_timeout: Duration,
}

impl Backups {
    pub fn new(tasks: TaskTracker) -> Self {
        Self {
            slot: Arc::new(Semaphore::new(1)),
            tasks,
            idle_timeout: IDLE_TIMEOUT,
        }
    }

    /// Audits the call and returns the stream of the snapshot's file (taken once the answer
    /// has started; a failure to take it ends the stream with `INTERNAL`).
    ///
    /// # Errors
    ///
    /// `ResourceExhausted` while another backup runs; the writer's errors for the audit entry.
    pub async fn start(
        &self,
        state: &Arc<AppState>,
        caller: &Caller,
    ) -> Result<BackupStream, ServerError> {
        let permit = self.slot.clone().try_acquire_owned().map_err(|_| {
            ServerError::ResourceExhausted("another backup is running; try again after it".into())
        })?;
        state
            .writer
            .commit_audited(
                Vec::new(),
                Some(crate::audit::entry(caller, BACKUP, "", Ok(()))),
            )
            .await?;
        let (tx, rx) = mpsc::channel(QUEUED_PARTS);
        let store = state.store.clone();
        let data_dir = state.config.data_dir.clone();
        let (idle, shutdown) = (self.idle_timeout, state.shutdown.clone());
        self.tasks.spawn(async move {
            // Taken here, after the answer's headers left, so a large store never keeps the
            // client waiting for them past its request deadline.
            match snapshot(store, data_dir).await {
                Ok((file, done)) => produce(file, done, tx, permit, idle, shutdown).await,
                Err(e) => {
                    tracing::error!("backup failed: {e:#}");
                    let _ignored = tx.send(Err(Status::from(e))).await;
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// Writes the store's records to a spool file in `data_dir`; returns it with its summary.
async fn snapshot(
    store: Arc<dyn crate::store::Store>,
    data_dir: std::path::PathBuf,
) -> Result<(std::fs::File, pb::BackupDone), ServerError> {
    let started = std::time::Instant::now();
    let (file, taken) = tokio::task::spawn_blocking(move || {
        let spool = crate::backup::spool_in(&data_dir)
            .map_err(|e| crate::store::StoreError::Backend(Box::new(e)))?;
        crate::backup::write(store.as_ref(), spool)
    })
    .await
    .map_err(|e| ServerError::Internal(format!("backup task: {e}")))??;
    tracing::info!(
        bytes = taken.summary.bytes,
        records = taken.summary.records,
        took_ms = started.elapsed().as_millis() as u64,
        "backup snapshot written; streaming it"
    );
    let done = pb::BackupDone {
        size_bytes: taken.summary.bytes,
        sha256: taken.summary.sha256.to_vec(),
        taken_at: humantime::parse_rfc3339(&taken.header.taken_at)
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| prost_types::Timestamp {
                seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
            }),
        schema_version: taken.header.schema_version,
        records: taken.summary.records,
    };
    Ok((file, done))
}

/// Sends the spool `file` in parts, then `done`; ends (dropping the file and the slot) when
/// the client goes, stops reading for `idle`, or the server shuts down.
async fn produce(
    mut file: std::fs::File,
    done: pb::BackupDone,
    tx: mpsc::Sender<Result<pb::BackupResponse, Status>>,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use pb::backup_response::Part;
    if let Err(e) = file.seek(SeekFrom::Start(0)) {
        tracing::error!("backup spool: {e}");
        let _ignored = tx
            .send(Err(Status::internal("backup spool unreadable")))
            .await;
        return;
    }
    loop {
        let read = tokio::task::spawn_blocking(move || {
            let part = read_part(&mut file);
            (file, part)
        })
        .await;
        let Ok((returned, read)) = read else {
            let _ignored = tx.send(Err(Status::internal("backup task failed"))).await;
            return;
        };
        file = returned;
        let part = match read {
            Ok(Some(data)) => Part::Data(data),
            Ok(None) => Part::Done(done.clone()),
            Err(e) => {
                tracing::error!("backup spool: {e}");
                let _ignored = tx
                    .send(Err(Status::internal("backup spool unreadable")))
                    .await;
                return;
            }
        };
        let last = matches!(part, Part::Done(_));
        let message = Ok(pb::BackupResponse { part: Some(part) });
        tokio::select! {
            sent = tx.send_timeout(message, idle) => match sent {
                Ok(()) if last => return,
                Ok(()) => {}
                Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                    tracing::warn!(idle_s = idle.as_secs(), "backup stream not read; ended");
                    // The queue is full, so this error reaches the client only if it reads
                    // again; either way the file and the slot go now.
                    let _ignored = tx.try_send(Err(Status::deadline_exceeded(
                        "the backup stream was not read in time",
                    )));
                    return;
                }
                Err(mpsc::error::SendTimeoutError::Closed(_)) => return,
            },
            () = shutdown.cancelled() => {
                let _ignored = tx.try_send(Err(Status::unavailable("the server is shutting down")));
                return;
            }
        }
    }
}

/// The next part of the spool, or `None` at its end.
fn read_part(file: &mut std::fs::File) -> std::io::Result<Option<Vec<u8>>> {
    let mut part = Vec::with_capacity(PART_BYTES);
    file.by_ref()
        .take(PART_BYTES as u64)
        .read_to_end(&mut part)?;
    Ok((!part.is_empty()).then_some(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool(bytes: &[u8]) -> std::fs::File {
        use std::io::Write as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = crate::backup::spool_in(dir.path()).expect("spool");
        file.write_all(bytes).expect("write");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("dir").count(),
            0,
            "a spool has no name"
        );
        file
    }

    #[tokio::test]
    async fn a_reader_gets_every_part_then_done() {
        let bytes: Vec<u8> = (0..PART_BYTES * 2 + 10).map(|i| i as u8).collect();
        let slot = Arc::new(Semaphore::new(1));
        let (tx, mut rx) = mpsc::channel(QUEUED_PARTS);
        let permit = slot.clone().try_acquire_owned().expect("free");
        let producer = tokio::spawn(produce(
            spool(&bytes),
            pb::BackupDone::default(),
            tx,
            permit,
            Duration::from_secs(5),
            tokio_util::sync::CancellationToken::new(),
        ));
        let mut got = Vec::new();
        let mut done = false;
        while let Some(message) = rx.recv().await {
            match message.expect("no error").part {
                Some(pb::backup_response::Part::Data(data)) => got.extend(data),
                Some(pb::backup_response::Part::Done(_)) => done = true,
                None => panic!("an empty part"),
            }
        }
        producer.await.expect("producer");
        assert!(done);
        assert_eq!(got, bytes);
        assert_eq!(slot.available_permits(), 1, "the slot is free again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_reads_loses_its_backup_and_frees_the_slot() {
        let bytes = vec![7u8; PART_BYTES * 8];
        let slot = Arc::new(Semaphore::new(1));
        let (tx, rx) = mpsc::channel(QUEUED_PARTS);
        let permit = slot.clone().try_acquire_owned().expect("free");
        let producer = tokio::spawn(produce(
            spool(&bytes),
            pb::BackupDone::default(),
            tx,
            permit,
            IDLE_TIMEOUT,
            tokio_util::sync::CancellationToken::new(),
        ));
        // The receiver is held, never read: the producer gives up after the idle timeout.
        producer.await.expect("producer");
        assert_eq!(slot.available_permits(), 1, "the slot is free again");
        assert_eq!(rx.len(), QUEUED_PARTS, "no more than the queue was held");
    }
}
