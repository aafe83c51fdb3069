/* Opening nodes: the driver registry, the options every node has (and
 * what children inherit of them), children given as BlockdevRefs, and the
 * backing files an image header names. */
#include "backends/bdev_core.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const struct bdev_driver *const drivers[] = {
    &bdev_drv_file,    &bdev_drv_raw,      &bdev_drv_qcow2,
    &bdev_drv_null_co, &bdev_drv_blkdebug, &bdev_drv_copy_on_read,
};

/* Options a child inherits from its parent unless it sets them itself. */
struct inherit {
    bool read_only;
    bool cache_direct;
    bool cache_no_flush;
    bool auto_read_only;
    bool force_share;
};

/* Set while bdev_insert_filter() opens a filter over this node (by
 * pointer: it need not be on the list). */
static struct bdev *filter_child;

static const struct bdev_driver *extra_drivers[4];

void bdev_register_driver(const struct bdev_driver *drv)
{
    for (size_t i = 0; i < 4; i++) {
        if (!extra_drivers[i] || extra_drivers[i] == drv) {
            extra_drivers[i] = drv;
            return;
        }
    }
}

static const struct bdev_driver *find_driver(const char *name)
{
    for (size_t i = 0; i < sizeof(drivers) / sizeof(drivers[0]); i++) {
        if (drivers[i] && strcmp(drivers[i]->name, name) == 0) {
            return drivers[i];
        }
    }
    for (size_t i = 0; i < 4; i++) {
        if (extra_drivers[i] && strcmp(extra_drivers[i]->name, name) == 0) {
            return extra_drivers[i];
        }
    }
    return NULL;
}

static bool opt_bool(json_t *opts, const char *key, bool dflt)
{
    json_t *v = json_object_get(opts, key);

    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static struct bdev *open_node(json_t *opts, bool monitor,
                              const struct inherit *inh, struct qmp_error *err);

static struct bdev *open_child(json_t *ref, const struct inherit *inh,
                               struct qmp_error *err)
{
    struct bdev *child;

    if (json_is_string(ref)) {
        const char *name = json_string_value(ref);

        child = bdev_find(name);
        if (!child) {
            qmp_error_setg(err, "Cannot find device='%s' nor node-name='%s'",
                           name, name);
            return NULL;
        }
        bdev_ref(child);
    } else if (json_is_object(ref)) {
        child = open_node(ref, false, inh, err);
        if (!child) {
            return NULL;
        }
    } else {
        qmp_error_setg(err, "Invalid parameter type for 'file', expected: "
                            "BlockdevRef");
        return NULL;
    }
    child->parents++;
    return child;
}

/* ---- opening ------------------------------------------------------------ */

/* Whether discard is "unmap": the default of every child (QEMU's
 * bdrv_inherited_options), "ignore" for a node the monitor adds. */
static bool discard_unmap(json_t *opts, const struct inherit *inh)
{
    const char *v = json_string_value(json_object_get(opts, "discard"));

    if (!v) {
        return inh != NULL;
    }
    return strcmp(v, "unmap") == 0 || strcmp(v, "on") == 0;
}

static struct bdev *open_node(json_t *opts, bool monitor,
                              const struct inherit *inh, struct qmp_error *err)
{
    const char *drv_name, *name;
    const struct bdev_driver *drv;
    struct bdev *bs;
    json_t *cache, *v;
    struct inherit mine;
    int ret;

    v = json_object_get(opts, "driver");
    if (!v) {
        qmp_error_setg(err, "Parameter 'driver' is missing");
        return NULL;
    }
    drv_name = json_string_value(v);
    name = json_string_value(json_object_get(opts, "node-name"));
    if (monitor && !name) {
        qmp_error_setg(err, "'node-name' must be specified for the root node");
        return NULL;
    }
    drv = drv_name ? find_driver(drv_name) : NULL;
    if (!drv) {
        qmp_error_setg(err, "Unknown driver '%s'", drv_name ? drv_name : "");
        return NULL;
    }

    bs = calloc(1, sizeof(*bs));
    if (!bs) {
        qmp_error_setg(err, "Out of memory");
        return NULL;
    }
    bs->drv = drv;
    bs->refcnt = 1;
    bs->perm = 0;
    bs->shared_perm = BDEV_PERM_ALL;
    bs->implicit = !monitor;
    bs->monitor_owned = monitor;

    /* Options every node has; children inherit the unset ones. */
    mine = inh ? *inh : (struct inherit){0};
    v = json_object_get(opts, "read-only");
    if (json_is_boolean(v)) {
        mine.read_only = json_is_true(v);
        bs->explicit_ro = mine.read_only;
    }
    cache = json_object_get(opts, "cache");
    mine.cache_direct = opt_bool(cache, "direct", mine.cache_direct);
    mine.cache_no_flush = opt_bool(cache, "no-flush", mine.cache_no_flush);
    mine.auto_read_only = opt_bool(opts, "auto-read-only", mine.auto_read_only);
    bs->read_only = mine.read_only;
    bs->cache_direct = mine.cache_direct;
    bs->cache_no_flush = mine.cache_no_flush;
    bs->auto_read_only = mine.auto_read_only;
    mine.force_share = opt_bool(opts, "force-share", mine.force_share);
    bs->force_share = mine.force_share;
    v = json_object_get(opts, "detect-zeroes");
    bs->detect_zeroes = "off";
    if (json_is_string(v) && strcmp(json_string_value(v), "on") == 0) {
        bs->detect_zeroes = "on";
    } else if (json_is_string(v) &&
               strcmp(json_string_value(v), "unmap") == 0) {
        bs->detect_zeroes = "unmap";
    }
    if (drv->state_size) {
        bs->state = calloc(1, drv->state_size);
        if (!bs->state) {
            qmp_error_setg(err, "Out of memory");
            goto fail;
        }
    }

    /* A format's file child first: its name is older than ours, as in
     * QEMU, and it must be locked before the format reads its header. */
    if (drv->is_format) {
        struct inherit child_inh = mine;

        v = json_object_get(opts, "file");
        if (filter_child && drv->is_filter) {
            bs->file = filter_child;
            bdev_ref(bs->file);
            bs->file->parents++;
        } else if (!v) {
            qmp_error_setg(err, "Parameter 'file' is missing");
            goto fail;
        } else {
            bs->file = open_child(v, &child_inh, err);
            if (!bs->file) {
                goto fail;
            }
        }
    }

    /* QEMU's checks after the file child is open, in its order. */
    if (bs->force_share && !bs->read_only) {
        qmp_error_setg(err,
                       "force-share=on can only be used with read-only images");
        goto fail;
    }
    if (strcmp(drv->name, "file") == 0 &&
        !(json_string_value(json_object_get(opts, "filename")) &&
          json_string_value(json_object_get(opts, "filename"))[0])) {
        qmp_error_setg(err, "The 'file' block driver requires a file name");
        goto fail;
    }
    if (strcmp(bs->detect_zeroes, "unmap") == 0 && !discard_unmap(opts, inh)) {
        qmp_error_setg(err, "setting detect-zeroes to unmap is not allowed "
                            "without setting discard operation to unmap");
        goto fail;
    }
    if (name && bdev_check_node_name(name, err) < 0) {
        goto fail;
    }
    if (bs->file) {
        bs->file_seq = bdev_next_link_seq();
    }
    bs->node_name = name ? strdup(name) : bdev_implicit_name();
    if (!bs->node_name) {
        qmp_error_setg(err, "Out of memory");
        goto fail;
    }
    bdev_list_add(bs);

    if (bs->file) {
        ret = bdev_perm_refresh_opening(bs->file, err);
        if (ret < 0) {
            goto fail_listed;
        }
    }
    if (drv->open) {
        ret = drv->open(bs, opts, err);
        if (ret < 0) {
            if (!qmp_error_is_set(err)) {
                qmp_error_setg(err, "Could not open node: %s", strerror(-ret));
            }
            goto fail_opened;
        }
    }
    if (bs->file && !bs->file_seq) {
        bs->file_seq = bdev_next_link_seq();
    }
    if (bs->backing) {
        bs->backing_seq = bdev_next_link_seq(); /* after the file, as in QEMU */
    }
    /* Children the driver opened itself (backing, blkdebug's image). */
    if ((bs->file && bdev_perm_refresh(bs->file, err) < 0) ||
        (bs->backing && bdev_perm_refresh(bs->backing, err) < 0)) {
        if (drv->close) {
            drv->close(bs);
        }
        goto fail_opened;
    }
    /* An empty "cache" stays in QEMU's flattened options, which no driver
     * consumes: refused once the node and its children are open. */
    if (json_is_object(cache) && json_object_size(cache) == 0) {
        if (drv->is_format) {
            qmp_error_setg(err,
                           "Block format '%s' does not support the option "
                           "'cache'",
                           drv->name);
        } else {
            qmp_error_setg(err,
                           "Block protocol '%s' doesn't support the option "
                           "'cache'",
                           drv->name);
        }
        if (drv->close) {
            drv->close(bs);
        }
        goto fail_opened;
    }
    bdev_set_default_filename(bs);
    if (drv->has_backing && !bs->auto_backing) {
        bs->auto_backing = bdev_header_backing(bs);
    }
    return bs;

fail_opened:
    /* The driver cleaned up after a failed open, or close() did. */
fail_listed:
    bdev_list_remove(bs);
fail : {
    struct bdev *file = bs->file, *backing = bs->backing;

    bs->file = bs->backing = NULL;
    bdev_child_release(file);
    bdev_child_release(backing);
}
    if (bs->implicit && bs->node_name) {
        /* The id is spent, like QEMU's, so nothing to give back. */
    }
    json_decref(bs->full_opts);
    free(bs->auto_backing);
    free(bs->filename);
    free(bs->node_name);
    free(bs->state);
    free(bs);
    return NULL;
}

struct bdev *bdev_open_filter_node(json_t *opts, struct bdev *child,
                                   struct qmp_error *err)
{
    struct bdev *f;

    filter_child = child;
    f = open_node(opts, false, NULL, err);
    filter_child = NULL;
    return f;
}

struct bdev *bdev_open_node(json_t *opts, bool monitor, struct qmp_error *err)
{
    return open_node(opts, monitor, NULL, err);
}

struct bdev *bdev_open_child(struct bdev *parent, json_t *ref, bool backing,
                             struct qmp_error *err)
{
    /* QEMU's bdrv_inherited_options: cache modes and force-share come
     * down; a backing is read-only (and not auto-read-only) by default, an
     * image child takes the parent's. */
    struct inherit inh = {.read_only = backing || parent->read_only,
                          .cache_direct = parent->cache_direct,
                          .cache_no_flush = parent->cache_no_flush,
                          .auto_read_only = !backing && parent->auto_read_only,
                          .force_share = parent->force_share};

    return open_child(ref, &inh, err);
}

static int probe_format(const char *path, const char **fmt,
                        struct qmp_error *err)
{
    unsigned char magic[4] = {0};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n;

    if (fd < 0) {
        qmp_error_setg(err, "Could not open '%s': %s", path, strerror(errno));
        return -errno;
    }
    n = pread(fd, magic, sizeof(magic), 0);
    close(fd);
    *fmt = (n == 4 && memcmp(magic, "QFI\xfb", 4) == 0) ? "qcow2" : "raw";
    return 0;
}

struct bdev *bdev_open_backing_file(struct bdev *parent, const char *name,
                                    const char *format, struct qmp_error *err)
{
    struct qmp_error lerr = QMP_ERROR_INIT;
    struct inherit inh = {.read_only = true};
    const char *pfile = NULL;
    char *path = NULL, *dir = NULL;
    struct bdev *bs = NULL;
    json_t *opts = NULL, *fopts;

    /* Relative to the directory of the image file: QEMU's bdrv_dirname
     * goes down the primary children (through blkdebug) to it. */
    for (struct bdev *c = parent->file; c; c = c->file) {
        pfile = c->filename;
    }
    if (name[0] == '/' || !pfile || strncmp(pfile, "json:", 5) == 0) {
        path = strdup(name);
    } else {
        char *copy = strdup(pfile);

        if (copy) {
            dir = strdup(dirname(copy));
            free(copy);
        }
        if (dir && asprintf(&path, "%s/%s", dir, name) < 0) {
            path = NULL;
        }
    }
    if (!path) {
        qmp_error_setg(err, "Out of memory");
        goto out;
    }
    if (!format && probe_format(path, &format, &lerr) < 0) {
        goto out_err;
    }
    inh.cache_direct = parent->cache_direct;
    inh.cache_no_flush = parent->cache_no_flush;
    inh.force_share = parent->force_share;
    opts = json_object();
    json_object_set_new(opts, "driver", json_string(format));
    fopts = json_object();
    json_object_set_new(fopts, "driver", json_string("file"));
    json_object_set_new(fopts, "filename", json_string(path));
    json_object_set_new(opts, "file", fopts);
    bs = open_child(opts, &inh, &lerr);
    if (bs) {
        /* QEMU remembers the opened backing's name as what the header
         * means: this backing is not an override. */
        free(parent->auto_backing);
        parent->auto_backing = bs->filename ? strdup(bs->filename) : NULL;
    }
out_err:
    if (!bs) {
        qmp_error_setg(err, "Could not open backing file: %s",
                       lerr.desc ? lerr.desc : "unknown error");
    }
out:
    qmp_error_clear(&lerr);
    json_decref(opts);
    free(dir);
    free(path);
    return bs;
}
