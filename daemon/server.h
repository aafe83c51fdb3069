/* Listening sockets: bind a UNIX socket path (length-checked, mode set,
 * stale file from a dead daemon replaced, live one refused) and accept. */
#ifndef DAEMON_SERVER_H
#define DAEMON_SERVER_H

#include <sys/types.h>
#include <uv.h>

#include "daemon/client.h"

struct server;

/* Returns NULL after logging a clear error. */
struct server *server_listen(uv_loop_t *loop, const char *path, mode_t mode,
                             const struct client_limits *limits);
/* Stops listening and removes the socket file. */
void server_close(struct server *srv);

#endif
