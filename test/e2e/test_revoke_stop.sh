#!/bin/bash
# A session Waypoint ends on its own authority (revocation, max_conn_duration, drain)
# stops the backend before the client is told: the write running at that moment either
# committed before the FATAL or never does. Proved with the data: right after the client
# has its FATAL, the backend pid is gone from pg_stat_activity (nothing can commit any
# more) and the row is absent. At revocation the role itself stops being able to log in
# (NOLOGIN) until the caller's next authorized connect restores it.
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_cluster
admin_sql -c "CREATE TABLE t (id int PRIMARY KEY, v text)"
RW='{"appdb": {"permissions": ["readwrite"]}}'
ROLE=wp_alice_laptop_appdb
e2e_identity "$RW"
e2e_standin
E2E_TOP='[revalidation]
interval = "1s"'
E2E_DRAIN_TIMEOUT=1s
e2e_config
e2e_waypoint

# pid of the backend running the statement that starts with $1 ('' when none).
backend_pid() {
    super_sql -c "SELECT pid FROM pg_stat_activity WHERE usename = '$ROLE' AND query LIKE '$1%'"
}
pid_alive() { [ "$(super_sql -c "SELECT count(*) FROM pg_stat_activity WHERE pid = $1")" != 0 ]; }
row_count() { super_sql -c "SELECT count(*) FROM t WHERE id = $1"; }
# A direct login as the role over the cluster's unix socket, where pg_hba says trust: it
# only fails if the role itself may not log in (whatever password it was last given).
direct_login() { "$PGCLUSTER" psql "$T/pg" -U "$ROLE" -d appdb -qAt -c "SELECT current_user" 2>&1; }

# start_write ID SECONDS OUTFILE [conninfo]: runs a slow INSERT in the background and
# waits until its backend runs it; the pid goes to WPID, the client's to CLIENT.
start_write() {
    local id=$1 secs=$2 out=$3
    wpsql_bg "$out" "${4:-}" -c "insert into t(id,v) select $id,'x' from pg_sleep($secs)"
    CLIENT=$BG_PID
    e2e_wait 20 "the insert $id to run" '[ -n "$(backend_pid "insert into t(id,v) select '"$id"'")" ]'
    WPID=$(backend_pid "insert into t(id,v) select $id")
}

# check_stopped ID WHAT: right after the client got its FATAL, nothing of it is left.
check_stopped() {
    local id=$1 what=$2
    if pid_alive "$WPID"; then
        fail "$what: backend $WPID still in pg_stat_activity after the client got its FATAL"
    fi
    pass "$what: backend $WPID was gone before the client was told"
    assert_eq 0 "$(row_count "$id")" "$what: the interrupted write did not commit"
}

# ---- revocation in the middle of a write -----------------------------------------------
assert_eq "$ROLE" "$(wpsql "" -c "SELECT current_user")" "first connect creates the role"
assert_eq "$ROLE" "$(direct_login)" "before revocation the role can log in"
start_write 8101 4 "$T/revoked.out"
e2e_identity '{"otherdb": {"permissions": ["readonly"]}}'
rc=0
wait "$CLIENT" || rc=$?
[ "$rc" -ne 0 ] || fail "revoked session finished normally: $(cat "$T/revoked.out")"
assert_contains "$(cat "$T/revoked.out")" "revoked" "revoked session is told why"
check_stopped 8101 "revocation"
assert_eq f "$(super_sql -c "SELECT rolcanlogin FROM pg_authid WHERE rolname = '$ROLE'")" \
    "revocation: the role is NOLOGIN"
assert_contains "$(direct_login)" "not permitted to log in" \
    "revocation: the role cannot be logged in to directly"

# The next authorized connect gives it back.
e2e_identity "$RW"
assert_eq "$ROLE" "$(wpsql "" -c "SELECT current_user")" "re-granted caller connects again"
assert_eq "$ROLE" "$(direct_login)" "the next authorized connect restores LOGIN"

# ---- max_conn_duration in the middle of a write -------------------------------------
e2e_identity "$RW" '{"max_conn_duration": "2s"}'
start_write 8102 5 "$T/duration.out"
rc=0
wait "$CLIENT" || rc=$?
[ "$rc" -ne 0 ] || fail "session outlived max_conn_duration: $(cat "$T/duration.out")"
assert_contains "$(cat "$T/duration.out")" "max_conn_duration" "max_conn_duration: client told why"
check_stopped 8102 "max_conn_duration"
assert_eq t "$(super_sql -c "SELECT rolcanlogin FROM pg_authid WHERE rolname = '$ROLE'")" \
    "max_conn_duration does not lock the role out"

# ---- drain timeout in the middle of a write --------------------------------------------
e2e_identity "$RW"
start_write 8103 8 "$T/drain.out"
kill -TERM "$WP_PID"
rc=0
wait "$CLIENT" || rc=$?
[ "$rc" -ne 0 ] || fail "session outlived the drain: $(cat "$T/drain.out")"
assert_contains "$(cat "$T/drain.out")" "shutting down" "drain: client told why"
check_stopped 8103 "drain"
e2e_stop_waypoint 20
assert_eq 0 "$WP_RC" "waypoint exited 0 after the drain"
