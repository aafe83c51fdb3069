/* Driver interface of the block layer: included by the layer's own files
 * (see bdev_core.h) and the drivers only. The layer owns range checks,
 * in-flight counting, references, claims and drain; drivers stay small. */
#ifndef BACKENDS_BDEV_INT_H
#define BACKENDS_BDEV_INT_H

#include "backends/bdev.h"

enum bdev_op {
    BDEV_OP_READ,
    BDEV_OP_WRITE,
    BDEV_OP_WRITE_ZEROES,
    BDEV_OP_FLUSH,
};

/* One request as a driver sees it. bdev.c allocates it, counts it in flight,
 * and frees it after the driver called bdev_req_complete(). */
struct bdev_req {
    struct bdev *bs;
    enum bdev_op op;
    uint64_t offset;
    uint64_t bytes;
    void *buf; /* NULL for write-zeroes and flush */
    bdev_cb *cb;
    void *opaque;
    void *drv_priv; /* free for the driver's use */
};

/* Completes a request: the caller's callback runs (now, so a driver must
 * only call this from a loop callback, never inside submit). */
void bdev_req_complete(struct bdev_req *req, int ret);
/* Defers completion to the next loop iteration; safe inside submit. */
void bdev_req_complete_later(struct bdev_req *req, int ret);

/* blkdebug events (QEMU's BlkdebugEvent names), raised by a format driver on
 * its file child before it does the matching I/O. */
enum bdev_debug_event {
    BDEV_EV_READ_AIO,
    BDEV_EV_READ_BACKING_AIO,
    BDEV_EV_READ_COMPRESSED,
    BDEV_EV_WRITE_AIO,
    BDEV_EV_L1_UPDATE,
    BDEV_EV_L2_LOAD,
    BDEV_EV_L2_UPDATE,
    BDEV_EV_L2_ALLOC_WRITE,
    BDEV_EV_REFBLOCK_LOAD,
    BDEV_EV_REFBLOCK_UPDATE,
    BDEV_EV_CLUSTER_ALLOC,
    BDEV_EV_FLUSH_TO_OS,
    BDEV_EV_FLUSH_TO_DISK,
    BDEV_EV__MAX,
};
void bdev_debug_event(struct bdev *child, enum bdev_debug_event ev);

/* Parameters of an open that are no option a client can give: tests and
 * benchmarks choose them for a node they open, and the children it opens
 * inherit them (bdev_open_node: all zero).
 * file_grow_mode: how the file driver serves aligned writes past the end
 * of the file. PREALLOC (default): fallocate ahead on the thread pool, then
 * libaio; POOL: the write itself on the thread pool; NATIVE: straight to
 * libaio (ext4 then completes it inside io_submit, blocking the loop). */
enum { BDEV_GROW_PREALLOC, BDEV_GROW_POOL, BDEV_GROW_NATIVE };
struct bdev_open_params {
    /* `file` nodes open without O_DIRECT, as on a file system that refuses
     * it, so the thread-pool path runs. */
    bool file_no_direct;
    int file_grow_mode; /* BDEV_GROW_* */
};

struct bdev_driver {
    const char *name;  /* "file", "raw", "qcow2", "null-co", "blkdebug" */
    bool is_format;    /* has a `file` child */
    bool has_backing;  /* may have a `backing` child (qcow2) */
    size_t state_size; /* bytes of bs->state, zeroed before open */
    /* The QAPI type of the driver's members (a branch of BlockdevOptions). */
    const char *options_type;

    /* Opens the node from validated options (bs->file already opened for
     * formats; backing is the driver's business through bdev_open_backing).
     * Completes at once; may use the *_sync helpers below. */
    int (*open)(struct bdev *bs, json_t *opts, struct qmp_error *err);
    /* Additive, instead of open: an open that completes later (a network
     * handshake), so that it never blocks the loop. Returns 0 once started,
     * then the driver calls bdev_open_complete() exactly once, from a loop
     * callback (never inside open_start); or returns -errno (err set or
     * not) having started nothing. close() may come while it is pending
     * (the daemon stops): it cancels it, and no completion follows. Such a
     * node can be opened by blockdev-add, also as the `file` of a format
     * blockdev-add opens, but not as a child a driver opens inside its own
     * open (bdev_open_child refuses it). */
    int (*open_start)(struct bdev *bs, json_t *opts, struct qmp_error *err);
    /* Flushes metadata and releases everything. Synchronous. */
    void (*close)(struct bdev *bs);
    int64_t (*length)(struct bdev *bs);
    /* Queues a request: 0, or -errno with no completion. */
    int (*submit)(struct bdev *bs, struct bdev_req *req);
    /* This layer's status for a range; NULL = all data, allocated. */
    int (*block_status)(struct bdev *bs, uint64_t offset, uint64_t bytes,
                        bdev_status_cb *cb, void *opaque);
    /* Synchronous I/O for open, close and metadata rewrites. */
    int (*pread_sync)(struct bdev *bs, uint64_t off, uint64_t n, void *buf);
    int (*pwrite_sync)(struct bdev *bs, uint64_t off, uint64_t n,
                       const void *buf);
    int (*flush_sync)(struct bdev *bs);
    /* blkdebug only: an event raised by the format above. */
    void (*debug_event)(struct bdev *bs, enum bdev_debug_event ev);
    /* Formats with a backing: rewrite the header's backing name/format. */
    int (*change_backing)(struct bdev *bs, const char *backing_file,
                          const char *backing_fmt, bdev_cb *cb, void *opaque);
    /* Reopen read-only / read-write. */
    int (*reopen)(struct bdev *bs, bool read_write, struct qmp_error *err);
    /* Adds driver members to query-named-block-nodes' ImageInfo: any of
     * "cluster-size", "format-specific", "backing-filename",
     * "backing-filename-format", "full-backing-filename", "dirty-flag".
     * bdev/blockdev_qmp put them in qsd's member order, so the driver may
     * insert them in any order. */
    void (*info)(struct bdev *bs, json_t *image_info);
    /* Additive: applies bs->perm / bs->shared_perm (BDEV_PERM_* bits, e.g.
     * OFD lock bytes for `file`); NULL = nothing to apply. */
    int (*apply_perm)(struct bdev *bs, struct qmp_error *err);
    /* Additive: writes past the end grow the node (file); reads past the
     * end are the driver's business. Otherwise bdev.c refuses writes past
     * the end with -EIO and zero-fills reads past it. */
    bool can_grow;
    /* Additive: bytes the node takes on disk (query's actual-size); NULL:
     * bdev/blockdev_qmp decide (stat of the file name). */
    int64_t (*allocated_size)(struct bdev *bs);
    /* Additive: a filter (copy-on-read): one `file` child whose data it
     * shows unchanged. query-named-block-nodes shows the child as its
     * backing image; an implicit (#blockN) filter takes its child's file
     * name. */
    bool is_filter;
    /* Additive: changes the node's length (bdev_truncate); prealloc is an
     * enum bdev_prealloc (backends/image_create.h). NULL: -ENOTSUP. */
    int (*truncate)(struct bdev *bs, uint64_t size, int prealloc, bdev_cb *cb,
                    void *opaque);
    /* Additive: refines what the layer derives for bdev_caps() (e.g. a
     * network driver whose server has no write-zeroes clears it). Called
     * after open and reopen; NULL: the layer's answer stands. */
    void (*caps)(struct bdev *bs, struct bdev_caps *caps);
    /* Additive, filters: named after the child even when the user named
     * the node (QEMU's commit_top and mirror_top refresh their file name
     * from their child). */
    bool named_as_child;
};

/* Permissions a parent takes on a child, QEMU's BLK_PERM_* bit order (the
 * file driver locks byte 100 + bit and 200 + bit like QEMU does). */
#define BDEV_PERM_CONSISTENT_READ 0x1
#define BDEV_PERM_WRITE           0x2
#define BDEV_PERM_WRITE_UNCHANGED 0x4
#define BDEV_PERM_RESIZE          0x8
#define BDEV_PERM_ALL             0xf

struct bdev {
    const struct bdev_driver *drv;
    char *node_name;
    char *filename;       /* as reported by query-named-block-nodes */
    struct bdev *file;    /* format drivers' protocol child */
    struct bdev *backing; /* qcow2's backing child */
    bool read_only;
    bool explicit_ro;   /* read-only was given by the user */
    bool implicit;      /* auto-named #blockN, owned by its parent */
    bool monitor_owned; /* created by blockdev-add itself */
    int refcnt;
    int parents;      /* how many nodes use it as a child */
    char *claimed_by; /* job that claimed it, or NULL */
    uint64_t in_flight;
    uint32_t mem_align;
    void *state;       /* driver state, drv->state_size bytes */
    struct bdev *next; /* list of all nodes, newest first */
    /* Additive members (bdev.c fills them before drv->open). */
    bool cache_direct;   /* cache.direct as given (reported) */
    bool cache_no_flush; /* cache.no-flush: flushes complete at once */
    bool force_share;
    bool auto_read_only;
    const char *detect_zeroes; /* "off", "on", "unmap" */
    uint32_t cluster_size;     /* formats may set it in open (else 0) */
    unsigned perm;             /* BDEV_PERM_* its parents need */
    unsigned shared_perm;      /* BDEV_PERM_* its parents let others have */
    json_t *full_opts;         /* options naming the node (for json: names) */
    void *drain_priv;          /* bdev.c's */
    /* Additive: the backing name the image header gave at open (or the
     * implicitly opened backing's file name), QEMU's auto_backing_file: a
     * backing that differs from it was overridden, which makes the node's
     * reported file name a json: one. NULL: no backing named. */
    char *auto_backing;
    /* Additive: a job does its I/O through this node (QEMU: the job's
     * BlockBackend sits on it), so blockdev-del says "Node X is in use". */
    bool job_io_node;
    /* Additive: a filter bdev_remove_filter() took out of the graph; an
     * operation that picked it before (a backing change under way) uses
     * its child instead. */
    bool detached;
    /* Additive (bdev.c's): when this node's file / backing link was made,
     * on one counter with the users' links: QEMU keeps a node's parents
     * newest first, and drained sections walk them in that order. */
    uint64_t file_seq, backing_seq;
    struct bdev_user *users; /* see bdev_user_add() */
    /* Additive: freezes of the link to bdev_chain_next() (bdev_chain_freeze,
     * bdev_link_freeze). */
    unsigned chain_frozen;
    /* Additive (bdev_open.c's): set while the driver's open_start has not
     * completed; such a node is not found by name nor shown. */
    void *opening;
    /* Additive (bdev_io.c's): bdev_caps(), asked at open and reopen. */
    struct bdev_caps caps;
    bool caps_known; /* a node made outside bdev_open (tests) asks late */
    /* Additive: the parameters it was opened with (its children's too). */
    struct bdev_open_params params;
};

/* Ends an open_start: ret 0, or -errno with err's text (err may be NULL or
 * unset: "Could not open node: <strerror>"); err is emptied. */
void bdev_open_complete(struct bdev *bs, int ret, struct qmp_error *err);

/* Opens a child from a BlockdevRef (string = existing node, object = new
 * implicit node) and takes a reference on it. The parent stores it in
 * bs->file / bs->backing; bdev.c drops those references after drv->close
 * (drivers must not unref bs->file or bs->backing themselves). */
struct bdev *bdev_open_child(struct bdev *parent, json_t *ref, bool backing,
                             struct qmp_error *err);
/* Opens the backing chain named in an image header: filename relative to the
 * directory of `parent`'s file, format may be NULL (probe). Read-only. */
struct bdev *bdev_open_backing_file(struct bdev *parent, const char *name,
                                    const char *format, struct qmp_error *err);

/* Opens a node from BlockdevOptions (blockdev-add). monitor: owned by the
 * monitor (needs node-name) rather than implicit. Returns a referenced node.
 * Refuses options naming a driver that completes its open later. */
struct bdev *bdev_open_node(json_t *opts, bool monitor, struct qmp_error *err);
/* The same for any driver: done(opaque, bs, err) runs once, with the
 * referenced node or NULL and the error (the callee may move it out) -
 * inside this call when every driver involved completes at once, else
 * later from the loop. */
struct bdev *bdev_open_node_with(json_t *opts, bool monitor,
                                 const struct bdev_open_params *params,
                                 struct qmp_error *err);
typedef void bdev_open_cb(void *opaque, struct bdev *bs, struct qmp_error *err);
void bdev_open_node_async(json_t *opts, bool monitor, bdev_open_cb *done,
                          void *opaque);
/* "json:{...}" pseudo-filename of an options object, keys in the order
 * QEMU's QDict iterates them (by hash bucket), so names match qsd's.
 * malloc'd. */
char *bdev_json_filename(json_t *opts);
/* The file name query-named-block-nodes reports, computed now as QEMU's
 * bdrv_refresh_filename does: json:{...} when the node's file child has
 * none plain or its backing was overridden; an implicit filter takes its
 * child's. malloc'd (NULL only without memory). */
char *bdev_query_filename(struct bdev *bs);
/* The newest node; follow ->next for the rest (query order). */
struct bdev *bdev_all_nodes(void);
/* Tests: an extra driver found by name (up to 4). */
void bdev_register_driver(const struct bdev_driver *drv);
/* Tests: how many writes detect-zeroes turned into write-zeroes. */
uint64_t bdev_detected_zero_writes(void);
/* True while a request is in flight on the node or a node below it. */
bool bdev_tree_busy(const struct bdev *bs);

/* Child helpers for format drivers. */
int bdev_child_pread_sync(struct bdev *child, uint64_t off, uint64_t n,
                          void *buf);
int bdev_child_pwrite_sync(struct bdev *child, uint64_t off, uint64_t n,
                           const void *buf);
int bdev_child_flush_sync(struct bdev *child);

/* Driver registration: a table in bdev.c names every driver. */
extern const struct bdev_driver bdev_drv_file;
extern const struct bdev_driver bdev_drv_raw;
extern const struct bdev_driver bdev_drv_qcow2;
extern const struct bdev_driver bdev_drv_null_co;
extern const struct bdev_driver bdev_drv_blkdebug;
extern const struct bdev_driver bdev_drv_copy_on_read;
extern const struct bdev_driver bdev_drv_commit_top;
extern const struct bdev_driver bdev_drv_mirror_top;

#endif
