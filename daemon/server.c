#include "daemon/server.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon/log.h"

#define LISTEN_FDS_START 3

struct server {
    uv_pipe_t pipe;
    char *path;  /* the socket file we created, or the passed socket's name */
    bool unlink; /* we created the file: remove it at close */
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
            log_msg(LOG_LVL_WARNING, "cannot accept a client on %s: %s",
                    srv->path, uv_strerror(status));
        }
        return;
    }
    ret = client_accept(stream, &srv->limits);
    if (ret < 0) {
        log_msg(LOG_LVL_WARNING, "cannot accept a client on %s: %s", srv->path,
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

static struct server *server_new(uv_loop_t *loop, const char *path,
                                 const struct client_limits *limits)
{
    struct server *srv = calloc(1, sizeof(*srv));

    if (!srv || !(srv->path = strdup(path))) {
        free(srv);
        log_msg(LOG_LVL_ERROR, "out of memory");
        return NULL;
    }
    srv->limits = *limits;
    srv->limits.where = srv->path;
    uv_pipe_init(loop, &srv->pipe, 0);
    srv->pipe.data = srv;
    return srv;
}

struct server *server_listen(uv_loop_t *loop, const char *path,
                             const struct server_file_opts *file,
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
    srv = server_new(loop, path, limits);
    if (!srv) {
        return NULL;
    }
    /* Create the file with no access for others, then set group and mode
     * before listen(): nobody can connect in between. */
    old_umask = umask(0177);
    ret = uv_pipe_bind(&srv->pipe, path);
    umask(old_umask);
    if (ret == 0) {
        srv->unlink = true;
        if (file->gid != (gid_t)-1 && chown(path, (uid_t)-1, file->gid) < 0) {
            ret = -errno;
        } else if (chmod(path, file->mode) < 0) {
            ret = -errno;
        }
    }
    if (ret == 0) {
        ret = uv_listen((uv_stream_t *)&srv->pipe, 511, on_connection);
    }
    if (ret < 0) {
        log_msg(LOG_LVL_ERROR, "cannot listen on '%s': %s", path,
                uv_strerror(ret));
        if (srv->unlink) {
            unlink(path);
        }
        uv_close((uv_handle_t *)&srv->pipe, on_server_closed);
        return NULL;
    }
    log_msg(LOG_LVL_INFO, "listening on %s%s", path,
            limits->readonly ? " (read-only)" : "");
    return srv;
}

struct server *server_adopt(uv_loop_t *loop, int fd, const char *name,
                            const struct client_limits *limits)
{
    struct server *srv = server_new(loop, name, limits);
    int ret;

    if (!srv) {
        return NULL;
    }
    ret = uv_pipe_open(&srv->pipe, fd);
    if (ret == 0) {
        ret = uv_listen((uv_stream_t *)&srv->pipe, 511, on_connection);
    }
    if (ret < 0) {
        log_msg(LOG_LVL_ERROR, "cannot serve the passed socket %s: %s", name,
                uv_strerror(ret));
        uv_close((uv_handle_t *)&srv->pipe, on_server_closed);
        return NULL;
    }
    log_msg(LOG_LVL_INFO, "listening on passed socket %s (fd %d)%s", name, fd,
            limits->readonly ? " (read-only)" : "");
    return srv;
}

void server_close(struct server *srv)
{
    if (srv->unlink) {
        unlink(srv->path);
    }
    uv_close((uv_handle_t *)&srv->pipe, on_server_closed);
}

/* A passed descriptor must be what we can serve: a listening AF_UNIX stream
 * socket. */
static int check_passed_fd(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    int type = 0, listening = 0;
    socklen_t olen = sizeof(int);

    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) {
        log_msg(LOG_LVL_ERROR, "passed fd %d is not a socket: %s", fd,
                strerror(errno));
        return -ENOTSOCK;
    }
    if (ss.ss_family != AF_UNIX) {
        log_msg(LOG_LVL_ERROR, "passed fd %d is not an AF_UNIX socket", fd);
        return -EAFNOSUPPORT;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &olen) < 0 ||
        type != SOCK_STREAM) {
        log_msg(LOG_LVL_ERROR, "passed fd %d is not a stream socket", fd);
        return -EPROTOTYPE;
    }
    olen = sizeof(int);
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &olen) < 0 ||
        !listening) {
        log_msg(LOG_LVL_ERROR, "passed fd %d is not a listening socket", fd);
        return -EINVAL;
    }
    return 0;
}

int server_listen_fds(char **names, int max)
{
    const char *pid_s = getenv("LISTEN_PID");
    const char *fds_s = getenv("LISTEN_FDS");
    const char *names_s = getenv("LISTEN_FDNAMES");
    char *end, *list = NULL, *save = NULL, *tok;
    long pid, n;
    int ret = 0;

    if (!pid_s || !fds_s) {
        return 0;
    }
    errno = 0;
    pid = strtol(pid_s, &end, 10);
    if (errno || *end || pid != (long)getpid()) {
        /* Meant for another process (we inherited the environment). */
        goto out;
    }
    n = strtol(fds_s, &end, 10);
    if (errno || end == fds_s || *end || n < 0 || n > max) {
        log_msg(LOG_LVL_ERROR,
                "LISTEN_FDS='%s': expected between 0 and %d sockets", fds_s,
                max);
        ret = -EINVAL;
        goto out;
    }
    if (names_s && !(list = strdup(names_s))) {
        ret = -ENOMEM;
        goto out;
    }
    tok = list ? strtok_r(list, ":", &save) : NULL;
    for (int i = 0; i < n; i++) {
        int fd = LISTEN_FDS_START + i;

        ret = check_passed_fd(fd);
        if (ret < 0) {
            goto out;
        }
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        names[i] = strdup(tok ? tok : "");
        if (!names[i]) {
            ret = -ENOMEM;
            goto out;
        }
        tok = tok ? strtok_r(NULL, ":", &save) : NULL;
    }
    ret = (int)n;
out:
    free(list);
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    return ret;
}
