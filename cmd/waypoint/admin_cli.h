/* admin_cli: `waypoint sessions` / `waypoint kill` (argv[0] is the subcommand). */
#ifndef WP_ADMIN_CLI_H
#define WP_ADMIN_CLI_H

int admin_cli_main(int argc, char **argv);

#endif
