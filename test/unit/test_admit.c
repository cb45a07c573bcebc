/*
 * test_admit: the per-peer unstarted-connection table: the bound, the refusals kept
 * beyond it, drop after those, independence of peers and listeners, release, and
 * thread safety (run under TSan in CI).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>

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
        cmocka_unit_test(test_bound_refuse_drop),
        cmocka_unit_test(test_unlimited),
        cmocka_unit_test(test_key_boundaries),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
