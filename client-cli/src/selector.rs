//! Local parsing of label arguments: label selectors (`-l env=prod,tier!=db,gpu,!canary`) and
//! `--label k=v` flags.
//!
//! The server is the authority on selectors; checking them here as well turns a typo into an
//! immediate, precise message instead of a round trip, and normalises spacing before sending.

use std::collections::BTreeMap;
use std::fmt;

use crate::CliError;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `k=v`: the label is present with this value.
    Equals(String, String),
    /// `k!=v`: the label is absent or has another value.
    NotEquals(String, String),
    /// `k`: the label is present.
    Exists(String),
    /// `!k`: the label is absent.
    NotExists(String),
}

/// A parsed label selector: requirements that must all hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// The requirements, in the order given.
    pub requirements: Vec<Requirement>,
}

// === impl LabelSelector ===

impl LabelSelector {
    /// Parses a comma-separated selector. Spaces around requirements and operators are ignored;
    /// an empty string selects everything.
    ///
    /// # Errors
    ///
    /// [`CliError::Usage`] naming the offending requirement when a key is empty, a key or value
    /// contains a character that cannot belong to it, or a requirement is empty (`a=1,,b`).
    pub fn parse(text: &str) -> Result<Self, CliError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Self::default());
        }
        let requirements = text
            .split(',')
            .map(|part| parse_requirement(part.trim()))
            .collect::<Result<_, _>>()?;
        Ok(Self { requirements })
    }

    /// Whether the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (idx, req) in self.requirements.iter().enumerate() {
            if idx > 0 {
                f.write_str(",")?;
            }
            match req {
                Requirement::Equals(k, v) => write!(f, "{k}={v}")?,
                Requirement::NotEquals(k, v) => write!(f, "{k}!={v}")?,
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::NotExists(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

fn parse_requirement(part: &str) -> Result<Requirement, CliError> {
    let bad = |why: &str| {
        CliError::Usage(format!(
            "invalid label selector requirement `{part}`: {why} (expected `k=v`, `k!=v`, `k` or `!k`)"
        ))
    };
    if part.is_empty() {
        return Err(bad("empty requirement"));
    }
    let (key, value, negated) = if let Some((k, v)) = part.split_once("!=") {
        (k.trim(), Some(v.trim()), true)
    } else if let Some((k, v)) = part.split_once('=') {
        let v = v.strip_prefix('=').unwrap_or(v); // accept `k==v` as kubectl does
        (k.trim(), Some(v.trim()), false)
    } else if let Some(k) = part.strip_prefix('!') {
        (k.trim(), None, true)
    } else {
        (part, None, false)
    };
    check_key(key).map_err(|why| bad(&why))?;
    if let Some(value) = value {
        check_value(value).map_err(|why| bad(&why))?;
    }
    Ok(match (value, negated) {
        (Some(v), false) => Requirement::Equals(key.to_owned(), v.to_owned()),
        (Some(v), true) => Requirement::NotEquals(key.to_owned(), v.to_owned()),
        (None, false) => Requirement::Exists(key.to_owned()),
        (None, true) => Requirement::NotExists(key.to_owned()),
    })
}

/// Parses one `--label k=v` flag. The value may be empty (`k=`); the key may not.
///
/// # Errors
///
/// [`CliError::Usage`] when there is no `=`, the key is empty, or either side contains a
/// character a label cannot hold.
pub fn parse_label(text: &str) -> Result<(String, String), CliError> {
    let bad = |why: &str| {
        CliError::Usage(format!(
            "invalid label `{text}`: {why} (expected `key=value`)"
        ))
    };
    let (key, value) = text.split_once('=').ok_or_else(|| bad("missing `=`"))?;
    let (key, value) = (key.trim(), value.trim());
    check_key(key).map_err(|why| bad(&why))?;
    check_value(value).map_err(|why| bad(&why))?;
    Ok((key.to_owned(), value.to_owned()))
}

/// Parses repeated `--label k=v` flags into a map.
///
/// # Errors
///
/// As [`parse_label`], plus [`CliError::Usage`] when a key is given twice.
pub fn parse_labels<S: AsRef<str>>(flags: &[S]) -> Result<BTreeMap<String, String>, CliError> {
    let mut labels = BTreeMap::new();
    for flag in flags {
        let (key, value) = parse_label(flag.as_ref())?;
        if labels.contains_key(&key) {
            return Err(CliError::Usage(format!(
                "label `{key}` given more than once"
            )));
        }
        labels.insert(key, value);
    }
    Ok(labels)
}

/// Characters that separate requirements or are operators can never be part of a key.
fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("empty key".to_owned());
    }
    if let Some(c) = key
        .chars()
        .find(|c| matches!(c, ',' | '=' | '!') || c.is_whitespace())
    {
        return Err(format!("key contains `{c}`"));
    }
    Ok(())
}

fn check_value(value: &str) -> Result<(), String> {
    if let Some(c) = value
        .chars()
        .find(|c| matches!(c, ',' | '=' | '!') || c.is_control())
    {
        return Err(format!("value contains `{}`", c.escape_default()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reqs(text: &str) -> Vec<Requirement> {
        LabelSelector::parse(text)
            .expect("valid selector")
            .requirements
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
    fn normalises_when_displayed() {
        let selector = LabelSelector::parse(" env = prod , tier!=db, !canary ").expect("valid");
        assert_eq!(selector.to_string(), "env=prod,tier!=db,!canary");
        assert!(
            LabelSelector::parse("  ")
                .expect("empty is valid")
                .is_empty()
        );
    }

    #[test]
    fn empty_value_is_allowed() {
        assert_eq!(
            reqs("env="),
            vec![Requirement::Equals("env".into(), String::new())]
        );
    }

    #[test]
    fn rejects_malformed_requirements() {
        for bad in [
            "=prod",
            "env=prod,,tier=web",
            "!",
            "a=b=c",
            "a!=!b",
            "my key=v",
            "!=x",
        ] {
            let err = LabelSelector::parse(bad).expect_err(bad);
            assert!(matches!(err, CliError::Usage(_)), "{bad}: {err}");
            assert!(err.to_string().contains("invalid label selector"), "{err}");
        }
    }

    #[test]
    fn label_flags() {
        assert_eq!(
            parse_label("env=prod").expect("valid"),
            ("env".into(), "prod".into())
        );
        assert_eq!(
            parse_label("note=").expect("valid"),
            ("note".into(), String::new())
        );
        assert!(parse_label("env").is_err());
        assert!(parse_label("=prod").is_err());
        assert!(parse_label("a=b,c=d").is_err());
        let labels = parse_labels(&["env=prod", "tier=web"]).expect("valid");
        assert_eq!(labels.len(), 2);
        assert_eq!(labels["tier"], "web");
        let dup = parse_labels(&["env=prod", "env=dev"]).expect_err("duplicate");
        assert!(dup.to_string().contains("more than once"), "{dup}");
    }
}
