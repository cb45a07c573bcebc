/*
 * provision: the provisioning context and what its files share (spec sections 4, 5, 9).
 *
 * A prov_ctx owns, per listener, the admin connection pools (one per target database,
 * opened on demand, reused, reconnected after a backend restart), the in-process keyed
 * locks and the group cache. This file creates and destroys it (detecting the dialect,
 * password hashing and membership options once), and holds the plumbing the other
 * provisioning files use: SQL helpers that quote and parameterize, the one "retry once on
 * a dead admin connection", the per-role lock, and the role-state read.
 *
 * The module is split by job, each file with its own design comment:
 *   provision.c      context, SQL helpers, per-role lock, role-state read (this file)
 *   prov_role.c      role lifecycle: ensure on connect, lease, touch, reuse check
 *   prov_reconcile.c group roles and the caller's memberships
 *   prov_owner.c     ownership a narrowed grant must not keep
 *   prov_cleanup.c   dropping expired roles, the orphans role
 *   prov_sql.c, prov_pool.c, prov_kill.c: dialects and SQL text, pools and keyed
 *   locks, stopping backends (see their own comments).
 *
 * The per-role lock: every role operation happens under an in-process keyed mutex (so
 * concurrent connects of one caller queue here, not in the pool) and a PostgreSQL
 * advisory lock taken in the role's own database (so several Waypoint instances, and
 * cleanup, serialize too). PostgreSQL takes it and reads the role's state in one
 * pipelined round trip; CockroachDB holds a row of a lock table FOR UPDATE.
 */
#include "provision.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "prov_internal.h"

/* ---- small helpers ----------------------------------------------------------------- */

/* Sets err for a failed step what on c; logs it at error level when log is set. */
static void backend_err(wp_error *err, const char *what, PGconn *c, bool log)
{
    char msg[300];
    snprintf(msg, sizeof msg, "%s", c ? PQerrorMessage(c) : "no connection");
    size_t n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n')
        msg[--n] = '\0';
    if (log)
        log_kv(WP_LOG_ERROR, "prov_backend_error", "step", what, "error", msg, (char *)NULL);
    /* The backend's words stay in the log (and the detail, which is never sent). */
    wp_error_set(err, WP_SQLSTATE_CONN_FAILURE, "setting up access on the backend failed");
    wp_error_detail(err, "%s: %s", what, msg);
}

void prov_backend_err(wp_error *err, const char *what, PGconn *c)
{
    backend_err(err, what, c, true);
}

/* The backend's words in a detail set by backend_err for step what. */
static const char *err_words(const wp_error *e, const char *what)
{
    size_t n = strlen(what);
    return strncmp(e->detail, what, n) == 0 && e->detail[n] == ':' ? e->detail + n + 2 : e->detail;
}

void prov_log_retried(const char *what, const char *first_error, bool succeeded)
{
    /* A dead pooled connection (backend restart, terminated admin session) is expected
     * now and then: the step was run again on a fresh one. Only a retry that also
     * failed is an error, and that failure is logged where it is handled. */
    log_kv(succeeded ? WP_LOG_WARN : WP_LOG_ERROR, "prov_step_retried", "step", what, "error",
           first_error, "outcome", succeeded ? "succeeded" : "failed", (char *)NULL);
}

static const char *res_state(const PGresult *r)
{
    const char *s = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    return s ? s : "";
}

/* PQexecParams with text parameters; returns the result (caller clears) or NULL when
 * the command failed (the result is cleared; *sqlstate gets its SQLSTATE). */
PGresult *prov_run(PGconn *c, const char *sql, int n, const char *const *vals, char sqlstate[6])
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
bool prov_run_ddl(PGconn *c, const char *sql, char sqlstate[6])
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (sqlstate)
        snprintf(sqlstate, 6, "%s", ok ? "00000" : res_state(r));
    PQclear(r);
    return ok;
}

char *prov_qident(PGconn *c, const char *s)
{
    char *q = PQescapeIdentifier(c, s, strlen(s));
    char *dup = q ? strdup(q) : NULL;
    PQfreemem(q);
    return dup;
}

char *prov_qlit(PGconn *c, const char *s)
{
    char *q = PQescapeLiteral(c, s, strlen(s));
    char *dup = q ? strdup(q) : NULL;
    PQfreemem(q);
    return dup;
}

/* printf into a fresh buffer. */
char *prov_fmt_sql(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
char *prov_fmt_sql(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *out = NULL;
    if (vasprintf(&out, fmt, ap) < 0)
        out = NULL;
    va_end(ap);
    return out;
}

void prov_role_state_clear(prov_role_state *st)
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
    PGresult *r = prov_run(c,
                           "SELECT version(), current_setting('password_encryption', true), "
                           "current_setting('server_version_num', true)",
                           0, NULL, NULL);
    if (!r) {
        prov_backend_err(err, "detect", c);
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
        if (!prov_run_ddl(
                c,
                "CREATE TABLE IF NOT EXISTS waypoint_roles (role_name STRING PRIMARY KEY, "
                "record STRING NOT NULL); CREATE TABLE IF NOT EXISTS waypoint_locks "
                "(name STRING PRIMARY KEY)",
                NULL)) {
            prov_backend_err(err, "crdb_tables", c);
            st = WP_ERR_BACKEND;
        } else {
            char *qdb = prov_qident(c, p->s.admin_database);
            p->qrecords = qdb ? prov_fmt_sql("%s.public.waypoint_roles", qdb) : NULL;
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
     * these prov_run only on pools connections). */
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
    /* Each pools object runs a reaper thread: one that started is stopped before p goes. */
    bool pools = prov_pools_init(&p->pools, &p->s) == 0;
    bool lockpools = pools && prov_pools_init(&p->lockpools, &p->s) == 0;
    if (!lockpools || prov_keylocks_init(&p->locks) != 0 ||
        pthread_mutex_init(&p->cache_mu, NULL) != 0 ||
        pthread_mutex_init(&p->clear_mu, NULL) != 0) {
        if (lockpools)
            prov_pools_destroy(&p->lockpools);
        if (pools)
            prov_pools_destroy(&p->pools);
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
    pthread_mutex_destroy(&p->clear_mu); /* clears: none outlives its session's end */
    for (prov_group_cache *g = p->groups, *n; g; g = n) {
        n = g->next;
        free(g);
    }
    for (prov_db_seen *d = p->public_checked, *n; d; d = n) {
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
 * replaced by a fresh connection from pools and true is returned (prov_run it again).
 * Otherwise false, *c untouched; or, when no fresh connection could be had, false with
 * *c NULL, err set and the reconnect's SQLSTATE in sqlstate (may be NULL). */
bool prov_reconnect_once(prov_pools *pools, const char *db, PGconn **c, int attempt, char *sqlstate,
                         wp_error *err)
{
    if (attempt > 0 || !*c || PQstatus(*c) != CONNECTION_BAD)
        return false;
    prov_pool_put(pools, db, *c, true);
    *c = NULL;
    return prov_pool_get(pools, db, c, sqlstate, err) == WP_OK;
}

/* A checkout of db failed with sqlstate: a database dropped since its pool was made
 * shows as 3D000 on the reconnect, and is reported as PostgreSQL would. */
wp_status prov_checkout_failed(wp_error *err, const char *db, const char *sqlstate)
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
wp_status prov_backend_lock(prov_ctx *p, prov_pools *pools, const char *db, PGconn **c,
                            const char *key, wp_error *err)
{
    const char *vals[1] = {key};
    bool table = prov_lock_strategy(p->dialect) == PROV_LOCK_TABLE;
    char first[300] = ""; /* the failed first attempt's error, when there was a retry */
    for (int attempt = 0;; attempt++) {
        PGresult *r = NULL;
        if (table) {
            for (int i = 0; i <= prov_serialization_retries(p->dialect) && !r; i++) {
                char ss[6] = "";
                if (prov_run_ddl(*c, "BEGIN", ss) &&
                    (r = prov_run(*c,
                                  "INSERT INTO waypoint_locks (name) VALUES ($1) "
                                  "ON CONFLICT DO NOTHING",
                                  1, vals, ss)) != NULL) {
                    PQclear(r);
                    r = prov_run(*c, prov_sql_lock(p->dialect), 1, vals, ss);
                }
                if (!r)
                    PQclear(PQexec(*c, "ROLLBACK"));
                if (!r && strcmp(ss, "40001") != 0)
                    break;
            }
        } else {
            r = prov_run(*c, prov_sql_lock(p->dialect), 1, vals, NULL);
        }
        if (r) {
            PQclear(r);
            if (first[0])
                prov_log_retried("lock", first, true);
            return WP_OK;
        }
        if (attempt == 0 && *c)
            snprintf(first, sizeof first, "%s", PQerrorMessage(*c));
        if (!prov_reconnect_once(pools, db, c, attempt, NULL, err))
            break;
    }
    if (*c) /* else the reconnect failed and err says why */
        prov_backend_err(err, "lock", *c);
    return WP_ERR_BACKEND;
}

bool prov_backend_unlock(prov_ctx *p, PGconn *c, const char *key)
{
    const char *vals[1] = {key};
    PGresult *r = prov_run(c, prov_sql_unlock(p->dialect),
                           prov_lock_strategy(p->dialect) == PROV_LOCK_TABLE ? 0 : 1, vals, NULL);
    if (!r)
        log_kv(WP_LOG_WARN, "prov_unlock_failed", "key", key, (char *)NULL);
    PQclear(r);
    return r != NULL;
}

void prov_role_lock_key(char *out, size_t outsz, const char *role)
{
    snprintf(out, outsz, "waypoint:role:%s", role);
}

/* ---- reading the role ---------------------------------------------------------------- */

/* JSON for $3: [{"name": schema, "w": watermark}] per pair, in pair order. */
char *prov_schemas_param(prov_ctx *p, const char *db, const grant_effective *g)
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
            for (prov_group_cache *c = p->groups; c; c = c->next)
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

static wp_status parse_state(PGresult *r, PGconn *c, prov_role_state *st, wp_error *err)
{
    memset(st, 0, sizeof *st);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 || PQnfields(r) != 7) {
        prov_backend_err(err, "read_role", c);
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
        prov_role_state_clear(st);
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "backend provisioning failed");
        return WP_ERR_INTERNAL;
    }
    return WP_OK;
}

wp_status prov_read_state_as(prov_ctx *p, const char *stmt, PGconn *c, const char *role,
                             const char *schemas, prov_role_state *st, wp_error *err)
{
    memset(st, 0, sizeof *st);
    const char *vals[3] = {role, p->ttl_ms, schemas ? schemas : "[]"};
    PGresult *r = PQexecPrepared(c, stmt, 3, vals, NULL, NULL, 0);
    wp_status rc = parse_state(r, c, st, err);
    PQclear(r);
    return rc;
}

wp_status prov_read_state(prov_ctx *p, PGconn *c, const char *role, const char *schemas,
                          prov_role_state *st, wp_error *err)
{
    return prov_read_state_as(p, PREP_STATE, c, role, schemas, st, err);
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
                                     const char *schemas, prov_role_state *st, bool *lock_failed,
                                     wp_error *err)
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
    *lock_failed = !lr || PQresultStatus(lr) != PGRES_TUPLES_OK;
    if (!*lock_failed)
        rc = parse_state(sr, c, st, err);
    else
        backend_err(err, "lock", c, false); /* the caller logs: it may retry */
    PQclear(lr);
    PQclear(sr);
    return rc;
}

wp_status prov_take_backend_lock(prov_ctx *p, prov_lease *l, wp_error *err)
{
    prov_role_lock_key(l->lock_key, sizeof l->lock_key, l->role);
    wp_status rc;
    if (prov_lock_strategy(p->dialect) == PROV_LOCK_TABLE) {
        rc = prov_pool_get(&p->lockpools, p->s.admin_database, &l->lock_conn, NULL, err);
        if (rc == WP_OK)
            rc = prov_backend_lock(p, &p->lockpools, p->s.admin_database, &l->lock_conn,
                                   l->lock_key, err);
    } else {
        rc = prov_backend_lock(p, &p->pools, l->db, &l->conn, l->lock_key, err);
    }
    if (rc != WP_OK)
        l->lock_key[0] = '\0';
    return rc == WP_OK ? WP_OK : WP_ERR_BACKEND;
}

/* Takes the role's backend lock and reads its state, retrying once on a fresh
 * connection when the pooled one died (backend restart). */
wp_status prov_lock_and_read(prov_ctx *p, prov_lease *l, const char *schemas, prov_role_state *st,
                             wp_error *err)
{
    prov_role_lock_key(l->lock_key, sizeof l->lock_key, l->role);
    if (prov_lock_strategy(p->dialect) != PROV_LOCK_ADVISORY) {
        wp_status rc = prov_take_backend_lock(p, l, err);
        return rc == WP_OK ? prov_read_state(p, l->conn, l->role, schemas, st, err) : rc;
    }
    wp_error first;
    wp_error_clear(&first);
    for (int attempt = 0;; attempt++) {
        bool lock_failed = false;
        wp_status rc =
            pipelined_lock_read(p, l->conn, l->lock_key, l->role, schemas, st, &lock_failed, err);
        if (rc == WP_OK) {
            if (attempt > 0)
                prov_log_retried("lock", err_words(&first, "lock"), true);
            return rc;
        }
        if (attempt == 0)
            first = *err;
        char ss[6] = "";
        if (prov_reconnect_once(&p->pools, l->db, &l->conn, attempt, ss, err))
            continue;
        if (attempt > 0)
            prov_log_retried("lock", err_words(&first, "lock"), false);
        if (lock_failed) /* (a failed state read logged itself) */
            log_kv(WP_LOG_ERROR, "prov_backend_error", "step", "lock", "error",
                   err_words(l->conn ? err : &first, "lock"), (char *)NULL);
        if (l->conn)
            return rc;
        l->lock_key[0] = '\0';
        return prov_checkout_failed(err, l->db, ss);
    }
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
    prov_role_lock_key(lkey, sizeof lkey, role);
    prov_keylock *kl = prov_keylock_lock(&p->locks, key);
    if (!kl) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "out of memory");
        return WP_ERR_NOMEM;
    }
    PGconn *c = NULL;
    bool broken = false;
    wp_status rc = prov_pool_get(&p->pools, db, &c, NULL, err);
    if (rc == WP_OK && (rc = prov_backend_lock(p, &p->pools, db, &c, lkey, err)) == WP_OK) {
        rc = fn(p, c, role, arg, err);
        broken = !prov_backend_unlock(p, c, lkey); /* closing it releases the lock */
    }
    if (c)
        prov_pool_put(&p->pools, db, c, broken || PQstatus(c) == CONNECTION_BAD);
    prov_keylock_unlock(&p->locks, kl);
    return rc;
}
