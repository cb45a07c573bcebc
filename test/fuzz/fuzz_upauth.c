/*
 * libFuzzer target for up_login: the fuzzer plays the backend during the authentication
 * exchange. A fake backend thread writes the fuzzer's bytes into one end of a socketpair
 * and up_login runs on the other end, so the real reader, parser and state machine see
 * them exactly as they would arrive from a PostgreSQL server.
 *
 * Input: one flags byte (bit 0: the link "is TLS", cb_len 32, so SCRAM-SHA-256-PLUS and
 * the 'y' flag are reachable; bit 1: ask for protocol 3.2), then backend messages
 * (type, int32 length, body). Every "@N" in a body is replaced by the client's real
 * SCRAM nonce, read from its SASLInitialResponse, and the length is fixed up, so the
 * fuzzer can get past the nonce check into the server-final and AuthenticationOk
 * paths. Bytes that do not parse as a message are sent raw, to fuzz the framing too.
 * Iteration counts in (64, SCRAM_ITER_MAX] are skipped (valid, only slow).
 *
 * Promises checked (abort on breach): every failure fills err; err never contains the
 * password and the password crosses the wire at most once (unless the fuzzer itself
 * sent pieces of it for Waypoint to echo); and a login in which SCRAM began never
 * succeeds, because the fuzzer cannot forge the server signature.
 */
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "scram.h"
#include "upstream.h"

#define PASSWORD "fuzz-password-7f3a"
#define SENT_MAX 65536

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct backend {
    int fd;
    const uint8_t *script;
    size_t len;
    unsigned char sent[SENT_MAX]; /* everything up_login wrote */
    size_t nsent;
    int eof;
    char nonce[300];
    int have_nonce; /* the client sent a SASLInitialResponse */
} backend;

static uint32_t get32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* Reads one chunk of the client's output (blocking until some arrives or EOF). */
static void backend_read(backend *b)
{
    if (b->eof || b->nsent == SENT_MAX) {
        b->eof = 1;
        return;
    }
    ssize_t r = recv(b->fd, b->sent + b->nsent, SENT_MAX - b->nsent, 0);
    if (r <= 0)
        b->eof = 1;
    else
        b->nsent += (size_t)r;
}

/* Looks for the client's SASLInitialResponse after the startup packet; takes r=. */
static int find_nonce(backend *b)
{
    if (b->nsent < 4)
        return 0;
    size_t off = get32(b->sent);
    while (off + 5 <= b->nsent) {
        size_t mlen = get32(b->sent + off + 1);
        if (mlen < 4 || off + 1 + mlen > b->nsent)
            return 0;
        const unsigned char *body = b->sent + off + 5, *end = body + mlen - 4;
        const unsigned char *r = b->sent[off] == 'p' ? memmem(body, mlen - 4, ",r=", 3) : NULL;
        if (r) {
            size_t n = 0;
            for (r += 3; r < end && *r != ',' && n < sizeof(b->nonce) - 1; r++)
                b->nonce[n++] = (char)*r;
            b->nonce[n] = '\0';
            b->have_nonce = 1;
            return 1;
        }
        off += 1 + mlen;
    }
    return 0;
}

static void send_all(int fd, const void *p, size_t n)
{
    const unsigned char *c = p;
    while (n > 0) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        c += w;
        n -= (size_t)w;
    }
}

/* Sends one message with every "@N" replaced by the client's nonce. */
static void send_msg(backend *b, unsigned char type, const uint8_t *body, size_t n)
{
    if (memmem(body, n, "@N", 2))
        while (!b->have_nonce && !b->eof && !find_nonce(b))
            backend_read(b);
    size_t nl = strlen(b->nonce);
    unsigned char *out = malloc(5 + n * (nl > 2 ? nl : 2));
    if (!out)
        abort();
    size_t o = 5;
    for (size_t i = 0; i < n; i++) {
        if (i + 1 < n && body[i] == '@' && body[i + 1] == 'N') {
            memcpy(out + o, b->nonce, nl);
            o += nl;
            i++;
        } else {
            out[o++] = body[i];
        }
    }
    out[0] = type;
    put32(out + 1, (uint32_t)(o - 1));
    send_all(b->fd, out, o);
    free(out);
}

static void *backend_main(void *arg)
{
    backend *b = arg;
    size_t pos = 0;
    while (pos + 5 <= b->len) {
        uint32_t mlen = get32(b->script + pos + 1);
        if (mlen < 4 || mlen - 4 > b->len - pos - 5)
            break; /* not a message: the rest goes out raw */
        send_msg(b, b->script[pos], b->script + pos + 5, mlen - 4);
        pos += 1 + mlen;
    }
    send_all(b->fd, b->script + pos, b->len - pos);
    shutdown(b->fd, SHUT_WR);
    while (!b->eof) /* collect the rest of what the client says */
        backend_read(b);
    find_nonce(b);
    return NULL;
}

static int slow_iterations(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i + 2 < n; i++) {
        if (p[i] != 'i' || p[i + 1] != '=')
            continue;
        unsigned long v = 0;
        size_t j = i + 2;
        for (; j < n && j < i + 12 && p[j] >= '0' && p[j] <= '9'; j++)
            v = v * 10 + (p[j] - '0');
        if (v > 64 && v <= SCRAM_ITER_MAX)
            return 1;
    }
    return 0;
}

static size_t count(const unsigned char *hay, size_t n, const char *needle)
{
    size_t c = 0, nl = strlen(needle);
    for (const unsigned char *p = hay; (p = memmem(p, n - (size_t)(p - hay), needle, nl)); p += nl)
        c++;
    return c;
}

static int has_password_piece(const uint8_t *data, size_t size)
{
    for (size_t i = 0; i + 4 <= sizeof(PASSWORD) - 1; i++)
        if (memmem(data, size, &PASSWORD[i], 4))
            return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || slow_iterations(data, size))
        return 0;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        abort();
    backend *b = calloc(1, sizeof(*b));
    if (!b)
        abort();
    *b = (backend){.fd = sv[0], .script = data + 1, .len = size - 1};
    pthread_t t;
    if (pthread_create(&t, NULL, backend_main, b) != 0)
        abort();

    up_conn c;
    memset(&c, 0, sizeof(c));
    c.fd = sv[1];
    io_plain_init(&c.io, sv[1]);
    c.cb_len = data[0] & 1 ? 32 : 0;
    memset(c.cb_hash, 0xa5, sizeof(c.cb_hash));
    pgw_param params[] = {{"database", "appdb"}, {"application_name", "fuzz"}};
    wp_error err;
    wp_error_clear(&err);
    wp_status st = up_login(&c, data[0] & 2 ? PGW_PROTO_32 : PGW_PROTO_30, params, 2, "wp_role",
                            PASSWORD, wp_now_ms() + 500, &err);
    shutdown(sv[1], SHUT_RDWR); /* lets the backend thread see EOF */
    pthread_join(t, NULL);
    close(sv[0]);
    close(sv[1]);

    if (st != WP_OK && !wp_error_isset(&err))
        abort(); /* every failure must say why */
    /* A backend may echo text of its own (mechanism names, its nonce, error fields): the
     * password checks only hold when it sent no piece of the password itself. */
    if (!has_password_piece(data, size)) {
        if (strstr(err.message, PASSWORD) || strstr(err.detail, PASSWORD) ||
            strstr(err.hint, PASSWORD))
            abort();
        if (count(b->sent, b->nsent, PASSWORD) > 1)
            abort(); /* the password went out twice */
    }
    if (st == WP_OK && b->have_nonce)
        abort(); /* SCRAM began, yet login succeeded without a valid server signature */
    free(b);
    return 0;
}
