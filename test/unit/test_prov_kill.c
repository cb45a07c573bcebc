/*
 * prov_kill's pure half: the statements that end one backend session, per dialect and
 * server version, and the lock-out statement. The PostgreSQL path runs for real in
 * test/e2e/test_revoke_stop.sh; there is no CockroachDB server here, so its statements
 * are checked for the properties that matter: one session only (by client address, as
 * CockroachDB has no pids), and only the caller role's.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "prov_internal.h"

static void assert_has(const char *sql, const char *part)
{
    if (!strstr(sql, part))
        fail_msg("'%s' not in: %s", part, sql);
}

static void test_postgres_14_waits_in_the_server(void **state)
{
    (void)state;
    prov_kill_sql q;
    prov_kill_sql_for(PROV_DIALECT_POSTGRES, 150018, &q);
    assert_int_equal(q.terminate_nparams, 3);
    assert_has(q.terminate, "pg_terminate_backend(pid, $3::bigint)");
    assert_has(q.terminate, "pid = $1::int");
    assert_has(q.terminate, "usename = $2"); /* a reused pid of another role is left alone */
    assert_has(q.alive, "pg_stat_activity");
    assert_has(q.alive, "pid = $1::int");
    assert_has(q.alive, "usename = $2");
}

static void test_postgres_13_is_polled(void **state)
{
    (void)state;
    prov_kill_sql q;
    prov_kill_sql_for(PROV_DIALECT_POSTGRES, 130020, &q);
    assert_int_equal(q.terminate_nparams, 2); /* no timeout argument before 14 */
    assert_has(q.terminate, "pg_terminate_backend(pid)");
    assert_null(strstr(q.terminate, "$3"));
    assert_has(q.terminate, "usename = $2");
}

static void test_cockroach_by_client_address(void **state)
{
    (void)state;
    prov_kill_sql q;
    prov_kill_sql_for(PROV_DIALECT_COCKROACH, 0, &q);
    assert_int_equal(q.terminate_nparams, 2);
    assert_null(strstr(q.terminate, "pg_terminate_backend"));
    assert_has(q.terminate, "CANCEL SESSIONS");
    assert_has(q.terminate, "client_address = $1");
    assert_has(q.terminate, "user_name = $2");
    assert_has(q.alive, "SHOW CLUSTER SESSIONS");
    assert_has(q.alive, "client_address = $1");
    assert_has(q.alive, "user_name = $2");
}

static void test_nologin(void **state)
{
    (void)state;
    char *sql = prov_sql_nologin("\"wp_alice_laptop_appdb\"");
    assert_non_null(sql);
    assert_string_equal(sql, "ALTER ROLE \"wp_alice_laptop_appdb\" NOLOGIN");
    free(sql);
}

static void test_password_null(void **state)
{
    (void)state;
    char *sql = prov_sql_password_null("\"wp_alice_laptop_appdb\"");
    assert_non_null(sql);
    assert_string_equal(sql, "ALTER ROLE \"wp_alice_laptop_appdb\" PASSWORD NULL");
    free(sql);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_postgres_14_waits_in_the_server),
        cmocka_unit_test(test_postgres_13_is_polled),
        cmocka_unit_test(test_cockroach_by_client_address),
        cmocka_unit_test(test_nologin),
        cmocka_unit_test(test_password_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
