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

static mode_t fuzz_mode_arg(int flags, va_list ap)
{
    return (flags & (O_CREAT | __O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int __wrap_open(const char *path, int flags, ...)
{
    va_list ap;
    mode_t mode;

    va_start(ap, flags);
    mode = fuzz_mode_arg(flags, ap);
    va_end(ap);
    if (fuzz_guard && !fuzz_path_allowed(path)) {
        errno = EACCES;
        return -1;
    }
    return __real_open(path, flags, mode);
}

int __wrap_open64(const char *path, int flags, ...)
{
    va_list ap;
    mode_t mode;

    va_start(ap, flags);
    mode = fuzz_mode_arg(flags, ap);
    va_end(ap);
    if (fuzz_guard && !fuzz_path_allowed(path)) {
        errno = EACCES;
        return -1;
    }
    return __real_open64(path, flags, mode);
}

/* Makes the work directory and enters it (relative names resolve there). */
static void fuzz_sandbox_init(const char *tag)
{
    const char *tmp = getenv("TMPDIR");

    snprintf(fuzz_dir, sizeof(fuzz_dir), "%s/fuzz_%s.XXXXXX",
             tmp && strlen(tmp) < 32 ? tmp : "/tmp", tag);
    if (!mkdtemp(fuzz_dir) || chdir(fuzz_dir) < 0) {
        perror("fuzz: work directory");
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
