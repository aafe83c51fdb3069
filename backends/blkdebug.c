/* The `blkdebug` filter: passes I/O to its `image` child and fails chosen
 * requests by rule (QEMU 7.x semantics, reference §6.4).
 *
 * The node starts in state 1. A format driver above raises events; on an
 * event every rule for it whose state matches the current one (0 = any) is
 * applied: inject-error rules replace the active set (if at least one
 * matched), set-state rules pick the next state. Each request then looks
 * for the first active rule matching its I/O type and sector.
 */
#include "backends/bdev_int.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const event_names[] = {
    "l1_update",
    "l1_grow_alloc_table",
    "l1_grow_write_table",
    "l1_grow_activate_table",
    "l2_load",
    "l2_update",
    "l2_update_compressed",
    "l2_alloc_cow_read",
    "l2_alloc_write",
    "read_aio",
    "read_backing_aio",
    "read_compressed",
    "write_aio",
    "write_compressed",
    "vmstate_load",
    "vmstate_save",
    "cow_read",
    "cow_write",
    "reftable_load",
    "reftable_grow",
    "reftable_update",
    "refblock_load",
    "refblock_update",
    "refblock_update_part",
    "refblock_alloc",
    "refblock_alloc_hookup",
    "refblock_alloc_write",
    "refblock_alloc_write_blocks",
    "refblock_alloc_write_table",
    "refblock_alloc_switch_table",
    "cluster_alloc",
    "cluster_alloc_bytes",
    "cluster_free",
    "flush_to_os",
    "flush_to_disk",
    "pwritev_rmw_head",
    "pwritev_rmw_after_head",
    "pwritev_rmw_tail",
    "pwritev_rmw_after_tail",
    "pwritev",
    "pwritev_zero",
    "pwritev_done",
    "empty_image_prepare",
    "l1_shrink_write_table",
    "l1_shrink_free_l2_clusters",
    "cor_write",
    "cluster_alloc_space",
    "none",
};
#define N_EVENTS ((int)(sizeof(event_names) / sizeof(event_names[0])))

/* Our driver events, by enum bdev_debug_event, in QEMU's names. */
static const char *const bdev_event_names[BDEV_EV__MAX] = {
    [BDEV_EV_READ_AIO] = "read_aio",
    [BDEV_EV_READ_BACKING_AIO] = "read_backing_aio",
    [BDEV_EV_READ_COMPRESSED] = "read_compressed",
    [BDEV_EV_WRITE_AIO] = "write_aio",
    [BDEV_EV_L1_UPDATE] = "l1_update",
    [BDEV_EV_L2_LOAD] = "l2_load",
    [BDEV_EV_L2_UPDATE] = "l2_update",
    [BDEV_EV_L2_ALLOC_WRITE] = "l2_alloc_write",
    [BDEV_EV_REFBLOCK_LOAD] = "refblock_load",
    [BDEV_EV_REFBLOCK_UPDATE] = "refblock_update",
    [BDEV_EV_CLUSTER_ALLOC] = "cluster_alloc",
    [BDEV_EV_FLUSH_TO_OS] = "flush_to_os",
    [BDEV_EV_FLUSH_TO_DISK] = "flush_to_disk",
};

enum io_type {
    IO_READ,
    IO_WRITE,
    IO_WRITE_ZEROES,
    IO_DISCARD,
    IO_FLUSH,
    IO_BLOCK_STATUS,
};
static const char *const io_names[] = {"read",    "write", "write-zeroes",
                                       "discard", "flush", "block-status"};
#define IO_DEFAULT_MASK                                                        \
    ((1u << IO_READ) | (1u << IO_WRITE) | (1u << IO_WRITE_ZEROES) |            \
     (1u << IO_DISCARD) | (1u << IO_FLUSH))

struct rule {
    bool set_state;
    int state; /* 0: any */
    /* inject-error */
    unsigned iotype_mask;
    int error;
    int64_t offset; /* -1: any */
    bool once;
    bool immediately;
    /* set-state */
    int new_state;
    struct rule *next;        /* in rules[event] */
    struct rule *active_next; /* in the active list */
    bool active;
};

struct blkdebug_state {
    int state;
    struct rule *rules[N_EVENTS];
    struct rule *active;
};

static int event_index(const char *name)
{
    for (int i = 0; i < N_EVENTS; i++) {
        if (strcmp(event_names[i], name) == 0) {
            return i;
        }
    }
    return -1;
}

static int get_int(json_t *o, const char *key, int64_t dflt, int64_t *out,
                   struct qmp_error *err)
{
    json_t *v = json_object_get(o, key);

    if (!v) {
        *out = dflt;
        return 0;
    }
    if (!json_is_integer(v)) {
        qmp_error_setg(err,
                       "Invalid parameter type for '%s', expected: "
                       "integer",
                       key);
        return -EINVAL;
    }
    *out = json_integer_value(v);
    return 0;
}

static int add_rule(struct blkdebug_state *s, json_t *o, bool set_state,
                    struct qmp_error *err)
{
    const char *ev = json_string_value(json_object_get(o, "event"));
    int idx = ev ? event_index(ev) : -1;
    struct rule *r;
    int64_t v;

    if (!json_is_object(o) || idx < 0) {
        qmp_error_setg(err, "Invalid parameter '%s'", ev ? ev : "event");
        return -EINVAL;
    }
    r = calloc(1, sizeof(*r));
    if (!r) {
        return -ENOMEM;
    }
    r->set_state = set_state;
    if (get_int(o, "state", 0, &v, err) < 0) {
        goto fail;
    }
    r->state = (int)v;
    if (set_state) {
        if (!json_object_get(o, "new_state")) {
            qmp_error_setg(err, "Parameter 'new_state' is missing");
            goto fail;
        }
        if (get_int(o, "new_state", 0, &v, err) < 0) {
            goto fail;
        }
        r->new_state = (int)v;
    } else {
        const char *io = json_string_value(json_object_get(o, "iotype"));

        r->iotype_mask = IO_DEFAULT_MASK;
        if (io) {
            r->iotype_mask = 0;
            for (unsigned i = 0; i < 6; i++) {
                if (strcmp(io, io_names[i]) == 0) {
                    r->iotype_mask = 1u << i;
                }
            }
            if (!r->iotype_mask) {
                qmp_error_setg(err, "Invalid parameter '%s'", io);
                goto fail;
            }
        }
        if (get_int(o, "errno", EIO, &v, err) < 0) {
            goto fail;
        }
        r->error = (int)v;
        if (get_int(o, "sector", -1, &v, err) < 0) {
            goto fail;
        }
        if (v != -1 && (v < 0 || v > INT64_MAX / 512)) {
            qmp_error_setg(err, "Invalid value for 'sector'");
            goto fail;
        }
        r->offset = v < 0 ? -1 : v * 512;
        r->once = json_is_true(json_object_get(o, "once"));
        r->immediately = json_is_true(json_object_get(o, "immediately"));
    }
    /* At the head, like QEMU: rules of one event run newest first. */
    r->next = s->rules[idx];
    s->rules[idx] = r;
    return 0;

fail:
    free(r);
    return -EINVAL;
}

static void remove_rule(struct blkdebug_state *s, struct rule *r)
{
    for (int i = 0; i < N_EVENTS; i++) {
        for (struct rule **pp = &s->rules[i]; *pp; pp = &(*pp)->next) {
            if (*pp == r) {
                *pp = r->next;
                free(r);
                return;
            }
        }
    }
}

/* Members of a rule in QAPI schema order (BlkdebugInjectErrorOptions,
 * BlkdebugSetStateOptions). */
static const char *const rule_keys[] = {"event",  "state",      "new_state",
                                        "iotype", "errno",      "sector",
                                        "once",   "immediately"};

/* Flattens to dotted keys. QEMU's QDict lists keys of one hash bucket in
 * the order its copies leave them: the schema's (list items in order) for a
 * node the monitor adds, the reverse for a child (its options were copied
 * out of the parent's once more); bdev_json_filename lists the newest
 * first, so `last_first` inserts in reverse. */
static void flatten(json_t *dst, const char *prefix, json_t *v, bool last_first)
{
    char *key;

    if (json_is_object(v)) {
        size_t n = sizeof(rule_keys) / sizeof(rule_keys[0]);

        for (size_t j = 0; j < n; j++) {
            const char *rk = rule_keys[last_first ? n - 1 - j : j];
            json_t *m = json_object_get(v, rk);

            if (m && asprintf(&key, "%s.%s", prefix, rk) >= 0) {
                flatten(dst, key, m, last_first);
                free(key);
            }
        }
    } else if (json_is_array(v)) {
        size_t n = json_array_size(v);

        for (size_t j = 0; j < n; j++) {
            size_t i = last_first ? n - 1 - j : j;

            if (asprintf(&key, "%s.%zu", prefix, i) >= 0) {
                flatten(dst, key, json_array_get(v, i), last_first);
                free(key);
            }
        }
    } else {
        json_object_set(dst, prefix, v);
    }
}

static void free_rules(struct blkdebug_state *s)
{
    for (int i = 0; i < N_EVENTS; i++) {
        while (s->rules[i]) {
            struct rule *r = s->rules[i];

            s->rules[i] = r->next;
            free(r);
        }
    }
    s->active = NULL;
}

static void process_event(struct blkdebug_state *s, int idx);

static int blkdebug_open(struct bdev *bs, json_t *opts, struct qmp_error *err)
{
    struct blkdebug_state *s = bs->state;
    json_t *image = json_object_get(opts, "image");
    json_t *list, *item, *fo;
    size_t i;
    const char *k;
    json_t *v;
    json_int_t align;

    s->state = 1;
    align = json_integer_value(json_object_get(opts, "align"));
    if (align < 0) {
        qmp_error_setg(err, "Parameter 'align' expects a non-negative number "
                            "below 2^64");
        return -EINVAL;
    }
    if (json_object_get(opts, "config")) {
        qmp_error_setg(err, "blkdebug: config files are not supported");
        return -ENOTSUP;
    }
    if (!image) {
        qmp_error_setg(err, "Parameter 'image' is missing");
        return -EINVAL;
    }
    list = json_object_get(opts, "inject-error");
    json_array_foreach(list, i, item) {
        if (add_rule(s, item, false, err) < 0) {
            goto fail;
        }
    }
    list = json_object_get(opts, "set-state");
    json_array_foreach(list, i, item) {
        if (add_rule(s, item, true, err) < 0) {
            goto fail;
        }
    }
    bs->file = bdev_open_child(bs, image, false, err);
    if (!bs->file) {
        goto fail;
    }
    /* Checked once the image is open, as in QEMU. */
    if (align && (align >= INT_MAX || (align & (align - 1)))) {
        qmp_error_setg(err, "Cannot meet constraints with align %" PRId64,
                       (int64_t)align);
        goto fail;
    }
    bs->mem_align = bdev_mem_align(bs->file);
    process_event(s, event_index("none"));

    /* QEMU's pseudo-filename: the child, the driver, then the rules
     * flattened to dotted keys. */
    fo = json_object();
    json_object_set(fo, "image",
                    bs->file->full_opts ? bs->file->full_opts : image);
    json_object_set_new(fo, "driver", json_string("blkdebug"));
    /* The schema's order (see flatten). */
    for (i = 0; i < 3; i++) {
        k = (const char *[]){"align", "inject-error",
                             "set-state"}[bs->implicit ? i : 2 - i];
        v = json_object_get(opts, k);
        if (v) {
            flatten(fo, k, v, !bs->implicit);
        }
    }
    bs->full_opts = fo;
    if (json_object_size(fo) == 2 && bs->file->filename &&
        strncmp(bs->file->filename, "json:", 5) != 0) {
        /* No rules or settings: QEMU's blkdebug:<config>:<image> name. */
        if (asprintf(&bs->filename, "blkdebug::%s", bs->file->filename) < 0) {
            bs->filename = NULL;
        }
    } else {
        bs->filename = bdev_json_filename(fo);
    }
    return 0;

fail:
    free_rules(s);
    return -EINVAL;
}

static void blkdebug_close(struct bdev *bs)
{
    free_rules(bs->state);
}

static int64_t blkdebug_length(struct bdev *bs)
{
    return bdev_length(bs->file);
}

static void process_event(struct blkdebug_state *s, int idx)
{
    int new_state;
    bool injected = false;

    new_state = s->state;
    for (struct rule *r = s->rules[idx]; r; r = r->next) {
        if (r->state && r->state != s->state) {
            continue;
        }
        if (r->set_state) {
            new_state = r->new_state;
            continue;
        }
        if (!injected) {
            for (struct rule *a = s->active; a; a = a->active_next) {
                a->active = false;
            }
            s->active = NULL;
            injected = true;
        }
        r->active = true;
        r->active_next = s->active;
        s->active = r;
    }
    s->state = new_state;
}

static void blkdebug_debug_event(struct bdev *bs, enum bdev_debug_event ev)
{
    int idx = -1;

    if ((unsigned)ev < BDEV_EV__MAX && bdev_event_names[ev]) {
        idx = event_index(bdev_event_names[ev]);
    }
    if (idx >= 0) {
        process_event(bs->state, idx);
    }
}

/* 0: let the request through; else the errno to fail it with. */
static int rule_check(struct bdev *bs, uint64_t offset, uint64_t bytes,
                      enum io_type io, bool *immediately)
{
    struct blkdebug_state *s = bs->state;
    struct rule **pp, *r = NULL;
    int error;

    for (pp = &s->active; *pp; pp = &(*pp)->active_next) {
        struct rule *c = *pp;

        if ((c->offset == -1 || (bytes && (uint64_t)c->offset >= offset &&
                                 (uint64_t)c->offset < offset + bytes)) &&
            (c->iotype_mask & (1u << io))) {
            r = c;
            break;
        }
    }
    if (!r || !r->error) {
        return 0;
    }
    error = r->error;
    *immediately = r->immediately;
    if (r->once) {
        *pp = r->active_next;
        remove_rule(s, r);
    }
    return error;
}

static void child_done(void *opaque, int ret)
{
    bdev_req_complete(opaque, ret);
}

static int blkdebug_submit(struct bdev *bs, struct bdev_req *req)
{
    static const enum io_type types[] = {
        [BDEV_OP_READ] = IO_READ,
        [BDEV_OP_WRITE] = IO_WRITE,
        [BDEV_OP_WRITE_ZEROES] = IO_WRITE_ZEROES,
        [BDEV_OP_FLUSH] = IO_FLUSH,
    };
    bool immediately = false;
    int error =
        rule_check(bs, req->offset, req->bytes, types[req->op], &immediately);

    if (error) {
        if (immediately) {
            return -error;
        }
        /* One trip through the loop, then the error. */
        bdev_req_complete_later(req, -error);
        return 0;
    }
    switch (req->op) {
    case BDEV_OP_READ:
        return bdev_read(bs->file, req->offset, req->bytes, req->buf,
                         child_done, req);
    case BDEV_OP_WRITE:
        return bdev_write(bs->file, req->offset, req->bytes, req->buf,
                          child_done, req);
    case BDEV_OP_WRITE_ZEROES:
        return bdev_write_zeroes(bs->file, req->offset, req->bytes, child_done,
                                 req);
    case BDEV_OP_FLUSH:
        return bdev_flush(bs->file, child_done, req);
    }
    return -EINVAL;
}

struct status_err {
    bdev_status_cb *cb;
    void *opaque;
    int error;
};

static void status_err_later(void *arg)
{
    struct status_err *e = arg;

    e->cb(e->opaque, -e->error, 0, 0);
    free(e);
}

static int blkdebug_block_status(struct bdev *bs, uint64_t offset,
                                 uint64_t bytes, bdev_status_cb *cb,
                                 void *opaque)
{
    bool immediately = false;
    int error = rule_check(bs, offset, bytes, IO_BLOCK_STATUS, &immediately);
    struct status_err *e;

    if (!error) {
        return bdev_block_status(bs->file, offset, bytes, cb, opaque);
    }
    if (immediately) {
        return -error;
    }
    e = calloc(1, sizeof(*e));
    if (!e) {
        return -ENOMEM;
    }
    e->cb = cb;
    e->opaque = opaque;
    e->error = error;
    bdev_call_later(status_err_later, e);
    return 0;
}

static int blkdebug_pread_sync(struct bdev *bs, uint64_t off, uint64_t n,
                               void *buf)
{
    bool imm;
    int error = rule_check(bs, off, n, IO_READ, &imm);

    return error ? -error : bdev_child_pread_sync(bs->file, off, n, buf);
}

static int blkdebug_pwrite_sync(struct bdev *bs, uint64_t off, uint64_t n,
                                const void *buf)
{
    bool imm;
    int error = rule_check(bs, off, n, IO_WRITE, &imm);

    return error ? -error : bdev_child_pwrite_sync(bs->file, off, n, buf);
}

static int blkdebug_flush_sync(struct bdev *bs)
{
    bool imm;
    int error = rule_check(bs, 0, 0, IO_FLUSH, &imm);

    return error ? -error : bdev_child_flush_sync(bs->file);
}

const struct bdev_driver bdev_drv_blkdebug = {
    .name = "blkdebug",
    .state_size = sizeof(struct blkdebug_state),
    .options_type = "BlockdevOptionsBlkdebug",
    .open = blkdebug_open,
    .close = blkdebug_close,
    .length = blkdebug_length,
    .submit = blkdebug_submit,
    .block_status = blkdebug_block_status,
    .pread_sync = blkdebug_pread_sync,
    .pwrite_sync = blkdebug_pwrite_sync,
    .flush_sync = blkdebug_flush_sync,
    .debug_event = blkdebug_debug_event,
    .can_grow = true,
};
