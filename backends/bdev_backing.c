/* Backing-chain names (see bdev_backing.h). */
#include "backends/bdev_backing.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/bdev.h"

bool bdev_chain_contains(struct bdev *top, struct bdev *n)
{
    for (struct bdev *i = top; i; i = bdev_chain_next(i)) {
        if (i == n) {
            return true;
        }
    }
    return false;
}

bool bdev_path_has_protocol(const char *path)
{
    return path[strcspn(path, ":/")] == ':';
}

/* `name` relative to the directory of the node's image file (QEMU's
 * bdrv_make_absolute_filename), NULL when that has no plain name. */
static char *relative_to(struct bdev *bs, const char *name)
{
    const char *file = NULL, *slash;
    char *out;

    if (name[0] == '/' || bdev_path_has_protocol(name)) {
        return strdup(name);
    }
    for (struct bdev *c = bs; c; c = bdev_file_child(c)) {
        file = bdev_filename(c);
    }
    if (!file || !file[0] || bdev_path_has_protocol(file)) {
        return NULL;
    }
    slash = strrchr(file, '/');
    if (asprintf(&out, "%.*s%s", slash ? (int)(slash - file + 1) : 0, file,
                 name) < 0) {
        return NULL;
    }
    return out;
}

static bool same_real_path(const char *a, const char *b)
{
    char ra[PATH_MAX], rb[PATH_MAX];

    return a && b && realpath(a, ra) && realpath(b, rb) && !strcmp(ra, rb);
}

struct bdev *bdev_find_backing_image(struct bdev *top, const char *name)
{
    for (struct bdev *curr = bdev_skip_filters(top); curr && bdev_backing(curr);
         curr = bdev_skip_filters(bdev_backing(curr))) {
        struct bdev *below = bdev_skip_filters(bdev_backing(curr));
        char *header = bdev_header_backing(curr), *a = NULL, *b = NULL;
        bool found;

        if (bdev_backing_overridden(curr)) {
            a = bdev_query_filename(below);
            found = a && !strcmp(name, a);
        } else if (!header) {
            found = false;
        } else if (bdev_path_has_protocol(name) ||
                   bdev_path_has_protocol(header)) {
            b = relative_to(curr, header);
            found = !strcmp(name, header) || (b && !strcmp(name, b));
        } else {
            a = relative_to(curr, name);
            b = relative_to(curr, header);
            found = same_real_path(a, b);
        }
        free(header);
        free(a);
        free(b);
        if (found) {
            return below;
        }
    }
    return NULL;
}
