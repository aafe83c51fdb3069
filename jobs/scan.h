/* Allocation scans: range sources for the copy engine (block_copy.h) that
 * ask the backing chain what a job must copy.
 *
 *  - below top (block-stream): what the top does not hold itself but some
 *    layer from the top's backing down to `bottom` does. The top's answer
 *    for a run it does not hold is remembered: only the job writes the
 *    top, and only behind its position, so it stays true.
 *  - above (block-commit): what any layer from `top` down to and including
 *    `bottom` (the lowest node above the base) holds.
 *
 * A range past the end of the first layer asked ends the copy (a stream
 * leaves the rest of the disk: the top's backing ends there).
 */
#ifndef JOBS_SCAN_H
#define JOBS_SCAN_H

#include <stdint.h>

#include "backends/block_copy.h"

struct bdev;

struct alloc_scan {
    struct bdev *top;
    struct bdev *bottom;
    bool below_top;
    uint64_t off;
    uint64_t top_free_end; /* [off, top_free_end) is not in the top */
    copy_range_cb *cb;
    void *arg;
};

/* Fills *out with a source reading *s (which must outlive the copy). */
void scan_below_top(struct alloc_scan *s, struct bdev *top, struct bdev *bottom,
                    struct copy_source *out);
void scan_above(struct alloc_scan *s, struct bdev *top, struct bdev *bottom,
                struct copy_source *out);

#endif
