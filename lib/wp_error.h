/*
 * wp_error: the one error vocabulary every module speaks.
 *
 * Functions return a wp_status (what kind of failure, for control flow) and, when the
 * failure must reach a client, fill a wp_error (what the client sees: SQLSTATE plus a
 * human message). session.c turns a wp_error into exactly one ErrorResponse, so modules
 * never write to the client themselves. Messages must never hold secrets: no password,
 * no admin credential, no full grant document, no other user's identity.
 */
#ifndef WP_ERROR_H
#define WP_ERROR_H

#include <stddef.h>

typedef enum {
    WP_OK = 0,
    WP_ERR_NOMEM,       /* allocation failed */
    WP_ERR_IO,          /* socket/file read or write failed */
    WP_ERR_CLOSED,      /* peer closed the connection */
    WP_ERR_TIMEOUT,     /* a deadline passed */
    WP_ERR_PROTOCOL,    /* peer sent something the protocol forbids */
    WP_ERR_TOO_LARGE,   /* a length exceeded its bound */
    WP_ERR_INVALID,     /* a value (config, grant, option) is not acceptable */
    WP_ERR_CONFIG,      /* configuration file problem */
    WP_ERR_NOT_FOUND,   /* looked-up thing does not exist (e.g. not on the tailnet) */
    WP_ERR_DENIED,      /* authorization refused */
    WP_ERR_AUTH,        /* authentication failed */
    WP_ERR_UNSUPPORTED, /* a method or feature we do not implement */
    WP_ERR_BACKEND,     /* the PostgreSQL backend failed or refused */
    WP_ERR_TAILSCALE,   /* tailscaled failed or misbehaved */
    WP_ERR_TLS,         /* TLS handshake or record failure */
    WP_ERR_CONFLICT,    /* a name is taken by someone else (role collision) */
    WP_ERR_INTERNAL,    /* a bug or an impossible state */
} wp_status;

const char *wp_status_str(wp_status st);

/* SQLSTATE codes Waypoint itself emits (PostgreSQL Appendix A). */
#define WP_SQLSTATE_INVALID_AUTH "28000"   /* invalid_authorization_specification */
#define WP_SQLSTATE_BAD_PASSWORD "28P01"   /* invalid_password */
#define WP_SQLSTATE_CONN_FAILURE "08006"   /* connection_failure */
#define WP_SQLSTATE_PROTOCOL "08P01"       /* protocol_violation */
#define WP_SQLSTATE_BAD_PARAM "22023"      /* invalid_parameter_value */
#define WP_SQLSTATE_TOO_MANY_CONN "53300"  /* too_many_connections */
#define WP_SQLSTATE_FEATURE "0A000"        /* feature_not_supported */
#define WP_SQLSTATE_INTERNAL "XX000"       /* internal_error */
#define WP_SQLSTATE_ADMIN_SHUTDOWN "57P01" /* admin_shutdown */
#define WP_SQLSTATE_CANT_CONNECT "57P03"   /* cannot_connect_now */
#define WP_SQLSTATE_UNDEFINED_DB "3D000"   /* invalid_catalog_name */

typedef struct wp_error {
    char sqlstate[6];
    char severity[8]; /* "FATAL" unless set otherwise */
    char message[512];
    char detail[512];
    char hint[256];
} wp_error;

void wp_error_clear(wp_error *e);
/* Sets sqlstate + formatted message; clears detail and hint. e may be NULL. */
void wp_error_set(wp_error *e, const char *sqlstate, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void wp_error_detail(wp_error *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void wp_error_hint(wp_error *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int wp_error_isset(const wp_error *e);

#endif
