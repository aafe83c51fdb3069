/* The event sink the daemon installs in protocol/: every encoded event goes
 * to every negotiated client, and the events that matter to an operator
 * (job start, finish, error) also become one log line each and refresh the
 * service manager's STATUS. */
#ifndef DAEMON_EVENTS_H
#define DAEMON_EVENTS_H

#include <stddef.h>

/* A qmp_event_sink: broadcasts `line` (one encoded event ending in CR LF),
 * then logs it if it is a job event. */
void events_sink(void *opaque, const char *line, size_t len);

#endif
