/* Dirty bitmaps: which parts of a node changed, one bit per granule.
 *
 * A bitmap covers [0, size) in granules of `granularity` bytes (a power of
 * two, at least 512); the last granule may reach past size. Setting a byte
 * range marks every granule it touches; resetting clears only the granules
 * it covers whole (a granule partly outside stays as it was), except that
 * the last granule counts as covered when the range reaches `size`.
 * Counts and iteration are in bytes, clipped to size.
 *
 * A bitmap attached to a node (bitmap_attach) is marked by every write that
 * completes on that node - data or write-zeroes, successful or not: a failed
 * write may have changed part of its range. In memory only here; the qcow2
 * form and the QMP commands come with backup.
 */
#ifndef BACKENDS_BITMAP_H
#define BACKENDS_BITMAP_H

#include <stdbool.h>
#include <stdint.h>

struct bdev;
struct bitmap;

/* NULL when granularity is not a power of two >= 512, or without memory. */
struct bitmap *bitmap_new(uint64_t size, uint32_t granularity);
/* Detaches it first if attached. NULL is fine. */
void bitmap_free(struct bitmap *bm);

uint64_t bitmap_size(const struct bitmap *bm);
uint32_t bitmap_granularity(const struct bitmap *bm);

void bitmap_set(struct bitmap *bm, uint64_t offset, uint64_t bytes);
void bitmap_reset(struct bitmap *bm, uint64_t offset, uint64_t bytes);
void bitmap_set_all(struct bitmap *bm);
void bitmap_reset_all(struct bitmap *bm);
/* Whether the granule holding `offset` is dirty (false past the end). */
bool bitmap_get(const struct bitmap *bm, uint64_t offset);
/* Dirty bytes. */
uint64_t bitmap_count(const struct bitmap *bm);

/* The first dirty (clean) byte in [offset, offset + bytes), rounded down to
 * its granule but not below offset; -1 when there is none. bytes is
 * clipped to the bitmap's size. */
int64_t bitmap_next_dirty(const struct bitmap *bm, uint64_t offset,
                          uint64_t bytes);
int64_t bitmap_next_clean(const struct bitmap *bm, uint64_t offset,
                          uint64_t bytes);
/* The dirty run starting at or after `offset` within [offset, offset +
 * bytes): true with *start and *len set, or false when all is clean. */
bool bitmap_next_dirty_area(const struct bitmap *bm, uint64_t offset,
                            uint64_t bytes, uint64_t *start, uint64_t *len);

/* dst |= src. Same size needed (-EINVAL otherwise); granularities may
 * differ (src's dirty bytes are set in dst, rounded out to dst's). */
int bitmap_merge(struct bitmap *dst, const struct bitmap *src);

/* Completed writes through bs mark the bitmap (takes a reference on bs,
 * dropped at detach). One node per bitmap; -EBUSY if attached already. */
int bitmap_attach(struct bitmap *bm, struct bdev *bs);
void bitmap_detach(struct bitmap *bm);
struct bdev *bitmap_node(const struct bitmap *bm);
/* The bitmaps attached to bs, newest first (prev NULL: the first). */
struct bitmap *bitmap_next_attached(const struct bdev *bs,
                                    const struct bitmap *prev);

/* The block layer's hook: a write to bs over [offset, offset + bytes)
 * completed (whatever its result). Cheap when no bitmap is attached. */
void bitmap_note_write(struct bdev *bs, uint64_t offset, uint64_t bytes);

#endif
