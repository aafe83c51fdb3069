#include "daemon/client.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "daemon/log.h"
#include "protocol/qmp.h"

#define READ_BUF_SIZE 65536

struct client {
    uv_pipe_t pipe;
    struct qmp_session *session;
    struct client_limits limits;
    size_t queued; /* bytes handed to uv_write and not yet written */
    unsigned id;
    bool closing;
    bool negotiated;
    bool flushing;   /* shutdown: closes once its output is written */
    bool wants_turn; /* its session yielded with input still held */
    struct ucred cred;
    uv_shutdown_t shutdown_req;
    struct client *prev, *next;
    char rbuf[READ_BUF_SIZE];
};

struct write_req {
    uv_write_t req;
    struct client *c;
    size_t len;
    char data[];
};

static struct client *clients;
static size_t n_clients;
/* Runs the next turn of every client whose session yielded: one turn per
 * client per loop iteration, with other clients' I/O served in between. */
static uv_idle_t turn_idle;
static bool turn_idle_ready;
static unsigned next_id = 1;

/* Shutdown: called once the last client is gone. */
static void (*all_closed_cb)(void *opaque);
static void *all_closed_opaque;
static uv_timer_t flush_timer;
static bool flush_timer_on;

size_t client_count(void)
{
    return n_clients;
}

static void hook_changed(const struct client_hooks *hooks)
{
    if (hooks && hooks->changed) {
        hooks->changed(hooks->opaque);
    }
}

static void on_closed(uv_handle_t *h)
{
    struct client *c = h->data;
    const struct client_hooks *hooks = c->limits.hooks;

    if (c->prev) {
        c->prev->next = c->next;
    } else {
        clients = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    }
    n_clients--;
    qmp_session_free(c->session);
    free(c);
    hook_changed(hooks);
    if (n_clients == 0 && all_closed_cb) {
        void (*cb)(void *) = all_closed_cb;

        all_closed_cb = NULL;
        if (flush_timer_on) {
            flush_timer_on = false;
            uv_close((uv_handle_t *)&flush_timer, NULL);
        }
        cb(all_closed_opaque);
    }
}

/* Marks the client closing; the memory goes in on_closed, from the loop. */
static void client_close(struct client *c)
{
    if (c->closing) {
        return;
    }
    c->closing = true;
    qmp_session_stop(c->session);
    uv_close((uv_handle_t *)&c->pipe, on_closed);
}

static void on_written(uv_write_t *req, int status)
{
    struct write_req *w = (struct write_req *)req;
    struct client *c = w->c;

    c->queued -= w->len;
    free(w);
    if (status < 0 && status != UV_ECANCELED) {
        log_msg(LOG_LVL_DEBUG, "client %u: write failed: %s", c->id,
                uv_strerror(status));
        client_close(c);
    }
}

/* Writes what the socket takes now and queues the rest. */
static void client_send(struct client *c, const char *buf, size_t len)
{
    uv_buf_t b;
    int n = 0;
    struct write_req *w;

    if (c->closing) {
        return;
    }
    if (c->queued == 0) {
        b = uv_buf_init((char *)buf, (unsigned)len);
        n = uv_try_write((uv_stream_t *)&c->pipe, &b, 1);
        if (n == UV_EAGAIN) {
            n = 0;
        } else if (n < 0) {
            log_msg(LOG_LVL_DEBUG, "client %u: write failed: %s", c->id,
                    uv_strerror(n));
            client_close(c);
            return;
        }
        if ((size_t)n == len) {
            return;
        }
    }
    len -= (size_t)n;
    buf += n;
    if (c->queued + len > c->limits.max_queue) {
        log_msg(LOG_LVL_WARNING,
                "client %u: disconnected (uid %u): too slow, %zu bytes of "
                "output unread (limit %zu)",
                c->id, (unsigned)c->cred.uid, c->queued + len,
                c->limits.max_queue);
        client_close(c);
        return;
    }
    w = malloc(sizeof(*w) + len);
    if (!w) {
        client_close(c);
        return;
    }
    w->c = c;
    w->len = len;
    memcpy(w->data, buf, len);
    b = uv_buf_init(w->data, (unsigned)len);
    c->queued += len;
    if (uv_write(&w->req, (uv_stream_t *)&c->pipe, &b, 1, on_written) < 0) {
        c->queued -= len;
        free(w);
        client_close(c);
    }
}

static void session_send(void *opaque, const char *line, size_t len)
{
    client_send(opaque, line, len);
}

static void session_quit(void *opaque)
{
    struct client *c = opaque;

    const struct client_hooks *hooks = c->limits.hooks;

    if (hooks && hooks->quit) {
        hooks->quit(hooks->opaque);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

/* A deferred reply went out: read requests again. */
static void session_resume(void *opaque)
{
    struct client *c = opaque;

    if (!c->closing) {
        uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
    }
}

static void on_turn(uv_idle_t *idle)
{
    bool more = false;

    for (struct client *c = clients; c; c = c->next) {
        if (c->wants_turn && !c->closing) {
            c->wants_turn = false;
            qmp_session_continue(c->session);
        }
        more |= c->wants_turn && !c->closing;
    }
    if (!more) {
        uv_idle_stop(idle);
    }
}

/* The session had its turn: stop reading, continue on a later iteration. */
static void session_yield(void *opaque)
{
    struct client *c = opaque;

    if (c->closing) {
        return;
    }
    uv_read_stop((uv_stream_t *)&c->pipe);
    c->wants_turn = true;
    if (!turn_idle_ready) {
        uv_idle_init(c->pipe.loop, &turn_idle);
        uv_unref((uv_handle_t *)&turn_idle);
        turn_idle_ready = true;
    }
    uv_idle_start(&turn_idle, on_turn);
}

static const struct qmp_session_ops session_ops = {
    .send = session_send,
    .quit = session_quit,
    .resume = session_resume,
    .yield = session_yield,
};

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct client *c = h->data;

    (void)suggested;
    *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct client *c = stream->data;

    if (nread < 0) {
        if (nread != UV_EOF) {
            log_msg(LOG_LVL_DEBUG, "client %u: read failed: %s", c->id,
                    uv_strerror((int)nread));
        }
        log_msg(LOG_LVL_INFO, "client %u: disconnected (uid %u)", c->id,
                (unsigned)c->cred.uid);
        client_close(c);
        return;
    }
    if (nread > 0 && !c->closing) {
        qmp_session_feed(c->session, buf->base, (size_t)nread);
        if (!c->negotiated && qmp_session_negotiated(c->session)) {
            c->negotiated = true; /* from now on it receives events */
            log_msg(LOG_LVL_DEBUG, "client %u: capabilities negotiated", c->id);
        }
        /* While a reply is deferred, later requests wait: stop reading so
         * at most one buffer of input is held. */
        if (!c->closing && qmp_session_busy(c->session)) {
            uv_read_stop(stream);
        }
    }
}

/* Root and our own uid may always connect; others only when listed (or
 * when no list was given: then the socket file's permissions decide). */
static bool peer_allowed(const struct client_limits *limits, uid_t uid)
{
    if (limits->n_allow_uids == 0 || uid == 0 || uid == geteuid()) {
        return true;
    }
    for (size_t i = 0; i < limits->n_allow_uids; i++) {
        if (limits->allow_uids[i] == uid) {
            return true;
        }
    }
    return false;
}

/* A refused peer gets one QMP error line instead of the greeting, written
 * straight to the socket (a fresh socket takes a short line), then the
 * connection closes. */
static void refuse(struct client *c)
{
    char line[256];
    int fd = -1, n;

    n = snprintf(line, sizeof(line),
                 "{\"error\": {\"class\": \"GenericError\", \"desc\": "
                 "\"Access denied: uid %u may not use this socket\"}}\r\n",
                 (unsigned)c->cred.uid);
    if (uv_fileno((uv_handle_t *)&c->pipe, &fd) == 0 && n > 0) {
        ssize_t w = write(fd, line, (size_t)n);
        (void)w; /* nothing to do if the peer is gone already */
    }
    log_msg(LOG_LVL_WARNING,
            "client %u: refused on %s: uid %u gid %u pid %ld is not allowed",
            c->id, c->limits.where ? c->limits.where : "?",
            (unsigned)c->cred.uid, (unsigned)c->cred.gid, (long)c->cred.pid);
    client_close(c);
}

int client_accept(uv_stream_t *server, const struct client_limits *limits)
{
    struct client *c = calloc(1, sizeof(*c));
    int ret;

    if (!c) {
        return UV_ENOMEM;
    }
    ret = uv_pipe_init(server->loop, &c->pipe, 0);
    if (ret < 0) {
        free(c);
        return ret;
    }
    c->pipe.data = c;
    c->limits = *limits;
    c->id = next_id++;
    c->session = qmp_session_new(&session_ops, c, limits->max_msg_bytes);
    c->next = clients;
    if (clients) {
        clients->prev = c;
    }
    clients = c;
    n_clients++;
    if (!c->session) {
        client_close(c);
        return UV_ENOMEM;
    }
    ret = uv_accept(server, (uv_stream_t *)&c->pipe);
    if (ret < 0) {
        client_close(c);
        return ret;
    }
    {
        socklen_t len = sizeof(c->cred);
        int fd = -1;

        c->cred.uid = (uid_t)-1;
        c->cred.gid = (gid_t)-1;
        if (uv_fileno((uv_handle_t *)&c->pipe, &fd) < 0 ||
            getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &c->cred, &len) < 0) {
            log_msg(LOG_LVL_WARNING, "client %u: cannot read its credentials",
                    c->id);
            /* Unknown peer: only an open socket lets it in. */
            if (limits->n_allow_uids) {
                refuse(c);
                return 0;
            }
        }
    }
    if (!peer_allowed(limits, c->cred.uid)) {
        refuse(c);
        return 0;
    }
    if (limits->readonly) {
        qmp_session_set_readonly(c->session, true);
    }
    log_msg(LOG_LVL_INFO,
            "client %u: connected on %s%s (uid %u, gid %u, pid %ld)", c->id,
            limits->where ? limits->where : "?",
            limits->readonly ? " (read-only)" : "", (unsigned)c->cred.uid,
            (unsigned)c->cred.gid, (long)c->cred.pid);
    hook_changed(c->limits.hooks);
    qmp_session_greet(c->session);
    ret = uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
    if (ret < 0) {
        client_close(c);
    }
    return 0;
}

void client_broadcast(const char *line, size_t len)
{
    for (struct client *c = clients; c; c = c->next) {
        if (!c->closing && qmp_session_negotiated(c->session)) {
            client_send(c, line, len);
        }
    }
}

void client_stop_input_all(void)
{
    for (struct client *c = clients; c; c = c->next) {
        if (!c->closing) {
            uv_read_stop((uv_stream_t *)&c->pipe);
            qmp_session_stop(c->session);
        }
    }
}

static void on_flushed(uv_shutdown_t *req, int status)
{
    (void)status;
    client_close(req->data);
}

static void on_flush_timeout(uv_timer_t *t)
{
    (void)t;
    for (struct client *c = clients; c; c = c->next) {
        if (!c->closing) {
            log_msg(LOG_LVL_WARNING,
                    "client %u: closed with %zu bytes of output unread", c->id,
                    c->queued);
        }
    }
    client_close_all();
}

void client_close_all_flushed(unsigned timeout_ms, void (*cb)(void *opaque),
                              void *opaque)
{
    all_closed_cb = cb;
    all_closed_opaque = opaque;
    if (n_clients == 0) {
        all_closed_cb = NULL;
        cb(opaque);
        return;
    }
    for (struct client *c = clients; c; c = c->next) {
        if (c->closing || c->flushing) {
            continue;
        }
        c->flushing = true;
        c->shutdown_req.data = c;
        /* uv_shutdown waits for queued writes, then half-closes. */
        if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->pipe, on_flushed) <
            0) {
            client_close(c);
        }
    }
    if (n_clients > 0) {
        uv_timer_init(clients ? clients->pipe.loop : uv_default_loop(),
                      &flush_timer);
        uv_timer_start(&flush_timer, on_flush_timeout, timeout_ms, 0);
        flush_timer_on = true;
    }
}

void client_close_all(void)
{
    for (struct client *c = clients; c; c = c->next) {
        client_close(c);
    }
}
