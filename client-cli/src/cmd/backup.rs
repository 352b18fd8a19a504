//! `backup --out FILE`: saves the running server's backup stream (`AdminService.Backup`).
//!
//! The bytes go to `FILE.partial` (0600, never over an existing file), hashed as they arrive;
//! only when the server's closing `done` part matches their size and SHA-256 is the file
//! synced and renamed to `FILE`. Any other ending (an error, a stream cut short, a mismatch)
//! removes the partial file, so `FILE` exists only as a whole backup. Parts of a kind this
//! client does not know are skipped, as the wire contract asks.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tether_proto as pb;

use crate::CliError;
use crate::cli::BackupArgs;
use crate::client::Connection;
use crate::config::Settings;
use crate::format::{escape, key_values};

use super::write_text;

/// `backup`.
pub(crate) async fn run(
    args: BackupArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let target = args.out;
    let failed = |message: String| CliError::Backup {
        path: target.clone(),
        message,
    };
    if target.exists() {
        return Err(failed("the file exists; choose a new name".to_owned()));
    }
    let partial = partial_path(&target);
    let file = create_private(&partial).map_err(|e| {
        failed(format!(
            "cannot create {}: {e}",
            escape(&partial.display().to_string())
        ))
    })?;
    let saved = receive(settings, file, &target).await;
    let saved = match saved {
        Ok(done) => std::fs::rename(&partial, &target)
            .map(|()| done)
            .map_err(|e| failed(format!("cannot rename the finished file: {e}"))),
        Err(e) => Err(e),
    };
    let done = match saved {
        Ok(done) => done,
        Err(e) => {
            if let Err(remove) = std::fs::remove_file(&partial) {
                tracing_free_warning(&partial, &remove);
            }
            return Err(e);
        }
    };
    let taken_at = done
        .taken_at
        .and_then(|t| std::time::SystemTime::try_from(t).ok())
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default();
    let text = key_values(
        0,
        &[
            ("Saved", target.display().to_string()),
            ("Bytes", done.size_bytes.to_string()),
            ("Records", done.records.to_string()),
            ("Schema", done.schema_version.to_string()),
            ("Taken at", taken_at),
            ("SHA-256", hex::encode(&done.sha256)),
        ],
    );
    write_text(out, &text)?;
    Ok(())
}

/// Reads the stream into `file`; returns the server's `done` once everything matched and the
/// file is synced.
async fn receive(
    settings: &Settings,
    file: std::fs::File,
    target: &Path,
) -> Result<pb::BackupDone, CliError> {
    let failed = |message: String| CliError::Backup {
        path: target.to_owned(),
        message,
    };
    let conn = Connection::connect(settings).await?;
    let mut stream = conn
        .admin()
        .backup(pb::BackupRequest {})
        .await
        .map_err(|status| conn.error(&status, None))?
        .into_inner();
    let mut writer = std::io::BufWriter::new(file);
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let done = loop {
        let Some(message) = stream
            .message()
            .await
            .map_err(|status| conn.error(&status, None))?
        else {
            return Err(failed(format!(
                "the stream ended after {size} bytes without its end mark: incomplete"
            )));
        };
        match message.part {
            Some(pb::backup_response::Part::Data(data)) => {
                hasher.update(&data);
                size += data.len() as u64;
                writer
                    .write_all(&data)
                    .map_err(|e| failed(format!("cannot write: {e}")))?;
            }
            Some(pb::backup_response::Part::Done(done)) => break done,
            // A part a newer server sends that this client does not know.
            None => {}
        }
    };
    let sha256: [u8; 32] = hasher.finalize().into();
    if done.size_bytes != size || done.sha256 != sha256 {
        return Err(failed(format!(
            "received {size} bytes with SHA-256 {}, the server sent {} bytes with {}",
            hex::encode(sha256),
            done.size_bytes,
            hex::encode(&done.sha256)
        )));
    }
    let file = writer
        .into_inner()
        .map_err(|e| failed(format!("cannot write: {}", e.error())))?;
    file.sync_all()
        .map_err(|e| failed(format!("cannot sync: {e}")))?;
    Ok(done)
}

/// `FILE.partial`, beside `FILE`.
fn partial_path(target: &Path) -> PathBuf {
    let mut name = target.as_os_str().to_os_string();
    name.push(".partial");
    PathBuf::from(name)
}

/// Creates `path` for writing, mode 0600, failing if it exists.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Says on stderr that a partial file could not be removed (the command's error follows).
fn tracing_free_warning(path: &Path, err: &std::io::Error) {
    eprintln!(
        "warning: cannot remove {}: {err}",
        escape(&path.display().to_string())
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partial_file_sits_beside_the_target() {
        assert_eq!(
            partial_path(Path::new("/backups/t.backup")),
            Path::new("/backups/t.backup.partial")
        );
    }
}
