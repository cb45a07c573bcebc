/*
 * prov_kill: the admin side of ending a session on Waypoint's authority.
 *
 * Telling a client "your session is over" means nothing if its backend keeps running:
 * a write in progress would commit after the FATAL. prov_stop_backend() terminates one
 * backend session of a caller role from an admin connection and waits until it is gone,
 * so that once it returns WP_OK nothing more can run or commit for that connection.
 * prov_lock_out_role() makes the role NOLOGIN at revocation, so the password it was last
 * given cannot be used directly either, and ends every other backend of the role; the
 * caller's next authorized connect sets LOGIN again (provisioning always writes LOGIN with
 * the fresh password). prov_session_ended() clears the role's password when a session
 * ends, so one the caller set itself never outlives that session.
 */
#ifndef WP_PROV_KILL_H
#define WP_PROV_KILL_H

#include <stdint.h>

#include "provision.h"

/* Which backend session: PostgreSQL knows it by pid (BackendKeyData), CockroachDB by
 * the client address it saw, i.e. Waypoint's local end of the data connection. */
typedef struct prov_backend_ref {
    uint32_t pid;
    char local_addr[80]; /* "ip:port"; "" when unknown */
} prov_backend_ref;

/* Terminates the session ref of role (checking it belongs to role) and waits until the
 * backend no longer lists it, bounded by deadline_ms. WP_OK: it is gone (or was gone
 * already); WP_ERR_TIMEOUT: still there at the deadline; WP_ERR_BACKEND: no admin
 * connection or the statement failed (err says why, log-only). */
wp_status prov_stop_backend(prov_ctx *p, const char *role, const char *database,
                            const prov_backend_ref *ref, int64_t deadline_ms, wp_error *err);

/* Makes role NOLOGIN, under the role's lock, if it is a role Waypoint made, and
 * terminates every backend of the role (sessions opened directly included), waiting up
 * to 5 s for them to be gone. */
wp_status prov_lock_out_role(prov_ctx *p, const char *role, const char *database, wp_error *err);

/* A session of role (in database) ended, parked or closed: the role's password becomes
 * NULL under the role's lock, so a password the caller set itself stops logging in. Best
 * effort (a failure is logged); call after the client has gone. */
void prov_session_ended(prov_ctx *p, const char *role, const char *database);

#endif
