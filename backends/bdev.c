/* Nodes: the list of every node, references, claims, the accessors of
 * bdev.h, deferred calls, start-up and shutdown of the block layer. See
 * bdev_core.h for where the rest of the layer lives.
 *
 * Nodes live on one list, newest first (query-named-block-nodes' order).
 */
#include "backends/bdev_core.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backends/aio.h"

struct later {
    void (*fn)(void *arg);
    void *arg;
    struct later *next;
};

static struct {
    uv_loop_t *loop;
    struct bdev *nodes;
    uv_idle_t idle;
    bool idle_init;
    struct later *later_head, *later_tail;
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
        if (!bs->opening && strcmp(bs->node_name, node_name) == 0) {
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

/* ---- references -------------------------------------------------------- */

struct bdev *bdev_all_nodes(void)
{
    return g.nodes;
}

void bdev_list_add(struct bdev *bs)
{
    bs->next = g.nodes;
    g.nodes = bs;
}

void bdev_list_remove(struct bdev *bs)
{
    for (struct bdev **pp = &g.nodes; *pp; pp = &(*pp)->next) {
        if (*pp == bs) {
            *pp = bs->next;
            return;
        }
    }
}

void bdev_users_forget_node(struct bdev *bs);

void bdev_child_release(struct bdev *child)
{
    if (!child) {
        return;
    }
    child->parents--;
    /* Fewer parents can only lift locks: failures here are not fatal. */
    bdev_perm_refresh(child, NULL);
    bdev_unref(child);
}

static void node_free(struct bdev *bs)
{
    struct bdev *file = bs->file, *backing = bs->backing;

    if (bs->drv->close) {
        bs->drv->close(bs);
    }
    bdev_list_remove(bs);
    bdev_users_forget_node(bs);
    bs->file = bs->backing = NULL;
    bdev_child_release(file);
    bdev_child_release(backing);
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

/* ---- closing ----------------------------------------------------------- */

void bdev_close_all(void)
{
    bdev_open_cancel_all();
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
    bdev_io_forget_drains();
}
