/* Users of nodes (jobs' links and BlockBackend-like users) and drained
 * sections: QEMU 7.2's drain as seen from outside. See bdev.h. */
#include "backends/bdev_core.h"

#include <stdlib.h>

static uint64_t link_seq;             /* see bdev.file_seq */
static struct bdev_drained *sections; /* in processing order */

/* QEMU 7.2's drain, as seen from outside: a section over a node quiesces
 * the node and, through their links, every node above it (a subtree section
 * also every node below it, each with what is above); every job linked to a
 * quiesced node is asked to pause, once per path. The section then waits
 * until those jobs are quiet (parked, or ended), makes its change and lifts
 * the pauses. A job that was sleeping parks at once; one with a request in
 * flight parks when it completed. The walk order is QEMU's: a node's parents
 * newest link first, depth first, a node's children newest first. */

uint64_t bdev_next_link_seq(void)
{
    return ++link_seq;
}

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
struct plink *bdev_parents_of(struct bdev *bs, size_t *n)
{
    struct plink *v = NULL;
    size_t cap = 0;

    *n = 0;
    for (struct bdev *p = bdev_all_nodes(); p; p = p->next) {
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

    ps = bdev_parents_of(bs, &n);
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
    u->seq = bdev_next_link_seq();
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
    for (struct bdev_drained *d = sections; d; d = d->next) {
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
void bdev_user_move(struct bdev_user *u, struct bdev *to)
{
    user_unlink(u);
    u->bs = to;
    u->seq = bdev_next_link_seq();
    u->next = to->users;
    to->users = u;
}

void bdev_users_forget_node(struct bdev *bs)
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
void bdev_section_lift_below(struct bdev_drained *d, struct bdev *parent,
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

void bdev_section_apply_below(struct bdev_drained *d, struct bdev *parent,
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
        while ((d = sections)) {
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
            sections = d->next;
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
    if (sections && !kick_queued) {
        kick_queued = true;
        bdev_call_later(kick_cb, NULL);
    }
}

static void section_queue(struct bdev_drained *d)
{
    struct bdev_drained **pp = &sections;

    if (sections && sections->begun && !sections->ended) {
        d->next = sections; /* nested in the open one */
        sections = d;
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
    if (sections == d && d->begun && section_quiet(d, false)) {
        /* The pauses go back now, before the owner goes on (also when
         * the owner is d's own callback, inside drain_run). */
        section_take_back(d);
        sections = d->next;
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
    return !sections;
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

    if (!sections) {
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
        struct bdev_drained **pp = &sections;

        while (*pp) {
            pp = &(*pp)->next;
        }
        *pp = d;
    }
    bdev_drained_wait(d, idle_reached, iw);
}
