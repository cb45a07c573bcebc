#!/bin/bash
# Waypoint benchmark: the same workloads against three paths in one run, on one machine:
#   direct     pgbench/psql -> PostgreSQL (scram-sha-256, default 4096 iterations)
#   pgbouncer  -> PgBouncer (session pooling, scram-sha-256) -> PostgreSQL; for the
#                 connect-per-transaction rows a second PgBouncer with trust client auth
#                 (the cheapest a pooler's connect can be), as issue 12 asks
#   waypoint   -> Waypoint (LocalAPI stand-in, readwrite grant) -> PostgreSQL
#   wpmetrics  the same through a second Waypoint with [metrics] on, scraped 10 times a
#              second while its own rows run (connect and select-simple-c8 workloads
#              only; reported as its own metrics on/off table)
#   wpbase     with BENCH_WAYPOINT_BASE=<another build's waypoint binary>: the same
#              configuration through that binary (own port and role prefix), connect rows
#              only, reported as this build against that one (e.g. the last release)
#   wpredis    the same through a third Waypoint with [redis] on (a local redis-server:
#              one Lua round trip at connect, one at the end; connect workloads only;
#              reported as its own [redis] on/off table)
# Paths alternate inside each round; each figure is the median of BENCH_ROUNDS rounds.
# Prints one Markdown table (absolute figures and ratios) on stdout; progress on stderr.
#
#   bench/run.sh [BUILD_DIR]       (make bench)
# Knobs: BENCH_ROUNDS (3), BENCH_SECONDS per pgbench run (5), BENCH_BULK_MB (1024),
#        BENCH_IDLE ("1 100 1000"), BENCH_SCALE (10), BENCH_ONLY (regex of workloads),
#        BENCH_HOLD (see below), BENCH_PG_AUTH (scram-sha-256; "trust" only for profiling
#        runs under valgrind, where the admin login's PBKDF2-4096 would outlast the
#        connect timeout).
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-build}
case $BUILD in /*) ;; *) BUILD=$SRC/$BUILD ;; esac
WAYPOINT=$BUILD/waypoint
ROUNDS=${BENCH_ROUNDS:-3}
SECS=${BENCH_SECONDS:-5}
BULK_MB=${BENCH_BULK_MB:-1024}
IDLE_COUNTS=${BENCH_IDLE:-"1 100 1000"}
SCALE=${BENCH_SCALE:-10}
ONLY=${BENCH_ONLY:-.}
BENCH_WRAP=${BENCH_WRAP:-}
PATHS=${BENCH_PATHS:-"direct pgbouncer waypoint wpmetrics wpredis"}
WPBASE=${BENCH_WAYPOINT_BASE:-}
[ -z "$WPBASE" ] || PATHS="$PATHS wpbase"

say() { echo "bench: $*" >&2; }
die() { echo "bench: FATAL: $*" >&2; exit 1; }
[ -x "$WAYPOINT" ] || die "no waypoint binary at $WAYPOINT (run make build)"

T=$(mktemp -d /tmp/wp-bench.XXXXXX)
chmod 755 "$T"
PIDS=()
cleanup() {
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$T/pgb/pgbouncer.pid" ] && kill "$(cat "$T/pgb/pgbouncer.pid")" 2>/dev/null || true
    [ -f "$T/pgbt/pgbouncer.pid" ] && kill "$(cat "$T/pgbt/pgbouncer.pid")" 2>/dev/null || true
    [ "${BENCH_KEEP:-0}" = 1 ] || "$SRC/test/support/pgcluster.sh" stop "$T/pg" >/dev/null 2>&1 || true
    if [ "${BENCH_KEEP:-0}" = 1 ]; then say "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT

free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 12000)) # below the ephemeral range (32768+), where a client socket may hold it
        ss -Hltn "sport = :$p" | grep -q . || { echo "$p"; return; }
    done
}

wait_for() { # wait_for SECONDS command...: poll a readiness check with a deadline
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.1
    done
}

# --- certificates (one CA, one server cert for every TLS endpoint) ----------------------
mkdir -p "$T/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=bench-ca -keyout "$T/tls/ca.key" -out "$T/tls/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
    -keyout "$T/tls/server.key" -out "$T/tls/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$T/tls/ext"
openssl x509 -req -in "$T/tls/server.csr" -CA "$T/tls/ca.crt" -CAkey "$T/tls/ca.key" \
    -CAcreateserial -days 2 -extfile "$T/tls/ext" -out "$T/tls/server.crt" 2>/dev/null
chown -R postgres:postgres "$T/tls"
chmod 600 "$T/tls/server.key"

# --- PostgreSQL ----------------------------------------------------------------------
say "starting PostgreSQL"
eval "$("$SRC/test/support/pgcluster.sh" start "$T/pg" --auth "${BENCH_PG_AUTH:-scram-sha-256}" --owner-pid $$ \
    --set "max_connections = 1300" --set "shared_buffers = 256MB" --set "ssl = on" \
    --set "ssl_cert_file = '$T/tls/server.crt'" --set "ssl_key_file = '$T/tls/server.key'")"
PG_PORT=$PORT
export PGPASSWORD=$ADMIN_PASSWORD
psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$ADMIN_USER" -d appdb -v ON_ERROR_STOP=1 \
    -c "CREATE ROLE bench LOGIN PASSWORD 'benchpw'" >/dev/null
say "pgbench -i -s $SCALE"
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U "$ADMIN_USER" appdb >/dev/null 2>&1
psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$ADMIN_USER" -d appdb -v ON_ERROR_STOP=1 \
    -c "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO bench" >/dev/null

# --- PgBouncer (session pooling) ------------------------------------------------------
PGB_PORT=$(free_port)
mkdir -p "$T/pgb"
printf '"bench" "benchpw"\n' >"$T/pgb/userlist.txt"
cat >"$T/pgb/pgbouncer.ini" <<INI
[databases]
appdb = host=127.0.0.1 port=$PG_PORT dbname=appdb
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir = $T/pgb
auth_type = scram-sha-256
auth_file = $T/pgb/userlist.txt
pool_mode = session
max_client_conn = 2000
default_pool_size = 100
client_tls_sslmode = allow
client_tls_cert_file = $T/tls/server.crt
client_tls_key_file = $T/tls/server.key
logfile = $T/pgb/pgbouncer.log
pidfile = $T/pgb/pgbouncer.pid
INI
PGBT_PORT=$(free_port)
mkdir -p "$T/pgbt"
sed -e "s/^listen_port = .*/listen_port = $PGBT_PORT/" -e "s/^auth_type = .*/auth_type = trust/" \
    -e "s|$T/pgb/pgbouncer|$T/pgbt/pgbouncer|" -e "s|^unix_socket_dir = .*|unix_socket_dir = $T/pgbt|" \
    "$T/pgb/pgbouncer.ini" >"$T/pgbt/pgbouncer.ini"
chown -R postgres:postgres "$T/pgb" "$T/pgbt"
say "starting PgBouncer on $PGB_PORT (scram) and $PGBT_PORT (trust)"
runuser -u postgres -- pgbouncer -d "$T/pgb/pgbouncer.ini"
runuser -u postgres -- pgbouncer -d "$T/pgbt/pgbouncer.ini"
wait_for 20 pg_isready -q -h 127.0.0.1 -p "$PGB_PORT" || die "PgBouncer did not start"
wait_for 20 pg_isready -q -h 127.0.0.1 -p "$PGBT_PORT" || die "PgBouncer (trust) did not start"

# --- Waypoint + LocalAPI stand-in -----------------------------------------------------
WP_PORT=$(free_port)
mkdir -p "$T/wp"
cat >"$T/wp/state.json" <<JSON
{"identities": [{"match": "*", "whois": {
  "Node": {"ID": 1, "StableID": "nBENCH", "Name": "bench-host.tail1234.ts.net.",
           "Addresses": ["100.64.0.9/32"], "Tags": []},
  "UserProfile": {"ID": 9, "LoginName": "bench@example.com", "DisplayName": "Bench"},
  "CapMap": {"redo.com/cap/waypoint": [{"backends": {
      "bench": {"pg": {"databases": {"appdb": {"permissions": ["readwrite"], "schemas": ["public"]}}}},
      "bench-tls12": {"pg": {"databases": {"appdb": {"permissions": ["readwrite"], "schemas": ["public"]}}}}}}]}}}],
 "certs": {}}
JSON
python3 "$SRC/test/support/localapi_standin.py" --socket "$T/wp/ts.sock" \
    --state "$T/wp/state.json" --ready-file "$T/wp/standin.ready" 2>"$T/wp/standin.log" &
STANDIN_PID=$!
PIDS+=("$STANDIN_PID")
wait_for 20 test -e "$T/wp/standin.ready" || die "stand-in did not start"
cat >"$T/wp/waypoint.toml" <<TOML
[tailscale]
socket = "$T/wp/ts.sock"
[revalidation]
interval = "0"
[server]
log_level = "warn"
[[listeners]]
name = "bench"
listen = "127.0.0.1:$WP_PORT"
mode = "postgres"
backend = "127.0.0.1:$PG_PORT"
tls_mode = "optional"
use_tailscale_tls = false
cert_file = "$T/tls/server.crt"
key_file = "$T/tls/server.key"
backend_tls = "disable"
max_connections = 2000
[listeners.postgres]
admin_user = "$ADMIN_USER"
admin_password = "$ADMIN_PASSWORD"
admin_database = "postgres"
TOML
say "starting Waypoint on $WP_PORT"
# BENCH_WRAP runs Waypoint under a profiler, e.g.
#   BENCH_WRAP="valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p" BENCH_ONLY=connect-c1
$BENCH_WRAP "$WAYPOINT" -config "$T/wp/waypoint.toml" 2>"$T/wp/waypoint.log" &
WP_PID=$!
PIDS+=("$WP_PID")
wait_for 180 pg_isready -q -h 127.0.0.1 -p "$WP_PORT" || die "Waypoint did not start: $(tail -5 "$T/wp/waypoint.log")"

# The same Waypoint with the metrics endpoint on (own role prefix, so the two instances
# never provision the same roles), and a scraper hitting it every 100 ms for the whole run.
WPM_PORT=$(free_port)
WPM_METRICS=$(free_port)
sed -e "s/127.0.0.1:$WP_PORT/127.0.0.1:$WPM_PORT/" -e 's/^\[server\]$/[metrics]\nlisten = "127.0.0.1:'"$WPM_METRICS"'"\n[server]/' \
    -e 's/^admin_database = "postgres"$/admin_database = "postgres"\nuser_prefix = "wpm_"/' \
    "$T/wp/waypoint.toml" >"$T/wp/waypoint-metrics.toml"
"$WAYPOINT" -config "$T/wp/waypoint-metrics.toml" 2>"$T/wp/waypoint-metrics.log" &
WPM_PID=$!
PIDS+=("$WPM_PID")
wait_for 180 pg_isready -q -h 127.0.0.1 -p "$WPM_PORT" || die "Waypoint (metrics on) did not start: $(tail -5 "$T/wp/waypoint-metrics.log")"
# It scrapes only while a wpmetrics row runs: a scraper running under every row would tax
# the CPU-bound paths (connects) for a cost that only the metrics-on Waypoint has.
( while :; do
    [ -e "$T/wp/scraping" ] && curl -s -o /dev/null "http://127.0.0.1:$WPM_METRICS/metrics" && echo x
    sleep 0.1
done ) >"$T/wp/scrapes" &
PIDS+=($!)

# --- [redis] on: a third Waypoint sharing its counts through a local redis-server -------
# (own role prefix; the same settings as the plain one otherwise). Only the connect rows
# run through it: a session's relay never talks to Redis.
if [[ " $PATHS " == *" wpredis "* ]]; then
    command -v redis-server >/dev/null || die "redis-server not installed (scripts/deps.sh)"
    REDIS_PORT=$(free_port)
    mkdir -p "$T/redis"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$T/redis" --save '' \
        --appendonly no >"$T/redis/redis.log" 2>&1 &
    PIDS+=($!)
    wait_for 20 redis-cli -p "$REDIS_PORT" ping || die "redis-server did not start"
    WPR_PORT=$(free_port)
    sed -e "s/127.0.0.1:$WP_PORT/127.0.0.1:$WPR_PORT/" \
        -e 's/^admin_database = "postgres"$/admin_database = "postgres"\nuser_prefix = "wpr_"/' \
        "$T/wp/waypoint.toml" >"$T/wp/waypoint-redis.toml"
    printf '[redis]\naddress = "127.0.0.1:%s"\n' "$REDIS_PORT" >>"$T/wp/waypoint-redis.toml"
    "$WAYPOINT" -config "$T/wp/waypoint-redis.toml" 2>"$T/wp/waypoint-redis.log" &
    WPR_PID=$!
    PIDS+=("$WPR_PID")
    wait_for 180 pg_isready -q -h 127.0.0.1 -p "$WPR_PORT" || die "Waypoint ([redis] on) did not start: $(tail -5 "$T/wp/waypoint-redis.log")"
fi
# --- TLS rows (issue 18): a Waypoint built against mbedTLS 3.6, and a pgx connect loop ----
# BENCH_WAYPOINT36 (make bench sets it to build-mbedtls36/waypoint): the same Waypoint
# configuration, own port and role prefix, so 2.28 and 3.6 run side by side in one run.
WP36=${BENCH_WAYPOINT36:-}
WP36_PORT=""
if [ -n "$WP36" ] && [ -x "$WP36" ]; then
    WP36_PORT=$(free_port)
    sed -e "s/127.0.0.1:$WP_PORT/127.0.0.1:$WP36_PORT/" \
        -e 's/^admin_database = "postgres"$/admin_database = "postgres"\nuser_prefix = "wp36_"/' \
        "$T/wp/waypoint.toml" >"$T/wp/waypoint36.toml"
    # A second listener of the same instance capped at TLS 1.2 (tls_max_version): the
    # pgx rows through it show what a TLS 1.2 resumption (no key exchange) buys on 3.6.
    WP36C_PORT=$(free_port)
    sed -n '/^\[\[listeners\]\]$/,$p' "$T/wp/waypoint36.toml" |
        sed -e 's/^name = "bench"$/name = "bench-tls12"\ntls_max_version = "1.2"/' \
            -e "s/127.0.0.1:$WP36_PORT/127.0.0.1:$WP36C_PORT/" -e 's/^user_prefix = "wp36_"$/user_prefix = "wp36c_"/' \
            >>"$T/wp/waypoint36.toml"
    say "starting Waypoint ($("$WP36" -version)) on $WP36_PORT and $WP36C_PORT (TLS 1.2 at most)"
    $BENCH_WRAP "$WP36" -config "$T/wp/waypoint36.toml" 2>"$T/wp/waypoint36.log" &
    WP36_PID=$!
    PIDS+=("$WP36_PID")
    wait_for 180 pg_isready -q -h 127.0.0.1 -p "$WP36_PORT" || die "Waypoint 3.6 did not start: $(tail -5 "$T/wp/waypoint36.log")"
fi
# The pgx connect loop (bench/tlsconnect), built with Go when Go is there.
TLSCONNECT=""
if command -v go >/dev/null 2>&1; then
    (cd "$SRC/bench/tlsconnect" && go build -mod=readonly -buildvcs=false -o "$T/tlsconnect" .) &&
        TLSCONNECT=$T/tlsconnect || say "could not build bench/tlsconnect: no pgx rows"
fi

# --- the base build (BENCH_WAYPOINT_BASE): connect rows against this build -------------
if [ -n "$WPBASE" ]; then
    [ -x "$WPBASE" ] || die "BENCH_WAYPOINT_BASE=$WPBASE is not an executable"
    WPB_PORT=$(free_port)
    sed -e "s/127.0.0.1:$WP_PORT/127.0.0.1:$WPB_PORT/" \
        -e 's/^admin_database = "postgres"$/admin_database = "postgres"\nuser_prefix = "wpb_"/' \
        "$T/wp/waypoint.toml" >"$T/wp/waypoint-base.toml"
    "$WPBASE" -config "$T/wp/waypoint-base.toml" 2>"$T/wp/waypoint-base.log" &
    WPB_PID=$!
    PIDS+=("$WPB_PID")
    wait_for 180 pg_isready -q -h 127.0.0.1 -p "$WPB_PORT" || die "Waypoint (base) did not start: $(tail -5 "$T/wp/waypoint-base.log")"
fi

# --- helpers --------------------------------------------------------------------------
use_path() { # sets libpq environment for a path
    export PGHOST=127.0.0.1 PGDATABASE=appdb PGSSLMODE=${SSLMODE:-disable}
    case $1 in
    direct) export PGPORT=$PG_PORT PGUSER=bench PGPASSWORD=benchpw ;;
    pgbouncer) export PGPORT=${PGB_USE_PORT:-$PGB_PORT} PGUSER=bench PGPASSWORD=benchpw ;;
    waypoint) export PGPORT=$WP_PORT PGUSER=anyone PGPASSWORD=ignored ;;
    wpmetrics) export PGPORT=$WPM_PORT PGUSER=anyone PGPASSWORD=ignored ;;
    wpredis) export PGPORT=$WPR_PORT PGUSER=anyone PGPASSWORD=ignored ;;
    wpbase) export PGPORT=$WPB_PORT PGUSER=anyone PGPASSWORD=ignored ;;
    esac
}

median() { sort -g | awk '{v[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
cpu_ms() { awk -v t="$1" -v n="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.2f", n ? t/hz*1000/n : 0}'; } # ticks, count
# The whole machine's busy ticks (all CPUs), and PostgreSQL's: every postgres process
# alive, with what the postmaster has reaped (cutime), so ended backends still count.
machine_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
pg_ticks() { cat /proc/[0-9]*/stat 2>/dev/null | awk '$2 == "(postgres)" {s += $14+$15+$16+$17} END {print s+0}'; }

R=$T/results
mkdir -p "$R"
record() { echo "$3" >>"$R/$1.$2"; } # record WORKLOAD PATH VALUE

run_pgbench() { # run_pgbench WORKLOAD PATH pgbench-args...
    local w=$1 p=$2
    shift 2
    use_path "$p"
    local out
    [ "$p" = wpmetrics ] && touch "$T/wp/scraping"
    out=$(pgbench -n -T "$SECS" "$@" 2>&1) || { echo "$out" >&2; die "pgbench failed on $p ($w)"; }
    rm -f "$T/wp/scraping"
    if echo "$out" | grep -q "number of failed transactions: [1-9]"; then
        echo "$out" >&2
        die "pgbench reported failures on $p ($w)"
    fi
    record "$w" "$p" "$(echo "$out" | awk '/^tps = /{print $3; exit}')"
    record "$w.lat" "$p" "$(echo "$out" | awk '/^latency average = /{print $4; exit}')"
    record "$w.tx" "$p" "$(echo "$out" | awk '/number of transactions actually processed/{print $NF; exit}')"
}

steady() {
    local mode clients
    for mode in simple prepared; do
        for clients in 1 8 32; do
            local w="select-$mode-c$clients"
            [[ $w =~ $ONLY ]] || continue
            for p in $PATHS; do
                [ "$p" = wpmetrics ] && [ "$w" != select-simple-c8 ] && continue
                [ "$p" = wpredis ] || [ "$p" = wpbase ] && continue
                local before=0 pid=""
                [ "$p" = waypoint ] && pid=$WP_PID
                [ "$p" = pgbouncer ] && pid=$(cat "$T/pgb/pgbouncer.pid")
                [ -n "$pid" ] && before=$(cpu_ticks "$pid")
                run_pgbench "$w" "$p" -S -M "$mode" -c "$clients" -j "$((clients < 2 ? 1 : 2))"
                if [ -n "$pid" ] && [ "$clients" = 8 ] && [ "$mode" = simple ]; then
                    local ticks=$(($(cpu_ticks "$pid") - before)) tx
                    tx=$(tail -1 "$R/$w.tx.$p")
                    record "cpu-per-10k" "$p" "$(awk -v t="$ticks" -v n="$tx" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.3f", t/hz*10000/n}')"
                fi
            done
        done
    done
}

connects() { # sslmode prefer (libpq's default: TLS wherever offered) and disable
    local clients sslm
    for sslm in prefer disable; do
        for clients in 1 4; do
            local w="connect-$sslm-c$clients"
            [[ $w =~ $ONLY ]] || continue
            for p in $PATHS; do
                # CPU ms per connect of the proxy serving this path (the trust PgBouncer,
                # or Waypoint and its stand-in)
                local proxy="" proxy0=0 si0=0
                [ "$p" = waypoint ] && proxy=$WP_PID
                [ "$p" = wpbase ] && proxy=$WPB_PID
                [ "$p" = pgbouncer ] && proxy=$(cat "$T/pgbt/pgbouncer.pid")
                [ -n "$proxy" ] && proxy0=$(cpu_ticks "$proxy")
                si0=$(cpu_ticks "$STANDIN_PID")
                PGB_USE_PORT=$PGBT_PORT SSLMODE=$sslm run_pgbench "$w" "$p" -C -S -c "$clients" -j "$((clients < 2 ? 1 : 2))"
                local n
                n=$(tail -1 "$R/$w.tx.$p")
                case $p in
                waypoint) echo "$(cpu_ms "$(($(cpu_ticks "$proxy") - proxy0))" "$n") $(cpu_ms "$(($(cpu_ticks "$STANDIN_PID") - si0))" "$n")" >>"$R/$w.cpu" ;;
                pgbouncer) echo "$(cpu_ms "$(($(cpu_ticks "$proxy") - proxy0))" "$n")" >>"$R/$w.cpu.pgbouncer" ;;
                wpbase) echo "$(cpu_ms "$(($(cpu_ticks "$proxy") - proxy0))" "$n")" >>"$R/$w.cpu.wpbase" ;;
                esac
            done
        done
    done
}

tls_steady() {
    local w="select-tls-c8"
    [[ $w =~ $ONLY ]] || return 0
    for p in $PATHS; do
        [ "$p" = wpmetrics ] || [ "$p" = wpredis ] || [ "$p" = wpbase ] && continue
        SSLMODE=require run_pgbench "$w" "$p" -S -c 8 -j 2
    done
}

# tls_rows: TLS connects, side by side. tls-lib-*: libpq (pgbench -C -S) through the
# 2.28 and the 3.6 Waypoint; tls-pgx-*: the pgx loop, full handshakes and resuming
# (ClientSessionCache), through the trust PgBouncer (client TLS on), Waypoint 2.28 and
# Waypoint 3.6. Each records connects/s and the proxy's CPU ms per connect.
tls_proxy_pid() {
    case $1 in
    pgbouncer) cat "$T/pgbt/pgbouncer.pid" ;;
    waypoint) echo "$WP_PID" ;;
    wp36 | wp36c) echo "$WP36_PID" ;;
    esac
}
tls_rows() {
    local paths="waypoint" sslm c w p pid t0 n
    [ -n "$WP36_PORT" ] && paths="waypoint wp36"
    for sslm in prefer require; do
        for c in 1 4; do
            w="tls-lib-$sslm-c$c"
            [[ $w =~ $ONLY ]] || continue
            for p in $paths; do
                pid=$(tls_proxy_pid "$p")
                t0=$(cpu_ticks "$pid")
                if [ "$p" = wp36 ]; then
                    PGHOST=127.0.0.1 PGPORT=$WP36_PORT PGUSER=anyone PGPASSWORD=ignored PGDATABASE=appdb \
                        PGSSLMODE=$sslm run_pgbench_env "$w" "$p" -C -S -c "$c" -j "$((c < 2 ? 1 : 2))"
                else
                    SSLMODE=$sslm run_pgbench "$w" "$p" -C -S -c "$c" -j "$((c < 2 ? 1 : 2))"
                fi
                n=$(tail -1 "$R/$w.tx.$p")
                record "$w.cpu" "$p" "$(cpu_ms "$(($(cpu_ticks "$pid") - t0))" "$n")"
            done
        done
    done
    [ -n "$TLSCONNECT" ] || return 0
    local mode url out
    for mode in full resume; do
        for c in 1 4; do
            w="tls-pgx-$mode-c$c"
            [[ $w =~ $ONLY ]] || continue
            for p in pgbouncer $paths $([ -n "$WP36_PORT" ] && echo wp36c); do
                case $p in
                pgbouncer) url="postgres://bench:benchpw@127.0.0.1:$PGBT_PORT/appdb?sslmode=require" ;;
                waypoint) url="postgres://anyone:ignored@127.0.0.1:$WP_PORT/appdb?sslmode=require" ;;
                wp36) url="postgres://anyone:ignored@127.0.0.1:$WP36_PORT/appdb?sslmode=require" ;;
                wp36c) url="postgres://anyone:ignored@127.0.0.1:$WP36C_PORT/appdb?sslmode=require" ;;
                esac
                pid=$(tls_proxy_pid "$p")
                t0=$(cpu_ticks "$pid")
                local m0 pg0 si0
                m0=$(machine_ticks) pg0=$(pg_ticks) si0=$(cpu_ticks "$STANDIN_PID")
                out=$("$TLSCONNECT" -url "$url" -seconds "$SECS" -clients "$c" $([ $mode = resume ] && echo -resume)) ||
                    die "tlsconnect failed on $p ($w)"
                read -r _ n _ secs _ res <<<"$out"
                record "$w" "$p" "$(awk -v n="$n" -v s="$secs" 'BEGIN{printf "%.1f", n/s}')"
                record "$w.resumed" "$p" "$(awk -v n="$n" -v r="$res" 'BEGIN{printf "%.3f", n ? r/n : 0}')"
                record "$w.cpu" "$p" "$(cpu_ms "$(($(cpu_ticks "$pid") - t0))" "$n")"
                # where the machine's CPU went: the cap on connects/s once both cores are busy
                record "$w.machine" "$p" "$(cpu_ms "$(($(machine_ticks) - m0))" "$n")"
                record "$w.pg" "$p" "$(cpu_ms "$(($(pg_ticks) - pg0))" "$n")"
                record "$w.standin" "$p" "$(cpu_ms "$(($(cpu_ticks "$STANDIN_PID") - si0))" "$n")"
            done
        done
    done
}

# run_pgbench with the caller's libpq environment (for paths use_path does not know).
run_pgbench_env() {
    local w=$1 p=$2 out
    shift 2
    out=$(pgbench -n -T "$SECS" "$@" 2>&1) || { echo "$out" >&2; die "pgbench failed on $p ($w)"; }
    record "$w" "$p" "$(echo "$out" | awk '/^tps = /{print $3; exit}')"
    record "$w.tx" "$p" "$(echo "$out" | awk '/number of transactions actually processed/{print $NF; exit}')"
}

bulk() {
    local rows=$((BULK_MB * 1024)) mode
    for mode in disable require; do
        local w="copy-out-$mode"
        [[ $w =~ $ONLY ]] || continue
        for p in $PATHS; do
            [ "$p" = wpmetrics ] || [ "$p" = wpredis ] || [ "$p" = wpbase ] && continue
            SSLMODE=$mode use_path "$p"
            local t0 t1 bytes
            t0=$(date +%s%N)
            bytes=$(psql -X -q -c "COPY (SELECT repeat('x', 1017) FROM generate_series(1, $rows)) TO STDOUT" | wc -c)
            t1=$(date +%s%N)
            record "$w" "$p" "$(awk -v b="$bytes" -v ns=$((t1 - t0)) 'BEGIN{printf "%.1f", b/1048576/(ns/1e9)}')"
        done
    done
}

rss_kib() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }

memory() {
    [[ idle =~ $ONLY ]] || [[ $ONLY == . ]] || return 0
    cc -O2 -o "$T/idle_conns" "$SRC/bench/idle_conns.c" -I"$(pg_config --includedir)" -lpq
    use_path waypoint
    local base n
    for n in $IDLE_COUNTS; do
        base=$(rss_kib "$WP_PID")
        coproc IDLE { "$T/idle_conns" "$n"; }
        local line
        read -r line <&"${IDLE[0]}" || die "idle_conns failed for $n"
        local rss
        rss=$(rss_kib "$WP_PID")
        echo "$n $base $rss" >>"$R/idle"
        exec {IDLE[1]}>&-
        wait "$IDLE_PID" || true
    done
}

# A parked backend session's memory: Waypoint's own share is logged by the pool
# (event=pool_park bytes=, at log_level debug); the PostgreSQL backend it keeps is
# measured here (Pss and Private_Dirty of one parked backend, from smaps_rollup).
parked_memory() {
    [[ connect =~ $ONLY ]] || [[ $ONLY == . ]] || [[ $ONLY =~ connect ]] || return 0
    local pid
    pid=$("$SRC/test/support/pgcluster.sh" psql "$T/pg" -d appdb -qAt \
        -c "SELECT pid FROM pg_stat_activity WHERE query = 'DISCARD ALL' AND state = 'idle' LIMIT 1" 2>/dev/null || true)
    [ -n "$pid" ] && [ -r "/proc/$pid/smaps_rollup" ] || return 0
    awk '/^Pss:/{p=$2} /^Private_Dirty:/{d=$2} END{print p, d}' "/proc/$pid/smaps_rollup" >"$R/parked"
}

# BENCH_HOLD=FILE: set everything up, write the paths' libpq settings to FILE, and wait
# until FILE is removed (for profiling by hand: perf, strace, pgbench with other knobs).
if [ -n "${BENCH_HOLD:-}" ]; then
    for p in $PATHS; do (use_path "$p"; echo "$p: PGHOST=$PGHOST PGPORT=$PGPORT PGUSER=$PGUSER PGPASSWORD=$PGPASSWORD PGDATABASE=$PGDATABASE"); done >"$BENCH_HOLD"
    echo "pgbouncer-trust: PGPORT=$PGBT_PORT; waypoint pid $WP_PID, stand-in pid $STANDIN_PID, dir $T" >>"$BENCH_HOLD"
    say "holding; rm $BENCH_HOLD to end"
    while [ -e "$BENCH_HOLD" ]; do sleep 1; done
    exit 0
fi

# --- run ------------------------------------------------------------------------------
for round in $(seq 1 "$ROUNDS"); do
    say "round $round/$ROUNDS"
    steady
    connects
    tls_steady
    tls_rows
    bulk
done
parked_memory
memory

# --- report ---------------------------------------------------------------------------
fmt_ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b+0 == 0 || a == "nan") print "-"; else printf "%.2f", a/b }'; }
fmt_num() { awk -v v="$1" 'BEGIN{ if (v == "nan") print "-"; else if (v+0 >= 100) printf "%.0f", v; else if (v+0 >= 1) printf "%.1f", v; else printf "%.3f", v }'; }
med() { if [ -s "$1" ]; then median <"$1"; else echo nan; fi; }
row() { # row LABEL FILEBASE: medians per path, then Waypoint/direct and Waypoint/PgBouncer
    local d g w
    d=$(med "$R/$2.direct")
    g=$(med "$R/$2.pgbouncer")
    w=$(med "$R/$2.waypoint")
    [ "$d$g$w" = nannannan ] && return 0
    echo "| $1 | $(fmt_num "$d") | $(fmt_num "$g") | $(fmt_num "$w") | $(fmt_ratio "$w" "$d") | $(fmt_ratio "$w" "$g") |"
}

echo
echo "Machine: $(nproc) cores ($(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r); $(postgres -V 2>/dev/null || "$(pg_config --bindir)/postgres" -V), $(pgbouncer -V 2>/dev/null | head -1)"
echo "Rounds: $ROUNDS (median shown), ${SECS}s per pgbench run, pgbench scale $SCALE, bulk ${BULK_MB} MiB per COPY"
echo
echo "| workload | direct | PgBouncer | Waypoint | Waypoint/direct | Waypoint/PgBouncer |"
echo "|---|---|---|---|---|---|"
for mode in simple prepared; do
    for c in 1 8 32; do row "select-only $mode, $c clients: TPS" "select-$mode-c$c"; done
done
row "select-only simple, 8 clients, sslmode=require: TPS" select-tls-c8
for sslm in prefer disable; do
    for c in 1 4; do row "connect per transaction (-C -S), $c clients, sslmode=$sslm: connects/s (PgBouncer: trust client auth)" "connect-$sslm-c$c"; done
done
row "COPY TO STDOUT, plain: MB/s" copy-out-disable
row "COPY TO STDOUT, sslmode=require: MB/s" copy-out-require
for mode in simple prepared; do
    for c in 1 8 32; do row "select-only $mode, $c clients: mean latency ms (lower is better)" "select-$mode-c$c.lat"; done
done
row "select-only simple, 8 clients, TLS: mean latency ms (lower is better)" select-tls-c8.lat
for sslm in prefer disable; do
    for c in 1 4; do row "connect per transaction, $c clients, sslmode=$sslm: mean latency ms (lower is better)" "connect-$sslm-c$c.lat"; done
done
if [ -s "$R/cpu-per-10k.waypoint" ]; then
    g=$(med "$R/cpu-per-10k.pgbouncer")
    w=$(med "$R/cpu-per-10k.waypoint")
    echo "| proxy CPU s per 10k transactions (select-only simple, 8 clients; lower is better) | - | $(fmt_num "$g") | $(fmt_num "$w") | - | $(fmt_ratio "$w" "$g") |"
fi
for sslm in prefer disable; do
    for c in 1 4; do
        f="$R/connect-$sslm-c$c.cpu"
        [ -s "$f" ] || continue
        g=nan
        [ -s "$f.pgbouncer" ] && g=$(median <"$f.pgbouncer")
        echo "| proxy CPU ms per connect, $c clients, sslmode=$sslm: PgBouncer; Waypoint (LocalAPI stand-in) | - | $(fmt_num "$g") | $(awk '{print $1}' "$f" | median) ($(awk '{print $2}' "$f" | median)) | - | - |"
    done
done
onoff_row() { # onoff_row PATH LABEL FILEBASE: Waypoint (off) against the PATH instance (on)
    local off on
    off=$(med "$R/$3.waypoint")
    on=$(med "$R/$3.$1")
    [ "$on" = nan ] && return 0
    echo "| $2 | $(fmt_num "$off") | $(fmt_num "$on") | $(fmt_ratio "$on" "$off") |"
}
mrow() { onoff_row wpmetrics "$@"; } # metrics off / on
if ls "$R"/*.wpmetrics >/dev/null 2>&1; then
    echo
    echo "Metrics endpoint: the same workloads through a second Waypoint with [metrics] on, scraped every 100 ms while its rows ran ($(wc -l <"$T/wp/scrapes") scrapes)."
    echo
    echo "| workload | metrics off | metrics on | on/off |"
    echo "|---|---|---|---|"
    for sslm in prefer disable; do
        for c in 1 4; do mrow "connect per transaction (-C -S), $c clients, sslmode=$sslm: connects/s" "connect-$sslm-c$c"; done
    done
    mrow "select-only simple, 8 clients: TPS" select-simple-c8
fi
# --- [redis] on vs off (its own section: other tables above are per path) ------------
rrow() { onoff_row wpredis "$@"; } # [redis] off / on
if ls "$R"/*.wpredis >/dev/null 2>&1; then
    echo
    echo "Fleet: the connect rows through a third Waypoint with [redis] on (a local redis-server; one Lua acquire at connect, one release at the end; target on/off >= 0.9)."
    echo
    echo "| workload | [redis] off | [redis] on | on/off |"
    echo "|---|---|---|---|"
    for sslm in prefer disable; do
        for c in 1 4; do rrow "connect per transaction (-C -S), $c clients, sslmode=$sslm: connects/s" "connect-$sslm-c$c"; done
    done
    for sslm in prefer disable; do
        for c in 1 4; do rrow "connect per transaction, $c clients, sslmode=$sslm: mean latency ms (lower is better)" "connect-$sslm-c$c.lat"; done
    done
fi
if ls "$R"/tls-*.waypoint >/dev/null 2>&1; then
    echo
    echo "TLS connects (issue 18): libpq through Waypoint built with mbedTLS 2.28 and with 3.6; a pgx connect loop (bench/tlsconnect, one SELECT per connect) with full handshakes and resuming with ClientSessionCache, against the trust PgBouncer with client TLS. connects/s, median of rounds; in brackets the proxy's CPU ms per connect (and the share of resumed handshakes the client saw)."
    echo
    echo "The column \"3.6, TLS 1.2\" is a listener of the 3.6 Waypoint with tls_max_version = \"1.2\" (pgx rows only)."
    echo
    echo "| workload | PgBouncer | Waypoint 2.28 | Waypoint 3.6 | 3.6, TLS 1.2 | 3.6/2.28 | Waypoint 2.28/PgBouncer | Waypoint 3.6/PgBouncer | 3.6, TLS 1.2/PgBouncer |"
    echo "|---|---|---|---|---|---|---|---|---|"
    tcell() { # tcell W P: "connects/s (cpu ms[, resumed share])"
        local v
        v=$(med "$R/$1.$2")
        [ "$v" = nan ] && { echo "-"; return; }
        local extra
        extra=$(fmt_num "$(med "$R/$1.cpu.$2")")
        [ -s "$R/$1.resumed.$2" ] && extra="$extra, $(med "$R/$1.resumed.$2")"
        echo "$(fmt_num "$v") ($extra)"
    }
    for w in tls-lib-prefer-c1 tls-lib-prefer-c4 tls-lib-require-c1 tls-lib-require-c4 \
        tls-pgx-full-c1 tls-pgx-full-c4 tls-pgx-resume-c1 tls-pgx-resume-c4; do
        [ -s "$R/$w.waypoint" ] || continue
        g=$(med "$R/$w.pgbouncer")
        a=$(med "$R/$w.waypoint")
        b=$(med "$R/$w.wp36")
        cc=$(med "$R/$w.wp36c")
        echo "| $w | $(tcell "$w" pgbouncer) | $(tcell "$w" waypoint) | $(tcell "$w" wp36) | $(tcell "$w" wp36c) | $(fmt_ratio "$b" "$a") | $(fmt_ratio "$a" "$g") | $(fmt_ratio "$b" "$g") | $(fmt_ratio "$cc" "$g") |"
    done
fi
if ls "$R"/tls-pgx-*.machine.* >/dev/null 2>&1; then
    echo
    echo "Where the machine's CPU goes in the pgx rows: ms per connect on both cores together (all processes), and its parts: the proxy, the LocalAPI stand-in answering WhoIs (tailscaled's work in a deployment), PostgreSQL (all backends: the client's SELECT, DISCARD ALL, Waypoint's role check), and the rest (the pgx client, the kernel). Once both cores are busy, connects/s is about 2000 / the machine's ms."
    echo
    echo "| workload | path | connects/s | machine | proxy | stand-in | PostgreSQL | rest |"
    echo "|---|---|---|---|---|---|---|---|"
    for w in tls-pgx-full-c1 tls-pgx-full-c4 tls-pgx-resume-c1 tls-pgx-resume-c4; do
        for p in pgbouncer waypoint wp36 wp36c; do
            [ -s "$R/$w.machine.$p" ] || continue
            mm=$(med "$R/$w.machine.$p") pc=$(med "$R/$w.cpu.$p") sc=$(med "$R/$w.standin.$p") gc=$(med "$R/$w.pg.$p")
            rest=$(awk -v m="$mm" -v a="$pc" -v b="$sc" -v c="$gc" 'BEGIN{printf "%.2f", m-a-b-c}')
            echo "| $w | $p | $(fmt_num "$(med "$R/$w.$p")") | $(fmt_num "$mm") | $(fmt_num "$pc") | $(fmt_num "$sc") | $(fmt_num "$gc") | $(fmt_num "$rest") |"
        done
    done
fi
if ls "$R"/*.wpbase >/dev/null 2>&1; then
    echo
    echo "This build against the base build (BENCH_WAYPOINT_BASE=$WPBASE), same configuration, connect rows; in brackets each one's CPU ms per connect (Waypoint alone, without the stand-in)."
    echo
    echo "| workload | base | this build | this/base |"
    echo "|---|---|---|---|"
    for sslm in prefer disable; do
        for c in 1 4; do
            w=connect-$sslm-c$c
            [ -s "$R/$w.wpbase" ] || continue
            b=$(med "$R/$w.wpbase")
            a=$(med "$R/$w.waypoint")
            bc=$(awk '{print $1}' "$R/$w.cpu.wpbase" | median)
            ac=$(awk '{print $1}' "$R/$w.cpu" | median)
            echo "| $w: connects/s | $(fmt_num "$b") ($(fmt_num "$bc")) | $(fmt_num "$a") ($(fmt_num "$ac")) | $(fmt_ratio "$a" "$b") |"
        done
    done
fi
if [ -s "$R/parked" ]; then
    read -r pss dirty <"$R/parked"
    echo
    echo "Parked backend session (after the connect rows): the PostgreSQL backend it keeps has Pss $pss KiB, Private_Dirty $dirty KiB."
fi
if [ -f "$R/idle" ]; then
    echo
    echo "| idle Waypoint connections | Waypoint RSS before, KiB | RSS with them, KiB | KiB per connection |"
    echo "|---|---|---|---|"
    while read -r n base rss; do
        echo "| $n | $base | $rss | $(awk -v a="$rss" -v b="$base" -v n="$n" 'BEGIN{printf "%.1f", (a-b)/n}') |"
    done <"$R/idle"
fi
