#!/usr/bin/env bash
# The main job, one command: installs what is missing, brings the local stack up, builds in
# release mode, and runs sample fleet data through the pipeline. Today the pipeline is the
# foundation's pass-through processor: the load tester writes N TelemetryReadings (Avro,
# registered in the schema registry) for V vehicles, the processor decodes, validates and
# forwards them, and the run prints throughput next to a bare consumer's.
#
#   scripts/demo.sh [--records N] [--vehicles V] [--keep]
#     --keep   leave the stack running afterwards (scripts/stack.sh down stops it)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$FLEET_ROOT"

records=200000
vehicles=10000
keep=0
while (($#)); do
  case $1 in
    --records) records=$2; shift 2 ;;
    --vehicles) vehicles=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

scripts/stack.sh up
if ((keep == 0)); then
  trap 'scripts/stack.sh down || true' EXIT
fi
log "building release binaries"
cargo build -q --release -p fleet-passthrough -p fleet-loadtest
mkdir -p "$FLEET_STATE_DIR/reports"
report="$FLEET_STATE_DIR/reports/passthrough-$(date +%Y%m%dT%H%M%S).json"
log "running $records readings from $vehicles vehicles through passthrough-processor"
"$CARGO_TARGET_DIR/release/fleet-loadtest" passthrough --records "$records" --vehicles "$vehicles" --report "$report"
log "report: $report"
