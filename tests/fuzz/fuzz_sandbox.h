/* Shared by the fuzz targets: a private work directory and a guard on
 * open() so that file names chosen by the fuzzer can only reach files in
 * that directory.
 *
 * The targets are linked with -Wl,--wrap=open,--wrap=open64, so every open()
 * of the block layer lands in fuzz_wrap_open() below. While the guard is on
 * (only during one input) an absolute name outside the work directory or a
 * name with a ".." component fails with EACCES, as a file the daemon may not
 * read would. libFuzzer's own file access runs with the guard off.
 */
#ifndef TESTS_FUZZ_SANDBOX_H
#define TESTS_FUZZ_SANDBOX_H

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char fuzz_dir[64];
static bool fuzz_guard;

int __real_open(const char *path, int flags, ...);
int __wrap_open(const char *path, int flags, ...);
int __real_open64(const char *path, int flags, ...);
int __wrap_open64(const char *path, int flags, ...);

static bool fuzz_path_allowed(const char *path)
{
    size_t n = strlen(fuzz_dir);
    const char *p;

    if (path[0] == '/' && (strncmp(path, fuzz_dir, n) != 0 || path[n] != '/')) {
        return false;
    }
    for (p = path; (p = strstr(p, "..")); p += 2) {
        if ((p == path || p[-1] == '/') && (p[2] == '/' || p[2] == '\0')) {
            return false;
        }
    }
    return true;
}

/* The guarded open(): `ap` holds the mode when flags create a file. */
static int fuzz_open(int (*real)(const char *, int, ...), const char *path,
                     int flags, va_list ap)
{
    mode_t mode =
        (flags & (O_CREAT | __O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;

    if (fuzz_guard && !fuzz_path_allowed(path)) {
        errno = EACCES;
        return -1;
    }
    return real(path, flags, mode);
}

int __wrap_open(const char *path, int flags, ...)
{
    va_list ap;
    int fd;

    va_start(ap, flags);
    fd = fuzz_open(__real_open, path, flags, ap);
    va_end(ap);
    return fd;
}

int __wrap_open64(const char *path, int flags, ...)
{
    va_list ap;
    int fd;

    va_start(ap, flags);
    fd = fuzz_open(__real_open64, path, flags, ap);
    va_end(ap);
    return fd;
}

/* Leaves the work directory and removes it (at exit). */
static void fuzz_sandbox_cleanup(void)
{
    char cmd[128];

    if (fuzz_dir[0] && chdir("/") == 0) {
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", fuzz_dir);
        if (system(cmd) != 0) {
            fprintf(stderr, "fuzz: could not remove %s\n", fuzz_dir);
        }
    }
}

/* Makes the work directory, enters it (relative names resolve there) and
 * has it removed at exit; then runs the shell command `setup` there (the
 * images every input starts from), aborting when it fails. */
static void fuzz_sandbox_init(const char *tag, const char *setup)
{
    const char *tmp = getenv("TMPDIR");

    snprintf(fuzz_dir, sizeof(fuzz_dir), "%s/fuzz_%s.XXXXXX",
             tmp && strlen(tmp) < 32 ? tmp : "/tmp", tag);
    if (!mkdtemp(fuzz_dir) || chdir(fuzz_dir) < 0) {
        perror("fuzz: work directory");
        abort();
    }
    atexit(fuzz_sandbox_cleanup);
    if (system(setup) != 0) {
        fprintf(stderr, "fuzz: qemu-img/qemu-io failed\n");
        abort();
    }
}

/* Writes a whole file in the work directory. */
static void fuzz_write_file(const char *name, const void *data, size_t len)
{
    int fd = __real_open(name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    const char *p = data;

    if (fd < 0) {
        perror("fuzz: write file");
        abort();
    }
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n <= 0) {
            perror("fuzz: write file");
            abort();
        }
        p += n;
        len -= (size_t)n;
    }
    close(fd);
}

#endif
