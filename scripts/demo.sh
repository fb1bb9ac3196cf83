#!/usr/bin/env bash
# The main job, one command: installs what is missing, brings the local stack up, builds in
# release mode, starts every processor and connector of the pipeline (mqtt-bridge,
# telemetry-processor, anomaly-processor, emergency-processor, lake-sink) and runs a simulated
# fleet through it over MQTT (fleet-loadtest demo): V vehicles at RATE readings/s for DURATION s,
# with injected panic buttons, overspeed, a warm reefer and silent devices. Then it audits the
# result (completeness in Kafka and in the Parquet lake, every emergency notified, every
# injected incident alerted, vehicle_state current, latencies, lag and CPU per process), prints
# a summary, writes target/fleet-demo/report.json and report.html (plots, open it in any
# browser, no network needed), checks that the HTML renders its plots in headless Chromium
# (screenshot: target/fleet-demo/report.png), and stops everything it started.
#
#   scripts/demo.sh [--rate N] [--duration S] [--vehicles V] [--state URL]
#                   [--guarantee at_least_once|exactly_once] [--keep]
#     defaults: --rate 5000 --duration 60 --vehicles 10000
#     --state  the processors' state store: default a fresh SQLite file; scylla://HOST:PORT/KS
#              keeps it in Cassandra (the stack's, started with --cql: scylla://127.0.0.1:9042/fleet_demo)
#     --guarantee  runner.processing_guarantee of telemetry-, anomaly- and emergency-processor
#     --keep   leave the stack running afterwards (scripts/stack.sh down stops it)
# Exit status 0 only if the audit passed (nothing lost, every alert and notification there).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$FLEET_ROOT"

vehicles=10000
rate=5000
duration=60
keep=0
state=()
guarantee=()
stack_opts=()
while (($#)); do
  case $1 in
    --rate) rate=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --vehicles) vehicles=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --state)
      state=(--state "$2")
      [[ "$2" == scylla://* ]] && stack_opts=(--cql)
      shift 2 ;;
    --guarantee) guarantee=(--guarantee "$2"); shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

need_build_deps
command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) first"
need_browser
started=0
if ! scripts/stack.sh status "${stack_opts[@]}" >/dev/null 2>&1; then
  scripts/stack.sh up "${stack_opts[@]}"
  started=1
fi
if ((keep == 0 && started == 1)); then
  trap 'scripts/stack.sh down || true' EXIT
fi
log "building release binaries (first time: several minutes)"
cargo build -q --release -p fleet-loadtest -p fleet-mqtt-bridge -p fleet-telemetry \
  -p fleet-anomaly -p fleet-emergency -p fleet-lake
out="$FLEET_ROOT/target/fleet-demo"
mkdir -p "$out"
log "demo: $vehicles vehicles, $rate readings/s for ${duration}s over MQTT through the whole pipeline"
status=0
"$CARGO_TARGET_DIR/release/fleet-loadtest" demo --rate "$rate" --duration "$duration" \
  --vehicles "$vehicles" --emergency-every $((rate * 2)) "${state[@]}" "${guarantee[@]}" --out "$out" \
  >"$out/stdout.json" || status=$?
if [[ ! -f "$out/report.json" ]]; then
  die "the demo did not write a report (exit $status)"
fi
python3 - "$out/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
L = r["latency_ms"]
pct = lambda x: f'p50 {x["p50"]} ms, p90 {x.get("p90", "-")} ms, p99 {x["p99"]} ms, max {x["max"]} ms'
rows = [
    ("verdict", "PASS" if r["passed"] else "FAIL"),
    ("achieved rate", f'{r["achieved_rate"]:.0f}/s (target {r["rate_target"]}/s, {r["duration_s"]} s)'),
    ("sent / accepted / lost / duplicates", f'{r["sent"]} / {r["accepted"]} / {r["lost"]} / {r["duplicates"]}'),
    ("lake rows", f'{r["lake_rows"]}  ({r["lake_url"]})'),
    ("lake event ids missing / dup / unexpected", f'{r["lake_missing"]} / {r["lake_duplicates"]} / {r["lake_unexpected"]}'),
    ("emergencies (crashes) -> notifications", f'{r["emergencies_injected"]} ({r["crashes_injected"]}) -> {r["notifications_received"]}'),
    ("alerts expected / received", f'{r["alerts_expected"]} / {r["alerts_received"]}'),
    ("alerts missing / unexpected", f'{" ".join(r["alerts_missing"]) or "none"} / {" ".join(r["alerts_unexpected"]) or "none"}'),
    ("vehicle_state mismatches", f'{r["state_mismatches"]} of {r["state_vehicles_checked"]}'),
    ("emergency -> notification", pct(L["emergency_to_notification"])),
    ("reading -> vehicle_state", pct(L["reading_to_state"])),
    ("device -> Kafka", pct(L["device_to_kafka"])),
    ("CPU (cores)", ", ".join(f"{k.replace('stack:', '')} {v}" for k, v in sorted(r["cpu_cores"].items(), key=lambda kv: -kv[1]))),
]
w = max(len(k) for k, _ in rows)
for k, v in rows:
    print(f"  {k:<{w}}  {v}")
PY
log "checking that report.html renders its plots in headless Chromium"
node scripts/browser-check.mjs report "$out/report.html" "$out/report.png" >"$out/browser-check.json" \
  || die "the browser check failed; see $out/browser-check.json"
python3 - "$out/browser-check.json" <<'PY' || die "report.html did not render its plots"
import json, sys
c = json.load(open(sys.argv[1]))
bad = [p["id"] for p in c["plots"] if p["drawn"] < 200] + c["errors"]
print("  plots drawn: " + ", ".join(f'{p["id"]} ({p["drawn"]} px)' for p in c["plots"]))
sys.exit(1 if bad or len(c["plots"]) < 4 else 0)
PY
log "report: $out/report.json, $out/report.html (screenshot $out/report.png)"
exit "$status"
