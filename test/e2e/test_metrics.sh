#!/bin/bash
# Metrics (issue 13): a real Prometheus server (Debian's `prometheus`, on loopback, 1 s
# scrape interval, own dir and port) scrapes Waypoint's /metrics; counters asked
# through Prometheus's HTTP query API move after real psql connects and refusals. The
# exposition passes `promtool check metrics`, the shipped scrape config and alert rules
# pass `promtool check config` / `check rules`, and a non-loopback metrics address is
# refused unless allow_remote is set.
. "$(dirname "$0")/lib.sh"
e2e_init
command -v prometheus >/dev/null || fail "prometheus is not installed (scripts/deps.sh)"
command -v promtool >/dev/null || fail "promtool is not installed (scripts/deps.sh)"

# --- the shipped Prometheus files ----------------------------------------------------
cp "$E2E_SRC/etc/prometheus/prometheus.yml" "$E2E_SRC/etc/prometheus/waypoint-rules.yml" "$T/"
out=$(promtool check config "$T/prometheus.yml" 2>&1) || fail "promtool check config: $out"
pass "etc/prometheus/prometheus.yml passes promtool check config"
out=$(promtool check rules "$T/waypoint-rules.yml" 2>&1) || fail "promtool check rules: $out"
assert_contains "$out" "SUCCESS: 7 rules found" "etc/prometheus/waypoint-rules.yml passes promtool check rules"
out=$(promtool test rules "$E2E_SRC/test/e2e/waypoint-rules.test.yml" 2>&1) || fail "promtool test rules: $out"
pass "alert rules fire on the series they are written for (promtool test rules)"

e2e_cluster
e2e_identity '{"appdb": {"permissions": ["readonly"]}}'
e2e_standin

# --- config: non-loopback refused unless allowed --------------------------------------
METRICS_PORT=$(free_port)
E2E_TOP="[metrics]
listen = \":$METRICS_PORT\"" e2e_config
out=$(E2E_ADMIN_PASSWORD=x "$WAYPOINT" -check-config -config "$T/waypoint.toml" 2>&1) &&
    fail "a non-loopback metrics address was accepted"
assert_contains "$out" "not a loopback address" "non-loopback [metrics] listen is refused"
E2E_TOP="[metrics]
listen = \":$METRICS_PORT\"
allow_remote = true" e2e_config
E2E_ADMIN_PASSWORD=x "$WAYPOINT" -check-config -config "$T/waypoint.toml" >/dev/null 2>&1 ||
    fail "allow_remote = true did not allow a non-loopback address"
pass "allow_remote = true allows it"

E2E_TOP="[metrics]
listen = \"127.0.0.1:$METRICS_PORT\"" e2e_config
e2e_waypoint
assert_contains "$(log_line metrics_listening)" "port=$METRICS_PORT" "metrics endpoint announced"
M="http://127.0.0.1:$METRICS_PORT"

# --- the endpoint itself ----------------------------------------------------------------
code=$(curl -s -o /dev/null -w '%{http_code}' "$M/nothing")
assert_eq 404 "$code" "unknown path is 404"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$M/metrics")
assert_eq 405 "$code" "POST is 405"
ctype=$(curl -s -o /dev/null -w '%{content_type}' "$M/metrics")
assert_contains "$ctype" "version=0.0.4" "text exposition content type"

# --- real Prometheus -------------------------------------------------------------------
PROM_PORT=$(free_port)
mkdir -p "$T/prom"
cat >"$T/prom.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: waypoint
    static_configs:
      - targets: ["127.0.0.1:$METRICS_PORT"]
YML
prometheus --config.file="$T/prom.yml" --storage.tsdb.path="$T/prom" \
    --web.listen-address="127.0.0.1:$PROM_PORT" >"$T/prometheus.log" 2>&1 &
E2E_PIDS+=($!)
P="http://127.0.0.1:$PROM_PORT"

# promql QUERY: the first result's value, or "" (no series yet).
promql() {
    curl -s --get "$P/api/v1/query" --data-urlencode "query=$1" |
        python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")' 2>/dev/null
}
at_least() { # QUERY N: the query's value is >= N
    local v
    v=$(promql "$1")
    [ -n "$v" ] && python3 -c "import sys; sys.exit(0 if float('$v') >= $2 else 1)"
}
e2e_wait 60 "Prometheus to scrape Waypoint" at_least "'up{job=\"waypoint\"}'" 1
pass "Prometheus scrapes Waypoint"
e2e_wait 10 "build info in Prometheus" at_least 'waypoint_build_info' 1
e2e_wait 10 "parked-sessions gauge at 0" \
    '[ "$(promql "waypoint_parked_backend_sessions{listener=\"pg-main\"}")" = 0 ]'
pass "parked backend sessions gauge exported (0 without a pool)"

# Two relayed sessions and a refusal (no grant for otherdb), through real psql.
for i in 1 2; do
    out=$(wpsql "" -c "SELECT 42")
    assert_eq 42 "$out" "psql connect $i through Waypoint"
done
out=$(wpsql "dbname=otherdb" -c "SELECT 1" 2>&1) && fail "otherdb was allowed"
assert_contains "$out" "no Waypoint grant" "refusal for an ungranted database"

e2e_wait 20 "connections counter in Prometheus" \
    at_least "'waypoint_connections_total{listener=\"pg-main\",outcome=\"ok\"}'" 2
pass "waypoint_connections_total{outcome=ok} reached 2 in Prometheus"
e2e_wait 20 "refusal counter in Prometheus" \
    at_least "'waypoint_refusals_total{listener=\"pg-main\",reason=\"no_grant\",sqlstate=\"28000\"}'" 1
pass "waypoint_refusals_total{reason=no_grant,sqlstate=28000} counted"
e2e_wait 20 "WhoIs histogram in Prometheus" \
    at_least "'waypoint_whois_duration_seconds_count{listener=\"pg-main\",result=\"ok\"}'" 3
pass "WhoIs latency histogram observed every connect"
e2e_wait 20 "provisioning counters" \
    at_least "'sum(waypoint_roles_total{listener=\"pg-main\",action=~\"created|refreshed\"})'" 1
pass "roles created/refreshed counted (a reused parked session provisions nothing)"
e2e_wait 20 "bytes counters" \
    at_least "'waypoint_bytes_total{listener=\"pg-main\",direction=\"backend_to_client\"}'" 1
pass "bytes relayed counted"
e2e_wait 20 "admin connections gauge" \
    at_least "'sum(waypoint_admin_connections{listener=\"pg-main\"})'" 1
pass "admin connections per database exported"

# A session open now shows in the active-sessions gauge, and leaves it when it ends.
wpsql_bg "$T/long.out" "" -c "SELECT pg_sleep(30)"
e2e_wait 20 "active session gauge = 1" at_least "'waypoint_active_sessions{listener=\"pg-main\"}'" 1
pass "active session gauge counts the open session"
kill -KILL "$BG_PID" 2>/dev/null || true
e2e_wait 20 "active session gauge back to 0" \
    '[ "$(promql "waypoint_active_sessions{listener=\"pg-main\"}")" = 0 ]'
pass "active session gauge back to 0"

# Not on the tailnet: counted under its own reason.
e2e_no_identity
out=$(wpsql "" -c "SELECT 1" 2>&1) && fail "connected while not on the tailnet"
e2e_wait 20 "not_on_tailnet refusal" \
    at_least "'waypoint_refusals_total{reason=\"not_on_tailnet\"}'" 1
pass "not-on-tailnet refusal counted"

# A rejected reload shows in the reload gauge.
echo "bogus line" >>"$T/waypoint.toml"
e2e_reload
e2e_wait 20 "reload failure gauge" '[ "$(promql "waypoint_config_last_reload_success")" = 0 ]'
pass "rejected reload: waypoint_config_last_reload_success = 0"

# --- promtool on the live exposition --------------------------------------------------
curl -sf "$M/metrics" >"$T/metrics.txt" || fail "GET /metrics"
out=$(promtool check metrics <"$T/metrics.txt" 2>&1) || fail "promtool check metrics: $out"
pass "live exposition passes promtool check metrics"
assert_not_contains "$(cat "$T/metrics.txt")" "alice" "no per-user label values"
assert_not_contains "$(cat "$T/metrics.txt")" "wp_alice" "no per-role label values"
