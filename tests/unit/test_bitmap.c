/* Dirty bitmaps: set/reset rounding, counts, iteration, merge, and marking
 * by completed writes through a node (the in-memory fake). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>

#include "backends/bitmap.h"
#include "tests/fakes/fake_bdev.h"

#define KiB 1024ULL
#define MiB (1024 * KiB)

static uv_loop_t loop;

static int group_setup(void **state)
{
    (void)state;
    uv_loop_init(&loop);
    return bdev_init(&loop);
}

static void test_new_rejects(void **state)
{
    (void)state;
    assert_null(bitmap_new(MiB, 0));
    assert_null(bitmap_new(MiB, 256));
    assert_null(bitmap_new(MiB, 3 * 4096));
    bitmap_free(NULL);
}

static void test_set_reset_count(void **state)
{
    struct bitmap *bm = bitmap_new(MiB, 64 * KiB);

    (void)state;
    assert_int_equal(bitmap_count(bm), 0);
    /* One byte dirties its whole granule. */
    bitmap_set(bm, 70 * KiB, 1);
    assert_int_equal(bitmap_count(bm), 64 * KiB);
    assert_true(bitmap_get(bm, 64 * KiB));
    assert_true(bitmap_get(bm, 128 * KiB - 1));
    assert_false(bitmap_get(bm, 128 * KiB));
    assert_false(bitmap_get(bm, 0));
    /* A set across granules: rounded out at both ends. */
    bitmap_set(bm, 200 * KiB, 200 * KiB);
    assert_int_equal(bitmap_count(bm), 64 * KiB + 4 * 64 * KiB);
    /* Reset only clears granules it covers whole. */
    bitmap_reset(bm, 192 * KiB + 1, 128 * KiB);
    assert_true(bitmap_get(bm, 192 * KiB));
    assert_false(bitmap_get(bm, 256 * KiB));
    assert_true(bitmap_get(bm, 320 * KiB));
    bitmap_reset(bm, 0, MiB);
    assert_int_equal(bitmap_count(bm), 0);
    bitmap_set_all(bm);
    assert_int_equal(bitmap_count(bm), MiB);
    bitmap_reset_all(bm);
    assert_int_equal(bitmap_count(bm), 0);
    /* Past the end: nothing. */
    bitmap_set(bm, MiB, 4096);
    assert_int_equal(bitmap_count(bm), 0);
    assert_false(bitmap_get(bm, 2 * MiB));
    bitmap_free(bm);
}

static void test_tail_granule(void **state)
{
    /* 100 KiB in 64 KiB granules: the last one is 36 KiB long. */
    struct bitmap *bm = bitmap_new(100 * KiB, 64 * KiB);

    (void)state;
    bitmap_set(bm, 99 * KiB, 10 * KiB);
    assert_int_equal(bitmap_count(bm), 36 * KiB);
    /* A reset reaching the end covers the short granule. */
    bitmap_reset(bm, 64 * KiB, 36 * KiB);
    assert_int_equal(bitmap_count(bm), 0);
    bitmap_set_all(bm);
    assert_int_equal(bitmap_count(bm), 100 * KiB);
    bitmap_free(bm);
}

static void test_iteration(void **state)
{
    struct bitmap *bm = bitmap_new(64 * MiB, 4096);
    uint64_t start, len, off = 0, seen = 0;
    unsigned runs = 0;

    (void)state;
    assert_int_equal(bitmap_next_dirty(bm, 0, 64 * MiB), -1);
    assert_int_equal(bitmap_next_clean(bm, 0, 64 * MiB), 0);
    /* Runs across word boundaries (64 granules = 256 KiB per word). */
    bitmap_set(bm, 252 * KiB, 8 * KiB);
    bitmap_set(bm, 10 * MiB, 3 * MiB);
    bitmap_set(bm, 64 * MiB - 4096, 4096);
    assert_int_equal(bitmap_next_dirty(bm, 0, 64 * MiB), 252 * KiB);
    /* Within a dirty granule: the offset itself. */
    assert_int_equal(bitmap_next_dirty(bm, 253 * KiB, MiB), 253 * KiB);
    assert_int_equal(bitmap_next_clean(bm, 252 * KiB, MiB), 260 * KiB);
    assert_int_equal(bitmap_next_dirty(bm, 260 * KiB, MiB), -1);
    assert_int_equal(bitmap_next_dirty(bm, 260 * KiB, 64 * MiB), 10 * MiB);
    while (bitmap_next_dirty_area(bm, off, 64 * MiB - off, &start, &len)) {
        runs++;
        seen += len;
        off = start + len;
    }
    assert_int_equal(runs, 3);
    assert_int_equal(seen, bitmap_count(bm));
    assert_int_equal(seen, 8 * KiB + 3 * MiB + 4096);
    /* A bounded area stops at its bound. */
    assert_true(bitmap_next_dirty_area(bm, 11 * MiB, MiB, &start, &len));
    assert_int_equal(start, 11 * MiB);
    assert_int_equal(len, MiB);
    bitmap_free(bm);
}

static void test_merge(void **state)
{
    struct bitmap *a = bitmap_new(8 * MiB, 64 * KiB);
    struct bitmap *b = bitmap_new(8 * MiB, 64 * KiB);
    struct bitmap *fine = bitmap_new(8 * MiB, 4096);
    struct bitmap *other = bitmap_new(4 * MiB, 64 * KiB);

    (void)state;
    bitmap_set(a, 0, 64 * KiB);
    bitmap_set(b, 0, 128 * KiB);
    bitmap_set(b, 5 * MiB, 64 * KiB);
    assert_int_equal(bitmap_merge(a, b), 0);
    assert_int_equal(bitmap_count(a), 3 * 64 * KiB);
    /* A finer source dirties the coarse granules it touches. */
    bitmap_set(fine, 7 * MiB + 4096, 4096);
    assert_int_equal(bitmap_merge(a, fine), 0);
    assert_true(bitmap_get(a, 7 * MiB));
    assert_int_equal(bitmap_count(a), 4 * 64 * KiB);
    assert_int_equal(bitmap_merge(a, other), -EINVAL);
    bitmap_free(a);
    bitmap_free(b);
    bitmap_free(fine);
    bitmap_free(other);
}

static void pump(void)
{
    while (fake_complete_next() || fake_pending()) {
    }
}

static void noop_cb(void *opaque, int ret)
{
    int *r = opaque;

    *r = ret;
}

static void test_marked_by_writes(void **state)
{
    struct bdev *n = fake_bdev_new("n", 4 * MiB, 64 * KiB, NULL);
    struct bdev *other = fake_bdev_new("o", 4 * MiB, 64 * KiB, NULL);
    struct bitmap *bm = bitmap_new(4 * MiB, 64 * KiB);
    void *buf = bdev_buf_alloc(64 * KiB);
    int r1 = 1, r2 = 1, r3 = 1, r4 = 1;

    (void)state;
    assert_int_equal(bitmap_attach(bm, n), 0);
    assert_int_equal(bitmap_attach(bm, other), -EBUSY);
    assert_ptr_equal(bitmap_node(bm), n);
    assert_int_equal(bdev_write(n, MiB, 64 * KiB, buf, noop_cb, &r1), 0);
    /* Marked when the write completes, not when it is queued. */
    assert_int_equal(bitmap_count(bm), 0);
    pump();
    assert_int_equal(r1, 0);
    assert_int_equal(bitmap_count(bm), 64 * KiB);
    assert_true(bitmap_get(bm, MiB));
    /* Write-zeroes too; failed writes too (they may have changed data);
     * reads and other nodes' writes not. */
    assert_int_equal(bdev_write_zeroes(n, 2 * MiB, 4096, noop_cb, &r2), 0);
    fake_bdev_inject(n, 3 * MiB, EIO);
    assert_int_equal(bdev_write(n, 3 * MiB, 4096, buf, noop_cb, &r3), 0);
    assert_int_equal(bdev_read(n, 0, 4096, buf, noop_cb, &r4), 0);
    assert_int_equal(bdev_write(other, 0, 4096, buf, noop_cb, &r4), 0);
    pump();
    assert_int_equal(r2, 0);
    assert_int_equal(r3, -EIO);
    assert_int_equal(bitmap_count(bm), 3 * 64 * KiB);
    assert_false(bitmap_get(bm, 0));
    /* Detached: no more marking. */
    bitmap_detach(bm);
    assert_null(bitmap_node(bm));
    assert_int_equal(bdev_write(n, 0, 4096, buf, noop_cb, &r1), 0);
    pump();
    assert_false(bitmap_get(bm, 0));
    /* Freeing an attached bitmap detaches it (drops its reference). */
    assert_int_equal(bitmap_attach(bm, n), 0);
    bitmap_free(bm);
    bdev_buf_free(buf);
    fake_bdev_free(n);
    fake_bdev_free(other);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_rejects),
        cmocka_unit_test(test_set_reset_count),
        cmocka_unit_test(test_tail_granule),
        cmocka_unit_test(test_iteration),
        cmocka_unit_test(test_merge),
        cmocka_unit_test(test_marked_by_writes),
    };

    return cmocka_run_group_tests(tests, group_setup, NULL);
}
