/*
 * admin: unix-socket server for `waypoint sessions` and `waypoint kill`, and the client
 * those subcommands use.
 *
 * Design. One thread polls the listening socket and a stop pipe and serves each request
 * inline: requests are rare and short (a kill waits at most ADMIN_KILL_WAIT_MS for the
 * sessions to end, so the answer can say they are gone). Every read and write has a
 * deadline, a request is at most ADMIN_REQ_MAX bytes, and a peer that is neither root
 * nor Waypoint's own user is closed unanswered.
 *
 * Permissions. The socket is created with bind() and then chmod 0600; between the two a
 * connection could only come from a peer that passes the SO_PEERCRED check anyway.
 */
#include "admin.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "io.h"
#include "log.h"

#define ADMIN_REQ_MAX 4096
#define ADMIN_IO_MS 2000
#define ADMIN_KILL_WAIT_MS 10000
#define ADMIN_KILL_IDS_MAX 1024

struct admin_server {
    obs *o;
    _Atomic(fleet *) fleet; /* set after the thread started: hence atomic */
    char *path;
    int fd;
    int stop[2];
    pthread_t th;
};

/* ---------------------------------------------------------- requests ---- */

static json_t *admin_error(const char *msg)
{
    return json_pack("{s:b,s:s}", "ok", 0, "error", msg);
}

json_t *admin_kill_local(obs *o, const char *login, uint64_t id, size_t *left)
{
    uint64_t *ids = calloc(ADMIN_KILL_IDS_MAX, sizeof(*ids));
    if (!ids)
        return NULL;
    sessreg *r = obs_sessions(o);
    size_t n = sessreg_kill(r, login, id, ADMIN_KILL_MESSAGE, ids, ADMIN_KILL_IDS_MAX);
    size_t kept = n < ADMIN_KILL_IDS_MAX ? n : ADMIN_KILL_IDS_MAX;
    *left = sessreg_wait_gone(r, ids, kept, wp_now_ms() + ADMIN_KILL_WAIT_MS);
    json_t *killed = json_array();
    for (size_t i = 0; killed && i < kept; i++)
        json_array_append_new(killed, json_integer((json_int_t)ids[i]));
    free(ids);
    log_fmt(WP_LOG_INFO, "admin_kill", "matched=%zu still_open=%zu", n, *left);
    return killed;
}

static json_t *admin_kill(obs *o, const json_t *req)
{
    const char *login = json_string_value(json_object_get(req, "login"));
    json_t *jid = json_object_get(req, "session");
    if ((login == NULL) == (jid == NULL))
        return admin_error("kill needs exactly one of \"login\" or \"session\"");
    if (login && !*login)
        return admin_error("kill: \"login\" must not be empty");
    if (jid && (!json_is_integer(jid) || json_integer_value(jid) <= 0))
        return admin_error("kill: \"session\" must be a positive integer");
    size_t left = 0;
    json_t *killed = admin_kill_local(o, login, jid ? (uint64_t)json_integer_value(jid) : 0, &left);
    if (!killed)
        return admin_error("out of memory");
    return json_pack("{s:b,s:o,s:I}", "ok", 1, "killed", killed, "still_open", (json_int_t)left);
}

json_t *admin_handle(obs *o, const json_t *req)
{
    const char *cmd = json_string_value(json_object_get(req, "cmd"));
    if (!cmd)
        return admin_error("request needs a \"cmd\"");
    if (strcmp(cmd, "sessions") == 0) {
        json_t *list = sessreg_list(obs_sessions(o));
        return list ? json_pack("{s:b,s:o}", "ok", 1, "sessions", list)
                    : admin_error("out of memory");
    }
    if (strcmp(cmd, "kill") == 0)
        return admin_kill(o, req);
    return admin_error("unknown cmd: use \"sessions\" or \"kill\"");
}

/* ------------------------------------------------------------ wire ---- */

/* Reads up to the first '\n' (or EOF) within the deadline into buf. */
static int read_line(int fd, char *buf, size_t cap, int64_t deadline)
{
    size_t len = 0;
    while (len + 1 < cap) {
        if (io_wait_fd(fd, POLLIN, deadline) != WP_OK)
            return -1;
        ssize_t r = read(fd, buf + len, cap - 1 - len);
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
        if (memchr(buf, '\n', len))
            break;
    }
    buf[len] = '\0';
    return len > 0 ? 0 : -1;
}

static int write_json_line(int fd, const json_t *j, int64_t deadline)
{
    char *s = json_dumps(j, JSON_COMPACT);
    if (!s)
        return -1;
    size_t n = strlen(s);
    s[n] = '\0';
    int rc = 0;
    const char *parts[2] = {s, "\n"};
    size_t lens[2] = {n, 1};
    for (int k = 0; k < 2 && rc == 0; k++) {
        const char *p = parts[k];
        size_t left = lens[k];
        while (left > 0 && rc == 0) {
            if (io_wait_fd(fd, POLLOUT, deadline) != WP_OK) {
                rc = -1;
                break;
            }
            ssize_t w = write(fd, p, left);
            if (w < 0 && (errno == EINTR || errno == EAGAIN))
                continue;
            if (w <= 0)
                rc = -1;
            else {
                p += w;
                left -= (size_t)w;
            }
        }
    }
    free(s);
    return rc;
}

static int peer_allowed(int fd)
{
    struct ucred cr;
    socklen_t len = sizeof(cr);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0)
        return 0;
    return cr.uid == 0 || cr.uid == geteuid();
}

static void admin_serve(admin_server *a, int fd)
{
    int64_t deadline = wp_now_ms() + ADMIN_IO_MS;
    char *buf = malloc(ADMIN_REQ_MAX + 1);
    if (!buf || !peer_allowed(fd) || read_line(fd, buf, ADMIN_REQ_MAX + 1, deadline) != 0) {
        free(buf);
        return;
    }
    json_error_t jerr;
    json_t *req = json_loads(buf, JSON_DISABLE_EOF_CHECK, &jerr);
    free(buf);
    json_t *reply = !req || !json_is_object(req) ? admin_error("request is not a JSON object")
                    : json_is_true(json_object_get(req, "fleet"))
                        ? fleet_admin(atomic_load(&a->fleet), req)
                        : admin_handle(a->o, req);
    json_decref(req);
    if (reply)
        (void)write_json_line(fd, reply, wp_now_ms() + ADMIN_IO_MS);
    json_decref(reply);
}

static void *admin_thread(void *arg)
{
    admin_server *a = arg;
    for (;;) {
        struct pollfd p[2] = {{.fd = a->fd, .events = POLLIN},
                              {.fd = a->stop[0], .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents)
            break;
        if (!p[0].revents)
            continue;
        int c = accept4(a->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (c < 0)
            continue;
        admin_serve(a, c);
        close(c);
    }
    return NULL;
}

/* ---------------------------------------------------------- binding ---- */

static int fill_addr(const char *path, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sa->sun_path))
        return -1;
    memcpy(sa->sun_path, path, strlen(path) + 1);
    return 0;
}

/* A socket file nobody answers on is left over from a process that died: remove it. */
static int clear_stale(const char *path, const struct sockaddr_un *sa, wp_error *err)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : -1;
    if (!S_ISSOCK(st.st_mode)) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "admin socket %s exists and is not a socket", path);
        return -1;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int live = fd >= 0 && connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0;
    if (fd >= 0)
        close(fd);
    if (live) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL,
                     "admin socket %s is in use by another process (another Waypoint?)", path);
        return -1;
    }
    return unlink(path);
}

wp_status admin_start(const char *path, obs *o, admin_server **out, wp_error *err)
{
    struct sockaddr_un sa;
    if (fill_addr(path, &sa) != 0) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "admin socket path too long: %s", path);
        return WP_ERR_INVALID;
    }
    admin_server *a = calloc(1, sizeof(*a));
    if (!a || !(a->path = strdup(path))) {
        free(a);
        return WP_ERR_NOMEM;
    }
    a->o = o;
    a->fd = a->stop[0] = a->stop[1] = -1;
    if (clear_stale(path, &sa, err) != 0) {
        if (!err->message[0])
            wp_error_set(err, WP_SQLSTATE_INTERNAL, "admin socket %s: %s", path, strerror(errno));
        goto fail;
    }
    a->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (a->fd < 0 || bind(a->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        chmod(path, 0600) != 0 || listen(a->fd, 16) != 0 || pipe2(a->stop, O_CLOEXEC) != 0) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "cannot listen on admin socket %s: %s", path,
                     strerror(errno));
        goto fail;
    }
    if (pthread_create(&a->th, NULL, admin_thread, a) != 0) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "cannot start the admin socket thread");
        goto fail;
    }
    *out = a;
    return WP_OK;
fail:
    if (a->fd >= 0) {
        close(a->fd);
        unlink(path);
    }
    for (int i = 0; i < 2; i++)
        if (a->stop[i] >= 0)
            close(a->stop[i]);
    free(a->path);
    free(a);
    return WP_ERR_IO;
}

void admin_set_fleet(admin_server *a, fleet *f)
{
    if (a)
        atomic_store(&a->fleet, f);
}

void admin_stop(admin_server *a)
{
    if (!a)
        return;
    close(a->stop[1]); /* wakes the thread */
    pthread_join(a->th, NULL);
    close(a->stop[0]);
    close(a->fd);
    unlink(a->path);
    free(a->path);
    free(a);
}

/* ----------------------------------------------------------- client ---- */

wp_status admin_call(const char *path, const json_t *req, json_t **reply, char *err, size_t errsz)
{
    struct sockaddr_un sa;
    if (fill_addr(path, &sa) != 0) {
        snprintf(err, errsz, "admin socket path too long: %s", path);
        return WP_ERR_INVALID;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        snprintf(err, errsz,
                 "cannot connect to the admin socket %s: %s (is Waypoint running "
                 "with [admin] socket set?)",
                 path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return WP_ERR_IO;
    }
    /* The server may wait up to ADMIN_KILL_WAIT_MS for killed sessions to go. */
    int64_t deadline = wp_now_ms() + ADMIN_KILL_WAIT_MS + 5000;
    char *buf = malloc(1 << 20);
    int ok = buf && write_json_line(fd, req, deadline) == 0 &&
             read_line(fd, buf, 1 << 20, deadline) == 0;
    close(fd);
    json_error_t jerr;
    *reply = ok ? json_loads(buf, JSON_DISABLE_EOF_CHECK, &jerr) : NULL;
    free(buf);
    if (!*reply) {
        snprintf(err, errsz, "no valid answer from the admin socket %s", path);
        return WP_ERR_PROTOCOL;
    }
    return WP_OK;
}
