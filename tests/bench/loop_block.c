/* How long does the loop stay blocked while images grow? (not pass/fail)
 *
 * Writes a growing image sequentially the way block-stream does (16
 * requests of 512 KiB in flight) and meanwhile runs a 1 ms repeating timer
 * on the same loop: any gap between two ticks beyond 1 ms is time the loop
 * could not serve anything (QMP clients, other jobs). Also reports the time
 * spent inside io_submit (aio stats). Cases: a raw file and a qcow2 image
 * grown with each strategy of the file driver (preallocation ahead on the
 * thread pool - the default -, extending writes on the thread pool, and
 * extending O_DIRECT writes straight to libaio), plus overwriting an
 * already allocated file as the baseline.
 *
 * Usage: loop_block [dir [MiB]]  (dir defaults to /var/tmp, 256 MiB).
 * Built and run by tests/bench/loop_block.sh.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "backends/aio.h"
#include "backends/bdev_int.h"

#define CHUNK (512u << 10)
#define QD    16
#define TICK  1 /* ms */

static uv_loop_t loop;

struct run {
    struct bdev *bs;
    uint64_t total, next, done_bytes;
    int inflight;
    int err;
    uint8_t *buf[QD];
    uint64_t last_tick, max_gap, ticks, gaps_over_2ms, gaps_over_5ms;
    uint64_t gap_sum_over;
    uv_timer_t timer;
    bool finished;
};

static void submit_more(struct run *r);

static void write_cb(void *opaque, int ret)
{
    struct run *r = opaque;

    r->inflight--;
    if (ret < 0 && !r->err) {
        r->err = ret;
    }
    r->done_bytes += CHUNK;
    submit_more(r);
}

static void submit_more(struct run *r)
{
    while (!r->err && r->inflight < QD && r->next < r->total) {
        int ret =
            bdev_write(r->bs, r->next, CHUNK, r->buf[r->inflight], write_cb, r);

        if (ret < 0) {
            r->err = ret;
            break;
        }
        r->next += CHUNK;
        r->inflight++;
    }
    if (r->inflight == 0) {
        r->finished = true;
        uv_timer_stop(&r->timer);
    }
}

static void tick(uv_timer_t *t)
{
    struct run *r = t->data;
    uint64_t now = uv_hrtime();

    if (r->last_tick) {
        uint64_t gap = now - r->last_tick;

        if (gap > r->max_gap) {
            r->max_gap = gap;
        }
        if (gap > 2000000) {
            r->gaps_over_2ms++;
        }
        if (gap > 5000000) {
            r->gaps_over_5ms++;
        }
        r->ticks++;
    }
    r->last_tick = now;
}

/* What open_json opens with (the file driver's grow mode per run). */
static struct bdev_open_params open_params;

static struct bdev *open_json(const char *json)
{
    struct qmp_error err = QMP_ERROR_INIT;
    json_error_t jerr;
    json_t *o = json_loads(json, 0, &jerr);
    struct bdev *bs;

    if (!o) {
        fprintf(stderr, "bad json %s\n", json);
        exit(2);
    }
    bs = bdev_open_node_with(o, true, &open_params, &err);
    json_decref(o);
    if (!bs) {
        fprintf(stderr, "open: %s\n", err.desc);
        exit(2);
    }
    return bs;
}

static void one(const char *label, const char *dir, const char *fmt, int mode,
                bool prefill, uint64_t total)
{
    char path[512], cmd[1200], json[1200];
    struct aio_stats a0, a1;
    struct run r;
    uint64_t t0, dt;

    memset(&r, 0, sizeof(r));
    snprintf(path, sizeof(path), "%s/loop_block.%s", dir, fmt);
    if (strcmp(fmt, "qcow2") == 0) {
        snprintf(cmd, sizeof(cmd),
                 "rm -f '%s' && qemu-img create -q -f qcow2 '%s' %llu", path,
                 path, (unsigned long long)total);
    } else if (prefill) {
        snprintf(cmd, sizeof(cmd),
                 "rm -f '%s' && fallocate -l %llu '%s' && "
                 "dd if=/dev/zero of='%s' bs=1M count=%llu conv=notrunc "
                 "status=none && sync",
                 path, (unsigned long long)total, path, path,
                 (unsigned long long)(total >> 20));
    } else {
        snprintf(cmd, sizeof(cmd), "rm -f '%s' && touch '%s'", path, path);
    }
    if (system(cmd) != 0) {
        fprintf(stderr, "%s failed\n", cmd);
        exit(2);
    }
    if (strcmp(fmt, "qcow2") == 0) {
        snprintf(json, sizeof(json),
                 "{\"driver\": \"qcow2\", \"node-name\": \"b\", "
                 "\"file\": {\"driver\": \"file\", \"filename\": "
                 "\"%s\"}}",
                 path);
    } else {
        /* The file node itself: it grows with the writes (raw does not). */
        snprintf(json, sizeof(json),
                 "{\"driver\": \"file\", \"node-name\": \"b\", "
                 "\"filename\": \"%s\"}",
                 path);
    }
    open_params.file_grow_mode = mode;
    r.bs = open_json(json);
    r.total = total;
    for (int i = 0; i < QD; i++) {
        r.buf[i] = bdev_buf_alloc(CHUNK);
        memset(r.buf[i], 0x40 + i, CHUNK);
    }
    uv_timer_init(&loop, &r.timer);
    r.timer.data = &r;
    uv_timer_start(&r.timer, tick, TICK, TICK);
    aio_reset_submit_max();
    aio_get_stats(&a0);
    t0 = uv_hrtime();
    submit_more(&r);
    while (!r.finished) {
        uv_run(&loop, UV_RUN_ONCE);
    }
    dt = uv_hrtime() - t0;
    aio_get_stats(&a1);
    bdev_unref(r.bs);
    open_params.file_grow_mode = BDEV_GROW_PREALLOC;
    uv_close((uv_handle_t *)&r.timer, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    for (int i = 0; i < QD; i++) {
        bdev_buf_free(r.buf[i]);
    }
    unlink(path);
    {
        uint64_t calls = a1.submit_calls - a0.submit_calls;
        uint64_t ns = a1.submit_ns_total - a0.submit_ns_total;

        printf("| %-34s | %7.0f | %8.2f | %6llu | %6llu | %7llu | %8.3f | "
               "%8.3f | %6llu |%s\n",
               label, (double)total / (1 << 20) / ((double)dt / 1e9),
               (double)r.max_gap / 1e6, (unsigned long long)r.gaps_over_2ms,
               (unsigned long long)r.gaps_over_5ms, (unsigned long long)calls,
               calls ? (double)ns / (double)calls / 1e6 : 0.0,
               (double)a1.submit_ns_max / 1e6,
               (unsigned long long)(a1.submit_ns_over_100us -
                                    a0.submit_ns_over_100us),
               r.err ? " (I/O error)" : "");
    }
    fflush(stdout);
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "/var/tmp";
    uint64_t total = (argc > 2 ? strtoull(argv[2], NULL, 10) : 256) << 20;
    struct statfs fs;

    uv_loop_init(&loop);
    bdev_init(&loop);
    if (statfs(dir, &fs) == 0) {
        printf("dir %s (fs magic 0x%lx), %llu MiB per case, %d x %u KiB in "
               "flight, %d ms tick\n\n",
               dir, (unsigned long)fs.f_type, (unsigned long long)(total >> 20),
               QD, CHUNK >> 10, TICK);
    }
    printf("| case                               | MiB/s   | max gap  | >2ms   "
           "| >5ms   | submits | avg sub  | max sub  | >0.1ms |\n");
    printf("|------------------------------------|---------|----------|------"
           "--|--------|---------|----------|----------|--------|\n");
    one("file, overwrite (allocated)", dir, "raw", BDEV_GROW_PREALLOC, true,
        total);
    one("file, growing, prealloc (default)", dir, "raw", BDEV_GROW_PREALLOC,
        false, total);
    one("file, growing, extend on pool", dir, "raw", BDEV_GROW_POOL, false,
        total);
    one("file, growing, extend via libaio", dir, "raw", BDEV_GROW_NATIVE, false,
        total);
    one("qcow2, growing, prealloc (default)", dir, "qcow2", BDEV_GROW_PREALLOC,
        false, total);
    one("qcow2, growing, extend via libaio", dir, "qcow2", BDEV_GROW_NATIVE,
        false, total);
    printf("\nmax gap: longest interval between two 1 ms timer ticks (loop "
           "blocked for gap - 1 ms);\nsub: time inside io_submit (ms), per "
           "call.\n");
    bdev_close_all();
    return 0;
}
