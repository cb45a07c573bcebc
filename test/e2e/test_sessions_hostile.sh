#!/bin/bash
# The admin CLI (issue 17 item 7): `waypoint sessions` prints what tailscaled says about a
# node, which the node's owner chooses. A node name with a newline and ESC must not draw
# a fake row or reach the operator's terminal as an escape sequence: control characters
# are escaped in the table (the -json output keeps the exact value, JSON-escaped). And
# the admin commands read only [admin] socket from the config, so they work in a shell
# that lacks the admin password's environment variable.
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_cluster
# The node's Name carries a newline, a fake row and an ANSI colour sequence.
NAME='laptop\n999    mallory@example.com    evil-node    \u001b[31mRED\u001b[0m\u0007.'
e2e_state "{\"identities\": [{\"match\": \"*\", \"whois\": {
  \"Node\": {\"ID\": 1, \"StableID\": \"nALICE\", \"Name\": \"$NAME\",
           \"ComputedName\": \"laptop\", \"Addresses\": [\"100.64.0.1/32\"], \"Tags\": null},
  \"UserProfile\": {\"ID\": 101, \"LoginName\": \"alice@example.com\", \"DisplayName\": \"Alice\"},
  \"CapMap\": {\"redo.com/cap/waypoint\": [
     {\"backends\": {\"pg-main\": {\"pg\": {\"databases\": {\"appdb\": {\"permissions\": [\"readonly\"]}}}}}}]}}}],
 \"certs\": {}}"
e2e_standin
SOCK="$T/admin.sock"
E2E_TOP="[admin]
socket = \"$SOCK\"" e2e_config
e2e_waypoint

# The admin commands, from a shell without E2E_ADMIN_PASSWORD (the config has
# admin_password = "${E2E_ADMIN_PASSWORD}").
wpctl() { env -u E2E_ADMIN_PASSWORD "$WAYPOINT" "$@" -config "$T/waypoint.toml"; }

out=$(wpctl sessions 2>&1) || fail "waypoint sessions fails without the admin password's variable: $out"
assert_not_contains "$out" "E2E_ADMIN_PASSWORD" "no complaint about the password's variable"
pass "waypoint sessions -config works without the admin password's variable"
rc=0
out=$(wpctl kill -session 999999 2>&1) || rc=$?
assert_eq 1 "$rc" "waypoint kill of no session exits 1"
assert_contains "$out" "no matching session" "waypoint kill -config reached the daemon"
# A config with a real error in [admin] socket is still reported.
sed 's|^socket = "'"$SOCK"'"|socket = ""|' "$T/waypoint.toml" >"$T/bad.toml"
out=$(env -u E2E_ADMIN_PASSWORD "$WAYPOINT" sessions -config "$T/bad.toml" 2>&1) &&
    fail "an empty [admin] socket was accepted: $out"
assert_contains "$out" "socket" "an empty [admin] socket is reported"

wpsql_bg "$T/idle.out" "" -c "SELECT pg_sleep(60)"
idle_client=$BG_PID
e2e_wait 20 "the session to be listed" \
    '[ "$(wpctl sessions -json | python3 -c "import json,sys; print(len(json.load(sys.stdin)[\"sessions\"]))")" = 1 ]'

# JSON: the exact name.
node=$(wpctl sessions -json | python3 -c 'import json,sys; print(repr(json.load(sys.stdin)["sessions"][0]["node"]))')
assert_eq "'laptop\\n999    mallory@example.com    evil-node    \\x1b[31mRED\\x1b[0m\\x07.'" "$node" "-json keeps the exact node name"

# Table: one header and one row, no control byte, the name escaped.
table=$(wpctl sessions)
assert_eq 2 "$(printf '%s\n' "$table" | wc -l)" "the table has a header and one row (no fake row)"
if printf '%s' "$table" | LC_ALL=C grep -q $'[\x01-\x08\x0b-\x1f\x7f]'; then
    fail "control bytes reach the terminal: $(printf '%s' "$table" | od -c | head -20)"
fi
pass "no control byte in the table"
assert_contains "$table" 'laptop\n999    mallory@example.com    evil-node    \x1b[31mRED\x1b[0m\x07.' \
    "the node name is shown with its control characters escaped"
assert_contains "$table" "alice@example.com" "the real row is there"

kill "$idle_client" 2>/dev/null || true
