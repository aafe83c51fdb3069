/* qcow2 metadata: header and extension parsing, validation, cluster 0
 * rebuild, L2 entry decoding and refcount arithmetic. No I/O here, so all of
 * it is unit-tested directly (tests/unit/test_qcow2_meta.c). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "backends/qcow2.h"

uint16_t qcow2_be16(const void *p)
{
    const uint8_t *b = p;
    return (uint16_t)((b[0] << 8) | b[1]);
}

uint32_t qcow2_be32(const void *p)
{
    const uint8_t *b = p;
    return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) |
           ((uint32_t)b[2] << 8) | b[3];
}

uint64_t qcow2_be64(const void *p)
{
    const uint8_t *b = p;
    return ((uint64_t)qcow2_be32(b) << 32) | qcow2_be32(b + 4);
}

void qcow2_put_be32(void *p, uint32_t v)
{
    uint8_t *b = p;
    b[0] = (uint8_t)(v >> 24);
    b[1] = (uint8_t)(v >> 16);
    b[2] = (uint8_t)(v >> 8);
    b[3] = (uint8_t)v;
}

void qcow2_put_be64(void *p, uint64_t v)
{
    qcow2_put_be32(p, (uint32_t)(v >> 32));
    qcow2_put_be32((uint8_t *)p + 4, (uint32_t)v);
}

__attribute__((format(printf, 3, 4))) static int
fail(char *errbuf, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (errbuf && errlen) {
        va_start(ap, fmt);
        vsnprintf(errbuf, errlen, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

/* A table of `bytes` at `off` must be cluster aligned, not overflow, and lie
 * inside the file (a table past EOF can only be a truncated image). */
static bool table_ok(uint64_t off, uint64_t bytes, uint64_t cluster_size,
                     uint64_t file_size)
{
    if (off & (cluster_size - 1)) {
        return false;
    }
    if (off > UINT64_MAX - bytes) {
        return false;
    }
    return off + bytes <= file_size;
}

uint64_t qcow2_l1_entries_needed(uint64_t size, unsigned cluster_bits)
{
    /* One L1 entry maps cluster_size * cluster_size / 8 bytes. */
    unsigned shift = 2 * cluster_bits - 3;
    uint64_t per = 1ull << shift;

    return size / per + ((size & (per - 1)) ? 1 : 0);
}

int qcow2_parse_header(const uint8_t *buf, size_t len, uint64_t file_size,
                       struct qcow2_header *h, char *errbuf, size_t errlen)
{
    uint64_t cs, l1_need;

    memset(h, 0, sizeof(*h));
    if (len < 8 || qcow2_be32(buf) != QCOW2_MAGIC) {
        return fail(errbuf, errlen, "Image is not in qcow2 format");
    }
    h->version = qcow2_be32(buf + 4);
    if (h->version != 2 && h->version != 3) {
        snprintf(errbuf, errlen, "Unsupported qcow2 version %u", h->version);
        return -ENOTSUP;
    }
    if (len < QCOW2_V2_HEADER_LEN ||
        (h->version == 3 && len < QCOW2_V3_HEADER_MIN)) {
        return fail(errbuf, errlen, "qcow2 header is truncated");
    }
    h->backing_file_offset = qcow2_be64(buf + 8);
    h->backing_file_size = qcow2_be32(buf + 16);
    h->cluster_bits = qcow2_be32(buf + 20);
    h->size = qcow2_be64(buf + 24);
    h->crypt_method = qcow2_be32(buf + 32);
    h->l1_size = qcow2_be32(buf + 36);
    h->l1_table_offset = qcow2_be64(buf + 40);
    h->refcount_table_offset = qcow2_be64(buf + 48);
    h->refcount_table_clusters = qcow2_be32(buf + 56);
    h->nb_snapshots = qcow2_be32(buf + 60);
    h->snapshots_offset = qcow2_be64(buf + 64);
    if (h->version == 2) {
        h->refcount_order = 4;
        h->header_length = QCOW2_V2_HEADER_LEN;
    } else {
        h->incompatible_features = qcow2_be64(buf + 72);
        h->compatible_features = qcow2_be64(buf + 80);
        h->autoclear_features = qcow2_be64(buf + 88);
        h->refcount_order = qcow2_be32(buf + 96);
        h->header_length = qcow2_be32(buf + 100);
    }

    if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
        h->cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
        return fail(errbuf, errlen, "Unsupported cluster size: 2^%u",
                    h->cluster_bits);
    }
    cs = 1ull << h->cluster_bits;
    if (h->version == 3) {
        if (h->header_length < QCOW2_V3_HEADER_MIN) {
            return fail(errbuf, errlen, "qcow2 header too short");
        }
        if (h->header_length % 8) {
            return fail(errbuf, errlen,
                        "qcow2 header length %u is not a multiple of 8",
                        h->header_length);
        }
        if (h->header_length > cs) {
            return fail(errbuf, errlen, "qcow2 header exceeds cluster size");
        }
        if (h->header_length > QCOW2_V3_HEADER_MIN) {
            if (len < h->header_length) {
                return fail(errbuf, errlen, "qcow2 header is truncated");
            }
            h->compression_type = buf[104];
        }
    }
    if (file_size < cs && file_size < h->header_length) {
        return fail(errbuf, errlen, "qcow2 header is truncated");
    }
    if (h->refcount_order > 6) {
        return fail(errbuf, errlen,
                    "Reference count entry width too large; may not exceed "
                    "64 bits");
    }
    if (h->crypt_method != 0) {
        snprintf(errbuf, errlen,
                 "Encrypted qcow2 images are not supported (encryption "
                 "method %u)",
                 h->crypt_method);
        return -ENOTSUP;
    }
    if (h->backing_file_offset) {
        if (h->backing_file_size > QCOW2_MAX_BACKING_NAME) {
            return fail(errbuf, errlen, "Backing file name too long");
        }
        if (h->backing_file_offset > cs ||
            h->backing_file_offset + h->backing_file_size > cs ||
            h->backing_file_offset < h->header_length) {
            return fail(errbuf, errlen, "Invalid backing file offset");
        }
    }

    /* L1 table: bounded, large enough for the virtual size, inside the
     * file. */
    if ((uint64_t)h->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
        return fail(errbuf, errlen, "Active L1 table too large");
    }
    if (h->size > (1ull << 62)) {
        return fail(errbuf, errlen, "Image is too big");
    }
    l1_need = qcow2_l1_entries_needed(h->size, h->cluster_bits);
    if (l1_need > QCOW2_MAX_L1_BYTES / 8) {
        return fail(errbuf, errlen, "Image is too big");
    }
    if (h->l1_size < l1_need) {
        return fail(errbuf, errlen, "L1 table is too small");
    }
    if (h->l1_size && !table_ok(h->l1_table_offset, (uint64_t)h->l1_size * 8,
                                cs, file_size)) {
        return fail(errbuf, errlen, "Invalid L1 table offset");
    }

    /* Refcount table. */
    if (h->refcount_table_clusters == 0) {
        return fail(errbuf, errlen,
                    "Image does not contain a reference count table");
    }
    if ((uint64_t)h->refcount_table_clusters * cs > QCOW2_MAX_RT_BYTES) {
        return fail(errbuf, errlen, "Reference count table too large");
    }
    if (!table_ok(h->refcount_table_offset,
                  (uint64_t)h->refcount_table_clusters * cs, cs, file_size)) {
        return fail(errbuf, errlen, "Invalid reference count table offset");
    }

    if (h->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
        return fail(errbuf, errlen, "Too many snapshots");
    }
    if (h->nb_snapshots && !table_ok(h->snapshots_offset, 0, cs, file_size)) {
        return fail(errbuf, errlen, "Invalid snapshot table offset");
    }
    return 0;
}

int qcow2_parse_extensions(const uint8_t *buf, size_t len, struct qcow2_meta *m,
                           char *errbuf, size_t errlen)
{
    const struct qcow2_header *h = &m->h;
    uint64_t cs = 1ull << h->cluster_bits;
    uint64_t end = cs, off;
    bool seen_fmt = false;

    m->has_backing = false;
    m->backing_file[0] = '\0';
    m->backing_fmt[0] = '\0';
    m->features_off = 0;
    m->features_len = 0;

    /* Extensions end where the backing name starts (or at the cluster
     * end); never read beyond what the caller could read. */
    if (h->backing_file_offset) {
        end = h->backing_file_offset;
    }
    if (end > len) {
        end = len;
    }
    off = h->header_length;
    for (;;) {
        uint32_t type, elen;

        if (off + 8 > end) {
            /* No room for an end marker: treat as the end of the area,
             * like an image whose extension area is exactly full. */
            break;
        }
        type = qcow2_be32(buf + off);
        elen = qcow2_be32(buf + off + 4);
        if (type == QCOW2_EXT_END) {
            break;
        }
        if (elen > end - off - 8) {
            return fail(errbuf, errlen,
                        "Invalid qcow2 header extension 0x%08x: length %u "
                        "exceeds the header area",
                        type, elen);
        }
        switch (type) {
        case QCOW2_EXT_BACKING_FMT:
            if (seen_fmt || elen > QCOW2_MAX_BACKING_FMT) {
                return fail(errbuf, errlen,
                            "Invalid backing file format extension (length "
                            "%u)",
                            elen);
            }
            memcpy(m->backing_fmt, buf + off + 8, elen);
            m->backing_fmt[elen] = '\0';
            if (strlen(m->backing_fmt) != elen) {
                return fail(errbuf, errlen,
                            "Invalid backing file format extension");
            }
            seen_fmt = true;
            break;
        case QCOW2_EXT_FEATURES:
            m->features_off = (uint32_t)(off + 8);
            m->features_len = elen;
            break;
        default:
            break;
        }
        off += 8 + (((uint64_t)elen + 7) & ~7ull);
    }
    m->ext_end = (uint32_t)(off < end ? off : end);

    if (h->backing_file_offset) {
        if (h->backing_file_offset + h->backing_file_size > len) {
            return fail(errbuf, errlen, "Invalid backing file offset");
        }
        memcpy(m->backing_file, buf + h->backing_file_offset,
               h->backing_file_size);
        m->backing_file[h->backing_file_size] = '\0';
        if (strlen(m->backing_file) != h->backing_file_size) {
            return fail(errbuf, errlen,
                        "Backing file name contains a NUL byte");
        }
        m->has_backing = h->backing_file_size > 0;
    }
    return 0;
}

int qcow2_check_features(const uint8_t *buf, const struct qcow2_meta *m,
                         char *errbuf, size_t errlen)
{
    const struct qcow2_header *h = &m->h;
    /* Dirty and corrupt are handled by the driver; compression type is
     * fine as long as it is zlib. */
    uint64_t supported = QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT |
                         QCOW2_INCOMPAT_COMPRESSION;
    uint64_t mask = h->incompatible_features & ~supported;
    char names[512] = "";
    size_t used = 0;

    if (mask) {
        for (uint32_t i = 0; i + 48 <= m->features_len; i += 48) {
            const uint8_t *e = buf + m->features_off + i;
            if (e[0] != 0 || e[1] > 63 || !(mask & (1ull << e[1]))) {
                continue;
            }
            used +=
                (size_t)snprintf(names + used, sizeof(names) - used, "%s%.46s",
                                 used ? ", " : "", (const char *)e + 2);
            if (used >= sizeof(names)) {
                used = sizeof(names) - 1;
            }
            mask &= ~(1ull << e[1]);
        }
        if (mask) {
            snprintf(names + used, sizeof(names) - used,
                     "%sUnknown incompatible feature: %llx", used ? ", " : "",
                     (unsigned long long)mask);
        }
        snprintf(errbuf, errlen, "Unsupported qcow2 feature(s): %s", names);
        return -ENOTSUP;
    }
    if (h->incompatible_features & QCOW2_INCOMPAT_COMPRESSION) {
        if (h->header_length <= 104) {
            return fail(errbuf, errlen,
                        "qcow2: compression type field is missing");
        }
        if (h->compression_type == 1) {
            snprintf(errbuf, errlen,
                     "qcow2: zstd compression is not supported");
            return -ENOTSUP;
        }
        if (h->compression_type == 0) {
            return fail(errbuf, errlen,
                        "qcow2: Compression type incompatible feature bit "
                        "set with zlib compression type");
        }
        return fail(errbuf, errlen, "qcow2: unknown compression type: %u",
                    h->compression_type);
    }
    if (h->compression_type != 0) {
        return fail(errbuf, errlen,
                    "qcow2: Compression type incompatible feature bit must "
                    "be set");
    }
    return 0;
}

int qcow2_build_cluster0(const uint8_t *old, const struct qcow2_meta *m,
                         const char *backing, const char *fmt, uint8_t *out,
                         char *errbuf, size_t errlen)
{
    const struct qcow2_header *h = &m->h;
    size_t cs = (size_t)1 << h->cluster_bits;
    size_t blen = backing ? strlen(backing) : 0;
    size_t flen = fmt ? strlen(fmt) : 0;
    size_t off, in;

    if (blen > QCOW2_MAX_BACKING_NAME) {
        snprintf(errbuf, errlen, "Backing file name too long");
        return -EINVAL;
    }
    if (flen > QCOW2_MAX_BACKING_FMT) {
        snprintf(errbuf, errlen, "Backing file format name too long");
        return -EINVAL;
    }
    memset(out, 0, cs);
    memcpy(out, old, h->header_length);
    off = h->header_length;

    if (blen && flen) {
        if (off + 8 + ((flen + 7) & ~(size_t)7) > cs) {
            goto nospace;
        }
        qcow2_put_be32(out + off, QCOW2_EXT_BACKING_FMT);
        qcow2_put_be32(out + off + 4, (uint32_t)flen);
        memcpy(out + off + 8, fmt, flen);
        off += 8 + ((flen + 7) & ~(size_t)7);
    }
    /* Copy every other extension unchanged (unknown ones included). */
    in = h->header_length;
    while (in + 8 <= m->ext_end) {
        uint32_t type = qcow2_be32(old + in);
        uint32_t elen = qcow2_be32(old + in + 4);
        size_t total = 8 + (((size_t)elen + 7) & ~(size_t)7);

        if (type == QCOW2_EXT_END) {
            break;
        }
        if (type != QCOW2_EXT_BACKING_FMT) {
            if (off + total > cs) {
                goto nospace;
            }
            memcpy(out + off, old + in, 8 + (size_t)elen);
            off += total;
        }
        in += total;
    }
    /* End marker. */
    if (off + 8 > cs) {
        goto nospace;
    }
    off += 8;
    if (blen) {
        if (off + blen > cs) {
            goto nospace;
        }
        memcpy(out + off, backing, blen);
        qcow2_put_be64(out + QCOW2_HDR_BACKING_OFFSET, off);
        qcow2_put_be32(out + QCOW2_HDR_BACKING_SIZE, (uint32_t)blen);
    } else {
        qcow2_put_be64(out + QCOW2_HDR_BACKING_OFFSET, 0);
        qcow2_put_be32(out + QCOW2_HDR_BACKING_SIZE, 0);
    }
    return 0;

nospace:
    snprintf(errbuf, errlen,
             "Backing file name and header extensions do not fit in the "
             "first cluster of the image");
    return -ENOSPC;
}

enum qcow2_cluster_type qcow2_l2_type(uint64_t entry, unsigned version)
{
    if (entry & QCOW2_OFLAG_COMPRESSED) {
        return QCOW2_CL_COMPRESSED;
    }
    if (version >= 3 && (entry & QCOW2_OFLAG_ZERO)) {
        return (entry & QCOW2_OFFSET_MASK) ? QCOW2_CL_ZERO_ALLOC
                                           : QCOW2_CL_ZERO_PLAIN;
    }
    if (!(entry & QCOW2_OFFSET_MASK)) {
        return QCOW2_CL_UNALLOCATED;
    }
    return QCOW2_CL_NORMAL;
}

void qcow2_compressed_range(uint64_t entry, unsigned cluster_bits,
                            uint64_t *host_off, uint64_t *nbytes)
{
    unsigned x = 62 - (cluster_bits - 8);
    uint64_t off = entry & ((1ull << x) - 1);
    uint64_t sectors =
        ((entry & ~QCOW2_OFLAG_COPIED & ~QCOW2_OFLAG_COMPRESSED) >> x) + 1;

    *host_off = off;
    *nbytes = sectors * 512 - (off & 511);
}

uint64_t qcow2_refcount_max(unsigned order)
{
    unsigned bits = 1u << order;
    return bits == 64 ? UINT64_MAX : (1ull << bits) - 1;
}

uint64_t qcow2_refcount_get(const uint8_t *block, uint64_t index,
                            unsigned order)
{
    unsigned bits = 1u << order;

    switch (order) {
    case 0:
    case 1:
    case 2: {
        uint64_t bit = index * bits;
        return (block[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
    }
    case 3:
        return block[index];
    case 4:
        return qcow2_be16(block + index * 2);
    case 5:
        return qcow2_be32(block + index * 4);
    default:
        return qcow2_be64(block + index * 8);
    }
}

void qcow2_refcount_set(uint8_t *block, uint64_t index, unsigned order,
                        uint64_t value)
{
    unsigned bits = 1u << order;

    switch (order) {
    case 0:
    case 1:
    case 2: {
        uint64_t bit = index * bits;
        uint8_t mask = (uint8_t)(((1u << bits) - 1) << (bit % 8));
        block[bit / 8] =
            (uint8_t)((block[bit / 8] & ~mask) | ((value << (bit % 8)) & mask));
        break;
    }
    case 3:
        block[index] = (uint8_t)value;
        break;
    case 4:
        block[index * 2] = (uint8_t)(value >> 8);
        block[index * 2 + 1] = (uint8_t)value;
        break;
    case 5:
        qcow2_put_be32(block + index * 4, (uint32_t)value);
        break;
    default:
        qcow2_put_be64(block + index * 8, value);
        break;
    }
}
