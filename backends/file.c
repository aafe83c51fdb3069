/* The `file` protocol driver: regular files and block devices.
 *
 * cache.direct: we report what the user asked (false unless given, as
 * QEMU does), but data requests use O_DIRECT wherever the file system
 * allows it, whatever was asked. That is invisible to clients: reads see
 * every completed write (the kernel keeps direct and buffered I/O of the
 * same file coherent), flush still ends in fdatasync (cache.writeback is
 * always true), unaligned requests take the buffered descriptor, and other
 * processes (qemu-img, qemu-io) see the same bytes either way. What it
 * changes is only that image data does not fill the host's page cache and
 * that aligned I/O runs on libaio. cache.direct=on where O_DIRECT is
 * refused (tmpfs) fails the open, as in QEMU; unspecified or off falls
 * back to buffered I/O on the thread pool.
 *
 * aio: threads, native and io_uring are accepted; all three are served by
 * the same engine (libaio for aligned O_DIRECT requests, the thread pool
 * for the rest). aio=native without cache.direct=on is refused as in QEMU.
 *
 * Two descriptors per node: `fd` is opened with O_DIRECT when the file
 * system accepts it and carries aligned requests to libaio (and the OFD
 * locks); `fd_buf` is a buffered descriptor for everything else (unaligned
 * requests, synchronous metadata I/O), run on the thread pool. The kernel
 * keeps the two coherent: O_DIRECT writes invalidate the page cache, and
 * O_DIRECT reads write back dirty pages of the range first.
 *
 * On ext4 an O_DIRECT write that extends the file completes inside
 * io_submit (the loop would block ~1 ms per write), so a growing file is
 * preallocated ahead of the writes, in large steps, on the thread pool; the
 * unused tail is cut off again at close.
 */
#include "backends/bdev_int.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backends/aio.h"
#include "backends/image_create.h"

#define GROW_STEP   (32ull << 20)
#define GROW_ROUND  (1ull << 20)
#define LOCK_PERM   100
#define LOCK_SHARED 200
#define PERM_BITS   4

struct file_state {
    int fd;
    int fd_buf;
    bool direct;
    bool is_blk;
    bool locking;
    uint32_t align;
    uint64_t size;      /* logical length */
    uint64_t alloc_end; /* what the file really holds (>= size) */
    bool prealloc_ok;
    bool growing;
    uint64_t grow_target;
    struct bdev_req *grow_head, *grow_tail; /* linked through drv_priv */
    unsigned locked_perm;                   /* lock bytes 100 + bit held */
    unsigned locked_unshared;               /* lock bytes 200 + bit held */
    dev_t dev;                              /* the file, to find twins */
    ino_t ino;
};

/* Other file nodes open on the same regular file ("twins"): each keeps its
 * own logical length, a preallocated tail of one must not show as length
 * in another. Calls fn on each. */
static void for_twins(struct bdev *bs, void (*fn)(struct file_state *me,
                                                  struct file_state *twin))
{
    struct file_state *st = bs->state;

    if (st->is_blk) {
        return;
    }
    for (struct bdev *o = bdev_all_nodes(); o; o = o->next) {
        struct file_state *t = o->state;

        if (o != bs && o->drv == &bdev_drv_file && t && t->fd_buf >= 0 &&
            !t->is_blk && t->dev == st->dev && t->ino == st->ino) {
            fn(st, t);
        }
    }
}

/* The longest logical length among twins, into twin_len (set by the
 * caller: 0, or the node's own length). */
static uint64_t twin_len;

static void twin_max(struct file_state *me, struct file_state *t)
{
    (void)me;
    if (t->size > twin_len) {
        twin_len = t->size;
    }
}

/* A twin closing after writing: the others see the file's length now, and
 * hold no tail past it. */
static void twin_closed(struct file_state *me, struct file_state *t)
{
    if (t->size < me->size) {
        t->size = me->size;
    }
    if (t->alloc_end > twin_len) {
        t->alloc_end = twin_len > t->size ? twin_len : t->size;
    }
    if (t->alloc_end < t->size) {
        t->alloc_end = t->size;
    }
}

static const char *const lock_names[PERM_BITS] = {"consistent read", "write",
                                                  "write unchanged", "resize"};

/* ---- locks ------------------------------------------------------------- */

static int lock_byte(int fd, int byte, short type)
{
    struct flock fl = {
        .l_type = type, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};

    return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

/* true when some other open file description holds the byte */
static bool byte_taken(int fd, int byte)
{
    struct flock fl = {
        .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};

    if (fcntl(fd, F_OFD_GETLK, &fl) < 0) {
        return false;
    }
    return fl.l_type != F_UNLCK;
}

static int set_lock_bytes(int fd, unsigned perm, unsigned unshared)
{
    int ret;

    for (int i = 0; i < PERM_BITS; i++) {
        ret = lock_byte(fd, LOCK_PERM + i,
                        (perm & (1u << i)) ? F_RDLCK : F_UNLCK);
        if (ret < 0) {
            return ret;
        }
        ret = lock_byte(fd, LOCK_SHARED + i,
                        (unshared & (1u << i)) ? F_RDLCK : F_UNLCK);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

static int lock_to(struct bdev *bs, int fd, unsigned perm, unsigned unshared,
                   struct qmp_error *err)
{
    struct file_state *st = bs->state;
    int ret;

    if (!st->locking) {
        return 0;
    }
    ret = set_lock_bytes(fd, perm, unshared);
    if (ret < 0) {
        qmp_error_setg(err, "Failed to lock byte %d", LOCK_PERM);
        goto undo;
    }
    /* Like QEMU: hold ours first, then look for anyone who objects. */
    for (int i = 0; i < PERM_BITS; i++) {
        if ((perm & (1u << i)) && byte_taken(fd, LOCK_SHARED + i)) {
            qmp_error_setg(err, "Failed to get \"%s\" lock", lock_names[i]);
            ret = -EAGAIN;
            goto undo;
        }
    }
    for (int i = 0; i < PERM_BITS; i++) {
        if ((unshared & (1u << i)) && byte_taken(fd, LOCK_PERM + i)) {
            qmp_error_setg(err, "Failed to get shared \"%s\" lock",
                           lock_names[i]);
            ret = -EAGAIN;
            goto undo;
        }
    }
    st->locked_perm = perm;
    st->locked_unshared = unshared;
    return 0;

undo:
    set_lock_bytes(fd, st->locked_perm, st->locked_unshared);
    return ret;
}

static int file_apply_perm(struct bdev *bs, struct qmp_error *err)
{
    struct file_state *st = bs->state;

    return lock_to(bs, st->fd, bs->perm, ~bs->shared_perm & BDEV_PERM_ALL, err);
}

/* ---- open / close ------------------------------------------------------ */

static int probe_align(int fd, bool is_blk)
{
    void *buf;
    int align = 4096;

    if (is_blk) {
        int ssz = 0;

        if (ioctl(fd, BLKSSZGET, &ssz) == 0 && ssz >= 512 && ssz <= 4096) {
            return ssz;
        }
        return 4096;
    }
    if (posix_memalign(&buf, 4096, 4096) != 0) {
        return 4096;
    }
    /* A 512-byte direct read succeeds only where 512 is enough; an empty
     * file proves nothing, so it keeps the safe 4096. */
    if (pread(fd, buf, 512, 0) == 512) {
        align = 512;
    }
    free(buf);
    return align;
}

static int open_fds(struct bdev *bs, const char *path, bool rw, int *fd,
                    int *fd_buf, bool *direct, struct qmp_error *err)
{
    int flags = (rw ? O_RDWR : O_RDONLY) | O_CLOEXEC;

    *fd_buf = open(path, flags);
    if (*fd_buf < 0) {
        int e = errno;

        qmp_error_setg(err, "Could not open '%s': %s", path, strerror(e));
        return -e;
    }
    *fd = bs->params.file_no_direct ? -1 : open(path, flags | O_DIRECT);
    *direct = *fd >= 0;
    if (*fd < 0 && bs->cache_direct && !bs->params.file_no_direct) {
        /* The user asked for cache.direct=on: like QEMU, a file system
         * without O_DIRECT is an error then, not a silent fallback. */
        int e = errno;

        close(*fd_buf);
        *fd_buf = -1;
        qmp_error_setg(err, "Could not open '%s': %s", path, strerror(e));
        return -e;
    }
    if (*fd < 0) {
        /* tmpfs and friends refuse O_DIRECT with EINVAL: buffered I/O on
         * the thread pool then. */
        *fd = *fd_buf;
    }
    return 0;
}

static void close_fds(int fd, int fd_buf)
{
    if (fd >= 0 && fd != fd_buf) {
        close(fd);
    }
    if (fd_buf >= 0) {
        close(fd_buf);
    }
}

static int file_open(struct bdev *bs, json_t *opts, struct qmp_error *err)
{
    struct file_state *st = bs->state;
    const char *path = json_string_value(json_object_get(opts, "filename"));
    const char *aio = json_string_value(json_object_get(opts, "aio"));
    const char *locking = json_string_value(json_object_get(opts, "locking"));
    struct stat sb;
    int ret;

    st->fd = st->fd_buf = -1;
    if (!path) {
        qmp_error_setg(err, "Parameter 'filename' is missing");
        return -EINVAL;
    }
    if (json_is_string(json_object_get(opts, "pr-manager"))) {
        /* There are no objects to name (no object-add). */
        qmp_error_setg(err, "No persistent reservation manager with id '%s'",
                       json_string_value(json_object_get(opts, "pr-manager")));
        return -EINVAL;
    }
    if (aio && strcmp(aio, "native") == 0 && !bs->cache_direct) {
        qmp_error_setg(err, "aio=native was specified, but it requires "
                            "cache.direct=on, which was not specified.");
        return -EINVAL;
    }
    st->locking = !(locking && strcmp(locking, "off") == 0);

    ret = open_fds(bs, path, !bs->read_only, &st->fd, &st->fd_buf, &st->direct,
                   err);
    if (ret < 0 && bs->auto_read_only && !bs->read_only &&
        (ret == -EACCES || ret == -EROFS || ret == -EPERM)) {
        qmp_error_clear(err);
        bs->read_only = true;
        ret = open_fds(bs, path, false, &st->fd, &st->fd_buf, &st->direct, err);
    }
    if (ret < 0) {
        return ret;
    }
    if (fstat(st->fd_buf, &sb) < 0) {
        ret = -errno;
        qmp_error_setg(err, "Could not open '%s': %s", path, strerror(-ret));
        goto fail;
    }
    if (S_ISDIR(sb.st_mode)) {
        ret = -EISDIR;
        qmp_error_setg(err, "Could not open '%s': %s", path, strerror(EISDIR));
        goto fail;
    }
    st->is_blk = S_ISBLK(sb.st_mode);
    if (st->is_blk) {
        uint64_t bytes = 0;

        if (ioctl(st->fd_buf, BLKGETSIZE64, &bytes) < 0) {
            off_t end = lseek(st->fd_buf, 0, SEEK_END);

            bytes = end < 0 ? 0 : (uint64_t)end;
        }
        st->size = bytes;
    } else {
        st->size = (uint64_t)sb.st_size;
    }
    st->alloc_end = st->size;
    st->prealloc_ok = !st->is_blk;
    st->dev = sb.st_dev;
    st->ino = sb.st_ino;
    /* Open already here: its data ends where its length says, what lies
     * past it is its preallocated tail. */
    twin_len = 0;
    for_twins(bs, twin_max);
    if (twin_len && twin_len < st->size) {
        st->size = twin_len;
    }
    st->align = st->direct ? (uint32_t)probe_align(st->fd, st->is_blk) : 1;
    bs->mem_align = st->direct ? st->align : 1;

    ret = file_apply_perm(bs, err);
    if (ret < 0) {
        goto fail;
    }
    bs->filename = strdup(path);
    bs->full_opts = json_pack("{s:s, s:s}", "driver", "file", "filename", path);
    return 0;

fail:
    close_fds(st->fd, st->fd_buf);
    st->fd = st->fd_buf = -1;
    return ret;
}

static void file_close(struct bdev *bs)
{
    struct file_state *st = bs->state;

    if (st->fd_buf < 0) {
        return;
    }
    twin_len = st->size;
    for_twins(bs, twin_max);
    if (!bs->read_only) {
        /* Give back what preallocation took beyond the data (its twins'
         * too). */
        if (!st->is_blk && st->alloc_end > twin_len) {
            if (ftruncate(st->fd_buf, (off_t)twin_len) < 0) {
                /* The image stays valid with a longer tail. */
            }
        }
        if (!bs->cache_no_flush) {
            fdatasync(st->fd_buf);
        }
    }
    if (!bs->read_only) {
        for_twins(bs, twin_closed);
    }
    close_fds(st->fd, st->fd_buf);
    st->fd = st->fd_buf = -1;
}

/* Like QEMU's, which asks the file each time: a twin's writes show. */
static int64_t file_length(struct bdev *bs)
{
    struct file_state *st = bs->state;

    twin_len = st->size;
    for_twins(bs, twin_max);
    return (int64_t)twin_len;
}

/* What the file takes on disk, as QEMU reports it (allocated blocks), less
 * the preallocated tail past the data: that tail is our implementation
 * detail, cut off again at close, and must not show up as image size. The
 * tail is whole allocated blocks from the first block boundary past `size`
 * up to `alloc_end` (fallocate mode 0 allocates every block of its range,
 * and nothing but preallocation writes past `size`). */
static int64_t file_allocated_size(struct bdev *bs)
{
    struct file_state *st = bs->state;
    struct stat sb;
    uint64_t bytes, blk, lo, hi;

    if (fstat(st->fd_buf, &sb) < 0) {
        return -1;
    }
    bytes = (uint64_t)sb.st_blocks * 512;
    blk = sb.st_blksize > 0 ? (uint64_t)sb.st_blksize : 4096;
    lo = (st->size + blk - 1) / blk * blk;
    hi = st->alloc_end / blk * blk;
    if (!st->is_blk && hi > lo) {
        bytes = bytes > hi - lo ? bytes - (hi - lo) : 0;
    }
    return (int64_t)bytes;
}

/* ---- asynchronous requests --------------------------------------------- */

static int file_rw(struct bdev *bs, struct bdev_req *req);

static void rw_done(void *opaque, ssize_t ret)
{
    struct bdev_req *req = opaque;
    struct file_state *st = req->bs->state;

    if (ret >= 0 && req->op == BDEV_OP_READ && (uint64_t)ret < req->bytes) {
        /* Past the end of the file reads zeroes. */
        memset((char *)req->buf + ret, 0, req->bytes - (uint64_t)ret);
        ret = (ssize_t)req->bytes;
    }
    if (ret >= 0 && req->op == BDEV_OP_WRITE) {
        uint64_t end = req->offset + req->bytes;

        if (end > st->alloc_end) {
            st->alloc_end = end;
        }
        ret = (uint64_t)ret == req->bytes ? 0 : -EIO;
    }
    bdev_req_complete(req, ret < 0 ? (int)ret : 0);
}

static void grow_done(void *opaque, ssize_t ret)
{
    struct bdev *bs = opaque;
    struct file_state *st = bs->state;
    struct bdev_req *req = st->grow_head;

    st->growing = false;
    if (ret < 0) {
        /* No fallocate here: extending writes go to the pool instead. */
        st->prealloc_ok = false;
    } else if (st->grow_target > st->alloc_end) {
        st->alloc_end = st->grow_target;
    }
    st->grow_head = st->grow_tail = NULL;
    while (req) {
        struct bdev_req *next = req->drv_priv;
        int r;

        req->drv_priv = NULL;
        r = file_rw(bs, req);
        if (r < 0) {
            bdev_req_complete(req, r);
        }
        req = next;
    }
}

static int start_grow(struct bdev *bs, uint64_t need)
{
    struct file_state *st = bs->state;
    uint64_t target = (need + GROW_ROUND - 1) / GROW_ROUND * GROW_ROUND;
    uint64_t step =
        st->alloc_end / 4 > GROW_STEP ? st->alloc_end / 4 : GROW_STEP;
    int ret;

    target += step;
    st->grow_target = target;
    ret = aio_submit(st->fd_buf, false, AIO_OP_FALLOCATE, NULL,
                     target - st->alloc_end, st->alloc_end, grow_done, bs);
    if (ret == 0) {
        st->growing = true;
    }
    return ret;
}

static int file_rw(struct bdev *bs, struct bdev_req *req)
{
    struct file_state *st = bs->state;
    uint64_t end = req->offset + req->bytes;
    bool aligned = st->direct && req->offset % st->align == 0 &&
                   req->bytes % st->align == 0 &&
                   (uintptr_t)req->buf % st->align == 0;
    enum aio_op op = req->op == BDEV_OP_READ ? AIO_OP_READ : AIO_OP_WRITE;
    bool native = aligned;

    if (req->op == BDEV_OP_WRITE && aligned && end > st->alloc_end &&
        req->bs->params.file_grow_mode != BDEV_GROW_NATIVE) {
        if (st->prealloc_ok &&
            req->bs->params.file_grow_mode == BDEV_GROW_PREALLOC) {
            /* Wait for the preallocation that makes this an overwrite. */
            req->drv_priv = NULL;
            if (st->grow_tail) {
                st->grow_tail->drv_priv = req;
            } else {
                st->grow_head = req;
            }
            st->grow_tail = req;
            if (!st->growing) {
                int ret = start_grow(bs, end);

                if (ret < 0) {
                    st->grow_head = st->grow_tail = NULL;
                    return ret;
                }
            }
            return 0;
        }
        /* Extending direct writes block in io_submit: use a thread. */
        native = false;
    }
    if (req->op == BDEV_OP_WRITE && end > st->size) {
        st->size = end;
    }
    return aio_submit(aligned ? st->fd : st->fd_buf, native, op, req->buf,
                      req->bytes, req->offset, rw_done, req);
}

static void other_done(void *opaque, ssize_t ret)
{
    struct bdev_req *req = opaque;
    struct file_state *st = req->bs->state;

    if (ret >= 0 && req->op == BDEV_OP_WRITE_ZEROES &&
        req->offset + req->bytes > st->alloc_end) {
        st->alloc_end = req->offset + req->bytes;
    }
    bdev_req_complete(req, ret < 0 ? (int)ret : 0);
}

static int file_submit(struct bdev *bs, struct bdev_req *req)
{
    struct file_state *st = bs->state;

    switch (req->op) {
    case BDEV_OP_READ:
    case BDEV_OP_WRITE:
        return file_rw(bs, req);
    case BDEV_OP_WRITE_ZEROES:
        if (req->offset + req->bytes > st->size) {
            st->size = req->offset + req->bytes;
        }
        return aio_submit(st->fd_buf, false, AIO_OP_WRITE_ZEROES, NULL,
                          req->bytes, req->offset, other_done, req);
    case BDEV_OP_FLUSH:
        if (bs->cache_no_flush || bs->read_only) {
            bdev_req_complete_later(req, 0);
            return 0;
        }
        return aio_submit(st->fd_buf, false, AIO_OP_FSYNC, NULL, 0, 0,
                          other_done, req);
    }
    return -EINVAL;
}

/* ---- synchronous I/O (open, close, metadata) ---------------------------- */

static int file_pread_sync(struct bdev *bs, uint64_t off, uint64_t n, void *buf)
{
    struct file_state *st = bs->state;
    uint64_t done = 0;

    while (done < n) {
        ssize_t r = pread(st->fd_buf, (char *)buf + done, n - done,
                          (off_t)(off + done));

        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (r == 0) {
            memset((char *)buf + done, 0, n - done);
            break;
        }
        done += (uint64_t)r;
    }
    return 0;
}

static int file_pwrite_sync(struct bdev *bs, uint64_t off, uint64_t n,
                            const void *buf)
{
    struct file_state *st = bs->state;
    uint64_t done = 0;

    while (done < n) {
        ssize_t r = pwrite(st->fd_buf, (const char *)buf + done, n - done,
                           (off_t)(off + done));

        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        done += (uint64_t)r;
    }
    if (off + n > st->size) {
        st->size = off + n;
    }
    if (off + n > st->alloc_end) {
        st->alloc_end = off + n;
    }
    return 0;
}

static int file_flush_sync(struct bdev *bs)
{
    struct file_state *st = bs->state;

    if (bs->cache_no_flush || bs->read_only) {
        return 0;
    }
    return fdatasync(st->fd_buf) < 0 ? -errno : 0;
}

static int file_reopen(struct bdev *bs, bool read_write, struct qmp_error *err)
{
    struct file_state *st = bs->state;
    int fd, fd_buf, ret;
    bool direct;

    ret = open_fds(bs, bs->filename, read_write, &fd, &fd_buf, &direct, err);
    if (ret < 0) {
        return ret;
    }
    /* The locks belong to the old descriptor: take them on the new one
     * before letting the old one go. */
    if (st->locking) {
        ret = set_lock_bytes(fd, st->locked_perm, st->locked_unshared);
        if (ret < 0) {
            qmp_error_setg(err, "Failed to lock byte %d", LOCK_PERM);
            close_fds(fd, fd_buf);
            return ret;
        }
    }
    if (!read_write && st->alloc_end > st->size && !st->is_blk) {
        if (ftruncate(st->fd_buf, (off_t)st->size) == 0) {
            st->alloc_end = st->size;
        }
    }
    close_fds(st->fd, st->fd_buf);
    st->fd = fd;
    st->fd_buf = fd_buf;
    st->direct = direct;
    if (!direct) {
        st->align = 1;
    }
    return 0;
}

/* ---- length changes (bdev_truncate) ------------------------------------ */

struct file_trunc {
    struct bdev *bs;
    uint64_t size, from;
    int prealloc;
    bool extended;
    bdev_cb *cb;
    void *opaque;
};

static void trunc_done(void *opaque, ssize_t ret)
{
    struct file_trunc *t = opaque;
    struct file_state *st = t->bs->state;

    if (ret >= 0 && !t->extended && t->size > t->from &&
        (t->prealloc == BDEV_PREALLOC_FALLOC ||
         t->prealloc == BDEV_PREALLOC_FULL)) {
        /* The new bytes: allocated, or zeroes written (zero-range, else
         * written out) for full. */
        t->extended = true;
        ret = aio_submit(st->fd_buf, false,
                         t->prealloc == BDEV_PREALLOC_FULL ? AIO_OP_WRITE_ZEROES
                                                           : AIO_OP_FALLOCATE,
                         NULL, t->size - t->from, t->from, trunc_done, t);
        if (ret == 0) {
            return;
        }
    }
    if (ret >= 0) {
        st->size = t->size;
        st->alloc_end = t->size;
    }
    t->cb(t->opaque, ret < 0 ? (int)ret : 0);
    bdev_unref(t->bs);
    free(t);
}

static int file_truncate(struct bdev *bs, uint64_t size, int prealloc,
                         bdev_cb *cb, void *opaque)
{
    struct file_state *st = bs->state;
    struct file_trunc *t;
    int ret;

    if (st->is_blk || (int64_t)size < 0) {
        return st->is_blk ? -ENOTSUP : -EINVAL;
    }
    if (prealloc == BDEV_PREALLOC_METADATA ||
        (prealloc != BDEV_PREALLOC_OFF && size < st->size)) {
        return -ENOTSUP;
    }
    if (st->growing) {
        return -EBUSY;
    }
    t = calloc(1, sizeof(*t));
    if (!t) {
        return -ENOMEM;
    }
    t->bs = bs;
    t->size = size;
    t->from = st->size;
    t->prealloc = prealloc;
    t->cb = cb;
    t->opaque = opaque;
    ret = aio_submit(st->fd_buf, false, AIO_OP_TRUNCATE, NULL, 0, size,
                     trunc_done, t);
    if (ret < 0) {
        free(t);
        return ret;
    }
    bdev_ref(bs);
    return 0;
}

const struct bdev_driver bdev_drv_file = {
    .name = "file",
    .state_size = sizeof(struct file_state),
    .options_type = "BlockdevOptionsFile",
    .open = file_open,
    .close = file_close,
    .length = file_length,
    .submit = file_submit,
    .pread_sync = file_pread_sync,
    .pwrite_sync = file_pwrite_sync,
    .flush_sync = file_flush_sync,
    .reopen = file_reopen,
    .apply_perm = file_apply_perm,
    .can_grow = true,
    .allocated_size = file_allocated_size,
    .truncate = file_truncate,
};
