#!/bin/bash
# Every ErrorResponse Waypoint sends before it closes reaches a client that is still
# sending (issue 17, spec 7.6). Closing a socket that holds unread client input makes
# the kernel answer with a reset, and the client's kernel then throws away what the
# client had not read yet: the FATAL. A raw client keeps sending `select 1` every 20 ms
# and reads only in between; it must read the FATAL (never ECONNRESET) when its grant
# is revoked, when an operator kills the session, and when its connect is refused while
# it has already pipelined queries behind its StartupMessage.
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_cluster
RO='{"appdb": {"permissions": ["readonly"]}}'
e2e_identity "$RO"
e2e_standin
SOCK="$T/admin.sock"
E2E_TOP="[revalidation]
interval = \"1s\"

[admin]
socket = \"$SOCK\"" e2e_config
e2e_waypoint
wpctl() { E2E_ADMIN_PASSWORD=x "$WAYPOINT" "$@" -config "$T/waypoint.toml"; }

# chatter MODE OUT: a client that sends `select 1` every 20 ms until it reads a FATAL
# (prints its SQLSTATE and message to OUT, exit 0), sees a reset (exit 2) or EOF
# without one (exit 3). MODE "pipelined" sends its StartupMessage and 200 queries in
# one write before it starts the loop.
chatter() {
    python3 - "$WP_PORT" "$1" >"$2" 2>&1 <<'PY' &
import errno, select, socket, struct, sys, time
port, mode = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port), timeout=10)
body = struct.pack("!I", 196608) + b"user\0x\0database\0appdb\0\0"
startup = struct.pack("!I", len(body) + 4) + body
q = b"select 1\0"
query = b"Q" + struct.pack("!I", len(q) + 4) + q
buf = b""
def parse():
    global buf
    while len(buf) >= 5:
        t, n = chr(buf[0]), struct.unpack("!I", buf[1:5])[0]
        if len(buf) < 1 + n:
            return
        b, buf = buf[5:1 + n], buf[1 + n:]
        if t == "E":
            f = {chr(p[0]): p[1:].decode() for p in b.split(b"\0") if p}
            if f.get("S") == "FATAL":
                print("FATAL", f.get("C"), f.get("M"))
                sys.exit(0)
try:
    if mode == "pipelined":
        s.sendall(startup + query * 200)
    else:
        s.sendall(startup)
    # Send before reading, as a client does that writes its next query and then waits
    # for the answer: a reset that came in meanwhile fails the send, and the FATAL
    # waiting in the receive queue is never read.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.02)
        s.sendall(query)
        while select.select([s], [], [], 0)[0]:
            d = s.recv(65536)
            if not d:
                print("EOF without a FATAL")
                sys.exit(3)
            buf += d
            parse()
    print("no FATAL within 30 s")
    sys.exit(4)
except (ConnectionResetError, BrokenPipeError) as e:
    print("reset before the FATAL was read:", e)
    sys.exit(2)
PY
    CHATTER=$!
    E2E_PIDS+=("$CHATTER")
}

sessions_count() {
    wpctl sessions -json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["sessions"]))'
}

# ---- revocation ------------------------------------------------------------------
chatter loop "$T/revoke.out"
e2e_wait 20 "the chatty session to be listed" '[ "$(sessions_count)" = 1 ]'
e2e_identity '{"otherdb": {"permissions": ["readonly"]}}'
rc=0
wait "$CHATTER" || rc=$?
assert_eq 0 "$rc" "revocation: the chatty client read its FATAL ($(cat "$T/revoke.out"))"
assert_contains "$(cat "$T/revoke.out")" "28000" "revocation: the FATAL is 28000"
assert_contains "$(cat "$T/revoke.out")" "revoked" "revocation: the FATAL says revoked"

# ---- kill ------------------------------------------------------------------------
e2e_identity "$RO"
chatter loop "$T/kill.out"
e2e_wait 20 "the chatty session to be listed" '[ "$(sessions_count)" = 1 ]'
wpctl kill --login alice@example.com >/dev/null
rc=0
wait "$CHATTER" || rc=$?
assert_eq 0 "$rc" "kill: the chatty client read its FATAL ($(cat "$T/kill.out"))"
assert_contains "$(cat "$T/kill.out")" "FATAL" "kill: the client was told"

# ---- a refusal with queries pipelined behind the StartupMessage ---------------------
e2e_identity '{"otherdb": {"permissions": ["readonly"]}}'
for i in 1 2 3; do
    chatter pipelined "$T/refused.out"
    rc=0
    wait "$CHATTER" || rc=$?
    assert_eq 0 "$rc" "refusal $i: the pipelining client read its FATAL ($(cat "$T/refused.out"))"
    assert_contains "$(cat "$T/refused.out")" "28000" "refusal $i: the FATAL is 28000"
done
