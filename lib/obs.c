/*
 * obs: the metric set, the /metrics endpoint (libmicrohttpd), audit records.
 *
 * Design. obs_new() registers every family once; hooks called from the connection path
 * look a series up by its (bounded) labels and update an atomic, so a scrape and a
 * connect never wait for each other longer than one list walk under the registry lock.
 * The HTTP endpoint is libmicrohttpd with its own single internal polling thread, a
 * connection limit and a timeout, on a socket Waypoint binds itself (for a clear error
 * when the address is taken). It answers GET /metrics only.
 *
 * Gauges whose value lives elsewhere are refreshed by collectors at scrape time: admin
 * connections per database (asked from the server through obs_set_admin_source). The
 * active-sessions gauge follows the session registry (+1/-1 as sessions come and go).
 *
 * Audit. A record is encoded from the obs_conn the session filled and written by
 * audit.c. A failed write is never silent: waypoint_audit_write_errors_total counts it
 * and an audit_write_failed line is logged with the reason. Every string a client or
 * tailscaled chose may be any bytes; jansson takes only UTF-8, so bytes that are not
 * are escaped as \xNN first (obs_json_bytes): a hostile name still gets its record, and
 * the only encoding failure left is a failed allocation.
 */
#include "obs.h"

#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define OBS_HTTP_CONN_LIMIT 16
#define OBS_HTTP_TIMEOUT_S 10

static const double obs_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                     0.1,    0.25,  0.5,    1,     2.5,  5,     10};
#define OBS_NBUCKETS (sizeof(obs_buckets) / sizeof(obs_buckets[0]))

struct obs {
    metrics_registry *reg;
    metrics_family *conns, *refusals, *bytes, *cancels, *reval, *roles, *login_fail;
    metrics_family *audit_err, *hist[OBS_H_COUNT];
    metrics_family *tls_hs; /* TLS handshakes toward clients, full vs resumed */
    metrics_family *active, *parked, *admin, *admin_idle, *build, *reload_ok, *reload_ts, *start_ts;
    sessreg *sessions;
    audit_log *audit;
    struct MHD_Daemon *http;
    int http_fd;
    pthread_mutex_t mu; /* guards admin_fn/admin_arg */
    obs_admin_source_fn admin_fn;
    void *admin_arg;
};

/* ------------------------------------------------------------ families ---- */

#define LBL(...) ((const char *const[]){__VA_ARGS__, NULL})

static int obs_families(obs *o)
{
    metrics_registry *r = o->reg;
    o->conns = metrics_family_add(r, METRICS_COUNTER, "waypoint_connections_total",
                                  "Client connections by listener and outcome (refused, or how a "
                                  "relayed session ended).",
                                  LBL("listener", "outcome"), NULL, 0);
    o->refusals = metrics_family_add(r, METRICS_COUNTER, "waypoint_refusals_total",
                                     "Refused connections by listener, reason and the SQLSTATE "
                                     "the client was sent (empty: nothing could be sent).",
                                     LBL("listener", "reason", "sqlstate"), NULL, 0);
    o->bytes = metrics_family_add(r, METRICS_COUNTER, "waypoint_bytes_total",
                                  "Bytes relayed after startup, counted when a session ends.",
                                  LBL("listener", "direction"), NULL, 0);
    o->cancels =
        metrics_family_add(r, METRICS_COUNTER, "waypoint_cancel_requests_total",
                           "CancelRequests by result.", LBL("listener", "result"), NULL, 0);
    o->reval = metrics_family_add(r, METRICS_COUNTER, "waypoint_revalidations_total",
                                  "Mid-session revalidation checks by result.",
                                  LBL("listener", "result"), NULL, 0);
    o->roles = metrics_family_add(r, METRICS_COUNTER, "waypoint_roles_total",
                                  "Backend roles created or refreshed at connect, or dropped by "
                                  "cleanup.",
                                  LBL("listener", "action"), NULL, 0);
    o->login_fail = metrics_family_add(r, METRICS_COUNTER, "waypoint_backend_login_failures_total",
                                       "Upstream logins the backend refused or that failed.",
                                       LBL("listener"), NULL, 0);
    o->audit_err = metrics_family_add(r, METRICS_COUNTER, "waypoint_audit_write_errors_total",
                                      "Audit records that could not be written.", NULL, NULL, 0);
    static const char *const hnames[OBS_H_COUNT][2] = {
        {"waypoint_whois_duration_seconds", "LocalAPI WhoIs latency at connect, by result."},
        {"waypoint_provisioning_duration_seconds", "Role provisioning latency, by result."},
        {"waypoint_upstream_login_duration_seconds",
         "Backend connect and authentication latency, by result."},
        {"waypoint_connect_duration_seconds",
         "Total connect time: accept to the first ReadyForQuery."},
    };
    for (int h = 0; h < OBS_H_COUNT; h++)
        o->hist[h] =
            metrics_family_add(r, METRICS_HISTOGRAM, hnames[h][0], hnames[h][1],
                               h == OBS_H_CONNECT ? LBL("listener") : LBL("listener", "result"),
                               obs_buckets, OBS_NBUCKETS);
    o->active = metrics_family_add(r, METRICS_GAUGE, "waypoint_active_sessions",
                                   "Relayed sessions open now.", LBL("listener"), NULL, 0);
    o->parked = metrics_family_add(r, METRICS_GAUGE, "waypoint_parked_backend_sessions",
                                   "Backend sessions parked for reuse (0 without a pool).",
                                   LBL("listener"), NULL, 0);
    o->admin = metrics_family_add(r, METRICS_GAUGE, "waypoint_admin_connections",
                                  "Open admin connections to the backend, per database.",
                                  LBL("listener", "database"), NULL, 0);
    o->admin_idle =
        metrics_family_add(r, METRICS_GAUGE, "waypoint_admin_connections_idle",
                           "Admin connections to the backend that are open but not in use, per "
                           "database (closed after [provisioning] admin_idle_timeout).",
                           LBL("listener", "database"), NULL, 0);
    o->build = metrics_family_add(r, METRICS_GAUGE, "waypoint_build_info",
                                  "Always 1; the version is the label.", LBL("version"), NULL, 0);
    o->reload_ok = metrics_family_add(r, METRICS_GAUGE, "waypoint_config_last_reload_success",
                                      "1 when the last configuration load (start or SIGHUP) was "
                                      "applied, 0 when it was rejected.",
                                      NULL, NULL, 0);
    o->reload_ts =
        metrics_family_add(r, METRICS_GAUGE, "waypoint_config_last_reload_timestamp_seconds",
                           "Unix time of the last configuration load attempt.", NULL, NULL, 0);
    o->start_ts = metrics_family_add(r, METRICS_GAUGE, "waypoint_start_time_seconds",
                                     "Unix time the process started.", NULL, NULL, 0);
    o->tls_hs = metrics_family_add(r, METRICS_COUNTER, "waypoint_tls_handshakes_total",
                                   "Completed TLS handshakes with clients: kind=full, or resumed "
                                   "from a session ticket or the session cache.",
                                   LBL("listener", "kind"), NULL, 0);
    if (!o->tls_hs)
        return -1;
    metrics_family *all[] = {o->conns,   o->refusals,   o->bytes,     o->cancels,   o->reval,
                             o->roles,   o->login_fail, o->audit_err, o->active,    o->parked,
                             o->admin,   o->build,      o->reload_ok, o->reload_ts, o->start_ts,
                             o->hist[0], o->hist[1],    o->hist[2],   o->hist[3],   o->admin_idle};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        if (!all[i])
            return -1;
    return 0;
}

static double wall_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void obs_count_session(void *arg, const char *listener, int delta)
{
    obs *o = arg;
    metrics_add(metrics_series_get(o->active, LBL(listener)), delta);
}

static void obs_emit_admin(obs *o, const char *listener, const char *database, int open, int idle)
{
    metrics_set(metrics_series_get(o->admin, LBL(listener, database)), open);
    metrics_set(metrics_series_get(o->admin_idle, LBL(listener, database)), idle);
}

static void obs_collect(void *arg)
{
    obs *o = arg;
    pthread_mutex_lock(&o->mu);
    obs_admin_source_fn fn = o->admin_fn;
    void *farg = o->admin_arg;
    pthread_mutex_unlock(&o->mu);
    if (!fn)
        return;
    metrics_family_zero(o->admin); /* a closed pool reads 0, not its last value */
    metrics_family_zero(o->admin_idle);
    fn(farg, o, obs_emit_admin);
}

obs *obs_new(void)
{
    obs *o = calloc(1, sizeof(*o));
    if (!o)
        return NULL;
    o->http_fd = -1;
    if (pthread_mutex_init(&o->mu, NULL) != 0) {
        free(o);
        return NULL;
    }
    o->reg = metrics_new();
    o->audit = audit_new();
    o->sessions = sessreg_new(obs_count_session, o);
    if (!o->reg || !o->audit || !o->sessions || obs_families(o) != 0 ||
        metrics_collector_add(o->reg, obs_collect, o) != 0) {
        obs_free(o);
        return NULL;
    }
    metrics_set(metrics_series_get(o->build, LBL(WP_VERSION)), 1);
    metrics_set(metrics_series_get(o->start_ts, NULL), wall_seconds());
    obs_reloaded(o, 1);
    return o;
}

void obs_free(obs *o)
{
    if (!o)
        return;
    obs_http_stop(o);
    sessreg_free(o->sessions);
    audit_free(o->audit);
    metrics_free(o->reg);
    pthread_mutex_destroy(&o->mu);
    free(o);
}

metrics_registry *obs_registry(obs *o)
{
    return o ? o->reg : NULL;
}

sessreg *obs_sessions(obs *o)
{
    return o ? o->sessions : NULL;
}

void obs_set_admin_source(obs *o, obs_admin_source_fn fn, void *arg)
{
    if (!o)
        return;
    pthread_mutex_lock(&o->mu);
    o->admin_fn = fn;
    o->admin_arg = arg;
    pthread_mutex_unlock(&o->mu);
}

/* --------------------------------------------------------------- hooks ---- */

int64_t obs_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static const char *nz(const char *s)
{
    return s ? s : "";
}

void obs_observe(obs *o, obs_hist h, const char *listener, const char *result, int64_t us)
{
    if (!o || (int)h < 0 || h >= OBS_H_COUNT)
        return;
    const char *const vals[] = {nz(listener), nz(result)};
    metrics_observe(metrics_series_get(o->hist[h], vals), (double)us / 1e6);
}

void obs_cancel(obs *o, const char *listener, const char *result)
{
    if (o)
        metrics_inc(metrics_series_get(o->cancels, LBL(nz(listener), nz(result))), 1);
}

void obs_revalidation(obs *o, const char *listener, const char *result)
{
    if (o)
        metrics_inc(metrics_series_get(o->reval, LBL(nz(listener), nz(result))), 1);
}

void obs_roles(obs *o, const char *listener, const char *what, uint64_t n)
{
    if (o)
        metrics_inc(metrics_series_get(o->roles, LBL(nz(listener), nz(what))), n);
}

void obs_tls_handshake(obs *o, const char *listener, int resumed)
{
    if (o)
        metrics_inc(metrics_series_get(o->tls_hs, LBL(nz(listener), resumed ? "resumed" : "full")),
                    1);
}

void obs_listener_init(obs *o, const char *listener)
{
    if (!o)
        return;
    metrics_add(metrics_series_get(o->tls_hs, LBL(nz(listener), "full")), 0);
    metrics_add(metrics_series_get(o->tls_hs, LBL(nz(listener), "resumed")), 0);
    metrics_add(metrics_series_get(o->active, LBL(nz(listener))), 0);
    metrics_add(metrics_series_get(o->parked, LBL(nz(listener))), 0);
}

void obs_set_parked(obs *o, const char *listener, int n)
{
    if (o)
        metrics_set(metrics_series_get(o->parked, LBL(nz(listener))), n);
}

void obs_reloaded(obs *o, int ok)
{
    if (!o)
        return;
    metrics_set(metrics_series_get(o->reload_ok, NULL), ok ? 1 : 0);
    metrics_set(metrics_series_get(o->reload_ts, NULL), wall_seconds());
}

/* ---------------------------------------------------------------- audit ---- */

int obs_audit_set_path(obs *o, const char *path)
{
    if (!o)
        return 0;
    char err[512];
    if (audit_set_path(o->audit, path, err, sizeof(err)) != 0) {
        log_kv(WP_LOG_ERROR, "audit_open_failed", "error", err, (char *)NULL);
        return -1;
    }
    return 0;
}

void obs_audit_reopen(obs *o)
{
    char err[512];
    if (o && audit_reopen(o->audit, err, sizeof(err)) != 0) {
        metrics_inc(metrics_series_get(o->audit_err, NULL), 1);
        log_kv(WP_LOG_ERROR, "audit_write_failed", "error", err, "what",
               "reopen failed; still writing to the file opened before", (char *)NULL);
    }
}

/* Length of the well-formed UTF-8 sequence at p (1-4; as jansson checks it: no overlong
 * form, no surrogate, at most U+10FFFF), 0 if none starts there. */
static size_t utf8_seq(const unsigned char *p)
{
    unsigned c = p[0], cp, min;
    size_t n;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2, cp = c & 0x1f, min = 0x80;
    else if ((c & 0xf0) == 0xe0)
        n = 3, cp = c & 0x0f, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4)
        n = 4, cp = c & 0x07, min = 0x10000;
    else
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80) /* also stops at the terminating NUL */
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    return cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) ? 0 : n;
}

/* A JSON string for any bytes: jansson refuses text that is not UTF-8, and a client
 * chooses what it sends (a database name "nosuchdb_\xff"), so each byte that is not part
 * of a well-formed sequence becomes the four characters \xNN. NULL only without memory. */
json_t *obs_json_bytes(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s), bad = 0;
    for (size_t i = 0, k; i < n; i += k ? k : 1)
        bad += (k = utf8_seq(p + i)) == 0;
    if (!bad)
        return json_string(s);
    char *out = malloc(n + 3 * bad + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0, k; i < n; i += k ? k : 1) {
        if ((k = utf8_seq(p + i)) == 0) {
            o += snprintf(o, 5, "\\x%02x", p[i]);
        } else {
            memcpy(o, p + i, k);
            o += k;
        }
    }
    *o = '\0';
    json_t *j = json_string(out);
    free(out);
    return j;
}

static json_t *jstr_or_null(const char *s)
{
    return s ? obs_json_bytes(s) : json_null();
}

static void time_rfc3339(int64_t ms, char *out, size_t outsz)
{
    if (ms <= 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    }
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char base[32];
    strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, outsz, "%s.%03dZ", base, (int)(ms % 1000));
}

static int set_str(json_t *o, const char *key, const char *v)
{
    json_t *j = jstr_or_null(v);
    return j && json_object_set_new(o, key, j) == 0 ? 0 : -1;
}

json_t *obs_audit_record(const obs_conn *c)
{
    char when[48];
    time_rfc3339(c->time_ms, when, sizeof(when));
    json_t *r = json_object();
    json_t *tags = json_array();
    int bad = !r || !tags;
    for (size_t i = 0; !bad && c->tags && i < c->ntags; i++)
        bad = json_array_append_new(tags, obs_json_bytes(c->tags[i])) != 0;
    if (!bad)
        bad = json_object_set_new(r, "tags", tags) != 0;
    else
        json_decref(tags);
    const char *keys[] = {"time",    "event",    "listener", "peer",    "login",
                          "node",    "database", "rules",    "presets", "role",
                          "outcome", "sqlstate", "message",  "reason"};
    const char *vals[] = {when,       c->event,    c->listener, c->peer,    c->login,
                          c->node,    c->database, c->rules,    c->presets, c->role,
                          c->outcome, c->sqlstate, c->message,  c->reason};
    for (size_t i = 0; !bad && i < sizeof(keys) / sizeof(keys[0]); i++)
        bad = set_str(r, keys[i], vals[i]);
    if (!bad)
        bad = json_object_set_new(r, "tls", json_boolean(c->tls)) != 0 ||
              json_object_set_new(r, "session",
                                  c->session_id ? json_integer((json_int_t)c->session_id)
                                                : json_null()) != 0 ||
              json_object_set_new(r, "duration_ms", json_integer(c->duration_ms)) != 0 ||
              json_object_set_new(r, "bytes_in", json_integer((json_int_t)c->bytes_in)) != 0 ||
              json_object_set_new(r, "bytes_out", json_integer((json_int_t)c->bytes_out)) != 0;
    if (bad) {
        json_decref(r);
        return NULL;
    }
    return r;
}

static void obs_audit(obs *o, const obs_conn *c)
{
    char err[512] = "out of memory encoding an audit record";
    json_t *rec = audit_enabled(o->audit) ? obs_audit_record(c) : NULL;
    int rc =
        rec ? audit_write(o->audit, rec, err, sizeof(err)) : (audit_enabled(o->audit) ? -1 : 1);
    json_decref(rec);
    if (rc < 0) {
        metrics_inc(metrics_series_get(o->audit_err, NULL), 1);
        log_kv(WP_LOG_ERROR, "audit_write_failed", "error", err, "audit_event", nz(c->event),
               "listener", nz(c->listener), "peer", nz(c->peer), (char *)NULL);
    }
}

const char *obs_refusal_reason(const char *stage, const char *sqlstate)
{
    const char *st = stage ? stage : "startup";
    sqlstate = nz(sqlstate);
    if (strcmp(st, "check") == 0) {
        if (strcmp(sqlstate, WP_SQLSTATE_TOO_MANY_CONN) == 0)
            return "listener_cap";
        if (strcmp(sqlstate, WP_SQLSTATE_INVALID_AUTH) == 0)
            return "tls_required";
        return strcmp(sqlstate, WP_SQLSTATE_FEATURE) == 0 ? "replication" : "protocol";
    }
    if (strcmp(st, "authorize") == 0) {
        if (strcmp(sqlstate, WP_SQLSTATE_TOO_MANY_CONN) == 0)
            return "user_cap";
        return strcmp(sqlstate, WP_SQLSTATE_BAD_PARAM) == 0 ? "invalid_presets" : "no_grant";
    }
    return st;
}

void obs_conn_refused(obs *o, const obs_conn *c)
{
    if (!o)
        return;
    const char *l = nz(c->listener);
    metrics_inc(metrics_series_get(o->conns, LBL(l, "refused")), 1);
    metrics_inc(metrics_series_get(o->refusals, LBL(l, nz(c->reason), nz(c->sqlstate))), 1);
    if (c->reason && strcmp(c->reason, "backend_login") == 0)
        metrics_inc(metrics_series_get(o->login_fail, LBL(l)), 1);
    obs_audit(o, c);
}

void obs_conn_accepted(obs *o, const obs_conn *c)
{
    if (o)
        obs_audit(o, c);
}

void obs_conn_ended(obs *o, const obs_conn *c)
{
    if (!o)
        return;
    const char *l = nz(c->listener);
    metrics_inc(metrics_series_get(o->conns, LBL(l, nz(c->outcome))), 1);
    metrics_inc(metrics_series_get(o->bytes, LBL(l, "client_to_backend")), c->bytes_in);
    metrics_inc(metrics_series_get(o->bytes, LBL(l, "backend_to_client")), c->bytes_out);
    obs_audit(o, c);
}

void obs_presets_str(const grant_effective *g, char *out, size_t outsz)
{
    size_t len = 0;
    out[0] = '\0';
    for (size_t i = 0; g && i < g->npairs; i++) {
        int n = snprintf(out + len, outsz - len, "%s%s:%s", i ? "," : "", g->pairs[i].schema,
                         grant_preset_str(g->pairs[i].preset));
        if (n < 0 || (size_t)n >= outsz - len) {
            out[len] = '\0'; /* whole entries only */
            return;
        }
        len += (size_t)n;
    }
}

/* ----------------------------------------------------------------- http ---- */

static enum MHD_Result obs_http_answer(struct MHD_Connection *conn, unsigned code, const char *body,
                                       char *owned, size_t len)
{
    struct MHD_Response *resp =
        owned ? MHD_create_response_from_buffer(len, owned, MHD_RESPMEM_MUST_FREE)
              : MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        free(owned);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            owned ? "text/plain; version=0.0.4; charset=utf-8"
                                  : "text/plain; charset=utf-8");
    enum MHD_Result r = MHD_queue_response(conn, code, resp);
    MHD_destroy_response(resp);
    return r;
}

static enum MHD_Result obs_http_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                        const char *method, const char *version,
                                        const char *upload_data, size_t *upload_data_size,
                                        void **con_cls)
{
    (void)version;
    (void)upload_data;
    obs *o = cls;
    if (*upload_data_size != 0) {
        *upload_data_size = 0; /* nothing here takes a body: discard it */
        return MHD_YES;
    }
    (void)con_cls;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return obs_http_answer(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET /metrics\n", NULL, 0);
    if (strcmp(url, "/metrics") != 0)
        return obs_http_answer(conn, MHD_HTTP_NOT_FOUND, "not found: try /metrics\n", NULL, 0);
    size_t len = 0;
    char *text = metrics_render(o->reg, &len);
    if (!text)
        return obs_http_answer(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n", NULL, 0);
    return obs_http_answer(conn, MHD_HTTP_OK, NULL, text, len);
}

static int obs_bind(const char *host, int port, wp_error *err)
{
    char service[16];
    snprintf(service, sizeof(service), "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host && *host ? host : NULL, service, &hints, &res);
    if (gai != 0) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "metrics listen address %s: %s", host,
                     gai_strerror(gai));
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 64) != 0) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "cannot listen for metrics on %s:%d: %s", host,
                     port, strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

wp_status obs_http_start(obs *o, const char *host, int port, wp_error *err)
{
    if (!o || o->http)
        return WP_ERR_INTERNAL;
    int fd = obs_bind(host, port, err);
    if (fd < 0)
        return WP_ERR_IO;
    o->http = MHD_start_daemon(
        MHD_USE_POLL_INTERNAL_THREAD | MHD_USE_ITC, 0, NULL, NULL, obs_http_handler, o,
        MHD_OPTION_LISTEN_SOCKET, fd, MHD_OPTION_CONNECTION_LIMIT, (unsigned)OBS_HTTP_CONN_LIMIT,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)OBS_HTTP_TIMEOUT_S, MHD_OPTION_END);
    if (!o->http) {
        close(fd);
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "cannot start the metrics HTTP server");
        return WP_ERR_INTERNAL;
    }
    o->http_fd = fd;
    return WP_OK;
}

void obs_http_stop(obs *o)
{
    if (!o || !o->http)
        return;
    /* Quiesce hands the listening socket back, so exactly one close happens, here. */
    MHD_socket fd = MHD_quiesce_daemon(o->http);
    MHD_stop_daemon(o->http);
    o->http = NULL;
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
    o->http_fd = -1;
}
