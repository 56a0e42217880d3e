/*
 * havend_admin.c - havend's admin socket: the operator's line to the master.
 *
 * SECURITY: trusts only that the peer could open RUN_DIR/admin.sock, which
 * is mode 0600 (the daemon's user and root). Everything the peer sends is
 * still treated as untrusted bytes: lines are capped before their newline
 * arrives, clients are capped in number and dropped when idle, and a bad
 * client ends its own connection, never the daemon.
 *
 * The protocol is described in havend.h. Served from havend's poll loop;
 * all sockets are non-blocking.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "cmd/havend.h"
#include "cmd/version.h"
#include "lib/buf.h"
#include "lib/log.h"
#include "store/store.h"

#define ADMIN_MAX_CLIENTS (HAVEND_ADMIN_MAX_FDS - 1)
#define ADMIN_LINE_MAX 512
#define ADMIN_IDLE_MS 60000
/* Replies pile up only when a client writes without reading; past this,
 * its input is left unread until it catches up. */
#define ADMIN_OUT_HIGH 16384

typedef struct admin_client {
    int fd;                        /* -1: free slot */
    char in[ADMIN_LINE_MAX + 1];
    size_t in_len;
    buf out;
    size_t out_off;                /* bytes of out already sent */
    int closing;                   /* close once out is sent */
    long long last_ms;
} admin_client;

struct havend_admin {
    int fd;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    admin_client clients[ADMIN_MAX_CLIENTS];
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int havend_admin_open(const char *path, havend_admin **out, hv_err *err)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path))
        return hv_err_set(err, -ENAMETOOLONG,
                          "admin socket path %s is longer than %zu bytes; move run_dir",
                          path, sizeof(sa.sun_path) - 1);
    strcpy(sa.sun_path, path);
    if (unlink(path) < 0 && errno != ENOENT)
        return hv_err_sys(err, "remove stale %s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return hv_err_sys(err, "socket");
    /* The umask closes the window between bind() and chmod() in which
     * another local user could connect. */
    mode_t old = umask(0177);
    int brc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old);
    if (brc < 0 || chmod(path, 0600) < 0 || listen(fd, 16) < 0) {
        int rc = hv_err_sys(err, "admin socket %s", path);
        close(fd);
        return rc;
    }
    havend_admin *a = calloc(1, sizeof(*a));
    if (!a)
        abort();
    a->fd = fd;
    strcpy(a->path, path);
    for (int i = 0; i < ADMIN_MAX_CLIENTS; i++) {
        a->clients[i].fd = -1;
        buf_init(&a->clients[i].out);
    }
    *out = a;
    return 0;
}

static void client_close(admin_client *c, const char *why)
{
    log_debug("admin_close fd=%d reason=\"%s\"", c->fd, why);
    close(c->fd);
    c->fd = -1;
    c->in_len = 0;
    c->out_off = 0;
    c->closing = 0;
    buf_reset(&c->out);
}

/* Sends what the socket takes now; the rest waits for POLLOUT. */
static void client_flush(admin_client *c)
{
    while (c->out_off < c->out.len) {
        ssize_t w = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            client_close(c, strerror(errno));
            return;
        }
        c->out_off += (size_t)w;
    }
    buf_reset(&c->out);
    c->out_off = 0;
    if (c->closing)
        client_close(c, "done");
}


static void reply_status(buf *o, const havend *d)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long up = (long long)(now.tv_sec - d->started.tv_sec);
    char started[32];
    struct tm tm;
    gmtime_r(&d->started_wall, &tm);
    strftime(started, sizeof(started), "%Y-%m-%dT%H:%M:%SZ", &tm);
    char data[4096];
    conf_path(d->conf, "data_dir", data, sizeof(data));
    long accounts = store_account_count(data);

    buf_printf(o, "havend: running\n");
    buf_printf(o, "version: %s\n", HAVEN_VERSION);
    buf_printf(o, "pid: %d\n", (int)d->pid);
    buf_printf(o, "started: %s\n", started);
    buf_printf(o, "uptime: %llds (%lldd %02lldh %02lldm %02llds)\n", up, up / 86400,
               up / 3600 % 24, up / 60 % 60, up % 60);
    buf_printf(o, "config: %s\n", d->conf_path);
    buf_printf(o, "reloads: %u\n", d->reloads);
    buf_printf(o, "data_dir: %s\n", data);
    if (accounts >= 0)
        buf_printf(o, "accounts: %ld\n", accounts);
    else
        buf_printf(o, "accounts: unknown (%s/accounts: %s)\n", data, strerror((int)-accounts));
    buf_printf(o, "services: master, admin socket, imap, smtp, lmtp, repl (when configured), proxy (when a proxy port is set), http (when http_port is set)\n");
    havend_services_status(o);
    buf_printf(o, "not built yet: http admin API, status page\n");
}

typedef void (*admin_cmd_fn)(admin_client *c, const havend *d);

static void cmd_ping(admin_client *c, const havend *d)
{
    (void)d;
    buf_append_str(&c->out, "pong\n");
}

static void cmd_status(admin_client *c, const havend *d) { reply_status(&c->out, d); }

static void cmd_help(admin_client *c, const havend *d)
{
    (void)d;
    buf_append_str(&c->out, "commands: ping, status, help, quit\n");
}

static void cmd_quit(admin_client *c, const havend *d)
{
    (void)d;
    buf_append_str(&c->out, "bye\n");
    c->closing = 1;
}

static const struct {
    const char *name;
    admin_cmd_fn fn;
} admin_commands[] = {
    {"ping", cmd_ping},
    {"status", cmd_status},
    {"help", cmd_help},
    {"quit", cmd_quit},
};

static void run_line(admin_client *c, char *line, const havend *d)
{
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\r' || line[n - 1] == ' ' || line[n - 1] == '\t'))
        line[--n] = 0;
    while (*line == ' ' || *line == '\t')
        line++;
    if (!*line)
        return;
    for (size_t i = 0; i < sizeof(admin_commands) / sizeof(admin_commands[0]); i++) {
        if (strcmp(line, admin_commands[i].name) == 0) {
            log_debug("admin_command cmd=%s", line);
            admin_commands[i].fn(c, d);
            buf_append_str(&c->out, ".\n");
            return;
        }
    }
    /* Echo at most a short, printable prefix: the line is the client's. */
    char shown[40];
    size_t k = 0;
    for (; line[k] && k < sizeof(shown) - 1; k++)
        shown[k] = (line[k] >= 0x20 && line[k] < 0x7f) ? line[k] : '?';
    shown[k] = 0;
    buf_printf(&c->out, "error: unknown command '%s' (try 'help')\n.\n", shown);
}

/* Runs the complete lines in c->in, stopping early while replies are
 * piling up unread. */
static void client_process(admin_client *c, const havend *d)
{
    while (!c->closing && c->out.len < ADMIN_OUT_HIGH) {
        char *nl = memchr(c->in, '\n', c->in_len);
        if (!nl)
            break;
        *nl = 0;
        run_line(c, c->in, d);
        size_t used = (size_t)(nl - c->in) + 1;
        memmove(c->in, c->in + used, c->in_len - used);
        c->in_len -= used;
    }
    if (!c->closing && c->in_len == ADMIN_LINE_MAX && !memchr(c->in, '\n', c->in_len)) {
        buf_printf(&c->out, "error: line longer than %d bytes\n.\n", ADMIN_LINE_MAX);
        c->closing = 1;
    }
}

static void client_read(admin_client *c, const havend *d)
{
    ssize_t r = recv(c->fd, c->in + c->in_len, ADMIN_LINE_MAX - c->in_len, MSG_DONTWAIT);
    if (r < 0) {
        if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)
            client_close(c, strerror(errno));
        return;
    }
    if (r == 0) {
        client_close(c, "peer closed");
        return;
    }
    c->in_len += (size_t)r;
    c->last_ms = now_ms();
    client_process(c, d);
}

static void admin_accept(havend_admin *a)
{
    for (;;) {
        int fd = accept4(a->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                errno != ECONNABORTED)
                log_warn("admin_accept_failed reason=\"%s\"", strerror(errno));
            return;
        }
        admin_client *c = NULL;
        for (int i = 0; i < ADMIN_MAX_CLIENTS && !c; i++)
            if (a->clients[i].fd < 0)
                c = &a->clients[i];
        if (!c) {
            static const char busy[] = "error: too many admin connections\n.\n";
            (void)!send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
            close(fd);
            log_warn("admin_refused reason=\"%d clients already connected\"", ADMIN_MAX_CLIENTS);
            continue;
        }
        c->fd = fd;
        c->in_len = 0;
        c->closing = 0;
        c->last_ms = now_ms();
        log_debug("admin_open fd=%d", fd);
    }
}

size_t havend_admin_pollfds(havend_admin *a, struct pollfd *fds, size_t max)
{
    size_t n = 0;
    if (n < max)
        fds[n++] = (struct pollfd){.fd = a->fd, .events = POLLIN};
    for (int i = 0; i < ADMIN_MAX_CLIENTS && n < max; i++) {
        admin_client *c = &a->clients[i];
        if (c->fd < 0)
            continue;
        short ev = 0;
        if (c->out.len > c->out_off)
            ev |= POLLOUT;
        if (!c->closing && c->out.len < ADMIN_OUT_HIGH)
            ev |= POLLIN;
        fds[n++] = (struct pollfd){.fd = c->fd, .events = ev};
    }
    return n;
}

int havend_admin_timeout(const havend_admin *a)
{
    long long next = -1, now = now_ms();
    for (int i = 0; i < ADMIN_MAX_CLIENTS; i++) {
        const admin_client *c = &a->clients[i];
        if (c->fd < 0)
            continue;
        long long due = c->last_ms + ADMIN_IDLE_MS - now;
        if (due < 0)
            due = 0;
        if (next < 0 || due < next)
            next = due;
    }
    return (int)next;
}

void havend_admin_handle(havend_admin *a, const struct pollfd *fds, size_t n, const havend *d)
{
    int listener_ready = 0;
    long long now = now_ms();
    for (size_t k = 0; k < n; k++) {
        if (fds[k].fd == a->fd) {
            listener_ready = fds[k].revents != 0;
            continue;
        }
        admin_client *c = NULL;
        for (int i = 0; i < ADMIN_MAX_CLIENTS && !c; i++)
            if (a->clients[i].fd == fds[k].fd)
                c = &a->clients[i];
        if (!c)
            continue;
        short re = fds[k].revents;
        if (re & (POLLIN | POLLHUP | POLLERR))
            client_read(c, d);
        /* Once everything is sent, lines held back while the client was
         * not reading get their turn. */
        while (c->fd >= 0 && c->out.len > c->out_off) {
            client_flush(c);
            if (c->fd < 0 || c->out.len > 0)
                break;
            client_process(c, d);
        }
    }
    for (int i = 0; i < ADMIN_MAX_CLIENTS; i++) {
        admin_client *c = &a->clients[i];
        if (c->fd >= 0 && now - c->last_ms >= ADMIN_IDLE_MS)
            client_close(c, "idle");
    }
    /* Last, so a slot freed above can take a new client at once, and a
     * new client's fd cannot be mistaken for one polled in this round. */
    if (listener_ready)
        admin_accept(a);
}

void havend_admin_close(havend_admin *a)
{
    if (!a)
        return;
    for (int i = 0; i < ADMIN_MAX_CLIENTS; i++) {
        if (a->clients[i].fd >= 0)
            close(a->clients[i].fd);
        buf_free(&a->clients[i].out);
    }
    close(a->fd);
    if (unlink(a->path) < 0 && errno != ENOENT)
        log_warn("admin_socket_left path=%s reason=\"%s\"", a->path, strerror(errno));
    free(a);
}
