#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

#include "tests/fakes/scratch.h"

char scratch_dir[256];

int scratch_sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    int st;

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    st = system(cmd);
    return st == -1 ? -1 : WEXITSTATUS(st);
}

const char *scratch_path(const char *name)
{
    static char buf[16][512];
    static int i;

    i = (i + 1) % 16;
    snprintf(buf[i], sizeof(buf[i]), "%s/%s", scratch_dir, name);
    return buf[i];
}

int scratch_make(const char *tag, const char *tools)
{
    const char *tmp = getenv("TMPDIR");

    scratch_dir[0] = '\0';
    if (tools && scratch_sh("for t in %s; do command -v $t >/dev/null || "
                            "exit 1; done",
                            tools) != 0) {
        return 0;
    }
    snprintf(scratch_dir, sizeof(scratch_dir), "/var/tmp/%s.XXXXXX", tag);
    if (mkdtemp(scratch_dir)) {
        return 0;
    }
    snprintf(scratch_dir, sizeof(scratch_dir), "%s/%s.XXXXXX",
             tmp && tmp[0] ? tmp : "/tmp", tag);
    if (mkdtemp(scratch_dir)) {
        return 0;
    }
    perror(scratch_dir);
    scratch_dir[0] = '\0';
    return -1;
}

int scratch_remove(void)
{
    if (!scratch_dir[0] || getenv("KEEP")) {
        return 0;
    }
    return scratch_sh("rm -rf '%s'", scratch_dir) == 0 ? 0 : -1;
}
