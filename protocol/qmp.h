/* QMP: sessions (one per connection), the command table, and events.
 *
 * One source of truth: every command and event is declared in QAPI syntax
 * through qmp_schema_add(); the dispatcher validates arguments against that
 * declaration before a handler runs, and query-qmp-schema is generated from
 * it. Handlers are bound to declared commands with qmp_command_register().
 */
#ifndef PROTOCOL_QMP_H
#define PROTOCOL_QMP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "protocol/error.h"

struct qmp_session;

/* A command handler. `args` is the validated argument object (an empty
 * object when the request had none; borrowed). Returns the "return" value
 * (new reference), or NULL with `err` set. Runs on the loop; never blocks. */
typedef json_t *qmp_command_fn(json_t *args, struct qmp_session *s,
                               struct qmp_error *err);

/* Adds QAPI definitions: a JSON array (single quotes allowed) of
 *   {'enum': N, 'data': [...]}
 *   {'struct': N, 'data': {M: T, '*optional': T, ...}, 'base': B}
 *   {'union': N, 'base': B or {...}, 'discriminator': M, 'data': {V: T}}
 *   {'alternate': N, 'data': {A: T, ...}}
 *   {'command': N, 'data': {...} or T, 'boxed': true, 'returns': T}
 *   {'event': N, 'data': {...} or T}
 * where T is a builtin (str, int, int64, uint64, size, number, bool, any,
 * null), a defined name or [T]. Aborts on a malformed declaration (a bug). */
void qmp_schema_add(const char *qapi);

/* Binds a handler to a declared command. */
void qmp_command_register(const char *name, qmp_command_fn *fn);

/* The query-version result: qemu triple and package string. */
void qmp_set_version(int major, int minor, int micro, const char *package);

/* Events. The sink receives one encoded line (with CR LF) per event and
 * appends it to every negotiated client. */
typedef void qmp_event_sink(void *opaque, const char *line, size_t len);
void qmp_event_set_sink(qmp_event_sink *sink, void *opaque);
/* Emits an event now: stamped once with the wall clock, encoded once.
 * Steals `data` (may be NULL: no data member). */
void qmp_event_emit(const char *name, json_t *data);
/* Test hook: a clock returning microseconds since the epoch (NULL: real). */
void qmp_event_set_clock(int64_t (*clock_us)(void));

/* Sessions. */
struct qmp_session_ops {
    /* Sends one encoded line (ends with CR LF). */
    void (*send)(void *opaque, const char *line, size_t len);
    /* `quit` was executed (after its reply was sent). */
    void (*quit)(void *opaque);
    /* A deferred reply went out and queued input was processed: the
     * caller may read from the client again (optional). */
    void (*resume)(void *opaque);
    /* The session had its turn (a bounded number of requests or bytes of
     * replies) and holds more input: the owner should stop reading and
     * call qmp_session_continue() from a later loop iteration, so other
     * clients are served in between (optional). */
    void (*yield)(void *opaque);
};
struct qmp_session *qmp_session_new(const struct qmp_session_ops *ops,
                                    void *opaque, size_t max_msg_bytes);
/* Sends the greeting. */
void qmp_session_greet(struct qmp_session *s);
/* Feeds bytes read from the client; replies go out through ops->send. */
void qmp_session_feed(struct qmp_session *s, const char *buf, size_t len);
/* Stops processing input for good (the client is going away). */
void qmp_session_stop(struct qmp_session *s);
bool qmp_session_negotiated(const struct qmp_session *s);
/* A read-only session (monitoring sockets) runs only qmp_capabilities and
 * query-* commands; every other existing command gets a GenericError. */
void qmp_session_set_readonly(struct qmp_session *s, bool readonly);
/* Bytes held for an incomplete message. */
size_t qmp_session_pending(const struct qmp_session *s);
void qmp_session_free(struct qmp_session *s);

/* Deferred replies, for commands whose effects (and events) must all be
 * out before the reply but need asynchronous work. A handler calls
 * qmp_session_defer() and returns NULL without setting `err`; later the
 * work's callback calls qmp_deferred_reply() exactly once. Meanwhile the
 * session processes no further request of this client (commands run in
 * order): input already read is queued, and qmp_session_busy() tells the
 * caller to stop reading. If the client went away, the reply is dropped. */
struct qmp_deferred;
struct qmp_deferred *qmp_session_defer(struct qmp_session *s);
/* Steals `ret`; `err` (may be NULL) is used when ret is NULL and cleared. */
void qmp_deferred_reply(struct qmp_deferred *d, json_t *ret,
                        struct qmp_error *err);
bool qmp_session_busy(const struct qmp_session *s);
/* Starts the session's next turn after a yield (see ops->yield). */
void qmp_session_continue(struct qmp_session *s);

/* Registers qmp_capabilities, query-version, query-commands,
 * query-qmp-schema and quit. */
void qmp_core_init(void);
/* Drops every declaration and handler (tests). */
void qmp_reset(void);

#endif
