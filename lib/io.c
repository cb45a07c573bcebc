/*
 * io: plain-socket implementation of wp_io and the deadline-aware helpers shared by
 * every layer. Reads and writes never block (MSG_DONTWAIT): the helpers try first and
 * poll() only when the socket has nothing (or no room), so blocking sockets still honour
 * deadlines and a message whose bytes are already here costs one recv(2), not a poll(2)
 * and a recv(2). A TLS layer only has to provide non-blocking read/write/pending.
 */
#include "io.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int64_t wp_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void wp_timespec_after(clockid_t clock, int64_t ms, struct timespec *ts)
{
    clock_gettime(clock, ts);
    ts->tv_sec += (time_t)(ms / 1000);
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static ssize_t plain_read(wp_io *io, void *buf, size_t n)
{
    ssize_t r;
    do {
        r = recv(io->fd, buf, n, MSG_DONTWAIT);
    } while (r < 0 && errno == EINTR);
    return r;
}

static ssize_t plain_write(wp_io *io, const void *buf, size_t n)
{
    ssize_t r;
    /* MSG_DONTWAIT: on a blocking socket a plain send() would wait for buffer space with
     * no bound; returning EAGAIN lets io_write_all wait in poll() up to its deadline. */
    do {
        r = send(io->fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (r < 0 && errno == EINTR);
    return r;
}

static size_t plain_pending(wp_io *io)
{
    (void)io;
    return 0;
}

static void plain_shutdown(wp_io *io)
{
    (void)io;
}

static const wp_io_ops plain_ops = {plain_read, plain_write, plain_pending, plain_shutdown};

void io_plain_init(wp_io *io, int fd)
{
    io->ops = &plain_ops;
    io->fd = fd;
    io->impl = NULL;
}

size_t io_pending(wp_io *io)
{
    return io->ops->pending ? io->ops->pending(io) : 0;
}

void io_shutdown(wp_io *io)
{
    if (io->ops && io->ops->shutdown)
        io->ops->shutdown(io);
}

wp_status io_wait_fd(int fd, short events, int64_t deadline_ms)
{
    for (;;) {
        int timeout = -1;
        if (deadline_ms > 0) {
            int64_t left = deadline_ms - wp_now_ms();
            if (left <= 0)
                return WP_ERR_TIMEOUT;
            timeout = left > 1000000 ? 1000000 : (int)left;
        }
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, timeout);
        if (r > 0)
            return WP_OK; /* readable, writable, or error: the next call will tell */
        if (r == 0)
            continue; /* a capped slice ended: the loop head decides if the deadline has */
        if (errno != EINTR)
            return WP_ERR_IO;
    }
}

wp_status io_wait_readable(wp_io *io, int64_t deadline_ms)
{
    if (io_pending(io) > 0)
        return WP_OK;
    return io_wait_fd(io->fd, POLLIN, deadline_ms);
}

wp_status io_read_some(wp_io *io, void *buf, size_t n, size_t *got, int64_t deadline_ms)
{
    *got = 0;
    for (;;) {
        ssize_t r = io->ops->read(io, buf, n);
        if (r > 0) {
            *got = (size_t)r;
            return WP_OK;
        }
        if (r == 0)
            return WP_ERR_CLOSED;
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return WP_ERR_IO;
        wp_status st = io_wait_fd(io->fd, POLLIN, deadline_ms);
        if (st != WP_OK)
            return st;
    }
}

wp_status io_read_full(wp_io *io, void *buf, size_t n, int64_t deadline_ms)
{
    unsigned char *p = buf;
    while (n > 0) {
        size_t got;
        wp_status st = io_read_some(io, p, n, &got, deadline_ms);
        if (st != WP_OK)
            return st;
        p += got;
        n -= got;
    }
    return WP_OK;
}

wp_status io_write_all(wp_io *io, const void *buf, size_t n, int64_t deadline_ms)
{
    const unsigned char *p = buf;
    while (n > 0) {
        ssize_t w = io->ops->write(io, p, n);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            wp_status st = io_wait_fd(io->fd, POLLOUT, deadline_ms);
            if (st != WP_OK)
                return st;
            continue;
        }
        return WP_ERR_IO;
    }
    return WP_OK;
}
