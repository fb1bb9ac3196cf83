//! The compose file as shipped must not expose the fleet: no secret has a default, the
//! infrastructure is published on loopback only, the public ports bind loopback unless told
//! otherwise, and `scripts/compose-init.sh` generates real secrets once (idempotently) that
//! the binaries accept, while they refuse the repository's example tokens.
//! (No Docker engine here: this checks the file and the script, not a running compose stack.)

use std::path::{Path, PathBuf};
use std::process::Command;

use fleet_runtime::secrets::check_bearer_token;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_compose_file_publishes_nothing_on_all_interfaces_and_has_no_default_secret() {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).expect("compose file");
    let mut ports = 0;
    for line in text.lines().map(str::trim) {
        if let Some(list) = line.strip_prefix("ports:") {
            for p in list.trim().trim_matches(['[', ']']).split(',') {
                let p = p.trim().trim_matches('"');
                ports += 1;
                assert!(
                    p.starts_with("127.0.0.1:")
                        || p.starts_with("${FLEET_PUBLIC_BIND:-127.0.0.1}:"),
                    "port {p:?} must bind loopback (or FLEET_PUBLIC_BIND, loopback by default)"
                );
            }
        }
        for secret in ["SECRET", "PASSWORD", "ACCESS_KEY", "TOKENS_HOST_FILE"] {
            if line.contains(secret) && line.contains("${") {
                assert!(
                    !line.contains(":-"),
                    "a secret must not have a default: {line}"
                );
            }
        }
    }
    assert!(ports >= 7, "found the published ports ({ports})");
    assert!(
        !text.contains("./deploy/api-tokens.toml"),
        "example tokens not mounted"
    );
}

#[test]
fn compose_init_generates_secrets_once_and_the_examples_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let run = || {
        let out = Command::new("bash")
            .arg(root().join("scripts/compose-init.sh"))
            .env("FLEET_COMPOSE_DIR", dir.path())
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read_to_string(dir.path().join(".env")).expect(".env")
    };
    let first = run();
    let api = std::fs::read_to_string(dir.path().join(".fleet/compose/api-tokens.toml"))
        .expect("api tokens");
    let second = run();
    assert_eq!(first, second, "never overwritten");
    assert_eq!(
        api,
        std::fs::read_to_string(dir.path().join(".fleet/compose/api-tokens.toml")).expect("again")
    );
    for key in [
        "FLEET_S3_ACCESS_KEY",
        "FLEET_S3_SECRET_KEY",
        "FLEET_MQTT_BRIDGE_PASSWORD",
        "FLEET_API_TOKENS_HOST_FILE",
        "FLEET_HTTP_TOKENS_HOST_FILE",
    ] {
        let v = first
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} in .env"));
        assert!(v.len() >= 16, "{key}: {v}");
    }
    let tokens: Vec<&str> = api
        .lines()
        .filter_map(|l| l.strip_prefix("token = \""))
        .map(|t| t.trim_end_matches('"'))
        .collect();
    assert_eq!(tokens.len(), 2);
    for t in &tokens {
        check_bearer_token(t).expect("generated tokens are accepted");
    }
    assert_ne!(tokens[0], tokens[1]);
    // The repository's example files are refused by the binaries.
    for example in ["deploy/api-tokens.toml", "deploy/http-tokens.toml"] {
        let text = std::fs::read_to_string(root().join(example)).expect("example");
        for t in text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("token = \""))
            .map(|t| t.trim_end_matches('"'))
        {
            assert!(check_bearer_token(t).is_err(), "{example}: {t} refused");
        }
    }
}
