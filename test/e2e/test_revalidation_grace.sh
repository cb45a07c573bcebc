#!/bin/bash
# Revalidation that keeps failing is bounded (issue 17): while tailscaled errors or
# hangs, open sessions go on (the caller was authorised at connect time), but once the
# caller's identity has not been confirmed for [revalidation] grace, the session ends
# like a revocation (backend stopped first, then a clear FATAL). A tailscaled that
# recovers within the grace leaves the session alone.
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_cluster
RO='{"appdb": {"permissions": ["readonly"]}}'
e2e_identity "$RO"
e2e_standin
E2E_WHOIS_TIMEOUT=500ms
E2E_TOP='[revalidation]
interval = "1s"
grace = "4s"' e2e_config
e2e_waypoint

sleep_pid() { super_sql -c "SELECT pid FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'"; }
fails() { grep -c 'event=revalidation_failed' "$T/waypoint.log" || true; }
faulty() { # fault: the stand-in answers every request with it
    python3 - "$T/state.json" "$1" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
s["fault"] = None if sys.argv[2] == "none" else sys.argv[2]
open(sys.argv[1] + ".tmp", "w").write(json.dumps(s))
PY
    mv "$T/state.json.tmp" "$T/state.json"
}

# A short outage (two failed ticks) within the grace: the session goes on.
wpsql_bg "$T/short.out" "" -c "SELECT pg_sleep(60)"
short=$BG_PID
e2e_wait 20 "the first session to run" '[ -n "$(sleep_pid)" ]'
t_fault=$(now_ms)
faulty 500
e2e_wait 10 "two failed revalidations" '[ "$(fails)" -ge 2 ]'
faulty none
# Watch the session until well past the grace counted from the outage's start.
until_ms=$((t_fault + 4000 + 3000))
while [ "$(now_ms)" -lt "$until_ms" ]; do
    kill -0 "$short" 2>/dev/null || fail "a session ended although tailscaled recovered within the grace: $(cat "$T/short.out")"
    sleep 0.2
done
pass "a short tailscaled outage leaves the session running"
kill -KILL "$short" 2>/dev/null || true
e2e_wait 10 "the first session to be stopped" '[ -z "$(sleep_pid)" ]'

# A lasting outage: the session ends within the grace (plus a tick) with a clear FATAL.
for fault in 500 hang; do
    faulty none
    wpsql_bg "$T/$fault.out" "" -c "SELECT pg_sleep(60)"
    client=$BG_PID
    e2e_wait 20 "the $fault session to run" '[ -n "$(sleep_pid)" ]'
    pid=$(sleep_pid)
    t0=$(now_ms)
    faulty "$fault"
    rc=0
    wait "$client" || rc=$?
    took=$(($(now_ms) - t0))
    [ "$rc" -ne 0 ] || fail "$fault: the session ended normally"
    assert_contains "$(cat "$T/$fault.out")" "could not be confirmed" "$fault: the client is told why"
    [ "$took" -lt 9000 ] || fail "$fault: the session took ${took} ms to end (grace 4 s)"
    [ "$took" -ge 2500 ] || fail "$fault: the session ended after only ${took} ms (grace 4 s)"
    pass "$fault: the session ended ${took} ms into the outage"
    assert_eq 0 "$(super_sql -c "SELECT count(*) FROM pg_stat_activity WHERE pid = $pid")" \
        "$fault: its backend is gone"
done
