/*
 * haven_queue.c - `haven queue`: look at and steer the SMTP queue.
 *
 * While havend runs, its smtp service owns the queue and serves these
 * commands on RUN_DIR/queue.sock (protocol in src/queue/queue_ctl.c); we
 * send the arguments and print the answer. When nothing answers there, we
 * open the queue folder ourselves: the queue's lock file guarantees one
 * writer, so this waits a few seconds and then refuses if a service holds
 * the queue without answering on its socket.
 *
 * Output formats (docs/queue.md): `list` prints one line per message,
 * fields separated by TAB: id, arrival (UTC, RFC 3339), size in bytes,
 * sender ("<>" for the null sender), then one field per recipient:
 * "ADDRESS STATE[ REASON]".
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "cmd/haven_cmd.h"
#include "lib/buf.h"
#include "lib/log.h"
#include "queue/queue.h"

#define REPLY_TIMEOUT_MS 60000

static const char *const subcommands[] = {"list", "show", "hold", "release", "flush", "delete"};

/* 1: answered (rc in *status), 0: nobody listens there, <0: error. */
static int try_socket(const char *path, int argc, char **argv, int *status)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path))
        return 0;
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        return e == ENOENT || e == ECONNREFUSED ? 0 : -e;
    }
    buf req;
    buf_init(&req);
    for (int i = 0; i < argc; i++) {
        if (i)
            buf_append_str(&req, "\t");
        buf_append_str(&req, argv[i]);
    }
    buf_append_str(&req, "\n");
    size_t off = 0;
    while (off < req.len) {
        ssize_t w = send(fd, req.data + off, req.len - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            int e = errno;
            buf_free(&req);
            close(fd);
            return -e;
        }
        off += (size_t)w;
    }
    buf_free(&req);
    buf reply;
    buf_init(&reply);
    for (;;) {
        struct pollfd pfd = {fd, POLLIN, 0};
        int pr = poll(&pfd, 1, REPLY_TIMEOUT_MS);
        if (pr == 0) {
            buf_free(&reply);
            close(fd);
            return -ETIMEDOUT;
        }
        buf_reserve(&reply, 65536);
        ssize_t r = recv(fd, reply.data + reply.len, 65536, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        reply.len += (size_t)r;
    }
    close(fd);
    buf_append(&reply, "", 0);
    reply.data[reply.len] = 0;
    char *nl = memchr(reply.data, '\n', reply.len);
    if (!nl) {
        buf_free(&reply);
        *status = cmd_fail("the queue's control socket %s gave no answer", path);
        return 1;
    }
    *nl = 0;
    if (strcmp((char *)reply.data, "ok") == 0) {
        size_t body = (size_t)(nl + 1 - (char *)reply.data);
        fwrite(reply.data + body, 1, reply.len - body, stdout);
        *status = 0;
    } else if (strncmp((char *)reply.data, "error ", 6) == 0) {
        *status = cmd_fail("%s", (char *)reply.data + 6);
    } else {
        *status = cmd_fail("unexpected answer from %s", path);
    }
    buf_free(&reply);
    return 1;
}

static int run_offline(haven_ctx *ctx, int argc, char **argv)
{
    queue *q;
    hv_err err = {0};
    if (queue_open_conf(ctx->conf, &q, &err) < 0) {
        if (err.code == -EBUSY)
            return cmd_fail("%s (havend's smtp service holds it but does not answer on its "
                            "control socket; try again in a moment)", err.msg);
        return cmd_fail("%s", err.msg);
    }
    buf out;
    buf_init(&out);
    int rc = queue_control(q, argc, argv, &out, &err);
    if (rc == 0)
        fwrite(out.data ? out.data : (uint8_t *)"", 1, out.len, stdout);
    buf_free(&out);
    queue_close(q);
    return rc < 0 ? cmd_fail("%s", err.msg) : 0;
}

int cmd_queue(haven_ctx *ctx, int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "haven: queue needs a subcommand: list, show, hold, release, flush, "
                        "delete (see 'haven help queue')\n");
        return 2;
    }
    int known = 0;
    for (size_t i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++)
        known |= strcmp(argv[1], subcommands[i]) == 0;
    if (!known) {
        fprintf(stderr, "haven: unknown queue subcommand '%s' (see 'haven help queue')\n",
                argv[1]);
        return 2;
    }
    for (int i = 1; i < argc; i++)
        if (strpbrk(argv[i], "\t\r\n"))
            return cmd_fail("arguments may not hold tabs or line breaks");
    /* Only warnings and errors (a torn tail, damage) reach the operator. */
    log_init("haven", 0, LOG_LVL_WARN);
    char rundir[4096], path[4200];
    conf_path(ctx->conf, "run_dir", rundir, sizeof(rundir));
    snprintf(path, sizeof(path), "%s/queue.sock", rundir);
    int status = 0;
    int rc = try_socket(path, argc - 1, argv + 1, &status);
    if (rc == 1)
        return status;
    if (rc < 0)
        return cmd_fail("queue control socket %s: %s", path, strerror(-rc));
    return run_offline(ctx, argc - 1, argv + 1);
}
