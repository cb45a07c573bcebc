/*
 * prov_sql: the pure half of provisioning: dialect choices, group-role names and
 * records, and the SQL text provisioning sends. Nothing here touches a connection, so
 * the unit tests pin every choice down without a server.
 *
 * SQL text here never contains a caller-controlled value: the builders take identifiers
 * and literals that provision.c already quoted with PQescapeIdentifier/PQescapeLiteral,
 * and the fixed queries take their values as $n parameters.
 */
#include "prov_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scram.h"

/* ---- dialect choices ------------------------------------------------------------- */

prov_dialect prov_dialect_from_version(const char *version)
{
    return version && strstr(version, "CockroachDB") ? PROV_DIALECT_COCKROACH
                                                     : PROV_DIALECT_POSTGRES;
}

prov_lock_kind prov_lock_strategy(prov_dialect d)
{
    /* CockroachDB has no advisory locks: a row lock in a lock table stands in. */
    return d == PROV_DIALECT_COCKROACH ? PROV_LOCK_TABLE : PROV_LOCK_ADVISORY;
}

prov_record_kind prov_record_strategy(prov_dialect d)
{
    /* CockroachDB has no COMMENT ON ROLE: records live in a waypoint_roles table. */
    return d == PROV_DIALECT_COCKROACH ? PROV_RECORD_TABLE : PROV_RECORD_COMMENT;
}

bool prov_cleanup_supported(prov_dialect d)
{
    return d == PROV_DIALECT_POSTGRES;
}

int prov_serialization_retries(prov_dialect d)
{
    return d == PROV_DIALECT_COCKROACH ? 5 : 0;
}

bool prov_pwenc_is_md5(const char *setting)
{
    return setting && strcmp(setting, "md5") == 0;
}

const char *prov_sslmode(cfg_backend_tls t)
{
    switch (t) {
    case CFG_BTLS_DISABLE:
        return "disable";
    case CFG_BTLS_REQUIRE:
        return "require";
    case CFG_BTLS_VERIFY_FULL:
        return "verify-full";
    case CFG_BTLS_PREFER:
    default:
        return "prefer";
    }
}

/* ---- names and records ------------------------------------------------------------- */

/* Preset names as stored in group names and records: a persistent on-server format, so
 * spelled out here rather than borrowed from the grant module's display names. */
static const char *preset_name(grant_preset p)
{
    switch (p) {
    case GRANT_PRESET_READONLY:
        return "readonly";
    case GRANT_PRESET_READWRITE:
        return "readwrite";
    case GRANT_PRESET_ADMIN:
        return "admin";
    default:
        return NULL;
    }
}

int prov_group_name(const char *prefix, const char *database, const char *schema,
                    grant_preset preset, char out[ID_ROLE_MAX + 1])
{
    const char *pname = preset_name(preset);
    if (!prefix || !database || !schema || !pname || preset == GRANT_PRESET_NONE)
        return -1;
    size_t dl = strlen(database), sl = strlen(schema);
    unsigned char *buf = malloc(dl + 1 + sl);
    if (!buf)
        return -1;
    memcpy(buf, database, dl);
    buf[dl] = '\0'; /* NUL separator: (db "a b", schema "c") != (db "a", schema "b c") */
    memcpy(buf + dl + 1, schema, sl);
    unsigned char dig[32];
    int rc = wp_sha256(buf, dl + 1 + sl, dig) == WP_OK ? 0 : -1;
    free(buf);
    if (rc != 0)
        return -1;
    char hex[11];
    for (int i = 0; i < 5; i++)
        snprintf(hex + 2 * i, 3, "%02x", dig[i]);
    size_t tail = strlen("g_") + 10 + 1 + strlen(pname);
    int plen = (int)strlen(prefix);
    if ((size_t)plen + tail > ID_ROLE_MAX)
        plen = (int)(ID_ROLE_MAX - tail);
    snprintf(out, ID_ROLE_MAX + 1, "%.*sg_%s_%s", plen, prefix, hex, pname);
    return 0;
}

void prov_orphans_name(const char *prefix, char out[ID_ROLE_MAX + 1])
{
    /* No '_' after the prefix: caller and group names always have one, so no clash. */
    static const char tail[] = "orphans";
    int plen = (int)strlen(prefix);
    if ((size_t)plen + strlen(tail) > ID_ROLE_MAX)
        plen = (int)(ID_ROLE_MAX - strlen(tail));
    snprintf(out, ID_ROLE_MAX + 1, "%.*s%s", plen, prefix, tail);
}

char *prov_group_record(const char *database, const char *schema, grant_preset preset)
{
    const char *pname = preset_name(preset);
    if (!database || !schema || !pname)
        return NULL;
    size_t n = strlen(PROV_GROUP_RECORD_PREFIX) + 3 * (strlen(database) + strlen(schema)) +
               strlen(pname) + 32;
    char *rec = malloc(n);
    if (!rec)
        return NULL;
    char *p = rec + sprintf(rec, "%sdb=", PROV_GROUP_RECORD_PREFIX);
    p = id_record_escape(p, database);
    p += sprintf(p, " schema=");
    p = id_record_escape(p, schema);
    sprintf(p, " preset=%s", pname);
    return rec;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

int prov_record_database(const char *record, char *out, size_t outsz)
{
    if (!record || !prov_record_is_role(record) || outsz == 0)
        return -1;
    /* Values are percent-encoded (no spaces, no '='), so " db=" starts exactly one field. */
    const char *f = strstr(record, " db=");
    if (!f)
        return -1;
    f += 4;
    size_t n = 0;
    while (*f && *f != ' ') {
        int c = (unsigned char)*f;
        if (c == '%') {
            int hi = hexval(f[1]), lo = hi < 0 ? -1 : hexval(f[2]);
            if (hi < 0 || lo < 0)
                return -1;
            c = hi * 16 + lo;
            f += 3;
        } else {
            f++;
        }
        if (c == 0 || n + 1 >= outsz)
            return -1;
        out[n++] = (char)c;
    }
    out[n] = '\0';
    return n > 0 ? 0 : -1;
}

bool prov_record_is_role(const char *comment)
{
    return comment &&
           strncmp(comment, PROV_ROLE_RECORD_PREFIX, strlen(PROV_ROLE_RECORD_PREFIX)) == 0;
}

bool prov_record_is_group(const char *comment)
{
    return comment &&
           strncmp(comment, PROV_GROUP_RECORD_PREFIX, strlen(PROV_GROUP_RECORD_PREFIX)) == 0;
}

/* ---- SQL text ---------------------------------------------------------------------- */

/* $1 schema name -> quoted lists of the tables and of the sequences in it that the
 * current (admin) role may grant on, and how many it may not. Quoting is the server's
 * own (format %I). */
const char PROV_SQL_GRANTABLE[] =
    "SELECT coalesce(string_agg(format('%I.%I', n.nspname, c.relname), ', ') FILTER (WHERE "
    "c.relkind <> 'S' AND g), ''), coalesce(string_agg(format('%I.%I', n.nspname, c.relname), "
    "', ') FILTER (WHERE c.relkind = 'S' AND g), ''), count(*) FILTER (WHERE NOT g) FROM "
    "pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, LATERAL (SELECT CASE WHEN "
    "c.relkind = 'S' THEN has_sequence_privilege(c.oid, 'SELECT WITH GRANT OPTION') ELSE "
    "has_table_privilege(c.oid, 'SELECT WITH GRANT OPTION') END AS g) AS gr WHERE n.nspname = "
    "$1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')";

char *prov_sql_group_privileges(grant_preset preset, const char *qs, const char *qg,
                                const char *qdb, const char *tables, const char *seqs)
{
    const char *schema_priv, *table_priv, *seq_priv;
    switch (preset) {
    case GRANT_PRESET_READONLY:
        schema_priv = "USAGE", table_priv = "SELECT", seq_priv = "SELECT";
        break;
    case GRANT_PRESET_READWRITE:
        schema_priv = "USAGE", table_priv = "SELECT, INSERT, UPDATE, DELETE";
        seq_priv = "SELECT, USAGE";
        break;
    case GRANT_PRESET_ADMIN:
        schema_priv = "USAGE, CREATE", table_priv = "ALL PRIVILEGES";
        seq_priv = "ALL PRIVILEGES";
        break;
    default:
        return NULL;
    }
    /* Default privileges cover tables the admin creates later. Existing relations are
     * named explicitly (tables, sequences: lists of relations the admin may grant on),
     * because ON ALL TABLES IN SCHEMA fails outright on a relation the admin has no
     * rights on at all, and one such table must not lock every caller out. */
#define GROUP_PRIV_FMT                                                                             \
    "GRANT CONNECT ON DATABASE %s TO %s; "                                                         \
    "GRANT %s ON SCHEMA %s TO %s; "                                                                \
    "ALTER DEFAULT PRIVILEGES IN SCHEMA %s GRANT %s ON TABLES TO %s; "                             \
    "ALTER DEFAULT PRIVILEGES IN SCHEMA %s GRANT %s ON SEQUENCES TO %s"
    char *sql = NULL, *t = NULL, *q = NULL;
    if (asprintf(&sql, GROUP_PRIV_FMT, qdb, qg, schema_priv, qs, qg, qs, table_priv, qg, qs,
                 seq_priv, qg) < 0)
        return NULL;
    if (tables && tables[0] &&
        asprintf(&t, "; GRANT %s ON TABLE %s TO %s", table_priv, tables, qg) < 0)
        t = NULL, tables = NULL;
    if (seqs && seqs[0] && asprintf(&q, "; GRANT %s ON SEQUENCE %s TO %s", seq_priv, seqs, qg) < 0)
        q = NULL, seqs = NULL;
    char *all = NULL;
    bool ok = (!tables || !tables[0] || t) && (!seqs || !seqs[0] || q) &&
              asprintf(&all, "%s%s%s", sql, t ? t : "", q ? q : "") >= 0;
    free(sql);
    free(t);
    free(q);
    return ok ? all : NULL;
}

/* Columns: exists, record (NULL unless the admin made the role, see PROV_SQL_ADMIN_MADE),
 * elevated attributes, memberships JSON [[name, record, needs options fixed]] (the last
 * from @MEMBERFIX@: on PostgreSQL 16+, a membership the admin granted whose options are
 * not INHERIT TRUE, SET FALSE, ADMIN FALSE; else false),
 * VALID UNTIL text (server clock), schema JSON [[name, nsp oid, changed, fingerprint]],
 * owned JSON [[schema, objects]].
 * PostgreSQL: "changed" = a relation of the kinds grants cover has an OID above the
 * group's watermark (an index range scan on pg_class_oid_index: cost follows the number
 * of new relations, not of all tables); fingerprint = max(pg_class.oid). The upper
 * bound changes nothing but the plan: both queries are prepared, and a generic plan
 * prices a lone "oid > $w" at a third of pg_class and scans all of it, while a range of
 * two unknown bounds is priced as narrow and gets the index.
 * "owned": the schemas (temp schemas left out: their objects die with the session) in
 * which the role owns objects of this database. pg_shdepend is read through its index on
 * (refclassid, refobjid), so the cost follows what the role owns (usually nothing), not
 * the number of tables; the schema comes from the object's own catalog row for the
 * common classes, pg_identify_object for the rest (no schema: a large object, left out). */
/* clang-format off */
/* A role's (or group's) record: shobj_description's body as a plain subquery, which the
 * planner folds in (the SQL function runs through the function executor per row). */
#define SHDESC(X) "(SELECT d.description FROM pg_shdescription d WHERE d.objoid = " X \
    " AND d.classoid = 'pg_catalog.pg_authid'::regclass)"
/* Columns 1-5 and the start of 6, shared by the full and the reuse form. */
#define STATE_HEAD_PG \
    "SELECT r.oid IS NOT NULL, " \
    "CASE WHEN " PROV_SQL_ADMIN_MADE("r.oid") " THEN " SHDESC("r.oid") " END, " \
    "coalesce(r.rolsuper OR r.rolcreatedb OR r.rolcreaterole OR r.rolreplication " \
    "OR r.rolbypassrls, false), " \
    "(SELECT coalesce(json_agg(json_build_array(g.rolname, " \
    SHDESC("g.oid") ", @MEMBERFIX@)), '[]'::json) " \
    "FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid), " \
    "(now() + make_interval(secs => $2::float8 / 1000))::text, " \
    "(SELECT coalesce(json_agg(json_build_array(s.name, n.oid::int8, " \
    "EXISTS (SELECT 1 FROM pg_class c WHERE c.oid > s.w::oid " \
    "AND c.oid <= (SELECT max(oid) FROM pg_class) AND c.relnamespace = n.oid " \
    "AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S'))"
#define STATE_SCHEMAS_END_PG \
    ") ORDER BY s.i), '[]'::json) " \
    "FROM json_to_recordset($3::json) AS s(i int8, name text, w int8) " \
    "LEFT JOIN pg_namespace n ON n.nspname = s.name), "
#define STATE_FROM_PG "FROM (SELECT 1) AS one LEFT JOIN pg_roles r ON r.rolname = $1::name"

static const char SQL_STATE_PG[] =
    STATE_HEAD_PG ", (SELECT max(oid)::int8 FROM pg_class)" STATE_SCHEMAS_END_PG
    "(SELECT coalesce(json_agg(json_build_array(n.nspname, o.cnt)), '[]'::json) "
    "FROM (SELECT x.nsp, count(*) AS cnt FROM (SELECT CASE d.classid "
    "WHEN 'pg_catalog.pg_class'::regclass THEN "
    "(SELECT c.relnamespace FROM pg_class c WHERE c.oid = d.objid) "
    "WHEN 'pg_catalog.pg_proc'::regclass THEN "
    "(SELECT f.pronamespace FROM pg_proc f WHERE f.oid = d.objid) "
    "WHEN 'pg_catalog.pg_type'::regclass THEN "
    "(SELECT t.typnamespace FROM pg_type t WHERE t.oid = d.objid) "
    "ELSE (SELECT n2.oid FROM pg_namespace n2 WHERE n2.nspname = "
    "(pg_identify_object(d.classid, d.objid, d.objsubid)).schema) END AS nsp "
    "FROM pg_shdepend d WHERE d.refclassid = 'pg_catalog.pg_authid'::regclass "
    "AND d.refobjid = r.oid AND d.deptype = 'o' AND d.dbid = "
    "(SELECT db.oid FROM pg_database db WHERE db.datname = current_database())) AS x "
    "GROUP BY x.nsp) AS o JOIN pg_namespace n ON n.oid = o.nsp "
    "WHERE n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%') "
    STATE_FROM_PG;

/* The reuse check's form: the same columns without what only provisioning reads (the
 * relation fingerprint, the owned objects); prepared, it costs the backend less than
 * half of the full form. */
static const char SQL_REUSE_PG[] = STATE_HEAD_PG STATE_SCHEMAS_END_PG "'[]'::json " STATE_FROM_PG;
/* clang-format on */

/* $1 role name, $2 JSON array of schema names -> the objects of this database that the
 * role owns in those schemas, as (pg_identify_object type, identity, quoted schema, can
 * the admin grant CREATE on the schema), ordered by schema. Left out: schemas where the role holds
 * CREATE anyway (a raw SQL or hand-made grant: what it creates there is rightly its own), and
 * sequences linked to a table (serial, identity: they follow their table, and ALTER SEQUENCE
 * refuses them). identity is quoted by the server and valid SQL after ALTER <kind>. */
const char PROV_SQL_OWNED_OBJECTS[] =
    "SELECT x.type, x.identity, quote_ident(x.schema), "
    "has_schema_privilege(n.oid, 'CREATE WITH GRANT OPTION') FROM pg_roles r "
    "JOIN pg_shdepend d ON d.refclassid = 'pg_catalog.pg_authid'::regclass AND d.refobjid = r.oid "
    "AND d.deptype = 'o' AND d.dbid = "
    "(SELECT db.oid FROM pg_database db WHERE db.datname = current_database()), "
    "LATERAL pg_identify_object(d.classid, d.objid, d.objsubid) AS x "
    "JOIN pg_namespace n ON n.nspname = x.schema "
    "WHERE r.rolname = $1::name "
    "AND x.schema IN (SELECT value FROM json_array_elements_text($2::json)) "
    "AND NOT has_schema_privilege(r.oid, n.oid, 'CREATE') "
    "AND NOT EXISTS (SELECT 1 FROM pg_class s JOIN pg_depend l ON l.classid = "
    "'pg_catalog.pg_class'::regclass AND l.objid = s.oid AND l.refclassid = "
    "'pg_catalog.pg_class'::regclass AND l.refobjid <> s.oid AND l.deptype IN ('a', 'i') "
    "WHERE d.classid = 'pg_catalog.pg_class'::regclass AND s.oid = d.objid AND s.relkind = 'S') "
    "ORDER BY 3, 2";

/* ALTER <keyword> ... OWNER TO for the pg_identify_object types a role can own in a
 * schema it may CREATE in (operator classes and families need a superuser). Anything
 * else returns NULL: the caller logs and leaves it rather than guess SQL. */
const char *prov_owner_keyword(const char *type)
{
    static const char *const map[][2] = {
        {"table", "TABLE"},
        {"sequence", "SEQUENCE"},
        {"view", "VIEW"},
        {"materialized view", "MATERIALIZED VIEW"},
        {"foreign table", "FOREIGN TABLE"},
        {"function", "ROUTINE"},
        {"procedure", "ROUTINE"},
        {"aggregate", "ROUTINE"},
        {"type", "TYPE"},
        {"domain", "DOMAIN"},
        {"collation", "COLLATION"},
        {"conversion", "CONVERSION"},
        {"operator", "OPERATOR"},
        {"text search dictionary", "TEXT SEARCH DICTIONARY"},
        {"text search configuration", "TEXT SEARCH CONFIGURATION"},
        {"statistics object", "STATISTICS"},
    };
    for (size_t i = 0; type && i < sizeof map / sizeof *map; i++)
        if (strcmp(map[i][0], type) == 0)
            return map[i][1];
    return NULL;
}

/* CockroachDB: records come from waypoint_roles (its quoted qualified name replaces
 * every @RECORDS@); OIDs are not monotonic, so the
 * fingerprint is the relation count of the schema and "changed" compares it. */
static const char SQL_STATE_CRDB[] =
    "SELECT r.oid IS NOT NULL, (SELECT record FROM @RECORDS@ w WHERE w.role_name = $1), "
    "coalesce(r.rolsuper OR r.rolcreatedb OR r.rolcreaterole OR r.rolreplication "
    "OR r.rolbypassrls, false), "
    "(SELECT coalesce(json_agg(json_build_array(g.rolname, "
    "(SELECT record FROM @RECORDS@ w2 WHERE w2.role_name = g.rolname))), '[]'::json) "
    "FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid), "
    "(now() + ($2::int8 * INTERVAL '1 millisecond'))::text, "
    "(SELECT coalesce(json_agg(json_build_array(s.name, n.oid::int8, "
    "(SELECT count(*) FROM pg_class c WHERE c.relnamespace = n.oid "
    "AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')) != s.w, "
    "(SELECT count(*) FROM pg_class c WHERE c.relnamespace = n.oid "
    "AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S'))) ORDER BY s.i), '[]'::json) "
    "FROM json_to_recordset($3::json) AS s(i int8, name text, w int8) "
    "LEFT JOIN pg_namespace n ON n.nspname = s.name), '[]'::json "
    "FROM (SELECT 1) AS one LEFT JOIN pg_roles r ON r.rolname = $1::name";

/* tmpl with every tok replaced by val (malloc'd). */
static char *replace_all(const char *tmpl, const char *tok, const char *val)
{
    size_t toklen = strlen(tok), vlen = strlen(val), n = 1;
    for (const char *s = tmpl; *s;)
        if (strncmp(s, tok, toklen) == 0) {
            n += vlen;
            s += toklen;
        } else {
            n++;
            s++;
        }
    char *out = malloc(n), *o = out;
    if (!out)
        return NULL;
    for (const char *s = tmpl; *s;) {
        if (strncmp(s, tok, toklen) == 0) {
            memcpy(o, val, vlen);
            o += vlen;
            s += toklen;
        } else {
            *o++ = *s++;
        }
    }
    *o = '\0';
    return out;
}

/* The memberships' third column: a grant of the admin's that still allows SET ROLE (or
 * lacks INHERIT, or carries ADMIN), which reconcile re-grants with the right options. */
static const char MEMBER_FIX_PG16[] =
    "(m.grantor = (SELECT oid FROM pg_roles WHERE rolname = current_user) "
    "AND (m.set_option OR NOT m.inherit_option OR m.admin_option))";

char *prov_sql_role_state(prov_dialect d, const char *qrecords, bool member_options)
{
    if (d != PROV_DIALECT_COCKROACH)
        return replace_all(SQL_STATE_PG, "@MEMBERFIX@", member_options ? MEMBER_FIX_PG16 : "false");
    if (!qrecords)
        return NULL;
    return replace_all(SQL_STATE_CRDB, "@RECORDS@", qrecords);
}

char *prov_sql_reuse_state(prov_dialect d, const char *qrecords, bool member_options)
{
    if (d != PROV_DIALECT_COCKROACH)
        return replace_all(SQL_REUSE_PG, "@MEMBERFIX@", member_options ? MEMBER_FIX_PG16 : "false");
    return prov_sql_role_state(d, qrecords, member_options);
}

bool prov_member_options(prov_dialect d, long server_version_num)
{
    return d == PROV_DIALECT_POSTGRES && server_version_num >= 160000;
}

const char *prov_sql_member_options(bool member_options)
{
    return member_options ? " WITH INHERIT TRUE, SET FALSE, ADMIN FALSE" : "";
}

const char *prov_sql_lock(prov_dialect d)
{
    return prov_lock_strategy(d) == PROV_LOCK_TABLE
               ? "SELECT name FROM waypoint_locks WHERE name = $1 FOR UPDATE"
               : "SELECT pg_advisory_lock(hashtextextended($1, 0))";
}

const char *prov_sql_unlock(prov_dialect d)
{
    return prov_lock_strategy(d) == PROV_LOCK_TABLE
               ? "COMMIT"
               : "SELECT pg_advisory_unlock(hashtextextended($1, 0))";
}
