/*
 * cancel: the process-wide map from Waypoint cancel keys to backend cancel keys.
 *
 * Design. A fixed array of hash buckets keyed by the backend pid, each a singly linked
 * list, behind one mutex. It is shared by every worker (a CancelRequest arrives on a new
 * connection, handled by a different worker than the session it targets), which is the
 * stated reason for the lock; every operation is a short critical section (no I/O under
 * the lock: lookups copy the entry out and the caller sends the cancel afterwards).
 *
 * Keys. The pid is the backend's own, so several entries may share one (two listeners'
 * backends, or a reused backend whose earlier client's entry is being removed); the
 * 4-byte secret is random from the CSPRNG and unique among the entries of that pid, so
 * (pid, secret) names one entry. Secret and owner comparisons do not short-circuit, so
 * timing tells nothing about a guess.
 */
#include "cancel.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "scram.h"

#define CANCEL_BUCKETS 1024

typedef struct cancel_entry {
    struct cancel_entry *next;
    uint32_t pid;
    unsigned char key[CANCEL_KEY_LEN];
    cancel_target target;
} cancel_entry;

struct cancel_map {
    pthread_mutex_t mu;
    cancel_entry *buckets[CANCEL_BUCKETS];
    size_t n;
};

cancel_map *cancel_map_new(void)
{
    cancel_map *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    if (pthread_mutex_init(&m->mu, NULL) != 0) {
        free(m);
        return NULL;
    }
    return m;
}

void cancel_map_free(cancel_map *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < CANCEL_BUCKETS; i++) {
        cancel_entry *e = m->buckets[i];
        while (e) {
            cancel_entry *next = e->next;
            free(e);
            e = next;
        }
    }
    pthread_mutex_destroy(&m->mu);
    free(m);
}

size_t cancel_map_size(cancel_map *m)
{
    pthread_mutex_lock(&m->mu);
    size_t n = m->n;
    pthread_mutex_unlock(&m->mu);
    return n;
}

static cancel_entry **bucket(cancel_map *m, uint32_t pid)
{
    return &m->buckets[(pid * 2654435761u) % CANCEL_BUCKETS];
}

static cancel_entry *find_locked(cancel_map *m, uint32_t pid, const unsigned char *key)
{
    for (cancel_entry *e = *bucket(m, pid); e; e = e->next)
        if (e->pid == pid && memcmp(e->key, key, CANCEL_KEY_LEN) == 0)
            return e;
    return NULL;
}

wp_status cancel_register(cancel_map *m, const cancel_target *t, unsigned char key[CANCEL_KEY_LEN])
{
    cancel_entry *e = calloc(1, sizeof(*e));
    if (!e)
        return WP_ERR_NOMEM;
    e->target = *t;
    e->pid = t->backend_pid;
    pthread_mutex_lock(&m->mu);
    do {
        if (wp_random_bytes(e->key, sizeof(e->key)) != WP_OK) {
            pthread_mutex_unlock(&m->mu);
            free(e);
            return WP_ERR_INTERNAL;
        }
    } while (find_locked(m, e->pid, e->key));
    cancel_entry **b = bucket(m, e->pid);
    e->next = *b;
    *b = e;
    m->n++;
    pthread_mutex_unlock(&m->mu);
    memcpy(key, e->key, CANCEL_KEY_LEN);
    return WP_OK;
}

void cancel_unregister(cancel_map *m, uint32_t pid, const unsigned char key[CANCEL_KEY_LEN])
{
    pthread_mutex_lock(&m->mu);
    for (cancel_entry **pp = bucket(m, pid); *pp; pp = &(*pp)->next) {
        cancel_entry *e = *pp;
        if (e->pid == pid && memcmp(e->key, key, CANCEL_KEY_LEN) == 0) {
            *pp = e->next;
            m->n--;
            free(e);
            break;
        }
    }
    pthread_mutex_unlock(&m->mu);
}

/* Constant-time equality of two byte strings of possibly different lengths. */
static int same_bytes(const unsigned char *a, size_t alen, const unsigned char *b, size_t blen)
{
    unsigned diff = alen != blen;
    size_t n = alen < blen ? alen : blen;
    for (size_t i = 0; i < n; i++)
        diff |= a[i] ^ b[i];
    return diff == 0;
}

static int same_str(const char *a, const char *b)
{
    return same_bytes((const unsigned char *)a, strlen(a), (const unsigned char *)b, strlen(b));
}

wp_status cancel_lookup(cancel_map *m, uint32_t pid, const unsigned char *key, size_t key_len,
                        const char *login, const char *node_id, cancel_target *out)
{
    wp_status st = WP_ERR_NOT_FOUND;
    pthread_mutex_lock(&m->mu);
    /* Every entry of this pid is compared in full, so timing does not tell which secret
     * came close or whether the pid has an entry with another owner. */
    for (cancel_entry *e = *bucket(m, pid); e; e = e->next) {
        if (e->pid != pid)
            continue;
        int ok = same_bytes(e->key, CANCEL_KEY_LEN, key, key_len);
        ok &= same_str(e->target.login, login ? login : "");
        ok &= same_str(e->target.node_id, node_id ? node_id : "");
        if (ok && st != WP_OK) {
            *out = e->target;
            st = WP_OK;
        }
    }
    pthread_mutex_unlock(&m->mu);
    return st;
}
