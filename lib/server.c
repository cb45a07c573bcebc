/*
 * server: TEMPORARY stub so the CLI links and -check-config works. The real run loop
 * (listeners, signals, reload, drain; see server.h) replaces this file.
 */
#include "server.h"

#include "log.h"

int srv_run(const char *config_path, wp_config *cfg)
{
    log_kv(WP_LOG_ERROR, "server_not_implemented", "config", config_path, "msg",
           "server not implemented yet", (char *)NULL);
    cfg_unref(cfg);
    return 1;
}
