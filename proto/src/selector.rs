//! The label grammar of the contract: what a label key and value may hold, and the label
//! selector (`env=prod,tier!=db,gpu,!canary`) that `ListAgents`, `WatchAgents` and command
//! targets take.
//!
//! The server is the authority that applies a selector; clients parse it with the same code so a
//! typo is reported before a round trip, with the same words. One grammar, one implementation.

use std::collections::BTreeMap;
use std::fmt;

/// Longest label key, in bytes (a server may configure a smaller limit).
pub const MAX_LABEL_KEY_BYTES: usize = 253;

/// Whether `key` is a well-formed label key: 1–[`MAX_LABEL_KEY_BYTES`] bytes of ASCII letters,
/// digits and `-_./`, starting and ending with a letter or digit.
pub fn is_valid_label_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LABEL_KEY_BYTES
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
}

/// Whether `value` is a well-formed label value: empty, or ASCII letters, digits and `-_./:@`.
pub fn is_valid_label_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b':' | b'@'))
}

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Requirement {
    /// `k=v` (or `k==v`): the label is present with this value.
    Equals(String, String),
    /// `k!=v`: the label is absent or has another value.
    NotEquals(String, String),
    /// `k`: the label is present.
    Exists(String),
    /// `!k`: the label is absent.
    NotExists(String),
}

/// A parsed label selector: every requirement must hold. The empty selector selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    /// The requirements, in the order given.
    pub requirements: Vec<Requirement>,
}

/// Why a selector or a `key=value` label did not parse. The message names the offending term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorError(String);

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SelectorError {}

// === impl Selector ===

impl Selector {
    /// Parses `k=v,k==v,k!=v,k,!k`. Whitespace around terms and operators is ignored; an empty
    /// (or all-blank) string selects everything.
    ///
    /// # Errors
    ///
    /// [`SelectorError`] naming the first malformed term: an empty term (`a=1,,b`), or a key or
    /// value outside the label grammar ([`is_valid_label_key`], [`is_valid_label_value`]).
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let requirements = text
            .split(',')
            .map(|term| parse_requirement(term.trim()))
            .collect::<Result<_, _>>()?;
        Ok(Self { requirements })
    }

    /// Whether the selector has no requirements (selects everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

/// The normalised text of the selector (`env=prod,tier!=db,!canary`), which parses back to the
/// same selector.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (idx, requirement) in self.requirements.iter().enumerate() {
            if idx > 0 {
                f.write_str(",")?;
            }
            match requirement {
                Requirement::Equals(k, v) => write!(f, "{k}={v}")?,
                Requirement::NotEquals(k, v) => write!(f, "{k}!={v}")?,
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::NotExists(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

fn parse_requirement(term: &str) -> Result<Requirement, SelectorError> {
    let bad = |why: String| {
        SelectorError(format!(
            "invalid label selector term {:?}: {why} (expected `k=v`, `k!=v`, `k` or `!k`)",
            shorten(term)
        ))
    };
    if term.is_empty() {
        return Err(bad("empty term".to_owned()));
    }
    let (key, value, negated) = if let Some((k, v)) = term.split_once("!=") {
        (k.trim(), Some(v.trim()), true)
    } else if let Some((k, v)) = term.split_once('=') {
        // `k==v` is accepted, as kubectl does.
        let v = v.strip_prefix('=').unwrap_or(v);
        (k.trim(), Some(v.trim()), false)
    } else if let Some(k) = term.strip_prefix('!') {
        (k.trim(), None, true)
    } else {
        (term, None, false)
    };
    check_key(key).map_err(bad)?;
    if let Some(value) = value {
        check_value(value).map_err(bad)?;
    }
    Ok(match (value, negated) {
        (Some(v), false) => Requirement::Equals(key.to_owned(), v.to_owned()),
        (Some(v), true) => Requirement::NotEquals(key.to_owned(), v.to_owned()),
        (None, false) => Requirement::Exists(key.to_owned()),
        (None, true) => Requirement::NotExists(key.to_owned()),
    })
}

/// Parses one `key=value` label (as given to `--label`). The value may be empty (`k=`).
///
/// # Errors
///
/// [`SelectorError`] when there is no `=` or either side is outside the label grammar.
pub fn parse_label(text: &str) -> Result<(String, String), SelectorError> {
    let bad = |why: String| {
        SelectorError(format!(
            "invalid label {:?}: {why} (expected `key=value`)",
            shorten(text)
        ))
    };
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| bad("missing `=`".to_owned()))?;
    let (key, value) = (key.trim(), value.trim());
    check_key(key).map_err(bad)?;
    check_value(value).map_err(bad)?;
    Ok((key.to_owned(), value.to_owned()))
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        Err("empty key".to_owned())
    } else if is_valid_label_key(key) {
        Ok(())
    } else {
        Err(format!(
            "key {:?} is not 1-{MAX_LABEL_KEY_BYTES} letters, digits or '-_./' starting and \
             ending with a letter or digit",
            shorten(key)
        ))
    }
}

fn check_value(value: &str) -> Result<(), String> {
    if is_valid_label_value(value) {
        Ok(())
    } else {
        Err(format!(
            "value {:?} may hold only letters, digits and '-_./:@'",
            shorten(value)
        ))
    }
}

/// Caller-chosen text quoted in an error, cut to a length a message can carry.
fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(MAX).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reqs(text: &str) -> Vec<Requirement> {
        Selector::parse(text).expect("valid selector").requirements
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parses_every_requirement_kind() {
        assert_eq!(
            reqs("env=prod, tier != db ,gpu,!canary,zone==a"),
            vec![
                Requirement::Equals("env".into(), "prod".into()),
                Requirement::NotEquals("tier".into(), "db".into()),
                Requirement::Exists("gpu".into()),
                Requirement::NotExists("canary".into()),
                Requirement::Equals("zone".into(), "a".into()),
            ]
        );
    }

    #[test]
    fn display_normalises_and_parses_back() {
        let selector = Selector::parse(" env = prod , tier!=db, !canary,zone==a ").expect("valid");
        assert_eq!(selector.to_string(), "env=prod,tier!=db,!canary,zone=a");
        assert_eq!(
            Selector::parse(&selector.to_string()).expect("round trip"),
            selector
        );
        assert!(Selector::parse("  ").expect("blank selects all").is_empty());
    }

    #[test]
    fn empty_value_is_allowed() {
        assert_eq!(
            reqs("env="),
            vec![Requirement::Equals("env".into(), String::new())]
        );
    }

    #[test]
    fn rejects_malformed_terms_naming_them() {
        for bad in [
            "=prod",
            "env=prod,,tier=web",
            "!",
            "a=b=c",
            "a!=!b",
            "my key=v",
            "!=x",
            "-env=x",
            "env=a b",
            "env=\u{1b}[2J",
        ] {
            let err = Selector::parse(bad).expect_err(bad);
            assert!(err.to_string().contains("invalid label selector"), "{err}");
        }
        let long = "k".repeat(MAX_LABEL_KEY_BYTES + 1);
        assert!(Selector::parse(&long).is_err());
        let err = Selector::parse(&format!("{}=", "x!".repeat(500))).expect_err("long term");
        assert!(err.to_string().len() < 400, "message is bounded: {err}");
    }

    #[test]
    fn matches_applies_every_requirement() {
        let selector = Selector::parse("env=prod,tier!=db,gpu,!canary").expect("valid");
        assert!(selector.matches(&labels(&[("env", "prod"), ("gpu", "")])));
        assert!(selector.matches(&labels(&[("env", "prod"), ("gpu", "1"), ("tier", "web")])));
        assert!(!selector.matches(&labels(&[("env", "prod"), ("gpu", "1"), ("tier", "db")])));
        assert!(!selector.matches(&labels(&[("env", "prod"), ("gpu", "1"), ("canary", "")])));
        assert!(!selector.matches(&labels(&[("env", "dev"), ("gpu", "1")])));
        assert!(!selector.matches(&labels(&[("env", "prod")])));
        assert!(Selector::default().matches(&labels(&[])));
    }

    #[test]
    fn label_flags_parse() {
        assert_eq!(
            parse_label("env=prod").expect("valid"),
            ("env".into(), "prod".into())
        );
        assert_eq!(
            parse_label(" note = ").expect("valid"),
            ("note".into(), String::new())
        );
        for bad in ["env", "=prod", "a=b,c=d", "a=\u{7}"] {
            assert!(parse_label(bad).is_err(), "{bad}");
        }
    }
}
