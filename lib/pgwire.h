/*
 * pgwire: PostgreSQL frontend/backend protocol framing (spec section 7).
 *
 * Protocol constants live here and nowhere else. Readers bound every length before
 * allocating; builders append to a pgw_buf that the caller reuses. Nothing in this
 * module talks to tailscaled or the database: it only frames bytes over a wp_io.
 */
#ifndef WP_PGWIRE_H
#define WP_PGWIRE_H

#include <stddef.h>
#include <stdint.h>

#include "io.h"
#include "wp_error.h"

#define PGW_PROTO(maj, min) (((uint32_t)(maj) << 16) | (uint32_t)(min))
#define PGW_PROTO_30 PGW_PROTO(3, 0)
#define PGW_PROTO_32 PGW_PROTO(3, 2)
#define PGW_CODE_SSL 80877103u
#define PGW_CODE_GSSENC 80877104u
#define PGW_CODE_CANCEL 80877102u

#define PGW_STARTUP_MAX 10240     /* spec 7.1: StartupMessage <= 10 KB */
#define PGW_MSG_MAX (1024 * 1024) /* bound for messages Waypoint itself parses */
#define PGW_CANCEL_KEY_MAX 256    /* protocol 3.2 allows variable-length keys */

/* Backend message types Waypoint inspects. */
#define PGW_MSG_AUTH 'R'
#define PGW_MSG_ERROR 'E'
#define PGW_MSG_NOTICE 'N'
#define PGW_MSG_PARAMETER_STATUS 'S'
#define PGW_MSG_BACKEND_KEY 'K'
#define PGW_MSG_READY 'Z'
#define PGW_MSG_NEGOTIATE 'v'
/* Frontend message types Waypoint sends. */
#define PGW_MSG_PASSWORD 'p' /* also SASLInitialResponse / SASLResponse */
#define PGW_MSG_TERMINATE 'X'

/* Authentication request codes (message 'R'). */
#define PGW_AUTH_OK 0
#define PGW_AUTH_KERBEROS_V5 2
#define PGW_AUTH_CLEARTEXT 3
#define PGW_AUTH_MD5 5
#define PGW_AUTH_GSS 7
#define PGW_AUTH_GSS_CONTINUE 8
#define PGW_AUTH_SSPI 9
#define PGW_AUTH_SASL 10
#define PGW_AUTH_SASL_CONTINUE 11
#define PGW_AUTH_SASL_FINAL 12

/* Growable byte buffer; builders append, readers fill. */
typedef struct pgw_buf {
    unsigned char *data;
    size_t len;
    size_t cap;
} pgw_buf;

wp_status pgw_buf_reserve(pgw_buf *b, size_t extra);
wp_status pgw_buf_append(pgw_buf *b, const void *p, size_t n);
void pgw_buf_reset(pgw_buf *b); /* len = 0, keeps memory */
void pgw_buf_free(pgw_buf *b);

typedef struct pgw_param {
    char *key;
    char *value;
} pgw_param;

typedef enum {
    PGW_START_STARTUP = 1, /* a StartupMessage */
    PGW_START_SSL,         /* SSLRequest */
    PGW_START_GSSENC,      /* GSSENCRequest */
    PGW_START_CANCEL,      /* CancelRequest */
    PGW_START_DIRECT_TLS,  /* first byte 0x16: a TLS ClientHello (nothing consumed) */
} pgw_start_kind;

typedef struct pgw_startup {
    pgw_start_kind kind;
    uint32_t version;  /* requested protocol for STARTUP */
    pgw_param *params; /* STARTUP: in client order, "user" always present */
    size_t nparams;
    char **pq_options; /* "_pq_.*" names the client asked for (to be refused) */
    size_t npq_options;
    uint32_t cancel_pid; /* CANCEL */
    unsigned char cancel_key[PGW_CANCEL_KEY_MAX];
    size_t cancel_key_len;
} pgw_startup;

/* Reads one startup-phase packet before deadline_ms. For DIRECT_TLS it peeks (MSG_PEEK)
 * and consumes nothing. Malformed input: WP_ERR_PROTOCOL / WP_ERR_TOO_LARGE with err
 * (SQLSTATE 08P01) saying what was wrong. */
wp_status pgw_read_startup(wp_io *io, int64_t deadline_ms, pgw_startup *out, wp_error *err);
/* Parses an already-read packet body (after the 4-byte length). Used by the reader and
 * by fuzzing. */
wp_status pgw_parse_startup(const unsigned char *body, size_t len, pgw_startup *out, wp_error *err);
void pgw_startup_free(pgw_startup *s);
const char *pgw_startup_get(const pgw_startup *s, const char *key);

/* Reads one typed message: *type, body into b (reset first). Bodies over max_len are
 * WP_ERR_TOO_LARGE before any allocation. */
wp_status pgw_read_msg(wp_io *io, int64_t deadline_ms, size_t max_len, char *type, pgw_buf *b);

/* Big-endian int32 as the protocol carries it. */
uint32_t pgw_get32(const unsigned char *p);
void pgw_put32(unsigned char *p, uint32_t v);

/* Builders (append a complete message to b). */
/* Any typed message from an already-framed body (relaying what a peer sent). */
wp_status pgw_build_raw(pgw_buf *b, char type, const void *body, size_t len);
wp_status pgw_build_auth_ok(pgw_buf *b);
wp_status pgw_build_error(pgw_buf *b, const wp_error *e); /* severity defaults to FATAL */
/* NegotiateProtocolVersion; the wire field is PGW_PROTO(3, newest_minor), as PostgreSQL
 * and libpq use it. */
wp_status pgw_build_negotiate(pgw_buf *b, uint32_t newest_minor, char *const *unsupported,
                              size_t n);
wp_status pgw_build_backend_key(pgw_buf *b, uint32_t pid, const unsigned char *key, size_t key_len);
wp_status pgw_build_startup(pgw_buf *b, uint32_t version, const pgw_param *params, size_t nparams);
wp_status pgw_build_password(pgw_buf *b, const char *password); /* 'p' + cstring */
wp_status pgw_build_sasl_initial(pgw_buf *b, const char *mech, const void *data, size_t n);
wp_status pgw_build_sasl_response(pgw_buf *b, const void *data, size_t n);
wp_status pgw_build_cancel(pgw_buf *b, uint32_t pid, const unsigned char *key, size_t key_len);

/* Parses an ErrorResponse/NoticeResponse body into e (S/V, C, M, D, H fields). */
wp_status pgw_parse_error(const unsigned char *body, size_t len, wp_error *e);

#endif
