#!/bin/bash
# Audit trail (issue 13): [audit] file gets one JSON line per connection decision
# (conn_refused, conn_accepted) and one per end of a relayed session (conn_end) with
# who, from where, what was granted and by which rule, and how it ended; SIGHUP reopens
# it (logrotate); a write error is logged and counted, never silent.
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_cluster
e2e_identity '{"appdb": {"permissions": ["readwrite"]}, "*": {"permissions": ["readonly"], "schemas": ["public"]}}'
e2e_standin
e2e_waypoint_audited
assert_eq 600 "$(stat -c %a "$AUDIT")" "audit file created mode 0600"

# rec EVENT FIELD [N]: FIELD of the Nth-from-last record of EVENT (JSON-encoded value).
rec() {
    python3 - "$AUDIT" "$1" "$2" "${3:-1}" <<'PY'
import json, sys
path, event, field, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
recs = [json.loads(l) for l in open(path) if l.strip()]
recs = [r for r in recs if r["event"] == event]
print(json.dumps(recs[-n][field]) if len(recs) >= n else "MISSING")
PY
}
count() { grep -c "\"event\":\"$1\"" "$AUDIT" || true; }

out=$(wpsql "options='-c waypoint_presets=readonly'" -c "SELECT 1")
assert_eq 1 "$out" "a relayed session"
e2e_wait 10 "conn_end record" '[ "$(count conn_end)" -ge 1 ]'
assert_eq 1 "$(count conn_accepted)" "one conn_accepted record"
assert_eq '"pg-main"' "$(rec conn_accepted listener)" "accepted: listener"
assert_eq '"alice@example.com"' "$(rec conn_accepted login)" "accepted: login"
assert_eq '"laptop.tail1234.ts.net."' "$(rec conn_accepted node)" "accepted: node"
assert_eq '[]' "$(rec conn_accepted tags)" "accepted: tags"
assert_eq '"appdb"' "$(rec conn_accepted database)" "accepted: database"
assert_eq '"1:appdb,1:*"' "$(rec conn_accepted rules)" "accepted: the grant rules that matched"
assert_eq '"public:readonly"' "$(rec conn_accepted presets)" "accepted: effective presets (downgraded)"
assert_eq '"wp_alice_laptop_appdb_readonly"' "$(rec conn_accepted role)" "accepted: role"
assert_contains "$(rec conn_accepted peer)" "127.0.0.1:" "accepted: peer"
assert_eq '"ok"' "$(rec conn_end outcome)" "end: outcome"
[ "$(rec conn_end bytes_out)" -gt 0 ] || fail "end: bytes_out"
[ "$(rec conn_end duration_ms)" -ge 0 ] || fail "end: duration_ms"
assert_eq "$(rec conn_accepted session)" "$(rec conn_end session)" "accepted and end share the session id"
case $(rec conn_end time) in '"20'*T*Z'"') pass "time is RFC 3339 UTC" ;; *) fail "time: $(rec conn_end time)" ;; esac

# The conn_end log line names the effective presets, not "full".
assert_contains "$(log_line conn_end)" "presets=public:readonly" "conn_end log line: effective presets"

# A refusal: one conn_refused record with the SQLSTATE and the reason.
e2e_identity '{"otherdb": {"permissions": ["readonly"]}}'
out=$(wpsql "" -c "SELECT 1" 2>&1) && fail "connected without a grant"
e2e_wait 10 "conn_refused record" '[ "$(count conn_refused)" -ge 1 ]'
assert_eq '"28000"' "$(rec conn_refused sqlstate)" "refused: sqlstate"
assert_eq '"no_grant"' "$(rec conn_refused reason)" "refused: reason"
assert_eq '"refused"' "$(rec conn_refused outcome)" "refused: outcome"
assert_eq '"alice@example.com"' "$(rec conn_refused login)" "refused: login"
assert_contains "$(rec conn_refused message)" "no Waypoint grant" "refused: message the client saw"

# logrotate: move the file away, SIGHUP, new records go to a new file.
mv "$AUDIT" "$AUDIT.1"
e2e_reload
[ -f "$AUDIT" ] || fail "audit file not reopened on SIGHUP"
e2e_identity '{"appdb": {"permissions": ["readonly"]}}'
wpsql "" -c "SELECT 1" >/dev/null
e2e_wait 10 "records in the new file" '[ "$(count conn_end)" -ge 1 ]'
pass "after SIGHUP, records go to the new file"
before=$(grep -c . "$AUDIT.1")
[ "$before" -ge 3 ] || fail "rotated file lost records"
pass "rotated file kept its $before records"

# Write errors: never silent. Point the file at /dev/full and reload.
sed -i "s|^file = .*|file = \"/dev/full\"|" "$T/waypoint.toml"
e2e_reload
out=$(wpsql "" -c "SELECT 1")
assert_eq 1 "$out" "the session itself is not disturbed by audit write errors"
e2e_wait 10 "audit_write_failed log line" log_has 'event=audit_write_failed'
assert_contains "$(log_line audit_write_failed)" "No space left on device" "write error logged with the reason"
e2e_wait 10 "audit error metric" \
    'curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -qE "^waypoint_audit_write_errors_total [1-9]"'
pass "write errors counted in waypoint_audit_write_errors_total"
