/* block-stream: copies what a part of the backing chain holds into the top
 * node, then makes the top's backing skip that part. */
#ifndef JOBS_STREAM_H
#define JOBS_STREAM_H

#include <stdbool.h>
#include <stdint.h>

#include "backends/bdev.h"
#include "jobs/blockjob.h"
#include "jobs/job_types.h"

/* Copy granularity: progress moves in steps of at most this many bytes
 * (QEMU's STREAM_CHUNK, so offsets after an error match qsd's), or the
 * top's cluster size when that is larger. */
#define STREAM_CHUNK (512 * 1024)
/* Copy requests in flight per job. Measured on a virtio disk (1 GiB chain,
 * buffers on huge pages, side by side): 8, 16 and 32 stream equally fast,
 * for one job and for 8 at once, so 8: half the buffer memory (4 MiB per
 * job) and half the first-touch cost of it. */
#define STREAM_QUEUE_DEPTH 8
/* Bounds of the x-queue-depth and x-chunk-size extension arguments. */
#define STREAM_QUEUE_DEPTH_MAX 64
#define STREAM_CHUNK_MIN       (64 * 1024)
#define STREAM_CHUNK_MAX       (64 * 1024 * 1024)

struct stream_params {
    const char *job_id;
    struct bdev *top;
    struct bdev *base;        /* new backing after success; NULL: none */
    const char *backing_file; /* header string; NULL: base's filename */
    int64_t speed;
    enum blockjob_on_error on_error;
    bool auto_finalize;
    bool auto_dismiss;
    unsigned queue_depth; /* 0: STREAM_QUEUE_DEPTH */
    uint64_t chunk;       /* 0: STREAM_CHUNK; raised to the cluster size */
    /* Name of the copy-on-read filter inserted above the top for the job's
     * lifetime; NULL: an implicit #blockN. */
    const char *filter_node_name;
};

/* Checks, claims and starts a stream job (events `created`, `running`).
 * `base` must be below `top` in its chain (or NULL). Returns the job, or
 * NULL with err set (QEMU's texts) and nothing changed. */
struct job *stream_start(const struct stream_params *p, struct qmp_error *err);

/* The job type (job_types.c): registers block-stream. */
extern const struct job_type_def stream_job_type;

#endif
