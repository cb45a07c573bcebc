/*
 * admin_cli: the `waypoint sessions` and `waypoint kill` subcommands.
 *
 *   waypoint sessions [-fleet] [-config PATH | -socket PATH] [-json]
 *   waypoint kill (-login LOGIN | -session ID) [-config PATH | -socket PATH] [-json]
 *   waypoint kill -fleet -login LOGIN [-config PATH | -socket PATH] [-json]
 *
 * They talk to a running Waypoint over its admin socket ([admin] socket in the config,
 * or -socket). Flags are Go-style like the daemon's (one or two dashes, value as the
 * next argument or after '='). -fleet asks every instance sharing the [redis] (lib/fleet.c)
 * through the local one. Exit status: 0 done, 1 the request failed (no socket, an error
 * answer, kill matched no session, or a live instance did not answer), 2 usage error.
 *
 * Only [admin] socket is read from the config (cfg_admin_socket): an operator's shell
 * need not hold the secrets the daemon's ${VAR}s expand to. The table prints values a
 * node's owner chooses (its name), so control characters are escaped before they reach
 * the terminal; -json prints the daemon's answer as is (JSON escapes them itself).
 */
#include "admin_cli.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "config.h"

typedef struct admin_cli {
    const char *config, *socket, *login, *session;
    bool json, fleet;
} admin_cli;

static void admin_usage(FILE *out)
{
    fputs("usage: waypoint sessions [-fleet] [-config PATH | -socket PATH] [-json]\n"
          "       waypoint kill (-login LOGIN | -session ID) [-config PATH | -socket PATH] "
          "[-json]\n"
          "       waypoint kill -fleet -login LOGIN [-config PATH | -socket PATH] [-json]\n"
          "  -fleet         every instance sharing this one's [redis], not only this one\n"
          "  -socket PATH   the admin socket (default: [admin] socket of the config file)\n"
          "  -config PATH   configuration file to read [admin] socket from "
          "(default ./waypoint.toml)\n"
          "  -json          print the daemon's JSON answer\n",
          out);
}

static int admin_flag(int argc, char **argv, int *i, const char *name, const char **dst)
{
    const char *a = argv[*i] + (argv[*i][1] == '-' ? 2 : 1);
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0 || (a[n] != '\0' && a[n] != '='))
        return 0;
    if (a[n] == '=')
        *dst = a + n + 1;
    else if (*i + 1 < argc)
        *dst = argv[++*i];
    else
        return -1;
    return **dst ? 1 : -1;
}

static int admin_parse(int argc, char **argv, bool kill, admin_cli *c)
{
    for (int i = 1; i < argc; i++) {
        int r = 0;
        if (argv[i][0] != '-') {
            fprintf(stderr, "waypoint: unexpected argument '%s'\n", argv[i]);
            return -1;
        }
        const char *a = argv[i] + (argv[i][1] == '-' ? 2 : 1);
        if (strcmp(a, "json") == 0 || strcmp(a, "fleet") == 0) {
            *(strcmp(a, "json") == 0 ? &c->json : &c->fleet) = true;
            continue;
        }
        if ((r = admin_flag(argc, argv, &i, "config", &c->config)) == 0 &&
            (r = admin_flag(argc, argv, &i, "socket", &c->socket)) == 0 && kill &&
            (r = admin_flag(argc, argv, &i, "login", &c->login)) == 0)
            r = admin_flag(argc, argv, &i, "session", &c->session);
        if (r == 0) {
            fprintf(stderr, "waypoint: flag provided but not defined: %s\n", argv[i]);
            return -1;
        }
        if (r < 0) {
            fprintf(stderr, "waypoint: flag needs a non-empty argument: %s\n", argv[i]);
            return -1;
        }
    }
    if (kill && (!c->login) == (!c->session)) {
        fprintf(stderr, "waypoint kill: give exactly one of -login or -session\n");
        return -1;
    }
    if (kill && c->fleet && c->session) {
        fprintf(stderr, "waypoint kill -fleet: session ids are per instance; use -login\n");
        return -1;
    }
    return 0;
}

/* The socket path: -socket, else [admin] socket from the config file. */
static char *admin_socket_path(const admin_cli *c)
{
    if (c->socket)
        return strdup(c->socket);
    cfg_diag diag = {0};
    char *p = NULL;
    int rc = cfg_admin_socket(c->config, &p, &diag);
    for (size_t i = 0; rc != 0 && i < diag.nerrors; i++)
        fprintf(stderr, "%s\n", diag.errors[i]);
    cfg_diag_free(&diag);
    if (rc != 0) {
        fprintf(stderr, "waypoint: cannot read the admin socket path from %s (use -socket)\n",
                c->config);
        return NULL;
    }
    if (!p)
        fprintf(stderr, "waypoint: %s has no [admin] socket; set it (and restart) or use -socket\n",
                c->config);
    return p;
}

static const char *jstr(const json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return v && *v ? v : "-";
}

/* v with what a terminal would act on made visible: C0 controls and DEL as \n, \r, \t or
 * \xNN, C1 controls (U+0080..U+009F, UTF-8 C2 80..C2 9F) as \u00NN, a backslash as \\
 * (so an escape in the output always means one). Writes at most outsz - 1 bytes; a value
 * cut short ends in "...". */
static const char *term_safe(const char *v, char *out, size_t outsz)
{
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        char esc[8];
        size_t n;
        if (*p == '\\')
            n = (size_t)snprintf(esc, sizeof(esc), "\\\\");
        else if (*p == '\n' || *p == '\r' || *p == '\t')
            n = (size_t)snprintf(esc, sizeof(esc), "\\%c",
                                 *p == '\n'   ? 'n'
                                 : *p == '\r' ? 'r'
                                              : 't');
        else if (*p < 0x20 || *p == 0x7f)
            n = (size_t)snprintf(esc, sizeof(esc), "\\x%02x", *p);
        else if (*p == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f)
            n = (size_t)snprintf(esc, sizeof(esc), "\\u%04x", *++p);
        else
            esc[0] = (char)*p, n = 1;
        if (o + n + 4 > outsz) {
            snprintf(out + o, outsz - o, "...");
            return out;
        }
        memcpy(out + o, esc, n);
        o += n;
    }
    out[o] = '\0';
    return out;
}

/* jstr() made safe for a terminal, in buf. */
#define TSTR(o, k, buf) term_safe(jstr(o, k), buf, sizeof(buf))

/* The instance column of a fleet listing (empty for a local one). */
static void print_instance(const json_t *e, bool all)
{
    char buf[256];
    if (all)
        printf("%-36s ", TSTR(e, "instance", buf));
}

static void print_sessions(const json_t *list, bool all)
{
    if (all)
        printf("%-36s ", "INSTANCE");
    printf("%-6s %-28s %-30s %-28s %-14s %-24s %-3s %-20s %10s %10s %s\n", "ID", "LOGIN", "NODE",
           "ROLE", "DATABASE", "PRESETS", "TLS", "SINCE", "BYTES_IN", "BYTES_OUT", "STATE");
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e)
    {
        char login[1024], node[1024], role[256], db[512], presets[1024], since[64], st[64];
        print_instance(e, all);
        printf(
            "%-6lld %-28s %-30s %-28s %-14s %-24s %-3s %-20s %10lld %10lld %s\n",
            (long long)json_integer_value(json_object_get(e, "id")), TSTR(e, "login", login),
            TSTR(e, "node", node), TSTR(e, "role", role), TSTR(e, "database", db),
            TSTR(e, "presets", presets), json_is_true(json_object_get(e, "tls")) ? "yes" : "no",
            TSTR(e, "since", since), (long long)json_integer_value(json_object_get(e, "bytes_in")),
            (long long)json_integer_value(json_object_get(e, "bytes_out")), TSTR(e, "state", st));
    }
}

/* Live instances that did not answer a fleet request: named on stderr. */
static size_t fleet_unanswered(const json_t *reply)
{
    size_t i, n = 0;
    json_t *e;
    json_array_foreach(json_object_get(reply, "instances"), i, e)
    {
        if (!json_is_false(json_object_get(e, "answered")))
            continue;
        fprintf(stderr, "waypoint: instance %s (host %s) is alive but did not answer\n",
                jstr(e, "instance"), jstr(e, "host"));
        n++;
    }
    return n;
}

static json_t *admin_request(const admin_cli *c, bool kill)
{
    if (!kill)
        return json_pack("{s:s,s:b}", "cmd", "sessions", "fleet", c->fleet);
    if (c->login)
        return json_pack("{s:s,s:s,s:b}", "cmd", "kill", "login", c->login, "fleet", c->fleet);
    char *end = NULL;
    long long id = strtoll(c->session, &end, 10);
    if (!end || *end || id <= 0) {
        fprintf(stderr, "waypoint kill: -session must be a positive session id (got '%s')\n",
                c->session);
        return NULL;
    }
    return json_pack("{s:s,s:I}", "cmd", "kill", "session", (json_int_t)id);
}

static int admin_report(const admin_cli *c, bool kill, json_t *reply)
{
    if (c->json) {
        char *s = json_dumps(reply, JSON_INDENT(2));
        if (s)
            puts(s);
        free(s);
    }
    if (!json_is_true(json_object_get(reply, "ok"))) {
        char why[1024];
        fprintf(stderr, "waypoint: %s\n", TSTR(reply, "error", why));
        return 1;
    }
    size_t missing = c->fleet ? fleet_unanswered(reply) : 0;
    if (!kill) {
        if (!c->json)
            print_sessions(json_object_get(reply, "sessions"), c->fleet);
        if (!c->json && c->fleet)
            printf("%zu instance(s) in the fleet\n",
                   json_array_size(json_object_get(reply, "instances")));
        return missing ? 1 : 0;
    }
    size_t n = json_array_size(json_object_get(reply, "killed"));
    long long left = (long long)json_integer_value(json_object_get(reply, "still_open"));
    if (!c->json)
        printf("ended %zu session(s)%s\n", n - (size_t)left, left ? ", some still closing" : "");
    if (n == 0)
        fprintf(stderr, "waypoint kill: no matching session\n");
    return n == 0 || left > 0 || missing ? 1 : 0;
}

int admin_cli_main(int argc, char **argv)
{
    bool kill = strcmp(argv[0], "kill") == 0;
    admin_cli c = {.config = "waypoint.toml"};
    if (admin_parse(argc, argv, kill, &c) != 0) {
        admin_usage(stderr);
        return 2;
    }
    char *path = admin_socket_path(&c);
    json_t *req = path ? admin_request(&c, kill) : NULL;
    if (!req) {
        free(path);
        return path ? 2 : 1;
    }
    json_t *reply = NULL;
    char err[512];
    wp_status st = admin_call(path, req, &reply, err, sizeof(err));
    json_decref(req);
    free(path);
    if (st != WP_OK) {
        fprintf(stderr, "waypoint: %s\n", err);
        return 1;
    }
    int rc = admin_report(&c, kill, reply);
    json_decref(reply);
    return rc;
}
