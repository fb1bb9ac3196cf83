//! Deterministic identifiers: the same input always yields the same UUID, so a replayed
//! record, window or alert carries the same `event_id` and downstream de-duplication works.

use uuid::Uuid;

/// Namespace for fleetstream's v5 UUIDs.
const NAMESPACE: Uuid = Uuid::from_u128(0x6f1e_e75e_a7b3_4c1e_9d0a_f1ee_7572_ea40);

/// A v5 UUID (as a lowercase hyphenated string) derived from `parts` joined by `\u{1f}`.
///
/// ```
/// let a = fleet_schemas::ids::derived_id(&["VEH-1", "1698765432000"]);
/// assert_eq!(a, fleet_schemas::ids::derived_id(&["VEH-1", "1698765432000"]));
/// assert_ne!(a, fleet_schemas::ids::derived_id(&["VEH-1", "1698765432001"]));
/// ```
pub fn derived_id(parts: &[&str]) -> String {
    let mut buf = String::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            buf.push('\u{1f}');
        }
        buf.push_str(p);
    }
    Uuid::new_v5(&NAMESPACE, buf.as_bytes()).to_string()
}

/// A random v4 UUID string.
pub fn random_id() -> String {
    Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separator_prevents_ambiguous_joins() {
        assert_ne!(derived_id(&["ab", "c"]), derived_id(&["a", "bc"]));
        assert_eq!(derived_id(&["x"]).len(), 36);
    }
}
