#!/bin/bash
# A password the caller sets on its own role (ALTER ROLE CURRENT_USER PASSWORD) never
# outlives the session that set it (issue 17, item 5): once that session ends, parked
# (reuse on) or closed (reuse off), the password no longer logs in directly. Revocation
# ends every backend of the role, sessions opened directly included. Proved with direct
# logins over TCP (scram-sha-256, what pg_hba asks of 127.0.0.1 here) and with pids in
# pg_stat_activity.
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_cluster
RW='{"appdb": {"permissions": ["readwrite"]}}'
ROLE=wp_alice_laptop_appdb
e2e_identity "$RW"
e2e_standin
# Revalidation stays at its default (1m) while reuse is checked: a parked session lives
# no longer than one revalidation interval.
e2e_config
e2e_waypoint

# direct_tcp PASSWORD SQL: a login as the role straight to PostgreSQL over TCP.
direct_tcp() {
    PGPASSWORD=$1 psql -X -qAt "host=127.0.0.1 port=$PG_PORT dbname=appdb user=$ROLE \
connect_timeout=5" -c "$2" 2>&1
}
logs_in() { [ "$(direct_tcp "$1" "SELECT current_user")" = "$ROLE" ]; }
# pid of the role's backend running the statement $1 ('' when none).
pid_of() {
    super_sql -c "SELECT pid FROM pg_stat_activity WHERE usename = '$ROLE' AND query = '$1'"
}
pid_alive() { [ "$(super_sql -c "SELECT count(*) FROM pg_stat_activity WHERE pid = $1")" != 0 ]; }

# ---- reuse on (the default): the session is parked, the password is not ----------------
P1=$(wpsql "" -c "ALTER ROLE CURRENT_USER PASSWORD 'selfset-one'" -c "SELECT pg_backend_pid()")
[ -n "$P1" ] || fail "the caller could not set its own password through Waypoint"
e2e_wait 10 "the session to end" '[ "$(log_count conn_end)" -ge 1 ]'
e2e_wait 10 "the self-set password to stop working after its session ended (reuse on)" \
    '! logs_in selfset-one'
pass "reuse on: the self-set password no longer logs in after the session ended"
assert_contains "$(direct_tcp selfset-one "SELECT 1")" "password authentication failed" \
    "reuse on: the direct login is refused by password"
pid_alive "$P1" || fail "the session's backend $P1 was not parked"
# The parked session is still reused (it is authenticated already).
assert_eq "$P1" "$(wpsql "" -c "SELECT pg_backend_pid()")" \
    "the next connect reuses the parked backend"
e2e_wait 10 "the reused session's end" '[ "$(log_count conn_end)" -ge 2 ]'
if logs_in selfset-one; then fail "the self-set password logs in after reuse"; fi

# ---- a storm of sessions of one caller, each setting the password: none outlives it -----
# Four clients connect 25 times each; every session sets the password (concurrent ALTER
# ROLEs of one role may fail with "tuple concurrently updated": that is the server's
# answer to the caller, ignored here) and ends.
# Sessions that ended or were refused (a connect refused under load is not relayed).
ended() { echo $(($(log_count conn_end) + $(log_count conn_refused))); }
ends=$(ended)
relayed=$(log_count conn_end)
storm_pids=()
for c in 1 2 3 4; do
    (for i in $(seq 25); do
        wpsql "" -c "ALTER ROLE CURRENT_USER PASSWORD 'selfset-storm'" >/dev/null 2>&1 || true
    done) &
    storm_pids+=($!)
done
for p in "${storm_pids[@]}"; do wait "$p"; done
e2e_wait 20 "the storm's 100 sessions to end" '[ "$(ended)" -ge $((ends + 100)) ]'
relayed=$(($(log_count conn_end) - relayed))
[ "$relayed" -ge 50 ] || fail "only $relayed of the storm's 100 sessions were relayed"
e2e_wait 10 "the storm's password to stop working" '! logs_in selfset-storm'
pass "after $relayed concurrent sessions each setting it, the password no longer logs in"
if log_has prov_password_clear_failed; then
    fail "a password clear failed: $(log_line prov_password_clear_failed)"
fi

# ---- revocation ends every backend of the role ------------------------------------------
E2E_TOP='[revalidation]
interval = "1s"'
e2e_config
e2e_reload
# A Waypoint session sets a password and stays; with it, a direct session over TCP and one
# over the cluster's trust socket are opened while the Waypoint session is live.
wpsql_bg "$T/live.out" "" -c "ALTER ROLE CURRENT_USER PASSWORD 'selfset-two'" \
    -c "SELECT pg_sleep(61)"
CLIENT=$BG_PID
e2e_wait 20 "the Waypoint session to sleep" '[ -n "$(pid_of "SELECT pg_sleep(61)")" ]'
WPID=$(pid_of "SELECT pg_sleep(61)")
assert_eq "$ROLE" "$(direct_tcp selfset-two "SELECT current_user")" \
    "while the session lives, its self-set password logs in directly"
PGPASSWORD=selfset-two psql -X -qAt "host=127.0.0.1 port=$PG_PORT dbname=appdb user=$ROLE" \
    -c "SELECT pg_sleep(62)" >"$T/direct_tcp.out" 2>&1 &
E2E_PIDS+=($!)
"$PGCLUSTER" psql "$T/pg" -U "$ROLE" -d appdb -qAt -c "SELECT pg_sleep(63)" \
    >"$T/direct_sock.out" 2>&1 &
E2E_PIDS+=($!)
e2e_wait 20 "the direct sessions to sleep" \
    '[ -n "$(pid_of "SELECT pg_sleep(62)")" ] && [ -n "$(pid_of "SELECT pg_sleep(63)")" ]'
TCP_PID=$(pid_of "SELECT pg_sleep(62)")
SOCK_PID=$(pid_of "SELECT pg_sleep(63)")
e2e_identity '{"otherdb": {"permissions": ["readonly"]}}'
rc=0
wait "$CLIENT" || rc=$?
[ "$rc" -ne 0 ] || fail "revoked session finished normally: $(cat "$T/live.out")"
assert_contains "$(cat "$T/live.out")" "revoked" "the revoked session is told why"
if pid_alive "$WPID"; then fail "the revoked session's backend $WPID is still running"; fi
e2e_wait 10 "the direct TCP session $TCP_PID to be terminated" '! pid_alive "$TCP_PID"'
pass "revocation: the direct TCP session (self-set password) was terminated"
e2e_wait 10 "the direct socket session $SOCK_PID to be terminated" '! pid_alive "$SOCK_PID"'
pass "revocation: the direct trust-socket session was terminated"
assert_eq 0 "$(super_sql -c "SELECT count(*) FROM pg_stat_activity WHERE usename = '$ROLE'")" \
    "revocation: no backend of the role is left"
if logs_in selfset-two; then fail "revocation: the self-set password still logs in"; fi

# ---- reuse off: every session closes, the password goes with it --------------------------
e2e_identity "$RW"
E2E_TOP='[revalidation]
interval = "1s"

[pool]
enabled = false'
e2e_config
e2e_reload
assert_eq "$ROLE" "$(wpsql "" -c "ALTER ROLE CURRENT_USER PASSWORD 'selfset-three'" \
    -c "SELECT current_user")" "reuse off: the caller sets its own password"
e2e_wait 10 "the self-set password to stop working after its session closed (reuse off)" \
    '! logs_in selfset-three'
pass "reuse off: the self-set password no longer logs in after the session closed"
assert_eq "$ROLE" "$(wpsql "" -c "SELECT current_user")" "reuse off: the next connect works"

e2e_stop_waypoint 20
assert_eq 0 "$WP_RC" "waypoint exited 0"
