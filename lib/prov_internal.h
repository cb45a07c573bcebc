/*
 * prov_internal: what the provisioning files (provision.c, prov_*.c) share, and what the unit
 * tests reach directly (pure helpers: dialect choices, names, SQL text builders).
 * Not a public contract: only the provisioning module and its tests include it.
 */
#ifndef WP_PROV_INTERNAL_H
#define WP_PROV_INTERNAL_H

#include <libpq-fe.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <jansson.h>

#include "provision.h"
#include "scram.h"

/* ---- dialect choices (prov_sql.c) ---------------------------------------------- */

typedef enum { PROV_LOCK_ADVISORY = 0, PROV_LOCK_TABLE } prov_lock_kind;
typedef enum { PROV_RECORD_COMMENT = 0, PROV_RECORD_TABLE } prov_record_kind;

prov_dialect prov_dialect_from_version(const char *version);
prov_lock_kind prov_lock_strategy(prov_dialect d);
prov_record_kind prov_record_strategy(prov_dialect d);
bool prov_cleanup_supported(prov_dialect d);
/* Retries of a transaction failing with 40001 (CockroachDB); 0 for PostgreSQL. */
int prov_serialization_retries(prov_dialect d);
/* password_encryption value -> true when roles get MD5 stored hashes. */
bool prov_pwenc_is_md5(const char *setting);
/* libpq sslmode for backend_tls. */
const char *prov_sslmode(cfg_backend_tls t);

/* ---- names and records ---------------------------------------------------------- */

#define PROV_GROUP_RECORD_PREFIX "waypoint:v1 group "
#define PROV_ROLE_RECORD_PREFIX "waypoint:v1 login="
#define PROV_ORPHANS_RECORD "waypoint:v1 orphans"

/* The powerless NOLOGIN role that cleanup reassigns dropped caller roles' objects to:
 * <prefix>orphans, prefix cut so it fits 63 bytes. */
void prov_orphans_name(const char *prefix, char out[ID_ROLE_MAX + 1]);

/* Shared group role for (database, schema, preset):
 * <prefix>g_<10 hex of sha256(db NUL schema)>_<preset>, prefix cut so it fits 63 bytes. */
int prov_group_name(const char *prefix, const char *database, const char *schema,
                    grant_preset preset, char out[ID_ROLE_MAX + 1]);
/* "waypoint:v1 group db=<pct> schema=<pct> preset=<name>" (malloc'd). */
char *prov_group_record(const char *database, const char *schema, grant_preset preset);
/* The db= field of a role record, percent-decoded into out. 0 on success. */
int prov_record_database(const char *record, char *out, size_t outsz);
/* True for a caller-role record (not a group record). */
bool prov_record_is_role(const char *comment);
bool prov_record_is_group(const char *comment);

/* ---- SQL text --------------------------------------------------------------------- */

/* SQL condition: the current (admin) role holds a membership in role oid X that it granted
 * itself, as Waypoint does when it creates a role. A COMMENT alone is no proof: any other
 * CREATEROLE role can write one. Nobody but a superuser can record a grantor other than
 * themselves (PostgreSQL 15: GRANTED BY needs superuser; 16+: ADMIN held by that role).
 * X must be qualified (r.oid): on 16+ pg_auth_members has an oid column of its own, which
 * a bare "oid" would silently refer to. */
#define PROV_SQL_ADMIN_MADE(X)                                                                     \
    "EXISTS (SELECT 1 FROM pg_auth_members am WHERE am.roleid = " X " AND am.member = "            \
    "am.grantor AND am.member = (SELECT oid FROM pg_roles WHERE rolname = current_user))"

/* The statements giving group qg its preset privileges on schema qs in database qdb
 * (all already quoted), on the relations listed in tables and seqs (comma-separated
 * quoted names from PROV_SQL_GRANTABLE; empty or NULL: none), and as default privileges
 * for what the admin creates later. Statements separated by "; ". Caller frees. */
char *prov_sql_group_privileges(grant_preset preset, const char *qs, const char *qg,
                                const char *qdb, const char *tables, const char *seqs);
extern const char PROV_SQL_GRANTABLE[];
/* Role state, schema change marks and owned schemas in one round trip (malloc'd):
 * $1 role name, $2 ttl in ms, $3 JSON [{"i": pair index, "name": schema, "w": watermark}].
 * qrecords: CockroachDB's quoted waypoint_roles table (ignored for PostgreSQL).
 * member_options: read each membership's options (pg_auth_members.set_option and
 * inherit_option exist from PostgreSQL 16). */
char *prov_sql_role_state(prov_dialect d, const char *qrecords, bool member_options);
/* The same columns for a parked session's reuse check; the fingerprint (schema rows'
 * fourth field) and the owned objects are left out (PostgreSQL; CockroachDB: the full
 * form). Same parameters. */
char *prov_sql_reuse_state(prov_dialect d, const char *qrecords, bool member_options);
/* Whether group memberships are granted WITH INHERIT TRUE, SET FALSE: PostgreSQL 16+
 * (server_version_num), so callers cannot SET ROLE to their groups. */
bool prov_member_options(prov_dialect d, long server_version_num);
/* The suffix for "GRANT group TO role" (empty without member options). */
const char *prov_sql_member_options(bool member_options);
/* Objects the role owns in the schemas of a JSON array, that it holds no CREATE in:
 * $1 role name, $2 JSON array of schema names -> (type, identity, quoted schema). */
extern const char PROV_SQL_OWNED_OBJECTS[];
/* ALTER keyword for a pg_identify_object type ("function" -> "ROUTINE"); NULL if unknown. */
const char *prov_owner_keyword(const char *type);
/* Advisory/table lock statements for the per-role lock ($1 = lock key text). */
const char *prov_sql_lock(prov_dialect d);
const char *prov_sql_unlock(prov_dialect d);

/* ---- pool and keyed locks (prov_pool.c) ------------------------------------------- */

typedef struct prov_pool prov_pool;
typedef struct prov_keylock prov_keylock;

#define PROV_POOL_PREP_MAX 4

typedef struct prov_pools {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    prov_pool *head;
    const prov_settings *s; /* owned by the ctx */
    int per_db_max;
    int wait_ms;
    int64_t idle_ms; /* an idle connection is closed after this long (admin_idle_ms) */
    pthread_t reaper;
    pthread_cond_t reaper_cv;
    bool stopping;
    /* Statements prepared on every connection the pool opens (prov_pools_prepare), so
     * the per-connect queries are parsed and planned once per admin session instead of
     * on every call: the role-state query alone cost the backend ~2 ms unprepared. */
    int nprep;
    const char *prep_name[PROV_POOL_PREP_MAX];
    const char *prep_sql[PROV_POOL_PREP_MAX]; /* owned by the ctx */
} prov_pools;

/* Slots of the per-role "last password clear" times (prov_kill.c); roles share a slot
 * when their hashes collide, which only spaces their clears a little more. */
#define PROV_CLEAR_SLOTS 64

typedef struct prov_keylocks {
    pthread_mutex_t mu;
    prov_keylock *head;
} prov_keylocks;

int prov_pools_init(prov_pools *ps, const prov_settings *s);
void prov_pools_destroy(prov_pools *ps);
/* Registers a statement every new connection of ps prepares as name before it is handed
 * out (a failed prepare fails the checkout). Call before the pool is shared; sql must
 * outlive ps. -1 when PROV_POOL_PREP_MAX are registered already. */
int prov_pools_prepare(prov_pools *ps, const char *name, const char *sql);
/* fn(arg, database, open, idle) per pool, under the pool lock. */
void prov_pools_each(prov_pools *ps, void (*fn)(void *arg, const char *db, int open, int idle),
                     void *arg);
/* Checks out a live admin connection to database (opening one if the pool has room,
 * waiting up to wait_ms otherwise). A connect failure fills err; *sqlstate (6 bytes,
 * may be NULL) gets the server's SQLSTATE when it sent one (3D000: no such database). */
wp_status prov_pool_get(prov_pools *ps, const char *database, PGconn **out, char *sqlstate,
                        wp_error *err);
/* True when a pool for database exists (it was checked to exist before). */
bool prov_pool_known(prov_pools *ps, const char *database);
/* Returns conn to its pool; a broken connection (or broken=true) is closed instead. */
void prov_pool_put(prov_pools *ps, const char *database, PGconn *conn, bool broken);
/* Opens one admin connection outside any pool (prov_create's login check). */
PGconn *prov_connect(const prov_settings *s, const char *database, char *sqlstate, wp_error *err);

int prov_keylocks_init(prov_keylocks *kl);
void prov_keylocks_destroy(prov_keylocks *kl);
/* Blocks until this process holds key; returns the entry to pass to unlock. */
prov_keylock *prov_keylock_lock(prov_keylocks *kl, const char *key);
void prov_keylock_unlock(prov_keylocks *kl, prov_keylock *e);

/* ---- the context and what the provisioning files share (provision.c) --------------- */

/* Names of the statements every pooled admin session prepares (prov_pools_prepare). */
#define PREP_STATE "wp_state"
#define PREP_REUSE "wp_reuse"

/* A database whose schema public was checked for PUBLIC CREATE (check_public_create). */
typedef struct prov_db_seen {
    struct prov_db_seen *next;
    char name[]; /* flexible: database names are not bounded by the identifier limit */
} prov_db_seen;

typedef struct prov_group_cache {
    char name[ID_ROLE_MAX + 1];
    long long nsp_oid;
    long long watermark;
    time_t refreshed;
    struct prov_group_cache *next;
} prov_group_cache;

struct prov_ctx {
    prov_settings s;
    char *strs[7];
    prov_dialect dialect;
    bool md5;
    bool member_opts; /* PostgreSQL 16+: memberships WITH INHERIT TRUE, SET FALSE */
    prov_pools pools;
    prov_pools lockpools; /* CockroachDB: lock-table transactions, admin_database */
    prov_keylocks locks;
    pthread_mutex_t cache_mu;  /* guards groups and public_checked */
    pthread_mutex_t clear_mu;  /* guards clears and clear_last */
    struct prov_clear *clears; /* password clears queued, not yet started (prov_kill.c) */
    int64_t clear_last[PROV_CLEAR_SLOTS]; /* when a clear last started, per role hash */
    prov_group_cache *groups;
    prov_db_seen *public_checked; /* databases checked for PUBLIC CREATE on public */
    char *qrecords;               /* CockroachDB: quoted waypoint_roles table name */
    char *state_sql;              /* the role-state query: fixed once the dialect is known */
    char *reuse_sql;              /* its slim form for a parked session's reuse check */
    char ttl_ms[24];              /* user_ttl in ms, as the state query's $2 */
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
typedef struct prov_role_state {
    bool exists;
    char *record;
    bool elevated;
    json_t *members; /* [[group name, record], ...] */
    char valid_until[64];
    json_t *schemas; /* [[name, nsp oid|null, changed, fingerprint], ...] per pair */
    json_t *owned;   /* [[schema, objects], ...]: where the role owns objects (no temp) */
} prov_role_state;

/* Logs the backend's error for step what and sets err to the client-facing text. */
void prov_backend_err(wp_error *err, const char *what, PGconn *c);
/* Logs that step what failed with first_error on a dead pooled connection and was run
 * again on a fresh one: a warning when the retry succeeded, an error when it failed. */
void prov_log_retried(const char *what, const char *first_error, bool succeeded);
/* PQexecParams with text parameters; returns the result (caller clears) or NULL when
 * the command failed (the result is cleared; *sqlstate gets its SQLSTATE). */
PGresult *prov_run(PGconn *c, const char *sql, int n, const char *const *vals, char sqlstate[6]);
/* Simple-query execution of our own multi-statement DDL (one implicit transaction). */
bool prov_run_ddl(PGconn *c, const char *sql, char sqlstate[6]);
/* PQescapeIdentifier / PQescapeLiteral into malloc'd strings (NULL on failure). */
char *prov_qident(PGconn *c, const char *s);
char *prov_qlit(PGconn *c, const char *s);
/* printf into a fresh buffer. */
char *prov_fmt_sql(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void prov_role_state_clear(prov_role_state *st);
/* The one "retry once on a dead admin connection" (see provision.c). */
bool prov_reconnect_once(prov_pools *pools, const char *db, PGconn **c, int attempt, char *sqlstate,
                         wp_error *err);
/* A checkout of db failed with sqlstate: 3D000 is reported as PostgreSQL would. */
wp_status prov_checkout_failed(wp_error *err, const char *db, const char *sqlstate);
/* The backend half of the role lock on *c, and its release. */
wp_status prov_backend_lock(prov_ctx *p, prov_pools *pools, const char *db, PGconn **c,
                            const char *key, wp_error *err);
bool prov_backend_unlock(prov_ctx *p, PGconn *c, const char *key);
void prov_role_lock_key(char *out, size_t outsz, const char *role);
wp_status prov_take_backend_lock(prov_ctx *p, prov_lease *l, wp_error *err);
/* JSON for the state query's $3: [{"name": schema, "w": watermark}] per pair. */
char *prov_schemas_param(prov_ctx *p, const char *db, const grant_effective *g);
/* The role-state row through prepared statement stmt (PREP_STATE or PREP_REUSE). */
wp_status prov_read_state_as(prov_ctx *p, const char *stmt, PGconn *c, const char *role,
                             const char *schemas, prov_role_state *st, wp_error *err);
wp_status prov_read_state(prov_ctx *p, PGconn *c, const char *role, const char *schemas,
                          prov_role_state *st, wp_error *err);
/* Takes the lease's role lock and reads the role's state (one round trip on PostgreSQL). */
wp_status prov_lock_and_read(prov_ctx *p, prov_lease *l, const char *schemas, prov_role_state *st,
                             wp_error *err);

/* prov_reconcile.c: makes the role a member of exactly the groups of g (refreshing
 * groups whose schema changed, or all of them with force). */
wp_status prov_reconcile_grants(prov_ctx *p, PGconn *c, const char *db, const char *role,
                                const grant_effective *g, const prov_role_state *st, bool force,
                                wp_error *err);
/* Whether st's groups are still what g needs, without writing (reuse check). want and
 * names hold g->npairs entries each. */
bool prov_reuse_groups_current(prov_ctx *p, const char *db, const grant_effective *g,
                               const prov_role_state *st, const char **want,
                               char (*names)[ID_ROLE_MAX + 1]);
/* prov_owner.c: hands objects the role may no longer own to the orphans role. */
wp_status prov_revoke_ownership(prov_ctx *p, PGconn *c, const char *db, const char *role,
                                const grant_effective *g, const prov_role_state *st, wp_error *err);
/* prov_cleanup.c: creates (if missing) and verifies the orphans role; its name to name. */
wp_status prov_ensure_orphans(prov_ctx *p, PGconn *c, char name[ID_ROLE_MAX + 1], wp_error *err);
/* prov_role.c: WP_OK when db exists and accepts connections. */
wp_status prov_database_exists(prov_ctx *p, const char *db, wp_error *err);

/* ---- what prov_kill.c reaches inside the context (provision.c) --------------------- */

prov_pools *prov_ctx_pools(prov_ctx *p);
typedef wp_status (*prov_locked_fn)(prov_ctx *p, PGconn *c, const char *role, void *arg,
                                    wp_error *err);
/* Runs fn on an admin connection to database while holding role's lock (the in-process
 * and the backend lock a connect takes), so fn never interleaves with a connect. */
wp_status prov_with_role_lock(prov_ctx *p, const char *role, const char *database,
                              prov_locked_fn fn, void *arg, wp_error *err);

/* ---- stopping a session's backend, locking a role out (prov_kill.c) ---------------- */

/* The statements that end one backend session, per dialect. PostgreSQL: $1 the
 * backend's pid, $2 the role it must belong to, $3 (when terminate_nparams is 3) how
 * long pg_terminate_backend may wait for it to exit, in ms. CockroachDB has no pids:
 * $1 is Waypoint's end of the data connection ("ip:port", the session's client
 * address there), $2 the role. `alive` counts what is left of that session. */
typedef struct prov_kill_sql {
    const char *terminate;
    int terminate_nparams;
    const char *alive;
} prov_kill_sql;
void prov_kill_sql_for(prov_dialect d, int server_version, prov_kill_sql *out);
/* ALTER ROLE ... NOLOGIN for the quoted role name (malloc'd). */
char *prov_sql_nologin(const char *qrole);
/* ALTER ROLE ... PASSWORD NULL for the quoted role name (malloc'd). */
char *prov_sql_password_null(const char *qrole);

#endif
