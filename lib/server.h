/*
 * server: the process-wide run loop (listeners, signals, reload, drain).
 *
 * srv_run() owns everything that lives for the whole process: the current config
 * snapshot (swapped on SIGHUP: config_path is loaded again and, if valid, new connections
 * use the new snapshot while running workers keep theirs), one listener per
 * [[listeners]] entry, the shared objects reached through a context (admin connection
 * pool, certificate cache, cancel-key map), and the SIGTERM/SIGINT drain bounded by
 * [server] drain_timeout. It logs through log.h; it never prints the config's secrets.
 */
#ifndef WP_SERVER_H
#define WP_SERVER_H

#include "config.h"

/* Runs the proxy until SIGTERM/SIGINT and the drain complete. Takes over the caller's
 * reference to cfg (already loaded and validated from config_path; warnings already
 * reported). Returns the process exit code: 0 after a clean shutdown, 1 when startup
 * fails (cannot bind, admin login refused, ...). */
int srv_run(const char *config_path, wp_config *cfg);

#endif
