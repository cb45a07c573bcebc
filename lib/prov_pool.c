/*
 * prov_pool: the admin connections and the in-process keyed locks of provisioning.
 *
 * Pools: one small pool of libpq connections per target database, all under one mutex
 * and one condition variable (contention is low: a checkout is a pointer pop). A pool
 * grows on demand up to per_db_max open connections; when all are checked out a caller
 * waits, bounded by wait_ms, so a stuck backend cannot pin worker threads forever.
 * Connections are reused across client connections; one found broken (backend restart)
 * is closed on checkin and a fresh one is opened on the next checkout. Pools are only
 * created for databases the caller checked exist, so naming random databases cannot
 * grow this list.
 *
 * Idle connections are closed after admin_idle_ms: each remembers when it was checked
 * in, and a reaper thread per pools object sweeps every quarter of that time (bounded to
 * 50 ms .. 5 s), so one lasts at most about 1.25 times the timeout once idle. Checkout
 * takes the most recently used one (a stack), so the ones at the bottom are the oldest
 * and a busy pool keeps only what it uses. Checked-out connections are never touched:
 * the pool does not hold them. The pool entry itself (its database name) stays, as the
 * "database seen to exist" mark; it reads 0 open.
 *
 * Keyed locks: a list of refcounted entries, one per key currently locked or waited
 * for, so the table holds only keys in use. Each entry has its own condition variable so
 * a release wakes only the waiters of that key.
 *
 * Connection parameters go through PQconnectdbParams keyword arrays, never through a
 * concatenated conninfo string, so no value can inject another keyword.
 */
#include "prov_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "io.h"
#include "log.h"

#define PROV_POOL_MAX 8
#define PROV_POOL_WAIT_MS 10000
#define PROV_POOL_IDLE_MS 60000   /* admin_idle_timeout when the settings give none */
#define PROV_POOL_SWEEP_MIN_MS 50 /* the reaper's period: idle / 4 within these bounds */
#define PROV_POOL_SWEEP_MAX_MS 5000

struct prov_pool {
    char *db;
    PGconn *idle[PROV_POOL_MAX];
    int64_t idle_since[PROV_POOL_MAX]; /* wp_now_ms() at checkin, per idle[] slot */
    int nidle;
    int nopen;
    prov_pool *next;
};

struct prov_keylock {
    char *key;
    int refs;
    bool held;
    pthread_cond_t cv;
    prov_keylock *next;
};

/* ---- connecting ----------------------------------------------------------------- */

static void chomp_copy(char *dst, size_t dstsz, const char *src)
{
    snprintf(dst, dstsz, "%s", src ? src : "");
    size_t n = strlen(dst);
    while (n > 0 && (dst[n - 1] == '\n' || dst[n - 1] == ' '))
        dst[--n] = '\0';
}

/* Notices on admin sessions ("already a member", "no privileges were granted") are
 * expected noise; libpq would print them to stderr. */
static void ignore_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

PGconn *prov_connect(const prov_settings *s, const char *database, char *sqlstate, wp_error *err)
{
    char port[16];
    snprintf(port, sizeof port, "%d", s->port);
    const char *keys[16], *vals[16];
    int n = 0;
#define KV(k, v) (keys[n] = (k), vals[n] = (v), n++)
    KV("host", s->host);
    KV("port", port);
    KV("user", s->admin_user);
    KV("password", s->admin_password ? s->admin_password : "");
    KV("dbname", database);
    KV("sslmode", prov_sslmode(s->backend_tls));
    if (s->backend_ca_file && s->backend_ca_file[0])
        KV("sslrootcert", s->backend_ca_file);
    KV("connect_timeout", "5");
    KV("application_name", "waypoint");
    /* lock_timeout: a per-role lock held by a hung instance must not block this one
     * forever. search_path: admin-preset callers can create functions and operators in
     * schemas they may CREATE in, and this session is a member of their roles; with
     * only pg_catalog (and pg_temp last) on the path no call Waypoint makes can resolve
     * to their objects (the CVE-2018-1058 class of attack). client_encoding and
     * standard_conforming_strings: the literals Waypoint escapes (role records,
     * verifiers) and the raw SQL it validates with a UTF-8 parser must be read by the
     * server exactly as escaped, whatever the database's defaults are. */
    KV("client_encoding", "UTF8");
    KV("options", "-c lock_timeout=15000 -c search_path=pg_catalog,pg_temp "
                  "-c standard_conforming_strings=on");
#undef KV
    keys[n] = vals[n] = NULL;

    if (sqlstate)
        strcpy(sqlstate, "08006");
    PGconn *c = PQconnectdbParams(keys, vals, 0);
    if (c && PQstatus(c) == CONNECTION_OK) {
        PQsetNoticeProcessor(c, ignore_notice, NULL);
        return c;
    }
    char msg[400];
    chomp_copy(msg, sizeof msg, c ? PQerrorMessage(c) : "out of memory");
    /* libpq exposes no SQLSTATE for a failed connection; this is the one we act on. */
    if (sqlstate && strstr(msg, "database \"") && strstr(msg, "\" does not exist"))
        strcpy(sqlstate, "3D000");
    /* Clients see only that the admin side failed; who, where and libpq's words go to
     * the detail (logged, never sent: it names the admin role and the backend). */
    wp_error_set(err, WP_SQLSTATE_CONN_FAILURE, "Waypoint cannot log in to the backend");
    wp_error_detail(err, "cannot log in to backend as admin user \"%s\" (database \"%s\"): %s",
                    s->admin_user, database, msg);
    PQfinish(c);
    return NULL;
}

/* ---- pools -------------------------------------------------------------------------- */

static void *pools_reaper(void *arg);

int prov_pools_init(prov_pools *ps, const prov_settings *s)
{
    memset(ps, 0, sizeof *ps);
    ps->s = s;
    ps->per_db_max = PROV_POOL_MAX;
    ps->wait_ms = PROV_POOL_WAIT_MS;
    ps->idle_ms = s->admin_idle_ms > 0 ? s->admin_idle_ms : PROV_POOL_IDLE_MS;
    if (pthread_mutex_init(&ps->mu, NULL) != 0)
        return -1;
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0 || pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0 ||
        pthread_cond_init(&ps->cv, &ca) != 0) {
        pthread_mutex_destroy(&ps->mu);
        return -1;
    }
    if (pthread_cond_init(&ps->reaper_cv, &ca) != 0) {
        pthread_condattr_destroy(&ca);
        pthread_cond_destroy(&ps->cv);
        pthread_mutex_destroy(&ps->mu);
        return -1;
    }
    pthread_condattr_destroy(&ca);
    if (pthread_create(&ps->reaper, NULL, pools_reaper, ps) != 0) {
        pthread_cond_destroy(&ps->reaper_cv);
        pthread_cond_destroy(&ps->cv);
        pthread_mutex_destroy(&ps->mu);
        return -1;
    }
    return 0;
}

int prov_pools_prepare(prov_pools *ps, const char *name, const char *sql)
{
    if (ps->nprep >= PROV_POOL_PREP_MAX)
        return -1;
    ps->prep_name[ps->nprep] = name;
    ps->prep_sql[ps->nprep] = sql;
    ps->nprep++;
    return 0;
}

/* Prepares the pool's statements on a new connection; false (err set) on failure. */
static bool prepare_all(prov_pools *ps, PGconn *c, const char *database, wp_error *err)
{
    for (int i = 0; i < ps->nprep; i++) {
        PGresult *r = PQprepare(c, ps->prep_name[i], ps->prep_sql[i], 0, NULL);
        bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok) {
            char msg[400];
            chomp_copy(msg, sizeof msg, PQresultErrorMessage(r));
            wp_error_set(err, WP_SQLSTATE_CONN_FAILURE, "Waypoint cannot use the backend");
            wp_error_detail(
                err, "cannot prepare statement %s on an admin connection (database \"%s\"): %s",
                ps->prep_name[i], database, msg);
        }
        PQclear(r);
        if (!ok)
            return false;
    }
    return true;
}

void prov_pools_destroy(prov_pools *ps)
{
    pthread_mutex_lock(&ps->mu);
    ps->stopping = true;
    pthread_cond_signal(&ps->reaper_cv);
    pthread_mutex_unlock(&ps->mu);
    pthread_join(ps->reaper, NULL);
    prov_pool *p = ps->head;
    while (p) {
        prov_pool *next = p->next;
        for (int i = 0; i < p->nidle; i++)
            PQfinish(p->idle[i]);
        free(p->db);
        free(p);
        p = next;
    }
    ps->head = NULL;
    pthread_cond_destroy(&ps->reaper_cv);
    pthread_cond_destroy(&ps->cv);
    pthread_mutex_destroy(&ps->mu);
}

/* Moves the connections of p idle since before cutoff (the bottom of its stack) to
 * out[*n]. Caller holds ps->mu. */
static void take_expired(prov_pool *p, int64_t cutoff, PGconn **out, int *n)
{
    int k = 0;
    while (k < p->nidle && p->idle_since[k] <= cutoff)
        out[(*n)++] = p->idle[k++];
    if (k == 0)
        return;
    memmove(p->idle, p->idle + k, (size_t)(p->nidle - k) * sizeof p->idle[0]);
    memmove(p->idle_since, p->idle_since + k, (size_t)(p->nidle - k) * sizeof p->idle_since[0]);
    p->nidle -= k;
    p->nopen -= k;
}

/* One sweep: closes every connection idle longer than idle_ms, outside the lock. Caller
 * holds ps->mu; it is released and taken again around the closes. */
static void sweep_locked(prov_pools *ps)
{
    int64_t cutoff = wp_now_ms() - ps->idle_ms;
    for (prov_pool *p = ps->head; p; p = p->next) {
        PGconn *dead[PROV_POOL_MAX];
        int n = 0;
        take_expired(p, cutoff, dead, &n);
        if (n == 0)
            continue;
        char db[256], num[16];
        snprintf(db, sizeof db, "%s", p->db); /* p outlives the unlock: pools are never freed */
        snprintf(num, sizeof num, "%d", n);
        pthread_cond_broadcast(&ps->cv); /* room to open for a waiter */
        pthread_mutex_unlock(&ps->mu);
        for (int i = 0; i < n; i++)
            PQfinish(dead[i]);
        log_kv(WP_LOG_DEBUG, "prov_admin_idle_closed", "listener", ps->s->listener_name, "database",
               db, "closed", num, (char *)NULL);
        pthread_mutex_lock(&ps->mu);
    }
}

static void *pools_reaper(void *arg)
{
    prov_pools *ps = arg;
    int64_t every = ps->idle_ms / 4;
    if (every < PROV_POOL_SWEEP_MIN_MS)
        every = PROV_POOL_SWEEP_MIN_MS;
    if (every > PROV_POOL_SWEEP_MAX_MS)
        every = PROV_POOL_SWEEP_MAX_MS;
    pthread_mutex_lock(&ps->mu);
    while (!ps->stopping) {
        struct timespec ts;
        wp_timespec_after(CLOCK_MONOTONIC, every, &ts);
        while (!ps->stopping && pthread_cond_timedwait(&ps->reaper_cv, &ps->mu, &ts) != ETIMEDOUT)
            ;
        if (!ps->stopping)
            sweep_locked(ps);
    }
    pthread_mutex_unlock(&ps->mu);
    return NULL;
}

/* Caller holds ps->mu. */
static prov_pool *pool_find(prov_pools *ps, const char *db, bool create)
{
    for (prov_pool *p = ps->head; p; p = p->next)
        if (strcmp(p->db, db) == 0)
            return p;
    if (!create)
        return NULL;
    prov_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->db = strdup(db);
    if (!p->db) {
        free(p);
        return NULL;
    }
    p->next = ps->head;
    ps->head = p;
    return p;
}

wp_status prov_pool_get(prov_pools *ps, const char *database, PGconn **out, char *sqlstate,
                        wp_error *err)
{
    struct timespec deadline;
    wp_timespec_after(CLOCK_MONOTONIC, ps->wait_ms, &deadline);
    *out = NULL;
    pthread_mutex_lock(&ps->mu);
    prov_pool *p = pool_find(ps, database, true);
    if (!p) {
        pthread_mutex_unlock(&ps->mu);
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "out of memory");
        return WP_ERR_NOMEM;
    }
    for (;;) {
        if (p->nidle > 0) {
            PGconn *c = p->idle[--p->nidle];
            /* libpq sockets are non-blocking inside: this reads whatever arrived while
             * idle, so a backend that was terminated or restarted shows as closed here,
             * without a round trip. */
            if (PQconsumeInput(c) && PQstatus(c) == CONNECTION_OK && !PQisBusy(c)) {
                pthread_mutex_unlock(&ps->mu);
                *out = c;
                return WP_OK;
            }
            PQfinish(c);
            p->nopen--;
            continue;
        }
        if (p->nopen < ps->per_db_max) {
            p->nopen++;
            pthread_mutex_unlock(&ps->mu);
            PGconn *c = prov_connect(ps->s, database, sqlstate, err);
            if (c && prepare_all(ps, c, database, err)) {
                *out = c;
                return WP_OK;
            }
            PQfinish(c);
            pthread_mutex_lock(&ps->mu);
            p->nopen--;
            pthread_cond_broadcast(&ps->cv);
            pthread_mutex_unlock(&ps->mu);
            return WP_ERR_BACKEND;
        }
        int rc = pthread_cond_timedwait(&ps->cv, &ps->mu, &deadline);
        if (rc == ETIMEDOUT) {
            pthread_mutex_unlock(&ps->mu);
            wp_error_set(err, WP_SQLSTATE_CONN_FAILURE,
                         "timed out waiting for a backend admin connection");
            return WP_ERR_TIMEOUT;
        }
    }
}

bool prov_pool_known(prov_pools *ps, const char *database)
{
    pthread_mutex_lock(&ps->mu);
    bool known = pool_find(ps, database, false) != NULL;
    pthread_mutex_unlock(&ps->mu);
    return known;
}

void prov_pool_put(prov_pools *ps, const char *database, PGconn *conn, bool broken)
{
    if (!conn)
        return;
    /* A connection left inside a transaction (error path) is not reusable as is. */
    if (!broken && PQtransactionStatus(conn) != PQTRANS_IDLE)
        broken = true;
    pthread_mutex_lock(&ps->mu);
    prov_pool *p = pool_find(ps, database, false);
    if (!p || broken || PQstatus(conn) != CONNECTION_OK || p->nidle >= PROV_POOL_MAX) {
        /* A dead connection usually means a backend restart or terminated admin
         * sessions: its idle siblings are dead too, but may not show it yet (checkout
         * only sees a termination that already arrived), and a caller retries once. */
        int nstale = 0;
        PGconn *stale[PROV_POOL_MAX];
        if (p && PQstatus(conn) == CONNECTION_BAD)
            while (p->nidle > 0)
                stale[nstale++] = p->idle[--p->nidle];
        if (p)
            p->nopen -= 1 + nstale;
        pthread_cond_broadcast(&ps->cv);
        pthread_mutex_unlock(&ps->mu);
        PQfinish(conn);
        for (int i = 0; i < nstale; i++)
            PQfinish(stale[i]);
        return;
    }
    p->idle_since[p->nidle] = wp_now_ms();
    p->idle[p->nidle++] = conn;
    pthread_cond_signal(&ps->cv);
    pthread_mutex_unlock(&ps->mu);
}

/* ---- keyed locks ---------------------------------------------------------------------- */

int prov_keylocks_init(prov_keylocks *kl)
{
    kl->head = NULL;
    return pthread_mutex_init(&kl->mu, NULL) == 0 ? 0 : -1;
}

void prov_keylocks_destroy(prov_keylocks *kl)
{
    /* Entries exist only while locked or awaited; none may be left at destroy time. */
    pthread_mutex_destroy(&kl->mu);
}

prov_keylock *prov_keylock_lock(prov_keylocks *kl, const char *key)
{
    pthread_mutex_lock(&kl->mu);
    prov_keylock *e = kl->head;
    while (e && strcmp(e->key, key) != 0)
        e = e->next;
    if (!e) {
        e = calloc(1, sizeof *e);
        if (!e || !(e->key = strdup(key)) || pthread_cond_init(&e->cv, NULL) != 0) {
            if (e)
                free(e->key);
            free(e);
            pthread_mutex_unlock(&kl->mu);
            return NULL;
        }
        e->next = kl->head;
        kl->head = e;
    }
    e->refs++;
    while (e->held)
        pthread_cond_wait(&e->cv, &kl->mu);
    e->held = true;
    pthread_mutex_unlock(&kl->mu);
    return e;
}

void prov_keylock_unlock(prov_keylocks *kl, prov_keylock *e)
{
    if (!e)
        return;
    pthread_mutex_lock(&kl->mu);
    e->held = false;
    if (--e->refs > 0) {
        pthread_cond_signal(&e->cv);
        pthread_mutex_unlock(&kl->mu);
        return;
    }
    prov_keylock **pp = &kl->head;
    while (*pp != e)
        pp = &(*pp)->next;
    *pp = e->next;
    pthread_mutex_unlock(&kl->mu);
    pthread_cond_destroy(&e->cv);
    free(e->key);
    free(e);
}

/* For the admin-connections gauges: every database's open and idle admin connections. */
void prov_pools_each(prov_pools *ps, void (*fn)(void *arg, const char *db, int open, int idle),
                     void *arg)
{
    pthread_mutex_lock(&ps->mu);
    for (prov_pool *p = ps->head; p; p = p->next)
        fn(arg, p->db, p->nopen, p->nidle);
    pthread_mutex_unlock(&ps->mu);
}
