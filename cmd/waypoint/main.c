/*
 * waypoint: command-line entry point. Placeholder until the CLI lands (issue 2).
 */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "-version") == 0) {
        printf("waypoint %s\n", WP_VERSION);
        return 0;
    }
    fprintf(stderr, "usage: waypoint -version\n");
    return 2;
}
