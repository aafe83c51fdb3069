/* Logging to stderr: one line per event, with a syslog priority prefix
 * ("<3>") when stderr is connected to the journal. */
#ifndef DAEMON_LOG_H
#define DAEMON_LOG_H

enum log_level {
    LOG_LVL_ERROR = 3,
    LOG_LVL_WARNING = 4,
    LOG_LVL_INFO = 6,
    LOG_LVL_DEBUG = 7,
};

/* Parses "error", "warning", "info", "debug"; returns -1 if unknown. */
int log_parse_level(const char *name);
void log_set_level(enum log_level level);
void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
