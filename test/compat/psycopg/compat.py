"""psycopg 3 through Waypoint, run by test/compat/run.sh.

Every check prints one line "check NAME pass|fail|na DETAIL" on stdout; run.sh turns
those lines into the result table (the checks are the same for all five drivers, see
docs/compatibility.md). Waiting is always "poll a condition until a deadline", never a
blind sleep. Environment: WP_HOST, WP_PORT, WP_DB, WP_ROLE (the role of the full grant).
"""

import datetime
import decimal
import hashlib
import os
import sys
import threading
import time
import traceback
import uuid

import psycopg
from psycopg import errors, sql
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

HOST, PORT, DB, ROLE = (os.environ[k] for k in ("WP_HOST", "WP_PORT", "WP_DB", "WP_ROLE"))
DRIVER = "psycopg"
UNICODE = "héllo wörld ✓ 日本語 🐘 'quote' \\back"
ALL_BYTES = bytes(range(256))


def conninfo(**extra):
    base = dict(host=HOST, port=PORT, dbname=DB, user="ignored", sslmode="require", connect_timeout=10)
    base.update(extra)
    return psycopg.conninfo.make_conninfo(**base)


def connect(**extra):
    return psycopg.connect(conninfo(**extra), autocommit=True)


class CheckFailed(Exception):
    pass


def want(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def run(name, fn, detail):
    try:
        result = fn()
    except Exception as e:  # every failure becomes a table cell, never a crash
        traceback.print_exc(file=sys.stderr)
        print(f"check {name} fail {type(e).__name__}: {' '.join(str(e).split())}", flush=True)
        return
    if isinstance(result, str) and result.startswith("na:"):
        print(f"check {name} na {result[3:].strip()}", flush=True)
    else:
        print(f"check {name} pass {detail}", flush=True)


def scalar(conn, q, params=None):
    return conn.execute(q, params).fetchone()[0]


def expect_state(conn, q, state):
    try:
        conn.execute(q)
    except psycopg.Error as e:
        want(e.sqlstate == state, f"{q!r}: want SQLSTATE {state}, got {e.sqlstate} {e}")
        return
    raise CheckFailed(f"{q!r} succeeded, want SQLSTATE {state}")


def check_tls(conn, role):
    want(conn.pgconn.ssl_in_use, "connection is not TLS")
    user = scalar(conn, "SELECT current_user")
    want(user == role, f"current_user {user!r}, want {role!r}")


def check_types(c):
    row = c.execute(
        "SELECT %s::text, %s::bytea, %s::text, %s::int8, %s::float8, %s::numeric, %s::bool,"
        " %s::date, %s::uuid, %s::jsonb->>'k', %s::int4[], %s::timestamptz",
        (UNICODE, ALL_BYTES, None, 9223372036854775807, 1.5e300, decimal.Decimal("12345678901234567890.123456789"),
         True, datetime.date(2024, 2, 29), uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), Jsonb({"k": "ü"}),
         [1, -2, 3], datetime.datetime(2024, 2, 29, 12, 30, tzinfo=datetime.timezone.utc)),
    ).fetchone()
    expected = (UNICODE, ALL_BYTES, None, 9223372036854775807, 1.5e300, decimal.Decimal("12345678901234567890.123456789"),
                True, datetime.date(2024, 2, 29), uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), "ü", [1, -2, 3],
                datetime.datetime(2024, 2, 29, 12, 30, tzinfo=datetime.timezone.utc))
    want(tuple(row) == expected, f"round trip mismatch: {row!r}")
    c.execute("INSERT INTO items (driver, t, b, n) VALUES (%s, %s, %s, %s)", (DRIVER, UNICODE, ALL_BYTES, None))
    got = c.execute("SELECT t, b, n FROM items WHERE driver = %s", (DRIVER,)).fetchone()
    want(tuple(got) == (UNICODE, ALL_BYTES, None), f"stored row mismatch: {got!r}")


def check_prepared(c):
    q = "SELECT %s::int8 * 2 AS compat_prep, %s::text"
    for i in range(100):
        row = c.execute(q, (i, f"ü{i}"), prepare=True).fetchone()
        want(tuple(row) == (2 * i, f"ü{i}"), f"execution {i}: {row!r}")
    n = scalar(c, "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%AS compat_prep,%'"
               " AND statement NOT LIKE '%pg_prepared_statements%'")
    want(n == 1, f"{n} matching statements in pg_prepared_statements, want 1")


def check_errors(c):
    expect_state(c, "SELECT 1/0", "22012")
    expect_state(c, "SELECT * FROM no_such_table", "42P01")
    expect_state(c, "SELEC 1", "42601")
    with c.transaction():
        expect_state(c, "SELECT 1/0", "22012")
        expect_state(c, "SELECT 1", "25P02")
        raise psycopg.Rollback()
    want(scalar(c, "SELECT 'still usable'") == "still usable", "session not usable after errors")


def check_rollback(c):
    with c.transaction():
        c.execute("INSERT INTO items (driver, t) VALUES (%s, 'rolled back')", (DRIVER,))
        in_tx = scalar(c, "SELECT count(*) FROM items WHERE driver = %s AND t = 'rolled back'", (DRIVER,))
        raise psycopg.Rollback()
    after = scalar(c, "SELECT count(*) FROM items WHERE driver = %s AND t = 'rolled back'", (DRIVER,))
    want((in_tx, after) == (1, 0), f"rows inside the transaction {in_tx} (want 1), after ROLLBACK {after} (want 0)")


def check_copy_in(c):
    with c.cursor() as cur:
        with cur.copy("COPY items (driver, t, b, n) FROM STDIN") as copy:
            for i in range(1000):
                copy.write_row((DRIVER + "-copy", f"ü{i}", bytes([i % 256, 0, 92]), i))
    count, total = c.execute("SELECT count(*), sum(n) FROM items WHERE driver = %s", (DRIVER + "-copy",)).fetchone()
    want((count, total) == (1000, 999 * 1000 // 2), f"table has {count} rows, sum {total}")
    b = scalar(c, "SELECT b FROM items WHERE driver = %s AND n = 7", (DRIVER + "-copy",))
    want(b == bytes([7, 0, 92]), f"bytea through COPY: {b!r}")


def check_copy_out(c):
    out = bytearray()
    with c.cursor() as cur:
        with cur.copy("COPY (SELECT i, 'ü' || i FROM generate_series(1, 1000) i) TO STDOUT") as copy:
            for block in copy:
                out += block
    expected = "".join(f"{i}\tü{i}\n" for i in range(1, 1001)).encode()
    want(bytes(out) == expected, f"COPY TO: {len(out)} bytes, want {len(expected)}")


def wait_running(other, marker):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        n = scalar(other, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
                          " AND pid <> pg_backend_pid() AND query LIKE %s", (f"%{marker}%",))
        if n:
            return
        time.sleep(0.02)
    raise CheckFailed(f"query {marker} never seen running")


def check_cancel(c):
    result = {}

    def sleeper():
        try:
            c.execute("SELECT pg_sleep(30) AS compat_cancel")
            result["err"] = None
        except psycopg.Error as e:
            result["err"] = e

    t = threading.Thread(target=sleeper)
    t.start()
    with connect() as other:
        wait_running(other, "compat_cancel")
    t0 = time.monotonic()
    c.cancel_safe(timeout=5)
    t.join(timeout=5)
    want(not t.is_alive(), "query still running 5 s after the cancel")
    err = result.get("err")
    want(isinstance(err, errors.QueryCanceled) and err.sqlstate == "57014", f"want 57014, got {err!r}")
    print(f"psycopg: cancel took {time.monotonic() - t0:.3f} s", file=sys.stderr)
    want(scalar(c, "SELECT 'still usable'") == "still usable", "session not usable after cancel")


def check_notify(c):
    c.execute("LISTEN compat_psycopg")
    with connect() as other:
        other.execute("SELECT pg_notify('compat_psycopg', %s)", ("payload ü 🐘",))
    got = list(c.notifies(timeout=5, stop_after=1))
    want(len(got) == 1, "no notification within 5 s")
    want((got[0].channel, got[0].payload) == ("compat_psycopg", "payload ü 🐘"), f"got {got[0]!r}")
    c.execute("UNLISTEN *")


def check_big(c):
    count = total = 0
    with c.cursor() as cur:
        cur.execute("SELECT i, repeat(md5(i::text), 32) FROM generate_series(1, 20480) i")
        for i, s in cur:
            want(s == hashlib.md5(str(i).encode()).hexdigest() * 32, f"row {i} differs")
            count += 1
            total += len(s)
    want((count, total) == (20480, 20 << 20), f"{count} rows, {total} bytes")


def check_pool():
    # The pool's own health check (check_connection on every getconn) through Waypoint:
    # the driver's backend_pid is the server's pg_backend_pid(), pg_terminate_backend()
    # on it ends that pooled connection, and the next getconn notices and replaces it.
    with ConnectionPool(conninfo(), min_size=20, max_size=20, open=True, timeout=30,
                        check=ConnectionPool.check_connection) as pool:
        pool.wait(timeout=30)
        conns = [pool.getconn() for _ in range(20)]
        try:
            pids = set()
            for conn in conns:
                want(scalar(conn, "SELECT current_user") == ROLE, "pool connection has the wrong role")
                real = scalar(conn, "SELECT pg_backend_pid()")
                want(conn.info.backend_pid == real, f"backend_pid {conn.info.backend_pid} != pg_backend_pid() {real}")
                pids.add(conn.info.backend_pid)
                conn.rollback()
            want(len(pids) == 20, f"{len(pids)} distinct backend keys")
            want(pool.get_stats()["pool_size"] == 20, f"pool size {pool.get_stats()['pool_size']}")
        finally:
            for conn in conns:
                pool.putconn(conn)
        victim = next(iter(pids))
        with connect() as other:
            want(scalar(other, f"SELECT pg_terminate_backend({victim})") is True,
                 f"pg_terminate_backend({victim}) found no backend")
            deadline = time.monotonic() + 10
            while scalar(other, f"SELECT count(*) FROM pg_stat_activity WHERE pid = {victim}") != 0:
                want(time.monotonic() < deadline, f"backend {victim} still there")
                time.sleep(0.05)
        conns = [pool.getconn() for _ in range(20)]
        try:
            for conn in conns:
                want(scalar(conn, "SELECT 1") == 1, "a pooled connection failed after the check")
            want(victim not in {c.info.backend_pid for c in conns}, "the terminated backend was handed out")
            lost = pool.get_stats().get("connections_lost", 0)
            want(lost >= 1, f"the health check found {lost} lost connections")
        finally:
            for conn in conns:
                pool.putconn(conn)


def check_readonly():
    # The way libpq clients send Waypoint's option: inside "options".
    with connect(options="-c waypoint_presets=readonly") as c:
        check_tls(c, ROLE + "_readonly")
        scalar(c, "SELECT count(*) FROM items")
        expect_state(c, "INSERT INTO items (driver, t) VALUES ('psycopg', 'readonly')", "42501")


def check_direct():
    libpq = psycopg.pq.version()
    if libpq < 170000:
        return f"na: libpq {libpq} has no sslnegotiation=direct (needs 17)"
    # Through run.sh's first-byte relay, which checks the connection opens with TLS.
    with connect(sslnegotiation="direct", port=os.environ["WP_DIRECT_PORT"]) as c:
        check_tls(c, ROLE)


def main():
    v = psycopg.pq.version()
    print(f"version {DRIVER} {psycopg.__version__}+libpq-{v // 10000}.{v % 100}", flush=True)
    print(f"psycopg: libpq {psycopg.pq.version()} ({psycopg.pq.__impl__})", file=sys.stderr)
    try:
        c = connect()
    except Exception as e:
        print(f"check connect_tls fail {e}")
        sys.exit(1)
    run("connect_tls", lambda: check_tls(c, ROLE), f"sslmode=require, TLS in use, current_user={ROLE}")
    run("types", lambda: check_types(c), "unicode, bytea 0-255, NULL, int8, float8, numeric, bool, date, uuid, jsonb, int4[], timestamptz")
    run("prepared_x100", lambda: check_prepared(c), "prepare=True, 100 executions, in pg_prepared_statements")
    run("errors", lambda: check_errors(c), "22012, 42P01, 42601, 25P02; session usable after")
    run("rollback", lambda: check_rollback(c), "inserted row gone after ROLLBACK")
    run("copy_in", lambda: check_copy_in(c), "cursor.copy write_row (COPY FROM STDIN), 1000 rows")
    run("copy_out", lambda: check_copy_out(c), "cursor.copy (COPY TO STDOUT), 1000 rows")
    run("cancel", lambda: check_cancel(c), "cancel_safe(): 57014, session usable after")
    run("listen_notify", lambda: check_notify(c), "notifies(timeout=5), unicode payload")
    run("result_20mb", lambda: check_big(c), "20480 rows x 1 KiB, every row verified")
    run("pool_20", check_pool, "psycopg_pool min_size=max_size=20, 20 held at once, 20 backend pids = pg_backend_pid(); check_connection replaces one ended by pg_terminate_backend(info.backend_pid)")
    run("readonly", check_readonly, "options='-c waypoint_presets=readonly': role *_readonly, INSERT 42501")
    run("direct_tls", check_direct, "sslnegotiation=direct (libpq 17+)")
    c.close()


if __name__ == "__main__":
    main()
