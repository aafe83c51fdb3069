/* Nodes by the names QEMU gives them in a backing chain: the backing-name
 * lookup of block-stream's 'base' (QEMU's bdrv_find_backing_image), and
 * chain membership. Built on bdev.h's public accessors only. */
#ifndef BACKENDS_BDEV_BACKING_H
#define BACKENDS_BDEV_BACKING_H

#include <stdbool.h>

struct bdev;

/* n is top or a node down top's chain (bdev_chain_next). */
bool bdev_chain_contains(struct bdev *top, struct bdev *n);

/* QEMU's path_has_protocol(): "proto:..." before any '/'. */
bool bdev_path_has_protocol(const char *path);

/* QEMU's bdrv_find_backing_image(): the node below an image of top's chain
 * whose name matches `name` - the node's current name (json:{...} for a
 * node whose own backing was given by reference) when the image's backing
 * is not its header's, else the header's name, literally for protocol
 * names, otherwise relative to the image's file. NULL: none matches. */
struct bdev *bdev_find_backing_image(struct bdev *top, const char *name);

#endif
