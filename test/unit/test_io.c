/*
 * io: deadline behaviour of the plain-socket helpers over a socketpair.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "io.h"

/* Watchdog, not synchronisation: a helper that ignores its deadline would block forever. */
static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "test_io: call blocked past its deadline\n";
    ssize_t w = write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)w;
    _exit(1);
}

static void test_write_all_honours_deadline(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    /* The peer never reads: once both buffers are full, only the deadline can end this. */
    size_t n = 64u << 20;
    char *buf = calloc(1, n);
    assert_non_null(buf);
    wp_io io;
    io_plain_init(&io, sv[0]);
    signal(SIGALRM, on_alarm);
    alarm(10);
    int64_t start = wp_now_ms();
    wp_status st = io_write_all(&io, buf, n, start + 200);
    alarm(0);
    assert_int_equal(st, WP_ERR_TIMEOUT);
    assert_true(wp_now_ms() - start >= 200);
    free(buf);
    close(sv[0]);
    close(sv[1]);
}

static void test_read_full_deadline_and_eof(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    wp_io io;
    io_plain_init(&io, sv[0]);
    char buf[8];
    assert_int_equal(io_read_full(&io, buf, sizeof(buf), wp_now_ms() + 50), WP_ERR_TIMEOUT);
    assert_int_equal(write(sv[1], "abcd", 4), 4);
    close(sv[1]);
    assert_int_equal(io_read_full(&io, buf, sizeof(buf), wp_now_ms() + 1000), WP_ERR_CLOSED);
    close(sv[0]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_all_honours_deadline),
        cmocka_unit_test(test_read_full_deadline_and_eof),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
