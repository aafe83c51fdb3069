/* blockdev-mirror: copies a root node (the source) into another node (the
 * target) while it stays in use, then, on job-complete, puts the target in
 * the source's place (QEMU 7.2's mirror job, background copy mode).
 *
 * A `mirror_top` filter goes above the source for the job's lifetime (all
 * the source's parents use it); the copy is the ready loop's
 * (jobs/ready_loop.h): seeded with the whole disk (sync full), what the
 * source itself allocates (top) or nothing (none), re-dirtied by every
 * write completing on the source. At prepare the target is flushed, then,
 * after job-complete, every parent of the filter (BlockBackends included)
 * moves to the target; after a soft cancel they move back to the source.
 * Nothing on disk names the target: the source stays intact whatever
 * happens, and the target is a consistent image at every moment (qcow2's
 * own ordering).
 */
#include "jobs/mirror.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backends/bdev.h"
#include "jobs/blockjob.h"
#include "jobs/job_cmd.h"
#include "jobs/job_types.h"
#include "jobs/ready_loop.h"
#include "protocol/qmp.h"

#define MIRROR_BUF_DEFAULT                                                     \
    (16 * 1024 * 1024)                 /* QEMU's DEFAULT_MIRROR_BUF_SIZE */
#define MIRROR_MAX_IO    (1024 * 1024) /* one request at most */
#define MIRROR_MAX_DEPTH 16            /* QEMU's MAX_IN_FLIGHT */

enum mirror_sync {
    SYNC_TOP,
    SYNC_FULL,
    SYNC_NONE,
};

struct mirror_params {
    const char *job_id;
    struct bdev *source;
    struct bdev *target;
    enum mirror_sync sync;
    int64_t speed;
    uint32_t granularity; /* 0: the default */
    uint64_t buf_size;    /* 0: the default */
    enum blockjob_on_error on_source_error, on_target_error;
    const char *filter_node_name;
    bool auto_finalize, auto_dismiss;
};

struct mirror_job {
    struct job *job;
    struct bdev *source;
    struct bdev *target;
    struct bdev *filter; /* mirror_top; NULL once removed */
    struct ready_loop *rl;
    bool size_checked;
    bool size_bad;
    bool size_wait;
    job_done_fn *prepare_cb;
};

static struct mirror_job *to_mirror(struct job *job)
{
    return job_priv(job);
}

static void size_check_cb(void *opaque)
{
    to_mirror(opaque)->size_wait = false;
    job_io_end(opaque);
}

static void mirror_run(struct job *job)
{
    struct mirror_job *m = to_mirror(job);

    if (!m->size_checked) {
        m->size_checked = true;
        if (bdev_length(m->source) != bdev_length(m->target)) {
            /* qsd finds it in the job's coroutine, after its reply. */
            m->size_bad = true;
            m->size_wait = true;
            job_io_begin(job, JOB_IO_QUERY);
            bdev_call_later(size_check_cb, job);
            return;
        }
    }
    if (m->size_bad) {
        if (!m->size_wait) {
            job_set_error_text(job, "Source and target image have "
                                    "different sizes");
            job_progress_set_current(job, 0);
            job_progress_set_total(job, 0);
            job_completed(job, -EINVAL);
            return;
        }
        return;
    }
    ready_loop_run(m->rl);
}

static void mirror_complete(struct job *job, struct qmp_error *err)
{
    (void)err;
    ready_loop_complete(to_mirror(job)->rl);
}

static bool mirror_cancel(struct job *job, bool force)
{
    return ready_loop_cancel(to_mirror(job)->rl, force);
}

static void remove_filter(struct mirror_job *m, struct bdev *onto)
{
    if (m->filter) {
        bdev_release(m->filter);
        bdev_set_job_io_node(m->filter, false);
        if (onto) {
            bdev_remove_filter_onto(m->filter, onto);
        } else {
            bdev_remove_filter(m->filter);
        }
        m->filter = NULL;
    }
}

static void target_flushed(void *opaque, int ret)
{
    struct mirror_job *m = opaque;
    job_done_fn *cb = m->prepare_cb;

    m->prepare_cb = NULL;
    if (ret == 0) {
        /* Everything the source reads is on the target's disk: the
         * source's users move over (after a soft cancel: back down). */
        ready_loop_detach(m->rl);
        remove_filter(m, ready_loop_completing(m->rl) ? m->target : NULL);
    }
    cb(m->job, ret);
}

static void mirror_prepare(struct job *job, job_done_fn *done)
{
    struct mirror_job *m = to_mirror(job);
    int ret;

    m->prepare_cb = done;
    ret = bdev_flush(m->target, target_flushed, m);
    if (ret < 0) {
        m->prepare_cb = NULL;
        done(job, ret);
    }
}

static void release_nodes(struct mirror_job *m)
{
    ready_loop_detach(m->rl);
    remove_filter(m, NULL);
    if (m->target) {
        bdev_set_job_io_node(m->target, false);
    }
}

static void mirror_clean(struct job *job)
{
    release_nodes(to_mirror(job));
}

static void mirror_free(struct job *job)
{
    struct mirror_job *m = to_mirror(job);

    release_nodes(m);
    ready_loop_free(m->rl);
    if (m->source) {
        bdev_release(m->source);
        bdev_unref(m->source);
    }
    if (m->target) {
        bdev_release(m->target);
        bdev_unref(m->target);
    }
}

static const struct job_driver mirror_driver = {
    .instance_size = sizeof(struct mirror_job),
    .type = JOB_TYPE_MIRROR,
    .is_block_job = true,
    .run = mirror_run,
    .complete = mirror_complete,
    .cancel = mirror_cancel,
    .user_resume = blockjob_user_resume,
    .prepare = mirror_prepare,
    .clean = mirror_clean,
    .finished = blockjob_event_finished,
    .pending = blockjob_event_pending,
    .free = mirror_free,
};

/* QEMU's message for a filter that could not be made has no prefix. */
static void strip_prefix(struct qmp_error *err)
{
    static const char pre[] = "Could not create node: ";
    char *d = (char *)err->desc;

    if (d && !strncmp(d, pre, sizeof(pre) - 1)) {
        memmove(d, d + sizeof(pre) - 1, strlen(d) - (sizeof(pre) - 1) + 1);
    }
}

static uint32_t default_granularity(struct bdev *target)
{
    uint32_t g = bdev_cluster_size(target);

    if (!g) {
        return 65536;
    }
    return g < 4096 ? 4096 : g > 65536 ? 65536 : g;
}

static struct job *mirror_start(const struct mirror_params *p,
                                struct qmp_error *err)
{
    struct ready_loop_params lp = {0};
    struct mirror_job *m;
    struct bdev *filter;
    struct job *job;
    uint64_t buf, req;
    int64_t len;

    filter =
        bdev_insert_filter(p->source, "mirror_top", p->filter_node_name, err);
    if (!filter) {
        strip_prefix(err);
        return NULL;
    }
    job = job_create(&mirror_driver, p->job_id, bdev_loop(), p->auto_finalize,
                     p->auto_dismiss, err);
    if (!job) {
        goto fail_filter;
    }
    m = to_mirror(job);
    m->job = job;
    blockjob_set_on_error(job, p->on_source_error, p->on_target_error, false);
    if (blockjob_set_speed(job, p->speed, err) < 0) {
        job_early_fail(job);
        goto fail_filter;
    }
    if (bdev_is_read_only(p->target)) {
        qmp_error_setg(err, "Block node is read-only");
        job_early_fail(job);
        goto fail_filter;
    }
    m->filter = filter;
    m->source = p->source;
    m->target = p->target;
    bdev_ref(m->source);
    bdev_ref(m->target);
    /* The job's I/O node first (it carries the job's BlockBackend). */
    blockjob_add_node(job, filter);
    bdev_claim(filter, "mirror", NULL);
    bdev_set_job_io_node(filter, true);
    blockjob_add_node(job, p->source);
    bdev_claim(p->source, "mirror", NULL);
    blockjob_add_node(job, p->target);
    bdev_claim(p->target, "mirror", NULL);
    bdev_set_job_io_node(p->target, true);

    len = bdev_length(p->source);
    lp.job = job;
    lp.read_from = filter;
    lp.dirty_node = p->source;
    lp.target = p->target;
    lp.len = len > 0 ? (uint64_t)len : 0;
    lp.granularity =
        p->granularity ? p->granularity : default_granularity(p->target);
    buf = p->buf_size ? p->buf_size : MIRROR_BUF_DEFAULT;
    buf += (lp.granularity - buf % lp.granularity) % lp.granularity;
    req = buf < MIRROR_MAX_IO ? buf : MIRROR_MAX_IO;
    if (req < lp.granularity) {
        req = lp.granularity;
    }
    lp.request = req - req % lp.granularity;
    lp.depth = buf / lp.request;
    if (lp.depth < 1) {
        lp.depth = 1;
    }
    if (lp.depth > MIRROR_MAX_DEPTH) {
        lp.depth = MIRROR_MAX_DEPTH;
    }
    switch (p->sync) {
    case SYNC_FULL:
        lp.seed = READY_SEED_ALL; /* QEMU's zero_target: the whole disk */
        break;
    case SYNC_TOP:
        /* What the source allocates above its backing (without one, what
         * it allocates at all). */
        lp.seed = READY_SEED_ALLOCATED;
        lp.seed_top = p->source;
        lp.seed_bottom = bdev_backing(p->source) ? p->source : NULL;
        break;
    case SYNC_NONE:
        lp.seed = READY_SEED_NONE;
        break;
    }
    /* QEMU writes zeroes as such only for ranges aligned to the target's
     * clusters; smaller chunks are copied as data. */
    lp.no_zero_detect = lp.granularity < bdev_cluster_size(p->target);
    lp.split_by_allocation = true;
    m->rl = ready_loop_new(&lp);
    if (!m->rl) {
        abort();
    }
    job_start(job);
    return job;

fail_filter:
    bdev_remove_filter(filter);
    return NULL;
}

/* ---- QMP ------------------------------------------------------------- */

static const char mirror_schema[] =
    "[{'enum': 'MirrorSyncMode',"
    " 'data': ['top', 'full', 'none', 'incremental', 'bitmap']},"
    " {'enum': 'MirrorCopyMode', 'data': ['background', 'write-blocking']},"
    " {'command': 'blockdev-mirror', 'data': {'*job-id': 'str',"
    " 'device': 'str', 'target': 'str', '*replaces': 'str',"
    " 'sync': 'MirrorSyncMode', '*speed': 'int', '*granularity': 'uint32',"
    " '*buf-size': 'int', '*on-source-error': 'BlockdevOnError',"
    " '*on-target-error': 'BlockdevOnError', '*filter-node-name': 'str',"
    " '*copy-mode': 'MirrorCopyMode', '*auto-finalize': 'bool',"
    " '*auto-dismiss': 'bool'}}]";

static const char *arg_str(json_t *args, const char *key)
{
    return json_string_value(json_object_get(args, key));
}

static bool arg_bool(json_t *args, const char *key, bool dflt)
{
    json_t *v = json_object_get(args, key);

    return v ? json_is_true(v) : dflt;
}

static enum blockjob_on_error arg_on_error(json_t *args, const char *key)
{
    const char *v = arg_str(args, key);

    return v ? blockjob_on_error_parse(v) : BLOCKJOB_ON_ERROR_REPORT;
}

static struct bdev *find_node(const char *name, struct qmp_error *err)
{
    struct bdev *bs = bdev_find(name);

    if (!bs) {
        qmp_error_setg(err, "Cannot find device='%s' nor node-name='%s'", name,
                       name);
    }
    return bs;
}

/* QEMU's check_to_replace_node for `replaces`: the source itself, or a
 * node the source's view is a filter of. */
static bool can_replace(struct bdev *source, struct bdev *r)
{
    for (struct bdev *n = source; n;
         n = bdev_is_filter(n) ? bdev_file_child(n) : NULL) {
        if (n == r) {
            return true;
        }
    }
    return false;
}

static json_t *blockdev_mirror(json_t *args, struct qmp_session *sess,
                               struct qmp_error *err)
{
    const char *sync = arg_str(args, "sync");
    const char *replaces = arg_str(args, "replaces");
    const char *copy_mode = arg_str(args, "copy-mode");
    json_t *gran = json_object_get(args, "granularity");
    json_t *bufsz = json_object_get(args, "buf-size");
    struct mirror_params p = {0};
    struct bdev *source, *target, *rbs;
    const char *parent;
    bool backing = false;
    struct job *job;

    source = find_node(arg_str(args, "device"), err);
    if (!source) {
        return NULL;
    }
    /* A job's node (its filter, its BlockBackend's) is no root either. */
    if (bdev_has_parents(source) || bdev_claimed_by(source)) {
        qmp_error_setg(err, "Need a root block node");
        return NULL;
    }
    target = find_node(arg_str(args, "target"), err);
    if (!target) {
        return NULL;
    }
    if (gran) {
        json_int_t g = json_integer_value(gran);

        if (g < 512 || g > 64 * 1024 * 1024) {
            qmp_error_setg(err, "Parameter 'granularity' expects a value in "
                                "range [512B, 64MB]");
            return NULL;
        }
        if (g & (g - 1)) {
            qmp_error_setg(err, "Parameter 'granularity' expects a power of 2");
            return NULL;
        }
        p.granularity = (uint32_t)g;
    }
    /* Op blockers: a node in use by a job, a node used as a backing. */
    if (bdev_claimed_by(source)) {
        bdev_claim(source, "mirror", err);
        return NULL;
    }
    if (target != source && bdev_claimed_by(target)) {
        bdev_claim(target, "mirror", err);
        return NULL;
    }
    parent = bdev_busy_parent(target, &backing);
    if (parent && backing) {
        qmp_error_setg(err,
                       "Node '%s' is busy: node is used as backing hd of "
                       "'%s'",
                       bdev_node_name(target), parent);
        return NULL;
    }
    if (!strcmp(sync, "full")) {
        p.sync = SYNC_FULL;
    } else if (!strcmp(sync, "top")) {
        p.sync = SYNC_TOP;
    } else if (!strcmp(sync, "none")) {
        p.sync = SYNC_NONE;
    }
    if (replaces) {
        rbs = bdev_find(replaces);
        if (!rbs) {
            qmp_error_setg(err, "Failed to find node with node-name='%s'",
                           replaces);
            return NULL;
        }
        if (!can_replace(source, rbs)) {
            qmp_error_setg(err,
                           "Cannot replace '%s' by a node mirrored from '%s', "
                           "because it cannot be guaranteed that doing so "
                           "would not lead to an abrupt change of visible data",
                           replaces, bdev_node_name(source));
            return NULL;
        }
        if (bdev_length(rbs) != bdev_length(target)) {
            qmp_error_setg(err, "cannot replace image with a mirror image of "
                                "different size");
            return NULL;
        }
        if (rbs != source) {
            /* Replacing a node under a filter of the source needs the graph
             * change QEMU makes there; blockjobd has no such filter a
             * client could put above a root node. */
            qmp_error_setg(err,
                           "Cannot replace '%s' by a node mirrored from "
                           "'%s': only the source itself can be "
                           "replaced",
                           replaces, bdev_node_name(source));
            return NULL;
        }
    }
    if (!strcmp(sync, "incremental") || !strcmp(sync, "bitmap")) {
        qmp_error_setg(err, "Sync mode '%s' not supported", sync);
        return NULL;
    }
    if (bufsz && json_integer_value(bufsz) < 0) {
        qmp_error_setg(err, "Invalid parameter 'buf-size'");
        return NULL;
    }
    if (target == source) {
        qmp_error_setg(err, "Can't mirror node into itself");
        return NULL;
    }
    if (copy_mode && !strcmp(copy_mode, "write-blocking")) {
        qmp_error_setg(err, "copy-mode 'write-blocking' is not supported by "
                            "this blockjobd build");
        return NULL;
    }
    p.buf_size = bufsz ? (uint64_t)json_integer_value(bufsz) : 0;
    p.job_id = arg_str(args, "job-id");
    if (!p.job_id) {
        p.job_id = ""; /* no BlockBackend name: QEMU says Invalid job ID '' */
    }
    p.source = source;
    p.target = target;
    p.speed = json_integer_value(json_object_get(args, "speed"));
    p.on_source_error = arg_on_error(args, "on-source-error");
    p.on_target_error = arg_on_error(args, "on-target-error");
    p.filter_node_name = arg_str(args, "filter-node-name");
    p.auto_finalize = arg_bool(args, "auto-finalize", true);
    p.auto_dismiss = arg_bool(args, "auto-dismiss", true);
    job = mirror_start(&p, err);
    return job_cmd_reply_after(sess, job ? p.job_id : NULL,
                               job ? json_object() : NULL, err);
}

static json_t *qmp_blockdev_mirror(json_t *args, struct qmp_session *sess,
                                   struct qmp_error *err)
{
    return job_cmd_run_quiet(blockdev_mirror, args, sess, err);
}

static void mirror_qmp_init(void)
{
    qmp_schema_add(mirror_schema);
    qmp_command_register("blockdev-mirror", qmp_blockdev_mirror);
}

const struct job_type_def mirror_job_type = {
    .name = "mirror",
    .qmp_init = mirror_qmp_init,
};
