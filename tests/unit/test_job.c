/* Job core: tables, verbs, transitions and event order, pause/cancel at
 * drain points (in-flight counted by the test), rate limit arithmetic and the
 * on-error decision. No disk: the driver here only counts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobs/blockjob.h"
#include "jobs/job.h"
#include "jobs/job_int.h"
#include "jobs/ratelimit.h"
#include "protocol/qmp.h"

static char events[8192];

static void sink(void *opaque, const char *line, size_t len)
{
    const char *ev = strstr(line, "\"event\": \"");
    const char *st = strstr(line, "\"status\": \"");
    char buf[128];

    (void)opaque;
    (void)len;
    if (!ev) {
        return;
    }
    ev += 10;
    if (!strncmp(ev, "JOB_STATUS_CHANGE", 17) && st) {
        st += 11;
        snprintf(buf, sizeof(buf), "%.*s ", (int)(strchr(st, '"') - st), st);
    } else {
        snprintf(buf, sizeof(buf), "%.*s ", (int)(strchr(ev, '"') - ev), ev);
    }
    strncat(events, buf, sizeof(events) - strlen(events) - 1);
}

static int64_t fixed_clock(void)
{
    return 1700000000000000LL;
}

/* A test job: `work` units, each "issued" by run and finished by the test. */
struct tjob {
    struct job *job;
    int work;   /* units still to issue */
    int issued; /* in flight, finished by the test with finish_one() */
    int runs;
    int ret; /* result at the end */
    bool prepared, committed, aborted, cleaned, freed;
};

static bool freed_flag;

static void t_run(struct job *job)
{
    struct tjob *t = job_priv(job);

    t->runs++;
    if (job_is_cancelled(job)) {
        job_completed(job, 0);
        return;
    }
    while (job_may_issue(job) && t->work > 0 && t->issued < 2) {
        t->work--;
        t->issued++;
        job_io_begin(job, JOB_IO_QUERY);
    }
    if (t->work == 0 && job->in_flight == 0) {
        job_completed(job, t->ret);
    }
}

static void t_prepare(struct job *job, job_done_fn *done)
{
    ((struct tjob *)job_priv(job))->prepared = true;
    done(job, 0);
}

static void t_commit(struct job *job)
{
    ((struct tjob *)job_priv(job))->committed = true;
}

static void t_abort(struct job *job)
{
    ((struct tjob *)job_priv(job))->aborted = true;
}

static void t_clean(struct job *job)
{
    ((struct tjob *)job_priv(job))->cleaned = true;
}

static void t_free(struct job *job)
{
    (void)job;
    freed_flag = true;
}

static const struct job_driver tdrv = {
    .instance_size = sizeof(struct tjob),
    .type = JOB_TYPE_STREAM,
    .is_block_job = true,
    .run = t_run,
    .user_resume = blockjob_user_resume,
    .prepare = t_prepare,
    .commit = t_commit,
    .abort = t_abort,
    .clean = t_clean,
    .finished = blockjob_event_finished,
    .pending = blockjob_event_pending,
    .free = t_free,
};

static uv_loop_t loop;

static int setup(void **state)
{
    (void)state;
    uv_loop_init(&loop);
    qmp_event_set_sink(sink, NULL);
    qmp_event_set_clock(fixed_clock);
    events[0] = 0;
    freed_flag = false;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    uv_run(&loop, UV_RUN_NOWAIT); /* close callbacks */
    assert_false(job_any());
    assert_int_equal(uv_loop_close(&loop), 0);
    return 0;
}

static struct tjob *new_job(const char *id, int work, bool af, bool ad)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct job *j = job_create(&tdrv, id, &loop, af, ad, &err);
    struct tjob *t;

    assert_non_null(j);
    t = job_priv(j);
    t->job = j;
    t->work = work;
    return t;
}

static void finish_one(struct tjob *t)
{
    t->issued--;
    job_io_end(t->job);
}

static void test_tables(void **state)
{
    (void)state;
    assert_true(
        job_transition_allowed(JOB_STATUS_UNDEFINED, JOB_STATUS_CREATED));
    assert_true(job_transition_allowed(JOB_STATUS_CREATED, JOB_STATUS_NULL));
    assert_true(job_transition_allowed(JOB_STATUS_RUNNING, JOB_STATUS_PAUSED));
    assert_false(
        job_transition_allowed(JOB_STATUS_PAUSED, JOB_STATUS_ABORTING));
    assert_true(
        job_transition_allowed(JOB_STATUS_ABORTING, JOB_STATUS_ABORTING));
    assert_false(
        job_transition_allowed(JOB_STATUS_CONCLUDED, JOB_STATUS_RUNNING));
    assert_false(job_transition_allowed(JOB_STATUS_NULL, JOB_STATUS_NULL));
    assert_true(job_verb_allowed(JOB_VERB_CANCEL, JOB_STATUS_PENDING));
    assert_false(job_verb_allowed(JOB_VERB_CANCEL, JOB_STATUS_ABORTING));
    assert_false(job_verb_allowed(JOB_VERB_PAUSE, JOB_STATUS_WAITING));
    assert_true(job_verb_allowed(JOB_VERB_COMPLETE, JOB_STATUS_STANDBY));
    assert_false(job_verb_allowed(JOB_VERB_COMPLETE, JOB_STATUS_RUNNING));
    assert_true(job_verb_allowed(JOB_VERB_FINALIZE, JOB_STATUS_PENDING));
    assert_true(job_verb_allowed(JOB_VERB_DISMISS, JOB_STATUS_CONCLUDED));
    assert_true(job_verb_allowed(JOB_VERB_SET_SPEED, JOB_STATUS_CREATED));
    assert_string_equal(job_status_name(JOB_STATUS_CONCLUDED), "concluded");
    assert_string_equal(job_verb_name(JOB_VERB_SET_SPEED), "set-speed");
    assert_true(job_id_wellformed("s0"));
    assert_true(job_id_wellformed("a.b_c-d9"));
    assert_false(job_id_wellformed("1j"));
    assert_false(job_id_wellformed(""));
    assert_false(job_id_wellformed("a b"));
    assert_false(job_id_wellformed("#block1"));
}

static void test_ids(void **state)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct tjob *t;

    (void)state;
    assert_null(job_create(&tdrv, "1j", &loop, true, true, &err));
    assert_string_equal(err.desc, "Invalid job ID '1j'");
    qmp_error_clear(&err);
    assert_string_equal(events, "");
    t = new_job("s0", 0, true, true);
    assert_null(job_create(&tdrv, "s0", &loop, true, true, &err));
    assert_string_equal(err.desc, "Job ID 's0' already in use");
    qmp_error_clear(&err);
    job_early_fail(t->job);
    assert_string_equal(events, "created null ");
    assert_true(freed_flag);
}

static void test_success_auto(void **state)
{
    struct tjob *t;

    (void)state;
    t = new_job("s0", 3, true, true);
    job_start(t->job);
    assert_int_equal(t->issued, 2);
    assert_true(t->job->busy);
    finish_one(t);
    finish_one(t);
    finish_one(t);
    assert_string_equal(events, "created running waiting pending "
                                "BLOCK_JOB_COMPLETED concluded null ");
    assert_true(t->prepared && t->committed && !t->aborted && t->cleaned);
    assert_true(freed_flag);
}

static void test_manual_finalize_dismiss(void **state)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct tjob *t;
    struct job *j;

    (void)state;
    t = new_job("s0", 1, false, false);
    j = t->job;
    job_start(j);
    finish_one(t);
    assert_string_equal(events, "created running waiting pending "
                                "BLOCK_JOB_PENDING ");
    assert_false(t->prepared);
    job_dismiss(j, &err);
    assert_string_equal(err.desc, "Job 's0' in state 'pending' cannot accept "
                                  "command verb 'dismiss'");
    qmp_error_clear(&err);
    job_user_pause(j, &err);
    assert_string_equal(err.desc, "Job 's0' in state 'pending' cannot accept "
                                  "command verb 'pause'");
    qmp_error_clear(&err);
    job_finalize(j, &err);
    assert_false(qmp_error_is_set(&err));
    assert_true(t->prepared && t->committed);
    assert_int_equal(j->status, JOB_STATUS_CONCLUDED);
    job_finalize(j, &err);
    assert_true(qmp_error_is_set(&err));
    qmp_error_clear(&err);
    job_dismiss(j, &err);
    assert_false(qmp_error_is_set(&err));
    assert_string_equal(events, "created running waiting pending "
                                "BLOCK_JOB_PENDING BLOCK_JOB_COMPLETED "
                                "concluded null ");
}

static void test_pause_drains_first(void **state)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct tjob *t;
    struct job *j;

    (void)state;
    t = new_job("s0", 10, true, true);
    j = t->job;
    job_start(j);
    assert_int_equal(t->issued, 2);
    job_user_pause(j, &err);
    assert_false(qmp_error_is_set(&err));
    /* Requests in flight: still running, paused already reported. */
    assert_int_equal(j->status, JOB_STATUS_RUNNING);
    assert_true(j->pause_count > 0);
    job_user_pause(j, &err);
    assert_string_equal(err.desc, "Job is already paused");
    qmp_error_clear(&err);
    finish_one(t);
    assert_int_equal(j->status, JOB_STATUS_RUNNING);
    assert_int_equal(t->issued, 1); /* nothing new issued */
    finish_one(t);
    assert_int_equal(j->status, JOB_STATUS_PAUSED);
    assert_false(j->busy);
    job_user_resume(j, &err);
    assert_false(qmp_error_is_set(&err));
    assert_int_equal(j->status, JOB_STATUS_RUNNING);
    assert_int_equal(t->issued, 2);
    job_user_resume(j, &err);
    assert_string_equal(err.desc, "Can't resume a job that was not paused");
    qmp_error_clear(&err);
    job_user_cancel(j, true, &err);
    assert_int_equal(j->status, JOB_STATUS_RUNNING);
    finish_one(t);
    finish_one(t);
    assert_string_equal(events, "created running paused running aborting "
                                "BLOCK_JOB_CANCELLED concluded null ");
    assert_true(t->aborted && !t->committed && t->cleaned);
}

static void test_cancel_user_paused(void **state)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct tjob *t;
    struct job *j;

    (void)state;
    t = new_job("s0", 3, true, false); /* 2 issued, 1 left */
    j = t->job;
    job_start(j);
    job_user_pause(j, &err);
    finish_one(t);
    finish_one(t);
    assert_int_equal(j->status, JOB_STATUS_PAUSED);
    job_user_cancel(j, false, &err);
    assert_false(qmp_error_is_set(&err));
    assert_string_equal(events, "created running paused running aborting "
                                "BLOCK_JOB_CANCELLED concluded ");
    assert_string_equal(j->error, "Operation canceled");
    job_dismiss(j, &err);
    assert_false(qmp_error_is_set(&err));
}

static void test_cancel_pending(void **state)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct tjob *t;
    struct job *j;

    (void)state;
    t = new_job("s0", 1, false, true);
    j = t->job;
    job_progress_set_total(j, 100);
    job_start(j);
    job_progress_set_current(j, 100);
    finish_one(t);
    job_user_cancel(j, false, &err);
    assert_false(qmp_error_is_set(&err));
    assert_false(t->prepared);
    assert_string_equal(events, "created running waiting pending "
                                "BLOCK_JOB_PENDING aborting "
                                "BLOCK_JOB_CANCELLED concluded null ");
}

static void test_failure_skips_pending(void **state)
{
    struct tjob *t;

    (void)state;
    t = new_job("s0", 1, false, true);
    t->ret = -EIO;
    job_start(t->job);
    finish_one(t);
    assert_string_equal(events, "created running aborting "
                                "BLOCK_JOB_COMPLETED concluded null ");
    assert_true(t->aborted && !t->prepared);
}

static void test_error_stop_and_resume(void **state)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct tjob *t;
    struct job *j;

    (void)state;
    t = new_job("s0", 2, true, true);
    j = t->job;
    job_bj(t->job)->on_error = BLOCKJOB_ON_ERROR_ENOSPC;
    job_start(j);
    /* One request fails with ENOSPC while the other is in flight. */
    assert_int_equal(blockjob_error_action(t->job, -ENOSPC, true),
                     BLOCKJOB_ACTION_STOP);
    assert_true(j->user_paused);
    assert_int_equal(job_bj(t->job)->iostatus, BLOCKJOB_IO_NOSPACE);
    t->work = 1; /* the failed request, held for the retry */
    finish_one(t);
    assert_int_equal(j->status, JOB_STATUS_RUNNING);
    finish_one(t);
    assert_int_equal(j->status, JOB_STATUS_PAUSED);
    job_user_pause(j, &err);
    assert_string_equal(err.desc, "Job is already paused");
    qmp_error_clear(&err);
    job_user_resume(j, &err);
    assert_int_equal(job_bj(t->job)->iostatus, BLOCKJOB_IO_OK);
    finish_one(t);
    assert_string_equal(events, "created running BLOCK_JOB_ERROR paused "
                                "running waiting pending BLOCK_JOB_COMPLETED "
                                "concluded null ");
}

/* Per-side policies through the copy engine's hooks: a source (read)
 * error follows the source's policy, a target (write) error the target's;
 * pacing lets a data request through after a sleep cut short. */
static void test_per_side_policy(void **state)
{
    struct qmp_error err = QMP_ERROR_INIT;
    const struct copy_hooks *h = &blockjob_copy_hooks;
    struct tjob *t;
    struct job *j;

    (void)state;
    t = new_job("s0", 0, true, true);
    j = t->job;
    blockjob_set_on_error(j, BLOCKJOB_ON_ERROR_IGNORE, BLOCKJOB_ON_ERROR_STOP,
                          false);
    assert_int_equal(h->error(j, -EIO, COPY_SIDE_SOURCE), COPY_ACTION_IGNORE);
    assert_false(j->user_paused);
    assert_int_equal(h->error(j, -ENOSPC, COPY_SIDE_TARGET), COPY_ACTION_STOP);
    assert_true(j->user_paused);
    assert_int_equal(job_bj(j)->iostatus, BLOCKJOB_IO_NOSPACE);
    /* The source's policy is unchanged by the target's decision. */
    assert_int_equal(h->error(j, -EIO, COPY_SIDE_SOURCE), COPY_ACTION_IGNORE);
    job_user_resume(j, &err);
    assert_false(qmp_error_is_set(&err));
    assert_int_equal(job_bj(j)->iostatus, BLOCKJOB_IO_OK);
    /* No speed: pacing always lets requests go. */
    assert_true(h->pace(j, COPY_IO_QUERY));
    assert_true(h->pace(j, COPY_IO_DATA));
    job_early_fail(j);
    assert_string_equal(events, "created BLOCK_JOB_ERROR BLOCK_JOB_ERROR "
                                "BLOCK_JOB_ERROR null ");
}

static void test_verbs_and_speed(void **state)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct tjob *t;
    struct job *j;

    (void)state;
    t = new_job("s0", 1, true, true);
    j = t->job;
    job_start(j);
    job_complete(j, &err);
    assert_string_equal(err.desc, "Job 's0' in state 'running' cannot accept "
                                  "command verb 'complete'");
    qmp_error_clear(&err);
    job_finalize(j, &err);
    assert_string_equal(err.desc, "Job 's0' in state 'running' cannot accept "
                                  "command verb 'finalize'");
    qmp_error_clear(&err);
    assert_int_equal(blockjob_set_speed(t->job, -1, &err), -EINVAL);
    assert_string_equal(err.desc,
                        "Parameter 'speed' expects a non-negative value");
    qmp_error_clear(&err);
    assert_int_equal(blockjob_set_speed(t->job, 1048576, &err), 0);
    assert_int_equal(job_bj(t->job)->speed, 1048576);
    finish_one(t);
    assert_int_equal(blockjob_set_speed(t->job, 5, &err), -EPERM);
    qmp_error_clear(&err);
}

static void test_sleep_pause_immediate(void **state)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct tjob *t;
    struct job *j;

    (void)state;
    t = new_job("s0", 0, true, true);
    j = t->job;
    t->work = 1;
    job_start(j);
    finish_one(t);
    /* (completed already: use a fresh job that sleeps) */
    t = new_job("s1", 0, true, true);
    j = t->job;
    t->work = 0;
    j->started = true; /* started by hand to park it in a sleep */
    j->busy = true;
    j->status = JOB_STATUS_RUNNING;
    t->work = 5;
    job_sleep_ns(j, 1000000000ULL);
    assert_false(j->busy);
    job_user_pause(j, &err);
    /* No request in flight: the pause takes effect before the reply. */
    assert_int_equal(j->status, JOB_STATUS_PAUSED);
    job_user_cancel(j, true, &err);
    assert_false(qmp_error_is_set(&err));
    assert_int_equal(t->issued, 0);
}

/* Drained sections (job_drain_*): a job with requests in flight is still
 * busy after the pause request and parks once they completed; its
 * resume lets one chunk through without sleeping; a job that ended before
 * the section never makes it wait, one that ends during it does until its
 * ending is over (strict) or not at all (not strict). */
static int quiesced_calls;

static void count_quiesced(void)
{
    quiesced_calls++;
}

static void test_drain_pause_and_wait(void **state)
{
    struct tjob *t;
    struct job *j;
    bool tok;

    (void)state;
    job_add_quiesce_hook(count_quiesced);
    t = new_job("s0", 10, true, true);
    j = t->job;
    job_start(j);
    assert_int_equal(t->issued, 2);
    tok = job_drain_begin(j);
    assert_false(tok);
    assert_true(job_drain_busy(j, tok, true));
    assert_true(job_drain_busy(j, tok, false));
    quiesced_calls = 0;
    finish_one(t);
    assert_true(job_drain_busy(j, tok, true));
    assert_int_equal(t->issued, 1); /* nothing new while pausing */
    finish_one(t);
    assert_int_equal(j->status, JOB_STATUS_PAUSED);
    assert_false(job_drain_busy(j, tok, true));
    assert_true(quiesced_calls > 0);
    /* Two sections over the job: one pause, one resume. */
    assert_false(job_drain_begin(j));
    job_drain_end(j);
    assert_int_equal(j->status, JOB_STATUS_PAUSED);
    job_drain_end(j);
    assert_int_equal(j->status, JOB_STATUS_RUNNING);
    assert_true(j->sleep_cut); /* no sleep before the next chunk */
    assert_int_equal(t->issued, 2);
    assert_string_equal(events, "created running paused running ");
    /* It ends inside a section: busy while its ending is under way (a
     * strict section waits for it), not for a section that did not wait,
     * never for one begun after the ending began. */
    t->work = 0;
    j->detach = NULL;
    tok = job_drain_begin(j);
    finish_one(t);
    finish_one(t);
    assert_true(j->deferred);
    assert_false(job_drain_busy(j, tok, false));
    assert_false(job_drain_busy(j, job_drain_begin(j), true));
    job_drain_end(j);
    job_drain_end(j);
}

/* A job whose ending waits for the layer above (detach: QEMU's stream
 * releasing its BlockBackend) settles only once detached: its final events
 * and the commands waiting for it come then. */
static job_done_fn *detach_done;

static void t_detach(struct job *job, job_done_fn *done)
{
    (void)job;
    detach_done = done;
}

static void waiter(void *opaque)
{
    strncat(events, opaque, sizeof(events) - strlen(events) - 1);
}

static void test_detach_before_final_events(void **state)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct tjob *t;
    struct job *j;

    (void)state;
    t = new_job("s0", 3, true, true);
    j = t->job;
    j->detach = t_detach;
    detach_done = NULL;
    job_start(j);
    job_user_cancel(j, true, &err);
    finish_one(t);
    finish_one(t);
    assert_non_null(detach_done);
    assert_true(t->cleaned);
    assert_true(job_is_settling(j));
    assert_string_equal(events, "created running aborting ");
    job_when_settled(j, waiter, "waiter ");
    detach_done(j, 0);
    assert_string_equal(events, "created running aborting BLOCK_JOB_CANCELLED "
                                "concluded null waiter ");
}

/* No pause point after the last chunk: a job with nothing left ends rather
 * than parks (QEMU's loop only pauses at its next iteration). */
static void test_done_job_ends_instead_of_parking(void **state)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct tjob *t;
    struct job *j;

    (void)state;
    t = new_job("s0", 2, true, true);
    j = t->job;
    job_start(j);
    job_user_pause(j, &err);
    finish_one(t);
    finish_one(t);
    assert_string_equal(events, "created running waiting pending "
                                "BLOCK_JOB_COMPLETED concluded null ");
}

/* A hold keeps every job from issuing; resumes meanwhile are owed chunks
 * without sleeps; the last unhold lets them go. Jobs are listed newest
 * first, as QEMU's. */
static void test_hold_and_owed_cuts(void **state)
{
    struct tjob *a, *b;
    struct job *ja, *jb;

    (void)state;
    a = new_job("a", 10, true, true);
    b = new_job("b", 10, true, true);
    ja = a->job;
    jb = b->job;
    assert_ptr_equal(job_first(), jb);
    assert_ptr_equal(job_next(jb), ja);
    job_hold();
    job_start(ja);
    assert_int_equal(a->issued, 0);
    assert_true(job_all_quiet());
    job_drain_begin(ja);
    job_drain_end(ja);
    job_drain_begin(ja);
    job_drain_end(ja);
    assert_int_equal(ja->cuts_owed, 2);
    assert_int_equal(a->issued, 0);
    job_hold();
    job_unhold();
    assert_int_equal(a->issued, 0); /* still held once */
    job_unhold();
    assert_int_equal(a->issued, 2);
    assert_false(job_all_quiet());
    /* The chunk a cut let through (data) clears sleep_cut: that pays one
     * owed cut; the next sleep is a zero one. */
    job_io_begin(ja, JOB_IO_DATA);
    assert_int_equal(ja->cuts_owed, 1);
    job_sleep_ns(ja, 1000000000ULL);
    assert_true(ja->sleep_cut);
    uv_run(&loop, UV_RUN_NOWAIT); /* the zero sleep ends */
    assert_false(ja->sleeping);
    job_io_end(ja);
    job_user_cancel(ja, true, NULL);
    job_user_cancel(jb, true, NULL);
    while (a->issued) {
        finish_one(a);
    }
}

/* A verb that woke a job waits for its next yield point (job_when_yielded):
 * a sleep, parking again, or the start of its ending. */
static int yielded_calls;

static void count_yielded(void *opaque)
{
    (void)opaque;
    yielded_calls++;
}

static void test_wake_waits_for_yield_point(void **state)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct tjob *t;
    struct job *j;
    unsigned seq;

    (void)state;
    yielded_calls = 0;
    t = new_job("s1", 0, true, true);
    j = t->job;
    j->started = true; /* started by hand to park it in a sleep */
    j->busy = true;
    j->status = JOB_STATUS_RUNNING;
    t->work = 3;
    job_sleep_ns(j, 1000000000ULL);
    assert_false(j->wake_pending);
    /* Woken: it issues work, nothing yields yet. */
    seq = j->wake_seq;
    job_wake(j);
    assert_int_not_equal(j->wake_seq, seq);
    assert_true(j->wake_pending);
    job_when_yielded(j, count_yielded, NULL);
    assert_int_equal(t->issued, 2);
    assert_int_equal(yielded_calls, 0);
    /* It sleeps: the waiter goes on. */
    job_sleep_ns(j, 1000000000ULL);
    assert_int_equal(yielded_calls, 1);
    assert_false(j->wake_pending);
    /* Paused and resumed: it waits until the job parks again. */
    job_user_pause(j, &err);
    finish_one(t);
    finish_one(t);
    assert_int_equal(j->status, JOB_STATUS_PAUSED);
    job_user_resume(j, &err);
    assert_false(qmp_error_is_set(&err));
    assert_true(j->wake_pending);
    job_when_yielded(j, count_yielded, NULL);
    assert_int_equal(yielded_calls, 1);
    /* The last unit done: the ending starts, the waiter goes on. */
    finish_one(t);
    assert_int_equal(yielded_calls, 2);
    assert_false(j->wake_pending);
    assert_string_equal(events, "created paused running waiting pending "
                                "BLOCK_JOB_COMPLETED concluded null ");
}

static void test_policy(void **state)
{
    (void)state;
    assert_int_equal(blockjob_error_decide(BLOCKJOB_ON_ERROR_REPORT, -ENOSPC),
                     BLOCKJOB_ACTION_REPORT);
    assert_int_equal(blockjob_error_decide(BLOCKJOB_ON_ERROR_IGNORE, -EIO),
                     BLOCKJOB_ACTION_IGNORE);
    assert_int_equal(blockjob_error_decide(BLOCKJOB_ON_ERROR_STOP, -EIO),
                     BLOCKJOB_ACTION_STOP);
    assert_int_equal(blockjob_error_decide(BLOCKJOB_ON_ERROR_ENOSPC, -EIO),
                     BLOCKJOB_ACTION_REPORT);
    assert_int_equal(blockjob_error_decide(BLOCKJOB_ON_ERROR_ENOSPC, -ENOSPC),
                     BLOCKJOB_ACTION_STOP);
    assert_int_equal(blockjob_error_decide(BLOCKJOB_ON_ERROR_AUTO, -ENOSPC),
                     BLOCKJOB_ACTION_STOP);
    assert_int_equal(blockjob_error_decide(BLOCKJOB_ON_ERROR_AUTO, -EIO),
                     BLOCKJOB_ACTION_REPORT);
    assert_int_equal(blockjob_on_error_parse("enospc"),
                     BLOCKJOB_ON_ERROR_ENOSPC);
    assert_int_equal(blockjob_on_error_parse("bogus"), -1);
}

static void test_ratelimit(void **state)
{
    struct ratelimit rl;
    const uint64_t s = 1000000000ULL;
    uint64_t now = 5 * s, sent = 0;

    (void)state;
    ratelimit_init(&rl);
    assert_int_equal(ratelimit_delay(&rl, now), 0);
    ratelimit_account(&rl, 1 << 20, now); /* unlimited: no effect */
    assert_int_equal(ratelimit_delay(&rl, now), 0);
    ratelimit_set_speed(&rl, 1048576, now);
    /* 10 s of 512 KiB chunks dispatched as soon as allowed: 10 MiB +1 chunk */
    while (now < 15 * s) {
        uint64_t d = ratelimit_delay(&rl, now);

        if (d) {
            now += d;
            continue;
        }
        ratelimit_account(&rl, 524288, now);
        sent += 524288;
    }
    assert_true(sent >= 10 * 1048576 && sent <= 11 * 1048576);
    /* Half a second of debt at 1 MiB/s becomes 0.25 s at 2 MiB/s. */
    ratelimit_account(&rl, 524288, now);
    now = rl.next - s / 2;
    ratelimit_set_speed(&rl, 2 * 1048576, now);
    assert_int_equal(ratelimit_delay(&rl, now), s / 4);
    /* Long idle earns at most one slice of credit. */
    now += 100 * s;
    ratelimit_account(&rl, 2 * 1048576, now);
    assert_int_equal(ratelimit_delay(&rl, now), s - RATELIMIT_SLICE_NS);
    /* Back to unlimited. */
    ratelimit_set_speed(&rl, 0, now);
    assert_int_equal(ratelimit_delay(&rl, now), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tables),
        cmocka_unit_test(test_policy),
        cmocka_unit_test(test_ratelimit),
        cmocka_unit_test_setup_teardown(test_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_success_auto, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manual_finalize_dismiss, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_pause_drains_first, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cancel_user_paused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cancel_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failure_skips_pending, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_error_stop_and_resume, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_per_side_policy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verbs_and_speed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sleep_pause_immediate, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_drain_pause_and_wait, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_detach_before_final_events, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_done_job_ends_instead_of_parking,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_hold_and_owed_cuts, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_wake_waits_for_yield_point, setup,
                                        teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
