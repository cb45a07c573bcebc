#!/bin/bash
# Waypoint soak (issue 17, "Done when"): minutes of trouble through the real binary, then
# the question whether everything came back.
#
#   bench/soak.sh [BUILD_DIR]        (make soak; SOAK_SECONDS=30 make soak for a quick check)
#
# Setup: a throwaway PostgreSQL cluster, the LocalAPI stand-in (alice, readwrite on
# appdb), one Waypoint with [metrics] on and revalidation every second; the e2e
# harness's pieces (test/e2e/lib.sh). Then two phases of SOAK_SECONDS/2 each, during
# which all of this runs at once:
#   storm    pgbench -C (a connection per transaction), 4 clients, SELECT 1, at most
#            SOAK_STORM_RATE (100) connects a second
#   steady   pgbench, 4 clients on their connections, INSERT, at most SOAK_STEADY_RATE
#            (500) a second (rates keep the soak from starving a shared machine)
#   vanish   bench/soak_client.py, 2 workers: clients that leave mid-transaction and
#            mid-COPY (RST and FIN) and send Terminate mid-statement
#   chaos    every SOAK_CHAOS_EVERY seconds, in turn: the grant revoked (restored 2 s
#            later), every wp_ backend terminated (pg_terminate_backend, the admin's
#            too), the configuration reloaded (SIGHUP), PostgreSQL restarted (fast);
#            the last SOAK_CALM (5) seconds of a phase have load but no chaos, so what
#            the vanished clients left behind is not cleaned up by a chaos step (a
#            restart ends every backend) before the soak looks
# After each phase the load stops and the soak waits (up to SOAK_SETTLE seconds) for
# Waypoint, then for the wp_ backends, to settle, and samples both. It passes when:
#   - after the last phase, Waypoint's threads are back to the start (<=), and so are
#     its fds, counting neither parked backend sessions
#     (waypoint_parked_backend_sessions) nor admin connections
#     (waypoint_admin_connections), which are kept on purpose, nor the LocalAPI
#     client's idle handle cache (unix sockets, bounded);
#   - RSS after phase 2 is within SOAK_RSS_SLACK_KB (default 4096) of RSS after phase 1:
#     memory does not grow with the soak's length (phase 1 absorbs the warm-up:
#     allocator arenas, pool, caches);
#   - after each phase, no backend of a wp_ role (other than the admin, wp_admin) is
#     running, idle in a transaction, or holding a lock (pg_stat_activity, pg_locks),
#     and no more are idle than Waypoint has parked.
# Prints the numbers and "soak: PASS" or "soak: FAIL (reasons)"; exits 1 on FAIL.
# Knobs: SOAK_SECONDS (240), SOAK_CHAOS_EVERY (4), SOAK_CALM (5), SOAK_SETTLE (30),
# SOAK_RSS_SLACK_KB (4096), SOAK_PG (PostgreSQL major version: 15 is Debian's, others
# from scripts/pg-versions.sh under /var/cache/waypoint/pg; default Debian's newest) or
# WP_PG_BIN (a bin dir).
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-build}
case $BUILD in /*) ;; *) BUILD=$SRC/$BUILD ;; esac
export WP_SOURCE_DIR=$SRC WP_BINARY_DIR=$BUILD
if [ -n "${SOAK_PG:-}" ] && [ -z "${WP_PG_BIN:-}" ]; then
    WP_PG_BIN=/var/cache/waypoint/pg/$SOAK_PG/bin
    [ -x "/usr/lib/postgresql/$SOAK_PG/bin/initdb" ] && WP_PG_BIN=/usr/lib/postgresql/$SOAK_PG/bin
    [ -x "$WP_PG_BIN/initdb" ] || { echo "soak: no PostgreSQL $SOAK_PG (scripts/pg-versions.sh $SOAK_PG)" >&2; exit 2; }
    export WP_PG_BIN
fi
SOAK_SECONDS=${SOAK_SECONDS:-240}
CHAOS_EVERY=${SOAK_CHAOS_EVERY:-4}
SETTLE=${SOAK_SETTLE:-30}
CALM=${SOAK_CALM:-5}
RSS_SLACK=${SOAK_RSS_SLACK_KB:-4096}
PHASE=$((SOAK_SECONDS / 2))
[ "$PHASE" -gt "$CALM" ] || { echo "soak: SOAK_SECONDS must be more than 2 * SOAK_CALM" >&2; exit 2; }

# shellcheck source=../test/e2e/lib.sh
. "$SRC/test/e2e/lib.sh"
e2e_init
say() { echo "soak: $*" >&2; }

e2e_cluster
admin_sql -c "CREATE TABLE soak_t (id bigserial PRIMARY KEY, v int)"
GRANT='{"appdb": {"permissions": ["readwrite"]}}'
e2e_identity "$GRANT"
e2e_standin
METRICS_PORT=$(free_port)
E2E_TOP="[revalidation]
interval = \"1s\"
[metrics]
listen = \"127.0.0.1:$METRICS_PORT\"" e2e_config "max_connections = 200"
e2e_waypoint
say "PostgreSQL $PG_MAJOR on $PG_PORT, waypoint pid $WP_PID on $WP_PORT, $SOAK_SECONDS s in 2 phases"

export PGHOST=127.0.0.1 PGPORT=$WP_PORT PGUSER=alice PGDATABASE=appdb PGSSLMODE=disable
echo 'SELECT 1;' >"$T/select.sql"
echo 'INSERT INTO soak_t (v) VALUES (1);' >"$T/insert.sql"

# ------------------------------------------------------------- measurements ----

metric() { # sum of a metric's series
    curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" |
        awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { print s + 0 }'
}
proc_field() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$WP_PID/status"; }

# fd_counts: sets FD_TCP, FD_UNIX, FD_OTHER: Waypoint's fds by kind (a socket's inode
# looked up in /proc/net/{tcp,tcp6,unix}; files, pipes, eventfds are "other").
fd_counts() {
    read -r FD_TCP FD_UNIX FD_OTHER < <(
        for f in /proc/"$WP_PID"/fd/*; do readlink "$f" 2>/dev/null || true; done |
            awk 'FNR == 1 { file++ }
                 file == 1 && FNR > 1 { unix[$7] = 1; next }
                 (file == 2 || file == 3) && FNR > 1 { tcp[$10] = 1; next }
                 file == 4 {
                     if ($0 ~ /^socket:\[[0-9]+\]$/) {
                         i = substr($0, 9, length($0) - 9)
                         if (i in tcp) t++; else if (i in unix) u++; else o++
                     } else o++
                 }
                 END { print t + 0, u + 0, o + 0 }' /proc/net/unix /proc/net/tcp /proc/net/tcp6 -)
}

# sample: sets THREADS, FDS, FD_TCP/UNIX/OTHER, PARKED, ADMIN, ADJ (TCP sockets minus
# parked and admin connections: listeners and what leaked), RSS, ACTIVE. The scrape is a
# socket of its own while it runs, so the fds are counted between scrapes, and the sample
# is retaken if the kept connections changed meanwhile.
sample() {
    local p2 a2 tries=0
    while :; do
        PARKED=$(metric waypoint_parked_backend_sessions)
        ADMIN=$(metric waypoint_admin_connections)
        ACTIVE=$(metric waypoint_active_sessions)
        FDS=$(find "/proc/$WP_PID/fd" -mindepth 1 -maxdepth 1 | wc -l)
        fd_counts
        THREADS=$(proc_field Threads)
        RSS=$(proc_field VmRSS)
        p2=$(metric waypoint_parked_backend_sessions)
        a2=$(metric waypoint_admin_connections)
        tries=$((tries + 1))
        [ "$p2" != "$PARKED" ] || [ "$a2" != "$ADMIN" ] && [ "$tries" -lt 5 ] || break
    done
    ADJ=$((FD_TCP - PARKED - ADMIN))
}
# fd_list: "FD TARGET" for each of Waypoint's fds (sockets with their TCP peer, from ss).
fd_list() {
    local f fd tgt
    for f in /proc/"$WP_PID"/fd/*; do
        fd=${f##*/}
        tgt=$(readlink "$f" 2>/dev/null) || continue
        case $tgt in socket:*)
            tgt+=" $({ ss -Htanp; ss -Haxp; ss -Haup; } 2>/dev/null | grep -F "pid=$WP_PID,fd=$fd)" |
                sed 's/ *users:.*//; s/  */ /g' | head -1 || true)" ;;
        esac
        echo "$fd $tgt"
    done
}
show() {
    echo "threads $THREADS, fds $FDS (TCP $FD_TCP = parked $PARKED + admin $ADMIN + $ADJ others;" \
        "unix $FD_UNIX; other $FD_OTHER), RSS $RSS KiB, active $ACTIVE"
}
# settled: the sample is back to the start: no session, threads and fds as at the start;
# unix sockets may exceed it by the LocalAPI client's idle handle cache (lib/tailscale.c
# TS_IDLE_MAX = 8 handles, each a kept connection to tailscaled and curl's socketpair).
LOCALAPI_CACHE_FDS=24
settled() {
    [ "$ACTIVE" = 0 ] && [ "$THREADS" -le "$BASE_THREADS" ] && [ "$ADJ" -le "$BASE_ADJ" ] &&
        [ "$FD_OTHER" -le "$BASE_OTHER" ] && [ "$FD_UNIX" -le $((BASE_UNIX + LOCALAPI_CACHE_FDS)) ]
}

# pg_state: sets PG_RUNNING (wp_ backends not idle: running, idle in a transaction),
# PG_IDLE, PG_LOCKS (held by wp_ backends) and PG_WHAT (the first few not idle). The
# admin role (wp_admin here) is Waypoint's own and not counted.
pg_state() {
    local row
    row=$(super_sql -F'|' -c "
        WITH wp AS (SELECT * FROM pg_stat_activity
                     WHERE usename LIKE 'wp\_%' AND usename <> 'wp_admin')
        SELECT (SELECT count(*) FROM wp WHERE state IS DISTINCT FROM 'idle'),
               (SELECT count(*) FROM wp WHERE state = 'idle'),
               (SELECT count(*) FROM pg_locks l JOIN wp USING (pid)),
               (SELECT coalesce(string_agg(x, '; '), '') FROM (
                  SELECT pid || ' ' || usename || ' ' || coalesce(state, '?') || ' ' ||
                         left(query, 40) AS x
                    FROM wp WHERE state IS DISTINCT FROM 'idle' LIMIT 5) s)")
    IFS='|' read -r PG_RUNNING PG_IDLE PG_LOCKS PG_WHAT <<<"$row"
}

# ------------------------------------------------------------------- load ----

count_tx() { # adds pgbench's processed transactions to a tally file
    local n
    n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$2" | head -1)
    echo "${n:-0}" >>"$1"
}

storm() {
    while [ ! -e "$T/stop" ]; do
        pgbench -n -C -c 4 -j 2 -T 3 -R "${SOAK_STORM_RATE:-100}" -f "$T/select.sql" \
            >"$T/storm.out" 2>&1 || true
        count_tx "$T/storm.tx" "$T/storm.out"
    done
}

steady() {
    while [ ! -e "$T/stop" ]; do
        pgbench -n -c 4 -j 2 -T 5 -R "${SOAK_STEADY_RATE:-500}" -f "$T/insert.sql" \
            >"$T/steady.out" 2>&1 || true
        count_tx "$T/steady.tx" "$T/steady.out"
    done
}

CHAOS_N=0
declare -A CHAOS=([revoke]=0 [terminate]=0 [reload]=0 [restart]=0)
chaos_step() {
    local what
    what=$(echo revoke terminate reload restart | cut -d' ' -f$((CHAOS_N % 4 + 1)))
    CHAOS_N=$((CHAOS_N + 1))
    case $what in
    revoke)
        e2e_identity '{}'
        sleep 2 # the revocation has the revalidation interval (1 s) to act
        e2e_identity "$GRANT"
        ;;
    terminate)
        # (a backend may end between the lookup and the signal: no WARNING for that)
        super_sql -c "SET client_min_messages = error" \
            -c "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE usename LIKE 'wp\_%'" >/dev/null
        ;;
    reload) e2e_reload ;;
    restart)
        runuser -u postgres -- "$PG_BINDIR/pg_ctl" -D "$T/pg/data" -l "$T/pg/server.log" \
            -m fast -w -t 60 restart >"$T/restart.log" 2>&1 ||
            fail "PostgreSQL did not restart: $(cat "$T/restart.log")"
        ;;
    esac
    CHAOS[$what]=$((${CHAOS[$what]} + 1))
}

phase() {
    local n=$1 end=$((SECONDS + PHASE - CALM)) pids=()
    rm -f "$T/stop"
    storm &
    pids+=($!)
    steady &
    pids+=($!)
    python3 "$SRC/bench/soak_client.py" 127.0.0.1 "$WP_PORT" "$T/stop" "$T/vanish.$n" 2 &
    pids+=($!)
    E2E_PIDS+=("${pids[@]}")
    while [ "$SECONDS" -lt "$end" ]; do
        chaos_step
        sleep "$CHAOS_EVERY" # pacing the trouble, not waiting for a condition
    done
    e2e_identity "$GRANT"
    sleep "$CALM" # load without chaos: vanishing clients whose backends no restart ends
    touch "$T/stop"
    local p
    for p in "${pids[@]}"; do wait "$p" || true; done
}

# settle: waits until no session is active and threads/fds are back to the start (or
# SETTLE seconds passed); the last sample stays in the variables.
settle() {
    local deadline=$((SECONDS + SETTLE))
    while :; do
        sample
        settled && break
        [ "$SECONDS" -lt "$deadline" ] || break
        sleep 0.2
    done
}

# pg_settle: waits until no wp_ backend runs or holds a lock and no more are idle than
# parked (or SETTLE seconds passed).
pg_settle() {
    local deadline=$((SECONDS + SETTLE))
    while :; do
        pg_state
        sample
        [ "$PG_RUNNING" = 0 ] && [ "$PG_LOCKS" = 0 ] && [ "$PG_IDLE" -le "$PARKED" ] && break
        [ "$SECONDS" -lt "$deadline" ] || break
        sleep 0.2
    done
}

# ------------------------------------------------------------------- run ----

# Warm up (first connect, provisioning, the pool) and take the baseline at rest.
psql -X -qAt -c "SELECT 1" >/dev/null || fail "warm-up connection failed"
e2e_wait 10 "the warm-up session to end" '[ "$(metric waypoint_active_sessions)" = 0 ]'
sample
BASE_THREADS=$THREADS BASE_ADJ=$ADJ BASE_UNIX=$FD_UNIX BASE_OTHER=$FD_OTHER BASE="$(show)"
fd_list >"$T/fds.start"
say "start: $(show)"

pg_line() { echo "$PG_RUNNING running, $PG_IDLE idle ($PARKED parked), $PG_LOCKS locks"; }

phase 1
settle
P1="$(show)" RSS1=$RSS
say "after phase 1: $P1"
pg_settle
PG1="$(pg_line)" PG1_RUNNING=$PG_RUNNING PG1_LOCKS=$PG_LOCKS PG1_IDLE=$PG_IDLE PG1_PARKED=$PARKED
PG1_WHAT=$PG_WHAT
say "wp_ backends after phase 1: $PG1"

phase 2
settle
P2="$(show)" RSS2=$RSS END_THREADS=$THREADS END_ADJ=$ADJ END_ACTIVE=$ACTIVE
END_UNIX=$FD_UNIX END_OTHER=$FD_OTHER
say "after phase 2: $P2"
pg_settle
PG2="$(pg_line)"
say "wp_ backends after phase 2: $PG2"
fd_list >"$T/fds.end"

# ----------------------------------------------------------------- verdict ----

sum() { [ -f "$1" ] && awk '{ s += $1 } END { print s + 0 }' "$1" || echo 0; }
vanish() { cat "$T"/vanish.* 2>/dev/null | awk '{ c[$1] += $2 } END { for (k in c) printf "%s %d, ", k, c[k] }'; }
GROWTH=$((RSS2 - RSS1))
why=()
[ "$END_ACTIVE" = 0 ] || why+=("$END_ACTIVE sessions still active ${SETTLE}s after the load stopped")
[ "$END_THREADS" -le "$BASE_THREADS" ] || why+=("threads $END_THREADS > $BASE_THREADS at the start")
[ "$END_ADJ" -le "$BASE_ADJ" ] ||
    why+=("TCP sockets besides parked and admin connections: $END_ADJ > $BASE_ADJ at the start")
[ "$END_OTHER" -le "$BASE_OTHER" ] || why+=("fds that are not sockets: $END_OTHER > $BASE_OTHER at the start")
[ "$END_UNIX" -le $((BASE_UNIX + LOCALAPI_CACHE_FDS)) ] ||
    why+=("unix sockets: $END_UNIX > $BASE_UNIX at the start + $LOCALAPI_CACHE_FDS (LocalAPI handle cache)")
[ "$GROWTH" -le "$RSS_SLACK" ] || why+=("RSS grew $GROWTH KiB from phase 1 to phase 2 (slack $RSS_SLACK)")
pg_verdict() { # PHASE RUNNING LOCKS IDLE PARKED WHAT
    [ "$2" = 0 ] || why+=("after phase $1: $2 wp_ backends still running or in a transaction (first 5: $6)")
    [ "$3" = 0 ] || why+=("after phase $1: $3 locks held by wp_ backends")
    [ "$4" -le "$5" ] || why+=("after phase $1: $4 idle wp_ backends but $5 parked")
}
pg_verdict 1 "$PG1_RUNNING" "$PG1_LOCKS" "$PG1_IDLE" "$PG1_PARKED" "$PG1_WHAT"
pg_verdict 2 "$PG_RUNNING" "$PG_LOCKS" "$PG_IDLE" "$PARKED" "$PG_WHAT"

cat <<REPORT
soak: PostgreSQL $PG_MAJOR, $SOAK_SECONDS s (2 phases of $PHASE s), chaos every $CHAOS_EVERY s but the last $CALM s of each
soak: load: storm $(sum "$T/storm.tx") connect+SELECT, steady $(sum "$T/steady.tx") INSERT, vanished clients: $(vanish)
soak: chaos: revoke ${CHAOS[revoke]}, terminate ${CHAOS[terminate]}, reload ${CHAOS[reload]}, restart ${CHAOS[restart]}
soak: start:         $BASE
soak: after phase 1: $P1
soak: after phase 2: $P2
soak: RSS growth phase 1 -> 2: $GROWTH KiB (slack $RSS_SLACK KiB)
soak: wp_ backends (waited up to ${SETTLE}s after the load): phase 1: $PG1; phase 2: $PG2
REPORT
if [ "${#why[@]}" -eq 0 ]; then
    echo "soak: PASS"
    exit 0
fi
printf 'soak: FAIL: %s\n' "${why[@]}"
echo "soak: fds at the end that were not open at the start (parked and admin included):"
awk 'NR == FNR { start[$1] = $2; next } start[$1] != $2' "$T/fds.start" "$T/fds.end" | sed 's/^/soak:   fd /'
E2E_FAILED=1
exit 1
