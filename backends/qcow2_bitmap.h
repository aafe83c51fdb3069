/* qcow2 persistent dirty bitmaps: the bitmaps header extension, the bitmap
 * directory and the bitmap tables (QEMU's docs/interop/qcow2.txt, "Bitmaps
 * extension" and "Bitmaps").
 *
 * Everything here is pure: it parses and builds byte buffers and does no
 * I/O, so a hostile image can only make these functions fail with a
 * message (the fuzz target tests/fuzz/fuzz_qcow2_bitmap.c feeds them). The
 * driver reads the areas, hands them over and writes what they build.
 *
 * Layout, all numbers big-endian:
 *   extension (type QCOW2_EXT_BITMAPS, 24 bytes): nb_bitmaps u32, reserved
 *     u32 (0), directory size u64 (bytes), directory offset u64 (cluster
 *     aligned). Valid only while autoclear bit 0 is set in the header.
 *   directory: entries of 24 bytes + extra data + name, each padded to a
 *     multiple of 8 with zeroes: table offset u64, table size u32
 *     (entries), flags u32 (in_use, auto, extra_data_compatible), type u8
 *     (1 = dirty tracking), granularity bits u8, name size u16, extra data
 *     size u32.
 *   table: one u64 per cluster of bitmap data: bits 9-55 the data
 *     cluster's offset; offset 0 = unallocated, then bit 0 says all zeroes
 *     (0) or all ones (1).
 *   data: bit i of the bitmap (granule i) is bit i % 8 of byte i / 8 of the
 *     data stream; the tail bits of the last cluster are zero.
 */
#ifndef BACKENDS_QCOW2_BITMAP_H
#define BACKENDS_QCOW2_BITMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backends/qcow2.h"

#define QCOW2_AUTOCLEAR_BITMAPS (1ull << 0)

#define QCOW2_BM_EXT_LEN       24u
#define QCOW2_BM_ENTRY_HDR     24u
#define QCOW2_BM_MAX_BITMAPS   65535u
#define QCOW2_BM_MAX_DIR_SIZE  (1024u * QCOW2_BM_MAX_BITMAPS)
#define QCOW2_BM_MAX_TABLE     0x8000000u    /* entries */
#define QCOW2_BM_MAX_PHYS      0x20000000ull /* bytes of bitmap data */
#define QCOW2_BM_MIN_GRAN_BITS 9u
#define QCOW2_BM_MAX_GRAN_BITS 31u
#define QCOW2_BM_MAX_NAME      1023u

#define QCOW2_BM_FLAG_IN_USE       (1u << 0)
#define QCOW2_BM_FLAG_AUTO         (1u << 1)
#define QCOW2_BM_FLAG_EXTRA_COMPAT (1u << 2)
#define QCOW2_BM_FLAGS_KNOWN       0x7u
#define QCOW2_BM_TYPE_DIRTY        1u

#define QCOW2_BM_TE_OFFSET   0x00fffffffffffe00ull
#define QCOW2_BM_TE_ALL_ONES 1ull
#define QCOW2_BM_TE_RESERVED 0xff000000000001feull

struct qcow2_bm_ext {
    uint32_t nb_bitmaps;
    uint64_t dir_size;
    uint64_t dir_offset;
};

struct qcow2_bm_entry {
    uint64_t table_offset;
    uint32_t table_size; /* entries */
    uint32_t flags;
    uint8_t type;
    uint8_t gran_bits;
    char *name; /* NUL-terminated copy (names hold no NUL byte) */
};

struct qcow2_bm_dir {
    uint32_t n;
    struct qcow2_bm_entry *e;
};

/* The bitmaps extension in cluster 0 (buf holds `len` bytes of it, m as
 * parsed by qcow2_parse_extensions): 1 with *data_off / *data_len of its
 * data, 0 when there is none. */
int qcow2_bm_find_ext(const uint8_t *buf, size_t len,
                      const struct qcow2_meta *m, uint32_t *data_off,
                      uint32_t *data_len);

/* Checks the extension's data against the image's cluster size and file
 * size. 0 or -EINVAL with a message. */
int qcow2_bm_parse_ext(const uint8_t *data, uint32_t len, unsigned cluster_bits,
                       uint64_t file_size, struct qcow2_bm_ext *ext,
                       char *errbuf, size_t errlen);

/* Parses the directory (`len` bytes, the extension's directory size) of an
 * image of `disk_size` bytes: nb entries, each within the constraints
 * QEMU 7.2 imposes (table aligned, inside the file, big enough for the
 * disk unless in_use, granularity 2^9..2^31, known flags and type, no
 * extra data, a non-empty name of at most 1023 bytes, unique). Fills dir
 * (free with qcow2_bm_dir_free). 0, -EINVAL or -ENOMEM, with a message. */
int qcow2_bm_parse_dir(const uint8_t *buf, uint64_t len, uint32_t nb,
                       uint64_t disk_size, unsigned cluster_bits,
                       uint64_t file_size, struct qcow2_bm_dir *dir,
                       char *errbuf, size_t errlen);
void qcow2_bm_dir_free(struct qcow2_bm_dir *dir);

/* Converts a table read from disk (n big-endian entries) in place and
 * checks every entry: reserved bits zero, offsets cluster aligned and
 * inside the file, no all-ones flag with an offset. 0 or -EINVAL. */
int qcow2_bm_check_table(uint64_t *table, uint32_t n, unsigned cluster_bits,
                         uint64_t file_size);

/* Bytes of bitmap data for a disk: ceil(ceil(size / granularity) / 8). */
uint64_t qcow2_bm_data_bytes(uint64_t disk_size, unsigned gran_bits);
/* Table entries (data clusters) a bitmap of the disk needs. */
uint64_t qcow2_bm_table_entries(uint64_t disk_size, unsigned gran_bits,
                                unsigned cluster_bits);

/* Whether a bitmap of this granularity and name can be stored in an image
 * of this disk and cluster size; the texts are QEMU 7.2's. */
int qcow2_bm_check_new(uint64_t disk_size, uint32_t granularity,
                       unsigned cluster_bits, const char *name, char *errbuf,
                       size_t errlen);

/* Size of the directory for these entries, and its bytes (out holds
 * qcow2_bm_dir_bytes(dir) bytes). */
uint64_t qcow2_bm_dir_bytes(const struct qcow2_bm_dir *dir);
void qcow2_bm_build_dir(const struct qcow2_bm_dir *dir, uint8_t *out);

/* Builds a new cluster 0 into `out` (cluster size bytes) from `old`: every
 * extension but the bitmaps one kept as it is, then the bitmaps extension
 * for `ext` (none when ext is NULL or has no bitmaps), the end marker and
 * the backing name; autoclear bit 0 set with an extension, cleared
 * without. 0 or -ENOSPC when it does not fit in one cluster. */
int qcow2_bm_build_cluster0(const uint8_t *old, const struct qcow2_meta *m,
                            const struct qcow2_bm_ext *ext, uint8_t *out,
                            char *errbuf, size_t errlen);

#endif
