/*
 * fuzz_whois: a WhoIs body through everything Waypoint derives from it: the identity,
 * the grant for a fixed listener and database (with and without a downgrade), the role
 * name in both forms and the identity record. Errors are expected; crashes, leaks and
 * undefined behaviour are not, and every role name must stay within 63 bytes of
 * [a-z0-9_]. The same bytes are also read as a client's options string (the other
 * untrusted input grant.c parses): with no downgrade found it must come back unchanged.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "grant.h"
#include "identity.h"

static void check_role(const id_identity *id, const char *db, const char *scope, int hashed)
{
    char name[ID_ROLE_MAX + 1];
    wp_error err;
    if (id_role_name("wp_", id, db, scope, hashed, name, &err) != WP_OK)
        return;
    size_t n = strlen(name);
    if (n > ID_ROLE_MAX)
        abort();
    for (size_t i = 0; i < n; i++)
        if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') ||
              name[i] == '_'))
            abort();
}

static void check_grant(const id_identity *id, const char *db, grant_preset down)
{
    static const cfg_limits defaults = {10, 3600000, 0};
    grant_effective *g = NULL;
    wp_error err;
    if (grant_resolve(id->cap_rules, "pg-main", db, &defaults, down, &g, &err) != WP_OK)
        return;
    for (size_t i = 0; i < g->npairs; i++) {
        if (!grant_schema_valid(g->pairs[i].schema) || g->pairs[i].preset == GRANT_PRESET_NONE)
            abort();
        if (down != GRANT_PRESET_NONE && g->pairs[i].preset > down)
            abort();
    }
    if (down != GRANT_PRESET_NONE && g->nsql != 0)
        abort();
    grant_free(g);
}

static void check_options(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        return;
    memcpy(s, data, size);
    s[size] = '\0';
    grant_preset p;
    char *out = NULL;
    wp_error err;
    if (grant_extract_downgrade(NULL, s, &p, &out, &err) == WP_OK) {
        if (!out || (p == GRANT_PRESET_NONE && strcmp(out, s) != 0))
            abort();
        free(out);
    }
    free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_options(data, size);
    id_identity *id = NULL;
    wp_error err;
    if (id_parse_whois((const char *)data, size, "redo.com/cap/waypoint", &id, &err) != WP_OK)
        return 0;
    check_grant(id, "appdb", GRANT_PRESET_NONE);
    check_grant(id, "appdb", GRANT_PRESET_READONLY);
    check_grant(id, "*", GRANT_PRESET_NONE);
    check_role(id, "appdb", NULL, 0);
    check_role(id, "appdb", "readonly", 1);
    free(id_role_record(id, "appdb", NULL));
    id_free(id);
    return 0;
}
