/* The `copy-on-read` filter: one `file` child, shown unchanged.
 *
 * block-stream inserts it above the top for the job's lifetime, as QEMU
 * does, so that query-named-block-nodes shows the same graph. Every request
 * goes straight to the child; the copy itself is the stream job's (it reads
 * through this node and writes the data into the top), so the filter does
 * not write on reads by itself. It is created with bdev_insert_filter(), not
 * by blockdev-add.
 */
#include "backends/bdev_int.h"

#include <errno.h>

static int cor_open(struct bdev *bs, json_t *opts, struct qmp_error *err)
{
    (void)opts;
    if (!bs->file) {
        qmp_error_setg(err, "Parameter 'file' is missing");
        return -EINVAL;
    }
    /* What query-named-block-nodes shows: QEMU asks the filtered child. */
    bs->cluster_size = bdev_cluster_size(bs->file);
    return 0;
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
    .options_type = "BlockdevOptionsCor",
    .open = cor_open,
    .length = cor_length,
    .submit = cor_submit,
    .block_status = cor_block_status,
    .pread_sync = cor_pread_sync,
    .pwrite_sync = cor_pwrite_sync,
    .flush_sync = cor_flush_sync,
};
