/* blockjobd: a QMP block-job daemon. Start-up order: options, limits,
 * modules (QMP core, block layer, jobs), sockets, then the loop. Teardown:
 * sockets and clients first, then jobs, then images, then the loop. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

#include "daemon/client.h"
#include "daemon/log.h"
#include "daemon/server.h"
#include "backends/bdev.h"
#include "jobs/job.h"
#include "jobs/job_qmp.h"
#include "protocol/json.h"
#include "protocol/qmp.h"

#define BLOCKJOBD_VERSION "0.1.0"
#define MAX_SOCKETS       16

struct config {
    const char *sockets[MAX_SOCKETS];
    int n_sockets;
    mode_t socket_mode;
    struct client_limits limits;
};

static struct server *servers[MAX_SOCKETS];
static int n_servers;
static uv_signal_t sig_int, sig_term;
static bool shutting_down;

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: blockjobd --socket PATH [OPTION]...\n"
            "Serve QEMU's QMP block-job commands on a UNIX socket.\n"
            "\n"
            "  -s, --socket PATH          listen on this UNIX socket "
            "(repeatable)\n"
            "  -m, --socket-mode MODE     octal file mode of the socket "
            "(default 0600)\n"
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
            "Exit status: 0 after a clean shutdown (SIGINT, SIGTERM or "
            "'quit'),\n"
            "1 when start-up fails, 2 for bad options.\n");
}

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

static int parse_args(int argc, char **argv, struct config *cfg)
{
    enum { OPT_MAX_MSG = 256, OPT_MAX_QUEUE };
    static const struct option opts[] = {
        {"socket", required_argument, NULL, 's'},
        {"socket-mode", required_argument, NULL, 'm'},
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

    while ((c = getopt_long(argc, argv, "s:m:l:hV", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            if (cfg->n_sockets == MAX_SOCKETS) {
                fprintf(stderr, "blockjobd: at most %d sockets\n", MAX_SOCKETS);
                return 2;
            }
            cfg->sockets[cfg->n_sockets++] = optarg;
            break;
        case 'm':
            mode = strtoul(optarg, &end, 8);
            if (!*optarg || *end || mode > 0777) {
                fprintf(stderr,
                        "blockjobd: --socket-mode: '%s' is not an octal "
                        "file mode\n",
                        optarg);
                return 2;
            }
            cfg->socket_mode = (mode_t)mode;
            break;
        case OPT_MAX_MSG:
            if (parse_size(optarg, &cfg->limits.max_msg_bytes) < 0) {
                fprintf(stderr,
                        "blockjobd: --max-message-size: '%s' is not a "
                        "positive number of bytes\n",
                        optarg);
                return 2;
            }
            break;
        case OPT_MAX_QUEUE:
            if (parse_size(optarg, &cfg->limits.max_queue) < 0) {
                fprintf(stderr,
                        "blockjobd: --max-output-queue: '%s' is not a "
                        "positive number of bytes\n",
                        optarg);
                return 2;
            }
            break;
        case 'l':
            level = log_parse_level(optarg);
            if (level < 0) {
                fprintf(stderr,
                        "blockjobd: --log-level: '%s' is not one of error, "
                        "warning, info, debug\n",
                        optarg);
                return 2;
            }
            log_set_level((enum log_level)level);
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case 'V':
            printf("blockjobd %s (QMP of QEMU 7.2)\n", BLOCKJOBD_VERSION);
            exit(0);
        default:
            fprintf(stderr, "Try 'blockjobd --help' for more information.\n");
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "blockjobd: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (cfg->n_sockets == 0) {
        fprintf(stderr, "blockjobd: --socket PATH is required\n"
                        "Try 'blockjobd --help' for more information.\n");
        return 2;
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

static void event_sink(void *opaque, const char *line, size_t len)
{
    (void)opaque;
    client_broadcast(line, len);
}

static void close_leftover(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) {
        uv_close(h, NULL);
    }
}

static uv_timer_t close_timer;

static void close_images(uv_timer_t *t)
{
    (void)t;
    bdev_close_all();
    uv_walk(uv_default_loop(), close_leftover, NULL);
}

/* Jobs have stopped at a consistent point. Close the images (flushing
 * them) from a fresh loop iteration, once the jobs' own callbacks have
 * returned and dropped their node references; then let the loop end. */
static void on_jobs_stopped(void *opaque)
{
    (void)opaque;
    uv_timer_init(uv_default_loop(), &close_timer);
    uv_timer_start(&close_timer, close_images, 0, 0);
}

static void daemon_shutdown(const char *why)
{
    if (shutting_down) {
        return;
    }
    shutting_down = true;
    log_msg(LOG_LVL_INFO, "shutting down (%s)", why);
    for (int i = 0; i < n_servers; i++) {
        server_close(servers[i]);
    }
    client_close_all();
    uv_close((uv_handle_t *)&sig_int, NULL);
    uv_close((uv_handle_t *)&sig_term, NULL);
    job_shutdown(on_jobs_stopped, NULL);
}

static void on_signal(uv_signal_t *h, int signum)
{
    (void)h;
    daemon_shutdown(signum == SIGINT ? "SIGINT" : "SIGTERM");
}

static void on_quit(void)
{
    daemon_shutdown("quit");
}

int main(int argc, char **argv)
{
    struct config cfg = {
        .socket_mode = 0600,
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
    qmp_event_set_sink(event_sink, NULL);
    client_quit_hook = on_quit;

    for (int i = 0; i < cfg.n_sockets; i++) {
        servers[n_servers] =
            server_listen(loop, cfg.sockets[i], cfg.socket_mode, &cfg.limits);
        if (!servers[n_servers]) {
            for (int j = 0; j < n_servers; j++) {
                server_close(servers[j]);
            }
            uv_run(loop, UV_RUN_NOWAIT);
            qmp_reset();
            return 1;
        }
        n_servers++;
    }
    uv_signal_init(loop, &sig_int);
    uv_signal_init(loop, &sig_term);
    uv_signal_start(&sig_int, on_signal, SIGINT);
    uv_signal_start(&sig_term, on_signal, SIGTERM);

    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    qmp_reset();
    log_msg(LOG_LVL_INFO, "stopped");
    return 0;
}
