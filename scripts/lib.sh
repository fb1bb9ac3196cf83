# Shared helpers for fleetstream's scripts. Source it; do not run it.
# shellcheck shell=bash

FLEET_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FLEET_CACHE="${FLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fleetstream}"
FLEET_TOOLS="$FLEET_CACHE/tools"
FLEET_STATE_DIR="${FLEET_STATE_DIR:-$FLEET_ROOT/.fleet}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$FLEET_CACHE/target}"
export PATH="$FLEET_TOOLS/bin:$HOME/.cargo/bin:$PATH"
# Incremental compilation only pays off in an editor loop; in the shared target dir it doubled
# the size of the cache.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# Apache Kafka and Apache Cassandra run from Maven Central jars (scripts/kafka/pom.xml,
# scripts/cassandra/pom.xml); the versions are pinned in those poms and named here for the cache.
KAFKA_VERSION=4.4.0
CASSANDRA_VERSION=5.0.9
S3S_FS_VERSION=0.14.1

FLEET_KAFKA_PORT="${FLEET_KAFKA_PORT:-9092}"
FLEET_REGISTRY_PORT="${FLEET_REGISTRY_PORT:-8081}"
FLEET_MQTT_PORT="${FLEET_MQTT_PORT:-1883}"
FLEET_S3_PORT="${FLEET_S3_PORT:-9000}"
FLEET_MQTT_TLS_PORT="${FLEET_MQTT_TLS_PORT:-8883}"
export FLEET_KAFKA_BROKERS="${FLEET_KAFKA_BROKERS:-127.0.0.1:$FLEET_KAFKA_PORT}"
export FLEET_SCHEMA_REGISTRY_URL="${FLEET_SCHEMA_REGISTRY_URL:-http://127.0.0.1:$FLEET_REGISTRY_PORT}"
export FLEET_MQTT_URL="${FLEET_MQTT_URL:-mqtt://127.0.0.1:$FLEET_MQTT_PORT}"
export FLEET_S3_ENDPOINT="${FLEET_S3_ENDPOINT:-http://127.0.0.1:$FLEET_S3_PORT}"

log() { printf '\033[1m[fleet]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31m[fleet] error:\033[0m %s\n' "$*" >&2; exit 1; }

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port PORT SECONDS NAME [PID]: wait until the port answers; fail early if PID died.
wait_port() {
  local port=$1 secs=$2 name=$3 pid=${4:-} i
  for ((i = 0; i < secs * 10; i++)); do
    port_open "$port" && return 0
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      die "$name exited during start-up; see $FLEET_STATE_DIR/logs/$name.log"
    fi
    sleep 0.1
  done
  die "$name did not answer on port $port within ${secs}s; see $FLEET_STATE_DIR/logs/$name.log"
}

# need_apt PKG...: install the Debian packages that are missing (idempotent).
need_apt() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  log "installing Debian packages: ${missing[*]}"
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
}

# Build prerequisites of the workspace itself (rdkafka is built from source with cmake, with
# OpenSSL for TLS and SASL; its bundled librdkafka 2.12 includes curl.h even with curl disabled).
# python3: the notifier's e-mail tests talk to Python's standard-library SMTP server (smtpd,
# still in Debian 12's Python 3.11).
need_build_deps() {
  need_apt build-essential cmake pkg-config libcurl4-openssl-dev libssl-dev python3
  trim_target_dir
}

# The cargo target dir is a cache: artifacts of old dependency versions and feature sets pile
# up in it. When it outgrows FLEET_TARGET_MAX_GB (default 30) or the disk has less than 10 GB
# free, drop incremental state and then, if still needed, the debug build (a cold build follows).
trim_target_dir() {
  local dir="$CARGO_TARGET_DIR" max_kb=$((${FLEET_TARGET_MAX_GB:-30} * 1024 * 1024)) size free
  [[ -d "$dir" ]] || return 0
  size=$(du -sk "$dir" 2>/dev/null | cut -f1)
  free=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
  if ((size > max_kb || free < 10 * 1024 * 1024)); then
    log "target dir $dir holds $((size / 1024 / 1024)) GB, $((free / 1024 / 1024)) GB free: trimming"
    rm -rf "$dir"/debug/incremental "$dir"/release/incremental
    size=$(du -sk "$dir" 2>/dev/null | cut -f1)
    free=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
    if ((size > max_kb || free < 10 * 1024 * 1024)); then
      rm -rf "$dir"/debug
    fi
  fi
}

# A Python with pyarrow (an independent Parquet reader for the lake tests), in the cache.
PYARROW_VERSION=21.0.0
need_pyarrow() {
  local venv="$FLEET_CACHE/venv"
  local marker="$venv/.installed-pyarrow-$PYARROW_VERSION"
  if [[ ! -f "$marker" ]]; then
    need_apt python3-venv
    log "installing pyarrow $PYARROW_VERSION into $venv (one time)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "pyarrow==$PYARROW_VERSION" >"$FLEET_CACHE/install-pyarrow.log" 2>&1 \
      || die "pip install pyarrow failed; see $FLEET_CACHE/install-pyarrow.log"
    touch "$marker"
  fi
  export FLEET_PYTHON="$venv/bin/python"
}

# Headless Chromium (Debian's package) driven by playwright-core (npm, no browser download):
# the live map's and the load-test report's browser checks (scripts/browser-check.mjs).
PLAYWRIGHT_VERSION=1.65.1
need_browser() {
  need_apt chromium
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    need_apt nodejs npm
  fi
  local dir="$FLEET_CACHE/node"
  local marker="$dir/.installed-playwright-core-$PLAYWRIGHT_VERSION"
  if [[ ! -f "$marker" || ! -d "$dir/node_modules/playwright-core" ]]; then
    log "installing playwright-core $PLAYWRIGHT_VERSION into $dir (one time)"
    mkdir -p "$dir"
    npm install --prefix "$dir" --no-audit --no-fund "playwright-core@$PLAYWRIGHT_VERSION" \
      >"$FLEET_CACHE/install-playwright.log" 2>&1 \
      || die "npm install playwright-core failed; see $FLEET_CACHE/install-playwright.log"
    touch "$marker"
  fi
  export FLEET_PLAYWRIGHT_DIR="$dir"
  export FLEET_CHROMIUM=/usr/bin/chromium
}

# java17: prints the path of a Java 17 `java` (Cassandra 5.0 runs on 11 or 17 only, and refuses
# JDK 24+; Kafka 4 needs 17+, so one JDK 17 serves both), installing Debian's if none is found.
java17() {
  local j v
  for j in "${FLEET_JAVA:-}" "${JAVA_HOME:+$JAVA_HOME/bin/java}" /usr/lib/jvm/java-17-openjdk-*/bin/java \
    "$(command -v java 2>/dev/null)"; do
    [[ -n "$j" && -x "$j" ]] || continue
    v=$("$j" -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ { print $2 }')
    if [[ "$v" == 17 ]]; then
      echo "$j"
      return 0
    fi
  done
  need_apt openjdk-17-jre-headless >&2
  j=$(ls /usr/lib/jvm/java-17-openjdk-*/bin/java 2>/dev/null | head -n 1)
  [[ -x "$j" ]] || die "no Java 17 found (Kafka and Cassandra need it; JDK 24+ cannot run Cassandra 5.0): install openjdk-17-jre-headless or set FLEET_JAVA"
  echo "$j"
}

# maven_jars NAME VERSION: the jars of scripts/NAME/pom.xml (Maven Central) copied once into
# $FLEET_TOOLS/NAME-VERSION/libs; prints that directory. The marker names the pom's digest, so a
# changed pom resolves again.
maven_jars() {
  local name=$1 version=$2 pom="$FLEET_ROOT/scripts/$1/pom.xml"
  local dir="$FLEET_TOOLS/$name-$version" digest
  digest=$(sha256sum "$pom" | cut -c1-12)
  if [[ -f "$dir/.installed-$digest" && -d "$dir/libs" ]]; then
    echo "$dir/libs"
    return 0
  fi
  command -v mvn >/dev/null || need_apt maven >&2
  java17 >/dev/null
  log "resolving $name $version from Maven Central into $dir (one time)"
  rm -rf "$dir" && mkdir -p "$dir"
  mvn -q -B -f "$pom" dependency:copy-dependencies -DoutputDirectory="$dir/libs.tmp" \
    >"$FLEET_CACHE/install-$name.log" 2>&1 \
    || { rm -rf "$dir"; die "resolving $name $version with Maven failed (is Maven Central reachable?); see $FLEET_CACHE/install-$name.log"; }
  mv "$dir/libs.tmp" "$dir/libs"
  touch "$dir/.installed-$digest"
  echo "$dir/libs"
}

# cargo_tool NAME VERSION CRATE [ARGS...]: cargo install into the cache, once per version.
cargo_tool() {
  local bin=$1 version=$2 crate=$3
  shift 3
  local marker="$FLEET_TOOLS/.installed-$crate-$version"
  if [[ -x "$FLEET_TOOLS/bin/$bin" && -f "$marker" ]]; then
    return 0
  fi
  log "installing $crate $version into $FLEET_TOOLS (one time)"
  mkdir -p "$FLEET_TOOLS"
  cargo install "$crate" --version "$version" --locked --root "$FLEET_TOOLS" "$@" \
    >"$FLEET_CACHE/install-$crate.log" 2>&1 \
    || die "cargo install $crate $version failed; see $FLEET_CACHE/install-$crate.log"
  touch "$marker"
}
