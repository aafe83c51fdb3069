/* One connected QMP client: its socket, its QMP session and its bounded
 * output queue. Clients are owned by daemon/client.c and freed from the
 * loop after uv_close, never under a caller's feet. */
#ifndef DAEMON_CLIENT_H
#define DAEMON_CLIENT_H

#include <stddef.h>
#include <uv.h>

struct client_limits {
    size_t max_msg_bytes; /* one JSON message, input */
    size_t max_queue;     /* unsent output bytes before disconnect */
};

/* Takes an accepted connection from `server` and starts serving it: sends
 * the greeting, reads requests. Returns 0 or a negative libuv error. */
int client_accept(uv_stream_t *server, const struct client_limits *limits);
/* Appends one encoded event line to every negotiated client. */
void client_broadcast(const char *line, size_t len);
/* Closes every client without telling it anything. */
void client_close_all(void);
size_t client_count(void);
/* Set by a client's `quit`; the daemon installs it. */
extern void (*client_quit_hook)(void);

#endif
