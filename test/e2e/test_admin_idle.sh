#!/bin/bash
# Admin connections per database are closed once idle for [provisioning]
# admin_idle_timeout (issue 17, item 7): a caller visiting several databases leaves no
# admin session behind in any of them, what is in use stays, and /metrics shows the open
# and idle admin connections per database. Counted in pg_stat_activity (the server's own
# view), not in Waypoint's log.
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_cluster
DBS="db1 db2 db3"
for d in $DBS; do super_sql -c "CREATE DATABASE $d"; done
e2e_identity '{"appdb": {"permissions": ["readonly"]}, "db1": {"permissions": ["readonly"]},
  "db2": {"permissions": ["readonly"]}, "db3": {"permissions": ["readonly"]}}'
e2e_standin
METRICS_PORT=$(free_port)
E2E_TOP="[provisioning]
admin_idle_timeout = \"1s\"

[pool]
enabled = false

[metrics]
listen = \"127.0.0.1:$METRICS_PORT\""
e2e_config
e2e_waypoint
M="http://127.0.0.1:$METRICS_PORT"

# admin_conns DB: the admin role's sessions connected to DB.
admin_conns() {
    super_sql -c "SELECT count(*) FROM pg_stat_activity WHERE usename = 'wp_admin' AND datname = '$1'"
}
# metric NAME DB: the value of gauge NAME for pg-main and DB ('' when absent).
metric() {
    curl -sf "$M/metrics" | awk -v want="$1{listener=\"pg-main\",database=\"$2\"}" \
        '$1 == want { print $2 }'
}

for d in $DBS; do
    assert_eq 1 "$(wpsql "dbname=$d" -c "SELECT 1")" "a connect to $d"
    n=$(admin_conns "$d")
    [ "$n" -ge 1 ] || fail "no admin connection to $d right after the connect (got $n)"
done
pass "each visited database has an admin connection"

for d in $DBS; do
    e2e_wait 10 "the idle admin connections to $d to close" '[ "$(admin_conns '"$d"')" = 0 ]'
done
pass "idle admin connections are closed after admin_idle_timeout"
assert_eq 0 "$(metric waypoint_admin_connections db1)" "the gauge reads 0 open for db1"
assert_eq 0 "$(metric waypoint_admin_connections_idle db1)" "the gauge reads 0 idle for db1"

assert_eq 1 "$(wpsql "dbname=db2" -c "SELECT 1")" "db2 reopens an admin connection on demand"
n=$(admin_conns db2)
[ "$n" -ge 1 ] || fail "no admin connection to db2 after a new connect"
o=$(metric waypoint_admin_connections db2)
i=$(metric waypoint_admin_connections_idle db2)
[ -n "$o" ] && [ -n "$i" ] && [ "$i" -le "$o" ] ||
    fail "gauges for db2: open=$o idle=$i"
pass "the gauges show open ($o) and idle ($i) admin connections for db2"
e2e_wait 10 "db2's admin connection to close again" '[ "$(admin_conns db2)" = 0 ]'

# A connection checked out (a connect blocked on its role's backend lock, held here by
# hand until the checks are done) is never closed as idle.
LOCKER_OUT=$T/locker.out
"$PGCLUSTER" psql "$T/pg" -d db3 -qAt -c \
    "SELECT pg_advisory_lock(hashtextextended('waypoint:role:wp_alice_laptop_db3', 0)), pg_sleep(60)" \
    >"$LOCKER_OUT" 2>&1 &
E2E_PIDS+=($!)
LOCKER=$!
e2e_wait 10 "the hand-held role lock" \
    '[ "$(super_sql -c "SELECT count(*) FROM pg_locks WHERE locktype = '"'advisory'"' AND granted")" -ge 1 ]'
wpsql_bg "$T/blocked.out" "dbname=db3" -c "SELECT 1"
BLOCKED=$BG_PID
e2e_wait 10 "the blocked connect's admin session" \
    '[ "$(super_sql -c "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE a.usename = '"'wp_admin'"' AND NOT l.granted")" -ge 1 ]'
BUSY=$(super_sql -c "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE a.usename = 'wp_admin' AND NOT l.granted LIMIT 1")
# Longer than the idle timeout and more than one sweep: the busy connection survives.
e2e_wait 10 "the busy admin connection to be counted busy for over 1.5 s" \
    '[ "$(super_sql -c "SELECT (now() - backend_start) > interval '"'1.5 s'"' FROM pg_stat_activity WHERE pid = '"$BUSY"'")" = t ]'
assert_eq 1 "$(super_sql -c "SELECT count(*) FROM pg_stat_activity WHERE pid = $BUSY")" \
    "a checked-out admin connection is not closed as idle"
assert_eq 0 "$(metric waypoint_admin_connections_idle db3)" "the gauge reads 0 idle for db3 while busy"
o=$(metric waypoint_admin_connections db3)
[ "${o:-0}" -ge 1 ] || fail "the gauge reads $o open for db3 while a connection is busy"
# Let the connect go: end the session holding the role's lock.
super_sql -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename <> 'wp_admin' AND query LIKE 'SELECT pg_advisory_lock(%'" >/dev/null
wait "$BLOCKED" || fail "the blocked connect failed: $(cat "$T/blocked.out")"
assert_eq 1 "$(cat "$T/blocked.out")" "the blocked connect completes once the lock is free"
wait "$LOCKER" || true

e2e_stop_waypoint 20
assert_eq 0 "$WP_RC" "waypoint exited 0"
