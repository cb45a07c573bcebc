/*
 * metrics: a small Prometheus registry and text-format (0.0.4) formatter.
 *
 * Debian has no C Prometheus client, so this is the least that Waypoint needs: counter,
 * gauge and histogram families with a fixed set of label names, series created on first
 * use, values updated with atomics and written out by metrics_render(). The registry is
 * an object the caller owns (the server hangs it off its context); nothing is global.
 *
 * Bounded by construction: a family holds at most METRICS_SERIES_MAX series; past that,
 * metrics_series_get() returns NULL and every update function accepts NULL as a no-op,
 * so a caller can never grow memory without bound through label values.
 */
#ifndef WP_METRICS_H
#define WP_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define METRICS_LABELS_MAX 3
#define METRICS_BUCKETS_MAX 20
#define METRICS_SERIES_MAX 512
#define METRICS_VALUE_MAX 128 /* longest label value kept (longer ones are cut) */

typedef enum { METRICS_COUNTER = 0, METRICS_GAUGE, METRICS_HISTOGRAM } metrics_type;

typedef struct metrics_registry metrics_registry;
typedef struct metrics_family metrics_family;
typedef struct metrics_series metrics_series;

/* Run by metrics_render() before it writes anything: refreshes gauges whose value lives
 * elsewhere (pool sizes, ...). */
typedef void (*metrics_collect_fn)(void *arg);

metrics_registry *metrics_new(void);
void metrics_free(metrics_registry *r);

/* labels: NULL-terminated names (at most METRICS_LABELS_MAX), or NULL for none.
 * buckets: histogram upper bounds, strictly increasing, without +Inf. Returns NULL on a
 * bad name, a bad bucket list or no memory. */
metrics_family *metrics_family_add(metrics_registry *r, metrics_type type, const char *name,
                                   const char *help, const char *const *labels,
                                   const double *buckets, size_t nbuckets);

/* The series for these label values (one per label name, in order), created on first
 * use. NULL when the family is full or memory ran out. */
metrics_series *metrics_series_get(metrics_family *f, const char *const *values);

void metrics_inc(metrics_series *s, uint64_t n);   /* counter */
void metrics_set(metrics_series *s, double v);     /* gauge */
void metrics_add(metrics_series *s, double delta); /* gauge */
void metrics_observe(metrics_series *s, double v); /* histogram */
/* Sets every gauge series of f to 0 (before a collector sets the current ones). */
void metrics_family_zero(metrics_family *f);

/* Reads for tests and for callers that need a value back. */
double metrics_value(const metrics_series *s); /* counter or gauge */
uint64_t metrics_hist_count(const metrics_series *s);

int metrics_collector_add(metrics_registry *r, metrics_collect_fn fn, void *arg);

/* The whole exposition, NUL-terminated, malloc'd (caller frees); NULL without memory. */
char *metrics_render(metrics_registry *r, size_t *len);

/* Exposed for tests: name checks and value formatting as the text format wants them. */
int metrics_name_valid(const char *name);
int metrics_label_valid(const char *name);
void metrics_format_double(double v, char *out, size_t outsz);

#endif
