/*
 * test_tls: real TLS handshakes over socketpairs.
 *
 * Server side: tls_server_accept in the test thread against an independent mbedTLS
 * client in a helper thread (SNI, ALPN, data both ways, deadline, pre-handshake
 * plaintext). Backend side: tls_client_start against a fake PostgreSQL server thread
 * that answers the SSLRequest as told ('S', 'N', garbage, 'S' plus stray bytes) and then
 * runs tls_server_accept. Certificates come from the openssl CLI in a temp dir; the
 * channel-binding hash is checked against `openssl x509 -outform DER | sha256sum`.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <errno.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/ssl.h>
#include <mbedtls/version.h>

#include "standin.h"
#include "tailscale.h"
#include "tls.h"

static char dir[64];
static char srv_crt[128], srv_key[128], other_crt[128], node_crt[128];
static unsigned char srv_sha[32];

/* --- fixtures -------------------------------------------------------------------------- */

static int run(const char *cmd)
{
    char full[2048];
    snprintf(full, sizeof(full), "cd '%s' && (%s) >/dev/null 2>&1", dir, cmd);
    return system(full);
}

/* A certificate without SANs, signed with the given digest (for CN-only and channel
 * binding cases). */
static int make_plain_cert(const char *base, const char *cn, const char *md)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout %s.key -out %s.crt -days 30 -subj '/CN=%s' -%s && "
             "openssl x509 -in %s.crt -outform DER | openssl dgst -%s -binary > %s.cb",
             base, base, cn, md, base, strcmp(md, "sha1") == 0 ? "sha256" : md, base);
    return run(cmd);
}

static int make_cert(const char *base, const char *cn, const char *san, int pair)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout %s.key -out %s.crt -days 30 -subj /CN=%s -addext subjectAltName=%s",
             base, base, cn, san);
    if (run(cmd) != 0)
        return -1;
    if (pair) {
        snprintf(cmd, sizeof(cmd), "cat %s.key %s.crt > %s.pem", base, base, cn);
        return run(cmd);
    }
    return 0;
}

static int read_sha(void)
{
    if (run("openssl x509 -in srv.crt -outform DER | sha256sum | cut -c1-64 > srv.sha") != 0)
        return -1;
    char path[128], hex[80] = {0};
    snprintf(path, sizeof(path), "%s/srv.sha", dir);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(hex, sizeof(hex), f)) {
        if (f)
            fclose(f);
        return -1;
    }
    fclose(f);
    for (int i = 0; i < 32; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return -1;
        srv_sha[i] = (unsigned char)v;
    }
    return 0;
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/wp-test-tls.XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    snprintf(srv_crt, sizeof(srv_crt), "%s/srv.crt", dir);
    snprintf(srv_key, sizeof(srv_key), "%s/srv.key", dir);
    snprintf(other_crt, sizeof(other_crt), "%s/other.crt", dir);
    snprintf(node_crt, sizeof(node_crt), "%s/node.crt", dir);
    if (ts_global_init() != WP_OK)
        return -1;
    if (make_cert("srv", "db.example.com", "DNS:db.example.com,IP:127.0.0.1", 0) != 0 ||
        make_cert("other", "db.example.com", "DNS:db.example.com", 0) != 0 ||
        make_cert("node", "node.tail1234.ts.net", "DNS:node.tail1234.ts.net", 1) != 0 ||
        make_plain_cert("ipcn", "127.0.0.1", "sha256") != 0 ||
        make_plain_cert("ipwild", "*.0.0.1", "sha256") != 0 ||
        make_plain_cert("sha1", "db.example.com", "sha1") != 0 ||
        make_plain_cert("sha384", "db.example.com", "sha384") != 0)
        return -1;
    return read_sha();
}

static int group_teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ts_global_cleanup();
    return system(cmd) == 0 ? 0 : -1;
}

static wp_status fake_fetch(void *arg, const char *domain, char **pem, size_t *pem_len,
                            wp_error *err)
{
    (void)arg;
    char path[400];
    snprintf(path, sizeof(path), "%s/%s.pem", dir, domain);
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        wp_error_set(err, "28000", "fake: no cert");
        return WP_ERR_TAILSCALE;
    }
    char *buf = malloc(65536);
    size_t n = buf ? fread(buf, 1, 65536, fp) : 0;
    fclose(fp);
    if (!buf)
        return WP_ERR_NOMEM;
    *pem = buf;
    *pem_len = n;
    return WP_OK;
}

/* dir/base.ext */
static const char *fixture(const char *base, const char *ext)
{
    static char paths[4][160];
    static int next;
    char *p = paths[next++ % 4];
    snprintf(p, sizeof(paths[0]), "%s/%s.%s", dir, base, ext);
    return p;
}

/* A server context whose file certificate is base.crt/base.key (NULL: none). */
static tls_server_ctx *new_server_as(const char *base)
{
    char crt[160], key[160];
    cfg_listener l = {0};
    if (base) {
        snprintf(crt, sizeof(crt), "%s", fixture(base, "crt"));
        snprintf(key, sizeof(key), "%s", fixture(base, "key"));
        l.cert_file = crt;
        l.key_file = key;
    }
    l.use_tailscale_tls = true;
    tls_server_ctx *s = NULL;
    wp_error err;
    wp_error_clear(&err);
    assert_int_equal(tls_server_new_src(&l, fake_fetch, NULL, &s, &err), WP_OK);
    return s;
}

static tls_server_ctx *new_server(int with_file)
{
    return new_server_as(with_file ? "srv" : NULL);
}

/* --- independent mbedTLS client in a thread ------------------------------------------ */

typedef struct cli {
    int fd;
    const char *sni;
    const char *ca;  /* verify against this CA when set */
    int alpn;        /* 0: none, 1: "postgresql", 2: "h2" only */
    const char *pre; /* plaintext sent before the ClientHello */
    size_t pre_len;
    int hs_rc;
    char alpn_got[32];
    char got[8];
    char peer_cn[128];
    int tls12;                        /* offer TLS 1.2 only */
    int no_ticket;                    /* do not ask for a session ticket */
    mbedtls_ssl_session *save;        /* set: keep the session here after the handshake */
    const mbedtls_ssl_session *offer; /* set: try to resume this session */
    int srv_resumed;                  /* serve_one: what tls_io_resumed said */
    char version[16];                 /* the negotiated version, "TLSv1.2" or "TLSv1.3" */
} cli;

static int cli_send(void *ctx, const unsigned char *b, size_t n)
{
    ssize_t r = send(*(int *)ctx, b, n, MSG_NOSIGNAL);
    return r < 0 ? MBEDTLS_ERR_SSL_INTERNAL_ERROR : (int)r;
}

static int cli_recv(void *ctx, unsigned char *b, size_t n)
{
    ssize_t r = recv(*(int *)ctx, b, n, 0);
    return r < 0 ? MBEDTLS_ERR_SSL_INTERNAL_ERROR : (int)r;
}

static void *client_main(void *arg)
{
    cli *c = arg;
    static const char *alpn[] = {"postgresql", NULL}, *h2[] = {"h2", NULL};
    mbedtls_entropy_context ent;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_ssl_config conf;
    mbedtls_ssl_context ssl;
    mbedtls_x509_crt ca;
    mbedtls_entropy_init(&ent);
    mbedtls_ctr_drbg_init(&drbg);
    mbedtls_ssl_config_init(&conf);
    mbedtls_ssl_init(&ssl);
    mbedtls_x509_crt_init(&ca);
    c->hs_rc = -1;
    if (c->pre && send(c->fd, c->pre, c->pre_len, MSG_NOSIGNAL) != (ssize_t)c->pre_len)
        goto out;
    if (mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &ent, NULL, 0) ||
        mbedtls_ssl_config_defaults(&conf, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                    MBEDTLS_SSL_PRESET_DEFAULT))
        goto out;
    mbedtls_ssl_conf_rng(&conf, mbedtls_ctr_drbg_random, &drbg);
    mbedtls_ssl_conf_authmode(&conf, MBEDTLS_SSL_VERIFY_NONE);
    if (c->ca) {
        if (mbedtls_x509_crt_parse_file(&ca, c->ca) != 0)
            goto out;
        mbedtls_ssl_conf_ca_chain(&conf, &ca, NULL);
        mbedtls_ssl_conf_authmode(&conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    }
    if (c->alpn && mbedtls_ssl_conf_alpn_protocols(&conf, c->alpn == 2 ? h2 : alpn))
        goto out;
    if (c->tls12) {
#if MBEDTLS_VERSION_NUMBER >= 0x03000000
        mbedtls_ssl_conf_max_tls_version(&conf, MBEDTLS_SSL_VERSION_TLS1_2);
#endif
    }
    mbedtls_ssl_conf_session_tickets(&conf, c->no_ticket ? MBEDTLS_SSL_SESSION_TICKETS_DISABLED
                                                         : MBEDTLS_SSL_SESSION_TICKETS_ENABLED);
    if (mbedtls_ssl_setup(&ssl, &conf) || (c->sni && mbedtls_ssl_set_hostname(&ssl, c->sni)))
        goto out;
    if (c->offer && mbedtls_ssl_set_session(&ssl, c->offer) != 0)
        goto out;
    mbedtls_ssl_set_bio(&ssl, &c->fd, cli_send, cli_recv, NULL);
    c->hs_rc = mbedtls_ssl_handshake(&ssl);
    if (c->hs_rc != 0)
        goto out;
    if (c->save && mbedtls_ssl_get_session(&ssl, c->save) != 0)
        c->hs_rc = -2;
    snprintf(c->version, sizeof(c->version), "%s", mbedtls_ssl_get_version(&ssl));
    const char *a = mbedtls_ssl_get_alpn_protocol(&ssl);
    snprintf(c->alpn_got, sizeof(c->alpn_got), "%s", a ? a : "");
    const mbedtls_x509_crt *peer = mbedtls_ssl_get_peer_cert(&ssl);
    if (peer)
        mbedtls_x509_dn_gets(c->peer_cn, sizeof(c->peer_cn), &peer->subject);
    if (mbedtls_ssl_write(&ssl, (const unsigned char *)"ping", 4) == 4) {
        size_t got = 0;
        while (got < 4) {
            int r = mbedtls_ssl_read(&ssl, (unsigned char *)c->got + got, 4 - got);
            if (r <= 0)
                break;
            got += (size_t)r;
        }
    }
    mbedtls_ssl_close_notify(&ssl);
out:
    mbedtls_ssl_free(&ssl);
    mbedtls_ssl_config_free(&conf);
    mbedtls_x509_crt_free(&ca);
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&ent);
    shutdown(c->fd, SHUT_RDWR);
    return NULL;
}

/* Runs one server accept against the client c; returns the accept status. On success
 * also echoes ping/pong, checks EOF after close_notify and copies the SNI. */
static wp_status serve_one(tls_server_ctx *s, cli *c, int require_alpn, char *sni_out, size_t sni_n)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    c->fd = sv[1];
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, client_main, c), 0);
    wp_io io;
    wp_error err;
    wp_error_clear(&err);
    wp_status st = tls_server_accept(s, sv[0], require_alpn, wp_now_ms() + 5000, &io, &err);
    if (st == WP_OK) {
        c->srv_resumed = tls_io_resumed(&io);
        const char *sni = tls_io_sni(&io);
        snprintf(sni_out, sni_n, "%s", sni ? sni : "(none)");
        char buf[8] = {0};
        assert_int_equal(io_read_full(&io, buf, 4, wp_now_ms() + 5000), WP_OK);
        assert_memory_equal(buf, "ping", 4);
        assert_int_equal(io_write_all(&io, "pong", 4, wp_now_ms() + 5000), WP_OK);
        assert_int_equal(io_read_full(&io, buf, 1, wp_now_ms() + 5000), WP_ERR_CLOSED);
        tls_io_free(&io);
    } else {
        assert_true(wp_error_isset(&err));
    }
    close(sv[0]);
    pthread_join(t, NULL);
    close(sv[1]);
    return st;
}

/* --- server-side tests ----------------------------------------------------------------- */

static void test_data_both_ways_and_sni(void **state)
{
    (void)state;
    tls_server_ctx *s = new_server(1);
    cli c = {.sni = "db.example.com", .ca = srv_crt};
    char sni[300];
    assert_int_equal(serve_one(s, &c, 0, sni, sizeof(sni)), WP_OK);
    assert_int_equal(c.hs_rc, 0);
    assert_string_equal(sni, "db.example.com");
    assert_memory_equal(c.got, "pong", 4);
    assert_string_equal(c.alpn_got, "");
    tls_server_free(s);
}

static void test_no_sni(void **state)
{
    (void)state;
    tls_server_ctx *s = new_server(1);
    cli c = {0};
    char sni[300];
    assert_int_equal(serve_one(s, &c, 0, sni, sizeof(sni)), WP_OK);
    assert_string_equal(sni, "(none)");
    assert_string_equal(c.peer_cn, "CN=db.example.com");
    tls_server_free(s);
}

static void test_tailscale_name_gets_tailscale_cert(void **state)
{
    (void)state;
    tls_server_ctx *s = new_server(1);
    cli c = {.sni = "node.tail1234.ts.net", .ca = node_crt};
    char sni[300];
    assert_int_equal(serve_one(s, &c, 0, sni, sizeof(sni)), WP_OK);
    assert_int_equal(c.hs_rc, 0);
    assert_string_equal(c.peer_cn, "CN=node.tail1234.ts.net");
    assert_string_equal(sni, "node.tail1234.ts.net");
    tls_server_free(s);
}

static void test_no_certificate_fails_handshake(void **state)
{
    (void)state;
    tls_server_ctx *s = new_server(0);
    cli c = {.sni = "db.example.com"};
    char sni[300];
    assert_int_equal(serve_one(s, &c, 0, sni, sizeof(sni)), WP_ERR_TLS);
    assert_int_not_equal(c.hs_rc, 0);
    cli d = {0}; /* no SNI and no file certificate */
    assert_int_equal(serve_one(s, &d, 0, sni, sizeof(sni)), WP_ERR_TLS);
    assert_int_not_equal(d.hs_rc, 0);
    tls_server_free(s);
}

static void test_direct_tls_requires_alpn(void **state)
{
    (void)state;
    tls_server_ctx *s = new_server(1);
    char sni[300];
    cli with = {.sni = "db.example.com", .alpn = 1};
    assert_int_equal(serve_one(s, &with, 1, sni, sizeof(sni)), WP_OK);
    assert_string_equal(with.alpn_got, "postgresql");
    cli without = {.sni = "db.example.com"};
    assert_int_equal(serve_one(s, &without, 1, sni, sizeof(sni)), WP_ERR_TLS);
    assert_int_not_equal(without.hs_rc, 0);
    /* After an SSLRequest, ALPN is optional. */
    cli plain = {.sni = "db.example.com"};
    assert_int_equal(serve_one(s, &plain, 0, sni, sizeof(sni)), WP_OK);
    /* Offering only another protocol is refused on both paths. */
    cli h2 = {.sni = "db.example.com", .alpn = 2};
    assert_int_equal(serve_one(s, &h2, 0, sni, sizeof(sni)), WP_ERR_TLS);
    assert_int_not_equal(h2.hs_rc, 0);
    tls_server_free(s);
}

static void test_handshake_deadline(void **state)
{
    (void)state;
    tls_server_ctx *s = new_server(1);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    wp_io io;
    wp_error err;
    wp_error_clear(&err);
    int64_t t0 = wp_now_ms();
    assert_int_equal(tls_server_accept(s, sv[0], 0, t0 + 300, &io, &err), WP_ERR_TIMEOUT);
    int64_t took = wp_now_ms() - t0;
    assert_true(took >= 290 && took < 5000);
    assert_non_null(strstr(err.message, "timed out"));
    close(sv[0]);
    close(sv[1]);
    tls_server_free(s);
}

static void test_plaintext_before_handshake_rejected(void **state)
{
    (void)state;
    tls_server_ctx *s = new_server(1);
    /* A plaintext StartupMessage pipelined ahead of the ClientHello. */
    static const char startup[] = "\0\0\0\x15\0\x03\0\0user\0alice\0\0";
    cli c = {.sni = "db.example.com", .pre = startup, .pre_len = sizeof(startup) - 1};
    char sni[300];
    assert_int_equal(serve_one(s, &c, 0, sni, sizeof(sni)), WP_ERR_TLS);
    assert_int_not_equal(c.hs_rc, 0);
    tls_server_free(s);
}

/* --- session resumption ---------------------------------------------------------------- */

/* serve_one without cmocka asserts, for worker threads: 0 when the handshake and the
 * ping/pong both worked (c->srv_resumed then says how the server saw it). */
static int serve_quiet(tls_server_ctx *s, cli *c)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        return -1;
    c->fd = sv[1];
    pthread_t t;
    if (pthread_create(&t, NULL, client_main, c) != 0) {
        close(sv[0]);
        close(sv[1]);
        return -1;
    }
    wp_io io;
    wp_error err;
    wp_error_clear(&err);
    int rc = -1;
    if (tls_server_accept(s, sv[0], 0, wp_now_ms() + 10000, &io, &err) == WP_OK) {
        c->srv_resumed = tls_io_resumed(&io);
        char buf[4];
        if (io_read_full(&io, buf, 4, wp_now_ms() + 10000) == WP_OK &&
            memcmp(buf, "ping", 4) == 0 &&
            io_write_all(&io, "pong", 4, wp_now_ms() + 10000) == WP_OK)
            rc = 0;
        tls_io_free(&io);
    }
    close(sv[0]);
    pthread_join(t, NULL);
    close(sv[1]);
    return rc == 0 && c->hs_rc == 0 ? 0 : -1;
}

/* A listener context with tickets and a session cache (the file certificate srv) that
 * offers clients at most version v. */
static tls_server_ctx *new_resuming_server_v(const char *name, cfg_tls_version v)
{
    char crt[160], key[160];
    snprintf(crt, sizeof(crt), "%s", fixture("srv", "crt"));
    snprintf(key, sizeof(key), "%s", fixture("srv", "key"));
    cfg_listener l = {.name = (char *)name,
                      .cert_file = crt,
                      .key_file = key,
                      .tls_ticket_lifetime_ms = 3600 * 1000,
                      .tls_session_cache_size = 64,
                      .tls_max_version = v};
    tls_server_ctx *s = NULL;
    wp_error err;
    wp_error_clear(&err);
    assert_int_equal(tls_server_new_src(&l, NULL, NULL, &s, &err), WP_OK);
    return s;
}

static tls_server_ctx *new_resuming_server(const char *name)
{
    return new_resuming_server_v(name, CFG_TLSV_1_3);
}

/* One full handshake that saves the session, then one that offers it: 0 when the first
 * was full and the second resumed (on server s2, which may be another listener). */
static int full_then_resume(tls_server_ctx *s, tls_server_ctx *s2, int no_ticket, int *resumed)
{
    mbedtls_ssl_session sess;
    mbedtls_ssl_session_init(&sess);
    cli a = {.sni = "db.example.com", .tls12 = 1, .no_ticket = no_ticket, .save = &sess};
    int rc = serve_quiet(s, &a);
    if (rc == 0 && a.srv_resumed)
        rc = -1; /* the first handshake cannot be a resumption */
    cli b = {.sni = "db.example.com", .tls12 = 1, .no_ticket = no_ticket, .offer = &sess};
    if (rc == 0)
        rc = serve_quiet(s2, &b);
    *resumed = b.srv_resumed;
    mbedtls_ssl_session_free(&sess);
    return rc;
}

/* A real mbedTLS client resumes by ticket and, with tickets off, by session ID; another
 * listener's context (own ticket key, own cache) gives a full handshake instead. */
static void test_resumption_ticket_and_cache(void **state)
{
    (void)state;
    tls_server_ctx *a = new_resuming_server("a"), *b = new_resuming_server("b");
    for (int no_ticket = 0; no_ticket <= 1; no_ticket++) {
        int resumed = -1;
        assert_int_equal(full_then_resume(a, a, no_ticket, &resumed), 0);
        assert_int_equal(resumed, 1);
        assert_int_equal(full_then_resume(a, b, no_ticket, &resumed), 0);
        assert_int_equal(resumed, 0);
    }
    tls_server_free(a);
    tls_server_free(b);
}

/* tls_max_version: by default a client that offers TLS 1.3 gets it where the library
 * has it; a listener capped at "1.2" gives it TLS 1.2, and resumes it by a TLS 1.2
 * ticket (no key exchange), which is what the cap is for. */
static void test_max_version(void **state)
{
    (void)state;
    tls_server_ctx *def = new_resuming_server("a"),
                   *capped = new_resuming_server_v("b", CFG_TLSV_1_2);
    cli a = {.sni = "db.example.com"};
    assert_int_equal(serve_quiet(def, &a), 0);
#if defined(MBEDTLS_SSL_PROTO_TLS1_3)
    assert_string_equal(a.version, "TLSv1.3");
#else
    assert_string_equal(a.version, "TLSv1.2");
#endif
    mbedtls_ssl_session sess;
    mbedtls_ssl_session_init(&sess);
    cli b = {.sni = "db.example.com", .save = &sess};
    assert_int_equal(serve_quiet(capped, &b), 0);
    assert_string_equal(b.version, "TLSv1.2");
    assert_int_equal(b.srv_resumed, 0);
    cli c = {.sni = "db.example.com", .offer = &sess};
    assert_int_equal(serve_quiet(capped, &c), 0);
    assert_string_equal(c.version, "TLSv1.2");
    assert_int_equal(c.srv_resumed, 1);
    mbedtls_ssl_session_free(&sess);
    tls_server_free(def);
    tls_server_free(capped);
}

/* Resumption off (the defaults of a zeroed cfg_listener): every handshake is full. */
static void test_resumption_off(void **state)
{
    (void)state;
    tls_server_ctx *s = new_server(1);
    for (int no_ticket = 0; no_ticket <= 1; no_ticket++) {
        int resumed = -1;
        assert_int_equal(full_then_resume(s, s, no_ticket, &resumed), 0);
        assert_int_equal(resumed, 0);
    }
    tls_server_free(s);
}

typedef struct resume_job {
    tls_server_ctx *s;
    int id, failures, resumed;
} resume_job;

static void *resume_worker(void *arg)
{
    resume_job *j = arg;
    for (int i = 0; i < 6; i++) {
        int r = 0;
        if (full_then_resume(j->s, j->s, (i + j->id) % 2, &r) != 0)
            j->failures++;
        j->resumed += r;
    }
    return NULL;
}

/* The ticket key and the session cache are shared by every worker thread of a
 * listener: four threads store and resume sessions at once (run under TSan in CI). */
static void test_resumption_shared_by_threads(void **state)
{
    (void)state;
    tls_server_ctx *s = new_resuming_server("shared");
    resume_job jobs[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (resume_job){.s = s, .id = i};
        assert_int_equal(pthread_create(&t[i], NULL, resume_worker, &jobs[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(jobs[i].failures, 0);
        assert_int_equal(jobs[i].resumed, 6);
    }
    tls_server_free(s);
}

static void test_context_outlives_free(void **state)
{
    (void)state;
    /* A connection keeps its server context alive after the listener drops it. */
    tls_server_ctx *s = new_server(1);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    cli c = {.fd = sv[1], .sni = "db.example.com"};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, client_main, &c), 0);
    wp_io io;
    wp_error err;
    assert_int_equal(tls_server_accept(s, sv[0], 0, wp_now_ms() + 5000, &io, &err), WP_OK);
    tls_server_free(s); /* reload swapped it out */
    char buf[4];
    assert_int_equal(io_read_full(&io, buf, 4, wp_now_ms() + 5000), WP_OK);
    assert_int_equal(io_write_all(&io, "pong", 4, wp_now_ms() + 5000), WP_OK);
    io_shutdown(&io);
    tls_io_free(&io);
    close(sv[0]);
    pthread_join(t, NULL);
    close(sv[1]);
    assert_memory_equal(c.got, "pong", 4);
}

/* The real Tailscale source: ts_cert_pair against the LocalAPI stand-in. */
static void test_tailscale_source_via_localapi(void **state)
{
    (void)state;
    standin S;
    char doc[1024];
    snprintf(doc, sizeof(doc),
             "{\"identities\": [], \"certs\": {\"node.tail1234.ts.net\": "
             "{\"key\": \"%s/node.key\", \"cert\": \"%s\"}}}",
             dir, node_crt);
    assert_int_equal(standin_start(&S, doc), 0);
    ts_client *ts = ts_client_new(S.socket_path, "redo.com/cap/waypoint", 2000);
    assert_non_null(ts);
    cfg_listener l = {0};
    l.cert_file = srv_crt;
    l.key_file = srv_key;
    l.use_tailscale_tls = true;
    tls_server_ctx *s = NULL;
    wp_error err;
    assert_int_equal(tls_server_new(&l, ts, &s, &err), WP_OK);
    cli c = {.sni = "node.tail1234.ts.net", .ca = node_crt};
    char sni[300];
    assert_int_equal(serve_one(s, &c, 0, sni, sizeof(sni)), WP_OK);
    assert_string_equal(c.peer_cn, "CN=node.tail1234.ts.net");
    tls_server_free(s);

    /* use_tailscale_tls = false: the same name gets the file certificate. */
    l.use_tailscale_tls = false;
    assert_int_equal(tls_server_new(&l, ts, &s, &err), WP_OK);
    cli d = {.sni = "node.tail1234.ts.net"};
    assert_int_equal(serve_one(s, &d, 0, sni, sizeof(sni)), WP_OK);
    assert_string_equal(d.peer_cn, "CN=db.example.com");
    tls_server_free(s);
    ts_client_free(ts);
    standin_stop(&S);
}

/* --- backend side: tls_client_start against a fake PostgreSQL --------------------------- */

typedef struct fakepg {
    int fd;
    const char *reply; /* bytes answered to the SSLRequest */
    tls_server_ctx *srv;
    int ssl_request_ok;
    wp_status accept_st;
} fakepg;

static void *fakepg_main(void *arg)
{
    fakepg *f = arg;
    static const unsigned char want[8] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f};
    unsigned char req[8];
    wp_io plain;
    io_plain_init(&plain, f->fd);
    f->accept_st = WP_ERR_INTERNAL;
    if (io_read_full(&plain, req, 8, wp_now_ms() + 5000) != WP_OK)
        return NULL;
    f->ssl_request_ok = memcmp(req, want, 8) == 0;
    if (io_write_all(&plain, f->reply, strlen(f->reply), 0) != WP_OK)
        return NULL;
    wp_io io = plain;
    wp_error err;
    if (strcmp(f->reply, "S") == 0) {
        f->accept_st = tls_server_accept(f->srv, f->fd, 0, wp_now_ms() + 5000, &io, &err);
        if (f->accept_st != WP_OK)
            return NULL;
    }
    char buf[4];
    if (io_read_full(&io, buf, 4, wp_now_ms() + 5000) == WP_OK && memcmp(buf, "ping", 4) == 0)
        (void)io_write_all(&io, "pong", 4, wp_now_ms() + 5000);
    (void)io_read_full(&io, buf, 1, wp_now_ms() + 5000); /* until the client closes */
    tls_io_free(&io);
    return NULL;
}

typedef struct client_result {
    wp_status st;
    int is_tls;
    unsigned char cb[64];
    size_t cb_len;
    wp_error err;
    fakepg f;
} client_result;

/* One tls_client_start against a fake PostgreSQL serving base.crt (the backend's
 * certificate) after answering reply to the SSLRequest. */
static void backend_round_as(const char *base, const char *reply, const char *name,
                             cfg_backend_tls mode, const char *ca, client_result *r)
{
    memset(r, 0, sizeof(*r));
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    r->f = (fakepg){.fd = sv[0], .reply = reply, .srv = new_server_as(base)};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, fakepg_main, &r->f), 0);
    wp_io io;
    wp_error_clear(&r->err);
    r->st = tls_client_start(sv[1], name, mode, ca, wp_now_ms() + 5000, &io, &r->is_tls, r->cb,
                             &r->cb_len, &r->err);
    if (r->st == WP_OK) {
        char buf[4];
        assert_int_equal(io_write_all(&io, "ping", 4, wp_now_ms() + 5000), WP_OK);
        assert_int_equal(io_read_full(&io, buf, 4, wp_now_ms() + 5000), WP_OK);
        assert_memory_equal(buf, "pong", 4);
        io_shutdown(&io);
        tls_io_free(&io);
    }
    shutdown(sv[1], SHUT_RDWR);
    pthread_join(t, NULL);
    close(sv[0]);
    close(sv[1]);
    tls_server_free(r->f.srv);
}

static void backend_round(const char *reply, const char *name, cfg_backend_tls mode, const char *ca,
                          client_result *r)
{
    backend_round_as("srv", reply, name, mode, ca, r);
}

static void test_backend_require_and_channel_binding(void **state)
{
    (void)state;
    client_result r;
    backend_round("S", "db.example.com", CFG_BTLS_REQUIRE, NULL, &r);
    assert_int_equal(r.st, WP_OK);
    assert_true(r.f.ssl_request_ok);
    assert_int_equal(r.is_tls, 1);
    assert_int_equal(r.cb_len, 32);
    assert_memory_equal(r.cb, srv_sha, 32);
    /* require does not verify: a certificate for another name is accepted. */
    backend_round("S", "elsewhere.example.net", CFG_BTLS_REQUIRE, NULL, &r);
    assert_int_equal(r.st, WP_OK);
    backend_round("S", "db.example.com", CFG_BTLS_PREFER, NULL, &r);
    assert_int_equal(r.st, WP_OK);
    assert_int_equal(r.is_tls, 1);
}

static void test_backend_disable_sends_nothing(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    wp_io io;
    int is_tls = 1;
    unsigned char cb[64];
    size_t cb_len = 9;
    wp_error err;
    assert_int_equal(tls_client_start(sv[1], "db.example.com", CFG_BTLS_DISABLE, NULL,
                                      wp_now_ms() + 1000, &io, &is_tls, cb, &cb_len, &err),
                     WP_OK);
    assert_int_equal(is_tls, 0);
    assert_int_equal(cb_len, 0);
    char b;
    assert_int_equal(recv(sv[0], &b, 1, MSG_DONTWAIT), -1); /* nothing was sent */
    assert_int_equal(errno, EAGAIN);
    close(sv[0]);
    close(sv[1]);
}

static void test_backend_refuses_ssl(void **state)
{
    (void)state;
    client_result r;
    backend_round("N", "db.example.com", CFG_BTLS_PREFER, NULL, &r);
    assert_int_equal(r.st, WP_OK);
    assert_int_equal(r.is_tls, 0);
    assert_int_equal(r.cb_len, 0);
    backend_round("N", "db.example.com", CFG_BTLS_REQUIRE, NULL, &r);
    assert_int_equal(r.st, WP_ERR_TLS);
    assert_non_null(strstr(r.err.message, "does not support SSL"));
    assert_string_equal(r.err.sqlstate, "08006");
    backend_round("N", "db.example.com", CFG_BTLS_VERIFY_FULL, srv_crt, &r);
    assert_int_equal(r.st, WP_ERR_TLS);
}

static void test_backend_protocol_errors(void **state)
{
    (void)state;
    client_result r;
    backend_round("E", "db.example.com", CFG_BTLS_PREFER, NULL, &r);
    assert_int_equal(r.st, WP_ERR_PROTOCOL);
    /* Stray bytes right behind 'S' (CVE-2021-23222 pattern) are refused. */
    backend_round("SX", "db.example.com", CFG_BTLS_REQUIRE, NULL, &r);
    assert_int_equal(r.st, WP_ERR_PROTOCOL);
    assert_non_null(strstr(r.err.message, "unencrypted data"));
}

static void test_backend_verify_full(void **state)
{
    (void)state;
    client_result r;
    backend_round("S", "db.example.com", CFG_BTLS_VERIFY_FULL, srv_crt, &r);
    assert_int_equal(r.st, WP_OK);
    assert_int_equal(r.cb_len, 32);
    backend_round("S", "wrong.example.com", CFG_BTLS_VERIFY_FULL, srv_crt, &r);
    assert_int_not_equal(r.st, WP_OK);
    assert_non_null(strstr(r.err.message, "verification failed"));
    backend_round("S", "db.example.com", CFG_BTLS_VERIFY_FULL, other_crt, &r);
    assert_int_not_equal(r.st, WP_OK);
    assert_non_null(strstr(r.err.message, "verification failed"));
    backend_round("S", "127.0.0.1", CFG_BTLS_VERIFY_FULL, srv_crt, &r);
    assert_int_equal(r.st, WP_OK);
    backend_round("S", "127.0.0.2", CFG_BTLS_VERIFY_FULL, srv_crt, &r);
    assert_int_not_equal(r.st, WP_OK);
    assert_non_null(strstr(r.err.message, "127.0.0.2"));
    backend_round("S", "db.example.com", CFG_BTLS_VERIFY_FULL, NULL, &r);
    assert_int_not_equal(r.st, WP_OK);
}

/* verify-full to an IP address, certificate without SANs: the CN must be that address,
 * spelled out. A wildcard never matches an IP address (RFC 6125 section 6.4.3). */
static void test_backend_verify_full_ip_cn(void **state)
{
    (void)state;
    client_result r;
    backend_round_as("ipcn", "S", "127.0.0.1", CFG_BTLS_VERIFY_FULL, fixture("ipcn", "crt"), &r);
    assert_int_equal(r.st, WP_OK);
    backend_round_as("ipwild", "S", "127.0.0.1", CFG_BTLS_VERIFY_FULL, fixture("ipwild", "crt"),
                     &r);
    assert_int_not_equal(r.st, WP_OK);
    assert_non_null(strstr(r.err.message, "127.0.0.1"));
}

/* tls-server-end-point (RFC 5929 section 4.1): SHA-256 for a SHA-1 signed certificate,
 * the signature's own hash otherwise (SHA-384: 48 bytes). */
static void expect_channel_binding(const char *base, size_t want_len)
{
    unsigned char want[64];
    FILE *f = fopen(fixture(base, "cb"), "rb");
    assert_non_null(f);
    assert_int_equal(fread(want, 1, sizeof(want), f), want_len);
    fclose(f);
    client_result r;
    backend_round_as(base, "S", "db.example.com", CFG_BTLS_REQUIRE, NULL, &r);
    assert_int_equal(r.st, WP_OK);
    assert_int_equal(r.cb_len, want_len);
    assert_memory_equal(r.cb, want, want_len);
}

static void test_backend_channel_binding_hash(void **state)
{
    (void)state;
    expect_channel_binding("sha1", 32);
    expect_channel_binding("sha384", 48);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_data_both_ways_and_sni),
        cmocka_unit_test(test_no_sni),
        cmocka_unit_test(test_tailscale_name_gets_tailscale_cert),
        cmocka_unit_test(test_no_certificate_fails_handshake),
        cmocka_unit_test(test_direct_tls_requires_alpn),
        cmocka_unit_test(test_handshake_deadline),
        cmocka_unit_test(test_plaintext_before_handshake_rejected),
        cmocka_unit_test(test_context_outlives_free),
        cmocka_unit_test(test_resumption_ticket_and_cache),
        cmocka_unit_test(test_resumption_off),
        cmocka_unit_test(test_max_version),
        cmocka_unit_test(test_resumption_shared_by_threads),
        cmocka_unit_test(test_tailscale_source_via_localapi),
        cmocka_unit_test(test_backend_require_and_channel_binding),
        cmocka_unit_test(test_backend_disable_sends_nothing),
        cmocka_unit_test(test_backend_refuses_ssl),
        cmocka_unit_test(test_backend_protocol_errors),
        cmocka_unit_test(test_backend_verify_full),
        cmocka_unit_test(test_backend_verify_full_ip_cn),
        cmocka_unit_test(test_backend_channel_binding_hash),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
