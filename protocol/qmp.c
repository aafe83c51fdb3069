/* QMP sessions and dispatch, as QEMU's monitor does it: greeting,
 * capabilities negotiation, message shape checks, argument validation
 * against the schema, replies with the request's id, and events. */
#include "protocol/qmp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "protocol/json.h"
#include "protocol/schema.h"

/* Input that arrived while a reply was deferred: values or parse errors,
 * replayed in order once the reply is out. */
struct held {
    json_t *value;
    char *errdesc;
    struct held *next;
};

struct qmp_deferred {
    struct qmp_session *s; /* NULL once the session is gone */
    json_t *id;
};

struct qmp_session {
    const struct qmp_session_ops *ops;
    void *opaque;
    struct qmp_stream *stream;
    bool negotiated;
    bool oob;
    bool stopped;
    bool quit_requested;
    bool readonly;
    struct qmp_deferred *deferred; /* the reply being waited for */
    bool deferring;                /* set by qmp_session_defer() */
    struct held *held, **held_tail;
    /* Round-robin between clients: one turn runs at most TURN_REQUESTS
     * requests or produces TURN_BYTES of replies; the rest waits in `held`
     * until the owner calls qmp_session_continue() on a later loop turn. */
    unsigned turn_requests;
    size_t turn_bytes;
    bool yielded;
};

#define TURN_REQUESTS 16
#define TURN_BYTES    (256 * 1024)

struct handler {
    char *name;
    qmp_command_fn *fn;
};

static struct handler *handlers;
static size_t n_handlers;

static struct {
    int major, minor, micro;
    char *package;
} version = {7, 2, 22, NULL};

static qmp_event_sink *event_sink;
static void *event_sink_opaque;
static int64_t (*event_clock)(void);

void qmp_schema_add(const char *qapi)
{
    schema_add(qapi);
}

void qmp_command_register(const char *name, qmp_command_fn *fn)
{
    struct handler *h = realloc(handlers, (n_handlers + 1) * sizeof(*h));

    if (!h || !(h[n_handlers].name = strdup(name))) {
        abort();
    }
    h[n_handlers].fn = fn;
    handlers = h;
    n_handlers++;
}

static qmp_command_fn *find_handler(const char *name)
{
    for (size_t i = 0; i < n_handlers; i++) {
        if (!strcmp(handlers[i].name, name)) {
            return handlers[i].fn;
        }
    }
    return NULL;
}

void qmp_reset(void)
{
    for (size_t i = 0; i < n_handlers; i++) {
        free(handlers[i].name);
    }
    free(handlers);
    handlers = NULL;
    n_handlers = 0;
    schema_reset();
    free(version.package);
    version.package = NULL;
}

void qmp_set_version(int major, int minor, int micro, const char *package)
{
    version.major = major;
    version.minor = minor;
    version.micro = micro;
    free(version.package);
    version.package = package ? strdup(package) : NULL;
}

static json_t *version_info(void)
{
    return json_pack("{s:{s:i, s:i, s:i}, s:s}", "qemu", "micro", version.micro,
                     "minor", version.minor, "major", version.major, "package",
                     version.package ? version.package : "");
}

/* ---- output ------------------------------------------------------------ */

/* Hands one line (CR LF appended) to the session's sender. */
static void send_line(struct qmp_session *s, const char *parts[], size_t n)
{
    size_t len = 0, off = 0;
    char *line;

    for (size_t i = 0; i < n; i++) {
        len += strlen(parts[i]);
    }
    line = malloc(len + 3);
    if (!line) {
        abort();
    }
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(parts[i]);
        memcpy(line + off, parts[i], l);
        off += l;
    }
    memcpy(line + off, "\r\n", 3);
    s->turn_bytes += len + 2;
    s->ops->send(s->opaque, line, len + 2);
    free(line);
}

/* Encodes a message and sends it; steals `msg`. */
static void send_value(struct qmp_session *s, json_t *msg)
{
    char *text = qmp_json_encode(msg, NULL);
    const char *parts[] = {text};

    send_line(s, parts, 1);
    free(text);
    json_decref(msg);
}

/* Replies are {"return": R, "id": I} and {"id": I, "error": E}, as qsd
 * prints them. Our own objects keep their insertion order; a client's id is
 * echoed in the member order QEMU's QDict gives it. */
static void send_return(struct qmp_session *s, json_t *id, json_t *ret)
{
    char *r = qmp_json_encode(ret, NULL);
    char *i = id ? qmp_json_encode_qdict(id, NULL) : NULL;
    const char *parts[] = {"{\"return\": ", r, i ? ", \"id\": " : "",
                           i ? i : "", "}"};

    send_line(s, parts, 5);
    free(r);
    free(i);
    json_decref(ret);
}

static void send_error(struct qmp_session *s, json_t *id,
                       const struct qmp_error *err)
{
    const char *desc = err->desc ? err->desc : "";
    /* The text may quote client strings: store it unchecked. */
    json_t *e = json_object();
    char *etext, *i;

    json_object_set_new(e, "class",
                        json_string(qmp_error_class_name(err->cls)));
    json_object_set_new(e, "desc", json_stringn_nocheck(desc, strlen(desc)));
    etext = qmp_json_encode(e, NULL);
    i = id ? qmp_json_encode_qdict(id, NULL) : NULL;
    {
        const char *parts[] = {"{",
                               i ? "\"id\": " : "",
                               i ? i : "",
                               i ? ", " : "",
                               "\"error\": ",
                               etext,
                               "}"};
        send_line(s, parts, 7);
    }
    free(etext);
    free(i);
    json_decref(e);
}

static void send_error_text(struct qmp_session *s, json_t *id, const char *desc)
{
    struct qmp_error err = QMP_ERROR_INIT;

    qmp_error_setg(&err, "%s", desc);
    send_error(s, id, &err);
    qmp_error_clear(&err);
}

/* ---- events -------------------------------------------------------------- */

void qmp_event_set_sink(qmp_event_sink *sink, void *opaque)
{
    event_sink = sink;
    event_sink_opaque = opaque;
}

void qmp_event_set_clock(int64_t (*clock_us)(void))
{
    event_clock = clock_us;
}

static int64_t wall_clock_us(void)
{
    struct timeval tv;

    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

void qmp_event_emit(const char *name, json_t *data)
{
    int64_t now = event_clock ? event_clock() : wall_clock_us();
    json_t *msg;
    size_t len;
    char *text, *line;

    msg = json_pack("{s:{s:I, s:I}, s:s}", "timestamp", "seconds",
                    (json_int_t)(now / 1000000), "microseconds",
                    (json_int_t)(now % 1000000), "event", name);
    if (data) {
        json_object_set_new(msg, "data", data);
    }
    text = qmp_json_encode(msg, &len);
    json_decref(msg);
    line = realloc(text, len + 3);
    if (!line) {
        abort();
    }
    memcpy(line + len, "\r\n", 3);
    if (event_sink) {
        event_sink(event_sink_opaque, line, len + 2);
    }
    free(line);
}

/* ---- dispatch ------------------------------------------------------------ */

/* QEMU's check of a request's members; returns the command name or NULL
 * with `err` set. */
static const char *check_request(struct qmp_session *s, json_t *req,
                                 bool *is_oob, struct qmp_error *err)
{
    const char *exec_key = NULL, *command = NULL;
    size_t n;
    /* QEMU walks the members in its QDict's order: with several faults,
     * that order decides which one is reported. */
    const char **keys = qmp_json_qdict_keys(req, &n);

    for (size_t i = 0; i < n; i++) {
        const char *key = keys[i];
        json_t *val = json_object_get(req, key);

        if (!strcmp(key, "execute") || (!strcmp(key, "exec-oob") && s->oob)) {
            if (!json_is_string(val)) {
                qmp_error_setg(err, "QMP input member '%s' must be a string",
                               key);
                goto fail;
            }
            if (exec_key) {
                qmp_error_setg(err, "QMP input member '%s' clashes with '%s'",
                               key, exec_key);
                goto fail;
            }
            exec_key = key;
            command = json_string_value(val);
        } else if (!strcmp(key, "arguments")) {
            if (!json_is_object(val)) {
                qmp_error_setg(
                    err, "QMP input member 'arguments' must be an object");
                goto fail;
            }
        } else if (strcmp(key, "id") != 0) {
            qmp_error_setg(err, "QMP input member '%s' is unexpected", key);
            goto fail;
        }
    }
    free(keys);
    if (!exec_key) {
        qmp_error_setg(err, "QMP input lacks member 'execute'");
        return NULL;
    }
    *is_oob = !strcmp(exec_key, "exec-oob");
    return command;
fail:
    free(keys);
    return NULL;
}

static json_t *dispatch(struct qmp_session *s, json_t *req,
                        struct qmp_error *err)
{
    bool is_oob = false;
    const char *command = check_request(s, req, &is_oob, err);
    json_t *args, *ret;
    qmp_command_fn *fn;

    if (!command) {
        return NULL;
    }
    /* In negotiation mode the only command that exists is
     * qmp_capabilities. */
    if (!schema_has_command(command) ||
        (!s->negotiated && strcmp(command, "qmp_capabilities") != 0)) {
        qmp_error_set(err, QMP_ERROR_COMMAND_NOT_FOUND,
                      "The command %s has not been found", command);
        return NULL;
    }
    if (is_oob) {
        qmp_error_setg(err, "The command %s does not support OOB", command);
        return NULL;
    }
    if (s->readonly && strcmp(command, "qmp_capabilities") != 0 &&
        strncmp(command, "query-", 6) != 0) {
        qmp_error_setg(err,
                       "The command %s is not allowed on a read-only "
                       "monitor (only query-* commands are)",
                       command);
        return NULL;
    }
    args = json_object_get(req, "arguments");
    args = args ? json_incref(args) : json_object();
    ret = NULL;
    if (schema_check_args(command, args, err) == 0) {
        fn = find_handler(command);
        if (!fn) {
            qmp_error_set(err, QMP_ERROR_COMMAND_NOT_FOUND,
                          "The command %s has not been found", command);
        } else {
            ret = fn(args, s, err);
            if (!ret && !qmp_error_is_set(err)) {
                ret = json_object();
            }
        }
    }
    json_decref(args);
    return ret;
}

static void handle_request(struct qmp_session *s, json_t *req)
{
    struct qmp_error err = QMP_ERROR_INIT;
    json_t *id = json_object_get(req, "id");
    json_t *ret;

    json_incref(id);
    ret = dispatch(s, req, &err);
    if (s->deferring) {
        s->deferring = false;
        s->deferred->id = id;
        qmp_error_clear(&err);
        json_decref(ret);
        return;
    }
    if (!ret) {
        if (!s->negotiated && err.cls == QMP_ERROR_COMMAND_NOT_FOUND) {
            free(err.desc);
            err.desc = strdup("Expecting capabilities negotiation with "
                              "'qmp_capabilities'");
        }
        send_error(s, id, &err);
    } else {
        send_return(s, id, ret);
    }
    json_decref(id);
    qmp_error_clear(&err);
    if (s->quit_requested && s->ops->quit) {
        s->quit_requested = false;
        s->ops->quit(s->opaque);
    }
}

static void hold(struct qmp_session *s, json_t *value, const char *errdesc)
{
    struct held *h = calloc(1, sizeof(*h));

    if (!h || (errdesc && !(h->errdesc = strdup(errdesc)))) {
        abort();
    }
    h->value = value;
    *s->held_tail = h;
    s->held_tail = &h->next;
}

static void process(struct qmp_session *s, json_t *value, const char *errdesc);

/* After each request: has this session had its turn? */
static void end_of_request(struct qmp_session *s)
{
    if (!s->ops->yield) {
        return; /* an owner that cannot continue us gets no turns */
    }
    if (++s->turn_requests >= TURN_REQUESTS || s->turn_bytes >= TURN_BYTES) {
        s->yielded = true;
    }
}

/* Runs held input until it is used up, a reply is deferred, or the turn
 * ends. Then tells the owner what to do next. */
static void run_held(struct qmp_session *s)
{
    while (s->held && !s->deferred && !s->stopped && !s->yielded) {
        struct held *h = s->held;
        s->held = h->next;
        if (!s->held) {
            s->held_tail = &s->held;
        }
        process(s, h->value, h->errdesc);
        json_decref(h->value);
        free(h->errdesc);
        free(h);
        end_of_request(s);
    }
    if (s->stopped || s->deferred) {
        return;
    }
    if (s->held || s->yielded) {
        s->yielded = true;
        if (s->ops->yield) {
            s->ops->yield(s->opaque);
        }
    } else if (s->ops->resume) {
        s->ops->resume(s->opaque);
    }
}

static void on_stream_value(void *opaque, json_t *value, const char *errdesc)
{
    struct qmp_session *s = opaque;

    if (s->stopped) {
        json_decref(value);
        return;
    }
    if (s->deferred || s->yielded) {
        hold(s, value, errdesc);
        return;
    }
    process(s, value, errdesc);
    json_decref(value);
    end_of_request(s);
}

/* Handles one input item; borrows `value`. */
static void process(struct qmp_session *s, json_t *value, const char *errdesc)
{
    if (!value) {
        send_error_text(s, NULL, errdesc);
        return;
    }
    if (!json_is_object(value)) {
        send_error_text(s, NULL, "QMP input must be a JSON object");
    } else {
        handle_request(s, value);
    }
}

struct qmp_session *qmp_session_new(const struct qmp_session_ops *ops,
                                    void *opaque, size_t max_msg_bytes)
{
    struct qmp_session *s = calloc(1, sizeof(*s));

    if (!s) {
        return NULL;
    }
    s->ops = ops;
    s->opaque = opaque;
    s->held_tail = &s->held;
    s->stream = qmp_stream_new(max_msg_bytes, on_stream_value, s);
    if (!s->stream) {
        free(s);
        return NULL;
    }
    return s;
}

void qmp_session_greet(struct qmp_session *s)
{
    send_value(s, json_pack("{s:{s:o, s:[s]}}", "QMP", "version",
                            version_info(), "capabilities", "oob"));
}

void qmp_session_feed(struct qmp_session *s, const char *buf, size_t len)
{
    if (s->stopped) {
        return;
    }
    if (!s->yielded && !s->deferred) {
        s->turn_requests = 0;
        s->turn_bytes = 0;
    }
    qmp_stream_feed(s->stream, buf, len);
    /* Input of this read that did not fit in the turn waits its turn. */
    if (s->yielded && !s->deferred && !s->stopped && s->ops->yield) {
        s->ops->yield(s->opaque);
    }
}

void qmp_session_stop(struct qmp_session *s)
{
    s->stopped = true;
    qmp_stream_stop(s->stream);
}

bool qmp_session_negotiated(const struct qmp_session *s)
{
    return s->negotiated;
}

void qmp_session_set_readonly(struct qmp_session *s, bool readonly)
{
    s->readonly = readonly;
}

size_t qmp_session_pending(const struct qmp_session *s)
{
    return qmp_stream_pending(s->stream);
}

static void drop_held(struct qmp_session *s)
{
    while (s->held) {
        struct held *h = s->held;
        s->held = h->next;
        json_decref(h->value);
        free(h->errdesc);
        free(h);
    }
    s->held_tail = &s->held;
}

struct qmp_deferred *qmp_session_defer(struct qmp_session *s)
{
    struct qmp_deferred *d = calloc(1, sizeof(*d));

    if (!d) {
        abort();
    }
    d->s = s;
    s->deferred = d;
    s->deferring = true;
    return d;
}

bool qmp_session_busy(const struct qmp_session *s)
{
    return s->deferred != NULL || s->yielded;
}

void qmp_session_continue(struct qmp_session *s)
{
    s->yielded = false;
    s->turn_requests = 0;
    s->turn_bytes = 0;
    run_held(s);
}

void qmp_deferred_reply(struct qmp_deferred *d, json_t *ret,
                        struct qmp_error *err)
{
    struct qmp_session *s = d->s;

    if (!s || s->stopped) {
        if (s) {
            s->deferred = NULL; /* d is freed below */
        }
        json_decref(ret);
        goto out;
    }
    s->deferred = NULL;
    if (ret) {
        send_return(s, d->id, ret);
    } else {
        struct qmp_error none = QMP_ERROR_INIT;
        send_error(s, d->id, err && qmp_error_is_set(err) ? err : &none);
    }
    /* Replay what arrived meanwhile, within this turn's budget. */
    run_held(s);
out:
    if (err) {
        qmp_error_clear(err);
    }
    json_decref(d->id);
    free(d);
}

void qmp_session_free(struct qmp_session *s)
{
    if (s) {
        if (s->deferred) {
            s->deferred->s = NULL;
        }
        drop_held(s);
        qmp_stream_free(s->stream);
        free(s);
    }
}

/* ---- core commands ------------------------------------------------------- */

static json_t *cmd_qmp_capabilities(json_t *args, struct qmp_session *s,
                                    struct qmp_error *err)
{
    json_t *enable = json_object_get(args, "enable"), *cap;
    size_t i;

    if (s->negotiated) {
        qmp_error_set(err, QMP_ERROR_COMMAND_NOT_FOUND,
                      "Capabilities negotiation is already complete, command "
                      "ignored");
        return NULL;
    }
    json_array_foreach(enable, i, cap) {
        if (!strcmp(json_string_value(cap), "oob")) {
            s->oob = true;
        }
    }
    s->negotiated = true;
    return json_object();
}

static json_t *cmd_query_version(json_t *args, struct qmp_session *s,
                                 struct qmp_error *err)
{
    (void)args;
    (void)s;
    (void)err;
    return version_info();
}

static json_t *cmd_query_commands(json_t *args, struct qmp_session *s,
                                  struct qmp_error *err)
{
    json_t *names = schema_command_names(), *out = json_array(), *name;
    size_t i;

    (void)args;
    (void)s;
    (void)err;
    json_array_foreach(names, i, name) {
        json_array_append_new(out, json_pack("{s:O}", "name", name));
    }
    json_decref(names);
    return out;
}

static json_t *cmd_query_qmp_schema(json_t *args, struct qmp_session *s,
                                    struct qmp_error *err)
{
    (void)args;
    (void)s;
    (void)err;
    return schema_introspect();
}

static json_t *cmd_quit(json_t *args, struct qmp_session *s,
                        struct qmp_error *err)
{
    (void)args;
    (void)err;
    s->quit_requested = true; /* ops->quit runs once the reply is out */
    return json_object();
}

static const char core_schema[] =
    "["
    "{'enum': 'QMPCapability', 'data': ['oob']},"
    "{'command': 'qmp_capabilities', 'data': {'*enable': ['QMPCapability']},"
    " 'allow-preconfig': true},"
    "{'struct': 'VersionTriple', 'data': {'major': 'int', 'minor': 'int',"
    " 'micro': 'int'}},"
    "{'struct': 'VersionInfo', 'data': {'qemu': 'VersionTriple',"
    " 'package': 'str'}},"
    "{'command': 'query-version', 'returns': 'VersionInfo'},"
    "{'struct': 'CommandInfo', 'data': {'name': 'str'}},"
    "{'command': 'query-commands', 'returns': ['CommandInfo']},"
    "{'enum': 'SchemaMetaType', 'data': ['builtin', 'enum', 'array',"
    " 'object', 'alternate', 'command', 'event']},"
    "{'enum': 'JSONType', 'data': ['string', 'number', 'int', 'boolean',"
    " 'null', 'object', 'array', 'value']},"
    "{'struct': 'SchemaInfoBuiltin', 'data': {'json-type': 'JSONType'}},"
    "{'struct': 'SchemaInfoEnumMember', 'data': {'name': 'str',"
    " '*features': ['str']}},"
    "{'struct': 'SchemaInfoEnum', 'data': {'members':"
    " ['SchemaInfoEnumMember'], 'values': ['str']}},"
    "{'struct': 'SchemaInfoArray', 'data': {'element-type': 'str'}},"
    "{'struct': 'SchemaInfoObjectMember', 'data': {'name': 'str',"
    " 'type': 'str', '*default': 'any', '*features': ['str']}},"
    "{'struct': 'SchemaInfoObjectVariant', 'data': {'case': 'str',"
    " 'type': 'str'}},"
    "{'struct': 'SchemaInfoObject', 'data': {'members':"
    " ['SchemaInfoObjectMember'], '*tag': 'str',"
    " '*variants': ['SchemaInfoObjectVariant']}},"
    "{'struct': 'SchemaInfoAlternateMember', 'data': {'type': 'str'}},"
    "{'struct': 'SchemaInfoAlternate', 'data': {'members':"
    " ['SchemaInfoAlternateMember']}},"
    "{'struct': 'SchemaInfoCommand', 'data': {'arg-type': 'str',"
    " 'ret-type': 'str', '*allow-oob': 'bool'}},"
    "{'struct': 'SchemaInfoEvent', 'data': {'arg-type': 'str'}},"
    "{'union': 'SchemaInfo', 'base': {'name': 'str',"
    " 'meta-type': 'SchemaMetaType', '*features': ['str']},"
    " 'discriminator': 'meta-type', 'data': {"
    " 'builtin': 'SchemaInfoBuiltin', 'enum': 'SchemaInfoEnum',"
    " 'array': 'SchemaInfoArray', 'object': 'SchemaInfoObject',"
    " 'alternate': 'SchemaInfoAlternate', 'command': 'SchemaInfoCommand',"
    " 'event': 'SchemaInfoEvent'}},"
    "{'command': 'query-qmp-schema', 'returns': ['SchemaInfo']},"
    "{'command': 'quit'},"
    "{'enum': 'ShutdownCause', 'data': ['none', 'host-error', 'host-qmp-quit',"
    " 'host-qmp-system-reset', 'host-signal', 'host-ui', 'guest-shutdown',"
    " 'guest-reset', 'guest-panic', 'subsystem-reset', 'snapshot-load']},"
    "{'event': 'SHUTDOWN', 'data': {'guest': 'bool',"
    " 'reason': 'ShutdownCause'}}"
    "]";

void qmp_core_init(void)
{
    qmp_schema_add(core_schema);
    qmp_command_register("qmp_capabilities", cmd_qmp_capabilities);
    qmp_command_register("query-version", cmd_query_version);
    qmp_command_register("query-commands", cmd_query_commands);
    qmp_command_register("query-qmp-schema", cmd_query_qmp_schema);
    qmp_command_register("quit", cmd_quit);
}
