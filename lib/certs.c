/*
 * certs: certificate sources for the server side of TLS and the choice between them.
 *
 * Rules (spec section 8), applied to the client's SNI name:
 *   1. the file certificate when the name matches it (DNS SAN, one-label wildcard, CN),
 *      or when there is no SNI and a file certificate exists;
 *   2. else, when the Tailscale source is enabled, the Tailscale certificate for the
 *      name: a name among the node's CertDomains, a bare label expanded to the cert
 *      domain it begins (`waypoint-db` -> `waypoint-db.tail1234.ts.net`, as tailscale's
 *      ExpandSNIName does), or, while CertDomains are unknown, a name ending in
 *      ".ts.net"; with no SNI at all (a client connecting by IP), the certificate of
 *      the node's first cert domain;
 *   3. else the file certificate if any; else nothing (the handshake fails).
 *
 * CertDomains come from tailscaled's status through a callback, re-read when unknown or
 * empty (spaced by retry_ms) and every CERTS_DOMAINS_TTL_MS otherwise, under their own
 * mutex (the read is a local call bounded by the LocalAPI timeout). Once known, only
 * those names are ever fetched, so random SNI names cost nothing.
 *
 * Tailscale certificates live in a small cache keyed by name. An entry is refreshed
 * once it is within a third of its lifetime, or seven days, of expiry (whichever comes
 * first); a failed refresh keeps serving the cached certificate until it expires.
 * Fetch attempts per name are spaced by retry_ms so a handshake storm, a client sending
 * random *.ts.net names, or a failing tailscaled cannot turn into a fetch per handshake.
 * The cache holds at most CERTS_MAX_ENTRIES names; failed names are evicted first.
 *
 * Concurrency: one mutex guards the cache and every pair's reference count. Fetches run
 * without the lock (they may take seconds); one thread fetches a given name at a time
 * and the others either serve the still-valid cached certificate or wait on a
 * condition variable for the fetch to finish. A replaced pair is freed only when the
 * last handshake holding it releases it.
 */
#include "certs.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/md.h>
#include <mbedtls/oid.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/version.h>
#if MBEDTLS_VERSION_NUMBER >= 0x03000000
#include <psa/crypto.h>
#define CERTS_MBEDTLS3 1
#else
#define CERTS_MBEDTLS3 0
#define MBEDTLS_PRIVATE(m) m
#endif

#include "io.h"
#include "log.h"

#define CERTS_MAX_ENTRIES 64
#define CERTS_DEFAULT_RETRY_MS 60000
#define CERTS_REFRESH_FLOOR_S (7 * 24 * 3600)

typedef struct ts_entry {
    char name[CERTS_NAME_MAX + 1];
    certs_pair *pair;        /* NULL until a fetch succeeded */
    int fetching;            /* a thread is fetching this name right now */
    int64_t last_attempt_ms; /* monotonic */
    struct ts_entry *next;
} ts_entry;

/* Reference count lives beside the pair, guarded by the store mutex. */
typedef struct pair_box {
    certs_pair pair; /* first member: certs_pair * and pair_box * convert */
    int refs;
} pair_box;

struct certs_store {
    certs_pair *file; /* NULL when no cert_file; never refcounted */
    int use_tailscale;
    certs_fetch_fn fetch;
    void *fetch_arg;
    int64_t retry_ms;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    ts_entry *entries;
    size_t nentries;

    certs_domains_fn domains_fn; /* NULL: CertDomains unknown */
    void *domains_arg;
    pthread_mutex_t dmu; /* guards the fields below */
    char **domains;
    size_t ndomains;
    int domains_known;     /* a read succeeded at least once */
    int64_t domains_at_ms; /* monotonic time of the last read attempt */
    int domains_tried;
};

/* "<what>: <problem> (<mbedTLS reason>)" */
static void set_mbed_error(wp_error *err, int rc, const char *what, const char *problem)
{
    char buf[160];
    mbedtls_strerror(rc, buf, sizeof(buf));
    wp_error_set(err, WP_SQLSTATE_INTERNAL, "%s: %s (%s)", what, problem, buf);
}

static int64_t x509_time_to_unix(const mbedtls_x509_time *t)
{
    struct tm tm = {0};
    tm.tm_year = t->year - 1900;
    tm.tm_mon = t->mon - 1;
    tm.tm_mday = t->day;
    tm.tm_hour = t->hour;
    tm.tm_min = t->min;
    tm.tm_sec = t->sec;
    return (int64_t)timegm(&tm);
}

/* --- library set-up, shared by both mbedTLS lines ------------------------------------
 * mbedTLS 3 needs psa_crypto_init() before TLS 1.3 or any PSA-backed hash, and takes an
 * RNG where 2.28 did not (key parsing, pair checks, point multiplication blind with it).
 * One process-wide DRBG, seeded once; mbedTLS locks it internally (MBEDTLS_THREADING_C),
 * so any thread may draw from it. */
static mbedtls_entropy_context lib_entropy;
static mbedtls_ctr_drbg_context lib_drbg;
static int lib_ok;
static pthread_once_t lib_once = PTHREAD_ONCE_INIT;

static void lib_init_once(void)
{
#if CERTS_MBEDTLS3
    if (psa_crypto_init() != PSA_SUCCESS)
        return;
#endif
    mbedtls_entropy_init(&lib_entropy);
    mbedtls_ctr_drbg_init(&lib_drbg);
    static const char who[] = "waypoint-certs";
    lib_ok = mbedtls_ctr_drbg_seed(&lib_drbg, mbedtls_entropy_func, &lib_entropy,
                                   (const unsigned char *)who, sizeof(who) - 1) == 0;
}

wp_status certs_lib_init(wp_error *err)
{
    pthread_once(&lib_once, lib_init_once);
    if (!lib_ok) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "TLS: cannot initialise the crypto library");
        return WP_ERR_INTERNAL;
    }
    return WP_OK;
}

int certs_rng(void *unused, unsigned char *out, size_t len)
{
    (void)unused;
    return mbedtls_ctr_drbg_random(&lib_drbg, out, len);
}

static certs_pair *pair_alloc(void)
{
    pair_box *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    mbedtls_x509_crt_init(&b->pair.chain);
    mbedtls_pk_init(&b->pair.key);
    return &b->pair;
}

void certs_pair_free(certs_pair *p)
{
    if (!p)
        return;
    mbedtls_x509_crt_free(&p->chain);
    mbedtls_pk_free(&p->key);
    free((pair_box *)p);
}

/* Builds the comb table of the key's base point (1*G computes and caches it; nothing
 * secret) while the pair is still private to this thread: afterwards concurrent
 * handshakes only read it. Without this, the first signatures race to build it, and on
 * 2.28 every signature rebuilt it (below). */
static int precompute_base(mbedtls_ecp_keypair *kp)
{
    mbedtls_mpi one;
    mbedtls_mpi_init(&one);
    mbedtls_ecp_point r;
    mbedtls_ecp_point_init(&r);
    int rc = mbedtls_mpi_lset(&one, 1);
    if (rc == 0)
        rc = mbedtls_ecp_mul(&kp->MBEDTLS_PRIVATE(grp), &r, &one, &kp->MBEDTLS_PRIVATE(grp).G,
                             certs_rng, NULL);
    mbedtls_ecp_point_free(&r);
    mbedtls_mpi_free(&one);
    return rc;
}

#if CERTS_MBEDTLS3
/* mbedTLS 3 signs with the MBEDTLS_PK_ECKEY context in place. */
static int key_as_ecdsa(mbedtls_pk_context *key)
{
    if (mbedtls_pk_get_type(key) != MBEDTLS_PK_ECKEY)
        return 0;
    return precompute_base(mbedtls_pk_ec(*key));
}
#else
/* On 2.28 an EC key parses as the generic MBEDTLS_PK_ECKEY type, whose sign function
 * copies the key into a temporary ECDSA context for every signature, so the comb table
 * was rebuilt on every handshake: half of each signature's cost. As MBEDTLS_PK_ECDSA
 * the key signs in place, using the table computed once here. */
static int key_as_ecdsa(mbedtls_pk_context *key)
{
    if (mbedtls_pk_get_type(key) != MBEDTLS_PK_ECKEY)
        return 0;
    mbedtls_pk_context e;
    mbedtls_pk_init(&e);
    int rc = mbedtls_pk_setup(&e, mbedtls_pk_info_from_type(MBEDTLS_PK_ECDSA));
    if (rc == 0)
        rc = mbedtls_ecdsa_from_keypair(mbedtls_pk_ec(e), mbedtls_pk_ec(*key));
    if (rc == 0)
        rc = precompute_base(mbedtls_pk_ec(e));
    if (rc != 0) {
        mbedtls_pk_free(&e);
        return rc;
    }
    mbedtls_pk_free(key);
    *key = e; /* the context is a (type, pointer) pair: moving it moves ownership */
    return 0;
}
#endif

static wp_status pair_finish(certs_pair *p, const char *what, wp_error *err)
{
#if CERTS_MBEDTLS3
    int rc = mbedtls_pk_check_pair(&p->chain.pk, &p->key, certs_rng, NULL);
#else
    int rc = mbedtls_pk_check_pair(&p->chain.pk, &p->key);
#endif
    if (rc != 0) {
        set_mbed_error(err, rc, what, "private key does not match the certificate");
        return WP_ERR_CONFIG;
    }
    rc = key_as_ecdsa(&p->key);
    if (rc != 0) {
        set_mbed_error(err, rc, what, "cannot prepare the EC private key");
        return WP_ERR_CONFIG;
    }
    const mbedtls_md_info_t *sha256 = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    rc = sha256 ? mbedtls_md(sha256, p->chain.raw.p, p->chain.raw.len, p->fp) : -1;
    if (rc != 0) {
        set_mbed_error(err, rc, what, "cannot fingerprint the certificate");
        return WP_ERR_INTERNAL;
    }
    p->not_before = x509_time_to_unix(&p->chain.valid_from);
    p->not_after = x509_time_to_unix(&p->chain.valid_to);
    return WP_OK;
}

/* Copies [p, p+n) into a fresh NUL-terminated buffer: mbedTLS only recognises PEM
 * input whose length counts a terminating NUL. */
static unsigned char *dup_nul(const char *p, size_t n)
{
    unsigned char *b = malloc(n + 1);
    if (!b)
        return NULL;
    memcpy(b, p, n);
    b[n] = '\0';
    return b;
}

wp_status certs_pair_from_pem(const char *pem, size_t pem_len, certs_pair **out, wp_error *err)
{
    static const char marker[] = "-----BEGIN CERTIFICATE-----";
    *out = NULL;
    const char *crt = memmem(pem, pem_len, marker, sizeof(marker) - 1);
    if (!crt || crt == pem) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "certificate pair: expected key then chain");
        return WP_ERR_INVALID;
    }
    size_t key_len = (size_t)(crt - pem), crt_len = pem_len - key_len;
    if (certs_lib_init(err) != WP_OK)
        return WP_ERR_INTERNAL;
    certs_pair *p = pair_alloc();
    unsigned char *kb = dup_nul(pem, key_len), *cb = dup_nul(crt, crt_len);
    wp_status st = WP_ERR_NOMEM;
    if (!p || !kb || !cb)
        goto done;
    st = WP_ERR_INVALID;
#if CERTS_MBEDTLS3
    int rc = mbedtls_pk_parse_key(&p->key, kb, key_len + 1, NULL, 0, certs_rng, NULL);
#else
    int rc = mbedtls_pk_parse_key(&p->key, kb, key_len + 1, NULL, 0);
#endif
    if (rc != 0) {
        set_mbed_error(err, rc, "certificate pair", "cannot parse private key");
        goto done;
    }
    rc = mbedtls_x509_crt_parse(&p->chain, cb, crt_len + 1);
    if (rc != 0) {
        set_mbed_error(err, rc, "certificate pair", "cannot parse certificate chain");
        goto done;
    }
    st = pair_finish(p, "certificate pair", err);
done:
    if (kb) {
        mbedtls_platform_zeroize(kb, key_len + 1);
        free(kb);
    }
    free(cb);
    if (st == WP_OK)
        *out = p;
    else
        certs_pair_free(p);
    return st;
}

static wp_status load_file_pair(const char *cert_file, const char *key_file, certs_pair **out,
                                wp_error *err)
{
    if (certs_lib_init(err) != WP_OK)
        return WP_ERR_INTERNAL;
    certs_pair *p = pair_alloc();
    if (!p)
        return WP_ERR_NOMEM;
    int rc = mbedtls_x509_crt_parse_file(&p->chain, cert_file);
    if (rc != 0) {
        char buf[160];
        mbedtls_strerror(rc, buf, sizeof(buf));
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "cert_file '%s': cannot load (%s)", cert_file, buf);
        certs_pair_free(p);
        return WP_ERR_CONFIG;
    }
#if CERTS_MBEDTLS3
    rc = mbedtls_pk_parse_keyfile(&p->key, key_file, NULL, certs_rng, NULL);
#else
    rc = mbedtls_pk_parse_keyfile(&p->key, key_file, NULL);
#endif
    if (rc != 0) {
        char buf[160];
        mbedtls_strerror(rc, buf, sizeof(buf));
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "key_file '%s': cannot load (%s)", key_file, buf);
        certs_pair_free(p);
        return WP_ERR_CONFIG;
    }
    wp_status st = pair_finish(p, cert_file, err);
    if (st != WP_OK) {
        certs_pair_free(p);
        return st;
    }
    *out = p;
    return WP_OK;
}

wp_status certs_new(const certs_opts *o, certs_store **out, wp_error *err)
{
    *out = NULL;
    if ((o->cert_file == NULL) != (o->key_file == NULL)) {
        wp_error_set(err, WP_SQLSTATE_INTERNAL, "cert_file and key_file must be set together");
        return WP_ERR_CONFIG;
    }
    certs_store *s = calloc(1, sizeof(*s));
    if (!s)
        return WP_ERR_NOMEM;
    s->use_tailscale = o->use_tailscale && o->fetch != NULL;
    s->fetch = o->fetch;
    s->fetch_arg = o->fetch_arg;
    s->domains_fn = s->use_tailscale ? o->domains : NULL;
    s->domains_arg = o->domains_arg;
    s->retry_ms = CERTS_DEFAULT_RETRY_MS;
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        free(s);
        return WP_ERR_INTERNAL;
    }
    if (pthread_mutex_init(&s->dmu, NULL) != 0) {
        pthread_mutex_destroy(&s->mu);
        free(s);
        return WP_ERR_INTERNAL;
    }
    if (pthread_cond_init(&s->cv, NULL) != 0) {
        pthread_mutex_destroy(&s->dmu);
        pthread_mutex_destroy(&s->mu);
        free(s);
        return WP_ERR_INTERNAL;
    }
    if (o->cert_file) {
        wp_status st = load_file_pair(o->cert_file, o->key_file, &s->file, err);
        if (st != WP_OK) {
            certs_free(s);
            return st;
        }
    }
    *out = s;
    return WP_OK;
}

/* Drops the cache's (or a handshake's) reference; call with s->mu held. */
static void pair_unref_locked(certs_pair *p)
{
    pair_box *b = (pair_box *)p;
    if (--b->refs == 0)
        certs_pair_free(p);
}

void certs_free(certs_store *s)
{
    if (!s)
        return;
    ts_entry *e = s->entries;
    while (e) {
        ts_entry *next = e->next;
        if (e->pair)
            pair_unref_locked(e->pair);
        free(e);
        e = next;
    }
    certs_pair_free(s->file);
    for (size_t i = 0; i < s->ndomains; i++)
        free(s->domains[i]);
    free(s->domains);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->dmu);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

void certs_set_retry_interval(certs_store *s, int64_t ms)
{
    pthread_mutex_lock(&s->mu);
    s->retry_ms = ms < 0 ? 0 : ms;
    pthread_mutex_unlock(&s->mu);
}

const certs_pair *certs_file_pair(const certs_store *s)
{
    return s->file;
}

/* --- name matching ------------------------------------------------------------------ */

static int label_eq(const unsigned char *a, size_t alen, const char *b)
{
    if (alen != strlen(b))
        return 0;
    for (size_t i = 0; i < alen; i++)
        if (tolower(a[i]) != tolower((unsigned char)b[i]))
            return 0;
    return 1;
}

/* pattern from the certificate (not NUL-terminated); "*.rest" matches one label. */
static int dns_match(const unsigned char *pat, size_t plen, const char *name)
{
    if (plen > 2 && pat[0] == '*' && pat[1] == '.') {
        const char *dot = strchr(name, '.');
        if (!dot || dot == name)
            return 0;
        return label_eq(pat + 1, plen - 1, dot);
    }
    return label_eq(pat, plen, name);
}

int certs_name_matches(const mbedtls_x509_crt *leaf, const char *name)
{
    const unsigned char dns_tag = MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_X509_SAN_DNS_NAME;
    for (const mbedtls_x509_sequence *s = &leaf->subject_alt_names; s; s = s->next)
        if (s->buf.p && s->buf.tag == dns_tag && dns_match(s->buf.p, s->buf.len, name))
            return 1;
    for (const mbedtls_x509_name *n = &leaf->subject; n; n = n->next)
        if (n->oid.p && MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &n->oid) == 0 &&
            dns_match(n->val.p, n->val.len, name))
            return 1;
    return 0;
}

/* A DNS name we are willing to pass to the LocalAPI: [a-z0-9-] labels, no empty label. */
static int valid_hostname(const char *n)
{
    size_t len = strlen(n), label = 0;
    if (len == 0 || len > CERTS_NAME_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)n[i];
        if (c == '.') {
            if (label == 0)
                return 0;
            label = 0;
        } else if (isalnum(c) || c == '-') {
            if (++label > 63)
                return 0;
        } else {
            return 0;
        }
    }
    return label > 0;
}

static int is_ts_name(const char *n)
{
    static const char suffix[] = ".ts.net";
    size_t len = strlen(n), sl = sizeof(suffix) - 1;
    return len > sl && strcasecmp(n + len - sl, suffix) == 0;
}

/* --- Tailscale cache --------------------------------------------------------------- */

static int pair_valid(const certs_pair *p, int64_t now)
{
    return p && now >= p->not_before && now < p->not_after;
}

static int pair_needs_refresh(const certs_pair *p, int64_t now)
{
    int64_t life = p->not_after - p->not_before, left = p->not_after - now;
    int64_t margin = life / 3 > CERTS_REFRESH_FLOOR_S ? life / 3 : CERTS_REFRESH_FLOOR_S;
    return left < margin;
}

static ts_entry *entry_find(certs_store *s, const char *name)
{
    for (ts_entry *e = s->entries; e; e = e->next)
        if (strcmp(e->name, name) == 0)
            return e;
    return NULL;
}

/* Makes room by dropping one idle entry that holds no usable certificate. */
static int entry_evict_unusable(certs_store *s)
{
    int64_t now = (int64_t)time(NULL);
    for (ts_entry **pp = &s->entries; *pp; pp = &(*pp)->next) {
        ts_entry *e = *pp;
        if (!e->fetching && !pair_valid(e->pair, now)) {
            *pp = e->next;
            if (e->pair)
                pair_unref_locked(e->pair);
            free(e);
            s->nentries--;
            return 1;
        }
    }
    return 0;
}

static ts_entry *entry_add(certs_store *s, const char *name)
{
    if (s->nentries >= CERTS_MAX_ENTRIES && !entry_evict_unusable(s))
        return NULL;
    ts_entry *e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    snprintf(e->name, sizeof(e->name), "%s", name);
    e->next = s->entries;
    s->entries = e;
    s->nentries++;
    return e;
}

/* Runs the fetch without the lock and installs the result. Called and returns with
 * s->mu held; e->fetching is set by the caller and cleared here. */
static void entry_fetch_locked(certs_store *s, ts_entry *e)
{
    char name[sizeof(e->name)];
    memcpy(name, e->name, sizeof(name));
    pthread_mutex_unlock(&s->mu);

    char *pem = NULL;
    size_t pem_len = 0;
    certs_pair *fresh = NULL;
    wp_error err;
    wp_error_clear(&err);
    wp_status st = s->fetch(s->fetch_arg, name, &pem, &pem_len, &err);
    if (st == WP_OK && pem)
        st = certs_pair_from_pem(pem, pem_len, &fresh, &err);
    if (pem) {
        mbedtls_platform_zeroize(pem, pem_len);
        free(pem);
    }
    if (st != WP_OK)
        log_kv(WP_LOG_WARN, "tls_cert_fetch_failed", "name", name, "status", wp_status_str(st),
               "reason", err.message, "detail", err.detail, (char *)NULL);

    pthread_mutex_lock(&s->mu);
    if (st == WP_OK && fresh) {
        ((pair_box *)fresh)->refs = 1; /* the cache's reference */
        if (e->pair)
            pair_unref_locked(e->pair);
        e->pair = fresh;
    }
    e->fetching = 0;
    pthread_cond_broadcast(&s->cv);
}

/* Returns a referenced, currently valid Tailscale certificate for name, or NULL. */
static const certs_pair *ts_get(certs_store *s, const char *name)
{
    const certs_pair *res = NULL;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        ts_entry *e = entry_find(s, name);
        int64_t now = (int64_t)time(NULL), mono = wp_now_ms();
        int have = e && pair_valid(e->pair, now);
        if (e && e->fetching) {
            if (have)
                break; /* serve the current one while another thread refreshes */
            pthread_cond_wait(&s->cv, &s->mu);
            continue;
        }
        /* An entry exists only once a fetch was attempted for its name. */
        int recent = e && mono - e->last_attempt_ms < s->retry_ms;
        if ((have && !pair_needs_refresh(e->pair, now)) || recent)
            break;
        if (!e && !(e = entry_add(s, name)))
            break;
        e->fetching = 1;
        e->last_attempt_ms = mono;
        entry_fetch_locked(s, e);
        break;
    }
    ts_entry *e = entry_find(s, name);
    if (e && pair_valid(e->pair, (int64_t)time(NULL))) {
        ((pair_box *)e->pair)->refs++;
        res = e->pair;
    }
    pthread_mutex_unlock(&s->mu);
    return res;
}

void certs_release(certs_store *s, const certs_pair *p)
{
    if (!p || p == s->file)
        return;
    pthread_mutex_lock(&s->mu);
    pair_unref_locked((certs_pair *)p);
    pthread_mutex_unlock(&s->mu);
}

/* --- CertDomains ------------------------------------------------------------------ */

/* Re-reads CertDomains when due. Called and returns with s->dmu held. */
static void domains_refresh_locked(certs_store *s)
{
    if (!s->domains_fn)
        return;
    int64_t now = wp_now_ms(), age = now - s->domains_at_ms;
    int due = !s->domains_tried || (s->ndomains == 0 && age >= s->retry_ms) ||
              age >= CERTS_DOMAINS_TTL_MS;
    if (!due)
        return;
    s->domains_tried = 1;
    s->domains_at_ms = now;
    char **d = NULL;
    size_t n = 0;
    wp_error err;
    wp_error_clear(&err);
    wp_status st = s->domains_fn(s->domains_arg, &d, &n, &err);
    if (st != WP_OK) {
        log_kv(WP_LOG_WARN, "tls_status_failed", "status", wp_status_str(st), "reason", err.message,
               "detail", err.detail, (char *)NULL);
        return; /* keep what we had */
    }
    for (size_t i = 0; i < s->ndomains; i++)
        free(s->domains[i]);
    free(s->domains);
    s->domains = d;
    s->ndomains = n;
    s->domains_known = 1;
}

void certs_ts_name(certs_store *s, const char *sni, char *out)
{
    out[0] = '\0';
    if (!sni || !valid_hostname(sni))
        return;
    char lower[CERTS_NAME_MAX + 1];
    size_t len = 0;
    for (; sni[len] && len < CERTS_NAME_MAX; len++)
        lower[len] = (char)tolower((unsigned char)sni[len]);
    lower[len] = '\0';
    pthread_mutex_lock(&s->dmu);
    domains_refresh_locked(s);
    for (size_t i = 0; i < s->ndomains && !out[0]; i++)
        if (strcmp(s->domains[i], lower) == 0)
            snprintf(out, CERTS_NAME_MAX + 1, "%s", lower);
    for (size_t i = 0; i < s->ndomains && !out[0] && !strchr(lower, '.'); i++)
        if (strncmp(s->domains[i], lower, len) == 0 && s->domains[i][len] == '.' &&
            s->domains[i][len + 1] != '\0')
            snprintf(out, CERTS_NAME_MAX + 1, "%s", s->domains[i]);
    if (!out[0] && !s->domains_known && is_ts_name(lower))
        snprintf(out, CERTS_NAME_MAX + 1, "%s", lower);
    pthread_mutex_unlock(&s->dmu);
}

const certs_pair *certs_default(certs_store *s)
{
    if (s->file)
        return s->file;
    if (!s->use_tailscale)
        return NULL;
    char name[CERTS_NAME_MAX + 1] = "";
    pthread_mutex_lock(&s->dmu);
    domains_refresh_locked(s);
    if (s->ndomains > 0)
        snprintf(name, sizeof(name), "%s", s->domains[0]);
    pthread_mutex_unlock(&s->dmu);
    return name[0] ? ts_get(s, name) : NULL;
}

int certs_has_source(certs_store *s, const char **why)
{
    *why = "";
    if (s->file)
        return 1;
    if (!s->use_tailscale) {
        *why = "no cert_file and use_tailscale_tls = false";
        return 0;
    }
    if (!s->domains_fn)
        return 1;
    pthread_mutex_lock(&s->dmu);
    domains_refresh_locked(s);
    int known = s->domains_known, n = s->ndomains > 0;
    pthread_mutex_unlock(&s->dmu);
    if (!known)
        *why = "no cert_file, and tailscaled's status (CertDomains) could not be read";
    else if (!n)
        *why = "no cert_file, and tailscaled reports no CertDomains (HTTPS certificates are "
               "not enabled for this tailnet)";
    return known && n;
}

wp_status certs_select(certs_store *s, const char *sni, const certs_pair **out, certs_source *src)
{
    *out = NULL;
    *src = CERTS_SRC_NONE;
    int has_sni = sni && *sni;
    if (has_sni && s->file && certs_name_matches(&s->file->chain, sni)) {
        *out = s->file;
        *src = CERTS_SRC_FILE;
        return WP_OK;
    }
    if (s->use_tailscale) {
        char name[CERTS_NAME_MAX + 1] = "";
        const certs_pair *p = NULL;
        if (has_sni) {
            certs_ts_name(s, sni, name);
            p = name[0] ? ts_get(s, name) : NULL;
        } else if (!s->file) {
            p = certs_default(s);
        }
        if (p) {
            *out = p;
            *src = CERTS_SRC_TAILSCALE;
            return WP_OK;
        }
    }
    if (s->file) {
        *out = s->file;
        *src = CERTS_SRC_FILE;
        return WP_OK;
    }
    return WP_ERR_NOT_FOUND;
}
