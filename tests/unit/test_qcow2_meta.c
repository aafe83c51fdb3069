/* Unit tests of the qcow2 metadata helpers (backends/qcow2_meta.c): header
 * validation, extensions, feature refusal, cluster 0 rebuild, L2 entry
 * decoding and refcount arithmetic. No I/O. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "backends/qcow2.h"

#define CS        65536u
#define FILE_SIZE (4u * CS)

static uint8_t img[CS];
static char msg[512];

/* A header as qemu-img 7.2 writes it: v3, 64 KiB clusters, 1 MiB disk,
 * refcount table in cluster 1, L1 in cluster 3. */
static void make_v3(void)
{
    memset(img, 0, sizeof(img));
    qcow2_put_be32(img, QCOW2_MAGIC);
    qcow2_put_be32(img + 4, 3);
    qcow2_put_be32(img + 20, 16);
    qcow2_put_be64(img + 24, 1 << 20);
    qcow2_put_be32(img + 36, 1);
    qcow2_put_be64(img + 40, 3 * CS);
    qcow2_put_be64(img + 48, CS);
    qcow2_put_be32(img + 56, 1);
    qcow2_put_be32(img + 96, 4);
    qcow2_put_be32(img + 100, 112);
}

static int parse(struct qcow2_meta *m)
{
    int ret = qcow2_parse_header(img, sizeof(img), FILE_SIZE, &m->h, msg,
                                 sizeof(msg));
    if (ret) {
        return ret;
    }
    ret = qcow2_parse_extensions(img, sizeof(img), m, msg, sizeof(msg));
    if (ret) {
        return ret;
    }
    return qcow2_check_features(img, m, msg, sizeof(msg));
}

static void test_valid_v3(void **state)
{
    struct qcow2_meta m;

    (void)state;
    make_v3();
    assert_int_equal(parse(&m), 0);
    assert_int_equal(m.h.version, 3);
    assert_int_equal(m.h.cluster_bits, 16);
    assert_int_equal(m.h.size, 1 << 20);
    assert_false(m.has_backing);
}

static void test_valid_v2(void **state)
{
    struct qcow2_meta m;

    (void)state;
    make_v3();
    qcow2_put_be32(img + 4, 2);
    /* v2 ignores bytes 72+ (they would be extensions here: zero = end). */
    memset(img + 72, 0, 40);
    assert_int_equal(parse(&m), 0);
    assert_int_equal(m.h.refcount_order, 4);
    assert_int_equal(m.h.header_length, 72);
}

static void expect_error(int want, const char *text)
{
    struct qcow2_meta m;

    assert_int_equal(parse(&m), want);
    assert_string_equal(msg, text);
}

static void test_bad_magic(void **state)
{
    (void)state;
    make_v3();
    img[0] = 'X';
    expect_error(-EINVAL, "Image is not in qcow2 format");
}

static void test_bad_version(void **state)
{
    (void)state;
    make_v3();
    qcow2_put_be32(img + 4, 4);
    expect_error(-ENOTSUP, "Unsupported qcow2 version 4");
}

static void test_cluster_bits(void **state)
{
    (void)state;
    make_v3();
    qcow2_put_be32(img + 20, 8);
    expect_error(-EINVAL, "Unsupported cluster size: 2^8");
    qcow2_put_be32(img + 20, 22);
    expect_error(-EINVAL, "Unsupported cluster size: 2^22");
    qcow2_put_be32(img + 20, 0xffffffffu);
    expect_error(-EINVAL, "Unsupported cluster size: 2^4294967295");
}

static void test_header_length(void **state)
{
    (void)state;
    make_v3();
    qcow2_put_be32(img + 100, 96);
    expect_error(-EINVAL, "qcow2 header too short");
    qcow2_put_be32(img + 100, 113);
    expect_error(-EINVAL, "qcow2 header length 113 is not a multiple of 8");
    qcow2_put_be32(img + 100, 0x7ffffff8u);
    expect_error(-EINVAL, "qcow2 header exceeds cluster size");
}

static void test_huge_l1(void **state)
{
    (void)state;
    make_v3();
    qcow2_put_be32(img + 36, 0xffffffffu);
    expect_error(-EINVAL, "Active L1 table too large");
    make_v3();
    qcow2_put_be64(img + 24, UINT64_MAX);
    expect_error(-EINVAL, "Image is too big");
    make_v3();
    qcow2_put_be64(img + 24, 1ull << 40); /* needs 2048 L1 entries */
    expect_error(-EINVAL, "L1 table is too small");
    make_v3();
    qcow2_put_be64(img + 40, 100 * CS); /* past EOF */
    expect_error(-EINVAL, "Invalid L1 table offset");
    make_v3();
    qcow2_put_be64(img + 40, 3 * CS + 8); /* unaligned */
    expect_error(-EINVAL, "Invalid L1 table offset");
}

static void test_refcount_table(void **state)
{
    (void)state;
    make_v3();
    qcow2_put_be32(img + 56, 0xffffffffu);
    expect_error(-EINVAL, "Reference count table too large");
    make_v3();
    qcow2_put_be32(img + 56, 0);
    expect_error(-EINVAL, "Image does not contain a reference count table");
    make_v3();
    qcow2_put_be64(img + 48, UINT64_MAX & ~(uint64_t)(CS - 1));
    expect_error(-EINVAL, "Invalid reference count table offset");
    make_v3();
    qcow2_put_be32(img + 96, 7);
    expect_error(-EINVAL,
                 "Reference count entry width too large; may not exceed 64 "
                 "bits");
}

static void test_encryption(void **state)
{
    (void)state;
    make_v3();
    qcow2_put_be32(img + 32, 2);
    expect_error(-ENOTSUP,
                 "Encrypted qcow2 images are not supported (encryption "
                 "method 2)");
}

static void test_unknown_features(void **state)
{
    (void)state;
    make_v3();
    qcow2_put_be64(img + 72, 1ull << 40);
    expect_error(-ENOTSUP, "Unsupported qcow2 feature(s): Unknown incompatible "
                           "feature: 10000000000");

    /* Named by the feature table: extended L2 (bit 4) + external data file
     * (bit 2, named) + an unknown bit. */
    make_v3();
    qcow2_put_be64(img + 72, (1ull << 4) | (1ull << 2) | (1ull << 9));
    qcow2_put_be32(img + 112, QCOW2_EXT_FEATURES);
    qcow2_put_be32(img + 116, 96);
    img[120] = 0;
    img[121] = 2;
    strcpy((char *)img + 122, "external data file");
    img[168] = 0;
    img[169] = 4;
    strcpy((char *)img + 170, "extended L2 entries");
    expect_error(-ENOTSUP,
                 "Unsupported qcow2 feature(s): external data file, extended "
                 "L2 entries, Unknown incompatible feature: 200");
}

static void test_zstd_refused(void **state)
{
    (void)state;
    make_v3();
    qcow2_put_be64(img + 72, QCOW2_INCOMPAT_COMPRESSION);
    img[104] = 1;
    expect_error(-ENOTSUP, "qcow2: zstd compression is not supported");
    make_v3();
    img[104] = 1; /* type set without the feature bit */
    expect_error(-EINVAL,
                 "qcow2: Compression type incompatible feature bit must be "
                 "set");
}

static void add_backing(const char *name, const char *fmt)
{
    size_t off = 112;

    if (fmt) {
        qcow2_put_be32(img + off, QCOW2_EXT_BACKING_FMT);
        qcow2_put_be32(img + off + 4, (uint32_t)strlen(fmt));
        memcpy(img + off + 8, fmt, strlen(fmt));
        off += 8 + ((strlen(fmt) + 7) & ~(size_t)7);
    }
    /* An unknown extension that must survive rewrites. */
    qcow2_put_be32(img + off, 0x12345678u);
    qcow2_put_be32(img + off + 4, 3);
    memcpy(img + off + 8, "abc", 3);
    off += 16;
    off += 8; /* end marker */
    memcpy(img + off, name, strlen(name));
    qcow2_put_be64(img + 8, off);
    qcow2_put_be32(img + 16, (uint32_t)strlen(name));
}

static void test_backing_and_rebuild(void **state)
{
    struct qcow2_meta m, m2;
    static uint8_t out[CS];

    (void)state;
    make_v3();
    add_backing("base.qcow2", "qcow2");
    assert_int_equal(parse(&m), 0);
    assert_true(m.has_backing);
    assert_string_equal(m.backing_file, "base.qcow2");
    assert_string_equal(m.backing_fmt, "qcow2");

    assert_int_equal(qcow2_build_cluster0(img, &m, "other.raw", "raw", out, msg,
                                          sizeof(msg)),
                     0);
    memcpy(img, out, CS);
    assert_int_equal(parse(&m2), 0);
    assert_string_equal(m2.backing_file, "other.raw");
    assert_string_equal(m2.backing_fmt, "raw");
    /* The unknown extension is still there, right after the format. */
    assert_int_equal(qcow2_be32(img + 112 + 16), 0x12345678u);
    assert_memory_equal(img + 112 + 24, "abc", 3);

    /* Dropping the backing removes name and format. */
    assert_int_equal(
        qcow2_build_cluster0(img, &m2, NULL, NULL, out, msg, sizeof(msg)), 0);
    memcpy(img, out, CS);
    assert_int_equal(parse(&m), 0);
    assert_false(m.has_backing);
    assert_string_equal(m.backing_fmt, "");
    assert_int_equal(qcow2_be64(img + 8), 0);
}

static void test_rebuild_no_space(void **state)
{
    struct qcow2_meta m;
    static uint8_t small[512], out[512];
    char name[600];

    (void)state;
    make_v3();
    qcow2_put_be32(img + 20, 9);
    qcow2_put_be64(img + 24, 1 << 15);
    qcow2_put_be32(img + 36, 1);
    qcow2_put_be64(img + 40, 3 * 512);
    qcow2_put_be64(img + 48, 512);
    memcpy(small, img, 512);
    assert_int_equal(
        qcow2_parse_header(small, 512, FILE_SIZE, &m.h, msg, sizeof(msg)), 0);
    assert_int_equal(qcow2_parse_extensions(small, 512, &m, msg, sizeof(msg)),
                     0);
    memset(name, 'a', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    assert_int_equal(
        qcow2_build_cluster0(small, &m, name, "qcow2", out, msg, sizeof(msg)),
        -ENOSPC);
    name[300] = '\0';
    assert_int_equal(
        qcow2_build_cluster0(small, &m, name, "qcow2", out, msg, sizeof(msg)),
        0);
}

static void test_bad_extensions(void **state)
{
    (void)state;
    make_v3();
    qcow2_put_be32(img + 112, 0x12345678u);
    qcow2_put_be32(img + 116, 0xfffffff0u);
    expect_error(-EINVAL, "Invalid qcow2 header extension 0x12345678: length "
                          "4294967280 exceeds the header area");
    make_v3();
    qcow2_put_be32(img + 112, QCOW2_EXT_BACKING_FMT);
    qcow2_put_be32(img + 116, 200);
    expect_error(-EINVAL, "Invalid backing file format extension (length 200)");
    make_v3();
    qcow2_put_be64(img + 8, CS - 4);
    qcow2_put_be32(img + 16, 100);
    expect_error(-EINVAL, "Invalid backing file offset");
    make_v3();
    qcow2_put_be64(img + 8, 200);
    qcow2_put_be32(img + 16, 2000);
    expect_error(-EINVAL, "Backing file name too long");
}

static void test_truncated(void **state)
{
    struct qcow2_header h;

    (void)state;
    make_v3();
    assert_int_equal(qcow2_parse_header(img, 50, 50, &h, msg, sizeof(msg)),
                     -EINVAL);
    assert_string_equal(msg, "qcow2 header is truncated");
    assert_int_equal(qcow2_parse_header(img, 4, 4, &h, msg, sizeof(msg)),
                     -EINVAL);
    assert_string_equal(msg, "Image is not in qcow2 format");
    /* Tables past the end of a truncated file. */
    assert_int_equal(qcow2_parse_header(img, 112, 2 * CS, &h, msg, sizeof(msg)),
                     -EINVAL);
    assert_string_equal(msg, "Invalid L1 table offset");
}

static void test_l2_types(void **state)
{
    (void)state;
    assert_int_equal(qcow2_l2_type(0, 3), QCOW2_CL_UNALLOCATED);
    assert_int_equal(qcow2_l2_type(1, 3), QCOW2_CL_ZERO_PLAIN);
    assert_int_equal(qcow2_l2_type(0x50000 | 1 | QCOW2_OFLAG_COPIED, 3),
                     QCOW2_CL_ZERO_ALLOC);
    assert_int_equal(qcow2_l2_type(0x50000 | QCOW2_OFLAG_COPIED, 3),
                     QCOW2_CL_NORMAL);
    /* v2 has no zero flag. */
    assert_int_equal(qcow2_l2_type(1, 2), QCOW2_CL_UNALLOCATED);
    assert_int_equal(qcow2_l2_type(QCOW2_OFLAG_COMPRESSED | 0x1234, 3),
                     QCOW2_CL_COMPRESSED);
}

static void test_compressed_range(void **state)
{
    uint64_t off, n;
    /* 64 KiB clusters: x = 62 - 8 = 54; 3 additional sectors. */
    uint64_t e = QCOW2_OFLAG_COMPRESSED | (3ull << 54) | 0x30200;

    (void)state;
    qcow2_compressed_range(e, 16, &off, &n);
    assert_int_equal(off, 0x30200);
    assert_int_equal(n, 4 * 512);
    e = QCOW2_OFLAG_COMPRESSED | (0ull << 54) | 0x30210;
    qcow2_compressed_range(e, 16, &off, &n);
    assert_int_equal(off, 0x30210);
    assert_int_equal(n, 512 - 0x10);
}

static void test_refcounts(void **state)
{
    uint8_t block[64];

    (void)state;
    for (unsigned order = 0; order <= 6; order++) {
        unsigned entries = (unsigned)(sizeof(block) * 8 >> order);
        uint64_t max = qcow2_refcount_max(order);

        memset(block, 0, sizeof(block));
        for (unsigned i = 0; i < entries; i++) {
            qcow2_refcount_set(block, i, order, (i * 7 + 1) & max);
        }
        for (unsigned i = 0; i < entries; i++) {
            assert_int_equal(qcow2_refcount_get(block, i, order),
                             (i * 7 + 1) & max);
        }
        qcow2_refcount_set(block, 1, order, max);
        assert_int_equal(qcow2_refcount_get(block, 1, order), max);
        assert_int_equal(qcow2_refcount_get(block, 0, order), 1);
    }
    /* Sub-byte entries are packed from the least significant bit. */
    memset(block, 0, sizeof(block));
    qcow2_refcount_set(block, 0, 0, 1);
    qcow2_refcount_set(block, 3, 1, 2);
    assert_int_equal(block[0], 0x81);
    /* 16-bit entries are big-endian. */
    memset(block, 0, sizeof(block));
    qcow2_refcount_set(block, 1, 4, 0x0102);
    assert_int_equal(block[2], 1);
    assert_int_equal(block[3], 2);
    assert_int_equal(qcow2_refcount_max(6), UINT64_MAX);
    assert_int_equal(qcow2_refcount_max(4), 0xffff);
}

static void test_l1_needed(void **state)
{
    (void)state;
    assert_int_equal(qcow2_l1_entries_needed(0, 16), 0);
    assert_int_equal(qcow2_l1_entries_needed(1, 16), 1);
    assert_int_equal(qcow2_l1_entries_needed(512ull << 20, 16), 1);
    assert_int_equal(qcow2_l1_entries_needed((512ull << 20) + 1, 16), 2);
    assert_int_equal(qcow2_l1_entries_needed(1ull << 62, 9), 1ull << 47);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_v3),
        cmocka_unit_test(test_valid_v2),
        cmocka_unit_test(test_bad_magic),
        cmocka_unit_test(test_bad_version),
        cmocka_unit_test(test_cluster_bits),
        cmocka_unit_test(test_header_length),
        cmocka_unit_test(test_huge_l1),
        cmocka_unit_test(test_refcount_table),
        cmocka_unit_test(test_encryption),
        cmocka_unit_test(test_unknown_features),
        cmocka_unit_test(test_zstd_refused),
        cmocka_unit_test(test_backing_and_rebuild),
        cmocka_unit_test(test_rebuild_no_space),
        cmocka_unit_test(test_bad_extensions),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_l2_types),
        cmocka_unit_test(test_compressed_range),
        cmocka_unit_test(test_refcounts),
        cmocka_unit_test(test_l1_needed),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
