#!/usr/bin/env python3
"""soak_client: clients that vanish in the middle of work, for bench/soak.sh.

    soak_client.py HOST PORT STOPFILE COUNTSFILE [WORKERS]

Each worker loops until STOPFILE exists: it opens a raw protocol-3.0 connection to
Waypoint (no password: Waypoint authenticates by tailnet identity), waits for
ReadyForQuery, starts a piece of work and then leaves without finishing it, in turn:

  txn-rst     BEGIN; INSERT; pg_sleep(300), then closes with RST (SO_LINGER 0)
  txn-fin     the same, then a plain close (FIN, no Terminate)
  copy-rst    COPY soak_t FROM STDIN, a few rows of CopyData, then RST
  copy-fin    the same, then FIN
  term-mid    pg_sleep(300), then Terminate in the middle of the statement, then FIN

The sleeps outlast the soak's wait for backends to settle: a backend left behind by a
client that vanished is still there when the soak looks (PostgreSQL itself notices a
gone client only when it next writes to it).

A connect that fails (the grant revoked, the server restarting: the soak causes both)
is counted as "refused"; nothing here is an error. On exit COUNTSFILE gets one
"kind count" line per outcome. Standard library only.
"""
import os
import random
import socket
import struct
import sys
import threading
import time

KINDS = ["txn-rst", "txn-fin", "copy-rst", "copy-fin", "term-mid"]


def msg(kind, body):
    return kind + struct.pack("!I", len(body) + 4) + body


def startup():
    params = b"user\0ignored\0database\0appdb\0application_name\0soak\0\0"
    body = struct.pack("!I", 196608) + params
    return struct.pack("!I", len(body) + 4) + body


def query(sql):
    return msg(b"Q", sql.encode() + b"\0")


def read_msg(sock):
    head = b""
    while len(head) < 5:
        chunk = sock.recv(5 - len(head))
        if not chunk:
            raise ConnectionError("closed")
        head += chunk
    n = struct.unpack("!I", head[1:5])[0] - 4
    if n < 0 or n > 1 << 24:
        raise ConnectionError("bad length")
    body = b""
    while len(body) < n:
        chunk = sock.recv(n - len(body))
        if not chunk:
            raise ConnectionError("closed")
        body += chunk
    return head[:1], body


def wait_for(sock, want):
    """Reads until a message of type want (bytes); an ErrorResponse first is a refusal."""
    while True:
        t, _ = read_msg(sock)
        if t == want:
            return
        if t == b"E":
            raise ConnectionError("error response")


def close(sock, rst):
    if rst:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def one(host, port, kind):
    sock = socket.create_connection((host, port), timeout=10)
    try:
        sock.sendall(startup())
        wait_for(sock, b"Z")
    except (OSError, ConnectionError):
        sock.close()
        return "refused"
    try:
        if kind.startswith("txn"):
            sock.sendall(query("BEGIN; INSERT INTO soak_t (v) VALUES (2); SELECT pg_sleep(300)"))
            time.sleep(random.uniform(0.1, 0.5))
        elif kind.startswith("copy"):
            sock.sendall(query("COPY soak_t (v) FROM STDIN"))
            wait_for(sock, b"G")
            for _ in range(random.randint(1, 50)):
                sock.sendall(msg(b"d", b"3\n"))
            time.sleep(random.uniform(0.05, 0.3))
        else:
            sock.sendall(query("SELECT pg_sleep(300)"))
            time.sleep(random.uniform(0.1, 0.5))
            sock.sendall(msg(b"X", b""))
    except (OSError, ConnectionError):
        sock.close()
        return "lost"
    close(sock, kind.endswith("rst"))
    return kind


def worker(host, port, stopfile, counts, lock, seed):
    rnd = random.Random(seed)
    i = rnd.randrange(len(KINDS))
    while not os.path.exists(stopfile):
        kind = KINDS[i % len(KINDS)]
        i += 1
        try:
            got = one(host, port, kind)
        except OSError:
            got = "refused"
        with lock:
            counts[got] = counts.get(got, 0) + 1
        if got == "refused":
            time.sleep(0.2)  # the grant is revoked or the server restarting


def main():
    if len(sys.argv) not in (5, 6):
        sys.exit("usage: soak_client.py HOST PORT STOPFILE COUNTSFILE [WORKERS]")
    host, port, stopfile, countsfile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    n = int(sys.argv[5]) if len(sys.argv) == 6 else 2
    counts, lock = {}, threading.Lock()
    threads = [threading.Thread(target=worker, args=(host, port, stopfile, counts, lock, k))
               for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(countsfile + ".tmp", "w") as f:
        for k in sorted(counts):
            f.write("%s %d\n" % (k, counts[k]))
    os.rename(countsfile + ".tmp", countsfile)


if __name__ == "__main__":
    main()
