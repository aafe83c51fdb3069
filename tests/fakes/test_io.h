/* Waiting for the block layer in unit tests and fuzz targets: a record the
 * completion callbacks fill, and synchronous reads, writes and flushes that
 * run the layer's loop (bdev_loop()) until their callback has run. No
 * cmocka here: the fuzz targets link this too. */
#ifndef TESTS_FAKES_TEST_IO_H
#define TESTS_FAKES_TEST_IO_H

#include <stdint.h>

#include "backends/bdev.h"

/* One or more requests' completions; zero-initialise before use. */
struct test_io_done {
    int calls;       /* callbacks run so far */
    int ret;         /* the last callback's ret */
    unsigned status; /* test_io_status_cb: BDEV_STATUS_* */
    uint64_t pnum;   /* test_io_status_cb: bytes sharing that status */
};

/* bdev_cb and bdev_status_cb; opaque is a struct test_io_done. */
void test_io_cb(void *opaque, int ret);
void test_io_status_cb(void *opaque, int ret, unsigned status, uint64_t pnum);

/* Runs the loop until `d` has seen `calls` callbacks; returns d->ret. */
int test_io_wait(struct test_io_done *d, int calls);

/* One request, waited for: 0 or the -errno from queueing or completion. */
int test_io_read(struct bdev *bs, uint64_t off, uint64_t len, void *buf);
int test_io_write(struct bdev *bs, uint64_t off, uint64_t len, const void *buf);
int test_io_zero(struct bdev *bs, uint64_t off, uint64_t len);
int test_io_flush(struct bdev *bs);

/* cmocka group setup: starts the block layer on a loop of its own.
 * Returns bdev_init()'s result. */
int test_io_setup(void **state);
/* cmocka teardown: closes every node (bdev_close_all()); as a per-test
 * teardown, no test leaves a node behind even when it failed half-way. */
int test_io_close_all(void **state);

#endif
