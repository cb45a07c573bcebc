#!/bin/bash
# Timers fire while a write to the client is blocked: a client that stops reading in
# the middle of a large COPY TO STDOUT keeps Waypoint's write to it blocked; revocation
# (and the drain deadline) must still end the session within about one interval, with
# the backend stopped (gone from pg_stat_activity), instead of leaving it active in
# ClientWrite with its locks for as long as the client likes.
. "$(dirname "$0")/lib.sh"
e2e_init

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=db.example.com" \
    -addext "subjectAltName=DNS:db.example.com" -keyout "$T/file.key" -out "$T/file.crt" 2>/dev/null
e2e_cluster
RW='{"appdb": {"permissions": ["readwrite"]}}'
ROLE=wp_alice_laptop_appdb
e2e_identity "$RW"
e2e_standin
E2E_TOP='[revalidation]
interval = "1s"'
E2E_DRAIN_TIMEOUT=1s
e2e_config "tls_mode = \"optional\"
cert_file = \"$T/file.crt\"
key_file = \"$T/file.key\""
e2e_waypoint

COPY="copy (select repeat('x',1000) from generate_series(1,10000000)) to stdout"
# The client's output goes into a FIFO that this shell holds open and never reads: psql
# fills it, blocks writing to it, and stops reading its socket.
mkfifo "$T/stall"
exec 3<>"$T/stall"

stalled_pid() {
    super_sql -c "SELECT pid FROM pg_stat_activity WHERE usename = '$ROLE'
                  AND query LIKE 'copy (select repeat%' AND wait_event = 'ClientWrite'"
}
pid_alive() { [ "$(super_sql -c "SELECT count(*) FROM pg_stat_activity WHERE pid = $1")" != 0 ]; }

# start_stalled: a COPY whose reader stopped; waits until its backend is blocked
# writing (so Waypoint's write to the client is blocked too); pid in WPID.
start_stalled() {
    PGAPPNAME=e2e psql -X -qAt "$(wp_conninfo)" -c "$COPY" >"$T/stall" 2>"$T/stall.err" &
    E2E_PIDS+=($!)
    # The pid is taken by the very query that saw the wait: asked again, a backend
    # between two writes shows no wait event (seen once on PostgreSQL 14).
    e2e_wait 30 "the COPY backend to block in ClientWrite" 'WPID=$(stalled_pid); [ -n "$WPID" ]'
}

# ---- revocation while the write to the client is blocked -------------------------------
start_stalled
before=$(log_count conn_end)
t0=$(now_ms)
e2e_identity '{"otherdb": {"permissions": ["readonly"]}}'
e2e_wait 8 "the stalled backend $WPID to be stopped after revocation" '! pid_alive "$WPID"'
pass "revocation stopped the stalled backend after $(($(now_ms) - t0)) ms"
e2e_wait 8 "the revoked session to end" '[ "$(log_count conn_end)" -gt '"$before"' ]'
assert_contains "$(log_line conn_end)" "outcome=revoked" "stalled session ended as revoked"
elapsed=$(($(now_ms) - t0))
[ "$elapsed" -lt 8000 ] || fail "ending the stalled session took ${elapsed} ms"
pass "stalled session ended ${elapsed} ms after the revocation"

# ---- the same through TLS (a write mbedTLS could not finish is retried later) -------
e2e_identity "$RW"
E2E_SSLMODE=require start_stalled
before=$(log_count conn_end)
t0=$(now_ms)
e2e_identity '{"otherdb": {"permissions": ["readonly"]}}'
e2e_wait 8 "the stalled TLS backend $WPID to be stopped after revocation" '! pid_alive "$WPID"'
e2e_wait 8 "the revoked TLS session to end" '[ "$(log_count conn_end)" -gt '"$before"' ]'
assert_contains "$(log_line conn_end)" "tls=1" "the stalled session was TLS"
assert_contains "$(log_line conn_end)" "outcome=revoked" "stalled TLS session ended as revoked"
pass "stalled TLS session ended $(($(now_ms) - t0)) ms after the revocation"

# Writes that wait for the client lose nothing: a bulk COPY through TLS arrives intact.
e2e_identity "$RW"
BULK="copy (select i, md5(i::text) from generate_series(1, 400000) i) to stdout"
want=$(super_sql -c "$BULK" | md5sum)
got=$(PGAPPNAME=e2e psql -X -qAt "$(wp_conninfo)" -c "$BULK" | md5sum)
assert_eq "$want" "$got" "bulk COPY in plaintext is byte-identical to the direct one"
got=$(E2E_SSLMODE=require psql -X -qAt "$(E2E_SSLMODE=require wp_conninfo)" -c "$BULK" | md5sum)
assert_eq "$want" "$got" "bulk COPY through TLS (sslmode=require) is byte-identical"

# ---- drain deadline while the write to the client is blocked ---------------------------
e2e_identity "$RW"
start_stalled
t0=$(now_ms)
kill -TERM "$WP_PID"
e2e_wait 8 "the stalled backend $WPID to be stopped by the drain" '! pid_alive "$WPID"'
pass "drain stopped the stalled backend after $(($(now_ms) - t0)) ms"
e2e_stop_waypoint 15
assert_eq 0 "$WP_RC" "waypoint exited 0 after the drain"
assert_contains "$(log_line conn_end)" "outcome=shutdown" "stalled session ended by the drain"
