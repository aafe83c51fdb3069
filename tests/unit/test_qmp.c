/* Unit tests for protocol/qmp.c: sessions, negotiation, message checks,
 * dispatch, deferred replies, events and the core commands. Every expected
 * line is the exact text qemu-storage-daemon 7.2 sends for the same input
 * (checked on the wire; see tests/interop/ for the differential tests). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/json.h"
#include "protocol/qmp.h"

/* ---- fake client ------------------------------------------------------- */

struct client {
    char *out; /* everything sent, concatenated */
    size_t len;
    int lines;
    int quits;
    int resumes;
    int yields;
    int lines_at_quit;
    struct qmp_session *s;
};

static void fake_send(void *opaque, const char *line, size_t len)
{
    struct client *c = opaque;

    /* Every line is one message ending in CR LF, nothing after it. */
    assert_true(len >= 2);
    assert_memory_equal(line + len - 2, "\r\n", 2);
    assert_null(memchr(line, '\n', len - 1));
    c->out = realloc(c->out, c->len + len + 1);
    assert_non_null(c->out);
    memcpy(c->out + c->len, line, len);
    c->len += len;
    c->out[c->len] = '\0';
    c->lines++;
}

static void fake_quit(void *opaque)
{
    struct client *c = opaque;

    c->quits++;
    c->lines_at_quit = c->lines;
}

static void fake_resume(void *opaque)
{
    ((struct client *)opaque)->resumes++;
}

static void fake_yield(void *opaque)
{
    ((struct client *)opaque)->yields++;
}

static const struct qmp_session_ops ops = {fake_send, fake_quit, fake_resume,
                                           fake_yield};

static void client_open(struct client *c)
{
    memset(c, 0, sizeof(*c));
    c->s = qmp_session_new(&ops, c, QMP_JSON_DEFAULT_BYTES);
    assert_non_null(c->s);
}

static void client_close(struct client *c)
{
    qmp_session_free(c->s);
    free(c->out);
    c->out = NULL;
}

/* Returns what was sent since the last call and forgets it. */
static char *take(struct client *c)
{
    char *s = c->out ? c->out : strdup("");

    c->out = NULL;
    c->len = 0;
    return s;
}

static void feed(struct client *c, const char *text)
{
    qmp_session_feed(c->s, text, strlen(text));
}

/* Feeds `in` and checks the exact output (each line ends in CR LF). */
static void expect(struct client *c, const char *in, const char *want)
{
    char *got;

    feed(c, in);
    got = take(c);
    assert_string_equal(got, want);
    free(got);
}

static void negotiate(struct client *c)
{
    expect(c, "{\"execute\": \"qmp_capabilities\"}", "{\"return\": {}}\r\n");
    assert_true(qmp_session_negotiated(c->s));
}

/* ---- test commands ------------------------------------------------------ */

static struct qmp_deferred *pending[4];
static int n_pending;
static int handler_calls;
static json_t *last_args;

static json_t *cmd_echo(json_t *args, struct qmp_session *s,
                        struct qmp_error *err)
{
    json_t *v = json_object_get(args, "v");

    (void)s;
    (void)err;
    handler_calls++;
    json_decref(last_args);
    last_args = json_incref(args);
    return v ? json_incref(v) : json_object();
}

static json_t *cmd_fail(json_t *args, struct qmp_session *s,
                        struct qmp_error *err)
{
    (void)args;
    (void)s;
    qmp_error_set(err, QMP_ERROR_DEVICE_NOT_FOUND, "No such thing '%s'",
                  "caf\xc3\xa9");
    return NULL;
}

static json_t *cmd_nothing(json_t *args, struct qmp_session *s,
                           struct qmp_error *err)
{
    (void)args;
    (void)s;
    (void)err;
    return NULL; /* no error: an empty return */
}

static json_t *cmd_slow(json_t *args, struct qmp_session *s,
                        struct qmp_error *err)
{
    (void)args;
    (void)err;
    assert_true(n_pending < 4);
    pending[n_pending++] = qmp_session_defer(s);
    return NULL;
}

static json_t *cmd_emit(json_t *args, struct qmp_session *s,
                        struct qmp_error *err)
{
    (void)s;
    (void)err;
    qmp_event_emit("TEST_EVENT", json_incref(args));
    return json_object();
}

static const char test_schema[] =
    "["
    "{'command': 'echo', 'data': {'*v': 'any'}, 'returns': 'any'},"
    "{'command': 'fail'},"
    "{'command': 'nothing'},"
    "{'command': 'slow'},"
    "{'command': 'emit', 'data': {'*a': 'int', '*s': 'str'}},"
    "{'command': 'no-handler'},"
    "{'event': 'TEST_EVENT', 'data': {'*a': 'int', '*s': 'str'}}"
    "]";

static int setup(void **state)
{
    (void)state;
    qmp_reset();
    qmp_set_version(7, 2, 22, "test pkg");
    qmp_core_init();
    qmp_schema_add(test_schema);
    qmp_command_register("echo", cmd_echo);
    qmp_command_register("fail", cmd_fail);
    qmp_command_register("nothing", cmd_nothing);
    qmp_command_register("slow", cmd_slow);
    qmp_command_register("emit", cmd_emit);
    n_pending = 0;
    handler_calls = 0;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    json_decref(last_args);
    last_args = NULL;
    qmp_event_set_sink(NULL, NULL);
    qmp_event_set_clock(NULL);
    qmp_reset();
    return 0;
}

/* ---- greeting and negotiation ------------------------------------------ */

static void test_greeting(void **state)
{
    struct client c;
    char *got;

    (void)state;
    client_open(&c);
    qmp_session_greet(c.s);
    got = take(&c);
    assert_string_equal(got, "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": "
                             "22, \"minor\": 2, \"major\": 7}, \"package\": "
                             "\"test pkg\"}, \"capabilities\": [\"oob\"]}}"
                             "\r\n");
    free(got);
    assert_false(qmp_session_negotiated(c.s));
    client_close(&c);
}

static void test_negotiation_mode(void **state)
{
    static const char want_neg[] =
        "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting "
        "capabilities negotiation with 'qmp_capabilities'\"}}\r\n";
    struct client c;

    (void)state;
    client_open(&c);
    /* Every command but qmp_capabilities, existing or not. */
    expect(&c, "{\"execute\": \"query-version\"}", want_neg);
    expect(&c, "{\"execute\": \"nosuch\"}", want_neg);
    expect(&c, "{\"execute\": \"echo\", \"id\": null}",
           "{\"id\": null, \"error\": {\"class\": \"CommandNotFound\", "
           "\"desc\": \"Expecting capabilities negotiation with "
           "'qmp_capabilities'\"}}\r\n");
    assert_int_equal(handler_calls, 0);
    /* Message shape errors come first, as in QEMU. */
    expect(&c, "{\"id\": 1}",
           "{\"id\": 1, \"error\": {\"class\": \"GenericError\", \"desc\": "
           "\"QMP input lacks member 'execute'\"}}\r\n");
    /* Bad arguments to qmp_capabilities. */
    expect(&c,
           "{\"execute\": \"qmp_capabilities\", \"arguments\": {\"enable\": "
           "[\"foo\"]}}",
           "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Parameter "
           "'null' does not accept value 'foo'\"}}\r\n");
    expect(&c,
           "{\"execute\": \"qmp_capabilities\", \"arguments\": {\"enable\": "
           "\"oob\"}}",
           "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Invalid "
           "parameter type for 'enable', expected: array\"}}\r\n");
    assert_false(qmp_session_negotiated(c.s));
    negotiate(&c);
    expect(&c, "{\"execute\": \"qmp_capabilities\", \"id\": \"again\"}",
           "{\"id\": \"again\", \"error\": {\"class\": \"CommandNotFound\", "
           "\"desc\": \"Capabilities negotiation is already complete, "
           "command ignored\"}}\r\n");
    expect(&c, "{\"execute\": \"query-version\", \"id\": 2}",
           "{\"return\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": "
           "7}, \"package\": \"test pkg\"}, \"id\": 2}\r\n");
    client_close(&c);
}

static void test_sessions_independent(void **state)
{
    struct client a, b;

    (void)state;
    client_open(&a);
    client_open(&b);
    negotiate(&a);
    assert_false(qmp_session_negotiated(b.s));
    expect(&b, "{\"execute\": \"echo\"}",
           "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": "
           "\"Expecting capabilities negotiation with "
           "'qmp_capabilities'\"}}\r\n");
    expect(&a, "{\"execute\": \"echo\"}", "{\"return\": {}}\r\n");
    client_close(&a);
    client_close(&b);
}

/* ---- ids ------------------------------------------------------------------
 */

static void test_id_echo(void **state)
{
    struct client c;

    (void)state;
    client_open(&c);
    negotiate(&c);
    expect(&c, "{\"execute\": \"echo\", \"id\": \"x\"}",
           "{\"return\": {}, \"id\": \"x\"}\r\n");
    expect(&c, "{\"id\": 42, \"execute\": \"echo\"}",
           "{\"return\": {}, \"id\": 42}\r\n");
    expect(&c, "{\"execute\": \"echo\", \"id\": -1.5}",
           "{\"return\": {}, \"id\": -1.5}\r\n");
    expect(&c, "{\"execute\": \"echo\", \"id\": [1, \"a\", [true, null]]}",
           "{\"return\": {}, \"id\": [1, \"a\", [true, null]]}\r\n");
    expect(&c, "{\"execute\": \"echo\", \"id\": null}",
           "{\"return\": {}, \"id\": null}\r\n");
    /* Non-ASCII and control characters come back escaped. */
    expect(&c, "{\"execute\": \"echo\", \"id\": \"\xc3\xa9\\t\"}",
           "{\"return\": {}, \"id\": \"\\u00E9\\t\"}\r\n");
    /* Objects come back in QEMU's QDict member order, whatever the text
     * order: "bar" hashes before "foo". */
    expect(&c, "{\"execute\": \"echo\", \"id\": {\"foo\": 1, \"bar\": 2}}",
           "{\"return\": {}, \"id\": {\"bar\": 2, \"foo\": 1}}\r\n");
    expect(&c, "{\"execute\": \"echo\", \"id\": {\"bar\": 2, \"foo\": 1}}",
           "{\"return\": {}, \"id\": {\"bar\": 2, \"foo\": 1}}\r\n");
    /* Errors put the id first. */
    expect(&c, "{\"execute\": \"nosuch\", \"id\": \"e\"}",
           "{\"id\": \"e\", \"error\": {\"class\": \"CommandNotFound\", "
           "\"desc\": \"The command nosuch has not been found\"}}\r\n");
    /* Single-quoted strings are accepted. */
    expect(&c, "{'execute': 'echo', 'id': 'it\\'s \"q\"'}",
           "{\"return\": {}, \"id\": \"it's \\\"q\\\"\"}\r\n");
    client_close(&c);
}

/* ---- message shape ------------------------------------------------------ */

#define GENERIC(desc)                                                          \
    "{\"error\": {\"class\": \"GenericError\", \"desc\": \"" desc "\"}}\r\n"

static void test_message_shape_errors(void **state)
{
    struct client c;

    (void)state;
    client_open(&c);
    negotiate(&c);
    expect(&c, "[1, 2]", GENERIC("QMP input must be a JSON object"));
    expect(&c, "\"str\"", GENERIC("QMP input must be a JSON object"));
    expect(&c, "42 ", GENERIC("QMP input must be a JSON object"));
    /* A top-level literal, like a number, ends at a delimiter. */
    expect(&c, "null", "");
    expect(&c, " ", GENERIC("QMP input must be a JSON object"));
    expect(&c, "{}", GENERIC("QMP input lacks member 'execute'"));
    expect(&c, "{\"arguments\": {}}",
           GENERIC("QMP input lacks member 'execute'"));
    expect(&c, "{\"execute\": 5}",
           GENERIC("QMP input member 'execute' must be a string"));
    expect(&c, "{\"execute\": \"echo\", \"arguments\": []}",
           GENERIC("QMP input member 'arguments' must be an object"));
    expect(&c, "{\"execute\": \"echo\", \"arguments\": null}",
           GENERIC("QMP input member 'arguments' must be an object"));
    expect(&c, "{\"execute\": \"echo\", \"foo\": 1}",
           GENERIC("QMP input member 'foo' is unexpected"));
    /* Without the oob capability, exec-oob is just unexpected. */
    expect(&c, "{\"exec-oob\": \"echo\"}",
           GENERIC("QMP input member 'exec-oob' is unexpected"));
    /* Several faults: QEMU's QDict order decides ("bar" before "foo"). */
    expect(&c, "{\"foo\": 1, \"bar\": 2}",
           GENERIC("QMP input member 'bar' is unexpected"));
    expect(&c, "{\"bar\": 2, \"foo\": 1}",
           GENERIC("QMP input member 'bar' is unexpected"));
    /* Malformed JSON: the framer's text, and the session goes on. */
    expect(&c, "{\"execute\": }", GENERIC("JSON parse error, expecting value"));
    expect(&c, "{\"id\": 1, \"id\": 2}",
           GENERIC("JSON parse error, duplicate key"));
    expect(&c, "{\"execute\": \"echo\"}", "{\"return\": {}}\r\n");
    assert_int_equal(handler_calls, 1);
    client_close(&c);
}

static void test_oob_capability(void **state)
{
    struct client c;

    (void)state;
    client_open(&c);
    expect(&c,
           "{\"execute\": \"qmp_capabilities\", \"arguments\": {\"enable\": "
           "[\"oob\"]}}",
           "{\"return\": {}}\r\n");
    expect(&c, "{\"exec-oob\": \"echo\", \"id\": 1}",
           "{\"id\": 1, \"error\": {\"class\": \"GenericError\", \"desc\": "
           "\"The command echo does not support OOB\"}}\r\n");
    expect(&c, "{\"exec-oob\": \"nosuch\"}",
           "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The "
           "command nosuch has not been found\"}}\r\n");
    expect(&c, "{\"exec-oob\": 1}",
           GENERIC("QMP input member 'exec-oob' must be a string"));
    /* Both: the one QEMU's QDict visits second clashes with the first. */
    expect(&c, "{\"execute\": \"echo\", \"exec-oob\": \"echo\"}",
           GENERIC("QMP input member 'execute' clashes with 'exec-oob'"));
    expect(&c, "{\"exec-oob\": \"echo\", \"execute\": \"echo\"}",
           GENERIC("QMP input member 'execute' clashes with 'exec-oob'"));
    assert_int_equal(handler_calls, 0);
    client_close(&c);
}

/* ---- dispatch --------------------------------------------------------------
 */

static void test_dispatch(void **state)
{
    struct client c;

    (void)state;
    client_open(&c);
    negotiate(&c);
    expect(&c, "{\"execute\": \"nosuch\"}",
           "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The "
           "command nosuch has not been found\"}}\r\n");
    /* Names are not escaped before quoting: the encoder escapes them. */
    expect(&c, "{\"execute\": \"\xc3\xa9\"}",
           "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The "
           "command \\u00E9 has not been found\"}}\r\n");
    /* Declared without a handler: as if it did not exist. */
    expect(&c, "{\"execute\": \"no-handler\"}",
           "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The "
           "command no-handler has not been found\"}}\r\n");
    /* Arguments reach the handler validated; none gives {}. */
    expect(&c,
           "{\"execute\": \"echo\", \"arguments\": {\"v\": {\"k\": [1, "
           "2.5, \"s\"]}}}",
           "{\"return\": {\"k\": [1, 2.5, \"s\"]}}\r\n");
    expect(&c, "{\"execute\": \"echo\"}", "{\"return\": {}}\r\n");
    assert_true(json_is_object(last_args));
    assert_int_equal(json_object_size(last_args), 0);
    /* Validation fails before the handler runs. */
    handler_calls = 0;
    expect(&c, "{\"execute\": \"echo\", \"arguments\": {\"w\": 1}}",
           GENERIC("Parameter 'w' is unexpected"));
    expect(&c, "{\"execute\": \"emit\", \"arguments\": {\"a\": \"x\"}}",
           GENERIC("Invalid parameter type for 'a', expected: integer"));
    expect(&c, "{\"execute\": \"query-version\", \"arguments\": {\"x\": 1}}",
           GENERIC("Parameter 'x' is unexpected"));
    assert_int_equal(handler_calls, 0);
    /* Handler errors keep their class; non-ASCII text is escaped. */
    expect(&c, "{\"execute\": \"fail\", \"id\": 7}",
           "{\"id\": 7, \"error\": {\"class\": \"DeviceNotFound\", \"desc\": "
           "\"No such thing 'caf\\u00E9'\"}}\r\n");
    expect(&c, "{\"execute\": \"nothing\"}", "{\"return\": {}}\r\n");
    client_close(&c);
}

static void test_framing_and_order(void **state)
{
    static const char in[] = "{\"execute\": \"echo\", \"id\": 1}\n"
                             "  {\"execute\": \"nosuch\", \"id\": 2}"
                             "{\"execute\": \"echo\", \"id\": 3}";
    static const char want[] =
        "{\"return\": {}, \"id\": 1}\r\n"
        "{\"id\": 2, \"error\": {\"class\": \"CommandNotFound\", \"desc\": "
        "\"The command nosuch has not been found\"}}\r\n"
        "{\"return\": {}, \"id\": 3}\r\n";
    struct client c;
    char *got;

    (void)state;
    client_open(&c);
    negotiate(&c);
    /* All at once. */
    expect(&c, in, want);
    /* One byte at a time: same replies; the partial message is held. */
    for (size_t i = 0; i < sizeof(in) - 1; i++) {
        qmp_session_feed(c.s, in + i, 1);
        if (i == 5) {
            assert_true(qmp_session_pending(c.s) > 0);
        }
    }
    got = take(&c);
    assert_string_equal(got, want);
    free(got);
    client_close(&c);
}

static void test_core_commands(void **state)
{
    struct client c;
    json_t *r, *list, *item;
    char *got;
    size_t i;
    bool seen_echo = false, seen_quit = false, seen_no_handler = false;

    (void)state;
    client_open(&c);
    negotiate(&c);
    feed(&c, "{\"execute\": \"query-commands\"}");
    got = take(&c);
    r = qmp_json_parse(got, NULL);
    free(got);
    assert_non_null(r);
    list = json_object_get(r, "return");
    assert_true(json_is_array(list));
    json_array_foreach(list, i, item) {
        const char *name = json_string_value(json_object_get(item, "name"));

        assert_non_null(name);
        assert_int_equal(json_object_size(item), 1);
        seen_echo |= !strcmp(name, "echo");
        seen_quit |= !strcmp(name, "quit");
        seen_no_handler |= !strcmp(name, "no-handler");
    }
    assert_true(seen_echo && seen_quit && seen_no_handler);
    json_decref(r);
    client_close(&c);
}

static void test_quit(void **state)
{
    struct client c;

    (void)state;
    client_open(&c);
    negotiate(&c);
    c.lines = 0;
    expect(&c, "{\"execute\": \"quit\", \"id\": \"q\"}",
           "{\"return\": {}, \"id\": \"q\"}\r\n");
    assert_int_equal(c.quits, 1);
    /* The reply was out before the hook ran. */
    assert_int_equal(c.lines_at_quit, 1);
    /* quit with arguments is refused like any other command. */
    expect(&c, "{\"execute\": \"quit\", \"arguments\": {\"now\": true}}",
           GENERIC("Parameter 'now' is unexpected"));
    assert_int_equal(c.quits, 1);
    client_close(&c);
}

static void test_stop(void **state)
{
    struct client c;

    (void)state;
    client_open(&c);
    negotiate(&c);
    qmp_session_stop(c.s);
    expect(&c, "{\"execute\": \"echo\"}", "");
    client_close(&c);
}

/* ---- deferred replies ------------------------------------------------------
 */

static void test_deferred_reply_holds_input(void **state)
{
    struct client c;
    char *got;

    (void)state;
    client_open(&c);
    negotiate(&c);
    /* The slow command defers; what follows (a request, garbage, another
     * request) is held, in order. */
    expect(&c,
           "{\"execute\": \"slow\", \"id\": \"s\"}"
           "{\"execute\": \"echo\", \"id\": 1} ] "
           "{\"execute\": \"echo\", \"id\": 2}",
           "");
    assert_int_equal(n_pending, 1);
    assert_true(qmp_session_busy(c.s));
    assert_int_equal(handler_calls, 0);
    assert_int_equal(c.resumes, 0);
    qmp_deferred_reply(pending[0], json_string("done"), NULL);
    got = take(&c);
    assert_string_equal(
        got, "{\"return\": \"done\", \"id\": \"s\"}\r\n"
             "{\"return\": {}, \"id\": 1}\r\n" GENERIC(
                 "JSON parse error, expecting value") "{\"return\": {}, "
                                                      "\"id\": 2}\r\n");
    free(got);
    assert_false(qmp_session_busy(c.s));
    assert_int_equal(handler_calls, 2);
    assert_int_equal(c.resumes, 1);
    client_close(&c);
}

static void test_deferred_chain_and_error(void **state)
{
    struct client c;
    struct qmp_error err = QMP_ERROR_INIT;

    (void)state;
    client_open(&c);
    negotiate(&c);
    expect(&c,
           "{\"execute\": \"slow\", \"id\": 1}"
           "{\"execute\": \"slow\", \"id\": 2}"
           "{\"execute\": \"echo\", \"id\": 3}",
           "");
    assert_int_equal(n_pending, 1);
    /* The first reply replays input up to the next deferral. */
    qmp_deferred_reply(pending[0], NULL, NULL);
    {
        char *got = take(&c);
        /* No error set and no value: an error reply without text. */
        assert_string_equal(got, "{\"id\": 1, \"error\": {\"class\": "
                                 "\"GenericError\", \"desc\": \"\"}}\r\n");
        free(got);
    }
    assert_int_equal(n_pending, 2);
    assert_true(qmp_session_busy(c.s));
    assert_int_equal(c.resumes, 0);
    /* New input while deferred is held behind the held request. */
    expect(&c, "{\"execute\": \"echo\", \"id\": 4}", "");
    qmp_error_set(&err, QMP_ERROR_DEVICE_NOT_ACTIVE, "not now");
    qmp_deferred_reply(pending[1], NULL, &err);
    assert_false(qmp_error_is_set(&err)); /* cleared */
    {
        char *got = take(&c);
        assert_string_equal(got,
                            "{\"id\": 2, \"error\": {\"class\": "
                            "\"DeviceNotActive\", \"desc\": \"not now\"}}\r\n"
                            "{\"return\": {}, \"id\": 3}\r\n"
                            "{\"return\": {}, \"id\": 4}\r\n");
        free(got);
    }
    assert_int_equal(c.resumes, 1);
    client_close(&c);
}

static void test_deferred_dropped(void **state)
{
    struct client c;
    struct qmp_error err = QMP_ERROR_INIT;

    (void)state;
    /* The session is freed while a reply is pending, with input held: the
     * later reply goes nowhere (ASan would see a use after free). */
    client_open(&c);
    negotiate(&c);
    expect(&c,
           "{\"execute\": \"slow\", \"id\": {\"big\": [1, 2, 3]}}"
           "{\"execute\": \"echo\"} {",
           "");
    client_close(&c);
    qmp_deferred_reply(pending[0], json_string("late"), NULL);

    /* Stopped (client going away) but not yet freed: dropped too, and the
     * error is still cleared. */
    client_open(&c);
    negotiate(&c);
    expect(&c, "{\"execute\": \"slow\"}{\"execute\": \"echo\"}", "");
    qmp_session_stop(c.s);
    qmp_error_setg(&err, "late");
    qmp_deferred_reply(pending[1], NULL, &err);
    assert_false(qmp_error_is_set(&err));
    expect(&c, "", "");
    assert_int_equal(handler_calls, 0);
    assert_int_equal(c.resumes, 0);
    client_close(&c);
}

/* ---- events
 * ------------------------------------------------------------------ */

struct sink {
    char buf[1024];
    int count;
};

static void test_sink(void *opaque, const char *line, size_t len)
{
    struct sink *k = opaque;

    assert_true(len < sizeof(k->buf));
    memcpy(k->buf, line, len);
    k->buf[len] = '\0';
    k->count++;
}

static int64_t clock_us;

static int64_t fake_clock(void)
{
    return clock_us;
}

/* One read holding many requests is served in turns: a bounded number per
 * turn, the rest held in order until the owner continues the session. */
static void test_turns(void **state)
{
    struct client c;
    char *in = NULL, *out;
    size_t len = 0;
    FILE *f = open_memstream(&in, &len);
    int total = 0, turns = 0;

    (void)state;
    client_open(&c);
    negotiate(&c);
    for (int i = 0; i < 40; i++) {
        fprintf(f, "{\"execute\": \"query-version\", \"id\": %d}", i);
    }
    fclose(f);
    c.lines = 0;
    feed(&c, in);
    while (c.lines > total) {
        int got = c.lines - total;
        total = c.lines;
        turns++;
        assert_true(got <= 16);
        if (total < 40) {
            assert_true(qmp_session_busy(c.s));
            assert_int_equal(c.yields, turns);
            qmp_session_continue(c.s);
        }
    }
    assert_int_equal(total, 40);
    assert_true(turns >= 3);
    assert_false(qmp_session_busy(c.s));
    assert_int_equal(c.resumes, 1);
    out = take(&c);
    /* Replies in request order. */
    for (int i = 0, pos = 0; i < 40; i++) {
        char want[32];
        char *at;
        snprintf(want, sizeof(want), "\"id\": %d}", i);
        at = strstr(out + pos, want);
        assert_non_null(at);
        pos = (int)(at - out);
    }
    free(out);
    free(in);
    client_close(&c);
}

static void test_events(void **state)
{
    struct sink k = {{0}, 0};
    struct client c;

    (void)state;
    qmp_event_set_sink(test_sink, &k);
    qmp_event_set_clock(fake_clock);
    clock_us = 1700000000123456LL;
    qmp_event_emit("TEST_EVENT",
                   json_pack("{s:i, s:s}", "a", 1, "s", "\xc3\xa9\""));
    assert_int_equal(k.count, 1);
    assert_string_equal(k.buf, "{\"timestamp\": {\"seconds\": 1700000000, "
                               "\"microseconds\": 123456}, \"event\": "
                               "\"TEST_EVENT\", \"data\": {\"a\": 1, \"s\": "
                               "\"\\u00E9\\\"\"}}\r\n");
    /* No data: no data member. */
    clock_us = 5;
    qmp_event_emit("SHUTDOWN", NULL);
    assert_string_equal(k.buf, "{\"timestamp\": {\"seconds\": 0, "
                               "\"microseconds\": 5}, \"event\": "
                               "\"SHUTDOWN\"}\r\n");
    /* An event emitted by a handler goes out before its reply. */
    client_open(&c);
    negotiate(&c);
    expect(&c, "{\"execute\": \"emit\", \"arguments\": {\"a\": 2}}",
           "{\"return\": {}}\r\n");
    assert_int_equal(k.count, 3);
    assert_string_equal(k.buf, "{\"timestamp\": {\"seconds\": 0, "
                               "\"microseconds\": 5}, \"event\": "
                               "\"TEST_EVENT\", \"data\": {\"a\": 2}}\r\n");
    client_close(&c);
    /* Without a sink events are dropped quietly. */
    qmp_event_set_sink(NULL, NULL);
    qmp_event_emit("TEST_EVENT", json_object());
    assert_int_equal(k.count, 3);
}

static void test_real_clock(void **state)
{
    struct sink k = {{0}, 0};
    json_t *v, *ts;

    (void)state;
    qmp_event_set_sink(test_sink, &k);
    qmp_event_emit("X", NULL);
    v = qmp_json_parse(k.buf, NULL);
    assert_non_null(v);
    ts = json_object_get(v, "timestamp");
    assert_true(json_integer_value(json_object_get(ts, "seconds")) >
                1600000000);
    assert_in_range(json_integer_value(json_object_get(ts, "microseconds")), 0,
                    999999);
    json_decref(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_greeting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_negotiation_mode, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sessions_independent, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_id_echo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_message_shape_errors, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_oob_capability, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dispatch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_framing_and_order, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_core_commands, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deferred_reply_holds_input, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_deferred_chain_and_error, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_deferred_dropped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_turns, setup, teardown),
        cmocka_unit_test_setup_teardown(test_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_real_clock, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
