/*
 * tls: mbedTLS (2.28: TLS 1.2; 3.6: TLS 1.2 and 1.3) on both sides of the proxy (spec
 * section 8), with session resumption toward clients.
 *
 * Server side: tls_server_ctx holds the shared, read-only mbedTLS config plus the
 * certificate sources (certs.c); each client connection gets its own mbedtls_ssl_context
 * wrapped as a wp_io. Client side (to the backend): the PostgreSQL SSLRequest dance and
 * a TLS wp_io, with verify-full checking the server name against backend_ca_file.
 * The wp_io read op returns -1 with errno = EAGAIN when mbedTLS wants more input, so
 * io.c's helpers poll and retry.
 */
#ifndef WP_TLS_H
#define WP_TLS_H

#include <stddef.h>
#include <stdint.h>

#include "certs.h"
#include "config.h"
#include "io.h"
#include "wp_error.h"

typedef struct tls_server_ctx tls_server_ctx;

/* The TLS library and the protocol versions this build speaks, for -version and logs:
 * "mbedTLS 2.28.3 (TLS 1.2)" or "mbedTLS 3.6.6 (TLS 1.2, TLS 1.3)". */
const char *tls_library(void);
typedef struct ts_client ts_client;

/* Builds the server context for one listener: loads cert_file/key_file when set.
 * ts may be NULL (or use_tailscale_tls false): then the Tailscale source is never used. */
wp_status tls_server_new(const cfg_listener *l, const ts_client *ts, tls_server_ctx **out,
                         wp_error *err);
/* Same, with the Tailscale source as a fetch callback (NULL: none). Used by tests. */
wp_status tls_server_new_src(const cfg_listener *l, certs_fetch_fn fetch, void *fetch_arg,
                             tls_server_ctx **out, wp_error *err);
/* Same, with CertDomains too (the node's names: short-name expansion, no-SNI default,
 * and whether there is any certificate source at all). Used by tests. */
wp_status tls_server_new_srcs(const cfg_listener *l, certs_fetch_fn fetch, certs_domains_fn domains,
                              void *arg, tls_server_ctx **out, wp_error *err);
/* 1 when the listener has a certificate to serve (certs_has_source); 0 means SSLRequest
 * is answered 'N'. Logs tls_unavailable (with why) / tls_available once per change, and
 * once when the context is built (start, reload). */
int tls_server_can_serve(tls_server_ctx *s);
/* Drops the creator's reference. Connections accepted with s hold their own, so a reload
 * may free the old context while its sessions go on; ts must outlive all of them. */
void tls_server_free(tls_server_ctx *s);

/* Handshake on fd (after answering 'S' to SSLRequest, or for direct TLS when require_alpn
 * is set, which then demands ALPN "postgresql"). On success io reads/writes through TLS;
 * call tls_io_free(io) when done. Nothing read from fd before this call is used. */
wp_status tls_server_accept(tls_server_ctx *s, int fd, int require_alpn, int64_t deadline_ms,
                            wp_io *io, wp_error *err);
/* Server name the client sent (SNI) or NULL; valid until tls_io_free. */
const char *tls_io_sni(const wp_io *io);
/* 1 when the client resumed an earlier session (ticket or session cache), 0 for a full
 * handshake or a non-TLS io. */
int tls_io_resumed(const wp_io *io);
void tls_io_free(wp_io *io);

/* Backend side: sends SSLRequest on fd per mode; on 'S' does the TLS handshake and
 * rewires io. *is_tls tells whether the link ended up encrypted (prefer may fall back).
 * cb_hash gets the tls-server-end-point hash of the server certificate (for
 * SCRAM-SHA-256-PLUS), cb_len its length (0 when not TLS). */
wp_status tls_client_start(int fd, const char *server_name, cfg_backend_tls mode,
                           const char *ca_file, int64_t deadline_ms, wp_io *io, int *is_tls,
                           unsigned char cb_hash[64], size_t *cb_len, wp_error *err);

#endif
