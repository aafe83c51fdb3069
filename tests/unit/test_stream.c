/* The stream driver against the in-memory fake node: copy results, backing
 * change, pause with requests in flight, and every on-error policy. The
 * fake holds every request until the test releases it, so interleavings are
 * deterministic. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobs/job_int.h"
#include "jobs/stream.h"
#include "protocol/qmp.h"
#include "tests/fakes/fake_bdev.h"

#define MiB (1024 * 1024)
#define KiB 1024

static char events[8192];
static char last_end[1024]; /* last BLOCK_JOB_COMPLETED/CANCELLED line */
static uv_loop_t loop;
static struct bdev *base, *mid, *top;

static void sink(void *opaque, const char *line, size_t len)
{
    const char *ev = strstr(line, "\"event\": \"");
    const char *st = strstr(line, "\"status\": \"");
    char buf[128];

    (void)opaque;
    (void)len;
    ev += 10;
    if (!strncmp(ev, "JOB_STATUS_CHANGE", 17) && st) {
        st += 11;
        snprintf(buf, sizeof(buf), "%.*s ", (int)(strchr(st, '"') - st), st);
    } else {
        snprintf(buf, sizeof(buf), "%.*s ", (int)(strchr(ev, '"') - ev), ev);
        if (strstr(ev, "BLOCK_JOB_COMPLETED") ||
            strstr(ev, "BLOCK_JOB_CANCELLED")) {
            const char *d = strstr(line, "\"data\"");

            snprintf(last_end, sizeof(last_end), "%.*s",
                     (int)strcspn(d, "\r\n"), d);
        }
        if (strstr(ev, "BLOCK_JOB_ERROR")) {
            snprintf(buf, sizeof(buf), "ERROR(%.*s) ",
                     (int)(strstr(line, "}}") - strstr(line, "\"action\"")),
                     strstr(line, "\"action\""));
        }
    }
    strncat(events, buf, sizeof(events) - strlen(events) - 1);
}

static int group_setup(void **state)
{
    (void)state;
    uv_loop_init(&loop);
    bdev_init(&loop);
    qmp_event_set_sink(sink, NULL);
    return 0;
}

static int setup(void **state)
{
    (void)state;
    events[0] = last_end[0] = 0;
    /* base: 2 MiB of 0x11; mid: 0x22 at [1M, 1M+128K); top: 0x33 at
     * [0, 64K); the disk is 4 MiB, so [2M, 4M) is unallocated everywhere
     * (the base is as long: past the end of a shorter one, its zeroes
     * would be copied). */
    base = fake_bdev_new("base", 4 * MiB, 64 * KiB, NULL);
    fake_bdev_fill(base, 0, 2 * MiB, 0x11);
    fake_bdev_fill(base, 256 * KiB, 64 * KiB, 0); /* zero data in base */
    mid = fake_bdev_new("mid", 4 * MiB, 64 * KiB, base);
    fake_bdev_fill(mid, 1 * MiB, 128 * KiB, 0x22);
    top = fake_bdev_new("top", 4 * MiB, 64 * KiB, mid);
    fake_bdev_fill(top, 0, 64 * KiB, 0x33);
    /* The creator's references: only the top is ours, the chain hangs off
     * it like implicit backing nodes. */
    bdev_unref(base);
    bdev_unref(mid);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    fake_bdev_free(top);
    while (uv_run(&loop, UV_RUN_NOWAIT)) {
    }
    return 0;
}

/* Releases everything until nothing is held and the loop is idle. */
static void pump(void)
{
    for (;;) {
        if (fake_complete_next()) {
            continue;
        }
        if (uv_run(&loop, UV_RUN_NOWAIT) && fake_pending()) {
            continue;
        }
        if (fake_pending()) {
            continue;
        }
        break;
    }
}

static struct job *start(const char *id, struct bdev *b,
                         enum blockjob_on_error policy, unsigned depth)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct stream_params p = {
        .job_id = id,
        .top = top,
        .base = b,
        .on_error = policy,
        .auto_finalize = true,
        .auto_dismiss = false,
        .queue_depth = depth,
    };
    struct job *job = stream_start(&p, &err);

    assert_false(qmp_error_is_set(&err));
    assert_non_null(job);
    return job;
}

static void dismiss(struct job *job)
{
    struct qmp_error err = QMP_ERROR_INIT;

    job_dismiss(job, &err);
    assert_false(qmp_error_is_set(&err));
}

static void check_flattened(void)
{
    for (uint64_t o = 0; o < 4 * MiB; o += 4 * KiB) {
        int want = o < 64 * KiB                                ? 0x33
                   : (o >= 1 * MiB && o < 1 * MiB + 128 * KiB) ? 0x22
                   : (o >= 256 * KiB && o < 320 * KiB)         ? 0
                   : o < 2 * MiB                               ? 0x11
                                                               : 0;
        assert_int_equal(fake_bdev_read_byte(top, o), want);
        assert_true(fake_bdev_allocated(top, o) == (o < 2 * MiB));
    }
}

static void test_full(void **state)
{
    struct job *job;

    (void)state;
    job = start("s0", NULL, BLOCKJOB_ON_ERROR_REPORT, 0);
    pump();
    assert_string_equal(events, "created running waiting pending "
                                "BLOCK_JOB_COMPLETED concluded ");
    assert_string_equal(last_end, "\"data\": {\"device\": \"s0\", \"len\": "
                                  "4194304, \"offset\": 4194304, \"speed\": 0, "
                                  "\"type\": \"stream\"}}");
    assert_null(bdev_backing(top));
    assert_int_equal(fake_bdev_changes(top), 1);
    assert_null(fake_bdev_backing_file(top));
    /* Blocked until dismissed, as QEMU's block_job_free unblocks. */
    assert_non_null(bdev_claimed_by(top));
    dismiss(job);
    assert_null(bdev_claimed_by(top));
    check_flattened();
}

static void test_base_node(void **state)
{
    struct job *job;

    (void)state;
    job = start("s0", base, BLOCKJOB_ON_ERROR_REPORT, 2);
    assert_non_null(bdev_claimed_by(mid));
    assert_null(bdev_claimed_by(base));
    pump();
    assert_ptr_equal(bdev_backing(top), base);
    assert_string_equal(fake_bdev_backing_file(top), "base");
    assert_string_equal(fake_bdev_backing_fmt(top), "fake");
    assert_true(fake_bdev_allocated(top, 1 * MiB));
    assert_false(fake_bdev_allocated(top, 512 * KiB));
    assert_int_equal(fake_bdev_read_byte(top, 512 * KiB), 0x11);
    dismiss(job);
}

static void test_pause_in_flight(void **state)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct job *job;
    uint64_t off;

    (void)state;
    job = start("s0", NULL, BLOCKJOB_ON_ERROR_REPORT, 3);
    while (fake_pending_io() < 3) {
        assert_true(fake_complete_next_status() ||
                    uv_run(&loop, UV_RUN_NOWAIT));
    }
    job_user_pause(job, &err);
    assert_false(qmp_error_is_set(&err));
    assert_int_equal(job->status, JOB_STATUS_RUNNING);
    /* Each read completes into a write; the job parks after the last. */
    while (fake_pending()) {
        assert_int_equal(job->status, JOB_STATUS_RUNNING);
        fake_complete_next();
    }
    assert_int_equal(job->status, JOB_STATUS_PAUSED);
    off = job->progress_current;
    assert_true(off > 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(fake_pending(), 0);
    assert_int_equal(job->progress_current, off);
    job_user_resume(job, &err);
    assert_false(qmp_error_is_set(&err));
    assert_true(fake_pending() > 0);
    pump();
    assert_string_equal(events, "created running paused running waiting "
                                "pending BLOCK_JOB_COMPLETED concluded ");
    dismiss(job);
    check_flattened();
}

static void test_eio_stop(void **state)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct job *job;

    (void)state;
    fake_bdev_inject(top, 600 * KiB, EIO);
    job = start("s0", NULL, BLOCKJOB_ON_ERROR_STOP, 0);
    pump();
    assert_int_equal(job->status, JOB_STATUS_PAUSED);
    /* QEMU's chunks start where the run to copy starts (64 KiB, after the
     * top's own cluster): [64K, 576K) is done, [576K, 1M) failed. */
    assert_int_equal(job->progress_current, 576 * KiB);
    assert_int_equal(job_bj(job)->iostatus, BLOCKJOB_IO_FAILED);
    assert_true(job->user_paused);
    job_user_resume(job, &err);
    assert_int_equal(job_bj(job)->iostatus, BLOCKJOB_IO_OK);
    pump();
    assert_string_equal(events, "created running ERROR(\"action\": \"stop\") "
                                "paused running waiting pending "
                                "BLOCK_JOB_COMPLETED concluded ");
    assert_null(strstr(last_end, "error"));
    dismiss(job);
    check_flattened();
}

static void test_enospc(void **state)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct job *job;

    (void)state;
    fake_bdev_inject(top, 600 * KiB, ENOSPC);
    job = start("s0", NULL, BLOCKJOB_ON_ERROR_ENOSPC, 0);
    pump();
    assert_int_equal(job->status, JOB_STATUS_PAUSED);
    assert_int_equal(job_bj(job)->iostatus, BLOCKJOB_IO_NOSPACE);
    job_user_resume(job, &err);
    pump();
    assert_int_equal(job->status, JOB_STATUS_CONCLUDED);
    assert_null(job->error);
    dismiss(job);
}

/* Every chunk in flight fails: QEMU, one chunk at a time, decides once, so
 * one BLOCK_JOB_ERROR, one pause; the others are retried after resume. */
static void test_stop_many_in_flight(void **state)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct job *job;

    (void)state;
    fake_bdev_fail_all(top, ENOSPC);
    job = start("s0", NULL, BLOCKJOB_ON_ERROR_ENOSPC, 0);
    pump();
    assert_int_equal(job->status, JOB_STATUS_PAUSED);
    assert_string_equal(events, "created running ERROR(\"action\": \"stop\") "
                                "paused ");
    /* Still full: the retries fail again, once more one event. */
    job_user_resume(job, &err);
    pump();
    assert_int_equal(job->status, JOB_STATUS_PAUSED);
    fake_bdev_fail_all(top, 0);
    job_user_resume(job, &err);
    pump();
    assert_string_equal(events, "created running ERROR(\"action\": \"stop\") "
                                "paused running ERROR(\"action\": \"stop\") "
                                "paused running waiting pending "
                                "BLOCK_JOB_COMPLETED concluded ");
    dismiss(job);
    check_flattened();
}

static void test_report_many_in_flight(void **state)
{
    struct job *job;

    (void)state;
    fake_bdev_fail_all(top, EIO);
    job = start("s0", NULL, BLOCKJOB_ON_ERROR_REPORT, 0);
    pump();
    assert_string_equal(events, "created running ERROR(\"action\": "
                                "\"report\") aborting BLOCK_JOB_COMPLETED "
                                "concluded ");
    assert_non_null(strstr(last_end, "\"error\": \"Input/output error\""));
    assert_ptr_equal(bdev_backing(top), mid);
    assert_int_equal(fake_bdev_changes(top), 0);
    fake_bdev_fail_all(top, 0);
    dismiss(job);
}

static void test_eio_report(void **state)
{
    struct job *job;

    (void)state;
    fake_bdev_inject(top, 600 * KiB, EIO);
    job = start("s0", NULL, BLOCKJOB_ON_ERROR_ENOSPC, 0);
    pump();
    assert_string_equal(events, "created running ERROR(\"action\": "
                                "\"report\") aborting BLOCK_JOB_COMPLETED "
                                "concluded ");
    assert_string_equal(last_end,
                        "\"data\": {\"device\": \"s0\", \"len\": 4194304, "
                        "\"offset\": 589824, \"speed\": 0, \"type\": "
                        "\"stream\", \"error\": \"Input/output error\"}}");
    assert_ptr_equal(bdev_backing(top), mid);
    assert_int_equal(fake_bdev_changes(top), 0);
    assert_non_null(bdev_claimed_by(top));
    dismiss(job);
    assert_null(bdev_claimed_by(top));
}

static void test_eio_ignore(void **state)
{
    struct job *job;

    (void)state;
    fake_bdev_inject(top, 600 * KiB, EIO);
    job = start("s0", NULL, BLOCKJOB_ON_ERROR_IGNORE, 0);
    pump();
    assert_string_equal(events, "created running ERROR(\"action\": "
                                "\"ignore\") aborting BLOCK_JOB_COMPLETED "
                                "concluded ");
    assert_non_null(strstr(last_end, "\"offset\": 4194304"));
    assert_non_null(strstr(last_end, "Input/output error"));
    assert_ptr_equal(bdev_backing(top), mid);
    dismiss(job);
}

static void test_cancel(void **state)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct job *job;

    (void)state;
    job = start("s0", NULL, BLOCKJOB_ON_ERROR_REPORT, 2);
    while (fake_pending_io() < 2) {
        assert_true(fake_complete_next_status() ||
                    uv_run(&loop, UV_RUN_NOWAIT));
    }
    job_user_cancel(job, false, &err);
    assert_int_equal(job->status, JOB_STATUS_RUNNING);
    pump();
    assert_string_equal(events, "created running aborting "
                                "BLOCK_JOB_CANCELLED concluded ");
    assert_ptr_equal(bdev_backing(top), mid);
    assert_string_equal(job->error, "Operation canceled");
    dismiss(job);
}

static void test_busy_and_noop(void **state)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct stream_params p = {.job_id = "s1", .top = top};
    struct job *job;

    (void)state;
    job = start("s0", NULL, BLOCKJOB_ON_ERROR_REPORT, 0);
    assert_null(stream_start(&p, &err));
    assert_string_equal(err.desc, "Node 'top' is busy: block device is in "
                                  "use by block job: stream");
    qmp_error_clear(&err);
    pump();
    dismiss(job);
    events[0] = 0;
    /* The base is already the direct backing: nothing to copy, len 0. */
    job = start("s2", bdev_backing(top), BLOCKJOB_ON_ERROR_REPORT, 0);
    pump();
    assert_string_equal(last_end, "\"data\": {\"device\": \"s2\", \"len\": 0, "
                                  "\"offset\": 0, \"speed\": 0, \"type\": "
                                  "\"stream\"}}");
    dismiss(job);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_full),
        T(test_base_node),
        T(test_pause_in_flight),
        T(test_eio_stop),
        T(test_enospc),
        T(test_eio_report),
        T(test_stop_many_in_flight),
        T(test_report_many_in_flight),
        T(test_eio_ignore),
        T(test_cancel),
        T(test_busy_and_noop),
    };

    return cmocka_run_group_tests(tests, group_setup, NULL);
}
