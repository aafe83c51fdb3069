/* Generic jobs: QEMU's job model (qapi/job.json) on one libuv loop, and
 * the contract a job type follows.
 *
 * A job is a state machine driven by callbacks, not a thread. The core owns
 * the status, the verb checks, pausing, cancelling, sleeping (rate limits),
 * the in-flight count, the ending sequence, and the bookkeeping that keeps
 * replies and events in qemu-storage-daemon's order (sleeps cut short,
 * resumes owed a chunk, verbs waiting for a woken job's next yield, commands
 * waiting for an ending to settle: jobs/job_int.h). A job type never sees
 * struct job: it has its own state (job_priv) and tells the core what its
 * I/O is; the core decides the rest from that.
 *
 * The contract of a job type (one file in jobs/, listed in job_types.c):
 *  - It registers its QMP command(s) (struct job_type_def, job_types.h) and
 *    defines a struct job_driver; its command creates the job with
 *    job_create() (block jobs then set their nodes, speed and per-side
 *    error policy through blockjob.h) and starts it with job_start(). The
 *    reply goes out through job_cmd.h's helpers, never through job_qmp.c.
 *  - run(job) is called when the job may issue work: after start, after every
 *    job_io_end(), when a sleep ends and after a resume. It issues as much as
 *    it wants, then returns; it checks job_may_issue() before anything new.
 *    Each request is bracketed by job_io_begin(job, kind) and job_io_end();
 *    a paced one asks job_pace() first. The kind is all the core needs:
 *    data is where QEMU's coroutine yields and uses up a sleep cut short, a
 *    query is neither. (A job that copies lets the copy engine do all of
 *    this: blockjob_copy_hooks.) When no work is left and nothing is in
 *    flight it calls job_completed(job, ret) exactly once. Once the job is
 *    cancelled and nothing is in flight any more, run is called one last
 *    time and must call job_completed() (job_is_cancelled() tells it why).
 *  - The core never calls run while a pause or cancel is pending; it waits
 *    for in-flight requests to drain, then parks the job (paused/standby) or
 *    ends it (cancel). In-flight requests are never abandoned.
 *  - prepare (optional, asynchronous) makes the job's effect permanent, then
 *    calls done(job, ret); ret < 0 fails the job. Then exactly one of
 *    commit/abort runs, then clean, then the job's events, then free when
 *    the job is dismissed and nothing refers to it any more.
 *
 * All functions run on the loop; none blocks. Events (JOB_STATUS_CHANGE and
 * the driver's) go out through qmp_event_emit() synchronously.
 */
#ifndef JOBS_JOB_H
#define JOBS_JOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "protocol/error.h"

enum job_status {
    JOB_STATUS_UNDEFINED,
    JOB_STATUS_CREATED,
    JOB_STATUS_RUNNING,
    JOB_STATUS_PAUSED,
    JOB_STATUS_READY,
    JOB_STATUS_STANDBY,
    JOB_STATUS_WAITING,
    JOB_STATUS_PENDING,
    JOB_STATUS_ABORTING,
    JOB_STATUS_CONCLUDED,
    JOB_STATUS_NULL,
    JOB_STATUS__MAX,
};

enum job_verb {
    JOB_VERB_CANCEL,
    JOB_VERB_PAUSE,
    JOB_VERB_RESUME,
    JOB_VERB_SET_SPEED,
    JOB_VERB_COMPLETE,
    JOB_VERB_FINALIZE,
    JOB_VERB_DISMISS,
    JOB_VERB__MAX,
};

enum job_type {
    JOB_TYPE_COMMIT,
    JOB_TYPE_STREAM,
    JOB_TYPE_MIRROR,
    JOB_TYPE_BACKUP,
    JOB_TYPE_CREATE,
    JOB_TYPE_AMEND,
    JOB_TYPE__MAX,
};

struct job;
typedef void job_done_fn(struct job *job, int ret);

struct job_driver {
    /* The job type's own state: allocated (zeroed) with the job, see
     * job_priv(); freed with it. */
    size_t instance_size;
    enum job_type type;
    bool is_block_job; /* listed by query-block-jobs, block-job-* verbs */
    void (*run)(struct job *job);
    /* Optional: ready jobs only (mirror); NULL = cannot complete. */
    void (*complete)(struct job *job, struct qmp_error *err);
    /* Optional: a cancel request; returns whether it is a hard one (QEMU's
     * .cancel: a ready job may take a soft cancel as "end without
     * effect"). NULL: every cancel is hard. */
    bool (*cancel)(struct job *job, bool force);
    /* Optional: called when the user resumes or cancels a user-paused job. */
    void (*user_resume)(struct job *job);
    /* Optional, asynchronous: calls done(job, ret) later, exactly once. */
    void (*prepare)(struct job *job, job_done_fn *done);
    void (*commit)(struct job *job);
    void (*abort)(struct job *job);
    void (*clean)(struct job *job);
    /* Emits the job's terminal event (BLOCK_JOB_COMPLETED / _CANCELLED)
     * right before `concluded`; optional. */
    void (*finished)(struct job *job);
    /* Emits the pending event (BLOCK_JOB_PENDING) when auto-finalize is
     * off; optional. */
    void (*pending)(struct job *job);
    /* Releases the driver's resources; the core frees the memory. */
    void (*free)(struct job *job);
};

/* A job is opaque to job types (the core's struct is in job_int.h). */

/* The job type's state (drv->instance_size bytes, zeroed at create). */
void *job_priv(struct job *job);
const char *job_get_id(const struct job *job);
enum job_status job_get_status(const struct job *job);
const struct job_driver *job_get_driver(const struct job *job);

/* Names as QEMU spells them. */
const char *job_status_name(enum job_status st);
const char *job_verb_name(enum job_verb verb);
const char *job_type_name(enum job_type type);

/* Pure tables (QEMU 7.2's JobSTT and JobVerbTable). */
bool job_transition_allowed(enum job_status from, enum job_status to);
bool job_verb_allowed(enum job_verb verb, enum job_status st);
/* Job ids and node names: [A-Za-z][A-Za-z0-9._-]* */
bool job_id_wellformed(const char *id);

/* Creates a job in `created` (emits JOB_STATUS_CHANGE). Fails with
 * "Invalid job ID 'x'" or "Job ID 'x' already in use" (no event then).
 * flags: auto_finalize/auto_dismiss as requested. */
struct job *job_create(const struct job_driver *drv, const char *id,
                       uv_loop_t *loop, bool auto_finalize, bool auto_dismiss,
                       struct qmp_error *err);
/* A job that failed before it started: created -> null, freed. */
void job_early_fail(struct job *job);
/* created -> running; calls run. */
void job_start(struct job *job);

struct job *job_find(const char *id);
/* Iteration over all jobs, newest first (QEMU's order). */
struct job *job_first(void);
struct job *job_next(struct job *job);

void job_ref(struct job *job);
void job_unref(struct job *job);

/* Applies a verb to the job's status; on refusal sets QEMU's error
 * ("Job 's0' in state 'running' cannot accept command verb 'complete'")
 * and returns -EPERM. */
int job_apply_verb(struct job *job, enum job_verb verb, struct qmp_error *err);

/* User verbs (QMP), with QEMU's checks and texts. */
void job_user_pause(struct job *job, struct qmp_error *err);
void job_user_resume(struct job *job, struct qmp_error *err);
void job_user_cancel(struct job *job, bool force, struct qmp_error *err);
void job_complete(struct job *job, struct qmp_error *err);
void job_finalize(struct job *job, struct qmp_error *err);
void job_dismiss(struct job *job, struct qmp_error *err);

/* Driver side. A hard cancel (job_is_cancelled: the job ends as
 * cancelled) or any cancel, soft ones included (job_cancel_requested). */
bool job_is_cancelled(const struct job *job);
bool job_cancel_requested(const struct job *job);
/* running -> ready (the driver emits BLOCK_JOB_READY after it). */
void job_set_ready(struct job *job);
/* The text the job's end reports (BLOCK_JOB_COMPLETED's error, query-jobs)
 * instead of strerror() of its ret; before job_completed(). */
void job_set_error_text(struct job *job, const char *text);
/* False while a pause or cancel is pending or the job sleeps: then the
 * driver must not issue new requests. */
bool job_may_issue(const struct job *job);
/* What a request of the driver is: the core keeps replies and events in
 * qsd's order from it. Data (a chunk read and written) is where QEMU's
 * coroutine yields and uses up a sleep cut short; a query (block status)
 * is neither. */
enum job_io {
    JOB_IO_DATA,
    JOB_IO_QUERY,
};
/* Before issuing a request of `kind` that the rate limit paces, with the
 * limit's delay: true to go now (also after a sleep cut short: QEMU's job
 * then does its next chunk unslept, and data uses the cut up); false when
 * the job went to sleep for delay_ns (run is called again after). */
bool job_pace(struct job *job, enum job_io kind, uint64_t delay_ns);
void job_io_begin(struct job *job, enum job_io kind);
/* Ends one in-flight request and re-enters the job (run, park or end). */
void job_io_end(struct job *job);
/* Sleeps `ns` nanoseconds (rate limit): busy = false; a pause or cancel
 * request wakes the job early. */
void job_sleep_ns(struct job *job, uint64_t ns);
/* Wakes a sleeping job now (e.g. its speed changed). */
void job_wake(struct job *job);
/* The run is over (nothing in flight): starts the ending sequence. */
void job_completed(struct job *job, int ret);
/* The same, failing with the type's own text (msg; NULL or ret >= 0: as
 * job_completed), QEMU's error_setg in a job's run: query-jobs' `error`. */
void job_completed_msg(struct job *job, int ret, const char *msg);
void job_progress_set_total(struct job *job, uint64_t total);
void job_progress_set_current(struct job *job, uint64_t current);

/* Daemon shutdown: cancels every job (force) and calls cb(opaque) once no
 * job has work in flight any more and all have concluded (or immediately if
 * there is no job). Jobs waiting for finalize are cancelled too. The events
 * of these transitions are emitted as usual. */
void job_shutdown(void (*cb)(void *opaque), void *opaque);
/* True while any job exists (not yet dismissed). */
bool job_any(void);

#endif
