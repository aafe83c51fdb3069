/* Image creation (blockdev-create's drivers): a `file` on the host file
 * system, a qcow2 layout on an existing node.
 *
 * Both are asynchronous and never block the loop: the file's open, lock,
 * truncate and preallocation run on libuv's thread pool; the qcow2 metadata
 * is written through the node with bdev_write (the aio engine), a few
 * clusters in flight. Each creation calls its callback exactly once, later,
 * from the loop, with 0 or -errno and (on failure) the message QEMU 7.2
 * gives for that failure.
 */
#ifndef BACKENDS_IMAGE_CREATE_H
#define BACKENDS_IMAGE_CREATE_H

#include <stdbool.h>
#include <stdint.h>

#include "backends/bdev.h"

/* QEMU's PreallocMode, in its order. */
enum bdev_prealloc {
    BDEV_PREALLOC_OFF,
    BDEV_PREALLOC_METADATA,
    BDEV_PREALLOC_FALLOC,
    BDEV_PREALLOC_FULL,
};
/* "off", "metadata", "falloc", "full"; -1 for anything else. */
int bdev_prealloc_parse(const char *name);
const char *bdev_prealloc_name(enum bdev_prealloc p);

/* Gives the node `size` bytes (bytes past the old end: a hole, allocated,
 * or written zeroes as `prealloc` says; cutting takes off only). Drivers
 * without a resize say -ENOTSUP. Returns 0 (cb runs later) or -errno. */
int bdev_truncate(struct bdev *bs, uint64_t size, enum bdev_prealloc prealloc,
                  bdev_cb *cb, void *opaque);

/* QEMU's bdrv_open_blockdev_ref: a node name (looked up: "Cannot find
 * device='x' nor node-name='x'") or BlockdevOptions (a new implicit node).
 * Returns the node with a reference for the caller, or NULL. */
struct bdev *bdev_open_blockdev_ref(json_t *ref, struct qmp_error *err);

/* A node opened for a creation only (a `file` given as options): takes
 * write and resize on it as QEMU's BlockBackend would, so a file another
 * node holds is refused ("Failed to get \"write\" lock"). */
int bdev_take_write(struct bdev *bs, struct qmp_error *err);

/* ret: 0 or -errno; msg: the failure's text (NULL on success), valid only
 * during the call. */
typedef void bdev_create_cb(void *opaque, int ret, const char *msg);

struct file_create_opts {
    const char *filename;
    uint64_t size;
    enum bdev_prealloc prealloc; /* metadata is refused */
    bool nocow;
};

/* Creates (or truncates) the file and gives it `size` bytes, preallocated
 * as asked. Takes the write and resize lock bytes as QEMU does, so a file
 * another node (or process) has open for writing is refused ("Failed to
 * get \"write\" lock"). Two steps on the thread pool: the file is created,
 * locked and emptied - then opened(opaque) runs, unless that failed - then
 * it gets its size. Returns 0 (cb runs later) or -errno. */
int file_create(const struct file_create_opts *o, void (*opened)(void *opaque),
                bdev_create_cb *cb, void *opaque);

struct qcow2_create_opts {
    uint64_t size;
    unsigned version;         /* 2 or 3 */
    const char *backing_file; /* NULL: none */
    const char *backing_fmt;  /* NULL: no backing-format extension */
    uint64_t cluster_size;
    enum bdev_prealloc prealloc;
    bool lazy_refcounts;
    uint64_t refcount_bits;
};

/* QEMU's checks of the options, in its order, with its texts: 0, or -EINVAL
 * and the message in errbuf. */
int qcow2_create_check(const struct qcow2_create_opts *o, char *errbuf,
                       size_t errlen);

/* Where everything of a new image goes (pure arithmetic, for tests too). */
struct qcow2_create_layout {
    unsigned cluster_bits;
    uint64_t l1_size;     /* entries */
    uint64_t l1_offset;   /* 0 when l1_size is 0 */
    uint64_t rt_clusters; /* refcount table */
    uint64_t rb_count;    /* refcount blocks, right after the table */
    uint64_t l2_count;    /* preallocated L2 tables (0 for off) */
    uint64_t data_count;  /* preallocated data clusters */
    uint64_t total;       /* clusters in use: each has refcount 1 */
    uint64_t file_end;    /* bytes the image file ends up with */
    uint64_t l2_entries;  /* per table */
    uint64_t rb_entries;  /* per refcount block */
};
/* Computes the layout of valid options: 0, or -EFBIG with QEMU's text when
 * the L1 table would pass its limit. */
int qcow2_create_plan(const struct qcow2_create_opts *o,
                      struct qcow2_create_layout *l, char *errbuf,
                      size_t errlen);
/* Fills cluster 0 (cluster_size bytes): header, extensions, backing name. */
void qcow2_create_header(const struct qcow2_create_opts *o,
                         const struct qcow2_create_layout *l, uint8_t *out);

/* Formats `file` (any writable node) as a qcow2 image with these checked
 * options: cluster 0, refcount table and blocks, L1 (and for preallocation
 * the L2 tables and data clusters), then a flush. The node must not be
 * read-only ("Block node is read-only"). Takes a reference on `file` for
 * the duration. Returns 0 (cb runs later) or -errno with errbuf set. */
int qcow2_create(struct bdev *file, const struct qcow2_create_opts *o,
                 bdev_create_cb *cb, void *opaque, char *errbuf, size_t errlen);

#endif
