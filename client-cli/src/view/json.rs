//! How the views write times, durations and bytes in JSON, for `#[serde(with = …)]`.

/// Serializes `Option<SystemTime>` as an RFC 3339 string (UTC, whole seconds) or `null` (also
/// for a time outside the years 0001–9999, which RFC 3339 cannot write).
pub(super) mod rfc3339 {
    use std::time::SystemTime;

    #[allow(
        clippy::ref_option,
        reason = "serde's `with` passes a reference to the field"
    )]
    pub(in crate::view) fn serialize<S: serde::Serializer>(
        time: &Option<SystemTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match time.and_then(crate::format::rfc3339) {
            Some(text) => serializer.serialize_str(&text),
            None => serializer.serialize_none(),
        }
    }
}

/// Serializes `Option<Duration>` as a number of seconds or `null`.
pub(super) mod seconds {
    use std::time::Duration;

    #[allow(
        clippy::ref_option,
        reason = "serde's `with` passes a reference to the field"
    )]
    pub(in crate::view) fn serialize<S: serde::Serializer>(
        duration: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            Some(d) => serializer.serialize_f64(d.as_secs_f64()),
            None => serializer.serialize_none(),
        }
    }
}

/// Serializes a measured `f64` (a percentage, a load, a rate) rounded to two decimals:
/// `99.15`, not `99.14615631103516`. The agents' figures are not that precise, and averages
/// would otherwise print every digit of their division.
pub(super) mod rounded {
    /// Decimals kept.
    const SCALE: f64 = 100.0;

    /// `value` to two decimals; non-finite values unchanged (serde_json writes them as null).
    pub(in crate::view) fn round(value: f64) -> f64 {
        if value.is_finite() {
            (value * SCALE).round() / SCALE
        } else {
            value
        }
    }

    #[allow(
        clippy::trivially_copy_pass_by_ref,
        reason = "serde's `with` passes a reference to the field"
    )]
    pub(in crate::view) fn serialize<S: serde::Serializer>(
        value: &f64,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(round(*value))
    }
}

/// Serializes bytes as a lowercase hex string.
pub(super) mod hex_bytes {
    #[allow(
        clippy::ptr_arg,
        reason = "serde's `with` passes a reference to the field"
    )]
    pub(in crate::view) fn serialize<S: serde::Serializer>(
        bytes: &Vec<u8>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }
}
