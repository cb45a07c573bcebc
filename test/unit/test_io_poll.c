/*
 * io: deadline handling of the wp_io helpers.
 *
 * poll() is replaced in this binary (the library is static, so io.c's calls resolve to
 * the definition below): it can pretend a poll slice timed out without anyone waiting
 * for it, which is how a deadline far in the future is tested in milliseconds.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "io.h"

/* Scripted poll: the first `timeouts` calls report a timeout; later calls report the fd
 * readable. */
static int timeouts, calls, last_timeout;

int poll(struct pollfd *fds, nfds_t n, int timeout)
{
    calls++;
    last_timeout = timeout;
    if (calls <= timeouts)
        return 0;
    for (nfds_t i = 0; i < n; i++)
        fds[i].revents = POLLIN;
    return 1;
}

static void script_poll(int t)
{
    timeouts = t;
    calls = 0;
}

/* A deadline beyond the longest single poll (about 16 minutes): a poll slice that ends
 * before the deadline is not the deadline. */
static void test_long_deadline_outlasts_poll_slice(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    wp_io io;
    io_plain_init(&io, sv[1]);
    script_poll(1);
    assert_int_equal(io_wait_readable(&io, wp_now_ms() + 3600 * 1000), WP_OK);
    assert_int_equal(calls, 2);
    close(sv[0]);
    close(sv[1]);
}

static void test_deadline_passed_times_out(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    wp_io io;
    io_plain_init(&io, sv[1]);
    script_poll(INT_MAX); /* never readable */
    assert_int_equal(io_wait_readable(&io, wp_now_ms() + 50), WP_ERR_TIMEOUT);
    assert_true(last_timeout >= 0 && last_timeout <= 50);
    script_poll(INT_MAX); /* never readable */
    assert_int_equal(io_wait_readable(&io, wp_now_ms() - 1), WP_ERR_TIMEOUT);
    assert_int_equal(calls, 0); /* already past: no poll at all */
    close(sv[0]);
    close(sv[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_long_deadline_outlasts_poll_slice),
        cmocka_unit_test(test_deadline_passed_times_out),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
