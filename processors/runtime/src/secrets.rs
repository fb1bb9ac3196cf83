//! Checks on secrets read from files: shared by every binary that accepts bearer tokens.

/// Shortest accepted bearer token.
pub const MIN_TOKEN_LEN: usize = 16;

/// The prefix of the example tokens shipped in `deploy/` (compared case-insensitively).
pub const EXAMPLE_PREFIX: &str = "change-me";

/// Whether `token` may be accepted: at least [`MIN_TOKEN_LEN`] characters, no whitespace, and
/// not one of the published examples (a deployment run as shipped must not start with a
/// token anyone can read in the repository; `scripts/compose-init.sh` generates real ones).
pub fn check_bearer_token(token: &str) -> Result<(), String> {
    if token.len() < MIN_TOKEN_LEN || token.chars().any(char::is_whitespace) {
        return Err(format!(
            "tokens must be at least {MIN_TOKEN_LEN} characters without spaces"
        ));
    }
    if token
        .get(..EXAMPLE_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(EXAMPLE_PREFIX))
    {
        return Err(
            "an example token from the repository (\"change-me...\"): replace it with a long \
             random string (scripts/compose-init.sh generates token files)"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_spaced_and_example_tokens_are_refused() {
        assert!(check_bearer_token("k3nYq8v0Zr2mW5tB").is_ok());
        assert!(check_bearer_token("short").is_err());
        assert!(check_bearer_token("has a space in it, long").is_err());
        assert!(check_bearer_token("CHANGE-ME-operations-room-token").is_err());
        assert!(check_bearer_token("change-me-driver-token-0001").is_err());
        assert!(
            check_bearer_token("ñññññññññññññññññ").is_ok(),
            "multi-byte text is fine"
        );
    }
}
