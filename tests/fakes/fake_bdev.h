/* An in-memory format node for job tests: data and an allocation map per
 * cluster, a backing pointer, and every request (I/O, block status, backing
 * change) held in one FIFO until the test releases it. */
#ifndef TESTS_FAKES_FAKE_BDEV_H
#define TESTS_FAKES_FAKE_BDEV_H

#include <stdbool.h>
#include <stdint.h>

#include "backends/bdev_int.h"

struct bdev *fake_bdev_new(const char *name, uint64_t size, uint32_t cluster,
                           struct bdev *backing);
/* Writes `byte` over [off, off+len) and marks the clusters allocated. */
void fake_bdev_fill(struct bdev *bs, uint64_t off, uint64_t len, int byte);
bool fake_bdev_allocated(struct bdev *bs, uint64_t off);
/* Byte as read through the chain. */
int fake_bdev_read_byte(struct bdev *bs, uint64_t off);
/* The next request (read/write) covering `off` fails with -errno_ (once). */
void fake_bdev_inject(struct bdev *bs, uint64_t off, int errno_);
/* Every read or write on the node fails with errno_ until called again
 * with 0 (a full disk, a dead device). */
void fake_bdev_fail_all(struct bdev *bs, int errno_);
/* Header strings given to change_backing (NULL if none / never). */
const char *fake_bdev_backing_file(struct bdev *bs);
const char *fake_bdev_backing_fmt(struct bdev *bs);
int fake_bdev_changes(struct bdev *bs);
/* Data writes (zeroes false) or write-zeroes (true) done on the node. */
unsigned fake_bdev_writes(struct bdev *bs, bool zeroes);

/* Held operations, all nodes. */
unsigned fake_pending(void);
unsigned fake_pending_io(void); /* reads and writes only */
/* Completes the oldest held operation; false if none. */
bool fake_complete_next(void);
/* Completes the oldest held operation that is not a read/write. */
bool fake_complete_next_status(void);

void fake_bdev_free(struct bdev *bs);

#endif
