#!/bin/bash
# The WhoIs at accept may come before tailscaled knows the connection. A userspace-
# networking tailscaled dials Waypoint first and registers the local ip:port of that
# dial in its proxymap only once the dial has returned (wgengine/netstack forwardTCP,
# "this is racy, dialing before we register our local address", tailscale#1616), and it
# relays the caller's first byte only after that. So Waypoint's accept-time WhoIs can
# get a 404 for a genuine caller; by the time the StartupMessage is in, the mapping
# exists. The caller must be let in, not refused with 28000. Modelled with the stand-in:
# the socket connects while its port is not yet mapped, the accept-time WhoIs is seen
# in the stand-in's log, then the port is mapped and the StartupMessage goes out.
. "$(dirname "$0")/lib.sh"
e2e_init

FLOOD="$E2E_BIN/test/wp_flood"
e2e_cluster

state() { # TCP_MAP_JSON
    e2e_state "{\"identities\": [{\"match\": \"100.64.0.1\", \"whois\": {
  \"Node\": {\"ID\": 1, \"StableID\": \"nALICE\", \"Name\": \"laptop.tail1234.ts.net.\",
           \"ComputedName\": \"laptop\", \"Addresses\": [\"100.64.0.1/32\"], \"Tags\": null},
  \"UserProfile\": {\"ID\": 101, \"LoginName\": \"alice@example.com\", \"DisplayName\": \"Alice\"},
  \"CapMap\": {\"redo.com/cap/waypoint\": [
     {\"backends\": {\"pg-main\": {\"pg\": {\"databases\": {\"appdb\": {\"permissions\": [\"readonly\"]}}}}}}]}}}],
 \"proxymap\": {\"tcp\": $1}, \"certs\": {}}"
}

state '{}'
e2e_standin
e2e_waypoint

dir="$T/c"
mkdir -p "$dir"
"$FLOOD" 127.0.0.1 "$WP_PORT" 1 "$dir" >"$dir/out" 2>"$dir/err" &
FLOOD_PID=$!
E2E_PIDS+=("$FLOOD_PID")
e2e_wait 20 "the client's port" '[ -s "$dir/ports" ]'
port=$(head -n 1 "$dir/ports")
touch "$dir/go"
e2e_wait 20 "the client to connect" '[ -e "$dir/connected" ] || ! kill -0 $FLOOD_PID'
[ -e "$dir/connected" ] || fail "client failed: $(cat "$dir/err")"
e2e_wait 10 "the accept-time WhoIs" 'grep -qE "addr=127\.0\.0\.1(:|%3A)$port " "$T/standin.log"'
pass "the accept-time WhoIs asked before the port was mapped"

state "{\"127.0.0.1:$port\": \"100.64.0.1\"}" # tailscaled registered its dial
touch "$dir/probe"
wait "$FLOOD_PID" || fail "client exited with an error: $(cat "$dir/err")"
out=$(cat "$dir/out")
assert_eq "R" "$out" "a caller whose mapping appeared after accept is let in (AuthenticationOk)"
e2e_wait 10 "the conn_end line" '[ "$(log_count conn_end)" -ge 1 ]'
assert_contains "$(log_line conn_end)" "user=alice@example.com" "identified as alice"
