#include "daemon/client.h"

#include <stdlib.h>
#include <string.h>

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
static unsigned next_id = 1;
void (*client_quit_hook)(void);

size_t client_count(void)
{
    return n_clients;
}

static void on_closed(uv_handle_t *h)
{
    struct client *c = h->data;

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
                "client %u: disconnected: %zu bytes of output unread "
                "(limit %zu)",
                c->id, c->queued + len, c->limits.max_queue);
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
    (void)opaque;
    if (client_quit_hook) {
        client_quit_hook();
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

static const struct qmp_session_ops session_ops = {
    .send = session_send,
    .quit = session_quit,
    .resume = session_resume,
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
        log_msg(LOG_LVL_INFO, "client %u: disconnected", c->id);
        client_close(c);
        return;
    }
    if (nread > 0 && !c->closing) {
        qmp_session_feed(c->session, buf->base, (size_t)nread);
        /* While a reply is deferred, later requests wait: stop reading so
         * at most one buffer of input is held. */
        if (!c->closing && qmp_session_busy(c->session)) {
            uv_read_stop(stream);
        }
    }
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
    log_msg(LOG_LVL_INFO, "client %u: connected", c->id);
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

void client_close_all(void)
{
    for (struct client *c = clients; c; c = c->next) {
        client_close(c);
    }
}
