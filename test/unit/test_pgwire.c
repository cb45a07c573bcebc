/*
 * pgwire: every startup packet kind read through a real socket (socketpair +
 * io_plain_init), each malformation with its own error, and the exact bytes of the
 * builders.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pgwire.h"

typedef struct pair {
    int peer; /* test writes here */
    wp_io io; /* code under test reads here */
} pair;

static void pair_open(pair *p)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    p->peer = sv[0];
    io_plain_init(&p->io, sv[1]);
}

static void pair_close(pair *p)
{
    close(p->peer);
    close(p->io.fd);
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* Writes a packet: 4-byte length (len_override if non-zero, else the real one),
 * 4-byte code, then body bytes. */
static void send_packet(pair *p, uint32_t len_override, uint32_t code, const void *body, size_t n)
{
    unsigned char buf[16384];
    assert_true(n + 8 <= sizeof(buf));
    put32(buf, len_override ? len_override : (uint32_t)(n + 8));
    put32(buf + 4, code);
    if (n)
        memcpy(buf + 8, body, n);
    assert_int_equal(write(p->peer, buf, n + 8), (ssize_t)(n + 8));
}

static int64_t soon(void)
{
    return wp_now_ms() + 2000;
}

/* Sends a startup packet with the given parameter bytes and expects failure with a
 * message containing word. */
static void expect_reject(uint32_t code, const void *body, size_t n, wp_status want,
                          const char *word)
{
    pair p;
    pair_open(&p);
    send_packet(&p, 0, code, body, n);
    pgw_startup s;
    wp_error err;
    wp_error_clear(&err);
    wp_status st = pgw_read_startup(&p.io, soon(), &s, &err);
    if (st != want || !strstr(err.message, word) || strcmp(err.sqlstate, "08P01") != 0)
        fail_msg("want status %d with \"%s\"; got %d \"%s\" (%s)", want, word, st, err.message,
                 err.sqlstate);
    pair_close(&p);
}

#define PARAMS(s) s, sizeof(s) - 1

static void test_ssl_request(void **state)
{
    (void)state;
    pair p;
    pair_open(&p);
    send_packet(&p, 0, PGW_CODE_SSL, NULL, 0);
    send_packet(&p, 0, PGW_CODE_GSSENC, NULL, 0);
    pgw_startup s;
    wp_error err;
    assert_int_equal(pgw_read_startup(&p.io, soon(), &s, &err), WP_OK);
    assert_int_equal(s.kind, PGW_START_SSL);
    assert_int_equal(pgw_read_startup(&p.io, soon(), &s, &err), WP_OK);
    assert_int_equal(s.kind, PGW_START_GSSENC);
    pair_close(&p);
    /* anything but exactly 8 bytes is refused */
    expect_reject(PGW_CODE_SSL, "\0\0\0\0", 4, WP_ERR_PROTOCOL, "exactly 8 bytes");
    expect_reject(PGW_CODE_GSSENC, "x", 1, WP_ERR_PROTOCOL, "exactly 8 bytes");
}

static void test_cancel_request(void **state)
{
    (void)state;
    pair p;
    pair_open(&p);
    unsigned char body[4 + 32];
    put32(body, 4242);
    for (int i = 0; i < 32; i++)
        body[4 + i] = (unsigned char)(0xa0 + i);
    send_packet(&p, 0, PGW_CODE_CANCEL, body, 8);  /* 3.0: 4-byte key */
    send_packet(&p, 0, PGW_CODE_CANCEL, body, 36); /* 3.2: 32-byte key */
    pgw_startup s;
    wp_error err;
    assert_int_equal(pgw_read_startup(&p.io, soon(), &s, &err), WP_OK);
    assert_int_equal(s.kind, PGW_START_CANCEL);
    assert_int_equal(s.cancel_pid, 4242);
    assert_int_equal(s.cancel_key_len, 4);
    assert_memory_equal(s.cancel_key, body + 4, 4);
    assert_int_equal(pgw_read_startup(&p.io, soon(), &s, &err), WP_OK);
    assert_int_equal(s.cancel_key_len, 32);
    assert_memory_equal(s.cancel_key, body + 4, 32);
    pair_close(&p);

    expect_reject(PGW_CODE_CANCEL, body, 7, WP_ERR_PROTOCOL, "4 to 256 bytes");
    unsigned char big[4 + 257] = {0};
    expect_reject(PGW_CODE_CANCEL, big, sizeof(big), WP_ERR_PROTOCOL, "4 to 256 bytes");
    assert_int_equal(pgw_parse_startup(big, 4, &s, &err), WP_ERR_PROTOCOL); /* code only */
}

static void test_startup_30(void **state)
{
    (void)state;
    pair p;
    pair_open(&p);
    send_packet(&p, 0, PGW_PROTO_30,
                PARAMS("user\0alice\0database\0appdb\0application_name\0psql\0options\0\0\0"));
    pgw_startup s;
    wp_error err;
    assert_int_equal(pgw_read_startup(&p.io, soon(), &s, &err), WP_OK);
    assert_int_equal(s.kind, PGW_START_STARTUP);
    assert_int_equal(s.version, PGW_PROTO_30);
    assert_int_equal(s.nparams, 4);
    assert_string_equal(s.params[0].key, "user");
    assert_string_equal(s.params[1].key, "database");
    assert_string_equal(s.params[2].key, "application_name");
    assert_string_equal(pgw_startup_get(&s, "user"), "alice");
    assert_string_equal(pgw_startup_get(&s, "database"), "appdb");
    assert_string_equal(pgw_startup_get(&s, "options"), "");
    assert_null(pgw_startup_get(&s, "nope"));
    assert_int_equal(s.npq_options, 0);
    pgw_startup_free(&s);
    pair_close(&p);
}

static void test_startup_32_and_pq_options(void **state)
{
    (void)state;
    pair p;
    pair_open(&p);
    send_packet(&p, 0, PGW_PROTO_32,
                PARAMS("user\0bob\0_pq_.protocol_managed_params\0x\0_pq_.foo\0\0\0"));
    pgw_startup s;
    wp_error err;
    assert_int_equal(pgw_read_startup(&p.io, soon(), &s, &err), WP_OK);
    assert_int_equal(s.version, PGW_PROTO_32);
    assert_int_equal(s.nparams, 1);
    assert_int_equal(s.npq_options, 2);
    assert_string_equal(s.pq_options[0], "_pq_.protocol_managed_params");
    assert_string_equal(s.pq_options[1], "_pq_.foo");
    assert_null(pgw_startup_get(&s, "_pq_.foo"));
    pgw_startup_free(&s);
    /* 3.7 is accepted too: the caller negotiates down */
    send_packet(&p, 0, PGW_PROTO(3, 7), PARAMS("user\0bob\0\0"));
    assert_int_equal(pgw_read_startup(&p.io, soon(), &s, &err), WP_OK);
    assert_int_equal(s.version, PGW_PROTO(3, 7));
    pgw_startup_free(&s);
    pair_close(&p);
}

static void test_direct_tls_peeked(void **state)
{
    (void)state;
    pair p;
    pair_open(&p);
    const unsigned char hello[] = {0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5};
    assert_int_equal(write(p.peer, hello, sizeof(hello)), (ssize_t)sizeof(hello));
    pgw_startup s;
    wp_error err;
    assert_int_equal(pgw_read_startup(&p.io, soon(), &s, &err), WP_OK);
    assert_int_equal(s.kind, PGW_START_DIRECT_TLS);
    unsigned char back[sizeof(hello)];
    assert_int_equal(read(p.io.fd, back, sizeof(back)), (ssize_t)sizeof(back));
    assert_memory_equal(back, hello, sizeof(hello)); /* nothing consumed */
    pair_close(&p);
}

static void test_bad_lengths(void **state)
{
    (void)state;
    pgw_startup s;
    wp_error err;
    pair p;
    /* short: length 4 */
    pair_open(&p);
    send_packet(&p, 4, PGW_PROTO_30, NULL, 0);
    assert_int_equal(pgw_read_startup(&p.io, soon(), &s, &err), WP_ERR_PROTOCOL);
    assert_non_null(strstr(err.message, "shorter than 8"));
    pair_close(&p);
    /* huge: refused from the length alone, without waiting for a body */
    pair_open(&p);
    send_packet(&p, 0x7fffffff, PGW_PROTO_30, NULL, 0);
    assert_int_equal(pgw_read_startup(&p.io, soon(), &s, &err), WP_ERR_TOO_LARGE);
    assert_non_null(strstr(err.message, "exceeds"));
    assert_string_equal(err.sqlstate, "08P01");
    pair_close(&p);
    /* one over the limit */
    pair_open(&p);
    send_packet(&p, PGW_STARTUP_MAX + 1, PGW_PROTO_30, NULL, 0);
    assert_int_equal(pgw_read_startup(&p.io, soon(), &s, &err), WP_ERR_TOO_LARGE);
    pair_close(&p);
    /* truncated: length promises more than arrives before EOF */
    pair_open(&p);
    send_packet(&p, 100, PGW_PROTO_30, PARAMS("user\0al"));
    shutdown(p.peer, SHUT_WR);
    assert_int_equal(pgw_read_startup(&p.io, soon(), &s, &err), WP_ERR_CLOSED);
    assert_non_null(strstr(err.message, "incomplete"));
    pair_close(&p);
}

static void test_silent_client_times_out(void **state)
{
    (void)state;
    pair p;
    pair_open(&p);
    pgw_startup s;
    wp_error err;
    int64_t t0 = wp_now_ms();
    assert_int_equal(pgw_read_startup(&p.io, t0 + 50, &s, &err), WP_ERR_TIMEOUT);
    assert_true(wp_now_ms() - t0 < 1500);
    pair_close(&p);
}

static void test_malformed_startup(void **state)
{
    (void)state;
    expect_reject(PGW_PROTO_30, PARAMS("user\0alice\0"), WP_ERR_PROTOCOL, "missing terminator");
    expect_reject(PGW_PROTO_30, PARAMS("user\0alice"), WP_ERR_PROTOCOL, "missing terminator");
    expect_reject(PGW_PROTO_30, PARAMS("user\0alice\0dat"), WP_ERR_PROTOCOL, "missing terminator");
    expect_reject(PGW_PROTO_30, PARAMS("user\0alice\0database\0"), WP_ERR_PROTOCOL,
                  "odd parameter list");
    expect_reject(PGW_PROTO_30, PARAMS("user\0alice\0user\0bob\0\0"), WP_ERR_PROTOCOL,
                  "\"user\" given twice");
    expect_reject(PGW_PROTO_30, PARAMS("user\0a\0_pq_.x\0\0_pq_.x\0\0\0"), WP_ERR_PROTOCOL,
                  "given twice");
    expect_reject(PGW_PROTO_30, PARAMS("database\0appdb\0\0"), WP_ERR_PROTOCOL, "no user name");
    expect_reject(PGW_PROTO_30, PARAMS("\0"), WP_ERR_PROTOCOL, "no user name");
    expect_reject(PGW_PROTO_30, PARAMS("\0value\0user\0a\0\0"), WP_ERR_PROTOCOL,
                  "empty parameter name");
    expect_reject(PGW_PROTO_30, PARAMS("user\0a\0\0extra"), WP_ERR_PROTOCOL,
                  "empty parameter name");
    expect_reject(PGW_PROTO(2, 0), PARAMS("user\0a\0\0"), WP_ERR_PROTOCOL,
                  "unsupported frontend protocol 2.0");
    expect_reject(PGW_PROTO(4, 0), PARAMS("user\0a\0\0"), WP_ERR_PROTOCOL,
                  "unsupported frontend protocol 4.0");
}

static void test_parse_startup_direct(void **state)
{
    (void)state;
    pgw_startup s;
    wp_error err;
    assert_int_equal(pgw_parse_startup((const unsigned char *)"\0\0", 2, &s, &err),
                     WP_ERR_PROTOCOL);
    assert_non_null(strstr(err.message, "too short"));
}

static void test_read_msg(void **state)
{
    (void)state;
    pair p;
    pair_open(&p);
    pgw_buf b = {0};
    char type = 0;
    /* 'Z' with one byte of body */
    assert_int_equal(write(p.peer, "Z\0\0\0\5I", 6), 6);
    assert_int_equal(pgw_read_msg(&p.io, soon(), 16, &type, &b), WP_OK);
    assert_int_equal(type, 'Z');
    assert_int_equal(b.len, 1);
    assert_int_equal(b.data[0], 'I');
    /* body over max_len: refused on the header */
    assert_int_equal(write(p.peer, "E\0\0\0\x15", 5), 5);
    assert_int_equal(pgw_read_msg(&p.io, soon(), 16, &type, &b), WP_ERR_TOO_LARGE);
    pair_close(&p);
    pair_open(&p);
    assert_int_equal(write(p.peer, "E\0\0\0\3", 5), 5); /* length < 4 */
    assert_int_equal(pgw_read_msg(&p.io, soon(), 16, &type, &b), WP_ERR_PROTOCOL);
    pair_close(&p);
    pgw_buf_free(&b);
}

static void test_build_negotiate_bytes(void **state)
{
    (void)state;
    pgw_buf b = {0};
    char *opts[] = {"_pq_.foo", "_pq_.b"};
    assert_int_equal(pgw_build_negotiate(&b, 0, opts, 2), WP_OK);
    const unsigned char want[] = "v\0\0\0\x1c"
                                 "\0\3\0\0" /* 3.0 as a full version, as libpq expects */
                                 "\0\0\0\2"
                                 "_pq_.foo\0_pq_.b\0";
    assert_int_equal(b.len, sizeof(want) - 1);
    assert_memory_equal(b.data, want, sizeof(want) - 1);
    pgw_buf_free(&b);
}

static void test_build_error_bytes(void **state)
{
    (void)state;
    pgw_buf b = {0};
    wp_error e;
    wp_error_clear(&e);
    snprintf(e.sqlstate, sizeof(e.sqlstate), "28000");
    snprintf(e.message, sizeof(e.message), "no");
    assert_int_equal(pgw_build_error(&b, &e), WP_OK);
    const unsigned char want[] = "E\0\0\0\x1e"
                                 "SFATAL\0VFATAL\0C28000\0Mno\0\0";
    assert_int_equal(b.len, sizeof(want) - 1);
    assert_memory_equal(b.data, want, sizeof(want) - 1);

    /* with detail and hint, and back through the parser */
    pgw_buf_reset(&b);
    wp_error_set(&e, "08P01", "bad %s", "packet");
    wp_error_detail(&e, "d");
    wp_error_hint(&e, "h");
    snprintf(e.severity, sizeof(e.severity), "ERROR");
    assert_int_equal(pgw_build_error(&b, &e), WP_OK);
    wp_error back;
    assert_int_equal(pgw_parse_error(b.data + 5, b.len - 5, &back), WP_OK);
    assert_string_equal(back.severity, "ERROR");
    assert_string_equal(back.sqlstate, "08P01");
    assert_string_equal(back.message, "bad packet");
    assert_string_equal(back.detail, "d");
    assert_string_equal(back.hint, "h");
    pgw_buf_free(&b);
}

static void test_parse_error_backend(void **state)
{
    (void)state;
    wp_error e;
    /* localized S, non-localized V, unknown field skipped */
    const unsigned char msg[] = "SFATAL_LOC\0VFATAL\0C28P01\0Mpassword authentication failed\0"
                                "Fauth.c\0\0";
    assert_int_equal(pgw_parse_error(msg, sizeof(msg) - 1, &e), WP_OK);
    assert_string_equal(e.severity, "FATAL");
    assert_string_equal(e.sqlstate, "28P01");
    assert_string_equal(e.message, "password authentication failed");
    /* no terminator, unterminated field */
    assert_int_equal(pgw_parse_error(msg, 18, &e), WP_ERR_PROTOCOL);
    assert_int_equal(pgw_parse_error((const unsigned char *)"Mx", 2, &e), WP_ERR_PROTOCOL);
    /* missing or bogus SQLSTATE becomes XX000 */
    assert_int_equal(pgw_parse_error((const unsigned char *)"C12\0Mx\0\0", 8, &e), WP_OK);
    assert_string_equal(e.sqlstate, "XX000");
}

static void test_build_startup_roundtrip(void **state)
{
    (void)state;
    pgw_buf b = {0};
    pgw_param ps[] = {{"user", "r1"}, {"database", "appdb"}, {"application_name", ""}};
    assert_int_equal(pgw_build_startup(&b, PGW_PROTO_32, ps, 3), WP_OK);
    assert_int_equal(b.data[0], 0); /* untyped: starts with the length */
    assert_int_equal(((uint32_t)b.data[2] << 8 | b.data[3]), b.len);
    pgw_startup s;
    wp_error err;
    assert_int_equal(pgw_parse_startup(b.data + 4, b.len - 4, &s, &err), WP_OK);
    assert_int_equal(s.version, PGW_PROTO_32);
    assert_int_equal(s.nparams, 3);
    assert_string_equal(pgw_startup_get(&s, "database"), "appdb");
    pgw_startup_free(&s);
    /* an empty name would terminate the list: refused, buffer untouched */
    size_t before = b.len;
    pgw_param bad[] = {{"", "x"}};
    assert_int_equal(pgw_build_startup(&b, PGW_PROTO_30, bad, 1), WP_ERR_INVALID);
    assert_int_equal(b.len, before);
    pgw_buf_free(&b);
}

static void test_other_builders(void **state)
{
    (void)state;
    pgw_buf b = {0};
    assert_int_equal(pgw_build_auth_ok(&b), WP_OK);
    assert_memory_equal(b.data, "R\0\0\0\x08\0\0\0\0", 9);
    pgw_buf_reset(&b);
    assert_int_equal(pgw_build_password(&b, "pw"), WP_OK);
    assert_int_equal(b.len, 8);
    assert_memory_equal(b.data, "p\0\0\0\x07pw\0", 8);
    pgw_buf_reset(&b);
    assert_int_equal(pgw_build_sasl_initial(&b, "SCRAM-SHA-256", "n,,", 3), WP_OK);
    assert_memory_equal(b.data, "p\0\0\0\x19SCRAM-SHA-256\0\0\0\0\3n,,", b.len);
    assert_int_equal(b.len, 26);
    pgw_buf_reset(&b);
    assert_int_equal(pgw_build_sasl_response(&b, "c=x", 3), WP_OK);
    assert_memory_equal(b.data,
                        "p\0\0\0\x07"
                        "c=x",
                        8);
    pgw_buf_reset(&b);
    const unsigned char key[4] = {9, 8, 7, 6};
    assert_int_equal(pgw_build_backend_key(&b, 77, key, 4), WP_OK);
    assert_memory_equal(b.data, "K\0\0\0\x0c\0\0\0\x4d\x09\x08\x07\x06", 13);
    assert_int_equal(pgw_build_backend_key(&b, 77, key, 3), WP_ERR_INVALID);
    assert_int_equal(b.len, 13);
    pgw_buf_reset(&b);
    assert_int_equal(pgw_build_cancel(&b, 77, key, 4), WP_OK);
    pgw_startup s;
    wp_error err;
    assert_int_equal(pgw_parse_startup(b.data + 4, b.len - 4, &s, &err), WP_OK);
    assert_int_equal(s.kind, PGW_START_CANCEL);
    assert_int_equal(s.cancel_pid, 77);
    assert_memory_equal(s.cancel_key, key, 4);
    pgw_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ssl_request),
        cmocka_unit_test(test_cancel_request),
        cmocka_unit_test(test_startup_30),
        cmocka_unit_test(test_startup_32_and_pq_options),
        cmocka_unit_test(test_direct_tls_peeked),
        cmocka_unit_test(test_bad_lengths),
        cmocka_unit_test(test_silent_client_times_out),
        cmocka_unit_test(test_malformed_startup),
        cmocka_unit_test(test_parse_startup_direct),
        cmocka_unit_test(test_read_msg),
        cmocka_unit_test(test_build_negotiate_bytes),
        cmocka_unit_test(test_build_error_bytes),
        cmocka_unit_test(test_parse_error_backend),
        cmocka_unit_test(test_build_startup_roundtrip),
        cmocka_unit_test(test_other_builders),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
