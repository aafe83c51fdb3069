/* The block layer's own shared parts: included by its files only (bdev.c,
 * bdev_name.c, bdev_open.c, bdev_io.c, bdev_drain.c, bdev_graph.c), never
 * by a driver (drivers see bdev_int.h).
 *
 *   bdev.c       nodes: the list, references, claims, accessors, deferred
 *                calls, start-up and shutdown
 *   bdev_name.c  what nodes are called: node-name checks, #blockN names,
 *                reported file names and json: names
 *   bdev_open.c  opening: the driver registry, options every node has,
 *                children, backing files named by an image header
 *   bdev_io.c    the request path: submit, block status, capabilities,
 *                in-flight counting, synchronous child helpers
 *   bdev_drain.c users of nodes and drained sections
 *   bdev_graph.c graph changes: permissions, frozen links, filters,
 *                backing change, reopen
 */
#ifndef BACKENDS_BDEV_CORE_H
#define BACKENDS_BDEV_CORE_H

#include "backends/bdev_int.h"

/* ---- bdev.c ---- */

/* Puts a new node on the list of all nodes (newest first) / takes it off. */
void bdev_list_add(struct bdev *bs);
void bdev_list_remove(struct bdev *bs);
/* Drops a parent's link to `child` (NULL: nothing): one parent less, its
 * permissions recomputed, the link's reference dropped. */
void bdev_child_release(struct bdev *child);

/* ---- bdev_name.c ---- */

/* 0, or QEMU's error for a node-name that is malformed, taken or too long. */
int bdev_check_node_name(const char *name, struct qmp_error *err);
/* A new implicit name (#blockNNN); malloc'd, NULL without memory. */
char *bdev_implicit_name(void);
/* Fills bs->full_opts and bs->filename when the driver left them unset. */
void bdev_set_default_filename(struct bdev *bs);

/* ---- bdev_open.c ---- */

/* Opens a node of filter driver opts.driver whose `file` child is `child`
 * (referenced here) instead of one named in opts. */
struct bdev *bdev_open_filter_node(json_t *opts, struct bdev *child,
                                   struct qmp_error *err);

/* Shutdown: every open waiting for its driver fails (ECANCELED). */
void bdev_open_cancel_all(void);

/* The registry: built-in drivers, then registered ones; returns how many
 * (at most max) were put in out. */
#define BDEV_MAX_DRIVERS 16
size_t bdev_driver_list(const struct bdev_driver **out, size_t max);

/* ---- blockdev_qmp.c ---- */

/* A driver was registered: blockdev-add's schema takes its branch. */
void bdev_qmp_drivers_changed(void);

/* ---- bdev_io.c ---- */

/* Asks the node (and its driver) what it can do: bdev_caps(). */
void bdev_caps_refresh(struct bdev *bs);
/* Shutdown: forgets every bdev_drain() waiter. */
void bdev_io_forget_drains(void);

/* ---- bdev_drain.c ---- */

struct bdev_user {
    struct bdev *bs; /* NULL once the node is gone */
    const struct bdev_user_ops *ops;
    void *opaque;
    bool moves;
    uint64_t seq;
    struct bdev_user *next; /* bs->users */
};

/* One pause a section hands a user (with the user's token). */
struct drained_pause {
    struct bdev_user *u; /* NULL once the user is removed */
    bool token;
};

/* A drained section; see bdev_drain.c. */
struct bdev_drained {
    struct bdev *bs; /* referenced */
    bool subtree;
    struct drained_pause *pauses; /* the walk at begin, in order */
    size_t n;
    struct bdev_user **end_walk; /* the walk at end (order of resumes) */
    size_t n_end;
    void (*cb)(void *opaque);
    void *opaque;
    bool begun;                /* pauses handed out */
    bool cb_done;              /* cb ran (or there is none to run) */
    bool ended;                /* the owner called bdev_drained_end() */
    struct bdev_drained *next; /* the queue of sections */
};

/* A link into a node: a parent node's file or backing link, or a user. */
struct plink {
    uint64_t seq;
    struct bdev *node; /* the parent (parents_of) or child (children_of) */
    bool backing;
    struct bdev_user *u;
};

/* The next stamp on the one counter that orders every link (bs->file_seq,
 * bs->backing_seq, users): newest link, highest stamp. */
uint64_t bdev_next_link_seq(void);
/* Every link into bs, newest first (QEMU's bs->parents); malloc'd. */
struct plink *bdev_parents_of(struct bdev *bs, size_t *n);
/* Moves a BlockBackend-like user with its node's parents (a new link). */
void bdev_user_move(struct bdev_user *u, struct bdev *to);
/* The node is being freed: its users see NULL from now on. */
void bdev_users_forget_node(struct bdev *bs);
/* A backing change inside section d: the users the link from `parent`
 * reached below (through `child`) get their pauses back / are paused
 * again under the new link. */
void bdev_section_lift_below(struct bdev_drained *d, struct bdev *parent,
                             bool backing, struct bdev *child);
void bdev_section_apply_below(struct bdev_drained *d, struct bdev *parent,
                              bool backing, struct bdev *child);

/* ---- bdev_graph.c ---- */

/* Recomputes what the parents of `bs` need, checks they agree, and lets the
 * driver apply it (lock bytes); recurses into children. */
int bdev_perm_refresh(struct bdev *bs, struct qmp_error *err);
/* The same while a new node takes its file child: a child that must be
 * written but is read-only refuses ("Block node is read-only"). */
int bdev_perm_refresh_opening(struct bdev *bs, struct qmp_error *err);

#endif
