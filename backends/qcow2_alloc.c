/* qcow2 allocation: refcounts, new refcount blocks and table growth,
 * cluster allocation and frees, allocating writes with copy-on-write from
 * the backing, and zero clusters. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "backends/qcow2_int.h"

/* ---- refcounts and cluster allocation ----------------------------------- */

struct q2_meta_op {
    struct q2_script sc;
    uint64_t rti, rb_off;
    uint64_t *new_rt;
    uint64_t new_rt_size, new_rt_off;
    uint32_t new_rt_clusters;
    uint64_t new_end;
};

/* Puts the refcount table fields of the in-memory cluster 0 back to what
 * the header in force says (after a failed switch to a new table). */
void q2_c0_restore_rt(struct q2 *s)
{
    qcow2_put_be64(s->c0 + QCOW2_HDR_RT_OFFSET, s->m.h.refcount_table_offset);
    qcow2_put_be32(s->c0 + QCOW2_HDR_RT_CLUSTERS,
                   s->m.h.refcount_table_clusters);
}

static void meta_op_free(struct q2_meta_op *mo)
{
    q2_script_release(&mo->sc);
    free(mo->new_rt);
    free(mo);
}

static void meta_op_done(struct q2_script *sc, int ret)
{
    struct q2_meta_op *mo = sc->opaque;
    struct q2 *s = sc->s;

    if (!ret) {
        if (mo->new_rt) {
            struct q2_free *f = calloc(1, sizeof(*f));

            if (f) { /* the old table: nothing points at it any more */
                f->off = s->m.h.refcount_table_offset;
                f->len = (uint64_t)s->m.h.refcount_table_clusters << s->cb;
                f->next = s->free_now;
                s->free_now = f;
            }
            free(s->rt);
            s->rt = mo->new_rt;
            mo->new_rt = NULL;
            s->rt_size = mo->new_rt_size;
            s->m.h.refcount_table_offset = mo->new_rt_off;
            s->m.h.refcount_table_clusters = mo->new_rt_clusters;
        } else {
            s->rt[mo->rti] = mo->rb_off;
        }
    } else {
        s->alloc_err = ret;
        if (mo->new_rt) {
            /* Undo the in-memory header change; the disk has the old one
             * unless the header write went through, which needs a flush
             * that failed: a retry rewrites everything anyway. */
            q2_c0_restore_rt(s);
        }
    }
    meta_op_free(mo);
    s->meta_busy = false;
    q2_wake_all(s);
}

/* A refcount block for table index `rti` (inside the table), placed at
 * cluster `c` of its own range so it describes itself. */
static int start_new_refblock(struct q2 *s, uint64_t rti, uint64_t c)
{
    struct q2_meta_op *mo = calloc(1, sizeof(*mo));
    uint8_t *buf = bdev_buf_alloc(s->cs);
    int ret;

    if (!mo || !buf) {
        free(mo);
        bdev_buf_free(buf);
        return -ENOMEM;
    }
    memset(buf, 0, s->cs);
    qcow2_refcount_set(buf, c & ((1ull << s->rb_bits) - 1),
                       s->m.h.refcount_order, 1);
    q2_script_init(&mo->sc, s);
    mo->rti = rti;
    mo->rb_off = c << s->cb;
    ret = q2_script_add(&mo->sc, mo->rb_off, s->cs, buf,
                        BDEV_EV_REFBLOCK_UPDATE, false);
    if (!ret) {
        ret = q2_script_add(&mo->sc, 0, 0, NULL, -1, true);
    }
    if (!ret) {
        /* The table entry goes out from a copy with the new entry set. */
        uint64_t saved = s->rt[rti];

        s->rt[rti] = mo->rb_off;
        ret = q2_script_table_window(s, &mo->sc, s->m.h.refcount_table_offset,
                                     s->rt_size * 8, s->rt, s->rt_size, rti,
                                     rti + 1, -1);
        s->rt[rti] = saved;
    }
    if (!ret) {
        ret = q2_script_add(&mo->sc, 0, 0, NULL, -1, true);
    }
    if (ret) {
        q2_script_release(&mo->sc);
        free(mo);
        return ret;
    }
    if ((c + 1) << s->cb > s->host_end) {
        s->host_end = (c + 1) << s->cb;
    }
    s->meta_busy = true;
    mo->sc.done = meta_op_done;
    mo->sc.opaque = mo;
    q2_script_next(&mo->sc);
    return 0;
}

/* Grows the refcount table so it has an entry `rti`. The new table and the
 * refcount blocks describing it go right after everything the old table
 * covers (all free by definition), then the header switches over. */
static int start_grow_rt(struct q2 *s, uint64_t rti)
{
    uint64_t old = s->rt_size;
    uint64_t rbe = 1ull << s->rb_bits;
    uint64_t c0 = old << s->rb_bits;
    uint64_t k = 1, t = 0, want;
    struct q2_meta_op *mo;
    uint8_t *hdr;
    int ret = 0;

    for (;;) {
        want = old * 2;
        if (want < rti + 1) {
            want = rti + 1;
        }
        if (want < old + k) {
            want = old + k;
        }
        t = (want * 8 + s->cs - 1) >> s->cb;
        if ((k + t + rbe - 1) / rbe <= k) {
            break;
        }
        k = (k + t + rbe - 1) / rbe;
    }
    if (t << s->cb > QCOW2_MAX_RT_BYTES ||
        ((c0 + k + t) << s->cb) >> s->cb != c0 + k + t) {
        return -EFBIG;
    }
    mo = calloc(1, sizeof(*mo));
    if (!mo) {
        return -ENOMEM;
    }
    q2_script_init(&mo->sc, s);
    mo->new_rt_size = (t << s->cb) / 8;
    mo->new_rt = calloc(mo->new_rt_size, sizeof(uint64_t));
    if (!mo->new_rt) {
        free(mo);
        return -ENOMEM;
    }
    memcpy(mo->new_rt, s->rt, old * 8);
    mo->new_rt_off = (c0 + k) << s->cb;
    mo->new_rt_clusters = (uint32_t)t;
    for (uint64_t j = 0; j < k && !ret; j++) {
        uint8_t *buf = bdev_buf_alloc(s->cs);

        if (!buf) {
            ret = -ENOMEM;
            break;
        }
        memset(buf, 0, s->cs);
        for (uint64_t c = c0; c < c0 + k + t; c++) {
            if ((c >> s->rb_bits) == old + j) {
                qcow2_refcount_set(buf, c & (rbe - 1), s->m.h.refcount_order,
                                   1);
            }
        }
        mo->new_rt[old + j] = (c0 + j) << s->cb;
        ret = q2_script_add(&mo->sc, (c0 + j) << s->cb, s->cs, buf,
                            BDEV_EV_REFBLOCK_UPDATE, false);
    }
    if (!ret) {
        uint8_t *buf = bdev_buf_alloc(t << s->cb);

        if (!buf) {
            ret = -ENOMEM;
        } else {
            for (uint64_t i = 0; i < mo->new_rt_size; i++) {
                qcow2_put_be64(buf + i * 8, mo->new_rt[i]);
            }
            ret = q2_script_add(&mo->sc, mo->new_rt_off, t << s->cb, buf, -1,
                                false);
        }
    }
    if (!ret) {
        ret = q2_script_add(&mo->sc, 0, 0, NULL, -1, true);
    }
    if (!ret) {
        /* Header fields 48..59 in one aligned write of the first sector. */
        qcow2_put_be64(s->c0 + QCOW2_HDR_RT_OFFSET, mo->new_rt_off);
        qcow2_put_be32(s->c0 + QCOW2_HDR_RT_CLUSTERS, (uint32_t)t);
        hdr = bdev_buf_alloc(s->align);
        if (!hdr) {
            ret = -ENOMEM;
        } else {
            memcpy(hdr, s->c0, s->align);
            ret = q2_script_add(&mo->sc, 0, s->align, hdr, -1, false);
        }
    }
    if (!ret) {
        ret = q2_script_add(&mo->sc, 0, 0, NULL, -1, true);
    }
    if (ret) {
        q2_c0_restore_rt(s);
        meta_op_free(mo);
        return ret;
    }
    if ((c0 + k + t) << s->cb > s->host_end) {
        s->host_end = (c0 + k + t) << s->cb;
    }
    s->meta_busy = true;
    mo->sc.done = meta_op_done;
    mo->sc.opaque = mo;
    q2_script_next(&mo->sc);
    return 0;
}

/* Refcount block for cluster index c, or NULL when none exists. */
static int refblock_for(struct q2 *s, uint64_t c, struct q2_centry **pe,
                        struct q2_waiter *w)
{
    uint64_t rti = c >> s->rb_bits;

    *pe = NULL;
    if (rti >= s->rt_size || !(s->rt[rti] & QCOW2_RT_OFFSET_MASK)) {
        return 0;
    }
    return q2_cache_get(s, &s->rbc, s->rt[rti] & QCOW2_RT_OFFSET_MASK, pe, w);
}

/* Applies queued frees, one cluster at a time (refcount blocks may need
 * loading). */
/* Synchronous refcount block lookup for close. */
static int refblock_sync(struct q2 *s, uint64_t c, struct q2_centry **pe)
{
    uint64_t rti = c >> s->rb_bits, off;
    struct q2_centry *e;
    int ret;

    *pe = NULL;
    if (rti >= s->rt_size || !(s->rt[rti] & QCOW2_RT_OFFSET_MASK)) {
        return 0;
    }
    off = s->rt[rti] & QCOW2_RT_OFFSET_MASK;
    e = q2_cache_find(&s->rbc, off);
    if (e) {
        if (e->state != CE_READY) {
            return -EBUSY;
        }
        e->lru = ++s->rbc.clock;
        *pe = e;
        return 0;
    }
    if ((off & (s->cs - 1)) || !q2_host_range_ok(s, off, s->cs)) {
        return -EIO;
    }
    e = q2_cache_victim(&s->rbc);
    if (!e) {
        return -EBUSY;
    }
    ret = q2_centry_buf(s, e);
    if (ret) {
        return ret;
    }
    ret = bdev_child_pread_sync(s->bs->file, off, s->cs, e->buf);
    if (ret) {
        return ret;
    }
    e->offset = off;
    e->state = CE_READY;
    e->dirty = false;
    e->lru = ++s->rbc.clock;
    *pe = e;
    return 0;
}

int q2_process_frees(struct q2 *s, struct q2_waiter *w)
{
    unsigned order = s->m.h.refcount_order;

    while (s->free_now) {
        struct q2_free *f = s->free_now;
        uint64_t c = f->off >> s->cb;
        struct q2_centry *e;
        int ret = w ? refblock_for(s, c, &e, w) : refblock_sync(s, c, &e);

        if (ret == -EAGAIN || (!w && ret)) {
            return ret;
        }
        if (!ret && e) {
            uint64_t i = c & ((1ull << s->rb_bits) - 1);
            uint64_t rc = qcow2_refcount_get(e->buf, i, order);

            if (rc) {
                qcow2_refcount_set(e->buf, i, order, rc - 1);
                q2_cache_mark_dirty(s, &s->rbc, e);
                if (rc == 1 && c < s->free_idx) {
                    s->free_idx = c;
                }
            }
        }
        /* Next cluster of the range, or the next range. */
        if (((c + 1) << s->cb) < f->off + f->len) {
            f->len -= ((c + 1) << s->cb) - f->off;
            f->off = (c + 1) << s->cb;
        } else {
            s->free_now = f->next;
            free(f);
        }
    }
    return 0;
}

/* Allocates n contiguous free clusters and sets their refcount to 1 in the
 * cache. 0 with *host, -EAGAIN (w queued) or -errno. */
int q2_alloc_clusters(struct q2 *s, uint64_t n, uint64_t *host,
                      struct q2_waiter *w)
{
    uint64_t rbe_mask = (1ull << s->rb_bits) - 1;
    uint64_t idx = s->free_idx, run = 0, cur_rti = UINT64_MAX;
    struct q2_centry *e = NULL;
    unsigned order = s->m.h.refcount_order;
    int ret;

    if (s->alloc_err) {
        ret = s->alloc_err;
        s->alloc_err = 0;
        return ret;
    }
    if (s->meta_busy) {
        q2_wait(s, w);
        return -EAGAIN;
    }
    ret = q2_process_frees(s, w);
    if (ret) {
        return ret;
    }
    idx = s->free_idx;
    while (run < n) {
        uint64_t c = idx + run;

        if (c >= (1ull << (56 - s->cb))) {
            return -ENOSPC;
        }
        if ((c >> s->rb_bits) != cur_rti) {
            cur_rti = c >> s->rb_bits;
            ret = refblock_for(s, c, &e, w);
            if (ret) {
                return ret;
            }
        }
        if (e && qcow2_refcount_get(e->buf, c & rbe_mask, order)) {
            idx = c + 1;
            run = 0;
        } else {
            run++;
        }
    }
    /* Every cluster needs an existing refcount block before counting. */
    for (uint64_t c = idx; c < idx + n; c++) {
        uint64_t rti = c >> s->rb_bits;

        if (rti >= s->rt_size) {
            ret = start_grow_rt(s, rti);
        } else if (!(s->rt[rti] & QCOW2_RT_OFFSET_MASK)) {
            ret = start_new_refblock(s, rti, c);
        } else {
            continue;
        }
        if (ret) {
            return ret;
        }
        q2_wait(s, w);
        return -EAGAIN;
    }
    /* Load them all first so the updates below happen in one go. */
    for (uint64_t c = idx; c < idx + n; c = (c | rbe_mask) + 1) {
        ret = refblock_for(s, c, &e, w);
        if (ret) {
            return ret;
        }
    }
    cur_rti = UINT64_MAX;
    for (uint64_t c = idx; c < idx + n; c++) {
        if ((c >> s->rb_bits) != cur_rti) {
            cur_rti = c >> s->rb_bits;
            ret = refblock_for(s, c, &e, w);
            if (ret || !e) {
                return ret ? ret : -EIO; /* cannot happen: loaded above */
            }
            q2_cache_mark_dirty(s, &s->rbc, e);
        }
        qcow2_refcount_set(e->buf, c & rbe_mask, order, 1);
    }
    bdev_debug_event(s->bs->file, BDEV_EV_CLUSTER_ALLOC);
    s->free_idx = idx + n;
    if ((idx + n) << s->cb > s->host_end) {
        s->host_end = (idx + n) << s->cb;
    }
    *host = idx << s->cb;
    return 0;
}

/* ---- allocating writes --------------------------------------------------- */

static void alloc_link(struct q2_alloc *a);

static void alloc_end(struct q2_alloc *a, int ret)
{
    struct q2 *s = a->s;
    struct q2_req *parent = a->parent;

    for (struct q2_alloc **pp = &s->allocs; *pp; pp = &(*pp)->next) {
        if (*pp == a) {
            *pp = a->next;
            break;
        }
    }
    bdev_buf_free(a->bounce);
    free(a);
    parent->pending--;
    if (ret < 0 && !parent->ret) {
        parent->ret = ret;
    }
    q2_wake_all(s);
    q2_req_check_done(parent);
}

static void alloc_link_resume(struct q2_waiter *w)
{
    alloc_link(
        (struct q2_alloc *)(void *)((char *)w - offsetof(struct q2_alloc, w)));
}

/* Points the L2 entries at the freshly written clusters. */
static void alloc_link(struct q2_alloc *a)
{
    struct q2 *s = a->s;
    struct q2_centry *e;
    int ret = q2_l2_table_for_write(s, a->gc, &e, &a->w);

    if (ret == -EAGAIN) {
        return;
    }
    if (ret) {
        alloc_end(a, ret);
        return;
    }
    for (uint64_t i = 0; i < a->n; i++) {
        uint64_t old = q2_l2_get(s, e, a->gc + i);
        uint64_t nv = (a->host + (i << s->cb)) | QCOW2_OFLAG_COPIED;

        if ((old & QCOW2_OFFSET_MASK) != (nv & QCOW2_OFFSET_MASK)) {
            q2_free_later(s, old, false);
        }
        q2_l2_set(s, e, a->gc + i, nv);
    }
    q2_cache_mark_dirty(s, &s->l2c, e);
    if (s->lazy) {
        s->shown_dirty = true;
    }
    alloc_end(a, 0);
}

static void alloc_write_cb(void *opaque, int ret)
{
    struct q2_alloc *a = opaque;

    if (ret < 0) {
        /* Nothing points at the new clusters yet: give them back at once
         * (as QEMU does), so a failed write leaves no leak behind. */
        struct q2_free *f = calloc(1, sizeof(*f));

        if (f) {
            f->off = a->host;
            f->len = a->n << a->s->cb;
            f->next = a->s->free_now;
            a->s->free_now = f;
        }
        alloc_end(a, ret);
        return;
    }
    alloc_link(a);
}

static void alloc_write(struct q2_alloc *a)
{
    struct q2 *s = a->s;
    const void *buf = a->bounce ? a->bounce : a->src;
    int ret;

    if (a->bounce) {
        if (a->src) {
            memcpy(a->bounce + a->d_off, a->src, a->d_len);
        } else {
            memset(a->bounce + a->d_off, 0, a->d_len);
        }
    }
    bdev_debug_event(s->bs->file, BDEV_EV_WRITE_AIO);
    ret =
        bdev_write(s->bs->file, a->host, a->n << s->cb, buf, alloc_write_cb, a);
    if (ret < 0) {
        alloc_end(a, ret);
    }
}

static void cow_read_done(struct q2_req *ir)
{
    struct q2_alloc *a = ir->priv;
    int ret = ir->ret;

    free(ir);
    if (ret < 0 && !a->ret) {
        a->ret = ret;
    }
    if (--a->pending == 0) {
        if (a->ret) {
            alloc_end(a, a->ret);
        } else {
            alloc_write(a);
        }
    }
}

void q2_req_resume(struct q2_waiter *w)
{
    q2_req_step(
        (struct q2_req *)(void *)((char *)w - offsetof(struct q2_req, w)));
}

/* Reads guest bytes [off, off + len) into buf for copy-on-write; bytes past
 * the virtual size read as zeroes. */
static void cow_read(struct q2_alloc *a, uint64_t off, uint64_t len,
                     uint8_t *buf)
{
    struct q2 *s = a->s;
    struct q2_req *ir;

    if (off >= s->m.h.size) {
        memset(buf, 0, len);
        return;
    }
    if (off + len > s->m.h.size) {
        memset(buf + (s->m.h.size - off), 0, off + len - s->m.h.size);
        len = s->m.h.size - off;
    }
    ir = calloc(1, sizeof(*ir));
    if (!ir) {
        a->ret = -ENOMEM;
        return;
    }
    ir->s = s;
    ir->w.resume = q2_req_resume;
    ir->op = BDEV_OP_READ;
    ir->off = off;
    ir->bytes = len;
    ir->buf = buf;
    ir->done = cow_read_done;
    ir->priv = a;
    a->pending++;
    q2_req_step(ir);
}

static void alloc_start(struct q2_alloc *a)
{
    struct q2 *s = a->s;
    uint64_t run = a->n << s->cb;
    uint64_t base = a->gc << s->cb;
    uint64_t tail = a->d_off + a->d_len;

    if (a->d_off == 0 && tail == run && a->src) {
        alloc_write(a);
        return;
    }
    a->bounce = bdev_buf_alloc(run);
    if (!a->bounce) {
        alloc_end(a, -ENOMEM);
        return;
    }
    /* Hold one count so COW reads completing at once don't race ahead. */
    a->pending = 1;
    if (a->d_off) {
        cow_read(a, base, a->d_off, a->bounce);
    }
    if (tail < run) {
        cow_read(a, base + tail, run - tail, a->bounce + tail);
    }
    a->pending--;
    if (a->pending == 0) {
        if (a->ret) {
            alloc_end(a, a->ret);
        } else {
            alloc_write(a);
        }
    }
}

static bool reads_as_zero(struct q2 *s, enum qcow2_cluster_type t)
{
    return t == QCOW2_CL_ZERO_PLAIN || t == QCOW2_CL_ZERO_ALLOC ||
           (t == QCOW2_CL_UNALLOCATED && !s->bs->backing && !s->m.has_backing);
}

/* Dispatches one run of a write (src NULL: zeroes). */
int64_t q2_write_one(struct q2_req *r, uint64_t off, uint64_t len,
                     const uint8_t *src)
{
    struct q2 *s = r->s;
    uint64_t gc = off >> s->cb, n = 1, bytes, e0, limit, host;
    uint64_t l1e = s->l1[gc >> s->l2_bits];
    enum qcow2_cluster_type t;
    struct q2_centry *e;
    struct q2_alloc *a;
    bool reuse;
    int ret;

    if ((l1e & QCOW2_OFFSET_MASK) && !(l1e & QCOW2_OFLAG_COPIED)) {
        return -ENOTSUP; /* L2 table shared with an internal snapshot */
    }
    ret = q2_l2_table(s, gc, &e, &r->w);
    if (ret) {
        return ret;
    }
    limit = (gc | (s->l2_entries - 1)) + 1;
    if (limit > ((off + len - 1) >> s->cb) + 1) {
        limit = ((off + len - 1) >> s->cb) + 1;
    }
    if (limit - gc > Q2_MAX_ALLOC_BYTES >> s->cb) {
        limit = gc + (Q2_MAX_ALLOC_BYTES >> s->cb);
        if (limit == gc) {
            limit = gc + 1;
        }
    }
    e0 = q2_l2_get(s, e, gc);
    t = qcow2_l2_type(e0, s->m.h.version);

    if (t == QCOW2_CL_NORMAL && (e0 & QCOW2_OFLAG_COPIED)) {
        struct q2_piece *p;

        while (gc + n < limit) {
            uint64_t en = q2_l2_get(s, e, gc + n);

            if (qcow2_l2_type(en, s->m.h.version) != QCOW2_CL_NORMAL ||
                !(en & QCOW2_OFLAG_COPIED) ||
                (en & QCOW2_OFFSET_MASK) !=
                    (e0 & QCOW2_OFFSET_MASK) + (n << s->cb)) {
                break;
            }
            n++;
        }
        bytes = ((gc + n) << s->cb) - off;
        if (bytes > len) {
            bytes = len;
        }
        if (!src && bytes > s->cs) {
            bytes = s->cs - (off & (s->cs - 1)); /* zero_buf is a cluster */
        }
        if (!q2_valid_data_cluster(s, e0, n)) {
            return -EIO;
        }
        if (!src && !s->zero_buf) {
            /* Made on first use: most nodes never write zeroes as data. */
            s->zero_buf = bdev_buf_alloc(s->cs);
            if (!s->zero_buf) {
                return -ENOMEM;
            }
            memset(s->zero_buf, 0, s->cs);
        }
        p = q2_piece_new(r);
        if (!p) {
            return -ENOMEM;
        }
        bdev_debug_event(s->bs->file, BDEV_EV_WRITE_AIO);
        ret = q2_piece_io(r, p, s->bs->file, true,
                          (e0 & QCOW2_OFFSET_MASK) + (off & (s->cs - 1)), bytes,
                          src ? (void *)src : s->zero_buf);
        return ret ? ret : (int64_t)bytes;
    }

    if (!src && reads_as_zero(s, t)) {
        bytes = ((gc + 1) << s->cb) - off;
        return (int64_t)(bytes > len ? len : bytes);
    }
    if (q2_alloc_overlap(s, gc, 1)) {
        q2_wait(s, &r->w);
        return -EAGAIN;
    }
    reuse = t == QCOW2_CL_ZERO_ALLOC && (e0 & QCOW2_OFLAG_COPIED);
    if (!reuse) {
        while (gc + n < limit) {
            uint64_t en = q2_l2_get(s, e, gc + n);
            enum qcow2_cluster_type tn = qcow2_l2_type(en, s->m.h.version);

            if ((tn == QCOW2_CL_NORMAL || tn == QCOW2_CL_ZERO_ALLOC) &&
                (en & QCOW2_OFLAG_COPIED)) {
                break;
            }
            if (q2_alloc_overlap(s, gc + n, 1)) {
                break;
            }
            n++;
        }
    }
    if (reuse) {
        if (!q2_valid_data_cluster(s, e0, 1)) {
            return -EIO;
        }
        host = e0 & QCOW2_OFFSET_MASK;
    } else {
        ret = q2_alloc_clusters(s, n, &host, &r->w);
        if (ret) {
            return ret;
        }
    }
    bytes = ((gc + n) << s->cb) - off;
    if (bytes > len) {
        bytes = len;
    }
    a = calloc(1, sizeof(*a));
    if (!a) {
        return -ENOMEM; /* allocated clusters leak, harmlessly */
    }
    a->s = s;
    a->parent = r;
    a->w.resume = alloc_link_resume;
    a->gc = gc;
    a->n = n;
    a->host = host;
    a->d_off = off - (gc << s->cb);
    a->d_len = bytes;
    a->src = src;
    a->next = s->allocs;
    s->allocs = a;
    r->pending++;
    alloc_start(a);
    return (int64_t)bytes;
}

/* Write-zeroes on whole clusters of a v3 image: only L2 entries change. */
int64_t q2_zero_clusters(struct q2_req *r, uint64_t off, uint64_t len)
{
    struct q2 *s = r->s;
    uint64_t gc = off >> s->cb, n, limit, bytes, end;
    struct q2_centry *e;
    int ret;

    end = off + len;
    limit = (gc | (s->l2_entries - 1)) + 1;
    /* Whole clusters only; the image's last cluster counts as whole when
     * the range reaches the virtual end. */
    n = (end >= s->m.h.size ? ((end + s->cs - 1) >> s->cb) : (end >> s->cb)) -
        gc;
    if (gc + n > limit) {
        n = limit - gc;
    }
    if (q2_alloc_overlap(s, gc, n)) {
        q2_wait(s, &r->w);
        return -EAGAIN;
    }
    bytes = (n << s->cb) > len ? len : (n << s->cb);
    if (!(s->l1[gc >> s->l2_bits] & QCOW2_OFFSET_MASK) && !s->bs->backing &&
        !s->m.has_backing) {
        return (int64_t)bytes; /* unallocated without backing: zeroes */
    }
    ret = q2_l2_table_for_write(s, gc, &e, &r->w);
    if (ret) {
        return ret;
    }
    for (uint64_t i = 0; i < n; i++) {
        uint64_t old = q2_l2_get(s, e, gc + i), nv;

        switch (qcow2_l2_type(old, s->m.h.version)) {
        case QCOW2_CL_ZERO_PLAIN:
        case QCOW2_CL_ZERO_ALLOC:
            continue;
        case QCOW2_CL_NORMAL:
            /* Keep our own cluster preallocated; drop shared ones. */
            nv = (old & QCOW2_OFLAG_COPIED) ? old | QCOW2_OFLAG_ZERO
                                            : QCOW2_OFLAG_ZERO;
            break;
        default:
            nv = QCOW2_OFLAG_ZERO;
            break;
        }
        if (!(nv & QCOW2_OFFSET_MASK)) {
            q2_free_later(s, old, false);
        }
        q2_l2_set(s, e, gc + i, nv);
    }
    q2_cache_mark_dirty(s, &s->l2c, e);
    return (int64_t)bytes;
}
