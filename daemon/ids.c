#include "daemon/ids.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Decimal digits only, and not (unsigned)-1, which means "no id" to
 * chown(2) and friends. */
static int parse_number(const char *s, size_t len, unsigned *out)
{
    unsigned long long v = 0;

    if (len == 0) {
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        v = v * 10 + (unsigned)(s[i] - '0');
        if (v >= 0xffffffffULL) {
            return -1;
        }
    }
    *out = (unsigned)v;
    return 0;
}

/* One line of passwd(5) or group(5): returns 0 with the id when the first
 * field is `name` and the third a valid number. */
static int match_line(const char *line, const char *name, unsigned *out)
{
    const char *f1, *f2, *end;
    size_t n = strlen(name);

    while (isblank((unsigned char)*line)) {
        line++;
    }
    if (*line == '#' || strncmp(line, name, n) != 0 || line[n] != ':') {
        return -1;
    }
    f1 = line + n + 1;
    f2 = strchr(f1, ':');
    if (!f2) {
        return -1;
    }
    f2++;
    end = f2 + strcspn(f2, ":\n");
    return parse_number(f2, (size_t)(end - f2), out);
}

int ids_parse(const char *file, const char *arg, unsigned *out)
{
    char *line = NULL;
    size_t cap = 0;
    int ret = -1;
    FILE *f;

    if (*arg >= '0' && *arg <= '9') {
        return parse_number(arg, strlen(arg), out);
    }
    if (!*arg || strchr(arg, ':') || strchr(arg, '\n')) {
        return -1;
    }
    f = fopen(file, "re");
    if (!f) {
        return -1;
    }
    while (getline(&line, &cap, f) >= 0) {
        if (match_line(line, arg, out) == 0) {
            ret = 0;
            break;
        }
    }
    free(line);
    fclose(f);
    return ret;
}

int ids_getpwuid_r(const char *file, uid_t uid, struct passwd *pwd, char *buf,
                   size_t buflen, struct passwd **result)
{
    FILE *f;
    int err;

    *result = NULL;
    f = fopen(file, "re");
    if (!f) {
        return errno;
    }
    for (;;) {
        err = fgetpwent_r(f, pwd, buf, buflen, result);
        if (err) {
            *result = NULL;
            break;
        }
        if (pwd->pw_uid == uid) {
            break;
        }
    }
    fclose(f);
    /* the end of the file: not found, which is not an error */
    return err == ENOENT ? 0 : err;
}

int __wrap_getpwuid_r(uid_t uid, struct passwd *pwd, char *buf, size_t buflen,
                      struct passwd **result)
{
    return ids_getpwuid_r(IDS_PASSWD, uid, pwd, buf, buflen, result);
}
