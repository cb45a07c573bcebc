/*
 * session: the lifecycle of one client connection, in the order of spec section 1.
 *
 * Design. sess_run() reads as the list of steps (see docs/architecture.md); each step is
 * a function that returns 1 to go on or 0 when the connection is over, in which case it
 * has already told the client why. All per-connection state lives in one `sess` on the
 * worker's stack; shared objects (config snapshot, TLS and provisioning contexts, the
 * cancel map) are reached through the sess_env the server handed in.
 *
 * Startup deadline. One deadline ([server] startup_timeout) covers everything from the
 * first byte to the backend's first ReadyForQuery, so a silent or slow client, a slow
 * tailscaled and a slow backend are all bounded by the same budget.
 *
 * Errors. Every refusal goes through sess_refuse(): it sends one FATAL ErrorResponse
 * through the client stream in whatever state it is in (plain after 'N', inside TLS
 * after 'S') and logs one `conn_refused` line. A connection that was relayed logs one
 * `conn_end` line instead. Client-facing messages come from wp_error.message/hint only;
 * wp_error.detail may carry log-only reasons (tailscaled's, provisioning's) and is never
 * sent for errors Waypoint makes up itself.
 *
 * Protocol version. A client asking for 3.2 or for _pq_ options is answered with
 * NegotiateProtocolVersion (newest minor 0, the options listed as unsupported) and the
 * session continues at 3.0 on both legs; the backend is always spoken to at 3.0. That
 * is the smallest correct behaviour: libpq 18 accepts it and carries on.
 */
#include "session.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "admin.h"
#include "grant.h"
#include "identity.h"
#include "log.h"
#include "obs.h"
#include "pgwire.h"
#include "prov_kill.h"
#include "relay.h"
#include "upstream.h"

#define SESS_FINISH_WAIT_MS 2000 /* time to write a final ErrorResponse at the end */
#define SESS_CANCEL_WAIT_MS 5000 /* time to deliver a CancelRequest to the backend */
#define SESS_STOP_WAIT_MS 5000   /* ending by authority: time for the backend to be gone */
#define SESS_STOP_CANCEL_MS 1000 /* of which at most this for the CancelRequest */
#define SESS_STARTUP_ROUNDS 4    /* SSLRequest, GSSENCRequest, ... before StartupMessage */
#define SESS_FLUSH_AT (64 * 1024)
#define SESS_WHOIS_FRESH_MS 1000  /* how long the WhoIs made at accept may stand in */
#define SESS_RESET_WAIT_MS 2000   /* time for DISCARD ALL before parking a backend session */
#define SESS_STOP_TRIES 3         /* attempts to have a backend confirmed gone */
#define SESS_LINGER_MS 2000       /* after a FATAL: reading what the client still sends */
#define SESS_LINGER_MAX (1 << 20) /* ... and at most this much of it */

typedef struct sess {
    const sess_env *env;
    const sess_listener *lsn;
    const cfg_listener *lc;
    int fd;
    wp_io cio; /* client stream: plain, or TLS once negotiated */
    int tls;
    int over_cap;
    char peer[80];
    adm_verdict adm; /* what this connection holds in env->admit */
    char adm_key[96];
    int early; /* the WhoIs at accept ran: its result is below */
    wp_status early_st;
    id_identity *early_id; /* handed to the step that uses it */
    int64_t early_ms;      /* when that WhoIs was answered */
    wp_error early_err;
    int64_t start_ms, deadline_ms;

    pgw_startup su;
    const char *database;
    char *options; /* options with Waypoint's switches removed (NULL: none) */
    grant_preset downgrade;
    id_identity *id;
    grant_effective *grant;
    int user_counted;
    fleet_acq facq;   /* [redis]: the acquire sent at authorization ... */
    int facq_pending; /* ... whose verdict sess_fleet_gate has not read yet */
    char role[ID_ROLE_MAX + 1];
    up_conn up;
    int up_open;
    int keyed;                            /* the client was given a cancel key */
    unsigned char wp_key[CANCEL_KEY_LEN]; /* its secret (the pid is bk.backend_pid) */
    cancel_target bk;                     /* the backend's own key (pid 0: none yet) */
    pool_session ps;                      /* the backend session's reuse state (pool.c) */
    pool_key pk;                          /* its pool key; pk.owner NULL when reuse is off */
    int reused;
    int reset_failed;     /* DISCARD ALL before parking did not come back */
    int64_t confirmed_ms; /* last time tailscaled confirmed the caller (identify, ticks) */
    const char *tick_end; /* why revalidation ended the session: revoked, narrowed,
                             unconfirmed (the outcome word) */
    int told;             /* an ErrorResponse was sent: close with sess_linger() */

    pgw_buf out; /* bytes for the client, flushed in batches */
    pgw_buf msg;
    relay_result rr;

    /* observability (obs.c, sessreg.c): see the "observability" section below */
    const char *stage;  /* step that refused, as a bounded reason word */
    int64_t start_wall; /* epoch ms of the accept, for the audit trail and listing */
    sessreg_entry *reg; /* live-session entry while relayed (kill, `sessions`) */
} sess;

/* ---------------------------------------------------------------- helpers ---- */

static const char *sess_login(const sess *s)
{
    return s->id ? s->id->login_name : "";
}

static const char *sess_node(const sess *s)
{
    return s->id ? s->id->node_name : "";
}

/* ------------------------------------------------------- observability ---- */

static void sess_obs_fill(const sess *s, obs_conn *c, char *presets, size_t psz)
{
    obs_presets_str(s->grant, presets, psz);
    *c = (obs_conn){.listener = s->lc->name,
                    .peer = s->peer,
                    .login = s->id ? s->id->login_name : NULL,
                    .node = s->id ? s->id->node_name : NULL,
                    .tags = s->id ? s->id->tags : NULL,
                    .ntags = s->id ? s->id->ntags : 0,
                    .database = s->database,
                    .role = s->role[0] ? s->role : NULL,
                    .presets = s->grant ? presets : NULL,
                    .rules = s->grant ? s->grant->matched : NULL,
                    .tls = s->tls,
                    .session_id = sessreg_id(s->reg),
                    .duration_ms = wp_now_ms() - s->start_ms};
}

static void sess_obs_refused(const sess *s, const wp_error *e)
{
    char presets[256];
    obs_conn c;
    sess_obs_fill(s, &c, presets, sizeof(presets));
    c.event = "conn_refused";
    c.outcome = "refused";
    c.sqlstate = e ? e->sqlstate : "";
    c.message = e ? e->message : "";
    c.reason = obs_refusal_reason(s->stage, c.sqlstate);
    obs_conn_refused(s->env->obs, &c);
}

/* Startup is done: the session is listed (and can be killed) until sess_end. */
static void sess_obs_accepted(sess *s)
{
    char presets[256];
    obs_conn c;
    obs_observe(s->env->obs, OBS_H_CONNECT, s->lc->name, NULL, (wp_now_ms() - s->start_ms) * 1000);
    obs_presets_str(s->grant, presets, sizeof(presets));
    sessreg_info info = {.listener = s->lc->name,
                         .peer = s->peer,
                         .login = sess_login(s),
                         .node = sess_node(s),
                         .role = s->role,
                         .database = s->database,
                         .presets = presets,
                         .tls = s->tls,
                         .since_ms = s->start_wall};
    s->reg = sessreg_add(obs_sessions(s->env->obs), &info);
    sess_obs_fill(s, &c, presets, sizeof(presets));
    c.event = "conn_accepted";
    c.outcome = "accepted";
    obs_conn_accepted(s->env->obs, &c);
}

static void sess_obs_ended(const sess *s, const char *outcome)
{
    char presets[256];
    obs_conn c;
    sess_obs_fill(s, &c, presets, sizeof(presets));
    c.event = "conn_end";
    c.outcome = outcome;
    c.bytes_in = s->rr.bytes_in;
    c.bytes_out = s->rr.bytes_out;
    obs_conn_ended(s->env->obs, &c);
}

/* `waypoint kill`: the relay has had the backend stopped (sess_stop_backend, as for a
 * revocation) before this message is sent; the role is not locked out. */
static void sess_kill_message(const sess *s, wp_error *e)
{
    char msg[256];
    sessreg_kill_message(obs_sessions(s->env->obs), s->reg, msg, sizeof(msg));
    wp_error_set(e, ADMIN_KILL_SQLSTATE, "%s", msg[0] ? msg : ADMIN_KILL_MESSAGE);
}

static wp_status sess_flush(sess *s)
{
    if (s->out.len == 0)
        return WP_OK;
    int64_t deadline = s->deadline_ms ? s->deadline_ms : wp_now_ms() + SESS_FINISH_WAIT_MS;
    wp_status st = io_write_all(&s->cio, s->out.data, s->out.len, deadline);
    pgw_buf_reset(&s->out);
    return st;
}

/* The one place a refusal is logged. */
static void sess_log_refusal(sess *s, const wp_error *e, const char *reason)
{
    char dur[24];
    snprintf(dur, sizeof(dur), "%lld", (long long)(wp_now_ms() - s->start_ms));
    log_kv(WP_LOG_INFO, "conn_refused", "listener", s->lc->name, "peer", s->peer, "user",
           sess_login(s), "node", sess_node(s), "database", s->database ? s->database : "",
           "sqlstate", e ? e->sqlstate : "", "message", e ? e->message : "", "reason",
           reason && *reason ? reason : (e ? e->message : ""), "duration_ms", dur, (char *)NULL);
    sess_obs_refused(s, e);
}

/* The one place a refusal is sent: one FATAL ErrorResponse (e may be NULL when the
 * client cannot be answered any more, e.g. it vanished or TLS failed), one log line. */
static int sess_refuse(sess *s, const wp_error *e, const char *reason)
{
    if (e) {
        wp_error sent = *e;
        if (!sent.sqlstate[0])
            snprintf(sent.sqlstate, sizeof(sent.sqlstate), "%s", WP_SQLSTATE_INTERNAL);
        if (!sent.message[0])
            snprintf(sent.message, sizeof(sent.message), "connection refused");
        if (pgw_build_error(&s->out, &sent) == WP_OK) {
            s->told = 1;
            (void)sess_flush(s);
        }
        sess_log_refusal(s, &sent, reason);
    } else {
        sess_log_refusal(s, NULL, reason);
    }
    return 0;
}

/* Refusal with an error Waypoint made up: err.detail is log-only, so it is logged as
 * the reason and stripped from what the client sees. */
static int sess_refuse_private(sess *s, wp_error *e)
{
    char reason[sizeof(e->detail)];
    snprintf(reason, sizeof(reason), "%s", e->detail);
    e->detail[0] = '\0';
    return sess_refuse(s, e, reason);
}

/* Refusal on the backend side (connect, backend TLS, provisioning, upstream login). The
 * modules say what kind of failure it was in err.message and keep the backend's own
 * words, its address and the admin role in err.detail (log-only); the client learns
 * the listener and database it asked for and that kind, nothing about the backend.
 * A missing database keeps PostgreSQL's own 3D000 wording, as a direct login would. */
static int sess_refuse_backend(sess *s, wp_error *e)
{
    if (strcmp(e->sqlstate, WP_SQLSTATE_UNDEFINED_DB) != 0) {
        char kind[sizeof(e->message)];
        snprintf(kind, sizeof(kind), "%s", e->message[0] ? e->message : "backend failure");
        snprintf(e->message, sizeof(e->message),
                 "cannot connect to database \"%.200s\" through listener \"%.64s\": %.200s",
                 s->database ? s->database : "", s->lc->name, kind);
        if (e->detail[0] && !e->hint[0])
            snprintf(e->hint, sizeof(e->hint), "%s",
                     "The reason is in the Waypoint log; ask its operator.");
    }
    return sess_refuse_private(s, e);
}

static int sess_refuse_msg(sess *s, const char *sqlstate, const char *reason, const char *msg)
{
    wp_error e;
    wp_error_clear(&e);
    wp_error_set(&e, sqlstate, "%s", msg);
    return sess_refuse(s, &e, reason);
}

int sess_format_peer(const void *sa, size_t len, char *out, size_t outsz)
{
    const struct sockaddr *a = sa;
    char ip[INET6_ADDRSTRLEN];
    if (a->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *v4 = sa;
        inet_ntop(AF_INET, &v4->sin_addr, ip, sizeof(ip));
        return snprintf(out, outsz, "%s:%u", ip, ntohs(v4->sin_port)) >= (int)outsz;
    }
    if (a->sa_family != AF_INET6 || len < sizeof(struct sockaddr_in6))
        return -1;
    const struct sockaddr_in6 *v6 = sa;
    if (IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr)) {
        inet_ntop(AF_INET, &v6->sin6_addr.s6_addr[12], ip, sizeof(ip));
        return snprintf(out, outsz, "%s:%u", ip, ntohs(v6->sin6_port)) >= (int)outsz;
    }
    inet_ntop(AF_INET6, &v6->sin6_addr, ip, sizeof(ip));
    return snprintf(out, outsz, "[%s]:%u", ip, ntohs(v6->sin6_port)) >= (int)outsz;
}

/* ------------------------------------------------------ per-user counting ---- */

/* Live connections per caller, for limits.max_conns_per_user. Process-wide and shared
 * by all workers (the reason for the lock); a small list, as it holds one entry per
 * caller with a live connection. */
typedef struct sess_user_entry {
    struct sess_user_entry *next;
    long count;
    char key[];
} sess_user_entry;

struct sess_users {
    pthread_mutex_t mu;
    sess_user_entry *head;
};

sess_users *sess_users_new(void)
{
    sess_users *u = calloc(1, sizeof(*u));
    if (u && pthread_mutex_init(&u->mu, NULL) != 0) {
        free(u);
        return NULL;
    }
    return u;
}

void sess_users_free(sess_users *u)
{
    if (!u)
        return;
    while (u->head) {
        sess_user_entry *n = u->head->next;
        free(u->head);
        u->head = n;
    }
    pthread_mutex_destroy(&u->mu);
    free(u);
}

/* A user is a login; all tagged nodes share the login "tagged-devices", so for them
 * the node is the user. */
static const char *sess_user_key(const id_identity *id)
{
    return id_is_tagged(id) ? id->stable_id : id->login_name;
}

/* Counts one more connection for key unless that would exceed max (0 = unlimited).
 * Returns 1 when counted. */
static int sess_users_acquire(sess_users *u, const char *key, int64_t max)
{
    pthread_mutex_lock(&u->mu);
    sess_user_entry *e = u->head;
    while (e && strcmp(e->key, key) != 0)
        e = e->next;
    int ok = 0;
    if (!e && (e = calloc(1, sizeof(*e) + strlen(key) + 1)) != NULL) {
        strcpy(e->key, key);
        e->next = u->head;
        u->head = e;
    }
    if (e && (max <= 0 || e->count < max)) {
        e->count++;
        ok = 1;
    }
    pthread_mutex_unlock(&u->mu);
    return ok;
}

static void sess_users_release(sess_users *u, const char *key)
{
    pthread_mutex_lock(&u->mu);
    for (sess_user_entry **pp = &u->head; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->key, key) == 0) {
            if (--(*pp)->count <= 0) {
                sess_user_entry *dead = *pp;
                *pp = dead->next;
                free(dead);
            }
            break;
        }
    }
    pthread_mutex_unlock(&u->mu);
}

/* ------------------------------------------------ admission (admit.h) ---- */

/* WhoIs at accept: it needs only the peer ip:port, and it tells which node this is, so
 * the unstarted-connection bound is per node even when every caller arrives from
 * 127.0.0.1 (userspace-networking tailscaled). The result is kept for the step that
 * identifies the caller (or the cancel), so a connection still costs one WhoIs. */
static int sess_admit(sess *s)
{
    if (s->over_cap)
        return 1;
    wp_error_clear(&s->early_err);
    s->early_st = ts_whois(s->env->ts, s->peer, &s->early_id, &s->early_err);
    if (s->early_st != WP_OK)
        s->early_id = NULL;
    s->early = 1;
    s->early_ms = wp_now_ms();
    if (s->early_id)
        snprintf(s->adm_key, sizeof(s->adm_key), "node:%s", s->early_id->stable_id);
    else /* loopback as one peer, IPv6 per /64 */
        adm_peer_key(s->peer, s->adm_key, sizeof(s->adm_key));
    s->adm = adm_acquire(s->env->admit, s->lc->name, s->adm_key, s->lc->max_unstarted_per_peer);
    if (s->adm != ADM_DROP)
        return 1;
    s->adm = ADM_NONE;
    log_kv(WP_LOG_WARN, "conn_dropped", "listener", s->lc->name, "peer", s->peer, "user",
           s->early_id ? s->early_id->login_name : "", "peer_key", s->adm_key, "reason",
           "max_unstarted_per_peer reached and enough refusals pending", (char *)NULL);
    return 0;
}

/* The StartupMessage is in: the phase the bound covers is over. */
static int sess_started(sess *s)
{
    if (s->adm == ADM_PENDING) {
        adm_release(s->env->admit, s->lc->name, s->adm_key, s->adm);
        s->adm = ADM_NONE;
    }
    return 1;
}

/* The WhoIs result for this connection: the one made at accept, else a fresh one. A
 * "no match" at accept is asked again: a userspace-networking tailscaled registers its
 * dial's local ip:port only after the dial returned (tailscale#1616), so a genuine
 * caller can be unknown at accept; once its first packet is in, the mapping exists.
 * Other failures (timeout, tailscaled down) stand: asking again would only double the
 * wait of a caller that is refused either way. */
static wp_status sess_whois(sess *s, id_identity **id, wp_error *e)
{
    if (s->early && s->early_st == WP_ERR_NOT_FOUND) {
        s->early = 0;
        wp_error_clear(e);
    }
    /* A slow startup (a client that waits before its StartupMessage) must not carry a
     * grant past its withdrawal: an old answer is asked again. */
    if (s->early && s->early_st == WP_OK && wp_now_ms() - s->early_ms > SESS_WHOIS_FRESH_MS) {
        s->early = 0;
        id_free(s->early_id);
        s->early_id = NULL;
    }
    if (!s->early)
        return ts_whois(s->env->ts, s->peer, id, e);
    s->early = 0;
    *id = s->early_id;
    s->early_id = NULL;
    *e = s->early_err;
    return s->early_st;
}

/* -------------------------------------------------------------- cancel ---- */

/* A CancelRequest: honoured only for the same Tailscale identity; never answered. */
static int sess_cancel(sess *s)
{
    const char *result = "ignored";
    id_identity *id = NULL;
    wp_error e;
    wp_error_clear(&e);
    cancel_target t;
    if (sess_whois(s, &id, &e) == WP_OK &&
        cancel_lookup(s->env->cancel, s->su.cancel_pid, s->su.cancel_key, s->su.cancel_key_len,
                      id->login_name, id->stable_id, &t) == WP_OK) {
        wp_status st = up_send_cancel(t.host, t.port, t.backend_pid, t.backend_key,
                                      t.backend_key_len, wp_now_ms() + SESS_CANCEL_WAIT_MS);
        result = st == WP_OK ? "forwarded" : "backend_unreachable";
    }
    obs_cancel(s->env->obs, s->lc->name, result);
    log_kv(WP_LOG_INFO, "cancel", "listener", s->lc->name, "peer", s->peer, "user",
           id ? id->login_name : "", "node", id ? id->node_name : "", "result", result,
           (char *)NULL);
    id_free(id);
    return 0;
}

/* -------------------------------------------------- 1. startup packet ---- */

static int sess_tls_enabled(const sess *s)
{
    /* No certificate source at all: 'N', so libpq's sslmode=prefer goes on in plaintext
     * on this connection instead of failing a handshake and connecting again. */
    return !s->over_cap && s->adm != ADM_REFUSE && s->lsn->tls && s->lc->tls_mode != CFG_TLS_OFF &&
           tls_server_can_serve(s->lsn->tls);
}

static int sess_answer(sess *s, char c)
{
    return io_write_all(&s->cio, &c, 1, s->deadline_ms) == WP_OK;
}

static int sess_start_tls(sess *s, int direct)
{
    wp_error e;
    wp_error_clear(&e);
    if (tls_server_accept(s->lsn->tls, s->fd, direct, s->deadline_ms, &s->cio, &e) != WP_OK)
        return sess_refuse(s, NULL, e.message[0] ? e.message : "TLS handshake failed");
    s->tls = 1;
    obs_tls_handshake(s->env->obs, s->lc->name, tls_io_resumed(&s->cio));
    return 1;
}

/* Reads packets until the StartupMessage, doing the SSL/GSS dance on the way. */
static int sess_read_startup(sess *s)
{
    for (int round = 0; round < SESS_STARTUP_ROUNDS; round++) {
        wp_error e;
        wp_error_clear(&e);
        pgw_startup_free(&s->su);
        wp_status st = pgw_read_startup(&s->cio, s->deadline_ms, &s->su, &e);
        if (st == WP_ERR_TIMEOUT || st == WP_ERR_CLOSED || st == WP_ERR_IO)
            return sess_refuse(s, NULL, e.message);
        if (st != WP_OK)
            return sess_refuse(s, &e, NULL);
        switch (s->su.kind) {
        case PGW_START_STARTUP:
            return 1;
        case PGW_START_CANCEL:
            return sess_cancel(s);
        case PGW_START_GSSENC:
            if (!sess_answer(s, 'N'))
                return sess_refuse(s, NULL, "client went away during negotiation");
            break;
        case PGW_START_SSL:
            if (s->tls)
                return sess_refuse_msg(s, WP_SQLSTATE_PROTOCOL, NULL,
                                       "SSLRequest received inside TLS");
            int on = sess_tls_enabled(s);
            if (!sess_answer(s, on ? 'S' : 'N'))
                return sess_refuse(s, NULL, "client went away during negotiation");
            if (on && !sess_start_tls(s, 0))
                return 0;
            break;
        case PGW_START_DIRECT_TLS:
            if (!sess_tls_enabled(s))
                return sess_refuse(s, NULL, "direct TLS connection but TLS is not enabled");
            if (!sess_start_tls(s, 1))
                return 0;
            break;
        }
    }
    return sess_refuse_msg(s, WP_SQLSTATE_PROTOCOL, NULL,
                           "too many negotiation packets before the startup packet");
}

static int sess_is_true(const char *v)
{
    /* "database" asks for logical replication: refused like the physical kind. */
    static const char *yes[] = {"1", "true", "on", "yes", "database"};
    for (size_t i = 0; v && i < sizeof(yes) / sizeof(yes[0]); i++)
        if (strcasecmp(v, yes[i]) == 0)
            return 1;
    return 0;
}

/* TLS policy, replication, protocol version. */
static int sess_check_startup(sess *s)
{
    char msg[256];
    s->stage = "check";
    if (s->over_cap) {
        snprintf(msg, sizeof(msg), "sorry, too many connections for listener %s", s->lc->name);
        return sess_refuse_msg(s, WP_SQLSTATE_TOO_MANY_CONN, "max_connections reached", msg);
    }
    if (s->adm == ADM_REFUSE) {
        snprintf(msg, sizeof(msg),
                 "sorry, too many connections from this %s are still starting up on listener "
                 "%s (max_unstarted_per_peer = %lld)",
                 strncmp(s->adm_key, "node:", 5) == 0 ? "node" : "address", s->lc->name,
                 (long long)s->lc->max_unstarted_per_peer);
        return sess_refuse_msg(s, WP_SQLSTATE_TOO_MANY_CONN, "max_unstarted_per_peer reached", msg);
    }
    if (s->lc->tls_mode == CFG_TLS_REQUIRE && !s->tls)
        return sess_refuse_msg(s, WP_SQLSTATE_INVALID_AUTH, NULL,
                               "SSL required: connect with sslmode=require");
    const char *repl = pgw_startup_get(&s->su, "replication");
    if (repl && sess_is_true(repl))
        return sess_refuse_msg(s, WP_SQLSTATE_FEATURE, NULL,
                               "replication connections are not supported by Waypoint");
    if (s->su.version != PGW_PROTO_30 || s->su.npq_options > 0) {
        if (pgw_build_negotiate(&s->out, 0, s->su.pq_options, s->su.npq_options) != WP_OK ||
            sess_flush(s) != WP_OK)
            return sess_refuse(s, NULL, "client went away during protocol negotiation");
    }
    return 1;
}

/* -------------------------------------------------- 2. who is calling ---- */

static int sess_identify(sess *s)
{
    wp_error e;
    wp_error_clear(&e);
    int64_t t0 = obs_now_us();
    wp_status st = sess_whois(s, &s->id, &e);
    s->stage = st == WP_OK ? "identify" : st == WP_ERR_NOT_FOUND ? "not_on_tailnet" : "tailscale";
    s->confirmed_ms = wp_now_ms();
    obs_observe(s->env->obs, OBS_H_WHOIS, s->lc->name,
                st == WP_OK              ? "ok"
                : st == WP_ERR_NOT_FOUND ? "not_found"
                : st == WP_ERR_TIMEOUT   ? "timeout"
                                         : "error",
                obs_now_us() - t0);
    if (st == WP_OK)
        return 1;
    s->id = NULL;
    if (!e.message[0] || !e.sqlstate[0]) {
        char reason[sizeof(e.detail)];
        snprintf(reason, sizeof(reason), "%s", e.detail[0] ? e.detail : wp_status_str(st));
        wp_error_set(&e, WP_SQLSTATE_INVALID_AUTH, "%s",
                     "connection refused: the connecting machine is not identified on the "
                     "tailnet");
        wp_error_detail(&e, "%s", reason);
    }
    if (!e.detail[0])
        wp_error_detail(&e, "%s", wp_status_str(st));
    return sess_refuse_private(s, &e);
}

/* -------------------------------------------------- 3. what they may do ---- */

static void sess_pool_forget(sess *s);

/* PostgreSQL matches setting names case-insensitively and accepts any dotted name as a
 * custom setting, so "WAYPOINT_PRESETS" or "waypoint.presets" sent as startup parameters
 * would reach the backend silently and the downgrade would be lost. Every spelling is
 * Waypoint's own: all of them are read and none is forwarded. */
static int sess_is_own_param(const char *key)
{
    return strcasecmp(key, "waypoint_presets") == 0 || strcasecmp(key, "waypoint.presets") == 0;
}

/* The downgrade asked for through any channel; when several are given the lowest
 * maximum wins, so adding a channel can only restrict further. */
static wp_status sess_downgrade(sess *s, wp_error *e)
{
    grant_preset lowest = GRANT_PRESET_NONE;
    for (size_t i = 0; i < s->su.nparams; i++) {
        if (!sess_is_own_param(s->su.params[i].key))
            continue;
        grant_preset p;
        wp_status st = grant_parse_downgrade(s->su.params[i].value, &p, e);
        if (st != WP_OK)
            return st;
        if (lowest == GRANT_PRESET_NONE || p < lowest)
            lowest = p;
    }
    grant_preset from_options = GRANT_PRESET_NONE;
    wp_status st = grant_extract_downgrade(NULL, pgw_startup_get(&s->su, "options"), &from_options,
                                           &s->options, e);
    if (st != WP_OK)
        return st;
    if (from_options != GRANT_PRESET_NONE && (lowest == GRANT_PRESET_NONE || from_options < lowest))
        lowest = from_options;
    s->downgrade = lowest;
    return WP_OK;
}

/* [redis]: the count is fleet-wide (lib/fleet.c). The acquire goes out at authorization
 * and its verdict is read by sess_fleet_gate before any backend session is used (before
 * the connect to the backend, or before a parked session is announced), so Redis answers
 * while a reused connect runs its reuse check: the round trip is off the connect's path.
 * Redis unreachable: refused with FLEET_UNAVAILABLE_SQLSTATE (fail closed) under its own
 * reason word. */
static int sess_fleet_gate(sess *s)
{
    if (!s->facq_pending)
        return 1;
    s->facq_pending = 0;
    int64_t count = 0, max = s->facq.max;
    fleet_verdict v = fleet_acquire_recv(s->env->fleet, &s->facq, &count);
    char msg[512];
    if (v == FLEET_OVER) {
        snprintf(msg, sizeof(msg),
                 "too many connections for user %s: %lld open across the Waypoint fleet, "
                 "max_conns_per_user is %lld",
                 s->id->login_name, (long long)count, (long long)max);
        return sess_refuse_msg(s, WP_SQLSTATE_TOO_MANY_CONN, "fleet max_conns_per_user reached",
                               msg);
    }
    if (v == FLEET_UNAVAILABLE) {
        s->stage = "fleet_unavailable";
        return sess_refuse_msg(s, FLEET_UNAVAILABLE_SQLSTATE, "redis unreachable",
                               FLEET_UNAVAILABLE_MESSAGE);
    }
    s->user_counted = 2; /* released through the fleet */
    return 1;
}

static int sess_authorize(sess *s)
{
    s->stage = "authorize";
    const char *user = pgw_startup_get(&s->su, "user");
    s->database = pgw_startup_get(&s->su, "database");
    if (!s->database || !*s->database)
        s->database = user ? user : "";
    wp_error e;
    wp_error_clear(&e);
    if (sess_downgrade(s, &e) != WP_OK)
        return sess_refuse(s, &e, NULL);
    if (grant_resolve(s->id->cap_rules, s->lc->name, s->database, &s->env->cfg->default_limits,
                      s->downgrade, &s->grant, &e) != WP_OK) {
        s->grant = NULL;
        sess_pool_forget(s); /* a revoked grant takes its parked sessions with it */
        return sess_refuse_private(s, &e);
    }
    int64_t max = s->grant->limits.max_conns_per_user;
    if (s->env->fleet) {
        fleet_acquire_send(s->env->fleet, sess_user_key(s->id), max, &s->facq);
        s->facq_pending = 1;
        return 1;
    }
    if (!sess_users_acquire(s->env->users, sess_user_key(s->id), max)) {
        char msg[512];
        snprintf(msg, sizeof(msg), "too many connections for user %s", s->id->login_name);
        return sess_refuse_msg(s, WP_SQLSTATE_TOO_MANY_CONN, "max_conns_per_user reached", msg);
    }
    s->user_counted = 1;
    return 1;
}

/* ----------------------------------- 4. provision + 5. log in upstream ---- */

/* The client's parameters minus the ones Waypoint owns, plus the database. */
static pgw_param *sess_forward_params(sess *s, size_t *n)
{
    static const char *own[] = {"user", "database", "options", "replication"};
    pgw_param *p = calloc(s->su.nparams + 2, sizeof(*p));
    if (!p)
        return NULL;
    *n = 0;
    for (size_t i = 0; i < s->su.nparams; i++) {
        int skip = 0;
        for (size_t k = 0; k < sizeof(own) / sizeof(own[0]); k++)
            skip |= strcmp(s->su.params[i].key, own[k]) == 0;
        if (!skip && !sess_is_own_param(s->su.params[i].key))
            p[(*n)++] = s->su.params[i];
    }
    if (s->options && s->options[strspn(s->options, " \t")] != '\0')
        p[(*n)++] = (pgw_param){.key = (char *)"options", .value = s->options};
    p[(*n)++] = (pgw_param){.key = (char *)"database", .value = (char *)s->database};
    return p;
}

/* The backend connection (TCP, TLS, and PostgreSQL's fork of a backend process) is
 * opened before provisioning: the role lock is held from setting the password until
 * the upstream login (spec 5.2), and every concurrent connect of the same caller waits
 * for it, so only the work that depends on the password belongs inside it. */
static int sess_provision_and_login(sess *s)
{
    if (!sess_fleet_gate(s))
        return 0;
    wp_error e;
    wp_error_clear(&e);
    s->stage = "backend_unreachable";
    int64_t t0 = obs_now_us();
    wp_status st = up_connect(&s->up, s->lc->backend_host, s->lc->backend_port, s->lc->backend_tls,
                              s->lc->backend_ca_file, s->deadline_ms, &e);
    int64_t connect_us = obs_now_us() - t0;
    if (st != WP_OK) {
        obs_observe(s->env->obs, OBS_H_UPSTREAM_LOGIN, s->lc->name, "unreachable", connect_us);
        return sess_refuse_backend(s, &e);
    }
    s->up_open = 1;
    prov_lease *lease = NULL;
    s->stage = "provision";
    t0 = obs_now_us();
    st = prov_ensure_role(s->lsn->prov, s->id, s->database, s->grant, &lease, &e);
    obs_observe(s->env->obs, OBS_H_PROVISION, s->lc->name, st == WP_OK ? "ok" : "error",
                obs_now_us() - t0);
    if (st != WP_OK)
        return sess_refuse_backend(s, &e);
    obs_roles(s->env->obs, s->lc->name, prov_lease_created(lease) ? "created" : "refreshed", 1);
    snprintf(s->role, sizeof(s->role), "%s", prov_lease_role(lease));
    s->ps.expiry_set_ms = wp_now_ms(); /* the password write set VALID UNTIL now + ttl */
    s->stage = "backend_login";
    t0 = obs_now_us();

    size_t n = 0;
    pgw_param *params = sess_forward_params(s, &n);
    st = params ? up_login(&s->up, PGW_PROTO_30, params, n, s->role, prov_lease_password(lease),
                           s->deadline_ms, &e)
                : WP_ERR_NOMEM;
    free(params);
    obs_observe(s->env->obs, OBS_H_UPSTREAM_LOGIN, s->lc->name, st == WP_OK ? "ok" : "error",
                connect_us + obs_now_us() - t0);
    if (st == WP_ERR_NOMEM)
        wp_error_set(&e, WP_SQLSTATE_INTERNAL, "out of memory");
    prov_lease_release(lease); /* the password may rotate again from here on */
    if (st == WP_OK)
        return 1;
    return sess_refuse_backend(s, &e);
}

/* ----------------------------------- 6. AuthenticationOk .. ReadyForQuery ---- */

static wp_status sess_give_key(sess *s);

/* BackendKeyData: remember the backend's key, give the client one of ours. */
static wp_status sess_remap_key(sess *s)
{
    if (s->msg.len < 8 || s->msg.len - 4 > PGW_CANCEL_KEY_MAX || s->keyed)
        return WP_ERR_PROTOCOL;
    s->ps.backend_pid = pgw_get32(s->msg.data);
    s->ps.backend_key_len = s->msg.len - 4;
    memcpy(s->ps.backend_key, s->msg.data + 4, s->ps.backend_key_len);
    return sess_give_key(s);
}

/* The client's cancel key for the backend key in s->ps: the backend's real pid (spec
 * 7.4) and a secret issued to this client alone. */
static wp_status sess_give_key(sess *s)
{
    cancel_target t;
    memset(&t, 0, sizeof(t));
    t.backend_pid = s->ps.backend_pid;
    t.backend_key_len = s->ps.backend_key_len;
    memcpy(t.backend_key, s->ps.backend_key, t.backend_key_len);
    snprintf(t.host, sizeof(t.host), "%s", s->lc->backend_host);
    t.port = s->lc->backend_port;
    snprintf(t.login, sizeof(t.login), "%s", s->id->login_name);
    snprintf(t.node_id, sizeof(t.node_id), "%s", s->id->stable_id);
    s->bk = t;
    wp_status st = cancel_register(s->env->cancel, &t, s->wp_key);
    if (st != WP_OK)
        return st;
    s->keyed = 1;
    return pgw_build_backend_key(&s->out, t.backend_pid, s->wp_key, sizeof(s->wp_key));
}

static int sess_finish_startup(sess *s)
{
    s->stage = "backend_refused";
    if (pgw_build_auth_ok(&s->out) != WP_OK)
        return sess_refuse(s, NULL, "out of memory");
    for (;;) {
        char type;
        wp_status st = pgw_read_msg(&s->up.io, s->deadline_ms, PGW_MSG_MAX, &type, &s->msg);
        if (st != WP_OK) {
            (void)sess_flush(s);
            return sess_refuse_msg(s, WP_SQLSTATE_CONN_FAILURE, wp_status_str(st),
                                   "the backend closed the connection during startup");
        }
        if (type == PGW_MSG_BACKEND_KEY)
            st = sess_remap_key(s);
        else
            st = pgw_build_raw(&s->out, type, s->msg.data, s->msg.len);
        if (st == WP_OK && type == PGW_MSG_PARAMETER_STATUS && s->pk.owner)
            st = pool_status_set(&s->ps, s->msg.data, s->msg.len); /* replayed on reuse */
        if (st != WP_OK)
            return sess_refuse_msg(s, WP_SQLSTATE_PROTOCOL, wp_status_str(st),
                                   "unexpected message from the backend during startup");
        if (type == PGW_MSG_ERROR) { /* e.g. 3D000 from the backend: forwarded as is */
            wp_error e;
            wp_error_clear(&e);
            (void)pgw_parse_error(s->msg.data, s->msg.len, &e);
            s->told = 1;
            (void)sess_flush(s);
            sess_log_refusal(s, &e, "backend refused the session");
            return 0;
        }
        if (type == PGW_MSG_READY || s->out.len >= SESS_FLUSH_AT)
            if (sess_flush(s) != WP_OK)
                return sess_refuse(s, NULL, "client went away during startup");
        if (type == PGW_MSG_READY)
            return 1;
    }
}

/* ------------------------------------------ 4'. reuse a parked backend session ---- */

/* The pool key of this connection (after sess_authorize); 0 when reuse is off or the
 * key cannot be made, so the connection is served without the pool. */
static int sess_pool_key(sess *s)
{
    if (!s->env->pool || !s->env->cfg->pool_enabled)
        return 0;
    if (!s->pk.owner) {
        size_t n = 0;
        pgw_param *params = sess_forward_params(s, &n);
        const char *scope =
            s->downgrade == GRANT_PRESET_NONE ? NULL : grant_preset_str(s->downgrade);
        s->pk.listener = s->lc->name;
        s->pk.generation = s->env->generation;
        s->pk.owner = id_role_record(s->id, s->database, scope);
        s->pk.grant = s->grant ? pool_grant_fingerprint(s->grant) : NULL;
        s->pk.params = params ? pool_params_fingerprint(params, n) : NULL;
        free(params);
    }
    return s->pk.owner && s->pk.grant && s->pk.params;
}

static void sess_pool_key_free(sess *s)
{
    free((char *)s->pk.owner);
    free((char *)s->pk.grant);
    free((char *)s->pk.params);
    memset(&s->pk, 0, sizeof(s->pk));
}

/* The caller's grant for this database is gone: so are its parked sessions. */
static void sess_pool_forget(sess *s)
{
    const char *scope = s->downgrade == GRANT_PRESET_NONE ? NULL : grant_preset_str(s->downgrade);
    char *owner = s->env->pool ? id_role_record(s->id, s->database, scope) : NULL;
    if (owner)
        pool_drop(s->env->pool, POOL_DROP_OWNER, s->lc->name, owner, "grant_revoked");
    free(owner);
}

/* The role's expiry moves with use, as a connect would move it; at most once per
 * user_ttl/100 (the margin prov_touch_role already allows), counted from the last time
 * it moved: a reused connect does not move it, a provisioning connect does. */
static void sess_touch_if_due(sess *s, int64_t now)
{
    if (now - s->ps.expiry_set_ms < s->lc->user_ttl_ms / 100)
        return;
    prov_touch_role(s->lsn->prov, s->role, s->database, -1);
    s->ps.expiry_set_ms = now;
}

/* Makes the role current for a reused session; 0 when the session cannot be used. */
static int sess_reuse_check(sess *s)
{
    switch (prov_check_reuse(s->lsn->prov, s->ps.role, s->database, s->pk.owner, s->grant)) {
    case PROV_REUSE_OK:
        return 1;
    case PROV_REUSE_REFRESH:
        break;
    case PROV_REUSE_GONE:
        return 0;
    }
    wp_error e;
    wp_error_clear(&e);
    prov_lease *lease = NULL;
    if (prov_ensure_role(s->lsn->prov, s->id, s->database, s->grant, &lease, &e) != WP_OK)
        return 0;
    int same = strcmp(prov_lease_role(lease), s->ps.role) == 0;
    prov_lease_release(lease);
    s->ps.expiry_set_ms = wp_now_ms(); /* the refresh set the expiry */
    return same;
}

/* A parked session of exactly this caller, grant and parameters, when there is one:
 * announced to the client as a login would be (AuthenticationOk, the backend's current
 * ParameterStatus values, a new cancel key, ReadyForQuery idle). Returns 1 when reused,
 * 0 when the connection is over (already told), -1 to provision and log in as usual. */
static int sess_reuse(sess *s)
{
    if (!sess_pool_key(s) || !pool_take(s->env->pool, &s->pk, &s->ps))
        return -1;
    if (!sess_reuse_check(s)) {
        pool_session_close(&s->ps);
        memset(&s->ps, 0, sizeof(s->ps));
        return -1;
    }
    if (!sess_fleet_gate(s)) { /* over the limit: the parked session is not announced */
        pool_session_close(&s->ps);
        memset(&s->ps, 0, sizeof(s->ps));
        return 0;
    }
    snprintf(s->role, sizeof(s->role), "%s", s->ps.role);
    sess_touch_if_due(s, wp_now_ms());
    s->up = s->ps.up; /* the worker owns the connection from here on */
    s->ps.open = 0;
    s->up_open = 1;
    s->reused = 1;
    if (pgw_build_auth_ok(&s->out) != WP_OK || pool_status_build(&s->ps, &s->out) != WP_OK ||
        sess_give_key(s) != WP_OK || pgw_build_raw(&s->out, PGW_MSG_READY, "I", 1) != WP_OK)
        return sess_refuse(s, NULL, "out of memory");
    if (sess_flush(s) != WP_OK)
        return sess_refuse(s, NULL, "client went away during startup");
    return 1;
}

/* After the relay: a backend session whose client ended with Terminate, sent as its
 * only message after an idle ReadyForQuery and with both streams on message boundaries,
 * is reset and parked. Returns 1 when parked (or closed idle because the pool is full);
 * 0 leaves the backend connection with the worker for sess_settle_backend(). */
static int sess_park(sess *s)
{
    const relay_result *r = &s->rr;
    if (!s->up_open || r->end != RELAY_CLIENT_TERMINATE)
        return 0;
    int clean = s->pk.owner && r->backend_status == 'I' && r->backend_boundary &&
                r->backend_last == PGW_MSG_READY && r->client_after_ready == 1;
    if (!clean)
        return 0;
    s->ps.up = s->up;
    s->ps.open = 1;
    s->up_open = 0;
    snprintf(s->ps.role, sizeof(s->ps.role), "%s", s->role);
    int64_t life = s->env->cfg->pool_idle_timeout_ms, reval = s->env->cfg->revalidation_interval_ms;
    if (reval > 0 && reval < life)
        life = reval; /* a parked session is never older than a live one's last check */
    if (s->lc->user_ttl_ms / 2 < life)
        life = s->lc->user_ttl_ms / 2; /* the role cannot expire while parked */
    pool_limits lim = {.lifetime_ms = life,
                       .max_per_role = s->env->cfg->pool_max_per_role,
                       .max_total = s->env->cfg->pool_max_total};
    if (pool_reset(&s->ps, wp_now_ms() + SESS_RESET_WAIT_MS) != WP_OK) {
        /* DISCARD ALL did not come back: whatever the backend is doing, it is stopped */
        s->up = s->ps.up;
        s->up_open = 1;
        s->ps.open = 0;
        s->reset_failed = 1;
        return 0;
    }
    if (!pool_park(s->env->pool, &s->pk, &s->ps, &lim))
        pool_session_close(&s->ps); /* idle and reset: the held Terminate ends it */
    return 1;
}

static int sess_stop_backend(void *arg, relay_end why);

/* Stops the backend (sess_stop_backend, as an end by authority does) and tries again
 * while it is not confirmed gone, a bounded number of times. */
static void sess_stop_until_gone(sess *s, relay_end why, int tries)
{
    for (int i = 0; i < tries; i++)
        if (sess_stop_backend(s, why))
            return;
    log_kv(WP_LOG_ERROR, "backend_not_stopped", "listener", s->lc->name, "user", sess_login(s),
           "role", s->role, "database", s->database, "reason", relay_end_str(why), (char *)NULL);
}

/* Spec 7.6: every backend session Waypoint opened ends parked after a clean reset or
 * gone. A backend that was idle goes by itself once it reads the Terminate (forwarded
 * here when the relay held it back) or the end of its stream. One that may still be
 * running a statement (its client vanished or sent Terminate in the middle of it, a
 * pipelined Execute, COPY, a reset that did not come back) would run on unseen,
 * PostgreSQL noticing a vanished client only when it next writes to it: it is stopped
 * like an end by authority, while this session is still listed, killable and counted. */
static void sess_settle_backend(sess *s)
{
    if (!s->up_open)
        return;
    const relay_result *r = &s->rr;
    if (relay_end_by_authority(r->end)) {
        if (!r->backend_stopped) /* the relay's attempt failed */
            sess_stop_until_gone(s, r->end, SESS_STOP_TRIES - 1);
    } else if (!r->backend_eof && (!r->backend_idle || s->reset_failed)) {
        sess_stop_until_gone(s, r->end, SESS_STOP_TRIES);
    }
    if (r->end == RELAY_CLIENT_TERMINATE && !s->reset_failed)
        up_terminate(&s->up, wp_now_ms() + SESS_FINISH_WAIT_MS); /* the held Terminate */
    else
        up_close(&s->up);
    s->up_open = 0;
}

/* ---------------------------------------------------------- 7. relay ---- */

static int sess_same_grant(const grant_effective *a, const grant_effective *b)
{
    if (a->npairs != b->npairs || a->nsql != b->nsql)
        return 0;
    for (size_t i = 0; i < a->npairs; i++)
        if (a->pairs[i].preset != b->pairs[i].preset ||
            strcmp(a->pairs[i].schema, b->pairs[i].schema) != 0)
            return 0;
    for (size_t i = 0; i < a->nsql; i++)
        if (strcmp(a->sql[i].template_text, b->sql[i].template_text) != 0)
            return 0;
    return 1;
}

/* tailscaled could not be asked at a tick. The session goes on (the caller was authorised
 * at connect time and the next tick checks again) until the identity has gone
 * unconfirmed for [revalidation] grace: then it ends, failing closed. */
static int sess_unconfirmed(sess *s, wp_status st, const wp_error *e, wp_error *err)
{
    int64_t grace = s->env->cfg->revalidation_grace_ms;
    int64_t since = wp_now_ms() - s->confirmed_ms;
    int ending = grace > 0 && since >= grace;
    char ms[24];
    snprintf(ms, sizeof(ms), "%lld", (long long)since);
    log_kv(WP_LOG_WARN, "revalidation_failed", "listener", s->lc->name, "peer", s->peer, "user",
           sess_login(s), "reason", e->detail[0] ? e->detail : wp_status_str(st), "unconfirmed_ms",
           ms, "ending", ending ? "yes" : "no", (char *)NULL);
    obs_revalidation(s->env->obs, s->lc->name, ending ? "unconfirmed" : "tailscale_error");
    if (!ending)
        return 0;
    s->tick_end = "unconfirmed";
    wp_error_set(err, WP_SQLSTATE_INVALID_AUTH,
                 "terminating connection: the caller's identity could not be confirmed with "
                 "tailscaled for %lld s ([revalidation] grace)",
                 (long long)(since / 1000));
    return 1;
}

/* Revalidation tick: WhoIs again and re-resolve the grant. A vanished node, a changed
 * identity or a removed grant ends the session; a changed grant is applied to the role
 * at once, except that a narrowing on a server that cannot forbid SET ROLE to the
 * caller's groups (PostgreSQL 14/15) ends the session: it may be acting as a group whose
 * rights the new grant no longer gives, and nothing Waypoint can do to the role takes
 * that back. A tailscaled hiccup is sess_unconfirmed()'s. */
static int sess_revalidate(void *arg, wp_error *err)
{
    sess *s = arg;
    id_identity *id = NULL;
    wp_error e;
    wp_error_clear(&e);
    wp_status st = ts_whois(s->env->ts, s->peer, &id, &e);
    if (st != WP_OK && st != WP_ERR_NOT_FOUND)
        return sess_unconfirmed(s, st, &e, err);
    s->confirmed_ms = wp_now_ms();
    grant_effective *g = NULL;
    const char *result = "unchanged";
    int revoked = st == WP_ERR_NOT_FOUND || strcmp(id->stable_id, s->id->stable_id) != 0 ||
                  strcmp(id->login_name, s->id->login_name) != 0 ||
                  grant_resolve(id->cap_rules, s->lc->name, s->database,
                                &s->env->cfg->default_limits, s->downgrade, &g, &e) != WP_OK;
    int narrowed = !revoked && !sess_same_grant(g, s->grant) && grant_narrows(s->grant, g) &&
                   prov_groups_settable(s->lsn->prov);
    if (narrowed) {
        result = "narrowed";
    } else if (!revoked && !sess_same_grant(g, s->grant)) {
        prov_lease *lease = NULL;
        if (prov_ensure_role(s->lsn->prov, s->id, s->database, g, &lease, &e) == WP_OK) {
            prov_lease_release(lease);
            grant_free(s->grant);
            s->grant = g;
            g = NULL;
            log_kv(WP_LOG_INFO, "grant_updated", "listener", s->lc->name, "user", sess_login(s),
                   "role", s->role, (char *)NULL);
            result = "grant_updated";
        } else {
            result = "update_failed";
        }
    }
    grant_free(g);
    id_free(id);
    obs_revalidation(s->env->obs, s->lc->name, revoked ? "revoked" : result);
    if (revoked) {
        s->tick_end = "revoked";
        sess_pool_forget(s); /* the caller's parked sessions go with the grant */
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, "%s",
                     "terminating connection: access through Waypoint was revoked");
    } else if (narrowed) {
        s->tick_end = "narrowed";
        log_kv(WP_LOG_INFO, "grant_narrowed", "listener", s->lc->name, "user", sess_login(s),
               "role", s->role, "action", "session ended: this server allows SET ROLE to groups",
               (char *)NULL);
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, "%s",
                     "terminating connection: the Waypoint grant was narrowed; reconnect to "
                     "continue with the new grant");
    }
    return revoked || narrowed;
}

/* Whether an end by authority also takes the role's own access away (until the
 * caller's next authorized connect): when access was withdrawn, not when a limit, the
 * drain, a narrowing or an unreachable tailscaled ended the session. */
static int sess_end_locks_out(const sess *s, relay_end why)
{
    return why == RELAY_TICK_STOP && s->tick_end && strcmp(s->tick_end, "revoked") == 0;
}

/* Waypoint's end of the backend connection, as the backend sees its client. */
static void sess_local_addr(const sess *s, char *out, size_t outsz)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    out[0] = '\0';
    if (getsockname(s->up.fd, (struct sockaddr *)&ss, &sl) != 0 ||
        sess_format_peer(&ss, sl, out, outsz) != 0)
        out[0] = '\0';
}

/* The relay's stop_backend hook, and the one step every end on Waypoint's authority
 * takes before the client is told (revocation, max_conn_duration, max_bytes_per_conn,
 * drain): nothing more may run for the caller. The CancelRequest stops the running
 * statement at once and needs no admin connection; the admin side then terminates the
 * backend (checking the pid is this role's) and waits until it is gone, so a write
 * either committed already or never will. At revocation the role is also made NOLOGIN.
 * Returns 1 when the backend is known gone. */
static int sess_stop_backend(void *arg, relay_end why)
{
    sess *s = arg;
    int64_t deadline = wp_now_ms() + SESS_STOP_WAIT_MS;
    if (s->bk.backend_pid)
        (void)up_send_cancel(s->bk.host, s->bk.port, s->bk.backend_pid, s->bk.backend_key,
                             s->bk.backend_key_len, wp_now_ms() + SESS_STOP_CANCEL_MS);
    prov_backend_ref ref = {.pid = s->bk.backend_pid};
    sess_local_addr(s, ref.local_addr, sizeof(ref.local_addr));
    wp_error e, le;
    wp_error_clear(&e);
    wp_error_clear(&le);
    wp_status st = prov_stop_backend(s->lsn->prov, s->role, s->database, &ref, deadline, &e);
    const char *locked = "no";
    if (sess_end_locks_out(s, why))
        locked =
            prov_lock_out_role(s->lsn->prov, s->role, s->database, &le) == WP_OK ? "yes" : "failed";
    log_kv(st == WP_OK && strcmp(locked, "failed") != 0 ? WP_LOG_INFO : WP_LOG_WARN,
           "backend_stopped", "listener", s->lc->name, "user", sess_login(s), "role", s->role,
           "database", s->database, "reason", relay_end_str(why), "result",
           st == WP_OK ? "gone" : wp_status_str(st), "error", e.detail[0] ? e.detail : le.detail,
           "role_locked_out", locked, (char *)NULL);
    return st == WP_OK;
}

/* What the client is told when the session ends on Waypoint's authority. */
static void sess_end_message(const sess *s, wp_error *e)
{
    switch (s->rr.end) {
    case RELAY_STOPPED:
        wp_error_set(e, WP_SQLSTATE_ADMIN_SHUTDOWN, "%s",
                     "terminating connection: Waypoint is shutting down");
        break;
    case RELAY_MAX_DURATION:
        wp_error_set(e, "53400", "%s", "terminating connection: max_conn_duration reached");
        break;
    case RELAY_MAX_BYTES:
        wp_error_set(e, "53400", "%s", "terminating connection: max_bytes_per_conn reached");
        break;
    case RELAY_TICK_STOP:
        *e = s->rr.tick_err;
        break;
    case RELAY_KILLED:
        sess_kill_message(s, e);
        break;
    default:
        break;
    }
}

static void sess_relay(sess *s)
{
    relay_opts o;
    relay_opts_init(&o);
    const cfg_limits *lim = &s->grant->limits;
    if (lim->max_conn_duration_ms > 0)
        o.end_ms = s->start_ms + lim->max_conn_duration_ms;
    o.max_bytes = lim->max_bytes_per_conn > 0 ? (uint64_t)lim->max_bytes_per_conn : 0;
    o.stop_fd = s->env->stop_fd;
    o.hold_terminate = s->pk.owner != NULL; /* the backend session may be parked */
    o.backend_ready = 'I';                  /* every startup ends idle */
    if (s->env->cfg->revalidation_interval_ms > 0) {
        o.tick_ms = s->env->cfg->revalidation_interval_ms;
        o.tick = sess_revalidate;
        o.tick_arg = s;
    }
    o.stop_backend = sess_stop_backend;
    o.stop_arg = s;
    sess_obs_accepted(s);
    o.kill_fd = sessreg_kill_fd(s->reg);
    o.live_in = sessreg_bytes_in(s->reg);
    o.live_out = sessreg_bytes_out(s->reg);
    s->deadline_ms = 0; /* the startup budget no longer applies */
    relay_run(&s->cio, &s->up.io, &o, &s->rr);

    /* By authority: the relay had the backend stopped before it came back here. */
    wp_error e;
    wp_error_clear(&e);
    if (relay_end_by_authority(s->rr.end))
        sess_end_message(s, &e);
    if (e.sqlstate[0] && s->rr.at_boundary && pgw_build_error(&s->out, &e) == WP_OK) {
        s->told = 1;
        (void)sess_flush(s);
    }
}

/* ------------------------------------------------------------- 8. end ---- */

static const char *sess_outcome(const sess *s)
{
    /* After Terminate the backend closes too; whichever EOF the relay saw first, the
     * client ended the session politely. */
    if (s->rr.client_terminated &&
        (s->rr.end == RELAY_CLIENT_CLOSED || s->rr.end == RELAY_BACKEND_CLOSED ||
         s->rr.end == RELAY_CLIENT_TERMINATE))
        return "ok";
    if (s->rr.end == RELAY_TICK_STOP && s->tick_end)
        return s->tick_end;
    return relay_end_str(s->rr.end);
}

static void sess_log_end(sess *s)
{
    char in[24], out[24], dur[24];
    snprintf(in, sizeof(in), "%llu", (unsigned long long)s->rr.bytes_in);
    snprintf(out, sizeof(out), "%llu", (unsigned long long)s->rr.bytes_out);
    snprintf(dur, sizeof(dur), "%lld", (long long)(wp_now_ms() - s->start_ms));
    char presets[256];
    obs_presets_str(s->grant, presets, sizeof(presets));
    log_kv(WP_LOG_INFO, "conn_end", "listener", s->lc->name, "peer", s->peer, "user", sess_login(s),
           "node", sess_node(s), "role", s->role, "database", s->database, "presets", presets,
           "downgrade", s->downgrade == GRANT_PRESET_NONE ? "none" : grant_preset_str(s->downgrade),
           "tls", s->tls ? "1" : "0", "reused", s->reused ? "1" : "0", "bytes_in", in, "bytes_out",
           out, "duration_ms", dur, "outcome", sess_outcome(s), (char *)NULL);
    sess_obs_ended(s, sess_outcome(s));
}

/* After a FATAL: closing a socket that still holds unread client input makes the kernel
 * answer with a reset, and a client that is still sending then fails its next write (or
 * loses what it had not read) instead of reading why its session ended. So the write
 * side is shut down first (a FIN after the FATAL) and whatever the client still sends is
 * read and thrown away until it closes, for a short bounded time. */
static void sess_linger(sess *s)
{
    if (shutdown(s->fd, SHUT_WR) != 0)
        return;
    int64_t deadline = wp_now_ms() + SESS_LINGER_MS;
    char sink[4096];
    for (size_t total = 0; total < SESS_LINGER_MAX;) {
        if (io_wait_fd(s->fd, POLLIN, deadline) != WP_OK)
            return;
        ssize_t n = recv(s->fd, sink, sizeof(sink), MSG_DONTWAIT);
        if (n == 0)
            return;
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                continue;
            return;
        }
        total += (size_t)n;
    }
}

static void sess_end(sess *s, int relayed)
{
    /* The client's cancel key goes before the backend can be parked: once parked, the
     * backend may serve another connection, which the old key must not reach. */
    if (s->keyed)
        cancel_unregister(s->env->cancel, s->bk.backend_pid, s->wp_key);
    s->keyed = 0;
    if (relayed) {
        sess_touch_if_due(s, wp_now_ms()); /* before parking: the entry carries the time */
        if (!sess_park(s))
            sess_settle_backend(s);
        prov_session_ended(s->lsn->prov, s->role, s->database); /* self-set password */
        sess_log_end(s);
    }
    sessreg_remove(obs_sessions(s->env->obs), s->reg);
    adm_release(s->env->admit, s->lc->name, s->adm_key, s->adm);
    id_free(s->early_id);
    if (s->facq_pending) { /* a path that ended before its gate: still one recv per send */
        int64_t count;
        s->facq_pending = 0;
        if (fleet_acquire_recv(s->env->fleet, &s->facq, &count) == FLEET_OK)
            s->user_counted = 2;
    }
    if (s->user_counted == 2)
        fleet_release(s->env->fleet, sess_user_key(s->id));
    else if (s->user_counted)
        sess_users_release(s->env->users, sess_user_key(s->id));
    if (s->up_open)
        up_close(&s->up);
    if (s->tls)
        io_shutdown(&s->cio);
    if (s->told)
        sess_linger(s);
    if (s->tls)
        tls_io_free(&s->cio);
    close(s->fd);
    pool_session_clear(&s->ps);
    sess_pool_key_free(s);
    grant_free(s->grant);
    id_free(s->id);
    free(s->options);
    pgw_startup_free(&s->su);
    pgw_buf_free(&s->out);
    pgw_buf_free(&s->msg);
}

static void sess_init(sess *s, const sess_env *env, const sess_listener *l, int fd, int over_cap)
{
    memset(s, 0, sizeof(*s));
    s->env = env;
    s->lsn = l;
    s->lc = l->cfg;
    s->fd = fd;
    s->over_cap = over_cap;
    s->start_ms = wp_now_ms();
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    s->start_wall = (int64_t)wall.tv_sec * 1000 + wall.tv_nsec / 1000000;
    s->deadline_ms = s->start_ms + env->cfg->startup_timeout_ms;
    io_plain_init(&s->cio, fd);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) != 0 ||
        sess_format_peer(&ss, sl, s->peer, sizeof(s->peer)) != 0)
        snprintf(s->peer, sizeof(s->peer), "unknown");
}

void sess_run(const sess_env *env, const sess_listener *l, int fd, int over_cap)
{
    sess s;
    sess_init(&s, env, l, fd, over_cap);
    int ok = sess_admit(&s) && sess_read_startup(&s) && sess_started(&s) &&
             sess_check_startup(&s) && sess_identify(&s) && sess_authorize(&s);
    int reused = ok ? sess_reuse(&s) : 0;
    if (reused < 0)
        ok = sess_provision_and_login(&s) && sess_finish_startup(&s);
    else
        ok = reused;
    if (ok)
        sess_relay(&s);
    sess_end(&s, ok);
}
