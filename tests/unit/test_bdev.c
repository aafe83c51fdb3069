/* Block layer: node graph, aio engine (libaio and thread pool), file / raw /
 * null-co / blkdebug drivers, allocation walk, OFD locks. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "backends/aio.h"
#include "backends/bdev_int.h"
#include "protocol/json.h"
#include "tests/fakes/test_io.h"

/* ---- helpers ------------------------------------------------------------ */

/* What open_json opens with (a test changes it around one open). */
static struct bdev_open_params open_params;

static struct bdev *open_json(const char *text, struct qmp_error *err)
{
    const char *perr = NULL;
    json_t *o = qmp_json_parse(text, &perr);
    struct bdev *bs;

    assert_non_null(o);
    bs = bdev_open_node_with(o, true, &open_params, err);
    json_decref(o);
    return bs;
}

static struct bdev *must_open(const char *fmt, ...)
{
    struct qmp_error err = QMP_ERROR_INIT;
    char *text;
    va_list ap;
    struct bdev *bs;

    va_start(ap, fmt);
    assert_true(vasprintf(&text, fmt, ap) >= 0);
    va_end(ap);
    bs = open_json(text, &err);
    if (!bs) {
        fail_msg("open %s: %s", text, err.desc);
    }
    free(text);
    return bs;
}

static void expect_open_error(const char *text, const char *msg)
{
    struct qmp_error err = QMP_ERROR_INIT;

    assert_null(open_json(text, &err));
    assert_non_null(err.desc);
    assert_string_equal(err.desc, msg);
    qmp_error_clear(&err);
}

static char *make_file(const char *dir, uint64_t size, int pattern)
{
    char *path;
    int fd;
    char buf[65536];

    assert_true(asprintf(&path, "%s/bdevtest.XXXXXX", dir) >= 0);
    fd = mkstemp(path);
    assert_true(fd >= 0);
    for (uint64_t off = 0; off < size; off += sizeof(buf)) {
        for (size_t i = 0; i < sizeof(buf); i++) {
            buf[i] = (char)(pattern < 0 ? (int)((off + i) / 512) : pattern);
        }
        assert_int_equal(pwrite(fd, buf, sizeof(buf), (off_t)off),
                         (ssize_t)sizeof(buf));
    }
    close(fd);
    return path;
}

static void drop(struct bdev *bs)
{
    bdev_unref(bs);
}

static int teardown(void **state)
{
    (void)state;
    bdev_close_all();
    uv_run(bdev_loop(), UV_RUN_NOWAIT);
    assert_null(bdev_all_nodes());
    return 0;
}

/* ---- node names ---------------------------------------------------------- */

static void test_names(void **state)
{
    struct bdev *a, *r;
    char *child;

    (void)state;
    a = must_open("{'driver': 'null-co', 'node-name': 'a.b-c_1'}");
    assert_ptr_equal(bdev_find("a.b-c_1"), a);
    expect_open_error("{'driver': 'null-co', 'node-name': 'a.b-c_1'}",
                      "Duplicate nodes with node-name='a.b-c_1'");
    expect_open_error("{'driver': 'null-co', 'node-name': '_a'}",
                      "Invalid node-name: '_a'");
    expect_open_error("{'driver': 'null-co', 'node-name': '1a'}",
                      "Invalid node-name: '1a'");
    expect_open_error("{'driver': 'null-co', 'node-name': "
                      "'a234567890123456789012345678901x'}",
                      "Node name too long");
    expect_open_error("{'driver': 'null-co'}",
                      "'node-name' must be specified for the root node");
    expect_open_error("{'node-name': 'x'}", "Parameter 'driver' is missing");
    expect_open_error("{'driver': 'raw', 'node-name': 'x', 'file': 'nope'}",
                      "Cannot find device='nope' nor node-name='nope'");
    /* 31 characters is fine. */
    drop(must_open("{'driver': 'null-co', 'node-name': "
                   "'a234567890123456789012345678901'}"));

    /* Implicit children get #blockNNN names, older than their parent. */
    r = must_open("{'driver': 'raw', 'node-name': 'r', 'file': {'driver': "
                  "'null-co'}}");
    child = strdup(bdev_node_name(bdev_file_child(r)));
    assert_memory_equal(child, "#block", 6);
    assert_ptr_equal(bdev_all_nodes(), r);
    assert_ptr_equal(r->next, bdev_file_child(r));
    assert_true(bdev_file_child(r)->implicit);
    assert_int_equal(bdev_file_child(r)->parents, 1);
    assert_string_equal(bdev_filename(r), "null-co://");
    drop(r);
    assert_null(bdev_find(child)); /* released with its parent */
    free(child);
    drop(a);
}

static void test_claims_refs(void **state)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct bdev *n = must_open("{'driver': 'null-co', 'node-name': 'n'}");
    struct bdev *r = must_open("{'driver': 'raw', 'node-name': 'r', 'file': "
                               "'n'}");

    (void)state;
    assert_int_equal(n->parents, 1);
    assert_int_equal(n->refcnt, 2);
    assert_int_equal(bdev_claim(r, "stream", &err), 0);
    assert_int_equal(bdev_claim(r, "stream", &err), -EBUSY);
    assert_string_equal(err.desc, "Node 'r' is busy: block device is in use "
                                  "by block job: stream");
    qmp_error_clear(&err);
    assert_string_equal(bdev_claimed_by(r), "stream");
    bdev_release(r);
    assert_null(bdev_claimed_by(r));
    drop(r);
    assert_int_equal(n->parents, 0);
    assert_int_equal(n->refcnt, 1);
    drop(n);
}

/* ---- null-co ---------------------------------------------------------- */

static void test_null(void **state)
{
    struct bdev *n = must_open("{'driver': 'null-co', 'node-name': 'n', "
                               "'size': 65536}");
    struct bdev *z = must_open("{'driver': 'null-co', 'node-name': 'z', "
                               "'read-zeroes': true}");
    struct test_io_done d = {0};
    char buf[4096];

    (void)state;
    assert_int_equal(bdev_length(n), 65536);
    assert_int_equal(bdev_length(z), 1073741824);
    memset(buf, 0xaa, sizeof(buf));
    assert_int_equal(bdev_read(n, 0, sizeof(buf), buf, test_io_cb, &d), 0);
    assert_int_equal(d.calls, 0); /* never inside the call */
    test_io_wait(&d, 1);
    assert_int_equal(d.ret, 0);
    assert_int_equal((unsigned char)buf[100], 0xaa); /* left alone */
    assert_int_equal(bdev_read(z, 0, sizeof(buf), buf, test_io_cb, &d), 0);
    test_io_wait(&d, 2);
    assert_int_equal(buf[100], 0);

    /* Range checks: writes past the end fail, reads past it see zeroes. */
    assert_int_equal(bdev_write(n, 65536 - 512, 1024, buf, test_io_cb, &d),
                     -EIO);
    memset(buf, 0xaa, sizeof(buf));
    assert_int_equal(bdev_read(n, 65536 - 512, 1024, buf, test_io_cb, &d), 0);
    test_io_wait(&d, 3);
    assert_int_equal(buf[600], 0);
    assert_int_equal(bdev_read(n, UINT64_MAX - 10, 100, buf, test_io_cb, &d),
                     -EINVAL);

    expect_open_error("{'driver': 'null-co', 'node-name': 'q', 'size': -5}",
                      "Parameter 'size' expects a non-negative value");
    drop(n);
    drop(z);
}

static void test_null_latency(void **state)
{
    struct bdev *n = must_open("{'driver': 'null-co', 'node-name': 'n', "
                               "'latency-ns': 2000000}");
    struct test_io_done d = {0};
    char buf[512];
    uint64_t t0 = uv_hrtime();

    (void)state;
    assert_int_equal(bdev_write(n, 0, sizeof(buf), buf, test_io_cb, &d), 0);
    test_io_wait(&d, 1);
    assert_true(uv_hrtime() - t0 >= 1000000);
    drop(n);
}

/* ---- file: both engine paths -------------------------------------------- */

static void file_roundtrip(const char *dir, bool no_direct, bool expect_native)
{
    enum { N = 64, SZ = 65536 };
    char *path = make_file(dir, 4 << 20, 0);
    struct aio_stats before, after;
    struct bdev *f;
    struct test_io_done d = {0};
    uint8_t *bufs[N];
    uint8_t *rd = bdev_buf_alloc(SZ);

    open_params.file_no_direct = no_direct;
    f = must_open("{'driver': 'file', 'node-name': 'f', 'filename': '%s'}",
                  path);
    open_params.file_no_direct = false;
    assert_int_equal(bdev_length(f), 4 << 20);
    aio_get_stats(&before);
    for (int i = 0; i < N; i++) {
        bufs[i] = bdev_buf_alloc(SZ);
        memset(bufs[i], i + 1, SZ);
        assert_int_equal(
            bdev_write(f, (uint64_t)i * SZ, SZ, bufs[i], test_io_cb, &d), 0);
    }
    assert_true(f->in_flight > 1); /* many requests in flight at once */
    test_io_wait(&d, N);
    assert_int_equal(d.ret, 0);
    aio_get_stats(&after);
    if (expect_native) {
        assert_true(after.native_submitted - before.native_submitted >= N);
    } else {
        assert_int_equal(after.native_submitted, before.native_submitted);
        assert_true(after.pool_submitted - before.pool_submitted >= N);
    }
    for (int i = 0; i < N; i++) {
        assert_int_equal(bdev_read(f, (uint64_t)i * SZ, SZ, rd, test_io_cb, &d),
                         0);
        test_io_wait(&d, N + i + 1);
        assert_int_equal(d.ret, 0);
        assert_memory_equal(rd, bufs[i], SZ);
        bdev_buf_free(bufs[i]);
    }
    /* flush goes through the pool */
    assert_int_equal(bdev_flush(f, test_io_cb, &d), 0);
    test_io_wait(&d, 2 * N + 1);
    assert_int_equal(d.ret, 0);
    drop(f);
    bdev_buf_free(rd);
    unlink(path);
    free(path);
}

static void test_file_native(void **state)
{
    (void)state;
    /* /var/tmp is a disk file system here (ext4); O_DIRECT works. */
    file_roundtrip("/var/tmp", false, true);
}

static void test_file_pool(void **state)
{
    (void)state;
    /* As on a file system refusing O_DIRECT (tmpfs on older kernels). */
    file_roundtrip("/dev/shm", true, false);
}

static void test_file_unaligned(void **state)
{
    char *path = make_file("/var/tmp", 1 << 20, -1);
    struct bdev *f = must_open("{'driver': 'file', 'node-name': 'f', "
                               "'filename': '%s'}",
                               path);
    struct test_io_done d = {0};
    char *buf = malloc(10001), exp[10001];
    int fd;

    (void)state;
    memset(buf, 0x5c, 10001);
    assert_int_equal(bdev_write(f, 777, 10001, buf + 0, test_io_cb, &d), 0);
    test_io_wait(&d, 1);
    assert_int_equal(d.ret, 0);
    memset(buf, 0, 10001);
    assert_int_equal(bdev_read(f, 700, 10001, buf, test_io_cb, &d), 0);
    test_io_wait(&d, 2);
    fd = open(path, O_RDONLY);
    assert_int_equal(pread(fd, exp, 10001, 700), 10001);
    close(fd);
    assert_memory_equal(buf, exp, 10001);
    assert_int_equal((unsigned char)buf[77], 0x5c);
    assert_int_equal((unsigned char)buf[76], 700 / 512);
    /* sync helpers */
    assert_int_equal(bdev_child_pwrite_sync(f, 3, 5, "hello"), 0);
    assert_int_equal(bdev_child_pread_sync(f, 3, 5, buf), 0);
    assert_memory_equal(buf, "hello", 5);
    assert_int_equal(bdev_child_flush_sync(f), 0);
    drop(f);
    free(buf);
    unlink(path);
    free(path);
}

static void test_file_grow(void **state)
{
    char *path = make_file("/var/tmp", 65536, 1);
    struct bdev *f = must_open("{'driver': 'file', 'node-name': 'f', "
                               "'filename': '%s'}",
                               path);
    struct test_io_done d = {0};
    uint8_t *buf = bdev_buf_alloc(65536);
    struct stat sb;
    int n = 0;

    (void)state;
    /* Writes past the end: preallocated ahead, never blocking the loop. */
    for (int i = 1; i <= 40; i++) {
        memset(buf, i, 65536);
        assert_int_equal(
            bdev_write(f, (uint64_t)i * 65536, 65536, buf, test_io_cb, &d), 0);
        n++;
        test_io_wait(&d, n);
        assert_int_equal(d.ret, 0);
    }
    assert_int_equal(bdev_length(f), 41 * 65536);
    stat(path, &sb);
    assert_true(sb.st_size > 41 * 65536); /* the preallocated tail */
    assert_int_equal(bdev_read(f, 20 * 65536, 65536, buf, test_io_cb, &d), 0);
    test_io_wait(&d, ++n);
    assert_int_equal(buf[0], 20);
    assert_int_equal(buf[65535], 20);
    drop(f);
    stat(path, &sb);
    assert_int_equal(sb.st_size, 41 * 65536); /* cut back at close */
    bdev_buf_free(buf);
    unlink(path);
    free(path);
}

static void test_file_errors(void **state)
{
    (void)state;
    expect_open_error("{'driver': 'file', 'node-name': 'f', 'filename': "
                      "'/nonexistent/x'}",
                      "Could not open '/nonexistent/x': No such file or "
                      "directory");
    expect_open_error("{'driver': 'file', 'node-name': 'f', 'filename': "
                      "'/tmp'}",
                      "Could not open '/tmp': Is a directory");
    expect_open_error("{'driver': 'file', 'node-name': 'f', 'filename': "
                      "'/tmp/x', 'aio': 'native'}",
                      "aio=native was specified, but it requires "
                      "cache.direct=on, which was not specified.");
    expect_open_error("{'driver': 'null-co', 'node-name': 'f', "
                      "'force-share': true}",
                      "force-share=on can only be used with read-only "
                      "images");
}

/* ---- raw ---------------------------------------------------------------- */

static void test_raw(void **state)
{
    char *path = make_file("/var/tmp", 65536, -1);
    struct bdev *r = must_open("{'driver': 'raw', 'node-name': 'r', 'offset': "
                               "4096, 'size': 8192, 'file': {'driver': "
                               "'file', 'filename': '%s'}}",
                               path);
    struct test_io_done d = {0};
    uint8_t *buf = bdev_buf_alloc(8192);
    char *name;

    (void)state;
    assert_int_equal(bdev_length(r), 8192);
    /* offset and size name the node, as in QEMU */
    assert_true(asprintf(&name,
                         "json:{\"offset\": 4096, \"driver\": \"raw\", "
                         "\"size\": 8192, \"file\": {\"driver\": \"file\", "
                         "\"filename\": \"%s\"}}",
                         path) > 0);
    assert_string_equal(bdev_filename(r), name);
    free(name);
    assert_int_equal(bdev_read(r, 0, 8192, buf, test_io_cb, &d), 0);
    test_io_wait(&d, 1);
    assert_int_equal(buf[0], 8);     /* byte 4096 of the file: sector 8 */
    assert_int_equal(buf[8191], 23); /* byte 12287: sector 23 */
    assert_int_equal(bdev_write(r, 4096, 8192, buf, test_io_cb, &d), -EIO);
    drop(r);
    expect_open_error("{'driver': 'raw', 'node-name': 'r', 'offset': 65536, "
                      "'size': 1, 'file': {'driver': 'null-co', 'size': "
                      "65536}}",
                      "The sum of offset (65536) and size (1) has to be "
                      "smaller or equal to the  actual size of the "
                      "containing file (65536)");
    bdev_buf_free(buf);
    unlink(path);
    free(path);
}

/* ---- blkdebug ----------------------------------------------------------- */

static void test_blkdebug_recipe(void **state)
{
    /* Reference §6.4: EIO once at sector 1024, state ping-pong. */
    struct bdev *b = must_open(
        "{'driver': 'raw', 'node-name': 'base', 'file': {'driver': "
        "'blkdebug', 'inject-error': [{'event': 'read_aio', 'errno': 5, "
        "'sector': 1024, 'once': true, 'immediately': false, 'state': 1}], "
        "'set-state': [{'state': 1, 'event': 'read_aio', 'new_state': 2}, "
        "{'state': 2, 'event': 'read_aio', 'new_state': 1}], 'image': "
        "{'driver': 'null-co', 'size': 2097152, 'read-zeroes': true}}}");
    struct test_io_done d = {0};
    uint8_t *buf = bdev_buf_alloc(524288);

    (void)state;
    assert_memory_equal(bdev_filename(b), "json:{\"driver\": \"raw\"", 21);
    /* First read_aio (state 1) arms the rule; it does not cover 512 KiB. */
    assert_int_equal(bdev_read(b, 0, 524288, buf, test_io_cb, &d), 0);
    test_io_wait(&d, 1);
    assert_int_equal(d.ret, 0);
    /* State is 2 now: the event matches no inject rule, the armed rule
     * stays active and fires on the request covering sector 1024. */
    assert_int_equal(bdev_read(b, 524288, 524288, buf, test_io_cb, &d), 0);
    assert_int_equal(d.calls, 1); /* one trip through the loop first */
    test_io_wait(&d, 2);
    assert_int_equal(d.ret, -EIO);
    /* once: gone */
    assert_int_equal(bdev_read(b, 524288, 524288, buf, test_io_cb, &d), 0);
    test_io_wait(&d, 3);
    assert_int_equal(d.ret, 0);
    drop(b);
    bdev_buf_free(buf);
}

static void test_blkdebug_rules(void **state)
{
    struct bdev *b = must_open(
        "{'driver': 'raw', 'node-name': 'b', 'file': {'driver': 'blkdebug', "
        "'inject-error': [{'event': 'write_aio', 'errno': 28, 'iotype': "
        "'write'}, {'event': 'read_aio', 'immediately': true, 'iotype': "
        "'read', 'sector': 0}], 'image': {'driver': 'null-co', 'size': "
        "1048576}}}");
    struct test_io_done d = {0};
    char buf[4096];

    (void)state;
    /* Nothing armed yet: reads and writes pass. */
    assert_int_equal(bdev_write(b, 0, 4096, buf, test_io_cb, &d), 0);
    test_io_wait(&d, 1);
    assert_int_equal(d.ret, -ENOSPC); /* write_aio armed it first */
    assert_int_equal(bdev_read(b, 8192, 4096, buf, test_io_cb, &d), 0);
    test_io_wait(&d, 2);
    assert_int_equal(d.ret, 0); /* read rule wants sector 0 */
    /* immediately: fails in the call, no callback */
    assert_int_equal(bdev_read(b, 0, 4096, buf, test_io_cb, &d), -EIO);
    uv_run(bdev_loop(), UV_RUN_NOWAIT);
    assert_int_equal(d.calls, 2);
    /* the write event arms the write rule again */
    assert_int_equal(bdev_write(b, 0, 4096, buf, test_io_cb, &d), 0);
    test_io_wait(&d, 3);
    assert_int_equal(d.ret, -ENOSPC);
    drop(b);
}

/* ---- is_allocated_above over a fake map driver ------------------------ */

struct map_state {
    uint64_t size;
    uint8_t map[16]; /* per 64 KiB */
};

static int map_open(struct bdev *bs, json_t *opts, struct qmp_error *err)
{
    struct map_state *s = bs->state;
    const char *m = json_string_value(json_object_get(opts, "map"));

    (void)err;
    s->size = strlen(m) * 65536;
    for (size_t i = 0; i < strlen(m); i++) {
        s->map[i] = m[i] == 'x';
    }
    return 0;
}

static int64_t map_length(struct bdev *bs)
{
    return (int64_t)((struct map_state *)bs->state)->size;
}

struct map_status {
    bdev_status_cb *cb;
    void *opaque;
    unsigned st;
    uint64_t pnum;
};

static void map_status_later(void *arg)
{
    struct map_status *m = arg;

    m->cb(m->opaque, 0, m->st, m->pnum);
    free(m);
}

static int map_block_status(struct bdev *bs, uint64_t offset, uint64_t bytes,
                            bdev_status_cb *cb, void *opaque)
{
    struct map_state *s = bs->state;
    struct map_status *m = calloc(1, sizeof(*m));
    uint64_t i = offset / 65536, end = offset + bytes;
    uint8_t a = s->map[i];
    uint64_t pos = offset;

    while (pos < end && s->map[pos / 65536] == a) {
        pos = (pos / 65536 + 1) * 65536;
    }
    m->cb = cb;
    m->opaque = opaque;
    m->st = a ? BDEV_STATUS_ALLOCATED | BDEV_STATUS_DATA : 0;
    m->pnum = (pos < end ? pos : end) - offset;
    bdev_call_later(map_status_later, m);
    return 0;
}

static const struct bdev_driver map_drv = {
    .name = "testmap",
    .has_backing = true,
    .open = map_open,
    .length = map_length,
    .block_status = map_block_status,
    .state_size = sizeof(struct map_state),
};

static void link_backing(struct bdev *top, struct bdev *b)
{
    bdev_ref(b);
    b->parents++;
    top->backing = b;
}

static void check_above(struct bdev *top, struct bdev *bottom, uint64_t off,
                        uint64_t bytes, unsigned st, uint64_t pnum)
{
    struct test_io_done d = {0};

    assert_int_equal(
        bdev_is_allocated_above(top, bottom, off, bytes, test_io_status_cb, &d),
        0);
    test_io_wait(&d, 1);
    assert_int_equal(d.ret, 0);
    assert_int_equal(d.status, st);
    assert_int_equal(d.pnum, pnum);
}

static void test_allocated_above(void **state)
{
    struct bdev *top, *mid, *base;
    const uint64_t K = 65536;

    (void)state;
    bdev_register_driver(&map_drv);
    base = must_open("{'driver': 'testmap', 'node-name': 'base', 'map': "
                     "'xx'}"); /* shorter: 2 units */
    mid = must_open("{'driver': 'testmap', 'node-name': 'mid', 'map': "
                    "'..x.'}");
    top = must_open("{'driver': 'testmap', 'node-name': 'top', 'map': "
                    "'x...'}");
    link_backing(top, mid);
    link_backing(mid, base);
    check_above(top, NULL, 0, 4 * K, BDEV_STATUS_ALLOCATED, K);
    check_above(top, NULL, K, 3 * K, BDEV_STATUS_ALLOCATED, K); /* base */
    check_above(top, mid, K, 3 * K, 0, K); /* down to mid only */
    check_above(top, NULL, 2 * K, 2 * K, BDEV_STATUS_ALLOCATED, K);
    /* Past the end of the shorter base below: its zeroes are allocated
     * (QEMU 7.2); past the end of the first layer asked: nothing, pnum 0. */
    check_above(top, NULL, 3 * K, K, BDEV_STATUS_ALLOCATED, K);
    check_above(mid, NULL, 3 * K, K, BDEV_STATUS_ALLOCATED, K);
    check_above(base, NULL, 3 * K, K, 0, 0);
    check_above(top, top, K, 3 * K, 0, 3 * K);
    drop(top);
    drop(mid);
    drop(base);
}

/* ---- filters --------------------------------------------------------------
 */

static void test_filter(void **state)
{
    char *path = make_file("/var/tmp", 65536, -1);
    struct bdev *p = must_open("{'driver': 'file', 'node-name': 'p', "
                               "'filename': '%s'}",
                               path);
    struct bdev *r = must_open("{'driver': 'raw', 'node-name': 'r', "
                               "'file': 'p'}");
    struct qmp_error err = QMP_ERROR_INIT;
    uint8_t *buf = bdev_buf_alloc(4096);
    struct test_io_done d = {0};
    struct bdev *f;
    char *name;

    (void)state;
    assert_null(bdev_insert_filter(p, "copy-on-read", "#bad", &err));
    assert_string_equal(err.desc,
                        "Could not create node: Invalid node-name: '#bad'");
    qmp_error_clear(&err);
    assert_null(bdev_insert_filter(p, "copy-on-read", "r", &err));
    assert_string_equal(err.desc, "Could not create node: Duplicate nodes "
                                  "with node-name='r'");
    qmp_error_clear(&err);
    assert_null(bdev_insert_filter(p, "copy-on-read",
                                   "a23456789012345678901234567890123", &err));
    assert_string_equal(err.desc, "Could not create node: Node name too long");
    qmp_error_clear(&err);
    assert_ptr_equal(bdev_all_nodes(), r); /* nothing left behind */
    assert_int_equal(p->parents, 1);

    /* Implicit: takes r's place above p, and p's name. */
    f = bdev_insert_filter(p, "copy-on-read", NULL, &err);
    assert_non_null(f);
    assert_ptr_equal(bdev_all_nodes(), f);
    assert_true(strncmp(bdev_node_name(f), "#block", 6) == 0);
    assert_string_equal(bdev_driver_name(f), "copy-on-read");
    assert_ptr_equal(r->file, f);
    assert_ptr_equal(f->file, p);
    assert_int_equal(p->parents, 1);
    assert_int_equal(bdev_length(f), 65536);
    name = bdev_query_filename(f);
    assert_string_equal(name, path);
    free(name);
    /* Real I/O through it, directly and from the parent. */
    assert_int_equal(bdev_read(f, 4096, 4096, buf, test_io_cb, &d), 0);
    test_io_wait(&d, 1);
    assert_int_equal(d.ret, 0);
    assert_int_equal(buf[0], 8);
    assert_int_equal(bdev_read(r, 8192, 4096, buf, test_io_cb, &d), 0);
    test_io_wait(&d, 2);
    assert_int_equal(buf[4095], 23);
    assert_int_equal(bdev_write(f, 0, 4096, buf, test_io_cb, &d), 0);
    test_io_wait(&d, 3);
    assert_int_equal(d.ret, 0);
    assert_int_equal(bdev_block_status(f, 0, 65536, test_io_status_cb, &d), 0);
    test_io_wait(&d, 4);
    assert_int_equal(d.ret, 0);
    assert_true(d.status & BDEV_STATUS_DATA);
    bdev_remove_filter(f);
    assert_ptr_equal(r->file, p);
    assert_ptr_equal(bdev_all_nodes(), r);
    assert_int_equal(p->parents, 1);

    /* Named: its own json: name. */
    f = bdev_insert_filter(p, "copy-on-read", "cor", &err);
    assert_non_null(f);
    assert_ptr_equal(bdev_find("cor"), f);
    name = bdev_query_filename(f);
    assert_true(strncmp(name,
                        "json:{\"driver\": \"copy-on-read\", "
                        "\"file\": {\"driver\": \"file\"",
                        57) == 0);
    free(name);
    bdev_remove_filter(f);
    assert_null(bdev_find("cor"));
    assert_ptr_equal(r->file, p);

    drop(r);
    drop(p);
    bdev_buf_free(buf);
    unlink(path);
    free(path);
}

/* ---- drain ----------------------------------------------------------------
 */

static void test_drain(void **state)
{
    struct bdev *r = must_open("{'driver': 'raw', 'node-name': 'r', 'file': "
                               "{'driver': 'null-co', 'latency-ns': "
                               "1000000}}");
    struct test_io_done io = {0}, dr = {0};
    char buf[512];

    (void)state;
    assert_int_equal(bdev_read(r, 0, 512, buf, test_io_cb, &io), 0);
    assert_int_equal(bdev_read(r, 512, 512, buf, test_io_cb, &io), 0);
    assert_int_equal(bdev_drain(r, test_io_cb, &dr), 0);
    test_io_wait(&dr, 1);
    assert_int_equal(io.calls, 2); /* both finished before drain returned */
    /* idle node: the drain callback still comes later, not inside */
    assert_int_equal(bdev_drain(r, test_io_cb, &dr), 0);
    assert_int_equal(dr.calls, 1);
    test_io_wait(&dr, 2);
    drop(r);
}

/* ---- drained sections ----------------------------------------------------
 */

/* A user standing for a job: records its pauses and resumes, busy on
 * demand (a request in flight). */
struct tuser {
    const char *name;
    bool busy;
    int paused;
};

static char trace[512];

static bool tu_begin(void *opaque)
{
    struct tuser *u = opaque;

    u->paused++;
    strcat(trace, "+");
    strcat(trace, u->name);
    strcat(trace, " ");
    return false;
}

static void tu_end(void *opaque)
{
    struct tuser *u = opaque;

    u->paused--;
    strcat(trace, "-");
    strcat(trace, u->name);
    strcat(trace, " ");
}

static bool tu_busy(void *opaque, bool token, bool strict)
{
    (void)token;
    (void)strict;
    return ((struct tuser *)opaque)->busy;
}

static const struct bdev_user_ops tu_ops = {tu_begin, tu_end, tu_busy};

static void note(void *opaque)
{
    strcat(trace, opaque);
}

static void test_drained_sections(void **state)
{
    struct bdev *n0 = must_open("{'driver': 'null-co', 'node-name': 'n0'}");
    struct bdev *n1 = must_open("{'driver': 'raw', 'node-name': 'n1', "
                                "'file': 'n0'}");
    struct bdev *n2 = must_open("{'driver': 'raw', 'node-name': 'n2', "
                                "'file': 'n1'}");
    struct tuser a = {"a", false, 0}, b = {"b", false, 0}, c = {"c", 0, 0};
    struct bdev_user *ua, *ub, *uc, *ube;
    struct qmp_error err = QMP_ERROR_INIT;
    struct bdev_drained *d, *d2;
    struct bdev *f;

    (void)state;
    ub = bdev_user_add(n2, &tu_ops, &b, false);
    ua = bdev_user_add(n1, &tu_ops, &a, false);
    /* Over n0: its parents and theirs, newest link first: a (linked
     * after n2 opened over n1) before n2's b. Once per path. */
    trace[0] = 0;
    d = bdev_drained_begin(n0, false);
    assert_string_equal(trace, "+a +b ");
    bdev_drained_end(d);
    assert_string_equal(trace, "+a +b -a -b ");
    assert_true(bdev_drained_idle());
    /* A subtree section over n2: n2's users, then what is below. */
    trace[0] = 0;
    d = bdev_drained_begin(n2, true);
    bdev_drained_end(d);
    assert_string_equal(trace, "+b +a -b -a ");
    /* Over n2 alone: nothing below. */
    trace[0] = 0;
    d = bdev_drained_begin(n2, false);
    bdev_drained_end(d);
    assert_string_equal(trace, "+b -b ");

    /* A waiter waits for a busy user; the section's end waits too, and a
     * section begun after it hands out its pauses only then. */
    a.busy = true;
    trace[0] = 0;
    d = bdev_drained_begin(n1, false);
    bdev_drained_wait(d, note, "quiet ");
    assert_string_equal(trace, "+a +b ");
    a.busy = false;
    bdev_users_kick();
    uv_run(bdev_loop(), UV_RUN_NOWAIT);
    assert_string_equal(trace, "+a +b quiet ");
    bdev_drained_end(d);
    assert_string_equal(trace, "+a +b quiet -a -b ");
    b.busy = true;
    trace[0] = 0;
    d = bdev_drained_begin(n2, false); /* nobody waits */
    bdev_drained_end(d);
    d2 = bdev_drained_begin(n2, false);
    bdev_drained_end(d2);
    assert_string_equal(trace, "+b ");
    assert_false(bdev_drained_idle());
    bdev_when_drained_idle(note, "idle ");
    b.busy = false;
    bdev_users_kick();
    uv_run(bdev_loop(), UV_RUN_NOWAIT);
    assert_string_equal(trace, "+b -b +b -b idle ");

    /* A section begun while another waits goes first (work the wait let
     * run, as inside QEMU's poll). */
    a.busy = true;
    trace[0] = 0;
    d = bdev_drained_begin(n0, false);
    bdev_drained_wait(d, note, "outer ");
    d2 = bdev_drained_begin(n2, false);
    bdev_drained_end(d2);
    assert_string_equal(trace, "+a +b +b -b ");
    a.busy = false;
    bdev_users_kick();
    uv_run(bdev_loop(), UV_RUN_NOWAIT);
    bdev_drained_end(d);
    assert_string_equal(trace, "+a +b +b -b outer -a -b ");

    /* A user removed inside a section gets nothing back. */
    trace[0] = 0;
    uc = bdev_user_add(n0, &tu_ops, &c, false);
    d = bdev_drained_begin(n0, false);
    bdev_user_remove(uc);
    bdev_drained_end(d);
    assert_string_equal(trace, "+c +a +b -a -b ");

    /* A filter goes in and out inside sections over its node; a
     * BlockBackend-like user on the filter moves down with the parents. */
    trace[0] = 0;
    f = bdev_insert_filter(n1, "copy-on-read", NULL, &err);
    assert_non_null(f);
    /* (the end walks the new graph: the filter's link is n1's newest) */
    assert_string_equal(trace, "+a +b -b -a ");
    ube = bdev_user_add(f, NULL, NULL, true);
    assert_ptr_equal(bdev_user_node(ube), f);
    trace[0] = 0;
    bdev_remove_filter(f);
    assert_string_equal(trace, "+b -b ");
    assert_ptr_equal(bdev_user_node(ube), n1);
    assert_ptr_equal(n2->file, n1);
    bdev_user_remove(ube);

    bdev_user_remove(ua);
    bdev_user_remove(ub);
    assert_true(bdev_drained_idle());
    drop(n2);
    drop(n1);
    drop(n0);
}

/* Frozen links and copy-on-read's bottom. */
static void test_frozen_links(void **state)
{
    struct bdev *n0 = must_open("{'driver': 'null-co', 'node-name': 'n0'}");
    struct bdev *n1 = must_open("{'driver': 'raw', 'node-name': 'n1', "
                                "'file': 'n0'}");
    struct bdev *c1, *c2;
    struct qmp_error err = QMP_ERROR_INIT;

    (void)state;
    expect_open_error("{'driver': 'copy-on-read', 'node-name': 'c0', "
                      "'file': 'n1', 'bottom': 'nosuch'}",
                      "Bottom node 'nosuch' not found");
    c1 = must_open("{'driver': 'copy-on-read', 'node-name': 'c1', "
                   "'file': 'n1', 'bottom': 'n1'}");
    expect_open_error("{'driver': 'copy-on-read', 'node-name': 'c0', "
                      "'file': 'c1', 'bottom': 'c1'}",
                      "Bottom node 'c1' is a filter");
    /* c1's own link to n1 is frozen: a bottom below it cannot pass. */
    expect_open_error("{'driver': 'copy-on-read', 'node-name': 'c0', "
                      "'file': 'c1', 'bottom': 'n1'}",
                      "Cannot change 'file' link from 'c1' to 'n1'");
    assert_int_equal(bdev_chain_frozen(c1, n1, &err), -EPERM);
    qmp_error_clear(&err);
    c2 = must_open("{'driver': 'copy-on-read', 'node-name': 'c2', "
                   "'file': 'c1'}");
    /* Not below: an error (QEMU 7.2 loops forever here). */
    assert_int_equal(bdev_chain_freeze(n1, c2, &err), -EINVAL);
    assert_string_equal(err.desc, "'c2' is not in the backing chain of 'n1'");
    qmp_error_clear(&err);
    drop(c2);
    drop(c1); /* thaws */
    c1 = must_open("{'driver': 'copy-on-read', 'node-name': 'c1', "
                   "'file': 'n1'}");
    assert_int_equal(bdev_chain_frozen(c1, n1, &err), 0);
    assert_int_equal(bdev_chain_freeze(c1, n1, &err), 0);
    assert_int_equal(bdev_chain_frozen(c1, n1, &err), -EPERM);
    assert_string_equal(err.desc, "Cannot change 'file' link from 'c1' "
                                  "to 'n1'");
    qmp_error_clear(&err);
    bdev_link_freeze(c1, false);
    assert_int_equal(bdev_chain_frozen(c1, n1, &err), 0);
    drop(c1);
    drop(n1);
    drop(n0);
}

/* ---- locks against qemu-img / qemu-io ------------------------------------ */

static bool have(const char *tool)
{
    char cmd[128];

    snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null 2>&1", tool);
    return system(cmd) == 0;
}

/* Someone holds QEMU's "unshared write" byte (201) of the image. */
static bool write_lock_held(const char *path)
{
    struct flock fl = {
        .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 201, .l_len = 1};
    int fd = open(path, O_RDONLY);
    bool held;

    if (fd < 0) {
        return false;
    }
    held = fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK;
    close(fd);
    return held;
}

static void test_locks(void **state)
{
    char dir[] = "/var/tmp/bdevlock.XXXXXX";
    char img[300], cmd[700], out[4096] = "";
    struct qmp_error err = QMP_ERROR_INIT;
    struct bdev *q;
    FILE *p, *io;
    size_t n;

    (void)state;
    if (!have("qemu-img") || !have("qemu-io")) {
        skip();
    }
    assert_non_null(mkdtemp(dir));
    snprintf(img, sizeof(img), "%s/a.qcow2", dir);
    snprintf(cmd, sizeof(cmd), "qemu-img create -q -f qcow2 %s 1M", img);
    assert_int_equal(system(cmd), 0);

    /* We hold it for write: qemu-img must refuse. */
    q = must_open("{'driver': 'qcow2', 'node-name': 'q', 'file': {'driver': "
                  "'file', 'filename': '%s'}}",
                  img);
    snprintf(cmd, sizeof(cmd), "qemu-img info %s 2>&1", img);
    p = popen(cmd, "r");
    n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = '\0';
    assert_int_not_equal(pclose(p), 0);
    assert_non_null(strstr(out, "Failed to get shared \"write\" lock"));
    drop(q);
    /* released at close */
    snprintf(cmd, sizeof(cmd), "qemu-img info %s >/dev/null 2>&1", img);
    assert_int_equal(system(cmd), 0);

    /* qemu-io holds it for write: we must refuse. */
    snprintf(cmd, sizeof(cmd), "qemu-io %s", img);
    io = popen(cmd, "w"); /* waits on its stdin while holding the image */
    assert_non_null(io);
    /* Wait until qemu-io holds its lock bytes; looking with F_OFD_GETLK
     * takes no lock, so it cannot disturb qemu-io's own start-up. */
    for (int i = 0; i < 3000 && !write_lock_held(img); i++) {
        usleep(10000);
    }
    assert_true(write_lock_held(img));
    snprintf(cmd, sizeof(cmd),
             "{'driver': 'qcow2', 'node-name': 'q', 'file': {'driver': "
             "'file', 'filename': '%s'}}",
             img);
    assert_null(open_json(cmd, &err));
    assert_string_equal(err.desc, "Failed to get \"write\" lock");
    qmp_error_clear(&err);
    /* read-only also refuses a writer */
    snprintf(cmd, sizeof(cmd),
             "{'driver': 'qcow2', 'node-name': 'q', 'read-only': true, "
             "'file': {'driver': 'file', 'filename': '%s'}}",
             img);
    assert_null(open_json(cmd, &err));
    assert_string_equal(err.desc, "Failed to get shared \"write\" lock");
    qmp_error_clear(&err);
    /* locking=off opens anyway (read-only, to stay safe) */
    snprintf(cmd, sizeof(cmd),
             "{'driver': 'qcow2', 'node-name': 'q', 'read-only': true, "
             "'file': {'driver': 'file', 'locking': 'off', 'filename': "
             "'%s'}}",
             img);
    q = open_json(cmd, &err);
    assert_non_null(q);
    drop(q);
    fputs("quit\n", io);
    pclose(io);

    /* Two formats on one protocol node. */
    snprintf(cmd, sizeof(cmd),
             "{'driver': 'file', 'node-name': 'n0', 'filename': '%s'}", img);
    assert_non_null(open_json(cmd, &err));
    q = must_open("{'driver': 'qcow2', 'node-name': 'q0', 'file': 'n0'}");
    expect_open_error("{'driver': 'qcow2', 'node-name': 'q1', 'file': 'n0'}",
                      "Permission conflict on node 'n0': permissions "
                      "'write, resize' are both required by node 'q0' (uses "
                      "node 'n0' as 'file' child) and unshared by node 'q1' "
                      "(uses node 'n0' as 'file' child).");
    drop(q);
    drop(bdev_find("n0"));
    unlink(img);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_names, test_io_close_all),
        cmocka_unit_test_teardown(test_claims_refs, test_io_close_all),
        cmocka_unit_test_teardown(test_null, test_io_close_all),
        cmocka_unit_test_teardown(test_null_latency, test_io_close_all),
        cmocka_unit_test_teardown(test_file_native, test_io_close_all),
        cmocka_unit_test_teardown(test_file_pool, test_io_close_all),
        cmocka_unit_test_teardown(test_file_unaligned, test_io_close_all),
        cmocka_unit_test_teardown(test_file_grow, test_io_close_all),
        cmocka_unit_test_teardown(test_file_errors, test_io_close_all),
        cmocka_unit_test_teardown(test_raw, test_io_close_all),
        cmocka_unit_test_teardown(test_blkdebug_recipe, test_io_close_all),
        cmocka_unit_test_teardown(test_blkdebug_rules, test_io_close_all),
        cmocka_unit_test_teardown(test_allocated_above, test_io_close_all),
        cmocka_unit_test_teardown(test_filter, test_io_close_all),
        cmocka_unit_test_teardown(test_drain, test_io_close_all),
        cmocka_unit_test_teardown(test_drained_sections, test_io_close_all),
        cmocka_unit_test_teardown(test_frozen_links, test_io_close_all),
        cmocka_unit_test_teardown(test_locks, test_io_close_all),
    };

    return cmocka_run_group_tests(tests, test_io_setup, teardown);
}
