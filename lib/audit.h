/*
 * audit: the JSON-lines audit file ([audit] file).
 *
 * One JSON object per line, appended with one write(2) per record (O_APPEND, so lines
 * from concurrent sessions never interleave). audit_reopen() closes and opens the path
 * again, for logrotate's SIGHUP. A failed write is returned to the caller, which counts
 * and logs it (obs.c): a record is never dropped without a trace.
 */
#ifndef WP_AUDIT_H
#define WP_AUDIT_H

#include <jansson.h>
#include <stddef.h>

typedef struct audit_log audit_log;

audit_log *audit_new(void);
void audit_free(audit_log *a);

/* Opens path (created 0600 when missing; never through a symlink) in place of the
 * current file; NULL closes the audit file. On failure the old file stays open; why
 * goes to err. 0 on success. */
int audit_set_path(audit_log *a, const char *path, char *err, size_t errsz);
/* Opens the current path again (log rotation). 0 on success or when disabled. */
int audit_reopen(audit_log *a, char *err, size_t errsz);
int audit_enabled(audit_log *a);

/* Appends rec as one line. 0 written, 1 audit disabled, -1 failed (why in err). */
int audit_write(audit_log *a, const json_t *rec, char *err, size_t errsz);

#endif
