/*
 * listener: one listening socket per [[listeners]] entry, an accept thread, and one
 * detached worker thread per accepted client (spec section 1, step 1).
 *
 * The listener counts its live sessions so the server can drain them on shutdown, and
 * enforces the per-listener max_connections cap: a client over the cap still gets a
 * worker, flagged over_cap, so it can be told "too many connections" as a proper
 * ErrorResponse instead of a dropped socket.
 */
#ifndef WP_LISTENER_H
#define WP_LISTENER_H

#include <stddef.h>
#include <stdint.h>

#include "wp_error.h"

typedef struct lsn_listener lsn_listener;

/* Runs in the worker thread; owns fd and must close it. over_cap: refuse with 53300. */
typedef void (*lsn_serve_fn)(void *arg, lsn_listener *l, int fd, int over_cap);

/* Binds host:port (host "" = every address, IPv6 dual-stack when available). port 0
 * picks a free port (tests). Does not accept yet. */
wp_status lsn_open(const char *name, const char *host, int port, int64_t max_connections,
                   lsn_serve_fn serve, void *arg, lsn_listener **out, wp_error *err);
/* Starts the accept thread. */
wp_status lsn_start(lsn_listener *l);
/* Stops accepting (joins the accept thread, closes the socket). Sessions go on. */
void lsn_stop(lsn_listener *l);
/* Waits until no session is live or deadline_ms (absolute, wp_now_ms) passes; returns
 * the number of sessions still live. */
size_t lsn_wait_idle(lsn_listener *l, int64_t deadline_ms);
/* Frees the listener; call after lsn_stop and only once lsn_wait_idle returned 0. */
void lsn_free(lsn_listener *l);

void lsn_set_max_connections(lsn_listener *l, int64_t max_connections);
size_t lsn_live(lsn_listener *l);
int lsn_port(const lsn_listener *l);
const char *lsn_name(const lsn_listener *l);
/* The address this listener was opened with, "host:port" as configured. */
const char *lsn_address(const lsn_listener *l);

#endif
