#!/bin/bash
# Refusals: not on the tailnet, no grant, tailscaled down or hung, replication, and the
# listener's connection cap. Each must be a FATAL ErrorResponse with the right SQLSTATE
# (checked in Waypoint's one refusal line per connection) and a human message.
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_cluster
E2E_WHOIS_TIMEOUT=1s
e2e_config 'max_connections = 2'
e2e_no_identity
e2e_standin
e2e_waypoint

refusals() { log_count conn_refused; }

# expect_refusal WHAT SQLSTATE MESSAGE-PART [conninfo]: one connection, refused.
expect_refusal() {
    local what=$1 state=$2 msg=$3 extra=${4:-}
    local before
    before=$(refusals)
    local out
    out=$(wpsql "$extra" -c "SELECT 1" 2>&1) && fail "$what: connection was accepted"
    assert_contains "$out" "$msg" "$what: client sees '$msg'"
    e2e_wait 5 "$what: refusal line" '[ "$(refusals)" -gt '"$before"' ]'
    assert_contains "$(log_line conn_refused)" "sqlstate=$state" "$what: SQLSTATE $state"
}

expect_refusal "not on the tailnet" 28000 "FATAL"

e2e_identity '{"otherdb": {"permissions": ["readonly"]}}'
expect_refusal "no grant for this database" 28000 "FATAL"

# tailscaled hangs: refused within the WhoIs timeout (1 s), not hanging the client.
e2e_state '{"identities": [], "certs": {}, "fault": "hang"}'
t0=$(now_ms)
expect_refusal "tailscaled hangs" 28000 "FATAL"
elapsed=$(($(now_ms) - t0))
[ "$elapsed" -lt 4000 ] || fail "hung tailscaled: refusal took ${elapsed} ms"
pass "hung tailscaled: refused in ${elapsed} ms"

e2e_state '{"identities": [], "certs": {}, "fault": "500"}'
expect_refusal "tailscaled answers 500" 28000 "FATAL"

# tailscaled not running at all (stopped; its socket is gone): refused at once. Stopping
# the process, not just moving its socket away, because Waypoint keeps its LocalAPI
# connection alive between WhoIs calls, as a live tailscaled would still answer on it.
e2e_identity '{"appdb": {"permissions": ["readonly"]}}'
standin_pid=$(cat "$T/standin.ready")
kill "$standin_pid"
wait "$standin_pid" 2>/dev/null || true # our child: returns once it has exited
[ ! -e "$T/ts.sock" ] || fail "stand-in left its socket behind"
expect_refusal "tailscaled down" 28000 "FATAL"
rm -f "$T/standin.ready"
e2e_standin

out=$(wpsql "" -c "SELECT current_user")
assert_eq "wp_alice_laptop_appdb" "$out" "granted caller gets in once tailscaled is back"

expect_refusal "replication connection" 0A000 "replication" "replication=database"

# Connection cap (max_connections = 2): hold two sessions, the third gets 53300.
wpsql_bg /dev/null "" -c "SELECT pg_sleep(30)"
h1=$BG_PID
wpsql_bg /dev/null "" -c "SELECT pg_sleep(30)"
h2=$BG_PID
sleeping() { [ "$(super_sql -c "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%'")" = 2 ]; }
e2e_wait 20 "two sleeping sessions" sleeping
expect_refusal "over max_connections" 53300 "too many connections"
kill "$h1" "$h2" 2>/dev/null || true
wait "$h1" "$h2" 2>/dev/null || true
