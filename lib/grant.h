/*
 * grant: from the caller's CapMap rules to exactly what they may do (spec section 3).
 *
 * The effective grant is a set of (preset, schema) pairs: the union over matching rules
 * and over the exact and "*" database entries, never a cross product. A per-connection
 * downgrade lowers every pair above the requested maximum. Limits merge to the strictest
 * non-zero value, falling back to the config defaults.
 */
#ifndef WP_GRANT_H
#define WP_GRANT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "wp_error.h"

typedef enum {
    GRANT_PRESET_NONE = 0,
    GRANT_PRESET_READONLY = 1,
    GRANT_PRESET_READWRITE = 2,
    GRANT_PRESET_ADMIN = 3,
} grant_preset;

#define GRANT_SCHEMA_MAX 63

typedef struct grant_pair {
    grant_preset preset;
    char schema[GRANT_SCHEMA_MAX + 1];
} grant_pair;

typedef struct grant_sql {
    char *template_text; /* raw template, rendered later by rawsql.c */
    char origin[96];     /* "rule 2, database appdb" for log lines */
} grant_sql;

typedef struct grant_effective {
    grant_pair *pairs; /* sorted by schema then preset, deduplicated */
    size_t npairs;
    grant_sql *sql;
    size_t nsql;
    cfg_limits limits;      /* merged, defaults applied */
    grant_preset downgrade; /* GRANT_PRESET_NONE when no downgrade was asked */
    char matched[192];      /* rules and entries used, "1:appdb,2:*" (1-based; audit) */
} grant_effective;

const char *grant_preset_str(grant_preset p);
/* Case-insensitive. Returns GRANT_PRESET_NONE for unknown names. */
grant_preset grant_preset_parse(const char *name);

/* Resolves rules (the CapMap array) for listener and database. Errors:
 *  WP_ERR_DENIED  nothing granted for this listener/database (SQLSTATE 28000);
 *  WP_ERR_INVALID malformed rule / unknown preset / bad schema (28000, message names the
 *                 rule and value, with a "did you mean" hint for presets).
 * downgrade is GRANT_PRESET_NONE or the maximum asked for by the client. */
wp_status grant_resolve(json_t *rules, const char *listener, const char *database,
                        const cfg_limits *defaults, grant_preset downgrade, grant_effective **out,
                        wp_error *err);
void grant_free(grant_effective *g);

/* Parses a waypoint_presets value ("readonly" or "readonly,readwrite"): the strongest
 * listed. Invalid value: WP_ERR_INVALID, SQLSTATE 22023 naming the value. */
wp_status grant_parse_downgrade(const char *value, grant_preset *out, wp_error *err);

/* Finds the downgrade request in startup parameters: the waypoint_presets parameter
 * and/or "-c waypoint_presets=..." / "-c waypoint.presets=..." inside options.
 * Writes the options value with Waypoint's own switches removed to *options_out
 * (malloc'd; NULL when options was absent). */
wp_status grant_extract_downgrade(const char *param_value, const char *options, grant_preset *out,
                                  char **options_out, wp_error *err);

/* True when `to` takes away anything `from` gave: a (schema, preset) pair of `from` that
 * no pair of `to` covers with the same schema and an equal or stronger preset, or a raw
 * SQL grant of `from` that `to` lacks. */
int grant_narrows(const grant_effective *from, const grant_effective *to);

/* True when s is an acceptable schema identifier. */
int grant_schema_valid(const char *s);

#endif
