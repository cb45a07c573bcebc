/*
 * prov_reconcile: the group roles that hold privileges, and the caller role's
 * memberships in them (spec section 4).
 *
 * Privileges are held by shared NOLOGIN group roles, one per (database, schema, preset),
 * each marked with a Waypoint record; the caller role is only ever a member of exactly
 * the groups of its (preset, schema) pairs. Narrowing a grant revokes a membership,
 * widening it grants one, and a group is re-granted ON ALL TABLES/SEQUENCES only when
 * the schema's relation set changed (an OID watermark per group, kept in memory in the
 * context's group cache, re-proved every PROV_GROUP_MAX_AGE_S). A parked session's
 * reuse check asks the same questions without writing (prov_reuse_groups_current).
 */
#include "provision.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "prov_internal.h"

/* Watermarks are re-proved this often with a full ALL TABLES grant, which also catches
 * a relation whose creating transaction committed with an OID below a watermark. */
#define PROV_GROUP_MAX_AGE_S 600

/* ---- group roles ---------------------------------------------------------------------- */

static prov_group_cache *cache_find(prov_ctx *p, const char *name)
{
    for (prov_group_cache *c = p->groups; c; c = c->next)
        if (strcmp(c->name, name) == 0)
            return c;
    return NULL;
}

static void cache_store(prov_ctx *p, const char *name, long long nsp, long long wm)
{
    pthread_mutex_lock(&p->cache_mu);
    prov_group_cache *c = cache_find(p, name);
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
    prov_group_cache *c = cache_find(p, name);
    if (c)
        c->refreshed = 0, c->nsp_oid = -1;
    pthread_mutex_unlock(&p->cache_mu);
}

static bool cache_fresh(prov_ctx *p, const char *name, long long nsp)
{
    pthread_mutex_lock(&p->cache_mu);
    prov_group_cache *c = cache_find(p, name);
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
    char *qg = prov_qident(c, gname), *qs = prov_qident(c, pr->schema), *qdb = prov_qident(c, db);
    char *qrec = rec ? prov_qlit(c, rec) : NULL;
    char *privs = NULL;
    wp_status st = WP_ERR_BACKEND;
    PGresult *r = NULL;
    if (!qg || !qs || !qdb || !qrec) {
        st = WP_ERR_NOMEM;
        goto out;
    }
    if (!prov_run_ddl(c, "BEGIN", NULL))
        goto fail;
    const char *sv[1] = {pr->schema};
    if (!(r = prov_run(c, PROV_SQL_GRANTABLE, 1, sv, NULL)))
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
        if (!(r = prov_run(c, "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", 1, kv,
                           NULL)))
            goto fail;
        PQclear(r);
        r = prov_run(c,
                     "SELECT r.oid IS NOT NULL, shobj_description(r.oid, 'pg_authid') FROM "
                     "(SELECT 1) AS one LEFT JOIN pg_roles r ON r.rolname = $1",
                     1, nv, NULL);
    } else {
        char *q =
            prov_fmt_sql("SELECT r.oid IS NOT NULL, (SELECT record FROM %s WHERE role_name "
                         "= $1) FROM (SELECT 1) AS one LEFT JOIN pg_roles r ON r.rolname = $1",
                         p->qrecords);
        r = q ? prov_run(c, q, 1, nv, NULL) : NULL;
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
        sql = prov_fmt_sql("CREATE ROLE %s NOLOGIN NOINHERIT; COMMENT ON ROLE %s IS %s; %s", qg, qg,
                           qrec, privs);
    else if (!exists)
        sql = prov_fmt_sql("CREATE ROLE %s NOLOGIN; UPSERT INTO %s (role_name, record) VALUES (%s, "
                           "%s); %s",
                           qg, p->qrecords, qg, qrec, privs);
    else
        sql = strdup(privs);
    bool ok = sql && prov_run_ddl(c, sql, NULL);
    free(sql);
    if (!ok || !prov_run_ddl(c, "COMMIT", NULL))
        goto fail;
    log_kv(WP_LOG_INFO, exists ? "prov_group_refreshed" : "prov_group_created", "group", gname,
           "db", db, "schema", pr->schema, "preset", grant_preset_str(pr->preset), (char *)NULL);
    st = WP_OK;
    goto out;
fail:
    prov_backend_err(err, "group_refresh", c);
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
    char *qg = prov_qident(c, gn);
    char *next =
        qg ? prov_fmt_sql("%sGRANT %s TO %s%s; ", *sql, qg, qr, prov_sql_member_options(opts))
           : NULL;
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
static wp_status reconcile_members(PGconn *c, const char *role, const prov_role_state *st,
                                   char (*want)[ID_ROLE_MAX + 1], size_t nwant, bool opts,
                                   wp_error *err)
{
    const char **wantp = calloc(nwant + 1, sizeof *wantp);
    char *qr = prov_qident(c, role);
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
        char *qg = prov_qident(c, gn),
             *next = qg ? prov_fmt_sql("%sREVOKE %s FROM %s; ", sql, qg, qr) : NULL;
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
    if (sql[0] && !prov_run_ddl(c, sql, NULL)) {
        prov_backend_err(err, "membership", c);
        rc = WP_ERR_BACKEND;
    }
out:
    free(wantp);
    free(qr);
    free(sql);
    return rc;
}

wp_status prov_reconcile_grants(prov_ctx *p, PGconn *c, const char *db, const char *role,
                                const grant_effective *g, const prov_role_state *st, bool force,
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

/* ---- reused backend sessions (lib/pool.c) ---------------------------------------------- */

/* Whether the role's groups are still what g needs; false when a schema's relation set
 * changed (the same marks a connect reads), a group is not known fresh, or the
 * memberships differ. want holds g->npairs names. */
bool prov_reuse_groups_current(prov_ctx *p, const char *db, const grant_effective *g,
                               const prov_role_state *st, const char **want,
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
