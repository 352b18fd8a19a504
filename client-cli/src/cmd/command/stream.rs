//! Agents' output as `cmd run` and `cmd watch` print it: whole lines, each prefixed by its
//! agent's name, stdout lines on stdout and stderr lines on stderr.
//!
//! Output arrives as chunks at byte offsets of each invocation's stream. [`place`] puts a chunk
//! at its offset: bytes already printed (a replay after a resumed watch) are dropped, and a jump
//! forward is output the server did not keep, which is said so in a line of its own. Lines of
//! different agents are never mixed: an unfinished line waits for its end (or for its
//! invocation's end) up to [`MAX_PENDING_LINE`] bytes, past which it is printed as it is.
//!
//! The output bytes are printed exactly as the agent sent them; only the names in the prefixes,
//! which agents choose, are escaped.

use std::collections::HashMap;

use crate::format::{escape_control, format_bytes};
use crate::view::{OutputChunkView, OutputStream};

/// Longest unfinished line kept back while waiting for its newline.
pub(super) const MAX_PENDING_LINE: usize = 64 << 10;

/// ANSI colours of the agent names, in the order agents are first seen.
const PALETTE: [&str; 6] = ["36", "33", "32", "35", "34", "91"];

/// Bytes for this process's stdout and stderr, in the order they must be written.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Printed {
    /// For stdout.
    pub stdout: Vec<u8>,
    /// For stderr.
    pub stderr: Vec<u8>,
}

/// Where a chunk lands in its stream.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Placed<'a> {
    /// Bytes between what was seen and the chunk: output the server did not keep.
    pub gap: u64,
    /// The chunk's bytes not seen before.
    pub fresh: &'a [u8],
}

/// Places `data`, written at `offset`, after the `next` bytes of its stream already seen, and
/// advances `next` past it.
pub(super) fn place<'a>(next: &mut u64, offset: u64, data: &'a [u8]) -> Placed<'a> {
    let end = offset.saturating_add(data.len() as u64);
    if end <= *next {
        return Placed { gap: 0, fresh: &[] };
    }
    let (gap, skip) = if offset >= *next {
        (offset - *next, 0)
    } else {
        (
            0,
            usize::try_from(*next - offset).expect("less than the chunk's length"),
        )
    };
    *next = end;
    Placed {
        gap,
        fresh: &data[skip..],
    }
}

/// The line printer of one follow.
#[derive(Debug)]
pub(super) struct LinePrinter {
    color: bool,
    /// Per invocation and stream: the offset seen so far and the unfinished line.
    streams: HashMap<(String, OutputStream), Pending>,
    /// Colour index of each agent, by agent id.
    colors: HashMap<String, usize>,
}

/// One stream of one invocation.
#[derive(Debug)]
struct Pending {
    /// Bytes of the stream seen so far.
    next: u64,
    /// The unfinished line.
    line: Vec<u8>,
    /// What its lines start with.
    prefix: String,
}

// === impl LinePrinter ===

impl LinePrinter {
    /// A printer; `color` colours the names (on a terminal only).
    pub(super) fn new(color: bool) -> Self {
        Self {
            color,
            streams: HashMap::new(),
            colors: HashMap::new(),
        }
    }

    /// Prints the whole lines `chunk` completes, under `name`.
    pub(super) fn chunk(&mut self, name: &str, chunk: &OutputChunkView, printed: &mut Printed) {
        let stream = chunk.stream;
        let key = (chunk.invocation_id.clone(), stream);
        if !self.streams.contains_key(&key) {
            let prefix = self.prefix(&chunk.agent_id, name);
            self.streams.insert(
                key.clone(),
                Pending {
                    next: 0,
                    line: Vec::new(),
                    prefix,
                },
            );
        }
        let pending = self.streams.get_mut(&key).expect("inserted above");
        let Placed { gap, fresh } = place(&mut pending.next, chunk.offset, &chunk.data);
        let prefix = pending.prefix.as_str();
        let sink = printed.sink(stream);
        if gap > 0 {
            flush_line(prefix, &mut pending.line, sink);
            sink.extend_from_slice(prefix.as_bytes());
            sink.extend_from_slice(
                format!("[{} of {} not kept]\n", format_bytes(gap), stream.as_str()).as_bytes(),
            );
        }
        let mut rest = fresh;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(newline + 1);
            sink.extend_from_slice(prefix.as_bytes());
            sink.extend_from_slice(&pending.line);
            sink.extend_from_slice(line);
            pending.line.clear();
            rest = after;
        }
        pending.line.extend_from_slice(rest);
        if pending.line.len() > MAX_PENDING_LINE {
            flush_line(prefix, &mut pending.line, sink);
        }
    }

    /// Prints what is left of `invocation_id`'s unfinished lines: it ended, no more will come.
    pub(super) fn finish(&mut self, invocation_id: &str, printed: &mut Printed) {
        for stream in [
            OutputStream::Stdout,
            OutputStream::Stderr,
            OutputStream::Unknown,
        ] {
            if let Some(pending) = self.streams.get_mut(&(invocation_id.to_owned(), stream)) {
                flush_line(&pending.prefix, &mut pending.line, printed.sink(stream));
            }
        }
    }

    /// Prints every unfinished line: the follow ends here.
    pub(super) fn finish_all(&mut self, printed: &mut Printed) {
        let mut keys: Vec<_> = self.streams.keys().cloned().collect();
        keys.sort();
        for (invocation_id, stream) in keys {
            let pending = self
                .streams
                .get_mut(&(invocation_id, stream))
                .expect("a key of the map");
            flush_line(&pending.prefix, &mut pending.line, printed.sink(stream));
        }
    }

    /// `name | `, escaped, coloured when asked to.
    fn prefix(&mut self, agent_id: &str, name: &str) -> String {
        let name = escape_control(name);
        if !self.color {
            return format!("{name} | ");
        }
        let n_colors = self.colors.len();
        let index = *self.colors.entry(agent_id.to_owned()).or_insert(n_colors);
        format!("\x1b[{}m{name}\x1b[0m | ", PALETTE[index % PALETTE.len()])
    }
}

/// Prints an unfinished line, ended by a newline, if there is one.
fn flush_line(prefix: &str, line: &mut Vec<u8>, sink: &mut Vec<u8>) {
    if line.is_empty() {
        return;
    }
    sink.extend_from_slice(prefix.as_bytes());
    sink.append(line);
    sink.push(b'\n');
}

// === impl Printed ===

impl Printed {
    /// Where `stream`'s lines go: stderr for stderr, stdout for everything else.
    fn sink(&mut self, stream: OutputStream) -> &mut Vec<u8> {
        match stream {
            OutputStream::Stderr => &mut self.stderr,
            OutputStream::Stdout | OutputStream::Unknown => &mut self.stdout,
        }
    }

    /// Whether there is nothing to write.
    pub(super) fn is_empty(&self) -> bool {
        self.stdout.is_empty() && self.stderr.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(invocation: &str, stream: OutputStream, offset: u64, data: &[u8]) -> OutputChunkView {
        OutputChunkView {
            invocation_id: invocation.to_owned(),
            agent_id: format!("agent-{invocation}"),
            stream,
            offset,
            data: data.to_vec(),
        }
    }

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn chunks_are_placed_at_their_offsets() {
        let mut next = 0;
        assert_eq!(
            place(&mut next, 0, b"abc"),
            Placed {
                gap: 0,
                fresh: b"abc"
            }
        );
        assert_eq!(next, 3);
        // A replay of what was seen, in part or in full.
        assert_eq!(place(&mut next, 0, b"abc"), Placed { gap: 0, fresh: b"" });
        assert_eq!(
            place(&mut next, 1, b"bcde"),
            Placed {
                gap: 0,
                fresh: b"de"
            }
        );
        assert_eq!(next, 5);
        // Output the server did not keep.
        assert_eq!(
            place(&mut next, 9, b"xy"),
            Placed {
                gap: 4,
                fresh: b"xy"
            }
        );
        assert_eq!(next, 11);
        assert_eq!(place(&mut next, 11, b""), Placed { gap: 0, fresh: b"" });
        assert_eq!(next, 11);
    }

    #[test]
    fn whole_lines_are_prefixed_and_streams_kept_apart() {
        let mut printer = LinePrinter::new(false);
        let mut printed = Printed::default();
        printer.chunk(
            "web-1",
            &chunk("i1", OutputStream::Stdout, 0, b"up 3 d"),
            &mut printed,
        );
        printer.chunk(
            "db-1",
            &chunk("i2", OutputStream::Stdout, 0, b"up 1 day\nload"),
            &mut printed,
        );
        printer.chunk(
            "web-1",
            &chunk("i1", OutputStream::Stdout, 6, b"ays\n"),
            &mut printed,
        );
        printer.chunk(
            "web-1",
            &chunk("i1", OutputStream::Stderr, 0, b"warn: x\n"),
            &mut printed,
        );
        assert_eq!(
            text(&printed.stdout),
            "db-1 | up 1 day\nweb-1 | up 3 days\n"
        );
        assert_eq!(text(&printed.stderr), "web-1 | warn: x\n");
        // The unfinished line of db-1 is printed when its invocation ends.
        let mut end = Printed::default();
        printer.finish("i2", &mut end);
        assert_eq!(text(&end.stdout), "db-1 | load\n");
        printer.finish("i2", &mut end);
        assert_eq!(text(&end.stdout), "db-1 | load\n", "printed once");
        printer.chunk(
            "web-1",
            &chunk("i1", OutputStream::Stderr, 8, b"half"),
            &mut end,
        );
        printer.finish_all(&mut end);
        assert_eq!(text(&end.stderr), "web-1 | half\n");
    }

    #[test]
    fn replays_print_nothing_twice_and_gaps_are_said() {
        let mut printer = LinePrinter::new(false);
        let mut printed = Printed::default();
        printer.chunk(
            "web-1",
            &chunk("i1", OutputStream::Stdout, 0, b"one\ntwo\n"),
            &mut printed,
        );
        // A resumed watch replays from an earlier point.
        printer.chunk(
            "web-1",
            &chunk("i1", OutputStream::Stdout, 4, b"two\nthree\n"),
            &mut printed,
        );
        printer.chunk(
            "web-1",
            &chunk("i1", OutputStream::Stdout, 2048 + 14, b"tail\n"),
            &mut printed,
        );
        assert_eq!(
            text(&printed.stdout),
            "web-1 | one\nweb-1 | two\nweb-1 | three\nweb-1 | [2.0 KiB of stdout not kept]\n\
             web-1 | tail\n"
        );
    }

    #[test]
    fn output_is_raw_but_names_are_escaped() {
        let mut printer = LinePrinter::new(false);
        let mut printed = Printed::default();
        let data = b"\x1b[1mbold\x1b[0m \xff\r\n";
        printer.chunk(
            "evil\x1b]0;title\x07",
            &chunk("i1", OutputStream::Stdout, 0, data),
            &mut printed,
        );
        let mut expected = b"evil\\u{1b}]0;title\\u{7} | ".to_vec();
        expected.extend_from_slice(data);
        assert_eq!(printed.stdout, expected);
    }

    #[test]
    fn colours_only_when_asked_one_per_agent() {
        let mut printer = LinePrinter::new(true);
        let mut printed = Printed::default();
        printer.chunk(
            "a",
            &chunk("i1", OutputStream::Stdout, 0, b"x\n"),
            &mut printed,
        );
        printer.chunk(
            "b",
            &chunk("i2", OutputStream::Stdout, 0, b"y\n"),
            &mut printed,
        );
        printer.chunk(
            "a",
            &chunk("i1", OutputStream::Stdout, 2, b"z\n"),
            &mut printed,
        );
        assert_eq!(
            text(&printed.stdout),
            "\x1b[36ma\x1b[0m | x\n\x1b[33mb\x1b[0m | y\n\x1b[36ma\x1b[0m | z\n"
        );
    }

    #[test]
    fn a_line_without_end_is_printed_once_it_is_too_long() {
        let mut printer = LinePrinter::new(false);
        let mut printed = Printed::default();
        let long = vec![b'x'; MAX_PENDING_LINE + 1];
        printer.chunk(
            "a",
            &chunk("i1", OutputStream::Stdout, 0, &long),
            &mut printed,
        );
        assert_eq!(printed.stdout.len(), "a | ".len() + long.len() + 1);
        assert!(printed.stdout.ends_with(b"x\n"));
    }
}
