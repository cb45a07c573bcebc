/*
 * session: one client connection from its first byte to its log line (spec section 1).
 *
 * A worker thread calls sess_run() with the environment it should use: the config
 * snapshot current when the connection was accepted, with the per-listener objects
 * built for that snapshot (TLS server context, provisioning context) and the
 * process-wide ones (cancel map, stop fd, per-user connection counts). The server keeps
 * the environment alive (reference-counted) for as long as any session uses it.
 */
#ifndef WP_SESSION_H
#define WP_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "admit.h"
#include "cancel.h"
#include "config.h"
#include "fleet.h"
#include "obs.h"
#include "pool.h"
#include "provision.h"
#include "tailscale.h"
#include "tls.h"

typedef struct sess_users sess_users;

typedef struct sess_listener {
    const cfg_listener *cfg; /* inside sess_env.cfg */
    tls_server_ctx *tls;     /* NULL when tls_mode = off */
    prov_ctx *prov;
} sess_listener;

typedef struct sess_env {
    wp_config *cfg;
    ts_client *ts;
    sess_listener *listeners; /* cfg->nlisteners entries, in cfg order */
    cancel_map *cancel;       /* process-wide */
    sess_users *users;        /* process-wide live-connection counts per caller */
    fleet *fleet;             /* [redis]: counts shared by the fleet; NULL = per instance */
    pool *pool;               /* process-wide parked backend sessions; NULL = none */
    adm_table *admit;         /* process-wide unstarted connections per peer */
    uint64_t generation;      /* this environment's number: parked sessions stay in theirs */
    int stop_fd;              /* readable once open sessions must end; -1 = never */
    obs *obs;                 /* process-wide metrics, session registry, audit; may be NULL */
} sess_env;

/* Serves the connection on fd (and closes it). over_cap: only answer 53300. */
void sess_run(const sess_env *env, const sess_listener *l, int fd, int over_cap);

/* Per-caller connection counting for limits.max_conns_per_user (one per process). */
sess_users *sess_users_new(void);
void sess_users_free(sess_users *u);

/* "ip:port" or "[ipv6]:port" for a socket address; IPv4-mapped IPv6 addresses are
 * written as plain IPv4 (that is what tailscaled's WhoIs knows). 0 on success. */
int sess_format_peer(const void *sockaddr, size_t len, char *out, size_t outsz);

#endif
