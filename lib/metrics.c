/*
 * metrics: registry and Prometheus text exposition (format 0.0.4).
 *
 * Design. A registry is a list of families; a family is a list of series, one per
 * combination of label values. Lists only grow (series are never removed: label values
 * are bounded by the caller and by METRICS_SERIES_MAX), and both are guarded by the
 * registry's one mutex, taken to find or add a series and to render. Values are
 * atomics, so an update on a series the caller already holds takes no lock; looking a
 * series up takes the mutex for a short list walk, which is cheap next to anything a
 * connection does (WhoIs, provisioning, a backend login).
 *
 * Doubles are kept as their bit patterns in 64-bit atomics and added with a CAS loop.
 * Histogram buckets are counted non-cumulatively (one atomic per bucket plus one for
 * +Inf) and summed at render time, so `le="+Inf"` and `_count` are the same number by
 * construction, as the format requires.
 */
#include "metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct metrics_series {
    metrics_series *next;
    const metrics_family *fam;
    char *values[METRICS_LABELS_MAX];
    _Atomic uint64_t v;                                /* counter: integer; gauge: double bits */
    _Atomic uint64_t sum;                              /* histogram: double bits */
    _Atomic uint64_t buckets[METRICS_BUCKETS_MAX + 1]; /* last = above every bound */
};

struct metrics_family {
    metrics_family *next;
    metrics_registry *reg;
    metrics_type type;
    char *name, *help;
    char *labels[METRICS_LABELS_MAX];
    size_t nlabels;
    double bounds[METRICS_BUCKETS_MAX];
    size_t nbounds;
    metrics_series *head, **tail;
    size_t nseries;
};

typedef struct metrics_collector {
    struct metrics_collector *next;
    metrics_collect_fn fn;
    void *arg;
} metrics_collector;

struct metrics_registry {
    pthread_mutex_t mu; /* guards the family and series lists, not the values */
    metrics_family *head, **tail;
    metrics_collector *collectors;
};

/* ------------------------------------------------------------- atomics ---- */

static double bits_to_double(uint64_t b)
{
    double d;
    memcpy(&d, &b, sizeof(d));
    return d;
}

static uint64_t double_to_bits(double d)
{
    uint64_t b;
    memcpy(&b, &d, sizeof(b));
    return b;
}

static void atomic_add_double(_Atomic uint64_t *p, double delta)
{
    uint64_t old = atomic_load_explicit(p, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(p, &old,
                                                  double_to_bits(bits_to_double(old) + delta),
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

/* ------------------------------------------------------------- registry ---- */

metrics_registry *metrics_new(void)
{
    metrics_registry *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    if (pthread_mutex_init(&r->mu, NULL) != 0) {
        free(r);
        return NULL;
    }
    r->tail = &r->head;
    return r;
}

static void series_free(metrics_series *s)
{
    for (size_t i = 0; i < METRICS_LABELS_MAX; i++)
        free(s->values[i]);
    free(s);
}

static void family_free(metrics_family *f)
{
    while (f->head) {
        metrics_series *n = f->head->next;
        series_free(f->head);
        f->head = n;
    }
    for (size_t i = 0; i < f->nlabels; i++)
        free(f->labels[i]);
    free(f->name);
    free(f->help);
    free(f);
}

void metrics_free(metrics_registry *r)
{
    if (!r)
        return;
    while (r->head) {
        metrics_family *n = r->head->next;
        family_free(r->head);
        r->head = n;
    }
    while (r->collectors) {
        metrics_collector *n = r->collectors->next;
        free(r->collectors);
        r->collectors = n;
    }
    pthread_mutex_destroy(&r->mu);
    free(r);
}

int metrics_name_valid(const char *name)
{
    if (!name || !*name || (name[0] >= '0' && name[0] <= '9'))
        return 0;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == ':'))
            return 0;
    return 1;
}

int metrics_label_valid(const char *name)
{
    /* Label names have no ':' and the "__" prefix is reserved by Prometheus. */
    return metrics_name_valid(name) && !strchr(name, ':') && strncmp(name, "__", 2) != 0 &&
           strcmp(name, "le") != 0;
}

static int family_init_labels(metrics_family *f, const char *const *labels)
{
    for (size_t i = 0; labels && labels[i]; i++) {
        if (i >= METRICS_LABELS_MAX || !metrics_label_valid(labels[i]))
            return -1;
        if (!(f->labels[i] = strdup(labels[i])))
            return -1;
        f->nlabels = i + 1;
    }
    return 0;
}

static int family_init_buckets(metrics_family *f, const double *b, size_t n)
{
    if (f->type != METRICS_HISTOGRAM)
        return n == 0 ? 0 : -1;
    if (n == 0 || n > METRICS_BUCKETS_MAX)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(b[i]) || (i > 0 && b[i] <= b[i - 1]))
            return -1;
        f->bounds[i] = b[i];
    }
    f->nbounds = n;
    return 0;
}

metrics_family *metrics_family_add(metrics_registry *r, metrics_type type, const char *name,
                                   const char *help, const char *const *labels,
                                   const double *buckets, size_t nbuckets)
{
    if (!r || !metrics_name_valid(name) || (int)type < 0 || type > METRICS_HISTOGRAM)
        return NULL;
    metrics_family *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->reg = r;
    f->type = type;
    f->tail = &f->head;
    f->name = strdup(name);
    f->help = strdup(help ? help : "");
    if (!f->name || !f->help || family_init_labels(f, labels) != 0 ||
        family_init_buckets(f, buckets, nbuckets) != 0) {
        family_free(f);
        return NULL;
    }
    pthread_mutex_lock(&r->mu);
    *r->tail = f;
    r->tail = &f->next;
    pthread_mutex_unlock(&r->mu);
    return f;
}

static int series_matches(const metrics_series *s, const char *const *values, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strncmp(s->values[i], values[i] ? values[i] : "", METRICS_VALUE_MAX) != 0)
            return 0;
    return 1;
}

static metrics_series *series_new(metrics_family *f, const char *const *values)
{
    metrics_series *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->fam = f;
    for (size_t i = 0; i < f->nlabels; i++) {
        if (!(s->values[i] = strndup(values[i] ? values[i] : "", METRICS_VALUE_MAX))) {
            series_free(s);
            return NULL;
        }
    }
    return s;
}

metrics_series *metrics_series_get(metrics_family *f, const char *const *values)
{
    if (!f || (f->nlabels > 0 && !values))
        return NULL;
    pthread_mutex_lock(&f->reg->mu);
    metrics_series *s = f->head;
    while (s && !series_matches(s, values, f->nlabels))
        s = s->next;
    if (!s && f->nseries < METRICS_SERIES_MAX && (s = series_new(f, values)) != NULL) {
        *f->tail = s;
        f->tail = &s->next;
        f->nseries++;
    }
    pthread_mutex_unlock(&f->reg->mu);
    return s;
}

/* --------------------------------------------------------------- values ---- */

void metrics_inc(metrics_series *s, uint64_t n)
{
    if (s && s->fam->type == METRICS_COUNTER)
        atomic_fetch_add_explicit(&s->v, n, memory_order_relaxed);
}

void metrics_set(metrics_series *s, double v)
{
    if (s && s->fam->type == METRICS_GAUGE)
        atomic_store_explicit(&s->v, double_to_bits(v), memory_order_relaxed);
}

void metrics_add(metrics_series *s, double delta)
{
    if (s && s->fam->type == METRICS_GAUGE)
        atomic_add_double(&s->v, delta);
}

void metrics_observe(metrics_series *s, double v)
{
    if (!s || s->fam->type != METRICS_HISTOGRAM || isnan(v))
        return;
    size_t i = 0;
    while (i < s->fam->nbounds && v > s->fam->bounds[i])
        i++;
    atomic_fetch_add_explicit(&s->buckets[i], 1, memory_order_relaxed);
    atomic_add_double(&s->sum, v);
}

void metrics_family_zero(metrics_family *f)
{
    if (!f || f->type != METRICS_GAUGE)
        return;
    pthread_mutex_lock(&f->reg->mu);
    for (metrics_series *s = f->head; s; s = s->next)
        atomic_store_explicit(&s->v, double_to_bits(0.0), memory_order_relaxed);
    pthread_mutex_unlock(&f->reg->mu);
}

double metrics_value(const metrics_series *s)
{
    if (!s)
        return 0;
    uint64_t v = atomic_load_explicit(&s->v, memory_order_relaxed);
    return s->fam->type == METRICS_COUNTER ? (double)v : bits_to_double(v);
}

uint64_t metrics_hist_count(const metrics_series *s)
{
    uint64_t n = 0;
    for (size_t i = 0; s && i <= s->fam->nbounds; i++)
        n += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
    return n;
}

int metrics_collector_add(metrics_registry *r, metrics_collect_fn fn, void *arg)
{
    metrics_collector *c = calloc(1, sizeof(*c));
    if (!c)
        return -1;
    c->fn = fn;
    c->arg = arg;
    pthread_mutex_lock(&r->mu);
    c->next = r->collectors;
    r->collectors = c;
    pthread_mutex_unlock(&r->mu);
    return 0;
}

/* -------------------------------------------------------------- render ---- */

typedef struct mbuf {
    char *p;
    size_t len, cap;
    int failed;
} mbuf;

static void mb_put(mbuf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t ncap = b->cap ? b->cap : 4096;
        while (b->len + n + 1 > ncap)
            ncap *= 2;
        char *np = realloc(b->p, ncap);
        if (!np) {
            b->failed = 1;
            return;
        }
        b->p = np;
        b->cap = ncap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void mb_str(mbuf *b, const char *s)
{
    mb_put(b, s, strlen(s));
}

static void mb_printf(mbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void mb_printf(mbuf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        b->failed = 1;
        return;
    }
    mb_put(b, tmp, (size_t)n);
}

/* Escapes for HELP text (backslash, newline) or label values (also '"'). */
static void mb_escaped(mbuf *b, const char *s, int quote)
{
    for (; *s; s++) {
        if (*s == '\\')
            mb_str(b, "\\\\");
        else if (*s == '\n')
            mb_str(b, "\\n");
        else if (quote && *s == '"')
            mb_str(b, "\\\"");
        else
            mb_put(b, s, 1);
    }
}

void metrics_format_double(double v, char *out, size_t outsz)
{
    if (isnan(v))
        snprintf(out, outsz, "NaN");
    else if (isinf(v))
        snprintf(out, outsz, "%s", v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 1e15)
        snprintf(out, outsz, "%.0f", v);
    else /* the shortest text that reads back as the same double: 0.1, not 0.10000000000000001 */
        for (int prec = 1; prec <= 17; prec++) {
            snprintf(out, outsz, "%.*g", prec, v);
            if (strtod(out, NULL) == v)
                break;
        }
}

/* {a="x",b="y"[,le="0.5"]}; nothing when there are no labels at all. */
static void mb_labels(mbuf *b, const metrics_series *s, const char *le)
{
    const metrics_family *f = s->fam;
    if (f->nlabels == 0 && !le)
        return;
    mb_str(b, "{");
    for (size_t i = 0; i < f->nlabels; i++) {
        mb_printf(b, "%s%s=\"", i ? "," : "", f->labels[i]);
        mb_escaped(b, s->values[i], 1);
        mb_str(b, "\"");
    }
    if (le)
        mb_printf(b, "%sle=\"%s\"", f->nlabels ? "," : "", le);
    mb_str(b, "}");
}

static void render_histogram(mbuf *b, const metrics_series *s)
{
    const metrics_family *f = s->fam;
    uint64_t cum = 0;
    char le[40], num[40];
    for (size_t i = 0; i <= f->nbounds; i++) {
        cum += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
        if (i < f->nbounds)
            metrics_format_double(f->bounds[i], le, sizeof(le));
        else
            snprintf(le, sizeof(le), "+Inf");
        mb_printf(b, "%s_bucket", f->name);
        mb_labels(b, s, le);
        mb_printf(b, " %llu\n", (unsigned long long)cum);
    }
    metrics_format_double(bits_to_double(atomic_load_explicit(&s->sum, memory_order_relaxed)), num,
                          sizeof(num));
    mb_printf(b, "%s_sum", f->name);
    mb_labels(b, s, NULL);
    mb_printf(b, " %s\n%s_count", num, f->name);
    mb_labels(b, s, NULL);
    mb_printf(b, " %llu\n", (unsigned long long)cum);
}

static void render_family(mbuf *b, const metrics_family *f)
{
    static const char *const types[] = {"counter", "gauge", "histogram"};
    mb_printf(b, "# HELP %s ", f->name);
    mb_escaped(b, f->help, 0);
    mb_printf(b, "\n# TYPE %s %s\n", f->name, types[f->type]);
    for (const metrics_series *s = f->head; s; s = s->next) {
        if (f->type == METRICS_HISTOGRAM) {
            render_histogram(b, s);
            continue;
        }
        char num[40];
        metrics_format_double(metrics_value(s), num, sizeof(num));
        mb_str(b, f->name);
        mb_labels(b, s, NULL);
        mb_printf(b, " %s\n", num);
    }
}

char *metrics_render(metrics_registry *r, size_t *len)
{
    /* Collectors take the registry lock themselves (series lookups), so they run first.
     * The list is only ever prepended to, so walking it without the lock is safe once
     * the head has been read under it. */
    pthread_mutex_lock(&r->mu);
    metrics_collector *c = r->collectors;
    pthread_mutex_unlock(&r->mu);
    for (; c; c = c->next)
        c->fn(c->arg);

    mbuf b = {0};
    pthread_mutex_lock(&r->mu);
    for (const metrics_family *f = r->head; f; f = f->next)
        render_family(&b, f);
    pthread_mutex_unlock(&r->mu);
    if (!b.p && !b.failed)
        mb_str(&b, "");
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    if (len)
        *len = b.len;
    return b.p;
}
