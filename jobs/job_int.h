/* The job core's private header: job.c, blockjob.c, job_qmp.c and
 * job_cmd.c (and the core's unit tests) see the structs; a job type never
 * does (it has job.h, blockjob.h and its own state, job_priv()). */
#ifndef JOBS_JOB_INT_H
#define JOBS_JOB_INT_H

#include "jobs/blockjob.h"
#include "jobs/job.h"

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

struct blockjob {
    struct job job; /* first */
    int64_t speed;
    struct ratelimit rl;
    /* Per side: the source's (reads, queries) and the target's (writes)
     * policy, and whether the target's errors are reported as reads
     * (stream: its writes are a copy-on-read's). */
    enum blockjob_on_error on_error;
    enum blockjob_on_error on_target_error;
    bool target_errors_read;
    enum blockjob_io_status iostatus;
    /* blockjob_add_node's links, and the job's BlockBackend. */
    struct bdev_user **links;
    bool *froze; /* links[i]'s node froze its link to links[i + 1]'s */
    size_t n_links;
    struct bdev_user *backend;
    struct bdev_drained *detaching; /* section of the backend's release */
    int detach_round;
    job_done_fn *detach_done;
};

/* The core allocates every job as a struct blockjob followed by the job
 * type's own state (drv->instance_size bytes, see job_priv()). */
#define JOB_PRIV_OFFSET                                                        \
    ((sizeof(struct blockjob) + _Alignof(max_align_t) - 1) &                   \
     ~(_Alignof(max_align_t) - 1))

/* ---- the core's own calls (job.c, blockjob.c, job_qmp.c, job_cmd.c) ---- */

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

/* Re-enters the job: runs it if it may run, parks it if a pause is
 * pending and nothing is in flight, ends it if cancelled and drained. */
void job_enter(struct job *job);
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

static inline struct blockjob *job_bj(struct job *job)
{
    return (struct blockjob *)job;
}

#endif
