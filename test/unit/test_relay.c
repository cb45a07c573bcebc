/*
 * test_relay: the framer and the copy loop over real socketpairs.
 *
 * Each relay test runs relay_run() in a thread between two socketpairs ("client app" <->
 * relay <-> "backend app") and drives both apps from the test thread, synchronising on
 * the bytes themselves (a blocking read returns when the relay forwarded them), never on
 * sleeps.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "io.h"
#include "relay.h"

/* ---------------------------------------------------------- framer ---- */

static size_t put_msg(unsigned char *out, char type, const char *body, size_t n)
{
    uint32_t len = (uint32_t)n + 4;
    out[0] = (unsigned char)type;
    out[1] = (unsigned char)(len >> 24);
    out[2] = (unsigned char)(len >> 16);
    out[3] = (unsigned char)(len >> 8);
    out[4] = (unsigned char)len;
    memcpy(out + 5, body, n);
    return n + 5;
}

static void test_framer_bytewise(void **state)
{
    (void)state;
    unsigned char buf[64];
    size_t n = put_msg(buf, 'Q', "select 1;", 10);
    n += put_msg(buf + n, 'X', "", 0);
    relay_framer f;
    relay_framer_init(&f);
    assert_true(relay_framer_at_boundary(&f));
    for (size_t i = 0; i < n; i++) {
        relay_framer_feed(&f, buf + i, 1);
        /* boundaries: after the first message (15 bytes) and at the end */
        assert_int_equal(relay_framer_at_boundary(&f), i == 14 || i == n - 1);
    }
    assert_int_equal(f.last_type, 'X');
}

static void test_framer_max_read(void **state)
{
    (void)state;
    unsigned char buf[64];
    size_t n = put_msg(buf, 'D', "abcdefghij", 10);
    relay_framer f;
    relay_framer_init(&f);
    assert_int_equal(relay_framer_max_read(&f, 100), 0);
    relay_framer_feed(&f, buf, 2); /* half a header */
    assert_int_equal(relay_framer_max_read(&f, 100), 3);
    relay_framer_feed(&f, buf + 2, 3);
    assert_int_equal(relay_framer_max_read(&f, 100), 10);
    assert_int_equal(relay_framer_max_read(&f, 4), 4);
    relay_framer_feed(&f, buf + 5, n - 5);
    assert_true(relay_framer_at_boundary(&f));
}

static void test_framer_broken_length(void **state)
{
    (void)state;
    const unsigned char bad[] = {'Q', 0, 0, 0, 3, 'x'};
    relay_framer f;
    relay_framer_init(&f);
    relay_framer_feed(&f, bad, sizeof(bad));
    assert_true(f.broken);
    assert_false(relay_framer_at_boundary(&f));
    assert_int_equal(relay_framer_max_read(&f, 100), 0);
}

/* ---------------------------------------------------------- relay ---- */

typedef struct rig {
    int client_app, client_proxy; /* socketpair: test plays the client on client_app */
    int backend_proxy, backend_app;
    int stop[2];
    wp_io cio, bio;
    relay_opts opts;
    relay_result res;
    pthread_t thread;
    int ticks;
    int stop_after_ticks;
    relay_end stopped_for; /* what the stop hook was called for; 0 = not called */
} rig;

static void *rig_main(void *p)
{
    rig *r = p;
    relay_run(&r->cio, &r->bio, &r->opts, &r->res);
    /* the session would close both sides now */
    close(r->client_proxy);
    close(r->backend_proxy);
    return NULL;
}

static void rig_init(rig *r)
{
    memset(r, 0, sizeof(*r));
    int a[2], b[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, a), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, b), 0);
    assert_int_equal(pipe(r->stop), 0);
    r->client_app = a[0];
    r->client_proxy = a[1];
    r->backend_proxy = b[0];
    r->backend_app = b[1];
    io_plain_init(&r->cio, r->client_proxy);
    io_plain_init(&r->bio, r->backend_proxy);
    relay_opts_init(&r->opts);
    r->opts.stop_fd = r->stop[0];
}

static void rig_start(rig *r)
{
    assert_int_equal(pthread_create(&r->thread, NULL, rig_main, r), 0);
}

static void rig_finish(rig *r)
{
    pthread_join(r->thread, NULL);
    close(r->client_app);
    close(r->backend_app);
    close(r->stop[0]);
    if (r->stop[1] >= 0)
        close(r->stop[1]);
}

static void write_all(int fd, const void *p, size_t n)
{
    const unsigned char *b = p;
    while (n > 0) {
        ssize_t w = write(fd, b, n);
        assert_true(w > 0);
        b += w;
        n -= (size_t)w;
    }
}

static void read_exact(int fd, void *p, size_t n)
{
    unsigned char *b = p;
    while (n > 0) {
        ssize_t r = read(fd, b, n);
        assert_true(r > 0);
        b += r;
        n -= (size_t)r;
    }
}

static void expect_eof(int fd)
{
    char c;
    ssize_t r;
    do {
        r = read(fd, &c, 1);
    } while (r < 0 && errno == EINTR);
    assert_int_equal(r, 0);
}

static void test_relay_both_ways_and_terminate(void **state)
{
    (void)state;
    rig r;
    rig_init(&r);
    rig_start(&r);
    unsigned char q[64], got[64];
    size_t qn = put_msg(q, 'Q', "select 1;", 10);
    write_all(r.client_app, q, qn);
    read_exact(r.backend_app, got, qn);
    assert_memory_equal(q, got, qn);

    unsigned char z[16];
    size_t zn = put_msg(z, 'Z', "I", 1);
    write_all(r.backend_app, z, zn);
    read_exact(r.client_app, got, zn);
    assert_memory_equal(z, got, zn);

    unsigned char x[8];
    size_t xn = put_msg(x, 'X', "", 0);
    write_all(r.client_app, x, xn);
    shutdown(r.client_app, SHUT_WR);
    read_exact(r.backend_app, got, xn);
    expect_eof(r.backend_app); /* half-close reached the backend */
    shutdown(r.backend_app, SHUT_WR);
    rig_finish(&r);
    assert_int_equal(r.res.end, RELAY_CLIENT_CLOSED);
    assert_true(r.res.client_terminated);
    assert_int_equal(r.res.bytes_in, qn + xn);
    assert_int_equal(r.res.bytes_out, zn);
}

static void test_relay_backend_closes(void **state)
{
    (void)state;
    rig r;
    rig_init(&r);
    rig_start(&r);
    unsigned char e[64];
    size_t en = put_msg(e, 'E', "SFATAL", 7);
    write_all(r.backend_app, e, en);
    close(r.backend_app);
    r.backend_app = open("/dev/null", 0);
    unsigned char got[64];
    read_exact(r.client_app, got, en);
    expect_eof(r.client_app);
    rig_finish(&r);
    assert_int_equal(r.res.end, RELAY_BACKEND_CLOSED);
    assert_false(r.res.client_terminated);
    assert_int_equal(r.res.bytes_out, en);
}

static void test_relay_stop_finishes_message(void **state)
{
    (void)state;
    rig r;
    rig_init(&r);
    rig_start(&r);
    unsigned char d[128], got[128];
    size_t dn = put_msg(d, 'D', "0123456789abcdefghij", 20);
    write_all(r.backend_app, d, 9); /* header and part of the body */
    read_exact(r.client_app, got, 9);
    close(r.stop[1]); /* server shutdown: relay must finish the message first */
    r.stop[1] = -1;
    write_all(r.backend_app, d + 9, dn - 9);
    read_exact(r.client_app, got + 9, dn - 9);
    assert_memory_equal(d, got, dn);
    rig_finish(&r);
    assert_int_equal(r.res.end, RELAY_STOPPED);
    assert_true(r.res.at_boundary);
}

static void test_relay_max_bytes(void **state)
{
    (void)state;
    rig r;
    rig_init(&r);
    r.opts.max_bytes = 10;
    rig_start(&r);
    unsigned char q[64], got[64];
    size_t qn = put_msg(q, 'Q', "select 12345;", 14);
    write_all(r.client_app, q, qn);
    read_exact(r.backend_app, got, qn);
    rig_finish(&r);
    assert_int_equal(r.res.end, RELAY_MAX_BYTES);
    assert_true(r.res.at_boundary);
}

static int tick_fn(void *arg, wp_error *err)
{
    rig *r = arg;
    if (++r->ticks < r->stop_after_ticks)
        return 0;
    wp_error_set(err, "28000", "revoked");
    return 1;
}

static void test_relay_tick_stops(void **state)
{
    (void)state;
    rig r;
    rig_init(&r);
    r.opts.tick_ms = 5;
    r.opts.tick = tick_fn;
    r.opts.tick_arg = &r;
    r.stop_after_ticks = 3;
    rig_start(&r);
    rig_finish(&r);
    assert_int_equal(r.res.end, RELAY_TICK_STOP);
    assert_int_equal(r.ticks, 3);
    assert_string_equal(r.res.tick_err.sqlstate, "28000");
}

/* A client that stops reading must not stop the timers: with the relay's write to it
 * blocked and the backend still sending, the tick still runs and ends the session. */
static void test_relay_tick_fires_while_client_write_blocked(void **state)
{
    (void)state;
    rig r;
    rig_init(&r);
    r.opts.tick_ms = 50;
    r.opts.tick = tick_fn;
    r.opts.tick_arg = &r;
    r.stop_after_ticks = 2;
    rig_start(&r);
    assert_int_equal(fcntl(r.backend_app, F_SETFL, O_NONBLOCK), 0);
    static unsigned char chunk[16384];
    memset(chunk, 'x', sizeof(chunk));
    int64_t deadline = wp_now_ms() + 5000;
    int ended = 0;
    while (!ended && wp_now_ms() < deadline) {
        ssize_t w = send(r.backend_app, chunk, sizeof(chunk), MSG_NOSIGNAL); /* never read */
        if (w < 0) {
            assert_true(errno == EAGAIN || errno == EPIPE || errno == ECONNRESET);
            struct pollfd p = {.fd = r.backend_app, .events = POLLOUT};
            (void)poll(&p, 1, 20);
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ended = pthread_timedjoin_np(r.thread, NULL, &ts) == 0;
    }
    if (!ended) { /* unblock the relay so the test can report instead of hanging */
        close(r.client_app);
        r.client_app = -1;
        pthread_join(r.thread, NULL);
    }
    assert_true(ended);
    assert_int_equal(r.res.end, RELAY_TICK_STOP);
    if (r.client_app >= 0)
        close(r.client_app);
    close(r.backend_app);
    close(r.stop[0]);
    close(r.stop[1]);
}

/* The stop hook plays a backend that is terminated: it sends a CommandComplete, then
 * its own termination FATAL, and closes. */
static int stop_hook(void *arg, relay_end why)
{
    rig *r = arg;
    r->stopped_for = why;
    unsigned char m[64];
    size_t n = put_msg(m, 'C', "INSERT 0 1", 11);
    n += put_msg(m + n, 'E', "SFATAL", 7);
    write_all(r->backend_app, m, n);
    shutdown(r->backend_app, SHUT_WR);
    return 1;
}

/* Ending by authority: the backend is stopped first (the hook runs before the relay
 * returns), its last whole messages reach the client, its own ErrorResponse does not,
 * and the stream is left on a boundary for the session's FATAL. */
static void test_relay_authority_end_stops_backend_first(void **state)
{
    (void)state;
    rig r;
    rig_init(&r);
    r.opts.stop_backend = stop_hook;
    r.opts.stop_arg = &r;
    rig_start(&r);
    close(r.stop[1]);
    r.stop[1] = -1;
    unsigned char want[32], got[32];
    size_t wn = put_msg(want, 'C', "INSERT 0 1", 11);
    read_exact(r.client_app, got, wn);
    assert_memory_equal(want, got, wn);
    rig_finish(&r);
    assert_int_equal(r.res.end, RELAY_STOPPED);
    assert_int_equal(r.stopped_for, RELAY_STOPPED);
    assert_true(r.res.backend_stopped);
    assert_true(r.res.at_boundary);
    assert_int_equal(r.res.bytes_out, wn); /* the backend's FATAL was not passed on */
}

/* An end the client caused is not an end by authority: no hook. */
static void test_relay_client_end_no_hook(void **state)
{
    (void)state;
    rig r;
    rig_init(&r);
    r.opts.stop_backend = stop_hook;
    r.opts.stop_arg = &r;
    r.opts.linger_ms = 50;
    rig_start(&r);
    shutdown(r.client_app, SHUT_WR);
    rig_finish(&r);
    assert_int_equal(r.res.end, RELAY_CLIENT_CLOSED);
    assert_int_equal(r.stopped_for, 0);
    assert_false(r.res.backend_stopped);
}

static void test_relay_linger_after_client_eof(void **state)
{
    (void)state;
    rig r;
    rig_init(&r);
    r.opts.linger_ms = 50;
    r.opts.backend_ready = 'I'; /* idle backend: it is given the EOF and waited for */
    rig_start(&r);
    shutdown(r.client_app, SHUT_WR); /* client vanishes without Terminate */
    expect_eof(r.backend_app);       /* the backend is told... */
    rig_finish(&r);                  /* ...and the relay gives up waiting for it */
    assert_int_equal(r.res.end, RELAY_CLIENT_CLOSED);
    assert_false(r.res.client_terminated);
}

/* A client that leaves while its backend is busy: the relay does not linger (60 s here,
 * past ctest's timeout) waiting for a backend that would only notice when it next
 * writes; it ends at once and says the backend was not idle, so the session stops it. */
static void vanish_while(const unsigned char *msgs, size_t n, int want_idle)
{
    rig r;
    rig_init(&r);
    r.opts.linger_ms = want_idle ? 50 : 60000;
    r.opts.backend_ready = 'I';
    rig_start(&r);
    unsigned char got[256];
    write_all(r.client_app, msgs, n);
    read_exact(r.backend_app, got, n);
    shutdown(r.client_app, SHUT_WR);
    rig_finish(&r);
    assert_int_equal(r.res.end, RELAY_CLIENT_CLOSED);
    assert_int_equal(r.res.backend_idle, want_idle);
    assert_false(r.res.backend_eof);
}

static void test_relay_client_leaves_busy_backend(void **state)
{
    (void)state;
    unsigned char m[256];
    static const char sleep60[] = "select pg_sleep(60)";
    size_t n = put_msg(m, 'Q', sleep60, sizeof(sleep60)); /* a running statement */
    vanish_while(m, n, 0);
    static const char parse[] = "\0select 1\0\0\0", bind[] = "\0\0\0\0\0\0\0\0",
                      exec[] = "\0\0\0\0\0";
    n = put_msg(m, 'P', parse, sizeof(parse) - 1); /* Parse, Bind, Execute, no Sync */
    n += put_msg(m + n, 'B', bind, sizeof(bind) - 1);
    n += put_msg(m + n, 'E', exec, sizeof(exec) - 1);
    vanish_while(m, n, 0);
    n = put_msg(m, 'X', "", 0); /* idle: only a Terminate after the ReadyForQuery */
    vanish_while(m, n, 1);
}

/* ReadyForQuery followed by a notification in the same read: still idle. */
static void test_relay_idle_after_async(void **state)
{
    (void)state;
    rig r;
    rig_init(&r);
    r.opts.linger_ms = 50;
    rig_start(&r);
    unsigned char q[64], b[64], got[64];
    size_t qn = put_msg(q, 'Q', "listen x", 9);
    write_all(r.client_app, q, qn);
    read_exact(r.backend_app, got, qn);
    size_t bn = put_msg(b, 'Z', "I", 1);
    static const char notify[] = "\0\0\0\1x\0\0";
    bn += put_msg(b + bn, 'A', notify, sizeof(notify) - 1);
    write_all(r.backend_app, b, bn);
    read_exact(r.client_app, got, bn);
    shutdown(r.client_app, SHUT_WR);
    expect_eof(r.backend_app); /* idle: given the EOF, not abandoned */
    rig_finish(&r);
    assert_true(r.res.backend_idle);
}

typedef struct bulk {
    int fd;
    size_t n;
    unsigned char *data;
} bulk;

static void *bulk_writer(void *p)
{
    bulk *b = p;
    write_all(b->fd, b->data, b->n);
    return NULL;
}

static void *bulk_reader(void *p)
{
    bulk *b = p;
    read_exact(b->fd, b->data, b->n);
    return NULL;
}

static void test_relay_bulk_both_directions(void **state)
{
    (void)state;
    rig r;
    rig_init(&r);
    rig_start(&r);
    const size_t n = 3 * 1024 * 1024 + 17;
    bulk up = {r.client_app, n, malloc(n)}, down = {r.backend_app, n, malloc(n)};
    unsigned char *got_up = malloc(n), *got_down = malloc(n);
    assert_non_null(up.data);
    assert_non_null(down.data);
    assert_non_null(got_up);
    assert_non_null(got_down);
    for (size_t i = 0; i < n; i++) {
        up.data[i] = (unsigned char)(i * 7);
        down.data[i] = (unsigned char)(i * 13 + 1);
    }
    /* All four ends move at once: the relay must never wait on one direction while the
     * other is stuck behind it. */
    bulk rup = {r.backend_app, n, got_up}, rdown = {r.client_app, n, got_down};
    pthread_t t[4];
    pthread_create(&t[0], NULL, bulk_writer, &up);
    pthread_create(&t[1], NULL, bulk_writer, &down);
    pthread_create(&t[2], NULL, bulk_reader, &rup);
    pthread_create(&t[3], NULL, bulk_reader, &rdown);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    assert_memory_equal(up.data, got_up, n);
    assert_memory_equal(down.data, got_down, n);
    close(r.backend_app);
    r.backend_app = open("/dev/null", 0);
    rig_finish(&r);
    assert_int_equal(r.res.bytes_in, n);
    assert_int_equal(r.res.bytes_out, n);
    free(up.data);
    free(down.data);
    free(got_up);
    free(got_down);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_framer_bytewise),
        cmocka_unit_test(test_framer_max_read),
        cmocka_unit_test(test_framer_broken_length),
        cmocka_unit_test(test_relay_both_ways_and_terminate),
        cmocka_unit_test(test_relay_backend_closes),
        cmocka_unit_test(test_relay_stop_finishes_message),
        cmocka_unit_test(test_relay_max_bytes),
        cmocka_unit_test(test_relay_tick_stops),
        cmocka_unit_test(test_relay_tick_fires_while_client_write_blocked),
        cmocka_unit_test(test_relay_authority_end_stops_backend_first),
        cmocka_unit_test(test_relay_client_end_no_hook),
        cmocka_unit_test(test_relay_linger_after_client_eof),
        cmocka_unit_test(test_relay_client_leaves_busy_backend),
        cmocka_unit_test(test_relay_idle_after_async),
        cmocka_unit_test(test_relay_bulk_both_directions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
