#!/usr/bin/env bash
# The local stack, no Docker: tansu (Kafka API, sqlite storage), the dev schema registry,
# mosquitto (password file + per-vehicle ACL) and s3s-fs (S3 API), all on loopback.
#
#   scripts/stack.sh up       install what is missing (cached outside the clone), start, wait
#   scripts/stack.sh status   what runs and whether it answers (exit 1 if anything is down)
#   scripts/stack.sh down     stop exactly what `up` started (TERM, then KILL after 10 s)
#   scripts/stack.sh env      print the FLEET_* variables for the running stack
#   scripts/stack.sh install  only install
#
# State (data, logs, pid files, dev credentials) lives in $FLEET_STATE_DIR (default: .fleet/ in
# the clone); installed tools in $FLEET_CACHE (default: ~/.cache/fleetstream).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SERVICES=(kafka registry mqtt s3)
LOGS="$FLEET_STATE_DIR/logs"
PIDS="$FLEET_STATE_DIR/pids"

port_of() {
  case $1 in
    kafka) echo "$FLEET_KAFKA_PORT" ;;
    registry) echo "$FLEET_REGISTRY_PORT" ;;
    mqtt) echo "$FLEET_MQTT_PORT" ;;
    s3) echo "$FLEET_S3_PORT" ;;
    mqtt_tls) echo "$FLEET_MQTT_TLS_PORT" ;;
  esac
}

# The executable each service runs, to check that a pid file still names our process.
exe_of() {
  case $1 in
    kafka) echo tansu ;;
    registry) echo dev-registry ;;
    mqtt) echo mosquitto ;;
    s3) echo s3s-fs ;;
  esac
}

# pid_of SERVICE: the pid we started, if it is still that process.
pid_of() {
  local f="$PIDS/$1.pid" pid
  [[ -f "$f" ]] || return 1
  pid=$(cat "$f")
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  grep -q "$(exe_of "$1")" "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

install() {
  need_apt mosquitto mosquitto-clients sqlite3 curl ca-certificates
  need_build_deps
  command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) first"
  install_tansu
  cargo_tool s3s-fs "$S3S_FS_VERSION" s3s-fs --features binary
  log "building the dev schema registry"
  (cd "$FLEET_ROOT" && cargo build -q -p fleet-dev-registry --bin dev-registry) \
    || die "building dev-registry failed"
}

# Dev credentials are generated once per state dir and reused.
credentials() {
  local f="$FLEET_STATE_DIR/credentials.env"
  if [[ ! -f "$f" ]]; then
    mkdir -p "$FLEET_STATE_DIR"
    local rnd
    rnd() { head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20; }
    cat >"$f" <<EOF
# Development credentials of the local stack (generated; not for production).
FLEET_MQTT_BRIDGE_USER=fleet-bridge
FLEET_MQTT_BRIDGE_PASSWORD=$(rnd)
FLEET_MQTT_DEVICE_PASSWORD=$(rnd)
FLEET_S3_ACCESS_KEY=fleet$(rnd | head -c 8)
FLEET_S3_SECRET_KEY=$(rnd)
FLEET_S3_BUCKET=fleet-lake
EOF
    chmod 600 "$f"
  fi
  # Entries added after a state dir was first created.
  if ! grep -q '^FLEET_MQTT_SIMULATOR_PASSWORD=' "$f"; then
    printf 'FLEET_MQTT_SIMULATOR_USER=fleet-simulator\nFLEET_MQTT_SIMULATOR_PASSWORD=%s\n' \
      "$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20)" >>"$f"
  fi
  # shellcheck disable=SC1090
  source "$f"
}

check_port_free() {
  local svc=$1 port
  port=$(port_of "$svc")
  if port_open "$port"; then
    die "port $port (for $svc) is already taken by another process; stop it or set FLEET_$(echo "$svc" | tr a-z A-Z)_PORT"
  fi
}

start_kafka() {
  local dir="$FLEET_STATE_DIR/kafka"
  mkdir -p "$dir"
  check_port_free kafka
  (cd "$dir" && exec setsid tansu broker \
    --listener-url "tcp://127.0.0.1:$FLEET_KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$FLEET_KAFKA_PORT" \
    --storage-engine "sqlite://tansu.db" >>"$LOGS/kafka.log" 2>&1 </dev/null) &
  echo $! >"$PIDS/kafka.pid"
  wait_port "$FLEET_KAFKA_PORT" 60 kafka "$!"
  # tansu looks record headers up without an index; add it (see INFRA.md).
  for _ in $(seq 1 50); do
    if sqlite3 "$dir/tansu.db" "CREATE INDEX IF NOT EXISTS header_topition_offset ON header(topition, offset_id)" 2>/dev/null; then
      break
    fi
    sleep 0.2
  done
}

start_registry() {
  check_port_free registry
  local bin="$CARGO_TARGET_DIR/debug/dev-registry"
  [[ -x "$bin" ]] || die "dev-registry not built: run scripts/stack.sh install"
  setsid "$bin" --listen "127.0.0.1:$FLEET_REGISTRY_PORT" --data-dir "$FLEET_STATE_DIR/registry" \
    >>"$LOGS/registry.log" 2>&1 </dev/null &
  echo $! >"$PIDS/registry.pid"
  wait_port "$FLEET_REGISTRY_PORT" 30 registry "$!"
}

start_mqtt() {
  local dir="$FLEET_STATE_DIR/mqtt"
  mkdir -p "$dir"
  check_port_free mqtt
  check_port_free mqtt_tls
  # Password file: the bridge, the fleet simulator (load tests: a gateway publishing for many
  # vehicles), plus development vehicles VEH-TEST-001..010 sharing one password.
  local pw="$dir/passwords"
  : >"$pw"
  mosquitto_passwd -b "$pw" "$FLEET_MQTT_BRIDGE_USER" "$FLEET_MQTT_BRIDGE_PASSWORD"
  mosquitto_passwd -b "$pw" "$FLEET_MQTT_SIMULATOR_USER" "$FLEET_MQTT_SIMULATOR_PASSWORD"
  for i in $(seq -w 1 10); do
    mosquitto_passwd -b "$pw" "VEH-TEST-0$i" "$FLEET_MQTT_DEVICE_PASSWORD"
  done
  chmod 600 "$pw"
  cat >"$dir/acl" <<EOF
# The bridge reads every vehicle's uplink and writes every vehicle's commands.
user $FLEET_MQTT_BRIDGE_USER
topic read vehicle/#
topic write vehicle/+/commands/#
topic read \$share/#
# test/{run}/... is the end-to-end tests' namespace: each test uses its own run prefix.
topic read test/#
topic write test/+/+/commands/#

# The fleet simulator (load tests) publishes for any vehicle and reads any vehicle's commands.
user $FLEET_MQTT_SIMULATOR_USER
topic write vehicle/+/telemetry
topic write vehicle/+/emergency
topic write vehicle/+/delivery
topic read vehicle/+/commands/#
topic write test/#
topic read test/#

# A vehicle (username = vehicle id) publishes only under its own id and reads only its commands.
pattern write vehicle/%u/telemetry
pattern write vehicle/%u/emergency
pattern write vehicle/%u/delivery
pattern read vehicle/%u/commands/#
EOF
  cat >"$dir/mosquitto.conf" <<EOF
per_listener_settings false
allow_anonymous false
password_file $pw
acl_file $dir/acl
persistence true
persistence_location $dir/
max_queued_messages 1000000
max_inflight_messages 1000
listener $FLEET_MQTT_PORT 127.0.0.1

# TLS with client certificates: the certificate's CN is the MQTT user name (same ACL).
listener $FLEET_MQTT_TLS_PORT 127.0.0.1
cafile $dir/certs/ca.crt
certfile $dir/certs/server.crt
keyfile $dir/certs/server.key
require_certificate true
use_identity_as_username true
EOF
  "$FLEET_ROOT/scripts/dev-certs.sh" "$dir/certs"
  # Started as root, mosquitto drops privileges to the `mosquitto` user: let it read its files.
  if [[ $(id -u) -eq 0 ]] && id mosquitto >/dev/null 2>&1; then
    chown -R mosquitto: "$dir"
  fi
  setsid mosquitto -c "$dir/mosquitto.conf" >>"$LOGS/mqtt.log" 2>&1 </dev/null &
  echo $! >"$PIDS/mqtt.pid"
  wait_port "$FLEET_MQTT_PORT" 20 mqtt "$!"
  wait_port "$FLEET_MQTT_TLS_PORT" 20 mqtt "$!"
}

start_s3() {
  local root="$FLEET_STATE_DIR/s3"
  mkdir -p "$root/$FLEET_S3_BUCKET"
  check_port_free s3
  setsid s3s-fs --host 127.0.0.1 --port "$FLEET_S3_PORT" \
    --access-key "$FLEET_S3_ACCESS_KEY" --secret-key "$FLEET_S3_SECRET_KEY" "$root" \
    >>"$LOGS/s3.log" 2>&1 </dev/null &
  echo $! >"$PIDS/s3.pid"
  wait_port "$FLEET_S3_PORT" 20 s3 "$!"
}

up() {
  install
  credentials
  mkdir -p "$LOGS" "$PIDS"
  local svc
  for svc in "${SERVICES[@]}"; do
    if pid=$(pid_of "$svc"); then
      log "$svc already running (pid $pid)"
    else
      log "starting $svc on port $(port_of "$svc")"
      "start_$svc"
    fi
  done
  status
}

status() {
  local svc pid bad=0 state
  for svc in "${SERVICES[@]}"; do
    if pid=$(pid_of "$svc"); then
      if port_open "$(port_of "$svc")"; then state="up"; else state="NOT ANSWERING"; bad=1; fi
      printf '%-9s %-14s pid %-8s port %s\n' "$svc" "$state" "$pid" "$(port_of "$svc")"
    else
      printf '%-9s %-14s\n' "$svc" "down"
      bad=1
    fi
  done
  if pid_of registry >/dev/null; then
    curl -fsS "$FLEET_SCHEMA_REGISTRY_URL/subjects" >/dev/null || { echo "registry: HTTP check failed"; bad=1; }
  fi
  return $bad
}

down() {
  local svc pid i
  for svc in "${SERVICES[@]}"; do
    if pid=$(pid_of "$svc"); then
      log "stopping $svc (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      if kill -0 "$pid" 2>/dev/null; then
        log "$svc did not stop on SIGTERM within 10 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
      fi
    fi
    rm -f "$PIDS/$svc.pid"
  done
}

print_env() {
  credentials
  cat <<EOF
export FLEET_KAFKA_BROKERS=$FLEET_KAFKA_BROKERS
export FLEET_SCHEMA_REGISTRY_URL=$FLEET_SCHEMA_REGISTRY_URL
export FLEET_MQTT_URL=$FLEET_MQTT_URL
export FLEET_S3_ENDPOINT=$FLEET_S3_ENDPOINT
export FLEET_MQTT_BRIDGE_USER=$FLEET_MQTT_BRIDGE_USER
export FLEET_MQTT_BRIDGE_PASSWORD=$FLEET_MQTT_BRIDGE_PASSWORD
export FLEET_MQTT_TLS_URL=mqtts://127.0.0.1:$FLEET_MQTT_TLS_PORT
export FLEET_MQTT_CERTS=$FLEET_STATE_DIR/mqtt/certs
export FLEET_S3_ACCESS_KEY=$FLEET_S3_ACCESS_KEY
export FLEET_S3_SECRET_KEY=$FLEET_S3_SECRET_KEY
EOF
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) print_env ;;
  install) install ;;
  *) echo "usage: $0 up|down|status|env|install" >&2; exit 2 ;;
esac
