/* When a command's reply goes out (see job_cmd.h): after the ending a
 * command started, after the drained sections it began, after the yield of
 * a job it woke; and commands that change the graph several times in a row
 * run once every job is quiet. */
#include "jobs/job_cmd.h"

#include <jansson.h>
#include <stdlib.h>

#include "backends/bdev.h"
#include "jobs/job_int.h"
#include "protocol/qmp.h"

/* A command about a job that is settling (its prepare runs) waits and then
 * runs as if it had arrived after the job's ending: qemu-storage-daemon
 * finishes that ending before it reads the next command. */
struct rerun {
    struct qmp_deferred *d;
    qmp_command_fn *fn;
    json_t *args;
    struct rerun *next; /* job_cmd_run_quiet's queue */
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

bool job_cmd_wait_settled(struct job *job, qmp_command_fn *fn, json_t *args,
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

json_t *job_cmd_reply_after(struct qmp_session *s, const char *job_id,
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

json_t *job_cmd_run_quiet(qmp_command_fn *fn, json_t *args,
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
json_t *job_cmd_verb_reply(struct job *job, unsigned wake_seq,
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
        ret = job_cmd_reply_after(s, job->id, json_object(), err);
    }
    job_unref(job);
    return ret;
}
