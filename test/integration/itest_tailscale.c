/*
 * The LocalAPI client (lib/tailscale.c) against the LocalAPI stand-in: identities,
 * every failure mode (each must refuse with 28000), the timeout bound, IPv6, identities
 * changing between calls, the cert endpoint, and the stand-in's own tailscaled-like
 * refusal of Referer/Origin/Host. One stand-in per test group in its own temp dir.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "io.h"
#include "standin.h"
#include "tailscale.h"

#define CAP "redo.com/cap/waypoint"
#define CAPMAP "{\"" CAP "\": [{\"backends\": {\"pg-main\": {}}}, {\"limits\": {}}]}"

static standin S;

static int group_setup(void **state)
{
    (void)state;
    if (ts_global_init() != WP_OK)
        return -1;
    return standin_start(&S, NULL);
}

static int group_teardown(void **state)
{
    (void)state;
    standin_stop(&S);
    ts_global_cleanup();
    return 0;
}

static ts_client *client(int64_t timeout_ms)
{
    ts_client *c = ts_client_new(S.socket_path, CAP, timeout_ms);
    assert_non_null(c);
    return c;
}

/* One identity whose whois is built by the support helper, plus an optional fault. */
static void state_with(const char *match, const char *login, const char *node, const char *tags,
                       const char *fault)
{
    char *w = standin_whois_json(login, node, "nSTABLE1", tags, CAPMAP);
    assert_non_null(w);
    size_t n = strlen(w) + 256;
    char *doc = malloc(n);
    assert_non_null(doc);
    snprintf(doc, n, "{\"identities\": [{\"match\": \"%s\", \"whois\": %s}], \"fault\": %s}", match,
             w, fault ? fault : "null");
    assert_int_equal(standin_write_state(&S, doc), 0);
    free(doc);
    free(w);
}

static void unix_addr(struct sockaddr_un *sa, const char *path)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    size_t n = strlen(path);
    assert_true(n < sizeof(sa->sun_path));
    memcpy(sa->sun_path, path, n + 1);
}

static wp_status whois(ts_client *c, const char *addr, id_identity **id, wp_error *err)
{
    wp_error_clear(err);
    *id = NULL;
    return ts_whois(c, addr, id, err);
}

static void assert_refused(wp_status st, wp_status want, const wp_error *err, const char *needle)
{
    assert_int_equal(st, want);
    assert_string_equal(err->sqlstate, "28000");
    assert_true(err->message[0] != '\0');
    if (needle && !strstr(err->detail, needle))
        fail_msg("detail \"%s\" lacks \"%s\"", err->detail, needle);
}

static void test_identified(void **state)
{
    (void)state;
    state_with("100.64.0.1:12345", "alice@example.com", "alice-laptop.tail1234.ts.net.",
               "[\"tag:ci\", \"tag:db\"]", NULL);
    ts_client *c = client(2000);
    id_identity *id;
    wp_error err;
    assert_int_equal(whois(c, "100.64.0.1:12345", &id, &err), WP_OK);
    assert_non_null(id);
    assert_string_equal(id->login_name, "alice@example.com");
    assert_string_equal(id->node_name, "alice-laptop.tail1234.ts.net.");
    assert_string_equal(id->stable_id, "nSTABLE1");
    assert_non_null(id->computed_name);
    assert_string_equal(id->computed_name, "alice-laptop");
    assert_int_equal(id->user_id, 7);
    assert_int_equal(id->ntags, 2);
    assert_string_equal(id->tags[1], "tag:db");
    assert_int_equal(id->naddrs, 1);
    assert_string_equal(id->addresses[0], "100.64.0.1/32");
    assert_true(json_is_array(id->cap_rules));
    assert_int_equal(json_array_size(id->cap_rules), 2);
    id_free(id);
    ts_client_free(c);
}

static void test_not_on_tailnet(void **state)
{
    (void)state;
    state_with("100.64.0.1:12345", "alice@example.com", "a.tail1234.ts.net.", NULL, NULL);
    ts_client *c = client(2000);
    id_identity *id;
    wp_error err;
    wp_status st = whois(c, "100.64.0.1:12346", &id, &err); /* same ip, other port */
    assert_refused(st, WP_ERR_NOT_FOUND, &err, "no match for IP:port");
    assert_null(id);
    st = whois(c, "100.64.0.2:12345", &id, &err);
    assert_refused(st, WP_ERR_NOT_FOUND, &err, "404");
    ts_client_free(c);
}

static void test_fault(const char *fault, const char *needle)
{
    char quoted[32];
    snprintf(quoted, sizeof(quoted), "\"%s\"", fault);
    state_with("*", "alice@example.com", "a.tail1234.ts.net.", NULL, quoted);
    ts_client *c = client(2000);
    id_identity *id;
    wp_error err;
    wp_status st = whois(c, "100.64.0.1:1", &id, &err);
    assert_refused(st, WP_ERR_TAILSCALE, &err, needle);
    assert_null(id);
    ts_client_free(c);
}

static void test_forbidden(void **state)
{
    (void)state;
    test_fault("403", "HTTP 403");
}

static void test_server_error(void **state)
{
    (void)state;
    test_fault("500", "HTTP 500");
}

static void test_malformed(void **state)
{
    (void)state;
    test_fault("malformed", "malformed");
}

/* Only tailscaled's "no match" body means "not on the tailnet"; another 404 is a
 * tailscaled problem (still refused). */
static void test_other_404(void **state)
{
    (void)state;
    test_fault("404", "HTTP 404");
}

static void test_dropped(void **state)
{
    (void)state;
    test_fault("close", "curl error");
}

static void test_hang_times_out(void **state)
{
    (void)state;
    state_with("*", "alice@example.com", "a.tail1234.ts.net.", NULL, "\"hang\"");
    ts_client *c = client(300);
    id_identity *id;
    wp_error err;
    int64_t t0 = wp_now_ms();
    wp_status st = whois(c, "100.64.0.1:1", &id, &err);
    int64_t took = wp_now_ms() - t0;
    assert_refused(st, WP_ERR_TIMEOUT, &err, "300 ms");
    assert_true(took >= 250);
    if (took > 1300)
        fail_msg("timeout of 300 ms took %lld ms", (long long)took);
    ts_client_free(c);
}

#define CONN_LINE "connection opened"

static void whois_ok(ts_client *c)
{
    id_identity *id;
    wp_error err;
    wp_status st = whois(c, "100.64.0.1:1", &id, &err);
    if (st != WP_OK)
        fail_msg("whois failed: %s (%s)", err.message, err.detail);
    id_free(id);
}

/* Keep-alive: consecutive WhoIs calls share one LocalAPI connection, as they would with
 * tailscaled's net/http server; and a tailscaled restart in between costs nothing but a
 * fresh connection. */
static void test_keepalive_and_restart(void **state)
{
    (void)state;
    state_with("*", "alice@example.com", "a.tail1234.ts.net.", NULL, NULL);
    ts_client *c = client(2000);
    int before = standin_log_count(&S, CONN_LINE);
    assert_true(before >= 0);
    for (int i = 0; i < 3; i++)
        whois_ok(c);
    assert_int_equal(standin_log_count(&S, CONN_LINE) - before, 1);

    assert_int_equal(standin_restart(&S), 0); /* the kept connection is now dead */
    whois_ok(c);
    whois_ok(c);
    assert_int_equal(standin_log_count(&S, CONN_LINE), 1);
    ts_client_free(c);
}

/* A hang on a kept connection still times out once, with no retry (one "fault hang"
 * request), and the next call works on a fresh connection. */
static void test_keepalive_hang(void **state)
{
    (void)state;
    assert_int_equal(standin_restart(&S), 0);
    state_with("*", "alice@example.com", "a.tail1234.ts.net.", NULL, NULL);
    ts_client *c = client(300);
    whois_ok(c);
    state_with("*", "alice@example.com", "a.tail1234.ts.net.", NULL, "\"hang\"");
    id_identity *id;
    wp_error err;
    int64_t t0 = wp_now_ms();
    wp_status st = whois(c, "100.64.0.1:1", &id, &err);
    int64_t took = wp_now_ms() - t0;
    assert_refused(st, WP_ERR_TIMEOUT, &err, "300 ms");
    if (took < 250 || took > 1300)
        fail_msg("timeout of 300 ms took %lld ms", (long long)took);
    assert_int_equal(standin_log_count(&S, "fault hang"), 1);
    state_with("*", "alice@example.com", "a.tail1234.ts.net.", NULL, NULL);
    whois_ok(c);
    assert_int_equal(standin_log_count(&S, CONN_LINE), 2);
    ts_client_free(c);
}

/* A kept connection that yields nothing at all is retried exactly once on a fresh
 * connection (libcurl's own retry of a dead reused connection: two "fault close"
 * requests), and the refusal stands; after a failure the handle is not kept, so the
 * next call starts fresh and is not retried (one more). */
static void test_keepalive_dropped_retried_once(void **state)
{
    (void)state;
    assert_int_equal(standin_restart(&S), 0);
    state_with("*", "alice@example.com", "a.tail1234.ts.net.", NULL, NULL);
    ts_client *c = client(2000);
    whois_ok(c);
    state_with("*", "alice@example.com", "a.tail1234.ts.net.", NULL, "\"close\"");
    id_identity *id;
    wp_error err;
    assert_refused(whois(c, "100.64.0.1:1", &id, &err), WP_ERR_TAILSCALE, &err, "curl error");
    assert_int_equal(standin_log_count(&S, "fault close"), 2);
    assert_refused(whois(c, "100.64.0.1:1", &id, &err), WP_ERR_TAILSCALE, &err, "curl error");
    assert_int_equal(standin_log_count(&S, "fault close"), 3);
    ts_client_free(c);
}

static void test_socket_missing(void **state)
{
    (void)state;
    char path[160];
    ts_client *c =
        ts_client_new(standin_path(&S, "nothing-here.sock", path, sizeof(path)), CAP, 2000);
    assert_non_null(c);
    id_identity *id;
    wp_error err;
    assert_refused(whois(c, "100.64.0.1:1", &id, &err), WP_ERR_TAILSCALE, &err, "No such file");
    ts_client_free(c);
}

static void test_connection_refused(void **state)
{
    (void)state;
    /* A socket file nobody listens on: what a crashed tailscaled leaves behind. */
    char path[160];
    standin_path(&S, "dead.sock", path, sizeof(path));
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_un sa;
    unix_addr(&sa, path);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);
    ts_client *c = ts_client_new(path, CAP, 2000);
    id_identity *id;
    wp_error err;
    assert_refused(whois(c, "100.64.0.1:1", &id, &err), WP_ERR_TAILSCALE, &err, "dead.sock");
    ts_client_free(c);
    unlink(path);
}

static void test_ipv6(void **state)
{
    (void)state;
    state_with("fd7a:115c:a1e0::1", "bob@example.com", "bob-pc.tail1234.ts.net.", NULL, NULL);
    ts_client *c = client(2000);
    id_identity *id;
    wp_error err;
    assert_int_equal(whois(c, "[fd7a:115c:a1e0::1]:5432", &id, &err), WP_OK);
    assert_string_equal(id->login_name, "bob@example.com");
    id_free(id);
    assert_refused(whois(c, "[fd7a:115c:a1e0::2]:5432", &id, &err), WP_ERR_NOT_FOUND, &err, NULL);
    ts_client_free(c);
}

static void test_identity_changes(void **state)
{
    (void)state;
    ts_client *c = client(2000);
    id_identity *id;
    wp_error err;
    state_with("100.64.0.5", "alice@example.com", "shared.tail1234.ts.net.", NULL, NULL);
    assert_int_equal(whois(c, "100.64.0.5:4000", &id, &err), WP_OK);
    assert_string_equal(id->login_name, "alice@example.com");
    id_free(id);
    /* Same size, same second: the stand-in must still see the rewrite. */
    state_with("100.64.0.5", "carol@example.com", "shared.tail1234.ts.net.", NULL, NULL);
    assert_int_equal(whois(c, "100.64.0.5:4000", &id, &err), WP_OK);
    assert_string_equal(id->login_name, "carol@example.com");
    id_free(id);
    assert_int_equal(standin_write_state(&S, "{\"identities\": []}"), 0);
    assert_refused(whois(c, "100.64.0.5:4000", &id, &err), WP_ERR_NOT_FOUND, &err, NULL);
    ts_client_free(c);
}

static void test_set_identity_helper(void **state)
{
    (void)state;
    assert_int_equal(standin_set_identity(&S, "127.0.0.1", "tagged-devices",
                                          "ci-runner.tail1234.ts.net.",
                                          "{\"" CAP "\": [{\"x\": 1}], \"other/cap\": [1]}"),
                     0);
    ts_client *c = client(2000);
    id_identity *id;
    wp_error err;
    assert_int_equal(whois(c, "127.0.0.1:5555", &id, &err), WP_OK);
    assert_string_equal(id->login_name, "tagged-devices");
    assert_string_equal(id->node_name, "ci-runner.tail1234.ts.net.");
    assert_int_equal(json_array_size(id->cap_rules), 1); /* only the configured capability */
    id_free(id);
    ts_client_free(c);
}

static void test_bad_addr(void **state)
{
    (void)state;
    ts_client *c = client(2000);
    id_identity *id;
    wp_error err;
    const char *bad[] = {
        "",           "100.64.0.1:1&addr=1.2.3.4:5", "a b", "host.example:1", "100.64.0.1:1/../x",
        "%31.2.3.4:5"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_refused(whois(c, bad[i], &id, &err), WP_ERR_INVALID, &err, NULL);
    assert_refused(whois(c, NULL, &id, &err), WP_ERR_INVALID, &err, NULL);
    ts_client_free(c);
}

static void test_body_cap(void **state)
{
    (void)state;
    /* A 2 MiB display name: the answer exceeds the 1 MiB cap and must be refused. */
    size_t big = 2u << 20;
    char *name = malloc(big + 1);
    assert_non_null(name);
    memset(name, 'x', big);
    name[big] = '\0';
    size_t n = big + 512;
    char *doc = malloc(n);
    assert_non_null(doc);
    snprintf(doc, n,
             "{\"identities\": [{\"match\": \"*\", \"whois\": {\"Node\": {\"Name\": "
             "\"a.ts.net.\"}, \"UserProfile\": {\"LoginName\": \"a@b\", \"DisplayName\": "
             "\"%s\"}}}]}",
             name);
    assert_int_equal(standin_write_state(&S, doc), 0);
    free(doc);
    free(name);
    ts_client *c = client(5000);
    id_identity *id;
    wp_error err;
    assert_refused(whois(c, "100.64.0.1:1", &id, &err), WP_ERR_TAILSCALE, &err, "larger than");
    ts_client_free(c);
}

/* ---- concurrency: one client, several threads ---------------------------------------- */

static void *whois_loop(void *arg)
{
    ts_client *c = arg;
    for (int i = 0; i < 10; i++) {
        id_identity *id = NULL;
        wp_error err;
        if (ts_whois(c, "100.64.0.1:12345", &id, &err) != WP_OK)
            return (void *)1;
        int ok = strcmp(id->login_name, "alice@example.com") == 0;
        id_free(id);
        if (!ok)
            return (void *)1;
    }
    return NULL;
}

static void test_concurrent(void **state)
{
    (void)state;
    state_with("100.64.0.1:12345", "alice@example.com", "a.tail1234.ts.net.", NULL, NULL);
    ts_client *c = client(5000);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, whois_loop, c), 0);
    for (int i = 0; i < 4; i++) {
        void *rv;
        assert_int_equal(pthread_join(th[i], &rv), 0);
        assert_null(rv);
    }
    ts_client_free(c);
}

/* ---- cert ------------------------------------------------------------------------------ */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = malloc(65536);
    assert_non_null(buf);
    *len = fread(buf, 1, 65535, f);
    buf[*len] = '\0';
    fclose(f);
    return buf;
}

/* CertDomains from /localapi/v0/status?peers=false: the names, none (null), and a
 * tailscaled error (fail, do not invent names). */
static void test_cert_domains(void **state)
{
    (void)state;
    ts_client *c = client(2000);
    char **d = NULL;
    size_t n = 99;
    wp_error err;
    wp_error_clear(&err);
    assert_int_equal(standin_write_state(&S, "{\"identities\": [], \"cert_domains\": "
                                             "[\"Waypoint-DB.tail1234.ts.net\", \"bad name\"]}"),
                     0);
    assert_int_equal(ts_cert_domains(c, &d, &n, &err), WP_OK);
    assert_int_equal(n, 1); /* lowercased; the invalid name skipped */
    assert_string_equal(d[0], "waypoint-db.tail1234.ts.net");
    ts_free_domains(d, n);
    assert_int_equal(standin_write_state(&S, "{\"identities\": []}"), 0);
    assert_int_equal(ts_cert_domains(c, &d, &n, &err), WP_OK);
    assert_int_equal(n, 0);
    ts_free_domains(d, n);
    assert_int_equal(standin_write_state(&S, "{\"identities\": [], \"fault\": \"500\"}"), 0);
    assert_int_equal(ts_cert_domains(c, &d, &n, &err), WP_ERR_TAILSCALE);
    assert_null(d);
    assert_int_equal(n, 0);
    ts_client_free(c);
}

static void test_cert_pair(void **state)
{
    (void)state;
    char key[160], crt[160], cmd[1024];
    standin_path(&S, "db.key", key, sizeof(key));
    standin_path(&S, "db.crt", crt, sizeof(crt));
    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-days 2 -subj /CN=db.tail1234.ts.net "
             "-addext subjectAltName=DNS:db.tail1234.ts.net -keyout '%s' -out '%s' 2>/dev/null",
             key, crt);
    assert_int_equal(system(cmd), 0);
    char doc[1024];
    snprintf(doc, sizeof(doc),
             "{\"identities\": [], \"certs\": {\"db.tail1234.ts.net\": "
             "{\"key\": \"%s\", \"cert\": \"%s\"}}}",
             key, crt);
    assert_int_equal(standin_write_state(&S, doc), 0);

    ts_client *c = client(2000);
    char *pem = NULL;
    size_t pem_len = 0;
    wp_error err;
    wp_error_clear(&err);
    assert_int_equal(ts_cert_pair(c, "db.tail1234.ts.net", &pem, &pem_len, &err), WP_OK);
    size_t klen, clen;
    char *kpem = slurp(key, &klen), *cpem = slurp(crt, &clen);
    assert_int_equal(pem_len, klen + clen);
    assert_memory_equal(pem, kpem, klen); /* key first, then the chain */
    assert_memory_equal(pem + klen, cpem, clen);
    assert_non_null(strstr(pem, "PRIVATE KEY-----"));
    assert_non_null(strstr(pem + klen, "-----BEGIN CERTIFICATE-----"));
    free(kpem);
    free(cpem);
    free(pem);

    pem = NULL;
    wp_status st = ts_cert_pair(c, "other.tail1234.ts.net", &pem, &pem_len, &err);
    assert_refused(st, WP_ERR_TAILSCALE, &err, "invalid domain");
    assert_null(pem);
    const char *bad[] = {"",         "DB.tail1234.ts.net", "a/b.ts.net",
                         "..ts.net", "x.ts.net?type=key",  ".ts.net"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_refused(ts_cert_pair(c, bad[i], &pem, &pem_len, &err), WP_ERR_INVALID, &err, NULL);
    ts_client_free(c);
}

/* ---- the stand-in refuses what tailscaled refuses -------------------------------------- */

/* Sends one raw request over the stand-in's socket; returns the status code. */
static int raw_request(const char *headers)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_un sa;
    unix_addr(&sa, S.socket_path);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    char req[512];
    int n = snprintf(req, sizeof(req),
                     "GET /localapi/v0/whois?addr=100.64.0.1:12345 HTTP/1.1\r\n%s"
                     "Connection: close\r\n\r\n",
                     headers);
    assert_int_equal(write(fd, req, (size_t)n), n);
    char resp[4096];
    size_t got = 0;
    ssize_t r;
    while (got < sizeof(resp) - 1 && (r = read(fd, resp + got, sizeof(resp) - 1 - got)) > 0)
        got += (size_t)r;
    resp[got] = '\0';
    close(fd);
    int status = 0;
    assert_int_equal(sscanf(resp, "HTTP/1.1 %d", &status), 1);
    return status;
}

static void test_standin_refuses_browsers(void **state)
{
    (void)state;
    state_with("100.64.0.1:12345", "alice@example.com", "a.tail1234.ts.net.", NULL, NULL);
    assert_int_equal(raw_request("Host: local-tailscaled.sock\r\n"), 200);
    assert_int_equal(raw_request("Host: local-tailscaled.sock\r\nReferer: http://evil/\r\n"), 403);
    assert_int_equal(raw_request("Host: local-tailscaled.sock\r\nOrigin: http://evil\r\n"), 403);
    assert_int_equal(raw_request("Host: localhost\r\n"), 403);
    assert_int_equal(raw_request("Host: 127.0.0.1:41112\r\n"), 403);
    assert_int_equal(raw_request(""), 400); /* HTTP/1.1 without Host */
}

int main(void)
{
    /* clang-format off */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identified),
        cmocka_unit_test(test_not_on_tailnet),
        cmocka_unit_test(test_forbidden),
        cmocka_unit_test(test_server_error),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_other_404),
        cmocka_unit_test(test_dropped),
        cmocka_unit_test(test_hang_times_out),
        cmocka_unit_test(test_keepalive_and_restart),
        cmocka_unit_test(test_keepalive_hang),
        cmocka_unit_test(test_keepalive_dropped_retried_once),
        cmocka_unit_test(test_socket_missing),
        cmocka_unit_test(test_connection_refused),
        cmocka_unit_test(test_ipv6),
        cmocka_unit_test(test_identity_changes),
        cmocka_unit_test(test_set_identity_helper),
        cmocka_unit_test(test_bad_addr),
        cmocka_unit_test(test_body_cap),
        cmocka_unit_test(test_concurrent),
        cmocka_unit_test(test_cert_domains),
        cmocka_unit_test(test_cert_pair),
        cmocka_unit_test(test_standin_refuses_browsers),
    };
    /* clang-format on */
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
