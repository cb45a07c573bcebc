/*
 * config: loads waypoint.toml (spec section 10) into an immutable wp_config snapshot.
 *
 * The file format is a TOML-shaped subset parsed with inih, but inih on its own has
 * traps that silently change values: lines over its 200-byte buffer are split, indented
 * lines are glued onto the previous value, ';' starts a comment even inside quotes, '#'
 * after a value is kept as part of the value, and section names over 50 bytes are
 * truncated. So loading is two passes over the text:
 *
 *   1. scan: our own line tokenizer. It rejects long and indented lines, parses
 *      section headers, keys and values (quoted strings with escapes, bare tokens,
 *      trailing '#'/';' comments), and rewrites the file into a shadow INI text that has
 *      the same line numbers but only short, trap-free lines:
 *          [[listeners]]                 ->  [s3]      (section record #3)
 *          backend = "10.0.1.10:5432"    ->  backend=7 (value record #7)
 *   2. inih parses the shadow text and calls on_key() for every key in order; the
 *      section and value records give back the real section, line and decoded value.
 *      on_key() interpolates ${VAR}, converts by the key's type and stores the result.
 *
 * A final pass checks what needs the whole file (required keys, unique names, pairs of
 * keys). Every problem is collected as one "FILE:LINE: key 'K': problem" line rather
 * than stopping at the first. The loader has no global state; the result is reference
 * counted (cfg_ref/cfg_unref) so a SIGHUP reload can swap snapshots under live workers.
 */
#include "config.h"
#include "log.h"
#include "redis.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <ini.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define CFG_MAX_LINE 199       /* inih reads lines into a 200-byte buffer */
#define CFG_MAX_NAME 40        /* section/key names; inih truncates at 50 */
#define CFG_MAX_FILE (1 << 20) /* a config file is small; refuse anything huge */
#define CFG_MAX_VALUE 4096     /* bound on a value after ${VAR} expansion */
#define CFG_MAX_PREFIX 20      /* user_prefix leaves room in a 63-byte role name */
#define CFG_MAX_LISTENER_NAME 63

#define MS_PER_S INT64_C(1000)
#define MS_PER_M (60 * MS_PER_S)
#define MS_PER_H (60 * MS_PER_M)

/* ---------------------------------------------------------------------------------- */
/* Sections and keys                                                                   */

typedef enum {
    SEC_INVALID = 0, /* unknown or misplaced: already reported, its keys are skipped */
    SEC_TAILSCALE,
    SEC_PROVISIONING,
    SEC_REVALIDATION,
    SEC_LIMITS,
    SEC_SERVER,
    SEC_POOL,
    SEC_LISTENER,
    SEC_LISTENER_PG,
    SEC_METRICS,
    SEC_ADMIN,
    SEC_AUDIT,
    SEC_REDIS,
    SEC_IGNORED, /* a tsnet-edition section: every key warns */
    SEC_COUNT
} sec_kind;

static const struct {
    const char *name;
    sec_kind kind;
} known_sections[] = {
    {"tailscale", SEC_TAILSCALE},
    {"provisioning", SEC_PROVISIONING},
    {"revalidation", SEC_REVALIDATION},
    {"defaults.limits", SEC_LIMITS},
    {"server", SEC_SERVER},
    {"pool", SEC_POOL},
    {"listeners", SEC_LISTENER},
    {"listeners.postgres", SEC_LISTENER_PG},
    {"metrics", SEC_METRICS},
    {"admin", SEC_ADMIN},
    {"audit", SEC_AUDIT},
    {"redis", SEC_REDIS},
};

/* Sections of the tsnet edition (and their subsections) that mean nothing here. [metrics]
 * itself is a real section of this edition (known_sections is searched first); only its
 * tsnet subsections such as [metrics.prometheus] are ignored. */
static const char *const ignored_sections[] = {"redis", "metrics", "telemetry", "otel"};

typedef enum {
    V_STR,
    V_BOOL,    /* bool field */
    V_TRIBOOL, /* int field: -1 unset, 0, 1 */
    V_INT,
    V_DUR,
    V_SIZE,
    V_LISTEN,  /* listen_host + listen_port */
    V_BACKEND, /* backend_host + backend_port */
    V_MODE,
    V_TLSMODE,
    V_BTLS,
    V_TLSVER,
    V_LOGLEVEL,
    V_METRICS_LISTEN, /* metrics_listen_host + metrics_listen_port */
    V_IGNORED,        /* tsnet-edition key: warn, keep nothing */
} vtype;

typedef struct key_spec {
    sec_kind sec;
    const char *name;
    vtype type;
    size_t off;  /* into wp_config, or into cfg_listener for listener sections */
    int64_t min; /* V_INT, V_DUR, V_SIZE */
} key_spec;

#define G(f) offsetof(wp_config, f)
#define L(f) offsetof(cfg_listener, f)

static const key_spec keys[] = {
    {SEC_TAILSCALE, "socket", V_STR, G(ts_socket), 0},
    {SEC_TAILSCALE, "capability", V_STR, G(ts_capability), 0},
    {SEC_TAILSCALE, "whois_timeout", V_DUR, G(whois_timeout_ms), 1},
    {SEC_TAILSCALE, "hostname", V_IGNORED, 0, 0},
    {SEC_TAILSCALE, "state_dir", V_IGNORED, 0, 0},
    {SEC_TAILSCALE, "auth_key", V_IGNORED, 0, 0},
    {SEC_TAILSCALE, "control_url", V_IGNORED, 0, 0},
    {SEC_TAILSCALE, "ephemeral", V_IGNORED, 0, 0},
    {SEC_PROVISIONING, "allow_raw_sql", V_BOOL, G(allow_raw_sql), 0},
    {SEC_PROVISIONING, "cleanup_interval", V_DUR, G(cleanup_interval_ms), 0},
    {SEC_PROVISIONING, "admin_idle_timeout", V_DUR, G(admin_idle_timeout_ms), 1},
    {SEC_REVALIDATION, "interval", V_DUR, G(revalidation_interval_ms), 0},
    {SEC_REVALIDATION, "grace", V_DUR, G(revalidation_grace_ms), 0},
    {SEC_LIMITS, "max_conns_per_user", V_INT, G(default_limits.max_conns_per_user), 0},
    {SEC_LIMITS, "max_conn_duration", V_DUR, G(default_limits.max_conn_duration_ms), 0},
    {SEC_LIMITS, "max_bytes_per_conn", V_SIZE, G(default_limits.max_bytes_per_conn), 0},
    {SEC_SERVER, "startup_timeout", V_DUR, G(startup_timeout_ms), 1},
    {SEC_SERVER, "drain_timeout", V_DUR, G(drain_timeout_ms), 0},
    {SEC_SERVER, "log_level", V_LOGLEVEL, G(log_level), 0},
    {SEC_METRICS, "listen", V_METRICS_LISTEN, 0, 0},
    {SEC_METRICS, "allow_remote", V_BOOL, G(metrics_allow_remote), 0},
    {SEC_ADMIN, "socket", V_STR, G(admin_socket), 0},
    {SEC_AUDIT, "file", V_STR, G(audit_file), 0},
    {SEC_POOL, "enabled", V_BOOL, G(pool_enabled), 0},
    {SEC_POOL, "idle_timeout", V_DUR, G(pool_idle_timeout_ms), 1},
    {SEC_POOL, "max_per_role", V_INT, G(pool_max_per_role), 1},
    {SEC_POOL, "max_total", V_INT, G(pool_max_total), 1},
    {SEC_REDIS, "address", V_STR, G(redis_address), 0},
    {SEC_REDIS, "addr", V_STR, G(redis_address), 0}, /* the tsnet edition's spelling */
    {SEC_REDIS, "username", V_STR, G(redis_username), 0},
    {SEC_REDIS, "password", V_STR, G(redis_password), 0},
    {SEC_REDIS, "db", V_INT, G(redis_db), 0},
    {SEC_REDIS, "key_prefix", V_STR, G(redis_key_prefix), 0},
    {SEC_REDIS, "connect_timeout", V_DUR, G(redis_connect_timeout_ms), 1},
    {SEC_REDIS, "command_timeout", V_DUR, G(redis_command_timeout_ms), 1},
    {SEC_REDIS, "heartbeat_interval", V_DUR, G(redis_heartbeat_interval_ms), 100},
    {SEC_REDIS, "instance_ttl", V_DUR, G(redis_instance_ttl_ms), 1000},
    {SEC_REDIS, "pool_size", V_INT, G(redis_pool_size), 1},
    {SEC_LISTENER, "name", V_STR, L(name), 0},
    {SEC_LISTENER, "listen", V_LISTEN, 0, 0},
    {SEC_LISTENER, "mode", V_MODE, L(mode), 0},
    {SEC_LISTENER, "backend", V_BACKEND, 0, 0},
    {SEC_LISTENER, "tls_mode", V_TLSMODE, L(tls_mode), 0},
    {SEC_LISTENER, "use_tailscale_tls", V_BOOL, L(use_tailscale_tls), 0},
    {SEC_LISTENER, "cert_file", V_STR, L(cert_file), 0},
    {SEC_LISTENER, "key_file", V_STR, L(key_file), 0},
    {SEC_LISTENER, "tls_ticket_lifetime", V_DUR, L(tls_ticket_lifetime_ms), 0},
    {SEC_LISTENER, "tls_session_cache_size", V_INT, L(tls_session_cache_size), 0},
    {SEC_LISTENER, "tls_max_version", V_TLSVER, L(tls_max_version), 0},
    {SEC_LISTENER, "backend_tls", V_BTLS, L(backend_tls), 0},
    {SEC_LISTENER, "backend_ca_file", V_STR, L(backend_ca_file), 0},
    {SEC_LISTENER, "max_connections", V_INT, L(max_connections), 1},
    {SEC_LISTENER, "max_unstarted_per_peer", V_INT, L(max_unstarted_per_peer), 0},
    {SEC_LISTENER_PG, "admin_user", V_STR, L(admin_user), 0},
    {SEC_LISTENER_PG, "admin_password", V_STR, L(admin_password), 0},
    {SEC_LISTENER_PG, "admin_database", V_STR, L(admin_database), 0},
    {SEC_LISTENER_PG, "user_prefix", V_STR, L(user_prefix), 0},
    {SEC_LISTENER_PG, "user_ttl", V_DUR, L(user_ttl_ms), 1},
    {SEC_LISTENER_PG, "allow_raw_sql", V_TRIBOOL, L(allow_raw_sql), 0},
};

#define NKEYS (sizeof(keys) / sizeof(keys[0]))

/* ---------------------------------------------------------------------------------- */
/* Loader state                                                                        */

typedef struct sec_rec {
    sec_kind kind;
    int line;
    size_t listener; /* SEC_LISTENER / SEC_LISTENER_PG: index into cfg->listeners */
    size_t nkeys;
    char name[CFG_MAX_NAME + 1];
} sec_rec;

typedef struct val_rec {
    int line;
    bool quoted;
    bool bad; /* syntax error already reported: the key counts as set, no value */
    char *text;
} val_rec;

typedef struct lsn_meta {
    int lines[NKEYS]; /* line where each key was set, 0 = unset */
    int pg_line;      /* line of this listener's [listeners.postgres], 0 = none */
} lsn_meta;

typedef struct loader {
    const char *name;
    cfg_diag *diag;
    wp_config *cfg;
    bool failed;     /* set with every error, even one we had no memory to record */
    bool admin_only; /* cfg_admin_socket: store [admin] socket, skip every other key */

    sec_rec *secs;
    size_t nsecs, capsecs;
    val_rec *vals;
    size_t nvals, capvals;
    lsn_meta *lmeta; /* parallel to cfg->listeners */
    size_t lcap;

    int glines[NKEYS];       /* global keys: line where set */
    int sec_line[SEC_COUNT]; /* global sections: line of the header */

    char *shadow; /* the rewritten text handed to inih */
    size_t shlen, shcap;
} loader;

static int grow(void *arrp, size_t *cap, size_t need, size_t elem)
{
    void **arr = arrp;
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : 8;
    while (ncap < need)
        ncap *= 2;
    void *p = realloc(*arr, ncap * elem);
    if (!p)
        return -1;
    *arr = p;
    *cap = ncap;
    return 0;
}

/* ---------------------------------------------------------------------------------- */
/* Diagnostics                                                                         */

static void diag_push(loader *ld, bool is_error, char *msg)
{
    char ***arr = is_error ? &ld->diag->errors : &ld->diag->warnings;
    size_t *n = is_error ? &ld->diag->nerrors : &ld->diag->nwarnings;
    char **p = msg ? realloc(*arr, (*n + 1) * sizeof(*p)) : NULL;
    if (!p) {
        free(msg);
        return;
    }
    p[(*n)++] = msg;
    *arr = p;
}

/* Declared with the format attribute so clang's -Wformat-nonliteral accepts the
 * vsnprintf below (the callers' formats are checked instead). */
static void vreport(loader *ld, bool is_error, int line, const char *key, const char *fmt,
                    va_list ap) __attribute__((format(printf, 5, 0)));

static void vreport(loader *ld, bool is_error, int line, const char *key, const char *fmt,
                    va_list ap) __attribute__((format(printf, 5, 0)));

static void vreport(loader *ld, bool is_error, int line, const char *key, const char *fmt,
                    va_list ap)
{
    char prefix[256], body[768];
    if (is_error)
        ld->failed = true;
    if (line > 0 && key)
        snprintf(prefix, sizeof(prefix), "%s:%d: key '%s': ", ld->name, line, key);
    else if (line > 0)
        snprintf(prefix, sizeof(prefix), "%s:%d: ", ld->name, line);
    else
        snprintf(prefix, sizeof(prefix), "%s: ", ld->name);
    vsnprintf(body, sizeof(body), fmt, ap);
    for (char *c = body; *c; c++)
        if (iscntrl((unsigned char)*c)) /* values may hold newlines: keep it one line */
            *c = '?';
    char *msg = NULL;
    if (asprintf(&msg, "%s%s", prefix, body) < 0)
        msg = NULL;
    diag_push(ld, is_error, msg);
}

__attribute__((format(printf, 4, 5))) static void err(loader *ld, int line, const char *key,
                                                      const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(ld, true, line, key, fmt, ap);
    va_end(ap);
}

__attribute__((format(printf, 4, 5))) static void warn(loader *ld, int line, const char *key,
                                                       const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(ld, false, line, key, fmt, ap);
    va_end(ap);
}

void cfg_diag_free(cfg_diag *diag)
{
    if (!diag)
        return;
    for (size_t i = 0; i < diag->nerrors; i++)
        free(diag->errors[i]);
    for (size_t i = 0; i < diag->nwarnings; i++)
        free(diag->warnings[i]);
    free(diag->errors);
    free(diag->warnings);
    memset(diag, 0, sizeof(*diag));
}

/* ---------------------------------------------------------------------------------- */
/* Value parsers                                                                       */

/* Parses digits at *p into *out (no sign); fails on no digits or on overflow. */
static int parse_digits(const char **p, int64_t *out, int *ndigits)
{
    int64_t v = 0;
    int n = 0;
    while (isdigit((unsigned char)**p)) {
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, **p - '0', &v))
            return -1;
        (*p)++;
        n++;
    }
    if (ndigits)
        *ndigits = n;
    *out = v;
    return n > 0 ? 0 : -1;
}

static int64_t duration_unit(const char **p)
{
    if (strncmp(*p, "ms", 2) == 0)
        return (*p += 2, 1);
    if (**p == 's')
        return ((*p)++, MS_PER_S);
    if (**p == 'm')
        return ((*p)++, MS_PER_M);
    if (**p == 'h')
        return ((*p)++, MS_PER_H);
    return 0;
}

/* Go-style durations: one or more <number><unit> with units ms, s, m, h ("1h30m",
 * "1.5h", "500ms"); a fraction is truncated to whole milliseconds. "0" alone is zero. */
int cfg_parse_duration(const char *s, int64_t *ms_out)
{
    if (!s || !*s)
        return -1;
    if (strcmp(s, "0") == 0) {
        *ms_out = 0;
        return 0;
    }
    int64_t total = 0;
    const char *p = s;
    while (*p) {
        int64_t whole, frac = 0, scale = 1, unit, part;
        if (parse_digits(&p, &whole, NULL) < 0)
            return -1;
        if (*p == '.') {
            p++;
            int nd = 0;
            while (isdigit((unsigned char)*p)) {
                if (nd++ < 9) {
                    frac = frac * 10 + (*p - '0');
                    scale *= 10;
                }
                p++;
            }
            if (nd == 0)
                return -1;
        }
        if ((unit = duration_unit(&p)) == 0)
            return -1;
        if (__builtin_mul_overflow(whole, unit, &part) ||
            __builtin_add_overflow(part, frac * unit / scale, &part) ||
            __builtin_add_overflow(total, part, &total))
            return -1;
    }
    *ms_out = total;
    return 0;
}

/* Sizes: a byte count with an optional unit B, KB, MB, GB, TB (powers of 1024, as in
 * PostgreSQL; KiB..TiB are accepted as synonyms), case-insensitive. */
int cfg_parse_size(const char *s, int64_t *bytes_out)
{
    static const struct {
        const char *unit;
        int shift;
    } units[] = {{"", 0},     {"b", 0},   {"kb", 10},  {"kib", 10}, {"mb", 20},
                 {"mib", 20}, {"gb", 30}, {"gib", 30}, {"tb", 40},  {"tib", 40}};
    if (!s)
        return -1;
    const char *p = s;
    int64_t n;
    if (parse_digits(&p, &n, NULL) < 0)
        return -1;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcasecmp(p, units[i].unit) != 0)
            continue;
        if (n > (INT64_MAX >> units[i].shift))
            return -1;
        *bytes_out = n << units[i].shift;
        return 0;
    }
    return -1;
}

static int parse_int(const char *s, int64_t *out)
{
    const char *p = s;
    bool neg = (*p == '-');
    if (neg)
        p++;
    if (parse_digits(&p, out, NULL) < 0 || *p)
        return -1;
    if (neg)
        *out = -*out;
    return 0;
}

static bool valid_hostname(const char *h, size_t n)
{
    if (n > 253)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)h[i]) && !strchr(".-_", h[i]))
            return false;
    return true;
}

/* "host:port", ":port" or "[v6addr]:port". Returns a static reason on failure. */
static const char *parse_hostport(const char *s, bool need_host, char **host, int *port)
{
    const char *colon, *h = s;
    size_t hlen;
    char v6[64];
    if (*s == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return "bracketed IPv6 address must be followed by ':port', e.g. [::1]:5432";
        hlen = (size_t)(close - s - 1);
        h = s + 1;
        if (hlen == 0 || hlen >= sizeof(v6))
            return "invalid IPv6 address";
        memcpy(v6, h, hlen);
        v6[hlen] = '\0';
        struct in6_addr a;
        if (inet_pton(AF_INET6, v6, &a) != 1)
            return "invalid IPv6 address";
        colon = close + 1;
    } else {
        if (!(colon = strrchr(s, ':')))
            return "missing port: use host:port or :port";
        if (memchr(s, ':', (size_t)(colon - s)))
            return "an IPv6 address needs brackets, e.g. [::1]:5432";
        hlen = (size_t)(colon - s);
        if (!valid_hostname(s, hlen))
            return "invalid host name";
    }
    if (need_host && hlen == 0)
        return "needs a host, e.g. 10.0.1.10:5432";
    const char *p = colon + 1;
    int64_t v;
    int nd;
    if (parse_digits(&p, &v, &nd) < 0 || *p || nd > 5 || v < 1 || v > 65535)
        return "port must be a number from 1 to 65535";
    if (!(*host = strndup(h, hlen)))
        return "out of memory";
    *port = (int)v;
    return NULL;
}

/* ---------------------------------------------------------------------------------- */
/* Pass 1: scan lines, build section/value records and the shadow INI text             */

static void sh_add(loader *ld, const char *s)
{
    size_t n = strlen(s);
    if (grow(&ld->shadow, &ld->shcap, ld->shlen + n + 1, 1) < 0) {
        err(ld, 0, NULL, "out of memory");
        return;
    }
    memcpy(ld->shadow + ld->shlen, s, n + 1);
    ld->shlen += n;
}

static bool is_name_char(char c, bool dots)
{
    return isalnum((unsigned char)c) || c == '_' || c == '-' || (dots && c == '.');
}

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    return p;
}

/* After a header or value only whitespace and a '#' or ';' comment may follow. */
static bool rest_is_comment(const char *p, const char *end)
{
    p = skip_ws(p, end);
    return p == end || *p == '#' || *p == ';';
}

static sec_kind classify_section(const char *name)
{
    for (size_t i = 0; i < sizeof(known_sections) / sizeof(known_sections[0]); i++)
        if (strcmp(name, known_sections[i].name) == 0)
            return known_sections[i].kind;
    for (size_t i = 0; i < sizeof(ignored_sections) / sizeof(ignored_sections[0]); i++) {
        size_t n = strlen(ignored_sections[i]);
        if (strncmp(name, ignored_sections[i], n) == 0 && (!name[n] || name[n] == '.'))
            return SEC_IGNORED;
    }
    return SEC_INVALID;
}

static void listener_defaults(cfg_listener *l, int line)
{
    memset(l, 0, sizeof(*l));
    l->tls_mode = CFG_TLS_OPTIONAL;
    l->use_tailscale_tls = true;
    l->tls_ticket_lifetime_ms = MS_PER_H;
    l->tls_session_cache_size = 1000;
    l->backend_tls = CFG_BTLS_PREFER;
    l->max_connections = 1000;
    l->max_unstarted_per_peer = 64;
    l->admin_database = strdup("postgres");
    l->user_prefix = strdup("wp_");
    l->user_ttl_ms = 24 * MS_PER_H;
    l->allow_raw_sql = -1;
    l->line = line;
}

static int add_listener(loader *ld, int line)
{
    wp_config *cfg = ld->cfg;
    size_t cap = ld->lcap;
    if (grow(&cfg->listeners, &cap, cfg->nlisteners + 1, sizeof(cfg_listener)) < 0 ||
        grow(&ld->lmeta, &ld->lcap, cfg->nlisteners + 1, sizeof(lsn_meta)) < 0)
        return -1;
    cfg_listener *l = &cfg->listeners[cfg->nlisteners];
    listener_defaults(l, line);
    memset(&ld->lmeta[cfg->nlisteners], 0, sizeof(lsn_meta));
    cfg->nlisteners++;
    if (!l->admin_database || !l->user_prefix)
        return -1;
    return 0;
}

/* Decides what a header means; reports misplaced or unknown sections. */
static sec_kind open_section(loader *ld, sec_rec *s, bool array)
{
    sec_kind k = classify_section(s->name);
    if (k == SEC_LISTENER && !array) {
        err(ld, s->line, NULL, "[listeners] is an array of tables: write [[listeners]]");
        return SEC_INVALID;
    }
    if (array && k != SEC_LISTENER) {
        err(ld, s->line, NULL, "[[%s]] is not an array section (only [[listeners]] repeats)",
            s->name);
        return SEC_INVALID;
    }
    switch (k) {
    case SEC_INVALID:
        err(ld, s->line, NULL, "unknown section [%s]", s->name);
        return SEC_INVALID;
    case SEC_IGNORED:
        return SEC_IGNORED;
    case SEC_LISTENER:
        if (add_listener(ld, s->line) < 0) {
            err(ld, s->line, NULL, "out of memory");
            return SEC_INVALID;
        }
        s->listener = ld->cfg->nlisteners - 1;
        return k;
    case SEC_LISTENER_PG: {
        if (ld->cfg->nlisteners == 0) {
            err(ld, s->line, NULL, "[listeners.postgres] must follow a [[listeners]] section");
            return SEC_INVALID;
        }
        s->listener = ld->cfg->nlisteners - 1;
        lsn_meta *m = &ld->lmeta[s->listener];
        if (m->pg_line) {
            err(ld, s->line, NULL,
                "[listeners.postgres] appears twice for one listener (first on line %d)",
                m->pg_line);
            return SEC_INVALID;
        }
        m->pg_line = s->line;
        return k;
    }
    default:
        if (ld->sec_line[k]) {
            err(ld, s->line, NULL, "section [%s] appears twice (first on line %d)", s->name,
                ld->sec_line[k]);
            return SEC_INVALID;
        }
        ld->sec_line[k] = s->line;
        return k;
    }
}

/* Parses "[name]" or "[[name]]"; returns the name length (0 = malformed). */
static size_t parse_header(const char *p, const char *end, bool *array, const char **name)
{
    *array = (p + 1 < end && p[1] == '[');
    const char *q = skip_ws(p + (*array ? 2 : 1), end);
    *name = q;
    while (q < end && is_name_char(*q, true))
        q++;
    size_t n = (size_t)(q - *name);
    q = skip_ws(q, end);
    if (q == end || *q != ']' || (*array && (q + 1 == end || q[1] != ']')) ||
        !rest_is_comment(q + (*array ? 2 : 1), end))
        return 0;
    return n;
}

/* Every header line gets a section record, even a broken one, so that the keys below a
 * broken header are skipped instead of landing in the section above it. */
static void scan_header(loader *ld, int line, const char *p, const char *end)
{
    bool array;
    const char *name;
    size_t n = parse_header(p, end, &array, &name);
    if (grow(&ld->secs, &ld->capsecs, ld->nsecs + 1, sizeof(sec_rec)) < 0) {
        err(ld, line, NULL, "out of memory");
        return;
    }
    sec_rec *s = &ld->secs[ld->nsecs];
    memset(s, 0, sizeof(*s));
    s->line = line;
    if (n == 0)
        err(ld, line, NULL, "malformed section header (expected [name] or [[name]])");
    else if (n > CFG_MAX_NAME)
        err(ld, line, NULL, "section name longer than %d bytes", CFG_MAX_NAME);
    else {
        memcpy(s->name, name, n);
        s->kind = open_section(ld, s, array);
    }
    char buf[32];
    snprintf(buf, sizeof(buf), "[s%zu]", ld->nsecs++);
    sh_add(ld, buf);
}

/* Decodes a double-quoted string starting at *pp (on the opening quote). */
static char *scan_quoted(const char **pp, const char *end, const char **why)
{
    const char *p = *pp + 1;
    char *out = malloc((size_t)(end - p) + 1), *o = out;
    if (!out)
        return (*why = "out of memory", NULL);
    for (; p < end && *p != '"'; p++) {
        if (*p != '\\') {
            *o++ = *p;
            continue;
        }
        if (++p == end)
            break;
        switch (*p) {
        case '"':
            *o++ = '"';
            break;
        case '\\':
            *o++ = '\\';
            break;
        case 'n':
            *o++ = '\n';
            break;
        case 't':
            *o++ = '\t';
            break;
        default:
            free(out);
            *why = "unknown escape in string (allowed: \\\" \\\\ \\n \\t)";
            return NULL;
        }
    }
    if (p == end) {
        free(out);
        *why = "unterminated string (missing closing \")";
        return NULL;
    }
    *o = '\0';
    *pp = p + 1;
    return out;
}

/* Scans a value: a quoted string or a bare token; fills v. Returns a reason on error. */
static const char *scan_value(const char *p, const char *end, val_rec *v)
{
    const char *why = NULL;
    if (p == end || *p == '#' || *p == ';')
        return "missing value";
    if (*p == '\'')
        return "single-quoted strings are not supported: use double quotes";
    if (*p == '"') {
        v->quoted = true;
        if (!(v->text = scan_quoted(&p, end, &why)))
            return why;
    } else {
        const char *b = p;
        while (p < end && !strchr(" \t#;\"'", *p))
            p++;
        if (!(v->text = strndup(b, (size_t)(p - b))))
            return "out of memory";
        if (p < end && (*p == '"' || *p == '\''))
            return "unexpected quote inside a bare value";
    }
    if (!rest_is_comment(p, end))
        return "unexpected text after the value (strings must be quoted; comments start "
               "with # or ;)";
    return NULL;
}

static void scan_key(loader *ld, int line, const char *p, const char *end)
{
    const char *k = p;
    while (p < end && is_name_char(*p, false))
        p++;
    size_t klen = (size_t)(p - k);
    char key[CFG_MAX_NAME + 1];
    p = skip_ws(p, end);
    if (klen == 0 || p == end || *p != '=') {
        err(ld, line, NULL, "expected 'key = value' or a [section] header");
        return;
    }
    if (klen > CFG_MAX_NAME) {
        err(ld, line, NULL, "key name longer than %d bytes", CFG_MAX_NAME);
        return;
    }
    memcpy(key, k, klen);
    key[klen] = '\0';
    if (grow(&ld->vals, &ld->capvals, ld->nvals + 1, sizeof(val_rec)) < 0) {
        err(ld, line, key, "out of memory");
        return;
    }
    val_rec *v = &ld->vals[ld->nvals];
    memset(v, 0, sizeof(*v));
    v->line = line;
    const char *why = scan_value(skip_ws(p + 1, end), end, v);
    if (why) {
        err(ld, line, key, "%s", why);
        v->bad = true;
    }
    char buf[CFG_MAX_NAME + 32];
    snprintf(buf, sizeof(buf), "%s=%zu", key, ld->nvals++);
    sh_add(ld, buf);
}

static void scan_line(loader *ld, int line, const char *p, size_t len)
{
    if (len > 0 && p[len - 1] == '\r')
        len--;
    const char *end = p + len, *q = skip_ws(p, end);
    if (len > CFG_MAX_LINE) {
        err(ld, line, NULL,
            "line is %zu bytes long; the limit is %d (inih would split it silently)", len,
            CFG_MAX_LINE);
    } else if (memchr(p, '\0', len)) {
        err(ld, line, NULL, "line contains a NUL byte");
    } else if (q == end || *q == '#' || *q == ';') {
        /* blank or comment */
    } else if (q != p) {
        err(ld, line, NULL,
            "indented line: inih would join it to the previous value; remove the leading "
            "whitespace");
    } else if (*q == '[') {
        scan_header(ld, line, q, end);
    } else {
        scan_key(ld, line, q, end);
    }
    sh_add(ld, "\n");
}

static void scan_text(loader *ld, const char *text, size_t len)
{
    const char *p = text, *end = text + len;
    if (len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0)
        p += 3; /* UTF-8 BOM */
    for (int line = 1; p < end; line++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        scan_line(ld, line, p, n);
        p += n + (nl ? 1 : 0);
    }
}

/* ---------------------------------------------------------------------------------- */
/* Pass 2: inih calls on_key for each key; convert and store                           */

static const key_spec *find_key(sec_kind sec, const char *name, size_t *idx)
{
    for (size_t i = 0; i < NKEYS; i++) {
        if (keys[i].sec == sec && strcmp(keys[i].name, name) == 0) {
            *idx = i;
            return &keys[i];
        }
    }
    return NULL;
}

/* Replaces every ${VAR} from the environment. Expanded text is not expanded again. */
static char *expand_env(loader *ld, const val_rec *v, const char *key)
{
    size_t cap = strlen(v->text) + 1, len = 0;
    char *out = malloc(cap);
    bool ok = (out != NULL);
    for (const char *p = v->text; ok && *p;) {
        const char *add = p, *close;
        size_t n = 1;
        if (p[0] == '$' && p[1] == '{') {
            if (!(close = strchr(p + 2, '}'))) {
                err(ld, v->line, key, "unterminated '${' in value");
                ok = false;
                break;
            }
            char var[128];
            size_t vn = (size_t)(close - p - 2);
            bool valid = vn > 0 && vn < sizeof(var) && !isdigit((unsigned char)p[2]);
            for (size_t i = 0; valid && i < vn; i++)
                valid = isalnum((unsigned char)p[2 + i]) || p[2 + i] == '_';
            if (!valid) {
                err(ld, v->line, key, "invalid environment variable name in '%.*s'",
                    (int)(close - p + 1), p);
                ok = false;
                break;
            }
            memcpy(var, p + 2, vn);
            var[vn] = '\0';
            if (!(add = getenv(var))) {
                err(ld, v->line, key, "environment variable '%s' is not set", var);
                ok = false;
                break;
            }
            n = strlen(add);
            p = close + 1;
        } else {
            p++;
        }
        if (len + n + 1 > CFG_MAX_VALUE) {
            err(ld, v->line, key, "value longer than %d bytes after expansion", CFG_MAX_VALUE);
            ok = false;
        } else if (grow(&out, &cap, len + n + 1, 1) < 0) {
            err(ld, v->line, key, "out of memory");
            ok = false;
        } else {
            memcpy(out + len, add, n);
            len += n;
        }
    }
    if (!ok) {
        free(out);
        return NULL;
    }
    out[len] = '\0';
    return out;
}

static int set_string(char **field, char *val)
{
    free(*field);
    *field = val;
    return 0;
}

static int want_quoted(loader *ld, const val_rec *v, const char *key)
{
    if (v->quoted)
        return 0;
    if (strcmp(key, "admin_password") == 0) /* a secret: never echo it */
        err(ld, v->line, key, "must be a quoted string");
    else
        err(ld, v->line, key, "must be a quoted string (got '%s')", v->text);
    return -1;
}

static int store_bool(loader *ld, const val_rec *v, const key_spec *k, const char *s, void *f)
{
    bool b = (strcmp(s, "true") == 0);
    if (v->quoted || (!b && strcmp(s, "false") != 0)) {
        err(ld, v->line, k->name, "must be true or false, unquoted (got '%s')", s);
        return -1;
    }
    if (k->type == V_TRIBOOL)
        *(int *)f = b;
    else
        *(bool *)f = b;
    return 0;
}

static int store_number(loader *ld, const val_rec *v, const key_spec *k, const char *s, int64_t *f)
{
    int64_t n;
    int rc;
    const char *what;
    if (k->type == V_INT) {
        what = "an unquoted integer";
        rc = v->quoted ? -1 : parse_int(s, &n);
    } else if (k->type == V_DUR) {
        what = "a duration such as \"30s\", \"1m\", \"1h30m\" or 0";
        rc = (!v->quoted && strcmp(s, "0") != 0) ? -1 : cfg_parse_duration(s, &n);
    } else {
        what = "a size such as \"512MB\", \"10GB\" or 0";
        bool bare_digits = s[strspn(s, "0123456789")] == '\0';
        rc = (!v->quoted && !bare_digits) ? -1 : cfg_parse_size(s, &n);
    }
    if (rc < 0) {
        err(ld, v->line, k->name, "must be %s (got '%s')", what, s);
        return -1;
    }
    if (n < k->min) {
        err(ld, v->line, k->name, "must be %s (got '%s')",
            k->min > 0 ? "greater than 0" : "0 or more", s);
        return -1;
    }
    if (k->type == V_INT && n > INT32_MAX) {
        err(ld, v->line, k->name, "too large (got '%s')", s);
        return -1;
    }
    *f = n;
    return 0;
}

/* Matches s against names[]; returns the index or reports "must be one of". */
static int store_enum(loader *ld, const val_rec *v, const char *key, const char *s,
                      const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    char list[128] = "";
    for (int i = 0; i < n; i++)
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", i ? ", " : "", names[i]);
    err(ld, v->line, key, "must be one of %s (got '%s')", list, s);
    return -1;
}

static const char *const tls_names[] = {"off", "optional", "require"};
static const char *const btls_names[] = {"disable", "prefer", "require", "verify-full"};
static const char *const tlsver_names[] = {"1.3", "1.2"}; /* cfg_tls_version order */
static const char *const level_names[] = {"debug", "info", "warn", "error"};
static const char *const mode_names[] = {"postgres"};

static int store_hostport(loader *ld, const val_rec *v, const key_spec *k, const char *s,
                          cfg_listener *l)
{
    bool backend = (k->type == V_BACKEND);
    char *host = NULL;
    int port = 0;
    const char *why = parse_hostport(s, backend, &host, &port);
    if (why) {
        err(ld, v->line, k->name, "%s (got '%s')", why, s);
        return -1;
    }
    set_string(backend ? &l->backend_host : &l->listen_host, host);
    *(backend ? &l->backend_port : &l->listen_port) = port;
    return 0;
}

static int store_metrics_listen(loader *ld, const val_rec *v, const key_spec *k, const char *s,
                                wp_config *c)
{
    char *host = NULL;
    int port = 0;
    const char *why = parse_hostport(s, false, &host, &port);
    if (why) {
        err(ld, v->line, k->name, "%s (got '%s')", why, s);
        return -1;
    }
    set_string(&c->metrics_listen_host, host);
    c->metrics_listen_port = port;
    return 0;
}

/* Converts the expanded value s (owned; consumed) for key k into its field. */
static void store(loader *ld, const val_rec *v, const key_spec *k, char *s, void *base)
{
    void *f = (char *)base + k->off;
    int i;
    bool textual = !(k->type == V_BOOL || k->type == V_TRIBOOL || k->type == V_INT ||
                     k->type == V_DUR || k->type == V_SIZE);
    if (textual && want_quoted(ld, v, k->name) < 0) {
        explicit_bzero(s, strlen(s)); /* may be the admin password */
        free(s);
        return;
    }
    switch (k->type) {
    case V_STR:
        set_string(f, s);
        return;
    case V_BOOL:
    case V_TRIBOOL:
        store_bool(ld, v, k, s, f);
        break;
    case V_INT:
    case V_DUR:
    case V_SIZE:
        store_number(ld, v, k, s, f);
        break;
    case V_LISTEN:
    case V_BACKEND:
        store_hostport(ld, v, k, s, base);
        break;
    case V_METRICS_LISTEN:
        store_metrics_listen(ld, v, k, s, base);
        break;
    case V_MODE:
        if (strcmp(s, mode_names[0]) == 0) {
            set_string(f, s);
            return;
        }
        err(ld, v->line, k->name, "must be \"postgres\", the only mode of this edition (got '%s')",
            s);
        break;
    case V_TLSMODE:
        if ((i = store_enum(ld, v, k->name, s, tls_names, 3)) >= 0)
            *(cfg_tls_mode *)f = (cfg_tls_mode)i;
        break;
    case V_BTLS:
        if ((i = store_enum(ld, v, k->name, s, btls_names, 4)) >= 0)
            *(cfg_backend_tls *)f = (cfg_backend_tls)i;
        break;
    case V_TLSVER:
        if ((i = store_enum(ld, v, k->name, s, tlsver_names, 2)) >= 0)
            *(cfg_tls_version *)f = (cfg_tls_version)i;
        break;
    case V_LOGLEVEL:
        if (store_enum(ld, v, k->name, s, level_names, 4) >= 0) {
            set_string(f, s);
            return;
        }
        break;
    case V_IGNORED:
        break;
    }
    free(s);
}

static int *key_line_slot(loader *ld, const sec_rec *s, size_t idx)
{
    if (s->kind == SEC_LISTENER || s->kind == SEC_LISTENER_PG)
        return &ld->lmeta[s->listener].lines[idx];
    return &ld->glines[idx];
}

static int on_key(void *user, const char *section, const char *name, const char *value)
{
    loader *ld = user;
    const val_rec *v = &ld->vals[strtoul(value, NULL, 10)];
    if (section[0] != 's') {
        err(ld, v->line, name, "key outside any section");
        return 1;
    }
    sec_rec *s = &ld->secs[strtoul(section + 1, NULL, 10)];
    s->nkeys++;
    if (ld->admin_only && !(s->kind == SEC_ADMIN && strcmp(name, "socket") == 0))
        return 1; /* not even expanded: the admin CLI must not need the secrets */
    if (s->kind == SEC_INVALID)
        return 1;
    if (s->kind == SEC_IGNORED) {
        warn(ld, v->line, name, "ignored: [%s] %s has no effect in this edition", s->name, name);
        return 1;
    }
    size_t idx;
    const key_spec *k = find_key(s->kind, name, &idx);
    if (!k) {
        err(ld, v->line, name, "unknown key in %s%s%s", s->kind == SEC_LISTENER ? "[[" : "[",
            s->name, s->kind == SEC_LISTENER ? "]]" : "]");
        return 1;
    }
    int *slot = key_line_slot(ld, s, idx);
    if (*slot) {
        err(ld, v->line, name, "set twice in one section (first on line %d)", *slot);
        return 1;
    }
    *slot = v->line;
    if (k->type == V_IGNORED) {
        warn(ld, v->line, name, "ignored: [%s] %s has no effect in this edition", s->name, name);
        return 1;
    }
    if (v->bad)
        return 1;
    char *expanded = expand_env(ld, v, name);
    if (!expanded)
        return 1;
    bool lsec = (s->kind == SEC_LISTENER || s->kind == SEC_LISTENER_PG);
    store(ld, v, k, expanded, lsec ? (void *)&ld->cfg->listeners[s->listener] : ld->cfg);
    return 1;
}

/* ---------------------------------------------------------------------------------- */
/* Pass 3: whole-file validation                                                       */

static size_t key_index(sec_kind sec, const char *name)
{
    size_t idx = 0;
    find_key(sec, name, &idx);
    return idx;
}

static int lkey_line(loader *ld, size_t li, sec_kind sec, const char *name)
{
    return ld->lmeta[li].lines[key_index(sec, name)];
}

static void check_required(loader *ld, size_t li)
{
    cfg_listener *l = &ld->cfg->listeners[li];
    static const char *const lreq[] = {"name", "listen", "mode", "backend"};
    for (size_t i = 0; i < 4; i++)
        if (!lkey_line(ld, li, SEC_LISTENER, lreq[i]))
            err(ld, l->line, lreq[i], "required in every [[listeners]] section");
    lsn_meta *m = &ld->lmeta[li];
    static const char *const preq[] = {"admin_user", "admin_password"};
    for (size_t i = 0; i < 2; i++) {
        if (lkey_line(ld, li, SEC_LISTENER_PG, preq[i]))
            continue;
        if (m->pg_line)
            err(ld, m->pg_line, preq[i], "required in [listeners.postgres]");
        else
            err(ld, l->line, preq[i],
                "required: this listener has no [listeners.postgres] section");
    }
}

static void check_nonempty(loader *ld, size_t li, sec_kind sec, const char *key, const char *val)
{
    if (val && !*val)
        err(ld, lkey_line(ld, li, sec, key), key, "must not be empty");
}

static bool valid_listener_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > CFG_MAX_LISTENER_NAME)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_name_char(s[i], true))
            return false;
    return true;
}

static bool valid_prefix(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > CFG_MAX_PREFIX || !(islower((unsigned char)s[0]) || s[0] == '_'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!islower((unsigned char)s[i]) && !isdigit((unsigned char)s[i]) && s[i] != '_')
            return false;
    return true;
}

static void check_names(loader *ld, size_t li)
{
    cfg_listener *l = &ld->cfg->listeners[li];
    int line = lkey_line(ld, li, SEC_LISTENER, "name");
    if (!l->name)
        return;
    if (!valid_listener_name(l->name)) {
        err(ld, line, "name", "must be 1-%d letters, digits, '.', '_' or '-' (got '%s')",
            CFG_MAX_LISTENER_NAME, l->name);
        return;
    }
    for (size_t j = 0; j < li; j++) {
        const char *other = ld->cfg->listeners[j].name;
        if (other && strcmp(other, l->name) == 0) {
            err(ld, line, "name", "duplicate listener name '%s' (first on line %d)", l->name,
                lkey_line(ld, j, SEC_LISTENER, "name"));
            return;
        }
    }
}

static void check_tls(loader *ld, size_t li)
{
    cfg_listener *l = &ld->cfg->listeners[li];
    int cl = lkey_line(ld, li, SEC_LISTENER, "cert_file");
    int kl = lkey_line(ld, li, SEC_LISTENER, "key_file");
    if (cl && !kl)
        err(ld, cl, "cert_file", "needs key_file in the same listener");
    if (kl && !cl)
        err(ld, kl, "key_file", "needs cert_file in the same listener");
    check_nonempty(ld, li, SEC_LISTENER, "cert_file", l->cert_file);
    check_nonempty(ld, li, SEC_LISTENER, "key_file", l->key_file);
    check_nonempty(ld, li, SEC_LISTENER, "backend_ca_file", l->backend_ca_file);
    if (l->tls_mode != CFG_TLS_OFF && !l->use_tailscale_tls && !cl && !kl) {
        int line = lkey_line(ld, li, SEC_LISTENER, "tls_mode");
        err(ld, line ? line : l->line, "tls_mode",
            "'%s' needs a certificate: set cert_file and key_file, or use_tailscale_tls = true",
            cfg_tls_mode_str(l->tls_mode));
    }
    if (l->backend_tls == CFG_BTLS_VERIFY_FULL && !l->backend_ca_file)
        err(ld, lkey_line(ld, li, SEC_LISTENER, "backend_tls"), "backend_tls",
            "verify-full needs backend_ca_file");
    /* TLS 1.3 caps a ticket's lifetime at 7 days (RFC 8446 section 4.6.1). */
    if (l->tls_ticket_lifetime_ms > 7 * 24 * MS_PER_H)
        err(ld, lkey_line(ld, li, SEC_LISTENER, "tls_ticket_lifetime"), "tls_ticket_lifetime",
            "must be at most 168h (TLS 1.3's limit), or 0 to turn session tickets off");
    if (l->tls_session_cache_size > 1000000)
        err(ld, lkey_line(ld, li, SEC_LISTENER, "tls_session_cache_size"), "tls_session_cache_size",
            "must be at most 1000000, or 0 to turn the cache off");
}

static void check_postgres(loader *ld, size_t li)
{
    cfg_listener *l = &ld->cfg->listeners[li];
    check_nonempty(ld, li, SEC_LISTENER_PG, "admin_user", l->admin_user);
    check_nonempty(ld, li, SEC_LISTENER_PG, "admin_password", l->admin_password);
    check_nonempty(ld, li, SEC_LISTENER_PG, "admin_database", l->admin_database);
    if (l->user_prefix && !valid_prefix(l->user_prefix))
        err(ld, lkey_line(ld, li, SEC_LISTENER_PG, "user_prefix"), "user_prefix",
            "must match [a-z_][a-z0-9_]* and be at most %d bytes (got '%s')", CFG_MAX_PREFIX,
            l->user_prefix);
}

/* Roles are named <user_prefix><user>_<node>_<database>, so two listeners in front of
 * one backend with one prefix would share a caller's role, and each connection would
 * re-apply its own listener's grant to it: a session on the narrower listener could hold
 * the broader grant. Distinct prefixes keep their roles apart. */
static void check_shared_backend(loader *ld, size_t li)
{
    cfg_listener *l = &ld->cfg->listeners[li];
    if (!l->backend_host || !l->user_prefix)
        return;
    for (size_t j = 0; j < li; j++) {
        cfg_listener *o = &ld->cfg->listeners[j];
        if (o->backend_host && o->user_prefix && o->backend_port == l->backend_port &&
            strcmp(o->backend_host, l->backend_host) == 0 &&
            strcmp(o->user_prefix, l->user_prefix) == 0) {
            int line = lkey_line(ld, li, SEC_LISTENER_PG, "user_prefix");
            err(ld, line ? line : l->line, "user_prefix",
                "listeners '%s' and '%s' share backend %s:%d and user_prefix '%s'; give each "
                "its own user_prefix so their roles (and grants) stay apart",
                o->name ? o->name : "?", l->name ? l->name : "?", l->backend_host, l->backend_port,
                l->user_prefix);
            return;
        }
    }
}

int cfg_host_is_loopback(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (!host || !*host)
        return 0; /* ":port" listens on every address */
    if (strcmp(host, "localhost") == 0)
        return 1;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    return inet_pton(AF_INET6, host, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

/* The metrics endpoint tells anyone who can reach it how busy each listener is and why
 * callers are refused: loopback unless the operator says otherwise. */
static void check_admin(loader *ld)
{
    const char *sock = ld->cfg->admin_socket;
    if (sock && !*sock)
        err(ld, ld->glines[key_index(SEC_ADMIN, "socket")], "socket", "must not be empty");
    if (sock && strlen(sock) >= 108)
        err(ld, ld->glines[key_index(SEC_ADMIN, "socket")], "socket",
            "path too long for a unix socket (at most 107 bytes)");
}

static void check_metrics(loader *ld)
{
    wp_config *c = ld->cfg;
    if (c->metrics_listen_port && !c->metrics_allow_remote &&
        !cfg_host_is_loopback(c->metrics_listen_host))
        err(ld, ld->glines[key_index(SEC_METRICS, "listen")], "listen",
            "not a loopback address (got '%s:%d'); set allow_remote = true in [metrics] to "
            "serve metrics beyond this machine",
            c->metrics_listen_host, c->metrics_listen_port);
    check_admin(ld);
    if (c->audit_file && !*c->audit_file)
        err(ld, ld->glines[key_index(SEC_AUDIT, "file")], "file", "must not be empty");
}

/* [redis] is all or nothing: without an address the other keys would silently do
 * nothing, so they are an error; the address must parse; the heartbeat must come at
 * least twice per instance_ttl so one late heartbeat does not make a live instance look
 * dead. */
static void check_redis(loader *ld)
{
    wp_config *c = ld->cfg;
    int addr_line = ld->glines[key_index(SEC_REDIS, "address")];
    int alias_line = ld->glines[key_index(SEC_REDIS, "addr")];
    if (addr_line && alias_line)
        err(ld, alias_line, "addr", "set together with 'address' (line %d): keep one", addr_line);
    if (!ld->sec_line[SEC_REDIS])
        return;
    if (!c->redis_address) {
        err(ld, ld->sec_line[SEC_REDIS], NULL,
            "[redis] needs 'address' (host:port or a unix socket path); remove the section to "
            "run without Redis");
        return;
    }
    char host[256], why[200];
    int port, is_unix;
    if (rds_parse_address(c->redis_address, host, sizeof(host), &port, &is_unix, why,
                          sizeof(why)) != 0)
        err(ld, addr_line ? addr_line : alias_line, addr_line ? "address" : "addr", "%s", why);
    if (c->redis_key_prefix && !*c->redis_key_prefix)
        err(ld, ld->glines[key_index(SEC_REDIS, "key_prefix")], "key_prefix",
            "must not be empty (the default is \"waypoint:\")");
    if (c->redis_password && !*c->redis_password)
        err(ld, ld->glines[key_index(SEC_REDIS, "password")], "password",
            "is empty (an unset ${VAR}?); remove the key for a Redis without a password");
    if (c->redis_username && !c->redis_password)
        err(ld, ld->glines[key_index(SEC_REDIS, "username")], "username",
            "needs 'password' as well");
    if (c->redis_db > 1000000)
        err(ld, ld->glines[key_index(SEC_REDIS, "db")], "db", "must be a database number");
    if (c->redis_heartbeat_interval_ms * 2 > c->redis_instance_ttl_ms)
        err(ld, ld->glines[key_index(SEC_REDIS, "heartbeat_interval")], "heartbeat_interval",
            "must be at most half of instance_ttl (%lld ms), so one late heartbeat does not "
            "make a live instance look dead",
            (long long)c->redis_instance_ttl_ms);
}

static void check_globals(loader *ld)
{
    wp_config *c = ld->cfg;
    check_metrics(ld);
    check_redis(ld);
    if (c->ts_socket && !*c->ts_socket)
        err(ld, ld->glines[key_index(SEC_TAILSCALE, "socket")], "socket", "must not be empty");
    if (c->ts_capability && !*c->ts_capability)
        err(ld, ld->glines[key_index(SEC_TAILSCALE, "capability")], "capability",
            "must not be empty");
}

static void validate(loader *ld)
{
    for (size_t i = 0; i < ld->nsecs; i++)
        if (ld->secs[i].kind == SEC_IGNORED && ld->secs[i].nkeys == 0)
            warn(ld, ld->secs[i].line, NULL, "ignored: section [%s] has no effect in this edition",
                 ld->secs[i].name);
    check_globals(ld);
    if (ld->cfg->nlisteners == 0)
        err(ld, 0, NULL, "no [[listeners]] section: at least one listener is required");
    for (size_t i = 0; i < ld->cfg->nlisteners; i++) {
        check_required(ld, i);
        check_names(ld, i);
        check_tls(ld, i);
        check_postgres(ld, i);
        check_shared_backend(ld, i);
    }
}

/* ---------------------------------------------------------------------------------- */
/* Lifecycle                                                                           */

static wp_config *config_new(const char *path)
{
    wp_config *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    atomic_init(&c->refs, 1);
    c->path = strdup(path);
    c->ts_socket = strdup("/var/run/tailscale/tailscaled.sock");
    c->ts_capability = strdup("redo.com/cap/waypoint");
    c->whois_timeout_ms = 2 * MS_PER_S;
    c->cleanup_interval_ms = 10 * MS_PER_M;
    c->admin_idle_timeout_ms = 60 * MS_PER_S;
    c->revalidation_interval_ms = 1 * MS_PER_M;
    c->revalidation_grace_ms = 5 * MS_PER_M;
    c->startup_timeout_ms = 10 * MS_PER_S;
    c->drain_timeout_ms = 30 * MS_PER_S;
    c->pool_enabled = true;
    c->pool_idle_timeout_ms = 60 * MS_PER_S;
    c->pool_max_per_role = 4;
    c->pool_max_total = 100;
    c->redis_key_prefix = strdup("waypoint:");
    c->redis_connect_timeout_ms = 1 * MS_PER_S;
    c->redis_command_timeout_ms = 1 * MS_PER_S;
    c->redis_heartbeat_interval_ms = 2 * MS_PER_S;
    c->redis_instance_ttl_ms = 10 * MS_PER_S;
    c->redis_pool_size = 8;
    c->log_level = strdup("info");
    if (!c->path || !c->ts_socket || !c->ts_capability || !c->log_level || !c->redis_key_prefix) {
        cfg_unref(c);
        return NULL;
    }
    return c;
}

static void free_secret(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

static void config_free(wp_config *c)
{
    for (size_t i = 0; i < c->nlisteners; i++) {
        cfg_listener *l = &c->listeners[i];
        free(l->name);
        free(l->listen_host);
        free(l->mode);
        free(l->backend_host);
        free(l->cert_file);
        free(l->key_file);
        free(l->backend_ca_file);
        free(l->admin_user);
        free_secret(l->admin_password);
        free(l->admin_database);
        free(l->user_prefix);
    }
    free(c->listeners);
    free(c->path);
    free(c->ts_socket);
    free(c->ts_capability);
    free(c->log_level);
    free(c->metrics_listen_host);
    free(c->admin_socket);
    free(c->audit_file);
    free(c->redis_address);
    free(c->redis_username);
    free_secret(c->redis_password);
    free(c->redis_key_prefix);
    free(c);
}

wp_config *cfg_ref(wp_config *cfg)
{
    if (cfg)
        atomic_fetch_add(&cfg->refs, 1);
    return cfg;
}

void cfg_unref(wp_config *cfg)
{
    if (cfg && atomic_fetch_sub(&cfg->refs, 1) == 1)
        config_free(cfg);
}

static void loader_free(loader *ld)
{
    for (size_t i = 0; i < ld->nvals; i++)
        free_secret(ld->vals[i].text); /* may hold the admin password */
    free(ld->vals);
    free(ld->secs);
    free(ld->lmeta);
    if (ld->shadow)
        explicit_bzero(ld->shadow, ld->shlen);
    free(ld->shadow);
}

static int diag_line(const char *msg, size_t namelen)
{
    return (int)strtol(msg + namelen + 1, NULL, 10); /* 0 for file-level messages */
}

/* Orders the messages this load added by line (stable), so they read top to bottom. */
static void sort_by_line(char **msgs, size_t from, size_t n, size_t namelen)
{
    for (size_t i = from + 1; i < n; i++) {
        char *m = msgs[i];
        int line = diag_line(m, namelen);
        size_t j = i;
        for (; j > from && diag_line(msgs[j - 1], namelen) > line; j--)
            msgs[j] = msgs[j - 1];
        msgs[j] = m;
    }
}

static wp_config *load_text(const char *text, size_t len, const char *name, cfg_diag *diag,
                            bool admin_only)
{
    loader ld;
    memset(&ld, 0, sizeof(ld));
    ld.name = name;
    ld.diag = diag;
    ld.admin_only = admin_only;
    size_t e0 = diag->nerrors, w0 = diag->nwarnings;
    if (!(ld.cfg = config_new(name))) {
        err(&ld, 0, NULL, "out of memory");
        return NULL;
    }
    scan_text(&ld, text, len);
    sh_add(&ld, "");
    if (ld.shadow) {
        int rc = ini_parse_string(ld.shadow, on_key, &ld);
        if (rc != 0)
            err(&ld, rc > 0 ? rc : 0, NULL, "inih could not parse this line (internal error)");
    }
    if (admin_only)
        check_admin(&ld);
    else
        validate(&ld);
    loader_free(&ld);
    sort_by_line(diag->errors, e0, diag->nerrors, strlen(name));
    sort_by_line(diag->warnings, w0, diag->nwarnings, strlen(name));
    if (ld.failed) {
        cfg_unref(ld.cfg);
        return NULL;
    }
    return ld.cfg;
}

wp_config *cfg_load_string(const char *text, const char *name, cfg_diag *diag)
{
    cfg_diag local = {0};
    wp_config *c = load_text(text ? text : "", text ? strlen(text) : 0, name ? name : "<string>",
                             diag ? diag : &local, false);
    cfg_diag_free(&local);
    return c;
}

static char *read_file(const char *path, size_t *len, const char **why)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return (*why = strerror(errno), NULL);
    char *buf = malloc(CFG_MAX_FILE + 1);
    size_t n = buf ? fread(buf, 1, CFG_MAX_FILE + 1, f) : 0;
    int rerr = ferror(f);
    fclose(f);
    if (!buf || rerr || n > CFG_MAX_FILE) {
        *why = !buf ? "out of memory" : rerr ? "read error" : "file larger than 1 MiB";
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

static wp_config *load_file(const char *path, cfg_diag *diag, bool admin_only)
{
    cfg_diag local = {0};
    const char *why = NULL;
    size_t len = 0;
    char *text = read_file(path, &len, &why);
    wp_config *c = NULL;
    if (!diag)
        diag = &local;
    if (text) {
        c = load_text(text, len, path, diag, admin_only);
        explicit_bzero(text, len);
        free(text);
    } else {
        loader ld = {.name = path, .diag = diag};
        err(&ld, 0, NULL, "cannot read configuration file: %s", why);
    }
    cfg_diag_free(&local);
    return c;
}

wp_config *cfg_load(const char *path, cfg_diag *diag)
{
    return load_file(path, diag, false);
}

int cfg_admin_socket(const char *path, char **socket, cfg_diag *diag)
{
    *socket = NULL;
    wp_config *c = load_file(path, diag, true);
    if (!c)
        return -1;
    int rc = 0;
    if (c->admin_socket && !(*socket = strdup(c->admin_socket))) {
        cfg_diag local = {0};
        loader ld = {.name = path, .diag = diag ? diag : &local};
        err(&ld, 0, NULL, "out of memory");
        cfg_diag_free(&local);
        rc = -1;
    }
    cfg_unref(c);
    return rc;
}

bool cfg_listener_allow_raw_sql(const wp_config *cfg, const cfg_listener *l)
{
    return l->allow_raw_sql >= 0 ? l->allow_raw_sql != 0 : cfg->allow_raw_sql;
}

const char *cfg_tls_mode_str(cfg_tls_mode m)
{
    return (unsigned)m < 3 ? tls_names[m] : "?";
}

const char *cfg_tls_version_str(cfg_tls_version v)
{
    return (unsigned)v < 2 ? tlsver_names[v] : "?";
}

const char *cfg_backend_tls_str(cfg_backend_tls m)
{
    return (unsigned)m < 4 ? btls_names[m] : "?";
}

/* ---------------------------------------------------------------------------------- */
/* Printing                                                                            */

static void print_str(FILE *out, const char *key, const char *s)
{
    fprintf(out, "%s = \"", key);
    for (; *s; s++) {
        switch (*s) {
        case '"':
            fputs("\\\"", out);
            break;
        case '\\':
            fputs("\\\\", out);
            break;
        case '\n':
            fputs("\\n", out);
            break;
        case '\t':
            fputs("\\t", out);
            break;
        default:
            fputc(iscntrl((unsigned char)*s) ? '?' : *s, out);
        }
    }
    fputs("\"\n", out);
}

static void print_opt_str(FILE *out, const char *key, const char *s)
{
    if (s)
        print_str(out, key, s);
    else
        fprintf(out, "# %s is not set\n", key);
}

static void print_duration(FILE *out, const char *key, int64_t ms)
{
    static const struct {
        int64_t ms;
        const char *unit;
    } parts[] = {{MS_PER_H, "h"}, {MS_PER_M, "m"}, {MS_PER_S, "s"}, {1, "ms"}};
    fprintf(out, "%s = \"", key);
    if (ms == 0)
        fputc('0', out);
    for (size_t i = 0; i < 4 && ms > 0; i++) {
        if (ms >= parts[i].ms)
            fprintf(out, "%" PRId64 "%s", ms / parts[i].ms, parts[i].unit);
        ms %= parts[i].ms;
    }
    fputs("\"\n", out);
}

static void print_size(FILE *out, const char *key, int64_t n)
{
    static const char *const units[] = {"TB", "GB", "MB", "KB"};
    for (int i = 0; i < 4 && n > 0; i++) {
        int shift = 40 - 10 * i;
        if (n % (INT64_C(1) << shift) == 0) {
            fprintf(out, "%s = \"%" PRId64 "%s\"\n", key, n >> shift, units[i]);
            return;
        }
    }
    fprintf(out, "%s = \"%" PRId64 "%s\"\n", key, n, n ? "B" : "");
}

static void print_hostport(FILE *out, const char *key, const char *host, int port)
{
    bool v6 = strchr(host, ':') != NULL;
    fprintf(out, "%s = \"%s%s%s:%d\"\n", key, v6 ? "[" : "", host, v6 ? "]" : "", port);
}

static void print_listener(const wp_config *cfg, const cfg_listener *l, FILE *out)
{
    fputs("\n[[listeners]]\n", out);
    print_str(out, "name", l->name);
    print_hostport(out, "listen", l->listen_host, l->listen_port);
    print_str(out, "mode", l->mode);
    print_hostport(out, "backend", l->backend_host, l->backend_port);
    print_str(out, "tls_mode", cfg_tls_mode_str(l->tls_mode));
    fprintf(out, "use_tailscale_tls = %s\n", l->use_tailscale_tls ? "true" : "false");
    print_opt_str(out, "cert_file", l->cert_file);
    print_opt_str(out, "key_file", l->key_file);
    print_duration(out, "tls_ticket_lifetime", l->tls_ticket_lifetime_ms);
    fprintf(out, "tls_session_cache_size = %" PRId64 "\n", l->tls_session_cache_size);
    print_str(out, "tls_max_version", cfg_tls_version_str(l->tls_max_version));
    print_str(out, "backend_tls", cfg_backend_tls_str(l->backend_tls));
    print_opt_str(out, "backend_ca_file", l->backend_ca_file);
    fprintf(out, "max_connections = %" PRId64 "\n", l->max_connections);
    fprintf(out, "max_unstarted_per_peer = %" PRId64 "\n", l->max_unstarted_per_peer);
    fputs("\n[listeners.postgres]\n", out);
    print_str(out, "admin_user", l->admin_user);
    print_str(out, "admin_password", "********");
    print_str(out, "admin_database", l->admin_database);
    print_str(out, "user_prefix", l->user_prefix);
    print_duration(out, "user_ttl", l->user_ttl_ms);
    if (l->allow_raw_sql < 0)
        fprintf(out, "# allow_raw_sql = %s  (inherited from [provisioning])\n",
                cfg->allow_raw_sql ? "true" : "false");
    else
        fprintf(out, "allow_raw_sql = %s\n", l->allow_raw_sql ? "true" : "false");
}

void cfg_print(const wp_config *cfg, FILE *out)
{
    fprintf(out, "# effective configuration loaded from %s\n[tailscale]\n", cfg->path);
    print_str(out, "socket", cfg->ts_socket);
    print_str(out, "capability", cfg->ts_capability);
    print_duration(out, "whois_timeout", cfg->whois_timeout_ms);
    fprintf(out, "\n[provisioning]\nallow_raw_sql = %s\n", cfg->allow_raw_sql ? "true" : "false");
    print_duration(out, "cleanup_interval", cfg->cleanup_interval_ms);
    print_duration(out, "admin_idle_timeout", cfg->admin_idle_timeout_ms);
    fputs("\n[revalidation]\n", out);
    print_duration(out, "interval", cfg->revalidation_interval_ms);
    print_duration(out, "grace", cfg->revalidation_grace_ms);
    fprintf(out, "\n[defaults.limits]\nmax_conns_per_user = %" PRId64 "\n",
            cfg->default_limits.max_conns_per_user);
    print_duration(out, "max_conn_duration", cfg->default_limits.max_conn_duration_ms);
    print_size(out, "max_bytes_per_conn", cfg->default_limits.max_bytes_per_conn);
    fputs("\n[server]\n", out);
    print_duration(out, "startup_timeout", cfg->startup_timeout_ms);
    print_duration(out, "drain_timeout", cfg->drain_timeout_ms);
    print_str(out, "log_level", cfg->log_level);
    if (cfg->metrics_listen_port) {
        fputs("\n[metrics]\n", out);
        fprintf(out, "listen = \"%s%s%s:%d\"\n", strchr(cfg->metrics_listen_host, ':') ? "[" : "",
                cfg->metrics_listen_host, strchr(cfg->metrics_listen_host, ':') ? "]" : "",
                cfg->metrics_listen_port);
        fprintf(out, "allow_remote = %s\n", cfg->metrics_allow_remote ? "true" : "false");
    }
    if (cfg->admin_socket) {
        fputs("\n[admin]\n", out);
        print_str(out, "socket", cfg->admin_socket);
    }
    if (cfg->audit_file) {
        fputs("\n[audit]\n", out);
        print_str(out, "file", cfg->audit_file);
    }
    fprintf(out, "\n[pool]\nenabled = %s\n", cfg->pool_enabled ? "true" : "false");
    print_duration(out, "idle_timeout", cfg->pool_idle_timeout_ms);
    fprintf(out, "max_per_role = %" PRId64 "\nmax_total = %" PRId64 "\n", cfg->pool_max_per_role,
            cfg->pool_max_total);
    if (cfg->redis_address) {
        fputs("\n[redis]\n", out);
        print_str(out, "address", cfg->redis_address);
        print_opt_str(out, "username", cfg->redis_username);
        if (cfg->redis_password)
            print_str(out, "password", "********");
        fprintf(out, "db = %" PRId64 "\n", cfg->redis_db);
        print_str(out, "key_prefix", cfg->redis_key_prefix);
        print_duration(out, "connect_timeout", cfg->redis_connect_timeout_ms);
        print_duration(out, "command_timeout", cfg->redis_command_timeout_ms);
        print_duration(out, "heartbeat_interval", cfg->redis_heartbeat_interval_ms);
        print_duration(out, "instance_ttl", cfg->redis_instance_ttl_ms);
        fprintf(out, "pool_size = %" PRId64 "\n", cfg->redis_pool_size);
    }
    for (size_t i = 0; i < cfg->nlisteners; i++)
        print_listener(cfg, &cfg->listeners[i], out);
}

wp_config *cfg_load_logged(const char *path)
{
    cfg_diag diag = {0};
    wp_config *cfg = cfg_load(path, &diag);
    for (size_t i = 0; i < diag.nwarnings; i++)
        log_kv(WP_LOG_WARN, "config_warning", "msg", diag.warnings[i], (char *)NULL);
    for (size_t i = 0; i < diag.nerrors; i++)
        log_kv(WP_LOG_ERROR, "config_error", "msg", diag.errors[i], (char *)NULL);
    cfg_diag_free(&diag);
    return cfg;
}
