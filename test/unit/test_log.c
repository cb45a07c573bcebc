/*
 * log: value quoting and the one-line-per-event output.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

static void test_quote(void **state)
{
    (void)state;
    char buf[64];
    assert_string_equal(log_quote(buf, sizeof(buf), "plain"), "plain");
    assert_string_equal(log_quote(buf, sizeof(buf), ""), "\"\"");
    assert_string_equal(log_quote(buf, sizeof(buf), "a b=\"c\"\n"), "\"a b=\\\"c\\\"\\x0a\"");
}

/* "Truncates safely" must hold for every size, including ones too small for "". */
static void test_quote_tiny_buffers(void **state)
{
    (void)state;
    for (unsigned long n = 1; n <= 8; n++) {
        char *buf = malloc(n); /* exact size, so ASan sees any byte past it */
        assert_non_null(buf);
        log_quote(buf, n, "needs quoting");
        assert_true(strlen(buf) < n);
        log_quote(buf, n, "plain");
        assert_true(strlen(buf) < n);
        free(buf);
    }
}

static void test_kv_line(void **state)
{
    (void)state;
    int p[2];
    assert_int_equal(pipe(p), 0);
    log_set_fd(p[1]);
    log_kv(WP_LOG_INFO, "conn_end", "user", "alice@example.com", "why", "x\ny", (char *)NULL);
    log_set_fd(-1);
    char line[512];
    ssize_t n = read(p[0], line, sizeof(line) - 1);
    assert_true(n > 0);
    line[n] = '\0';
    assert_non_null(strstr(line, " event=conn_end user=alice@example.com why=\"x\\x0ay\"\n"));
    assert_ptr_equal(strchr(line, '\n'), line + n - 1);
    close(p[0]);
    close(p[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quote),
        cmocka_unit_test(test_quote_tiny_buffers),
        cmocka_unit_test(test_kv_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
