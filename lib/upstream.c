/*
 * upstream: opening (and closing) the connection to the PostgreSQL backend, and sending
 * cancel requests to it. The login exchange itself lives in upauth.c.
 *
 * up_connect resolves the backend with getaddrinfo, tries each address with a
 * non-blocking connect bounded by the deadline, then puts the socket back in blocking
 * mode (wp_io's helpers poll before every read, so the deadline still holds), sets
 * TCP_NODELAY (the protocol is request/response; Nagle would add latency to every
 * small message) and SO_KEEPALIVE (long idle sessions across NAT/firewalls), and
 * finally negotiates TLS per backend_tls (tls_client_start). Every failure is
 * WP_ERR_BACKEND (WP_ERR_TIMEOUT past the deadline) / 08006 with a message that says
 * only what kind of failure it was (unreachable, timeout, TLS): callers must not learn
 * the backend's address or its TLS details, so those go to err.detail, which session.c
 * logs and never sends.
 *
 * Cancel requests go over a fresh plaintext connection. All PostgreSQL versions (and
 * CockroachDB) accept that, pg_hba.conf is not consulted for cancels, and the 4-byte key
 * it carries only allows cancelling that one session's running query. PostgreSQL 17's
 * libpq can wrap cancels in TLS; doing so would need the backend_tls settings here,
 * which the up_send_cancel contract does not carry (see docs/tls.md).
 */
#include "upstream.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tls.h"

/* "host:port", with brackets around IPv6 literals. */
static void fmt_addr(char *buf, size_t n, const char *host, int port)
{
    if (strchr(host, ':'))
        snprintf(buf, n, "[%s]:%d", host, port);
    else
        snprintf(buf, n, "%s:%d", host, port);
}

static int set_nonblocking(int fd, int on)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return -1;
    fl = on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK;
    return fcntl(fd, F_SETFL, fl);
}

/* Connects one address before deadline_ms. Returns the fd or -1 with errno set. */
static int connect_one(const struct addrinfo *ai, int64_t deadline_ms)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0)
        return -1;
    if (set_nonblocking(fd, 1) != 0)
        goto fail;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        if (errno != EINPROGRESS)
            goto fail;
        wp_status wst = io_wait_fd(fd, POLLOUT, deadline_ms);
        if (wst != WP_OK) {
            errno = wst == WP_ERR_TIMEOUT ? ETIMEDOUT : errno;
            goto fail;
        }
        int soerr = 0;
        socklen_t len = sizeof(soerr);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0)
            goto fail;
        if (soerr != 0) {
            errno = soerr;
            goto fail;
        }
    }
    int one = 1;
    if (set_nonblocking(fd, 0) != 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) != 0)
        goto fail;
    return fd;
fail:;
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

/* Resolves host and connects to the first address that answers. */
static int tcp_connect(const char *host, int port, int64_t deadline_ms, char *why, size_t n)
{
    char service[16];
    snprintf(service, sizeof(service), "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host, service, &hints, &res);
    if (gai != 0) {
        snprintf(why, n, "%s", gai == EAI_SYSTEM ? strerror(errno) : gai_strerror(gai));
        return -1;
    }
    int fd = -1, last = ECONNREFUSED;
    for (const struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = connect_one(ai, deadline_ms);
        if (fd < 0)
            last = errno;
    }
    freeaddrinfo(res);
    if (fd < 0)
        snprintf(why, n, "%s", last == ETIMEDOUT ? "timed out" : strerror(last));
    return fd;
}

wp_status up_connect(up_conn *c, const char *host, int port, cfg_backend_tls mode,
                     const char *ca_file, int64_t deadline_ms, wp_error *err)
{
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    char addr[300], why[256];
    fmt_addr(addr, sizeof(addr), host, port);
    if (port <= 0 || port > 65535) {
        wp_error_set(err, WP_SQLSTATE_CONN_FAILURE, "the backend is not reachable");
        wp_error_detail(err, "could not connect to backend %s: bad port", addr);
        return WP_ERR_BACKEND;
    }
    int fd = tcp_connect(host, port, deadline_ms, why, sizeof(why));
    if (fd < 0) {
        bool timeout = strcmp(why, "timed out") == 0;
        wp_error_set(err, WP_SQLSTATE_CONN_FAILURE, "%s",
                     timeout ? "timeout while connecting to the backend"
                             : "the backend is not reachable");
        wp_error_detail(err, "could not connect to backend %s: %s", addr, why);
        return timeout ? WP_ERR_TIMEOUT : WP_ERR_BACKEND;
    }
    int is_tls = 0;
    wp_error terr;
    wp_error_clear(&terr);
    wp_status st = tls_client_start(fd, host, mode, ca_file, deadline_ms, &c->io, &is_tls,
                                    c->cb_hash, &c->cb_len, &terr);
    if (st != WP_OK) {
        close(fd);
        wp_error_set(err, WP_SQLSTATE_CONN_FAILURE, "%s",
                     st == WP_ERR_TIMEOUT ? "timeout while setting up TLS to the backend"
                                          : "TLS to the backend failed");
        wp_error_detail(err, "TLS to backend %s (backend_tls) failed: %s%s%s", addr, terr.message,
                        terr.hint[0] ? "; " : "", terr.hint);
        return st == WP_ERR_TIMEOUT ? WP_ERR_TIMEOUT : WP_ERR_BACKEND;
    }
    c->fd = fd;
    c->tls = is_tls ? c->io.impl : NULL;
    return WP_OK;
}

void up_close(up_conn *c)
{
    if (!c)
        return;
    if (c->tls) {
        io_shutdown(&c->io);
        tls_io_free(&c->io);
        c->tls = NULL;
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->cb_len = 0;
}

void up_terminate(up_conn *c, int64_t deadline_ms)
{
    static const unsigned char x[5] = {PGW_MSG_TERMINATE, 0, 0, 0, 4};
    if (c && c->fd >= 0)
        (void)io_write_all(&c->io, x, sizeof(x), deadline_ms);
    up_close(c);
}

wp_status up_send_cancel(const char *host, int port, uint32_t pid, const unsigned char *key,
                         size_t key_len, int64_t deadline_ms)
{
    /* 4-byte keys before protocol 3.2, up to 256 bytes since; pgwire checks the bound. */
    pgw_buf msg = {0};
    wp_status st = pgw_build_cancel(&msg, pid, key, key_len);
    if (st != WP_OK) {
        pgw_buf_free(&msg);
        return st;
    }
    char why[256];
    int fd = tcp_connect(host, port, deadline_ms, why, sizeof(why));
    if (fd < 0) {
        pgw_buf_free(&msg);
        return WP_ERR_BACKEND;
    }
    wp_io io;
    io_plain_init(&io, fd);
    st = io_write_all(&io, msg.data, msg.len, deadline_ms);
    pgw_buf_free(&msg);
    /* The server answers nothing and closes once it has handled the request; like libpq,
     * wait for that close (bounded) so the cancel is delivered before the caller moves
     * on and cannot hit a later query instead. */
    if (st == WP_OK) {
        int64_t wait_until = wp_now_ms() + 5000;
        if (deadline_ms > 0 && deadline_ms < wait_until)
            wait_until = deadline_ms;
        unsigned char b;
        size_t got;
        (void)io_read_some(&io, &b, 1, &got, wait_until);
    }
    close(fd);
    return st;
}
