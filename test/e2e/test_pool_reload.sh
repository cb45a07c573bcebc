#!/bin/bash
# SIGHUP closes parked sessions, and a backend session set up under the old
# configuration is never handed to a connection of the new one (the reload may have
# changed the backend, its TLS, the limits). A session that is live across the reload
# and ends politely afterwards used to be parked after the reload's drop and reused by
# the next connect. Its client is psql reading from a fifo, so the test decides when it
# ends.
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_cluster
e2e_identity '{"appdb": {"permissions": ["readonly"]}}'
e2e_standin
E2E_SERVER='log_level = "debug"'
e2e_config
e2e_waypoint

pid_of() { wpsql "" -c "SELECT pg_backend_pid()"; }

mkfifo "$T/live.in"
PGAPPNAME=e2e psql -X -qAt "$(wp_conninfo)" <"$T/live.in" >"$T/live.out" 2>&1 &
LIVE_PID=$!
E2E_PIDS+=("$LIVE_PID")
exec 3>"$T/live.in"
echo "SELECT pg_backend_pid();" >&3
e2e_wait 10 "the live session's pid" '[ -s "$T/live.out" ]'
live=$(head -n 1 "$T/live.out")

p0=$(pid_of) # parked before the reload
[ "$p0" != "$live" ] || fail "two live sessions share a backend"
e2e_wait 10 "one parked session" '[ "$(log_count pool_park)" -ge 1 ]'

e2e_reload
e2e_wait 10 "the reload's pool drop" 'log_has "event=pool_dropped.*reason=reload"'
pass "SIGHUP dropped the parked session"

ends=$(log_count conn_end)
echo '\q' >&3
exec 3>&-
wait "$LIVE_PID" || fail "the live session failed: $(cat "$T/live.out")"
e2e_wait 10 "the live session's conn_end" '[ "$(log_count conn_end)" -gt '"$ends"' ]'

p1=$(pid_of)
[ "$p1" != "$live" ] || fail "a connect after SIGHUP got the backend set up before it ($live)"
[ "$p1" != "$p0" ] || fail "a connect after SIGHUP got the backend parked before it ($p0)"
pass "a connect after SIGHUP gets a backend set up under the new configuration"
assert_contains "$(log_line conn_end)" "reused=0" "conn_end says reused=0"
