/*
 * test_pool: the parked-session pool (lib/pool.c) and the relay's pooling hooks, over
 * real socketpairs: the test plays the backend on the other end of each "up_conn" and
 * synchronises on the bytes themselves (blocking reads), never on sleeps.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "pool.h"
#include "relay.h"

static void put_msg(int fd, char type, const void *body, size_t len)
{
    /* one write: a peer that closes on the first byte (the reaper) must not make a
     * second write raise SIGPIPE */
    unsigned char msg[5 + 256] = {(unsigned char)type};
    assert_true(len <= 256);
    pgw_put32(msg + 1, (uint32_t)(len + 4));
    if (len)
        memcpy(msg + 5, body, len);
    assert_int_equal(write(fd, msg, 5 + len), (ssize_t)(5 + len));
}

/* A session whose backend end is *peer. */
static void fake_session(pool_session *s, int *peer, const char *role)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    memset(s, 0, sizeof(*s));
    io_plain_init(&s->up.io, sv[0]);
    s->up.fd = sv[0];
    s->open = 1;
    snprintf(s->role, sizeof(s->role), "%s", role);
    *peer = sv[1];
}

/* The peer saw Terminate and then EOF: the pool closed the session politely. */
static void assert_closed(int peer)
{
    unsigned char b[8];
    assert_int_equal(read(peer, b, sizeof(b)), 5);
    assert_int_equal(b[0], 'X');
    assert_int_equal(read(peer, b, sizeof(b)), 0);
    close(peer);
}

static void test_status(void **state)
{
    (void)state;
    pool_session s;
    memset(&s, 0, sizeof(s));
    assert_int_equal(pool_status_set(&s, (const unsigned char *)"TimeZone\0UTC", 13), WP_OK);
    assert_int_equal(pool_status_set(&s, (const unsigned char *)"a\0b", 4), WP_OK);
    assert_int_equal(pool_status_set(&s, (const unsigned char *)"TimeZone\0CET", 13), WP_OK);
    assert_int_equal(s.nstatus, 2);
    assert_string_equal(s.status[0].value, "CET");
    /* malformed: no terminator, bytes after the value, empty */
    assert_int_not_equal(pool_status_set(&s, (const unsigned char *)"abc", 3), WP_OK);
    assert_int_not_equal(pool_status_set(&s, (const unsigned char *)"a\0b\0c", 6), WP_OK);
    assert_int_not_equal(pool_status_set(&s, (const unsigned char *)"a\0b", 3), WP_OK);
    pgw_buf b = {0};
    assert_int_equal(pool_status_build(&s, &b), WP_OK);
    static const unsigned char want[] = "S\0\0\0\x11TimeZone\0CET\0S\0\0\0\x08"
                                        "a\0b";
    assert_int_equal(b.len, sizeof(want));
    assert_memory_equal(b.data, want, sizeof(want));
    pgw_buf_free(&b);
    pool_session_clear(&s);
}

static void test_fingerprints(void **state)
{
    (void)state;
    grant_pair p1[] = {{GRANT_PRESET_READONLY, "public"}};
    grant_pair p2[] = {{GRANT_PRESET_READWRITE, "public"}};
    grant_effective a = {.pairs = p1, .npairs = 1}, b = a, c = {.pairs = p2, .npairs = 1};
    b.downgrade = GRANT_PRESET_READONLY;
    char *fa = pool_grant_fingerprint(&a), *fb = pool_grant_fingerprint(&b);
    char *fc = pool_grant_fingerprint(&c), *fa2 = pool_grant_fingerprint(&a);
    assert_string_equal(fa, fa2);
    assert_string_not_equal(fa, fb);
    assert_string_not_equal(fa, fc);
    free(fa), free(fb), free(fc), free(fa2);
    pgw_param x[] = {{"a", "b=c"}}, y[] = {{"a=b", "c"}}, z[] = {{"a", "b=c"}, {"d", ""}};
    char *px = pool_params_fingerprint(x, 1), *py = pool_params_fingerprint(y, 1);
    char *pz = pool_params_fingerprint(z, 2);
    assert_string_not_equal(px, py);
    assert_string_not_equal(px, pz);
    free(px), free(py), free(pz);
}

/* Queues the backend's answer to the reset (socket buffers hold it until read). */
static void answer_reset(int peer, const char *script)
{
    for (const char *c = script; *c; c++) {
        switch (*c) {
        case 'C':
            put_msg(peer, 'C', "DISCARD ALL", 12);
            break;
        case 'c':
            put_msg(peer, 'C', "SELECT 1", 9);
            break;
        case 'S':
            put_msg(peer, 'S', "TimeZone\0UTC", 13);
            break;
        case 'I':
            put_msg(peer, 'Z', "I", 1);
            break;
        case 'T':
            put_msg(peer, 'Z', "T", 1);
            break;
        case 'E':
            put_msg(peer, 'E', "SERROR\0C25001\0Mno\0", 19);
            break;
        case 'N':
            put_msg(peer, 'N', "SWARNING\0C01000\0Mhm\0", 21);
            break;
        }
    }
}

static void test_reset(void **state)
{
    (void)state;
    static const struct {
        const char *script;
        int ok;
    } cases[] = {{"CSI", 1}, {"NCI", 1}, {"CI", 1},  {"EI", 0},  {"CT", 0},
                 {"cI", 0},  {"I", 0},   {"CCI", 0}, {"CII", 0}, {"CIC", 0}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        pool_session s;
        int peer;
        fake_session(&s, &peer, "r");
        answer_reset(peer, cases[i].script);
        wp_status st = pool_reset(&s, wp_now_ms() + 2000);
        unsigned char q[17];
        assert_int_equal(read(peer, q, sizeof(q)), 17);
        assert_int_equal(q[0], 'Q');
        assert_memory_equal(q + 5, "DISCARD ALL", 12);
        if (cases[i].ok != (st == WP_OK))
            fail_msg("reset answered with %s: %s", cases[i].script, wp_status_str(st));
        if (strchr(cases[i].script, 'S') && cases[i].ok)
            assert_string_equal(s.status[0].value, "UTC");
        pool_session_close(&s);
        close(peer);
    }
}

static const pool_key KEY = {"l", "owner", "grant", "params", 0};

static void test_park_take(void **state)
{
    (void)state;
    pool *p = pool_new();
    assert_non_null(p);
    pool_limits lim = {.lifetime_ms = 60000, .max_per_role = 2, .max_total = 3};
    pool_session s, got;
    int peer1, peer2, peer3;
    fake_session(&s, &peer1, "r1");
    s.backend_pid = 11;
    assert_int_equal(pool_park(p, &KEY, &s, &lim), 1);
    assert_int_equal(s.open, 0);
    /* other params, other owner, other listener: nothing */
    pool_key k = KEY;
    k.params = "other";
    assert_int_equal(pool_take(p, &k, &got), 0);
    k = KEY;
    k.owner = "someone else";
    assert_int_equal(pool_take(p, &k, &got), 0);
    k = KEY;
    k.listener = "l2";
    assert_int_equal(pool_take(p, &k, &got), 0);
    assert_int_equal(pool_count(p), 1);
    assert_int_equal(pool_take(p, &KEY, &got), 1);
    assert_int_equal(got.backend_pid, 11);
    assert_int_equal(pool_count(p), 0);
    /* a different grant closes what was parked for the old one */
    assert_int_equal(pool_park(p, &KEY, &got, &lim), 1);
    k = KEY;
    k.grant = "narrower";
    assert_int_equal(pool_take(p, &k, &got), 0);
    assert_int_equal(pool_count(p), 0);
    assert_closed(peer1);
    /* parked under another configuration (a reload since): closed, never handed out */
    fake_session(&s, &peer1, "r1");
    assert_int_equal(pool_park(p, &KEY, &s, &lim), 1);
    k = KEY;
    k.generation = KEY.generation + 1;
    assert_int_equal(pool_take(p, &k, &got), 0);
    assert_int_equal(pool_count(p), 0);
    assert_closed(peer1);
    /* a key whose fingerprint could not be made (out of memory) parks nothing */
    fake_session(&s, &peer1, "r1");
    k = KEY;
    k.grant = NULL;
    assert_int_equal(pool_park(p, &k, &s, &lim), 0);
    k = KEY;
    k.params = NULL;
    assert_int_equal(pool_park(p, &k, &s, &lim), 0);
    assert_int_equal(s.open, 1);
    assert_int_equal(pool_count(p), 0);
    pool_session_close(&s);
    assert_closed(peer1);
    /* per-role bound: the oldest goes */
    fake_session(&s, &peer1, "r1");
    assert_int_equal(pool_park(p, &KEY, &s, &lim), 1);
    fake_session(&s, &peer2, "r1");
    assert_int_equal(pool_park(p, &KEY, &s, &lim), 1);
    fake_session(&s, &peer3, "r1");
    assert_int_equal(pool_park(p, &KEY, &s, &lim), 1);
    assert_closed(peer1);
    assert_int_equal(pool_count(p), 2);
    /* a backend that speaks while parked is never handed out */
    put_msg(peer3, 'N', "x\0", 2);
    put_msg(peer2, 'N', "x\0", 2);
    assert_int_equal(pool_take(p, &KEY, &got), 0);
    assert_int_equal(pool_count(p), 0);
    close(peer2), close(peer3);
    /* drop by owner, then shutdown refuses parking */
    fake_session(&s, &peer1, "r1");
    assert_int_equal(pool_park(p, &KEY, &s, &lim), 1);
    pool_drop(p, POOL_DROP_OWNER, "l", "owner", "test");
    assert_closed(peer1);
    pool_shutdown(p);
    fake_session(&s, &peer1, "r1");
    assert_int_equal(pool_park(p, &KEY, &s, &lim), 0);
    assert_int_equal(s.open, 1);
    pool_session_close(&s);
    close(peer1);
    pool_free(p);
}

static void test_reaper(void **state)
{
    (void)state;
    pool *p = pool_new();
    pool_limits lim = {.lifetime_ms = 300, .max_per_role = 4, .max_total = 4};
    pool_session s;
    int peer1, peer2;
    fake_session(&s, &peer1, "r1");
    assert_int_equal(pool_park(p, &KEY, &s, &lim), 1);
    fake_session(&s, &peer2, "r2");
    lim.lifetime_ms = 600000;
    assert_int_equal(pool_park(p, &KEY, &s, &lim), 1);
    assert_closed(peer1); /* expiry: the reaper closes it without anyone asking */
    close(peer2);         /* the backend goes away while parked */
    int64_t deadline = wp_now_ms() + 5000;
    while (pool_count(p) > 0 && wp_now_ms() < deadline)
        poll(NULL, 0, 10);
    assert_int_equal(pool_count(p), 0);
    pool_free(p);
}

/* ----------------------------------------------- relay: hold back Terminate ---- */

typedef struct rig {
    int capp, cproxy, bproxy, bapp;
    wp_io cio, bio;
    relay_opts o;
    relay_result r;
} rig;

static void *rig_main(void *arg)
{
    rig *g = arg;
    relay_run(&g->cio, &g->bio, &g->o, &g->r);
    return NULL;
}

static void run_terminate(int same_chunk, relay_result *out, unsigned char *backend_got,
                          ssize_t *nbackend)
{
    rig g;
    int a[2], b[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, a), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, b), 0);
    g.capp = a[0], g.cproxy = a[1], g.bproxy = b[0], g.bapp = b[1];
    io_plain_init(&g.cio, g.cproxy);
    io_plain_init(&g.bio, g.bproxy);
    relay_opts_init(&g.o);
    g.o.hold_terminate = 1;
    g.o.backend_ready = 'I';
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, rig_main, &g), 0);
    static const unsigned char q[] = {'Q', 0, 0, 0, 5, 0}, x[] = {'X', 0, 0, 0, 4};
    if (same_chunk == 2) { /* a second query is in before the first one's ReadyForQuery */
        unsigned char got[6];
        assert_int_equal(write(g.capp, q, 6), 6);
        assert_int_equal(read(g.bapp, got, 6), 6);
        assert_int_equal(write(g.capp, q, 6), 6);
        assert_int_equal(read(g.bapp, got, 6), 6); /* forwarded: the backend will answer it */
        put_msg(g.bapp, 'Z', "I", 1);
        size_t have = 0;
        while (have < 6) {
            ssize_t r = read(g.capp, got + have, 6 - have);
            assert_true(r > 0);
            have += (size_t)r;
        }
        assert_int_equal(write(g.capp, x, 5), 5);
    } else if (same_chunk) {
        unsigned char both[11];
        memcpy(both, q, 6);
        memcpy(both + 6, x, 5);
        assert_int_equal(write(g.capp, both, 11), 11);
    } else {
        assert_int_equal(write(g.capp, q, 6), 6);
        unsigned char got[6];
        assert_int_equal(read(g.bapp, got, 6), 6);
        put_msg(g.bapp, 'Z', "I", 1);
        /* the client saw ReadyForQuery (put_msg writes header and body apart, so the
         * relay may pass them on apart: read until all 6 bytes are in) */
        size_t have = 0;
        while (have < 6) {
            ssize_t r = read(g.capp, got + have, 6 - have);
            assert_true(r > 0);
            have += (size_t)r;
        }
        assert_int_equal(write(g.capp, x, 5), 5);
    }
    pthread_join(t, NULL);
    *out = g.r;
    /* what reached the backend after the query: nothing when Terminate was held */
    shutdown(g.bproxy, SHUT_WR);
    *nbackend = read(g.bapp, backend_got, 16);
    close(g.capp), close(g.cproxy), close(g.bproxy), close(g.bapp);
}

static void test_relay_hold_terminate(void **state)
{
    (void)state;
    relay_result r;
    unsigned char got[16];
    ssize_t n;
    run_terminate(0, &r, got, &n);
    assert_int_equal(r.end, RELAY_CLIENT_TERMINATE);
    assert_int_equal(r.backend_status, 'I');
    assert_int_equal(r.backend_last, 'Z');
    assert_true(r.backend_boundary);
    assert_int_equal(r.client_after_ready, 1);
    assert_int_equal(n, 0); /* the backend never saw the Terminate */

    run_terminate(1, &r, got, &n); /* Query and Terminate in one chunk */
    assert_int_equal(r.end, RELAY_CLIENT_TERMINATE);
    assert_int_equal(r.client_after_ready, 2); /* so the session does not park it */
    assert_int_equal(n, 6);                    /* the query went on, the Terminate did not */
    assert_int_equal(got[0], 'Q');

    /* Query, Query, ReadyForQuery (the first one's), Terminate: the second query is
     * still unanswered, so this must not look like "only Terminate after idle" */
    run_terminate(2, &r, got, &n);
    assert_int_equal(r.end, RELAY_CLIENT_TERMINATE);
    assert_int_equal(r.backend_last, 'Z');
    assert_true(r.client_after_ready != 1);
}

/* ------------------------------------------------------------ [pool] keys ---- */

static wp_config *load_pool(const char *pool_lines, cfg_diag *d)
{
    char text[1024];
    snprintf(text, sizeof(text),
             "%s[[listeners]]\nname = \"pg\"\nlisten = \":5432\"\nmode = \"postgres\"\n"
             "backend = \"127.0.0.1:5433\"\n[listeners.postgres]\nadmin_user = \"a\"\n"
             "admin_password = \"p\"\n",
             pool_lines);
    return cfg_load_string(text, "t.toml", d);
}

static void test_config_keys(void **state)
{
    (void)state;
    cfg_diag d = {0};
    wp_config *c = load_pool("", &d);
    assert_non_null(c);
    assert_true(c->pool_enabled);
    assert_int_equal(c->pool_idle_timeout_ms, 60000);
    assert_int_equal(c->pool_max_per_role, 4);
    assert_int_equal(c->pool_max_total, 100);
    cfg_unref(c);
    c = load_pool("[pool]\nenabled = false\nidle_timeout = \"5s\"\nmax_per_role = 2\n"
                  "max_total = 7\n",
                  &d);
    assert_non_null(c);
    assert_false(c->pool_enabled);
    assert_int_equal(c->pool_idle_timeout_ms, 5000);
    assert_int_equal(c->pool_max_per_role, 2);
    assert_int_equal(c->pool_max_total, 7);
    cfg_unref(c);
    cfg_diag_free(&d);
    static const char *bad[] = {"[pool]\nmax_total = 0\n", "[pool]\nidle_timeout = \"0\"\n",
                                "[pool]\nenabled = maybe\n", "[pool]\nmax_parked = 3\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cfg_diag e = {0};
        c = load_pool(bad[i], &e);
        if (c || e.nerrors == 0)
            fail_msg("accepted: %s", bad[i]);
        assert_non_null(strstr(e.errors[0], "t.toml:2:"));
        cfg_diag_free(&e);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status),      cmocka_unit_test(test_fingerprints),
        cmocka_unit_test(test_reset),       cmocka_unit_test(test_park_take),
        cmocka_unit_test(test_reaper),      cmocka_unit_test(test_relay_hold_terminate),
        cmocka_unit_test(test_config_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
