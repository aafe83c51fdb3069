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

#include "backends/bdev_int.h"
#include "backends/qcow2.h"

#define Q2_MAX_ALLOC_BYTES   (4u << 20) /* one allocating write at most */
#define Q2_DEFAULT_L2_CACHE  (32u << 20)
#define Q2_MIN_CACHE_ENTRIES 16u
/* Cache memory follows the working set, not the bound: a clean table not
 * used in the last Q2_CACHE_RECENT lookups is reused before a new buffer
 * is taken, and once Q2_CACHE_DIRTY_KICK tables of a cache are dirty, some
 * out of use, a miss waits for a writeback instead of taking one, so that a
 * job sweeping a large image holds a few tables per node whatever its
 * size. */
#define Q2_CACHE_RECENT     256u
#define Q2_CACHE_DIRTY_KICK 4u

struct q2;

struct q2_waiter {
    struct q2_waiter *next;
    void (*resume)(struct q2_waiter *w);
    bool queued;
};

enum { CE_FREE, CE_LOADING, CE_READY, CE_ERROR };

struct q2_centry {
    struct q2 *s;
    uint64_t offset;
    uint8_t *buf;
    uint64_t lru;
    uint64_t mod_seq;
    bool dirty;
    int state;
    int err;
};

struct q2_cache {
    struct q2_centry *e;
    unsigned n;
    unsigned ndirty;
    uint64_t clock;
    enum bdev_debug_event load_ev;
};

struct q2_alloc {
    struct q2 *s;
    struct q2_req *parent;
    struct q2_alloc *next;
    struct q2_waiter w;
    uint64_t gc, n, host;
    uint64_t d_off, d_len; /* guest data inside the run */
    const uint8_t *src;    /* NULL: zeroes */
    uint8_t *bounce;
    int pending;
    int ret;
};

enum q2_piece_kind { PIECE_PLAIN, PIECE_COMPRESSED };

struct q2_req {
    struct q2 *s;
    struct q2_waiter w;
    struct bdev_req *breq;          /* NULL for internal requests */
    void (*done)(struct q2_req *r); /* internal completion */
    void *priv;
    enum bdev_op op;
    uint64_t off, bytes, pos;
    uint8_t *buf;
    int pending;
    int ret;
    int phase;      /* flush: 0 start, 1 waiting writeback, 2 child flush */
    uint64_t wb_id; /* flush: writeback it waits for */
    bool finished;
    bool in_step;
};

struct q2_piece {
    struct q2_req *r;
    enum q2_piece_kind kind;
    uint8_t *bounce;
    uint8_t *dst;
    uint64_t skip, clen, in_cluster, bytes;
};

struct q2_mop {
    uint64_t off, len;
    uint8_t *buf;
    int ev; /* -1: none */
    bool flush;
};

struct q2_script {
    struct q2 *s;
    struct q2_mop *ops;
    unsigned n, cap, next, inflight;
    int ret;
    void (*done)(struct q2_script *sc, int ret);
    void *opaque;
};

/* Host byte ranges whose refcount drops by one per cluster. */
struct q2_free {
    struct q2_free *next;
    uint64_t off, len;
};

struct q2 {
    struct bdev *bs;
    struct qcow2_meta m;
    uint8_t *c0; /* cluster 0 as on disk */
    unsigned cb;
    uint64_t cs;
    unsigned l2_bits;
    uint64_t l2_entries;
    unsigned rb_bits; /* clusters per refcount block = 1 << rb_bits */
    uint32_t align;
    uint64_t *l1;
    uint64_t l1_lo, l1_hi; /* dirty L1 index range [lo, hi) */
    uint64_t *rt;
    uint64_t rt_size;
    struct q2_cache l2c, rbc;
    uint64_t host_end; /* bytes; nothing valid lies beyond */
    uint64_t free_idx;
    struct q2_alloc *allocs;
    struct q2_waiter *wq_head, **wq_tail;
    bool waking, wake_again;
    bool wb_running;
    /* lazy-refcounts in use: QEMU sets the dirty bit at the first cluster
     * linked in and clears it at close or a read-only reopen. We keep the
     * refcounts exact and the header clean, and only show the bit. */
    bool lazy, shown_dirty;
    uint64_t wb_started, wb_done;
    int wb_ret;
    bool meta_busy; /* refcount block creation / table growth */
    int alloc_err;
    uint64_t seq;
    uint8_t *zero_buf;
    int submit_depth;
    /* Frees wait until no on-disk table points at the clusters: those in
     * free_after_wb until the next writeback, then free_now. */
    struct q2_free *free_after_wb, *free_now;
};

static void req_step(struct q2_req *r);
static void req_check_done(struct q2_req *r);
static void wb_kick(struct q2 *s);

/* ---- waiters ------------------------------------------------------------- */

static void q2_wait(struct q2 *s, struct q2_waiter *w)
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
static void wake_all(struct q2 *s)
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

static int cache_init(struct q2_cache *c, struct q2 *s, unsigned n,
                      enum bdev_debug_event ev)
{
    c->e = calloc(n, sizeof(*c->e));
    if (!c->e) {
        return -ENOMEM;
    }
    c->n = n;
    c->load_ev = ev;
    /* Buffers come with first use (centry_buf): the memory follows the
     * tables really used, not the configured bound. */
    for (unsigned i = 0; i < n; i++) {
        c->e[i].s = s;
    }
    return 0;
}

/* Gives a slot picked by cache_victim its buffer. */
static int centry_buf(struct q2 *s, struct q2_centry *e)
{
    if (!e->buf) {
        e->buf = bdev_buf_alloc(s->cs);
        if (!e->buf) {
            return -ENOMEM;
        }
    }
    return 0;
}

static void cache_free(struct q2_cache *c)
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

static struct q2_centry *cache_find(struct q2_cache *c, uint64_t off)
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
static struct q2_centry *cache_victim(struct q2_cache *c)
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
static bool cache_grow_waits(struct q2 *s, struct q2_cache *c,
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
    wake_all(e->s);
}

static bool host_range_ok(struct q2 *s, uint64_t off, uint64_t len)
{
    return off >= s->cs && off <= s->host_end && len <= s->host_end - off;
}

/* Gets the table at `off`: 0 with *pe, -EAGAIN after queueing `w`, or
 * -errno. */
static int cache_get(struct q2 *s, struct q2_cache *c, uint64_t off,
                     struct q2_centry **pe, struct q2_waiter *w)
{
    struct q2_centry *e = cache_find(c, off);
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
    if ((off & (s->cs - 1)) || !host_range_ok(s, off, s->cs)) {
        return -EIO; /* table offset outside the image: corrupt */
    }
    e = cache_victim(c);
    if (!e || cache_grow_waits(s, c, e)) {
        wb_kick(s);
        q2_wait(s, w);
        return -EAGAIN;
    }
    ret = centry_buf(s, e);
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

static void cache_mark_dirty(struct q2 *s, struct q2_cache *c,
                             struct q2_centry *e)
{
    if (!e->dirty) {
        e->dirty = true;
        c->ndirty++;
    }
    e->mod_seq = ++s->seq;
}

/* Installs a new, zeroed, dirty table at `off` into slot `v`. */
static struct q2_centry *cache_install(struct q2 *s, struct q2_cache *c,
                                       struct q2_centry *v, uint64_t off)
{
    struct q2_centry *old = cache_find(c, off);

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
    cache_mark_dirty(s, c, v);
    return v;
}

/* ---- metadata scripts: writes in parallel between flush barriers -------- */

static void script_init(struct q2_script *sc, struct q2 *s)
{
    memset(sc, 0, sizeof(*sc));
    sc->s = s;
}

static int script_add(struct q2_script *sc, uint64_t off, uint64_t len,
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
    return script_add(sc, off, len, buf, ev, false);
}

static void script_release(struct q2_script *sc)
{
    for (unsigned i = 0; i < sc->n; i++) {
        bdev_buf_free(sc->ops[i].buf);
    }
    free(sc->ops);
    sc->ops = NULL;
    sc->n = sc->cap = 0;
}

static void script_next(struct q2_script *sc);

static void script_io_cb(void *opaque, int ret)
{
    struct q2_script *sc = opaque;

    sc->inflight--;
    if (ret < 0 && !sc->ret) {
        sc->ret = ret;
    }
    script_next(sc);
}

static void script_next(struct q2_script *sc)
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
static int script_table_window(struct q2 *s, struct q2_script *sc,
                               uint64_t table_off, uint64_t table_bytes,
                               const uint64_t *tab, uint64_t n_entries,
                               uint64_t lo, uint64_t hi, int ev)
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
    return script_add(sc, table_off + start, end - start, buf, ev, false);
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

static bool meta_dirty(struct q2 *s)
{
    return s->l2c.ndirty || s->rbc.ndirty || s->l1_hi > s->l1_lo;
}

static void l1_mark_dirty(struct q2 *s, uint64_t idx)
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

static void free_list_drop(struct q2_free *f)
{
    while (f) {
        struct q2_free *next = f->next;

        free(f);
        f = next;
    }
}

/* Queues a free of the host clusters behind an L2 entry being replaced. */
static void free_later(struct q2 *s, uint64_t entry, bool now)
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
    free_list_drop(wb->frees);
    script_release(&wb->sc);
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
    script_init(&wb->sc, s);
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
        ret = script_add(&wb->sc, 0, 0, NULL, -1, true);
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
            ret = script_add(&wb->sc, 0, 0, NULL, -1, true);
        }
        if (!ret) {
            ret = script_table_window(s, &wb->sc, s->m.h.l1_table_offset,
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
        l1_mark_dirty(s, wb->l1_lo);
        l1_mark_dirty(s, wb->l1_hi - 1);
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
        l1_mark_dirty(s, wb->l1_lo);
        l1_mark_dirty(s, wb->l1_hi - 1);
    }
    free_list_splice(ret ? &s->free_after_wb : &s->free_now, wb->frees);
    wb->frees = NULL;
}

static void wb_done(struct q2_script *sc, int ret)
{
    struct q2_wb *wb = sc->opaque;
    struct q2 *s = sc->s;

    wb_finish(s, wb, ret);
    wb_free(wb);
    s->wb_running = false;
    s->wb_done = s->wb_started;
    s->wb_ret = ret;
    wake_all(s);
}

/* Starts a writeback unless one runs; waiters learn of its end by wake. */
static void wb_kick(struct q2 *s)
{
    struct q2_wb *wb;
    int err;

    if (s->wb_running || !meta_dirty(s)) {
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
    wb->sc.done = wb_done;
    wb->sc.opaque = wb;
    script_next(&wb->sc);
}

static int wb_sync(struct q2 *s)
{
    struct q2_wb *wb;
    int ret;

    if (!meta_dirty(s)) {
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
static void c0_restore_rt(struct q2 *s)
{
    qcow2_put_be64(s->c0 + QCOW2_HDR_RT_OFFSET, s->m.h.refcount_table_offset);
    qcow2_put_be32(s->c0 + QCOW2_HDR_RT_CLUSTERS,
                   s->m.h.refcount_table_clusters);
}

static void meta_op_free(struct q2_meta_op *mo)
{
    script_release(&mo->sc);
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
            c0_restore_rt(s);
        }
    }
    meta_op_free(mo);
    s->meta_busy = false;
    wake_all(s);
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
    script_init(&mo->sc, s);
    mo->rti = rti;
    mo->rb_off = c << s->cb;
    ret = script_add(&mo->sc, mo->rb_off, s->cs, buf, BDEV_EV_REFBLOCK_UPDATE,
                     false);
    if (!ret) {
        ret = script_add(&mo->sc, 0, 0, NULL, -1, true);
    }
    if (!ret) {
        /* The table entry goes out from a copy with the new entry set. */
        uint64_t saved = s->rt[rti];

        s->rt[rti] = mo->rb_off;
        ret = script_table_window(s, &mo->sc, s->m.h.refcount_table_offset,
                                  s->rt_size * 8, s->rt, s->rt_size, rti,
                                  rti + 1, -1);
        s->rt[rti] = saved;
    }
    if (!ret) {
        ret = script_add(&mo->sc, 0, 0, NULL, -1, true);
    }
    if (ret) {
        script_release(&mo->sc);
        free(mo);
        return ret;
    }
    if ((c + 1) << s->cb > s->host_end) {
        s->host_end = (c + 1) << s->cb;
    }
    s->meta_busy = true;
    mo->sc.done = meta_op_done;
    mo->sc.opaque = mo;
    script_next(&mo->sc);
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
    script_init(&mo->sc, s);
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
        ret = script_add(&mo->sc, (c0 + j) << s->cb, s->cs, buf,
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
            ret =
                script_add(&mo->sc, mo->new_rt_off, t << s->cb, buf, -1, false);
        }
    }
    if (!ret) {
        ret = script_add(&mo->sc, 0, 0, NULL, -1, true);
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
            ret = script_add(&mo->sc, 0, s->align, hdr, -1, false);
        }
    }
    if (!ret) {
        ret = script_add(&mo->sc, 0, 0, NULL, -1, true);
    }
    if (ret) {
        c0_restore_rt(s);
        meta_op_free(mo);
        return ret;
    }
    if ((c0 + k + t) << s->cb > s->host_end) {
        s->host_end = (c0 + k + t) << s->cb;
    }
    s->meta_busy = true;
    mo->sc.done = meta_op_done;
    mo->sc.opaque = mo;
    script_next(&mo->sc);
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
    return cache_get(s, &s->rbc, s->rt[rti] & QCOW2_RT_OFFSET_MASK, pe, w);
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
    e = cache_find(&s->rbc, off);
    if (e) {
        if (e->state != CE_READY) {
            return -EBUSY;
        }
        e->lru = ++s->rbc.clock;
        *pe = e;
        return 0;
    }
    if ((off & (s->cs - 1)) || !host_range_ok(s, off, s->cs)) {
        return -EIO;
    }
    e = cache_victim(&s->rbc);
    if (!e) {
        return -EBUSY;
    }
    ret = centry_buf(s, e);
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

static int process_frees(struct q2 *s, struct q2_waiter *w)
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
                cache_mark_dirty(s, &s->rbc, e);
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
static int alloc_clusters(struct q2 *s, uint64_t n, uint64_t *host,
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
    ret = process_frees(s, w);
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
            cache_mark_dirty(s, &s->rbc, e);
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

/* ---- L1 / L2 ------------------------------------------------------------- */

/* The L2 table of guest cluster gc for reading (*pe NULL: unallocated). */
static int l2_table(struct q2 *s, uint64_t gc, struct q2_centry **pe,
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
    return cache_get(s, &s->l2c, off, pe, w);
}

static uint64_t l2_get(struct q2 *s, const struct q2_centry *e, uint64_t gc)
{
    return e ? qcow2_be64(e->buf + (gc & (s->l2_entries - 1)) * 8) : 0;
}

static void l2_set(struct q2 *s, struct q2_centry *e, uint64_t gc, uint64_t v)
{
    qcow2_put_be64(e->buf + (gc & (s->l2_entries - 1)) * 8, v);
}

/* The L2 table of gc for writing: allocates one when missing. Tables shared
 * with internal snapshots (no COPIED flag) are not supported. */
static int l2_table_for_write(struct q2 *s, uint64_t gc, struct q2_centry **pe,
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
        return cache_get(s, &s->l2c, l1e & QCOW2_OFFSET_MASK, pe, w);
    }
    v = cache_victim(&s->l2c);
    if (!v || cache_grow_waits(s, &s->l2c, v)) {
        wb_kick(s);
        q2_wait(s, w);
        return -EAGAIN;
    }
    ret = centry_buf(s, v);
    if (ret) {
        return ret;
    }
    ret = alloc_clusters(s, 1, &off, w);
    if (ret) {
        return ret;
    }
    bdev_debug_event(s->bs->file, BDEV_EV_L2_ALLOC_WRITE);
    *pe = cache_install(s, &s->l2c, v, off);
    s->l1[l1i] = off | QCOW2_OFLAG_COPIED;
    l1_mark_dirty(s, l1i);
    return 0;
}

static struct q2_alloc *alloc_overlap(struct q2 *s, uint64_t gc, uint64_t n)
{
    for (struct q2_alloc *a = s->allocs; a; a = a->next) {
        if (gc < a->gc + a->n && a->gc < gc + n) {
            return a;
        }
    }
    return NULL;
}

static bool valid_data_cluster(struct q2 *s, uint64_t entry, uint64_t n)
{
    uint64_t off = entry & QCOW2_OFFSET_MASK;

    return !(off & (s->cs - 1)) && host_range_ok(s, off, n << s->cb);
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
    req_check_done(r);
}

static struct q2_piece *piece_new(struct q2_req *r)
{
    struct q2_piece *p = calloc(1, sizeof(*p));

    if (p) {
        p->r = r;
    }
    return p;
}

/* Issues a child read/write for a piece; counts it as pending. */
static int piece_io(struct q2_req *r, struct q2_piece *p, struct bdev *child,
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
    p = piece_new(r);
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
    return piece_io(r, p, s->bs->file, false, start, end - start, p->bounce);
}

/* Dispatches one run of same-kind clusters of a read; returns the bytes
 * covered, -EAGAIN or -errno. */
static int64_t read_one(struct q2_req *r, uint64_t off, uint64_t len,
                        uint8_t *dst)
{
    struct q2 *s = r->s;
    struct bdev *bs = s->bs;
    uint64_t gc = off >> s->cb, n = 1, bytes, e0, limit;
    enum qcow2_cluster_type t;
    struct q2_centry *e;
    struct q2_piece *p;
    int ret;

    ret = l2_table(s, gc, &e, &r->w);
    if (ret) {
        return ret;
    }
    limit = (gc | (s->l2_entries - 1)) + 1;
    if (limit > ((off + len - 1) >> s->cb) + 1) {
        limit = ((off + len - 1) >> s->cb) + 1;
    }
    e0 = l2_get(s, e, gc);
    t = qcow2_l2_type(e0, s->m.h.version);
    if (t != QCOW2_CL_COMPRESSED) {
        while (gc + n < limit) {
            uint64_t en = l2_get(s, e, gc + n);

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
        p = piece_new(r);
        if (!p) {
            return -ENOMEM;
        }
        bdev_debug_event(bs->file, BDEV_EV_READ_BACKING_AIO);
        ret = piece_io(r, p, bs->backing, false, off, rd, dst);
        return ret ? ret : (int64_t)bytes;
    }
    case QCOW2_CL_COMPRESSED:
        ret = (int)read_compressed(r, e0, off, bytes, dst);
        return ret ? ret : (int64_t)bytes;
    case QCOW2_CL_NORMAL:
        if (!valid_data_cluster(s, e0, n)) {
            return -EIO;
        }
        p = piece_new(r);
        if (!p) {
            return -ENOMEM;
        }
        bdev_debug_event(bs->file, BDEV_EV_READ_AIO);
        ret = piece_io(r, p, bs->file, false,
                       (e0 & QCOW2_OFFSET_MASK) + (off & (s->cs - 1)), bytes,
                       dst);
        return ret ? ret : (int64_t)bytes;
    }
    return -EIO;
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
    wake_all(s);
    req_check_done(parent);
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
    int ret = l2_table_for_write(s, a->gc, &e, &a->w);

    if (ret == -EAGAIN) {
        return;
    }
    if (ret) {
        alloc_end(a, ret);
        return;
    }
    for (uint64_t i = 0; i < a->n; i++) {
        uint64_t old = l2_get(s, e, a->gc + i);
        uint64_t nv = (a->host + (i << s->cb)) | QCOW2_OFLAG_COPIED;

        if ((old & QCOW2_OFFSET_MASK) != (nv & QCOW2_OFFSET_MASK)) {
            free_later(s, old, false);
        }
        l2_set(s, e, a->gc + i, nv);
    }
    cache_mark_dirty(s, &s->l2c, e);
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

static void req_resume(struct q2_waiter *w)
{
    req_step((struct q2_req *)(void *)((char *)w - offsetof(struct q2_req, w)));
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
    ir->w.resume = req_resume;
    ir->op = BDEV_OP_READ;
    ir->off = off;
    ir->bytes = len;
    ir->buf = buf;
    ir->done = cow_read_done;
    ir->priv = a;
    a->pending++;
    req_step(ir);
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
static int64_t write_one(struct q2_req *r, uint64_t off, uint64_t len,
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
    ret = l2_table(s, gc, &e, &r->w);
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
    e0 = l2_get(s, e, gc);
    t = qcow2_l2_type(e0, s->m.h.version);

    if (t == QCOW2_CL_NORMAL && (e0 & QCOW2_OFLAG_COPIED)) {
        struct q2_piece *p;

        while (gc + n < limit) {
            uint64_t en = l2_get(s, e, gc + n);

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
        if (!valid_data_cluster(s, e0, n)) {
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
        p = piece_new(r);
        if (!p) {
            return -ENOMEM;
        }
        bdev_debug_event(s->bs->file, BDEV_EV_WRITE_AIO);
        ret = piece_io(r, p, s->bs->file, true,
                       (e0 & QCOW2_OFFSET_MASK) + (off & (s->cs - 1)), bytes,
                       src ? (void *)src : s->zero_buf);
        return ret ? ret : (int64_t)bytes;
    }

    if (!src && reads_as_zero(s, t)) {
        bytes = ((gc + 1) << s->cb) - off;
        return (int64_t)(bytes > len ? len : bytes);
    }
    if (alloc_overlap(s, gc, 1)) {
        q2_wait(s, &r->w);
        return -EAGAIN;
    }
    reuse = t == QCOW2_CL_ZERO_ALLOC && (e0 & QCOW2_OFLAG_COPIED);
    if (!reuse) {
        while (gc + n < limit) {
            uint64_t en = l2_get(s, e, gc + n);
            enum qcow2_cluster_type tn = qcow2_l2_type(en, s->m.h.version);

            if ((tn == QCOW2_CL_NORMAL || tn == QCOW2_CL_ZERO_ALLOC) &&
                (en & QCOW2_OFLAG_COPIED)) {
                break;
            }
            if (alloc_overlap(s, gc + n, 1)) {
                break;
            }
            n++;
        }
    }
    if (reuse) {
        if (!valid_data_cluster(s, e0, 1)) {
            return -EIO;
        }
        host = e0 & QCOW2_OFFSET_MASK;
    } else {
        ret = alloc_clusters(s, n, &host, &r->w);
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
static int64_t zero_clusters(struct q2_req *r, uint64_t off, uint64_t len)
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
    if (alloc_overlap(s, gc, n)) {
        q2_wait(s, &r->w);
        return -EAGAIN;
    }
    bytes = (n << s->cb) > len ? len : (n << s->cb);
    if (!(s->l1[gc >> s->l2_bits] & QCOW2_OFFSET_MASK) && !s->bs->backing &&
        !s->m.has_backing) {
        return (int64_t)bytes; /* unallocated without backing: zeroes */
    }
    ret = l2_table_for_write(s, gc, &e, &r->w);
    if (ret) {
        return ret;
    }
    for (uint64_t i = 0; i < n; i++) {
        uint64_t old = l2_get(s, e, gc + i), nv;

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
            free_later(s, old, false);
        }
        l2_set(s, e, gc + i, nv);
    }
    cache_mark_dirty(s, &s->l2c, e);
    return (int64_t)bytes;
}

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

static void req_check_done(struct q2_req *r)
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
    req_check_done(r);
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
        if (meta_dirty(s)) {
            wb_kick(s);
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
            req_check_done(r);
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
    req_check_done(r);
}

static void req_step(struct q2_req *r)
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
            n = read_one(r, off, len, r->buf + r->pos);
            break;
        case BDEV_OP_WRITE:
            n = write_one(r, off, len, r->buf + r->pos);
            break;
        default: /* write-zeroes */
            if (s->m.h.version >= 3 && !(off & (s->cs - 1)) &&
                (len >= s->cs || off + len >= s->m.h.size)) {
                n = zero_clusters(r, off, len);
            } else {
                uint64_t in = s->cs - (off & (s->cs - 1));
                n = write_one(r, off, len < in ? len : in, NULL);
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
    req_check_done(r);
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
    r->w.resume = req_resume;
    r->breq = req;
    r->op = req->op;
    r->off = req->offset;
    r->bytes = req->bytes;
    r->buf = req->buf;
    s->submit_depth++;
    req_step(r);
    s->submit_depth--;
    return 0;
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

    ret = l2_table(s, gc, &e, &st->w);
    if (ret == -EAGAIN) {
        return;
    }
    if (ret) {
        st->ret = ret;
        st->pnum = 0;
        goto out;
    }
    for (; gc < limit; gc++) {
        uint64_t entry = e ? l2_get(s, e, gc) : 0;
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

static int qcow2_block_status(struct bdev *bs, uint64_t offset, uint64_t bytes,
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
    script_release(&ch->sc); /* frees ch->c0 */
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
    script_next(&ch->sc);
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
    script_init(&ch->sc, s);
    if (!ret) {
        ret = script_add(&ch->sc, 0, s->cs, ch->c0, -1, false);
        if (ret) {
            ch->c0 = NULL; /* script_add freed it */
        }
    } else {
        bdev_buf_free(ch->c0);
        ch->c0 = NULL;
    }
    if (!ret) {
        ret = script_add(&ch->sc, 0, 0, NULL, -1, true);
    }
    if (ret) {
        script_release(&ch->sc);
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
    r->w.resume = req_resume;
    r->op = BDEV_OP_FLUSH;
    r->done = chb_flushed;
    r->priv = ch;
    s->submit_depth++;
    req_step(r);
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

static void q2_free(struct q2 *s)
{
    free_list_drop(s->free_now);
    free_list_drop(s->free_after_wb);
    s->free_now = s->free_after_wb = NULL;
    cache_free(&s->l2c);
    cache_free(&s->rbc);
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
        c0_restore_rt(s);
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
    ret = cache_init(&s->l2c, s,
                     opt_cache_entries(opts, "l2-cache-size",
                                       l1_need * s->cs < Q2_DEFAULT_L2_CACHE
                                           ? l1_need * s->cs
                                           : Q2_DEFAULT_L2_CACHE,
                                       s->cs, Q2_MIN_CACHE_ENTRIES),
                     BDEV_EV_L2_LOAD);
    if (!ret) {
        ret =
            cache_init(&s->rbc, s,
                       opt_cache_entries(opts, "refcount-cache-size", 4u << 20,
                                         s->cs, Q2_MIN_CACHE_ENTRIES),
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
        int ret = wb_sync(s);

        /* Frees made safe by that writeback go out too, else they leak. */
        if (!ret && s->free_now && process_frees(s, NULL) == 0) {
            ret = wb_sync(s);
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
    ret = wb_sync(s);
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
};
