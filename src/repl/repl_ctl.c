/*
 * repl_ctl.c - the client side of the repl service's control socket, for
 * the haven command (replcheck, and status lines for `haven status`).
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "lib/fsutil.h"
#include "repl/repl.h"

int repl_ctl_ask(const conf *c, const char *cmd, buf *reply, int timeout_ms, hv_err *err)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char path[sizeof(sa.sun_path) + 64];
    repl_control_path(c, path, sizeof(path));
    if (strlen(path) >= sizeof(sa.sun_path))
        return hv_err_set(err, -ENAMETOOLONG, "control socket path too long: %s", path);
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return hv_err_sys(err, "socket");
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        return hv_err_set(err, -e, "the repl service does not answer on %s (%s): is "
                          "replication configured and havend running?", path, strerror(e));
    }
    char line[400];
    snprintf(line, sizeof(line), "%s\n", cmd);
    int rc = fs_write_full(fd, line, strlen(line));
    while (rc == 0) {
        if ((reply->len == 2 && memcmp(reply->data, ".\n", 2) == 0) ||
            (reply->len >= 3 && memcmp(reply->data + reply->len - 3, "\n.\n", 3) == 0)) {
            reply->len -= 2;
            reply->data[reply->len] = 0;
            close(fd);
            return 0;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, timeout_ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            rc = r == 0 ? hv_err_set(err, -ETIMEDOUT, "the repl service did not answer within "
                                     "%d s", timeout_ms / 1000)
                        : hv_err_sys(err, "poll");
            break;
        }
        buf_reserve(reply, 4096);
        ssize_t got = read(fd, reply->data + reply->len, 4096);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            rc = hv_err_set(err, -ECONNRESET, "the repl service closed the connection early");
            break;
        }
        reply->len += (size_t)got;
        reply->data[reply->len] = 0;
    }
    close(fd);
    return rc < 0 ? rc : -EIO;
}
