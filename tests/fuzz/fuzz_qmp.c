/* libFuzzer target: a client's byte stream -> framer -> QMP dispatcher with
 * the daemon's real command table (core, block layer, jobs).
 *
 * Each input is one client session: greeting, the bytes fed at once, the
 * loop run while a deferred reply is pending, then the session goes away and
 * everything it made is torn down (jobs cancelled, nodes closed), so inputs
 * do not influence each other. Image files live in a private directory that
 * is restored before every input; file names outside it are refused (see
 * fuzz_sandbox.h).
 *
 * Oracle besides the sanitizers: every line sent is one JSON object ending
 * in CR LF, ASCII only, with exactly one of the members a QMP server may
 * send (QMP / return / error / event).
 */
#include <stdint.h>
#include <uv.h>

#include "backends/bdev.h"
#include "backends/bdev_int.h"
#include "jobs/job.h"
#include "jobs/job_int.h"
#include "jobs/job_qmp.h"
#include "protocol/json.h"
#include "protocol/qmp.h"
#include "tests/fuzz/fuzz_sandbox.h"

struct image {
    const char *name;
    char *data;
    size_t len;
};

/* base.qcow2 holds data, top.qcow2 names it as backing, raw.img is plain. */
static struct image images[] = {
    {"base.qcow2", NULL, 0},
    {"top.qcow2", NULL, 0},
    {"raw.img", NULL, 0},
};

static uv_loop_t *loop;

struct ctx {
    struct qmp_session *s;
    bool quit;
};

static void check_line(const char *line, size_t len)
{
    json_error_t jerr;
    json_t *v;
    int kinds;

    if (len < 3 || line[len - 2] != '\r' || line[len - 1] != '\n') {
        fprintf(stderr, "line without CR LF: %.*s\n", (int)len, line);
        abort();
    }
    for (size_t i = 0; i < len - 2; i++) {
        if ((unsigned char)line[i] >= 0x80 || line[i] == '\n' ||
            line[i] == '\r') {
            fprintf(stderr, "byte %zu of a line is 0x%02x\n", i,
                    (unsigned char)line[i]);
            abort();
        }
    }
    v = json_loadb(line, len - 2, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (!json_is_object(v)) {
        fprintf(stderr, "line is not a JSON object (%s): %.*s\n", jerr.text,
                (int)len, line);
        abort();
    }
    kinds = !!json_object_get(v, "QMP") + !!json_object_get(v, "return") +
            !!json_object_get(v, "error") + !!json_object_get(v, "event");
    if (kinds != 1) {
        fprintf(stderr, "odd message: %.*s\n", (int)len, line);
        abort();
    }
    json_decref(v);
}

static bool verbose; /* FUZZ_VERBOSE=1: print what is sent */

static void on_send(void *opaque, const char *line, size_t len)
{
    (void)opaque;
    if (verbose) {
        fprintf(stderr, "<- %.*s", (int)len, line);
    }
    check_line(line, len);
}

static void on_quit(void *opaque)
{
    struct ctx *c = opaque;

    c->quit = true;
    qmp_session_stop(c->s); /* the daemon closes the client */
}

static void on_event(void *opaque, const char *line, size_t len)
{
    (void)opaque;
    if (verbose) {
        fprintf(stderr, "<= %.*s", (int)len, line);
    }
    check_line(line, len);
}

static const struct qmp_session_ops ops = {on_send, on_quit, NULL};

static int64_t fixed_clock(void)
{
    return 1700000000123456LL;
}

static void slurp(struct image *img)
{
    FILE *f = fopen(img->name, "rb");
    long n;

    if (!f || fseek(f, 0, SEEK_END) < 0 || (n = ftell(f)) < 0) {
        perror(img->name);
        abort();
    }
    rewind(f);
    img->len = (size_t)n;
    img->data = malloc(img->len + 1);
    if (!img->data || fread(img->data, 1, img->len, f) != img->len) {
        abort();
    }
    fclose(f);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    verbose = getenv("FUZZ_VERBOSE") != NULL;
    fuzz_sandbox_init(
        "qmp",
        "qemu-img create -q -f qcow2 -o cluster_size=4096 base.qcow2 1M && "
        "qemu-io -c 'write -P 0x11 0 64k' -c 'write -P 0x22 512k 4k' "
        "base.qcow2 >/dev/null && "
        "qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.qcow2 "
        "-F qcow2 top.qcow2 1M && "
        "qemu-io -c 'write -P 0x33 64k 64k' top.qcow2 >/dev/null && "
        "qemu-img create -q -f raw raw.img 64k");
    for (size_t i = 0; i < sizeof(images) / sizeof(images[0]); i++) {
        slurp(&images[i]);
    }
    loop = uv_default_loop();
    if (bdev_init(loop) < 0) {
        abort();
    }
    qmp_set_version(7, 2, 22, "blockjobd fuzz");
    qmp_core_init();
    bdev_qmp_init();
    job_qmp_init();
    qmp_event_set_sink(on_event, NULL);
    qmp_event_set_clock(fixed_clock);
    return 0;
}

static void on_jobs_stopped(void *opaque)
{
    *(bool *)opaque = true;
}

static void teardown(void)
{
    struct qmp_error err = QMP_ERROR_INIT;
    bool stopped = false;

    job_shutdown(on_jobs_stopped, &stopped);
    for (int i = 0; !stopped && i < 100000; i++) {
        uv_run(loop, UV_RUN_ONCE);
    }
    if (!stopped) {
        fprintf(stderr, "fuzz: jobs did not stop\n");
        abort();
    }
    uv_run(loop, UV_RUN_NOWAIT);
    for (struct job *j = job_first(), *next; j; j = next) {
        next = job_next(j);
        job_dismiss(j, &err);
        qmp_error_clear(&err);
    }
    uv_run(loop, UV_RUN_NOWAIT);
    if (job_first()) {
        fprintf(stderr, "fuzz: job '%s' left after shutdown and dismiss\n",
                job_first()->id);
        abort();
    }
    bdev_close_all();
    uv_run(loop, UV_RUN_NOWAIT);
    if (bdev_all_nodes()) {
        fprintf(stderr, "fuzz: node left after bdev_close_all\n");
        abort();
    }
}

/* Some job has work the loop will finish soon (I/O in flight, a step to
 * run, its ending under way); sleeping (rate-limited), paused or waiting
 * jobs do not count. */
static bool jobs_active(void)
{
    for (struct job *j = job_first(); j; j = job_next(j)) {
        if (j->in_flight || j->settling || (j->busy && !j->sleeping)) {
            return true;
        }
    }
    return false;
}

static void run_loop(struct ctx *c)
{
    for (int i = 0;
         i < 10000 && (jobs_active() || qmp_session_busy(c->s)) && !c->quit;
         i++) {
        uv_run(loop, UV_RUN_ONCE);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ctx c = {NULL, false};
    const char *p = (const char *)data, *end = p + size;

    for (size_t i = 0; i < sizeof(images) / sizeof(images[0]); i++) {
        fuzz_write_file(images[i].name, images[i].data, images[i].len);
    }
    fuzz_guard = true;
    c.s = qmp_session_new(&ops, &c, QMP_JSON_DEFAULT_BYTES);
    if (!c.s) {
        abort();
    }
    qmp_session_greet(c.s);
    /* Line by line, letting jobs and deferred replies progress between
     * lines, as a client typing commands would. */
    while (p < end && !c.quit) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);

        qmp_session_feed(c.s, p, n);
        p += n;
        if (p < end) {
            run_loop(&c);
        }
    }
    /* The client goes away right after its last line: its session stops
     * at once but is freed only after the jobs it started have stopped, as
     * in the daemon (a reply still deferred then reaches a stopped
     * session). */
    qmp_session_stop(c.s);
    teardown();
    qmp_session_free(c.s);
    fuzz_guard = false;
    return 0;
}
