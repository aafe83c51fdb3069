/* One connected QMP client: its socket, its QMP session and its bounded
 * output queue. Clients are owned by daemon/client.c and freed from the
 * loop after uv_close, never under a caller's feet. */
#ifndef DAEMON_CLIENT_H
#define DAEMON_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <uv.h>

/* What a client asks of the daemon, wired by the daemon (main.c) through
 * the limits a socket's clients get, not a global. Any may be NULL. */
struct client_hooks {
    void (*quit)(void *opaque);    /* a client executed `quit` */
    void (*changed)(void *opaque); /* a client connected or went away */
    void *opaque;
};

struct client_limits {
    size_t max_msg_bytes; /* one JSON message, input */
    size_t max_queue;     /* unsent output bytes before disconnect */
    bool readonly;        /* only query-* commands (monitoring sockets) */
    /* Peers allowed in by SO_PEERCRED: root, our own uid and these. An
     * empty list allows every peer that could open the socket. */
    const uid_t *allow_uids;
    size_t n_allow_uids;
    const char *where; /* the socket's name, for log lines (borrowed) */
    /* NULL: none; borrowed, must outlive every client. */
    const struct client_hooks *hooks;
};

/* Takes an accepted connection from `server` and starts serving it: checks
 * the peer's credentials (a refused peer gets one error line and is
 * closed), sends the greeting, reads requests. Returns 0 or a negative
 * libuv error. */
int client_accept(uv_stream_t *server, const struct client_limits *limits);
/* Appends one encoded event line to every negotiated client. */
void client_broadcast(const char *line, size_t len);
/* Stops reading requests from every client (daemon shutdown); queued
 * output, and events emitted later, still go out. */
void client_stop_input_all(void);
/* Closes every client once its queued output is written, or after
 * `timeout_ms` for clients that do not read; then calls cb(opaque) from the
 * loop once no client is left. */
void client_close_all_flushed(unsigned timeout_ms, void (*cb)(void *opaque),
                              void *opaque);
/* Closes every client without telling it anything. */
void client_close_all(void);
size_t client_count(void);

#endif
