/*
 * wp_error: status names and the fixed-size client error record. Fixed-size buffers keep
 * error paths allocation-free, so an out-of-memory failure can still be reported.
 */
#include "wp_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *wp_status_str(wp_status st)
{
    switch (st) {
    case WP_OK:
        return "ok";
    case WP_ERR_NOMEM:
        return "out of memory";
    case WP_ERR_IO:
        return "i/o error";
    case WP_ERR_CLOSED:
        return "connection closed";
    case WP_ERR_TIMEOUT:
        return "timeout";
    case WP_ERR_PROTOCOL:
        return "protocol violation";
    case WP_ERR_TOO_LARGE:
        return "too large";
    case WP_ERR_INVALID:
        return "invalid value";
    case WP_ERR_CONFIG:
        return "configuration error";
    case WP_ERR_NOT_FOUND:
        return "not found";
    case WP_ERR_DENIED:
        return "permission denied";
    case WP_ERR_AUTH:
        return "authentication failed";
    case WP_ERR_UNSUPPORTED:
        return "unsupported";
    case WP_ERR_BACKEND:
        return "backend error";
    case WP_ERR_TAILSCALE:
        return "tailscale error";
    case WP_ERR_TLS:
        return "tls error";
    case WP_ERR_CONFLICT:
        return "name conflict";
    case WP_ERR_INTERNAL:
        return "internal error";
    }
    return "unknown status";
}

void wp_error_clear(wp_error *e)
{
    if (e)
        memset(e, 0, sizeof(*e));
}

void wp_error_set(wp_error *e, const char *sqlstate, const char *fmt, ...)
{
    if (!e)
        return;
    wp_error_clear(e);
    snprintf(e->sqlstate, sizeof(e->sqlstate), "%s", sqlstate ? sqlstate : WP_SQLSTATE_INTERNAL);
    snprintf(e->severity, sizeof(e->severity), "FATAL");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
}

void wp_error_detail(wp_error *e, const char *fmt, ...)
{
    if (!e)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->detail, sizeof(e->detail), fmt, ap);
    va_end(ap);
}

void wp_error_hint(wp_error *e, const char *fmt, ...)
{
    if (!e)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->hint, sizeof(e->hint), fmt, ap);
    va_end(ap);
}

int wp_error_isset(const wp_error *e)
{
    return e && e->sqlstate[0] != '\0';
}
