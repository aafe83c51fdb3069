/* Unit tests for protocol/json.c: QEMU 7.2 QMP framing, parsing, errors,
 * limits and encoding. Expected texts were checked against
 * qemu-storage-daemon 7.2 on the wire. */
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

/* ---- event collector ------------------------------------------------------
 * Every callback becomes one line: "V <encoded value>" or "E <errdesc>". */

struct collect {
    char *log;
    size_t len, cap;
    size_t events;
    size_t max_pending;
    struct qmp_stream *stream;
    size_t stop_after; /* call qmp_stream_stop after this many events */
};

static void log_add(struct collect *c, const char *kind, const char *text)
{
    size_t n = strlen(kind) + strlen(text) + 2;

    if (c->len + n + 1 > c->cap) {
        c->cap = (c->len + n + 1) * 2;
        c->log = realloc(c->log, c->cap);
        assert_non_null(c->log);
    }
    snprintf(c->log + c->len, n + 1, "%s %s\n", kind, text);
    c->len += n;
}

static void collect_cb(void *opaque, json_t *value, const char *errdesc)
{
    struct collect *c = opaque;

    c->events++;
    if (value) {
        char *text = qmp_json_encode(value, NULL);

        assert_non_null(text);
        assert_null(errdesc);
        log_add(c, "V", text);
        free(text);
        json_decref(value);
    } else {
        assert_non_null(errdesc);
        log_add(c, "E", errdesc);
    }
    if (c->stop_after && c->events == c->stop_after) {
        qmp_stream_stop(c->stream);
    }
}

enum split { WHOLE, BYTES, CHUNKS };

/* Feeds data (len bytes) split as asked; returns the malloc'd event log. */
static char *run_split(const char *data, size_t len, size_t max_bytes,
                       enum split how, size_t *max_pending)
{
    struct collect c = {0};
    size_t i = 0, step = 1;

    c.stream = qmp_stream_new(max_bytes, collect_cb, &c);
    assert_non_null(c.stream);
    while (i < len) {
        size_t n = how == WHOLE ? len : how == BYTES ? 1 : step;
        size_t pending;

        if (n > len - i) {
            n = len - i;
        }
        qmp_stream_feed(c.stream, data + i, n);
        i += n;
        step = step * 7 % 31 + 1;
        pending = qmp_stream_pending(c.stream);
        if (pending > c.max_pending) {
            c.max_pending = pending;
        }
    }
    qmp_stream_free(c.stream);
    if (max_pending) {
        *max_pending = c.max_pending;
    }
    if (!c.log) {
        c.log = strdup("");
    }
    return c.log;
}

/* Runs the input whole, byte by byte and in odd chunks; all three must give
 * `expected`. */
static void check_len(const char *data, size_t len, const char *expected)
{
    enum split hows[] = {WHOLE, BYTES, CHUNKS};
    size_t i;

    for (i = 0; i < 3; i++) {
        char *log = run_split(data, len, QMP_JSON_DEFAULT_BYTES, hows[i], NULL);

        if (strcmp(log, expected) != 0) {
            print_error("input %.*s (split %zu)\nexpected:\n%sgot:\n%s\n",
                        (int)len, data, i, expected, log);
            fail();
        }
        free(log);
    }
}

static void check(const char *data, const char *expected)
{
    check_len(data, strlen(data), expected);
}

#define PE "E JSON parse error, "

/* ---- framing ---------------------------------------------------------------
 */

static void test_objects_back_to_back(void **state)
{
    (void)state;
    check("{\"execute\":\"qmp_capabilities\"}{\"execute\": \"x\", "
          "\"id\": 1}\n  {}[]",
          "V {\"execute\": \"qmp_capabilities\"}\n"
          "V {\"execute\": \"x\", \"id\": 1}\n"
          "V {}\n"
          "V []\n");
    check("  \r\n\t ", "");
    check("{\"a\": {\"b\": [1, {\"c\": []}]}}",
          "V {\"a\": {\"b\": [1, {\"c\": []}]}}\n");
}

static void test_scalars_at_top_level(void **state)
{
    (void)state;
    check("42", "");
    check("42 ", "V 42\n");
    check("42{}", "V 42\n"
                  "V {}\n");
    check("-7,", "V -7\n" PE "expecting value\n");
    check("\"x\"", "V \"x\"\n");
    check("true false null ", "V true\nV false\nV null\n");
    check("1.5]", "V 1.5\n" PE "expecting value\n");
    check("tru", "");
}

static void test_incomplete_is_held(void **state)
{
    struct collect c = {0};

    (void)state;
    c.stream = qmp_stream_new(1000, collect_cb, &c);
    qmp_stream_feed(c.stream, "{\"execute\":", 11);
    assert_int_equal(c.events, 0);
    assert_true(qmp_stream_pending(c.stream) > 0);
    assert_true(qmp_stream_pending(c.stream) <= 1000);
    qmp_stream_feed(c.stream, "\"x\"", 3);
    assert_int_equal(c.events, 0);
    qmp_stream_feed(c.stream, "}", 1);
    assert_int_equal(c.events, 1);
    assert_int_equal(qmp_stream_pending(c.stream), 0);
    assert_string_equal(c.log, "V {\"execute\": \"x\"}\n");
    qmp_stream_free(c.stream);
    free(c.log);
}

static void test_single_quotes(void **state)
{
    (void)state;
    check("{'execute':'query-jobs'}", "V {\"execute\": \"query-jobs\"}\n");
    check("{'execute':'x','id':'a\"b\\'c'}",
          "V {\"execute\": \"x\", \"id\": \"a\\\"b'c\"}\n");
    check("[\"it\\'s\", '\\\"']", "V [\"it's\", \"\\\"\"]\n");
}

/* ---- parse errors (texts and counts as seen from qsd 7.2) ------------------
 */

static void test_errors_basic(void **state)
{
    (void)state;
    check("{\"execute\": }", PE "expecting value\n");
    check("[1,2,]", PE "expecting value\n");
    check("}", PE "expecting value\n");
    check("{}}", "V {}\n" PE "expecting value\n");
    check("foo ", PE "invalid keyword 'foo'\n");
    check("{\"a\": foo}", PE "invalid keyword 'foo'\n");
    check("{\"id\":\"x\",\"id\":\"y\"}", PE "duplicate key\n");
    check("{\"a\":1,\"a\":foo}", PE "invalid keyword 'foo'\n");
    check("{\"a\":1,\"a\"}", PE "missing : in object pair\n");
    check("{\"a\":1 \"b\":2}", PE "expected separator in dict\n");
    check("{\"a\" 1}", PE "missing : in object pair\n");
    check("{1:2}", PE "key is not a string in object\n");
    check("{[]:2}", PE "key is not a string in object\n");
    check("[1 2]", PE "expected separator in list\n");
    check("[}", PE "expecting value\n");
    check("{]", PE "expecting value\n");
    check("{\"a\"]", PE "missing : in object pair\n");
    check("[1}", PE "expected separator in list\n");
}

static void test_errors_stray(void **state)
{
    (void)state;
    check("%", PE "stray '%'\n");
    /* recovery stops at structural characters, ':' and ',' included */
    check("%,{}", PE "stray '%'\n" PE "expecting value\n"
                     "V {}\n");
    check("%:{}", PE "stray '%'\n" PE "expecting value\n"
                     "V {}\n");
    check("%abc\"def{}", PE "stray '%'\n"
                            "V {}\n");
    check("01 ", PE "stray '01'\n");
    check("-x ", PE "stray '-x'\n");
    check("1.x ", PE "stray '1.x'\n");
    check("1e ", PE "stray '1e '\n");
    /* no exponent right after a lone zero, as in QEMU */
    check("0E5 ", "V 0\n" PE "stray 'E'\n");
    check("[0e5]", PE "expected separator in list\n");
    check("-01 ", PE "stray '-01'\n");
    check("[0.0e5, -0.5E-1]", "V [0, -0.050000000000000003]\n");
    check("tru\x01"
          "e",
          PE "invalid keyword 'tru'\n" PE "stray '\x01'\n");
    check_len("\0{}", 3,
              PE "stray ''\n"
                 "V {}\n");
    /* a NUL inside a string ends the quoted text, like C's %s */
    check_len("\"a\0b\" ", 6, PE "stray '\"a'\n");
}

static void test_errors_control_char_in_string(void **state)
{
    (void)state;
    /* stray text, then the closing brace is a second error */
    check("{\"execute\":\"a\x01\"}",
          PE "stray '\"a\x01'\n" PE "expecting value\n");
    check("[\"\x01\",1]", PE "stray '\"\x01'\n" PE "expecting value\n"
                             "V 1\n" PE "expecting value\n");
    /* newline inside a string is a control char, and a resync point */
    check("\"ab\n{}", PE "stray '\"ab\n'\n"
                         "V {}\n");
}

static void test_errors_invalid_utf8(void **state)
{
    (void)state;
    /* outside strings: the text is made valid UTF-8 with U+FFFD, which the
     * encoder prints as \uFFFD exactly as QEMU does */
    check("\x80{}", PE "stray '\xEF\xBF\xBD'\n"
                       "V {}\n");
    check("\xfe{}", PE "stray '\xEF\xBF\xBD'\n"
                       "V {}\n");
    check("\xc3\xa9 {}", PE "stray '\xEF\xBF\xBD'\n"
                            "V {}\n");
    check("\"abc\xff{}", PE "stray '\"abc\xEF\xBF\xBD'\n"
                            "V {}\n");
    /* inside strings: judged by the parser */
    check("[\"\xef\xbf\xbe\"]", PE "invalid UTF-8 sequence in string\n");
    check("[\"\xed\xa0\x80\"]", PE "invalid UTF-8 sequence in string\n");
    check("[\"\xc3\"]", PE "invalid UTF-8 sequence in string\n");
    check("[\"\xe0\x80\xaf\"]", PE "invalid UTF-8 sequence in string\n");
    check("[\"\xc3\xa9\xf0\x9f\x98\x80\"]", "V [\"\\u00E9\\uD83D\\uDE00\"]\n");
}

static void test_string_escapes(void **state)
{
    (void)state;
    check("[\"\\u0000a\\u00e9\\ud83d\\ude00\x7f/\\/\\b\\f\\n\\r\\t\\\\"
          "\xf0\x9f\x98\x80\"]",
          "V [\"\\u0000a\\u00E9\\uD83D\\uDE00\\u007F//"
          "\\b\\f\\n\\r\\t\\\\\\uD83D\\uDE00\"]\n");
    check("[\"\\ud800\"]", PE "\\ud800 is not a valid Unicode character\n");
    check("[\"\\ud800x\"]", PE "\\ud800 is not a valid Unicode character\n");
    check("[\"\\ud800\\u0041\"]",
          PE "\\ud800 is not a valid Unicode character\n");
    check("[\"\\udc00\"]", PE "\\udc00 is not a valid Unicode character\n");
    check("[\"\\u12\"]", PE "\\u12\" is not a valid Unicode character\n");
    check("[\"\\u\"]", PE "\\u\" is not a valid Unicode character\n");
    check("[\"\\uFFFE\"]", PE "\\uFFFE is not a valid Unicode character\n");
    check("[\"\\uFDD0\"]", PE "\\uFDD0 is not a valid Unicode character\n");
    check("[\"\\q\"]", PE "invalid escape sequence in string\n");
    check("[1,\"\\ud800\",foo]",
          PE "\\ud800 is not a valid Unicode character\n");
    /* raw C0 80 is QEMU's (modified UTF-8) NUL */
    check("[\"\xc0\x80\xef\xbf\xbd\"]", "V [\"\\u0000\\uFFFD\"]\n");
}

static void test_nul_stays_c_string(void **state)
{
    const char *err = NULL;
    json_t *v = qmp_json_parse("{\"a\\u0000b\": \"x\\u0000y\"}", &err);
    const char *key;
    json_t *val;

    (void)state;
    assert_non_null(v);
    json_object_foreach(v, key, val) {
        assert_string_equal(key, "a\xC0\x80"
                                 "b");
        assert_string_equal(json_string_value(val), "x\xC0\x80y");
        assert_int_equal(json_string_length(val), 4);
    }
    json_decref(v);
}

static void test_numbers(void **state)
{
    (void)state;
    check("[1.5e3,0.1,1e400,-1e400,18446744073709551616,"
          "-9223372036854775808,9223372036854775807,-9223372036854775809,"
          "111111111111111111111111111111,-0,-0.0,1E2,5e-324,"
          "123456789012345678,0,0.5,1e-7,2.5E+3]",
          "V [1500, 0.10000000000000001, inf, -inf, 1.8446744073709552e+19, "
          "-9223372036854775808, 9223372036854775807, "
          "-9.2233720368547758e+18, 1.1111111111111111e+29, 0, -0, 100, "
          "4.9406564584124654e-324, 123456789012345678, 0, 0.5, "
          "9.9999999999999995e-08, 2500]\n");
    /* beyond int64 but within uint64: jansson has no uint64, so a real */
    check("[18446744073709551615]", "V [1.8446744073709552e+19]\n");
}

static void test_number_types(void **state)
{
    const char *err;
    json_t *v;

    (void)state;
    v = qmp_json_parse("[5, 5.0, 9223372036854775808, 1e400]", &err);
    assert_non_null(v);
    assert_true(json_is_integer(json_array_get(v, 0)));
    assert_true(json_is_real(json_array_get(v, 1)));
    assert_true(json_is_real(json_array_get(v, 2)));
    assert_true(json_is_real(json_array_get(v, 3)));
    assert_true(json_real_value(json_array_get(v, 3)) > 1e308);
    json_decref(v);
}

/* ---- limits ----------------------------------------------------------------
 */

static char *repeat(const char *a, size_t na, const char *b, size_t nb,
                    const char *tail)
{
    size_t la = strlen(a), lb = strlen(b), lt = strlen(tail);
    char *s = malloc(la * na + lb * nb + lt + 1), *p = s;
    size_t i;

    assert_non_null(s);
    for (i = 0; i < na; i++, p += la) {
        memcpy(p, a, la);
    }
    for (i = 0; i < nb; i++, p += lb) {
        memcpy(p, b, lb);
    }
    memcpy(p, tail, lt + 1);
    return s;
}

static void test_nesting_limit(void **state)
{
    char *in, *exp, *log;
    size_t i;

    (void)state;
    in = repeat("[", 1024, "]", 1024, "");
    log = run_split(in, strlen(in), QMP_JSON_DEFAULT_BYTES, WHOLE, NULL);
    assert_int_equal(strncmp(log, "V [[[[", 6), 0);
    free(log);
    free(in);

    /* 1025: error at the innermost bracket, then every ']' is stray */
    in = repeat("[", 1025, "]", 1025, "");
    exp = repeat("E JSON nesting depth limit exceeded\n", 1,
                 PE "expecting value\n", 1025, "");
    check(in, exp);
    free(in);
    free(exp);

    in = repeat("{\"a\":", 1025, "", 0, "{}");
    check(in, "E JSON nesting depth limit exceeded\n"
              "V \"a\"\n" PE "expecting value\n"
              "V {}\n");
    free(in);

    /* objects and arrays count together */
    in = repeat("{\"a\":[", 512, "]}", 512, "");
    log = run_split(in, strlen(in), QMP_JSON_DEFAULT_BYTES, BYTES, NULL);
    assert_int_equal(strncmp(log, "V {\"a\": [{", 10), 0);
    for (i = 0; log[i]; i++) {
        assert_true(log[i] != '\n' || log[i + 1] == '\0');
    }
    free(log);
    free(in);
}

static void test_size_limit_message(void **state)
{
    size_t max_pending, i;
    char *in, *log, *p;
    enum split hows[] = {WHOLE, BYTES, CHUNKS};

    (void)state;
    /* [1,1,...,1] bigger than 64 bytes: each token costs len + 1 */
    in = repeat("[", 1, "1,", 100, "1]{}");
    for (i = 0; i < 3; i++) {
        log = run_split(in, strlen(in), 64, hows[i], &max_pending);
        assert_true(max_pending <= 64);
        assert_int_equal(strncmp(log, "E JSON token size limit exceeded\n", 33),
                         0);
        /* then the rest is fresh input: "1," pairs and a final "1]" */
        p = log + 33;
        while (strncmp(p, "V 1\n" PE "expecting value\n", 4 + 36) == 0) {
            p += 4 + 36;
        }
        assert_string_equal(p, "V {}\n");
        free(log);
    }
    free(in);

    /* exactly at the limit: 31 tokens "[" "1" "," ... cost 62 bytes */
    in = repeat("[1", 1, ",1", 14, "] ");
    log = run_split(in, strlen(in), 64, WHOLE, NULL);
    assert_string_equal(log,
                        "V [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n");
    free(log);
    free(in);
}

static void test_size_limit_long_token(void **state)
{
    size_t max_pending, i;
    enum split hows[] = {WHOLE, BYTES, CHUNKS};
    char *in, *log;

    (void)state;
    /* A string alone beyond the limit is cut at the limit; lexing restarts
     * after it (QEMU's lexer does the same at its 64 MiB). The rest of the
     * string is then words: cut again, then an invalid keyword, then the
     * quote opens a string that a newline ends. */
    in = repeat("\"", 1, "a", 150, "\"\n{}");
    for (i = 0; i < 3; i++) {
        log = run_split(in, strlen(in), 64, hows[i], &max_pending);
        assert_true(max_pending <= 64);
        assert_string_equal(
            log, "E JSON token size limit exceeded\n"
                 "E JSON token size limit exceeded\n" PE "invalid keyword "
                 "'aaaaaaaaaaaaaaaaaaaaaaa'\n" PE "stray '\"\n'\n"
                 "V {}\n");
        free(log);
    }
    free(in);

    /* A string that fits alone but not after the stored tokens: the error
     * comes when the string ends, then input continues normally. */
    in = repeat("{\"key\":\"", 1, "b", 60, "\"}{\"x\":1}");
    for (i = 0; i < 3; i++) {
        log = run_split(in, strlen(in), 64, hows[i], &max_pending);
        assert_true(max_pending <= 64);
        assert_string_equal(log, "E JSON token size limit exceeded\n" PE
                                 "expecting value\n"
                                 "V {\"x\": 1}\n");
        free(log);
    }
    free(in);

    /* Same, but the string ends with a control char: the stray error
     * wins, as in QEMU. */
    in = repeat("{\"key\":\"", 1, "b", 60, "\x01\"}{\"x\":1}");
    log = run_split(in, strlen(in), 64, BYTES, &max_pending);
    assert_true(max_pending <= 64);
    assert_int_equal(strncmp(log, PE "stray '\"bbbb", 27), 0);
    assert_non_null(strstr(log, "bbb\x01'\n" PE "expecting value\n"
                                "V {\"x\": 1}\n"));
    free(log);
    free(in);
}

static void test_size_limit_bounded_memory(void **state)
{
    size_t max_pending, i;
    char *in, *log;

    (void)state;
    /* 4 MiB of everything against a 4 KiB limit */
    const char *pieces[] = {"[", "{\"a\":", "\"xxxxxxxx", "1,", "aaaa", " "};

    for (i = 0; i < sizeof(pieces) / sizeof(pieces[0]); i++) {
        in = repeat(pieces[i], (4u << 20) / strlen(pieces[i]), "", 0, "");
        log = run_split(in, strlen(in), 4096, CHUNKS, &max_pending);
        assert_true(max_pending <= 4096);
        free(log);
        free(in);
    }
}

static void test_token_count_limit(void **state)
{
    size_t max_pending;
    char *in, *log;

    (void)state;
    /* token 1 is '[', then "1" "," pairs: token 2097153 is the 1048576th
     * comma */
    in = repeat("[", 1, "1,", 1048576, "1]");
    log = run_split(in, strlen(in), 64u << 20, WHOLE, &max_pending);
    assert_string_equal(log, "E JSON token count limit exceeded\n"
                             "V 1\n" PE "expecting value\n");
    free(log);
    free(in);

    /* 1 + 2 * 1048575 + 2 tokens: one too many, found at the last ']' */
    in = repeat("[", 1, "1,", 1048575, "1]");
    log = run_split(in, strlen(in), 64u << 20, WHOLE, &max_pending);
    assert_string_equal(log, "E JSON token count limit exceeded\n");
    free(log);
    free(in);

    /* 1 + 2 * 1048574 + 3 tokens: exactly at the limit */
    in = repeat("[", 1, "1,", 1048574, "[]]");
    log = run_split(in, strlen(in), 64u << 20, WHOLE, &max_pending);
    assert_int_equal(strncmp(log, "V [1, 1, 1", 10), 0);
    free(log);
    free(in);
}

/* ---- split feeding of everything above --------------------------------------
 */

static void test_split_equivalence(void **state)
{
    static const char *inputs[] = {
        "{\"execute\":\"query-jobs\",\"id\":\"a\\u00e9\"}  {'x':[1,2.5,true]}",
        "%{\"a\":1}}{]\x80\xff\"\x01x\"\n[1,,2]1 2 3 ",
        "{\"a\":\"\\ud83d\\ude00\", \"b\": [[[[]]]], \"c\": -0.5e-3}",
    };
    enum split hows[] = {BYTES, CHUNKS};
    size_t i, j;

    (void)state;
    for (i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
        char *whole = run_split(inputs[i], strlen(inputs[i]),
                                QMP_JSON_DEFAULT_BYTES, WHOLE, NULL);

        assert_true(whole[0] != '\0');
        for (j = 0; j < 2; j++) {
            char *log = run_split(inputs[i], strlen(inputs[i]),
                                  QMP_JSON_DEFAULT_BYTES, hows[j], NULL);

            assert_string_equal(log, whole);
            free(log);
        }
        free(whole);
    }
}

/* ---- stop ---------------------------------------------------------------- */

static void test_stop_from_callback(void **state)
{
    struct collect c = {0};

    (void)state;
    c.stream = qmp_stream_new(0, collect_cb, &c);
    c.stop_after = 2;
    qmp_stream_feed(c.stream, "{\"a\":1}%{\"b\":2}{\"c\":3}", 22);
    assert_int_equal(c.events, 2);
    assert_string_equal(c.log, "V {\"a\": 1}\n" PE "stray '%'\n");
    qmp_stream_feed(c.stream, "{}", 2);
    assert_int_equal(c.events, 2);
    qmp_stream_free(c.stream);
    free(c.log);
}

/* ---- qmp_json_parse --------------------------------------------------------
 */

static void test_parse_one(void **state)
{
    const char *err = NULL;
    json_t *v;
    char *text;

    (void)state;
    v = qmp_json_parse("42", &err);
    assert_true(json_is_integer(v) && json_integer_value(v) == 42);
    json_decref(v);
    v = qmp_json_parse(" {'a': [1, \"b\"]} ", &err);
    text = qmp_json_encode(v, NULL);
    assert_string_equal(text, "{\"a\": [1, \"b\"]}");
    free(text);
    json_decref(v);

    assert_null(qmp_json_parse("", &err));
    assert_string_equal(err, "Expecting a JSON value");
    assert_null(qmp_json_parse("1 2", &err));
    assert_string_equal(err, "Expecting at most one JSON value");
    assert_null(qmp_json_parse("[1", &err));
    assert_string_equal(err, "JSON parse error, premature EOI");
    assert_null(qmp_json_parse("{\"a\":", &err));
    assert_string_equal(err, "JSON parse error, premature EOI");
    assert_null(qmp_json_parse("\"abc", &err));
    assert_string_equal(err, "JSON parse error, stray '\"abc'");
    assert_null(qmp_json_parse("nul", &err));
    assert_string_equal(err, "JSON parse error, invalid keyword 'nul'");
    assert_null(qmp_json_parse("-", &err));
    assert_string_equal(err, "JSON parse error, stray '-'");
    assert_null(qmp_json_parse("{} %", &err));
    assert_string_equal(err, "Expecting at most one JSON value");
}

/* ---- encoder --------------------------------------------------------------
 */

static void check_encode(json_t *v, const char *expected)
{
    size_t len = 0;
    char *text = qmp_json_encode(v, &len);

    assert_non_null(text);
    assert_string_equal(text, expected);
    assert_int_equal(len, strlen(expected));
    free(text);
    json_decref(v);
}

static void test_encode_layout(void **state)
{
    (void)state;
    check_encode(json_pack("{s:[], s:i}", "return", "id", 1),
                 "{\"return\": [], \"id\": 1}");
    check_encode(json_pack("{s:s, s:{s:s, s:s}}", "id", "A", "error", "class",
                           "GenericError", "desc", "x"),
                 "{\"id\": \"A\", \"error\": {\"class\": \"GenericError\", "
                 "\"desc\": \"x\"}}");
    check_encode(json_pack("{s:{}, s:[{}, [], [[]]], s:b, s:b, s:n}", "a", "b",
                           "c", 1, "d", 0, "e"),
                 "{\"a\": {}, \"b\": [{}, [], [[]]], \"c\": true, "
                 "\"d\": false, \"e\": null}");
    /* insertion order, not sorted */
    check_encode(json_pack("{s:i, s:i, s:i}", "z", 1, "a", 2, "m", 3),
                 "{\"z\": 1, \"a\": 2, \"m\": 3}");
    check_encode(json_integer(-9223372036854775807LL - 1),
                 "-9223372036854775808");
    check_encode(json_real(0.1), "0.10000000000000001");
    check_encode(json_real(1500), "1500");
    check_encode(json_real(1e300), "1.0000000000000001e+300");
    check_encode(json_string("plain"), "\"plain\"");
}

static void test_encode_strings(void **state)
{
    (void)state;
    check_encode(json_string("a/b\"c\\d\b\f\n\r\t\x01\x1f\x7f"),
                 "\"a/b\\\"c\\\\d\\b\\f\\n\\r\\t\\u0001\\u001F\\u007F\"");
    check_encode(json_string("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"
                             "\xf4\x8f\xbf\xbd"),
                 "\"\\u00E9\\u20AC\\uD83D\\uDE00\\uDBFF\\uDFFD\"");
    /* bytes jansson would refuse, printed the way QEMU prints them */
    check_encode(json_stringn_nocheck("\xff"
                                      "a\xc3"
                                      "b\xc0\x80\xed\xa0\x80",
                                      9),
                 "\"\\uFFFDa\\uFFFDb\\u0000\\uFFFD\"");
    check_encode(json_stringn("a\0b", 3), "\"a\\u0000b\"");
    /* keys are escaped the same way */
    check_encode(json_pack("{s:i}", "k\xc3\xa9\n", 1), "{\"k\\u00E9\\n\": 1}");
}

/* Long strings take the word-at-a-time paths of the lexer, the parser and
 * the encoder: every special byte at every offset within and around the
 * 8-byte words must still be seen. */
static void test_long_string_runs(void **state)
{
    static const struct {
        const char *in;  /* as written inside "..." in JSON */
        const char *val; /* decoded */
        const char *out; /* as encoded */
    } specials[] = {
        {"\\\"", "\"", "\\\""},
        {"\\\\", "\\", "\\\\"},
        {"'", "'", "'"},
        {"\x7f", "\x7f", "\\u007F"},
        {"\xc3\xa9", "\xc3\xa9", "\\u00E9"},
        {"\\n", "\n", "\\n"},
        {"~", "~", "~"},
        {" ", " ", " "},
    };
    char text[128], want_out[128], want_val[64], *enc;
    size_t i, k;

    (void)state;
    for (i = 0; i < sizeof(specials) / sizeof(specials[0]); i++) {
        for (k = 0; k <= 24; k++) {
            const char *err = NULL;
            json_t *v;

            snprintf(text, sizeof(text), "\"%.*s%s%.*s\"", (int)k,
                     "abcdefghijklmnopqrstuvwxyz", specials[i].in,
                     (int)(24 - k), "ABCDEFGHIJKLMNOPQRSTUVWXYZ");
            snprintf(want_val, sizeof(want_val), "%.*s%s%.*s", (int)k,
                     "abcdefghijklmnopqrstuvwxyz", specials[i].val,
                     (int)(24 - k), "ABCDEFGHIJKLMNOPQRSTUVWXYZ");
            snprintf(want_out, sizeof(want_out), "\"%.*s%s%.*s\"", (int)k,
                     "abcdefghijklmnopqrstuvwxyz", specials[i].out,
                     (int)(24 - k), "ABCDEFGHIJKLMNOPQRSTUVWXYZ");
            v = qmp_json_parse(text, &err);
            assert_non_null(v);
            assert_string_equal(json_string_value(v), want_val);
            enc = qmp_json_encode(v, NULL);
            assert_string_equal(enc, want_out);
            free(enc);
            json_decref(v);
        }
    }
    /* A control byte in the middle of a long run is still an error. */
    {
        const char *err = NULL;

        assert_null(qmp_json_parse("\"abcdefghijklmnop\x01qrstuvwxyz\"", &err));
        assert_non_null(err);
    }
}

static void test_encode_deep(void **state)
{
    json_t *root = json_array(), *cur = root;
    size_t i, len;
    char *text;

    (void)state;
    for (i = 0; i < 100000; i++) {
        json_t *next = i % 2 ? json_array() : json_object();

        if (json_is_array(cur)) {
            json_array_append_new(cur, next);
        } else {
            json_object_set_new(cur, "k", next);
        }
        cur = next;
    }
    text = qmp_json_encode(root, &len);
    assert_non_null(text);
    assert_int_equal(strncmp(text, "[{\"k\": [{\"k\": ", 14), 0);
    /* root "[]", 50000 times "{\"k\": " + "}", 50000 times "[]" */
    assert_int_equal(len, 2 + 50000 * 7 + 50000 * 2);
    assert_int_equal(strcmp(text + len - 4, "}]}]"), 0);
    free(text);
    json_decref(root);
}

static void check_encode_qdict(json_t *v, const char *expected)
{
    size_t len = 0;
    char *text = qmp_json_encode_qdict(v, &len);

    assert_non_null(text);
    assert_string_equal(text, expected);
    assert_int_equal(len, strlen(expected));
    free(text);
    json_decref(v);
}

/* Orders seen on qsd's wire: the greeting, events, echoed ids. */
static void test_encode_qdict_order(void **state)
{
    const char *err;

    (void)state;
    check_encode_qdict(
        json_pack("{s:i, s:i, s:i}", "major", 7, "minor", 2, "micro", 22),
        "{\"micro\": 22, \"minor\": 2, \"major\": 7}");
    check_encode_qdict(json_pack("{s:s, s:s, s:{s:s, s:s}}", "data", "x",
                                 "event", "E", "timestamp", "microseconds", "1",
                                 "seconds", "2"),
                       "{\"timestamp\": {\"seconds\": \"2\", "
                       "\"microseconds\": \"1\"}, \"event\": \"E\", "
                       "\"data\": \"x\"}");
    check_encode_qdict(json_pack("{s:i, s:[]}", "id", 1, "return"),
                       "{\"return\": [], \"id\": 1}");
    check_encode_qdict(qmp_json_parse("{\"d e\":-1,\"\\u00e9\":'',"
                                      "\"a\":5e-324,'c':[]}",
                                      &err),
                       "{\"\\u00E9\": \"\", \"d e\": -1, \"a\": "
                       "4.9406564584124654e-324, \"c\": []}");
    /* "aa" and "aq" share a bucket: newest first, like QEMU */
    check_encode_qdict(qmp_json_parse("{\"aa\":1,\"aq\":2,\"zz\":3,\"b\":4,"
                                      "\"\":5}",
                                      &err),
                       "{\"\": 5, \"aq\": 2, \"aa\": 1, \"zz\": 3, \"b\": 4}");
    check_encode_qdict(json_pack("[{}, [{s:i, s:i}]]", "z", 1, "a", 2),
                       "[{}, [{\"a\": 2, \"z\": 1}]]");
}

/* What the stream parses, the encoder prints back the same way QEMU does. */
static void test_roundtrip(void **state)
{
    const char *texts[] = {
        "{\"execute\": \"block-stream\", \"arguments\": {\"device\": \"d0\", "
        "\"speed\": 0}, \"id\": \"\\u00E9\"}",
        "[1, -2, 0.5, \"x\", [], {}, null, true, false]",
    };
    size_t i;

    (void)state;
    for (i = 0; i < 2; i++) {
        const char *err;
        json_t *v = qmp_json_parse(texts[i], &err);
        char *out = qmp_json_encode(v, NULL);

        assert_string_equal(out, texts[i]);
        free(out);
        json_decref(v);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_objects_back_to_back),
        cmocka_unit_test(test_scalars_at_top_level),
        cmocka_unit_test(test_incomplete_is_held),
        cmocka_unit_test(test_single_quotes),
        cmocka_unit_test(test_errors_basic),
        cmocka_unit_test(test_errors_stray),
        cmocka_unit_test(test_errors_control_char_in_string),
        cmocka_unit_test(test_errors_invalid_utf8),
        cmocka_unit_test(test_string_escapes),
        cmocka_unit_test(test_nul_stays_c_string),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_number_types),
        cmocka_unit_test(test_nesting_limit),
        cmocka_unit_test(test_size_limit_message),
        cmocka_unit_test(test_size_limit_long_token),
        cmocka_unit_test(test_size_limit_bounded_memory),
        cmocka_unit_test(test_token_count_limit),
        cmocka_unit_test(test_split_equivalence),
        cmocka_unit_test(test_long_string_runs),
        cmocka_unit_test(test_stop_from_callback),
        cmocka_unit_test(test_parse_one),
        cmocka_unit_test(test_encode_layout),
        cmocka_unit_test(test_encode_strings),
        cmocka_unit_test(test_encode_deep),
        cmocka_unit_test(test_encode_qdict_order),
        cmocka_unit_test(test_roundtrip),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
