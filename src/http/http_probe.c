/*
 * http_probe.c - how the http service looks at the rest of the node, and
 * /health.
 *
 * Everything here runs on a worker thread and every look is bounded by
 * HTTP_PROBE_MS per wait (and a few of them in all): a hung service makes
 * its own check fail, it never hangs the http service.
 *
 * /health asks the master which services run (admin.sock "status"), then
 * asks each running one something only a working service answers: the
 * greeting on its port (imap, smtp, lmtp, proxy), "stats" on queue.sock
 * (the smtp service's queue; a queue that refuses writes is unhealthy
 * too); repl only has to take a connection on repl.sock. It does not
 * judge replication lag, moves or queue length: those are metrics to
 * alert on with thresholds, not reasons to call a node dead (DESIGN.md:
 * over-eager health checks).
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "http/http_internal.h"
#include "repl/repl.h"

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for events on fd, at most HTTP_PROBE_MS and not past deadline. */
static int wait_fd(int fd, short events, int64_t deadline, hv_err *err, const char *what)
{
    for (;;) {
        int64_t left = deadline - mono_ms();
        if (left > HTTP_PROBE_MS)
            left = HTTP_PROBE_MS;
        if (left <= 0)
            return hv_err_set(err, -ETIMEDOUT, "%s: no answer within %d ms", what,
                              HTTP_PROBE_MS);
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return hv_err_sys(err, "%s: poll", what);
        if (r == 0)
            return hv_err_set(err, -ETIMEDOUT, "%s: no answer within %d ms", what,
                              HTTP_PROBE_MS);
        return 0;
    }
}

/* Finishes a non-blocking connect. */
static int connect_wait(int fd, const struct sockaddr *sa, socklen_t len, int64_t deadline,
                        hv_err *err, const char *what)
{
    if (connect(fd, sa, len) == 0)
        return 0;
    if (errno != EINPROGRESS && errno != EAGAIN)
        return hv_err_sys(err, "%s: connect", what);
    int rc = wait_fd(fd, POLLOUT, deadline, err, what);
    if (rc < 0)
        return rc;
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
    if (soerr)
        return hv_err_set(err, -soerr, "%s: connect: %s", what, strerror(soerr));
    return 0;
}

int http_ask_unix(const char *path, const char *line, int dot_end, size_t max_bytes, buf *out,
                  hv_err *err)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path))
        return hv_err_set(err, -ENAMETOOLONG, "socket path too long: %s", path);
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return hv_err_sys(err, "socket");
    /* A few waits in all: a server that drips its answer is cut off. */
    int64_t deadline = mono_ms() + 3 * HTTP_PROBE_MS;
    int rc = connect_wait(fd, (struct sockaddr *)&sa, sizeof(sa), deadline, err, path);
    char req[600];
    size_t reqlen = (size_t)snprintf(req, sizeof(req), "%s\n", line), sent = 0;
    while (rc == 0 && sent < reqlen) {
        ssize_t w = send(fd, req + sent, reqlen - sent, MSG_NOSIGNAL);
        if (w > 0)
            sent += (size_t)w;
        else if (w < 0 && errno == EAGAIN)
            rc = wait_fd(fd, POLLOUT, deadline, err, path);
        else if (!(w < 0 && errno == EINTR))
            rc = hv_err_sys(err, "%s: send", path);
    }
    size_t start = out->len;
    while (rc == 0) {
        size_t got = out->len - start;
        const char *d = (const char *)out->data + start;
        if (dot_end && ((got == 2 && memcmp(d, ".\n", 2) == 0) ||
                        (got >= 3 && memcmp(d + got - 3, "\n.\n", 3) == 0))) {
            out->len -= 2;
            out->data[out->len] = 0;
            break;
        }
        if (got > max_bytes) {
            rc = hv_err_set(err, -EMSGSIZE, "%s: answer longer than %zu bytes", path, max_bytes);
            break;
        }
        buf_reserve(out, 4096);
        ssize_t r = recv(fd, out->data + out->len, 4096, 0);
        if (r > 0) {
            out->len += (size_t)r;
            out->data[out->len] = 0;
        } else if (r == 0) {
            if (dot_end)
                rc = hv_err_set(err, -ECONNRESET, "%s: closed before the end of the answer",
                                path);
            break;
        } else if (errno == EAGAIN) {
            rc = wait_fd(fd, POLLIN, deadline, err, path);
        } else if (errno != EINTR) {
            rc = hv_err_sys(err, "%s: recv", path);
        }
    }
    close(fd);
    if (rc < 0)
        out->len = start;
    return rc;
}

/* The socket at path takes a connection. */
static int unix_connect_only(const char *path, hv_err *err)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path))
        return hv_err_set(err, -ENAMETOOLONG, "socket path too long: %s", path);
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return hv_err_sys(err, "socket");
    int rc = connect_wait(fd, (struct sockaddr *)&sa, sizeof(sa), mono_ms() + HTTP_PROBE_MS, err,
                          path);
    close(fd);
    return rc;
}

int http_probe_greeting(const char *addr, long port, const char *want, hv_err *err)
{
    /* A service listening on every address is reached on loopback. */
    const char *host = !*addr || strcmp(addr, "0.0.0.0") == 0 ? "127.0.0.1"
                       : strcmp(addr, "::") == 0              ? "::1"
                                                              : addr;
    char what[128], ps[16];
    snprintf(what, sizeof(what), "%s port %ld", host, port);
    snprintf(ps, sizeof(ps), "%ld", port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST}, *res;
    int g = getaddrinfo(host, ps, &hints, &res);
    if (g != 0)
        return hv_err_set(err, -EINVAL, "%s: %s", what, gai_strerror(g));
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        freeaddrinfo(res);
        return hv_err_sys(err, "socket");
    }
    int64_t deadline = mono_ms() + 2 * HTTP_PROBE_MS;
    int rc = connect_wait(fd, res->ai_addr, res->ai_addrlen, deadline, err, what);
    freeaddrinfo(res);
    char line[256];
    size_t n = 0;
    while (rc == 0 && n < sizeof(line) - 1 && !memchr(line, '\n', n)) {
        ssize_t r = recv(fd, line + n, sizeof(line) - 1 - n, 0);
        if (r > 0)
            n += (size_t)r;
        else if (r == 0)
            rc = hv_err_set(err, -ECONNRESET, "%s: closed without a greeting", what);
        else if (errno == EAGAIN)
            rc = wait_fd(fd, POLLIN, deadline, err, what);
        else if (errno != EINTR)
            rc = hv_err_sys(err, "%s: recv", what);
    }
    close(fd);
    if (rc < 0)
        return rc;
    line[n] = 0;
    line[strcspn(line, "\r\n")] = 0;
    if (strncmp(line, want, strlen(want)) != 0)
        return hv_err_set(err, -EPROTO, "%s: greeted \"%.80s\", not \"%s...\"", what, line, want);
    return 0;
}

int http_master_ask(const http_ctx *h, http_master_status *out, hv_err *err)
{
    memset(out, 0, sizeof(*out));
    out->reloads = -1;
    char path[4200];
    snprintf(path, sizeof(path), "%s/admin.sock", h->run_dir);
    buf b;
    buf_init(&b);
    int rc = http_ask_unix(path, "status", 1, 65536, &b, err);
    if (rc < 0) {
        buf_free(&b);
        hv_err_prefix(err, "the master's admin socket");
        return rc;
    }
    char *save = NULL;
    for (char *l = strtok_r((char *)b.data, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        char name[16], state[16];
        long long n;
        if (strncmp(l, "error:", 6) == 0) {
            rc = hv_err_set(err, -EIO, "the master answered \"%.200s\"", l);
            break;
        }
        if (sscanf(l, "reloads: %lld", &n) == 1)
            out->reloads = n;
        if (strncmp(l, "service ", 8) == 0 &&
            sscanf(l + 8, "%15[a-z0-9_-]: %15s", name, state) == 2 &&
            out->n < HTTP_SERVICES_MAX) {
            snprintf(out->svc[out->n].name, sizeof(out->svc[0].name), "%s", name);
            out->svc[out->n].state = strcmp(state, "running") == 0 ? HTTP_SVC_RUNNING
                                     : strcmp(state, "off") == 0   ? HTTP_SVC_OFF
                                                                   : HTTP_SVC_STOPPED;
            out->n++;
        }
    }
    buf_free(&b);
    return rc;
}

int http_queue_ask(const http_ctx *h, http_queue_stats *out, hv_err *err)
{
    memset(out, 0, sizeof(*out));
    char path[4200];
    snprintf(path, sizeof(path), "%s/queue.sock", h->run_dir);
    buf b;
    buf_init(&b);
    int rc = http_ask_unix(path, "stats", 0, 16384, &b, err);
    if (rc < 0) {
        buf_free(&b);
        hv_err_prefix(err, "the queue's control socket");
        return rc;
    }
    char *text = (char *)b.data;
    if (!text || strncmp(text, "ok\n", 3) != 0) {
        if (text)
            text[strcspn(text, "\n")] = 0;
        rc = hv_err_set(err, -EIO, "the queue answered \"%.200s\" to stats", text ? text : "");
        buf_free(&b);
        return rc;
    }
    char *save = NULL;
    for (char *l = strtok_r(text + 3, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        char *sp = strchr(l, ' ');
        if (!sp)
            continue;
        *sp = 0;
        if (strcmp(l, "broken_reason") == 0) {
            snprintf(out->broken_reason, sizeof(out->broken_reason), "%s", sp + 1);
            continue;
        }
        char *end;
        double v = strtod(sp + 1, &end);
        if (end == sp + 1 || *end || strlen(l) >= sizeof(out->names[0]) ||
            out->n >= (int)(sizeof(out->values) / sizeof(out->values[0])))
            continue;
        snprintf(out->names[out->n], sizeof(out->names[0]), "%s", l);
        out->values[out->n++] = v;
    }
    if (!out->broken_reason[0] && http_queue_value(out, "accepting") == 0)
        snprintf(out->broken_reason, sizeof(out->broken_reason), "unknown reason");
    buf_free(&b);
    return 0;
}

double http_queue_value(const http_queue_stats *q, const char *name)
{
    for (int i = 0; i < q->n; i++)
        if (strcmp(q->names[i], name) == 0)
            return q->values[i];
    return -1;
}

/* One running service answers as it should. */
static int probe_service(const http_ctx *h, const char *name, hv_err *err)
{
    const conf *c = h->c;
    const char *listen = conf_get(c, "listen");
    if (strcmp(name, "imap") == 0) {
        long p = (long)conf_get_int(c, "imap_port");
        return p > 0 ? http_probe_greeting(listen, p, "* OK", err) : 0;
    }
    if (strcmp(name, "lmtp") == 0)
        return http_probe_greeting(listen, (long)conf_get_int(c, "lmtp_port"), "220 ", err);
    if (strcmp(name, "proxy") == 0) {
        long p = (long)conf_get_int(c, "proxy_port");
        return p > 0 ? http_probe_greeting(listen, p, "* OK", err) : 0;
    }
    if (strcmp(name, "smtp") == 0) {
        http_queue_stats q;
        int rc = http_queue_ask(h, &q, err);
        if (rc < 0)
            return rc;
        if (q.broken_reason[0])
            return hv_err_set(err, -EIO, "the queue refuses mail: %s", q.broken_reason);
        long p = (long)conf_get_int(c, "smtp_port");
        if (p <= 0)
            p = (long)conf_get_int(c, "submission_port");
        return p > 0 ? http_probe_greeting(listen, p, "220 ", err) : 0;
    }
    if (strcmp(name, "repl") == 0) {
        /* Only that its control socket takes a connection: it serves one
         * command at a time, and a `haven replcheck` running for minutes
         * must not make the node look dead. */
        char path[4200];
        repl_control_path(c, path, sizeof(path));
        return unix_connect_only(path, err);
    }
    return 0; /* a service we have no question for: running is all we know */
}

int http_health(const http_ctx *h, buf *reasons)
{
    http_master_status ms;
    hv_err err = {0};
    if (http_master_ask(h, &ms, &err) < 0) {
        buf_printf(reasons, "master: %s\n", err.msg);
        return 0;
    }
    int ok = 1;
    for (int i = 0; i < ms.n; i++) {
        const char *name = ms.svc[i].name;
        if (ms.svc[i].state == HTTP_SVC_OFF || strcmp(name, "http") == 0)
            continue;
        if (ms.svc[i].state != HTTP_SVC_RUNNING) {
            buf_printf(reasons, "%s: not running (havend restarts it after a delay)\n", name);
            ok = 0;
            continue;
        }
        hv_err e = {0};
        if (probe_service(h, name, &e) < 0) {
            buf_printf(reasons, "%s: %s\n", name, e.msg);
            ok = 0;
        }
    }
    return ok;
}
