/*
 * identity: who the caller is, from tailscaled's WhoIs answer, and what their backend
 * role is called (spec sections 2 and 4).
 *
 * id_parse_whois() validates the JSON where it reads it and copies out the fields
 * Waypoint uses plus the raw CapMap rules for the configured capability (kept as a
 * jansson array for grant.c). Role naming is a pure function of the identity, so the
 * same caller always maps to the same role, and collisions fall back to a hashed form.
 */
#ifndef WP_IDENTITY_H
#define WP_IDENTITY_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "wp_error.h"

#define ID_ROLE_MAX 63 /* PostgreSQL NAMEDATALEN - 1 */

typedef struct id_identity {
    char *login_name;    /* UserProfile.LoginName; "tagged-devices" for tagged nodes */
    char *display_name;  /* UserProfile.DisplayName (may be "") */
    int64_t user_id;     /* UserProfile.ID */
    char *node_name;     /* Node.Name, MagicDNS FQDN with trailing dot */
    char *computed_name; /* Node.ComputedName, NULL when absent */
    char *stable_id;     /* Node.StableID */
    char **tags;         /* Node.Tags, e.g. "tag:ci" */
    size_t ntags;
    char **addresses; /* Node.Addresses, e.g. "100.64.0.1/32" */
    size_t naddrs;
    json_t *cap_rules; /* CapMap[capability]: JSON array (owned ref), empty array if absent */
} id_identity;

/* Parses a WhoIs 200 body. capability selects the CapMap entry. On error returns
 * WP_ERR_INVALID with a message naming the field, and *out is untouched. */
wp_status id_parse_whois(const char *json, size_t len, const char *capability, id_identity **out,
                         wp_error *err);
void id_free(id_identity *id);
int id_is_tagged(const id_identity *id);

/* The identity part of the role name: "<user>_<node>", sanitised (spec section 4). */
/* Role name for (identity, database, scope). scope is NULL for the full grant or a
 * preset name ("readonly") for a downgraded connection. hashed selects the collision
 * alternative. out must hold ID_ROLE_MAX + 1 bytes. */
wp_status id_role_name(const char *prefix, const id_identity *id, const char *database,
                       const char *scope, int hashed, char *out, wp_error *err);

/* The record Waypoint stores on a role it creates (in its COMMENT) so it can recognise
 * the role later: a stable, versioned text of (login, node stable ID, database, scope),
 * e.g. "waypoint:v1 login=alice@example.com node=nXYZ db=appdb scope=full". Caller frees. */
char *id_role_record(const id_identity *id, const char *database, const char *scope);
/* Record values are percent-encoded (spaces, '=', '%', quotes, backslash, control and
 * non-ASCII bytes) so no value can add a field. id_record_escape writes the encoding of
 * s at p (room for id_record_escaped_len(s) bytes) and returns the new end. */
size_t id_record_escaped_len(const char *s);
char *id_record_escape(char *p, const char *s);
/* True when comment was written by Waypoint (any identity). */
int id_record_is_waypoint(const char *comment);

#endif
