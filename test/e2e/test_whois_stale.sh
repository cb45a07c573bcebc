#!/bin/bash
# The WhoIs made at accept stands in for the connect's own only while it is fresh. A
# client that waits before its StartupMessage must not be let in on a grant withdrawn in
# the meantime: Waypoint asks again when the accept-time answer is older than 1 s.
# (Time is the behaviour under test here: the client waits past that age on purpose.)
. "$(dirname "$0")/lib.sh"
e2e_init

FLOOD="$E2E_BIN/test/wp_flood"
e2e_cluster

state() { # PERMISSIONS_JSON TCP_MAP_JSON
    e2e_state "{\"identities\": [{\"match\": \"100.64.0.1\", \"whois\": {
  \"Node\": {\"ID\": 1, \"StableID\": \"nALICE\", \"Name\": \"laptop.tail1234.ts.net.\",
           \"ComputedName\": \"laptop\", \"Addresses\": [\"100.64.0.1/32\"], \"Tags\": null},
  \"UserProfile\": {\"ID\": 101, \"LoginName\": \"alice@example.com\", \"DisplayName\": \"Alice\"},
  \"CapMap\": {\"redo.com/cap/waypoint\": [
     {\"backends\": {\"pg-main\": {\"pg\": {\"databases\": {\"appdb\": {\"permissions\": $1}}}}}}]}}}],
 \"proxymap\": {\"tcp\": $2}, \"certs\": {}}"
}

state '["readonly"]' '{}'
e2e_standin
e2e_waypoint

run_client() { # DIR WAIT_MS -> the client's verdict on stdout
    local dir=$1 wait_ms=$2
    mkdir -p "$dir"
    "$FLOOD" 127.0.0.1 "$WP_PORT" 1 "$dir" >"$dir/out" 2>"$dir/err" &
    local pid=$!
    E2E_PIDS+=("$pid")
    e2e_wait 20 "the client's port" '[ -s "$dir/ports" ]'
    local port
    port=$(head -n 1 "$dir/ports")
    state '["readonly"]' "{\"127.0.0.1:$port\": \"100.64.0.1\"}"
    touch "$dir/go"
    e2e_wait 20 "the client to connect" '[ -e "$dir/connected" ] || ! kill -0 $pid'
    e2e_wait 10 "the accept-time WhoIs" 'grep -qE "addr=127\.0\.0\.1(:|%3A)$port .* 200" "$T/standin.log"'
    local t0
    t0=$(now_ms)
    state '[]' "{\"127.0.0.1:$port\": \"100.64.0.1\"}" # the grant is withdrawn
    e2e_wait 10 "${wait_ms} ms since the accept-time WhoIs" "[ \$(now_ms) -ge $((t0 + wait_ms)) ]"
    touch "$dir/probe"
    wait "$pid" || fail "client exited with an error: $(cat "$dir/err")"
    cat "$dir/out"
}

out=$(run_client "$T/slow" 1500)
case $out in
"E 28000 "*) pass "a client slower than 1 s after accept is judged on the current grant (28000)" ;;
*) fail "a client that waited past the withdrawal was answered '$out', want 'E 28000 ...'" ;;
esac
