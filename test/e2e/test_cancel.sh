#!/bin/bash
# Query cancel through Waypoint: psql's Ctrl-C (SIGINT) sends a CancelRequest with the
# key Waypoint made up; Waypoint maps it to the backend's key and the query stops with
# 57014 within a second.
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_cluster
e2e_identity '{"appdb": {"permissions": ["readonly"]}}'
e2e_standin
e2e_waypoint

sleeping() { [ "$(super_sql -c "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'")" = 1 ]; }

wpsql_bg "$T/cancel.out" "" -c "SELECT pg_sleep(30)"
client=$BG_PID
e2e_wait 20 "the query to run" sleeping
t0=$(now_ms)
kill -INT "$client"
rc=0
wait "$client" || rc=$?
elapsed=$(($(now_ms) - t0))
[ "$rc" -ne 0 ] || fail "cancelled query reported success"
assert_contains "$(cat "$T/cancel.out")" "57014" "cancelled query ends with 57014"
[ "$elapsed" -lt 1500 ] || fail "cancel took ${elapsed} ms"
pass "cancel took ${elapsed} ms"
e2e_wait 5 "cancel log line" log_has 'event=cancel'
assert_contains "$(log_line cancel)" "result=forwarded" "cancel forwarded to the backend"

# A CancelRequest with a made-up key is ignored: the query keeps running.
wpsql_bg /dev/null "" -c "SELECT pg_sleep(30)"
client=$BG_PID
e2e_wait 20 "the second query to run" sleeping
python3 - "$WP_PORT" <<'PY'
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(struct.pack("!IIII", 16, 80877102, 12345, 0xdeadbeef))
assert s.recv(1) == b""  # closed without a reply, as PostgreSQL does
PY
e2e_wait 5 "second cancel log line" '[ "$(log_count cancel)" -ge 2 ]'
assert_contains "$(log_line cancel)" "result=ignored" "a wrong cancel key is ignored"
sleeping || fail "the query stopped after a bogus cancel"
pass "query still running after a bogus cancel"
kill -KILL "$client" 2>/dev/null || true
