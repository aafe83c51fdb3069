/* The node graph and the request API; see bdev.h and bdev_int.h.
 *
 * Nodes live on one list, newest first (query-named-block-nodes' order).
 * bdev.c does everything the drivers have in common: naming, options every
 * node has, references, claims, permissions between parents and children,
 * range checks, in-flight counting and drain. Drivers only move data.
 */
#include "backends/bdev_int.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backends/aio.h"

#define NODE_NAME_MAX 31

static const struct bdev_driver *const drivers[] = {
    &bdev_drv_file,    &bdev_drv_raw,      &bdev_drv_qcow2,
    &bdev_drv_null_co, &bdev_drv_blkdebug, &bdev_drv_copy_on_read,
};

/* Options a child inherits from its parent unless it sets them itself. */
struct inherit {
    bool read_only;
    bool cache_direct;
    bool cache_no_flush;
    bool auto_read_only;
    bool force_share;
};

struct later {
    void (*fn)(void *arg);
    void *arg;
    struct later *next;
};

struct drain_waiter {
    struct bdev *bs;
    bdev_cb *cb;
    void *opaque;
    struct drain_waiter *next;
};

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

/* A drained section; see "users and drained sections" below. */
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
    struct bdev_drained *next; /* g.sections */
};

static struct {
    uv_loop_t *loop;
    struct bdev *nodes;
    uint64_t implicit_id;
    uint32_t name_rand;
    uv_idle_t idle;
    bool idle_init;
    struct later *later_head, *later_tail;
    struct drain_waiter *drains;
    uint64_t zero_writes_detected;
    struct bdev *filter_child;     /* ... over this node (by pointer: it
                                    * need not be on the list) */
    uint64_t link_seq;             /* see bdev.file_seq */
    struct bdev_drained *sections; /* drained sections, in processing order */
} g;

/* ---- deferred calls ---------------------------------------------------- */

static void idle_cb(uv_idle_t *h)
{
    struct later *l = g.later_head;

    (void)h;
    /* Take the whole list: calls queued by these callbacks wait for the
     * next iteration, so a chain of deferrals cannot starve the loop. */
    g.later_head = g.later_tail = NULL;
    while (l) {
        struct later *next = l->next;

        l->fn(l->arg);
        free(l);
        l = next;
    }
    if (!g.later_head) {
        uv_idle_stop(&g.idle);
    }
}

void bdev_call_later(void (*fn)(void *arg), void *arg)
{
    struct later *l = calloc(1, sizeof(*l));

    if (!l) {
        abort(); /* a promised callback cannot be dropped */
    }
    l->fn = fn;
    l->arg = arg;
    if (g.later_tail) {
        g.later_tail->next = l;
    } else {
        g.later_head = l;
    }
    g.later_tail = l;
    uv_idle_start(&g.idle, idle_cb);
}

/* ---- start-up ---------------------------------------------------------- */

int bdev_init(uv_loop_t *loop)
{
    int ret;

    g.loop = loop;
    if (!g.idle_init) {
        uv_idle_init(loop, &g.idle);
        g.idle_init = true;
    }
    ret = aio_init(loop);
    return ret;
}

uv_loop_t *bdev_loop(void)
{
    return g.loop;
}

/* ---- lookup and accessors ---------------------------------------------- */

struct bdev *bdev_find(const char *node_name)
{
    for (struct bdev *bs = g.nodes; bs; bs = bs->next) {
        if (strcmp(bs->node_name, node_name) == 0) {
            return bs;
        }
    }
    return NULL;
}

const char *bdev_node_name(const struct bdev *bs)
{
    return bs->node_name;
}

const char *bdev_driver_name(const struct bdev *bs)
{
    return bs->drv->name;
}

const char *bdev_filename(const struct bdev *bs)
{
    return bs->filename ? bs->filename : "";
}

struct bdev *bdev_file_child(const struct bdev *bs)
{
    return bs->file;
}

struct bdev *bdev_backing(const struct bdev *bs)
{
    return bs->backing;
}

bool bdev_is_filter(const struct bdev *bs)
{
    return bs->drv->is_filter;
}

struct bdev *bdev_chain_next(const struct bdev *bs)
{
    return bs->drv->is_filter ? bs->file : bs->backing;
}

struct bdev *bdev_skip_filters(struct bdev *bs)
{
    while (bs && bs->drv->is_filter && bs->file) {
        bs = bs->file;
    }
    return bs;
}

int64_t bdev_length(struct bdev *bs)
{
    return bs->drv->length ? bs->drv->length(bs) : 0;
}

bool bdev_is_read_only(const struct bdev *bs)
{
    return bs->read_only;
}

uint32_t bdev_cluster_size(const struct bdev *bs)
{
    return bs->cluster_size;
}

uint32_t bdev_mem_align(const struct bdev *bs)
{
    uint32_t a = bs->mem_align ? bs->mem_align : 1;

    if (bs->file && bdev_mem_align(bs->file) > a) {
        a = bdev_mem_align(bs->file);
    }
    return a;
}

const char *bdev_claimed_by(const struct bdev *bs)
{
    return bs->claimed_by;
}

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
static int perm_refresh(struct bdev *bs, struct qmp_error *err)
{
    unsigned perm = 0, shared = BDEV_PERM_ALL;
    int ret;

    for (struct bdev *a = g.nodes; a; a = a->next) {
        unsigned ap, as;

        if (!is_parent_of(a, bs)) {
            continue;
        }
        parent_perms(a, bs, &ap, &as);
        for (struct bdev *b = g.nodes; b; b = b->next) {
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
        ret = perm_refresh(bs->file, err);
        if (ret < 0) {
            return ret;
        }
    }
    if (bs->backing) {
        ret = perm_refresh(bs->backing, err);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

struct bdev *bdev_resizing_parent(const struct bdev *bs)
{
    for (struct bdev *p = g.nodes; p; p = p->next) {
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

/* ---- references -------------------------------------------------------- */

static void list_remove(struct bdev *bs)
{
    for (struct bdev **pp = &g.nodes; *pp; pp = &(*pp)->next) {
        if (*pp == bs) {
            *pp = bs->next;
            return;
        }
    }
}

static void users_forget_node(struct bdev *bs);

static void child_release(struct bdev *child)
{
    if (!child) {
        return;
    }
    child->parents--;
    /* Fewer parents can only lift locks: failures here are not fatal. */
    perm_refresh(child, NULL);
    bdev_unref(child);
}

static void node_free(struct bdev *bs)
{
    struct bdev *file = bs->file, *backing = bs->backing;

    if (bs->drv->close) {
        bs->drv->close(bs);
    }
    list_remove(bs);
    users_forget_node(bs);
    bs->file = bs->backing = NULL;
    child_release(file);
    child_release(backing);
    json_decref(bs->full_opts);
    free(bs->auto_backing);
    free(bs->claimed_by);
    free(bs->filename);
    free(bs->node_name);
    free(bs->state);
    free(bs);
}

void bdev_ref(struct bdev *bs)
{
    bs->refcnt++;
}

void bdev_unref(struct bdev *bs)
{
    if (!bs) {
        return;
    }
    if (--bs->refcnt > 0) {
        return;
    }
    node_free(bs);
}

int bdev_claim(struct bdev *bs, const char *reason, struct qmp_error *err)
{
    if (bs->claimed_by) {
        qmp_error_setg(err,
                       "Node '%s' is busy: block device is in use by block "
                       "job: %s",
                       bs->node_name, bs->claimed_by);
        return -EBUSY;
    }
    bs->claimed_by = strdup(reason ? reason : "");
    return bs->claimed_by ? 0 : -ENOMEM;
}

void bdev_release(struct bdev *bs)
{
    free(bs->claimed_by);
    bs->claimed_by = NULL;
}

/* ---- users and drained sections ------------------------------------------ */

/* QEMU 7.2's drain, as seen from outside: a section over a node quiesces
 * the node and, through their links, every node above it (a subtree section
 * also every node below it, each with what is above); every job linked to a
 * quiesced node is asked to pause, once per path. The section then waits
 * until those jobs are quiet (parked, or ended), makes its change and lifts
 * the pauses. A job that was sleeping parks at once; one with a request in
 * flight parks when it completed. The walk order is QEMU's: a node's parents
 * newest link first, depth first, a node's children newest first. */

static uint64_t next_seq(void)
{
    return ++g.link_seq;
}

/* A link into a node: a parent node's file or backing link, or a user. */
struct plink {
    uint64_t seq;
    struct bdev *node; /* the parent (parents_of) or child (children_of) */
    bool backing;
    struct bdev_user *u;
};

static int plink_cmp(const void *a, const void *b)
{
    const struct plink *x = a, *y = b;

    return x->seq < y->seq ? 1 : x->seq > y->seq ? -1 : 0;
}

static void plink_push(struct plink **v, size_t *n, size_t *cap, struct plink l)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 8;
        *v = realloc(*v, *cap * sizeof(**v));
        if (!*v) {
            abort();
        }
    }
    (*v)[(*n)++] = l;
}

/* Every link into bs, newest first (QEMU's bs->parents). A filter taken
 * out of the graph is no parent any more (QEMU drops its child link). */
static struct plink *parents_of(struct bdev *bs, size_t *n)
{
    struct plink *v = NULL;
    size_t cap = 0;

    *n = 0;
    for (struct bdev *p = g.nodes; p; p = p->next) {
        if (p->detached) {
            continue;
        }
        if (p->file == bs) {
            plink_push(&v, n, &cap,
                       (struct plink){p->file_seq, p, false, NULL});
        }
        if (p->backing == bs) {
            plink_push(&v, n, &cap,
                       (struct plink){p->backing_seq, p, true, NULL});
        }
    }
    for (struct bdev_user *u = bs->users; u; u = u->next) {
        plink_push(&v, n, &cap, (struct plink){u->seq, NULL, false, u});
    }
    if (*n > 1) {
        qsort(v, *n, sizeof(*v), plink_cmp);
    }
    return v;
}

/* bs's children, newest link first (QEMU's bs->children). */
static size_t children_of(struct bdev *bs, struct plink out[2])
{
    size_t n = 0;

    if (bs->file) {
        out[n++] = (struct plink){bs->file_seq, bs->file, false, NULL};
    }
    if (bs->backing) {
        out[n++] = (struct plink){bs->backing_seq, bs->backing, true, NULL};
    }
    if (n == 2 && out[1].seq > out[0].seq) {
        struct plink t = out[0];

        out[0] = out[1];
        out[1] = t;
    }
    return n;
}

/* The users a walk reaches, in order, once per path. */
struct walk {
    struct bdev_user **u;
    size_t n, cap;
};

/* Quiesces bs (every link into it but the one from `from`'s `backing` or
 * file link, which the walk came down), then, for a subtree, its children
 * (bdrv_do_drained_begin: parents before children). */
static void walk_node(struct walk *w, struct bdev *bs, struct bdev *from,
                      bool from_backing, bool subtree)
{
    struct plink kids[2];
    struct plink *ps;
    size_t n, nk;

    ps = parents_of(bs, &n);
    for (size_t i = 0; i < n; i++) {
        if (ps[i].u) {
            if (w->n == w->cap) {
                w->cap = w->cap ? w->cap * 2 : 8;
                w->u = realloc(w->u, w->cap * sizeof(*w->u));
                if (!w->u) {
                    abort();
                }
            }
            w->u[w->n++] = ps[i].u;
        } else if (ps[i].node != from || ps[i].backing != from_backing) {
            /* QEMU quiesces a parent with all its own parents. */
            walk_node(w, ps[i].node, NULL, false, false);
        }
    }
    free(ps);
    if (!subtree) {
        return;
    }
    nk = children_of(bs, kids);
    for (size_t i = 0; i < nk; i++) {
        walk_node(w, kids[i].node, bs, kids[i].backing, true);
    }
}

struct bdev_user *bdev_user_add(struct bdev *bs,
                                const struct bdev_user_ops *ops, void *opaque,
                                bool moves)
{
    struct bdev_user *u = calloc(1, sizeof(*u));

    if (!u) {
        abort();
    }
    u->bs = bs;
    u->ops = ops;
    u->opaque = opaque;
    u->moves = moves;
    u->seq = next_seq();
    u->next = bs->users;
    bs->users = u;
    return u;
}

struct bdev *bdev_user_node(const struct bdev_user *u)
{
    return u->bs;
}

static void user_unlink(struct bdev_user *u)
{
    if (!u->bs) {
        return;
    }
    for (struct bdev_user **pp = &u->bs->users; *pp; pp = &(*pp)->next) {
        if (*pp == u) {
            *pp = u->next;
            break;
        }
    }
    u->next = NULL;
    u->bs = NULL;
}

static void scrub_user(struct bdev_user *u)
{
    for (struct bdev_drained *d = g.sections; d; d = d->next) {
        for (size_t i = 0; i < d->n; i++) {
            if (d->pauses[i].u == u) {
                d->pauses[i].u = NULL;
            }
        }
        for (size_t i = 0; i < d->n_end; i++) {
            if (d->end_walk[i] == u) {
                d->end_walk[i] = NULL;
            }
        }
    }
}

void bdev_user_remove(struct bdev_user *u)
{
    if (!u) {
        return;
    }
    user_unlink(u);
    scrub_user(u);
    free(u);
    bdev_users_kick(); /* a section may have waited for it */
}

/* Moves a BlockBackend-like user with its node's parents (a new link). */
static void user_move(struct bdev_user *u, struct bdev *to)
{
    user_unlink(u);
    u->bs = to;
    u->seq = next_seq();
    u->next = to->users;
    to->users = u;
}

static void users_forget_node(struct bdev *bs)
{
    while (bs->users) {
        user_unlink(bs->users);
    }
}

/* Sections are processed one at a time, in order, as QEMU's drain waits
 * before its caller goes on: a section hands out its pauses when it comes
 * first, its owner's callback runs once the users are quiet, and its end
 * is handed out once the owner ended it and the users are quiet (a section
 * nobody waits for, ended at once, waits here: its users still park and
 * resume in QEMU's order, only after the caller moved on). A section begun
 * while the first one is open (its owner still inside, waiting or working)
 * comes from work its wait let run - a job ending, say - and goes first, as
 * in QEMU, where such work runs inside the outer section's poll. */

static bool section_quiet(struct bdev_drained *d, bool strict)
{
    for (size_t i = 0; i < d->n; i++) {
        struct bdev_user *u = d->pauses[i].u;

        if (u && u->ops && u->ops->busy &&
            u->ops->busy(u->opaque, d->pauses[i].token, strict)) {
            return false;
        }
    }
    return true;
}

static void section_hand_out(struct bdev_drained *d)
{
    for (size_t i = 0; i < d->n; i++) {
        struct bdev_user *u = d->pauses[i].u;

        if (u && u->ops && u->ops->drained_begin) {
            d->pauses[i].token = u->ops->drained_begin(u->opaque);
        }
    }
}

static void give_back(struct bdev_user *u)
{
    if (u->ops && u->ops->drained_end) {
        u->ops->drained_end(u->opaque);
    }
}

/* The resumes: users the end walk reaches, in its order, then any the
 * graph change left behind, in the order they were paused (QEMU lifts
 * those during the change). A callback may remove users (scrub_user clears
 * them here: the section stays queued meanwhile). */
static void section_take_back(struct bdev_drained *d)
{
    for (size_t i = 0; i < d->n_end; i++) {
        for (size_t j = 0; d->end_walk[i] && j < d->n; j++) {
            if (d->pauses[j].u == d->end_walk[i]) {
                d->pauses[j].u = NULL;
                give_back(d->end_walk[i]);
                break;
            }
        }
    }
    for (size_t j = 0; j < d->n; j++) {
        struct bdev_user *u = d->pauses[j].u;

        if (u) {
            d->pauses[j].u = NULL;
            give_back(u);
        }
    }
}

/* QEMU re-links a child of a subtree section's root inside the section:
 * detaching the child lifts the section from the child's subtree (its
 * users resume at once), attaching one applies it (bdrv_unapply_ /
 * bdrv_apply_subtree_drain). */
static void section_lift_below(struct bdev_drained *d, struct bdev *parent,
                               bool backing, struct bdev *child)
{
    struct walk w = {0};

    if (!child) {
        return;
    }
    walk_node(&w, child, parent, backing, true);
    for (size_t i = 0; i < w.n; i++) {
        for (size_t j = 0; j < d->n; j++) {
            if (d->pauses[j].u == w.u[i]) {
                d->pauses[j].u = NULL;
                give_back(w.u[i]);
                break;
            }
        }
    }
    free(w.u);
}

static void section_apply_below(struct bdev_drained *d, struct bdev *parent,
                                bool backing, struct bdev *child)
{
    struct walk w = {0};
    struct drained_pause *v;

    if (!child) {
        return;
    }
    walk_node(&w, child, parent, backing, true);
    v = realloc(d->pauses, (d->n + w.n + 1) * sizeof(*d->pauses));
    if (!v) {
        abort();
    }
    d->pauses = v;
    for (size_t i = 0; i < w.n; i++) {
        d->pauses[d->n++] = (struct drained_pause){w.u[i], false};
    }
    free(w.u);
    for (size_t i = d->n - w.n; i < d->n; i++) {
        struct bdev_user *u = d->pauses[i].u;

        if (u && u->ops && u->ops->drained_begin) {
            d->pauses[i].token = u->ops->drained_begin(u->opaque);
        }
    }
}

static void section_free(struct bdev_drained *d)
{
    bdev_unref(d->bs); /* NULL for an idle waiter's */
    free(d->pauses);
    free(d->end_walk);
    free(d);
}

static bool drain_running, drain_again;

static void drain_run(void)
{
    struct bdev_drained *d;

    if (drain_running) {
        drain_again = true;
        return;
    }
    drain_running = true;
    do {
        drain_again = false;
        while ((d = g.sections)) {
            if (!d->begun) {
                d->begun = true;
                section_hand_out(d);
                continue; /* a pause may have changed the queue */
            }
            if (!d->cb_done) {
                if (!d->cb) {
                    break; /* the owner has not said yet */
                }
                if (!section_quiet(d, true)) {
                    break;
                }
                d->cb_done = true;
                d->cb(d->opaque);
                continue;
            }
            /* An owner that did not wait does not wait for endings that
             * began meanwhile either (nor deadlocks on them). */
            if (!d->ended || !section_quiet(d, false)) {
                break;
            }
            /* Still first while the users are told (nothing nests in an
             * ended section), so that removed users are cleared here. */
            section_take_back(d);
            g.sections = d->next;
            section_free(d);
        }
    } while (drain_again);
    drain_running = false;
}

static bool kick_queued;

static void kick_cb(void *arg)
{
    (void)arg;
    kick_queued = false;
    drain_run();
}

void bdev_users_kick(void)
{
    /* From the loop, never inside the caller (a job parking, say). */
    if (g.sections && !kick_queued) {
        kick_queued = true;
        bdev_call_later(kick_cb, NULL);
    }
}

static void section_queue(struct bdev_drained *d)
{
    struct bdev_drained **pp = &g.sections;

    if (g.sections && g.sections->begun && !g.sections->ended) {
        d->next = g.sections; /* nested in the open one */
        g.sections = d;
        return;
    }
    while (*pp) {
        pp = &(*pp)->next;
    }
    *pp = d;
}

struct bdev_drained *bdev_drained_begin(struct bdev *bs, bool subtree)
{
    struct bdev_drained *d = calloc(1, sizeof(*d));
    struct walk w = {0};

    if (!d) {
        abort();
    }
    d->bs = bs;
    d->subtree = subtree;
    bdev_ref(bs);
    /* Who is reached is decided by the graph as it is now, whenever the
     * pauses are handed out. */
    walk_node(&w, bs, NULL, false, subtree);
    d->pauses = calloc(w.n ? w.n : 1, sizeof(*d->pauses));
    if (!d->pauses) {
        abort();
    }
    for (size_t i = 0; i < w.n; i++) {
        d->pauses[i].u = w.u[i];
    }
    d->n = w.n;
    free(w.u);
    section_queue(d);
    drain_run();
    return d;
}

void bdev_drained_wait(struct bdev_drained *d, void (*cb)(void *opaque),
                       void *opaque)
{
    d->cb = cb;
    d->opaque = opaque;
    d->cb_done = false; /* (again, after a relink: see chg_header_done) */
    drain_run();
}

void bdev_drained_end(struct bdev_drained *d)
{
    struct walk w = {0};

    if (d->bs) {
        walk_node(&w, d->bs, NULL, false, d->subtree);
    }
    d->end_walk = w.u;
    d->n_end = w.n;
    d->ended = true;
    d->cb_done = true; /* ended before its callback: it never runs */
    if (g.sections == d && d->begun && section_quiet(d, false)) {
        /* The pauses go back now, before the owner goes on (also when
         * the owner is d's own callback, inside drain_run). */
        section_take_back(d);
        g.sections = d->next;
        section_free(d);
    }
    drain_run();
}

struct section_op {
    struct bdev_drained *d;
    bdev_cb *cb;
    void *opaque;
};

static void section_op_quiet(void *opaque)
{
    struct section_op *op = opaque;

    bdev_drained_end(op->d);
    op->cb(op->opaque, 0);
    free(op);
}

void bdev_drained_section(struct bdev *bs, bool subtree, bdev_cb *cb,
                          void *opaque)
{
    struct section_op *op = calloc(1, sizeof(*op));

    if (!op) {
        abort();
    }
    op->cb = cb;
    op->opaque = opaque;
    op->d = bdev_drained_begin(bs, subtree);
    bdev_drained_wait(op->d, section_op_quiet, op);
}

bool bdev_drained_idle(void)
{
    return !g.sections;
}

struct idle_waiter {
    void (*cb)(void *opaque);
    void *opaque;
    struct bdev_drained *d;
};

static void idle_reached(void *opaque)
{
    struct idle_waiter *iw = opaque;

    bdev_drained_end(iw->d);
    iw->cb(iw->opaque);
    free(iw);
}

void bdev_when_drained_idle(void (*cb)(void *opaque), void *opaque)
{
    struct idle_waiter *iw;
    struct bdev_drained *d;

    if (!g.sections) {
        cb(opaque);
        return;
    }
    iw = calloc(1, sizeof(*iw));
    d = calloc(1, sizeof(*d));
    if (!iw || !d) {
        abort();
    }
    /* A section over nothing, last in the queue. */
    iw->cb = cb;
    iw->opaque = opaque;
    iw->d = d;
    d->bs = NULL;
    {
        struct bdev_drained **pp = &g.sections;

        while (*pp) {
            pp = &(*pp)->next;
        }
        *pp = d;
    }
    bdev_drained_wait(d, idle_reached, iw);
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

/* ---- opening ----------------------------------------------------------- */

static bool name_wellformed(const char *s)
{
    if (!isalpha((unsigned char)s[0])) {
        return false;
    }
    for (const char *p = s + 1; *p; p++) {
        if (!isalnum((unsigned char)*p) && !strchr("-._", *p)) {
            return false;
        }
    }
    return true;
}

static int check_node_name(const char *name, struct qmp_error *err)
{
    if (!name_wellformed(name)) {
        qmp_error_setg(err, "Invalid node-name: '%s'", name);
        return -EINVAL;
    }
    if (bdev_find(name)) {
        qmp_error_setg(err, "Duplicate nodes with node-name='%s'", name);
        return -EEXIST;
    }
    if (strlen(name) > NODE_NAME_MAX) {
        qmp_error_setg(err, "Node name too long");
        return -EINVAL;
    }
    return 0;
}

static char *implicit_name(void)
{
    char *s;

    /* Like QEMU: a counter and two pseudo-random digits. */
    g.name_rand = g.name_rand * 1103515245u + 12345u;
    if (asprintf(&s, "#block%llu%02u", (unsigned long long)g.implicit_id++,
                 (g.name_rand >> 16) % 100) < 0) {
        return NULL;
    }
    return s;
}

static const struct bdev_driver *extra_drivers[4];

void bdev_register_driver(const struct bdev_driver *drv)
{
    for (size_t i = 0; i < 4; i++) {
        if (!extra_drivers[i] || extra_drivers[i] == drv) {
            extra_drivers[i] = drv;
            return;
        }
    }
}

struct bdev *bdev_all_nodes(void)
{
    return g.nodes;
}

static const struct bdev_driver *find_driver(const char *name)
{
    for (size_t i = 0; i < sizeof(drivers) / sizeof(drivers[0]); i++) {
        if (drivers[i] && strcmp(drivers[i]->name, name) == 0) {
            return drivers[i];
        }
    }
    for (size_t i = 0; i < 4; i++) {
        if (extra_drivers[i] && strcmp(extra_drivers[i]->name, name) == 0) {
            return extra_drivers[i];
        }
    }
    return NULL;
}

static bool opt_bool(json_t *opts, const char *key, bool dflt)
{
    json_t *v = json_object_get(opts, key);

    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static struct bdev *open_node(json_t *opts, bool monitor,
                              const struct inherit *inh, struct qmp_error *err);

static struct bdev *open_child(json_t *ref, const struct inherit *inh,
                               struct qmp_error *err)
{
    struct bdev *child;

    if (json_is_string(ref)) {
        const char *name = json_string_value(ref);

        child = bdev_find(name);
        if (!child) {
            qmp_error_setg(err, "Cannot find device='%s' nor node-name='%s'",
                           name, name);
            return NULL;
        }
        bdev_ref(child);
    } else if (json_is_object(ref)) {
        child = open_node(ref, false, inh, err);
        if (!child) {
            return NULL;
        }
    } else {
        qmp_error_setg(err, "Invalid parameter type for 'file', expected: "
                            "BlockdevRef");
        return NULL;
    }
    child->parents++;
    return child;
}

/* QEMU's QDict: 512 buckets by tdb_hash, iterated in bucket order, newest
 * entry first within a bucket. */
static unsigned qdict_bucket(const char *key)
{
    uint32_t v = 0x238F13AFu * (uint32_t)strlen(key);

    for (size_t i = 0; key[i]; i++) {
        v += (uint32_t)(unsigned char)key[i] << (i * 5 % 24);
    }
    return (1103515243u * v + 12345u) % 512;
}

static json_t *qdict_ordered(json_t *o)
{
    json_t *out, *v;
    const char *k;

    if (!json_is_object(o)) {
        return json_incref(o);
    }
    out = json_object();
    for (unsigned b = 0; b < 512; b++) {
        const char *keys[64];
        size_t n = 0;

        json_object_foreach(o, k, v) {
            if (qdict_bucket(k) == b && n < 64) {
                keys[n++] = k;
            }
        }
        while (n > 0) {
            n--;
            json_object_set_new(out, keys[n],
                                qdict_ordered(json_object_get(o, keys[n])));
        }
    }
    return out;
}

char *bdev_json_filename(json_t *opts)
{
    json_t *ordered = qdict_ordered(opts);
    char *enc = json_dumps(ordered, JSON_PRESERVE_ORDER);
    char *s = NULL;

    json_decref(ordered);
    if (enc && asprintf(&s, "json:%s", enc) < 0) {
        s = NULL;
    }
    free(enc);
    return s;
}

static json_t *default_full_opts(struct bdev *bs)
{
    json_t *o = json_object();

    json_object_set_new(o, "driver", json_string(bs->drv->name));
    if (bs->file && bs->file->full_opts) {
        json_object_set(o, "file", bs->file->full_opts);
    }
    return o;
}

static void set_default_filename(struct bdev *bs)
{
    if (!bs->full_opts) {
        bs->full_opts = default_full_opts(bs);
    }
    if (bs->filename) {
        return;
    }
    if (bs->file && bs->file->filename &&
        strncmp(bs->file->filename, "json:", 5) != 0) {
        bs->filename = strdup(bs->file->filename);
        return;
    }
    if (bs->file) {
        bs->filename = bdev_json_filename(bs->full_opts);
    }
}

/* The backing name in the image header (what the driver reports as
 * "backing-filename"), or NULL. */
static char *header_backing_name(struct bdev *bs)
{
    json_t *info, *v;
    char *name = NULL;

    if (!bs->drv->info) {
        return NULL;
    }
    info = json_object();
    bs->drv->info(bs, info);
    v = json_object_get(info, "backing-filename");
    if (json_is_string(v) && json_string_value(v)[0]) {
        name = strdup(json_string_value(v));
    }
    json_decref(info);
    return name;
}

/* ---- reported file names ------------------------------------------------ */

static bool is_json_name(const char *s)
{
    return s && strncmp(s, "json:", 5) == 0;
}

/* An implicit filter stands in for its child in every name. */
static bool transparent(const struct bdev *bs)
{
    return bs->drv->is_filter && bs->implicit && bs->file;
}

static json_t *query_opts(struct bdev *bs);

/* QEMU's bdrv_backing_overridden(): the backing is not what the header
 * (as remembered at open or at the last backing change) names. */
static bool backing_overridden(struct bdev *bs)
{
    char *name;
    bool differs;

    if (!bs->drv->has_backing) {
        return false;
    }
    if (!bs->backing) {
        return bs->auto_backing && bs->auto_backing[0];
    }
    name = bdev_query_filename(bs->backing);
    differs = !name || strcmp(bs->auto_backing ? bs->auto_backing : "", name);
    free(name);
    return differs;
}

/* The options that name the node now (QEMU's full_open_options): what it
 * was opened with, its children's current ones, and its backing's when
 * that was overridden (null when removed). A new reference. */
static json_t *query_opts(struct bdev *bs)
{
    json_t *o;

    if (transparent(bs)) {
        return query_opts(bs->file);
    }
    o = bs->full_opts ? json_copy(bs->full_opts) : json_object();
    if (bs->file) {
        /* "image" is blkdebug's name for its child. */
        const char *key = json_object_get(o, "image") ? "image" : "file";

        json_object_set_new(o, key, query_opts(bs->file));
    }
    if (backing_overridden(bs)) {
        json_object_set_new(
            o, "backing", bs->backing ? query_opts(bs->backing) : json_null());
    }
    return o;
}

static char *json_name(struct bdev *bs)
{
    json_t *o = query_opts(bs);
    char *s = bdev_json_filename(o);

    json_decref(o);
    return s;
}

/* Options of the node's own that change what it shows (raw's offset and
 * size: QEMU's strong runtime options) are in its name. */
static bool own_opts(const struct bdev *bs)
{
    const char *k;
    json_t *v;

    json_object_foreach(bs->full_opts, k, v) {
        if (strcmp(k, "driver") && strcmp(k, "file") && strcmp(k, "image") &&
            strcmp(k, "backing")) {
            return true;
        }
    }
    return false;
}

char *bdev_query_filename(struct bdev *bs)
{
    char *f;

    if (transparent(bs)) {
        return bdev_query_filename(bs->file);
    }
    if (!bs->file || !bs->drv->is_format) {
        /* Protocol nodes and blkdebug: named at open; a json: name is
         * rebuilt since the child's may have changed. */
        return is_json_name(bs->filename) ? json_name(bs)
                                          : strdup(bdev_filename(bs));
    }
    /* A format takes its file's plain name unless it is a (named) filter
     * or its backing is not the one the header names. */
    if (!bs->drv->is_filter && !backing_overridden(bs) && !own_opts(bs)) {
        f = bdev_query_filename(bs->file);
        if (!f || !is_json_name(f)) {
            return f;
        }
        free(f);
    }
    return json_name(bs);
}

bool bdev_backing_overridden(struct bdev *bs)
{
    return backing_overridden(bs);
}

char *bdev_header_backing(struct bdev *bs)
{
    return header_backing_name(bs);
}

/* ---- opening ------------------------------------------------------------ */

/* Whether discard is "unmap": the default of every child (QEMU's
 * bdrv_inherited_options), "ignore" for a node the monitor adds. */
static bool discard_unmap(json_t *opts, const struct inherit *inh)
{
    const char *v = json_string_value(json_object_get(opts, "discard"));

    if (!v) {
        return inh != NULL;
    }
    return strcmp(v, "unmap") == 0 || strcmp(v, "on") == 0;
}

static struct bdev *open_node(json_t *opts, bool monitor,
                              const struct inherit *inh, struct qmp_error *err)
{
    const char *drv_name, *name;
    const struct bdev_driver *drv;
    struct bdev *bs;
    json_t *cache, *v;
    struct inherit mine;
    int ret;

    v = json_object_get(opts, "driver");
    if (!v) {
        qmp_error_setg(err, "Parameter 'driver' is missing");
        return NULL;
    }
    drv_name = json_string_value(v);
    name = json_string_value(json_object_get(opts, "node-name"));
    if (monitor && !name) {
        qmp_error_setg(err, "'node-name' must be specified for the root node");
        return NULL;
    }
    drv = drv_name ? find_driver(drv_name) : NULL;
    if (!drv) {
        qmp_error_setg(err, "Unknown driver '%s'", drv_name ? drv_name : "");
        return NULL;
    }

    bs = calloc(1, sizeof(*bs));
    if (!bs) {
        qmp_error_setg(err, "Out of memory");
        return NULL;
    }
    bs->drv = drv;
    bs->refcnt = 1;
    bs->perm = 0;
    bs->shared_perm = BDEV_PERM_ALL;
    bs->implicit = !monitor;
    bs->monitor_owned = monitor;

    /* Options every node has; children inherit the unset ones. */
    mine = inh ? *inh : (struct inherit){0};
    v = json_object_get(opts, "read-only");
    if (json_is_boolean(v)) {
        mine.read_only = json_is_true(v);
        bs->explicit_ro = mine.read_only;
    }
    cache = json_object_get(opts, "cache");
    mine.cache_direct = opt_bool(cache, "direct", mine.cache_direct);
    mine.cache_no_flush = opt_bool(cache, "no-flush", mine.cache_no_flush);
    mine.auto_read_only = opt_bool(opts, "auto-read-only", mine.auto_read_only);
    bs->read_only = mine.read_only;
    bs->cache_direct = mine.cache_direct;
    bs->cache_no_flush = mine.cache_no_flush;
    bs->auto_read_only = mine.auto_read_only;
    mine.force_share = opt_bool(opts, "force-share", mine.force_share);
    bs->force_share = mine.force_share;
    v = json_object_get(opts, "detect-zeroes");
    bs->detect_zeroes = "off";
    if (json_is_string(v) && strcmp(json_string_value(v), "on") == 0) {
        bs->detect_zeroes = "on";
    } else if (json_is_string(v) &&
               strcmp(json_string_value(v), "unmap") == 0) {
        bs->detect_zeroes = "unmap";
    }
    if (drv->state_size) {
        bs->state = calloc(1, drv->state_size);
        if (!bs->state) {
            qmp_error_setg(err, "Out of memory");
            goto fail;
        }
    }

    /* A format's file child first: its name is older than ours, as in
     * QEMU, and it must be locked before the format reads its header. */
    if (drv->is_format) {
        struct inherit child_inh = mine;

        v = json_object_get(opts, "file");
        if (g.filter_child && drv->is_filter) {
            bs->file = g.filter_child;
            bdev_ref(bs->file);
            bs->file->parents++;
        } else if (!v) {
            qmp_error_setg(err, "Parameter 'file' is missing");
            goto fail;
        } else {
            bs->file = open_child(v, &child_inh, err);
            if (!bs->file) {
                goto fail;
            }
        }
    }

    /* QEMU's checks after the file child is open, in its order. */
    if (bs->force_share && !bs->read_only) {
        qmp_error_setg(err,
                       "force-share=on can only be used with read-only images");
        goto fail;
    }
    if (strcmp(drv->name, "file") == 0 &&
        !(json_string_value(json_object_get(opts, "filename")) &&
          json_string_value(json_object_get(opts, "filename"))[0])) {
        qmp_error_setg(err, "The 'file' block driver requires a file name");
        goto fail;
    }
    if (strcmp(bs->detect_zeroes, "unmap") == 0 && !discard_unmap(opts, inh)) {
        qmp_error_setg(err, "setting detect-zeroes to unmap is not allowed "
                            "without setting discard operation to unmap");
        goto fail;
    }
    if (name && check_node_name(name, err) < 0) {
        goto fail;
    }
    if (bs->file) {
        bs->file_seq = next_seq();
    }
    bs->node_name = name ? strdup(name) : implicit_name();
    if (!bs->node_name) {
        qmp_error_setg(err, "Out of memory");
        goto fail;
    }
    bs->next = g.nodes;
    g.nodes = bs;

    if (bs->file) {
        g_open_checks_ro = true;
        ret = perm_refresh(bs->file, err);
        g_open_checks_ro = false;
        if (ret < 0) {
            goto fail_listed;
        }
    }
    if (drv->open) {
        ret = drv->open(bs, opts, err);
        if (ret < 0) {
            if (!qmp_error_is_set(err)) {
                qmp_error_setg(err, "Could not open node: %s", strerror(-ret));
            }
            goto fail_opened;
        }
    }
    if (bs->file && !bs->file_seq) {
        bs->file_seq = next_seq();
    }
    if (bs->backing) {
        bs->backing_seq = next_seq(); /* after the file, as in QEMU */
    }
    /* Children the driver opened itself (backing, blkdebug's image). */
    if ((bs->file && perm_refresh(bs->file, err) < 0) ||
        (bs->backing && perm_refresh(bs->backing, err) < 0)) {
        if (drv->close) {
            drv->close(bs);
        }
        goto fail_opened;
    }
    /* An empty "cache" stays in QEMU's flattened options, which no driver
     * consumes: refused once the node and its children are open. */
    if (json_is_object(cache) && json_object_size(cache) == 0) {
        if (drv->is_format) {
            qmp_error_setg(err,
                           "Block format '%s' does not support the option "
                           "'cache'",
                           drv->name);
        } else {
            qmp_error_setg(err,
                           "Block protocol '%s' doesn't support the option "
                           "'cache'",
                           drv->name);
        }
        if (drv->close) {
            drv->close(bs);
        }
        goto fail_opened;
    }
    set_default_filename(bs);
    if (drv->has_backing && !bs->auto_backing) {
        bs->auto_backing = header_backing_name(bs);
    }
    return bs;

fail_opened:
    /* The driver cleaned up after a failed open, or close() did. */
fail_listed:
    list_remove(bs);
fail : {
    struct bdev *file = bs->file, *backing = bs->backing;

    bs->file = bs->backing = NULL;
    child_release(file);
    child_release(backing);
}
    if (bs->implicit && bs->node_name) {
        /* The id is spent, like QEMU's, so nothing to give back. */
    }
    json_decref(bs->full_opts);
    free(bs->auto_backing);
    free(bs->filename);
    free(bs->node_name);
    free(bs->state);
    free(bs);
    return NULL;
}

struct bdev *bdev_open_node(json_t *opts, bool monitor, struct qmp_error *err)
{
    return open_node(opts, monitor, NULL, err);
}

struct bdev *bdev_open_child(struct bdev *parent, json_t *ref, bool backing,
                             struct qmp_error *err)
{
    /* QEMU's bdrv_inherited_options: cache modes and force-share come
     * down; a backing is read-only (and not auto-read-only) by default, an
     * image child takes the parent's. */
    struct inherit inh = {.read_only = backing || parent->read_only,
                          .cache_direct = parent->cache_direct,
                          .cache_no_flush = parent->cache_no_flush,
                          .auto_read_only = !backing && parent->auto_read_only,
                          .force_share = parent->force_share};

    return open_child(ref, &inh, err);
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
    struct plink *ps = parents_of(from, &n);

    for (size_t i = 0; i < n; i++) {
        struct bdev *p = ps[i].node;

        if (ps[i].u) {
            if (ps[i].u->moves) {
                user_move(ps[i].u, to);
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
            p->backing_seq = next_seq();
        } else {
            p->file = to;
            p->file_seq = next_seq();
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
    g.filter_child = bs;
    f = open_node(opts, false, NULL, &lerr);
    g.filter_child = NULL;
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
    perm_refresh(f, NULL); /* a filter passes its parents' needs down */
    bdev_drained_end(d);
    return f;
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
        perm_refresh(child, NULL);
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

static int probe_format(const char *path, const char **fmt,
                        struct qmp_error *err)
{
    unsigned char magic[4] = {0};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n;

    if (fd < 0) {
        qmp_error_setg(err, "Could not open '%s': %s", path, strerror(errno));
        return -errno;
    }
    n = pread(fd, magic, sizeof(magic), 0);
    close(fd);
    *fmt = (n == 4 && memcmp(magic, "QFI\xfb", 4) == 0) ? "qcow2" : "raw";
    return 0;
}

struct bdev *bdev_open_backing_file(struct bdev *parent, const char *name,
                                    const char *format, struct qmp_error *err)
{
    struct qmp_error lerr = QMP_ERROR_INIT;
    struct inherit inh = {.read_only = true};
    const char *pfile = NULL;
    char *path = NULL, *dir = NULL;
    struct bdev *bs = NULL;
    json_t *opts = NULL, *fopts;

    /* Relative to the directory of the image file: QEMU's bdrv_dirname
     * goes down the primary children (through blkdebug) to it. */
    for (struct bdev *c = parent->file; c; c = c->file) {
        pfile = c->filename;
    }
    if (name[0] == '/' || !pfile || strncmp(pfile, "json:", 5) == 0) {
        path = strdup(name);
    } else {
        char *copy = strdup(pfile);

        if (copy) {
            dir = strdup(dirname(copy));
            free(copy);
        }
        if (dir && asprintf(&path, "%s/%s", dir, name) < 0) {
            path = NULL;
        }
    }
    if (!path) {
        qmp_error_setg(err, "Out of memory");
        goto out;
    }
    if (!format && probe_format(path, &format, &lerr) < 0) {
        goto out_err;
    }
    inh.cache_direct = parent->cache_direct;
    inh.cache_no_flush = parent->cache_no_flush;
    inh.force_share = parent->force_share;
    opts = json_object();
    json_object_set_new(opts, "driver", json_string(format));
    fopts = json_object();
    json_object_set_new(fopts, "driver", json_string("file"));
    json_object_set_new(fopts, "filename", json_string(path));
    json_object_set_new(opts, "file", fopts);
    bs = open_child(opts, &inh, &lerr);
    if (bs) {
        /* QEMU remembers the opened backing's name as what the header
         * means: this backing is not an override. */
        free(parent->auto_backing);
        parent->auto_backing = bs->filename ? strdup(bs->filename) : NULL;
    }
out_err:
    if (!bs) {
        qmp_error_setg(err, "Could not open backing file: %s",
                       lerr.desc ? lerr.desc : "unknown error");
    }
out:
    qmp_error_clear(&lerr);
    json_decref(opts);
    free(dir);
    free(path);
    return bs;
}

/* ---- closing ----------------------------------------------------------- */

void bdev_close_all(void)
{
    /* Roots first, so every node closes after everything above it. */
    while (g.nodes) {
        struct bdev *root = NULL;

        for (struct bdev *bs = g.nodes; bs; bs = bs->next) {
            if (bs->parents == 0) {
                root = bs;
                break;
            }
        }
        if (!root) {
            root = g.nodes; /* cannot happen in a tree; be safe */
            root->parents = 0;
        }
        root->refcnt = 1;
        bdev_unref(root);
    }
    while (g.drains) {
        struct drain_waiter *w = g.drains;

        g.drains = w->next;
        free(w);
    }
}

/* ---- requests ---------------------------------------------------------- */

static bool tree_busy(const struct bdev *bs)
{
    if (!bs) {
        return false;
    }
    return bs->in_flight > 0 || tree_busy(bs->file) || tree_busy(bs->backing);
}

bool bdev_tree_busy(const struct bdev *bs)
{
    return tree_busy(bs);
}

static void drain_check(void)
{
    struct drain_waiter **pp = &g.drains;

    while (*pp) {
        struct drain_waiter *w = *pp;

        if (tree_busy(w->bs)) {
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        w->cb(w->opaque, 0);
        free(w);
        /* The callback may have changed the list: start over. */
        pp = &g.drains;
    }
}

static void drain_later(void *arg)
{
    (void)arg;
    drain_check();
}

int bdev_drain(struct bdev *bs, bdev_cb *cb, void *opaque)
{
    struct drain_waiter *w = calloc(1, sizeof(*w));

    if (!w) {
        return -ENOMEM;
    }
    w->bs = bs;
    w->cb = cb;
    w->opaque = opaque;
    w->next = g.drains;
    g.drains = w;
    if (!tree_busy(bs)) {
        bdev_call_later(drain_later, NULL);
    }
    return 0;
}

void bdev_req_complete(struct bdev_req *req, int ret)
{
    struct bdev *bs = req->bs;

    /* The callback may end a job that drops the last reference to this
     * very node (a job's filter): keep it alive until the count is done. */
    bs->refcnt++;
    req->cb(req->opaque, ret);
    free(req);
    bs->in_flight--;
    /* Drop our reference before draining: a drain that ends here may
     * delete the node and counts its references. */
    bdev_unref(bs);
    if (g.drains) {
        drain_check();
    }
}

struct later_done {
    struct bdev_req *req;
    int ret;
};

static void complete_later_cb(void *arg)
{
    struct later_done *l = arg;
    struct bdev_req *req = l->req;
    int ret = l->ret;

    free(l);
    bdev_req_complete(req, ret);
}

void bdev_req_complete_later(struct bdev_req *req, int ret)
{
    struct later_done *l = calloc(1, sizeof(*l));

    if (!l) {
        abort();
    }
    l->req = req;
    l->ret = ret;
    bdev_call_later(complete_later_cb, l);
}

static bool buf_is_zero(const void *buf, uint64_t bytes)
{
    const unsigned char *p = buf;

    /* Cheap rejection first: most data buffers differ in the first byte. */
    if (p[0] || p[bytes - 1]) {
        return false;
    }
    return memcmp(p, p + 1, bytes - 1) == 0;
}

uint64_t bdev_detected_zero_writes(void)
{
    return g.zero_writes_detected;
}

/* A read that crosses the end: the caller's callback for the whole. */
static int submit(struct bdev *bs, enum bdev_op op, uint64_t offset,
                  uint64_t bytes, void *buf, bdev_cb *cb, void *opaque)
{
    struct bdev_req *req;
    int ret;

    if (!bs->drv->submit) {
        return -ENOTSUP;
    }
    if (op != BDEV_OP_FLUSH) {
        int64_t len = bdev_length(bs);

        if (offset > INT64_MAX || bytes > INT64_MAX - offset) {
            return -EINVAL;
        }
        if (op != BDEV_OP_READ && bs->read_only) {
            return -EPERM;
        }
        if (len < 0) {
            return (int)len;
        }
        if (offset + bytes > (uint64_t)len && !bs->drv->can_grow) {
            if (op != BDEV_OP_READ) {
                return -EIO;
            }
            /* Reads past the end see zeroes, as in QEMU. */
            if (offset >= (uint64_t)len) {
                memset(buf, 0, bytes);
                bytes = 0;
            } else {
                memset((char *)buf + ((uint64_t)len - offset), 0,
                       offset + bytes - (uint64_t)len);
                bytes = (uint64_t)len - offset;
            }
        }
    } else if (bs->read_only) {
        /* Flushing a read-only node is a no-op that succeeds. */
    }
    if (op == BDEV_OP_WRITE && bytes && bs->detect_zeroes &&
        strcmp(bs->detect_zeroes, "off") != 0 && buf_is_zero(buf, bytes)) {
        /* detect-zeroes=on|unmap: a buffer of zeroes is written as a
         * write-zeroes request (qcow2 then stores zero clusters, file
         * punches or zeroes the range). We never discard, so unmap acts
         * like on - the data read back is the same. */
        op = BDEV_OP_WRITE_ZEROES;
        buf = NULL;
        g.zero_writes_detected++;
    }
    req = calloc(1, sizeof(*req));
    if (!req) {
        return -ENOMEM;
    }
    req->bs = bs;
    req->op = op;
    req->offset = offset;
    req->bytes = bytes;
    req->buf = buf;
    req->cb = cb;
    req->opaque = opaque;
    bs->in_flight++;
    if (bytes == 0 && op != BDEV_OP_FLUSH) {
        bdev_req_complete_later(req, 0);
        return 0;
    }
    ret = bs->drv->submit(bs, req);
    if (ret < 0) {
        free(req);
        bs->in_flight--;
        if (g.drains && bs->in_flight == 0) {
            bdev_call_later(drain_later, NULL);
        }
    }
    return ret;
}

int bdev_read(struct bdev *bs, uint64_t offset, uint64_t bytes, void *buf,
              bdev_cb *cb, void *opaque)
{
    return submit(bs, BDEV_OP_READ, offset, bytes, buf, cb, opaque);
}

int bdev_write(struct bdev *bs, uint64_t offset, uint64_t bytes,
               const void *buf, bdev_cb *cb, void *opaque)
{
    return submit(bs, BDEV_OP_WRITE, offset, bytes, (void *)buf, cb, opaque);
}

int bdev_write_zeroes(struct bdev *bs, uint64_t offset, uint64_t bytes,
                      bdev_cb *cb, void *opaque)
{
    return submit(bs, BDEV_OP_WRITE_ZEROES, offset, bytes, NULL, cb, opaque);
}

int bdev_flush(struct bdev *bs, bdev_cb *cb, void *opaque)
{
    return submit(bs, BDEV_OP_FLUSH, 0, 0, NULL, cb, opaque);
}

/* ---- block status ------------------------------------------------------ */

struct status_op {
    struct bdev *bs;
    bdev_status_cb *cb;
    void *opaque;
    uint64_t bytes;
};

static void status_done(void *opaque, int ret, unsigned status, uint64_t pnum)
{
    struct status_op *op = opaque;
    struct bdev *bs = op->bs;

    if (ret == 0 && (pnum == 0 || pnum > op->bytes)) {
        pnum = op->bytes; /* a driver bug must not loop a job forever */
    }
    op->cb(op->opaque, ret, status, pnum);
    free(op);
    bs->in_flight--;
    if (g.drains && bs->in_flight == 0) {
        drain_check();
    }
}

static void status_all_data(void *arg)
{
    struct status_op *op = arg;

    status_done(op, 0, BDEV_STATUS_DATA | BDEV_STATUS_ALLOCATED, op->bytes);
}

int bdev_block_status(struct bdev *bs, uint64_t offset, uint64_t bytes,
                      bdev_status_cb *cb, void *opaque)
{
    struct status_op *op;
    int64_t len = bdev_length(bs);
    int ret;

    if (bytes == 0 || len < 0 || offset >= (uint64_t)len) {
        return -EINVAL;
    }
    if (bytes > (uint64_t)len - offset) {
        bytes = (uint64_t)len - offset;
    }
    op = calloc(1, sizeof(*op));
    if (!op) {
        return -ENOMEM;
    }
    op->bs = bs;
    op->cb = cb;
    op->opaque = opaque;
    op->bytes = bytes;
    bs->in_flight++;
    if (!bs->drv->block_status) {
        bdev_call_later(status_all_data, op);
        return 0;
    }
    ret = bs->drv->block_status(bs, offset, bytes, status_done, op);
    if (ret < 0) {
        free(op);
        bs->in_flight--;
    }
    return ret;
}

/* is_allocated_above: one layer at a time, top down. */
struct above_op {
    struct bdev *cur, *bottom;
    uint64_t offset, n;
    bool below_first; /* a layer was asked already */
    bdev_status_cb *cb;
    void *opaque;
};

static void above_step(struct above_op *op);

static void above_finish(struct above_op *op, int ret, unsigned st,
                         uint64_t pnum)
{
    op->cb(op->opaque, ret, st, pnum);
    free(op);
}

static void above_layer_done(void *opaque, int ret, unsigned status,
                             uint64_t pnum)
{
    struct above_op *op = opaque;

    if (ret < 0) {
        above_finish(op, ret, 0, 0);
        return;
    }
    if (status & BDEV_STATUS_ALLOCATED) {
        above_finish(op, 0, BDEV_STATUS_ALLOCATED, pnum < op->n ? pnum : op->n);
        return;
    }
    if (pnum < op->n) {
        op->n = pnum;
    }
    if (op->cur == op->bottom) {
        above_finish(op, 0, 0, op->n);
        return;
    }
    op->cur = op->cur->backing;
    op->below_first = true;
    above_step(op);
}

/* Past the end of a layer, as QEMU 7.2's bdrv_is_allocated_above: past the
 * first one's end nothing is allocated and the answer covers nothing
 * (pnum 0: the rest of the disk, for a stream); past a deeper one's end,
 * the zeroes read there count as allocated in it. */
static void above_past_end(void *arg)
{
    struct above_op *op = arg;

    if (op->below_first) {
        above_finish(op, 0, BDEV_STATUS_ALLOCATED, op->n);
    } else {
        above_finish(op, 0, 0, 0);
    }
}

static void above_step(struct above_op *op)
{
    int64_t len;
    uint64_t n = op->n;
    int ret;

    /* Filters hold nothing of their own: look through them. */
    while (op->cur && op->cur != op->bottom && op->cur->drv->is_filter &&
           op->cur->file) {
        op->cur = op->cur->file;
    }
    if (!op->cur) {
        above_finish(op, 0, 0, op->n);
        return;
    }
    len = bdev_length(op->cur);
    if (len < 0 || op->offset >= (uint64_t)len) {
        /* Past the end of a shorter layer. Through the loop, so the
         * answer never comes before the call returns. */
        bdev_call_later(above_past_end, op);
        return;
    }
    if (n > (uint64_t)len - op->offset) {
        n = (uint64_t)len - op->offset;
    }
    ret = bdev_block_status(op->cur, op->offset, n, above_layer_done, op);
    if (ret < 0) {
        above_finish(op, ret, 0, 0);
    }
}

int bdev_is_allocated_above(struct bdev *top, struct bdev *bottom,
                            uint64_t offset, uint64_t bytes, bdev_status_cb *cb,
                            void *opaque)
{
    struct above_op *op;

    if (bytes == 0) {
        return -EINVAL;
    }
    op = calloc(1, sizeof(*op));
    if (!op) {
        return -ENOMEM;
    }
    op->cur = top;
    op->bottom = bottom;
    op->offset = offset;
    op->n = bytes;
    op->cb = cb;
    op->opaque = opaque;
    above_step(op);
    return 0;
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
        section_lift_below(op->d, op->bs, true, old);
    }
    if (old != op->new_backing) {
        if (op->new_backing) {
            bdev_ref(op->new_backing);
            op->new_backing->parents++;
        }
        op->bs->backing = op->new_backing;
        op->bs->backing_seq = next_seq();
        child_release(old);
    }
    /* The header now names what it was told: that is no override (QEMU
     * sets auto_backing_file with the header). */
    free(op->bs->auto_backing);
    op->bs->auto_backing = op->file ? strdup(op->file) : NULL;
    if (old != op->new_backing) {
        if (op->new_backing) {
            perm_refresh(op->new_backing, NULL);
        }
    }
    if (relink) {
        section_apply_below(op->d, op->bs, true, op->bs->backing);
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
        ret = perm_refresh(bs->file, err);
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

    bdev_drained_end(d);
    return ret;
}

/* ---- buffers and sync helpers ------------------------------------------ */

/* The I/O engine knows what the device wants of a buffer (see aio.h). */
void *bdev_buf_alloc(size_t bytes)
{
    return aio_buf_alloc(bytes);
}

void bdev_buf_free(void *buf)
{
    aio_buf_free(buf);
}

int bdev_child_pread_sync(struct bdev *child, uint64_t off, uint64_t n,
                          void *buf)
{
    if (!child->drv->pread_sync) {
        return -ENOTSUP;
    }
    return child->drv->pread_sync(child, off, n, buf);
}

int bdev_child_pwrite_sync(struct bdev *child, uint64_t off, uint64_t n,
                           const void *buf)
{
    if (child->read_only) {
        return -EPERM;
    }
    if (!child->drv->pwrite_sync) {
        return -ENOTSUP;
    }
    return child->drv->pwrite_sync(child, off, n, buf);
}

int bdev_child_flush_sync(struct bdev *child)
{
    if (child->cache_no_flush || !child->drv->flush_sync) {
        return 0;
    }
    return child->drv->flush_sync(child);
}

/* ---- blkdebug events ----------------------------------------------------- */

void bdev_debug_event(struct bdev *child, enum bdev_debug_event ev)
{
    /* Events go to the first blkdebug at or below the child. */
    for (struct bdev *bs = child; bs; bs = bs->file) {
        if (bs->drv->debug_event) {
            bs->drv->debug_event(bs, ev);
            return;
        }
    }
}
