/*
 * identity: WhoIs parsing (every field, missing and mistyped fields, CapMap shapes) and
 * role naming (spec example, sanitising, tagged nodes, scope, the 63-byte cut, the
 * collision alternative) and the identity record.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "identity.h"

#define CAP "redo.com/cap/waypoint"

static const char *BASE =
    "{\"Node\":{\"ID\":7,\"StableID\":\"nXYZ123CNTRL\",\"Name\":\"laptop.tail1234.ts.net.\","
    "\"ComputedName\":\"laptop\",\"Tags\":null,"
    "\"Addresses\":[\"100.64.0.1/32\",\"fd7a:115c:a1e0::1/128\"],\"Hostinfo\":{\"OS\":\"linux\"}},"
    "\"UserProfile\":{\"ID\":42,\"LoginName\":\"alice@example.com\",\"DisplayName\":\"Alice\","
    "\"ProfilePicURL\":\"\"},"
    "\"CapMap\":{\"" CAP "\":[{\"backends\":{}}],\"other/cap\":[1]}}";

static wp_status parse(const char *s, id_identity **out, wp_error *err)
{
    wp_error_clear(err);
    return id_parse_whois(s, strlen(s), CAP, out, err);
}

/* BASE with obj[key] (obj = "Node", "UserProfile" or "" for the root) replaced by value,
 * or removed when value is NULL. Returns a malloc'd JSON text. */
static char *mutate(const char *obj, const char *key, const char *value)
{
    json_t *root = json_loads(BASE, 0, NULL);
    assert_non_null(root);
    json_t *target = *obj ? json_object_get(root, obj) : root;
    assert_non_null(target);
    if (value) {
        json_t *v = json_loads(value, JSON_DECODE_ANY, NULL);
        assert_non_null(v);
        json_object_set_new(target, key, v);
    } else {
        json_object_del(target, key);
    }
    char *s = json_dumps(root, 0);
    assert_non_null(s);
    json_decref(root);
    return s;
}

static void expect_field_error(const char *obj, const char *key, const char *value,
                               const char *field)
{
    char *s = mutate(obj, key, value);
    id_identity *sentinel = (id_identity *)(uintptr_t)0x1;
    id_identity *id = sentinel;
    wp_error err;
    wp_status st = parse(s, &id, &err);
    if (st != WP_ERR_INVALID || !strstr(err.message, field))
        fail_msg("%s.%s=%s: status %d message '%s' (want field %s)", obj, key,
                 value ? value : "<removed>", st, err.message, field);
    assert_string_equal(err.sqlstate, "28000");
    assert_ptr_equal(id, sentinel);
    free(s);
}

static void test_parse_all_fields(void **state)
{
    (void)state;
    id_identity *id = NULL;
    wp_error err;
    assert_int_equal(parse(BASE, &id, &err), WP_OK);
    assert_string_equal(id->login_name, "alice@example.com");
    assert_string_equal(id->display_name, "Alice");
    assert_int_equal(id->user_id, 42);
    assert_string_equal(id->node_name, "laptop.tail1234.ts.net.");
    assert_string_equal(id->computed_name, "laptop");
    assert_string_equal(id->stable_id, "nXYZ123CNTRL");
    assert_int_equal(id->ntags, 0);
    assert_int_equal(id->naddrs, 2);
    assert_string_equal(id->addresses[0], "100.64.0.1/32");
    assert_string_equal(id->addresses[1], "fd7a:115c:a1e0::1/128");
    assert_true(json_is_array(id->cap_rules));
    assert_int_equal(json_array_size(id->cap_rules), 1);
    assert_true(json_is_object(json_array_get(id->cap_rules, 0)));
    assert_false(id_is_tagged(id));
    id_free(id);
}

static void test_parse_minimal(void **state)
{
    (void)state;
    const char *s = "{\"Node\":{\"Name\":\"box.ts.net.\",\"StableID\":\"n1\"},"
                    "\"UserProfile\":{\"LoginName\":\"bob@x.org\"}}";
    id_identity *id = NULL;
    wp_error err;
    assert_int_equal(parse(s, &id, &err), WP_OK);
    assert_string_equal(id->display_name, "");
    assert_null(id->computed_name);
    assert_int_equal(id->user_id, 0);
    assert_int_equal(id->ntags, 0);
    assert_int_equal(id->naddrs, 0);
    assert_true(json_is_array(id->cap_rules));
    assert_int_equal(json_array_size(id->cap_rules), 0);
    id_free(id);
}

static void test_missing_fields(void **state)
{
    (void)state;
    expect_field_error("", "Node", NULL, "Node");
    expect_field_error("", "UserProfile", NULL, "UserProfile");
    expect_field_error("Node", "Name", NULL, "Node.Name");
    expect_field_error("Node", "StableID", NULL, "Node.StableID");
    expect_field_error("UserProfile", "LoginName", NULL, "UserProfile.LoginName");
    expect_field_error("Node", "StableID", "\"\"", "Node.StableID");
    expect_field_error("UserProfile", "LoginName", "\"\"", "UserProfile.LoginName");
}

static void test_mistyped_fields(void **state)
{
    (void)state;
    expect_field_error("", "Node", "\"laptop\"", "Node");
    expect_field_error("", "UserProfile", "[]", "UserProfile");
    expect_field_error("Node", "Name", "5", "Node.Name");
    expect_field_error("Node", "StableID", "[]", "Node.StableID");
    expect_field_error("Node", "ComputedName", "true", "Node.ComputedName");
    expect_field_error("Node", "Tags", "\"tag:ci\"", "Node.Tags must be an array of strings");
    expect_field_error("Node", "Tags", "[\"tag:ci\", 1]", "Node.Tags must be an array of strings");
    expect_field_error("Node", "Addresses", "{}", "Node.Addresses");
    expect_field_error("Node", "Addresses", "[\"100.64.0.1/32\", null]", "Node.Addresses");
    expect_field_error("UserProfile", "LoginName", "{}", "UserProfile.LoginName");
    expect_field_error("UserProfile", "DisplayName", "1", "UserProfile.DisplayName");
    expect_field_error("UserProfile", "ID", "\"42\"", "UserProfile.ID");
    expect_field_error("UserProfile", "ID", "1.5", "UserProfile.ID");
    expect_field_error("", "CapMap", "[]", "CapMap");
    expect_field_error("", "CapMap", "{\"" CAP "\":{\"backends\":{}}}", "CapMap[\"" CAP "\"]");
    expect_field_error("", "CapMap", "{\"" CAP "\":\"x\"}", "CapMap[\"" CAP "\"]");
}

static void test_bounds(void **state)
{
    (void)state;
    char big[1100];
    memset(big, 'a', sizeof(big) - 1);
    big[0] = '"';
    big[sizeof(big) - 2] = '"';
    big[sizeof(big) - 1] = '\0';
    expect_field_error("Node", "Name", big, "Node.Name");

    json_t *tags = json_array();
    for (int i = 0; i < 65; i++)
        json_array_append_new(tags, json_string("tag:x"));
    char *t = json_dumps(tags, 0);
    expect_field_error("Node", "Tags", t, "Node.Tags");
    free(t);
    json_decref(tags);

    /* Body size bound: checked before parsing, so a huge (valid) body is refused. */
    size_t n = 1024 * 1024 + 16;
    char *body = malloc(n + 1);
    assert_non_null(body);
    memset(body, ' ', n);
    memcpy(body, BASE, strlen(BASE));
    body[n] = '\0';
    id_identity *id = NULL;
    wp_error err;
    assert_int_equal(id_parse_whois(body, n, CAP, &id, &err), WP_ERR_INVALID);
    assert_non_null(strstr(err.message, "too large"));
    assert_null(id);
    /* The same body within the bound parses. */
    assert_int_equal(id_parse_whois(body, strlen(BASE) + 8, CAP, &id, &err), WP_OK);
    id_free(id);
    free(body);

    /* Deep nesting inside an ignored field is refused before jansson recurses. */
    char deep[600];
    size_t p = (size_t)snprintf(deep, sizeof(deep), "{\"X\":");
    for (int i = 0; i < 200; i++)
        deep[p++] = '[';
    for (int i = 0; i < 200; i++)
        deep[p++] = ']';
    deep[p++] = '}';
    deep[p] = '\0';
    id = NULL;
    assert_int_equal(parse(deep, &id, &err), WP_ERR_INVALID);
    assert_non_null(strstr(err.message, "nested"));
    assert_null(id);
}

static void test_not_json(void **state)
{
    (void)state;
    id_identity *id = NULL;
    wp_error err;
    const char *bad[] = {"", "no match for IP:port", "[1,2]", "\"x\"", "{\"Node\":",
                         /* duplicate keys could smuggle a second identity */
                         "{\"Node\":{\"Name\":\"a.\",\"StableID\":\"n1\"},"
                         "\"UserProfile\":{\"LoginName\":\"a@b\",\"LoginName\":\"root@b\"}}",
                         /* embedded NUL in a string */
                         "{\"Node\":{\"Name\":\"a.\",\"StableID\":\"n1\"},"
                         "\"UserProfile\":{\"LoginName\":\"a\\u0000b@c\"}}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        id = NULL;
        assert_int_equal(parse(bad[i], &id, &err), WP_ERR_INVALID);
        assert_string_equal(err.sqlstate, "28000");
        assert_null(id);
    }
}

static void test_unknown_fields_tolerated(void **state)
{
    (void)state;
    char *s = mutate("Node", "FutureField", "{\"deep\":[1,{\"x\":null}]}");
    id_identity *id = NULL;
    wp_error err;
    assert_int_equal(parse(s, &id, &err), WP_OK);
    id_free(id);
    free(s);
}

static void test_capmap_shapes(void **state)
{
    (void)state;
    const char *variants[] = {
        NULL, "null", "{}", "{\"other/cap\":[{}]}", "{\"" CAP "\":null}", "{\"" CAP "\":[]}"};
    for (size_t i = 0; i < sizeof(variants) / sizeof(variants[0]); i++) {
        char *s = mutate("", "CapMap", variants[i]);
        id_identity *id = NULL;
        wp_error err;
        assert_int_equal(parse(s, &id, &err), WP_OK);
        assert_true(json_is_array(id->cap_rules));
        assert_int_equal(json_array_size(id->cap_rules), 0);
        id_free(id);
        free(s);
    }
    char *s = mutate("", "CapMap", "{\"" CAP "\":[{\"a\":1},{\"b\":2},3]}");
    id_identity *id = NULL;
    wp_error err;
    assert_int_equal(parse(s, &id, &err), WP_OK);
    assert_int_equal(json_array_size(id->cap_rules), 3); /* rule shapes are grant.c's job */
    id_free(id);
    free(s);
}

static id_identity *make_id(const char *login, const char *name, const char *computed,
                            const char *stable, const char *tag)
{
    json_t *root = json_pack("{s:{s:s,s:s}, s:{s:s}}", "Node", "Name", name, "StableID", stable,
                             "UserProfile", "LoginName", login);
    assert_non_null(root);
    json_t *node = json_object_get(root, "Node");
    if (computed)
        json_object_set_new(node, "ComputedName", json_string(computed));
    if (tag)
        json_object_set_new(node, "Tags", json_pack("[s,s]", tag, "tag:second"));
    char *s = json_dumps(root, 0);
    json_decref(root);
    id_identity *id = NULL;
    wp_error err;
    assert_int_equal(parse(s, &id, &err), WP_OK);
    free(s);
    return id;
}

static void role(const char *prefix, const id_identity *id, const char *db, const char *scope,
                 int hashed, char out[ID_ROLE_MAX + 1])
{
    wp_error err;
    memset(out, 'X', ID_ROLE_MAX + 1);
    assert_int_equal(id_role_name(prefix, id, db, scope, hashed, out, &err), WP_OK);
    assert_true(strlen(out) <= ID_ROLE_MAX);
}

static void test_role_spec_example(void **state)
{
    (void)state;
    id_identity *id = NULL;
    wp_error err;
    assert_int_equal(parse(BASE, &id, &err), WP_OK);
    char out[ID_ROLE_MAX + 1];
    role("wp_", id, "appdb", NULL, 0, out);
    assert_string_equal(out, "wp_alice_laptop_appdb");
    role("wp_", id, "appdb", "readonly", 0, out);
    assert_string_equal(out, "wp_alice_laptop_appdb_readonly");
    id_free(id);
}

static void test_role_sanitising(void **state)
{
    (void)state;
    /* "B\xc3\xbcro" is "Büro": two UTF-8 bytes, two underscores. */
    id_identity *id =
        make_id("Bob.Smith-Jr@Example.COM", "B\xc3\xbcro-PC.tail1.ts.net.", NULL, "n2", NULL);
    char out[ID_ROLE_MAX + 1];
    role("wp_", id, "My-App.DB", NULL, 0, out);
    assert_string_equal(out, "wp_bob_smith_jr_b__ro_pc_my_app_db");
    for (const char *p = out; *p; p++)
        assert_true(islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '_');
    id_free(id);

    /* No '@' in the login: the whole login is the user part. */
    id = make_id("service", "db1.ts.net.", NULL, "n3", NULL);
    role("wp_", id, "x", NULL, 0, out);
    assert_string_equal(out, "wp_service_db1_x");
    id_free(id);

    /* Empty Name: the first label of ComputedName. */
    id = make_id("carol@x", "", "Carol-Desk", "n4", NULL);
    role("wp_", id, "appdb", NULL, 0, out);
    assert_string_equal(out, "wp_carol_carol_desk_appdb");
    id_free(id);
}

static void test_role_tagged(void **state)
{
    (void)state;
    id_identity *id = make_id("tagged-devices", "runner-7.tail1.ts.net.", NULL, "n5", "tag:ci");
    assert_true(id_is_tagged(id));
    char out[ID_ROLE_MAX + 1];
    role("wp_", id, "appdb", NULL, 0, out);
    assert_string_equal(out, "wp_ci_runner_7_appdb");
    id_free(id);

    /* A tagged node without tags cannot be named: refuse rather than guess. */
    id = make_id("tagged-devices", "runner.ts.net.", NULL, "n6", NULL);
    wp_error err;
    assert_int_equal(id_role_name("wp_", id, "appdb", NULL, 0, out, &err), WP_ERR_INVALID);
    id_free(id);
}

static int is_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)s[i]) || isupper((unsigned char)s[i]))
            return 0;
    return 1;
}

static void test_role_truncation(void **state)
{
    (void)state;
    char db[64];
    memset(db, 'd', 63);
    db[63] = '\0';
    id_identity *a = make_id("alice@example.com", "laptop.ts.net.", NULL, "nA", NULL);
    id_identity *a2 = make_id("alice@example.com", "laptop.ts.net.", NULL, "nA", NULL);
    id_identity *b = make_id("alice@example.com", "laptop.ts.net.", NULL, "nB", NULL);
    char x[ID_ROLE_MAX + 1], y[ID_ROLE_MAX + 1], z[ID_ROLE_MAX + 1], s[ID_ROLE_MAX + 1];
    role("wp_", a, db, NULL, 0, x);
    role("wp_", a2, db, NULL, 0, y);
    role("wp_", b, db, NULL, 0, z);
    role("wp_", a, db, "readonly", 0, s);
    assert_int_equal(strlen(x), ID_ROLE_MAX);
    assert_string_equal(x, y);                         /* deterministic */
    assert_string_not_equal(x, z);                     /* stable ID is part of the hash */
    assert_string_not_equal(x, s);                     /* so is the scope */
    assert_memory_equal(x, "wp_alice_laptop_ddd", 19); /* readable head kept */
    assert_int_equal(x[52], '_');
    assert_true(is_hex(x + 53, 10));

    /* Exactly 63 bytes fits uncut. */
    char db63[64];
    size_t head = strlen("wp_alice_laptop_");
    memset(db63, 'e', 63 - head);
    db63[63 - head] = '\0';
    role("wp_", a, db63, NULL, 0, x);
    assert_int_equal(strlen(x), 63);
    assert_memory_equal(x, "wp_alice_laptop_eee", 19);
    assert_true(strchr(x + head, '_') == NULL);
    id_free(a);
    id_free(a2);
    id_free(b);
}

static void test_role_collision_alternative(void **state)
{
    (void)state;
    id_identity *a = make_id("alice@example.com", "laptop.tail1234.ts.net.", NULL, "nA", NULL);
    char plain[ID_ROLE_MAX + 1], h1[ID_ROLE_MAX + 1], h2[ID_ROLE_MAX + 1];
    role("wp_", a, "appdb", NULL, 0, plain);
    role("wp_", a, "appdb", NULL, 1, h1);
    role("wp_", a, "appdb", NULL, 1, h2);
    assert_string_not_equal(plain, h1);
    assert_string_equal(h1, h2);
    assert_int_equal(strlen(h1), strlen(plain) + 11);
    assert_memory_equal(h1, "wp_alice_laptop_appdb_", 22);
    assert_true(is_hex(h1 + 22, 10));

    /* Long names: the hashed form of a 63-byte name still differs and fits. */
    char db[64];
    memset(db, 'q', 63 - strlen("wp_alice_laptop_"));
    db[63 - strlen("wp_alice_laptop_")] = '\0';
    role("wp_", a, db, NULL, 0, plain);
    role("wp_", a, db, NULL, 1, h1);
    assert_int_equal(strlen(plain), 63);
    assert_int_equal(strlen(h1), 63);
    assert_string_not_equal(plain, h1);

    /* Over-long names are already in hashed form: there is no second name to fall back
     * to, so asking for the collision alternative must not hand out the same name. */
    char dbl[80], first[ID_ROLE_MAX + 1], alt[ID_ROLE_MAX + 1];
    memset(dbl, 'z', 79);
    dbl[79] = '\0';
    role("wp_", a, dbl, NULL, 0, first);
    wp_error err;
    wp_status st = id_role_name("wp_", a, dbl, NULL, 1, alt, &err);
    if (st == WP_OK)
        assert_string_not_equal(first, alt);
    else
        assert_int_equal(st, WP_ERR_CONFLICT);
    id_free(a);
}

static void test_record(void **state)
{
    (void)state;
    id_identity *a = make_id("alice@example.com", "laptop.ts.net.", NULL, "nXYZ", NULL);
    char *r = id_role_record(a, "appdb", NULL);
    assert_string_equal(r, "waypoint:v1 login=alice@example.com node=nXYZ db=appdb scope=full");
    assert_true(id_record_is_waypoint(r));
    free(r);
    r = id_role_record(a, "appdb", "readonly");
    assert_string_equal(r, "waypoint:v1 login=alice@example.com node=nXYZ db=appdb scope=readonly");
    free(r);

    /* A crafted database name cannot add or override a field. */
    r = id_role_record(a, "x scope=admin%'\n\xc3\xa9", NULL);
    assert_string_equal(r, "waypoint:v1 login=alice@example.com node=nXYZ "
                           "db=x%20scope%3Dadmin%25%27%0A%C3%A9 scope=full");
    size_t eq = 0, sp = 0;
    for (const char *p = r; *p; p++) {
        eq += *p == '=';
        sp += *p == ' ';
    }
    assert_int_equal(eq, 4);
    assert_int_equal(sp, 4);
    free(r);
    id_free(a);

    assert_false(id_record_is_waypoint(NULL));
    assert_false(id_record_is_waypoint(""));
    assert_false(id_record_is_waypoint("waypoint:v2 login=a"));
    assert_false(id_record_is_waypoint("created by hand"));
    assert_false(id_record_is_waypoint("waypoint:v1"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_all_fields),
        cmocka_unit_test(test_parse_minimal),
        cmocka_unit_test(test_missing_fields),
        cmocka_unit_test(test_mistyped_fields),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_not_json),
        cmocka_unit_test(test_unknown_fields_tolerated),
        cmocka_unit_test(test_capmap_shapes),
        cmocka_unit_test(test_role_spec_example),
        cmocka_unit_test(test_role_sanitising),
        cmocka_unit_test(test_role_tagged),
        cmocka_unit_test(test_role_truncation),
        cmocka_unit_test(test_role_collision_alternative),
        cmocka_unit_test(test_record),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
