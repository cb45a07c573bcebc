/*
 * rawsql against a real PostgreSQL cluster. apply() mimics the session path: render,
 * validate, and only then run the one statement through the extended protocol
 * (PQexecParams, no parameters) as the admin role. Allowed templates must take effect;
 * every hostile template must be refused with the database unchanged, judged by a
 * snapshot of roles, memberships, ACLs and default ACLs. To show the snapshot would
 * notice, some hostile templates are also run ungated inside a rolled-back transaction
 * and must change it there.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgcluster.h"
#include "rawsql.h"

static pgc_cluster cluster;
static PGconn *admin;

#define ODD_ROLE "x\" TO rawsql_bob; --"

static const char *const setup_sql[] = {
    "CREATE ROLE rawsql_r NOLOGIN",
    "CREATE ROLE rawsql_bob NOLOGIN",
    "CREATE ROLE x NOLOGIN",
    "CREATE ROLE \"x\"\" TO rawsql_bob; --\" NOLOGIN",
    "CREATE TABLE public.audit_log (id int)",
    "CREATE TABLE public.t (id int)",
    "CREATE TABLE public.odd_target (id int)",
    "CREATE SCHEMA reporting",
    "CREATE TABLE reporting.daily (id int)",
};

/* Everything a hostile grant could change, as one text value. GRANT SET/ALTER SYSTEM ON
 * PARAMETER (pg_parameter_acl) exists from PostgreSQL 15 on. */
#define PARAMETER_ACL_SQL                                                                          \
    "(SELECT string_agg(parname || '=' || coalesce(paracl::text, '-'), ',' ORDER BY"               \
    "   parname) FROM pg_parameter_acl)"
#define SNAPSHOT_SQL(PARAMS)                                                                       \
    "SELECT concat_ws(E'\\n',"                                                                     \
    " (SELECT string_agg(rolname || ':' || rolsuper || rolcreaterole || rolcreatedb ||"            \
    "   rolcanlogin || rolbypassrls || rolinherit, ',' ORDER BY rolname) FROM pg_roles),"          \
    " (SELECT string_agg(roleid::regrole || '>' || member::regrole || admin_option, ','"           \
    "   ORDER BY 1) FROM pg_auth_members),"                                                        \
    " (SELECT string_agg(oid::regclass || '=' || coalesce(relacl::text, '-'), ',' ORDER BY"        \
    "   oid) FROM pg_class WHERE relnamespace NOT IN ('pg_catalog'::regnamespace,"                 \
    "   'information_schema'::regnamespace, 'pg_toast'::regnamespace)),"                           \
    " (SELECT string_agg(nspname || '=' || coalesce(nspacl::text, '-'), ',' ORDER BY"              \
    "   nspname) FROM pg_namespace),"                                                              \
    " (SELECT string_agg(datname || '=' || coalesce(datacl::text, '-'), ',' ORDER BY"              \
    "   datname) FROM pg_database),"                                                               \
    " (SELECT string_agg(lanname || '=' || coalesce(lanacl::text, '-'), ',' ORDER BY"              \
    "   lanname) FROM pg_language),"                                                               \
    " (SELECT string_agg(defaclrole::regrole || '/' || defaclnamespace || '/' ||"                  \
    "   defaclobjtype::text || '=' || defaclacl::text, ',' ORDER BY 1) FROM pg_default_acl),"      \
    " " PARAMS ","                                                                                 \
    " (SELECT count(*)::text FROM pg_proc))"

static char *snapshot(void)
{
    PGresult *r =
        PQexec(admin, cluster.major >= 15 ? SNAPSHOT_SQL(PARAMETER_ACL_SQL) : SNAPSHOT_SQL("''"));
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("snapshot: %s", PQerrorMessage(admin));
    char *s = strdup(PQgetvalue(r, 0, 0));
    assert_non_null(s);
    PQclear(r);
    return s;
}

static int group_setup(void **state)
{
    (void)state;
    if (pgc_start(&cluster, "scram-sha-256", "scram-sha-256", NULL) != 0)
        return -1;
    admin = pgc_connect_admin(&cluster, cluster.test_db);
    if (!admin)
        return -1;
    for (size_t i = 0; i < sizeof(setup_sql) / sizeof(setup_sql[0]); i++)
        if (pgc_exec(admin, setup_sql[i]) != 0)
            return -1;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    PQfinish(admin);
    pgc_stop(&cluster);
    return 0;
}

/* The session path: render, validate, execute one statement (extended protocol). */
static wp_status apply(const char *tmpl, const char *role, wp_error *err)
{
    char *sql = NULL;
    wp_error_clear(err);
    wp_status st = rawsql_render(tmpl, role, cluster.test_db, "alice@example.com", &sql, err);
    if (st != WP_OK)
        return st;
    st = rawsql_validate(sql, role, err);
    if (st == WP_OK) {
        PGresult *r = PQexecParams(admin, sql, 0, NULL, NULL, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            wp_error_set(err, "XX000", "exec: %s", PQerrorMessage(admin));
            st = WP_ERR_BACKEND;
        }
        PQclear(r);
    }
    free(sql);
    return st;
}

static int query_bool(const char *sql, const char *arg)
{
    const char *params[1] = {arg};
    PGresult *r = PQexecParams(admin, sql, arg ? 1 : 0, NULL, arg ? params : NULL, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    int v = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    return v;
}

static void test_allowed_grants_take_effect(void **state)
{
    (void)state;
    wp_error err;
    const char *has_insert = "SELECT has_table_privilege('rawsql_r', 'public.audit_log', "
                             "'INSERT')";
    assert_false(query_bool(has_insert, NULL));
    assert_int_equal(apply("GRANT INSERT ON public.audit_log TO {{.Role}}", "rawsql_r", &err),
                     WP_OK);
    assert_true(query_bool(has_insert, NULL));

    assert_int_equal(apply("GRANT USAGE ON SCHEMA reporting TO {{ .Role }}", "rawsql_r", &err),
                     WP_OK);
    assert_int_equal(
        apply("GRANT SELECT ON ALL TABLES IN SCHEMA reporting TO {{.Role}}", "rawsql_r", &err),
        WP_OK);
    assert_true(
        query_bool("SELECT has_table_privilege('rawsql_r', 'reporting.daily', 'SELECT')", NULL));

    /* Default privileges: a table the admin creates later is readable by the role. */
    assert_int_equal(apply("ALTER DEFAULT PRIVILEGES IN SCHEMA reporting GRANT SELECT ON "
                           "TABLES TO {{.Role}}",
                           "rawsql_r", &err),
                     WP_OK);
    assert_int_equal(pgc_exec(admin, "CREATE TABLE reporting.later (id int)"), 0);
    assert_true(
        query_bool("SELECT has_table_privilege('rawsql_r', 'reporting.later', 'SELECT')", NULL));

    assert_int_equal(
        apply("GRANT CONNECT, TEMP ON DATABASE {{.Database}} TO {{.Role}}", "rawsql_r", &err),
        WP_OK);
    assert_true(query_bool("SELECT EXISTS (SELECT 1 FROM pg_database d, aclexplode(d.datacl) a "
                           "WHERE d.datname = $1 AND a.grantee = 'rawsql_r'::regrole "
                           "AND a.privilege_type = 'TEMPORARY')",
                           cluster.test_db));

    assert_int_equal(apply("REVOKE INSERT ON public.audit_log FROM {{.Role}}", "rawsql_r", &err),
                     WP_OK);
    assert_false(query_bool(has_insert, NULL));
}

static const char *const hostile[] = {
    "GRANT SELECT ON public.t TO {{.Role}}; DROP TABLE t",
    "GRANT SELECT ON public.t TO {{.Role}}; GRANT SELECT ON public.t TO rawsql_bob",
    "GRANT pg_read_all_data TO {{.Role}}",
    "GRANT SELECT ON public.t TO {{.Role}} WITH GRANT OPTION",
    "ALTER DEFAULT PRIVILEGES FOR ROLE wp_admin GRANT SELECT ON TABLES TO {{.Role}}",
    "ALTER DEFAULT PRIVILEGES FOR ALL ROLES GRANT SELECT ON TABLES TO {{.Role}}",
    "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO rawsql_bob",
    "GRANT SELECT ON public.t TO PUBLIC",
    "GRANT SELECT ON public.t TO rawsql_bob",
    "GRANT SELECT ON public.t TO {{.Role}}, rawsql_bob",
    "GRANT SELECT ON public.t TO CURRENT_USER",
    "COPY t TO PROGRAM 'id'",
    "SELECT pg_read_file('x')",
    "DO $$ BEGIN EXECUTE 'DROP TABLE t'; END $$",
    "CREATE ROLE rawsql_evil LOGIN",
    "ALTER ROLE {{.Role}} CREATEDB",
    "SET ROLE postgres",
    "GRANT SELECT ON public.\"t\" TO rawsql_bob; --\" TO {{.Role}}",
    "GRANT SELECT ON public.t TO rawsql_bob /* {{.Role}} */",
    "GRANT SELECT ON public.t TO {{.Role}} --\n, rawsql_bob",
    "GRANT ALL ON LANGUAGE plpgsql TO {{.Role}}",
    "GRANT ALL ON DATABASE {{.Database}} TO {{.Role}}",
    "REVOKE SELECT ON public.t FROM {{.Role}} CASCADE",
    "",
    "{{.Role | printf}}",
    "{{template \"x\"}}",
    "GRANT SELECT ON public.t TO {{.Role",
    "DROP TABLE t",
};

static void test_hostile_refused_db_unchanged(void **state)
{
    (void)state;
    char *before = snapshot();
    for (size_t i = 0; i < sizeof(hostile) / sizeof(hostile[0]); i++) {
        wp_error err;
        wp_status st = apply(hostile[i], "rawsql_r", &err);
        if (st != WP_ERR_DENIED && st != WP_ERR_INVALID)
            fail_msg("hostile template %zu not refused (status %d): %s", i, st, hostile[i]);
        assert_string_equal(err.sqlstate, "28000");
        char *after = snapshot();
        if (strcmp(before, after) != 0)
            fail_msg("hostile template %zu changed the database: %s", i, hostile[i]);
        free(after);
        assert_true(query_bool("SELECT to_regclass('public.t') IS NOT NULL", NULL));
    }
    free(before);
}

/* Runs sql ungated (simple protocol, several statements allowed) in a transaction that is
 * rolled back; returns whether the snapshot changed meanwhile. */
static int ungated_changes_db(const char *tmpl)
{
    char *sql = NULL;
    wp_error err;
    assert_int_equal(rawsql_render(tmpl, "rawsql_r", cluster.test_db, "u", &sql, &err), WP_OK);
    char *before = snapshot();
    assert_int_equal(pgc_exec(admin, "BEGIN"), 0);
    PGresult *r = PQexec(admin, sql);
    int ran = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    char *during = ran ? snapshot() : NULL;
    assert_int_equal(pgc_exec(admin, "ROLLBACK"), 0);
    int changed = during && strcmp(before, during) != 0;
    free(before);
    free(during);
    free(sql);
    return changed;
}

/* The snapshot is able to see what the refused templates would have done. */
static void test_snapshot_detects_hostile_effects(void **state)
{
    (void)state;
    assert_true(ungated_changes_db("GRANT SELECT ON public.t TO {{.Role}}; DROP TABLE t"));
    assert_true(ungated_changes_db("GRANT SELECT ON public.t TO PUBLIC"));
    assert_true(ungated_changes_db("GRANT SELECT ON public.t TO rawsql_bob /* {{.Role}} */"));
    assert_true(ungated_changes_db("GRANT SELECT ON public.t TO {{.Role}} WITH GRANT OPTION"));
    assert_true(ungated_changes_db("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO "
                                   "rawsql_bob"));
    assert_true(ungated_changes_db("CREATE ROLE rawsql_evil LOGIN"));
    /* PostgreSQL 16 and later: CREATEROLE alone no longer lets the admin grant
     * membership in roles it holds no ADMIN OPTION on, so the statement fails there even
     * ungated (and changes nothing); on 14 and 15 it goes through. */
    if (cluster.major >= 16)
        assert_false(ungated_changes_db("GRANT pg_read_all_data TO {{.Role}}"));
    else
        assert_true(ungated_changes_db("GRANT pg_read_all_data TO {{.Role}}"));
}

/* The extended protocol is a second wall: it cannot carry two statements. */
static void test_extended_protocol_single_statement(void **state)
{
    (void)state;
    PGresult *r = PQexecParams(admin, "GRANT SELECT ON public.t TO rawsql_r; DROP TABLE t", 0, NULL,
                               NULL, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
    PQclear(r);
    assert_true(query_bool("SELECT to_regclass('public.t') IS NOT NULL", NULL));
}

/* A role name built to break out of its quotes grants only to itself. */
static void test_injected_role_name_grants_only_to_itself(void **state)
{
    (void)state;
    wp_error err;
    assert_int_equal(apply("GRANT SELECT ON public.odd_target TO {{.Role}}", ODD_ROLE, &err),
                     WP_OK);
    const char *q = "SELECT has_table_privilege($1, 'public.odd_target', 'SELECT')";
    assert_true(query_bool(q, ODD_ROLE));
    assert_false(query_bool(q, "rawsql_bob"));
    assert_false(query_bool(q, "x"));
    /* Nobody but the odd role appears in the table's ACL. */
    assert_false(query_bool("SELECT EXISTS (SELECT 1 FROM aclexplode((SELECT relacl FROM "
                            "pg_class WHERE oid = 'public.odd_target'::regclass)) a "
                            "WHERE a.grantee NOT IN ($1::regrole, 'wp_admin'::regrole))",
                            "\"x\"\" TO rawsql_bob; --\""));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_allowed_grants_take_effect),
        cmocka_unit_test(test_hostile_refused_db_unchanged),
        cmocka_unit_test(test_snapshot_detects_hostile_effects),
        cmocka_unit_test(test_extended_protocol_single_statement),
        cmocka_unit_test(test_injected_role_name_grants_only_to_itself),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
