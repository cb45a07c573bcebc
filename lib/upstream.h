/*
 * upstream: the connection from Waypoint to the PostgreSQL backend (spec section 6).
 *
 * up_connect opens TCP (and TLS per backend_tls); up_login sends the StartupMessage and
 * completes whatever authentication the backend asks for as the provisioned role. On
 * success the backend has sent AuthenticationOk and the caller continues reading the
 * ParameterStatus/BackendKeyData/ReadyForQuery stream itself.
 */
#ifndef WP_UPSTREAM_H
#define WP_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "io.h"
#include "pgwire.h"
#include "wp_error.h"

typedef struct up_conn {
    wp_io io;
    int fd;
    void *tls;                 /* tls.c client state when the link is TLS, else NULL */
    unsigned char cb_hash[64]; /* tls-server-end-point channel binding data */
    size_t cb_len;             /* 0 when not TLS */
    uint32_t proto; /* set by up_login: the version the backend speaks, lower than the one
                     * asked for when it answered NegotiateProtocolVersion */
} up_conn;

/* TCP connect with timeout, then TLS according to mode/ca_file (server name = host).
 * Failures: WP_ERR_BACKEND (WP_ERR_TIMEOUT past the deadline) with SQLSTATE 08006, a
 * message for the client that names no address, and the details (host:port, errno, TLS
 * error) in err->detail, for the log only. */
wp_status up_connect(up_conn *c, const char *host, int port, cfg_backend_tls mode,
                     const char *ca_file, int64_t deadline_ms, wp_error *err);
void up_close(up_conn *c);
/* Sends Terminate (bounded by deadline_ms, best effort) and closes: a polite end that an
 * idle backend answers by exiting. */
void up_terminate(up_conn *c, int64_t deadline_ms);

/* Sends StartupMessage(version, params) and authenticates as user/password.
 * A backend ErrorResponse gives WP_ERR_BACKEND with the backend's SQLSTATE (e.g. 28P01)
 * and "the backend refused the login"; its own message goes to err->detail (log-only:
 * it may name hosts, pg_hba lines or roles). Only 3D000 keeps the backend's message, as
 * a direct login would show it. Unsupported methods are WP_ERR_UNSUPPORTED naming the
 * method; a deadline passing is WP_ERR_TIMEOUT. */
wp_status up_login(up_conn *c, uint32_t version, const pgw_param *params, size_t nparams,
                   const char *user, const char *password, int64_t deadline_ms, wp_error *err);

/* Sends a CancelRequest to host:port (new connection, per protocol). Best effort. */
wp_status up_send_cancel(const char *host, int port, uint32_t pid, const unsigned char *key,
                         size_t key_len, int64_t deadline_ms);

#endif
