//! Log lines captured in memory, for tests of what the server and the agent log.
//!
//! [`LogCapture::install`] makes a plain-text subscriber the default of the calling thread
//! only. Run such a test on a current-thread runtime: every task (the server's, the agent's)
//! is then polled on that thread and logs into the capture; other tests are unaffected.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::subscriber::DefaultGuard;
use tracing_subscriber::fmt::MakeWriter;

/// Bytes written by one side (a logger, `tetherctl`) and read by the test meanwhile.
#[derive(Clone, Default)]
pub struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuffer {
    /// Every complete line written so far (invalid UTF-8 replaced): a last line still being
    /// written, without its newline yet, is left out until it is whole.
    pub fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let whole = bytes
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(&bytes[..0], |end| &bytes[..=end]);
        String::from_utf8_lossy(whole)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// What was logged on this thread since [`LogCapture::install`].
#[derive(Clone, Default)]
pub struct LogCapture(SharedBuffer);

impl<'a> MakeWriter<'a> for LogCapture {
    type Writer = SharedBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.0.clone()
    }
}

impl LogCapture {
    /// Captures what this thread logs at `filter` (e.g. `info`) until the guard drops.
    pub fn install(filter: &str) -> (Self, DefaultGuard) {
        let capture = Self::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(capture.clone())
            .with_ansi(false)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (capture, guard)
    }

    /// Every line logged so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lines()
    }

    /// The first line logged so far that holds every one of `parts`.
    pub fn find(&self, parts: &[&str]) -> Option<String> {
        self.lines()
            .into_iter()
            .find(|line| parts.iter().all(|part| line.contains(part)))
    }
}
