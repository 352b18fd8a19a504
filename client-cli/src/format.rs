//! Text formatting for people and for spreadsheets: relative times, byte sizes, aligned tables
//! and CSV, and what may reach a terminal (`escape`: control and format characters in what
//! agents and servers send are shown escaped, never acted on).
//!
//! Everything here is a pure function of its inputs (the current time is a parameter), so the
//! exact output is unit-tested. Nothing here panics on any value: times outside the years
//! 0001–9999 (which RFC 3339 cannot write) read as absent.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::time::{Duration, SystemTime};

mod escape;

#[cfg(test)]
pub(crate) use escape::tests::NASTY;
pub use escape::{SafeJson, escape, is_printable, terminal_safe};

/// Spaces between table columns (kubectl's habit).
const COLUMN_GAP: usize = 3;

/// Placeholder for a value that is absent.
pub const NONE: &str = "-";

/// Describes `then` relative to `now`: "12s ago", "3m ago", "2h ago", "5d ago"; a time in the
/// future (an expiry, or clock skew) reads "in 4s". Rounded to the nearest unit
/// ([`short_duration`]), so a token created for 24 hours reads "in 24h", not "in 23h".
pub fn relative_time(now: SystemTime, then: SystemTime) -> String {
    match now.duration_since(then) {
        Ok(ago) => format!("{} ago", short_duration(ago)),
        Err(err) => format!("in {}", short_duration(err.duration())),
    }
}

/// [`relative_time`] for an optional time; absent times read "never".
pub fn relative_time_opt(now: SystemTime, then: Option<SystemTime>) -> String {
    then.map_or_else(|| "never".to_owned(), |then| relative_time(now, then))
}

/// [`relative_time_opt`] followed by the exact time: "3m ago (2024-05-01T10:00:00Z)"; absent
/// times read "never".
pub fn relative_time_detail(now: SystemTime, then: Option<SystemTime>) -> String {
    match then {
        Some(_) => format!("{} ({})", relative_time_opt(now, then), rfc3339_opt(then)),
        None => "never".to_owned(),
    }
}

/// A duration in one unit, rounded to the nearest: "12s", "3m", "2h", "5d". Hours go up to
/// 47 (as kubectl shows them), so a day and a half reads "36h", not "1d".
pub fn short_duration(d: Duration) -> String {
    let ms = d.as_millis();
    let nearest = |unit_ms: u128| (ms + unit_ms / 2) / unit_ms;
    let (secs, mins, hours) = (nearest(1_000), nearest(60_000), nearest(3_600_000));
    if secs < 60 {
        format!("{secs}s")
    } else if mins < 60 {
        format!("{mins}m")
    } else if hours < 48 {
        format!("{hours}h")
    } else {
        format!("{}d", nearest(86_400_000))
    }
}

/// A duration in up to two units, for uptimes and intervals: "45s", "5m 3s", "2h 10m", "3d 4h".
pub fn long_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) if s == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) if m == 0 => format!("{h}h"),
        (0, _, _) => format!("{h}h {m}m"),
        _ if h == 0 => format!("{d}d"),
        _ => format!("{d}d {h}h"),
    }
}

/// How long a command ran: tenths of a second below a minute ("0.3s", "12.4s"), then as
/// [`long_duration`] ("5m 3s").
pub fn elapsed(d: Duration) -> String {
    if d < Duration::from_secs(60) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        long_duration(d)
    }
}

/// A byte count with binary units and one decimal: "512 B", "1.5 KiB", "3.2 GiB".
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    #[allow(clippy::cast_precision_loss, reason = "one decimal is shown")]
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A byte rate: "1.5 KiB/s".
pub fn format_rate(bytes_per_second: f64) -> String {
    if !bytes_per_second.is_finite() || bytes_per_second <= 0.0 {
        return "0 B/s".to_owned();
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "positive and finite, checked above; sub-byte precision is not shown"
    )]
    let bytes = bytes_per_second.round() as u64;
    format!("{}/s", format_bytes(bytes))
}

/// A percentage with one decimal: "12.5%".
pub fn format_percent(percent: f64) -> String {
    format!("{percent:.1}%")
}

/// `used` as a whole percentage of `total`: "43%", or [`NONE`] when `total` is zero.
pub fn usage_percent(used: u64, total: u64) -> String {
    if total == 0 {
        return NONE.to_owned();
    }
    #[allow(clippy::cast_precision_loss, reason = "a rounded percentage is shown")]
    let percent = used as f64 * 100.0 / total as f64;
    format!("{percent:.0}%")
}

/// Seconds from the Unix epoch to 0001-01-01T00:00:00Z, the earliest time [`rfc3339`] writes.
const FIRST_RFC3339_SECOND: i64 = -62_135_596_800;
/// Seconds from the Unix epoch to 9999-12-31T23:59:59Z, the latest time [`rfc3339`] writes.
const LAST_RFC3339_SECOND: i64 = 253_402_300_799;

/// `time` as an RFC 3339 UTC timestamp with whole seconds (rounded down), e.g.
/// `2024-05-01T10:00:00Z`; `None` outside the years 0001–9999, which the format cannot write.
pub fn rfc3339(time: SystemTime) -> Option<String> {
    let secs = match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).ok()?,
        Err(before) => {
            let before = before.duration();
            let whole = i64::try_from(before.as_secs()).ok()?;
            -whole - i64::from(before.subsec_nanos() > 0)
        }
    };
    if !(FIRST_RFC3339_SECOND..=LAST_RFC3339_SECOND).contains(&secs) {
        return None;
    }
    let (days, second_of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3_600,
        second_of_day / 60 % 60,
        second_of_day % 60
    ))
}

/// Whether [`rfc3339`] can write `time`.
pub fn is_rfc3339_time(time: SystemTime) -> bool {
    rfc3339(time).is_some()
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// An RFC 3339 UTC timestamp with whole seconds, or [`NONE`].
pub fn rfc3339_opt(time: Option<SystemTime>) -> String {
    time.and_then(rfc3339).unwrap_or_else(|| NONE.to_owned())
}

/// An RFC 3339 UTC timestamp with whole seconds for a CSV field, or an empty field.
pub fn csv_time(time: Option<SystemTime>) -> String {
    time.and_then(rfc3339).unwrap_or_default()
}

/// `text`, or [`NONE`] when it is empty.
pub fn or_none(text: &str) -> String {
    if text.is_empty() {
        NONE.to_owned()
    } else {
        text.to_owned()
    }
}

/// `text` with control characters escaped (`\n`, `\t`, `\u{1b}`, …), and the Unicode marks that
/// reorder text, for what others chose (agent names, reasons) shown in a table or a prefix: it
/// cannot move the cursor, recolour the terminal or break a row.
pub fn escape_control(text: &str) -> String {
    let reorders = |c: char| matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(|c| c.is_control() || reorders(c)) {
        return text.to_owned();
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() || reorders(c) {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    escaped
}

/// Labels as `k=v,k2=v2`, in key order; empty when there are none.
pub fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Every line of `text` indented by `n` spaces, each ending in a newline.
pub fn indent(text: &str, n: usize) -> String {
    text.lines().map(|l| format!("{:n$}{l}\n", "")).collect()
}

/// How a table column is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text columns.
    Left,
    /// Numeric columns.
    Right,
}

/// An aligned text table: a header row and data rows, columns separated by three spaces, no
/// trailing whitespace.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    /// Whether [`Table::render`] writes the header row (`--no-headers` leaves it out).
    show_headers: bool,
    aligns: Vec<Align>,
    rows: Vec<Vec<String>>,
}

// === impl Table ===

impl Table {
    /// A table with these column headers, all left-aligned.
    pub fn new<I, S>(headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let headers: Vec<String> = headers.into_iter().map(Into::into).collect();
        let aligns = vec![Align::Left; headers.len()];
        Self {
            headers,
            show_headers: true,
            aligns,
            rows: Vec::new(),
        }
    }

    /// Whether to write the header row; columns are as wide as their cells either way.
    #[must_use]
    pub fn headers(mut self, show: bool) -> Self {
        self.show_headers = show;
        self
    }

    /// Right-aligns the column at `idx` (for numbers).
    #[must_use]
    pub fn align_right(mut self, idx: usize) -> Self {
        if let Some(align) = self.aligns.get_mut(idx) {
            *align = Align::Right;
        }
        self
    }

    /// Appends a row, each cell [`escape`]d. Missing cells are blank; extra cells are ignored.
    pub fn push<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut row: Vec<String> = cells
            .into_iter()
            .map(|cell| {
                let cell: String = cell.into();
                escape(&cell).into_owned()
            })
            .collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    /// Whether the table has no data rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Renders the table, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let headers = self.show_headers.then_some(&self.headers);
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|col| {
                headers
                    .into_iter()
                    .chain(&self.rows)
                    .map(|row| display_width(&row[col]))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut text = String::new();
        for row in headers.into_iter().chain(&self.rows) {
            let mut line = String::new();
            for (col, cell) in row.iter().enumerate() {
                if col > 0 {
                    line.push_str(&" ".repeat(COLUMN_GAP));
                }
                let pad = widths[col] - display_width(cell);
                match self.aligns[col] {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&" ".repeat(pad));
                    }
                    Align::Right => {
                        line.push_str(&" ".repeat(pad));
                        line.push_str(cell);
                    }
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }

    /// Writes [`Table::render`] to `out`.
    ///
    /// # Errors
    ///
    /// Fails if writing to `out` fails.
    pub fn write(&self, out: &mut (dyn Write + Send)) -> std::io::Result<()> {
        out.write_all(self.render().as_bytes())
    }
}

/// Width of a cell on a terminal, counting characters (good enough without a width table).
fn display_width(text: &str) -> usize {
    text.chars().count()
}

/// Renders `pairs` as aligned "Key:  value" lines, each indented by `indent` spaces; values are
/// [`escape`]d.
pub fn key_values(indent: usize, pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut text = String::new();
    for (key, value) in pairs {
        let label = format!("{key}:");
        let value = escape(value);
        let line = format!("{:indent$}{label:<w$}{value}", "", w = width + 3);
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// Quotes one CSV field per RFC 4180: fields containing a comma, quote, CR or LF, or with
/// leading or trailing spaces, are wrapped in double quotes with inner quotes doubled. Like
/// every human output, a field's control and format characters are escaped
/// ([`terminal_safe`]); its line feeds stay, inside the quotes.
pub fn csv_field(field: &str) -> String {
    let field = terminal_safe(field);
    let needs_quotes =
        field.contains([',', '"', '\n', '\r']) || field.starts_with(' ') || field.ends_with(' ');
    if needs_quotes {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.into_owned()
    }
}

/// One CSV record: quoted fields joined by commas, ending in `\n`.
pub fn csv_record<I, S>(fields: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut line = String::new();
    for (idx, field) in fields.into_iter().enumerate() {
        if idx > 0 {
            line.push(',');
        }
        let _ = write!(line, "{}", csv_field(field.as_ref()));
    }
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn relative_times() {
        let now = at(1_000_000);
        assert_eq!(relative_time(now, now), "0s ago");
        assert_eq!(relative_time(now, at(1_000_000 - 12)), "12s ago");
        assert_eq!(relative_time(now, at(1_000_000 - 59)), "59s ago");
        assert_eq!(relative_time(now, at(1_000_000 - 60)), "1m ago");
        assert_eq!(relative_time(now, at(1_000_000 - 3 * 60 - 29)), "3m ago");
        assert_eq!(relative_time(now, at(1_000_000 - 3 * 60 - 59)), "4m ago");
        assert_eq!(relative_time(now, at(1_000_000 - 2 * 3_600)), "2h ago");
        assert_eq!(relative_time(now, at(1_000_000 - 86_399)), "24h ago");
        assert_eq!(relative_time(now, at(1_000_000 - 36 * 3_600)), "36h ago");
        assert_eq!(relative_time(now, at(1_000_000 - 5 * 86_400)), "5d ago");
        // A token created for 24 hours, read a moment later.
        let expires = now + Duration::from_secs(86_400) - Duration::from_millis(40);
        assert_eq!(relative_time(now, expires), "in 24h");
        assert_eq!(relative_time(now, at(1_000_004)), "in 4s");
        assert_eq!(relative_time_opt(now, None), "never");
    }

    #[test]
    fn relative_time_details() {
        let now = at(1_000);
        assert_eq!(
            relative_time_detail(now, Some(at(820))),
            "3m ago (1970-01-01T00:13:40Z)"
        );
        assert_eq!(relative_time_detail(now, None), "never");
    }

    #[test]
    fn small_text_helpers() {
        assert_eq!(csv_time(Some(at(60))), "1970-01-01T00:01:00Z");
        assert_eq!(csv_time(None), "");
        assert_eq!(or_none(""), "-");
        assert_eq!(or_none("web-1"), "web-1");
        let labels = BTreeMap::from([("tier".into(), "web".into()), ("env".into(), "prod".into())]);
        assert_eq!(labels_text(&labels), "env=prod,tier=web");
        assert_eq!(labels_text(&BTreeMap::new()), "");
        assert_eq!(indent("a\nb\n", 2), "  a\n  b\n");
    }

    #[test]
    fn rfc3339_covers_the_years_1_to_9999_and_nothing_else() {
        let epoch = SystemTime::UNIX_EPOCH;
        let secs = |s: u64| Duration::from_secs(s);
        assert_eq!(rfc3339(epoch).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(
            rfc3339(at(1_700_000_000) + Duration::from_millis(999)).as_deref(),
            Some("2023-11-14T22:13:20Z")
        );
        assert_eq!(
            rfc3339(at(951_782_400)).as_deref(),
            Some("2000-02-29T00:00:00Z"),
            "a leap day"
        );
        assert_eq!(
            rfc3339(epoch - Duration::from_millis(1)).as_deref(),
            Some("1969-12-31T23:59:59Z"),
            "rounded down"
        );
        assert_eq!(
            rfc3339(epoch - secs(2_208_988_800)).as_deref(),
            Some("1900-01-01T00:00:00Z")
        );
        let first = epoch - secs(62_135_596_800);
        assert_eq!(rfc3339(first).as_deref(), Some("0001-01-01T00:00:00Z"));
        assert_eq!(rfc3339(first - secs(1)), None);
        let last = epoch + secs(253_402_300_799);
        assert_eq!(rfc3339(last).as_deref(), Some("9999-12-31T23:59:59Z"));
        assert_eq!(rfc3339(last + secs(1)), None);
        assert_eq!(rfc3339_opt(Some(last + secs(1))), NONE);
        assert_eq!(csv_time(Some(first - secs(1))), "");
        // Far beyond, relative times still read.
        let far = epoch + secs(u64::from(u32::MAX) * 1_000);
        assert_eq!(relative_time(at(0), far), "in 49710270d");
        assert!(!is_rfc3339_time(far));
    }

    #[test]
    fn tables_and_key_values_escape_what_they_show() {
        let mut table = Table::new(["NAME", "OS"]);
        table.push(["\u{1b}]0;owned\u{7}", "linux\u{202e}"]);
        table.push(["two\nlines", "ok"]);
        let text = table.render();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.chars().all(|c| is_printable(c) || c == '\n'), "{text}");
        assert!(text.contains("\\u{1b}]0;owned\\u{7}"), "{text}");
        let text = key_values(0, &[("Host", "\u{1b}[2Jx\ny".into())]);
        assert_eq!(text, "Host:  \\u{1b}[2Jx\\ny\n");
    }

    #[test]
    fn sub_seconds_round_to_the_nearest_second() {
        let now = at(100);
        assert_eq!(
            relative_time(now, now - Duration::from_millis(999)),
            "1s ago"
        );
        assert_eq!(
            relative_time(now, now - Duration::from_millis(400)),
            "0s ago"
        );
    }

    #[test]
    fn long_durations() {
        assert_eq!(long_duration(Duration::from_secs(45)), "45s");
        assert_eq!(long_duration(Duration::from_secs(60)), "1m");
        assert_eq!(long_duration(Duration::from_secs(303)), "5m 3s");
        assert_eq!(long_duration(Duration::from_secs(7_800)), "2h 10m");
        assert_eq!(long_duration(Duration::from_secs(3_600)), "1h");
        assert_eq!(long_duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(
            long_duration(Duration::from_secs(3 * 86_400 + 4 * 3_600)),
            "3d 4h"
        );
    }

    #[test]
    fn elapsed_times() {
        assert_eq!(elapsed(Duration::from_millis(250)), "0.2s");
        assert_eq!(elapsed(Duration::from_millis(12_400)), "12.4s");
        assert_eq!(elapsed(Duration::from_secs(303)), "5m 3s");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_control("web-1"), "web-1");
        assert_eq!(escape_control("héllo wörld"), "héllo wörld");
        assert_eq!(escape_control("a\nb\tc"), "a\\nb\\tc");
        assert_eq!(
            escape_control("\u{1b}[31mred\u{1b}[0m"),
            "\\u{1b}[31mred\\u{1b}[0m"
        );
        assert_eq!(escape_control("\u{9b}x\u{7f}"), "\\u{9b}x\\u{7f}");
        assert_eq!(escape_control("abc\u{202e}fed"), "abc\\u{202e}fed");
    }

    #[test]
    fn bytes() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1024), "1.0 KiB");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(3_435_973_837), "3.2 GiB");
        assert_eq!(format_bytes(5 * 1024 * 1024 * 1024 * 1024), "5.0 TiB");
        assert_eq!(format_bytes(u64::MAX), "16.0 EiB");
        assert_eq!(format_rate(1536.0), "1.5 KiB/s");
        assert_eq!(format_rate(f64::NAN), "0 B/s");
    }

    #[test]
    fn percents() {
        assert_eq!(format_percent(12.345), "12.3%");
        assert_eq!(usage_percent(1, 4), "25%");
        assert_eq!(usage_percent(1, 0), "-");
    }

    #[test]
    fn table_aligns_columns() {
        let mut table = Table::new(["ID", "NAME", "CPU"]).align_right(2);
        table.push(["a-1", "web-1", "3.0%"]);
        table.push(["a-22", "db", "45.5%"]);
        assert_eq!(
            table.render(),
            "ID     NAME      CPU\n\
             a-1    web-1    3.0%\n\
             a-22   db      45.5%\n"
        );
    }

    #[test]
    fn table_has_no_trailing_whitespace_and_pads_missing_cells() {
        let mut table = Table::new(["A", "LONG HEADER"]);
        table.push(["x"]);
        table.push(["héllo", "y"]);
        let text = table.render();
        assert_eq!(text, "A       LONG HEADER\nx\nhéllo   y\n");
        assert!(text.lines().all(|l| l == l.trim_end()));
    }

    #[test]
    fn key_value_block() {
        let text = key_values(2, &[("ID", "a-1".into()), ("Last seen", "3s ago".into())]);
        assert_eq!(text, "  ID:         a-1\n  Last seen:  3s ago\n");
    }

    #[test]
    fn csv_quoting() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field(""), "");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("a\u{1b}[2J\tb"), "a\\u{1b}[2J\\tb");
        assert_eq!(csv_field(" padded"), "\" padded\"");
        assert_eq!(
            csv_record(["id", "env=prod,tier=web", "x"]),
            "id,\"env=prod,tier=web\",x\n"
        );
    }
}
