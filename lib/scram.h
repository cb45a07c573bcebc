/*
 * scram: SCRAM-SHA-256 (RFC 5802 / RFC 7677) client, verifier generation, and the MD5
 * password hash, all on mbedTLS primitives (no hand-written crypto).
 *
 * The client is a small state machine the upstream auth loop drives message by message;
 * it verifies the server signature and bounds the iteration count. The verifier helpers
 * let provisioning set passwords without plaintext ever appearing in SQL.
 */
#ifndef WP_SCRAM_H
#define WP_SCRAM_H

#include <stddef.h>
#include <stdint.h>

#include "wp_error.h"

#define SCRAM_ITER_MAX 100000 /* refuse servers asking for more (CPU exhaustion) */
#define SCRAM_VERIFIER_MAX 256

/* Fills buf with n bytes from the process CSPRNG (mbedTLS CTR_DRBG, thread-safe). */
wp_status wp_random_bytes(void *buf, size_t n);
/* SHA-256 of n bytes (the one hash other modules need: names derived from inputs). */
wp_status wp_sha256(const void *data, size_t n, unsigned char out[32]);
/* SHA-1, only where a peer's protocol names things by it (Redis script digests). */
wp_status wp_sha1(const void *data, size_t n, unsigned char out[20]);
/* Wipes n bytes in a way the compiler cannot elide (secrets in memory). */
void wp_zeroize(void *buf, size_t n);
/* 32 random bytes, base64url without padding: 43 chars + NUL. */
wp_status wp_random_password(char out[44]);

/* "SCRAM-SHA-256$<iter>:<salt b64>$<StoredKey b64>:<ServerKey b64>" with a random salt. */
wp_status scram_make_verifier(const char *password, unsigned iterations, char *out, size_t outsz);
/* "md5" + hex(md5(password || user)): PostgreSQL's stored MD5 form. out: 36 bytes. */
wp_status scram_md5_stored(const char *password, const char *user, char out[36]);
/* MD5 auth response: "md5" + hex(md5(hex(md5(password || user)) || salt)). out: 36. */
wp_status scram_md5_response(const char *password, const char *user, const unsigned char salt[4],
                             char out[36]);

typedef struct scram_client scram_client;

/* channel_binding: NULL for plain SCRAM-SHA-256, else the tls-server-end-point hash of
 * the backend's certificate (SCRAM-SHA-256-PLUS). nonce: NULL for a CSPRNG nonce (tests
 * pass a fixed one). */
scram_client *scram_client_new(const char *password, const unsigned char *channel_binding,
                               size_t cb_len, const char *nonce);
void scram_client_free(scram_client *c);
const char *scram_client_mechanism(const scram_client *c);
/* Test-only (RFC test vectors): sets the n= username of client-first, which is empty by
 * default because PostgreSQL ignores it. Call before scram_client_first. */
wp_status scram_client_set_username(scram_client *c, const char *user);
/* The link is TLS but the server did not offer SCRAM-SHA-256-PLUS: the gs2 flag becomes
 * 'y' (RFC 5802 section 6), so a server that does support channel binding refuses the
 * login rather than let a man in the middle strip -PLUS from its offer. Call before
 * scram_client_first; WP_ERR_INVALID when channel binding is already in use. */
wp_status scram_client_set_tls_without_plus(scram_client *c);
/* client-first-message (malloc'd into *out). */
wp_status scram_client_first(scram_client *c, char **out, size_t *out_len);
/* Consumes server-first, produces client-final. */
wp_status scram_client_final(scram_client *c, const char *server_first, size_t len, char **out,
                             size_t *out_len, wp_error *err);
/* Verifies server-final (v=...). WP_ERR_AUTH when the signature is wrong. */
wp_status scram_client_verify(scram_client *c, const char *server_final, size_t len, wp_error *err);

#endif
