/*
 * grant: CapMap rules -> the effective grant for one connection (spec section 3).
 *
 * Resolution walks every rule once. Rule-level shape (object, limits, backends) is
 * checked for every rule so a broken policy is noticed whatever listener it names; below
 * backends only the part for this listener and the two database entries used (the exact
 * name and "*") are read. Each entry contributes the cross product of its own
 * permissions and schemas; entries and rules are combined by union, so "readonly on
 * secret" plus "readwrite on public" never becomes readwrite on secret. Pairs are kept
 * sorted and deduplicated; several presets on one schema stay separate pairs, since
 * provisioning applies each and the stronger one includes the weaker.
 *
 * Limits come only from rules that granted something here. Per field the smallest
 * non-zero value wins; zero or missing falls back to the config defaults.
 *
 * Schemas must be plain ASCII identifiers ([A-Za-z_][A-Za-z0-9_$]*, at most 63 bytes),
 * and not a system schema (pg_*, information_schema).
 * They are used exactly as written (provisioning quotes them, so case is preserved);
 * anything else, including non-ASCII names, is refused rather than spliced into SQL.
 *
 * Rules are numbered from 1 in messages. Messages name the rule and the offending value
 * (truncated, non-printable bytes replaced), never the document itself.
 *
 * Downgrade requests (3.3) arrive as a startup parameter or as switches inside the
 * options parameter. options is read the way PostgreSQL reads it (pg_split_opts: words
 * split on whitespace, backslash escapes the next byte; then getopt over the server's
 * switch string), so Waypoint sees exactly the -c / -- settings the backend would see.
 * Our switches are removed; every other word is forwarded byte-identical. When several
 * requests are present (both channels, or repeated switches) the strongest restriction,
 * i.e. the lowest maximum, wins: a client that asked for less anywhere gets less.
 */
#include "grant.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GRANT_RULES_MAX 256
#define GRANT_PERMS_MAX 16
#define GRANT_SCHEMAS_MAX 256
#define GRANT_SQL_MAX 64
#define GRANT_SQL_LEN_MAX 16384
#define GRANT_PAIRS_MAX 4096
#define GRANT_VALUE_MAX 256     /* waypoint_presets value */
#define GRANT_OPTIONS_MAX 65536 /* options startup parameter */
#define GRANT_ECHO_MAX 64       /* bytes of a bad value quoted back */

/* ---- presets -------------------------------------------------------------------- */

static const char *const preset_names[] = {"readonly", "readwrite", "admin"};

const char *grant_preset_str(grant_preset p)
{
    switch (p) {
    case GRANT_PRESET_READONLY:
        return "readonly";
    case GRANT_PRESET_READWRITE:
        return "readwrite";
    case GRANT_PRESET_ADMIN:
        return "admin";
    case GRANT_PRESET_NONE:
        break;
    }
    return "none";
}

grant_preset grant_preset_parse(const char *name)
{
    if (!name)
        return GRANT_PRESET_NONE;
    for (int i = 0; i < 3; i++)
        if (strcasecmp(name, preset_names[i]) == 0)
            return (grant_preset)(i + 1);
    return GRANT_PRESET_NONE;
}

/* Copies at most GRANT_ECHO_MAX bytes of s for a message; bytes that could confuse a
 * terminal or the quoting are replaced with '?'. */
static void echo_value(char out[GRANT_ECHO_MAX + 4], const char *s)
{
    size_t i = 0;
    for (; s[i] && i < GRANT_ECHO_MAX; i++) {
        unsigned char c = (unsigned char)s[i];
        out[i] = (c < 0x20 || c > 0x7e || c == '"' || c == '\\') ? '?' : (char)c;
    }
    if (s[i]) {
        memcpy(out + i, "...", 3);
        i += 3;
    }
    out[i] = '\0';
}

static size_t levenshtein(const char *a, const char *b)
{
    size_t la = strnlen(a, GRANT_ECHO_MAX), lb = strlen(b);
    size_t prev[GRANT_ECHO_MAX + 1], cur[GRANT_ECHO_MAX + 1];
    for (size_t j = 0; j <= lb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = prev[j - 1] + (tolower((unsigned char)a[i - 1]) != b[j - 1]);
            size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, (lb + 1) * sizeof(size_t));
    }
    return prev[lb];
}

static const char *closest_preset(const char *s)
{
    size_t best = (size_t)-1;
    const char *name = preset_names[0];
    for (int i = 0; i < 3; i++) {
        size_t d = levenshtein(s, preset_names[i]);
        if (d < best) {
            best = d;
            name = preset_names[i];
        }
    }
    return name;
}

int grant_schema_valid(const char *s)
{
    if (!s || !(isalpha((unsigned char)s[0]) || s[0] == '_'))
        return 0;
    /* System schemas (PostgreSQL reserves the pg_ prefix): a preset there would reach
     * the catalogs (pg_authid) whenever the admin role is a superuser. */
    if (strncmp(s, "pg_", 3) == 0 || strcmp(s, "information_schema") == 0)
        return 0;
    size_t n = 0;
    for (; s[n]; n++) {
        unsigned char c = (unsigned char)s[n];
        if (n >= GRANT_SCHEMA_MAX || c > 0x7f || !(isalnum(c) || c == '_' || c == '$'))
            return 0;
    }
    return 1;
}

/* ---- accumulators --------------------------------------------------------------- */

typedef struct resolve_ctx {
    grant_effective *g;
    size_t pairs_cap, sql_cap;
    size_t rule; /* 1-based, for messages */
    const char *dbkey;
    wp_error *err;
} resolve_ctx;

static wp_status malformed(resolve_ctx *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static wp_status malformed(resolve_ctx *c, const char *fmt, ...)
{
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    wp_error_set(c->err, WP_SQLSTATE_INVALID_AUTH, "grant rule %zu is malformed: %s", c->rule,
                 what);
    return WP_ERR_INVALID;
}

static int pair_cmp(const void *a, const void *b)
{
    const grant_pair *x = a, *y = b;
    int r = strcmp(x->schema, y->schema);
    return r ? r : (int)x->preset - (int)y->preset;
}

static void pairs_normalise(grant_effective *g)
{
    if (g->npairs == 0)
        return;
    qsort(g->pairs, g->npairs, sizeof(*g->pairs), pair_cmp);
    size_t w = 1;
    for (size_t r = 1; r < g->npairs; r++)
        if (pair_cmp(&g->pairs[r], &g->pairs[w - 1]) != 0)
            g->pairs[w++] = g->pairs[r];
    g->npairs = w;
}

static wp_status add_pair(resolve_ctx *c, grant_preset p, const char *schema)
{
    grant_effective *g = c->g;
    if (g->npairs == c->pairs_cap) {
        pairs_normalise(g); /* duplicates are common: compact before growing */
        if (g->npairs >= GRANT_PAIRS_MAX)
            return malformed(c, "too many (preset, schema) pairs");
    }
    if (g->npairs == c->pairs_cap) {
        size_t ncap = c->pairs_cap ? c->pairs_cap * 2 : 16;
        grant_pair *np = realloc(g->pairs, ncap * sizeof(*np));
        if (!np)
            return WP_ERR_NOMEM;
        g->pairs = np;
        c->pairs_cap = ncap;
    }
    grant_pair *dst = &g->pairs[g->npairs++];
    dst->preset = p;
    snprintf(dst->schema, sizeof(dst->schema), "%s", schema);
    return WP_OK;
}

static wp_status add_sql(resolve_ctx *c, const char *text)
{
    grant_effective *g = c->g;
    if (g->nsql >= GRANT_SQL_MAX * GRANT_RULES_MAX)
        return malformed(c, "too many sql templates");
    if (g->nsql == c->sql_cap) {
        size_t ncap = c->sql_cap ? c->sql_cap * 2 : 4;
        grant_sql *ns = realloc(g->sql, ncap * sizeof(*ns));
        if (!ns)
            return WP_ERR_NOMEM;
        g->sql = ns;
        c->sql_cap = ncap;
    }
    grant_sql *dst = &g->sql[g->nsql];
    if (!(dst->template_text = strdup(text)))
        return WP_ERR_NOMEM;
    char key[GRANT_ECHO_MAX + 4];
    echo_value(key, c->dbkey);
    snprintf(dst->origin, sizeof(dst->origin), "rule %zu, database %s", c->rule, key);
    g->nsql++;
    return WP_OK;
}

/* ---- limits --------------------------------------------------------------------- */

typedef int (*unit_parser)(const char *s, int64_t *out);

/* A limit is a non-negative integer (in units of int_scale) or a string for parse. */
static wp_status limit_value(resolve_ctx *c, json_t *lim, const char *key, int64_t int_scale,
                             unit_parser parse, int64_t *out)
{
    json_t *v = json_object_get(lim, key);
    *out = 0;
    if (!v || json_is_null(v))
        return WP_OK;
    if (json_is_integer(v)) {
        json_int_t n = json_integer_value(v);
        if (n < 0 || n > INT64_MAX / int_scale)
            return malformed(c, "limits.%s is out of range", key);
        *out = (int64_t)n * int_scale;
        return WP_OK;
    }
    if (parse && json_is_string(v) && json_string_length(v) <= GRANT_ECHO_MAX &&
        parse(json_string_value(v), out) == 0 && *out >= 0)
        return WP_OK;
    *out = 0;
    return malformed(c, "limits.%s must be %s", key,
                     parse ? "a non-negative integer or a unit string" : "a non-negative integer");
}

static void merge_limit(int64_t *acc, int64_t v)
{
    if (v > 0 && (*acc == 0 || v < *acc))
        *acc = v;
}

static wp_status parse_limits(resolve_ctx *c, json_t *rule, cfg_limits *lim)
{
    memset(lim, 0, sizeof(*lim));
    json_t *l = json_object_get(rule, "limits");
    if (!l || json_is_null(l))
        return WP_OK;
    if (!json_is_object(l))
        return malformed(c, "limits must be an object");
    wp_status st = limit_value(c, l, "max_conns", 1, NULL, &lim->max_conns_per_user);
    if (st == WP_OK)
        st = limit_value(c, l, "max_conn_duration", 1000, cfg_parse_duration,
                         &lim->max_conn_duration_ms);
    if (st == WP_OK)
        st = limit_value(c, l, "max_bytes_per_conn", 1, cfg_parse_size, &lim->max_bytes_per_conn);
    return st;
}

/* ---- rules ---------------------------------------------------------------------- */

/* obj[key] as an object; absent or null gives NULL with WP_OK. */
static wp_status sub_object(resolve_ctx *c, json_t *obj, const char *key, const char *path,
                            json_t **out)
{
    json_t *v = obj ? json_object_get(obj, key) : NULL;
    *out = NULL;
    if (!v || json_is_null(v))
        return WP_OK;
    if (!json_is_object(v))
        return malformed(c, "%s must be an object", path);
    *out = v;
    return WP_OK;
}

/* rule.backends[listener].pg.databases, or NULL when the rule does not cover it. */
static wp_status rule_databases(resolve_ctx *c, json_t *rule, const char *listener, json_t **dbs)
{
    json_t *backends, *l, *pg;
    char name[GRANT_ECHO_MAX + 4], path[256];
    echo_value(name, listener);
    *dbs = NULL;
    wp_status st = sub_object(c, rule, "backends", "backends", &backends);
    if (st != WP_OK || !backends)
        return st;
    snprintf(path, sizeof(path), "backends[\"%s\"]", name);
    if ((st = sub_object(c, backends, listener, path, &l)) != WP_OK || !l)
        return st;
    snprintf(path, sizeof(path), "backends[\"%s\"].pg", name);
    if ((st = sub_object(c, l, "pg", path, &pg)) != WP_OK || !pg)
        return st;
    snprintf(path, sizeof(path), "backends[\"%s\"].pg.databases", name);
    return sub_object(c, pg, "databases", path, dbs);
}

/* Checks that v is an array of 1..max strings, each at most maxlen bytes. */
static int string_array_ok(json_t *v, size_t max, size_t maxlen, int allow_empty)
{
    if (!json_is_array(v))
        return 0;
    size_t n = json_array_size(v);
    if (n > max || (n == 0 && !allow_empty))
        return 0;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(v, i);
        if (!json_is_string(e) || json_string_length(e) > maxlen)
            return 0;
    }
    return 1;
}

static wp_status entry_presets(resolve_ctx *c, json_t *entry, grant_preset *presets, size_t *n)
{
    json_t *perms = json_object_get(entry, "permissions");
    if (!perms || !string_array_ok(perms, GRANT_PERMS_MAX, GRANT_VALUE_MAX, 0))
        return malformed(c,
                         "databases[\"%s\"].permissions must be a non-empty array of "
                         "strings",
                         c->dbkey);
    *n = json_array_size(perms);
    for (size_t i = 0; i < *n; i++) {
        const char *name = json_string_value(json_array_get(perms, i));
        presets[i] = grant_preset_parse(name);
        if (presets[i] == GRANT_PRESET_NONE) {
            char v[GRANT_ECHO_MAX + 4];
            echo_value(v, name);
            wp_error_set(c->err, WP_SQLSTATE_INVALID_AUTH, "grant rule %zu: unknown preset \"%s\"",
                         c->rule, v);
            wp_error_hint(c->err, "did you mean \"%s\"?", closest_preset(name));
            return WP_ERR_INVALID;
        }
    }
    return WP_OK;
}

static wp_status entry_sql(resolve_ctx *c, json_t *entry)
{
    json_t *sql = json_object_get(entry, "sql");
    if (!sql || json_is_null(sql))
        return WP_OK;
    if (!string_array_ok(sql, GRANT_SQL_MAX, GRANT_SQL_LEN_MAX, 1))
        return malformed(c, "databases[\"%s\"].sql must be an array of strings", c->dbkey);
    for (size_t i = 0; i < json_array_size(sql); i++) {
        wp_status st = add_sql(c, json_string_value(json_array_get(sql, i)));
        if (st != WP_OK)
            return st;
    }
    return WP_OK;
}

static wp_status apply_entry(resolve_ctx *c, json_t *entry)
{
    if (!json_is_object(entry))
        return malformed(c, "databases[\"%s\"] must be an object", c->dbkey);
    grant_preset presets[GRANT_PERMS_MAX];
    size_t np = 0;
    wp_status st = entry_presets(c, entry, presets, &np);
    if (st != WP_OK)
        return st;
    json_t *schemas = json_object_get(entry, "schemas");
    if (schemas && !json_is_null(schemas) &&
        !string_array_ok(schemas, GRANT_SCHEMAS_MAX, GRANT_VALUE_MAX, 0))
        return malformed(c, "databases[\"%s\"].schemas must be a non-empty array of strings",
                         c->dbkey);
    size_t ns = json_is_array(schemas) ? json_array_size(schemas) : 1;
    for (size_t s = 0; s < ns; s++) {
        const char *schema =
            json_is_array(schemas) ? json_string_value(json_array_get(schemas, s)) : "public";
        if (!grant_schema_valid(schema)) {
            char v[GRANT_ECHO_MAX + 4];
            echo_value(v, schema);
            wp_error_set(c->err, WP_SQLSTATE_INVALID_AUTH,
                         "grant rule %zu: schema \"%s\" is not a valid identifier or is a "
                         "system schema",
                         c->rule, v);
            return WP_ERR_INVALID;
        }
        for (size_t p = 0; p < np; p++)
            if ((st = add_pair(c, presets[p], schema)) != WP_OK)
                return st;
    }
    return entry_sql(c, entry);
}

/* Records "rule:database-key" for the audit trail; a list that would overflow ends in
 * "..." rather than being cut mid-entry. */
static void note_match(grant_effective *g, size_t rule, const char *dbkey)
{
    size_t len = strlen(g->matched);
    char one[96];
    int n = snprintf(one, sizeof(one), "%s%zu:%.64s", len ? "," : "", rule, dbkey);
    if (n < 0)
        return;
    if (len + (size_t)n < sizeof(g->matched) - 4)
        memcpy(g->matched + len, one, (size_t)n + 1);
    else if (!strstr(g->matched, "..."))
        memcpy(g->matched + len, ",...", 5);
}

/* Applies one rule; *used is set when it granted something for this database. */
static wp_status apply_rule(resolve_ctx *c, json_t *rule, const char *listener,
                            const char *database, cfg_limits *lim, int *used)
{
    *used = 0;
    if (!json_is_object(rule))
        return malformed(c, "not a JSON object");
    wp_status st = parse_limits(c, rule, lim);
    json_t *dbs = NULL;
    if (st == WP_OK)
        st = rule_databases(c, rule, listener, &dbs);
    if (st != WP_OK || !dbs)
        return st;
    const char *keys[2] = {database, "*"};
    for (int k = 0; k < 2; k++) {
        if (k == 1 && strcmp(database, "*") == 0)
            break; /* the exact entry was the wildcard itself */
        json_t *entry = json_object_get(dbs, keys[k]);
        if (!entry)
            continue;
        c->dbkey = keys[k];
        if ((st = apply_entry(c, entry)) != WP_OK)
            return st;
        *used = 1;
        note_match(c->g, c->rule, keys[k]);
    }
    return WP_OK;
}

static void apply_downgrade(grant_effective *g, grant_preset max)
{
    g->downgrade = max;
    if (max == GRANT_PRESET_NONE)
        return;
    for (size_t i = 0; i < g->npairs; i++)
        if (g->pairs[i].preset > max)
            g->pairs[i].preset = max;
    pairs_normalise(g);
    /* A downgraded connection uses its own scoped role without raw SQL (3.3). */
    for (size_t i = 0; i < g->nsql; i++)
        free(g->sql[i].template_text);
    free(g->sql);
    g->sql = NULL;
    g->nsql = 0;
}

static wp_status resolve_rules(resolve_ctx *c, json_t *rules, const char *listener,
                               const char *database)
{
    cfg_limits *acc = &c->g->limits;
    size_t n = rules ? json_array_size(rules) : 0;
    if (rules && (!json_is_array(rules) || n > GRANT_RULES_MAX)) {
        wp_error_set(c->err, WP_SQLSTATE_INVALID_AUTH, "grant rules are malformed: %s",
                     json_is_array(rules) ? "too many rules" : "not an array");
        return WP_ERR_INVALID;
    }
    for (size_t i = 0; i < n; i++) {
        cfg_limits lim;
        int used;
        c->rule = i + 1;
        wp_status st = apply_rule(c, json_array_get(rules, i), listener, database, &lim, &used);
        if (st != WP_OK)
            return st;
        if (used) {
            merge_limit(&acc->max_conns_per_user, lim.max_conns_per_user);
            merge_limit(&acc->max_conn_duration_ms, lim.max_conn_duration_ms);
            merge_limit(&acc->max_bytes_per_conn, lim.max_bytes_per_conn);
        }
    }
    return WP_OK;
}

wp_status grant_resolve(json_t *rules, const char *listener, const char *database,
                        const cfg_limits *defaults, grant_preset downgrade, grant_effective **out,
                        wp_error *err)
{
    if (!listener || !database || !out || (int)downgrade < 0 || (int)downgrade > 3)
        return WP_ERR_INTERNAL;
    grant_effective *g = calloc(1, sizeof(*g));
    if (!g)
        return WP_ERR_NOMEM;
    resolve_ctx c = {.g = g, .err = err};
    wp_status st = resolve_rules(&c, rules, listener, database);
    if (st == WP_OK && g->npairs == 0) {
        char db[GRANT_ECHO_MAX + 4], l[GRANT_ECHO_MAX + 4];
        echo_value(db, database);
        echo_value(l, listener);
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH,
                     "no Waypoint grant for database \"%s\" on listener \"%s\"", db, l);
        st = WP_ERR_DENIED;
    }
    if (st != WP_OK) {
        if (st == WP_ERR_NOMEM)
            wp_error_set(err, WP_SQLSTATE_INTERNAL, "out of memory resolving grants");
        grant_free(g);
        return st;
    }
    pairs_normalise(g);
    if (defaults) {
        cfg_limits *l = &g->limits;
        if (!l->max_conns_per_user)
            l->max_conns_per_user = defaults->max_conns_per_user;
        if (!l->max_conn_duration_ms)
            l->max_conn_duration_ms = defaults->max_conn_duration_ms;
        if (!l->max_bytes_per_conn)
            l->max_bytes_per_conn = defaults->max_bytes_per_conn;
    }
    apply_downgrade(g, downgrade);
    *out = g;
    return WP_OK;
}

void grant_free(grant_effective *g)
{
    if (!g)
        return;
    for (size_t i = 0; i < g->nsql; i++)
        free(g->sql[i].template_text);
    free(g->sql);
    free(g->pairs);
    free(g);
}

/* ---- downgrade ------------------------------------------------------------------ */

static wp_status bad_downgrade(wp_error *err, const char *value, const char *token)
{
    char v[GRANT_ECHO_MAX + 4];
    echo_value(v, value);
    wp_error_set(err, WP_SQLSTATE_BAD_PARAM,
                 "invalid value for parameter \"waypoint_presets\": \"%s\"", v);
    if (token && *token)
        wp_error_hint(err, "did you mean \"%s\"?", closest_preset(token));
    else
        wp_error_hint(err, "Use readonly, readwrite or admin, or a comma-separated list.");
    return WP_ERR_INVALID;
}

wp_status grant_parse_downgrade(const char *value, grant_preset *out, wp_error *err)
{
    if (!value || !out)
        return WP_ERR_INTERNAL;
    size_t len = strnlen(value, GRANT_VALUE_MAX + 1);
    if (len > GRANT_VALUE_MAX)
        return bad_downgrade(err, value, NULL);
    char buf[GRANT_VALUE_MAX + 1];
    memcpy(buf, value, len + 1);
    grant_preset max = GRANT_PRESET_NONE;
    char *p = buf;
    /* strtok_r would merge ",," silently; walk the separators by hand instead. */
    for (;;) {
        char *comma = strchr(p, ',');
        if (comma)
            *comma = '\0';
        while (*p == ' ' || *p == '\t')
            p++;
        char *end = p + strlen(p);
        while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
            *--end = '\0';
        grant_preset g = grant_preset_parse(p);
        if (g == GRANT_PRESET_NONE)
            return bad_downgrade(err, value, p);
        if (g > max)
            max = g;
        if (!comma)
            break;
        p = comma + 1;
    }
    *out = max;
    return WP_OK;
}

/* One word of the options string: its raw byte span and its unescaped text. */
typedef struct opt_word {
    size_t start, end;
    char *text;
    int action; /* 0 keep, 1 drop, 2 keep only text[0..keep) */
    size_t keep;
} opt_word;

static void free_words(opt_word *w, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(w[i].text);
    free(w);
}

/* pg_split_opts: whitespace separates words, a backslash takes the next byte literally. */
static wp_status split_words(const char *s, opt_word **out, size_t *nout)
{
    size_t len = strlen(s), n = 0;
    opt_word *w = calloc(len / 2 + 1, sizeof(*w));
    if (!w)
        return WP_ERR_NOMEM;
    size_t i = 0;
    while (i < len) {
        while (i < len && isspace((unsigned char)s[i]))
            i++;
        if (i >= len)
            break;
        opt_word *cur = &w[n++];
        cur->start = i;
        size_t end = i;
        while (end < len && !isspace((unsigned char)s[end]))
            end += (s[end] == '\\' && end + 1 < len) ? 2 : 1;
        /* Sized by the raw span: total allocation stays linear in the options length. */
        if (!(cur->text = malloc(end - i + 1))) {
            free_words(w, n);
            return WP_ERR_NOMEM;
        }
        size_t t = 0;
        while (i < end) {
            if (s[i] == '\\' && i + 1 < len)
                i++;
            cur->text[t++] = s[i++];
        }
        cur->text[t] = '\0';
        cur->end = i;
    }
    *out = w;
    *nout = n;
    return WP_OK;
}

/* When arg ("name=value" of -c or --) sets waypoint_presets / waypoint.presets, returns
 * 1 and the value (NULL when there is no '='). Names compare like GUC names:
 * case-insensitive, '-' read as '_'. */
static int is_presets_setting(const char *arg, const char **value)
{
    static const char *const names[] = {"waypoint_presets", "waypoint.presets"};
    const char *eq = strchr(arg, '=');
    size_t n = eq ? (size_t)(eq - arg) : strlen(arg);
    for (int k = 0; k < 2; k++) {
        if (n != strlen(names[k]))
            continue;
        size_t i = 0;
        for (; i < n; i++) {
            char c = (char)tolower((unsigned char)arg[i]);
            if ((c == '-' ? '_' : c) != names[k][i])
                break;
        }
        if (i == n) {
            *value = eq ? eq + 1 : NULL;
            return 1;
        }
    }
    return 0;
}

/* Switches of the postgres server that take an argument (process_postgres_switches). */
static int takes_arg(char ch)
{
    return ch && strchr("BCcDdfhkNprStvW-", ch) != NULL;
}

static wp_status take_request(const char *value, grant_preset *min, wp_error *err)
{
    grant_preset p;
    wp_status st = grant_parse_downgrade(value ? value : "", &p, err);
    if (st == WP_OK && (*min == GRANT_PRESET_NONE || p < *min))
        *min = p;
    return st;
}

/* getopt over the words; marks our switches for removal and records their values. */
static wp_status scan_switches(opt_word *w, size_t n, grant_preset *min, wp_error *err)
{
    for (size_t i = 0; i < n; i++) {
        const char *t = w[i].text;
        if (strcmp(t, "--") == 0)
            break; /* getopt stops here */
        if (t[0] != '-' || t[1] == '\0')
            continue; /* not an option; glibc getopt permutes past it */
        for (size_t k = 1; t[k]; k++) {
            if (!takes_arg(t[k]))
                continue;
            int next = t[k + 1] == '\0';
            const char *arg = next ? (i + 1 < n ? w[i + 1].text : NULL) : t + k + 1;
            const char *value;
            if (arg && (t[k] == 'c' || t[k] == '-') && is_presets_setting(arg, &value)) {
                wp_status st = take_request(value, min, err);
                if (st != WP_OK)
                    return st;
                w[i].action = k == 1 ? 1 : 2;
                w[i].keep = k;
                if (next)
                    w[i + 1].action = 1;
            }
            if (next && arg)
                i++;
            break;
        }
    }
    return WP_OK;
}

static void put_escaped(char **p, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (isspace((unsigned char)s[i]) || s[i] == '\\')
            *(*p)++ = '\\';
        *(*p)++ = s[i];
    }
}

/* Rebuilds options without the dropped words. Kept words keep their raw bytes and the
 * whitespace that preceded them; leading and trailing whitespace are kept as well. */
static char *rebuild_options(const char *s, opt_word *w, size_t n)
{
    size_t len = strlen(s);
    char *out = malloc(2 * len + 1);
    if (!out)
        return NULL;
    char *p = out;
    size_t first = n ? w[0].start : len;
    memcpy(p, s, first);
    p += first;
    int emitted = 0;
    for (size_t i = 0; i < n; i++) {
        if (w[i].action == 1)
            continue;
        if (emitted) {
            size_t gap = i ? w[i].start - w[i - 1].end : 0;
            memcpy(p, s + w[i].start - gap, gap);
            p += gap;
        }
        if (w[i].action == 2)
            put_escaped(&p, w[i].text, w[i].keep);
        else {
            memcpy(p, s + w[i].start, w[i].end - w[i].start);
            p += w[i].end - w[i].start;
        }
        emitted = 1;
    }
    size_t last = n ? w[n - 1].end : len;
    memcpy(p, s + last, len - last);
    p += len - last;
    *p = '\0';
    return out;
}

static wp_status options_downgrade(const char *options, grant_preset *min, char **options_out,
                                   wp_error *err)
{
    if (strnlen(options, GRANT_OPTIONS_MAX + 1) > GRANT_OPTIONS_MAX) {
        wp_error_set(err, WP_SQLSTATE_BAD_PARAM, "options parameter is too long");
        return WP_ERR_INVALID;
    }
    opt_word *w;
    size_t n;
    wp_status st = split_words(options, &w, &n);
    if (st != WP_OK)
        return st;
    st = scan_switches(w, n, min, err);
    int changed = 0;
    for (size_t i = 0; i < n; i++)
        changed |= w[i].action != 0;
    if (st == WP_OK) {
        *options_out = changed ? rebuild_options(options, w, n) : strdup(options);
        if (!*options_out)
            st = WP_ERR_NOMEM;
    }
    free_words(w, n);
    return st;
}

wp_status grant_extract_downgrade(const char *param_value, const char *options, grant_preset *out,
                                  char **options_out, wp_error *err)
{
    if (!out || !options_out)
        return WP_ERR_INTERNAL;
    *out = GRANT_PRESET_NONE;
    *options_out = NULL;
    grant_preset min = GRANT_PRESET_NONE;
    wp_status st = WP_OK;
    if (param_value)
        st = take_request(param_value, &min, err);
    char *opts = NULL;
    if (st == WP_OK && options)
        st = options_downgrade(options, &min, &opts, err);
    if (st != WP_OK) {
        if (st == WP_ERR_NOMEM)
            wp_error_set(err, WP_SQLSTATE_INTERNAL, "out of memory reading options");
        free(opts);
        return st;
    }
    *out = min;
    *options_out = opts;
    return WP_OK;
}

int grant_narrows(const grant_effective *from, const grant_effective *to)
{
    for (size_t i = 0; i < from->npairs; i++) {
        int covered = 0;
        for (size_t k = 0; k < to->npairs && !covered; k++)
            covered = strcmp(from->pairs[i].schema, to->pairs[k].schema) == 0 &&
                      to->pairs[k].preset >= from->pairs[i].preset;
        if (!covered)
            return 1;
    }
    for (size_t i = 0; i < from->nsql; i++) {
        int kept = 0;
        for (size_t k = 0; k < to->nsql && !kept; k++)
            kept = strcmp(from->sql[i].template_text, to->sql[k].template_text) == 0;
        if (!kept)
            return 1;
    }
    return 0;
}
