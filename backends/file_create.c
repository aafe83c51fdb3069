/* blockdev-create for the `file` driver: the steps and texts of QEMU 7.2's
 * raw_co_create, run on libuv's thread pool (open, lock, truncate and
 * preallocation may each take long; the loop never waits for them).
 *
 * Order, as in QEMU: create the file (O_CREAT, mode 0644, not O_TRUNC),
 * take the lock bytes of write and resize and refuse when another open
 * file description holds a conflicting one, cut the file to 0, set nocow,
 * then give it its size with the preallocation asked for.
 */
#include "backends/image_create.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

/* QEMU's lock bytes: 100 + permission bit (held), 200 + bit (unshared). */
#define LOCK_PERM    100
#define LOCK_SHARED  200
#define PERM_WRITE   1
#define PERM_RESIZE  3
#define ZERO_CHUNK   (1u << 20)
#define FIRST_BLOCK  4096
#define ERRMSG_BYTES 1200

static const char *const perm_names[] = {"consistent read", "write",
                                         "write unchanged", "resize"};

struct file_create {
    uv_work_t work;
    char *filename;
    uint64_t size;
    enum bdev_prealloc prealloc;
    bool nocow;
    int ret;
    int fd;
    char msg[ERRMSG_BYTES];
    void (*opened)(void *opaque);
    bdev_create_cb *cb;
    void *opaque;
};

int bdev_prealloc_parse(const char *name)
{
    static const char *const names[] = {"off", "metadata", "falloc", "full"};

    for (int i = 0; i < 4; i++) {
        if (name && !strcmp(name, names[i])) {
            return i;
        }
    }
    return -1;
}

const char *bdev_prealloc_name(enum bdev_prealloc p)
{
    static const char *const names[] = {"off", "metadata", "falloc", "full"};

    return (unsigned)p < 4 ? names[p] : "?";
}

static int ofd_lock(int fd, int byte)
{
    struct flock fl = {
        .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};

    return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

/* Does another open file description hold the byte? */
static bool ofd_taken(int fd, int byte)
{
    struct flock fl = {
        .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};

    return fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK;
}

static int take_locks(struct file_create *c, int fd)
{
    static const int mine[] = {LOCK_PERM + PERM_WRITE, LOCK_PERM + PERM_RESIZE,
                               LOCK_SHARED + PERM_RESIZE};

    for (size_t i = 0; i < sizeof(mine) / sizeof(mine[0]); i++) {
        int ret = ofd_lock(fd, mine[i]);

        if (ret < 0) {
            snprintf(c->msg, sizeof(c->msg), "Failed to lock byte %d", mine[i]);
            return ret;
        }
    }
    /* What we need, nobody may have unshared; what we do not share,
     * nobody may hold. */
    if (ofd_taken(fd, LOCK_SHARED + PERM_WRITE)) {
        snprintf(c->msg, sizeof(c->msg), "Failed to get \"%s\" lock",
                 perm_names[PERM_WRITE]);
        return -EAGAIN;
    }
    if (ofd_taken(fd, LOCK_SHARED + PERM_RESIZE)) {
        snprintf(c->msg, sizeof(c->msg), "Failed to get \"%s\" lock",
                 perm_names[PERM_RESIZE]);
        return -EAGAIN;
    }
    if (ofd_taken(fd, LOCK_PERM + PERM_RESIZE)) {
        snprintf(c->msg, sizeof(c->msg), "Failed to get shared \"%s\" lock",
                 perm_names[PERM_RESIZE]);
        return -EAGAIN;
    }
    return 0;
}

static void set_nocow(int fd)
{
    int attr;

    /* As QEMU: best effort (only btrfs has it; others say ENOTTY). */
    if (ioctl(fd, FS_IOC_GETFLAGS, &attr) == 0) {
        attr |= FS_NOCOW_FL;
        if (ioctl(fd, FS_IOC_SETFLAGS, &attr) < 0) {
            /* not supported here: nothing to do */
        }
    }
}

static int write_zeroes_from(struct file_create *c, int fd, off_t from)
{
    char *buf = calloc(1, ZERO_CHUNK);
    off_t off = from, end = (off_t)c->size;
    int ret = 0;

    if (!buf) {
        return -ENOMEM;
    }
    while (off < end) {
        size_t n = end - off > ZERO_CHUNK ? ZERO_CHUNK : (size_t)(end - off);
        ssize_t w = pwrite(fd, buf, n, off);

        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            ret = w < 0 ? -errno : -EIO;
            snprintf(c->msg, sizeof(c->msg),
                     "Could not write zeros for preallocation: %s",
                     strerror(-ret));
            break;
        }
        off += w;
    }
    free(buf);
    if (ret == 0 && fsync(fd) < 0) {
        ret = -errno;
        snprintf(c->msg, sizeof(c->msg), "Could not flush file to disk: %s",
                 strerror(-ret));
    }
    return ret;
}

/* QEMU's raw_regular_truncate from an empty file. */
static int resize(struct file_create *c, int fd)
{
    off_t size = (off_t)c->size;
    int ret;

    switch (c->prealloc) {
    case BDEV_PREALLOC_OFF:
        if (ftruncate(fd, size) < 0) {
            ret = -errno;
            snprintf(c->msg, sizeof(c->msg), "Could not resize file: %s",
                     strerror(-ret));
            return ret;
        }
        /* As QEMU: the first block is allocated (zeroes written), so that
         * probing the request alignment of O_DIRECT works on it. */
        if (size > 0) {
            static const char zeroes[FIRST_BLOCK];
            size_t n = size < FIRST_BLOCK ? (size_t)size : FIRST_BLOCK;

            if (pwrite(fd, zeroes, n, 0) < 0) {
                /* best effort, as in QEMU */
            }
        }
        return 0;
    case BDEV_PREALLOC_FALLOC:
        if (size == 0) {
            return 0;
        }
        ret = size < 0 ? EINVAL : posix_fallocate(fd, 0, size);
        if (ret) {
            snprintf(c->msg, sizeof(c->msg),
                     "Could not preallocate new data: %s", strerror(ret));
            return -ret;
        }
        return 0;
    case BDEV_PREALLOC_FULL:
        if (ftruncate(fd, size) < 0) {
            ret = -errno;
            snprintf(c->msg, sizeof(c->msg), "Could not resize file: %s",
                     strerror(-ret));
            return ret;
        }
        return write_zeroes_from(c, fd, 0);
    default:
        snprintf(c->msg, sizeof(c->msg), "Unsupported preallocation mode: %s",
                 bdev_prealloc_name(c->prealloc));
        return -ENOTSUP;
    }
}

/* Step 1: create, lock, empty, nocow. */
static void open_work(uv_work_t *w)
{
    struct file_create *c = w->data;
    int ret;

    c->fd = open(c->filename, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (c->fd < 0) {
        c->ret = -errno;
        snprintf(c->msg, sizeof(c->msg), "Could not create '%s': %s",
                 c->filename, strerror(-c->ret));
        return;
    }
    ret = take_locks(c, c->fd);
    if (ret == 0 && ftruncate(c->fd, 0) < 0) {
        ret = -errno;
        snprintf(c->msg, sizeof(c->msg), "Could not resize file: %s",
                 strerror(-ret));
    }
    if (ret == 0 && c->nocow) {
        set_nocow(c->fd);
    }
    if (ret < 0) {
        close(c->fd); /* drops the OFD locks */
        c->fd = -1;
    }
    c->ret = ret;
}

/* Step 2: the size and the preallocation. */
static void resize_work(uv_work_t *w)
{
    struct file_create *c = w->data;

    c->ret = resize(c, c->fd);
    close(c->fd); /* drops the OFD locks */
    c->fd = -1;
}

static void end(struct file_create *c, int status)
{
    if (status < 0 && c->ret == 0) {
        c->ret = status;
        snprintf(c->msg, sizeof(c->msg), "%s", uv_strerror(status));
    }
    if (c->fd >= 0) {
        close(c->fd);
    }
    c->cb(c->opaque, c->ret, c->ret < 0 ? c->msg : NULL);
    free(c->filename);
    free(c);
}

static void resize_done(uv_work_t *w, int status)
{
    end(w->data, status);
}

static void open_done(uv_work_t *w, int status)
{
    struct file_create *c = w->data;
    int ret;

    if (status < 0 || c->ret < 0) {
        end(c, status);
        return;
    }
    c->opened(c->opaque);
    ret = uv_queue_work(bdev_loop(), &c->work, resize_work, resize_done);
    if (ret < 0) {
        end(c, ret);
    }
}

int file_create(const struct file_create_opts *o, void (*opened)(void *opaque),
                bdev_create_cb *cb, void *opaque)
{
    struct file_create *c = calloc(1, sizeof(*c));
    int ret;

    if (!c || !(c->filename = strdup(o->filename))) {
        abort();
    }
    c->size = o->size;
    c->prealloc = o->prealloc;
    c->nocow = o->nocow;
    c->fd = -1;
    c->opened = opened;
    c->cb = cb;
    c->opaque = opaque;
    c->work.data = c;
    ret = uv_queue_work(bdev_loop(), &c->work, open_work, open_done);
    if (ret < 0) {
        free(c->filename);
        free(c);
    }
    return ret;
}
