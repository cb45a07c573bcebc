#!/bin/bash
# Load: pgbench with 16 clients through Waypoint, no errors. The spec's check is 30 s;
# CI runs 10 s (E2E_PGBENCH_SECONDS to change it) to keep the suite quick.
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_cluster
PGPASSWORD=adminpw pgbench -i -q -s 1 -h 127.0.0.1 -p "$PG_PORT" -U wp_admin appdb >/dev/null 2>&1 ||
    fail "pgbench -i failed"
e2e_identity '{"appdb": {"permissions": ["readwrite"]}}'
e2e_standin
e2e_waypoint

secs=${E2E_PGBENCH_SECONDS:-10}
out=$(pgbench -n -c 16 -j 2 -T "$secs" "$(wp_conninfo)" 2>&1) || fail "pgbench failed: $out"
assert_contains "$out" "number of clients: 16" "pgbench ran 16 clients"
if grep -q "number of failed transactions" <<<"$out"; then
    assert_contains "$out" "number of failed transactions: 0 " "pgbench: no failed transactions"
fi
tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
[ "${tx:-0}" -gt 0 ] || fail "pgbench processed no transactions: $out"
pass "pgbench: $tx transactions in ${secs}s"
e2e_wait 10 "16 conn_end lines" '[ "$(grep -c "event=conn_end.*outcome=ok" "$T/waypoint.log")" -ge 16 ]'
pass "all 16 sessions ended cleanly"
assert_eq 0 "$(log_count conn_refused)" "no connection was refused"
