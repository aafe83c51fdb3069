/* qcow2 cluster mapping: L1 / L2 lookup, reads (plain, compressed, from
 * the backing), and block status. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "backends/qcow2_int.h"

/* ---- L1 / L2 ------------------------------------------------------------- */

/* The L2 table of guest cluster gc for reading (*pe NULL: unallocated). */
int q2_l2_table(struct q2 *s, uint64_t gc, struct q2_centry **pe,
                struct q2_waiter *w)
{
    uint64_t l1i = gc >> s->l2_bits;
    uint64_t off;

    *pe = NULL;
    if (l1i >= s->m.h.l1_size) {
        return -EIO;
    }
    off = s->l1[l1i] & QCOW2_OFFSET_MASK;
    if (!off) {
        return 0;
    }
    return q2_cache_get(s, &s->l2c, off, pe, w);
}

uint64_t q2_l2_get(struct q2 *s, const struct q2_centry *e, uint64_t gc)
{
    return e ? qcow2_be64(e->buf + (gc & (s->l2_entries - 1)) * 8) : 0;
}

void q2_l2_set(struct q2 *s, struct q2_centry *e, uint64_t gc, uint64_t v)
{
    qcow2_put_be64(e->buf + (gc & (s->l2_entries - 1)) * 8, v);
}

/* The L2 table of gc for writing: allocates one when missing. Tables shared
 * with internal snapshots (no COPIED flag) are not supported. */
int q2_l2_table_for_write(struct q2 *s, uint64_t gc, struct q2_centry **pe,
                          struct q2_waiter *w)
{
    uint64_t l1i = gc >> s->l2_bits;
    uint64_t l1e, off;
    struct q2_centry *v;
    int ret;

    if (l1i >= s->m.h.l1_size) {
        return -EIO;
    }
    l1e = s->l1[l1i];
    if (l1e & QCOW2_OFFSET_MASK) {
        if (!(l1e & QCOW2_OFLAG_COPIED)) {
            return -ENOTSUP;
        }
        return q2_cache_get(s, &s->l2c, l1e & QCOW2_OFFSET_MASK, pe, w);
    }
    v = q2_cache_victim(&s->l2c);
    if (!v || q2_cache_grow_waits(s, &s->l2c, v)) {
        q2_wb_kick(s);
        q2_wait(s, w);
        return -EAGAIN;
    }
    ret = q2_centry_buf(s, v);
    if (ret) {
        return ret;
    }
    ret = q2_alloc_clusters(s, 1, &off, w);
    if (ret) {
        return ret;
    }
    bdev_debug_event(s->bs->file, BDEV_EV_L2_ALLOC_WRITE);
    *pe = q2_cache_install(s, &s->l2c, v, off);
    s->l1[l1i] = off | QCOW2_OFLAG_COPIED;
    q2_l1_mark_dirty(s, l1i);
    return 0;
}

struct q2_alloc *q2_alloc_overlap(struct q2 *s, uint64_t gc, uint64_t n)
{
    for (struct q2_alloc *a = s->allocs; a; a = a->next) {
        if (gc < a->gc + a->n && a->gc < gc + n) {
            return a;
        }
    }
    return NULL;
}

bool q2_valid_data_cluster(struct q2 *s, uint64_t entry, uint64_t n)
{
    uint64_t off = entry & QCOW2_OFFSET_MASK;

    return !(off & (s->cs - 1)) && q2_host_range_ok(s, off, n << s->cb);
}

/* ---- read pieces --------------------------------------------------------- */

static int inflate_cluster(const uint8_t *src, uint64_t len, uint8_t *dst,
                           uint64_t cs)
{
    z_stream z;
    int ret;

    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, -12) != Z_OK) {
        return -ENOMEM;
    }
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)len;
    z.next_out = dst;
    z.avail_out = (uInt)cs;
    ret = inflate(&z, Z_FINISH);
    inflateEnd(&z);
    if ((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && z.avail_out == 0) {
        return 0;
    }
    return -EIO;
}

static void piece_cb(void *opaque, int ret)
{
    struct q2_piece *p = opaque;
    struct q2_req *r = p->r;
    struct q2 *s = r->s;

    if (!ret && p->kind == PIECE_COMPRESSED) {
        uint8_t *tmp = malloc(s->cs);

        if (!tmp) {
            ret = -ENOMEM;
        } else {
            ret = inflate_cluster(p->bounce + p->skip, p->clen, tmp, s->cs);
            if (!ret) {
                memcpy(p->dst, tmp + p->in_cluster, p->bytes);
            }
            free(tmp);
        }
    }
    bdev_buf_free(p->bounce);
    free(p);
    r->pending--;
    if (ret < 0 && !r->ret) {
        r->ret = ret;
    }
    q2_req_check_done(r);
}

struct q2_piece *q2_piece_new(struct q2_req *r)
{
    struct q2_piece *p = calloc(1, sizeof(*p));

    if (p) {
        p->r = r;
    }
    return p;
}

/* Issues a child read/write for a piece; counts it as pending. */
int q2_piece_io(struct q2_req *r, struct q2_piece *p, struct bdev *child,
                bool write, uint64_t off, uint64_t len, void *buf)
{
    int ret;

    r->pending++;
    ret = write ? bdev_write(child, off, len, buf, piece_cb, p)
                : bdev_read(child, off, len, buf, piece_cb, p);
    if (ret < 0) {
        r->pending--;
        bdev_buf_free(p->bounce);
        free(p);
    }
    return ret;
}

static int64_t read_compressed(struct q2_req *r, uint64_t entry, uint64_t off,
                               uint64_t len, uint8_t *dst)
{
    struct q2 *s = r->s;
    uint64_t host, nbytes, a = s->align, start, end;
    struct q2_piece *p;

    qcow2_compressed_range(entry, s->cb, &host, &nbytes);
    if (host < s->cs || host >= s->host_end) {
        return -EIO;
    }
    start = host & ~(a - 1);
    end = (host + nbytes + a - 1) & ~(a - 1);
    p = q2_piece_new(r);
    if (!p) {
        return -ENOMEM;
    }
    p->kind = PIECE_COMPRESSED;
    p->bounce = bdev_buf_alloc(end - start);
    if (!p->bounce) {
        free(p);
        return -ENOMEM;
    }
    p->dst = dst;
    p->skip = host - start;
    p->clen = nbytes;
    p->in_cluster = off & (s->cs - 1);
    p->bytes = len;
    bdev_debug_event(s->bs->file, BDEV_EV_READ_COMPRESSED);
    return q2_piece_io(r, p, s->bs->file, false, start, end - start, p->bounce);
}

/* Dispatches one run of same-kind clusters of a read; returns the bytes
 * covered, -EAGAIN or -errno. */
int64_t q2_read_one(struct q2_req *r, uint64_t off, uint64_t len, uint8_t *dst)
{
    struct q2 *s = r->s;
    struct bdev *bs = s->bs;
    uint64_t gc = off >> s->cb, n = 1, bytes, e0, limit;
    enum qcow2_cluster_type t;
    struct q2_centry *e;
    struct q2_piece *p;
    int ret;

    ret = q2_l2_table(s, gc, &e, &r->w);
    if (ret) {
        return ret;
    }
    limit = (gc | (s->l2_entries - 1)) + 1;
    if (limit > ((off + len - 1) >> s->cb) + 1) {
        limit = ((off + len - 1) >> s->cb) + 1;
    }
    e0 = q2_l2_get(s, e, gc);
    t = qcow2_l2_type(e0, s->m.h.version);
    if (t != QCOW2_CL_COMPRESSED) {
        while (gc + n < limit) {
            uint64_t en = q2_l2_get(s, e, gc + n);

            if (qcow2_l2_type(en, s->m.h.version) != t ||
                (t == QCOW2_CL_NORMAL &&
                 (en & QCOW2_OFFSET_MASK) !=
                     (e0 & QCOW2_OFFSET_MASK) + (n << s->cb))) {
                break;
            }
            n++;
        }
    }
    bytes = ((gc + n) << s->cb) - off;
    if (bytes > len) {
        bytes = len;
    }
    switch (t) {
    case QCOW2_CL_ZERO_PLAIN:
    case QCOW2_CL_ZERO_ALLOC:
        memset(dst, 0, bytes);
        return (int64_t)bytes;
    case QCOW2_CL_UNALLOCATED: {
        int64_t blen = bs->backing ? bdev_length(bs->backing) : 0;
        uint64_t rd;

        if (blen < 0) {
            return blen;
        }
        if (off >= (uint64_t)blen) {
            memset(dst, 0, bytes);
            return (int64_t)bytes;
        }
        rd = (uint64_t)blen - off < bytes ? (uint64_t)blen - off : bytes;
        memset(dst + rd, 0, bytes - rd);
        p = q2_piece_new(r);
        if (!p) {
            return -ENOMEM;
        }
        bdev_debug_event(bs->file, BDEV_EV_READ_BACKING_AIO);
        ret = q2_piece_io(r, p, bs->backing, false, off, rd, dst);
        return ret ? ret : (int64_t)bytes;
    }
    case QCOW2_CL_COMPRESSED:
        ret = (int)read_compressed(r, e0, off, bytes, dst);
        return ret ? ret : (int64_t)bytes;
    case QCOW2_CL_NORMAL:
        if (!q2_valid_data_cluster(s, e0, n)) {
            return -EIO;
        }
        p = q2_piece_new(r);
        if (!p) {
            return -ENOMEM;
        }
        bdev_debug_event(bs->file, BDEV_EV_READ_AIO);
        ret = q2_piece_io(r, p, bs->file, false,
                          (e0 & QCOW2_OFFSET_MASK) + (off & (s->cs - 1)), bytes,
                          dst);
        return ret ? ret : (int64_t)bytes;
    }
    return -EIO;
}

/* ---- block status -------------------------------------------------------- */

struct q2_status {
    struct q2 *s;
    struct q2_waiter w;
    uint64_t off, bytes, pnum;
    unsigned status;
    enum qcow2_cluster_type type; /* of the run so far */
    uint64_t next_host;           /* host offset the run's next cluster needs */
    int ret;
    bdev_status_cb *cb;
    void *opaque;
};

static unsigned entry_status(struct q2 *s, uint64_t entry)
{
    switch (qcow2_l2_type(entry, s->m.h.version)) {
    case QCOW2_CL_UNALLOCATED:
        return 0;
    case QCOW2_CL_ZERO_PLAIN:
    case QCOW2_CL_ZERO_ALLOC:
        return BDEV_STATUS_ALLOCATED | BDEV_STATUS_ZERO;
    default:
        return BDEV_STATUS_ALLOCATED | BDEV_STATUS_DATA;
    }
}

static void status_deliver(void *arg)
{
    struct q2_status *st = arg;

    st->cb(st->opaque, st->ret, st->status, st->pnum);
    free(st);
}

/* One answer covers clusters of one type (QEMU 7.2's qcow2_get_host_offset:
 * plain and preallocated zero clusters differ, compressed ones come one by
 * one), with host offsets following each other where the clusters have
 * one, and never goes past the end of the L2 table of its first cluster:
 * where a run ends decides the chunks of a stream. */
static bool status_extends(struct q2_status *st, enum qcow2_cluster_type t,
                           uint64_t host)
{
    if (t != st->type || t == QCOW2_CL_COMPRESSED) {
        return false;
    }
    if (t == QCOW2_CL_NORMAL || t == QCOW2_CL_ZERO_ALLOC) {
        return host == st->next_host;
    }
    return true;
}

static void status_run(struct q2_status *st, bool deferred)
{
    struct q2 *s = st->s;
    uint64_t gc = (st->off + st->pnum) >> s->cb;
    uint64_t limit = (gc | (s->l2_entries - 1)) + 1;
    struct q2_centry *e;
    int ret;

    ret = q2_l2_table(s, gc, &e, &st->w);
    if (ret == -EAGAIN) {
        return;
    }
    if (ret) {
        st->ret = ret;
        st->pnum = 0;
        goto out;
    }
    for (; gc < limit; gc++) {
        uint64_t entry = e ? q2_l2_get(s, e, gc) : 0;
        enum qcow2_cluster_type t = qcow2_l2_type(entry, s->m.h.version);
        uint64_t host = entry & QCOW2_OFFSET_MASK;
        uint64_t cend = (gc + 1) << s->cb;

        if (!e) {
            /* No L2 table: the whole range it would map is free. */
            gc = limit - 1;
            cend = limit << s->cb;
        }
        if (st->pnum == 0) {
            st->status = entry_status(s, entry);
            st->type = t;
        } else if (!status_extends(st, t, host)) {
            goto out;
        }
        st->next_host = host + s->cs;
        st->pnum = cend - st->off;
        if (st->pnum >= st->bytes) {
            st->pnum = st->bytes;
            goto out;
        }
    }
out:
    if (deferred) {
        status_deliver(st);
    } else {
        bdev_call_later(status_deliver, st);
    }
}

static void status_resume(struct q2_waiter *w)
{
    status_run(
        (struct q2_status *)(void *)((char *)w - offsetof(struct q2_status, w)),
        true);
}

int qcow2_block_status(struct bdev *bs, uint64_t offset, uint64_t bytes,
                       bdev_status_cb *cb, void *opaque)
{
    struct q2_status *st = calloc(1, sizeof(*st));

    if (!st) {
        return -ENOMEM;
    }
    st->s = bs->state;
    st->w.resume = status_resume;
    st->off = offset;
    st->bytes = bytes;
    st->cb = cb;
    st->opaque = opaque;
    status_run(st, false);
    return 0;
}
