/*
 * admin: the local admin socket ([admin] socket) and its client.
 *
 * Protocol: one request per connection, one JSON object on one line, answered by one
 * JSON object on one line, then the server closes.
 *   {"cmd":"sessions"}                    -> {"ok":true,"sessions":[{...}, ...]}
 *   {"cmd":"kill","login":"a@example.com"} -> {"ok":true,"killed":[3,7],"still_open":0}
 *   {"cmd":"kill","session":3}
 *   {"cmd":"sessions","fleet":true}       -> every live instance's sessions (lib/fleet.c)
 *   {"cmd":"kill","login":"a@...","fleet":true} -> ended on every instance
 *   anything else                         -> {"ok":false,"error":"..."}
 * The socket is mode 0600 and, belt and braces, the server only answers peers whose
 * SO_PEERCRED uid is root or its own.
 */
#ifndef WP_ADMIN_H
#define WP_ADMIN_H

#include <jansson.h>
#include <stddef.h>

#include "fleet.h"
#include "obs.h"
#include "wp_error.h"

#define ADMIN_KILL_SQLSTATE "57P01"
#define ADMIN_KILL_MESSAGE                                                                         \
    "terminating connection: the session was ended by a Waypoint administrator"

typedef struct admin_server admin_server;

/* Binds path (a stale socket file left by a dead process is replaced; a live one or a
 * non-socket is an error) and starts the thread that answers requests. */
wp_status admin_start(const char *path, obs *o, admin_server **out, wp_error *err);
void admin_stop(admin_server *a); /* also unlinks the socket */
/* Where requests with "fleet":true go ([redis]); until set they get an error reply. */
void admin_set_fleet(admin_server *a, fleet *f);

/* Handles one decoded request; returns the reply (new reference). Exposed for tests. */
json_t *admin_handle(obs *o, const json_t *req);
/* Kills this instance's sessions of login (or the one session id when login is NULL) the
 * way `waypoint kill` does, waits up to ADMIN_KILL_WAIT_MS for them to be gone, and
 * returns the killed ids as a JSON array (NULL: out of memory); *left gets how many were
 * still open at the deadline. The local request and the fleet's both come here. */
json_t *admin_kill_local(obs *o, const char *login, uint64_t id, size_t *left);

/* Client side: sends req to the socket at path and returns the decoded reply. */
wp_status admin_call(const char *path, const json_t *req, json_t **reply, char *err, size_t errsz);

#endif
