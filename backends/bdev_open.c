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

/* The driver registry: a new driver is one file plus one line here. Its
 * bdev_driver names it and its blockdev-add branch (options_type, a QAPI
 * struct in blockdev_qmp.c's schema); blockdev-add's BlockdevDriver and
 * BlockdevOptions are built from this table. */
static const struct bdev_driver *const drivers[] = {
    &bdev_drv_file,       &bdev_drv_raw,        &bdev_drv_qcow2,
    &bdev_drv_null_co,    &bdev_drv_blkdebug,   &bdev_drv_copy_on_read,
    &bdev_drv_commit_top, &bdev_drv_mirror_top,
};

/* Options a child inherits from its parent unless it sets them itself. */
struct inherit {
    bool read_only;
    bool cache_direct;
    bool cache_no_flush;
    bool auto_read_only;
    bool force_share;
    struct bdev_open_params params;
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
            bdev_qmp_drivers_changed();
            return;
        }
    }
}

size_t bdev_driver_list(const struct bdev_driver **out, size_t max)
{
    size_t n = 0;

    for (size_t i = 0; i < sizeof(drivers) / sizeof(drivers[0]); i++) {
        if (n < max) {
            out[n++] = drivers[i];
        }
    }
    for (size_t i = 0; i < 4; i++) {
        if (extra_drivers[i] && n < max) {
            out[n++] = extra_drivers[i];
        }
    }
    return n;
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

/* Whether discard is "unmap": the default of every child (QEMU's
 * bdrv_inherited_options), "ignore" for a node the monitor adds. */
static bool discard_unmap(json_t *opts, bool inherited)
{
    const char *v = json_string_value(json_object_get(opts, "discard"));

    if (!v) {
        return inherited;
    }
    return strcmp(v, "unmap") == 0 || strcmp(v, "on") == 0;
}

/* The first error wins: src's goes to dst unless dst has one; src is
 * empty afterwards. */
static void err_move(struct qmp_error *dst, struct qmp_error *src)
{
    if (!qmp_error_is_set(dst)) {
        *dst = *src;
        *src = (struct qmp_error)QMP_ERROR_INIT;
    } else {
        qmp_error_clear(src);
    }
}

static void open_child(json_t *ref, const struct inherit *inh,
                       bdev_open_cb *done, void *opaque);

/* ---- opening a node: maybe completing later ------------------------------ */

/* One node being opened. Every step may end the open (a failure) or wait
 * for a child's or the driver's completion; open_finish() reports once. */
struct open_op {
    json_t *opts; /* referenced */
    bool monitor;
    bool inherited;      /* opened as a child: inh is the parent's */
    struct inherit inh;  /* what the parent passed down */
    struct inherit mine; /* this node's, what its children inherit */
    struct bdev_open_params params;
    json_t *cache;    /* opts' "cache", borrowed from opts */
    const char *name; /* opts' "node-name" or NULL, borrowed */
    struct bdev *bs;
    bool listed; /* on the list of all nodes */
    struct qmp_error err;
    bdev_open_cb *done;
    void *opaque;
    struct open_op *next; /* pending: ops waiting for a driver */
};

/* Opens waiting for a driver's completion (bdev_close_all cancels them). */
static struct open_op *pending;

static void open_node(json_t *opts, bool monitor, const struct inherit *inh,
                      const struct bdev_open_params *params, bdev_open_cb *done,
                      void *opaque);

static void pending_remove(struct open_op *op)
{
    for (struct open_op **pp = &pending; *pp; pp = &(*pp)->next) {
        if (*pp == op) {
            *pp = op->next;
            return;
        }
    }
}

static void node_discard(struct bdev *bs)
{
    struct bdev *file = bs->file, *backing = bs->backing;

    bs->file = bs->backing = NULL;
    bdev_child_release(file);
    bdev_child_release(backing);
    /* An implicit name's id is spent, like QEMU's: nothing to give back. */
    json_decref(bs->full_opts);
    free(bs->auto_backing);
    free(bs->filename);
    free(bs->node_name);
    free(bs->state);
    free(bs);
}

/* Reports the open: bs referenced on success, else NULL with op->err. A
 * node that failed is taken off the list and freed with its children (the
 * driver cleaned up after its failed open, or close() did). */
static void open_finish(struct open_op *op, bool ok)
{
    struct bdev *bs = op->bs;

    if (!ok && bs) {
        if (op->listed) {
            bdev_list_remove(bs);
        }
        node_discard(bs);
        bs = NULL;
    }
    op->done(op->opaque, bs, &op->err);
    qmp_error_clear(&op->err);
    json_decref(op->opts);
    free(op);
}

/* Options every node has; children inherit the unset ones. */
static void common_options(struct open_op *op)
{
    struct bdev *bs = op->bs;
    json_t *opts = op->opts, *v;
    struct inherit *mine = &op->mine;

    *mine = op->inherited ? op->inh : (struct inherit){0};
    mine->params = op->params;
    bs->params = op->params;
    v = json_object_get(opts, "read-only");
    if (json_is_boolean(v)) {
        mine->read_only = json_is_true(v);
        bs->explicit_ro = mine->read_only;
    }
    op->cache = json_object_get(opts, "cache");
    mine->cache_direct = opt_bool(op->cache, "direct", mine->cache_direct);
    mine->cache_no_flush =
        opt_bool(op->cache, "no-flush", mine->cache_no_flush);
    mine->auto_read_only =
        opt_bool(opts, "auto-read-only", mine->auto_read_only);
    bs->read_only = mine->read_only;
    bs->cache_direct = mine->cache_direct;
    bs->cache_no_flush = mine->cache_no_flush;
    bs->auto_read_only = mine->auto_read_only;
    mine->force_share = opt_bool(opts, "force-share", mine->force_share);
    bs->force_share = mine->force_share;
    v = json_object_get(opts, "detect-zeroes");
    bs->detect_zeroes = "off";
    if (json_is_string(v) && strcmp(json_string_value(v), "on") == 0) {
        bs->detect_zeroes = "on";
    } else if (json_is_string(v) &&
               strcmp(json_string_value(v), "unmap") == 0) {
        bs->detect_zeroes = "unmap";
    }
}

/* The driver named in the options, and the new, unlisted node. */
static struct bdev *node_new(struct open_op *op)
{
    const char *drv_name;
    const struct bdev_driver *drv;
    struct bdev *bs;
    json_t *v = json_object_get(op->opts, "driver");

    if (!v) {
        qmp_error_setg(&op->err, "Parameter 'driver' is missing");
        return NULL;
    }
    drv_name = json_string_value(v);
    op->name = json_string_value(json_object_get(op->opts, "node-name"));
    if (op->monitor && !op->name) {
        qmp_error_setg(&op->err,
                       "'node-name' must be specified for the root node");
        return NULL;
    }
    drv = drv_name ? find_driver(drv_name) : NULL;
    if (!drv) {
        qmp_error_setg(&op->err, "Unknown driver '%s'",
                       drv_name ? drv_name : "");
        return NULL;
    }
    bs = calloc(1, sizeof(*bs));
    if (!bs || (drv->state_size && !(bs->state = calloc(1, drv->state_size)))) {
        free(bs);
        qmp_error_setg(&op->err, "Out of memory");
        return NULL;
    }
    bs->drv = drv;
    bs->refcnt = 1;
    bs->perm = 0;
    bs->shared_perm = BDEV_PERM_ALL;
    bs->implicit = !op->monitor;
    bs->monitor_owned = op->monitor;
    return bs;
}

static void file_opened(void *opaque, struct bdev *child,
                        struct qmp_error *err);
static void node_checked(struct open_op *op);

static void open_start(struct open_op *op)
{
    struct bdev *bs = node_new(op);
    json_t *v;

    if (!bs) {
        open_finish(op, false);
        return;
    }
    op->bs = bs;
    common_options(op);
    if (!bs->drv->is_format) {
        node_checked(op);
        return;
    }
    /* A format's file child first: its name is older than ours, as in
     * QEMU, and it must be locked before the format reads its header. */
    v = json_object_get(op->opts, "file");
    if (filter_child && bs->drv->is_filter) {
        bs->file = filter_child;
        bdev_ref(bs->file);
        bs->file->parents++;
        node_checked(op);
    } else if (!v) {
        qmp_error_setg(&op->err, "Parameter 'file' is missing");
        open_finish(op, false);
    } else {
        open_child(v, &op->mine, file_opened, op);
    }
}

static void file_opened(void *opaque, struct bdev *child, struct qmp_error *err)
{
    struct open_op *op = opaque;

    if (!child) {
        err_move(&op->err, err);
        open_finish(op, false);
        return;
    }
    op->bs->file = child;
    node_checked(op);
}

/* QEMU's checks after the file child is open, in its order; then the node
 * is named and listed. */
static int node_check(struct open_op *op)
{
    struct bdev *bs = op->bs;
    const char *fname =
        json_string_value(json_object_get(op->opts, "filename"));
    struct qmp_error *err = &op->err;

    if (bs->force_share && !bs->read_only) {
        qmp_error_setg(err,
                       "force-share=on can only be used with read-only images");
        return -EINVAL;
    }
    if (strcmp(bs->drv->name, "file") == 0 && !(fname && fname[0])) {
        qmp_error_setg(err, "The 'file' block driver requires a file name");
        return -EINVAL;
    }
    if (strcmp(bs->detect_zeroes, "unmap") == 0 &&
        !discard_unmap(op->opts, op->inherited)) {
        qmp_error_setg(err, "setting detect-zeroes to unmap is not allowed "
                            "without setting discard operation to unmap");
        return -EINVAL;
    }
    if (op->name && bdev_check_node_name(op->name, err) < 0) {
        return -EINVAL;
    }
    if (bs->file) {
        bs->file_seq = bdev_next_link_seq();
    }
    bs->node_name = op->name ? strdup(op->name) : bdev_implicit_name();
    if (!bs->node_name) {
        qmp_error_setg(err, "Out of memory");
        return -ENOMEM;
    }
    bdev_list_add(bs);
    op->listed = true;
    if (bs->file) {
        return bdev_perm_refresh_opening(bs->file, err);
    }
    return 0;
}

static void driver_opened(struct open_op *op, int ret);

static void node_checked(struct open_op *op)
{
    struct bdev *bs = op->bs;
    int ret;

    if (node_check(op) < 0) {
        open_finish(op, false);
        return;
    }
    if (bs->drv->open_start) {
        /* Completes later: bdev_open_complete() goes on from here. */
        bs->opening = op;
        op->next = pending;
        pending = op;
        ret = bs->drv->open_start(bs, op->opts, &op->err);
        if (ret < 0) {
            pending_remove(op);
            bs->opening = NULL;
            driver_opened(op, ret);
        }
        return;
    }
    ret = bs->drv->open ? bs->drv->open(bs, op->opts, &op->err) : 0;
    driver_opened(op, ret);
}

void bdev_open_complete(struct bdev *bs, int ret, struct qmp_error *err)
{
    struct open_op *op = bs->opening;

    bs->opening = NULL;
    pending_remove(op);
    if (err && ret < 0) {
        err_move(&op->err, err);
    } else if (err) {
        qmp_error_clear(err);
    }
    driver_opened(op, ret);
}

/* What is left once the driver opened the node: the order of its links,
 * its children's permissions, options nobody took, its names. */
static void driver_opened(struct open_op *op, int ret)
{
    struct bdev *bs = op->bs;
    const struct bdev_driver *drv = bs->drv;
    struct qmp_error *err = &op->err;

    if (ret < 0) {
        if (!qmp_error_is_set(err)) {
            qmp_error_setg(err, "Could not open node: %s", strerror(-ret));
        }
        open_finish(op, false);
        return;
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
        ret = -EPERM;
    } else if (json_is_object(op->cache) && json_object_size(op->cache) == 0) {
        /* An empty "cache" stays in QEMU's flattened options, which no
         * driver consumes: refused once the node and its children are
         * open. */
        qmp_error_setg(err,
                       drv->is_format
                           ? "Block format '%s' does not support the option "
                             "'cache'"
                           : "Block protocol '%s' doesn't support the option "
                             "'cache'",
                       drv->name);
        ret = -EINVAL;
    }
    if (ret < 0) {
        if (drv->close) {
            drv->close(bs);
        }
        open_finish(op, false);
        return;
    }
    bdev_set_default_filename(bs);
    if (drv->has_backing && !bs->auto_backing) {
        bs->auto_backing = bdev_header_backing(bs);
    }
    bdev_caps_refresh(bs);
    open_finish(op, true);
}

static void open_node(json_t *opts, bool monitor, const struct inherit *inh,
                      const struct bdev_open_params *params, bdev_open_cb *done,
                      void *opaque)
{
    struct open_op *op = calloc(1, sizeof(*op));

    if (!op) {
        abort();
    }
    op->opts = json_incref(opts);
    op->monitor = monitor;
    op->inherited = inh != NULL;
    if (inh) {
        op->inh = *inh;
        op->params = inh->params;
    } else if (params) {
        op->params = *params;
    }
    op->done = done;
    op->opaque = opaque;
    open_start(op);
}

/* A child from a BlockdevRef: an existing node (a new reference), or a new
 * implicit node. */
struct child_op {
    bdev_open_cb *done;
    void *opaque;
};

static void child_opened(void *opaque, struct bdev *bs, struct qmp_error *err)
{
    struct child_op c = *(struct child_op *)opaque;

    free(opaque);
    if (bs) {
        bs->parents++;
    }
    c.done(c.opaque, bs, err);
}

static void open_child(json_t *ref, const struct inherit *inh,
                       bdev_open_cb *done, void *opaque)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct bdev *child = NULL;
    struct child_op *c;

    if (json_is_object(ref)) {
        c = calloc(1, sizeof(*c));
        if (!c) {
            abort();
        }
        c->done = done;
        c->opaque = opaque;
        open_node(ref, false, inh, NULL, child_opened, c);
        return;
    }
    if (json_is_string(ref)) {
        const char *name = json_string_value(ref);

        child = bdev_find(name);
        if (!child) {
            qmp_error_setg(&err, "Cannot find device='%s' nor node-name='%s'",
                           name, name);
        } else {
            bdev_ref(child);
            child->parents++;
        }
    } else {
        qmp_error_setg(&err, "Invalid parameter type for 'file', expected: "
                             "BlockdevRef");
    }
    done(opaque, child, &err);
    qmp_error_clear(&err);
}

/* ---- opening where the caller cannot wait ------------------------------- */

/* Whether a driver in these options (or in its children's) completes its
 * open later. */
static bool opens_later(json_t *opts)
{
    const char *k, *drv = json_string_value(json_object_get(opts, "driver"));
    const struct bdev_driver *d = drv ? find_driver(drv) : NULL;
    json_t *v;

    if (d && d->open_start) {
        return true;
    }
    json_object_foreach(opts, k, v) {
        if (json_is_object(v) && opens_later(v)) {
            return true;
        }
    }
    return false;
}

struct now {
    bool done;
    struct bdev *bs;
    struct qmp_error *err;
};

static void now_done(void *opaque, struct bdev *bs, struct qmp_error *err)
{
    struct now *n = opaque;

    n->done = true;
    n->bs = bs;
    if (!bs) {
        err_move(n->err, err);
    }
}

/* For callers that need the node now (a driver opening its own children
 * inside its open, a filter insertion): refused when a driver would
 * complete later. */
static struct bdev *open_now(json_t *ref, bool child, const struct inherit *inh,
                             struct qmp_error *err)
{
    struct now n = {false, NULL, err};

    if (json_is_object(ref) && opens_later(ref)) {
        qmp_error_setg(err,
                       "Driver '%s' completes its open later: it cannot be "
                       "opened here",
                       json_string_value(json_object_get(ref, "driver")));
        return NULL;
    }
    if (child) {
        open_child(ref, inh, now_done, &n);
    } else {
        open_node(ref, false, inh, NULL, now_done, &n);
    }
    if (!n.done) {
        abort(); /* every driver in ref completes at once */
    }
    return n.bs;
}

void bdev_open_node_async(json_t *opts, bool monitor, bdev_open_cb *done,
                          void *opaque)
{
    open_node(opts, monitor, NULL, NULL, done, opaque);
}

struct bdev *bdev_open_filter_node(json_t *opts, struct bdev *child,
                                   struct qmp_error *err)
{
    struct bdev *f;

    filter_child = child;
    f = open_now(opts, false, NULL, err);
    filter_child = NULL;
    return f;
}

struct bdev *bdev_open_node(json_t *opts, bool monitor, struct qmp_error *err)
{
    return bdev_open_node_with(opts, monitor, NULL, err);
}

struct bdev *bdev_open_node_with(json_t *opts, bool monitor,
                                 const struct bdev_open_params *params,
                                 struct qmp_error *err)
{
    struct now n = {false, NULL, err};

    if (opens_later(opts)) {
        qmp_error_setg(err,
                       "Driver '%s' completes its open later: it cannot be "
                       "opened here",
                       json_string_value(json_object_get(opts, "driver")));
        return NULL;
    }
    open_node(opts, monitor, NULL, params, now_done, &n);
    if (!n.done) {
        abort();
    }
    return n.bs;
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
                          .force_share = parent->force_share,
                          .params = parent->params};

    return open_now(ref, true, &inh, err);
}

void bdev_open_cancel_all(void)
{
    /* Newest first: a child's open fails before its parent's, whose own
     * open then fails in turn (it was waiting for this one). */
    while (pending) {
        struct open_op *op = pending;
        struct bdev *bs = op->bs;

        pending = op->next;
        bs->opening = NULL;
        if (bs->drv->close) {
            bs->drv->close(bs); /* the driver drops what it waits for */
        }
        qmp_error_setg(&op->err, "Could not open node: %s",
                       strerror(ECANCELED));
        open_finish(op, false);
    }
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
    inh.params = parent->params;
    opts = json_object();
    json_object_set_new(opts, "driver", json_string(format));
    fopts = json_object();
    json_object_set_new(fopts, "driver", json_string("file"));
    json_object_set_new(fopts, "filename", json_string(path));
    json_object_set_new(opts, "file", fopts);
    bs = open_now(opts, true, &inh, &lerr);
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
