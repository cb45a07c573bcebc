/*
 * waypoint: command-line entry point.
 *
 *   waypoint [-config PATH]                  run the proxy (default ./waypoint.toml)
 *   waypoint -check-config [-config PATH]    validate, print the effective config
 *   waypoint -version | -help
 *   waypoint sessions | kill ...              talk to a running Waypoint (admin_cli.c)
 *
 * Flags follow Go's flag package, as the tsnet edition does: one or two leading dashes,
 * and a value either as the next argument or after '='. main() only parses flags and
 * loads the configuration; everything that runs lives behind srv_run() (server.h).
 * In run mode, diagnostics are log lines (key=value, like everything else the daemon
 * writes); in -check-config mode they are plain lines for a human.
 */
#include "admin_cli.h"
#include "config.h"
#include "log.h"
#include "server.h"
#include "tls.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define DEFAULT_CONFIG "waypoint.toml"

typedef struct cli {
    const char *config;
    bool check;
    bool version;
    bool help;
} cli;

static void usage(FILE *out)
{
    fputs("usage: waypoint [-config PATH]\n"
          "       waypoint -check-config [-config PATH]\n"
          "       waypoint -version\n"
          "       waypoint sessions [-fleet] [-config PATH | -socket PATH] [-json]\n"
          "       waypoint kill (-login LOGIN | -session ID) [-config PATH | -socket PATH] "
          "[-json]\n"
          "       waypoint kill -fleet -login LOGIN [-config PATH | -socket PATH] [-json]\n"
          "\n"
          "  -config PATH    configuration file (default ./" DEFAULT_CONFIG ")\n"
          "  -check-config   validate the configuration, print it with secrets masked,\n"
          "                  and exit 0 (valid) or 1 (errors on stderr)\n"
          "  -version        print the version and exit\n"
          "  -h, -help       print this help and exit\n"
          "Flags may also be written with two dashes, and values as -config=PATH.\n",
          out);
}

/* Returns 0 on success, -1 on a usage error (already reported). */
static int parse_args(int argc, char **argv, cli *c)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' || a[1] == '\0') {
            fprintf(stderr, "waypoint: unexpected argument '%s'\n", a);
            return -1;
        }
        a += (a[1] == '-') ? 2 : 1;
        const char *eq = strchr(a, '=');
        size_t n = eq ? (size_t)(eq - a) : strlen(a);
        if (n == 6 && strncmp(a, "config", n) == 0) {
            if (eq) {
                c->config = eq + 1;
            } else if (i + 1 < argc) {
                c->config = argv[++i];
            } else {
                fprintf(stderr, "waypoint: flag needs an argument: -config\n");
                return -1;
            }
            if (!*c->config) {
                fprintf(stderr, "waypoint: -config needs a non-empty path\n");
                return -1;
            }
        } else if (!eq && strcmp(a, "check-config") == 0) {
            c->check = true;
        } else if (!eq && strcmp(a, "version") == 0) {
            c->version = true;
        } else if (!eq && (strcmp(a, "h") == 0 || strcmp(a, "help") == 0)) {
            c->help = true;
        } else {
            fprintf(stderr, "waypoint: flag provided but not defined: %s\n", argv[i]);
            return -1;
        }
    }
    return 0;
}

static int check_config(const char *path)
{
    cfg_diag diag = {0};
    wp_config *cfg = cfg_load(path, &diag);
    for (size_t i = 0; i < diag.nwarnings; i++)
        fprintf(stderr, "warning: %s\n", diag.warnings[i]);
    for (size_t i = 0; i < diag.nerrors; i++)
        fprintf(stderr, "%s\n", diag.errors[i]);
    cfg_diag_free(&diag);
    if (!cfg) {
        fprintf(stderr, "%s: configuration is invalid\n", path);
        return 1;
    }
    cfg_print(cfg, stdout);
    cfg_unref(cfg);
    return fflush(stdout) == 0 ? 0 : 1;
}

static int run(const char *path)
{
    wp_config *cfg = cfg_load_logged(path);
    if (!cfg) {
        log_kv(WP_LOG_ERROR, "startup_failed", "config", path, "reason", "invalid configuration",
               (char *)NULL);
        return 1;
    }
    int level = log_level_parse(cfg->log_level);
    if (level >= 0)
        log_set_level((wp_log_level)level);
    return srv_run(path, cfg);
}

int main(int argc, char **argv)
{
    if (argc > 1 && (strcmp(argv[1], "sessions") == 0 || strcmp(argv[1], "kill") == 0))
        return admin_cli_main(argc - 1, argv + 1);
    cli c = {.config = DEFAULT_CONFIG};
    if (parse_args(argc, argv, &c) < 0) {
        usage(stderr);
        return 2;
    }
    if (c.help) {
        usage(stdout);
        return 0;
    }
    if (c.version) {
        printf("waypoint %s, %s\n", WP_VERSION, tls_library());
        return 0;
    }
    return c.check ? check_config(c.config) : run(c.config);
}
