/* QMP handlers for block-job-*, job-* and the job queries. */
#include "jobs/job_qmp.h"

#include <jansson.h>
#include <stdlib.h>

#include "backends/bdev.h"
#include "jobs/blockjob.h"
#include "jobs/job.h"
#include "protocol/qmp.h"

static const char job_schema[] =
    "["
    "{'enum': 'JobType', 'data': ['commit', 'stream', 'mirror', 'backup',"
    " 'create', 'amend', 'snapshot-load', 'snapshot-save',"
    " 'snapshot-delete']},"
    "{'enum': 'JobStatus', 'data': ['undefined', 'created', 'running',"
    " 'paused', 'ready', 'standby', 'waiting', 'pending', 'aborting',"
    " 'concluded', 'null']},"
    "{'enum': 'BlockDeviceIoStatus', 'data': ['ok', 'failed', 'nospace']},"
    "{'enum': 'BlockdevOnError', 'data': ['report', 'ignore', 'enospc',"
    " 'stop', 'auto']},"
    "{'enum': 'IoOperationType', 'data': ['read', 'write']},"
    "{'enum': 'BlockErrorAction', 'data': ['ignore', 'report', 'stop']},"
    "{'struct': 'BlockJobInfo', 'data': {'type': 'str', 'device': 'str',"
    " 'len': 'int', 'offset': 'int', 'busy': 'bool', 'paused': 'bool',"
    " 'speed': 'int', 'io-status': 'BlockDeviceIoStatus', 'ready': 'bool',"
    " 'status': 'JobStatus', 'auto-finalize': 'bool', 'auto-dismiss': 'bool',"
    " '*error': 'str'}},"
    "{'struct': 'JobInfo', 'data': {'id': 'str', 'type': 'JobType',"
    " 'status': 'JobStatus', 'current-progress': 'int',"
    " 'total-progress': 'int', '*error': 'str'}},"
    "{'command': 'query-block-jobs', 'returns': ['BlockJobInfo']},"
    "{'command': 'block-job-set-speed', 'data': {'device': 'str',"
    " 'speed': 'int'}},"
    "{'command': 'block-job-cancel', 'data': {'device': 'str',"
    " '*force': 'bool'}},"
    "{'command': 'block-job-pause', 'data': {'device': 'str'}},"
    "{'command': 'block-job-resume', 'data': {'device': 'str'}},"
    "{'command': 'block-job-complete', 'data': {'device': 'str'}},"
    "{'command': 'block-job-dismiss', 'data': {'id': 'str'}},"
    "{'command': 'block-job-finalize', 'data': {'id': 'str'}},"
    "{'command': 'job-pause', 'data': {'id': 'str'}},"
    "{'command': 'job-resume', 'data': {'id': 'str'}},"
    "{'command': 'job-cancel', 'data': {'id': 'str'}},"
    "{'command': 'job-complete', 'data': {'id': 'str'}},"
    "{'command': 'job-dismiss', 'data': {'id': 'str'}},"
    "{'command': 'job-finalize', 'data': {'id': 'str'}},"
    "{'command': 'query-jobs', 'returns': ['JobInfo']},"
    "{'event': 'JOB_STATUS_CHANGE', 'data': {'id': 'str',"
    " 'status': 'JobStatus'}},"
    "{'event': 'BLOCK_JOB_COMPLETED', 'data': {'type': 'JobType',"
    " 'device': 'str', 'len': 'int', 'offset': 'int', 'speed': 'int',"
    " '*error': 'str'}},"
    "{'event': 'BLOCK_JOB_CANCELLED', 'data': {'type': 'JobType',"
    " 'device': 'str', 'len': 'int', 'offset': 'int', 'speed': 'int'}},"
    "{'event': 'BLOCK_JOB_ERROR', 'data': {'device': 'str',"
    " 'operation': 'IoOperationType', 'action': 'BlockErrorAction'}},"
    "{'event': 'BLOCK_JOB_READY', 'data': {'type': 'JobType',"
    " 'device': 'str', 'len': 'int', 'offset': 'int', 'speed': 'int'}},"
    "{'event': 'BLOCK_JOB_PENDING', 'data': {'type': 'JobType',"
    " 'id': 'str'}}"
    "]";

/* block-job-*: by job id, DeviceNotActive when unknown. */
static struct job *find_block_job(json_t *args, const char *member,
                                  struct qmp_error *err)
{
    const char *id = json_string_value(json_object_get(args, member));
    struct job *job = id ? job_find(id) : NULL;

    if (!job || !job->drv->is_block_job) {
        qmp_error_set(err, QMP_ERROR_DEVICE_NOT_ACTIVE,
                      "Block job '%s' not found", id ? id : "");
        return NULL;
    }
    return job;
}

/* job-*: any job, GenericError when unknown. */
static struct job *find_job(json_t *args, struct qmp_error *err)
{
    const char *id = json_string_value(json_object_get(args, "id"));
    struct job *job = id ? job_find(id) : NULL;

    if (!job) {
        qmp_error_setg(err, "Job not found");
    }
    return job;
}

/* A command about a job that is settling (its prepare runs) waits and then
 * runs as if it had arrived after the job's ending: qemu-storage-daemon
 * finishes that ending before it reads the next command. */
struct rerun {
    struct qmp_deferred *d;
    qmp_command_fn *fn;
    json_t *args;
    struct rerun *next; /* job_qmp_run_quiet's queue */
};

/* A command whose reply is deferred: it runs again later, without its
 * session (the deferred reply answers it). */
static struct rerun *rerun_new(qmp_command_fn *fn, json_t *args,
                               struct qmp_session *s)
{
    struct rerun *r = calloc(1, sizeof(*r));

    if (!r) {
        abort();
    }
    r->d = qmp_session_defer(s);
    r->fn = fn;
    r->args = json_incref(args);
    return r;
}

static void rerun_settled(void *opaque)
{
    struct rerun *r = opaque;
    struct qmp_error err = QMP_ERROR_INIT;
    json_t *ret = r->fn(r->args, NULL, &err);

    qmp_deferred_reply(r->d, ret, &err);
    json_decref(r->args);
    free(r);
}

static bool wait_settled(struct job *job, qmp_command_fn *fn, json_t *args,
                         struct qmp_session *s)
{
    struct rerun *r;

    if (!job || !s || !job_is_settling(job)) {
        return false;
    }
    r = rerun_new(fn, args, s);
    job_when_settled(job, rerun_settled, r);
    return true;
}

/* A reply held back until the drained sections begun so far are over
 * (and first, maybe, until a job settled). */
struct held_reply {
    struct qmp_deferred *d;
    json_t *ret;
    struct qmp_error err;
};

static void held_reply_idle(void *opaque)
{
    struct held_reply *h = opaque;

    qmp_deferred_reply(h->d, h->ret, &h->err);
    free(h);
}

static void held_reply_settled(void *opaque)
{
    bdev_when_drained_idle(held_reply_idle, opaque);
}

json_t *job_qmp_reply_after(struct qmp_session *s, const char *job_id,
                            json_t *ret, struct qmp_error *err)
{
    struct job *job = job_id ? job_find(job_id) : NULL;
    bool settling = job && job_is_settling(job);
    struct held_reply *h;

    if (!s || (!settling && bdev_drained_idle())) {
        return ret;
    }
    h = calloc(1, sizeof(*h));
    if (!h) {
        abort();
    }
    h->ret = ret;
    h->err = *err; /* moved: err is left clear, the reply deferred */
    err->cls = QMP_ERROR_NONE;
    err->desc = NULL;
    h->d = qmp_session_defer(s);
    if (settling) {
        job_when_settled(job, held_reply_settled, h);
    } else {
        bdev_when_drained_idle(held_reply_idle, h);
    }
    return NULL;
}

/* Commands that change the graph several times in a row (block-stream)
 * run once no job has a request in flight nor an ending under way, and
 * with the jobs held meanwhile: qemu-storage-daemon's drains wait for the
 * jobs they pause before each change, which a synchronous handler cannot;
 * a held job, idle, parks at once. */
static struct rerun *quiet_runs; /* waiting, in arrival order */
static bool quiet_check_queued;

static bool all_quiet(void)
{
    return job_all_quiet() && bdev_drained_idle();
}

static void quiet_check(void *opaque)
{
    struct rerun *r;

    (void)opaque;
    quiet_check_queued = false;
    while ((r = quiet_runs) && all_quiet()) {
        struct qmp_error err = QMP_ERROR_INIT;
        const char *id;
        json_t *ret;

        quiet_runs = r->next;
        ret = r->fn(r->args, NULL, &err); /* still held: see below */
        job_unhold();
        id = json_string_value(json_object_get(r->args, "job-id"));
        {
            struct held_reply *h = calloc(1, sizeof(*h));
            struct job *job = id && ret ? job_find(id) : NULL;

            if (!h) {
                abort();
            }
            h->d = r->d;
            h->ret = ret;
            h->err = err;
            if (job && job_is_settling(job)) {
                job_when_settled(job, held_reply_settled, h);
            } else {
                bdev_when_drained_idle(held_reply_idle, h);
            }
        }
        json_decref(r->args);
        free(r);
    }
}

static void quiet_kick_later(void *opaque)
{
    (void)opaque;
    bdev_when_drained_idle(quiet_check, NULL);
}

static void quiet_kick(void)
{
    /* From the loop: the caller may be a request's completion. */
    if (quiet_runs && !quiet_check_queued) {
        quiet_check_queued = true;
        bdev_call_later(quiet_kick_later, NULL);
    }
}

json_t *job_qmp_run_quiet(qmp_command_fn *fn, json_t *args,
                          struct qmp_session *s, struct qmp_error *err)
{
    struct rerun *r, **pp;
    json_t *ret;

    if (!s || (!quiet_runs && all_quiet())) {
        job_hold();
        ret = fn(args, s, err);
        job_unhold();
        return ret;
    }
    r = rerun_new(fn, args, s);
    for (pp = &quiet_runs; *pp; pp = &(*pp)->next) {
    }
    *pp = r;
    job_hold(); /* until it ran: jobs finish what is in flight */
    job_add_quiesce_hook(quiet_kick);
    quiet_kick();
    return NULL;
}

/* A reply waiting for a woken job's next yield point. */
struct yield_reply {
    struct qmp_deferred *d;
    struct job *job;
};

static void yield_reply_cb(void *opaque)
{
    struct yield_reply *y = opaque;
    struct held_reply *h = calloc(1, sizeof(*h));

    if (!h) {
        abort();
    }
    h->d = y->d;
    h->ret = json_object();
    h->err = (struct qmp_error)QMP_ERROR_INIT;
    if (job_is_settling(y->job)) {
        job_when_settled(y->job, held_reply_settled, h);
    } else {
        bdev_when_drained_idle(held_reply_idle, h);
    }
    job_unref(y->job);
    free(y);
}

/* The reply of a verb that succeeded: if the verb started the job's
 * settling (finalize, cancel), it goes out once the job's ending events are
 * out and the drained sections of that ending are over. If it woke the job
 * (resume, a raised speed), qsd runs the job's coroutine up to its next
 * yield first: a job that finds nothing more to read ends before the
 * reply. */
static json_t *reply_when_settled(struct job *job, unsigned wake_seq,
                                  struct qmp_session *s, struct qmp_error *err)
{
    json_t *ret = NULL;

    if (!qmp_error_is_set(err) && s && job->wake_seq != wake_seq &&
        job->wake_pending && !job_is_settling(job)) {
        struct yield_reply *y = calloc(1, sizeof(*y));

        if (!y) {
            abort();
        }
        y->d = qmp_session_defer(s);
        y->job = job; /* keeps the reference taken by the handler */
        job_when_yielded(job, yield_reply_cb, y);
        return NULL;
    }
    if (!qmp_error_is_set(err)) {
        ret = job_qmp_reply_after(s, job->id, json_object(), err);
    }
    job_unref(job);
    return ret;
}

#define JOB_HANDLER(name, lookup, body)                                        \
    static json_t *name(json_t *args, struct qmp_session *s,                   \
                        struct qmp_error *err)                                 \
    {                                                                          \
        struct job *job = lookup;                                              \
                                                                               \
        if (!job) {                                                            \
            return NULL;                                                       \
        }                                                                      \
        if (wait_settled(job, name, args, s)) {                                \
            return NULL;                                                       \
        }                                                                      \
        unsigned wake_seq = job->wake_seq;                                     \
                                                                               \
        job_ref(job); /* the verb may dismiss it */                            \
        body;                                                                  \
        return reply_when_settled(job, wake_seq, s, err);                      \
    }

static void block_job_cancel(struct job *job, json_t *args,
                             struct qmp_error *err)
{
    bool force = json_is_true(json_object_get(args, "force"));

    if (job->user_paused && !force) {
        qmp_error_setg(err, "The block job for device '%s' is currently paused",
                       job->id);
        return;
    }
    job_user_cancel(job, force, err);
}

JOB_HANDLER(qmp_block_job_set_speed, find_block_job(args, "device", err),
            blockjob_set_speed(
                (struct blockjob *)job,
                (int64_t)json_integer_value(json_object_get(args, "speed")),
                err))
JOB_HANDLER(qmp_block_job_cancel, find_block_job(args, "device", err),
            block_job_cancel(job, args, err))
JOB_HANDLER(qmp_block_job_pause, find_block_job(args, "device", err),
            job_user_pause(job, err))
JOB_HANDLER(qmp_block_job_resume, find_block_job(args, "device", err),
            job_user_resume(job, err))
JOB_HANDLER(qmp_block_job_complete, find_block_job(args, "device", err),
            job_complete(job, err))
JOB_HANDLER(qmp_block_job_dismiss, find_block_job(args, "id", err),
            job_dismiss(job, err))
JOB_HANDLER(qmp_block_job_finalize, find_block_job(args, "id", err),
            job_finalize(job, err))
JOB_HANDLER(qmp_job_pause, find_job(args, err), job_user_pause(job, err))
JOB_HANDLER(qmp_job_resume, find_job(args, err), job_user_resume(job, err))
/* job-cancel is always a forced cancel, without the paused check. */
JOB_HANDLER(qmp_job_cancel, find_job(args, err),
            job_user_cancel(job, true, err))
JOB_HANDLER(qmp_job_complete, find_job(args, err), job_complete(job, err))
JOB_HANDLER(qmp_job_dismiss, find_job(args, err), job_dismiss(job, err))
JOB_HANDLER(qmp_job_finalize, find_job(args, err), job_finalize(job, err))

static json_t *qmp_query_block_jobs(json_t *args, struct qmp_session *s,
                                    struct qmp_error *err)
{
    json_t *list = json_array();

    (void)args;
    (void)s;
    (void)err;
    for (struct job *j = job_first(); j; j = job_next(j)) {
        if (j->drv->is_block_job) {
            json_array_append_new(list, blockjob_info((struct blockjob *)j));
        }
    }
    return list;
}

static json_t *qmp_query_jobs(json_t *args, struct qmp_session *s,
                              struct qmp_error *err)
{
    json_t *list = json_array();

    (void)args;
    (void)s;
    (void)err;
    for (struct job *j = job_first(); j; j = job_next(j)) {
        json_array_append_new(list, job_info(j));
    }
    return list;
}

void job_qmp_init(void)
{
    qmp_schema_add(job_schema);
    qmp_command_register("query-block-jobs", qmp_query_block_jobs);
    qmp_command_register("block-job-set-speed", qmp_block_job_set_speed);
    qmp_command_register("block-job-cancel", qmp_block_job_cancel);
    qmp_command_register("block-job-pause", qmp_block_job_pause);
    qmp_command_register("block-job-resume", qmp_block_job_resume);
    qmp_command_register("block-job-complete", qmp_block_job_complete);
    qmp_command_register("block-job-dismiss", qmp_block_job_dismiss);
    qmp_command_register("block-job-finalize", qmp_block_job_finalize);
    qmp_command_register("job-pause", qmp_job_pause);
    qmp_command_register("job-resume", qmp_job_resume);
    qmp_command_register("job-cancel", qmp_job_cancel);
    qmp_command_register("job-complete", qmp_job_complete);
    qmp_command_register("job-dismiss", qmp_job_dismiss);
    qmp_command_register("job-finalize", qmp_job_finalize);
    qmp_command_register("query-jobs", qmp_query_jobs);
    stream_qmp_init();
}
