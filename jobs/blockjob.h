/* Block jobs: what stream/commit/mirror/backup share on top of the generic
 * job — speed (rate limit), the on-error policy, io-status and the BLOCK_JOB_*
 * events and query-block-jobs' BlockJobInfo. */
#ifndef JOBS_BLOCKJOB_H
#define JOBS_BLOCKJOB_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "backends/block_copy.h"
#include "jobs/job.h"
#include "jobs/ratelimit.h"

/* QAPI BlockdevOnError, in QEMU's order. */
enum blockjob_on_error {
    BLOCKJOB_ON_ERROR_REPORT,
    BLOCKJOB_ON_ERROR_IGNORE,
    BLOCKJOB_ON_ERROR_ENOSPC,
    BLOCKJOB_ON_ERROR_STOP,
    BLOCKJOB_ON_ERROR_AUTO,
};

enum blockjob_action {
    BLOCKJOB_ACTION_REPORT,
    BLOCKJOB_ACTION_IGNORE,
    BLOCKJOB_ACTION_STOP,
};

enum blockjob_io_status {
    BLOCKJOB_IO_OK,
    BLOCKJOB_IO_FAILED,
    BLOCKJOB_IO_NOSPACE,
};

struct bdev;

/* "report" ... "auto" -> enum; -1 if unknown. */
int blockjob_on_error_parse(const char *name);
const char *blockjob_action_name(enum blockjob_action action);
const char *blockjob_io_status_name(enum blockjob_io_status st);

/* The pure policy: on-error x errno (negative) -> action. */
enum blockjob_action blockjob_error_decide(enum blockjob_on_error policy,
                                           int err);

/* Applies the policy to a failed request (err < 0): emits BLOCK_JOB_ERROR
 * {device, operation, action}; on stop pauses the job as a user pause and
 * sets io-status (first error wins). Returns the action; the driver then
 * fails the job (report), goes on (ignore) or keeps the request to retry
 * after resume (stop). */
enum blockjob_action blockjob_error_action(struct job *job, int err,
                                           bool is_read);

/* The copy engine's hooks for a block job (opaque: the struct job):
 * it runs while the job may issue, paced by the job's speed; its I/O kinds
 * go to the job core (job_io_begin), its errors through the job's per-side
 * policy (blockjob_error_action), its progress and end to the job. */
extern const struct copy_hooks blockjob_copy_hooks;
/* Sets both sides' policy: the source's errors reported as reads, the
 * target's as writes unless target_read. */
void blockjob_set_on_error(struct job *job, enum blockjob_on_error source,
                           enum blockjob_on_error target, bool target_read);

/* Verb set-speed plus QEMU's checks; -errno and err set on refusal. */
int blockjob_set_speed(struct job *job, int64_t speed, struct qmp_error *err);
/* Rate limit for a driver: delay before the next request (ns) and
 * accounting of dispatched bytes. */
uint64_t blockjob_ratelimit_delay(struct job *job);
void blockjob_ratelimit_account(struct job *job, uint64_t bytes);
/* Test hook: monotonic clock in ns (NULL: uv_hrtime). */
void blockjob_set_clock(uint64_t (*now_ns)(void));

/* The job works on bs (QEMU's block_job_add_bdrv): drained sections over
 * it, or over a node below or above it as QEMU's drain reaches, pause the
 * job. Call in QEMU's order: the node the job does its I/O through first
 * (its filter), then the others. That first node also carries the job's
 * BlockBackend, which moves down when the filter is taken out, and which
 * is released after clean with two drained sections over its node (QEMU's
 * blk_unref drains twice), before the job's final events. The links go when
 * the job is freed. Consecutive nodes down one chain have the link between
 * them frozen (QEMU's stream filter freezes its chain down to its bottom)
 * until the job's BlockBackend is released. */
void blockjob_add_node(struct job *job, struct bdev *bs);

/* Hooks for struct job_driver. */
void blockjob_user_resume(struct job *job);    /* io-status back to ok */
void blockjob_event_finished(struct job *job); /* COMPLETED / CANCELLED */
void blockjob_event_pending(struct job *job);  /* BLOCK_JOB_PENDING */
/* running -> ready, then BLOCK_JOB_READY. */
void blockjob_set_ready(struct job *job);

/* BlockJobInfo (query-block-jobs), members in qsd 7.2's order. */
json_t *blockjob_info(struct job *job);
/* JobInfo (query-jobs) for any job. */
json_t *job_info(struct job *job);

#endif
