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

TANSU_VERSION=0.6.0
# tansu is built from its crates.io sources with scripts/tansu/*.patch applied; bump the level
# when a patch changes (the cache marker names it, so a changed patch is rebuilt once).
TANSU_PATCH_LEVEL=1
TANSU_SHA256=4fdd85473ec265140488cf8d55e82b844f5c051c8916fabdd4a71156ac053f6d
TANSU_STORAGE_SHA256=720d2ed8e6010c70f7f06e5af5a7274ebbf6e42fdcd9e46de542b10dc4d2f35d
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

# fetch_crate NAME VERSION SHA256 DIR: unpacks NAME-VERSION's crates.io source into DIR,
# checked against the checksum crates.io publishes (the one in tansu's Cargo.lock).
fetch_crate() {
  local name=$1 version=$2 sha=$3 dir=$4
  local file="$dir/$name-$version.crate"
  curl -sSfL --retry 3 -o "$file" "https://static.crates.io/crates/$name/$name-$version.crate" \
    || die "downloading $name $version from static.crates.io failed"
  echo "$sha  $file" | sha256sum -c --quiet - || die "$name-$version.crate: checksum mismatch"
  tar xzf "$file" -C "$dir"
}

# The Kafka-protocol broker: tansu with fleetstream's patches (scripts/tansu/README.md), once
# per version and patch level, into the cache.
install_tansu() {
  local level="$TANSU_VERSION-fleet$TANSU_PATCH_LEVEL"
  local marker="$FLEET_TOOLS/.installed-tansu-$level"
  if [[ -x "$FLEET_TOOLS/bin/tansu" && -f "$marker" ]]; then
    return 0
  fi
  need_apt patch curl ca-certificates
  log "building tansu $level into $FLEET_TOOLS (one time; ~16 min on 2 cores)"
  local src="$FLEET_CACHE/src/tansu-$level"
  rm -rf "$src" && mkdir -p "$src"
  fetch_crate tansu "$TANSU_VERSION" "$TANSU_SHA256" "$src"
  fetch_crate tansu-storage "$TANSU_VERSION" "$TANSU_STORAGE_SHA256" "$src"
  local p
  for p in "$FLEET_ROOT"/scripts/tansu/*.patch; do
    patch -s -p1 -d "$src/tansu-storage-$TANSU_VERSION" <"$p" || die "applying $p failed"
  done
  printf '\n[patch.crates-io]\ntansu-storage = { path = "../tansu-storage-%s" }\n' "$TANSU_VERSION" \
    >>"$src/tansu-$TANSU_VERSION/Cargo.toml"
  mkdir -p "$FLEET_TOOLS"
  cargo install --path "$src/tansu-$TANSU_VERSION" --locked --features libsql --force \
    --root "$FLEET_TOOLS" --target-dir "$FLEET_CACHE/tansu-build" \
    >"$FLEET_CACHE/install-tansu.log" 2>&1 \
    || die "building tansu failed; see $FLEET_CACHE/install-tansu.log"
  # The build directory is ~1.5 GB and only needed again for a new patch level.
  rm -rf "$FLEET_CACHE/tansu-build"
  touch "$marker"
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
