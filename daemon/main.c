/* blockjobd: a QMP block-job daemon.
 *
 * Start-up order: options (all checked before anything happens), the
 * service-manager link, modules (QMP core, block layer, jobs), --blockdev
 * nodes (through the blockdev-add command, so they are validated exactly
 * like a client's), sockets (passed by socket activation and/or bound), the
 * pidfile, then READY=1 and the loop.
 *
 * Teardown (SIGTERM, SIGINT or `quit`): stop accepting and reading, tell
 * clients (SHUTDOWN), cancel jobs at a consistent point (in-flight I/O
 * drained), flush and close every image, let clients read what is queued,
 * then exit 0. A second signal while draining exits at once. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "daemon/client.h"
#include "daemon/events.h"
#include "daemon/ids.h"
#include "daemon/log.h"
#include "daemon/notify.h"
#include "daemon/server.h"
#include "backends/bdev.h"
#include "jobs/job.h"
#include "jobs/job_qmp.h"
#include "protocol/json.h"
#include "protocol/qmp.h"

#define BLOCKJOBD_VERSION "0.1.0"
#define MAX_SOCKETS       16
#define MAX_ALLOW_UIDS    64
#define MAX_BLOCKDEVS     64
/* How long clients get to read their last events at shutdown. */
#define FLUSH_TIMEOUT_MS 2000

struct config {
    const char *sockets[MAX_SOCKETS];
    bool readonly[MAX_SOCKETS];
    int n_sockets;
    struct server_file_opts file;
    uid_t allow_uids[MAX_ALLOW_UIDS];
    size_t n_allow_uids;
    const char *blockdevs[MAX_BLOCKDEVS];
    int n_blockdevs;
    const char *pidfile;
    struct client_limits limits;
};

static struct server *servers[MAX_SOCKETS * 2];
static int n_servers;
static uv_signal_t sig_int, sig_term;
static bool shutting_down;
static const char *pidfile_path;
static int pidfile_fd = -1;

static void usage(FILE *out)
{
    fprintf(
        out,
        "Usage: blockjobd [--socket PATH]... [OPTION]...\n"
        "Serve QEMU's QMP block-job commands on UNIX sockets.\n"
        "\n"
        "  -s, --socket PATH          listen on this UNIX socket "
        "(repeatable; not\n"
        "                             needed under socket activation)\n"
        "      --readonly-socket PATH listen on a socket where only query-* "
        "commands\n"
        "                             run; events are received "
        "(repeatable)\n"
        "  -m, --socket-mode MODE     octal file mode of the sockets "
        "(default 0600)\n"
        "      --socket-group GROUP   group of the socket files (name or "
        "number)\n"
        "      --allow-uid UID        peers allowed to connect, checked "
        "with\n"
        "                             SO_PEERCRED (repeatable; root and "
        "our own\n"
        "                             uid always are; default: anyone who "
        "can\n"
        "                             open the socket)\n"
        "      --blockdev JSON        open a node at start-up, as "
        "blockdev-add with\n"
        "                             these arguments would (repeatable)\n"
        "      --pidfile PATH         write the process id there once "
        "serving\n"
        "      --max-message-size N   largest QMP message in bytes "
        "(default 1048576)\n"
        "      --max-output-queue N   unread output bytes before a "
        "client is\n"
        "                             disconnected (default 8388608)\n"
        "  -l, --log-level LEVEL      error, warning, info (default) or "
        "debug\n"
        "  -h, --help                 show this help and exit\n"
        "  -V, --version              show the version and exit\n"
        "\n"
        "Socket activation: sockets passed with LISTEN_FDS/LISTEN_PID are "
        "served;\n"
        "a passed socket named \"readonly\" (LISTEN_FDNAMES) is read-only.\n"
        "\n"
        "Exit status: 0 after a clean shutdown (SIGINT, SIGTERM or "
        "'quit'),\n"
        "1 when start-up fails or a second signal cut the shutdown short,\n"
        "2 for bad options.\n");
}

/* Usage errors: one line on stderr, exit status 2. */
#define USAGE_ERROR(...)                                                       \
    do {                                                                       \
        fprintf(stderr, "blockjobd: " __VA_ARGS__);                            \
        fputc('\n', stderr);                                                   \
        return 2;                                                              \
    } while (0)

static int parse_size(const char *arg, size_t *out)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(arg, &end, 10);
    if (errno || end == arg || *end || v == 0 || arg[0] == '-') {
        return -1;
    }
    *out = (size_t)v;
    return 0;
}

static int add_socket(struct config *cfg, const char *path, bool readonly)
{
    if (cfg->n_sockets == MAX_SOCKETS) {
        return -1;
    }
    if (!*path) {
        return -1;
    }
    cfg->readonly[cfg->n_sockets] = readonly;
    cfg->sockets[cfg->n_sockets++] = path;
    return 0;
}

/* Socket activation meant for this process (checked in detail later). */
static bool activated(void)
{
    const char *pid = getenv("LISTEN_PID");

    return pid && getenv("LISTEN_FDS") && atol(pid) == (long)getpid();
}

static int parse_args(int argc, char **argv, struct config *cfg)
{
    enum {
        OPT_MAX_MSG = 256,
        OPT_MAX_QUEUE,
        OPT_RO_SOCKET,
        OPT_GROUP,
        OPT_ALLOW_UID,
        OPT_BLOCKDEV,
        OPT_PIDFILE,
    };
    static const struct option opts[] = {
        {"socket", required_argument, NULL, 's'},
        {"readonly-socket", required_argument, NULL, OPT_RO_SOCKET},
        {"socket-mode", required_argument, NULL, 'm'},
        {"socket-group", required_argument, NULL, OPT_GROUP},
        {"allow-uid", required_argument, NULL, OPT_ALLOW_UID},
        {"blockdev", required_argument, NULL, OPT_BLOCKDEV},
        {"pidfile", required_argument, NULL, OPT_PIDFILE},
        {"max-message-size", required_argument, NULL, OPT_MAX_MSG},
        {"max-output-queue", required_argument, NULL, OPT_MAX_QUEUE},
        {"log-level", required_argument, NULL, 'l'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    int c, level;
    char *end;
    unsigned long mode;
    unsigned id;
    const char *errdesc;
    json_t *v;

    opterr = 0; /* our own one-line messages */
    while ((c = getopt_long(argc, argv, ":s:m:l:hV", opts, NULL)) != -1) {
        switch (c) {
        case 's':
        case OPT_RO_SOCKET:
            if (add_socket(cfg, optarg, c == OPT_RO_SOCKET) < 0) {
                USAGE_ERROR("%s: at most %d non-empty socket paths",
                            c == 's' ? "--socket" : "--readonly-socket",
                            MAX_SOCKETS);
            }
            break;
        case 'm':
            mode = strtoul(optarg, &end, 8);
            if (!*optarg || *end || mode > 0777) {
                USAGE_ERROR("--socket-mode: '%s' is not an octal file mode",
                            optarg);
            }
            cfg->file.mode = (mode_t)mode;
            break;
        case OPT_GROUP:
            if (ids_parse(IDS_GROUP, optarg, &id) < 0) {
                USAGE_ERROR("--socket-group: '%s' is not a known group or a "
                            "group number",
                            optarg);
            }
            cfg->file.gid = (gid_t)id;
            break;
        case OPT_ALLOW_UID:
            if (ids_parse(IDS_PASSWD, optarg, &id) < 0) {
                USAGE_ERROR("--allow-uid: '%s' is not a known user or a user "
                            "number",
                            optarg);
            }
            if (cfg->n_allow_uids == MAX_ALLOW_UIDS) {
                USAGE_ERROR("--allow-uid: at most %d users", MAX_ALLOW_UIDS);
            }
            cfg->allow_uids[cfg->n_allow_uids++] = (uid_t)id;
            break;
        case OPT_BLOCKDEV:
            /* Only the syntax here; the content is checked by blockdev-add
             * at start-up, with its own error messages. */
            v = qmp_json_parse(optarg, &errdesc);
            if (!v || !json_is_object(v)) {
                json_decref(v);
                USAGE_ERROR("--blockdev: '%s' is not a JSON object%s%s", optarg,
                            v || !errdesc ? "" : ": ",
                            v || !errdesc ? "" : errdesc);
            }
            json_decref(v);
            if (cfg->n_blockdevs == MAX_BLOCKDEVS) {
                USAGE_ERROR("--blockdev: at most %d nodes", MAX_BLOCKDEVS);
            }
            cfg->blockdevs[cfg->n_blockdevs++] = optarg;
            break;
        case OPT_PIDFILE:
            if (!*optarg) {
                USAGE_ERROR("--pidfile: empty path");
            }
            cfg->pidfile = optarg;
            break;
        case OPT_MAX_MSG:
            if (parse_size(optarg, &cfg->limits.max_msg_bytes) < 0) {
                USAGE_ERROR("--max-message-size: '%s' is not a positive "
                            "number of bytes",
                            optarg);
            }
            break;
        case OPT_MAX_QUEUE:
            if (parse_size(optarg, &cfg->limits.max_queue) < 0) {
                USAGE_ERROR("--max-output-queue: '%s' is not a positive "
                            "number of bytes",
                            optarg);
            }
            break;
        case 'l':
            level = log_parse_level(optarg);
            if (level < 0) {
                USAGE_ERROR("--log-level: '%s' is not one of error, warning, "
                            "info, debug",
                            optarg);
            }
            log_set_level((enum log_level)level);
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case 'V':
            printf("blockjobd %s (QMP of QEMU 7.2)\n", BLOCKJOBD_VERSION);
            exit(0);
        case ':':
            USAGE_ERROR("option '%s' needs an argument (see blockjobd --help)",
                        argv[optind - 1]);
        default:
            if (optopt) {
                USAGE_ERROR("unknown option '-%c' (see blockjobd --help)",
                            optopt);
            }
            USAGE_ERROR("unknown option '%s' (see blockjobd --help)",
                        argv[optind - 1]);
        }
    }
    if (optind < argc) {
        USAGE_ERROR("unexpected argument '%s' (see blockjobd --help)",
                    argv[optind]);
    }
    if (cfg->n_sockets == 0 && !activated()) {
        USAGE_ERROR("no socket to serve: give --socket PATH or start "
                    "blockjobd through socket activation");
    }
    return 0;
}

/* Serving many clients needs many descriptors. */
static void raise_nofile_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
            log_msg(LOG_LVL_WARNING, "cannot raise the open-file limit: %s",
                    strerror(errno));
        }
    }
}

/* ---- --blockdev: an internal QMP session ----------------------------- */

struct internal {
    char *reply; /* the last line received (malloc'd) */
    bool got;
};

static void internal_send(void *opaque, const char *line, size_t len)
{
    struct internal *in = opaque;

    free(in->reply);
    in->reply = strndup(line, len);
    in->got = true;
}

static const struct qmp_session_ops internal_ops = {.send = internal_send};

/* Runs one request through the command table as a client's would run, and
 * waits (running the loop) for its reply. Returns 0, or -1 with *desc set to
 * the error text (malloc'd). */
static int internal_execute(struct qmp_session *s, struct internal *in,
                            const char *request, char **desc)
{
    const char *errdesc = NULL;
    json_t *r, *e;
    int ret = -1;

    in->got = false;
    qmp_session_feed(s, request, strlen(request));
    while (!in->got && uv_run(uv_default_loop(), UV_RUN_ONCE)) {
    }
    r = in->got ? qmp_json_parse(in->reply, &errdesc) : NULL;
    e = json_object_get(r, "error");
    if (r && !e) {
        ret = 0;
    } else {
        const char *d = json_string_value(json_object_get(e, "desc"));

        *desc = strdup(d ? d : in->got ? in->reply : "no reply");
    }
    json_decref(r);
    return ret;
}

static int open_blockdevs(const struct config *cfg)
{
    struct internal in = {NULL, false};
    struct qmp_session *s;
    char *desc = NULL;
    int ret = 0;

    if (!cfg->n_blockdevs) {
        return 0;
    }
    s = qmp_session_new(&internal_ops, &in, (size_t)1 << 26);
    if (!s) {
        return -1;
    }
    if (internal_execute(s, &in, "{\"execute\": \"qmp_capabilities\"}", &desc) <
        0) {
        log_msg(LOG_LVL_ERROR, "internal QMP session: %s", desc);
        ret = -1;
        goto out;
    }
    for (int i = 0; i < cfg->n_blockdevs; i++) {
        size_t len = strlen(cfg->blockdevs[i]) + 64;
        char *req = malloc(len);

        if (!req) {
            ret = -1;
            goto out;
        }
        /* The option was checked to be one JSON object at parse time. */
        snprintf(req, len, "{\"execute\": \"blockdev-add\", \"arguments\": %s}",
                 cfg->blockdevs[i]);
        ret = internal_execute(s, &in, req, &desc);
        free(req);
        if (ret < 0) {
            log_msg(LOG_LVL_ERROR, "--blockdev '%s': %s", cfg->blockdevs[i],
                    desc);
            goto out;
        }
        log_msg(LOG_LVL_INFO, "--blockdev: opened %s", cfg->blockdevs[i]);
    }
out:
    free(desc);
    free(in.reply);
    qmp_session_free(s);
    return ret;
}

/* ---- pidfile ---------------------------------------------------------- */

/* Written after the sockets are live: whoever waits for it may connect.
 * Held under an flock so a second daemon with the same pidfile refuses to
 * start; written to a temporary name and renamed so no reader sees it
 * half-written. */
static int write_pidfile(const char *path)
{
    char tmp[4096], buf[32];
    int fd, n;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (flock(fd, LOCK_EX | LOCK_NB) < 0 && errno == EWOULDBLOCK) {
            log_msg(LOG_LVL_ERROR,
                    "pidfile '%s' is held by another running daemon", path);
            close(fd);
            return -1;
        }
        close(fd);
    }
    n = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        log_msg(LOG_LVL_ERROR, "pidfile path '%s' is too long", path);
        return -1;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        log_msg(LOG_LVL_ERROR, "cannot write pidfile '%s': %s", path,
                strerror(errno));
        return -1;
    }
    n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
    if (flock(fd, LOCK_EX | LOCK_NB) < 0 || write(fd, buf, (size_t)n) != n ||
        rename(tmp, path) < 0) {
        log_msg(LOG_LVL_ERROR, "cannot write pidfile '%s': %s", path,
                strerror(errno));
        unlink(tmp);
        close(fd);
        return -1;
    }
    pidfile_fd = fd; /* keeps the lock */
    pidfile_path = path;
    return 0;
}

static void remove_pidfile(void)
{
    if (pidfile_path) {
        unlink(pidfile_path);
        close(pidfile_fd);
        pidfile_path = NULL;
    }
}

/* ---- shutdown --------------------------------------------------------- */

static void close_leftover(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) {
        uv_close(h, NULL);
    }
}

static void on_clients_gone(void *opaque)
{
    (void)opaque;
    /* Signal handlers, timers: nothing else may keep the loop alive. */
    uv_walk(uv_default_loop(), close_leftover, NULL);
}

static uv_timer_t close_timer;

static void close_images(uv_timer_t *t)
{
    (void)t;
    uv_close((uv_handle_t *)&close_timer, NULL);
    bdev_close_all();
    log_msg(LOG_LVL_INFO, "images flushed and closed");
    client_close_all_flushed(FLUSH_TIMEOUT_MS, on_clients_gone, NULL);
}

/* Jobs have stopped at a consistent point. Close the images (flushing
 * them) from a fresh loop iteration, once the jobs' own callbacks have
 * returned and dropped their node references. */
static void on_jobs_stopped(void *opaque)
{
    (void)opaque;
    uv_timer_init(uv_default_loop(), &close_timer);
    uv_timer_start(&close_timer, close_images, 0, 0);
}

static void daemon_shutdown(const char *why, const char *cause)
{
    if (shutting_down) {
        return;
    }
    shutting_down = true;
    log_msg(LOG_LVL_INFO, "shutting down (%s)", why);
    notify_stopping(why);
    for (int i = 0; i < n_servers; i++) {
        server_close(servers[i]);
    }
    n_servers = 0;
    client_stop_input_all();
    qmp_event_emit("SHUTDOWN",
                   json_pack("{s:b, s:s}", "guest", 0, "reason", cause));
    job_shutdown(on_jobs_stopped, NULL);
}

static void on_signal(uv_signal_t *h, int signum)
{
    const char *name = signum == SIGINT ? "SIGINT" : "SIGTERM";

    (void)h;
    if (shutting_down) {
        /* The operator does not want to wait. Images stay consistent
         * without the flush: qcow2 metadata reaches the disk in an order
         * where a crash can only leak clusters. */
        log_msg(LOG_LVL_WARNING, "second %s while shutting down: exiting now",
                name);
        remove_pidfile();
        _exit(1);
    }
    daemon_shutdown(name, "host-signal");
}

static void on_quit(void *opaque)
{
    (void)opaque;
    daemon_shutdown("quit", "host-qmp-quit");
}

static void on_clients_changed(void *opaque)
{
    (void)opaque;
    notify_status_update();
}

/* What clients ask of the daemon (every socket's clients). */
static const struct client_hooks client_hooks = {
    .quit = on_quit,
    .changed = on_clients_changed,
};

/* ---- start-up --------------------------------------------------------- */

static int open_sockets(uv_loop_t *loop, struct config *cfg)
{
    char *names[MAX_SOCKETS] = {NULL};
    struct client_limits limits = cfg->limits;
    int n = server_listen_fds(names, MAX_SOCKETS), ret = 0;

    if (n < 0) {
        return -1;
    }
    if (n == 0 && cfg->n_sockets == 0) {
        log_msg(LOG_LVL_ERROR,
                "no socket to serve: give --socket PATH or start blockjobd "
                "through socket activation");
        return -1;
    }
    limits.allow_uids = cfg->allow_uids;
    limits.n_allow_uids = cfg->n_allow_uids;
    for (int i = 0; i < n; i++) {
        char label[64];

        limits.readonly = !strcmp(names[i], "readonly");
        snprintf(label, sizeof(label), "'%s'", names[i]);
        servers[n_servers] = server_adopt(loop, 3 + i, label, &limits);
        if (!servers[n_servers]) {
            ret = -1;
            break;
        }
        n_servers++;
    }
    for (int i = 0; ret == 0 && i < cfg->n_sockets; i++) {
        limits.readonly = cfg->readonly[i];
        servers[n_servers] =
            server_listen(loop, cfg->sockets[i], &cfg->file, &limits);
        if (!servers[n_servers]) {
            ret = -1;
            break;
        }
        n_servers++;
    }
    for (int i = 0; i < n; i++) {
        free(names[i]);
    }
    return ret;
}

static void close_servers(void)
{
    for (int j = 0; j < n_servers; j++) {
        server_close(servers[j]);
    }
    n_servers = 0;
    uv_run(uv_default_loop(), UV_RUN_NOWAIT);
}

int main(int argc, char **argv)
{
    struct config cfg = {
        .file = {.mode = 0600, .gid = (gid_t)-1},
        .limits = {.max_msg_bytes = QMP_JSON_DEFAULT_BYTES,
                   .max_queue = 8 * 1024 * 1024},
    };
    uv_loop_t *loop = uv_default_loop();
    int ret = parse_args(argc, argv, &cfg);

    if (ret) {
        return ret;
    }
    signal(SIGPIPE, SIG_IGN);
    raise_nofile_limit();
    notify_init(loop);

    qmp_set_version(7, 2, 22, "blockjobd " BLOCKJOBD_VERSION);
    qmp_core_init();
    ret = bdev_init(loop);
    if (ret < 0) {
        log_msg(LOG_LVL_ERROR, "cannot set up the I/O engine: %s",
                strerror(-ret));
        return 1;
    }
    bdev_qmp_init();
    job_qmp_init();
    qmp_event_set_sink(events_sink, NULL);
    cfg.limits.hooks = &client_hooks;

    /* A signal during start-up ends it cleanly too. */
    uv_signal_init(loop, &sig_int);
    uv_signal_init(loop, &sig_term);
    uv_signal_start(&sig_int, on_signal, SIGINT);
    uv_signal_start(&sig_term, on_signal, SIGTERM);

    if (open_blockdevs(&cfg) < 0 || open_sockets(loop, &cfg) < 0 ||
        (cfg.pidfile && write_pidfile(cfg.pidfile) < 0)) {
        close_servers();
        bdev_close_all();
        uv_walk(loop, close_leftover, NULL);
        uv_run(loop, UV_RUN_DEFAULT);
        uv_loop_close(loop);
        qmp_reset();
        return 1;
    }
    notify_send("READY=1");
    notify_status_update();

    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    remove_pidfile();
    qmp_reset();
    log_msg(LOG_LVL_INFO, "stopped");
    return 0;
}
