/*
 * upauth: logging in to the PostgreSQL backend as the provisioned role (spec section 6).
 *
 * up_login sends the StartupMessage and then answers 'R' requests one at a time until
 * AuthenticationOk, leaving everything after it (ParameterStatus, BackendKeyData,
 * ReadyForQuery) unread for the caller. The backend is trusted to run the database but
 * not to run our authentication: every request is checked against what came before,
 * the exchange is bounded in steps and by the caller's deadline, and a SCRAM login only
 * counts once the server has proven it knows the verifier (AuthenticationOk without a
 * verified SASLFinal is refused, so a man in the middle cannot skip the proof).
 *
 * The password is only ever written to the backend socket. Buffers that held it are
 * wiped, and no error message or log line includes it.
 */
#include "upstream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scram.h"

#define UP_AUTH_MSG_MAX 65536 /* auth requests and errors are small */
#define UP_AUTH_STEPS_MAX 16  /* a real exchange needs at most four */

typedef struct login {
    up_conn *c;
    const char *user;
    const char *password;
    uint32_t version;
    int64_t deadline;
    wp_error *err;
    scram_client *scram;
    int sasl_verified;
    int answered; /* a method (cleartext, MD5, SASL) has been answered */
    int requests; /* authentication requests seen so far */
    pgw_buf out;
} login;

static wp_status fail(wp_error *err, wp_status st, const char *sqlstate, const char *msg)
{
    wp_error_set(err, sqlstate, "%s", msg);
    return st;
}

static wp_status bad_backend(login *l, const char *msg)
{
    return fail(l->err, WP_ERR_PROTOCOL, WP_SQLSTATE_PROTOCOL, msg);
}

/* Sends what the builders put in l->out, then wipes it: it may hold the password. */
static wp_status flush(login *l)
{
    wp_status st = io_write_all(&l->c->io, l->out.data, l->out.len, l->deadline);
    wp_zeroize(l->out.data, l->out.cap);
    pgw_buf_reset(&l->out);
    if (st != WP_OK)
        wp_error_set(l->err, WP_SQLSTATE_CONN_FAILURE, "could not send to the backend: %s",
                     wp_status_str(st));
    return st;
}

static wp_status send_startup(login *l, const pgw_param *params, size_t nparams)
{
    pgw_param *all = calloc(nparams + 1, sizeof(*all));
    if (!all)
        return fail(l->err, WP_ERR_NOMEM, WP_SQLSTATE_INTERNAL, "out of memory");
    size_t n = 0;
    all[n++] = (pgw_param){.key = (char *)"user", .value = (char *)l->user};
    for (size_t i = 0; i < nparams; i++)
        if (strcmp(params[i].key, "user") != 0) /* the role is ours to choose, always */
            all[n++] = params[i];
    wp_status st = pgw_build_startup(&l->out, l->version, all, n);
    free(all);
    if (st != WP_OK)
        return fail(l->err, st, WP_SQLSTATE_PROTOCOL, "startup parameters are too large");
    return flush(l);
}

static wp_status auth_cleartext(login *l)
{
    wp_status st = pgw_build_password(&l->out, l->password);
    return st == WP_OK ? flush(l) : fail(l->err, st, WP_SQLSTATE_INTERNAL, "out of memory");
}

static wp_status auth_md5(login *l, const unsigned char *body, size_t len)
{
    if (len != 8)
        return bad_backend(l, "malformed MD5 authentication request from the backend");
    char resp[36];
    wp_status st = scram_md5_response(l->password, l->user, body + 4, resp);
    if (st == WP_OK)
        st = pgw_build_password(&l->out, resp);
    wp_zeroize(resp, sizeof(resp));
    return st == WP_OK ? flush(l) : fail(l->err, st, WP_SQLSTATE_INTERNAL, "MD5 failed");
}

/* Picks the mechanism from the NUL-terminated list (ends with an empty name). */
static wp_status pick_mechanism(login *l, const unsigned char *p, size_t len, int *plus)
{
    int have = 0, have_plus = 0;
    char offered[256] = "";
    size_t pos = 0;
    while (pos < len && p[pos] != '\0') {
        const unsigned char *end = memchr(p + pos, '\0', len - pos);
        if (!end)
            return bad_backend(l, "malformed SASL mechanism list from the backend");
        const char *m = (const char *)p + pos;
        have |= strcmp(m, "SCRAM-SHA-256") == 0;
        have_plus |= strcmp(m, "SCRAM-SHA-256-PLUS") == 0;
        size_t used = strlen(offered);
        snprintf(offered + used, sizeof(offered) - used, "%s%.64s", used ? ", " : "", m);
        pos = (size_t)(end - p) + 1;
    }
    if (pos >= len)
        return bad_backend(l, "unterminated SASL mechanism list from the backend");
    *plus = have_plus && l->c->cb_len > 0;
    if (!have && !*plus) {
        wp_error_set(l->err, WP_SQLSTATE_INVALID_AUTH,
                     "backend offered SASL mechanisms Waypoint does not support: %s",
                     offered[0] ? offered : "(none)");
        return WP_ERR_UNSUPPORTED;
    }
    return WP_OK;
}

static wp_status auth_sasl(login *l, const unsigned char *body, size_t len)
{
    if (l->scram)
        return bad_backend(l, "backend restarted SASL authentication");
    int plus = 0;
    wp_status st = pick_mechanism(l, body + 4, len - 4, &plus);
    if (st != WP_OK)
        return st;
    l->scram =
        scram_client_new(l->password, plus ? l->c->cb_hash : NULL, plus ? l->c->cb_len : 0, NULL);
    if (!l->scram)
        return fail(l->err, WP_ERR_INTERNAL, WP_SQLSTATE_INTERNAL, "could not start SCRAM");
    /* TLS without -PLUS on offer: say we could bind, so a stripped offer is detected. */
    st = !plus && l->c->cb_len ? scram_client_set_tls_without_plus(l->scram) : WP_OK;
    char *first = NULL;
    size_t n = 0;
    if (st == WP_OK)
        st = scram_client_first(l->scram, &first, &n);
    if (st == WP_OK)
        st = pgw_build_sasl_initial(&l->out, scram_client_mechanism(l->scram), first, n);
    free(first);
    return st == WP_OK ? flush(l) : fail(l->err, st, WP_SQLSTATE_INTERNAL, "SCRAM failed");
}

static wp_status auth_sasl_continue(login *l, const unsigned char *body, size_t len)
{
    if (!l->scram)
        return bad_backend(l, "backend sent SASLContinue without starting SASL");
    char *final = NULL;
    size_t n = 0;
    wp_status st =
        scram_client_final(l->scram, (const char *)body + 4, len - 4, &final, &n, l->err);
    if (st != WP_OK)
        return st;
    st = pgw_build_sasl_response(&l->out, final, n);
    wp_zeroize(final, n);
    free(final);
    return st == WP_OK ? flush(l) : fail(l->err, st, WP_SQLSTATE_INTERNAL, "out of memory");
}

static wp_status auth_sasl_final(login *l, const unsigned char *body, size_t len)
{
    if (!l->scram)
        return bad_backend(l, "backend sent SASLFinal without starting SASL");
    wp_status st = scram_client_verify(l->scram, (const char *)body + 4, len - 4, l->err);
    if (st == WP_OK)
        l->sasl_verified = 1;
    return st;
}

static const char *method_name(uint32_t code)
{
    switch (code) {
    case PGW_AUTH_KERBEROS_V5:
        return "Kerberos V5";
    case PGW_AUTH_GSS:
    case PGW_AUTH_GSS_CONTINUE:
        return "GSSAPI";
    case PGW_AUTH_SSPI:
        return "SSPI";
    default:
        return NULL;
    }
}

static wp_status unsupported(login *l, uint32_t code)
{
    const char *name = method_name(code);
    if (name)
        wp_error_set(l->err, WP_SQLSTATE_INVALID_AUTH,
                     "backend requested %s authentication, which Waypoint does not support", name);
    else
        wp_error_set(l->err, WP_SQLSTATE_INVALID_AUTH,
                     "backend requested an unknown authentication method (code %u)", code);
    return WP_ERR_UNSUPPORTED;
}

/* One 'R' message. *done is set on AuthenticationOk. */
static wp_status on_auth(login *l, const unsigned char *body, size_t len, int *done)
{
    if (len < 4)
        return bad_backend(l, "malformed authentication request from the backend");
    uint32_t code = pgw_get32(body);
    l->requests++;
    /* PostgreSQL asks for exactly one method. A second request (another method, or the
     * same again) could only get the password sent twice or in a weaker form, e.g. in
     * cleartext after SCRAM had begun. */
    if (code == PGW_AUTH_CLEARTEXT || code == PGW_AUTH_MD5 || code == PGW_AUTH_SASL) {
        if (l->answered)
            return bad_backend(l, "backend asked for a second authentication method");
        l->answered = 1;
    }
    switch (code) {
    case PGW_AUTH_OK:
        if (l->scram && !l->sasl_verified)
            return fail(l->err, WP_ERR_AUTH, WP_SQLSTATE_INVALID_AUTH,
                        "backend skipped the SCRAM server proof; refusing the connection");
        *done = 1;
        return WP_OK;
    case PGW_AUTH_CLEARTEXT:
        return auth_cleartext(l);
    case PGW_AUTH_MD5:
        return auth_md5(l, body, len);
    case PGW_AUTH_SASL:
        return auth_sasl(l, body, len);
    case PGW_AUTH_SASL_CONTINUE:
        return auth_sasl_continue(l, body, len);
    case PGW_AUTH_SASL_FINAL:
        return auth_sasl_final(l, body, len);
    default:
        return unsupported(l, code);
    }
}

/* NegotiateProtocolVersion: acceptable only as the backend's first answer, and only if
 * it lowers the minor version of what we asked for without refusing any option. The
 * field is a full version (major << 16 | minor), as PostgreSQL sends and libpq reads. */
static wp_status on_negotiate(login *l, const unsigned char *body, size_t len)
{
    if (l->requests > 0 || len < 8)
        return bad_backend(l, "unexpected NegotiateProtocolVersion from the backend");
    uint32_t offered = pgw_get32(body), nopts = pgw_get32(body + 4);
    if (offered < PGW_PROTO_30 || offered >= l->version || nopts != 0) {
        wp_error_set(l->err, WP_SQLSTATE_PROTOCOL,
                     "backend cannot speak protocol %u.%u (it offers %u.%u)", l->version >> 16,
                     l->version & 0xffff, offered >> 16, offered & 0xffff);
        return WP_ERR_PROTOCOL;
    }
    l->requests++; /* at most once */
    l->c->proto = offered;
    return WP_OK;
}

/* The backend refused the login. Its SQLSTATE is the client's, its words are not: they
 * can name hosts and pg_hba rules ("no pg_hba.conf entry for host ..."), so they go to
 * the detail (logged, never sent). A missing database keeps PostgreSQL's own message,
 * which names only what the client asked for. */
static wp_status on_error(login *l, const pgw_buf *b)
{
    wp_error be;
    wp_error_clear(&be);
    if (pgw_parse_error(b->data, b->len, &be) != WP_OK)
        return bad_backend(l, "malformed ErrorResponse from the backend");
    if (strcmp(be.sqlstate, WP_SQLSTATE_UNDEFINED_DB) == 0) {
        be.detail[0] = be.hint[0] = '\0';
        *l->err = be;
        return WP_ERR_BACKEND;
    }
    wp_error_set(l->err, be.sqlstate[0] ? be.sqlstate : WP_SQLSTATE_INVALID_AUTH, "%s",
                 "the backend refused the login");
    wp_error_detail(l->err, "backend: %s%s%s", be.message, be.detail[0] ? " DETAIL: " : "",
                    be.detail);
    return WP_ERR_BACKEND;
}

static wp_status on_message(login *l, char type, const pgw_buf *b, int *done)
{
    switch (type) {
    case PGW_MSG_AUTH:
        return on_auth(l, b->data, b->len, done);
    case PGW_MSG_ERROR:
        return on_error(l, b);
    case PGW_MSG_NOTICE:
        return WP_OK;
    case PGW_MSG_NEGOTIATE:
        return on_negotiate(l, b->data, b->len);
    default:
        return bad_backend(l, "unexpected message from the backend during login");
    }
}

static wp_status read_error(wp_error *err, wp_status st)
{
    if (st == WP_ERR_PROTOCOL || st == WP_ERR_TOO_LARGE)
        return fail(err, st, WP_SQLSTATE_PROTOCOL, "malformed message from the backend");
    if (st == WP_ERR_TIMEOUT)
        return fail(err, st, WP_SQLSTATE_CONN_FAILURE, "timeout while logging in to the backend");
    wp_error_set(err, WP_SQLSTATE_CONN_FAILURE, "lost the backend during login: %s",
                 wp_status_str(st));
    return st;
}

static wp_status run(login *l, const pgw_param *params, size_t nparams)
{
    wp_status st = send_startup(l, params, nparams);
    pgw_buf in = {0};
    int done = 0;
    for (int step = 0; st == WP_OK && !done; step++) {
        char type = 0;
        if (step >= UP_AUTH_STEPS_MAX) {
            st = bad_backend(l, "backend authentication exchange did not finish");
            break;
        }
        if ((st = pgw_read_msg(&l->c->io, l->deadline, UP_AUTH_MSG_MAX, &type, &in)) != WP_OK)
            st = read_error(l->err, st);
        else
            st = on_message(l, type, &in, &done);
    }
    pgw_buf_free(&in);
    return st;
}

wp_status up_login(up_conn *c, uint32_t version, const pgw_param *params, size_t nparams,
                   const char *user, const char *password, int64_t deadline_ms, wp_error *err)
{
    login l = {.c = c,
               .user = user,
               .password = password ? password : "",
               .version = version,
               .deadline = deadline_ms,
               .err = err};
    wp_error_clear(err);
    c->proto = version; /* lowered by a NegotiateProtocolVersion */
    wp_status st = run(&l, params, nparams);
    scram_client_free(l.scram);
    if (l.out.data)
        wp_zeroize(l.out.data, l.out.cap);
    pgw_buf_free(&l.out);
    return st;
}
