/*
 * test_config: the waypoint.toml loader (lib/config.c) and the waypoint CLI.
 *
 * Most tests build a config text in memory and load it with cfg_load_string(). Error
 * tests check the whole shape of the diagnostic: "t.toml:LINE: key 'K': problem", with
 * LINE found by searching the text so the tests do not depend on hand-counted lines.
 * The environment variables the tests set are prefixed WPT_ and are set and unset
 * inside each test; the process runs its tests one after another.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "config.h"
#include "tls.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define NAME "t.toml"

static const char *const base_listener = "[[listeners]]\n"
                                         "name = \"pg\"\n"
                                         "listen = \":5432\"\n"
                                         "mode = \"postgres\"\n"
                                         "backend = \"127.0.0.1:5433\"\n";
static const char *const base_pg = "[listeners.postgres]\n"
                                   "admin_user = \"adm\"\n"
                                   "admin_password = \"pw\"\n";

static bool sets_key(const char *text, const char *line)
{
    size_t klen = strcspn(line, " =");
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, line, klen) == 0 && p[klen] == ' ')
            return true;
    return false;
}

/* base (a template of lines) without the lines whose key extra sets, then extra. */
static void append_merged(FILE *f, const char *base, const char *extra)
{
    for (const char *p = base; *p;) {
        const char *nl = strchr(p, '\n');
        size_t n = (size_t)(nl - p) + 1;
        char line[256];
        snprintf(line, sizeof(line), "%.*s", (int)n, p);
        if (line[0] == '[' || !sets_key(extra, line))
            fputs(line, f);
        p += n;
    }
    fputs(extra, f);
}

/* pre + a listener (+ lextra) + its [listeners.postgres] (+ pgextra); a key set in an
 * extra replaces the base line of the same key. */
__attribute__((noinline)) static char *mk(const char *pre, const char *lextra, const char *pgextra)
{
    char *s = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&s, &len);
    assert_non_null(f);
    fputs(pre, f);
    append_merged(f, base_listener, lextra);
    append_merged(f, base_pg, pgextra);
    assert_int_equal(fclose(f), 0);
    return s;
}

/* Line number (1-based) of the first line containing needle. */
static int line_of(const char *text, const char *needle)
{
    const char *hit = strstr(text, needle);
    assert_non_null(hit);
    int line = 1;
    for (const char *p = text; p < hit; p++)
        line += (*p == '\n');
    return line;
}

static void dump(const cfg_diag *d)
{
    for (size_t i = 0; i < d->nerrors; i++)
        fprintf(stderr, "  error: %s\n", d->errors[i]);
    for (size_t i = 0; i < d->nwarnings; i++)
        fprintf(stderr, "  warning: %s\n", d->warnings[i]);
}

static wp_config *load_ok(const char *text)
{
    cfg_diag d = {0};
    wp_config *c = cfg_load_string(text, NAME, &d);
    if (!c || d.nerrors)
        dump(&d);
    assert_non_null(c);
    assert_int_equal(d.nerrors, 0);
    assert_int_equal(d.nwarnings, 0);
    cfg_diag_free(&d);
    return c;
}

static bool has_msg(char **msgs, size_t n, const char *prefix, const char *problem)
{
    for (size_t i = 0; i < n; i++)
        if (strncmp(msgs[i], prefix, strlen(prefix)) == 0 && strstr(msgs[i], problem))
            return true;
    return false;
}

/* Loading text must fail with an error "t.toml:LINE: key 'KEY': ...PROBLEM...". key may
 * be NULL for errors that are not about a key; line 0 means a file-level error. */
static void expect_err(const char *text, int line, const char *key, const char *problem)
{
    cfg_diag d = {0};
    char prefix[256];
    if (line == 0)
        snprintf(prefix, sizeof(prefix), "%s: ", NAME);
    else if (key)
        snprintf(prefix, sizeof(prefix), "%s:%d: key '%s': ", NAME, line, key);
    else
        snprintf(prefix, sizeof(prefix), "%s:%d: ", NAME, line);
    wp_config *c = cfg_load_string(text, NAME, &d);
    bool found = has_msg(d.errors, d.nerrors, prefix, problem);
    if (c || !found) {
        fprintf(stderr, "wanted error '%s...%s' in:\n%s\n", prefix, problem, text);
        dump(&d);
    }
    for (size_t i = 0; i < d.nerrors; i++)
        assert_null(strchr(d.errors[i], '\n'));
    assert_null(c);
    assert_true(found);
    cfg_diag_free(&d);
}

/* A listener key line replaced: expect an error on that line for that key. */
static void expect_lkey_err(const char *line_text, const char *key, const char *problem)
{
    char *t = mk("", line_text, "");
    expect_err(t, line_of(t, line_text), key, problem);
    free(t);
}

static void expect_pgkey_err(const char *line_text, const char *key, const char *problem)
{
    char *t = mk("", "", line_text);
    expect_err(t, line_of(t, line_text), key, problem);
    free(t);
}

static void expect_global_err(const char *section_and_line, const char *key, const char *problem)
{
    char *t = mk(section_and_line, "", "");
    const char *nl = strchr(section_and_line, '\n');
    expect_err(t, line_of(t, nl + 1), key, problem);
    free(t);
}

/* ---------------------------------------------------------------------------------- */

static const char spec_example[] =
    "[tailscale]\n"
    "socket = \"/var/run/tailscale/tailscaled.sock\"   # tailscaled LocalAPI socket\n"
    "capability = \"redo.com/cap/waypoint\"             # app capability name\n"
    "whois_timeout = \"2s\"\n"
    "\n"
    "[provisioning]\n"
    "allow_raw_sql = false\n"
    "\n"
    "[revalidation]\n"
    "interval = \"1m\"          # 0 disables\n"
    "\n"
    "[defaults.limits]\n"
    "max_conns_per_user = 0   # 0 = unlimited\n"
    "max_conn_duration = \"0\"\n"
    "max_bytes_per_conn = \"0\"\n"
    "\n"
    "[[listeners]]\n"
    "name = \"pg-main\"\n"
    "listen = \":5432\"\n"
    "mode = \"postgres\"\n"
    "backend = \"10.0.1.10:5432\"\n"
    "tls_mode = \"optional\"                 # off | optional | require\n"
    "use_tailscale_tls = true\n"
    "# cert_file = \"/etc/waypoint/server.crt\"\n"
    "# key_file = \"/etc/waypoint/server.key\"\n"
    "# backend_tls = \"prefer\"              # disable | prefer | require | verify-full\n"
    "# backend_ca_file = \"/etc/waypoint/backend-ca.pem\"\n"
    "\n"
    "[listeners.postgres]\n"
    "admin_user = \"waypoint_admin\"\n"
    "admin_password = \"${PG_ADMIN_PASSWORD}\"\n"
    "admin_database = \"postgres\"\n"
    "user_prefix = \"wp_\"\n"
    "user_ttl = \"24h\"\n"
    "# allow_raw_sql = true                # per-listener override\n";

static void test_spec_example(void **state)
{
    (void)state;
    setenv("PG_ADMIN_PASSWORD", "s3cret;#\"x", 1);
    wp_config *c = load_ok(spec_example);
    unsetenv("PG_ADMIN_PASSWORD");
    assert_string_equal(c->ts_socket, "/var/run/tailscale/tailscaled.sock");
    assert_string_equal(c->ts_capability, "redo.com/cap/waypoint");
    assert_int_equal(c->whois_timeout_ms, 2000);
    assert_false(c->allow_raw_sql);
    assert_int_equal(c->revalidation_interval_ms, 60000);
    assert_int_equal(c->default_limits.max_conns_per_user, 0);
    assert_int_equal(c->default_limits.max_conn_duration_ms, 0);
    assert_int_equal(c->default_limits.max_bytes_per_conn, 0);
    assert_int_equal(c->nlisteners, 1);
    cfg_listener *l = &c->listeners[0];
    assert_string_equal(l->name, "pg-main");
    assert_string_equal(l->listen_host, "");
    assert_int_equal(l->listen_port, 5432);
    assert_string_equal(l->mode, "postgres");
    assert_string_equal(l->backend_host, "10.0.1.10");
    assert_int_equal(l->backend_port, 5432);
    assert_int_equal(l->tls_mode, CFG_TLS_OPTIONAL);
    assert_true(l->use_tailscale_tls);
    assert_null(l->cert_file);
    assert_null(l->key_file);
    assert_int_equal(l->backend_tls, CFG_BTLS_PREFER);
    assert_null(l->backend_ca_file);
    assert_string_equal(l->admin_user, "waypoint_admin");
    assert_string_equal(l->admin_password, "s3cret;#\"x");
    assert_string_equal(l->admin_database, "postgres");
    assert_string_equal(l->user_prefix, "wp_");
    assert_int_equal(l->user_ttl_ms, 24 * 3600 * 1000);
    assert_int_equal(l->allow_raw_sql, -1);
    assert_false(cfg_listener_allow_raw_sql(c, l));
    assert_int_equal(l->line, 17);
    cfg_unref(c);
}

static void test_spec_example_missing_env(void **state)
{
    (void)state;
    unsetenv("PG_ADMIN_PASSWORD");
    expect_err(spec_example, 31, "admin_password",
               "environment variable 'PG_ADMIN_PASSWORD' is not set");
}

static void test_defaults(void **state)
{
    (void)state;
    char *t = mk("", "", "");
    wp_config *c = load_ok(t);
    free(t);
    assert_string_equal(c->path, NAME);
    assert_string_equal(c->ts_socket, "/var/run/tailscale/tailscaled.sock");
    assert_string_equal(c->ts_capability, "redo.com/cap/waypoint");
    assert_int_equal(c->whois_timeout_ms, 2000);
    assert_false(c->allow_raw_sql);
    assert_int_equal(c->cleanup_interval_ms, 10 * 60 * 1000);
    assert_int_equal(c->admin_idle_timeout_ms, 60 * 1000);
    assert_int_equal(c->revalidation_interval_ms, 60 * 1000);
    assert_int_equal(c->default_limits.max_conns_per_user, 0);
    assert_int_equal(c->startup_timeout_ms, 10000);
    assert_int_equal(c->drain_timeout_ms, 30000);
    assert_string_equal(c->log_level, "info");
    cfg_listener *l = &c->listeners[0];
    assert_int_equal(l->tls_mode, CFG_TLS_OPTIONAL);
    assert_true(l->use_tailscale_tls);
    assert_int_equal(l->backend_tls, CFG_BTLS_PREFER);
    assert_int_equal(l->max_connections, 1000);
    assert_int_equal(l->tls_ticket_lifetime_ms, 3600 * 1000);
    assert_int_equal(l->tls_session_cache_size, 1000);
    assert_int_equal(l->tls_max_version, CFG_TLSV_1_3);
    assert_int_equal(l->max_unstarted_per_peer, 64);
    assert_string_equal(l->admin_database, "postgres");
    assert_string_equal(l->user_prefix, "wp_");
    assert_int_equal(l->user_ttl_ms, 86400000);
    assert_int_equal(l->allow_raw_sql, -1);
    assert_string_equal(l->backend_host, "127.0.0.1");
    assert_int_equal(l->backend_port, 5433);
    cfg_unref(c);
}

static void test_every_key_set(void **state)
{
    (void)state;
    char *t = mk("[tailscale]\nsocket = \"/run/ts.sock\"\ncapability = \"example.com/cap/x\"\n"
                 "whois_timeout = \"500ms\"\n"
                 "[provisioning]\nallow_raw_sql = true\ncleanup_interval = \"0\"\n"
                 "admin_idle_timeout = \"90s\"\n"
                 "[revalidation]\ninterval = 0\n"
                 "[defaults.limits]\nmax_conns_per_user = 5\nmax_conn_duration = \"8h\"\n"
                 "max_bytes_per_conn = \"10GB\"\n"
                 "[server]\nstartup_timeout = \"5s\"\ndrain_timeout = \"1m30s\"\n"
                 "log_level = \"debug\"\n",
                 "tls_mode = \"require\"\nuse_tailscale_tls = false\n"
                 "cert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n"
                 "backend_tls = \"verify-full\"\nbackend_ca_file = \"/ca.pem\"\n"
                 "max_connections = 42\ntls_max_version = \"1.2\"\n",
                 "admin_database = \"appdb\"\nuser_prefix = \"_x1\"\nuser_ttl = \"1h30m\"\n"
                 "allow_raw_sql = false\n");
    wp_config *c = load_ok(t);
    free(t);
    assert_string_equal(c->ts_socket, "/run/ts.sock");
    assert_string_equal(c->ts_capability, "example.com/cap/x");
    assert_int_equal(c->whois_timeout_ms, 500);
    assert_true(c->allow_raw_sql);
    assert_int_equal(c->cleanup_interval_ms, 0);
    assert_int_equal(c->admin_idle_timeout_ms, 90000);
    assert_int_equal(c->revalidation_interval_ms, 0);
    assert_int_equal(c->default_limits.max_conns_per_user, 5);
    assert_int_equal(c->default_limits.max_conn_duration_ms, 8 * 3600000);
    assert_int_equal(c->default_limits.max_bytes_per_conn, 10LL << 30);
    assert_int_equal(c->startup_timeout_ms, 5000);
    assert_int_equal(c->drain_timeout_ms, 90000);
    assert_string_equal(c->log_level, "debug");
    cfg_listener *l = &c->listeners[0];
    assert_int_equal(l->tls_mode, CFG_TLS_REQUIRE);
    assert_int_equal(l->tls_max_version, CFG_TLSV_1_2);
    assert_false(l->use_tailscale_tls);
    assert_string_equal(l->cert_file, "/c.pem");
    assert_string_equal(l->key_file, "/k.pem");
    assert_int_equal(l->backend_tls, CFG_BTLS_VERIFY_FULL);
    assert_string_equal(l->backend_ca_file, "/ca.pem");
    assert_int_equal(l->max_connections, 42);
    assert_string_equal(l->admin_database, "appdb");
    assert_string_equal(l->user_prefix, "_x1");
    assert_int_equal(l->user_ttl_ms, 5400000);
    assert_int_equal(l->allow_raw_sql, 0);
    assert_false(cfg_listener_allow_raw_sql(c, l));
    cfg_unref(c);
}

static void test_durations(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int64_t ms;
    } good[] = {{"0", 0},           {"30s", 30000},        {"1m", 60000},     {"24h", 86400000},
                {"1h30m", 5400000}, {"500ms", 500},        {"1.5h", 5400000}, {"1m1h", 3660000},
                {"0s", 0},          {"2h45m10s", 9910000}, {"1s500ms", 1500}, {"0.25s", 250}};
    static const char *const bad[] = {"",
                                      "30",
                                      "s",
                                      "-1s",
                                      "1d",
                                      "1 h",
                                      "1h ",
                                      "1.h",
                                      ".5s",
                                      "1x",
                                      "h1",
                                      "1hh",
                                      "99999999999999999999h",
                                      "9223372036854775807h"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        int64_t ms = -1;
        assert_int_equal(cfg_parse_duration(good[i].s, &ms), 0);
        assert_int_equal(ms, good[i].ms);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int64_t ms = -7;
        assert_int_not_equal(cfg_parse_duration(bad[i], &ms), 0);
        assert_int_equal(ms, -7);
    }
}

static void test_sizes(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int64_t n;
    } good[] = {{"0", 0},      {"512MB", 512LL << 20}, {"10GB", 10LL << 30},
                {"1KB", 1024}, {"2TB", 2LL << 40},     {"100", 100},
                {"100B", 100}, {"3gb", 3LL << 30},     {"4MiB", 4LL << 20}};
    static const char *const bad[] = {"",      "MB",   "1.5GB", "-1",
                                      "10 GB", "10PB", "10XB",  "9999999999TB"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        int64_t n = -1;
        assert_int_equal(cfg_parse_size(good[i].s, &n), 0);
        assert_int_equal(n, good[i].n);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int64_t n = -7;
        assert_int_not_equal(cfg_parse_size(bad[i], &n), 0);
        assert_int_equal(n, -7);
    }
}

static void test_value_types(void **state)
{
    (void)state;
    expect_global_err("[tailscale]\nwhois_timeout = \"2\"\n", "whois_timeout",
                      "must be a duration");
    expect_global_err("[tailscale]\nwhois_timeout = 30s\n", "whois_timeout", "must be a duration");
    expect_global_err("[tailscale]\nwhois_timeout = \"0\"\n", "whois_timeout",
                      "must be greater than 0");
    expect_global_err("[provisioning]\nadmin_idle_timeout = \"0\"\n", "admin_idle_timeout",
                      "must be greater than 0");
    expect_global_err("[tailscale]\nsocket = /run/x\n", "socket",
                      "must be a quoted string (got '/run/x')");
    expect_global_err("[provisioning]\nallow_raw_sql = \"true\"\n", "allow_raw_sql",
                      "must be true or false");
    expect_global_err("[provisioning]\nallow_raw_sql = yes\n", "allow_raw_sql",
                      "must be true or false, unquoted (got 'yes')");
    expect_global_err("[defaults.limits]\nmax_conns_per_user = \"5\"\n", "max_conns_per_user",
                      "must be an unquoted integer");
    expect_global_err("[defaults.limits]\nmax_conns_per_user = 5x\n", "max_conns_per_user",
                      "must be an unquoted integer (got '5x')");
    expect_global_err("[defaults.limits]\nmax_conns_per_user = -1\n", "max_conns_per_user",
                      "must be 0 or more");
    expect_global_err("[defaults.limits]\nmax_bytes_per_conn = \"10 GB\"\n", "max_bytes_per_conn",
                      "must be a size");
    expect_global_err("[defaults.limits]\nmax_bytes_per_conn = 10GB\n", "max_bytes_per_conn",
                      "must be a size");
    expect_global_err("[defaults.limits]\nmax_conn_duration = \"forever\"\n", "max_conn_duration",
                      "must be a duration");
    expect_global_err("[server]\nlog_level = \"loud\"\n", "log_level",
                      "must be one of debug, info, warn, error (got 'loud')");
    expect_global_err("[server]\nstartup_timeout = 0\n", "startup_timeout",
                      "must be greater than 0");
    expect_global_err("[revalidation]\ninterval = \"-1m\"\n", "interval", "must be a duration");
    expect_lkey_err("max_connections = 0\n", "max_connections", "must be greater than 0");
    expect_lkey_err("max_connections = 99999999999\n", "max_connections", "too large");
    expect_lkey_err("max_unstarted_per_peer = -1\n", "max_unstarted_per_peer", "");
    expect_pgkey_err("user_ttl = \"0\"\n", "user_ttl", "must be greater than 0");
    expect_pgkey_err("allow_raw_sql = 1\n", "allow_raw_sql", "must be true or false");
    expect_global_err("[tailscale]\nsocket = \"\"\n", "socket", "must not be empty");

    /* bare sizes are bytes; each log level is accepted */
    static const char *const levels[] = {"debug", "info", "warn", "error"};
    for (size_t i = 0; i < 4; i++) {
        char pre[128];
        snprintf(pre, sizeof(pre),
                 "[server]\nlog_level = \"%s\"\n[defaults.limits]\nmax_bytes_per_conn = 4096\n",
                 levels[i]);
        char *t = mk(pre, "", "");
        wp_config *c = load_ok(t);
        free(t);
        assert_string_equal(c->log_level, levels[i]);
        assert_int_equal(c->default_limits.max_bytes_per_conn, 4096);
        cfg_unref(c);
    }
}

static void test_enums(void **state)
{
    (void)state;
    expect_lkey_err("tls_mode = \"on\"\n", "tls_mode",
                    "must be one of off, optional, require (got 'on')");
    expect_lkey_err("tls_mode = optional\n", "tls_mode", "must be a quoted string");
    expect_lkey_err("backend_tls = \"allow\"\n", "backend_tls",
                    "must be one of disable, prefer, require, verify-full (got 'allow')");
    expect_lkey_err("use_tailscale_tls = 1\n", "use_tailscale_tls", "must be true or false");

    static const char *const tls[] = {"off", "optional", "require"};
    static const char *const btls[] = {"disable", "prefer", "require"};
    for (int i = 0; i < 3; i++) {
        char extra[128];
        snprintf(extra, sizeof(extra), "tls_mode = \"%s\"\nbackend_tls = \"%s\"\n", tls[i],
                 btls[i]);
        char *t = mk("", extra, "");
        wp_config *c = load_ok(t);
        free(t);
        assert_int_equal(c->listeners[0].tls_mode, (cfg_tls_mode)i);
        assert_int_equal(c->listeners[0].backend_tls, (cfg_backend_tls)i);
        assert_string_equal(cfg_tls_mode_str((cfg_tls_mode)i), tls[i]);
        assert_string_equal(cfg_backend_tls_str((cfg_backend_tls)i), btls[i]);
        cfg_unref(c);
    }
    assert_string_equal(cfg_backend_tls_str(CFG_BTLS_VERIFY_FULL), "verify-full");
}

static void test_mode(void **state)
{
    (void)state;
    const char *t = "[[listeners]]\nname = \"pg\"\nlisten = \":5432\"\nmode = \"tcp\"\n"
                    "backend = \"db:5432\"\n[listeners.postgres]\nadmin_user = \"a\"\n"
                    "admin_password = \"p\"\n";
    expect_err(t, 4, "mode", "must be \"postgres\"");
    const char *t2 = "[[listeners]]\nname = \"pg\"\nlisten = \":5432\"\n"
                     "backend = \"db:5432\"\n[listeners.postgres]\nadmin_user = \"a\"\n"
                     "admin_password = \"p\"\n";
    expect_err(t2, 1, "mode", "required in every [[listeners]] section");
}

static void check_hostport(const char *listen, const char *host, int port)
{
    char extra[128];
    snprintf(extra, sizeof(extra),
             "[[listeners]]\nname = \"x\"\nlisten = \"%s\"\n"
             "mode = \"postgres\"\nbackend = \"%s\"\n",
             listen, listen);
    char *t = NULL;
    assert_true(asprintf(&t, "%s%s", extra, base_pg) > 0);
    wp_config *c = load_ok(t);
    free(t);
    assert_string_equal(c->listeners[0].listen_host, host);
    assert_int_equal(c->listeners[0].listen_port, port);
    assert_string_equal(c->listeners[0].backend_host, host);
    assert_int_equal(c->listeners[0].backend_port, port);
    cfg_unref(c);
}

static void test_host_port(void **state)
{
    (void)state;
    check_hostport("[::1]:5432", "::1", 5432);
    check_hostport("10.0.0.1:1", "10.0.0.1", 1);
    check_hostport("db.internal:65535", "db.internal", 65535);
    check_hostport("[fd7a:115c:a1e0::1]:6432", "fd7a:115c:a1e0::1", 6432);

    char *t = mk("", "", "");
    wp_config *c = load_ok(t);
    free(t);
    assert_string_equal(c->listeners[0].listen_host, "");
    assert_int_equal(c->listeners[0].listen_port, 5432);
    cfg_unref(c);

    expect_lkey_err("listen = \"5432\"\n", "listen", "missing port");
    expect_lkey_err("listen = \":0\"\n", "listen", "port must be a number from 1 to 65535");
    expect_lkey_err("listen = \":65536\"\n", "listen", "port must be a number");
    expect_lkey_err("listen = \":54x\"\n", "listen", "port must be a number");
    expect_lkey_err("listen = \":\"\n", "listen", "port must be a number");
    expect_lkey_err("listen = \"::1:5432\"\n", "listen", "IPv6 address needs brackets");
    expect_lkey_err("listen = \"[::1]5432\"\n", "listen", "followed by ':port'");
    expect_lkey_err("listen = \"[zz::1]:5432\"\n", "listen", "invalid IPv6 address");
    expect_lkey_err("listen = \"a b:5432\"\n", "listen", "invalid host name");
    expect_lkey_err("backend = \":5432\"\n", "backend", "needs a host");
}

static void test_listener_rules(void **state)
{
    (void)state;
    expect_lkey_err("cert_file = \"/c.pem\"\n", "cert_file", "needs key_file");
    expect_lkey_err("key_file = \"/k.pem\"\n", "key_file", "needs cert_file");
    expect_lkey_err("backend_tls = \"verify-full\"\n", "backend_tls",
                    "verify-full needs backend_ca_file");
    expect_lkey_err("tls_mode = \"require\"\nuse_tailscale_tls = false\n", "tls_mode",
                    "needs a certificate");
    expect_lkey_err("tls_ticket_lifetime = \"169h\"\n", "tls_ticket_lifetime",
                    "must be at most 168h");
    expect_lkey_err("tls_session_cache_size = 2000000\n", "tls_session_cache_size",
                    "must be at most 1000000");
    expect_lkey_err("tls_session_cache_size = -1\n", "tls_session_cache_size", "must be 0 or more");
    expect_lkey_err("tls_max_version = \"1.1\"\n", "tls_max_version",
                    "must be one of 1.3, 1.2 (got '1.1')");
    const char *twice = "[[listeners]]\nname = \"pg\"\nlisten = \":5432\"\nname = \"pg2\"\n";
    expect_err(twice, 4, "name", "set twice in one section (first on line 2)");
    expect_lkey_err("bogus = 1\n", "bogus", "unknown key in [[listeners]]");

    /* tls off without any certificate source is fine */
    char *t = mk("", "tls_mode = \"off\"\nuse_tailscale_tls = false\n", "");
    cfg_unref(load_ok(t));
    free(t);

    /* name rules */
    const char *bad_name = "[[listeners]]\nname = \"a b\"\nlisten = \":5432\"\n"
                           "mode = \"postgres\"\nbackend = \"db:5432\"\n[listeners.postgres]\n"
                           "admin_user = \"a\"\nadmin_password = \"p\"\n";
    expect_err(bad_name, 2, "name", "(got 'a b')");
    const char *no_name = "[[listeners]]\nlisten = \":5432\"\nmode = \"postgres\"\n"
                          "backend = \"db:5432\"\n[listeners.postgres]\nadmin_user = \"a\"\n"
                          "admin_password = \"p\"\n";
    expect_err(no_name, 1, "name", "required in every [[listeners]] section");
    expect_err(no_name, 1, NULL, "key 'name'"); /* one line: file, line, key, problem */
}

static void test_postgres_rules(void **state)
{
    (void)state;
    expect_pgkey_err("user_prefix = \"WP_\"\n", "user_prefix", "must match [a-z_][a-z0-9_]*");
    expect_pgkey_err("user_prefix = \"1wp\"\n", "user_prefix", "(got '1wp')");
    expect_pgkey_err("user_prefix = \"wp-\"\n", "user_prefix", "must match");
    expect_pgkey_err("user_prefix = \"\"\n", "user_prefix", "must match");
    expect_pgkey_err("user_prefix = \"abcdefghijklmnopqrstu\"\n", "user_prefix",
                     "at most 20 bytes");
    char *t2 = mk("", "", "admin_user = \"x\"\nadmin_user = \"y\"\n");
    expect_err(t2, line_of(t2, "admin_user = \"y\""), "admin_user", "set twice");
    free(t2);
    expect_pgkey_err("admin_database = \"\"\n", "admin_database", "must not be empty");
    expect_pgkey_err("frob = true\n", "frob", "unknown key in [listeners.postgres]");

    char *t = mk("", "", "user_prefix = \"abcdefghijklmnopqrst\"\n");
    wp_config *c = load_ok(t);
    free(t);
    assert_string_equal(c->listeners[0].user_prefix, "abcdefghijklmnopqrst");
    cfg_unref(c);

    const char *no_admin = "[[listeners]]\nname = \"pg\"\nlisten = \":5432\"\n"
                           "mode = \"postgres\"\nbackend = \"db:5432\"\n"
                           "[listeners.postgres]\nuser_ttl = \"1h\"\n";
    expect_err(no_admin, 6, "admin_user", "required in [listeners.postgres]");
    expect_err(no_admin, 6, "admin_password", "required in [listeners.postgres]");

    const char *no_pg = "[[listeners]]\nname = \"pg\"\nlisten = \":5432\"\n"
                        "mode = \"postgres\"\nbackend = \"db:5432\"\n";
    expect_err(no_pg, 1, "admin_user", "no [listeners.postgres] section");

    const char *empty_pw = "[[listeners]]\nname = \"pg\"\nlisten = \":5432\"\n"
                           "mode = \"postgres\"\nbackend = \"db:5432\"\n"
                           "[listeners.postgres]\nadmin_user = \"a\"\nadmin_password = \"\"\n";
    expect_err(empty_pw, 8, "admin_password", "must not be empty");
}

static void test_password_never_echoed(void **state)
{
    (void)state;
    const char *t = "[[listeners]]\nname = \"pg\"\nlisten = \":5432\"\nmode = \"postgres\"\n"
                    "backend = \"db:5432\"\n[listeners.postgres]\nadmin_user = \"a\"\n"
                    "admin_password = hunter2\n";
    cfg_diag d = {0};
    assert_null(cfg_load_string(t, NAME, &d));
    assert_true(
        has_msg(d.errors, d.nerrors, NAME ":8: key 'admin_password': ", "must be a quoted string"));
    for (size_t i = 0; i < d.nerrors; i++)
        assert_null(strstr(d.errors[i], "hunter2"));
    cfg_diag_free(&d);
}

static void test_two_listeners(void **state)
{
    (void)state;
    const char *t = "[provisioning]\nallow_raw_sql = true\n"
                    "[[listeners]]\nname = \"a\"\nlisten = \":5432\"\nmode = \"postgres\"\n"
                    "backend = \"db1:5432\"\n"
                    "[listeners.postgres]\nadmin_user = \"adm1\"\nadmin_password = \"p1\"\n"
                    "user_prefix = \"a_\"\nallow_raw_sql = false\n"
                    "[[listeners]]\nname = \"b\"\nlisten = \"127.0.0.1:6432\"\n"
                    "mode = \"postgres\"\nbackend = \"db2:5433\"\ntls_mode = \"off\"\n"
                    "[listeners.postgres]\nadmin_user = \"adm2\"\nadmin_password = \"p2\"\n"
                    "user_ttl = \"1h\"\n";
    wp_config *c = load_ok(t);
    assert_int_equal(c->nlisteners, 2);
    cfg_listener *a = &c->listeners[0], *b = &c->listeners[1];
    assert_string_equal(a->name, "a");
    assert_string_equal(a->admin_user, "adm1");
    assert_string_equal(a->admin_password, "p1");
    assert_string_equal(a->user_prefix, "a_");
    assert_int_equal(a->user_ttl_ms, 86400000);
    assert_int_equal(a->tls_mode, CFG_TLS_OPTIONAL);
    assert_false(cfg_listener_allow_raw_sql(c, a));
    assert_int_equal(a->line, 3);
    assert_string_equal(b->name, "b");
    assert_string_equal(b->listen_host, "127.0.0.1");
    assert_int_equal(b->listen_port, 6432);
    assert_string_equal(b->backend_host, "db2");
    assert_int_equal(b->backend_port, 5433);
    assert_string_equal(b->admin_user, "adm2");
    assert_string_equal(b->admin_password, "p2");
    assert_string_equal(b->user_prefix, "wp_");
    assert_int_equal(b->user_ttl_ms, 3600000);
    assert_int_equal(b->tls_mode, CFG_TLS_OFF);
    assert_int_equal(b->allow_raw_sql, -1);
    assert_true(cfg_listener_allow_raw_sql(c, b));
    assert_int_equal(b->line, 13);
    cfg_unref(c);

    /* the second listener's [listeners.postgres] does not fill in the first one's */
    const char *t2 = "[[listeners]]\nname = \"a\"\nlisten = \":5432\"\nmode = \"postgres\"\n"
                     "backend = \"db1:5432\"\n"
                     "[[listeners]]\nname = \"b\"\nlisten = \":5433\"\nmode = \"postgres\"\n"
                     "backend = \"db2:5432\"\n"
                     "[listeners.postgres]\nadmin_user = \"adm\"\nadmin_password = \"p\"\n";
    expect_err(t2, 1, "admin_user", "no [listeners.postgres] section");

    const char *dup = "[[listeners]]\nname = \"a\"\nlisten = \":5432\"\nmode = \"postgres\"\n"
                      "backend = \"db1:5432\"\n"
                      "[listeners.postgres]\nadmin_user = \"adm\"\nadmin_password = \"p\"\n"
                      "[[listeners]]\nname = \"a\"\nlisten = \":5433\"\nmode = \"postgres\"\n"
                      "backend = \"db2:5432\"\n"
                      "[listeners.postgres]\nadmin_user = \"adm\"\nadmin_password = \"p\"\n";
    expect_err(dup, 10, "name", "duplicate listener name 'a' (first on line 2)");

    /* one backend, one prefix: the listeners would share (and re-grant) callers' roles */
    const char *shared = "[[listeners]]\nname = \"a\"\nlisten = \":5432\"\nmode = \"postgres\"\n"
                         "backend = \"db1:5432\"\n"
                         "[listeners.postgres]\nadmin_user = \"adm\"\nadmin_password = \"p\"\n"
                         "[[listeners]]\nname = \"b\"\nlisten = \":5433\"\nmode = \"postgres\"\n"
                         "backend = \"db1:5432\"\n"
                         "[listeners.postgres]\nadmin_user = \"adm\"\nadmin_password = \"p\"\n";
    expect_err(shared, 9, "user_prefix", "listeners 'a' and 'b' share backend db1:5432");
    char distinct[1024];
    snprintf(distinct, sizeof(distinct), "%suser_prefix = \"b_\"\n", shared);
    cfg_unref(load_ok(distinct));
}

static void test_sections(void **state)
{
    (void)state;
    expect_err("[tailscale]\nsocket = \"/x\"\n", 0, NULL, "at least one listener is required");
    expect_err("", 0, NULL, "at least one listener is required");
    expect_err("[listeners.postgres]\nadmin_user = \"a\"\n", 1, NULL,
               "must follow a [[listeners]] section");
    char *t = mk("[frobnicate]\nx = 1\n", "", "");
    expect_err(t, 1, NULL, "unknown section [frobnicate]");
    free(t);
    t = mk("socket = \"/x\"\n", "", "");
    expect_err(t, 1, "socket", "key outside any section");
    free(t);
    t = mk("[server]\n[server]\n", "", "");
    expect_err(t, 2, NULL, "section [server] appears twice (first on line 1)");
    free(t);
    t = mk("[listeners]\n", "", "");
    expect_err(t, 1, NULL, "write [[listeners]]");
    free(t);
    t = mk("[[tailscale]]\n", "", "");
    expect_err(t, 1, NULL, "[[tailscale]] is not an array section");
    free(t);
    t = mk("[server\n", "", "");
    expect_err(t, 1, NULL, "malformed section header");
    free(t);
    /* keys under a broken header are not attributed to the section above it */
    t = mk("[server]\nlog_level = \"warn\"\n[tailscale\nlog_level = \"debug\"\n", "", "");
    cfg_diag d = {0};
    assert_null(cfg_load_string(t, NAME, &d));
    assert_int_equal(d.nerrors, 1);
    assert_true(has_msg(d.errors, 1, NAME ":3: ", "malformed section header"));
    cfg_diag_free(&d);
    free(t);
    t = mk("[server] x\n", "", "");
    expect_err(t, 1, NULL, "malformed section header");
    free(t);
    t = mk("[a23456789012345678901234567890123456789012]\n", "", "");
    expect_err(t, 1, NULL, "section name longer than 40 bytes");
    free(t);
    t = mk("", "", "[listeners.postgres]\n");
    expect_err(t, line_of(t, "[listeners.postgres]\n\0") + 3, NULL, "appears twice");
    free(t);
    t = mk("", "just words\n", "");
    expect_err(t, 6, NULL, "expected 'key = value' or a [section] header");
    free(t);

    /* whitespace inside brackets and a comment after the header are fine */
    t = mk("[ server ]  # comment\nlog_level = \"warn\"\n", "", "");
    wp_config *c = load_ok(t);
    free(t);
    assert_string_equal(c->log_level, "warn");
    cfg_unref(c);
}

static void test_inih_traps(void **state)
{
    (void)state;
    char longval[256];

    /* 199 bytes is the longest accepted line; 200 and 201 are refused, not split */
    size_t prefix = strlen("capability = \"\"");
    memset(longval, 'a', sizeof(longval));
    longval[199 - prefix] = '\0';
    char *pre = NULL;
    assert_true(asprintf(&pre, "[tailscale]\ncapability = \"%s\"\n", longval) > 0);
    char *t = mk(pre, "", "");
    wp_config *c = load_ok(t);
    assert_string_equal(c->ts_capability, longval);
    cfg_unref(c);
    free(t);
    free(pre);
    for (size_t extra = 1; extra <= 2; extra++) {
        longval[199 - prefix + extra - 1] = 'a';
        longval[199 - prefix + extra] = '\0';
        assert_true(asprintf(&pre, "[tailscale]\ncapability = \"%s\"\n", longval) > 0);
        t = mk(pre, "", "");
        char want[64];
        snprintf(want, sizeof(want), "line is %zu bytes long; the limit is 199", 199 + extra);
        expect_err(t, 2, NULL, want);
        free(t);
        free(pre);
    }

    /* an indented key would be glued onto the previous value by inih */
    t = mk("[tailscale]\ncapability = \"a\"\n  socket = \"/x\"\n", "", "");
    expect_err(t, 3, NULL, "indented line");
    free(t);
    t = mk("[tailscale]\ncapability = \"a\"\n\tsocket = \"/x\"\n", "", "");
    expect_err(t, 3, NULL, "indented line");
    free(t);
    t = mk("  [server]\n", "", "");
    expect_err(t, 1, NULL, "indented line");
    free(t);

    /* indented comments, blank lines with spaces, CRLF and a BOM are harmless */
    t = mk("\xEF\xBB\xBF[tailscale]\r\n   # indented comment\r\n  \t \r\n   ; another\r\n"
           "capability = \"c;d\" ; trailing\r\n",
           "", "user_prefix = \"ab_\"   # trailing # comment\n");
    c = load_ok(t);
    free(t);
    assert_string_equal(c->ts_capability, "c;d");
    assert_string_equal(c->listeners[0].user_prefix, "ab_");
    cfg_unref(c);

    /* ';' and '#' inside quotes are data; after the value they start comments */
    t = mk("", "max_connections = 7;no space before\n",
           "admin_database = \"a;b # c\"#comment\nuser_ttl = \"2h\"; x\n");
    c = load_ok(t);
    free(t);
    assert_string_equal(c->listeners[0].admin_database, "a;b # c");
    assert_int_equal(c->listeners[0].max_connections, 7);
    assert_int_equal(c->listeners[0].user_ttl_ms, 7200000);
    cfg_unref(c);

    t = mk("", "max_connections = 9 # nine\n", "");
    c = load_ok(t);
    free(t);
    assert_int_equal(c->listeners[0].max_connections, 9);
    cfg_unref(c);

    /* names inih would truncate are refused */
    t = mk("", "a2345678901234567890123456789012345678901 = 1\n", "");
    expect_err(t, 6, NULL, "key name longer than 40 bytes");
    free(t);
}

static void test_strings(void **state)
{
    (void)state;
    char *t = mk("", "", "admin_password = \"q\\\"uote \\\\ nl\\n tab\\t end\"\n");
    wp_config *c = load_ok(t);
    free(t);
    assert_string_equal(c->listeners[0].admin_password, "q\"uote \\ nl\n tab\t end");
    cfg_unref(c);

    expect_pgkey_err("admin_database = \"a\\x\"\n", "admin_database", "unknown escape");
    expect_pgkey_err("admin_database = \"abc\n", "admin_database", "unterminated string");
    expect_pgkey_err("admin_database = \"abc\\\"\n", "admin_database", "unterminated string");
    expect_pgkey_err("admin_database = 'abc'\n", "admin_database", "use double quotes");
    expect_pgkey_err("admin_database = \"a\" \"b\"\n", "admin_database",
                     "unexpected text after the value");
    expect_pgkey_err("admin_database = \"a\" b\n", "admin_database",
                     "unexpected text after the value");
    expect_pgkey_err("admin_database = a b\n", "admin_database", "unexpected text after the value");
    expect_pgkey_err("admin_database =\n", "admin_database", "missing value");
    expect_pgkey_err("admin_database = # nothing\n", "admin_database", "missing value");
    expect_pgkey_err("admin_database = ab\"c\"\n", "admin_database", "unexpected quote");

    /* a control character in a value never splits a diagnostic line */
    t = mk("", "", "user_prefix = \"a\\nb\"\n");
    expect_err(t, line_of(t, "user_prefix"), "user_prefix", "(got 'a?b')");
    free(t);
}

static void test_env_interpolation(void **state)
{
    (void)state;
    setenv("WPT_HOST", "db.example", 1);
    setenv("WPT_PORT", "6543", 1);
    setenv("WPT_REF", "${WPT_HOST}", 1);
    setenv("WPT_EMPTY", "", 1);
    setenv("WPT_N", "12", 1);
    char *t = mk("[tailscale]\ncapability = \"pre-${WPT_EMPTY}-${WPT_HOST}-$HOME-$-post\"\n",
                 "backend = \"${WPT_HOST}:${WPT_PORT}\"\nmax_connections = ${WPT_N}\n",
                 "admin_database = \"${WPT_REF}\"\n");
    wp_config *c = load_ok(t);
    free(t);
    assert_string_equal(c->ts_capability, "pre--db.example-$HOME-$-post");
    assert_string_equal(c->listeners[0].backend_host, "db.example");
    assert_int_equal(c->listeners[0].backend_port, 6543);
    assert_int_equal(c->listeners[0].max_connections, 12);
    /* expanded text is not expanded again */
    assert_string_equal(c->listeners[0].admin_database, "${WPT_HOST}");
    cfg_unref(c);

    unsetenv("WPT_MISSING");
    expect_pgkey_err("admin_database = \"x${WPT_MISSING}\"\n", "admin_database",
                     "environment variable 'WPT_MISSING' is not set");
    expect_pgkey_err("admin_database = \"${WPT_HOST\"\n", "admin_database", "unterminated '${'");
    expect_pgkey_err("admin_database = \"${1X}\"\n", "admin_database",
                     "invalid environment variable name");
    expect_pgkey_err("admin_database = \"${}\"\n", "admin_database",
                     "invalid environment variable name");
    expect_pgkey_err("admin_database = \"${WPT_EMPTY}\"\n", "admin_database", "must not be empty");
    unsetenv("WPT_HOST");
    unsetenv("WPT_PORT");
    unsetenv("WPT_REF");
    unsetenv("WPT_EMPTY");
    unsetenv("WPT_N");
}

/* [metrics], [admin], [audit]: real sections of this edition (issue 13). */
static void test_observability_keys(void **state)
{
    (void)state;
    char *t = mk("", "", "");
    wp_config *c = load_ok(t);
    assert_int_equal(c->metrics_listen_port, 0); /* off by default */
    assert_null(c->admin_socket);
    assert_null(c->audit_file);
    cfg_unref(c);
    free(t);

    t = mk("[metrics]\nlisten = \"127.0.0.1:9187\"\n[admin]\nsocket = \"/run/wp.sock\"\n"
           "[audit]\nfile = \"/var/log/wp.jsonl\"\n",
           "", "");
    c = load_ok(t);
    assert_string_equal(c->metrics_listen_host, "127.0.0.1");
    assert_int_equal(c->metrics_listen_port, 9187);
    assert_false(c->metrics_allow_remote);
    assert_string_equal(c->admin_socket, "/run/wp.sock");
    assert_string_equal(c->audit_file, "/var/log/wp.jsonl");
    cfg_unref(c);
    free(t);

    static const char *const loopback[] = {"[::1]:9187", "localhost:9187", "127.8.9.10:1"};
    for (size_t i = 0; i < 3; i++) {
        char pre[128];
        snprintf(pre, sizeof(pre), "[metrics]\nlisten = \"%s\"\n", loopback[i]);
        t = mk(pre, "", "");
        cfg_unref(load_ok(t));
        free(t);
    }
    /* non-loopback: refused unless allow_remote says so */
    static const char *const remote[] = {":9187", "0.0.0.0:9187", "10.1.2.3:9187", "[::]:9187",
                                         "metrics.example.com:9187"};
    for (size_t i = 0; i < 5; i++) {
        char pre[160];
        snprintf(pre, sizeof(pre), "[metrics]\nlisten = \"%s\"\n", remote[i]);
        t = mk(pre, "", "");
        expect_err(t, 2, "listen", "not a loopback address");
        free(t);
        snprintf(pre, sizeof(pre), "[metrics]\nlisten = \"%s\"\nallow_remote = true\n", remote[i]);
        t = mk(pre, "", "");
        c = load_ok(t);
        assert_true(c->metrics_allow_remote);
        cfg_unref(c);
        free(t);
    }
    t = mk("[metrics]\nlisten = \"127.0.0.1\"\n", "", "");
    expect_err(t, 2, "listen", "missing port");
    free(t);
    t = mk("[metrics]\nlisen = \"127.0.0.1:1\"\n", "", "");
    expect_err(t, 2, "lisen", "unknown key in [metrics]");
    free(t);
    t = mk("[admin]\nsocket = \"\"\n", "", "");
    expect_err(t, 2, "socket", "must not be empty");
    free(t);
    t = mk("[audit]\nfile = \"\"\n", "", "");
    expect_err(t, 2, "file", "must not be empty");
    free(t);
}

/* [redis]: every key, defaults, ${VAR} in the password, and each refusal. */
static void test_redis_section(void **state)
{
    (void)state;
    char *t = mk("", "", "");
    wp_config *c = load_ok(t);
    assert_null(c->redis_address); /* no [redis]: no fleet */
    assert_string_equal(c->redis_key_prefix, "waypoint:");
    assert_int_equal(c->redis_instance_ttl_ms, 10000);
    assert_int_equal(c->redis_heartbeat_interval_ms, 2000);
    cfg_unref(c);
    free(t);

    setenv("WPT_REDIS_PW", "s3cret", 1);
    t = mk("[redis]\naddress = \"127.0.0.1:6380\"\nusername = \"wp\"\n"
           "password = \"${WPT_REDIS_PW}\"\ndb = 3\nkey_prefix = \"{wp}:\"\n"
           "connect_timeout = \"250ms\"\ncommand_timeout = \"2s\"\n"
           "heartbeat_interval = \"1s\"\ninstance_ttl = \"5s\"\npool_size = 4\n",
           "", "");
    c = load_ok(t);
    assert_string_equal(c->redis_address, "127.0.0.1:6380");
    assert_string_equal(c->redis_username, "wp");
    assert_string_equal(c->redis_password, "s3cret");
    assert_int_equal(c->redis_db, 3);
    assert_string_equal(c->redis_key_prefix, "{wp}:");
    assert_int_equal(c->redis_connect_timeout_ms, 250);
    assert_int_equal(c->redis_command_timeout_ms, 2000);
    assert_int_equal(c->redis_heartbeat_interval_ms, 1000);
    assert_int_equal(c->redis_instance_ttl_ms, 5000);
    assert_int_equal(c->redis_pool_size, 4);
    char *dump_s = NULL;
    size_t dump_len = 0;
    FILE *f = open_memstream(&dump_s, &dump_len);
    cfg_print(c, f);
    fclose(f);
    assert_non_null(strstr(dump_s, "[redis]"));
    assert_null(strstr(dump_s, "s3cret")); /* the password is masked */
    free(dump_s);
    cfg_unref(c);
    free(t);
    unsetenv("WPT_REDIS_PW");

    /* the tsnet edition's "addr" and a unix socket */
    t = mk("[redis]\naddr = \"/run/redis/redis.sock\"\n", "", "");
    c = load_ok(t);
    assert_string_equal(c->redis_address, "/run/redis/redis.sock");
    cfg_unref(c);
    free(t);

    static const struct {
        const char *body;
        int line;
        const char *key, *problem;
    } bad[] = {
        {"db = 1\n", 1, NULL, "[redis] needs 'address'"},
        {"address = \"localhost\"\n", 2, "address", "must be host:port"},
        {"address = \"localhost:0\"\n", 2, "address", "port from 1 to 65535"},
        {"address = \"[::1:6379\"\n", 2, "address", "must be host:port"},
        {"address = \"relative.sock\"\n", 2, "address", "must be host:port"},
        {"address = \"h:1\"\naddr = \"h:2\"\n", 3, "addr", "set together with 'address'"},
        {"address = \"h:1\"\npassword = \"${WPT_REDIS_UNSET}\"\n", 3, "password", NULL},
        {"address = \"h:1\"\nusername = \"u\"\n", 3, "username", "needs 'password'"},
        {"address = \"h:1\"\nkey_prefix = \"\"\n", 3, "key_prefix", "must not be empty"},
        {"address = \"h:1\"\nheartbeat_interval = \"6s\"\n", 3, "heartbeat_interval",
         "at most half of instance_ttl"},
        {"address = \"h:1\"\ninstance_ttl = \"10ms\"\n", 3, "instance_ttl", ""},
        {"address = \"h:1\"\npool_size = 0\n", 3, "pool_size", ""},
        {"address = \"h:1\"\nbogus = 1\n", 3, "bogus", "unknown key in [redis]"},
    };
    unsetenv("WPT_REDIS_UNSET");
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char body[256];
        snprintf(body, sizeof(body), "[redis]\n%s", bad[i].body);
        t = mk(body, "", "");
        expect_err(t, bad[i].line, bad[i].key, bad[i].problem ? bad[i].problem : "WPT_REDIS_UNSET");
        free(t);
    }
}

static void test_tsnet_keys_warn(void **state)
{
    (void)state;
    char *t = mk("[tailscale]\nhostname = \"waypoint\"\nstate_dir = \"/var/lib/waypoint\"\n"
                 "auth_key = \"${WPT_UNSET_AUTHKEY}\"\ncontrol_url = \"https://c\"\n"
                 "ephemeral = false\n"
                 "[redis.sentinel]\naddr = \"localhost:6379\"\npassword = \"x\"\n"
                 "[metrics]\nlisten = \"127.0.0.1:9090\"\n[telemetry]\n[otel]\nendpoint = \"e\"\n"
                 "[metrics.prometheus]\npath = \"/m\"\n",
                 "", "");
    unsetenv("WPT_UNSET_AUTHKEY");
    cfg_diag d = {0};
    wp_config *c = cfg_load_string(t, NAME, &d);
    if (!c)
        dump(&d);
    assert_non_null(c);
    assert_int_equal(d.nerrors, 0);
    static const struct {
        int line;
        const char *key, *what;
    } want[] = {
        {2, "hostname", "[tailscale] hostname"},      {3, "state_dir", "[tailscale] state_dir"},
        {4, "auth_key", "[tailscale] auth_key"},      {5, "control_url", "[tailscale] control_url"},
        {6, "ephemeral", "[tailscale] ephemeral"},    {8, "addr", "[redis.sentinel] addr"},
        {9, "password", "[redis.sentinel] password"}, {14, "endpoint", "[otel] endpoint"},
        {16, "path", "[metrics.prometheus] path"},
    };
    size_t nwant = sizeof(want) / sizeof(want[0]);
    for (size_t i = 0; i < nwant; i++) {
        char prefix[128], problem[128];
        snprintf(prefix, sizeof(prefix), "%s:%d: key '%s': ", NAME, want[i].line, want[i].key);
        snprintf(problem, sizeof(problem), "ignored: %s has no effect in this edition",
                 want[i].what);
        assert_true(has_msg(d.warnings, d.nwarnings, prefix, problem));
    }
    /* plus one for the empty [telemetry] section, and nothing else */
    assert_true(has_msg(d.warnings, d.nwarnings,
                        NAME ":12: ", "ignored: section [telemetry] has no effect"));
    assert_int_equal(d.nwarnings, nwant + 1);
    cfg_diag_free(&d);
    cfg_unref(c);
    free(t);

    /* the ignored keys are still unknown elsewhere */
    t = mk("", "hostname = \"x\"\n", "");
    expect_err(t, 6, "hostname", "unknown key in [[listeners]]");
    free(t);
}

static void test_all_errors_collected(void **state)
{
    (void)state;
    const char *t = "[server]\nlog_level = \"x\"\ndrain_timeout = \"y\"\n"
                    "[[listeners]]\nname = \"pg\"\nlisten = \":0\"\nmode = \"postgres\"\n"
                    "backend = \"db:5432\"\n";
    cfg_diag d = {0};
    assert_null(cfg_load_string(t, NAME, &d));
    assert_true(d.nerrors >= 5);
    assert_true(has_msg(d.errors, d.nerrors, NAME ":2: key 'log_level': ", "must be one of"));
    assert_true(has_msg(d.errors, d.nerrors, NAME ":3: key 'drain_timeout': ", "duration"));
    assert_true(has_msg(d.errors, d.nerrors, NAME ":6: key 'listen': ", "port"));
    assert_true(has_msg(d.errors, d.nerrors, NAME ":4: key 'admin_user': ", "required"));
    assert_true(has_msg(d.errors, d.nerrors, NAME ":4: key 'admin_password': ", "required"));
    /* sorted by line */
    int prev = 0;
    for (size_t i = 0; i < d.nerrors; i++) {
        int line = atoi(d.errors[i] + strlen(NAME) + 1);
        assert_true(line >= prev);
        prev = line;
    }
    cfg_diag_free(&d);
    assert_null(d.errors);
    assert_int_equal(d.nerrors, 0);

    /* a NULL diag is allowed */
    assert_null(cfg_load_string(t, NAME, NULL));
}

static void test_refcount(void **state)
{
    (void)state;
    char *t = mk("", "", "");
    wp_config *c = load_ok(t);
    free(t);
    assert_int_equal(atomic_load(&c->refs), 1);
    assert_ptr_equal(cfg_ref(c), c);
    assert_int_equal(atomic_load(&c->refs), 2);
    cfg_unref(c);
    assert_int_equal(atomic_load(&c->refs), 1);
    assert_string_equal(c->listeners[0].name, "pg"); /* still alive */
    cfg_unref(c);                                    /* freed: ASan checks the rest */
    assert_null(cfg_ref(NULL));
    cfg_unref(NULL);
}

static char *print_to_string(const wp_config *c)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    cfg_print(c, f);
    assert_int_equal(fclose(f), 0);
    return buf;
}

static void test_print(void **state)
{
    (void)state;
    char *t = mk("[provisioning]\nallow_raw_sql = true\n[defaults.limits]\n"
                 "max_bytes_per_conn = \"512MB\"\nmax_conn_duration = \"1h30m\"\n"
                 "[server]\nstartup_timeout = \"1500ms\"\n",
                 "listen = \"[::1]:6000\"\ncert_file = \"/c \\\"q\\\".pem\"\n"
                 "key_file = \"/k.pem\"\n",
                 "admin_password = \"TopSecret-42\"\n");
    wp_config *c = load_ok(t);
    free(t);
    char *out = print_to_string(c);
    assert_null(strstr(out, "TopSecret"));
    assert_non_null(strstr(out, "admin_password = \"********\"\n"));
    assert_non_null(strstr(out, "listen = \"[::1]:6000\"\n"));
    assert_non_null(strstr(out, "max_bytes_per_conn = \"512MB\"\n"));
    assert_non_null(strstr(out, "max_conn_duration = \"1h30m\"\n"));
    assert_non_null(strstr(out, "startup_timeout = \"1s500ms\"\n"));
    assert_non_null(strstr(out, "cert_file = \"/c \\\"q\\\".pem\"\n"));
    assert_non_null(strstr(out, "# allow_raw_sql = true  (inherited from [provisioning])\n"));

    /* the printed form is itself a valid file with the same values */
    wp_config *c2 = load_ok(out);
    assert_string_equal(c2->listeners[0].admin_password, "********");
    assert_string_equal(c2->listeners[0].cert_file, c->listeners[0].cert_file);
    assert_string_equal(c2->listeners[0].listen_host, "::1");
    assert_int_equal(c2->default_limits.max_bytes_per_conn, 512LL << 20);
    assert_int_equal(c2->default_limits.max_conn_duration_ms, 5400000);
    assert_int_equal(c2->startup_timeout_ms, 1500);
    assert_true(c2->allow_raw_sql);
    assert_true(cfg_listener_allow_raw_sql(c2, &c2->listeners[0]));
    char *out2 = print_to_string(c2);
    assert_string_equal(strchr(out, '\n'), strchr(out2, '\n')); /* all but the path line */
    free(out);
    free(out2);
    cfg_unref(c);
    cfg_unref(c2);
}

static char *make_tmpdir(void)
{
    char *dir = strdup("/tmp/wp-test-config-XXXXXX");
    assert_non_null(dir);
    assert_non_null(mkdtemp(dir));
    return dir;
}

static char *write_file(const char *dir, const char *name, const char *text)
{
    char *path = NULL;
    assert_true(asprintf(&path, "%s/%s", dir, name) > 0);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
    return path;
}

static void test_load_file(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    char *t = mk("", "", "");
    char *path = write_file(dir, "waypoint.toml", t);
    free(t);
    cfg_diag d = {0};
    wp_config *c = cfg_load(path, &d);
    assert_non_null(c);
    assert_int_equal(d.nerrors, 0);
    assert_string_equal(c->path, path);
    cfg_unref(c);

    char *bad = write_file(dir, "bad.toml", "[server]\nlog_level = \"nope\"\n");
    assert_null(cfg_load(bad, &d));
    char prefix[512];
    snprintf(prefix, sizeof(prefix), "%s:2: key 'log_level': ", bad);
    assert_true(has_msg(d.errors, d.nerrors, prefix, "must be one of"));
    cfg_diag_free(&d);

    char *missing = NULL;
    assert_true(asprintf(&missing, "%s/missing.toml", dir) > 0);
    assert_null(cfg_load(missing, &d));
    assert_int_equal(d.nerrors, 1);
    snprintf(prefix, sizeof(prefix), "%s: ", missing);
    assert_true(has_msg(d.errors, d.nerrors, prefix, "No such file or directory"));
    cfg_diag_free(&d);

    unlink(path);
    unlink(bad);
    assert_int_equal(rmdir(dir), 0);
    free(path);
    free(bad);
    free(missing);
    free(dir);
}

/* The admin CLI's read: only [admin] socket, nothing expanded or required, so a shell
 * without the admin password's variable (or with a file the daemon would refuse for
 * other reasons) still finds the socket; the file's syntax and the socket's own checks
 * still apply. */
static void test_admin_socket_only(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    unsetenv("WP_TEST_UNSET_SECRET");
    setenv("WP_TEST_SOCKDIR", "/run/wp", 1);
    char *path = write_file(dir, "waypoint.toml",
                            "[admin]\nsocket = \"${WP_TEST_SOCKDIR}/admin.sock\"\n"
                            "[[listeners]]\nname = \"pg\"\nlisten = \"127.0.0.1:5432\"\n"
                            "mode = \"postgres\"\nbackend = \"127.0.0.1:5433\"\n"
                            "[listeners.postgres]\nadmin_user = \"wp_admin\"\n"
                            "admin_password = \"${WP_TEST_UNSET_SECRET}\"\n"
                            "admin_database = \"appdb\"\n");
    cfg_diag d = {0};
    assert_null(cfg_load(path, &d)); /* the daemon needs the secret */
    assert_true(has_msg(d.errors, d.nerrors, "", "WP_TEST_UNSET_SECRET"));
    cfg_diag_free(&d);
    char *sock = NULL;
    assert_int_equal(cfg_admin_socket(path, &sock, &d), 0);
    assert_int_equal(d.nerrors, 0);
    assert_string_equal(sock, "/run/wp/admin.sock");
    free(sock);

    /* No [admin] socket: 0 and NULL; no listener needed either. */
    char *none = write_file(dir, "none.toml", "[server]\nlog_level = \"nope\"\n");
    assert_int_equal(cfg_admin_socket(none, &sock, &d), 0);
    assert_null(sock);
    /* The socket's own checks and the file's syntax still count. */
    char *empty = write_file(dir, "empty.toml", "[admin]\nsocket = \"\"\n");
    assert_int_equal(cfg_admin_socket(empty, &sock, &d), -1);
    assert_true(has_msg(d.errors, d.nerrors, "", "must not be empty"));
    cfg_diag_free(&d);
    char *broken = write_file(dir, "broken.toml", "[admin]\nsocket = \"/x\n");
    assert_int_equal(cfg_admin_socket(broken, &sock, &d), -1);
    assert_null(sock);
    cfg_diag_free(&d);
    char *unset = write_file(dir, "unset.toml", "[admin]\nsocket = \"${WP_TEST_UNSET_SECRET}\"\n");
    assert_int_equal(cfg_admin_socket(unset, &sock, &d), -1);
    assert_true(has_msg(d.errors, d.nerrors, "", "WP_TEST_UNSET_SECRET"));
    cfg_diag_free(&d);

    char *files[] = {path, none, empty, broken, unset};
    for (size_t i = 0; i < 5; i++) {
        unlink(files[i]);
        free(files[i]);
    }
    assert_int_equal(rmdir(dir), 0);
    free(dir);
    unsetenv("WP_TEST_SOCKDIR");
}

static void test_example_file(void **state)
{
    (void)state;
    setenv("PG_ADMIN_PASSWORD", "example-pw", 1);
    cfg_diag d = {0};
    wp_config *c = cfg_load(WP_SOURCE_DIR "/etc/waypoint.toml", &d);
    unsetenv("PG_ADMIN_PASSWORD");
    if (!c)
        dump(&d);
    assert_non_null(c);
    assert_int_equal(d.nerrors, 0);
    assert_int_equal(d.nwarnings, 0);
    cfg_diag_free(&d);
    assert_int_equal(c->nlisteners, 1);
    assert_string_equal(c->listeners[0].admin_password, "example-pw");
    assert_string_equal(c->listeners[0].name, "pg-main");
    cfg_unref(c);
}

/* Runs the waypoint binary with a shell command line; returns its exit status and
 * captures stdout+stderr. */
static int run_cli(const char *args, char **output)
{
    char *cmd = NULL;
    assert_true(asprintf(&cmd, "%s/waypoint %s 2>&1", WP_BINARY_DIR, args) > 0);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    assert_non_null(out);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), p)) > 0)
        fwrite(chunk, 1, n, out);
    fclose(out);
    int st = pclose(p);
    free(cmd);
    *output = buf;
    assert_true(WIFEXITED(st));
    return WEXITSTATUS(st);
}

static void test_cli(void **state)
{
    (void)state;
    char *out;
    assert_int_equal(run_cli("-version", &out), 0);
    char want[256];
    snprintf(want, sizeof(want), "waypoint %s, %s\n", WP_VERSION, tls_library());
    assert_string_equal(out, want);
    assert_non_null(strstr(out, "(TLS 1.2")); /* names what the build speaks */
    free(out);
    assert_int_equal(run_cli("--version", &out), 0);
    free(out);
    assert_int_equal(run_cli("-help", &out), 0);
    assert_non_null(strstr(out, "-check-config"));
    free(out);
    assert_int_equal(run_cli("-nope", &out), 2);
    assert_non_null(strstr(out, "usage:"));
    free(out);
    assert_int_equal(run_cli("-config", &out), 2);
    free(out);
    assert_int_equal(run_cli("stray", &out), 2);
    free(out);

    char *dir = make_tmpdir();
    char *t = mk("[tailscale]\nhostname = \"h\"\n", "", "admin_password = \"Sekrit9\"\n");
    char *good = write_file(dir, "good.toml", t);
    free(t);
    char *bad = write_file(dir, "bad.toml", "[server]\nlog_level = \"nope\"\n");
    char args[512];
    snprintf(args, sizeof(args), "-check-config -config %s", good);
    assert_int_equal(run_cli(args, &out), 0);
    assert_non_null(strstr(out, "warning: "));
    assert_non_null(strstr(out, "hostname has no effect"));
    assert_non_null(strstr(out, "admin_password = \"********\""));
    assert_null(strstr(out, "Sekrit9"));
    free(out);
    snprintf(args, sizeof(args), "--check-config --config=%s", bad);
    assert_int_equal(run_cli(args, &out), 1);
    assert_non_null(strstr(out, ":2: key 'log_level': must be one of"));
    free(out);
    snprintf(args, sizeof(args), "-check-config -config %s/none.toml", dir);
    assert_int_equal(run_cli(args, &out), 1);
    assert_non_null(strstr(out, "No such file or directory"));
    free(out);
    /* running with the stub server fails cleanly after loading the config */
    snprintf(args, sizeof(args), "-config %s", good);
    assert_int_equal(run_cli(args, &out), 1);
    assert_null(strstr(out, "Sekrit9"));
    free(out);
    unlink(good);
    unlink(bad);
    rmdir(dir);
    free(good);
    free(bad);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_example),
        cmocka_unit_test(test_spec_example_missing_env),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_every_key_set),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_value_types),
        cmocka_unit_test(test_enums),
        cmocka_unit_test(test_mode),
        cmocka_unit_test(test_host_port),
        cmocka_unit_test(test_listener_rules),
        cmocka_unit_test(test_postgres_rules),
        cmocka_unit_test(test_password_never_echoed),
        cmocka_unit_test(test_two_listeners),
        cmocka_unit_test(test_sections),
        cmocka_unit_test(test_inih_traps),
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_env_interpolation),
        cmocka_unit_test(test_tsnet_keys_warn),
        cmocka_unit_test(test_redis_section),
        cmocka_unit_test(test_all_errors_collected),
        cmocka_unit_test(test_observability_keys),
        cmocka_unit_test(test_refcount),
        cmocka_unit_test(test_print),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_admin_socket_only),
        cmocka_unit_test(test_example_file),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
