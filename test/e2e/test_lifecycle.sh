#!/bin/bash
# Lifecycle: the startup deadline drops a silent client while others work; SIGTERM lets
# an open query finish and exits 0; past drain_timeout, sessions end with 57P01.
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_cluster
e2e_identity '{"appdb": {"permissions": ["readonly"]}}'
e2e_standin
E2E_STARTUP_TIMEOUT=2s
e2e_config
e2e_waypoint

# A client that connects and says nothing holds nothing past the startup deadline.
exec 3<>"/dev/tcp/127.0.0.1/$WP_PORT"
t0=$(now_ms)
out=$(wpsql "" -c "SELECT current_user")
assert_eq "wp_alice_laptop_appdb" "$out" "another client works while one is silent"
rc=0
read -r -t 10 -u 3 _ || rc=$?
elapsed=$(($(now_ms) - t0))
[ "$rc" -eq 1 ] || fail "silent client: expected EOF, read status $rc"
[ "$elapsed" -ge 1500 ] && [ "$elapsed" -lt 5000 ] || fail "silent client dropped after ${elapsed} ms"
pass "silent client dropped after ${elapsed} ms (startup_timeout 2s)"
exec 3<&-
e2e_wait 5 "refusal line for the silent client" log_has 'event=conn_refused'

# SIGTERM with a query in flight: the query finishes, then Waypoint exits 0.
sleeping() { [ "$(super_sql -c "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(2)%'")" = 1 ]; }
wpsql_bg "$T/drain.out" "" -c "SELECT pg_sleep(2)" -c "SELECT 'finished'"
client=$BG_PID
e2e_wait 20 "the query to run" sleeping
t0=$(now_ms)
kill -TERM "$WP_PID"
e2e_wait 5 "draining" log_has 'event=draining'
out=$(wpsql "" -c "SELECT 1" 2>&1) && fail "new connection accepted while draining"
pass "no new connections while draining"
rc=0
wait "$client" || rc=$?
assert_eq 0 "$rc" "the in-flight query finished"
assert_contains "$(cat "$T/drain.out")" "finished" "the session completed its work"
e2e_stop_waypoint 15
assert_eq 0 "$WP_RC" "waypoint exited 0 after the drain"
elapsed=$(($(now_ms) - t0))
[ "$elapsed" -lt 10000 ] || fail "drain took ${elapsed} ms"
pass "drained in ${elapsed} ms"

# Past drain_timeout, open sessions are told 57P01 and Waypoint still exits 0.
E2E_DRAIN_TIMEOUT=1s
e2e_config
e2e_waypoint
wpsql_bg "$T/forced.out" "" -c "SELECT pg_sleep(20)"
client=$BG_PID
sleeping20() { [ "$(super_sql -c "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(20)'")" = 1 ]; }
e2e_wait 20 "the long query to run" sleeping20
t0=$(now_ms)
e2e_stop_waypoint 10
elapsed=$(($(now_ms) - t0))
assert_eq 0 "$WP_RC" "waypoint exited 0 after a forced drain"
[ "$elapsed" -lt 5000 ] || fail "forced drain took ${elapsed} ms"
rc=0
wait "$client" || rc=$?
[ "$rc" -ne 0 ] || fail "session survived the forced drain"
assert_contains "$(cat "$T/forced.out")" "57P01" "session ended with 57P01 after drain_timeout"
