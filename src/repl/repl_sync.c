/*
 * repl_sync.c - the writer's side of sync mode (repl_sync.h): a persistent
 * connection to the repl service's wait socket, one request at a time.
 */
#include "repl/repl_sync.h"

#include <errno.h>
#include <pthread.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "lib/fsutil.h"
#include "lib/log.h"
#include "repl/repl.h"

struct repl_sync {
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int fd;
    int timeout_ms;
    int refuse;
};

int repl_sync_open(const conf *c, repl_sync **out, hv_err *err)
{
    *out = NULL;
    /* Not only on the configured primary: a replica can be promoted
     * (docs/replication.md), and while it is a replica its writes are
     * refused by the fence before they get here. */
    if (strcmp(conf_get(c, "repl_mode"), "sync") != 0 || !repl_configured(c))
        return 0;
    repl_sync *s = calloc(1, sizeof(*s));
    if (!s)
        return hv_err_set(err, -ENOMEM, "out of memory");
    char path[4200];
    repl_wait_path(c, path, sizeof(path));
    if (strlen(path) >= sizeof(s->path)) {
        free(s);
        return hv_err_set(err, -ENAMETOOLONG, "wait socket path too long: %s", path);
    }
    strcpy(s->path, path);
    s->fd = -1;
    long long to = conf_get_int(c, "repl_sync_timeout_ms");
    /* The service applies the timeout; ours only catches a hung service. */
    s->timeout_ms = (int)(to > 0 && to < 3600000 ? to : 5000) + 5000;
    s->refuse = strcmp(conf_get(c, "repl_sync_on_timeout"), "refuse") == 0;
    *out = s;
    return 0;
}

static int connect_wait(repl_sync *s)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, s->path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    s->fd = fd;
    return 0;
}

static int ask(repl_sync *s, const char *req, char *reply, size_t len)
{
    if (s->fd < 0 && connect_wait(s) < 0)
        return -ENOTCONN;
    if (fs_write_full(s->fd, req, strlen(req)) < 0)
        return -EPIPE;
    size_t n = 0;
    while (n < len - 1) {
        struct pollfd p = {.fd = s->fd, .events = POLLIN};
        int r = poll(&p, 1, s->timeout_ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -ETIMEDOUT;
        ssize_t got = read(s->fd, reply + n, len - 1 - n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return -EPIPE;
        n += (size_t)got;
        reply[n] = 0;
        char *nl = strchr(reply, '\n');
        if (nl) {
            *nl = 0;
            return 0;
        }
    }
    return -EPROTO;
}

int repl_sync_wait(repl_sync *s, const char *account, uint64_t modseq, int *degraded,
                   hv_err *err)
{
    if (degraded)
        *degraded = 0;
    if (!s)
        return 0;
    char req[400], reply[512];
    snprintf(req, sizeof(req), "wait %s %llu\n", account, (unsigned long long)modseq);
    int rc = ask(s, req, reply, sizeof(reply));
    if (rc == -EPIPE || rc == -ENOTCONN) {
        /* A restarted service: one fresh connection, then give up. */
        if (s->fd >= 0)
            close(s->fd);
        s->fd = -1;
        rc = ask(s, req, reply, sizeof(reply));
    }
    if (rc < 0) {
        if (s->fd >= 0)
            close(s->fd);
        s->fd = -1;
        log_error("repl_sync: account=%s modseq=%llu no_answer reason=\"%s\" policy=%s", account,
                  (unsigned long long)modseq, strerror(-rc), s->refuse ? "refuse" : "async");
        if (s->refuse)
            return hv_err_set(err, -EAGAIN, "replication service not answering (%s)",
                              strerror(-rc));
        if (degraded)
            *degraded = 1;
        return 0;
    }
    if (strcmp(reply, "ok") == 0)
        return 0;
    if (strncmp(reply, "degraded", 8) == 0) {
        if (degraded)
            *degraded = 1;
        return 0;
    }
    return hv_err_set(err, -EAGAIN, "%s",
                      strncmp(reply, "refused ", 8) == 0 ? reply + 8 : reply);
}

void repl_sync_close(repl_sync *s)
{
    if (!s)
        return;
    if (s->fd >= 0)
        close(s->fd);
    free(s);
}

static pthread_key_t thread_key;
static pthread_once_t thread_key_once = PTHREAD_ONCE_INIT;
static void thread_handle_free(void *p) { repl_sync_close(p); }
static void thread_key_make(void) { pthread_key_create(&thread_key, thread_handle_free); }

int repl_sync_thread(const conf *c, repl_sync **out, hv_err *err)
{
    pthread_once(&thread_key_once, thread_key_make);
    repl_sync *rs = pthread_getspecific(thread_key);
    if (!rs) {
        int rc = repl_sync_open(c, &rs, err);
        if (rc < 0)
            return rc;
        if (rs)
            pthread_setspecific(thread_key, rs);
    }
    *out = rs;
    return 0;
}
