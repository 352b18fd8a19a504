//! `cmd logs`: one agent's stored output, assembled from the chunks a replaying watch sends.
//!
//! [`StreamLog`] puts chunks at their offsets with the same rule as the live printer
//! ([`place`]): a replayed byte is kept once, and a jump is a gap of output the server did not
//! keep, recorded with where it starts. [`render_notes`] says what is missing, for stderr.

use crate::format::format_bytes;
use crate::view::{GapView, InvocationLogView, InvocationView, OutputStream, StreamLogView};

use super::stream::{Placed, place};

/// The kept output of one stream, as it is assembled.
#[derive(Debug, Default)]
pub(super) struct StreamLog {
    next: u64,
    log: StreamLogView,
}

// === impl StreamLog ===

impl StreamLog {
    /// Adds the chunk written at `offset`.
    pub(super) fn push(&mut self, offset: u64, data: &[u8]) {
        let Placed { gap, fresh } = place(&mut self.next, offset, data);
        if gap > 0 {
            self.log.gaps.push(GapView {
                offset: self.next - fresh.len() as u64 - gap,
                length: gap,
            });
        }
        self.log.data.extend_from_slice(fresh);
        self.log.written_bytes = self.next;
    }

    /// The assembled stream. Bytes the invocation reports written past the last chunk (cut from
    /// the end, or not stored yet) are not a gap: nothing after them was kept.
    pub(super) fn finish(self) -> StreamLogView {
        self.log
    }
}

/// Assembles the log of `invocation` from `(stream, offset, data)` chunks.
pub(super) fn assemble<'a>(
    invocation: InvocationView,
    chunks: impl IntoIterator<Item = (OutputStream, u64, &'a [u8])>,
) -> InvocationLogView {
    let (mut stdout, mut stderr) = (StreamLog::default(), StreamLog::default());
    for (stream, offset, data) in chunks {
        match stream {
            OutputStream::Stderr => stderr.push(offset, data),
            OutputStream::Stdout | OutputStream::Unknown => stdout.push(offset, data),
        }
    }
    InvocationLogView {
        invocation,
        stdout: stdout.finish(),
        stderr: stderr.finish(),
    }
}

/// What a person should know about a log besides its bytes: output that was not kept, output
/// not stored (yet), and an invocation that has not ended. Empty when there is nothing to say.
pub(super) fn render_notes(log: &InvocationLogView) -> String {
    let mut notes = String::new();
    let invocation = &log.invocation;
    for (name, stream, reported) in [
        ("stdout", &log.stdout, invocation.stdout_bytes),
        ("stderr", &log.stderr, invocation.stderr_bytes),
    ] {
        for gap in &stream.gaps {
            notes.push_str(&format!(
                "note: {} of {name} not kept, from byte {} (the command keeps the head and \
                 tail of its output)\n",
                format_bytes(gap.length),
                gap.offset
            ));
        }
        if reported > stream.written_bytes {
            notes.push_str(&format!(
                "note: the last {} of {name} the agent reported are not stored\n",
                format_bytes(reported - stream.written_bytes)
            ));
        }
    }
    let counted: u64 = [&log.stdout, &log.stderr]
        .iter()
        .flat_map(|s| &s.gaps)
        .map(|g| g.length)
        .sum();
    if invocation.dropped_bytes > counted {
        notes.push_str(&format!(
            "note: {} of output not kept in all\n",
            format_bytes(invocation.dropped_bytes)
        ));
    }
    if !invocation.state.is_terminal() {
        notes.push_str(&format!(
            "note: the invocation is {}; this is its output so far\n",
            invocation.state_label()
        ));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::InvocationState;

    fn invocation(state: InvocationState) -> InvocationView {
        crate::cmd::command::render::tests::invocation("web-1", state)
    }

    #[test]
    fn chunks_assemble_once_with_their_gaps() {
        let chunks: [(OutputStream, u64, &[u8]); 5] = [
            (OutputStream::Stdout, 0, b"head\n"),
            (OutputStream::Stderr, 0, b"oops\n"),
            (OutputStream::Stdout, 0, b"head\n"),
            (OutputStream::Stdout, 105, b"tail\n"),
            (OutputStream::Stdout, 107, b"il\n"),
        ];
        let mut inv = invocation(InvocationState::Succeeded);
        inv.stdout_bytes = 110;
        inv.stderr_bytes = 5;
        inv.dropped_bytes = 100;
        let log = assemble(inv, chunks);
        assert_eq!(log.stdout.data, b"head\ntail\n");
        assert_eq!(log.stdout.written_bytes, 110);
        assert_eq!(
            log.stdout.gaps,
            [GapView {
                offset: 5,
                length: 100
            }]
        );
        assert_eq!(log.stderr.data, b"oops\n");
        assert!(log.stderr.gaps.is_empty());
        assert_eq!(
            render_notes(&log),
            "note: 100 B of stdout not kept, from byte 5 (the command keeps the head and tail \
             of its output)\n"
        );
    }

    #[test]
    fn notes_say_what_is_missing_or_still_coming() {
        let mut inv = invocation(InvocationState::Running);
        inv.stdout_bytes = 2048;
        let log = assemble(inv, [(OutputStream::Stdout, 0, &b"x"[..])]);
        let notes = render_notes(&log);
        assert!(
            notes.contains("the last 2.0 KiB of stdout the agent reported are not stored"),
            "{notes}"
        );
        assert!(notes.contains("the invocation is RUNNING"), "{notes}");
        assert_eq!(
            render_notes(&assemble(invocation(InvocationState::Succeeded), [])),
            ""
        );
    }

    #[test]
    fn json_carries_text_or_hex() {
        let log = assemble(
            invocation(InvocationState::Failed),
            [
                (OutputStream::Stdout, 0, &b"ok\n"[..]),
                (OutputStream::Stderr, 0, &b"\xff\x00"[..]),
            ],
        );
        let json = serde_json::to_value(&log).expect("serializes");
        assert_eq!(json["stdout"]["text"], "ok\n");
        assert_eq!(json["stdout"]["data_hex"], serde_json::Value::Null);
        assert_eq!(json["stderr"]["text"], serde_json::Value::Null);
        assert_eq!(json["stderr"]["data_hex"], "ff00");
        assert_eq!(json["stderr"]["written_bytes"], 2);
        assert_eq!(json["invocation"]["state"], "failed");
    }
}
