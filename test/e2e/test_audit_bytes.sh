#!/bin/bash
# Audit records of names that are not UTF-8 (issue 17 item 7). A database name with a
# stray 0xff or a multibyte sequence cut short is refused, and the refusal must still be
# recorded (the bytes that are not UTF-8 escaped as \xNN), with no audit write error
# logged or counted (it used to log "out of memory": jansson refuses such strings).
. "$(dirname "$0")/lib.sh"
e2e_init

RAW="$E2E_BIN/test/wp_rawclient"
e2e_cluster
e2e_identity '{"appdb": {"permissions": ["readonly"]}}'
e2e_standin
e2e_waypoint_audited

# refused_dbs: the database field of every conn_refused record, one JSON value a line.
refused_dbs() {
    python3 - "$AUDIT" <<'PY'
import json, sys
for l in open(sys.argv[1], encoding="utf-8"):
    if l.strip():
        r = json.loads(l)
        if r["event"] == "conn_refused":
            print(json.dumps(r["database"], ensure_ascii=False))
PY
}
# The counter's value (its series appears with the first error: none is 0).
audit_errors() {
    local v
    v=$(curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" |
        awk '$1 == "waypoint_audit_write_errors_total" {print $2}') || fail "no /metrics"
    echo "${v:-0}"
}
assert_eq 0 "$(audit_errors)" "no audit write errors at first"

# Bytes that are not UTF-8 in the database name.
for db in $'nosuchdb_\xff' $'nosuchdb_\xe2\x82' $'caf\xc3\xa9_\x80x'; do
    out=$("$RAW" 127.0.0.1 "$WP_PORT" "SELECT 1" user=ignored "database=$db" 2>&1 || true)
    assert_contains "$out" "ERROR 28000" "a database name with invalid UTF-8 is refused"
done
e2e_wait 10 "three conn_refused records" '[ "$(refused_dbs | wc -l)" -ge 3 ]'
dbs=$(refused_dbs)
assert_contains "$dbs" '"nosuchdb_\\xff"' "a stray 0xff is recorded as \\xff"
assert_contains "$dbs" '"nosuchdb_\\xe2\\x82"' "a cut multibyte sequence is recorded byte by byte"
assert_contains "$dbs" "\"café_\\\\x80x\"" "valid UTF-8 around an invalid byte is kept as is"
assert_eq 0 "$(audit_errors)" "no audit write error counted for them"
log_has 'out of memory' && fail "'out of memory' logged: $(grep 'out of memory' "$T/waypoint.log")"
log_has 'event=audit_write_failed' && fail "audit_write_failed logged: $(log_line audit_write_failed)"
pass "no audit_write_failed, no 'out of memory' in the log"
