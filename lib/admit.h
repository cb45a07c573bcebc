/*
 * admit: per-peer bound on connections that have not started yet (issue 10 item 5).
 *
 * A connection is "unstarted" from accept until its StartupMessage has been read: the
 * phase whose length only the client controls (silence, a slow TLS handshake). Without
 * a bound per peer, one source holding many such sockets fills the listener's
 * max_connections and every other caller is refused until startup_timeout.
 *
 * The peer is who tailscaled says it is, not the socket address: the worker asks WhoIs
 * as soon as the socket is accepted (it only needs the peer ip:port), and the key is the
 * node's StableID when identified, the peer's address otherwise (adm_peer_key). So
 * behind a userspace-networking tailscaled, where every tailnet connection arrives from
 * 127.0.0.1, each node still has its own bound, and local processes that are not on the
 * tailnet share one (they are refused with 28000 anyway): every loopback address is the
 * same peer, or a local user could take the listener from 127.0.1.1, 127.0.1.2, ...
 * each within its own bound. Likewise an IPv6 host picks any address in its /64, so
 * unknown IPv6 peers are counted per /64; IPv4 peers per address.
 *
 * Over the bound, a few connections per peer (ADM_REFUSALS_MAX) are kept to be told
 * why, as an ErrorResponse after their first packet; beyond those the socket is closed
 * at once, so a flood costs one WhoIs per socket and nothing that lasts.
 *
 * One table per process, shared by every worker (hence the lock), keyed by listener
 * name and peer key, holding only peers with a connection in that phase.
 */
#ifndef WP_ADMIT_H
#define WP_ADMIT_H

#include <stddef.h>
#include <stdint.h>

typedef struct adm_table adm_table;

typedef enum {
    ADM_NONE = 0, /* nothing held */
    ADM_PENDING,  /* counted as unstarted: go on */
    ADM_REFUSE,   /* over the bound: read the first packet, refuse with 53300 */
    ADM_DROP,     /* over the bound and enough refusals pending: close, no reply */
} adm_verdict;

#define ADM_REFUSALS_MAX 8

adm_table *adm_new(void);
void adm_free(adm_table *t);

/* Counts one connection for (listener, key) against max_pending (0 = unlimited).
 * Returns ADM_PENDING, ADM_REFUSE or ADM_DROP (nothing held; also on out of memory,
 * failing closed). */
adm_verdict adm_acquire(adm_table *t, const char *listener, const char *key, int64_t max_pending);

/* Gives back what adm_acquire returned (ADM_PENDING or ADM_REFUSE; others are no-ops). */
void adm_release(adm_table *t, const char *listener, const char *key, adm_verdict v);

/* The key of a peer tailscaled did not identify, from its "ip:port" or "[ip6]:port":
 * "addr:loopback" for 127.0.0.0/8, ::1 and ::ffff:127.x; "addr:IP" for other IPv4 (also
 * IPv4-mapped); "addr:PREFIX/64" for other IPv6. Text that is no address is kept as
 * "addr:TEXT" (its own peer). Truncated to outsz (>= 1). */
void adm_peer_key(const char *peer, char *out, size_t outsz);

const char *adm_verdict_str(adm_verdict v);

#endif
