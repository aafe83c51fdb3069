#include "daemon/server.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon/log.h"

struct server {
    uv_pipe_t pipe;
    char *path;
    struct client_limits limits;
    uint64_t refused;
};

static void on_connection(uv_stream_t *stream, int status)
{
    struct server *srv = stream->data;
    int ret;

    if (status < 0) {
        /* EMFILE/ENFILE: libuv already accepted and closed the pending
         * connections with its reserve descriptor, so the loop does not
         * spin; log once in a while. */
        if (srv->refused++ % 1000 == 0) {
            log_msg(LOG_LVL_WARNING, "cannot accept a client: %s",
                    uv_strerror(status));
        }
        return;
    }
    ret = client_accept(stream, &srv->limits);
    if (ret < 0) {
        log_msg(LOG_LVL_WARNING, "cannot accept a client: %s",
                uv_strerror(ret));
    }
}

/* A socket file left by a dead daemon refuses connections; a live one
 * accepts them. */
static int check_existing(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct stat st;
    int fd, ret;

    if (lstat(path, &st) < 0) {
        return errno == ENOENT ? 0 : -errno;
    }
    if (!S_ISSOCK(st.st_mode)) {
        return -EEXIST;
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -errno;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    ret = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    close(fd);
    if (ret == 0) {
        return -EADDRINUSE;
    }
    if (unlink(path) < 0 && errno != ENOENT) {
        return -errno;
    }
    return 0;
}

static void on_server_closed(uv_handle_t *h)
{
    struct server *srv = h->data;

    free(srv->path);
    free(srv);
}

struct server *server_listen(uv_loop_t *loop, const char *path, mode_t mode,
                             const struct client_limits *limits)
{
    struct sockaddr_un sa;
    struct server *srv;
    mode_t old_umask;
    int ret;

    /* libuv 1.44 silently truncates long paths: check first. */
    if (strlen(path) >= sizeof(sa.sun_path)) {
        log_msg(LOG_LVL_ERROR,
                "socket path '%s' is too long (at most %zu bytes)", path,
                sizeof(sa.sun_path) - 1);
        return NULL;
    }
    ret = check_existing(path);
    if (ret == -EADDRINUSE) {
        log_msg(LOG_LVL_ERROR,
                "socket '%s' is in use by another running daemon", path);
        return NULL;
    }
    if (ret == -EEXIST) {
        log_msg(LOG_LVL_ERROR, "'%s' exists and is not a socket", path);
        return NULL;
    }
    if (ret < 0) {
        log_msg(LOG_LVL_ERROR, "cannot use socket '%s': %s", path,
                strerror(-ret));
        return NULL;
    }
    srv = calloc(1, sizeof(*srv));
    if (!srv || !(srv->path = strdup(path))) {
        free(srv);
        return NULL;
    }
    srv->limits = *limits;
    uv_pipe_init(loop, &srv->pipe, 0);
    srv->pipe.data = srv;
    /* Create the file with no access for others, then widen to `mode`. */
    old_umask = umask(0177);
    ret = uv_pipe_bind(&srv->pipe, path);
    umask(old_umask);
    if (ret == 0 && chmod(path, mode) < 0) {
        ret = -errno;
    }
    if (ret == 0) {
        ret = uv_listen((uv_stream_t *)&srv->pipe, 511, on_connection);
    }
    if (ret < 0) {
        log_msg(LOG_LVL_ERROR, "cannot listen on '%s': %s", path,
                uv_strerror(ret));
        unlink(path);
        uv_close((uv_handle_t *)&srv->pipe, on_server_closed);
        return NULL;
    }
    log_msg(LOG_LVL_INFO, "listening on %s", path);
    return srv;
}

void server_close(struct server *srv)
{
    unlink(srv->path);
    uv_close((uv_handle_t *)&srv->pipe, on_server_closed);
}
