/* What nodes are called: node-name checks, implicit #blockN names, the
 * file names query-named-block-nodes reports and json:{...} names (QEMU's
 * bdrv_refresh_filename), and the backing name an image header gives. */
#include "backends/bdev_core.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NODE_NAME_MAX 31

static uint64_t implicit_id;
static uint32_t name_rand;

/* ---- node names --------------------------------------------------------- */

static bool name_wellformed(const char *s)
{
    if (!isalpha((unsigned char)s[0])) {
        return false;
    }
    for (const char *p = s + 1; *p; p++) {
        if (!isalnum((unsigned char)*p) && !strchr("-._", *p)) {
            return false;
        }
    }
    return true;
}

/* Any node of that name, also one still opening. */
static bool name_taken(const char *name)
{
    for (struct bdev *bs = bdev_all_nodes(); bs; bs = bs->next) {
        if (strcmp(bs->node_name, name) == 0) {
            return true;
        }
    }
    return false;
}

int bdev_check_node_name(const char *name, struct qmp_error *err)
{
    if (!name_wellformed(name)) {
        qmp_error_setg(err, "Invalid node-name: '%s'", name);
        return -EINVAL;
    }
    if (name_taken(name)) {
        qmp_error_setg(err, "Duplicate nodes with node-name='%s'", name);
        return -EEXIST;
    }
    if (strlen(name) > NODE_NAME_MAX) {
        qmp_error_setg(err, "Node name too long");
        return -EINVAL;
    }
    return 0;
}

char *bdev_implicit_name(void)
{
    char *s;

    /* Like QEMU: a counter and two pseudo-random digits. */
    name_rand = name_rand * 1103515245u + 12345u;
    if (asprintf(&s, "#block%llu%02u", (unsigned long long)implicit_id++,
                 (name_rand >> 16) % 100) < 0) {
        return NULL;
    }
    return s;
}

/* QEMU's QDict: 512 buckets by tdb_hash, iterated in bucket order, newest
 * entry first within a bucket. */
static unsigned qdict_bucket(const char *key)
{
    uint32_t v = 0x238F13AFu * (uint32_t)strlen(key);

    for (size_t i = 0; key[i]; i++) {
        v += (uint32_t)(unsigned char)key[i] << (i * 5 % 24);
    }
    return (1103515243u * v + 12345u) % 512;
}

static json_t *qdict_ordered(json_t *o)
{
    json_t *out, *v;
    const char *k;

    if (!json_is_object(o)) {
        return json_incref(o);
    }
    out = json_object();
    for (unsigned b = 0; b < 512; b++) {
        const char *keys[64];
        size_t n = 0;

        json_object_foreach(o, k, v) {
            if (qdict_bucket(k) == b && n < 64) {
                keys[n++] = k;
            }
        }
        while (n > 0) {
            n--;
            json_object_set_new(out, keys[n],
                                qdict_ordered(json_object_get(o, keys[n])));
        }
    }
    return out;
}

char *bdev_json_filename(json_t *opts)
{
    json_t *ordered = qdict_ordered(opts);
    char *enc = json_dumps(ordered, JSON_PRESERVE_ORDER);
    char *s = NULL;

    json_decref(ordered);
    if (enc && asprintf(&s, "json:%s", enc) < 0) {
        s = NULL;
    }
    free(enc);
    return s;
}

static json_t *default_full_opts(struct bdev *bs)
{
    json_t *o = json_object();

    json_object_set_new(o, "driver", json_string(bs->drv->name));
    if (bs->file && bs->file->full_opts) {
        json_object_set(o, "file", bs->file->full_opts);
    }
    return o;
}

void bdev_set_default_filename(struct bdev *bs)
{
    if (!bs->full_opts) {
        bs->full_opts = default_full_opts(bs);
    }
    if (bs->filename) {
        return;
    }
    if (bs->file && bs->file->filename &&
        strncmp(bs->file->filename, "json:", 5) != 0) {
        bs->filename = strdup(bs->file->filename);
        return;
    }
    if (bs->file) {
        bs->filename = bdev_json_filename(bs->full_opts);
    }
}

/* The backing name in the image header (what the driver reports as
 * "backing-filename"), or NULL. */
char *bdev_header_backing(struct bdev *bs)
{
    json_t *info, *v;
    char *name = NULL;

    if (!bs->drv->info) {
        return NULL;
    }
    info = json_object();
    bs->drv->info(bs, info);
    v = json_object_get(info, "backing-filename");
    if (json_is_string(v) && json_string_value(v)[0]) {
        name = strdup(json_string_value(v));
    }
    json_decref(info);
    return name;
}

/* ---- reported file names ------------------------------------------------ */

static bool is_json_name(const char *s)
{
    return s && strncmp(s, "json:", 5) == 0;
}

/* An implicit filter (and a job's filter, always) stands in for its child
 * in every name. */
static bool transparent(const struct bdev *bs)
{
    return bs->drv->is_filter && bs->file &&
           (bs->implicit || bs->drv->named_as_child);
}

static json_t *query_opts(struct bdev *bs);

/* QEMU's bdrv_backing_overridden(): the backing is not what the header
 * (as remembered at open or at the last backing change) names. */
static bool backing_overridden(struct bdev *bs)
{
    char *name;
    bool differs;

    if (!bs->drv->has_backing) {
        return false;
    }
    if (!bs->backing) {
        return bs->auto_backing && bs->auto_backing[0];
    }
    name = bdev_query_filename(bs->backing);
    differs = !name || strcmp(bs->auto_backing ? bs->auto_backing : "", name);
    free(name);
    return differs;
}

/* The options that name the node now (QEMU's full_open_options): what it
 * was opened with, its children's current ones, and its backing's when
 * that was overridden (null when removed). A new reference. */
static json_t *query_opts(struct bdev *bs)
{
    json_t *o;

    if (transparent(bs)) {
        return query_opts(bs->file);
    }
    o = bs->full_opts ? json_copy(bs->full_opts) : json_object();
    if (bs->file) {
        /* "image" is blkdebug's name for its child. */
        const char *key = json_object_get(o, "image") ? "image" : "file";

        json_object_set_new(o, key, query_opts(bs->file));
    }
    if (backing_overridden(bs)) {
        json_object_set_new(
            o, "backing", bs->backing ? query_opts(bs->backing) : json_null());
    }
    return o;
}

static char *json_name(struct bdev *bs)
{
    json_t *o = query_opts(bs);
    char *s = bdev_json_filename(o);

    json_decref(o);
    return s;
}

/* Options of the node's own that change what it shows (raw's offset and
 * size: QEMU's strong runtime options) are in its name. */
static bool own_opts(const struct bdev *bs)
{
    const char *k;
    json_t *v;

    json_object_foreach(bs->full_opts, k, v) {
        if (strcmp(k, "driver") && strcmp(k, "file") && strcmp(k, "image") &&
            strcmp(k, "backing")) {
            return true;
        }
    }
    return false;
}

char *bdev_query_filename(struct bdev *bs)
{
    char *f;

    if (transparent(bs)) {
        return bdev_query_filename(bs->file);
    }
    if (!bs->file || !bs->drv->is_format) {
        /* Protocol nodes and blkdebug: named at open; a json: name is
         * rebuilt since the child's may have changed. */
        return is_json_name(bs->filename) ? json_name(bs)
                                          : strdup(bdev_filename(bs));
    }
    /* A format takes its file's plain name unless it is a (named) filter
     * or its backing is not the one the header names. */
    if (!bs->drv->is_filter && !backing_overridden(bs) && !own_opts(bs)) {
        f = bdev_query_filename(bs->file);
        if (!f || !is_json_name(f)) {
            return f;
        }
        free(f);
    }
    return json_name(bs);
}

bool bdev_backing_overridden(struct bdev *bs)
{
    return backing_overridden(bs);
}
