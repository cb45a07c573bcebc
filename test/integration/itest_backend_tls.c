/*
 * itest_backend_tls: up_connect against real PostgreSQL clusters, one with ssl = on and
 * one without, for every backend_tls mode; plus up_send_cancel cancelling a running
 * query.
 *
 * A CA, a server certificate for "localhost" signed by it, and an unrelated second CA
 * are made with the openssl CLI in a temp dir; the server key is handed to the postgres
 * user (0600), as PostgreSQL insists. After up_connect, each test speaks raw protocol
 * over the up_conn's wp_io (StartupMessage, then the authentication request) to prove
 * the link carries PostgreSQL traffic, through TLS where negotiated: over TLS the server
 * must offer SCRAM-SHA-256-PLUS, in plaintext it must not.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pgcluster.h"
#include "upstream.h"

static char dir[64];
static char ca_crt[128], other_ca[128];
static pgc_cluster ssl_pg, plain_pg;

static int run(const char *cmd)
{
    char full[4096];
    snprintf(full, sizeof(full), "cd '%s' && (%s) >/dev/null 2>&1", dir, cmd);
    return system(full);
}

static int make_pki(void)
{
    static const char *const steps[] = {
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        "-keyout ca.key -out ca.crt -days 30 -subj /CN=wp-test-ca "
        "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=keyCertSign,cRLSign",
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        "-keyout other.key -out other.crt -days 30 -subj /CN=wp-other-ca "
        "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=keyCertSign,cRLSign",
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        "-keyout server.key -out server.csr -subj /CN=localhost",
        "printf 'subjectAltName=DNS:localhost\\n' > san.ext",
        "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
        "-days 30 -extfile san.ext -out server.crt",
        "chmod 0711 . && chmod 0644 server.crt && chmod 0600 server.key && "
        "chown postgres:postgres server.key server.crt",
    };
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++)
        if (run(steps[i]) != 0) {
            fprintf(stderr, "pki step failed: %s\n", steps[i]);
            return -1;
        }
    return 0;
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/wp-itest-tls.XXXXXX");
    if (!mkdtemp(dir) || make_pki() != 0)
        return -1;
    snprintf(ca_crt, sizeof(ca_crt), "%s/ca.crt", dir);
    snprintf(other_ca, sizeof(other_ca), "%s/other.crt", dir);
    char conf[1024];
    snprintf(conf, sizeof(conf),
             "ssl = on\nssl_cert_file = '%s/server.crt'\nssl_key_file = '%s/server.key'", dir, dir);
    if (pgc_start(&ssl_pg, "scram-sha-256", "scram-sha-256", conf) != 0)
        return -1;
    if (pgc_start(&plain_pg, "trust", "scram-sha-256", NULL) != 0)
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    pgc_stop(&ssl_pg);
    pgc_stop(&plain_pg);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* --- raw protocol helpers ------------------------------------------------------------- */

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void send_startup(up_conn *c, const char *user, const char *db)
{
    unsigned char b[256];
    size_t n = 8;
    put32(b + 4, 196608);
    const char *kv[] = {"user", user, "database", db};
    for (size_t i = 0; i < 4; i++) {
        size_t l = strlen(kv[i]) + 1;
        memcpy(b + n, kv[i], l);
        n += l;
    }
    b[n++] = 0;
    put32(b, (uint32_t)n);
    assert_int_equal(io_write_all(&c->io, b, n, wp_now_ms() + 5000), WP_OK);
}

/* Reads one backend message into body (NUL-terminated); returns its type. */
static char read_msg(up_conn *c, unsigned char *body, size_t cap, size_t *len)
{
    unsigned char h[5];
    assert_int_equal(io_read_full(&c->io, h, 5, wp_now_ms() + 10000), WP_OK);
    uint32_t l = get32(h + 1);
    assert_true(l >= 4 && l - 4 < cap);
    *len = l - 4;
    assert_int_equal(io_read_full(&c->io, body, *len, wp_now_ms() + 10000), WP_OK);
    body[*len] = '\0';
    return (char)h[0];
}

/* Startup as the admin role; returns 1 when SCRAM-SHA-256-PLUS is offered. */
static int probe_sasl(up_conn *c, const pgc_cluster *pg)
{
    send_startup(c, pg->admin_user, pg->test_db);
    unsigned char body[512];
    size_t len;
    assert_int_equal(read_msg(c, body, sizeof(body), &len), 'R');
    assert_true(len >= 4);
    assert_int_equal(get32(body), 10); /* AuthenticationSASL */
    int plus = 0, plain = 0;
    for (size_t off = 4; off < len && body[off]; off += strlen((char *)body + off) + 1) {
        plus |= strcmp((char *)body + off, "SCRAM-SHA-256-PLUS") == 0;
        plain |= strcmp((char *)body + off, "SCRAM-SHA-256") == 0;
    }
    assert_true(plain);
    return plus;
}

static void connect_ok(const pgc_cluster *pg, const char *host, cfg_backend_tls mode,
                       const char *ca, up_conn *c)
{
    wp_error err;
    wp_error_clear(&err);
    wp_status st = up_connect(c, host, pg->port, mode, ca, wp_now_ms() + 10000, &err);
    if (st != WP_OK)
        fprintf(stderr, "up_connect: %s\n", err.message);
    assert_int_equal(st, WP_OK);
}

static wp_status connect_fail(const pgc_cluster *pg, const char *host, cfg_backend_tls mode,
                              const char *ca, wp_error *err)
{
    up_conn c;
    wp_error_clear(err);
    wp_status st = up_connect(&c, host, pg->port, mode, ca, wp_now_ms() + 10000, err);
    assert_int_not_equal(st, WP_OK);
    assert_int_equal(c.fd, -1);
    assert_string_equal(err->sqlstate, "08006");
    return st;
}

/* --- tests --------------------------------------------------------------------------- */

static void test_ssl_cluster_disable(void **state)
{
    (void)state;
    up_conn c;
    connect_ok(&ssl_pg, "127.0.0.1", CFG_BTLS_DISABLE, NULL, &c);
    assert_null(c.tls);
    assert_int_equal(c.cb_len, 0);
    assert_false(probe_sasl(&c, &ssl_pg));
    up_close(&c);
    assert_int_equal(c.fd, -1);
}

static void test_ssl_cluster_prefer_and_require(void **state)
{
    (void)state;
    cfg_backend_tls modes[] = {CFG_BTLS_PREFER, CFG_BTLS_REQUIRE};
    for (size_t i = 0; i < 2; i++) {
        up_conn c;
        connect_ok(&ssl_pg, "127.0.0.1", modes[i], NULL, &c);
        assert_non_null(c.tls);
        assert_int_equal(c.cb_len, 32);
        assert_true(probe_sasl(&c, &ssl_pg));
        up_close(&c);
    }
}

static void test_ssl_cluster_verify_full(void **state)
{
    (void)state;
    up_conn c;
    /* "localhost" may resolve to ::1 first, where nothing listens: the next address is
     * tried. */
    connect_ok(&ssl_pg, "localhost", CFG_BTLS_VERIFY_FULL, ca_crt, &c);
    assert_non_null(c.tls);
    assert_int_equal(c.cb_len, 32);
    assert_true(probe_sasl(&c, &ssl_pg));
    up_close(&c);

    wp_error err;
    /* Right CA, wrong name: the certificate is for localhost, not 127.0.0.1. */
    assert_int_equal(connect_fail(&ssl_pg, "127.0.0.1", CFG_BTLS_VERIFY_FULL, ca_crt, &err),
                     WP_ERR_BACKEND);
    assert_string_equal(err.message, "TLS to the backend failed");
    assert_non_null(strstr(err.detail, "verification failed"));
    /* Right name, wrong CA. */
    assert_int_equal(connect_fail(&ssl_pg, "localhost", CFG_BTLS_VERIFY_FULL, other_ca, &err),
                     WP_ERR_BACKEND);
    assert_string_equal(err.message, "TLS to the backend failed");
    assert_non_null(strstr(err.detail, "verification failed"));
}

static void test_plain_cluster(void **state)
{
    (void)state;
    wp_error err;
    char want[128];
    /* What fails goes to the client (err.message); where and why only to the log. */
    snprintf(want, sizeof(want),
             "TLS to backend 127.0.0.1:%d (backend_tls) failed: ", plain_pg.port);
    connect_fail(&plain_pg, "127.0.0.1", CFG_BTLS_REQUIRE, NULL, &err);
    assert_string_equal(err.message, "TLS to the backend failed");
    assert_non_null(strstr(err.detail, want));
    assert_non_null(strstr(err.detail, "does not support SSL"));
    connect_fail(&plain_pg, "localhost", CFG_BTLS_VERIFY_FULL, ca_crt, &err);
    assert_string_equal(err.message, "TLS to the backend failed");
    assert_non_null(strstr(err.detail, "does not support SSL"));

    up_conn c;
    connect_ok(&plain_pg, "127.0.0.1", CFG_BTLS_PREFER, NULL, &c);
    assert_null(c.tls);
    assert_int_equal(c.cb_len, 0);
    send_startup(&c, plain_pg.admin_user, plain_pg.test_db);
    unsigned char body[512];
    size_t len;
    assert_int_equal(read_msg(&c, body, sizeof(body), &len), 'R');
    assert_int_equal(get32(body), 0); /* trust: AuthenticationOk */
    up_close(&c);
}

static void test_connection_refused(void **state)
{
    (void)state;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &al), 0);
    int port = ntohs(a.sin_port);
    close(s); /* bound but never listening: nothing accepts on port */
    up_conn c;
    wp_error err;
    wp_error_clear(&err);
    assert_int_equal(
        up_connect(&c, "127.0.0.1", port, CFG_BTLS_PREFER, NULL, wp_now_ms() + 5000, &err),
        WP_ERR_BACKEND);
    char want[128];
    snprintf(want, sizeof(want), "could not connect to backend 127.0.0.1:%d: Connection refused",
             port);
    assert_string_equal(err.message, "the backend is not reachable");
    assert_string_equal(err.detail, want);
    assert_string_equal(err.sqlstate, "08006");
}

/* Logs in (trust), collects BackendKeyData, runs pg_sleep and cancels it. */
static void test_cancel(void **state)
{
    (void)state;
    up_conn c;
    connect_ok(&plain_pg, "127.0.0.1", CFG_BTLS_DISABLE, NULL, &c);
    send_startup(&c, plain_pg.admin_user, plain_pg.test_db);
    unsigned char body[1024], key[4] = {0};
    size_t len;
    uint32_t pid = 0;
    char t;
    while ((t = read_msg(&c, body, sizeof(body), &len)) != 'Z') {
        if (t == 'K' && len == 8) {
            pid = get32(body);
            memcpy(key, body + 4, 4);
        }
    }
    assert_int_not_equal(pid, 0);
    static const char q[] = "SELECT pg_sleep(60)";
    unsigned char msg[64];
    msg[0] = 'Q';
    put32(msg + 1, (uint32_t)(4 + sizeof(q)));
    memcpy(msg + 5, q, sizeof(q));
    assert_int_equal(io_write_all(&c.io, msg, 5 + sizeof(q), wp_now_ms() + 5000), WP_OK);

    /* A cancel reaching an idle backend is ignored: wait until the query runs. */
    PGconn *su = pgc_connect_super(&plain_pg, "postgres");
    assert_non_null(su);
    char sql[160];
    snprintf(sql, sizeof(sql),
             "SELECT 1 FROM pg_stat_activity WHERE pid = %u AND state = 'active' AND "
             "query LIKE 'SELECT pg_sleep%%'",
             pid);
    int active = 0;
    for (int64_t end = wp_now_ms() + 10000; !active && wp_now_ms() < end;) {
        PGresult *r = PQexec(su, sql);
        active = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
        PQclear(r);
    }
    PQfinish(su);
    assert_true(active);

    int64_t t0 = wp_now_ms();
    assert_int_equal(up_send_cancel("127.0.0.1", plain_pg.port, pid, key, 4, t0 + 5000), WP_OK);
    /* RowDescription may come first; the ErrorResponse must follow well before the
     * 60 s sleep would end (read_msg's deadline is 10 s). */
    while ((t = read_msg(&c, body, sizeof(body), &len)) != 'E')
        assert_int_equal(t, 'T');
    int found = 0;
    for (size_t off = 0; off < len && body[off]; off += strlen((char *)body + off + 1) + 2)
        if (body[off] == 'C')
            found = strcmp((char *)body + off + 1, "57014") == 0;
    assert_true(found);
    assert_true(wp_now_ms() - t0 < 30000);
    up_close(&c);
}

/* up_login over TLS: SCRAM-SHA-256-PLUS with the tls-server-end-point binding. A
 * corrupted binding must make the server refuse, which shows PLUS was really used. */
static void login_over_tls(int corrupt, wp_status want)
{
    up_conn c;
    connect_ok(&ssl_pg, "localhost", CFG_BTLS_VERIFY_FULL, ca_crt, &c);
    assert_int_equal(c.cb_len, 32);
    if (corrupt)
        c.cb_hash[0] ^= 0x5a;
    pgw_param params[] = {{"database", ssl_pg.test_db}, {"application_name", "itest"}};
    wp_error err;
    wp_error_clear(&err);
    wp_status st = up_login(&c, PGW_PROTO_30, params, 2, ssl_pg.admin_user, ssl_pg.admin_password,
                            wp_now_ms() + 10000, &err);
    if (st != want)
        fprintf(stderr, "up_login: %s (%s)\n", wp_status_str(st), err.message);
    assert_int_equal(st, want);
    if (st == WP_OK) {
        unsigned char body[1024];
        size_t len;
        while (read_msg(&c, body, sizeof(body), &len) != 'Z')
            ;
    } else { /* the backend's own words are for the log only */
        assert_string_equal(err.message, "the backend refused the login");
        assert_non_null(strstr(err.detail, "channel binding"));
    }
    up_close(&c);
}

static void test_scram_plus_login(void **state)
{
    (void)state;
    login_over_tls(0, WP_OK);
    login_over_tls(1, WP_ERR_BACKEND);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ssl_cluster_disable),
        cmocka_unit_test(test_ssl_cluster_prefer_and_require),
        cmocka_unit_test(test_ssl_cluster_verify_full),
        cmocka_unit_test(test_plain_cluster),
        cmocka_unit_test(test_connection_refused),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_scram_plus_login),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
