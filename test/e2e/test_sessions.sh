#!/bin/bash
# Live sessions (issue 13): the admin socket ([admin] socket, mode 0600), `waypoint
# sessions` (table and -json) and `waypoint kill --login / --session`, through the real
# binary with psql. A kill stops the backend first: its pid is gone from pg_stat_activity
# by the time the client has its FATAL, and an INSERT in flight did not commit.
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_cluster
admin_sql -c "CREATE TABLE kill_t (v int)"
e2e_identity '{"appdb": {"permissions": ["readwrite"]}}'
e2e_standin
SOCK="$T/admin.sock"
AUDIT="$T/audit.jsonl"
E2E_TOP="[admin]
socket = \"$SOCK\"" e2e_config
e2e_waypoint
assert_contains "$(log_line admin_listening)" "socket=$SOCK" "admin socket announced"
assert_eq 600 "$(stat -c %a "$SOCK")" "admin socket is mode 0600"

wpctl() { E2E_ADMIN_PASSWORD=x "$WAYPOINT" "$@" -config "$T/waypoint.toml"; }
backend_pid() { super_sql -c "SELECT pid FROM pg_stat_activity WHERE usename LIKE 'wp\_alice\_laptop\_appdb%' AND query LIKE '$1%' AND state = 'active'"; }

# No sessions yet.
out=$(wpctl sessions -json)
assert_eq 0 "$(echo "$out" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["sessions"]))')" "no sessions listed at first"

# An open session is listed with who, where, what and how much.
wpsql_bg "$T/idle.out" "options='-c waypoint_presets=readonly'" -c "SELECT pg_sleep(60)"
idle_client=$BG_PID
e2e_wait 20 "the idle session to run" '[ -n "$(backend_pid "SELECT pg_sleep(60)")" ]'
json=$(wpctl sessions -json)
field() { echo "$json" | python3 -c "import json,sys; s=json.load(sys.stdin)['sessions'][0]; print(s['$1'])"; }
assert_eq "alice@example.com" "$(field login)" "sessions: login"
assert_eq "laptop.tail1234.ts.net." "$(field node)" "sessions: node"
assert_eq "wp_alice_laptop_appdb_readonly" "$(field role)" "sessions: role (the downgraded one)"
assert_eq "appdb" "$(field database)" "sessions: database"
assert_eq "public:readonly" "$(field presets)" "sessions: effective presets (downgraded)"
assert_eq "False" "$(field tls)" "sessions: tls"
assert_eq "active" "$(field state)" "sessions: state"
[ "$(field bytes_in)" -gt 0 ] || fail "sessions: bytes_in not counted live"
pass "sessions: bytes counted while the session runs"
case $(field since) in 20*T*Z) pass "sessions: since is an RFC 3339 time" ;; *) fail "since: $(field since)" ;; esac
idle_id=$(field id)
table=$(wpctl sessions)
assert_contains "$table" "wp_alice_laptop_appdb_readonly" "sessions table lists the role"
assert_contains "$table" "BYTES_IN" "sessions table has a header"

# kill --session with a wrong id: nothing matched, exit 1, the session goes on.
rc=0
out=$(wpctl kill --session 999999 2>&1) || rc=$?
assert_eq 1 "$rc" "kill of an unknown session exits 1"
assert_contains "$out" "no matching session" "kill of an unknown session says so"
kill -0 "$idle_client" 2>/dev/null || fail "the session died after a kill that matched nothing"

# Bad usage is a usage error.
rc=0
wpctl kill >/dev/null 2>&1 || rc=$?
assert_eq 2 "$rc" "kill without -login/-session is a usage error"

# kill --login with an INSERT in flight: the backend goes first, nothing commits.
wpsql_bg "$T/insert.out" "" -c "INSERT INTO kill_t SELECT 1 FROM pg_sleep(60)"
insert_client=$BG_PID
e2e_wait 20 "the insert to run" '[ -n "$(backend_pid "INSERT INTO kill_t")" ]'
ins_pid=$(backend_pid "INSERT INTO kill_t")
idle_pid=$(backend_pid "SELECT pg_sleep(60)")
out=$(wpctl kill --login alice@example.com)
assert_contains "$out" "ended 2 session(s)" "kill --login ended both of alice's sessions"
# When `kill` returns the sessions are gone, so their backends are gone too.
gone=$(super_sql -c "SELECT count(*) FROM pg_stat_activity WHERE pid IN ($ins_pid, $idle_pid)")
assert_eq 0 "$gone" "both backends gone when kill returns"
rc=0
wait "$insert_client" || rc=$?
[ "$rc" -ne 0 ] || fail "the killed psql exited 0"
assert_contains "$(cat "$T/insert.out")" "57P01" "client got FATAL 57P01"
assert_contains "$(cat "$T/insert.out")" "ended by a Waypoint administrator" "with a clear message"
assert_eq 0 "$(super_sql -c "SELECT count(*) FROM kill_t")" "the insert in flight did not commit"
wait "$idle_client" || true
assert_contains "$(cat "$T/idle.out")" "ended by a Waypoint administrator" "the idle session got it too"
e2e_wait 5 "backend_stopped log lines" '[ "$(grep -c "event=backend_stopped.*reason=killed" "$T/waypoint.log")" -ge 2 ]'
assert_contains "$(log_line backend_stopped)" "result=gone" "log says the backend was stopped"
assert_contains "$(log_line backend_stopped)" "role_locked_out=no" "kill does not lock the role out"
e2e_wait 5 "conn_end outcome=killed" log_has 'outcome=killed'
pass "conn_end outcome=killed"

# kill --session ends exactly that one (b is told apart by starting it after a is listed).
nsessions() { wpctl sessions -json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["sessions"]))'; }
wpsql_bg "$T/a.out" "" -c "SELECT pg_sleep(60)"
a=$BG_PID
e2e_wait 20 "session a listed" '[ "$(nsessions)" = 1 ]'
aid=$(wpctl sessions -json | python3 -c 'import json,sys; print(json.load(sys.stdin)["sessions"][0]["id"])')
wpsql_bg "$T/b.out" "" -c "SELECT pg_sleep(61)"
b=$BG_PID
e2e_wait 20 "two sessions" '[ "$(nsessions)" = 2 ]'
bid=$(wpctl sessions -json | python3 -c '
import json, sys
print([s["id"] for s in json.load(sys.stdin)["sessions"] if s["id"] != '"$aid"'][0])')
out=$(wpctl kill --session "$bid" -json)
assert_contains "$out" "\"killed\": [" "kill -json answers with the ids"
rc=0
wait "$b" || rc=$?
[ "$rc" -ne 0 ] || fail "killed session b exited 0"
kill -0 "$a" 2>/dev/null || fail "session a died with b"
pass "kill --session ended only that session"
wpctl kill --login alice@example.com >/dev/null
wait "$a" || true

# A second instance (another port) on the same socket is refused with a clear error.
sed "s/127.0.0.1:$WP_PORT/127.0.0.1:$(free_port)/" "$T/waypoint.toml" >"$T/second.toml"
rc=0
E2E_ADMIN_PASSWORD=adminpw "$WAYPOINT" -config "$T/second.toml" 2>"$T/second.log" || rc=$?
[ "$rc" -ne 0 ] || fail "a second instance started on the same admin socket"
assert_contains "$(cat "$T/second.log")" "in use by another process" "second instance: socket in use"
e2e_stop_waypoint
[ ! -e "$SOCK" ] || fail "admin socket left behind after shutdown"
pass "admin socket removed at shutdown"
