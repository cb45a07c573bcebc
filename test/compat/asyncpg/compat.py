"""asyncpg through Waypoint, run by test/compat/run.sh.

Every check prints one line "check NAME pass|fail|na DETAIL" on stdout; run.sh turns
those lines into the result table (the checks are the same for all five drivers, see
docs/compatibility.md). A detail starting "NOTE" is shown under the table: asyncpg
does some things its own way (cancel is a task cancel or a timeout, and asyncpg keeps
the server's 57014 to itself). Waiting is always "poll a condition until a deadline",
never a blind sleep. Environment: WP_HOST, WP_PORT, WP_DB, WP_ROLE.
"""

import asyncio
import datetime
import decimal
import hashlib
import io
import json
import os
import sys
import time
import traceback
import uuid

import asyncpg

HOST, PORT, DB, ROLE = (os.environ[k] for k in ("WP_HOST", "WP_PORT", "WP_DB", "WP_ROLE"))
DRIVER = "asyncpg"
UNICODE = "héllo wörld ✓ 日本語 🐘 'quote' \\back"
ALL_BYTES = bytes(range(256))


class CheckFailed(Exception):
    pass


def want(cond, msg):
    if not cond:
        raise CheckFailed(msg)


async def connect(port=PORT, **kw):
    return await asyncpg.connect(host=HOST, port=int(port), database=DB, user="ignored",
                                 ssl="require", timeout=10, **kw)


async def run(name, coro_fn, detail):
    try:
        await coro_fn()
    except Exception as e:  # every failure becomes a table cell, never a crash
        traceback.print_exc(file=sys.stderr)
        print(f"check {name} fail {type(e).__name__}: {' '.join(str(e).split())}", flush=True)
        return
    print(f"check {name} pass {detail}", flush=True)


async def expect_state(conn, q, state):
    try:
        await conn.execute(q)
    except asyncpg.PostgresError as e:
        want(e.sqlstate == state, f"{q!r}: want SQLSTATE {state}, got {e.sqlstate} {e}")
        return
    raise CheckFailed(f"{q!r} succeeded, want SQLSTATE {state}")


async def check_tls(conn, role):
    want(conn._transport.get_extra_info("ssl_object") is not None, "connection is not TLS")
    user = await conn.fetchval("SELECT current_user")
    want(user == role, f"current_user {user!r}, want {role!r}")


async def check_types(c):
    args = (UNICODE, ALL_BYTES, None, 9223372036854775807, 1.5e300, decimal.Decimal("12345678901234567890.123456789"),
            True, datetime.date(2024, 2, 29), uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            json.dumps({"k": "ü"}), [1, -2, 3], datetime.datetime(2024, 2, 29, 12, 30, tzinfo=datetime.timezone.utc))
    row = await c.fetchrow(
        "SELECT $1::text, $2::bytea, $3::text, $4::int8, $5::float8, $6::numeric, $7::bool, $8::date,"
        " $9::uuid, $10::jsonb->>'k', $11::int4[], $12::timestamptz", *args)
    expected = args[:9] + ("ü", [1, -2, 3], args[11])
    want(tuple(row) == expected, f"round trip mismatch: {tuple(row)!r}")
    await c.execute("INSERT INTO items (driver, t, b, n) VALUES ($1, $2, $3, $4)", DRIVER, UNICODE, ALL_BYTES, None)
    got = await c.fetchrow("SELECT t, b, n FROM items WHERE driver = $1", DRIVER)
    want(tuple(got) == (UNICODE, ALL_BYTES, None), f"stored row mismatch: {tuple(got)!r}")


async def check_prepared(c):
    stmt = await c.prepare("SELECT $1::int8 * 2 AS compat_prep, $2::text")
    for i in range(100):
        row = await stmt.fetchrow(i, f"ü{i}")
        want(tuple(row) == (2 * i, f"ü{i}"), f"execution {i}: {tuple(row)!r}")
    n = await c.fetchval("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%AS compat_prep,%'"
                         " AND statement NOT LIKE '%pg_prepared_statements%'")
    want(n == 1, f"{n} matching statements in pg_prepared_statements, want 1")


async def check_errors(c):
    await expect_state(c, "SELECT 1/0", "22012")
    await expect_state(c, "SELECT * FROM no_such_table", "42P01")
    await expect_state(c, "SELEC 1", "42601")
    tr = c.transaction()
    await tr.start()
    try:
        await expect_state(c, "SELECT 1/0", "22012")
        await expect_state(c, "SELECT 1", "25P02")
    finally:
        await tr.rollback()
    want(await c.fetchval("SELECT 'still usable'") == "still usable", "session not usable after errors")


async def check_rollback(c):
    q = "SELECT count(*) FROM items WHERE driver = $1 AND t = 'rolled back'"
    tr = c.transaction()
    await tr.start()
    try:
        await c.execute("INSERT INTO items (driver, t) VALUES ($1, 'rolled back')", DRIVER)
        in_tx = await c.fetchval(q, DRIVER)
    finally:
        await tr.rollback()
    after = await c.fetchval(q, DRIVER)
    want((in_tx, after) == (1, 0), f"rows inside the transaction {in_tx} (want 1), after ROLLBACK {after} (want 0)")


async def check_copy_in(c):
    records = [(DRIVER + "-copy", f"ü{i}", bytes([i % 256, 0, 92]), i) for i in range(1000)]
    await c.copy_records_to_table("items", records=records, columns=["driver", "t", "b", "n"])
    # The text form too, from a file-like object.
    text = "".join(f"{DRIVER}-copytext\tü{i}\t{i}\n" for i in range(10)).encode()
    await c.copy_to_table("items", source=io.BytesIO(text), columns=["driver", "t", "n"])
    count, total = await c.fetchrow("SELECT count(*), sum(n) FROM items WHERE driver = $1", DRIVER + "-copy")
    want((count, total) == (1000, 999 * 1000 // 2), f"table has {count} rows, sum {total}")
    n = await c.fetchval("SELECT count(*) FROM items WHERE driver = $1", DRIVER + "-copytext")
    want(n == 10, f"text COPY: {n} rows")


async def check_copy_out(c):
    out = io.BytesIO()
    await c.copy_from_query("SELECT i, 'ü' || i FROM generate_series(1, 1000) i", output=out)
    expected = "".join(f"{i}\tü{i}\n" for i in range(1, 1001)).encode()
    want(out.getvalue() == expected, f"COPY TO: {len(out.getvalue())} bytes, want {len(expected)}")


async def wait_running(other, marker):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        n = await other.fetchval("SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
                                 " AND pid <> pg_backend_pid() AND query LIKE $1", f"%{marker}%")
        if n:
            return
        await asyncio.sleep(0.02)
    raise CheckFailed(f"query {marker} never seen running")


async def check_cancel(c):
    other = await connect()
    try:
        task = asyncio.ensure_future(c.execute("SELECT pg_sleep(30) AS compat_cancel"))
        await wait_running(other, "compat_cancel")
        t0 = time.monotonic()
        task.cancel()  # asyncpg sends a CancelRequest for the running query
        try:
            await task
            raise CheckFailed("query finished despite the cancel")
        except asyncio.CancelledError:
            pass
        # asyncpg waits for the cancelled query's end before the next command, and drops
        # the connection if the CancelRequest failed: a quick, working next query shows
        # the backend really stopped.
        got = await asyncio.wait_for(c.fetchval("SELECT 'still usable'"), timeout=5)
        el = time.monotonic() - t0
        want(got == "still usable" and not c.is_closed(), "session not usable after cancel")
        want(el < 5, f"cancel took {el:.1f} s")
        n = await other.fetchval("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%compat_cancel%'"
                                 " AND state = 'active' AND pid <> pg_backend_pid()")
        want(n == 0, "query still running after the cancel")
        print(f"asyncpg: cancel took {el:.3f} s", file=sys.stderr)
    finally:
        await other.close()


async def check_notify(c):
    got = asyncio.get_running_loop().create_future()

    def on_notify(conn, pid, channel, payload):
        if not got.done():
            got.set_result((channel, payload))

    await c.add_listener("compat_asyncpg", on_notify)
    other = await connect()
    try:
        await other.execute("SELECT pg_notify('compat_asyncpg', $1)", "payload ü 🐘")
    finally:
        await other.close()
    res = await asyncio.wait_for(got, timeout=5)
    want(res == ("compat_asyncpg", "payload ü 🐘"), f"got {res!r}")
    await c.remove_listener("compat_asyncpg", on_notify)


async def check_big(c):
    count = total = 0
    async with c.transaction():
        async for i, s in c.cursor("SELECT i, repeat(md5(i::text), 32) FROM generate_series(1, 20480) i", prefetch=2048):
            want(s == hashlib.md5(str(i).encode()).hexdigest() * 32, f"row {i} differs")
            count += 1
            total += len(s)
    rows = await c.fetch("SELECT i, repeat(md5(i::text), 32) AS s FROM generate_series(1, 20480) i")
    want(sum(len(r["s"]) for r in rows) == 20 << 20, "fetch() of the whole result differs")
    want((count, total) == (20480, 20 << 20), f"{count} rows, {total} bytes")


async def check_pool():
    pool = await asyncpg.create_pool(host=HOST, port=int(PORT), database=DB, user="ignored", ssl="require",
                                     min_size=20, max_size=20, timeout=30)
    try:
        conns = await asyncio.gather(*(pool.acquire() for _ in range(20)))
        try:
            users = await asyncio.gather(*(conn.fetchval("SELECT current_user") for conn in conns))
            want(set(users) == {ROLE}, f"roles {set(users)}")
            pids = {conn.get_server_pid() for conn in conns}
            want(len(pids) == 20, f"{len(pids)} distinct backend keys")
        finally:
            for conn in conns:
                await pool.release(conn)
    finally:
        await pool.close()


async def check_readonly():
    # asyncpg sends server_settings as startup parameters: Waypoint's own is one.
    c = await connect(server_settings={"waypoint_presets": "readonly"})
    try:
        await check_tls(c, ROLE + "_readonly")
        await c.fetchval("SELECT count(*) FROM items")
        await expect_state(c, "INSERT INTO items (driver, t) VALUES ('asyncpg', 'readonly')", "42501")
    finally:
        await c.close()


async def check_direct():
    # Through run.sh's first-byte relay, which checks the connection opens with TLS.
    c = await connect(port=os.environ["WP_DIRECT_PORT"], direct_tls=True)
    try:
        await check_tls(c, ROLE)
    finally:
        await c.close()


async def main():
    print(f"version {DRIVER} {asyncpg.__version__}", flush=True)
    try:
        c = await connect()
    except Exception as e:
        print(f"check connect_tls fail {e}")
        sys.exit(1)
    await run("connect_tls", lambda: check_tls(c, ROLE), f"ssl='require', TLS in use, current_user={ROLE}")
    await run("types", lambda: check_types(c), "unicode, bytea 0-255, NULL, int8, float8, numeric, bool, date, uuid, jsonb, int4[], timestamptz")
    await run("prepared_x100", lambda: check_prepared(c), "Connection.prepare once, 100 executions, in pg_prepared_statements")
    await run("errors", lambda: check_errors(c), "22012, 42P01, 42601, 25P02; session usable after")
    await run("rollback", lambda: check_rollback(c), "inserted row gone after ROLLBACK")
    await run("copy_in", lambda: check_copy_in(c), "copy_records_to_table (binary COPY FROM STDIN) 1000 rows, copy_to_table (text) 10 rows")
    await run("copy_out", lambda: check_copy_out(c), "copy_from_query (COPY TO STDOUT), 1000 rows")
    await run("cancel", lambda: check_cancel(c), "NOTE: task.cancel() sends a CancelRequest; asyncpg raises CancelledError and keeps the 57014 to itself; the next query runs at once")
    await run("listen_notify", lambda: check_notify(c), "add_listener, unicode payload")
    await run("result_20mb", lambda: check_big(c), "20480 rows x 1 KiB through a cursor and fetch(), every row verified")
    await run("pool_20", check_pool, "create_pool min_size=max_size=20, 20 held at once, 20 backend pids")
    await run("readonly", check_readonly, "server_settings={'waypoint_presets': 'readonly'}: role *_readonly, INSERT 42501")
    await run("direct_tls", check_direct, "direct_tls=True (ALPN postgresql)")
    await c.close()


if __name__ == "__main__":
    asyncio.run(main())
