#!/bin/bash
# Mid-session checks: a revoked grant ends an open session with 28000 at the next
# revalidation tick; max_conn_duration and max_conns_per_user from the grant's limits.
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_cluster
e2e_identity '{"appdb": {"permissions": ["readonly"]}}' '{"max_conns": 1}'
e2e_standin
E2E_TOP='[revalidation]
interval = "1s"'
e2e_config
e2e_waypoint

sleeping() { [ "$(super_sql -c "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(20)'")" = 1 ]; }
wpsql_bg "$T/revoked.out" "" -c "SELECT pg_sleep(20)"
client=$BG_PID
e2e_wait 20 "the query to run" sleeping

# max_conns_per_user = 1: a second session of the same caller is refused.
out=$(wpsql "" -c "SELECT 1" 2>&1) && fail "second connection accepted over max_conns_per_user"
assert_contains "$out" "too many connections for user" "max_conns_per_user enforced"

t0=$(now_ms)
e2e_identity '{"otherdb": {"permissions": ["readonly"]}}'
rc=0
wait "$client" || rc=$?
elapsed=$(($(now_ms) - t0))
[ "$rc" -ne 0 ] || fail "revoked session finished normally"
assert_contains "$(cat "$T/revoked.out")" "revoked" "revoked session is told why"
[ "$elapsed" -lt 5000 ] || fail "revocation took ${elapsed} ms"
pass "revoked session ended after ${elapsed} ms"
e2e_wait 5 "conn_end revoked" log_has 'outcome=revoked'
pass "conn_end outcome=revoked"

# max_conn_duration from the grant's limits ends a session with 53400.
e2e_identity '{"appdb": {"permissions": ["readonly"]}}' '{"max_conn_duration": "2s"}'
t0=$(now_ms)
out=$(wpsql "" -c "SELECT pg_sleep(20)" 2>&1) && fail "session outlived max_conn_duration"
elapsed=$(($(now_ms) - t0))
assert_contains "$out" "max_conn_duration" "max_conn_duration: client told why"
[ "$elapsed" -lt 6000 ] || fail "max_conn_duration took ${elapsed} ms"
pass "max_conn_duration ended the session after ${elapsed} ms"
