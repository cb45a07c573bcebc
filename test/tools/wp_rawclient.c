/*
 * wp_rawclient: a minimal PostgreSQL client for e2e tests that need to send startup
 * parameters libpq refuses (drivers such as Go's pgx forward unknown connection-string
 * parameters as startup parameters; libpq rejects them). It sends a protocol 3.0
 * StartupMessage with the given parameters, expects AuthenticationOk (Waypoint never asks
 * for a password), runs one simple Query and prints each row's columns tab-separated,
 * or "ERROR <sqlstate> <message>" and exit 1 for an ErrorResponse.
 *
 *   wp_rawclient HOST PORT "SQL" key=value [key=value ...]
 *
 * WP_RAWCLIENT_SRC=127.0.0.2 binds the client socket to that source address first, so a
 * test can be a second caller on the loopback (the stand-in matches identities by IP).
 * WP_RAWCLIENT_LOCAL_PORT=N binds the client's own end to port N (with SRC, or on the
 * wildcard address of HOST's family), so a test can choose the ip:port Waypoint's WhoIs
 * asks about, as tailscaled's proxymap would see it.
 */
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "io.h"
#include "pgwire.h"

/* Binds fd to the local port in WP_RAWCLIENT_LOCAL_PORT, if set. 0 on success. */
static int bind_local(int fd, int family)
{
    const char *src = getenv("WP_RAWCLIENT_SRC"), *lp = getenv("WP_RAWCLIENT_LOCAL_PORT");
    int has_src = src && *src, has_port = lp && *lp;
    if (!has_src && !has_port)
        return 0;
    int one = 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct addrinfo hints = {.ai_family = family,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV},
                    *sa;
    if (getaddrinfo(has_src ? src : NULL, has_port ? lp : "0", &hints, &sa) != 0)
        return -1;
    int rc = bind(fd, sa->ai_addr, sa->ai_addrlen);
    freeaddrinfo(sa);
    return rc;
}

static int dial(const char *host, const char *port)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
    if (getaddrinfo(host, port, &hints, &res) != 0)
        return -1;
    int fd = socket(res->ai_family, res->ai_socktype, 0);
    if (fd >= 0 && bind_local(fd, res->ai_family) != 0) {
        perror("wp_rawclient: bind");
        close(fd);
        fd = -1;
    }
    if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

static int print_error(const pgw_buf *b)
{
    wp_error e;
    wp_error_clear(&e);
    pgw_parse_error(b->data, b->len, &e);
    printf("ERROR %s %s\n", e.sqlstate, e.message);
    return 1;
}

static void print_row(const pgw_buf *b)
{
    if (b->len < 2)
        return;
    unsigned n = ((unsigned)b->data[0] << 8) | b->data[1];
    size_t off = 2;
    for (unsigned i = 0; i < n && off + 4 <= b->len; i++) {
        int32_t len =
            (int32_t)(((uint32_t)b->data[off] << 24) | ((uint32_t)b->data[off + 1] << 16) |
                      ((uint32_t)b->data[off + 2] << 8) | b->data[off + 3]);
        off += 4;
        if (i > 0)
            putchar('\t');
        if (len >= 0 && off + (size_t)len <= b->len) {
            fwrite(b->data + off, 1, (size_t)len, stdout);
            off += (size_t)len;
        }
    }
    putchar('\n');
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: wp_rawclient HOST PORT SQL key=value...\n");
        return 2;
    }
    pgw_param params[32];
    size_t np = 0;
    for (int i = 4; i < argc && np < 32; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq)
            return 2;
        *eq = '\0';
        params[np++] = (pgw_param){.key = argv[i], .value = eq + 1};
    }
    int fd = dial(argv[1], argv[2]);
    if (fd < 0) {
        fprintf(stderr, "wp_rawclient: cannot connect\n");
        return 2;
    }
    wp_io io;
    io_plain_init(&io, fd);
    int64_t deadline = wp_now_ms() + 30000;
    pgw_buf out = {0}, in = {0};
    if (pgw_build_startup(&out, PGW_PROTO_30, params, np) != WP_OK ||
        io_write_all(&io, out.data, out.len, deadline) != WP_OK)
        return 2;
    int rc = 0, queried = 0;
    for (;;) {
        char type;
        if (pgw_read_msg(&io, deadline, PGW_MSG_MAX, &type, &in) != WP_OK) {
            fprintf(stderr, "wp_rawclient: connection lost\n");
            return 2;
        }
        if (type == PGW_MSG_ERROR) {
            rc = print_error(&in);
            if (!queried)
                break;
        } else if (type == 'D') {
            print_row(&in);
        } else if (type == PGW_MSG_READY) {
            if (queried)
                break;
            pgw_buf_reset(&out);
            size_t sql_len = strlen(argv[3]) + 1;
            unsigned char hdr[5] = {'Q', 0, 0, 0, 0};
            uint32_t len = (uint32_t)(4 + sql_len);
            hdr[1] = (unsigned char)(len >> 24);
            hdr[2] = (unsigned char)(len >> 16);
            hdr[3] = (unsigned char)(len >> 8);
            hdr[4] = (unsigned char)len;
            if (pgw_buf_append(&out, hdr, 5) != WP_OK ||
                pgw_buf_append(&out, argv[3], sql_len) != WP_OK ||
                io_write_all(&io, out.data, out.len, deadline) != WP_OK)
                return 2;
            queried = 1;
        }
    }
    unsigned char term[5] = {'X', 0, 0, 0, 4};
    io_write_all(&io, term, sizeof(term), deadline);
    close(fd);
    pgw_buf_free(&out);
    pgw_buf_free(&in);
    return rc;
}
