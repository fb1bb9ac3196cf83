//! MQTT topic layout: `{prefix}/{vehicle_id}/{telemetry|emergency|delivery}`.

use crate::Kind;

/// A topic that does not follow the layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic {topic:?} is not {prefix}/{{vehicle}}/{{telemetry|emergency|delivery}}")]
pub struct TopicError {
    /// The offending topic.
    pub topic: String,
    /// The configured prefix.
    pub prefix: String,
}

/// Vehicle ids: 1 to 64 characters of `[A-Za-z0-9_.:-]` (no MQTT wildcards or separators).
pub fn valid_vehicle_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// Splits `topic` into the vehicle id and the kind. `prefix` may itself contain `/`.
///
/// ```
/// use fleet_ingest::{Kind, parse_topic};
/// assert_eq!(parse_topic("vehicle", "vehicle/VEH-1/emergency").unwrap(), ("VEH-1", Kind::Emergency));
/// assert!(parse_topic("vehicle", "vehicle/VEH-1/commands").is_err());
/// ```
pub fn parse_topic<'t>(prefix: &str, topic: &'t str) -> Result<(&'t str, Kind), TopicError> {
    let err = || TopicError {
        topic: topic.to_owned(),
        prefix: prefix.to_owned(),
    };
    let rest = topic
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(err)?;
    let (vehicle, kind) = rest.split_once('/').ok_or_else(err)?;
    let kind = Kind::from_segment(kind).ok_or_else(err)?;
    if !valid_vehicle_id(vehicle) {
        return Err(err());
    }
    Ok((vehicle, kind))
}
