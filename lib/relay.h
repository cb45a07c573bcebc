/*
 * relay: the copy loop between a client and its backend once startup is done.
 *
 * relay_run() moves bytes both ways with poll() until either side closes, a limit is
 * reached, or the caller asks it to stop. It also follows the message framing of both
 * streams (5-byte headers only, never the bodies) so that, when it stops for a reason
 * the client must be told about, it first has the backend stopped (relay_opts
 * stop_backend), then completes the backend message in flight: the caller can then
 * append an ErrorResponse without corrupting the client's stream. No write ever blocks
 * the loop, so its timers (deadline, revalidation tick, drain) fire on time even when a
 * peer stops reading.
 */
#ifndef WP_RELAY_H
#define WP_RELAY_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "io.h"
#include "wp_error.h"

#define RELAY_BUF_SIZE (64 * 1024)

/* Follows PostgreSQL message framing (type byte + 4-byte length) over a byte stream. */
typedef struct relay_framer {
    unsigned char hdr[5];
    unsigned hdr_len;   /* header bytes seen of the current message (0..4) */
    uint64_t remaining; /* body bytes still to come of the current message */
    char last_type;     /* type byte of the last message whose header completed */
    char last_reply;    /* the same, not counting the backend's asynchronous messages
                           (NotificationResponse 'A', NoticeResponse 'N') */
    char last_status;   /* body byte of the last ReadyForQuery ('I', 'T', 'E'); 0 = none */
    int broken;         /* a length < 4 was seen: framing is lost for good */
    uint64_t msgs;      /* messages whose header completed */
    uint64_t syncs;     /* client side: Query, Sync, FunctionCall (one ReadyForQuery each) */
    uint64_t readies;   /* backend side: ReadyForQuery */
} relay_framer;

void relay_framer_init(relay_framer *f);
void relay_framer_feed(relay_framer *f, const unsigned char *p, size_t n);
int relay_framer_at_boundary(const relay_framer *f);
/* How many bytes may be read without crossing the next message boundary (at most cap);
 * 0 at a boundary or when the framing is broken. */
size_t relay_framer_max_read(const relay_framer *f, size_t cap);

typedef enum {
    RELAY_CLIENT_CLOSED = 1, /* client closed (after Terminate: a normal end); at once
                                when the backend was busy (res.backend_idle is 0) */
    RELAY_BACKEND_CLOSED,    /* backend closed */
    RELAY_CLIENT_ERROR,      /* read/write on the client failed */
    RELAY_BACKEND_ERROR,     /* read/write on the backend failed */
    RELAY_STOPPED,           /* stop_fd became readable (server shutdown) */
    RELAY_MAX_DURATION,      /* end_ms passed */
    RELAY_MAX_BYTES,         /* max_bytes exceeded */
    RELAY_TICK_STOP,         /* the tick callback asked to end the session */
    RELAY_NOMEM,
    RELAY_KILLED,           /* kill_fd became readable (`waypoint kill`) */
    RELAY_CLIENT_TERMINATE, /* opts.hold_terminate: the client sent Terminate, which was
                               kept back; the backend session is intact */
} relay_end;

/* Called every tick_ms during the relay (revalidation). Return 0 to go on; non-zero to
 * end the session with RELAY_TICK_STOP (fill err with what the client should see). */
typedef int (*relay_tick_fn)(void *arg, wp_error *err);

/* Ends on Waypoint's own authority (shutdown, limits, revocation): the client is told
 * with a FATAL, so its backend must be stopped first. */
int relay_end_by_authority(relay_end e);

/* Called once when the relay ends by authority, before anything more reaches the
 * client: stops the backend (cancel, terminate, wait until it is gone). Returns 1 when
 * the backend is known gone, 0 otherwise (the relay then only finishes the message in
 * flight instead of passing on the backend's last messages). */
typedef int (*relay_stop_fn)(void *arg, relay_end why);

typedef struct relay_opts {
    int64_t end_ms;     /* absolute wp_now_ms() deadline for the session; 0 = none */
    uint64_t max_bytes; /* bytes in + out; 0 = unlimited */
    int stop_fd;        /* readable => stop (server drain); -1 = none */
    int64_t tick_ms;    /* 0 = no tick */
    relay_tick_fn tick;
    void *tick_arg;
    int64_t linger_ms;          /* after the client's EOF, wait this long for the backend */
    relay_stop_fn stop_backend; /* NULL: the backend is not stopped (tests) */
    void *stop_arg;
    /* Admin hooks (sessreg): kill_fd readable => end with RELAY_KILLED (-1 = none);
     * live_in/live_out, when set, follow bytes_in/bytes_out while the relay runs. */
    int kill_fd;
    _Atomic uint64_t *live_in, *live_out;
    int hold_terminate; /* a Terminate that ends the client's stream on a boundary is not
                           forwarded: the relay ends with RELAY_CLIENT_TERMINATE (pooling) */
    char backend_ready; /* status of the ReadyForQuery that ended startup (0 = unknown) */
} relay_opts;

typedef struct relay_result {
    relay_end end;
    uint64_t bytes_in;           /* client -> backend */
    uint64_t bytes_out;          /* backend -> client */
    int client_terminated;       /* the client's last message was Terminate ('X') */
    char backend_status;         /* status byte of the backend's last ReadyForQuery; 0 = none */
    int backend_boundary;        /* backend->client stream ended on a message boundary */
    char backend_last;           /* type of the backend's last message */
    uint64_t client_after_ready; /* client messages read after the backend's last
                                    ReadyForQuery that answered every Query/Sync sent
                                    before it was read (Terminate included) */
    int at_boundary;             /* backend->client stream ends on a message boundary, so an
                                    ErrorResponse may be appended */
    int backend_stopped;         /* ended by authority and stop_backend reported it gone */
    int backend_eof;             /* the backend closed its end (its process is exiting) */
    int backend_idle;            /* the backend is waiting for the client: its last reply is
                                    a ReadyForQuery that answered every Query/Sync, on a
                                    boundary, and the client sent nothing after it but a
                                    Terminate. Otherwise it may be running a statement that
                                    nobody will read, and must be stopped (spec 7.6) */
    wp_error tick_err;           /* RELAY_TICK_STOP: what the tick callback reported */
} relay_result;

void relay_opts_init(relay_opts *o);
/* Runs until the session ends; never closes either io. */
void relay_run(wp_io *client, wp_io *backend, const relay_opts *o, relay_result *res);
const char *relay_end_str(relay_end e);

#endif
