/*
 * sessreg: the registry of live relayed sessions, for `waypoint sessions` and `kill`.
 *
 * A session registers itself once its backend session is ready (sess_finish_startup)
 * and removes itself in sess_end. Each entry carries what the listing shows and a kill
 * pipe: sessreg_kill() writes the message the client should get into the entry and
 * makes the pipe readable; the relay loop polls that fd and ends with RELAY_KILLED, and
 * the session's end path stops the backend and sends the message. The registry has its
 * own lock; the only other state shared with the session thread is the byte counters
 * (atomics, written by the relay).
 */
#ifndef WP_SESSREG_H
#define WP_SESSREG_H

#include <jansson.h>
#include <stdatomic.h>
#include <stdint.h>

typedef struct sessreg sessreg;
typedef struct sessreg_entry sessreg_entry;

/* What a session tells the registry (copied; strings may be NULL). */
typedef struct sessreg_info {
    const char *listener, *peer, *login, *node, *role, *database, *presets;
    int tls;
    int64_t since_ms; /* wall-clock epoch milliseconds of the accept */
} sessreg_info;

/* Called with +1/-1 as sessions come and go (the active-sessions gauge). */
typedef void (*sessreg_count_fn)(void *arg, const char *listener, int delta);

sessreg *sessreg_new(sessreg_count_fn count, void *count_arg);
void sessreg_free(sessreg *r);

/* NULL when memory or file descriptors ran out (the session goes on unlisted). */
sessreg_entry *sessreg_add(sessreg *r, const sessreg_info *info);
void sessreg_remove(sessreg *r, sessreg_entry *e);

uint64_t sessreg_id(const sessreg_entry *e);
int sessreg_kill_fd(const sessreg_entry *e); /* readable once the session must end */
/* The relay counts into these while it runs. */
_Atomic uint64_t *sessreg_bytes_in(sessreg_entry *e);
_Atomic uint64_t *sessreg_bytes_out(sessreg_entry *e);
/* The message given to sessreg_kill(), copied into msg (NUL-terminated). */
void sessreg_kill_message(sessreg *r, const sessreg_entry *e, char *msg, size_t msgsz);
void sessreg_set_state(sessreg *r, sessreg_entry *e, const char *state); /* a literal */

/* Asks every session matching login (if non-NULL) or id (if non-zero) to end, with msg
 * as the FATAL message. Returns how many were asked; their ids go to ids (up to nids). */
size_t sessreg_kill(sessreg *r, const char *login, uint64_t id, const char *msg, uint64_t *ids,
                    size_t nids);
/* Waits until none of ids is registered any more or deadline_ms (wp_now_ms) passes;
 * returns how many are still there. */
size_t sessreg_wait_gone(sessreg *r, const uint64_t *ids, size_t n, int64_t deadline_ms);

/* All live sessions as a JSON array of objects (new reference), NULL without memory. */
json_t *sessreg_list(sessreg *r);

#endif
