//! Bearer tokens and their rate limits.
//!
//! The tokens file (TOML) lists who may send:
//!
//! ```toml
//! [[tokens]]
//! token = "k3nYq...long random string"
//! driver_id = "DRV-0001"        # stamped on deliveries that do not name a driver
//! vehicles = ["VEH-00001"]      # the vehicles this token may report for; empty = any (a dispatch backend)
//! rate_per_sec = 20             # optional: records per second (default app.rate_per_token)
//! burst = 200                   # optional: bucket size (default app.burst_per_token)
//! ```
//!
//! Each token has its own token bucket ([`Bucket`]), counted in records (a batch of 50 takes
//! 50), so one misbehaving app cannot starve the others.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::Deserialize;

pub use fleet_runtime::limit::Bucket;

/// Who a token belongs to and what it may do.
#[derive(Debug)]
pub struct Principal {
    /// Driver id (or client name) of the token.
    pub driver_id: String,
    /// Vehicles it may report for; empty: any.
    pub vehicles: Vec<String>,
    bucket: Mutex<Bucket>,
}

impl Principal {
    /// Takes `n` records from this token's rate budget.
    pub fn take(&self, n: u32, now_ms: i64) -> Result<(), u64> {
        match self.bucket.lock() {
            Ok(mut b) => b.take(n, now_ms),
            // A panic while holding the lock cannot leave the bucket inconsistent.
            Err(poisoned) => poisoned.into_inner().take(n, now_ms),
        }
    }

    /// The one vehicle the token is bound to, if exactly one (then the payload must name it).
    pub fn bound_vehicle(&self) -> Option<&str> {
        match self.vehicles.as_slice() {
            [v] => Some(v),
            _ => None,
        }
    }

    /// A dispatch client: not bound to vehicles (may report for any, and reassign deliveries).
    pub fn is_dispatch(&self) -> bool {
        self.vehicles.is_empty()
    }

    /// Whether the token may report for `vehicle`.
    pub fn may_report(&self, vehicle: &str) -> bool {
        self.vehicles.is_empty() || self.vehicles.iter().any(|v| v == vehicle)
    }
}

/// Errors loading the tokens file.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// Unreadable or malformed file.
    #[error("tokens file {path}: {detail}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    token: String,
    driver_id: String,
    #[serde(default)]
    vehicles: Vec<String>,
    rate_per_sec: Option<f64>,
    burst: Option<u32>,
}

/// The tokens, by token string.
#[derive(Debug, Default, Clone)]
pub struct Tokens {
    by_token: HashMap<String, Arc<Principal>>,
}

/// Shortest accepted token: guessable tokens are refused at start-up.
pub use fleet_runtime::secrets::MIN_TOKEN_LEN;

impl Tokens {
    /// Loads `path`; every token gets `rate`/`burst` unless it says otherwise. Refuses short,
    /// duplicate or badly scoped tokens and bursts smaller than `min_burst` (the largest batch).
    pub fn load(
        path: &Path,
        rate: f64,
        burst: u32,
        min_burst: u32,
        now_ms: i64,
    ) -> Result<Self, TokensError> {
        let err = |detail: String| TokensError::File {
            path: path.display().to_string(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::parse(&text, rate, burst, min_burst, now_ms).map_err(err)
    }

    /// Parses the TOML text of a tokens file (see [`Tokens::load`]).
    pub fn parse(
        text: &str,
        rate: f64,
        burst: u32,
        min_burst: u32,
        now_ms: i64,
    ) -> Result<Self, String> {
        use figment::providers::{Format, Toml};
        let file: TokensFile = figment::Figment::from(Toml::string(text))
            .extract()
            .map_err(|e| e.to_string())?;
        let mut by_token = HashMap::with_capacity(file.tokens.len());
        for (i, t) in file.tokens.into_iter().enumerate() {
            let at = format!("token #{} ({})", i + 1, t.driver_id);
            fleet_runtime::secrets::check_bearer_token(&t.token)
                .map_err(|e| format!("{at}: {e}"))?;
            if t.driver_id.is_empty() {
                return Err(format!("{at}: driver_id must not be empty"));
            }
            if let Some(v) = t
                .vehicles
                .iter()
                .find(|v| !fleet_ingest::valid_vehicle_id(v))
            {
                return Err(format!("{at}: invalid vehicle id {v:?}"));
            }
            let rate = t.rate_per_sec.unwrap_or(rate);
            let burst = t.burst.unwrap_or(burst);
            if !(rate.is_finite() && rate > 0.0) {
                return Err(format!("{at}: rate_per_sec must be positive"));
            }
            if burst < min_burst {
                return Err(format!(
                    "{at}: burst {burst} is smaller than the largest batch ({min_burst})"
                ));
            }
            let p = Principal {
                driver_id: t.driver_id,
                vehicles: t.vehicles,
                bucket: Mutex::new(Bucket::new(rate, burst, now_ms)),
            };
            if by_token.insert(t.token, Arc::new(p)).is_some() {
                return Err(format!("{at}: duplicate token"));
            }
        }
        Ok(Self { by_token })
    }

    /// The principal of a bearer token.
    pub fn get(&self, token: &str) -> Option<&Arc<Principal>> {
        self.by_token.get(token)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    /// Whether there is no token (nobody can send).
    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [[tokens]]
        token = "driver-one-token-0001"
        driver_id = "DRV-1"
        vehicles = ["VEH-1"]

        [[tokens]]
        token = "dispatch-backend-token"
        driver_id = "dispatch"
        rate_per_sec = 1000.0
        burst = 5000
    "#;

    #[test]
    fn tokens_file_is_parsed_and_scoped() {
        let t = Tokens::parse(FILE, 20.0, 200, 100, 0).unwrap();
        assert_eq!(t.len(), 2);
        let d = t.get("driver-one-token-0001").unwrap();
        assert_eq!(d.bound_vehicle(), Some("VEH-1"));
        assert!(d.may_report("VEH-1") && !d.may_report("VEH-2"));
        assert_eq!(d.take(200, 0), Ok(()));
        assert!(d.take(1, 0).is_err());
        let b = t.get("dispatch-backend-token").unwrap();
        assert_eq!(b.bound_vehicle(), None);
        assert!(b.may_report("VEH-777"));
        assert_eq!(b.take(5000, 0), Ok(()));
        assert!(t.get("nope").is_none());
    }

    #[test]
    fn bad_tokens_files_are_refused() {
        let entry = |extra: &str| format!("[[tokens]]\ndriver_id = \"d\"\n{extra}\n");
        for (text, why) in [
            (entry("token = \"short\""), "at least"),
            (entry("token = \"has a space in it ok\""), "without spaces"),
            (
                entry("token = \"long-enough-token-1\"\nvehicles = [\"bad id\"]"),
                "invalid vehicle",
            ),
            (
                entry("token = \"long-enough-token-1\"\nburst = 10"),
                "smaller than the largest batch",
            ),
            (
                entry("token = \"long-enough-token-1\"\nrate_per_sec = 0.0"),
                "rate_per_sec",
            ),
            (
                entry("token = \"long-enough-token-1\"\nrole = \"admin\""),
                "unknown field",
            ),
            (
                format!(
                    "{}{}",
                    entry("token = \"long-enough-token-1\""),
                    entry("token = \"long-enough-token-1\"")
                ),
                "duplicate",
            ),
        ] {
            let e = Tokens::parse(&text, 20.0, 200, 100, 0).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
        assert!(matches!(
            Tokens::load(Path::new("/nonexistent/tokens.toml"), 1.0, 1, 1, 0),
            Err(TokensError::File { .. })
        ));
    }
}
