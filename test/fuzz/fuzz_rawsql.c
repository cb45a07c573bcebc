/*
 * fuzz_rawsql: raw SQL templates through rawsql_render and rawsql_validate, as a hostile
 * template author and a hostile identity would drive them. Input: the template, then
 * optionally a NUL and the database name, then a NUL and the user's login. Refusals are
 * expected; what must never happen is a statement that rawsql_validate accepts but that,
 * parsed again here independently, is not exactly one GRANT/REVOKE or ALTER DEFAULT
 * PRIVILEGES whose every role reference is the role itself, with no grant option, no
 * grantor, no CASCADE and no FOR ROLE. The independent check walks the whole parse tree
 * instead of the fields rawsql.c knows, so a role reference hidden anywhere is caught.
 */
#include <jansson.h>
#include <pg_query.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rawsql.h"

#define ROLE "wp_alice_laptop_appdb"

/* Every object in the tree: role references must name ROLE; forbidden shapes abort. */
static void walk(json_t *v, size_t *grantees)
{
    if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) walk(e, grantees);
        return;
    }
    if (!json_is_object(v))
        return;
    json_t *type = json_object_get(v, "roletype");
    if (type) {
        const char *name = json_string_value(json_object_get(v, "rolename"));
        if (strcmp(json_string_value(type), "ROLESPEC_CSTRING") != 0 || !name ||
            strcmp(name, ROLE) != 0)
            abort();
        (*grantees)++;
    }
    if (json_is_true(json_object_get(v, "grant_option")) || json_object_get(v, "grantor") ||
        json_object_get(v, "GrantRoleStmt"))
        abort();
    const char *behavior = json_string_value(json_object_get(v, "behavior"));
    if (behavior && strcmp(behavior, "DROP_RESTRICT") != 0)
        abort();
    const char *defname = json_string_value(json_object_get(v, "defname"));
    if (defname && strcmp(defname, "roles") == 0)
        abort();
    const char *key;
    json_t *child;
    json_object_foreach(v, key, child) walk(child, grantees);
}

static void check_accepted(const char *sql)
{
    PgQueryParseResult r = pg_query_parse(sql);
    if (r.error || !r.parse_tree)
        abort(); /* accepted, so it must parse */
    json_error_t jerr;
    json_t *root = json_loads(r.parse_tree, 0, &jerr);
    if (!root)
        abort();
    json_t *stmts = json_object_get(root, "stmts");
    if (json_array_size(stmts) != 1)
        abort();
    json_t *stmt = json_object_get(json_array_get(stmts, 0), "stmt");
    if (!json_object_get(stmt, "GrantStmt") && !json_object_get(stmt, "AlterDefaultPrivilegesStmt"))
        abort();
    size_t grantees = 0;
    walk(stmt, &grantees);
    if (grantees == 0)
        abort();
    json_decref(root);
    pg_query_free_parse_result(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 2);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    buf[size] = buf[size + 1] = '\0';
    const char *tmpl = buf, *db = "appdb", *user = "alice@example.com";
    size_t n = strlen(tmpl);
    if (n < size) {
        db = tmpl + n + 1;
        size_t m = strlen(db);
        if (n + 1 + m < size)
            user = db + m + 1;
    }
    char *sql = NULL;
    wp_error err;
    if (rawsql_render(tmpl, ROLE, db, user, &sql, &err) == WP_OK) {
        if (rawsql_validate(sql, ROLE, &err) == WP_OK)
            check_accepted(sql);
        free(sql);
    }
    /* The raw bytes as if already rendered: validation alone must hold as well. */
    if (rawsql_validate(tmpl, ROLE, &err) == WP_OK)
        check_accepted(tmpl);
    free(buf);
    return 0;
}
