/*
 * identity.c against a WhoIs answer from a real tailscaled: test/unit/fixtures/
 * whois_tailscaled.json was saved by the tailnet test (test/tailnet, see
 * docs/testing.md) from a userspace-networking tailscaled of the pinned tailscale.com
 * version, for a tailnet connection of the tsnet node "laptop" holding one grant. It
 * carries every field tailscaled sends (Hostinfo, keys, Endpoints, ...), not just the ones
 * the stand-in writes, so this proves the parser takes the real shape.
 *
 * Each parsed field is compared with the same field read from the fixture by jansson
 * directly, so the test follows a regenerated fixture without edits; the role name is
 * checked against the spec's rule applied to those raw fields.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "identity.h"

#define CAP "redo.com/cap/waypoint"
#define FIXTURE WP_SOURCE_DIR "/test/unit/fixtures/whois_tailscaled.json"

typedef struct {
    char *text;
    size_t len;
    json_t *root;
} fixture;

static int fixture_setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    FILE *fp = fopen(FIXTURE, "rb");
    assert_non_null(fp);
    assert_int_equal(fseek(fp, 0, SEEK_END), 0);
    long n = ftell(fp);
    assert_true(n > 0);
    rewind(fp);
    f->text = malloc((size_t)n + 1);
    assert_non_null(f->text);
    assert_int_equal(fread(f->text, 1, (size_t)n, fp), (size_t)n);
    f->text[n] = '\0';
    f->len = (size_t)n;
    fclose(fp);
    json_error_t jerr;
    f->root = json_loadb(f->text, f->len, 0, &jerr);
    assert_non_null(f->root);
    *state = f;
    return 0;
}

static int fixture_teardown(void **state)
{
    fixture *f = *state;
    json_decref(f->root);
    free(f->text);
    free(f);
    return 0;
}

static const char *raw_str(json_t *root, const char *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(json_object_get(root, obj), key));
    assert_non_null(s);
    return s;
}

static id_identity *parse(const fixture *f, const char *capability)
{
    id_identity *id = NULL;
    wp_error err;
    wp_error_clear(&err);
    assert_int_equal(id_parse_whois(f->text, f->len, capability, &id, &err), WP_OK);
    assert_non_null(id);
    return id;
}

/* It is what a real tailscaled sends: tab-indented, with fields the stand-in lacks. */
static void test_fixture_is_tailscaled_shaped(void **state)
{
    fixture *f = *state;
    assert_non_null(strstr(f->text, "\n\t\"Node\": {"));
    json_t *node = json_object_get(f->root, "Node");
    assert_non_null(json_object_get(node, "Hostinfo"));
    assert_non_null(json_object_get(node, "Key"));
    assert_non_null(json_object_get(node, "DiscoKey"));
    assert_true(json_is_array(json_object_get(json_object_get(f->root, "CapMap"), CAP)));
}

static void test_fields_match_the_answer(void **state)
{
    fixture *f = *state;
    id_identity *id = parse(f, CAP);
    assert_string_equal(id->login_name, raw_str(f->root, "UserProfile", "LoginName"));
    assert_string_equal(id->display_name, raw_str(f->root, "UserProfile", "DisplayName"));
    assert_int_equal(id->user_id, json_integer_value(json_object_get(
                                      json_object_get(f->root, "UserProfile"), "ID")));
    assert_string_equal(id->node_name, raw_str(f->root, "Node", "Name"));
    assert_string_equal(id->stable_id, raw_str(f->root, "Node", "StableID"));
    const char *name = id->node_name;
    assert_true(strlen(name) > 1 && name[strlen(name) - 1] == '.'); /* MagicDNS FQDN */

    json_t *addrs = json_object_get(json_object_get(f->root, "Node"), "Addresses");
    assert_int_equal(id->naddrs, json_array_size(addrs));
    assert_int_equal(id->naddrs, 2); /* an IPv4 and an IPv6 address */
    for (size_t i = 0; i < id->naddrs; i++)
        assert_string_equal(id->addresses[i], json_string_value(json_array_get(addrs, i)));

    /* testcontrol cannot make a tagged node (docs/testing.md): a user-owned one. */
    assert_int_equal(id->ntags, 0);
    assert_false(id_is_tagged(id));

    json_t *rules = json_object_get(json_object_get(f->root, "CapMap"), CAP);
    assert_true(json_equal(id->cap_rules, rules));
    assert_int_equal(json_array_size(id->cap_rules), 1);
    assert_non_null(json_object_get(
        json_object_get(json_object_get(json_array_get(id->cap_rules, 0), "backends"), "pg-main"),
        "pg"));
    id_free(id);
}

/* Another capability name sees no grant in the same answer. */
static void test_other_capability_has_no_rules(void **state)
{
    fixture *f = *state;
    id_identity *id = parse(f, "example.com/cap/other");
    assert_true(json_is_array(id->cap_rules));
    assert_int_equal(json_array_size(id->cap_rules), 0);
    id_free(id);
}

/* The spec's rule on the raw fields: wp_<login before @>_<first label>_<db>, every byte
 * outside [a-z0-9] (after lowercasing) a '_'. */
static void test_role_name_from_the_answer(void **state)
{
    fixture *f = *state;
    id_identity *id = parse(f, CAP);
    char want[ID_ROLE_MAX + 1];
    const char *login = raw_str(f->root, "UserProfile", "LoginName");
    const char *node = raw_str(f->root, "Node", "Name");
    size_t n = 0;
    n += (size_t)snprintf(want + n, sizeof want - n, "wp_");
    for (const char *p = login; *p && *p != '@' && n < ID_ROLE_MAX; p++) {
        int c = tolower((unsigned char)*p);
        want[n++] = (char)((islower(c) || isdigit(c)) ? c : '_');
    }
    want[n++] = '_';
    for (const char *p = node; *p && *p != '.' && n < ID_ROLE_MAX; p++) {
        int c = tolower((unsigned char)*p);
        want[n++] = (char)((islower(c) || isdigit(c)) ? c : '_');
    }
    snprintf(want + n, sizeof want - n, "_appdb");

    char got[ID_ROLE_MAX + 1];
    wp_error err;
    wp_error_clear(&err);
    assert_int_equal(id_role_name("wp_", id, "appdb", NULL, 0, got, &err), WP_OK);
    assert_string_equal(got, want);
    assert_int_equal(id_role_name("wp_", id, "appdb", "readonly", 0, got, &err), WP_OK);
    assert_int_equal(strncmp(got, want, strlen(want)), 0);
    assert_string_equal(got + strlen(want), "_readonly");
    id_free(id);
}

/* Cut anywhere, the real answer is refused, never half-read. */
static void test_truncated_answer_refused(void **state)
{
    fixture *f = *state;
    for (size_t cut = 0; cut < f->len - 2; cut += 97) {
        id_identity *id = NULL;
        wp_error err;
        wp_error_clear(&err);
        assert_int_equal(id_parse_whois(f->text, cut, CAP, &id, &err), WP_ERR_INVALID);
        assert_null(id);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fixture_is_tailscaled_shaped, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_fields_match_the_answer, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_other_capability_has_no_rules, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_role_name_from_the_answer, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_truncated_answer_refused, fixture_setup,
                                        fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
