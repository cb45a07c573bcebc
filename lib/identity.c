/*
 * identity: tailscaled's WhoIs answer -> id_identity, and the identity -> role name.
 *
 * Parsing. The WhoIs body comes from a local daemon, but it is still untrusted input in
 * the sense that a bug or a hostile peer must never crash or confuse a worker: the body
 * is size-bounded, its nesting depth is checked before jansson recurses into it (worker
 * stacks are small), duplicate keys and embedded NULs are rejected, and every field is
 * type-checked where it is read. A wrong type is an error naming the field; unknown
 * fields are ignored so newer tailscaled versions keep working. JSON null on an optional
 * field means "absent" (Go encodes nil maps and slices as null).
 *
 * Required: Node.Name (string, may be "" when ComputedName is set), Node.StableID and
 * UserProfile.LoginName (non-empty strings: they are the identity, so fail closed).
 *
 * Role naming (spec section 4) is a pure function of (prefix, login or first tag, first
 * DNS label of the node, database, scope). Every part, the prefix included, is
 * lowercased and every byte outside [a-z0-9] becomes '_', so the result never needs
 * more than plain identifier quoting. When the name does not fit in 63 bytes, or when
 * the caller asks for the collision alternative, the name is cut to 52 bytes and '_'
 * plus 10 hex digits of SHA-256 over the role record (an injective encoding of login,
 * node stable ID, database and scope) is appended.
 *
 * The role record percent-encodes every byte that is not printable ASCII, and also
 * space, '=', '%', quotes and backslash, so a crafted login or database name can neither
 * add a field nor break out of the SQL literal the record is stored in.
 */
#include "identity.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scram.h"

#define ID_BODY_MAX (1024 * 1024) /* WhoIs bodies are a few KiB in practice */
#define ID_DEPTH_MAX 64           /* a grant is about 10 levels deep */
#define ID_STRING_MAX 1024
#define ID_ARRAY_MAX 64     /* Node.Tags, Node.Addresses */
#define ID_CAPRULES_MAX 256 /* grant rules matching one caller */
#define ID_HASH_HEX 10
#define ID_RECORD_PREFIX "waypoint:v1 "
#define ID_TAGGED_LOGIN "tagged-devices"

static wp_status bad_field(wp_error *err, const char *field, const char *what)
{
    wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, "WhoIs field %s %s", field, what);
    return WP_ERR_INVALID;
}

/* Rejects nesting deeper than ID_DEPTH_MAX before jansson's recursive parser sees the
 * body. Brackets inside strings do not count; escapes are skipped. */
static int depth_ok(const char *s, size_t len)
{
    int depth = 0, in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if (c == '{' || c == '[') {
            if (++depth > ID_DEPTH_MAX)
                return 0;
        } else if (c == '}' || c == ']') {
            depth--;
        }
    }
    return 1;
}

/* Copies obj[key] (a string) into *out. Absent or null: *out = NULL when optional. */
static wp_status get_string(json_t *obj, const char *field, const char *key, int required,
                            char **out, wp_error *err)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v || json_is_null(v))
        return required ? bad_field(err, field, "is missing") : WP_OK;
    if (!json_is_string(v))
        return bad_field(err, field, "must be a string");
    size_t n = json_string_length(v);
    if (n > ID_STRING_MAX)
        return bad_field(err, field, "is too long");
    if (required && n == 0)
        return bad_field(err, field, "must not be empty");
    *out = strdup(json_string_value(v));
    return *out ? WP_OK : WP_ERR_NOMEM;
}

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        free(v[i]);
    free(v);
}

/* Copies obj[key] (an array of strings, optional) into *out / *n. */
static wp_status get_string_array(json_t *obj, const char *field, const char *key, char ***out,
                                  size_t *n, wp_error *err)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    *n = 0;
    if (!v || json_is_null(v))
        return WP_OK;
    if (!json_is_array(v))
        return bad_field(err, field, "must be an array of strings");
    size_t count = json_array_size(v);
    if (count > ID_ARRAY_MAX)
        return bad_field(err, field, "has too many elements");
    for (size_t i = 0; i < count; i++) {
        json_t *e = json_array_get(v, i);
        if (!json_is_string(e) || json_string_length(e) > ID_STRING_MAX)
            return bad_field(err, field, "must be an array of strings");
    }
    char **arr = calloc(count ? count : 1, sizeof(*arr));
    if (!arr)
        return WP_ERR_NOMEM;
    for (size_t i = 0; i < count; i++) {
        arr[i] = strdup(json_string_value(json_array_get(v, i)));
        if (!arr[i]) {
            free_strv(arr, i);
            return WP_ERR_NOMEM;
        }
    }
    *out = arr;
    *n = count;
    return WP_OK;
}

static json_t *get_object(json_t *root, const char *key, int required, wp_status *st, wp_error *err)
{
    json_t *v = json_object_get(root, key);
    *st = WP_OK;
    if (!v || json_is_null(v)) {
        if (required)
            *st = bad_field(err, key, "is missing");
        return NULL;
    }
    if (!json_is_object(v)) {
        *st = bad_field(err, key, "must be an object");
        return NULL;
    }
    return v;
}

static wp_status parse_node(json_t *node, id_identity *id, wp_error *err)
{
    wp_status st;
    if ((st = get_string(node, "Node.Name", "Name", 0, &id->node_name, err)) != WP_OK)
        return st;
    if (!id->node_name)
        return bad_field(err, "Node.Name", "is missing");
    if ((st = get_string(node, "Node.StableID", "StableID", 1, &id->stable_id, err)) != WP_OK)
        return st;
    if ((st = get_string(node, "Node.ComputedName", "ComputedName", 0, &id->computed_name, err)) !=
        WP_OK)
        return st;
    if ((st = get_string_array(node, "Node.Tags", "Tags", &id->tags, &id->ntags, err)) != WP_OK)
        return st;
    return get_string_array(node, "Node.Addresses", "Addresses", &id->addresses, &id->naddrs, err);
}

static wp_status parse_profile(json_t *up, id_identity *id, wp_error *err)
{
    wp_status st;
    st = get_string(up, "UserProfile.LoginName", "LoginName", 1, &id->login_name, err);
    if (st != WP_OK)
        return st;
    st = get_string(up, "UserProfile.DisplayName", "DisplayName", 0, &id->display_name, err);
    if (st != WP_OK)
        return st;
    if (!id->display_name && !(id->display_name = strdup("")))
        return WP_ERR_NOMEM;
    json_t *uid = json_object_get(up, "ID");
    if (uid && !json_is_null(uid)) {
        if (!json_is_integer(uid))
            return bad_field(err, "UserProfile.ID", "must be an integer");
        id->user_id = (int64_t)json_integer_value(uid);
    }
    return WP_OK;
}

/* Takes a reference on CapMap[capability]; absent or null gives an empty array. */
static wp_status parse_capmap(json_t *root, const char *capability, id_identity *id, wp_error *err)
{
    wp_status st;
    json_t *capmap = get_object(root, "CapMap", 0, &st, err);
    if (st != WP_OK)
        return st;
    json_t *rules = capmap && capability ? json_object_get(capmap, capability) : NULL;
    if (!rules || json_is_null(rules)) {
        id->cap_rules = json_array();
        return id->cap_rules ? WP_OK : WP_ERR_NOMEM;
    }
    if (!json_is_array(rules)) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH,
                     "WhoIs field CapMap[\"%.128s\"] must be an array", capability);
        return WP_ERR_INVALID;
    }
    if (json_array_size(rules) > ID_CAPRULES_MAX) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH,
                     "WhoIs field CapMap[\"%.128s\"] has too many grant rules", capability);
        return WP_ERR_INVALID;
    }
    id->cap_rules = json_incref(rules);
    return WP_OK;
}

static wp_status parse_root(json_t *root, const char *capability, id_identity *id, wp_error *err)
{
    wp_status st;
    if (!json_is_object(root)) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, "WhoIs answer is not a JSON object");
        return WP_ERR_INVALID;
    }
    json_t *node = get_object(root, "Node", 1, &st, err);
    if (!node)
        return st;
    json_t *up = get_object(root, "UserProfile", 1, &st, err);
    if (!up)
        return st;
    if ((st = parse_node(node, id, err)) != WP_OK)
        return st;
    if ((st = parse_profile(up, id, err)) != WP_OK)
        return st;
    return parse_capmap(root, capability, id, err);
}

wp_status id_parse_whois(const char *json, size_t len, const char *capability, id_identity **out,
                         wp_error *err)
{
    if (!json || !out)
        return WP_ERR_INTERNAL;
    if (len > ID_BODY_MAX) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, "WhoIs answer is too large (%zu bytes)", len);
        return WP_ERR_INVALID;
    }
    if (!depth_ok(json, len)) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, "WhoIs answer is nested too deeply");
        return WP_ERR_INVALID;
    }
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        /* jerr.text quotes input; the position is enough to debug with. */
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH,
                     "WhoIs answer is not valid JSON (line %d, column %d)", jerr.line, jerr.column);
        return WP_ERR_INVALID;
    }
    id_identity *id = calloc(1, sizeof(*id));
    if (!id) {
        json_decref(root);
        return WP_ERR_NOMEM;
    }
    wp_status st = parse_root(root, capability, id, err);
    json_decref(root);
    if (st != WP_OK) {
        if (st == WP_ERR_NOMEM)
            wp_error_set(err, WP_SQLSTATE_INTERNAL, "out of memory reading WhoIs answer");
        id_free(id);
        return st;
    }
    *out = id;
    return WP_OK;
}

void id_free(id_identity *id)
{
    if (!id)
        return;
    free(id->login_name);
    free(id->display_name);
    free(id->node_name);
    free(id->computed_name);
    free(id->stable_id);
    free_strv(id->tags, id->ntags);
    free_strv(id->addresses, id->naddrs);
    json_decref(id->cap_rules);
    free(id);
}

int id_is_tagged(const id_identity *id)
{
    return id && id->login_name && strcmp(id->login_name, ID_TAGGED_LOGIN) == 0;
}

/* ---- role naming ---------------------------------------------------------------- */

/* Writes at most cap-1 bytes (NUL-terminated) but counts the full length, so the caller
 * learns how long the uncut name would be without allocating it. */
typedef struct name_buf {
    char *out;
    size_t cap;
    size_t len;
} name_buf;

static void nb_put(name_buf *b, const char *s, size_t n, int sanitise)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (sanitise) {
            if (c >= 'A' && c <= 'Z')
                c = (unsigned char)(c - 'A' + 'a');
            if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')))
                c = '_';
        }
        if (b->len + 1 < b->cap)
            b->out[b->len] = (char)c;
        b->len++;
    }
    b->out[b->len < b->cap ? b->len : b->cap - 1] = '\0';
}

static const char *user_part(const id_identity *id, size_t *n, wp_error *err)
{
    if (id_is_tagged(id)) {
        if (id->ntags == 0 || !id->tags[0]) {
            wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, "tagged node has no tags");
            return NULL;
        }
        const char *t = id->tags[0];
        if (strncmp(t, "tag:", 4) == 0)
            t += 4;
        *n = strlen(t);
        return t;
    }
    const char *at = strchr(id->login_name, '@');
    *n = at ? (size_t)(at - id->login_name) : strlen(id->login_name);
    return id->login_name;
}

static const char *node_part(const id_identity *id, size_t *n)
{
    const char *name = id->node_name;
    if (!name || !*name)
        name = id->computed_name ? id->computed_name : "";
    const char *dot = strchr(name, '.');
    *n = dot ? (size_t)(dot - name) : strlen(name);
    return name;
}

static int hash_hex(const char *record, char hex[ID_HASH_HEX + 1])
{
    unsigned char digest[32];
    if (wp_sha256(record, strlen(record), digest) != WP_OK)
        return -1;
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < ID_HASH_HEX; i++)
        hex[i] = digits[(digest[i / 2] >> ((i % 2) ? 0 : 4)) & 0xf];
    hex[ID_HASH_HEX] = '\0';
    return 0;
}

wp_status id_role_name(const char *prefix, const id_identity *id, const char *database,
                       const char *scope, int hashed, char *out, wp_error *err)
{
    if (!prefix || !id || !id->login_name || !id->stable_id || !database || !out)
        return WP_ERR_INTERNAL;
    size_t ulen, nlen;
    const char *user = user_part(id, &ulen, err);
    if (!user)
        return WP_ERR_INVALID;
    const char *node = node_part(id, &nlen);

    name_buf b = {out, ID_ROLE_MAX + 1, 0};
    nb_put(&b, prefix, strlen(prefix), 1);
    nb_put(&b, user, ulen, 1);
    nb_put(&b, "_", 1, 0);
    nb_put(&b, node, nlen, 1);
    nb_put(&b, "_", 1, 0);
    nb_put(&b, database, strlen(database), 1);
    if (scope) {
        nb_put(&b, "_", 1, 0);
        nb_put(&b, scope, strlen(scope), 1);
    }
    if (b.len <= ID_ROLE_MAX && !hashed)
        return WP_OK;

    char plain[ID_ROLE_MAX + 1];
    memcpy(plain, out, sizeof(plain));
    char *record = id_role_record(id, database, scope);
    if (!record)
        return WP_ERR_NOMEM;
    char hex[ID_HASH_HEX + 1];
    int rc = hash_hex(record, hex);
    free(record);
    if (rc != 0) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "cannot hash role identity");
        return WP_ERR_INTERNAL;
    }
    size_t keep = ID_ROLE_MAX - 1 - ID_HASH_HEX;
    if (b.len < keep)
        keep = b.len;
    snprintf(out + keep, ID_ROLE_MAX + 1 - keep, "_%s", hex);
    /* Never hand out one name for both forms: a name cut for length is already the
     * hashed form (no alternative exists), and a short one only matches by a crafted
     * 40-bit hash fixed point. */
    if (hashed && (b.len > ID_ROLE_MAX || strcmp(out, plain) == 0)) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, "role name collision cannot be resolved");
        return WP_ERR_CONFLICT;
    }
    return WP_OK;
}

/* ---- role record ---------------------------------------------------------------- */

static int must_escape(unsigned char c)
{
    return c <= 0x20 || c >= 0x7f || c == '=' || c == '%' || c == '\'' || c == '"' || c == '\\';
}

size_t id_record_escaped_len(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += must_escape((unsigned char)*s) ? 3 : 1;
    return n;
}

char *id_record_escape(char *p, const char *s)
{
    static const char digits[] = "0123456789ABCDEF";
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (must_escape(c)) {
            *p++ = '%';
            *p++ = digits[c >> 4];
            *p++ = digits[c & 0xf];
        } else {
            *p++ = (char)c;
        }
    }
    return p;
}

char *id_role_record(const id_identity *id, const char *database, const char *scope)
{
    if (!id || !id->login_name || !id->stable_id || !database)
        return NULL;
    const char *sc = scope ? scope : "full";
    const char *keys[4] = {"login=", " node=", " db=", " scope="};
    const char *vals[4] = {id->login_name, id->stable_id, database, sc};
    size_t total = strlen(ID_RECORD_PREFIX) + 1;
    for (int i = 0; i < 4; i++)
        total += strlen(keys[i]) + id_record_escaped_len(vals[i]);
    char *rec = malloc(total);
    if (!rec)
        return NULL;
    char *p = rec;
    memcpy(p, ID_RECORD_PREFIX, strlen(ID_RECORD_PREFIX));
    p += strlen(ID_RECORD_PREFIX);
    for (int i = 0; i < 4; i++) {
        memcpy(p, keys[i], strlen(keys[i]));
        p = id_record_escape(p + strlen(keys[i]), vals[i]);
    }
    *p = '\0';
    return rec;
}

int id_record_is_waypoint(const char *comment)
{
    return comment && strncmp(comment, ID_RECORD_PREFIX, strlen(ID_RECORD_PREFIX)) == 0;
}
