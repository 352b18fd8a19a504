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
