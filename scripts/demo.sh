#!/usr/bin/env bash
# The main job, one command: installs what is missing, brings the local stack up, builds in
# release mode, and runs a simulated fleet through the pipeline:
#   1. telemetry: V vehicles send RATE readings/s for DURATION s (Avro, schema registry) into
#      fleet.telemetry-like topics; telemetry-processor keeps vehicle_state and emits 60 s windows;
#      the report gives consumer lag, vehicle_state freshness and the max rate vs a bare consumer;
#   2. devices over MQTT: V vehicles publish RATE JSON messages/s for DURATION s (QoS 1) through
#      mosquitto and mqtt-bridge into Kafka, with a panic button every 250 readings handled by
#      emergency-processor; the report gives completeness, device -> Kafka latency,
#      device -> notification latency of the emergencies, the bridge's burst rate, CPU per process;
#   3. passthrough: the runtime's own cost (passthrough-processor vs bare consumer and pipe).
# Reports (JSON) go to .fleet/reports/.
#
#   scripts/demo.sh [--rate N] [--duration S] [--vehicles V] [--records N] [--keep]
#     --records  records of the passthrough run and of the max-rate backlog (default 200000)
#     --keep     leave the stack running afterwards (scripts/stack.sh down stops it)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$FLEET_ROOT"

records=200000
vehicles=10000
rate=5000
duration=60
keep=0
while (($#)); do
  case $1 in
    --records) records=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --vehicles) vehicles=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

scripts/stack.sh up
if ((keep == 0)); then
  trap 'scripts/stack.sh down || true' EXIT
fi
log "building release binaries"
cargo build -q --release -p fleet-passthrough -p fleet-telemetry -p fleet-loadtest \
  -p fleet-mqtt-bridge -p fleet-emergency
mkdir -p "$FLEET_STATE_DIR/reports"
stamp=$(date +%Y%m%dT%H%M%S)
loadtest="$CARGO_TARGET_DIR/release/fleet-loadtest"
log "telemetry: $rate readings/s from $vehicles vehicles for ${duration}s through telemetry-processor"
"$loadtest" telemetry --rate "$rate" --duration "$duration" --vehicles "$vehicles" \
  --backlog "$records" --report "$FLEET_STATE_DIR/reports/telemetry-$stamp.json"
log "MQTT: $rate messages/s from $vehicles vehicles for ${duration}s through mqtt-bridge, with panic buttons"
"$loadtest" mqtt --rate "$rate" --duration "$duration" --vehicles "$vehicles" \
  --burst "$records" --emergency-every 250 --report "$FLEET_STATE_DIR/reports/mqtt-$stamp.json"
log "passthrough: $records readings through passthrough-processor"
"$loadtest" passthrough --records "$records" --vehicles "$vehicles" \
  --report "$FLEET_STATE_DIR/reports/passthrough-$stamp.json"
log "reports in $FLEET_STATE_DIR/reports/"
