/* The `raw` format driver: a window (offset, size) onto its file child. It
 * raises blkdebug's read_aio / write_aio on the child before data I/O. */
#include "backends/bdev_int.h"

#include <errno.h>
#include <inttypes.h>

struct raw_state {
    uint64_t offset;
    uint64_t size;
    bool has_size;
};

static int raw_open(struct bdev *bs, json_t *opts, struct qmp_error *err)
{
    struct raw_state *st = bs->state;
    json_t *off = json_object_get(opts, "offset");
    json_t *size = json_object_get(opts, "size");
    int64_t flen = bdev_length(bs->file);

    if (flen < 0) {
        qmp_error_setg(err, "Could not get the size of the file");
        return (int)flen;
    }
    if (off && (!json_is_integer(off) || json_integer_value(off) < 0)) {
        qmp_error_setg(err, "Parameter 'offset' expects a non-negative "
                            "number below 2^64");
        return -EINVAL;
    }
    if (size && (!json_is_integer(size) || json_integer_value(size) < 0)) {
        qmp_error_setg(err, "Parameter 'size' expects a non-negative number "
                            "below 2^64");
        return -EINVAL;
    }
    flen = (flen + 511) / 512 * 512; /* QEMU's length: whole sectors */
    st->offset = off ? (uint64_t)json_integer_value(off) : 0;
    st->has_size = size != NULL;
    st->size = size ? (uint64_t)json_integer_value(size) : 0;
    if (st->offset > (uint64_t)flen) {
        qmp_error_setg(err,
                       "Offset (%" PRIu64 ") cannot be greater than size of "
                       "the containing file (%" PRId64 ")",
                       st->offset, flen);
        return -EINVAL;
    }
    if (st->has_size && st->size > (uint64_t)flen - st->offset) {
        qmp_error_setg(err,
                       "The sum of offset (%" PRIu64 ") and size (%" PRIu64
                       ") has to be smaller or equal to the  actual size of "
                       "the containing file (%" PRId64 ")",
                       st->offset, st->size, flen);
        return -EINVAL;
    }
    if (off || size) {
        /* Options that change what the node shows: QEMU names it with
         * them (json:{...}) instead of taking its file's name. */
        bs->full_opts = json_pack("{s:s}", "driver", "raw");
        if (off) {
            json_object_set(bs->full_opts, "offset", off);
        }
        if (size) {
            json_object_set(bs->full_opts, "size", size);
        }
        if (bs->file->full_opts) {
            json_object_set(bs->full_opts, "file", bs->file->full_opts);
        }
        bs->filename = bdev_json_filename(bs->full_opts);
    }
    return 0;
}

static int64_t raw_length(struct bdev *bs)
{
    struct raw_state *st = bs->state;
    int64_t flen;

    if (st->has_size) {
        return (int64_t)st->size;
    }
    flen = bdev_length(bs->file);
    if (flen < 0) {
        return flen;
    }
    return (uint64_t)flen > st->offset ? flen - (int64_t)st->offset : 0;
}

static void raw_done(void *opaque, int ret)
{
    bdev_req_complete(opaque, ret);
}

static int raw_submit(struct bdev *bs, struct bdev_req *req)
{
    struct raw_state *st = bs->state;
    uint64_t off = req->offset + st->offset;

    switch (req->op) {
    case BDEV_OP_READ:
        bdev_debug_event(bs->file, BDEV_EV_READ_AIO);
        return bdev_read(bs->file, off, req->bytes, req->buf, raw_done, req);
    case BDEV_OP_WRITE:
        bdev_debug_event(bs->file, BDEV_EV_WRITE_AIO);
        return bdev_write(bs->file, off, req->bytes, req->buf, raw_done, req);
    case BDEV_OP_WRITE_ZEROES:
        return bdev_write_zeroes(bs->file, off, req->bytes, raw_done, req);
    case BDEV_OP_FLUSH:
        return bdev_flush(bs->file, raw_done, req);
    }
    return -EINVAL;
}

static int raw_pread_sync(struct bdev *bs, uint64_t off, uint64_t n, void *buf)
{
    struct raw_state *st = bs->state;

    return bdev_child_pread_sync(bs->file, off + st->offset, n, buf);
}

static int raw_pwrite_sync(struct bdev *bs, uint64_t off, uint64_t n,
                           const void *buf)
{
    struct raw_state *st = bs->state;

    return bdev_child_pwrite_sync(bs->file, off + st->offset, n, buf);
}

static int raw_flush_sync(struct bdev *bs)
{
    return bdev_child_flush_sync(bs->file);
}

/* block_resize of a raw node is its file's (fixed offset/size: no). */
static int raw_truncate(struct bdev *bs, uint64_t size, int prealloc,
                        bdev_cb *cb, void *opaque)
{
    struct raw_state *st = bs->state;

    if (st->offset || st->has_size || !bs->file->drv->truncate) {
        return -ENOTSUP;
    }
    return bs->file->drv->truncate(bs->file, size, prealloc, cb, opaque);
}

const struct bdev_driver bdev_drv_raw = {
    .name = "raw",
    .is_format = true,
    .state_size = sizeof(struct raw_state),
    .options_type = "BlockdevOptionsRaw",
    .open = raw_open,
    .length = raw_length,
    .submit = raw_submit,
    .pread_sync = raw_pread_sync,
    .pwrite_sync = raw_pwrite_sync,
    .flush_sync = raw_flush_sync,
    .truncate = raw_truncate,
};
