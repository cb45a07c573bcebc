#!/bin/bash
# The BackendKeyData a client gets carries its backend's real PID (spec 7.4, issue 17):
# the same number as pg_backend_pid(), pg_stat_activity and NotificationResponse, the
# reused backend's on reuse, and pg_terminate_backend() on it reaches the session. Only
# the secret is Waypoint's own: a CancelRequest needs (pid, secret) as issued to this
# client, so an earlier client's key of a reused backend does nothing, and another
# caller (bob, from 127.0.0.2) cannot cancel alice's query with her own key.
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_cluster
ident() { # name stable-id match
    cat <<JSON
{"match": "$3", "whois": {
  "Node": {"ID": 1, "StableID": "$2", "Name": "$1.tail1234.ts.net.", "ComputedName": "$1",
           "Addresses": ["100.64.0.1/32"], "Tags": null},
  "UserProfile": {"ID": 101, "LoginName": "$1@example.com", "DisplayName": "$1"},
  "CapMap": {"redo.com/cap/waypoint": [
     {"backends": {"pg-main": {"pg": {"databases": {"appdb": {"permissions": ["readonly"]}}}}}}]}}}
JSON
}
e2e_state "{\"identities\": [$(ident bob nBOB 127.0.0.2), $(ident alice nALICE '*')], \"certs\": {}}"
e2e_standin
e2e_config
e2e_waypoint

python3 - "$E2E_SRC/test/support" "$WP_PORT" "$T/waypoint.log" "$T/pg" "$PGCLUSTER" <<'PY' || fail "backend key checks"
import socket, struct, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
import pgraw
port, log, pgdir, pgcluster = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]

def check(cond, what):
    print(("ok   " if cond else "FAIL ") + "[test_backend_key]: " + what, flush=True)
    if not cond:
        sys.exit(1)

def superuser(sql):
    return subprocess.run([pgcluster, "psql", pgdir, "-d", "appdb", "-qAt", "-c", sql],
                          check=True, capture_output=True, text=True).stdout.strip()

def wait_for(what, cond, secs=15):
    deadline = time.monotonic() + secs
    while not cond():
        if time.monotonic() > deadline:
            check(False, "timed out waiting for " + what)
        time.sleep(0.05)

def cancels(result):
    return sum(1 for l in open(log) if "event=cancel " in l and "result=" + result in l)

def cancel_from(src, pid, key):
    s = socket.socket()
    s.bind((src, 0))
    s.connect(("127.0.0.1", int(port)))
    s.sendall(struct.pack("!III", 16, 80877102, pid) + key)
    s.settimeout(10)
    s.recv(1)
    s.close()

def sleeping(pid):
    return superuser("SELECT count(*) FROM pg_stat_activity WHERE pid = %d AND "
                     "query = 'SELECT pg_sleep(30)' AND state = 'active'" % pid) == "1"

c1 = pgraw.Conn("127.0.0.1", port)
real = int(c1.scalar("SELECT pg_backend_pid()"))
check(c1.pid == real, "BackendKeyData pid %d is pg_backend_pid() %d" % (c1.pid, real))
check(superuser("SELECT usename FROM pg_stat_activity WHERE pid = %d" % c1.pid)
      == "wp_alice_alice_appdb", "pg_stat_activity lists the key's pid as alice's role (%s)" % superuser("SELECT usename FROM pg_stat_activity WHERE pid = %d" % c1.pid))
c1.query("LISTEN wp_key")
c1.send_query("NOTIFY wp_key")
notify_pid = None
while True:
    t, b = c1.read_msg()
    if t == "A":
        notify_pid = struct.unpack("!I", b[:4])[0]
    if t == "Z":
        break
check(notify_pid == c1.pid, "NotificationResponse pid %s is the key's pid" % notify_pid)
c1.query("UNLISTEN *")
old_key = c1.key
c1.terminate()
c1.sock.close()

# The next connect reuses the parked backend: same real pid, a new secret.
wait_for("the backend to be parked", lambda: "event=conn_end" in open(log).read())
c2 = pgraw.Conn("127.0.0.1", port)
check(c2.pid == c1.pid, "the reused backend's key carries its pid (%d, was %d)" % (c2.pid, c1.pid))
check(int(c2.scalar("SELECT pg_backend_pid()")) == c2.pid, "reused: key pid is pg_backend_pid()")
check(c2.key != old_key, "the reused backend's client got a new secret")

c2.send_query("SELECT pg_sleep(30)")
wait_for("the sleep to run", lambda: sleeping(c2.pid))
cancel_from("127.0.0.1", c2.pid, old_key)
wait_for("the old key's cancel to be handled", lambda: cancels("ignored") >= 1)
check(sleeping(c2.pid), "the earlier client's key of the reused backend cancels nothing")
cancel_from("127.0.0.2", c2.pid, c2.key)
wait_for("bob's cancel to be handled", lambda: cancels("ignored") >= 2)
check(sleeping(c2.pid), "another caller cannot cancel with alice's key")
cancel_from("127.0.0.1", c2.pid, c2.key)
t, b = c2.read_msg(40)
while t != "E":
    t, b = c2.read_msg(40)
check(pgraw.parse_error(b).get("C") == "57014", "alice's own key cancels her query")
check(cancels("forwarded") == 1, "exactly one cancel was forwarded")
while c2.read_msg()[0] != "Z":
    pass

# pg_terminate_backend on the key's pid ends this very session.
check(superuser("SELECT pg_terminate_backend(%d)" % c2.pid) == "t",
      "pg_terminate_backend(key pid) finds a backend")
try:
    c2.query("SELECT 1")
    check(False, "the session survived pg_terminate_backend of its key's pid")
except (pgraw.PgError, EOFError, ConnectionError) as e:
    check(True, "the session ended with its backend (%s)" % e)
PY
