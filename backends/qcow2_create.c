/* blockdev-create for qcow2: the checks and texts of QEMU 7.2's
 * qcow2_co_create, and a new image written through an existing node.
 *
 * Layout, as QEMU's for the common cases (so qemu-img info, check and map
 * see the same image qemu-img create makes): cluster 0 the header, then
 * the refcount table, the refcount blocks, the L1 table; with preallocation
 * each L2 table followed by the data clusters it maps. Every cluster up to
 * the last one used has refcount 1, nothing else is referenced. The L1
 * table is written l1_size * 8 bytes long, so an image without
 * preallocation ends right after it, as QEMU's does.
 *
 * The writes go out through bdev_write, a few clusters in flight, then the
 * file grows to its preallocated end (bdev_truncate) and is flushed.
 */
#include "backends/image_create.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/qcow2.h"

#define WRITE_DEPTH         8
#define V3_HEADER_LEN       112u
#define FEATURE_ENTRY_BYTES 48u
#define FEATURE_TABLE_MIN   8192u /* QEMU writes the table from here up */

struct feature {
    uint8_t type, bit;
    const char *name;
};

/* QEMU 7.2's feature name table. */
static const struct feature features[] = {
    {0, 0, "dirty bit"},
    {0, 1, "corrupt bit"},
    {0, 2, "external data file"},
    {0, 3, "compression type"},
    {0, 4, "extended L2 entries"},
    {1, 0, "lazy refcounts"},
    {2, 0, "bitmaps"},
    {2, 1, "raw external data"},
};
#define N_FEATURES (sizeof(features) / sizeof(features[0]))

static bool is_pow2(uint64_t v)
{
    return v && !(v & (v - 1));
}

static unsigned log2u(uint64_t v)
{
    unsigned n = 0;

    while (v > 1) {
        v >>= 1;
        n++;
    }
    return n;
}

static uint64_t div_up(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

int qcow2_create_check(const struct qcow2_create_opts *o, char *errbuf,
                       size_t errlen)
{
    const char *v3 = "compatibility level 1.1 and above (use version=v3 or "
                     "greater)";

    if (o->size % 512) {
        snprintf(errbuf, errlen, "Image size must be a multiple of 512 bytes");
        return -EINVAL;
    }
    if (!is_pow2(o->cluster_size) || o->cluster_size < 512 ||
        o->cluster_size > (2u << 20)) {
        snprintf(errbuf, errlen,
                 "Cluster size must be a power of two between "
                 "512 and 2048k");
        return -EINVAL;
    }
    if (o->backing_file && o->prealloc != BDEV_PREALLOC_OFF) {
        snprintf(errbuf, errlen,
                 "Backing file and preallocation can only be used at the same "
                 "time if extended_l2 is on");
        return -EINVAL;
    }
    if (o->backing_fmt && !o->backing_file) {
        snprintf(errbuf, errlen,
                 "Backing format cannot be used without backing file");
        return -EINVAL;
    }
    if (o->version < 3 && o->lazy_refcounts) {
        snprintf(errbuf, errlen, "Lazy refcounts only supported with %s", v3);
        return -EINVAL;
    }
    if (o->refcount_bits > 64 || !is_pow2(o->refcount_bits)) {
        snprintf(errbuf, errlen,
                 "Refcount width must be a power of two and "
                 "may not exceed 64 bits");
        return -EINVAL;
    }
    if (o->version < 3 && o->refcount_bits != 16) {
        snprintf(errbuf, errlen,
                 "Different refcount widths than 16 bits require "
                 "compatibility level 1.1 or above (use version=v3 or "
                 "greater)");
        return -EINVAL;
    }
    return 0;
}

int qcow2_create_plan(const struct qcow2_create_opts *o,
                      struct qcow2_create_layout *l, char *errbuf,
                      size_t errlen)
{
    uint64_t cs = o->cluster_size, l1_bytes, l1c, base, rt = 1, rb = 1;

    memset(l, 0, sizeof(*l));
    l->cluster_bits = log2u(cs);
    l->l2_entries = cs / 8;
    l->rb_entries = cs * 8 / o->refcount_bits;
    l->l1_size = div_up(o->size, cs * l->l2_entries);
    if (l->l1_size > QCOW2_MAX_L1_BYTES / 8) {
        snprintf(errbuf, errlen,
                 "Could not resize image: Failed to grow the "
                 "L1 table: File too large");
        return -EFBIG;
    }
    l1_bytes = l->l1_size * 8;
    l1c = div_up(l1_bytes, cs);
    if (o->prealloc != BDEV_PREALLOC_OFF) {
        l->l2_count = l->l1_size;
        l->data_count = div_up(o->size, cs);
    }
    base = 1 + l1c + l->l2_count + l->data_count;
    for (;;) {
        uint64_t nrb = div_up(base + rt + rb, l->rb_entries);
        uint64_t nrt = div_up(nrb * 8, cs);

        if (nrb == rb && nrt == rt) {
            break;
        }
        rb = nrb > rb ? nrb : rb;
        rt = nrt > rt ? nrt : rt;
    }
    l->rt_clusters = rt;
    l->rb_count = rb;
    l->total = base + rt + rb;
    l->l1_offset = l->l1_size ? (1 + rt + rb) * cs : 0;
    if (l->l2_count) {
        l->file_end = l->total * cs;
    } else if (l->l1_size) {
        l->file_end = l->l1_offset + l1_bytes;
    } else {
        l->file_end = (1 + rt + rb) * cs;
    }
    return 0;
}

/* Start of the preallocated area: L2 table i, then its data clusters. */
static uint64_t l2_offset(const struct qcow2_create_layout *l, uint64_t i)
{
    uint64_t cs = 1ull << l->cluster_bits;
    uint64_t start = l->l1_offset + div_up(l->l1_size * 8, cs) * cs;

    return start + i * (1 + l->l2_entries) * cs;
}

static uint64_t data_offset(const struct qcow2_create_layout *l, uint64_t j)
{
    uint64_t cs = 1ull << l->cluster_bits;

    return l2_offset(l, j / l->l2_entries) + cs + (j % l->l2_entries) * cs;
}

static size_t put_ext(uint8_t *p, uint32_t magic, const void *data,
                      uint32_t len)
{
    qcow2_put_be32(p, magic);
    qcow2_put_be32(p + 4, len);
    memcpy(p + 8, data, len);
    return 8 + (len + 7) / 8 * 8;
}

/* Bytes cluster 0 needs: header, extensions, end marker, backing name. */
static size_t header_bytes(const struct qcow2_create_opts *o)
{
    size_t n = o->version >= 3 ? V3_HEADER_LEN : QCOW2_V2_HEADER_LEN;

    if (o->backing_fmt) {
        n += 8 + (strlen(o->backing_fmt) + 7) / 8 * 8;
    }
    if (o->version >= 3 && o->cluster_size >= FEATURE_TABLE_MIN) {
        n += 8 + N_FEATURES * FEATURE_ENTRY_BYTES;
    }
    n += 8;
    return n + (o->backing_file ? strlen(o->backing_file) : 0);
}

void qcow2_create_header(const struct qcow2_create_opts *o,
                         const struct qcow2_create_layout *l, uint8_t *out)
{
    size_t off;

    memset(out, 0, o->cluster_size);
    qcow2_put_be32(out, QCOW2_MAGIC);
    qcow2_put_be32(out + 4, o->version);
    qcow2_put_be32(out + 20, l->cluster_bits);
    qcow2_put_be64(out + 24, o->size);
    qcow2_put_be32(out + 36, (uint32_t)l->l1_size);
    qcow2_put_be64(out + 40, l->l1_offset);
    qcow2_put_be64(out + 48, o->cluster_size);
    qcow2_put_be32(out + 56, (uint32_t)l->rt_clusters);
    if (o->version >= 3) {
        qcow2_put_be64(out + 80,
                       o->lazy_refcounts ? QCOW2_COMPAT_LAZY_REFCOUNTS : 0);
        qcow2_put_be32(out + 96, log2u(o->refcount_bits));
        qcow2_put_be32(out + 100, V3_HEADER_LEN);
        off = V3_HEADER_LEN;
    } else {
        off = QCOW2_V2_HEADER_LEN;
    }
    if (o->backing_fmt) {
        off += put_ext(out + off, QCOW2_EXT_BACKING_FMT, o->backing_fmt,
                       (uint32_t)strlen(o->backing_fmt));
    }
    if (o->version >= 3 && o->cluster_size >= FEATURE_TABLE_MIN) {
        uint8_t table[N_FEATURES * FEATURE_ENTRY_BYTES] = {0};

        for (size_t i = 0; i < N_FEATURES; i++) {
            uint8_t *e = table + i * FEATURE_ENTRY_BYTES;

            e[0] = features[i].type;
            e[1] = features[i].bit;
            memcpy(e + 2, features[i].name, strlen(features[i].name));
        }
        off += put_ext(out + off, QCOW2_EXT_FEATURES, table, sizeof(table));
    }
    off += 8; /* end of extensions */
    if (o->backing_file) {
        size_t n = strlen(o->backing_file);

        qcow2_put_be64(out + 8, off);
        qcow2_put_be32(out + 16, (uint32_t)n);
        memcpy(out + off, o->backing_file, n);
    }
}

/* ---- writing it ------------------------------------------------------- */

struct qcow2_create {
    struct bdev *file;
    struct qcow2_create_opts o;
    char *backing_file, *backing_fmt;
    struct qcow2_create_layout l;
    uint64_t next_unit, n_units, done_units;
    unsigned in_flight;
    uint8_t *bufs[WRITE_DEPTH];
    bool used[WRITE_DEPTH];
    int ret;
    bool stopping;
    /* A failure QEMU reports after it wrote the image (an L1 past its
     * limit, a negative size, a backing name it could not store). */
    int late_ret;
    char msg[1200];
    bdev_create_cb *cb;
    void *opaque;
};

struct unit_write {
    struct qcow2_create *c;
    unsigned slot;
};

/* Unit k: what it is, where it goes and how long it is; fills buf. */
static uint64_t fill_unit(struct qcow2_create *c, uint64_t k, uint8_t *buf,
                          uint64_t *off)
{
    const struct qcow2_create_layout *l = &c->l;
    uint64_t cs = c->o.cluster_size, rt = l->rt_clusters, rb = l->rb_count;
    uint64_t l1c = div_up(l->l1_size * 8, cs), len = cs;

    memset(buf, 0, cs);
    if (k == 0) {
        qcow2_create_header(&c->o, l, buf);
        *off = 0;
        return cs;
    }
    k--;
    if (k < rt) {
        for (uint64_t e = 0; e < cs / 8; e++) {
            uint64_t idx = k * (cs / 8) + e;

            if (idx < rb) {
                qcow2_put_be64(buf + e * 8, (1 + rt + idx) * cs);
            }
        }
        *off = (1 + k) * cs;
        return cs;
    }
    k -= rt;
    if (k < rb) {
        unsigned order = log2u(c->o.refcount_bits);

        for (uint64_t e = 0; e < l->rb_entries; e++) {
            if (k * l->rb_entries + e < l->total) {
                qcow2_refcount_set(buf, e, order, 1);
            }
        }
        *off = (1 + rt + k) * cs;
        return cs;
    }
    k -= rb;
    if (k < l1c) {
        uint64_t first = k * (cs / 8);

        len = l->l1_size * 8 - k * cs;
        len = len > cs ? cs : len;
        for (uint64_t e = 0; e < len / 8 && l->l2_count; e++) {
            qcow2_put_be64(buf + e * 8,
                           l2_offset(l, first + e) | QCOW2_OFLAG_COPIED);
        }
        *off = l->l1_offset + k * cs;
        return len;
    }
    k -= l1c;
    for (uint64_t e = 0; e < l->l2_entries; e++) {
        uint64_t j = k * l->l2_entries + e;

        if (j < l->data_count) {
            qcow2_put_be64(buf + e * 8, data_offset(l, j) | QCOW2_OFLAG_COPIED);
        }
    }
    *off = l2_offset(l, k);
    return cs;
}

static void issue_units(struct qcow2_create *c);

static void finish(struct qcow2_create *c, int ret)
{
    if (ret == 0 && c->late_ret) {
        ret = c->late_ret;
    } else if (ret < 0 && !c->msg[0]) {
        snprintf(c->msg, sizeof(c->msg), "Could not write qcow2 header: %s",
                 strerror(-ret));
    }
    c->cb(c->opaque, ret, ret < 0 ? c->msg : NULL);
    for (unsigned i = 0; i < WRITE_DEPTH; i++) {
        bdev_buf_free(c->bufs[i]);
    }
    bdev_unref(c->file);
    free(c->backing_file);
    free(c->backing_fmt);
    free(c);
}

static void flush_done(void *opaque, int ret)
{
    finish(opaque, ret);
}

static void flush_now(struct qcow2_create *c)
{
    int ret = bdev_flush(c->file, flush_done, c);

    if (ret < 0) {
        finish(c, ret);
    }
}

static void truncate_done(void *opaque, int ret)
{
    struct qcow2_create *c = opaque;

    if (ret < 0) {
        snprintf(c->msg, sizeof(c->msg), "Could not resize image: %s",
                 strerror(-ret));
        finish(c, ret);
        return;
    }
    flush_now(c);
}

static void writes_done(struct qcow2_create *c)
{
    int64_t len = bdev_length(c->file);

    if (c->ret < 0) {
        finish(c, c->ret);
        return;
    }
    /* Preallocated data clusters lie past what was written: the file
     * grows to cover them (sparse, allocated or zeroed as asked). */
    if (c->l.l2_count && len >= 0 && (uint64_t)len < c->l.file_end) {
        enum bdev_prealloc mode = c->o.prealloc == BDEV_PREALLOC_METADATA
                                      ? BDEV_PREALLOC_OFF
                                      : c->o.prealloc;
        int ret = bdev_truncate(c->file, c->l.file_end, mode, truncate_done, c);

        if (ret < 0) {
            truncate_done(c, ret);
        }
        return;
    }
    flush_now(c);
}

static void unit_done(void *opaque, int ret)
{
    struct unit_write *w = opaque;
    struct qcow2_create *c = w->c;

    c->used[w->slot] = false;
    c->in_flight--;
    c->done_units++;
    free(w);
    if (ret < 0 && c->ret == 0) {
        c->ret = ret;
    }
    issue_units(c);
}

static void issue_units(struct qcow2_create *c)
{
    while (c->ret == 0 && c->next_unit < c->n_units &&
           c->in_flight < WRITE_DEPTH) {
        /* A short write (the L1 table's end) goes to the file through its
         * buffered descriptor: never while direct writes to the same page
         * are in flight, which the kernel reports as an I/O error at the
         * next flush. It waits for the others to complete. */
        if (c->next_unit == c->n_units - 1 && c->in_flight) {
            break;
        }
        unsigned slot = 0;
        struct unit_write *w;
        uint64_t off, len;
        int ret;

        while (c->used[slot]) {
            slot++;
        }
        if (!c->bufs[slot] &&
            !(c->bufs[slot] = bdev_buf_alloc(c->o.cluster_size))) {
            c->ret = -ENOMEM;
            break;
        }
        len = fill_unit(c, c->next_unit, c->bufs[slot], &off);
        w = malloc(sizeof(*w));
        if (!w) {
            abort();
        }
        w->c = c;
        w->slot = slot;
        ret = bdev_write(c->file, off, len, c->bufs[slot], unit_done, w);
        if (ret < 0) {
            free(w);
            c->ret = ret;
            break;
        }
        c->used[slot] = true;
        c->in_flight++;
        c->next_unit++;
    }
    if (c->in_flight == 0 && (c->ret < 0 || c->next_unit == c->n_units)) {
        writes_done(c);
    }
}

static void start_later(void *arg)
{
    issue_units(arg);
}

int qcow2_create(struct bdev *file, const struct qcow2_create_opts *o,
                 bdev_create_cb *cb, void *opaque, char *errbuf, size_t errlen)
{
    struct qcow2_create *c;
    int ret;

    ret = qcow2_create_check(o, errbuf, errlen);
    if (ret < 0) {
        return ret;
    }
    if (bdev_is_read_only(file)) {
        snprintf(errbuf, errlen, "Block node is read-only");
        return -EACCES;
    }
    c = calloc(1, sizeof(*c));
    if (!c) {
        abort();
    }
    c->o = *o;
    if ((o->backing_file && !(c->backing_file = strdup(o->backing_file))) ||
        (o->backing_fmt && !(c->backing_fmt = strdup(o->backing_fmt)))) {
        abort();
    }
    c->o.backing_file = c->backing_file;
    c->o.backing_fmt = c->backing_fmt;
    /* QEMU writes an empty image first, then grows it and names the
     * backing: what fails there fails after the empty image is written. */
    if ((int64_t)o->size < 0) {
        c->late_ret = -EINVAL;
        snprintf(c->msg, sizeof(c->msg),
                 "Could not resize image: Image size cannot be negative");
    } else if (qcow2_create_plan(&c->o, &c->l, c->msg, sizeof(c->msg)) < 0) {
        c->late_ret = -EFBIG;
    }
    if (c->late_ret) {
        c->o.size = 0;
        c->o.prealloc = BDEV_PREALLOC_OFF;
        c->o.backing_file = c->o.backing_fmt = NULL;
    } else if (o->backing_file &&
               (strlen(o->backing_file) > QCOW2_MAX_BACKING_NAME ||
                header_bytes(&c->o) > o->cluster_size)) {
        int e =
            strlen(o->backing_file) > QCOW2_MAX_BACKING_NAME ? EINVAL : ENOSPC;

        c->late_ret = -e;
        snprintf(c->msg, sizeof(c->msg),
                 "Could not assign backing file '%s' with format '%s': %s",
                 o->backing_file, o->backing_fmt ? o->backing_fmt : "(null)",
                 strerror(e));
        c->o.backing_file = c->o.backing_fmt = NULL;
    }
    qcow2_create_plan(&c->o, &c->l, errbuf, errlen);
    c->n_units = 1 + c->l.rt_clusters + c->l.rb_count +
                 div_up(c->l.l1_size * 8, o->cluster_size) + c->l.l2_count;
    c->file = file;
    bdev_ref(file);
    c->cb = cb;
    c->opaque = opaque;
    bdev_call_later(start_later, c);
    return 0;
}
