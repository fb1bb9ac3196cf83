//! Errors of the schemas crate.

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong encoding, decoding or talking to the schema registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not in the Confluent wire format (magic byte 0 + 4-byte schema id).
    #[error("not in Confluent wire format: {0}")]
    Framing(String),
    /// The Avro body did not match the schema, or a value could not be mapped to the record.
    #[error("avro: {0}")]
    Avro(String),
    /// The registry answered with an error, or could not be reached.
    #[error("schema registry: {message}")]
    Registry {
        /// What the registry (or the HTTP client) said.
        message: String,
        /// Whether trying again later may succeed (network error, 5xx).
        retriable: bool,
    },
}

impl Error {
    /// Whether the failure is transient (retry later) rather than a property of the input.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Registry {
                retriable: true,
                ..
            }
        )
    }
}

impl From<apache_avro::Error> for Error {
    fn from(e: apache_avro::Error) -> Self {
        Error::Avro(e.to_string())
    }
}

impl From<schema_registry_converter::error::SRCError> for Error {
    fn from(e: schema_registry_converter::error::SRCError) -> Self {
        Error::Registry {
            retriable: e.retriable,
            message: e.to_string(),
        }
    }
}
