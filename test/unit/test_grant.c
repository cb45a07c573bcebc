/*
 * grant: resolution of CapMap rules into (preset, schema) pairs, limits merging,
 * validation errors, downgrade parsing and the options-string extraction.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "grant.h"

static const cfg_limits DEFAULTS = {100, 86400000, 0};

/* Resolves a JSON array of rules (as CapMap carries it). */
static wp_status resolve(const char *rules_json, const char *db, grant_preset down,
                         grant_effective **g, wp_error *err)
{
    json_error_t jerr;
    json_t *rules = json_loads(rules_json, JSON_DECODE_ANY, &jerr);
    if (!rules)
        fail_msg("test JSON does not parse: %s: %s", jerr.text, rules_json);
    wp_error_clear(err);
    *g = NULL;
    wp_status st = grant_resolve(rules, "pg-main", db, &DEFAULTS, down, g, err);
    json_decref(rules);
    if (st != WP_OK)
        assert_null(*g);
    return st;
}

/* Renders the pairs as "schema:preset,..." for one-line comparisons. */
static const char *pairs_str(const grant_effective *g)
{
    static char buf[1024];
    buf[0] = '\0';
    for (size_t i = 0; i < g->npairs; i++) {
        size_t n = strlen(buf);
        snprintf(buf + n, sizeof(buf) - n, "%s%s:%s", i ? "," : "", g->pairs[i].schema,
                 grant_preset_str(g->pairs[i].preset));
    }
    return buf;
}

static void expect_pairs(const char *rules, const char *db, grant_preset down, const char *want)
{
    grant_effective *g;
    wp_error err;
    wp_status st = resolve(rules, db, down, &g, &err);
    if (st != WP_OK)
        fail_msg("status %d: %s (rules %s)", st, err.message, rules);
    assert_string_equal(pairs_str(g), want);
    grant_free(g);
}

static void expect_error(const char *rules, wp_status want, const char *msg_part)
{
    grant_effective *g;
    wp_error err;
    wp_status st = resolve(rules, "appdb", GRANT_PRESET_NONE, &g, &err);
    if (st != want || !strstr(err.message, msg_part))
        fail_msg("status %d message '%s', want %d with '%s' (rules %s)", st, err.message, want,
                 msg_part, rules);
    assert_string_equal(err.sqlstate, "28000");
}

#define RULE(dbs) "{\"backends\":{\"pg-main\":{\"pg\":{\"databases\":" dbs "}}}}"
#define RULE_L(lim, dbs)                                                                           \
    "{\"limits\":" lim ",\"backends\":{\"pg-main\":{\"pg\":{\"databases\":" dbs "}}}}"

static void test_union_not_cross_product(void **state)
{
    (void)state;
    /* The spec's case, within one rule (exact + wildcard) and across two rules. */
    expect_pairs("[" RULE("{\"appdb\":{\"permissions\":[\"readonly\"],\"schemas\":[\"secret\"]},"
                          "\"*\":{\"permissions\":[\"readwrite\"]}}") "]",
                 "appdb", GRANT_PRESET_NONE, "public:readwrite,secret:readonly");
    expect_pairs(
        "[" RULE("{\"appdb\":{\"permissions\":[\"readonly\"],\"schemas\":[\"secret\"]}}") "," RULE(
            "{\"appdb\":{\"permissions\":[\"readwrite\"],\"schemas\":[\"public\"]}}") "]",
        "appdb", GRANT_PRESET_NONE, "public:readwrite,secret:readonly");
}

static void test_exact_and_wildcard(void **state)
{
    (void)state;
    const char *r = "[" RULE("{\"myapp\":{\"permissions\":[\"readwrite\"],\"schemas\":[\"public\","
                             "\"app\"]},\"*\":{\"permissions\":[\"readonly\"]}}") "]";
    expect_pairs(r, "myapp", GRANT_PRESET_NONE, "app:readwrite,public:readonly,public:readwrite");
    expect_pairs(r, "other", GRANT_PRESET_NONE, "public:readonly");
    /* One entry, two presets, two schemas: the entry's own cross product. */
    expect_pairs("[" RULE("{\"appdb\":{\"permissions\":[\"admin\",\"readonly\"],\"schemas\":[\"b\","
                          "\"a\"]}}") "]",
                 "appdb", GRANT_PRESET_NONE, "a:readonly,a:admin,b:readonly,b:admin");
}

static void test_multiple_rules_and_listeners(void **state)
{
    (void)state;
    const char *r =
        "[{\"backends\":{\"pg-other\":{\"pg\":{\"databases\":{\"appdb\":{\"permissions\":["
        "\"admin\"]}}}}}},"
        "{\"limits\":{\"max_conns\":1}},"
        "{\"backends\":{\"pg-main\":{\"pg\":{\"databases\":{\"appdb\":{\"permissions\":["
        "\"readonly\"],\"schemas\":[\"s1\"]}}}},\"pg-other\":{\"pg\":{}}}}," RULE(
            "{\"appdb\":{\"permissions\":[\"readwrite\"],\"schemas\":[\"s2\"]}}") "]";
    expect_pairs(r, "appdb", GRANT_PRESET_NONE, "s1:readonly,s2:readwrite");

    grant_effective *g;
    wp_error err;
    assert_int_equal(resolve(r, "appdb", GRANT_PRESET_NONE, &g, &err), WP_OK);
    /* max_conns 1 came from a rule that granted nothing here: not applied. */
    assert_int_equal(g->limits.max_conns_per_user, DEFAULTS.max_conns_per_user);
    grant_free(g);
}

static void test_denied(void **state)
{
    (void)state;
    const char *cases[] = {
        "[]",
        "[{}]",
        "[{\"backends\":{\"pg-other\":{\"pg\":{\"databases\":{\"*\":{\"permissions\":["
        "\"admin\"]}}}}}}]",
        "[" RULE("{\"otherdb\":{\"permissions\":[\"admin\"]}}") "]",
        "[{\"backends\":{\"pg-main\":{}}}]",
        "[{\"backends\":{\"pg-main\":{\"pg\":{}}}}]",
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        grant_effective *g;
        wp_error err;
        assert_int_equal(resolve(cases[i], "appdb", GRANT_PRESET_NONE, &g, &err), WP_ERR_DENIED);
        assert_string_equal(err.sqlstate, "28000");
        assert_string_equal(err.message,
                            "no Waypoint grant for database \"appdb\" on listener \"pg-main\"");
    }
    /* No CapMap entry at all. */
    grant_effective *g = NULL;
    wp_error err;
    assert_int_equal(grant_resolve(NULL, "pg-main", "appdb", &DEFAULTS, 0, &g, &err),
                     WP_ERR_DENIED);
    assert_null(g);
}

static void test_limits(void **state)
{
    (void)state;
    const char *r = "[" RULE_L(
        "{\"max_conns\":10,\"max_conn_duration\":\"1h\","
        "\"max_bytes_per_conn\":\"10GB\"}",
        "{\"*\":{\"permissions\":[\"readonly\"]}}") "," RULE_L("{\"max_conns\":5,\"max_conn_"
                                                               "duration\":7200,\"max_bytes_per_"
                                                               "conn\":0}",
                                                               "{\"*\":{\"permissions\":["
                                                               "\"readonly\"]}}") "]";
    grant_effective *g;
    wp_error err;
    assert_int_equal(resolve(r, "appdb", GRANT_PRESET_NONE, &g, &err), WP_OK);
    int64_t hour, ten_gb;
    assert_int_equal(cfg_parse_duration("1h", &hour), 0);
    assert_int_equal(cfg_parse_size("10GB", &ten_gb), 0);
    assert_int_equal(g->limits.max_conns_per_user, 5);
    assert_int_equal(g->limits.max_conn_duration_ms, hour); /* 1h < 7200 s */
    assert_int_equal(g->limits.max_bytes_per_conn, ten_gb); /* 0 is "no limit given" */
    grant_free(g);

    /* Zero and missing fall back to the defaults. */
    r = "[" RULE_L("{\"max_conns\":0}", "{\"*\":{\"permissions\":[\"readonly\"]}}") "]";
    assert_int_equal(resolve(r, "appdb", GRANT_PRESET_NONE, &g, &err), WP_OK);
    assert_int_equal(g->limits.max_conns_per_user, DEFAULTS.max_conns_per_user);
    assert_int_equal(g->limits.max_conn_duration_ms, DEFAULTS.max_conn_duration_ms);
    assert_int_equal(g->limits.max_bytes_per_conn, 0);
    grant_free(g);

    /* A rule's explicit value overrides a default even when it is larger. */
    r = "[" RULE_L("{\"max_conns\":500,\"max_bytes_per_conn\":4096}",
                   "{\"*\":{\"permissions\":[\"readonly\"]}}") "]";
    assert_int_equal(resolve(r, "appdb", GRANT_PRESET_NONE, &g, &err), WP_OK);
    assert_int_equal(g->limits.max_conns_per_user, 500);
    assert_int_equal(g->limits.max_bytes_per_conn, 4096);
    grant_free(g);
}

static void test_unknown_preset_hint(void **state)
{
    (void)state;
    grant_effective *g;
    wp_error err;
    assert_int_equal(resolve("[" RULE("{\"appdb\":{\"permissions\":[\"readonyl\"]}}") "]", "appdb",
                             GRANT_PRESET_NONE, &g, &err),
                     WP_ERR_INVALID);
    assert_string_equal(err.sqlstate, "28000");
    assert_non_null(strstr(err.message, "\"readonyl\""));
    assert_non_null(strstr(err.message, "rule 1"));
    assert_string_equal(err.hint, "did you mean \"readonly\"?");

    assert_int_equal(
        resolve("[{}," RULE("{\"appdb\":{\"permissions\":[\"readonly\",\"ADMN\"]}}") "]", "appdb",
                GRANT_PRESET_NONE, &g, &err),
        WP_ERR_INVALID);
    assert_non_null(strstr(err.message, "\"ADMN\""));
    assert_non_null(strstr(err.message, "rule 2"));
    assert_string_equal(err.hint, "did you mean \"admin\"?");

    assert_int_equal(resolve("[" RULE("{\"*\":{\"permissions\":[\"read-write\"]}}") "]", "appdb",
                             GRANT_PRESET_NONE, &g, &err),
                     WP_ERR_INVALID);
    assert_string_equal(err.hint, "did you mean \"readwrite\"?");
}

static void test_case_insensitive_dedup(void **state)
{
    (void)state;
    expect_pairs(
        "[" RULE("{\"appdb\":{\"permissions\":[\"ReadOnly\",\"READONLY\",\"readonly\"],"
                 "\"schemas\":[\"public\",\"public\"]},\"*\":{\"permissions\":["
                 "\"readOnly\"]}}") "," RULE("{\"appdb\":{\"permissions\":[\"Readonly\"]}}") "]",
        "appdb", GRANT_PRESET_NONE, "public:readonly");
    assert_int_equal(grant_preset_parse("AdMiN"), GRANT_PRESET_ADMIN);
    assert_int_equal(grant_preset_parse("owner"), GRANT_PRESET_NONE);
    assert_int_equal(grant_preset_parse(NULL), GRANT_PRESET_NONE);
}

static void test_schema_validation(void **state)
{
    (void)state;
    const char *bad[] = {"public; DROP TABLE x",
                         "1abc",
                         "",
                         "sch\\u00e9ma",
                         "a-b",
                         "\\\"q\\\"",
                         "a b",
                         "s23456789012345678901234567890123456789012345678901234567890abcd"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char rules[512];
        snprintf(rules, sizeof(rules),
                 "[" RULE("{\"appdb\":{\"permissions\":[\"readonly\"],\"schemas\":[\"%s\"]}}") "]",
                 bad[i]);
        expect_error(rules, WP_ERR_INVALID, "is not a valid identifier");
    }
    expect_pairs("[" RULE("{\"appdb\":{\"permissions\":[\"readonly\"],\"schemas\":[\"App_$1\","
                          "\"_x\",\"s2345678901234567890123456789012345678901234567890123456789"
                          "0abc\"]}}") "]",
                 "appdb", GRANT_PRESET_NONE,
                 "App_$1:readonly,_x:readonly,"
                 "s23456789012345678901234567890123456789012345678901234567890abc:readonly");
    assert_true(grant_schema_valid("public"));
    assert_false(grant_schema_valid(NULL));
    assert_false(grant_schema_valid("$x"));
}

/* System schemas are never grantable: with a superuser admin, "readonly" on pg_catalog
 * would expose pg_authid and "admin" there would let the role make itself superuser. */
static void test_system_schemas_refused(void **state)
{
    (void)state;
    const char *sys[] = {"pg_catalog", "pg_toast", "pg_temp_1", "information_schema"};
    for (size_t i = 0; i < sizeof(sys) / sizeof(sys[0]); i++) {
        char rules[512];
        snprintf(rules, sizeof(rules),
                 "[" RULE("{\"appdb\":{\"permissions\":[\"readonly\"],\"schemas\":[\"%s\"]}}") "]",
                 sys[i]);
        expect_error(rules, WP_ERR_INVALID, sys[i]);
    }
    assert_false(grant_schema_valid("pg_catalog"));
    assert_false(grant_schema_valid("information_schema"));
    /* Names PostgreSQL lets users create stay valid. */
    assert_true(grant_schema_valid("PG_stuff"));
    assert_true(grant_schema_valid("pgdata"));
    assert_true(grant_schema_valid("app_information_schema"));
}

static void test_malformed_rules(void **state)
{
    (void)state;
    /* Each malformed rule sits second, after a valid rule, so the number is checked. */
    const char *bad[] = {
        "\"just a string\"",
        "[1,2]",
        "{\"limits\":[]}",
        "{\"limits\":{\"max_conns\":\"ten\"}}",
        "{\"limits\":{\"max_conns\":-1}}",
        "{\"limits\":{\"max_conns\":1.5}}",
        "{\"limits\":{\"max_conn_duration\":\"forever\"}}",
        "{\"limits\":{\"max_conn_duration\":true}}",
        "{\"limits\":{\"max_bytes_per_conn\":\"lots\"}}",
        "{\"limits\":{\"max_bytes_per_conn\":-5}}",
        "{\"backends\":[]}",
        "{\"backends\":{\"pg-main\":\"yes\"}}",
        "{\"backends\":{\"pg-main\":{\"pg\":[]}}}",
        "{\"backends\":{\"pg-main\":{\"pg\":{\"databases\":[\"appdb\"]}}}}",
        RULE("{\"appdb\":[\"readonly\"]}"),
        RULE("{\"appdb\":{\"schemas\":[\"public\"]}}"),
        RULE("{\"appdb\":{\"permissions\":[]}}"),
        RULE("{\"appdb\":{\"permissions\":\"readonly\"}}"),
        RULE("{\"appdb\":{\"permissions\":[1]}}"),
        RULE("{\"*\":{\"permissions\":[\"readonly\"],\"schemas\":\"public\"}}"),
        RULE("{\"*\":{\"permissions\":[\"readonly\"],\"schemas\":[]}}"),
        RULE("{\"*\":{\"permissions\":[\"readonly\"],\"schemas\":[7]}}"),
        RULE("{\"*\":{\"permissions\":[\"readonly\"],\"sql\":\"GRANT SECRETMARKER\"}}"),
        RULE("{\"*\":{\"permissions\":[\"readonly\"],\"sql\":[{\"q\":\"SECRETMARKER\"}]}}"),
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char rules[1024];
        snprintf(rules, sizeof(rules),
                 "[" RULE("{\"appdb\":{\"permissions\":[\"readonly\"]}}") ",%s]", bad[i]);
        grant_effective *g;
        wp_error err;
        wp_status st = resolve(rules, "appdb", GRANT_PRESET_NONE, &g, &err);
        if (st != WP_ERR_INVALID || !strstr(err.message, "grant rule 2 is malformed"))
            fail_msg("case %zu: status %d message '%s'", i, st, err.message);
        assert_string_equal(err.sqlstate, "28000");
        assert_null(strstr(err.message, "SECRETMARKER"));
    }
    grant_effective *g;
    wp_error err;
    assert_int_equal(resolve("{\"not\":\"an array\"}", "appdb", GRANT_PRESET_NONE, &g, &err),
                     WP_ERR_INVALID);
    assert_string_equal(err.sqlstate, "28000");
}

static void test_downgrade_resolve(void **state)
{
    (void)state;
    const char *r = "[" RULE("{\"appdb\":{\"permissions\":[\"admin\",\"readwrite\"],\"schemas\":["
                             "\"public\",\"app\"]},\"*\":{\"permissions\":[\"readonly\"],"
                             "\"schemas\":[\"ro\"]}}") "]";
    expect_pairs(r, "appdb", GRANT_PRESET_READONLY, "app:readonly,public:readonly,ro:readonly");
    expect_pairs(r, "appdb", GRANT_PRESET_READWRITE, "app:readwrite,public:readwrite,ro:readonly");
    expect_pairs(r, "appdb", GRANT_PRESET_ADMIN,
                 "app:readwrite,app:admin,public:readwrite,public:admin,ro:readonly");
    /* Cannot elevate: a readonly grant stays readonly when admin is asked for. */
    expect_pairs("[" RULE("{\"*\":{\"permissions\":[\"readonly\"]}}") "]", "appdb",
                 GRANT_PRESET_ADMIN, "public:readonly");
}

static void test_sql_templates(void **state)
{
    (void)state;
    const char *r = "[" RULE(
        "{\"appdb\":{\"permissions\":[\"readwrite\"],\"sql\":[\"GRANT INSERT ON "
        "public.audit TO {{.Role}}\"]}}") "," RULE("{\"*\":{\"permissions\":[\"readonly\"],"
                                                   "\"sql\":[\"A\",\"B\"]}}") "]";
    grant_effective *g;
    wp_error err;
    assert_int_equal(resolve(r, "appdb", GRANT_PRESET_NONE, &g, &err), WP_OK);
    assert_int_equal(g->nsql, 3);
    assert_string_equal(g->sql[0].template_text, "GRANT INSERT ON public.audit TO {{.Role}}");
    assert_string_equal(g->sql[0].origin, "rule 1, database appdb");
    assert_string_equal(g->sql[1].template_text, "A");
    assert_string_equal(g->sql[2].origin, "rule 2, database *");
    assert_int_equal(g->downgrade, GRANT_PRESET_NONE);
    grant_free(g);

    /* Any downgrade drops raw SQL, even one that lowers nothing. */
    assert_int_equal(resolve(r, "appdb", GRANT_PRESET_ADMIN, &g, &err), WP_OK);
    assert_int_equal(g->nsql, 0);
    assert_null(g->sql);
    assert_int_equal(g->downgrade, GRANT_PRESET_ADMIN);
    assert_string_equal(pairs_str(g), "public:readonly,public:readwrite");
    grant_free(g);
}

/* What a live grant change takes away (revalidation ends a session on 14/15 for it). */
static int narrows(const char *from_db, const char *to_db)
{
    grant_effective *a, *b;
    wp_error err;
    char ra[512], rb[512];
    snprintf(ra, sizeof(ra), "[" RULE("%s") "]", from_db);
    snprintf(rb, sizeof(rb), "[" RULE("%s") "]", to_db);
    assert_int_equal(resolve(ra, "appdb", GRANT_PRESET_NONE, &a, &err), WP_OK);
    assert_int_equal(resolve(rb, "appdb", GRANT_PRESET_NONE, &b, &err), WP_OK);
    int n = grant_narrows(a, b);
    grant_free(a);
    grant_free(b);
    return n;
}

static void test_narrows(void **state)
{
    (void)state;
    const char *rw = "{\"appdb\":{\"permissions\":[\"readwrite\"]}}";
    const char *ro = "{\"appdb\":{\"permissions\":[\"readonly\"]}}";
    const char *rw2 = "{\"appdb\":{\"permissions\":[\"readwrite\"],\"schemas\":[\"public\","
                      "\"app\"]}}";
    const char *sql = "{\"appdb\":{\"permissions\":[\"readwrite\"],\"sql\":[\"A\"]}}";
    assert_true(narrows(rw, ro));   /* a weaker preset */
    assert_false(narrows(ro, rw));  /* a wider one */
    assert_false(narrows(rw, rw));  /* the same */
    assert_true(narrows(rw2, rw));  /* a schema gone */
    assert_false(narrows(rw, rw2)); /* a schema added */
    assert_true(narrows(sql, rw));  /* a raw SQL grant gone */
    assert_false(narrows(rw, sql));
}

static void test_parse_downgrade(void **state)
{
    (void)state;
    struct {
        const char *in;
        grant_preset want;
    } ok[] = {{"readonly", GRANT_PRESET_READONLY},
              {"readwrite,admin", GRANT_PRESET_ADMIN},
              {" readonly , readwrite ", GRANT_PRESET_READWRITE},
              {"ADMIN", GRANT_PRESET_ADMIN},
              {"admin,readonly", GRANT_PRESET_ADMIN},
              {"\treadwrite", GRANT_PRESET_READWRITE}};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        grant_preset p = GRANT_PRESET_NONE;
        wp_error err;
        assert_int_equal(grant_parse_downgrade(ok[i].in, &p, &err), WP_OK);
        assert_int_equal(p, ok[i].want);
    }
    const char *bad[] = {
        "", "  ", "bogus", "readonly,", ",readonly", "readonly,,admin", "none", "readonly;admin"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        grant_preset p = GRANT_PRESET_READWRITE;
        wp_error err;
        wp_error_clear(&err);
        assert_int_equal(grant_parse_downgrade(bad[i], &p, &err), WP_ERR_INVALID);
        assert_string_equal(err.sqlstate, "22023");
        char quoted[64];
        snprintf(quoted, sizeof(quoted), "\"%s\"", bad[i]);
        assert_non_null(strstr(err.message, quoted));
        assert_int_equal(p, GRANT_PRESET_READWRITE);
    }
    wp_error err;
    grant_preset p;
    assert_int_equal(grant_parse_downgrade("raedonly", &p, &err), WP_ERR_INVALID);
    assert_string_equal(err.hint, "did you mean \"readonly\"?");
}

static void expect_extract(const char *param, const char *options, grant_preset want,
                           const char *want_options)
{
    grant_preset p = GRANT_PRESET_ADMIN;
    char *out = (char *)"untouched";
    wp_error err;
    wp_error_clear(&err);
    wp_status st = grant_extract_downgrade(param, options, &p, &out, &err);
    if (st != WP_OK)
        fail_msg("options '%s': %s", options ? options : "(null)", err.message);
    assert_int_equal(p, want);
    if (want_options)
        assert_string_equal(out, want_options);
    else
        assert_null(out);
    free(out);
}

static void test_extract_downgrade(void **state)
{
    (void)state;
    expect_extract(NULL, NULL, GRANT_PRESET_NONE, NULL);
    expect_extract("readonly", NULL, GRANT_PRESET_READONLY, NULL);
    expect_extract(NULL, "-c waypoint_presets=readonly", GRANT_PRESET_READONLY, "");
    expect_extract(NULL, "-c waypoint.presets=readwrite", GRANT_PRESET_READWRITE, "");
    expect_extract(NULL, "-cwaypoint_presets=readonly", GRANT_PRESET_READONLY, "");
    expect_extract(NULL, "--waypoint_presets=readonly", GRANT_PRESET_READONLY, "");
    expect_extract(NULL, "--waypoint.presets=admin,readonly", GRANT_PRESET_ADMIN, "");
    /* GUC names: case-insensitive, '-' reads as '_'. */
    expect_extract(NULL, "-c Waypoint-Presets=readonly", GRANT_PRESET_READONLY, "");
    /* The rest is forwarded byte-identical. */
    expect_extract(NULL, "-c search_path=a  -c waypoint_presets=readonly\t-c work_mem=64MB",
                   GRANT_PRESET_READONLY, "-c search_path=a\t-c work_mem=64MB");
    expect_extract(NULL, " -c waypoint_presets=readonly -c geqo=off ", GRANT_PRESET_READONLY,
                   " -c geqo=off ");
    expect_extract(NULL, "-c application_name=my\\ app --waypoint_presets=readonly",
                   GRANT_PRESET_READONLY, "-c application_name=my\\ app");
    expect_extract(NULL, "-c  application_name=x\\ y   -c statement_timeout=5s", GRANT_PRESET_NONE,
                   "-c  application_name=x\\ y   -c statement_timeout=5s");
    /* A switch that looks like ours but is the argument of another is not ours. */
    expect_extract(NULL, "-c application_name=-cwaypoint_presets=readonly", GRANT_PRESET_NONE,
                   "-c application_name=-cwaypoint_presets=readonly");
    /* Combined flags: getopt reads -e, then c with the next word. */
    expect_extract(NULL, "-ec waypoint_presets=readonly -c geqo=off", GRANT_PRESET_READONLY,
                   "-e -c geqo=off");
    /* Both channels and repeats: the lowest maximum wins. */
    expect_extract("readwrite", "-c waypoint_presets=readonly", GRANT_PRESET_READONLY, "");
    expect_extract("readonly", "-c waypoint_presets=admin", GRANT_PRESET_READONLY, "");
    expect_extract(NULL, "-c waypoint_presets=admin -c waypoint.presets=readwrite",
                   GRANT_PRESET_READWRITE, "");
}

static void test_extract_invalid(void **state)
{
    (void)state;
    const char *opts[] = {"-c waypoint_presets=superuser", "--waypoint_presets",
                          "-c waypoint.presets=", "-c geqo=off -c waypoint_presets=readonly,"};
    for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
        grant_preset p = GRANT_PRESET_ADMIN;
        char *out = NULL;
        wp_error err;
        wp_error_clear(&err);
        assert_int_equal(grant_extract_downgrade(NULL, opts[i], &p, &out, &err), WP_ERR_INVALID);
        assert_string_equal(err.sqlstate, "22023");
        assert_null(out);
    }
    grant_preset p;
    char *out = NULL;
    wp_error err;
    assert_int_equal(grant_extract_downgrade("root", "-c geqo=off", &p, &out, &err),
                     WP_ERR_INVALID);
    assert_non_null(strstr(err.message, "\"root\""));
    assert_null(out);
}

static void test_extract_long_options(void **state)
{
    (void)state;
    /* 64 KiB of one-letter words (the bound): accepted and returned unchanged. */
    size_t n = 65536;
    char *opts = malloc(n + 1);
    assert_non_null(opts);
    for (size_t i = 0; i < n; i++)
        opts[i] = (i % 2) ? ' ' : 'a';
    opts[n] = '\0';
    expect_extract(NULL, opts, GRANT_PRESET_NONE, opts);
    free(opts);

    opts = malloc(n + 2);
    assert_non_null(opts);
    memset(opts, 'a', n + 1);
    opts[n + 1] = '\0';
    grant_preset p;
    char *out = NULL;
    wp_error err;
    assert_int_equal(grant_extract_downgrade(NULL, opts, &p, &out, &err), WP_ERR_INVALID);
    assert_string_equal(err.sqlstate, "22023");
    assert_null(out);
    free(opts);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_union_not_cross_product),
        cmocka_unit_test(test_exact_and_wildcard),
        cmocka_unit_test(test_multiple_rules_and_listeners),
        cmocka_unit_test(test_denied),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_unknown_preset_hint),
        cmocka_unit_test(test_case_insensitive_dedup),
        cmocka_unit_test(test_schema_validation),
        cmocka_unit_test(test_system_schemas_refused),
        cmocka_unit_test(test_malformed_rules),
        cmocka_unit_test(test_downgrade_resolve),
        cmocka_unit_test(test_sql_templates),
        cmocka_unit_test(test_narrows),
        cmocka_unit_test(test_parse_downgrade),
        cmocka_unit_test(test_extract_downgrade),
        cmocka_unit_test(test_extract_invalid),
        cmocka_unit_test(test_extract_long_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
