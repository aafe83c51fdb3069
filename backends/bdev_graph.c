/* Graph changes: permissions between parents and children, frozen links,
 * filters inserted and removed, the change of a format's backing, reopen
 * read-only / read-write. */
#include "backends/bdev_core.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- permissions ------------------------------------------------------- */

static const char *const perm_names[] = {"consistent read", "write",
                                         "write unchanged", "resize"};

/* What parent `p` needs from / lets others do to `child`. */
static void parent_perms(const struct bdev *p, const struct bdev *child,
                         unsigned *perm, unsigned *shared)
{
    *perm = 0;
    *shared = BDEV_PERM_ALL;
    if (p->file == child) {
        if (p->drv->is_format && p->drv->has_backing) {
            /* A format with metadata: always reads, writes when writable,
             * and cannot live with anyone else writing or resizing. */
            *perm = BDEV_PERM_CONSISTENT_READ;
            if (!p->read_only) {
                *perm |= BDEV_PERM_WRITE | BDEV_PERM_RESIZE;
            }
            *shared = BDEV_PERM_CONSISTENT_READ | BDEV_PERM_WRITE_UNCHANGED;
            if (p->force_share) {
                *shared = BDEV_PERM_ALL;
            }
        } else {
            /* raw and blkdebug pass their parents' needs through. */
            *perm = p->perm;
            *shared = p->shared_perm;
            if (strcmp(p->drv->name, "copy-on-read") == 0) {
                /* It writes what it read (QEMU's cor_child_perm). */
                *perm |= BDEV_PERM_WRITE_UNCHANGED;
            }
        }
    }
    /* A backing child: nothing needed while no user reads the image. */
    if (child->force_share) {
        *shared = BDEV_PERM_ALL; /* QEMU's bdrv_child_perm: force-share */
    }
}

static void perm_list(unsigned bits, char *buf, size_t len)
{
    buf[0] = '\0';
    for (unsigned i = 0; i < 4; i++) {
        if (bits & (1u << i)) {
            if (buf[0]) {
                strncat(buf, ", ", len - strlen(buf) - 1);
            }
            strncat(buf, perm_names[i], len - strlen(buf) - 1);
        }
    }
}

static bool is_parent_of(const struct bdev *p, const struct bdev *c)
{
    return p->file == c || p->backing == c;
}

/* Set while a new node takes its file child: a child that must be written
 * but is read-only refuses (QEMU checks it on every permission update; the
 * other updates here never make a read-only node's parent writable). */
static bool g_open_checks_ro;

/* Recomputes what the parents of `bs` need, checks they agree, and lets the
 * driver apply it (lock bytes). Recurses into children, whose needs derive
 * from ours. */
int bdev_perm_refresh(struct bdev *bs, struct qmp_error *err)
{
    unsigned perm = 0, shared = BDEV_PERM_ALL;
    int ret;

    for (struct bdev *a = bdev_all_nodes(); a; a = a->next) {
        unsigned ap, as;

        if (!is_parent_of(a, bs)) {
            continue;
        }
        parent_perms(a, bs, &ap, &as);
        for (struct bdev *b = bdev_all_nodes(); b; b = b->next) {
            unsigned bp, bsh, clash;
            char names[80];

            if (b == a || !is_parent_of(b, bs)) {
                continue;
            }
            parent_perms(b, bs, &bp, &bsh);
            clash = bp & ~as;
            if (clash) {
                /* b is the older parent (later on the newest-first list
                 * only if a is newer): name the one that holds first. */
                perm_list(clash, names, sizeof(names));
                qmp_error_setg(
                    err,
                    "Permission conflict on node '%s': "
                    "permissions '%s' are both required by node "
                    "'%s' (uses node '%s' as '%s' child) and "
                    "unshared by node '%s' (uses node '%s' as "
                    "'%s' child).",
                    bs->node_name, names, b->node_name, bs->node_name,
                    b->file == bs ? "file" : "backing", a->node_name,
                    bs->node_name, a->file == bs ? "file" : "backing");
                return -EPERM;
            }
        }
        perm |= ap;
        shared &= as;
    }
    if (g_open_checks_ro && bs->read_only &&
        (perm & (BDEV_PERM_WRITE | BDEV_PERM_WRITE_UNCHANGED))) {
        qmp_error_setg(err, "Block node is read-only");
        return -EPERM;
    }
    if (perm != bs->perm || shared != bs->shared_perm) {
        unsigned old_perm = bs->perm, old_shared = bs->shared_perm;

        bs->perm = perm;
        bs->shared_perm = shared;
        if (bs->drv->apply_perm) {
            ret = bs->drv->apply_perm(bs, err);
            if (ret < 0) {
                bs->perm = old_perm;
                bs->shared_perm = old_shared;
                return ret;
            }
        }
    }
    if (bs->file) {
        ret = bdev_perm_refresh(bs->file, err);
        if (ret < 0) {
            return ret;
        }
    }
    if (bs->backing) {
        ret = bdev_perm_refresh(bs->backing, err);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

int bdev_perm_refresh_opening(struct bdev *bs, struct qmp_error *err)
{
    int ret;

    g_open_checks_ro = true;
    ret = bdev_perm_refresh(bs, err);
    g_open_checks_ro = false;
    return ret;
}

struct bdev *bdev_resizing_parent(const struct bdev *bs)
{
    for (struct bdev *p = bdev_all_nodes(); p; p = p->next) {
        unsigned perm, shared;

        if (p->file != bs) {
            continue;
        }
        parent_perms(p, bs, &perm, &shared);
        if (perm & BDEV_PERM_RESIZE) {
            return p;
        }
    }
    return NULL;
}

/* ---- frozen links -------------------------------------------------------- */

/* A node's link to the next node down its chain: a filter's file, a
 * format's backing. QEMU freezes such links (bdrv_freeze_backing_chain)
 * for a copy-on-read filter's `bottom` and for a stream's filter. */
static const char *chain_link_name(const struct bdev *bs)
{
    return bs->drv->is_filter ? "file" : "backing";
}

int bdev_chain_frozen(struct bdev *from, struct bdev *to, struct qmp_error *err)
{
    for (struct bdev *n = from; n != to; n = bdev_chain_next(n)) {
        if (!n || !bdev_chain_next(n)) {
            /* (QEMU 7.2 loops forever here.) */
            qmp_error_setg(err, "'%s' is not in the backing chain of '%s'",
                           to->node_name, from->node_name);
            return -EINVAL;
        }
        if (n->chain_frozen) {
            qmp_error_setg(err, "Cannot change '%s' link from '%s' to '%s'",
                           chain_link_name(n), n->node_name,
                           bdev_chain_next(n)->node_name);
            return -EPERM;
        }
    }
    return 0;
}

int bdev_chain_freeze(struct bdev *from, struct bdev *to, struct qmp_error *err)
{
    struct bdev *n;
    int ret = bdev_chain_frozen(from, to, err);

    if (ret < 0) {
        return ret;
    }
    for (n = from; n != to; n = bdev_chain_next(n)) {
        n->chain_frozen++;
    }
    return 0;
}

void bdev_link_freeze(struct bdev *bs, bool on)
{
    if (on) {
        bs->chain_frozen++;
    } else if (bs->chain_frozen > 0) {
        bs->chain_frozen--;
    }
}

/* ---- filters ------------------------------------------------------------ */

/* Every link into `from` (but those of `skip`, the filter itself, and
 * users that stay) goes to `to` instead. QEMU's bdrv_replace_node moves
 * them in from's parent order, each to the head of to's parent list: each
 * moved link is the newest, so their order turns round. */
static void replace_in_parents(struct bdev *from, struct bdev *to,
                               struct bdev *skip)
{
    size_t n;
    struct plink *ps = bdev_parents_of(from, &n);

    for (size_t i = 0; i < n; i++) {
        struct bdev *p = ps[i].node;

        if (ps[i].u) {
            if (ps[i].u->moves) {
                bdev_user_move(ps[i].u, to);
            }
            continue;
        }
        if (p == skip) {
            continue;
        }
        bdev_ref(to);
        to->parents++;
        if (ps[i].backing) {
            p->backing = to;
            p->backing_seq = bdev_next_link_seq();
        } else {
            p->file = to;
            p->file_seq = bdev_next_link_seq();
        }
        from->parents--;
        bdev_unref(from);
    }
    free(ps);
}

struct bdev *bdev_insert_filter(struct bdev *bs, const char *driver,
                                const char *node_name, struct qmp_error *err)
{
    struct qmp_error lerr = QMP_ERROR_INIT;
    struct bdev_drained *d;
    struct bdev *f;
    json_t *opts;

    opts = json_pack("{s:s}", "driver", driver);
    if (!opts) {
        qmp_error_setg(err, "Out of memory");
        return NULL;
    }
    if (node_name) {
        json_object_set_new(opts, "node-name", json_string(node_name));
    }
    f = bdev_open_filter_node(opts, bs, &lerr);
    json_decref(opts);
    if (f && !f->drv->is_filter) {
        bdev_unref(f);
        f = NULL;
        qmp_error_setg(&lerr, "'%s' is not a filter driver", driver);
    }
    if (!f) {
        qmp_error_setg(err, "Could not create node: %s",
                       lerr.desc ? lerr.desc : "unknown error");
        qmp_error_clear(&lerr);
        return NULL;
    }
    /* A named filter is the user's to see under that name; only an
     * auto-named one stands in for its child (QEMU's bs->implicit). */
    f->implicit = node_name == NULL;
    /* QEMU's bdrv_insert_node: the parents move inside a drained section
     * over bs (jobs above it pause and resume). */
    d = bdev_drained_begin(bs, false);
    replace_in_parents(bs, f, f);
    bdev_perm_refresh(f, NULL); /* a filter passes its parents' needs down */
    bdev_drained_end(d);
    return f;
}

bool bdev_has_parents(const struct bdev *bs)
{
    return bs->parents > 0;
}

void bdev_remove_filter_onto(struct bdev *filter, struct bdev *to)
{
    struct bdev_drained *d = bdev_drained_begin(filter, false);
    struct bdev *child = filter->file;

    /* QEMU's pivot (bdrv_replace_node of the mirror filter by the target):
     * the filter's parents and BlockBackends go to `to`. */
    replace_in_parents(filter, to, NULL);
    filter->detached = true;
    bdev_perm_refresh(to, NULL);
    if (child) {
        bdev_perm_refresh(child, NULL);
    }
    bdev_drained_end(d);
    bdev_unref(filter);
}

void bdev_remove_filter(struct bdev *filter)
{
    struct bdev *child = filter->file;
    struct bdev_drained *d;

    /* QEMU's bdrv_cor_filter_drop: a drained section over the filter; its
     * parents (and a BlockBackend on it) move down to the child. */
    d = bdev_drained_begin(filter, false);
    if (child) {
        replace_in_parents(filter, child, NULL);
        filter->detached = true;
        bdev_perm_refresh(child, NULL);
    } else {
        filter->detached = true;
    }
    bdev_drained_end(d);
    bdev_unref(filter);
}

void bdev_set_job_io_node(struct bdev *bs, bool on)
{
    bs->job_io_node = on;
}

/* ---- change of backing -------------------------------------------------- */

struct chg_op {
    struct bdev *bs, *new_backing;
    char *file, *fmt;
    bdev_cb *cb;
    void *opaque;
    struct bdev_drained *d;
};

static void chg_finish(struct chg_op *op, int ret)
{
    if (op->new_backing) {
        bdev_unref(op->new_backing);
    }
    bdev_drained_end(op->d);
    op->cb(op->opaque, ret);
    free(op->file);
    free(op->fmt);
    free(op);
}

static void chg_relinked(void *opaque)
{
    chg_finish(opaque, 0);
}

static void chg_header_done(void *opaque, int ret)
{
    struct chg_op *op = opaque;
    struct bdev *old;
    bool relink;

    if (ret < 0) {
        chg_finish(op, ret);
        return;
    }
    /* A filter chosen as the new backing may have been taken out while the
     * header was written (its job ended): its child takes its place. */
    while (op->new_backing && op->new_backing->detached &&
           op->new_backing->file) {
        struct bdev *child = op->new_backing->file;

        bdev_ref(child);
        bdev_unref(op->new_backing);
        op->new_backing = child;
    }
    old = op->bs->backing;
    /* The section's root is the node whose backing link QEMU replaces
     * (even by the same node: a job with nothing to copy): the users
     * below resume, and pause again under the new link. */
    relink = op->d->bs == op->bs && op->d->subtree;
    if (relink) {
        bdev_section_lift_below(op->d, op->bs, true, old);
    }
    if (old != op->new_backing) {
        if (op->new_backing) {
            bdev_ref(op->new_backing);
            op->new_backing->parents++;
        }
        op->bs->backing = op->new_backing;
        op->bs->backing_seq = bdev_next_link_seq();
        bdev_child_release(old);
    }
    /* The header now names what it was told: that is no override (QEMU
     * sets auto_backing_file with the header). */
    free(op->bs->auto_backing);
    op->bs->auto_backing = op->file ? strdup(op->file) : NULL;
    if (old != op->new_backing) {
        if (op->new_backing) {
            bdev_perm_refresh(op->new_backing, NULL);
        }
    }
    if (relink) {
        bdev_section_apply_below(op->d, op->bs, true, op->bs->backing);
        bdev_drained_wait(op->d, chg_relinked, op);
        return;
    }
    chg_finish(op, 0);
}

static void chg_flushed(void *opaque, int ret)
{
    struct chg_op *op = opaque;

    if (ret < 0) {
        chg_finish(op, ret);
        return;
    }
    ret = op->bs->drv->change_backing(op->bs, op->file, op->fmt,
                                      chg_header_done, op);
    if (ret < 0) {
        chg_finish(op, ret);
    }
}

/* The drained section's node: QEMU's stream_prepare drains the subtree of
 * the node right above the new backing in bs's chain (its "above_base");
 * without a new backing, of the chain's last node. */
static struct bdev *above_base(struct bdev *bs, struct bdev *new_backing)
{
    struct bdev *n = bs, *next;

    while ((next = bdev_chain_next(n)) && next != new_backing) {
        n = next;
    }
    return n;
}

static void chg_drained(void *opaque)
{
    struct chg_op *op = opaque;
    int ret = bdev_flush(op->bs, chg_flushed, op);

    if (ret < 0) {
        chg_finish(op, ret);
    }
}

int bdev_change_backing(struct bdev *bs, struct bdev *new_backing,
                        const char *backing_file, const char *backing_fmt,
                        bdev_cb *cb, void *opaque)
{
    struct chg_op *op;

    if (!bs->drv->has_backing || !bs->drv->change_backing) {
        return -ENOTSUP;
    }
    op = calloc(1, sizeof(*op));
    if (!op) {
        return -ENOMEM;
    }
    op->bs = bs;
    op->new_backing = new_backing;
    op->file = backing_file ? strdup(backing_file) : NULL;
    op->fmt = backing_fmt ? strdup(backing_fmt) : NULL;
    op->cb = cb;
    op->opaque = opaque;
    if (new_backing) {
        bdev_ref(new_backing); /* keep it alive until the switch */
    }
    /* Everything below happens in one drained section, which first waits
     * for the jobs it pauses (their requests in flight complete). */
    op->d = bdev_drained_begin(above_base(bs, new_backing), true);
    bdev_drained_wait(op->d, chg_drained, op);
    return 0;
}

/* ---- reopen -------------------------------------------------------------- */

/* QEMU reopens a read-only format node read-write for a job unless a
 * protocol node under it was added read-only explicitly: the format node's
 * own flag does not count. */
static bool explicit_ro_below(const struct bdev *bs)
{
    for (bs = bs->file; bs; bs = bs->file) {
        if (bs->explicit_ro) {
            return true;
        }
    }
    return false;
}

static int reopen_one(struct bdev *bs, bool rw, struct qmp_error *err)
{
    bool old = bs->read_only;
    int ret;

    if (bs->read_only == !rw) {
        return 0;
    }
    bs->read_only = !rw;
    if (bs->drv->reopen) {
        ret = bs->drv->reopen(bs, rw, err);
        if (ret < 0) {
            bs->read_only = old;
            return ret;
        }
    }
    return 0;
}

/* A node or a child it opened itself (QEMU's reopen queue) has
 * force-share: a read-write reopen cannot keep it. */
static bool force_share_in(const struct bdev *bs, bool top)
{
    if (!bs || (!top && bs->monitor_owned)) {
        return false;
    }
    return bs->force_share || force_share_in(bs->file, false) ||
           force_share_in(bs->backing, false);
}

static int reopen(struct bdev *bs, bool read_write, struct qmp_error *err)
{
    int ret;

    if (read_write && force_share_in(bs, true)) {
        qmp_error_setg(err, "Cannot change the option 'force-share'");
        return -EINVAL;
    }
    if (read_write && explicit_ro_below(bs)) {
        qmp_error_setg(err, "Block node is read-only");
        return -EACCES;
    }
    if (read_write) {
        /* Children first, the whole file chain (a format over blkdebug
         * over a file): the format writes through them. A node the
         * monitor added is not in QEMU's reopen queue: it keeps its own
         * mode, and the chain stops there. */
        struct bdev *chain[16];
        size_t n = 0;

        for (struct bdev *c = bs->file; c && !c->monitor_owned && n < 16;
             c = c->file) {
            chain[n++] = c;
        }
        while (n-- > 0) {
            ret = reopen_one(chain[n], true, err);
            if (ret < 0) {
                return ret;
            }
        }
        ret = reopen_one(bs, true, err);
        if (ret < 0) {
            return ret;
        }
    } else {
        ret = reopen_one(bs, false, err);
        if (ret < 0) {
            return ret;
        }
        for (struct bdev *c = bs->file;
             c && !c->explicit_ro && !c->monitor_owned; c = c->file) {
            reopen_one(c, false, NULL);
        }
    }
    if (bs->file) {
        ret = bdev_perm_refresh(bs->file, err);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

int bdev_reopen(struct bdev *bs, bool read_write, struct qmp_error *err)
{
    /* QEMU's bdrv_reopen runs in a drained section over the node's whole
     * subtree, also when it fails. */
    struct bdev_drained *d = bdev_drained_begin(bs, true);
    int ret = reopen(bs, read_write, err);

    /* The file chain may have changed descriptors (alignment): ask again,
     * bottom up. */
    {
        struct bdev *chain[16];
        size_t n = 0;

        for (struct bdev *c = bs; c && n < 16; c = c->file) {
            chain[n++] = c;
        }
        while (n-- > 0) {
            bdev_caps_refresh(chain[n]);
        }
    }
    bdev_drained_end(d);
    return ret;
}

const char *bdev_busy_parent(struct bdev *bs, bool *backing)
{
    size_t n;
    struct plink *ps = bdev_parents_of(bs, &n);
    const char *name = NULL;

    for (size_t i = 0; i < n && !name; i++) {
        if (!ps[i].u && ps[i].node) {
            name = bdev_node_name(ps[i].node);
            *backing = ps[i].backing;
        }
    }
    free(ps);
    return name;
}
