/* block-stream: parameters, setup and the ending (the backing change).
 *
 * The copy is the engine's (backends/block_copy.h) over the allocation scan
 * "allocated below the top, down to the bottom" (jobs/scan.h): each chunk
 * is read through the copy-on-read filter inserted above the top (so
 * unallocated ranges come from the chain) and written into the top. Every
 * error counts as a read (QEMU's copy-on-read read fails) under the one
 * on-error policy. The filter lives from the start until the job's prepare
 * (success) or clean (failure, cancel), as in QEMU, so
 * query-named-block-nodes shows the same graph.
 */
#include "jobs/stream.h"

#include <stdlib.h>
#include <string.h>

#include "backends/bdev_backing.h"
#include "jobs/job_cmd.h"
#include "jobs/job_types.h"
#include "jobs/scan.h"
#include "protocol/qmp.h"

struct stream_job {
    struct job *job;
    struct bdev *top;
    struct bdev *filter; /* copy-on-read above top; NULL once removed */
    struct bdev *base;   /* new backing; NULL: none */
    struct bdev *bottom; /* lowest node copied from; NULL: nothing to copy */
    char *backing_file;
    struct bdev **claimed; /* top .. bottom, referenced and claimed */
    size_t n_claimed;
    bool reopened_rw;
    struct alloc_scan scan; /* allocated below the top, down to bottom */
    struct block_copy *copy;
    job_done_fn *prepare_cb;
};

static struct stream_job *to_stream(struct job *job)
{
    return job_priv(job);
}

static void stream_run(struct job *job)
{
    block_copy_run(to_stream(job)->copy);
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
    cb(s->job, ret);
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
    block_copy_free(s->copy);
    free(s->backing_file);
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
    struct copy_params cp = {0};
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
    s->job = job;
    blockjob_set_on_error(job, p->on_error, p->on_error, true);
    if (blockjob_set_speed(job, p->speed, err) < 0) {
        job_early_fail(job);
        goto fail_filter;
    }
    /* The job's I/O node: blocked for other jobs, not deletable. */
    s->filter = filter;
    bdev_claim(filter, "stream", NULL);
    blockjob_add_node(job, filter); /* drains pause the job */
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
        blockjob_add_node(job, n);
        bdev_ref(n);
        s->claimed[s->n_claimed++] = n;
    }
    cluster = bdev_cluster_size(p->top);
    cp.chunk = p->chunk ? p->chunk : STREAM_CHUNK;
    if (cluster > cp.chunk) {
        cp.chunk = cluster;
    }
    cp.request = cp.chunk;
    cp.depth = p->queue_depth ? p->queue_depth : STREAM_QUEUE_DEPTH;
    cp.cluster = cluster;
    cp.source = filter;
    cp.target = p->top;
    cp.hooks = &blockjob_copy_hooks;
    cp.opaque = job;
    if (s->bottom) {
        int64_t len = bdev_length(p->top);

        cp.len = len > 0 ? (uint64_t)len : 0;
        job_progress_set_total(job, cp.len);
        scan_below_top(&s->scan, p->top, s->bottom, &cp.src);
    }
    /* Without a bottom, len 0: QEMU reports len 0 for a no-op stream. */
    s->copy = block_copy_new(&cp);
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
        base_bs = bdev_find_backing_image(top, base);
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
        if (base_bs == top || !bdev_chain_contains(top, base_bs)) {
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
        if (!bdev_chain_contains(top, bottom_bs)) {
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
    return job_cmd_reply_after(sess, job ? p.job_id : NULL,
                               job ? json_object() : NULL, err);
}

/* Its graph changes wait for the jobs they pause, as qsd's drains do. */
static json_t *qmp_block_stream(json_t *args, struct qmp_session *sess,
                                struct qmp_error *err)
{
    return job_cmd_run_quiet(block_stream, args, sess, err);
}

static void stream_qmp_init(void)
{
    qmp_schema_add(stream_schema);
    qmp_command_register("block-stream", qmp_block_stream);
}

const struct job_type_def stream_job_type = {
    .name = "stream",
    .qmp_init = stream_qmp_init,
};
