/*
 * audit: JSON-lines file writer.
 *
 * Design. One fd under one mutex. The lock is held across the write so that a reopen
 * (SIGHUP) never closes the fd under a writer; records are encoded before the lock is
 * taken, so it is held only for the write(2) itself. A short write (disk full) is
 * retried for the rest of the line; if that fails too the error is returned, and the
 * line may be left partial in the file: the next record starts on a fresh line
 * (a '\n' is written first after a failure) so readers can skip the fragment.
 * The path's last component must not be a symlink (opened with O_NOFOLLOW).
 */
#include "audit.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct audit_log {
    pthread_mutex_t mu;
    int fd;
    char *path;
    int broken_line; /* the last write failed part-way */
};

audit_log *audit_new(void)
{
    audit_log *a = calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    if (pthread_mutex_init(&a->mu, NULL) != 0) {
        free(a);
        return NULL;
    }
    a->fd = -1;
    return a;
}

void audit_free(audit_log *a)
{
    if (!a)
        return;
    if (a->fd >= 0)
        close(a->fd);
    free(a->path);
    pthread_mutex_destroy(&a->mu);
    free(a);
}

/* O_NOFOLLOW: the file is reopened by path on every SIGHUP, as root, in a directory a
 * log shipper or rotation tool may also write; a symlink planted there would otherwise
 * send records (and O_CREAT's file) wherever it points. */
static int open_path(const char *path, char *err, size_t errsz)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW, 0600);
    if (fd < 0 && errno == ELOOP)
        snprintf(err, errsz,
                 "cannot open audit file %s: it is a symbolic link, which is not followed "
                 "(point [audit] file at the real path)",
                 path);
    else if (fd < 0)
        snprintf(err, errsz, "cannot open audit file %s: %s", path, strerror(errno));
    return fd;
}

int audit_set_path(audit_log *a, const char *path, char *err, size_t errsz)
{
    int fd = -1;
    char *copy = NULL;
    if (path) {
        if (!(copy = strdup(path))) {
            snprintf(err, errsz, "out of memory");
            return -1;
        }
        if ((fd = open_path(path, err, errsz)) < 0) {
            free(copy);
            return -1;
        }
    }
    pthread_mutex_lock(&a->mu);
    if (a->fd >= 0)
        close(a->fd);
    free(a->path);
    a->fd = fd;
    a->path = copy;
    a->broken_line = 0;
    pthread_mutex_unlock(&a->mu);
    return 0;
}

int audit_reopen(audit_log *a, char *err, size_t errsz)
{
    pthread_mutex_lock(&a->mu);
    int rc = 0;
    if (a->path) {
        int fd = open_path(a->path, err, errsz);
        if (fd < 0) {
            rc = -1; /* keep writing to the old file rather than to nothing */
        } else {
            if (a->fd >= 0)
                close(a->fd);
            a->fd = fd;
            a->broken_line = 0;
        }
    }
    pthread_mutex_unlock(&a->mu);
    return rc;
}

int audit_enabled(audit_log *a)
{
    pthread_mutex_lock(&a->mu);
    int on = a->path != NULL;
    pthread_mutex_unlock(&a->mu);
    return on;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            if (w == 0)
                errno = EIO;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int audit_write(audit_log *a, const json_t *rec, char *err, size_t errsz)
{
    char *line = json_dumps(rec, JSON_COMPACT | JSON_ENSURE_ASCII);
    size_t n = line ? strlen(line) : 0;
    char *buf = line ? malloc(n + 2) : NULL;
    if (!buf) {
        free(line);
        snprintf(err, errsz, "out of memory encoding an audit record");
        return audit_enabled(a) ? -1 : 1;
    }
    buf[0] = '\n';
    memcpy(buf + 1, line, n);
    buf[n + 1] = '\n';
    free(line);
    pthread_mutex_lock(&a->mu);
    int rc = 1;
    if (a->path) {
        rc = 0;
        if (a->fd < 0 ||
            write_all(a->fd, a->broken_line ? buf : buf + 1, a->broken_line ? n + 2 : n + 1) != 0) {
            snprintf(err, errsz, "cannot write audit file %s: %s", a->path,
                     a->fd < 0 ? "not open" : strerror(errno));
            a->broken_line = 1;
            rc = -1;
        } else {
            a->broken_line = 0;
        }
    }
    pthread_mutex_unlock(&a->mu);
    free(buf);
    return rc;
}
