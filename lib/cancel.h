/*
 * cancel: Waypoint's own cancel keys (spec 7.4).
 *
 * Each client gets a BackendKeyData with its backend's real pid (drivers compare it with
 * pg_backend_pid(), NotificationResponse and pg_stat_activity, and pass it to
 * pg_terminate_backend) and a random 4-byte secret Waypoint issues to this client alone;
 * the map remembers which backend key the pair stands for, and who owns it. A
 * CancelRequest is honoured only when (pid, secret) match a live entry and it comes from
 * the same Tailscale identity (login + node stable ID) as the session, so a leaked key is
 * useless to anyone else on the tailnet, and the key an earlier client of a reused
 * backend was given is gone with that client's entry.
 */
#ifndef WP_CANCEL_H
#define WP_CANCEL_H

#include <stddef.h>
#include <stdint.h>

#include "pgwire.h"
#include "wp_error.h"

#define CANCEL_KEY_LEN 4
#define CANCEL_HOST_MAX 256
#define CANCEL_OWNER_MAX 256

typedef struct cancel_target {
    uint32_t backend_pid;
    unsigned char backend_key[PGW_CANCEL_KEY_MAX];
    size_t backend_key_len;
    char host[CANCEL_HOST_MAX]; /* backend address the session is connected to */
    int port;
    char login[CANCEL_OWNER_MAX];   /* owner: UserProfile.LoginName */
    char node_id[CANCEL_OWNER_MAX]; /* owner: Node.StableID */
} cancel_target;

typedef struct cancel_map cancel_map;

cancel_map *cancel_map_new(void);
void cancel_map_free(cancel_map *m);
size_t cancel_map_size(cancel_map *m);

/* Stores t under (t->backend_pid, a fresh random secret) that no live entry uses; the pid
 * and key are what the client is told in its BackendKeyData. */
wp_status cancel_register(cancel_map *m, const cancel_target *t, unsigned char key[CANCEL_KEY_LEN]);
void cancel_unregister(cancel_map *m, uint32_t pid, const unsigned char key[CANCEL_KEY_LEN]);

/* Copies the entry for (pid, key) into *out when the key matches (constant-time) and the
 * owner is (login, node_id). WP_ERR_NOT_FOUND otherwise, with no hint as to why. */
wp_status cancel_lookup(cancel_map *m, uint32_t pid, const unsigned char *key, size_t key_len,
                        const char *login, const char *node_id, cancel_target *out);

#endif
