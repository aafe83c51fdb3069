/* The service manager's notification protocol (sd_notify(3)) without
 * libsystemd: one datagram per message to $NOTIFY_SOCKET, plus watchdog
 * pings when $WATCHDOG_USEC asks for them. Everything is a no-op when the
 * daemon was not started by a service manager. */
#ifndef DAEMON_NOTIFY_H
#define DAEMON_NOTIFY_H

#include <uv.h>

/* Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (and unsets them, so
 * nothing else answers for us). Starts the watchdog timer on `loop` when one
 * is requested. Returns 0, or -errno when NOTIFY_SOCKET is malformed (the
 * daemon logs it and carries on). */
int notify_init(uv_loop_t *loop);
/* Sends one message such as "READY=1" (newline-separated assignments).
 * Returns 0 or -errno; 0 when there is no notify socket. */
int notify_send(const char *msg);
/* Recomputes "STATUS=..." (jobs and clients) and sends it if it changed
 * since the last one. Cheap; call it whenever a job or client comes or
 * goes. */
void notify_status_update(void);
/* Daemon is stopping: sends STOPPING=1 and a last STATUS, and stops the
 * watchdog timer (the handle is closed). */
void notify_stopping(const char *why);

#endif
