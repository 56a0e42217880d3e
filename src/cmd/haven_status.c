/*
 * haven_status.c - `haven status`: how is the instance?
 *
 * Asks the running havend over its admin socket (RUN_DIR/admin.sock) and
 * prints its answer. When nothing answers there, havend is not running:
 * that is said plainly (exit 1), followed by what can be seen without it,
 * so the command is useful exactly when something is wrong.
 *
 * Admin protocol (see havend_admin.c): one command per line; the reply is
 * lines ended by a line holding a single ".", and a failed command's first
 * line starts with "error:".
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "cmd/haven_cmd.h"
#include "lib/buf.h"
#include "lib/conf.h"
#include "lib/fsutil.h"
#include "repl/repl.h"
#include "store/store.h"

/* Long enough for a daemon that is merely busy, short enough that a hung
 * one is reported while the operator is still looking. */
#define STATUS_TIMEOUT_MS 10000

static int admin_connect(const char *path, int *fd_out, hv_err *err)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path))
        return hv_err_set(err, -ENAMETOOLONG, "admin socket path too long: %s", path);
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return hv_err_sys(err, "socket");
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int rc = hv_err_sys(err, "connect %s", path);
        close(fd);
        return rc;
    }
    *fd_out = fd;
    return 0;
}

/* Sends one command and collects the reply up to its "." line. */
static int admin_ask(int fd, const char *cmd, buf *reply, hv_err *err)
{
    char line[256];
    snprintf(line, sizeof(line), "%s\n", cmd);
    int rc = fs_write_full(fd, line, strlen(line));
    if (rc < 0) {
        errno = -rc;
        return hv_err_sys(err, "send to havend");
    }
    for (;;) {
        if ((reply->len == 2 && memcmp(reply->data, ".\n", 2) == 0) ||
            (reply->len >= 3 && memcmp(reply->data + reply->len - 3, "\n.\n", 3) == 0)) {
            reply->len -= 2;
            reply->data[reply->len] = 0;
            return 0;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, STATUS_TIMEOUT_MS);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return hv_err_sys(err, "poll");
        if (r == 0)
            return hv_err_set(err, -ETIMEDOUT, "havend did not answer within %d seconds",
                              STATUS_TIMEOUT_MS / 1000);
        buf_reserve(reply, 4096);
        ssize_t got = read(fd, reply->data + reply->len, 4096);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return hv_err_sys(err, "read from havend");
        if (got == 0)
            return hv_err_set(err, -EPROTO, "havend closed the admin connection mid-reply");
        reply->len += (size_t)got;
        reply->data[reply->len] = 0;
    }
}


/* Account moves and evacuations run from this node that are not done
 * (DATA/moves, docs/move.md): phase, bytes, ETA. */
static void print_moves(const conf *c)
{
    char data[4096], path[4400];
    conf_path(c, "data_dir", data, sizeof(data));
    snprintf(path, sizeof(path), "%s/moves", data);
    DIR *dd = opendir(path);
    if (!dd)
        return;
    int header = 0;
    struct dirent *de;
    while ((de = readdir(dd))) {
        size_t n = strlen(de->d_name);
        int is_evac = n > 6 && strcmp(de->d_name + n - 6, ".state") == 0;
        if (!is_evac && !(n > 5 && strcmp(de->d_name + n - 5, ".move") == 0))
            continue;
        char fp[4700], *text;
        size_t len;
        hv_err err = {0};
        snprintf(fp, sizeof(fp), "%s/%s", path, de->d_name);
        if (fs_read_file(fp, &text, &len, &err) < 0)
            continue;
        /* Finished moves are history (haven move --status); an evacuation
         * is shown until every account is done. */
        int finished = is_evac ? 0 : strstr(text, "\nphase=done\n") != NULL;
        if (is_evac) {
            unsigned long long t = 0, d = 0, f = 0, sk = 0;
            const char *p;
            if ((p = strstr(text, "accounts_total=")))
                t = strtoull(p + 15, NULL, 10);
            if ((p = strstr(text, "accounts_done=")))
                d = strtoull(p + 14, NULL, 10);
            if ((p = strstr(text, "accounts_failed=")))
                f = strtoull(p + 16, NULL, 10);
            if ((p = strstr(text, "accounts_skipped=")))
                sk = strtoull(p + 17, NULL, 10);
            finished = d + f + sk >= t;
        }
        if (!finished) {
            if (!header++)
                printf("moves:\n");
            printf("  %s", is_evac ? "evacuation" : "move");
            for (char *p = text; *p;) {
                size_t l = strcspn(p, "\n");
                if (l && !(l == 7 && strncmp(p, "reason=", 7) == 0))
                    printf(" %.*s", (int)l, p);
                p += l + (p[l] == '\n');
            }
            printf("\n");
        }
        free(text);
    }
    closedir(dd);
}

int cmd_status(haven_ctx *ctx, int argc, char **argv)
{
    (void)argv;
    if (argc > 1) {
        fprintf(stderr, "haven: status takes no arguments (see 'haven help status')\n");
        return 2;
    }
    char run[4096], sock[4200];
    conf_path(ctx->conf, "run_dir", run, sizeof(run));
    snprintf(sock, sizeof(sock), "%s/admin.sock", run);

    hv_err err = {0};
    int fd = -1;
    if (admin_connect(sock, &fd, &err) == 0) {
        buf reply;
        buf_init(&reply);
        int rc = admin_ask(fd, "status", &reply, &err);
        close(fd);
        if (rc < 0) {
            buf_free(&reply);
            return cmd_fail("%s", err.msg);
        }
        fwrite(reply.data, 1, reply.len, stdout);
        int failed = reply.len >= 6 && memcmp(reply.data, "error:", 6) == 0;
        buf_free(&reply);
        if (!failed && repl_configured(ctx->conf)) {
            /* Replication: links, lag per store and account, bytes/s. */
            buf rs;
            buf_init(&rs);
            hv_err rerr = {0};
            if (repl_ctl_ask(ctx->conf, "status", &rs, 5000, &rerr) == 0) {
                printf("replication:\n");
                fwrite(rs.data, 1, rs.len, stdout);
                if (rs.len && rs.data[rs.len - 1] != '\n')
                    putchar('\n');
            } else {
                printf("replication: no answer (%s)\n", rerr.msg);
            }
            buf_free(&rs);
        }
        if (!failed)
            print_moves(ctx->conf);
        return failed ? cmd_fail("havend refused 'status'") : 0;
    }

    /* ENOENT: never started or stopped cleanly; ECONNREFUSED: a socket
     * left by a havend that died. Either way nobody is there. */
    char reason[600];
    snprintf(reason, sizeof(reason), "%s", err.msg);
    char data[4096];
    conf_path(ctx->conf, "data_dir", data, sizeof(data));
    long accounts = store_account_count(data);
    printf("havend: not running\n");
    printf("config: %s\n", ctx->conf_path);
    printf("data_dir: %s\n", data);
    if (accounts >= 0)
        printf("accounts: %ld\n", accounts);
    else
        printf("accounts: unknown (%s/accounts: %s)\n", data, strerror((int)-accounts));
    fflush(stdout);
    return cmd_fail("havend is not running (%s)", reason);
}
