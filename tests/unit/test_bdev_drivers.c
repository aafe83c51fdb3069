/* Images made by qemu-img / qemu-io read byte for byte through every driver
 * stack: file, raw (whole and a window), blkdebug under raw and under
 * qcow2, a qcow2 chain whose layers sit on blkdebug and raw, null-co; and
 * writes through raw / blkdebug read back right with qemu-io. Skips when
 * qemu-img is missing. qcow2 alone is covered by test_qcow2_io.c. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "backends/bdev_int.h"
#include "protocol/json.h"
#include "tests/fakes/scratch.h"
#include "tests/fakes/test_io.h"

#define MiB (1u << 20)

__attribute__((format(printf, 1, 2))) static struct bdev *
open_node(const char *fmt, ...)
{
    struct qmp_error err = QMP_ERROR_INIT;
    const char *perr = NULL;
    char *text;
    va_list ap;
    json_t *o;
    struct bdev *bs;

    va_start(ap, fmt);
    assert_true(vasprintf(&text, fmt, ap) >= 0);
    va_end(ap);
    o = qmp_json_parse(text, &perr);
    assert_non_null(o);
    bs = bdev_open_node(o, true, &err);
    json_decref(o);
    if (!bs) {
        fail_msg("open %s: %s", text, err.desc);
    }
    free(text);
    return bs;
}

/* One expected run of the virtual disk: [off, off + len) reads `pat`. */
struct run {
    uint64_t off, len;
    int pat;
};

/* Reads the whole node in `chunk`-sized, sometimes unaligned pieces and
 * compares every byte with the runs (bytes outside any run are zero). */
static void expect_runs(struct bdev *bs, uint64_t size, const struct run *runs,
                        size_t nruns, uint64_t chunk)
{
    uint8_t *buf = bdev_buf_alloc(chunk);

    assert_int_equal(bdev_length(bs), (int64_t)size);
    for (uint64_t off = 0; off < size; off += chunk) {
        uint64_t len = size - off < chunk ? size - off : chunk;

        memset(buf, 0xa5, len);
        assert_int_equal(test_io_read(bs, off, len, buf), 0);
        for (uint64_t i = 0; i < len; i++) {
            int want = 0;

            for (size_t r = 0; r < nruns; r++) {
                if (off + i >= runs[r].off &&
                    off + i < runs[r].off + runs[r].len) {
                    want = runs[r].pat;
                }
            }
            if (buf[i] != want) {
                bdev_buf_free(buf);
                fail_msg("byte %llu: 0x%02x, expected 0x%02x",
                         (unsigned long long)(off + i), buf[i], want);
            }
        }
    }
    bdev_buf_free(buf);
}

static int qemu_io_verify(const char *fmt, const char *file, uint64_t off,
                          uint64_t len, int pat)
{
    return scratch_sh(
        "qemu-io -r -f %s -c 'read -q -P 0x%02x %llu %llu' '%s' 2>&1 "
        "| grep -q -i -e fail -e error -e mismatch && exit 1 || exit 0",
        fmt, pat, (unsigned long long)off, (unsigned long long)len, file);
}

/* The raw image every raw test reads. */
static const struct run raw_runs[] = {
    {0, 64 << 10, 0x11},
    {100000, 5000, 0x22}, /* unaligned */
    {MiB, 512, 0x33},     /* one sector */
    {3 * MiB, MiB, 0x44}, /* the tail */
    {3 * MiB + 4096, 8192, 0x45},
};

static void make_raw(const char *name)
{
    assert_int_equal(
        scratch_sh(
            "rm -f '%s' && qemu-img create -q -f raw '%s' 4M && "
            "qemu-io -f raw -c 'write -q -P 0x11 0 64k' "
            "-c 'write -q -P 0x22 100000 5000' -c 'write -q -P 0x33 1M 512' "
            "-c 'write -q -P 0x44 3M 1M' -c 'write -q -P 0x45 3149824 8k' "
            "'%s'",
            scratch_path(name), scratch_path(name), scratch_path(name)),
        0);
}

static void test_file_and_raw(void **state)
{
    struct bdev *bs;

    (void)state;
    SCRATCH_NEED();
    make_raw("a.raw");
    bs = open_node("{'driver': 'file', 'node-name': 'f', 'filename': '%s'}",
                   scratch_path("a.raw"));
    expect_runs(bs, 4 * MiB, raw_runs, 5, 256 << 10);
    bdev_unref(bs);
    bs = open_node("{'driver': 'raw', 'node-name': 'r', 'file': {'driver': "
                   "'file', 'filename': '%s'}}",
                   scratch_path("a.raw"));
    expect_runs(bs, 4 * MiB, raw_runs, 5, 1000); /* unaligned pieces */
    bdev_unref(bs);
    /* A window: offset 64 KiB - 4 KiB, 1 MiB long. */
    {
        const struct run win[] = {
            {0, 4096, 0x11},
            {100000 - 61440, 5000, 0x22},
            {MiB - 61440, 512, 0x33},
        };

        bs = open_node("{'driver': 'raw', 'node-name': 'w', 'offset': 61440, "
                       "'size': 1048576, 'file': {'driver': 'file', "
                       "'filename': '%s'}}",
                       scratch_path("a.raw"));
        expect_runs(bs, MiB, win, 3, 65536);
        bdev_unref(bs);
    }
}

static void test_blkdebug_under_raw(void **state)
{
    struct bdev *bs;
    uint8_t *buf = bdev_buf_alloc(65536);

    (void)state;
    SCRATCH_NEED();
    make_raw("b.raw");
    bs = open_node("{'driver': 'raw', 'node-name': 'r', 'file': {'driver': "
                   "'blkdebug', 'image': {'driver': 'file', 'filename': "
                   "'%s'}}}",
                   scratch_path("b.raw"));
    expect_runs(bs, 4 * MiB, raw_runs, 5, 192 << 10);
    /* Writes pass through too and qemu-io sees them. */
    memset(buf, 0x66, 65536);
    assert_int_equal(test_io_write(bs, 2 * MiB, 65536, buf), 0);
    assert_int_equal(test_io_write(bs, 100000, 4096, buf), 0);
    assert_int_equal(test_io_flush(bs), 0);
    bdev_unref(bs);
    assert_int_equal(
        qemu_io_verify("raw", scratch_path("b.raw"), 2 * MiB, 65536, 0x66), 0);
    assert_int_equal(
        qemu_io_verify("raw", scratch_path("b.raw"), 100000, 4096, 0x66), 0);
    assert_int_equal(
        qemu_io_verify("raw", scratch_path("b.raw"), 104096, 904, 0x22), 0);
    bdev_buf_free(buf);
}

/* A qcow2 3-deep chain made by qemu-img (v3 compressed base, v2 mid, v3
 * top) where each layer is opened explicitly over blkdebug, raw-backed
 * base variant included: the chain reads the same through every stack. */
static void test_chain_over_blkdebug(void **state)
{
    const struct run runs[] = {
        {0, 2 * MiB, 0x11},         /* base, compressed */
        {MiB, 64 << 10, 0},         /* base zero cluster */
        {512 << 10, MiB, 0x22},     /* mid (v2) */
        {0, 64 << 10, 0x33},        /* top */
        {3 * MiB, 4096, 0x34},      /* top, partial cluster */
        {3 * MiB + 4096, 512, 0x35} /* top, sub-cluster over nothing */
    };
    struct bdev *base, *mid, *top;

    (void)state;
    SCRATCH_NEED();
    assert_int_equal(
        scratch_sh(
            "cd '%s' && rm -f base.qcow2 mid.qcow2 top.qcow2 && "
            "qemu-img create -q -f qcow2 base.qcow2 4M && "
            "qemu-io -f qcow2 -c 'write -q -c -P 0x11 0 2M' "
            "-c 'write -q -z 1M 64k' base.qcow2 && "
            "qemu-img create -q -f qcow2 -o compat=0.10 -b base.qcow2 "
            "-F qcow2 mid.qcow2 && "
            "qemu-io -f qcow2 -c 'write -q -P 0x22 512k 1M' mid.qcow2 && "
            "qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 && "
            "qemu-io -f qcow2 -c 'write -q -P 0x33 0 64k' "
            "-c 'write -q -P 0x34 3M 4k' -c 'write -q -P 0x35 3149824 512' "
            "top.qcow2 && qemu-img convert -U -O raw top.qcow2 flat.raw",
            scratch_dir),
        0);
    /* Implicit backing nodes: the chain from the headers. */
    top = open_node("{'driver': 'qcow2', 'node-name': 'top', 'read-only': "
                    "true, 'file': {'driver': 'file', 'filename': '%s'}}",
                    scratch_path("top.qcow2"));
    expect_runs(top, 4 * MiB, runs, 6, 320 << 10);
    bdev_unref(top);

    /* Every layer on blkdebug, linked by node names. */
    base = open_node("{'driver': 'qcow2', 'node-name': 'base', 'read-only': "
                     "true, 'file': {'driver': 'blkdebug', 'image': "
                     "{'driver': 'file', 'filename': '%s'}}}",
                     scratch_path("base.qcow2"));
    mid = open_node("{'driver': 'qcow2', 'node-name': 'mid', 'read-only': "
                    "true, 'backing': 'base', 'file': {'driver': 'blkdebug', "
                    "'image': {'driver': 'file', 'filename': '%s'}}}",
                    scratch_path("mid.qcow2"));
    top = open_node("{'driver': 'qcow2', 'node-name': 'top', 'read-only': "
                    "true, 'backing': 'mid', 'file': {'driver': 'blkdebug', "
                    "'image': {'driver': 'file', 'filename': '%s'}}}",
                    scratch_path("top.qcow2"));
    expect_runs(top, 4 * MiB, runs, 6, 64 << 10);
    expect_runs(top, 4 * MiB, runs, 6, 3000);
    bdev_unref(top);
    bdev_unref(mid);
    bdev_unref(base);

    /* The base flattened to raw, over blkdebug, under mid and top. */
    assert_int_equal(
        scratch_sh("cd '%s' && qemu-img convert -U -O raw base.qcow2 "
                   "base.raw",
                   scratch_dir),
        0);
    base = open_node("{'driver': 'raw', 'node-name': 'base', 'read-only': "
                     "true, 'file': {'driver': 'blkdebug', 'image': "
                     "{'driver': 'file', 'filename': '%s'}}}",
                     scratch_path("base.raw"));
    mid = open_node("{'driver': 'qcow2', 'node-name': 'mid', 'read-only': "
                    "true, 'backing': 'base', 'file': {'driver': 'file', "
                    "'filename': '%s'}}",
                    scratch_path("mid.qcow2"));
    top = open_node("{'driver': 'qcow2', 'node-name': 'top', 'read-only': "
                    "true, 'backing': 'mid', 'file': {'driver': 'file', "
                    "'filename': '%s'}}",
                    scratch_path("top.qcow2"));
    expect_runs(top, 4 * MiB, runs, 6, MiB);
    bdev_unref(top);
    bdev_unref(mid);
    bdev_unref(base);

    /* And the flattened chain through raw agrees. */
    top = open_node("{'driver': 'raw', 'node-name': 'flat', 'file': "
                    "{'driver': 'file', 'filename': '%s'}}",
                    scratch_path("flat.raw"));
    expect_runs(top, 4 * MiB, runs, 6, MiB);
    bdev_unref(top);
}

/* raw on top of a qcow2 node (a format over a format, as QEMU allows). */
static void test_raw_over_qcow2(void **state)
{
    const struct run runs[] = {{MiB, 128 << 10, 0x77}};
    struct bdev *bs;

    (void)state;
    SCRATCH_NEED();
    assert_int_equal(
        scratch_sh("cd '%s' && rm -f q.qcow2 && "
                   "qemu-img create -q -f qcow2 q.qcow2 2M && "
                   "qemu-io -f qcow2 -c 'write -q -P 0x77 1M 128k' "
                   "q.qcow2",
                   scratch_dir),
        0);
    bs = open_node("{'driver': 'raw', 'node-name': 'r', 'read-only': true, "
                   "'file': {'driver': 'qcow2', 'file': {'driver': 'file', "
                   "'filename': '%s'}}}",
                   scratch_path("q.qcow2"));
    expect_runs(bs, 2 * MiB, runs, 1, 100000);
    bdev_unref(bs);
}

/* null-co: read-zeroes fills the buffer, the 7.2 default leaves it alone. */
static void test_null(void **state)
{
    struct bdev *bs;
    uint8_t buf[4096];

    (void)state;
    bs = open_node("{'driver': 'null-co', 'node-name': 'z', 'size': 8192, "
                   "'read-zeroes': true}");
    memset(buf, 0xcc, sizeof(buf));
    assert_int_equal(test_io_read(bs, 4096, 4096, buf), 0);
    for (size_t i = 0; i < sizeof(buf); i++) {
        assert_int_equal(buf[i], 0);
    }
    assert_int_equal(test_io_write(bs, 0, 4096, buf), 0);
    bdev_unref(bs);
    bs = open_node("{'driver': 'null-co', 'node-name': 'n'}");
    assert_int_equal(bdev_length(bs), 1073741824);
    memset(buf, 0xcc, sizeof(buf));
    assert_int_equal(test_io_read(bs, 0, 4096, buf), 0);
    for (size_t i = 0; i < sizeof(buf); i++) {
        assert_int_equal(buf[i], 0xcc);
    }
    bdev_unref(bs);
}

static int setup(void **state)
{
    if (test_io_setup(state) < 0) {
        return -1;
    }
    return scratch_make("test_bdev_drivers", "qemu-img qemu-io");
}

static int teardown(void **state)
{
    test_io_close_all(state);
    return scratch_remove();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_file_and_raw, test_io_close_all),
        cmocka_unit_test_teardown(test_blkdebug_under_raw, test_io_close_all),
        cmocka_unit_test_teardown(test_chain_over_blkdebug, test_io_close_all),
        cmocka_unit_test_teardown(test_raw_over_qcow2, test_io_close_all),
        cmocka_unit_test_teardown(test_null, test_io_close_all),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
