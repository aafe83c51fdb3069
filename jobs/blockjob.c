/* Block jobs: speed, on-error, io-status, BLOCK_JOB_* events. */
#include "jobs/blockjob.h"

#include "jobs/job_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "backends/bdev.h"
#include "protocol/qmp.h"

static uint64_t (*clock_ns)(void);

void blockjob_set_clock(uint64_t (*now_ns)(void))
{
    clock_ns = now_ns;
}

static uint64_t now_ns(void)
{
    return clock_ns ? clock_ns() : uv_hrtime();
}

static const char *const on_error_names[] = {
    [BLOCKJOB_ON_ERROR_REPORT] = "report",
    [BLOCKJOB_ON_ERROR_IGNORE] = "ignore",
    [BLOCKJOB_ON_ERROR_ENOSPC] = "enospc",
    [BLOCKJOB_ON_ERROR_STOP] = "stop",
    [BLOCKJOB_ON_ERROR_AUTO] = "auto",
};

int blockjob_on_error_parse(const char *name)
{
    for (size_t i = 0; i < sizeof(on_error_names) / sizeof(on_error_names[0]);
         i++) {
        if (!strcmp(name, on_error_names[i])) {
            return (int)i;
        }
    }
    return -1;
}

const char *blockjob_action_name(enum blockjob_action action)
{
    switch (action) {
    case BLOCKJOB_ACTION_IGNORE:
        return "ignore";
    case BLOCKJOB_ACTION_STOP:
        return "stop";
    case BLOCKJOB_ACTION_REPORT:
        break;
    }
    return "report";
}

const char *blockjob_io_status_name(enum blockjob_io_status st)
{
    switch (st) {
    case BLOCKJOB_IO_FAILED:
        return "failed";
    case BLOCKJOB_IO_NOSPACE:
        return "nospace";
    case BLOCKJOB_IO_OK:
        break;
    }
    return "ok";
}

enum blockjob_action blockjob_error_decide(enum blockjob_on_error policy,
                                           int err)
{
    switch (policy) {
    case BLOCKJOB_ON_ERROR_IGNORE:
        return BLOCKJOB_ACTION_IGNORE;
    case BLOCKJOB_ON_ERROR_STOP:
        return BLOCKJOB_ACTION_STOP;
    case BLOCKJOB_ON_ERROR_ENOSPC:
    case BLOCKJOB_ON_ERROR_AUTO:
        return err == -ENOSPC ? BLOCKJOB_ACTION_STOP : BLOCKJOB_ACTION_REPORT;
    case BLOCKJOB_ON_ERROR_REPORT:
        break;
    }
    return BLOCKJOB_ACTION_REPORT;
}

enum blockjob_action blockjob_error_action(struct job *job, int err,
                                           bool is_read)
{
    struct blockjob *bj = job_bj(job);
    enum blockjob_action action = blockjob_error_decide(bj->on_error, err);
    json_t *data = json_object();

    json_object_set_new(data, "device", json_string(bj->job.id));
    json_object_set_new(data, "operation",
                        json_string(is_read ? "read" : "write"));
    json_object_set_new(data, "action",
                        json_string(blockjob_action_name(action)));
    qmp_event_emit("BLOCK_JOB_ERROR", data); /* steals data */

    if (action == BLOCKJOB_ACTION_STOP) {
        /* io-status first: the pause may park the job right away and a
         * query in between must already see it. */
        if (bj->iostatus == BLOCKJOB_IO_OK) {
            bj->iostatus =
                err == -ENOSPC ? BLOCKJOB_IO_NOSPACE : BLOCKJOB_IO_FAILED;
        }
        if (!bj->job.user_paused) {
            /* A pause the user can see and resume. */
            bj->job.user_paused = true;
            job_pause(&bj->job);
        }
    }
    return action;
}

void blockjob_set_on_error(struct job *job, enum blockjob_on_error source,
                           enum blockjob_on_error target, bool target_read)
{
    struct blockjob *bj = job_bj(job);

    bj->on_error = source;
    bj->on_target_error = target;
    bj->target_errors_read = target_read;
}

/* ---- the copy engine's hooks ---- */

static bool copy_may_issue(void *opaque)
{
    return job_may_issue(opaque);
}

static bool copy_stopped(void *opaque)
{
    return job_is_cancelled(opaque);
}

static enum job_io io_kind(enum copy_io kind)
{
    return kind == COPY_IO_DATA ? JOB_IO_DATA : JOB_IO_QUERY;
}

static bool copy_pace(void *opaque, enum copy_io kind)
{
    return job_pace(opaque, io_kind(kind), blockjob_ratelimit_delay(opaque));
}

static void copy_account(void *opaque, uint64_t bytes)
{
    blockjob_ratelimit_account(opaque, bytes);
}

static void copy_io_begin(void *opaque, enum copy_io kind)
{
    job_io_begin(opaque, io_kind(kind));
}

static void copy_io_end(void *opaque)
{
    job_io_end(opaque);
}

/* A skipped chunk: QEMU's loop sleeps 0 ns (yields) before the next. */
static void copy_skipped(void *opaque, uint64_t from, uint64_t to)
{
    (void)from;
    (void)to;
    job_yield_point(opaque);
}

static enum copy_action copy_error(void *opaque, int err, enum copy_side side)
{
    struct blockjob *bj = job_bj(opaque);
    enum blockjob_on_error saved = bj->on_error;
    bool is_read = side == COPY_SIDE_SOURCE || bj->target_errors_read;
    enum blockjob_action a;

    if (side == COPY_SIDE_TARGET) {
        bj->on_error = bj->on_target_error;
    }
    a = blockjob_error_action(opaque, err, is_read);
    bj->on_error = saved;
    switch (a) {
    case BLOCKJOB_ACTION_STOP:
        return COPY_ACTION_STOP;
    case BLOCKJOB_ACTION_IGNORE:
        return COPY_ACTION_IGNORE;
    case BLOCKJOB_ACTION_REPORT:
        break;
    }
    return COPY_ACTION_REPORT;
}

/* QEMU breaks out of its loop at once: a job sleeping off the rate limit
 * of a later chunk ends now. */
static void copy_ending(void *opaque)
{
    job_wake(opaque);
}

static void copy_progress(void *opaque, uint64_t offset)
{
    struct job *job = opaque;

    if (offset > job->progress_current) {
        job_progress_set_current(job, offset);
    }
}

static void copy_done(void *opaque, int ret)
{
    job_completed(opaque, ret);
}

const struct copy_hooks blockjob_copy_hooks = {
    .may_issue = copy_may_issue,
    .stopped = copy_stopped,
    .pace = copy_pace,
    .account = copy_account,
    .io_begin = copy_io_begin,
    .io_end = copy_io_end,
    .skipped = copy_skipped,
    .error = copy_error,
    .ending = copy_ending,
    .progress = copy_progress,
    .done = copy_done,
};

int blockjob_set_speed(struct job *job, int64_t speed, struct qmp_error *err)
{
    struct blockjob *bj = job_bj(job);
    int ret = job_apply_verb(&bj->job, JOB_VERB_SET_SPEED, err);
    int64_t old;

    if (ret < 0) {
        return ret;
    }
    if (speed < 0) {
        qmp_error_setg(err, "Parameter 'speed' expects a non-negative value");
        return -EINVAL;
    }
    old = bj->speed;
    bj->speed = speed;
    ratelimit_set_speed(&bj->rl, (uint64_t)speed, now_ns());
    /* Like QEMU, only a higher (or no) limit wakes a sleeping job; a lower
     * one takes effect when the current sleep ends. */
    if (speed == 0 || speed > old) {
        job_wake(&bj->job);
    }
    return 0;
}

uint64_t blockjob_ratelimit_delay(struct job *job)
{
    struct blockjob *bj = job_bj(job);
    return ratelimit_delay(&bj->rl, now_ns());
}

void blockjob_ratelimit_account(struct job *job, uint64_t bytes)
{
    struct blockjob *bj = job_bj(job);
    ratelimit_account(&bj->rl, bytes, now_ns());
}

void blockjob_user_resume(struct job *job)
{
    ((struct blockjob *)job)->iostatus = BLOCKJOB_IO_OK;
}

static json_t *progress_event_data(struct blockjob *bj)
{
    json_t *data = json_object();

    json_object_set_new(data, "device", json_string(bj->job.id));
    json_object_set_new(data, "len",
                        json_integer((json_int_t)bj->job.progress_total));
    json_object_set_new(data, "offset",
                        json_integer((json_int_t)bj->job.progress_current));
    json_object_set_new(data, "speed", json_integer(bj->speed));
    json_object_set_new(data, "type",
                        json_string(job_type_name(bj->job.drv->type)));
    return data;
}

void blockjob_event_finished(struct job *job)
{
    struct blockjob *bj = (struct blockjob *)job;
    json_t *data = progress_event_data(bj);

    if (job_is_cancelled(job)) {
        qmp_event_emit("BLOCK_JOB_CANCELLED", data);
        return;
    }
    if (job->ret && job->error) {
        json_object_set_new(data, "error", json_string(job->error));
    }
    qmp_event_emit("BLOCK_JOB_COMPLETED", data);
}

void blockjob_set_ready(struct job *job)
{
    job_set_ready(job);
    qmp_event_emit("BLOCK_JOB_READY",
                   progress_event_data((struct blockjob *)job));
}

void blockjob_event_pending(struct job *job)
{
    json_t *data = json_object();

    json_object_set_new(data, "type",
                        json_string(job_type_name(job->drv->type)));
    json_object_set_new(data, "id", json_string(job->id));
    qmp_event_emit("BLOCK_JOB_PENDING", data);
}

json_t *blockjob_info(struct job *job)
{
    struct blockjob *bj = job_bj(job);
    json_t *o = json_object();

    json_object_set_new(o, "auto-finalize", json_boolean(job->auto_finalize));
    json_object_set_new(o, "io-status",
                        json_string(blockjob_io_status_name(bj->iostatus)));
    json_object_set_new(o, "device", json_string(job->id));
    json_object_set_new(o, "auto-dismiss", json_boolean(job->auto_dismiss));
    /* Requests still in flight make the job busy even while the rate limit
     * holds back the next one: QEMU's one-chunk-at-a-time loop only sleeps
     * once its chunk is done, so clients never see busy=false mid-copy. */
    json_object_set_new(o, "busy",
                        json_boolean(job->busy || job->in_flight > 0));
    json_object_set_new(o, "len",
                        json_integer((json_int_t)job->progress_total));
    json_object_set_new(o, "offset",
                        json_integer((json_int_t)job->progress_current));
    json_object_set_new(o, "status", json_string(job_status_name(job->status)));
    json_object_set_new(o, "paused", json_boolean(job->pause_count > 0));
    json_object_set_new(o, "speed", json_integer(bj->speed));
    json_object_set_new(o, "ready",
                        json_boolean(job->status == JOB_STATUS_READY ||
                                     job->status == JOB_STATUS_STANDBY));
    json_object_set_new(o, "type", json_string(job_type_name(job->drv->type)));
    if (job->ret && job->error) {
        json_object_set_new(o, "error", json_string(job->error));
    }
    return o;
}

json_t *job_info(struct job *job)
{
    json_t *o = json_object();

    json_object_set_new(o, "current-progress",
                        json_integer((json_int_t)job->progress_current));
    json_object_set_new(o, "status", json_string(job_status_name(job->status)));
    json_object_set_new(o, "total-progress",
                        json_integer((json_int_t)job->progress_total));
    json_object_set_new(o, "type", json_string(job_type_name(job->drv->type)));
    json_object_set_new(o, "id", json_string(job->id));
    if (job->ret && job->error) {
        json_object_set_new(o, "error", json_string(job->error));
    }
    return o;
}

/* ---- the job's nodes and drained sections ---- */

static bool link_drained_begin(void *opaque)
{
    return job_drain_begin(opaque);
}

static void link_drained_end(void *opaque)
{
    job_drain_end(opaque);
}

static bool link_busy(void *opaque, bool token, bool strict)
{
    return job_drain_busy(opaque, token, strict);
}

static const struct bdev_user_ops link_ops = {
    .drained_begin = link_drained_begin,
    .drained_end = link_drained_end,
    .busy = link_busy,
};

static void detach_step(void *opaque);

static void thaw_links(struct blockjob *bj)
{
    for (size_t i = 0; i < bj->n_links; i++) {
        struct bdev *node = bdev_user_node(bj->links[i]);

        if (bj->froze[i] && node) {
            bdev_link_freeze(node, false);
        }
        bj->froze[i] = false;
    }
}

/* QEMU's stream_clean unrefs the job's BlockBackend: blk_unref drains its
 * node, blk_remove_bs drains it again, then the node is let go. Each
 * section first waits for the jobs it pauses (a job above, say, resumed by
 * the section before, has a request in flight). */
static void detach_step(void *opaque)
{
    struct blockjob *bj = opaque;
    struct bdev *node = bdev_user_node(bj->backend);
    job_done_fn *done;

    if (bj->detaching) {
        bdev_drained_end(bj->detaching);
        bj->detaching = NULL;
    }
    if (node && bj->detach_round < 2) {
        bj->detach_round++;
        bj->detaching = bdev_drained_begin(node, false);
        bdev_drained_wait(bj->detaching, detach_step, bj);
        return;
    }
    bdev_user_remove(bj->backend);
    bj->backend = NULL;
    done = bj->detach_done;
    bj->detach_done = NULL;
    done(&bj->job, 0);
}

static void blockjob_detach(struct job *job, job_done_fn *done)
{
    struct blockjob *bj = (struct blockjob *)job;

    thaw_links(bj); /* QEMU: when the filter is dropped, before */
    bj->detach_done = done;
    bj->detach_round = 0;
    detach_step(bj);
}

static void blockjob_release(struct job *job)
{
    struct blockjob *bj = (struct blockjob *)job;

    thaw_links(bj);
    for (size_t i = 0; i < bj->n_links; i++) {
        bdev_user_remove(bj->links[i]);
    }
    free(bj->links);
    free(bj->froze);
    bj->links = NULL;
    bj->froze = NULL;
    bj->n_links = 0;
    if (bj->detaching) {
        bdev_drained_end(bj->detaching);
        bj->detaching = NULL;
    }
    bdev_user_remove(bj->backend);
    bj->backend = NULL;
}

void blockjob_add_node(struct job *job, struct bdev *bs)
{
    struct blockjob *bj = job_bj(job);
    struct bdev_user **v =
        realloc(bj->links, (bj->n_links + 1) * sizeof(*bj->links));
    bool *f = realloc(bj->froze, (bj->n_links + 1) * sizeof(*bj->froze));
    struct bdev *prev;

    if (!v || !f) {
        abort();
    }
    bj->links = v;
    bj->froze = f;
    bj->froze[bj->n_links] = false;
    prev = bj->n_links ? bdev_user_node(bj->links[bj->n_links - 1]) : NULL;
    if (prev && bdev_chain_next(prev) == bs) {
        bdev_link_freeze(prev, true);
        bj->froze[bj->n_links - 1] = true;
    }
    bj->links[bj->n_links++] = bdev_user_add(bs, &link_ops, &bj->job, false);
    if (!bj->backend) {
        /* After the job's link, as QEMU creates the job (main node) before
         * stream_start's BlockBackend. It pauses nobody by itself. */
        bj->backend = bdev_user_add(bs, NULL, NULL, true);
        bj->job.detach = blockjob_detach;
        bj->job.release = blockjob_release;
        job_add_quiesce_hook(bdev_users_kick);
    }
}
