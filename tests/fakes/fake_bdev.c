/* In-memory fake format driver (see fake_bdev.h). */
#include "tests/fakes/fake_bdev.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct fake_state {
    uint8_t *data;
    uint8_t *alloc;
    uint64_t size;
    uint32_t cluster;
    uint64_t inject_off;
    int inject_errno;
    int fail_all_errno;
    char *backing_file, *backing_fmt;
    int changes;
    unsigned writes, zero_writes;
};

enum held_kind { HELD_REQ, HELD_STATUS, HELD_CHANGE };

struct held {
    enum held_kind kind;
    struct bdev *bs;
    struct bdev_req *req;
    uint64_t off, bytes;
    bdev_status_cb *scb;
    bdev_cb *cb;
    void *opaque;
    struct held *next;
};

static struct held *fifo_head, *fifo_tail;

static void push(struct held *h)
{
    h->next = NULL;
    if (fifo_tail) {
        fifo_tail->next = h;
    } else {
        fifo_head = h;
    }
    fifo_tail = h;
}

static struct fake_state *st(struct bdev *bs)
{
    return bs->state;
}

static int fake_open(struct bdev *bs, json_t *opts, struct qmp_error *err)
{
    (void)bs;
    (void)opts;
    (void)err;
    return 0;
}

static void fake_close(struct bdev *bs)
{
    free(st(bs)->data);
    free(st(bs)->alloc);
    free(st(bs)->backing_file);
    free(st(bs)->backing_fmt);
}

static int64_t fake_length(struct bdev *bs)
{
    return (int64_t)st(bs)->size;
}

static int fake_submit(struct bdev *bs, struct bdev_req *req)
{
    struct held *h = calloc(1, sizeof(*h));

    h->kind = HELD_REQ;
    h->bs = bs;
    h->req = req;
    push(h);
    return 0;
}

static int fake_block_status(struct bdev *bs, uint64_t off, uint64_t bytes,
                             bdev_status_cb *cb, void *opaque)
{
    struct held *h = calloc(1, sizeof(*h));

    h->kind = HELD_STATUS;
    h->bs = bs;
    h->off = off;
    h->bytes = bytes;
    h->scb = cb;
    h->opaque = opaque;
    push(h);
    return 0;
}

static int fake_change_backing(struct bdev *bs, const char *file,
                               const char *fmt, bdev_cb *cb, void *opaque)
{
    struct held *h = calloc(1, sizeof(*h));

    free(st(bs)->backing_file);
    free(st(bs)->backing_fmt);
    st(bs)->backing_file = file ? strdup(file) : NULL;
    st(bs)->backing_fmt = fmt ? strdup(fmt) : NULL;
    st(bs)->changes++;
    h->kind = HELD_CHANGE;
    h->bs = bs;
    h->cb = cb;
    h->opaque = opaque;
    push(h);
    return 0;
}

static const struct bdev_driver fake_drv = {
    .name = "fake",
    .is_format = true,
    .has_backing = true,
    .open = fake_open,
    .close = fake_close,
    .length = fake_length,
    .submit = fake_submit,
    .block_status = fake_block_status,
    .change_backing = fake_change_backing,
};

struct bdev *fake_bdev_new(const char *name, uint64_t size, uint32_t cluster,
                           struct bdev *backing)
{
    struct bdev *bs = calloc(1, sizeof(*bs));
    struct fake_state *s = calloc(1, sizeof(*s));

    bs->drv = &fake_drv;
    bs->node_name = strdup(name);
    bs->filename = strdup(name);
    bs->refcnt = 1;
    bs->mem_align = 512;
    bs->cluster_size = cluster;
    bs->backing = backing;
    if (backing) {
        backing->parents++;
        bdev_ref(backing);
    }
    s->size = size;
    s->cluster = cluster;
    s->data = calloc(1, size);
    s->alloc = calloc(1, size / cluster + 1);
    bs->state = s;
    return bs;
}

void fake_bdev_free(struct bdev *bs)
{
    bdev_unref(bs);
}

void fake_bdev_fill(struct bdev *bs, uint64_t off, uint64_t len, int byte)
{
    struct fake_state *s = st(bs);

    memset(s->data + off, byte, len);
    for (uint64_t c = off / s->cluster; c * s->cluster < off + len; c++) {
        s->alloc[c] = 1;
    }
}

bool fake_bdev_allocated(struct bdev *bs, uint64_t off)
{
    return st(bs)->alloc[off / st(bs)->cluster];
}

int fake_bdev_read_byte(struct bdev *bs, uint64_t off)
{
    for (; bs; bs = bs->backing) {
        if (off >= st(bs)->size) {
            return 0;
        }
        if (fake_bdev_allocated(bs, off)) {
            return st(bs)->data[off];
        }
    }
    return 0;
}

void fake_bdev_inject(struct bdev *bs, uint64_t off, int errno_)
{
    st(bs)->inject_off = off;
    st(bs)->inject_errno = errno_;
}

void fake_bdev_fail_all(struct bdev *bs, int errno_)
{
    st(bs)->fail_all_errno = errno_;
}

const char *fake_bdev_backing_file(struct bdev *bs)
{
    return st(bs)->backing_file;
}

const char *fake_bdev_backing_fmt(struct bdev *bs)
{
    return st(bs)->backing_fmt;
}

unsigned fake_bdev_writes(struct bdev *bs, bool zeroes)
{
    return zeroes ? st(bs)->zero_writes : st(bs)->writes;
}

int fake_bdev_changes(struct bdev *bs)
{
    return st(bs)->changes;
}

unsigned fake_pending(void)
{
    unsigned n = 0;

    for (struct held *h = fifo_head; h; h = h->next) {
        n++;
    }
    return n;
}

unsigned fake_pending_io(void)
{
    unsigned n = 0;

    for (struct held *h = fifo_head; h; h = h->next) {
        n += h->kind == HELD_REQ;
    }
    return n;
}

static int do_req(struct bdev *bs, struct bdev_req *req)
{
    struct fake_state *s = st(bs);
    uint64_t end = req->offset + req->bytes;

    if (s->fail_all_errno && req->op != BDEV_OP_FLUSH) {
        return -s->fail_all_errno;
    }
    if (s->inject_errno && req->op != BDEV_OP_FLUSH &&
        s->inject_off >= req->offset && s->inject_off < end) {
        int e = s->inject_errno;

        s->inject_errno = 0;
        return -e;
    }
    switch (req->op) {
    case BDEV_OP_READ:
        for (uint64_t o = req->offset; o < end; o++) {
            ((uint8_t *)req->buf)[o - req->offset] =
                (uint8_t)fake_bdev_read_byte(bs, o);
        }
        break;
    case BDEV_OP_WRITE:
        s->writes++;
        fake_bdev_fill(bs, req->offset, req->bytes, 0);
        memcpy(s->data + req->offset, req->buf, req->bytes);
        break;
    case BDEV_OP_WRITE_ZEROES:
        s->zero_writes++;
        fake_bdev_fill(bs, req->offset, req->bytes, 0);
        break;
    case BDEV_OP_FLUSH:
        break;
    }
    return 0;
}

static void status_of(struct bdev *bs, uint64_t off, uint64_t bytes,
                      unsigned *status, uint64_t *pnum)
{
    struct fake_state *s = st(bs);
    bool a = fake_bdev_allocated(bs, off);
    uint64_t o = off;

    while (o < off + bytes && fake_bdev_allocated(bs, o) == a) {
        o = (o / s->cluster + 1) * s->cluster;
    }
    *pnum = (o > off + bytes ? off + bytes : o) - off;
    *status = a ? BDEV_STATUS_ALLOCATED | BDEV_STATUS_DATA : 0;
}

static bool complete(struct held *h)
{
    unsigned status;
    uint64_t pnum;

    switch (h->kind) {
    case HELD_REQ:
        bdev_req_complete(h->req, do_req(h->bs, h->req));
        break;
    case HELD_STATUS:
        status_of(h->bs, h->off, h->bytes, &status, &pnum);
        h->scb(h->opaque, 0, status, pnum);
        break;
    case HELD_CHANGE:
        h->cb(h->opaque, 0);
        break;
    }
    free(h);
    return true;
}

bool fake_complete_next(void)
{
    struct held *h = fifo_head;

    if (!h) {
        return false;
    }
    fifo_head = h->next;
    if (!fifo_head) {
        fifo_tail = NULL;
    }
    return complete(h);
}

bool fake_complete_next_status(void)
{
    struct held **pp = &fifo_head, *prev = NULL;

    for (; *pp; prev = *pp, pp = &(*pp)->next) {
        struct held *h = *pp;

        if (h->kind != HELD_REQ) {
            *pp = h->next;
            if (fifo_tail == h) {
                fifo_tail = prev;
            }
            return complete(h);
        }
    }
    return false;
}
