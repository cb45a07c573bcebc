/*
 * test_certs: certificate choice by SNI (spec section 8) with a fake Tailscale source.
 *
 * Certificates are made with the openssl CLI in a private temp dir at group setup. The
 * fake fetch callback serves "<dir>/<name>.pem" (key then chain, as the LocalAPI does),
 * counts its calls and can be told to fail, so each rule is observable: which source
 * answered, and whether Tailscale was asked at all.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pthread.h>

#include "certs.h"

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/version.h>

static char dir[64];

typedef struct fake_ts {
    pthread_mutex_t mu;
    int calls;
    int fail;
    char last[256];
} fake_ts;

static wp_status fake_fetch(void *arg, const char *domain, char **pem, size_t *pem_len,
                            wp_error *err)
{
    fake_ts *f = arg;
    pthread_mutex_lock(&f->mu);
    f->calls++;
    snprintf(f->last, sizeof(f->last), "%s", domain);
    int fail = f->fail;
    pthread_mutex_unlock(&f->mu);
    if (fail) {
        wp_error_set(err, "28000", "fake: unavailable");
        return WP_ERR_TAILSCALE;
    }
    char path[400];
    snprintf(path, sizeof(path), "%s/%s.pem", dir, domain);
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        wp_error_set(err, "28000", "fake: no cert for %s", domain);
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

static int run(const char *cmd)
{
    char full[2048];
    snprintf(full, sizeof(full), "cd '%s' && (%s) >/dev/null 2>&1", dir, cmd);
    return system(full);
}

/* Self-signed EC certificate: <base>.crt / <base>.key; with pair=1 also <cn>.pem. */
static int make_cert(const char *base, const char *cn, const char *san, int days, int pair)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout %s.key -out %s.crt -days %d -subj /CN=%s %s%s",
             base, base, days, cn, san ? "-addext subjectAltName=" : "", san ? san : "");
    if (run(cmd) != 0)
        return -1;
    if (pair) {
        snprintf(cmd, sizeof(cmd), "cat %s.key %s.crt > %s.pem", base, base, cn);
        return run(cmd);
    }
    return 0;
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/wp-test-certs.XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    if (make_cert("file", "file.example.com", "DNS:db.example.com,DNS:*.wild.example.com", 90, 0) !=
            0 ||
        make_cert("node", "node.tail1234.ts.net", "DNS:node.tail1234.ts.net", 90, 1) != 0 ||
        make_cert("short", "short.tail1234.ts.net", "DNS:short.tail1234.ts.net", 1, 1) != 0 ||
        make_cert("other", "other.example.com", NULL, 90, 0) != 0)
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

typedef struct fixture {
    fake_ts fake;
    certs_store *s;
} fixture;

static char file_crt[128], file_key[128];

static certs_store *mk_store(fixture *fx, int with_file, int use_ts)
{
    snprintf(file_crt, sizeof(file_crt), "%s/file.crt", dir);
    snprintf(file_key, sizeof(file_key), "%s/file.key", dir);
    certs_opts o = {.cert_file = with_file ? file_crt : NULL,
                    .key_file = with_file ? file_key : NULL,
                    .use_tailscale = use_ts,
                    .fetch = fake_fetch,
                    .fetch_arg = &fx->fake};
    wp_error err;
    wp_error_clear(&err);
    assert_int_equal(certs_new(&o, &fx->s, &err), WP_OK);
    certs_set_retry_interval(fx->s, 0);
    return fx->s;
}

static int fx_setup(void **state)
{
    fixture *fx = calloc(1, sizeof(*fx));
    if (!fx)
        return -1;
    pthread_mutex_init(&fx->fake.mu, NULL);
    *state = fx;
    return 0;
}

static int fx_teardown(void **state)
{
    fixture *fx = *state;
    certs_free(fx->s);
    pthread_mutex_destroy(&fx->fake.mu);
    free(fx);
    return 0;
}

/* Selects and immediately releases; returns the source. */
static certs_source pick(certs_store *s, const char *sni, const certs_pair **out)
{
    const certs_pair *p = NULL;
    certs_source src = CERTS_SRC_NONE;
    wp_status st = certs_select(s, sni, &p, &src);
    if (st != WP_OK) {
        assert_int_equal(st, WP_ERR_NOT_FOUND);
        assert_null(p);
        return CERTS_SRC_NONE;
    }
    assert_non_null(p);
    if (out)
        *out = p;
    certs_release(s, p);
    return src;
}

static void test_file_san_match(void **state)
{
    fixture *fx = *state;
    certs_store *s = mk_store(fx, 1, 1);
    const certs_pair *p = NULL;
    assert_int_equal(pick(s, "db.example.com", &p), CERTS_SRC_FILE);
    assert_ptr_equal(p, certs_file_pair(s));
    assert_int_equal(pick(s, "DB.Example.COM", NULL), CERTS_SRC_FILE);
    assert_int_equal(pick(s, "file.example.com", NULL), CERTS_SRC_FILE); /* CN */
    assert_int_equal(fx->fake.calls, 0);
}

static void test_wildcard_rules(void **state)
{
    fixture *fx = *state;
    certs_store *s = mk_store(fx, 1, 1);
    const mbedtls_x509_crt *leaf = &certs_file_pair(s)->chain;
    assert_true(certs_name_matches(leaf, "x.wild.example.com"));
    assert_false(certs_name_matches(leaf, "a.b.wild.example.com"));
    assert_false(certs_name_matches(leaf, "wild.example.com"));
    assert_false(certs_name_matches(leaf, ".wild.example.com"));
    assert_false(certs_name_matches(leaf, "db.example.com.evil.net"));
    assert_false(certs_name_matches(leaf, "example.com"));
    assert_int_equal(pick(s, "x.wild.example.com", NULL), CERTS_SRC_FILE);
    assert_int_equal(fx->fake.calls, 0);
}

static void test_no_sni_uses_file(void **state)
{
    fixture *fx = *state;
    certs_store *s = mk_store(fx, 1, 1);
    assert_int_equal(pick(s, NULL, NULL), CERTS_SRC_FILE);
    assert_int_equal(pick(s, "", NULL), CERTS_SRC_FILE);
    assert_int_equal(fx->fake.calls, 0);
}

static void test_ts_name_uses_tailscale(void **state)
{
    fixture *fx = *state;
    certs_store *s = mk_store(fx, 1, 1);
    const certs_pair *p = NULL;
    assert_int_equal(pick(s, "node.tail1234.ts.net", &p), CERTS_SRC_TAILSCALE);
    assert_int_equal(fx->fake.calls, 1);
    assert_string_equal(fx->fake.last, "node.tail1234.ts.net");
    assert_ptr_not_equal(p, certs_file_pair(s));
    assert_true(certs_name_matches(&p->chain, "node.tail1234.ts.net"));
    /* The fetch name is normalised to lower case: same cache entry. */
    assert_int_equal(pick(s, "NODE.tail1234.TS.NET", NULL), CERTS_SRC_TAILSCALE);
    assert_int_equal(fx->fake.calls, 1);
}

static void test_cache_hit(void **state)
{
    fixture *fx = *state;
    certs_store *s = mk_store(fx, 0, 1);
    const certs_pair *a = NULL, *b = NULL;
    assert_int_equal(pick(s, "node.tail1234.ts.net", &a), CERTS_SRC_TAILSCALE);
    assert_int_equal(pick(s, "node.tail1234.ts.net", &b), CERTS_SRC_TAILSCALE);
    assert_ptr_equal(a, b);
    assert_int_equal(fx->fake.calls, 1);
}

static void test_tailscale_disabled_never_fetches(void **state)
{
    fixture *fx = *state;
    certs_store *s = mk_store(fx, 1, 0);
    assert_int_equal(pick(s, "node.tail1234.ts.net", NULL), CERTS_SRC_FILE);
    certs_free(s);
    s = fx->s = mk_store(fx, 0, 0);
    assert_int_equal(pick(s, "node.tail1234.ts.net", NULL), CERTS_SRC_NONE);
    assert_int_equal(pick(s, NULL, NULL), CERTS_SRC_NONE);
    assert_int_equal(fx->fake.calls, 0);
}

static void test_non_ts_name_falls_back_to_file(void **state)
{
    fixture *fx = *state;
    certs_store *s = mk_store(fx, 1, 1);
    assert_int_equal(pick(s, "unknown.example.org", NULL), CERTS_SRC_FILE);
    assert_int_equal(pick(s, "ts.net", NULL), CERTS_SRC_FILE);
    assert_int_equal(pick(s, "bad/name.ts.net", NULL), CERTS_SRC_FILE);
    assert_int_equal(pick(s, "a..b.ts.net", NULL), CERTS_SRC_FILE);
    assert_int_equal(fx->fake.calls, 0);
}

static void test_refresh_near_expiry(void **state)
{
    fixture *fx = *state;
    certs_store *s = mk_store(fx, 0, 1);
    const certs_pair *held = NULL, *again = NULL;
    certs_source src;
    /* Hold the first pair across the refresh, as a running handshake would. */
    assert_int_equal(certs_select(s, "short.tail1234.ts.net", &held, &src), WP_OK);
    assert_int_equal(src, CERTS_SRC_TAILSCALE);
    assert_int_equal(fx->fake.calls, 1);
    int64_t na = held->not_after;
    assert_int_equal(pick(s, "short.tail1234.ts.net", &again), CERTS_SRC_TAILSCALE);
    assert_int_equal(fx->fake.calls, 2); /* 1-day certificate: always within 7 days */
    assert_ptr_not_equal(again, held);
    assert_int_equal(held->not_after, na); /* old pair still alive for its holder */
    certs_release(s, held);
}

static void test_failed_refresh_keeps_cached(void **state)
{
    fixture *fx = *state;
    certs_store *s = mk_store(fx, 0, 1);
    const certs_pair *a = NULL, *b = NULL;
    assert_int_equal(pick(s, "short.tail1234.ts.net", &a), CERTS_SRC_TAILSCALE);
    fx->fake.fail = 1;
    assert_int_equal(pick(s, "short.tail1234.ts.net", &b), CERTS_SRC_TAILSCALE);
    assert_int_equal(fx->fake.calls, 2);
    assert_ptr_equal(a, b);
}

static void test_no_certificate_at_all(void **state)
{
    fixture *fx = *state;
    certs_store *s = mk_store(fx, 0, 1);
    assert_int_equal(pick(s, "missing.tail1234.ts.net", NULL), CERTS_SRC_NONE);
    assert_int_equal(fx->fake.calls, 1);
    assert_int_equal(pick(s, "db.example.com", NULL), CERTS_SRC_NONE);
    assert_int_equal(pick(s, NULL, NULL), CERTS_SRC_NONE);
    assert_int_equal(fx->fake.calls, 1);
}

static void test_retry_interval_spaces_fetches(void **state)
{
    fixture *fx = *state;
    certs_store *s = mk_store(fx, 0, 1);
    certs_set_retry_interval(s, 3600 * 1000);
    fx->fake.fail = 1;
    assert_int_equal(pick(s, "node.tail1234.ts.net", NULL), CERTS_SRC_NONE);
    fx->fake.fail = 0;
    assert_int_equal(pick(s, "node.tail1234.ts.net", NULL), CERTS_SRC_NONE);
    assert_int_equal(fx->fake.calls, 1);
}

static void test_bad_file_pair(void **state)
{
    (void)state;
    char crt[128], key[128];
    snprintf(crt, sizeof(crt), "%s/file.crt", dir);
    snprintf(key, sizeof(key), "%s/other.key", dir);
    certs_opts o = {.cert_file = crt, .key_file = key};
    certs_store *s = NULL;
    wp_error err;
    wp_error_clear(&err);
    assert_int_equal(certs_new(&o, &s, &err), WP_ERR_CONFIG);
    assert_null(s);
    assert_non_null(strstr(err.message, "does not match"));
    snprintf(crt, sizeof(crt), "%s/absent.crt", dir);
    assert_int_equal(certs_new(&o, &s, &err), WP_ERR_CONFIG);
    assert_non_null(strstr(err.message, "absent.crt"));
    o.key_file = NULL;
    assert_int_equal(certs_new(&o, &s, &err), WP_ERR_CONFIG);
}

static void test_pem_pair_parsing(void **state)
{
    (void)state;
    certs_pair *p = NULL;
    wp_error err;
    wp_error_clear(&err);
    const char junk[] = "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n";
    assert_int_not_equal(certs_pair_from_pem(junk, sizeof(junk) - 1, &p, &err), WP_OK);
    assert_null(p);
    assert_int_not_equal(certs_pair_from_pem("x", 1, &p, &err), WP_OK);
}

/* An EC key is held as an ECDSA key (it signs in place instead of through a copy per
 * signature), and what it signs, from several threads at once (TSan watches the shared
 * precomputed table), verifies with the certificate's public key. */
static mbedtls_ctr_drbg_context sign_drbg;
static pthread_mutex_t sign_mu = PTHREAD_MUTEX_INITIALIZER;

static int locked_random(void *arg, unsigned char *out, size_t n)
{
    pthread_mutex_lock(&sign_mu);
    int rc = mbedtls_ctr_drbg_random(arg, out, n);
    pthread_mutex_unlock(&sign_mu);
    return rc;
}

static void *sign_verify(void *arg)
{
    const certs_pair *p = arg;
    unsigned char hash[32], sig[MBEDTLS_ECDSA_MAX_LEN];
    for (int i = 0; i < 20; i++) {
        memset(hash, i + 1, sizeof(hash));
        size_t len = 0;
#if MBEDTLS_VERSION_NUMBER >= 0x03000000
        int rc = mbedtls_pk_sign((mbedtls_pk_context *)&p->key, MBEDTLS_MD_SHA256, hash,
                                 sizeof(hash), sig, sizeof(sig), &len, locked_random, &sign_drbg);
#else
        int rc = mbedtls_pk_sign((mbedtls_pk_context *)&p->key, MBEDTLS_MD_SHA256, hash,
                                 sizeof(hash), sig, &len, locked_random, &sign_drbg);
#endif
        if (rc != 0 || mbedtls_pk_verify((mbedtls_pk_context *)&p->chain.pk, MBEDTLS_MD_SHA256,
                                         hash, sizeof(hash), sig, len) != 0)
            return (void *)1;
    }
    return NULL;
}

static void test_ec_key_signs_in_place(void **state)
{
    fixture *fx = *state;
    certs_store *s = mk_store(fx, 1, 0);
    const certs_pair *p = certs_file_pair(s);
    assert_non_null(p);
#if MBEDTLS_VERSION_NUMBER >= 0x03000000
    /* 3.x signs with the generic EC key in place (certs.c precomputes its table). */
    assert_int_equal(mbedtls_pk_get_type(&p->key), MBEDTLS_PK_ECKEY);
#else
    assert_int_equal(mbedtls_pk_get_type(&p->key), MBEDTLS_PK_ECDSA);
#endif
    mbedtls_entropy_context ent;
    mbedtls_entropy_init(&ent);
    mbedtls_ctr_drbg_init(&sign_drbg);
    assert_int_equal(mbedtls_ctr_drbg_seed(&sign_drbg, mbedtls_entropy_func, &ent, NULL, 0), 0);
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, sign_verify, (void *)p), 0);
    for (int i = 0; i < 4; i++) {
        void *bad = NULL;
        pthread_join(t[i], &bad);
        assert_null(bad);
    }
    mbedtls_ctr_drbg_free(&sign_drbg);
    mbedtls_entropy_free(&ent);
}

static certs_store *shared_store;
static const certs_pair *seen[8];

static void *hammer(void *arg)
{
    size_t i = (size_t)(uintptr_t)arg;
    for (int k = 0; k < 50; k++) {
        const certs_pair *p = NULL;
        certs_source src;
        if (certs_select(shared_store, "node.tail1234.ts.net", &p, &src) != WP_OK)
            return NULL;
        seen[i] = p;
        certs_release(shared_store, p);
    }
    return NULL;
}

static void test_concurrent_single_fetch(void **state)
{
    fixture *fx = *state;
    shared_store = mk_store(fx, 0, 1);
    pthread_t t[8];
    for (size_t i = 0; i < 8; i++)
        assert_int_equal(pthread_create(&t[i], NULL, hammer, (void *)(uintptr_t)i), 0);
    for (size_t i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(fx->fake.calls, 1);
    for (size_t i = 0; i < 8; i++) {
        assert_non_null(seen[i]);
        assert_ptr_equal(seen[i], seen[0]);
    }
}

/* CertDomains as tailscaled's status gives them; domains_fail makes the read fail. */
static const char *fake_domains_list[] = {"node.tail1234.ts.net", NULL};
static int domains_fail, domains_calls;

static wp_status fake_domains(void *arg, char ***out, size_t *n, wp_error *err)
{
    (void)arg;
    domains_calls++;
    if (domains_fail) {
        wp_error_set(err, "28000", "fake: status unavailable");
        return WP_ERR_TAILSCALE;
    }
    size_t k = 0;
    while (fake_domains_list[k])
        k++;
    char **d = calloc(k + 1, sizeof(*d));
    for (size_t i = 0; d && i < k; i++)
        d[i] = strdup(fake_domains_list[i]);
    *out = d;
    *n = d ? k : 0;
    return d ? WP_OK : WP_ERR_NOMEM;
}

static certs_store *mk_store_domains(fixture *fx)
{
    certs_opts o = {
        .use_tailscale = 1, .fetch = fake_fetch, .fetch_arg = &fx->fake, .domains = fake_domains};
    wp_error err;
    wp_error_clear(&err);
    assert_int_equal(certs_new(&o, &fx->s, &err), WP_OK);
    certs_set_retry_interval(fx->s, 0);
    return fx->s;
}

/* Short names expand to the cert domain they begin; no SNI gets the first domain; a
 * *.ts.net name that is not a cert domain is never fetched once CertDomains are known. */
static void test_cert_domains(void **state)
{
    fixture *fx = *state;
    domains_fail = 0;
    certs_store *s = mk_store_domains(fx);
    char name[CERTS_NAME_MAX + 1];
    certs_ts_name(s, "node", name);
    assert_string_equal(name, "node.tail1234.ts.net");
    certs_ts_name(s, "NODE", name);
    assert_string_equal(name, "node.tail1234.ts.net");
    certs_ts_name(s, "nod", name);
    assert_string_equal(name, "");
    certs_ts_name(s, "node.tail1234", name); /* only a bare label is expanded */
    assert_string_equal(name, "");
    certs_ts_name(s, "other.tail1234.ts.net", name);
    assert_string_equal(name, "");
    const char *why = NULL;
    assert_true(certs_has_source(s, &why));
    const certs_pair *p = NULL;
    assert_int_equal(pick(s, NULL, &p), CERTS_SRC_TAILSCALE);
    assert_string_equal(fx->fake.last, "node.tail1234.ts.net");
    assert_int_equal(pick(s, "node", NULL), CERTS_SRC_TAILSCALE);
    int calls = fx->fake.calls;
    assert_int_equal(pick(s, "other.tail1234.ts.net", NULL), CERTS_SRC_NONE);
    assert_int_equal(fx->fake.calls, calls);
}

/* No CertDomains readable and no file: no source, and it says why. */
static void test_no_cert_domains(void **state)
{
    fixture *fx = *state;
    domains_fail = 1;
    certs_store *s = mk_store_domains(fx);
    const char *why = NULL;
    assert_false(certs_has_source(s, &why));
    assert_non_null(strstr(why, "could not be read"));
    assert_null(certs_default(s));
    /* Unknown CertDomains: a *.ts.net SNI is still tried, as before. */
    char name[CERTS_NAME_MAX + 1];
    certs_ts_name(s, "x.tail1234.ts.net", name);
    assert_string_equal(name, "x.tail1234.ts.net");
    domains_fail = 0;
    assert_true(certs_has_source(s, &why)); /* re-read once the retry interval passed */
}

#define T(f) cmocka_unit_test_setup_teardown(f, fx_setup, fx_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_file_san_match),
        T(test_wildcard_rules),
        T(test_no_sni_uses_file),
        T(test_ts_name_uses_tailscale),
        T(test_cache_hit),
        T(test_tailscale_disabled_never_fetches),
        T(test_non_ts_name_falls_back_to_file),
        T(test_refresh_near_expiry),
        T(test_failed_refresh_keeps_cached),
        T(test_no_certificate_at_all),
        T(test_retry_interval_spaces_fetches),
        cmocka_unit_test(test_bad_file_pair),
        cmocka_unit_test(test_pem_pair_parsing),
        T(test_concurrent_single_fetch),
        T(test_cert_domains),
        T(test_no_cert_domains),
        T(test_ec_key_signs_in_place),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
