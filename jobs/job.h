/* Generic jobs: QEMU's job model (qapi/job.json) on one libuv loop.
 *
 * A job is a state machine driven by callbacks, not a thread. The core owns
 * the status, the verb checks, pausing, cancelling, sleeping (rate limits),
 * the in-flight count and the ending sequence; a driver only issues work from
 * its `run` hook and reports when it is done.
 *
 * The driver contract:
 *  - run(job) is called when the job may issue work: after start, after every
 *    job_io_end(), when a sleep ends and after a resume. It issues as much as
 *    it wants (bracketing each asynchronous request with job_io_begin() and
 *    job_io_end()), then returns. It must check job_may_issue() before
 *    issuing anything new. When no work is left and nothing is in flight it
 *    calls job_completed(job, ret) exactly once. Once the job is cancelled
 *    and nothing is in flight any more, run is called one last time and
 *    must call job_completed() (job_is_cancelled() tells it why).
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
    size_t instance_size; /* the driver's struct embeds struct job first */
    enum job_type type;
    bool is_block_job; /* listed by query-block-jobs, block-job-* verbs */
    void (*run)(struct job *job);
    /* Optional: ready jobs only (mirror); NULL = cannot complete. */
    void (*complete)(struct job *job, struct qmp_error *err);
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

struct job {
    const struct job_driver *drv;
    char *id;
    enum job_status status;
    int refcnt;
    int pause_count;  /* pause requests (user, error stop, internal) */
    bool user_paused; /* pause the user may resume */
    bool paused;      /* parked in paused/standby */
    bool busy;        /* working: not sleeping, not paused */
    bool started;
    bool cancelled;
    bool force_cancel;
    bool deferred;   /* run is over; in the ending sequence */
    bool finalizing; /* prepare started */
    bool auto_finalize;
    bool auto_dismiss;
    bool in_run;       /* inside drv->run (no re-entry) */
    bool kick_pending; /* job_enter asked while in run */
    int ret;
    char *error; /* error text once failed/cancelled */
    uint64_t progress_current;
    uint64_t progress_total;
    unsigned in_flight;
    uv_loop_t *loop;
    uv_timer_t sleep_timer;
    bool sleeping;
    /* The last sleep was cut short (pause, resume, speed raised): QEMU's
     * job then does its next chunk at once, whatever the rate limit says.
     * Set by the core, cleared by the driver when it issues that chunk. */
    bool sleep_cut;
    unsigned cuts_owed; /* resumes whose chunk has not been issued yet */
    bool settling;      /* ending under way: its events are to come */
    /* Set by the layer above the core (block jobs) on the instance:
     * detach(job, done) runs after clean and before the job's final events
     * and calls done(job, 0) when finished, maybe later (the job is
     * settling meanwhile); release(job) runs when the job is freed. */
    void (*detach)(struct job *job, job_done_fn *done);
    void (*release)(struct job *job);
    struct job_waiter *waiters;
    /* Woken (resumed, or a sleep cut short) and not yet at the point where
     * QEMU's job coroutine would yield again: commands that woke it wait
     * (job_when_yielded), as qsd runs the coroutine inside the command. */
    bool wake_pending;
    unsigned wake_seq; /* counts the wakes (a verb tells if it woke it) */
    struct job_waiter *yield_waiters;
    struct job *next;
};

/* Someone waiting for a job to settle (job_when_settled). */
struct job_waiter {
    void (*cb)(void *opaque);
    void *opaque;
    struct job_waiter *next;
};

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

/* Internal pause/resume (error stop, drains): counted. */
void job_pause(struct job *job);
void job_resume(struct job *job);

/* A drained section over a node of the job (QEMU's child_job callbacks).
 * job_drain_begin pauses the job and returns whether its ending had begun
 * already; hand that back to job_drain_busy, which says whether the section
 * must still wait: the job has not parked yet (a request in flight), or -
 * strict - it ended after the section began and its ending is still under
 * way. job_drain_end lifts the pause. */
bool job_drain_begin(struct job *job);
bool job_drain_busy(const struct job *job, bool done, bool strict);
void job_drain_end(struct job *job);
/* fn() is called whenever a job may have become quiet for a waiting
 * section or command: it parked, its ending began or was done, or its last
 * request in flight completed. Up to 4 listeners. */
void job_add_quiesce_hook(void (*fn)(void));

/* While held (counted), no job issues new requests (job_may_issue says
 * false); requests in flight complete, jobs park and resume as usual. The
 * last job_unhold() re-enters every job. A QMP command that changes the
 * graph several times holds the jobs meanwhile: qemu-storage-daemon's
 * drains would wait for them between the changes. */
void job_hold(void);
void job_unhold(void);
/* No job has a request in flight or its ending under way. */
bool job_all_quiet(void);

/* Driver side. */
bool job_is_cancelled(const struct job *job);
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
/* Re-enters the job: runs it if it may run, parks it if a pause is
 * pending and nothing is in flight, ends it if cancelled and drained. */
void job_enter(struct job *job);
/* The run is over (nothing in flight): starts the ending sequence. */
void job_completed(struct job *job, int ret);
void job_progress_set_total(struct job *job, uint64_t total);
void job_progress_set_current(struct job *job, uint64_t current);

/* Daemon shutdown: cancels every job (force) and calls cb(opaque) once no
 * job has work in flight any more and all have concluded (or immediately if
 * there is no job). Jobs waiting for finalize are cancelled too. The events
 * of these transitions are emitted as usual. */
void job_shutdown(void (*cb)(void *opaque), void *opaque);
/* True while the job's asynchronous ending is under way - its prepare (the
 * status still says pending) or its detach (after clean; the status says
 * pending or aborting) - and its final events (BLOCK_JOB_COMPLETED or
 * _CANCELLED, concluded, maybe null) are about to come. qemu-storage-daemon
 * does this work before it answers the command that started it, so QMP
 * commands that trigger it or look at the job meanwhile wait for it
 * (job_when_settled). */
bool job_is_settling(const struct job *job);
/* Calls cb(opaque) once, right after the settling job's ending sequence
 * (the job may be dismissed and freed by then: cb must look it up again).
 * Only valid while job_is_settling(job). */
void job_when_settled(struct job *job, void (*cb)(void *opaque), void *opaque);
/* Calls cb(opaque) once, when the woken job (wake_pending) reached its
 * next yield point (job_yield_point) or its ending began (the job may be
 * settling then; the caller holds a reference). Only valid while
 * job->wake_pending. */
void job_when_yielded(struct job *job, void (*cb)(void *opaque), void *opaque);
/* The driver (or the core: sleeping, parking, ending) reached a point where
 * QEMU's coroutine would yield: issued data I/O, or is about to sleep. */
void job_yield_point(struct job *job);
/* True while any job exists (not yet dismissed). */
bool job_any(void);

#endif
