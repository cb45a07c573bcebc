/*
 * redis: a small locked pool of blocking hiredis connections to the [redis] server, with
 * the metrics every round trip feeds (latency by command, errors by kind).
 *
 * Used by the fleet module (lib/fleet.c) for shared per-user limits, heartbeats and the
 * fleet-wide admin commands. A caller borrows a connection, runs one command (usually a
 * Lua script through rds_eval) and returns it; a connection that failed in any way is
 * closed instead of returned, so the next borrower reconnects. Nothing here retries:
 * the caller decides what a failure means (fail closed at connect, try again at the next
 * heartbeat).
 */
#ifndef WP_REDIS_H
#define WP_REDIS_H

#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>

#include "obs.h"

/* What kind of failure a round trip had: the label of waypoint_redis_errors_total. */
typedef enum {
    RDS_OK = 0,
    RDS_ERR_CONNECT,     /* TCP/unix connect failed or timed out */
    RDS_ERR_AUTH,        /* AUTH or SELECT refused */
    RDS_ERR_TIMEOUT,     /* no answer within command_timeout */
    RDS_ERR_IO,          /* connection lost (reset, EOF) */
    RDS_ERR_REPLY,       /* Redis answered with an error (script error, wrong type, ...) */
    RDS_ERR_UNAVAILABLE, /* it answered that it cannot serve: READONLY (a replica, e.g.
                          * after a failover), LOADING, MASTERDOWN, NOAUTH, BUSY */
    RDS_ERR_PROTOCOL,
    RDS_ERR_NOMEM,
    RDS_ERR_COUNT
} rds_err;

const char *rds_err_str(rds_err e);

/* Connection settings (copied by rds_pool_new; the password is wiped on free). */
typedef struct rds_settings {
    const char *address;  /* "host:port", "[v6]:port" or "/path/to/redis.sock" */
    const char *username; /* NULL: AUTH with the password only */
    const char *password; /* NULL: no AUTH */
    int64_t db;
    int64_t connect_timeout_ms;
    int64_t command_timeout_ms;
    int64_t pool_size;
} rds_settings;

typedef struct rds_pool rds_pool;

/* Parses an address into host + port or a unix path (host NULL, port 0, *unix_path set).
 * Returns 0, or -1 with a reason in err. Pure: exposed for unit tests. */
int rds_parse_address(const char *address, char *host, size_t hostsz, int *port, int *is_unix,
                      char *err, size_t errsz);

/* o may be NULL (no metrics). NULL when memory ran out or the address is malformed. */
rds_pool *rds_pool_new(const rds_settings *s, obs *o);
void rds_pool_free(rds_pool *p);

/* A fresh connection outside the pool (authenticated, db selected), for a subscriber.
 * command_timeout applies unless no_timeout. NULL with *kind and err set on failure. */
redisContext *rds_connect(rds_pool *p, int no_timeout, rds_err *kind, char *err, size_t errsz);

/* One command on a pooled connection: argv/lens as redisCommandArgv. Returns the reply
 * (caller frees with freeReplyObject) or NULL with *kind set. An error reply is returned
 * as NULL with RDS_ERR_REPLY and its text in err. what is the latency-metric label. */
redisReply *rds_command(rds_pool *p, const char *what, int argc, const char **argv,
                        const size_t *lens, rds_err *kind, char *err, size_t errsz);

/* A Lua script: EVALSHA with the script's SHA1, EVAL when Redis answers NOSCRIPT (a
 * restarted or flushed Redis forgot it). keys and args are NUL-terminated strings. */
typedef struct rds_script {
    const char *name; /* the latency-metric label */
    const char *body;
    char sha[41]; /* filled by rds_script_init */
} rds_script;

int rds_script_init(rds_script *sc);
redisReply *rds_eval(rds_pool *p, const rds_script *sc, int nkeys, const char *const *keys,
                     int nargs, const char *const *args, rds_err *kind, char *err, size_t errsz);

/* rds_eval in two halves, for a caller with other work to do while Redis answers:
 * rds_eval_send borrows a connection and writes the script on it (0), or fails (-1,
 * *kind and err set, nothing borrowed); rds_eval_recv must follow either way, with the
 * same script, keys and args: it reads the answer (or reports the send's failure, with
 * its metrics), gives the connection back and returns as rds_eval does. */
typedef struct rds_call {
    redisContext *c; /* borrowed while a command is in flight */
    int64_t t0;      /* when it was sent (the latency metric) */
    int deferred;    /* no connection was free: rds_eval_recv runs it whole (rds_eval) */
} rds_call;
int rds_eval_send(rds_pool *p, const rds_script *sc, int nkeys, const char *const *keys, int nargs,
                  const char *const *args, rds_call *call, rds_err *kind, char *err, size_t errsz);
redisReply *rds_eval_recv(rds_pool *p, const rds_script *sc, int nkeys, const char *const *keys,
                          int nargs, const char *const *args, rds_call *call, rds_err *kind,
                          char *err, size_t errsz);

/* Records a failure of kind seen outside rds_command (the subscriber connection). */
void rds_count_error(rds_pool *p, rds_err kind);
/* 1 after a successful round trip, 0 after a failed one: the waypoint_redis_up gauge. */
void rds_set_up(rds_pool *p, int up);

#endif
