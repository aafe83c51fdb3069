/* What image creation needs from the graph: a node's length changed
 * (bdev_truncate, dispatched to its driver) and QEMU's
 * bdrv_open_blockdev_ref for a creation's `file`. */
#include "backends/bdev_int.h"
#include "backends/image_create.h"

#include <errno.h>

int bdev_truncate(struct bdev *bs, uint64_t size, enum bdev_prealloc prealloc,
                  bdev_cb *cb, void *opaque)
{
    if (!bs->drv->truncate) {
        return -ENOTSUP;
    }
    if (bs->read_only) {
        return -EACCES;
    }
    return bs->drv->truncate(bs, size, (int)prealloc, cb, opaque);
}

struct bdev *bdev_open_blockdev_ref(json_t *ref, struct qmp_error *err)
{
    struct bdev *bs;

    if (json_is_string(ref)) {
        const char *name = json_string_value(ref);

        bs = bdev_find(name);
        if (!bs) {
            qmp_error_setg(err, "Cannot find device='%s' nor node-name='%s'",
                           name, name);
            return NULL;
        }
        bdev_ref(bs);
        return bs;
    }
    return bdev_open_node(ref, false, err);
}

int bdev_take_write(struct bdev *bs, struct qmp_error *err)
{
    unsigned perm = bs->perm, shared = bs->shared_perm;
    int ret;

    if (!bs->drv->apply_perm) {
        return 0;
    }
    bs->perm |= BDEV_PERM_WRITE | BDEV_PERM_RESIZE;
    bs->shared_perm &= ~BDEV_PERM_RESIZE;
    ret = bs->drv->apply_perm(bs, err);
    if (ret < 0) {
        bs->perm = perm;
        bs->shared_perm = shared;
    }
    return ret;
}
