"""A loopback TCP relay that records the first byte each client sends.

run.sh points the drivers' direct_tls check at this relay (WP_DIRECT_PORT), which
forwards to Waypoint unchanged. A driver that really negotiates direct TLS opens with a
TLS handshake record (0x16); one that quietly fell back to an SSLRequest opens with the
length 0x00. Each accepted connection appends one line "<hex byte>" to --log.

  first_byte_relay.py --to PORT --log FILE --ready-file FILE
The ready file receives the relay's port once it listens.
"""

import argparse
import os
import selectors
import socket
import threading


def pump(a, b):
    sel = selectors.DefaultSelector()
    sel.register(a, selectors.EVENT_READ, b)
    sel.register(b, selectors.EVENT_READ, a)
    try:
        while True:
            for key, _ in sel.select():
                data = key.fileobj.recv(65536)
                if not data:
                    return
                key.data.sendall(data)
    except OSError:
        return
    finally:
        a.close()
        b.close()


def handle(client, to_port, log_path, lock):
    try:
        first = client.recv(1, socket.MSG_PEEK)
    except OSError:
        client.close()
        return
    with lock, open(log_path, "a") as f:
        f.write((first.hex() if first else "eof") + "\n")
    try:
        upstream = socket.create_connection(("127.0.0.1", to_port), timeout=10)
        upstream.settimeout(None)
    except OSError:
        client.close()
        return
    pump(client, upstream)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--to", type=int, required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--ready-file", required=True)
    args = ap.parse_args()
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % srv.getsockname()[1])
    os.rename(tmp, args.ready_file)
    lock = threading.Lock()
    while True:
        client, _ = srv.accept()
        threading.Thread(target=handle, args=(client, args.to, args.log, lock), daemon=True).start()


if __name__ == "__main__":
    main()
