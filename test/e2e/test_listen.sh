#!/bin/bash
# Listening on every address (listen = ":PORT"): one dual-stack socket; IPv6 callers are
# identified as "[addr]:port", IPv4 callers arriving as IPv4-mapped IPv6 as "a.b.c.d:port"
# (what tailscaled's WhoIs expects).
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_cluster
e2e_identity '{"appdb": {"permissions": ["readonly"]}}'
e2e_standin
e2e_config
sed -i "s/^listen = \"127.0.0.1:$WP_PORT\"/listen = \":$WP_PORT\"/" "$T/waypoint.toml"
e2e_waypoint

out=$(psql -X -qAt "host=127.0.0.1 port=$WP_PORT dbname=appdb user=x sslmode=disable" -c "SELECT current_user")
assert_eq "wp_alice_laptop_appdb" "$out" "IPv4 client on the all-addresses listener"
e2e_wait 5 "IPv4 WhoIs" 'grep -q "whois?proto=tcp&addr=127.0.0.1%3A" "$T/standin.log"'
pass "IPv4-mapped peer asked as a.b.c.d:port"

if python3 -c 'import socket; s=socket.socket(socket.AF_INET6); s.bind(("::1", 0))' 2>/dev/null; then
    out=$(psql -X -qAt "host=::1 port=$WP_PORT dbname=appdb user=x sslmode=disable" -c "SELECT current_user")
    assert_eq "wp_alice_laptop_appdb" "$out" "IPv6 client on the all-addresses listener"
    e2e_wait 5 "IPv6 WhoIs" 'grep -q "whois?proto=tcp&addr=%5B%3A%3A1%5D%3A" "$T/standin.log"'
    pass "IPv6 peer asked as [addr]:port"
    e2e_wait 5 "conn_end" 'grep -q "event=conn_end.*peer=\[::1\]:" "$T/waypoint.log"'
    pass "conn_end shows the IPv6 peer"
else
    pass "no IPv6 loopback here: IPv6 part skipped"
fi
