/*
 * fleet: several Waypoint instances acting as one through a shared Redis/Valkey
 * ([redis] in the config): fleet-wide per-user connection limits, a heartbeat record
 * per live instance, and the fleet-wide `waypoint sessions -fleet` / `kill -fleet`.
 *
 * One fleet per process (NULL without [redis]: everything stays per instance). Workers
 * call fleet_acquire_send/_recv and fleet_release around a session; the heartbeat thread keeps this
 * instance's record and counts alive in Redis; the control thread answers fleet-wide
 * admin requests published by any instance. See lib/fleet.c for the key layout.
 */
#ifndef WP_FLEET_H
#define WP_FLEET_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "obs.h"
#include "redis.h"

typedef struct fleet fleet;

typedef enum {
    FLEET_OK = 0,      /* counted */
    FLEET_OVER,        /* the limit is reached fleet-wide: refuse with 53300 */
    FLEET_UNAVAILABLE, /* no decision possible (Redis unreachable): refuse, fail closed */
} fleet_verdict;

const char *fleet_verdict_str(fleet_verdict v);

/* SQLSTATE and message sent when Redis cannot decide a limit (docs/operations.md). */
#define FLEET_UNAVAILABLE_SQLSTATE "57P03" /* cannot_connect_now: try again later */
#define FLEET_UNAVAILABLE_MESSAGE                                                                  \
    "cannot check the connection limit: the fleet's shared state (Redis) is unreachable"

/* NULL when cfg has no [redis] (not an error) or on failure (err set). Nothing connects
 * yet: a Redis that is down at start only means refusals until it is up. */
fleet *fleet_new(const wp_config *cfg, obs *o, wp_error *err);
/* Starts the heartbeat and control threads. */
wp_status fleet_start(fleet *f, wp_error *err);
/* Stops the threads and removes this instance's record (best effort). */
void fleet_stop(fleet *f);
void fleet_free(fleet *f);

/* Counts one more connection of user (a login, or a tagged node's stable id) unless the
 * fleet-wide count has reached max (0 = unlimited: counted, and admitted even while
 * Redis is unreachable), in two halves so that a connect can do other work (its reuse
 * check) while Redis answers: fleet_acquire_send writes the script and returns; exactly
 * one fleet_acquire_recv must follow, which gives the verdict. *count: the fleet-wide
 * count seen (after counting when OK). */
typedef struct fleet_acq {
    char *user, *ukey;
    int64_t max;
    char maxs[24], ttls[24];
    int marked; /* the user is marked in flight (recv clears it) */
    rds_call call;
    rds_err kind;
    char err[256];
} fleet_acq;
void fleet_acquire_send(fleet *f, const char *user, int64_t max, fleet_acq *a);
fleet_verdict fleet_acquire_recv(fleet *f, fleet_acq *a, int64_t *count);
void fleet_release(fleet *f, const char *user);

/* The admin socket's fleet-wide requests ({"cmd":"sessions"|"kill", "fleet":true, ...}):
 * the reply (new reference). f NULL: an error reply saying [redis] is not configured. */
json_t *fleet_admin(fleet *f, const json_t *req);

const char *fleet_instance_id(const fleet *f);

/* Key naming, exposed for tests: prefix + kind [+ ":" + name], e.g. "waypoint:user:a@b".
 * Returns the length, or -1 when it does not fit in outsz. */
int fleet_key(char *out, size_t outsz, const char *prefix, const char *kind, const char *name);

#endif
