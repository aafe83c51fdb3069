/* blockjobctl: a small QMP client for blockjobd (and qemu-storage-daemon),
 * for people and scripts. One connection per run: greeting, capabilities
 * negotiation, then one command (or an event stream).
 *
 * Exit status (also in --help and blockjobctl(1)):
 *   0  success
 *   1  the daemon answered the command with an error
 *   2  usage error
 *   3  cannot connect, connection lost, or not a QMP server
 *   4  --wait: the job failed
 *   5  --wait: the job was cancelled (by someone, or by a daemon shutdown)
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define EXIT_QMP_ERROR  1
#define EXIT_USAGE      2
#define EXIT_CONNECTION 3
#define EXIT_JOB_FAILED 4
#define EXIT_CANCELLED  5

#define DEFAULT_SOCKET  "/run/blockjobd/qmp.sock"
#define REPLY_TIMEOUT_S 60
#define MAX_LINE        (16u << 20)

struct conn {
    int fd;
    char *buf;
    size_t len, cap;
    json_t *pending; /* events received while waiting for a reply */
    bool shutdown_seen;
};

static const char *prog = "blockjobctl";

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: blockjobctl [--socket PATH] COMMAND [ARGS]\n"
            "Drive blockjobd's block jobs over its QMP socket.\n"
            "\n"
            "Commands:\n"
            "  stream NODE [--base-node B] [--speed N] [--on-error P]\n"
            "         [--job-id ID] [--wait]\n"
            "                         start a block-stream job into NODE; "
            "with --wait,\n"
            "                         follow it to its end (progress bar on "
            "a terminal,\n"
            "                         progress lines otherwise)\n"
            "  create FILE SIZE [--format qcow2|raw] [--backing-file B]\n"
            "         [--backing-fmt F] [--cluster-size N] [--version v2|v3]\n"
            "         [--preallocation off|metadata|falloc|full]\n"
            "         [--lazy-refcounts] [--job-id ID]\n"
            "                         create an image with blockdev-create "
            "jobs and\n"
            "                         wait for them (format: qcow2 by "
            "default)\n"
            "  snapshot NODE OVERLAY  blockdev-snapshot: OVERLAY (added with "
            "backing\n"
            "                         null) becomes the top over NODE\n"
            "  mirror NODE TARGET [--sync full|top|none] [--speed N]\n"
            "         [--on-source-error P] [--on-target-error P] [--job-id ID]"
            " [--wait]\n"
            "                         start a blockdev-mirror job copying NODE "
            "into the\n"
            "                         node TARGET; with --wait, follow it "
            "until READY\n"
            "  complete JOB           pivot a ready mirror to its target and "
            "wait for\n"
            "                         the job's end\n"
            "  jobs                   list the block jobs as a table\n"
            "  pause JOB              pause a job\n"
            "  resume JOB             resume a paused job\n"
            "  cancel JOB [--force]   cancel a job\n"
            "  set-speed JOB N        change a job's speed limit (bytes/s, 0 "
            "= none)\n"
            "  events                 print every event, one JSON object per "
            "line\n"
            "  qmp JSON               send one QMP command, print its return "
            "value\n"
            "\n"
            "Options:\n"
            "  -s, --socket PATH      the daemon's socket (default "
            "$BLOCKJOBD_SOCKET,\n"
            "                         else " DEFAULT_SOCKET ")\n"
            "  -h, --help             show this help and exit\n"
            "Sizes and speeds take a K, M, G or T suffix (powers of 1024).\n"
            "--on-error: report, ignore, stop or enospc.\n"
            "\n"
            "Exit status: 0 success, 1 the daemon refused the command, 2 "
            "usage error,\n"
            "3 connection error, 4 the job failed (--wait), 5 the job was "
            "cancelled\n"
            "(--wait).\n");
}

static int usage_error(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see blockjobctl --help)\n");
    return EXIT_USAGE;
}

static void die_conn(const char *fmt, ...) __attribute__((format(printf, 1, 2)))
__attribute__((noreturn));

static void die_conn(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(EXIT_CONNECTION);
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* "123", "10M", "1.5G": bytes. */
static int parse_bytes(const char *s, long long *out)
{
    char *end;
    double v;
    double mul = 1;

    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || v < 0 || s[0] == '-') {
        return -1;
    }
    switch (*end) {
    case 'k':
    case 'K':
        mul = 1024.0;
        end++;
        break;
    case 'm':
    case 'M':
        mul = 1024.0 * 1024;
        end++;
        break;
    case 'g':
    case 'G':
        mul = 1024.0 * 1024 * 1024;
        end++;
        break;
    case 't':
    case 'T':
        mul = 1024.0 * 1024 * 1024 * 1024;
        end++;
        break;
    default:
        break;
    }
    if (*end || v * mul > 9.2e18) {
        return -1;
    }
    *out = (long long)(v * mul);
    return 0;
}

static const char *human(double bytes, char *buf, size_t len)
{
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;

    while (bytes >= 1024 && u < 4) {
        bytes /= 1024;
        u++;
    }
    if (u == 0) {
        snprintf(buf, len, "%.0f %s", bytes, units[u]);
    } else {
        snprintf(buf, len, "%.1f %s", bytes, units[u]);
    }
    return buf;
}

/* ---- connection ------------------------------------------------------- */

/* Reads one line (without CR LF) and parses it. Returns NULL on timeout
 * (timeout_ms >= 0); dies on EOF or garbage. */
static json_t *read_msg(struct conn *c, int timeout_ms)
{
    for (;;) {
        char *nl = c->len ? memchr(c->buf, '\n', c->len) : NULL;

        if (nl) {
            size_t n = (size_t)(nl - c->buf);
            json_error_t jerr;
            json_t *v;

            v = json_loadb(c->buf, n, 0, &jerr);
            memmove(c->buf, nl + 1, c->len - n - 1);
            c->len -= n + 1;
            if (!v || !json_is_object(v)) {
                die_conn("the daemon sent something that is not a QMP "
                         "message: %s",
                         jerr.text);
            }
            return v;
        }
        if (c->len == c->cap) {
            if (c->cap >= MAX_LINE) {
                die_conn("a message from the daemon is too long");
            }
            c->cap = c->cap ? c->cap * 2 : 65536;
            c->buf = realloc(c->buf, c->cap);
            if (!c->buf) {
                die_conn("out of memory");
            }
        }
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        int r = poll(&p, 1, timeout_ms);

        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r == 0) {
            return NULL;
        }
        ssize_t got = read(c->fd, c->buf + c->len, c->cap - c->len);

        if (got < 0 && errno == EINTR) {
            continue;
        }
        if (got <= 0) {
            if (c->shutdown_seen) {
                die_conn("the daemon shut down");
            }
            die_conn("connection to the daemon lost%s%s", got < 0 ? ": " : "",
                     got < 0 ? strerror(errno) : "");
        }
        c->len += (size_t)got;
    }
}

static void send_msg(struct conn *c, json_t *msg)
{
    char *text = json_dumps(msg, JSON_COMPACT);
    size_t len, off = 0;

    if (!text) {
        die_conn("out of memory");
    }
    len = strlen(text);
    text[len] = '\n'; /* overwrites the NUL; len + 1 bytes go out */
    while (off < len + 1) {
        ssize_t n = send(c->fd, text + off, len + 1 - off, MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            free(text);
            die_conn("cannot send to the daemon: %s", strerror(errno));
        }
        off += (size_t)n;
    }
    free(text);
}

static bool is_event(json_t *m)
{
    return json_object_get(m, "event") != NULL;
}

/* Sends a command and waits for its reply; events seen meanwhile are kept
 * in c->pending, in order. Steals `args` (may be NULL). Returns the reply. */
static json_t *execute(struct conn *c, const char *cmd, json_t *args)
{
    json_t *msg = json_pack("{s:s}", "execute", cmd), *m;
    double deadline = now() + REPLY_TIMEOUT_S;

    if (args) {
        json_object_set_new(msg, "arguments", args);
    }
    send_msg(c, msg);
    json_decref(msg);
    for (;;) {
        int left = (int)((deadline - now()) * 1000);

        m = left > 0 ? read_msg(c, left) : NULL;
        if (!m) {
            die_conn("no reply to '%s' within %d seconds", cmd,
                     REPLY_TIMEOUT_S);
        }
        if (!is_event(m)) {
            return m;
        }
        json_array_append_new(c->pending, m);
    }
}

/* Returns the "return" value (borrowed from *reply) or prints the error and
 * exits 1. */
static json_t *expect_return(json_t *reply)
{
    json_t *ret = json_object_get(reply, "return");
    json_t *err = json_object_get(reply, "error");

    if (ret) {
        return ret;
    }
    fprintf(stderr, "%s: %s\n", prog,
            json_string_value(json_object_get(err, "desc"))
                ? json_string_value(json_object_get(err, "desc"))
                : "the daemon answered with an error");
    exit(EXIT_QMP_ERROR);
}

static void connect_qmp(struct conn *c, const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    json_t *greeting, *reply;

    if (strlen(path) >= sizeof(sa.sun_path)) {
        die_conn("socket path '%s' is too long", path);
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        die_conn("cannot connect to %s: %s", path, strerror(errno));
    }
    c->pending = json_array();
    greeting = read_msg(c, REPLY_TIMEOUT_S * 1000);
    if (!greeting) {
        die_conn("no greeting from %s", path);
    }
    if (json_object_get(greeting, "error")) {
        /* e.g. refused by --allow-uid */
        die_conn("%s: %s", path,
                 json_string_value(json_object_get(
                     json_object_get(greeting, "error"), "desc")));
    }
    if (!json_object_get(greeting, "QMP")) {
        die_conn("%s does not speak QMP", path);
    }
    json_decref(greeting);
    reply = execute(c, "qmp_capabilities", NULL);
    expect_return(reply);
    json_decref(reply);
}

/* ---- commands --------------------------------------------------------- */

static int run_simple(struct conn *c, const char *cmd, json_t *args)
{
    json_t *reply = execute(c, cmd, args);

    expect_return(reply);
    json_decref(reply);
    return 0;
}

static int cmd_qmp(struct conn *c, const char *text)
{
    json_error_t jerr;
    json_t *req = json_loads(text, 0, &jerr), *m;
    char *out;

    if (!req || !json_is_object(req)) {
        json_decref(req);
        return usage_error("qmp: '%s' is not a JSON object", text);
    }
    send_msg(c, req);
    json_decref(req);
    while ((m = read_msg(c, REPLY_TIMEOUT_S * 1000)) && is_event(m)) {
        json_decref(m);
    }
    if (!m) {
        die_conn("no reply within %d seconds", REPLY_TIMEOUT_S);
    }
    out = json_dumps(expect_return(m), JSON_COMPACT | JSON_ENCODE_ANY);
    printf("%s\n", out ? out : "");
    free(out);
    json_decref(m);
    return 0;
}

static int cmd_events(struct conn *c)
{
    for (;;) {
        json_t *m = read_msg(c, -1);
        char *out;

        if (!is_event(m)) {
            json_decref(m);
            continue;
        }
        out = json_dumps(m, JSON_COMPACT | JSON_PRESERVE_ORDER);
        printf("%s\n", out);
        fflush(stdout);
        free(out);
        if (!strcmp(json_string_value(json_object_get(m, "event")),
                    "SHUTDOWN")) {
            json_decref(m);
            return 0; /* the daemon is going away: the stream ended */
        }
        json_decref(m);
    }
}

static int cmd_jobs(struct conn *c)
{
    json_t *reply = execute(c, "query-block-jobs", NULL);
    json_t *jobs = expect_return(reply), *j;
    size_t i;
    char a[32], b[32], sp[40];

    if (json_array_size(jobs) == 0) {
        printf("no block jobs\n");
        json_decref(reply);
        return 0;
    }
    printf("%-20s %-8s %-10s %-28s %-12s %s\n", "ID", "TYPE", "STATUS",
           "PROGRESS", "SPEED", "IO-STATUS");
    json_array_foreach(jobs, i, j) {
        long long len = json_integer_value(json_object_get(j, "len"));
        long long off = json_integer_value(json_object_get(j, "offset"));
        long long speed = json_integer_value(json_object_get(j, "speed"));
        char prog_s[64];

        snprintf(prog_s, sizeof(prog_s), "%5.1f%% (%s/%s)",
                 len ? 100.0 * (double)off / (double)len : 0.0,
                 human((double)off, a, sizeof(a)),
                 human((double)len, b, sizeof(b)));
        if (speed) {
            human((double)speed, sp, sizeof(sp));
            strcat(sp, "/s");
        } else {
            strcpy(sp, "unlimited");
        }
        printf("%-20s %-8s %-10s %-28s %-12s %s\n",
               json_string_value(json_object_get(j, "device")),
               json_string_value(json_object_get(j, "type")),
               json_string_value(json_object_get(j, "status")), prog_s, sp,
               json_string_value(json_object_get(j, "io-status"))
                   ? json_string_value(json_object_get(j, "io-status"))
                   : "-");
    }
    json_decref(reply);
    return 0;
}

/* --wait: follows one job by its events, polling query-block-jobs for
 * progress. */
struct follow {
    const char *id;
    bool tty;
    double t0, last_t, rate; /* rate: smoothed bytes per second */
    long long last_off;
    bool have_sample;
    int last_pct_line; /* off a terminal: last printed percentage */
    bool bar_drawn;
    bool until_ready; /* a mirror: READY ends the follow (exit 0) */
};

static void clear_bar(struct follow *f)
{
    if (f->tty && f->bar_drawn) {
        fputs("\r\033[K", stdout);
        f->bar_drawn = false;
    }
}

static void show_progress(struct follow *f, json_t *job)
{
    long long len = json_integer_value(json_object_get(job, "len"));
    long long off = json_integer_value(json_object_get(job, "offset"));
    const char *status = json_string_value(json_object_get(job, "status"));
    double t = now(), pct = len ? 100.0 * (double)off / (double)len : 0.0;
    char a[32], b[32], r[32], eta[32];

    if (f->have_sample && t > f->last_t) {
        double inst = (double)(off - f->last_off) / (t - f->last_t);

        f->rate = f->rate == 0 ? inst : 0.7 * f->rate + 0.3 * inst;
    }
    f->have_sample = true;
    f->last_t = t;
    f->last_off = off;
    if (f->rate > 0 && len > off) {
        double s = (double)(len - off) / f->rate;

        if (s < 360000) {
            snprintf(eta, sizeof(eta), "%d:%02d:%02d", (int)s / 3600,
                     ((int)s / 60) % 60, (int)s % 60);
        } else {
            strcpy(eta, "--:--:--");
        }
    } else {
        strcpy(eta, "--:--:--");
    }
    human(f->rate, r, sizeof(r));
    human((double)off, a, sizeof(a));
    human((double)len, b, sizeof(b));
    if (f->tty) {
        char bar[31];
        int fill = (int)(pct * 30 / 100);

        for (int i = 0; i < 30; i++) {
            bar[i] = i < fill ? '#' : '.';
        }
        bar[30] = '\0';
        printf("\r\033[K%s [%s] %5.1f%% %s/%s %s/s ETA %s%s%s", f->id, bar, pct,
               a, b, r, eta, status && strcmp(status, "running") ? " " : "",
               status && strcmp(status, "running") ? status : "");
        f->bar_drawn = true;
    } else {
        /* Plain lines for logs: one per whole percent step of 10 at most,
         * plus one whenever the status is not plain running. */
        int step = (int)pct / 10;

        if (step == f->last_pct_line && status && !strcmp(status, "running")) {
            return;
        }
        f->last_pct_line = step;
        printf("%s: %s %.1f%% (%s of %s, %s/s, ETA %s)\n", f->id,
               status ? status : "?", pct, a, b, r, eta);
    }
    fflush(stdout);
}

/* Returns -1 to go on, or an exit status. */
static int follow_event(struct follow *f, json_t *ev)
{
    const char *name = json_string_value(json_object_get(ev, "event"));
    json_t *data = json_object_get(ev, "data");
    const char *dev = json_string_value(json_object_get(data, "device"));
    const char *id = json_string_value(json_object_get(data, "id"));
    char a[32];

    if (!name) {
        return -1;
    }
    if (!strcmp(name, "SHUTDOWN")) {
        clear_bar(f);
        fprintf(stderr, "%s: the daemon is shutting down\n", prog);
        return -1; /* the job's cancel events follow */
    }
    if (!strcmp(name, "JOB_STATUS_CHANGE") && id && !strcmp(id, f->id)) {
        const char *st = json_string_value(json_object_get(data, "status"));

        if (st && !strcmp(st, "paused")) {
            clear_bar(f);
            printf("%s: paused (blockjobctl resume %s to go on)\n", f->id,
                   f->id);
            fflush(stdout);
        }
        return -1;
    }
    if (!dev || strcmp(dev, f->id) != 0) {
        return -1;
    }
    if (!strcmp(name, "BLOCK_JOB_READY") && f->until_ready) {
        clear_bar(f);
        printf("%s: ready, %s copied in %.1f s; the target stays in sync "
               "(blockjobctl complete %s pivots)\n",
               f->id,
               human((double)json_integer_value(json_object_get(data, "len")),
                     a, sizeof(a)),
               now() - f->t0, f->id);
        return 0;
    }
    if (!strcmp(name, "BLOCK_JOB_ERROR")) {
        clear_bar(f);
        fprintf(stderr, "%s: %s: %s error, action %s\n", prog, f->id,
                json_string_value(json_object_get(data, "operation")),
                json_string_value(json_object_get(data, "action")));
        return -1;
    }
    if (!strcmp(name, "BLOCK_JOB_COMPLETED")) {
        const char *err = json_string_value(json_object_get(data, "error"));

        clear_bar(f);
        if (err) {
            fprintf(stderr, "%s: %s: failed: %s\n", prog, f->id, err);
            return EXIT_JOB_FAILED;
        }
        printf("%s: completed, %s in %.1f s\n", f->id,
               human((double)json_integer_value(json_object_get(data, "len")),
                     a, sizeof(a)),
               now() - f->t0);
        return 0;
    }
    if (!strcmp(name, "BLOCK_JOB_CANCELLED")) {
        clear_bar(f);
        fprintf(stderr, "%s: %s: cancelled at %lld of %lld bytes\n", prog,
                f->id,
                (long long)json_integer_value(json_object_get(data, "offset")),
                (long long)json_integer_value(json_object_get(data, "len")));
        return EXIT_CANCELLED;
    }
    return -1;
}

/* Handles queued events; returns -1 or an exit status. */
static int drain_pending(struct conn *c, struct follow *f)
{
    int rc = -1;

    while (rc < 0 && json_array_size(c->pending)) {
        json_t *ev = json_incref(json_array_get(c->pending, 0));

        json_array_remove(c->pending, 0);
        if (!strcmp(json_string_value(json_object_get(ev, "event")),
                    "SHUTDOWN")) {
            c->shutdown_seen = true;
        }
        rc = follow_event(f, ev);
        json_decref(ev);
    }
    return rc;
}

static int wait_job(struct conn *c, const char *id, bool until_ready)
{
    struct follow f = {.id = id,
                       .tty = isatty(STDOUT_FILENO) == 1,
                       .last_pct_line = -1,
                       .until_ready = until_ready};
    double interval = f.tty ? 0.25 : 1.0, next_poll = 0;
    int rc;

    f.t0 = now();
    for (;;) {
        rc = drain_pending(c, &f);
        if (rc >= 0) {
            return rc;
        }
        if (now() >= next_poll) {
            json_t *reply = execute(c, "query-block-jobs", NULL);
            json_t *jobs = json_object_get(reply, "return"), *j;
            size_t i;

            json_array_foreach(jobs, i, j) {
                const char *dev =
                    json_string_value(json_object_get(j, "device"));

                if (dev && !strcmp(dev, id)) {
                    show_progress(&f, j);
                }
            }
            json_decref(reply);
            next_poll = now() + interval;
            continue; /* events may have come with the reply */
        }
        json_t *m = read_msg(c, (int)((next_poll - now()) * 1000) + 1);

        if (m) {
            if (is_event(m)) {
                json_array_append_new(c->pending, m);
            } else {
                json_decref(m); /* a stray reply: not ours */
            }
        }
    }
}

static int cmd_stream(struct conn *c, int argc, char **argv)
{
    static const struct option opts[] = {
        {"base-node", required_argument, NULL, 'b'},
        {"speed", required_argument, NULL, 's'},
        {"on-error", required_argument, NULL, 'e'},
        {"job-id", required_argument, NULL, 'j'},
        {"wait", no_argument, NULL, 'w'},
        {NULL, 0, NULL, 0},
    };
    json_t *args = json_object();
    const char *job_id = NULL, *node = NULL;
    bool wait = false;
    long long speed;
    int opt;

    optind = 0; /* GNU: re-initialise (the first pass used "+") */
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        switch (opt) {
        case 'b':
            json_object_set_new(args, "base-node", json_string(optarg));
            break;
        case 's':
            if (parse_bytes(optarg, &speed) < 0) {
                json_decref(args);
                return usage_error("stream: --speed: '%s' is not a number of "
                                   "bytes per second",
                                   optarg);
            }
            json_object_set_new(args, "speed", json_integer(speed));
            break;
        case 'e':
            json_object_set_new(args, "on-error", json_string(optarg));
            break;
        case 'j':
            job_id = optarg;
            break;
        case 'w':
            wait = true;
            break;
        case ':':
            json_decref(args);
            return usage_error("stream: option '%s' needs an argument",
                               argv[optind - 1]);
        default:
            json_decref(args);
            return usage_error("stream: unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind != argc - 1) {
        json_decref(args);
        return usage_error("stream: give exactly one NODE");
    }
    node = argv[optind];
    json_object_set_new(args, "device", json_string(node));
    /* A job on a node without a device name needs an explicit id
     * (QEMU refuses an empty one): default to the node's name. */
    json_object_set_new(args, "job-id", json_string(job_id ? job_id : node));
    if (!c) {
        json_decref(args);
        return -1; /* arguments checked; connect and run */
    }
    run_simple(c, "block-stream", args);
    if (!wait) {
        printf("%s\n", job_id ? job_id : node);
        return 0;
    }
    return wait_job(c, job_id ? job_id : node, false);
}

static int cmd_mirror(struct conn *c, int argc, char **argv)
{
    static const struct option opts[] = {
        {"sync", required_argument, NULL, 'y'},
        {"speed", required_argument, NULL, 's'},
        {"on-source-error", required_argument, NULL, 'e'},
        {"on-target-error", required_argument, NULL, 't'},
        {"job-id", required_argument, NULL, 'j'},
        {"wait", no_argument, NULL, 'w'},
        {NULL, 0, NULL, 0},
    };
    json_t *args = json_object();
    const char *job_id = NULL, *node, *sync = "full";
    bool wait = false;
    long long speed;
    int opt, rc;

    optind = 0;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        switch (opt) {
        case 'y':
            sync = optarg;
            break;
        case 's':
            if (parse_bytes(optarg, &speed) < 0) {
                json_decref(args);
                return usage_error("mirror: --speed: '%s' is not a number of "
                                   "bytes per second",
                                   optarg);
            }
            json_object_set_new(args, "speed", json_integer(speed));
            break;
        case 'e':
            json_object_set_new(args, "on-source-error", json_string(optarg));
            break;
        case 't':
            json_object_set_new(args, "on-target-error", json_string(optarg));
            break;
        case 'j':
            job_id = optarg;
            break;
        case 'w':
            wait = true;
            break;
        case ':':
            json_decref(args);
            return usage_error("mirror: option '%s' needs an argument",
                               argv[optind - 1]);
        default:
            json_decref(args);
            return usage_error("mirror: unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind != argc - 2) {
        json_decref(args);
        return usage_error("mirror: give a NODE and a TARGET node");
    }
    node = argv[optind];
    json_object_set_new(args, "device", json_string(node));
    json_object_set_new(args, "target", json_string(argv[optind + 1]));
    json_object_set_new(args, "sync", json_string(sync));
    json_object_set_new(args, "job-id", json_string(job_id ? job_id : node));
    if (!c) {
        json_decref(args);
        return -1;
    }
    rc = run_simple(c, "blockdev-mirror", args);
    if (rc) {
        return rc;
    }
    if (!wait) {
        printf("%s\n", job_id ? job_id : node);
        return 0;
    }
    return wait_job(c, job_id ? job_id : node, true);
}

/* Waits for the job's JOB_STATUS_CHANGE to `status` (events already
 * received first). */
static void wait_status(struct conn *c, const char *id, const char *status)
{
    for (;;) {
        json_t *m;

        while (json_array_size(c->pending)) {
            json_t *e = json_incref(json_array_get(c->pending, 0)), *d;
            bool hit;

            json_array_remove(c->pending, 0);
            d = json_object_get(e, "data");
            hit = !strcmp(json_string_value(json_object_get(e, "event")),
                          "JOB_STATUS_CHANGE") &&
                  !strcmp(json_string_value(json_object_get(d, "id")), id) &&
                  !strcmp(json_string_value(json_object_get(d, "status")),
                          status);
            json_decref(e);
            if (hit) {
                return;
            }
        }
        m = read_msg(c, -1);
        if (is_event(m)) {
            json_array_append_new(c->pending, m);
        } else {
            json_decref(m);
        }
    }
}

/* One blockdev-create job, followed to its end and dismissed: 0, or the
 * job's error printed and EXIT_JOB_FAILED. */
static int run_create_job(struct conn *c, const char *id, json_t *options)
{
    json_t *reply, *jobs, *j;
    const char *error = NULL;
    size_t i;
    int rc = 0;

    run_simple(c, "blockdev-create",
               json_pack("{s:s, s:o}", "job-id", id, "options", options));
    wait_status(c, id, "concluded");
    reply = execute(c, "query-jobs", NULL);
    jobs = expect_return(reply);
    json_array_foreach(jobs, i, j) {
        if (!strcmp(json_string_value(json_object_get(j, "id")), id)) {
            error = json_string_value(json_object_get(j, "error"));
        }
    }
    if (error) {
        fprintf(stderr, "%s: %s\n", prog, error);
        rc = EXIT_JOB_FAILED;
    }
    json_decref(reply);
    run_simple(c, "job-dismiss", json_pack("{s:s}", "id", id));
    return rc;
}

static int cmd_create(struct conn *c, int argc, char **argv)
{
    static const struct option opts[] = {
        {"format", required_argument, NULL, 'f'},
        {"backing-file", required_argument, NULL, 'b'},
        {"backing-fmt", required_argument, NULL, 'F'},
        {"cluster-size", required_argument, NULL, 'c'},
        {"version", required_argument, NULL, 'v'},
        {"preallocation", required_argument, NULL, 'p'},
        {"lazy-refcounts", no_argument, NULL, 'l'},
        {"job-id", required_argument, NULL, 'j'},
        {NULL, 0, NULL, 0},
    };
    json_t *q = json_pack("{s:s}", "driver", "qcow2");
    const char *format = "qcow2", *job_id = "create", *prealloc = NULL;
    long long size, n;
    char id[300];
    int opt, rc;

    optind = 0;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        switch (opt) {
        case 'f':
            format = optarg;
            break;
        case 'b':
            json_object_set_new(q, "backing-file", json_string(optarg));
            break;
        case 'F':
            json_object_set_new(q, "backing-fmt", json_string(optarg));
            break;
        case 'c':
            if (parse_bytes(optarg, &n) < 0) {
                json_decref(q);
                return usage_error("create: --cluster-size: '%s' is not a "
                                   "size",
                                   optarg);
            }
            json_object_set_new(q, "cluster-size", json_integer(n));
            break;
        case 'v':
            json_object_set_new(q, "version", json_string(optarg));
            break;
        case 'p':
            prealloc = optarg;
            break;
        case 'l':
            json_object_set_new(q, "lazy-refcounts", json_true());
            break;
        case 'j':
            job_id = optarg;
            break;
        case ':':
            json_decref(q);
            return usage_error("create: option '%s' needs an argument",
                               argv[optind - 1]);
        default:
            json_decref(q);
            return usage_error("create: unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind != argc - 2 || parse_bytes(argv[optind + 1], &size) < 0) {
        json_decref(q);
        return usage_error("create: give a FILE and a SIZE");
    }
    if (strcmp(format, "qcow2") && strcmp(format, "raw")) {
        json_decref(q);
        return usage_error("create: --format is qcow2 or raw");
    }
    if (!c) {
        json_decref(q);
        return -1;
    }
    /* The file first (for raw: with its size and preallocation), then the
     * qcow2 layout on it, each its own job. */
    snprintf(id, sizeof(id), "%s%s", job_id,
             strcmp(format, "raw") ? "-file" : "");
    {
        json_t *f = json_pack("{s:s, s:s, s:I}", "driver", "file", "filename",
                              argv[optind], "size",
                              (json_int_t)(strcmp(format, "raw") ? 0 : size));

        if (prealloc && !strcmp(format, "raw")) {
            json_object_set_new(f, "preallocation", json_string(prealloc));
        }
        rc = run_create_job(c, id, f);
    }
    if (rc || !strcmp(format, "raw")) {
        json_decref(q);
        return rc;
    }
    json_object_set_new(
        q, "file",
        json_pack("{s:s, s:s}", "driver", "file", "filename", argv[optind]));
    json_object_set_new(q, "size", json_integer(size));
    if (prealloc) {
        json_object_set_new(q, "preallocation", json_string(prealloc));
    }
    return run_create_job(c, job_id, q);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"socket", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *sock = getenv("BLOCKJOBD_SOCKET");
    struct conn c = {.fd = -1};
    const char *cmd;
    long long n = 0;
    int opt, nargs, rc;
    char **args;

    opterr = 0;
    /* '+': stop at the command; its options are parsed by the command. */
    while ((opt = getopt_long(argc, argv, "+:s:h", opts, NULL)) != -1) {
        switch (opt) {
        case 's':
            sock = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case ':':
            return usage_error("option '%s' needs an argument",
                               argv[optind - 1]);
        default:
            return usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (!sock || !*sock) {
        sock = DEFAULT_SOCKET;
    }
    if (optind >= argc) {
        return usage_error("no command given");
    }
    cmd = argv[optind];
    args = argv + optind;
    nargs = argc - optind;

    /* Check the arguments before connecting. */
    if (!strcmp(cmd, "stream")) {
        rc = cmd_stream(NULL, nargs, args);

        if (rc >= 0) {
            return rc;
        }
    } else if (!strcmp(cmd, "create")) {
        rc = cmd_create(NULL, nargs, args);

        if (rc >= 0) {
            return rc;
        }
    } else if (!strcmp(cmd, "mirror")) {
        rc = cmd_mirror(NULL, nargs, args);

        if (rc >= 0) {
            return rc;
        }
    } else if (!strcmp(cmd, "complete")) {
        if (nargs != 2) {
            return usage_error("complete: give exactly one JOB");
        }
    } else if (!strcmp(cmd, "snapshot")) {
        if (nargs != 3) {
            return usage_error("snapshot: give a NODE and an OVERLAY");
        }
    } else if (!strcmp(cmd, "jobs") || !strcmp(cmd, "events")) {
        if (nargs != 1) {
            return usage_error("%s takes no arguments", cmd);
        }
    } else if (!strcmp(cmd, "pause") || !strcmp(cmd, "resume")) {
        if (nargs != 2) {
            return usage_error("%s: give exactly one JOB", cmd);
        }
    } else if (!strcmp(cmd, "cancel")) {
        if (nargs == 3 && !strcmp(args[2], "--force")) {
            /* fine */
        } else if (nargs != 2) {
            return usage_error("cancel: give one JOB, optionally --force");
        }
    } else if (!strcmp(cmd, "set-speed")) {
        if (nargs != 3) {
            return usage_error("set-speed: give a JOB and a speed");
        }
        if (parse_bytes(args[2], &n) < 0) {
            return usage_error("set-speed: '%s' is not a number of bytes per "
                               "second",
                               args[2]);
        }
    } else if (!strcmp(cmd, "qmp")) {
        if (nargs != 2) {
            return usage_error("qmp: give one JSON command");
        }
    } else {
        return usage_error("unknown command '%s'", cmd);
    }

    connect_qmp(&c, sock);
    if (!strcmp(cmd, "stream")) {
        rc = cmd_stream(&c, nargs, args);
    } else if (!strcmp(cmd, "create")) {
        rc = cmd_create(&c, nargs, args);
    } else if (!strcmp(cmd, "mirror")) {
        rc = cmd_mirror(&c, nargs, args);
    } else if (!strcmp(cmd, "complete")) {
        rc = run_simple(&c, "block-job-complete",
                        json_pack("{s:s}", "device", args[1]));
        if (rc == 0) {
            rc = wait_job(&c, args[1], false);
        }
    } else if (!strcmp(cmd, "snapshot")) {
        rc = run_simple(
            &c, "blockdev-snapshot",
            json_pack("{s:s, s:s}", "node", args[1], "overlay", args[2]));
    } else if (!strcmp(cmd, "jobs")) {
        rc = cmd_jobs(&c);
    } else if (!strcmp(cmd, "events")) {
        rc = cmd_events(&c);
    } else if (!strcmp(cmd, "qmp")) {
        rc = cmd_qmp(&c, args[1]);
    } else if (!strcmp(cmd, "pause")) {
        rc = run_simple(&c, "block-job-pause",
                        json_pack("{s:s}", "device", args[1]));
    } else if (!strcmp(cmd, "resume")) {
        rc = run_simple(&c, "block-job-resume",
                        json_pack("{s:s}", "device", args[1]));
    } else if (!strcmp(cmd, "cancel")) {
        rc = run_simple(
            &c, "block-job-cancel",
            json_pack("{s:s, s:b}", "device", args[1], "force", nargs == 3));
    } else {
        rc = run_simple(
            &c, "block-job-set-speed",
            json_pack("{s:s, s:I}", "device", args[1], "speed", (json_int_t)n));
    }
    close(c.fd);
    free(c.buf);
    json_decref(c.pending);
    return rc;
}
