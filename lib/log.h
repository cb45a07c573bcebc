/*
 * log: one line per event on stderr, as key=value pairs.
 *
 *   ts=2026-11-25T10:00:00.123Z level=info event=conn_end user=alice@example.com ...
 *
 * log_kv() takes NULL-terminated (key, value) string pairs and quotes values that need
 * it, so callers never hand-build quoting. Each line is written with a single write(2),
 * so lines from concurrent worker threads never interleave. Secrets never go through
 * here: callers pass identities, names and counts, never passwords or grant documents.
 */
#ifndef WP_LOG_H
#define WP_LOG_H

typedef enum { WP_LOG_DEBUG = 0, WP_LOG_INFO, WP_LOG_WARN, WP_LOG_ERROR } wp_log_level;

void log_set_level(wp_log_level level);
wp_log_level log_get_level(void);
/* Redirect output (tests). fd < 0 restores stderr. */
void log_set_fd(int fd);
/* Parses "debug", "info", "warn", "error"; returns -1 when unknown. */
int log_level_parse(const char *s);

/* log_kv(WP_LOG_INFO, "conn_end", "user", login, "bytes_in", buf, (char *)NULL); */
void log_kv(wp_log_level level, const char *event, ...) __attribute__((sentinel));

/* printf-style tail after "event=..."; the caller must quote values (log_quote). */
void log_fmt(wp_log_level level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes value into buf, quoted and escaped if it has spaces, quotes, '=' or control
 * bytes; returns buf. Truncates safely. */
const char *log_quote(char *buf, unsigned long bufsz, const char *value);

#endif
