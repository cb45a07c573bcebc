/*
 * certs: where the server-side TLS certificate comes from (spec section 8).
 *
 * A certs_store holds the listener's file certificate (cert_file/key_file) and a cache of
 * Tailscale-managed certificates keyed by server name. certs_select() applies the
 * spec's choice rules to the client's SNI name. The Tailscale source is reached only
 * through a fetch callback, so the rules can be tested without tailscaled; tls.c wires
 * the callback to ts_cert_pair().
 *
 * Selected certificates are reference counted: a refresh replaces a cache entry without
 * pulling the old certificate out from under a handshake that is still using it.
 */
#ifndef WP_CERTS_H
#define WP_CERTS_H

#include <stddef.h>
#include <stdint.h>

#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>

#include "wp_error.h"

/* Fetches the PEM pair for domain: private key first, then the certificate chain (the
 * LocalAPI `cert/<domain>?type=pair` format). *pem is malloc'd; the store wipes and
 * frees it. Must be safe to call from any thread. */
typedef wp_status (*certs_fetch_fn)(void *arg, const char *domain, char **pem, size_t *pem_len,
                                    wp_error *err);

/* Reads the node's CertDomains (tailscaled's status): *out is a malloc'd array of *n
 * malloc'd lowercase names, freed by the store. Must be safe to call from any thread. */
typedef wp_status (*certs_domains_fn)(void *arg, char ***out, size_t *n, wp_error *err);

typedef struct certs_store certs_store;

#define CERTS_NAME_MAX 253
#define CERTS_DOMAINS_TTL_MS (5 * 60 * 1000)

/* One usable certificate: chain plus matching private key. Read-only once published. */
typedef struct certs_pair {
    mbedtls_x509_crt chain;
    mbedtls_pk_context key;
    int64_t not_before; /* leaf validity, Unix seconds */
    int64_t not_after;
    unsigned char fp[32]; /* SHA-256 of the leaf (DER): what a resumed session is bound to */
} certs_pair;

typedef enum {
    CERTS_SRC_NONE = 0,
    CERTS_SRC_FILE,
    CERTS_SRC_TAILSCALE,
} certs_source;

typedef struct certs_opts {
    const char *cert_file; /* NULL: no file certificate */
    const char *key_file;
    int use_tailscale;    /* 0: fetch is never called */
    certs_fetch_fn fetch; /* may be NULL (same as use_tailscale = 0) */
    void *fetch_arg;
    /* The node's CertDomains (NULL: unknown, so no-SNI and short names get nothing
     * from the Tailscale source and certs_has_source trusts use_tailscale). */
    certs_domains_fn domains;
    void *domains_arg;
} certs_opts;

/* Loads the file certificate (when configured) and checks that the key matches it.
 * Errors name the file: WP_ERR_CONFIG. */
wp_status certs_new(const certs_opts *o, certs_store **out, wp_error *err);
void certs_free(certs_store *s);

/* Minimum time between two fetch attempts for one name (default 60 s), so a handshake
 * storm or a failing tailscaled is not hammered. Tests set 0. */
void certs_set_retry_interval(certs_store *s, int64_t ms);

/* Picks the certificate for sni (NULL or "" = no SNI). On success *out holds a reference
 * (release with certs_release) and *src says where it came from. WP_ERR_NOT_FOUND when
 * no source applies (the handshake must fail). */
wp_status certs_select(certs_store *s, const char *sni, const certs_pair **out, certs_source *src);
void certs_release(certs_store *s, const certs_pair *p);

/* The certificate for a client that sent no SNI (connected by IP): the file one, else
 * the Tailscale certificate of the node's first cert domain; NULL if none. Referenced
 * like certs_select's (certs_release). */
const certs_pair *certs_default(certs_store *s);

/* 1 when some certificate can be served: a file certificate, or the Tailscale source
 * with at least one cert domain. CertDomains are re-read when unknown or empty (at most
 * every retry interval) and every CERTS_DOMAINS_TTL_MS otherwise; *why (static text)
 * says what is missing when 0. */
int certs_has_source(certs_store *s, const char **why);

/* The Tailscale certificate name for an SNI name: itself when it is a cert domain or
 * ends in ".ts.net"; a bare label expanded to the cert domain it begins (as tailscale's
 * ExpandSNIName); else "" (out has CERTS_NAME_MAX + 1 bytes). Exposed for tests. */
void certs_ts_name(certs_store *s, const char *sni, char *out);

/* The file certificate, or NULL. Owned by the store (lives as long as it). */
const certs_pair *certs_file_pair(const certs_store *s);

/* 1 when name (case-insensitive) matches a DNS SAN of the leaf (a leading "*." label
 * matches exactly one label) or its CN. Exposed for tests. */
int certs_name_matches(const mbedtls_x509_crt *leaf, const char *name);

/* Parses a key-then-chain PEM pair into a new certs_pair (key must match the leaf). */
/* Initialises the crypto library once per process (psa_crypto_init on mbedTLS 3) and
 * seeds the shared RNG below. Idempotent and thread safe; everything in certs.c and
 * tls.c calls it before using mbedTLS. */
wp_status certs_lib_init(wp_error *err);
/* The process-wide DRBG as an mbedTLS f_rng (p_rng ignored); after certs_lib_init. */
int certs_rng(void *unused, unsigned char *out, size_t len);

wp_status certs_pair_from_pem(const char *pem, size_t pem_len, certs_pair **out, wp_error *err);
void certs_pair_free(certs_pair *p);

#endif
