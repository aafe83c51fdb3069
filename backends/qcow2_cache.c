/* qcow2 metadata: waiters, the L2 table and refcount block caches, metadata
 * scripts (writes in parallel between flush barriers) and writeback. See
 * qcow2.c for the ordering that keeps a crash to leaked clusters. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "backends/qcow2_int.h"

/* ---- waiters ------------------------------------------------------------- */

void q2_wait(struct q2 *s, struct q2_waiter *w)
{
    if (w->queued) {
        return;
    }
    w->queued = true;
    w->next = NULL;
    *s->wq_tail = w;
    s->wq_tail = &w->next;
}

/* Resumes every waiter; re-entrant calls are folded into the running one. */
void q2_wake_all(struct q2 *s)
{
    if (s->waking) {
        s->wake_again = true;
        return;
    }
    s->waking = true;
    do {
        struct q2_waiter *w = s->wq_head;

        s->wake_again = false;
        s->wq_head = NULL;
        s->wq_tail = &s->wq_head;
        while (w) {
            struct q2_waiter *next = w->next;

            w->queued = false;
            w->resume(w);
            w = next;
        }
    } while (s->wake_again);
    s->waking = false;
}

/* ---- metadata cache ------------------------------------------------------ */

int q2_cache_init(struct q2_cache *c, struct q2 *s, unsigned n,
                  enum bdev_debug_event ev)
{
    c->e = calloc(n, sizeof(*c->e));
    if (!c->e) {
        return -ENOMEM;
    }
    c->n = n;
    c->load_ev = ev;
    /* Buffers come with first use (q2_centry_buf): the memory follows the
     * tables really used, not the configured bound. */
    for (unsigned i = 0; i < n; i++) {
        c->e[i].s = s;
    }
    return 0;
}

/* Gives a slot picked by q2_cache_victim its buffer. */
int q2_centry_buf(struct q2 *s, struct q2_centry *e)
{
    if (!e->buf) {
        e->buf = bdev_buf_alloc(s->cs);
        if (!e->buf) {
            return -ENOMEM;
        }
    }
    return 0;
}

void q2_cache_free(struct q2_cache *c)
{
    if (!c->e) {
        return;
    }
    for (unsigned i = 0; i < c->n; i++) {
        bdev_buf_free(c->e[i].buf);
    }
    free(c->e);
    c->e = NULL;
}

struct q2_centry *q2_cache_find(struct q2_cache *c, uint64_t off)
{
    for (unsigned i = 0; i < c->n; i++) {
        if (c->e[i].state != CE_FREE && c->e[i].offset == off) {
            return &c->e[i];
        }
    }
    return NULL;
}

/* A slot that can be reused: free or failed with a buffer, a clean one
 * out of use, a slot without a buffer yet, or else the least recently
 * used clean one. Dirty and loading entries stay. */
struct q2_centry *q2_cache_victim(struct q2_cache *c)
{
    struct q2_centry *best = NULL, *unused = NULL;

    for (unsigned i = 0; i < c->n; i++) {
        struct q2_centry *e = &c->e[i];

        if (e->state == CE_FREE || e->state == CE_ERROR) {
            if (e->buf) {
                return e;
            }
            if (!unused) {
                unused = e;
            }
            continue;
        }
        if (e->state == CE_READY && !e->dirty &&
            (!best || e->lru < best->lru)) {
            best = e;
        }
    }
    if (best && (!unused || c->clock - best->lru >= Q2_CACHE_RECENT)) {
        return best;
    }
    return unused ? unused : best;
}

/* A miss in c would take a new buffer while dirty tables pile up there:
 * better wait for a writeback if that makes one of them reusable, i.e. one
 * is out of use (hot ones would stay in use: growing is right then). Not
 * after a failed writeback: that would only retry it. */
bool q2_cache_grow_waits(struct q2 *s, struct q2_cache *c,
                         const struct q2_centry *v)
{
    bool wb_failed = s->wb_done == s->wb_started && s->wb_ret < 0;
    bool stale = false;

    if (!v || v->buf || wb_failed || c->ndirty < Q2_CACHE_DIRTY_KICK) {
        return false;
    }
    for (unsigned i = 0; i < c->n && !stale; i++) {
        const struct q2_centry *e = &c->e[i];

        stale = e->state == CE_READY && e->dirty &&
                c->clock - e->lru >= Q2_CACHE_RECENT;
    }
    return stale;
}

static void cache_load_cb(void *opaque, int ret)
{
    struct q2_centry *e = opaque;

    if (ret < 0) {
        e->state = CE_ERROR;
        e->err = ret;
    } else {
        e->state = CE_READY;
    }
    q2_wake_all(e->s);
}

bool q2_host_range_ok(struct q2 *s, uint64_t off, uint64_t len)
{
    return off >= s->cs && off <= s->host_end && len <= s->host_end - off;
}

/* Gets the table at `off`: 0 with *pe, -EAGAIN after queueing `w`, or
 * -errno. */
int q2_cache_get(struct q2 *s, struct q2_cache *c, uint64_t off,
                 struct q2_centry **pe, struct q2_waiter *w)
{
    struct q2_centry *e = q2_cache_find(c, off);
    int ret;

    if (e) {
        switch (e->state) {
        case CE_READY:
            e->lru = ++c->clock;
            *pe = e;
            return 0;
        case CE_LOADING:
            q2_wait(s, w);
            return -EAGAIN;
        default:
            /* Report the failure once; the next lookup retries. */
            ret = e->err ? e->err : -EIO;
            e->state = CE_FREE;
            return ret;
        }
    }
    if ((off & (s->cs - 1)) || !q2_host_range_ok(s, off, s->cs)) {
        return -EIO; /* table offset outside the image: corrupt */
    }
    e = q2_cache_victim(c);
    if (!e || q2_cache_grow_waits(s, c, e)) {
        q2_wb_kick(s);
        q2_wait(s, w);
        return -EAGAIN;
    }
    ret = q2_centry_buf(s, e);
    if (ret) {
        return ret;
    }
    e->offset = off;
    e->state = CE_LOADING;
    e->dirty = false;
    e->err = 0;
    e->lru = ++c->clock;
    bdev_debug_event(s->bs->file, c->load_ev);
    ret = bdev_read(s->bs->file, off, s->cs, e->buf, cache_load_cb, e);
    if (ret < 0) {
        e->state = CE_FREE;
        return ret;
    }
    q2_wait(s, w);
    return -EAGAIN;
}

void q2_cache_mark_dirty(struct q2 *s, struct q2_cache *c, struct q2_centry *e)
{
    if (!e->dirty) {
        e->dirty = true;
        c->ndirty++;
    }
    e->mod_seq = ++s->seq;
}

/* Installs a new, zeroed, dirty table at `off` into slot `v`. */
struct q2_centry *q2_cache_install(struct q2 *s, struct q2_cache *c,
                                   struct q2_centry *v, uint64_t off)
{
    struct q2_centry *old = q2_cache_find(c, off);

    if (old && old != v) {
        v = old; /* a stale clean copy of a reused cluster */
        if (v->dirty) {
            c->ndirty--;
            v->dirty = false;
        }
    }
    v->offset = off;
    v->state = CE_READY;
    v->err = 0;
    v->lru = ++c->clock;
    memset(v->buf, 0, s->cs);
    v->dirty = false;
    q2_cache_mark_dirty(s, c, v);
    return v;
}

/* ---- metadata scripts: writes in parallel between flush barriers -------- */

void q2_script_init(struct q2_script *sc, struct q2 *s)
{
    memset(sc, 0, sizeof(*sc));
    sc->s = s;
}

int q2_script_add(struct q2_script *sc, uint64_t off, uint64_t len,
                  uint8_t *buf, int ev, bool flush)
{
    if (sc->n == sc->cap) {
        unsigned cap = sc->cap ? sc->cap * 2 : 16;
        struct q2_mop *ops = realloc(sc->ops, cap * sizeof(*ops));

        if (!ops) {
            bdev_buf_free(buf);
            return -ENOMEM;
        }
        sc->ops = ops;
        sc->cap = cap;
    }
    sc->ops[sc->n++] = (struct q2_mop){off, len, buf, ev, flush};
    return 0;
}

/* Copies `len` bytes of `src` into a new aligned buffer and queues them. */
static int script_write_copy(struct q2_script *sc, uint64_t off, uint64_t len,
                             const void *src, int ev)
{
    uint8_t *buf = bdev_buf_alloc(len);

    if (!buf) {
        return -ENOMEM;
    }
    memcpy(buf, src, len);
    return q2_script_add(sc, off, len, buf, ev, false);
}

void q2_script_release(struct q2_script *sc)
{
    for (unsigned i = 0; i < sc->n; i++) {
        bdev_buf_free(sc->ops[i].buf);
    }
    free(sc->ops);
    sc->ops = NULL;
    sc->n = sc->cap = 0;
}

static void script_io_cb(void *opaque, int ret)
{
    struct q2_script *sc = opaque;

    sc->inflight--;
    if (ret < 0 && !sc->ret) {
        sc->ret = ret;
    }
    q2_script_next(sc);
}

void q2_script_next(struct q2_script *sc)
{
    struct bdev *file = sc->s->bs->file;

    while (sc->next < sc->n && !sc->ret) {
        struct q2_mop *op = &sc->ops[sc->next];
        int ret;

        if (op->flush) {
            if (sc->inflight) {
                return;
            }
            sc->next++;
            sc->inflight++;
            ret = bdev_flush(file, script_io_cb, sc);
            if (ret < 0) {
                sc->inflight--;
                sc->ret = ret;
            }
            return;
        }
        sc->next++;
        sc->inflight++;
        if (op->ev >= 0) {
            bdev_debug_event(file, (enum bdev_debug_event)op->ev);
        }
        ret = bdev_write(file, op->off, op->len, op->buf, script_io_cb, sc);
        if (ret < 0) {
            sc->inflight--;
            sc->ret = ret;
        }
    }
    if (sc->inflight == 0) {
        sc->done(sc, sc->ret);
    }
}

static int script_run_sync(struct q2_script *sc)
{
    struct bdev *file = sc->s->bs->file;
    int ret = 0;

    for (unsigned i = 0; i < sc->n && !ret; i++) {
        struct q2_mop *op = &sc->ops[i];

        if (op->flush) {
            ret = bdev_child_flush_sync(file);
        } else {
            if (op->ev >= 0) {
                bdev_debug_event(file, (enum bdev_debug_event)op->ev);
            }
            ret = bdev_child_pwrite_sync(file, op->off, op->len, op->buf);
        }
    }
    return ret;
}

/* Aligned window of an in-memory big-endian table around [lo, hi) bytes;
 * the table's clusters bound it, so no foreign data is overwritten. */
int q2_script_table_window(struct q2 *s, struct q2_script *sc,
                           uint64_t table_off, uint64_t table_bytes,
                           const uint64_t *tab, uint64_t n_entries, uint64_t lo,
                           uint64_t hi, int ev)
{
    uint64_t a = s->align;
    uint64_t alloc_bytes = (table_bytes + s->cs - 1) & ~(s->cs - 1);
    uint64_t start = lo * 8 & ~(a - 1);
    uint64_t end = (hi * 8 + a - 1) & ~(a - 1);
    uint8_t *buf;

    if (end > alloc_bytes) {
        end = alloc_bytes;
    }
    buf = bdev_buf_alloc(end - start);
    if (!buf) {
        return -ENOMEM;
    }
    memset(buf, 0, end - start);
    for (uint64_t i = start / 8; i < end / 8 && i < n_entries; i++) {
        qcow2_put_be64(buf + i * 8 - start, tab[i]);
    }
    return q2_script_add(sc, table_off + start, end - start, buf, ev, false);
}

/* ---- writeback ----------------------------------------------------------- */

struct q2_wb {
    struct q2_script sc;
    struct q2_free *frees;
    struct q2_centry **ents;
    uint64_t *seqs;
    unsigned nents;
    uint64_t l1_lo, l1_hi;
};

bool q2_meta_dirty(struct q2 *s)
{
    return s->l2c.ndirty || s->rbc.ndirty || s->l1_hi > s->l1_lo;
}

void q2_l1_mark_dirty(struct q2 *s, uint64_t idx)
{
    if (s->l1_hi <= s->l1_lo) {
        s->l1_lo = idx;
        s->l1_hi = idx + 1;
        return;
    }
    if (idx < s->l1_lo) {
        s->l1_lo = idx;
    }
    if (idx + 1 > s->l1_hi) {
        s->l1_hi = idx + 1;
    }
}

static void free_list_splice(struct q2_free **dst, struct q2_free *src)
{
    while (src) {
        struct q2_free *next = src->next;

        src->next = *dst;
        *dst = src;
        src = next;
    }
}

void q2_free_list_drop(struct q2_free *f)
{
    while (f) {
        struct q2_free *next = f->next;

        free(f);
        f = next;
    }
}

/* Queues a free of the host clusters behind an L2 entry being replaced. */
void q2_free_later(struct q2 *s, uint64_t entry, bool now)
{
    struct q2_free *f;
    uint64_t off, len;

    switch (qcow2_l2_type(entry, s->m.h.version)) {
    case QCOW2_CL_COMPRESSED:
        qcow2_compressed_range(entry, s->cb, &off, &len);
        break;
    case QCOW2_CL_NORMAL:
    case QCOW2_CL_ZERO_ALLOC:
        off = entry & QCOW2_OFFSET_MASK;
        len = s->cs;
        break;
    default:
        return;
    }
    f = calloc(1, sizeof(*f));
    if (!f) {
        return; /* a leak, harmless */
    }
    f->off = off;
    f->len = len;
    f->next = now ? s->free_now : s->free_after_wb;
    if (now) {
        s->free_now = f;
    } else {
        s->free_after_wb = f;
    }
}

static void wb_free(struct q2_wb *wb)
{
    q2_free_list_drop(wb->frees);
    q2_script_release(&wb->sc);
    free(wb->ents);
    free(wb->seqs);
    free(wb);
}

/* Snapshots all dirty metadata into a script (see the top comment for the
 * order). Returns NULL on ENOMEM or when nothing is dirty. */
static struct q2_wb *wb_build(struct q2 *s, int *err)
{
    struct q2_wb *wb = calloc(1, sizeof(*wb));
    unsigned total = s->l2c.n + s->rbc.n, k = 0;
    int ret = 0;
    bool l1 = s->l1_hi > s->l1_lo;

    *err = 0;
    if (!wb) {
        *err = -ENOMEM;
        return NULL;
    }
    q2_script_init(&wb->sc, s);
    wb->ents = calloc(total, sizeof(*wb->ents));
    wb->seqs = calloc(total, sizeof(*wb->seqs));
    if (!wb->ents || !wb->seqs) {
        ret = -ENOMEM;
        goto fail;
    }
    for (unsigned i = 0; i < s->rbc.n && !ret; i++) {
        struct q2_centry *e = &s->rbc.e[i];
        if (e->state == CE_READY && e->dirty) {
            ret = script_write_copy(&wb->sc, e->offset, s->cs, e->buf,
                                    BDEV_EV_REFBLOCK_UPDATE);
            wb->ents[k] = e;
            wb->seqs[k++] = e->mod_seq;
        }
    }
    if (!ret && (s->l2c.ndirty || l1)) {
        /* Refcounts and the data of completed writes become stable before
         * any table points at them. */
        ret = q2_script_add(&wb->sc, 0, 0, NULL, -1, true);
    }
    for (unsigned i = 0; i < s->l2c.n && !ret; i++) {
        struct q2_centry *e = &s->l2c.e[i];
        if (e->state == CE_READY && e->dirty) {
            ret = script_write_copy(&wb->sc, e->offset, s->cs, e->buf,
                                    BDEV_EV_L2_UPDATE);
            wb->ents[k] = e;
            wb->seqs[k++] = e->mod_seq;
        }
    }
    if (!ret && l1) {
        if (s->l2c.ndirty) {
            ret = q2_script_add(&wb->sc, 0, 0, NULL, -1, true);
        }
        if (!ret) {
            ret = q2_script_table_window(s, &wb->sc, s->m.h.l1_table_offset,
                                         (uint64_t)s->m.h.l1_size * 8, s->l1,
                                         s->m.h.l1_size, s->l1_lo, s->l1_hi,
                                         BDEV_EV_L1_UPDATE);
        }
        wb->l1_lo = s->l1_lo;
        wb->l1_hi = s->l1_hi;
        s->l1_lo = s->l1_hi = 0;
    }
    wb->nents = k;
    if (ret) {
        goto fail;
    }
    wb->frees = s->free_after_wb;
    s->free_after_wb = NULL;
    if (wb->sc.n == 0) {
        wb_free(wb);
        return NULL;
    }
    return wb;

fail:
    if (wb->l1_hi > wb->l1_lo) {
        q2_l1_mark_dirty(s, wb->l1_lo);
        q2_l1_mark_dirty(s, wb->l1_hi - 1);
    }
    wb_free(wb);
    *err = ret;
    return NULL;
}

/* Marks what the writeback wrote as clean (unless changed meanwhile). */
static void wb_finish(struct q2 *s, struct q2_wb *wb, int ret)
{
    for (unsigned i = 0; i < wb->nents; i++) {
        struct q2_centry *e = wb->ents[i];
        struct q2_cache *c =
            (e >= s->l2c.e && e < s->l2c.e + s->l2c.n) ? &s->l2c : &s->rbc;

        if (!ret && e->dirty && e->mod_seq == wb->seqs[i]) {
            e->dirty = false;
            c->ndirty--;
        }
    }
    if (ret && wb->l1_hi > wb->l1_lo) {
        q2_l1_mark_dirty(s, wb->l1_lo);
        q2_l1_mark_dirty(s, wb->l1_hi - 1);
    }
    free_list_splice(ret ? &s->free_after_wb : &s->free_now, wb->frees);
    wb->frees = NULL;
}

void q2_wb_done(struct q2_script *sc, int ret)
{
    struct q2_wb *wb = sc->opaque;
    struct q2 *s = sc->s;

    wb_finish(s, wb, ret);
    wb_free(wb);
    s->wb_running = false;
    s->wb_done = s->wb_started;
    s->wb_ret = ret;
    q2_wake_all(s);
}

/* Starts a writeback unless one runs; waiters learn of its end by wake. */
void q2_wb_kick(struct q2 *s)
{
    struct q2_wb *wb;
    int err;

    if (s->wb_running || !q2_meta_dirty(s)) {
        return;
    }
    wb = wb_build(s, &err);
    s->wb_started++;
    if (!wb) {
        s->wb_done = s->wb_started;
        s->wb_ret = err;
        return;
    }
    s->wb_running = true;
    wb->sc.done = q2_wb_done;
    wb->sc.opaque = wb;
    q2_script_next(&wb->sc);
}

int q2_wb_sync(struct q2 *s)
{
    struct q2_wb *wb;
    int ret;

    if (!q2_meta_dirty(s)) {
        return 0;
    }
    wb = wb_build(s, &ret);
    if (!wb) {
        return ret;
    }
    ret = script_run_sync(&wb->sc);
    wb_finish(s, wb, ret);
    wb_free(wb);
    return ret;
}
