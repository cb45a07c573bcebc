/*
 * prov_owner: objects a caller role owns where its grant no longer allows it.
 *
 * Ownership is not a grant: an admin-preset caller owns what it created and would keep
 * that after its grant narrows. After grants and raw SQL are reconciled on a connect,
 * the objects it owns in schemas where it holds no admin preset (and no CREATE
 * otherwise) are handed to the powerless orphans role (prov_cleanup.c), in one
 * transaction. The role-state read already lists the owned schemas, so a steady-state
 * connect sends nothing from here.
 */
#include "provision.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "prov_internal.h"

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
        ok = (*sql =
                  prov_fmt_sql("GRANT CREATE ON SCHEMA %s TO %s; %sREVOKE CREATE ON SCHEMA %s FROM "
                               "%s",
                               schemas, qo, alters, schemas, qo)) != NULL;
    free(schemas);
    free(alters);
    return ok;
}

/* JSON array of the schemas in st->owned where the (clamped) grant has no admin preset;
 * NULL when there are none (or on allocation failure, *nomem set). */
static char *ownership_candidates(const grant_effective *g, const prov_role_state *st, bool *nomem)
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
wp_status prov_revoke_ownership(prov_ctx *p, PGconn *c, const char *db, const char *role,
                                const grant_effective *g, const prov_role_state *st, wp_error *err)
{
    bool nomem;
    char *cj = ownership_candidates(g, st, &nomem);
    if (!cj)
        return nomem ? WP_ERR_NOMEM : WP_OK;
    const char *vals[2] = {role, cj};
    PGresult *r = prov_run(c, PROV_SQL_OWNED_OBJECTS, 2, vals, NULL);
    free(cj);
    if (!r) {
        prov_backend_err(err, "owned_objects", c);
        return WP_ERR_BACKEND;
    }
    wp_status rc = WP_OK;
    char orphans[ID_ROLE_MAX + 1], *qo = NULL, *sql = NULL;
    int n = 0;
    if (PQntuples(r) > 0 && (rc = prov_ensure_orphans(p, c, orphans, err)) == WP_OK &&
        (!(qo = prov_qident(c, orphans)) || !ownership_sql(r, role, qo, &sql, &n)))
        rc = WP_ERR_NOMEM;
    PQclear(r);
    if (rc == WP_OK && n > 0) {
        if (prov_run_ddl(c, sql, NULL)) {
            char num[16];
            snprintf(num, sizeof num, "%d", n);
            log_kv(WP_LOG_INFO, "prov_ownership_revoked", "role", role, "db", db, "objects", num,
                   (char *)NULL);
        } else {
            prov_backend_err(err, "ownership", c);
            rc = WP_ERR_BACKEND;
        }
    }
    free(qo);
    free(sql);
    return rc;
}
