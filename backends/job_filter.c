/* The filters block-commit puts into the graph for its lifetime, as QEMU
 * 7.2 does, so that query-named-block-nodes shows the same nodes:
 *
 *  - `commit_top` (intermediate commit) between the overlay of the top and
 *    the top: read-only, every read goes to the top;
 *  - `mirror_top` (active commit) above the top, taking every parent the
 *    top had: reads and writes go through to the top, and the job sees the
 *    writes through the top's dirty bitmap.
 *
 * Neither can be made by blockdev-add (not in its schema); only
 * bdev_insert_filter() opens them.
 */
#include "backends/bdev_int.h"

#include <errno.h>

static int jf_open(struct bdev *bs, json_t *opts, struct qmp_error *err)
{
    (void)opts;
    if (!bs->file) {
        qmp_error_setg(err, "Parameter 'file' is missing");
        return -EINVAL;
    }
    bs->cluster_size = bdev_cluster_size(bs->file);
    if (bs->drv == &bdev_drv_commit_top) {
        bs->read_only = true; /* QEMU's commit_top shows ro: true */
    }
    return 0;
}

static int64_t jf_length(struct bdev *bs)
{
    return bdev_length(bs->file);
}

static void jf_done(void *opaque, int ret)
{
    bdev_req_complete(opaque, ret);
}

static int jf_submit(struct bdev *bs, struct bdev_req *req)
{
    switch (req->op) {
    case BDEV_OP_READ:
        return bdev_read(bs->file, req->offset, req->bytes, req->buf, jf_done,
                         req);
    case BDEV_OP_WRITE:
        return bdev_write(bs->file, req->offset, req->bytes, req->buf, jf_done,
                          req);
    case BDEV_OP_WRITE_ZEROES:
        return bdev_write_zeroes(bs->file, req->offset, req->bytes, jf_done,
                                 req);
    case BDEV_OP_FLUSH:
        return bdev_flush(bs->file, jf_done, req);
    }
    return -EINVAL;
}

static int jf_block_status(struct bdev *bs, uint64_t offset, uint64_t bytes,
                           bdev_status_cb *cb, void *opaque)
{
    return bdev_block_status(bs->file, offset, bytes, cb, opaque);
}

static int jf_pread_sync(struct bdev *bs, uint64_t off, uint64_t n, void *buf)
{
    return bdev_child_pread_sync(bs->file, off, n, buf);
}

static int jf_pwrite_sync(struct bdev *bs, uint64_t off, uint64_t n,
                          const void *buf)
{
    return bdev_child_pwrite_sync(bs->file, off, n, buf);
}

static int jf_flush_sync(struct bdev *bs)
{
    return bdev_child_flush_sync(bs->file);
}

const struct bdev_driver bdev_drv_commit_top = {
    .name = "commit_top",
    .is_format = true, /* one `file` child, as copy-on-read */
    .is_filter = true,
    .named_as_child = true,
    .open = jf_open,
    .length = jf_length,
    .submit = jf_submit,
    .block_status = jf_block_status,
    .pread_sync = jf_pread_sync,
    .pwrite_sync = jf_pwrite_sync,
    .flush_sync = jf_flush_sync,
};

const struct bdev_driver bdev_drv_mirror_top = {
    .name = "mirror_top",
    .is_format = true,
    .is_filter = true,
    .named_as_child = true,
    .open = jf_open,
    .length = jf_length,
    .submit = jf_submit,
    .block_status = jf_block_status,
    .pread_sync = jf_pread_sync,
    .pwrite_sync = jf_pwrite_sync,
    .flush_sync = jf_flush_sync,
};
