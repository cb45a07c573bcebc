/*
 * tailscale: the LocalAPI client (spec section 2), libcurl over tailscaled's unix socket.
 *
 * Any number of worker threads may call in at once: each call takes a curl easy handle
 * (with its kept-alive LocalAPI connection) from the client's small locked cache, uses
 * it alone and returns it. Every failure mode maps to a distinct status; none of them
 * ever means "allow".
 */
#ifndef WP_TAILSCALE_H
#define WP_TAILSCALE_H

#include <stddef.h>
#include <stdint.h>

#include "identity.h"
#include "wp_error.h"

typedef struct ts_handles ts_handles; /* idle curl handles, private to tailscale.c */

typedef struct ts_client {
    char *socket_path;
    char *capability;
    int64_t timeout_ms;
    ts_handles *idle; /* mutable through a const client: has its own lock */
} ts_client;

/* Call once at process start (curl_global_init), before threads. */
wp_status ts_global_init(void);
void ts_global_cleanup(void);

ts_client *ts_client_new(const char *socket_path, const char *capability, int64_t timeout_ms);
void ts_client_free(ts_client *c);

/* addr is "ip:port" or "[ipv6]:port".
 *   WP_OK            identified, *out set
 *   WP_ERR_NOT_FOUND 404 "no match": not a tailnet peer
 *   WP_ERR_TAILSCALE anything else (4xx, 5xx, bad JSON, socket missing); reason in err
 *   WP_ERR_TIMEOUT   no answer within timeout_ms
 *   WP_ERR_INVALID   addr holds characters outside [0-9a-fA-F.:[]] (nothing was sent)
 *   WP_ERR_NOMEM     allocation failed
 * err->sqlstate is 28000 on every failure; err->detail holds the log-only reason. */
wp_status ts_whois(const ts_client *c, const char *addr, id_identity **out, wp_error *err);

/* GET /localapi/v0/status?peers=false: the node's CertDomains (ipnstate.Status), the
 * names tailscaled can get certificates for, as tailscale's own client library reads
 * them. *out is a malloc'd array of *n malloc'd lowercase names (free with
 * ts_free_domains); none (null or []) is WP_OK with *n = 0. Names outside [a-z0-9.-]
 * are skipped. Errors as for ts_whois (WP_ERR_TAILSCALE for a non-200 or bad JSON). */
wp_status ts_cert_domains(const ts_client *c, char ***out, size_t *n, wp_error *err);
void ts_free_domains(char **domains, size_t n);

/* GET /localapi/v0/cert/<domain>?type=pair: *pem gets key PEM followed by cert chain
 * (malloc'd, NUL-terminated, caller frees). domain must be [a-z0-9.-] (WP_ERR_INVALID
 * otherwise); other statuses as for ts_whois (any non-200 is WP_ERR_TAILSCALE). */
wp_status ts_cert_pair(const ts_client *c, const char *domain, char **pem, size_t *pem_len,
                       wp_error *err);

#endif
