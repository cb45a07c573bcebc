/*
 * upstop: end a backend session on Waypoint's authority (the `waypoint kill` path).
 *
 * Design. The backend must be gone before the client hears that its session ended, so
 * nothing the client sent can still commit afterwards: first a CancelRequest (stops a
 * statement in flight; its implicit transaction rolls back), then Terminate on the
 * session's own connection, then read and discard until the backend closes the socket.
 * PostgreSQL closes it only when the backend process exits, after it has left
 * pg_stat_activity and rolled back any open transaction, so EOF is the proof.
 *
 * This is the small, separate hook of issue 13; the revoke work (issue 10) brings the
 * admin-side pg_terminate_backend + wait-for-pid step, which does not depend on the
 * backend reading its socket. At merge, up_stop_backend() is the one place to switch.
 */
#include "upstop.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>

#include "pgwire.h"

wp_status up_stop_backend(up_conn *up, const up_stop_target *t, int64_t deadline_ms)
{
    if (t->backend_pid)
        (void)up_send_cancel(t->host, t->port, t->backend_pid, t->backend_key, t->backend_key_len,
                             deadline_ms);
    static const unsigned char terminate[5] = {PGW_MSG_TERMINATE, 0, 0, 0, 4};
    (void)io_write_all(&up->io, terminate, sizeof(terminate), deadline_ms);
    io_shutdown(&up->io);
    shutdown(up->fd, SHUT_WR);
    unsigned char sink[4096];
    for (;;) {
        if (io_pending(&up->io) == 0 && io_wait_fd(up->fd, POLLIN, deadline_ms) != WP_OK)
            return WP_ERR_TIMEOUT;
        ssize_t r = up->io.ops->read(&up->io, sink, sizeof(sink));
        if (r == 0)
            return WP_OK;
        if (r < 0 && errno != EAGAIN && errno != EINTR)
            return WP_OK; /* reset by the exiting backend: gone as well */
    }
}
