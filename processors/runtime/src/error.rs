//! Errors of the runtime, and the classification of per-record failures.

/// Result with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Failures of the runtime itself (set-up, broker, fatal processing errors).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid configuration: fix it and restart.
    #[error("configuration: {0}")]
    Config(String),
    /// A Kafka client error that the runtime could not recover from.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Schema registry or codec failure during set-up.
    #[error("schemas: {0}")]
    Schemas(#[from] fleet_schemas::Error),
    /// The processor reported a fatal error: the loop stopped.
    #[error("fatal processing error: {0}")]
    Fatal(String),
    /// I/O (the metrics listener, files).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// How a processor's failure on one record must be handled.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The record itself is bad (invalid payload, rule rejects it): it goes to the dead-letter
    /// topic with `reason` and the loop moves on.
    #[error("poison record ({reason}): {detail}")]
    Poison {
        /// Machine-readable reason code (`invalid_payload`, `late`, ...).
        reason: &'static str,
        /// Human-readable detail.
        detail: String,
    },
    /// Something outside the record failed (store timeout, broker down): the same record is
    /// retried with capped exponential backoff; its offset is not stored meanwhile.
    #[error("transient failure: {0}")]
    Transient(String),
    /// A broken invariant or unusable configuration: the loop drains what it already finished,
    /// commits, and the binary exits non-zero.
    #[error("fatal: {0}")]
    Fatal(String),
}

impl ProcessError {
    /// A poison error.
    pub fn poison(reason: &'static str, detail: impl Into<String>) -> Self {
        Self::Poison {
            reason,
            detail: detail.into(),
        }
    }
}
