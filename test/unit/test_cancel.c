/*
 * test_cancel: the cancel-key map (register, owner-checked lookup, unregister) and its
 * thread safety.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "cancel.h"

static cancel_target target(uint32_t pid, const char *login, const char *node)
{
    cancel_target t;
    memset(&t, 0, sizeof(t));
    t.backend_pid = pid;
    t.backend_key_len = 4;
    memcpy(t.backend_key, "\x01\x02\x03\x04", 4);
    snprintf(t.host, sizeof(t.host), "127.0.0.1");
    t.port = 5432;
    snprintf(t.login, sizeof(t.login), "%s", login);
    snprintf(t.node_id, sizeof(t.node_id), "%s", node);
    return t;
}

static void test_register_lookup(void **state)
{
    (void)state;
    cancel_map *m = cancel_map_new();
    assert_non_null(m);
    cancel_target t = target(4242, "alice@example.com", "nALICE"), got;
    uint32_t pid = 4242; /* the backend's own pid is the client's */
    unsigned char key[CANCEL_KEY_LEN];
    assert_int_equal(cancel_register(m, &t, key), WP_OK);
    assert_int_equal(cancel_map_size(m), 1);

    memset(&got, 0, sizeof(got));
    assert_int_equal(cancel_lookup(m, pid, key, sizeof(key), "alice@example.com", "nALICE", &got),
                     WP_OK);
    assert_int_equal(got.backend_pid, 4242);
    assert_memory_equal(got.backend_key, "\x01\x02\x03\x04", 4);
    assert_string_equal(got.host, "127.0.0.1");
    assert_int_equal(got.port, 5432);

    cancel_unregister(m, pid, key);
    assert_int_equal(cancel_map_size(m), 0);
    assert_int_equal(cancel_lookup(m, pid, key, sizeof(key), "alice@example.com", "nALICE", &got),
                     WP_ERR_NOT_FOUND);
    cancel_map_free(m);
}

static void test_lookup_refuses_mismatch(void **state)
{
    (void)state;
    cancel_map *m = cancel_map_new();
    cancel_target t = target(7, "alice@example.com", "nALICE"), got;
    uint32_t pid = 7;
    unsigned char key[CANCEL_KEY_LEN], bad[CANCEL_KEY_LEN];
    assert_int_equal(cancel_register(m, &t, key), WP_OK);
    memcpy(bad, key, sizeof(bad));
    bad[3] ^= 1;
    assert_int_equal(cancel_lookup(m, pid, bad, sizeof(bad), "alice@example.com", "nALICE", &got),
                     WP_ERR_NOT_FOUND);
    /* the right key from someone else on the tailnet */
    assert_int_equal(cancel_lookup(m, pid, key, sizeof(key), "mallory@example.com", "nALICE", &got),
                     WP_ERR_NOT_FOUND);
    assert_int_equal(cancel_lookup(m, pid, key, sizeof(key), "alice@example.com", "nOTHER", &got),
                     WP_ERR_NOT_FOUND);
    /* a key of the wrong length (protocol 3.2 keys can be longer) */
    assert_int_equal(cancel_lookup(m, pid, key, 3, "alice@example.com", "nALICE", &got),
                     WP_ERR_NOT_FOUND);
    assert_int_equal(
        cancel_lookup(m, pid + 1, key, sizeof(key), "alice@example.com", "nALICE", &got),
        WP_ERR_NOT_FOUND);
    assert_int_equal(cancel_lookup(m, pid, key, sizeof(key), NULL, NULL, &got), WP_ERR_NOT_FOUND);
    cancel_map_free(m);
}

/* One backend reused by successive clients: each gets its own secret for the same pid,
 * and once an earlier client's entry is gone its key reaches nothing, while the current
 * client's still does. */
static void test_reused_backend(void **state)
{
    (void)state;
    cancel_map *m = cancel_map_new();
    cancel_target t = target(31337, "alice@example.com", "nALICE"), got;
    unsigned char first[CANCEL_KEY_LEN], second[CANCEL_KEY_LEN];
    assert_int_equal(cancel_register(m, &t, first), WP_OK);
    cancel_unregister(m, 31337, first);
    assert_int_equal(cancel_register(m, &t, second), WP_OK);
    assert_memory_not_equal(first, second, CANCEL_KEY_LEN);
    assert_int_equal(
        cancel_lookup(m, 31337, first, sizeof(first), "alice@example.com", "nALICE", &got),
        WP_ERR_NOT_FOUND);
    assert_int_equal(
        cancel_lookup(m, 31337, second, sizeof(second), "alice@example.com", "nALICE", &got),
        WP_OK);
    cancel_map_free(m);
}

/* Many entries of one pid (a backend pid seen on two listeners' servers, say): every
 * secret is distinct and each entry is found and removed by its own pair. */
static void test_keys_unique(void **state)
{
    (void)state;
    cancel_map *m = cancel_map_new();
    enum { N = 3000 };
    static unsigned char keys[N][CANCEL_KEY_LEN];
    cancel_target t = target(1, "a", "n"), got;
    for (int i = 0; i < N; i++)
        assert_int_equal(cancel_register(m, &t, keys[i]), WP_OK);
    assert_int_equal(cancel_map_size(m), N);
    for (int i = 0; i < N; i++)
        for (int k = i + 1; k < N; k++)
            assert_memory_not_equal(keys[i], keys[k], CANCEL_KEY_LEN);
    for (int i = 0; i < N; i++) {
        assert_int_equal(cancel_lookup(m, 1, keys[i], CANCEL_KEY_LEN, "a", "n", &got), WP_OK);
        cancel_unregister(m, 1, keys[i]);
    }
    assert_int_equal(cancel_map_size(m), 0);
    cancel_map_free(m);
}

typedef struct worker_arg {
    cancel_map *m;
    int id;
    int failures;
} worker_arg;

static void *worker(void *p)
{
    worker_arg *a = p;
    char login[32];
    snprintf(login, sizeof(login), "user%d", a->id);
    for (int i = 0; i < 2000; i++) {
        cancel_target t = target((uint32_t)i, login, "node"), got;
        uint32_t pid = (uint32_t)i;
        unsigned char key[CANCEL_KEY_LEN];
        if (cancel_register(a->m, &t, key) != WP_OK ||
            cancel_lookup(a->m, pid, key, sizeof(key), login, "node", &got) != WP_OK ||
            got.backend_pid != (uint32_t)i)
            a->failures++;
        cancel_unregister(a->m, pid, key);
    }
    return NULL;
}

static void test_concurrent(void **state)
{
    (void)state;
    cancel_map *m = cancel_map_new();
    worker_arg args[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (worker_arg){m, i, 0};
        assert_int_equal(pthread_create(&th[i], NULL, worker, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].failures, 0);
    }
    assert_int_equal(cancel_map_size(m), 0);
    cancel_map_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_register_lookup), cmocka_unit_test(test_lookup_refuses_mismatch),
        cmocka_unit_test(test_reused_backend),  cmocka_unit_test(test_keys_unique),
        cmocka_unit_test(test_concurrent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
