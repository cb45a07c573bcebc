/*
 * libFuzzer target for pgw_parse_startup: the body of a client's first packet (what
 * follows the 4-byte length). Anything may come back except a crash, a leak, or a
 * success that breaks the parser's promises (checked below).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pgwire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pgw_startup s;
    wp_error err;
    wp_status st = pgw_parse_startup(data, size, &s, &err);
    if (st != WP_OK) {
        if (!wp_error_isset(&err))
            abort(); /* every refusal must say why */
        return 0;
    }
    if (s.kind == PGW_START_STARTUP) {
        if (!pgw_startup_get(&s, "user"))
            abort();
        for (size_t i = 0; i < s.nparams; i++)
            if (strncmp(s.params[i].key, "_pq_.", 5) == 0 || s.params[i].key[0] == '\0')
                abort();
    }
    if (s.kind == PGW_START_CANCEL && (s.cancel_key_len < 4 || s.cancel_key_len > 256))
        abort();
    pgw_startup_free(&s);
    return 0;
}
