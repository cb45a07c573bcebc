/*
 * admit: the per-peer unstarted-connection table (see admit.h for the why).
 *
 * Design. A fixed array of hash buckets with chained entries, one entry per
 * (listener, peer) with at least one connection held; an entry is freed when its
 * counts drop to zero, so the table's size follows the number of peers currently
 * starting up, never the number that ever connected. One mutex: each operation is a
 * hash, a short chain walk and two integer updates.
 *
 * Keys of unidentified peers are derived here (adm_peer_key) from the formatted peer
 * address, by parsing it back with inet_pton, so the grouping (loopback as one, IPv6 per
 * /64) lives next to the bound it serves.
 */
#include "admit.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ADM_BUCKETS 256

typedef struct adm_entry {
    struct adm_entry *next;
    long pending;
    long refusing;
    char key[]; /* listener '\n' peer key */
} adm_entry;

struct adm_table {
    pthread_mutex_t mu;
    adm_entry *buckets[ADM_BUCKETS];
};

adm_table *adm_new(void)
{
    adm_table *t = calloc(1, sizeof(*t));
    if (t && pthread_mutex_init(&t->mu, NULL) != 0) {
        free(t);
        return NULL;
    }
    return t;
}

void adm_free(adm_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < ADM_BUCKETS; i++) {
        while (t->buckets[i]) {
            adm_entry *n = t->buckets[i]->next;
            free(t->buckets[i]);
            t->buckets[i] = n;
        }
    }
    pthread_mutex_destroy(&t->mu);
    free(t);
}

/* FNV-1a over listener '\n' key. */
static size_t adm_hash(const char *listener, const char *key)
{
    uint32_t h = 2166136261u;
    for (const char *p = listener; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    h = (h ^ '\n') * 16777619u;
    for (const char *p = key; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return h % ADM_BUCKETS;
}

static int adm_same(const adm_entry *e, const char *listener, const char *key)
{
    size_t n = strlen(listener);
    return strncmp(e->key, listener, n) == 0 && e->key[n] == '\n' &&
           strcmp(e->key + n + 1, key) == 0;
}

/* The entry for (listener, key), created when create is set; NULL if none / no memory. */
static adm_entry **adm_find(adm_table *t, const char *listener, const char *key, int create)
{
    adm_entry **pp = &t->buckets[adm_hash(listener, key)];
    for (; *pp; pp = &(*pp)->next)
        if (adm_same(*pp, listener, key))
            return pp;
    if (!create)
        return NULL;
    size_t ln = strlen(listener), kn = strlen(key);
    adm_entry *e = calloc(1, sizeof(*e) + ln + kn + 2);
    if (!e)
        return NULL;
    memcpy(e->key, listener, ln);
    e->key[ln] = '\n';
    memcpy(e->key + ln + 1, key, kn + 1);
    *pp = e;
    return pp;
}

adm_verdict adm_acquire(adm_table *t, const char *listener, const char *key, int64_t max_pending)
{
    pthread_mutex_lock(&t->mu);
    adm_verdict v = ADM_DROP;
    adm_entry **pp = adm_find(t, listener, key, 1);
    if (pp) {
        adm_entry *e = *pp;
        if (max_pending <= 0 || e->pending < max_pending) {
            e->pending++;
            v = ADM_PENDING;
        } else if (e->refusing < ADM_REFUSALS_MAX) {
            e->refusing++;
            v = ADM_REFUSE;
        }
    }
    pthread_mutex_unlock(&t->mu);
    return v;
}

void adm_release(adm_table *t, const char *listener, const char *key, adm_verdict v)
{
    if (v != ADM_PENDING && v != ADM_REFUSE)
        return;
    pthread_mutex_lock(&t->mu);
    adm_entry **pp = adm_find(t, listener, key, 0);
    if (pp) {
        adm_entry *e = *pp;
        if (v == ADM_PENDING && e->pending > 0)
            e->pending--;
        else if (v == ADM_REFUSE && e->refusing > 0)
            e->refusing--;
        if (e->pending == 0 && e->refusing == 0) {
            *pp = e->next;
            free(e);
        }
    }
    pthread_mutex_unlock(&t->mu);
}

/* The key of an IPv4 address: every 127/8 address is the one local peer. */
static void adm_v4_key(const unsigned char *a, char *out, size_t outsz)
{
    if (a[0] == 127)
        snprintf(out, outsz, "addr:loopback");
    else
        snprintf(out, outsz, "addr:%u.%u.%u.%u", a[0], a[1], a[2], a[3]);
}

void adm_peer_key(const char *peer, char *out, size_t outsz)
{
    const char *ip = peer[0] == '[' ? peer + 1 : peer;
    size_t n = strcspn(ip, peer[0] == '[' ? "]" : ":");
    char text[INET6_ADDRSTRLEN + 1];
    struct in_addr v4;
    struct in6_addr v6;
    if (n >= sizeof(text)) {
        snprintf(out, outsz, "addr:%.*s", (int)n, ip);
        return;
    }
    memcpy(text, ip, n);
    text[n] = '\0';
    if (inet_pton(AF_INET, text, &v4) == 1) {
        adm_v4_key((const unsigned char *)&v4.s_addr, out, outsz);
    } else if (inet_pton(AF_INET6, text, &v6) != 1) {
        snprintf(out, outsz, "addr:%s", text); /* not an address: only itself */
    } else if (IN6_IS_ADDR_LOOPBACK(&v6)) {
        snprintf(out, outsz, "addr:loopback");
    } else if (IN6_IS_ADDR_V4MAPPED(&v6)) {
        adm_v4_key(v6.s6_addr + 12, out, outsz);
    } else { /* a host chooses its interface id freely: one peer per /64 */
        char prefix[INET6_ADDRSTRLEN];
        memset(v6.s6_addr + 8, 0, 8);
        if (inet_ntop(AF_INET6, &v6, prefix, sizeof(prefix)))
            snprintf(out, outsz, "addr:%s/64", prefix);
        else
            snprintf(out, outsz, "addr:%s", text);
    }
}

const char *adm_verdict_str(adm_verdict v)
{
    switch (v) {
    case ADM_NONE:
        return "none";
    case ADM_PENDING:
        return "pending";
    case ADM_REFUSE:
        return "refuse";
    case ADM_DROP:
        return "drop";
    }
    return "unknown";
}
