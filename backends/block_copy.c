/* The copy engine (see block_copy.h): a state machine over bdev
 * completions, re-entered by its owner. */
#include "backends/block_copy.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backends/bdev.h"
#include "backends/bitmap.h"

enum req_state {
    REQ_FREE,
    REQ_BUSY, /* read or write in flight */
    REQ_HELD, /* failed with stop: retried first */
    REQ_DEAD, /* failed with report: the copy ends; progress stops here */
};

struct copy_req {
    struct block_copy *c;
    enum req_state st;
    uint64_t off, bytes;   /* the chunks: [off, off + bytes) */
    uint64_t ioff, ibytes; /* what is read and written: rounded out */
    void *buf;
    bool zero_fallback; /* write-zeroes refused: written as data */
};

struct block_copy {
    struct copy_params p;
    uint64_t scan;       /* everything below was handed out or skipped */
    uint64_t run_end;    /* [scan, run_end) must be copied */
    uint64_t copied_end; /* [scan, copied_end) was copied by rounding */
    uint64_t progress;   /* last prefix reported */
    unsigned in_flight;
    bool querying;
    bool failing; /* a report error: issue nothing more */
    bool ended;   /* done() was called */
    int first_err;
    struct copy_req *reqs;
    void *bufs;
};

static void update_progress(struct block_copy *c)
{
    uint64_t p = c->scan;

    for (unsigned i = 0; i < c->p.depth; i++) {
        if (c->reqs[i].st != REQ_FREE && c->reqs[i].off < p) {
            p = c->reqs[i].off;
        }
    }
    if (p > c->progress) {
        c->progress = p;
        c->p.hooks->progress(c->p.opaque, p);
    }
}

static void io_begin(struct block_copy *c, enum copy_io kind)
{
    c->in_flight++;
    c->p.hooks->io_begin(c->p.opaque, kind);
}

static void io_end(struct block_copy *c)
{
    c->in_flight--;
    c->p.hooks->io_end(c->p.opaque);
}

static bool buffer_is_zero(const void *buf, size_t len)
{
    const uint64_t *p = buf;

    /* Buffers are aligned; lengths are multiples of 512 bytes except maybe
     * the disk's tail. */
    for (size_t i = 0; i < len / 8; i++) {
        if (p[i]) {
            return false;
        }
    }
    for (size_t i = len & ~(size_t)7; i < len; i++) {
        if (((const unsigned char *)buf)[i]) {
            return false;
        }
    }
    return true;
}

bool block_copy_has_held(const struct block_copy *c)
{
    for (unsigned i = 0; i < c->p.depth; i++) {
        if (c->reqs[i].st == REQ_HELD) {
            return true;
        }
    }
    return false;
}

static void note_error(struct block_copy *c, int ret)
{
    if (!c->first_err) {
        c->first_err = ret;
    }
}

/* A reported error: nothing new is issued; an owner held back by pacing
 * comes back now (QEMU's loop breaks out at once). */
static void end_early(struct block_copy *c)
{
    c->failing = true;
    if (c->p.hooks->ending) {
        c->p.hooks->ending(c->p.opaque);
    }
}

/* A request failed. One decision per stop or end (see block_copy.h). */
static void req_failed(struct copy_req *r, int ret, enum copy_side side)
{
    struct block_copy *c = r->c;

    if (c->failing) {
        r->st = REQ_DEAD;
        return;
    }
    if (block_copy_has_held(c)) {
        r->st = REQ_HELD;
        return;
    }
    switch (c->p.hooks->error(c->p.opaque, ret, side)) {
    case COPY_ACTION_STOP:
        r->st = REQ_HELD;
        break;
    case COPY_ACTION_IGNORE:
        note_error(c, ret);
        r->st = REQ_FREE;
        break;
    case COPY_ACTION_REPORT:
        note_error(c, ret);
        r->st = REQ_DEAD;
        end_early(c);
        break;
    }
}

static void write_done(void *opaque, int ret);

static void issue_write(struct copy_req *r)
{
    struct block_copy *c = r->c;
    int ret;

    if (!r->zero_fallback && !c->p.no_zero_detect &&
        buffer_is_zero(r->buf, r->ibytes)) {
        ret = bdev_write_zeroes(c->p.target, r->ioff, r->ibytes, write_done, r);
        if (ret != -ENOTSUP) {
            goto out;
        }
        r->zero_fallback = true;
    }
    ret = bdev_write(c->p.target, r->ioff, r->ibytes, r->buf, write_done, r);
out:
    if (ret < 0) {
        write_done(r, ret);
    }
}

static void write_done(void *opaque, int ret)
{
    struct copy_req *r = opaque;
    struct block_copy *c = r->c;

    if (ret == -ENOTSUP && !r->zero_fallback && !c->p.no_zero_detect) {
        r->zero_fallback = true;
        issue_write(r);
        return;
    }
    if (ret < 0) {
        req_failed(r, ret, COPY_SIDE_TARGET);
    } else {
        r->st = REQ_FREE;
        if (c->p.hooks->copied) {
            c->p.hooks->copied(c->p.opaque, r->off, r->bytes);
        }
    }
    update_progress(c);
    io_end(c);
}

static void read_done(void *opaque, int ret)
{
    struct copy_req *r = opaque;
    struct block_copy *c = r->c;

    if (ret < 0) {
        req_failed(r, ret, COPY_SIDE_SOURCE);
        update_progress(c);
        io_end(c);
        return;
    }
    r->zero_fallback = false;
    issue_write(r);
}

static void issue_req(struct copy_req *r)
{
    struct block_copy *c = r->c;
    int ret;

    r->st = REQ_BUSY;
    io_begin(c, COPY_IO_DATA);
    ret = bdev_read(c->p.source, r->ioff, r->ibytes, r->buf, read_done, r);
    if (ret < 0) {
        read_done(r, ret);
    }
}

static struct copy_req *free_req(struct block_copy *c)
{
    for (unsigned i = 0; i < c->p.depth; i++) {
        if (c->reqs[i].st == REQ_FREE) {
            return &c->reqs[i];
        }
    }
    return NULL;
}

static struct copy_req *held_req(struct block_copy *c)
{
    for (unsigned i = 0; i < c->p.depth; i++) {
        if (c->reqs[i].st == REQ_HELD) {
            return &c->reqs[i];
        }
    }
    return NULL;
}

/* The source's answer about [scan, ...). */
static void source_done(void *arg, int ret, bool copy, uint64_t bytes)
{
    struct block_copy *c = arg;
    uint64_t from = c->scan;

    c->querying = false;
    if (ret < 0 && (c->failing || block_copy_has_held(c))) {
        /* Decided already (see req_failed): asked again after resume. */
    } else if (ret < 0) {
        /* Decided like a failed read of one chunk. */
        enum copy_action a =
            c->p.hooks->error(c->p.opaque, ret, COPY_SIDE_SOURCE);

        if (a != COPY_ACTION_STOP) {
            note_error(c, ret);
        }
        if (a == COPY_ACTION_REPORT) {
            end_early(c);
        } else if (a == COPY_ACTION_IGNORE) {
            c->scan += c->p.len - c->scan < c->p.chunk ? c->p.len - c->scan
                                                       : c->p.chunk;
        }
    } else if (copy) {
        c->run_end = c->scan + bytes;
    } else if (bytes == 0) {
        c->scan = c->p.len; /* nothing more to copy */
        from = c->p.len;    /* and no skip to yield after */
    } else {
        c->scan += bytes;
    }
    /* A skip: QEMU's loop yields before the next chunk, unless this one
     * reached the end; its skips are at most a chunk long. */
    if (c->scan > from && c->p.hooks->skipped &&
        (c->scan < c->p.len || c->scan - from > c->p.chunk)) {
        c->p.hooks->skipped(c->p.opaque, from, c->scan);
    }
    update_progress(c);
    io_end(c);
}

static void issue_query(struct block_copy *c)
{
    uint64_t n = c->p.len - c->scan;

    if (n > BLOCK_COPY_QUERY_MAX) {
        n = BLOCK_COPY_QUERY_MAX;
    }
    c->querying = true;
    io_begin(c, COPY_IO_QUERY);
    if (c->scan < c->copied_end) {
        /* Written by the previous request's rounding: skipped. */
        source_done(c, 0, false, c->copied_end - c->scan);
        return;
    }
    c->p.src.next(c->p.src.opaque, c->scan, n, source_done, c);
}

static bool all_free(const struct block_copy *c)
{
    for (unsigned i = 0; i < c->p.depth; i++) {
        if (c->reqs[i].st != REQ_FREE) {
            return false;
        }
    }
    return true;
}

static void finish(struct block_copy *c)
{
    if (!c->ended) {
        c->ended = true;
        c->p.hooks->done(c->p.opaque, c->first_err);
    }
}

/* The next request of the run [scan, run_end): chunks cut from the run's
 * start, as QEMU's loop (which asks about at most one chunk from its
 * current offset) does, rounded out to the target's clusters. */
static void start_req(struct block_copy *c, struct copy_req *r)
{
    uint64_t cl = c->p.cluster ? c->p.cluster : 1;
    uint64_t end = c->scan + c->p.request;

    if (end > c->run_end) {
        end = c->run_end;
    }
    r->off = c->scan;
    r->bytes = end - c->scan;
    r->ioff = r->off - r->off % cl;
    r->ibytes = end + (cl - end % cl) % cl;
    if (r->ibytes > c->p.len) {
        r->ibytes = c->p.len;
    }
    c->copied_end = r->ibytes;
    r->ibytes -= r->ioff;
    c->scan = end;
    if (c->p.hooks->account) {
        c->p.hooks->account(c->p.opaque, r->bytes);
    }
    issue_req(r);
}

void block_copy_run(struct block_copy *c)
{
    const struct copy_hooks *h = c->p.hooks;
    void *o = c->p.opaque;

    if (c->ended) {
        return;
    }
    if (h->stopped(o) || c->failing) {
        if (c->in_flight == 0) {
            finish(c);
        }
        return;
    }
    /* Done, also with a pause pending: QEMU's loop has no pause point
     * after its last chunk. */
    if (c->scan >= c->p.len && c->in_flight == 0 && all_free(c)) {
        finish(c);
        return;
    }
    while (h->may_issue(o)) {
        struct copy_req *r = held_req(c);

        /* Requests held by an error stop go first, unchanged, unpaced. */
        if (r) {
            issue_req(r);
            continue;
        }
        if (c->querying) {
            return;
        }
        if (c->scan < c->run_end) {
            r = free_req(c);
            if (!r) {
                return; /* all slots busy: a completion re-enters */
            }
            if (!h->pace(o, COPY_IO_DATA)) {
                return;
            }
            if (c->scan < c->copied_end) {
                /* Written by the previous request's rounding: skipped, as
                 * QEMU's next iteration finds it allocated. */
                c->scan = c->copied_end;
                update_progress(c);
                continue;
            }
            start_req(c, r);
            continue;
        }
        if (c->scan >= c->p.len) {
            if (c->in_flight == 0 && all_free(c)) {
                finish(c);
            }
            return;
        }
        /* QEMU paces every iteration, skips included. */
        if (!h->pace(o, COPY_IO_QUERY)) {
            return;
        }
        issue_query(c);
    }
}

struct block_copy *block_copy_new(const struct copy_params *p)
{
    struct block_copy *c = calloc(1, sizeof(*c));
    uint64_t cl;
    size_t stride;

    if (!c) {
        abort();
    }
    c->p = *p;
    if (!c->p.depth) {
        c->p.depth = BLOCK_COPY_DEPTH;
    }
    if (c->p.request < c->p.chunk) {
        c->p.request = c->p.chunk;
    }
    c->p.request -= c->p.request % c->p.chunk;
    if (!c->p.len) {
        c->p.depth = 0; /* nothing to copy: no slots */
        return c;
    }
    cl = c->p.cluster < 4096 ? 4096 : c->p.cluster;
    /* Rounding out adds at most a cluster at each end. */
    stride = c->p.request + 2 * cl;
    c->reqs = calloc(c->p.depth, sizeof(*c->reqs));
    c->bufs = bdev_buf_alloc(stride * c->p.depth);
    if (!c->reqs || !c->bufs) {
        /* Too big for memory: ends like an I/O error would. */
        c->failing = true;
        c->first_err = -ENOMEM;
        c->p.depth = 0;
    }
    for (unsigned i = 0; i < c->p.depth; i++) {
        c->reqs[i].c = c;
        c->reqs[i].buf = (char *)c->bufs + (size_t)i * stride;
    }
    return c;
}

void block_copy_free(struct block_copy *c)
{
    if (!c) {
        return;
    }
    bdev_buf_free(c->bufs);
    free(c->reqs);
    free(c);
}

void block_copy_set_source(struct block_copy *c, struct bdev *source)
{
    c->p.source = source;
}

uint64_t block_copy_progress(const struct block_copy *c)
{
    return c->progress;
}

unsigned block_copy_in_flight(const struct block_copy *c)
{
    return c->in_flight;
}

/* ---- a bitmap as the range source ---- */

static void bitmap_next(void *opaque, uint64_t offset, uint64_t max,
                        copy_range_cb *cb, void *arg)
{
    struct bitmap *bm = opaque;
    uint64_t start, len;

    if (!bitmap_next_dirty_area(bm, offset, max, &start, &len)) {
        /* Clean to max: skip it, or end when that is the bitmap's end. */
        uint64_t size = bitmap_size(bm);
        uint64_t end = offset + max;

        if (end >= size || bitmap_next_dirty(bm, end, size - end) < 0) {
            cb(arg, 0, false, 0);
        } else {
            cb(arg, 0, false, max);
        }
        return;
    }
    if (start > offset) {
        cb(arg, 0, false, start - offset);
    } else {
        cb(arg, 0, true, len);
    }
}

void block_copy_bitmap_source(struct bitmap *bm, struct copy_source *out)
{
    out->next = bitmap_next;
    out->opaque = bm;
}
