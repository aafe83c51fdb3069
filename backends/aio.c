/* libaio + thread-pool I/O engine; see aio.h. */
#include "backends/aio.h"

#include <errno.h>
#include <fcntl.h>
#include <libaio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#define AIO_MAX_EVENTS 256
#define AIO_HUGE       (2u << 20) /* x86-64 transparent huge page */
#define AIO_MAP_MIN    (64u << 10)

struct aio_req {
    struct iocb iocb; /* first: io_event.obj points here */
    uv_work_t work;
    int fd;
    enum aio_op op;
    void *buf;
    uint64_t len;
    uint64_t off;
    ssize_t ret;
    aio_cb *cb;
    void *opaque;
    struct aio_req *next; /* waiting for a free kernel slot */
};

static struct {
    uv_loop_t *loop;
    io_context_t ctx;
    bool have_ctx;
    int efd;
    uv_poll_t poll;
    bool poll_init;
    bool polling;
    unsigned in_kernel;
    struct aio_req *wait_head, *wait_tail;
    struct aio_stats stats;
} eng = {.efd = -1};

static void poll_cb(uv_poll_t *h, int status, int events);

static void poll_update(void)
{
    /* Only watch the eventfd while the kernel holds requests, so an idle
     * engine does not keep the loop alive. */
    bool want = eng.in_kernel > 0;

    if (want && !eng.polling) {
        eng.polling = true;
        uv_poll_start(&eng.poll, UV_READABLE, poll_cb);
    } else if (!want && eng.polling) {
        eng.polling = false;
        uv_poll_stop(&eng.poll);
    }
}

static int native_submit_one(struct aio_req *r)
{
    struct iocb *cbs[1] = {&r->iocb};
    uint64_t t0 = uv_hrtime(), dt;
    int ret = io_submit(eng.ctx, 1, cbs);

    dt = uv_hrtime() - t0;
    eng.stats.submit_calls++;
    eng.stats.submit_ns_total += dt;
    if (dt > eng.stats.submit_ns_max) {
        eng.stats.submit_ns_max = dt;
    }
    if (dt > 100000) {
        eng.stats.submit_ns_over_100us++;
    }

    if (ret == 1) {
        eng.in_kernel++;
        eng.stats.native_submitted++;
        return 0;
    }
    return ret < 0 ? ret : -EIO;
}

static void native_kick_waiting(void)
{
    while (eng.wait_head && eng.in_kernel < AIO_MAX_EVENTS) {
        struct aio_req *r = eng.wait_head;
        int ret = native_submit_one(r);

        if (ret == -EAGAIN) {
            break;
        }
        eng.wait_head = r->next;
        if (!eng.wait_head) {
            eng.wait_tail = NULL;
        }
        if (ret < 0) {
            /* Already promised a callback: report the failure through it. */
            eng.stats.in_flight--;
            r->cb(r->opaque, ret);
            free(r);
        }
    }
}

static void poll_cb(uv_poll_t *h, int status, int events)
{
    struct io_event evs[64];
    struct timespec zero = {0, 0};
    uint64_t cnt;
    int n;

    (void)h;
    (void)status;
    (void)events;
    if (read(eng.efd, &cnt, sizeof(cnt)) < 0 && errno != EAGAIN) {
        /* Nothing to do: io_getevents below tells the truth anyway. */
    }
    for (;;) {
        n = io_getevents(eng.ctx, 0, 64, evs, &zero);
        if (n <= 0) {
            break;
        }
        for (int i = 0; i < n; i++) {
            struct aio_req *r = (struct aio_req *)evs[i].obj;
            long res = (long)evs[i].res;

            eng.in_kernel--;
            eng.stats.in_flight--;
            r->cb(r->opaque, (ssize_t)res);
            free(r);
        }
        if (n < 64) {
            break;
        }
    }
    native_kick_waiting();
    poll_update();
}

static ssize_t do_rw(struct aio_req *r)
{
    uint64_t done = 0;

    while (done < r->len) {
        ssize_t n;

        if (r->op == AIO_OP_READ) {
            n = pread(r->fd, (char *)r->buf + done, r->len - done,
                      (off_t)(r->off + done));
        } else {
            n = pwrite(r->fd, (const char *)r->buf + done, r->len - done,
                       (off_t)(r->off + done));
        }
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (n == 0) {
            if (r->op == AIO_OP_READ) {
                break; /* end of file */
            }
            return -EIO;
        }
        done += (uint64_t)n;
    }
    return (ssize_t)done;
}

static ssize_t do_write_zeroes(struct aio_req *r)
{
    static const char zeroes[65536];
    uint64_t done = 0;

    if (fallocate(r->fd, FALLOC_FL_ZERO_RANGE, (off_t)r->off, (off_t)r->len) ==
        0) {
        return 0;
    }
    while (done < r->len) {
        uint64_t chunk = r->len - done;
        ssize_t n;

        if (chunk > sizeof(zeroes)) {
            chunk = sizeof(zeroes);
        }
        n = pwrite(r->fd, zeroes, chunk, (off_t)(r->off + done));
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        done += (uint64_t)n;
    }
    return 0;
}

static void work_cb(uv_work_t *w)
{
    struct aio_req *r = w->data;

    switch (r->op) {
    case AIO_OP_READ:
    case AIO_OP_WRITE:
        r->ret = do_rw(r);
        break;
    case AIO_OP_FSYNC:
        r->ret = fdatasync(r->fd) < 0 ? -errno : 0;
        break;
    case AIO_OP_FALLOCATE:
        r->ret =
            fallocate(r->fd, 0, (off_t)r->off, (off_t)r->len) < 0 ? -errno : 0;
        break;
    case AIO_OP_WRITE_ZEROES:
        r->ret = do_write_zeroes(r);
        break;
    case AIO_OP_TRUNCATE:
        r->ret = ftruncate(r->fd, (off_t)r->off) < 0 ? -errno : 0;
        break;
    }
}

static void after_work_cb(uv_work_t *w, int status)
{
    struct aio_req *r = w->data;

    eng.stats.in_flight--;
    r->cb(r->opaque, status < 0 ? (ssize_t)status : r->ret);
    free(r);
}

int aio_submit(int fd, bool native, enum aio_op op, void *buf, uint64_t len,
               uint64_t off, aio_cb *cb, void *opaque)
{
    struct aio_req *r;
    int ret;

    if (!eng.loop) {
        return -ENODEV;
    }
    r = calloc(1, sizeof(*r));
    if (!r) {
        return -ENOMEM;
    }
    r->fd = fd;
    r->op = op;
    r->buf = buf;
    r->len = len;
    r->off = off;
    r->cb = cb;
    r->opaque = opaque;

    if (native && eng.have_ctx && (op == AIO_OP_READ || op == AIO_OP_WRITE)) {
        if (op == AIO_OP_READ) {
            io_prep_pread(&r->iocb, fd, buf, len, (long long)off);
        } else {
            io_prep_pwrite(&r->iocb, fd, buf, len, (long long)off);
        }
        io_set_eventfd(&r->iocb, eng.efd);
        r->iocb.data = r;
        if (eng.wait_head || eng.in_kernel >= AIO_MAX_EVENTS) {
            ret = -EAGAIN;
        } else {
            ret = native_submit_one(r);
        }
        if (ret == -EAGAIN) {
            /* The ring is full: keep it and submit on the next reap. */
            if (eng.wait_tail) {
                eng.wait_tail->next = r;
            } else {
                eng.wait_head = r;
            }
            eng.wait_tail = r;
            eng.stats.eagain_queued++;
            ret = 0;
        }
        if (ret < 0) {
            free(r);
            return ret;
        }
        eng.stats.in_flight++;
        poll_update();
        return 0;
    }

    r->work.data = r;
    ret = uv_queue_work(eng.loop, &r->work, work_cb, after_work_cb);
    if (ret < 0) {
        free(r);
        return ret;
    }
    eng.stats.pool_submitted++;
    eng.stats.in_flight++;
    return 0;
}

int aio_init(uv_loop_t *loop)
{
    int ret;

    if (eng.loop) {
        return 0;
    }
    eng.loop = loop;
    eng.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (eng.efd < 0) {
        return 0; /* thread pool only */
    }
    memset(&eng.ctx, 0, sizeof(eng.ctx));
    ret = io_setup(AIO_MAX_EVENTS, &eng.ctx);
    if (ret < 0) {
        /* No kernel aio (e.g. aio-max-nr exhausted): thread pool only. */
        close(eng.efd);
        eng.efd = -1;
        return 0;
    }
    eng.have_ctx = true;
    uv_poll_init(loop, &eng.poll, eng.efd);
    eng.poll_init = true;
    return 0;
}

static void poll_closed(uv_handle_t *h)
{
    (void)h;
}

void aio_fini(void)
{
    if (!eng.loop) {
        return;
    }
    if (eng.poll_init) {
        uv_close((uv_handle_t *)&eng.poll, poll_closed);
        eng.poll_init = false;
        /* Let the close callback run so the loop can be closed. */
        uv_run(eng.loop, UV_RUN_NOWAIT);
    }
    if (eng.have_ctx) {
        io_destroy(eng.ctx);
        eng.have_ctx = false;
    }
    if (eng.efd >= 0) {
        close(eng.efd);
        eng.efd = -1;
    }
    memset(&eng.stats, 0, sizeof(eng.stats));
    eng.polling = false;
    eng.in_kernel = 0;
    eng.loop = NULL;
}

void aio_get_stats(struct aio_stats *st)
{
    *st = eng.stats;
}

void aio_reset_submit_max(void)
{
    eng.stats.submit_ns_max = 0;
}

/* ---- buffers ------------------------------------------------------------ */

/* Buffers of AIO_MAP_MIN and more get a mapping of their own: they go
 * back to the system when freed, and do not pin the heap's top (metadata
 * tables made in the middle of a job left the heap 1 MiB bigger after an
 * 8 GiB stream). They are few (a job's buffers, cached tables, bounce
 * buffers in flight): a list finds the mapping back at free time. */
struct big_buf {
    struct big_buf *next;
    void *buf;
    void *map;
    size_t map_len;
};

static struct big_buf *big_bufs;

void *aio_buf_alloc(size_t bytes)
{
    struct big_buf *b;
    uintptr_t start;
    size_t len;
    void *p = NULL;

    if (bytes < AIO_MAP_MIN) {
        if (posix_memalign(&p, 4096, bytes ? bytes : 1) != 0) {
            return NULL;
        }
        return p;
    }
    b = calloc(1, sizeof(*b));
    if (!b) {
        return NULL;
    }
    /* Fresh anonymous memory, so the first touch can fault in huge pages
     * (memory recycled by malloc is already backed by small ones). The
     * slack for the alignment is only address space. */
    len = (bytes + 4095) & ~(size_t)4095;
    b->map_len = len >= AIO_HUGE ? len + AIO_HUGE : len;
    b->map = mmap(NULL, b->map_len, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b->map == MAP_FAILED) {
        free(b);
        return NULL;
    }
    start = (uintptr_t)b->map;
    if (len >= AIO_HUGE) {
        start = (start + AIO_HUGE - 1) & ~(uintptr_t)(AIO_HUGE - 1);
        /* Only advice: without THP the buffer simply has small pages. */
        (void)madvise((void *)start, len, MADV_HUGEPAGE);
    }
    b->buf = (void *)start;
    b->next = big_bufs;
    big_bufs = b;
    return b->buf;
}

void aio_buf_free(void *buf)
{
    if (!buf) {
        return;
    }
    for (struct big_buf **pp = &big_bufs; *pp; pp = &(*pp)->next) {
        struct big_buf *b = *pp;

        if (b->buf == buf) {
            *pp = b->next;
            munmap(b->map, b->map_len);
            free(b);
            return;
        }
    }
    free(buf);
}
