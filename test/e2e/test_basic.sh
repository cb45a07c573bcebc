#!/bin/bash
# Basic path: psql through Waypoint lands on the provisioned role with exactly the
# granted privileges; startup parameters reach the backend; one conn_end line is logged.
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_cluster
admin_sql -c "CREATE TABLE items (id int PRIMARY KEY, name text); INSERT INTO items VALUES (1, 'one');"
e2e_identity '{"appdb": {"permissions": ["readonly"]}, "*": {"permissions": ["readonly"]}}'
e2e_standin
e2e_waypoint

out=$(wpsql "" -c "SELECT current_user")
assert_eq "wp_alice_laptop_appdb" "$out" "current_user is the provisioned role"

out=$(wpsql "" -c "SELECT name FROM items WHERE id = 1")
assert_eq "one" "$out" "readonly grant: SELECT works"

out=$(wpsql "" -c "INSERT INTO items VALUES (2, 'two')" 2>&1) && fail "INSERT succeeded on a readonly grant"
assert_contains "$out" "42501" "readonly grant: INSERT fails with 42501"

# The client's user name is ignored; its other parameters are forwarded.
out=$(PGAPPNAME=e2e-basic-app wpsql "user=postgres options='-c search_path=pg_catalog,public'" \
    -c "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()" \
    -c "SHOW search_path" -c "SELECT current_user")
assert_eq "e2e-basic-app
pg_catalog,public
wp_alice_laptop_appdb" "$out" "application_name and options forwarded; client user ignored"

# database defaults to the user name, as in PostgreSQL: user=appdb without dbname.
out=$(psql -X -qAt "host=127.0.0.1 port=$WP_PORT user=appdb sslmode=disable" -c "SELECT current_database()")
assert_eq "appdb" "$out" "database defaults to the user name"

# A missing database is PostgreSQL's own 3D000, and no role is created for it.
out=$(wpsql "dbname=nosuchdb" -c "SELECT 1" 2>&1) && fail "connected to a missing database"
assert_contains "$out" 'database "nosuchdb" does not exist' "missing database: PostgreSQL's message"
e2e_wait 5 "refusal log line" log_has 'sqlstate=3D000'
pass "missing database: 3D000 in the log"
out=$(super_sql -c "SELECT count(*) FROM pg_roles WHERE rolname LIKE '%nosuchdb%'")
assert_eq "0" "$out" "no role for a missing database"

# Every relayed connection ends with one conn_end line naming who, what and how much.
e2e_wait 5 "conn_end lines" '[ "$(log_count conn_end)" -ge 4 ]'
line=$(log_line conn_end)
for field in listener=pg-main user=alice@example.com node=laptop.tail1234.ts.net. \
    role=wp_alice_laptop_appdb database=appdb preset=full bytes_in= bytes_out= duration_ms= \
    outcome=ok; do
    assert_contains "$line" "$field" "conn_end has $field"
done
assert_not_contains "$(cat "$T/waypoint.log")" "adminpw" "no admin password in the log"

# Raw protocol: GSSENCRequest is answered 'N'; a 3.2 StartupMessage with a _pq_ option
# gets NegotiateProtocolVersion (3.0, the option listed) and the session goes on at 3.0.
python3 - "$WP_PORT" <<'PY' || fail "protocol negotiation"
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
def recv_exact(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        assert c, "connection closed"
        b += c
    return b
s.sendall(struct.pack("!II", 8, 80877104))
assert recv_exact(1) == b"N", "GSSENCRequest not answered N"
params = b"user\0x\0database\0appdb\0_pq_.test_option\0on\0\0"
s.sendall(struct.pack("!II", 8 + len(params), (3 << 16) | 2) + params)
types = []
while True:
    t = recv_exact(1)
    body = recv_exact(struct.unpack("!I", recv_exact(4))[0] - 4)
    types.append(t)
    if t == b"v":
        newest, n = struct.unpack("!II", body[:8])
        assert newest == (3 << 16), "NegotiateProtocolVersion newest %x" % newest
        assert n == 1 and body[8:].rstrip(b"\0") == b"_pq_.test_option", body
    if t in (b"Z", b"E"):
        break
assert types[0] == b"v" and b"R" in types and types[-1] == b"Z", types
q = b"SELECT current_user\0"
s.sendall(b"Q" + struct.pack("!I", 4 + len(q)) + q)
data = b""
while b"Z" not in data[-6:-5]:
    data += s.recv(4096)
assert b"wp_alice_laptop_appdb" in data, data
s.sendall(b"X\0\0\0\4")
PY
pass "GSSENCRequest answered N; protocol 3.2 negotiated down to 3.0"

# PostgreSQL 18's own libpq asks for protocol 3.2 when told to; Waypoint answers with
# NegotiateProtocolVersion (3.0) and the session works. Older servers ship older clients
# that cannot ask, so this runs only against 18 and later.
if [ "$PG_MAJOR" -ge 18 ]; then
    out=$("$PG_BINDIR/psql" -X -qAt "$(wp_conninfo max_protocol_version=3.2)" \
        -c "SELECT current_user" 2>&1)
    assert_eq "wp_alice_laptop_appdb" "$out" "libpq $PG_MAJOR with max_protocol_version=3.2"
    out=$("$PG_BINDIR/psql" -X -qAt "$(wp_conninfo min_protocol_version=3.2)" \
        -c "SELECT 1" 2>&1) && fail "min_protocol_version=3.2 was accepted at 3.0: $out"
    assert_contains "$out" "protocol version" "libpq $PG_MAJOR refuses to go below 3.2 when asked"
fi
