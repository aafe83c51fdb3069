/* Crash safety of qcow2 writes at the driver level: a child process writes
 * an image through the block layer (batches of concurrent writes, each
 * batch followed by a flush that it reports on a pipe) and is killed with
 * SIGKILL at a random moment. Then qemu-img check must find no corruption
 * (leaked clusters are fine), and every write acknowledged by a completed
 * flush must read back; only the batch in flight at the kill may be
 * missing or partly there (per 512-byte sector: old or new content).
 * The image is reused across kills, so later rounds open images with leaks
 * and overwrite clusters allocated before earlier crashes.
 * Deterministic seeds; skips without qemu-img. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "backends/bdev_int.h"
#include "tests/fakes/scratch.h"

#define VSIZE     (1ull << 30) /* virtual size: 8 L2 tables */
#define SECTORS   (VSIZE / 512)
#define CLUSTER   65536u
#define PER_BATCH 24
#define ROUNDS    16

static uint64_t rng_next(uint64_t *s)
{
    /* xorshift64*: the child and the parent derive the same batches. */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

struct wr {
    uint64_t off, len;
    uint8_t pat;
};

/* Batch `b` of round `round`: PER_BATCH writes, whole clusters or 4 KiB
 * aligned pieces of one, over a few hot clusters (overwrites, COW of
 * partial clusters) and the whole disk (new L2 tables, refcount growth). */
static void batch_plan(unsigned round, unsigned b, struct wr *w)
{
    uint64_t s = 0x9e3779b97f4a7c15ull ^ ((uint64_t)round << 32) ^ (b + 1);

    for (int i = 0; i < PER_BATCH; i++) {
        uint64_t r = rng_next(&s);
        uint64_t c = (r & 1) ? (r >> 8) % 32 : (r >> 8) % (VSIZE / CLUSTER);

        w[i].pat = (uint8_t)(1 + (round * 37 + b * 11 + (unsigned)i) % 254);
        if ((r >> 4) & 1) {
            w[i].off = c * CLUSTER;
            w[i].len = CLUSTER;
        } else {
            uint64_t start = (rng_next(&s) % 16) * 4096;
            uint64_t len = (1 + rng_next(&s) % 4) * 4096;

            if (start + len > CLUSTER) {
                len = CLUSTER - start;
            }
            w[i].off = c * CLUSTER + start;
            w[i].len = len;
        }
    }
}

/* ---- the child: writes batches until killed ------------------------------ */

static uv_loop_t loop;

struct child_state {
    int pending;
    int err;
};

static void child_cb(void *opaque, int ret)
{
    struct child_state *cs = opaque;

    cs->pending--;
    if (ret < 0) {
        cs->err = ret;
    }
}

static void child_wait(struct child_state *cs)
{
    while (cs->pending > 0) {
        uv_run(&loop, UV_RUN_ONCE);
    }
}

static void child_main(const char *img, unsigned round, int fd)
{
    struct qmp_error err = QMP_ERROR_INIT;
    struct child_state cs = {0};
    char js[1024];
    json_error_t jerr;
    json_t *o;
    struct bdev *bs;
    uint8_t *bufs[PER_BATCH];
    struct wr w[PER_BATCH];

    uv_loop_init(&loop);
    bdev_init(&loop);
    snprintf(js, sizeof(js),
             "{\"driver\": \"qcow2\", \"node-name\": \"c\", "
             "\"l2-cache-size\": 1048576, \"file\": {\"driver\": \"file\", "
             "\"filename\": \"%s\"}}",
             img);
    o = json_loads(js, 0, &jerr);
    bs = o ? bdev_open_node(o, true, &err) : NULL;
    if (!bs) {
        fprintf(stderr, "child open: %s\n", err.desc ? err.desc : "?");
        _exit(3);
    }
    for (int i = 0; i < PER_BATCH; i++) {
        bufs[i] = bdev_buf_alloc(CLUSTER);
    }
    for (unsigned b = 0;; b++) {
        batch_plan(round, b, w);
        for (int i = 0; i < PER_BATCH; i++) {
            memset(bufs[i], w[i].pat, w[i].len);
            cs.pending++;
            if (bdev_write(bs, w[i].off, w[i].len, bufs[i], child_cb, &cs) <
                0) {
                _exit(4);
            }
        }
        child_wait(&cs);
        cs.pending++;
        if (bdev_flush(bs, child_cb, &cs) < 0) {
            _exit(4);
        }
        child_wait(&cs);
        if (cs.err) {
            _exit(5);
        }
        /* Acknowledged: batch b is durable. */
        if (write(fd, &b, sizeof(b)) != sizeof(b)) {
            _exit(6);
        }
    }
}

/* ---- the parent ------------------------------------------------------------
 */

/* Whether write `w` covers sector `s` with the pattern `pat`. */
static bool covers(const struct wr *w, uint64_t s, uint8_t pat)
{
    return s >= w->off / 512 && s < (w->off + w->len) / 512 && w->pat == pat;
}

/* Whether one of the batch's writes covering sector `s` wrote `pat`: the
 * writes of one batch are in flight together, so where two of them overlap
 * either may land last. */
static bool batch_wrote(const struct wr *w, uint64_t s, uint8_t pat)
{
    for (int i = 0; i < PER_BATCH; i++) {
        if (covers(&w[i], s, pat)) {
            return true;
        }
    }
    return false;
}

/* Reads the image as raw (through qemu-img) into one byte per sector,
 * checking that each sector is uniform. */
static void read_image(const char *img, const char *raw, uint8_t *got)
{
    uint8_t *buf = malloc(1 << 20);
    int fd;

    assert_int_equal(
        scratch_sh("qemu-img convert -U -O raw '%s' '%s'", img, raw), 0);
    fd = open(raw, O_RDONLY);
    assert_true(fd >= 0);
    memset(got, 0, SECTORS);
    for (uint64_t off = 0; off < VSIZE; off += 1 << 20) {
        off_t data = lseek(fd, (off_t)off, SEEK_DATA);

        /* The raw copy is sparse: holes read as zeroes. */
        if (data < 0) {
            break;
        }
        if ((uint64_t)data >= off + (1 << 20)) {
            off = (uint64_t)data / (1 << 20) * (1 << 20) - (1 << 20);
            continue;
        }
        assert_int_equal(pread(fd, buf, 1 << 20, (off_t)off), 1 << 20);
        for (uint64_t sct = 0; sct < (1 << 20) / 512; sct++) {
            const uint8_t *p = buf + sct * 512;

            if (memcmp(p, p + 1, 511) != 0) {
                fail_msg("sector %llu is torn inside",
                         (unsigned long long)(off / 512 + sct));
            }
            got[off / 512 + sct] = p[0];
        }
    }
    close(fd);
    unlink(raw);
    free(buf);
}

static void test_sigkill_writer(void **state)
{
    char img[300], raw[300];
    /* model: what each sector held after the previous round; last: 1 + the
     * acknowledged batch of this round that wrote the sector last, or 0. */
    uint8_t *model = calloc(SECTORS, 1), *last = calloc(SECTORS, 1);
    uint8_t *got = malloc(SECTORS);
    struct wr(*plans)[PER_BATCH] = NULL;
    uint64_t seed = 12345;
    unsigned total_batches = 0, leaks = 0;

    (void)state;
    SCRATCH_NEED();
    snprintf(img, sizeof(img), "%s/crash.qcow2", scratch_dir);
    snprintf(raw, sizeof(raw), "%s/crash.raw", scratch_dir);
    assert_int_equal(scratch_sh("qemu-img create -q -f qcow2 '%s' %llu", img,
                                (unsigned long long)VSIZE),
                     0);
    for (unsigned round = 0; round < ROUNDS; round++) {
        unsigned want = 1 + (unsigned)(rng_next(&seed) % 4), acked = 0, b;
        long delay_us = (long)(rng_next(&seed) % 3000);
        int pfd[2], st, rc;
        pid_t pid;

        assert_int_equal(pipe(pfd), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(pfd[0]);
            child_main(img, round, pfd[1]);
            _exit(0);
        }
        close(pfd[1]);
        /* Wait for `want` acknowledged batches, then kill a little later:
         * mid-batch, mid-flush or between. */
        while (acked < want) {
            ssize_t n = read(pfd[0], &b, sizeof(b));

            if (n != sizeof(b)) {
                waitpid(pid, &st, 0);
                fail_msg("child died early (status 0x%x)", st);
            }
            assert_int_equal(b, acked);
            acked++;
        }
        {
            struct timespec ts = {0, delay_us * 1000};

            nanosleep(&ts, NULL);
        }
        kill(pid, SIGKILL);
        /* Acks that were already on their way count too. */
        for (;;) {
            ssize_t n = read(pfd[0], &b, sizeof(b));

            if (n != sizeof(b)) {
                break;
            }
            assert_int_equal(b, acked);
            acked++;
        }
        close(pfd[0]);
        assert_int_equal(waitpid(pid, &st, 0), pid);
        assert_true(WIFSIGNALED(st));
        total_batches += acked;

        /* No corruption: 0 clean, 3 leaked clusters only. */
        rc = scratch_sh("qemu-img check -q '%s' >/dev/null 2>&1", img);
        if (rc != 0 && rc != 3) {
            scratch_sh("qemu-img check '%s'", img);
            fail_msg("round %u: qemu-img check says %d", round, rc);
        }
        leaks += rc == 3;

        /* Acknowledged batches are all there: a sector one of them wrote
         * holds what one of the writes of the last such batch wrote; batch
         * `acked` (in flight at the kill) may be there, partly, or not at
         * all. */
        plans = realloc(plans, (acked + 1) * sizeof(*plans));
        assert_non_null(plans);
        memset(last, 0, SECTORS);
        for (b = 0; b <= acked; b++) {
            batch_plan(round, b, plans[b]);
            for (int i = 0; b < acked && i < PER_BATCH; i++) {
                const struct wr *w = &plans[b][i];

                memset(last + w->off / 512, (int)(b + 1), w->len / 512);
            }
        }
        read_image(img, raw, got);
        for (uint64_t s = 0; s < SECTORS; s++) {
            bool ok = last[s] ? batch_wrote(plans[last[s] - 1], s, got[s])
                              : got[s] == model[s];

            if (!ok) {
                ok = batch_wrote(plans[acked], s, got[s]);
            }
            if (!ok && last[s]) {
                fail_msg("round %u (%u batches acked): sector %llu reads "
                         "0x%02x, written by none of batch %u's writes",
                         round, acked, (unsigned long long)s, got[s],
                         last[s] - 1u);
            }
            if (!ok) {
                fail_msg("round %u (%u batches acked): sector %llu reads "
                         "0x%02x, expected 0x%02x",
                         round, acked, (unsigned long long)s, got[s], model[s]);
            }
            model[s] = got[s]; /* the in-flight batch as it landed */
        }
    }
    print_message("%u rounds, %u batches acknowledged, %u rounds left "
                  "leaked clusters\n",
                  ROUNDS, total_batches, leaks);
    free(model);
    free(last);
    free(plans);
    free(got);
}

static int setup(void **state)
{
    (void)state;
    return scratch_make("test_qcow2_crash", "qemu-img");
}

static int teardown(void **state)
{
    (void)state;
    return scratch_remove();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sigkill_writer),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
