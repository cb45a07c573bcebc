#!/bin/bash
# Per-connection downgrades (waypoint_presets) and grant changes between connections.
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_cluster
admin_sql -c "CREATE TABLE items (id int PRIMARY KEY, name text);"
e2e_identity '{"appdb": {"permissions": ["readwrite"]}}'
e2e_standin
e2e_waypoint

out=$(wpsql "" -c "INSERT INTO items VALUES (1, 'one')" -c "SELECT count(*) FROM items")
assert_eq "1" "$out" "readwrite grant: INSERT works"

# Downgrade through options, the way libpq clients send it.
out=$(wpsql "options='-c waypoint_presets=readonly'" -c "SELECT current_user" -c "SELECT count(*) FROM items")
assert_eq "wp_alice_laptop_appdb_readonly
1" "$out" "options downgrade: separate readonly role that can SELECT"
out=$(wpsql "options='-c waypoint_presets=readonly'" -c "INSERT INTO items VALUES (2, 'two')" 2>&1) &&
    fail "INSERT succeeded on a downgraded connection"
assert_contains "$out" "42501" "options downgrade: INSERT fails with 42501"

# Waypoint's switch is removed from options; the rest still reaches the backend.
out=$(wpsql "options='-c waypoint.presets=readonly -c work_mem=7MB'" -c "SHOW work_mem")
assert_eq "7MB" "$out" "other options survive next to the downgrade switch"

# Invalid preset: 22023 naming the value, never silently ignored.
out=$(wpsql "options='-c waypoint_presets=superuser'" -c "SELECT 1" 2>&1) && fail "invalid preset accepted"
assert_contains "$out" "superuser" "invalid preset: message names the value"
e2e_wait 5 "22023 in the log" log_has 'sqlstate=22023'
pass "invalid preset: 22023"

# Asking for more than the grant never gives more: a readonly grant stays readonly.
e2e_identity '{"appdb": {"permissions": ["readonly"]}}'
out=$(wpsql "options='-c waypoint_presets=admin'" -c "INSERT INTO items VALUES (3, 'three')" 2>&1) &&
    fail "admin downgrade widened a readonly grant"
assert_contains "$out" "42501" "admin asked on a readonly grant: still readonly"
out=$(wpsql "options='-c waypoint_presets=admin'" -c "SELECT count(*) FROM items")
assert_eq "1" "$out" "admin asked on a readonly grant: SELECT still works"

# The narrowed grant applies to the full-grant role at its next connection.
out=$(wpsql "" -c "INSERT INTO items VALUES (4, 'four')" 2>&1) && fail "narrowed grant not applied"
assert_contains "$out" "42501" "narrowed grant applies at the next connection"

# The startup-parameter channel, as drivers such as Go's pgx send it (libpq cannot, so a
# minimal raw client does). Every spelling PostgreSQL would accept as a setting name is
# Waypoint's own: none may reach the backend and none may be ignored.
e2e_identity '{"appdb": {"permissions": ["readwrite"]}}'
RAW="$E2E_BIN/test/wp_rawclient"
for key in waypoint_presets WAYPOINT_PRESETS waypoint.presets Waypoint.Presets; do
    out=$("$RAW" 127.0.0.1 "$WP_PORT" "INSERT INTO items VALUES (10, 'ten')" \
        user=anyone database=appdb "$key=readonly" 2>&1) && fail "$key=readonly: INSERT succeeded"
    assert_contains "$out" "ERROR 42501" "startup parameter $key=readonly: INSERT fails with 42501"
done
out=$("$RAW" 127.0.0.1 "$WP_PORT" "SELECT current_user" user=anyone database=appdb \
    waypoint_presets=readonly)
assert_eq "wp_alice_laptop_appdb_readonly" "$out" "startup parameter downgrade: readonly role"
out=$("$RAW" 127.0.0.1 "$WP_PORT" "SELECT 1" user=anyone database=appdb waypoint_presets=bogus 2>&1) &&
    fail "invalid startup-parameter preset accepted"
assert_contains "$out" "ERROR 22023" "invalid startup-parameter preset: 22023"
# Two channels: the lower maximum wins.
out=$("$RAW" 127.0.0.1 "$WP_PORT" "SELECT current_user" user=anyone database=appdb \
    waypoint_presets=readwrite "options=-c waypoint.presets=readonly")
assert_eq "wp_alice_laptop_appdb_readonly" "$out" "two channels: the lower maximum wins"
