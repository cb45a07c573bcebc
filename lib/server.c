/*
 * server: the process-wide run loop (spec section 11).
 *
 * Design. srv_run() blocks SIGTERM/SIGINT/SIGHUP before it starts any thread, so every
 * thread inherits the mask and only the main thread, waiting in sigwait(), ever sees
 * them: no async signal handlers anywhere. SIGPIPE is ignored (a vanished client must be
 * an EPIPE, never the death of the process).
 *
 * Environments. Everything a session needs that depends on the configuration lives in a
 * reference-counted srv_env: the config snapshot, the LocalAPI client, and per listener
 * the TLS server context and the provisioning context. Workers take a reference when
 * they start and drop it when they end; SIGHUP builds a complete new environment and
 * swaps it in for new connections only, so a reload never disturbs open sessions and a
 * failed reload changes nothing. Provisioning contexts (admin connections) are shared
 * between environments when a listener's backend and admin settings did not change, so a
 * reload does not reconnect admin sessions needlessly.
 *
 * Listeners (sockets, accept threads) are created once. A reload may change a listener's
 * settings but not its address (a restart is needed; logged), and may not remove or add
 * listeners (rejected or logged, respectively).
 *
 * Shutdown. Stop accepting, wait up to drain_timeout for sessions to end on their own,
 * then close the write end of the stop pipe: every relay polls its read end, so all of
 * them wake, tell their client 57P01 and end. A second SIGTERM/SIGINT cuts the drain
 * short. Then exit 0.
 *
 * Cleanup. A background thread runs prov_cleanup for every listener at startup and then
 * every [provisioning] cleanup_interval.
 */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "admin.h"
#include "cancel.h"
#include "io.h"
#include "listener.h"
#include "log.h"
#include "obs.h"
#include "pool.h"
#include "provision.h"
#include "session.h"
#include "tailscale.h"
#include "tls.h"

#define SRV_FORCED_END_WAIT_MS 5000 /* after the drain: time for relays to say goodbye */
#define SRV_DRAIN_SLICE_MS 250      /* drain: how often to look for a second signal */

/* A provisioning context shared by the environments whose settings match it. */
typedef struct srv_prov {
    atomic_int refs;
    prov_ctx *ctx;
    char *fingerprint; /* the settings it was made from (holds a secret: never logged) */
} srv_prov;

typedef struct srv_env {
    atomic_int refs;
    sess_env env;
    srv_prov **provs; /* one per listener, parallel to env.listeners */
} srv_env;

typedef struct srv {
    const char *path;
    pthread_mutex_t mu; /* guards cur: workers read it while SIGHUP replaces it */
    srv_env *cur;

    lsn_listener **lsns;
    size_t nlsns;

    cancel_map *cancel;
    sess_users *users;
    fleet *fleet;        /* [redis] shared limits and fleet view; NULL without it */
    obs *obs;            /* metrics registry, session registry, audit file */
    admin_server *admin; /* [admin] socket; NULL when not configured */
    pool *pool;          /* parked backend sessions, shared by all environments */
    adm_table *admit;    /* per-peer unstarted connections, process-wide */
    uint64_t generation; /* of the last environment built (main thread only) */
    int stop_pipe[2];    /* closing [1] makes [0] readable for every relay */

    pthread_t cleaner;
    int cleaner_started;
    pthread_mutex_t cmu; /* guards stopping, with ccv to wake the cleaner */
    pthread_cond_t ccv;
    int stopping;
} srv;

/* ------------------------------------------------------- environments ---- */

static void srv_prov_unref(srv_prov *p)
{
    if (!p || atomic_fetch_sub(&p->refs, 1) != 1)
        return;
    prov_destroy(p->ctx);
    free(p->fingerprint);
    free(p);
}

static void srv_env_unref(srv_env *e)
{
    if (!e || atomic_fetch_sub(&e->refs, 1) != 1)
        return;
    size_t n = e->env.cfg ? e->env.cfg->nlisteners : 0;
    for (size_t i = 0; e->env.listeners && i < n; i++)
        tls_server_free(e->env.listeners[i].tls);
    for (size_t i = 0; e->provs && i < n; i++)
        srv_prov_unref(e->provs[i]);
    free(e->env.listeners);
    free(e->provs);
    ts_client_free(e->env.ts);
    if (e->env.cfg)
        cfg_unref(e->env.cfg);
    free(e);
}

static srv_env *srv_acquire(srv *s)
{
    pthread_mutex_lock(&s->mu);
    srv_env *e = s->cur;
    atomic_fetch_add(&e->refs, 1);
    pthread_mutex_unlock(&s->mu);
    return e;
}

static void prov_settings_from(const wp_config *cfg, const cfg_listener *l, prov_settings *ps)
{
    *ps = (prov_settings){
        .host = l->backend_host,
        .port = l->backend_port,
        .admin_user = l->admin_user,
        .admin_password = l->admin_password,
        .admin_database = l->admin_database,
        .backend_tls = l->backend_tls,
        .backend_ca_file = l->backend_ca_file,
        .user_prefix = l->user_prefix,
        .user_ttl_ms = l->user_ttl_ms,
        .allow_raw_sql = cfg_listener_allow_raw_sql(cfg, l),
        .listener_name = l->name,
        .admin_idle_ms = cfg->admin_idle_timeout_ms,
    };
}

static char *prov_fingerprint(const prov_settings *ps)
{
    char *fp = NULL;
    int n = asprintf(
        &fp, "%s\x1f%s\x1f%d\x1f%s\x1f%s\x1f%s\x1f%d\x1f%s\x1f%s\x1f%lld\x1f%d\x1f%lld",
        ps->listener_name, ps->host, ps->port, ps->admin_user,
        ps->admin_password ? ps->admin_password : "", ps->admin_database, (int)ps->backend_tls,
        ps->backend_ca_file ? ps->backend_ca_file : "", ps->user_prefix, (long long)ps->user_ttl_ms,
        (int)ps->allow_raw_sql, (long long)ps->admin_idle_ms);
    return n < 0 ? NULL : fp;
}

/* The provisioning context for listener l: the old environment's when the settings are
 * the same, else a new one (which logs in as admin now, and fails if it cannot). */
static wp_status srv_prov_get(const wp_config *cfg, const cfg_listener *l, srv_env *old,
                              srv_prov **out, wp_error *err)
{
    prov_settings ps;
    prov_settings_from(cfg, l, &ps);
    char *fp = prov_fingerprint(&ps);
    if (!fp)
        return WP_ERR_NOMEM;
    for (size_t i = 0; old && i < old->env.cfg->nlisteners; i++) {
        if (strcmp(old->provs[i]->fingerprint, fp) == 0) {
            free(fp);
            atomic_fetch_add(&old->provs[i]->refs, 1);
            *out = old->provs[i];
            return WP_OK;
        }
    }
    srv_prov *p = calloc(1, sizeof(*p));
    wp_status st = p ? prov_create(&ps, &p->ctx, err) : WP_ERR_NOMEM;
    if (st != WP_OK) {
        free(p);
        free(fp);
        return st;
    }
    atomic_init(&p->refs, 1);
    p->fingerprint = fp;
    *out = p;
    return WP_OK;
}

/* Builds the objects for one listener of a new environment; logs what failed. */
static int srv_env_listener(srv_env *e, srv_env *old, size_t i)
{
    const wp_config *cfg = e->env.cfg;
    const cfg_listener *l = &cfg->listeners[i];
    wp_error err;
    wp_error_clear(&err);
    e->env.listeners[i].cfg = l;
    if (srv_prov_get(cfg, l, old, &e->provs[i], &err) != WP_OK) {
        log_kv(WP_LOG_ERROR, "admin_login_failed", "listener", l->name, "backend_host",
               l->backend_host, "admin_user", l->admin_user, "error", err.message, "detail",
               err.detail, (char *)NULL);
        return 0;
    }
    e->env.listeners[i].prov = e->provs[i]->ctx;
    if (l->tls_mode == CFG_TLS_OFF)
        return 1;
    const ts_client *ts = l->use_tailscale_tls ? e->env.ts : NULL;
    if (tls_server_new(l, ts, &e->env.listeners[i].tls, &err) != WP_OK) {
        log_kv(WP_LOG_ERROR, "tls_setup_failed", "listener", l->name, "error", err.message,
               (char *)NULL);
        return 0;
    }
    return 1;
}

/* A complete environment for cfg (takes over the caller's reference), or NULL. */
static srv_env *srv_env_build(srv *s, wp_config *cfg, srv_env *old)
{
    srv_env *e = calloc(1, sizeof(*e));
    if (!e) {
        cfg_unref(cfg);
        return NULL;
    }
    atomic_init(&e->refs, 1);
    e->env.cfg = cfg;
    e->env.cancel = s->cancel;
    e->env.users = s->users;
    e->env.fleet = s->fleet;
    e->env.obs = s->obs;
    e->env.pool = s->pool;
    e->env.admit = s->admit;
    e->env.generation = ++s->generation;
    e->env.stop_fd = s->stop_pipe[0];
    e->env.ts = ts_client_new(cfg->ts_socket, cfg->ts_capability, cfg->whois_timeout_ms);
    e->env.listeners = calloc(cfg->nlisteners, sizeof(*e->env.listeners));
    e->provs = calloc(cfg->nlisteners, sizeof(*e->provs));
    int ok = e->env.ts && e->env.listeners && e->provs;
    for (size_t i = 0; ok && i < cfg->nlisteners; i++)
        ok = srv_env_listener(e, old, i);
    if (!ok) {
        srv_env_unref(e);
        return NULL;
    }
    return e;
}

/* ------------------------------------------------------------ workers ---- */

static void srv_serve(void *arg, lsn_listener *l, int fd, int over_cap)
{
    srv *s = arg;
    srv_env *e = srv_acquire(s);
    const wp_config *cfg = e->env.cfg;
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        if (strcmp(cfg->listeners[i].name, lsn_name(l)) == 0) {
            sess_run(&e->env, &e->env.listeners[i], fd, over_cap);
            srv_env_unref(e);
            return;
        }
    }
    close(fd); /* unreachable: reloads never drop a running listener */
    srv_env_unref(e);
}

/* ------------------------------------------------------------ cleanup ---- */

static void srv_cleanup_pass(srv *s)
{
    srv_env *e = srv_acquire(s);
    for (size_t i = 0; i < e->env.cfg->nlisteners; i++) {
        int dropped = 0;
        wp_error err;
        wp_error_clear(&err);
        wp_status st = prov_cleanup(e->env.listeners[i].prov, &dropped, &err);
        char n[16];
        snprintf(n, sizeof(n), "%d", dropped);
        if (st != WP_OK)
            log_kv(WP_LOG_WARN, "cleanup_failed", "listener", e->env.cfg->listeners[i].name,
                   "error", err.message, (char *)NULL);
        else if (dropped > 0)
            log_kv(WP_LOG_INFO, "cleanup", "listener", e->env.cfg->listeners[i].name, "dropped", n,
                   (char *)NULL);
        if (st == WP_OK && dropped > 0)
            obs_roles(s->obs, e->env.cfg->listeners[i].name, "dropped", (uint64_t)dropped);
    }
    srv_env_unref(e);
}

static void *srv_cleaner(void *arg)
{
    srv *s = arg;
    pthread_mutex_lock(&s->cmu);
    while (!s->stopping) {
        pthread_mutex_unlock(&s->cmu);
        srv_cleanup_pass(s);
        srv_env *e = srv_acquire(s);
        int64_t every = e->env.cfg->cleanup_interval_ms;
        srv_env_unref(e);
        pthread_mutex_lock(&s->cmu);
        if (s->stopping)
            break;
        if (every <= 0) { /* periodic pass disabled: only the startup pass */
            while (!s->stopping)
                pthread_cond_wait(&s->ccv, &s->cmu);
            break;
        }
        struct timespec ts;
        wp_timespec_after(CLOCK_REALTIME, every, &ts);
        while (!s->stopping && pthread_cond_timedwait(&s->ccv, &s->cmu, &ts) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&s->cmu);
    return NULL;
}

static void srv_stop_cleaner(srv *s)
{
    if (!s->cleaner_started)
        return;
    pthread_mutex_lock(&s->cmu);
    s->stopping = 1;
    pthread_cond_broadcast(&s->ccv);
    pthread_mutex_unlock(&s->cmu);
    pthread_join(s->cleaner, NULL);
    s->cleaner_started = 0;
}

/* ------------------------------------------------------------- reload ---- */

static void srv_apply_log_level(const wp_config *cfg)
{
    int lvl = cfg->log_level ? log_level_parse(cfg->log_level) : -1;
    if (lvl >= 0)
        log_set_level((wp_log_level)lvl);
}

static const cfg_listener *find_listener(const wp_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->nlisteners; i++)
        if (strcmp(cfg->listeners[i].name, name) == 0)
            return &cfg->listeners[i];
    return NULL;
}

/* Listener sockets are fixed for the life of the process: check the new file against
 * them. Returns 0 (and logs) when the reload must be rejected. */
static int srv_reload_compatible(srv *s, const wp_config *cfg)
{
    for (size_t i = 0; i < s->nlsns; i++) {
        const cfg_listener *l = find_listener(cfg, lsn_name(s->lsns[i]));
        if (!l) {
            log_kv(WP_LOG_ERROR, "reload_rejected", "reason",
                   "a running listener was removed; restart Waypoint to remove it", "listener",
                   lsn_name(s->lsns[i]), (char *)NULL);
            return 0;
        }
        char addr[300];
        snprintf(addr, sizeof(addr), "%s:%d", l->listen_host, l->listen_port);
        if (strcmp(addr, lsn_address(s->lsns[i])) != 0)
            log_kv(WP_LOG_WARN, "reload_restart_needed", "listener", l->name, "listen", addr,
                   "still_listening_on", lsn_address(s->lsns[i]), (char *)NULL);
    }
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        int running = 0;
        for (size_t k = 0; k < s->nlsns; k++)
            running |= strcmp(lsn_name(s->lsns[k]), cfg->listeners[i].name) == 0;
        if (!running)
            log_kv(WP_LOG_WARN, "reload_restart_needed", "listener", cfg->listeners[i].name,
                   "reason", "new listeners start listening after a restart", (char *)NULL);
    }
    return 1;
}

/* ------------------------------------------------------- observability ---- */

static int srv_same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* The metrics endpoint and the admin socket are bound once, like listeners. */
static int srv_obs_reload_compatible(srv *s, const wp_config *cfg)
{
    const wp_config *cur = s->cur->env.cfg;
    if (cur->metrics_listen_port != cfg->metrics_listen_port ||
        !srv_same_str(cur->metrics_listen_host, cfg->metrics_listen_host))
        log_kv(WP_LOG_WARN, "reload_restart_needed", "what", "[metrics] listen", (char *)NULL);
    if (!srv_same_str(cur->admin_socket, cfg->admin_socket))
        log_kv(WP_LOG_WARN, "reload_restart_needed", "what", "[admin] socket", (char *)NULL);
    return 1;
}

/* Admin-connections gauge: asked at scrape time, from the current environment. */
typedef struct srv_admin_walk {
    obs *o;
    obs_emit_fn emit;
    const char *listener;
} srv_admin_walk;

static void srv_admin_one(void *arg, const char *db, int open, int idle)
{
    srv_admin_walk *w = arg;
    w->emit(w->o, w->listener, db, open, idle);
}

static void srv_admin_source(void *arg, obs *o, obs_emit_fn emit)
{
    srv *s = arg;
    srv_env *e = srv_acquire(s);
    for (size_t i = 0; i < e->env.cfg->nlisteners; i++) {
        srv_admin_walk w = {o, emit, e->env.cfg->listeners[i].name};
        prov_admin_conns(e->env.listeners[i].prov, srv_admin_one, &w);
    }
    srv_env_unref(e);
}

/* Metrics endpoint, admin socket, audit file: after the listeners are bound. */
static int srv_start_obs(srv *s)
{
    const wp_config *cfg = s->cur->env.cfg;
    wp_error err;
    wp_error_clear(&err);
    obs_set_admin_source(s->obs, srv_admin_source, s);
    for (size_t i = 0; i < cfg->nlisteners; i++) /* series exist (at 0) from the start */
        obs_listener_init(s->obs, cfg->listeners[i].name);
    if (cfg->audit_file && obs_audit_set_path(s->obs, cfg->audit_file) != 0)
        return 0;
    if (cfg->metrics_listen_port) {
        if (obs_http_start(s->obs, cfg->metrics_listen_host, cfg->metrics_listen_port, &err) !=
            WP_OK) {
            log_kv(WP_LOG_ERROR, "metrics_listen_failed", "error", err.message, (char *)NULL);
            return 0;
        }
        char port[16];
        snprintf(port, sizeof(port), "%d", cfg->metrics_listen_port);
        log_kv(WP_LOG_INFO, "metrics_listening", "address", cfg->metrics_listen_host, "port", port,
               "path", "/metrics", (char *)NULL);
    }
    if (cfg->admin_socket) {
        if (admin_start(cfg->admin_socket, s->obs, &s->admin, &err) != WP_OK) {
            log_kv(WP_LOG_ERROR, "admin_socket_failed", "error", err.message, (char *)NULL);
            return 0;
        }
        admin_set_fleet(s->admin, s->fleet);
        log_kv(WP_LOG_INFO, "admin_listening", "socket", cfg->admin_socket, (char *)NULL);
    }
    return 1;
}

static void srv_reload(srv *s)
{
    wp_config *cfg = cfg_load_logged(s->path);
    if (!cfg) {
        log_kv(WP_LOG_ERROR, "reload_rejected", "reason",
               "invalid configuration; keeping the old one", (char *)NULL);
        obs_reloaded(s->obs, 0);
        return;
    }
    if (!srv_reload_compatible(s, cfg) || !srv_obs_reload_compatible(s, cfg)) {
        cfg_unref(cfg);
        obs_reloaded(s->obs, 0);
        return;
    }
    srv_env *old = srv_acquire(s);
    srv_env *e = srv_env_build(s, cfg, old);
    srv_env_unref(old);
    if (!e) {
        log_kv(WP_LOG_ERROR, "reload_rejected", "reason",
               "could not set up the new configuration; keeping the old one", (char *)NULL);
        obs_reloaded(s->obs, 0);
        return;
    }
    for (size_t i = 0; i < s->nlsns; i++)
        lsn_set_max_connections(s->lsns[i],
                                find_listener(e->env.cfg, lsn_name(s->lsns[i]))->max_connections);
    srv_apply_log_level(e->env.cfg);
    pthread_mutex_lock(&s->mu);
    old = s->cur;
    s->cur = e;
    pthread_mutex_unlock(&s->mu);
    if (!srv_same_str(old->env.cfg->audit_file, e->env.cfg->audit_file))
        (void)obs_audit_set_path(s->obs, e->env.cfg->audit_file);
    srv_env_unref(old);
    obs_reloaded(s->obs, 1);
    log_kv(WP_LOG_INFO, "reloaded", "config", s->path, (char *)NULL);
}

/* ------------------------------------------------------ start and stop ---- */

static int srv_open_listeners(srv *s)
{
    const wp_config *cfg = s->cur->env.cfg;
    s->lsns = calloc(cfg->nlisteners ? cfg->nlisteners : 1, sizeof(*s->lsns));
    if (!s->lsns)
        return 0;
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const cfg_listener *l = &cfg->listeners[i];
        wp_error err;
        wp_error_clear(&err);
        if (lsn_open(l->name, l->listen_host, l->listen_port, l->max_connections, srv_serve, s,
                     &s->lsns[i], &err) != WP_OK) {
            log_kv(WP_LOG_ERROR, "listen_failed", "listener", l->name, "error", err.message,
                   (char *)NULL);
            return 0;
        }
        s->nlsns++;
    }
    return 1;
}

static int srv_start_threads(srv *s)
{
    if (pthread_create(&s->cleaner, NULL, srv_cleaner, s) != 0)
        return 0;
    s->cleaner_started = 1;
    wp_error err;
    wp_error_clear(&err);
    if (s->fleet && fleet_start(s->fleet, &err) != WP_OK) {
        log_kv(WP_LOG_ERROR, "fleet_start_failed", "error", err.message, (char *)NULL);
        return 0;
    }
    for (size_t i = 0; i < s->nlsns; i++) {
        if (lsn_start(s->lsns[i]) != WP_OK)
            return 0;
        char port[16];
        snprintf(port, sizeof(port), "%d", lsn_port(s->lsns[i]));
        log_kv(WP_LOG_INFO, "listening", "listener", lsn_name(s->lsns[i]), "address",
               lsn_address(s->lsns[i]), "port", port, (char *)NULL);
    }
    return 1;
}

/* Waits for open sessions; returns how many are still live at the deadline (or when a
 * second signal asks to stop at once). */
static size_t srv_drain(srv *s, const sigset_t *set, int64_t deadline)
{
    for (;;) {
        size_t live = 0;
        for (size_t i = 0; i < s->nlsns; i++)
            live += lsn_wait_idle(s->lsns[i], wp_now_ms());
        int64_t left = deadline - wp_now_ms();
        if (live == 0 || left <= 0)
            return live;
        int64_t slice = left < SRV_DRAIN_SLICE_MS ? left : SRV_DRAIN_SLICE_MS;
        struct timespec ts = {.tv_sec = slice / 1000, .tv_nsec = (slice % 1000) * 1000000L};
        int sig = sigtimedwait(set, NULL, &ts);
        if (sig == SIGTERM || sig == SIGINT) {
            log_kv(WP_LOG_WARN, "drain_cut_short", "signal", sig == SIGTERM ? "TERM" : "INT",
                   (char *)NULL);
            return live;
        }
    }
}

static void srv_shutdown(srv *s, const sigset_t *set)
{
    for (size_t i = 0; i < s->nlsns; i++)
        lsn_stop(s->lsns[i]);
    pool_shutdown(s->pool); /* parked sessions end now; nothing parks from here on */
    int64_t drain_ms = s->cur->env.cfg->drain_timeout_ms;
    char ms[24];
    snprintf(ms, sizeof(ms), "%lld", (long long)drain_ms);
    log_kv(WP_LOG_INFO, "draining", "drain_timeout_ms", ms, (char *)NULL);
    size_t live = srv_drain(s, set, wp_now_ms() + drain_ms);
    if (live > 0) {
        char n[24];
        snprintf(n, sizeof(n), "%zu", live);
        log_kv(WP_LOG_WARN, "drain_timeout", "sessions_ended", n, (char *)NULL);
        close(s->stop_pipe[1]); /* wakes every relay: they send 57P01 and end */
        s->stop_pipe[1] = -1;
        int64_t deadline = wp_now_ms() + SRV_FORCED_END_WAIT_MS;
        live = 0;
        for (size_t i = 0; i < s->nlsns; i++)
            live += lsn_wait_idle(s->lsns[i], deadline);
    }
    srv_stop_cleaner(s);
    admin_stop(s->admin);
    s->admin = NULL;
    fleet_stop(s->fleet); /* after the drain: the sessions have released their counts */
    obs_http_stop(s->obs);
    if (live == 0) { /* nothing uses the shared objects any more: free them */
        for (size_t i = 0; i < s->nlsns; i++)
            lsn_free(s->lsns[i]);
        srv_env_unref(s->cur);
        cancel_map_free(s->cancel);
        sess_users_free(s->users);
        fleet_free(s->fleet);
        obs_set_admin_source(s->obs, NULL, NULL);
        obs_free(s->obs);
        pool_free(s->pool);
        adm_free(s->admit);
    }
    log_kv(WP_LOG_INFO, "stopped", (char *)NULL);
}

static int srv_init(srv *s, const char *path, wp_config *cfg)
{
    memset(s, 0, sizeof(*s));
    s->path = path;
    s->stop_pipe[0] = s->stop_pipe[1] = -1;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->cmu, NULL);
    pthread_cond_init(&s->ccv, NULL);
    s->cancel = cancel_map_new();
    s->users = sess_users_new();
    s->obs = obs_new();
    s->pool = pool_new();
    s->admit = adm_new();
    if (!s->cancel || !s->users || !s->obs || !s->pool || !s->admit ||
        pipe2(s->stop_pipe, O_CLOEXEC) != 0) {
        cfg_unref(cfg);
        return 0;
    }
    wp_error err;
    wp_error_clear(&err);
    s->fleet = fleet_new(cfg, s->obs, &err);
    if (cfg->redis_address && !s->fleet) {
        log_kv(WP_LOG_ERROR, "fleet_failed", "error", err.message, (char *)NULL);
        cfg_unref(cfg);
        return 0;
    }
    s->cur = srv_env_build(s, cfg, NULL);
    return s->cur != NULL;
}

int srv_run(const char *config_path, wp_config *cfg)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* before any thread: all inherit it */
    signal(SIGPIPE, SIG_IGN);
    srv_apply_log_level(cfg);

    static srv s; /* lives until exit: detached workers may outlast a forced drain */
    if (ts_global_init() != WP_OK) {
        log_kv(WP_LOG_ERROR, "startup_failed", "reason", "libcurl initialisation failed",
               (char *)NULL);
        cfg_unref(cfg);
        return 1;
    }
    if (!srv_init(&s, config_path, cfg) || !srv_open_listeners(&s) || !srv_start_obs(&s) ||
        !srv_start_threads(&s)) {
        log_kv(WP_LOG_ERROR, "startup_failed", "reason", "see the errors above", (char *)NULL);
        return 1; /* the process exits: threads and sockets go with it */
    }
    log_kv(WP_LOG_INFO, "ready", "version", WP_VERSION, "config", config_path, (char *)NULL);

    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            log_kv(WP_LOG_INFO, "reload", "signal", "HUP", (char *)NULL);
            obs_audit_reopen(s.obs); /* logrotate: before the reload, whatever its outcome */
            srv_reload(&s);
            /* grants, limits or the backend may have changed: parked sessions go */
            pool_drop(s.pool, POOL_DROP_ALL, NULL, NULL, "reload");
            continue;
        }
        log_kv(WP_LOG_INFO, "shutdown", "signal", sig == SIGTERM ? "TERM" : "INT", (char *)NULL);
        break;
    }
    srv_shutdown(&s, &set);
    ts_global_cleanup();
    return 0;
}
