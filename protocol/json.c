/* Temporary JSON implementation: defines the json.h API on top of jansson so
 * that other modules link; replaced by a QEMU-compatible lexer/streamer. */
#include "protocol/json.h"

#include <stdlib.h>
#include <string.h>

struct qmp_stream {
    size_t max_bytes;
    qmp_stream_cb *cb;
    void *opaque;
    int stopped;
};

struct qmp_stream *qmp_stream_new(size_t max_bytes, qmp_stream_cb *cb,
                                  void *opaque)
{
    struct qmp_stream *s = calloc(1, sizeof(*s));

    if (!s) {
        return NULL;
    }
    s->max_bytes = max_bytes;
    s->cb = cb;
    s->opaque = opaque;
    return s;
}

void qmp_stream_feed(struct qmp_stream *s, const char *buf, size_t len)
{
    json_error_t err;
    json_t *v;

    s->stopped = 0;
    v = json_loadb(buf, len, JSON_DISABLE_EOF_CHECK, &err);
    if (v) {
        s->cb(s->opaque, v, NULL);
    } else {
        s->cb(s->opaque, NULL, "JSON parse error, expecting value");
    }
}

void qmp_stream_stop(struct qmp_stream *s)
{
    s->stopped = 1;
}

size_t qmp_stream_pending(const struct qmp_stream *s)
{
    (void)s;
    return 0;
}

void qmp_stream_free(struct qmp_stream *s)
{
    free(s);
}

json_t *qmp_json_parse(const char *text, const char **errdesc)
{
    json_error_t err;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &err);

    if (!v && errdesc) {
        *errdesc = "JSON parse error, expecting value";
    }
    return v;
}

char *qmp_json_encode(const json_t *value, size_t *len)
{
    char *out = json_dumps(value, JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);

    if (out && len) {
        *len = strlen(out);
    }
    return out;
}
