/*
 * wp_flood: many silent client sockets from one address, for e2e tests of the per-peer
 * bound on unstarted connections (issue 10 item 5).
 *
 *   wp_flood HOST PORT N DIR
 *
 * 1. Binds N TCP sockets to HOST:0 and writes their local ports to DIR/ports, one per
 *    line (atomically), so the test can map them (or not) in the stand-in's proxymap.
 *    With WP_FLOOD_SOURCES set (a comma-separated list of local addresses, e.g.
 *    "127.0.1.1,127.0.1.2"), socket i is bound to source i modulo the list instead, so
 *    one flood comes from many addresses.
 * 2. Waits for DIR/go, connects all N to HOST:PORT and sends nothing; writes
 *    DIR/connected.
 * 3. Waits for DIR/probe, then tells for each socket what Waypoint did with it, one line
 *    each: "dropped" (closed without a word), or, after sending a StartupMessage,
 *    "E <sqlstate> <message>", "R" (authentication request: let in) or "closed".
 * Waiting is polling for a file with a deadline (60 s for each step).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io.h"
#include "pgwire.h"

#define FLOOD_MAX 2000
#define FLOOD_WAIT_MS 60000

static int wait_file(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    int64_t deadline = wp_now_ms() + FLOOD_WAIT_MS;
    struct stat st;
    while (stat(path, &st) != 0) {
        if (wp_now_ms() > deadline)
            return -1;
        (void)poll(NULL, 0, 20);
    }
    return 0;
}

static int write_file(const char *dir, const char *name, const char *text)
{
    char tmp[4096], path[4096];
    snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, name);
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    int ok = fputs(text, f) >= 0;
    ok &= fclose(f) == 0;
    return ok && rename(tmp, path) == 0 ? 0 : -1;
}

/* What Waypoint did with a silent socket. */
static void probe(int fd)
{
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    char c;
    if (poll(&pf, 1, 0) > 0 && recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) <= 0) {
        puts("dropped");
        return;
    }
    wp_io io;
    io_plain_init(&io, fd);
    int64_t deadline = wp_now_ms() + 10000;
    pgw_param params[] = {{.key = "user", .value = "flood"}, {.key = "database", .value = "appdb"}};
    pgw_buf out = {0}, in = {0};
    char type;
    if (pgw_build_startup(&out, PGW_PROTO_30, params, 2) != WP_OK ||
        io_write_all(&io, out.data, out.len, deadline) != WP_OK ||
        pgw_read_msg(&io, deadline, PGW_MSG_MAX, &type, &in) != WP_OK) {
        puts("closed");
    } else if (type == PGW_MSG_ERROR) {
        wp_error e;
        wp_error_clear(&e);
        pgw_parse_error(in.data, in.len, &e);
        printf("E %s %s\n", e.sqlstate, e.message);
    } else {
        printf("%c\n", type);
    }
    pgw_buf_free(&out);
    pgw_buf_free(&in);
}

#define FLOOD_SOURCES_MAX 256

/* WP_FLOOD_SOURCES parsed into sockaddrs of dst's family; 0 sources = bind HOST:0. */
static int flood_sources(const struct addrinfo *dst, struct sockaddr_storage *out, int max)
{
    const char *env = getenv("WP_FLOOD_SOURCES");
    if (!env || !*env)
        return 0;
    char buf[8192];
    snprintf(buf, sizeof(buf), "%s", env);
    int n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        if (n == max)
            return -1;
        memset(&out[n], 0, sizeof(out[n]));
        if (dst->ai_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&out[n];
            a->sin_family = AF_INET;
            if (inet_pton(AF_INET, tok, &a->sin_addr) != 1)
                return -1;
        } else {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&out[n];
            a->sin6_family = AF_INET6;
            if (inet_pton(AF_INET6, tok, &a->sin6_addr) != 1)
                return -1;
        }
        n++;
    }
    return n;
}

int main(int argc, char **argv)
{
    int n = argc == 5 ? atoi(argv[3]) : 0;
    if (n <= 0 || n > FLOOD_MAX) {
        fprintf(stderr, "usage: wp_flood HOST PORT N(1-%d) DIR\n", FLOOD_MAX);
        return 2;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *dst, *src;
    if (getaddrinfo(argv[1], argv[2], &hints, &dst) != 0 ||
        getaddrinfo(argv[1], "0", &hints, &src) != 0) {
        fprintf(stderr, "wp_flood: cannot resolve %s\n", argv[1]);
        return 2;
    }
    static struct sockaddr_storage srcs[FLOOD_SOURCES_MAX];
    int nsrc = flood_sources(dst, srcs, FLOOD_SOURCES_MAX);
    if (nsrc < 0) {
        fprintf(stderr,
                "wp_flood: WP_FLOOD_SOURCES must list at most %d addresses of %s's family\n",
                FLOOD_SOURCES_MAX, argv[1]);
        return 2;
    }
    static int fds[FLOOD_MAX];
    size_t cap = (size_t)n * 8 + 1, len = 0;
    char *ports = calloc(1, cap);
    for (int i = 0; ports && i < n; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        fds[i] = socket(src->ai_family, SOCK_STREAM, 0);
        const struct sockaddr *sa = nsrc ? (const struct sockaddr *)&srcs[i % nsrc] : src->ai_addr;
        socklen_t salen = !nsrc                       ? src->ai_addrlen
                          : dst->ai_family == AF_INET ? (socklen_t)sizeof(struct sockaddr_in)
                                                      : (socklen_t)sizeof(struct sockaddr_in6);
        if (fds[i] < 0 || bind(fds[i], sa, salen) != 0 ||
            getsockname(fds[i], (struct sockaddr *)&ss, &sl) != 0) {
            perror("wp_flood: bind");
            return 2;
        }
        unsigned port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                       : ((struct sockaddr_in *)&ss)->sin_port);
        len += (size_t)snprintf(ports + len, cap - len, "%u\n", port);
    }
    if (!ports || write_file(argv[4], "ports", ports) != 0 || wait_file(argv[4], "go") != 0) {
        fprintf(stderr, "wp_flood: no go\n");
        return 2;
    }
    for (int i = 0; i < n; i++) {
        if (connect(fds[i], dst->ai_addr, dst->ai_addrlen) != 0) {
            fprintf(stderr, "wp_flood: connect %d: %s\n", i, strerror(errno));
            return 2;
        }
    }
    if (write_file(argv[4], "connected", "1\n") != 0 || wait_file(argv[4], "probe") != 0) {
        fprintf(stderr, "wp_flood: no probe\n");
        return 2;
    }
    for (int i = 0; i < n; i++) {
        probe(fds[i]);
        close(fds[i]);
    }
    free(ports);
    freeaddrinfo(src);
    freeaddrinfo(dst);
    return 0;
}
