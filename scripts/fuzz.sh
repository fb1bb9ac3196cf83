#!/usr/bin/env bash
# Fuzzes the hostile-input edges with cargo-fuzz (libFuzzer + AddressSanitizer): device
# payloads of every kind (fleet_ingest::parse, and the Avro round trip of what it accepts),
# Avro records of every type off a topic, and MQTT topic names. Targets: fuzz/fuzz_targets/.
#
#   scripts/fuzz.sh              every target for 5 minutes each
#   scripts/fuzz.sh --smoke      every target for 20 s (what scripts/test.sh runs)
#   scripts/fuzz.sh TARGET SECS  one target
#
# Needs a nightly toolchain (libFuzzer's instrumentation): installed with rustup when missing
# (if that fails, the script says so and exits non-zero). Crashes are kept under
# fuzz/artifacts/TARGET/ and the corpus under $FLEET_CACHE/fuzz-corpus/TARGET/ (grows across
# runs; seeded from fuzz/seeds/TARGET/).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$FLEET_ROOT"

secs=300
targets=(device_payload avro_records mqtt_topic)
if [[ "${1:-}" == "--smoke" ]]; then
  secs=20
elif [[ $# -ge 1 ]]; then
  targets=("$1")
  secs=${2:-300}
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  log "installing the nightly toolchain (libFuzzer needs it)"
  rustup toolchain install nightly --profile minimal >"$FLEET_CACHE/install-nightly.log" 2>&1 \
    || die "no nightly toolchain and rustup could not install one; see $FLEET_CACHE/install-nightly.log"
fi
cargo_tool cargo-fuzz 0.13.2 cargo-fuzz
export PATH="$FLEET_TOOLS/bin:$PATH"
# Its own target dir: sanitizer builds never mix with the main build's artifacts.
export CARGO_TARGET_DIR="$FLEET_CACHE/fuzz-target"

for t in "${targets[@]}"; do
  corpus="$FLEET_CACHE/fuzz-corpus/$t"
  mkdir -p "$corpus"
  if [[ -d "fuzz/seeds/$t" ]]; then
    cp -n fuzz/seeds/"$t"/* "$corpus"/ 2>/dev/null || true
  fi
  log "fuzzing $t for ${secs}s"
  cargo +nightly fuzz run "$t" "$corpus" -- -max_total_time="$secs" -max_len=65536 \
    -rss_limit_mb=2048 -print_final_stats=1 2>"$FLEET_CACHE/fuzz-$t.log" \
    || { tail -n 60 "$FLEET_CACHE/fuzz-$t.log" >&2; die "fuzz target $t failed: crash input under fuzz/artifacts/$t/"; }
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$FLEET_CACHE/fuzz-$t.log" | sed "s/^/  $t: /" || true
done
