#include "daemon/log.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static enum log_level max_level = LOG_LVL_INFO;
static int journal = -1; /* -1: not checked yet */

int log_parse_level(const char *name)
{
    static const struct {
        const char *name;
        enum log_level level;
    } names[] = {
        {"error", LOG_LVL_ERROR},
        {"warning", LOG_LVL_WARNING},
        {"info", LOG_LVL_INFO},
        {"debug", LOG_LVL_DEBUG},
    };

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (!strcmp(names[i].name, name)) {
            return names[i].level;
        }
    }
    return -1;
}

void log_set_level(enum log_level level)
{
    max_level = level;
}

/* systemd sets JOURNAL_STREAM=DEV:INODE when stderr goes to the journal;
 * it is inherited by children whose stderr may be elsewhere, so compare it
 * with what stderr really is (systemd.exec(5) recommends this). */
static int stderr_is_journal(void)
{
    const char *v = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;

    if (!v || sscanf(v, "%llu:%llu", &dev, &ino) != 2) {
        return 0;
    }
    if (fstat(2, &st) < 0) {
        return 0;
    }
    return st.st_dev == (dev_t)dev && st.st_ino == (ino_t)ino;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    static const char *const tags[] = {[LOG_LVL_ERROR] = "error",
                                       [LOG_LVL_WARNING] = "warning",
                                       [LOG_LVL_INFO] = "info",
                                       [LOG_LVL_DEBUG] = "debug"};
    char line[1024];
    va_list ap;
    int n;

    if (level > max_level) {
        return;
    }
    if (journal < 0) {
        journal = stderr_is_journal();
    }
    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0) {
        return;
    }
    if (journal) {
        fprintf(stderr, "<%d>%s\n", (int)level, line);
    } else {
        fprintf(stderr, "blockjobd: %s: %s\n", tags[level], line);
    }
}
