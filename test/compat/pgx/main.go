// pgx v5 through Waypoint, run by test/compat/run.sh.
//
// Every check prints one line "check NAME pass|fail|na DETAIL" on stdout; run.sh turns
// those lines into the result table. The checks are the same for all five drivers (see
// docs/compatibility.md); a check that pgx cannot do says "na" with the reason.
// Waiting is always "poll a condition until a deadline", never a blind sleep.
//
// Environment: WP_HOST, WP_PORT, WP_DB (the database, "myapp"), WP_ROLE (the role
// Waypoint must log in as with the full grant).
package main

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

var (
	host = os.Getenv("WP_HOST")
	port = os.Getenv("WP_PORT")
	db   = os.Getenv("WP_DB")
	role = os.Getenv("WP_ROLE")
)

const driver = "pgx"

func url(extra string) string { return urlPort(port, extra) }

func urlPort(p, extra string) string {
	return fmt.Sprintf("postgres://ignored:ignored@%s:%s/%s?sslmode=require&connect_timeout=10%s",
		host, p, db, extra)
}

func report(name string, err error, detail string) {
	if err != nil {
		fmt.Printf("check %s fail %v\n", name, oneLine(err.Error()))
		return
	}
	fmt.Printf("check %s pass %s\n", name, detail)
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func connect(ctx context.Context, extra string) (*pgx.Conn, error) {
	return pgx.Connect(ctx, url(extra))
}

func sqlstate(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// expectState runs sql and wants it to fail with SQLSTATE want.
func expectState(ctx context.Context, c *pgx.Conn, sql, want string) error {
	_, err := c.Exec(ctx, sql)
	if got := sqlstate(err); got != want {
		return fmt.Errorf("%q: want SQLSTATE %s, got %v", sql, want, err)
	}
	return nil
}

func one(ctx context.Context, c *pgx.Conn, sql string, args ...any) (string, error) {
	var s string
	err := c.QueryRow(ctx, sql, args...).Scan(&s)
	return s, err
}

func main() {
	ctx := context.Background()
	fmt.Printf("version %s %s\n", driver, pgxVersion())
	c, err := connect(ctx, "")
	report("connect_tls", checkTLS(ctx, c, err, role), "sslmode=require, TLS in use, current_user="+role)
	if err != nil {
		os.Exit(1)
	}
	defer c.Close(ctx)
	report("types", checkTypes(ctx, c), "unicode, bytea 0-255, NULL, int8, float8, numeric, bool, date, uuid, jsonb, int4[], timestamptz")
	report("prepared_x100", checkPrepared(ctx, c), "Prepare once, 100 executions, in pg_prepared_statements")
	report("errors", checkErrors(ctx, c), "22012, 42P01, 42601, 25P02; session usable after")
	report("rollback", checkRollback(ctx, c), "inserted row gone after ROLLBACK")
	report("copy_in", checkCopyIn(ctx, c), "CopyFrom (binary COPY FROM STDIN), 1000 rows")
	report("copy_out", checkCopyOut(ctx, c), "PgConn.CopyTo (COPY TO STDOUT), 1000 rows")
	report("cancel", checkCancel(ctx, c), "PgConn.CancelRequest: 57014, session usable after")
	report("listen_notify", checkNotify(ctx, c), "WaitForNotification, unicode payload")
	report("result_20mb", checkBig(ctx, c), "20480 rows x 1 KiB, every row verified")
	report("pool_20", checkPool(ctx), "pgxpool MaxConns=20, 20 held at once, 20 backend pids")
	report("readonly", checkReadonly(ctx), "spec URL ?sslmode=require&waypoint_presets=readonly: role *_readonly, INSERT 42501")
	report("direct_tls", checkDirect(ctx), "sslnegotiation=direct (ALPN postgresql)")
	report("tls_resume", checkResume(ctx), "ClientSessionCache: connects 2-4 resumed (tls.ConnectionState.DidResume)")
}

// checkResume: four sequential connects sharing one ClientSessionCache (the one line
// docs/tls.md gives); the first is a full handshake, the later ones must resume. run.sh
// also counts them in waypoint_tls_handshakes_total.
func checkResume(ctx context.Context) error {
	cfg, err := pgx.ParseConfig(url(""))
	if err != nil {
		return err
	}
	cfg.TLSConfig.ClientSessionCache = tls.NewLRUClientSessionCache(0)
	for i := 0; i < 4; i++ {
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			return fmt.Errorf("connect %d: %w", i+1, err)
		}
		// A TLS 1.3 ticket arrives after the handshake: a round trip reads it.
		_, qerr := one(ctx, c, "SELECT current_user")
		tc, ok := c.PgConn().Conn().(*tls.Conn)
		resumed := ok && tc.ConnectionState().DidResume
		c.Close(ctx)
		if qerr != nil {
			return fmt.Errorf("connect %d: %w", i+1, qerr)
		}
		if !ok {
			return fmt.Errorf("connect %d: not a TLS connection", i+1)
		}
		if i > 0 && !resumed {
			return fmt.Errorf("connect %d: full handshake, the cached session was not resumed", i+1)
		}
	}
	return nil
}

func pgxVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path == "github.com/jackc/pgx/v5" {
				return m.Version
			}
		}
	}
	return "unknown"
}

func checkTLS(ctx context.Context, c *pgx.Conn, err error, want string) error {
	if err != nil {
		return err
	}
	if _, ok := c.PgConn().Conn().(*tls.Conn); !ok {
		return fmt.Errorf("connection is not TLS (%T)", c.PgConn().Conn())
	}
	got, err := one(ctx, c, "SELECT current_user")
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("current_user %q, want %q", got, want)
	}
	return nil
}

const unicode = "héllo wörld ✓ 日本語 🐘 'quote' \\back"

func allBytes() []byte {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

func checkTypes(ctx context.Context, c *pgx.Conn) error {
	var (
		t        string
		b        []byte
		null     *string
		i8       int64
		f8       float64
		num, day string
		ok       bool
		uuid, js string
		arr      []int32
		ts       time.Time
	)
	wantTS := time.Date(2024, 2, 29, 12, 30, 0, 0, time.UTC)
	err := c.QueryRow(ctx, `SELECT $1::text, $2::bytea, $3::text, $4::int8, $5::float8,
		$6::numeric::text, $7::bool, $8::date::text, $9::uuid::text, $10::jsonb->>'k', $11::int4[], $12::timestamptz`,
		unicode, allBytes(), nil, int64(9223372036854775807), 1.5e300,
		"12345678901234567890.123456789", true, "2024-02-29", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
		`{"k": "ü"}`, []int32{1, -2, 3}, wantTS).Scan(&t, &b, &null, &i8, &f8, &num, &ok, &day, &uuid, &js, &arr, &ts)
	if err != nil {
		return err
	}
	if t != unicode || !bytes.Equal(b, allBytes()) || null != nil || i8 != 9223372036854775807 ||
		f8 != 1.5e300 || num != "12345678901234567890.123456789" || !ok || day != "2024-02-29" ||
		uuid != "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11" || js != "ü" || fmt.Sprint(arr) != "[1 -2 3]" || !ts.Equal(wantTS) {
		return fmt.Errorf("round trip mismatch: %q %x %v %d %g %s %v %s %s %s %v %v",
			t, b, null, i8, f8, num, ok, day, uuid, js, arr, ts)
	}
	// Stored and read back from a table, through the full grant.
	_, err = c.Exec(ctx, "INSERT INTO items (driver, t, b, n) VALUES ($1, $2, $3, $4)",
		driver, unicode, allBytes(), nil)
	if err != nil {
		return err
	}
	var n *int64
	err = c.QueryRow(ctx, "SELECT t, b, n FROM items WHERE driver = $1", driver).Scan(&t, &b, &n)
	if err != nil {
		return err
	}
	if t != unicode || !bytes.Equal(b, allBytes()) || n != nil {
		return fmt.Errorf("stored row mismatch: %q %x %v", t, b, n)
	}
	return nil
}

func checkPrepared(ctx context.Context, c *pgx.Conn) error {
	const sql = "SELECT $1::int8 * 2 AS compat_prep, $2::text"
	if _, err := c.Prepare(ctx, "compat_prep", sql); err != nil {
		return err
	}
	for i := int64(0); i < 100; i++ {
		var d int64
		var s string
		if err := c.QueryRow(ctx, "compat_prep", i, fmt.Sprint("ü", i)).Scan(&d, &s); err != nil {
			return fmt.Errorf("execution %d: %w", i, err)
		}
		if d != 2*i || s != fmt.Sprint("ü", i) {
			return fmt.Errorf("execution %d: got %d %q", i, d, s)
		}
	}
	n, err := one(ctx, c, "SELECT count(*)::text FROM pg_prepared_statements WHERE name = 'compat_prep'")
	if err != nil {
		return err
	}
	if n != "1" {
		return fmt.Errorf("statement not in pg_prepared_statements (%s)", n)
	}
	return nil
}

func checkErrors(ctx context.Context, c *pgx.Conn) error {
	for _, e := range [][2]string{
		{"SELECT 1/0", "22012"},
		{"SELECT * FROM no_such_table", "42P01"},
		{"SELEC 1", "42601"},
	} {
		if err := expectState(ctx, c, e[0], e[1]); err != nil {
			return err
		}
	}
	tx, err := c.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) // a no-op once rolled back; ends the transaction on early returns
	if _, err := tx.Exec(ctx, "SELECT 1/0"); sqlstate(err) != "22012" {
		return fmt.Errorf("in transaction: want 22012, got %v", err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); sqlstate(err) != "25P02" {
		return fmt.Errorf("after an error in a transaction: want 25P02, got %v", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		return err
	}
	if s, err := one(ctx, c, "SELECT 'still usable'"); err != nil || s != "still usable" {
		return fmt.Errorf("session not usable after errors: %q %v", s, err)
	}
	return nil
}

func checkRollback(ctx context.Context, c *pgx.Conn) error {
	tx, err := c.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) // a no-op once rolled back; ends the transaction on early returns
	if _, err := tx.Exec(ctx, "INSERT INTO items (driver, t) VALUES ($1, 'rolled back')", driver); err != nil {
		return err
	}
	var inTx int
	if err := tx.QueryRow(ctx, "SELECT count(*) FROM items WHERE driver = $1 AND t = 'rolled back'", driver).Scan(&inTx); err != nil {
		return err
	}
	if err := tx.Rollback(ctx); err != nil {
		return err
	}
	var after int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM items WHERE driver = $1 AND t = 'rolled back'", driver).Scan(&after); err != nil {
		return err
	}
	if inTx != 1 || after != 0 {
		return fmt.Errorf("rows inside the transaction %d (want 1), after ROLLBACK %d (want 0)", inTx, after)
	}
	return nil
}

func checkCopyIn(ctx context.Context, c *pgx.Conn) error {
	rows := make([][]any, 1000)
	for i := range rows {
		rows[i] = []any{driver + "-copy", fmt.Sprint("ü", i), []byte{byte(i), 0, '\\'}, int64(i)}
	}
	n, err := c.CopyFrom(ctx, pgx.Identifier{"items"}, []string{"driver", "t", "b", "n"}, pgx.CopyFromRows(rows))
	if err != nil {
		return err
	}
	var count, sum int64
	if err := c.QueryRow(ctx, "SELECT count(*), sum(n) FROM items WHERE driver = $1", driver+"-copy").Scan(&count, &sum); err != nil {
		return err
	}
	if n != 1000 || count != 1000 || sum != 999*1000/2 {
		return fmt.Errorf("copied %d, table has %d rows, sum %d", n, count, sum)
	}
	return nil
}

func checkCopyOut(ctx context.Context, c *pgx.Conn) error {
	var buf bytes.Buffer
	tag, err := c.PgConn().CopyTo(ctx, &buf,
		"COPY (SELECT i, 'ü' || i FROM generate_series(1, 1000) i) TO STDOUT")
	if err != nil {
		return err
	}
	var want strings.Builder
	for i := 1; i <= 1000; i++ {
		fmt.Fprintf(&want, "%d\tü%d\n", i, i)
	}
	if tag.RowsAffected() != 1000 || buf.String() != want.String() {
		return fmt.Errorf("COPY TO: %d rows, %d bytes (want %d)", tag.RowsAffected(), buf.Len(), want.Len())
	}
	return nil
}

// waitRunning polls, on another connection, until the backend runs a query containing
// marker (a deadline, not a sleep, decides when to give up).
func waitRunning(ctx context.Context, other *pgx.Conn, marker string) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var n int
		err := other.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE state = 'active' AND pid <> pg_backend_pid() AND query LIKE '%' || $1 || '%'`, marker).Scan(&n)
		if err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("query %s never seen running", marker)
}

func checkCancel(ctx context.Context, c *pgx.Conn) error {
	other, err := connect(ctx, "")
	if err != nil {
		return err
	}
	defer other.Close(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, "SELECT pg_sleep(30) AS compat_cancel")
		done <- err
	}()
	if err := waitRunning(ctx, other, "compat_cancel"); err != nil {
		return err
	}
	t0 := time.Now()
	if err := c.PgConn().CancelRequest(ctx); err != nil {
		return fmt.Errorf("CancelRequest: %w", err)
	}
	select {
	case err := <-done:
		if sqlstate(err) != "57014" {
			return fmt.Errorf("want 57014, got %v", err)
		}
	case <-time.After(5 * time.Second):
		return fmt.Errorf("query still running 5 s after the cancel")
	}
	el := time.Since(t0)
	if s, err := one(ctx, c, "SELECT 'still usable'"); err != nil || s != "still usable" {
		return fmt.Errorf("session not usable after cancel: %v", err)
	}
	fmt.Fprintf(os.Stderr, "pgx: cancel took %v\n", el)
	return nil
}

func checkNotify(ctx context.Context, c *pgx.Conn) error {
	if _, err := c.Exec(ctx, "LISTEN compat_pgx"); err != nil {
		return err
	}
	other, err := connect(ctx, "")
	if err != nil {
		return err
	}
	defer other.Close(ctx)
	if _, err := other.Exec(ctx, "SELECT pg_notify('compat_pgx', $1)", "payload ü 🐘"); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	n, err := c.WaitForNotification(wctx)
	if err != nil {
		return fmt.Errorf("no notification within 5 s: %w", err)
	}
	if n.Channel != "compat_pgx" || n.Payload != "payload ü 🐘" {
		return fmt.Errorf("got %q %q", n.Channel, n.Payload)
	}
	_, err = c.Exec(ctx, "UNLISTEN *")
	return err
}

func checkBig(ctx context.Context, c *pgx.Conn) error {
	rows, err := c.Query(ctx, "SELECT i, repeat(md5(i::text), 32) FROM generate_series(1, 20480) i")
	if err != nil {
		return err
	}
	defer rows.Close()
	var count, total int
	for rows.Next() {
		var i int
		var s string
		if err := rows.Scan(&i, &s); err != nil {
			return err
		}
		want := strings.Repeat(fmt.Sprintf("%x", md5.Sum([]byte(fmt.Sprint(i)))), 32)
		if s != want {
			return fmt.Errorf("row %d differs", i)
		}
		count++
		total += len(s)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if count != 20480 || total != 20<<20 {
		return fmt.Errorf("%d rows, %d bytes", count, total)
	}
	return nil
}

func checkPool(ctx context.Context) error {
	cfg, err := pgxpool.ParseConfig(url(""))
	if err != nil {
		return err
	}
	cfg.MaxConns = 20
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	conns := make([]*pgxpool.Conn, 20)
	errs := make([]error, 20)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			conns[i], errs[i] = pool.Acquire(ctx)
		}(i)
	}
	wg.Wait()
	pids := map[uint32]bool{}
	for i, pc := range conns {
		if errs[i] != nil {
			return fmt.Errorf("acquire %d: %w", i, errs[i])
		}
		defer pc.Release()
		var u string
		if err := pc.QueryRow(ctx, "SELECT current_user").Scan(&u); err != nil || u != role {
			return fmt.Errorf("pool conn %d: %q %v", i, u, err)
		}
		pids[pc.Conn().PgConn().PID()] = true
	}
	if len(pids) != 20 || pool.Stat().TotalConns() != 20 {
		return fmt.Errorf("%d distinct backend keys, %d connections", len(pids), pool.Stat().TotalConns())
	}
	return nil
}

func checkReadonly(ctx context.Context) error {
	// The spec's URL form, verbatim: pgx sends unknown URL parameters as startup
	// parameters, and waypoint_presets is one Waypoint reads.
	u := fmt.Sprintf("postgres://ignored:ignored@%s:%s/%s?sslmode=require&waypoint_presets=readonly", host, port, db)
	c, err := pgx.Connect(ctx, u)
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	return readonlySession(ctx, c)
}

func readonlySession(ctx context.Context, c *pgx.Conn) error {
	if err := checkTLS(ctx, c, nil, role+"_readonly"); err != nil {
		return err
	}
	if _, err := one(ctx, c, "SELECT count(*)::text FROM items"); err != nil {
		return fmt.Errorf("SELECT: %w", err)
	}
	return expectState(ctx, c, "INSERT INTO items (driver, t) VALUES ('pgx', 'readonly')", "42501")
}

func checkDirect(ctx context.Context) error {
	// Through run.sh's first-byte relay, which checks the connection opens with TLS.
	cfg, err := pgx.ParseConfig(urlPort(os.Getenv("WP_DIRECT_PORT"), "&sslnegotiation=direct"))
	if err != nil {
		return err
	}
	if cfg.SSLNegotiation != "direct" {
		return fmt.Errorf("pgx did not take sslnegotiation=direct (%q)", cfg.SSLNegotiation)
	}
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	return checkTLS(ctx, c, nil, role)
}
