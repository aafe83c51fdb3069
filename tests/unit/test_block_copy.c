/* The copy engine driven directly against the in-memory fake: every read,
 * write and status query is held until the test releases it, so progress,
 * the in-flight window, errors and retries are looked at one completion at
 * a time. The owner here is a minimal one written in the test (the job
 * layer's is tested through block-stream). Also the allocation scans. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backends/bitmap.h"
#include "backends/block_copy.h"
#include "jobs/scan.h"
#include "tests/fakes/fake_bdev.h"

#define KiB 1024ULL
#define MiB (1024 * KiB)

static uv_loop_t loop;

/* The owner: counts everything, paces and decides as the test says. */
struct owner {
    struct block_copy *c;
    bool paused;          /* may_issue false */
    bool cancelled;       /* stopped */
    unsigned refuse_pace; /* pace says no this many times */
    enum copy_action action;
    unsigned in_flight, data_ios, queries, skips, errors, endings;
    enum copy_side last_side;
    int last_err;
    uint64_t progress, accounted;
    int done_calls, done_ret;
    bool in_run, kick;
    uint64_t progress_log[64];
    unsigned n_progress;
};

static struct owner o;

static void run(void)
{
    if (o.in_run) {
        o.kick = true;
        return;
    }
    do {
        o.kick = false;
        o.in_run = true;
        block_copy_run(o.c);
        o.in_run = false;
    } while (o.kick);
}

static bool h_may_issue(void *opaque)
{
    (void)opaque;
    return !o.paused && !o.cancelled;
}

static bool h_stopped(void *opaque)
{
    (void)opaque;
    return o.cancelled;
}

static bool h_pace(void *opaque, enum copy_io kind)
{
    (void)opaque;
    (void)kind;
    if (o.refuse_pace) {
        o.refuse_pace--;
        return false;
    }
    return true;
}

static void h_account(void *opaque, uint64_t bytes)
{
    (void)opaque;
    o.accounted += bytes;
}

static void h_io_begin(void *opaque, enum copy_io kind)
{
    (void)opaque;
    o.in_flight++;
    if (kind == COPY_IO_DATA) {
        o.data_ios++;
    } else {
        o.queries++;
    }
}

static void h_io_end(void *opaque)
{
    (void)opaque;
    assert_true(o.in_flight > 0);
    o.in_flight--;
    run();
}

static void h_skipped(void *opaque, uint64_t from, uint64_t to)
{
    (void)opaque;
    assert_true(to > from);
    o.skips++;
}

static enum copy_action h_error(void *opaque, int err, enum copy_side side)
{
    (void)opaque;
    o.errors++;
    o.last_err = err;
    o.last_side = side;
    if (o.action == COPY_ACTION_STOP) {
        o.paused = true;
    }
    return o.action;
}

static void h_ending(void *opaque)
{
    (void)opaque;
    o.endings++;
}

static void h_progress(void *opaque, uint64_t offset)
{
    (void)opaque;
    assert_true(offset > o.progress);
    o.progress = offset;
    if (o.n_progress < 64) {
        o.progress_log[o.n_progress++] = offset;
    }
}

static void h_done(void *opaque, int ret)
{
    (void)opaque;
    assert_int_equal(o.in_flight, 0);
    o.done_calls++;
    o.done_ret = ret;
}

static const struct copy_hooks hooks = {
    .may_issue = h_may_issue,
    .stopped = h_stopped,
    .pace = h_pace,
    .account = h_account,
    .io_begin = h_io_begin,
    .io_end = h_io_end,
    .skipped = h_skipped,
    .error = h_error,
    .ending = h_ending,
    .progress = h_progress,
    .done = h_done,
};

static struct bdev *src, *dst;
static struct bitmap *bm;

static int group_setup(void **state)
{
    (void)state;
    uv_loop_init(&loop);
    return bdev_init(&loop);
}

/* src: 4 MiB, 0x11 in [0, 1M), zeroes stored at [1M, 1M+64K), 0x22 at
 * [2M, 2M+192K); dst: empty, 64 KiB clusters. */
static int setup(void **state)
{
    (void)state;
    memset(&o, 0, sizeof(o));
    src = fake_bdev_new("src", 4 * MiB, 64 * KiB, NULL);
    dst = fake_bdev_new("dst", 4 * MiB, 64 * KiB, NULL);
    fake_bdev_fill(src, 0, MiB, 0x11);
    fake_bdev_fill(src, MiB, 64 * KiB, 0);
    fake_bdev_fill(src, 2 * MiB, 192 * KiB, 0x22);
    bm = bitmap_new(4 * MiB, 64 * KiB);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    block_copy_free(o.c);
    o.c = NULL;
    bitmap_free(bm);
    fake_bdev_free(src);
    fake_bdev_free(dst);
    while (uv_run(&loop, UV_RUN_NOWAIT)) {
    }
    return 0;
}

static void start(uint64_t chunk, uint64_t request, unsigned depth,
                  uint32_t cluster)
{
    struct copy_params p = {
        .source = src,
        .target = dst,
        .len = 4 * MiB,
        .chunk = chunk,
        .request = request,
        .depth = depth,
        .cluster = cluster,
        .hooks = &hooks,
        .opaque = &o,
    };

    block_copy_bitmap_source(bm, &p.src);
    o.c = block_copy_new(&p);
    run();
}

static void pump(void)
{
    while (fake_complete_next()) {
    }
}

static void assert_copied(uint64_t off, uint64_t len, int byte)
{
    for (uint64_t i = off; i < off + len; i += 4096) {
        assert_true(fake_bdev_allocated(dst, i));
        assert_int_equal(fake_bdev_read_byte(dst, i), byte);
    }
}

/* Dirty runs are copied, clean ones skipped, zeroes as write-zeroes. */
static void test_bitmap_copy(void **state)
{
    (void)state;
    bitmap_set(bm, 0, 128 * KiB);
    bitmap_set(bm, MiB, 64 * KiB);
    bitmap_set(bm, 2 * MiB, 192 * KiB);
    start(64 * KiB, 0, 4, 64 * KiB);
    pump();
    assert_int_equal(o.done_calls, 1);
    assert_int_equal(o.done_ret, 0);
    assert_copied(0, 128 * KiB, 0x11);
    assert_copied(MiB, 64 * KiB, 0);
    assert_copied(2 * MiB, 192 * KiB, 0x22);
    assert_false(fake_bdev_allocated(dst, 512 * KiB));
    assert_false(fake_bdev_allocated(dst, 3 * MiB));
    assert_int_equal(fake_bdev_writes(dst, false), 2 + 3);
    assert_int_equal(fake_bdev_writes(dst, true), 1);
    assert_int_equal(o.data_ios, 6);
    assert_int_equal(o.accounted, 384 * KiB);
    /* After the last dirty byte: the copy ends, the prefix reaches len. */
    assert_int_equal(block_copy_progress(o.c), 4 * MiB);
    assert_int_equal(block_copy_in_flight(o.c), 0);
}

/* The window: never more than depth requests; progress is the contiguous
 * prefix, per chunk, however the completions come. */
static void test_window_and_prefix(void **state)
{
    (void)state;
    bitmap_set(bm, 0, MiB);
    start(64 * KiB, 0, 4, 64 * KiB);
    /* Four reads in flight, nothing more. */
    assert_int_equal(o.in_flight, 4);
    assert_int_equal(fake_pending_io(), 4);
    assert_int_equal(o.progress, 0);
    /* First read done: its write queues behind the other three reads. */
    assert_true(fake_complete_next());
    assert_int_equal(o.in_flight, 4);
    assert_int_equal(o.progress, 0);
    /* Reads 2..4 done, writes queued: still nothing finished. */
    for (int i = 0; i < 3; i++) {
        assert_true(fake_complete_next());
    }
    assert_int_equal(o.progress, 0);
    /* Chunk 0's write: the prefix moves one chunk, a slot is free and the
     * next chunk goes out at once. */
    assert_true(fake_complete_next());
    assert_int_equal(o.progress, 64 * KiB);
    assert_int_equal(o.in_flight, 4);
    pump();
    assert_int_equal(o.done_calls, 1);
    for (unsigned i = 0; i + 1 < o.n_progress; i++) {
        assert_true(o.progress_log[i] % (64 * KiB) == 0);
    }
    assert_copied(0, MiB, 0x11);
}

/* Larger requests than chunks: one request carries several contiguous
 * chunks; progress stays on chunk boundaries of the run. */
static void test_merged_requests(void **state)
{
    (void)state;
    bitmap_set(bm, 0, MiB);
    bitmap_set(bm, 2 * MiB, 192 * KiB);
    start(64 * KiB, 256 * KiB, 2, 64 * KiB);
    assert_int_equal(o.in_flight, 2);
    pump();
    assert_int_equal(o.done_calls, 1);
    /* [0, 1M) in 4 requests, [2M, 2M+192K) in one. */
    assert_int_equal(o.data_ios, 5);
    assert_int_equal(fake_bdev_writes(dst, false), 5);
    assert_copied(0, MiB, 0x11);
    assert_copied(2 * MiB, 192 * KiB, 0x22);
    for (unsigned i = 0; i + 1 < o.n_progress; i++) {
        assert_true(o.progress_log[i] % (64 * KiB) == 0);
    }
}

/* A run that is not cluster-aligned is copied rounded out to the target's
 * clusters, and what the rounding wrote is not copied again. */
static void test_rounding(void **state)
{
    struct bitmap *fine = bitmap_new(4 * MiB, 4096);

    (void)state;
    bitmap_free(bm);
    bm = fine;
    bitmap_set(bm, 4 * KiB, 4 * KiB);
    bitmap_set(bm, 32 * KiB, 4 * KiB);
    bitmap_set(bm, 2 * MiB + 60 * KiB, 8 * KiB);
    start(64 * KiB, 0, 4, 64 * KiB);
    pump();
    assert_int_equal(o.done_calls, 1);
    /* [0, 64K) once (the second run lies in it), then [2M, 2M+128K) as one
     * request over two clusters. */
    assert_int_equal(o.data_ios, 2);
    assert_copied(0, 64 * KiB, 0x11);
    assert_copied(2 * MiB, 128 * KiB, 0x22);
}

/* A read error with stop: decided once, the request is held (progress
 * stays at its offset) and retried first, unchanged, after the resume. */
static void test_error_stop_retry(void **state)
{
    (void)state;
    bitmap_set(bm, 0, MiB);
    o.action = COPY_ACTION_STOP;
    fake_bdev_inject(src, 128 * KiB, EIO);
    start(64 * KiB, 0, 4, 64 * KiB);
    pump();
    /* Chunks 0, 1, 3 done; 2 held; nothing new while paused. */
    assert_int_equal(o.errors, 1);
    assert_int_equal(o.last_err, -EIO);
    assert_int_equal(o.last_side, COPY_SIDE_SOURCE);
    assert_true(block_copy_has_held(o.c));
    assert_int_equal(o.progress, 128 * KiB);
    assert_int_equal(o.done_calls, 0);
    assert_int_equal(o.in_flight, 0);
    /* Resume: the held chunk goes first, even with pacing saying no. */
    o.paused = false;
    o.refuse_pace = 1;
    run();
    assert_int_equal(o.in_flight, 1);
    assert_int_equal(o.data_ios, 5);
    assert_true(fake_complete_next()); /* its read */
    assert_true(fake_complete_next()); /* its write */
    assert_false(block_copy_has_held(o.c));
    /* The refused pace held the next one back until this completion
     * re-entered: then the window fills again. */
    assert_int_equal(o.in_flight, 4);
    assert_int_equal(o.progress, 256 * KiB);
    pump();
    assert_int_equal(o.done_calls, 1);
    assert_int_equal(o.done_ret, 0);
    assert_int_equal(o.errors, 1);
    assert_copied(0, MiB, 0x11);
}

/* Several requests failing behind one stop: one decision, all held. */
static void test_stop_many(void **state)
{
    (void)state;
    bitmap_set(bm, 0, MiB);
    o.action = COPY_ACTION_STOP;
    fake_bdev_fail_all(src, EIO);
    start(64 * KiB, 0, 4, 64 * KiB);
    pump();
    assert_int_equal(o.errors, 1);
    assert_int_equal(o.progress, 0);
    fake_bdev_fail_all(src, 0);
    o.paused = false;
    run();
    pump();
    assert_int_equal(o.done_calls, 1);
    assert_int_equal(o.done_ret, 0);
    assert_copied(0, MiB, 0x11);
}

/* A write error with report: the copy ends once the others drained, with
 * the error; progress stops at the failed chunk. */
static void test_error_report(void **state)
{
    (void)state;
    bitmap_set(bm, 0, MiB);
    o.action = COPY_ACTION_REPORT;
    fake_bdev_inject(dst, 64 * KiB, ENOSPC);
    start(64 * KiB, 0, 4, 64 * KiB);
    /* Release one at a time: the error, then the rest drain. */
    while (fake_pending() && !o.errors) {
        fake_complete_next();
    }
    assert_int_equal(o.errors, 1);
    assert_int_equal(o.last_side, COPY_SIDE_TARGET);
    assert_int_equal(o.endings, 1);
    assert_int_equal(o.done_calls, 0); /* others still in flight */
    pump();
    assert_int_equal(o.done_calls, 1);
    assert_int_equal(o.done_ret, -ENOSPC);
    assert_int_equal(o.errors, 1);
    assert_int_equal(o.progress, 64 * KiB);
    assert_false(fake_bdev_allocated(dst, 512 * KiB));
}

/* Ignore: the range counts as done, the copy goes on, ends with it. */
static void test_error_ignore(void **state)
{
    (void)state;
    bitmap_set(bm, 0, MiB);
    o.action = COPY_ACTION_IGNORE;
    fake_bdev_inject(src, 192 * KiB, EIO);
    start(64 * KiB, 0, 4, 64 * KiB);
    pump();
    assert_int_equal(o.done_calls, 1);
    assert_int_equal(o.done_ret, -EIO);
    assert_int_equal(o.progress, 4 * MiB);
    assert_false(fake_bdev_allocated(dst, 192 * KiB));
    assert_copied(256 * KiB, 768 * KiB, 0x11);
}

/* Cancelled with requests in flight: nothing new, done once drained. */
static void test_cancel(void **state)
{
    (void)state;
    bitmap_set(bm, 0, MiB);
    start(64 * KiB, 0, 4, 64 * KiB);
    o.cancelled = true;
    assert_true(fake_complete_next());
    assert_int_equal(o.done_calls, 0);
    pump();
    assert_int_equal(o.done_calls, 1);
    assert_int_equal(o.data_ios, 4);
}

/* Pacing says no: nothing goes out until the owner re-enters. */
static void test_pacing(void **state)
{
    (void)state;
    bitmap_set(bm, 0, 128 * KiB);
    o.refuse_pace = 1;
    start(64 * KiB, 0, 4, 64 * KiB);
    assert_int_equal(o.in_flight, 0);
    assert_int_equal(o.queries, 0);
    run();
    pump();
    assert_int_equal(o.done_calls, 1);
    assert_copied(0, 128 * KiB, 0x11);
}

/* Nothing to copy (len 0): done at the first run. */
static void test_empty(void **state)
{
    struct copy_params p = {.source = src,
                            .target = dst,
                            .chunk = 64 * KiB,
                            .hooks = &hooks,
                            .opaque = &o};

    (void)state;
    block_copy_bitmap_source(bm, &p.src);
    o.c = block_copy_new(&p);
    run();
    assert_int_equal(o.done_calls, 1);
    assert_int_equal(o.done_ret, 0);
    assert_int_equal(o.queries, 0);
}

/* The allocation scans over a chain: top <- mid <- base. */
static void test_scan_below_top(void **state)
{
    struct bdev *base = fake_bdev_new("base", 4 * MiB, 64 * KiB, NULL);
    struct bdev *mid = fake_bdev_new("mid", 4 * MiB, 64 * KiB, base);
    struct bdev *top = fake_bdev_new("top", 4 * MiB, 64 * KiB, mid);
    struct alloc_scan scan;
    struct copy_params p = {.target = top,
                            .len = 4 * MiB,
                            .chunk = 512 * KiB,
                            .depth = 2,
                            .cluster = 64 * KiB,
                            .hooks = &hooks,
                            .opaque = &o};

    (void)state;
    bdev_unref(base);
    bdev_unref(mid);
    fake_bdev_fill(base, 0, 2 * MiB, 0x11);
    fake_bdev_fill(mid, MiB, 128 * KiB, 0x22);
    fake_bdev_fill(top, 0, 64 * KiB, 0x33);
    p.source = top;
    scan_below_top(&scan, top, base, &p.src);
    o.c = block_copy_new(&p);
    run();
    while (fake_complete_next()) {
    }
    assert_int_equal(o.done_calls, 1);
    assert_int_equal(o.done_ret, 0);
    /* The top keeps its own data; the rest of [0, 2M) comes from below. */
    assert_int_equal(fake_bdev_read_byte(top, 0), 0x33);
    assert_true(fake_bdev_allocated(top, 512 * KiB));
    assert_int_equal(fake_bdev_read_byte(top, MiB), 0x22);
    assert_int_equal(fake_bdev_read_byte(top, MiB + 512 * KiB), 0x11);
    assert_false(fake_bdev_allocated(top, 3 * MiB));
    /* Chunks cut from each run's start (runs end where a layer's
     * allocation changes): [64K, 1M) two, [1M, 1M+128K) one, the rest of
     * [0, 2M) two. */
    assert_int_equal(o.data_ios, 2 + 1 + 2);
    assert_true(o.skips > 0);
    block_copy_free(o.c);
    o.c = NULL;

    /* Above: what top..mid hold (not the base). */
    memset(&o, 0, sizeof(o));
    p.source = top;
    p.target = base;
    scan_above(&scan, top, mid, &p.src);
    o.c = block_copy_new(&p);
    run();
    while (fake_complete_next()) {
    }
    assert_int_equal(o.done_calls, 1);
    /* [0, 2M) is allocated in top now (the stream), nothing above 2M. */
    assert_int_equal(fake_bdev_read_byte(base, MiB), 0x22);
    assert_int_equal(fake_bdev_read_byte(base, 0), 0x33);
    assert_false(fake_bdev_allocated(base, 3 * MiB));
    assert_int_equal(o.accounted, 2 * MiB);
    block_copy_free(o.c);
    o.c = NULL;
    fake_bdev_free(top);
}

/* Commit's scan with every request failing under a stop policy: one
 * decision, all held; after the resume the whole chain is copied. */
static void test_scan_above_stop_resume(void **state)
{
    struct bdev *base = fake_bdev_new("b2", 4 * MiB, 64 * KiB, NULL);
    struct bdev *top = fake_bdev_new("t2", 4 * MiB, 64 * KiB, base);
    struct alloc_scan scan;
    struct copy_params p = {.source = top,
                            .target = top,
                            .len = 4 * MiB,
                            .chunk = 512 * KiB,
                            .depth = 2,
                            .cluster = 64 * KiB,
                            .hooks = &hooks,
                            .opaque = &o};

    (void)state;
    bdev_unref(base);
    fake_bdev_fill(base, 0, 4 * MiB, 0x44);
    scan_above(&scan, top, base, &p.src);
    o.action = COPY_ACTION_STOP;
    fake_bdev_fail_all(top, EIO);
    o.c = block_copy_new(&p);
    run();
    while (fake_complete_next()) {
    }
    assert_int_equal(o.errors, 1);
    fake_bdev_fail_all(top, 0);
    o.paused = false;
    run();
    while (fake_complete_next()) {
    }
    assert_int_equal(o.done_calls, 1);
    assert_int_equal(o.done_ret, 0);
    assert_int_equal(fake_bdev_read_byte(top, 3 * MiB), 0x44);
    assert_true(fake_bdev_allocated(top, 3 * MiB));
    block_copy_free(o.c);
    o.c = NULL;
    fake_bdev_free(top);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_bitmap_copy),
        T(test_window_and_prefix),
        T(test_merged_requests),
        T(test_rounding),
        T(test_error_stop_retry),
        T(test_stop_many),
        T(test_error_report),
        T(test_error_ignore),
        T(test_cancel),
        T(test_pacing),
        T(test_empty),
        T(test_scan_below_top),
        T(test_scan_above_stop_resume),
    };

    return cmocka_run_group_tests(tests, group_setup, NULL);
}
