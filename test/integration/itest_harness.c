/*
 * The harness itself: a throwaway cluster per pg_hba method, and a libpq login as the
 * admin role through each one. A wrong password must fail where the method checks it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pgcluster.h"

static void login_with(const char *auth, const char *pwenc)
{
    pgc_cluster c;
    assert_int_equal(pgc_start(&c, auth, pwenc, NULL), 0);
    PGconn *conn = pgc_connect_admin(&c, c.test_db);
    assert_non_null(conn);
    PGresult *r = PQexec(conn, "SELECT current_user, current_setting('password_encryption')");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    assert_string_equal(PQgetvalue(r, 0, 0), c.admin_user);
    assert_string_equal(PQgetvalue(r, 0, 1), pwenc);
    PQclear(r);
    PQfinish(conn);

    char state[6];
    PGconn *bad = pgc_connect_as(&c, c.test_db, c.admin_user, "wrong-password", state);
    if (strcmp(auth, "trust") == 0) {
        assert_non_null(bad); /* trust ignores the password */
        PQfinish(bad);
    } else {
        assert_null(bad);
        assert_string_equal(state, "28P01");
    }
    pgc_stop(&c);
}

static void test_trust(void **state)
{
    (void)state;
    login_with("trust", "scram-sha-256");
}

static void test_password(void **state)
{
    (void)state;
    login_with("password", "scram-sha-256");
}

static void test_md5(void **state)
{
    (void)state;
    login_with("md5", "md5");
}

static void test_scram(void **state)
{
    (void)state;
    login_with("scram-sha-256", "scram-sha-256");
}

/* A start that fails after the server came up (here: the setup SQL is refused) must not
 * leave that server running: nothing would ever stop it. */
static void test_failed_start_leaves_no_server(void **state)
{
    (void)state;
    char root[] = "/tmp/wp-itest.XXXXXX";
    assert_non_null(mkdtemp(root));
    char cmd[1024], pidfile[512];
    snprintf(cmd, sizeof(cmd),
             "'%s/test/support/pgcluster.sh' start '%s/pg' "
             "--set 'default_transaction_read_only = on' >/dev/null 2>&1",
             WP_SOURCE_DIR, root);
    int rc = system(cmd);
    snprintf(pidfile, sizeof(pidfile), "%s/pg/data/postmaster.pid", root);
    int running = access(pidfile, F_OK) == 0;
    snprintf(cmd, sizeof(cmd), "'%s/test/support/pgcluster.sh' stop '%s/pg'; rm -rf '%s'",
             WP_SOURCE_DIR, root, root);
    assert_int_equal(system(cmd), 0);
    assert_int_not_equal(rc, 0);
    assert_false(running);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trust),
        cmocka_unit_test(test_password),
        cmocka_unit_test(test_md5),
        cmocka_unit_test(test_scram),
        cmocka_unit_test(test_failed_start_leaves_no_server),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
