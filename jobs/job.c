/* Generic job core: status and verb tables, transitions with
 * JOB_STATUS_CHANGE, pausing/cancelling at drain points, and the ending
 * sequence (waiting, pending, finalize, concluded, null). */
#include "jobs/job.h"

#include "jobs/job_int.h"

#include <assert.h>
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/qmp.h"

static struct job *jobs; /* newest first */

static void (*shutdown_cb)(void *opaque);
static void *shutdown_opaque;
static void (*quiesce_hooks[4])(void);
static unsigned hold_count;

void job_add_quiesce_hook(void (*fn)(void))
{
    for (size_t i = 0; i < 4; i++) {
        if (!quiesce_hooks[i] || quiesce_hooks[i] == fn) {
            quiesce_hooks[i] = fn;
            return;
        }
    }
    abort(); /* more listeners than slots: a bug */
}

/* A job may have become quiet (for a drained section or a held command
 * waiting for it). */
static void job_quiesced(void)
{
    for (size_t i = 0; i < 4 && quiesce_hooks[i]; i++) {
        quiesce_hooks[i]();
    }
}

static const char *const status_names[JOB_STATUS__MAX] = {
    [JOB_STATUS_UNDEFINED] = "undefined", [JOB_STATUS_CREATED] = "created",
    [JOB_STATUS_RUNNING] = "running",     [JOB_STATUS_PAUSED] = "paused",
    [JOB_STATUS_READY] = "ready",         [JOB_STATUS_STANDBY] = "standby",
    [JOB_STATUS_WAITING] = "waiting",     [JOB_STATUS_PENDING] = "pending",
    [JOB_STATUS_ABORTING] = "aborting",   [JOB_STATUS_CONCLUDED] = "concluded",
    [JOB_STATUS_NULL] = "null",
};

static const char *const verb_names[JOB_VERB__MAX] = {
    [JOB_VERB_CANCEL] = "cancel",     [JOB_VERB_PAUSE] = "pause",
    [JOB_VERB_RESUME] = "resume",     [JOB_VERB_SET_SPEED] = "set-speed",
    [JOB_VERB_COMPLETE] = "complete", [JOB_VERB_FINALIZE] = "finalize",
    [JOB_VERB_DISMISS] = "dismiss",
};

static const char *const type_names[JOB_TYPE__MAX] = {
    [JOB_TYPE_COMMIT] = "commit", [JOB_TYPE_STREAM] = "stream",
    [JOB_TYPE_MIRROR] = "mirror", [JOB_TYPE_BACKUP] = "backup",
    [JOB_TYPE_CREATE] = "create", [JOB_TYPE_AMEND] = "amend",
};

/* Allowed transitions, QEMU 7.2's JobSTT. Columns: U C R P Y S W D X E N */
static const bool stt[JOB_STATUS__MAX][JOB_STATUS__MAX] = {
    /* U: */ [JOB_STATUS_UNDEFINED] = {0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0},
    /* C: */[JOB_STATUS_CREATED] = {0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1},
    /* R: */[JOB_STATUS_RUNNING] = {0, 0, 0, 1, 1, 0, 1, 0, 1, 0, 0},
    /* P: */[JOB_STATUS_PAUSED] = {0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0},
    /* Y: */[JOB_STATUS_READY] = {0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0},
    /* S: */[JOB_STATUS_STANDBY] = {0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0},
    /* W: */[JOB_STATUS_WAITING] = {0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0},
    /* D: */[JOB_STATUS_PENDING] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0},
    /* X: */[JOB_STATUS_ABORTING] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0},
    /* E: */[JOB_STATUS_CONCLUDED] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1},
    /* N: */[JOB_STATUS_NULL] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
};

/* Verbs per status, QEMU 7.2's JobVerbTable. Columns: U C R P Y S W D X E N */
static const bool verb_table[JOB_VERB__MAX][JOB_STATUS__MAX] = {
    [JOB_VERB_CANCEL] = {0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0},
    [JOB_VERB_PAUSE] = {0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0},
    [JOB_VERB_RESUME] = {0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0},
    [JOB_VERB_SET_SPEED] = {0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0},
    [JOB_VERB_COMPLETE] = {0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0},
    [JOB_VERB_FINALIZE] = {0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0},
    [JOB_VERB_DISMISS] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0},
};

const char *job_status_name(enum job_status st)
{
    return st < JOB_STATUS__MAX ? status_names[st] : "undefined";
}

const char *job_verb_name(enum job_verb verb)
{
    return verb < JOB_VERB__MAX ? verb_names[verb] : "?";
}

const char *job_type_name(enum job_type type)
{
    return type < JOB_TYPE__MAX ? type_names[type] : "?";
}

bool job_transition_allowed(enum job_status from, enum job_status to)
{
    if (from >= JOB_STATUS__MAX || to >= JOB_STATUS__MAX) {
        return false;
    }
    return stt[from][to];
}

bool job_verb_allowed(enum job_verb verb, enum job_status st)
{
    if (verb >= JOB_VERB__MAX || st >= JOB_STATUS__MAX) {
        return false;
    }
    return verb_table[verb][st];
}

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

bool job_id_wellformed(const char *id)
{
    if (!id || !is_alpha(id[0])) {
        return false;
    }
    for (const char *p = id + 1; *p; p++) {
        if (!is_alpha(*p) && !(*p >= '0' && *p <= '9') && *p != '.' &&
            *p != '_' && *p != '-') {
            return false;
        }
    }
    return true;
}

/* The one place a job's status changes. */
static void job_transition(struct job *job, enum job_status to)
{
    enum job_status from = job->status;
    json_t *data;

    assert(stt[from][to]);
    job->status = to;
    if (from == to || !job->id) {
        return;
    }
    data = json_object();
    json_object_set_new(data, "status", json_string(status_names[to]));
    json_object_set_new(data, "id", json_string(job->id));
    qmp_event_emit("JOB_STATUS_CHANGE", data); /* steals data */
}

struct job *job_find(const char *id)
{
    for (struct job *j = jobs; j; j = j->next) {
        if (j->id && !strcmp(j->id, id)) {
            return j;
        }
    }
    return NULL;
}

struct job *job_first(void)
{
    return jobs;
}

struct job *job_next(struct job *job)
{
    return job->next;
}

bool job_any(void)
{
    return jobs != NULL;
}

static void list_remove(struct job *job)
{
    for (struct job **pp = &jobs; *pp; pp = &(*pp)->next) {
        if (*pp == job) {
            *pp = job->next;
            job->next = NULL;
            return;
        }
    }
}

static void shutdown_check(void)
{
    void (*cb)(void *) = shutdown_cb;

    if (!cb) {
        return;
    }
    for (struct job *j = jobs; j; j = j->next) {
        if (j->status != JOB_STATUS_CONCLUDED) {
            return;
        }
    }
    shutdown_cb = NULL;
    cb(shutdown_opaque);
}

struct job *job_create(const struct job_driver *drv, const char *id,
                       uv_loop_t *loop, bool auto_finalize, bool auto_dismiss,
                       struct qmp_error *err)
{
    struct job *job;

    if (!job_id_wellformed(id)) {
        qmp_error_setg(err, "Invalid job ID '%s'", id ? id : "");
        return NULL;
    }
    if (job_find(id)) {
        qmp_error_setg(err, "Job ID '%s' already in use", id);
        return NULL;
    }
    job = calloc(1, JOB_PRIV_OFFSET + drv->instance_size);
    if (!job || !(job->id = strdup(id))) {
        abort();
    }
    job->drv = drv;
    job->refcnt = 1; /* the job list's reference, dropped at dismiss */
    job->loop = loop;
    job->auto_finalize = auto_finalize;
    job->auto_dismiss = auto_dismiss;
    uv_timer_init(loop, &job->sleep_timer);
    job->sleep_timer.data = job;

    /* Newest first, as QEMU lists them (query-jobs, query-block-jobs). */
    job->next = jobs;
    jobs = job;
    job_transition(job, JOB_STATUS_CREATED);
    return job;
}

void *job_priv(struct job *job)
{
    return (char *)job + JOB_PRIV_OFFSET;
}

const char *job_get_id(const struct job *job)
{
    return job->id;
}

enum job_status job_get_status(const struct job *job)
{
    return job->status;
}

const struct job_driver *job_get_driver(const struct job *job)
{
    return job->drv;
}

static void job_close_cb(uv_handle_t *h)
{
    struct job *job = h->data;

    free(job->id);
    free(job->error);
    free(job);
}

void job_ref(struct job *job)
{
    job->refcnt++;
}

void job_unref(struct job *job)
{
    assert(job->refcnt > 0);
    if (--job->refcnt > 0) {
        return;
    }
    assert(job->status == JOB_STATUS_NULL);
    if (job->release) {
        job->release(job);
    }
    if (job->drv->free) {
        job->drv->free(job);
    }
    uv_close((uv_handle_t *)&job->sleep_timer, job_close_cb);
}

static void job_do_dismiss(struct job *job)
{
    job_transition(job, JOB_STATUS_NULL);
    list_remove(job);
    job_unref(job);
    shutdown_check();
}

void job_early_fail(struct job *job)
{
    assert(job->status == JOB_STATUS_CREATED && !job->started);
    job_do_dismiss(job);
}

int job_apply_verb(struct job *job, enum job_verb verb, struct qmp_error *err)
{
    if (verb_table[verb][job->status]) {
        return 0;
    }
    qmp_error_setg(err,
                   "Job '%s' in state '%s' cannot accept command verb '%s'",
                   job->id, status_names[job->status], verb_names[verb]);
    return -EPERM;
}

bool job_is_cancelled(const struct job *job)
{
    return job->cancelled && job->force_cancel;
}

bool job_cancel_requested(const struct job *job)
{
    return job->cancelled;
}

void job_set_error_text(struct job *job, const char *text)
{
    free(job->error);
    job->error = strdup(text);
    if (!job->error) {
        abort();
    }
}

void job_set_ready(struct job *job)
{
    job_transition(job, JOB_STATUS_READY);
}

bool job_may_issue(const struct job *job)
{
    return job->started && !job->deferred && !job->cancelled &&
           job->pause_count == 0 && !job->sleeping && !job->paused &&
           hold_count == 0;
}

void job_hold(void)
{
    hold_count++;
}

void job_unhold(void)
{
    assert(hold_count > 0);
    if (--hold_count > 0) {
        return;
    }
    for (struct job *j = jobs, *next; j; j = next) {
        job_ref(j);
        job_enter(j);
        next = j->next;
        job_unref(j);
    }
}

bool job_all_quiet(void)
{
    for (struct job *j = jobs; j; j = j->next) {
        if (j->settling || (j->started && !j->deferred && j->in_flight)) {
            return false;
        }
    }
    return true;
}

static void job_stop_sleep(struct job *job)
{
    if (job->sleeping) {
        uv_timer_stop(&job->sleep_timer);
        job->sleeping = false;
        job->sleep_cut = true;
        job->busy = true;
    }
}

/* Decides what the job does next. Never re-enters the driver's run. */
void job_enter(struct job *job)
{
    if (!job->started || job->deferred) {
        return;
    }
    if (job->in_run) {
        job->kick_pending = true;
        return;
    }
    job_ref(job);
    for (;;) {
        if (job->deferred) {
            break;
        }
        if (job->paused) {
            if (job->pause_count > 0 && !job->cancelled) {
                break;
            }
            job->paused = false;
            job->busy = true;
            /* QEMU's pause point is inside the job's sleep: once resumed,
             * the job goes on without sleeping first - for every resume
             * its next chunk did not follow yet (a hold kept it back). */
            job->cuts_owed++;
            job->sleep_cut = true;
            job->wake_pending = true;
            job->wake_seq++;
            job_transition(job, job->status == JOB_STATUS_STANDBY
                                    ? JOB_STATUS_READY
                                    : JOB_STATUS_RUNNING);
        }
        if (job->sleeping) {
            if (job->pause_count == 0 && !job->cancelled) {
                break; /* the timer will re-enter */
            }
            job_stop_sleep(job);
        }
        if (job->pause_count > 0 && !job->cancelled) {
            if (job->in_flight > 0) {
                break; /* park once they drained */
            }
            /* A job whose work is all done ends rather than parks: QEMU's
             * loop has no pause point after its last chunk. run must not
             * issue anything now (job_may_issue says so). */
            job->in_run = true;
            job->drv->run(job);
            job->in_run = false;
            if (job->deferred || job->in_flight > 0) {
                break;
            }
            job->paused = true;
            job->busy = false;
            job_transition(job, job->status == JOB_STATUS_READY
                                    ? JOB_STATUS_STANDBY
                                    : JOB_STATUS_PAUSED);
            job_yield_point(job);
            job_quiesced();
            break;
        }
        if (job->cancelled && job->in_flight > 0) {
            break;
        }
        job->in_run = true;
        job->kick_pending = false;
        job->drv->run(job);
        job->in_run = false;
        if (!job->kick_pending) {
            break;
        }
    }
    job_unref(job);
}

static void sleep_timer_cb(uv_timer_t *t)
{
    struct job *job = t->data;

    job->sleeping = false;
    job->busy = true;
    job_enter(job);
}

void job_sleep_ns(struct job *job, uint64_t ns)
{
    uint64_t ms = (ns + 999999) / 1000000;

    assert(!job->sleeping);
    if (job->cuts_owed > 0 && !job->sleep_cut) {
        /* One more resume whose chunk is still to come: no sleep. */
        job->sleep_cut = true;
        ms = 0;
    }
    job->sleeping = true;
    job->busy = false;
    uv_timer_start(&job->sleep_timer, sleep_timer_cb, ms, 0);
    job_yield_point(job);
}

void job_wake(struct job *job)
{
    if (job->sleeping) {
        job_stop_sleep(job);
        job->wake_pending = true;
        job->wake_seq++;
        job_enter(job);
    }
}

/* Appends a callback to a waiter list: in arrival order, so commands are
 * answered in order. */
static void waiter_append(struct job_waiter **pp, void (*cb)(void *opaque),
                          void *opaque)
{
    struct job_waiter *w = calloc(1, sizeof(*w));

    if (!w) {
        abort();
    }
    w->cb = cb;
    w->opaque = opaque;
    while (*pp) {
        pp = &(*pp)->next;
    }
    *pp = w;
}

void job_when_yielded(struct job *job, void (*cb)(void *opaque), void *opaque)
{
    assert(job->wake_pending);
    waiter_append(&job->yield_waiters, cb, opaque);
}

void job_yield_point(struct job *job)
{
    struct job_waiter *w;

    job->wake_pending = false;
    while ((w = job->yield_waiters)) {
        job->yield_waiters = w->next;
        w->cb(w->opaque);
        free(w);
    }
}

bool job_pace(struct job *job, enum job_io kind, uint64_t delay_ns)
{
    /* After a sleep cut short (pause/resume, speed raised) QEMU's job does
     * its next chunk before it looks at the limit again; a query on the
     * way there does not use the cut up. */
    if (job->sleep_cut) {
        if (kind == JOB_IO_DATA) {
            job->sleep_cut = false;
        }
        return true;
    }
    if (delay_ns) {
        job_sleep_ns(job, delay_ns);
        return false;
    }
    return true;
}

void job_io_begin(struct job *job, enum job_io kind)
{
    /* Data is the chunk a cut let through (a query leaves the cut set):
     * that pays one owed cut. */
    if (kind == JOB_IO_DATA) {
        job->sleep_cut = false;
    }
    if (!job->sleep_cut && job->cuts_owed > 0) {
        job->cuts_owed--;
    }
    job->in_flight++;
    if (kind == JOB_IO_DATA) {
        job_yield_point(job); /* QEMU's coroutine waits for it */
    }
}

void job_io_end(struct job *job)
{
    assert(job->in_flight > 0);
    job->in_flight--;
    job_enter(job);
    if (job->in_flight == 0) {
        job_quiesced();
    }
}

void job_start(struct job *job)
{
    assert(job->status == JOB_STATUS_CREATED);
    job->started = true;
    job->busy = true;
    job_transition(job, JOB_STATUS_RUNNING);
    job_enter(job);
}

void job_progress_set_total(struct job *job, uint64_t total)
{
    job->progress_total = total;
}

void job_progress_set_current(struct job *job, uint64_t current)
{
    job->progress_current = current;
}

void job_pause(struct job *job)
{
    job->pause_count++;
    job_enter(job);
}

void job_resume(struct job *job)
{
    assert(job->pause_count > 0);
    job->pause_count--;
    if (job->pause_count == 0) {
        job_enter(job);
    }
}

bool job_drain_begin(struct job *job)
{
    bool done = !job->started || job->deferred;

    job_pause(job);
    return done;
}

bool job_drain_busy(const struct job *job, bool done, bool strict)
{
    if (done || !job->started || job->paused) {
        return false;
    }
    /* An ending that began during the section: QEMU runs it inside the
     * section's wait (its job_exit is a bottom half the wait's poll runs).
     * One that began before is no reason to wait (nor a deadlock). */
    return job->deferred ? strict && job->settling : true;
}

void job_drain_end(struct job *job)
{
    job_resume(job);
}

/* ---- ending sequence ---- */

static void job_update_rc(struct job *job)
{
    if (!job->ret && job_is_cancelled(job)) {
        job->ret = -ECANCELED;
    }
    if (job->ret) {
        if (!job->error) {
            job->error = strdup(strerror(-job->ret));
        }
        job_transition(job, JOB_STATUS_ABORTING);
    }
}

static void job_conclude(struct job *job)
{
    job_transition(job, JOB_STATUS_CONCLUDED);
    if (job->auto_dismiss || !job->started) {
        job_do_dismiss(job);
    } else {
        shutdown_check();
    }
}

/* The ending's events are out: commands waiting for them go on. */
static void job_settled(struct job *job)
{
    struct job_waiter *w;

    job->settling = false;
    while ((w = job->waiters)) {
        job->waiters = w->next;
        w->cb(w->opaque);
        free(w);
    }
    job_quiesced();
}

static void job_finish(struct job *job)
{
    if (job->started && job->drv->finished) {
        job->drv->finished(job);
    }
    job_conclude(job);
    job_settled(job);
}

static void job_detached(struct job *job, int ret)
{
    (void)ret;
    job_finish(job);
    job_unref(job);
}

/* commit or abort, clean, then the job's final events: at once, or once
 * the layer above detached the job (job->detach). The caller holds a
 * reference. */
static void job_finalize_single(struct job *job)
{
    void (*detach)(struct job *, job_done_fn *) = job->detach;

    job_update_rc(job);
    if (!job->ret) {
        if (job->drv->commit) {
            job->drv->commit(job);
        }
    } else if (job->drv->abort) {
        job->drv->abort(job);
    }
    if (job->drv->clean) {
        job->drv->clean(job);
    }
    if (detach) {
        job->detach = NULL;
        job->settling = true; /* the events are still to come */
        job_ref(job);
        detach(job, job_detached);
        return;
    }
    job_finish(job);
}

bool job_is_settling(const struct job *job)
{
    return job->settling;
}

void job_when_settled(struct job *job, void (*cb)(void *opaque), void *opaque)
{
    assert(job->settling);
    waiter_append(&job->waiters, cb, opaque);
}

static void job_prepare_done(struct job *job, int ret)
{
    if (ret < 0 && !job->ret) {
        job->ret = ret;
    }
    /* A cancel that arrived while prepare ran cannot undo it: the job's
     * effect is made; it concludes as prepared. */
    job->cancelled = job->cancelled && job->ret != 0;
    job->force_cancel = job->force_cancel && job->cancelled;
    job_finalize_single(job);
    job_unref(job);
}

static void job_do_finalize(struct job *job)
{
    if (job->finalizing) {
        return; /* prepare already under way */
    }
    job->finalizing = true;
    job->settling = true;
    job_ref(job);
    if (job->drv->prepare && !job->ret) {
        job->drv->prepare(job, job_prepare_done);
    } else {
        job_prepare_done(job, 0);
    }
}

void job_completed_msg(struct job *job, int ret, const char *msg)
{
    if (ret < 0 && msg && !job->error && !(job->error = strdup(msg))) {
        abort();
    }
    job_completed(job, ret);
}

void job_completed(struct job *job, int ret)
{
    assert(!job->deferred && job->in_flight == 0);
    job_stop_sleep(job);
    job->deferred = true;
    job->busy = false;
    if (!job->ret) {
        job->ret = ret;
    }
    job_ref(job);
    job_update_rc(job);
    if (job->ret) {
        job_finalize_single(job);
    } else {
        job_transition(job, JOB_STATUS_WAITING);
        job_transition(job, JOB_STATUS_PENDING);
        if (!job->auto_finalize) {
            if (job->drv->pending) {
                job->drv->pending(job);
            }
            shutdown_check();
        } else {
            job_do_finalize(job);
        }
    }
    job_yield_point(job); /* waiters see the ending under way */
    job_quiesced();
    job_unref(job);
}

/* ---- user verbs ---- */

static void job_cancel(struct job *job, bool force)
{
    if (job->status == JOB_STATUS_CONCLUDED) {
        job_do_dismiss(job);
        return;
    }
    if (job->user_paused) {
        if (job->drv->user_resume) {
            job->drv->user_resume(job);
        }
        job->user_paused = false;
        assert(job->pause_count > 0);
        job->pause_count--;
    }
    /* A job type without a cancel hook knows no soft cancel: every cancel
     * is a hard one (QEMU's drivers without .cancel). With one (a ready
     * active commit), a soft cancel ends the job without its effect. */
    force = job->drv->cancel ? job->drv->cancel(job, force) : true;
    if (force || !job->deferred) {
        job->cancelled = true;
        job->force_cancel |= force;
    }
    if (!job->started) {
        job->deferred = true;
        job_ref(job);
        job_finalize_single(job);
        job_unref(job);
    } else if (job->deferred) {
        if (job_is_cancelled(job) && job->status == JOB_STATUS_PENDING &&
            !job->finalizing) {
            job_ref(job);
            job_finalize_single(job);
            job_unref(job);
        }
    } else {
        job_enter(job);
    }
}

void job_user_pause(struct job *job, struct qmp_error *err)
{
    if (job_apply_verb(job, JOB_VERB_PAUSE, err) < 0) {
        return;
    }
    if (job->user_paused) {
        qmp_error_setg(err, "Job is already paused");
        return;
    }
    job->user_paused = true;
    job_pause(job);
}

void job_user_resume(struct job *job, struct qmp_error *err)
{
    if (!job->user_paused || job->pause_count <= 0) {
        qmp_error_setg(err, "Can't resume a job that was not paused");
        return;
    }
    if (job_apply_verb(job, JOB_VERB_RESUME, err) < 0) {
        return;
    }
    if (job->drv->user_resume) {
        job->drv->user_resume(job);
    }
    job->user_paused = false;
    job_resume(job);
}

void job_user_cancel(struct job *job, bool force, struct qmp_error *err)
{
    if (job_apply_verb(job, JOB_VERB_CANCEL, err) < 0) {
        return;
    }
    job_cancel(job, force);
}

void job_complete(struct job *job, struct qmp_error *err)
{
    if (job_apply_verb(job, JOB_VERB_COMPLETE, err) < 0) {
        return;
    }
    if (job->cancelled || !job->drv->complete) {
        qmp_error_setg(err, "The active block job '%s' cannot be completed",
                       job->id);
        return;
    }
    job->drv->complete(job, err);
}

void job_finalize(struct job *job, struct qmp_error *err)
{
    if (job_apply_verb(job, JOB_VERB_FINALIZE, err) < 0) {
        return;
    }
    job_do_finalize(job);
}

void job_dismiss(struct job *job, struct qmp_error *err)
{
    if (job_apply_verb(job, JOB_VERB_DISMISS, err) < 0) {
        return;
    }
    job_do_dismiss(job);
}

void job_shutdown(void (*cb)(void *opaque), void *opaque)
{
    shutdown_cb = cb;
    shutdown_opaque = opaque;
    for (struct job *j = jobs, *next; j; j = next) {
        next = j->next;
        job_ref(j);
        if (j->status != JOB_STATUS_CONCLUDED &&
            (!j->deferred || j->status == JOB_STATUS_PENDING)) {
            job_cancel(j, true);
        }
        job_unref(j);
    }
    shutdown_check();
}
