/* Listening sockets: bind a UNIX socket path (length-checked, mode and group
 * set before anyone can connect, stale file from a dead daemon replaced, live
 * one refused) or adopt sockets passed by the service manager (LISTEN_FDS),
 * and accept connections on them. */
#ifndef DAEMON_SERVER_H
#define DAEMON_SERVER_H

#include <stdbool.h>
#include <sys/types.h>
#include <uv.h>

#include "daemon/client.h"

struct server;

/* How a bound socket file is created. */
struct server_file_opts {
    mode_t mode;
    gid_t gid; /* (gid_t)-1: leave the group alone */
};

/* Binds `path` and listens. `limits` is copied; its allow list must stay
 * valid while the server lives. Returns NULL after logging a clear error. */
struct server *server_listen(uv_loop_t *loop, const char *path,
                             const struct server_file_opts *file,
                             const struct client_limits *limits);
/* Serves an inherited listening socket. Returns NULL after logging. The
 * socket file (if any) belongs to whoever passed it and is left alone. */
struct server *server_adopt(uv_loop_t *loop, int fd, const char *name,
                            const struct client_limits *limits);
/* Stops listening and removes the socket file if we created it. */
void server_close(struct server *srv);

/* Socket activation (sd_listen_fds(3) without libsystemd): when LISTEN_PID
 * is our pid, returns the number of passed descriptors (starting at fd 3),
 * checks that each is a listening AF_UNIX stream socket, marks them
 * close-on-exec, stores their names (LISTEN_FDNAMES, "" when absent) in
 * `names` (at most `max`), and unsets the variables. Returns 0 when nothing
 * was passed, -errno after logging when what was passed is unusable. */
int server_listen_fds(char **names, int max);

#endif
