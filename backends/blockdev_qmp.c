/* blockdev-add, blockdev-del and query-named-block-nodes: schema (QEMU
 * 7.2's BlockdevOptions for the drivers we have) and handlers. */
#include "backends/bdev_core.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backends/bitmap.h"
#include "protocol/qmp.h"

static const char schema[] =
    "["
    "{'enum': 'BlockdevDiscardOptions', 'data': ['ignore', 'unmap']},"
    "{'enum': 'BlockdevDetectZeroesOptions', 'data': ['off', 'on', 'unmap']},"
    "{'enum': 'BlockdevAioOptions', 'data': ['threads', 'native', "
    "'io_uring']},"
    "{'enum': 'OnOffAuto', 'data': ['auto', 'on', 'off']},"
    "{'struct': 'BlockdevCacheOptions',"
    " 'data': {'*direct': 'bool', '*no-flush': 'bool'}},"
    "{'struct': 'BlockdevOptionsFile',"
    " 'data': {'filename': 'str', '*pr-manager': 'str',"
    "          '*aio': 'BlockdevAioOptions', '*aio-max-batch': 'int',"
    "          '*locking': 'OnOffAuto', '*drop-cache': 'bool',"
    "          '*x-check-cache-dropped': 'bool'}},"
    "{'alternate': 'BlockdevRef',"
    " 'data': {'definition': 'BlockdevOptions', 'reference': 'str'}},"
    "{'alternate': 'BlockdevRefOrNull',"
    " 'data': {'definition': 'BlockdevOptions', 'reference': 'str',"
    "          'null': 'null'}},"
    "{'struct': 'BlockdevOptionsGenericFormat', 'data': {'file': "
    "'BlockdevRef'}},"
    "{'struct': 'BlockdevOptionsGenericCOWFormat',"
    " 'base': 'BlockdevOptionsGenericFormat',"
    " 'data': {'*backing': 'BlockdevRefOrNull'}},"
    "{'struct': 'BlockdevOptionsCor', 'base': 'BlockdevOptionsGenericFormat',"
    " 'data': {'*bottom': 'str'}},"
    "{'struct': 'BlockdevOptionsRaw', 'base': 'BlockdevOptionsGenericFormat',"
    " 'data': {'*offset': 'int', '*size': 'int'}},"
    "{'struct': 'BlockdevOptionsNull',"
    " 'data': {'*size': 'int', '*latency-ns': 'uint64',"
    "          '*read-zeroes': 'bool'}},"
    "{'enum': 'BlkdebugEvent',"
    " 'data': ['l1_update', 'l1_grow_alloc_table', 'l1_grow_write_table',"
    "          'l1_grow_activate_table', 'l2_load', 'l2_update',"
    "          'l2_update_compressed', 'l2_alloc_cow_read', 'l2_alloc_write',"
    "          'read_aio', 'read_backing_aio', 'read_compressed', "
    "'write_aio',"
    "          'write_compressed', 'vmstate_load', 'vmstate_save', "
    "'cow_read',"
    "          'cow_write', 'reftable_load', 'reftable_grow', "
    "'reftable_update',"
    "          'refblock_load', 'refblock_update', 'refblock_update_part',"
    "          'refblock_alloc', 'refblock_alloc_hookup',"
    "          'refblock_alloc_write', 'refblock_alloc_write_blocks',"
    "          'refblock_alloc_write_table', 'refblock_alloc_switch_table',"
    "          'cluster_alloc', 'cluster_alloc_bytes', 'cluster_free',"
    "          'flush_to_os', 'flush_to_disk', 'pwritev_rmw_head',"
    "          'pwritev_rmw_after_head', 'pwritev_rmw_tail',"
    "          'pwritev_rmw_after_tail', 'pwritev', 'pwritev_zero',"
    "          'pwritev_done', 'empty_image_prepare', "
    "'l1_shrink_write_table',"
    "          'l1_shrink_free_l2_clusters', 'cor_write', "
    "'cluster_alloc_space',"
    "          'none']},"
    "{'enum': 'BlkdebugIOType',"
    " 'data': ['read', 'write', 'write-zeroes', 'discard', 'flush',"
    "          'block-status']},"
    "{'struct': 'BlkdebugInjectErrorOptions',"
    " 'data': {'event': 'BlkdebugEvent', '*state': 'int',"
    "          '*iotype': 'BlkdebugIOType', '*errno': 'int', '*sector': "
    "'int',"
    "          '*once': 'bool', '*immediately': 'bool'}},"
    "{'struct': 'BlkdebugSetStateOptions',"
    " 'data': {'event': 'BlkdebugEvent', '*state': 'int', 'new_state': "
    "'int'}},"
    "{'enum': 'BlockPermission',"
    " 'data': ['consistent-read', 'write', 'write-unchanged', 'resize']},"
    "{'struct': 'BlockdevOptionsBlkdebug',"
    " 'data': {'image': 'BlockdevRef', '*config': 'str', '*align': 'int',"
    "          '*max-transfer': 'int32', '*opt-write-zero': 'int32',"
    "          '*max-write-zero': 'int32', '*opt-discard': 'int32',"
    "          '*max-discard': 'int32',"
    "          '*inject-error': ['BlkdebugInjectErrorOptions'],"
    "          '*set-state': ['BlkdebugSetStateOptions'],"
    "          '*take-child-perms': ['BlockPermission'],"
    "          '*unshare-child-perms': ['BlockPermission']}},"
    "{'enum': 'Qcow2OverlapCheckMode',"
    " 'data': ['none', 'constant', 'cached', 'all']},"
    "{'struct': 'Qcow2OverlapCheckFlags',"
    " 'data': {'*template': 'Qcow2OverlapCheckMode', '*main-header': 'bool',"
    "          '*active-l1': 'bool', '*active-l2': 'bool',"
    "          '*refcount-table': 'bool', '*refcount-block': 'bool',"
    "          '*snapshot-table': 'bool', '*inactive-l1': 'bool',"
    "          '*inactive-l2': 'bool', '*bitmap-directory': 'bool'}},"
    "{'alternate': 'Qcow2OverlapChecks',"
    " 'data': {'flags': 'Qcow2OverlapCheckFlags',"
    "          'mode': 'Qcow2OverlapCheckMode'}},"
    "{'enum': 'BlockdevQcow2EncryptionFormat', 'data': ['aes', 'luks']},"
    "{'struct': 'QCryptoBlockOptionsQCow', 'data': {'*key-secret': 'str'}},"
    "{'struct': 'QCryptoBlockOptionsLUKS', 'data': {'*key-secret': 'str'}},"
    "{'union': 'BlockdevQcow2Encryption',"
    " 'base': {'format': 'BlockdevQcow2EncryptionFormat'},"
    " 'discriminator': 'format',"
    " 'data': {'aes': 'QCryptoBlockOptionsQCow',"
    "          'luks': 'QCryptoBlockOptionsLUKS'}},"
    "{'struct': 'BlockdevOptionsQcow2',"
    " 'base': 'BlockdevOptionsGenericCOWFormat',"
    " 'data': {'*lazy-refcounts': 'bool', '*pass-discard-request': 'bool',"
    "          '*pass-discard-snapshot': 'bool',"
    "          '*pass-discard-other': 'bool',"
    "          '*overlap-check': 'Qcow2OverlapChecks', '*cache-size': 'int',"
    "          '*l2-cache-size': 'int', '*l2-cache-entry-size': 'int',"
    "          '*refcount-cache-size': 'int', '*cache-clean-interval': "
    "'int',"
    "          '*encrypt': 'BlockdevQcow2Encryption',"
    "          '*data-file': 'BlockdevRef'}},"
    "{'struct': 'ImageInfo',"
    " 'data': {'filename': 'str', 'format': 'str', '*dirty-flag': 'bool',"
    "          '*actual-size': 'int', 'virtual-size': 'int',"
    "          '*cluster-size': 'int', '*encrypted': 'bool',"
    "          '*compressed': 'bool', '*backing-filename': 'str',"
    "          '*full-backing-filename': 'str',"
    "          '*backing-filename-format': 'str',"
    "          '*backing-image': 'ImageInfo',"
    "          '*format-specific': 'ImageInfoSpecific'}},"
    "{'enum': 'Qcow2CompressionType', 'data': ['zlib', 'zstd']},"
    "{'struct': 'ImageInfoSpecificQCow2',"
    " 'data': {'compat': 'str', '*data-file': 'str',"
    "          '*data-file-raw': 'bool', '*extended-l2': 'bool',"
    "          '*lazy-refcounts': 'bool', '*corrupt': 'bool',"
    "          'refcount-bits': 'int',"
    "          'compression-type': 'Qcow2CompressionType'}},"
    "{'struct': 'ImageInfoSpecificQCow2Wrapper',"
    " 'data': {'data': 'ImageInfoSpecificQCow2'}},"
    "{'enum': 'ImageInfoSpecificKind', 'data': ['qcow2']},"
    "{'union': 'ImageInfoSpecific',"
    " 'base': {'type': 'ImageInfoSpecificKind'},"
    " 'discriminator': 'type',"
    " 'data': {'qcow2': 'ImageInfoSpecificQCow2Wrapper'}},"
    "{'struct': 'BlockdevCacheInfo',"
    " 'data': {'writeback': 'bool', 'direct': 'bool', 'no-flush': 'bool'}},"
    "{'struct': 'BlockDeviceInfo',"
    " 'data': {'file': 'str', '*node-name': 'str', 'ro': 'bool', 'drv': "
    "'str',"
    "          '*backing_file': 'str', 'backing_file_depth': 'int',"
    "          'encrypted': 'bool',"
    "          'detect_zeroes': 'BlockdevDetectZeroesOptions',"
    "          'bps': 'int', 'bps_rd': 'int', 'bps_wr': 'int', 'iops': 'int',"
    "          'iops_rd': 'int', 'iops_wr': 'int', 'image': 'ImageInfo',"
    "          'cache': 'BlockdevCacheInfo', 'write_threshold': 'int'}},"
    "{'command': 'blockdev-add', 'data': 'BlockdevOptions', 'boxed': true},"
    "{'command': 'blockdev-del', 'data': {'node-name': 'str'}},"
    "{'command': 'query-named-block-nodes', 'data': {'*flat': 'bool'},"
    " 'returns': ['BlockDeviceInfo']}"
    "]";

/* BlockdevOptions' members every node has; its branches are the drivers'
 * (bdev_driver.options_type), and BlockdevDriver lists them. */
static const char options_base[] =
    "{'driver': 'BlockdevDriver', '*node-name': 'str',"
    " '*discard': 'BlockdevDiscardOptions',"
    " '*cache': 'BlockdevCacheOptions', '*read-only': 'bool',"
    " '*auto-read-only': 'bool', '*force-share': 'bool',"
    " '*detect-zeroes': 'BlockdevDetectZeroesOptions'}";

static bool qmp_inited;

static int driver_cmp(const void *a, const void *b)
{
    const struct bdev_driver *const *x = a, *const *y = b;

    return strcmp((*x)->name, (*y)->name);
}

/* BlockdevDriver and BlockdevOptions from the driver registry: every
 * driver with an options type is a value and a branch, by name. */
static void drivers_schema(void)
{
    const struct bdev_driver *drv[BDEV_MAX_DRIVERS];
    size_t n = bdev_driver_list(drv, BDEV_MAX_DRIVERS), m = 0;
    char *names = strdup(""), *branches = strdup(""), *text = NULL;

    qsort(drv, n, sizeof(drv[0]), driver_cmp);
    for (size_t i = 0; i < n && names && branches; i++) {
        char *a = NULL, *b = NULL;

        if (!drv[i]->options_type) {
            continue;
        }
        if (asprintf(&a, "%s%s'%s'", names, m ? ", " : "", drv[i]->name) < 0 ||
            asprintf(&b, "%s%s'%s': '%s'", branches, m ? ", " : "",
                     drv[i]->name, drv[i]->options_type) < 0) {
            abort();
        }
        free(names);
        free(branches);
        names = a;
        branches = b;
        m++;
    }
    if (!names || !branches ||
        asprintf(&text,
                 "[{'enum': 'BlockdevDriver', 'data': [%s]},"
                 " {'union': 'BlockdevOptions', 'base': %s,"
                 " 'discriminator': 'driver', 'data': {%s}}]",
                 names, options_base, branches) < 0) {
        abort();
    }
    qmp_schema_add(text);
    free(text);
    free(names);
    free(branches);
}

void bdev_qmp_drivers_changed(void)
{
    if (qmp_inited) {
        drivers_schema();
    }
}

/* The node query-named-block-nodes shows under `bs` as its backing: the
 * real backing, or the filtered child of a filter (blkdebug,
 * copy-on-read), like qsd. */
static struct bdev *shown_backing(const struct bdev *bs)
{
    if (bs->backing) {
        return bs->backing;
    }
    if ((bs->drv->debug_event || bs->drv->is_filter) && bs->file) {
        return bs->file;
    }
    return NULL;
}

/* Allocated bytes on disk, or -1 where QEMU reports none (blkdebug). */
static int64_t actual_size(const struct bdev *bs)
{
    struct stat sb;

    if (bs->drv->allocated_size) {
        return bs->drv->allocated_size((struct bdev *)bs);
    }
    if (strcmp(bs->drv->name, "file") == 0) {
        if (stat(bs->filename, &sb) < 0) {
            return -1;
        }
        return (int64_t)sb.st_blocks * 512;
    }
    if (strcmp(bs->drv->name, "null-co") == 0) {
        return 0;
    }
    if (bs->drv->is_format && bs->file) {
        return actual_size(bs->file);
    }
    return -1;
}

/* The (unnamed, in-memory) bitmaps jobs attached to the node, as qsd lists
 * a mirror's or a backup's: members in qsd's order. */
static void dirty_bitmaps(const struct bdev *bs, json_t *o)
{
    json_t *list = NULL;

    for (struct bitmap *bm = bitmap_next_attached(bs, NULL); bm;
         bm = bitmap_next_attached(bs, bm)) {
        json_t *e = json_object();

        json_object_set_new(e, "recording", json_true());
        json_object_set_new(e, "persistent", json_false());
        json_object_set_new(e, "busy", json_false());
        json_object_set_new(e, "granularity",
                            json_integer(bitmap_granularity(bm)));
        json_object_set_new(e, "count",
                            json_integer((json_int_t)bitmap_count(bm)));
        if (!list) {
            list = json_array();
        }
        json_array_append_new(list, e);
    }
    if (list) {
        json_object_set_new(o, "dirty-bitmaps", list);
    }
}

/* null-co has no image info: neither has a format right on top of it. */
static bool on_null(const struct bdev *bs)
{
    while (bs->drv->is_format && bs->file) {
        bs = bs->file;
    }
    return strcmp(bs->drv->name, "null-co") == 0;
}

static void move_key(json_t *dst, json_t *src, const char *key)
{
    json_t *v = json_object_get(src, key);

    if (v) {
        json_object_set(dst, key, v);
        json_object_del(src, key);
    }
}

/* A reported name as a JSON string (the name computed now, see
 * bdev_query_filename). */
static json_t *name_value(struct bdev *bs)
{
    char *name = bdev_query_filename(bs);
    json_t *v = json_string(name ? name : bdev_filename(bs));

    free(name);
    return v;
}

static json_t *image_info(struct bdev *bs, bool flat)
{
    json_t *img = json_object(), *drv = json_object();
    struct bdev *b = shown_backing(bs);
    int64_t asz = actual_size(bs), len;
    const char *k;
    json_t *v;

    if (bs->drv->info) {
        bs->drv->info(bs, drv);
    }
    if (!flat && b) {
        json_object_set_new(img, "backing-image", image_info(b, false));
    }
    move_key(img, drv, "backing-filename-format");
    /* QEMU counts every node's length in 512-byte sectors: rounded up (a
     * file's, a raw window's over it). */
    len = bdev_length(bs);
    json_object_set_new(img, "virtual-size",
                        json_integer(len < 0 ? len : (len + 511) / 512 * 512));
    json_object_set_new(img, "filename", name_value(bs));
    if (json_object_get(drv, "cluster-size")) {
        move_key(img, drv, "cluster-size");
    } else if (bs->cluster_size) {
        json_object_set_new(img, "cluster-size",
                            json_integer(bs->cluster_size));
    }
    json_object_set_new(img, "format", json_string(bs->drv->name));
    if (asz >= 0) {
        json_object_set_new(img, "actual-size", json_integer(asz));
    }
    move_key(img, drv, "format-specific");
    move_key(img, drv, "full-backing-filename");
    move_key(img, drv, "backing-filename");
    if (json_object_get(drv, "dirty-flag")) {
        move_key(img, drv, "dirty-flag");
    } else if (!on_null(bs)) {
        json_object_set_new(img, "dirty-flag", json_false());
    }
    json_object_foreach(drv, k, v) {
        json_object_set(img, k, v);
    }
    json_decref(drv);
    return img;
}

static json_t *device_info(struct bdev *bs, bool flat)
{
    json_t *o = json_object();
    int depth = 0;

    if (!flat) {
        for (struct bdev *b = shown_backing(bs); b; b = shown_backing(b)) {
            depth++;
        }
    }
    json_object_set_new(o, "iops_rd", json_integer(0));
    json_object_set_new(
        o, "detect_zeroes",
        json_string(bs->detect_zeroes ? bs->detect_zeroes : "off"));
    json_object_set_new(o, "image", image_info(bs, flat));
    json_object_set_new(o, "iops_wr", json_integer(0));
    json_object_set_new(o, "ro", json_boolean(bs->read_only));
    json_object_set_new(o, "node-name", json_string(bs->node_name));
    json_object_set_new(o, "backing_file_depth", json_integer(depth));
    json_object_set_new(o, "drv", json_string(bs->drv->name));
    json_object_set_new(o, "iops", json_integer(0));
    json_object_set_new(o, "bps_wr", json_integer(0));
    json_object_set_new(o, "write_threshold", json_integer(0));
    if (bs->backing) {
        json_object_set_new(o, "backing_file", name_value(bs->backing));
    }
    dirty_bitmaps(bs, o);
    json_object_set_new(o, "encrypted", json_false());
    json_object_set_new(o, "bps", json_integer(0));
    json_object_set_new(o, "bps_rd", json_integer(0));
    json_object_set_new(o, "cache",
                        json_pack("{s:b, s:b, s:b}", "no-flush",
                                  bs->cache_no_flush, "direct",
                                  bs->cache_direct, "writeback", 1));
    /* The same name as the image's (computed once). */
    json_object_set(o, "file",
                    json_object_get(json_object_get(o, "image"), "filename"));
    return o;
}

static json_t *qmp_query_named_block_nodes(json_t *args, struct qmp_session *s,
                                           struct qmp_error *err)
{
    bool flat = json_is_true(json_object_get(args, "flat"));
    json_t *list = json_array();

    (void)s;
    (void)err;
    for (struct bdev *bs = bdev_all_nodes(); bs; bs = bs->next) {
        if (!bs->opening) {
            json_array_append_new(list, device_info(bs, flat));
        }
    }
    return list;
}

/* QEMU opens a format node (raw, qcow2, copy-on-read) whose `file` is
 * given with a BlockBackend on that file node first, to probe it, and drops
 * it after the open, successful or not: blk_unref drains the file node,
 * and blk_remove_bs drains it again. An existing node named as `file` may
 * have jobs above it: they pause and resume twice. Nodes in the order QEMU
 * opens them (a nested file first, a nested backing after its parent). */
static void probe_targets(json_t *opts, struct bdev ***v, size_t *n)
{
    json_t *file = json_object_get(opts, "file");
    const char *drv = json_string_value(json_object_get(opts, "driver"));
    struct bdev *bs;

    if (json_is_object(file)) {
        probe_targets(file, v, n);
    }
    bs = json_is_string(file) ? bdev_find(json_string_value(file)) : NULL;
    if (bs && drv &&
        (!strcmp(drv, "raw") || !strcmp(drv, "qcow2") ||
         !strcmp(drv, "copy-on-read"))) {
        struct bdev **nv = realloc(*v, (*n + 1) * sizeof(**v));

        if (!nv) {
            abort();
        }
        *v = nv;
        bdev_ref(bs);
        (*v)[(*n)++] = bs;
    }
    if (json_is_object(json_object_get(opts, "backing"))) {
        probe_targets(json_object_get(opts, "backing"), v, n);
    }
}

struct add_op {
    struct qmp_deferred *d; /* NULL while the handler still runs */
    struct bdev **t;
    size_t n, i;
    int round;
    struct bdev_drained *sec;
    json_t *ret;
    struct qmp_error err;
    bool done;
    bool orphan; /* no session to answer: the sections just run out */
};

static void add_reply(void *opaque)
{
    struct add_op *op = opaque;

    qmp_deferred_reply(op->d, op->ret, &op->err);
    free(op);
}

/* Each target: two drained sections, one after the other, each waiting for
 * the jobs it pauses. */
static void add_step(void *opaque)
{
    struct add_op *op = opaque;

    if (op->sec) {
        bdev_drained_end(op->sec);
        op->sec = NULL;
    }
    if (op->i == op->n) {
        for (size_t i = 0; i < op->n; i++) {
            bdev_unref(op->t[i]);
        }
        free(op->t);
        op->t = NULL;
        op->done = true;
        if (op->d) {
            bdev_when_drained_idle(add_reply, op);
        } else if (op->orphan) {
            json_decref(op->ret);
            qmp_error_clear(&op->err);
            free(op);
        }
        return;
    }
    op->sec = bdev_drained_begin(op->t[op->i], false);
    if (++op->round == 2) {
        op->round = 0;
        op->i++;
    }
    bdev_drained_wait(op->sec, add_step, op);
}

/* The open is done (maybe later, a driver that waits on the network): the
 * sections QEMU's probe makes run, then the reply goes out. */
static void add_opened(void *opaque, struct bdev *bs, struct qmp_error *err)
{
    struct add_op *op = opaque;

    op->ret = bs ? json_object() : NULL;
    if (!bs && err) {
        op->err = *err; /* moved */
        *err = (struct qmp_error)QMP_ERROR_INIT;
    }
    add_step(op);
}

static json_t *qmp_blockdev_add(json_t *args, struct qmp_session *s,
                                struct qmp_error *err)
{
    struct add_op *op;
    json_t *ret;

    op = calloc(1, sizeof(*op));
    if (!op) {
        abort();
    }
    if (json_object_get(args, "node-name")) {
        probe_targets(args, &op->t, &op->n);
    } else {
        /* Refused before QEMU opens anything: no sections either. */
        op->n = 0;
    }
    bdev_open_node_async(args, true, add_opened, op);
    if (!op->done && !s) {
        op->orphan = true;
        return NULL;
    }
    if (!op->done) {
        op->d = qmp_session_defer(s);
        return NULL;
    }
    ret = op->ret;
    *err = op->err; /* moved */
    free(op);
    return ret;
}

/* blockdev-del of a node with requests in flight (e.g. left by a job that
 * was just cancelled): like QEMU, wait for them, then delete. The extra
 * reference held meanwhile makes a second blockdev-del of the same node
 * fail as "in use" instead of deleting it twice. */
struct del_op {
    struct qmp_deferred *d;
    struct bdev *bs;
};

static int del_check(struct bdev *bs, int extra_refs, struct qmp_error *err)
{
    if (bs->job_io_node) {
        qmp_error_setg(err, "Node %s is in use", bs->node_name);
        return -EBUSY;
    }
    if (bs->claimed_by) {
        qmp_error_setg(err,
                       "Node '%s' is busy: block device is in use by block "
                       "job: %s",
                       bs->node_name, bs->claimed_by);
        return -EBUSY;
    }
    /* QEMU blocks a backing node for its overlay (the newest one's name
     * is given); the list is newest first. */
    for (struct bdev *p = bdev_all_nodes(); p; p = p->next) {
        if (p->backing == bs) {
            qmp_error_setg(err,
                           "Node '%s' is busy: node is used as backing hd "
                           "of '%s'",
                           bs->node_name, p->node_name);
            return -EBUSY;
        }
    }
    if (!bs->monitor_owned) {
        qmp_error_setg(err, "Node %s is not owned by the monitor",
                       bs->node_name);
        return -EPERM;
    }
    if (bs->refcnt > 1 + extra_refs || bs->parents > 0) {
        qmp_error_setg(err, "Block device %s is in use", bs->node_name);
        return -EBUSY;
    }
    return 0;
}

static void del_drained(void *opaque, int ret)
{
    struct del_op *op = opaque;
    struct qmp_error err = QMP_ERROR_INIT;
    struct bdev *bs = op->bs;

    (void)ret;
    if (del_check(bs, 1, &err) == 0) {
        bdev_unref(bs); /* the monitor's reference */
        bdev_unref(bs); /* ours: closes the node */
        qmp_deferred_reply(op->d, json_object(), NULL);
    } else {
        bdev_unref(bs);
        qmp_deferred_reply(op->d, NULL, &err);
    }
    free(op);
}

static json_t *qmp_blockdev_del(json_t *args, struct qmp_session *s,
                                struct qmp_error *err)
{
    const char *name = json_string_value(json_object_get(args, "node-name"));
    struct bdev *bs = name ? bdev_find(name) : NULL;
    struct del_op *op;

    if (!bs) {
        qmp_error_setg(err, "Failed to find node with node-name='%s'",
                       name ? name : "");
        return NULL;
    }
    if (del_check(bs, 0, err) < 0) {
        return NULL;
    }
    if (bdev_tree_busy(bs)) {
        op = calloc(1, sizeof(*op));
        if (!op) {
            qmp_error_setg(err, "Out of memory");
            return NULL;
        }
        op->bs = bs;
        bdev_ref(bs);
        if (bdev_drain(bs, del_drained, op) < 0) {
            bdev_unref(bs);
            free(op);
            qmp_error_setg(err, "Out of memory");
            return NULL;
        }
        op->d = qmp_session_defer(s);
        return NULL;
    }
    bdev_unref(bs);
    return json_object();
}

void bdev_qmp_init(void)
{
    qmp_schema_add(schema);
    drivers_schema();
    qmp_inited = true;
    qmp_command_register("blockdev-add", qmp_blockdev_add);
    qmp_command_register("blockdev-del", qmp_blockdev_del);
    qmp_command_register("query-named-block-nodes",
                         qmp_query_named_block_nodes);
    bdev_snapshot_qmp_init();
    bdev_resize_qmp_init();
}
