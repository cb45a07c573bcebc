#!/bin/bash
# A fleet (issue 19): three Waypoint instances on one backend and one real redis-server
# (with requirepass, the password through ${VAR}). The grant's max_conns = 2 holds across
# the instances; kill -9 of an instance frees its counts within instance_ttl; Redis
# stopped: new connects are refused with 57P03 while open sessions keep working; Redis
# restarted (empty): connects succeed again without restarting Waypoint and the open
# sessions are counted again; `sessions -fleet` lists the sessions of all three and
# `kill -fleet` ends them everywhere, backends first.
. "$(dirname "$0")/lib.sh"
e2e_init

command -v redis-server >/dev/null || fail "redis-server is not installed (scripts/deps.sh)"
e2e_cluster
export E2E_REDIS_PASSWORD="fleet-$$-secret"
e2e_redis --requirepass "$E2E_REDIS_PASSWORD"
e2e_identity '{"appdb": {"permissions": ["readwrite"]}}' '{"max_conns": 2}'
e2e_standin
TTL_MS=3000

# instance_config NAME [PASSWORD]: $T/NAME.toml on its own port (PORT_NAME) and admin
# socket; C also serves /metrics on METRICS_C.
METRICS_C=$(free_port)
instance_config() {
    local name=$1 password=${2:-'${E2E_REDIS_PASSWORD}'} metrics=""
    unset WP_PORT
    [ "$name" = c ] && metrics="[metrics]
listen = \"127.0.0.1:$METRICS_C\""
    E2E_TOP="$metrics
[admin]
socket = \"$T/$name.sock\"

[redis]
address = \"127.0.0.1:$REDIS_PORT\"
password = \"$password\"
key_prefix = \"wpfleet:\"
heartbeat_interval = \"500ms\"
instance_ttl = \"${TTL_MS}ms\"
connect_timeout = \"500ms\"
command_timeout = \"500ms\"" e2e_config
    [ "$name" = waypoint ] || mv "$T/waypoint.toml" "$T/$name.toml"
    eval "PORT_$name=$WP_PORT"
}
# A is "waypoint" (its log is the one lib.sh shows on failure); written last.
instance_config b
instance_config c
instance_config waypoint
e2e_instance b
PID_b=$WP_PID
e2e_instance c
PID_c=$WP_PID
e2e_instance waypoint
PID_a=$WP_PID
PORT_a=$PORT_waypoint

on() { # on INSTANCE wpsql-args...
    local inst=$1
    shift
    WP_PORT=$(eval echo "\$PORT_$inst") wpsql "$@"
}
on_bg() { # on_bg INSTANCE OUTFILE psql-args...
    local inst=$1 out=$2
    shift 2
    WP_PORT=$(eval echo "\$PORT_$inst") wpsql_bg "$out" "" "$@"
}
logof() { [ "$1" = a ] && echo "$T/waypoint.log" || echo "$T/$1.log"; }
refusals_on() { grep -c "event=conn_refused" "$(logof "$1")" || true; }
# expect_refused INSTANCE SQLSTATE MESSAGE WHAT
expect_refused() {
    local inst=$1 state=$2 msg=$3 what=$4 before out
    before=$(refusals_on "$inst")
    out=$(on "$inst" "" -c "SELECT 1" 2>&1) && fail "$what: the connection was accepted"
    assert_contains "$out" "$msg" "$what: the client is told '$msg'"
    e2e_wait 5 "$what: the refusal line" '[ "$(refusals_on '"$inst"')" -gt '"$before"' ]'
    assert_contains "$(grep event=conn_refused "$(logof "$inst")" | tail -n 1)" "sqlstate=$state" \
        "$what: SQLSTATE $state"
}
sleepers() { super_sql -c "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(%'"; }
fleet_count() { redis_cli HVALS wpfleet:user:alice@example.com | awk '{s += $1} END {print s + 0}'; }
wpctl() { E2E_ADMIN_PASSWORD=x "$WAYPOINT" "$@"; }
# Ends sleeping sessions from the backend side (at most $1 of them): the session ends
# as soon as its backend does, whatever the client is doing.
end_sleepers() {
    super_sql -c "SELECT count(pg_terminate_backend(pid)) FROM (SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(%' LIMIT ${1:-1000}) p" >/dev/null
}

# --- the limit holds across instances ----------------------------------------------
on_bg a "$T/a1.out" -c "SELECT pg_sleep(60)"
a1=$BG_PID
on_bg a "$T/a2.out" -c "SELECT pg_sleep(60)"
a2=$BG_PID
e2e_wait 20 "two sessions on A" '[ "$(sleepers)" = 2 ]'
assert_eq 2 "$(fleet_count)" "Redis counts alice's two sessions"
expect_refused b 53300 "2 open across the Waypoint fleet, max_conns_per_user is 2" \
    "third session on B"
expect_refused c 53300 "too many connections for user alice@example.com" "third session on C"
end_sleepers 1

e2e_wait 10 "A to release the closed session" '[ "$(fleet_count)" = 1 ]'
assert_eq "fleet-ok" "$(on b "" -c "SELECT 'fleet-ok'")" "after one closed, B admits alice"

# --- kill -9 of an instance frees its counts within instance_ttl ---------------------
on_bg a "$T/a3.out" -c "SELECT pg_sleep(60)"
e2e_wait 20 "two sessions on A again" '[ "$(sleepers)" = 2 ]'
expect_refused c 53300 "max_conns_per_user is 2" "A full again: C refuses"
# B parked alice's backend after 'fleet-ok'. A connect there takes it and runs the reuse
# check while Redis answers the acquire; over the limit, the parked backend is closed,
# never announced.
idle_alice() { super_sql -c "SELECT count(*) FROM pg_stat_activity WHERE usename LIKE 'wp_alice%' AND state = 'idle'"; }
e2e_wait 10 "B's parked session of alice" '[ "$(idle_alice)" = 1 ]'
expect_refused b 53300 "max_conns_per_user is 2" "A full again: B, holding a parked session, refuses"
e2e_wait 10 "the refused connect to close B's parked session" '[ "$(idle_alice)" = 0 ]'
a_id=$(grep -o 'event=fleet_started instance=[^ ]*' "$T/waypoint.log" | sed 's/.*instance=//')
[ -n "$a_id" ] || fail "A logged no fleet_started line with its instance id"
kill -KILL "$PID_a"
wait "$PID_a" 2>/dev/null || true
t0=$(now_ms)
e2e_wait 15 "C to admit alice after A died" '[ "$(on c "" -c "SELECT 1")" = 1 ]'
freed=$(($(now_ms) - t0))
[ "$freed" -le $((TTL_MS + 1500)) ] || fail "A's counts freed after ${freed} ms, want <= instance_ttl ${TTL_MS} ms (+ margin)"
pass "A's counts freed ${freed} ms after kill -9 (instance_ttl ${TTL_MS} ms)"
# The dead A's backends would sleep on: end them, so later counts start clean.
end_sleepers
e2e_wait 10 "the dead A's backends gone" '[ "$(sleepers)" = 0 ]'
instances_json() { wpctl sessions -fleet -json -socket "$T/b.sock"; }
n_instances() { instances_json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["instances"]))'; }
e2e_wait 10 "A to drop out of the fleet view" '[ "$(n_instances)" = 2 ]'
assert_not_contains "$(instances_json)" "$a_id" "the dead A is not listed"
# A back (a new instance id), with nothing open on it.
e2e_instance waypoint
PID_a=$WP_PID

# --- Redis stopped: refused with 57P03, open sessions keep working -------------------
mkfifo "$T/q"
WP_PORT=$PORT_b PGAPPNAME=e2e psql -X -qAt -v VERBOSITY=verbose "$(WP_PORT=$PORT_b wp_conninfo)" \
    -f "$T/q" >"$T/open.out" 2>&1 &
open_client=$!
E2E_PIDS+=("$open_client")
exec 3>"$T/q"
echo "SELECT 'before-' || 1;" >&3
e2e_wait 20 "the open session on B to answer" 'grep -q before-1 "$T/open.out"'
e2e_wait 10 "the count to settle at 1" '[ "$(fleet_count)" = 1 ]'
e2e_redis_stop
expect_refused c 57P03 "shared state (Redis) is unreachable" "Redis down: new connect on C"
expect_refused a 57P03 "shared state (Redis) is unreachable" "Redis down: new connect on A"
echo "SELECT 'during-' || 2;" >&3
e2e_wait 10 "the open session to answer while Redis is down" 'grep -q during-2 "$T/open.out"'
pass "an open session keeps working while Redis is down"
rc=0
out=$(wpctl sessions -fleet -socket "$T/b.sock" 2>&1) || rc=$?
assert_eq 1 "$rc" "Redis down: sessions -fleet fails"
assert_contains "$out" "Redis is unreachable" "Redis down: sessions -fleet says why"
local_n=$(wpctl sessions -json -socket "$T/b.sock" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["sessions"]))')
assert_eq 1 "$local_n" "Redis down: the local sessions command still lists B's open session"
# A caller without a limit needs no decision: admitted, counted locally.
e2e_identity '{"appdb": {"permissions": ["readwrite"]}}' '{}'
assert_eq "no-limit" "$(on c "" -c "SELECT 'no-limit'")" "Redis down: a caller without a limit is admitted"
e2e_identity '{"appdb": {"permissions": ["readwrite"]}}' '{"max_conns": 2}'
e2e_wait 10 "redis_unreachable logged" 'grep -q event=redis_unreachable "$T/c.log"'
metric() { curl -sf "http://127.0.0.1:$METRICS_C/metrics" | awk -v k="$1" '$1 == k {print $2}'; }
assert_eq 0 "$(metric waypoint_redis_up)" "metrics: waypoint_redis_up is 0 while Redis is down"
[ "$(metric 'waypoint_fleet_limit_refusals_total{reason="redis_unavailable"}')" -ge 1 ] ||
    fail "metrics: no redis_unavailable refusal counted"
[ "$(metric 'waypoint_fleet_limit_refusals_total{reason="over_limit"}')" -ge 2 ] ||
    fail "metrics: the over-limit refusals on C were not counted"
[ "$(metric 'waypoint_redis_errors_total{kind="connect"}')" -ge 1 ] ||
    fail "metrics: no Redis connect error counted"
[ "$(metric 'waypoint_redis_duration_seconds_count{command="acquire"}')" -ge 3 ] ||
    fail "metrics: acquire round trips not in the latency histogram"
pass "metrics: Redis down, errors by kind, fleet-limit refusals and round-trip latency"
assert_contains "$(grep event=conn_refused "$T/c.log" | tail -n 1)" "reason=\"redis unreachable\"" \
    "the refusal log line names the reason"

# --- Redis back (empty): connects succeed, open sessions are counted again -----------
e2e_redis --requirepass "$E2E_REDIS_PASSWORD"
e2e_wait 10 "C to admit alice again without a restart" '[ "$(on c "" -c "SELECT 1")" = 1 ]'
e2e_wait 10 "B to re-register its open session" '[ "$(fleet_count)" = 1 ]'
pass "the open session is counted again after Redis came back empty"
on_bg c "$T/c1.out" -c "SELECT pg_sleep(60)"
c1=$BG_PID
e2e_wait 20 "a sleeper on C" '[ "$(sleepers)" -ge 1 ]'
e2e_wait 10 "two counted" '[ "$(fleet_count)" = 2 ]'
expect_refused a 53300 "max_conns_per_user is 2" "after the Redis restart the limit holds again"
end_sleepers
wait "$c1" 2>/dev/null || true
echo "SELECT 'after-' || 3;" >&3
e2e_wait 10 "the open session to answer after Redis is back" 'grep -q after-3 "$T/open.out"'
echo '\q' >&3 # not EOF: processes started since (redis-server) inherited the fifo
exec 3>&-
wait "$open_client" 2>/dev/null || true
e2e_wait 20 "every session closed" '[ "$(sleepers)" = 0 ] && [ "$(fleet_count)" = 0 ]'

# --- Redis turned replica (a failover left the address on the old primary) -------------
redis_cli REPLICAOF 127.0.0.1 1 >/dev/null # a primary that does not exist: READONLY
expect_refused c 57P03 "shared state (Redis) is unreachable" "Redis is a replica (READONLY)"
[ "$(metric 'waypoint_redis_errors_total{kind="unavailable"}')" -ge 1 ] ||
    fail "metrics: READONLY not counted as kind=unavailable"
redis_cli REPLICAOF NO ONE >/dev/null
e2e_wait 10 "C to admit alice once Redis is a primary again" '[ "$(on c "" -c "SELECT 1")" = 1 ]'
pass "READONLY is refused (57P03) and recovered from without a restart"

# --- sessions -fleet and kill -fleet ---------------------------------------------------
e2e_identity '{"appdb": {"permissions": ["readwrite"]}}' '{"max_conns": 10}'
on_bg a "$T/ka.out" -c "SELECT pg_sleep(60)"
ka=$BG_PID
on_bg b "$T/kb.out" -c "SELECT pg_sleep(60)"
kb=$BG_PID
on_bg c "$T/kc.out" -c "SELECT pg_sleep(60)"
kc=$BG_PID
e2e_wait 20 "one session on each instance" '[ "$(sleepers)" = 3 ]'
json=$(wpctl sessions -fleet -json -socket "$T/c.sock")
per_instance=$(echo "$json" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(len(d["instances"]), len({s["instance"] for s in d["sessions"]}), len(d["sessions"]),
      all(i["answered"] for i in d["instances"]))')
assert_eq "3 3 3 True" "$per_instance" "sessions -fleet: 3 instances, one session on each, all answered"
table=$(wpctl sessions -fleet -socket "$T/c.sock")
assert_contains "$table" "INSTANCE" "sessions -fleet table has an instance column"
local_only=$(wpctl sessions -json -socket "$T/c.sock" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["sessions"]))')
assert_eq 1 "$local_only" "plain sessions still lists only the local instance"
pids=$(super_sql -c "SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(%'")
out=$(wpctl kill -fleet -login alice@example.com -socket "$T/b.sock")
assert_contains "$out" "ended 3 session(s)" "kill -fleet ended alice's sessions on all three"
assert_eq 0 "$(super_sql -c "SELECT count(*) FROM pg_stat_activity WHERE pid IN ($pids)")" \
    "every backend is gone when kill -fleet returns"
for p in "$ka" "$kb" "$kc"; do
    wait "$p" 2>/dev/null || true
done
for f in ka kb kc; do
    assert_contains "$(cat "$T/$f.out")" "ended by a Waypoint administrator" "client on ${f#k} got the FATAL"
done
rc=0
wpctl kill -fleet -session 1 -socket "$T/b.sock" >/dev/null 2>&1 || rc=$?
assert_eq 2 "$rc" "kill -fleet -session is a usage error"

# --- a wrong Redis password: refused, and said so in the log --------------------------
instance_config d "wrong-password"
e2e_instance d
expect_refused d 57P03 "shared state (Redis) is unreachable" "wrong Redis password"
e2e_wait 5 "the AUTH failure logged" 'grep -q "AUTH refused" "$T/d.log"'
assert_not_contains "$(cat "$T"/*.log)" "$E2E_REDIS_PASSWORD" "the Redis password is never logged"

# A clean stop leaves the fleet at once, not after instance_ttl.
kill -TERM "$PID_c"
wait "$PID_c" 2>/dev/null || true
assert_eq 2 "$(n_instances)" "a stopped instance leaves the fleet view at once"
