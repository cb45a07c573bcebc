/*
 * scram: SCRAM-SHA-256 client (RFC 5802 / RFC 7677), PostgreSQL verifiers, the MD5
 * password forms, and the process CSPRNG, all built on mbedTLS 2.28 primitives.
 *
 * The client is a three-step state machine driven by upauth.c:
 *
 *   first()  -> "n,,n=,r=<cnonce>"            (gs2 "p=tls-server-end-point,," with CB,
 *                                              "y,," over TLS when -PLUS is not offered)
 *   final()  <- "r=<cnonce+snonce>,s=<salt>,i=<iter>"   parsed strictly, then
 *            -> "c=<b64(gs2 [+ cb])>,r=<nonce>,p=<proof>"
 *   verify() <- "v=<ServerSignature>" compared in constant time, or "e=<error>"
 *
 * Server messages are untrusted input: every field is checked before use, the
 * iteration count is bounded (SCRAM_ITER_MAX) because PBKDF2 cost is the server's
 * choice, and the server signature must verify or the login fails, so a backend that
 * does not know the verifier cannot impersonate the real one.
 *
 * Passwords are used as raw bytes, without SASLprep. For ASCII passwords (which is all
 * Waypoint generates, see wp_random_password) SASLprep is the identity or fails, and
 * PostgreSQL then also uses the raw bytes, so both sides agree.
 */
#include "scram.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/base64.h>
#include <mbedtls/constant_time.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/md.h>
#include <mbedtls/pkcs5.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/version.h>

#define SCRAM_KEY_LEN 32   /* SHA-256 output */
#define SCRAM_SALT_LEN 16  /* what PostgreSQL itself generates */
#define SCRAM_NONCE_RAW 18 /* -> 24 base64 characters, as libpq */
#define SCRAM_NONCE_MAX 256
#define SCRAM_SALT_B64_MAX 512 /* server salts beyond this are refused */
#define SCRAM_MSG_MAX 4096
#define GS2_PLAIN "n,,"
#define GS2_NO_PLUS "y,," /* client could bind, server did not offer it */
#define GS2_CB "p=tls-server-end-point,,"
#define CB_MAX 64

/* ---- CSPRNG ----
 * One DRBG for the whole process: seeding from the entropy source is slow and the
 * source is itself process-wide, so per-thread or per-call DRBGs would only add cost.
 * pthread_once gives race-free lazy initialisation without an init call the rest of
 * the program must remember; the mutex serialises generate calls, because a CTR_DRBG
 * context is not safe for concurrent use unless mbedTLS happens to be built with
 * MBEDTLS_THREADING_C, and we do not want correctness to depend on that. */
static pthread_once_t rng_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t rng_lock = PTHREAD_MUTEX_INITIALIZER;
static mbedtls_entropy_context rng_entropy;
static mbedtls_ctr_drbg_context rng_drbg;
static int rng_ready; /* written once inside pthread_once, read after it */

static void rng_init(void)
{
    static const char pers[] = "waypoint-csprng";
    mbedtls_entropy_init(&rng_entropy);
    mbedtls_ctr_drbg_init(&rng_drbg);
    rng_ready = mbedtls_ctr_drbg_seed(&rng_drbg, mbedtls_entropy_func, &rng_entropy,
                                      (const unsigned char *)pers, sizeof(pers) - 1) == 0;
}

wp_status wp_random_bytes(void *buf, size_t n)
{
    if (pthread_once(&rng_once, rng_init) != 0 || !rng_ready)
        return WP_ERR_INTERNAL;
    unsigned char *p = buf;
    int rc = 0;
    pthread_mutex_lock(&rng_lock);
    while (n > 0 && rc == 0) {
        size_t chunk = n < MBEDTLS_CTR_DRBG_MAX_REQUEST ? n : MBEDTLS_CTR_DRBG_MAX_REQUEST;
        rc = mbedtls_ctr_drbg_random(&rng_drbg, p, chunk);
        p += chunk;
        n -= chunk;
    }
    pthread_mutex_unlock(&rng_lock);
    return rc == 0 ? WP_OK : WP_ERR_INTERNAL;
}

static wp_status b64_encode(const unsigned char *src, size_t n, char *dst, size_t dstsz,
                            size_t *olen)
{
    size_t o = 0;
    if (mbedtls_base64_encode((unsigned char *)dst, dstsz, &o, src, n) != 0)
        return WP_ERR_TOO_LARGE;
    if (olen)
        *olen = o;
    return WP_OK;
}

wp_status wp_random_password(char out[44])
{
    unsigned char raw[32];
    char b64[48];
    wp_status st = wp_random_bytes(raw, sizeof(raw));
    if (st == WP_OK)
        st = b64_encode(raw, sizeof(raw), b64, sizeof(b64), NULL);
    mbedtls_platform_zeroize(raw, sizeof(raw));
    if (st != WP_OK)
        return st;
    /* base64url without padding: 43 characters */
    for (size_t i = 0; i < 43; i++)
        out[i] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : b64[i];
    out[43] = '\0';
    mbedtls_platform_zeroize(b64, sizeof(b64));
    return WP_OK;
}

/* ---- hashing helpers ---- */

wp_status wp_sha256(const void *data, size_t n, unsigned char out[32])
{
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    return md && mbedtls_md(md, data, n, out) == 0 ? WP_OK : WP_ERR_INTERNAL;
}

wp_status wp_sha1(const void *data, size_t n, unsigned char out[20])
{
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA1);
    return md && mbedtls_md(md, data, n, out) == 0 ? WP_OK : WP_ERR_INTERNAL;
}

void wp_zeroize(void *buf, size_t n)
{
    mbedtls_platform_zeroize(buf, n);
}

static const mbedtls_md_info_t *sha256(void)
{
    return mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
}

static int hmac(const unsigned char *key, size_t klen, const void *msg, size_t mlen,
                unsigned char out[SCRAM_KEY_LEN])
{
    return mbedtls_md_hmac(sha256(), key, klen, msg, mlen, out);
}

/* PBKDF2-HMAC-SHA-256. mbedTLS 3 deprecates the context-taking form for _ext. */
static int salted_password(const char *password, const unsigned char *salt, size_t salt_len,
                           unsigned iter, unsigned char out[SCRAM_KEY_LEN])
{
#if MBEDTLS_VERSION_NUMBER >= 0x03030000
    return mbedtls_pkcs5_pbkdf2_hmac_ext(MBEDTLS_MD_SHA256, (const unsigned char *)password,
                                         strlen(password), salt, salt_len, iter, SCRAM_KEY_LEN,
                                         out);
#else
    mbedtls_md_context_t ctx;
    mbedtls_md_init(&ctx);
    int rc = mbedtls_md_setup(&ctx, sha256(), 1);
    if (rc == 0)
        rc = mbedtls_pkcs5_pbkdf2_hmac(&ctx, (const unsigned char *)password, strlen(password),
                                       salt, salt_len, iter, SCRAM_KEY_LEN, out);
    mbedtls_md_free(&ctx);
    return rc;
#endif
}

/* ClientKey, StoredKey and ServerKey from SaltedPassword (RFC 5802 section 3). */
static int derive_keys(const unsigned char salted[SCRAM_KEY_LEN],
                       unsigned char client_key[SCRAM_KEY_LEN],
                       unsigned char stored_key[SCRAM_KEY_LEN],
                       unsigned char server_key[SCRAM_KEY_LEN])
{
    int rc = hmac(salted, SCRAM_KEY_LEN, "Client Key", 10, client_key);
    if (rc == 0)
        rc = mbedtls_md(sha256(), client_key, SCRAM_KEY_LEN, stored_key);
    if (rc == 0)
        rc = hmac(salted, SCRAM_KEY_LEN, "Server Key", 10, server_key);
    return rc;
}

/* ---- verifier ---- */

wp_status scram_make_verifier(const char *password, unsigned iterations, char *out, size_t outsz)
{
    /* Our own client refuses more than SCRAM_ITER_MAX, so a verifier above it would be
     * one Waypoint itself could never log in with. */
    if (iterations < 1 || iterations > SCRAM_ITER_MAX)
        return WP_ERR_INVALID;
    unsigned char salt[SCRAM_SALT_LEN], salted[SCRAM_KEY_LEN], ck[SCRAM_KEY_LEN], sk[SCRAM_KEY_LEN],
        svk[SCRAM_KEY_LEN];
    char salt64[32], sk64[48], svk64[48];
    wp_status st = wp_random_bytes(salt, sizeof(salt));
    if (st == WP_OK && (salted_password(password, salt, sizeof(salt), iterations, salted) != 0 ||
                        derive_keys(salted, ck, sk, svk) != 0))
        st = WP_ERR_INTERNAL;
    if (st == WP_OK)
        st = b64_encode(salt, sizeof(salt), salt64, sizeof(salt64), NULL);
    if (st == WP_OK)
        st = b64_encode(sk, sizeof(sk), sk64, sizeof(sk64), NULL);
    if (st == WP_OK)
        st = b64_encode(svk, sizeof(svk), svk64, sizeof(svk64), NULL);
    if (st == WP_OK) {
        int n = snprintf(out, outsz, "SCRAM-SHA-256$%u:%s$%s:%s", iterations, salt64, sk64, svk64);
        if (n < 0 || (size_t)n >= outsz)
            st = WP_ERR_TOO_LARGE;
    }
    mbedtls_platform_zeroize(salted, sizeof(salted));
    mbedtls_platform_zeroize(ck, sizeof(ck));
    return st;
}

/* ---- MD5 ---- */

static wp_status md5_hex(const void *a, size_t alen, const void *b, size_t blen, char out[36])
{
    const mbedtls_md_info_t *md5 = mbedtls_md_info_from_type(MBEDTLS_MD_MD5);
    mbedtls_md_context_t ctx;
    unsigned char dig[16];
    mbedtls_md_init(&ctx);
    int rc = mbedtls_md_setup(&ctx, md5, 0);
    if (rc == 0)
        rc = mbedtls_md_starts(&ctx);
    if (rc == 0)
        rc = mbedtls_md_update(&ctx, a, alen);
    if (rc == 0)
        rc = mbedtls_md_update(&ctx, b, blen);
    if (rc == 0)
        rc = mbedtls_md_finish(&ctx, dig);
    mbedtls_md_free(&ctx);
    if (rc != 0)
        return WP_ERR_INTERNAL;
    static const char hex[] = "0123456789abcdef";
    memcpy(out, "md5", 3);
    for (int i = 0; i < 16; i++) {
        out[3 + 2 * i] = hex[dig[i] >> 4];
        out[4 + 2 * i] = hex[dig[i] & 15];
    }
    out[35] = '\0';
    return WP_OK;
}

wp_status scram_md5_stored(const char *password, const char *user, char out[36])
{
    return md5_hex(password, strlen(password), user, strlen(user), out);
}

wp_status scram_md5_response(const char *password, const char *user, const unsigned char salt[4],
                             char out[36])
{
    char inner[36];
    wp_status st = scram_md5_stored(password, user, inner);
    if (st == WP_OK)
        st = md5_hex(inner + 3, 32, salt, 4, out); /* hex digest without "md5" */
    mbedtls_platform_zeroize(inner, sizeof(inner));
    return st;
}

/* ---- SCRAM client ---- */

typedef enum { SC_NEW, SC_SENT_FIRST, SC_SENT_FINAL, SC_DONE } sc_state;

struct scram_client {
    sc_state state;
    char *password;
    unsigned char cb[CB_MAX];
    size_t cb_len;
    int tls_without_plus; /* gs2 flag 'y' instead of 'n' */
    char nonce[SCRAM_NONCE_MAX + 1];
    char user[256]; /* SASLname-escaped; empty by default (PostgreSQL ignores it) */
    char *client_first_bare;
    unsigned char server_signature[SCRAM_KEY_LEN];
};

/* A nonce is printable ASCII without ',' (RFC 5802 "printable"). */
static int nonce_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x21 || s[i] > 0x7e || s[i] == ',')
            return 0;
    return n > 0;
}

static int make_nonce(char out[SCRAM_NONCE_MAX + 1])
{
    unsigned char raw[SCRAM_NONCE_RAW];
    if (wp_random_bytes(raw, sizeof(raw)) != WP_OK)
        return -1;
    return b64_encode(raw, sizeof(raw), out, SCRAM_NONCE_MAX + 1, NULL) == WP_OK ? 0 : -1;
}

scram_client *scram_client_new(const char *password, const unsigned char *channel_binding,
                               size_t cb_len, const char *nonce)
{
    if (!password || cb_len > CB_MAX || (channel_binding == NULL) != (cb_len == 0))
        return NULL;
    if (nonce && (strlen(nonce) > SCRAM_NONCE_MAX || !nonce_ok(nonce, strlen(nonce))))
        return NULL;
    scram_client *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    if (!(c->password = strdup(password)))
        goto fail;
    if (cb_len)
        memcpy(c->cb, channel_binding, cb_len);
    c->cb_len = cb_len;
    if (nonce)
        snprintf(c->nonce, sizeof(c->nonce), "%s", nonce);
    else if (make_nonce(c->nonce) != 0)
        goto fail;
    return c;
fail:
    scram_client_free(c);
    return NULL;
}

void scram_client_free(scram_client *c)
{
    if (!c)
        return;
    if (c->password) {
        mbedtls_platform_zeroize(c->password, strlen(c->password));
        free(c->password);
    }
    free(c->client_first_bare);
    mbedtls_platform_zeroize(c, sizeof(*c));
    free(c);
}

const char *scram_client_mechanism(const scram_client *c)
{
    return c->cb_len ? "SCRAM-SHA-256-PLUS" : "SCRAM-SHA-256";
}

wp_status scram_client_set_username(scram_client *c, const char *user)
{
    if (c->state != SC_NEW)
        return WP_ERR_INVALID;
    size_t o = 0;
    for (const char *p = user; *p; p++) {
        const char *rep = *p == ',' ? "=2C" : *p == '=' ? "=3D" : NULL;
        size_t n = rep ? 3 : 1;
        if (o + n >= sizeof(c->user))
            return WP_ERR_TOO_LARGE;
        memcpy(c->user + o, rep ? rep : p, n);
        o += n;
    }
    c->user[o] = '\0';
    return WP_OK;
}

wp_status scram_client_set_tls_without_plus(scram_client *c)
{
    if (c->state != SC_NEW || c->cb_len)
        return WP_ERR_INVALID;
    c->tls_without_plus = 1;
    return WP_OK;
}

static const char *gs2_header(const scram_client *c)
{
    return c->cb_len ? GS2_CB : c->tls_without_plus ? GS2_NO_PLUS : GS2_PLAIN;
}

wp_status scram_client_first(scram_client *c, char **out, size_t *out_len)
{
    if (c->state != SC_NEW)
        return WP_ERR_INVALID;
    char bare[SCRAM_MSG_MAX];
    int n = snprintf(bare, sizeof(bare), "n=%s,r=%s", c->user, c->nonce);
    if (n < 0 || (size_t)n >= sizeof(bare))
        return WP_ERR_TOO_LARGE;
    if (!(c->client_first_bare = strdup(bare)))
        return WP_ERR_NOMEM;
    size_t len = strlen(gs2_header(c)) + (size_t)n;
    if (!(*out = malloc(len + 1)))
        return WP_ERR_NOMEM;
    snprintf(*out, len + 1, "%s%s", gs2_header(c), bare);
    *out_len = len;
    c->state = SC_SENT_FIRST;
    return WP_OK;
}

/* Strict base64: whole quads, alphabet only, '=' only as final padding. mbedTLS's
 * decoder tolerates line breaks and spaces, which a SCRAM attribute must not contain. */
static int b64_decode_strict(const char *s, size_t n, unsigned char *out, size_t outsz,
                             size_t *olen)
{
    if (n == 0 || n % 4 != 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        int alpha = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                    (ch >= '0' && ch <= '9') || ch == '+' || ch == '/';
        if (!alpha && !(ch == '=' && i >= n - 2 && (i == n - 1 || s[n - 1] == '=')))
            return -1;
    }
    return mbedtls_base64_decode(out, outsz, olen, (const unsigned char *)s, n) == 0 ? 0 : -1;
}

static wp_status malformed(wp_error *err, const char *what, const char *why)
{
    wp_error_set(err, WP_SQLSTATE_PROTOCOL, "malformed SCRAM %s from the backend: %s", what, why);
    return WP_ERR_PROTOCOL;
}

/* Copies a server message into a NUL-terminated string, refusing embedded NULs. */
static wp_status take_msg(const char *in, size_t len, char *buf, const char *what, wp_error *err)
{
    if (len >= SCRAM_MSG_MAX)
        return malformed(err, what, "message too long");
    if (memchr(in, '\0', len))
        return malformed(err, what, "embedded NUL byte");
    memcpy(buf, in, len);
    buf[len] = '\0';
    return WP_OK;
}

typedef struct server_first {
    const char *nonce; /* points into the message copy */
    size_t nonce_len;
    unsigned char salt[SCRAM_SALT_B64_MAX / 4 * 3];
    size_t salt_len;
    unsigned iter;
} server_first;

/* Returns the attribute value for "<name>=" at *p (up to ',' or the end) and advances
 * *p past it and the following comma. NULL when the attribute is not there. */
static const char *attr(const char **p, char name, size_t *vlen)
{
    const char *s = *p;
    if (s[0] != name || s[1] != '=')
        return NULL;
    s += 2;
    *vlen = strcspn(s, ",");
    *p = s + *vlen + (s[*vlen] == ',' ? 1 : 0);
    return s;
}

static wp_status parse_iter(const char *v, size_t n, unsigned *iter, wp_error *err)
{
    if (n == 0 || n > 9 || strspn(v, "0123456789") < n)
        return malformed(err, "server-first-message", "iteration count is not a number");
    unsigned long it = strtoul(v, NULL, 10);
    if (it == 0)
        return malformed(err, "server-first-message", "iteration count is zero");
    if (it > SCRAM_ITER_MAX) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH,
                     "backend asked for %lu SCRAM iterations; Waypoint allows at most %d", it,
                     SCRAM_ITER_MAX);
        return WP_ERR_AUTH;
    }
    *iter = (unsigned)it;
    return WP_OK;
}

static wp_status parse_server_first(const scram_client *c, const char *msg, server_first *sf,
                                    wp_error *err)
{
    const char *what = "server-first-message", *p = msg, *v;
    size_t n;
    if (msg[0] == 'm' && msg[1] == '=')
        return malformed(err, what, "unsupported mandatory extension");
    if (!(v = attr(&p, 'r', &n)))
        return malformed(err, what, "nonce (r=) missing");
    size_t mine = strlen(c->nonce);
    if (n <= mine || memcmp(v, c->nonce, mine) != 0)
        return malformed(err, what, "nonce does not extend the client nonce");
    if (!nonce_ok(v, n) || n > SCRAM_NONCE_MAX * 2)
        return malformed(err, what, "nonce has invalid characters or length");
    sf->nonce = v;
    sf->nonce_len = n;
    if (!(v = attr(&p, 's', &n)))
        return malformed(err, what, "salt (s=) missing");
    if (n > SCRAM_SALT_B64_MAX ||
        b64_decode_strict(v, n, sf->salt, sizeof(sf->salt), &sf->salt_len) != 0)
        return malformed(err, what, "salt is not valid base64");
    if (!(v = attr(&p, 'i', &n)))
        return malformed(err, what, "iteration count (i=) missing");
    if (*p != '\0' || v[n] == ',')
        return malformed(err, what, "unexpected data after the iteration count");
    return parse_iter(v, n, &sf->iter, err);
}

/* "c=<b64(gs2 header [+ cb data])>,r=<nonce>" */
static wp_status final_without_proof(const scram_client *c, const server_first *sf, char *out,
                                     size_t outsz)
{
    unsigned char cbind[sizeof(GS2_CB) + CB_MAX];
    size_t gl = strlen(gs2_header(c));
    memcpy(cbind, gs2_header(c), gl);
    memcpy(cbind + gl, c->cb, c->cb_len);
    char b64[2 * sizeof(cbind)];
    wp_status st = b64_encode(cbind, gl + c->cb_len, b64, sizeof(b64), NULL);
    if (st != WP_OK)
        return st;
    int n = snprintf(out, outsz, "c=%s,r=%.*s", b64, (int)sf->nonce_len, sf->nonce);
    return n < 0 || (size_t)n >= outsz ? WP_ERR_TOO_LARGE : WP_OK;
}

/* Computes ClientProof into proof and keeps ServerSignature for verify(). */
static wp_status compute_proof(scram_client *c, const server_first *sf, const char *auth_msg,
                               unsigned char proof[SCRAM_KEY_LEN])
{
    unsigned char salted[SCRAM_KEY_LEN], ck[SCRAM_KEY_LEN], sk[SCRAM_KEY_LEN], svk[SCRAM_KEY_LEN],
        sig[SCRAM_KEY_LEN];
    size_t alen = strlen(auth_msg);
    int rc = salted_password(c->password, sf->salt, sf->salt_len, sf->iter, salted);
    if (rc == 0)
        rc = derive_keys(salted, ck, sk, svk);
    if (rc == 0)
        rc = hmac(sk, SCRAM_KEY_LEN, auth_msg, alen, sig);
    if (rc == 0)
        rc = hmac(svk, SCRAM_KEY_LEN, auth_msg, alen, c->server_signature);
    for (int i = 0; i < SCRAM_KEY_LEN; i++)
        proof[i] = ck[i] ^ sig[i];
    mbedtls_platform_zeroize(salted, sizeof(salted));
    mbedtls_platform_zeroize(ck, sizeof(ck));
    mbedtls_platform_zeroize(svk, sizeof(svk));
    return rc == 0 ? WP_OK : WP_ERR_INTERNAL;
}

static wp_status build_final(scram_client *c, const char *server_first_msg, const server_first *sf,
                             char **out, size_t *out_len)
{
    char cfwp[SCRAM_MSG_MAX], auth[3 * SCRAM_MSG_MAX], proof64[64];
    unsigned char proof[SCRAM_KEY_LEN];
    wp_status st = final_without_proof(c, sf, cfwp, sizeof(cfwp));
    if (st != WP_OK)
        return st;
    snprintf(auth, sizeof(auth), "%s,%s,%s", c->client_first_bare, server_first_msg, cfwp);
    if ((st = compute_proof(c, sf, auth, proof)) != WP_OK)
        return st;
    st = b64_encode(proof, sizeof(proof), proof64, sizeof(proof64), NULL);
    if (st != WP_OK)
        return st;
    size_t len = strlen(cfwp) + 3 + strlen(proof64);
    if (!(*out = malloc(len + 1)))
        return WP_ERR_NOMEM;
    snprintf(*out, len + 1, "%s,p=%s", cfwp, proof64);
    *out_len = len;
    return WP_OK;
}

wp_status scram_client_final(scram_client *c, const char *server_first_msg, size_t len, char **out,
                             size_t *out_len, wp_error *err)
{
    if (c->state != SC_SENT_FIRST) {
        wp_error_set(err, WP_SQLSTATE_PROTOCOL, "unexpected SCRAM server-first-message");
        return WP_ERR_PROTOCOL;
    }
    c->state = SC_DONE; /* any failure ends the exchange */
    char msg[SCRAM_MSG_MAX];
    server_first sf;
    wp_status st = take_msg(server_first_msg, len, msg, "server-first-message", err);
    if (st == WP_OK)
        st = parse_server_first(c, msg, &sf, err);
    if (st != WP_OK)
        return st;
    if ((st = build_final(c, msg, &sf, out, out_len)) != WP_OK) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "could not compute the SCRAM proof");
        return st;
    }
    c->state = SC_SENT_FINAL;
    return WP_OK;
}

/* The server's e= text is shown to the client; keep it printable and short. */
static void server_error(wp_error *err, const char *text)
{
    char clean[128];
    size_t i = 0;
    for (; text[i] && i < sizeof(clean) - 1; i++)
        clean[i] = text[i] >= 0x20 && text[i] < 0x7f ? text[i] : '?';
    clean[i] = '\0';
    wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, "backend rejected SCRAM authentication: %s", clean);
}

wp_status scram_client_verify(scram_client *c, const char *server_final, size_t len, wp_error *err)
{
    if (c->state != SC_SENT_FINAL) {
        wp_error_set(err, WP_SQLSTATE_PROTOCOL, "unexpected SCRAM server-final-message");
        return WP_ERR_PROTOCOL;
    }
    c->state = SC_DONE;
    char msg[SCRAM_MSG_MAX];
    wp_status st = take_msg(server_final, len, msg, "server-final-message", err);
    if (st != WP_OK)
        return st;
    if (msg[0] == 'e' && msg[1] == '=') {
        server_error(err, msg + 2);
        return WP_ERR_AUTH;
    }
    if (msg[0] != 'v' || msg[1] != '=')
        return malformed(err, "server-final-message", "verifier (v=) missing");
    unsigned char sig[SCRAM_KEY_LEN + 3];
    size_t n = 0;
    if (b64_decode_strict(msg + 2, len - 2, sig, sizeof(sig), &n) != 0 || n != SCRAM_KEY_LEN)
        return malformed(err, "server-final-message", "verifier is not a valid signature");
    if (mbedtls_ct_memcmp(sig, c->server_signature, SCRAM_KEY_LEN) != 0) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH,
                     "backend's SCRAM signature is wrong: it does not know the password");
        return WP_ERR_AUTH;
    }
    return WP_OK;
}
