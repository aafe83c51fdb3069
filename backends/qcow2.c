/* qcow2 format driver.
 *
 * Requests are small state machines: a request walks its range cluster run
 * by cluster run, issuing child I/O for each run as soon as the mapping is
 * known, so many child requests are in flight at once. Whenever a step
 * needs something not yet there (an L2 table or refcount block being
 * loaded, a cache slot, a cluster another request is allocating, a
 * metadata update in progress) it queues its waiter and returns; every such
 * event wakes all waiters, which simply retry their step.
 *
 * Metadata is cached write-back: L2 tables and refcount blocks live in two
 * bounded caches, the L1 and refcount tables in memory. A writeback snapshots
 * everything dirty at one instant and writes: refcount blocks, flush, L2
 * tables, flush, L1 sectors. So every on-disk L2/L1 entry points at a
 * cluster whose refcount increase (and data) is already stable; a crash
 * can only leak clusters. Writebacks run on flush, when a cache is full of
 * dirty entries, and on close. Refcount blocks and refcount-table growth are
 * written (and flushed) before anything can point into them.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "backends/qcow2_int.h"

/* ---- requests ------------------------------------------------------------ */

static void req_finish(struct q2_req *r)
{
    struct q2 *s = r->s;

    if (r->finished) {
        return;
    }
    r->finished = true;
    if (r->breq) {
        struct bdev_req *breq = r->breq;
        int ret = r->ret;

        free(r);
        if (s->submit_depth) {
            bdev_req_complete_later(breq, ret);
        } else {
            bdev_req_complete(breq, ret);
        }
    } else {
        r->done(r);
    }
}

void q2_req_check_done(struct q2_req *r)
{
    if (r->pending || r->w.queued || r->in_step) {
        return;
    }
    if (r->op == BDEV_OP_FLUSH) {
        if (r->phase == 3 || r->ret) {
            req_finish(r);
        }
        return;
    }
    if (r->pos == r->bytes || r->ret) {
        req_finish(r);
    }
}

static void flush_child_cb(void *opaque, int ret)
{
    struct q2_req *r = opaque;

    r->pending--;
    if (ret < 0 && !r->ret) {
        r->ret = ret;
    }
    r->phase = 3;
    q2_req_check_done(r);
}

static void flush_step(struct q2_req *r)
{
    struct q2 *s = r->s;
    int ret;

    if (r->phase == 0) {
        if (s->wb_running || s->meta_busy) {
            q2_wait(s, &r->w);
            return;
        }
        if (q2_meta_dirty(s)) {
            q2_wb_kick(s);
            r->wb_id = s->wb_started;
            r->phase = 1;
        } else {
            r->phase = 2;
        }
    }
    if (r->phase == 1) {
        if (s->wb_done < r->wb_id) {
            q2_wait(s, &r->w);
            return;
        }
        if (s->wb_done == r->wb_id && s->wb_ret) {
            r->ret = s->wb_ret;
            q2_req_check_done(r);
            return;
        }
        r->phase = 2;
    }
    if (r->phase == 2) {
        r->pending++;
        r->phase = 4; /* child flush in flight */
        ret = bdev_flush(s->bs->file, flush_child_cb, r);
        if (ret < 0) {
            r->pending--;
            r->ret = ret;
        }
    }
    q2_req_check_done(r);
}

void q2_req_step(struct q2_req *r)
{
    struct q2 *s = r->s;

    if (r->op == BDEV_OP_FLUSH) {
        flush_step(r);
        return;
    }
    /* Sub-operations failing synchronously must not finish (and free) the
     * request under our feet: completion is checked once, at the end. */
    r->in_step = true;
    while (r->pos < r->bytes && !r->ret) {
        uint64_t off = r->off + r->pos, len = r->bytes - r->pos;
        int64_t n;

        switch (r->op) {
        case BDEV_OP_READ:
            n = q2_read_one(r, off, len, r->buf + r->pos);
            break;
        case BDEV_OP_WRITE:
            n = q2_write_one(r, off, len, r->buf + r->pos);
            break;
        default: /* write-zeroes */
            if (s->m.h.version >= 3 && !(off & (s->cs - 1)) &&
                (len >= s->cs || off + len >= s->m.h.size)) {
                n = q2_zero_clusters(r, off, len);
            } else {
                uint64_t in = s->cs - (off & (s->cs - 1));
                n = q2_write_one(r, off, len < in ? len : in, NULL);
            }
            break;
        }
        if (n == -EAGAIN) {
            r->in_step = false;
            return;
        }
        if (n < 0) {
            r->ret = (int)n;
            break;
        }
        r->pos += (uint64_t)n;
    }
    r->in_step = false;
    q2_req_check_done(r);
}

static int qcow2_submit(struct bdev *bs, struct bdev_req *req)
{
    struct q2 *s = bs->state;
    struct q2_req *r;

    if (req->op != BDEV_OP_READ && req->op != BDEV_OP_FLUSH &&
        (s->m.h.incompatible_features & QCOW2_INCOMPAT_CORRUPT)) {
        return -EACCES;
    }
    r = calloc(1, sizeof(*r));
    if (!r) {
        return -ENOMEM;
    }
    r->s = s;
    r->w.resume = q2_req_resume;
    r->breq = req;
    r->op = req->op;
    r->off = req->offset;
    r->bytes = req->bytes;
    r->buf = req->buf;
    s->submit_depth++;
    q2_req_step(r);
    s->submit_depth--;
    return 0;
}

/* ---- change backing ------------------------------------------------------ */

struct q2_chb {
    struct q2_script sc;
    uint8_t *c0;
    bdev_cb *cb;
    void *opaque;
};

static void chb_written(struct q2_script *sc, int ret)
{
    struct q2_chb *ch = sc->opaque;
    struct q2 *s = sc->s;

    if (!ret) {
        struct qcow2_meta m = s->m;
        char err[256];

        memcpy(s->c0, ch->c0, s->cs);
        m.h.backing_file_offset = qcow2_be64(s->c0 + QCOW2_HDR_BACKING_OFFSET);
        m.h.backing_file_size = qcow2_be32(s->c0 + QCOW2_HDR_BACKING_SIZE);
        if (qcow2_parse_extensions(s->c0, s->cs, &m, err, sizeof(err)) == 0) {
            s->m = m;
        }
    }
    ch->cb(ch->opaque, ret);
    q2_script_release(&ch->sc); /* frees ch->c0 */
    free(ch);
}

static void chb_flushed(struct q2_req *r)
{
    struct q2_chb *ch = r->priv;
    int ret = r->ret;

    free(r);
    if (ret) {
        ch->sc.n = 0;
        bdev_buf_free(ch->c0);
        chb_written(&ch->sc, ret);
        return;
    }
    q2_script_next(&ch->sc);
}

static int qcow2_change_backing(struct bdev *bs, const char *backing_file,
                                const char *backing_fmt, bdev_cb *cb,
                                void *opaque)
{
    struct q2 *s = bs->state;
    struct q2_chb *ch;
    struct q2_req *r;
    char err[256];
    int ret;

    if (bs->read_only) {
        return -EPERM;
    }
    ch = calloc(1, sizeof(*ch));
    r = calloc(1, sizeof(*r));
    if (!ch || !r) {
        free(ch);
        free(r);
        return -ENOMEM;
    }
    ch->c0 = bdev_buf_alloc(s->cs);
    if (!ch->c0) {
        free(ch);
        free(r);
        return -ENOMEM;
    }
    ret = qcow2_build_cluster0(s->c0, &s->m, backing_file, backing_fmt, ch->c0,
                               err, sizeof(err));
    q2_script_init(&ch->sc, s);
    if (!ret) {
        ret = q2_script_add(&ch->sc, 0, s->cs, ch->c0, -1, false);
        if (ret) {
            ch->c0 = NULL; /* q2_script_add freed it */
        }
    } else {
        bdev_buf_free(ch->c0);
        ch->c0 = NULL;
    }
    if (!ret) {
        ret = q2_script_add(&ch->sc, 0, 0, NULL, -1, true);
    }
    if (ret) {
        q2_script_release(&ch->sc);
        free(ch);
        free(r);
        return ret;
    }
    ch->cb = cb;
    ch->opaque = opaque;
    ch->sc.done = chb_written;
    ch->sc.opaque = ch;
    /* Everything written before becomes stable first (internal flush). */
    r->s = s;
    r->w.resume = q2_req_resume;
    r->op = BDEV_OP_FLUSH;
    r->done = chb_flushed;
    r->priv = ch;
    s->submit_depth++;
    q2_req_step(r);
    s->submit_depth--;
    return 0;
}

/* ---- open / close -------------------------------------------------------- */

static int read_sync(struct q2 *s, uint64_t off, uint64_t len, void *buf)
{
    return bdev_child_pread_sync(s->bs->file, off, len, buf);
}

/* Rewrites the first sector of the header from s->c0, then flushes. */
static int write_header_sector_sync(struct q2 *s)
{
    int ret = bdev_child_pwrite_sync(s->bs->file, 0, s->align, s->c0);

    return ret ? ret : bdev_child_flush_sync(s->bs->file);
}

void q2_free(struct q2 *s)
{
    q2_free_list_drop(s->free_now);
    q2_free_list_drop(s->free_after_wb);
    s->free_now = s->free_after_wb = NULL;
    q2_cache_free(&s->l2c);
    q2_cache_free(&s->rbc);
    free(s->l1);
    free(s->rt);
    bdev_buf_free(s->c0);
    bdev_buf_free(s->zero_buf);
    s->l1 = NULL;
    s->rt = NULL;
    s->c0 = NULL;
    s->zero_buf = NULL;
}

static unsigned opt_cache_entries(json_t *opts, const char *key,
                                  uint64_t dflt_bytes, uint64_t cs,
                                  unsigned min)
{
    json_t *v = opts ? json_object_get(opts, key) : NULL;
    uint64_t bytes = dflt_bytes;
    uint64_t n;

    if (v && json_is_integer(v) && json_integer_value(v) > 0) {
        bytes = (uint64_t)json_integer_value(v);
    }
    n = bytes / cs;
    if (n < min) {
        n = min;
    }
    if (n > 65536) {
        n = 65536;
    }
    return (unsigned)n;
}

/* The dirty bit is set (a lazy-refcounts writer did not close cleanly):
 * rebuild the refcounts, then switch the header to them and clear the bit
 * in one sector write, as QEMU does when it opens such an image read-write.
 */
static int repair_dirty(struct q2 *s, struct qmp_error *err)
{
    uint64_t rt_off = 0, incompat;
    uint32_t rt_clusters = 0;
    char msg[512];
    int64_t flen;
    int ret;

    ret = qcow2_rebuild_refcounts(s->bs->file, &s->m.h, &rt_off, &rt_clusters,
                                  msg, sizeof(msg));
    if (ret) {
        qmp_error_setg(err, "%s", msg);
        return ret;
    }
    incompat = s->m.h.incompatible_features & ~QCOW2_INCOMPAT_DIRTY;
    qcow2_put_be64(s->c0 + QCOW2_HDR_RT_OFFSET, rt_off);
    qcow2_put_be32(s->c0 + QCOW2_HDR_RT_CLUSTERS, rt_clusters);
    qcow2_put_be64(s->c0 + QCOW2_HDR_INCOMPAT, incompat);
    ret = write_header_sector_sync(s);
    if (ret) {
        /* Header unchanged on disk (or torn inside one sector, which the
         * device writes whole): the image stays dirty. */
        q2_c0_restore_rt(s);
        qcow2_put_be64(s->c0 + QCOW2_HDR_INCOMPAT,
                       s->m.h.incompatible_features);
        qmp_error_setg(err, "Could not update qcow2 header: %s",
                       strerror(-ret));
        return ret;
    }
    s->m.h.refcount_table_offset = rt_off;
    s->m.h.refcount_table_clusters = rt_clusters;
    s->m.h.incompatible_features = incompat;
    flen = bdev_length(s->bs->file);
    if (flen > 0 && (uint64_t)flen > s->host_end) {
        s->host_end = (uint64_t)flen;
    }
    return 0;
}

/* Clears autoclear bits we do not maintain (bitmaps) before writing. */
static int prepare_write(struct q2 *s, struct qmp_error *err)
{
    const struct qcow2_header *h = &s->m.h;
    int ret;

    if (h->incompatible_features & QCOW2_INCOMPAT_CORRUPT) {
        qmp_error_setg(err,
                       "qcow2: Image is corrupt; cannot be opened read/write");
        return -EACCES;
    }
    if (h->version >= 3 && h->autoclear_features) {
        qcow2_put_be64(s->c0 + QCOW2_HDR_AUTOCLEAR, 0);
        ret = write_header_sector_sync(s);
        if (ret) {
            qcow2_put_be64(s->c0 + QCOW2_HDR_AUTOCLEAR, h->autoclear_features);
            qmp_error_setg(err, "Could not update qcow2 header: %s",
                           strerror(-ret));
            return ret;
        }
        s->m.h.autoclear_features = 0;
    }
    if (h->incompatible_features & QCOW2_INCOMPAT_DIRTY) {
        ret = repair_dirty(s, err);
        if (ret) {
            return ret;
        }
    }
    return 0;
}

/* The driver's options, checked once the header is read, in the order of
 * QEMU 7.2's qcow2_update_options_prepare. */
static int check_options(struct q2 *s, json_t *opts, struct qmp_error *err)
{
    static const char *const sizes[] = {"cache-size", "l2-cache-size",
                                        "l2-cache-entry-size",
                                        "refcount-cache-size"};
    json_t *v;

    if (!opts) {
        return 0;
    }
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        v = json_object_get(opts, sizes[i]);
        if (json_is_integer(v) && json_integer_value(v) < 0) {
            qmp_error_setg(err,
                           "Parameter '%s' expects a non-negative number "
                           "below 2^64",
                           sizes[i]);
            return -EINVAL;
        }
    }
    v = json_object_get(opts, "cache-clean-interval");
    if (json_is_integer(v) && (json_integer_value(v) < 0 ||
                               json_integer_value(v) > (json_int_t)UINT_MAX)) {
        qmp_error_setg(err, "Cache clean interval too big");
        return -EINVAL;
    }
    /* lazy-refcounts=on is accepted on v3 images (as QEMU does) but we
     * keep refcounts exact anyway: the image stays clean at every flush, so
     * the only cost is the ordering we already do. v2 cannot have it. */
    if (json_is_true(json_object_get(opts, "lazy-refcounts")) &&
        s->m.h.version < 3) {
        qmp_error_setg(err, "Lazy refcounts require a qcow2 image with at "
                            "least qemu 1.1 compatibility level");
        return -EINVAL;
    }
    v = json_object_get(opts, "encrypt");
    if (json_is_object(v)) {
        if (s->m.h.crypt_method == 0) {
            qmp_error_setg(err,
                           "No encryption in image header, but options "
                           "specified format '%s'",
                           json_string_value(json_object_get(v, "format")));
            return -EINVAL;
        }
        qmp_error_setg(err, "Encrypted qcow2 images are not supported");
        return -ENOTSUP;
    }
    return 0;
}

static int open_backing(struct bdev *bs, struct q2 *s, json_t *opts,
                        struct qmp_error *err)
{
    json_t *b = opts ? json_object_get(opts, "backing") : NULL;

    if (!b) {
        if (!s->m.has_backing) {
            return 0;
        }
        bs->backing = bdev_open_backing_file(
            bs, s->m.backing_file,
            s->m.backing_fmt[0] ? s->m.backing_fmt : NULL, err);
        return bs->backing ? 0 : -EINVAL;
    }
    if (json_is_null(b)) {
        return 0;
    }
    if (s->m.has_backing && json_is_object(b)) {
        /* QEMU opens a given backing with the header's name as its
         * 'filename' too, which only a 'file' child takes in. */
        json_t *f = json_object_get(b, "file");
        const char *fd = json_string_value(json_object_get(f, "driver"));
        const char *why = NULL;

        if (json_is_string(f)) {
            why = "Cannot reference an existing block device with "
                  "additional options or a new filename";
        } else if (fd && strcmp(fd, "null-co") == 0) {
            why = "The only allowed filename for this driver is 'null-co://'";
        } else if (fd && strcmp(fd, "file") != 0) {
            why = "Can't specify 'file' and 'filename' options at the same "
                  "time";
        }
        if (why) {
            qmp_error_setg(err, "Could not open backing file: %s", why);
            return -EINVAL;
        }
    }
    bs->backing = bdev_open_child(bs, b, true, err);
    if (!bs->backing) {
        qmp_error_prepend(err, "Could not open backing file: ");
        return -EINVAL;
    }
    return 0;
}

static int qcow2_open(struct bdev *bs, json_t *opts, struct qmp_error *err)
{
    struct q2 *s = bs->state;
    int64_t flen = bdev_length(bs->file);
    char msg[512];
    uint8_t *hdr = NULL;
    uint64_t n, l1_need;
    json_t *v;
    int ret;

    memset(s, 0, sizeof(*s));
    s->bs = bs;
    s->wq_tail = &s->wq_head;
    if (flen < 0) {
        qmp_error_setg(err, "Could not get the image size: %s",
                       strerror((int)-flen));
        return (int)flen;
    }
    if (opts && ((v = json_object_get(opts, "data-file")) != NULL &&
                 !json_is_null(v))) {
        qmp_error_setg(err, "External data files are not supported");
        return -ENOTSUP;
    }

    /* Fixed header first (up to 4 KiB), then all of cluster 0. */
    n = (uint64_t)flen < 4096 ? (uint64_t)flen : 4096;
    hdr = bdev_buf_alloc(4096);
    if (!hdr) {
        ret = -ENOMEM;
        goto oom;
    }
    memset(hdr, 0, 4096);
    ret = n ? read_sync(s, 0, n, hdr) : 0;
    if (ret) {
        qmp_error_setg(err, "Could not read qcow2 header: %s", strerror(-ret));
        goto fail;
    }
    ret = qcow2_parse_header(hdr, n, (uint64_t)flen, &s->m.h, msg, sizeof(msg));
    if (ret) {
        qmp_error_setg(err, "%s", msg);
        goto fail;
    }
    s->cb = s->m.h.cluster_bits;
    s->cs = 1ull << s->cb;
    s->l2_bits = s->cb - 3;
    s->l2_entries = s->cs / 8;
    s->rb_bits = s->cb + 3 - s->m.h.refcount_order;
    s->align = bdev_mem_align(bs->file);
    if (s->align < 512) {
        s->align = 512;
    }
    if (s->align > s->cs) {
        s->align = (uint32_t)s->cs; /* cluster-aligned I/O is all we do */
    }
    s->host_end = (uint64_t)flen;
    s->c0 = bdev_buf_alloc(s->cs);
    if (!s->c0) {
        ret = -ENOMEM;
        goto oom;
    }
    memset(s->c0, 0, s->cs);
    n = (uint64_t)flen < s->cs ? (uint64_t)flen : s->cs;
    ret = read_sync(s, 0, n, s->c0);
    if (ret) {
        qmp_error_setg(err, "Could not read qcow2 header: %s", strerror(-ret));
        goto fail;
    }
    ret = qcow2_parse_extensions(s->c0, n, &s->m, msg, sizeof(msg));
    if (!ret) {
        ret = qcow2_check_features(s->c0, &s->m, msg, sizeof(msg));
    }
    if (ret) {
        qmp_error_setg(err, "%s", msg);
        goto fail;
    }
    ret = check_options(s, opts, err);
    if (ret) {
        goto fail;
    }
    v = opts ? json_object_get(opts, "lazy-refcounts") : NULL;
    s->lazy =
        json_is_boolean(v)
            ? json_is_true(v)
            : (s->m.h.compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0;
    if (!bs->read_only) {
        ret = prepare_write(s, err);
        if (ret) {
            goto fail;
        }
    }

    /* L1 table (bounded by the header checks) and refcount table. */
    s->l1 = calloc(s->m.h.l1_size ? s->m.h.l1_size : 1, sizeof(uint64_t));
    s->rt_size = ((uint64_t)s->m.h.refcount_table_clusters << s->cb) / 8;
    s->rt = calloc(s->rt_size, sizeof(uint64_t));
    if (!s->l1 || !s->rt) {
        ret = -ENOMEM;
        goto oom;
    }
    if (s->m.h.l1_size) {
        ret = read_sync(s, s->m.h.l1_table_offset, (uint64_t)s->m.h.l1_size * 8,
                        s->l1);
    }
    if (!ret) {
        ret = read_sync(s, s->m.h.refcount_table_offset, s->rt_size * 8, s->rt);
    }
    if (ret) {
        qmp_error_setg(err, "Could not read qcow2 tables: %s", strerror(-ret));
        goto fail;
    }
    for (uint64_t i = 0; i < s->m.h.l1_size; i++) {
        s->l1[i] = qcow2_be64(&s->l1[i]);
    }
    for (uint64_t i = 0; i < s->rt_size; i++) {
        s->rt[i] = qcow2_be64(&s->rt[i]);
    }

    /* Caches: by default enough L2 to map the whole disk, up to 32 MiB. */
    l1_need = qcow2_l1_entries_needed(s->m.h.size, s->cb);
    ret = q2_cache_init(&s->l2c, s,
                        opt_cache_entries(opts, "l2-cache-size",
                                          l1_need * s->cs < Q2_DEFAULT_L2_CACHE
                                              ? l1_need * s->cs
                                              : Q2_DEFAULT_L2_CACHE,
                                          s->cs, Q2_MIN_CACHE_ENTRIES),
                        BDEV_EV_L2_LOAD);
    if (!ret) {
        ret = q2_cache_init(&s->rbc, s,
                            opt_cache_entries(opts, "refcount-cache-size",
                                              4u << 20, s->cs,
                                              Q2_MIN_CACHE_ENTRIES),
                            BDEV_EV_REFBLOCK_LOAD);
    }
    if (ret) {
        goto oom;
    }

    ret = open_backing(bs, s, opts, err);
    if (ret) {
        goto fail;
    }
    bs->cluster_size = (uint32_t)s->cs;
    bdev_buf_free(hdr);
    return 0;

oom:
    qmp_error_setg(err, "Could not open qcow2 image: %s", strerror(-ret));
fail:
    bdev_buf_free(hdr);
    q2_free(s);
    return ret < 0 ? ret : -EINVAL;
}

static void qcow2_close(struct bdev *bs)
{
    struct q2 *s = bs->state;

    if (!s->c0) {
        return;
    }
    if (!bs->read_only) {
        int ret = q2_wb_sync(s);

        /* Frees made safe by that writeback go out too, else they leak. */
        if (!ret && s->free_now && q2_process_frees(s, NULL) == 0) {
            ret = q2_wb_sync(s);
        }
        if (!ret) {
            bdev_child_flush_sync(bs->file);
        }
    }
    q2_free(s);
}

static int qcow2_reopen(struct bdev *bs, bool read_write, struct qmp_error *err)
{
    struct q2 *s = bs->state;
    int ret;

    if (read_write) {
        return prepare_write(s, err);
    }
    s->shown_dirty = false;
    ret = q2_wb_sync(s);
    if (!ret) {
        ret = bdev_child_flush_sync(bs->file);
    }
    if (ret) {
        qmp_error_setg(err, "Could not flush qcow2 metadata: %s",
                       strerror(-ret));
    }
    return ret;
}

static int64_t qcow2_length(struct bdev *bs)
{
    struct q2 *s = bs->state;

    return (int64_t)s->m.h.size;
}

static void qcow2_info(struct bdev *bs, json_t *info)
{
    struct q2 *s = bs->state;
    const struct qcow2_header *h = &s->m.h;
    json_t *data = json_object();
    json_t *spec = json_object();

    json_object_set_new(info, "cluster-size", json_integer((json_int_t)s->cs));
    json_object_set_new(data, "compat",
                        json_string(h->version >= 3 ? "1.1" : "0.10"));
    json_object_set_new(data, "compression-type", json_string("zlib"));
    if (h->version >= 3) {
        json_object_set_new(
            data, "lazy-refcounts",
            json_boolean(h->compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS));
    }
    json_object_set_new(data, "refcount-bits",
                        json_integer(1 << h->refcount_order));
    if (h->version >= 3) {
        json_object_set_new(
            data, "corrupt",
            json_boolean(h->incompatible_features & QCOW2_INCOMPAT_CORRUPT));
        json_object_set_new(data, "extended-l2", json_false());
    }
    json_object_set_new(spec, "type", json_string("qcow2"));
    json_object_set_new(spec, "data", data);
    json_object_set_new(info, "format-specific", spec);
    if (s->m.has_backing) {
        const char *img = bs->file ? bdev_filename(bs->file) : NULL;
        const char *sep = s->m.backing_file + strcspn(s->m.backing_file, ":/");
        char *full = NULL;

        /* Relative names are relative to the image's directory; a name
         * with a protocol prefix (a ':' before any '/', json:{...} too)
         * stands as it is. */
        if (s->m.backing_file[0] != '/' && *sep != ':' && img && img[0] &&
            strncmp(img, "json:", 5) != 0 && strrchr(img, '/')) {
            int dlen = (int)(strrchr(img, '/') - img);

            if (asprintf(&full, "%.*s/%s", dlen, img, s->m.backing_file) < 0) {
                full = NULL;
            }
        }
        json_object_set_new(info, "full-backing-filename",
                            json_string(full ? full : s->m.backing_file));
        free(full);
        json_object_set_new(info, "backing-filename",
                            json_string(s->m.backing_file));
        if (s->m.backing_fmt[0]) {
            json_object_set_new(info, "backing-filename-format",
                                json_string(s->m.backing_fmt));
        }
    }
    json_object_set_new(
        info, "dirty-flag",
        json_boolean((h->incompatible_features & QCOW2_INCOMPAT_DIRTY) ||
                     s->shown_dirty));
}

const struct bdev_driver bdev_drv_qcow2 = {
    .name = "qcow2",
    .is_format = true,
    .has_backing = true,
    .state_size = sizeof(struct q2),
    .options_type = "BlockdevOptionsQcow2",
    .open = qcow2_open,
    .close = qcow2_close,
    .length = qcow2_length,
    .submit = qcow2_submit,
    .block_status = qcow2_block_status,
    .change_backing = qcow2_change_backing,
    .reopen = qcow2_reopen,
    .info = qcow2_info,
    .truncate = qcow2_truncate,
};
