//! Local parsing of label arguments: label selectors (`-l env=prod,tier!=db,gpu,!canary`) and
//! `--label k=v` flags, with the contract's one grammar (`tether_proto::selector`).
//!
//! The server is the authority on selectors; checking them here as well turns a typo into an
//! immediate, precise message instead of a round trip, and normalises spacing before sending.

use std::collections::BTreeMap;

use tether_proto::selector::{self, Selector};

use crate::CliError;

/// Parses a `-l` selector (see [`Selector::parse`]).
///
/// # Errors
///
/// [`CliError::Usage`] naming the malformed term.
pub fn parse_selector(text: &str) -> Result<Selector, CliError> {
    Selector::parse(text).map_err(|e| CliError::Usage(e.to_string()))
}

/// Parses repeated `--label k=v` flags into a map.
///
/// # Errors
///
/// [`CliError::Usage`] for a flag outside the label grammar or a key given twice.
pub fn parse_labels<S: AsRef<str>>(flags: &[S]) -> Result<BTreeMap<String, String>, CliError> {
    let mut labels = BTreeMap::new();
    for flag in flags {
        let (key, value) =
            selector::parse_label(flag.as_ref()).map_err(|e| CliError::Usage(e.to_string()))?;
        if labels.contains_key(&key) {
            return Err(CliError::Usage(format!(
                "label `{key}` given more than once"
            )));
        }
        labels.insert(key, value);
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_errors_are_usage_errors() {
        let err = parse_selector("env=prod,,tier=web").expect_err("empty term");
        assert!(matches!(err, CliError::Usage(_)), "{err}");
        assert_eq!(
            parse_selector(" env = prod ").expect("valid").to_string(),
            "env=prod"
        );
    }

    #[test]
    fn label_flags() {
        let labels = parse_labels(&["env=prod", "tier=web"]).expect("valid");
        assert_eq!(labels.len(), 2);
        assert_eq!(labels["tier"], "web");
        let dup = parse_labels(&["env=prod", "env=dev"]).expect_err("duplicate");
        assert!(dup.to_string().contains("more than once"), "{dup}");
        let bad = parse_labels(&["env"]).expect_err("no =");
        assert!(matches!(bad, CliError::Usage(_)), "{bad}");
    }
}
