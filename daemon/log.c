#include "daemon/log.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
        /* systemd sets JOURNAL_STREAM when stderr goes to the journal. */
        journal = getenv("JOURNAL_STREAM") != NULL;
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
