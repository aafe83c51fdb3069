/* Unit tests for protocol/schema.c: argument validation with QEMU's error
 * texts (missing / unexpected / wrong type, nested paths, list elements,
 * enums, flat unions, alternates, integer ranges, uint64, null) and
 * query-qmp-schema introspection. Texts are those of qemu-storage-daemon
 * 7.2 (tests/interop/test_schema_vs_qsd.py compares the real thing). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/bdev.h"
#include "jobs/job_qmp.h"
#include "protocol/json.h"
#include "protocol/qmp.h"
#include "protocol/schema.h"

static const char test_schema[] =
    "["
    "{'enum': 'Color', 'data': ['red', 'green', {'name': 'blue'}]},"
    "{'enum': 'Kind', 'data': ['a', 'b', 'c']},"
    "{'struct': 'Inner', 'data': {'filename': 'str', '*aio': 'Color',"
    " '*n': 'int8'}},"
    "{'struct': 'Base', 'data': {'kind': 'Kind', '*name': 'str'}},"
    "{'struct': 'BranchA', 'data': {'file': 'Inner', '*list': ['Inner']}},"
    "{'struct': 'BranchB', 'data': {'*ref': 'Ref', '*refn': 'RefOrNull'}},"
    "{'union': 'U', 'base': 'Base', 'discriminator': 'kind',"
    " 'data': {'a': 'BranchA', 'b': 'BranchB'}},"
    "{'union': 'U2', 'base': {'t': 'Kind', '*x': 'int'},"
    " 'discriminator': 't', 'data': {'a': 'BranchA'}},"
    "{'alternate': 'Ref', 'data': {'definition': 'Inner', 'reference': "
    "'str'}},"
    "{'alternate': 'RefOrNull', 'data': {'definition': 'Inner',"
    " 'reference': 'str', 'null': 'null'}},"
    "{'alternate': 'NumOrColor', 'data': {'n': 'int', 'c': 'Color'}},"
    "{'struct': 'Derived', 'base': 'Inner', 'data': {'extra': 'bool'}},"
    "{'command': 'scalars', 'data': {'*i': 'int', '*i8': 'int8',"
    " '*i16': 'int16', '*i32': 'int32', '*i64': 'int64', '*u8': 'uint8',"
    " '*u16': 'uint16', '*u32': 'uint32', '*u64': 'uint64', '*sz': 'size',"
    " '*num': 'number', '*b': 'bool', '*any': 'any', '*s': 'str',"
    " '*nul': 'null', '*c': 'Color'}},"
    "{'command': 'union', 'data': 'U', 'boxed': true},"
    "{'command': 'union2', 'data': 'U2', 'boxed': true},"
    "{'command': 'derived', 'data': 'Derived', 'boxed': true},"
    "{'command': 'noargs'},"
    "{'command': 'lists', 'data': {'*l': ['int'], '*ll': [['str']],"
    " '*e': ['Color'], '*o': ['Inner']}, 'returns': ['Inner']},"
    "{'command': 'alts', 'data': {'*r': 'Ref', '*rn': 'RefOrNull',"
    " '*nc': 'NumOrColor', '*long': {'type': ['int'],"
    " 'features': ['unstable']}}},"
    "{'event': 'EV', 'data': {'x': 'int', '*k': 'Kind'}},"
    "{'event': 'EV_EMPTY'},"
    "{'event': 'EV_TYPED', 'data': 'Inner'}"
    "]";

static int setup(void **state)
{
    (void)state;
    qmp_reset();
    qmp_schema_add(test_schema);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    qmp_reset();
    return 0;
}

/* Validates `args` (JSON text) for `cmd`: NULL when valid, else the error
 * text (malloc'd). */
static char *check(const char *cmd, const char *args)
{
    struct qmp_error err = QMP_ERROR_INIT;
    const char *perr = NULL;
    json_t *v = qmp_json_parse(args, &perr);
    int ret;

    if (!v) {
        fail_msg("bad test JSON %s: %s", args, perr);
    }
    ret = schema_check_args(cmd, v, &err);
    json_decref(v);
    if (ret == 0) {
        assert_false(qmp_error_is_set(&err));
        return NULL;
    }
    assert_true(qmp_error_is_set(&err));
    assert_int_equal(err.cls, !strcmp(cmd, "nosuch")
                                  ? QMP_ERROR_COMMAND_NOT_FOUND
                                  : QMP_ERROR_GENERIC);
    return err.desc;
}

#define OK(cmd, args)                                                          \
    do {                                                                       \
        char *e_ = check(cmd, args);                                           \
        if (e_) {                                                              \
            fail_msg("%s %s: unexpected error: %s", cmd, args, e_);            \
        }                                                                      \
    } while (0)

#define BAD(cmd, args, want)                                                   \
    do {                                                                       \
        char *e_ = check(cmd, args);                                           \
        if (!e_) {                                                             \
            fail_msg("%s %s: accepted, wanted: %s", cmd, args, want);          \
        }                                                                      \
        assert_string_equal(e_, want);                                         \
        free(e_);                                                              \
    } while (0)

/* ---- validation -------------------------------------------------------- */

static void test_unknown_and_noargs(void **state)
{
    (void)state;
    BAD("nosuch", "{}", "The command nosuch has not been found");
    assert_false(schema_has_command("nosuch"));
    assert_true(schema_has_command("noargs"));
    OK("noargs", "{}");
    BAD("noargs", "{\"x\": 1}", "Parameter 'x' is unexpected");
    /* Several: QEMU's hash table order, not the text order. */
    BAD("noargs", "{\"zz\": 1, \"aa\": 2, \"b\": 3}",
        "Parameter 'aa' is unexpected");
    BAD("noargs", "{\"aa\": 1, \"zz\": 2, \"b\": 3}",
        "Parameter 'aa' is unexpected");
}

static void test_scalars(void **state)
{
    (void)state;
    OK("scalars", "{}");
    OK("scalars", "{\"i\": -5, \"i64\": 9223372036854775807, \"s\": \"x\","
                  " \"b\": false, \"num\": 1, \"any\": [1, {}],"
                  " \"c\": \"blue\"}");
    OK("scalars", "{\"num\": 2.5}");
    OK("scalars", "{\"any\": null}");
    BAD("scalars", "{\"i\": \"1\"}",
        "Invalid parameter type for 'i', expected: integer");
    BAD("scalars", "{\"i\": 1.0}",
        "Invalid parameter type for 'i', expected: integer");
    BAD("scalars", "{\"i\": 9223372036854775808}",
        "Invalid parameter type for 'i', expected: integer");
    BAD("scalars", "{\"s\": 1}",
        "Invalid parameter type for 's', expected: string");
    BAD("scalars", "{\"b\": 0}",
        "Invalid parameter type for 'b', expected: boolean");
    BAD("scalars", "{\"b\": \"true\"}",
        "Invalid parameter type for 'b', expected: boolean");
    BAD("scalars", "{\"num\": \"1\"}",
        "Invalid parameter type for 'num', expected: number");
    /* null is not "absent" for an optional member. */
    BAD("scalars", "{\"s\": null}",
        "Invalid parameter type for 's', expected: string");
    BAD("scalars", "{\"i\": null}",
        "Invalid parameter type for 'i', expected: integer");
    OK("scalars", "{\"nul\": null}");
    BAD("scalars", "{\"nul\": 0}",
        "Invalid parameter type for 'nul', expected: null");
    /* Enums. */
    BAD("scalars", "{\"c\": \"purple\"}",
        "Parameter 'c' does not accept value 'purple'");
    BAD("scalars", "{\"c\": 1}",
        "Invalid parameter type for 'c', expected: string");
    BAD("scalars", "{\"c\": \"Red\"}",
        "Parameter 'c' does not accept value 'Red'");
    /* The first declared member in error wins. */
    BAD("scalars", "{\"s\": 1, \"i\": \"x\"}",
        "Invalid parameter type for 'i', expected: integer");
    /* Type errors come before unexpected members. */
    BAD("scalars", "{\"zz\": 1, \"s\": 1}",
        "Invalid parameter type for 's', expected: string");
}

static void test_int_ranges(void **state)
{
    (void)state;
    OK("scalars", "{\"i8\": -128, \"u8\": 255, \"i16\": 32767,"
                  " \"u16\": 0, \"i32\": -2147483648, \"u32\": 4294967295}");
    BAD("scalars", "{\"i8\": 128}", "Parameter 'i8' expects int8_t");
    BAD("scalars", "{\"i8\": -129}", "Parameter 'i8' expects int8_t");
    BAD("scalars", "{\"u8\": 256}", "Parameter 'u8' expects uint8_t");
    BAD("scalars", "{\"u8\": -1}", "Parameter 'u8' expects uint8_t");
    BAD("scalars", "{\"i16\": 32768}", "Parameter 'i16' expects int16_t");
    BAD("scalars", "{\"u16\": 65536}", "Parameter 'u16' expects uint16_t");
    BAD("scalars", "{\"i32\": 2147483648}", "Parameter 'i32' expects int32_t");
    BAD("scalars", "{\"u32\": 4294967296}", "Parameter 'u32' expects uint32_t");
    /* QEMU's uintN visitors read a uint64 first (qsd 7.2: blockdev-mirror
     * granularity 1.5, true or "x"). */
    BAD("scalars", "{\"u32\": 1.5}", "Parameter 'u32' expects uint64");
    /* uint64 and size: any integer (negative ones wrap, as in QEMU),
     * integers up to 2^64 - 1, no reals. */
    OK("scalars", "{\"u64\": 0, \"sz\": 9223372036854775807}");
    OK("scalars", "{\"u64\": -1}");
    OK("scalars", "{\"u64\": 9223372036854775808}");
    OK("scalars", "{\"sz\": 18446744073709549568}");
    BAD("scalars", "{\"u64\": 18446744073709551616}",
        "Parameter 'u64' expects uint64");
    BAD("scalars", "{\"u64\": 1.5}", "Parameter 'u64' expects uint64");
    BAD("scalars", "{\"u64\": 1.0}", "Parameter 'u64' expects uint64");
    BAD("scalars", "{\"sz\": 1e3}", "Parameter 'sz' expects uint64");
    BAD("scalars", "{\"sz\": \"1\"}", "Parameter 'sz' expects uint64");
    BAD("scalars", "{\"u64\": null}", "Parameter 'u64' expects uint64");
}

static void test_nested(void **state)
{
    (void)state;
    OK("union", "{\"kind\": \"a\", \"file\": {\"filename\": \"f\"}}");
    BAD("union", "{\"kind\": \"a\", \"file\": {}}",
        "Parameter 'file.filename' is missing");
    BAD("union", "{\"kind\": \"a\", \"file\": {\"filename\": 1}}",
        "Invalid parameter type for 'file.filename', expected: string");
    BAD("union", "{\"kind\": \"a\", \"file\": {\"filename\": \"f\", \"x\": 1}}",
        "Parameter 'file.x' is unexpected");
    /* Enum and range errors name the member without its path. */
    BAD("union",
        "{\"kind\": \"a\", \"file\": {\"filename\": \"f\", \"aio\": \"x\"}}",
        "Parameter 'aio' does not accept value 'x'");
    BAD("union",
        "{\"kind\": \"a\", \"file\": {\"filename\": \"f\", \"n\": 999}}",
        "Parameter 'n' expects int8_t");
    BAD("union", "{\"kind\": \"a\", \"file\": \"f\"}",
        "Invalid parameter type for 'file', expected: object");
    BAD("union", "{\"kind\": \"a\", \"file\": null}",
        "Invalid parameter type for 'file', expected: object");
    /* Lists of objects: element paths. */
    OK("union", "{\"kind\": \"a\", \"file\": {\"filename\": \"f\"},"
                " \"list\": []}");
    BAD("union",
        "{\"kind\": \"a\", \"file\": {\"filename\": \"f\"},"
        " \"list\": [{\"filename\": \"g\"}, {}]}",
        "Parameter 'list[1].filename' is missing");
    BAD("union",
        "{\"kind\": \"a\", \"file\": {\"filename\": \"f\"},"
        " \"list\": [{\"filename\": \"g\", \"q\": 1}]}",
        "Parameter 'list[0].q' is unexpected");
    BAD("union",
        "{\"kind\": \"a\", \"file\": {\"filename\": \"f\"}, \"list\": [5]}",
        "Invalid parameter type for 'list[0]', expected: object");
    BAD("union",
        "{\"kind\": \"a\", \"file\": {\"filename\": \"f\"}, \"list\": {}}",
        "Invalid parameter type for 'list', expected: array");
    /* Derived struct: base members first. */
    OK("derived", "{\"filename\": \"f\", \"extra\": true}");
    BAD("derived", "{\"extra\": 1}", "Parameter 'filename' is missing");
    BAD("derived", "{\"filename\": \"f\"}", "Parameter 'extra' is missing");
    /* A member given in the long form {'type': T, ...}. */
    OK("alts", "{\"long\": [1, 2]}");
    BAD("alts", "{\"long\": [1, \"2\"]}",
        "Invalid parameter type for 'long[1]', expected: integer");
}

static void test_lists(void **state)
{
    (void)state;
    OK("lists", "{\"l\": [], \"ll\": [[], [\"a\"]], \"e\": [\"red\"]}");
    BAD("lists", "{\"l\": [1, \"2\"]}",
        "Invalid parameter type for 'l[1]', expected: integer");
    BAD("lists", "{\"ll\": [[\"a\"], [\"b\", 3]]}",
        "Invalid parameter type for 'll[1][1]', expected: string");
    BAD("lists", "{\"l\": 1}",
        "Invalid parameter type for 'l', expected: array");
    BAD("lists", "{\"l\": null}",
        "Invalid parameter type for 'l', expected: array");
    /* An enum in a list has no name in QEMU's message. */
    BAD("lists", "{\"e\": [\"red\", \"pink\"]}",
        "Parameter 'null' does not accept value 'pink'");
    BAD("lists", "{\"o\": [{\"filename\": \"f\", \"aio\": \"x\"}]}",
        "Parameter 'aio' does not accept value 'x'");
}

static void test_flat_union(void **state)
{
    (void)state;
    BAD("union", "{}", "Parameter 'kind' is missing");
    BAD("union", "{\"file\": {}}", "Parameter 'kind' is missing");
    BAD("union", "{\"kind\": \"z\"}",
        "Parameter 'kind' does not accept value 'z'");
    BAD("union", "{\"kind\": 1}",
        "Invalid parameter type for 'kind', expected: string");
    /* Base members are checked before the branch. */
    BAD("union", "{\"kind\": \"a\", \"name\": 1}",
        "Invalid parameter type for 'name', expected: string");
    BAD("union", "{\"kind\": \"a\"}", "Parameter 'file' is missing");
    /* A branch's members are unexpected in another branch. */
    BAD("union", "{\"kind\": \"b\", \"file\": {\"filename\": \"f\"}}",
        "Parameter 'file' is unexpected");
    OK("union", "{\"kind\": \"b\"}");
    /* A tag value without a branch has only the base members. */
    OK("union", "{\"kind\": \"c\", \"name\": \"n\"}");
    BAD("union", "{\"kind\": \"c\", \"ref\": \"r\"}",
        "Parameter 'ref' is unexpected");
    /* Anonymous base. */
    OK("union2", "{\"t\": \"a\", \"x\": 1, \"file\": {\"filename\": \"f\"}}");
    OK("union2", "{\"t\": \"b\"}");
    BAD("union2", "{\"t\": \"a\", \"x\": \"1\"}",
        "Invalid parameter type for 'x', expected: integer");
}

static void test_alternates(void **state)
{
    (void)state;
    /* BlockdevRef-like: object or string. */
    OK("union", "{\"kind\": \"b\", \"ref\": \"node0\"}");
    OK("union", "{\"kind\": \"b\", \"ref\": {\"filename\": \"f\"}}");
    BAD("union", "{\"kind\": \"b\", \"ref\": 5}",
        "Invalid parameter type for 'ref', expected: Ref");
    BAD("union", "{\"kind\": \"b\", \"ref\": null}",
        "Invalid parameter type for 'ref', expected: Ref");
    BAD("union", "{\"kind\": \"b\", \"ref\": [\"x\"]}",
        "Invalid parameter type for 'ref', expected: Ref");
    /* The chosen branch is then validated with full paths. */
    BAD("union", "{\"kind\": \"b\", \"ref\": {}}",
        "Parameter 'ref.filename' is missing");
    BAD("union", "{\"kind\": \"b\", \"ref\": {\"filename\": \"f\", \"y\": 0}}",
        "Parameter 'ref.y' is unexpected");
    /* BlockdevRefOrNull-like: null too. */
    OK("union", "{\"kind\": \"b\", \"refn\": null}");
    OK("union", "{\"kind\": \"b\", \"refn\": \"n\"}");
    OK("union", "{\"kind\": \"b\", \"refn\": {\"filename\": \"f\"}}");
    BAD("union", "{\"kind\": \"b\", \"refn\": true}",
        "Invalid parameter type for 'refn', expected: RefOrNull");
    /* Scalar + enum alternate (Qcow2OverlapChecks-like). */
    OK("alts", "{\"nc\": 3}");
    OK("alts", "{\"nc\": \"green\"}");
    BAD("alts", "{\"nc\": \"pink\"}",
        "Parameter 'nc' does not accept value 'pink'");
    /* QEMU dispatches on the QType: a real goes to the int branch. */
    BAD("alts", "{\"nc\": 1.5}",
        "Invalid parameter type for 'nc', expected: integer");
    BAD("alts", "{\"nc\": true}",
        "Invalid parameter type for 'nc', expected: NumOrColor");
    BAD("alts", "{\"nc\": {}}",
        "Invalid parameter type for 'nc', expected: NumOrColor");
}

static void test_unexpected_order(void **state)
{
    char args[2048];
    size_t off;

    (void)state;
    /* Many unexpected members (the table grows and rehashes): still one
     * deterministic answer, the same whatever the text order. */
    off = (size_t)snprintf(args, sizeof(args), "{\"kind\": \"c\"");
    for (int i = 0; i < 40; i++) {
        off += (size_t)snprintf(args + off, sizeof(args) - off, ", \"k%d\": %d",
                                i, i);
    }
    snprintf(args + off, sizeof(args) - off, "}");
    {
        char *e1 = check("union", args);
        char rev[2048];

        assert_non_null(e1);
        off = (size_t)snprintf(rev, sizeof(rev), "{");
        for (int i = 39; i >= 0; i--) {
            off += (size_t)snprintf(rev + off, sizeof(rev) - off,
                                    "\"k%d\": %d, ", i, i);
        }
        snprintf(rev + off, sizeof(rev) - off, "\"kind\": \"c\"}");
        {
            char *e2 = check("union", rev);

            assert_string_equal(e1, e2);
            free(e2);
        }
        free(e1);
    }
    /* Known members are visited (removed) before the check: only the
     * leftovers can be named. */
    BAD("union", "{\"kind\": \"c\", \"name\": \"n\", \"zz\": 1}",
        "Parameter 'zz' is unexpected");
}

/* ---- introspection ------------------------------------------------------ */

static json_t *find_info(json_t *schema, const char *name)
{
    json_t *info;
    size_t i;

    json_array_foreach(schema, i, info) {
        if (!strcmp(json_string_value(json_object_get(info, "name")), name)) {
            return info;
        }
    }
    return NULL;
}

static const char *meta(json_t *info)
{
    return json_string_value(json_object_get(info, "meta-type"));
}

/* The type of member `name` of object type info. */
static const char *member_type_name(json_t *info, const char *name,
                                    bool *optional)
{
    json_t *m;
    size_t i;

    json_array_foreach(json_object_get(info, "members"), i, m) {
        if (!strcmp(json_string_value(json_object_get(m, "name")), name)) {
            if (optional) {
                *optional = json_object_get(m, "default") != NULL;
            }
            return json_string_value(json_object_get(m, "type"));
        }
    }
    return NULL;
}

static void check_resolvable(json_t *schema, const char *type)
{
    if (!type) {
        fail_msg("missing type name");
    }
    if (!find_info(schema, type)) {
        fail_msg("type '%s' is referenced but not described", type);
    }
}

/* Every type name any entry references is described, and every name is
 * described once. */
static void check_closed(json_t *schema)
{
    json_t *info, *m;
    size_t i, j;

    json_array_foreach(schema, i, info) {
        const char *mt = meta(info);
        const char *name = json_string_value(json_object_get(info, "name"));

        assert_non_null(name);
        assert_non_null(mt);
        for (size_t k = i + 1; k < json_array_size(schema); k++) {
            assert_string_not_equal(
                name, json_string_value(
                          json_object_get(json_array_get(schema, k), "name")));
        }
        if (!strcmp(mt, "command")) {
            check_resolvable(
                schema, json_string_value(json_object_get(info, "arg-type")));
            check_resolvable(
                schema, json_string_value(json_object_get(info, "ret-type")));
        } else if (!strcmp(mt, "event")) {
            check_resolvable(
                schema, json_string_value(json_object_get(info, "arg-type")));
        } else if (!strcmp(mt, "array")) {
            check_resolvable(schema, json_string_value(json_object_get(
                                         info, "element-type")));
        } else if (!strcmp(mt, "object") || !strcmp(mt, "alternate")) {
            json_array_foreach(json_object_get(info, "members"), j, m) {
                check_resolvable(schema,
                                 json_string_value(json_object_get(m, "type")));
            }
            json_array_foreach(json_object_get(info, "variants"), j, m) {
                check_resolvable(schema,
                                 json_string_value(json_object_get(m, "type")));
            }
        } else if (!strcmp(mt, "enum")) {
            assert_true(json_is_array(json_object_get(info, "values")));
        } else {
            assert_string_equal(mt, "builtin");
            assert_non_null(json_object_get(info, "json-type"));
        }
    }
}

static void test_introspection(void **state)
{
    json_t *schema, *info, *arg, *v;
    const char *t;
    bool opt;
    size_t i;

    (void)state;
    schema = schema_introspect();
    assert_true(json_is_array(schema));
    check_closed(schema);

    /* Every command and event. */
    {
        static const char *const cmds[] = {
            "scalars", "union", "union2", "derived", "noargs", "lists", "alts"};
        for (i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
            info = find_info(schema, cmds[i]);
            assert_non_null(info);
            assert_string_equal(meta(info), "command");
        }
        for (i = 0; i < 3; i++) {
            info = find_info(schema,
                             (const char *[]){"EV", "EV_EMPTY", "EV_TYPED"}[i]);
            assert_non_null(info);
            assert_string_equal(meta(info), "event");
        }
    }

    /* A command without arguments or result: the empty object. */
    info = find_info(schema, "noargs");
    arg =
        find_info(schema, json_string_value(json_object_get(info, "arg-type")));
    assert_string_equal(meta(arg), "object");
    assert_int_equal(json_array_size(json_object_get(arg, "members")), 0);
    assert_string_equal(json_string_value(json_object_get(info, "ret-type")),
                        json_string_value(json_object_get(info, "arg-type")));

    /* Scalars: builtins, integer types all "int"; optional members have a
     * default. */
    info = find_info(schema, "scalars");
    arg =
        find_info(schema, json_string_value(json_object_get(info, "arg-type")));
    assert_string_equal(member_type_name(arg, "i8", &opt), "int");
    assert_true(opt);
    assert_string_equal(member_type_name(arg, "u64", NULL), "int");
    assert_string_equal(member_type_name(arg, "sz", NULL), "int");
    assert_string_equal(member_type_name(arg, "s", NULL), "str");
    assert_string_equal(member_type_name(arg, "num", NULL), "number");
    assert_string_equal(member_type_name(arg, "b", NULL), "bool");
    assert_string_equal(member_type_name(arg, "any", NULL), "any");
    assert_string_equal(member_type_name(arg, "nul", NULL), "null");
    {
        static const char *const bt[][2] = {
            {"int", "int"},      {"str", "string"}, {"number", "number"},
            {"bool", "boolean"}, {"any", "value"},  {"null", "null"},
        };
        for (i = 0; i < sizeof(bt) / sizeof(bt[0]); i++) {
            info = find_info(schema, bt[i][0]);
            assert_non_null(info);
            assert_string_equal(meta(info), "builtin");
            assert_string_equal(
                json_string_value(json_object_get(info, "json-type")),
                bt[i][1]);
        }
        assert_null(find_info(schema, "int8"));
        assert_null(find_info(schema, "uint64"));
    }

    /* Enums: members and values. */
    t = member_type_name(arg, "c", NULL);
    info = find_info(schema, t);
    assert_string_equal(meta(info), "enum");
    v = json_object_get(info, "values");
    assert_int_equal(json_array_size(v), 3);
    assert_string_equal(json_string_value(json_array_get(v, 2)), "blue");
    assert_string_equal(
        json_string_value(json_object_get(
            json_array_get(json_object_get(info, "members"), 0), "name")),
        "red");

    /* Lists: array types name their element type. */
    info = find_info(schema, "lists");
    arg =
        find_info(schema, json_string_value(json_object_get(info, "arg-type")));
    t = member_type_name(arg, "l", NULL);
    assert_string_equal(t, "[int]");
    info = find_info(schema, t);
    assert_string_equal(meta(info), "array");
    assert_string_equal(
        json_string_value(json_object_get(info, "element-type")), "int");
    t = member_type_name(arg, "ll", NULL);
    assert_string_equal(t, "[[str]]");
    assert_string_equal(json_string_value(json_object_get(find_info(schema, t),
                                                          "element-type")),
                        "[str]");
    info = find_info(schema, "lists");
    t = json_string_value(json_object_get(info, "ret-type"));
    assert_true(t[0] == '[');
    assert_string_equal(meta(find_info(schema, t)), "array");

    /* Flat union: members of the base, tag, variants per branch. */
    info = find_info(schema, "union");
    arg =
        find_info(schema, json_string_value(json_object_get(info, "arg-type")));
    assert_string_equal(meta(arg), "object");
    assert_string_equal(json_string_value(json_object_get(arg, "tag")), "kind");
    assert_non_null(member_type_name(arg, "kind", &opt));
    assert_false(opt);
    assert_non_null(member_type_name(arg, "name", &opt));
    assert_true(opt);
    assert_null(member_type_name(arg, "file", NULL));
    v = json_object_get(arg, "variants");
    assert_int_equal(json_array_size(v), 2);
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(v, 0), "case")), "a");
    info = find_info(schema, json_string_value(json_object_get(
                                 json_array_get(v, 0), "type")));
    assert_string_equal(meta(info), "object");
    assert_non_null(member_type_name(info, "file", &opt));
    assert_false(opt);
    /* Anonymous base: its members inline. */
    info = find_info(schema, "union2");
    arg =
        find_info(schema, json_string_value(json_object_get(info, "arg-type")));
    assert_string_equal(json_string_value(json_object_get(arg, "tag")), "t");
    assert_non_null(member_type_name(arg, "x", NULL));

    /* Derived struct: base members included, base first. */
    info = find_info(schema, "derived");
    arg =
        find_info(schema, json_string_value(json_object_get(info, "arg-type")));
    assert_string_equal(
        json_string_value(json_object_get(
            json_array_get(json_object_get(arg, "members"), 0), "name")),
        "filename");
    assert_non_null(member_type_name(arg, "extra", NULL));

    /* Alternates: members list the branch types. */
    info = find_info(schema, "alts");
    arg =
        find_info(schema, json_string_value(json_object_get(info, "arg-type")));
    info = find_info(schema, member_type_name(arg, "rn", NULL));
    assert_string_equal(meta(info), "alternate");
    v = json_object_get(info, "members");
    assert_int_equal(json_array_size(v), 3);
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(v, 1), "type")),
        "str");
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(v, 2), "type")),
        "null");
    assert_string_equal(
        meta(find_info(schema, json_string_value(json_object_get(
                                   json_array_get(v, 0), "type")))),
        "object");
    /* The long member form is described like the short one. */
    assert_string_equal(member_type_name(arg, "long", NULL), "[int]");

    /* Events: arg-type of the data. */
    info = find_info(schema, "EV");
    arg =
        find_info(schema, json_string_value(json_object_get(info, "arg-type")));
    assert_string_equal(member_type_name(arg, "x", NULL), "int");
    info = find_info(schema, "EV_EMPTY");
    arg =
        find_info(schema, json_string_value(json_object_get(info, "arg-type")));
    assert_int_equal(json_array_size(json_object_get(arg, "members")), 0);

    /* Only types in use appear; named types are masked ("Color" is not a
     * name on the wire, as with QEMU's numbered names). */
    assert_null(find_info(schema, "Color"));
    json_decref(schema);
}

/* The daemon's whole table (core, block layer, jobs) closes too, and
 * describes every command query-commands lists. */
static void test_core_schema(void **state)
{
    json_t *schema, *names, *n;
    size_t i;

    (void)state;
    qmp_core_init();
    bdev_qmp_init();
    job_qmp_init();
    schema = schema_introspect();
    check_closed(schema);
    names = schema_command_names();
    assert_true(json_array_size(names) >= 20);
    json_array_foreach(names, i, n) {
        json_t *info = find_info(schema, json_string_value(n));

        assert_non_null(info);
        assert_string_equal(meta(info), "command");
    }
    assert_non_null(find_info(schema, "SHUTDOWN"));
    assert_non_null(find_info(schema, "blockdev-add"));
    assert_non_null(find_info(schema, "block-stream"));
    assert_non_null(find_info(schema, "BLOCK_JOB_COMPLETED"));
    assert_non_null(find_info(schema, "JOB_STATUS_CHANGE"));
    json_decref(names);
    json_decref(schema);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_unknown_and_noargs, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_scalars, setup, teardown),
        cmocka_unit_test_setup_teardown(test_int_ranges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nested, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lists, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flat_union, setup, teardown),
        cmocka_unit_test_setup_teardown(test_alternates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unexpected_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_introspection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_core_schema, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
