/* blockdev-snapshot {node, overlay}: QEMU 7.2's external snapshot with an
 * existing overlay (blockdev.c external_snapshot_action, bdrv_append).
 *
 * The overlay gets `node` as its backing, every parent of `node` (its
 * users: exports, jobs' block backends that move with it, parent nodes'
 * links) now points at the overlay, and `node` is reopened read-only. The
 * overlay's header is not written: it must already name the right backing
 * file (blockdev-create backing-file). Checks and texts as qsd's, in its
 * order: the node, whether it is busy (a job, a backing of another node),
 * then the overlay (a filter, one that has a backing already, one whose
 * format has none).
 */
#include "backends/bdev_core.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/qmp.h"

static const char snapshot_schema[] =
    "[{'command': 'blockdev-snapshot',"
    " 'data': {'node': 'str', 'overlay': 'str'}}]";

static struct bdev *lookup(const char *name, struct qmp_error *err)
{
    struct bdev *bs = bdev_find(name);

    if (!bs) {
        qmp_error_setg(err, "Cannot find device='%s' nor node-name='%s'", name,
                       name);
    }
    return bs;
}

/* QEMU's op blockers for an external snapshot of `bs`. */
static int check_busy(struct bdev *bs, struct qmp_error *err)
{
    if (bdev_claimed_by(bs)) {
        return bdev_claim(bs, "snapshot", err); /* fails with its text */
    }
    for (struct bdev *p = bdev_all_nodes(); p; p = p->next) {
        if (p->backing == bs) {
            qmp_error_setg(err,
                           "Node '%s' is busy: node is used as backing hd "
                           "of '%s'",
                           bdev_node_name(bs), bdev_node_name(p));
            return -EBUSY;
        }
    }
    return 0;
}

/* overlay's backing := bs; bs's parents go to overlay (but the new link). */
static void append(struct bdev *overlay, struct bdev *bs)
{
    struct bdev_drained *d = bdev_drained_begin(bs, false);
    size_t n;
    struct plink *ps = bdev_parents_of(bs, &n);

    for (size_t i = 0; i < n; i++) {
        struct bdev *p = ps[i].node;

        if (ps[i].u) {
            if (ps[i].u->moves) {
                bdev_user_move(ps[i].u, overlay);
            }
            continue;
        }
        if (p == overlay) {
            continue;
        }
        bdev_ref(overlay);
        overlay->parents++;
        if (ps[i].backing) {
            p->backing = overlay;
            p->backing_seq = bdev_next_link_seq();
        } else {
            p->file = overlay;
            p->file_seq = bdev_next_link_seq();
        }
        bs->parents--;
        bdev_unref(bs);
    }
    free(ps);
    bdev_ref(bs);
    bs->parents++;
    overlay->backing = bs;
    overlay->backing_seq = bdev_next_link_seq();
    bdev_perm_refresh(overlay, NULL);
    bdev_drained_end(d);
}

/* Another node's image (file) child: qsd says the overlay is in use (one
 * that is a backing may be appended). */
static bool used_as_file(const struct bdev *bs)
{
    for (struct bdev *p = bdev_all_nodes(); p; p = p->next) {
        if (p->file == bs) {
            return true;
        }
    }
    return false;
}

int bdev_snapshot(struct bdev *bs, struct bdev *overlay, struct qmp_error *err)
{
    if (check_busy(bs, err) < 0) {
        return -EBUSY;
    }
    if (used_as_file(overlay) || overlay->job_io_node ||
        bdev_claimed_by(overlay)) {
        qmp_error_setg(err, "The overlay is already in use");
        return -EBUSY;
    }
    if (overlay->drv->is_filter) {
        qmp_error_setg(err, "Filters cannot be used as overlays");
        return -EINVAL;
    }
    if (overlay->backing) {
        qmp_error_setg(err, "The overlay already has a backing image");
        return -EINVAL;
    }
    if (!overlay->drv->has_backing) {
        qmp_error_setg(err, "The overlay does not support backing images");
        return -EINVAL;
    }
    for (struct bdev *n = bs; n; n = bdev_chain_next(n)) {
        if (n == overlay) {
            qmp_error_setg(err,
                           "Making '%s' a backing child of '%s' would create "
                           "a cycle",
                           bdev_node_name(bs), bdev_node_name(overlay));
            return -EINVAL;
        }
    }
    append(overlay, bs);
    /* As QEMU's external_snapshot_commit: the old top goes read-only
     * (best effort: a node that cannot is left as it is). */
    if (!bs->read_only) {
        bdev_reopen(bs, false, NULL);
    }
    return 0;
}

struct snap_reply {
    struct qmp_deferred *d;
};

static void reply_idle(void *opaque)
{
    struct snap_reply *r = opaque;

    qmp_deferred_reply(r->d, json_object(), NULL);
    free(r);
}

static json_t *qmp_blockdev_snapshot(json_t *args, struct qmp_session *s,
                                     struct qmp_error *err)
{
    const char *node = json_string_value(json_object_get(args, "node"));
    const char *overlay = json_string_value(json_object_get(args, "overlay"));
    struct bdev *bs, *ov;
    struct snap_reply *r;

    bs = lookup(node, err);
    if (!bs) {
        return NULL;
    }
    if (check_busy(bs, err) < 0) {
        return NULL;
    }
    ov = lookup(overlay, err);
    if (!ov || bdev_snapshot(bs, ov, err) < 0) {
        return NULL;
    }
    /* qsd answers once the drained section's jobs resumed. */
    if (!s || bdev_drained_idle()) {
        return json_object();
    }
    r = calloc(1, sizeof(*r));
    if (!r) {
        abort();
    }
    r->d = qmp_session_defer(s);
    bdev_when_drained_idle(reply_idle, r);
    return NULL;
}

void bdev_snapshot_qmp_init(void)
{
    qmp_schema_add(snapshot_schema);
    qmp_command_register("blockdev-snapshot", qmp_blockdev_snapshot);
}
