/*
 * obs: Waypoint's observability hub: the metrics it exports, the HTTP endpoint that
 * serves them, the audit trail and the live-session registry.
 *
 * One obs per process, owned by the server context and reached by sessions through
 * sess_env (never through a global). Every function accepts a NULL obs as a no-op, so
 * code paths and tests that run without one need no checks.
 *
 * Labels are bounded by design: listener names (from the config), fixed outcome and
 * reason words, SQLSTATEs, and database names only on the admin-connection gauge (one
 * admin pool per database that exists). Never a login, a node or a role.
 */
#ifndef WP_OBS_H
#define WP_OBS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "audit.h"
#include "config.h"
#include "grant.h"
#include "metrics.h"
#include "sessreg.h"
#include "wp_error.h"

typedef struct obs obs;

typedef enum {
    OBS_H_WHOIS = 0,      /* LocalAPI WhoIs round trip, label result */
    OBS_H_PROVISION,      /* prov_ensure_role, label result */
    OBS_H_UPSTREAM_LOGIN, /* backend connect + authentication, label result */
    OBS_H_CONNECT,        /* accept to the first ReadyForQuery forwarded */
    OBS_H_COUNT
} obs_hist;

/* One connection decision (and, for relayed sessions, its end) as metrics and the audit
 * trail see it. Strings may be NULL (unknown at that point). */
typedef struct obs_conn {
    const char *event; /* "conn_refused", "conn_accepted" or "conn_end" */
    uint64_t session_id;
    const char *listener, *peer, *login, *node;
    char *const *tags;
    size_t ntags;
    const char *database, *role, *presets, *rules;
    int tls;
    const char *outcome;  /* conn_end: relay outcome; else "refused" / "accepted" */
    const char *reason;   /* conn_refused: bounded reason word (obs_reasons in obs.c) */
    const char *sqlstate; /* what the client was sent; "" when nothing could be sent */
    const char *message;
    int64_t duration_ms;
    uint64_t bytes_in, bytes_out;
    int64_t time_ms; /* wall clock (epoch ms) of the decision; 0 = now */
} obs_conn;

obs *obs_new(void);
void obs_free(obs *o);

metrics_registry *obs_registry(obs *o);
sessreg *obs_sessions(obs *o);

/* Starts the /metrics endpoint on host:port (the [metrics] listen values). */
wp_status obs_http_start(obs *o, const char *host, int port, wp_error *err);
void obs_http_stop(obs *o);

/* Audit file: set at start and on reload; reopened on every SIGHUP (logrotate). A
 * failure is logged and counted. */
int obs_audit_set_path(obs *o, const char *path);
void obs_audit_reopen(obs *o);

/* Connection decisions: metrics, and one audit record each. */
void obs_conn_refused(obs *o, const obs_conn *c);
void obs_conn_accepted(obs *o, const obs_conn *c);
void obs_conn_ended(obs *o, const obs_conn *c);

/* The reason word of a refusal from the session step that refused ("check",
 * "authorize", or a word used as is: "startup", "not_on_tailnet", "tailscale",
 * "backend_unreachable", "provision", "backend_login", "backend_refused") and the
 * SQLSTATE sent: "check" and "authorize" are split by SQLSTATE (listener_cap,
 * tls_required, replication, protocol; user_cap, invalid_presets, no_grant). */
const char *obs_refusal_reason(const char *stage, const char *sqlstate);

/* The audit record for c (new reference; NULL without memory). Exposed for tests.
 * Strings may hold any bytes: those that are not UTF-8 appear as \xNN (obs_json_bytes). */
json_t *obs_audit_record(const obs_conn *c);
/* A JSON string of s, each byte not in a well-formed UTF-8 sequence written as the four
 * characters \xNN (a backslash already in s is kept as is). NULL only without memory. */
json_t *obs_json_bytes(const char *s);

int64_t obs_now_us(void); /* CLOCK_MONOTONIC microseconds */
void obs_observe(obs *o, obs_hist h, const char *listener, const char *result, int64_t us);
void obs_cancel(obs *o, const char *listener, const char *result);
void obs_revalidation(obs *o, const char *listener, const char *result);
/* what: "created", "refreshed" or "dropped" (by cleanup). */
void obs_roles(obs *o, const char *listener, const char *what, uint64_t n);
void obs_reloaded(obs *o, int ok);
/* One completed TLS handshake with a client (resumed: from a ticket or the cache). */
void obs_tls_handshake(obs *o, const char *listener, int resumed);

/* Creates a listener's gauges at 0 (active sessions, parked sessions). */
void obs_listener_init(obs *o, const char *listener);

/* Hook for the backend-session pool (lib/pool.c): parked backend sessions of a
 * listener. Stays 0 until a pool calls it. */
void obs_set_parked(obs *o, const char *listener, int n);

/* Source of the admin-connections gauges, asked at every scrape: it calls emit once per
 * (listener, database) with the open connections and how many of them are idle. */
typedef void (*obs_emit_fn)(obs *o, const char *listener, const char *database, int open, int idle);
typedef void (*obs_admin_source_fn)(void *arg, obs *o, obs_emit_fn emit);
void obs_set_admin_source(obs *o, obs_admin_source_fn fn, void *arg);

/* "app:readwrite,public:readonly" (schema:preset, the effective pairs; "" for no grant). */
void obs_presets_str(const grant_effective *g, char *out, size_t outsz);

#endif
