/*
 * prov_cleanup: dropping expired caller roles (spec section 5.5), and the orphans role
 * that inherits what they owned.
 *
 * A pass lists the roles the admin made whose VALID UNTIL has passed, and drops each
 * under its lock (provision.c), re-checking there that it is still expired and still
 * ours and that it has no session (NOLOGIN first, so none can start meanwhile). What a
 * dropped role owned goes to <prefix>orphans, never to the admin: objects keep running
 * with their owner's rights. Not run on CockroachDB (expired roles cannot log in).
 */
#include "provision.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "prov_internal.h"

/* Objects keep running with their OWNER's rights (SECURITY DEFINER functions, views,
 * rules, index expressions evaluated by VACUUM/ANALYZE), so what a dropped caller owned
 * must never go to the CREATEROLE admin: an admin-preset caller could plant a function
 * and have it prov_run as the admin after cleanup. It goes to <prefix>orphans instead:
 * NOLOGIN, no attributes, no memberships (re-checked every pass, fail closed), with the
 * admin as a member so it can still grant on and manage the kept data. */
wp_status prov_ensure_orphans(prov_ctx *p, PGconn *c, char name[ID_ROLE_MAX + 1], wp_error *err)
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
        PGresult *r = prov_run(c, q, 2, vals, NULL);
        if (!r) {
            prov_backend_err(err, "orphans_check", c);
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
                   "prov_run",
                   (char *)NULL);
            wp_error_set(err, WP_SQLSTATE_INTERNAL, "role \"%s\" is not usable", name);
            return WP_ERR_CONFLICT;
        }
        char *qo = prov_qident(c, name), *qrec = prov_qlit(c, PROV_ORPHANS_RECORD);
        char *sql = qo && qrec
                        ? prov_fmt_sql("CREATE ROLE %s NOLOGIN NOINHERIT NOSUPERUSER NOCREATEDB "
                                       "NOCREATEROLE NOREPLICATION NOBYPASSRLS; COMMENT ON "
                                       "ROLE %s IS %s; GRANT %s TO CURRENT_USER",
                                       qo, qo, qrec, qo)
                        : NULL;
        char ss[6] = "";
        bool created = sql && prov_run_ddl(c, sql, ss);
        free(qo);
        free(qrec);
        free(sql);
        if (!created && strcmp(ss, "42710") != 0) { /* 42710: another instance won */
            prov_backend_err(err, "orphans_create", c);
            return WP_ERR_BACKEND;
        }
    }
    prov_backend_err(err, "orphans_create", c);
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
    PGresult *r =
        prov_run(dc,
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
    char *sql = schemas[0]
                    ? prov_fmt_sql("GRANT CREATE ON SCHEMA %s TO %s; REASSIGN OWNED BY %s TO %s; "
                                   "DROP OWNED BY %s; REVOKE CREATE ON SCHEMA %s FROM %s",
                                   schemas, qo, qr, qo, qr, schemas, qo)
                    : prov_fmt_sql("REASSIGN OWNED BY %s TO %s; DROP OWNED BY %s", qr, qo, qr);
    PQclear(r);
    bool ok = sql && prov_run_ddl(dc, sql, NULL);
    free(sql);
    return ok;
}

/* reassign_in_db in every database where the role owns or was granted something
 * (pg_shdepend knows exactly which). c is the locked connection. */
static bool drop_owned_everywhere(prov_ctx *p, PGconn *c, const char *lockdb, const char *role,
                                  const char *qr, const char *orphans)
{
    const char *vals[1] = {role};
    PGresult *r = prov_run(c,
                           "SELECT DISTINCT d.datname FROM pg_shdepend s JOIN pg_database d ON "
                           "d.oid = s.dbid JOIN pg_roles a ON a.oid = s.refobjid WHERE "
                           "s.refclassid = 'pg_authid'::regclass AND a.rolname = $1",
                           1, vals, NULL);
    if (!r)
        return false;
    char *qo = prov_qident(c, orphans);
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
    PGresult *r =
        prov_run(c,
                 "SELECT shobj_description(r.oid, 'pg_authid'), r.rolvaliduntil < now() "
                 "AND " PROV_SQL_ADMIN_MADE("r.oid") " FROM pg_roles r WHERE r.rolname = $1",
                 1, vals, NULL);
    bool still = r && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0) &&
                 strcmp(PQgetvalue(r, 0, 0), record) == 0 && PQgetvalue(r, 0, 1)[0] == 't';
    PQclear(r);
    if (!still)
        return false; /* refreshed by a connect meanwhile, or no longer ours */
    char *qr = prov_qident(c, role), *qa = prov_qident(c, p->s.admin_user);
    char *nolog = qr ? prov_fmt_sql("ALTER ROLE %s NOLOGIN", qr) : NULL;
    char *relog = qr ? prov_fmt_sql("ALTER ROLE %s LOGIN", qr) : NULL;
    char *member = qr && qa ? prov_fmt_sql("GRANT %s TO %s", qr, qa) : NULL;
    char *drop = qr ? prov_fmt_sql("DROP ROLE %s", qr) : NULL;
    bool dropped = false;
    if (!nolog || !relog || !member || !drop || !prov_run_ddl(c, nolog, NULL))
        goto out;
    r = prov_run(c, "SELECT count(*) FROM pg_stat_activity WHERE usename = $1", 1, vals, NULL);
    bool busy = !r || strcmp(PQgetvalue(r, 0, 0), "0") != 0;
    PQclear(r);
    if (busy) {
        prov_run_ddl(c, relog, NULL);
        log_kv(WP_LOG_INFO, "prov_cleanup_skip", "role", role, "reason", "role has a session",
               (char *)NULL);
        goto out;
    }
    /* REASSIGN/DROP OWNED need the admin to be a member of the role. */
    if (!prov_run_ddl(c, member, NULL) || !drop_owned_everywhere(p, c, lockdb, role, qr, orphans) ||
        !prov_run_ddl(c, drop, NULL)) {
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
    if (prov_record_database(record, db, sizeof db) != 0 ||
        prov_database_exists(p, db, &e) != WP_OK)
        snprintf(db, sizeof db, "%s", p->s.admin_database);
    char key[ID_ROLE_MAX + 4], lkey[ID_ROLE_MAX + 32];
    snprintf(key, sizeof key, "r:%s", role);
    prov_role_lock_key(lkey, sizeof lkey, role);
    prov_keylock *kl = prov_keylock_lock(&p->locks, key);
    if (!kl)
        return false;
    PGconn *c = NULL;
    bool dropped = false;
    if (prov_pool_get(&p->pools, db, &c, NULL, &e) == WP_OK &&
        prov_backend_lock(p, &p->pools, db, &c, lkey, &e) == WP_OK) {
        dropped = cleanup_one(p, c, db, role, record, orphans);
        prov_backend_unlock(p, c, lkey);
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
               "not prov_run on CockroachDB (expired roles cannot log in)", (char *)NULL);
        return WP_OK;
    }
    const char *vals[1] = {PROV_ROLE_RECORD_PREFIX};
    PGresult *r = NULL;
    char orphans[ID_ROLE_MAX + 1];
    PGconn *c = NULL;
    if (prov_pool_get(&p->pools, p->s.admin_database, &c, NULL, err) != WP_OK)
        return WP_ERR_BACKEND;
    for (int attempt = 0; !r; attempt++) {
        r = prov_run(c,
                     "SELECT r.rolname, shobj_description(r.oid, 'pg_authid') FROM pg_roles r "
                     "WHERE r.rolvaliduntil < now() AND left(shobj_description(r.oid, "
                     "'pg_authid'), length($1)) = $1 AND " PROV_SQL_ADMIN_MADE("r.oid"),
                     1, vals, NULL);
        if (!r && !prov_reconnect_once(&p->pools, p->s.admin_database, &c, attempt, NULL, err))
            break;
    }
    if (!r && c)
        prov_backend_err(err, "cleanup_list", c);
    wp_status ost = !r                 ? WP_ERR_BACKEND
                    : PQntuples(r) > 0 ? prov_ensure_orphans(p, c, orphans, err)
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
