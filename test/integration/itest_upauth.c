/*
 * up_login against two kinds of backend:
 *
 *  - scripted backends (a socketpair whose far end the test fills with the backend's
 *    messages up front), for the requests a real cluster will not produce: GSSAPI, SSPI,
 *    unknown codes, a SASL list without SCRAM, AuthenticationOk that skips the SCRAM
 *    proof, NegotiateProtocolVersion variants, and channel-binding mechanism choice;
 *  - real PostgreSQL clusters (pgc_start) for trust, password, md5 and scram-sha-256,
 *    where the role's password is set from our own verifier / MD5 form, so PostgreSQL
 *    itself checks that those are in its format.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pgcluster.h"
#include "pgwire.h"
#include "scram.h"
#include "upstream.h"

#define PASSWORD "correct-horse-battery-staple"

static int64_t soon(void)
{
    return wp_now_ms() + 10000;
}

/* ---- scripted backend ---- */

typedef struct fake {
    int peer; /* backend side */
    up_conn c;
    pgw_buf script;
} fake;

static void fake_open(fake *f, size_t cb_len)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    memset(f, 0, sizeof(*f));
    f->peer = sv[0];
    f->c.fd = sv[1];
    io_plain_init(&f->c.io, sv[1]);
    f->c.cb_len = cb_len;
    memset(f->c.cb_hash, 0x5a, sizeof(f->c.cb_hash));
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* Appends a backend message (type, body) to the script. */
static void script(fake *f, char type, const void *body, size_t n)
{
    unsigned char hdr[5];
    hdr[0] = (unsigned char)type;
    put32(hdr + 1, (uint32_t)(n + 4));
    assert_int_equal(pgw_buf_append(&f->script, hdr, 5), WP_OK);
    assert_int_equal(pgw_buf_append(&f->script, body, n), WP_OK);
}

/* An 'R' request: code followed by extra bytes. */
static void script_auth(fake *f, uint32_t code, const void *extra, size_t n)
{
    unsigned char body[256];
    put32(body, code);
    if (n)
        memcpy(body + 4, extra, n);
    script(f, 'R', body, n + 4);
}

/* Sends the script, closes the backend's write side, runs up_login. */
static wp_status fake_login(fake *f, uint32_t version, wp_error *err)
{
    if (f->script.len)
        assert_int_equal(write(f->peer, f->script.data, f->script.len), (ssize_t)f->script.len);
    shutdown(f->peer, SHUT_WR);
    pgw_param params[] = {{"user", "someone-else"}, {"database", "appdb"}};
    return up_login(&f->c, version, params, 2, "wp_role", PASSWORD, soon(), err);
}

/* Everything up_login wrote, as seen by the backend. */
static size_t fake_sent(fake *f, unsigned char *buf, size_t n)
{
    ssize_t r = recv(f->peer, buf, n, MSG_DONTWAIT);
    return r > 0 ? (size_t)r : 0;
}

static void fake_close(fake *f)
{
    close(f->peer);
    close(f->c.fd);
    pgw_buf_free(&f->script);
}

/* Skips the startup packet in sent bytes; returns the offset of the next message. */
static size_t after_startup(const unsigned char *sent, size_t n)
{
    assert_true(n >= 4);
    size_t len = (size_t)sent[2] << 8 | sent[3];
    assert_true(len <= n);
    return len;
}

static void assert_no_password(const wp_error *e)
{
    assert_null(strstr(e->message, PASSWORD));
    assert_null(strstr(e->detail, PASSWORD));
    assert_null(strstr(e->hint, PASSWORD));
}

static void test_fake_trust_and_startup(void **state)
{
    (void)state;
    fake f;
    fake_open(&f, 0);
    script_auth(&f, PGW_AUTH_OK, NULL, 0);
    wp_error err;
    assert_int_equal(fake_login(&f, PGW_PROTO_30, &err), WP_OK);
    unsigned char sent[1024];
    size_t n = fake_sent(&f, sent, sizeof(sent));
    pgw_startup s;
    assert_int_equal(pgw_parse_startup(sent + 4, after_startup(sent, n) - 4, &s, &err), WP_OK);
    assert_int_equal(s.version, PGW_PROTO_30);
    assert_string_equal(pgw_startup_get(&s, "user"), "wp_role"); /* caller's user dropped */
    assert_string_equal(pgw_startup_get(&s, "database"), "appdb");
    assert_int_equal(s.nparams, 2);
    pgw_startup_free(&s);
    fake_close(&f);
}

static void test_fake_cleartext(void **state)
{
    (void)state;
    fake f;
    fake_open(&f, 0);
    script_auth(&f, PGW_AUTH_CLEARTEXT, NULL, 0);
    script_auth(&f, PGW_AUTH_OK, NULL, 0);
    wp_error err;
    assert_int_equal(fake_login(&f, PGW_PROTO_30, &err), WP_OK);
    unsigned char sent[1024];
    size_t n = fake_sent(&f, sent, sizeof(sent)), off = after_startup(sent, n);
    const char want[] = "p\0\0\0\x21" PASSWORD;
    assert_int_equal(n - off, sizeof(want));
    assert_memory_equal(sent + off, want, sizeof(want));
    fake_close(&f);
}

static void test_fake_md5(void **state)
{
    (void)state;
    fake f;
    fake_open(&f, 0);
    const unsigned char salt[4] = {0xde, 0xad, 0xbe, 0xef};
    script_auth(&f, PGW_AUTH_MD5, salt, 4);
    script_auth(&f, PGW_AUTH_OK, NULL, 0);
    wp_error err;
    assert_int_equal(fake_login(&f, PGW_PROTO_30, &err), WP_OK);
    unsigned char sent[1024];
    size_t n = fake_sent(&f, sent, sizeof(sent)), off = after_startup(sent, n);
    char want[36];
    assert_int_equal(scram_md5_response(PASSWORD, "wp_role", salt, want), WP_OK);
    assert_int_equal(sent[off], 'p');
    assert_int_equal(n - off, 5 + 36);
    assert_string_equal((const char *)sent + off + 5, want);
    fake_close(&f);

    fake_open(&f, 0);
    script_auth(&f, PGW_AUTH_MD5, salt, 2); /* short salt */
    assert_int_equal(fake_login(&f, PGW_PROTO_30, &err), WP_ERR_PROTOCOL);
    fake_close(&f);
}

static void test_fake_error_response(void **state)
{
    (void)state;
    fake f;
    fake_open(&f, 0);
    const char e[] = "SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user "
                     "\"wp_role\"\0\0";
    script_auth(&f, PGW_AUTH_CLEARTEXT, NULL, 0);
    script(&f, 'E', e, sizeof(e) - 1);
    wp_error err;
    assert_int_equal(fake_login(&f, PGW_PROTO_30, &err), WP_ERR_BACKEND);
    assert_string_equal(err.sqlstate, "28P01");
    assert_string_equal(err.severity, "FATAL");
    /* The client learns what kind of failure; the backend's words go to the log. */
    assert_string_equal(err.message, "the backend refused the login");
    assert_non_null(strstr(err.detail, "password authentication failed"));
    assert_no_password(&err);
    fake_close(&f);
}

/* A missing database keeps the backend's own 3D000 message, as a direct login shows it. */
static void test_fake_error_missing_database(void **state)
{
    (void)state;
    fake f;
    fake_open(&f, 0);
    const char e[] = "SFATAL\0VFATAL\0C3D000\0Mdatabase \"nodb\" does not exist\0\0";
    script(&f, 'E', e, sizeof(e) - 1);
    wp_error err;
    assert_int_equal(fake_login(&f, PGW_PROTO_30, &err), WP_ERR_BACKEND);
    assert_string_equal(err.sqlstate, "3D000");
    assert_string_equal(err.message, "database \"nodb\" does not exist");
    fake_close(&f);
}

static void expect_unsupported(uint32_t code, const char *text)
{
    fake f;
    fake_open(&f, 0);
    script_auth(&f, code, NULL, 0);
    wp_error err;
    assert_int_equal(fake_login(&f, PGW_PROTO_30, &err), WP_ERR_UNSUPPORTED);
    if (!strstr(err.message, text))
        fail_msg("code %u: \"%s\" lacks \"%s\"", code, err.message, text);
    fake_close(&f);
}

static void test_fake_unsupported_methods(void **state)
{
    (void)state;
    expect_unsupported(PGW_AUTH_GSS,
                       "backend requested GSSAPI authentication, which Waypoint does not "
                       "support");
    expect_unsupported(PGW_AUTH_SSPI, "SSPI");
    expect_unsupported(PGW_AUTH_KERBEROS_V5, "Kerberos V5");
    expect_unsupported(42, "unknown authentication method (code 42)");
}

static void test_fake_sasl_without_scram(void **state)
{
    (void)state;
    fake f;
    fake_open(&f, 0);
    script_auth(&f, PGW_AUTH_SASL, "OAUTHBEARER\0SCRAM-SHA-1\0", 25);
    wp_error err;
    assert_int_equal(fake_login(&f, PGW_PROTO_30, &err), WP_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.message, "OAUTHBEARER, SCRAM-SHA-1"));
    fake_close(&f);
    /* PLUS alone is no use without channel binding data */
    fake_open(&f, 0);
    script_auth(&f, PGW_AUTH_SASL, "SCRAM-SHA-256-PLUS\0", 20);
    assert_int_equal(fake_login(&f, PGW_PROTO_30, &err), WP_ERR_UNSUPPORTED);
    fake_close(&f);
}

/* Once one method has been answered, a request for another (or the same again) is a
 * protocol error, and the password is not sent a second time or in another form. */
static void expect_method_switch_refused(uint32_t first, const void *extra, size_t n,
                                         uint32_t second)
{
    fake f;
    fake_open(&f, 0);
    script_auth(&f, first, extra, n);
    const unsigned char salt[4] = {1, 2, 3, 4};
    script_auth(&f, second, salt, second == PGW_AUTH_MD5 ? 4 : 0);
    script_auth(&f, PGW_AUTH_OK, NULL, 0);
    wp_error err;
    wp_status st = fake_login(&f, PGW_PROTO_30, &err);
    if (st != WP_ERR_PROTOCOL)
        fail_msg("request %u after %u: got %s", second, first, wp_status_str(st));
    assert_string_equal(err.sqlstate, "08P01");
    unsigned char sent[4096];
    size_t len = fake_sent(&f, sent, sizeof(sent));
    size_t off = after_startup(sent, len), msgs = 0;
    while (off + 5 <= len) { /* count what followed the startup packet */
        off += 1 + ((size_t)sent[off + 3] << 8 | sent[off + 4]);
        msgs++;
    }
    assert_int_equal(msgs, 1); /* the answer to the first request, nothing more */
    if (first != PGW_AUTH_CLEARTEXT)
        assert_null(memmem(sent, len, PASSWORD, strlen(PASSWORD)));
    fake_close(&f);
}

static void test_fake_method_switch(void **state)
{
    (void)state;
    const unsigned char salt[4] = {9, 8, 7, 6};
    expect_method_switch_refused(PGW_AUTH_SASL, "SCRAM-SHA-256\0", 15, PGW_AUTH_CLEARTEXT);
    expect_method_switch_refused(PGW_AUTH_SASL, "SCRAM-SHA-256\0", 15, PGW_AUTH_MD5);
    expect_method_switch_refused(PGW_AUTH_MD5, salt, 4, PGW_AUTH_CLEARTEXT);
    expect_method_switch_refused(PGW_AUTH_MD5, salt, 4, PGW_AUTH_MD5);
    expect_method_switch_refused(PGW_AUTH_CLEARTEXT, NULL, 0, PGW_AUTH_CLEARTEXT);
    expect_method_switch_refused(PGW_AUTH_CLEARTEXT, NULL, 0, PGW_AUTH_MD5);
}

static void test_fake_ok_before_sasl_final(void **state)
{
    (void)state;
    fake f;
    fake_open(&f, 0);
    script_auth(&f, PGW_AUTH_SASL, "SCRAM-SHA-256\0", 15);
    script_auth(&f, PGW_AUTH_OK, NULL, 0);
    wp_error err;
    assert_int_equal(fake_login(&f, PGW_PROTO_30, &err), WP_ERR_AUTH);
    assert_string_equal(err.sqlstate, "28000");
    fake_close(&f);
}

/* Runs SASL with the given offer and cb_len; returns the mechanism and gs2 header sent. */
static void sasl_choice(size_t cb_len, const char *offer, size_t offer_len, char *mech, char *gs2)
{
    fake f;
    fake_open(&f, cb_len);
    script_auth(&f, PGW_AUTH_SASL, offer, offer_len);
    wp_error err;
    assert_int_equal(fake_login(&f, PGW_PROTO_30, &err), WP_ERR_CLOSED); /* script ends */
    unsigned char sent[1024];
    size_t n = fake_sent(&f, sent, sizeof(sent)), off = after_startup(sent, n);
    assert_int_equal(sent[off], 'p');
    strcpy(mech, (const char *)sent + off + 5);
    const char *data = (const char *)sent + off + 5 + strlen(mech) + 1 + 4;
    strncpy(gs2, data, 24);
    gs2[24] = '\0';
    fake_close(&f);
}

static void test_fake_channel_binding_choice(void **state)
{
    (void)state;
    const char both[] = "SCRAM-SHA-256\0SCRAM-SHA-256-PLUS\0";
    char mech[64], gs2[32];
    sasl_choice(32, both, sizeof(both), mech, gs2);
    assert_string_equal(mech, "SCRAM-SHA-256-PLUS");
    assert_string_equal(gs2, "p=tls-server-end-point,,");
    sasl_choice(0, both, sizeof(both), mech, gs2);
    assert_string_equal(mech, "SCRAM-SHA-256");
    assert_int_equal(strncmp(gs2, "n,,n=,r=", 8), 0);
    sasl_choice(32, "SCRAM-SHA-256\0", 15, mech, gs2);
    assert_string_equal(mech, "SCRAM-SHA-256");
    /* TLS but no -PLUS on offer: flag 'y' (RFC 5802 section 6), so a server that does
     * support channel binding sees that someone stripped -PLUS from its list. */
    assert_int_equal(strncmp(gs2, "y,,n=,r=", 8), 0);
}

static void script_negotiate(fake *f, uint32_t version, const char *opt)
{
    unsigned char body[64];
    put32(body, version);
    put32(body + 4, opt ? 1 : 0);
    size_t n = 8;
    if (opt) {
        memcpy(body + 8, opt, strlen(opt) + 1);
        n += strlen(opt) + 1;
    }
    script(f, 'v', body, n);
}

static void test_fake_negotiate(void **state)
{
    (void)state;
    fake f;
    wp_error err;
    fake_open(&f, 0);
    script_negotiate(&f, PGW_PROTO_30, NULL); /* asked 3.2, backend speaks 3.0 */
    script_auth(&f, PGW_AUTH_OK, NULL, 0);
    assert_int_equal(fake_login(&f, PGW_PROTO_32, &err), WP_OK);
    assert_int_equal(f.c.proto, PGW_PROTO_30); /* the session must tell the client */
    fake_close(&f);

    fake_open(&f, 0);
    script_auth(&f, PGW_AUTH_OK, NULL, 0);
    assert_int_equal(fake_login(&f, PGW_PROTO_32, &err), WP_OK);
    assert_int_equal(f.c.proto, PGW_PROTO_32); /* no negotiation: what was asked */
    fake_close(&f);

    fake_open(&f, 0);
    script_negotiate(&f, PGW_PROTO_32, NULL); /* not a lowering */
    script_auth(&f, PGW_AUTH_OK, NULL, 0);
    assert_int_equal(fake_login(&f, PGW_PROTO_32, &err), WP_ERR_PROTOCOL);
    fake_close(&f);

    fake_open(&f, 0);
    script_negotiate(&f, 0, NULL); /* a bare minor reads as version 0.0: refused, as libpq */
    script_auth(&f, PGW_AUTH_OK, NULL, 0);
    assert_int_equal(fake_login(&f, PGW_PROTO_32, &err), WP_ERR_PROTOCOL);
    fake_close(&f);

    fake_open(&f, 0);
    script_negotiate(&f, PGW_PROTO_30, "_pq_.x"); /* refuses an option we never sent */
    script_auth(&f, PGW_AUTH_OK, NULL, 0);
    assert_int_equal(fake_login(&f, PGW_PROTO_32, &err), WP_ERR_PROTOCOL);
    fake_close(&f);

    fake_open(&f, 0);
    script_auth(&f, PGW_AUTH_CLEARTEXT, NULL, 0);
    script_negotiate(&f, PGW_PROTO_30, NULL); /* too late */
    assert_int_equal(fake_login(&f, PGW_PROTO_32, &err), WP_ERR_PROTOCOL);
    fake_close(&f);
}

static void test_fake_unexpected_and_silent(void **state)
{
    (void)state;
    fake f;
    wp_error err;
    fake_open(&f, 0);
    script(&f, 'Z', "I", 1);
    assert_int_equal(fake_login(&f, PGW_PROTO_30, &err), WP_ERR_PROTOCOL);
    assert_string_equal(err.sqlstate, "08P01");
    fake_close(&f);

    fake_open(&f, 0); /* backend never answers: the deadline ends it */
    pgw_param params[] = {{"database", "appdb"}};
    assert_int_equal(up_login(&f.c, PGW_PROTO_30, params, 1, "r", PASSWORD, wp_now_ms() + 50, &err),
                     WP_ERR_TIMEOUT);
    assert_string_equal(err.sqlstate, "08006");
    fake_close(&f);
}

/* ---- real clusters ---- */

static int tcp_connect(const pgc_cluster *c)
{
    char port[16];
    snprintf(port, sizeof(port), "%d", c->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    assert_int_equal(getaddrinfo(c->host, port, &hints, &res), 0);
    int fd = -1;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    assert_true(fd >= 0);
    return fd;
}

static void create_role(const pgc_cluster *c, const char *role, const char *stored)
{
    PGconn *conn = pgc_connect_admin(c, c->test_db);
    assert_non_null(conn);
    char *id = PQescapeIdentifier(conn, role, strlen(role));
    char *lit = PQescapeLiteral(conn, stored, strlen(stored));
    assert_non_null(id);
    assert_non_null(lit);
    char sql[1024];
    snprintf(sql, sizeof(sql), "CREATE ROLE %s LOGIN", id);
    assert_int_equal(pgc_exec(conn, sql), 0);
    snprintf(sql, sizeof(sql), "ALTER ROLE %s PASSWORD %s", id, lit);
    assert_int_equal(pgc_exec(conn, sql), 0);
    PQfreemem(id);
    PQfreemem(lit);
    PQfinish(conn);
}

/* After a successful login: read to ReadyForQuery, then ask who we are. */
static void check_session(up_conn *u, const char *role)
{
    pgw_buf b = {0};
    char type = 0;
    int saw_key = 0;
    do {
        assert_int_equal(pgw_read_msg(&u->io, soon(), PGW_MSG_MAX, &type, &b), WP_OK);
        saw_key |= type == PGW_MSG_BACKEND_KEY;
    } while (type != PGW_MSG_READY);
    assert_true(saw_key);
    const char q[] = "Q\0\0\0\x18SELECT current_user\0";
    assert_int_equal(io_write_all(&u->io, q, sizeof(q) - 1, soon()), WP_OK);
    int saw_row = 0;
    do {
        assert_int_equal(pgw_read_msg(&u->io, soon(), PGW_MSG_MAX, &type, &b), WP_OK);
        if (type == 'D') { /* int16 ncols, int32 len, value */
            assert_true(b.len == 6 + strlen(role));
            assert_memory_equal(b.data + 6, role, strlen(role));
            saw_row = 1;
        }
    } while (type != PGW_MSG_READY);
    assert_true(saw_row);
    assert_int_equal(io_write_all(&u->io, "X\0\0\0\4", 5, soon()), WP_OK);
    pgw_buf_free(&b);
}

/* The protocol version the backend agreed to in the last login() (up_conn.proto). */
static uint32_t last_proto;

static wp_status login(const pgc_cluster *c, uint32_t version, const char *role,
                       const char *password, int check, wp_error *err)
{
    up_conn u = {0};
    u.fd = tcp_connect(c);
    io_plain_init(&u.io, u.fd);
    pgw_param params[] = {{"database", (char *)c->test_db}, {"application_name", "itest"}};
    wp_status st = up_login(&u, version, params, 2, role, password, soon(), err);
    last_proto = u.proto;
    if (st == WP_OK && check)
        check_session(&u, role);
    close(u.fd);
    return st;
}

static void run_cluster(const char *auth, const char *pwenc)
{
    pgc_cluster c;
    assert_int_equal(pgc_start(&c, auth, pwenc, NULL), 0);
    const char *role = "wp_itest_role";
    char stored[SCRAM_VERIFIER_MAX];
    if (strcmp(pwenc, "md5") == 0)
        assert_int_equal(scram_md5_stored(PASSWORD, role, stored), WP_OK);
    else
        assert_int_equal(scram_make_verifier(PASSWORD, 4096, stored, sizeof(stored)), WP_OK);
    create_role(&c, role, stored);

    wp_error err;
    wp_status st = login(&c, PGW_PROTO_30, role, PASSWORD, 1, &err);
    if (st != WP_OK)
        fail_msg("%s: up_login: %s (%s %s)", auth, wp_status_str(st), err.sqlstate, err.message);
    assert_int_equal(last_proto, PGW_PROTO_30);
    /* 3.2: PostgreSQL 18 speaks it (and sends a 32-byte cancel key); older servers
     * negotiate down to 3.0 with NegotiateProtocolVersion. */
    st = login(&c, PGW_PROTO_32, role, PASSWORD, 1, &err);
    if (st != WP_OK)
        fail_msg("%s 3.2: up_login: %s (%s %s)", auth, wp_status_str(st), err.sqlstate,
                 err.message);
    assert_int_equal(last_proto, c.major >= 18 ? PGW_PROTO_32 : PGW_PROTO_30);

    st = login(&c, PGW_PROTO_30, role, "wrong-" PASSWORD, 0, &err);
    if (strcmp(auth, "trust") == 0) {
        assert_int_equal(st, WP_OK);
    } else {
        assert_int_equal(st, WP_ERR_BACKEND);
        assert_string_equal(err.sqlstate, "28P01");
        assert_no_password(&err);
    }
    pgc_stop(&c);
}

static void test_pg_scram(void **state)
{
    (void)state;
    run_cluster("scram-sha-256", "scram-sha-256");
}

static void test_pg_md5(void **state)
{
    (void)state;
    run_cluster("md5", "md5");
}

static void test_pg_password(void **state)
{
    (void)state;
    run_cluster("password", "scram-sha-256");
}

static void test_pg_trust(void **state)
{
    (void)state;
    run_cluster("trust", "scram-sha-256");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fake_trust_and_startup),
        cmocka_unit_test(test_fake_cleartext),
        cmocka_unit_test(test_fake_md5),
        cmocka_unit_test(test_fake_error_response),
        cmocka_unit_test(test_fake_error_missing_database),
        cmocka_unit_test(test_fake_unsupported_methods),
        cmocka_unit_test(test_fake_sasl_without_scram),
        cmocka_unit_test(test_fake_method_switch),
        cmocka_unit_test(test_fake_ok_before_sasl_final),
        cmocka_unit_test(test_fake_channel_binding_choice),
        cmocka_unit_test(test_fake_negotiate),
        cmocka_unit_test(test_fake_unexpected_and_silent),
        cmocka_unit_test(test_pg_scram),
        cmocka_unit_test(test_pg_md5),
        cmocka_unit_test(test_pg_password),
        cmocka_unit_test(test_pg_trust),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
