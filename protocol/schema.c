/* A small QAPI: definitions in QAPI syntax, validation with the texts of
 * QEMU's QObject input visitor, and SchemaInfo introspection, all from the
 * same definitions so dispatch and query-qmp-schema cannot disagree. */
#include "protocol/schema.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/json.h"

static json_t *types;    /* name -> enum/struct/union/alternate definition */
static json_t *commands; /* name -> command definition */
static json_t *events;   /* name -> event definition */

static const char *const builtins[][2] = {
    /* QAPI name, JSON type it takes (as introspection names it) */
    {"str", "string"},   {"number", "number"}, {"int", "int"},
    {"int8", "int"},     {"int16", "int"},     {"int32", "int"},
    {"int64", "int"},    {"uint8", "int"},     {"uint16", "int"},
    {"uint32", "int"},   {"uint64", "int"},    {"size", "int"},
    {"bool", "boolean"}, {"null", "null"},     {"any", "value"},
};

static const char *builtin_json_type(const char *name)
{
    for (size_t i = 0; i < sizeof(builtins) / sizeof(builtins[0]); i++) {
        if (!strcmp(builtins[i][0], name)) {
            return builtins[i][1];
        }
    }
    return NULL;
}

static void ensure_tables(void)
{
    if (!types) {
        types = json_object();
        commands = json_object();
        events = json_object();
    }
}

void schema_reset(void)
{
    json_decref(types);
    json_decref(commands);
    json_decref(events);
    types = commands = events = NULL;
}

static void __attribute__((noreturn))
schema_bug(const char *what, const char *text)
{
    fprintf(stderr, "blockjobd: bad built-in schema (%s): %.200s\n", what,
            text);
    abort();
}

void schema_add(const char *qapi)
{
    char *text = strdup(qapi);
    json_error_t jerr;
    json_t *defs, *def;
    size_t i;

    if (!text) {
        abort();
    }
    /* Built-in schema strings use QAPI's single quotes and never contain a
     * quote character themselves. */
    for (char *p = text; *p; p++) {
        if (*p == '\'') {
            *p = '"';
        }
    }
    defs = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (!defs || !json_is_array(defs)) {
        schema_bug(jerr.text, qapi);
    }
    ensure_tables();
    json_array_foreach(defs, i, def) {
        static const char *const kinds[] = {"enum", "struct", "union",
                                            "alternate"};
        const char *name;
        bool done = false;

        for (size_t k = 0; k < 4 && !done; k++) {
            name = json_string_value(json_object_get(def, kinds[k]));
            if (name) {
                json_object_set_new(def, "meta", json_string(kinds[k]));
                json_object_set(types, name, def);
                done = true;
            }
        }
        if ((name = json_string_value(json_object_get(def, "command")))) {
            json_object_set(commands, name, def);
            done = true;
        }
        if ((name = json_string_value(json_object_get(def, "event")))) {
            json_object_set(events, name, def);
            done = true;
        }
        if (!done) {
            schema_bug("unknown definition", qapi);
        }
    }
    json_decref(defs);
    free(text);
}

bool schema_has_command(const char *name)
{
    return commands && json_object_get(commands, name);
}

json_t *schema_command_names(void)
{
    json_t *names = json_array();
    const char *name;
    json_t *def;

    if (commands) {
        json_object_foreach(commands, name, def) {
            json_array_append_new(names, json_string(name));
        }
    }
    return names;
}

/* ---- validation ------------------------------------------------------ */

static char *join_path(const char *parent, const char *member)
{
    char *s;

    if (asprintf(&s, "%s%s%s", parent ? parent : "", parent ? "." : "",
                 member) < 0) {
        abort();
    }
    return s;
}

static int type_error(struct qmp_error *err, const char *full,
                      const char *expected)
{
    qmp_error_setg(err, "Invalid parameter type for '%s', expected: %s",
                   full ? full : "null", expected);
    return -EINVAL;
}

static int check_value(json_t *v, json_t *type, const char *full,
                       const char *bare, struct qmp_error *err);
static int check_members(json_t *v, json_t *def, const char *full, json_t *seen,
                         struct qmp_error *err);

/* A member's type: 'T', ['T'] or {'type': ..., ...}. */
static json_t *member_type(json_t *spec)
{
    if (json_is_object(spec)) {
        return json_object_get(spec, "type");
    }
    return spec;
}

static int check_data_members(json_t *v, json_t *data, const char *full,
                              json_t *seen, struct qmp_error *err)
{
    const char *key;
    json_t *spec;

    json_object_foreach(data, key, spec) {
        bool optional = key[0] == '*';
        const char *name = optional ? key + 1 : key;
        json_t *val = json_object_get(v, name);
        char *child = join_path(full, name);
        int ret = 0;

        json_object_set_new(seen, name, json_true());
        if (!val) {
            if (!optional) {
                qmp_error_setg(err, "Parameter '%s' is missing", child);
                ret = -EINVAL;
            }
        } else {
            ret = check_value(val, member_type(spec), child, name, err);
        }
        free(child);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/* `def` is a struct/union definition or an inline member dict. */
static int check_members(json_t *v, json_t *def, const char *full, json_t *seen,
                         struct qmp_error *err)
{
    const char *meta = json_string_value(json_object_get(def, "meta"));
    json_t *base, *data;
    int ret;

    if (!meta) {
        return check_data_members(v, def, full, seen, err);
    }
    base = json_object_get(def, "base");
    if (json_is_string(base)) {
        json_t *bdef = json_object_get(types, json_string_value(base));
        if (!bdef) {
            schema_bug("unknown base", json_string_value(base));
        }
        ret = check_members(v, bdef, full, seen, err);
    } else if (json_is_object(base)) {
        ret = check_data_members(v, base, full, seen, err);
    } else {
        ret = 0;
    }
    if (ret < 0) {
        return ret;
    }
    data = json_object_get(def, "data");
    if (!strcmp(meta, "struct")) {
        return data ? check_data_members(v, data, full, seen, err) : 0;
    }
    /* Flat union: the discriminator (a base member, already checked to be
     * a valid enum value) picks the branch. */
    {
        const char *disc =
            json_string_value(json_object_get(def, "discriminator"));
        const char *tag = json_string_value(json_object_get(v, disc));
        json_t *branch = tag ? json_object_get(data, tag) : NULL;
        json_t *bdef;

        if (!branch) {
            return 0;
        }
        bdef = json_object_get(types, json_string_value(branch));
        if (!bdef) {
            schema_bug("unknown union branch", json_string_value(branch));
        }
        return check_members(v, bdef, full, seen, err);
    }
}

/* Which unexpected member QEMU names first. Its input visitor puts the
 * object's keys (in QDict order) into a GLib hash table, removes each
 * member as it is visited, and reports the first key left in the table's
 * slot order. That order is reproduced here: GLib's string hash, slot
 * index (hash * 11) % prime, quadratic probing, tombstones, and resizing
 * (in-place rehash with eviction) when it grows or shrinks. */
struct ghash {
    uint32_t *hashes; /* 0 unused, 1 tombstone, else the key's hash */
    const char **keys;
    uint32_t size, mod, mask, nnodes, noccupied;
};

static uint32_t ghash_str(const char *key)
{
    uint32_t h = 5381;

    for (const signed char *p = (const signed char *)key; *p; p++) {
        h = (h << 5) + h + (uint32_t)(int32_t)*p;
    }
    return h < 2 ? 2 : h;
}

static void ghash_set_shift(struct ghash *t, unsigned shift)
{
    static const uint32_t prime_mod[] = {
        1,       2,       3,       7,        13,       31,      61,
        127,     251,     509,     1021,     2039,     4093,    8191,
        16381,   32749,   65521,   131071,   262139,   524287,  1048573,
        2097143, 4194301, 8388593, 16777213, 33554393, 67108859};

    if (shift >= sizeof(prime_mod) / sizeof(prime_mod[0])) {
        abort(); /* far beyond any message size bound */
    }
    t->size = 1u << shift;
    t->mod = prime_mod[shift];
    t->mask = t->size - 1;
}

static void ghash_resize(struct ghash *t)
{
    uint32_t old_size = t->size, n = (uint32_t)(t->nnodes * 1.333);
    unsigned shift = 0;
    bool *moved;

    while (n) {
        shift++;
        n >>= 1;
    }
    ghash_set_shift(t, shift < 3 ? 3 : shift);
    if (t->size > old_size) {
        t->hashes = realloc(t->hashes, t->size * sizeof(*t->hashes));
        t->keys = realloc(t->keys, t->size * sizeof(*t->keys));
        if (!t->hashes || !t->keys) {
            abort();
        }
        memset(t->hashes + old_size, 0,
               (t->size - old_size) * sizeof(*t->hashes));
    }
    moved = calloc(t->size > old_size ? t->size : old_size, sizeof(*moved));
    if (!moved) {
        abort();
    }
    for (uint32_t i = 0; i < old_size; i++) {
        uint32_t h = t->hashes[i];
        const char *key;

        if (h < 2) {
            t->hashes[i] = 0;
            continue;
        }
        if (moved[i]) {
            continue;
        }
        t->hashes[i] = 0;
        key = t->keys[i];
        for (;;) {
            uint32_t idx = (h * 11) % t->mod, step = 0, replaced;
            const char *rkey;

            while (moved[idx]) {
                idx = (idx + ++step) & t->mask;
            }
            moved[idx] = true;
            replaced = t->hashes[idx];
            rkey = t->keys[idx];
            t->hashes[idx] = h;
            t->keys[idx] = key;
            if (replaced < 2) {
                break;
            }
            h = replaced;
            key = rkey;
        }
    }
    free(moved);
    t->noccupied = t->nnodes;
}

static void ghash_maybe_resize(struct ghash *t)
{
    if ((t->size > t->nnodes * 4 && t->size > 8) ||
        t->size <= t->noccupied + t->noccupied / 16) {
        ghash_resize(t);
    }
}

/* The slot of `key`, or the slot an insertion would use. */
static uint32_t ghash_lookup(struct ghash *t, const char *key, uint32_t h)
{
    uint32_t idx = (h * 11) % t->mod, step = 0, tomb = 0;
    bool have_tomb = false;

    while (t->hashes[idx] != 0) {
        if (t->hashes[idx] == h && !strcmp(t->keys[idx], key)) {
            return idx;
        }
        if (t->hashes[idx] == 1 && !have_tomb) {
            tomb = idx;
            have_tomb = true;
        }
        idx = (idx + ++step) & t->mask;
    }
    return have_tomb ? tomb : idx;
}

static void ghash_insert(struct ghash *t, const char *key)
{
    uint32_t h = ghash_str(key), idx = ghash_lookup(t, key, h);
    uint32_t old = t->hashes[idx];

    if (old >= 2) {
        return;
    }
    t->hashes[idx] = h;
    t->keys[idx] = key;
    t->nnodes++;
    if (old == 0) {
        t->noccupied++;
        ghash_maybe_resize(t);
    }
}

static void ghash_remove(struct ghash *t, const char *key)
{
    uint32_t idx = ghash_lookup(t, key, ghash_str(key));

    if (t->hashes[idx] < 2) {
        return;
    }
    t->hashes[idx] = 1;
    t->nnodes--;
    ghash_maybe_resize(t);
}

/* The first member of `v` that is not in `seen`, as QEMU reports it, or
 * NULL. `seen` lists the declared members in the order they were visited. */
static const char *first_unexpected(json_t *v, json_t *seen)
{
    struct ghash t = {0};
    const char **keys, *found = NULL;
    const char *key;
    json_t *val;
    size_t n;

    keys = qmp_json_qdict_keys(v, &n);
    if (n == 0) {
        return NULL;
    }
    ghash_set_shift(&t, 3);
    t.hashes = calloc(t.size, sizeof(*t.hashes));
    t.keys = calloc(t.size, sizeof(*t.keys));
    if (!t.hashes || !t.keys) {
        abort();
    }
    for (size_t i = 0; i < n; i++) {
        ghash_insert(&t, keys[i]);
    }
    json_object_foreach(seen, key, val) {
        ghash_remove(&t, key);
    }
    for (uint32_t i = 0; i < t.size && !found; i++) {
        if (t.hashes[i] >= 2) {
            found = t.keys[i];
        }
    }
    free(t.hashes);
    free(t.keys);
    free(keys);
    return found;
}

static int check_object(json_t *v, json_t *def, const char *full,
                        struct qmp_error *err)
{
    json_t *seen;
    const char *key;
    int ret;

    if (!json_is_object(v)) {
        return type_error(err, full, "object");
    }
    seen = json_object();
    ret = check_members(v, def, full, seen, err);
    if (ret == 0 && (key = first_unexpected(v, seen))) {
        char *child = join_path(full, key);

        qmp_error_setg(err, "Parameter '%s' is unexpected", child);
        free(child);
        ret = -EINVAL;
    }
    json_decref(seen);
    return ret;
}

static int check_int_range(json_t *v, const char *name, const char *full,
                           const char *bare, struct qmp_error *err)
{
    static const struct {
        const char *name;
        long long min, max;
    } ranges[] = {
        {"int8", -128, 127},
        {"int16", -32768, 32767},
        {"int32", -2147483648LL, 2147483647LL},
        {"uint8", 0, 255},
        {"uint16", 0, 65535},
        {"uint32", 0, 4294967295LL},
    };
    long long n;

    if (!strcmp(name, "uint64") || !strcmp(name, "size")) {
        /* QEMU takes any integer (negative ones wrap, for compatibility)
         * but no real. Integers beyond int64 reach us as reals (jansson
         * has no uint64): take those, not 1.0 or 1e3. */
        if (json_is_integer(v)) {
            return 0;
        }
        if (json_is_real(v) && json_real_value(v) >= 9223372036854775808.0 &&
            json_real_value(v) < 18446744073709551616.0 &&
            json_real_value(v) ==
                (double)(unsigned long long)json_real_value(v)) {
            return 0;
        }
        qmp_error_setg(err, "Parameter '%s' expects uint64",
                       full ? full : "null");
        return -EINVAL;
    }
    if (!json_is_integer(v)) {
        if (!strncmp(name, "uint", 4)) {
            /* QEMU's uintN visitors read a uint64 first. */
            qmp_error_setg(err, "Parameter '%s' expects uint64",
                           full ? full : "null");
            return -EINVAL;
        }
        return type_error(err, full, "integer");
    }
    n = json_integer_value(v);
    for (size_t i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++) {
        if (!strcmp(ranges[i].name, name) &&
            (n < ranges[i].min || n > ranges[i].max)) {
            /* QEMU names the C type: "expects int32_t". */
            qmp_error_setg(err, "Parameter '%s' expects %s_t",
                           bare ? bare : "null", name);
            return -EINVAL;
        }
    }
    return 0;
}

static int check_builtin(json_t *v, const char *name, const char *jtype,
                         const char *full, const char *bare,
                         struct qmp_error *err)
{
    if (!strcmp(jtype, "string")) {
        return json_is_string(v) ? 0 : type_error(err, full, "string");
    }
    if (!strcmp(jtype, "int")) {
        return check_int_range(v, name, full, bare, err);
    }
    if (!strcmp(jtype, "number")) {
        return json_is_number(v) ? 0 : type_error(err, full, "number");
    }
    if (!strcmp(jtype, "boolean")) {
        return json_is_boolean(v) ? 0 : type_error(err, full, "boolean");
    }
    if (!strcmp(jtype, "null")) {
        return json_is_null(v) ? 0 : type_error(err, full, "null");
    }
    return 0; /* any */
}

static int check_enum(json_t *v, json_t *def, const char *full,
                      const char *bare, struct qmp_error *err)
{
    json_t *val;
    size_t i;

    if (!json_is_string(v)) {
        return type_error(err, full, "string");
    }
    json_array_foreach(json_object_get(def, "data"), i, val) {
        const char *name = json_is_object(val)
                               ? json_string_value(json_object_get(val, "name"))
                               : json_string_value(val);
        if (name && !strcmp(name, json_string_value(v))) {
            return 0;
        }
    }
    qmp_error_setg(err, "Parameter '%s' does not accept value '%s'",
                   bare ? bare : "null", json_string_value(v));
    return -EINVAL;
}

/* Does JSON value `v` fit the alternate branch of type `t`? */
static bool alternate_fits(json_t *v, const char *t)
{
    const char *jtype = builtin_json_type(t);
    json_t *def;
    const char *meta;

    if (jtype) {
        if (!strcmp(jtype, "string")) {
            return json_is_string(v);
        }
        /* QEMU picks the branch by QType, and QNum holds integers and
         * reals alike: 1.5 goes to an int branch and fails there. */
        if (!strcmp(jtype, "int") || !strcmp(jtype, "number")) {
            return json_is_number(v);
        }
        if (!strcmp(jtype, "boolean")) {
            return json_is_boolean(v);
        }
        if (!strcmp(jtype, "null")) {
            return json_is_null(v);
        }
        return true;
    }
    def = json_object_get(types, t);
    meta = json_string_value(json_object_get(def, "meta"));
    if (meta && !strcmp(meta, "enum")) {
        return json_is_string(v);
    }
    return json_is_object(v);
}

static int check_alternate(json_t *v, json_t *def, const char *name,
                           const char *full, const char *bare,
                           struct qmp_error *err)
{
    const char *key;
    json_t *t;

    json_object_foreach(json_object_get(def, "data"), key, t) {
        if (alternate_fits(v, json_string_value(t))) {
            return check_value(v, t, full, bare, err);
        }
    }
    qmp_error_setg(err, "Invalid parameter type for '%s', expected: %s",
                   bare ? bare : "null", name);
    return -EINVAL;
}

static int check_value(json_t *v, json_t *type, const char *full,
                       const char *bare, struct qmp_error *err)
{
    const char *name, *jtype, *meta;
    json_t *def;

    if (json_is_array(type)) {
        json_t *elem;
        size_t i;

        if (!json_is_array(v)) {
            return type_error(err, full, "array");
        }
        json_array_foreach(v, i, elem) {
            char *child;
            int ret;

            if (asprintf(&child, "%s[%zu]", full ? full : "", i) < 0) {
                abort();
            }
            ret = check_value(elem, json_array_get(type, 0), child, NULL, err);
            free(child);
            if (ret < 0) {
                return ret;
            }
        }
        return 0;
    }
    if (json_is_object(type)) { /* inline struct */
        return check_object(v, type, full, err);
    }
    name = json_string_value(type);
    if (!name) {
        schema_bug("bad type expression", full ? full : "?");
    }
    jtype = builtin_json_type(name);
    if (jtype) {
        return check_builtin(v, name, jtype, full, bare, err);
    }
    def = json_object_get(types, name);
    if (!def) {
        schema_bug("unknown type", name);
    }
    meta = json_string_value(json_object_get(def, "meta"));
    if (!strcmp(meta, "enum")) {
        return check_enum(v, def, full, bare, err);
    }
    if (!strcmp(meta, "alternate")) {
        return check_alternate(v, def, name, full, bare, err);
    }
    return check_object(v, def, full, err);
}

int schema_check_args(const char *command, json_t *args, struct qmp_error *err)
{
    json_t *def = commands ? json_object_get(commands, command) : NULL;
    json_t *data;

    if (!def) {
        qmp_error_set(err, QMP_ERROR_COMMAND_NOT_FOUND,
                      "The command %s has not been found", command);
        return -ENOENT;
    }
    data = json_object_get(def, "data");
    if (!data) {
        /* No arguments declared: any member is unexpected. */
        data = json_object();
        int ret = check_object(args, data, NULL, err);
        json_decref(data);
        return ret;
    }
    return check_value(args, data, NULL, NULL, err);
}

/* ---- introspection --------------------------------------------------- */

struct introspect {
    json_t *out;   /* the SchemaInfo array */
    json_t *names; /* type name or inline marker -> masked name */
    json_t *queue; /* types to describe: [masked name, type expression] */
    int next;
};

static const char *use_type(struct introspect *in, json_t *type);

static const char *intern(struct introspect *in, const char *key, json_t *type)
{
    json_t *known = json_object_get(in->names, key);
    char buf[32];

    if (known) {
        return json_string_value(known);
    }
    snprintf(buf, sizeof(buf), "%d", in->next++);
    json_object_set_new(in->names, key, json_string(buf));
    json_array_append_new(in->queue, json_pack("[s, O]", buf, type));
    return json_string_value(json_object_get(in->names, key));
}

static const char *use_type(struct introspect *in, json_t *type)
{
    const char *name;
    char key[48];

    if (!type || (json_is_object(type) && json_object_size(type) == 0)) {
        json_t *empty = json_object();
        const char *masked = intern(in, "q_empty", empty);

        json_decref(empty); /* the queue holds its own reference */
        return masked;
    }
    if (json_is_object(type)) {
        /* Inline member dicts get a private name each. */
        snprintf(key, sizeof(key), "q_obj_%p", (void *)type);
        return intern(in, key, type);
    }
    if (json_is_array(type)) {
        const char *elem = use_type(in, json_array_get(type, 0));
        char *aname;
        json_t *known;

        if (asprintf(&aname, "[%s]", elem) < 0) {
            abort();
        }
        known = json_object_get(in->names, aname);
        if (!known) {
            json_object_set_new(in->names, aname, json_string(aname));
            json_array_append_new(in->queue, json_pack("[s, s]", aname, elem));
            known = json_object_get(in->names, aname);
        }
        free(aname);
        return json_string_value(known);
    }
    name = json_string_value(type);
    if (builtin_json_type(name)) {
        const char *jt = builtin_json_type(name);
        /* Every integer type is introspected as plain "int". */
        if (!strcmp(jt, "int")) {
            name = "int";
        }
        if (!json_object_get(in->names, name)) {
            json_object_set_new(in->names, name, json_string(name));
            json_array_append_new(
                in->out, json_pack("{s:s, s:s, s:s}", "name", name, "meta-type",
                                   "builtin", "json-type", jt));
        }
        return json_string_value(json_object_get(in->names, name));
    }
    return intern(in, name, type);
}

static void add_members(struct introspect *in, json_t *members, json_t *data)
{
    const char *key;
    json_t *spec;

    json_object_foreach(data, key, spec) {
        bool optional = key[0] == '*';
        json_t *m = json_pack("{s:s, s:s}", "name", optional ? key + 1 : key,
                              "type", use_type(in, member_type(spec)));
        if (optional) {
            json_object_set_new(m, "default", json_null());
        }
        json_array_append_new(members, m);
    }
}

static void add_object_members(struct introspect *in, json_t *members,
                               json_t *def)
{
    json_t *base = json_object_get(def, "base");

    if (json_is_string(base)) {
        add_object_members(in, members,
                           json_object_get(types, json_string_value(base)));
    } else if (json_is_object(base)) {
        add_members(in, members, base);
    }
    if (!strcmp(json_string_value(json_object_get(def, "meta")), "struct") &&
        json_object_get(def, "data")) {
        add_members(in, members, json_object_get(def, "data"));
    }
}

static void describe(struct introspect *in, const char *masked, json_t *type)
{
    json_t *info = json_pack("{s:s}", "name", masked);
    const char *meta;
    json_t *def;

    if (masked[0] == '[') {
        json_object_set_new(info, "meta-type", json_string("array"));
        json_object_set(info, "element-type", type);
        json_array_append_new(in->out, info);
        return;
    }
    if (json_is_object(type)) { /* inline or empty object */
        json_t *members = json_array();
        add_members(in, members, type);
        json_object_set_new(info, "meta-type", json_string("object"));
        json_object_set_new(info, "members", members);
        json_array_append_new(in->out, info);
        return;
    }
    def = json_object_get(types, json_string_value(type));
    meta = json_string_value(json_object_get(def, "meta"));
    if (!strcmp(meta, "enum")) {
        json_t *members = json_array(), *values = json_array(), *v;
        size_t i;

        json_array_foreach(json_object_get(def, "data"), i, v) {
            const char *n = json_is_object(v)
                                ? json_string_value(json_object_get(v, "name"))
                                : json_string_value(v);
            json_array_append_new(members, json_pack("{s:s}", "name", n));
            json_array_append_new(values, json_string(n));
        }
        json_object_set_new(info, "meta-type", json_string("enum"));
        json_object_set_new(info, "members", members);
        json_object_set_new(info, "values", values);
    } else if (!strcmp(meta, "alternate")) {
        json_t *members = json_array(), *t;
        const char *key;

        json_object_foreach(json_object_get(def, "data"), key, t) {
            json_array_append_new(members,
                                  json_pack("{s:s}", "type", use_type(in, t)));
        }
        json_object_set_new(info, "meta-type", json_string("alternate"));
        json_object_set_new(info, "members", members);
    } else {
        json_t *members = json_array();

        add_object_members(in, members, def);
        json_object_set_new(info, "meta-type", json_string("object"));
        json_object_set_new(info, "members", members);
        if (!strcmp(meta, "union")) {
            json_t *variants = json_array(), *t;
            const char *key;

            json_object_set(info, "tag", json_object_get(def, "discriminator"));
            json_object_foreach(json_object_get(def, "data"), key, t) {
                json_array_append_new(variants,
                                      json_pack("{s:s, s:s}", "case", key,
                                                "type", use_type(in, t)));
            }
            json_object_set_new(info, "variants", variants);
        }
    }
    json_array_append_new(in->out, info);
}

json_t *schema_introspect(void)
{
    struct introspect in = {json_array(), json_object(), json_array(), 0};
    const char *name;
    json_t *def;
    size_t done = 0;

    ensure_tables();
    json_object_foreach(commands, name, def) {
        json_t *info =
            json_pack("{s:s, s:s}", "name", name, "meta-type", "command");
        json_object_set_new(
            info, "arg-type",
            json_string(use_type(&in, json_object_get(def, "data"))));
        json_object_set_new(
            info, "ret-type",
            json_string(use_type(&in, json_object_get(def, "returns"))));
        if (json_is_true(json_object_get(def, "allow-oob"))) {
            json_object_set_new(info, "allow-oob", json_true());
        }
        json_array_append_new(in.out, info);
    }
    json_object_foreach(events, name, def) {
        json_t *info =
            json_pack("{s:s, s:s}", "name", name, "meta-type", "event");
        json_object_set_new(
            info, "arg-type",
            json_string(use_type(&in, json_object_get(def, "data"))));
        json_array_append_new(in.out, info);
    }
    /* Describing a type may queue more types. */
    while (done < json_array_size(in.queue)) {
        json_t *item = json_array_get(in.queue, done++);
        describe(&in, json_string_value(json_array_get(item, 0)),
                 json_array_get(item, 1));
    }
    json_decref(in.names);
    json_decref(in.queue);
    return in.out;
}
