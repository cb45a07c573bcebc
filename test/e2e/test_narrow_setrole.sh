#!/bin/bash
# A live narrowing leaves no session with more than the new grant (issue 17). alice
# (readwrite) switches to her readwrite group role with SET ROLE; her grant is then
# narrowed to readonly. PostgreSQL 16+ refuses that SET ROLE (memberships are granted
# SET FALSE) and the narrowed role takes effect in the live session; 14 and 15 cannot
# forbid it, so there the session is ended, as a revocation ends it (backend stopped,
# then a FATAL), rather than keep the group's rights. Either way the INSERT after the
# narrowing does not happen.
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_cluster
admin_sql -c "CREATE TABLE t (v int)"
RW='{"appdb": {"permissions": ["readwrite"]}}'
e2e_identity "$RW"
e2e_standin
E2E_TOP='[revalidation]
interval = "1s"' e2e_config
e2e_waypoint

python3 - "$E2E_SRC/test/support" "$WP_PORT" "$T" "$PG_MAJOR" <<'PY' >"$T/client.out" 2>&1 &
import os, sys, time
sys.path.insert(0, sys.argv[1])
import pgraw
port, tdir, major = sys.argv[2], sys.argv[3], int(sys.argv[4])
c = pgraw.Conn("127.0.0.1", port)
group = c.scalar("SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
                 "JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = current_user "
                 "AND g.rolname LIKE '%readwrite'")
try:
    c.query('SET ROLE "%s"' % group)
    print("set_role=ok")
except pgraw.PgError as e:
    print("set_role=refused", e.fields.get("C"))
print("current_user=" + c.scalar("SELECT current_user"), flush=True)
open(os.path.join(tdir, "ready"), "w").close()
deadline = time.monotonic() + 30
while not os.path.exists(os.path.join(tdir, "go")):
    if time.monotonic() > deadline:
        sys.exit("never told to go")
    time.sleep(0.02)
try:
    c.query("INSERT INTO t VALUES (1)")
    print("insert=ok")
except pgraw.PgError as e:
    print("insert=error", e.fields.get("S"), e.fields.get("C"), e.fields.get("M"))
except (EOFError, ConnectionError) as e:
    print("insert=closed", e)
PY
client=$!
E2E_PIDS+=("$client")
e2e_wait 20 "the client to be ready" '[ -f "$T/ready" ]'
if [ "$PG_MAJOR" -ge 16 ]; then
    assert_contains "$(cat "$T/client.out")" "set_role=refused" "PostgreSQL $PG_MAJOR refuses SET ROLE to the group"
else
    assert_contains "$(cat "$T/client.out")" "set_role=ok" "PostgreSQL $PG_MAJOR allows SET ROLE to the group"
fi
e2e_identity '{"appdb": {"permissions": ["readonly"]}}'
e2e_wait 20 "the narrowing to be applied" 'log_has "event=grant_updated" || log_has "outcome=narrowed"'
touch "$T/go"
wait "$client" || fail "client script failed: $(cat "$T/client.out")"
out=$(cat "$T/client.out")
assert_not_contains "$out" "insert=ok" "the INSERT after the narrowing did not run"
assert_eq 0 "$(super_sql -c "SELECT count(*) FROM t")" "no row was written"
if [ "$PG_MAJOR" -lt 16 ]; then
    assert_contains "$out" "narrowed" "PostgreSQL $PG_MAJOR: the session was ended and told why"
fi
