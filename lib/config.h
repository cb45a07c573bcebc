/*
 * config: the waypoint.toml loader (spec section 10).
 *
 * The file is the TOML-shaped subset of the spec, parsed with inih. A loaded wp_config is
 * an immutable snapshot: workers take a reference (cfg_ref) when they start and drop it
 * when they end; SIGHUP loads a new snapshot and swaps it in for new connections only.
 * All durations are milliseconds, all sizes bytes.
 */
#ifndef WP_CONFIG_H
#define WP_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum { CFG_TLS_OFF = 0, CFG_TLS_OPTIONAL, CFG_TLS_REQUIRE } cfg_tls_mode;
typedef enum {
    CFG_BTLS_DISABLE = 0,
    CFG_BTLS_PREFER,
    CFG_BTLS_REQUIRE,
    CFG_BTLS_VERIFY_FULL
} cfg_backend_tls;
/* The highest TLS version offered to clients: a cap, never a requirement (TLS 1.2 is
 * always accepted). 1.3 is the default; a build whose library has no TLS 1.3 speaks 1.2
 * whatever the cap. */
typedef enum { CFG_TLSV_1_3 = 0, CFG_TLSV_1_2 } cfg_tls_version;

typedef struct cfg_limits {
    int64_t max_conns_per_user;   /* 0 = unlimited */
    int64_t max_conn_duration_ms; /* 0 = unlimited */
    int64_t max_bytes_per_conn;   /* 0 = unlimited */
} cfg_limits;

typedef struct cfg_listener {
    char *name;
    char *listen_host; /* "" = all addresses (":5432") */
    int listen_port;
    char *mode; /* always "postgres" after validation */
    char *backend_host;
    int backend_port;
    cfg_tls_mode tls_mode;  /* default optional */
    bool use_tailscale_tls; /* default true */
    char *cert_file;        /* NULL when unset; set together with key_file */
    char *key_file;
    int64_t tls_ticket_lifetime_ms;  /* session ticket key rotation; default 1h, 0 = no tickets */
    int64_t tls_session_cache_size;  /* resumable sessions by ID; default 1000, 0 = no cache */
    cfg_tls_version tls_max_version; /* toward clients; default 1.3 */
    cfg_backend_tls backend_tls;     /* default prefer */
    char *backend_ca_file;           /* NULL when unset */
    int64_t max_connections;         /* concurrent client connections; default 1000 */
    int64_t max_unstarted_per_peer;  /* per node (or address) before startup; 0 = off */

    /* [listeners.postgres] */
    char *admin_user;
    char *admin_password; /* secret: never printed or logged */
    char *admin_database; /* default "postgres" */
    char *user_prefix;    /* default "wp_" */
    int64_t user_ttl_ms;  /* default 24h */
    int allow_raw_sql;    /* -1 = inherit [provisioning] allow_raw_sql, else 0/1 */

    int line; /* line of the [[listeners]] header, for messages */
} cfg_listener;

typedef struct wp_config {
    atomic_int refs;
    char *path;

    /* [tailscale] */
    char *ts_socket;          /* default /var/run/tailscale/tailscaled.sock */
    char *ts_capability;      /* default redo.com/cap/waypoint */
    int64_t whois_timeout_ms; /* default 2s */

    /* [provisioning] */
    bool allow_raw_sql;            /* default false */
    int64_t cleanup_interval_ms;   /* default 10m; 0 disables the periodic pass */
    int64_t admin_idle_timeout_ms; /* default 60s; idle admin connections close after it */

    /* [revalidation] */
    int64_t revalidation_interval_ms; /* default 1m; 0 disables */
    int64_t revalidation_grace_ms;    /* default 5m: sessions whose identity could not be
                                         confirmed for this long end; 0 = never */

    /* [defaults.limits] */
    cfg_limits default_limits;

    /* [server] (Waypoint-C specific) */
    int64_t startup_timeout_ms; /* default 10s: first packet through upstream login */
    int64_t drain_timeout_ms;   /* default 30s */
    char *log_level;            /* default "info" */

    /* [metrics]: Prometheus endpoint, off unless listen is set */
    char *metrics_listen_host; /* "" = every address (needs allow_remote) */
    int metrics_listen_port;   /* 0 = off */
    bool metrics_allow_remote; /* default false: only loopback addresses */

    /* [admin] */
    char *admin_socket; /* unix socket for `waypoint sessions` / `kill`; NULL = none */

    /* [audit] */
    char *audit_file; /* JSON-lines audit trail; NULL = none */
    /* [pool] parked backend sessions (Waypoint-C specific, lib/pool.c) */
    bool pool_enabled;            /* default true */
    int64_t pool_idle_timeout_ms; /* default 60s */
    int64_t pool_max_per_role;    /* default 4 */
    int64_t pool_max_total;       /* default 100 */

    /* [redis]: state shared by a fleet of instances (lib/fleet.c); off unless address */
    char *redis_address;                 /* host:port, [v6]:port or /unix/path; NULL = off */
    char *redis_username;                /* ACL user; NULL = AUTH with the password only */
    char *redis_password;                /* secret: never printed or logged */
    int64_t redis_db;                    /* default 0 */
    char *redis_key_prefix;              /* default "waypoint:" */
    int64_t redis_connect_timeout_ms;    /* default 1s */
    int64_t redis_command_timeout_ms;    /* default 1s */
    int64_t redis_heartbeat_interval_ms; /* default 2s */
    int64_t redis_instance_ttl_ms;       /* default 10s: a dead instance's counts go after it */
    int64_t redis_pool_size;             /* default 8 connections */

    cfg_listener *listeners;
    size_t nlisteners;
} wp_config;

/* Diagnostics collected while loading: each entry is a full line such as
 * "waypoint.toml:12: key 'tls_mode': must be one of off, optional, require (got 'on')". */
typedef struct cfg_diag {
    char **errors;
    size_t nerrors;
    char **warnings;
    size_t nwarnings;
} cfg_diag;

/* Loads and validates path. Returns NULL when there is any error (all of them are in
 * diag). Warnings (ignored tsnet-edition keys) do not fail the load. */
wp_config *cfg_load(const char *path, cfg_diag *diag);
/* Reads only [admin] socket from path, for the admin CLI (`waypoint sessions`, `kill`):
 * the file's syntax is checked, but no other key is expanded, converted or required, so
 * it works without the secrets' ${VAR}s in the environment. 0 with *socket set (NULL
 * when the file has no [admin] socket; free it), -1 on an error (in diag). */
int cfg_admin_socket(const char *path, char **socket, cfg_diag *diag);
/* Same as cfg_load, from a string (unit tests); name is used in messages in place of a
 * path. */
wp_config *cfg_load_string(const char *text, const char *name, cfg_diag *diag);
void cfg_diag_free(cfg_diag *diag);
/* cfg_load for the daemon (start and SIGHUP reload): every warning and error becomes a
 * config_warning / config_error log line instead of being returned. */
wp_config *cfg_load_logged(const char *path);

wp_config *cfg_ref(wp_config *cfg);
void cfg_unref(wp_config *cfg);

/* Effective allow_raw_sql for a listener (per-listener override or global). */
bool cfg_listener_allow_raw_sql(const wp_config *cfg, const cfg_listener *l);

/* Prints the effective configuration in the file's own syntax, secrets masked. */
void cfg_print(const wp_config *cfg, FILE *out);

/* Value parsers, exposed for tests and for other modules. Return 0 on success. */
int cfg_parse_duration(const char *s, int64_t *ms_out);
int cfg_parse_size(const char *s, int64_t *bytes_out);

/* True for 127.0.0.0/8, ::1 and "localhost". */
int cfg_host_is_loopback(const char *host);

const char *cfg_tls_mode_str(cfg_tls_mode m);
const char *cfg_backend_tls_str(cfg_backend_tls m);
const char *cfg_tls_version_str(cfg_tls_version v);

#endif
