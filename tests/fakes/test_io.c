#include "tests/fakes/test_io.h"

static uv_loop_t loop;

void test_io_cb(void *opaque, int ret)
{
    struct test_io_done *d = opaque;

    d->calls++;
    d->ret = ret;
}

void test_io_status_cb(void *opaque, int ret, unsigned status, uint64_t pnum)
{
    struct test_io_done *d = opaque;

    d->calls++;
    d->ret = ret;
    d->status = status;
    d->pnum = pnum;
}

int test_io_wait(struct test_io_done *d, int calls)
{
    while (d->calls < calls) {
        uv_run(bdev_loop(), UV_RUN_ONCE);
    }
    return d->ret;
}

int test_io_read(struct bdev *bs, uint64_t off, uint64_t len, void *buf)
{
    struct test_io_done d = {0};
    int ret = bdev_read(bs, off, len, buf, test_io_cb, &d);

    return ret ? ret : test_io_wait(&d, 1);
}

int test_io_write(struct bdev *bs, uint64_t off, uint64_t len, const void *buf)
{
    struct test_io_done d = {0};
    int ret = bdev_write(bs, off, len, buf, test_io_cb, &d);

    return ret ? ret : test_io_wait(&d, 1);
}

int test_io_zero(struct bdev *bs, uint64_t off, uint64_t len)
{
    struct test_io_done d = {0};
    int ret = bdev_write_zeroes(bs, off, len, test_io_cb, &d);

    return ret ? ret : test_io_wait(&d, 1);
}

int test_io_flush(struct bdev *bs)
{
    struct test_io_done d = {0};
    int ret = bdev_flush(bs, test_io_cb, &d);

    return ret ? ret : test_io_wait(&d, 1);
}

int test_io_setup(void **state)
{
    (void)state;
    uv_loop_init(&loop);
    return bdev_init(&loop);
}

int test_io_close_all(void **state)
{
    (void)state;
    bdev_close_all();
    return 0;
}
