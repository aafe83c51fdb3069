/* qcow2 refcount rebuild, run when an image with the dirty bit set is
 * opened read-write (QEMU repairs such images on open too).
 *
 * The dirty bit means refcounts may be stale (lazy refcounts: a writer
 * skipped refcount updates and died before the clean close). L1 and L2
 * tables are always right, so the refcounts are recomputed from them: every
 * cluster referenced by the header, the L1 tables (active and snapshots'),
 * the L2 tables they point at, the data and compressed clusters those point
 * at, and the snapshot table. The new refcount blocks and table are written
 * past the end of the file, flushed, and only then does the caller switch
 * the header to them and clear the dirty bit in one sector write. A crash
 * before that leaves the old image as it was (still dirty: repaired again
 * next time); the old refcount structures become free space.
 *
 * Everything is synchronous: it runs inside blockdev-add, like the rest of
 * the open path. Memory is bounded by the number of host clusters the file
 * holds (4 bytes each; images beyond QCOW2_REPAIR_MAX_CLUSTERS are refused
 * with a clear error rather than allocating without bound).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/bdev_int.h"
#include "backends/qcow2.h"

#define QCOW2_REPAIR_MAX_CLUSTERS (1ull << 24)
#define SNAP_FIXED_LEN            40u

struct rebuild {
    struct bdev *file;
    const struct qcow2_header *h;
    uint64_t cs;
    unsigned cb;
    uint64_t file_clusters;
    uint32_t *rc;
    uint64_t nrc;
    uint8_t *buf; /* one cluster */
    char *errbuf;
    size_t errlen;
};

static int fail(struct rebuild *r, int ret, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct rebuild *r, int ret, const char *fmt, ...)
{
    va_list ap;
    int n =
        snprintf(r->errbuf, r->errlen, "qcow2: Could not repair dirty image: ");

    va_start(ap, fmt);
    if (n > 0 && (size_t)n < r->errlen) {
        vsnprintf(r->errbuf + n, r->errlen - (size_t)n, fmt, ap);
    }
    va_end(ap);
    return ret;
}

/* Counts one reference to every cluster of [off, off + len). */
static int ref_range(struct rebuild *r, uint64_t off, uint64_t len,
                     const char *what)
{
    uint64_t first, last;

    if (len == 0) {
        return 0;
    }
    first = off >> r->cb;
    last = (off + len - 1) >> r->cb;
    if (off + len < off || last >= r->nrc) {
        return fail(r, -EINVAL,
                    "%s at offset 0x%llx lies past the end of "
                    "the file",
                    what, (unsigned long long)off);
    }
    for (uint64_t c = first; c <= last; c++) {
        if (r->rc[c] == UINT32_MAX ||
            r->rc[c] >= qcow2_refcount_max(r->h->refcount_order)) {
            return fail(r, -EINVAL, "refcount of cluster 0x%llx overflows",
                        (unsigned long long)(c << r->cb));
        }
        r->rc[c]++;
    }
    return 0;
}

static int read_at(struct rebuild *r, uint64_t off, uint64_t len, void *buf)
{
    int ret = bdev_child_pread_sync(r->file, off, len, buf);

    return ret ? fail(r, ret, "read error: %s", strerror(-ret)) : 0;
}

/* One L2 table: the table itself, then what its entries point at. */
static int walk_l2(struct rebuild *r, uint64_t l2_off)
{
    const uint64_t *e = (const uint64_t *)(const void *)r->buf;
    int ret;

    if (l2_off & (r->cs - 1)) {
        return fail(r, -EINVAL, "L2 table offset 0x%llx is not aligned",
                    (unsigned long long)l2_off);
    }
    ret = ref_range(r, l2_off, r->cs, "L2 table");
    if (!ret) {
        ret = read_at(r, l2_off, r->cs, r->buf);
    }
    for (uint64_t i = 0; !ret && i < r->cs / 8; i++) {
        uint64_t entry = qcow2_be64(&e[i]);
        uint64_t host, n;

        switch (qcow2_l2_type(entry, r->h->version)) {
        case QCOW2_CL_UNALLOCATED:
        case QCOW2_CL_ZERO_PLAIN:
            break;
        case QCOW2_CL_ZERO_ALLOC:
        case QCOW2_CL_NORMAL:
            host = entry & QCOW2_OFFSET_MASK;
            if (host & (r->cs - 1)) {
                return fail(r, -EINVAL,
                            "data cluster offset 0x%llx is not "
                            "aligned",
                            (unsigned long long)host);
            }
            ret = ref_range(r, host, r->cs, "data cluster");
            break;
        case QCOW2_CL_COMPRESSED:
            qcow2_compressed_range(entry, r->cb, &host, &n);
            /* The stored sector count may run past the file's last byte;
             * only clusters the file holds are counted. */
            if (host < r->file_clusters << r->cb && host + n > r->file_clusters
                                                                   << r->cb) {
                n = (r->file_clusters << r->cb) - host;
            }
            ret = ref_range(r, host, n, "compressed cluster");
            break;
        }
    }
    return ret;
}

/* One L1 table (active or a snapshot's). */
static int walk_l1(struct rebuild *r, uint64_t l1_off, uint64_t l1_size)
{
    uint64_t bytes = l1_size * 8;
    uint64_t *l1;
    int ret;

    if (l1_size == 0) {
        return 0;
    }
    if (l1_size > QCOW2_MAX_L1_BYTES / 8 || (l1_off & (r->cs - 1))) {
        return fail(r, -EINVAL, "invalid L1 table at offset 0x%llx",
                    (unsigned long long)l1_off);
    }
    ret = ref_range(r, l1_off, bytes, "L1 table");
    if (ret) {
        return ret;
    }
    l1 = malloc(bytes);
    if (!l1) {
        return fail(r, -ENOMEM, "out of memory");
    }
    ret = read_at(r, l1_off, bytes, l1);
    for (uint64_t i = 0; !ret && i < l1_size; i++) {
        uint64_t l2 = qcow2_be64(&l1[i]) & QCOW2_OFFSET_MASK;

        if (l2) {
            ret = walk_l2(r, l2);
        }
    }
    free(l1);
    return ret;
}

static int walk_snapshots(struct rebuild *r)
{
    const struct qcow2_header *h = r->h;
    uint64_t off = h->snapshots_offset;
    uint8_t fixed[SNAP_FIXED_LEN];
    int ret;

    for (uint32_t i = 0; i < h->nb_snapshots; i++) {
        uint64_t l1_off, len;
        uint32_t l1_size, extra;
        uint16_t id_len, name_len;

        ret = read_at(r, off, sizeof(fixed), fixed);
        if (ret) {
            return ret;
        }
        l1_off = qcow2_be64(fixed);
        l1_size = qcow2_be32(fixed + 8);
        id_len = qcow2_be16(fixed + 12);
        name_len = qcow2_be16(fixed + 14);
        extra = qcow2_be32(fixed + 36);
        if (extra > 1024 * 1024) {
            return fail(r, -EINVAL, "snapshot %u has a bad entry", i);
        }
        ret = walk_l1(r, l1_off, l1_size);
        if (ret) {
            return ret;
        }
        len = SNAP_FIXED_LEN + extra + id_len + name_len;
        off += (len + 7) & ~7ull;
        if (off > r->file_clusters << r->cb) {
            return fail(r, -EINVAL,
                        "snapshot table runs past the end of "
                        "the file");
        }
    }
    return ref_range(r, h->snapshots_offset, off - h->snapshots_offset,
                     "snapshot table");
}

/* Sets or clears the COPIED flag of active L1 and L2 entries so that it
 * says "refcount is 1" exactly when it is (qemu-img check counts a wrong
 * flag as corruption; our write path relies on it to detect sharing). */
static int fix_copied(struct rebuild *r)
{
    const struct qcow2_header *h = r->h;
    uint64_t bytes = (uint64_t)h->l1_size * 8;
    uint64_t *l1, *e = (uint64_t *)(void *)r->buf;
    bool l1_changed = false;
    int ret = 0;

    if (!bytes) {
        return 0;
    }
    l1 = malloc(bytes);
    if (!l1) {
        return fail(r, -ENOMEM, "out of memory");
    }
    ret = read_at(r, h->l1_table_offset, bytes, l1);
    for (uint64_t i = 0; !ret && i < h->l1_size; i++) {
        uint64_t v = qcow2_be64(&l1[i]);
        uint64_t l2 = v & QCOW2_OFFSET_MASK;
        bool changed = false;
        uint64_t want;

        if (!l2) {
            continue;
        }
        want = r->rc[l2 >> r->cb] == 1 ? v | QCOW2_OFLAG_COPIED
                                       : v & ~QCOW2_OFLAG_COPIED;
        if (want != v) {
            qcow2_put_be64(&l1[i], want);
            l1_changed = true;
        }
        ret = read_at(r, l2, r->cs, r->buf);
        for (uint64_t j = 0; !ret && j < r->cs / 8; j++) {
            uint64_t x = qcow2_be64(&e[j]);
            enum qcow2_cluster_type t = qcow2_l2_type(x, h->version);
            uint64_t host = x & QCOW2_OFFSET_MASK;

            if (t != QCOW2_CL_NORMAL && t != QCOW2_CL_ZERO_ALLOC) {
                continue;
            }
            want = r->rc[host >> r->cb] == 1 ? x | QCOW2_OFLAG_COPIED
                                             : x & ~QCOW2_OFLAG_COPIED;
            if (want != x) {
                qcow2_put_be64(&e[j], want);
                changed = true;
            }
        }
        if (!ret && changed) {
            ret = bdev_child_pwrite_sync(r->file, l2, r->cs, r->buf);
        }
    }
    if (!ret && l1_changed) {
        ret = bdev_child_pwrite_sync(r->file, h->l1_table_offset, bytes, l1);
    }
    free(l1);
    if (ret && !r->errbuf[0]) {
        return fail(r, ret, "write error: %s", strerror(-ret));
    }
    return ret;
}

/* Writes refcount blocks and a table for r->rc[0..total) at cluster
 * `at`: nrb blocks, then the table. */
static int write_refcounts(struct rebuild *r, uint64_t at, uint64_t nrb,
                           uint64_t rtc)
{
    uint64_t per_block = (r->cs * 8) >> r->h->refcount_order;
    int ret = 0;

    for (uint64_t b = 0; !ret && b < nrb; b++) {
        memset(r->buf, 0, r->cs);
        for (uint64_t k = 0; k < per_block; k++) {
            uint64_t c = b * per_block + k;

            if (c < r->nrc && r->rc[c]) {
                qcow2_refcount_set(r->buf, k, r->h->refcount_order, r->rc[c]);
            }
        }
        ret = bdev_child_pwrite_sync(r->file, (at + b) << r->cb, r->cs, r->buf);
    }
    for (uint64_t t = 0; !ret && t < rtc; t++) {
        uint64_t *e = (uint64_t *)(void *)r->buf;

        memset(r->buf, 0, r->cs);
        for (uint64_t k = 0; k < r->cs / 8; k++) {
            uint64_t b = t * (r->cs / 8) + k;

            if (b < nrb) {
                qcow2_put_be64(&e[k], (at + b) << r->cb);
            }
        }
        ret = bdev_child_pwrite_sync(r->file, (at + nrb + t) << r->cb, r->cs,
                                     r->buf);
    }
    if (!ret) {
        ret = bdev_child_flush_sync(r->file);
    }
    return ret ? fail(r, ret, "write error: %s", strerror(-ret)) : 0;
}

int qcow2_rebuild_refcounts(struct bdev *file, const struct qcow2_header *h,
                            uint64_t *rt_offset, uint32_t *rt_clusters,
                            char *errbuf, size_t errlen)
{
    struct rebuild r = {
        .file = file, .h = h, .errbuf = errbuf, .errlen = errlen};
    int64_t flen = bdev_length(file);
    uint64_t per_block, total, nrb = 0, rtc = 0, at;
    int ret;

    errbuf[0] = '\0';
    r.cb = h->cluster_bits;
    r.cs = 1ull << r.cb;
    per_block = (r.cs * 8) >> h->refcount_order;
    if (flen < 0) {
        return fail(&r, (int)flen, "cannot get the file size");
    }
    r.file_clusters = ((uint64_t)flen + r.cs - 1) >> r.cb;
    if (r.file_clusters > QCOW2_REPAIR_MAX_CLUSTERS) {
        return fail(&r, -EFBIG, "image file too large (%llu clusters)",
                    (unsigned long long)r.file_clusters);
    }
    r.nrc = r.file_clusters ? r.file_clusters : 1;
    r.rc = calloc(r.nrc, sizeof(*r.rc));
    r.buf = bdev_buf_alloc(r.cs);
    if (!r.rc || !r.buf) {
        ret = fail(&r, -ENOMEM, "out of memory");
        goto out;
    }

    ret = ref_range(&r, 0, r.cs, "header");
    if (!ret) {
        ret = walk_l1(&r, h->l1_table_offset, h->l1_size);
    }
    if (!ret && h->nb_snapshots) {
        ret = walk_snapshots(&r);
    }
    if (!ret) {
        ret = fix_copied(&r);
    }
    if (ret) {
        goto out;
    }

    /* New refcount blocks and table go at the end of the file and must
     * count themselves: grow until the layout covers itself. */
    at = r.file_clusters;
    total = at;
    for (;;) {
        uint64_t nb = (total + per_block - 1) / per_block;
        uint64_t nt = (nb * 8 + r.cs - 1) >> r.cb;

        if (at + nb + nt == total && nb == nrb && nt == rtc) {
            break;
        }
        nrb = nb;
        rtc = nt;
        total = at + nb + nt;
    }
    if ((rtc << r.cb) > QCOW2_MAX_RT_BYTES) {
        ret = fail(&r, -EFBIG, "refcount table would be too large");
        goto out;
    }
    {
        uint32_t *grown = realloc(r.rc, total * sizeof(*r.rc));

        if (!grown) {
            ret = fail(&r, -ENOMEM, "out of memory");
            goto out;
        }
        memset(grown + r.nrc, 0, (total - r.nrc) * sizeof(*grown));
        r.rc = grown;
        r.nrc = total;
    }
    for (uint64_t c = at; c < total; c++) {
        r.rc[c] = 1;
    }
    ret = write_refcounts(&r, at, nrb, rtc);
    if (!ret) {
        *rt_offset = (at + nrb) << r.cb;
        *rt_clusters = (uint32_t)rtc;
    }

out:
    free(r.rc);
    bdev_buf_free(r.buf);
    return ret;
}
