/* The `copy-on-read` filter: one `file` child, shown unchanged.
 *
 * block-stream inserts it above the top for the job's lifetime, as QEMU
 * does, so that query-named-block-nodes shows the same graph; blockdev-add
 * opens it too (driver `copy-on-read`, members `file` and `bottom`). Every
 * request goes straight to the child; the copy itself is the stream job's
 * (it reads through this node and writes the data into the top), so the
 * filter does not write on reads by itself.
 *
 * `bottom` names the lowest node reads would copy from (QEMU 7.2's
 * cor_open): it must exist and not be a filter, and the links from this
 * node down to it are frozen while the filter exists (another `bottom`
 * across them, or a graph change QEMU checks, fails with "Cannot change
 * 'backing' link from 'a' to 'b'").
 */
#include "backends/bdev_int.h"

#include <errno.h>
#include <stdlib.h>

struct cor_state {
    struct bdev *bottom;  /* referenced; NULL without `bottom` */
    struct bdev **frozen; /* nodes below us whose link we froze, ref'd */
    size_t n_frozen;
    bool self_frozen; /* our own file link */
};

static void cor_thaw(struct bdev *bs)
{
    struct cor_state *st = bs->state;

    if (st->self_frozen) {
        bdev_link_freeze(bs, false);
        st->self_frozen = false;
    }
    for (size_t i = 0; i < st->n_frozen; i++) {
        bdev_link_freeze(st->frozen[i], false);
        bdev_unref(st->frozen[i]);
    }
    free(st->frozen);
    st->frozen = NULL;
    st->n_frozen = 0;
    bdev_unref(st->bottom);
    st->bottom = NULL;
}

static int cor_bottom(struct bdev *bs, const char *name, struct qmp_error *err)
{
    struct cor_state *st = bs->state;
    struct bdev *bottom = bdev_find(name), *n;
    size_t count = 0;

    if (!bottom) {
        qmp_error_setg(err, "Bottom node '%s' not found", name);
        return -EINVAL;
    }
    if (bdev_is_filter(bottom)) {
        qmp_error_setg(err, "Bottom node '%s' is a filter", name);
        return -EINVAL;
    }
    if (bdev_chain_freeze(bs, bottom, err) < 0) {
        return -EINVAL;
    }
    /* Remember what was frozen, to thaw exactly that. */
    for (n = bdev_chain_next(bs); n != bottom; n = bdev_chain_next(n)) {
        count++;
    }
    st->frozen = calloc(count ? count : 1, sizeof(*st->frozen));
    if (!st->frozen) {
        abort();
    }
    for (n = bdev_chain_next(bs); n != bottom; n = bdev_chain_next(n)) {
        bdev_ref(n);
        st->frozen[st->n_frozen++] = n;
    }
    st->self_frozen = bottom != bs;
    bdev_ref(bottom);
    st->bottom = bottom;
    return 0;
}

static int cor_open(struct bdev *bs, json_t *opts, struct qmp_error *err)
{
    const char *bottom = json_string_value(json_object_get(opts, "bottom"));

    if (!bs->file) {
        qmp_error_setg(err, "Parameter 'file' is missing");
        return -EINVAL;
    }
    /* What query-named-block-nodes shows: QEMU asks the filtered child. */
    bs->cluster_size = bdev_cluster_size(bs->file);
    if (bottom) {
        return cor_bottom(bs, bottom, err);
    }
    return 0;
}

static void cor_close(struct bdev *bs)
{
    cor_thaw(bs);
}

static int64_t cor_length(struct bdev *bs)
{
    return bdev_length(bs->file);
}

static void cor_done(void *opaque, int ret)
{
    bdev_req_complete(opaque, ret);
}

static int cor_submit(struct bdev *bs, struct bdev_req *req)
{
    switch (req->op) {
    case BDEV_OP_READ:
        return bdev_read(bs->file, req->offset, req->bytes, req->buf, cor_done,
                         req);
    case BDEV_OP_WRITE:
        return bdev_write(bs->file, req->offset, req->bytes, req->buf, cor_done,
                          req);
    case BDEV_OP_WRITE_ZEROES:
        return bdev_write_zeroes(bs->file, req->offset, req->bytes, cor_done,
                                 req);
    case BDEV_OP_FLUSH:
        return bdev_flush(bs->file, cor_done, req);
    }
    return -EINVAL;
}

/* The filter holds nothing itself: the child's answer is the answer. */
static int cor_block_status(struct bdev *bs, uint64_t offset, uint64_t bytes,
                            bdev_status_cb *cb, void *opaque)
{
    return bdev_block_status(bs->file, offset, bytes, cb, opaque);
}

static int cor_pread_sync(struct bdev *bs, uint64_t off, uint64_t n, void *buf)
{
    return bdev_child_pread_sync(bs->file, off, n, buf);
}

static int cor_pwrite_sync(struct bdev *bs, uint64_t off, uint64_t n,
                           const void *buf)
{
    return bdev_child_pwrite_sync(bs->file, off, n, buf);
}

static int cor_flush_sync(struct bdev *bs)
{
    return bdev_child_flush_sync(bs->file);
}

const struct bdev_driver bdev_drv_copy_on_read = {
    .name = "copy-on-read",
    .is_format = true, /* opens a `file` child like a format */
    .is_filter = true,
    .state_size = sizeof(struct cor_state),
    .options_type = "BlockdevOptionsCor",
    .open = cor_open,
    .close = cor_close,
    .length = cor_length,
    .submit = cor_submit,
    .block_status = cor_block_status,
    .pread_sync = cor_pread_sync,
    .pwrite_sync = cor_pwrite_sync,
    .flush_sync = cor_flush_sync,
};
