/* blockdev-create: a job of type `create` (QEMU 7.2's blockdev_create_run)
 * that formats an image with the `file` or `qcow2` driver.
 *
 * As in qemu-storage-daemon: the job is listed by query-jobs only (not a
 * block job), never dismisses itself (job-dismiss), emits no BLOCK_JOB_*
 * event, and its progress is 0 of 1 until the driver is done, then 1 of 1
 * whatever the outcome. The driver's failure is the job's `error`. A check
 * that fails before any I/O fails the job before the command's reply
 * (created, running, aborting, concluded, then {"return": {}}), as qsd's
 * coroutine does before it first yields; so does a file that cannot be
 * created or locked. A cancelled creation still runs to its end (QEMU's
 * drivers do not look at it) and then reports "Operation canceled".
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/bdev.h"
#include "backends/image_create.h"
#include "jobs/create.h"
#include "jobs/job.h"
#include "jobs/job_types.h"
#include "protocol/qmp.h"

#define ERR_BYTES 1200

struct create_job {
    struct job *job;
    json_t *options; /* the validated BlockdevCreateOptions */
    bool issued;     /* the driver's work is under way or over */
    bool finished;   /* its callback ran */
    int result;
    char msg[ERR_BYTES];
    struct qmp_deferred *reply; /* file: held until it was created */
    bool reply_now;             /* the file exists (or failed): reply */
};

static struct create_job *to_create(struct job *job)
{
    return job_priv(job);
}

static uint64_t opt_u64(json_t *o, const char *key, uint64_t dflt)
{
    json_t *v = json_object_get(o, key);

    if (json_is_integer(v)) {
        return (uint64_t)json_integer_value(v);
    }
    if (json_is_real(v)) {
        return (uint64_t)json_real_value(v);
    }
    return dflt;
}

static const char *opt_str(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static bool opt_bool(json_t *o, const char *key)
{
    return json_is_true(json_object_get(o, key));
}

static void send_reply(struct create_job *c)
{
    struct qmp_deferred *d = c->reply;

    c->reply_now = true;
    if (d) {
        c->reply = NULL;
        qmp_deferred_reply(d, json_object(), NULL);
    }
}

static void driver_done(void *opaque, int ret, const char *msg)
{
    struct create_job *c = opaque;

    c->finished = true;
    c->result = ret;
    if (ret < 0 && msg != c->msg) {
        snprintf(c->msg, sizeof(c->msg), "%s", msg ? msg : strerror(-ret));
    }
    job_ref(c->job);
    job_io_end(c->job); /* runs create_run: the job ends */
    send_reply(c);
    job_unref(c->job);
}

/* A failure qsd reports only after its coroutine yielded once (after the
 * reply): delivered from a later loop iteration. */
static void fail_later_cb(void *arg)
{
    struct create_job *c = arg;

    driver_done(c, c->result, c->msg);
    job_unref(c->job);
}

static int fail_later(struct create_job *c, int ret)
{
    c->result = ret;
    job_ref(c->job);
    bdev_call_later(fail_later_cb, c);
    return 0;
}

static void file_opened(void *opaque)
{
    send_reply(opaque);
}

static int start_file(struct create_job *c)
{
    json_t *o = c->options;
    struct file_create_opts fo = {
        .filename = opt_str(o, "filename"),
        .size = opt_u64(o, "size", 0),
        .nocow = opt_bool(o, "nocow"),
    };
    const char *prealloc = opt_str(o, "preallocation");

    fo.prealloc =
        prealloc ? bdev_prealloc_parse(prealloc) : (int)BDEV_PREALLOC_OFF;
    if (opt_u64(o, "extent-size-hint", 0) > UINT32_MAX) {
        snprintf(c->msg, sizeof(c->msg), "Extent size hint is too large");
        return -EINVAL;
    }
    return file_create(&fo, file_opened, driver_done, c);
}

/* What QEMU 7.2 does that blockjobd's qcow2 does not: refused with a job
 * error, after QEMU's own checks of the same options. */
static int qcow2_unsupported(struct create_job *c, unsigned version)
{
    json_t *o = c->options;
    const char *ct = opt_str(o, "compression-type");
    json_t *enc = json_object_get(o, "encrypt");
    uint64_t cs = opt_u64(o, "cluster-size", 65536);

    if (opt_bool(o, "extended-l2")) {
        if (version < 3) {
            snprintf(c->msg, sizeof(c->msg),
                     "Extended L2 entries are only supported with "
                     "compatibility level 1.1 and above (use version=v3 or "
                     "greater)");
        } else if (cs < 16384) {
            snprintf(c->msg, sizeof(c->msg),
                     "Extended L2 entries are only supported with cluster "
                     "sizes of at least 16384 bytes");
        } else {
            snprintf(c->msg, sizeof(c->msg),
                     "blockjobd does not support qcow2 images with extended "
                     "L2 entries (extended-l2)");
        }
        return -ENOTSUP;
    }
    if (opt_bool(o, "data-file-raw") && !json_object_get(o, "data-file")) {
        snprintf(c->msg, sizeof(c->msg), "data-file-raw requires data-file");
        return -EINVAL;
    }
    if (json_object_get(o, "data-file")) {
        struct qmp_error e = {0};
        struct bdev *df;

        if (version < 3) {
            snprintf(c->msg, sizeof(c->msg),
                     "External data files are only supported with "
                     "compatibility level 1.1 and above (use version=v3 or "
                     "greater)");
            return -EINVAL;
        }
        df = bdev_open_blockdev_ref(json_object_get(o, "data-file"), &e);
        if (!df) {
            snprintf(c->msg, sizeof(c->msg), "%s", e.desc);
            qmp_error_clear(&e);
            return -EINVAL;
        }
        bdev_unref(df);
        snprintf(c->msg, sizeof(c->msg),
                 "blockjobd does not support qcow2 images with an external "
                 "data file (data-file)");
        return -ENOTSUP;
    }
    if (ct && strcmp(ct, "zlib")) {
        snprintf(c->msg, sizeof(c->msg),
                 version < 3 ? "Non-zlib compression type is only supported "
                               "with compatibility level 1.1 and above (use "
                               "version=v3 or greater)"
                             : "blockjobd does not support the qcow2 "
                               "compression type '%s'",
                 ct);
        return -ENOTSUP;
    }
    if (enc) {
        /* There are no secret objects (no object-add): any key-secret is
         * unknown, as qsd says of one it does not have. */
        const char *secret = opt_str(enc, "key-secret");

        if (secret) {
            snprintf(c->msg, sizeof(c->msg), "No secret with id '%s'", secret);
        } else {
            snprintf(c->msg, sizeof(c->msg),
                     "Parameter 'encrypt.key-secret' is required for cipher");
        }
        return -EAGAIN; /* qsd fails here after the reply */
    }
    return 0;
}

static int start_qcow2(struct create_job *c)
{
    json_t *o = c->options;
    const char *version = opt_str(o, "version");
    const char *prealloc = opt_str(o, "preallocation");
    struct qcow2_create_opts qo = {
        .size = opt_u64(o, "size", 0),
        .version = version && !strcmp(version, "v2") ? 2 : 3,
        .backing_file = opt_str(o, "backing-file"),
        .backing_fmt = opt_str(o, "backing-fmt"),
        .cluster_size = opt_u64(o, "cluster-size", 65536),
        .prealloc =
            prealloc ? bdev_prealloc_parse(prealloc) : (int)BDEV_PREALLOC_OFF,
        .lazy_refcounts = opt_bool(o, "lazy-refcounts"),
        .refcount_bits = opt_u64(o, "refcount-bits", 16),
    };
    struct qmp_error e = {0};
    struct bdev *file;
    int ret;

    /* QEMU opens the file first, then checks the options. */
    file = bdev_open_blockdev_ref(json_object_get(o, "file"), &e);
    if (file && json_is_object(json_object_get(o, "file")) &&
        bdev_take_write(file, &e) < 0) {
        bdev_unref(file);
        file = NULL;
    }
    if (!file) {
        snprintf(c->msg, sizeof(c->msg), "%s", e.desc);
        qmp_error_clear(&e);
        return -EINVAL;
    }
    ret = qcow2_create_check(&qo, c->msg, sizeof(c->msg));
    if (ret == 0) {
        ret = qcow2_unsupported(c, qo.version);
    }
    if (ret == -EAGAIN) {
        ret = fail_later(c, -EINVAL);
    } else if (ret == 0) {
        ret = qcow2_create(file, &qo, driver_done, c, c->msg, sizeof(c->msg));
    }
    bdev_unref(file); /* the creation holds its own reference */
    return ret;
}

/* qsd opens a `file` given as options only after the reply (its
 * coroutine has yielded by then): so does this job, all of it. */
static void start_qcow2_later(void *arg)
{
    struct create_job *c = arg;
    int ret = start_qcow2(c);

    if (ret < 0) {
        c->result = ret;
        driver_done(c, ret, c->msg);
    }
    job_unref(c->job);
}

static void create_run(struct job *job)
{
    struct create_job *c = to_create(job);
    const char *driver = opt_str(c->options, "driver");
    int ret;

    if (c->issued) {
        if (!c->finished) {
            return; /* not re-entered before driver_done; defensive */
        }
        job_progress_set_current(job, 1);
        job_completed_msg(job, c->result, c->result < 0 ? c->msg : NULL);
        return;
    }
    c->issued = true;
    job_io_begin(job, JOB_IO_DATA); /* the first write yields in qsd */
    if (!strcmp(driver, "file")) {
        ret = start_file(c);
    } else if (json_is_object(json_object_get(c->options, "file"))) {
        job_ref(job);
        bdev_call_later(start_qcow2_later, c);
        ret = 0;
    } else {
        ret = start_qcow2(c);
    }
    if (ret < 0) {
        c->finished = true;
        c->result = ret;
        c->reply_now = true;
        if (!c->msg[0]) {
            snprintf(c->msg, sizeof(c->msg), "%s", strerror(-ret));
        }
        job_io_end(job); /* re-enters: the job fails at once */
    } else if (strcmp(driver, "file")) {
        c->reply_now = true; /* qcow2: the first write yields */
    }
}

static void create_free(struct job *job)
{
    struct create_job *c = to_create(job);

    json_decref(c->options);
}

static const struct job_driver create_driver = {
    .instance_size = sizeof(struct create_job),
    .type = JOB_TYPE_CREATE,
    .is_block_job = false,
    .run = create_run,
    .free = create_free,
};

/* ---- QMP ------------------------------------------------------------- */

static const char create_schema[] =
    "["
    "{'enum': 'PreallocMode', 'data': ['off', 'metadata', 'falloc', 'full']},"
    "{'enum': 'BlockdevQcow2Version', 'data': ['v2', 'v3']},"
    "{'enum': 'Qcow2CompressionType', 'data': ['zlib', 'zstd']},"
    "{'enum': 'QCryptoBlockFormat', 'data': ['qcow', 'luks']},"
    "{'struct': 'QCryptoBlockOptionsQCow', 'data': {'*key-secret': 'str'}},"
    "{'enum': 'QCryptoCipherAlgorithm', 'data': ['aes-128', 'aes-192',"
    " 'aes-256', 'des', '3des', 'cast5-128', 'serpent-128', 'serpent-192',"
    " 'serpent-256', 'twofish-128', 'twofish-192', 'twofish-256']},"
    "{'enum': 'QCryptoCipherMode', 'data': ['ecb', 'cbc', 'xts', 'ctr']},"
    "{'enum': 'QCryptoIVGenAlgorithm', 'data': ['plain', 'plain64',"
    " 'essiv']},"
    "{'enum': 'QCryptoHashAlgorithm', 'data': ['md5', 'sha1', 'sha224',"
    " 'sha256', 'sha384', 'sha512', 'ripemd160']},"
    "{'struct': 'QCryptoBlockCreateOptionsLUKS',"
    " 'data': {'*key-secret': 'str', '*cipher-alg': 'QCryptoCipherAlgorithm',"
    "          '*cipher-mode': 'QCryptoCipherMode',"
    "          '*ivgen-alg': 'QCryptoIVGenAlgorithm',"
    "          '*ivgen-hash-alg': 'QCryptoHashAlgorithm',"
    "          '*hash-alg': 'QCryptoHashAlgorithm', '*iter-time': 'int'}},"
    "{'union': 'QCryptoBlockCreateOptions',"
    " 'base': {'format': 'QCryptoBlockFormat'}, 'discriminator': 'format',"
    " 'data': {'qcow': 'QCryptoBlockOptionsQCow',"
    "          'luks': 'QCryptoBlockCreateOptionsLUKS'}},"
    "{'struct': 'BlockdevCreateOptionsFile',"
    " 'data': {'filename': 'str', 'size': 'size',"
    "          '*preallocation': 'PreallocMode', '*nocow': 'bool',"
    "          '*extent-size-hint': 'size'}},"
    "{'struct': 'BlockdevCreateOptionsQcow2',"
    " 'data': {'file': 'BlockdevRef', '*data-file': 'BlockdevRef',"
    "          '*data-file-raw': 'bool', '*extended-l2': 'bool',"
    "          'size': 'size', '*version': 'BlockdevQcow2Version',"
    "          '*backing-file': 'str', '*backing-fmt': 'BlockdevDriver',"
    "          '*encrypt': 'QCryptoBlockCreateOptions',"
    "          '*cluster-size': 'size', '*preallocation': 'PreallocMode',"
    "          '*lazy-refcounts': 'bool', '*refcount-bits': 'int',"
    "          '*compression-type': 'Qcow2CompressionType'}},"
    "{'union': 'BlockdevCreateOptions', 'base': {'driver': 'BlockdevDriver'},"
    " 'discriminator': 'driver',"
    " 'data': {'file': 'BlockdevCreateOptionsFile',"
    "          'qcow2': 'BlockdevCreateOptionsQcow2'}},"
    "{'command': 'blockdev-create',"
    " 'data': {'job-id': 'str', 'options': 'BlockdevCreateOptions'}}"
    "]";

static json_t *qmp_blockdev_create(json_t *args, struct qmp_session *sess,
                                   struct qmp_error *err)
{
    json_t *options = json_object_get(args, "options");
    const char *driver = opt_str(options, "driver");
    const char *id = opt_str(args, "job-id");
    struct create_job *c;
    struct job *job;

    if (strcmp(driver, "file") && strcmp(driver, "qcow2")) {
        qmp_error_setg(err, "Driver does not support blockdev-create");
        return NULL;
    }
    job = job_create(&create_driver, id, bdev_loop(), true, false, err);
    if (!job) {
        return NULL;
    }
    c = to_create(job);
    c->job = job;
    c->options = json_deep_copy(options);
    if (!c->options) {
        abort();
    }
    job_progress_set_total(job, 1);
    job_ref(job);
    job_start(job);
    if (!c->reply_now && sess) {
        /* The file is being created: qsd answers once it exists. */
        c->reply = qmp_session_defer(sess);
        job_unref(job);
        return NULL;
    }
    job_unref(job);
    return json_object();
}

static void create_qmp_init(void)
{
    qmp_schema_add(create_schema);
    qmp_command_register("blockdev-create", qmp_blockdev_create);
}

const struct job_type_def create_job_type = {
    .name = "create",
    .qmp_init = create_qmp_init,
};
