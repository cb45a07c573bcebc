#!/bin/bash
# WhoIs asks about TCP (issue 10 item 1). A userspace-networking tailscaled keeps the
# local ip:port of every relayed TCP connection and UDP flow in separate proxymap
# tables; a WhoIs without proto falls back from TCP to UDP. A local process that opens a
# TCP connection from the port of a tailnet peer's UDP flow must not get that peer's
# identity: Waypoint asks with proto=tcp, so it is refused with 28000. A genuine TCP
# mapping still identifies the caller. The client is wp_rawclient bound to a chosen
# local port (psql cannot choose its source port).
. "$(dirname "$0")/lib.sh"
e2e_init

RAW="$E2E_BIN/test/wp_rawclient"
e2e_cluster
UDP_PORT=$(free_port)
TCP_PORT=$(free_port)
while [ "$TCP_PORT" = "$UDP_PORT" ]; do TCP_PORT=$(free_port); done
e2e_state "$(
    cat <<JSON
{"identities": [{"match": "100.64.0.1", "whois": {
  "Node": {"ID": 1, "StableID": "nALICE", "Name": "laptop.tail1234.ts.net.",
           "ComputedName": "laptop", "Addresses": ["100.64.0.1/32"], "Tags": null},
  "UserProfile": {"ID": 101, "LoginName": "alice@example.com", "DisplayName": "Alice"},
  "CapMap": {"redo.com/cap/waypoint": [
     {"backends": {"pg-main": {"pg": {"databases": {"appdb": {"permissions": ["readonly"]}}}}}}]}}}],
 "proxymap": {"udp": {"127.0.0.1:$UDP_PORT": "100.64.0.1"},
              "tcp": {"127.0.0.1:$TCP_PORT": "100.64.0.1"}},
 "certs": {}}
JSON
)"
e2e_standin
e2e_waypoint

raw() { # LOCAL_PORT: one connection from 127.0.0.1:LOCAL_PORT, prints the outcome
    WP_RAWCLIENT_LOCAL_PORT=$1 "$RAW" 127.0.0.1 "$WP_PORT" "SELECT current_user" \
        user=ignored database=appdb 2>&1 || true
}

# The stand-in itself: without proto the UDP flow answers (tailscaled's fallback), with
# proto=tcp it does not. This pins the model the rest of the test relies on.
q() {
    curl -s -o /dev/null -w '%{http_code}' --unix-socket "$T/ts.sock" \
        "http://local-tailscaled.sock/localapi/v0/whois?$1"
}
assert_eq 200 "$(q "addr=127.0.0.1:$UDP_PORT")" "stand-in: no proto falls back to the UDP table"
assert_eq 404 "$(q "proto=tcp&addr=127.0.0.1:$UDP_PORT")" "stand-in: proto=tcp ignores UDP flows"
assert_eq 200 "$(q "proto=udp&addr=127.0.0.1:$UDP_PORT")" "stand-in: proto=udp finds the flow"
assert_eq 404 "$(q "proto=sctp&addr=127.0.0.1:$TCP_PORT")" "stand-in: another proto matches nothing"
assert_eq 200 "$(q "proto=udp&addr=100.64.0.1:1")" "stand-in: a node's own IP ignores proto"

before=$(log_count conn_refused)
out=$(raw "$UDP_PORT")
assert_contains "$out" "ERROR 28000" "TCP from a UDP-mapped port: refused with 28000"
assert_not_contains "$out" "wp_alice" "TCP from a UDP-mapped port: no role of alice's"
e2e_wait 5 "the refusal line" '[ "$(log_count conn_refused)" -gt '"$before"' ]'
assert_contains "$(log_line conn_refused)" "sqlstate=28000" "refusal logged with 28000"
grep -q "whois?proto=tcp&addr=127.0.0.1" "$T/standin.log" ||
    fail "Waypoint's WhoIs did not ask with proto=tcp: $(grep whois "$T/standin.log" | tail -n 2)"
pass "WhoIs asked with proto=tcp"

out=$(raw "$TCP_PORT")
assert_eq "wp_alice_laptop_appdb" "$out" "TCP from a TCP-mapped port: identified as alice"
