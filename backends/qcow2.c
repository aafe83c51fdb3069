/* qcow2 format driver (placeholder until the real driver lands). */
#include <errno.h>

#include "backends/bdev_int.h"

static int qcow2_open(struct bdev *bs, json_t *opts, struct qmp_error *err)
{
    (void)bs;
    (void)opts;
    qmp_error_setg(err, "qcow2 driver not implemented yet");
    return -ENOTSUP;
}

static void qcow2_close(struct bdev *bs)
{
    (void)bs;
}

static int64_t qcow2_length(struct bdev *bs)
{
    (void)bs;
    return 0;
}

static int qcow2_submit(struct bdev *bs, struct bdev_req *req)
{
    (void)bs;
    (void)req;
    return -ENOTSUP;
}

const struct bdev_driver bdev_drv_qcow2 = {
    .name = "qcow2",
    .is_format = true,
    .has_backing = true,
    .options_type = "BlockdevOptionsQcow2",
    .open = qcow2_open,
    .close = qcow2_close,
    .length = qcow2_length,
    .submit = qcow2_submit,
};
