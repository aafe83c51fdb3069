/* qcow2 driver against real images: made by qemu-img / qemu-io, read and
 * written through the block layer on a libuv loop, then checked with
 * qemu-img check and qemu-io. Skips when qemu-img is not installed. Images
 * live in a temporary directory under /var/tmp (ext4, so O_DIRECT works)
 * that is removed at the end. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "backends/bdev.h"
#include "backends/bdev_int.h"
#include "backends/qcow2.h"
#include "tests/fakes/scratch.h"
#include "tests/fakes/test_io.h"

static int node_seq;

static struct bdev *open_img_err(const char *name, bool ro, bool direct,
                                 const char *extra, struct qmp_error *err)
{
    char js[2048];
    json_t *opts;
    json_error_t jerr;
    struct bdev *bs;

    snprintf(js, sizeof(js),
             "{\"driver\": \"qcow2\", \"node-name\": \"n%d\", "
             "\"read-only\": %s, \"cache\": {\"direct\": %s}, "
             "\"file\": {\"driver\": \"file\", \"filename\": \"%s\"}%s%s}",
             ++node_seq, ro ? "true" : "false", direct ? "true" : "false",
             scratch_path(name), extra ? ", " : "", extra ? extra : "");
    opts = json_loads(js, 0, &jerr);
    assert_non_null(opts);
    bs = bdev_open_node(opts, true, err);
    json_decref(opts);
    return bs;
}

static struct bdev *open_img(const char *name, bool ro, bool direct)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct bdev *bs = open_img_err(name, ro, direct, NULL, &err);

    if (!bs) {
        fail_msg("open %s: %s", name, err.desc);
    }
    return bs;
}

static void close_img(struct bdev *bs)
{
    bdev_unref(bs);
}

/* Reads [off, off+len) and checks every byte is `pat`. */
static void expect_pattern(struct bdev *bs, uint64_t off, uint64_t len,
                           uint8_t pat)
{
    uint8_t *buf = bdev_buf_alloc(len);

    memset(buf, 0x5a ^ pat, len);
    assert_int_equal(test_io_read(bs, off, len, buf), 0);
    for (uint64_t i = 0; i < len; i++) {
        if (buf[i] != pat) {
            bdev_buf_free(buf);
            fail_msg("byte at %llu is 0x%02x, expected 0x%02x",
                     (unsigned long long)(off + i), buf[i], pat);
        }
    }
    bdev_buf_free(buf);
}

static void write_pattern(struct bdev *bs, uint64_t off, uint64_t len,
                          uint8_t pat)
{
    uint8_t *buf = bdev_buf_alloc(len);

    memset(buf, pat, len);
    assert_int_equal(test_io_write(bs, off, len, buf), 0);
    bdev_buf_free(buf);
}

/* qemu-img check: 0 = clean. Leaks are reported with exit code 3. */
static int img_check(const char *name)
{
    return scratch_sh("qemu-img check -q '%s' >/dev/null 2>&1",
                      scratch_path(name));
}

static int qemu_io_read(const char *name, uint64_t off, uint64_t len,
                        unsigned pat)
{
    return scratch_sh(
        "qemu-io -r -f qcow2 -c 'read -q -P 0x%02x %llu %llu' '%s' "
        "2>&1 | grep -q -i -e fail -e error -e mismatch && exit 1 || "
        "exit 0",
        pat, (unsigned long long)off, (unsigned long long)len,
        scratch_path(name));
}

static int group_setup(void **state)
{
    if (test_io_setup(state) < 0) {
        return -1;
    }
    return scratch_make("test_qcow2_io", "qemu-img qemu-io");
}

static int group_teardown(void **state)
{
    test_io_close_all(state);
    return scratch_remove();
}

/* ---- reading images made by qemu --------------------------------------- */

static void check_read_patterns(const char *compat, bool direct)
{
    struct bdev *bs;

    assert_int_equal(
        scratch_sh("qemu-img create -q -f qcow2 -o compat=%s '%s' 4M", compat,
                   scratch_path("r.qcow2")),
        0);
    assert_int_equal(scratch_sh("qemu-io -f qcow2 -c 'write -q -P 0xab 0 64k' "
                                "-c 'write -q -P 0xcd 1000k 200k' "
                                "-c 'write -q -P 0x11 3M 4k' '%s'",
                                scratch_path("r.qcow2")),
                     0);
    bs = open_img("r.qcow2", true, direct);
    assert_int_equal(bdev_length(bs), 4 << 20);
    expect_pattern(bs, 0, 64 << 10, 0xab);
    expect_pattern(bs, 64 << 10, 1000 * 1024 - (64 << 10), 0);
    expect_pattern(bs, 1000 << 10, 200 << 10, 0xcd);
    expect_pattern(bs, 1200 << 10, (3 << 20) - (1200 << 10), 0);
    expect_pattern(bs, 3 << 20, 4096, 0x11);
    expect_pattern(bs, (3 << 20) + 4096, (1 << 20) - 4096, 0);
    /* One read spanning data and holes. */
    {
        uint8_t *buf = bdev_buf_alloc(4 << 20);

        assert_int_equal(test_io_read(bs, 0, 4 << 20, buf), 0);
        assert_int_equal(buf[0], 0xab);
        assert_int_equal(buf[(64 << 10) - 1], 0xab);
        assert_int_equal(buf[64 << 10], 0);
        assert_int_equal(buf[1000 << 10], 0xcd);
        assert_int_equal(buf[(1200 << 10) - 1], 0xcd);
        assert_int_equal(buf[1200 << 10], 0);
        bdev_buf_free(buf);
    }
    close_img(bs);
}

static void test_read_v3(void **state)
{
    (void)state;
    SCRATCH_NEED();
    check_read_patterns("1.1", false);
    check_read_patterns("1.1", true);
}

static void test_read_v2(void **state)
{
    (void)state;
    SCRATCH_NEED();
    check_read_patterns("0.10", false);
}

static void test_chain(void **state)
{
    struct bdev *bs;
    struct test_io_done d = {0};

    (void)state;
    SCRATCH_NEED();
    assert_int_equal(
        scratch_sh("qemu-img create -q -f qcow2 '%s' 2M && "
                   "qemu-io -f qcow2 -c 'write -q -P 0x11 0 1M' '%s' && "
                   "qemu-img create -q -f qcow2 -o compat=0.10 -b base.qcow2 "
                   "-F qcow2 '%s' && "
                   "qemu-io -f qcow2 -c 'write -q -P 0x22 512k 512k' '%s' && "
                   "qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 '%s' 3M "
                   "&& qemu-io -f qcow2 -c 'write -q -P 0x33 768k 64k' "
                   "-c 'write -q -z 0 64k' '%s'",
                   scratch_path("base.qcow2"), scratch_path("base.qcow2"),
                   scratch_path("mid.qcow2"), scratch_path("mid.qcow2"),
                   scratch_path("top.qcow2"), scratch_path("top.qcow2")),
        0);
    bs = open_img("top.qcow2", true, true);
    assert_non_null(bdev_backing(bs));
    {
        json_t *info = json_object();
        char want[600];

        bs->drv->info(bs, info);
        assert_string_equal(
            json_string_value(json_object_get(info, "backing-filename")),
            "mid.qcow2");
        assert_string_equal(
            json_string_value(json_object_get(info, "backing-filename-format")),
            "qcow2");
        snprintf(want, sizeof(want), "%s", scratch_path("mid.qcow2"));
        assert_string_equal(
            json_string_value(json_object_get(info, "full-backing-filename")),
            want);
        assert_int_equal(
            json_integer_value(json_object_get(info, "cluster-size")), 65536);
        assert_true(json_is_false(json_object_get(info, "dirty-flag")));
        assert_string_equal(
            json_string_value(json_object_get(
                json_object_get(json_object_get(info, "format-specific"),
                                "data"),
                "compat")),
            "1.1");
        json_decref(info);
    }
    assert_non_null(bdev_backing(bdev_backing(bs)));
    expect_pattern(bs, 0, 64 << 10, 0); /* zero cluster in top */
    expect_pattern(bs, 64 << 10, 448 << 10, 0x11);
    expect_pattern(bs, 512 << 10, 256 << 10, 0x22);
    expect_pattern(bs, 768 << 10, 64 << 10, 0x33);
    expect_pattern(bs, 832 << 10, 192 << 10, 0x22);
    expect_pattern(bs, 1 << 20, 2 << 20, 0); /* past the 2M backing too */

    /* Per-layer status: zero cluster, then unallocated. */
    assert_int_equal(bdev_block_status(bs, 0, 1 << 20, test_io_status_cb, &d),
                     0);
    assert_int_equal(d.calls, 0); /* never inside the call */
    assert_int_equal(test_io_wait(&d, 1), 0);
    assert_int_equal(d.status, BDEV_STATUS_ALLOCATED | BDEV_STATUS_ZERO);
    assert_int_equal(d.pnum, 64 << 10);
    memset(&d, 0, sizeof(d));
    assert_int_equal(
        bdev_block_status(bs, 64 << 10, 3 << 20, test_io_status_cb, &d), 0);
    assert_int_equal(test_io_wait(&d, 1), 0);
    assert_int_equal(d.status, 0);
    assert_int_equal(d.pnum, (768 - 64) << 10);
    memset(&d, 0, sizeof(d));
    assert_int_equal(bdev_is_allocated_above(bs, NULL, 64 << 10, 1 << 20,
                                             test_io_status_cb, &d),
                     0);
    assert_int_equal(test_io_wait(&d, 1), 0);
    assert_int_equal(d.status, BDEV_STATUS_ALLOCATED);
    close_img(bs);

    /* backing: null hides the chain. */
    {
        struct qmp_error err = QMP_ERROR_INIT;

        bs = open_img_err("top.qcow2", true, false, "\"backing\": null", &err);
        assert_non_null(bs);
        assert_null(bdev_backing(bs));
        expect_pattern(bs, 64 << 10, 64 << 10, 0);
        close_img(bs);
    }
}

static void test_compressed(void **state)
{
    struct bdev *bs;

    (void)state;
    SCRATCH_NEED();
    assert_int_equal(scratch_sh("qemu-img create -q -f raw '%s' 1M && "
                                "qemu-io -f raw -c 'write -q -P 0x77 0 300k' "
                                "-c 'write -q -P 0x88 512k 100k' '%s' && "
                                "qemu-img convert -c -O qcow2 '%s' '%s'",
                                scratch_path("c.raw"), scratch_path("c.raw"),
                                scratch_path("c.raw"), scratch_path("c.qcow2")),
                     0);
    bs = open_img("c.qcow2", false, true);
    expect_pattern(bs, 0, 300 << 10, 0x77);
    expect_pattern(bs, 300 << 10, 212 << 10, 0);
    expect_pattern(bs, 512 << 10, 100 << 10, 0x88);
    /* Writing into a compressed cluster copies it first. */
    write_pattern(bs, 8192, 4096, 0x99);
    expect_pattern(bs, 0, 8192, 0x77);
    expect_pattern(bs, 8192, 4096, 0x99);
    expect_pattern(bs, 12288, (300 << 10) - 12288, 0x77);
    assert_int_equal(test_io_flush(bs), 0);
    close_img(bs);
    assert_int_equal(qemu_io_read("c.qcow2", 8192, 4096, 0x99), 0);
    assert_int_equal(qemu_io_read("c.qcow2", 12288, 53248, 0x77), 0);
    /* The replaced compressed cluster was freed: no leak. */
    assert_int_equal(img_check("c.qcow2"), 0);
}

/* ---- writing ------------------------------------------------------------ */

struct many {
    int left;
    int err;
};

static void many_cb(void *opaque, int ret)
{
    struct many *m = opaque;

    m->left--;
    if (ret && !m->err) {
        m->err = ret;
    }
}

static void test_write_and_check(void **state)
{
    struct bdev *bs;
    struct many m = {0};
    uint8_t *bufs[64];

    (void)state;
    SCRATCH_NEED();
    assert_int_equal(
        scratch_sh("qemu-img create -q -f qcow2 '%s' 64M && "
                   "qemu-io -f qcow2 -c 'write -q -P 0x44 0 2M' '%s' && "
                   "qemu-img create -q -f qcow2 -b wbase.qcow2 -F qcow2 "
                   "'%s'",
                   scratch_path("wbase.qcow2"), scratch_path("wbase.qcow2"),
                   scratch_path("w.qcow2")),
        0);
    bs = open_img("w.qcow2", false, true);
    /* Whole clusters, a partial write on top of the backing (COW head and
     * tail), a write crossing cluster and L2 boundaries. */
    write_pattern(bs, 0, 64 << 10, 0x01);
    write_pattern(bs, (128 << 10) + 4096, 4096, 0x02);
    write_pattern(bs, (32 << 20) - 8192, 16384, 0x03);
    /* 64 concurrent 256 KiB writes into fresh clusters at 40M+, and 64
     * concurrent 4 KiB writes into the same two clusters (serialised
     * allocation). */
    for (int i = 0; i < 64; i++) {
        bufs[i] = bdev_buf_alloc(256 << 10);
        memset(bufs[i], 0x40 + (i % 16), 256 << 10);
        m.left++;
        assert_int_equal(bdev_write(bs,
                                    (40ull << 20) + (uint64_t)i * (256 << 10),
                                    256 << 10, bufs[i], many_cb, &m),
                         0);
    }
    while (m.left) {
        uv_run(bdev_loop(), UV_RUN_ONCE);
    }
    assert_int_equal(m.err, 0);
    for (int i = 0; i < 64; i++) {
        m.left++;
        assert_int_equal(bdev_write(bs, (10ull << 20) + (uint64_t)i * 2048,
                                    2048, bufs[i], many_cb, &m),
                         0);
    }
    while (m.left) {
        uv_run(bdev_loop(), UV_RUN_ONCE);
    }
    assert_int_equal(m.err, 0);
    for (int i = 0; i < 64; i++) {
        bdev_buf_free(bufs[i]);
    }
    expect_pattern(bs, 0, 64 << 10, 0x01);
    expect_pattern(bs, 64 << 10, 64 << 10, 0x44);
    expect_pattern(bs, 128 << 10, 4096, 0x44);
    expect_pattern(bs, (128 << 10) + 4096, 4096, 0x02);
    expect_pattern(bs, (128 << 10) + 8192, (2 << 20) - (136 << 10), 0x44);
    expect_pattern(bs, (32 << 20) - 8192, 16384, 0x03);
    for (int i = 0; i < 64; i++) {
        expect_pattern(bs, (40ull << 20) + (uint64_t)i * (256 << 10), 256 << 10,
                       (uint8_t)(0x40 + (i % 16)));
        expect_pattern(bs, (10ull << 20) + (uint64_t)i * 2048, 2048,
                       (uint8_t)(0x40 + (i % 16)));
    }
    /* Zeroes: whole clusters become zero clusters, partial ones written. */
    assert_int_equal(test_io_zero(bs, 0, 64 << 10), 0);
    assert_int_equal(test_io_zero(bs, 256 << 10, 128 << 10),
                     0); /* over backing */
    assert_int_equal(test_io_zero(bs, (40ull << 20) + 512, 1024), 0);
    expect_pattern(bs, 0, 64 << 10, 0);
    expect_pattern(bs, 256 << 10, 128 << 10, 0);
    expect_pattern(bs, 384 << 10, 64 << 10, 0x44);
    expect_pattern(bs, (40ull << 20) + 512, 1024, 0);
    expect_pattern(bs, (40ull << 20) + 1536, 1024, 0x40);
    /* Write after zero reuses the preallocated cluster. */
    write_pattern(bs, 4096, 4096, 0x05);
    expect_pattern(bs, 0, 4096, 0);
    expect_pattern(bs, 4096, 4096, 0x05);
    expect_pattern(bs, 8192, (64 << 10) - 8192, 0);
    assert_int_equal(test_io_flush(bs), 0);
    close_img(bs);

    assert_int_equal(img_check("w.qcow2"), 0);
    assert_int_equal(qemu_io_read("w.qcow2", 4096, 4096, 0x05), 0);
    assert_int_equal(qemu_io_read("w.qcow2", 8192, 57344, 0), 0);
    assert_int_equal(qemu_io_read("w.qcow2", 64 << 10, 64 << 10, 0x44), 0);
    assert_int_equal(qemu_io_read("w.qcow2", 256 << 10, 128 << 10, 0), 0);
    assert_int_equal(qemu_io_read("w.qcow2", (128 << 10) + 4096, 4096, 0x02),
                     0);
    assert_int_equal(qemu_io_read("w.qcow2", (32 << 20) - 8192, 16384, 0x03),
                     0);
    assert_int_equal(
        qemu_io_read("w.qcow2", (40 << 20) + (63 << 18), 256 << 10, 0x4f), 0);
    assert_int_equal(
        qemu_io_read("w.qcow2", (10 << 20) + 63 * 2048, 2048, 0x4f), 0);
}

/* Random concurrent writes, write-zeroes and reads with a tiny L2 cache
 * (eviction and writebacks under load), checked against an in-memory model,
 * then by qemu-img check and qemu-img compare. */
struct rop {
    struct many *m;
    uint8_t *buf;
};

static void rop_cb(void *opaque, int ret)
{
    struct rop *o = opaque;

    many_cb(o->m, ret);
    bdev_buf_free(o->buf);
    free(o);
}

static void test_random_stress(void **state)
{
    const uint64_t size = 48 << 20;
    uint8_t *model = calloc(1, size);
    struct many m = {0};
    struct bdev *bs;
    struct qmp_error err = QMP_ERROR_INIT;
    uint32_t seed = 12345;
    FILE *f;

    (void)state;
    SCRATCH_NEED();
    assert_non_null(model);
    assert_int_equal(
        scratch_sh("qemu-img create -q -f qcow2 -o cluster_size=4096 "
                   "'%s' 48M",
                   scratch_path("rnd.qcow2")),
        0);
    bs = open_img_err("rnd.qcow2", false, true, "\"l2-cache-size\": 16384",
                      &err);
    assert_non_null(bs);
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < 48; i++) {
            uint64_t off, len;
            struct rop *o = calloc(1, sizeof(*o));
            int kind;

            seed = seed * 1103515245 + 12345;
            off = ((seed >> 4) % (size / 512)) * 512;
            seed = seed * 1103515245 + 12345;
            len = (((seed >> 4) % 64) + 1) * 512 * ((seed >> 20) % 4 ? 1 : 16);
            if (off + len > size) {
                len = size - off;
            }
            seed = seed * 1103515245 + 12345;
            kind = (int)((seed >> 8) % 8);
            o->m = &m;
            o->buf = bdev_buf_alloc(len);
            m.left++;
            /* Writes overlapping in-flight ones would make the model
             * ambiguous: each round writes disjoint 1 MiB slices. */
            off = ((uint64_t)i << 20) + (off & ((1 << 20) - 1));
            if (off + len > ((uint64_t)i + 1) << 20) {
                len = (((uint64_t)i + 1) << 20) - off;
            }
            if (kind == 0) {
                memset(model + off, 0, len);
                assert_int_equal(bdev_write_zeroes(bs, off, len, rop_cb, o), 0);
            } else if (kind < 6) {
                for (uint64_t j = 0; j < len; j++) {
                    o->buf[j] = (uint8_t)(round * 31 + i + (j >> 9));
                }
                memcpy(model + off, o->buf, len);
                assert_int_equal(bdev_write(bs, off, len, o->buf, rop_cb, o),
                                 0);
            } else {
                assert_int_equal(bdev_read(bs, off, len, o->buf, rop_cb, o), 0);
            }
        }
        while (m.left) {
            uv_run(bdev_loop(), UV_RUN_ONCE);
        }
        assert_int_equal(m.err, 0);
        if (round % 7 == 3) {
            assert_int_equal(test_io_flush(bs), 0);
        }
    }
    {
        uint8_t *buf = bdev_buf_alloc(1 << 20);

        for (uint64_t off = 0; off < size; off += 1 << 20) {
            assert_int_equal(test_io_read(bs, off, 1 << 20, buf), 0);
            assert_memory_equal(buf, model + off, 1 << 20);
        }
        bdev_buf_free(buf);
    }
    close_img(bs);
    f = fopen(scratch_path("rnd.raw"), "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(model, 1, size, f), size);
    fclose(f);
    free(model);
    assert_int_equal(img_check("rnd.qcow2"), 0);
    assert_int_equal(scratch_sh("qemu-img compare -q -f qcow2 -F raw '%s' '%s'",
                                scratch_path("rnd.qcow2"),
                                scratch_path("rnd.raw")),
                     0);
}

/* Crash consistency: copies of the image taken while writes, flushes and
 * cache evictions are in flight (what a crash of the daemon would leave)
 * must pass qemu-img check with at most leaks, and keep everything that was
 * written before a completed flush. */
static void test_crash_points(void **state)
{
    struct bdev *bs;
    struct many m = {0};
    struct qmp_error err = QMP_ERROR_INIT;
    uint8_t *buf = bdev_buf_alloc(64 << 10);
    int copies = 0;

    (void)state;
    SCRATCH_NEED();
    assert_int_equal(
        scratch_sh("qemu-img create -q -f qcow2 -o cluster_size=4096 "
                   "'%s' 64M",
                   scratch_path("crash.qcow2")),
        0);
    bs = open_img_err("crash.qcow2", false, false, "\"l2-cache-size\": 4096",
                      &err);
    assert_non_null(bs);
    memset(buf, 0x70, 64 << 10);
    for (int i = 0; i < 32; i++) {
        assert_int_equal(test_io_write(bs, (uint64_t)i << 21, 64 << 10, buf),
                         0);
    }
    assert_int_equal(test_io_flush(bs), 0);
    memset(buf, 0x71, 64 << 10);
    for (int i = 0; i < 256; i++) {
        m.left++;
        if (i % 16 == 15) {
            assert_int_equal(bdev_flush(bs, many_cb, &m), 0);
        } else {
            assert_int_equal(bdev_write(bs, ((uint64_t)i << 18) + (64 << 10),
                                        16 << 10, buf, many_cb, &m),
                             0);
        }
    }
    while (m.left) {
        uv_run(bdev_loop(), UV_RUN_ONCE);
        if (m.left % 40 == 0 && copies < 5) {
            char name[32];

            snprintf(name, sizeof(name), "crash%d.qcow2", copies++);
            assert_int_equal(scratch_sh("cp '%s' '%s'",
                                        scratch_path("crash.qcow2"),
                                        scratch_path(name)),
                             0);
        }
    }
    assert_int_equal(m.err, 0);
    close_img(bs);
    bdev_buf_free(buf);
    assert_true(copies > 0);
    for (int c = 0; c < copies; c++) {
        char name[32];
        int st;

        snprintf(name, sizeof(name), "crash%d.qcow2", c);
        st = img_check(name);
        if (st != 0 && st != 3) {
            fail_msg("%s: qemu-img check exit %d", name, st);
        }
        for (int i = 0; i < 32; i += 7) {
            assert_int_equal(
                qemu_io_read(name, (uint64_t)i << 21, 64 << 10, 0x70), 0);
        }
    }
    assert_int_equal(img_check("crash.qcow2"), 0);
}

/* 512-byte clusters: the refcount table (one cluster) covers only 8 MiB of
 * file, so writing 12 MiB grows it and adds refcount blocks. */
static void test_refcount_growth(void **state)
{
    struct bdev *bs;

    (void)state;
    SCRATCH_NEED();
    assert_int_equal(
        scratch_sh("qemu-img create -q -f qcow2 -o cluster_size=512 "
                   "'%s' 16M",
                   scratch_path("small.qcow2")),
        0);
    bs = open_img("small.qcow2", false, false);
    for (int i = 0; i < 12; i++) {
        write_pattern(bs, (uint64_t)i << 20, 1 << 20, (uint8_t)(0x60 + i));
    }
    for (int i = 0; i < 12; i++) {
        expect_pattern(bs, (uint64_t)i << 20, 1 << 20, (uint8_t)(0x60 + i));
    }
    assert_int_equal(test_io_flush(bs), 0);
    close_img(bs);
    assert_int_equal(img_check("small.qcow2"), 0);
    assert_int_equal(qemu_io_read("small.qcow2", 11 << 20, 1 << 20, 0x6b), 0);
    assert_int_equal(qemu_io_read("small.qcow2", 0, 1 << 20, 0x60), 0);
}

static void test_change_backing(void **state)
{
    struct bdev *bs;
    struct test_io_done d = {0};

    (void)state;
    SCRATCH_NEED();
    assert_int_equal(
        scratch_sh("qemu-img create -q -f qcow2 '%s' 1M && "
                   "qemu-img create -q -f raw '%s' 1M && "
                   "qemu-img create -q -f qcow2 -b cb_base.qcow2 -F qcow2 "
                   "'%s'",
                   scratch_path("cb_base.qcow2"), scratch_path("cb_other.raw"),
                   scratch_path("cb.qcow2")),
        0);
    bs = open_img("cb.qcow2", false, false);
    write_pattern(bs, 0, 4096, 0x21);
    assert_int_equal(
        bs->drv->change_backing(bs, "cb_other.raw", "raw", test_io_cb, &d), 0);
    assert_int_equal(d.calls, 0);
    assert_int_equal(test_io_wait(&d, 1), 0);
    close_img(bs);
    assert_int_equal(scratch_sh("qemu-img info '%s' | grep -q 'backing file: "
                                "cb_other.raw' && qemu-img info '%s' | grep -q "
                                "'backing file format: raw'",
                                scratch_path("cb.qcow2"),
                                scratch_path("cb.qcow2")),
                     0);
    assert_int_equal(img_check("cb.qcow2"), 0);
    assert_int_equal(qemu_io_read("cb.qcow2", 0, 4096, 0x21), 0);

    /* And away again. */
    bs = open_img("cb.qcow2", false, false);
    memset(&d, 0, sizeof(d));
    assert_int_equal(bs->drv->change_backing(bs, NULL, NULL, test_io_cb, &d),
                     0);
    assert_int_equal(test_io_wait(&d, 1), 0);
    close_img(bs);
    assert_int_equal(scratch_sh("qemu-img info '%s' | grep -q 'backing file'",
                                scratch_path("cb.qcow2")),
                     1);
    assert_int_equal(img_check("cb.qcow2"), 0);
}

/* ---- malformed images --------------------------------------------------- */

static void patch(const char *name, uint64_t off, const void *bytes, size_t n)
{
    FILE *f = fopen(scratch_path(name), "r+b");

    assert_non_null(f);
    assert_int_equal(fseek(f, (long)off, SEEK_SET), 0);
    assert_int_equal(fwrite(bytes, 1, n, f), n);
    fclose(f);
}

static void expect_open_error(const char *name, const char *text)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct bdev *bs = open_img_err(name, true, false, NULL, &err);

    if (bs) {
        close_img(bs);
        fail_msg("%s opened", name);
    }
    assert_non_null(err.desc);
    if (!strstr(err.desc, text)) {
        fail_msg("error '%s' lacks '%s'", err.desc, text);
    }
    qmp_error_clear(&err);
}

static void make_bad(void)
{
    assert_int_equal(
        scratch_sh("qemu-img create -q -f qcow2 '%s' 1M && "
                   "qemu-io -f qcow2 -c 'write -q -P 0x11 0 64k' '%s'",
                   scratch_path("bad.qcow2"), scratch_path("bad.qcow2")),
        0);
}

static void test_malformed(void **state)
{
    uint8_t be[8];
    struct bdev *bs;
    uint8_t *buf;

    (void)state;
    SCRATCH_NEED();
    /* Not qcow2 at all. */
    assert_int_equal(scratch_sh("qemu-img create -q -f raw '%s' 1M",
                                scratch_path("bad.qcow2")),
                     0);
    expect_open_error("bad.qcow2", "Image is not in qcow2 format");

    /* Truncated to 100 bytes, then to two clusters (tables past EOF). */
    make_bad();
    assert_int_equal(truncate(scratch_path("bad.qcow2"), 100), 0);
    expect_open_error("bad.qcow2", "qcow2 header is truncated");
    make_bad();
    assert_int_equal(truncate(scratch_path("bad.qcow2"), 2 * 65536), 0);
    expect_open_error("bad.qcow2", "Invalid L1 table offset");

    /* Huge l1_size and virtual size. */
    make_bad();
    qcow2_put_be32(be, 0x40000000u);
    patch("bad.qcow2", 36, be, 4);
    expect_open_error("bad.qcow2", "Active L1 table too large");
    make_bad();
    qcow2_put_be64(be, 1ull << 60);
    patch("bad.qcow2", 24, be, 8);
    expect_open_error("bad.qcow2", "Image is too big");

    /* Refcount entry width 128 bits. */
    make_bad();
    qcow2_put_be32(be, 7);
    patch("bad.qcow2", 96, be, 4);
    expect_open_error("bad.qcow2", "Reference count entry width too large");

    /* Unknown incompatible feature. */
    make_bad();
    qcow2_put_be64(be, 1ull << 33);
    patch("bad.qcow2", 72, be, 8);
    expect_open_error("bad.qcow2",
                      "Unsupported qcow2 feature(s): Unknown incompatible "
                      "feature: 200000000");

    /* Corrupt bit: read-only is fine, read-write is refused. */
    make_bad();
    qcow2_put_be64(be, QCOW2_INCOMPAT_CORRUPT);
    patch("bad.qcow2", 72, be, 8);
    {
        struct qmp_error err = QMP_ERROR_INIT;

        bs = open_img_err("bad.qcow2", false, false, NULL, &err);
        assert_null(bs);
        assert_string_equal(err.desc,
                            "qcow2: Image is corrupt; cannot be opened "
                            "read/write");
        qmp_error_clear(&err);
    }
    bs = open_img("bad.qcow2", true, false);
    expect_pattern(bs, 0, 4096, 0x11);
    close_img(bs);

    /* L2 table offset past EOF: open works, reading there fails. */
    make_bad();
    qcow2_put_be64(be, QCOW2_OFLAG_COPIED | (1ull << 40));
    patch("bad.qcow2", 3 * 65536, be, 8);
    bs = open_img("bad.qcow2", true, false);
    buf = bdev_buf_alloc(65536);
    assert_int_equal(test_io_read(bs, 0, 65536, buf), -EIO);
    close_img(bs);

    /* Data cluster offset past EOF (L2 table is cluster 4). */
    make_bad();
    qcow2_put_be64(be, QCOW2_OFLAG_COPIED | (1ull << 36));
    patch("bad.qcow2", 4 * 65536, be, 8);
    bs = open_img("bad.qcow2", true, false);
    assert_int_equal(test_io_read(bs, 0, 65536, buf), -EIO);
    close_img(bs);

    /* Refcount block pointer past EOF: reads work, allocation fails. */
    make_bad();
    qcow2_put_be64(be, 1ull << 40);
    patch("bad.qcow2", 65536, be, 8);
    bs = open_img("bad.qcow2", false, false);
    expect_pattern(bs, 0, 4096, 0x11);
    memset(buf, 0x12, 65536);
    assert_int_equal(test_io_write(bs, 128 << 10, 65536, buf), -EIO);
    close_img(bs);

    /* Every refcount at its maximum: allocation finds no free cluster in
     * the existing refcount block and moves on to new ones. */
    make_bad();
    {
        uint8_t *rb = calloc(1, 65536);

        memset(rb, 0xff, 65536);
        patch("bad.qcow2", 2 * 65536, rb, 65536);
        free(rb);
    }
    bs = open_img("bad.qcow2", false, false);
    assert_int_equal(test_io_write(bs, 128 << 10, 65536, buf), 0);
    expect_pattern(bs, 128 << 10, 65536, 0x12);
    close_img(bs);
    bdev_buf_free(buf);
}

/* ---- dirty bit: refcount rebuild on read-write open ---------------------- */

static bool dirty_flag(struct bdev *bs)
{
    json_t *info = json_object();
    bool dirty;

    bs->drv->info(bs, info);
    dirty = json_is_true(json_object_get(info, "dirty-flag"));
    json_decref(info);
    return dirty;
}

/* A lazy-refcounts writer that dies (qemu-io's `abort`) leaves the dirty
 * bit set and refcounts behind the L2 tables: qemu-img check sees errors.
 * Opening read-only keeps the image as it is; opening read-write rebuilds
 * the refcounts, after which qemu-img check is clean and everything reads
 * and writes back right. */
static void dirty_case(const char *create_opts, const char *setup,
                       const char *lazy_io)
{
    struct bdev *bs;
    uint8_t *buf = bdev_buf_alloc(65536);
    int check_before;

    assert_int_equal(
        scratch_sh(
            "rm -f '%s' && qemu-img create -q -f qcow2 -o lazy_refcounts=on%s "
            "'%s' 8M",
            scratch_path("dirty.qcow2"), create_opts,
            scratch_path("dirty.qcow2")),
        0);
    if (setup) {
        assert_int_equal(
            scratch_sh("IMG='%s'; %s", scratch_path("dirty.qcow2"), setup), 0);
    }
    /* qemu-io exits through abort(): ignore its status. */
    scratch_sh("qemu-io -f qcow2 %s -c abort '%s' >/dev/null 2>&1", lazy_io,
               scratch_path("dirty.qcow2"));
    /* Usually corruptions (2); compressed writes flush refcounts as they
     * go, so that image may check clean - but its dirty bit is set. */
    check_before = img_check("dirty.qcow2");
    assert_true(check_before == 2 || check_before == 0);

    bs = open_img("dirty.qcow2", true, false);
    assert_true(dirty_flag(bs));
    expect_pattern(bs, 0, 1 << 20, 0x5a);
    close_img(bs);
    assert_int_equal(img_check("dirty.qcow2"), check_before); /* untouched */

    bs = open_img("dirty.qcow2", false, true);
    assert_false(dirty_flag(bs));
    expect_pattern(bs, 0, 1 << 20, 0x5a);
    expect_pattern(bs, 3 << 20, 128 << 10, 0x6b);
    expect_pattern(bs, 1 << 20, 2 << 20, 0);
    /* New allocations must not land on clusters in use. */
    memset(buf, 0x7c, 65536);
    for (uint64_t off = 4 << 20; off < (6 << 20); off += 65536) {
        assert_int_equal(test_io_write(bs, off, 65536, buf), 0);
    }
    assert_int_equal(test_io_write(bs, 64 << 10, 65536, buf), 0);
    assert_int_equal(test_io_flush(bs), 0);
    expect_pattern(bs, 0, 64 << 10, 0x5a);
    expect_pattern(bs, 3 << 20, 128 << 10, 0x6b);
    close_img(bs);

    assert_int_equal(img_check("dirty.qcow2"), 0);
    assert_int_equal(qemu_io_read("dirty.qcow2", 0, 64 << 10, 0x5a), 0);
    assert_int_equal(qemu_io_read("dirty.qcow2", 64 << 10, 64 << 10, 0x7c), 0);
    assert_int_equal(qemu_io_read("dirty.qcow2", 128 << 10, 896 << 10, 0x5a),
                     0);
    assert_int_equal(qemu_io_read("dirty.qcow2", 3 << 20, 128 << 10, 0x6b), 0);
    assert_int_equal(qemu_io_read("dirty.qcow2", 4 << 20, 2 << 20, 0x7c), 0);
    bdev_buf_free(buf);
}

static void test_dirty_repair(void **state)
{
    (void)state;
    SCRATCH_NEED();
    const char *io = "-c 'write -q -P 0x5a 0 1M' -c 'write -q -P 0x6b 3M 128k'";

    dirty_case("", NULL, io);
    /* Refcount widths at both ends (bit packing, 64-bit entries) and small
     * clusters (several refcount blocks and L2 tables to rebuild). */
    dirty_case(",refcount_bits=1", NULL, io);
    dirty_case(",refcount_bits=64", NULL, io);
    dirty_case(",cluster_size=512", NULL, io);
}

/* With an internal snapshot, clusters and L2 tables are shared (refcount
 * 2): the rebuild counts the snapshot's tables too. */
static void test_dirty_repair_snapshot(void **state)
{
    (void)state;
    SCRATCH_NEED();
    dirty_case("",
               "qemu-io -f qcow2 -c 'write -q -P 0x5a 0 1M' \"$IMG\" && "
               "qemu-img snapshot -c s1 \"$IMG\"",
               "-c 'write -q -P 0x6b 3M 128k'");
}

/* Compressed clusters written before the crash. */
static void test_dirty_repair_compressed(void **state)
{
    (void)state;
    SCRATCH_NEED();
    dirty_case("", NULL,
               "-c 'write -q -c -P 0x5a 0 1M' "
               "-c 'write -q -P 0x6b 3M 128k'");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_v3),
        cmocka_unit_test(test_read_v2),
        cmocka_unit_test(test_chain),
        cmocka_unit_test(test_compressed),
        cmocka_unit_test(test_write_and_check),
        cmocka_unit_test(test_random_stress),
        cmocka_unit_test(test_crash_points),
        cmocka_unit_test(test_refcount_growth),
        cmocka_unit_test(test_change_backing),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_dirty_repair),
        cmocka_unit_test(test_dirty_repair_snapshot),
        cmocka_unit_test(test_dirty_repair_compressed),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
