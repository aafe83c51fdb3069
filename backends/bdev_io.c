/* The request path: range checks, detect-zeroes, in-flight counting and
 * the waits on it (bdev_drain), completions, block status and allocation
 * down a chain, buffers, the synchronous child helpers and blkdebug
 * events. */
#include "backends/bdev_core.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backends/aio.h"
#include "backends/bitmap.h"

struct drain_waiter {
    struct bdev *bs;
    bdev_cb *cb;
    void *opaque;
    struct drain_waiter *next;
};

static struct drain_waiter *drains;
static uint64_t zero_writes_detected;

/* ---- requests ---------------------------------------------------------- */

static bool tree_busy(const struct bdev *bs)
{
    if (!bs) {
        return false;
    }
    return bs->in_flight > 0 || tree_busy(bs->file) || tree_busy(bs->backing);
}

bool bdev_tree_busy(const struct bdev *bs)
{
    return tree_busy(bs);
}

static void drain_check(void)
{
    struct drain_waiter **pp = &drains;

    while (*pp) {
        struct drain_waiter *w = *pp;

        if (tree_busy(w->bs)) {
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        w->cb(w->opaque, 0);
        free(w);
        /* The callback may have changed the list: start over. */
        pp = &drains;
    }
}

static void drain_later(void *arg)
{
    (void)arg;
    drain_check();
}

/* ---- capabilities -------------------------------------------------------- */

void bdev_caps_refresh(struct bdev *bs)
{
    struct bdev_caps c = {0};

    c.write_zeroes = bs->drv->submit != NULL;
    /* Nodes that hand writes to their file as they are (raw, blkdebug,
     * copy-on-read) can what it can; a format with metadata (qcow2) makes
     * zeroes itself. */
    if (bs->file && !bs->drv->has_backing) {
        c.write_zeroes = c.write_zeroes && bdev_caps(bs->file)->write_zeroes;
    }
    c.discard = false;
    c.mem_align = bdev_mem_align(bs);
    c.cluster_size = bdev_cluster_size(bs);
    if (bs->drv->caps) {
        bs->drv->caps(bs, &c);
    }
    bs->caps = c;
    bs->caps_known = true;
}

const struct bdev_caps *bdev_caps(struct bdev *bs)
{
    if (!bs->caps_known) {
        bdev_caps_refresh(bs);
    }
    return &bs->caps;
}

/* ---- requests: in flight and waits on it --------------------------------- */

void bdev_io_forget_drains(void)
{
    while (drains) {
        struct drain_waiter *w = drains;

        drains = w->next;
        free(w);
    }
}

int bdev_drain(struct bdev *bs, bdev_cb *cb, void *opaque)
{
    struct drain_waiter *w = calloc(1, sizeof(*w));

    if (!w) {
        return -ENOMEM;
    }
    w->bs = bs;
    w->cb = cb;
    w->opaque = opaque;
    w->next = drains;
    drains = w;
    if (!tree_busy(bs)) {
        bdev_call_later(drain_later, NULL);
    }
    return 0;
}

void bdev_req_complete(struct bdev_req *req, int ret)
{
    struct bdev *bs = req->bs;

    /* The callback may end a job that drops the last reference to this
     * very node (a job's filter): keep it alive until the count is done. */
    bs->refcnt++;
    if (req->op == BDEV_OP_WRITE || req->op == BDEV_OP_WRITE_ZEROES) {
        bitmap_note_write(bs, req->offset, req->bytes);
    }
    req->cb(req->opaque, ret);
    free(req);
    bs->in_flight--;
    /* Drop our reference before draining: a drain that ends here may
     * delete the node and counts its references. */
    bdev_unref(bs);
    if (drains) {
        drain_check();
    }
}

struct later_done {
    struct bdev_req *req;
    int ret;
};

static void complete_later_cb(void *arg)
{
    struct later_done *l = arg;
    struct bdev_req *req = l->req;
    int ret = l->ret;

    free(l);
    bdev_req_complete(req, ret);
}

void bdev_req_complete_later(struct bdev_req *req, int ret)
{
    struct later_done *l = calloc(1, sizeof(*l));

    if (!l) {
        abort();
    }
    l->req = req;
    l->ret = ret;
    bdev_call_later(complete_later_cb, l);
}

static bool buf_is_zero(const void *buf, uint64_t bytes)
{
    const unsigned char *p = buf;

    /* Cheap rejection first: most data buffers differ in the first byte. */
    if (p[0] || p[bytes - 1]) {
        return false;
    }
    return memcmp(p, p + 1, bytes - 1) == 0;
}

uint64_t bdev_detected_zero_writes(void)
{
    return zero_writes_detected;
}

/* A read that crosses the end: the caller's callback for the whole. */
static int submit(struct bdev *bs, enum bdev_op op, uint64_t offset,
                  uint64_t bytes, void *buf, bdev_cb *cb, void *opaque)
{
    struct bdev_req *req;
    int ret;

    if (!bs->drv->submit ||
        (op == BDEV_OP_WRITE_ZEROES && !bdev_caps(bs)->write_zeroes)) {
        return -ENOTSUP;
    }
    if (op != BDEV_OP_FLUSH) {
        int64_t len = bdev_length(bs);

        if (offset > INT64_MAX || bytes > INT64_MAX - offset) {
            return -EINVAL;
        }
        if (op != BDEV_OP_READ && bs->read_only) {
            return -EPERM;
        }
        if (len < 0) {
            return (int)len;
        }
        if (offset + bytes > (uint64_t)len && !bs->drv->can_grow) {
            if (op != BDEV_OP_READ) {
                return -EIO;
            }
            /* Reads past the end see zeroes, as in QEMU. */
            if (offset >= (uint64_t)len) {
                memset(buf, 0, bytes);
                bytes = 0;
            } else {
                memset((char *)buf + ((uint64_t)len - offset), 0,
                       offset + bytes - (uint64_t)len);
                bytes = (uint64_t)len - offset;
            }
        }
    } else if (bs->read_only) {
        /* Flushing a read-only node is a no-op that succeeds. */
    }
    if (op == BDEV_OP_WRITE && bytes && bs->detect_zeroes &&
        strcmp(bs->detect_zeroes, "off") != 0 && buf_is_zero(buf, bytes)) {
        /* detect-zeroes=on|unmap: a buffer of zeroes is written as a
         * write-zeroes request (qcow2 then stores zero clusters, file
         * punches or zeroes the range). We never discard, so unmap acts
         * like on - the data read back is the same. */
        op = BDEV_OP_WRITE_ZEROES;
        buf = NULL;
        zero_writes_detected++;
    }
    req = calloc(1, sizeof(*req));
    if (!req) {
        return -ENOMEM;
    }
    req->bs = bs;
    req->op = op;
    req->offset = offset;
    req->bytes = bytes;
    req->buf = buf;
    req->cb = cb;
    req->opaque = opaque;
    bs->in_flight++;
    if (bytes == 0 && op != BDEV_OP_FLUSH) {
        bdev_req_complete_later(req, 0);
        return 0;
    }
    ret = bs->drv->submit(bs, req);
    if (ret < 0) {
        free(req);
        bs->in_flight--;
        if (drains && bs->in_flight == 0) {
            bdev_call_later(drain_later, NULL);
        }
    }
    return ret;
}

int bdev_read(struct bdev *bs, uint64_t offset, uint64_t bytes, void *buf,
              bdev_cb *cb, void *opaque)
{
    return submit(bs, BDEV_OP_READ, offset, bytes, buf, cb, opaque);
}

int bdev_write(struct bdev *bs, uint64_t offset, uint64_t bytes,
               const void *buf, bdev_cb *cb, void *opaque)
{
    return submit(bs, BDEV_OP_WRITE, offset, bytes, (void *)buf, cb, opaque);
}

int bdev_write_zeroes(struct bdev *bs, uint64_t offset, uint64_t bytes,
                      bdev_cb *cb, void *opaque)
{
    return submit(bs, BDEV_OP_WRITE_ZEROES, offset, bytes, NULL, cb, opaque);
}

int bdev_flush(struct bdev *bs, bdev_cb *cb, void *opaque)
{
    return submit(bs, BDEV_OP_FLUSH, 0, 0, NULL, cb, opaque);
}

/* ---- block status ------------------------------------------------------ */

struct status_op {
    struct bdev *bs;
    bdev_status_cb *cb;
    void *opaque;
    uint64_t bytes;
};

static void status_done(void *opaque, int ret, unsigned status, uint64_t pnum)
{
    struct status_op *op = opaque;
    struct bdev *bs = op->bs;

    if (ret == 0 && (pnum == 0 || pnum > op->bytes)) {
        pnum = op->bytes; /* a driver bug must not loop a job forever */
    }
    op->cb(op->opaque, ret, status, pnum);
    free(op);
    bs->in_flight--;
    if (drains && bs->in_flight == 0) {
        drain_check();
    }
}

static void status_all_data(void *arg)
{
    struct status_op *op = arg;

    status_done(op, 0, BDEV_STATUS_DATA | BDEV_STATUS_ALLOCATED, op->bytes);
}

int bdev_block_status(struct bdev *bs, uint64_t offset, uint64_t bytes,
                      bdev_status_cb *cb, void *opaque)
{
    struct status_op *op;
    int64_t len = bdev_length(bs);
    int ret;

    if (bytes == 0 || len < 0 || offset >= (uint64_t)len) {
        return -EINVAL;
    }
    if (bytes > (uint64_t)len - offset) {
        bytes = (uint64_t)len - offset;
    }
    op = calloc(1, sizeof(*op));
    if (!op) {
        return -ENOMEM;
    }
    op->bs = bs;
    op->cb = cb;
    op->opaque = opaque;
    op->bytes = bytes;
    bs->in_flight++;
    if (!bs->drv->block_status) {
        bdev_call_later(status_all_data, op);
        return 0;
    }
    ret = bs->drv->block_status(bs, offset, bytes, status_done, op);
    if (ret < 0) {
        free(op);
        bs->in_flight--;
    }
    return ret;
}

/* is_allocated_above: one layer at a time, top down. */
struct above_op {
    struct bdev *cur, *bottom;
    uint64_t offset, n;
    bool below_first; /* a layer was asked already */
    bdev_status_cb *cb;
    void *opaque;
};

static void above_step(struct above_op *op);

static void above_finish(struct above_op *op, int ret, unsigned st,
                         uint64_t pnum)
{
    op->cb(op->opaque, ret, st, pnum);
    free(op);
}

static void above_layer_done(void *opaque, int ret, unsigned status,
                             uint64_t pnum)
{
    struct above_op *op = opaque;

    if (ret < 0) {
        above_finish(op, ret, 0, 0);
        return;
    }
    if (status & BDEV_STATUS_ALLOCATED) {
        above_finish(op, 0, BDEV_STATUS_ALLOCATED, pnum < op->n ? pnum : op->n);
        return;
    }
    if (pnum < op->n) {
        op->n = pnum;
    }
    if (op->cur == op->bottom) {
        above_finish(op, 0, 0, op->n);
        return;
    }
    op->cur = op->cur->backing;
    op->below_first = true;
    above_step(op);
}

/* Past the end of a layer, as QEMU 7.2's bdrv_is_allocated_above: past the
 * first one's end nothing is allocated and the answer covers nothing
 * (pnum 0: the rest of the disk, for a stream); past a deeper one's end,
 * the zeroes read there count as allocated in it. */
static void above_past_end(void *arg)
{
    struct above_op *op = arg;

    if (op->below_first) {
        above_finish(op, 0, BDEV_STATUS_ALLOCATED, op->n);
    } else {
        above_finish(op, 0, 0, 0);
    }
}

static void above_step(struct above_op *op)
{
    int64_t len;
    uint64_t n = op->n;
    int ret;

    /* Filters hold nothing of their own: look through them. */
    while (op->cur && op->cur != op->bottom && op->cur->drv->is_filter &&
           op->cur->file) {
        op->cur = op->cur->file;
    }
    if (!op->cur) {
        above_finish(op, 0, 0, op->n);
        return;
    }
    len = bdev_length(op->cur);
    if (len < 0 || op->offset >= (uint64_t)len) {
        /* Past the end of a shorter layer. Through the loop, so the
         * answer never comes before the call returns. */
        bdev_call_later(above_past_end, op);
        return;
    }
    if (n > (uint64_t)len - op->offset) {
        n = (uint64_t)len - op->offset;
    }
    ret = bdev_block_status(op->cur, op->offset, n, above_layer_done, op);
    if (ret < 0) {
        above_finish(op, ret, 0, 0);
    }
}

int bdev_is_allocated_above(struct bdev *top, struct bdev *bottom,
                            uint64_t offset, uint64_t bytes, bdev_status_cb *cb,
                            void *opaque)
{
    struct above_op *op;

    if (bytes == 0) {
        return -EINVAL;
    }
    op = calloc(1, sizeof(*op));
    if (!op) {
        return -ENOMEM;
    }
    op->cur = top;
    op->bottom = bottom;
    op->offset = offset;
    op->n = bytes;
    op->cb = cb;
    op->opaque = opaque;
    above_step(op);
    return 0;
}

/* ---- buffers and sync helpers ------------------------------------------ */

/* The I/O engine knows what the device wants of a buffer (see aio.h). */
void *bdev_buf_alloc(size_t bytes)
{
    return aio_buf_alloc(bytes);
}

void bdev_buf_free(void *buf)
{
    aio_buf_free(buf);
}

int bdev_child_pread_sync(struct bdev *child, uint64_t off, uint64_t n,
                          void *buf)
{
    if (!child->drv->pread_sync) {
        return -ENOTSUP;
    }
    return child->drv->pread_sync(child, off, n, buf);
}

int bdev_child_pwrite_sync(struct bdev *child, uint64_t off, uint64_t n,
                           const void *buf)
{
    if (child->read_only) {
        return -EPERM;
    }
    if (!child->drv->pwrite_sync) {
        return -ENOTSUP;
    }
    return child->drv->pwrite_sync(child, off, n, buf);
}

int bdev_child_flush_sync(struct bdev *child)
{
    if (child->cache_no_flush || !child->drv->flush_sync) {
        return 0;
    }
    return child->drv->flush_sync(child);
}

/* ---- blkdebug events ----------------------------------------------------- */

void bdev_debug_event(struct bdev *child, enum bdev_debug_event ev)
{
    /* Events go to the first blkdebug at or below the child. */
    for (struct bdev *bs = child; bs; bs = bs->file) {
        if (bs->drv->debug_event) {
            bs->drv->debug_event(bs, ev);
            return;
        }
    }
}
