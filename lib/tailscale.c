/*
 * tailscale: the LocalAPI client (spec section 2): HTTP/1.1 over tailscaled's unix
 * socket with libcurl.
 *
 * Design:
 * - Kept-alive LocalAPI connections. tailscaled's LocalAPI is Go's net/http, which keeps
 *   HTTP/1.1 connections open; a fresh connection per WhoIs cost a third of a reused
 *   connect's instructions (curl handle set-up and teardown, connect) and a thread and
 *   accept on tailscaled's side. Easy handles are not thread-safe, so the client keeps
 *   a small cache of idle handles under a mutex: a call takes one (or makes one), uses
 *   it alone, and returns it, and the handle's connection goes with it. The lock is
 *   held only to pop or push a pointer, never across a request.
 * - Nothing doubtful is kept: a handle whose request failed in any way (timeout,
 *   transport error, oversized body) is cleaned up, never cached, so a half-read or
 *   hung connection is never reused. A kept connection that tailscaled closed while
 *   idle (a restart) is noticed by curl before reuse; if the close races the request
 *   and nothing at all came back, libcurl itself sends the request once more on a fresh
 *   connection (its retry of a reused connection that died before any response byte,
 *   which itest_tailscale pins). A timeout is never retried: a hung tailscaled still
 *   costs at most timeout_ms. Kept connections are dropped when the socket file is
 *   gone or replaced (checked with stat(2) on every call), so a removed socket refuses.
 * - CURLOPT_NOSIGNAL, because workers are threads: curl must never use SIGALRM for its
 *   timeouts. Connect and total timeouts are both the client's timeout_ms, so a hung
 *   tailscaled costs a worker at most that long.
 * - Fail closed. Every outcome other than "200 with a WhoIs we could parse" is an error
 *   with SQLSTATE 28000; there is no path that turns a failure into an identity. The
 *   client-facing message says what kind of failure it was and nothing more; the
 *   operator-facing reason (curl error, HTTP status, body excerpt) goes to err->detail,
 *   which callers log and never send.
 * - Every WhoIs (connect, revalidation, cancel) asks with proto=tcp: a peer is only
 *   ever a TCP connection, and only the TCP half of tailscaled's proxymap may answer.
 * - Inputs are validated before they reach a URL: addresses may only hold the characters
 *   of "ip:port"/"[ipv6]:port" (and are URL-escaped anyway), domains only [a-z0-9.-].
 *   Response bodies are capped at TS_BODY_MAX; a larger answer is an error, not a
 *   truncated parse. No Referer or Origin is ever sent (tailscaled refuses those), and
 *   proxies from the environment are disabled: this traffic never leaves the host.
 */
#include "tailscale.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define TS_URL_BASE "http://local-tailscaled.sock/localapi/v0/"
#define TS_BODY_MAX (1024 * 1024)
#define TS_DEFAULT_TIMEOUT_MS 2000
#define TS_ADDR_MAX 64    /* "[" + 45-char IPv6 + "]:" + 5-digit port fits easily */
#define TS_DOMAIN_MAX 253 /* DNS name limit */
#define TS_DEFAULT_CAPABILITY "redo.com/cap/waypoint"
#define TS_IDLE_MAX 8 /* idle handles (and LocalAPI connections) kept per client */

struct ts_handles {
    pthread_mutex_t lock;
    CURL *h[TS_IDLE_MAX];
    size_t n;
    dev_t dev; /* the socket file the kept connections were made to */
    ino_t ino;
};

/* ---- process-wide init -------------------------------------------------------------- */

/* curl_global_init is not thread-safe; pthread_once makes ts_global_init idempotent. */
static pthread_once_t ts_once = PTHREAD_ONCE_INIT;
static CURLcode ts_init_rc = CURLE_FAILED_INIT; /* written once, under ts_once */

static void ts_do_init(void)
{
    ts_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

wp_status ts_global_init(void)
{
    pthread_once(&ts_once, ts_do_init);
    return ts_init_rc == CURLE_OK ? WP_OK : WP_ERR_INTERNAL;
}

void ts_global_cleanup(void)
{
    curl_global_cleanup();
}

/* ---- client ------------------------------------------------------------------------- */

ts_client *ts_client_new(const char *socket_path, const char *capability, int64_t timeout_ms)
{
    if (!socket_path || !*socket_path)
        return NULL;
    ts_client *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->socket_path = strdup(socket_path);
    c->capability = strdup(capability && *capability ? capability : TS_DEFAULT_CAPABILITY);
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : TS_DEFAULT_TIMEOUT_MS;
    c->idle = calloc(1, sizeof(*c->idle));
    if (c->idle && pthread_mutex_init(&c->idle->lock, NULL) != 0) {
        free(c->idle);
        c->idle = NULL;
    }
    if (!c->socket_path || !c->capability || !c->idle) {
        ts_client_free(c);
        return NULL;
    }
    return c;
}

void ts_client_free(ts_client *c)
{
    if (!c)
        return;
    if (c->idle) {
        for (size_t i = 0; i < c->idle->n; i++)
            curl_easy_cleanup(c->idle->h[i]);
        pthread_mutex_destroy(&c->idle->lock);
        free(c->idle);
    }
    free(c->socket_path);
    free(c->capability);
    free(c);
}

/* ---- idle handle cache ---------------------------------------------------------------- */

/* An idle handle (with its kept connection, if any), or a new one; NULL on no memory. */
/* A kept connection outlives its socket file: when the file is gone or is another one
 * (tailscaled removed, moved, restarted), the kept connections are closed and the
 * request dials the path afresh, so "socket gone" still refuses as it did before
 * connections were kept. One stat(2) per call. */
static CURL *ts_take(const ts_client *c)
{
    struct stat st;
    int have = stat(c->socket_path, &st) == 0;
    CURL *h = NULL, *stale[TS_IDLE_MAX];
    size_t nstale = 0;
    pthread_mutex_lock(&c->idle->lock);
    if (!have || st.st_dev != c->idle->dev || st.st_ino != c->idle->ino) {
        nstale = c->idle->n;
        memcpy(stale, c->idle->h, nstale * sizeof(*stale));
        c->idle->n = 0;
        c->idle->dev = have ? st.st_dev : 0;
        c->idle->ino = have ? st.st_ino : 0;
    }
    if (c->idle->n > 0)
        h = c->idle->h[--c->idle->n];
    pthread_mutex_unlock(&c->idle->lock);
    for (size_t i = 0; i < nstale; i++)
        curl_easy_cleanup(stale[i]);
    return h ? h : curl_easy_init();
}

/* Returns a handle whose last request completed; beyond TS_IDLE_MAX it is closed. */
static void ts_give(const ts_client *c, CURL *h)
{
    /* The request's pointers (error buffer, body) die with the call. */
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, (char *)NULL);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, (void *)NULL);
    pthread_mutex_lock(&c->idle->lock);
    if (c->idle->n < TS_IDLE_MAX) {
        c->idle->h[c->idle->n++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&c->idle->lock);
    if (h)
        curl_easy_cleanup(h);
}

/* ---- one HTTP GET ------------------------------------------------------------------- */

typedef struct ts_body {
    char *data; /* NUL-terminated */
    size_t len;
    size_t cap;
    int too_large;
    int nomem;
} ts_body;

static size_t ts_on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    ts_body *b = userdata;
    size_t n = size * nmemb;
    if (n > TS_BODY_MAX - b->len) {
        b->too_large = 1;
        return 0; /* makes curl stop with CURLE_WRITE_ERROR */
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->data, cap);
        if (!p) {
            b->nomem = 1;
            return 0;
        }
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

/* Printable excerpt of a response body for err->detail (log-only). */
static void ts_excerpt(const ts_body *b, char *out, size_t outsz)
{
    size_t n = 0;
    for (size_t i = 0; b->data && i < b->len && n + 1 < outsz && n < 200; i++) {
        unsigned char ch = (unsigned char)b->data[i];
        out[n++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : ' ';
    }
    while (n > 0 && out[n - 1] == ' ')
        n--;
    out[n] = '\0';
}

/* The operator-facing reason a connect failed: missing socket vs. nobody listening. */
static void ts_connect_detail(const ts_client *c, const char *curl_msg, wp_error *err)
{
    struct stat st;
    if (stat(c->socket_path, &st) != 0)
        wp_error_detail(err, "tailscaled socket %s: %s", c->socket_path, strerror(errno));
    else
        wp_error_detail(err, "tailscaled socket %s: %s", c->socket_path, curl_msg);
}

static CURLcode ts_setup(CURL *h, const ts_client *c, const char *url, ts_body *body, char *errbuf)
{
    CURLcode rc = CURLE_OK;
#define TS_SET(opt, val)                                                                           \
    do {                                                                                           \
        if (rc == CURLE_OK)                                                                        \
            rc = curl_easy_setopt(h, opt, val);                                                    \
    } while (0)
    TS_SET(CURLOPT_ERRORBUFFER, errbuf);
    TS_SET(CURLOPT_URL, url);
    TS_SET(CURLOPT_UNIX_SOCKET_PATH, c->socket_path);
    TS_SET(CURLOPT_NOSIGNAL, 1L);
    TS_SET(CURLOPT_CONNECTTIMEOUT_MS, (long)c->timeout_ms);
    TS_SET(CURLOPT_TIMEOUT_MS, (long)c->timeout_ms);
    TS_SET(CURLOPT_PROXY, ""); /* ignore http_proxy & co: this never leaves the host */
    TS_SET(CURLOPT_FOLLOWLOCATION, 0L);
    TS_SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    TS_SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)TS_BODY_MAX);
#if LIBCURL_VERSION_NUM >= 0x075500 /* 7.85: the _STR form replaces the deprecated one */
    TS_SET(CURLOPT_PROTOCOLS_STR, "http");
#else
    TS_SET(CURLOPT_PROTOCOLS, (long)CURLPROTO_HTTP);
#endif
    TS_SET(CURLOPT_WRITEFUNCTION, ts_on_body);
    TS_SET(CURLOPT_WRITEDATA, body);
#undef TS_SET
    return rc;
}

/*
 * GETs TS_URL_BASE + path (+ escaped query value when qval is set). On WP_OK, *status
 * holds the HTTP status and body the answer (any status). what prefixes client messages.
 */
static wp_status ts_get(const ts_client *c, const char *path, const char *qval, long *status,
                        ts_body *body, const char *what, wp_error *err)
{
    if (ts_global_init() != WP_OK) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, "%s: internal error", what);
        wp_error_detail(err, "curl_global_init failed");
        return WP_ERR_INTERNAL;
    }
    CURL *h = ts_take(c);
    if (!h) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, "%s: out of memory", what);
        return WP_ERR_NOMEM;
    }
    wp_status st = WP_OK;
    char *esc = qval ? curl_easy_escape(h, qval, 0) : NULL;
    size_t urlsz = sizeof(TS_URL_BASE) + strlen(path) + (esc ? strlen(esc) : 0) + 1;
    char *url = malloc(urlsz);
    char errbuf[CURL_ERROR_SIZE] = "";
    if (!url || (qval && !esc)) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, "%s: out of memory", what);
        st = WP_ERR_NOMEM;
        goto out;
    }
    snprintf(url, urlsz, "%s%s%s", TS_URL_BASE, path, esc ? esc : "");
    CURLcode rc = ts_setup(h, c, url, body, errbuf);
    if (rc == CURLE_OK)
        rc = curl_easy_perform(h);
    const char *why = errbuf[0] ? errbuf : curl_easy_strerror(rc);
    if (rc == CURLE_OK) {
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    } else if (rc == CURLE_OPERATION_TIMEDOUT) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, "%s: tailscaled did not answer in time", what);
        wp_error_detail(err, "no answer from %s within %lld ms: %s", c->socket_path,
                        (long long)c->timeout_ms, why);
        st = WP_ERR_TIMEOUT;
    } else if (body->nomem) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, "%s: out of memory", what);
        st = WP_ERR_NOMEM;
    } else if (body->too_large || rc == CURLE_FILESIZE_EXCEEDED) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, "%s: tailscaled's answer was not understood",
                     what);
        wp_error_detail(err, "answer larger than %d bytes", TS_BODY_MAX);
        st = WP_ERR_TAILSCALE;
    } else if (rc == CURLE_COULDNT_CONNECT) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, "%s: tailscaled is not reachable", what);
        ts_connect_detail(c, why, err);
        st = WP_ERR_TAILSCALE;
    } else {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, "%s: tailscaled request failed", what);
        wp_error_detail(err, "curl error %d: %s", (int)rc, why);
        st = WP_ERR_TAILSCALE;
    }
out:
    free(url);
    curl_free(esc);
    if (st == WP_OK)
        ts_give(c, h); /* a complete answer: the connection is in a known state */
    else
        curl_easy_cleanup(h);
    return st;
}

/* ---- whois -------------------------------------------------------------------------- */

#define TS_WHO "could not identify the caller"

static int ts_addr_ok(const char *addr)
{
    size_t n = addr ? strlen(addr) : 0;
    return n > 0 && n <= TS_ADDR_MAX && strspn(addr, "0123456789abcdefABCDEF.:[]") == n;
}

static wp_status ts_whois_parse(const ts_client *c, const char *addr, const ts_body *body,
                                id_identity **out, wp_error *err)
{
    wp_error perr;
    wp_error_clear(&perr);
    wp_status st =
        id_parse_whois(body->data ? body->data : "", body->len, c->capability, out, &perr);
    if (st == WP_OK)
        return WP_OK;
    if (st == WP_ERR_NOMEM) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, TS_WHO ": out of memory");
        return WP_ERR_NOMEM;
    }
    wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, TS_WHO ": tailscaled's answer was not understood");
    wp_error_detail(err, "whois %s: malformed answer: %s", addr, perr.message);
    return WP_ERR_TAILSCALE;
}

static wp_status ts_whois_answer(const ts_client *c, const char *addr, long status,
                                 const ts_body *body, id_identity **out, wp_error *err)
{
    if (status == 200)
        return ts_whois_parse(c, addr, body, out, err);
    char excerpt[256]; /* for the log-only detail of a refusal */
    ts_excerpt(body, excerpt, sizeof(excerpt));
    /* Only tailscaled's own "no match" body means "not a tailnet peer"; any other 404
     * (a tailscaled without this endpoint, a proxy in the way) is a tailscaled problem the
     * operator must see as such. Both refuse. */
    if (status == 404 && body->data && strncmp(body->data, "no match", 8) == 0) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH,
                     "not on the tailnet: this connection does not come from a Tailscale node");
        wp_error_detail(err, "whois %s: 404 %s", addr, excerpt);
        return WP_ERR_NOT_FOUND;
    }
    wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, TS_WHO ": tailscaled answered HTTP %ld", status);
    wp_error_detail(err, "whois %s: HTTP %ld: %s", addr, status, excerpt);
    return WP_ERR_TAILSCALE;
}

wp_status ts_whois(const ts_client *c, const char *addr, id_identity **out, wp_error *err)
{
    if (!c || !out) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, TS_WHO ": internal error");
        return WP_ERR_INTERNAL;
    }
    if (!ts_addr_ok(addr)) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, TS_WHO ": unusable peer address");
        wp_error_detail(err, "whois: refusing address with characters outside ip:port");
        return WP_ERR_INVALID;
    }
    ts_body body = {0};
    long status = 0;
    /* proto=tcp: callers are always TCP connections, and a userspace-networking
     * tailscaled that is not told so falls back to its UDP flow table, where any local
     * process could have connected from the port of a tailnet peer's UDP flow. */
    wp_status st = ts_get(c, "whois?proto=tcp&addr=", addr, &status, &body, TS_WHO, err);
    if (st == WP_OK)
        st = ts_whois_answer(c, addr, status, &body, out, err);
    free(body.data);
    return st;
}

/* ---- cert --------------------------------------------------------------------------- */

#define TS_CERT "could not fetch the Tailscale certificate"

static int ts_domain_ok(const char *d)
{
    size_t n = d ? strlen(d) : 0;
    if (n == 0 || n > TS_DOMAIN_MAX || d[0] == '.' || d[0] == '-' || strstr(d, ".."))
        return 0;
    return strspn(d, "abcdefghijklmnopqrstuvwxyz0123456789.-") == n;
}

wp_status ts_cert_pair(const ts_client *c, const char *domain, char **pem, size_t *pem_len,
                       wp_error *err)
{
    if (!c || !pem || !pem_len) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, TS_CERT ": internal error");
        return WP_ERR_INTERNAL;
    }
    if (!ts_domain_ok(domain)) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, TS_CERT ": invalid server name");
        wp_error_detail(err, "cert: refusing domain with characters outside [a-z0-9.-]");
        return WP_ERR_INVALID;
    }
    size_t plen = sizeof("cert/?type=pair") + strlen(domain);
    char *path = malloc(plen);
    if (!path) {
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, TS_CERT ": out of memory");
        return WP_ERR_NOMEM;
    }
    snprintf(path, plen, "cert/%s?type=pair", domain);
    ts_body body = {0};
    long status = 0;
    wp_status st = ts_get(c, path, NULL, &status, &body, TS_CERT, err);
    free(path);
    if (st == WP_OK && (status != 200 || body.len == 0)) {
        char excerpt[256];
        ts_excerpt(&body, excerpt, sizeof(excerpt));
        wp_error_set(err, WP_SQLSTATE_INVALID_AUTH, TS_CERT ": tailscaled answered HTTP %ld",
                     status);
        wp_error_detail(err, "cert %s: HTTP %ld: %s", domain, status, excerpt);
        st = WP_ERR_TAILSCALE;
    }
    if (st != WP_OK) {
        free(body.data);
        return st;
    }
    *pem = body.data;
    *pem_len = body.len;
    return WP_OK;
}

/* ---- status: CertDomains ------------------------------------------------------------ */

#define TS_STATUS "could not read tailscaled's status"
#define TS_DOMAINS_MAX 64

void ts_free_domains(char **domains, size_t n)
{
    for (size_t i = 0; domains && i < n; i++)
        free(domains[i]);
    free(domains);
}

/* Copies the valid names of CertDomains (an array of strings, or null) into *out. */
static wp_status ts_domains_from(json_t *arr, char ***out, size_t *n)
{
    size_t cnt = json_is_array(arr) ? json_array_size(arr) : 0;
    if (cnt > TS_DOMAINS_MAX)
        cnt = TS_DOMAINS_MAX;
    char **d = calloc(cnt + 1, sizeof(*d));
    if (!d)
        return WP_ERR_NOMEM;
    size_t k = 0;
    for (size_t i = 0; i < cnt; i++) {
        const char *v = json_string_value(json_array_get(arr, i));
        char low[TS_DOMAIN_MAX + 1];
        size_t len = v ? strlen(v) : 0;
        if (len == 0 || len > TS_DOMAIN_MAX)
            continue;
        for (size_t j = 0; j <= len; j++)
            low[j] = (char)tolower((unsigned char)v[j]);
        if (!ts_domain_ok(low))
            continue;
        if (!(d[k] = strdup(low))) {
            ts_free_domains(d, k);
            return WP_ERR_NOMEM;
        }
        k++;
    }
    *out = d;
    *n = k;
    return WP_OK;
}

wp_status ts_cert_domains(const ts_client *c, char ***out, size_t *n, wp_error *err)
{
    *out = NULL;
    *n = 0;
    if (!c) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, TS_STATUS ": internal error");
        return WP_ERR_INTERNAL;
    }
    ts_body body = {0};
    long status = 0;
    wp_status st = ts_get(c, "status?peers=false", NULL, &status, &body, TS_STATUS, err);
    json_t *root = NULL;
    if (st == WP_OK && status != 200) {
        char excerpt[256];
        ts_excerpt(&body, excerpt, sizeof(excerpt));
        wp_error_set(err, WP_SQLSTATE_INTERNAL, TS_STATUS ": tailscaled answered HTTP %ld", status);
        wp_error_detail(err, "status: HTTP %ld: %s", status, excerpt);
        st = WP_ERR_TAILSCALE;
    }
    if (st == WP_OK) {
        json_error_t jerr;
        root = json_loadb(body.data ? body.data : "", body.len, 0, &jerr);
        json_t *cd = json_is_object(root) ? json_object_get(root, "CertDomains") : NULL;
        if (!json_is_object(root) || (cd && !json_is_array(cd) && !json_is_null(cd))) {
            wp_error_set(err, WP_SQLSTATE_INTERNAL, TS_STATUS ": answer not understood");
            wp_error_detail(err, "status: %s", root ? "CertDomains is not an array" : jerr.text);
            st = WP_ERR_TAILSCALE;
        } else {
            st = ts_domains_from(cd, out, n);
        }
    }
    json_decref(root);
    free(body.data);
    return st;
}
