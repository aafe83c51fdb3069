/* The loop mirror (and active commit, QEMU's mirror code) runs: copy what a
 * dirty bitmap says until nothing is dirty, then READY, then keep copying
 * what gets written, and on job-complete (or a soft cancel) converge once
 * more and end. See /work/notes/ready-loop.md for the shared interface.
 *
 * A bitmap ("live") attached to dirty_node records every completed write
 * from the start; it is seeded (nothing, everything, or what a part of the
 * chain allocates). Then the loop copies pass after pass through the copy
 * engine: each pass works on a snapshot of live ("pass"), live is cleared
 * and goes on recording. When a pass ends and live is clean the job is
 * ready (BLOCK_JOB_READY); a ready job looks at live again every 100 ms
 * (QEMU's BLOCK_JOB_SLICE_TIME) and copies what it finds.
 *
 * Errors go through the job's per-side policy. `ignore` re-dirties the
 * range: the engine holds the failed request and issues it again (read and
 * write) at once, so the copy converges and the job ends without an error;
 * `stop` pauses the job and retries the request after resume; `report`
 * ends the job with the error.
 *
 * Progress as QEMU's mirror: offset = bytes copied (or found to need no
 * copy), len = offset + dirty bytes.
 */
#ifndef JOBS_READY_LOOP_H
#define JOBS_READY_LOOP_H

#include <stdbool.h>
#include <stdint.h>

#include "jobs/blockjob.h"

struct bdev;
struct ready_loop;

enum ready_seed {
    READY_SEED_NONE,      /* only writes from now on */
    READY_SEED_ALL,       /* every byte */
    READY_SEED_ALLOCATED, /* what seed_top .. seed_bottom allocate */
};

struct ready_loop_params {
    struct job *job;         /* the owner; the engine's hooks get it */
    struct bdev *read_from;  /* reads (a filter over the source is fine) */
    struct bdev *dirty_node; /* completed writes here re-dirty */
    struct bdev *target;
    uint64_t len;
    uint32_t granularity; /* bitmap granule = copy chunk; power of 2 */
    uint64_t request;     /* bytes per request at most */
    unsigned depth;       /* requests in flight at most */
    enum ready_seed seed;
    struct bdev *seed_top, *seed_bottom; /* bottom NULL: the whole chain */
    /* A dirty range the chain under dirty_node does not allocate is not
     * copied: the target reads zeroes there already. */
    bool skip_unallocated;
    /* Before anything else, skip_unallocated is set when no layer of the
     * target's chain allocates anything (a fresh image). */
    bool probe_target;
    bool no_zero_detect; /* zeroes read are written as data */
    /* A request never spans allocated and unallocated parts of the
     * source's chain (so zeroes go out as write-zeroes on their own). */
    bool split_by_allocation;
};

/* Attaches the bitmap. NULL without memory. */
struct ready_loop *ready_loop_new(const struct ready_loop_params *p);
/* From the driver's run hook. Calls job_completed() itself: 0 once
 * converged after a complete or a soft cancel, the error of a report, or
 * once drained after a hard cancel. */
void ready_loop_run(struct ready_loop *rl);
/* From the driver's complete hook (the job is ready). */
void ready_loop_complete(struct ready_loop *rl);
/* From the driver's cancel hook: whether the cancel is a hard one. */
bool ready_loop_cancel(struct ready_loop *rl, bool force);
bool ready_loop_is_ready(const struct ready_loop *rl);
/* Ended by job-complete (not by a cancel): the owner pivots. */
bool ready_loop_completing(const struct ready_loop *rl);
/* Detaches the bitmap (clean); ready_loop_free does it too. */
void ready_loop_detach(struct ready_loop *rl);
void ready_loop_free(struct ready_loop *rl);

#endif
