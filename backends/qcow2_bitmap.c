/* qcow2 persistent dirty bitmaps: parsing and building of the on-disk
 * structures (see qcow2_bitmap.h). No I/O here. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/qcow2_bitmap.h"

__attribute__((format(printf, 3, 4))) static int
bm_fail(char *errbuf, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(errbuf, errlen, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

static uint64_t div_round_up(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

static size_t entry_bytes(size_t name_len, size_t extra_len)
{
    return (QCOW2_BM_ENTRY_HDR + extra_len + name_len + 7) & ~(size_t)7;
}

int qcow2_bm_find_ext(const uint8_t *buf, size_t len,
                      const struct qcow2_meta *m, uint32_t *data_off,
                      uint32_t *data_len)
{
    size_t off = m->h.header_length;
    size_t end = m->ext_end < len ? m->ext_end : len;

    while (off + 8 <= end) {
        uint32_t type = qcow2_be32(buf + off);
        uint32_t elen = qcow2_be32(buf + off + 4);

        if (type == QCOW2_EXT_END || elen > end - off - 8) {
            break;
        }
        if (type == QCOW2_EXT_BITMAPS) {
            *data_off = (uint32_t)(off + 8);
            *data_len = elen;
            return 1;
        }
        off += 8 + (((size_t)elen + 7) & ~(size_t)7);
    }
    return 0;
}

int qcow2_bm_parse_ext(const uint8_t *data, uint32_t len, unsigned cluster_bits,
                       uint64_t file_size, struct qcow2_bm_ext *ext,
                       char *errbuf, size_t errlen)
{
    uint64_t cs = 1ull << cluster_bits;

    if (len != QCOW2_BM_EXT_LEN) {
        return bm_fail(errbuf, errlen, "bitmaps_ext: Invalid extension length");
    }
    ext->nb_bitmaps = qcow2_be32(data);
    ext->dir_size = qcow2_be64(data + 8);
    ext->dir_offset = qcow2_be64(data + 16);
    if (qcow2_be32(data + 4) != 0) {
        return bm_fail(errbuf, errlen,
                       "bitmaps_ext: Reserved field is not zero");
    }
    if (ext->nb_bitmaps > QCOW2_BM_MAX_BITMAPS) {
        return bm_fail(errbuf, errlen,
                       "bitmaps_ext: Image has %u bitmaps, exceeding the QEMU "
                       "supported maximum of %u",
                       ext->nb_bitmaps, QCOW2_BM_MAX_BITMAPS);
    }
    if (ext->nb_bitmaps == 0) {
        return bm_fail(errbuf, errlen,
                       "found bitmaps extension with zero bitmaps");
    }
    if (ext->dir_offset == 0 || (ext->dir_offset & (cs - 1))) {
        return bm_fail(errbuf, errlen,
                       "bitmaps_ext: invalid bitmap directory offset");
    }
    if (ext->dir_size > QCOW2_BM_MAX_DIR_SIZE) {
        return bm_fail(errbuf, errlen,
                       "bitmaps_ext: bitmap directory size (%llu) exceeds "
                       "the maximum supported size (%u)",
                       (unsigned long long)ext->dir_size,
                       QCOW2_BM_MAX_DIR_SIZE);
    }
    if (ext->dir_size == 0) {
        return bm_fail(errbuf, errlen,
                       "Requested bitmap directory size is zero");
    }
    if (ext->dir_offset > file_size ||
        ext->dir_size > file_size - ext->dir_offset) {
        return bm_fail(errbuf, errlen, "Failed to read bitmap directory");
    }
    return 0;
}

uint64_t qcow2_bm_data_bytes(uint64_t disk_size, unsigned gran_bits)
{
    uint64_t bits = div_round_up(disk_size, 1ull << gran_bits);

    return div_round_up(bits, 8);
}

uint64_t qcow2_bm_table_entries(uint64_t disk_size, unsigned gran_bits,
                                unsigned cluster_bits)
{
    return div_round_up(qcow2_bm_data_bytes(disk_size, gran_bits),
                        1ull << cluster_bits);
}

/* QEMU's constraints on one entry (its check_dir_entry): 0 or -EINVAL. */
static int check_entry(const struct qcow2_bm_entry *e, uint64_t disk_size,
                       unsigned cluster_bits, uint64_t file_size)
{
    uint64_t cs = 1ull << cluster_bits;
    uint64_t phys;

    if (e->table_size == 0 || e->table_offset == 0 ||
        (e->table_offset & (cs - 1)) || e->table_size > QCOW2_BM_MAX_TABLE ||
        e->gran_bits > QCOW2_BM_MAX_GRAN_BITS ||
        e->gran_bits < QCOW2_BM_MIN_GRAN_BITS ||
        (e->flags & ~QCOW2_BM_FLAGS_KNOWN) || e->type != QCOW2_BM_TYPE_DIRTY) {
        return -EINVAL;
    }
    phys = (uint64_t)e->table_size * cs;
    if (phys > QCOW2_BM_MAX_PHYS) {
        return -EINVAL;
    }
    /* A bitmap saved correctly covers the whole disk. */
    if (!(e->flags & QCOW2_BM_FLAG_IN_USE) &&
        disk_size > ((phys * 8) << e->gran_bits)) {
        return -EINVAL;
    }
    /* Its table lies inside the file (QEMU finds out when reading it). */
    if (e->table_offset > file_size ||
        (uint64_t)e->table_size * 8 > file_size - e->table_offset) {
        return -EINVAL;
    }
    return 0;
}

void qcow2_bm_dir_free(struct qcow2_bm_dir *dir)
{
    for (uint32_t i = 0; dir->e && i < dir->n; i++) {
        free(dir->e[i].name);
    }
    free(dir->e);
    dir->e = NULL;
    dir->n = 0;
}

int qcow2_bm_parse_dir(const uint8_t *buf, uint64_t len, uint32_t nb,
                       uint64_t disk_size, unsigned cluster_bits,
                       uint64_t file_size, struct qcow2_bm_dir *dir,
                       char *errbuf, size_t errlen)
{
    uint64_t off = 0;
    int ret;

    dir->n = 0;
    dir->e = NULL;
    if (len > QCOW2_BM_MAX_DIR_SIZE || nb > QCOW2_BM_MAX_BITMAPS) {
        return bm_fail(errbuf, errlen,
                       "Requested bitmap directory size is too big");
    }
    /* An entry takes at least 32 bytes: never more entries than that. */
    if (nb > len / 32 + 1) {
        nb = (uint32_t)(len / 32 + 1);
    }
    dir->e = calloc(nb ? nb : 1, sizeof(*dir->e));
    if (!dir->e) {
        snprintf(errbuf, errlen,
                 "Failed to allocate space for bitmap directory");
        return -ENOMEM;
    }
    while (off < len) {
        struct qcow2_bm_entry *e;
        uint32_t extra;
        uint16_t nlen;
        uint64_t size;

        if (len - off < QCOW2_BM_ENTRY_HDR) {
            ret = bm_fail(errbuf, errlen, "Broken bitmap directory");
            goto fail;
        }
        if (dir->n >= nb) {
            ret = bm_fail(errbuf, errlen,
                          "More bitmaps found than specified in header "
                          "extension");
            goto fail;
        }
        nlen = qcow2_be16(buf + off + 18);
        extra = qcow2_be32(buf + off + 20);
        size = entry_bytes(nlen, extra);
        if (size > len - off) {
            ret = bm_fail(errbuf, errlen, "Broken bitmap directory");
            goto fail;
        }
        if (extra != 0) {
            ret = bm_fail(errbuf, errlen, "Bitmap extra data is not supported");
            goto fail;
        }
        e = &dir->e[dir->n];
        e->table_offset = qcow2_be64(buf + off);
        e->table_size = qcow2_be32(buf + off + 8);
        e->flags = qcow2_be32(buf + off + 12);
        e->type = buf[off + 16];
        e->gran_bits = buf[off + 17];
        if (nlen == 0 || nlen > QCOW2_BM_MAX_NAME ||
            memchr(buf + off + QCOW2_BM_ENTRY_HDR, 0, nlen) ||
            check_entry(e, disk_size, cluster_bits, file_size)) {
            ret = bm_fail(
                errbuf, errlen, "Bitmap '%.*s' doesn't satisfy the constraints",
                (int)nlen, (const char *)buf + off + QCOW2_BM_ENTRY_HDR);
            goto fail;
        }
        e->name = strndup((const char *)buf + off + QCOW2_BM_ENTRY_HDR, nlen);
        if (!e->name) {
            snprintf(errbuf, errlen,
                     "Failed to allocate space for bitmap directory");
            ret = -ENOMEM;
            goto fail;
        }
        dir->n++;
        for (uint32_t i = 0; i + 1 < dir->n; i++) {
            if (strcmp(dir->e[i].name, e->name) == 0) {
                ret = bm_fail(errbuf, errlen,
                              "Bitmap '%s' doesn't satisfy the constraints",
                              e->name);
                goto fail;
            }
        }
        off += size;
    }
    if (dir->n != nb) {
        ret = bm_fail(errbuf, errlen,
                      "Less bitmaps found than specified in header "
                      "extension");
        goto fail;
    }
    return 0;

fail:
    qcow2_bm_dir_free(dir);
    return ret;
}

int qcow2_bm_check_table(uint64_t *table, uint32_t n, unsigned cluster_bits,
                         uint64_t file_size)
{
    uint64_t cs = 1ull << cluster_bits;

    for (uint32_t i = 0; i < n; i++) {
        uint64_t v = qcow2_be64(&table[i]);
        uint64_t off = v & QCOW2_BM_TE_OFFSET;

        table[i] = v;
        if (v & QCOW2_BM_TE_RESERVED) {
            return -EINVAL;
        }
        if (off && ((v & QCOW2_BM_TE_ALL_ONES) || (off & (cs - 1)) ||
                    off > file_size || cs > file_size - off)) {
            return -EINVAL;
        }
    }
    return 0;
}

int qcow2_bm_check_new(uint64_t disk_size, uint32_t granularity,
                       unsigned cluster_bits, const char *name, char *errbuf,
                       size_t errlen)
{
    unsigned bits = (unsigned)__builtin_ctz(granularity);
    uint64_t bytes;

    if (bits > QCOW2_BM_MAX_GRAN_BITS) {
        return bm_fail(errbuf, errlen,
                       "Granularity exceeds maximum (%llu bytes)",
                       1ull << QCOW2_BM_MAX_GRAN_BITS);
    }
    if (bits < QCOW2_BM_MIN_GRAN_BITS) {
        return bm_fail(errbuf, errlen,
                       "Granularity is under minimum (%llu bytes)",
                       1ull << QCOW2_BM_MIN_GRAN_BITS);
    }
    bytes = qcow2_bm_data_bytes(disk_size, bits);
    if (bytes > QCOW2_BM_MAX_PHYS || bytes > (uint64_t)QCOW2_BM_MAX_TABLE
                                                 << cluster_bits) {
        return bm_fail(errbuf, errlen,
                       "Too much space will be occupied by the bitmap. Use "
                       "larger granularity");
    }
    if (strlen(name) > QCOW2_BM_MAX_NAME) {
        return bm_fail(errbuf, errlen,
                       "Name length exceeds maximum (%u characters)",
                       QCOW2_BM_MAX_NAME);
    }
    return 0;
}

uint64_t qcow2_bm_dir_bytes(const struct qcow2_bm_dir *dir)
{
    uint64_t n = 0;

    for (uint32_t i = 0; i < dir->n; i++) {
        n += entry_bytes(strlen(dir->e[i].name), 0);
    }
    return n;
}

void qcow2_bm_build_dir(const struct qcow2_bm_dir *dir, uint8_t *out)
{
    for (uint32_t i = 0; i < dir->n; i++) {
        const struct qcow2_bm_entry *e = &dir->e[i];
        size_t nlen = strlen(e->name);
        size_t size = entry_bytes(nlen, 0);

        memset(out, 0, size);
        qcow2_put_be64(out, e->table_offset);
        qcow2_put_be32(out + 8, e->table_size);
        qcow2_put_be32(out + 12, e->flags);
        out[16] = e->type;
        out[17] = e->gran_bits;
        out[18] = (uint8_t)(nlen >> 8);
        out[19] = (uint8_t)nlen;
        memcpy(out + QCOW2_BM_ENTRY_HDR, e->name, nlen);
        out += size;
    }
}

int qcow2_bm_build_cluster0(const uint8_t *old, const struct qcow2_meta *m,
                            const struct qcow2_bm_ext *ext, uint8_t *out,
                            char *errbuf, size_t errlen)
{
    const struct qcow2_header *h = &m->h;
    size_t cs = (size_t)1 << h->cluster_bits;
    size_t blen = m->has_backing ? strlen(m->backing_file) : 0;
    size_t off = h->header_length, in = h->header_length;
    uint64_t autoclear = h->autoclear_features & ~QCOW2_AUTOCLEAR_BITMAPS;

    memset(out, 0, cs);
    memcpy(out, old, h->header_length);
    while (in + 8 <= m->ext_end) {
        uint32_t type = qcow2_be32(old + in);
        uint32_t elen = qcow2_be32(old + in + 4);
        size_t total = 8 + (((size_t)elen + 7) & ~(size_t)7);

        if (type == QCOW2_EXT_END || total > m->ext_end - in) {
            break;
        }
        if (type != QCOW2_EXT_BITMAPS) {
            if (off + total > cs) {
                goto nospace;
            }
            memcpy(out + off, old + in, 8 + (size_t)elen);
            off += total;
        }
        in += total;
    }
    if (ext && ext->nb_bitmaps) {
        if (off + 8 + QCOW2_BM_EXT_LEN > cs) {
            goto nospace;
        }
        qcow2_put_be32(out + off, QCOW2_EXT_BITMAPS);
        qcow2_put_be32(out + off + 4, QCOW2_BM_EXT_LEN);
        qcow2_put_be32(out + off + 8, ext->nb_bitmaps);
        qcow2_put_be64(out + off + 16, ext->dir_size);
        qcow2_put_be64(out + off + 24, ext->dir_offset);
        off += 8 + QCOW2_BM_EXT_LEN;
        autoclear |= QCOW2_AUTOCLEAR_BITMAPS;
    }
    if (off + 8 > cs) {
        goto nospace;
    }
    off += 8; /* end marker: zeroes */
    if (blen) {
        if (off + blen > cs) {
            goto nospace;
        }
        memcpy(out + off, m->backing_file, blen);
        qcow2_put_be64(out + QCOW2_HDR_BACKING_OFFSET, off);
        qcow2_put_be32(out + QCOW2_HDR_BACKING_SIZE, (uint32_t)blen);
    } else {
        qcow2_put_be64(out + QCOW2_HDR_BACKING_OFFSET, 0);
        qcow2_put_be32(out + QCOW2_HDR_BACKING_SIZE, 0);
    }
    if (h->version >= 3) {
        qcow2_put_be64(out + QCOW2_HDR_AUTOCLEAR, autoclear);
    }
    return 0;

nospace:
    snprintf(errbuf, errlen,
             "Header extensions and the backing file name do not fit in "
             "the first cluster of the image");
    return -ENOSPC;
}
