/* JSON the way QEMU's QMP reads and writes it.
 *
 * Input: a byte stream of JSON values (QEMU's lexer: single-quoted strings
 * accepted, duplicate keys refused, a top-level number complete only when a
 * delimiter follows), framed into complete top-level values with QEMU's
 * limits. Output: compact text with ", " and ": " separators, ASCII only
 * (upper-case \uXXXX escapes, surrogate pairs beyond the BMP, DEL escaped),
 * reals printed with "%.17g", members in insertion order.
 */
#ifndef PROTOCOL_JSON_H
#define PROTOCOL_JSON_H

#include <jansson.h>
#include <stddef.h>

#define QMP_JSON_MAX_NESTING 1024
#define QMP_JSON_MAX_TOKENS  2097152
/* blockjobd's per-message bound (QEMU's is 64 MiB). */
#define QMP_JSON_DEFAULT_BYTES (1024 * 1024)

struct qmp_stream;

/* Called once per complete top-level value (value != NULL, ownership passes
 * to the callee) or once per error (value == NULL, errdesc is QEMU's text,
 * e.g. "JSON parse error, expecting value"; borrowed). */
typedef void qmp_stream_cb(void *opaque, json_t *value, const char *errdesc);

/* max_bytes: bound on one message's size in bytes; beyond it the message is
 * dropped with "JSON token size limit exceeded" and framing resyncs. */
struct qmp_stream *qmp_stream_new(size_t max_bytes, qmp_stream_cb *cb,
                                  void *opaque);
/* Feeds bytes; calls cb synchronously for every value completed by them.
 * cb may call qmp_stream_stop() to make feed return early (e.g. the client
 * is being closed); the remaining bytes are discarded. */
void qmp_stream_feed(struct qmp_stream *s, const char *buf, size_t len);
void qmp_stream_stop(struct qmp_stream *s);
/* Bytes held for an incomplete message (for memory accounting). */
size_t qmp_stream_pending(const struct qmp_stream *s);
void qmp_stream_free(struct qmp_stream *s);

/* Parses exactly one JSON value from a NUL-terminated text with the same
 * lexer rules (single quotes allowed). Returns a new reference, or NULL with
 * *errdesc set to a static error text. */
json_t *qmp_json_parse(const char *text, const char **errdesc);

/* Encodes a value QEMU's way (no trailing newline). Returns a malloc'd,
 * NUL-terminated string; *len (if not NULL) gets its length. */
char *qmp_json_encode(const json_t *value, size_t *len);
/* Same, but object members come out in the order QEMU's QDict iterates
 * them (512 hash buckets in order, newest first within a bucket) whatever
 * the insertion order: that is the order of every object on qsd's wire,
 * echoed client ids included. */
char *qmp_json_encode_qdict(const json_t *value, size_t *len);
/* The keys of an object in that same QDict order: a malloc'd array of *n
 * borrowed keys (NULL when the object is empty). QEMU checks a request's
 * members in this order, so it decides which error is reported first. */
const char **qmp_json_qdict_keys(const json_t *obj, size_t *n);

#endif
