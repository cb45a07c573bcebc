/*
 * cancel: Waypoint's own cancel keys (spec 7.4).
 *
 * Each client gets a BackendKeyData made up by Waypoint (random pid + random 4-byte
 * secret); the map remembers which backend process and key it stands for, and who owns
 * it. A CancelRequest is honoured only when its key matches and it comes from the same
 * Tailscale identity (login + node stable ID) as the session, so a leaked key is useless
 * to anyone else on the tailnet.
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

/* Stores t under a fresh random (pid, key) that no live entry uses; pid and key are what
 * the client is told in its BackendKeyData. */
wp_status cancel_register(cancel_map *m, const cancel_target *t, uint32_t *pid,
                          unsigned char key[CANCEL_KEY_LEN]);
void cancel_unregister(cancel_map *m, uint32_t pid);

/* Copies the entry for (pid, key) into *out when the key matches (constant-time) and the
 * owner is (login, node_id). WP_ERR_NOT_FOUND otherwise, with no hint as to why. */
wp_status cancel_lookup(cancel_map *m, uint32_t pid, const unsigned char *key, size_t key_len,
                        const char *login, const char *node_id, cancel_target *out);

#endif
