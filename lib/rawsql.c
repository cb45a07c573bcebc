/*
 * rawsql: raw SQL grant templates (spec 3.5, 5.4).
 *
 * Rendering. A template is SQL text with exactly three actions, written as in Go
 * templates: {{.Role}}, {{.Database}}, {{.User}}, with optional whitespace inside the
 * braces ({{ .Role }}). Every other action ({{.Other}}, {{.Role | printf}},
 * {{template "x"}}, {{- .Role -}}, a {{ without }}) is WP_ERR_INVALID naming it. A lone
 * "}}" is literal text, as in Go. Values are never pasted raw: Role and Database become
 * quoted identifiers, User a string literal, so an identity value can never end its
 * token. Identity values must be valid UTF-8 (the parser below and the server, with
 * client_encoding UTF8, then agree on where every token ends); identifiers must be 1..63
 * bytes (longer ones would be truncated by PostgreSQL into a different name). Templates
 * are bounded to 8 KB and rendered SQL to 16 KB.
 *
 * Validation. The rendered SQL is parsed by libpg_query (the PostgreSQL 15 raw parser)
 * into a JSON tree, read with jansson, and accepted only if all of this holds:
 *   - exactly one statement (none, or two, is refused);
 *   - it is GrantStmt (GRANT/REVOKE of object privileges) or AlterDefaultPrivilegesStmt;
 *     GrantRoleStmt (role membership) and every other kind (COPY, SELECT, DO, CREATE,
 *     ALTER ROLE, SET ROLE, SECURITY LABEL, ...) is refused;
 *   - every grantee is a plain role name equal to the role (PUBLIC, CURRENT_USER,
 *     SESSION_USER, CURRENT_ROLE and other names are refused);
 *   - grant_option is false: WITH GRANT OPTION is refused, and so is REVOKE GRANT OPTION
 *     FOR (harmless, but one rule is simpler to audit than two);
 *   - no GRANTED BY, no CASCADE (a cascading REVOKE also removes what the role granted
 *     to others, i.e. it reaches other roles);
 *   - ALTER DEFAULT PRIVILEGES: IN SCHEMA is allowed, FOR ROLE/FOR USER naming anyone
 *     is refused (it would change another role's defaults; PostgreSQL has no FOR ALL
 *     ROLES, the parser rejects it); the inner GRANT/REVOKE obeys the rules above;
 *   - object types: TABLE (incl. views), SEQUENCE, SCHEMA, FUNCTION, PROCEDURE, ROUTINE,
 *     TYPE, DOMAIN; and DATABASE with an explicit CONNECT/TEMP/TEMPORARY list only
 *     (CREATE on a database lets a role create schemas and trusted extensions, more
 *     than an object grant should give). EXECUTE on a function only lets the role call
 *     that existing function. Refused: LANGUAGE (USAGE on a language lets a role create
 *     functions in it), LARGE OBJECT, FOREIGN SERVER, FOREIGN DATA WRAPPER, TABLESPACE,
 *     PARAMETER (SET/ALTER SYSTEM on settings), and anything newer we do not know.
 *     Privilege names are not listed (the server rejects unknown ones; on the allowed
 *     object types every privilege is an ordinary one);
 *   - every object is schema-qualified (admin sessions run with search_path=pg_catalog,
 *     so an unqualified name means a system object) and no object, schema of ALL ... IN
 *     SCHEMA, or ALTER DEFAULT PRIVILEGES IN SCHEMA is in pg_* or information_schema:
 *     with a superuser admin a grant there would expose pg_authid or pg_read_file;
 *   - the GRANT and ALTER DEFAULT PRIVILEGES nodes hold no field we do not know (a
 *     field added by a future parser fails closed).
 * Every refusal is WP_ERR_DENIED, SQLSTATE 28000, with a message naming the rule, for
 * the log. Caveats: what the admin role may grant still bounds the result (a superuser
 * admin could grant EXECUTE on pg_catalog functions); statements must run one at a time
 * over the extended protocol on a connection with client_encoding UTF8.
 *
 * Threads. libpg_query keeps its memory contexts in thread-local storage and, the first
 * time each thread parses, creates a pthread key that it never deletes (its destructor
 * frees the thread's context at thread exit; pg_query_exit() must NOT be called from a
 * thread that parses again or exits later: the context would be freed twice). In a
 * thread-per-connection server that exhausts PTHREAD_KEYS_MAX after 1024 connections,
 * breaking every library that needs a key. So all parsing runs on one long-lived worker
 * thread (started on first use, 8 MB stack so that deeply nested input cannot overflow
 * libpg_query's recursive JSON output); callers hand it the SQL under a mutex and wait.
 * The shared request slot below is the module's only global state.
 */
#include "rawsql.h"

#include <jansson.h>
#include <pg_query.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RAWSQL_MAX_TEMPLATE 8192
#define RAWSQL_MAX_SQL 16384
#define RAWSQL_MAX_IDENT 63  /* NAMEDATALEN - 1 */
#define RAWSQL_MAX_USER 1024 /* a login name; far above any real one */
#define RAWSQL_PARSER_STACK (8u * 1024 * 1024)

/* ---------------------------------------------------------------- quoting */

char *rawsql_quote_ident(const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s);
    if (n > (SIZE_MAX - 3) / 2)
        return NULL;
    char *out = malloc(2 * n + 3);
    if (!out)
        return NULL;
    char *p = out;
    *p++ = '"';
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"')
            *p++ = '"';
        *p++ = s[i];
    }
    *p++ = '"';
    *p = '\0';
    return out;
}

/* With a backslash present the E'' form is used: there backslashes are escapes whatever
 * standard_conforming_strings says, so doubling them keeps the value exact and the
 * literal closed under either setting. */
char *rawsql_quote_literal(const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s);
    if (n > (SIZE_MAX - 4) / 2)
        return NULL;
    bool has_bs = strchr(s, '\\') != NULL;
    char *out = malloc(2 * n + 4);
    if (!out)
        return NULL;
    char *p = out;
    if (has_bs)
        *p++ = 'E';
    *p++ = '\'';
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\'' || s[i] == '\\')
            *p++ = s[i];
        *p++ = s[i];
    }
    *p++ = '\'';
    *p = '\0';
    return out;
}

/* ---------------------------------------------------------------- rendering */

/* Strict UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF). */
static bool utf8_valid(const unsigned char *s)
{
    while (*s) {
        unsigned c = *s;
        size_t len;
        unsigned min, cp;
        if (c < 0x80) {
            s++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2, min = 0x80, cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, min = 0x800, cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, min = 0x10000, cp = c & 0x07;
        } else {
            return false;
        }
        for (size_t i = 1; i < len; i++) {
            if ((s[i] & 0xC0) != 0x80)
                return false; /* also stops at the terminating NUL */
            cp = (cp << 6) | (s[i] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        s += len;
    }
    return true;
}

typedef struct {
    char *buf;
    size_t len;
} sqlbuf;

static wp_status buf_add(sqlbuf *b, const char *s, size_t n, wp_error *err)
{
    if (n > RAWSQL_MAX_SQL - b->len) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, "raw SQL: rendered statement exceeds %d bytes",
                     RAWSQL_MAX_SQL);
        return WP_ERR_TOO_LARGE;
    }
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = '\0';
    return WP_OK;
}

/* Quotes one variable's value for its position; checks it first. */
static wp_status render_value(const char *var, const char *value, char **quoted, wp_error *err)
{
    bool ident = strcmp(var, ".User") != 0;
    size_t n = value ? strlen(value) : 0;
    if (!value || (ident && (n == 0 || n > RAWSQL_MAX_IDENT)) || n > RAWSQL_MAX_USER) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH,
                     "raw SQL: value for {{%s}} is missing, empty or too long", var);
        return WP_ERR_INVALID;
    }
    if (!utf8_valid((const unsigned char *)value)) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, "raw SQL: value for {{%s}} is not UTF-8", var);
        return WP_ERR_INVALID;
    }
    *quoted = ident ? rawsql_quote_ident(value) : rawsql_quote_literal(value);
    if (!*quoted) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "out of memory");
        return WP_ERR_NOMEM;
    }
    return WP_OK;
}

static bool is_tmpl_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Reads the action starting at "{{"; sets *var to the variable name and *end past "}}". */
static wp_status parse_action(const char *open, const char **var, const char **end, wp_error *err)
{
    const char *close = strstr(open + 2, "}}");
    if (!close) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, "raw SQL template: unterminated {{");
        return WP_ERR_INVALID;
    }
    const char *a = open + 2, *z = close;
    while (a < z && is_tmpl_space(*a))
        a++;
    while (z > a && is_tmpl_space(z[-1]))
        z--;
    static const char *const vars[] = {".Role", ".Database", ".User"};
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
        if ((size_t)(z - a) == strlen(vars[i]) && memcmp(a, vars[i], (size_t)(z - a)) == 0) {
            *var = vars[i];
            *end = close + 2;
            return WP_OK;
        }
    }
    int shown = (int)(close + 2 - open) > 64 ? 64 : (int)(close + 2 - open);
    wp_error_set(err, WP_SQLSTATE_INVALID_AUTH,
                 "raw SQL template: unknown syntax %.*s (only {{.Role}}, {{.Database}}, "
                 "{{.User}} are allowed)",
                 shown, open);
    return WP_ERR_INVALID;
}

static wp_status render_into(sqlbuf *b, const char *tmpl, const char *role, const char *database,
                             const char *user, wp_error *err)
{
    const char *p = tmpl;
    for (;;) {
        const char *open = strstr(p, "{{");
        wp_status st = buf_add(b, p, open ? (size_t)(open - p) : strlen(p), err);
        if (st != WP_OK || !open)
            return st;
        const char *var = NULL;
        if ((st = parse_action(open, &var, &p, err)) != WP_OK)
            return st;
        const char *value = strcmp(var, ".Role") == 0       ? role
                            : strcmp(var, ".Database") == 0 ? database
                                                            : user;
        char *quoted = NULL;
        if ((st = render_value(var, value, &quoted, err)) != WP_OK)
            return st;
        st = buf_add(b, quoted, strlen(quoted), err);
        free(quoted);
        if (st != WP_OK)
            return st;
    }
}

wp_status rawsql_render(const char *tmpl, const char *role, const char *database, const char *user,
                        char **out, wp_error *err)
{
    if (!out)
        return WP_ERR_INTERNAL;
    *out = NULL;
    if (!tmpl) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, "raw SQL template: missing");
        return WP_ERR_INVALID;
    }
    if (strlen(tmpl) > RAWSQL_MAX_TEMPLATE) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, "raw SQL template: longer than %d bytes",
                     RAWSQL_MAX_TEMPLATE);
        return WP_ERR_TOO_LARGE;
    }
    sqlbuf b = {malloc(RAWSQL_MAX_SQL + 1), 0};
    if (!b.buf) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "out of memory");
        return WP_ERR_NOMEM;
    }
    b.buf[0] = '\0';
    wp_status st = render_into(&b, tmpl, role, database, user, err);
    if (st != WP_OK) {
        free(b.buf);
        return st;
    }
    *out = b.buf;
    return WP_OK;
}

/* ---------------------------------------------------------------- parser thread */

/* The request slot shared with the parser thread (see the file comment for why one
 * thread). Guarded by parser.lock; callers take turns through `busy`. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cv;
    bool started;
    bool busy;      /* a caller owns the slot */
    bool requested; /* input is waiting for the parser thread */
    bool done;      /* result is waiting for the caller */
    const char *input;
    PgQueryParseResult result;
} parser = {
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, false, false, false, NULL, {0}};

static void *parser_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&parser.lock);
    for (;;) {
        while (!parser.requested)
            pthread_cond_wait(&parser.cv, &parser.lock);
        const char *input = parser.input;
        pthread_mutex_unlock(&parser.lock);
        PgQueryParseResult r = pg_query_parse(input);
        pthread_mutex_lock(&parser.lock);
        parser.result = r;
        parser.requested = false;
        parser.done = true;
        pthread_cond_broadcast(&parser.cv);
    }
    return NULL;
}

static bool parser_start_locked(void)
{
    if (parser.started)
        return true;
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0)
        return false;
    pthread_t tid;
    bool ok = pthread_attr_setstacksize(&attr, RAWSQL_PARSER_STACK) == 0 &&
              pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0 &&
              pthread_create(&tid, &attr, parser_main, NULL) == 0;
    pthread_attr_destroy(&attr);
    parser.started = ok;
    return ok;
}

/* Runs pg_query_parse(sql) on the parser thread. False only if it cannot be started. */
static bool parse_on_parser_thread(const char *sql, PgQueryParseResult *out)
{
    pthread_mutex_lock(&parser.lock);
    if (!parser_start_locked()) {
        pthread_mutex_unlock(&parser.lock);
        return false;
    }
    while (parser.busy)
        pthread_cond_wait(&parser.cv, &parser.lock);
    parser.busy = true;
    parser.input = sql;
    parser.requested = true;
    pthread_cond_broadcast(&parser.cv);
    while (!parser.done)
        pthread_cond_wait(&parser.cv, &parser.lock);
    *out = parser.result;
    memset(&parser.result, 0, sizeof(parser.result));
    parser.input = NULL;
    parser.done = false;
    parser.busy = false;
    pthread_cond_broadcast(&parser.cv);
    pthread_mutex_unlock(&parser.lock);
    return true;
}

/* ---------------------------------------------------------------- validation */

static wp_status deny(wp_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Every refusal: WP_ERR_DENIED, 28000, "raw SQL refused: <rule>". */
static wp_status deny(wp_error *err, const char *fmt, ...)
{
    char why[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, "raw SQL refused: %s", why);
    return WP_ERR_DENIED;
}

/* True if every key of obj is in the NULL-terminated list. */
static bool keys_known(json_t *obj, const char *const *known)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        (void)v;
        size_t i = 0;
        while (known[i] && strcmp(known[i], key) != 0)
            i++;
        if (!known[i])
            return false;
    }
    return true;
}

static bool str_in(const char *s, const char *const *list)
{
    for (size_t i = 0; s && list[i]; i++)
        if (strcmp(s, list[i]) == 0)
            return true;
    return false;
}

static wp_status check_grantees(json_t *grantees, const char *role, wp_error *err)
{
    if (!json_is_array(grantees) || json_array_size(grantees) == 0)
        return deny(err, "no grantee");
    size_t i;
    json_t *g;
    json_array_foreach(grantees, i, g)
    {
        json_t *spec = json_object_get(g, "RoleSpec");
        const char *type = json_string_value(json_object_get(spec, "roletype"));
        const char *name = json_string_value(json_object_get(spec, "rolename"));
        if (!type || strncmp(type, "ROLESPEC_", 9) != 0)
            return deny(err, "grantee is not the role (unreadable grantee)");
        if (strcmp(type, "ROLESPEC_CSTRING") != 0) /* PUBLIC, CURRENT_USER, ... */
            return deny(err, "grantee is not the role (%.40s)", type + 9);
        if (!name || strcmp(name, role) != 0)
            return deny(err, "grantee is not the role (another role)");
    }
    return WP_OK;
}

/* DATABASE grants need an explicit list of CONNECT/TEMP(ORARY): no ALL, no CREATE. */
static wp_status check_database_privs(json_t *privs, wp_error *err)
{
    static const char *const ok[] = {"connect", "temp", "temporary", NULL};
    if (!json_is_array(privs) || json_array_size(privs) == 0)
        return deny(err, "ALL PRIVILEGES on a database is not allowed (CONNECT, TEMP only)");
    size_t i;
    json_t *p;
    json_array_foreach(privs, i, p)
    {
        json_t *ap = json_object_get(p, "AccessPriv");
        if (!str_in(json_string_value(json_object_get(ap, "priv_name")), ok) ||
            json_object_get(ap, "cols"))
            return deny(err, "privilege on a database other than CONNECT or TEMP");
    }
    return WP_OK;
}

static wp_status check_objtype(json_t *g, bool in_defaults, wp_error *err)
{
    static const char *const allowed[] = {
        "OBJECT_TABLE",   "OBJECT_SEQUENCE", "OBJECT_SCHEMA", "OBJECT_FUNCTION", "OBJECT_PROCEDURE",
        "OBJECT_ROUTINE", "OBJECT_TYPE",     "OBJECT_DOMAIN", "OBJECT_DATABASE", NULL};
    const char *objtype = json_string_value(json_object_get(g, "objtype"));
    const char *targtype = json_string_value(json_object_get(g, "targtype"));
    if (!str_in(objtype, allowed)) {
        return deny(err, "object type %.60s is not allowed",
                    objtype ? objtype + (strncmp(objtype, "OBJECT_", 7) == 0 ? 7 : 0) : "?");
    }
    bool target_ok = in_defaults
                         ? (targtype && strcmp(targtype, "ACL_TARGET_DEFAULTS") == 0)
                         : (targtype && (strcmp(targtype, "ACL_TARGET_OBJECT") == 0 ||
                                         strcmp(targtype, "ACL_TARGET_ALL_IN_SCHEMA") == 0));
    if (!target_ok)
        return deny(err, "unexpected grant target");
    if (strcmp(objtype, "OBJECT_DATABASE") == 0)
        return check_database_privs(json_object_get(g, "privileges"), err);
    return WP_OK;
}

/* Names under pg_* (pg_catalog, pg_toast, temp schemas) and information_schema belong
 * to the system. A grant there is how a template would reach pg_authid or
 * pg_read_file when the admin is a superuser, so they are refused whatever the admin's
 * rights. */
static bool system_schema(const char *name)
{
    return !name || strncmp(name, "pg_", 3) == 0 || strcmp(name, "information_schema") == 0;
}

static const char *sval(json_t *node)
{
    return json_string_value(json_object_get(json_object_get(node, "String"), "sval"));
}

/* A qualified name as a list of String nodes: at least schema.name, schema not system.
 * Unqualified names are refused because admin sessions resolve them through
 * search_path=pg_catalog, i.e. to system objects. */
static wp_status check_qualified_list(json_t *names, wp_error *err)
{
    if (!json_is_array(names) || json_array_size(names) < 2)
        return deny(err, "object names must be schema-qualified (schema.name)");
    const char *schema = sval(json_array_get(names, json_array_size(names) - 2));
    if (system_schema(schema))
        return deny(err, "objects in system schema %.63s are not allowed", schema ? schema : "?");
    return WP_OK;
}

static wp_status check_object(json_t *obj, wp_error *err)
{
    json_t *rv = json_object_get(obj, "RangeVar");
    if (rv) {
        const char *schema = json_string_value(json_object_get(rv, "schemaname"));
        if (!schema)
            return deny(err, "object names must be schema-qualified (schema.name)");
        if (system_schema(schema))
            return deny(err, "objects in system schema %.63s are not allowed", schema);
        return WP_OK;
    }
    json_t *fn = json_object_get(obj, "ObjectWithArgs");
    if (fn)
        return check_qualified_list(json_object_get(fn, "objname"), err);
    json_t *list = json_object_get(obj, "List");
    if (list)
        return check_qualified_list(json_object_get(list, "items"), err);
    return deny(err, "unexpected object in grant");
}

/* Every object, schema of ALL ... IN SCHEMA, or bare schema named by the grant. */
static wp_status check_objects(json_t *g, const char *objtype, wp_error *err)
{
    const char *targtype = json_string_value(json_object_get(g, "targtype"));
    bool schema_names = strcmp(objtype, "OBJECT_SCHEMA") == 0 ||
                        (targtype && strcmp(targtype, "ACL_TARGET_ALL_IN_SCHEMA") == 0);
    size_t i;
    json_t *obj;
    json_array_foreach(json_object_get(g, "objects"), i, obj)
    {
        if (schema_names) {
            if (system_schema(sval(obj)))
                return deny(err, "system schema %.63s is not allowed", sval(obj) ? sval(obj) : "?");
        } else if (strcmp(objtype, "OBJECT_DATABASE") != 0) {
            wp_status st = check_object(obj, err);
            if (st != WP_OK)
                return st;
        }
    }
    return WP_OK;
}

/* One GRANT/REVOKE of object privileges (top level, or the action of ALTER DEFAULT
 * PRIVILEGES when in_defaults). */
static wp_status check_grant(json_t *g, const char *role, bool in_defaults, wp_error *err)
{
    static const char *const known[] = {"is_grant",   "targtype", "objtype",      "objects",
                                        "privileges", "grantees", "grant_option", "grantor",
                                        "behavior",   NULL};
    if (!json_is_object(g) || !keys_known(g, known))
        return deny(err, "GRANT statement has an unknown field");
    if (json_is_true(json_object_get(g, "grant_option")))
        return deny(err, json_is_true(json_object_get(g, "is_grant"))
                             ? "WITH GRANT OPTION is not allowed"
                             : "REVOKE GRANT OPTION FOR is not allowed");
    if (json_object_get(g, "grantor"))
        return deny(err, "GRANTED BY is not allowed");
    const char *behavior = json_string_value(json_object_get(g, "behavior"));
    if (!behavior || strcmp(behavior, "DROP_RESTRICT") != 0)
        return deny(err, "CASCADE is not allowed");
    wp_status st = check_objtype(g, in_defaults, err);
    if (st == WP_OK && !in_defaults)
        st = check_objects(g, json_string_value(json_object_get(g, "objtype")), err);
    if (st != WP_OK)
        return st;
    return check_grantees(json_object_get(g, "grantees"), role, err);
}

static wp_status check_default_privs(json_t *adp, const char *role, wp_error *err)
{
    static const char *const known[] = {"options", "action", NULL};
    if (!json_is_object(adp) || !keys_known(adp, known))
        return deny(err, "ALTER DEFAULT PRIVILEGES has an unknown field");
    size_t i;
    json_t *opt;
    json_array_foreach(json_object_get(adp, "options"), i, opt)
    {
        const char *name =
            json_string_value(json_object_get(json_object_get(opt, "DefElem"), "defname"));
        if (name && strcmp(name, "roles") == 0)
            return deny(err, "ALTER DEFAULT PRIVILEGES FOR ROLE is not allowed");
        if (!name || strcmp(name, "schemas") != 0)
            return deny(err, "unknown ALTER DEFAULT PRIVILEGES option");
        size_t k;
        json_t *sch;
        json_array_foreach(
            json_object_get(
                json_object_get(json_object_get(json_object_get(opt, "DefElem"), "arg"), "List"),
                "items"),
            k, sch)
        {
            if (system_schema(sval(sch)))
                return deny(err, "system schema %.63s is not allowed", sval(sch) ? sval(sch) : "?");
        }
    }
    return check_grant(json_object_get(adp, "action"), role, true, err);
}

static wp_status check_tree(json_t *root, const char *role, wp_error *err)
{
    json_t *stmts = json_object_get(root, "stmts");
    if (!json_is_array(stmts))
        return deny(err, "unreadable parse tree");
    if (json_array_size(stmts) == 0)
        return deny(err, "no statement (empty or only comments)");
    if (json_array_size(stmts) > 1)
        return deny(err, "must be exactly one statement");
    json_t *stmt = json_object_get(json_array_get(stmts, 0), "stmt");
    if (!json_is_object(stmt) || json_object_size(stmt) != 1)
        return deny(err, "unreadable parse tree");
    const char *kind = json_object_iter_key(json_object_iter(stmt));
    json_t *node = json_object_iter_value(json_object_iter(stmt));
    if (strcmp(kind, "GrantStmt") == 0)
        return check_grant(node, role, false, err);
    if (strcmp(kind, "AlterDefaultPrivilegesStmt") == 0)
        return check_default_privs(node, role, err);
    if (strcmp(kind, "GrantRoleStmt") == 0)
        return deny(err, "role membership grants are not allowed");
    return deny(err,
                "statement kind %.60s is not allowed (only GRANT, REVOKE, ALTER DEFAULT "
                "PRIVILEGES)",
                kind);
}

wp_status rawsql_validate(const char *sql, const char *role, wp_error *err)
{
    if (!sql || !role)
        return deny(err, "missing statement or role");
    if (role[0] == '\0' || strlen(role) > RAWSQL_MAX_IDENT)
        return deny(err, "role name is empty or longer than 63 bytes");
    if (strlen(sql) > RAWSQL_MAX_SQL)
        return deny(err, "statement too long");
    PgQueryParseResult r;
    if (!parse_on_parser_thread(sql, &r)) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "raw SQL: cannot start the parser thread");
        return WP_ERR_INTERNAL;
    }
    wp_status st;
    if (r.error) {
        st = deny(err, "parse error: %.200s", r.error->message ? r.error->message : "?");
    } else if (!r.parse_tree) {
        st = deny(err, "parser returned nothing");
    } else {
        json_error_t jerr;
        json_t *root = json_loads(r.parse_tree, JSON_REJECT_DUPLICATES, &jerr);
        st = root ? check_tree(root, role, err) : deny(err, "unreadable parse tree");
        json_decref(root);
    }
    pg_query_free_parse_result(r);
    return st;
}
