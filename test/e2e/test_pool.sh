#!/bin/bash
# Parked backend sessions (issue 12, lib/pool.c), with psql, pgbench and wp_rawclient:
# reuse happens for one caller; never across callers, databases, grants, downgrades or
# startup parameters; a SET is gone in the next session; BEGIN, an error, COPY and a
# vanished client leave nothing parked and no lock behind; new tables are visible; a
# revoked grant, pg_terminate_backend, SIGHUP, the idle timeout and drain close parked
# sessions; cancel reaches a reused backend; [pool] enabled = false turns it off.
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_cluster
super_sql -c "CREATE DATABASE otherdb"
admin_sql -c "CREATE TABLE t(x int)" -c "INSERT INTO t VALUES (1)"
ALICE_RULES='{"appdb": {"permissions": ["readwrite"]}, "otherdb": {"permissions": ["readonly"]}}'
e2e_identity "$ALICE_RULES"
e2e_standin
E2E_SERVER='log_level = "debug"'
e2e_config
e2e_waypoint
RAW="$E2E_BIN/test/wp_rawclient"
ROLE=wp_alice_laptop_appdb

pid_of() { wpsql "${1:-}" -c "SELECT pg_backend_pid()"; }
parks() { log_count pool_park; }
# wait_park N: until N sessions have been parked in total (the worker parks after its
# client left, so the next connect must wait for it to be deterministic).
wait_park() { e2e_wait 10 "$1 parked sessions" '[ "$(parks)" -ge '"$1"' ]'; }
alive() { [ "$(super_sql -c "SELECT count(*) FROM pg_stat_activity WHERE pid = $1")" = 1 ]; }
role_backends() { super_sql -c "SELECT count(*) FROM pg_stat_activity WHERE usename = '$1'"; }

# --- reuse happens ----------------------------------------------------------------------
p1=$(pid_of)
wait_park 1
p2=$(pid_of)
assert_eq "$p1" "$p2" "a sequential connect of the same caller gets the parked backend"
wait_park 2
e2e_wait 10 "the second conn_end" '[ "$(log_count conn_end)" -ge 2 ]'
assert_contains "$(log_line conn_end)" "reused=1" "conn_end says reused=1"
# the expiry moves at most once per user_ttl/100: a reused connect writes nothing
until1=$(super_sql -c "SELECT rolvaliduntil FROM pg_roles WHERE rolname = '$ROLE'")
assert_eq "$p1" "$(pid_of)" "a third connect reuses it too"
wait_park 3
assert_eq "$until1" "$(super_sql -c "SELECT rolvaliduntil FROM pg_roles WHERE rolname = '$ROLE'")" \
    "reuse and park do not rewrite the role's expiry"

# --- a SET (and its ParameterStatus) is gone in the next session; session locks too -----
out=$(wpsql "" -c "SET work_mem = '7MB'" -c "SET client_encoding = 'LATIN1'" \
    -c "SELECT pg_advisory_lock(4242)" -c "CREATE TEMP TABLE tmp(x int)" -c "SELECT pg_backend_pid()" | tail -n 1)
assert_eq "$p1" "$out" "the session that SETs is the parked one"
wait_park 4
# only the parked backend's locks: Waypoint's own admin sessions take per-role advisory
# locks of their own (the password clear at session end runs right after the park)
assert_eq 0 "$(super_sql -c "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $p1")" \
    "a parked session holds no advisory lock (DISCARD ALL)"
out=$(wpsql "" -c "SHOW work_mem" -c '\encoding' -c "SELECT count(*) FROM pg_tables WHERE tablename = 'tmp'" -c "SELECT pg_backend_pid()")
assert_eq "4MB
UTF8
0
$p1" "$out" "the next session has the default work_mem, the reported client_encoding, no temp table"
wait_park 5

# --- never across startup parameters, databases, downgrades, grants, callers -------------
other=$(PGAPPNAME=other pid_of)
[ "$other" != "$p1" ] || fail "another application_name got the parked backend"
pass "startup parameters are part of the key"
wait_park 6
assert_eq "$other" "$(PGAPPNAME=other pid_of)" "the same parameters again reuse their own backend"
wait_park 7
odb=$(wpsql "dbname=otherdb" -c "SELECT pg_backend_pid()")
[ "$odb" != "$p1" ] && [ "$odb" != "$other" ] || fail "another database got a parked backend"
pass "databases are part of the key"
wait_park 8
ro=$(pid_of "options='-c waypoint_presets=readonly'")
[ "$ro" != "$p1" ] && [ "$ro" != "$other" ] && [ "$ro" != "$odb" ] || fail "a downgraded connect got a parked backend"
pass "a downgrade is part of the key"
wait_park 9
assert_eq "$ro" "$(pid_of "options='-c waypoint_presets=readonly'")" "a downgraded connect reuses its own"
wait_park 10

# bob on 127.0.0.2 has the same grant for appdb: he never gets alice's backends.
e2e_state "$(python3 - "$T/state.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
bob = json.loads(json.dumps(s["identities"][0]))
bob["match"] = "127.0.0.2"
bob["whois"]["Node"].update({"StableID": "nBOB", "Name": "desk.tail1234.ts.net.", "ComputedName": "desk"})
bob["whois"]["UserProfile"].update({"ID": 102, "LoginName": "bob@example.com"})
s["identities"].insert(0, bob)
print(json.dumps(s))
PY
)"
bobpid=$(WP_RAWCLIENT_SRC=127.0.0.2 "$RAW" 127.0.0.1 "$WP_PORT" "SELECT pg_backend_pid(), current_user" user=x database=appdb application_name=e2e)
case "$bobpid" in "$p1"*|"$other"*|"$ro"*|"$odb"*|ERROR*) fail "bob got '$bobpid'" ;; esac
assert_contains "$bobpid" "wp_bob_desk_appdb" "another caller gets his own backend"
wait_park 11

# a changed grant closes the parked sessions provisioned for the old one
e2e_identity '{"appdb": {"permissions": ["readonly"]}, "otherdb": {"permissions": ["readonly"]}}'
np=$(pid_of)
[ "$np" != "$p1" ] || fail "a narrowed grant got the backend parked for the wider one"
pass "a narrowed grant is provisioned afresh"
e2e_wait 10 "the old grant's parked backend to close" '! alive '"$p1"
pass "the parked session of the old grant was closed"
wait_park 12

# --- a new table is visible through a reused session (the watermark check) --------------
admin_sql -c "CREATE TABLE t2(y int)" -c "INSERT INTO t2 VALUES (7)"
out=$(wpsql "" -c "SELECT y FROM t2" -c "SELECT pg_backend_pid()")
assert_eq "7
$np" "$out" "a table created while parked is readable by the reused session"
wait_park 13

# --- transaction, error and COPY states leave nothing parked and no lock ------------------
e2e_identity "$ALICE_RULES"
base=$(parks)
for sql in "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT 1" "BEGIN; SELECT 1/0"; do
    before=$(log_count conn_end)
    wpsql "" -c "$sql" >/dev/null 2>&1 || true
    e2e_wait 10 "conn_end" '[ "$(log_count conn_end)" -gt '"$before"' ]'
done
# mid-COPY: the client sends CopyData and then Terminate without CopyDone
python3 - "$WP_PORT" <<'PY'
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def msg(t, b): return t + struct.pack("!I", len(b) + 4) + b
params = b"user\0x\0database\0appdb\0application_name\0e2e\0\0"
s.sendall(struct.pack("!II", len(params) + 8, 196608) + params)
buf = b""
def read_until(t):
    global buf
    while True:
        while len(buf) >= 5:
            ty, ln = buf[0:1], struct.unpack("!I", buf[1:5])[0]
            if len(buf) < 1 + ln: break
            buf = buf[1 + ln:]
            if ty == t: return
            assert ty != b"E", "error from the server"
        d = s.recv(65536)
        assert d, "closed"
        buf += d
read_until(b"Z")
s.sendall(msg(b"Q", b"COPY t FROM STDIN\0"))
read_until(b"G")
s.sendall(msg(b"d", b"5\n") + msg(b"X", b""))
s.close()
PY
# a client that vanishes idle inside a transaction holding a lock (no Terminate at all)
wpsql_bg /dev/null "" -c "BEGIN" -c "LOCK TABLE t IN SHARE MODE" -c '\! sleep 30'
client=$BG_PID
e2e_wait 20 "the client to sit in its transaction" '[ "$(super_sql -c "SELECT count(*) FROM pg_stat_activity WHERE state = '"'"'idle in transaction'"'"'")" = 1 ]'
kill -KILL "$client"
e2e_wait 15 "no lock left on t" '[ "$(super_sql -c "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = '"'"'t'"'"'")" = 0 ]'
pass "no lock is left on the table"
e2e_wait 15 "no backend of the role left" '[ "$(role_backends $ROLE)" = 0 ]'
assert_eq "$base" "$(parks)" "transaction, error, COPY and vanished clients parked nothing"
assert_eq 0 "$(super_sql -c "SELECT count(*) FROM t WHERE x = 5")" "the unfinished COPY wrote nothing"

# --- cancel reaches a reused backend -------------------------------------------------------
p=$(pid_of)
wait_park "$((base + 1))"
wpsql_bg "$T/cancel.out" "" -c "SELECT pg_sleep(30)"
client=$BG_PID
e2e_wait 20 "the query to run on the reused backend" '[ "$(super_sql -c "SELECT pid FROM pg_stat_activity WHERE query = '"'"'SELECT pg_sleep(30)'"'"'")" = "'"$p"'" ]'
kill -INT "$client"
rc=0
wait "$client" || rc=$?
[ "$rc" -ne 0 ] || fail "cancelled query reported success"
assert_contains "$(cat "$T/cancel.out")" "57014" "cancel on a reused session stops its query"
wait_park "$((base + 2))"

# --- a parked backend that dies is discarded; the next connect still works ---------------
p=$(pid_of)
wait_park "$((base + 3))"
super_sql -c "SELECT pg_terminate_backend($p)" >/dev/null
e2e_wait 10 "the terminated backend to go" '! alive '"$p"
q=$(pid_of)
[ -n "$q" ] && [ "$q" != "$p" ] || fail "connect after a parked backend died: '$q'"
pass "a parked backend killed by pg_terminate_backend is discarded"
wait_park "$((base + 4))"

# --- a revoked grant closes its parked sessions (at the refused connect) ------------------
e2e_identity '{"otherdb": {"permissions": ["readonly"]}}'
out=$(pid_of 2>&1) && fail "a revoked caller connected"
e2e_wait 10 "the revoked grant's parked backend to close" '! alive '"$q"
pass "a revoked grant closes its parked session"
e2e_identity "$ALICE_RULES"

# --- SIGHUP closes parked sessions ------------------------------------------------------------
p=$(pid_of)
wait_park "$((base + 5))"
kill -HUP "$WP_PID"
e2e_wait 10 "SIGHUP to close the parked backend" '! alive '"$p"
pass "SIGHUP closes parked sessions"

# --- idle timeout, then enabled = false -----------------------------------------------------
E2E_TOP='[pool]
idle_timeout = "1s"'
e2e_config
kill -HUP "$WP_PID"
e2e_wait 10 "the reload" '[ "$(log_count reloaded)" -ge 2 ]'
p=$(pid_of)
wait_park "$((base + 6))"
e2e_wait 10 "the idle timeout to close the parked backend" '! alive '"$p"
pass "idle_timeout closes a parked session"

E2E_TOP='[pool]
enabled = false'
e2e_config
kill -HUP "$WP_PID"
e2e_wait 10 "the reload" '[ "$(log_count reloaded)" -ge 3 ]'
a=$(pid_of)
e2e_wait 10 "the backend to end" '! alive '"$a"
b=$(pid_of)
[ "$a" != "$b" ] || fail "reuse with [pool] enabled = false"
assert_eq "$((base + 6))" "$(parks)" "enabled = false parks nothing"

# --- pgbench -C: connects of one caller reuse, drain closes what is parked -------------------
E2E_TOP=''
e2e_config
kill -HUP "$WP_PID"
e2e_wait 10 "the reload" '[ "$(log_count reloaded)" -ge 4 ]'
printf 'SELECT x FROM t;\n' >"$T/q.sql"
before=$(grep -c 'event=conn_end.*reused=1' "$T/waypoint.log" || true)
pgbench -n -C -c 2 -j 1 -t 20 -f "$T/q.sql" "$(wp_conninfo)" >"$T/pgbench.out" 2>&1 ||
    fail "pgbench -C failed: $(cat "$T/pgbench.out")"
after=$(grep -c 'event=conn_end.*reused=1' "$T/waypoint.log" || true)
[ "$((after - before))" -ge 20 ] || fail "pgbench -C reused only $((after - before)) of 40 backends"
pass "pgbench -C reused $((after - before)) of 40 backends"
e2e_wait 10 "a parked session" '[ "$(role_backends $ROLE)" -ge 1 ]'
e2e_stop_waypoint
assert_eq 0 "$WP_RC" "waypoint exits 0 after the drain"
e2e_wait 10 "drain to close parked backends" '[ "$(role_backends $ROLE)" = 0 ]'
pass "drain closes parked sessions"
