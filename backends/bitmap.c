/* Dirty bitmaps (see bitmap.h): one bit per granule in 64-bit words. */
#include "backends/bitmap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backends/bdev.h"

struct bitmap {
    uint64_t size;
    uint32_t granularity;
    unsigned shift;  /* log2(granularity) */
    uint64_t nbits;  /* granules */
    uint64_t *words; /* nbits rounded up to words */
    uint64_t ndirty; /* set bits */
    struct bdev *bs; /* attached node, or NULL */
    struct bitmap *next_attached;
};

/* Attached bitmaps; the write hook walks them (few: one per backup). */
static struct bitmap *attached;

struct bitmap *bitmap_new(uint64_t size, uint32_t granularity)
{
    struct bitmap *bm;

    if (granularity < 512 || (granularity & (granularity - 1))) {
        return NULL;
    }
    bm = calloc(1, sizeof(*bm));
    if (!bm) {
        return NULL;
    }
    bm->size = size;
    bm->granularity = granularity;
    bm->shift = (unsigned)__builtin_ctz(granularity);
    bm->nbits = (size + granularity - 1) >> bm->shift;
    bm->words = calloc(bm->nbits / 64 + 1, sizeof(uint64_t));
    if (!bm->words) {
        free(bm);
        return NULL;
    }
    return bm;
}

void bitmap_free(struct bitmap *bm)
{
    if (!bm) {
        return;
    }
    bitmap_detach(bm);
    free(bm->words);
    free(bm);
}

uint64_t bitmap_size(const struct bitmap *bm)
{
    return bm->size;
}

uint32_t bitmap_granularity(const struct bitmap *bm)
{
    return bm->granularity;
}

/* Bits [from, to) of the word, as a mask (0 <= from < to <= 64). */
static uint64_t mask_of(unsigned from, unsigned to)
{
    uint64_t hi = to == 64 ? ~0ULL : (1ULL << to) - 1;

    return hi & ~((1ULL << from) - 1);
}

/* Sets (on) or clears granules [first, end). */
static void bits_apply(struct bitmap *bm, uint64_t first, uint64_t end, bool on)
{
    while (first < end) {
        uint64_t w = first / 64;
        unsigned from = (unsigned)(first % 64);
        unsigned to = end - w * 64 >= 64 ? 64 : (unsigned)(end - w * 64);
        uint64_t m = mask_of(from, to);
        uint64_t before = bm->words[w];

        bm->words[w] = on ? before | m : before & ~m;
        bm->ndirty -= (uint64_t)__builtin_popcountll(before & m);
        bm->ndirty += (uint64_t)__builtin_popcountll(bm->words[w] & m);
        first = w * 64 + to;
    }
}

void bitmap_set(struct bitmap *bm, uint64_t offset, uint64_t bytes)
{
    uint64_t end;

    if (offset >= bm->size || !bytes) {
        return;
    }
    end = bytes > bm->size - offset ? bm->size : offset + bytes;
    bits_apply(bm, offset >> bm->shift,
               (end + bm->granularity - 1) >> bm->shift, true);
}

void bitmap_reset(struct bitmap *bm, uint64_t offset, uint64_t bytes)
{
    uint64_t end, first, last;

    if (offset >= bm->size || !bytes) {
        return;
    }
    end = bytes > bm->size - offset ? bm->size : offset + bytes;
    first = (offset + bm->granularity - 1) >> bm->shift;
    last = end == bm->size ? bm->nbits : end >> bm->shift;
    if (first < last) {
        bits_apply(bm, first, last, false);
    }
}

void bitmap_set_all(struct bitmap *bm)
{
    bits_apply(bm, 0, bm->nbits, true);
}

void bitmap_reset_all(struct bitmap *bm)
{
    memset(bm->words, 0, (bm->nbits / 64 + 1) * sizeof(uint64_t));
    bm->ndirty = 0;
}

static bool bit(const struct bitmap *bm, uint64_t i)
{
    return bm->words[i / 64] >> (i % 64) & 1;
}

bool bitmap_get(const struct bitmap *bm, uint64_t offset)
{
    return offset < bm->size && bit(bm, offset >> bm->shift);
}

uint64_t bitmap_count(const struct bitmap *bm)
{
    uint64_t n = bm->ndirty << bm->shift;

    /* The last granule may reach past the end. */
    if (bm->nbits && bit(bm, bm->nbits - 1)) {
        n -= (bm->nbits << bm->shift) - bm->size;
    }
    return n;
}

/* The first granule in [first, end) whose bit is `want`; end if none. */
static uint64_t find_bit(const struct bitmap *bm, uint64_t first, uint64_t end,
                         bool want)
{
    while (first < end) {
        uint64_t w = first / 64;
        uint64_t v = want ? bm->words[w] : ~bm->words[w];

        v &= ~0ULL << (first % 64);
        if (v) {
            uint64_t i = w * 64 + (uint64_t)__builtin_ctzll(v);

            return i < end ? i : end;
        }
        first = (w + 1) * 64;
    }
    return end;
}

static int64_t next_of(const struct bitmap *bm, uint64_t offset, uint64_t bytes,
                       bool want)
{
    uint64_t end, i, at;

    if (offset >= bm->size || !bytes) {
        return -1;
    }
    end = bytes > bm->size - offset ? bm->size : offset + bytes;
    i = find_bit(bm, offset >> bm->shift,
                 (end + bm->granularity - 1) >> bm->shift, want);
    at = i << bm->shift;
    if (at < offset) {
        at = offset;
    }
    return at < end ? (int64_t)at : -1;
}

int64_t bitmap_next_dirty(const struct bitmap *bm, uint64_t offset,
                          uint64_t bytes)
{
    return next_of(bm, offset, bytes, true);
}

int64_t bitmap_next_clean(const struct bitmap *bm, uint64_t offset,
                          uint64_t bytes)
{
    return next_of(bm, offset, bytes, false);
}

bool bitmap_next_dirty_area(const struct bitmap *bm, uint64_t offset,
                            uint64_t bytes, uint64_t *start, uint64_t *len)
{
    int64_t s = bitmap_next_dirty(bm, offset, bytes), e;
    uint64_t end;

    if (s < 0) {
        return false;
    }
    end = bytes > bm->size - offset ? bm->size : offset + bytes;
    e = bitmap_next_clean(bm, (uint64_t)s, end - (uint64_t)s);
    *start = (uint64_t)s;
    *len = (e < 0 ? end : (uint64_t)e) - (uint64_t)s;
    return true;
}

int bitmap_merge(struct bitmap *dst, const struct bitmap *src)
{
    uint64_t off = 0, start, len;

    if (dst->size != src->size) {
        return -EINVAL;
    }
    if (dst->granularity == src->granularity) {
        for (uint64_t w = 0; w <= dst->nbits / 64; w++) {
            dst->words[w] |= src->words[w];
        }
        dst->ndirty = 0;
        for (uint64_t w = 0; w <= dst->nbits / 64; w++) {
            dst->ndirty += (uint64_t)__builtin_popcountll(dst->words[w]);
        }
        return 0;
    }
    while (bitmap_next_dirty_area(src, off, src->size - off, &start, &len)) {
        bitmap_set(dst, start, len);
        off = start + len;
    }
    return 0;
}

int bitmap_attach(struct bitmap *bm, struct bdev *bs)
{
    if (bm->bs) {
        return -EBUSY;
    }
    bdev_ref(bs);
    bm->bs = bs;
    bm->next_attached = attached;
    attached = bm;
    return 0;
}

void bitmap_detach(struct bitmap *bm)
{
    struct bdev *bs = bm->bs;

    if (!bs) {
        return;
    }
    for (struct bitmap **pp = &attached; *pp; pp = &(*pp)->next_attached) {
        if (*pp == bm) {
            *pp = bm->next_attached;
            break;
        }
    }
    bm->next_attached = NULL;
    bm->bs = NULL;
    bdev_unref(bs);
}

struct bdev *bitmap_node(const struct bitmap *bm)
{
    return bm->bs;
}

void bitmap_note_write(struct bdev *bs, uint64_t offset, uint64_t bytes)
{
    for (struct bitmap *bm = attached; bm; bm = bm->next_attached) {
        if (bm->bs == bs) {
            bitmap_set(bm, offset, bytes);
        }
    }
}

struct bitmap *bitmap_next_attached(const struct bdev *bs,
                                    const struct bitmap *prev)
{
    struct bitmap *bm = prev ? prev->next_attached : attached;

    while (bm && bm->bs != bs) {
        bm = bm->next_attached;
    }
    return bm;
}
