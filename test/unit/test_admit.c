/*
 * test_admit: the per-peer unstarted-connection table: the bound, the refusals kept
 * beyond it, drop after those, independence of peers and listeners, release, the keys
 * of unidentified peers (loopback as one, IPv6 per /64), and thread safety (run under
 * TSan in CI).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>

#include "admit.h"

static void test_bound_refuse_drop(void **state)
{
    (void)state;
    adm_table *t = adm_new();
    assert_non_null(t);
    for (int i = 0; i < 3; i++)
        assert_int_equal(adm_acquire(t, "pg", "node:n1", 3), ADM_PENDING);
    for (int i = 0; i < ADM_REFUSALS_MAX; i++)
        assert_int_equal(adm_acquire(t, "pg", "node:n1", 3), ADM_REFUSE);
    assert_int_equal(adm_acquire(t, "pg", "node:n1", 3), ADM_DROP);
    /* Other peers and other listeners have their own counts. */
    assert_int_equal(adm_acquire(t, "pg", "node:n2", 3), ADM_PENDING);
    assert_int_equal(adm_acquire(t, "pg2", "node:n1", 3), ADM_PENDING);
    assert_int_equal(adm_acquire(t, "pg", "addr:127.0.0.1", 3), ADM_PENDING);
    /* A released slot can be taken again; a released refusal too. */
    adm_release(t, "pg", "node:n1", ADM_PENDING);
    assert_int_equal(adm_acquire(t, "pg", "node:n1", 3), ADM_PENDING);
    adm_release(t, "pg", "node:n1", ADM_REFUSE);
    assert_int_equal(adm_acquire(t, "pg", "node:n1", 3), ADM_REFUSE);
    /* Releasing nothing or an unknown peer is harmless. */
    adm_release(t, "pg", "node:n1", ADM_NONE);
    adm_release(t, "pg", "node:unknown", ADM_PENDING);
    adm_free(t);
}

static void test_unlimited(void **state)
{
    (void)state;
    adm_table *t = adm_new();
    for (int i = 0; i < 1000; i++)
        assert_int_equal(adm_acquire(t, "pg", "addr:127.0.0.1", 0), ADM_PENDING);
    adm_free(t); /* frees entries still held */
}

/* "pg" + "\n" + "a" must not collide with "pg\na" split elsewhere. */
static void test_key_boundaries(void **state)
{
    (void)state;
    adm_table *t = adm_new();
    assert_int_equal(adm_acquire(t, "ab", "c", 1), ADM_PENDING);
    assert_int_equal(adm_acquire(t, "a", "bc", 1), ADM_PENDING);
    assert_int_equal(adm_acquire(t, "ab", "c", 1), ADM_REFUSE);
    adm_free(t);
}

static void key_is(const char *peer, const char *want)
{
    char k[96];
    adm_peer_key(peer, k, sizeof(k));
    assert_string_equal(k, want);
}

/* Unidentified peers: loopback is one peer, IPv4 per address, IPv6 per /64. */
static void test_peer_key(void **state)
{
    (void)state;
    key_is("127.0.0.1:5432", "addr:loopback");
    key_is("127.0.1.17:40000", "addr:loopback");
    key_is("127.255.255.254:1", "addr:loopback");
    key_is("[::1]:5000", "addr:loopback");
    key_is("[::ffff:127.0.1.2]:5000", "addr:loopback");
    key_is("[0:0:0:0:0:0:0:1]:5000", "addr:loopback");
    /* IPv4 elsewhere stays per address, mapped or not. */
    key_is("192.0.2.7:5432", "addr:192.0.2.7");
    key_is("[::ffff:192.0.2.7]:5432", "addr:192.0.2.7");
    key_is("128.0.0.1:5432", "addr:128.0.0.1");
    key_is("126.255.255.255:1", "addr:126.255.255.255");
    /* IPv6: the /64, whatever the interface id. */
    key_is("[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:5432", "addr:2001:db8:1:2::/64");
    key_is("[2001:db8:1:2::1]:1", "addr:2001:db8:1:2::/64");
    key_is("[2001:db8:1:3::1]:1", "addr:2001:db8:1:3::/64");
    key_is("[fd7a:115c:a1e0::1]:1", "addr:fd7a:115c:a1e0::/64");
    key_is("[::2]:1", "addr:::/64"); /* not loopback */
    /* Not an address: kept as is, its own peer. */
    key_is("garbage", "addr:garbage");
    key_is("[v6junk]:1", "addr:v6junk");
    /* A short buffer truncates, never overflows. */
    char small[8];
    adm_peer_key("127.0.0.1:1", small, sizeof(small));
    assert_string_equal(small, "addr:lo");
}

/* 17 loopback sources against a bound of 4: one peer, so the 5th is over it and the
 * 13th (beyond the refusals kept) is dropped; ::1 is the same peer. */
static void test_loopback_shares_bound(void **state)
{
    (void)state;
    adm_table *t = adm_new();
    char peer[64], key[96];
    for (int i = 1; i <= 17; i++) {
        snprintf(peer, sizeof(peer), "127.0.1.%d:4000%d", i, i % 10);
        adm_peer_key(peer, key, sizeof(key));
        adm_verdict want = i <= 4 ? ADM_PENDING : i <= 4 + ADM_REFUSALS_MAX ? ADM_REFUSE : ADM_DROP;
        assert_int_equal(adm_acquire(t, "pg", key, 4), want);
    }
    adm_peer_key("[::1]:1", key, sizeof(key));
    assert_int_equal(adm_acquire(t, "pg", key, 4), ADM_DROP);
    adm_free(t);
}

static void *worker(void *p)
{
    adm_table *t = p;
    for (int i = 0; i < 2000; i++) {
        adm_verdict v = adm_acquire(t, "pg", (i & 1) ? "node:a" : "node:b", 4);
        adm_release(t, "pg", (i & 1) ? "node:a" : "node:b", v);
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    adm_table *t = adm_new();
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, worker, t), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    /* Everything was given back: the full bound is free again. */
    for (int i = 0; i < 4; i++)
        assert_int_equal(adm_acquire(t, "pg", "node:a", 4), ADM_PENDING);
    assert_int_equal(adm_acquire(t, "pg", "node:a", 4), ADM_REFUSE);
    adm_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bound_refuse_drop),     cmocka_unit_test(test_unlimited),
        cmocka_unit_test(test_key_boundaries),        cmocka_unit_test(test_peer_key),
        cmocka_unit_test(test_loopback_shares_bound), cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
