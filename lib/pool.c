/*
 * pool: parked backend sessions (see pool.h for what a parked session is and when one
 * is handed out).
 *
 * Design. One list, newest first, behind one mutex: parks and takes are a few string
 * compares under it and nothing blocks while it is held (sockets are closed after the
 * entry is unlinked and the lock dropped). Taking the newest session first keeps the
 * fewest backends warm. The bounds are small (max_total), so linear scans are the
 * simplest correct structure.
 *
 * Reaper. One thread poll()s every parked socket plus a wake pipe. A parked backend has
 * nothing to say: any readable byte (an ErrorResponse from pg_terminate_backend, a
 * NOTIFY, a shutdown) or a hang-up means the session cannot be handed out any more, so
 * it is closed. The poll timeout is the next expiry, at most POOL_REAP_MS, so a session
 * parked while the reaper sleeps is watched from the next wake-up on (takes check the
 * socket themselves, so nothing depends on that delay). Parking does not wake the
 * reaper: that would cost every connect a write(2) and a context switch.
 *
 * Memory. Each entry accounts for what it allocates (entry_bytes) so the cost of a
 * parked session can be logged and documented; the kernel's socket buffers and the
 * backend process are not counted here (see docs/performance.md).
 */
#include "pool.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

#define POOL_REAP_MS 1000     /* longest reaper sleep */
#define POOL_CLOSE_WAIT_MS 50 /* time to hand a Terminate to a parked backend */

typedef struct pool_entry {
    struct pool_entry *next;
    uint64_t id;
    char *listener, *owner, *grant, *params;
    uint64_t generation;
    pool_session s;
    int64_t expires_ms;
    size_t bytes;
} pool_entry;

struct pool {
    pthread_mutex_t mu;
    pool_entry *head;
    size_t n;
    uint64_t next_id;
    int closed; /* pool_shutdown: no more parking */
    int stop;   /* pool_free: the reaper ends */
    int wake[2];
    pthread_t reaper;
};

/* ------------------------------------------------------------ sessions ---- */

void pool_session_clear(pool_session *s)
{
    for (size_t i = 0; i < s->nstatus; i++) {
        free(s->status[i].name);
        free(s->status[i].value);
    }
    free(s->status);
    s->status = NULL;
    s->nstatus = 0;
}

void pool_session_close(pool_session *s)
{
    if (s->open) {
        up_terminate(&s->up, wp_now_ms() + POOL_CLOSE_WAIT_MS);
        s->open = 0;
    }
    pool_session_clear(s);
}

wp_status pool_status_set(pool_session *s, const unsigned char *body, size_t len)
{
    const char *name = (const char *)body;
    const char *nend = memchr(body, '\0', len);
    if (!nend || !memchr(nend + 1, '\0', len - (size_t)(nend + 1 - name)))
        return WP_ERR_PROTOCOL;
    const char *value = nend + 1;
    if ((size_t)(value - name) + strlen(value) + 1 != len)
        return WP_ERR_PROTOCOL;
    char *v = strdup(value);
    if (!v)
        return WP_ERR_NOMEM;
    for (size_t i = 0; i < s->nstatus; i++) {
        if (strcmp(s->status[i].name, name) == 0) {
            free(s->status[i].value);
            s->status[i].value = v;
            return WP_OK;
        }
    }
    pool_status *grown = realloc(s->status, (s->nstatus + 1) * sizeof(*grown));
    char *n = strdup(name);
    if (!grown || !n) {
        if (grown)
            s->status = grown;
        free(n);
        free(v);
        return WP_ERR_NOMEM;
    }
    s->status = grown;
    s->status[s->nstatus++] = (pool_status){.name = n, .value = v};
    return WP_OK;
}

wp_status pool_status_build(const pool_session *s, pgw_buf *out)
{
    for (size_t i = 0; i < s->nstatus; i++) {
        size_t nl = strlen(s->status[i].name) + 1, vl = strlen(s->status[i].value) + 1;
        unsigned char hdr[5] = {PGW_MSG_PARAMETER_STATUS};
        pgw_put32(hdr + 1, (uint32_t)(4 + nl + vl));
        wp_status st = pgw_buf_append(out, hdr, sizeof(hdr));
        if (st == WP_OK)
            st = pgw_buf_append(out, s->status[i].name, nl);
        if (st == WP_OK)
            st = pgw_buf_append(out, s->status[i].value, vl);
        if (st != WP_OK)
            return st;
    }
    return WP_OK;
}

/* Nothing to read and no hang-up on the backend socket, right now. */
static int pool_quiet(pool_session *s)
{
    if (io_pending(&s->up.io) > 0)
        return 0;
    struct pollfd pfd = {.fd = s->up.fd, .events = POLLIN};
    return poll(&pfd, 1, 0) == 0;
}

/* One reply message of the reset; returns 1 when the reset is complete, 0 to read on,
 * -1 when the session must not be parked. */
static int pool_reset_step(pool_session *s, char type, const pgw_buf *b, int *completed)
{
    static const char tag[] = "DISCARD ALL";
    switch (type) {
    case 'C':
        if (*completed || b->len != sizeof(tag) || memcmp(b->data, tag, sizeof(tag)) != 0)
            return -1;
        *completed = 1;
        return 0;
    case PGW_MSG_PARAMETER_STATUS:
        return pool_status_set(s, b->data, b->len) == WP_OK ? 0 : -1;
    case PGW_MSG_NOTICE:
        return 0;
    case PGW_MSG_READY:
        return *completed && b->len == 1 && b->data[0] == 'I' ? 1 : -1;
    default:
        return -1; /* an error, or the answer to something else still in flight */
    }
}

wp_status pool_reset(pool_session *s, int64_t deadline_ms)
{
    static const char q[] = "DISCARD ALL";
    pgw_buf b = {0};
    wp_status st = pgw_build_raw(&b, 'Q', q, sizeof(q));
    if (st == WP_OK)
        st = io_write_all(&s->up.io, b.data, b.len, deadline_ms);
    int completed = 0, r = 0;
    while (st == WP_OK && r == 0) {
        char type;
        st = pgw_read_msg(&s->up.io, deadline_ms, PGW_MSG_MAX, &type, &b);
        if (st == WP_OK)
            r = pool_reset_step(s, type, &b, &completed);
    }
    pgw_buf_free(&b);
    if (st == WP_OK && r < 0)
        st = WP_ERR_PROTOCOL;
    if (st == WP_OK && !pool_quiet(s))
        st = WP_ERR_PROTOCOL; /* more than the reset's answer came back */
    return st;
}

/* -------------------------------------------------------- fingerprints ---- */

static int fp_put(FILE *f, const char *s)
{
    return fprintf(f, "%zu:%s;", strlen(s), s) < 0;
}

char *pool_grant_fingerprint(const grant_effective *g)
{
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    if (!f)
        return NULL;
    int bad =
        fprintf(f, "d%d;l%lld,%lld,%lld;", (int)g->downgrade,
                (long long)g->limits.max_conns_per_user, (long long)g->limits.max_conn_duration_ms,
                (long long)g->limits.max_bytes_per_conn) < 0;
    for (size_t i = 0; i < g->npairs; i++) {
        bad |= fprintf(f, "p%d,", (int)g->pairs[i].preset) < 0;
        bad |= fp_put(f, g->pairs[i].schema);
    }
    for (size_t i = 0; i < g->nsql; i++)
        bad |= fp_put(f, g->sql[i].template_text);
    bad |= fclose(f) != 0;
    if (bad) {
        free(out);
        return NULL;
    }
    return out;
}

char *pool_params_fingerprint(const pgw_param *params, size_t n)
{
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    if (!f)
        return NULL;
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        bad |= fp_put(f, params[i].key) || fp_put(f, params[i].value);
    bad |= fclose(f) != 0;
    if (bad) {
        free(out);
        return NULL;
    }
    return out;
}

/* --------------------------------------------------------------- store ---- */

static void entry_free(pool_entry *e)
{
    pool_session_close(&e->s);
    free(e->listener);
    free(e->owner);
    free(e->grant);
    free(e->params);
    free(e);
}

static void close_list(pool_entry *dead, const char *reason)
{
    while (dead) {
        pool_entry *n = dead->next;
        char pid[16];
        snprintf(pid, sizeof(pid), "%u", (unsigned)dead->s.backend_pid);
        log_kv(WP_LOG_DEBUG, "pool_close", "listener", dead->listener, "role", dead->s.role,
               "backend_pid", pid, "reason", reason, (char *)NULL);
        entry_free(dead);
        dead = n;
    }
}

/* Unlinks *pp (under the lock) onto *dead. */
static void unlink_to(pool *p, pool_entry **pp, pool_entry **dead)
{
    pool_entry *e = *pp;
    *pp = e->next;
    e->next = *dead;
    *dead = e;
    p->n--;
}

static size_t entry_size(const pool_entry *e)
{
    size_t n = sizeof(*e) + strlen(e->listener) + strlen(e->owner) + strlen(e->grant) +
               strlen(e->params) + 4 + e->s.nstatus * sizeof(pool_status);
    for (size_t i = 0; i < e->s.nstatus; i++)
        n += strlen(e->s.status[i].name) + strlen(e->s.status[i].value) + 2;
    return n;
}

/* The oldest entry (of role, when given): the list is newest first, so the last match. */
static pool_entry **oldest(pool *p, const char *role)
{
    pool_entry **found = NULL;
    for (pool_entry **pp = &p->head; *pp; pp = &(*pp)->next)
        if (!role || strcmp((*pp)->s.role, role) == 0)
            found = pp;
    return found;
}

static size_t count_role(pool *p, const char *role)
{
    size_t n = 0;
    for (pool_entry *e = p->head; e; e = e->next)
        n += strcmp(e->s.role, role) == 0;
    return n;
}

int pool_park(pool *p, const pool_key *k, pool_session *s, const pool_limits *lim)
{
    if (!p || !s->open || lim->max_total <= 0 || lim->max_per_role <= 0 || lim->lifetime_ms <= 0)
        return 0;
    if (!k->listener || !k->owner || !k->grant || !k->params)
        return 0; /* a fingerprint could not be made (out of memory): nothing to match it by */
    pool_entry *e = calloc(1, sizeof(*e));
    if (!e)
        return 0;
    e->listener = strdup(k->listener);
    e->owner = strdup(k->owner);
    e->grant = strdup(k->grant);
    e->params = strdup(k->params);
    if (!e->listener || !e->owner || !e->grant || !e->params) {
        free(e->listener), free(e->owner), free(e->grant), free(e->params), free(e);
        return 0;
    }
    e->generation = k->generation;
    e->expires_ms = wp_now_ms() + lim->lifetime_ms;
    pool_entry *dead = NULL;
    size_t size = 0;
    pthread_mutex_lock(&p->mu);
    int ok = !p->closed;
    if (ok) {
        e->s = *s; /* the connection moves into the pool */
        e->id = ++p->next_id;
        e->bytes = size = entry_size(e);
        if (count_role(p, s->role) >= (size_t)lim->max_per_role)
            unlink_to(p, oldest(p, s->role), &dead);
        else if (p->n >= (size_t)lim->max_total)
            unlink_to(p, oldest(p, NULL), &dead);
        e->next = p->head;
        p->head = e;
        p->n++;
    }
    pthread_mutex_unlock(&p->mu);
    close_list(dead, "bound");
    if (!ok) {
        free(e->listener), free(e->owner), free(e->grant), free(e->params), free(e);
        return 0;
    }
    /* e belongs to the pool now (another worker may already have taken it): only s,
     * still the caller's, is read from here on */
    char pid[16], bytes[24];
    snprintf(pid, sizeof(pid), "%u", (unsigned)s->backend_pid);
    snprintf(bytes, sizeof(bytes), "%zu", size);
    log_kv(WP_LOG_DEBUG, "pool_park", "listener", k->listener, "role", s->role, "backend_pid", pid,
           "bytes", bytes, (char *)NULL);
    memset(s, 0, sizeof(*s));
    return 1;
}

int pool_take(pool *p, const pool_key *k, pool_session *out)
{
    if (!p)
        return 0;
    for (;;) {
        pool_entry *dead = NULL, *got = NULL;
        int64_t now = wp_now_ms();
        pthread_mutex_lock(&p->mu);
        for (pool_entry **pp = &p->head; *pp;) {
            pool_entry *e = *pp;
            if (strcmp(e->owner, k->owner) != 0 || strcmp(e->listener, k->listener) != 0) {
                pp = &e->next;
            } else if (strcmp(e->grant, k->grant) != 0 || e->generation != k->generation ||
                       now >= e->expires_ms) {
                unlink_to(p, pp, &dead); /* the grant or the configuration changed */
            } else if (!got && strcmp(e->params, k->params) == 0) {
                unlink_to(p, pp, &got);
            } else {
                pp = &e->next;
            }
        }
        pthread_mutex_unlock(&p->mu);
        close_list(dead, "grant_changed");
        if (!got)
            return 0;
        if (pool_quiet(&got->s)) {
            *out = got->s;
            memset(&got->s, 0, sizeof(got->s));
            entry_free(got);
            return 1;
        }
        close_list(got, "backend_spoke"); /* and look for another one */
    }
}

void pool_drop(pool *p, pool_drop_kind kind, const char *listener, const char *owner,
               const char *reason)
{
    if (!p)
        return;
    pool_entry *dead = NULL;
    pthread_mutex_lock(&p->mu);
    for (pool_entry **pp = &p->head; *pp;) {
        pool_entry *e = *pp;
        if (kind == POOL_DROP_ALL ||
            (strcmp(e->listener, listener) == 0 && strcmp(e->owner, owner) == 0))
            unlink_to(p, pp, &dead);
        else
            pp = &e->next;
    }
    pthread_mutex_unlock(&p->mu);
    size_t n = 0;
    for (pool_entry *e = dead; e; e = e->next)
        n++;
    if (n > 0) {
        char num[24];
        snprintf(num, sizeof(num), "%zu", n);
        log_kv(WP_LOG_INFO, "pool_dropped", "sessions", num, "reason", reason, (char *)NULL);
    }
    close_list(dead, reason);
}

void pool_shutdown(pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->closed = 1;
    pthread_mutex_unlock(&p->mu);
    pool_drop(p, POOL_DROP_ALL, NULL, NULL, "shutdown");
}

size_t pool_count(pool *p)
{
    pthread_mutex_lock(&p->mu);
    size_t n = p->n;
    pthread_mutex_unlock(&p->mu);
    return n;
}

/* -------------------------------------------------------------- reaper ---- */

/* Under the lock: the poll set (wake pipe first) and the ids it watches. */
static int reap_prepare(pool *p, struct pollfd **fds, uint64_t **ids, size_t *n, int64_t *next)
{
    struct pollfd *f = realloc(*fds, (p->n + 1) * sizeof(*f));
    if (f)
        *fds = f;
    uint64_t *i = f ? realloc(*ids, (p->n + 1) * sizeof(*i)) : NULL;
    if (i)
        *ids = i;
    if (!f || !i)
        return 0;
    f[0] = (struct pollfd){.fd = p->wake[0], .events = POLLIN};
    *n = 1;
    *next = wp_now_ms() + POOL_REAP_MS;
    for (pool_entry *e = p->head; e; e = e->next) {
        f[*n] = (struct pollfd){.fd = e->s.up.fd, .events = POLLIN};
        i[(*n)++] = e->id;
        if (e->expires_ms < *next)
            *next = e->expires_ms;
    }
    return 1;
}

/* Under the lock: unlinks what expired or spoke. */
static void reap_collect(pool *p, const struct pollfd *fds, const uint64_t *ids, size_t n,
                         pool_entry **dead)
{
    int64_t now = wp_now_ms();
    for (pool_entry **pp = &p->head; *pp;) {
        pool_entry *e = *pp;
        int spoke = io_pending(&e->s.up.io) > 0;
        for (size_t k = 1; k < n && !spoke; k++)
            spoke = ids[k] == e->id && fds[k].revents != 0;
        if (spoke || now >= e->expires_ms)
            unlink_to(p, pp, dead);
        else
            pp = &e->next;
    }
}

static void *pool_reaper(void *arg)
{
    pool *p = arg;
    struct pollfd *fds = NULL;
    uint64_t *ids = NULL;
    size_t n = 0;
    for (;;) {
        int64_t next = 0;
        pthread_mutex_lock(&p->mu);
        int stop = p->stop, ok = !stop && reap_prepare(p, &fds, &ids, &n, &next);
        pthread_mutex_unlock(&p->mu);
        if (stop)
            break;
        int64_t wait = ok ? next - wp_now_ms() : POOL_REAP_MS;
        int r = poll(ok ? fds : NULL, ok ? n : 0, wait < 0 ? 0 : (int)wait);
        if (r > 0 && fds[0].revents) {
            char buf[64];
            while (read(p->wake[0], buf, sizeof(buf)) > 0) {
            }
        }
        pool_entry *dead = NULL;
        pthread_mutex_lock(&p->mu);
        if (ok)
            reap_collect(p, fds, ids, r > 0 ? n : 0, &dead);
        pthread_mutex_unlock(&p->mu);
        close_list(dead, "idle_or_backend_gone");
    }
    free(fds);
    free(ids);
    return NULL;
}

pool *pool_new(void)
{
    pool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        free(p);
        return NULL;
    }
    if (pipe2(p->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        pthread_mutex_destroy(&p->mu);
        free(p);
        return NULL;
    }
    if (pthread_create(&p->reaper, NULL, pool_reaper, p) != 0) {
        close(p->wake[0]);
        close(p->wake[1]);
        pthread_mutex_destroy(&p->mu);
        free(p);
        return NULL;
    }
    return p;
}

void pool_free(pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_mutex_unlock(&p->mu);
    char c = 1;
    (void)!write(p->wake[1], &c, 1);
    pthread_join(p->reaper, NULL);
    pool_shutdown(p);
    close(p->wake[0]);
    close(p->wake[1]);
    pthread_mutex_destroy(&p->mu);
    free(p);
}
