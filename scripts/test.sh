#!/usr/bin/env bash
# Runs every check and test of fleetstream: formatting, clippy, unit and property tests, and the
# end-to-end tests against the local stack (Apache Kafka 4, Apache Cassandra 5 for the CQL state
# backend, mosquitto, s3s-fs, the dev registry), which this script installs and starts itself
# (and stops again if it started it). Idempotent; the first run on a fresh machine installs
# tools and Maven jars into ~/.cache/fleetstream, later runs reuse them.
#
#   scripts/test.sh            everything
#   scripts/test.sh --unit     no stack: fmt, clippy, unit tests only
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$FLEET_ROOT"

unit_only=0
[[ "${1:-}" == "--unit" ]] && unit_only=1

need_build_deps
command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) first"
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy >/dev/null 2>&1 || true

log "cargo fmt --check"
cargo fmt --all --check
log "cargo clippy (warnings are errors)"
cargo clippy -q --workspace --all-targets --features fleet-e2e/stack -- -D warnings
# Alert and recording rules: syntax, and their unit tests (series in, alerts out). promtool
# comes with Debian's prometheus package.
need_apt prometheus
log "promtool check rules + test rules (deploy/prometheus)"
promtool check rules deploy/prometheus/rules.yml
(cd deploy/prometheus && promtool test rules rules.test.yml)

features=()
if ((unit_only == 0)); then
  started=0
  if ! scripts/stack.sh status --cql >/dev/null 2>&1; then
    scripts/stack.sh up --cql
    started=1
  fi
  if ((started == 1)) && [[ "${FLEET_KEEP_STACK:-0}" != 1 ]]; then
    trap 'scripts/stack.sh down || true' EXIT
  fi
  features=(--features fleet-e2e/stack)
  # The state suite runs against the stack's Cassandra.
  export FLEET_TEST_CQL="127.0.0.1:${FLEET_CQL_PORT:-9042}"
  need_pyarrow
  need_browser
fi

log "building every binary and test (end-to-end tests run the binaries as processes)"
# One invocation for binaries and tests, with the test features: the binaries are then built
# against the same feature-unified dependencies as the tests (dev-dependencies enable extra
# features), so heavy crates (DataFusion, Arrow, the scylla driver) compile once, not twice.
cargo build -q --workspace --bins --tests "${features[@]}"

log "doc tests"
cargo test -q --workspace --doc
log "unit, integration and end-to-end tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace "${features[@]}" --no-fail-fast
else
  cargo test --workspace "${features[@]}" --no-fail-fast
fi

# Fuzz smoke: 20 s per target (scripts/fuzz.sh for longer runs). libFuzzer needs a nightly
# toolchain; fuzz.sh installs one with rustup when it can.
if rustup run nightly rustc --version >/dev/null 2>&1 \
  || rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
  log "fuzz smoke (scripts/fuzz.sh --smoke)"
  scripts/fuzz.sh --smoke
else
  log "WARNING: fuzz smoke SKIPPED: no nightly toolchain and rustup cannot install one here"
fi
