/* Unit tests of the qcow2 bitmaps structures (backends/qcow2_bitmap.c):
 * the extension, the directory (QEMU 7.2's constraints and texts), table
 * entries, sizes, and the rebuild of cluster 0. No I/O. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backends/qcow2.h"
#include "backends/qcow2_bitmap.h"

#define CB        16u
#define CS        (1u << CB)
#define DISK      (4u << 20)
#define FILE_SIZE (16u * CS)

static char msg[512];

static void put_ext(uint8_t *p, uint32_t nb, uint64_t size, uint64_t off)
{
    memset(p, 0, QCOW2_BM_EXT_LEN);
    qcow2_put_be32(p, nb);
    qcow2_put_be64(p + 8, size);
    qcow2_put_be64(p + 16, off);
}

static void test_ext(void **state)
{
    struct qcow2_bm_ext ext;
    uint8_t p[QCOW2_BM_EXT_LEN];

    (void)state;
    put_ext(p, 2, 64, 10 * CS);
    assert_int_equal(
        qcow2_bm_parse_ext(p, sizeof(p), CB, FILE_SIZE, &ext, msg, sizeof(msg)),
        0);
    assert_int_equal(ext.nb_bitmaps, 2);
    assert_int_equal(ext.dir_size, 64);
    assert_int_equal(ext.dir_offset, 10 * CS);

    assert_int_equal(
        qcow2_bm_parse_ext(p, 16, CB, FILE_SIZE, &ext, msg, sizeof(msg)),
        -EINVAL);
    assert_string_equal(msg, "bitmaps_ext: Invalid extension length");
    qcow2_put_be32(p + 4, 1);
    assert_int_equal(
        qcow2_bm_parse_ext(p, sizeof(p), CB, FILE_SIZE, &ext, msg, sizeof(msg)),
        -EINVAL);
    assert_string_equal(msg, "bitmaps_ext: Reserved field is not zero");
    put_ext(p, 65536, 64, 10 * CS);
    assert_int_equal(
        qcow2_bm_parse_ext(p, sizeof(p), CB, FILE_SIZE, &ext, msg, sizeof(msg)),
        -EINVAL);
    assert_string_equal(msg, "bitmaps_ext: Image has 65536 bitmaps, exceeding "
                             "the QEMU supported maximum of 65535");
    put_ext(p, 0, 64, 10 * CS);
    assert_int_equal(
        qcow2_bm_parse_ext(p, sizeof(p), CB, FILE_SIZE, &ext, msg, sizeof(msg)),
        -EINVAL);
    assert_string_equal(msg, "found bitmaps extension with zero bitmaps");
    put_ext(p, 1, 64, 10 * CS + 512);
    assert_int_equal(
        qcow2_bm_parse_ext(p, sizeof(p), CB, FILE_SIZE, &ext, msg, sizeof(msg)),
        -EINVAL);
    assert_string_equal(msg, "bitmaps_ext: invalid bitmap directory offset");
    put_ext(p, 1, 1ull << 40, 10 * CS);
    assert_int_equal(
        qcow2_bm_parse_ext(p, sizeof(p), CB, FILE_SIZE, &ext, msg, sizeof(msg)),
        -EINVAL);
    assert_non_null(strstr(msg, "exceeds the maximum supported size"));
    /* Past the end of the file. */
    put_ext(p, 1, 64, FILE_SIZE);
    assert_int_equal(
        qcow2_bm_parse_ext(p, sizeof(p), CB, FILE_SIZE, &ext, msg, sizeof(msg)),
        -EINVAL);
    put_ext(p, 1, 0, 10 * CS);
    assert_int_equal(
        qcow2_bm_parse_ext(p, sizeof(p), CB, FILE_SIZE, &ext, msg, sizeof(msg)),
        -EINVAL);
    assert_string_equal(msg, "Requested bitmap directory size is zero");
}

/* Writes one entry at p; returns its padded size. */
static size_t put_entry(uint8_t *p, uint64_t toff, uint32_t tsize,
                        uint32_t flags, uint8_t type, uint8_t gbits,
                        const char *name, uint32_t extra)
{
    size_t nlen = strlen(name);
    size_t size = (24 + extra + nlen + 7) & ~(size_t)7;

    memset(p, 0, size);
    qcow2_put_be64(p, toff);
    qcow2_put_be32(p + 8, tsize);
    qcow2_put_be32(p + 12, flags);
    p[16] = type;
    p[17] = gbits;
    p[18] = (uint8_t)(nlen >> 8);
    p[19] = (uint8_t)nlen;
    qcow2_put_be32(p + 20, extra);
    memcpy(p + 24 + extra, name, nlen);
    return size;
}

static int parse_dir(const uint8_t *buf, size_t len, uint32_t nb,
                     struct qcow2_bm_dir *dir)
{
    return qcow2_bm_parse_dir(buf, len, nb, DISK, CB, FILE_SIZE, dir, msg,
                              sizeof(msg));
}

static void test_dir_valid_and_rebuilt(void **state)
{
    struct qcow2_bm_dir dir;
    uint8_t buf[256], out[256];
    size_t n = 0;

    (void)state;
    n += put_entry(buf + n, 11 * CS, 1, QCOW2_BM_FLAG_AUTO, 1, 16, "pers", 0);
    n += put_entry(buf + n, 12 * CS, 1, 0, 1, 20, "pdis", 0);
    assert_int_equal(n, 64); /* as the 7.2 dump: dir_size=64 for these */
    assert_int_equal(parse_dir(buf, n, 2, &dir), 0);
    assert_int_equal(dir.n, 2);
    assert_string_equal(dir.e[0].name, "pers");
    assert_int_equal(dir.e[0].flags, QCOW2_BM_FLAG_AUTO);
    assert_int_equal(dir.e[0].gran_bits, 16);
    assert_int_equal(dir.e[1].table_offset, 12 * CS);
    assert_int_equal(qcow2_bm_dir_bytes(&dir), n);
    qcow2_bm_build_dir(&dir, out);
    assert_memory_equal(out, buf, n);
    qcow2_bm_dir_free(&dir);
    assert_null(dir.e);
}

static void test_dir_errors(void **state)
{
    struct qcow2_bm_dir dir;
    uint8_t buf[4096];
    size_t n;

    (void)state;
    n = put_entry(buf, 11 * CS, 1, 2, 1, 16, "a", 0);
    assert_int_equal(parse_dir(buf, n, 2, &dir), -EINVAL);
    assert_string_equal(
        msg, "Less bitmaps found than specified in header extension");
    assert_int_equal(parse_dir(buf, n, 0, &dir), -EINVAL);
    assert_string_equal(
        msg, "More bitmaps found than specified in header extension");
    assert_int_equal(parse_dir(buf, n - 1, 1, &dir), -EINVAL);
    assert_string_equal(msg, "Broken bitmap directory");
    assert_int_equal(parse_dir(buf, 20, 1, &dir), -EINVAL);
    assert_string_equal(msg, "Broken bitmap directory");

    n = put_entry(buf, 11 * CS, 1, 2, 1, 16, "a", 8);
    assert_int_equal(parse_dir(buf, n, 1, &dir), -EINVAL);
    assert_string_equal(msg, "Bitmap extra data is not supported");

    /* Each broken constraint names the bitmap. */
    struct {
        uint64_t toff;
        uint32_t tsize, flags;
        uint8_t type, gbits;
    } bad[] = {
        {0, 1, 2, 1, 16},             /* no table */
        {11 * CS + 512, 1, 2, 1, 16}, /* unaligned */
        {11 * CS, 0, 2, 1, 16},       /* empty table */
        {11 * CS, 1, 8, 1, 16},       /* reserved flag */
        {11 * CS, 1, 2, 2, 16},       /* type */
        {11 * CS, 1, 2, 1, 8},        /* granularity below 2^9 */
        {11 * CS, 1, 2, 1, 32},       /* above 2^31 */
        {15 * CS, 8193, 2, 1, 16},    /* table past the end of the file */
        {11 * CS, 1, 2, 1, 9},        /* 4 MiB at 512 B: 1 KiB... fine */
    };
    for (size_t i = 0; i + 1 < sizeof(bad) / sizeof(bad[0]); i++) {
        n = put_entry(buf, bad[i].toff, bad[i].tsize, bad[i].flags, bad[i].type,
                      bad[i].gbits, "bm1", 0);
        assert_int_equal(parse_dir(buf, n, 1, &dir), -EINVAL);
        assert_string_equal(msg,
                            "Bitmap 'bm1' doesn't satisfy the constraints");
    }
    n = put_entry(buf, 11 * CS, 1, 2, 1, 9, "bm1", 0);
    assert_int_equal(parse_dir(buf, n, 1, &dir), 0);
    qcow2_bm_dir_free(&dir);

    /* A table too small for the disk: refused unless in use (a bitmap
     * not saved after a resize is fine to keep, not to use). */
    assert_int_equal(qcow2_bm_data_bytes(DISK, 9), 1024);
    assert_int_equal(qcow2_bm_table_entries(64ull << 30, 9, CB), 256);
    {
        uint8_t big[64];
        struct qcow2_bm_dir d2;

        n = put_entry(big, 11 * CS, 1, 2, 1, 9, "x", 0);
        assert_int_equal(qcow2_bm_parse_dir(big, n, 1, 64ull << 30, CB,
                                            FILE_SIZE, &d2, msg, sizeof(msg)),
                         -EINVAL);
        n = put_entry(big, 11 * CS, 1, 3, 1, 9, "x", 0);
        assert_int_equal(qcow2_bm_parse_dir(big, n, 1, 64ull << 30, CB,
                                            FILE_SIZE, &d2, msg, sizeof(msg)),
                         0);
        qcow2_bm_dir_free(&d2);
    }

    /* Empty and NUL-holding names, duplicates. */
    n = put_entry(buf, 11 * CS, 1, 2, 1, 16, "", 0);
    assert_int_equal(parse_dir(buf, n, 1, &dir), -EINVAL);
    n = put_entry(buf, 11 * CS, 1, 2, 1, 16, "ab", 0);
    buf[25] = 0;
    assert_int_equal(parse_dir(buf, n, 1, &dir), -EINVAL);
    n = put_entry(buf, 11 * CS, 1, 2, 1, 16, "dup", 0);
    n += put_entry(buf + n, 12 * CS, 1, 2, 1, 16, "dup", 0);
    assert_int_equal(parse_dir(buf, n, 2, &dir), -EINVAL);
    assert_string_equal(msg, "Bitmap 'dup' doesn't satisfy the constraints");
    /* A name of 1024 bytes. */
    {
        char *name = malloc(1025);
        uint8_t *b = malloc(2048);

        memset(name, 'n', 1024);
        name[1024] = 0;
        n = put_entry(b, 11 * CS, 1, 2, 1, 16, name, 0);
        assert_int_equal(parse_dir(b, n, 1, &dir), -EINVAL);
        name[1023] = 0;
        n = put_entry(b, 11 * CS, 1, 2, 1, 16, name, 0);
        assert_int_equal(parse_dir(b, n, 1, &dir), 0);
        qcow2_bm_dir_free(&dir);
        free(name);
        free(b);
    }
}

static void test_table(void **state)
{
    uint64_t t[4];

    (void)state;
    qcow2_put_be64(&t[0], 0);
    qcow2_put_be64(&t[1], 1);
    qcow2_put_be64(&t[2], 3 * CS);
    qcow2_put_be64(&t[3], 5 * CS);
    assert_int_equal(qcow2_bm_check_table(t, 4, CB, FILE_SIZE), 0);
    assert_int_equal(t[1], 1);
    assert_int_equal(t[2], 3 * CS);
    qcow2_put_be64(&t[0], 3 * CS | 1); /* all-ones with an offset */
    assert_int_equal(qcow2_bm_check_table(t, 1, CB, FILE_SIZE), -EINVAL);
    qcow2_put_be64(&t[0], 3 * CS + 4096);
    assert_int_equal(qcow2_bm_check_table(t, 1, CB, FILE_SIZE), -EINVAL);
    qcow2_put_be64(&t[0], 2); /* reserved bit 1 */
    assert_int_equal(qcow2_bm_check_table(t, 1, CB, FILE_SIZE), -EINVAL);
    qcow2_put_be64(&t[0], 1ull << 60);
    assert_int_equal(qcow2_bm_check_table(t, 1, CB, FILE_SIZE), -EINVAL);
    qcow2_put_be64(&t[0], FILE_SIZE); /* past the end */
    assert_int_equal(qcow2_bm_check_table(t, 1, CB, FILE_SIZE), -EINVAL);
}

static void test_check_new(void **state)
{
    char name[1100];

    (void)state;
    assert_int_equal(qcow2_bm_check_new(DISK, 65536, CB, "a", msg, sizeof(msg)),
                     0);
    assert_int_equal(
        qcow2_bm_check_new(DISK, 1u << 31, CB, "a", msg, sizeof(msg)), 0);
    assert_int_equal(qcow2_bm_check_new(DISK, 256, CB, "a", msg, sizeof(msg)),
                     -EINVAL);
    assert_string_equal(msg, "Granularity is under minimum (512 bytes)");
    /* 512 B granules of 4 PiB: more than 512 MiB of bitmap. */
    assert_int_equal(
        qcow2_bm_check_new(1ull << 52, 512, CB, "a", msg, sizeof(msg)),
        -EINVAL);
    assert_string_equal(msg, "Too much space will be occupied by the bitmap. "
                             "Use larger granularity");
    memset(name, 'x', 1024);
    name[1024] = 0;
    assert_int_equal(
        qcow2_bm_check_new(DISK, 65536, CB, name, msg, sizeof(msg)), -EINVAL);
    assert_string_equal(msg, "Name length exceeds maximum (1023 characters)");
}

/* A v3 header with a feature table and a backing name; cluster 0 gets a
 * bitmaps extension, loses it again, the rest stays. */
static void test_cluster0(void **state)
{
    static uint8_t c0[CS], out[CS], out2[CS];
    struct qcow2_meta m, m2, m3;
    struct qcow2_bm_ext ext = {3, 96, 9 * CS}, got;
    uint32_t doff, dlen;

    (void)state;
    memset(c0, 0, sizeof(c0));
    qcow2_put_be32(c0, QCOW2_MAGIC);
    qcow2_put_be32(c0 + 4, 3);
    qcow2_put_be32(c0 + 20, CB);
    qcow2_put_be64(c0 + 24, DISK);
    qcow2_put_be32(c0 + 36, 1);
    qcow2_put_be64(c0 + 40, 3 * CS);
    qcow2_put_be64(c0 + 48, CS);
    qcow2_put_be32(c0 + 56, 1);
    qcow2_put_be64(c0 + 88, 2); /* an unknown autoclear bit stays */
    qcow2_put_be32(c0 + 96, 4);
    qcow2_put_be32(c0 + 100, 112);
    qcow2_put_be32(c0 + 112, QCOW2_EXT_BACKING_FMT);
    qcow2_put_be32(c0 + 116, 5);
    memcpy(c0 + 120, "qcow2", 5);
    /* end at 128, backing name at 136 */
    memcpy(c0 + 136, "base.qcow2", 10);
    qcow2_put_be64(c0 + 8, 136);
    qcow2_put_be32(c0 + 16, 10);

    memset(&m, 0, sizeof(m));
    assert_int_equal(
        qcow2_parse_header(c0, CS, FILE_SIZE, &m.h, msg, sizeof(msg)), 0);
    assert_int_equal(qcow2_parse_extensions(c0, CS, &m, msg, sizeof(msg)), 0);
    assert_int_equal(qcow2_bm_find_ext(c0, CS, &m, &doff, &dlen), 0);

    assert_int_equal(
        qcow2_bm_build_cluster0(c0, &m, &ext, out, msg, sizeof(msg)), 0);
    memset(&m2, 0, sizeof(m2));
    assert_int_equal(
        qcow2_parse_header(out, CS, FILE_SIZE, &m2.h, msg, sizeof(msg)), 0);
    assert_int_equal(qcow2_parse_extensions(out, CS, &m2, msg, sizeof(msg)), 0);
    assert_int_equal(m2.h.autoclear_features, 3);
    assert_string_equal(m2.backing_file, "base.qcow2");
    assert_string_equal(m2.backing_fmt, "qcow2");
    assert_int_equal(qcow2_bm_find_ext(out, CS, &m2, &doff, &dlen), 1);
    assert_int_equal(qcow2_bm_parse_ext(out + doff, dlen, CB, FILE_SIZE, &got,
                                        msg, sizeof(msg)),
                     0);
    assert_int_equal(got.nb_bitmaps, 3);
    assert_int_equal(got.dir_size, 96);
    assert_int_equal(got.dir_offset, 9 * CS);

    /* Replaced, then removed. */
    ext.nb_bitmaps = 1;
    assert_int_equal(
        qcow2_bm_build_cluster0(out, &m2, &ext, out2, msg, sizeof(msg)), 0);
    memset(&m3, 0, sizeof(m3));
    assert_int_equal(
        qcow2_parse_header(out2, CS, FILE_SIZE, &m3.h, msg, sizeof(msg)), 0);
    assert_int_equal(qcow2_parse_extensions(out2, CS, &m3, msg, sizeof(msg)),
                     0);
    assert_int_equal(m3.ext_end, m2.ext_end);
    assert_int_equal(
        qcow2_bm_build_cluster0(out2, &m3, NULL, out, msg, sizeof(msg)), 0);
    memset(&m2, 0, sizeof(m2));
    assert_int_equal(
        qcow2_parse_header(out, CS, FILE_SIZE, &m2.h, msg, sizeof(msg)), 0);
    assert_int_equal(qcow2_parse_extensions(out, CS, &m2, msg, sizeof(msg)), 0);
    assert_int_equal(m2.h.autoclear_features, 2);
    assert_int_equal(qcow2_bm_find_ext(out, CS, &m2, &doff, &dlen), 0);
    assert_string_equal(m2.backing_file, "base.qcow2");
    assert_memory_equal(out, c0, 88); /* fields before autoclear */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ext),
        cmocka_unit_test(test_dir_valid_and_rebuilt),
        cmocka_unit_test(test_dir_errors),
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_check_new),
        cmocka_unit_test(test_cluster0),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
