#!/usr/bin/env bash
# The local stack, no Docker: Apache Kafka 4 (KRaft, from Maven Central jars), the dev schema
# registry, mosquitto (password file + per-vehicle ACL), s3s-fs (S3 API) and, on request, Apache
# Cassandra 5 (CQL, for the scylla:// state backend), all on loopback.
#
#   scripts/stack.sh up [OPTIONS]   install what is missing (cached outside the clone), start, wait
#   scripts/stack.sh status         what runs and whether it answers (exit 1 if anything is down)
#   scripts/stack.sh down           stop exactly what `up` started (TERM, then KILL after 20 s)
#   scripts/stack.sh env            print the FLEET_* variables for the running stack
#   scripts/stack.sh install        only install
#
# Options of `up` (also as environment variables):
#   --kafka-nodes N   (FLEET_KAFKA_NODES, default 1) 1: one combined broker+controller on
#                     FLEET_KAFKA_PORT; 3: a three-node KRaft cluster on FLEET_KAFKA_PORT,
#                     +100, +200 (controllers on each port + 1), topics get replication factor 3
#                     and min.insync.replicas 2
#   --cql             (FLEET_CQL=1) also start Cassandra on FLEET_CQL_PORT (default 9042): ~1.5 GB
#                     RSS and 10-25 s to start, so only the state suite and `demo.sh --state
#                     scylla://...` ask for it
#   --only SERVICES   comma separated subset of kafka,registry,mqtt,s3,cql (e.g. a second,
#                     throw-away Kafka cluster for a failure test: FLEET_STATE_DIR=/tmp/x
#                     FLEET_KAFKA_PORT=19092 scripts/stack.sh up --kafka-nodes 3 --only kafka)
#
# State (data, logs, pid files, dev credentials) lives in $FLEET_STATE_DIR (default: .fleet/ in
# the clone); installed tools in $FLEET_CACHE (default: ~/.cache/fleetstream).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KAFKA_NODES="${FLEET_KAFKA_NODES:-1}"
WITH_CQL="${FLEET_CQL:-0}"
ONLY=""
FLEET_CQL_PORT="${FLEET_CQL_PORT:-9042}"
FLEET_CQL_STORAGE_PORT="${FLEET_CQL_STORAGE_PORT:-7000}"
LOGS="$FLEET_STATE_DIR/logs"
PIDS="$FLEET_STATE_DIR/pids"

# The Kafka API port of node I (1-based); its controller listens on the next port.
kafka_port() { echo $((FLEET_KAFKA_PORT + ($1 - 1) * 100)); }
kafka_brokers() {
  local i out=()
  for ((i = 1; i <= KAFKA_NODES; i++)); do out+=("127.0.0.1:$(kafka_port "$i")"); done
  (IFS=,; echo "${out[*]}")
}

# The services `up` starts, in order: kafka-1..N, registry, mqtt, s3 (and cql on request),
# filtered by --only.
services() {
  local i svc all=()
  for ((i = 1; i <= KAFKA_NODES; i++)); do all+=("kafka-$i"); done
  all+=(registry mqtt s3)
  [[ "$WITH_CQL" == 1 ]] && all+=(cql)
  for svc in "${all[@]}"; do
    if [[ -z "$ONLY" || ",$ONLY," == *",${svc%%-*},"* ]]; then echo "$svc"; fi
  done
}

# Every service with a pid file: what `down` stops, whatever `up` was asked for.
started_services() {
  local f
  for f in "$PIDS"/*.pid; do
    [[ -f "$f" ]] && basename "$f" .pid
  done
  return 0
}

port_of() {
  case $1 in
    kafka-*) kafka_port "${1#kafka-}" ;;
    registry) echo "$FLEET_REGISTRY_PORT" ;;
    mqtt) echo "$FLEET_MQTT_PORT" ;;
    s3) echo "$FLEET_S3_PORT" ;;
    mqtt_tls) echo "$FLEET_MQTT_TLS_PORT" ;;
    cql) echo "$FLEET_CQL_PORT" ;;
  esac
}

# A string in the command line of each service's process, to check that a pid file still names
# our process (for the JVMs: the node's own configuration file).
exe_of() {
  case $1 in
    kafka-*) echo "$FLEET_STATE_DIR/kafka/$1/server.properties" ;;
    registry) echo dev-registry ;;
    mqtt) echo mosquitto ;;
    s3) echo s3s-fs ;;
    cql) echo "$FLEET_STATE_DIR/cql/cassandra.yaml" ;;
  esac
}

# pid_of SERVICE: the pid we started, if it is still that process.
pid_of() {
  local f="$PIDS/$1.pid" pid
  [[ -f "$f" ]] || return 1
  pid=$(cat "$f")
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$(exe_of "$1")" || return 1
  echo "$pid"
}

# wants SERVICE: whether this run manages SERVICE (kafka, registry, mqtt, s3, cql).
wants() { services | grep -q "^$1\(-\|$\)"; }

install() {
  need_apt curl ca-certificates python3
  JAVA=$(java17)
  KAFKA_LIBS=$(maven_jars kafka "$KAFKA_VERSION")
  if wants cql; then
    CASSANDRA_LIBS=$(maven_jars cassandra "$CASSANDRA_VERSION")
  fi
  wants mqtt && need_apt mosquitto mosquitto-clients
  if wants s3 || wants registry; then
    need_build_deps
    command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) first"
  fi
  wants s3 && cargo_tool s3s-fs "$S3S_FS_VERSION" s3s-fs --features binary
  if wants registry; then
    log "building the dev schema registry"
    (cd "$FLEET_ROOT" && cargo build -q -p fleet-dev-registry --bin dev-registry) \
      || die "building dev-registry failed"
  fi
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
    die "port $port (for $svc) is already taken by another process; stop it or set FLEET_$(echo "${svc%%-*}" | tr a-z A-Z)_PORT"
  fi
}

# stop_pids PID...: SIGTERM them all at once (a KRaft quorum stopped one node at a time leaves the
# last without a quorum, and its shutdown hangs), wait up to 20 s, then SIGKILL what is left.
stop_pids() {
  local pid i alive
  kill -TERM "$@" 2>/dev/null || true
  for ((i = 0; i < 200; i++)); do
    alive=0
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive == 0)) && return 0
    sleep 0.1
  done
  log "still running 20 s after SIGTERM: SIGKILL $*"
  kill -KILL "$@" 2>/dev/null || true
}

# The brokers' log4j2 configuration: warnings, plus the start-up line `up` waits for.
kafka_log4j() {
  cat >"$1" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="out" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="WARN"><AppenderRef ref="out"/></Root>
    <Logger name="kafka.server.KafkaRaftServer" level="INFO"/>
  </Loggers>
</Configuration>
EOF
}

# kafka_config NODE: server.properties of node NODE (1..KAFKA_NODES).
kafka_config() {
  local i=$1 n=$KAFKA_NODES dir="$FLEET_STATE_DIR/kafka/kafka-$1" port voters=() j rf=1 isr=1
  port=$(kafka_port "$i")
  for ((j = 1; j <= n; j++)); do voters+=("127.0.0.1:$(($(kafka_port "$j") + 1))"); done
  if ((n >= 3)); then rf=3; isr=2; fi
  cat <<EOF
# Generated by scripts/stack.sh: node $i of $n, KRaft combined broker + controller.
process.roles=broker,controller
node.id=$i
controller.quorum.bootstrap.servers=$(IFS=,; echo "${voters[*]}")
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$((port + 1))
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
# Durability from the cluster size: fleetstream's binaries create their topics with the
# broker's default replication factor, so one setting here holds for every topic.
default.replication.factor=$rf
min.insync.replicas=$isr
num.partitions=6
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
group.initial.rebalance.delay.ms=0
# Topics are created by the binaries with their configs (as on production clusters).
auto.create.topics.enable=false
# Sized for a 2-core machine.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=33554432
EOF
  if ((n > 1)); then
    # A dead node is fenced after 6 s instead of 9, so its partitions' leadership moves sooner.
    printf 'broker.session.timeout.ms=6000\nbroker.heartbeat.interval.ms=1000\n'
  fi
}

# kafka_uuid: a random Kafka UUID (base64url of 16 random bytes, not starting with "-"), as
# `kafka.tools.StorageTool random-uuid` prints it, without starting a JVM.
kafka_uuid() {
  python3 -c 'import base64, uuid
while True:
    u = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not u.startswith("-"):
        print(u)
        break'
}

# kafka_format NODE: formats the node's storage once per state dir (one cluster id and, for
# several nodes, the controllers' directory ids, kept in $FLEET_STATE_DIR/kafka).
kafka_format() {
  local i=$1 base="$FLEET_STATE_DIR/kafka" dir="$FLEET_STATE_DIR/kafka/kafka-$1" j init=() how
  [[ -f "$dir/data/meta.properties" ]] && return 0
  [[ -s "$base/cluster.id" ]] || kafka_uuid >"$base/cluster.id"
  if ((KAFKA_NODES == 1)); then
    how=(--standalone)
  else
    for ((j = 1; j <= KAFKA_NODES; j++)); do
      [[ -s "$base/dir-$j.id" ]] || kafka_uuid >"$base/dir-$j.id"
      init+=("$j@127.0.0.1:$(($(kafka_port "$j") + 1)):$(cat "$base/dir-$j.id")")
    done
    how=(--initial-controllers "$(IFS=,; echo "${init[*]}")")
  fi
  env -u JAVA_TOOL_OPTIONS "$JAVA" -Xmx256m -cp "$KAFKA_LIBS/*" \
    "-Dlog4j2.configurationFile=$base/log4j2.xml" kafka.tools.StorageTool format \
    -t "$(cat "$base/cluster.id")" -c "$dir/server.properties" "${how[@]}" \
    >>"$LOGS/kafka-$i.log" 2>&1 || die "formatting Kafka storage failed; see $LOGS/kafka-$i.log"
}

# start_kafka NODE: starts node NODE, without waiting: a node of a 3-node quorum opens its
# Kafka port only once the quorum has formed (wait_kafka_ready waits for every node).
start_kafka() {
  local i=$1 base="$FLEET_STATE_DIR/kafka" dir="$FLEET_STATE_DIR/kafka/kafka-$1" heap=768m
  mkdir -p "$dir"
  if [[ -f "$base/nodes" && "$(cat "$base/nodes")" != "$KAFKA_NODES" ]]; then
    die "$base holds a $(cat "$base/nodes")-node Kafka cluster, not $KAFKA_NODES: run scripts/stack.sh down and remove $base (its data) first"
  fi
  echo "$KAFKA_NODES" >"$base/nodes"
  check_port_free "kafka-$i"
  if port_open $(($(kafka_port "$i") + 1)); then
    die "port $(($(kafka_port "$i") + 1)) (controller of kafka-$i) is already taken by another process; stop it or set FLEET_KAFKA_PORT"
  fi
  kafka_log4j "$base/log4j2.xml"
  kafka_config "$i" >"$dir/server.properties"
  kafka_format "$i"
  ((KAFKA_NODES > 1)) && heap=512m
  # Where this start's log begins (the readiness check must not read an earlier run's lines).
  stat -c %s "$LOGS/kafka-$i.log" >"$dir/log.offset" 2>/dev/null || echo 0 >"$dir/log.offset"
  # A caller's JAVA_TOOL_OPTIONS (a test harness, an IDE) must not reach the broker.
  setsid env -u JAVA_TOOL_OPTIONS "$JAVA" "-Xms$heap" "-Xmx$heap" -XX:+UseG1GC \
    -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$base/log4j2.xml" -cp "$KAFKA_LIBS/*" \
    kafka.Kafka "$dir/server.properties" >>"$LOGS/kafka-$i.log" 2>&1 </dev/null &
  echo $! >"$PIDS/kafka-$i.pid"
}

# Waits until every running node logged the end of its start-up ("Kafka Server started" comes
# after the controller quorum unfenced the broker: it then serves metadata and produce requests).
wait_kafka_ready() {
  local i t pid
  for ((i = 1; i <= KAFKA_NODES; i++)); do
    pid=$(pid_of "kafka-$i") || continue
    wait_port "$(kafka_port "$i")" 90 "kafka-$i" "$pid"
    for ((t = 0; t < 900; t++)); do
      tail -c "+$(($(cat "$FLEET_STATE_DIR/kafka/kafka-$i/log.offset") + 1))" "$LOGS/kafka-$i.log" \
        | grep -q "Kafka Server started" && break
      kill -0 "$pid" 2>/dev/null || die "kafka-$i exited during start-up; see $LOGS/kafka-$i.log"
      sleep 0.1
    done
    ((t < 900)) || die "kafka-$i did not finish starting within 90 s; see $LOGS/kafka-$i.log"
  done
}

# cql_config DIR: cassandra.yaml of one node on loopback (the loader rejects unknown keys;
# durations need units).
cql_config() {
  local dir=$1
  cat <<EOF
# Generated by scripts/stack.sh: one Apache Cassandra node for development and tests.
cluster_name: fleetstream-local
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$FLEET_CQL_STORAGE_PORT"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $FLEET_CQL_STORAGE_PORT
native_transport_port: $FLEET_CQL_PORT
start_native_transport: true
data_file_directories:
  - $dir/data
commitlog_directory: $dir/commitlog
hints_directory: $dir/hints
saved_caches_directory: $dir/saved_caches
cdc_raw_directory: $dir/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
auto_snapshot: false
EOF
}

start_cql() {
  local dir="$FLEET_STATE_DIR/cql" f
  mkdir -p "$dir"
  check_port_free cql
  if port_open "$FLEET_CQL_STORAGE_PORT"; then
    die "port $FLEET_CQL_STORAGE_PORT (Cassandra storage) is already taken by another process; stop it or set FLEET_CQL_STORAGE_PORT"
  fi
  cql_config "$dir" >"$dir/cassandra.yaml"
  cat >"$dir/logback.xml" <<'EOF'
<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="STDOUT"/></root>
  <logger name="org.apache.cassandra.service.CassandraDaemon" level="INFO"/>
</configuration>
EOF
  # The module flags of Cassandra's conf/jvm17-server.options, each one argument with `=`.
  local opens=(java.base/java.lang.module java.base/jdk.internal.loader java.base/jdk.internal.ref
    java.base/jdk.internal.reflect java.base/jdk.internal.math java.base/jdk.internal.module
    java.base/jdk.internal.util.jar jdk.management/com.sun.management.internal java.base/sun.nio.ch
    java.base/java.io java.base/java.lang.reflect jdk.compiler/com.sun.tools.javac java.base/java.lang
    java.base/java.util)
  local exports=(java.base/jdk.internal.misc java.management.rmi/com.sun.jmx.remote.internal.rmi
    java.rmi/sun.rmi.registry java.rmi/sun.rmi.server java.sql/java.sql java.base/java.lang.ref
    jdk.unsupported/sun.misc jdk.compiler/com.sun.tools.javac.file jdk.attach/sun.tools.attach)
  local jvm=(-Xms1G -Xmx1G -XX:+UseG1GC -XX:MaxGCPauseMillis=300 -XX:+ParallelRefProcEnabled
    -XX:+ExitOnOutOfMemoryError -Xss256k -Djava.awt.headless=true -Dcassandra-foreground=yes
    "-Dcassandra.config=file://$dir/cassandra.yaml" "-Dcassandra.storagedir=$dir"
    "-Dcassandra.logdir=$dir/logs" "-Dlogback.configurationFile=$dir/logback.xml"
    -Dcassandra.skip_wait_for_gossip_to_settle=0 -Djdk.attach.allowAttachSelf=true
    -Dio.netty.tryReflectionSetAccessible=true "-javaagent:$CASSANDRA_LIBS/jamm-0.4.0.jar")
  for f in "${opens[@]}"; do jvm+=("--add-opens=$f=ALL-UNNAMED"); done
  for f in "${exports[@]}"; do jvm+=("--add-exports=$f=ALL-UNNAMED"); done
  setsid env -u JAVA_TOOL_OPTIONS "$JAVA" "${jvm[@]}" -cp "$CASSANDRA_LIBS/*" \
    org.apache.cassandra.service.CassandraDaemon >>"$LOGS/cql.log" 2>&1 </dev/null &
  echo $! >"$PIDS/cql.pid"
  wait_port "$FLEET_CQL_PORT" 120 cql "$!"
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
# Largest MQTT packet a client may send (it is disconnected otherwise). The bridge reads any
# packet the broker accepts and dead-letters payloads above its own limit.
max_packet_size 16777216
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
  mkdir -p "$LOGS" "$PIDS" "$FLEET_STATE_DIR/kafka"
  local svc pid kafka_started=0
  # A start-up that fails half-way stops what this run started (nothing half-started is left).
  STARTED=()
  trap 'on_failed_up' EXIT
  for svc in $(services); do
    if pid=$(pid_of "$svc"); then
      log "$svc already running (pid $pid)"
    else
      log "starting $svc on port $(port_of "$svc")"
      STARTED+=("$svc")
      case $svc in
        kafka-*) start_kafka "${svc#kafka-}"; kafka_started=1 ;;
        *) "start_$svc" ;;
      esac
    fi
  done
  ((kafka_started == 1)) && wait_kafka_ready
  trap - EXIT
  status
}

on_failed_up() {
  local rc=$? svc pid pids=()
  ((rc == 0)) && return 0
  for svc in "${STARTED[@]}"; do
    if pid=$(pid_of "$svc"); then pids+=("$pid"); fi
  done
  if ((${#pids[@]} > 0)); then
    log "start-up failed: stopping what this run started"
    stop_pids "${pids[@]}"
  fi
  exit "$rc"
}

status() {
  local svc pid bad=0 state
  for svc in $(services); do
    if pid=$(pid_of "$svc"); then
      if port_open "$(port_of "$svc")"; then state="up"; else state="NOT ANSWERING"; bad=1; fi
      printf '%-9s %-14s pid %-8s port %s\n' "$svc" "$state" "$pid" "$(port_of "$svc")"
    else
      printf '%-9s %-14s\n' "$svc" "down"
      bad=1
    fi
  done
  if services | grep -qx registry && pid_of registry >/dev/null; then
    curl -fsS "$FLEET_SCHEMA_REGISTRY_URL/subjects" >/dev/null || { echo "registry: HTTP check failed"; bad=1; }
  fi
  return $bad
}

down() {
  local svc pid pids=()
  for svc in $(started_services); do
    if pid=$(pid_of "$svc"); then
      log "stopping $svc (pid $pid)"
      pids+=("$pid")
    fi
  done
  ((${#pids[@]} > 0)) && stop_pids "${pids[@]}"
  for svc in $(started_services); do rm -f "$PIDS/$svc.pid"; done
}

print_env() {
  credentials
  cat <<EOF
export FLEET_KAFKA_BROKERS=$(kafka_brokers)
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

usage="usage: $0 up|down|status|env|install [--kafka-nodes 1|3] [--cql] [--only kafka,registry,mqtt,s3,cql]"
cmd="${1:-}"
[[ $# -gt 0 ]] && shift
while [[ $# -gt 0 ]]; do
  case $1 in
    --kafka-nodes) KAFKA_NODES=${2:?--kafka-nodes needs a number}; shift 2 ;;
    --cql) WITH_CQL=1; shift ;;
    --only) ONLY=${2:?--only needs a list}; shift 2 ;;
    *) echo "unknown option $1; $usage" >&2; exit 2 ;;
  esac
done
[[ "$KAFKA_NODES" =~ ^[1-9]$ ]] || die "--kafka-nodes must be a number from 1 to 9, not $KAFKA_NODES"
[[ ",$ONLY," == *,cql,* ]] && WITH_CQL=1
FLEET_KAFKA_BROKERS="$(kafka_brokers)"
export FLEET_KAFKA_BROKERS

case "$cmd" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) print_env ;;
  install) install ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
