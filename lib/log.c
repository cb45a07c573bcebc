/*
 * log: key=value event lines. The level and output fd are process-wide settings made
 * once at startup (and by tests); they are atomics so worker threads read them without
 * a lock. Each line is assembled in a stack buffer and emitted with one write(2), which
 * keeps concurrent lines whole without a mutex.
 */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 4096

static atomic_int g_level = WP_LOG_INFO;
static atomic_int g_fd = -1;

void log_set_level(wp_log_level level)
{
    atomic_store(&g_level, (int)level);
}

wp_log_level log_get_level(void)
{
    return (wp_log_level)atomic_load(&g_level);
}

void log_set_fd(int fd)
{
    atomic_store(&g_fd, fd);
}

int log_level_parse(const char *s)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (s && strcasecmp(s, names[i]) == 0)
            return i;
    return -1;
}

static const char *level_name(wp_log_level level)
{
    switch (level) {
    case WP_LOG_DEBUG:
        return "debug";
    case WP_LOG_INFO:
        return "info";
    case WP_LOG_WARN:
        return "warn";
    case WP_LOG_ERROR:
        return "error";
    }
    return "info";
}

static int needs_quotes(const char *v)
{
    if (*v == '\0')
        return 1;
    for (const unsigned char *p = (const unsigned char *)v; *p; p++)
        if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || *p == 0x7f)
            return 1;
    return 0;
}

const char *log_quote(char *buf, unsigned long bufsz, const char *value)
{
    if (bufsz == 0)
        return buf;
    if (!value)
        value = "";
    if (bufsz < 3) { /* no room for a quoted "" */
        buf[0] = '\0';
        return buf;
    }
    if (!needs_quotes(value)) {
        snprintf(buf, bufsz, "%s", value);
        return buf;
    }
    size_t o = 0;
    buf[o++] = '"';
    for (const unsigned char *p = (const unsigned char *)value; *p && o + 6 < bufsz; p++) {
        if (*p == '"' || *p == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char)*p;
        } else if (*p < ' ' || *p == 0x7f) {
            o += (size_t)snprintf(buf + o, bufsz - o, "\\x%02x", *p);
        } else {
            buf[o++] = (char)*p;
        }
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

static size_t line_prefix(char *line, size_t cap, wp_log_level level, const char *event)
{
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, cap, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s event=%s",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (long)(tv.tv_usec / 1000), level_name(level), event);
    return n < 0 ? 0 : ((size_t)n >= cap ? cap - 1 : (size_t)n);
}

static void emit(char *line, size_t len)
{
    if (len >= LOG_LINE_MAX - 1)
        len = LOG_LINE_MAX - 2;
    line[len++] = '\n';
    int fd = atomic_load(&g_fd);
    if (fd < 0)
        fd = STDERR_FILENO;
    ssize_t w = write(fd, line, len);
    (void)w; /* nowhere left to report a failed log write */
}

void log_kv(wp_log_level level, const char *event, ...)
{
    if ((int)level < atomic_load(&g_level))
        return;
    char line[LOG_LINE_MAX];
    char q[1024];
    size_t len = line_prefix(line, sizeof(line), level, event);
    va_list ap;
    va_start(ap, event);
    const char *key;
    while ((key = va_arg(ap, const char *)) != NULL) {
        const char *val = va_arg(ap, const char *);
        int n =
            snprintf(line + len, sizeof(line) - len, " %s=%s", key, log_quote(q, sizeof(q), val));
        if (n < 0 || (size_t)n >= sizeof(line) - len) {
            len = sizeof(line) - 2;
            break;
        }
        len += (size_t)n;
    }
    va_end(ap);
    emit(line, len);
}

void log_fmt(wp_log_level level, const char *event, const char *fmt, ...)
{
    if ((int)level < atomic_load(&g_level))
        return;
    char line[LOG_LINE_MAX];
    size_t len = line_prefix(line, sizeof(line), level, event);
    if (fmt && *fmt && len < sizeof(line) - 2) {
        line[len++] = ' ';
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(line + len, sizeof(line) - len, fmt, ap);
        va_end(ap);
        if (n > 0)
            len += (size_t)n >= sizeof(line) - len ? sizeof(line) - len - 1 : (size_t)n;
    }
    emit(line, len);
}
