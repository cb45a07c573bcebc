/*
 * upstop: stop a relayed session's backend before its client is told (`waypoint kill`).
 */
#ifndef WP_UPSTOP_H
#define WP_UPSTOP_H

#include <stddef.h>
#include <stdint.h>

#include "pgwire.h"
#include "upstream.h"

typedef struct up_stop_target {
    const char *host;
    int port;
    uint32_t backend_pid;
    const unsigned char *backend_key;
    size_t backend_key_len;
} up_stop_target;

/* Cancels what runs, sends Terminate, waits for the backend to close (deadline_ms is
 * absolute, wp_now_ms). WP_OK once the backend has closed; WP_ERR_TIMEOUT otherwise. */
wp_status up_stop_backend(up_conn *up, const up_stop_target *t, int64_t deadline_ms);

#endif
