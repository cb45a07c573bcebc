/*
 * rawsql unit tests: quoting, template rendering (including injection through identity
 * values), and libpg_query validation of allowed and hostile templates. Each hostile
 * template must be refused with the rule it breaks (WP_ERR_DENIED, 28000). The thread
 * test proves that parsing from many short-lived threads does not use up pthread keys
 * (libpg_query creates one per parsing thread; rawsql parses on one thread).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rawsql.h"

#define ROLE "wp_alice_readonly"
#define DB "appdb"
#define USER "alice@example.com"

/* ---------------------------------------------------------------- quoting */

static void test_quote_ident(void **state)
{
    (void)state;
    char *q = rawsql_quote_ident("plain");
    assert_string_equal(q, "\"plain\"");
    free(q);
    q = rawsql_quote_ident("x\" TO bob; --");
    assert_string_equal(q, "\"x\"\" TO bob; --\"");
    free(q);
    q = rawsql_quote_ident("");
    assert_string_equal(q, "\"\"");
    free(q);
    assert_null(rawsql_quote_ident(NULL));
}

static void test_quote_literal(void **state)
{
    (void)state;
    char *q = rawsql_quote_literal("a'); DROP TABLE t; --");
    assert_string_equal(q, "'a''); DROP TABLE t; --'");
    free(q);
    q = rawsql_quote_literal("a\\'b");
    assert_string_equal(q, "E'a\\\\''b'");
    free(q);
    q = rawsql_quote_literal("");
    assert_string_equal(q, "''");
    free(q);
    assert_null(rawsql_quote_literal(NULL));
}

/* ---------------------------------------------------------------- rendering */

static char *render_ok(const char *tmpl, const char *role, const char *db, const char *user)
{
    char *out = NULL;
    wp_error err;
    wp_error_clear(&err);
    wp_status st = rawsql_render(tmpl, role, db, user, &out, &err);
    if (st != WP_OK)
        fail_msg("render of '%s' failed: %s", tmpl, err.message);
    assert_non_null(out);
    return out;
}

static void render_fails(const char *tmpl, wp_status want, const char *msg_part)
{
    char *out = (char *)"untouched";
    wp_error err;
    wp_error_clear(&err);
    assert_int_equal(rawsql_render(tmpl, ROLE, DB, USER, &out, &err), want);
    assert_null(out);
    assert_string_equal(err.sqlstate, "28000");
    if (!strstr(err.message, msg_part))
        fail_msg("message '%s' lacks '%s'", err.message, msg_part);
}

static void test_render_variables(void **state)
{
    (void)state;
    char *s = render_ok("{{.Role}} {{.Database}} {{.User}}", ROLE, DB, USER);
    assert_string_equal(s, "\"" ROLE "\" \"" DB "\" '" USER "'");
    free(s);
    s = render_ok("GRANT SELECT ON public.t TO {{ .Role }}", ROLE, DB, USER);
    assert_string_equal(s, "GRANT SELECT ON public.t TO \"" ROLE "\"");
    free(s);
    s = render_ok("{{\t.Database\n}}-{{  .User}}", ROLE, DB, USER);
    assert_string_equal(s, "\"" DB "\"-'" USER "'");
    free(s);
    s = render_ok("no actions, a lone }} stays", ROLE, DB, USER);
    assert_string_equal(s, "no actions, a lone }} stays");
    free(s);
}

static void test_render_bad_syntax(void **state)
{
    (void)state;
    render_fails("GRANT SELECT ON public.t TO {{.Other}}", WP_ERR_INVALID, "{{.Other}}");
    render_fails("GRANT SELECT ON public.t TO {{.Role", WP_ERR_INVALID, "unterminated");
    render_fails("GRANT SELECT ON public.t TO {{.Role | printf}}", WP_ERR_INVALID,
                 "{{.Role | printf}}");
    render_fails("{{template \"x\"}}", WP_ERR_INVALID, "{{template \"x\"}}");
    render_fails("GRANT SELECT ON public.t TO {{- .Role -}}", WP_ERR_INVALID, "unknown syntax");
    render_fails("{{/* comment */}}", WP_ERR_INVALID, "unknown syntax");
    render_fails("{{.role}}", WP_ERR_INVALID, "unknown syntax"); /* case matters, as in Go */
    render_fails("{{}}", WP_ERR_INVALID, "unknown syntax");
    char *big = malloc(9001);
    assert_non_null(big);
    memset(big, 'x', 9000);
    big[9000] = '\0';
    render_fails(big, WP_ERR_TOO_LARGE, "longer than");
    free(big);
}

static void test_render_bad_values(void **state)
{
    (void)state;
    char *out = NULL;
    wp_error err;
    char long_role[80];
    memset(long_role, 'r', 64);
    long_role[64] = '\0';
    assert_int_equal(rawsql_render("{{.Role}}", long_role, DB, USER, &out, &err), WP_ERR_INVALID);
    assert_null(out);
    long_role[63] = '\0'; /* exactly 63 bytes is fine */
    assert_int_equal(rawsql_render("{{.Role}}", long_role, DB, USER, &out, &err), WP_OK);
    free(out);
    assert_int_equal(rawsql_render("{{.Role}}", "", DB, USER, &out, &err), WP_ERR_INVALID);
    assert_int_equal(rawsql_render("{{.Database}}", ROLE, NULL, USER, &out, &err), WP_ERR_INVALID);
    assert_int_equal(rawsql_render("{{.User}}", ROLE, DB, "bad\xC3(utf8", &out, &err),
                     WP_ERR_INVALID);
    assert_non_null(strstr(err.message, "UTF-8"));
    /* An unused variable's value is not checked. */
    assert_int_equal(rawsql_render("GRANT x", NULL, NULL, NULL, &out, &err), WP_OK);
    free(out);
}

/* ---------------------------------------------------------------- validation helpers */

static void expect_allowed(const char *tmpl)
{
    char *sql = render_ok(tmpl, ROLE, DB, USER);
    wp_error err;
    wp_error_clear(&err);
    wp_status st = rawsql_validate(sql, ROLE, &err);
    if (st != WP_OK)
        fail_msg("'%s' refused: %s", sql, err.message);
    assert_false(wp_error_isset(&err));
    free(sql);
}

static void expect_refused_sql(const char *sql, const char *role, const char *rule)
{
    wp_error err;
    wp_error_clear(&err);
    wp_status st = rawsql_validate(sql, role, &err);
    if (st != WP_ERR_DENIED)
        fail_msg("'%s' not refused (status %d)", sql, st);
    assert_string_equal(err.sqlstate, "28000");
    if (!strstr(err.message, rule))
        fail_msg("'%s' refused with '%s', expected rule '%s'", sql, err.message, rule);
}

static void expect_refused(const char *tmpl, const char *rule)
{
    char *sql = render_ok(tmpl, ROLE, DB, USER);
    expect_refused_sql(sql, ROLE, rule);
    free(sql);
}

/* ---------------------------------------------------------------- allowed */

static void test_allowed(void **state)
{
    (void)state;
    expect_allowed("GRANT INSERT ON public.audit_log TO {{.Role}}");
    expect_allowed("GRANT SELECT ON ALL TABLES IN SCHEMA reporting TO {{.Role}}");
    expect_allowed("REVOKE DELETE ON public.t FROM {{.Role}}");
    expect_allowed("ALTER DEFAULT PRIVILEGES IN SCHEMA reporting GRANT SELECT ON TABLES TO "
                   "{{.Role}}");
    expect_allowed("ALTER DEFAULT PRIVILEGES IN SCHEMA reporting REVOKE ALL ON SEQUENCES FROM "
                   "{{ .Role }}");
    expect_allowed("GRANT USAGE ON SCHEMA reporting TO {{.Role}};");
    expect_allowed("GRANT CONNECT, TEMP ON DATABASE {{.Database}} TO {{.Role}}");
    expect_allowed("GRANT EXECUTE ON FUNCTION public.f(int) TO {{.Role}}");
    expect_allowed("GRANT SELECT (a, b), UPDATE (b) ON public.t TO {{.Role}}");
    expect_allowed("-- audit\nGRANT USAGE, SELECT ON SEQUENCE public.s TO {{.Role}} /* ok */");
    /* An unquoted name equal to the role is the role. */
    expect_allowed("GRANT SELECT ON public.t TO " ROLE);
    /* Quote "breaking" that stays inside one identifier is a (strange) table name. */
    expect_allowed("GRANT SELECT ON public.\"t\"\" TO x; --\" TO {{.Role}}");
}

/* ---------------------------------------------------------------- hostile */

static void test_refused_statement_count(void **state)
{
    (void)state;
    expect_refused("GRANT SELECT ON public.t TO {{.Role}}; GRANT SELECT ON public.u TO {{.Role}}",
                   "must be exactly one statement");
    expect_refused("GRANT SELECT ON public.t TO {{.Role}}; DROP TABLE t",
                   "must be exactly one statement");
    expect_refused("GRANT SELECT ON public.t TO {{.Role}} /* */; DROP TABLE t",
                   "must be exactly one statement");
    expect_refused("", "no statement");
    expect_refused("-- GRANT SELECT ON public.t TO {{.Role}}", "no statement");
    expect_refused("GRANT SELECT ON TO {{.Role}}", "parse error: syntax error at or near \"TO\"");
}

static void test_refused_grantee(void **state)
{
    (void)state;
    expect_refused("GRANT SELECT ON public.t TO PUBLIC", "grantee is not the role (PUBLIC)");
    expect_refused("GRANT SELECT ON public.t TO bob", "grantee is not the role (another role)");
    expect_refused("GRANT SELECT ON public.t TO {{.Role}}, bob", "grantee is not the role");
    expect_refused("GRANT SELECT ON public.t TO CURRENT_USER",
                   "grantee is not the role (CURRENT_USER)");
    expect_refused("GRANT SELECT ON public.t TO SESSION_USER",
                   "grantee is not the role (SESSION_USER)");
    expect_refused("GRANT SELECT ON public.t TO CURRENT_ROLE",
                   "grantee is not the role (CURRENT_ROLE)");
    /* Quote breaking: the ; ends the statement, the rest is a comment. */
    expect_refused("GRANT SELECT ON public.\"t\" TO bob; --\" TO {{.Role}}",
                   "grantee is not the role");
    /* Comment tricks: the role only appears inside comments. */
    expect_refused("GRANT SELECT ON public.t TO bob /* {{.Role}} */", "grantee is not the role");
    expect_refused("GRANT SELECT ON public.t TO {{.Role}} --\n, bob", "grantee is not the role");
    /* A case-folded unquoted name is not the role. */
    expect_refused_sql("GRANT SELECT ON public.t TO MixedCase", "MixedCase",
                       "grantee is not the role");
}

static void test_refused_options(void **state)
{
    (void)state;
    expect_refused("GRANT SELECT ON public.t TO {{.Role}} WITH GRANT OPTION", "WITH GRANT OPTION");
    expect_refused("REVOKE GRANT OPTION FOR SELECT ON public.t FROM {{.Role}}",
                   "REVOKE GRANT OPTION FOR");
    expect_refused("REVOKE SELECT ON public.t FROM {{.Role}} CASCADE", "CASCADE");
    expect_refused("GRANT SELECT ON public.t TO {{.Role}} GRANTED BY postgres", "GRANTED BY");
}

static void test_refused_default_privileges(void **state)
{
    (void)state;
    expect_refused("ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT SELECT ON TABLES TO "
                   "{{.Role}}",
                   "FOR ROLE");
    expect_refused("ALTER DEFAULT PRIVILEGES FOR USER {{.Role}} IN SCHEMA s GRANT SELECT ON "
                   "TABLES TO {{.Role}}",
                   "FOR ROLE");
    /* PostgreSQL has no FOR ALL ROLES: the parser refuses it. */
    expect_refused("ALTER DEFAULT PRIVILEGES FOR ALL ROLES GRANT SELECT ON TABLES TO {{.Role}}",
                   "parse error");
    expect_refused("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC",
                   "grantee is not the role (PUBLIC)");
    expect_refused("ALTER DEFAULT PRIVILEGES IN SCHEMA s GRANT USAGE ON TYPES TO {{.Role}} "
                   "WITH GRANT OPTION",
                   "WITH GRANT OPTION");
}

static void test_refused_object_types(void **state)
{
    (void)state;
    expect_refused("GRANT ALL ON LANGUAGE plpgsql TO {{.Role}}", "object type LANGUAGE");
    expect_refused("GRANT SET ON PARAMETER work_mem TO {{.Role}}", "object type PARAMETER_ACL");
    expect_refused("GRANT USAGE ON FOREIGN SERVER s TO {{.Role}}", "object type FOREIGN_SERVER");
    expect_refused("GRANT USAGE ON FOREIGN DATA WRAPPER w TO {{.Role}}", "object type FDW");
    expect_refused("GRANT CREATE ON TABLESPACE x TO {{.Role}}", "object type TABLESPACE");
    expect_refused("GRANT SELECT ON LARGE OBJECT 1 TO {{.Role}}", "object type LARGEOBJECT");
    expect_refused("GRANT ALL ON DATABASE {{.Database}} TO {{.Role}}", "ALL PRIVILEGES on a");
    expect_refused("GRANT CONNECT, CREATE ON DATABASE {{.Database}} TO {{.Role}}",
                   "other than CONNECT or TEMP");
}

static void test_refused_statement_kinds(void **state)
{
    (void)state;
    expect_refused("GRANT pg_read_all_data TO {{.Role}}", "role membership");
    expect_refused("GRANT postgres TO {{.Role}} WITH ADMIN OPTION", "role membership");
    expect_refused("COPY t TO PROGRAM 'id'", "CopyStmt");
    expect_refused("SELECT pg_read_file('x')", "SelectStmt");
    expect_refused("DO $$ BEGIN PERFORM 1; END $$", "DoStmt");
    expect_refused("CREATE ROLE evil SUPERUSER", "CreateRoleStmt");
    expect_refused("ALTER ROLE {{.Role}} SUPERUSER", "AlterRoleStmt");
    expect_refused("SET ROLE postgres", "VariableSetStmt");
    expect_refused("SECURITY LABEL ON ROLE {{.Role}} IS 'x'", "SecLabelStmt");
    expect_refused("DROP TABLE t", "DropStmt");
    expect_refused("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
                   "CreateFunctionStmt");
}

/* ---------------------------------------------------------------- injection via values */

static void test_injection_role(void **state)
{
    (void)state;
    const char *odd = "x\" TO bob; --";
    char *sql = render_ok("GRANT SELECT ON public.t TO {{.Role}}", odd, DB, USER);
    assert_string_equal(sql, "GRANT SELECT ON public.t TO \"x\"\" TO bob; --\"");
    /* One statement whose only grantee is the odd role itself... */
    wp_error err;
    assert_int_equal(rawsql_validate(sql, odd, &err), WP_OK);
    /* ...and certainly not bob or x. */
    expect_refused_sql(sql, "bob", "grantee is not the role");
    expect_refused_sql(sql, "x", "grantee is not the role");
    free(sql);
}

static void test_injection_user_and_database(void **state)
{
    (void)state;
    const char *evil_user = "a'); DROP TABLE t; --";
    /* The literal stays one token: the statement is one SELECT, not a SELECT and a DROP. */
    char *sql = render_ok("SELECT {{.User}}", ROLE, DB, evil_user);
    assert_string_equal(sql, "SELECT 'a''); DROP TABLE t; --'");
    expect_refused_sql(sql, ROLE, "statement kind SelectStmt");
    free(sql);
    sql = render_ok("SELECT {{.User}}", ROLE, DB, "a\\'; DROP TABLE t; --");
    expect_refused_sql(sql, ROLE, "statement kind SelectStmt");
    free(sql);
    /* Values placed in a comment are not protected by quoting; validation catches it. */
    sql = render_ok("GRANT SELECT ON public.t TO {{.Role}} /* {{.User}} */", ROLE, DB,
                    "*/; DROP TABLE t; /*");
    expect_refused_sql(sql, ROLE, "must be exactly one statement");
    free(sql);
    sql = render_ok("GRANT SELECT ON public.t TO {{.Role}} -- {{.User}}", ROLE, DB, "x\n, bob");
    expect_refused_sql(sql, ROLE, "parse error");
    free(sql);
    const char *evil_db = "d\"; DROP DATABASE appdb; --";
    sql = render_ok("GRANT CONNECT ON DATABASE {{.Database}} TO {{.Role}}", ROLE, evil_db, USER);
    wp_error err;
    assert_int_equal(rawsql_validate(sql, ROLE, &err), WP_OK);
    free(sql);
}

static void test_validate_bounds(void **state)
{
    (void)state;
    expect_refused_sql("GRANT SELECT ON public.t TO r", "", "role name is empty");
    expect_refused_sql(NULL, ROLE, "missing");
    /* 16 KB of nesting: refused without exhausting any stack. */
    size_t n = 8000;
    char *deep = malloc(16 + 2 * n + 2);
    assert_non_null(deep);
    strcpy(deep, "SELECT ");
    for (size_t i = 0; i < n; i++)
        strcat(deep + 7 + 2 * i, "1+");
    strcat(deep, "1");
    wp_error err;
    assert_int_equal(rawsql_validate(deep, ROLE, &err), WP_ERR_DENIED);
    free(deep);
    char *huge = malloc(20001);
    assert_non_null(huge);
    memset(huge, ' ', 20000);
    huge[20000] = '\0';
    expect_refused_sql(huge, ROLE, "too long");
    free(huge);
}

/* ---------------------------------------------------------------- threads */

typedef struct {
    int idx;
    int ok;
} thread_arg;

static void *validate_in_thread(void *p)
{
    thread_arg *a = p;
    char role[32], sql[96];
    snprintf(role, sizeof(role), "role_%d", a->idx);
    snprintf(sql, sizeof(sql), "GRANT SELECT ON public.t TO %s", role);
    wp_error err;
    a->ok = rawsql_validate(sql, role, &err) == WP_OK &&
            rawsql_validate(sql, "role_other", &err) == WP_ERR_DENIED;
    return NULL;
}

/* More short-lived threads than PTHREAD_KEYS_MAX (1024), four at a time, each with its
 * own role: results stay per caller and pthread keys remain available afterwards. */
static void test_many_threads(void **state)
{
    (void)state;
    enum { BATCH = 4, ROUNDS = 300 };
    for (int r = 0; r < ROUNDS; r++) {
        pthread_t t[BATCH];
        thread_arg a[BATCH];
        for (int i = 0; i < BATCH; i++) {
            a[i].idx = r * BATCH + i;
            a[i].ok = 0;
            assert_int_equal(pthread_create(&t[i], NULL, validate_in_thread, &a[i]), 0);
        }
        for (int i = 0; i < BATCH; i++) {
            assert_int_equal(pthread_join(t[i], NULL), 0);
            assert_true(a[i].ok);
        }
    }
    pthread_key_t key;
    assert_int_equal(pthread_key_create(&key, NULL), 0);
    pthread_key_delete(key);
}

/* With a superuser admin, a grant on a system object would be honoured: pg_authid's
 * password hashes, pg_read_file. Unqualified names resolve to pg_catalog in admin
 * sessions, so they are refused too. */
static void test_refused_system_objects(void **state)
{
    (void)state;
    expect_refused("GRANT SELECT ON pg_catalog.pg_authid TO {{.Role}}", "system schema pg_catalog");
    expect_refused("GRANT UPDATE ON pg_authid TO {{.Role}}", "schema-qualified");
    expect_refused("GRANT SELECT ON information_schema.tables TO {{.Role}}",
                   "system schema information_schema");
    expect_refused("GRANT SELECT ON ALL TABLES IN SCHEMA pg_catalog TO {{.Role}}",
                   "system schema pg_catalog");
    expect_refused("GRANT USAGE ON SCHEMA pg_toast TO {{.Role}}", "system schema pg_toast");
    expect_refused("GRANT EXECUTE ON FUNCTION pg_read_file(text) TO {{.Role}}", "schema-qualified");
    expect_refused("GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_file(text) TO {{.Role}}",
                   "system schema pg_catalog");
    expect_refused("GRANT USAGE ON TYPE pg_catalog.int4 TO {{.Role}}", "system schema pg_catalog");
    expect_refused(
        "ALTER DEFAULT PRIVILEGES IN SCHEMA pg_catalog GRANT SELECT ON TABLES TO {{.Role}}",
        "system schema pg_catalog");
    expect_refused("GRANT SELECT ON pg_temp_3.x TO {{.Role}}", "system schema pg_temp_3");
    expect_allowed("GRANT EXECUTE ON FUNCTION reporting.refresh(int) TO {{.Role}}");
    expect_allowed("GRANT USAGE ON TYPE public.mood TO {{.Role}}");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refused_system_objects),
        cmocka_unit_test(test_quote_ident),
        cmocka_unit_test(test_quote_literal),
        cmocka_unit_test(test_render_variables),
        cmocka_unit_test(test_render_bad_syntax),
        cmocka_unit_test(test_render_bad_values),
        cmocka_unit_test(test_allowed),
        cmocka_unit_test(test_refused_statement_count),
        cmocka_unit_test(test_refused_grantee),
        cmocka_unit_test(test_refused_options),
        cmocka_unit_test(test_refused_default_privileges),
        cmocka_unit_test(test_refused_object_types),
        cmocka_unit_test(test_refused_statement_kinds),
        cmocka_unit_test(test_injection_role),
        cmocka_unit_test(test_injection_user_and_database),
        cmocka_unit_test(test_validate_bounds),
        cmocka_unit_test(test_many_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
