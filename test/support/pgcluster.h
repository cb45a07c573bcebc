/*
 * pgcluster: C side of test/support/pgcluster.sh for integration tests.
 *
 * pgc_start() makes a throwaway cluster in a fresh temp dir on a free port; the shell
 * helper's reaper stops it when this test process exits, so a crashing test still
 * cleans up. pgc_stop() stops it eagerly (call it from a cmocka group teardown).
 */
#ifndef WP_TEST_PGCLUSTER_H
#define WP_TEST_PGCLUSTER_H

#include <libpq-fe.h>

typedef struct pgc_cluster {
    char root[256]; /* temp dir owned by the test */
    char dir[300];  /* cluster dir (data, socket, logs) */
    int port;
    char host[64];
    char admin_user[64];
    char admin_password[64];
    char test_db[64];
    int major;        /* server major version (14..18), from the harness's PG_MAJOR */
    char bindir[256]; /* the server's bin dir (WP_PG_BIN, or Debian's) */
} pgc_cluster;

/* auth: trust | password | md5 | scram-sha-256; pwenc: scram-sha-256 | md5;
 * extra: NULL or one or more "--set" style postgresql.conf lines separated by '\n'.
 * Returns 0 on success. */
int pgc_start(pgc_cluster *c, const char *auth, const char *pwenc, const char *extra_conf);
void pgc_stop(pgc_cluster *c);

/* Connections over TCP as the admin role, and over the unix socket as superuser. */
PGconn *pgc_connect_admin(const pgc_cluster *c, const char *dbname);
PGconn *pgc_connect_super(const pgc_cluster *c, const char *dbname);
/* Connects over TCP as user/password (password may be NULL). Returns NULL and copies the
 * server's SQLSTATE into sqlstate_out (6 bytes) when the login fails. */
PGconn *pgc_connect_as(const pgc_cluster *c, const char *dbname, const char *user,
                       const char *password, char *sqlstate_out);
/* Runs SQL, returns 0 on success (prints the error otherwise). */
int pgc_exec(PGconn *conn, const char *sql);
/* Runs SQL and returns the SQLSTATE ("00000" on success) in out[6]. */
void pgc_exec_state(PGconn *conn, const char *sql, char out[6]);
/* Path of the server log (for "no password in the log" checks). */
const char *pgc_server_log(const pgc_cluster *c, char *buf, unsigned long bufsz);

#endif
