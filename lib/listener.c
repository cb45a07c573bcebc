/*
 * listener: listening sockets, accept threads, worker threads, the connection cap.
 *
 * Design. Each listener has one socket and one accept thread. The accept thread polls
 * the socket together with a private wake-up pipe, so lsn_stop() can end it without
 * signals or shutdown() tricks. Every accepted client gets its own detached worker
 * thread with a small (256 KiB) stack: the session code keeps its buffers on the heap,
 * so thousands of idle sessions cost little memory.
 *
 * Counting. `live` counts sessions being served; a mutex + condvar guard it so the
 * server can wait for the drain on shutdown. When live reaches max_connections, new
 * clients still get a worker, flagged over_cap, which reads their startup packet and
 * answers 53300; those refusals are counted apart (`overflow`) and themselves bounded
 * (LSN_OVERFLOW_MAX) so a flood cannot turn the refusal path into unbounded threads:
 * beyond that bound a client is closed without a reply.
 */
#include "listener.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "io.h"
#include "log.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define LSN_STACK_SIZE (2 * 1024 * 1024) /* sanitizers inflate stack frames */
#else
#define LSN_STACK_SIZE (256 * 1024)
#endif
#define LSN_OVERFLOW_MAX 64
#define LSN_BACKLOG 511
#define LSN_ACCEPT_BACKOFF_MS 100 /* after EMFILE and friends: do not spin */

struct lsn_listener {
    char name[128];
    char address[300];
    int fd;
    int port;
    int wake[2]; /* lsn_stop writes to wake[1]; the accept thread polls wake[0] */
    pthread_t thread;
    int started;
    lsn_serve_fn serve;
    void *serve_arg;
    atomic_llong max_connections;

    pthread_mutex_t mu; /* guards live, overflow */
    pthread_cond_t idle;
    size_t live;
    size_t overflow;
};

typedef struct lsn_work {
    lsn_listener *l;
    int fd;
    int over_cap;
} lsn_work;

static int bind_one(const struct addrinfo *ai, int *port_out)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0)
        return -1;
    int one = 1, zero = 0;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0)
        goto fail;
    /* "" listens on every address: let the IPv6 socket take IPv4 too. */
    if (ai->ai_family == AF_INET6)
        (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, LSN_BACKLOG) != 0)
        goto fail;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0)
        goto fail;
    *port_out = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                               : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
fail:;
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

/* Binds the first address of host:port that works. host "" tries "::" then "0.0.0.0". */
static int bind_address(const char *host, int port, int *port_out, wp_error *err)
{
    char portstr[16];
    snprintf(portstr, sizeof(portstr), "%d", port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    const char *node = host && *host ? host : NULL;
    if (!node)
        hints.ai_family = AF_INET6;
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(node, portstr, &hints, &res);
    if (gai != 0 && !node) {
        hints.ai_family = AF_INET; /* no IPv6 on this host */
        gai = getaddrinfo(node, portstr, &hints, &res);
    }
    if (gai != 0) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "cannot resolve listen address %s: %s",
                     node ? node : "*", gai_strerror(gai));
        return -1;
    }
    int fd = -1, saved = 0;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = bind_one(ai, port_out);
        if (fd < 0)
            saved = errno;
    }
    freeaddrinfo(res);
    if (fd < 0)
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "cannot listen on %s:%d: %s", node ? node : "*",
                     port, strerror(saved));
    return fd;
}

wp_status lsn_open(const char *name, const char *host, int port, int64_t max_connections,
                   lsn_serve_fn serve, void *arg, lsn_listener **out, wp_error *err)
{
    lsn_listener *l = calloc(1, sizeof(*l));
    if (!l)
        return WP_ERR_NOMEM;
    snprintf(l->name, sizeof(l->name), "%s", name);
    snprintf(l->address, sizeof(l->address), "%s:%d", host ? host : "", port);
    l->serve = serve;
    l->serve_arg = arg;
    atomic_store(&l->max_connections, max_connections);
    l->wake[0] = l->wake[1] = -1;
    l->fd = bind_address(host, port, &l->port, err);
    if (l->fd < 0) {
        free(l);
        return WP_ERR_IO;
    }
    if (pipe2(l->wake, O_CLOEXEC) != 0) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "pipe: %s", strerror(errno));
        close(l->fd);
        free(l);
        return WP_ERR_IO;
    }
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->idle, NULL);
    *out = l;
    return WP_OK;
}

static void lsn_unadmit(lsn_listener *l, int over_cap)
{
    pthread_mutex_lock(&l->mu);
    if (over_cap)
        l->overflow--;
    else
        l->live--;
    if (l->live + l->overflow == 0)
        pthread_cond_broadcast(&l->idle);
    pthread_mutex_unlock(&l->mu);
}

static void *lsn_worker(void *p)
{
    lsn_work w = *(lsn_work *)p;
    free(p);
    w.l->serve(w.l->serve_arg, w.l, w.fd, w.over_cap);
    lsn_unadmit(w.l, w.over_cap);
    return NULL;
}

/* Decides under the lock whether fd is served, refused (over_cap) or dropped (-1). */
static int lsn_admit(lsn_listener *l)
{
    long long max = atomic_load(&l->max_connections);
    int verdict;
    pthread_mutex_lock(&l->mu);
    if (max <= 0 || l->live < (size_t)max) {
        l->live++;
        verdict = 0;
    } else if (l->overflow < LSN_OVERFLOW_MAX) {
        l->overflow++;
        verdict = 1;
    } else {
        verdict = -1;
    }
    pthread_mutex_unlock(&l->mu);
    return verdict;
}

static void lsn_spawn(lsn_listener *l, int fd)
{
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    int verdict = lsn_admit(l);
    if (verdict < 0) {
        log_kv(WP_LOG_WARN, "conn_dropped", "listener", l->name, "reason",
               "too many connections and too many pending refusals", (char *)NULL);
        close(fd);
        return;
    }
    lsn_work *w = malloc(sizeof(*w));
    pthread_attr_t attr;
    int ok = w && pthread_attr_init(&attr) == 0;
    if (ok) {
        *w = (lsn_work){l, fd, verdict};
        pthread_t t;
        (void)pthread_attr_setstacksize(&attr, LSN_STACK_SIZE);
        (void)pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        ok = pthread_create(&t, &attr, lsn_worker, w) == 0;
        pthread_attr_destroy(&attr);
    }
    if (!ok) {
        log_kv(WP_LOG_ERROR, "conn_dropped", "listener", l->name, "reason",
               "cannot start a worker thread", (char *)NULL);
        free(w);
        close(fd);
        lsn_unadmit(l, verdict);
    }
}

static void *lsn_accept_loop(void *p)
{
    lsn_listener *l = p;
    for (;;) {
        struct pollfd pf[2] = {{.fd = l->fd, .events = POLLIN},
                               {.fd = l->wake[0], .events = POLLIN}};
        if (poll(pf, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pf[1].revents)
            break;
        int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0) {
            lsn_spawn(l, fd);
            continue;
        }
        if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED)
            continue;
        log_kv(WP_LOG_ERROR, "accept_failed", "listener", l->name, "error", strerror(errno),
               (char *)NULL);
        /* Out of descriptors or memory: back off instead of spinning on the same error. */
        (void)poll(&pf[1], 1, LSN_ACCEPT_BACKOFF_MS);
        if (pf[1].revents)
            break;
    }
    return NULL;
}

wp_status lsn_start(lsn_listener *l)
{
    if (pthread_create(&l->thread, NULL, lsn_accept_loop, l) != 0)
        return WP_ERR_INTERNAL;
    l->started = 1;
    return WP_OK;
}

void lsn_stop(lsn_listener *l)
{
    if (!l || l->fd < 0)
        return;
    if (l->started) {
        ssize_t w;
        do {
            w = write(l->wake[1], "x", 1);
        } while (w < 0 && errno == EINTR);
        pthread_join(l->thread, NULL);
        l->started = 0;
    }
    close(l->fd);
    l->fd = -1;
}

size_t lsn_wait_idle(lsn_listener *l, int64_t deadline_ms)
{
    pthread_mutex_lock(&l->mu);
    while (l->live + l->overflow > 0) {
        int64_t left = deadline_ms - wp_now_ms();
        if (left <= 0)
            break;
        /* The condvar uses CLOCK_REALTIME; wait in slices of at most the time left. */
        struct timespec ts;
        wp_timespec_after(CLOCK_REALTIME, left, &ts);
        pthread_cond_timedwait(&l->idle, &l->mu, &ts);
    }
    size_t live = l->live + l->overflow;
    pthread_mutex_unlock(&l->mu);
    return live;
}

void lsn_free(lsn_listener *l)
{
    if (!l)
        return;
    lsn_stop(l);
    close(l->wake[0]);
    close(l->wake[1]);
    pthread_cond_destroy(&l->idle);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

void lsn_set_max_connections(lsn_listener *l, int64_t max_connections)
{
    atomic_store(&l->max_connections, max_connections);
}

size_t lsn_live(lsn_listener *l)
{
    pthread_mutex_lock(&l->mu);
    size_t n = l->live;
    pthread_mutex_unlock(&l->mu);
    return n;
}

int lsn_port(const lsn_listener *l)
{
    return l->port;
}

const char *lsn_name(const lsn_listener *l)
{
    return l->name;
}

const char *lsn_address(const lsn_listener *l)
{
    return l->address;
}
