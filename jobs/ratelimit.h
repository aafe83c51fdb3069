/* Bytes-per-second budget for block jobs.
 *
 * Pure arithmetic: the caller passes the current time (nanoseconds, any
 * monotonic origin), so it is tested without a clock or a loop. The budget is
 * a virtual clock `next` that every dispatched byte pushes forward by
 * 1e9 / speed ns; a request may go when `next` is not in the future. Idle
 * time earns credit for at most one slice (100 ms), so a job that was paused
 * does not burst afterwards, and the long-run rate is exactly `speed`.
 */
#ifndef JOBS_RATELIMIT_H
#define JOBS_RATELIMIT_H

#include <stdint.h>

#define RATELIMIT_SLICE_NS 100000000ULL /* 100 ms, as QEMU's block jobs */

struct ratelimit {
    uint64_t speed; /* bytes per second; 0 = unlimited */
    uint64_t next;  /* ns: when the budget is back to zero debt */
    int started;
};

void ratelimit_init(struct ratelimit *rl);
/* Changes the limit now; outstanding debt is rescaled to the new speed so a
 * change takes effect at once in both directions. */
void ratelimit_set_speed(struct ratelimit *rl, uint64_t speed, uint64_t now);
/* Nanoseconds to wait before the next request may be dispatched (0: go). */
uint64_t ratelimit_delay(const struct ratelimit *rl, uint64_t now);
/* Accounts `bytes` dispatched at `now`. */
void ratelimit_account(struct ratelimit *rl, uint64_t bytes, uint64_t now);

#endif
