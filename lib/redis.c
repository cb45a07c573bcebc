/*
 * redis: the [redis] connection pool (hiredis, blocking) and its metrics.
 *
 * Design. Waypoint is thread-per-connection, so a blocking client fits: a worker borrows
 * an idle connection from a small list under a mutex (or opens a new one while fewer
 * than pool_size exist, or waits on a condition variable for one to come back), runs one
 * command with the command timeout set on the socket, and gives it back. Connecting
 * happens outside the lock, so a slow Redis never holds other workers at the mutex for
 * longer than the list operation. Any failure (timeout, reset, protocol) closes that
 * connection: hiredis leaves a blocking context unusable after an error, and a fresh
 * connection is the only way back to a known state. There is no retry loop here: a
 * refused connect fails the connection attempt now, and the next one tries again, which
 * is what makes recovery after a Redis restart need no action.
 *
 * Scripts are sent as EVALSHA with their SHA1 computed locally (mbedTLS) and fall back
 * to EVAL on NOSCRIPT, so a restarted Redis costs one extra round trip per script.
 *
 * Metrics (registered on the obs registry): waypoint_redis_duration_seconds{command},
 * waypoint_redis_errors_total{kind}, waypoint_redis_up.
 */
#include "redis.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "scram.h"

#define RDS_HOST_MAX 256

static const char *const rds_err_names[RDS_ERR_COUNT] = {
    "ok", "connect", "auth", "timeout", "io", "reply", "unavailable", "protocol", "nomem"};

const char *rds_err_str(rds_err e)
{
    return e >= 0 && e < RDS_ERR_COUNT ? rds_err_names[e] : "unknown";
}

static const double rds_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                     0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5};

typedef struct rds_idle {
    struct rds_idle *next;
    redisContext *c;
} rds_idle;

struct rds_pool {
    char host[RDS_HOST_MAX]; /* or the unix socket path */
    int port;
    int is_unix;
    char *username, *password;
    int64_t db, connect_ms, command_ms, size;

    pthread_mutex_t mu; /* guards idle, open */
    pthread_cond_t cv;  /* a connection came back or a slot freed */
    rds_idle *idle;
    int64_t open; /* connections that exist (idle or borrowed) */

    metrics_family *latency, *errors, *up;
};

/* --------------------------------------------------------------- address ---- */

int rds_parse_address(const char *a, char *host, size_t hostsz, int *port, int *is_unix, char *err,
                      size_t errsz)
{
    *port = 0;
    *is_unix = 0;
    if (!a || !*a) {
        snprintf(err, errsz, "must not be empty");
        return -1;
    }
    if (a[0] == '/') {
        if (strlen(a) >= hostsz || strlen(a) >= 108) {
            snprintf(err, errsz, "unix socket path too long (at most 107 bytes)");
            return -1;
        }
        snprintf(host, hostsz, "%s", a);
        *is_unix = 1;
        return 0;
    }
    const char *colon = strrchr(a, ':');
    const char *h = a, *hend = colon;
    if (a[0] == '[') {
        const char *rb = strchr(a, ']');
        if (!rb || rb[1] != ':') {
            snprintf(err, errsz,
                     "must be host:port, [ipv6]:port or an absolute unix socket path "
                     "(got '%s')",
                     a);
            return -1;
        }
        h = a + 1;
        hend = rb;
        colon = rb + 1;
    } else if (!colon || strchr(a, ':') != colon) {
        snprintf(err, errsz,
                 "must be host:port, [ipv6]:port or an absolute unix socket path (got '%s')", a);
        return -1;
    }
    char *end = NULL;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (hend == h || (size_t)(hend - h) >= hostsz || !colon[1] || *end || errno || p < 1 ||
        p > 65535) {
        snprintf(err, errsz, "must be host:port with a port from 1 to 65535 (got '%s')", a);
        return -1;
    }
    memcpy(host, h, (size_t)(hend - h));
    host[hend - h] = '\0';
    *port = (int)p;
    return 0;
}

/* --------------------------------------------------------------- metrics ---- */

#define LBL(...) ((const char *const[]){__VA_ARGS__, NULL})

static void rds_metrics(rds_pool *p, obs *o)
{
    metrics_registry *r = obs_registry(o);
    if (!r)
        return;
    p->latency = metrics_family_add(r, METRICS_HISTOGRAM, "waypoint_redis_duration_seconds",
                                    "Redis round trips ([redis]) by command, failures included.",
                                    LBL("command"), rds_buckets,
                                    sizeof(rds_buckets) / sizeof(rds_buckets[0]));
    p->errors = metrics_family_add(r, METRICS_COUNTER, "waypoint_redis_errors_total",
                                   "Failed Redis round trips by kind (connect, auth, timeout, io, "
                                   "reply, unavailable, protocol, nomem).",
                                   LBL("kind"), NULL, 0);
    p->up = metrics_family_add(r, METRICS_GAUGE, "waypoint_redis_up",
                               "1 when the last Redis round trip succeeded, 0 when it failed.",
                               NULL, NULL, 0);
    for (int k = RDS_ERR_CONNECT; k < RDS_ERR_COUNT; k++) /* every series visible at 0 */
        metrics_inc(metrics_series_get(p->errors, LBL(rds_err_str((rds_err)k))), 0);
}

void rds_count_error(rds_pool *p, rds_err kind)
{
    if (p && kind != RDS_OK)
        metrics_inc(metrics_series_get(p->errors, LBL(rds_err_str(kind))), 1);
}

void rds_set_up(rds_pool *p, int up)
{
    if (p)
        metrics_set(metrics_series_get(p->up, NULL), up ? 1 : 0);
}

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ------------------------------------------------------------------ pool ---- */

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

rds_pool *rds_pool_new(const rds_settings *s, obs *o)
{
    rds_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    char err[160];
    if (rds_parse_address(s->address, p->host, sizeof(p->host), &p->port, &p->is_unix, err,
                          sizeof(err)) != 0 ||
        pthread_mutex_init(&p->mu, NULL) != 0) {
        free(p);
        return NULL;
    }
    if (pthread_cond_init(&p->cv, NULL) != 0) {
        pthread_mutex_destroy(&p->mu);
        free(p);
        return NULL;
    }
    p->username = dup_or_null(s->username);
    p->password = dup_or_null(s->password);
    p->db = s->db;
    p->connect_ms = s->connect_timeout_ms;
    p->command_ms = s->command_timeout_ms;
    p->size = s->pool_size > 0 ? s->pool_size : 1;
    if ((s->username && !p->username) || (s->password && !p->password)) {
        rds_pool_free(p);
        return NULL;
    }
    rds_metrics(p, o);
    return p;
}

void rds_pool_free(rds_pool *p)
{
    if (!p)
        return;
    while (p->idle) {
        rds_idle *n = p->idle->next;
        redisFree(p->idle->c);
        free(p->idle);
        p->idle = n;
    }
    if (p->password) {
        explicit_bzero(p->password, strlen(p->password));
        free(p->password);
    }
    free(p->username);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

static struct timeval tv_ms(int64_t ms)
{
    return (struct timeval){.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
}

static rds_err classify(const redisContext *c)
{
    if (c->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ETIMEDOUT))
        return RDS_ERR_TIMEOUT;
    if (c->err == REDIS_ERR_PROTOCOL)
        return RDS_ERR_PROTOCOL;
    if (c->err == REDIS_ERR_OOM)
        return RDS_ERR_NOMEM;
    return RDS_ERR_IO;
}

/* AUTH and SELECT on a new connection. 0 on success. */
static int rds_handshake(rds_pool *p, redisContext *c, char *err, size_t errsz, rds_err *kind)
{
    char db[24];
    snprintf(db, sizeof(db), "%lld", (long long)p->db);
    const char *auth[3] = {"AUTH", p->username ? p->username : p->password, p->password};
    const char *sel[2] = {"SELECT", db};
    struct {
        int argc;
        const char **argv;
        const char *what;
    } steps[2] = {{p->username ? 3 : 2, auth, "AUTH"}, {2, sel, "SELECT"}};
    for (int i = 0; i < 2; i++) {
        if ((i == 0 && !p->password) || (i == 1 && p->db == 0))
            continue;
        redisReply *r = redisCommandArgv(c, steps[i].argc, steps[i].argv, NULL);
        if (!r) {
            *kind = classify(c);
            snprintf(err, errsz, "%s: %s", steps[i].what, c->errstr);
            return -1;
        }
        int bad = r->type == REDIS_REPLY_ERROR;
        if (bad) {
            *kind = RDS_ERR_AUTH;
            /* Redis's own words: they never contain the password. */
            snprintf(err, errsz, "%s refused: %.200s", steps[i].what, r->str ? r->str : "");
        }
        freeReplyObject(r);
        if (bad)
            return -1;
    }
    return 0;
}

redisContext *rds_connect(rds_pool *p, int no_timeout, rds_err *kind, char *err, size_t errsz)
{
    struct timeval ct = tv_ms(p->connect_ms);
    redisContext *c = p->is_unix ? redisConnectUnixWithTimeout(p->host, ct)
                                 : redisConnectWithTimeout(p->host, p->port, ct);
    if (!c || c->err) {
        *kind = c ? RDS_ERR_CONNECT : RDS_ERR_NOMEM;
        char port[16] = "";
        if (!p->is_unix)
            snprintf(port, sizeof(port), ":%d", p->port);
        snprintf(err, errsz, "cannot connect to Redis at %s%s: %s", p->host, port,
                 c ? c->errstr : "out of memory");
        redisFree(c);
        return NULL;
    }
    /* The handshake runs under the command timeout: a Redis that accepts and then says
     * nothing must not hold the caller. */
    if (redisSetTimeout(c, tv_ms(p->command_ms)) != REDIS_OK ||
        rds_handshake(p, c, err, errsz, kind) != 0 ||
        (no_timeout && redisSetTimeout(c, (struct timeval){0, 0}) != REDIS_OK)) {
        if (!err[0]) {
            *kind = RDS_ERR_IO;
            snprintf(err, errsz, "cannot set socket timeouts: %s", c->errstr);
        }
        redisFree(c);
        return NULL;
    }
    (void)redisEnableKeepAlive(c);
    *kind = RDS_OK;
    return c;
}

/* An idle connection, or a new one while fewer than size exist; waits up to the command
 * timeout for one to come back otherwise, unless !wait: then NULL with *kind RDS_OK. */
static redisContext *rds_borrow(rds_pool *p, int wait, rds_err *kind, char *err, size_t errsz)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)(p->command_ms / 1000);
    until.tv_nsec += (long)(p->command_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&p->mu);
    if (!wait && !p->idle && p->open >= p->size) {
        pthread_mutex_unlock(&p->mu);
        *kind = RDS_OK;
        return NULL;
    }
    while (!p->idle && p->open >= p->size)
        if (pthread_cond_timedwait(&p->cv, &p->mu, &until) == ETIMEDOUT && !p->idle &&
            p->open >= p->size) {
            pthread_mutex_unlock(&p->mu);
            *kind = RDS_ERR_TIMEOUT;
            snprintf(err, errsz, "no Redis connection free within command_timeout");
            return NULL;
        }
    if (p->idle) {
        rds_idle *i = p->idle;
        p->idle = i->next;
        pthread_mutex_unlock(&p->mu);
        redisContext *c = i->c;
        free(i);
        return c;
    }
    p->open++;
    pthread_mutex_unlock(&p->mu);
    redisContext *c = rds_connect(p, 0, kind, err, errsz);
    if (!c) {
        pthread_mutex_lock(&p->mu);
        p->open--;
        pthread_cond_signal(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    return c;
}

/* Back to the idle list, or closed when it failed (ok = 0). */
static void rds_return(rds_pool *p, redisContext *c, int ok)
{
    rds_idle *i = ok ? malloc(sizeof(*i)) : NULL;
    pthread_mutex_lock(&p->mu);
    if (i) {
        i->c = c;
        i->next = p->idle;
        p->idle = i;
    } else {
        p->open--;
    }
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    if (!i)
        redisFree(c);
}

/* Error replies that say this server cannot serve us now, whatever the command. */
static int rds_unusable(const redisReply *r)
{
    static const char *const words[] = {"READONLY", "LOADING", "MASTERDOWN", "NOAUTH", "BUSY "};
    if (r->type != REDIS_REPLY_ERROR || !r->str)
        return 0;
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
        if (strncmp(r->str, words[i], strlen(words[i])) == 0)
            return 1;
    return 0;
}

static void rds_failed(const redisContext *c, const char *what, rds_err *kind, char *err,
                       size_t errsz)
{
    *kind = classify(c);
    snprintf(err, errsz, "Redis %s failed: %s", what,
             *kind == RDS_ERR_TIMEOUT ? "no answer within command_timeout" : c->errstr);
}

/* The first half of a round trip: borrow a connection and write the command on it. The
 * answer is read by rds_recv, which gives the connection back; in between, the caller
 * may do other work while Redis answers (rds_eval_send). */
static int rds_send(rds_pool *p, const char *what, int argc, const char **argv, const size_t *lens,
                    int wait, rds_call *call, rds_err *kind, char *err, size_t errsz)
{
    call->t0 = mono_us();
    call->deferred = 0;
    err[0] = '\0';
    *kind = RDS_OK;
    call->c = rds_borrow(p, wait, kind, err, errsz);
    if (!call->c && *kind == RDS_OK) {
        call->deferred = 1; /* every connection is out: rds_eval_recv runs it then */
        return 0;
    }
    if (!call->c)
        return -1;
    int done = 0;
    if (redisAppendCommandArgv(call->c, argc, argv, lens) == REDIS_OK)
        while (!done && redisBufferWrite(call->c, &done) == REDIS_OK)
            ;
    if (done)
        return 0;
    rds_failed(call->c, what, kind, err, errsz);
    rds_return(p, call->c, 0);
    call->c = NULL;
    return -1;
}

/* The second half: the answer of the command rds_send wrote (or, when that failed, the
 * bookkeeping of the failure it recorded in kind and err). */
static redisReply *rds_recv(rds_pool *p, const char *what, rds_call *call, rds_err *kind, char *err,
                            size_t errsz)
{
    redisContext *c = call->c;
    call->c = NULL;
    redisReply *r = NULL;
    int unusable = 0;
    if (c) {
        void *reply = NULL;
        if (redisGetReply(c, &reply) == REDIS_OK)
            r = reply;
        if (!r)
            rds_failed(c, what, kind, err, errsz);
        unusable = r && rds_unusable(r);
        /* A server that became a replica stays one: reconnect, so that an address that
         * follows the primary (Sentinel-aware DNS or proxy) reaches the new one. */
        rds_return(p, c, r != NULL && !unusable);
    }
    int noscript = 0;
    if (r && r->type == REDIS_REPLY_ERROR) {
        *kind = unusable ? RDS_ERR_UNAVAILABLE : RDS_ERR_REPLY;
        /* NOSCRIPT is part of the EVALSHA protocol (rds_eval sends EVAL), not a failure. */
        noscript = r->str && strncmp(r->str, "NOSCRIPT", 8) == 0;
        snprintf(err, errsz, "%s%.300s", noscript ? "" : "Redis error: ", r->str ? r->str : "");
        freeReplyObject(r);
        r = NULL;
    }
    metrics_observe(metrics_series_get(p->latency, LBL(what)),
                    (double)(mono_us() - call->t0) / 1e6);
    if (!noscript)
        rds_count_error(p, *kind);
    /* An error reply came from a Redis that answered: it is up. */
    rds_set_up(p, *kind == RDS_OK || *kind == RDS_ERR_REPLY);
    return r;
}

redisReply *rds_command(rds_pool *p, const char *what, int argc, const char **argv,
                        const size_t *lens, rds_err *kind, char *err, size_t errsz)
{
    rds_call call;
    (void)rds_send(p, what, argc, argv, lens, 1, &call, kind, err, errsz);
    return rds_recv(p, what, &call, kind, err, errsz);
}

/* ---------------------------------------------------------------- scripts ---- */

int rds_script_init(rds_script *sc)
{
    unsigned char d[20];
    if (wp_sha1(sc->body, strlen(sc->body), d) != WP_OK)
        return -1;
    for (int i = 0; i < 20; i++)
        snprintf(sc->sha + 2 * i, 3, "%02x", d[i]);
    return 0;
}

#define RDS_EVAL_ARGS_MAX 1024

/* EVALSHA's argv, or EVAL's with the body (nk holds the key count's digits); NULL with
 * *kind set. */
static const char **eval_argv(const rds_script *sc, int nkeys, const char *const *keys, int nargs,
                              const char *const *args, int body, char nk[16], rds_err *kind,
                              char *err, size_t errsz)
{
    if (nkeys < 0 || nargs < 0 || nkeys + nargs > RDS_EVAL_ARGS_MAX) {
        *kind = RDS_ERR_PROTOCOL;
        snprintf(err, errsz, "too many script arguments");
        return NULL;
    }
    const char **argv = calloc((size_t)(3 + nkeys + nargs), sizeof(*argv));
    if (!argv) {
        *kind = RDS_ERR_NOMEM;
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    snprintf(nk, 16, "%d", nkeys);
    argv[0] = body ? "EVAL" : "EVALSHA";
    argv[1] = body ? sc->body : sc->sha;
    argv[2] = nk;
    for (int i = 0; i < nkeys; i++)
        argv[3 + i] = keys[i];
    for (int i = 0; i < nargs; i++)
        argv[3 + nkeys + i] = args[i];
    return argv;
}

/* One EVALSHA (body 0) or EVAL (body 1) round trip. */
static redisReply *eval_once(rds_pool *p, const rds_script *sc, int nkeys, const char *const *keys,
                             int nargs, const char *const *args, int body, rds_err *kind, char *err,
                             size_t errsz)
{
    char nk[16];
    const char **argv = eval_argv(sc, nkeys, keys, nargs, args, body, nk, kind, err, errsz);
    if (!argv)
        return NULL;
    redisReply *r = rds_command(p, sc->name, 3 + nkeys + nargs, argv, NULL, kind, err, errsz);
    free(argv);
    return r;
}

/* Redis answered NOSCRIPT: a restart or a flush made it forget the script. */
static int noscript(const redisReply *r, rds_err kind, const char *err)
{
    return !r && kind == RDS_ERR_REPLY && strncmp(err, "NOSCRIPT", 8) == 0;
}

int rds_eval_send(rds_pool *p, const rds_script *sc, int nkeys, const char *const *keys, int nargs,
                  const char *const *args, rds_call *call, rds_err *kind, char *err, size_t errsz)
{
    call->c = NULL;
    call->deferred = 0;
    call->t0 = mono_us();
    char nk[16];
    const char **argv = eval_argv(sc, nkeys, keys, nargs, args, 0, nk, kind, err, errsz);
    if (!argv)
        return -1;
    /* Never waits for a connection: a borrowed one is held until rds_eval_recv, so a
     * send that waited could queue behind other callers' work between their halves. */
    int rc = rds_send(p, sc->name, 3 + nkeys + nargs, argv, NULL, 0, call, kind, err, errsz);
    free(argv);
    return rc;
}

redisReply *rds_eval_recv(rds_pool *p, const rds_script *sc, int nkeys, const char *const *keys,
                          int nargs, const char *const *args, rds_call *call, rds_err *kind,
                          char *err, size_t errsz)
{
    if (call->deferred) {
        call->deferred = 0;
        return rds_eval(p, sc, nkeys, keys, nargs, args, kind, err, errsz);
    }
    redisReply *r = rds_recv(p, sc->name, call, kind, err, errsz);
    if (noscript(r, *kind, err))
        r = eval_once(p, sc, nkeys, keys, nargs, args, 1, kind, err, errsz);
    return r;
}

redisReply *rds_eval(rds_pool *p, const rds_script *sc, int nkeys, const char *const *keys,
                     int nargs, const char *const *args, rds_err *kind, char *err, size_t errsz)
{
    redisReply *r = eval_once(p, sc, nkeys, keys, nargs, args, 0, kind, err, errsz);
    if (noscript(r, *kind, err))
        r = eval_once(p, sc, nkeys, keys, nargs, args, 1, kind, err, errsz);
    return r;
}
