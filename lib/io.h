/*
 * io: the byte-stream interface every protocol module reads and writes through.
 *
 * A wp_io is a blocking stream over one socket: plain (io_plain_init) or TLS (tls.c
 * fills in its own ops). Protocol code (pgwire, upstream auth, relay) only ever sees
 * wp_io, so TLS slots in underneath without the protocol code knowing.
 *
 * Deadlines are absolute CLOCK_MONOTONIC milliseconds (wp_now_ms() + timeout); 0 means
 * "no deadline". Reads wait with poll() before reading so a silent peer cannot hold a
 * worker past its deadline. `pending` reports bytes already decrypted and buffered
 * inside the layer, which poll() cannot see.
 */
#ifndef WP_IO_H
#define WP_IO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "wp_error.h"

typedef struct wp_io wp_io;

typedef struct wp_io_ops {
    /* > 0 bytes read, 0 orderly EOF, < 0 error (errno set where meaningful). */
    ssize_t (*read)(wp_io *io, void *buf, size_t n);
    /* > 0 bytes written, < 0 error. May write fewer than n. */
    ssize_t (*write)(wp_io *io, const void *buf, size_t n);
    /* Bytes readable without touching the socket (TLS record buffer). */
    size_t (*pending)(wp_io *io);
    /* Orderly shutdown of the layer (TLS close_notify); does not close fd. */
    void (*shutdown)(wp_io *io);
} wp_io_ops;

struct wp_io {
    const wp_io_ops *ops;
    int fd;
    void *impl; /* layer state, owned by whoever set ops */
};

int64_t wp_now_ms(void);
/* *ts = now on `clock` + ms: the absolute time pthread_cond_timedwait wants (for a
 * condvar on that clock). */
void wp_timespec_after(clockid_t clock, int64_t ms, struct timespec *ts);

void io_plain_init(wp_io *io, int fd);

/* Reads exactly n bytes before deadline_ms. WP_ERR_CLOSED on EOF (even mid-way),
 * WP_ERR_TIMEOUT, WP_ERR_IO. */
wp_status io_read_full(wp_io *io, void *buf, size_t n, int64_t deadline_ms);
/* Reads at most n (>= 1) bytes, waiting until something arrives or the deadline. */
wp_status io_read_some(wp_io *io, void *buf, size_t n, size_t *got, int64_t deadline_ms);
/* Writes all n bytes (blocking; the deadline bounds waits for a full send buffer). */
wp_status io_write_all(wp_io *io, const void *buf, size_t n, int64_t deadline_ms);
/* Waits until the io is readable (or has pending bytes). WP_OK / WP_ERR_TIMEOUT. */
wp_status io_wait_readable(wp_io *io, int64_t deadline_ms);
/* Waits until fd is ready for events (or has an error) or deadline_ms passes
 * (WP_ERR_TIMEOUT); 0 = no deadline. Every layer that waits on a raw socket uses this. */
wp_status io_wait_fd(int fd, short events, int64_t deadline_ms);
size_t io_pending(wp_io *io);
void io_shutdown(wp_io *io);

#endif
