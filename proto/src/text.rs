//! Which characters a text field of the contract may carry, and the default sizes of the text
//! and lists an agent reports.
//!
//! Text the server accepts ends up in operators' terminals (tables, logs, `-o json` piped into
//! other tools), so it must not carry what a terminal or a text renderer interprets instead of
//! showing: Unicode control characters (general category Cc: ESC, BEL, NUL, the C1 controls)
//! and format characters (Cc's invisible sibling, Cf: bidirectional overrides such as U+202E,
//! zero-width spaces and joiners, the byte-order mark, tag characters). The server refuses such
//! text at its edge; agents leave it out of what they report.
//!
//! Cc is [`char::is_control`]. Cf has no function in `std`, so [`FORMAT_CHARS`] lists it: the
//! 21 ranges of Unicode 15.1's `DerivedGeneralCategory.txt`, checked against the Unicode
//! database when written. Unicode adds a Cf character every few releases; one missing here is
//! accepted as ordinary text until the table is updated, nothing worse.

/// Default longest text field an agent reports about its machine (host name, OS, kernel, CPU
/// model, hardware id, agent version) and longest mount point, in bytes.
pub const MAX_REPORTED_TEXT_BYTES: usize = 256;

/// Default most disks (mounted filesystems) in one metrics sample.
pub const MAX_DISKS_PER_SAMPLE: usize = 64;

/// Unicode general category Cf (format), as inclusive ranges, in order (Unicode 15.1).
pub const FORMAT_CHARS: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),   // soft hyphen
    ('\u{0600}', '\u{0605}'),   // Arabic number signs
    ('\u{061C}', '\u{061C}'),   // Arabic letter mark
    ('\u{06DD}', '\u{06DD}'),   // Arabic end of ayah
    ('\u{070F}', '\u{070F}'),   // Syriac abbreviation mark
    ('\u{0890}', '\u{0891}'),   // Arabic pound and piastre marks above
    ('\u{08E2}', '\u{08E2}'),   // Arabic disputed end of ayah
    ('\u{180E}', '\u{180E}'),   // Mongolian vowel separator
    ('\u{200B}', '\u{200F}'),   // zero-width space, joiners, LRM, RLM
    ('\u{202A}', '\u{202E}'),   // bidirectional embeddings and overrides
    ('\u{2060}', '\u{2064}'),   // word joiner, invisible operators
    ('\u{2066}', '\u{206F}'),   // bidirectional isolates, deprecated format controls
    ('\u{FEFF}', '\u{FEFF}'),   // zero-width no-break space (byte-order mark)
    ('\u{FFF9}', '\u{FFFB}'),   // interlinear annotation controls
    ('\u{110BD}', '\u{110BD}'), // Kaithi number sign
    ('\u{110CD}', '\u{110CD}'), // Kaithi number sign above
    ('\u{13430}', '\u{1343F}'), // Egyptian hieroglyph format controls
    ('\u{1BCA0}', '\u{1BCA3}'), // shorthand format controls
    ('\u{1D173}', '\u{1D17A}'), // musical symbol beam and phrase controls
    ('\u{E0001}', '\u{E0001}'), // language tag
    ('\u{E0020}', '\u{E007F}'), // tag characters
];

/// Whether `c` is a format character (general category Cf).
pub fn is_format(c: char) -> bool {
    FORMAT_CHARS
        .binary_search_by(|&(low, high)| {
            if high < c {
                std::cmp::Ordering::Less
            } else if low > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Whether `c` may not appear in a text field: a control (Cc) or format (Cf) character.
pub fn is_forbidden(c: char) -> bool {
    c.is_control() || is_format(c)
}

/// The first forbidden character of `text` and its byte offset, if any.
pub fn first_forbidden(text: &str) -> Option<(usize, char)> {
    text.char_indices().find(|&(_, c)| is_forbidden(c))
}

/// `text` without its forbidden characters and cut to at most `max_bytes` on a character
/// boundary: what an agent reports of a string it read from its machine.
pub fn clean(text: &str, max_bytes: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_bytes));
    for c in text.chars().filter(|&c| !is_forbidden(c)) {
        if out.len() + c.len_utf8() > max_bytes {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_disjoint() {
        for pair in FORMAT_CHARS.windows(2) {
            assert!(pair[0].0 <= pair[0].1 && pair[0].1 < pair[1].0, "{pair:?}");
        }
        let n: u32 = FORMAT_CHARS
            .iter()
            .map(|&(low, high)| u32::from(high) - u32::from(low) + 1)
            .sum();
        // Unicode 15.1 has 170 characters in Cf.
        assert_eq!(n, 170);
    }

    #[test]
    fn controls_and_formats_are_forbidden() {
        for c in [
            '\u{1B}',
            '\u{7}',
            '\0',
            '\n',
            '\u{7F}',
            '\u{9B}',
            '\u{202E}',
            '\u{200B}',
            '\u{FEFF}',
            '\u{2066}',
            '\u{E0041}',
            '\u{00AD}',
        ] {
            assert!(is_forbidden(c), "{:?}", c);
        }
        for c in ['a', ' ', 'é', '中', '\u{2028}', '\u{1F600}', '-', '/'] {
            assert!(!is_forbidden(c), "{:?}", c);
        }
        assert_eq!(first_forbidden("ok\u{1b}]0;x\u{7}"), Some((2, '\u{1b}')));
        assert_eq!(first_forbidden("fine"), None);
    }

    #[test]
    fn clean_drops_forbidden_and_cuts_on_a_boundary() {
        assert_eq!(clean("a\u{1b}[2Jb\u{202E}c", 100), "a[2Jbc");
        assert_eq!(clean("ééé", 5), "éé");
        assert_eq!(clean("abc", 0), "");
    }
}
