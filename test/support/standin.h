/*
 * standin: C side of test/support/localapi_standin.py, the tailscaled LocalAPI stand-in.
 *
 * standin_start() makes a fresh temp dir, starts the stand-in there on its own unix
 * socket and returns once it is listening (it waits for the stand-in's ready file with a
 * bounded poll, never a blind sleep). Tests then set identities with
 * standin_write_state() (atomic rename, picked up by the very next request, even on
 * open connections) and point a ts_client at s->socket_path. The child gets SIGTERM if
 * the test process dies, so a crashing test leaves nothing behind.
 *
 * Shell tests run the python directly; see docs/testing.md.
 */
#ifndef WP_TEST_STANDIN_H
#define WP_TEST_STANDIN_H

#include <sys/types.h>

typedef struct standin {
    char dir[64];          /* temp dir owned by the test (removed by standin_stop) */
    char socket_path[128]; /* the LocalAPI socket */
    char state_path[128];  /* the state file the stand-in reads */
    char log_path[128];    /* the stand-in's stderr */
    pid_t pid;
} standin;

/* Starts the stand-in with initial_state (JSON text; NULL means no identities).
 * Returns 0 once it is listening, -1 on failure (message on stderr). */
int standin_start(standin *s, const char *initial_state);

/* Replaces the state file atomically with json (written verbatim). 0 on success. */
int standin_write_state(const standin *s, const char *json);

/* Writes a state with one identity: match ("ip:port", "ip" or "*") answers with
 * standin_whois_json(login, node_name, stable_id, tags_json, capmap_json). */
int standin_set_identity(const standin *s, const char *match, const char *login,
                         const char *node_name, const char *capmap_json);

/* A tailscaled-shaped WhoIs body. tags_json: NULL or a JSON array ("[\"tag:ci\"]");
 * capmap_json: NULL (CapMap null) or a JSON object. Returns malloc'd text, NULL on a
 * bad argument. */
char *standin_whois_json(const char *login, const char *node_name, const char *stable_id,
                         const char *tags_json, const char *capmap_json);

/* Stops the stand-in process and starts a new one on the same socket, state and dir
 * (a tailscaled restart: open client connections are closed). The log restarts empty.
 * 0 once the new one is listening. */
int standin_restart(standin *s);

/* Lines of the stand-in's log containing needle (e.g. "connection opened"), -1 on error. */
int standin_log_count(const standin *s, const char *needle);

/* SIGTERM, waitpid, remove the temp dir. Safe to call twice. */
void standin_stop(standin *s);

/* Path of a file in the stand-in's temp dir (for test fixtures such as cert PEMs). */
const char *standin_path(const standin *s, const char *name, char *buf, unsigned long bufsz);

#endif
