#!/bin/bash
# A backend whose client left is stopped, not abandoned (issue 17, spec 7.6). A client
# starts a statement that commits a row every 0.25 s forever, then vanishes: with a TCP
# reset, with a FIN and no Terminate, and with a Terminate sent in the middle of the
# statement (with reuse on and off). PostgreSQL only notices a vanished client when it
# next writes to it, so Waypoint must stop the backend itself: proved with the data,
# the backend's pid is gone within about a second and no row is added afterwards.
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_cluster
admin_sql -c "CREATE TABLE t (id serial PRIMARY KEY, tag text, at timestamptz DEFAULT clock_timestamp())"
ROLE=wp_alice_laptop_appdb
e2e_identity '{"appdb": {"permissions": ["readwrite"]}}'
e2e_standin
e2e_config
e2e_waypoint

rows() { super_sql -c "SELECT count(*) FROM t WHERE tag = '$1'"; }
loop_pid() {
    super_sql -c "SELECT pid FROM pg_stat_activity WHERE usename = '$ROLE' AND query LIKE 'DO %$1%'"
}
pid_alive() { [ "$(super_sql -c "SELECT count(*) FROM pg_stat_activity WHERE pid = $1")" != 0 ]; }

# vanish MODE: the client runs the loop, then leaves in the way MODE says once the
# test has seen the backend commit a row.
vanish() {
    local mode=$1
    python3 - "$E2E_SRC/test/support" "$WP_PORT" "$mode" "$T/go-$mode" <<'PY' &
import os, sys, time
sys.path.insert(0, sys.argv[1])
import pgraw
port, mode, go = sys.argv[2], sys.argv[3], sys.argv[4]
c = pgraw.Conn("127.0.0.1", port)
c.send_query("DO $$ BEGIN LOOP PERFORM pg_sleep(0.25); INSERT INTO t(tag) VALUES ('%s'); "
             "COMMIT; END LOOP; END $$" % mode)
deadline = time.monotonic() + 30
while not os.path.exists(go):
    if time.monotonic() > deadline:
        sys.exit("never told to go")
    time.sleep(0.02)
if mode.startswith("rst"):
    c.close_rst()
elif mode.startswith("fin"):
    c.close_fin()
else:  # Terminate in the middle of the statement, then leave
    c.terminate()
    c.close_fin()
PY
    local client=$!
    E2E_PIDS+=("$client")
    e2e_wait 20 "the $mode loop to run" '[ -n "$(loop_pid "$mode")" ]'
    local pid
    pid=$(loop_pid "$mode")
    e2e_wait 20 "the $mode loop to commit" '[ "$(rows "$mode")" -gt 0 ]'
    touch "$T/go-$mode"
    wait "$client" || fail "$mode: the client script failed"
    local t0
    t0=$(now_ms)
    local deadline=$((SECONDS + 5))
    while pid_alive "$pid"; do
        [ "$SECONDS" -lt "$deadline" ] ||
            fail "$mode: backend $pid still running 5 s after its client left ($(rows "$mode") rows)"
        sleep 0.05
    done
    local took=$(($(now_ms) - t0))
    [ "$took" -lt 2000 ] || fail "$mode: the backend took ${took} ms to go"
    pass "$mode: backend $pid gone ${took} ms after its client left"
    local n1
    n1=$(rows "$mode")
    # One full connect through Waypoint later (far more than the loop's 0.25 s period
    # would need on a running backend if it were somehow still committing elsewhere):
    assert_eq "$ROLE" "$(wpsql "" -c "SELECT current_user")" "$mode: a new connect works"
    assert_eq 0 "$(super_sql -c "SELECT count(*) FROM pg_stat_activity WHERE usename = '$ROLE' AND query LIKE 'DO %'")" \
        "$mode: no backend of the role runs the loop"
    assert_eq "$n1" "$(rows "$mode")" "$mode: no row committed after the backend was stopped"
}

vanish rst
vanish fin
vanish term

# Without reuse the Terminate reaches the backend, which does not read it while busy.
e2e_config
cat >>"$T/waypoint.toml" <<'TOML'

[pool]
enabled = false
TOML
e2e_reload
vanish term-nopool
vanish fin-nopool
