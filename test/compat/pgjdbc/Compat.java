// pgjdbc through Waypoint, run by test/compat/run.sh with Java's single-file source
// launcher (the class path, pgjdbc and HikariCP, comes from Maven: see pom.xml).
//
// Every check prints one line "check NAME pass|fail|na DETAIL" on stdout; run.sh turns
// those lines into the result table (the checks are the same for all five drivers, see
// docs/compatibility.md). Waiting is always "poll a condition until a deadline", never a
// blind sleep. Environment: WP_HOST, WP_PORT, WP_DB, WP_ROLE.

import com.zaxxer.hikari.HikariConfig;
import com.zaxxer.hikari.HikariDataSource;
import java.io.StringReader;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.sql.Array;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Types;
import java.time.LocalDate;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.HexFormat;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.Callable;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.copy.CopyManager;

public class Compat {
    static final String HOST = System.getenv("WP_HOST"), PORT = System.getenv("WP_PORT"),
            DB = System.getenv("WP_DB"), ROLE = System.getenv("WP_ROLE");
    static final String DRIVER = "pgjdbc";
    static final long START = System.nanoTime();
    static final String UNICODE = "héllo wörld ✓ 日本語 🐘 'quote' \\back";

    interface Check {
        void run() throws Exception;
    }

    static class Failed extends Exception {
        Failed(String m) {
            super(m);
        }
    }

    static void want(boolean cond, String msg) throws Failed {
        if (!cond) throw new Failed(msg);
    }

    static void run(String name, Check c, String detail) {
        try {
            c.run();
            System.out.println("check " + name + " pass " + detail);
        } catch (Exception e) {
            e.printStackTrace();
            String m = (e.getClass().getSimpleName() + ": " + e.getMessage()).replaceAll("\\s+", " ");
            System.out.println("check " + name + " fail " + m);
        }
        System.out.flush();
        System.err.printf("pgjdbc: %s done at %.1f s%n", name, (System.nanoTime() - START) / 1e9);
    }

    static String url(String extra) {
        return url(PORT, extra);
    }

    static String url(String port, String extra) {
        return "jdbc:postgresql://" + HOST + ":" + port + "/" + DB
                + "?sslmode=require&user=ignored&connectTimeout=10" + extra;
    }

    static Connection connect(String extra) throws SQLException {
        long t0 = System.nanoTime();
        Connection c = DriverManager.getConnection(url(extra));
        System.err.printf("pgjdbc: connect took %.3f s%n", (System.nanoTime() - t0) / 1e9);
        return c;
    }

    static String one(Connection c, String sql) throws SQLException {
        try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            rs.next();
            return rs.getString(1);
        }
    }

    static void expectState(Connection c, String sql, String state) throws Exception {
        try (Statement st = c.createStatement()) {
            st.execute(sql);
        } catch (SQLException e) {
            want(state.equals(e.getSQLState()), sql + ": want SQLSTATE " + state + ", got " + e.getSQLState() + " " + e.getMessage());
            return;
        }
        throw new Failed(sql + " succeeded, want SQLSTATE " + state);
    }

    static byte[] allBytes() {
        byte[] b = new byte[256];
        for (int i = 0; i < 256; i++) b[i] = (byte) i;
        return b;
    }

    static void checkUser(Connection c, String role) throws Exception {
        // Waypoint runs with tls_mode = "require": a plaintext session would be refused.
        String u = one(c, "SELECT current_user");
        want(role.equals(u), "current_user " + u + ", want " + role);
    }

    static void checkTypes(Connection c) throws Exception {
        OffsetDateTime ts = OffsetDateTime.of(2024, 2, 29, 12, 30, 0, 0, ZoneOffset.UTC);
        try (PreparedStatement ps = c.prepareStatement("SELECT ?::text, ?::bytea, ?::text, ?::int8, ?::float8, ?::numeric,"
                + " ?::bool, ?::date, ?::uuid, ?::jsonb->>'k', ?::int4[], ?::timestamptz")) {
            ps.setString(1, UNICODE);
            ps.setBytes(2, allBytes());
            ps.setNull(3, Types.VARCHAR);
            ps.setLong(4, Long.MAX_VALUE);
            ps.setDouble(5, 1.5e300);
            ps.setBigDecimal(6, new BigDecimal("12345678901234567890.123456789"));
            ps.setBoolean(7, true);
            ps.setObject(8, LocalDate.of(2024, 2, 29));
            ps.setObject(9, UUID.fromString("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
            ps.setString(10, "{\"k\": \"ü\"}");
            ps.setArray(11, c.createArrayOf("int4", new Integer[] {1, -2, 3}));
            ps.setObject(12, ts);
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                want(UNICODE.equals(rs.getString(1)), "text: " + rs.getString(1));
                want(Arrays.equals(allBytes(), rs.getBytes(2)), "bytea differs");
                want(rs.getString(3) == null && rs.wasNull(), "NULL: " + rs.getString(3));
                want(rs.getLong(4) == Long.MAX_VALUE, "int8: " + rs.getLong(4));
                want(rs.getDouble(5) == 1.5e300, "float8: " + rs.getDouble(5));
                want(new BigDecimal("12345678901234567890.123456789").equals(rs.getBigDecimal(6)), "numeric: " + rs.getBigDecimal(6));
                want(rs.getBoolean(7), "bool");
                want(LocalDate.of(2024, 2, 29).equals(rs.getObject(8, LocalDate.class)), "date: " + rs.getString(8));
                want(UUID.fromString("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").equals(rs.getObject(9)), "uuid: " + rs.getString(9));
                want("ü".equals(rs.getString(10)), "jsonb: " + rs.getString(10));
                Array a = rs.getArray(11);
                want(Arrays.equals(new Integer[] {1, -2, 3}, (Integer[]) a.getArray()), "int4[]: " + rs.getString(11));
                want(ts.isEqual(rs.getObject(12, OffsetDateTime.class)), "timestamptz: " + rs.getString(12));
            }
        }
        try (PreparedStatement ps = c.prepareStatement("INSERT INTO items (driver, t, b, n) VALUES (?, ?, ?, ?)")) {
            ps.setString(1, DRIVER);
            ps.setString(2, UNICODE);
            ps.setBytes(3, allBytes());
            ps.setNull(4, Types.BIGINT);
            ps.executeUpdate();
        }
        try (PreparedStatement ps = c.prepareStatement("SELECT t, b, n FROM items WHERE driver = ?")) {
            ps.setString(1, DRIVER);
            try (ResultSet rs = ps.executeQuery()) {
                want(rs.next(), "stored row missing");
                want(UNICODE.equals(rs.getString(1)) && Arrays.equals(allBytes(), rs.getBytes(2)), "stored row differs");
                rs.getLong(3);
                want(rs.wasNull(), "stored NULL is not NULL");
            }
        }
    }

    static void checkPrepared(Connection c) throws Exception {
        try (PreparedStatement ps = c.prepareStatement("SELECT ?::int8 * 2 AS compat_prep, ?::text")) {
            for (int i = 0; i < 100; i++) {
                ps.setLong(1, i);
                ps.setString(2, "ü" + i);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    want(rs.getLong(1) == 2L * i && ("ü" + i).equals(rs.getString(2)), "execution " + i);
                }
            }
            // pgjdbc switches to a named server-side statement after prepareThreshold (5) uses.
            String n = one(c, "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%AS compat_prep,%'"
                    + " AND statement NOT LIKE '%pg_prepared_statements%'");
            want("1".equals(n), n + " matching statements in pg_prepared_statements, want 1");
        }
    }

    static void checkErrors(Connection c) throws Exception {
        expectState(c, "SELECT 1/0", "22012");
        expectState(c, "SELECT * FROM no_such_table", "42P01");
        expectState(c, "SELEC 1", "42601");
        c.setAutoCommit(false);
        try {
            expectState(c, "SELECT 1/0", "22012");
            expectState(c, "SELECT 1", "25P02");
        } finally {
            c.rollback();
            c.setAutoCommit(true);
        }
        want("still usable".equals(one(c, "SELECT 'still usable'")), "session not usable after errors");
    }

    static void checkRollback(Connection c) throws Exception {
        String count = "SELECT count(*) FROM items WHERE driver = 'pgjdbc' AND t = 'rolled back'";
        c.setAutoCommit(false);
        String inTx;
        try {
            try (Statement st = c.createStatement()) {
                st.executeUpdate("INSERT INTO items (driver, t) VALUES ('pgjdbc', 'rolled back')");
            }
            inTx = one(c, count);
        } finally {
            c.rollback();
            c.setAutoCommit(true);
        }
        String after = one(c, count);
        want("1".equals(inTx) && "0".equals(after), "inside the transaction " + inTx + " (want 1), after ROLLBACK " + after + " (want 0)");
    }

    static void checkCopyIn(Connection c) throws Exception {
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < 1000; i++) {
            sb.append(DRIVER).append("-copy\tü").append(i).append("\t\\\\x").append(String.format("%02x005c", i % 256))
                    .append('\t').append(i).append('\n');
        }
        CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
        long n = cm.copyIn("COPY items (driver, t, b, n) FROM STDIN", new StringReader(sb.toString()));
        String got = one(c, "SELECT count(*) || ' ' || sum(n) FROM items WHERE driver = 'pgjdbc-copy'");
        want(n == 1000 && "1000 499500".equals(got), "copied " + n + ", table: " + got);
        String b = one(c, "SELECT encode(b, 'hex') FROM items WHERE driver = 'pgjdbc-copy' AND n = 7");
        want("07005c".equals(b), "bytea through COPY: " + b);
    }

    static void checkCopyOut(Connection c) throws Exception {
        StringWriter w = new StringWriter();
        CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
        long n = cm.copyOut("COPY (SELECT i, 'ü' || i FROM generate_series(1, 1000) i) TO STDOUT", w);
        StringBuilder want = new StringBuilder();
        for (int i = 1; i <= 1000; i++) want.append(i).append("\tü").append(i).append('\n');
        want(n == 1000 && want.toString().equals(w.toString()), "COPY TO: " + n + " rows, " + w.toString().length() + " chars");
    }

    static void waitRunning(Connection other, String marker) throws Exception {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        while (System.nanoTime() < deadline) {
            String n = one(other, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
                    + " AND pid <> pg_backend_pid() AND query LIKE '%" + marker + "%'");
            if (!"0".equals(n)) return;
            Thread.sleep(20);
        }
        throw new Failed("query " + marker + " never seen running");
    }

    static void checkCancel(Connection c) throws Exception {
        try (Connection other = connect(""); Statement st = c.createStatement()) {
            CompletableFuture<SQLException> done = CompletableFuture.supplyAsync(() -> {
                try {
                    st.execute("SELECT pg_sleep(30) AS compat_cancel");
                    return null;
                } catch (SQLException e) {
                    return e;
                }
            });
            waitRunning(other, "compat_cancel");
            long t0 = System.nanoTime();
            st.cancel();
            SQLException e;
            try {
                e = done.get(5, TimeUnit.SECONDS);
            } catch (TimeoutException te) {
                throw new Failed("query still running 5 s after the cancel");
            }
            want(e != null && "57014".equals(e.getSQLState()), "want 57014, got " + (e == null ? "success" : e.getSQLState() + " " + e.getMessage()));
            System.err.printf("pgjdbc: cancel took %.3f s%n", (System.nanoTime() - t0) / 1e9);
        }
        want("still usable".equals(one(c, "SELECT 'still usable'")), "session not usable after cancel");
    }

    static void checkNotify(Connection c) throws Exception {
        try (Statement st = c.createStatement()) {
            st.execute("LISTEN compat_pgjdbc");
        }
        try (Connection other = connect(""); PreparedStatement ps = other.prepareStatement("SELECT pg_notify('compat_pgjdbc', ?)")) {
            ps.setString(1, "payload ü 🐘");
            ps.execute();
        }
        PGNotification[] ns = c.unwrap(PGConnection.class).getNotifications(5000);
        want(ns != null && ns.length == 1, "no notification within 5 s");
        want("compat_pgjdbc".equals(ns[0].getName()) && "payload ü 🐘".equals(ns[0].getParameter()),
                "got " + ns[0].getName() + " " + ns[0].getParameter());
        try (Statement st = c.createStatement()) {
            st.execute("UNLISTEN *");
        }
    }

    static void checkBig(Connection c) throws Exception {
        MessageDigest md5 = MessageDigest.getInstance("MD5");
        int count = 0;
        long total = 0;
        try (Statement st = c.createStatement();
                ResultSet rs = st.executeQuery("SELECT i, repeat(md5(i::text), 32) FROM generate_series(1, 20480) i")) {
            while (rs.next()) {
                int i = rs.getInt(1);
                String s = rs.getString(2);
                String h = HexFormat.of().formatHex(md5.digest(Integer.toString(i).getBytes(StandardCharsets.UTF_8)));
                want(h.repeat(32).equals(s), "row " + i + " differs");
                count++;
                total += s.length();
            }
        }
        want(count == 20480 && total == 20L << 20, count + " rows, " + total + " bytes");
    }

    static void checkPool() throws Exception {
        HikariConfig cfg = new HikariConfig();
        cfg.setJdbcUrl(url(""));
        cfg.setMaximumPoolSize(20);
        cfg.setMinimumIdle(20);
        cfg.setConnectionTimeout(30000);
        ExecutorService ex = Executors.newFixedThreadPool(20);
        List<Connection> held = new ArrayList<>();
        try (HikariDataSource ds = new HikariDataSource(cfg)) {
            List<Future<Connection>> fs = new ArrayList<>();
            for (int i = 0; i < 20; i++) fs.add(ex.submit((Callable<Connection>) ds::getConnection));
            for (Future<Connection> f : fs) held.add(f.get(60, TimeUnit.SECONDS));
            Set<String> pids = new HashSet<>();
            for (Connection pc : held) {
                checkUser(pc, ROLE);
                pids.add(one(pc, "SELECT pg_backend_pid()"));
            }
            want(pids.size() == 20, pids.size() + " distinct backend keys");
            want(ds.getHikariPoolMXBean().getActiveConnections() == 20, "active " + ds.getHikariPoolMXBean().getActiveConnections());
            for (Connection pc : held) pc.close();
        } finally {
            ex.shutdownNow();
        }
    }

    static void checkReadonly() throws Exception {
        Properties p = new Properties();
        p.setProperty("options", "-c waypoint_presets=readonly");
        try (Connection c = DriverManager.getConnection(url(""), p)) {
            checkUser(c, ROLE + "_readonly");
            one(c, "SELECT count(*) FROM items");
            expectState(c, "INSERT INTO items (driver, t) VALUES ('pgjdbc', 'readonly')", "42501");
        }
    }

    static void checkDirect() throws Exception {
        // Through run.sh's first-byte relay, which checks the connection opens with TLS.
        try (Connection c = DriverManager.getConnection(url(System.getenv("WP_DIRECT_PORT"), "&sslNegotiation=direct"))) {
            checkUser(c, ROLE);
        }
    }

    // Four sequential connects through the JVM's default SSLContext (the one option
    // docs/tls.md gives): its client session cache lets connects 2-4 resume. pgjdbc does
    // not expose the SSLSession, so run.sh checks the resumptions in Waypoint's
    // waypoint_tls_handshakes_total; this check proves the connects work.
    static void checkResume() throws Exception {
        for (int i = 1; i <= 4; i++) {
            try (Connection c = DriverManager.getConnection(
                    url("&sslfactory=org.postgresql.ssl.DefaultJavaSSLFactory"))) {
                checkUser(c, ROLE);
            }
        }
    }

    public static void main(String[] args) throws Exception {
        // DefaultJavaSSLFactory verifies the chain with the JVM's trust store: run.sh
        // makes one holding the test certificate.
        if (System.getenv("WP_TRUSTSTORE") != null) {
            System.setProperty("javax.net.ssl.trustStore", System.getenv("WP_TRUSTSTORE"));
            System.setProperty("javax.net.ssl.trustStorePassword", "changeit");
            System.setProperty("javax.net.ssl.trustStoreType", "PKCS12");
        }
        System.out.println("version " + DRIVER + " " + org.postgresql.util.DriverInfo.DRIVER_VERSION);
        Connection c;
        try {
            c = connect("");
        } catch (SQLException e) {
            System.out.println("check connect_tls fail " + e.getMessage());
            System.exit(1);
            return;
        }
        run("connect_tls", () -> checkUser(c, ROLE), "sslmode=require (Waypoint refuses plaintext here), current_user=" + ROLE);
        run("types", () -> checkTypes(c), "unicode, bytea 0-255, NULL, int8, float8, numeric, bool, date, uuid, jsonb, int4[], timestamptz");
        run("prepared_x100", () -> checkPrepared(c), "PreparedStatement x100, server-side after prepareThreshold, in pg_prepared_statements");
        run("errors", () -> checkErrors(c), "22012, 42P01, 42601, 25P02; session usable after");
        run("rollback", () -> checkRollback(c), "inserted row gone after rollback()");
        run("copy_in", () -> checkCopyIn(c), "CopyManager.copyIn (COPY FROM STDIN), 1000 rows");
        run("copy_out", () -> checkCopyOut(c), "CopyManager.copyOut (COPY TO STDOUT), 1000 rows");
        run("cancel", () -> checkCancel(c), "Statement.cancel(): 57014, session usable after");
        run("listen_notify", () -> checkNotify(c), "getNotifications(5000), unicode payload");
        run("result_20mb", () -> checkBig(c), "20480 rows x 1 KiB, every row verified");
        run("pool_20", Compat::checkPool, "HikariCP maximumPoolSize=20, 20 held at once, 20 backend pids");
        run("readonly", Compat::checkReadonly, "options=-c waypoint_presets=readonly: role *_readonly, INSERT 42501");
        run("direct_tls", Compat::checkDirect, "sslNegotiation=direct");
        run("tls_resume", Compat::checkResume, "sslfactory=org.postgresql.ssl.DefaultJavaSSLFactory: 4 connects (resumptions counted by run.sh)");
        c.close();
    }
}
