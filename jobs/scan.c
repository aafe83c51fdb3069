/* Allocation scans over the backing chain (see scan.h). */
#include "jobs/scan.h"

#include "backends/bdev.h"

/* The chain's answer for [off, off + pnum). */
static void chain_done(void *opaque, int ret, unsigned status, uint64_t pnum)
{
    struct alloc_scan *s = opaque;

    s->cb(s->arg, ret, ret >= 0 && (status & BDEV_STATUS_ALLOCATED), pnum);
}

/* The top's own answer for [off, ...): what it holds is skipped, the rest
 * is asked of the chain below it. */
static void top_done(void *opaque, int ret, unsigned status, uint64_t pnum)
{
    struct alloc_scan *s = opaque;
    struct bdev *backing = bdev_backing(s->top);

    if (ret >= 0 && !(status & BDEV_STATUS_ALLOCATED) && backing) {
        s->top_free_end = s->off + pnum;
        ret = bdev_is_allocated_above(backing, s->bottom, s->off, pnum,
                                      chain_done, s);
        if (ret >= 0) {
            return;
        }
    } else if (ret >= 0) {
        status = 0; /* in the top (or no backing): skipped */
    }
    chain_done(s, ret, 0, pnum);
}

static void below_next(void *opaque, uint64_t offset, uint64_t max,
                       copy_range_cb *cb, void *arg)
{
    struct alloc_scan *s = opaque;
    int ret;

    s->off = offset;
    s->cb = cb;
    s->arg = arg;
    if (offset < s->top_free_end) {
        /* The top's answer is known: ask the chain below it. */
        top_done(s, 0, 0, s->top_free_end - offset);
        return;
    }
    ret = bdev_block_status(s->top, offset, max, top_done, s);
    if (ret < 0) {
        chain_done(s, ret, 0, 0);
    }
}

static void above_next(void *opaque, uint64_t offset, uint64_t max,
                       copy_range_cb *cb, void *arg)
{
    struct alloc_scan *s = opaque;
    int ret;

    s->off = offset;
    s->cb = cb;
    s->arg = arg;
    ret =
        bdev_is_allocated_above(s->top, s->bottom, offset, max, chain_done, s);
    if (ret < 0) {
        chain_done(s, ret, 0, 0);
    }
}

static void init(struct alloc_scan *s, struct bdev *top, struct bdev *bottom,
                 bool below_top)
{
    *s = (struct alloc_scan){.top = top, .bottom = bottom};
    s->below_top = below_top;
}

void scan_below_top(struct alloc_scan *s, struct bdev *top, struct bdev *bottom,
                    struct copy_source *out)
{
    init(s, top, bottom, true);
    out->next = below_next;
    out->opaque = s;
}

void scan_above(struct alloc_scan *s, struct bdev *top, struct bdev *bottom,
                struct copy_source *out)
{
    init(s, top, bottom, false);
    out->next = above_next;
    out->opaque = s;
}
