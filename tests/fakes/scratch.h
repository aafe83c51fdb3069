/* A scratch directory for unit tests that work on image files, and shell
 * commands (qemu-img, qemu-io) run from them. */
#ifndef TESTS_FAKES_SCRATCH_H
#define TESTS_FAKES_SCRATCH_H

/* The directory, or "" when the tools a test needs are missing (it skips,
 * see SCRATCH_NEED). */
extern char scratch_dir[256];

/* Runs the printf-formatted command with system(): its exit status, or -1
 * when it could not run. */
__attribute__((format(printf, 1, 2))) int scratch_sh(const char *fmt, ...);

/* "scratch_dir/name"; each result stays valid for the next 15 calls. */
const char *scratch_path(const char *name);

/* Makes scratch_dir, /var/tmp/<tag>.XXXXXX (a disk file system: O_DIRECT
 * works), or under $TMPDIR or /tmp when /var/tmp is not writable. When a
 * command of `tools` (e.g. "qemu-img qemu-io"; NULL for none) is not
 * installed, leaves scratch_dir empty and returns 0. -1 when no directory
 * could be made. */
int scratch_make(const char *tag, const char *tools);

/* Removes scratch_dir and everything in it, unless KEEP is set in the
 * environment. 0, or -1 when rm failed. */
int scratch_remove(void);

/* In a cmocka test: skips it when scratch_make() found a tool missing. */
#define SCRATCH_NEED()                                                         \
    do {                                                                       \
        if (!scratch_dir[0]) {                                                 \
            skip();                                                            \
        }                                                                      \
    } while (0)

#endif
