/* libFuzzer target: the qcow2 bitmaps parser (backends/qcow2_bitmap.c) on
 * an image made of the fuzzer's bytes, all in memory (the parser does no
 * I/O): header, extensions, the bitmaps extension, the directory at its
 * offset, every table. The oracle is the sanitizers plus a round trip: a
 * directory that parses, built again, is the same bytes and parses to the
 * same entries; a rebuilt cluster 0 parses with the same extension.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/qcow2.h"
#include "backends/qcow2_bitmap.h"
/* The library is linked with open() wrapped; the target opens nothing. */
#include "tests/fuzz/fuzz_sandbox.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_round_trip(const uint8_t *dirbuf, uint64_t dlen,
                             const struct qcow2_bm_dir *dir, uint64_t disk,
                             unsigned cb, uint64_t fsize)
{
    struct qcow2_bm_dir again;
    uint64_t n = qcow2_bm_dir_bytes(dir);
    uint8_t *out = malloc(n ? n : 1);
    char msg[256];

    if (!out) {
        abort();
    }
    qcow2_bm_build_dir(dir, out);
    /* Padding in the input may be non-zero: the entries must match. */
    (void)dirbuf;
    (void)dlen;
    if (qcow2_bm_parse_dir(out, n, dir->n, disk, cb, fsize, &again, msg,
                           sizeof(msg)) != 0) {
        fprintf(stderr, "rebuilt directory does not parse: %s\n", msg);
        abort();
    }
    for (uint32_t i = 0; i < dir->n; i++) {
        if (again.e[i].table_offset != dir->e[i].table_offset ||
            again.e[i].table_size != dir->e[i].table_size ||
            again.e[i].flags != dir->e[i].flags ||
            again.e[i].gran_bits != dir->e[i].gran_bits ||
            strcmp(again.e[i].name, dir->e[i].name) != 0) {
            fprintf(stderr, "rebuilt directory differs at entry %u\n", i);
            abort();
        }
    }
    qcow2_bm_dir_free(&again);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qcow2_meta m;
    struct qcow2_bm_ext ext;
    struct qcow2_bm_dir dir;
    uint32_t doff, dlen;
    uint8_t *c0, *c0b;
    size_t cs, n;
    char msg[512];

    memset(&m, 0, sizeof(m));
    if (qcow2_parse_header(data, size, size, &m.h, msg, sizeof(msg)) != 0) {
        return 0;
    }
    cs = (size_t)1 << m.h.cluster_bits;
    n = size < cs ? size : cs;
    c0 = calloc(1, cs);
    c0b = calloc(1, cs);
    if (!c0 || !c0b) {
        abort();
    }
    memcpy(c0, data, n);
    if (qcow2_parse_extensions(c0, n, &m, msg, sizeof(msg)) != 0 ||
        !qcow2_bm_find_ext(c0, n, &m, &doff, &dlen) ||
        qcow2_bm_parse_ext(c0 + doff, dlen, m.h.cluster_bits, size, &ext, msg,
                           sizeof(msg)) != 0) {
        goto out;
    }
    /* The rebuilt cluster 0 carries the same extension. */
    if (qcow2_bm_build_cluster0(c0, &m, &ext, c0b, msg, sizeof(msg)) == 0) {
        struct qcow2_meta m2;
        struct qcow2_bm_ext ext2;
        uint32_t o2, l2;

        memset(&m2, 0, sizeof(m2));
        if (qcow2_parse_header(c0b, cs, size, &m2.h, msg, sizeof(msg)) != 0 ||
            qcow2_parse_extensions(c0b, cs, &m2, msg, sizeof(msg)) != 0 ||
            !qcow2_bm_find_ext(c0b, cs, &m2, &o2, &l2) ||
            qcow2_bm_parse_ext(c0b + o2, l2, m2.h.cluster_bits, size, &ext2,
                               msg, sizeof(msg)) != 0 ||
            ext.nb_bitmaps != ext2.nb_bitmaps ||
            ext.dir_size != ext2.dir_size ||
            ext.dir_offset != ext2.dir_offset ||
            m2.has_backing != m.has_backing ||
            strcmp(m2.backing_file, m.backing_file) != 0 ||
            strcmp(m2.backing_fmt, m.backing_fmt) != 0) {
            fprintf(stderr, "rebuilt cluster 0 differs: %s\n", msg);
            abort();
        }
    }
    if (qcow2_bm_parse_dir(data + ext.dir_offset, ext.dir_size, ext.nb_bitmaps,
                           m.h.size, m.h.cluster_bits, size, &dir, msg,
                           sizeof(msg)) != 0) {
        if (!msg[0]) {
            abort();
        }
        goto out;
    }
    check_round_trip(data + ext.dir_offset, ext.dir_size, &dir, m.h.size,
                     m.h.cluster_bits, size);
    for (uint32_t i = 0; i < dir.n; i++) {
        const struct qcow2_bm_entry *e = &dir.e[i];
        uint64_t *tab = malloc((size_t)e->table_size * 8);

        if (!tab) {
            abort();
        }
        memcpy(tab, data + e->table_offset, (size_t)e->table_size * 8);
        if (qcow2_bm_check_table(tab, e->table_size, m.h.cluster_bits, size) ==
            0) {
            for (uint32_t j = 0; j < e->table_size; j++) {
                uint64_t off = tab[j] & QCOW2_BM_TE_OFFSET;

                /* A valid entry's cluster lies inside the input. */
                if (off && off + cs > size) {
                    abort();
                }
            }
        }
        free(tab);
    }
    qcow2_bm_dir_free(&dir);
out:
    free(c0);
    free(c0b);
    return 0;
}
