/* The copy-until-converged loop of mirror; see ready_loop.h. */
#include "jobs/ready_loop.h"

#include <errno.h>
#include <stdlib.h>

#include "backends/bdev.h"
#include "backends/bitmap.h"
#include "backends/block_copy.h"

#define READY_POLL_NS  100000000ULL /* QEMU's BLOCK_JOB_SLICE_TIME */
#define SCAN_QUERY_MAX (1ULL << 30)

struct ready_loop {
    struct ready_loop_params p;
    struct job *job;
    struct bitmap *live; /* writes since the pass began (and the seed) */
    struct bitmap *pass; /* what the running pass copies */
    struct block_copy *copy;
    uint64_t pass_bytes; /* dirty bytes of the pass when it began */
    uint64_t copied;     /* bytes done by earlier passes */
    uint64_t scan_off;
    bool probed;
    bool scanning;
    bool scanned;
    bool ready;
    bool should_complete;
    bool deferred_end;
    bool defer_wait;
    bool detached;
    int err;
    /* The range source's pending question (skip_unallocated). */
    copy_range_cb *qcb;
    void *qarg;
    uint64_t qoff, qlen;
};

static void next_step(struct ready_loop *rl);

static void update_totals(struct ready_loop *rl)
{
    uint64_t done = rl->copied + rl->pass_bytes - bitmap_count(rl->pass);

    job_progress_set_current(rl->job, done);
    job_progress_set_total(rl->job, done + bitmap_count(rl->pass) +
                                        bitmap_count(rl->live));
}

/* ---- the range source: the pass bitmap, minus what needs no copy ---- */

static void alloc_done(void *opaque, int ret, unsigned status, uint64_t pnum)
{
    struct ready_loop *rl = opaque;
    uint64_t g = rl->p.granularity;
    copy_range_cb *cb = rl->qcb;

    rl->qcb = NULL;
    if (ret < 0) {
        cb(rl->qarg, ret, false, 0);
        return;
    }
    if (pnum > rl->qlen) {
        pnum = rl->qlen;
    }
    if (!(status & BDEV_STATUS_ALLOCATED) && rl->p.skip_unallocated) {
        /* Skip whole granules only (the bitmap's unit). */
        uint64_t skip = pnum;

        if (rl->qoff + skip < rl->p.len) {
            skip -= (rl->qoff + skip) % g;
        }
        if (skip > 0) {
            cb(rl->qarg, 0, false, skip);
            return;
        }
    }
    /* Copy the run that is all allocated (data) or all not (zeroes, then
     * written as write-zeroes), rounded out to granules: QEMU's mirror
     * asks the source's block status for each run it copies. */
    pnum += (g - (rl->qoff + pnum) % g) % g;
    if (pnum > rl->qlen) {
        pnum = rl->qlen;
    }
    cb(rl->qarg, 0, true, pnum);
}

static void pass_next(void *opaque, uint64_t offset, uint64_t max,
                      copy_range_cb *cb, void *arg)
{
    struct ready_loop *rl = opaque;
    uint64_t start, len;
    int ret;

    if (!bitmap_next_dirty_area(rl->pass, offset, max, &start, &len)) {
        uint64_t end = offset + max;
        uint64_t size = bitmap_size(rl->pass);

        if (end >= size || bitmap_next_dirty(rl->pass, end, size - end) < 0) {
            cb(arg, 0, false, 0);
        } else {
            cb(arg, 0, false, max);
        }
        return;
    }
    if (start > offset) {
        cb(arg, 0, false, start - offset);
        return;
    }
    if (!rl->p.skip_unallocated && !rl->p.split_by_allocation) {
        cb(arg, 0, true, len);
        return;
    }
    rl->qcb = cb;
    rl->qarg = arg;
    rl->qoff = offset;
    rl->qlen = len;
    ret = bdev_is_allocated_above(rl->p.dirty_node, NULL, offset, len,
                                  alloc_done, rl);
    if (ret < 0) {
        alloc_done(rl, ret, 0, 0);
    }
}

/* ---- the engine's hooks: the block job's, but for these ---- */

static bool h_may_issue(void *o)
{
    struct ready_loop *rl = o;

    return blockjob_copy_hooks.may_issue(rl->job);
}

static bool h_stopped(void *o)
{
    struct ready_loop *rl = o;

    /* Any cancel (a soft one too) ends the pass. */
    return job_cancel_requested(rl->job);
}

static bool h_pace(void *o, enum copy_io kind)
{
    struct ready_loop *rl = o;

    return blockjob_copy_hooks.pace(rl->job, kind);
}

static void h_account(void *o, uint64_t bytes)
{
    struct ready_loop *rl = o;

    blockjob_copy_hooks.account(rl->job, bytes);
}

static void h_io_begin(void *o, enum copy_io kind)
{
    struct ready_loop *rl = o;

    blockjob_copy_hooks.io_begin(rl->job, kind);
}

static void h_io_end(void *o)
{
    struct ready_loop *rl = o;

    blockjob_copy_hooks.io_end(rl->job);
}

static void h_skipped(void *o, uint64_t from, uint64_t to)
{
    struct ready_loop *rl = o;

    blockjob_copy_hooks.skipped(rl->job, from, to);
}

/* ignore: the range is dirty again - the engine keeps the request and
 * issues it again first thing (nothing pauses the job). */
static enum copy_action h_error(void *o, int err, enum copy_side side)
{
    struct ready_loop *rl = o;
    enum copy_action a = blockjob_copy_hooks.error(rl->job, err, side);

    return a == COPY_ACTION_IGNORE ? COPY_ACTION_STOP : a;
}

static void h_ending(void *o)
{
    struct ready_loop *rl = o;

    job_wake(rl->job);
}

static void h_copied(void *o, uint64_t offset, uint64_t bytes)
{
    struct ready_loop *rl = o;

    /* QEMU's offset counts completed bytes, wherever they are. */
    bitmap_reset(rl->pass, offset, bytes);
    update_totals(rl);
}

static void h_progress(void *o, uint64_t offset)
{
    struct ready_loop *rl = o;

    bitmap_reset(rl->pass, 0, offset); /* below the prefix: done */
    update_totals(rl);
}

static void h_done(void *o, int ret)
{
    struct ready_loop *rl = o;
    uint64_t left = bitmap_count(rl->pass);

    /* What the pass did not get to (a cancel, an error) is dirty again. */
    if (left) {
        bitmap_merge(rl->live, rl->pass);
        bitmap_reset_all(rl->pass);
    }
    rl->copied += rl->pass_bytes - left;
    rl->pass_bytes = 0;
    block_copy_free(rl->copy);
    rl->copy = NULL;
    if (ret < 0 && !rl->err) {
        rl->err = ret;
    }
    next_step(rl);
}

static const struct copy_hooks loop_hooks = {
    .may_issue = h_may_issue,
    .stopped = h_stopped,
    .pace = h_pace,
    .account = h_account,
    .io_begin = h_io_begin,
    .io_end = h_io_end,
    .skipped = h_skipped,
    .error = h_error,
    .ending = h_ending,
    .copied = h_copied,
    .progress = h_progress,
    .done = h_done,
};

/* ---- seeding ---- */

static void scan_done(void *opaque, int ret, unsigned status, uint64_t pnum)
{
    struct ready_loop *rl = opaque;

    rl->scanning = false;
    if (ret < 0) {
        rl->err = ret; /* QEMU's mirror_dirty_init failing: the job fails */
    } else if (pnum == 0) {
        rl->scan_off = rl->p.len;
    } else {
        if (status & BDEV_STATUS_ALLOCATED) {
            bitmap_set(rl->live, rl->scan_off, pnum);
        }
        rl->scan_off += pnum;
    }
    if (rl->scan_off >= rl->p.len) {
        rl->scanned = true;
        update_totals(rl);
    }
    job_io_end(rl->job);
}

static void probe_done(void *opaque, int ret, unsigned status, uint64_t pnum)
{
    struct ready_loop *rl = opaque;

    rl->scanning = false;
    rl->probed = true;
    if (ret == 0 && !(status & BDEV_STATUS_ALLOCATED) && pnum >= rl->p.len) {
        rl->p.skip_unallocated = true;
    }
    job_io_end(rl->job);
}

static void scan_step(struct ready_loop *rl)
{
    uint64_t n = rl->p.len - rl->scan_off;
    int ret;

    if (n > SCAN_QUERY_MAX) {
        n = SCAN_QUERY_MAX;
    }
    rl->scanning = true;
    job_io_begin(rl->job, JOB_IO_QUERY);
    ret = bdev_is_allocated_above(rl->p.seed_top, rl->p.seed_bottom,
                                  rl->scan_off, n, scan_done, rl);
    if (ret < 0) {
        scan_done(rl, ret, 0, 0);
    }
}

/* ---- passes ---- */

static void start_pass(struct ready_loop *rl)
{
    struct copy_params p = {
        .source = rl->p.read_from,
        .target = rl->p.target,
        .len = rl->p.len,
        .chunk = rl->p.granularity,
        .request = rl->p.request,
        .depth = rl->p.depth,
        .cluster = bdev_cluster_size(rl->p.target),
        .no_zero_detect = rl->p.no_zero_detect,
        .src = {.next = pass_next, .opaque = rl},
        .hooks = &loop_hooks,
        .opaque = rl,
    };

    bitmap_reset_all(rl->pass);
    bitmap_merge(rl->pass, rl->live);
    bitmap_reset_all(rl->live);
    rl->pass_bytes = bitmap_count(rl->pass);
    rl->copy = block_copy_new(&p);
    update_totals(rl);
}

static void defer_end_cb(void *opaque)
{
    struct ready_loop *rl = opaque;

    rl->defer_wait = false;
    job_io_end(rl->job);
}

static void next_step(struct ready_loop *rl)
{
    struct job *job = rl->job;

    if (rl->defer_wait) {
        return; /* the end's loop turn has not come yet */
    }
    if (job_is_cancelled(job) && rl->ready && !rl->deferred_end) {
        /* A ready job sleeps in its poll: qsd answers the cancel before
         * the woken coroutine ends the job. */
        rl->deferred_end = true;
        rl->defer_wait = true;
        job_io_begin(job, JOB_IO_QUERY);
        bdev_call_later(defer_end_cb, rl);
        return;
    }
    if (rl->err || job_is_cancelled(job)) {
        job_completed(job, rl->err);
        return;
    }
    if (!rl->probed) {
        if (!rl->scanning && job_may_issue(job)) {
            uint64_t n =
                rl->p.len < SCAN_QUERY_MAX ? rl->p.len : SCAN_QUERY_MAX;

            rl->scanning = true;
            job_io_begin(job, JOB_IO_QUERY);
            if (bdev_is_allocated_above(rl->p.target, NULL, 0, n, probe_done,
                                        rl) < 0) {
                probe_done(rl, -EIO, 0, 0);
            }
        }
        return;
    }
    if (!rl->scanned) {
        if (!rl->scanning && job_may_issue(job)) {
            scan_step(rl);
        }
        return;
    }
    if (bitmap_count(rl->live) && !job_cancel_requested(job)) {
        if (!job_may_issue(job)) {
            return;
        }
        start_pass(rl);
        block_copy_run(rl->copy);
        return;
    }
    if (!rl->ready && !job_cancel_requested(job)) {
        rl->ready = true;
        update_totals(rl);
        blockjob_set_ready(rl->job);
    }
    if (job_cancel_requested(job) || rl->should_complete) {
        if (!rl->deferred_end) {
            /* qsd answers the command (complete, a soft cancel) before the
             * job's coroutine runs again: end one loop turn later. */
            rl->deferred_end = true;
            rl->defer_wait = true;
            job_io_begin(job, JOB_IO_DATA); /* a yield point, as QEMU's */
            bdev_call_later(defer_end_cb, rl);
            return;
        }
        job_completed(job, 0);
        return;
    }
    if (job_may_issue(job)) {
        job_sleep_ns(job, READY_POLL_NS); /* then looks at live again */
    }
}

struct ready_loop *ready_loop_new(const struct ready_loop_params *p)
{
    struct ready_loop *rl = calloc(1, sizeof(*rl));
    uint64_t size = p->len ? p->len : 1;

    if (!rl) {
        return NULL;
    }
    rl->p = *p;
    rl->job = p->job;
    rl->probed = !p->probe_target || !p->len;
    rl->live = bitmap_new(size, p->granularity);
    rl->pass = bitmap_new(size, p->granularity);
    if (!rl->live || !rl->pass || bitmap_attach(rl->live, p->dirty_node) < 0) {
        ready_loop_free(rl);
        return NULL;
    }
    switch (p->len ? p->seed : READY_SEED_NONE) {
    case READY_SEED_ALL:
        bitmap_set_all(rl->live);
        rl->scanned = true;
        break;
    case READY_SEED_ALLOCATED:
        break;
    case READY_SEED_NONE:
        rl->scanned = true;
        break;
    }
    if (rl->scanned) {
        update_totals(rl);
    }
    return rl;
}

void ready_loop_run(struct ready_loop *rl)
{
    if (rl->scanning) {
        return;
    }
    if (rl->copy) {
        block_copy_run(rl->copy);
        return;
    }
    next_step(rl);
}

void ready_loop_complete(struct ready_loop *rl)
{
    rl->should_complete = true;
    job_wake(rl->job); /* out of the ready poll's sleep */
}

bool ready_loop_cancel(struct ready_loop *rl, bool force)
{
    return force || !rl->ready;
}

bool ready_loop_is_ready(const struct ready_loop *rl)
{
    return rl->ready;
}

bool ready_loop_completing(const struct ready_loop *rl)
{
    return rl->should_complete && !job_cancel_requested(rl->job);
}

void ready_loop_detach(struct ready_loop *rl)
{
    if (rl && !rl->detached) {
        rl->detached = true;
        bitmap_detach(rl->live);
    }
}

void ready_loop_free(struct ready_loop *rl)
{
    if (!rl) {
        return;
    }
    block_copy_free(rl->copy);
    bitmap_free(rl->live); /* detaches */
    bitmap_free(rl->pass);
    free(rl);
}
