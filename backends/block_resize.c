/* block_resize {device?, node-name?, size}: QEMU 7.2's qmp_block_resize on
 * a node (qsd has no devices: only node-name finds one). file and raw
 * grow and shrink; qcow2 grows within the L1 table it has (larger sizes,
 * which need a bigger L1 table, and shrinking are refused with a clear
 * error). The reply goes out once the new size is on disk. */
#include "backends/bdev_int.h"
#include "backends/image_create.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/qmp.h"

static const char resize_schema[] =
    "[{'command': 'block_resize',"
    " 'data': {'*device': 'str', '*node-name': 'str', 'size': 'int'}}]";

struct resize_op {
    struct qmp_deferred *d;
    struct bdev *bs;
};

static void resize_done(void *opaque, int ret)
{
    struct resize_op *op = opaque;
    struct qmp_error err = QMP_ERROR_INIT;

    if (!op->d) {
        /* no session to answer */
    } else if (ret < 0) {
        qmp_error_setg(&err, "Could not resize: %s", strerror(-ret));
        qmp_deferred_reply(op->d, NULL, &err);
    } else {
        qmp_deferred_reply(op->d, json_object(), NULL);
    }
    bdev_unref(op->bs);
    free(op);
}

static json_t *qmp_block_resize(json_t *args, struct qmp_session *s,
                                struct qmp_error *err)
{
    const char *device = json_string_value(json_object_get(args, "device"));
    const char *name = json_string_value(json_object_get(args, "node-name"));
    json_int_t size = json_integer_value(json_object_get(args, "size"));
    struct bdev *bs = name ? bdev_find(name) : NULL;
    bool qcow2;
    struct resize_op *op;
    int ret;

    if (!bs) {
        qmp_error_setg(err, "Cannot find device='%s' nor node-name='%s'",
                       device ? device : "", name ? name : "");
        return NULL;
    }
    if (size < 0) {
        qmp_error_setg(err, "Parameter 'size' expects a >0 size");
        return NULL;
    }
    if (bs->read_only) {
        qmp_error_setg(err, "Image is read-only");
        return NULL;
    }
    if (bdev_claimed_by(bs)) {
        bdev_claim(bs, "resize", err); /* "Node 'x' is busy: ..." */
        return NULL;
    }
    qcow2 = !strcmp(bs->drv->name, "qcow2");
    if (qcow2 && size % 512) {
        qmp_error_setg(err, "The new size must be a multiple of 512");
        return NULL;
    }
    op = calloc(1, sizeof(*op));
    if (!op) {
        abort();
    }
    ret = bdev_truncate(bs, (uint64_t)size, BDEV_PREALLOC_OFF, resize_done, op);
    if (ret < 0) {
        free(op);
        if (ret == -EFBIG) {
            qmp_error_setg(err, "Failed to grow the L1 table: File too large");
        } else if (ret == -ENOTSUP && qcow2) {
            qmp_error_setg(
                err,
                "blockjobd cannot %s qcow2 images (node '%s' is %" PRId64
                " bytes)",
                (uint64_t)size < (uint64_t)bdev_length(bs)
                    ? "shrink"
                    : "grow the L1 table of",
                bdev_node_name(bs), bdev_length(bs));
        } else if (ret == -ENOTSUP) {
            qmp_error_setg(err, "Image format driver does not support resize");
        } else {
            qmp_error_setg(err, "Could not resize: %s", strerror(-ret));
        }
        return NULL;
    }
    op->bs = bs;
    bdev_ref(bs);
    op->d = s ? qmp_session_defer(s) : NULL;
    return NULL;
}

void bdev_resize_qmp_init(void)
{
    qmp_schema_add(resize_schema);
    qmp_command_register("block_resize", qmp_block_resize);
}
