/* blockdev-add / blockdev-del / query-named-block-nodes through a QMP
 * session, and the node options with effects on I/O: blockdev-del of a
 * node with requests in flight (drained first), detect-zeroes, actual-size
 * of a growing file, cache.direct. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cmocka.h>

#include "backends/bdev_int.h"
#include "protocol/json.h"
#include "protocol/qmp.h"
#include "tests/fakes/scratch.h"
#include "tests/fakes/test_io.h"

#define TMPFS_MAGIC 0x01021994

/* ---- a session whose replies land in a list ------------------------------ */

struct client {
    struct qmp_session *s;
    json_t *lines; /* decoded replies, oldest first */
};

static void client_send(void *opaque, const char *line, size_t len)
{
    struct client *c = opaque;
    json_error_t jerr;
    json_t *v = json_loadb(line, len, 0, &jerr);

    assert_non_null(v);
    if (json_object_get(v, "QMP") || json_object_get(v, "event")) {
        json_decref(v); /* greeting, events */
        return;
    }
    json_array_append_new(c->lines, v);
}

static const struct qmp_session_ops client_ops = {.send = client_send};

static void client_open(struct client *c)
{
    c->lines = json_array();
    c->s = qmp_session_new(&client_ops, c, 1 << 20);
    qmp_session_greet(c->s);
    qmp_session_feed(c->s, "{'execute': 'qmp_capabilities'}", 31);
    assert_int_equal(json_array_size(c->lines), 1);
    json_array_clear(c->lines);
}

static void client_close(struct client *c)
{
    qmp_session_stop(c->s);
    qmp_session_free(c->s);
    json_decref(c->lines);
}

__attribute__((format(printf, 2, 3))) static void send_cmd(struct client *c,
                                                           const char *fmt, ...)
{
    char *text;
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vasprintf(&text, fmt, ap);
    va_end(ap);
    assert_true(n > 0);
    qmp_session_feed(c->s, text, (size_t)n);
    free(text);
}

/* Waits (running the loop) for the next reply and takes it. */
static json_t *next_reply(struct client *c)
{
    json_t *r;

    while (json_array_size(c->lines) == 0) {
        uv_run(bdev_loop(), UV_RUN_ONCE);
    }
    r = json_incref(json_array_get(c->lines, 0));
    json_array_remove(c->lines, 0);
    return r;
}

static void expect_ok(struct client *c)
{
    json_t *r = next_reply(c);

    if (!json_object_get(r, "return")) {
        char *t = json_dumps(r, 0);

        fail_msg("expected success, got %s", t);
    }
    json_decref(r);
}

static void expect_error(struct client *c, const char *desc)
{
    json_t *r = next_reply(c);
    json_t *e = json_object_get(r, "error");

    assert_non_null(e);
    assert_string_equal(json_string_value(json_object_get(e, "desc")), desc);
    json_decref(r);
}

static json_t *query_node(struct client *c, const char *name)
{
    json_t *r, *found = NULL;
    size_t i;
    json_t *n;

    send_cmd(c, "{'execute': 'query-named-block-nodes', "
                "'arguments': {'flat': true}}");
    r = next_reply(c);
    json_array_foreach(json_object_get(r, "return"), i, n) {
        if (strcmp(json_string_value(json_object_get(n, "node-name")), name) ==
            0) {
            found = json_incref(n);
        }
    }
    json_decref(r);
    return found;
}

static bool have_qemu_img(void)
{
    return system("command -v qemu-img >/dev/null 2>&1") == 0;
}

/* ---- tests -----------------------------------------------------------------
 */

/* A node with reads in flight is drained, then deleted; the reply comes
 * after the reads completed; meanwhile another client's blockdev-del of the
 * same node is refused (in use), and the node is still listed. */
static void test_del_drains(void **state)
{
    struct client a, b;
    struct test_io_done d = {0};
    struct bdev *bs;
    char buf[4][512];
    json_t *r;

    (void)state;
    client_open(&a);
    client_open(&b);
    send_cmd(&a, "{'execute': 'blockdev-add', 'arguments': {'driver': "
                 "'null-co', 'node-name': 'slow', 'latency-ns': 20000000}}");
    expect_ok(&a);
    bs = bdev_find("slow");
    assert_non_null(bs);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(bdev_read(bs, 0, 512, buf[i], test_io_cb, &d), 0);
    }
    send_cmd(&a, "{'execute': 'blockdev-del', 'arguments': "
                 "{'node-name': 'slow'}, 'id': 1}");
    /* Deferred: no reply while the reads are in flight. */
    assert_int_equal(json_array_size(a.lines), 0);
    assert_int_equal(d.calls, 0);
    send_cmd(&b, "{'execute': 'blockdev-del', 'arguments': "
                 "{'node-name': 'slow'}}");
    expect_error(&b, "Block device slow is in use");
    r = next_reply(&a);
    assert_int_equal(d.calls, 4); /* every read finished first */
    assert_int_equal(d.ret, 0);
    assert_non_null(json_object_get(r, "return"));
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 1);
    json_decref(r);
    assert_null(bdev_find("slow"));
    /* Errors keep QEMU's words. */
    send_cmd(&a, "{'execute': 'blockdev-del', 'arguments': "
                 "{'node-name': 'slow'}}");
    expect_error(&a, "Failed to find node with node-name='slow'");
    client_close(&a);
    client_close(&b);
}

/* Ordering: a node used by another is "in use" until its parent is gone;
 * implicit children cannot be deleted. */
static void test_del_order(void **state)
{
    struct client a;
    FILE *f;
    json_t *n;

    (void)state;
    f = fopen(scratch_path("o.raw"), "w");
    assert_non_null(f);
    assert_int_equal(ftruncate(fileno(f), 1 << 20), 0);
    fclose(f);
    client_open(&a);
    send_cmd(&a,
             "{'execute': 'blockdev-add', 'arguments': {'driver': 'file', "
             "'node-name': 'proto', 'filename': '%s'}}",
             scratch_path("o.raw"));
    expect_ok(&a);
    send_cmd(&a, "{'execute': 'blockdev-add', 'arguments': {'driver': 'raw', "
                 "'node-name': 'fmt', 'file': 'proto'}}");
    expect_ok(&a);
    send_cmd(&a, "{'execute': 'blockdev-del', 'arguments': "
                 "{'node-name': 'proto'}}");
    expect_error(&a, "Block device proto is in use");
    send_cmd(&a, "{'execute': 'blockdev-del', 'arguments': "
                 "{'node-name': 'fmt'}}");
    expect_ok(&a);
    send_cmd(&a, "{'execute': 'blockdev-del', 'arguments': "
                 "{'node-name': 'proto'}}");
    expect_ok(&a);

    send_cmd(&a,
             "{'execute': 'blockdev-add', 'arguments': {'driver': 'raw', "
             "'node-name': 'fmt2', 'file': {'driver': 'file', "
             "'filename': '%s'}}}",
             scratch_path("o.raw"));
    expect_ok(&a);
    n = query_node(&a, "fmt2");
    assert_non_null(n);
    json_decref(n);
    {
        const char *child = bdev_node_name(bdev_file_child(bdev_find("fmt2")));
        char want[128];

        assert_true(child[0] == '#');
        snprintf(want, sizeof(want), "Node %s is not owned by the monitor",
                 child);
        send_cmd(&a,
                 "{'execute': 'blockdev-del', 'arguments': "
                 "{'node-name': '%s'}}",
                 child);
        expect_error(&a, want);
    }
    send_cmd(&a, "{'execute': 'blockdev-del', 'arguments': "
                 "{'node-name': 'fmt2'}}");
    expect_ok(&a);
    assert_null(bdev_all_nodes());
    client_close(&a);
}

/* detect-zeroes=on: a buffer of zeroes becomes write-zeroes (qcow2 then
 * records a zero cluster instead of allocating one); off writes data. */
static void test_detect_zeroes(void **state)
{
    struct client a;
    struct test_io_done d = {0};
    struct bdev *on, *off;
    uint8_t *zero = bdev_buf_alloc(65536), *rd = bdev_buf_alloc(65536);
    uint64_t before;
    json_t *n;

    (void)state;
    if (!have_qemu_img()) {
        skip();
    }
    memset(zero, 0, 65536);
    {
        char cmd[1200];

        snprintf(cmd, sizeof(cmd),
                 "qemu-img create -q -f qcow2 '%s' 4M && "
                 "qemu-img create -q -f qcow2 '%s' 4M && "
                 "qemu-io -f qcow2 -c 'write -q -P 0x77 0 128k' '%s' && "
                 "qemu-io -f qcow2 -c 'write -q -P 0x77 0 128k' '%s'",
                 scratch_path("dz_on.qcow2"), scratch_path("dz_off.qcow2"),
                 scratch_path("dz_on.qcow2"), scratch_path("dz_off.qcow2"));
        assert_int_equal(system(cmd), 0);
    }
    client_open(&a);
    send_cmd(&a,
             "{'execute': 'blockdev-add', 'arguments': {'driver': 'qcow2', "
             "'node-name': 'on', 'detect-zeroes': 'on', 'file': "
             "{'driver': 'file', 'filename': '%s'}}}",
             scratch_path("dz_on.qcow2"));
    expect_ok(&a);
    send_cmd(&a,
             "{'execute': 'blockdev-add', 'arguments': {'driver': 'qcow2', "
             "'node-name': 'off', 'file': {'driver': 'file', "
             "'filename': '%s'}}}",
             scratch_path("dz_off.qcow2"));
    expect_ok(&a);
    n = query_node(&a, "on");
    assert_string_equal(json_string_value(json_object_get(n, "detect_zeroes")),
                        "on");
    json_decref(n);
    on = bdev_find("on");
    off = bdev_find("off");

    before = bdev_detected_zero_writes();
    /* Over data and over a hole. */
    assert_int_equal(bdev_write(on, 0, 65536, zero, test_io_cb, &d), 0);
    assert_int_equal(bdev_write(on, 1 << 20, 65536, zero, test_io_cb, &d), 0);
    assert_int_equal(bdev_write(off, 0, 65536, zero, test_io_cb, &d), 0);
    test_io_wait(&d, 3);
    assert_int_equal(d.ret, 0);
    assert_int_equal(bdev_detected_zero_writes() - before, 2);

    assert_int_equal(bdev_block_status(on, 0, 65536, test_io_status_cb, &d), 0);
    test_io_wait(&d, 4);
    assert_true(d.status & BDEV_STATUS_ZERO);
    assert_false(d.status & BDEV_STATUS_DATA);
    assert_int_equal(
        bdev_block_status(on, 1 << 20, 65536, test_io_status_cb, &d), 0);
    test_io_wait(&d, 5);
    assert_true(d.status & BDEV_STATUS_ZERO);
    assert_int_equal(bdev_block_status(off, 0, 65536, test_io_status_cb, &d),
                     0);
    test_io_wait(&d, 6);
    assert_true(d.status & BDEV_STATUS_DATA);

    memset(rd, 0xee, 65536);
    assert_int_equal(bdev_read(on, 0, 65536, rd, test_io_cb, &d), 0);
    test_io_wait(&d, 7);
    assert_memory_equal(rd, zero, 65536);
    /* The data next to it is untouched. */
    assert_int_equal(bdev_read(on, 65536, 65536, rd, test_io_cb, &d), 0);
    test_io_wait(&d, 8);
    assert_int_equal(rd[0], 0x77);
    assert_int_equal(rd[65535], 0x77);
    /* A partial-cluster zero write inside data. */
    before = bdev_detected_zero_writes();
    assert_int_equal(bdev_write(on, 65536 + 4096, 4096, zero, test_io_cb, &d),
                     0);
    test_io_wait(&d, 9);
    assert_int_equal(d.ret, 0);
    assert_int_equal(bdev_detected_zero_writes() - before, 1);
    assert_int_equal(bdev_read(on, 65536, 65536, rd, test_io_cb, &d), 0);
    test_io_wait(&d, 10);
    for (int i = 0; i < 65536; i++) {
        assert_int_equal(rd[i], i >= 4096 && i < 8192 ? 0 : 0x77);
    }
    /* A buffer that is zero except its last byte is data. */
    zero[65535] = 1;
    before = bdev_detected_zero_writes();
    assert_int_equal(bdev_write(on, 2 << 20, 65536, zero, test_io_cb, &d), 0);
    test_io_wait(&d, 11);
    assert_int_equal(bdev_detected_zero_writes(), before);

    send_cmd(&a, "{'execute': 'blockdev-del', 'arguments': "
                 "{'node-name': 'on'}}");
    expect_ok(&a);
    send_cmd(&a, "{'execute': 'blockdev-del', 'arguments': "
                 "{'node-name': 'off'}}");
    expect_ok(&a);
    {
        char cmd[600];

        snprintf(cmd, sizeof(cmd),
                 "qemu-img check -q '%s' && qemu-io -r -f qcow2 -c "
                 "'read -q -P 0 0 64k' -c 'read -q -P 0x77 64k 4k' "
                 "-c 'read -q -P 0 68k 4k' -c 'read -q -P 0x77 72k 56k' '%s' "
                 "| grep -q -i -e fail -e mismatch && exit 1 || exit 0",
                 scratch_path("dz_on.qcow2"), scratch_path("dz_on.qcow2"));
        assert_int_equal(system(cmd), 0);
    }
    bdev_buf_free(zero);
    bdev_buf_free(rd);
    client_close(&a);
}

/* While a file grows, the preallocated tail is not reported as the image's
 * size on disk; after close the file is cut back to its data. */
static void test_actual_size_growing(void **state)
{
    struct client a;
    struct test_io_done d = {0};
    struct bdev *bs;
    uint8_t *buf = bdev_buf_alloc(1 << 20);
    struct stat sb;
    json_t *n;
    int64_t asz;
    FILE *f;

    (void)state;
    f = fopen(scratch_path("grow.raw"), "w");
    assert_non_null(f);
    fclose(f);
    client_open(&a);
    send_cmd(&a,
             "{'execute': 'blockdev-add', 'arguments': {'driver': 'file', "
             "'node-name': 'g', 'filename': '%s'}}",
             scratch_path("grow.raw"));
    expect_ok(&a);
    bs = bdev_find("g");
    memset(buf, 0x42, 1 << 20);
    assert_int_equal(bdev_write(bs, 0, 1 << 20, buf, test_io_cb, &d), 0);
    test_io_wait(&d, 1);
    assert_int_equal(d.ret, 0);
    assert_int_equal(bdev_length(bs), 1 << 20);
    n = query_node(&a, "g");
    asz = json_integer_value(
        json_object_get(json_object_get(n, "image"), "actual-size"));
    json_decref(n);
    /* 1 MiB of data (plus at most a block of slack), not 1 MiB + the
     * preallocation step. */
    assert_true(asz >= (1 << 20) - 4096);
    assert_true(asz <= (1 << 20) + 8192);
    send_cmd(&a, "{'execute': 'blockdev-del', 'arguments': "
                 "{'node-name': 'g'}}");
    expect_ok(&a);
    assert_int_equal(stat(scratch_path("grow.raw"), &sb), 0);
    assert_int_equal(sb.st_size, 1 << 20);
    bdev_buf_free(buf);
    client_close(&a);
}

/* cache.direct is reported as given; on is refused where O_DIRECT is not
 * available (tmpfs), off and unspecified fall back to buffered I/O. */
static void test_cache_direct(void **state)
{
    struct client a;
    struct statfs fs;
    const char *shm = "/dev/shm/test_bdev_qmp.raw";
    char want[256];
    json_t *n;
    FILE *f;
    int fd;

    (void)state;
    client_open(&a);
    f = fopen(scratch_path("c.raw"), "w");
    assert_non_null(f);
    assert_int_equal(ftruncate(fileno(f), 65536), 0);
    fclose(f);
    send_cmd(&a,
             "{'execute': 'blockdev-add', 'arguments': {'driver': 'raw', "
             "'node-name': 'cd', 'cache': {'direct': true}, 'file': "
             "{'driver': 'file', 'filename': '%s'}}}",
             scratch_path("c.raw"));
    expect_ok(&a);
    n = query_node(&a, "cd");
    assert_true(
        json_is_true(json_object_get(json_object_get(n, "cache"), "direct")));
    json_decref(n);
    send_cmd(&a, "{'execute': 'blockdev-add', 'arguments': {'driver': "
                 "'null-co', 'node-name': 'nd'}}");
    expect_ok(&a);
    n = query_node(&a, "nd");
    assert_true(
        json_is_false(json_object_get(json_object_get(n, "cache"), "direct")));
    json_decref(n);

    /* tmpfs refuses O_DIRECT before Linux 6.6; later it accepts it and
     * there is no such file system to try here. */
    fd =
        open("/dev/shm/test_bdev_qmp.probe", O_CREAT | O_RDWR | O_DIRECT, 0600);
    if (fd >= 0) {
        close(fd);
    }
    unlink("/dev/shm/test_bdev_qmp.probe");
    if (fd < 0 && errno == EINVAL && statfs("/dev/shm", &fs) == 0 &&
        fs.f_type == TMPFS_MAGIC && (f = fopen(shm, "w")) != NULL) {
        assert_int_equal(ftruncate(fileno(f), 65536), 0);
        fclose(f);
        send_cmd(&a,
                 "{'execute': 'blockdev-add', 'arguments': {'driver': "
                 "'file', 'node-name': 's1', 'filename': '%s', "
                 "'cache': {'direct': true}}}",
                 shm);
        snprintf(want, sizeof(want), "Could not open '%s': Invalid argument",
                 shm);
        expect_error(&a, want);
        send_cmd(&a,
                 "{'execute': 'blockdev-add', 'arguments': {'driver': "
                 "'file', 'node-name': 's2', 'filename': '%s', "
                 "'cache': {'direct': false}}}",
                 shm);
        expect_ok(&a);
        send_cmd(&a, "{'execute': 'blockdev-del', 'arguments': "
                     "{'node-name': 's2'}}");
        expect_ok(&a);
        unlink(shm);
    }
    send_cmd(&a, "{'execute': 'blockdev-del', 'arguments': "
                 "{'node-name': 'cd'}}");
    expect_ok(&a);
    send_cmd(&a, "{'execute': 'blockdev-del', 'arguments': "
                 "{'node-name': 'nd'}}");
    expect_ok(&a);
    client_close(&a);
}

static int setup(void **state)
{
    if (scratch_make("test_bdev_qmp", NULL) < 0 || test_io_setup(state) < 0) {
        return -1;
    }
    qmp_core_init();
    bdev_qmp_init();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    bdev_close_all();
    uv_run(bdev_loop(), UV_RUN_NOWAIT);
    qmp_reset();
    return scratch_remove();
}

/* ---- an open that completes later ----------------------------------------
 */

/* A driver whose open waits (as a network handshake would): open_start
 * returns at once, the test completes it from the loop. */
static struct bdev *later_bs;
static int later_ret;
static int later_closed;

static int later_open_start(struct bdev *bs, json_t *opts,
                            struct qmp_error *err)
{
    (void)opts;
    (void)err;
    assert_null(later_bs);
    later_bs = bs;
    return 0;
}

static void later_complete(void *arg)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct bdev *bs = later_bs;

    (void)arg;
    later_bs = NULL;
    if (later_ret < 0) {
        qmp_error_setg(&err, "Failed to connect: nobody there");
    }
    bdev_open_complete(bs, later_ret, &err);
    assert_false(qmp_error_is_set(&err)); /* taken over */
}

static void later_close(struct bdev *bs)
{
    (void)bs;
    later_closed++;
}

static int64_t later_length(struct bdev *bs)
{
    (void)bs;
    return 1 << 20;
}

static const struct bdev_driver later_drv = {
    .name = "x-later",
    .options_type = "BlockdevOptionsNull",
    .open_start = later_open_start,
    .close = later_close,
    .length = later_length,
};

/* Runs the loop until the fake driver's open was started. */
static void wait_later_started(void)
{
    while (!later_bs) {
        uv_run(bdev_loop(), UV_RUN_ONCE);
    }
}

/* blockdev-add of a node whose driver completes later replies only once
 * the open is done, in order with what the client sent after it; other
 * clients are served meanwhile and do not see the node; a failed open
 * gives the driver's error and leaves nothing behind. */
static void test_open_later(void **state)
{
    struct client a, b;
    json_t *r;

    (void)state;
    bdev_register_driver(&later_drv);
    client_open(&a);
    client_open(&b);

    send_cmd(&a, "{'execute': 'blockdev-add', 'arguments': {'driver': "
                 "'x-later', 'node-name': 'n1'}, 'id': 1}");
    send_cmd(&a, "{'execute': 'query-version', 'id': 2}");
    wait_later_started();
    assert_int_equal(json_array_size(a.lines), 0);
    /* Another client meanwhile: served, the node is not there yet, and
     * its name is taken. */
    assert_null(query_node(&b, "n1"));
    send_cmd(&b, "{'execute': 'blockdev-add', 'arguments': {'driver': "
                 "'null-co', 'node-name': 'n1'}}");
    expect_error(&b, "Duplicate nodes with node-name='n1'");
    send_cmd(&b, "{'execute': 'blockdev-add', 'arguments': {'driver': "
                 "'null-co', 'node-name': 'other'}}");
    expect_ok(&b);
    assert_null(bdev_find("n1"));
    assert_int_equal(json_array_size(a.lines), 0);

    later_ret = 0;
    bdev_call_later(later_complete, NULL);
    r = next_reply(&a);
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 1);
    assert_non_null(json_object_get(r, "return"));
    json_decref(r);
    r = next_reply(&a);
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 2);
    assert_non_null(json_object_get(r, "return"));
    json_decref(r);
    assert_non_null(bdev_find("n1"));
    r = query_node(&b, "n1");
    assert_non_null(r);
    assert_string_equal(json_string_value(json_object_get(r, "drv")),
                        "x-later");
    json_decref(r);

    /* As the file of a format blockdev-add opens: the format opens once
     * its file did. */
    send_cmd(&a, "{'execute': 'blockdev-add', 'arguments': {'driver': "
                 "'raw', 'node-name': 'r', 'file': {'driver': 'x-later'}}}");
    wait_later_started();
    assert_int_equal(json_array_size(a.lines), 0);
    assert_null(bdev_find("r"));
    bdev_call_later(later_complete, NULL);
    expect_ok(&a);
    assert_non_null(bdev_find("r"));
    assert_int_equal(bdev_length(bdev_find("r")), 1 << 20);
    /* Capabilities, asked once: raw can what its file can (this one has
     * no request path at all), null-co serves write-zeroes; nobody
     * discards. A request the node cannot serve is refused up front. */
    assert_true(bdev_caps(bdev_find("other"))->write_zeroes);
    assert_false(bdev_caps(bdev_find("other"))->discard);
    assert_false(bdev_caps(bdev_find("r"))->write_zeroes);
    assert_int_equal(bdev_caps(bdev_find("r"))->mem_align,
                     bdev_mem_align(bdev_find("r")));
    assert_int_equal(
        bdev_write_zeroes(bdev_find("r"), 0, 512, test_io_cb, NULL), -ENOTSUP);

    /* An open that fails later: the driver's error, no node, name free. */
    later_ret = -EIO;
    send_cmd(&a, "{'execute': 'blockdev-add', 'arguments': {'driver': "
                 "'x-later', 'node-name': 'n2'}}");
    wait_later_started();
    send_cmd(&b, "{'execute': 'query-version'}");
    expect_ok(&b);
    assert_int_equal(json_array_size(a.lines), 0);
    bdev_call_later(later_complete, NULL);
    expect_error(&a, "Failed to connect: nobody there");
    assert_null(bdev_find("n2"));
    assert_null(query_node(&b, "n2"));
    send_cmd(&b, "{'execute': 'blockdev-add', 'arguments': {'driver': "
                 "'null-co', 'node-name': 'n2'}}");
    expect_ok(&b);

    /* A driver that opens its own children cannot wait for one. */
    send_cmd(&a, "{'execute': 'blockdev-add', 'arguments': {'driver': "
                 "'blkdebug', 'node-name': 'bd', 'image': "
                 "{'driver': 'x-later'}}}");
    expect_error(&a, "Driver 'x-later' completes its open later: it cannot "
                     "be opened here");
    assert_null(later_bs);

    /* Closing a pending open at shutdown cancels it (the driver's close),
     * and its client gets an error. */
    later_ret = 0;
    later_closed = 0;
    send_cmd(&a, "{'execute': 'blockdev-add', 'arguments': {'driver': "
                 "'x-later', 'node-name': 'n3'}}");
    wait_later_started();
    later_bs = NULL;
    bdev_close_all();
    assert_int_equal(later_closed, 1 + 2); /* n3, then n1 and r's file */
    expect_error(&a, "Could not open node: Operation canceled");
    client_close(&a);
    client_close(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_del_drains, test_io_close_all),
        cmocka_unit_test_teardown(test_del_order, test_io_close_all),
        cmocka_unit_test_teardown(test_detect_zeroes, test_io_close_all),
        cmocka_unit_test_teardown(test_actual_size_growing, test_io_close_all),
        cmocka_unit_test_teardown(test_cache_direct, test_io_close_all),
        cmocka_unit_test_teardown(test_open_later, test_io_close_all),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
