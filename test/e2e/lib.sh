#!/bin/bash
# End-to-end test library: a real PostgreSQL cluster, the LocalAPI stand-in and the real
# waypoint binary, driven with real clients (psql, pgbench, openssl).
#
# Every test sources this file and calls e2e_init first. Each test owns one temp dir
# ($T) holding its cluster, stand-in socket, certificates, config and logs, and picks its
# own ports, so tests run in parallel (ctest -j). An EXIT trap stops everything the test
# started (the cluster also has a reaper tied to the test's pid, so even kill -9 of the
# test leaves no server behind). Waiting is always "poll a condition until a deadline"
# (e2e_wait), never a blind sleep.
#
# Conventions: the listener is called pg-main; the caller is alice@example.com on node
# laptop.tail1234.ts.net. (stable ID nALICE), so her role for database appdb is
# wp_alice_laptop_appdb (full grant) or wp_alice_laptop_appdb_readonly (downgraded),
# as in the spec's role naming example.

set -euo pipefail

E2E_SRC=${WP_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
E2E_BIN=${WP_BINARY_DIR:-$E2E_SRC/build}
PGCLUSTER=$E2E_SRC/test/support/pgcluster.sh
STANDIN=$E2E_SRC/test/support/localapi_standin.py
WAYPOINT=$E2E_BIN/waypoint

E2E_NAME=$(basename "$0" .sh)
E2E_PIDS=()
E2E_FAILED=0

# ---------------------------------------------------------------- reporting ----

fail() {
    echo "FAIL [$E2E_NAME]: $*" >&2
    E2E_FAILED=1
    exit 1
}

pass() {
    echo "ok   [$E2E_NAME]: $*"
}

assert_eq() { # expected actual what
    [ "$1" = "$2" ] || fail "$3: expected '$1', got '$2'"
    pass "$3"
}

assert_contains() { # haystack needle what
    case $1 in *"$2"*) pass "$3" ;; *) fail "$3: '$2' not in: $1" ;; esac
}

assert_not_contains() { # haystack needle what
    case $1 in *"$2"*) fail "$3: '$2' unexpectedly in: $1" ;; *) pass "$3" ;; esac
}

# e2e_wait SECONDS DESCRIPTION 'CONDITION': evaluates the shell CONDITION (single-quote
# it, so "$(...)" inside is re-run each time) every 50 ms until it succeeds or the
# deadline passes.
e2e_wait() {
    local secs=$1 what=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until eval "$*" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${secs}s waiting for $what"
        sleep 0.05
    done
}

now_ms() { date +%s%3N; }

# ------------------------------------------------------------------ lifecycle ----

e2e_cleanup() {
    local rc=$?
    local p
    for p in "${E2E_PIDS[@]+"${E2E_PIDS[@]}"}"; do
        { kill -KILL "$p" && wait "$p"; } 2>/dev/null || true
    done
    if [ -n "${T:-}" ] && [ -d "$T" ]; then
        if [ "$rc" -ne 0 ] || [ "$E2E_FAILED" -ne 0 ]; then
            echo "---- waypoint log ($E2E_NAME) ----" >&2
            tail -n 60 "$T/waypoint.log" >&2 2>/dev/null || true
            echo "---- stand-in log ----" >&2
            tail -n 20 "$T/standin.log" >&2 2>/dev/null || true
        fi
        [ -d "$T/pg" ] && "$PGCLUSTER" stop "$T/pg" || true
        rm -rf "$T"
    fi
    exit "$rc"
}

e2e_init() {
    [ -x "$WAYPOINT" ] || { echo "no waypoint binary at $WAYPOINT" >&2; exit 1; }
    T=$(mktemp -d "/tmp/wp-e2e-$E2E_NAME.XXXXXX")
    chmod 755 "$T"
    trap e2e_cleanup EXIT
    trap 'exit 130' INT TERM
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# e2e_cluster [pgcluster.sh start options]: a cluster in $T/pg; sets PG_PORT, PG_MAJOR
# (the server's major version: ctest runs each e2e test once per version through
# WP_PG_BIN, and tests branch on PG_MAJOR where PostgreSQL's behaviour differs) and
# PG_BINDIR.
e2e_cluster() {
    "$PGCLUSTER" start "$T/pg" --owner-pid $$ "$@" >/dev/null
    # shellcheck disable=SC1091
    PG_PORT=$(. "$T/pg/cluster.env" && echo "$PORT")
    PG_MAJOR=$(. "$T/pg/cluster.env" && echo "$PG_MAJOR")
    PG_BINDIR=$(. "$T/pg/cluster.env" && echo "$BINDIR")
}

# Runs SQL on appdb as the superuser (setup and inspection, never through Waypoint).
super_sql() {
    "$PGCLUSTER" psql "$T/pg" -d appdb -qAt -v ON_ERROR_STOP=1 "$@"
}

# Runs SQL on appdb as the admin role over TCP (what Waypoint provisions with).
admin_sql() {
    PGPASSWORD=adminpw psql -X -qAt -v ON_ERROR_STOP=1 \
        "host=127.0.0.1 port=$PG_PORT dbname=appdb user=wp_admin" "$@"
}

# e2e_mkcert NAME CN: a self-signed P-256 certificate for CN in $T/NAME.crt / $T/NAME.key.
e2e_mkcert() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=$2" \
        -addext "subjectAltName=DNS:$2" -keyout "$T/$1.key" -out "$T/$1.crt" 2>/dev/null
}

# ------------------------------------------------------------------ stand-in ----

# e2e_state FILE-CONTENT: writes the stand-in state atomically.
e2e_state() {
    printf '%s\n' "$1" >"$T/state.json.tmp"
    mv "$T/state.json.tmp" "$T/state.json"
}

# e2e_identity DATABASES_JSON [LIMITS_JSON]: alice, with one grant rule for pg-main.
# DATABASES_JSON e.g. '{"appdb": {"permissions": ["readonly"]}}'.
e2e_identity() {
    local dbs=$1 limits=${2:-'{}'} certs=${E2E_CERTS:-'{}'}
    e2e_state "$(
        cat <<JSON
{"identities": [{"match": "*", "whois": {
  "Node": {"ID": 1, "StableID": "nALICE", "Name": "laptop.tail1234.ts.net.",
           "ComputedName": "laptop", "Addresses": ["100.64.0.1/32"], "Tags": null},
  "UserProfile": {"ID": 101, "LoginName": "alice@example.com", "DisplayName": "Alice"},
  "CapMap": {"redo.com/cap/waypoint": [
     {"limits": $limits, "backends": {"pg-main": {"pg": {"databases": $dbs}}}}]}}}],
 "certs": $certs}
JSON
    )"
}

# Nobody is on the tailnet: every WhoIs is a 404.
e2e_no_identity() {
    e2e_state '{"identities": [], "certs": {}}'
}

e2e_standin() {
    [ -f "$T/state.json" ] || e2e_no_identity
    python3 "$STANDIN" --socket "$T/ts.sock" --state "$T/state.json" \
        --ready-file "$T/standin.ready" 2>"$T/standin.log" &
    E2E_PIDS+=($!)
    e2e_wait 15 "the LocalAPI stand-in" '[ -s "$T/standin.ready" ]'
}

# ------------------------------------------------------------------ waypoint ----

# e2e_config [extra [[listeners]] lines] -- (re)writes $T/waypoint.toml for pg-main on a free
# port. Environment knobs: E2E_SERVER (lines for [server]), E2E_TOP (lines placed
# before [server], e.g. a [revalidation] section), E2E_BACKEND_HOST (default 127.0.0.1).
e2e_config() {
    WP_PORT=${WP_PORT:-$(free_port)} # kept when rewriting the file for a reload
    local extra=${1:-}
    cat >"$T/waypoint.toml" <<TOML
[tailscale]
socket = "$T/ts.sock"
whois_timeout = "${E2E_WHOIS_TIMEOUT:-2s}"

${E2E_TOP:-}

[server]
startup_timeout = "${E2E_STARTUP_TIMEOUT:-10s}"
drain_timeout = "${E2E_DRAIN_TIMEOUT:-10s}"
${E2E_SERVER:-}

[[listeners]]
name = "pg-main"
listen = "127.0.0.1:$WP_PORT"
mode = "postgres"
backend = "${E2E_BACKEND_HOST:-127.0.0.1}:$PG_PORT"
backend_tls = "disable"
$extra

[listeners.postgres]
admin_user = "wp_admin"
admin_password = "\${E2E_ADMIN_PASSWORD}"
admin_database = "appdb"
TOML
}

# Starts waypoint on $T/waypoint.toml and waits for its "ready" line.
e2e_waypoint() {
    [ -f "$T/waypoint.toml" ] || e2e_config
    e2e_instance waypoint
}

# e2e_instance NAME: starts a waypoint on $T/NAME.toml, logging to $T/NAME.log (tests
# that run several instances name the others), and waits for its "ready" line; its pid
# goes to WP_PID.
e2e_instance() {
    local name=$1
    : >"$T/$name.log"
    E2E_ADMIN_PASSWORD=adminpw "$WAYPOINT" -config "$T/$name.toml" 2>>"$T/$name.log" &
    WP_PID=$!
    E2E_PIDS+=("$WP_PID")
    local deadline=$((SECONDS + 30))
    until grep -q 'event=ready' "$T/$name.log"; do
        kill -0 "$WP_PID" 2>/dev/null || fail "waypoint $name exited during startup: $(cat "$T/$name.log")"
        [ "$SECONDS" -lt "$deadline" ] || fail "waypoint $name did not become ready"
        sleep 0.05
    done
}

# ------------------------------------------------------------------ redis ----

# e2e_redis [redis-server options]: a real redis-server on a free loopback port (kept in
# REDIS_PORT, so calling it again restarts on the same address), without persistence:
# a restart comes back empty. Its pid goes to REDIS_PID. E2E_REDIS_PASSWORD, when set,
# is what redis_cli authenticates with.
e2e_redis() {
    REDIS_PORT=${REDIS_PORT:-$(free_port)}
    mkdir -p "$T/redis"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$T/redis" --save '' \
        --appendonly no "$@" >>"$T/redis/redis.log" 2>&1 &
    REDIS_PID=$!
    E2E_PIDS+=("$REDIS_PID")
    e2e_wait 15 "redis-server on port $REDIS_PORT" 'redis_cli PING | grep -q PONG'
}

redis_cli() {
    REDISCLI_AUTH=${E2E_REDIS_PASSWORD:-} redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"
}

# Stops the redis-server started by e2e_redis (SIGKILL: nothing is saved anyway).
e2e_redis_stop() {
    { kill -KILL "$REDIS_PID" && wait "$REDIS_PID"; } 2>/dev/null || true
}

# Starts waypoint with an audit file ($AUDIT) and metrics (on $METRICS_PORT) on.
e2e_waypoint_audited() {
    AUDIT="$T/audit.jsonl"
    METRICS_PORT=$(free_port)
    E2E_TOP="[audit]
file = \"$AUDIT\"
[metrics]
listen = \"127.0.0.1:$METRICS_PORT\"" e2e_config
    e2e_waypoint
}

# The conninfo for a client of the proxy. Extra "key=value" words are appended.
wp_conninfo() {
    echo "host=127.0.0.1 port=$WP_PORT dbname=appdb user=ignored sslmode=${E2E_SSLMODE:-disable} connect_timeout=10 $*"
}

# wpsql "extra conninfo" psql-args...: psql through Waypoint (stdout+stderr captured by
# the caller). VERBOSITY=verbose makes psql print SQLSTATEs of query errors.
wpsql() {
    local extra=$1
    shift
    PGAPPNAME=${PGAPPNAME:-e2e} psql -X -qAt -v ON_ERROR_STOP=1 -v VERBOSITY=verbose \
        "$(wp_conninfo "$extra")" "$@"
}

# wpsql_bg OUTFILE "extra conninfo" psql-args...: psql through Waypoint in the
# background, as a direct child (so signals reach psql itself); its pid goes to BG_PID.
wpsql_bg() {
    local out=$1 extra=$2
    shift 2
    PGAPPNAME=${PGAPPNAME:-e2e} psql -X -qAt -v ON_ERROR_STOP=1 -v VERBOSITY=verbose \
        "$(wp_conninfo "$extra")" "$@" >"$out" 2>&1 &
    BG_PID=$!
    E2E_PIDS+=("$BG_PID")
}

# Last log line of an event, e.g. log_line conn_refused.
log_line() {
    grep "event=$1" "$T/waypoint.log" | tail -n 1
}

log_count() {
    grep -c "event=$1" "$T/waypoint.log" || true
}

log_has() { grep -q "$1" "$T/waypoint.log"; }

# Sends SIGTERM to waypoint and waits (up to SECS) for it to exit; its exit status goes
# to WP_RC (not echoed: `wait` only works in the shell that started it).
e2e_stop_waypoint() {
    local secs=${1:-20}
    WP_RC=0
    kill -TERM "$WP_PID" 2>/dev/null || true
    local deadline=$((SECONDS + secs))
    while kill -0 "$WP_PID" 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || fail "waypoint did not exit within ${secs}s of SIGTERM"
        sleep 0.05
    done
    wait "$WP_PID" || WP_RC=$?
}

# Sends SIGHUP and waits until waypoint logged the outcome (reloaded / reload_rejected).
reload_count() { grep -cE 'event=(reloaded|reload_rejected)' "$T/waypoint.log" || true; }
e2e_reload() {
    local before
    before=$(reload_count)
    kill -HUP "$WP_PID"
    e2e_wait 15 "the reload to finish" '[ "$(reload_count)" -gt '"$before"' ]'
}
