/*
 * SCRAM-SHA-256 client against the RFC 7677 test vector and a small in-test server,
 * every way a server-first/server-final can be malformed, verifiers, MD5 forms and the
 * CSPRNG helpers.
 *
 * The MD5 vectors were computed offline with Python's hashlib:
 *   python3 -c "import hashlib; s=hashlib.md5(b'pencil'+b'user').hexdigest(); print(s);
 *               print(hashlib.md5(s.encode()+bytes([1,2,3,4])).hexdigest())"
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

#include <mbedtls/base64.h>
#include <mbedtls/md.h>

#include "scram.h"

#define RFC_NONCE "rOprNGfwEbeRWgbNEkqO"
#define RFC_SNONCE RFC_NONCE "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
#define RFC_SERVER_FIRST "r=" RFC_SNONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
#define RFC_CLIENT_FINAL "c=biws,r=" RFC_SNONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
#define RFC_SERVER_FINAL "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

/* A client that has sent its first message with the RFC nonce and username. */
static scram_client *rfc_client(void)
{
    scram_client *c = scram_client_new("pencil", NULL, 0, RFC_NONCE);
    assert_non_null(c);
    assert_int_equal(scram_client_set_username(c, "user"), WP_OK);
    char *first = NULL;
    size_t n = 0;
    assert_int_equal(scram_client_first(c, &first, &n), WP_OK);
    assert_string_equal(first, "n,,n=user,r=" RFC_NONCE);
    assert_int_equal(n, strlen(first));
    free(first);
    return c;
}

/* Feeds a server-first; returns the status and frees the output. */
static wp_status feed_first(scram_client *c, const char *msg, wp_error *err)
{
    char *out = NULL;
    size_t n = 0;
    wp_status st = scram_client_final(c, msg, strlen(msg), &out, &n, err);
    if (st == WP_OK)
        assert_non_null(out);
    else
        assert_null(out);
    free(out);
    return st;
}

static void test_rfc7677_vector(void **state)
{
    (void)state;
    scram_client *c = rfc_client();
    char *final = NULL;
    size_t n = 0;
    wp_error err;
    assert_int_equal(
        scram_client_final(c, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), &final, &n, &err), WP_OK);
    assert_string_equal(final, RFC_CLIENT_FINAL);
    assert_int_equal(n, strlen(RFC_CLIENT_FINAL));
    free(final);
    assert_int_equal(scram_client_verify(c, RFC_SERVER_FINAL, strlen(RFC_SERVER_FINAL), &err),
                     WP_OK);
    scram_client_free(c);
}

static void test_default_first_message(void **state)
{
    (void)state;
    scram_client *a = scram_client_new("pw", NULL, 0, NULL);
    scram_client *b = scram_client_new("pw", NULL, 0, NULL);
    assert_non_null(a);
    assert_non_null(b);
    assert_string_equal(scram_client_mechanism(a), "SCRAM-SHA-256");
    char *fa = NULL, *fb = NULL;
    size_t na, nb;
    assert_int_equal(scram_client_first(a, &fa, &na), WP_OK);
    assert_int_equal(scram_client_first(b, &fb, &nb), WP_OK);
    assert_int_equal(strncmp(fa, "n,,n=,r=", 8), 0);
    assert_int_equal(strlen(fa + 8), 24); /* 18 random bytes in base64 */
    assert_string_not_equal(fa, fb);
    /* a second first() is a state error */
    char *again = NULL;
    assert_int_not_equal(scram_client_first(a, &again, &na), WP_OK);
    free(fa);
    free(fb);
    scram_client_free(a);
    scram_client_free(b);
}

static void test_username_escaped(void **state)
{
    (void)state;
    scram_client *c = scram_client_new("pw", NULL, 0, "abc");
    assert_int_equal(scram_client_set_username(c, "a,b=c"), WP_OK);
    char *f = NULL;
    size_t n;
    assert_int_equal(scram_client_first(c, &f, &n), WP_OK);
    assert_string_equal(f, "n,,n=a=2Cb=3Dc,r=abc");
    free(f);
    scram_client_free(c);
}

static void test_channel_binding(void **state)
{
    (void)state;
    unsigned char cb[32];
    for (int i = 0; i < 32; i++)
        cb[i] = (unsigned char)(i * 7);
    scram_client *c = scram_client_new("pencil", cb, sizeof(cb), RFC_NONCE);
    assert_non_null(c);
    assert_string_equal(scram_client_mechanism(c), "SCRAM-SHA-256-PLUS");
    char *first = NULL, *final = NULL;
    size_t n;
    wp_error err;
    assert_int_equal(scram_client_first(c, &first, &n), WP_OK);
    assert_string_equal(first, "p=tls-server-end-point,,n=,r=" RFC_NONCE);
    assert_int_equal(
        scram_client_final(c, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), &final, &n, &err), WP_OK);
    /* c= must carry the gs2 header followed by the certificate hash */
    assert_int_equal(strncmp(final, "c=", 2), 0);
    const char *end = strchr(final, ',');
    unsigned char dec[128];
    size_t dl = 0;
    assert_int_equal(mbedtls_base64_decode(dec, sizeof(dec), &dl, (const unsigned char *) final + 2,
                                           (size_t)(end - final - 2)),
                     0);
    assert_int_equal(dl, 24 + 32);
    assert_memory_equal(dec, "p=tls-server-end-point,,", 24);
    assert_memory_equal(dec + 24, cb, 32);
    free(first);
    free(final);
    scram_client_free(c);
    /* mismatched arguments are refused */
    assert_null(scram_client_new("pw", NULL, 32, NULL));
    assert_null(scram_client_new("pw", cb, 65, NULL));
    assert_null(scram_client_new("pw", NULL, 0, "bad,nonce"));
}

/* TLS link, server without -PLUS: gs2 flag 'y', and c= carries exactly "y,,". */
static void test_tls_without_plus(void **state)
{
    (void)state;
    scram_client *c = scram_client_new("pencil", NULL, 0, RFC_NONCE);
    assert_non_null(c);
    assert_int_equal(scram_client_set_tls_without_plus(c), WP_OK);
    assert_string_equal(scram_client_mechanism(c), "SCRAM-SHA-256");
    char *first = NULL, *final = NULL;
    size_t n;
    wp_error err;
    assert_int_equal(scram_client_first(c, &first, &n), WP_OK);
    assert_string_equal(first, "y,,n=,r=" RFC_NONCE);
    assert_int_equal(scram_client_set_tls_without_plus(c), WP_ERR_INVALID); /* too late */
    assert_int_equal(
        scram_client_final(c, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), &final, &n, &err), WP_OK);
    assert_int_equal(strncmp(final, "c=eSws,r=", 9), 0); /* base64("y,,") */
    free(first);
    free(final);
    scram_client_free(c);
    unsigned char cb[32] = {1};
    c = scram_client_new("pencil", cb, sizeof(cb), NULL);
    assert_int_equal(scram_client_set_tls_without_plus(c), WP_ERR_INVALID); /* binding in use */
    scram_client_free(c);
}

static void test_bad_signature(void **state)
{
    (void)state;
    scram_client *c = rfc_client();
    wp_error err;
    assert_int_equal(feed_first(c, RFC_SERVER_FIRST, &err), WP_OK);
    char bad[] = RFC_SERVER_FINAL;
    bad[2] = bad[2] == 'A' ? 'B' : 'A';
    assert_int_equal(scram_client_verify(c, bad, strlen(bad), &err), WP_ERR_AUTH);
    assert_string_equal(err.sqlstate, "28000");
    assert_non_null(strstr(err.message, "signature"));
    scram_client_free(c);
}

static void test_server_final_forms(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4",      /* missing padding */
        "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=,x=y", /* trailing extension */
        "v=AAAA",                                             /* wrong length */
        "v=",                                                 /* empty */
        "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",       /* no attribute */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        scram_client *c = rfc_client();
        wp_error err;
        assert_int_equal(feed_first(c, RFC_SERVER_FIRST, &err), WP_OK);
        assert_int_equal(scram_client_verify(c, bad[i], strlen(bad[i]), &err), WP_ERR_PROTOCOL);
        assert_string_equal(err.sqlstate, "08P01");
        scram_client_free(c);
    }
    scram_client *c = rfc_client();
    wp_error err;
    assert_int_equal(feed_first(c, RFC_SERVER_FIRST, &err), WP_OK);
    const char *e = "e=invalid-proof";
    assert_int_equal(scram_client_verify(c, e, strlen(e), &err), WP_ERR_AUTH);
    assert_non_null(strstr(err.message, "invalid-proof"));
    scram_client_free(c);
}

static void test_verify_out_of_order(void **state)
{
    (void)state;
    scram_client *c = rfc_client();
    wp_error err;
    assert_int_equal(scram_client_verify(c, RFC_SERVER_FINAL, strlen(RFC_SERVER_FINAL), &err),
                     WP_ERR_PROTOCOL);
    scram_client_free(c);
}

/* Each entry: a server-first that must be refused, the status, and a word of the message. */
static void test_server_first_rejects(void **state)
{
    (void)state;
    static const struct {
        const char *msg;
        wp_status st;
        const char *word;
    } cases[] = {
        {"r=" RFC_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", WP_ERR_PROTOCOL, "extend"},
        {"r=XOprNGfwEbeRWgbNEkqOabc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", WP_ERR_PROTOCOL, "extend"},
        {"r=rOprNG,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", WP_ERR_PROTOCOL, "extend"},
        {"r=" RFC_SNONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0", WP_ERR_PROTOCOL, "zero"},
        {"r=" RFC_SNONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=100001", WP_ERR_AUTH, "iterations"},
        {"r=" RFC_SNONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999", WP_ERR_PROTOCOL, "number"},
        {"r=" RFC_SNONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1", WP_ERR_PROTOCOL, "number"},
        {"r=" RFC_SNONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=", WP_ERR_PROTOCOL, "number"},
        {"r=" RFC_SNONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ=,i=4096", WP_ERR_PROTOCOL, "base64"},
        {"r=" RFC_SNONCE ",s=W22Z!J0SNY7soEsUEjb6gQ==,i=4096", WP_ERR_PROTOCOL, "base64"},
        {"r=" RFC_SNONCE ",s=W22Z=J0SNY7soEsUEjb6gQ==,i=4096", WP_ERR_PROTOCOL, "base64"},
        {"r=" RFC_SNONCE ",s=,i=4096", WP_ERR_PROTOCOL, "base64"},
        {"r=" RFC_SNONCE ",i=4096", WP_ERR_PROTOCOL, "salt"},
        {"r=" RFC_SNONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==", WP_ERR_PROTOCOL, "iteration"},
        {"r=" RFC_SNONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,x=1", WP_ERR_PROTOCOL, "after"},
        {"r=" RFC_SNONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,", WP_ERR_PROTOCOL, "after"},
        {"m=ext,r=" RFC_SNONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", WP_ERR_PROTOCOL, "mandatory"},
        {"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", WP_ERR_PROTOCOL, "nonce"},
        {"", WP_ERR_PROTOCOL, "nonce"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        scram_client *c = rfc_client();
        wp_error err;
        wp_error_clear(&err);
        wp_status st = feed_first(c, cases[i].msg, &err);
        if (st != cases[i].st || !strstr(err.message, cases[i].word))
            fail_msg("case %zu (%s): status %d, message \"%s\"", i, cases[i].msg, st, err.message);
        scram_client_free(c);
    }
}

static void test_server_first_embedded_nul(void **state)
{
    (void)state;
    scram_client *c = rfc_client();
    char msg[] = RFC_SERVER_FIRST;
    msg[5] = '\0';
    char *out = NULL;
    size_t n;
    wp_error err;
    assert_int_equal(scram_client_final(c, msg, sizeof(msg) - 1, &out, &n, &err), WP_ERR_PROTOCOL);
    assert_null(out);
    scram_client_free(c);
}

static void test_iteration_max_accepted(void **state)
{
    (void)state;
    scram_client *c = rfc_client();
    wp_error err;
    char msg[256];
    snprintf(msg, sizeof(msg), "r=%s,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=%d", RFC_SNONCE, SCRAM_ITER_MAX);
    assert_int_equal(feed_first(c, msg, &err), WP_OK);
    scram_client_free(c);
}

static void test_md5(void **state)
{
    (void)state;
    char out[36];
    assert_int_equal(scram_md5_stored("pencil", "user", out), WP_OK);
    assert_string_equal(out, "md520c46e3762c864548e296b33c3406aa9");
    const unsigned char salt[4] = {1, 2, 3, 4};
    assert_int_equal(scram_md5_response("pencil", "user", salt, out), WP_OK);
    assert_string_equal(out, "md54376eb6913b38f9aaff38dc7cf19ca76");
}

/* Splits "SCRAM-SHA-256$<iter>:<salt>$<stored>:<server>" and decodes the parts. */
static void parse_verifier(const char *v, unsigned *iter, unsigned char salt[16],
                           unsigned char stored[32], unsigned char server[32])
{
    char s64[64], k1[64], k2[64];
    assert_int_equal(sscanf(v, "SCRAM-SHA-256$%u:%63[^$]$%63[^:]:%63s", iter, s64, k1, k2), 4);
    size_t n;
    assert_int_equal(mbedtls_base64_decode(salt, 16, &n, (unsigned char *)s64, strlen(s64)), 0);
    assert_int_equal(n, 16);
    assert_int_equal(mbedtls_base64_decode(stored, 32, &n, (unsigned char *)k1, strlen(k1)), 0);
    assert_int_equal(n, 32);
    assert_int_equal(mbedtls_base64_decode(server, 32, &n, (unsigned char *)k2, strlen(k2)), 0);
    assert_int_equal(n, 32);
}

static void test_verifier_format(void **state)
{
    (void)state;
    char a[SCRAM_VERIFIER_MAX], b[SCRAM_VERIFIER_MAX];
    assert_int_equal(scram_make_verifier("pencil", 4096, a, sizeof(a)), WP_OK);
    assert_int_equal(scram_make_verifier("pencil", 4096, b, sizeof(b)), WP_OK);
    assert_string_not_equal(a, b); /* random salt */
    /* 14 + "4096" + ':' + 24 + '$' + 44 + ':' + 44 */
    assert_int_equal(strlen(a), 14 + 4 + 1 + 24 + 1 + 44 + 1 + 44);
    unsigned iter;
    unsigned char salt[16], stored[32], server[32];
    parse_verifier(a, &iter, salt, stored, server);
    assert_int_equal(iter, 4096);
    assert_int_equal(scram_make_verifier("pencil", 0, a, sizeof(a)), WP_ERR_INVALID);
    assert_int_equal(scram_make_verifier("pencil", SCRAM_ITER_MAX + 1, a, sizeof(a)),
                     WP_ERR_INVALID);
    assert_int_equal(scram_make_verifier("pencil", 4096, a, 40), WP_ERR_TOO_LARGE);
}

/* Plays the server side of RFC 5802 from a verifier: the client's proof must check out
 * against StoredKey and the client must accept the signature made with ServerKey. */
static void test_verifier_roundtrip(void **state)
{
    (void)state;
    char v[SCRAM_VERIFIER_MAX];
    assert_int_equal(scram_make_verifier("s3cret", 1000, v, sizeof(v)), WP_OK);
    unsigned iter;
    unsigned char salt[16], stored[32], server[32];
    parse_verifier(v, &iter, salt, stored, server);

    scram_client *c = scram_client_new("s3cret", NULL, 0, "clientnonce");
    char *first, *final;
    size_t n;
    assert_int_equal(scram_client_first(c, &first, &n), WP_OK);
    char salt64[32], sf[128];
    mbedtls_base64_encode((unsigned char *)salt64, sizeof(salt64), &n, salt, 16);
    snprintf(sf, sizeof(sf), "r=clientnonceSERVER,s=%s,i=%u", salt64, iter);
    wp_error err;
    assert_int_equal(scram_client_final(c, sf, strlen(sf), &final, &n, &err), WP_OK);

    const char *p = strstr(final, ",p=");
    assert_non_null(p);
    char auth[512];
    snprintf(auth, sizeof(auth), "%s,%s,%.*s", first + 3, sf, (int)(p - final), final);
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    unsigned char csig[32], proof[32], ckey[32], check[32], ssig[32];
    mbedtls_md_hmac(md, stored, 32, (unsigned char *)auth, strlen(auth), csig);
    assert_int_equal(mbedtls_base64_decode(proof, 32, &n, (unsigned char *)p + 3, strlen(p + 3)),
                     0);
    for (int i = 0; i < 32; i++)
        ckey[i] = proof[i] ^ csig[i];
    mbedtls_md(md, ckey, 32, check);
    assert_memory_equal(check, stored, 32);

    mbedtls_md_hmac(md, server, 32, (unsigned char *)auth, strlen(auth), ssig);
    char sfinal[64] = "v=";
    mbedtls_base64_encode((unsigned char *)sfinal + 2, sizeof(sfinal) - 2, &n, ssig, 32);
    assert_int_equal(scram_client_verify(c, sfinal, strlen(sfinal), &err), WP_OK);
    free(first);
    free(final);
    scram_client_free(c);
}

static void test_wrong_password_proof_differs(void **state)
{
    (void)state;
    scram_client *c = scram_client_new("not-pencil", NULL, 0, RFC_NONCE);
    assert_int_equal(scram_client_set_username(c, "user"), WP_OK);
    char *first, *final;
    size_t n;
    wp_error err;
    assert_int_equal(scram_client_first(c, &first, &n), WP_OK);
    assert_int_equal(
        scram_client_final(c, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), &final, &n, &err), WP_OK);
    assert_string_not_equal(final, RFC_CLIENT_FINAL);
    /* and the real server's signature does not verify for this password */
    assert_int_equal(scram_client_verify(c, RFC_SERVER_FINAL, strlen(RFC_SERVER_FINAL), &err),
                     WP_ERR_AUTH);
    free(first);
    free(final);
    scram_client_free(c);
}

static void test_random_password(void **state)
{
    (void)state;
    char a[44], b[44];
    assert_int_equal(wp_random_password(a), WP_OK);
    assert_int_equal(wp_random_password(b), WP_OK);
    assert_int_equal(strlen(a), 43);
    assert_int_equal(strspn(a, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"),
                     43);
    assert_string_not_equal(a, b);
}

static void *rng_worker(void *arg)
{
    unsigned char buf[2048]; /* larger than one CTR_DRBG request */
    for (int i = 0; i < 200; i++)
        if (wp_random_bytes(buf, sizeof(buf)) != WP_OK)
            *(int *)arg = 1;
    return NULL;
}

static void test_random_bytes_threads(void **state)
{
    (void)state;
    pthread_t t[4];
    int failed = 0;
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, rng_worker, &failed), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(failed, 0);
    unsigned char x[32] = {0}, y[32] = {0};
    assert_int_equal(wp_random_bytes(x, sizeof(x)), WP_OK);
    assert_int_equal(wp_random_bytes(y, sizeof(y)), WP_OK);
    assert_memory_not_equal(x, y, sizeof(x));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc7677_vector),
        cmocka_unit_test(test_default_first_message),
        cmocka_unit_test(test_username_escaped),
        cmocka_unit_test(test_channel_binding),
        cmocka_unit_test(test_tls_without_plus),
        cmocka_unit_test(test_bad_signature),
        cmocka_unit_test(test_server_final_forms),
        cmocka_unit_test(test_verify_out_of_order),
        cmocka_unit_test(test_server_first_rejects),
        cmocka_unit_test(test_server_first_embedded_nul),
        cmocka_unit_test(test_iteration_max_accepted),
        cmocka_unit_test(test_md5),
        cmocka_unit_test(test_verifier_format),
        cmocka_unit_test(test_verifier_roundtrip),
        cmocka_unit_test(test_wrong_password_proof_differs),
        cmocka_unit_test(test_random_password),
        cmocka_unit_test(test_random_bytes_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
