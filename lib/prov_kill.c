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
 * of ownership provisioning requires.
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
static wp_status wait_gone(PGconn *c, const prov_kill_sql *q, const char *const *vals,
                           int64_t deadline_ms, wp_error *err)
{
    for (;;) {
        long long n = exec_count(c, q->alive, 2, vals);
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
        rc = wait_gone(c, &q, vals, deadline_ms, err);
    }
    prov_pool_put(prov_ctx_pools(p), database, c, PQstatus(c) == CONNECTION_BAD);
    return rc;
}

/* $1 names a role the admin made (the proof of ownership provisioning requires). */
static const char PROV_SQL_OURS[] =
    "SELECT count(*) FROM pg_roles r WHERE r.rolname = $1 AND " PROV_SQL_ADMIN_MADE("r.oid");

static wp_status nologin_locked(prov_ctx *p, PGconn *c, const char *role, void *arg, wp_error *err)
{
    (void)arg;
    const char *vals[1] = {role};
    if (prov_get_dialect(p) == PROV_DIALECT_POSTGRES) {
        long long ours = exec_count(c, PROV_SQL_OURS, 1, vals);
        if (ours < 0) {
            kill_err(err, "reading the role", c);
            return WP_ERR_BACKEND;
        }
        if (ours == 0)
            return WP_OK; /* gone, or not Waypoint's: nothing to lock out */
    }
    char *q = PQescapeIdentifier(c, role, strlen(role));
    char *sql = q ? prov_sql_nologin(q) : NULL;
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
        kill_err(err, "ALTER ROLE NOLOGIN", c);
        return WP_ERR_BACKEND;
    }
    return WP_OK;
}

wp_status prov_lock_out_role(prov_ctx *p, const char *role, const char *database, wp_error *err)
{
    return prov_with_role_lock(p, role, database, nologin_locked, NULL, err);
}
