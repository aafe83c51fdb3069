/* The qcow2 driver's own shared parts (not for other drivers): its state,
 * requests, caches and the functions its files call of each other.
 *
 *   qcow2.c        header and open, close, reopen, info; request dispatch
 *                  and flush; the change of backing
 *   qcow2_map.c    cluster mapping: L1 / L2 lookup, reads, block status
 *   qcow2_alloc.c  refcounts and cluster allocation, allocating writes and
 *                  copy-on-write, zero clusters
 *   qcow2_cache.c  metadata: waiters, the L2 / refcount block caches,
 *                  metadata scripts and writeback
 *   qcow2_meta.c   pure header parsing and building (no I/O)
 *   qcow2_repair.c refcount rebuild of a dirty image
 */
#ifndef BACKENDS_QCOW2_INT_H
#define BACKENDS_QCOW2_INT_H

#include <jansson.h>

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

/* ---- qcow2_resize.c ---- */

int qcow2_truncate(struct bdev *bs, uint64_t size, int prealloc, bdev_cb *cb,
                   void *opaque);

/* ---- qcow2.c ---- */

void q2_req_check_done(struct q2_req *r);
void q2_req_step(struct q2_req *r);
void q2_free(struct q2 *s);

/* ---- qcow2_cache.c ---- */

void q2_wait(struct q2 *s, struct q2_waiter *w);
void q2_wake_all(struct q2 *s);
int q2_cache_init(struct q2_cache *c, struct q2 *s, unsigned n,
                  enum bdev_debug_event ev);
int q2_centry_buf(struct q2 *s, struct q2_centry *e);
void q2_cache_free(struct q2_cache *c);
struct q2_centry *q2_cache_find(struct q2_cache *c, uint64_t off);
struct q2_centry *q2_cache_victim(struct q2_cache *c);
bool q2_cache_grow_waits(struct q2 *s, struct q2_cache *c,
                         const struct q2_centry *v);
bool q2_host_range_ok(struct q2 *s, uint64_t off, uint64_t len);
int q2_cache_get(struct q2 *s, struct q2_cache *c, uint64_t off,
                 struct q2_centry **pe, struct q2_waiter *w);
void q2_cache_mark_dirty(struct q2 *s, struct q2_cache *c, struct q2_centry *e);
struct q2_centry *q2_cache_install(struct q2 *s, struct q2_cache *c,
                                   struct q2_centry *v, uint64_t off);
void q2_script_init(struct q2_script *sc, struct q2 *s);
int q2_script_add(struct q2_script *sc, uint64_t off, uint64_t len,
                  uint8_t *buf, int ev, bool flush);
void q2_script_release(struct q2_script *sc);
void q2_script_next(struct q2_script *sc);
int q2_script_table_window(struct q2 *s, struct q2_script *sc,
                           uint64_t table_off, uint64_t table_bytes,
                           const uint64_t *tab, uint64_t n_entries, uint64_t lo,
                           uint64_t hi, int ev);
bool q2_meta_dirty(struct q2 *s);
void q2_l1_mark_dirty(struct q2 *s, uint64_t idx);
void q2_free_list_drop(struct q2_free *f);
void q2_free_later(struct q2 *s, uint64_t entry, bool now);
void q2_wb_done(struct q2_script *sc, int ret);
void q2_wb_kick(struct q2 *s);
int q2_wb_sync(struct q2 *s);

/* ---- qcow2_alloc.c ---- */

void q2_c0_restore_rt(struct q2 *s);
int q2_process_frees(struct q2 *s, struct q2_waiter *w);
int q2_alloc_clusters(struct q2 *s, uint64_t n, uint64_t *host,
                      struct q2_waiter *w);
void q2_req_resume(struct q2_waiter *w);
int64_t q2_write_one(struct q2_req *r, uint64_t off, uint64_t len,
                     const uint8_t *src);
int64_t q2_zero_clusters(struct q2_req *r, uint64_t off, uint64_t len);

/* ---- qcow2_map.c ---- */

int q2_l2_table(struct q2 *s, uint64_t gc, struct q2_centry **pe,
                struct q2_waiter *w);
uint64_t q2_l2_get(struct q2 *s, const struct q2_centry *e, uint64_t gc);
void q2_l2_set(struct q2 *s, struct q2_centry *e, uint64_t gc, uint64_t v);
int q2_l2_table_for_write(struct q2 *s, uint64_t gc, struct q2_centry **pe,
                          struct q2_waiter *w);
struct q2_alloc *q2_alloc_overlap(struct q2 *s, uint64_t gc, uint64_t n);
bool q2_valid_data_cluster(struct q2 *s, uint64_t entry, uint64_t n);
struct q2_piece *q2_piece_new(struct q2_req *r);
int q2_piece_io(struct q2_req *r, struct q2_piece *p, struct bdev *child,
                bool write, uint64_t off, uint64_t len, void *buf);
int64_t q2_read_one(struct q2_req *r, uint64_t off, uint64_t len, uint8_t *dst);
int qcow2_block_status(struct bdev *bs, uint64_t offset, uint64_t bytes,
                       bdev_status_cb *cb, void *opaque);

#endif
