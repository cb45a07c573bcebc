/*
 * metrics, obs, audit, sessreg: the exposition formatter (exact text), histogram
 * bucketing, label bounds, the audit record encoding and file writer, and the session
 * registry's kill delivery. The exposition is also checked with the real `promtool
 * check metrics` when promtool is installed (it is in CI: scripts/deps.sh).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "admin.h"
#include "audit.h"
#include "io.h"
#include "metrics.h"
#include "obs.h"
#include "sessreg.h"

#define LBL(...) ((const char *const[]){__VA_ARGS__, NULL})

static void test_names(void **state)
{
    (void)state;
    assert_true(metrics_name_valid("waypoint_x_total"));
    assert_true(metrics_name_valid("a:b_c"));
    assert_false(metrics_name_valid("9abc"));
    assert_false(metrics_name_valid("a-b"));
    assert_false(metrics_name_valid(""));
    assert_true(metrics_label_valid("listener"));
    assert_false(metrics_label_valid("__name"));
    assert_false(metrics_label_valid("a:b"));
    assert_false(metrics_label_valid("le"));
    metrics_registry *r = metrics_new();
    assert_non_null(r);
    assert_null(metrics_family_add(r, METRICS_COUNTER, "bad-name", "h", NULL, NULL, 0));
    assert_null(metrics_family_add(r, METRICS_COUNTER, "x", "h", LBL("a", "b", "c", "d"), NULL, 0));
    double unsorted[] = {1, 0.5};
    assert_null(metrics_family_add(r, METRICS_HISTOGRAM, "h", "h", NULL, unsorted, 2));
    assert_null(metrics_family_add(r, METRICS_HISTOGRAM, "h", "h", NULL, NULL, 0));
    metrics_free(r);
}

static void test_format_double(void **state)
{
    (void)state;
    char b[40];
    metrics_format_double(0, b, sizeof(b));
    assert_string_equal(b, "0");
    metrics_format_double(42, b, sizeof(b));
    assert_string_equal(b, "42");
    metrics_format_double(0.25, b, sizeof(b));
    assert_string_equal(b, "0.25");
    metrics_format_double(0.0005, b, sizeof(b));
    assert_string_equal(b, "0.0005");
    metrics_format_double(7.65, b, sizeof(b));
    assert_string_equal(b, "7.65");
    metrics_format_double(INFINITY, b, sizeof(b));
    assert_string_equal(b, "+Inf");
    metrics_format_double(-INFINITY, b, sizeof(b));
    assert_string_equal(b, "-Inf");
    metrics_format_double(NAN, b, sizeof(b));
    assert_string_equal(b, "NaN");
}

/* The whole exposition for a small registry, byte for byte. */
static void test_render_exact(void **state)
{
    (void)state;
    metrics_registry *r = metrics_new();
    metrics_family *c =
        metrics_family_add(r, METRICS_COUNTER, "t_conns_total", "Connections.\nSecond \\ line.",
                           LBL("listener", "outcome"), NULL, 0);
    metrics_family *g = metrics_family_add(r, METRICS_GAUGE, "t_up", "Up.", NULL, NULL, 0);
    double b[] = {0.1, 1};
    metrics_family *h = metrics_family_add(r, METRICS_HISTOGRAM, "t_lat_seconds", "Latency.",
                                           LBL("listener"), b, 2);
    assert_non_null(c);
    assert_non_null(g);
    assert_non_null(h);
    metrics_inc(metrics_series_get(c, LBL("pg-main", "ok")), 3);
    metrics_inc(metrics_series_get(c, LBL("we\"ird\\\n", "refused")), 1);
    metrics_inc(metrics_series_get(c, LBL("pg-main", "ok")), 2);
    metrics_set(metrics_series_get(g, NULL), 1);
    metrics_series *hs = metrics_series_get(h, LBL("pg-main"));
    metrics_observe(hs, 0.05);
    metrics_observe(hs, 0.1); /* le is inclusive */
    metrics_observe(hs, 0.5);
    metrics_observe(hs, 7);
    size_t len = 0;
    char *text = metrics_render(r, &len);
    assert_non_null(text);
    assert_int_equal(len, strlen(text));
    const char *want = "# HELP t_conns_total Connections.\\nSecond \\\\ line.\n"
                       "# TYPE t_conns_total counter\n"
                       "t_conns_total{listener=\"pg-main\",outcome=\"ok\"} 5\n"
                       "t_conns_total{listener=\"we\\\"ird\\\\\\n\",outcome=\"refused\"} 1\n"
                       "# HELP t_up Up.\n"
                       "# TYPE t_up gauge\n"
                       "t_up 1\n"
                       "# HELP t_lat_seconds Latency.\n"
                       "# TYPE t_lat_seconds histogram\n"
                       "t_lat_seconds_bucket{listener=\"pg-main\",le=\"0.1\"} 2\n"
                       "t_lat_seconds_bucket{listener=\"pg-main\",le=\"1\"} 3\n"
                       "t_lat_seconds_bucket{listener=\"pg-main\",le=\"+Inf\"} 4\n"
                       "t_lat_seconds_sum{listener=\"pg-main\"} 7.65\n"
                       "t_lat_seconds_count{listener=\"pg-main\"} 4\n";
    assert_string_equal(text, want);
    assert_int_equal(metrics_hist_count(hs), 4);
    free(text);
    metrics_free(r);
}

static void test_bounded_series(void **state)
{
    (void)state;
    metrics_registry *r = metrics_new();
    metrics_family *c = metrics_family_add(r, METRICS_COUNTER, "t_total", "T.", LBL("k"), NULL, 0);
    char v[32];
    for (int i = 0; i < METRICS_SERIES_MAX; i++) {
        snprintf(v, sizeof(v), "v%d", i);
        assert_non_null(metrics_series_get(c, LBL(v)));
    }
    assert_null(metrics_series_get(c, LBL("one-too-many")));
    metrics_inc(NULL, 1); /* accepted as a no-op */
    metrics_observe(NULL, 1);
    metrics_set(NULL, 1);
    assert_non_null(metrics_series_get(c, LBL("v0"))); /* existing ones still found */
    /* wrong-type updates do nothing */
    metrics_series *s = metrics_series_get(c, LBL("v1"));
    metrics_set(s, 99);
    metrics_observe(s, 1);
    assert_true(metrics_value(s) == 0);
    metrics_inc(s, 2);
    assert_true(metrics_value(s) == 2);
    metrics_free(r);
}

static void test_gauge_add_zero(void **state)
{
    (void)state;
    metrics_registry *r = metrics_new();
    metrics_family *g = metrics_family_add(r, METRICS_GAUGE, "t_g", "G.", LBL("l"), NULL, 0);
    metrics_series *s = metrics_series_get(g, LBL("a"));
    metrics_add(s, 1);
    metrics_add(s, 1);
    metrics_add(s, -0.5);
    assert_true(metrics_value(s) == 1.5);
    metrics_family_zero(g);
    assert_true(metrics_value(s) == 0);
    metrics_free(r);
}

/* Waypoint's real exposition passes the real promtool (skipped when not installed). */
static void test_promtool(void **state)
{
    (void)state;
    if (access("/usr/bin/promtool", X_OK) != 0) {
        fprintf(stderr, "promtool not installed: skipping the promtool check\n");
        skip();
    }
    obs *o = obs_new();
    assert_non_null(o);
    obs_observe(o, OBS_H_WHOIS, "pg-main", "ok", 800);
    obs_observe(o, OBS_H_CONNECT, "pg-main", NULL, 12000);
    obs_cancel(o, "pg-main", "forwarded");
    obs_set_parked(o, "pg-main", 0);
    obs_conn c = {.event = "conn_refused",
                  .listener = "pg-main",
                  .reason = "no_grant",
                  .sqlstate = "28000",
                  .outcome = "refused"};
    obs_conn_refused(o, &c);
    char *text = metrics_render(obs_registry(o), NULL);
    assert_non_null(text);
    char path[] = "/tmp/wp-metrics-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "promtool check metrics < %s", path);
    int rc = system(cmd);
    unlink(path);
    if (rc != 0)
        fprintf(stderr, "%s\n", text);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(text, "waypoint_refusals_total{listener=\"pg-main\",reason=\"no_grant\","
                                 "sqlstate=\"28000\"} 1\n"));
    assert_non_null(strstr(text, "waypoint_build_info{version=\"" WP_VERSION "\"} 1\n"));
    free(text);
    obs_free(o);
}

static void test_audit_record(void **state)
{
    (void)state;
    char *tags[] = {"tag:ci", "tag:prod"};
    obs_conn c = {.event = "conn_end",
                  .session_id = 7,
                  .listener = "pg-main",
                  .peer = "100.64.0.1:5555",
                  .login = "alice@example.com",
                  .node = "laptop.tail1234.ts.net.",
                  .tags = tags,
                  .ntags = 2,
                  .database = "appdb",
                  .role = "wp_alice_laptop_appdb",
                  .presets = "public:readonly",
                  .rules = "1:appdb,1:*",
                  .tls = 1,
                  .outcome = "killed",
                  .sqlstate = "57P01",
                  .duration_ms = 1234,
                  .bytes_in = 10,
                  .bytes_out = 20,
                  .time_ms = 1700000000123LL};
    json_t *r = obs_audit_record(&c);
    assert_non_null(r);
    char *s = json_dumps(r, JSON_COMPACT | JSON_SORT_KEYS);
    assert_string_equal(
        s, "{\"bytes_in\":10,\"bytes_out\":20,\"database\":\"appdb\",\"duration_ms\":1234,"
           "\"event\":\"conn_end\",\"listener\":\"pg-main\",\"login\":\"alice@example.com\","
           "\"message\":null,\"node\":\"laptop.tail1234.ts.net.\",\"outcome\":\"killed\","
           "\"peer\":\"100.64.0.1:5555\",\"presets\":\"public:readonly\",\"reason\":null,"
           "\"role\":\"wp_alice_laptop_appdb\",\"rules\":\"1:appdb,1:*\",\"session\":7,"
           "\"sqlstate\":\"57P01\",\"tags\":[\"tag:ci\",\"tag:prod\"],"
           "\"time\":\"2023-11-14T22:13:20.123Z\",\"tls\":true}");
    free(s);
    json_decref(r);
    /* a refusal before identification: unknown fields are null, not missing */
    obs_conn early = {.event = "conn_refused",
                      .listener = "pg-main",
                      .peer = "1.2.3.4:1",
                      .outcome = "refused",
                      .reason = "not_on_tailnet",
                      .sqlstate = "28000"};
    r = obs_audit_record(&early);
    assert_true(json_is_null(json_object_get(r, "login")));
    assert_true(json_is_null(json_object_get(r, "session")));
    assert_int_equal(json_array_size(json_object_get(r, "tags")), 0);
    json_decref(r);
}

static void bytes_are(const char *in, const char *want)
{
    json_t *j = obs_json_bytes(in);
    assert_non_null(j);
    assert_string_equal(json_string_value(j), want);
    json_decref(j);
}

/* Any bytes make a JSON string: those not in a well-formed UTF-8 sequence become \xNN. */
static void test_json_bytes(void **state)
{
    (void)state;
    bytes_are("appdb", "appdb");
    bytes_are("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x90\x98",
              "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x90\x98");
    bytes_are("nosuchdb_\xff", "nosuchdb_\\xff");
    bytes_are("nosuchdb_\xe2\x82", "nosuchdb_\\xe2\\x82"); /* cut short at the end */
    bytes_are("a\xe2\x82z", "a\\xe2\\x82z");               /* cut short in the middle */
    bytes_are("\xc0\xaf", "\\xc0\\xaf");                   /* overlong '/' */
    bytes_are("\xed\xa0\x80", "\\xed\\xa0\\x80");          /* a surrogate */
    bytes_are("\xf4\x90\x80\x80", "\\xf4\\x90\\x80\\x80"); /* above U+10FFFF */
    bytes_are("\x80\xc3\xa9\xfe", "\\x80\xc3\xa9\\xfe");   /* valid kept between */
    bytes_are("", "");
    /* A whole record with such a name encodes (it used to be "out of memory"). */
    obs_conn c = {.event = "conn_refused", .database = "nosuchdb_\xff", .node = "n\xe2\x82"};
    json_t *r = obs_audit_record(&c);
    assert_non_null(r);
    assert_string_equal(json_string_value(json_object_get(r, "database")), "nosuchdb_\\xff");
    assert_string_equal(json_string_value(json_object_get(r, "node")), "n\\xe2\\x82");
    json_decref(r);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    static char buf[8192];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* One line per record; a rotated file is reopened; a failed write is reported. */
static void test_audit_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/wp-audit-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256], rotated[256], err[256];
    snprintf(path, sizeof(path), "%s/audit.jsonl", dir);
    snprintf(rotated, sizeof(rotated), "%s/audit.jsonl.1", dir);
    audit_log *a = audit_new();
    json_t *rec = json_pack("{s:s}", "event", "x");
    assert_int_equal(audit_write(a, rec, err, sizeof(err)), 1); /* disabled */
    assert_int_equal(audit_set_path(a, path, err, sizeof(err)), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(audit_write(a, rec, err, sizeof(err)), 0);
    assert_int_equal(audit_write(a, rec, err, sizeof(err)), 0);
    assert_string_equal(slurp(path), "{\"event\":\"x\"}\n{\"event\":\"x\"}\n");
    assert_int_equal(rename(path, rotated), 0); /* logrotate */
    assert_int_equal(audit_reopen(a, err, sizeof(err)), 0);
    assert_int_equal(audit_write(a, rec, err, sizeof(err)), 0);
    assert_string_equal(slurp(path), "{\"event\":\"x\"}\n");
    /* /dev/full: every write fails with ENOSPC, and says so */
    assert_int_equal(audit_set_path(a, "/dev/full", err, sizeof(err)), 0);
    assert_int_equal(audit_write(a, rec, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "No space left on device"));
    assert_int_equal(audit_set_path(a, "/nonexistent/dir/a.jsonl", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "cannot open audit file"));
    json_decref(rec);
    audit_free(a);
    unlink(path);
    unlink(rotated);
    rmdir(dir);
}

/* A failed audit write is counted in waypoint_audit_write_errors_total. */
static void test_audit_error_metric(void **state)
{
    (void)state;
    obs *o = obs_new();
    assert_int_equal(obs_audit_set_path(o, "/dev/full"), 0);
    obs_conn c = {.event = "conn_refused",
                  .listener = "pg-main",
                  .reason = "no_grant",
                  .sqlstate = "28000",
                  .outcome = "refused"};
    obs_conn_refused(o, &c);
    obs_conn_refused(o, &c);
    char *text = metrics_render(obs_registry(o), NULL);
    assert_non_null(strstr(text, "\nwaypoint_audit_write_errors_total 2\n"));
    free(text);
    obs_free(o);
}

static void test_sessreg_kill(void **state)
{
    (void)state;
    obs *o = obs_new();
    sessreg *r = obs_sessions(o);
    sessreg_info a = {.listener = "pg-main", .login = "alice@example.com", .since_ms = 1000};
    sessreg_info b = {.listener = "pg-main", .login = "bob@example.com", .since_ms = 2000};
    sessreg_entry *ea = sessreg_add(r, &a), *eb = sessreg_add(r, &b);
    assert_non_null(ea);
    assert_non_null(eb);
    assert_true(sessreg_id(eb) > sessreg_id(ea));
    atomic_fetch_add(sessreg_bytes_in(ea), 42);
    json_t *list = sessreg_list(r);
    assert_int_equal(json_array_size(list), 2);
    json_decref(list);
    char *text = metrics_render(obs_registry(o), NULL);
    assert_non_null(strstr(text, "waypoint_active_sessions{listener=\"pg-main\"} 2\n"));
    free(text);

    uint64_t ids[4];
    assert_int_equal(sessreg_kill(r, "nobody@example.com", 0, "m", ids, 4), 0);
    assert_int_equal(sessreg_kill(r, NULL, 0, "m", ids, 4), 0); /* no selector: nothing */
    struct pollfd p = {.fd = sessreg_kill_fd(ea), .events = POLLIN};
    assert_int_equal(poll(&p, 1, 0), 0);
    assert_int_equal(sessreg_kill(r, "alice@example.com", 0, "bye", ids, 4), 1);
    assert_int_equal(ids[0], sessreg_id(ea));
    assert_int_equal(poll(&p, 1, 0), 1); /* the relay would wake now */
    p.fd = sessreg_kill_fd(eb);
    assert_int_equal(poll(&p, 1, 0), 0); /* bob untouched */
    char msg[64];
    sessreg_kill_message(r, ea, msg, sizeof(msg));
    assert_string_equal(msg, "bye");
    assert_int_equal(sessreg_wait_gone(r, ids, 1, wp_now_ms() + 50), 1);
    sessreg_remove(r, ea);
    assert_int_equal(sessreg_wait_gone(r, ids, 1, wp_now_ms() + 50), 0);

    json_t *req = json_pack("{s:s,s:I}", "cmd", "kill", "session", (json_int_t)sessreg_id(eb));
    uint64_t bid = sessreg_id(eb);
    sessreg_remove(r, eb); /* gone before the kill: matches nothing */
    json_t *reply = admin_handle(o, req);
    assert_true(json_is_true(json_object_get(reply, "ok")));
    assert_int_equal(json_array_size(json_object_get(reply, "killed")), 0);
    (void)bid;
    json_decref(reply);
    json_decref(req);
    req = json_pack("{s:s,s:s,s:I}", "cmd", "kill", "login", "x", "session", (json_int_t)1);
    reply = admin_handle(o, req);
    assert_false(json_is_true(json_object_get(reply, "ok")));
    json_decref(reply);
    json_decref(req);
    req = json_pack("{s:s}", "cmd", "drop tables");
    reply = admin_handle(o, req);
    assert_string_equal(json_string_value(json_object_get(reply, "error")),
                        "unknown cmd: use \"sessions\" or \"kill\"");
    json_decref(reply);
    json_decref(req);
    text = metrics_render(obs_registry(o), NULL);
    assert_non_null(strstr(text, "waypoint_active_sessions{listener=\"pg-main\"} 0\n"));
    free(text);
    obs_free(o);
}

static void test_refusal_reason(void **state)
{
    (void)state;
    assert_string_equal(obs_refusal_reason(NULL, ""), "startup");
    assert_string_equal(obs_refusal_reason("check", "53300"), "listener_cap");
    assert_string_equal(obs_refusal_reason("check", "28000"), "tls_required");
    assert_string_equal(obs_refusal_reason("check", "0A000"), "replication");
    assert_string_equal(obs_refusal_reason("check", "08P01"), "protocol");
    assert_string_equal(obs_refusal_reason("authorize", "53300"), "user_cap");
    assert_string_equal(obs_refusal_reason("authorize", "22023"), "invalid_presets");
    assert_string_equal(obs_refusal_reason("authorize", "28000"), "no_grant");
    assert_string_equal(obs_refusal_reason("backend_login", "28P01"), "backend_login");
    assert_string_equal(obs_refusal_reason("not_on_tailnet", NULL), "not_on_tailnet");
}

static void test_presets_str(void **state)
{
    (void)state;
    grant_pair pairs[] = {{GRANT_PRESET_READWRITE, "app"}, {GRANT_PRESET_READONLY, "public"}};
    grant_effective g = {.pairs = pairs, .npairs = 2};
    char out[64];
    obs_presets_str(&g, out, sizeof(out));
    assert_string_equal(out, "app:readwrite,public:readonly");
    char small[20];
    obs_presets_str(&g, small, sizeof(small));
    assert_string_equal(small, "app:readwrite"); /* whole entries only */
    obs_presets_str(NULL, out, sizeof(out));
    assert_string_equal(out, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),          cmocka_unit_test(test_format_double),
        cmocka_unit_test(test_render_exact),   cmocka_unit_test(test_bounded_series),
        cmocka_unit_test(test_gauge_add_zero), cmocka_unit_test(test_promtool),
        cmocka_unit_test(test_audit_record),   cmocka_unit_test(test_json_bytes),
        cmocka_unit_test(test_audit_file),     cmocka_unit_test(test_audit_error_metric),
        cmocka_unit_test(test_sessreg_kill),   cmocka_unit_test(test_presets_str),
        cmocka_unit_test(test_refusal_reason),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
