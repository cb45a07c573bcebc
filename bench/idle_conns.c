/*
 * idle_conns: opens N authenticated libpq connections from the environment's PG*
 * settings, prints "ready N" and holds them until stdin closes. The benchmark reads the
 * proxy's RSS while they are idle.
 */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1;
    if (n <= 0)
        return 2;
    PGconn **conns = calloc((size_t)n, sizeof(*conns));
    if (!conns)
        return 1;
    for (int i = 0; i < n; i++) {
        conns[i] = PQconnectdb("");
        if (PQstatus(conns[i]) != CONNECTION_OK) {
            fprintf(stderr, "connection %d failed: %s", i, PQerrorMessage(conns[i]));
            return 1;
        }
    }
    printf("ready %d\n", n);
    fflush(stdout);
    char buf[64];
    while (fgets(buf, sizeof(buf), stdin))
        ;
    for (int i = 0; i < n; i++)
        PQfinish(conns[i]);
    free(conns);
    return 0;
}
