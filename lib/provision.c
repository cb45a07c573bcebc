/*
 * provision: the caller's backend role, created or refreshed on every connection
 * (spec sections 3.2, 3.5, 4, 5 and 9).
 *
 * One prov_ensure_role() call, in the steady state, is four round trips on one pooled
 * admin connection to the TARGET database: take the per-role advisory lock, read the
 * role's state (record, attributes, group memberships, server-side expiry time and the
 * change marks of the granted schemas, all in one query), set the fresh password and
 * expiry, and (at lease release) unlock. No per-table work happens unless a granted
 * schema gained relations.
 *
 * Privileges are held by shared NOLOGIN group roles, one per (database, schema, preset),
 * each marked with a Waypoint record; the caller role is only ever a member of exactly
 * the groups of its (preset, schema) pairs. Narrowing a grant revokes a membership,
 * widening it grants one, and a group is re-granted ON ALL TABLES/SEQUENCES only when
 * the schema's relation set changed (an OID watermark per group, kept in memory).
 *
 * Every role operation for a role happens under its lock: an in-process keyed mutex
 * (so concurrent connects of one caller queue here, not in the pool) and a PostgreSQL
 * advisory lock taken in the role's own database (so several Waypoint instances, and
 * cleanup, serialize too). The lease keeps that connection checked out until the worker
 * has authenticated upstream, so the password cannot change in between.
 *
 * Safety rules: a role is only touched when its record equals this identity's record
 * exactly (else the hashed name is tried, else WP_ERR_CONFLICT); identifiers are quoted
 * with PQescapeIdentifier and DDL literals with PQescapeLiteral (DDL takes no
 * parameters); the password only ever reaches SQL as a SCRAM verifier or MD5 hash.
 */
#include "provision.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "prov_internal.h"
#include "rawsql.h"
#include "scram.h"

/* Cost of SCRAM's PBKDF2 on a 256-bit random secret buys nothing: nobody can brute
 * force the password from the verifier. A low count keeps every connect fast. */
#define PROV_SCRAM_ITERATIONS 64
/* Watermarks are re-proved this often with a full ALL TABLES grant, which also catches
 * a relation whose creating transaction committed with an OID below a watermark. */
#define PROV_GROUP_MAX_AGE_S 600
/* object_not_in_prerequisite_state: what PostgreSQL answers a login to a database that
 * does not allow connections. */
#define PROV_SQLSTATE_DB_CLOSED "55000"
/* Names of the statements every pooled admin session prepares (prov_pools_prepare). */
#define PREP_STATE "wp_state"
#define PREP_REUSE "wp_reuse"

/* A database whose schema public was checked for PUBLIC CREATE (check_public_create). */
typedef struct db_seen {
    struct db_seen *next;
    char name[]; /* flexible: database names are not bounded by the identifier limit */
} db_seen;

typedef struct group_cache {
    char name[ID_ROLE_MAX + 1];
    long long nsp_oid;
    long long watermark;
    time_t refreshed;
    struct group_cache *next;
} group_cache;

struct prov_ctx {
    prov_settings s;
    char *strs[7];
    prov_dialect dialect;
    bool md5;
    bool member_opts; /* PostgreSQL 16+: memberships WITH INHERIT TRUE, SET FALSE */
    prov_pools pools;
    prov_pools lockpools; /* CockroachDB: lock-table transactions, admin_database */
    prov_keylocks locks;
    pthread_mutex_t cache_mu; /* guards groups and public_checked */
    group_cache *groups;
    db_seen *public_checked; /* databases checked for PUBLIC CREATE on public */
    char *qrecords;          /* CockroachDB: quoted waypoint_roles table name */
    char *state_sql;         /* the role-state query: fixed once the dialect is known */
    char *reuse_sql;         /* its slim form for a parked session's reuse check */
    char ttl_ms[24];         /* user_ttl in ms, as the state query's $2 */
};

struct prov_lease {
    prov_ctx *p;
    char *db;
    PGconn *conn;
    PGconn *lock_conn; /* CockroachDB: holds the lock-table transaction */
    prov_keylock *kl;
    char lock_key[ID_ROLE_MAX + 32];
    char role[ID_ROLE_MAX + 1];
    char password[44];
    char verifier[SCRAM_VERIFIER_MAX]; /* SCRAM: made before the lock; MD5: in write_role */
    bool created;                      /* for the roles-created metric */
};

/* The role-state row, as read under the role's lock. */
typedef struct role_state {
    bool exists;
    char *record;
    bool elevated;
    json_t *members; /* [[group name, record], ...] */
    char valid_until[64];
    json_t *schemas; /* [[name, nsp oid|null, changed, fingerprint], ...] per pair */
    json_t *owned;   /* [[schema, objects], ...]: where the role owns objects (no temp) */
} role_state;

/* ---- small helpers ----------------------------------------------------------------- */

static void set_backend_err(wp_error *err, const char *what, PGconn *c)
{
    char msg[300];
    snprintf(msg, sizeof msg, "%s", c ? PQerrorMessage(c) : "no connection");
    size_t n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n')
        msg[--n] = '\0';
    log_kv(WP_LOG_ERROR, "prov_backend_error", "step", what, "error", msg, (char *)NULL);
    /* The backend's words stay in the log (and the detail, which is never sent). */
    wp_error_set(err, WP_SQLSTATE_CONN_FAILURE, "setting up access on the backend failed");
    wp_error_detail(err, "%s: %s", what, msg);
}

static const char *res_state(const PGresult *r)
{
    const char *s = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    return s ? s : "";
}

/* PQexecParams with text parameters; returns the result (caller clears) or NULL when
 * the command failed (the result is cleared; *sqlstate gets its SQLSTATE). */
static PGresult *run(PGconn *c, const char *sql, int n, const char *const *vals, char sqlstate[6])
{
    PGresult *r = PQexecParams(c, sql, n, NULL, vals, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
        if (sqlstate)
            strcpy(sqlstate, "00000");
        return r;
    }
    if (sqlstate)
        snprintf(sqlstate, 6, "%s", res_state(r));
    PQclear(r);
    return NULL;
}

/* Simple-query execution of our own multi-statement DDL (one implicit transaction). */
static bool run_ddl(PGconn *c, const char *sql, char sqlstate[6])
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (sqlstate)
        snprintf(sqlstate, 6, "%s", ok ? "00000" : res_state(r));
    PQclear(r);
    return ok;
}

static char *qident(PGconn *c, const char *s)
{
    char *q = PQescapeIdentifier(c, s, strlen(s));
    char *dup = q ? strdup(q) : NULL;
    PQfreemem(q);
    return dup;
}

static char *qlit(PGconn *c, const char *s)
{
    char *q = PQescapeLiteral(c, s, strlen(s));
    char *dup = q ? strdup(q) : NULL;
    PQfreemem(q);
    return dup;
}

/* printf into a fresh buffer. */
static char *fmt_sql(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *fmt_sql(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *out = NULL;
    if (vasprintf(&out, fmt, ap) < 0)
        out = NULL;
    va_end(ap);
    return out;
}

static void role_state_clear(role_state *st)
{
    free(st->record);
    json_decref(st->members);
    json_decref(st->schemas);
    json_decref(st->owned);
    memset(st, 0, sizeof *st);
}

/* ---- create / destroy ---------------------------------------------------------------- */

static char *dup_or_null(const char *s, bool *fail)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *fail = true;
    return d;
}

static wp_status detect_backend(prov_ctx *p, wp_error *err)
{
    PGconn *c = prov_connect(&p->s, p->s.admin_database, NULL, err);
    if (!c) {
        log_kv(WP_LOG_ERROR, "prov_admin_login_failed", "listener", p->s.listener_name, "error",
               err ? err->detail : "", (char *)NULL);
        return WP_ERR_BACKEND;
    }
    PGresult *r = run(c,
                      "SELECT version(), current_setting('password_encryption', true), "
                      "current_setting('server_version_num', true)",
                      0, NULL, NULL);
    if (!r) {
        set_backend_err(err, "detect", c);
        PQfinish(c);
        return WP_ERR_BACKEND;
    }
    p->dialect = prov_dialect_from_version(PQgetvalue(r, 0, 0));
    p->md5 = p->dialect == PROV_DIALECT_POSTGRES && prov_pwenc_is_md5(PQgetvalue(r, 0, 1));
    p->member_opts = prov_member_options(p->dialect, strtol(PQgetvalue(r, 0, 2), NULL, 10));
    PQclear(r);
    wp_status st = WP_OK;
    if (p->dialect == PROV_DIALECT_COCKROACH) {
        /* Records and locks live in two small tables in admin_database. */
        if (!run_ddl(c,
                     "CREATE TABLE IF NOT EXISTS waypoint_roles (role_name STRING PRIMARY KEY, "
                     "record STRING NOT NULL); CREATE TABLE IF NOT EXISTS waypoint_locks "
                     "(name STRING PRIMARY KEY)",
                     NULL)) {
            set_backend_err(err, "crdb_tables", c);
            st = WP_ERR_BACKEND;
        } else {
            char *qdb = qident(c, p->s.admin_database);
            p->qrecords = qdb ? fmt_sql("%s.public.waypoint_roles", qdb) : NULL;
            free(qdb);
            if (!p->qrecords)
                st = WP_ERR_NOMEM;
        }
    }
    PQfinish(c);
    if (st == WP_OK &&
        (!(p->state_sql = prov_sql_role_state(p->dialect, p->qrecords, p->member_opts)) ||
         !(p->reuse_sql = prov_sql_reuse_state(p->dialect, p->qrecords, p->member_opts))))
        st = WP_ERR_NOMEM;
    /* Prepared on every admin session of the per-database pools (not the lock pool:
     * these run only on pools connections). */
    if (st == WP_OK && (prov_pools_prepare(&p->pools, PREP_STATE, p->state_sql) != 0 ||
                        prov_pools_prepare(&p->pools, PREP_REUSE, p->reuse_sql) != 0))
        st = WP_ERR_INTERNAL;
    return st;
}

wp_status prov_create(const prov_settings *s, prov_ctx **out, wp_error *err)
{
    *out = NULL;
    prov_ctx *p = calloc(1, sizeof *p);
    if (!p)
        return WP_ERR_NOMEM;
    bool fail = false;
    p->s = *s;
    p->s.host = p->strs[0] = dup_or_null(s->host, &fail);
    p->s.admin_user = p->strs[1] = dup_or_null(s->admin_user, &fail);
    p->s.admin_password = p->strs[2] = dup_or_null(s->admin_password, &fail);
    p->s.admin_database = p->strs[3] =
        dup_or_null(s->admin_database ? s->admin_database : "postgres", &fail);
    p->s.backend_ca_file = p->strs[4] = dup_or_null(s->backend_ca_file, &fail);
    p->s.user_prefix = p->strs[5] = dup_or_null(s->user_prefix ? s->user_prefix : "wp_", &fail);
    p->s.listener_name = p->strs[6] = dup_or_null(s->listener_name ? s->listener_name : "", &fail);
    if (fail || !p->s.host || !p->s.admin_user) {
        for (int i = 0; i < 7; i++)
            free(p->strs[i]);
        free(p);
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "provisioning settings incomplete");
        return fail ? WP_ERR_NOMEM : WP_ERR_CONFIG;
    }
    if (p->s.user_ttl_ms <= 0)
        p->s.user_ttl_ms = 24LL * 3600 * 1000;
    snprintf(p->ttl_ms, sizeof p->ttl_ms, "%lld", (long long)p->s.user_ttl_ms);
    if (prov_pools_init(&p->pools, &p->s) != 0 || prov_pools_init(&p->lockpools, &p->s) != 0 ||
        prov_keylocks_init(&p->locks) != 0 || pthread_mutex_init(&p->cache_mu, NULL) != 0) {
        for (int i = 0; i < 7; i++)
            free(p->strs[i]);
        free(p);
        return WP_ERR_INTERNAL;
    }
    wp_status st = detect_backend(p, err);
    if (st != WP_OK) {
        prov_destroy(p);
        return st;
    }
    log_kv(WP_LOG_INFO, "prov_ready", "listener", p->s.listener_name, "dialect",
           p->dialect == PROV_DIALECT_COCKROACH ? "cockroachdb" : "postgres", "password_hash",
           p->md5 ? "md5" : "scram-sha-256", "group_set_role",
           p->member_opts ? "denied" : "allowed", (char *)NULL);
    *out = p;
    return WP_OK;
}

void prov_destroy(prov_ctx *p)
{
    if (!p)
        return;
    prov_pools_destroy(&p->pools);
    prov_pools_destroy(&p->lockpools);
    prov_keylocks_destroy(&p->locks);
    pthread_mutex_destroy(&p->cache_mu);
    for (group_cache *g = p->groups, *n; g; g = n) {
        n = g->next;
        free(g);
    }
    for (db_seen *d = p->public_checked, *n; d; d = n) {
        n = d->next;
        free(d);
    }
    for (int i = 0; i < 7; i++)
        free(p->strs[i]);
    free(p->qrecords);
    free(p->state_sql);
    free(p->reuse_sql);
    free(p);
}

prov_dialect prov_get_dialect(const prov_ctx *p)
{
    return p->dialect;
}

bool prov_groups_settable(const prov_ctx *p)
{
    return !p->member_opts;
}

/* The one "retry once on a dead admin connection": a pooled connection may have died
 * with a backend restart since it was last used, and only a query tells. Call after a
 * failed attempt number `attempt` on *c: when it was the first and *c is broken, *c is
 * replaced by a fresh connection from pools and true is returned (run it again).
 * Otherwise false, *c untouched; or, when no fresh connection could be had, false with
 * *c NULL, err set and the reconnect's SQLSTATE in sqlstate (may be NULL). */
static bool reconnect_once(prov_pools *pools, const char *db, PGconn **c, int attempt,
                           char *sqlstate, wp_error *err)
{
    if (attempt > 0 || !*c || PQstatus(*c) != CONNECTION_BAD)
        return false;
    prov_pool_put(pools, db, *c, true);
    *c = NULL;
    return prov_pool_get(pools, db, c, sqlstate, err) == WP_OK;
}

/* A checkout of db failed with sqlstate: a database dropped since its pool was made
 * shows as 3D000 on the reconnect, and is reported as PostgreSQL would. */
static wp_status checkout_failed(wp_error *err, const char *db, const char *sqlstate)
{
    if (strcmp(sqlstate, "3D000") != 0)
        return WP_ERR_BACKEND;
    wp_error_set(err, WP_SQLSTATE_UNDEFINED_DB, "database \"%s\" does not exist", db);
    return WP_ERR_NOT_FOUND;
}

/* ---- the per-role lock --------------------------------------------------------------- */

/* Takes the backend half of the role lock on *c (retrying once on a fresh connection if
 * the pooled one died with a backend restart). PostgreSQL: a session advisory lock.
 * CockroachDB: *c is a lock-pool connection left inside a transaction that holds the
 * lock row FOR UPDATE until release; 40001 is retried. */
static wp_status backend_lock(prov_ctx *p, prov_pools *pools, const char *db, PGconn **c,
                              const char *key, wp_error *err)
{
    const char *vals[1] = {key};
    bool table = prov_lock_strategy(p->dialect) == PROV_LOCK_TABLE;
    for (int attempt = 0;; attempt++) {
        PGresult *r = NULL;
        if (table) {
            for (int i = 0; i <= prov_serialization_retries(p->dialect) && !r; i++) {
                char ss[6] = "";
                if (run_ddl(*c, "BEGIN", ss) &&
                    (r = run(*c,
                             "INSERT INTO waypoint_locks (name) VALUES ($1) "
                             "ON CONFLICT DO NOTHING",
                             1, vals, ss)) != NULL) {
                    PQclear(r);
                    r = run(*c, prov_sql_lock(p->dialect), 1, vals, ss);
                }
                if (!r)
                    PQclear(PQexec(*c, "ROLLBACK"));
                if (!r && strcmp(ss, "40001") != 0)
                    break;
            }
        } else {
            r = run(*c, prov_sql_lock(p->dialect), 1, vals, NULL);
        }
        if (r) {
            PQclear(r);
            return WP_OK;
        }
        if (!reconnect_once(pools, db, c, attempt, NULL, err))
            break;
    }
    if (*c) /* else the reconnect failed and err says why */
        set_backend_err(err, "lock", *c);
    return WP_ERR_BACKEND;
}

static bool backend_unlock(prov_ctx *p, PGconn *c, const char *key)
{
    const char *vals[1] = {key};
    PGresult *r = run(c, prov_sql_unlock(p->dialect),
                      prov_lock_strategy(p->dialect) == PROV_LOCK_TABLE ? 0 : 1, vals, NULL);
    if (!r)
        log_kv(WP_LOG_WARN, "prov_unlock_failed", "key", key, (char *)NULL);
    PQclear(r);
    return r != NULL;
}

static void role_lock_key(char *out, size_t outsz, const char *role)
{
    snprintf(out, outsz, "waypoint:role:%s", role);
}

static wp_status take_backend_lock(prov_ctx *p, prov_lease *l, wp_error *err);
static wp_status ensure_orphans(prov_ctx *p, PGconn *c, char name[ID_ROLE_MAX + 1], wp_error *err);

/* ---- reading the role ---------------------------------------------------------------- */

/* JSON for $3: [{"name": schema, "w": watermark}] per pair, in pair order. */
static char *schemas_param(prov_ctx *p, const char *db, const grant_effective *g)
{
    json_t *arr = json_array();
    if (!arr)
        return NULL;
    for (size_t i = 0; i < g->npairs; i++) {
        char gname[ID_ROLE_MAX + 1];
        long long w = 0;
        if (prov_group_name(p->s.user_prefix, db, g->pairs[i].schema, g->pairs[i].preset, gname) ==
            0) {
            pthread_mutex_lock(&p->cache_mu);
            for (group_cache *c = p->groups; c; c = c->next)
                if (strcmp(c->name, gname) == 0)
                    w = c->watermark;
            pthread_mutex_unlock(&p->cache_mu);
        }
        json_array_append_new(arr, json_pack("{s:I,s:s,s:I}", "i", (json_int_t)i, "name",
                                             g->pairs[i].schema, "w", (json_int_t)w));
    }
    char *s = json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    return s;
}

static wp_status parse_state(PGresult *r, PGconn *c, role_state *st, wp_error *err)
{
    memset(st, 0, sizeof *st);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 || PQnfields(r) != 7) {
        set_backend_err(err, "read_role", c);
        return WP_ERR_BACKEND;
    }
    st->exists = PQgetvalue(r, 0, 0)[0] == 't';
    st->record = PQgetisnull(r, 0, 1) ? NULL : strdup(PQgetvalue(r, 0, 1));
    st->elevated = PQgetvalue(r, 0, 2)[0] == 't';
    st->members = json_loads(PQgetvalue(r, 0, 3), 0, NULL);
    snprintf(st->valid_until, sizeof st->valid_until, "%s", PQgetvalue(r, 0, 4));
    st->schemas = json_loads(PQgetvalue(r, 0, 5), 0, NULL);
    st->owned = json_loads(PQgetvalue(r, 0, 6), 0, NULL);
    if (!json_is_array(st->members) || !json_is_array(st->schemas) || !json_is_array(st->owned) ||
        (!PQgetisnull(r, 0, 1) && !st->record)) {
        role_state_clear(st);
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "backend provisioning failed");
        return WP_ERR_INTERNAL;
    }
    return WP_OK;
}

static wp_status read_state_as(prov_ctx *p, const char *stmt, PGconn *c, const char *role,
                               const char *schemas, role_state *st, wp_error *err)
{
    memset(st, 0, sizeof *st);
    const char *vals[3] = {role, p->ttl_ms, schemas ? schemas : "[]"};
    PGresult *r = PQexecPrepared(c, stmt, 3, vals, NULL, NULL, 0);
    wp_status rc = parse_state(r, c, st, err);
    PQclear(r);
    return rc;
}

static wp_status read_state(prov_ctx *p, PGconn *c, const char *role, const char *schemas,
                            role_state *st, wp_error *err)
{
    return read_state_as(p, PREP_STATE, c, role, schemas, st, err);
}

/* Next pipeline result for one query: its result, then the NULL that ends it, then the
 * PIPELINE_SYNC of its own sync point. Returns the result (caller clears) or NULL. */
static PGresult *pipeline_take(PGconn *c)
{
    PGresult *r = PQgetResult(c), *x;
    while ((x = PQgetResult(c)) != NULL) /* the NULL ends this query's results */
        PQclear(x);
    x = PQgetResult(c); /* PGRES_PIPELINE_SYNC */
    PQclear(x);
    return r;
}

/* PostgreSQL: advisory lock and state read in one round trip. Two sync points make them
 * two transactions, so the read's snapshot is taken after the lock is granted. */
static wp_status pipelined_lock_read(prov_ctx *p, PGconn *c, const char *key, const char *role,
                                     const char *schemas, role_state *st, wp_error *err)
{
    const char *kv[1] = {key}, *vals[3] = {role, p->ttl_ms, schemas ? schemas : "[]"};
    bool sent = PQenterPipelineMode(c) &&
                PQsendQueryParams(c, prov_sql_lock(p->dialect), 1, NULL, kv, NULL, NULL, 0) &&
                PQpipelineSync(c) && PQsendQueryPrepared(c, PREP_STATE, 3, vals, NULL, NULL, 0) &&
                PQpipelineSync(c);
    PGresult *lr = sent ? pipeline_take(c) : NULL;
    PGresult *sr = sent ? pipeline_take(c) : NULL;
    PQexitPipelineMode(c);
    wp_status rc = WP_ERR_BACKEND;
    if (lr && PQresultStatus(lr) == PGRES_TUPLES_OK)
        rc = parse_state(sr, c, st, err);
    else
        set_backend_err(err, "lock", c);
    PQclear(lr);
    PQclear(sr);
    return rc;
}

/* Takes the role's backend lock and reads its state, retrying once on a fresh
 * connection when the pooled one died (backend restart). */
static wp_status lock_and_read(prov_ctx *p, prov_lease *l, const char *schemas, role_state *st,
                               wp_error *err)
{
    role_lock_key(l->lock_key, sizeof l->lock_key, l->role);
    if (prov_lock_strategy(p->dialect) != PROV_LOCK_ADVISORY) {
        wp_status rc = take_backend_lock(p, l, err);
        return rc == WP_OK ? read_state(p, l->conn, l->role, schemas, st, err) : rc;
    }
    for (int attempt = 0;; attempt++) {
        wp_status rc = pipelined_lock_read(p, l->conn, l->lock_key, l->role, schemas, st, err);
        char ss[6] = "";
        if (rc == WP_OK || reconnect_once(&p->pools, l->db, &l->conn, attempt, ss, err)) {
            if (rc == WP_OK)
                return rc;
            continue;
        }
        if (l->conn)
            return rc;
        l->lock_key[0] = '\0';
        return checkout_failed(err, l->db, ss);
    }
}

/* ---- group roles ---------------------------------------------------------------------- */

static group_cache *cache_find(prov_ctx *p, const char *name)
{
    for (group_cache *c = p->groups; c; c = c->next)
        if (strcmp(c->name, name) == 0)
            return c;
    return NULL;
}

static void cache_store(prov_ctx *p, const char *name, long long nsp, long long wm)
{
    pthread_mutex_lock(&p->cache_mu);
    group_cache *c = cache_find(p, name);
    if (!c && (c = calloc(1, sizeof *c)) != NULL) {
        snprintf(c->name, sizeof c->name, "%s", name);
        c->next = p->groups;
        p->groups = c;
    }
    if (c) {
        c->nsp_oid = nsp;
        c->watermark = wm;
        c->refreshed = time(NULL);
    }
    pthread_mutex_unlock(&p->cache_mu);
}

static void cache_forget(prov_ctx *p, const char *name)
{
    pthread_mutex_lock(&p->cache_mu);
    group_cache *c = cache_find(p, name);
    if (c)
        c->refreshed = 0, c->nsp_oid = -1;
    pthread_mutex_unlock(&p->cache_mu);
}

static bool cache_fresh(prov_ctx *p, const char *name, long long nsp)
{
    pthread_mutex_lock(&p->cache_mu);
    group_cache *c = cache_find(p, name);
    bool fresh = c && c->nsp_oid == nsp && time(NULL) - c->refreshed < PROV_GROUP_MAX_AGE_S;
    pthread_mutex_unlock(&p->cache_mu);
    return fresh;
}

/* Creates group gname if missing and (re)grants its preset on schema, in one
 * transaction under the group's advisory lock (concurrent GRANTs on one object can fail
 * with "tuple concurrently updated"). */
static wp_status refresh_group_tx(prov_ctx *p, PGconn *c, const char *db, const grant_pair *pr,
                                  const char *gname, wp_error *err)
{
    char key[ID_ROLE_MAX + 32];
    snprintf(key, sizeof key, "waypoint:group:%s", gname);
    const char *kv[1] = {key}, *nv[1] = {gname};
    char *rec = prov_group_record(db, pr->schema, pr->preset);
    char *qg = qident(c, gname), *qs = qident(c, pr->schema), *qdb = qident(c, db);
    char *qrec = rec ? qlit(c, rec) : NULL;
    char *privs = NULL;
    wp_status st = WP_ERR_BACKEND;
    PGresult *r = NULL;
    if (!qg || !qs || !qdb || !qrec) {
        st = WP_ERR_NOMEM;
        goto out;
    }
    if (!run_ddl(c, "BEGIN", NULL))
        goto fail;
    const char *sv[1] = {pr->schema};
    if (!(r = run(c, PROV_SQL_GRANTABLE, 1, sv, NULL)))
        goto fail;
    if (strcmp(PQgetvalue(r, 0, 2), "0") != 0)
        log_kv(WP_LOG_WARN, "prov_schema_not_grantable", "db", db, "schema", pr->schema,
               "relations", PQgetvalue(r, 0, 2), "reason",
               "the admin role has no grant option on these relations", (char *)NULL);
    privs = prov_sql_group_privileges(pr->preset, qs, qg, qdb, PQgetvalue(r, 0, 0),
                                      PQgetvalue(r, 0, 1));
    PQclear(r);
    r = NULL;
    if (!privs) {
        PQclear(PQexec(c, "ROLLBACK"));
        st = WP_ERR_NOMEM;
        goto out;
    }
    if (p->dialect == PROV_DIALECT_POSTGRES) {
        if (!(r = run(c, "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", 1, kv, NULL)))
            goto fail;
        PQclear(r);
        r = run(c,
                "SELECT r.oid IS NOT NULL, shobj_description(r.oid, 'pg_authid') FROM "
                "(SELECT 1) AS one LEFT JOIN pg_roles r ON r.rolname = $1",
                1, nv, NULL);
    } else {
        char *q = fmt_sql("SELECT r.oid IS NOT NULL, (SELECT record FROM %s WHERE role_name "
                          "= $1) FROM (SELECT 1) AS one LEFT JOIN pg_roles r ON r.rolname = $1",
                          p->qrecords);
        r = q ? run(c, q, 1, nv, NULL) : NULL;
        free(q);
    }
    if (!r)
        goto fail;
    bool exists = PQgetvalue(r, 0, 0)[0] == 't';
    bool ours = !PQgetisnull(r, 0, 1) && strcmp(PQgetvalue(r, 0, 1), rec) == 0;
    PQclear(r);
    if (exists && !ours) {
        PQclear(PQexec(c, "ROLLBACK"));
        log_kv(WP_LOG_ERROR, "prov_group_conflict", "group", gname, "db", db, "reason",
               "a role Waypoint did not create has this group's name", (char *)NULL);
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH,
                     "cannot provision role: a backend role name is taken");
        st = WP_ERR_CONFLICT;
        goto out;
    }
    char *sql = NULL;
    if (!exists && p->dialect == PROV_DIALECT_POSTGRES)
        sql = fmt_sql("CREATE ROLE %s NOLOGIN NOINHERIT; COMMENT ON ROLE %s IS %s; %s", qg, qg,
                      qrec, privs);
    else if (!exists)
        sql = fmt_sql("CREATE ROLE %s NOLOGIN; UPSERT INTO %s (role_name, record) VALUES (%s, "
                      "%s); %s",
                      qg, p->qrecords, qg, qrec, privs);
    else
        sql = strdup(privs);
    bool ok = sql && run_ddl(c, sql, NULL);
    free(sql);
    if (!ok || !run_ddl(c, "COMMIT", NULL))
        goto fail;
    log_kv(WP_LOG_INFO, exists ? "prov_group_refreshed" : "prov_group_created", "group", gname,
           "db", db, "schema", pr->schema, "preset", grant_preset_str(pr->preset), (char *)NULL);
    st = WP_OK;
    goto out;
fail:
    set_backend_err(err, "group_refresh", c);
    if (PQtransactionStatus(c) != PQTRANS_IDLE)
        PQclear(PQexec(c, "ROLLBACK"));
out:
    free(rec);
    free(qg);
    free(qs);
    free(qdb);
    free(qrec);
    free(privs);
    return st;
}

static wp_status refresh_group(prov_ctx *p, PGconn *c, const char *db, const grant_pair *pr,
                               const char *gname, wp_error *err)
{
    char key[ID_ROLE_MAX + 4];
    snprintf(key, sizeof key, "g:%s", gname);
    prov_keylock *kl = prov_keylock_lock(&p->locks, key);
    if (!kl)
        return WP_ERR_NOMEM;
    wp_status st = refresh_group_tx(p, c, db, pr, gname, err);
    prov_keylock_unlock(&p->locks, kl);
    return st;
}

static bool name_in(const char *const *names, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (names[i] && strcmp(names[i], name) == 0)
            return true;
    return false;
}

/* Makes the role a member of exactly the groups of its pairs (among Waypoint groups). */
/* Appends "GRANT qg-of-gn TO qr<options>; " to *sql. False on allocation failure. */
static bool append_member_grant(PGconn *c, char **sql, const char *gn, const char *qr, bool opts)
{
    char *qg = qident(c, gn);
    char *next =
        qg ? fmt_sql("%sGRANT %s TO %s%s; ", *sql, qg, qr, prov_sql_member_options(opts)) : NULL;
    free(qg);
    free(*sql);
    *sql = next;
    return next != NULL;
}

/* Makes the role a member of exactly the wanted groups. With opts (PostgreSQL 16+) every
 * membership is INHERIT TRUE, SET FALSE, ADMIN FALSE: the caller has its groups'
 * privileges but cannot SET ROLE to a group (and so cannot create objects owned by it,
 * which would outlive a narrowed grant); a membership of ours with other options (made
 * before the upgrade, or altered) is re-granted, which updates them in place. */
static wp_status reconcile_members(PGconn *c, const char *role, const role_state *st,
                                   char (*want)[ID_ROLE_MAX + 1], size_t nwant, bool opts,
                                   wp_error *err)
{
    const char **wantp = calloc(nwant + 1, sizeof *wantp);
    char *qr = qident(c, role);
    char *sql = strdup("");
    wp_status rc = WP_OK;
    if (!wantp || !qr || !sql) {
        rc = WP_ERR_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < nwant; i++)
        wantp[i] = want[i][0] ? want[i] : NULL;
    size_t idx;
    json_t *m;
    const char **have = calloc(json_array_size(st->members) + 1, sizeof *have);
    size_t nhave = 0;
    if (!have) {
        rc = WP_ERR_NOMEM;
        goto out;
    }
    json_array_foreach(st->members, idx, m)
    {
        const char *gn = json_string_value(json_array_get(m, 0));
        const char *grec = json_string_value(json_array_get(m, 1));
        if (!gn)
            continue;
        have[nhave++] = gn;
        if (name_in(wantp, nwant, gn)) {
            if (!opts || !json_is_true(json_array_get(m, 2)))
                continue;
            log_kv(WP_LOG_INFO, "prov_membership_fixed", "role", role, "group", gn, "options",
                   "INHERIT TRUE, SET FALSE, ADMIN FALSE", (char *)NULL);
            if (!append_member_grant(c, &sql, gn, qr, opts)) {
                free(have);
                rc = WP_ERR_NOMEM;
                goto out;
            }
            continue;
        }
        if (!prov_record_is_group(grec)) {
            log_kv(WP_LOG_WARN, "prov_foreign_membership", "role", role, "member_of", gn,
                   (char *)NULL);
            continue;
        }
        char *qg = qident(c, gn), *next = qg ? fmt_sql("%sREVOKE %s FROM %s; ", sql, qg, qr) : NULL;
        free(qg);
        free(sql);
        if (!(sql = next)) {
            free(have);
            rc = WP_ERR_NOMEM;
            goto out;
        }
    }
    for (size_t i = 0; i < nwant; i++) {
        if (!wantp[i] || name_in(have, nhave, wantp[i]) || name_in(wantp, i, wantp[i]))
            continue;
        if (!append_member_grant(c, &sql, wantp[i], qr, opts)) {
            free(have);
            rc = WP_ERR_NOMEM;
            goto out;
        }
    }
    free(have);
    if (sql[0] && !run_ddl(c, sql, NULL)) {
        set_backend_err(err, "membership", c);
        rc = WP_ERR_BACKEND;
    }
out:
    free(wantp);
    free(qr);
    free(sql);
    return rc;
}

static wp_status reconcile_grants(prov_ctx *p, PGconn *c, const char *db, const char *role,
                                  const grant_effective *g, const role_state *st, bool force,
                                  wp_error *err)
{
    char(*want)[ID_ROLE_MAX + 1] = calloc(g->npairs + 1, sizeof *want);
    if (!want)
        return WP_ERR_NOMEM;
    wp_status rc = WP_OK;
    for (size_t i = 0; i < g->npairs && rc == WP_OK; i++) {
        grant_pair pr = g->pairs[i];
        if (g->downgrade != GRANT_PRESET_NONE && pr.preset > g->downgrade)
            pr.preset = g->downgrade; /* never above the asked maximum */
        json_t *row = json_array_get(st->schemas, i);
        json_t *nsp = json_array_get(row, 1);
        if (!json_is_integer(nsp)) {
            log_kv(WP_LOG_WARN, "prov_schema_missing", "role", role, "db", db, "schema", pr.schema,
                   (char *)NULL);
            continue;
        }
        if (prov_group_name(p->s.user_prefix, db, pr.schema, pr.preset, want[i]) != 0) {
            rc = WP_ERR_INTERNAL;
            break;
        }
        long long nspoid = json_integer_value(nsp);
        bool changed = json_is_true(json_array_get(row, 2));
        if (!force && !changed && cache_fresh(p, want[i], nspoid))
            continue;
        rc = refresh_group(p, c, db, &pr, want[i], err);
        if (rc == WP_OK)
            cache_store(p, want[i], nspoid, json_integer_value(json_array_get(row, 3)));
    }
    if (rc == WP_OK)
        rc = reconcile_members(c, role, st, want, g->npairs, p->member_opts, err);
    if (rc != WP_OK)
        for (size_t i = 0; i < g->npairs; i++)
            if (want[i][0])
                cache_forget(p, want[i]);
    free(want);
    return rc;
}

/* ---- raw SQL --------------------------------------------------------------------------- */

static void free_strs(char **v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        free(v[i]);
    free(v);
}

/* Renders and validates every template before any runs (all or nothing). */
static wp_status rawsql_prepare(prov_ctx *p, const id_identity *id, const char *db,
                                const char *role, const grant_effective *g, char ***out,
                                wp_error *err)
{
    *out = calloc(g->nsql + 1, sizeof **out);
    if (!*out)
        return WP_ERR_NOMEM;
    for (size_t i = 0; i < g->nsql; i++) {
        wp_error e;
        wp_error_clear(&e);
        wp_status st =
            rawsql_render(g->sql[i].template_text, role, db, id->login_name, &(*out)[i], &e);
        if (st == WP_OK)
            st = rawsql_validate((*out)[i], role, &e);
        if (st != WP_OK) {
            log_kv(WP_LOG_WARN, "prov_rawsql_refused", "listener", p->s.listener_name, "role", role,
                   "origin", g->sql[i].origin, "rule", e.message, (char *)NULL);
            wp_error_set(err, WP_SQLSTATE_INVALID_AUTH,
                         "a raw SQL grant for this database was refused; see the Waypoint log");
            free_strs(*out, g->nsql);
            *out = NULL;
            return WP_ERR_DENIED;
        }
    }
    return WP_OK;
}

static wp_status rawsql_apply(PGconn *c, const char *role, const grant_effective *g, char **stmts,
                              wp_error *err)
{
    for (size_t i = 0; i < g->nsql; i++) {
        char ss[6];
        /* Extended protocol: the server itself refuses a second statement. */
        PGresult *r = run(c, stmts[i], 0, NULL, ss);
        if (!r) {
            log_kv(WP_LOG_WARN, "prov_rawsql_failed", "role", role, "origin", g->sql[i].origin,
                   "sqlstate", ss, (char *)NULL);
            wp_error_set(err, WP_SQLSTATE_INVALID_AUTH,
                         "a raw SQL grant for this database could not be applied");
            return WP_ERR_DENIED;
        }
        PQclear(r);
    }
    return WP_OK;
}

/* ---- ensure role -------------------------------------------------------------------------- */

/* WP_OK when db exists and accepts connections. A database that refuses them
 * (template0, ALLOW_CONNECTIONS false) is refused here with PostgreSQL's own SQLSTATE
 * rather than by the admin's failed login to it, whose text is not the caller's. */
static wp_status database_exists(prov_ctx *p, const char *db, wp_error *err)
{
    PGconn *c = NULL;
    if (prov_pool_get(&p->pools, p->s.admin_database, &c, NULL, err) != WP_OK)
        return WP_ERR_BACKEND;
    const char *vals[1] = {db};
    PGresult *r = NULL;
    for (int attempt = 0; !r; attempt++) {
        r = run(c, "SELECT datallowconn FROM pg_database WHERE datname = $1", 1, vals, NULL);
        if (!r && !reconnect_once(&p->pools, p->s.admin_database, &c, attempt, NULL, err))
            break;
    }
    if (!c)
        return WP_ERR_BACKEND;
    wp_status st = WP_OK;
    if (!r) {
        set_backend_err(err, "database_check", c);
        st = WP_ERR_BACKEND;
    } else if (PQntuples(r) == 0) {
        wp_error_set(err, WP_SQLSTATE_UNDEFINED_DB, "database \"%s\" does not exist", db);
        st = WP_ERR_NOT_FOUND;
    } else if (PQgetvalue(r, 0, 0)[0] != 't') {
        wp_error_set(err, PROV_SQLSTATE_DB_CLOSED, "the database does not accept connections");
        wp_error_detail(err, "database \"%s\" has pg_database.datallowconn = false", db);
        st = WP_ERR_DENIED;
    }
    PQclear(r);
    prov_pool_put(&p->pools, p->s.admin_database, c, false);
    return st;
}

/* Sets the fresh password (as verifier) and expiry; creates the role when missing.
 * Returns WP_ERR_CONFLICT when a concurrent creator turned out to be someone else. */
static wp_status write_role(prov_ctx *p, PGconn *c, const char *role, const char *record,
                            role_state *st, const prov_lease *l, bool *created, wp_error *err)
{
    char verifier[SCRAM_VERIFIER_MAX] = ""; /* MD5 salts with the role name: made here */
    if (p->md5 && scram_md5_stored(l->password, role, verifier) != WP_OK) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "cannot generate a backend password");
        return WP_ERR_INTERNAL;
    }
    char *qr = qident(c, role), *qv = qlit(c, p->md5 ? verifier : l->verifier),
         *qu = qlit(c, st->valid_until);
    char *qrec = qlit(c, record);
    char *sql = NULL, *qname = NULL;
    wp_status rc = WP_OK;
    if (!qr || !qv || !qu || !qrec) {
        rc = WP_ERR_NOMEM;
        goto out;
    }
    *created = false;
    if (!st->exists) {
        const char *attrs = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                            "NOBYPASSRLS INHERIT";
        if (p->dialect == PROV_DIALECT_POSTGRES)
            /* The admin joins the role so it can grant on (and later reassign) the
             * tables an admin-preset caller creates, like the owner could. */
            sql = fmt_sql("CREATE ROLE %s %s PASSWORD %s VALID UNTIL %s; COMMENT ON ROLE %s IS "
                          "%s; GRANT %s TO CURRENT_USER",
                          qr, attrs, qv, qu, qr, qrec, qr);
        else if ((qname = qlit(c, role)) != NULL)
            sql = fmt_sql("CREATE ROLE %s LOGIN PASSWORD %s VALID UNTIL %s; UPSERT INTO %s "
                          "(role_name, record) VALUES (%s, %s)",
                          qr, qv, qu, p->qrecords, qname, qrec);
        char ss[6];
        if (sql && run_ddl(c, sql, ss)) {
            *created = true;
            goto out;
        }
        if (!sql || strcmp(ss, "42710") != 0) { /* 42710: created concurrently, re-read */
            set_backend_err(err, "create_role", c);
            rc = sql ? WP_ERR_BACKEND : WP_ERR_NOMEM;
            goto out;
        }
        rc = WP_ERR_CONFLICT; /* caller re-reads and decides */
        goto out;
    }
    sql = fmt_sql("ALTER ROLE %s LOGIN PASSWORD %s VALID UNTIL %s", qr, qv, qu);
    if (!sql || !run_ddl(c, sql, NULL)) {
        set_backend_err(err, "alter_role", c);
        rc = sql ? WP_ERR_BACKEND : WP_ERR_NOMEM;
    }
out:
    wp_zeroize(verifier, sizeof verifier);
    free(qr);
    free(qv);
    free(qu);
    free(qrec);
    free(qname);
    free(sql);
    return rc;
}

static void lease_free(prov_lease *l)
{
    if (!l)
        return;
    wp_zeroize(l->password, sizeof l->password);
    wp_zeroize(l->verifier, sizeof l->verifier);
    free(l->db);
    free(l);
}

/* Sends the advisory unlock without waiting for its answer. Returns false when the
 * connection may still hold the lock (it must then be closed, which releases it). */
static bool unlock_send(prov_ctx *p, PGconn *c, const char *key)
{
    const char *vals[1] = {key};
    /* ROLLBACK first: in an aborted transaction the unlock itself would fail. */
    if (PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) != PQTRANS_IDLE)
        PQclear(PQexec(c, "ROLLBACK"));
    return PQstatus(c) == CONNECTION_OK &&
           PQsendQueryParams(c, prov_sql_unlock(p->dialect), 1, NULL, vals, NULL, NULL, 0);
}

/* The answer to unlock_send(): true when the lock is released. */
static bool unlock_wait(PGconn *c, const char *key)
{
    PGresult *r = PQgetResult(c), *x;
    bool ok = r && PQresultStatus(r) == PGRES_TUPLES_OK;
    PQclear(r);
    while ((x = PQgetResult(c)) != NULL)
        PQclear(x);
    if (!ok)
        log_kv(WP_LOG_WARN, "prov_unlock_failed", "key", key, (char *)NULL);
    return ok;
}

/* Unlock everything the lease holds (error paths and release). The in-process lock is
 * released as soon as the advisory unlock is on the wire: the next connect of the same
 * role then queues on the advisory lock in PostgreSQL, which that unlock frees, instead
 * of waiting one more round trip for this one's acknowledgement. A connection whose
 * unlock failed is closed, which releases the lock. */
static void lease_unlock(prov_lease *l)
{
    prov_ctx *p = l->p;
    if (l->lock_conn) {
        if (l->lock_key[0])
            backend_unlock(p, l->lock_conn, l->lock_key);
        prov_pool_put(&p->lockpools, p->s.admin_database, l->lock_conn, false);
        l->lock_conn = NULL;
    }
    char key[sizeof l->lock_key];
    snprintf(key, sizeof key, "%s", l->lock_key);
    bool locked = l->conn && key[0] && prov_lock_strategy(p->dialect) == PROV_LOCK_ADVISORY;
    bool sent = locked && unlock_send(p, l->conn, key);
    if (l->conn && !locked && PQstatus(l->conn) == CONNECTION_OK &&
        PQtransactionStatus(l->conn) != PQTRANS_IDLE)
        PQclear(PQexec(l->conn, "ROLLBACK"));
    l->lock_key[0] = '\0';
    prov_keylock_unlock(&p->locks, l->kl);
    l->kl = NULL;
    if (l->conn) {
        bool broken = (locked && !sent) || (sent && !unlock_wait(l->conn, key)) ||
                      PQstatus(l->conn) != CONNECTION_OK;
        prov_pool_put(&p->pools, l->db, l->conn, broken);
        l->conn = NULL;
    }
}

static wp_status take_backend_lock(prov_ctx *p, prov_lease *l, wp_error *err)
{
    role_lock_key(l->lock_key, sizeof l->lock_key, l->role);
    wp_status rc;
    if (prov_lock_strategy(p->dialect) == PROV_LOCK_TABLE) {
        rc = prov_pool_get(&p->lockpools, p->s.admin_database, &l->lock_conn, NULL, err);
        if (rc == WP_OK)
            rc = backend_lock(p, &p->lockpools, p->s.admin_database, &l->lock_conn, l->lock_key,
                              err);
    } else {
        rc = backend_lock(p, &p->pools, l->db, &l->conn, l->lock_key, err);
    }
    if (rc != WP_OK)
        l->lock_key[0] = '\0';
    return rc == WP_OK ? WP_OK : WP_ERR_BACKEND;
}

/* Locks role name, reads its state. Returns WP_OK when the role is free or ours,
 * WP_ERR_CONFLICT when it belongs to someone else (lock released). */
static wp_status claim(prov_ctx *p, prov_lease *l, const char *record, const char *schemas,
                       role_state *st, wp_error *err)
{
    char key[ID_ROLE_MAX + 4];
    snprintf(key, sizeof key, "r:%s", l->role);
    if (!(l->kl = prov_keylock_lock(&p->locks, key)))
        return WP_ERR_NOMEM;
    char ss[6] = "";
    if (prov_pool_get(&p->pools, l->db, &l->conn, ss, err) != WP_OK) {
        lease_unlock(l);
        return checkout_failed(err, l->db, ss);
    }
    wp_status rc = lock_and_read(p, l, schemas, st, err);
    if (rc != WP_OK) {
        lease_unlock(l);
        return rc;
    }
    if (st->exists && (!st->record || strcmp(st->record, record) != 0)) {
        lease_unlock(l);
        role_state_clear(st);
        return WP_ERR_CONFLICT;
    }
    if (st->exists && st->elevated) {
        log_kv(WP_LOG_ERROR, "prov_role_elevated", "role", l->role, "reason",
               "role has attributes Waypoint never grants; refusing to use it", (char *)NULL);
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH,
                     "cannot provision role: the backend role was modified outside Waypoint");
        lease_unlock(l);
        role_state_clear(st);
        return WP_ERR_DENIED;
    }
    return WP_OK;
}

/* Picks the plain or hashed name, locked and verified (the role is written later). */
static wp_status claim_name(prov_ctx *p, prov_lease *l, const id_identity *id, const char *scope,
                            const char *record, const char *schemas, role_state *st, wp_error *err)
{
    wp_status rc = WP_ERR_CONFLICT;
    for (int hashed = 0; hashed < 2 && rc == WP_ERR_CONFLICT; hashed++) {
        if (id_role_name(p->s.user_prefix, id, l->db, scope, hashed, l->role, err) != WP_OK) {
            rc = WP_ERR_INVALID;
            break;
        }
        rc = claim(p, l, record, schemas, st, err);
    }
    if (rc == WP_ERR_CONFLICT) {
        log_kv(WP_LOG_ERROR, "prov_role_conflict", "role", l->role, "db", l->db, "reason",
               "plain and hashed role names are both taken by other roles", (char *)NULL);
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH,
                     "cannot provision role: the backend role name is taken");
    }
    return rc;
}

/* ---- PUBLIC CREATE on schema public ------------------------------------------------------ */

/* Adds db to the checked list; false if it was there already (or out of memory: then
 * the check is skipped, it is advice, not a guard). */
static bool public_check_claim(prov_ctx *p, const char *db)
{
    pthread_mutex_lock(&p->cache_mu);
    bool fresh = true;
    for (db_seen *d = p->public_checked; d && fresh; d = d->next)
        fresh = strcmp(d->name, db) != 0;
    size_t n = strlen(db) + 1;
    db_seen *d = fresh ? malloc(sizeof *d + n) : NULL;
    if (d) {
        memcpy(d->name, db, n);
        d->next = p->public_checked;
        p->public_checked = d;
    }
    pthread_mutex_unlock(&p->cache_mu);
    return d != NULL;
}

static void public_check_release(prov_ctx *p, const char *db)
{
    pthread_mutex_lock(&p->cache_mu);
    for (db_seen **pp = &p->public_checked; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->name, db) == 0) {
            db_seen *d = *pp;
            *pp = d->next;
            free(d);
            break;
        }
    }
    pthread_mutex_unlock(&p->cache_mu);
}

/* PostgreSQL 14 and older let PUBLIC create in schema public by default (and a database
 * upgraded from one keeps that ACL): every caller, a readonly one included, can then
 * create tables there. That is the server's grant, not Waypoint's, so it is not revoked
 * here; the first time Waypoint provisions in a database (per process) it looks once,
 * on the locked connection c, and logs one warning naming the database and the fix. A
 * failed look is tried again at the next connect. */
static void check_public_create(prov_ctx *p, PGconn *c, const char *db)
{
    if (p->dialect != PROV_DIALECT_POSTGRES || !public_check_claim(p, db))
        return;
    PGresult *r = run(c,
                      "SELECT EXISTS (SELECT 1 FROM pg_namespace n WHERE n.nspname = 'public' "
                      "AND has_schema_privilege('public', n.oid, 'CREATE'))",
                      0, NULL, NULL);
    if (!r) {
        public_check_release(p, db);
        return;
    }
    if (PQgetvalue(r, 0, 0)[0] == 't')
        log_kv(WP_LOG_WARN, "prov_public_create", "listener", p->s.listener_name, "database", db,
               "reason",
               "PUBLIC may CREATE in schema public (the default before PostgreSQL 15): every "
               "caller can create objects there, whatever its grant",
               "fix", "REVOKE CREATE ON SCHEMA public FROM PUBLIC", (char *)NULL);
    PQclear(r);
}

/* ---- ownership ------------------------------------------------------------------------- */

/* True when the (clamped) grant holds the admin preset on schema. */
static bool admin_on(const grant_effective *g, const char *schema)
{
    for (size_t i = 0; i < g->npairs; i++) {
        grant_preset pr = g->pairs[i].preset;
        if (g->downgrade != GRANT_PRESET_NONE && pr > g->downgrade)
            pr = g->downgrade;
        if (pr == GRANT_PRESET_ADMIN && strcmp(g->pairs[i].schema, schema) == 0)
            return true;
    }
    return false;
}

/* "GRANT CREATE ON SCHEMA a, b TO o; ALTER <kind> <identity> OWNER TO o; ...; REVOKE
 * CREATE ON SCHEMA a, b FROM o" for the rows of PROV_SQL_OWNED_OBJECTS (sorted by
 * schema). *n gets the number of ALTERs (0: sql is NULL); an object of a kind with no
 * known ALTER, or in a schema the admin cannot grant CREATE on, is logged and left.
 * Returns false on allocation failure. */
static bool ownership_sql(PGresult *r, const char *role, const char *qo, char **sql, int *n)
{
    char *schemas = NULL, *alters = NULL;
    size_t sl = 0, al = 0;
    FILE *sf = open_memstream(&schemas, &sl), *af = open_memstream(&alters, &al);
    bool ok = sf && af;
    const char *last = NULL; /* schema most recently added to the list */
    *sql = NULL;
    *n = 0;
    for (int i = 0; ok && i < PQntuples(r); i++) {
        const char *kw = prov_owner_keyword(PQgetvalue(r, i, 0)), *qs = PQgetvalue(r, i, 2);
        /* A schema the admin cannot lend CREATE on was never the admin preset's to give
         * (its group got no CREATE there either): left, like prov_schema_not_grantable. */
        const char *why = !kw                             ? "no known ALTER for this kind"
                          : PQgetvalue(r, i, 3)[0] != 't' ? "the admin role cannot grant CREATE "
                                                            "on its schema"
                                                          : NULL;
        if (why) {
            log_kv(WP_LOG_WARN, "prov_ownership_kept", "role", role, "type", PQgetvalue(r, i, 0),
                   "object", PQgetvalue(r, i, 1), "reason", why, (char *)NULL);
            continue;
        }
        if ((!last || strcmp(last, qs) != 0) && fprintf(sf, "%s%s", last ? ", " : "", qs) < 0)
            ok = false;
        last = qs;
        if (fprintf(af, "ALTER %s %s OWNER TO %s; ", kw, PQgetvalue(r, i, 1), qo) < 0)
            ok = false;
        (*n)++;
    }
    /* Both streams are closed whatever happens: no short-circuit between them. */
    bool sf_ok = !sf || fclose(sf) == 0;
    bool af_ok = !af || fclose(af) == 0;
    ok = ok && sf_ok && af_ok;
    if (ok && *n > 0)
        ok = (*sql = fmt_sql("GRANT CREATE ON SCHEMA %s TO %s; %sREVOKE CREATE ON SCHEMA %s FROM "
                             "%s",
                             schemas, qo, alters, schemas, qo)) != NULL;
    free(schemas);
    free(alters);
    return ok;
}

/* JSON array of the schemas in st->owned where the (clamped) grant has no admin preset;
 * NULL when there are none (or on allocation failure, *nomem set). */
static char *ownership_candidates(const grant_effective *g, const role_state *st, bool *nomem)
{
    json_t *cand = json_array(), *row;
    size_t idx;
    *nomem = cand == NULL;
    json_array_foreach(st->owned, idx, row)
    {
        const char *sn = json_string_value(json_array_get(row, 0));
        if (cand && sn && !admin_on(g, sn) && json_array_append_new(cand, json_string(sn)) != 0)
            *nomem = true;
    }
    char *cj = !*nomem && json_array_size(cand) > 0 ? json_dumps(cand, JSON_COMPACT) : NULL;
    if (!*nomem && json_array_size(cand) > 0 && !cj)
        *nomem = true;
    json_decref(cand);
    return cj;
}

/* Ownership is not a grant: an admin-preset caller owns what it created (write, drop,
 * grant to others), and would keep that after its grant narrows. So objects it owns in
 * schemas where its grant has no admin preset (and it holds no CREATE otherwise) go to
 * the orphans role, the powerless owner cleanup uses, in one transaction; the orphans
 * role borrows CREATE on their schemas for it (a new owner needs it). The state read
 * already lists the owned schemas, so a steady-state connect sends nothing here. */
static wp_status revoke_ownership(prov_ctx *p, PGconn *c, const char *db, const char *role,
                                  const grant_effective *g, const role_state *st, wp_error *err)
{
    bool nomem;
    char *cj = ownership_candidates(g, st, &nomem);
    if (!cj)
        return nomem ? WP_ERR_NOMEM : WP_OK;
    const char *vals[2] = {role, cj};
    PGresult *r = run(c, PROV_SQL_OWNED_OBJECTS, 2, vals, NULL);
    free(cj);
    if (!r) {
        set_backend_err(err, "owned_objects", c);
        return WP_ERR_BACKEND;
    }
    wp_status rc = WP_OK;
    char orphans[ID_ROLE_MAX + 1], *qo = NULL, *sql = NULL;
    int n = 0;
    if (PQntuples(r) > 0 && (rc = ensure_orphans(p, c, orphans, err)) == WP_OK &&
        (!(qo = qident(c, orphans)) || !ownership_sql(r, role, qo, &sql, &n)))
        rc = WP_ERR_NOMEM;
    PQclear(r);
    if (rc == WP_OK && n > 0) {
        if (run_ddl(c, sql, NULL)) {
            char num[16];
            snprintf(num, sizeof num, "%d", n);
            log_kv(WP_LOG_INFO, "prov_ownership_revoked", "role", role, "db", db, "objects", num,
                   (char *)NULL);
        } else {
            set_backend_err(err, "ownership", c);
            rc = WP_ERR_BACKEND;
        }
    }
    free(qo);
    free(sql);
    return rc;
}

static wp_status ensure_locked(prov_ctx *p, prov_lease *l, const id_identity *id, const char *scope,
                               const grant_effective *g, const char *schemas, wp_error *err)
{
    role_state st;
    char **stmts = NULL;
    bool created = false;
    char *record = id_role_record(id, l->db, scope);
    if (!record)
        return WP_ERR_NOMEM;
    wp_status rc = claim_name(p, l, id, scope, record, schemas, &st, err);
    if (rc != WP_OK) {
        free(record);
        return rc;
    }
    check_public_create(p, l->conn, l->db);
    bool raw = g->nsql > 0 && g->downgrade == GRANT_PRESET_NONE;
    if (raw && (rc = rawsql_prepare(p, id, l->db, l->role, g, &stmts, err)) != WP_OK) {
        free(record);
        goto out;
    }
    rc = write_role(p, l->conn, l->role, record, &st, l, &created, err);
    if (rc == WP_ERR_CONFLICT) { /* another instance created it a moment ago: re-read */
        role_state_clear(&st);
        rc = read_state(p, l->conn, l->role, schemas, &st, err);
        if (rc == WP_OK && (!st.exists || !st.record || strcmp(st.record, record) != 0)) {
            log_kv(WP_LOG_ERROR, "prov_role_conflict", "role", l->role, "reason",
                   "role appeared concurrently with another record", (char *)NULL);
            wp_error_set(err, WP_SQLSTATE_INVALID_AUTH,
                         "cannot provision role: the backend role name is taken");
            rc = WP_ERR_CONFLICT;
        } else if (rc == WP_OK) {
            rc = write_role(p, l->conn, l->role, record, &st, l, &created, err);
        }
    }
    free(record);
    if (rc != WP_OK)
        goto out;
    l->created = created;
    if (created)
        log_kv(WP_LOG_INFO, "prov_role_created", "role", l->role, "db", l->db, "login",
               id->login_name, "scope", scope ? scope : "full", (char *)NULL);
    rc = reconcile_grants(p, l->conn, l->db, l->role, g, &st, false, err);
    if (rc == WP_ERR_BACKEND) { /* a cached group may have been dropped: heal once */
        role_state_clear(&st);
        rc = read_state(p, l->conn, l->role, schemas, &st, err);
        if (rc == WP_OK)
            rc = reconcile_grants(p, l->conn, l->db, l->role, g, &st, true, err);
    }
    if (rc == WP_OK && raw)
        rc = rawsql_apply(l->conn, l->role, g, stmts, err);
    if (rc == WP_OK) /* after grants and raw SQL: both decide where CREATE is held */
        rc = revoke_ownership(p, l->conn, l->db, l->role, g, &st, err);
out:
    free_strs(stmts, g->nsql);
    role_state_clear(&st);
    return rc;
}

wp_status prov_ensure_role(prov_ctx *p, const id_identity *id, const char *database,
                           const grant_effective *g, prov_lease **out, wp_error *err)
{
    *out = NULL;
    if (!p || !id || !database || !g)
        return WP_ERR_INVALID;
    if (g->nsql > 0 && !p->s.allow_raw_sql) {
        log_kv(WP_LOG_WARN, "prov_rawsql_disabled", "listener", p->s.listener_name, "login",
               id->login_name, "db", database, (char *)NULL);
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, "raw SQL grants are disabled on this listener");
        return WP_ERR_DENIED;
    }
    /* A pool exists only for a database seen to exist; if it was dropped since, the
     * pooled connection is dead and the reconnect reports 3D000. */
    wp_status rc = prov_pool_known(&p->pools, database) ? WP_OK : database_exists(p, database, err);
    if (rc != WP_OK)
        return rc;
    prov_lease *l = calloc(1, sizeof *l);
    char *schemas = schemas_param(p, database, g);
    if (!l || !schemas || !(l->db = strdup(database))) {
        free(schemas);
        lease_free(l);
        return WP_ERR_NOMEM;
    }
    l->p = p;
    /* The fresh password and its SCRAM verifier (a PBKDF2) depend on nothing the lock
     * protects, so they are made before it: every concurrent connect of this caller
     * waits for the lock, and only the work that needs it belongs inside. */
    rc = wp_random_password(l->password);
    if (rc == WP_OK && !p->md5)
        rc = scram_make_verifier(l->password, PROV_SCRAM_ITERATIONS, l->verifier,
                                 sizeof l->verifier);
    if (rc != WP_OK) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "cannot generate a backend password");
        free(schemas);
        lease_free(l);
        return rc;
    }
    const char *scope = g->downgrade == GRANT_PRESET_NONE ? NULL : grant_preset_str(g->downgrade);
    rc = ensure_locked(p, l, id, scope, g, schemas, err);
    free(schemas);
    if (rc != WP_OK) {
        if (l->kl)
            lease_unlock(l);
        lease_free(l);
        return rc;
    }
    *out = l;
    return WP_OK;
}

const char *prov_lease_role(const prov_lease *l)
{
    return l ? l->role : NULL;
}

bool prov_lease_created(const prov_lease *l)
{
    return l && l->created;
}

void prov_admin_conns(prov_ctx *p, void (*fn)(void *arg, const char *db, int open), void *arg)
{
    if (p)
        prov_pools_each(&p->pools, fn, arg);
}

const char *prov_lease_password(const prov_lease *l)
{
    return l ? l->password : NULL;
}

void prov_lease_release(prov_lease *l)
{
    if (!l)
        return;
    lease_unlock(l);
    lease_free(l);
}

/* ---- touch and cleanup ----------------------------------------------------------------- */

/* Sets VALID UNTIL on a locked connection, if the role is Waypoint's. */
static bool touch_locked(prov_ctx *p, PGconn *c, const char *role)
{
    wp_error err;
    wp_error_clear(&err);
    role_state st;
    memset(&st, 0, sizeof st);
    if (read_state(p, c, role, NULL, &st, &err) != WP_OK)
        return false;
    bool ok = true; /* not ours (or gone): nothing to do */
    if (st.exists && prov_record_is_role(st.record)) {
        char *qr = qident(c, role), *qu = qlit(c, st.valid_until);
        char *sql = qr && qu ? fmt_sql("ALTER ROLE %s VALID UNTIL %s", qr, qu) : NULL;
        ok = sql && run_ddl(c, sql, NULL);
        free(qr);
        free(qu);
        free(sql);
    }
    role_state_clear(&st);
    return ok;
}

void prov_touch_role(prov_ctx *p, const char *role, const char *database, int64_t session_ms)
{
    if (!p || !role || !*role)
        return;
    /* The connect already pushed the expiry to connect time + ttl; for a session shorter
     * than ttl/100 the disconnect would move it by less than that, and would cost every
     * short-lived connection (pgbench -C, serverless clients) a locked round trip. */
    if (session_ms >= 0 && session_ms < p->s.user_ttl_ms / 100)
        return;
    /* Same locks as a connect: two ALTER ROLEs of one role at once fail with "tuple
     * concurrently updated", and a touch must not change a role between a concurrent
     * connect setting its password and that connection logging in. */
    const char *db = database && *database ? database : p->s.admin_database;
    char key[ID_ROLE_MAX + 4], lkey[ID_ROLE_MAX + 32];
    snprintf(key, sizeof key, "r:%s", role);
    role_lock_key(lkey, sizeof lkey, role);
    prov_keylock *kl = prov_keylock_lock(&p->locks, key);
    if (!kl)
        return;
    wp_error err;
    wp_error_clear(&err);
    PGconn *c = NULL;
    bool ok = false;
    if (prov_pool_get(&p->pools, db, &c, NULL, &err) == WP_OK &&
        backend_lock(p, &p->pools, db, &c, lkey, &err) == WP_OK) {
        ok = touch_locked(p, c, role);
        backend_unlock(p, c, lkey);
    }
    if (!ok)
        log_kv(WP_LOG_WARN, "prov_touch_failed", "role", role, "error",
               err.message[0] ? err.message : "backend refused", (char *)NULL);
    if (c)
        prov_pool_put(&p->pools, db, c, PQstatus(c) == CONNECTION_BAD);
    prov_keylock_unlock(&p->locks, kl);
}

/* Objects keep running with their OWNER's rights (SECURITY DEFINER functions, views,
 * rules, index expressions evaluated by VACUUM/ANALYZE), so what a dropped caller owned
 * must never go to the CREATEROLE admin: an admin-preset caller could plant a function
 * and have it run as the admin after cleanup. It goes to <prefix>orphans instead:
 * NOLOGIN, no attributes, no memberships (re-checked every pass, fail closed), with the
 * admin as a member so it can still grant on and manage the kept data. */
static wp_status ensure_orphans(prov_ctx *p, PGconn *c, char name[ID_ROLE_MAX + 1], wp_error *err)
{
    prov_orphans_name(p->s.user_prefix, name);
    const char *vals[2] = {name, PROV_ORPHANS_RECORD};
    for (int attempt = 0; attempt < 2; attempt++) { /* create if missing, then verify */
        /* clang-format off */
        static const char q[] =
            "SELECT " PROV_SQL_ADMIN_MADE("r.oid") " AND "
            "shobj_description(r.oid, 'pg_authid') IS NOT DISTINCT FROM $2 AND NOT "
            "(r.rolcanlogin OR r.rolsuper OR r.rolcreatedb OR r.rolcreaterole OR "
            "r.rolreplication OR r.rolbypassrls) AND NOT EXISTS (SELECT 1 FROM "
            "pg_auth_members m WHERE m.member = r.oid) FROM pg_roles r WHERE r.rolname = $1";
        /* clang-format on */
        PGresult *r = run(c, q, 2, vals, NULL);
        if (!r) {
            set_backend_err(err, "orphans_check", c);
            return WP_ERR_BACKEND;
        }
        int n = PQntuples(r);
        bool ok = n == 1 && PQgetvalue(r, 0, 0)[0] == 't';
        PQclear(r);
        if (n == 1 && ok)
            return WP_OK;
        if (n == 1) {
            log_kv(WP_LOG_ERROR, "prov_orphans_conflict", "role", name, "reason",
                   "not a powerless role Waypoint created; cleanup and ownership transfer will not "
                   "run",
                   (char *)NULL);
            wp_error_set(err, WP_SQLSTATE_INTERNAL, "role \"%s\" is not usable", name);
            return WP_ERR_CONFLICT;
        }
        char *qo = qident(c, name), *qrec = qlit(c, PROV_ORPHANS_RECORD);
        char *sql = qo && qrec ? fmt_sql("CREATE ROLE %s NOLOGIN NOINHERIT NOSUPERUSER NOCREATEDB "
                                         "NOCREATEROLE NOREPLICATION NOBYPASSRLS; COMMENT ON "
                                         "ROLE %s IS %s; GRANT %s TO CURRENT_USER",
                                         qo, qo, qrec, qo)
                               : NULL;
        char ss[6] = "";
        bool created = sql && run_ddl(c, sql, ss);
        free(qo);
        free(qrec);
        free(sql);
        if (!created && strcmp(ss, "42710") != 0) { /* 42710: another instance won */
            set_backend_err(err, "orphans_create", c);
            return WP_ERR_BACKEND;
        }
    }
    set_backend_err(err, "orphans_create", c);
    return WP_ERR_BACKEND;
}

/* REASSIGN OWNED BY role TO orphans + DROP OWNED BY role in the database dc is connected
 * to. Changing a function's (type's, ...) owner needs the new owner to have CREATE on its
 * schema, so the orphans role gets CREATE on exactly the schemas where role owns
 * something, inside the same implicit transaction, revoked again before it commits. */
static bool reassign_in_db(PGconn *dc, const char *role, const char *qr, const char *qo)
{
    const char *vals[1] = {role};
    /* pg_identify_object runs through LATERAL, so only on this role's rows: as a plain
     * target-list call the planner pushed "x.s IS NOT NULL" down to the pg_shdepend scan,
     * and on PostgreSQL 14 and older that meets the pin rows (classid 0) and fails with
     * "unrecognized object class: 0". */
    PGresult *r = run(dc,
                      "SELECT coalesce(string_agg(DISTINCT quote_ident(x.schema), ', '), '') "
                      "FROM pg_shdepend d JOIN pg_database db ON db.oid = d.dbid AND db.datname "
                      "= current_database() JOIN pg_roles a ON a.oid = d.refobjid, LATERAL "
                      "pg_identify_object(d.classid, d.objid, d.objsubid) AS x WHERE "
                      "d.refclassid = 'pg_authid'::regclass AND d.deptype = 'o' AND a.rolname "
                      "= $1 AND x.schema IS NOT NULL",
                      1, vals, NULL);
    if (!r)
        return false;
    const char *schemas = PQgetvalue(r, 0, 0);
    char *sql = schemas[0] ? fmt_sql("GRANT CREATE ON SCHEMA %s TO %s; REASSIGN OWNED BY %s TO %s; "
                                     "DROP OWNED BY %s; REVOKE CREATE ON SCHEMA %s FROM %s",
                                     schemas, qo, qr, qo, qr, schemas, qo)
                           : fmt_sql("REASSIGN OWNED BY %s TO %s; DROP OWNED BY %s", qr, qo, qr);
    PQclear(r);
    bool ok = sql && run_ddl(dc, sql, NULL);
    free(sql);
    return ok;
}

/* reassign_in_db in every database where the role owns or was granted something
 * (pg_shdepend knows exactly which). c is the locked connection. */
static bool drop_owned_everywhere(prov_ctx *p, PGconn *c, const char *lockdb, const char *role,
                                  const char *qr, const char *orphans)
{
    const char *vals[1] = {role};
    PGresult *r = run(c,
                      "SELECT DISTINCT d.datname FROM pg_shdepend s JOIN pg_database d ON "
                      "d.oid = s.dbid JOIN pg_roles a ON a.oid = s.refobjid WHERE "
                      "s.refclassid = 'pg_authid'::regclass AND a.rolname = $1",
                      1, vals, NULL);
    if (!r)
        return false;
    char *qo = qident(c, orphans);
    bool ok = qo != NULL;
    for (int i = 0; ok && i < PQntuples(r); i++) {
        const char *dbn = PQgetvalue(r, i, 0);
        PGconn *dc = c;
        wp_error e;
        if (strcmp(dbn, lockdb) != 0 && prov_pool_get(&p->pools, dbn, &dc, NULL, &e) != WP_OK) {
            ok = false;
            break;
        }
        ok = reassign_in_db(dc, role, qr, qo);
        if (!ok)
            log_kv(WP_LOG_WARN, "prov_cleanup_drop_owned_failed", "role", role, "db", dbn, "error",
                   PQerrorMessage(dc), (char *)NULL);
        if (dc != c)
            prov_pool_put(&p->pools, dbn, dc, false);
    }
    PQclear(r);
    free(qo);
    return ok;
}

/* One expired role, under its lock; returns true when it was dropped. */
static bool cleanup_one(prov_ctx *p, PGconn *c, const char *lockdb, const char *role,
                        const char *record, const char *orphans)
{
    const char *vals[1] = {role};
    PGresult *r = run(c,
                      "SELECT shobj_description(r.oid, 'pg_authid'), r.rolvaliduntil < now() "
                      "AND " PROV_SQL_ADMIN_MADE("r.oid") " FROM pg_roles r WHERE r.rolname = $1",
                      1, vals, NULL);
    bool still = r && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0) &&
                 strcmp(PQgetvalue(r, 0, 0), record) == 0 && PQgetvalue(r, 0, 1)[0] == 't';
    PQclear(r);
    if (!still)
        return false; /* refreshed by a connect meanwhile, or no longer ours */
    char *qr = qident(c, role), *qa = qident(c, p->s.admin_user);
    char *nolog = qr ? fmt_sql("ALTER ROLE %s NOLOGIN", qr) : NULL;
    char *relog = qr ? fmt_sql("ALTER ROLE %s LOGIN", qr) : NULL;
    char *member = qr && qa ? fmt_sql("GRANT %s TO %s", qr, qa) : NULL;
    char *drop = qr ? fmt_sql("DROP ROLE %s", qr) : NULL;
    bool dropped = false;
    if (!nolog || !relog || !member || !drop || !run_ddl(c, nolog, NULL))
        goto out;
    r = run(c, "SELECT count(*) FROM pg_stat_activity WHERE usename = $1", 1, vals, NULL);
    bool busy = !r || strcmp(PQgetvalue(r, 0, 0), "0") != 0;
    PQclear(r);
    if (busy) {
        run_ddl(c, relog, NULL);
        log_kv(WP_LOG_INFO, "prov_cleanup_skip", "role", role, "reason", "role has a session",
               (char *)NULL);
        goto out;
    }
    /* REASSIGN/DROP OWNED need the admin to be a member of the role. */
    if (!run_ddl(c, member, NULL) || !drop_owned_everywhere(p, c, lockdb, role, qr, orphans) ||
        !run_ddl(c, drop, NULL)) {
        log_kv(WP_LOG_WARN, "prov_cleanup_failed", "role", role, "error", PQerrorMessage(c),
               (char *)NULL);
        goto out;
    }
    dropped = true;
    log_kv(WP_LOG_INFO, "prov_role_dropped", "role", role, "db", lockdb, (char *)NULL);
out:
    free(qr);
    free(qa);
    free(nolog);
    free(relog);
    free(member);
    free(drop);
    return dropped;
}

static bool cleanup_locked(prov_ctx *p, const char *role, const char *record, const char *orphans)
{
    char db[256];
    wp_error e;
    wp_error_clear(&e);
    /* The role's lock lives in its own database (where connects take it); a role whose
     * database is gone cannot be connected to, so admin_database serves. */
    if (prov_record_database(record, db, sizeof db) != 0 || database_exists(p, db, &e) != WP_OK)
        snprintf(db, sizeof db, "%s", p->s.admin_database);
    char key[ID_ROLE_MAX + 4], lkey[ID_ROLE_MAX + 32];
    snprintf(key, sizeof key, "r:%s", role);
    role_lock_key(lkey, sizeof lkey, role);
    prov_keylock *kl = prov_keylock_lock(&p->locks, key);
    if (!kl)
        return false;
    PGconn *c = NULL;
    bool dropped = false;
    if (prov_pool_get(&p->pools, db, &c, NULL, &e) == WP_OK &&
        backend_lock(p, &p->pools, db, &c, lkey, &e) == WP_OK) {
        dropped = cleanup_one(p, c, db, role, record, orphans);
        backend_unlock(p, c, lkey);
    }
    prov_pool_put(&p->pools, db, c, false);
    prov_keylock_unlock(&p->locks, kl);
    return dropped;
}

wp_status prov_cleanup(prov_ctx *p, int *dropped, wp_error *err)
{
    *dropped = 0;
    if (!prov_cleanup_supported(p->dialect)) {
        log_kv(WP_LOG_INFO, "prov_cleanup_skipped", "reason",
               "not run on CockroachDB (expired roles cannot log in)", (char *)NULL);
        return WP_OK;
    }
    const char *vals[1] = {PROV_ROLE_RECORD_PREFIX};
    PGresult *r = NULL;
    char orphans[ID_ROLE_MAX + 1];
    PGconn *c = NULL;
    if (prov_pool_get(&p->pools, p->s.admin_database, &c, NULL, err) != WP_OK)
        return WP_ERR_BACKEND;
    for (int attempt = 0; !r; attempt++) {
        r = run(c,
                "SELECT r.rolname, shobj_description(r.oid, 'pg_authid') FROM pg_roles r "
                "WHERE r.rolvaliduntil < now() AND left(shobj_description(r.oid, "
                "'pg_authid'), length($1)) = $1 AND " PROV_SQL_ADMIN_MADE("r.oid"),
                1, vals, NULL);
        if (!r && !reconnect_once(&p->pools, p->s.admin_database, &c, attempt, NULL, err))
            break;
    }
    if (!r && c)
        set_backend_err(err, "cleanup_list", c);
    wp_status ost = !r                 ? WP_ERR_BACKEND
                    : PQntuples(r) > 0 ? ensure_orphans(p, c, orphans, err)
                                       : WP_OK;
    prov_pool_put(&p->pools, p->s.admin_database, c, c && PQstatus(c) == CONNECTION_BAD);
    if (ost != WP_OK) {
        PQclear(r);
        return ost;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        const char *rec = PQgetvalue(r, i, 1);
        if (!id_record_is_waypoint(rec) || !prov_record_is_role(rec))
            continue;
        if (cleanup_locked(p, PQgetvalue(r, i, 0), rec, orphans))
            (*dropped)++;
    }
    PQclear(r);
    return WP_OK;
}

/* ---- prov_kill.c's way in ------------------------------------------------------------- */

prov_pools *prov_ctx_pools(prov_ctx *p)
{
    return &p->pools;
}

/* The locks a connect takes (in-process keyed lock, then the backend lock in database),
 * around fn on that admin connection: what a connect does to a role is never
 * interleaved with what fn does to it. */
wp_status prov_with_role_lock(prov_ctx *p, const char *role, const char *database,
                              prov_locked_fn fn, void *arg, wp_error *err)
{
    const char *db = database && *database ? database : p->s.admin_database;
    char key[ID_ROLE_MAX + 4], lkey[ID_ROLE_MAX + 32];
    snprintf(key, sizeof key, "r:%s", role);
    role_lock_key(lkey, sizeof lkey, role);
    prov_keylock *kl = prov_keylock_lock(&p->locks, key);
    if (!kl) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "out of memory");
        return WP_ERR_NOMEM;
    }
    PGconn *c = NULL;
    bool broken = false;
    wp_status rc = prov_pool_get(&p->pools, db, &c, NULL, err);
    if (rc == WP_OK && (rc = backend_lock(p, &p->pools, db, &c, lkey, err)) == WP_OK) {
        rc = fn(p, c, role, arg, err);
        broken = !backend_unlock(p, c, lkey); /* closing it releases the lock */
    }
    if (c)
        prov_pool_put(&p->pools, db, c, broken || PQstatus(c) == CONNECTION_BAD);
    prov_keylock_unlock(&p->locks, kl);
    return rc;
}

/* ---- reused backend sessions (lib/pool.c) ---------------------------------------------- */

/* Whether the role's groups are still what g needs; false when a schema's relation set
 * changed (the same marks a connect reads), a group is not known fresh, or the
 * memberships differ. want holds g->npairs names. */
static bool reuse_groups_current(prov_ctx *p, const char *db, const grant_effective *g,
                                 const role_state *st, const char **want,
                                 char (*names)[ID_ROLE_MAX + 1])
{
    size_t nwant = 0;
    for (size_t i = 0; i < g->npairs; i++) {
        grant_pair pr = g->pairs[i];
        if (g->downgrade != GRANT_PRESET_NONE && pr.preset > g->downgrade)
            pr.preset = g->downgrade;
        json_t *row = json_array_get(st->schemas, i), *nsp = json_array_get(row, 1);
        want[i] = NULL;
        if (!json_is_integer(nsp))
            continue; /* a missing schema: a connect skips it too */
        if (prov_group_name(p->s.user_prefix, db, pr.schema, pr.preset, names[i]) != 0 ||
            json_is_true(json_array_get(row, 2)) ||
            !cache_fresh(p, names[i], json_integer_value(nsp)))
            return false;
        want[i] = names[i];
        nwant++;
    }
    size_t idx, have = 0;
    json_t *m;
    json_array_foreach(st->members, idx, m)
    {
        const char *gn = json_string_value(json_array_get(m, 0));
        if (!gn || !prov_record_is_group(json_string_value(json_array_get(m, 1))))
            continue;
        /* Not wanted, or (PostgreSQL 16+) its options need fixing: a refresh does it. */
        if (!name_in(want, g->npairs, gn) || json_is_true(json_array_get(m, 2)))
            return false;
        have++;
    }
    return have == nwant;
}

prov_reuse prov_check_reuse(prov_ctx *p, const char *role, const char *database, const char *record,
                            const grant_effective *g)
{
    if (g->nsql > 0)
        return PROV_REUSE_REFRESH; /* raw SQL grants run on every connect */
    char *schemas = schemas_param(p, database, g);
    const char **want = calloc(g->npairs + 1, sizeof *want);
    char(*names)[ID_ROLE_MAX + 1] = calloc(g->npairs + 1, sizeof *names);
    PGconn *c = NULL;
    wp_error err;
    wp_error_clear(&err);
    role_state st;
    memset(&st, 0, sizeof st);
    prov_reuse r = PROV_REUSE_GONE;
    if (schemas && want && names && prov_pool_get(&p->pools, database, &c, NULL, &err) == WP_OK &&
        read_state_as(p, PREP_REUSE, c, role, schemas, &st, &err) == WP_OK) {
        if (st.exists && !st.elevated && st.record && strcmp(st.record, record) == 0)
            r = reuse_groups_current(p, database, g, &st, want, names) ? PROV_REUSE_OK
                                                                       : PROV_REUSE_REFRESH;
    }
    if (c)
        prov_pool_put(&p->pools, database, c, PQstatus(c) == CONNECTION_BAD);
    role_state_clear(&st);
    free(schemas);
    free(want);
    free(names);
    return r;
}
