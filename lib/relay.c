/*
 * relay: the copy loop between a client and its backend.
 *
 * Design. One worker thread, two sockets, one poll() per wake-up. Each direction has
 * a fixed 64 KiB buffer allocated once; whatever is read is written in full to the
 * other side before that direction reads again, so a slow reader pushes back on the
 * writer through TCP instead of through memory. Writes never wait: what a peer cannot
 * take yet stays in the buffer and that side waits for POLLOUT in the same poll() as
 * everything else, so a client that stops reading cannot keep the loop from its timers
 * (revalidation, max_conn_duration, drain). TLS layers can hold decrypted bytes poll()
 * cannot see, so io_pending() is checked first and such a side is served without
 * waiting.
 *
 * poll() sleeps until a socket is ready, the stop fd fires (server shutdown: the server
 * closes the write end of a pipe, which wakes every relay at once), or the next timer
 * is due (session deadline, revalidation tick, linger after the client's EOF). There is
 * no periodic wake-up otherwise.
 *
 * Half-close: when the client closes while its backend is idle, the backend gets
 * shutdown(SHUT_WR) (and a TLS close_notify) and the loop keeps forwarding what the
 * backend still sends until it closes too, bounded by linger_ms. When the client closes
 * while its backend is busy, the loop ends at once: PostgreSQL notices a vanished client
 * only when it next writes to it, so the session must stop that backend itself
 * (res.backend_idle tells it whether it has to). When the backend closes, the session
 * is over.
 *
 * Ending on Waypoint's authority (relay_end_by_authority): first the stop_backend hook
 * (the session terminates the backend and waits until it is gone, so nothing more runs
 * or commits for the caller), then the client's stream is brought to a message
 * boundary within RELAY_TELL_WAIT_MS (pending bytes, the message in flight, and the
 * dead backend's last whole messages up to its own ErrorResponse), so the session can
 * append its FATAL. A client that does not read within that bound is not told.
 *
 * Framing. Both streams are followed at the header level (relay_framer): the client side
 * tells whether the client ended politely with Terminate, the backend side lets a
 * stopping relay finish the message in flight so the session can append a FATAL
 * ErrorResponse on a clean boundary.
 */
#include "relay.h"

#include "pgwire.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define RELAY_TELL_WAIT_MS 1000     /* bringing the client to a boundary when stopping */
#define RELAY_LAST_WORDS_MAX 65536  /* a stopped backend's last messages passed on, bytes */
#define RELAY_BOUNDARY_WAIT_MS 2000 /* held Terminate: time to flush what is pending (pool) */

void relay_framer_init(relay_framer *f)
{
    memset(f, 0, sizeof(*f));
}

void relay_framer_feed(relay_framer *f, const unsigned char *p, size_t n)
{
    while (n > 0 && !f->broken) {
        if (f->remaining > 0) {
            if (f->last_type == 'Z' && f->remaining == 1)
                f->last_status = (char)*p;
            size_t take = n < f->remaining ? n : (size_t)f->remaining;
            f->remaining -= take;
            p += take;
            n -= take;
            continue;
        }
        f->hdr[f->hdr_len++] = *p++;
        n--;
        if (f->hdr_len < 5)
            continue;
        uint32_t len = pgw_get32(f->hdr + 1);
        f->hdr_len = 0;
        f->last_type = (char)f->hdr[0];
        if (f->last_type != 'A' && f->last_type != 'N')
            f->last_reply = f->last_type;
        f->msgs++;
        /* client side: the messages that each get one ReadyForQuery; backend side: the
         * ReadyForQuery ('S' is ParameterStatus there: each side reads only its own) */
        f->syncs += f->last_type == 'Q' || f->last_type == 'S' || f->last_type == 'F';
        f->readies += f->last_type == 'Z';
        if (len < 4) {
            f->broken = 1;
            return;
        }
        f->remaining = len - 4;
        if (f->last_type == 'Z')
            f->last_status = 0; /* known once its body byte arrives */
    }
}

int relay_framer_at_boundary(const relay_framer *f)
{
    return !f->broken && f->hdr_len == 0 && f->remaining == 0;
}

size_t relay_framer_max_read(const relay_framer *f, size_t cap)
{
    if (f->broken)
        return 0;
    if (f->hdr_len > 0)
        return 5 - f->hdr_len < cap ? 5 - f->hdr_len : cap;
    if (f->remaining > 0)
        return f->remaining < cap ? (size_t)f->remaining : cap;
    return 0;
}

const char *relay_end_str(relay_end e)
{
    switch (e) {
    case RELAY_CLIENT_CLOSED:
        return "client_closed";
    case RELAY_BACKEND_CLOSED:
        return "backend_closed";
    case RELAY_CLIENT_ERROR:
        return "client_error";
    case RELAY_BACKEND_ERROR:
        return "backend_error";
    case RELAY_STOPPED:
        return "shutdown";
    case RELAY_MAX_DURATION:
        return "max_conn_duration";
    case RELAY_MAX_BYTES:
        return "max_bytes_per_conn";
    case RELAY_TICK_STOP:
        return "revoked";
    case RELAY_NOMEM:
        return "out_of_memory";
    case RELAY_KILLED:
        return "killed";
    case RELAY_CLIENT_TERMINATE:
        return "client_terminate";
    }
    return "unknown";
}

void relay_opts_init(relay_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->stop_fd = -1;
    o->kill_fd = -1;
    o->linger_ms = 10000;
}

/* One side of the relay: where bytes come from, where they go, and their framing.
 * buf holds what was read and not yet written in full ([off, len) is still to go);
 * nothing more is read from `from` until it is empty, so a slow reader pushes back on
 * the writer through TCP. */
typedef struct relay_dir {
    wp_io *from;
    wp_io *to;
    unsigned char *buf;
    size_t len, off;
    relay_framer framer;
    uint64_t *count;
    _Atomic uint64_t *live; /* optional mirror of *count for other threads */
    int hold_terminate;     /* client side only: see relay_opts.hold_terminate */
    relay_end read_fail;    /* outcome when reading `from` fails */
    relay_end write_fail;   /* outcome when writing `to` fails */
} relay_dir;

typedef enum { MOVE_OK, MOVE_AGAIN, MOVE_EOF, MOVE_FAIL, MOVE_HELD } move_status;

/* The chunk just read ends with a complete Terminate message (X, length 4) on a message
 * boundary; a Terminate split across reads has partly gone out already, so it is not. */
static int relay_ends_with_terminate(const relay_framer *f, const unsigned char *p, size_t n)
{
    static const unsigned char x[5] = {'X', 0, 0, 0, 4};
    return f->last_type == 'X' && relay_framer_at_boundary(f) && n >= 5 &&
           memcmp(p + n - 5, x, 5) == 0;
}

static int dir_pending(const relay_dir *d)
{
    return d->off < d->len;
}

/* Writes what is pending without waiting: MOVE_OK when all of it went, MOVE_AGAIN when
 * the rest must wait for POLLOUT. A retry always passes the very bytes (pointer and
 * length) of the write that could not finish, as mbedTLS requires after WANT_WRITE:
 * off only moves on success and nothing is read into buf until it is empty. */
static move_status relay_flush(relay_dir *d)
{
    while (d->off < d->len) {
        ssize_t w = d->to->ops->write(d->to, d->buf + d->off, d->len - d->off);
        if (w > 0) {
            d->off += (size_t)w;
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return MOVE_AGAIN;
        return MOVE_FAIL;
    }
    d->off = d->len = 0;
    return MOVE_OK;
}

/* Reads at most cap bytes from d->from (buf is empty) and writes as much of them as
 * goes without waiting. On MOVE_FAIL *fail_end says which side failed. */
static move_status relay_move(relay_dir *d, size_t cap, relay_end *fail_end)
{
    ssize_t r = d->from->ops->read(d->from, d->buf, cap);
    if (r == 0)
        return MOVE_EOF;
    if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return MOVE_AGAIN;
        *fail_end = d->read_fail;
        return MOVE_FAIL;
    }
    relay_framer_feed(&d->framer, d->buf, (size_t)r);
    *d->count += (uint64_t)r;
    if (d->live)
        atomic_fetch_add_explicit(d->live, (uint64_t)r, memory_order_relaxed);
    size_t n = (size_t)r;
    int held = d->hold_terminate && relay_ends_with_terminate(&d->framer, d->buf, n);
    if (held)
        n -= 5;
    d->len = n;
    d->off = 0;
    if (relay_flush(d) == MOVE_FAIL) {
        *fail_end = d->write_fail;
        return MOVE_FAIL;
    }
    return held ? MOVE_HELD : MOVE_OK;
}

/* Writes all that is pending, waiting for the peer up to deadline. */
static int relay_flush_wait(relay_dir *d, int64_t deadline)
{
    for (;;) {
        move_status m = relay_flush(d);
        if (m == MOVE_OK)
            return 1;
        if (m == MOVE_FAIL || io_wait_fd(d->to->fd, POLLOUT, deadline) != WP_OK)
            return 0;
    }
}

/* Moves the rest of the backend message in flight (never past it). */
static int relay_finish_message(relay_dir *b2c, int64_t deadline)
{
    size_t want;
    while ((want = relay_framer_max_read(&b2c->framer, RELAY_BUF_SIZE)) > 0) {
        relay_end ignored;
        if (io_wait_readable(b2c->from, deadline) != WP_OK)
            return 0;
        move_status m = relay_move(b2c, want, &ignored);
        if (m == MOVE_EOF || m == MOVE_FAIL || !relay_flush_wait(b2c, deadline))
            return 0;
    }
    return relay_framer_at_boundary(&b2c->framer);
}

/* The backend is gone: pass on the whole messages it sent before it went (a
 * CommandComplete of a write that did commit, ReadyForQuery), up to its own
 * ErrorResponse (its termination notice: the client hears Waypoint's reason instead)
 * or a message larger than what is left of the budget. A header is read before any of
 * it is forwarded, so the client's stream stays on a boundary whatever happens. */
static int relay_pass_last_words(relay_dir *b2c, int64_t deadline)
{
    size_t budget = RELAY_LAST_WORDS_MAX;
    for (;;) {
        unsigned char hdr[5];
        if (io_read_full(b2c->from, hdr, sizeof hdr, deadline) != WP_OK)
            return 1; /* EOF, error or deadline: nothing of this header was forwarded */
        uint32_t len = pgw_get32(hdr + 1);
        if (hdr[0] == PGW_MSG_ERROR || len < 4 || (size_t)len + 1 > budget)
            return 1;
        budget -= (size_t)len + 1;
        memcpy(b2c->buf, hdr, sizeof hdr);
        relay_framer_feed(&b2c->framer, hdr, sizeof hdr);
        *b2c->count += sizeof hdr;
        b2c->len = sizeof hdr;
        b2c->off = 0;
        if (!relay_flush_wait(b2c, deadline) || !relay_finish_message(b2c, deadline))
            return 0;
    }
}

/* Ending on Waypoint's authority, after the backend was stopped: brings the client's
 * stream to a message boundary (flush what is pending, finish the message in flight,
 * the backend's last words if it is known gone) so a FATAL can follow. All bounded by
 * RELAY_TELL_WAIT_MS: a client that does not read is not waited for. */
static int relay_ready_to_tell(relay_dir *b2c, int backend_gone)
{
    int64_t deadline = wp_now_ms() + RELAY_TELL_WAIT_MS;
    if (!relay_flush_wait(b2c, deadline) || !relay_finish_message(b2c, deadline))
        return 0;
    return backend_gone ? relay_pass_last_words(b2c, deadline) : 1;
}

static int64_t earliest(int64_t a, int64_t b)
{
    if (a == 0)
        return b;
    if (b == 0)
        return a;
    return a < b ? a : b;
}

/* poll() timeout until the earliest of the given absolute deadlines (0 = none). */
static int poll_timeout(int64_t deadline, int64_t now)
{
    if (deadline == 0)
        return -1;
    int64_t left = deadline - now;
    if (left <= 0)
        return 0;
    return left > 1000000 ? 1000000 : (int)left;
}

typedef struct relay_loop {
    const relay_opts *o;
    relay_dir c2b, b2c;
    int client_eof;
    int backend_eof;
    uint64_t client_msgs_at_ready; /* c2b.framer.msgs when the last 'Z' was read */
    int64_t next_tick;
    int64_t linger_end;
    relay_result *res;
} relay_loop;

/* Checks the timers and limits; returns 0 to go on or the reason to stop. */
static relay_end relay_check_limits(relay_loop *L, int64_t now)
{
    const relay_opts *o = L->o;
    if (o->end_ms > 0 && now >= o->end_ms)
        return RELAY_MAX_DURATION;
    if (o->max_bytes > 0 && L->res->bytes_in + L->res->bytes_out > o->max_bytes)
        return RELAY_MAX_BYTES;
    if (L->linger_end > 0 && now >= L->linger_end)
        return RELAY_CLIENT_CLOSED;
    if (o->tick && L->next_tick > 0 && now >= L->next_tick) {
        if (o->tick(o->tick_arg, &L->res->tick_err) != 0)
            return RELAY_TICK_STOP;
        L->next_tick = wp_now_ms() + o->tick_ms;
    }
    return 0;
}

/* The backend waits for its client: its last reply (async messages aside) is a
 * ReadyForQuery that answered every Query/Sync/FunctionCall, nothing of a reply is in
 * flight, and the client sent nothing since but, at most, a Terminate. A pipelined
 * Parse/Bind/Execute without Sync counts as work: the backend runs Execute at once. */
static int relay_backend_idle(const relay_loop *L)
{
    const relay_framer *b = &L->b2c.framer, *c = &L->c2b.framer;
    uint64_t after = c->msgs - L->client_msgs_at_ready;
    int only_terminate = after == 1 && c->last_type == 'X';
    return relay_framer_at_boundary(b) && b->last_reply == 'Z' && b->readies == c->syncs &&
           (after == 0 || only_terminate);
}

static void relay_client_eof(relay_loop *L)
{
    L->client_eof = 1;
    io_shutdown(L->c2b.to); /* TLS close_notify to the backend, if any */
    shutdown(L->c2b.to->fd, SHUT_WR);
    L->linger_end = wp_now_ms() + (L->o->linger_ms > 0 ? L->o->linger_ms : 1);
}

/* Serves one readable side. Returns 0 to go on or the reason to stop. */
static relay_end relay_serve(relay_loop *L, relay_dir *d)
{
    relay_end fail = 0;
    uint64_t before = d->framer.msgs;
    move_status m = relay_move(d, RELAY_BUF_SIZE, &fail);
    /* A ReadyForQuery that answers every Query/Sync/FunctionCall sent so far: the client
     * messages up to here are done (one it sent before that 'Z' came is still open). */
    if (d == &L->b2c && d->framer.msgs != before && d->framer.last_reply == 'Z' &&
        d->framer.readies == L->c2b.framer.syncs)
        L->client_msgs_at_ready = L->c2b.framer.msgs;
    switch (m) {
    case MOVE_OK:
    case MOVE_AGAIN:
        return 0;
    case MOVE_FAIL:
        return fail;
    case MOVE_HELD: /* what came before the Terminate must still reach the backend */
        if (dir_pending(d) && !relay_flush_wait(d, wp_now_ms() + RELAY_BOUNDARY_WAIT_MS))
            return d->write_fail;
        return RELAY_CLIENT_TERMINATE;
    case MOVE_EOF:
        break;
    }
    if (d == &L->b2c) {
        L->backend_eof = 1;
        io_shutdown(L->b2c.to);
        shutdown(L->b2c.to->fd, SHUT_WR);
        return L->client_eof ? RELAY_CLIENT_CLOSED : RELAY_BACKEND_CLOSED;
    }
    if (!relay_backend_idle(L))
        return RELAY_CLIENT_CLOSED; /* nobody will read what it is doing: stop it */
    relay_client_eof(L);
    return 0;
}

/* A side whose write could not finish is writable again (or failed). */
static relay_end relay_resume(relay_dir *d)
{
    return relay_flush(d) == MOVE_FAIL ? d->write_fail : 0;
}

/* One wake-up: serve buffered TLS bytes first, else poll. A side with bytes still to
 * write waits for POLLOUT on its destination and is not read meanwhile; poll() never
 * waits past the next timer, and no write ever blocks, so the timers run on time even
 * when a peer stops reading. */
static relay_end relay_step(relay_loop *L)
{
    int c_read = !L->client_eof && !dir_pending(&L->c2b);
    int b_read = !dir_pending(&L->b2c);
    if (c_read && io_pending(L->c2b.from) > 0)
        return relay_serve(L, &L->c2b);
    if (b_read && io_pending(L->b2c.from) > 0)
        return relay_serve(L, &L->b2c);

    short cev = (short)((c_read ? POLLIN : 0) | (dir_pending(&L->b2c) ? POLLOUT : 0));
    short bev = (short)((b_read ? POLLIN : 0) | (dir_pending(&L->c2b) ? POLLOUT : 0));
    struct pollfd p[4] = {
        {.fd = cev ? L->c2b.from->fd : -1, .events = cev},
        {.fd = bev ? L->b2c.from->fd : -1, .events = bev},
        {.fd = L->o->stop_fd, .events = POLLIN},
        {.fd = L->o->kill_fd, .events = POLLIN},
    };
    int64_t now = wp_now_ms();
    int64_t due = earliest(earliest(L->o->end_ms, L->linger_end), L->next_tick);
    int r = poll(p, 4, poll_timeout(due, now));
    if (r < 0)
        return errno == EINTR ? 0 : RELAY_CLIENT_ERROR;
    if (r == 0)
        return 0;
    if (p[2].revents)
        return RELAY_STOPPED;
    if (p[3].revents)
        return RELAY_KILLED;
    /* Sockets are blocking: read only what poll() said is readable. */
    const short rd = POLLIN | POLLHUP | POLLERR, wr = POLLOUT | POLLHUP | POLLERR;
    relay_end e = 0;
    if ((p[0].revents & wr) && dir_pending(&L->b2c))
        e = relay_resume(&L->b2c);
    if (!e && (p[1].revents & wr) && dir_pending(&L->c2b))
        e = relay_resume(&L->c2b);
    if (!e && (p[0].revents & rd) && c_read)
        e = relay_serve(L, &L->c2b);
    if (!e && (p[1].revents & rd) && b_read)
        e = relay_serve(L, &L->b2c);
    return e;
}

int relay_end_by_authority(relay_end e)
{
    return e == RELAY_STOPPED || e == RELAY_MAX_DURATION || e == RELAY_MAX_BYTES ||
           e == RELAY_TICK_STOP || e == RELAY_KILLED;
}

void relay_run(wp_io *client, wp_io *backend, const relay_opts *o, relay_result *res)
{
    memset(res, 0, sizeof(*res));
    relay_loop L = {.o = o, .res = res};
    unsigned char *bufs = malloc(2 * (size_t)RELAY_BUF_SIZE);
    if (!bufs) {
        res->end = RELAY_NOMEM;
        return;
    }
    L.c2b = (relay_dir){.from = client,
                        .to = backend,
                        .buf = bufs,
                        .count = &res->bytes_in,
                        .live = o->live_in,
                        .hold_terminate = o->hold_terminate,
                        .read_fail = RELAY_CLIENT_ERROR,
                        .write_fail = RELAY_BACKEND_ERROR};
    L.b2c = (relay_dir){.from = backend,
                        .to = client,
                        .buf = bufs + RELAY_BUF_SIZE,
                        .count = &res->bytes_out,
                        .live = o->live_out,
                        .read_fail = RELAY_BACKEND_ERROR,
                        .write_fail = RELAY_CLIENT_ERROR};
    if (o->backend_ready) { /* startup ended with this ReadyForQuery */
        L.b2c.framer.last_type = PGW_MSG_READY;
        L.b2c.framer.last_reply = PGW_MSG_READY;
        L.b2c.framer.last_status = o->backend_ready;
    }
    if (o->tick && o->tick_ms > 0)
        L.next_tick = wp_now_ms() + o->tick_ms;

    relay_end e = 0;
    while (!e) {
        e = relay_check_limits(&L, wp_now_ms());
        if (!e)
            e = relay_step(&L);
    }
    res->end = e;
    res->client_terminated = L.c2b.framer.last_type == 'X';
    res->backend_status = L.b2c.framer.last_status;
    res->backend_boundary = relay_framer_at_boundary(&L.b2c.framer);
    res->backend_last = L.b2c.framer.last_type;
    res->client_after_ready = L.c2b.framer.msgs - L.client_msgs_at_ready;
    res->backend_eof = L.backend_eof;
    res->backend_idle = relay_backend_idle(&L);
    if (relay_end_by_authority(e)) {
        /* Nothing more may run for the caller before the client is told. */
        res->backend_stopped = o->stop_backend ? o->stop_backend(o->stop_arg, e) : 0;
        res->at_boundary = !L.client_eof && relay_ready_to_tell(&L.b2c, res->backend_stopped);
    } else {
        res->at_boundary = !dir_pending(&L.b2c) && relay_framer_at_boundary(&L.b2c.framer);
    }
    free(bufs);
}
