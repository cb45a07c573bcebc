/*
 * provision's pure half: dialect choices, group names and records, record parsing, the
 * SQL text per preset and dialect, and the in-process keyed lock (threads).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "prov_internal.h"

static void test_dialect_choices(void **state)
{
    (void)state;
    assert_int_equal(prov_dialect_from_version("PostgreSQL 15.18 (Debian 15.18-0+deb12u1)"),
                     PROV_DIALECT_POSTGRES);
    assert_int_equal(prov_dialect_from_version("CockroachDB CCL v24.3.1 (x86_64-pc-linux-gnu)"),
                     PROV_DIALECT_COCKROACH);
    assert_int_equal(prov_dialect_from_version(NULL), PROV_DIALECT_POSTGRES);
    assert_int_equal(prov_lock_strategy(PROV_DIALECT_POSTGRES), PROV_LOCK_ADVISORY);
    assert_int_equal(prov_lock_strategy(PROV_DIALECT_COCKROACH), PROV_LOCK_TABLE);
    assert_int_equal(prov_record_strategy(PROV_DIALECT_POSTGRES), PROV_RECORD_COMMENT);
    assert_int_equal(prov_record_strategy(PROV_DIALECT_COCKROACH), PROV_RECORD_TABLE);
    assert_true(prov_cleanup_supported(PROV_DIALECT_POSTGRES));
    assert_false(prov_cleanup_supported(PROV_DIALECT_COCKROACH));
    assert_int_equal(prov_serialization_retries(PROV_DIALECT_POSTGRES), 0);
    assert_true(prov_serialization_retries(PROV_DIALECT_COCKROACH) > 0);
    assert_non_null(strstr(prov_sql_lock(PROV_DIALECT_POSTGRES), "pg_advisory_lock"));
    assert_non_null(strstr(prov_sql_unlock(PROV_DIALECT_POSTGRES), "pg_advisory_unlock"));
    assert_non_null(strstr(prov_sql_lock(PROV_DIALECT_COCKROACH), "FOR UPDATE"));
    assert_string_equal(prov_sql_unlock(PROV_DIALECT_COCKROACH), "COMMIT");
}

static void test_pwenc_and_sslmode(void **state)
{
    (void)state;
    assert_true(prov_pwenc_is_md5("md5"));
    assert_false(prov_pwenc_is_md5("scram-sha-256"));
    assert_false(prov_pwenc_is_md5(""));
    assert_false(prov_pwenc_is_md5(NULL));
    assert_string_equal(prov_sslmode(CFG_BTLS_DISABLE), "disable");
    assert_string_equal(prov_sslmode(CFG_BTLS_PREFER), "prefer");
    assert_string_equal(prov_sslmode(CFG_BTLS_REQUIRE), "require");
    assert_string_equal(prov_sslmode(CFG_BTLS_VERIFY_FULL), "verify-full");
}

static void test_group_name(void **state)
{
    (void)state;
    char a[ID_ROLE_MAX + 1], b[ID_ROLE_MAX + 1], c[ID_ROLE_MAX + 1];
    assert_int_equal(prov_group_name("wp_", "appdb", "public", GRANT_PRESET_READONLY, a), 0);
    assert_int_equal(strncmp(a, "wp_g_", 5), 0);
    assert_int_equal(strlen(a), strlen("wp_g_") + 10 + strlen("_readonly"));
    assert_string_equal(a + strlen(a) - 9, "_readonly");
    assert_int_equal(prov_group_name("wp_", "appdb", "public", GRANT_PRESET_READONLY, b), 0);
    assert_string_equal(a, b); /* deterministic */
    assert_int_equal(prov_group_name("wp_", "appdb", "public", GRANT_PRESET_ADMIN, b), 0);
    assert_int_equal(strncmp(a, b, 15), 0); /* same hash, other preset */
    assert_string_not_equal(a, b);
    /* The separator keeps (db, schema) splits apart. */
    assert_int_equal(prov_group_name("wp_", "a b", "c", GRANT_PRESET_READONLY, b), 0);
    assert_int_equal(prov_group_name("wp_", "a", "b c", GRANT_PRESET_READONLY, c), 0);
    assert_string_not_equal(b, c);
    assert_int_equal(prov_group_name("wp_", "otherdb", "public", GRANT_PRESET_READONLY, b), 0);
    assert_string_not_equal(a, b);
    char longp[80];
    memset(longp, 'p', sizeof longp - 1);
    longp[sizeof longp - 1] = '\0';
    assert_int_equal(prov_group_name(longp, "appdb", "public", GRANT_PRESET_READWRITE, c), 0);
    assert_true(strlen(c) <= ID_ROLE_MAX);
    assert_string_equal(c + strlen(c) - 10, "_readwrite");
    assert_int_equal(prov_group_name("wp_", "appdb", "public", GRANT_PRESET_NONE, c), -1);
}

static void test_orphans_name(void **state)
{
    (void)state;
    char o[ID_ROLE_MAX + 1];
    prov_orphans_name("wp_", o);
    assert_string_equal(o, "wp_orphans");
    char longp[80];
    memset(longp, 'p', sizeof longp - 1);
    longp[sizeof longp - 1] = '\0';
    prov_orphans_name(longp, o);
    assert_int_equal(strlen(o), ID_ROLE_MAX);
    assert_string_equal(o + ID_ROLE_MAX - 7, "orphans");
    /* Never a role or group record: cleanup and reconcile leave it alone. */
    assert_false(prov_record_is_role(PROV_ORPHANS_RECORD));
    assert_false(prov_record_is_group(PROV_ORPHANS_RECORD));
}

static void test_group_record(void **state)
{
    (void)state;
    char *r = prov_group_record("app db", "we'ird=", GRANT_PRESET_ADMIN);
    assert_non_null(r);
    assert_string_equal(r, "waypoint:v1 group db=app%20db schema=we%27ird%3D preset=admin");
    assert_true(prov_record_is_group(r));
    assert_false(prov_record_is_role(r));
    free(r);
}

static void test_record_database(void **state)
{
    (void)state;
    char db[64];
    const char *rec = "waypoint:v1 login=a@b.c node=nX db=app%20db%3D scope=full";
    assert_true(prov_record_is_role(rec));
    assert_false(prov_record_is_group(rec));
    assert_int_equal(prov_record_database(rec, db, sizeof db), 0);
    assert_string_equal(db, "app db=");
    assert_int_equal(
        prov_record_database("waypoint:v1 login=a node=n db=x scope=readonly", db, sizeof db), 0);
    assert_string_equal(db, "x");
    /* Not a role record, no db, truncated escape, NUL byte, too small a buffer. */
    assert_int_equal(
        prov_record_database("waypoint:v1 group db=x schema=s preset=admin", db, sizeof db), -1);
    assert_int_equal(prov_record_database("waypoint:v1 login=a node=n scope=full", db, sizeof db),
                     -1);
    assert_int_equal(
        prov_record_database("waypoint:v1 login=a node=n db=ab%2 scope=full", db, sizeof db), -1);
    assert_int_equal(
        prov_record_database("waypoint:v1 login=a node=n db=a%00 scope=full", db, sizeof db), -1);
    assert_int_equal(prov_record_database(rec, db, 4), -1);
    assert_int_equal(prov_record_database(NULL, db, sizeof db), -1);
    assert_false(prov_record_is_role("not waypoint"));
    assert_false(prov_record_is_role(NULL));
}

static void test_group_privileges_sql(void **state)
{
    (void)state;
    char *ro = prov_sql_group_privileges(GRANT_PRESET_READONLY, "\"s\"", "\"g\"", "\"d\"",
                                         "\"s\".\"t1\", \"s\".\"t2\"", "\"s\".\"q\"");
    char *rw = prov_sql_group_privileges(GRANT_PRESET_READWRITE, "\"s\"", "\"g\"", "\"d\"",
                                         "\"s\".\"t1\"", "\"s\".\"q\"");
    char *ad = prov_sql_group_privileges(GRANT_PRESET_ADMIN, "\"s\"", "\"g\"", "\"d\"", "", NULL);
    assert_non_null(ro);
    assert_non_null(rw);
    assert_non_null(ad);
    assert_non_null(strstr(ro, "GRANT CONNECT ON DATABASE \"d\" TO \"g\""));
    assert_non_null(strstr(ro, "GRANT USAGE ON SCHEMA \"s\" TO \"g\""));
    assert_non_null(strstr(ro, "GRANT SELECT ON TABLE \"s\".\"t1\", \"s\".\"t2\" TO \"g\""));
    assert_non_null(strstr(ro, "GRANT SELECT ON SEQUENCE \"s\".\"q\" TO \"g\""));
    assert_non_null(strstr(ro, "ALTER DEFAULT PRIVILEGES IN SCHEMA \"s\" GRANT SELECT ON TABLES"));
    assert_null(strstr(ro, "INSERT"));
    assert_null(strstr(ro, "CREATE"));
    assert_null(strstr(ro, "ALL PRIVILEGES"));
    assert_non_null(strstr(rw, "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE \"s\".\"t1\""));
    assert_non_null(strstr(rw, "GRANT SELECT, USAGE ON SEQUENCE \"s\".\"q\""));
    assert_null(strstr(rw, "CREATE"));
    assert_null(strstr(rw, "TRUNCATE"));
    assert_non_null(strstr(ad, "GRANT USAGE, CREATE ON SCHEMA \"s\""));
    assert_null(strstr(ad, "ON TABLE ")); /* nothing to grant on yet */
    assert_null(strstr(ad, "ON SEQUENCE "));
    assert_non_null(strstr(ad, "ALTER DEFAULT PRIVILEGES IN SCHEMA \"s\" GRANT ALL PRIVILEGES "
                               "ON TABLES TO \"g\""));
    assert_null(prov_sql_group_privileges(GRANT_PRESET_NONE, "s", "g", "d", "", ""));
    free(ro);
    free(rw);
    free(ad);
}

static void test_role_state_sql(void **state)
{
    (void)state;
    char *pg = prov_sql_role_state(PROV_DIALECT_POSTGRES, NULL, false);
    assert_non_null(pg);
    /* The record read as a subquery the planner folds in, not through shobj_description. */
    assert_non_null(
        strstr(pg, "d.objoid = r.oid AND d.classoid = 'pg_catalog.pg_authid'::regclass"));
    assert_null(strstr(pg, "shobj_description"));
    assert_non_null(strstr(pg, "c.oid > s.w::oid")); /* watermark: no per-table scan */
    assert_non_null(strstr(pg, "FROM pg_shdepend d"));
    assert_non_null(strstr(pg, "max(oid)::int8 FROM pg_class"));
    assert_null(strstr(pg, "@RECORDS@"));
    assert_null(strstr(pg, "@MEMBERFIX@"));
    assert_null(strstr(pg, "set_option")); /* no such column before PostgreSQL 16 */
    free(pg);
    pg = prov_sql_role_state(PROV_DIALECT_POSTGRES, NULL, true);
    assert_non_null(pg);
    assert_non_null(strstr(pg, "m.set_option OR NOT m.inherit_option OR m.admin_option"));
    free(pg);
    /* Membership options from PostgreSQL 16 on, never on CockroachDB. */
    assert_false(prov_member_options(PROV_DIALECT_POSTGRES, 150013));
    assert_true(prov_member_options(PROV_DIALECT_POSTGRES, 160000));
    assert_true(prov_member_options(PROV_DIALECT_POSTGRES, 180006));
    assert_false(prov_member_options(PROV_DIALECT_COCKROACH, 160000));
    assert_string_equal(prov_sql_member_options(true),
                        " WITH INHERIT TRUE, SET FALSE, ADMIN FALSE");
    assert_string_equal(prov_sql_member_options(false), "");
    /* The reuse form: same columns and parameters, without the owned objects and the
     * fingerprint (provisioning alone reads them). */
    char *ru = prov_sql_reuse_state(PROV_DIALECT_POSTGRES, NULL, true);
    assert_non_null(ru);
    assert_non_null(strstr(ru, "c.oid > s.w::oid"));
    assert_non_null(strstr(ru, "m.set_option OR NOT m.inherit_option OR m.admin_option"));
    assert_non_null(strstr(ru, "$2::float8"));
    assert_non_null(strstr(ru, "json_to_recordset($3::json)"));
    assert_null(strstr(ru, "pg_shdepend"));
    assert_null(strstr(ru, "max(oid)::int8")); /* the fingerprint; the range bound stays */
    assert_non_null(strstr(ru, "c.oid <= (SELECT max(oid) FROM pg_class)"));
    free(ru);
    char *cr = prov_sql_role_state(PROV_DIALECT_COCKROACH, "\"admin\".public.waypoint_roles", true);
    assert_non_null(cr);
    assert_null(strstr(cr, "@RECORDS@"));
    assert_null(strstr(cr, "shobj_description"));
    assert_non_null(strstr(cr, "FROM \"admin\".public.waypoint_roles w WHERE"));
    free(cr);
    assert_null(prov_sql_role_state(PROV_DIALECT_COCKROACH, NULL, false));
}

static void test_ownership_sql(void **state)
{
    (void)state;
    char *pg = prov_sql_role_state(PROV_DIALECT_POSTGRES, NULL, false);
    assert_non_null(pg);
    /* Owned schemas by the role's OID (pg_shdepend's reference index), temp schemas out. */
    assert_non_null(strstr(pg, "d.refclassid = 'pg_catalog.pg_authid'::regclass AND "
                               "d.refobjid = r.oid AND d.deptype = 'o'"));
    assert_non_null(strstr(pg, "NOT LIKE 'pg\\_temp\\_%'"));
    free(pg);
    assert_non_null(strstr(PROV_SQL_OWNED_OBJECTS, "NOT has_schema_privilege(r.oid, n.oid, "
                                                   "'CREATE')"));
    assert_string_equal(prov_owner_keyword("table"), "TABLE");
    assert_string_equal(prov_owner_keyword("materialized view"), "MATERIALIZED VIEW");
    assert_string_equal(prov_owner_keyword("function"), "ROUTINE");
    assert_string_equal(prov_owner_keyword("aggregate"), "ROUTINE");
    assert_string_equal(prov_owner_keyword("statistics object"), "STATISTICS");
    assert_null(prov_owner_keyword("large object"));
    assert_null(prov_owner_keyword("table; DROP"));
    assert_null(prov_owner_keyword(NULL));
}

/* Keyed lock: 8 threads x 2000 increments of one counter under one key stay exact, and
 * another key is independent (taken while the first is held). */
static prov_keylocks KL;
static long counter;

static void *kl_worker(void *arg)
{
    (void)arg;
    for (int i = 0; i < 2000; i++) {
        prov_keylock *e = prov_keylock_lock(&KL, "r:role");
        long v = counter;
        sched_yield();
        counter = v + 1;
        prov_keylock_unlock(&KL, e);
    }
    return NULL;
}

static void test_keylock(void **state)
{
    (void)state;
    assert_int_equal(prov_keylocks_init(&KL), 0);
    prov_keylock *a = prov_keylock_lock(&KL, "r:a");
    prov_keylock *b = prov_keylock_lock(&KL, "r:b");
    assert_non_null(a);
    assert_non_null(b);
    prov_keylock_unlock(&KL, a);
    prov_keylock_unlock(&KL, b);
    assert_null(KL.head); /* entries live only while used */
    pthread_t th[8];
    for (int i = 0; i < 8; i++)
        assert_int_equal(pthread_create(&th[i], NULL, kl_worker, NULL), 0);
    for (int i = 0; i < 8; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(counter, 8 * 2000);
    assert_null(KL.head);
    prov_keylocks_destroy(&KL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dialect_choices),      cmocka_unit_test(test_pwenc_and_sslmode),
        cmocka_unit_test(test_group_name),           cmocka_unit_test(test_group_record),
        cmocka_unit_test(test_orphans_name),         cmocka_unit_test(test_record_database),
        cmocka_unit_test(test_group_privileges_sql), cmocka_unit_test(test_role_state_sql),
        cmocka_unit_test(test_ownership_sql),        cmocka_unit_test(test_keylock),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
