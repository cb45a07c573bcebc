/*
 * pgcluster: wraps test/support/pgcluster.sh so C tests get a cluster with one call.
 * All output parsing is done on the helper's cluster.env lines (KEY=value).
 */
#include "pgcluster.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef WP_SOURCE_DIR
#error "WP_SOURCE_DIR must be defined by the build"
#endif

static const char *helper(void)
{
    return WP_SOURCE_DIR "/test/support/pgcluster.sh";
}

int pgc_start(pgc_cluster *c, const char *auth, const char *pwenc, const char *extra_conf)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->root, sizeof(c->root), "/tmp/wp-itest.XXXXXX");
    if (!mkdtemp(c->root)) {
        perror("mkdtemp");
        return -1;
    }
    snprintf(c->dir, sizeof(c->dir), "%s/pg", c->root);

    char cmd[4096];
    int n = snprintf(cmd, sizeof(cmd), "'%s' start '%s' --auth '%s' --pwenc '%s' --owner-pid %ld",
                     helper(), c->dir, auth, pwenc, (long)getpid());
    if (extra_conf) {
        const char *p = extra_conf;
        while (*p && n > 0 && (size_t)n < sizeof(cmd) - 64) {
            const char *nl = strchr(p, '\n');
            size_t len = nl ? (size_t)(nl - p) : strlen(p);
            if (len > 0)
                n += snprintf(cmd + n, sizeof(cmd) - (size_t)n, " --set \"%.*s\"", (int)len, p);
            p += len + (nl ? 1 : 0);
        }
    }
    FILE *f = popen(cmd, "r");
    if (!f)
        return -1;
    char line[512];
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = '\0';
        char *eq = strchr(line, '=');
        if (!eq)
            continue;
        *eq = '\0';
        const char *v = eq + 1;
        if (strcmp(line, "PORT") == 0)
            c->port = atoi(v);
        else if (strcmp(line, "HOST") == 0)
            snprintf(c->host, sizeof(c->host), "%s", v);
        else if (strcmp(line, "ADMIN_USER") == 0)
            snprintf(c->admin_user, sizeof(c->admin_user), "%s", v);
        else if (strcmp(line, "ADMIN_PASSWORD") == 0)
            snprintf(c->admin_password, sizeof(c->admin_password), "%s", v);
        else if (strcmp(line, "TEST_DB") == 0)
            snprintf(c->test_db, sizeof(c->test_db), "%s", v);
        else if (strcmp(line, "PG_MAJOR") == 0)
            c->major = atoi(v);
        else if (strcmp(line, "BINDIR") == 0)
            snprintf(c->bindir, sizeof(c->bindir), "%s", v);
    }
    int rc = pclose(f);
    if (rc != 0 || c->port == 0 || c->major == 0) {
        fprintf(stderr, "pgcluster: start failed (rc=%d)\n", rc);
        return -1;
    }
    return 0;
}

void pgc_stop(pgc_cluster *c)
{
    if (c->root[0] == '\0')
        return;
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "'%s' stop '%s'; rm -rf '%s'", helper(), c->dir, c->root);
    if (system(cmd) != 0)
        fprintf(stderr, "pgcluster: stop of %s reported an error\n", c->dir);
    c->root[0] = '\0';
}

static PGconn *connect_kv(const char *const *keys, const char *const *vals, char *state_out)
{
    PGconn *conn = PQconnectdbParams(keys, vals, 0);
    if (conn && PQstatus(conn) == CONNECTION_OK) {
        if (state_out)
            strcpy(state_out, "00000");
        return conn;
    }
    if (state_out) {
        /* libpq keeps the server's ErrorResponse only in the message text; the SQLSTATE
         * of a failed login is available through PQresultErrorField on no result, so
         * derive it from the well-known messages instead. */
        const char *msg = conn ? PQerrorMessage(conn) : "";
        if (strstr(msg, "password authentication failed"))
            strcpy(state_out, "28P01");
        else if (strstr(msg, "does not exist") && strstr(msg, "database"))
            strcpy(state_out, "3D000");
        else if (strstr(msg, "permission denied"))
            strcpy(state_out, "42501");
        else
            strcpy(state_out, "28000");
    }
    PQfinish(conn);
    return NULL;
}

PGconn *pgc_connect_as(const pgc_cluster *c, const char *dbname, const char *user,
                       const char *password, char *sqlstate_out)
{
    char port[16];
    snprintf(port, sizeof(port), "%d", c->port);
    const char *keys[] = {"host",     "port",    "dbname",          "user",
                          "password", "sslmode", "connect_timeout", NULL};
    const char *vals[] = {c->host,   port, dbname, user, password ? password : "",
                          "disable", "10", NULL};
    return connect_kv(keys, vals, sqlstate_out);
}

PGconn *pgc_connect_admin(const pgc_cluster *c, const char *dbname)
{
    return pgc_connect_as(c, dbname, c->admin_user, c->admin_password, NULL);
}

PGconn *pgc_connect_super(const pgc_cluster *c, const char *dbname)
{
    char port[16];
    snprintf(port, sizeof(port), "%d", c->port);
    const char *keys[] = {"host", "port", "dbname", "user", NULL};
    const char *vals[] = {c->dir, port, dbname, "postgres", NULL};
    return connect_kv(keys, vals, NULL);
}

int pgc_exec(PGconn *conn, const char *sql)
{
    PGresult *r = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(r);
    int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok)
        fprintf(stderr, "pgc_exec(%s): %s", sql, PQerrorMessage(conn));
    PQclear(r);
    return ok ? 0 : -1;
}

void pgc_exec_state(PGconn *conn, const char *sql, char out[6])
{
    PGresult *r = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        strcpy(out, "00000");
    } else {
        const char *s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        snprintf(out, 6, "%s", s ? s : "?????");
    }
    PQclear(r);
}

const char *pgc_server_log(const pgc_cluster *c, char *buf, unsigned long bufsz)
{
    snprintf(buf, bufsz, "%s/server.log", c->dir);
    return buf;
}
