/* The block layer's public face: nodes, their graph, and asynchronous I/O.
 *
 * Everything runs on the one libuv loop. Every asynchronous call returns 0
 * when the request is queued - its callback then runs exactly once, later,
 * from the loop, never from inside the call - or a negative errno when it
 * could not be queued, in which case no callback runs.
 *
 * Offsets and lengths are bytes. Buffers passed to reads and writes must stay
 * valid until the callback; buffers allocated with bdev_buf_alloc() satisfy
 * every alignment O_DIRECT needs.
 */
#ifndef BACKENDS_BDEV_H
#define BACKENDS_BDEV_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "protocol/error.h"

struct bdev;

/* ret: 0 on success or -errno. */
typedef void bdev_cb(void *opaque, int ret);

/* Status bits of one layer for a range (bdev_block_status). */
#define BDEV_STATUS_DATA      0x1 /* reads return stored data */
#define BDEV_STATUS_ZERO      0x2 /* reads return zeroes */
#define BDEV_STATUS_ALLOCATED 0x4 /* this layer answers; no backing read */

/* ret: 0 or -errno; status: BDEV_STATUS_* bits; pnum: bytes from the
 * request's offset (1 <= pnum <= bytes on success) sharing that status. */
typedef void bdev_status_cb(void *opaque, int ret, unsigned status,
                            uint64_t pnum);

/* Start-up and shutdown of the layer. bdev_init() sets up the aio engine on
 * the loop. bdev_close_all() flushes and closes every node, synchronously
 * (used at daemon exit, once no job runs). */
int bdev_init(uv_loop_t *loop);
void bdev_close_all(void);
uv_loop_t *bdev_loop(void);

/* Runs fn(arg) on a later loop iteration (never inside the caller), in
 * the order asked. */
void bdev_call_later(void (*fn)(void *arg), void *arg);

/* Registers blockdev-add, blockdev-del and query-named-block-nodes (schema
 * and handlers) with protocol/. */
void bdev_qmp_init(void);
/* blockdev-snapshot (backends/blockdev_snapshot.c), registered by
 * bdev_qmp_init. bdev_snapshot makes `overlay` (no backing yet, a format
 * with backing support) the new top over `bs`: its backing is bs, bs's
 * parents use it, bs goes read-only. Fails with qsd's texts. */
void bdev_snapshot_qmp_init(void);
/* block_resize (backends/block_resize.c), registered by bdev_qmp_init. */
void bdev_resize_qmp_init(void);
int bdev_snapshot(struct bdev *bs, struct bdev *overlay, struct qmp_error *err);

/* Graph. bdev_find() looks up a node by node-name (also implicit #blockN). */
struct bdev *bdev_find(const char *node_name);
const char *bdev_node_name(const struct bdev *bs);
const char *bdev_driver_name(const struct bdev *bs);
/* The file name as QEMU reports it ("file" in query-named-block-nodes). */
const char *bdev_filename(const struct bdev *bs);
struct bdev *bdev_file_child(const struct bdev *bs);
struct bdev *bdev_backing(const struct bdev *bs); /* NULL if none */
/* A filter (copy-on-read): its data is its `file` child's. */
bool bdev_is_filter(const struct bdev *bs);
/* The next node down a backing chain: the backing, or a filter's child. */
struct bdev *bdev_chain_next(const struct bdev *bs);
/* bs, or the first node below it that is not a filter. */
struct bdev *bdev_skip_filters(struct bdev *bs);
int64_t bdev_length(struct bdev *bs); /* virtual size */
bool bdev_is_read_only(const struct bdev *bs);
/* Allocation granularity of the format (qcow2 cluster size), or 0. */
uint32_t bdev_cluster_size(const struct bdev *bs);
/* Memory alignment and length multiple every request must respect. */
uint32_t bdev_mem_align(const struct bdev *bs);

/* What a node can do, asked once per node (when it is opened or reopened)
 * and kept, so that callers (the copy engine) choose their requests up
 * front instead of probing with -ENOTSUP. */
struct bdev_caps {
    /* Write-zeroes requests are served. A range may still answer -ENOTSUP
     * (qcow2: an L2 table shared with an internal snapshot). */
    bool write_zeroes;
    /* Discard requests are served: none of today's drivers has them. */
    bool discard;
    uint32_t mem_align;    /* bdev_mem_align() when asked */
    uint32_t cluster_size; /* bdev_cluster_size() when asked */
};
const struct bdev_caps *bdev_caps(struct bdev *bs);

/* References: a node lives while referenced by its creator (the monitor or
 * a parent) or by a job. */
void bdev_ref(struct bdev *bs);
void bdev_unref(struct bdev *bs);

/* A job claims the nodes it works on. Fails with QEMU's text ("Node 'top'
 * is busy: block device is in use by block job: stream") when claimed. */
int bdev_claim(struct bdev *bs, const char *reason, struct qmp_error *err);
void bdev_release(struct bdev *bs);
const char *bdev_claimed_by(const struct bdev *bs); /* NULL if free */
/* A parent that needs to resize bs through its file link (a writable image
 * format): what a block job's BlockBackend on bs cannot share. NULL: none. */
struct bdev *bdev_resizing_parent(const struct bdev *bs);
/* The node's name as query-named-block-nodes shows it now (json:{...} when
 * its backing is not the header's, say); malloc'd. */
char *bdev_query_filename(struct bdev *bs);
/* QEMU's bdrv_backing_overridden(): the backing is not the one the image
 * header names. */
bool bdev_backing_overridden(struct bdev *bs);
/* The backing name in the image header as written, or NULL; malloc'd. */
char *bdev_header_backing(struct bdev *bs);

/* Filters (QEMU's bdrv_insert_node / bdrv_drop_filter). bdev_insert_filter()
 * opens a node of filter driver `driver` ("copy-on-read") whose `file` child
 * is `bs`, and makes every node that used `bs` as a child use the filter
 * instead. node_name NULL: an implicit #blockN name, and the filter reports
 * its child's file name; otherwise the name is checked like blockdev-add's
 * ("Could not create node: Duplicate nodes with node-name='x'", "... Invalid
 * node-name: '#x'", "... Node name too long"). Returns the filter, held by
 * the caller's reference, or NULL.
 * bdev_remove_filter() gives the filter's parents its child back and drops
 * the caller's reference; the filter must have no request in flight. */
struct bdev *bdev_insert_filter(struct bdev *bs, const char *driver,
                                const char *node_name, struct qmp_error *err);
void bdev_remove_filter(struct bdev *filter);
/* As bdev_remove_filter(), but the filter's parents and BlockBackends go
 * to `to` instead of the filter's child (an active commit's pivot). */
void bdev_remove_filter_onto(struct bdev *filter, struct bdev *to);
/* Whether another node uses bs as a child (QEMU's root check: a node
 * without parents but BlockBackends is a root). */
bool bdev_has_parents(const struct bdev *bs);
/* The name of a node that uses bs as a child (*backing: as its backing),
 * or NULL when none does. */
const char *bdev_busy_parent(struct bdev *bs, bool *backing);
/* Marks the node a job does its I/O through: blockdev-del of it fails with
 * "Node X is in use" (QEMU: a BlockBackend is attached). */
void bdev_set_job_io_node(struct bdev *bs, bool on);

/* Frozen links, QEMU's bdrv_freeze_backing_chain: each node's link to the
 * next node down its chain (bdev_chain_next) may be frozen, counted.
 * bdev_chain_freeze() freezes every link from `from` down to `to` (not
 * to's own), or fails, freezing nothing, with "Cannot change 'backing' link
 * from 'a' to 'b'" ('file' for a filter) when one of them is frozen, or
 * when `to` is not below `from`. bdev_link_freeze() freezes or thaws bs's
 * own link. (copy-on-read's `bottom` and block-stream check them.) */
int bdev_chain_freeze(struct bdev *from, struct bdev *to,
                      struct qmp_error *err);
/* The check alone: 0, or the error bdev_chain_freeze() would fail with. */
int bdev_chain_frozen(struct bdev *from, struct bdev *to,
                      struct qmp_error *err);
void bdev_link_freeze(struct bdev *bs, bool on);

/* Switches a node (and its file child) between read-only and read-write.
 * Fails with "Block node is read-only" when the node or a child was added
 * read-only explicitly. Synchronous (reopens the file). */
int bdev_reopen(struct bdev *bs, bool read_write, struct qmp_error *err);

/* Buffers: aligned for O_DIRECT on any node. */
void *bdev_buf_alloc(size_t bytes);
void bdev_buf_free(void *buf);

/* I/O. */
int bdev_read(struct bdev *bs, uint64_t offset, uint64_t bytes, void *buf,
              bdev_cb *cb, void *opaque);
int bdev_write(struct bdev *bs, uint64_t offset, uint64_t bytes,
               const void *buf, bdev_cb *cb, void *opaque);
int bdev_write_zeroes(struct bdev *bs, uint64_t offset, uint64_t bytes,
                      bdev_cb *cb, void *opaque);
int bdev_flush(struct bdev *bs, bdev_cb *cb, void *opaque);

/* What this one layer holds in [offset, offset + bytes). */
int bdev_block_status(struct bdev *bs, uint64_t offset, uint64_t bytes,
                      bdev_status_cb *cb, void *opaque);
/* Whether any layer from `top` down to and including `bottom` (NULL: the
 * whole chain) allocates the range: status is BDEV_STATUS_ALLOCATED or 0,
 * pnum the run sharing that answer. A range past the end of a shorter layer
 * is unallocated in it. */
int bdev_is_allocated_above(struct bdev *top, struct bdev *bottom,
                            uint64_t offset, uint64_t bytes, bdev_status_cb *cb,
                            void *opaque);

/* Waits until no request is in flight on the node (and its children). */
int bdev_drain(struct bdev *bs, bdev_cb *cb, void *opaque);

/* Users of a node from outside the graph: QEMU's block-job children and
 * BlockBackends. Graph changes happen inside drained sections, as in QEMU
 * 7.2: a section over a node asks every user of that node and of every node
 * above it (every user of every node below it too, for a subtree section)
 * to pause, once per path that reaches it, and waits until they are quiet.
 * Users are asked newest link first, as QEMU walks its parent lists.
 *
 * drained_begin/drained_end: one pause request more / less. The token
 * drained_begin returns is handed back to busy(), which says whether the
 * section must still wait for the user; strict is false for a section
 * whose owner did not wait (its end is only held back until the users
 * parked). A user that may have become quiet calls bdev_users_kick(). Any
 * of the three may be NULL (a user that only marks a node, see
 * bdev_user_add's `moves`). */
struct bdev_user_ops {
    bool (*drained_begin)(void *opaque);
    void (*drained_end)(void *opaque);
    bool (*busy)(void *opaque, bool token, bool strict);
};
struct bdev_user;

/* Adds a user of bs. moves: a BlockBackend-like user that bdev_remove_filter
 * and bdev_insert_filter hand over with the node's other parents (QEMU moves
 * a BlockBackend that way; a job's own links stay where they are). The user
 * holds no reference: once the node is freed bdev_user_node() says NULL. */
struct bdev_user *bdev_user_add(struct bdev *bs,
                                const struct bdev_user_ops *ops, void *opaque,
                                bool moves);
struct bdev *bdev_user_node(const struct bdev_user *u);
/* Removes the user; pauses it still holds in open sections are lifted. */
void bdev_user_remove(struct bdev_user *u);
/* A user may have become quiet: waiting sections look again. */
void bdev_users_kick(void);

struct bdev_drained;
/* Begins a drained section over bs and every node above it (subtree: and
 * every node below it, QEMU's bdrv_subtree_drained_begin): every user
 * reached is asked to pause. The section holds a reference on bs until
 * bdev_drained_end(). Never NULL (aborts without memory). */
struct bdev_drained *bdev_drained_begin(struct bdev *bs, bool subtree);
/* Calls cb(opaque) once every user the section paused is quiet: inside this
 * call if they already are, else later from the loop. Once per section; not
 * at all if the section ends first. A section nobody waits for goes on at
 * once (QEMU would have waited: see the job layer's drain handling). */
void bdev_drained_wait(struct bdev_drained *d, void (*cb)(void *opaque),
                       void *opaque);
/* Ends the section: the users the graph now reaches from its node get
 * their pauses back first, in the order QEMU would, then any the graph
 * change left behind - once they are quiet (at once if they are).
 *
 * Sections are processed one after the other, as QEMU's drain waits before
 * its caller goes on: a section queued behind one still waiting for its
 * users hands out its pauses only after that one ended. */
void bdev_drained_end(struct bdev_drained *d);
/* A whole section with nothing done inside: begun, waited for, ended,
 * then cb(opaque, 0) (maybe inside this call). */
void bdev_drained_section(struct bdev *bs, bool subtree, bdev_cb *cb,
                          void *opaque);
/* No section is being processed or waiting. */
bool bdev_drained_idle(void);
/* Calls cb(opaque) once every section begun so far is over: at once if
 * none is open. (A reply that qemu-storage-daemon sends after its drains.) */
void bdev_when_drained_idle(void (*cb)(void *opaque), void *opaque);

/* Makes `new_backing` (NULL: none) the backing of format node `bs`: every
 * earlier write is flushed to disk first, then the image header is rewritten
 * in one write naming `backing_file` with format `backing_fmt` (both NULL:
 * no backing), flushed, then the graph is changed and nodes that fell out
 * of the chain are released. */
int bdev_change_backing(struct bdev *bs, struct bdev *new_backing,
                        const char *backing_file, const char *backing_fmt,
                        bdev_cb *cb, void *opaque);

#endif
