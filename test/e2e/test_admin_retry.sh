#!/bin/bash
# A provisioning step that failed because its admin connection was killed under it, and
# succeeded on the retry, is a warning naming the step and the retry's outcome, not an
# error (issue 17, item 7). The admin sessions are terminated with pg_terminate_backend
# between two connects; the second connect must succeed, and the log must say what
# happened at the right level.
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_cluster
e2e_identity '{"appdb": {"permissions": ["readonly"]}}'
e2e_standin
E2E_TOP='[pool]
enabled = false'
e2e_config
e2e_waypoint

admin_pids() { super_sql -c "SELECT count(*) FROM pg_stat_activity WHERE usename = 'wp_admin'"; }
kill_admin() {
    super_sql -c "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'wp_admin'" >/dev/null
    e2e_wait 10 "the admin sessions to be gone" '[ "$(admin_pids)" = 0 ]'
}

assert_eq 1 "$(wpsql "" -c "SELECT 1")" "first connect"
[ "$(admin_pids)" -ge 1 ] || fail "no admin session after the first connect"
kill_admin
assert_eq 1 "$(wpsql "" -c "SELECT 1")" "a connect after the admin sessions were killed succeeds"
e2e_wait 10 "the retried step's log line" 'log_has "event=prov_step_retried"'
line=$(log_line prov_step_retried)
assert_contains "$line" "level=warn" "the retried step is a warning"
assert_contains "$line" "outcome=succeeded" "the line says the retry succeeded"
assert_contains "$line" "step=" "the line names the step"
assert_contains "$line" "terminat" "the line carries the first attempt's error"
if grep 'level=error' "$T/waypoint.log" | grep -q 'prov_backend_error'; then
    fail "a step that succeeded on its retry was logged at level=error: $(grep 'level=error' "$T/waypoint.log")"
fi
pass "no level=error line for a step that succeeded on its retry"

# Twice more, to cover the other retried steps (the reconnect may be caught at checkout,
# which is silent; a step that fails is what is logged).
for i in 1 2; do
    kill_admin
    assert_eq 1 "$(wpsql "" -c "SELECT 1")" "connect $i after killing the admin sessions"
done
if grep 'level=error' "$T/waypoint.log" | grep -q 'prov_'; then
    fail "level=error provisioning lines after successful retries: $(grep 'level=error' "$T/waypoint.log")"
fi

e2e_stop_waypoint 20
assert_eq 0 "$WP_RC" "waypoint exited 0"
