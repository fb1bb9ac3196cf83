//! Bearer tokens with a role.
//!
//! The tokens file (TOML):
//!
//! ```toml
//! [[tokens]]
//! token = "ops-9f2c...long random string"
//! name = "operations room"
//! role = "operator"             # sees every vehicle
//!
//! [[tokens]]
//! token = "acme-71d0...long random string"
//! name = "ACME Foods"
//! role = "customer"             # sees only its own vehicles:
//! customer_id = "acme"          #   those whose profile (fleet.vehicle-profiles) names this customer,
//! vehicles = ["VEH-00042"]      #   and these
//! ```
//!
//! A customer asking for anything of a vehicle it cannot see gets `404`, exactly as for a
//! vehicle that does not exist: the API does not reveal other tenants' vehicle ids.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

/// Shortest accepted token.
pub use fleet_runtime::secrets::MIN_TOKEN_LEN;

/// What a token may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Every vehicle.
    Operator,
    /// Its own vehicles.
    Customer,
}

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Display name (logs).
    pub name: String,
    /// Role.
    pub role: Role,
    /// For customers: the customer id vehicle profiles name.
    pub customer_id: Option<String>,
    /// For customers: vehicles granted explicitly.
    pub vehicles: HashSet<String>,
}

impl Principal {
    /// Whether this principal sees `vehicle`, whose profile names `owner` as its customer.
    pub fn sees(&self, vehicle: &str, owner: Option<&str>) -> bool {
        match self.role {
            Role::Operator => true,
            Role::Customer => {
                self.vehicles.contains(vehicle)
                    || (owner.is_some() && owner == self.customer_id.as_deref())
            }
        }
    }
}

/// Errors loading the tokens file.
#[derive(Debug, thiserror::Error)]
#[error("tokens file {path}: {detail}")]
pub struct TokensError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub detail: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    token: String,
    name: String,
    role: Role,
    customer_id: Option<String>,
    #[serde(default)]
    vehicles: Vec<String>,
}

/// The tokens, by token string.
#[derive(Debug, Default, Clone)]
pub struct Tokens {
    by_token: HashMap<String, Arc<Principal>>,
}

impl Tokens {
    /// Every token with its principal.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<Principal>)> {
        self.by_token.iter().map(|(t, p)| (t.as_str(), p))
    }

    /// Loads a tokens file.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let err = |detail: String| TokensError {
            path: path.display().to_string(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::parse(&text).map_err(err)
    }

    /// Parses the TOML text of a tokens file. Refuses short or duplicate tokens, and customer
    /// tokens that would see nothing.
    pub fn parse(text: &str) -> Result<Self, String> {
        use figment::providers::{Format, Toml};
        let file: TokensFile = figment::Figment::from(Toml::string(text))
            .extract()
            .map_err(|e| e.to_string())?;
        let mut by_token = HashMap::with_capacity(file.tokens.len());
        for (i, t) in file.tokens.into_iter().enumerate() {
            let at = format!("token #{} ({})", i + 1, t.name);
            fleet_runtime::secrets::check_bearer_token(&t.token)
                .map_err(|e| format!("{at}: {e}"))?;
            if t.role == Role::Customer
                && t.customer_id.as_deref().is_none_or(str::is_empty)
                && t.vehicles.is_empty()
            {
                return Err(format!(
                    "{at}: a customer token needs a customer_id or a list of vehicles"
                ));
            }
            if t.role == Role::Operator && (t.customer_id.is_some() || !t.vehicles.is_empty()) {
                return Err(format!(
                    "{at}: an operator sees every vehicle; customer_id/vehicles would mislead"
                ));
            }
            let p = Principal {
                name: t.name,
                role: t.role,
                customer_id: t.customer_id,
                vehicles: t.vehicles.into_iter().collect(),
            };
            if by_token.insert(t.token, Arc::new(p)).is_some() {
                return Err(format!("{at}: duplicate token"));
            }
        }
        Ok(Self { by_token })
    }

    /// The principal of a token.
    pub fn get(&self, token: &str) -> Option<&Arc<Principal>> {
        self.by_token.get(token)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [[tokens]]
        token = "operator-token-0001"
        name = "ops"
        role = "operator"

        [[tokens]]
        token = "customer-token-acme"
        name = "ACME"
        role = "customer"
        customer_id = "acme"
        vehicles = ["VEH-EXTRA"]
    "#;

    #[test]
    fn roles_decide_what_is_seen() {
        let t = Tokens::parse(FILE).expect("parses");
        assert_eq!(t.len(), 2);
        let ops = t.get("operator-token-0001").expect("ops");
        assert!(ops.sees("VEH-1", None));
        assert!(ops.sees("VEH-1", Some("globex")));
        let acme = t.get("customer-token-acme").expect("acme");
        assert!(acme.sees("VEH-1", Some("acme")));
        assert!(!acme.sees("VEH-1", Some("globex")));
        assert!(!acme.sees("VEH-1", None), "no profile: not theirs");
        assert!(acme.sees("VEH-EXTRA", None), "granted explicitly");
        assert!(t.get("nope").is_none());
    }

    #[test]
    fn bad_files_are_refused() {
        let cases = [
            (
                "[[tokens]]\ntoken = \"short\"\nname = \"x\"\nrole = \"operator\"",
                "at least",
            ),
            (
                "[[tokens]]\ntoken = \"customer-token-0001\"\nname = \"x\"\nrole = \"customer\"",
                "customer_id",
            ),
            (
                "[[tokens]]\ntoken = \"operator-token-0001\"\nname = \"x\"\nrole = \"operator\"\ncustomer_id = \"a\"",
                "operator",
            ),
            (
                "[[tokens]]\ntoken = \"operator-token-0001\"\nname = \"x\"\nrole = \"admin\"",
                "admin",
            ),
            (
                "[[tokens]]\ntoken = \"operator-token-0001\"\nname = \"x\"\nrole = \"operator\"\n[[tokens]]\ntoken = \"operator-token-0001\"\nname = \"y\"\nrole = \"operator\"",
                "duplicate",
            ),
        ];
        for (text, want) in cases {
            let err = Tokens::parse(text).expect_err(text);
            assert!(err.contains(want), "{err} should mention {want}");
        }
    }
}
