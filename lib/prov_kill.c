/*
 * prov_kill: terminating a caller's backend session and locking a role out, from the
 * admin side (see prov_kill.h for why).
 *
 * Stopping. The session is named by what the data connection learned: its pid
 * (PostgreSQL) or its client address (CockroachDB), and the statement also requires it
 * to belong to the caller's role, so a stale pid (the process exited and the number was
 * reused) can never take down someone else's session. PostgreSQL 14+ waits for the
 * process to exit inside pg_terminate_backend(pid, timeout); older servers and
 * CockroachDB are polled. Either way the session counts as stopped only once the
 * backend's own view (pg_stat_activity, SHOW CLUSTER SESSIONS) no longer lists it: a
 * PostgreSQL backend leaves pg_stat_activity after it has aborted its transaction, so
 * from then on the write it was running can no longer commit.
 *
 * The admin connection is a pooled one for the session's database (provisioning opened
 * that pool when the session connected); pg_stat_activity is cluster-wide, and the admin
 * may signal the role's backends because it is a member of every role it created.
 *
 * Locking out. ALTER ROLE ... NOLOGIN under the role's lock (prov_with_role_lock), so it
 * never lands between a concurrent connect setting a password and logging in with it;
 * on PostgreSQL only when the admin made the role (PROV_SQL_ADMIN_MADE), the same proof
 * of ownership provisioning requires. Then every backend of the role is terminated and
 * waited for, not only the one Waypoint knows: a caller that set its own password
 * (ALTER ROLE CURRENT_USER PASSWORD) may have logged in directly with it meanwhile.
 *
 * Forgetting a password. A caller role may set its own password, and VALID UNTIL (which
 * it cannot change) would not help: it applies to Waypoint's password too, and is the
 * role's expiry for cleanup. So whenever a session ends, parked or closed,
 * prov_session_ended() sets the role's password to NULL under the role's lock: no
 * password at all logs in, and a parked session is authenticated already. The next
 * provisioning connect writes a fresh one under the same lock, so the NULL never lands
 * between that write and its login, across Waypoint instances too. This runs after the
 * client has gone, never on the connect path. Clears of one role are coalesced: a
 * session that ends while a clear of its role is queued (not yet started) is covered by
 * that clear, so a storm of session ends costs at most one running and one queued clear
 * per role, not a queue of worker threads on the role's lock. And clears of one role
 * start at least PROV_CLEAR_GAP_MS apart: a caller connecting in a loop (pgbench -C)
 * costs the server one ALTER ROLE per 100 ms, not one per connection, while a lone
 * session end is cleared at once. The price: in such a storm a self-set password can
 * outlive its session by up to that gap plus one clear.
 */
#include "prov_kill.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "io.h"
#include "log.h"
#include "prov_internal.h"

#define PROV_KILL_POLL_MS 10           /* between two looks at pg_stat_activity */
#define PROV_KILL_SERVER_WAIT_MS 10000 /* cap for pg_terminate_backend's own wait */
#define PROV_LOCKOUT_WAIT_MS 5000      /* revocation: time for the role's backends to go */
#define PROV_CLEAR_TRIES 3             /* ALTER ROLE PASSWORD NULL against concurrent ALTERs */
#define PROV_CLEAR_GAP_MS 100          /* least time between two clears of one role */

void prov_kill_sql_for(prov_dialect d, int server_version, prov_kill_sql *out)
{
    if (d == PROV_DIALECT_COCKROACH) {
        out->terminate = "CANCEL SESSIONS (SELECT session_id FROM [SHOW CLUSTER SESSIONS] "
                         "WHERE client_address = $1 AND user_name = $2)";
        out->terminate_nparams = 2;
        out->alive = "SELECT count(*) FROM [SHOW CLUSTER SESSIONS] "
                     "WHERE client_address = $1 AND user_name = $2";
        return;
    }
    if (server_version >= 140000) {
        out->terminate = "SELECT pg_terminate_backend(pid, $3::bigint) FROM pg_stat_activity "
                         "WHERE pid = $1::int AND usename = $2";
        out->terminate_nparams = 3;
    } else {
        out->terminate = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE pid = $1::int AND usename = $2";
        out->terminate_nparams = 2;
    }
    out->alive = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1::int AND usename = $2";
}

char *prov_sql_nologin(const char *qrole)
{
    char *sql = NULL;
    if (asprintf(&sql, "ALTER ROLE %s NOLOGIN", qrole) < 0)
        return NULL;
    return sql;
}

static void kill_err(wp_error *err, const char *what, PGconn *c)
{
    char msg[300];
    snprintf(msg, sizeof msg, "%s: %s", what, c ? PQerrorMessage(c) : "no connection");
    size_t n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n')
        msg[--n] = '\0';
    wp_error_set(err, WP_SQLSTATE_CONN_FAILURE, "backend session could not be stopped");
    wp_error_detail(err, "%s", msg);
}

/* Runs sql with text parameters; returns the first column of the first row as a
 * number (0 without rows), or -1 when the statement failed. */
static long long exec_count(PGconn *c, const char *sql, int n, const char *const *vals)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, vals, NULL, NULL, 0);
    long long v = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK)
        v = PQntuples(r) > 0 && !PQgetisnull(r, 0, 0) ? atoll(PQgetvalue(r, 0, 0)) : 0;
    else if (PQresultStatus(r) == PGRES_COMMAND_OK)
        v = 0;
    PQclear(r);
    return v;
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Polls `alive` until it counts 0 or the deadline passes. */
static wp_status wait_gone(PGconn *c, const prov_kill_sql *q, int nparams, const char *const *vals,
                           int64_t deadline_ms, wp_error *err)
{
    for (;;) {
        long long n = exec_count(c, q->alive, nparams, vals);
        if (n < 0) {
            kill_err(err, "checking the backend session", c);
            return WP_ERR_BACKEND;
        }
        if (n == 0)
            return WP_OK;
        int64_t left = deadline_ms - wp_now_ms();
        if (left <= 0) {
            wp_error_set(err, WP_SQLSTATE_CONN_FAILURE, "backend session could not be stopped");
            wp_error_detail(err, "still running at the deadline");
            return WP_ERR_TIMEOUT;
        }
        sleep_ms(left < PROV_KILL_POLL_MS ? left : PROV_KILL_POLL_MS);
    }
}

wp_status prov_stop_backend(prov_ctx *p, const char *role, const char *database,
                            const prov_backend_ref *ref, int64_t deadline_ms, wp_error *err)
{
    prov_dialect d = prov_get_dialect(p);
    char key[80];
    if (d == PROV_DIALECT_COCKROACH)
        snprintf(key, sizeof key, "%s", ref->local_addr);
    else
        snprintf(key, sizeof key, "%u", (unsigned)ref->pid);
    if (!key[0] || strcmp(key, "0") == 0) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "backend session could not be stopped");
        wp_error_detail(err, "the backend session is not known");
        return WP_ERR_INVALID;
    }
    PGconn *c = NULL;
    wp_status rc = prov_pool_get(prov_ctx_pools(p), database, &c, NULL, err);
    if (rc != WP_OK)
        return WP_ERR_BACKEND;
    prov_kill_sql q;
    prov_kill_sql_for(d, PQserverVersion(c), &q);
    int64_t left = deadline_ms - wp_now_ms();
    char wait[24];
    snprintf(wait, sizeof wait, "%lld",
             (long long)(left < 1                          ? 1
                         : left > PROV_KILL_SERVER_WAIT_MS ? PROV_KILL_SERVER_WAIT_MS
                                                           : left));
    const char *vals[3] = {key, role, wait};
    if (exec_count(c, q.terminate, q.terminate_nparams, vals) < 0) {
        kill_err(err, "terminating the backend session", c);
        rc = WP_ERR_BACKEND;
    } else {
        rc = wait_gone(c, &q, 2, vals, deadline_ms, err);
    }
    prov_pool_put(prov_ctx_pools(p), database, c, PQstatus(c) == CONNECTION_BAD);
    return rc;
}

/* $1 names a role the admin made (the proof of ownership provisioning requires). */
static const char PROV_SQL_OURS[] =
    "SELECT count(*) FROM pg_roles r WHERE r.rolname = $1 AND " PROV_SQL_ADMIN_MADE("r.oid");

/* Every backend of role $1 but the admin's own, per dialect; `alive` counts them. */
static void role_backends_sql(prov_dialect d, int server_version, prov_kill_sql *out)
{
    if (d == PROV_DIALECT_COCKROACH) {
        out->terminate = "CANCEL SESSIONS (SELECT session_id FROM [SHOW CLUSTER SESSIONS] "
                         "WHERE user_name = $1)";
        out->terminate_nparams = 1;
        out->alive = "SELECT count(*) FROM [SHOW CLUSTER SESSIONS] WHERE user_name = $1";
        return;
    }
    if (server_version >= 140000) {
        out->terminate = "SELECT pg_terminate_backend(pid, $2::bigint) FROM pg_stat_activity "
                         "WHERE usename = $1 AND pid <> pg_backend_pid()";
        out->terminate_nparams = 2;
    } else {
        out->terminate = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE usename = $1 AND pid <> pg_backend_pid()";
        out->terminate_nparams = 1;
    }
    out->alive = "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND pid <> "
                 "pg_backend_pid()";
}

/* Runs the ALTER ROLE made by build for role on c, if the role is Waypoint's. */
static wp_status alter_if_ours(prov_ctx *p, PGconn *c, const char *role,
                               char *(*build)(const char *qrole), const char *what, wp_error *err)
{
    const char *vals[1] = {role};
    if (prov_get_dialect(p) == PROV_DIALECT_POSTGRES) {
        long long ours = exec_count(c, PROV_SQL_OURS, 1, vals);
        if (ours < 0) {
            kill_err(err, "reading the role", c);
            return WP_ERR_BACKEND;
        }
        if (ours == 0)
            return WP_ERR_NOT_FOUND; /* gone, or not Waypoint's: nothing to do */
    }
    char *q = PQescapeIdentifier(c, role, strlen(role));
    char *sql = q ? build(q) : NULL;
    PQfreemem(q);
    if (!sql) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "out of memory");
        return WP_ERR_NOMEM;
    }
    PGresult *r = PQexec(c, sql);
    free(sql);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) {
        kill_err(err, what, c);
        return WP_ERR_BACKEND;
    }
    return WP_OK;
}

/* NOLOGIN first (no new login can start), then every backend of the role goes, those
 * opened directly with a password the caller set itself included, and is waited for. */
static wp_status nologin_locked(prov_ctx *p, PGconn *c, const char *role, void *arg, wp_error *err)
{
    (void)arg;
    wp_status rc = alter_if_ours(p, c, role, prov_sql_nologin, "ALTER ROLE NOLOGIN", err);
    if (rc == WP_ERR_NOT_FOUND)
        return WP_OK;
    if (rc != WP_OK)
        return rc;
    prov_kill_sql q;
    role_backends_sql(prov_get_dialect(p), PQserverVersion(c), &q);
    char wait[24];
    snprintf(wait, sizeof wait, "%d", PROV_LOCKOUT_WAIT_MS);
    const char *vals[2] = {role, wait};
    if (exec_count(c, q.terminate, q.terminate_nparams, vals) < 0) {
        kill_err(err, "terminating the role's backends", c);
        return WP_ERR_BACKEND;
    }
    return wait_gone(c, &q, 1, vals, wp_now_ms() + PROV_LOCKOUT_WAIT_MS, err);
}

wp_status prov_lock_out_role(prov_ctx *p, const char *role, const char *database, wp_error *err)
{
    return prov_with_role_lock(p, role, database, nologin_locked, NULL, err);
}

char *prov_sql_password_null(const char *qrole)
{
    char *sql = NULL;
    if (asprintf(&sql, "ALTER ROLE %s PASSWORD NULL", qrole) < 0)
        return NULL;
    return sql;
}

/* A password clear queued for role that has not started yet: it runs after every session
 * of role that ended before it started, so a session ending meanwhile needs no clear of
 * its own. Under a storm of session ends of one role, at most one clear runs and one
 * waits, instead of one per session queuing on the role's lock. */
typedef struct prov_clear {
    struct prov_clear *next;
    char role[ID_ROLE_MAX + 1];
} prov_clear;

static unsigned clear_slot(const char *role)
{
    unsigned h = 2166136261u; /* FNV-1a */
    for (const unsigned char *c = (const unsigned char *)role; *c; c++)
        h = (h ^ *c) * 16777619u;
    return h % PROV_CLEAR_SLOTS;
}

/* How long a clear of role must wait so that clears of one role start at least
 * PROV_CLEAR_GAP_MS apart; the slot is marked with the start time it gets. */
static int64_t clear_gap_wait(prov_ctx *p, const char *role)
{
    unsigned slot = clear_slot(role);
    int64_t now = wp_now_ms();
    pthread_mutex_lock(&p->clear_mu);
    int64_t start = p->clear_last[slot] + PROV_CLEAR_GAP_MS;
    if (p->clear_last[slot] == 0 || start < now)
        start = now;
    p->clear_last[slot] = start;
    pthread_mutex_unlock(&p->clear_mu);
    return start - now;
}

/* Queues a clear for role; NULL when one is queued already (or out of memory: then the
 * caller clears without coalescing). */
static prov_clear *clear_queue(prov_ctx *p, const char *role, bool *covered)
{
    pthread_mutex_lock(&p->clear_mu);
    prov_clear *e = p->clears;
    while (e && strcmp(e->role, role) != 0)
        e = e->next;
    *covered = e != NULL;
    prov_clear *me = e ? NULL : calloc(1, sizeof *me);
    if (me) {
        snprintf(me->role, sizeof me->role, "%s", role);
        me->next = p->clears;
        p->clears = me;
    }
    pthread_mutex_unlock(&p->clear_mu);
    return me;
}

/* The clear has started (or failed): sessions ending from now on queue their own. */
static void clear_started(prov_ctx *p, prov_clear *me)
{
    if (!me)
        return;
    pthread_mutex_lock(&p->clear_mu);
    for (prov_clear **pp = &p->clears; *pp; pp = &(*pp)->next) {
        if (*pp == me) {
            *pp = me->next;
            break;
        }
    }
    pthread_mutex_unlock(&p->clear_mu);
}

static wp_status forget_locked(prov_ctx *p, PGconn *c, const char *role, void *arg, wp_error *err)
{
    clear_started(p, arg); /* both locks held: the ALTER below follows every covered end */
    /* The role's own sessions may ALTER it at the same moment (a live session setting its
     * password): PostgreSQL then fails one of the two with "tuple concurrently updated".
     * The lock does not exclude them, so the clear is tried again. */
    wp_status rc = WP_ERR_BACKEND;
    for (int i = 0; i < PROV_CLEAR_TRIES && rc == WP_ERR_BACKEND; i++) {
        if (i > 0 && (PQstatus(c) != CONNECTION_OK || PQtransactionStatus(c) != PQTRANS_IDLE))
            break;
        rc = alter_if_ours(p, c, role, prov_sql_password_null, "ALTER ROLE PASSWORD NULL", err);
    }
    return rc == WP_ERR_NOT_FOUND ? WP_OK : rc;
}

void prov_session_ended(prov_ctx *p, const char *role, const char *database)
{
    if (!p || !role || !*role)
        return;
    bool covered = false;
    prov_clear *me = clear_queue(p, role, &covered);
    if (covered)
        return;
    /* Sessions of this role ending while this one waits are covered by it. */
    int64_t wait = clear_gap_wait(p, role);
    if (wait > 0)
        sleep_ms(wait);
    wp_error err;
    wp_error_clear(&err);
    if (prov_with_role_lock(p, role, database, forget_locked, me, &err) != WP_OK)
        log_kv(WP_LOG_WARN, "prov_password_clear_failed", "role", role, "error",
               err.detail[0] ? err.detail : err.message, (char *)NULL);
    clear_started(p, me); /* if the lock was never had */
    free(me);
}
