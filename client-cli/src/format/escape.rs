//! What may reach an operator's terminal as it is. Names, hostnames, OS fields, mount points,
//! labels and server messages come from agents and servers, and a control character
//! (`ESC]0;…BEL` retitles the window, `ESC[2J` clears it) or a format character (U+202E
//! reverses the text after it; zero-width characters hide text) in them would act on the
//! terminal instead of being shown.
//!
//! Human output escapes them: [`escape`] for one field (so a newline cannot forge a line of a
//! table either), [`terminal_safe`] for a whole rendered block, whose own line breaks it keeps.
//! JSON output stays exact, and still never carries such a character raw: [`SafeJson`] writes
//! every non-printable character of a string as a `\uXXXX` escape, which any JSON reader
//! decodes to the same string.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io;

/// Unicode's format characters (general category Cf, Unicode 16), as inclusive ranges.
const FORMAT_CHARS: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),
    ('\u{0600}', '\u{0605}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{06DD}', '\u{06DD}'),
    ('\u{070F}', '\u{070F}'),
    ('\u{0890}', '\u{0891}'),
    ('\u{08E2}', '\u{08E2}'),
    ('\u{180E}', '\u{180E}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFF9}', '\u{FFFB}'),
    ('\u{110BD}', '\u{110BD}'),
    ('\u{110CD}', '\u{110CD}'),
    ('\u{13430}', '\u{1343F}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0001}', '\u{E0001}'),
    ('\u{E0020}', '\u{E007F}'),
];

/// Whether `c` may reach a terminal as it is: not a control character (Cc, C0 and C1 and DEL),
/// not a format character (Cf), not a line or paragraph separator (U+2028, U+2029).
pub fn is_printable(c: char) -> bool {
    !(c.is_control()
        || c == '\u{2028}'
        || c == '\u{2029}'
        || FORMAT_CHARS
            .iter()
            .any(|&(first, last)| (first..=last).contains(&c)))
}

/// `text` with every character that is not [`is_printable`] written as an escape: `\n`, `\r`,
/// `\t`, else `\u{…}` with its code point in hex. Printable text is returned as it is.
pub fn escape(text: &str) -> Cow<'_, str> {
    escape_except(text, None)
}

/// [`escape`], keeping line feeds: for a whole block of rendered output, whose lines are the
/// renderer's own (every field in it went through [`escape`]).
pub fn terminal_safe(text: &str) -> Cow<'_, str> {
    escape_except(text, Some('\n'))
}

fn escape_except(text: &str, keep: Option<char>) -> Cow<'_, str> {
    let shown = |c: char| is_printable(c) || Some(c) == keep;
    if text.chars().all(shown) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if shown(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
        }
    }
    Cow::Owned(out)
}

/// A `serde_json` formatter that writes like `F` (pretty or compact) but escapes every
/// non-printable character of a string as `\uXXXX` (a surrogate pair above U+FFFF). serde_json
/// escapes only C0 controls; DEL, C1 controls and format characters would go out raw.
pub struct SafeJson<F>(pub F);

impl<F: serde_json::ser::Formatter> serde_json::ser::Formatter for SafeJson<F> {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (idx, c) in fragment.char_indices() {
            if is_printable(c) {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..idx])?;
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            start = idx + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn begin_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.begin_array(writer)
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_array(writer)
    }

    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.0.begin_array_value(writer, first)
    }

    fn end_array_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_array_value(writer)
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.begin_object(writer)
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_object(writer)
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.0.begin_object_key(writer, first)
    }

    fn end_object_key<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_object_key(writer)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.begin_object_value(writer)
    }

    fn end_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_object_value(writer)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Strings an agent could send to take over a terminal.
    pub(crate) const NASTY: &[&str] = &[
        "\u{1b}]0;owned\u{7}",
        "\u{1b}[2J\u{1b}[H",
        "web\u{202e}1gnp.exe",
        "a\u{200b}b\u{feff}c",
        "\u{9b}31m",
        "line1\nline2\r\tend",
        "\u{7f}\u{2028}\u{e0041}",
    ];

    #[test]
    fn printable_text_is_kept_and_borrowed() {
        for text in [
            "web-1",
            "héllo wörld",
            "日本語",
            "C:\\Windows",
            "emoji 🚀",
            "",
        ] {
            assert!(
                matches!(escape(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
        }
    }

    #[test]
    fn control_and_format_characters_are_escaped() {
        assert_eq!(escape("\u{1b}]0;owned\u{7}"), "\\u{1b}]0;owned\\u{7}");
        assert_eq!(escape("web\u{202e}1"), "web\\u{202e}1");
        assert_eq!(escape("a\nb\tc\r"), "a\\nb\\tc\\r");
        assert_eq!(terminal_safe("a\nb\u{1b}[2J\n"), "a\nb\\u{1b}[2J\n");
        for text in NASTY {
            let shown = escape(text);
            assert!(shown.chars().all(is_printable), "{shown:?}");
            assert!(
                terminal_safe(text)
                    .chars()
                    .all(|c| is_printable(c) || c == '\n')
            );
        }
    }

    #[test]
    fn json_is_exact_and_carries_no_raw_non_printable_character() {
        let value = serde_json::json!({ "names": NASTY, "plain": "héllo 🚀" });
        for pretty in [true, false] {
            let mut out = Vec::new();
            if pretty {
                let formatter = SafeJson(serde_json::ser::PrettyFormatter::new());
                let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
                serde::Serialize::serialize(&value, &mut ser).expect("serializes");
            } else {
                let formatter = SafeJson(serde_json::ser::CompactFormatter);
                let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
                serde::Serialize::serialize(&value, &mut ser).expect("serializes");
            }
            let text = String::from_utf8(out).expect("utf-8");
            assert!(text.chars().all(|c| is_printable(c) || c == '\n'), "{text}");
            let back: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
            assert_eq!(back, value, "exact");
            assert_eq!(pretty, text.contains('\n'), "{text}");
        }
    }
}
