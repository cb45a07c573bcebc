"""pgraw: a minimal PostgreSQL protocol 3.0 client for e2e tests that need what libpq
will not do: vanish with a TCP reset, close without Terminate, send Terminate in the
middle of a statement, keep sending while the server ends the session, or read the raw
BackendKeyData.

Only the simple query protocol. Every message is read whole (type, length, body) and
the length is checked before use, so a broken stream fails the test instead of hanging.
"""
import select
import socket
import struct
import time


class PgError(Exception):
    def __init__(self, fields):
        self.fields = fields
        super().__init__("%s %s %s" % (fields.get("S", ""), fields.get("C", ""), fields.get("M", "")))


def parse_error(body):
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


class Conn:
    def __init__(self, host, port, database="appdb", user="ignored", params=None, timeout=15):
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.pid = None
        self.key = None
        self.status = {}
        kv = {"user": user, "database": database}
        kv.update(params or {})
        body = struct.pack("!I", 196608)
        for k, v in kv.items():
            body += k.encode() + b"\0" + v.encode() + b"\0"
        body += b"\0"
        self.sock.sendall(struct.pack("!I", len(body) + 4) + body)
        while True:
            t, b = self.read_msg(timeout)
            if t == "E":
                raise PgError(parse_error(b))
            if t == "K":
                if len(b) < 8:
                    raise ValueError("short BackendKeyData")
                self.pid = struct.unpack("!I", b[:4])[0]
                self.key = b[4:]
            elif t == "S":
                k, v = b[:-1].split(b"\0", 1)
                self.status[k.decode()] = v.decode()
            elif t == "Z":
                return

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no message before the deadline")
        r, _, _ = select.select([self.sock], [], [], left)
        if not r:
            raise TimeoutError("no message before the deadline")
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("server closed the connection")
        self.buf += data

    def read_msg(self, timeout=15):
        deadline = time.monotonic() + timeout
        while len(self.buf) < 5:
            self._fill(deadline)
        t = chr(self.buf[0])
        n = struct.unpack("!I", self.buf[1:5])[0]
        if n < 4 or n > 64 * 1024 * 1024:
            raise ValueError("bad message length %d" % n)
        while len(self.buf) < 1 + n:
            self._fill(deadline)
        body = self.buf[5 : 1 + n]
        self.buf = self.buf[1 + n :]
        return t, body

    def send_query(self, sql):
        b = sql.encode() + b"\0"
        self.sock.sendall(b"Q" + struct.pack("!I", len(b) + 4) + b)

    def query(self, sql, timeout=15):
        """Runs sql; returns the rows (lists of str/None). Raises PgError on an error."""
        self.send_query(sql)
        rows, err = [], None
        while True:
            t, b = self.read_msg(timeout)
            if t == "D":
                n = struct.unpack("!H", b[:2])[0]
                off, row = 2, []
                for _ in range(n):
                    ln = struct.unpack("!i", b[off : off + 4])[0]
                    off += 4
                    if ln < 0:
                        row.append(None)
                    else:
                        row.append(b[off : off + ln].decode())
                        off += ln
                rows.append(row)
            elif t == "E":
                err = parse_error(b)
                if err.get("S") == "FATAL":
                    raise PgError(err)
            elif t == "Z":
                if err:
                    raise PgError(err)
                return rows

    def scalar(self, sql):
        return self.query(sql)[0][0]

    def terminate(self):
        self.sock.sendall(b"X\0\0\0\4")

    def close_fin(self):
        """Closes without Terminate: a FIN, as a client that just exits."""
        self.sock.shutdown(socket.SHUT_WR)
        self.sock.close()

    def close_rst(self):
        """Vanishes with a TCP reset (SO_LINGER 0), as a crashed host's stack would."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def cancel(host, port, pid, key):
    """Sends a CancelRequest; returns once the server closed the connection."""
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(struct.pack("!III", 16, 80877102, pid) + key)
    try:
        s.recv(1)
    finally:
        s.close()
