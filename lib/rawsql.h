/*
 * rawsql: raw SQL grant templates (spec section 3.5).
 *
 * A template is rendered with exactly three variables, each quoted for its position
 * ({{.Role}} and {{.Database}} as identifiers, {{.User}} as a string literal), then the
 * result is parsed by libpg_query (the real PostgreSQL parser) and accepted only if it is
 * one GRANT/REVOKE of object privileges or one ALTER DEFAULT PRIVILEGES whose grantee is
 * the role itself, with no GRANT OPTION, no role membership, nothing targeting other
 * roles and nothing that runs code.
 */
#ifndef WP_RAWSQL_H
#define WP_RAWSQL_H

#include "wp_error.h"

/* Renders tmpl. Unknown {{...}} syntax is WP_ERR_INVALID naming it. *out is malloc'd. */
wp_status rawsql_render(const char *tmpl, const char *role, const char *database, const char *user,
                        char **out, wp_error *err);
/* Validates rendered SQL for role. WP_ERR_DENIED with err->message naming the rule
 * broken ("two statements", "grantee is not the role", "WITH GRANT OPTION", ...). */
wp_status rawsql_validate(const char *sql, const char *role, wp_error *err);

/* Identifier / literal quoting that needs no server connection. Caller frees. */
char *rawsql_quote_ident(const char *s);
char *rawsql_quote_literal(const char *s);

#endif
