/*
 * pgwire: framing for the PostgreSQL frontend/backend protocol (spec section 7).
 *
 * Two directions meet here. Inbound, a client's first packet is read with its 4-byte
 * length checked against [8, PGW_STARTUP_MAX] before anything is allocated, then parsed
 * strictly: every malformation gets its own 08P01 message so a developer whose driver
 * misbehaves can see why. Outbound, builders append complete messages to a pgw_buf the
 * caller reuses; each builder writes a placeholder length and patches it at the end, so
 * there is one place (msg_end) where lengths are computed.
 *
 * Integers on the wire are big-endian int32/int16; pgw_get32/pgw_put32 are the only byte-order
 * code. Nothing here knows about TLS: a direct TLS ClientHello (first byte 0x16) is only
 * detected with MSG_PEEK on a plain stream and left in the socket for tls.c.
 */
#include "pgwire.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define TLS_HANDSHAKE_BYTE 0x16

/* ---- byte order ---- */

uint32_t pgw_get32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

void pgw_put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* ---- pgw_buf ---- */

wp_status pgw_buf_reserve(pgw_buf *b, size_t extra)
{
    if (extra > SIZE_MAX - b->len)
        return WP_ERR_TOO_LARGE;
    size_t need = b->len + extra;
    if (need <= b->cap)
        return WP_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    unsigned char *p = realloc(b->data, cap);
    if (!p)
        return WP_ERR_NOMEM;
    b->data = p;
    b->cap = cap;
    return WP_OK;
}

wp_status pgw_buf_append(pgw_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return WP_OK;
    wp_status st = pgw_buf_reserve(b, n);
    if (st != WP_OK)
        return st;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return WP_OK;
}

void pgw_buf_reset(pgw_buf *b)
{
    b->len = 0;
}

void pgw_buf_free(pgw_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static wp_status buf_put32(pgw_buf *b, uint32_t v)
{
    unsigned char tmp[4];
    pgw_put32(tmp, v);
    return pgw_buf_append(b, tmp, 4);
}

static wp_status buf_putstr(pgw_buf *b, const char *s)
{
    return pgw_buf_append(b, s, strlen(s) + 1);
}

/* ---- startup packets ---- */

static wp_status proto_err(wp_error *err, const char *msg)
{
    wp_error_set(err, WP_SQLSTATE_PROTOCOL, "invalid startup packet: %s", msg);
    return WP_ERR_PROTOCOL;
}

void pgw_startup_free(pgw_startup *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nparams; i++) {
        free(s->params[i].key);
        free(s->params[i].value);
    }
    free(s->params);
    for (size_t i = 0; i < s->npq_options; i++)
        free(s->pq_options[i]);
    free(s->pq_options);
    memset(s, 0, sizeof(*s));
}

const char *pgw_startup_get(const pgw_startup *s, const char *key)
{
    for (size_t i = 0; i < s->nparams; i++)
        if (strcmp(s->params[i].key, key) == 0)
            return s->params[i].value;
    return NULL;
}

static int seen_key(const pgw_startup *s, const char *key)
{
    if (pgw_startup_get(s, key))
        return 1;
    for (size_t i = 0; i < s->npq_options; i++)
        if (strcmp(s->pq_options[i], key) == 0)
            return 1;
    return 0;
}

static wp_status add_pq_option(pgw_startup *s, const char *key)
{
    char **p = realloc(s->pq_options, (s->npq_options + 1) * sizeof(*p));
    if (!p)
        return WP_ERR_NOMEM;
    s->pq_options = p;
    if (!(p[s->npq_options] = strdup(key)))
        return WP_ERR_NOMEM;
    s->npq_options++;
    return WP_OK;
}

static wp_status add_param(pgw_startup *s, const char *key, const char *value)
{
    pgw_param *p = realloc(s->params, (s->nparams + 1) * sizeof(*p));
    if (!p)
        return WP_ERR_NOMEM;
    s->params = p;
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        return WP_ERR_NOMEM;
    }
    p[s->nparams].key = k;
    p[s->nparams].value = v;
    s->nparams++;
    return WP_OK;
}

/* The parameter list is "key\0value\0...key\0value\0\0". The final empty key is the
 * terminator and must be the last byte: an empty name anywhere else is an error. */
static wp_status parse_params(const unsigned char *p, size_t len, pgw_startup *out, wp_error *err)
{
    size_t pos = 0;
    for (;;) {
        if (pos >= len)
            return proto_err(err, "missing terminator after the parameter list");
        if (p[pos] == '\0') {
            if (pos + 1 != len)
                return proto_err(err, "empty parameter name (or data after the terminator)");
            break;
        }
        const unsigned char *kend = memchr(p + pos, '\0', len - pos);
        if (!kend)
            return proto_err(err, "missing terminator after a parameter name");
        const char *key = (const char *)p + pos;
        pos = (size_t)(kend - p) + 1;
        if (pos >= len)
            return proto_err(err, "odd parameter list: a name without a value");
        const unsigned char *vend = memchr(p + pos, '\0', len - pos);
        if (!vend)
            return proto_err(err, "missing terminator after a parameter value");
        const char *value = (const char *)p + pos;
        pos = (size_t)(vend - p) + 1;
        if (seen_key(out, key)) {
            wp_error_set(err, WP_SQLSTATE_PROTOCOL,
                         "invalid startup packet: parameter \"%.64s\" given twice", key);
            return WP_ERR_PROTOCOL;
        }
        wp_status st =
            strncmp(key, "_pq_.", 5) == 0 ? add_pq_option(out, key) : add_param(out, key, value);
        if (st != WP_OK)
            return st;
    }
    if (!pgw_startup_get(out, "user"))
        return proto_err(err, "no user name specified");
    return WP_OK;
}

static wp_status parse_cancel(const unsigned char *body, size_t len, pgw_startup *out,
                              wp_error *err)
{
    if (len < 8 + 4 || len - 8 > PGW_CANCEL_KEY_MAX)
        return proto_err(err, "cancel request key must be 4 to 256 bytes");
    out->kind = PGW_START_CANCEL;
    out->cancel_pid = pgw_get32(body + 4);
    out->cancel_key_len = len - 8;
    memcpy(out->cancel_key, body + 8, out->cancel_key_len);
    return WP_OK;
}

wp_status pgw_parse_startup(const unsigned char *body, size_t len, pgw_startup *out, wp_error *err)
{
    memset(out, 0, sizeof(*out));
    if (len < 4)
        return proto_err(err, "packet too short");
    if (len + 4 > PGW_STARTUP_MAX)
        return proto_err(err, "packet too long");
    uint32_t code = pgw_get32(body);
    if (code == PGW_CODE_SSL || code == PGW_CODE_GSSENC) {
        if (len != 4)
            return proto_err(err, "SSLRequest/GSSENCRequest must be exactly 8 bytes");
        out->kind = code == PGW_CODE_SSL ? PGW_START_SSL : PGW_START_GSSENC;
        return WP_OK;
    }
    if (code == PGW_CODE_CANCEL)
        return parse_cancel(body, len, out, err);
    if (code >> 16 != 3) {
        wp_error_set(err, WP_SQLSTATE_PROTOCOL,
                     "unsupported frontend protocol %u.%u: Waypoint supports 3.0 to 3.2",
                     code >> 16, code & 0xffff);
        return WP_ERR_PROTOCOL;
    }
    out->kind = PGW_START_STARTUP;
    out->version = code;
    wp_status st = parse_params(body + 4, len - 4, out, err);
    if (st != WP_OK) {
        pgw_startup_free(out);
        if (st == WP_ERR_NOMEM)
            wp_error_set(err, WP_SQLSTATE_INTERNAL, "out of memory");
    }
    return st;
}

/* A direct TLS connection (PostgreSQL 17 sslnegotiation=direct) starts with a TLS
 * handshake record. Only a plain stream can carry one: inside TLS the byte at the
 * socket would be ciphertext framing, not the client's first byte. */
static int peek_direct_tls(wp_io *io)
{
    if (io->impl != NULL || io_pending(io) > 0)
        return 0;
    unsigned char b;
    ssize_t r;
    do {
        r = recv(io->fd, &b, 1, MSG_PEEK);
    } while (r < 0 && errno == EINTR);
    return r == 1 && b == TLS_HANDSHAKE_BYTE;
}

static wp_status read_err(wp_status st, wp_error *err)
{
    if (st == WP_ERR_TIMEOUT)
        wp_error_set(err, WP_SQLSTATE_PROTOCOL, "timed out waiting for the startup packet");
    else if (st == WP_ERR_CLOSED)
        wp_error_set(err, WP_SQLSTATE_PROTOCOL, "incomplete startup packet");
    else
        wp_error_set(err, WP_SQLSTATE_CONN_FAILURE, "could not read the startup packet");
    return st;
}

wp_status pgw_read_startup(wp_io *io, int64_t deadline_ms, pgw_startup *out, wp_error *err)
{
    memset(out, 0, sizeof(*out));
    wp_status st = io_wait_readable(io, deadline_ms);
    if (st != WP_OK)
        return read_err(st, err);
    if (peek_direct_tls(io)) {
        out->kind = PGW_START_DIRECT_TLS;
        return WP_OK;
    }
    unsigned char hdr[4];
    if ((st = io_read_full(io, hdr, 4, deadline_ms)) != WP_OK)
        return read_err(st, err);
    uint32_t len = pgw_get32(hdr);
    if (len < 8) {
        proto_err(err, "length shorter than 8 bytes");
        return WP_ERR_PROTOCOL;
    }
    if (len > PGW_STARTUP_MAX) {
        wp_error_set(err, WP_SQLSTATE_PROTOCOL,
                     "invalid startup packet: length %u exceeds the %d-byte limit", len,
                     PGW_STARTUP_MAX);
        return WP_ERR_TOO_LARGE;
    }
    unsigned char *body = malloc(len - 4);
    if (!body) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "out of memory");
        return WP_ERR_NOMEM;
    }
    st = io_read_full(io, body, len - 4, deadline_ms);
    if (st == WP_OK)
        st = pgw_parse_startup(body, len - 4, out, err);
    else
        read_err(st, err);
    free(body);
    return st;
}

/* ---- typed messages ---- */

wp_status pgw_read_msg(wp_io *io, int64_t deadline_ms, size_t max_len, char *type, pgw_buf *b)
{
    pgw_buf_reset(b);
    unsigned char hdr[5];
    wp_status st = io_read_full(io, hdr, 5, deadline_ms);
    if (st != WP_OK)
        return st;
    uint32_t len = pgw_get32(hdr + 1);
    if (len < 4)
        return WP_ERR_PROTOCOL;
    if ((size_t)len - 4 > max_len)
        return WP_ERR_TOO_LARGE;
    *type = (char)hdr[0];
    if ((st = pgw_buf_reserve(b, len - 4)) != WP_OK)
        return st;
    if ((st = io_read_full(io, b->data, len - 4, deadline_ms)) != WP_OK)
        return st;
    b->len = len - 4;
    return WP_OK;
}

/* Starts a message: type byte (0 = untyped startup-phase packet) and a length slot.
 * *start is where the message begins, for msg_end. */
static wp_status msg_begin(pgw_buf *b, char type, size_t *start)
{
    wp_status st = pgw_buf_reserve(b, 5);
    if (st != WP_OK)
        return st;
    *start = b->len;
    if (type)
        b->data[b->len++] = (unsigned char)type;
    return buf_put32(b, 0);
}

/* Patches the length (which counts itself but not the type byte). On failure the
 * half-built message is dropped so the buffer still holds only whole messages. */
static wp_status msg_end(pgw_buf *b, size_t start, wp_status st)
{
    /* A typed message starts with its (non-zero) type byte; an untyped packet with the
     * zeroed length slot. */
    size_t slot = start + (b->data[start] == 0 ? 0 : 1);
    if (st == WP_OK && b->len - slot > PGW_MSG_MAX)
        st = WP_ERR_TOO_LARGE;
    if (st != WP_OK) {
        b->len = start;
        return st;
    }
    pgw_put32(b->data + slot, (uint32_t)(b->len - slot));
    return WP_OK;
}

wp_status pgw_build_raw(pgw_buf *b, char type, const void *body, size_t len)
{
    size_t start;
    wp_status st = msg_begin(b, type, &start);
    if (st == WP_OK)
        st = pgw_buf_append(b, body, len);
    return msg_end(b, start, st);
}

wp_status pgw_build_auth_ok(pgw_buf *b)
{
    size_t s;
    wp_status st = msg_begin(b, PGW_MSG_AUTH, &s);
    if (st == WP_OK)
        st = buf_put32(b, PGW_AUTH_OK);
    return msg_end(b, s, st);
}

static wp_status put_field(pgw_buf *b, char code, const char *v)
{
    wp_status st = pgw_buf_append(b, &code, 1);
    return st == WP_OK ? buf_putstr(b, v) : st;
}

wp_status pgw_build_error(pgw_buf *b, const wp_error *e)
{
    const char *sev = e->severity[0] ? e->severity : "FATAL";
    const char *code = e->sqlstate[0] ? e->sqlstate : WP_SQLSTATE_INTERNAL;
    size_t s;
    wp_status st = msg_begin(b, PGW_MSG_ERROR, &s);
    if (st == WP_OK)
        st = put_field(b, 'S', sev);
    if (st == WP_OK)
        st = put_field(b, 'V', sev);
    if (st == WP_OK)
        st = put_field(b, 'C', code);
    if (st == WP_OK)
        st = put_field(b, 'M', e->message);
    if (st == WP_OK && e->detail[0])
        st = put_field(b, 'D', e->detail);
    if (st == WP_OK && e->hint[0])
        st = put_field(b, 'H', e->hint);
    if (st == WP_OK)
        st = pgw_buf_append(b, "", 1);
    return msg_end(b, s, st);
}

/* The protocol docs call the first field the "newest minor version", but PostgreSQL
 * sends the full version (PG_PROTOCOL_LATEST, major << 16 | minor) and libpq rejects
 * anything below 3.0 as a downgrade to a pre-3.0 protocol; so the wire carries
 * PGW_PROTO(3, newest_minor). */
wp_status pgw_build_negotiate(pgw_buf *b, uint32_t newest_minor, char *const *unsupported, size_t n)
{
    if (n > UINT32_MAX)
        return WP_ERR_TOO_LARGE;
    size_t s;
    wp_status st = msg_begin(b, PGW_MSG_NEGOTIATE, &s);
    if (st == WP_OK)
        st = buf_put32(b, PGW_PROTO(3, newest_minor));
    if (st == WP_OK)
        st = buf_put32(b, (uint32_t)n);
    for (size_t i = 0; st == WP_OK && i < n; i++)
        st = buf_putstr(b, unsupported[i]);
    return msg_end(b, s, st);
}

wp_status pgw_build_backend_key(pgw_buf *b, uint32_t pid, const unsigned char *key, size_t key_len)
{
    if (key_len < 4 || key_len > PGW_CANCEL_KEY_MAX)
        return WP_ERR_INVALID;
    size_t s;
    wp_status st = msg_begin(b, PGW_MSG_BACKEND_KEY, &s);
    if (st == WP_OK)
        st = buf_put32(b, pid);
    if (st == WP_OK)
        st = pgw_buf_append(b, key, key_len);
    return msg_end(b, s, st);
}

wp_status pgw_build_startup(pgw_buf *b, uint32_t version, const pgw_param *params, size_t nparams)
{
    size_t s;
    wp_status st = msg_begin(b, 0, &s);
    if (st == WP_OK)
        st = buf_put32(b, version);
    for (size_t i = 0; st == WP_OK && i < nparams; i++) {
        if (params[i].key[0] == '\0')
            st = WP_ERR_INVALID; /* an empty name would end the list early */
        else if ((st = buf_putstr(b, params[i].key)) == WP_OK)
            st = buf_putstr(b, params[i].value);
    }
    if (st == WP_OK)
        st = pgw_buf_append(b, "", 1);
    return msg_end(b, s, st);
}

wp_status pgw_build_password(pgw_buf *b, const char *password)
{
    size_t s;
    wp_status st = msg_begin(b, PGW_MSG_PASSWORD, &s);
    if (st == WP_OK)
        st = buf_putstr(b, password);
    return msg_end(b, s, st);
}

wp_status pgw_build_sasl_initial(pgw_buf *b, const char *mech, const void *data, size_t n)
{
    if (n > PGW_MSG_MAX)
        return WP_ERR_TOO_LARGE;
    size_t s;
    wp_status st = msg_begin(b, PGW_MSG_PASSWORD, &s);
    if (st == WP_OK)
        st = buf_putstr(b, mech);
    if (st == WP_OK)
        st = buf_put32(b, (uint32_t)n);
    if (st == WP_OK)
        st = pgw_buf_append(b, data, n);
    return msg_end(b, s, st);
}

wp_status pgw_build_sasl_response(pgw_buf *b, const void *data, size_t n)
{
    size_t s;
    wp_status st = msg_begin(b, PGW_MSG_PASSWORD, &s);
    if (st == WP_OK)
        st = pgw_buf_append(b, data, n);
    return msg_end(b, s, st);
}

wp_status pgw_build_cancel(pgw_buf *b, uint32_t pid, const unsigned char *key, size_t key_len)
{
    if (key_len < 4 || key_len > PGW_CANCEL_KEY_MAX)
        return WP_ERR_INVALID;
    size_t s;
    wp_status st = msg_begin(b, 0, &s);
    if (st == WP_OK)
        st = buf_put32(b, PGW_CODE_CANCEL);
    if (st == WP_OK)
        st = buf_put32(b, pid);
    if (st == WP_OK)
        st = pgw_buf_append(b, key, key_len);
    return msg_end(b, s, st);
}

/* ---- ErrorResponse / NoticeResponse ---- */

static void copy_field(char *dst, size_t dstsz, const char *v)
{
    snprintf(dst, dstsz, "%s", v);
}

wp_status pgw_parse_error(const unsigned char *body, size_t len, wp_error *e)
{
    wp_error_clear(e);
    int have_v = 0;
    size_t pos = 0;
    while (pos < len && body[pos] != '\0') {
        char code = (char)body[pos++];
        const unsigned char *end = memchr(body + pos, '\0', len - pos);
        if (!end)
            return WP_ERR_PROTOCOL;
        const char *v = (const char *)body + pos;
        pos = (size_t)(end - body) + 1;
        switch (code) {
        case 'V': /* non-localized severity wins over 'S' */
            copy_field(e->severity, sizeof(e->severity), v);
            have_v = 1;
            break;
        case 'S':
            if (!have_v)
                copy_field(e->severity, sizeof(e->severity), v);
            break;
        case 'C':
            copy_field(e->sqlstate, sizeof(e->sqlstate), v);
            break;
        case 'M':
            copy_field(e->message, sizeof(e->message), v);
            break;
        case 'D':
            copy_field(e->detail, sizeof(e->detail), v);
            break;
        case 'H':
            copy_field(e->hint, sizeof(e->hint), v);
            break;
        default:
            break; /* position, where, file, ...: not forwarded */
        }
    }
    if (pos >= len)
        return WP_ERR_PROTOCOL; /* no terminating NUL */
    if (strlen(e->sqlstate) != 5)
        copy_field(e->sqlstate, sizeof(e->sqlstate), WP_SQLSTATE_INTERNAL);
    if (!e->severity[0])
        copy_field(e->severity, sizeof(e->severity), "ERROR");
    return WP_OK;
}
