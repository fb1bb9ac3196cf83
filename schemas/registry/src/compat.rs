//! Compatibility levels and the check itself (Avro schema resolution rules).

use std::fmt;
use std::str::FromStr;

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;

use crate::store::StoreError;

/// A Confluent compatibility level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    /// No check.
    None,
    /// The new schema can read data written with the latest one.
    Backward,
    /// The new schema can read data written with every earlier one.
    BackwardTransitive,
    /// The latest schema can read data written with the new one.
    Forward,
    /// Every earlier schema can read data written with the new one.
    ForwardTransitive,
    /// Backward and forward against the latest.
    Full,
    /// Backward and forward against every earlier one.
    FullTransitive,
}

impl Level {
    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "NONE",
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Whether every earlier version is checked, not only the latest.
    pub fn transitive(self) -> bool {
        matches!(
            self,
            Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive
        )
    }

    /// Checks `new` against one earlier schema; `Err` says why it is incompatible.
    pub fn check(self, new: &Schema, earlier: &Schema) -> Result<(), String> {
        let backward = matches!(
            self,
            Level::Backward | Level::BackwardTransitive | Level::Full | Level::FullTransitive
        );
        let forward = matches!(
            self,
            Level::Forward | Level::ForwardTransitive | Level::Full | Level::FullTransitive
        );
        if backward {
            SchemaCompatibility::can_read(earlier, new).map_err(|e| {
                format!("new schema cannot read data written by an earlier one: {e}")
            })?;
        }
        if forward {
            SchemaCompatibility::can_read(new, earlier).map_err(|e| {
                format!("an earlier schema cannot read data written by the new one: {e}")
            })?;
        }
        Ok(())
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "NONE" => Level::None,
            "BACKWARD" => Level::Backward,
            "BACKWARD_TRANSITIVE" => Level::BackwardTransitive,
            "FORWARD" => Level::Forward,
            "FORWARD_TRANSITIVE" => Level::ForwardTransitive,
            "FULL" => Level::Full,
            "FULL_TRANSITIVE" => Level::FullTransitive,
            _ => return Err(StoreError::InvalidLevel(s.to_owned())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"R","fields":[{fields}]}}"#
        ))
        .expect("test schema")
    }

    #[test]
    fn adding_optional_field_with_default_is_backward_and_forward_compatible() {
        let v1 = schema(r#"{"name":"a","type":"long"}"#);
        let v2 = schema(
            r#"{"name":"a","type":"long"},{"name":"b","type":["null","string"],"default":null}"#,
        );
        assert!(Level::Backward.check(&v2, &v1).is_ok());
        assert!(Level::Forward.check(&v2, &v1).is_ok());
        assert!(Level::Full.check(&v2, &v1).is_ok());
    }

    #[test]
    fn adding_required_field_breaks_backward_but_not_forward() {
        let v1 = schema(r#"{"name":"a","type":"long"}"#);
        let v2 = schema(r#"{"name":"a","type":"long"},{"name":"b","type":"string"}"#);
        assert!(Level::Backward.check(&v2, &v1).is_err());
        assert!(Level::Forward.check(&v2, &v1).is_ok());
        assert!(Level::Full.check(&v2, &v1).is_err());
        assert!(Level::None.check(&v2, &v1).is_ok());
    }

    #[test]
    fn removing_field_without_default_breaks_forward() {
        let v1 = schema(r#"{"name":"a","type":"long"},{"name":"b","type":"string"}"#);
        let v2 = schema(r#"{"name":"a","type":"long"}"#);
        assert!(Level::Backward.check(&v2, &v1).is_ok());
        assert!(Level::Forward.check(&v2, &v1).is_err());
    }

    #[test]
    fn changing_a_type_incompatibly_is_rejected() {
        let v1 = schema(r#"{"name":"a","type":"string"}"#);
        let v2 = schema(r#"{"name":"a","type":"long"}"#);
        assert!(Level::Backward.check(&v2, &v1).is_err());
        // int -> long promotion is allowed for readers.
        let i = schema(r#"{"name":"a","type":"int"}"#);
        let l = schema(r#"{"name":"a","type":"long"}"#);
        assert!(Level::Backward.check(&l, &i).is_ok());
        assert!(Level::Forward.check(&l, &i).is_err());
    }

    #[test]
    fn levels_parse_case_insensitively_and_reject_garbage() {
        assert_eq!(
            "full_transitive".parse::<Level>().ok(),
            Some(Level::FullTransitive)
        );
        assert!(Level::FullTransitive.transitive());
        assert!(!Level::Backward.transitive());
        assert!("SIDEWAYS".parse::<Level>().is_err());
    }
}
