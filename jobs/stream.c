/* The block-stream driver: a state machine over bdev completions.
 *
 * The disk is scanned front to back: a block-status query on the top says
 * what the top already holds (skipped), a query of the chain from the top's
 * backing down to the lowest copied node says what must be copied. Copy runs
 * are cut into chunks issued up to the queue depth; each chunk is read
 * through the copy-on-read filter inserted above the top (so unallocated
 * ranges come from the chain) and written into the top (zeroes as
 * write-zeroes, as QEMU's copy-on-read does). The filter lives from the
 * start until the job's prepare (success) or clean (failure, cancel), as
 * in QEMU, so query-named-block-nodes shows the same graph.
 *
 * Progress is the contiguous prefix of the disk that is done: the lowest
 * offset of any chunk not finished (in flight, held for a retry after a
 * stop, or failed), else the scan position. So with an error at 512 KiB the
 * job reports offset 524288 however many later chunks completed, like QEMU's
 * one-chunk-at-a-time loop.
 */
#include "jobs/stream.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "jobs/job_qmp.h"
#include "protocol/qmp.h"

/* A status query never asks for more than this (bounds one answer). */
#define STREAM_QUERY_MAX (1ULL << 30)

enum req_state {
    REQ_FREE,
    REQ_BUSY, /* read or write in flight */
    REQ_HELD, /* failed with on-error stop: retried after resume */
    REQ_DEAD, /* failed with report: the job ends; progress stops here */
};

struct stream_req {
    struct stream_job *s;
    enum req_state st;
    uint64_t off;
    uint64_t bytes;
    /* What is read and written: [off, off + bytes) rounded out to the
     * top's clusters, as QEMU's copy-on-read does (one write, zeroes if
     * all of it reads as zeroes). */
    uint64_t ioff, ibytes;
    void *buf;
    bool zero_fallback; /* write-zeroes refused: written as data */
};

struct stream_job {
    struct blockjob common; /* first */
    struct bdev *top;
    struct bdev *filter; /* copy-on-read above top; NULL once removed */
    struct bdev *base;   /* new backing; NULL: none */
    struct bdev *bottom; /* lowest node copied from; NULL: nothing to copy */
    char *backing_file;
    char *backing_fmt;
    struct bdev **claimed; /* top .. bottom, referenced and claimed */
    size_t n_claimed;
    bool reopened_rw;
    uint64_t len;
    uint64_t chunk;
    uint64_t scan;    /* everything below was handed out or skipped */
    uint64_t run_end; /* [scan, run_end) must be copied */
    /* [scan, top_free_end) is known unallocated in the top: only the job
     * writes the top, and only below scan, so the answer stays true and
     * the top is not asked again for it (asking it about the rest of the
     * disk after every run made the scan quadratic). */
    uint64_t top_free_end;
    uint64_t cluster;    /* the top's: copies are rounded out to it */
    uint64_t copied_end; /* [scan, copied_end) was copied by rounding */
    bool querying;
    bool failing; /* a report error: issue nothing more */
    int first_err;
    unsigned depth;
    struct stream_req *reqs;
    void *bufs;
    job_done_fn *prepare_cb;
};

static void stream_run(struct job *job);

static struct stream_job *to_stream(struct job *job)
{
    return (struct stream_job *)job;
}

static void update_progress(struct stream_job *s)
{
    uint64_t p = s->scan;

    for (unsigned i = 0; i < s->depth; i++) {
        if (s->reqs[i].st != REQ_FREE && s->reqs[i].off < p) {
            p = s->reqs[i].off;
        }
    }
    if (p > s->common.job.progress_current) {
        job_progress_set_current(&s->common.job, p);
    }
}

static bool buffer_is_zero(const void *buf, size_t len)
{
    const uint64_t *p = buf;

    /* Buffers are aligned and chunks are multiples of 512 bytes except maybe
     * the disk's tail. */
    for (size_t i = 0; i < len / 8; i++) {
        if (p[i]) {
            return false;
        }
    }
    for (size_t i = len & ~(size_t)7; i < len; i++) {
        if (((const unsigned char *)buf)[i]) {
            return false;
        }
    }
    return true;
}

static bool any_held(const struct stream_job *s)
{
    for (unsigned i = 0; i < s->depth; i++) {
        if (s->reqs[i].st == REQ_HELD) {
            return true;
        }
    }
    return false;
}

/* A request failed (read or write: stream always reports "read").
 * QEMU copies one chunk at a time, so it decides (and emits
 * BLOCK_JOB_ERROR) once per stop or end; with several chunks in flight the
 * ones failing after a decision follow it silently: behind a stop they are
 * held for the retry after resume (QEMU would only reach them then), after
 * a report they just end. */
static void req_failed(struct stream_req *r, int ret)
{
    struct stream_job *s = r->s;
    enum blockjob_action action;

    if (s->failing) {
        r->st = REQ_DEAD;
        return;
    }
    if (any_held(s)) {
        r->st = REQ_HELD;
        return;
    }
    action = blockjob_error_action(&s->common, ret, true);
    switch (action) {
    case BLOCKJOB_ACTION_STOP:
        r->st = REQ_HELD;
        break;
    case BLOCKJOB_ACTION_IGNORE:
        if (!s->first_err) {
            s->first_err = ret;
        }
        r->st = REQ_FREE;
        break;
    case BLOCKJOB_ACTION_REPORT:
        if (!s->first_err) {
            s->first_err = ret;
        }
        r->st = REQ_DEAD;
        s->failing = true;
        /* QEMU breaks out of its loop at once: a job sleeping off the
         * rate limit of a chunk issued after this one ends now. */
        job_wake(&s->common.job);
        break;
    }
}

static void write_done(void *opaque, int ret);

static void issue_write(struct stream_req *r)
{
    struct stream_job *s = r->s;
    int ret;

    if (!r->zero_fallback && buffer_is_zero(r->buf, r->ibytes)) {
        ret = bdev_write_zeroes(s->top, r->ioff, r->ibytes, write_done, r);
        if (ret != -ENOTSUP) {
            goto out;
        }
        r->zero_fallback = true;
    }
    ret = bdev_write(s->top, r->ioff, r->ibytes, r->buf, write_done, r);
out:
    if (ret < 0) {
        write_done(r, ret);
    }
}

static void write_done(void *opaque, int ret)
{
    struct stream_req *r = opaque;
    struct stream_job *s = r->s;

    if (ret == -ENOTSUP && !r->zero_fallback) {
        r->zero_fallback = true;
        issue_write(r);
        return;
    }
    if (ret < 0) {
        req_failed(r, ret);
    } else {
        r->st = REQ_FREE;
    }
    update_progress(s);
    job_io_end(&s->common.job);
}

static void read_done(void *opaque, int ret)
{
    struct stream_req *r = opaque;
    struct stream_job *s = r->s;

    if (ret < 0) {
        req_failed(r, ret);
        update_progress(s);
        job_io_end(&s->common.job);
        return;
    }
    r->zero_fallback = false;
    issue_write(r);
}

static void issue_req(struct stream_req *r)
{
    struct stream_job *s = r->s;
    int ret;

    r->st = REQ_BUSY;
    job_io_begin(&s->common.job);
    job_yield_point(&s->common.job); /* QEMU's coroutine waits for it */
    ret = bdev_read(s->filter ? s->filter : s->top, r->ioff, r->ibytes, r->buf,
                    read_done, r);
    if (ret < 0) {
        read_done(r, ret);
    }
}

static struct stream_req *free_req(struct stream_job *s)
{
    for (unsigned i = 0; i < s->depth; i++) {
        if (s->reqs[i].st == REQ_FREE) {
            return &s->reqs[i];
        }
    }
    return NULL;
}

/* Answer about the chain below the top for [scan, scan + pnum). */
static void chain_status_done(void *opaque, int ret, unsigned status,
                              uint64_t pnum)
{
    struct stream_job *s = opaque;
    uint64_t from = s->scan;

    s->querying = false;
    if (ret < 0 && (s->failing || any_held(s))) {
        /* Decided already (see req_failed): asked again after resume. */
    } else if (ret < 0) {
        /* Treated like a failed read of one chunk. */
        enum blockjob_action a = blockjob_error_action(&s->common, ret, true);

        if (a != BLOCKJOB_ACTION_STOP && !s->first_err) {
            s->first_err = ret;
        }
        if (a == BLOCKJOB_ACTION_REPORT) {
            s->failing = true;
            job_wake(&s->common.job);
        } else if (a == BLOCKJOB_ACTION_IGNORE) {
            uint64_t n =
                s->len - s->scan < s->chunk ? s->len - s->scan : s->chunk;
            s->scan += n;
        }
    } else if (status & BDEV_STATUS_ALLOCATED) {
        s->run_end = s->scan + pnum;
    } else if (pnum == 0) {
        s->scan = s->len; /* the top's backing ends: nothing more below */
        from = s->len;    /* QEMU's loop ends in this very iteration */
    } else {
        s->scan += pnum;
    }
    /* A chunk skipped: QEMU's loop sleeps (0 ns: it yields) before the
     * next one, unless this one reached the end; its skips are at most a
     * chunk long. */
    if (s->scan > from && (s->scan < s->len || s->scan - from > s->chunk)) {
        job_yield_point(&s->common.job);
    }
    update_progress(s);
    job_io_end(&s->common.job);
}

/* Answer about the top itself for [scan, ...). */
static void top_status_done(void *opaque, int ret, unsigned status,
                            uint64_t pnum)
{
    struct stream_job *s = opaque;
    struct bdev *backing = bdev_backing(s->top);

    if (ret >= 0 && !(status & BDEV_STATUS_ALLOCATED) && backing) {
        s->top_free_end = s->scan + pnum;
        ret = bdev_is_allocated_above(backing, s->bottom, s->scan, pnum,
                                      chain_status_done, s);
        if (ret >= 0) {
            return; /* still querying, still counted in flight */
        }
    } else if (ret >= 0) {
        status = 0; /* allocated in top (or no backing): skip */
    }
    chain_status_done(s, ret, 0, pnum);
}

static void issue_query(struct stream_job *s)
{
    uint64_t n = s->len - s->scan;
    int ret;

    if (n > STREAM_QUERY_MAX) {
        n = STREAM_QUERY_MAX;
    }
    s->querying = true;
    job_io_begin(&s->common.job);
    if (s->scan < s->copied_end) {
        /* Allocated in the top now (the end of a rounded copy): skip. */
        chain_status_done(s, 0, 0, s->copied_end - s->scan);
        return;
    }
    if (s->scan < s->top_free_end) {
        /* The top's answer is known: ask the chain below it. */
        top_status_done(s, 0, 0, s->top_free_end - s->scan);
        return;
    }
    ret = bdev_block_status(s->top, s->scan, n, top_status_done, s);
    if (ret < 0) {
        s->querying = false;
        chain_status_done(s, ret, 0, 0);
    }
}

static bool all_free(struct stream_job *s)
{
    for (unsigned i = 0; i < s->depth; i++) {
        if (s->reqs[i].st != REQ_FREE) {
            return false;
        }
    }
    return true;
}

static void stream_run(struct job *job)
{
    struct stream_job *s = to_stream(job);

    if (job_is_cancelled(job) || s->failing) {
        if (job->in_flight == 0) {
            job_completed(job, s->first_err);
        }
        return;
    }
    /* Done, also with a pause pending: QEMU's loop has no pause point
     * after its last chunk. */
    if (s->scan >= s->len && job->in_flight == 0 && all_free(s)) {
        job_completed(job, s->first_err);
        return;
    }
    while (job_may_issue(job)) {
        struct stream_req *r = NULL;
        uint64_t delay, end;

        /* Chunks held by an error stop go first, unchanged. */
        for (unsigned i = 0; i < s->depth; i++) {
            if (s->reqs[i].st == REQ_HELD) {
                r = &s->reqs[i];
                break;
            }
        }
        if (r) {
            /* The retry is the chunk a resume lets through unslept. */
            job->sleep_cut = false;
            issue_req(r);
            continue;
        }
        if (s->querying) {
            return;
        }
        if (s->scan < s->run_end) {
            r = free_req(s);
            if (!r) {
                return; /* queue full: a completion re-enters */
            }
            /* After a sleep cut short (pause/resume, speed raised) QEMU
             * copies one chunk before it looks at the limit again. */
            delay = job->sleep_cut ? 0 : blockjob_ratelimit_delay(&s->common);
            job->sleep_cut = false;
            if (delay) {
                job_sleep_ns(job, delay);
                return;
            }
            /* Chunks are cut from the start of each run, as QEMU's loop
             * (which asks for the status of at most one chunk from its
             * current offset) does, so progress after an error or a pause
             * is the same offset qsd shows. Runs start where an allocation
             * status changes, i.e. on cluster boundaries of the layers. */
            if (s->scan < s->copied_end) {
                /* Copied by the previous chunk's rounding: allocated in
                 * the top now, skipped as QEMU's next iteration does. */
                s->scan = s->copied_end;
                update_progress(s);
                continue;
            }
            end = s->scan + s->chunk;
            if (end > s->run_end) {
                end = s->run_end;
            }
            r->off = s->scan;
            r->bytes = end - s->scan;
            r->ioff = r->off - r->off % s->cluster;
            r->ibytes = end + (s->cluster - end % s->cluster) % s->cluster;
            if (r->ibytes > s->len) {
                r->ibytes = s->len;
            }
            s->copied_end = r->ibytes;
            r->ibytes -= r->ioff;
            s->scan = end;
            blockjob_ratelimit_account(&s->common, r->bytes);
            issue_req(r);
            continue;
        }
        if (s->scan >= s->len) {
            if (job->in_flight == 0 && all_free(s)) {
                job_completed(job, s->first_err);
            }
            return;
        }
        /* QEMU sleeps off the rate limit at the top of every iteration,
         * skips included: after the last copy it sleeps before it finds
         * there is nothing left. A sleep cut short still lets the next
         * chunk (found by this query) through. */
        if (!job->sleep_cut) {
            delay = blockjob_ratelimit_delay(&s->common);
            if (delay) {
                job_sleep_ns(job, delay);
                return;
            }
        }
        issue_query(s);
    }
}

/* Gives the top its parents back (nothing is in flight: prepare and clean
 * run after the last request). */
static void remove_filter(struct stream_job *s)
{
    if (s->filter) {
        bdev_release(s->filter);
        bdev_set_job_io_node(s->filter, false);
        bdev_remove_filter(s->filter);
        s->filter = NULL;
    }
}

static void prepare_done(void *opaque, int ret)
{
    struct stream_job *s = opaque;
    job_done_fn *cb = s->prepare_cb;

    s->prepare_cb = NULL;
    cb(&s->common.job, ret);
}

/* Success: the top's backing skips the streamed part (header first, then
 * the graph; bdev_change_backing flushes every copied byte before). */
static void stream_prepare(struct job *job, job_done_fn *done)
{
    struct stream_job *s = to_stream(job);
    const char *file = NULL, *fmt = NULL;
    char *query_name = NULL;
    struct bdev *base, *named;
    int ret;

    remove_filter(s); /* QEMU drops it before the backing changes */
    if (!bdev_backing(s->top)) {
        /* Nothing to change; QEMU still drains the top's subtree. */
        s->prepare_cb = done;
        bdev_drained_section(s->top, true, prepare_done, s);
        return;
    }
    /* As QEMU: the new backing is what the lowest node of ours has as its
     * backing now - the base, or the filter of a job running on the base
     * (which hands over to the base when that job ends); the header names
     * the node under any filter. */
    base = s->n_claimed ? bdev_backing(s->claimed[s->n_claimed - 1]) : s->base;
    named = bdev_skip_filters(base);
    if (named) {
        /* QEMU refreshes the base's name first: json:{...} when its own
         * backing is not its header's. */
        query_name = s->backing_file ? NULL : bdev_query_filename(named);
        file = s->backing_file ? s->backing_file : query_name;
        fmt = bdev_driver_name(named);
    }
    s->prepare_cb = done;
    ret = bdev_change_backing(s->top, base, file, fmt, prepare_done, s);
    free(query_name); /* copied */
    if (ret < 0) {
        s->prepare_cb = NULL;
        done(job, ret);
    }
}

/* The filter goes and a read-only top is made read-only again at clean. */
static void drop_filter_and_rw(struct stream_job *s)
{
    remove_filter(s);
    if (s->reopened_rw) {
        bdev_reopen(s->top, false, NULL);
        s->reopened_rw = false;
    }
}

static void stream_clean(struct job *job)
{
    drop_filter_and_rw(to_stream(job));
}

/* The nodes stay blocked until the job is freed (dismissed), as QEMU's
 * block_job_free removes the job's blockers: a concluded job waiting for
 * its dismiss keeps them. */
static void stream_free(struct job *job)
{
    struct stream_job *s = to_stream(job);

    drop_filter_and_rw(s);
    for (size_t i = 0; i < s->n_claimed; i++) {
        bdev_release(s->claimed[i]);
        bdev_unref(s->claimed[i]);
    }
    if (s->base) {
        bdev_unref(s->base);
    }
    free(s->claimed);
    bdev_buf_free(s->bufs);
    free(s->reqs);
    free(s->backing_file);
    free(s->backing_fmt);
}

static const struct job_driver stream_driver = {
    .instance_size = sizeof(struct stream_job),
    .type = JOB_TYPE_STREAM,
    .is_block_job = true,
    .run = stream_run,
    .user_resume = blockjob_user_resume,
    .prepare = stream_prepare,
    .clean = stream_clean,
    .finished = blockjob_event_finished,
    .pending = blockjob_event_pending,
    .free = stream_free,
};

struct job *stream_start(const struct stream_params *p, struct qmp_error *err)
{
    struct stream_job *s;
    struct job *job;
    struct bdev *n, *bottom = NULL, *filter, *resizer;
    size_t n_nodes = 0;
    uint32_t cluster;
    bool reopened = false;

    /* Every node from the top down to (not including) the base is ours: a
     * filter right above the base (another job's) is not. Filters further
     * up belong to running jobs too, and are refused as busy. */
    for (n = p->top; n && bdev_skip_filters(n) != p->base;
         n = bdev_chain_next(n)) {
        if (bdev_claimed_by(n)) {
            bdev_claim(n, "stream", err); /* fails with QEMU's text */
            return NULL;
        }
        bottom = n;
        n_nodes++;
    }
    /* QEMU's filter freezes the chain down to the lowest node streamed:
     * a link frozen already fails the start (a read-only top is checked
     * before its reopen). */
    if (bdev_chain_frozen(p->top, bottom ? bottom : p->top, err) < 0) {
        if (!bdev_is_read_only(p->top)) {
            qmp_error_prepend(err, "Could not create node: ");
        }
        return NULL;
    }
    if (bdev_is_read_only(p->top)) {
        if (bdev_reopen(p->top, true, err) < 0) {
            /* QEMU's reopen is a transaction: a failed one changed
             * nothing; ours may have changed the file child already. */
            bdev_reopen(p->top, false, NULL);
            return NULL;
        }
        reopened = true;
    }
    /* As QEMU: the filter before the job, so its name is checked before
     * the job id, and after the reopen. */
    filter =
        bdev_insert_filter(p->top, "copy-on-read", p->filter_node_name, err);
    if (!filter) {
        goto fail_reopen;
    }
    job = job_create(&stream_driver, p->job_id, bdev_loop(), p->auto_finalize,
                     p->auto_dismiss, err);
    if (!job) {
        goto fail_filter;
    }
    /* QEMU's job BlockBackend on the filter shares no resize: a format
     * node over the top (a protocol node) that needs it conflicts. */
    resizer = bdev_resizing_parent(filter);
    if (resizer) {
        qmp_error_setg(err,
                       "Permission conflict on node '%s': permissions "
                       "'resize' are both required by node '%s' (uses node "
                       "'%s' as 'file' child) and unshared by an unnamed "
                       "block device (uses node '%s' as 'root' child).",
                       bdev_node_name(filter), bdev_node_name(resizer),
                       bdev_node_name(filter), bdev_node_name(filter));
        job_early_fail(job);
        goto fail_filter;
    }
    s = to_stream(job);
    s->common.on_error = p->on_error;
    ratelimit_init(&s->common.rl);
    if (blockjob_set_speed(&s->common, p->speed, err) < 0) {
        job_early_fail(job);
        goto fail_filter;
    }
    /* The job's I/O node: blocked for other jobs, not deletable. */
    s->filter = filter;
    bdev_claim(filter, "stream", NULL);
    blockjob_add_node(&s->common, filter); /* drains pause the job */
    bdev_set_job_io_node(filter, true);
    s->reopened_rw = reopened;
    s->top = p->top;
    s->base = p->base;
    if (s->base) {
        bdev_ref(s->base);
    }
    /* Nothing to copy when the base is the top's direct backing. */
    s->bottom = bottom == p->top ? NULL : bottom;
    if (p->backing_file && !(s->backing_file = strdup(p->backing_file))) {
        abort();
    }
    s->claimed = calloc(n_nodes ? n_nodes : 1, sizeof(*s->claimed));
    if (!s->claimed) {
        abort();
    }
    for (n = p->top; n && bdev_skip_filters(n) != p->base;
         n = bdev_chain_next(n)) {
        bdev_claim(n, "stream", NULL);
        blockjob_add_node(&s->common, n);
        bdev_ref(n);
        s->claimed[s->n_claimed++] = n;
    }
    cluster = bdev_cluster_size(p->top);
    s->cluster = cluster ? cluster : 1;
    s->chunk = p->chunk ? p->chunk : STREAM_CHUNK;
    if (cluster > s->chunk) {
        s->chunk = cluster;
    }
    s->depth = p->queue_depth ? p->queue_depth : STREAM_QUEUE_DEPTH;
    if (s->bottom) {
        int64_t len = bdev_length(p->top);
        size_t stride;

        s->len = len > 0 ? (uint64_t)len : 0;
        job_progress_set_total(job, s->len);
        s->reqs = calloc(s->depth, sizeof(*s->reqs));
        stride = s->chunk + 2 * (s->cluster < 4096 ? 4096 : s->cluster);
        s->bufs = bdev_buf_alloc(stride * s->depth);
        if (!s->reqs || !s->bufs) {
            /* Too big for memory: fail like an I/O error would. */
            s->failing = true;
            s->first_err = -ENOMEM;
            s->depth = 0;
        }
        for (unsigned i = 0; i < s->depth; i++) {
            s->reqs[i].s = s;
            s->reqs[i].buf = (char *)s->bufs + (size_t)i * stride;
        }
    } else {
        s->scan = s->len = 0; /* QEMU reports len 0 for a no-op stream */
        s->depth = 0;
    }
    job_start(job);
    return job;

fail_filter:
    bdev_remove_filter(filter);
fail_reopen:
    if (reopened) {
        bdev_reopen(p->top, false, NULL);
    }
    return NULL;
}

/* ---- QMP ------------------------------------------------------------- */

static const char stream_schema[] =
    "[{'command': 'block-stream', 'data': {'*job-id': 'str',"
    " 'device': 'str', '*base': 'str', '*base-node': 'str',"
    " '*backing-file': 'str', '*bottom': 'str', '*speed': 'int',"
    " '*on-error': 'BlockdevOnError', '*filter-node-name': 'str',"
    " '*auto-finalize': 'bool', '*auto-dismiss': 'bool',"
    " '*x-queue-depth': 'int', '*x-chunk-size': 'int'}}]";

static const char *arg_str(json_t *args, const char *key)
{
    return json_string_value(json_object_get(args, key));
}

static bool arg_bool(json_t *args, const char *key, bool dflt)
{
    json_t *v = json_object_get(args, key);

    return v ? json_is_true(v) : dflt;
}

/* The x- tuning arguments (blockjobd's own, experimental in QEMU's
 * naming): requests in flight and bytes per request. Checked before
 * anything else is looked at. */
static bool tuning_args(json_t *args, struct stream_params *p,
                        struct qmp_error *err)
{
    json_t *depth = json_object_get(args, "x-queue-depth");
    json_t *chunk = json_object_get(args, "x-chunk-size");

    if (depth) {
        json_int_t v = json_integer_value(depth);

        if (v < 1 || v > STREAM_QUEUE_DEPTH_MAX) {
            qmp_error_setg(err,
                           "Parameter 'x-queue-depth' expects a value "
                           "between 1 and %d",
                           STREAM_QUEUE_DEPTH_MAX);
            return false;
        }
        p->queue_depth = (unsigned)v;
    }
    if (chunk) {
        json_int_t v = json_integer_value(chunk);

        if (v < STREAM_CHUNK_MIN || v > STREAM_CHUNK_MAX || (v & (v - 1))) {
            qmp_error_setg(err,
                           "Parameter 'x-chunk-size' expects a power of 2 "
                           "between %d and %d",
                           STREAM_CHUNK_MIN, STREAM_CHUNK_MAX);
            return false;
        }
        p->chunk = (uint64_t)v;
    }
    return true;
}

static bool chain_contains(struct bdev *top, struct bdev *n)
{
    for (struct bdev *i = top; i; i = bdev_chain_next(i)) {
        if (i == n) {
            return true;
        }
    }
    return false;
}

/* QEMU's path_has_protocol(): "proto:..." before any '/'. */
static bool has_protocol(const char *path)
{
    return path[strcspn(path, ":/")] == ':';
}

/* `name` relative to the directory of the node's image file (QEMU's
 * bdrv_make_absolute_filename), NULL when that has no plain name. */
static char *relative_to(struct bdev *bs, const char *name)
{
    const char *file = NULL, *slash;
    char *out;

    if (name[0] == '/' || has_protocol(name)) {
        return strdup(name);
    }
    for (struct bdev *c = bs; c; c = bdev_file_child(c)) {
        file = bdev_filename(c);
    }
    if (!file || !file[0] || has_protocol(file)) {
        return NULL;
    }
    slash = strrchr(file, '/');
    if (asprintf(&out, "%.*s%s", slash ? (int)(slash - file + 1) : 0, file,
                 name) < 0) {
        return NULL;
    }
    return out;
}

static bool same_real_path(const char *a, const char *b)
{
    char ra[PATH_MAX], rb[PATH_MAX];

    return a && b && realpath(a, ra) && realpath(b, rb) && !strcmp(ra, rb);
}

/* QEMU's bdrv_find_backing_image(): the node below each image of the chain
 * whose name matches - the node's current name when the image's backing is
 * not the header's (json:{...} for a node whose own backing was given by
 * reference), else the header's name, literally or relative to the image. */
static struct bdev *find_backing_image(struct bdev *top, const char *name)
{
    for (struct bdev *curr = bdev_skip_filters(top); curr && bdev_backing(curr);
         curr = bdev_skip_filters(bdev_backing(curr))) {
        struct bdev *below = bdev_skip_filters(bdev_backing(curr));
        char *header = bdev_header_backing(curr), *a = NULL, *b = NULL;
        bool found;

        if (bdev_backing_overridden(curr)) {
            a = bdev_query_filename(below);
            found = a && !strcmp(name, a);
        } else if (!header) {
            found = false;
        } else if (has_protocol(name) || has_protocol(header)) {
            b = relative_to(curr, header);
            found = !strcmp(name, header) || (b && !strcmp(name, b));
        } else {
            a = relative_to(curr, name);
            b = relative_to(curr, header);
            found = same_real_path(a, b);
        }
        free(header);
        free(a);
        free(b);
        if (found) {
            return below;
        }
    }
    return NULL;
}

static json_t *block_stream(json_t *args, struct qmp_session *sess,
                            struct qmp_error *err)
{
    const char *device = arg_str(args, "device");
    const char *base = arg_str(args, "base");
    const char *base_node = arg_str(args, "base-node");
    const char *bottom = arg_str(args, "bottom");
    const char *backing_file = arg_str(args, "backing-file");
    const char *filter = arg_str(args, "filter-node-name");
    const char *on_error = arg_str(args, "on-error");
    struct stream_params p = {0};
    struct bdev *top, *base_bs = NULL, *bottom_bs = NULL;
    struct job *job;

    if (!tuning_args(args, &p, err)) {
        return NULL;
    }
    if (base && base_node) {
        qmp_error_setg(err, "'base' and 'base-node' cannot be specified at the "
                            "same time");
        return NULL;
    }
    if (base && bottom) {
        qmp_error_setg(err, "'base' and 'bottom' cannot be specified at the "
                            "same time");
        return NULL;
    }
    if (bottom && base_node) {
        qmp_error_setg(err, "'bottom' and 'base-node' cannot be specified at "
                            "the same time");
        return NULL;
    }
    top = bdev_find(device);
    if (!top) {
        qmp_error_setg(err, "Cannot find device='%s' nor node-name='%s'",
                       device, device);
        return NULL;
    }
    if (base) {
        base_bs = find_backing_image(top, base);
        if (!base_bs) {
            qmp_error_setg(err, "Can't find '%s' in the backing chain", base);
            return NULL;
        }
    }
    if (base_node) {
        base_bs = bdev_find(base_node);
        if (!base_bs) {
            qmp_error_setg(err, "Cannot find device='' nor node-name='%s'",
                           base_node);
            return NULL;
        }
        if (base_bs == top || !chain_contains(top, base_bs)) {
            qmp_error_setg(err, "Node '%s' is not a backing image of '%s'",
                           base_node, device);
            return NULL;
        }
    }
    if (bottom) {
        bottom_bs = bdev_find(bottom);
        if (!bottom_bs) {
            qmp_error_setg(err, "Cannot find device='' nor node-name='%s'",
                           bottom);
            return NULL;
        }
        /* blkdebug is a filter in QEMU 7.2 (is_filter) too. */
        if (bdev_is_filter(bottom_bs) ||
            !strcmp(bdev_driver_name(bottom_bs), "blkdebug")) {
            qmp_error_setg(err,
                           "Node '%s' is a filter, use a non-filter node as "
                           "'bottom'",
                           bottom);
            return NULL;
        }
        if (!chain_contains(top, bottom_bs)) {
            qmp_error_setg(err,
                           "Node '%s' is not in a chain starting from '%s'",
                           bottom, device);
            return NULL;
        }
    }
    /* Busy nodes: the top down to the lowest node the job would touch. */
    {
        struct bdev *end = bottom_bs ? bdev_backing(bottom_bs) : base_bs;

        for (struct bdev *i = top; i && i != end; i = bdev_chain_next(i)) {
            if (bdev_claimed_by(i)) {
                bdev_claim(i, "stream", err);
                return NULL;
            }
        }
    }
    if (!base_bs && backing_file) {
        qmp_error_setg(
            err, "backing file specified, but streaming the entire chain");
        return NULL;
    }
    p.job_id = arg_str(args, "job-id");
    if (!p.job_id) {
        p.job_id = ""; /* no BlockBackend name: QEMU says Invalid job ID '' */
    }
    p.top = top;
    /* The new backing is never a filter: another job's filter over it
     * goes with that job (QEMU: bdrv_skip_filters for the header too). */
    p.base = bdev_skip_filters(bottom_bs ? bdev_backing(bottom_bs) : base_bs);
    p.backing_file = backing_file;
    p.filter_node_name = filter;
    p.speed = json_integer_value(json_object_get(args, "speed"));
    p.on_error =
        on_error ? blockjob_on_error_parse(on_error) : BLOCKJOB_ON_ERROR_REPORT;
    p.auto_finalize = arg_bool(args, "auto-finalize", true);
    p.auto_dismiss = arg_bool(args, "auto-dismiss", true);
    job = stream_start(&p, err);
    /* A stream with nothing to copy ends at once, and jobs paused by the
     * graph changes may still be parking; qemu-storage-daemon has sent all
     * those events (down to null) before this reply. */
    return job_qmp_reply_after(sess, job ? p.job_id : NULL,
                               job ? json_object() : NULL, err);
}

/* Its graph changes wait for the jobs they pause, as qsd's drains do. */
static json_t *qmp_block_stream(json_t *args, struct qmp_session *sess,
                                struct qmp_error *err)
{
    return job_qmp_run_quiet(block_stream, args, sess, err);
}

void stream_qmp_init(void)
{
    qmp_schema_add(stream_schema);
    qmp_command_register("block-stream", qmp_block_stream);
}
