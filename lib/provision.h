/*
 * provision: backend roles (spec sections 4, 5 and 9), through libpq.
 *
 * A prov_ctx owns the admin connections for one listener (one per target database,
 * opened on demand, reused, reconnected after a backend restart) behind its own lock.
 * prov_ensure_role() creates or refreshes the caller's role with a fresh password
 * (set as a SCRAM/MD5 verifier, never plaintext), reconciles its grants in the target
 * database, and returns a lease: the per-role lock (in-process + advisory lock) is held
 * until the worker has logged in upstream and calls prov_lease_release().
 */
#ifndef WP_PROVISION_H
#define WP_PROVISION_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "grant.h"
#include "identity.h"
#include "wp_error.h"

typedef enum { PROV_DIALECT_POSTGRES = 0, PROV_DIALECT_COCKROACH } prov_dialect;

typedef struct prov_settings {
    const char *host;
    int port;
    const char *admin_user;
    const char *admin_password;
    const char *admin_database;
    cfg_backend_tls backend_tls;
    const char *backend_ca_file;
    const char *user_prefix;
    int64_t user_ttl_ms;
    bool allow_raw_sql;
    const char *listener_name; /* for log lines */
    int64_t admin_idle_ms;     /* idle admin connections close after this; 0: 60 s */
} prov_settings;

typedef struct prov_ctx prov_ctx;
typedef struct prov_lease prov_lease;

/* Copies settings; connects once as admin to admin_database to verify the login and
 * detect the dialect. Failure: WP_ERR_BACKEND with a clear message. */
wp_status prov_create(const prov_settings *s, prov_ctx **out, wp_error *err);
void prov_destroy(prov_ctx *p);
prov_dialect prov_get_dialect(const prov_ctx *p);
/* True when the backend cannot keep a caller from SET ROLE to its group roles
 * (PostgreSQL before 16 has no membership SET option; CockroachDB): a session there may
 * hold a group's rights beyond its role's current grants. */
bool prov_groups_settable(const prov_ctx *p);

/* Ensures the role for (id, database, grant); the scope (full grant or downgrade preset)
 * comes from g->downgrade. Errors go to err with the client-facing SQLSTATE:
 *   database missing -> WP_ERR_NOT_FOUND, err = PostgreSQL's own FATAL 3D000 text
 *                       'database "x" does not exist'; no role is created;
 *   raw SQL refused  -> WP_ERR_DENIED 28000; backend failure -> WP_ERR_BACKEND 08006. */
wp_status prov_ensure_role(prov_ctx *p, const id_identity *id, const char *database,
                           const grant_effective *g, prov_lease **out, wp_error *err);
const char *prov_lease_role(const prov_lease *l);
const char *prov_lease_password(const prov_lease *l);
/* True when this lease's prov_ensure_role created the role (else it refreshed it). */
bool prov_lease_created(const prov_lease *l);
/* Open and idle admin connections per database (metrics); fn runs under the pool lock. */
void prov_admin_conns(prov_ctx *p, void (*fn)(void *arg, const char *db, int open, int idle),
                      void *arg);
/* Releases the per-role lock (after upstream authentication finished, either way). */
void prov_lease_release(prov_lease *l);

/* On disconnect: VALID UNTIL now() + user_ttl, under the role's lock (taken in
 * database, where connects take it). Skipped for sessions shorter than user_ttl/100,
 * whose connect-time expiry is still within that margin; session_ms < 0 forces it.
 * Best effort, logs failures. */
void prov_touch_role(prov_ctx *p, const char *role, const char *database, int64_t session_ms);

/* Before a parked backend session of role is handed to a new connection (lib/pool.c):
 * one read of the role's state, no lock, no write. OK: the role is this identity's and
 * its groups are current for g; REFRESH: run prov_ensure_role first (a granted schema
 * gained relations, memberships drifted, or g has raw SQL); GONE: the role is missing,
 * not this identity's, modified outside Waypoint, or the read failed, so the parked
 * session must be closed. */
typedef enum { PROV_REUSE_OK = 0, PROV_REUSE_REFRESH, PROV_REUSE_GONE } prov_reuse;
prov_reuse prov_check_reuse(prov_ctx *p, const char *role, const char *database, const char *record,
                            const grant_effective *g);

/* One cleanup pass (spec 5.5). *dropped gets the number of roles dropped. */
wp_status prov_cleanup(prov_ctx *p, int *dropped, wp_error *err);

#endif
