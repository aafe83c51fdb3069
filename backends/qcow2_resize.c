/* qcow2's part of block_resize: growing the virtual size within what the
 * L1 table maps already (the header's size, written and flushed, then
 * used). Growing the L1 table and shrinking are refused (-ENOTSUP). */
#include "backends/image_create.h"
#include "backends/qcow2_int.h"

#include <errno.h>
#include <stdlib.h>

struct q2_resize {
    struct bdev *bs;
    uint64_t size;
    uint8_t *buf;
    bdev_cb *cb;
    void *opaque;
};

static void resize_end(struct q2_resize *r, int ret)
{
    struct q2 *s = r->bs->state;

    if (ret == 0) {
        s->m.h.size = r->size;
        qcow2_put_be64(s->c0 + 24, r->size);
    }
    r->cb(r->opaque, ret);
    bdev_buf_free(r->buf);
    bdev_unref(r->bs);
    free(r);
}

static void flushed(void *opaque, int ret)
{
    resize_end(opaque, ret);
}

static void written(void *opaque, int ret)
{
    struct q2_resize *r = opaque;

    if (ret == 0) {
        ret = bdev_flush(r->bs->file, flushed, r);
        if (ret == 0) {
            return;
        }
    }
    resize_end(r, ret);
}

int qcow2_truncate(struct bdev *bs, uint64_t size, int prealloc, bdev_cb *cb,
                   void *opaque)
{
    struct q2 *s = bs->state;
    uint64_t need = qcow2_l1_entries_needed(size, s->cb);
    struct q2_resize *r;
    int ret;

    if (prealloc != BDEV_PREALLOC_OFF) {
        return -ENOTSUP;
    }
    if (need == UINT64_MAX || need > QCOW2_MAX_L1_BYTES / 8) {
        return -EFBIG;
    }
    if (size < s->m.h.size || need > s->m.h.l1_size) {
        return -ENOTSUP;
    }
    r = calloc(1, sizeof(*r));
    if (!r || !(r->buf = bdev_buf_alloc(4096))) {
        free(r);
        return -ENOMEM;
    }
    r->bs = bs;
    r->size = size;
    r->cb = cb;
    r->opaque = opaque;
    qcow2_put_be64(r->buf, size);
    ret = bdev_write(bs->file, 24, 8, r->buf, written, r);
    if (ret < 0) {
        bdev_buf_free(r->buf);
        free(r);
        return ret;
    }
    bdev_ref(bs);
    return 0;
}
