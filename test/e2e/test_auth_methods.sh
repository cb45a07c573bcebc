#!/bin/bash
# Upstream authentication: Waypoint logs in as the provisioned role whatever the backend
# asks for: SCRAM-SHA-256, MD5 (with MD5-stored passwords), cleartext password, trust.
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_identity '{"appdb": {"permissions": ["readonly"]}}'
e2e_standin

for method in scram-sha-256 md5 password trust; do
    pwenc=scram-sha-256
    [ "$method" = md5 ] && pwenc=md5
    e2e_cluster --auth "$method" --pwenc "$pwenc"
    rm -f "$T/waypoint.toml"
    e2e_waypoint
    if [ "$method" = md5 ]; then
        # Read while the session that set it is open: a session's end clears the password.
        active="SELECT count(*) FROM pg_stat_activity WHERE usename = 'wp_alice_laptop_appdb' AND query = 'SELECT pg_sleep(20)'"
        wpsql_bg "$T/md5.out" "" -c "SELECT pg_sleep(20)"
        e2e_wait 20 "the md5 session to run" '[ "$(super_sql -c "$active")" = 1 ]'
        stored=$(super_sql -c "SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = 'wp_alice_laptop_appdb'")
        assert_eq "md5" "$stored" "md5 backend: the role's password is stored as MD5"
        super_sql -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE usename = 'wp_alice_laptop_appdb' AND query = 'SELECT pg_sleep(20)'" >/dev/null
        wait "$BG_PID" || true
    fi
    out=$(wpsql "" -c "SELECT current_user")
    assert_eq "wp_alice_laptop_appdb" "$out" "backend auth $method: logged in as the role"
    # The provisioned password never shows up in the server log.
    assert_not_contains "$(cat "$T/pg/server.log")" "PASSWORD '" "backend auth $method: no plaintext password in the server log"
    e2e_stop_waypoint
    assert_eq 0 "$WP_RC" "backend auth $method: clean shutdown"
    "$PGCLUSTER" stop "$T/pg"
done
