/* The `null-co` driver: a node of a given size that stores nothing. Reads
 * leave the buffer alone unless read-zeroes is set (QEMU 7.2's default is
 * false); latency-ns delays every completion, for benchmarks. */
#include "backends/bdev_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct null_state {
    uint64_t size;
    uint64_t latency_ns;
    bool read_zeroes;
};

struct null_timer {
    uv_timer_t timer;
    struct bdev_req *req;
};

static int null_open(struct bdev *bs, json_t *opts, struct qmp_error *err)
{
    struct null_state *st = bs->state;
    json_t *size = json_object_get(opts, "size");
    json_t *lat = json_object_get(opts, "latency-ns");

    if (size && (!json_is_integer(size) || json_integer_value(size) < 0)) {
        qmp_error_setg(err, "Parameter 'size' expects a non-negative value");
        return -EINVAL;
    }
    if (lat && (!json_is_integer(lat) || json_integer_value(lat) < 0)) {
        /* QEMU's text for a negative or > INT64_MAX latency. */
        qmp_error_setg(err, "latency-ns is invalid");
        return -EINVAL;
    }
    st->size = size ? (uint64_t)json_integer_value(size) : 1073741824ull;
    st->latency_ns = lat ? (uint64_t)json_integer_value(lat) : 0;
    st->read_zeroes = json_is_true(json_object_get(opts, "read-zeroes"));
    bs->full_opts = json_pack("{s:s}", "driver", "null-co");
    if (size) {
        json_object_set(bs->full_opts, "size", size);
    }
    if (json_object_get(opts, "read-zeroes")) {
        json_object_set(bs->full_opts, "read-zeroes",
                        json_object_get(opts, "read-zeroes"));
    }
    /* QEMU names it by URL unless an option changes what it reads. */
    bs->filename = json_object_size(bs->full_opts) > 1
                       ? bdev_json_filename(bs->full_opts)
                       : strdup("null-co://");
    return 0;
}

static int64_t null_length(struct bdev *bs)
{
    struct null_state *st = bs->state;

    return (int64_t)st->size;
}

static void timer_closed(uv_handle_t *h)
{
    free(h->data);
}

static void timer_fired(uv_timer_t *t)
{
    struct null_timer *nt = t->data;

    bdev_req_complete(nt->req, 0);
    uv_close((uv_handle_t *)&nt->timer, timer_closed);
}

static int null_submit(struct bdev *bs, struct bdev_req *req)
{
    struct null_state *st = bs->state;
    struct null_timer *nt;

    if (req->op == BDEV_OP_READ && st->read_zeroes) {
        memset(req->buf, 0, req->bytes);
    }
    if (st->latency_ns == 0) {
        bdev_req_complete_later(req, 0);
        return 0;
    }
    nt = calloc(1, sizeof(*nt));
    if (!nt) {
        return -ENOMEM;
    }
    nt->req = req;
    uv_timer_init(bdev_loop(), &nt->timer);
    nt->timer.data = nt;
    /* libuv timers have millisecond resolution: round up. */
    uv_timer_start(&nt->timer, timer_fired, (st->latency_ns + 999999) / 1000000,
                   0);
    return 0;
}

static void null_status_later(void *arg)
{
    void **a = arg;
    bdev_status_cb *cb = (bdev_status_cb *)a[0];
    struct bdev *bs = a[2];
    struct null_state *st = bs->state;
    uint64_t bytes = (uint64_t)(uintptr_t)a[3];

    cb(a[1], 0,
       BDEV_STATUS_ALLOCATED |
           (st->read_zeroes ? BDEV_STATUS_ZERO : BDEV_STATUS_DATA),
       bytes);
    free(a);
}

static int null_block_status(struct bdev *bs, uint64_t offset, uint64_t bytes,
                             bdev_status_cb *cb, void *opaque)
{
    void **a = calloc(4, sizeof(void *));

    (void)offset;
    if (!a) {
        return -ENOMEM;
    }
    a[0] = (void *)cb;
    a[1] = opaque;
    a[2] = bs;
    a[3] = (void *)(uintptr_t)bytes;
    bdev_call_later(null_status_later, a);
    return 0;
}

static int null_pread_sync(struct bdev *bs, uint64_t off, uint64_t n, void *buf)
{
    struct null_state *st = bs->state;

    (void)off;
    if (st->read_zeroes) {
        memset(buf, 0, n);
    }
    return 0;
}

static int null_pwrite_sync(struct bdev *bs, uint64_t off, uint64_t n,
                            const void *buf)
{
    (void)bs;
    (void)off;
    (void)n;
    (void)buf;
    return 0;
}

static int null_flush_sync(struct bdev *bs)
{
    (void)bs;
    return 0;
}

const struct bdev_driver bdev_drv_null_co = {
    .name = "null-co",
    .state_size = sizeof(struct null_state),
    .options_type = "BlockdevOptionsNull",
    .open = null_open,
    .length = null_length,
    .submit = null_submit,
    .block_status = null_block_status,
    .pread_sync = null_pread_sync,
    .pwrite_sync = null_pwrite_sync,
    .flush_sync = null_flush_sync,
};
