/*
 * tls: mbedTLS for both sides of the proxy, exposed as a wp_io. Builds against 2.28
 * (Debian 12: TLS 1.2) and 3.6 LTS (Debian 13: TLS 1.2 and 1.3); see the compatibility
 * block below and docs/tls.md.
 *
 * Server side. A tls_server_ctx is built per listener (and again on every reload): one
 * read-only mbedtls_ssl_config, its own CTR_DRBG, and a certs_store (certs.c) that
 * chooses the certificate in the SNI callback. The config is referenced by every
 * connection's mbedtls_ssl_context for the connection's whole life, so the context is
 * reference counted: tls_server_free drops the listener's reference and the last
 * connection frees it. That makes a reload swap safe while old sessions run on.
 *
 * RNG thread safety: mbedTLS is built with MBEDTLS_THREADING_C (pthread), so
 * mbedtls_ctr_drbg_random and mbedtls_entropy_func each lock the context's own mutex.
 * All worker threads can therefore share one DRBG per tls_server_ctx with no extra
 * lock. The client side shares one process-wide DRBG (seeded once via pthread_once, for
 * the same reason) instead of seeding a DRBG per backend connection.
 *
 * Sockets stay blocking for everyone else; our BIO callbacks use MSG_DONTWAIT and map
 * EAGAIN to WANT_READ/WANT_WRITE. The handshake loop polls with the deadline, and the
 * wp_io read/write ops return -1/EAGAIN so io.c's helpers poll and retry. mbedTLS only
 * ever reads the bytes a record needs, so nothing it has buffered is invisible to
 * poll() except decrypted data, which `pending` reports.
 *
 * Pre-handshake bytes: tls_server_accept hands the raw fd to mbedTLS; any plaintext a
 * client pipelined after its SSLRequest is parsed as (invalid) TLS and fails the
 * handshake, never surfacing as application data. On the backend side we read exactly
 * the one-byte answer to SSLRequest and refuse if anything else is already waiting
 * (the CVE-2021-23222 pattern).
 */
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/md.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/oid.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/constant_time.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_cache.h>
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/version.h>

#include "certs.h"
#include "log.h"
#include "tailscale.h"

#define TLS_SNI_MAX 255

/* The two mbedTLS lines (docs/tls.md): 2.28 (Debian 12) speaks TLS 1.2 only; 3.6 LTS
 * (Debian 13) speaks TLS 1.2 and 1.3. The differences stay in this block and in a few
 * #if TLS_MBEDTLS3 below: 3.x hides struct fields behind MBEDTLS_PRIVATE, renames the
 * version and curve set-up, and needs psa_crypto_init() (certs_lib_init) first. */
#if MBEDTLS_VERSION_NUMBER >= 0x03000000
#define TLS_MBEDTLS3 1
/* Not mbedtls_ssl_is_handshake_over(): a TLS 1.3 server's NewSessionTicket states come
 * after HANDSHAKE_OVER in the enum, and stopping there would never send the ticket. */
#define TLS_HS_OVER(ssl) ((ssl)->MBEDTLS_PRIVATE(state) == MBEDTLS_SSL_HANDSHAKE_OVER)
#define TLS_HS_STATE(ssl) ((ssl)->MBEDTLS_PRIVATE(state))
#define TLS_CRT_SIG_MD(crt) ((crt)->MBEDTLS_PRIVATE(sig_md))
#else
#define TLS_MBEDTLS3 0
#define TLS_HS_OVER(ssl) ((ssl)->state == MBEDTLS_SSL_HANDSHAKE_OVER)
#define TLS_HS_STATE(ssl) ((ssl)->state)
#define TLS_CRT_SIG_MD(crt) ((crt)->sig_md)
#endif

struct tls_server_ctx {
    atomic_int refs;
    mbedtls_ssl_config conf;
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    certs_store *certs;
    char listener[128];
    atomic_int can_serve; /* last certs_has_source answer, for log-once-per-change */
    /* Resumption (see "session resumption" below). Both are locked internally by mbedTLS
     * (MBEDTLS_THREADING_C), so every worker thread of the listener shares them. */
    int tickets_on;
    mbedtls_ssl_ticket_context ticket;
    int cache_on;
    mbedtls_ssl_cache_context cache;
    unsigned char bind_key[32]; /* random per context: binds sessions to a certificate */
    int max_tls12;              /* tls_max_version = "1.2": TLS 1.3 is not offered */
};

typedef struct tls_conn {
    mbedtls_ssl_context ssl; /* first member: the SNI callback gets back here from ssl */
    int fd;
    tls_server_ctx *srv;    /* server side: holds a reference */
    const certs_pair *cert; /* server side: the chosen certificate (referenced) */
    char sni[TLS_SNI_MAX + 1];
    int has_sni;
    mbedtls_ssl_config cconf; /* client side; server side when own_conf */
    mbedtls_x509_crt ca;
    int client;
    int own_conf;                  /* server side: cconf carries the no-SNI default cert */
    const certs_pair *def_cert;    /* that certificate (referenced) */
    int resumed;                   /* server side: a ticket or the cache resumed the session */
    const unsigned char *bound_fp; /* the certificate the resumed session was bound to */
} tls_conn;

static const char *tls_alpn_list[] = {"postgresql", NULL};
/* Key exchange groups in the server's order of preference. For TLS 1.2 mbedTLS picks the
 * first of these the client offers; for TLS 1.3 it takes the client's key share when
 * that group is listed here, and otherwise asks for one (HelloRetryRequest). mbedTLS's
 * default order starts with secp521r1, which libpq also offers, and that ECDHE dominated
 * a TLS connect (about 200M instructions of 330M in callgrind). On 2.28 X25519 is the
 * cheapest. On 3.6 P-256 is (callgrind, docs/performance.md: a full handshake costs
 * 17.0 M instructions with P-256 against 22.1 M with X25519), and every TLS 1.3
 * handshake pays for ECDHE, resumed ones too (clients offer only psk_dhe_ke): so the 3.6
 * list leaves X25519 out. A TLS 1.3 client that sent only an X25519 share (libpq, Go,
 * Java, Node) is asked for P-256 instead; that costs the round trip TLS 1.3 saves, so
 * the handshake takes as many round trips as TLS 1.2's and less CPU than either. The
 * backend side uses the same list: its first entry is the share mbedTLS sends. */
#if TLS_MBEDTLS3
static const uint16_t tls_groups[] = {
    MBEDTLS_SSL_IANA_TLS_GROUP_SECP256R1, MBEDTLS_SSL_IANA_TLS_GROUP_SECP384R1,
    MBEDTLS_SSL_IANA_TLS_GROUP_SECP521R1, MBEDTLS_SSL_IANA_TLS_GROUP_NONE};
#else
static const mbedtls_ecp_group_id tls_curves[] = {
    MBEDTLS_ECP_DP_CURVE25519, MBEDTLS_ECP_DP_SECP256R1, MBEDTLS_ECP_DP_SECP384R1,
    MBEDTLS_ECP_DP_SECP521R1, MBEDTLS_ECP_DP_NONE};
#endif

/* TLS 1.2 and, where the library has it and max_tls12 is not set, 1.3 (negotiated: the
 * highest both speak). A listener may cap clients at 1.2 (tls_max_version): TLS 1.3
 * resumption still runs ECDHE, a TLS 1.2 one does not (docs/tls.md). */
static void conf_versions(mbedtls_ssl_config *c, int max_tls12)
{
#if TLS_MBEDTLS3
    mbedtls_ssl_conf_min_tls_version(c, MBEDTLS_SSL_VERSION_TLS1_2);
#if defined(MBEDTLS_SSL_PROTO_TLS1_3)
    mbedtls_ssl_conf_max_tls_version(c, max_tls12 ? MBEDTLS_SSL_VERSION_TLS1_2
                                                  : MBEDTLS_SSL_VERSION_TLS1_3);
#else
    (void)max_tls12;
    mbedtls_ssl_conf_max_tls_version(c, MBEDTLS_SSL_VERSION_TLS1_2);
#endif
    mbedtls_ssl_conf_groups(c, tls_groups);
#else
    (void)max_tls12; /* 2.28 speaks TLS 1.2 only */
    mbedtls_ssl_conf_min_version(c, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_curves(c, tls_curves);
#endif
}

const char *tls_library(void)
{
#if defined(MBEDTLS_SSL_PROTO_TLS1_3)
    return "mbedTLS " MBEDTLS_VERSION_STRING " (TLS 1.2, TLS 1.3)";
#else
    return "mbedTLS " MBEDTLS_VERSION_STRING " (TLS 1.2)";
#endif
}

static wp_status mbed_fail(wp_error *err, const char *sqlstate, const char *what, int rc);

/* --- BIO and polling -------------------------------------------------------------- */

static int bio_send(void *ctx, const unsigned char *buf, size_t len)
{
    tls_conn *c = ctx;
    ssize_t r;
    do {
        r = send(c->fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (r < 0 && errno == EINTR);
    if (r >= 0)
        return (int)r;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        return MBEDTLS_ERR_SSL_WANT_WRITE;
    return errno == EPIPE || errno == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET
                                                 : MBEDTLS_ERR_NET_SEND_FAILED;
}

static int bio_recv(void *ctx, unsigned char *buf, size_t len)
{
    tls_conn *c = ctx;
    ssize_t r;
    do {
        r = recv(c->fd, buf, len, MSG_DONTWAIT);
    } while (r < 0 && errno == EINTR);
    if (r >= 0)
        return (int)r;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        return MBEDTLS_ERR_SSL_WANT_READ;
    return errno == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET : MBEDTLS_ERR_NET_RECV_FAILED;
}

/* --- wp_io ops ----------------------------------------------------------------------- */

static ssize_t tls_read(wp_io *io, void *buf, size_t n)
{
    tls_conn *c = io->impl;
    int r = mbedtls_ssl_read(&c->ssl, buf, n);
#if TLS_MBEDTLS3
    /* A TLS 1.3 post-handshake message (NewSessionTicket from the backend) carried no
     * application data: read again (bounded by what the socket holds). */
    while (r == MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET)
        r = mbedtls_ssl_read(&c->ssl, buf, n);
#endif
    if (r > 0)
        return r;
    if (r == 0 || r == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY || r == MBEDTLS_ERR_SSL_CONN_EOF)
        return 0;
    if (r == MBEDTLS_ERR_SSL_WANT_READ || r == MBEDTLS_ERR_SSL_WANT_WRITE) {
        errno = EAGAIN;
        return -1;
    }
    errno = r == MBEDTLS_ERR_NET_CONN_RESET ? ECONNRESET : EIO;
    return -1;
}

static ssize_t tls_write(wp_io *io, const void *buf, size_t n)
{
    tls_conn *c = io->impl;
    int r = mbedtls_ssl_write(&c->ssl, buf, n);
    if (r >= 0)
        return r;
    if (r == MBEDTLS_ERR_SSL_WANT_READ || r == MBEDTLS_ERR_SSL_WANT_WRITE) {
        errno = EAGAIN;
        return -1;
    }
    errno = r == MBEDTLS_ERR_NET_CONN_RESET ? EPIPE : EIO;
    return -1;
}

static size_t tls_pending(wp_io *io)
{
    tls_conn *c = io->impl;
    size_t n = mbedtls_ssl_get_bytes_avail(&c->ssl);
    if (n == 0 && mbedtls_ssl_check_pending(&c->ssl))
        n = 1; /* a whole record is buffered but not yet decrypted */
    return n;
}

/* Best effort close_notify: a short bounded wait, never a hang on a stuck peer. */
static void tls_shutdown(wp_io *io)
{
    tls_conn *c = io->impl;
    if (!c)
        return;
    int64_t deadline = wp_now_ms() + 500;
    for (;;) {
        int r = mbedtls_ssl_close_notify(&c->ssl);
        if (r != MBEDTLS_ERR_SSL_WANT_WRITE && r != MBEDTLS_ERR_SSL_WANT_READ)
            return;
        if (io_wait_fd(c->fd, POLLOUT, deadline) != WP_OK)
            return;
    }
}

static const wp_io_ops tls_ops = {tls_read, tls_write, tls_pending, tls_shutdown};

/* --- server context -------------------------------------------------------------------- */

static void server_unref(tls_server_ctx *s)
{
    if (!s || atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    mbedtls_ssl_config_free(&s->conf);
    if (s->tickets_on)
        mbedtls_ssl_ticket_free(&s->ticket);
    if (s->cache_on)
        mbedtls_ssl_cache_free(&s->cache);
    mbedtls_platform_zeroize(s->bind_key, sizeof(s->bind_key));
    mbedtls_ctr_drbg_free(&s->drbg);
    mbedtls_entropy_free(&s->entropy);
    certs_free(s->certs);
    free(s);
}

void tls_server_free(tls_server_ctx *s)
{
    server_unref(s);
}

static int sni_callback(void *arg, mbedtls_ssl_context *ssl, const unsigned char *name, size_t len)
{
    tls_server_ctx *s = arg;
    tls_conn *c = (tls_conn *)((char *)ssl - offsetof(tls_conn, ssl));
    if (len == 0 || len > TLS_SNI_MAX || memchr(name, '\0', len))
        return -1;
    memcpy(c->sni, name, len);
    c->sni[len] = '\0';
    c->has_sni = 1;

    const certs_pair *p;
    certs_source src;
    if (certs_select(s->certs, c->sni, &p, &src) != WP_OK) {
        log_kv(WP_LOG_WARN, "tls_no_certificate", "sni", c->sni, (char *)NULL);
        return -1;
    }
    if (mbedtls_ssl_set_hs_own_cert(ssl, (mbedtls_x509_crt *)&p->chain,
                                    (mbedtls_pk_context *)&p->key) != 0) {
        certs_release(s->certs, p);
        return -1;
    }
    certs_release(s->certs, c->cert); /* a second SNI callback cannot happen, but be tidy */
    c->cert = p;
    /* A TLS 1.2 ticket parsed before this extension was checked against the default
     * certificate: a session never resumes under another certificate (fail closed). */
    if (c->resumed && c->bound_fp && memcmp(c->bound_fp, p->fp, sizeof(p->fp)) != 0) {
        log_kv(WP_LOG_WARN, "tls_resumption_refused", "listener", s->listener, "sni", c->sni,
               "reason", "session ticket bound to another certificate", (char *)NULL);
        return -1;
    }
    return 0;
}

static wp_status rng_seed(mbedtls_entropy_context *e, mbedtls_ctr_drbg_context *d, const char *who,
                          wp_error *err)
{
    int rc =
        mbedtls_ctr_drbg_seed(d, mbedtls_entropy_func, e, (const unsigned char *)who, strlen(who));
    if (rc != 0) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "TLS: cannot seed random generator (%d)", rc);
        return WP_ERR_INTERNAL;
    }
    return WP_OK;
}

/* --- session resumption ------------------------------------------------------------
 * Toward clients only (the backend side never resumes). Two mechanisms, per listener
 * context, so a session never crosses listeners, and rebuilt with the context on every
 * SIGHUP, so a reload (new certificates) starts both afresh:
 *   - session tickets (RFC 5077; TLS 1.3 tickets on 3.6): mbedTLS's ticket module,
 *     AES-256-GCM, whose key rotates every tls_ticket_lifetime; a ticket is accepted for
 *     one lifetime after it was issued, so a key lives at most two lifetimes;
 *   - a session-ID cache of tls_session_cache_size entries (TLS 1.2 clients without
 *     tickets), entries expiring after tls_ticket_lifetime (1h when tickets are off).
 * A listener serves several certificates (file, Tailscale by SNI), so each session is
 * bound to the certificate of the handshake that created it: tickets carry a 16-byte
 * HMAC over (certificate fingerprint, ticket) under bind_key, and cache entries are keyed
 * by HMAC(bind_key, fingerprint || session ID). A session offered under another
 * certificate fails that check and the client gets a full handshake.
 *
 * mbedTLS hands these callbacks the listener's context only, not the connection, so the
 * connection whose handshake a worker thread is driving is kept in a thread-local: each
 * thread drives one handshake at a time, and no other thread ever reads it. */
#define TLS_BIND_LEN 16

static _Thread_local tls_conn *tls_cur;

/* The certificate this connection serves so far: SNI's choice, else the default one. */
static const unsigned char *conn_fp(const tls_conn *c)
{
    const certs_pair *p = c->cert       ? c->cert
                          : c->def_cert ? c->def_cert
                          : c->srv      ? certs_file_pair(c->srv->certs)
                                        : NULL;
    return p ? p->fp : NULL;
}

/* HMAC-SHA-256(bind_key, fp || data), truncated to outlen. */
static int bind_mac(const tls_server_ctx *s, const unsigned char *fp, const unsigned char *data,
                    size_t len, unsigned char *out, size_t outlen)
{
    unsigned char mac[32];
    mbedtls_md_context_t md;
    mbedtls_md_init(&md);
    int rc = mbedtls_md_setup(&md, mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), 1);
    if (rc == 0)
        rc = mbedtls_md_hmac_starts(&md, s->bind_key, sizeof(s->bind_key));
    if (rc == 0)
        rc = mbedtls_md_hmac_update(&md, fp, 32);
    if (rc == 0)
        rc = mbedtls_md_hmac_update(&md, data, len);
    if (rc == 0)
        rc = mbedtls_md_hmac_finish(&md, mac);
    mbedtls_md_free(&md);
    if (rc == 0)
        memcpy(out, mac, outlen);
    return rc;
}

static int ticket_write(void *p, const mbedtls_ssl_session *session, unsigned char *start,
                        const unsigned char *end, size_t *tlen, uint32_t *lifetime)
{
    tls_server_ctx *s = p;
    const unsigned char *fp = tls_cur ? conn_fp(tls_cur) : NULL;
    if (!fp)
        return MBEDTLS_ERR_SSL_INTERNAL_ERROR;
    if (end - start < TLS_BIND_LEN)
        return MBEDTLS_ERR_SSL_BUFFER_TOO_SMALL;
    int rc =
        mbedtls_ssl_ticket_write(&s->ticket, session, start + TLS_BIND_LEN, end, tlen, lifetime);
    if (rc == 0)
        rc = bind_mac(s, fp, start + TLS_BIND_LEN, *tlen, start, TLS_BIND_LEN);
    if (rc == 0)
        *tlen += TLS_BIND_LEN;
    return rc;
}

static int ticket_parse(void *p, mbedtls_ssl_session *session, unsigned char *buf, size_t len)
{
    tls_server_ctx *s = p;
    tls_conn *c = tls_cur;
    const unsigned char *fp = c ? conn_fp(c) : NULL;
    unsigned char mac[TLS_BIND_LEN];
    if (!fp || len <= TLS_BIND_LEN ||
        bind_mac(s, fp, buf + TLS_BIND_LEN, len - TLS_BIND_LEN, mac, sizeof(mac)) != 0 ||
        mbedtls_ct_memcmp(mac, buf, TLS_BIND_LEN) != 0)
        return MBEDTLS_ERR_SSL_INVALID_MAC; /* another certificate or listener: full handshake */
    int rc = mbedtls_ssl_ticket_parse(&s->ticket, session, buf + TLS_BIND_LEN, len - TLS_BIND_LEN);
    if (rc == 0) {
        c->resumed = 1;
        c->bound_fp = fp;
    }
    return rc;
}

/* The cache key of a session ID under this connection's certificate. */
static int cache_key(tls_server_ctx *s, const unsigned char *id, size_t id_len,
                     unsigned char key[32])
{
    const unsigned char *fp = tls_cur ? conn_fp(tls_cur) : NULL;
    if (!fp || id_len == 0 || id_len > 32)
        return -1;
    return bind_mac(s, fp, id, id_len, key, 32);
}

#if TLS_MBEDTLS3
static int cache_get(void *p, const unsigned char *id, size_t id_len, mbedtls_ssl_session *session)
{
    tls_server_ctx *s = p;
    unsigned char key[32];
    if (cache_key(s, id, id_len, key) != 0)
        return -1;
    int rc = mbedtls_ssl_cache_get(&s->cache, key, sizeof(key), session);
    if (rc == 0) {
        tls_cur->resumed = 1;
        tls_cur->bound_fp = conn_fp(tls_cur);
    }
    return rc;
}

static int cache_set(void *p, const unsigned char *id, size_t id_len,
                     const mbedtls_ssl_session *session)
{
    tls_server_ctx *s = p;
    unsigned char key[32];
    if (cache_key(s, id, id_len, key) != 0)
        return -1;
    return mbedtls_ssl_cache_set(&s->cache, key, sizeof(key), session);
}
#else
/* 2.28 looks the session up by session->id: swap in the bound key for the lookup and put
 * the client's ID back (the ServerHello echoes it). */
static int cache_get(void *p, mbedtls_ssl_session *session)
{
    tls_server_ctx *s = p;
    unsigned char id[32], key[32];
    size_t id_len = session->id_len;
    if (id_len > sizeof(id) || cache_key(s, session->id, id_len, key) != 0)
        return -1;
    memcpy(id, session->id, id_len);
    memcpy(session->id, key, sizeof(key));
    session->id_len = sizeof(key);
    int rc = mbedtls_ssl_cache_get(&s->cache, session);
    memcpy(session->id, id, id_len);
    session->id_len = id_len;
    if (rc == 0) {
        tls_cur->resumed = 1;
        tls_cur->bound_fp = conn_fp(tls_cur);
    }
    return rc;
}

static int cache_set(void *p, const mbedtls_ssl_session *session)
{
    tls_server_ctx *s = p;
    mbedtls_ssl_session keyed = *session; /* shallow: mbedtls_ssl_cache_set deep-copies it */
    if (cache_key(s, session->id, session->id_len, keyed.id) != 0)
        return -1;
    keyed.id_len = 32;
    return mbedtls_ssl_cache_set(&s->cache, &keyed);
}
#endif

/* Sets up tickets and cache for a listener per its configuration. */
static wp_status resumption_setup(tls_server_ctx *s, const cfg_listener *l, wp_error *err)
{
    if (mbedtls_ctr_drbg_random(&s->drbg, s->bind_key, sizeof(s->bind_key)) != 0) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "TLS: cannot draw the session binding key");
        return WP_ERR_INTERNAL;
    }
    int64_t life_s = (l->tls_ticket_lifetime_ms + 999) / 1000;
    if (life_s > 0) {
        mbedtls_ssl_ticket_init(&s->ticket);
        s->tickets_on = 1;
        int rc = mbedtls_ssl_ticket_setup(&s->ticket, mbedtls_ctr_drbg_random, &s->drbg,
                                          MBEDTLS_CIPHER_AES_256_GCM, (uint32_t)life_s);
        if (rc != 0)
            return mbed_fail(err, WP_SQLSTATE_INTERNAL, "TLS: session tickets", rc);
    }
    if (l->tls_session_cache_size > 0) {
        mbedtls_ssl_cache_init(&s->cache);
        s->cache_on = 1;
        mbedtls_ssl_cache_set_max_entries(&s->cache, (int)l->tls_session_cache_size);
        mbedtls_ssl_cache_set_timeout(&s->cache, life_s > 0 ? life_s : 3600);
    }
    return WP_OK;
}

static void conf_resumption(mbedtls_ssl_config *c, tls_server_ctx *s)
{
    if (s->tickets_on)
        mbedtls_ssl_conf_session_tickets_cb(c, ticket_write, ticket_parse, s);
    if (s->cache_on)
        mbedtls_ssl_conf_session_cache(c, s, cache_get, cache_set);
}

int tls_io_resumed(const wp_io *io)
{
    return io && io->ops == &tls_ops && ((const tls_conn *)io->impl)->resumed;
}

/* A server config on c: the listener's shared one (own = the file certificate), or a
 * connection's own, whose certificate is the one served when the client sends no SNI. */
static wp_status conf_setup(mbedtls_ssl_config *c, tls_server_ctx *s, const certs_pair *own,
                            wp_error *err)
{
    if (mbedtls_ssl_config_defaults(c, MBEDTLS_SSL_IS_SERVER, MBEDTLS_SSL_TRANSPORT_STREAM,
                                    MBEDTLS_SSL_PRESET_DEFAULT) != 0 ||
        mbedtls_ssl_conf_alpn_protocols(c, tls_alpn_list) != 0) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "TLS: cannot set up server configuration");
        return WP_ERR_INTERNAL;
    }
    conf_versions(c, s->max_tls12);
    mbedtls_ssl_conf_renegotiation(c, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
    mbedtls_ssl_conf_rng(c, mbedtls_ctr_drbg_random, &s->drbg);
    mbedtls_ssl_conf_sni(c, sni_callback, s);
    conf_resumption(c, s);
    /* Without SNI mbedTLS uses the config's own certificate (an SNI callback's choice
     * takes precedence over it). */
    if (own && mbedtls_ssl_conf_own_cert(c, (mbedtls_x509_crt *)&own->chain,
                                         (mbedtls_pk_context *)&own->key) != 0) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "TLS: cannot use the certificate");
        return WP_ERR_INTERNAL;
    }
    return WP_OK;
}

int tls_server_can_serve(tls_server_ctx *s)
{
    const char *why = "";
    int can = certs_has_source(s->certs, &why);
    int prev = atomic_exchange(&s->can_serve, can);
    if (prev != can && !(prev == -1 && can)) /* once per change; "available" is the norm */
        log_kv(can ? WP_LOG_INFO : WP_LOG_WARN, can ? "tls_available" : "tls_unavailable",
               "listener", s->listener, "reason", can ? "a certificate source is available" : why,
               "sslrequest", can ? "S" : "N", (char *)NULL);
    return can;
}

wp_status tls_server_new_src(const cfg_listener *l, certs_fetch_fn fetch, void *fetch_arg,
                             tls_server_ctx **out, wp_error *err)
{
    return tls_server_new_srcs(l, fetch, NULL, fetch_arg, out, err);
}

wp_status tls_server_new_srcs(const cfg_listener *l, certs_fetch_fn fetch, certs_domains_fn domains,
                              void *arg, tls_server_ctx **out, wp_error *err)
{
    *out = NULL;
    tls_server_ctx *s = calloc(1, sizeof(*s));
    if (!s)
        return WP_ERR_NOMEM;
    atomic_init(&s->refs, 1);
    atomic_init(&s->can_serve, -1);
    snprintf(s->listener, sizeof(s->listener), "%s", l->name ? l->name : "");
    s->max_tls12 = l->tls_max_version == CFG_TLSV_1_2;
    mbedtls_ssl_config_init(&s->conf);
    mbedtls_entropy_init(&s->entropy);
    mbedtls_ctr_drbg_init(&s->drbg);
    certs_opts o = {.cert_file = l->cert_file,
                    .key_file = l->key_file,
                    .use_tailscale = l->use_tailscale_tls && fetch != NULL,
                    .fetch = fetch,
                    .fetch_arg = arg,
                    .domains = domains,
                    .domains_arg = arg};
    wp_status st = certs_lib_init(err);
    if (st == WP_OK)
        st = certs_new(&o, &s->certs, err);
    if (st == WP_OK)
        st = rng_seed(&s->entropy, &s->drbg, "waypoint-tls-server", err);
    if (st == WP_OK)
        st = resumption_setup(s, l, err);
    if (st == WP_OK)
        st = conf_setup(&s->conf, s, certs_file_pair(s->certs), err);
    if (st != WP_OK) {
        server_unref(s);
        return st;
    }
    if (l->tls_mode != CFG_TLS_OFF)
        (void)tls_server_can_serve(s); /* logs now when there is nothing to serve */
    *out = s;
    return WP_OK;
}

static wp_status ts_fetch(void *arg, const char *domain, char **pem, size_t *pem_len, wp_error *err)
{
    return ts_cert_pair((const ts_client *)arg, domain, pem, pem_len, err);
}

static wp_status ts_domains(void *arg, char ***out, size_t *n, wp_error *err)
{
    return ts_cert_domains((const ts_client *)arg, out, n, err);
}

wp_status tls_server_new(const cfg_listener *l, const ts_client *ts, tls_server_ctx **out,
                         wp_error *err)
{
    return tls_server_new_srcs(l, ts ? ts_fetch : NULL, ts ? ts_domains : NULL, (void *)ts, out,
                               err);
}

/* --- handshake ----------------------------------------------------------------------- */

static void conn_free(tls_conn *c)
{
    if (!c)
        return;
    mbedtls_ssl_free(&c->ssl);
    if (c->srv) {
        certs_release(c->srv->certs, c->cert);
        certs_release(c->srv->certs, c->def_cert);
        server_unref(c->srv);
    }
    if (c->client || c->own_conf) {
        mbedtls_ssl_config_free(&c->cconf);
        mbedtls_x509_crt_free(&c->ca);
    }
    free(c);
}

void tls_io_free(wp_io *io)
{
    if (!io || io->ops != &tls_ops)
        return;
    conn_free(io->impl);
    io->impl = NULL;
    io->ops = NULL; /* fail loudly rather than fall back to plaintext */
}

const char *tls_io_sni(const wp_io *io)
{
    if (!io || io->ops != &tls_ops)
        return NULL;
    const tls_conn *c = io->impl;
    return c->has_sni ? c->sni : NULL;
}

static wp_status mbed_fail(wp_error *err, const char *sqlstate, const char *what, int rc)
{
    char buf[160];
    mbedtls_strerror(rc, buf, sizeof(buf));
    wp_error_set(err, sqlstate, "%s: %s", what, buf);
    return WP_ERR_TLS;
}

/* Drives the handshake to completion or failure within the deadline. When require_alpn
 * is set it stops right after the ClientHello if no "postgresql" ALPN was agreed, so
 * the client gets a no_application_protocol alert instead of a session. */
static wp_status handshake(tls_conn *c, int require_alpn, int64_t deadline_ms, const char *who,
                           const char *sqlstate, wp_error *err)
{
    int alpn_checked = !require_alpn;
    while (!TLS_HS_OVER(&c->ssl)) {
        int r = mbedtls_ssl_handshake_step(&c->ssl);
        if (r == 0) {
            if (!alpn_checked && TLS_HS_STATE(&c->ssl) > MBEDTLS_SSL_CLIENT_HELLO) {
                const char *a = mbedtls_ssl_get_alpn_protocol(&c->ssl);
                if (!a || strcmp(a, "postgresql") != 0) {
                    mbedtls_ssl_send_alert_message(&c->ssl, MBEDTLS_SSL_ALERT_LEVEL_FATAL,
                                                   MBEDTLS_SSL_ALERT_MSG_NO_APPLICATION_PROTOCOL);
                    wp_error_set(err, WP_SQLSTATE_PROTOCOL,
                                 "direct SSL connection without ALPN protocol \"postgresql\"");
                    return WP_ERR_TLS;
                }
                alpn_checked = 1;
            }
            continue;
        }
        wp_status st = WP_OK;
        if (r == MBEDTLS_ERR_SSL_WANT_READ)
            st = io_wait_fd(c->fd, POLLIN, deadline_ms);
        else if (r == MBEDTLS_ERR_SSL_WANT_WRITE)
            st = io_wait_fd(c->fd, POLLOUT, deadline_ms);
        else
            return mbed_fail(err, sqlstate, who, r);
        if (st == WP_ERR_TIMEOUT) {
            wp_error_set(err, sqlstate, "%s: timed out", who);
            return WP_ERR_TIMEOUT;
        }
        if (st != WP_OK) {
            wp_error_set(err, sqlstate, "%s: %s", who, strerror(errno));
            return st;
        }
    }
    return WP_OK;
}

wp_status tls_server_accept(tls_server_ctx *s, int fd, int require_alpn, int64_t deadline_ms,
                            wp_io *io, wp_error *err)
{
    tls_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return WP_ERR_NOMEM;
    c->fd = fd;
    mbedtls_ssl_init(&c->ssl);
    atomic_fetch_add(&s->refs, 1);
    c->srv = s;
    mbedtls_ssl_config *conf = &s->conf;
    /* No file certificate: a client that sends no SNI (connected by IP) gets the node's
     * Tailscale certificate, through a config of this connection's own. */
    if (!certs_file_pair(s->certs) && (c->def_cert = certs_default(s->certs)) != NULL) {
        mbedtls_ssl_config_init(&c->cconf);
        c->own_conf = 1;
        wp_status st = conf_setup(&c->cconf, s, c->def_cert, err);
        if (st != WP_OK) {
            conn_free(c);
            return st;
        }
        conf = &c->cconf;
    }
    int rc = mbedtls_ssl_setup(&c->ssl, conf);
    if (rc != 0) {
        conn_free(c);
        return mbed_fail(err, WP_SQLSTATE_INTERNAL, "TLS setup", rc);
    }
    mbedtls_ssl_set_bio(&c->ssl, c, bio_send, bio_recv, NULL);
    tls_cur = c; /* for the resumption callbacks */
    wp_status st =
        handshake(c, require_alpn, deadline_ms, "TLS handshake", WP_SQLSTATE_PROTOCOL, err);
    tls_cur = NULL;
    if (st != WP_OK) {
        conn_free(c);
        return st;
    }
    io->ops = &tls_ops;
    io->fd = fd;
    io->impl = c;
    return WP_OK;
}

/* --- client (backend) side ----------------------------------------------------------- */

/* Process-wide client DRBG: seeded once, locked internally by mbedTLS (see top). */
static mbedtls_entropy_context client_entropy;
static mbedtls_ctr_drbg_context client_drbg;
static int client_rng_ok;
static pthread_once_t client_rng_once = PTHREAD_ONCE_INIT;

static void client_rng_init(void)
{
    mbedtls_entropy_init(&client_entropy);
    mbedtls_ctr_drbg_init(&client_drbg);
    client_rng_ok = rng_seed(&client_entropy, &client_drbg, "waypoint-tls-client", NULL) == WP_OK;
}

static wp_status client_conf(tls_conn *c, const char *server_name, cfg_backend_tls mode,
                             const char *ca_file, int is_ip, wp_error *err)
{
    pthread_once(&client_rng_once, client_rng_init);
    if (certs_lib_init(NULL) != WP_OK || !client_rng_ok) {
        wp_error_set(err, WP_SQLSTATE_CONN_FAILURE, "TLS: random generator unavailable");
        return WP_ERR_INTERNAL;
    }
    mbedtls_ssl_config *cf = &c->cconf;
    if (mbedtls_ssl_config_defaults(cf, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                    MBEDTLS_SSL_PRESET_DEFAULT) != 0) {
        wp_error_set(err, WP_SQLSTATE_CONN_FAILURE, "TLS: cannot set up client configuration");
        return WP_ERR_INTERNAL;
    }
    conf_versions(cf, 0);
    mbedtls_ssl_conf_rng(cf, mbedtls_ctr_drbg_random, &client_drbg);
    mbedtls_ssl_conf_session_tickets(cf, MBEDTLS_SSL_SESSION_TICKETS_DISABLED);
    if (mode == CFG_BTLS_VERIFY_FULL) {
        if (!ca_file) {
            wp_error_set(err, WP_SQLSTATE_CONN_FAILURE,
                         "backend_tls = verify-full needs backend_ca_file");
            return WP_ERR_CONFIG;
        }
        int rc = mbedtls_x509_crt_parse_file(&c->ca, ca_file);
        if (rc < 0 || c->ca.version == 0) {
            wp_error_set(err, WP_SQLSTATE_CONN_FAILURE, "cannot load backend_ca_file '%s'",
                         ca_file);
            return WP_ERR_CONFIG;
        }
        mbedtls_ssl_conf_ca_chain(cf, &c->ca, NULL);
        mbedtls_ssl_conf_authmode(cf, MBEDTLS_SSL_VERIFY_REQUIRED);
    } else {
        /* require/prefer: encryption without authentication, as libpq's sslmode=require
         * without a root certificate. */
        mbedtls_ssl_conf_authmode(cf, MBEDTLS_SSL_VERIFY_NONE);
    }
    int rc = mbedtls_ssl_setup(&c->ssl, cf);
    /* SNI must not carry an IP literal (RFC 6066); IP hosts are checked after the
     * handshake against iPAddress SANs instead. */
    if (rc == 0 && !is_ip)
        rc = mbedtls_ssl_set_hostname(&c->ssl, server_name);
#if TLS_MBEDTLS3
    /* 3.6 refuses to verify without a hostname unless told that none is wanted. */
    else if (rc == 0)
        rc = mbedtls_ssl_set_hostname(&c->ssl, NULL);
#endif
    if (rc != 0)
        return mbed_fail(err, WP_SQLSTATE_CONN_FAILURE, "TLS setup", rc);
    mbedtls_ssl_set_bio(&c->ssl, c, bio_send, bio_recv, NULL);
    return WP_OK;
}

/* The subject CN spells host exactly: a wildcard never matches an IP address (RFC 6125
 * section 6.4.3), so certs_name_matches, which allows one, is not used here. */
static int cn_is(const mbedtls_x509_crt *crt, const char *host)
{
    size_t n = strlen(host);
    for (const mbedtls_x509_name *x = &crt->subject; x; x = x->next)
        if (x->oid.p && MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &x->oid) == 0 && x->val.len == n &&
            strncasecmp((const char *)x->val.p, host, n) == 0)
            return 1;
    return 0;
}

/* verify-full against an IP literal: an iPAddress SAN must hold it; when the certificate
 * has no DNS/IP SANs at all, the CN may spell it (libpq's behaviour). */
static int ip_matches(const mbedtls_x509_crt *crt, const char *host)
{
    unsigned char want[16];
    size_t wlen = 4;
    if (inet_pton(AF_INET, host, want) != 1) {
        if (inet_pton(AF_INET6, host, want) != 1)
            return 0;
        wlen = 16;
    }
    const unsigned char ip_tag = MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_X509_SAN_IP_ADDRESS;
    const unsigned char dns_tag = MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_X509_SAN_DNS_NAME;
    int any_san = 0;
    for (const mbedtls_x509_sequence *s = &crt->subject_alt_names; s; s = s->next) {
        if (!s->buf.p)
            continue;
        if (s->buf.tag == ip_tag || s->buf.tag == dns_tag)
            any_san = 1;
        if (s->buf.tag == ip_tag && s->buf.len == wlen && memcmp(s->buf.p, want, wlen) == 0)
            return 1;
    }
    return !any_san && cn_is(crt, host);
}

/* tls-server-end-point (RFC 5929 section 4.1): hash of the DER certificate with its
 * signature hash, SHA-256 when that is MD5 or SHA-1 (or unknown). */
static wp_status channel_binding(const mbedtls_x509_crt *crt, unsigned char out[64], size_t *len)
{
    mbedtls_md_type_t t = TLS_CRT_SIG_MD(crt);
    if (t != MBEDTLS_MD_SHA224 && t != MBEDTLS_MD_SHA256 && t != MBEDTLS_MD_SHA384 &&
        t != MBEDTLS_MD_SHA512)
        t = MBEDTLS_MD_SHA256;
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(t);
    if (!md || mbedtls_md_get_size(md) > 64 || mbedtls_md(md, crt->raw.p, crt->raw.len, out))
        return WP_ERR_INTERNAL;
    *len = mbedtls_md_get_size(md);
    return WP_OK;
}

/* Sends SSLRequest and reads the one-byte answer: 1 = 'S', 0 = 'N'. */
static wp_status ssl_request(int fd, int64_t deadline_ms, int *yes, wp_error *err)
{
    static const unsigned char req[8] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}; /* 80877103 */
    wp_io plain;
    io_plain_init(&plain, fd);
    unsigned char b;
    wp_status st = io_write_all(&plain, req, sizeof(req), deadline_ms);
    if (st == WP_OK)
        st = io_read_full(&plain, &b, 1, deadline_ms);
    if (st != WP_OK) {
        wp_error_set(err, WP_SQLSTATE_CONN_FAILURE, "SSL negotiation failed: %s",
                     st == WP_ERR_TIMEOUT  ? "timed out"
                     : st == WP_ERR_CLOSED ? "server closed the connection"
                                           : strerror(errno));
        return st;
    }
    if (b != 'S' && b != 'N') {
        wp_error_set(err, WP_SQLSTATE_CONN_FAILURE,
                     "backend sent an invalid response to SSL negotiation (0x%02x)", b);
        return WP_ERR_PROTOCOL;
    }
    if (b == 'S') {
        unsigned char extra;
        if (recv(fd, &extra, 1, MSG_PEEK | MSG_DONTWAIT) > 0) {
            wp_error_set(err, WP_SQLSTATE_CONN_FAILURE,
                         "backend sent unencrypted data after its SSL response");
            return WP_ERR_PROTOCOL;
        }
    }
    *yes = b == 'S';
    return WP_OK;
}

static wp_status client_handshake(tls_conn *c, const char *server_name, cfg_backend_tls mode,
                                  int is_ip, int64_t deadline_ms, wp_error *err)
{
    wp_status st =
        handshake(c, 0, deadline_ms, "backend TLS handshake", WP_SQLSTATE_CONN_FAILURE, err);
    if (st != WP_OK) {
        uint32_t flags = mbedtls_ssl_get_verify_result(&c->ssl);
        if (mode == CFG_BTLS_VERIFY_FULL && flags != 0 && flags != (uint32_t)-1) {
            char info[256];
            mbedtls_x509_crt_verify_info(info, sizeof(info), "", flags);
            info[strcspn(info, "\n")] = '\0';
            wp_error_set(err, WP_SQLSTATE_CONN_FAILURE,
                         "backend certificate verification failed: %s", info);
        }
        return st;
    }
    const mbedtls_x509_crt *peer = mbedtls_ssl_get_peer_cert(&c->ssl);
    if (!peer) {
        wp_error_set(err, WP_SQLSTATE_CONN_FAILURE, "backend sent no certificate");
        return WP_ERR_TLS;
    }
    if (mode == CFG_BTLS_VERIFY_FULL && is_ip && !ip_matches(peer, server_name)) {
        wp_error_set(err, WP_SQLSTATE_CONN_FAILURE,
                     "backend certificate verification failed: address %s not in certificate",
                     server_name);
        return WP_ERR_TLS;
    }
    return WP_OK;
}

static int is_ip_literal(const char *h)
{
    unsigned char tmp[16];
    return inet_pton(AF_INET, h, tmp) == 1 || inet_pton(AF_INET6, h, tmp) == 1;
}

wp_status tls_client_start(int fd, const char *server_name, cfg_backend_tls mode,
                           const char *ca_file, int64_t deadline_ms, wp_io *io, int *is_tls,
                           unsigned char cb_hash[64], size_t *cb_len, wp_error *err)
{
    *is_tls = 0;
    *cb_len = 0;
    io_plain_init(io, fd);
    if (mode == CFG_BTLS_DISABLE)
        return WP_OK;
    int yes = 0;
    wp_status st = ssl_request(fd, deadline_ms, &yes, err);
    if (st != WP_OK)
        return st;
    if (!yes) {
        if (mode == CFG_BTLS_PREFER)
            return WP_OK;
        wp_error_set(err, WP_SQLSTATE_CONN_FAILURE, "backend does not support SSL");
        wp_error_hint(err, "enable ssl on the server or set backend_tls = \"prefer\"");
        return WP_ERR_TLS;
    }
    tls_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return WP_ERR_NOMEM;
    c->fd = fd;
    c->client = 1;
    mbedtls_ssl_init(&c->ssl);
    mbedtls_ssl_config_init(&c->cconf);
    mbedtls_x509_crt_init(&c->ca);
    int is_ip = is_ip_literal(server_name);
    st = client_conf(c, server_name, mode, ca_file, is_ip, err);
    if (st == WP_OK)
        st = client_handshake(c, server_name, mode, is_ip, deadline_ms, err);
    if (st == WP_OK && channel_binding(mbedtls_ssl_get_peer_cert(&c->ssl), cb_hash, cb_len))
        st = WP_ERR_INTERNAL;
    if (st != WP_OK) {
        conn_free(c);
        *cb_len = 0;
        return st;
    }
    io->ops = &tls_ops;
    io->impl = c;
    *is_tls = 1;
    return WP_OK;
}
