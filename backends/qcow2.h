/* qcow2 on-disk format: constants and pure metadata helpers (no I/O), shared
 * by the driver (qcow2.c) and its unit tests. The format is described in
 * QEMU's docs/interop/qcow2.txt; all on-disk numbers are big-endian. */
#ifndef BACKENDS_QCOW2_H
#define BACKENDS_QCOW2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QCOW2_MAGIC            0x514649fbu /* "QFI\xfb" */
#define QCOW2_V2_HEADER_LEN    72u
#define QCOW2_V3_HEADER_MIN    104u
#define QCOW2_MIN_CLUSTER_BITS 9u
#define QCOW2_MAX_CLUSTER_BITS 21u
#define QCOW2_MAX_BACKING_NAME 1023u
#define QCOW2_MAX_BACKING_FMT  63u
/* Implementation limits also used by QEMU: 32 MiB of L1, 8 MiB of refcount
 * table. They bound what a malformed header can make us allocate. */
#define QCOW2_MAX_L1_BYTES  (32u << 20)
#define QCOW2_MAX_RT_BYTES  (8u << 20)
#define QCOW2_MAX_SNAPSHOTS 65536u

#define QCOW2_INCOMPAT_DIRTY        (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT      (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE    (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION  (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2        (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN        0x1full
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)

#define QCOW2_EXT_END         0u
#define QCOW2_EXT_BACKING_FMT 0xe2792acau
#define QCOW2_EXT_FEATURES    0x6803f857u
#define QCOW2_EXT_BITMAPS     0x23852875u
#define QCOW2_EXT_FDE         0x0537be77u
#define QCOW2_EXT_DATA_FILE   0x44415441u

#define QCOW2_OFLAG_COPIED     (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED (1ull << 62)
#define QCOW2_OFLAG_ZERO       (1ull << 0)
#define QCOW2_OFFSET_MASK      0x00fffffffffffe00ull /* L1 / L2 entries */
#define QCOW2_RT_OFFSET_MASK   0xfffffffffffffe00ull

/* Field offsets in the header that the driver rewrites in place. */
#define QCOW2_HDR_BACKING_OFFSET 8u
#define QCOW2_HDR_BACKING_SIZE   16u
#define QCOW2_HDR_RT_OFFSET      48u
#define QCOW2_HDR_RT_CLUSTERS    56u
#define QCOW2_HDR_INCOMPAT       72u
#define QCOW2_HDR_AUTOCLEAR      88u

struct qcow2_header {
    uint32_t version;
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t cluster_bits;
    uint64_t size;
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint32_t refcount_order;
    uint32_t header_length;
    uint8_t compression_type;
};

/* What cluster 0 holds beyond the fixed header. */
struct qcow2_meta {
    struct qcow2_header h;
    bool has_backing;
    char backing_file[QCOW2_MAX_BACKING_NAME + 1];
    char backing_fmt[QCOW2_MAX_BACKING_FMT + 1]; /* "" when absent */
    uint32_t ext_end;      /* end of the extension area (exclusive) */
    uint32_t features_off; /* feature name table data, 0 if absent */
    uint32_t features_len;
};

enum qcow2_cluster_type {
    QCOW2_CL_UNALLOCATED,
    QCOW2_CL_ZERO_PLAIN, /* zero flag, no host cluster */
    QCOW2_CL_ZERO_ALLOC, /* zero flag, preallocated host cluster */
    QCOW2_CL_NORMAL,
    QCOW2_CL_COMPRESSED,
};

/* Big-endian accessors. */
uint16_t qcow2_be16(const void *p);
uint32_t qcow2_be32(const void *p);
uint64_t qcow2_be64(const void *p);
void qcow2_put_be32(void *p, uint32_t v);
void qcow2_put_be64(void *p, uint64_t v);

/* Parses the fixed header from the first `len` bytes of the image (len >= 8
 * is enough to detect the magic) and validates every field against the
 * file size. Fills `errbuf` with a user-facing message on failure. Returns 0
 * or -EINVAL (not qcow2 / malformed) or -ENOTSUP (valid but unsupported). The
 * feature table is needed for "Unsupported qcow2 feature(s)" texts, so
 * incompatible features are checked by qcow2_check_features() afterwards. */
int qcow2_parse_header(const uint8_t *buf, size_t len, uint64_t file_size,
                       struct qcow2_header *h, char *errbuf, size_t errlen);

/* Walks the header extensions and the backing file name in cluster 0 (buf
 * holds `len` bytes, at least min(cluster size, file size)). */
int qcow2_parse_extensions(const uint8_t *buf, size_t len, struct qcow2_meta *m,
                           char *errbuf, size_t errlen);

/* Refuses incompatible features this implementation does not support; the
 * message lists them by name when the image's feature table names them. */
int qcow2_check_features(const uint8_t *buf, const struct qcow2_meta *m,
                         char *errbuf, size_t errlen);

/* Builds a new cluster 0 into `out` (cluster_size bytes): the header of
 * `old` with the backing fields replaced, the extensions of `old` with the
 * backing-format one replaced (or removed when fmt is NULL/empty), then the
 * backing name. Returns 0 or -ENOSPC when it does not fit in one cluster. */
int qcow2_build_cluster0(const uint8_t *old, const struct qcow2_meta *m,
                         const char *backing, const char *fmt, uint8_t *out,
                         char *errbuf, size_t errlen);

/* Number of L1 entries needed to map `size` bytes (UINT64_MAX on overflow). */
uint64_t qcow2_l1_entries_needed(uint64_t size, unsigned cluster_bits);

/* L2 entry decoding. Extended L2 is not supported (refused at open). */
enum qcow2_cluster_type qcow2_l2_type(uint64_t entry, unsigned version);
/* Host offset and byte length (from the offset) of a compressed cluster's
 * data. */
void qcow2_compressed_range(uint64_t entry, unsigned cluster_bits,
                            uint64_t *host_off, uint64_t *nbytes);

/* Refcount block arithmetic for refcount_order 0..6 (1..64 bits). Entries
 * narrower than a byte are packed least significant bit first. */
uint64_t qcow2_refcount_get(const uint8_t *block, uint64_t index,
                            unsigned order);
void qcow2_refcount_set(uint8_t *block, uint64_t index, unsigned order,
                        uint64_t value);
uint64_t qcow2_refcount_max(unsigned order);

/* Rebuilds the refcounts of an image whose dirty bit is set (see
 * qcow2_repair.c): writes new refcount blocks and table past the end of
 * `file` and flushes; the caller then points the header at *rt_offset /
 * *rt_clusters and clears the dirty bit. 0 or -errno with a message. */
struct bdev;
int qcow2_rebuild_refcounts(struct bdev *file, const struct qcow2_header *h,
                            uint64_t *rt_offset, uint32_t *rt_clusters,
                            char *errbuf, size_t errlen);

#endif
