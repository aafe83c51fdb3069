/* The I/O engine under the file driver.
 *
 * Two paths behind one call: requests on an O_DIRECT descriptor whose
 * buffer, offset and length are aligned go to the kernel through libaio
 * (io_submit, completions signalled on an eventfd that a uv_poll_t watches,
 * reaped with io_getevents); everything else - buffered descriptors,
 * flushes, preallocation, zeroing - runs on libuv's thread pool. Either way
 * the loop never waits for a disk, and the callback runs later on the loop.
 */
#ifndef BACKENDS_AIO_H
#define BACKENDS_AIO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

enum aio_op {
    AIO_OP_READ,         /* whole length, or up to end of file */
    AIO_OP_WRITE,        /* whole length */
    AIO_OP_FSYNC,        /* fdatasync */
    AIO_OP_FALLOCATE,    /* allocate [off, off + len), growing the file */
    AIO_OP_WRITE_ZEROES, /* zero [off, off + len) */
    AIO_OP_TRUNCATE      /* the file's length becomes off */
};

/* ret: bytes transferred (reads may be short at end of file), 0 for the
 * other operations, or -errno. */
typedef void aio_cb(void *opaque, ssize_t ret);

int aio_init(uv_loop_t *loop);
/* Frees the engine; no request may be in flight. */
void aio_fini(void);

/* Queues one request. native: use libaio (fd is O_DIRECT and the request is
 * aligned for it); otherwise the thread pool. Returns 0 (cb runs later,
 * exactly once) or -errno (no callback). */
int aio_submit(int fd, bool native, enum aio_op op, void *buf, uint64_t len,
               uint64_t off, aio_cb *cb, void *opaque);

/* Buffers for requests, aligned to 4 KiB. From 64 KiB they get their own
 * mapping, from 2 MiB one that is 2 MiB aligned and advised for transparent
 * huge pages: an O_DIRECT request is handed to the device as one segment per
 * physically contiguous piece of its buffer, and on a virtio disk without
 * indirect descriptors every segment takes a slot of the ring (256 on
 * Firecracker), so a 512 KiB request over scattered 4 KiB pages takes 130
 * slots and the device sees one or two requests at a time whatever the
 * queue depth. On huge pages the same request is one segment.
 * aio_buf_free(NULL) is a no-op. */
void *aio_buf_alloc(size_t bytes);
void aio_buf_free(void *buf);

/* Counters for tests and benchmarks. */
struct aio_stats {
    uint64_t native_submitted;
    uint64_t pool_submitted;
    uint64_t eagain_queued; /* io_submit said EAGAIN: kept for later */
    unsigned in_flight;
    /* Time the loop spent inside io_submit (it blocks when the kernel does
     * the I/O synchronously, e.g. extending O_DIRECT writes on ext4). */
    uint64_t submit_calls;
    uint64_t submit_ns_total;
    uint64_t submit_ns_max;
    uint64_t submit_ns_over_100us; /* calls that took longer than 0.1 ms */
};
void aio_get_stats(struct aio_stats *st);
/* Benchmarks: starts a new measurement of submit_ns_max. */
void aio_reset_submit_max(void);

#endif
