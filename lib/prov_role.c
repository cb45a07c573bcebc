/*
 * prov_role: the caller's backend role over its lifecycle (spec sections 3.2, 3.5, 4, 5
 * and 9): created or refreshed on every provisioning connect, leased until the worker
 * has logged in, its expiry moved with use, and checked before a parked session of it
 * is reused.
 *
 * One prov_ensure_role() call, in the steady state, is four round trips on one pooled
 * admin connection to the TARGET database: take the per-role advisory lock, read the
 * role's state (record, attributes, group memberships, server-side expiry time and the
 * change marks of the granted schemas, all in one query), set the fresh password and
 * expiry, and (at lease release) unlock. No per-table work happens unless a granted
 * schema gained relations (prov_reconcile.c).
 *
 * Every role operation for a role happens under its lock (provision.c). The lease keeps
 * that connection checked out until the worker has authenticated upstream, so the
 * password cannot change in between.
 *
 * Safety rules: a role is only touched when its record equals this identity's record
 * exactly (else the hashed name is tried, else WP_ERR_CONFLICT); identifiers are quoted
 * with PQescapeIdentifier and DDL literals with PQescapeLiteral (DDL takes no
 * parameters); the password only ever reaches SQL as a SCRAM verifier or MD5 hash.
 */
#include "provision.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "prov_internal.h"
#include "rawsql.h"
#include "scram.h"

/* Cost of SCRAM's PBKDF2 on a 256-bit random secret buys nothing: nobody can brute
 * force the password from the verifier. A low count keeps every connect fast. */
#define PROV_SCRAM_ITERATIONS 64
/* object_not_in_prerequisite_state: what PostgreSQL answers a login to a database that
 * does not allow connections. */
#define PROV_SQLSTATE_DB_CLOSED "55000"

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
        PGresult *r = prov_run(c, stmts[i], 0, NULL, ss);
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
wp_status prov_database_exists(prov_ctx *p, const char *db, wp_error *err)
{
    PGconn *c = NULL;
    if (prov_pool_get(&p->pools, p->s.admin_database, &c, NULL, err) != WP_OK)
        return WP_ERR_BACKEND;
    const char *vals[1] = {db};
    PGresult *r = NULL;
    for (int attempt = 0; !r; attempt++) {
        r = prov_run(c, "SELECT datallowconn FROM pg_database WHERE datname = $1", 1, vals, NULL);
        if (!r && !prov_reconnect_once(&p->pools, p->s.admin_database, &c, attempt, NULL, err))
            break;
    }
    if (!c)
        return WP_ERR_BACKEND;
    wp_status st = WP_OK;
    if (!r) {
        prov_backend_err(err, "database_check", c);
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
                            prov_role_state *st, const prov_lease *l, bool *created, wp_error *err)
{
    char verifier[SCRAM_VERIFIER_MAX] = ""; /* MD5 salts with the role name: made here */
    if (p->md5 && scram_md5_stored(l->password, role, verifier) != WP_OK) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "cannot generate a backend password");
        return WP_ERR_INTERNAL;
    }
    char *qr = prov_qident(c, role), *qv = prov_qlit(c, p->md5 ? verifier : l->verifier),
         *qu = prov_qlit(c, st->valid_until);
    char *qrec = prov_qlit(c, record);
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
            sql =
                prov_fmt_sql("CREATE ROLE %s %s PASSWORD %s VALID UNTIL %s; COMMENT ON ROLE %s IS "
                             "%s; GRANT %s TO CURRENT_USER",
                             qr, attrs, qv, qu, qr, qrec, qr);
        else if ((qname = prov_qlit(c, role)) != NULL)
            sql = prov_fmt_sql("CREATE ROLE %s LOGIN PASSWORD %s VALID UNTIL %s; UPSERT INTO %s "
                               "(role_name, record) VALUES (%s, %s)",
                               qr, qv, qu, p->qrecords, qname, qrec);
        char ss[6];
        if (sql && prov_run_ddl(c, sql, ss)) {
            *created = true;
            goto out;
        }
        if (!sql || strcmp(ss, "42710") != 0) { /* 42710: created concurrently, re-read */
            prov_backend_err(err, "create_role", c);
            rc = sql ? WP_ERR_BACKEND : WP_ERR_NOMEM;
            goto out;
        }
        rc = WP_ERR_CONFLICT; /* caller re-reads and decides */
        goto out;
    }
    sql = prov_fmt_sql("ALTER ROLE %s LOGIN PASSWORD %s VALID UNTIL %s", qr, qv, qu);
    if (!sql || !prov_run_ddl(c, sql, NULL)) {
        prov_backend_err(err, "alter_role", c);
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
            prov_backend_unlock(p, l->lock_conn, l->lock_key);
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

/* Locks role name, reads its state. Returns WP_OK when the role is free or ours,
 * WP_ERR_CONFLICT when it belongs to someone else (lock released). */
static wp_status claim(prov_ctx *p, prov_lease *l, const char *record, const char *schemas,
                       prov_role_state *st, wp_error *err)
{
    char key[ID_ROLE_MAX + 4];
    snprintf(key, sizeof key, "r:%s", l->role);
    if (!(l->kl = prov_keylock_lock(&p->locks, key)))
        return WP_ERR_NOMEM;
    char ss[6] = "";
    if (prov_pool_get(&p->pools, l->db, &l->conn, ss, err) != WP_OK) {
        lease_unlock(l);
        return prov_checkout_failed(err, l->db, ss);
    }
    wp_status rc = prov_lock_and_read(p, l, schemas, st, err);
    if (rc != WP_OK) {
        lease_unlock(l);
        return rc;
    }
    if (st->exists && (!st->record || strcmp(st->record, record) != 0)) {
        lease_unlock(l);
        prov_role_state_clear(st);
        return WP_ERR_CONFLICT;
    }
    if (st->exists && st->elevated) {
        log_kv(WP_LOG_ERROR, "prov_role_elevated", "role", l->role, "reason",
               "role has attributes Waypoint never grants; refusing to use it", (char *)NULL);
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH,
                     "cannot provision role: the backend role was modified outside Waypoint");
        lease_unlock(l);
        prov_role_state_clear(st);
        return WP_ERR_DENIED;
    }
    return WP_OK;
}

/* Picks the plain or hashed name, locked and verified (the role is written later). */
static wp_status claim_name(prov_ctx *p, prov_lease *l, const id_identity *id, const char *scope,
                            const char *record, const char *schemas, prov_role_state *st,
                            wp_error *err)
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
    for (prov_db_seen *d = p->public_checked; d && fresh; d = d->next)
        fresh = strcmp(d->name, db) != 0;
    size_t n = strlen(db) + 1;
    prov_db_seen *d = fresh ? malloc(sizeof *d + n) : NULL;
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
    for (prov_db_seen **pp = &p->public_checked; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->name, db) == 0) {
            prov_db_seen *d = *pp;
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
    PGresult *r = prov_run(c,
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

static wp_status ensure_locked(prov_ctx *p, prov_lease *l, const id_identity *id, const char *scope,
                               const grant_effective *g, const char *schemas, wp_error *err)
{
    prov_role_state st;
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
        prov_role_state_clear(&st);
        rc = prov_read_state(p, l->conn, l->role, schemas, &st, err);
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
    rc = prov_reconcile_grants(p, l->conn, l->db, l->role, g, &st, false, err);
    if (rc == WP_ERR_BACKEND) { /* a cached group may have been dropped: heal once */
        prov_role_state_clear(&st);
        rc = prov_read_state(p, l->conn, l->role, schemas, &st, err);
        if (rc == WP_OK)
            rc = prov_reconcile_grants(p, l->conn, l->db, l->role, g, &st, true, err);
    }
    if (rc == WP_OK && raw)
        rc = rawsql_apply(l->conn, l->role, g, stmts, err);
    if (rc == WP_OK) /* after grants and raw SQL: both decide where CREATE is held */
        rc = prov_revoke_ownership(p, l->conn, l->db, l->role, g, &st, err);
out:
    free_strs(stmts, g->nsql);
    prov_role_state_clear(&st);
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
    wp_status rc =
        prov_pool_known(&p->pools, database) ? WP_OK : prov_database_exists(p, database, err);
    if (rc != WP_OK)
        return rc;
    prov_lease *l = calloc(1, sizeof *l);
    char *schemas = prov_schemas_param(p, database, g);
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

void prov_admin_conns(prov_ctx *p, void (*fn)(void *arg, const char *db, int open, int idle),
                      void *arg)
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
    prov_role_state st;
    memset(&st, 0, sizeof st);
    if (prov_read_state(p, c, role, NULL, &st, &err) != WP_OK)
        return false;
    bool ok = true; /* not ours (or gone): nothing to do */
    if (st.exists && prov_record_is_role(st.record)) {
        char *qr = prov_qident(c, role), *qu = prov_qlit(c, st.valid_until);
        char *sql = qr && qu ? prov_fmt_sql("ALTER ROLE %s VALID UNTIL %s", qr, qu) : NULL;
        ok = sql && prov_run_ddl(c, sql, NULL);
        free(qr);
        free(qu);
        free(sql);
    }
    prov_role_state_clear(&st);
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
    prov_role_lock_key(lkey, sizeof lkey, role);
    prov_keylock *kl = prov_keylock_lock(&p->locks, key);
    if (!kl)
        return;
    wp_error err;
    wp_error_clear(&err);
    PGconn *c = NULL;
    bool ok = false;
    if (prov_pool_get(&p->pools, db, &c, NULL, &err) == WP_OK &&
        prov_backend_lock(p, &p->pools, db, &c, lkey, &err) == WP_OK) {
        ok = touch_locked(p, c, role);
        prov_backend_unlock(p, c, lkey);
    }
    if (!ok)
        log_kv(WP_LOG_WARN, "prov_touch_failed", "role", role, "error",
               err.message[0] ? err.message : "backend refused", (char *)NULL);
    if (c)
        prov_pool_put(&p->pools, db, c, PQstatus(c) == CONNECTION_BAD);
    prov_keylock_unlock(&p->locks, kl);
}

prov_reuse prov_check_reuse(prov_ctx *p, const char *role, const char *database, const char *record,
                            const grant_effective *g)
{
    if (g->nsql > 0)
        return PROV_REUSE_REFRESH; /* raw SQL grants prov_run on every connect */
    char *schemas = prov_schemas_param(p, database, g);
    const char **want = calloc(g->npairs + 1, sizeof *want);
    char(*names)[ID_ROLE_MAX + 1] = calloc(g->npairs + 1, sizeof *names);
    PGconn *c = NULL;
    wp_error err;
    wp_error_clear(&err);
    prov_role_state st;
    memset(&st, 0, sizeof st);
    prov_reuse r = PROV_REUSE_GONE;
    if (schemas && want && names && prov_pool_get(&p->pools, database, &c, NULL, &err) == WP_OK &&
        prov_read_state_as(p, PREP_REUSE, c, role, schemas, &st, &err) == WP_OK) {
        if (st.exists && !st.elevated && st.record && strcmp(st.record, record) == 0)
            r = prov_reuse_groups_current(p, database, g, &st, want, names) ? PROV_REUSE_OK
                                                                            : PROV_REUSE_REFRESH;
    }
    if (c)
        prov_pool_put(&p->pools, database, c, PQstatus(c) == CONNECTION_BAD);
    prov_role_state_clear(&st);
    free(schemas);
    free(want);
    free(names);
    return r;
}
