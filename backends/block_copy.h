/* The copy engine: copies ranges of one node into another, for every job
 * that moves data (stream, commit, mirror, backup) and for backup's
 * copy-before-write filter. It knows nothing of jobs: where the ranges come
 * from, what an error means, how fast to go and when it may go are hooks.
 *
 * The disk [0, len) is walked front to back. At each position the range
 * source (an allocation scan, a bitmap: block_copy_bitmap_source) says how
 * many bytes from there are to be copied or skipped, or that nothing more
 * is to be copied. A run to copy is cut into chunks from its start; each
 * request (one chunk, or up to `request` bytes of contiguous chunks) is
 * rounded out to the target's clusters, read from the source into one of
 * `depth` request slots (buffers aligned for O_DIRECT, allocated once, on
 * huge pages when large), then written to the target - as write-zeroes
 * when it reads as zeroes (data when the target refuses write-zeroes).
 * What a rounded copy wrote past its run is not asked about again.
 *
 * Progress is the contiguous prefix that is done: the lowest offset of any
 * request not finished (in flight, held for a retry, failed), else the walk
 * position - always a chunk boundary of a run, so offsets after an error
 * are the same whatever the request size.
 *
 * Errors: the error hook decides (report: the copy ends once drained with
 * that error; ignore: the range counts as done, the copy goes on and ends
 * with the first such error; stop: the request is held and retried first,
 * unchanged, when the copy may issue again). One decision per stop or end:
 * requests failing after a stop are held silently, after a report they
 * just end; a failed source query is decided like a failed read.
 *
 * Re-entry: the owner calls block_copy_run() whenever the copy may go on
 * (after start, after every io_end, after a sleep or a resume). The engine
 * never calls it itself; it asks may_issue() before each new request and
 * calls done() exactly once, from block_copy_run(), when nothing is in
 * flight and the copy is over (or stopped() says to end).
 */
#ifndef BACKENDS_BLOCK_COPY_H
#define BACKENDS_BLOCK_COPY_H

#include <stdbool.h>
#include <stdint.h>

struct bdev;
struct bitmap;
struct block_copy;

/* What a request is, for the owner's pacing and ordering. */
enum copy_io {
    COPY_IO_DATA,  /* a read-then-write of one request */
    COPY_IO_QUERY, /* a question to the range source */
};

enum copy_side {
    COPY_SIDE_SOURCE, /* a read, or a query of the range source */
    COPY_SIDE_TARGET, /* a write */
};

enum copy_action {
    COPY_ACTION_REPORT,
    COPY_ACTION_IGNORE,
    COPY_ACTION_STOP,
};

/* A range source's answer about [offset, ...): ret < 0 an error; else
 * `bytes` from offset are to be copied (copy) or skipped; bytes 0 (not
 * copy): nothing more is to be copied from offset on. */
typedef void copy_range_cb(void *arg, int ret, bool copy, uint64_t bytes);

struct copy_source {
    /* About [offset, offset + max): calls cb(arg, ...) exactly once, maybe
     * inside this call. */
    void (*next)(void *opaque, uint64_t offset, uint64_t max, copy_range_cb *cb,
                 void *arg);
    void *opaque;
};

/* The owner's side; opaque is copy_params.opaque. All but the ones marked
 * optional are required. */
struct copy_hooks {
    /* New requests may be started now (not paused, not sleeping). */
    bool (*may_issue)(void *opaque);
    /* The copy is to end (cancelled): nothing new; done() once drained. */
    bool (*stopped)(void *opaque);
    /* Before a request of `kind`: true to go now; false when the owner
     * holds it back (a rate-limit sleep) and calls block_copy_run() later. */
    bool (*pace)(void *opaque, enum copy_io kind);
    /* A data request of `bytes` (unrounded) is dispatched. Optional. */
    void (*account)(void *opaque, uint64_t bytes);
    /* One request begins / ends (io_end may call block_copy_run()). */
    void (*io_begin)(void *opaque, enum copy_io kind);
    void (*io_end)(void *opaque);
    /* The source's answer skipped [from, to) and the copy goes on (QEMU's
     * loops yield after each skipped chunk). Optional. */
    void (*skipped)(void *opaque, uint64_t from, uint64_t to);
    /* What the error means; the hook emits the job's error event and
     * pauses the owner on a stop. */
    enum copy_action (*error)(void *opaque, int err, enum copy_side side);
    /* A reported error ends the copy: an owner held back by pace() should
     * call block_copy_run() now rather than after its sleep. Optional. */
    void (*ending)(void *opaque);
    /* A request's chunks [offset, offset + bytes) were copied (its write
     * completed). Optional (a bitmap-driven owner counts done bytes). */
    void (*copied)(void *opaque, uint64_t offset, uint64_t bytes);
    /* The done prefix moved forward to `offset`. */
    void (*progress)(void *opaque, uint64_t offset);
    /* The copy is over: ret 0, or the first error reported or ignored
     * (-ENOMEM when the slots could not be allocated). */
    void (*done)(void *opaque, int ret);
};

/* Defaults for copy_params. */
#define BLOCK_COPY_DEPTH     8
#define BLOCK_COPY_QUERY_MAX (1ULL << 30) /* one source answer at most */

struct copy_params {
    struct bdev *source; /* read from (a filter over it is fine) */
    struct bdev *target; /* written */
    uint64_t len;        /* [0, len) is walked */
    /* The unit of progress and of cutting runs (QEMU's chunk: offsets
     * users see); a power of two. */
    uint64_t chunk;
    /* Bytes per request at most: contiguous chunks of one run go out as one
     * request (0 or < chunk: one chunk). Rounded down to chunks. */
    uint64_t request;
    unsigned depth;   /* request slots (0: BLOCK_COPY_DEPTH) */
    uint32_t cluster; /* the target's: requests rounded out to it (0: none) */
    bool no_zero_detect; /* write what is read, zeroes included */
    struct copy_source src;
    const struct copy_hooks *hooks;
    void *opaque;
};

/* Never NULL (aborts without memory for the object; buffers that cannot
 * be had end the copy with -ENOMEM at its first run). */
struct block_copy *block_copy_new(const struct copy_params *p);
/* Nothing may be in flight. NULL is fine. */
void block_copy_free(struct block_copy *c);
/* Issues what it may, or ends the copy (done) once drained. */
void block_copy_run(struct block_copy *c);
/* The node requests read from; changeable while nothing is in flight. */
void block_copy_set_source(struct block_copy *c, struct bdev *source);
/* The done prefix; requests in flight (0 when idle); whether a failed
 * request is held for a retry. */
uint64_t block_copy_progress(const struct block_copy *c);
unsigned block_copy_in_flight(const struct block_copy *c);
bool block_copy_has_held(const struct block_copy *c);

/* A range source over a bitmap: dirty runs are copied, clean ones skipped,
 * nothing after the last dirty byte (answers synchronously). The bitmap is
 * not changed: the owner resets what it copied. */
void block_copy_bitmap_source(struct bitmap *bm, struct copy_source *out);

#endif
