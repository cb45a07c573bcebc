/*
 * libFuzzer target for the SCRAM client's server-message parsers. The input is
 * "<server-first>\0<server-final>": the client (fixed nonce "fuzznonce") consumes the
 * first part; if that succeeds, the rest goes to the server-final verifier.
 *
 * Iteration counts in (64, SCRAM_ITER_MAX] are skipped: they are valid and only make
 * PBKDF2 slow, which would starve the fuzzer. Counts above the maximum still run, since
 * refusing them is the parser's job.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "scram.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int slow_iterations(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i + 2 < n; i++) {
        if (p[i] != 'i' || p[i + 1] != '=')
            continue;
        unsigned long v = 0;
        size_t j = i + 2;
        for (; j < n && j < i + 12 && p[j] >= '0' && p[j] <= '9'; j++)
            v = v * 10 + (p[j] - '0');
        if (v > 64 && v <= SCRAM_ITER_MAX)
            return 1;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *sep = memchr(data, '\0', size);
    size_t first_len = sep ? (size_t)(sep - data) : size;
    if (slow_iterations(data, first_len))
        return 0;
    scram_client *c = scram_client_new("pencil", NULL, 0, "fuzznonce");
    if (!c)
        abort();
    char *first = NULL, *final = NULL;
    size_t n = 0;
    wp_error err;
    if (scram_client_first(c, &first, &n) != WP_OK)
        abort();
    free(first);
    wp_status st = scram_client_final(c, (const char *)data, first_len, &final, &n, &err);
    if (st == WP_OK) {
        free(final);
        if (sep) {
            size_t rest = size - first_len - 1;
            st = scram_client_verify(c, (const char *)sep + 1, rest, &err);
            if (st == WP_OK)
                abort(); /* forging the server signature must not be possible */
        }
    } else if (!wp_error_isset(&err)) {
        abort();
    }
    scram_client_free(c);
    return 0;
}
