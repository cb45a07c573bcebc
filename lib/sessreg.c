/*
 * sessreg: live sessions, listed and ended from the admin socket.
 *
 * Design. A doubly linked list under one mutex, with a condition variable that
 * sessreg_remove() broadcasts so `waypoint kill` can wait until the sessions it ended
 * are really gone. Entries belong to their session: only sessreg_remove() frees one, and
 * it takes the lock, so everything that touches an entry through the registry (listing,
 * kill) does so under the lock and never sees a freed entry.
 *
 * Kill is delivered through a pipe per entry (non-blocking, close-on-exec): one byte
 * written makes the read end readable, which the relay polls next to its sockets. The
 * message goes into the entry under the lock before the byte is written. Ids increase
 * from 1 and are never reused in a process.
 */
#include "sessreg.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "io.h"

#define SESSREG_MSG_MAX 256

struct sessreg_entry {
    sessreg_entry *prev, *next;
    uint64_t id;
    char *listener, *peer, *login, *node, *role, *database, *presets;
    int tls;
    int64_t since_ms;
    const char *state; /* string literal; guarded by the registry lock */
    _Atomic uint64_t bytes_in, bytes_out;
    int kill_pipe[2];
    int kill_asked;
    char kill_msg[SESSREG_MSG_MAX];
};

struct sessreg {
    pthread_mutex_t mu;
    pthread_cond_t gone; /* broadcast on every removal */
    sessreg_entry *head;
    uint64_t next_id;
    sessreg_count_fn count;
    void *count_arg;
};

sessreg *sessreg_new(sessreg_count_fn count, void *count_arg)
{
    sessreg *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    pthread_condattr_t ca;
    if (pthread_mutex_init(&r->mu, NULL) != 0) {
        free(r);
        return NULL;
    }
    if (pthread_condattr_init(&ca) != 0 || pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0 ||
        pthread_cond_init(&r->gone, &ca) != 0) {
        pthread_mutex_destroy(&r->mu);
        free(r);
        return NULL;
    }
    pthread_condattr_destroy(&ca);
    r->next_id = 1;
    r->count = count;
    r->count_arg = count_arg;
    return r;
}

static void entry_free(sessreg_entry *e)
{
    char **strs[] = {&e->listener, &e->peer,     &e->login,  &e->node,
                     &e->role,     &e->database, &e->presets};
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
        free(*strs[i]);
    if (e->kill_pipe[0] >= 0)
        close(e->kill_pipe[0]);
    if (e->kill_pipe[1] >= 0)
        close(e->kill_pipe[1]);
    free(e);
}

void sessreg_free(sessreg *r)
{
    if (!r)
        return;
    while (r->head) {
        sessreg_entry *n = r->head->next;
        entry_free(r->head);
        r->head = n;
    }
    pthread_cond_destroy(&r->gone);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

static int dup_all(sessreg_entry *e, const sessreg_info *in)
{
    const char *src[] = {in->listener, in->peer,     in->login,  in->node,
                         in->role,     in->database, in->presets};
    char **dst[] = {&e->listener, &e->peer,     &e->login,  &e->node,
                    &e->role,     &e->database, &e->presets};
    for (size_t i = 0; i < sizeof(src) / sizeof(src[0]); i++)
        if (!(*dst[i] = strdup(src[i] ? src[i] : "")))
            return -1;
    return 0;
}

sessreg_entry *sessreg_add(sessreg *r, const sessreg_info *info)
{
    if (!r)
        return NULL;
    sessreg_entry *e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    e->kill_pipe[0] = e->kill_pipe[1] = -1;
    if (dup_all(e, info) != 0 || pipe2(e->kill_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        entry_free(e);
        return NULL;
    }
    e->tls = info->tls;
    e->since_ms = info->since_ms;
    e->state = "active";
    pthread_mutex_lock(&r->mu);
    e->id = r->next_id++;
    e->next = r->head;
    if (r->head)
        r->head->prev = e;
    r->head = e;
    pthread_mutex_unlock(&r->mu);
    if (r->count)
        r->count(r->count_arg, e->listener, +1);
    return e;
}

void sessreg_remove(sessreg *r, sessreg_entry *e)
{
    if (!r || !e)
        return;
    pthread_mutex_lock(&r->mu);
    if (e->prev)
        e->prev->next = e->next;
    else
        r->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    pthread_cond_broadcast(&r->gone);
    pthread_mutex_unlock(&r->mu);
    if (r->count)
        r->count(r->count_arg, e->listener, -1);
    entry_free(e);
}

uint64_t sessreg_id(const sessreg_entry *e)
{
    return e ? e->id : 0;
}

int sessreg_kill_fd(const sessreg_entry *e)
{
    return e ? e->kill_pipe[0] : -1;
}

_Atomic uint64_t *sessreg_bytes_in(sessreg_entry *e)
{
    return e ? &e->bytes_in : NULL;
}

_Atomic uint64_t *sessreg_bytes_out(sessreg_entry *e)
{
    return e ? &e->bytes_out : NULL;
}

void sessreg_kill_message(sessreg *r, const sessreg_entry *e, char *msg, size_t msgsz)
{
    msg[0] = '\0';
    if (!r || !e)
        return;
    pthread_mutex_lock(&r->mu);
    snprintf(msg, msgsz, "%s", e->kill_msg);
    pthread_mutex_unlock(&r->mu);
}

void sessreg_set_state(sessreg *r, sessreg_entry *e, const char *state)
{
    if (!r || !e)
        return;
    pthread_mutex_lock(&r->mu);
    e->state = state;
    pthread_mutex_unlock(&r->mu);
}

size_t sessreg_kill(sessreg *r, const char *login, uint64_t id, const char *msg, uint64_t *ids,
                    size_t nids)
{
    size_t n = 0;
    pthread_mutex_lock(&r->mu);
    for (sessreg_entry *e = r->head; e; e = e->next) {
        if ((login && strcmp(e->login, login) != 0) || (id && e->id != id) || (!login && !id))
            continue;
        if (!e->kill_asked) {
            snprintf(e->kill_msg, sizeof(e->kill_msg), "%s", msg);
            e->kill_asked = 1;
            e->state = "killing";
            ssize_t w;
            do
                w = write(e->kill_pipe[1], "k", 1);
            while (w < 0 && errno == EINTR);
        }
        if (n < nids)
            ids[n] = e->id;
        n++;
    }
    pthread_mutex_unlock(&r->mu);
    return n;
}

static size_t still_there(sessreg *r, const uint64_t *ids, size_t n)
{
    size_t left = 0;
    for (sessreg_entry *e = r->head; e; e = e->next)
        for (size_t i = 0; i < n; i++)
            left += e->id == ids[i];
    return left;
}

size_t sessreg_wait_gone(sessreg *r, const uint64_t *ids, size_t n, int64_t deadline_ms)
{
    struct timespec ts;
    wp_timespec_after(CLOCK_MONOTONIC, deadline_ms - wp_now_ms(), &ts);
    pthread_mutex_lock(&r->mu);
    size_t left;
    while ((left = still_there(r, ids, n)) > 0)
        if (pthread_cond_timedwait(&r->gone, &r->mu, &ts) == ETIMEDOUT) {
            left = still_there(r, ids, n);
            break;
        }
    pthread_mutex_unlock(&r->mu);
    return left;
}

static json_t *entry_json(const sessreg_entry *e)
{
    time_t secs = (time_t)(e->since_ms / 1000);
    struct tm tm;
    char since[40];
    gmtime_r(&secs, &tm);
    strftime(since, sizeof(since), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return json_pack("{s:I,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:b,s:s,s:I,s:I,s:s}", "id",
                     (json_int_t)e->id, "listener", e->listener, "peer", e->peer, "login", e->login,
                     "node", e->node, "role", e->role, "database", e->database, "presets",
                     e->presets, "tls", e->tls, "since", since, "bytes_in",
                     (json_int_t)atomic_load(&e->bytes_in), "bytes_out",
                     (json_int_t)atomic_load(&e->bytes_out), "state", e->state);
}

json_t *sessreg_list(sessreg *r)
{
    json_t *arr = json_array();
    if (!arr)
        return NULL;
    pthread_mutex_lock(&r->mu);
    for (const sessreg_entry *e = r->head; e; e = e->next) {
        json_t *o = entry_json(e);
        if (!o || json_array_append_new(arr, o) != 0) {
            pthread_mutex_unlock(&r->mu);
            json_decref(arr);
            return NULL;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return arr;
}
