/*
 * fleet: shared limits, heartbeats and fleet-wide admin requests on Redis/Valkey.
 *
 * Keys (all under [redis] key_prefix, default "waypoint:"):
 *   instances        ZSET  instance id -> the unix ms its liveness ends (now + instance_ttl)
 *   instance:<id>    STRING the instance's heartbeat record (JSON), expiring after instance_ttl
 *   user:<user>      HASH  instance id -> that instance's open connections of user
 *   control          pub/sub channel of fleet-wide admin requests
 *   reply:<nonce>    LIST  the answers to one request, one JSON per instance (expires 60 s)
 *
 * Counting. Acquire is one Lua script (atomic in Redis): it renews this instance in
 * `instances`, sums the user's hash over the instances still alive (removing the fields
 * of dead ones on the way), and adds one for this instance unless the sum has reached
 * the limit. Release is one HINCRBY -1. A dead instance's fields are ignored as soon as
 * its `instances` entry has expired, so kill -9 or a power loss frees its counts within
 * instance_ttl; a live instance renews its entry every heartbeat_interval.
 *
 * The heartbeat also writes this instance's counts as absolute values (HSET, not
 * increments), which is what re-registers the open sessions after Redis lost its data
 * (restart without persistence, failover to an empty replica) and corrects a count whose
 * release could not be sent. For the absolute values to be right, no acquire or release
 * may be between its local update and its Redis update while the heartbeat snapshots. A
 * release holds a read lock across both, the heartbeat the write lock (writer-preferring,
 * so a steady stream of connects cannot starve it). An acquire, whose two halves a
 * connect's reuse check may separate, instead marks its user in flight from before the
 * script is sent until its answer is counted, and the heartbeat leaves users in flight
 * for the next round. Users whose local count dropped to zero stay in the table until a
 * heartbeat has deleted their field.
 *
 * Fail closed. When a script cannot run (Redis down, timeout), a connect that has a limit
 * is refused with FLEET_UNAVAILABLE; one without a limit is admitted and counted locally
 * (the next heartbeat registers it). Open sessions are never touched by Redis failures.
 *
 * Fleet-wide admin. `sessions -fleet` / `kill -fleet` are published on `control`; every
 * instance's control thread (a dedicated subscriber connection) runs the request on its
 * own session registry, exactly as the local admin command would (kill: backend stopped
 * first, then the FATAL), and pushes its answer onto the request's reply list. PUBLISH
 * says how many subscribers got the request, so the asking side knows how many answers
 * to wait for; instances alive by heartbeat that did not answer are listed as such.
 *
 * Redis Cluster is not supported (scripts touch keys they are not given); a single
 * primary, with Sentinel or a managed failover, is.
 */
#include "fleet.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "admin.h"
#include "io.h"
#include "log.h"
#include "redis.h"

#define FLEET_REPLY_TTL_MS "60000"
#define FLEET_SESSIONS_WAIT_MS 3000
#define FLEET_KILL_WAIT_MS 12000 /* each instance waits up to 10 s for its sessions */
#define FLEET_HB_USERS_PER_CALL 400
#define FLEET_RECONNECT_MS 500

/* ---------------------------------------------------------------- scripts ---- */

#define FLEET_LUA_NOW                                                                              \
    "if redis.replicate_commands then redis.replicate_commands() end\n"                            \
    "local t = redis.call('TIME')\n"                                                               \
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

/* KEYS: user hash, instances. ARGV: instance id, max (0 = none), ttl ms.
 * Returns {admitted 0/1, fleet-wide count (after counting when admitted)}. */
static const rds_script fleet_acquire_lua = {
    .name = "acquire",
    .body = FLEET_LUA_NOW
    "redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])\n"
    "local all = redis.call('HGETALL', KEYS[1])\n"
    "local total = 0\n"
    "for i = 1, #all, 2 do\n"
    "  local until_ms = redis.call('ZSCORE', KEYS[2], all[i])\n"
    "  if until_ms and tonumber(until_ms) > now then total = total + tonumber(all[i + 1])\n"
    "  else redis.call('HDEL', KEYS[1], all[i]) end\n"
    "end\n"
    "local max = tonumber(ARGV[2])\n"
    "if max > 0 and total >= max then return {0, total} end\n"
    "redis.call('HINCRBY', KEYS[1], ARGV[1], 1)\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[3])\n"
    "return {1, total + 1}\n",
};

/* KEYS: user hash. ARGV: instance id. */
static const rds_script fleet_release_lua = {
    .name = "release",
    .body = "local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)\n"
            "if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end\n"
            "return n\n",
};

/* KEYS: instances, record key, user hashes... ARGV: id, ttl ms, record ("" = keep),
 * one count per user hash (0 deletes this instance's field). */
static const rds_script fleet_heartbeat_lua = {
    .name = "heartbeat",
    .body =
        FLEET_LUA_NOW "local ttl = tonumber(ARGV[2])\n"
                      "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
                      "redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])\n"
                      "redis.call('PEXPIRE', KEYS[1], ttl)\n"
                      "if ARGV[3] ~= '' then redis.call('SET', KEYS[2], ARGV[3], 'PX', ttl) end\n"
                      "for i = 3, #KEYS do\n"
                      "  local n = tonumber(ARGV[i + 1])\n"
                      "  if n > 0 then\n"
                      "    redis.call('HSET', KEYS[i], ARGV[1], n)\n"
                      "    redis.call('PEXPIRE', KEYS[i], ttl)\n"
                      "  else redis.call('HDEL', KEYS[i], ARGV[1]) end\n"
                      "end\n"
                      "return #KEYS - 2\n",
};

/* KEYS: instances. ARGV: record key prefix. The records of the live instances. */
static const rds_script fleet_view_lua = {
    .name = "view",
    .body = FLEET_LUA_NOW "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
                          "local out = {}\n"
                          "for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do\n"
                          "  local r = redis.call('GET', ARGV[1] .. id)\n"
                          "  if r then out[#out + 1] = r end\n"
                          "end\n"
                          "return out\n",
};

/* ----------------------------------------------------------------- state ---- */

typedef struct fleet_user {
    struct fleet_user *next;
    int64_t count;    /* 0: released, its Redis field not yet deleted by a heartbeat */
    int64_t inflight; /* acquires sent and not yet answered: the heartbeat skips the user */
    char key[];
} fleet_user;

struct fleet {
    rds_pool *rds;
    obs *o;
    char *prefix;
    char id[128];
    char host[64];
    char *listeners_json; /* [{"name":..,"listen":..}] of the start configuration */
    int64_t started_ms;   /* wall clock */
    int64_t ttl_ms, interval_ms, command_ms;
    char *k_instances, *k_record, *k_channel;

    pthread_rwlock_t rw; /* read: release; write: heartbeat (file comment) */
    pthread_mutex_t umu; /* guards users */
    fleet_user *users;

    atomic_int up; /* last known Redis state, for the log lines on each change */
    metrics_family *refusals;

    pthread_mutex_t smu; /* guards stopping, sub; scv wakes the threads */
    pthread_cond_t scv;
    int stopping;
    redisContext *sub; /* the control thread's subscriber connection */
    pthread_t hb_th, ctl_th;
    int hb_started, ctl_started;
    atomic_uint nonce;
    rds_script acquire_sc, release_sc, heartbeat_sc, view_sc; /* with their SHA1s */
};

const char *fleet_verdict_str(fleet_verdict v)
{
    switch (v) {
    case FLEET_OK:
        return "ok";
    case FLEET_OVER:
        return "over_limit";
    case FLEET_UNAVAILABLE:
        return "redis_unavailable";
    }
    return "unknown";
}

const char *fleet_instance_id(const fleet *f)
{
    return f ? f->id : "";
}

int fleet_key(char *out, size_t outsz, const char *prefix, const char *kind, const char *name)
{
    int n = snprintf(out, outsz, "%s%s%s%s", prefix, kind, name ? ":" : "", name ? name : "");
    return n < 0 || (size_t)n >= outsz ? -1 : n;
}

static char *fleet_key_alloc(const fleet *f, const char *kind, const char *name)
{
    size_t n = strlen(f->prefix) + strlen(kind) + (name ? strlen(name) + 1 : 0) + 1;
    char *k = malloc(n);
    if (k && fleet_key(k, n, f->prefix, kind, name) < 0) {
        free(k);
        k = NULL;
    }
    return k;
}

/* Logs each change of Redis's reachability once (not every failed round trip). */
static void fleet_saw(fleet *f, int ok, const char *what, const char *err)
{
    int was = atomic_exchange(&f->up, ok);
    if (was == ok)
        return;
    if (ok)
        log_kv(WP_LOG_INFO, "redis_reachable", "instance", f->id, (char *)NULL);
    else
        log_kv(WP_LOG_WARN, "redis_unreachable", "instance", f->id, "during", what, "error", err,
               (char *)NULL);
}

/* ------------------------------------------------------------ local table ---- */

/* Adds delta to user's local count and dflight to its acquires in flight; creates the
 * entry. -1 without memory. */
static int fleet_users_add(fleet *f, const char *user, int64_t delta, int64_t dflight)
{
    pthread_mutex_lock(&f->umu);
    fleet_user *u = f->users;
    while (u && strcmp(u->key, user) != 0)
        u = u->next;
    if (!u && (u = calloc(1, sizeof(*u) + strlen(user) + 1)) != NULL) {
        strcpy(u->key, user);
        u->next = f->users;
        f->users = u;
    }
    if (u) {
        u->count += delta;
        if (u->count < 0)
            u->count = 0;
        u->inflight += dflight;
    }
    pthread_mutex_unlock(&f->umu);
    return u ? 0 : -1;
}

/* ------------------------------------------------------------ limits ---- */

static void fleet_refused(fleet *f, fleet_verdict v)
{
    const char *const lbl[] = {fleet_verdict_str(v), NULL};
    metrics_inc(metrics_series_get(f->refusals, lbl), 1);
}

static int64_t reply_int(const redisReply *r)
{
    if (!r)
        return 0;
    if (r->type == REDIS_REPLY_INTEGER)
        return (int64_t)r->integer;
    if (r->type == REDIS_REPLY_STRING && r->str)
        return strtoll(r->str, NULL, 10);
    return 0;
}

static int fleet_release_remote(fleet *f, const char *ukey)
{
    rds_err kind;
    char err[256];
    const char *keys[1] = {ukey};
    const char *args[1] = {f->id};
    redisReply *r = rds_eval(f->rds, &f->release_sc, 1, keys, 1, args, &kind, err, sizeof(err));
    fleet_saw(f, r != NULL || kind == RDS_ERR_REPLY, "release", err);
    freeReplyObject(r);
    return r ? 0 : -1;
}

/* The script's keys and args for a, which holds their strings until recv. */
static void acq_argv(const fleet *f, const fleet_acq *a, const char *keys[2], const char *args[3])
{
    keys[0] = a->ukey;
    keys[1] = f->k_instances;
    args[0] = f->id;
    args[1] = a->maxs;
    args[2] = a->ttls;
}

/* The acquire is sent without waiting for Redis's answer; until fleet_acquire_recv the
 * user is marked in flight, so a heartbeat in between leaves its count alone (Redis may
 * or may not have counted this connection yet). The mark and the count change under
 * umu, which the heartbeat's snapshot takes too, so the acquire needs no read lock. */
void fleet_acquire_send(fleet *f, const char *user, int64_t max, fleet_acq *a)
{
    memset(a, 0, sizeof(*a));
    a->kind = RDS_ERR_NOMEM;
    snprintf(a->err, sizeof(a->err), "out of memory");
    a->max = max;
    snprintf(a->maxs, sizeof(a->maxs), "%lld", (long long)(max > 0 ? max : 0));
    snprintf(a->ttls, sizeof(a->ttls), "%lld", (long long)f->ttl_ms);
    a->user = strdup(user);
    a->ukey = fleet_key_alloc(f, "user", user);
    a->marked = a->user && a->ukey && fleet_users_add(f, user, 0, 1) == 0;
    if (a->marked) {
        const char *keys[2], *args[3];
        acq_argv(f, a, keys, args);
        /* a failed send leaves its reason in a->kind and a->err for the recv */
        (void)rds_eval_send(f->rds, &f->acquire_sc, 2, keys, 3, args, &a->call, &a->kind, a->err,
                            sizeof(a->err));
    }
}

fleet_verdict fleet_acquire_recv(fleet *f, fleet_acq *a, int64_t *count)
{
    *count = -1;
    const char *keys[2], *args[3];
    acq_argv(f, a, keys, args);
    redisReply *r = a->marked ? rds_eval_recv(f->rds, &f->acquire_sc, 2, keys, 3, args, &a->call,
                                              &a->kind, a->err, sizeof(a->err))
                              : NULL;
    fleet_verdict v = FLEET_UNAVAILABLE;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
        *count = reply_int(r->element[1]);
        v = reply_int(r->element[0]) == 1 ? FLEET_OK : FLEET_OVER;
    } else if (a->max <= 0 && a->marked) {
        v = FLEET_OK; /* no limit to decide: the next heartbeat registers it */
    }
    if (a->marked) /* the entry exists since send: this cannot run out of memory */
        (void)fleet_users_add(f, a->user, v == FLEET_OK, -1);
    if (a->marked && !r)
        fleet_saw(f, a->kind == RDS_ERR_REPLY, "acquire", a->err);
    else if (r)
        fleet_saw(f, 1, "acquire", "");
    if (!r && a->max > 0)
        log_kv(WP_LOG_DEBUG, "fleet_limit_unavailable", "instance", f->id, "error", a->err,
               (char *)NULL);
    freeReplyObject(r);
    free(a->user);
    free(a->ukey);
    a->user = a->ukey = NULL;
    a->marked = 0;
    if (v != FLEET_OK)
        fleet_refused(f, v);
    return v;
}

void fleet_release(fleet *f, const char *user)
{
    char *ukey = fleet_key_alloc(f, "user", user);
    pthread_rwlock_rdlock(&f->rw);
    (void)fleet_users_add(f, user, -1, 0);
    if (ukey)
        (void)fleet_release_remote(f, ukey); /* on failure the heartbeat corrects it */
    pthread_rwlock_unlock(&f->rw);
    free(ukey);
}

/* ------------------------------------------------------------ heartbeat ---- */

static char *fleet_record(fleet *f)
{
    json_t *list = sessreg_list(obs_sessions(f->o));
    char started[40];
    time_t secs = (time_t)(f->started_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    strftime(started, sizeof(started), "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_error_t jerr;
    json_t *lsn = json_loads(f->listeners_json, 0, &jerr);
    json_t *rec =
        json_pack("{s:s,s:s,s:s,s:I,s:o*,s:s,s:I}", "instance", f->id, "host", f->host, "version",
                  WP_VERSION, "pid", (json_int_t)getpid(), "listeners", lsn, "started", started,
                  "sessions", (json_int_t)(list ? json_array_size(list) : 0));
    json_decref(list);
    char *s = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
    json_decref(rec);
    return s;
}

typedef struct hb_batch {
    const char **keys, **args;
    char **owned; /* strings to free */
    size_t nowned;
} hb_batch;

/* One heartbeat: record + every local count, in chunks of FLEET_HB_USERS_PER_CALL.
 * Runs under the write lock; returns 0 when all chunks went through. */
static int fleet_heartbeat_locked(fleet *f, const char *record, char *err, size_t errsz,
                                  rds_err *kind)
{
    pthread_mutex_lock(&f->umu);
    size_t n = 0;
    for (fleet_user *u = f->users; u; u = u->next)
        n++;
    size_t cap = FLEET_HB_USERS_PER_CALL;
    const char **keys = calloc(cap + 2, sizeof(*keys));
    const char **args = calloc(cap + 3, sizeof(*args));
    char **owned = calloc(2 * n + 1, sizeof(*owned));
    if (!keys || !args || !owned) {
        pthread_mutex_unlock(&f->umu);
        free(keys);
        free(args);
        free(owned);
        *kind = RDS_ERR_NOMEM;
        snprintf(err, errsz, "out of memory");
        return -1;
    }
    char ttls[24];
    snprintf(ttls, sizeof(ttls), "%lld", (long long)f->ttl_ms);
    int rc = 0;
    fleet_user *u = f->users;
    size_t nown = 0;
    int first = 1;
    do {
        size_t k = 0;
        keys[0] = f->k_instances;
        keys[1] = f->k_record;
        args[0] = f->id;
        args[1] = ttls;
        args[2] = first ? record : "";
        for (; u && k < cap; u = u->next) {
            if (u->inflight > 0)
                continue; /* Redis may have counted an acquire not yet counted here: next time */
            char *key = fleet_key_alloc(f, "user", u->key);
            char *cnt = malloc(24);
            owned[nown++] = key;
            owned[nown++] = cnt;
            if (!key || !cnt) {
                rc = -1;
                break;
            }
            snprintf(cnt, 24, "%lld", (long long)u->count);
            keys[2 + k] = key;
            args[3 + k] = cnt;
            k++;
        }
        if (rc != 0)
            break;
        redisReply *r = rds_eval(f->rds, &f->heartbeat_sc, (int)(2 + k), keys, (int)(3 + k), args,
                                 kind, err, errsz);
        rc = r ? 0 : -1;
        freeReplyObject(r);
        first = 0;
    } while (rc == 0 && u);
    if (rc == 0) { /* Redis has no field for the zero entries now: forget them */
        for (fleet_user **pp = &f->users; *pp;) {
            fleet_user *x = *pp;
            if (x->count == 0 && x->inflight == 0) {
                *pp = x->next;
                free(x);
            } else {
                pp = &x->next;
            }
        }
    }
    pthread_mutex_unlock(&f->umu);
    for (size_t i = 0; i < nown; i++)
        free(owned[i]);
    free(owned);
    free(keys);
    free(args);
    return rc;
}

static void fleet_heartbeat(fleet *f)
{
    char *record = fleet_record(f);
    char err[256] = "";
    rds_err kind = RDS_ERR_NOMEM;
    int rc = -1;
    if (record) {
        pthread_rwlock_wrlock(&f->rw);
        rc = fleet_heartbeat_locked(f, record, err, sizeof(err), &kind);
        pthread_rwlock_unlock(&f->rw);
    }
    fleet_saw(f, rc == 0 || kind == RDS_ERR_REPLY, "heartbeat", err);
    if (rc != 0 && kind == RDS_ERR_REPLY)
        log_kv(WP_LOG_ERROR, "fleet_heartbeat_failed", "error", err, (char *)NULL);
    free(record);
}

/* Waits up to ms for stopping; returns 1 when stopping. */
static int fleet_wait_stop(fleet *f, int64_t ms)
{
    struct timespec ts;
    wp_timespec_after(CLOCK_MONOTONIC, ms, &ts);
    pthread_mutex_lock(&f->smu);
    while (!f->stopping && pthread_cond_timedwait(&f->scv, &f->smu, &ts) != ETIMEDOUT)
        ;
    int s = f->stopping;
    pthread_mutex_unlock(&f->smu);
    return s;
}

static void *fleet_hb_thread(void *arg)
{
    fleet *f = arg;
    do
        fleet_heartbeat(f);
    while (!fleet_wait_stop(f, f->interval_ms));
    return NULL;
}

/* ------------------------------------------------------- control thread ---- */

static void fleet_push_reply(fleet *f, const char *replykey, json_t *answer)
{
    char *s = answer ? json_dumps(answer, JSON_COMPACT) : NULL;
    json_decref(answer);
    if (!s)
        return;
    rds_err kind;
    char err[256];
    const char *push[3] = {"RPUSH", replykey, s};
    redisReply *r = rds_command(f->rds, "reply", 3, push, NULL, &kind, err, sizeof(err));
    freeReplyObject(r);
    const char *exp[3] = {"PEXPIRE", replykey, FLEET_REPLY_TTL_MS};
    r = rds_command(f->rds, "reply", 3, exp, NULL, &kind, err, sizeof(err));
    freeReplyObject(r);
    free(s);
}

static json_t *fleet_local_kill(fleet *f, const char *login)
{
    size_t left = 0;
    json_t *killed = admin_kill_local(f->o, login, 0, &left);
    return killed ? json_pack("{s:s,s:o,s:I}", "instance", f->id, "killed", killed, "still_open",
                              (json_int_t)left)
                  : NULL;
}

/* One request from the control channel. Malformed ones are ignored: only processes that
 * can write to the Redis publish there, and they are Waypoint instances. */
static void fleet_control(fleet *f, const char *payload, size_t len)
{
    json_error_t jerr;
    json_t *req = json_loadb(payload, len, 0, &jerr);
    const char *op = json_string_value(json_object_get(req, "op"));
    const char *replykey = json_string_value(json_object_get(req, "reply"));
    const char *login = json_string_value(json_object_get(req, "login"));
    if (op && replykey && strncmp(replykey, f->prefix, strlen(f->prefix)) == 0) {
        json_t *answer = NULL;
        if (strcmp(op, "sessions") == 0) {
            json_t *list = sessreg_list(obs_sessions(f->o));
            answer = list ? json_pack("{s:s,s:o}", "instance", f->id, "sessions", list) : NULL;
        } else if (strcmp(op, "kill") == 0 && login && *login) {
            answer = fleet_local_kill(f, login);
        }
        fleet_push_reply(f, replykey, answer);
    }
    json_decref(req);
}

/* Reads published requests until the connection fails or fleet_stop shuts it down. */
static void fleet_listen(fleet *f, redisContext *c)
{
    const char *sub[2] = {"SUBSCRIBE", f->k_channel};
    redisReply *r = redisCommandArgv(c, 2, sub, NULL);
    if (!r) {
        rds_count_error(f->rds, RDS_ERR_IO);
        return;
    }
    freeReplyObject(r);
    void *v = NULL;
    while (redisGetReply(c, &v) == REDIS_OK) {
        r = v;
        if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
            r->element[0]->type == REDIS_REPLY_STRING &&
            strcmp(r->element[0]->str, "message") == 0 && r->element[2]->type == REDIS_REPLY_STRING)
            fleet_control(f, r->element[2]->str, r->element[2]->len);
        freeReplyObject(r);
        v = NULL;
    }
}

static void *fleet_ctl_thread(void *arg)
{
    fleet *f = arg;
    for (;;) {
        rds_err kind;
        char err[256] = "";
        redisContext *c = rds_connect(f->rds, 1, &kind, err, sizeof(err));
        pthread_mutex_lock(&f->smu);
        int stop = f->stopping;
        if (!stop)
            f->sub = c;
        pthread_mutex_unlock(&f->smu);
        if (stop) {
            redisFree(c);
            return NULL;
        }
        if (c)
            fleet_listen(f, c);
        else
            rds_count_error(f->rds, kind);
        pthread_mutex_lock(&f->smu);
        f->sub = NULL;
        pthread_mutex_unlock(&f->smu);
        redisFree(c);
        if (fleet_wait_stop(f, FLEET_RECONNECT_MS))
            return NULL;
    }
}

/* ------------------------------------------------------- admin (asking) ---- */

/* An error reply: what, then ": detail" when there is one. */
static json_t *fleet_err(const char *what, const char *detail)
{
    char msg[512];
    snprintf(msg, sizeof(msg), "%s%s%s", what, detail ? ": " : "", detail ? detail : "");
    return json_pack("{s:b,s:s}", "ok", 0, "error", msg);
}

/* The live instances' heartbeat records, or NULL (err set). */
static json_t *fleet_instances(fleet *f, char *err, size_t errsz)
{
    rds_err kind;
    char *rprefix = fleet_key_alloc(f, "instance:", NULL);
    const char *keys[1] = {f->k_instances};
    const char *args[1] = {rprefix};
    redisReply *r =
        rprefix ? rds_eval(f->rds, &f->view_sc, 1, keys, 1, args, &kind, err, errsz) : NULL;
    free(rprefix);
    if (!r)
        return NULL;
    json_t *arr = json_array();
    for (size_t i = 0; arr && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        json_error_t jerr;
        const redisReply *e = r->element[i];
        json_t *rec = e->type == REDIS_REPLY_STRING ? json_loadb(e->str, e->len, 0, &jerr) : NULL;
        if (rec)
            json_array_append_new(arr, rec);
    }
    freeReplyObject(r);
    return arr;
}

/* Publishes req and collects the answers (as many as PUBLISH reached) until wait_ms. */
static json_t *fleet_ask(fleet *f, json_t *req, int64_t wait_ms, char *err, size_t errsz)
{
    unsigned char rnd[8] = {0};
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
        memset(rnd, 0, sizeof(rnd)); /* the counter below still makes it unique here */
    char nonce[192];
    snprintf(nonce, sizeof(nonce), "%s:%u:%02x%02x%02x%02x%02x%02x%02x%02x", f->id,
             atomic_fetch_add(&f->nonce, 1), rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6],
             rnd[7]);
    char *replykey = fleet_key_alloc(f, "reply", nonce);
    if (!replykey || json_object_set_new(req, "reply", json_string(replykey)) != 0) {
        free(replykey);
        snprintf(err, errsz, "out of memory");
        return NULL;
    }
    char *msg = json_dumps(req, JSON_COMPACT);
    rds_err kind;
    const char *pub[3] = {"PUBLISH", f->k_channel, msg ? msg : ""};
    redisReply *r = msg ? rds_command(f->rds, "publish", 3, pub, NULL, &kind, err, errsz) : NULL;
    free(msg);
    int64_t want = r && r->type == REDIS_REPLY_INTEGER ? (int64_t)r->integer : -1;
    freeReplyObject(r);
    json_t *answers = want >= 0 ? json_array() : NULL;
    char blpop_s[24];
    snprintf(blpop_s, sizeof(blpop_s), "%.3f", (double)f->command_ms / 2000.0);
    int64_t deadline = wp_now_ms() + wait_ms;
    while (answers && (int64_t)json_array_size(answers) < want && wp_now_ms() < deadline) {
        const char *pop[3] = {"BLPOP", replykey, blpop_s};
        r = rds_command(f->rds, "collect", 3, pop, NULL, &kind, err, errsz);
        if (!r)
            break;
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
            json_error_t jerr;
            json_t *a = json_loadb(r->element[1]->str, r->element[1]->len, 0, &jerr);
            if (a)
                json_array_append_new(answers, a);
        }
        freeReplyObject(r);
    }
    free(replykey);
    return answers;
}

static int answered(const json_t *answers, const char *id)
{
    size_t i;
    json_t *a;
    json_array_foreach(answers, i, a)
    {
        const char *s = json_string_value(json_object_get(a, "instance"));
        if (s && strcmp(s, id) == 0)
            return 1;
    }
    return 0;
}

/* Marks each live instance with whether it answered. An instance that answered without
 * a live heartbeat record (just started, or its record lapsed while Redis refused its
 * writes) is alive all the same: it is listed too, marked as such. */
static json_t *fleet_mark(json_t *instances, const json_t *answers)
{
    size_t i;
    json_t *rec, *a;
    json_array_foreach(instances, i, rec)
    {
        const char *id = json_string_value(json_object_get(rec, "instance"));
        json_object_set_new(rec, "answered", json_boolean(id && answered(answers, id)));
    }
    json_array_foreach(answers, i, a)
    {
        json_t *id = json_object_get(a, "instance");
        int known = 0;
        size_t k;
        json_array_foreach(instances, k, rec)
        {
            known |= json_equal(json_object_get(rec, "instance"), id);
        }
        if (!known && json_is_string(id))
            json_array_append_new(instances, json_pack("{s:O,s:b,s:b}", "instance", id, "answered",
                                                       1, "no_heartbeat", 1));
    }
    return instances;
}

static json_t *fleet_sessions(fleet *f, json_t *instances, json_t *answers)
{
    json_t *all = json_array();
    size_t i, j;
    json_t *a, *s;
    json_array_foreach(answers, i, a)
    {
        json_t *inst = json_object_get(a, "instance");
        json_array_foreach(json_object_get(a, "sessions"), j, s)
        {
            json_object_set(s, "instance", inst);
            json_array_append(all, s);
        }
    }
    (void)f;
    return json_pack("{s:b,s:o,s:o}", "ok", 1, "instances", fleet_mark(instances, answers),
                     "sessions", all);
}

static json_t *fleet_kill(json_t *instances, json_t *answers)
{
    json_t *killed = json_array();
    json_int_t left = 0;
    size_t i, j;
    json_t *a, *id;
    json_array_foreach(answers, i, a)
    {
        json_t *inst = json_object_get(a, "instance");
        left += json_integer_value(json_object_get(a, "still_open"));
        json_array_foreach(json_object_get(a, "killed"), j, id)
            json_array_append_new(killed, json_pack("{s:O,s:O}", "instance", inst, "session", id));
    }
    return json_pack("{s:b,s:o,s:I,s:o}", "ok", 1, "killed", killed, "still_open", left,
                     "instances", fleet_mark(instances, answers));
}

json_t *fleet_admin(fleet *f, const json_t *req)
{
    if (!f)
        return fleet_err("this Waypoint has no [redis] section: there is no fleet to ask", NULL);
    const char *cmd = json_string_value(json_object_get(req, "cmd"));
    const char *login = json_string_value(json_object_get(req, "login"));
    int kill = cmd && strcmp(cmd, "kill") == 0;
    if (!cmd || (!kill && strcmp(cmd, "sessions") != 0))
        return fleet_err("unknown cmd: use \"sessions\" or \"kill\"", NULL);
    if (kill && (!login || !*login || json_object_get(req, "session")))
        return fleet_err("kill with \"fleet\" needs a non-empty \"login\" (session ids "
                         "are per instance)",
                         NULL);
    char err[256] = "";
    json_t *instances = fleet_instances(f, err, sizeof(err));
    if (!instances)
        return fleet_err("the fleet's Redis is unreachable", err);
    json_t *ask = kill ? json_pack("{s:s,s:s}", "op", "kill", "login", login)
                       : json_pack("{s:s}", "op", "sessions");
    json_t *answers = ask ? fleet_ask(f, ask, kill ? FLEET_KILL_WAIT_MS : FLEET_SESSIONS_WAIT_MS,
                                      err, sizeof(err))
                          : NULL;
    json_decref(ask);
    if (!answers) {
        json_decref(instances);
        return fleet_err("the fleet's Redis is unreachable", err[0] ? err : "out of memory");
    }
    json_t *out = kill ? fleet_kill(instances, answers) : fleet_sessions(f, instances, answers);
    json_decref(answers);
    return out ? out : fleet_err("out of memory", NULL);
}

/* ------------------------------------------------------------ lifecycle ---- */

static char *fleet_listeners_json(const wp_config *cfg)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < cfg->nlisteners; i++) {
        const cfg_listener *l = &cfg->listeners[i];
        char listen[300];
        snprintf(listen, sizeof(listen), "%s%s%s:%d", strchr(l->listen_host, ':') ? "[" : "",
                 l->listen_host, strchr(l->listen_host, ':') ? "]" : "", l->listen_port);
        json_array_append_new(arr, json_pack("{s:s,s:s}", "name", l->name, "listen", listen));
    }
    char *s = arr ? json_dumps(arr, JSON_COMPACT) : NULL;
    json_decref(arr);
    return s;
}

static int fleet_make_id(fleet *f)
{
    if (gethostname(f->host, sizeof(f->host)) != 0)
        snprintf(f->host, sizeof(f->host), "unknown");
    f->host[sizeof(f->host) - 1] = '\0';
    unsigned char rnd[4];
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
        return -1;
    snprintf(f->id, sizeof(f->id), "%s-%ld-%02x%02x%02x%02x", f->host, (long)getpid(), rnd[0],
             rnd[1], rnd[2], rnd[3]);
    return 0;
}

static int fleet_scripts_init(fleet *f)
{
    f->acquire_sc = fleet_acquire_lua;
    f->release_sc = fleet_release_lua;
    f->heartbeat_sc = fleet_heartbeat_lua;
    f->view_sc = fleet_view_lua;
    return rds_script_init(&f->acquire_sc) | rds_script_init(&f->release_sc) |
           rds_script_init(&f->heartbeat_sc) | rds_script_init(&f->view_sc);
}

fleet *fleet_new(const wp_config *cfg, obs *o, wp_error *err)
{
    if (!cfg->redis_address)
        return NULL;
    fleet *f = calloc(1, sizeof(*f));
    if (!f) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "out of memory");
        return NULL;
    }
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&f->rw, &ra);
    pthread_rwlockattr_destroy(&ra);
    pthread_mutex_init(&f->umu, NULL);
    pthread_mutex_init(&f->smu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&f->scv, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&f->up, 1);
    atomic_init(&f->nonce, 0);
    f->o = o;
    f->ttl_ms = cfg->redis_instance_ttl_ms;
    f->interval_ms = cfg->redis_heartbeat_interval_ms;
    f->command_ms = cfg->redis_command_timeout_ms;
    f->started_ms = (int64_t)time(NULL) * 1000;
    rds_settings rs = {.address = cfg->redis_address,
                       .username = cfg->redis_username,
                       .password = cfg->redis_password,
                       .db = cfg->redis_db,
                       .connect_timeout_ms = cfg->redis_connect_timeout_ms,
                       .command_timeout_ms = cfg->redis_command_timeout_ms,
                       .pool_size = cfg->redis_pool_size};
    f->prefix = strdup(cfg->redis_key_prefix);
    f->listeners_json = fleet_listeners_json(cfg);
    if (!f->prefix || !f->listeners_json || fleet_make_id(f) != 0 ||
        !(f->k_instances = fleet_key_alloc(f, "instances", NULL)) ||
        !(f->k_record = fleet_key_alloc(f, "instance", f->id)) ||
        !(f->k_channel = fleet_key_alloc(f, "control", NULL)) || fleet_scripts_init(f) != 0 ||
        !(f->rds = rds_pool_new(&rs, o))) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "cannot set up the [redis] client");
        fleet_free(f);
        return NULL;
    }
    f->refusals =
        metrics_family_add(obs_registry(o), METRICS_COUNTER, "waypoint_fleet_limit_refusals_total",
                           "Connects refused by the fleet-wide per-user limit: "
                           "over_limit, or redis_unavailable (fail closed).",
                           (const char *const[]){"reason", NULL}, NULL, 0);
    for (fleet_verdict v = FLEET_OVER; v <= FLEET_UNAVAILABLE; v++)
        metrics_inc(
            metrics_series_get(f->refusals, (const char *const[]){fleet_verdict_str(v), NULL}), 0);
    return f;
}

wp_status fleet_start(fleet *f, wp_error *err)
{
    if (pthread_create(&f->hb_th, NULL, fleet_hb_thread, f) != 0) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "cannot start the fleet heartbeat thread");
        return WP_ERR_INTERNAL;
    }
    f->hb_started = 1;
    if (pthread_create(&f->ctl_th, NULL, fleet_ctl_thread, f) != 0) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "cannot start the fleet control thread");
        return WP_ERR_INTERNAL;
    }
    f->ctl_started = 1;
    log_kv(WP_LOG_INFO, "fleet_started", "instance", f->id, (char *)NULL);
    return WP_OK;
}

void fleet_stop(fleet *f)
{
    if (!f)
        return;
    pthread_mutex_lock(&f->smu);
    f->stopping = 1;
    if (f->sub) /* wakes the control thread out of its blocking read */
        shutdown(f->sub->fd, SHUT_RDWR);
    pthread_cond_broadcast(&f->scv);
    pthread_mutex_unlock(&f->smu);
    if (f->hb_started)
        pthread_join(f->hb_th, NULL);
    if (f->ctl_started)
        pthread_join(f->ctl_th, NULL);
    f->hb_started = f->ctl_started = 0;
    /* Leave the fleet now rather than after instance_ttl (best effort). */
    rds_err kind;
    char err[256];
    const char *zrem[3] = {"ZREM", f->k_instances, f->id};
    freeReplyObject(rds_command(f->rds, "leave", 3, zrem, NULL, &kind, err, sizeof(err)));
    const char *del[2] = {"DEL", f->k_record};
    freeReplyObject(rds_command(f->rds, "leave", 2, del, NULL, &kind, err, sizeof(err)));
}

void fleet_free(fleet *f)
{
    if (!f)
        return;
    rds_pool_free(f->rds);
    while (f->users) {
        fleet_user *n = f->users->next;
        free(f->users);
        f->users = n;
    }
    free(f->prefix);
    free(f->listeners_json);
    free(f->k_instances);
    free(f->k_record);
    free(f->k_channel);
    pthread_cond_destroy(&f->scv);
    pthread_mutex_destroy(&f->smu);
    pthread_mutex_destroy(&f->umu);
    pthread_rwlock_destroy(&f->rw);
    free(f);
}
