/*
 * pool: parked, already authenticated backend sessions, for the next connection of the
 * same caller (issue 12).
 *
 * A session whose client ended politely (Terminate while the backend was idle) is reset
 * with DISCARD ALL and parked here instead of being closed. The next connection of the
 * same caller, after its own WhoIs and grant resolution, takes it back: no provisioning,
 * no upstream login. The pool only stores, matches, checks and closes sessions; the
 * session module decides when to park and what to tell the client.
 *
 * Matching. A parked session belongs to an owner (listener + the role's identity record,
 * which names the login, node, database and downgrade scope) and carries the effective
 * grant it was provisioned for and the startup parameters the backend applied. A take
 * hands out a session only when all of these are equal; a parked session of the same
 * owner whose grant differs is closed on the spot (the grant changed).
 *
 * Liveness. Parked sockets are watched by one reaper thread: a backend that closes or
 * sends anything while parked, or that outlives its expiry, is closed. A take checks the
 * socket once more before handing it out.
 */
#ifndef WP_POOL_H
#define WP_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "grant.h"
#include "identity.h"
#include "pgwire.h"
#include "upstream.h"

typedef struct pool pool;

/* What identifies the backend state of a session. Strings are borrowed by pool calls
 * and copied when a session is parked. */
typedef struct pool_key {
    const char *listener;
    const char *owner;   /* id_role_record(): login, node, database, scope */
    const char *grant;   /* pool_grant_fingerprint() */
    const char *params;  /* pool_params_fingerprint() of the forwarded startup parameters */
    uint64_t generation; /* the configuration it was set up under (sess_env.generation): a
                            session parked after a reload is never handed to the new one */
} pool_key;

/* One ParameterStatus value the backend reported. */
typedef struct pool_status {
    char *name;
    char *value;
} pool_status;

/* A backend session, live in a worker or parked here. */
typedef struct pool_session {
    up_conn up;
    int open;
    char role[ID_ROLE_MAX + 1];
    uint32_t backend_pid;
    unsigned char backend_key[PGW_CANCEL_KEY_MAX];
    size_t backend_key_len;
    pool_status *status; /* ParameterStatus values in the order first reported */
    size_t nstatus;
    int64_t expiry_set_ms; /* when the role's VALID UNTIL was last pushed to now + ttl */
} pool_session;

typedef struct pool_limits {
    int64_t lifetime_ms; /* a parked session is closed this long after parking */
    int64_t max_per_role;
    int64_t max_total;
} pool_limits;

typedef enum {
    POOL_DROP_ALL = 0, /* SIGHUP, drain */
    POOL_DROP_OWNER,   /* a refused connect of the owner (grant revoked) */
} pool_drop_kind;

/* Starts the reaper thread. NULL when out of memory or threads. */
pool *pool_new(void);
/* Closes every parked session and stops the reaper. */
void pool_free(pool *p);

/* Parks s (taking over its backend connection: s->open is 0 afterwards) unless the pool
 * is shut down; when a bound is reached the oldest parked session of the role (or
 * overall) is closed to make room. Returns 1 when parked; on 0 the caller still owns s. */
int pool_park(pool *p, const pool_key *k, pool_session *s, const pool_limits *lim);
/* Takes the newest live session parked under exactly k into *out (1), or returns 0.
 * Sessions of k's owner with another grant are closed. */
int pool_take(pool *p, const pool_key *k, pool_session *out);
/* Closes parked sessions: all of them, or those of (listener, owner). */
void pool_drop(pool *p, pool_drop_kind kind, const char *listener, const char *owner,
               const char *reason);
/* Closes everything and refuses parking from now on (drain). */
void pool_shutdown(pool *p);
size_t pool_count(pool *p);

/* Resets s for the next client: DISCARD ALL must complete with CommandComplete and an
 * idle ReadyForQuery, with nothing else but ParameterStatus (recorded) and notices in
 * between. WP_OK when s may be parked. */
wp_status pool_reset(pool_session *s, int64_t deadline_ms);
/* Records a ParameterStatus body (name\0value\0). */
wp_status pool_status_set(pool_session *s, const unsigned char *body, size_t len);
/* Appends the recorded ParameterStatus messages to out. */
wp_status pool_status_build(const pool_session *s, pgw_buf *out);
/* Sends Terminate (best effort) and closes the backend connection; frees s's state. */
void pool_session_close(pool_session *s);
/* Frees what s holds besides the connection (after its connection moved elsewhere). */
void pool_session_clear(pool_session *s);

/* Fingerprints (malloc'd, NULL when out of memory): everything of the grant that
 * shapes the backend role; the parameters in the order sent. */
char *pool_grant_fingerprint(const grant_effective *g);
char *pool_params_fingerprint(const pgw_param *params, size_t n);

#endif
