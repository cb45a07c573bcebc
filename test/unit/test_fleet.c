/*
 * Unit tests for the pure parts of the fleet (lib/fleet.c, lib/redis.c): Redis key
 * naming and the [redis] address forms. The parts that talk to Redis are tested against
 * a real redis-server in test/e2e/test_fleet.sh.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "fleet.h"
#include "redis.h"

static void test_key_naming(void **state)
{
    (void)state;
    char k[64];
    assert_int_equal(fleet_key(k, sizeof(k), "waypoint:", "user", "alice@example.com"),
                     (int)strlen("waypoint:user:alice@example.com"));
    assert_string_equal(k, "waypoint:user:alice@example.com");
    assert_true(fleet_key(k, sizeof(k), "waypoint:", "instances", NULL) > 0);
    assert_string_equal(k, "waypoint:instances");
    /* a hash-tagged prefix is kept verbatim */
    assert_true(fleet_key(k, sizeof(k), "{wp}:", "control", NULL) > 0);
    assert_string_equal(k, "{wp}:control");
    /* a tagged node's stable id is the user of a tagged device */
    assert_true(fleet_key(k, sizeof(k), "p:", "user", "nTAGGED1") > 0);
    assert_string_equal(k, "p:user:nTAGGED1");
    /* too long: refused, never cut (a cut key would merge two users) */
    char small[16];
    assert_int_equal(fleet_key(small, sizeof(small), "waypoint:", "user", "alice@example.com"), -1);
    assert_int_equal(fleet_key(k, 19, "waypoint:", "instances", NULL), 18);
    assert_int_equal(fleet_key(k, 18, "waypoint:", "instances", NULL), -1);
}

static void test_address(void **state)
{
    (void)state;
    char host[256], err[200];
    int port, is_unix;
    assert_int_equal(
        rds_parse_address("127.0.0.1:6379", host, sizeof(host), &port, &is_unix, err, sizeof(err)),
        0);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 6379);
    assert_int_equal(is_unix, 0);
    assert_int_equal(
        rds_parse_address("[::1]:7000", host, sizeof(host), &port, &is_unix, err, sizeof(err)), 0);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 7000);
    assert_int_equal(rds_parse_address("redis.internal:6380", host, sizeof(host), &port, &is_unix,
                                       err, sizeof(err)),
                     0);
    assert_string_equal(host, "redis.internal");
    assert_int_equal(rds_parse_address("/run/redis/redis.sock", host, sizeof(host), &port, &is_unix,
                                       err, sizeof(err)),
                     0);
    assert_string_equal(host, "/run/redis/redis.sock");
    assert_int_equal(is_unix, 1);
    static const char *const bad[] = {"",          "redis",   "redis:",       ":6379",
                                      "h:0",       "h:65536", "h:6x",         "::1:6379",
                                      "[::1]6379", "[]:1",    "rel/path.sock"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        if (rds_parse_address(bad[i], host, sizeof(host), &port, &is_unix, err, sizeof(err)) == 0)
            fail_msg("address '%s' was accepted", bad[i]);
        assert_true(err[0] != '\0');
    }
}

static void test_names(void **state)
{
    (void)state;
    assert_string_equal(fleet_verdict_str(FLEET_OK), "ok");
    assert_string_equal(fleet_verdict_str(FLEET_OVER), "over_limit");
    assert_string_equal(fleet_verdict_str(FLEET_UNAVAILABLE), "redis_unavailable");
    assert_string_equal(rds_err_str(RDS_ERR_TIMEOUT), "timeout");
    assert_string_equal(rds_err_str(RDS_ERR_AUTH), "auth");
    assert_string_equal(rds_err_str(RDS_ERR_COUNT), "unknown");
    /* no [redis]: no fleet, and the admin's fleet requests say why */
    wp_config cfg = {0};
    wp_error e;
    wp_error_clear(&e);
    assert_null(fleet_new(&cfg, NULL, &e));
    json_t *req = json_pack("{s:s,s:b}", "cmd", "sessions", "fleet", 1);
    json_t *rep = fleet_admin(NULL, req);
    assert_false(json_is_true(json_object_get(rep, "ok")));
    assert_non_null(strstr(json_string_value(json_object_get(rep, "error")), "no [redis]"));
    json_decref(rep);
    json_decref(req);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_naming),
        cmocka_unit_test(test_address),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
