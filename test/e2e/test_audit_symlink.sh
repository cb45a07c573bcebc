#!/bin/bash
# The audit file's SIGHUP reopen does not follow a symlink (issue 17 item 7): one planted
# where the audit file was (after logrotate moved it) is refused, its target stays
# untouched, records keep going to the file opened before, and the refusal is logged
# (naming the file and saying why) and counted.
. "$(dirname "$0")/lib.sh"
e2e_init

RAW="$E2E_BIN/test/wp_rawclient"
e2e_cluster
e2e_identity '{"appdb": {"permissions": ["readonly"]}}'
e2e_standin
e2e_waypoint_audited

# The counter's value (its series appears with the first error: none is 0).
audit_errors() {
    local v
    v=$(curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" |
        awk '$1 == "waypoint_audit_write_errors_total" {print $2}') || fail "no /metrics"
    echo "${v:-0}"
}
assert_eq 0 "$(audit_errors)" "no audit write errors at first"

# A symlink planted where the audit file was, then SIGHUP (logrotate's signal).
TARGET="$T/not-the-audit-file"
: >"$TARGET"
mv "$AUDIT" "$AUDIT.1"
ln -s "$TARGET" "$AUDIT"
e2e_reload
"$RAW" 127.0.0.1 "$WP_PORT" "SELECT 1" user=ignored database=appdb >/dev/null 2>&1 ||
    fail "a session after the reload failed"
e2e_wait 10 "the reopen failure logged" 'log_has "event=audit_write_failed"'
line=$(log_line audit_write_failed)
assert_contains "$line" "$AUDIT" "the failure names the audit file"
assert_contains "$line" "symbolic link" "the failure says it is a symbolic link"
e2e_wait 10 "conn_end in the file opened before" 'grep -q "\"event\":\"conn_end\"" "$AUDIT.1"'
pass "records keep going to the file opened before"
assert_eq 0 "$(stat -c %s "$TARGET")" "the symlink's target is not written"
[ "$(audit_errors)" -ge 1 ] || fail "the reopen failure is not counted"
pass "the reopen failure is counted in waypoint_audit_write_errors_total"
