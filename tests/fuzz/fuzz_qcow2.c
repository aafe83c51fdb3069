/* libFuzzer target: a qcow2 image made of the fuzzer's bytes, opened
 * read-only through the block layer (qcow2 over file), then read: its
 * allocation map walked with block status, a few ranges read (through
 * L1/L2, compressed clusters, backing files), then closed.
 *
 * The work directory also holds base.qcow2 and base.raw so images naming a
 * backing file of that name open a real chain. Names outside the directory
 * are refused (fuzz_sandbox.h). The oracle is the sanitizers plus: a read or
 * status call either fails cleanly or succeeds with a sane answer.
 */
#include <stdint.h>
#include <uv.h>

#include "backends/bdev.h"
#include "backends/bdev_int.h"
#include "tests/fakes/test_io.h"
#include "tests/fuzz/fuzz_sandbox.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_sandbox_init(
        "qcow2", "qemu-img create -q -f qcow2 base.qcow2 1M && "
                 "qemu-io -c 'write -P 0x11 0 64k' base.qcow2 >/dev/null && "
                 "qemu-img create -q -f raw base.raw 1M");
    if (bdev_init(uv_default_loop()) < 0) {
        abort();
    }
    return 0;
}

/* Reads [off, off + len) clipped to the image and aligned as the node
 * wants. */
static void read_range(struct bdev *bs, int64_t size, uint64_t off,
                       uint64_t len)
{
    uint64_t align = bdev_mem_align(bs);
    void *buf;

    if (align < 512) {
        align = 512;
    }
    off -= off % align;
    if (size <= 0 || off >= (uint64_t)size) {
        return;
    }
    if (len > (uint64_t)size - off) {
        len = (uint64_t)size - off;
    }
    len -= len % align;
    if (len == 0) {
        return;
    }
    buf = bdev_buf_alloc(len);
    if (!buf) {
        abort();
    }
    test_io_read(bs, off, len, buf); /* fails or not: both are fine */
    bdev_buf_free(buf);
}

static void walk_status(struct bdev *bs, int64_t size)
{
    uint64_t off = 0;

    for (int i = 0; i < 256 && size > 0 && off < (uint64_t)size; i++) {
        struct test_io_done d = {0};

        if (bdev_block_status(bs, off, (uint64_t)size - off, test_io_status_cb,
                              &d) < 0 ||
            test_io_wait(&d, 1) < 0) {
            return;
        }
        if (d.pnum == 0 || d.pnum > (uint64_t)size - off) {
            fprintf(stderr, "block status: pnum %llu at %llu of %lld\n",
                    (unsigned long long)d.pnum, (unsigned long long)off,
                    (long long)size);
            abort();
        }
        if (d.status & BDEV_STATUS_DATA) {
            read_range(bs, size, off, d.pnum < 65536 ? d.pnum : 65536);
        }
        off += d.pnum;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct bdev *bs;
    json_t *opts;
    int64_t len;

    fuzz_write_file("img.qcow2", data, size);
    fuzz_guard = true;
    /* Small caches: the default sizes them from the (fuzzed) disk size,
     * up to 36 MiB per open, which only slows the fuzzer down. */
    opts = json_pack("{s:s, s:s, s:b, s:i, s:i, s:{s:s, s:s}}", "driver",
                     "qcow2", "node-name", "fz", "read-only", 1,
                     "l2-cache-size", 262144, "refcount-cache-size", 65536,
                     "file", "driver", "file", "filename", "img.qcow2");
    bs = bdev_open_node(opts, true, &err);
    json_decref(opts);
    if (!bs) {
        if (!err.desc || !err.desc[0]) {
            fprintf(stderr, "open failed without an error text\n");
            abort();
        }
        qmp_error_clear(&err);
        goto out;
    }
    len = bdev_length(bs);
    walk_status(bs, len);
    /* A few fixed ranges: start, a cluster boundary, the end. */
    read_range(bs, len, 0, 4096);
    read_range(bs, len, 65536 - 512, 1024);
    read_range(bs, len, 1 << 20, 128 * 1024);
    if (len > 4096) {
        read_range(bs, len, (uint64_t)len - 4096, 4096);
    }
    bdev_unref(bs);
out:
    uv_run(bdev_loop(), UV_RUN_NOWAIT);
    bdev_close_all();
    uv_run(bdev_loop(), UV_RUN_NOWAIT);
    fuzz_guard = false;
    return 0;
}
