#include "daemon/notify.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon/client.h"
#include "daemon/log.h"
#include "jobs/job.h"

static struct sockaddr_un addr;
static socklen_t addr_len;
static int notify_fd = -1;
static uv_timer_t watchdog;
static bool stopping;
static char last_status[128];
static uv_loop_t *status_loop;
static uv_timer_t status_timer;
static bool status_pending;

static void on_watchdog(uv_timer_t *t)
{
    (void)t;
    notify_send("WATCHDOG=1");
}

/* WATCHDOG_PID, when present, names the process that must ping; a child
 * started by us would see our variables otherwise. */
static uint64_t watchdog_usec(void)
{
    const char *usec = getenv("WATCHDOG_USEC");
    const char *pid = getenv("WATCHDOG_PID");
    unsigned long long v;
    char *end;

    if (!usec) {
        return 0;
    }
    if (pid && strtol(pid, &end, 10) != (long)getpid()) {
        return 0;
    }
    errno = 0;
    v = strtoull(usec, &end, 10);
    if (errno || end == usec || *end || v == 0) {
        log_msg(LOG_LVL_WARNING, "ignoring malformed WATCHDOG_USEC '%s'", usec);
        return 0;
    }
    return v;
}

int notify_init(uv_loop_t *loop)
{
    const char *path = getenv("NOTIFY_SOCKET");
    uint64_t usec;
    size_t len;

    if (path && *path) {
        len = strlen(path);
        if ((path[0] != '/' && path[0] != '@') ||
            len >= sizeof(addr.sun_path)) {
            log_msg(LOG_LVL_WARNING, "ignoring unusable NOTIFY_SOCKET '%s'",
                    path);
            return -EINVAL;
        }
        addr.sun_family = AF_UNIX;
        memcpy(addr.sun_path, path, len);
        if (path[0] == '@') {
            addr.sun_path[0] = '\0'; /* abstract namespace */
        }
        addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len +
                               (path[0] == '@' ? 0 : 1));
        notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (notify_fd < 0) {
            log_msg(LOG_LVL_WARNING, "cannot create the notify socket: %s",
                    strerror(errno));
            return -errno;
        }
    }
    if (notify_fd >= 0) {
        status_loop = loop;
        uv_timer_init(loop, &status_timer);
        uv_unref((uv_handle_t *)&status_timer);
    }
    usec = watchdog_usec();
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    if (usec && notify_fd >= 0) {
        /* Ping at half the interval, as sd_watchdog_enabled(3) advises. */
        uint64_t ms = usec / 2000 ? usec / 2000 : 1;
        uv_timer_init(loop, &watchdog);
        uv_timer_start(&watchdog, on_watchdog, ms, ms);
        uv_unref((uv_handle_t *)&watchdog); /* never keeps the loop alive */
        log_msg(LOG_LVL_DEBUG, "watchdog: pinging every %llu ms",
                (unsigned long long)ms);
    }
    return 0;
}

int notify_send(const char *msg)
{
    ssize_t n;

    if (notify_fd < 0) {
        return 0;
    }
    n = sendto(notify_fd, msg, strlen(msg), MSG_NOSIGNAL,
               (struct sockaddr *)&addr, addr_len);
    if (n < 0) {
        log_msg(LOG_LVL_DEBUG, "notify '%s': %s", msg, strerror(errno));
        return -errno;
    }
    return 0;
}

/* Counts after the current callback returned: a job announcing "null" is
 * still listed until its event returns, a closing client until its close
 * callback ran. */
static void status_now(uv_timer_t *t)
{
    unsigned jobs = 0, running = 0;
    size_t clients = client_count();
    char msg[sizeof(last_status)];

    for (struct job *j = job_first(); j; j = job_next(j)) {
        jobs++;
        running += job_get_status(j) == JOB_STATUS_RUNNING;
    }
    snprintf(msg, sizeof(msg), "STATUS=%s%u job%s (%u running), %zu client%s",
             stopping ? "stopping: " : "", jobs, jobs == 1 ? "" : "s", running,
             clients, clients == 1 ? "" : "s");
    (void)t;
    status_pending = false;
    if (strcmp(msg, last_status) != 0) {
        memcpy(last_status, msg, sizeof(msg));
        notify_send(msg);
    }
}

void notify_status_update(void)
{
    if (notify_fd < 0 || status_pending || !status_loop) {
        return;
    }
    status_pending = true;
    uv_timer_start(&status_timer, status_now, 0, 0);
}

void notify_stopping(const char *why)
{
    char msg[128];

    stopping = true;
    if (status_pending) {
        uv_timer_stop(&status_timer);
        status_pending = false;
    }
    snprintf(msg, sizeof(msg), "STOPPING=1\nSTATUS=stopping (%s)", why);
    notify_send(msg);
    memcpy(last_status, msg + strlen("STOPPING=1\n"),
           strlen(msg) - strlen("STOPPING=1\n") + 1);
    /* The watchdog keeps pinging while draining: a slow flush is not a
     * hang. Its timer is unref'd, so it does not hold the loop. */
}
