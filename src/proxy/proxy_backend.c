/*
 * proxy_backend.c - the proxy's side towards the stores: connecting to a
 * store's IMAP, logging in there, the pool of ready connections, and the
 * scanner that finds the gaps between the store's responses.
 *
 * Everything here but the scanner blocks and runs on worker threads or
 * the watcher, never on the loop. Sockets get timeouts, so a store that
 * stops answering costs a worker a few seconds, not forever.
 *
 * The pool: connecting and reading the greeting is most of what a login
 * costs the proxy beyond the password check, so the watcher keeps
 * pool_size connections per recently used store address open with the
 * greeting already read. A pooled connection is checked before use (a
 * store that closed it or said BYE is dropped) and none is kept longer
 * than PX_POOL_MAX_AGE, well under the store's 30-minute autologout.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "lib/log.h"
#include "proxy/proxy_internal.h"

#define IO_TIMEOUT_S 10
#define CONNECT_TIMEOUT_MS 3000
#define LINE_MAX_BACKEND 8192

/* ---- response scanner ---- */

void px_scan_feed(px_scan *sc, const char *p, size_t n)
{
    while (n > 0) {
        if (sc->literal) {
            size_t k = sc->literal < n ? (size_t)sc->literal : n;
            sc->literal -= k;
            p += k;
            n -= k;
            continue;
        }
        const char *nl = memchr(p, '\n', n);
        size_t k = nl ? (size_t)(nl - p) : n;
        /* Keep the last bytes of the line: a literal announcement
         * "{123}" (or "~{123}") ends it. */
        if (k >= sizeof(sc->tail)) {
            memcpy(sc->tail, p + k - sizeof(sc->tail), sizeof(sc->tail));
            sc->taillen = sizeof(sc->tail);
        } else {
            size_t keep = sizeof(sc->tail) - k;
            if (sc->taillen > keep) {
                memmove(sc->tail, sc->tail + sc->taillen - keep, keep);
                sc->taillen = keep;
            }
            memcpy(sc->tail + sc->taillen, p, k);
            sc->taillen += k;
        }
        sc->linelen += k;
        if (!nl)
            return;
        /* End of line: is it "{digits}" before the CR? */
        size_t t = sc->taillen;
        if (t && sc->tail[t - 1] == '\r')
            t--;
        uint64_t lit = 0;
        if (t >= 3 && sc->tail[t - 1] == '}') {
            size_t i = t - 1, digits = 0;
            while (i > 0 && sc->tail[i - 1] >= '0' && sc->tail[i - 1] <= '9') {
                i--;
                digits++;
            }
            if (digits > 0 && digits <= 18 && i > 0 && sc->tail[i - 1] == '{')
                for (size_t j = i; j < t - 1; j++)
                    lit = lit * 10 + (uint64_t)(sc->tail[j] - '0');
        }
        sc->literal = lit;
        /* After a literal the response goes on ("...{5}\r\nhello)\r\n"):
         * not a boundary until that line ends too. */
        sc->linelen = lit ? 1 : 0;
        sc->taillen = 0;
        p = nl + 1;
        n -= k + 1;
    }
}

int px_scan_at_boundary(const px_scan *sc) { return sc->literal == 0 && sc->linelen == 0; }

/* ---- blocking line I/O on a backend socket ---- */

static int64_t now_s(void) { return (int64_t)time(NULL); }

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads one CRLF line into line (without the line end). Bytes read past
 * it stay in rb[*rpos..*rlen). 1: a line; -EIO otherwise. */
static int read_line(int fd, char *rb, size_t rbcap, size_t *rpos, size_t *rlen, char *line,
                     size_t linecap)
{
    for (;;) {
        char *nl = memchr(rb + *rpos, '\n', *rlen - *rpos);
        if (nl) {
            size_t k = (size_t)(nl - (rb + *rpos));
            size_t c = k && nl[-1] == '\r' ? k - 1 : k;
            if (c >= linecap)
                return -EIO;
            memcpy(line, rb + *rpos, c);
            line[c] = 0;
            *rpos += k + 1;
            return 1;
        }
        if (*rpos > 0) {
            memmove(rb, rb + *rpos, *rlen - *rpos);
            *rlen -= *rpos;
            *rpos = 0;
        }
        if (*rlen >= rbcap)
            return -EIO; /* over-long line */
        ssize_t r = recv(fd, rb + *rlen, rbcap - *rlen, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -EIO;
        *rlen += (size_t)r;
    }
}

static int split_hostport(const char *address, char *host, size_t hostcap, char *port,
                          size_t portcap)
{
    const char *colon;
    if (address[0] == '[') {
        const char *close = strchr(address, ']');
        if (!close || close[1] != ':')
            return -EINVAL;
        snprintf(host, hostcap, "%.*s", (int)(close - address - 1), address + 1);
        colon = close + 1;
    } else {
        colon = strrchr(address, ':');
        if (!colon)
            return -EINVAL;
        snprintf(host, hostcap, "%.*s", (int)(colon - address), address);
    }
    snprintf(port, portcap, "%s", colon + 1);
    return host[0] && port[0] ? 0 : -EINVAL;
}

int px_backend_connect(const char *address, int *fd_out, hv_err *err)
{
    char host[256], port[32];
    if (split_hostport(address, host, sizeof(host), port, sizeof(port)) < 0)
        return hv_err_set(err, -EINVAL, "store address '%s' is not host:port", address);
    struct addrinfo hints = {0}, *res, *ai;
    hints.ai_socktype = SOCK_STREAM;
    int g = getaddrinfo(host, port, &hints, &res);
    if (g != 0)
        return hv_err_set(err, -EHOSTUNREACH, "store address %s: %s", address,
                          gai_strerror(g));
    int fd = -1, rc = -ECONNREFUSED;
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        if (errno == EINPROGRESS) {
            struct pollfd pf = {.fd = fd, .events = POLLOUT};
            int e = 0;
            socklen_t el = sizeof(e);
            if (poll(&pf, 1, CONNECT_TIMEOUT_MS) == 1 &&
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) == 0 && e == 0)
                break;
            rc = e ? -e : -ETIMEDOUT;
        } else {
            rc = -errno;
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return hv_err_set(err, rc, "connect to store at %s: %s", address, strerror(-rc));
    /* Blocking from here, with timeouts: workers own it until the loop
     * takes it over (and makes it non-blocking again). */
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
        rc = hv_err_sys(err, "store at %s: fcntl", address);
        close(fd);
        return rc;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct timeval tv = {IO_TIMEOUT_S, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    char rb[LINE_MAX_BACKEND], line[LINE_MAX_BACKEND];
    size_t rpos = 0, rlen = 0;
    if (read_line(fd, rb, sizeof(rb), &rpos, &rlen, line, sizeof(line)) < 0) {
        close(fd);
        return hv_err_set(err, -EIO, "store at %s sent no greeting", address);
    }
    if (strncmp(line, "* OK", 4) != 0 || rpos != rlen) {
        close(fd);
        return hv_err_set(err, -EIO, "store at %s greeted with '%.80s'", address, line);
    }
    *fd_out = fd;
    return 0;
}

/* ---- LOGIN on the store ---- */

/* An IMAP string for user or password: quoted when it can be, else a
 * non-synchronizing literal (the store announces LITERAL+). */
static void put_string(char *out, size_t cap, size_t *len, const char *s)
{
    size_t n = strlen(s);
    int quotable = n < 1024;
    for (size_t i = 0; quotable && i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\r' || c == '\n' || c >= 0x80)
            quotable = 0;
    }
    if (!quotable) {
        *len += (size_t)snprintf(out + *len, cap - *len, "{%zu+}\r\n", n);
        if (*len + n < cap) {
            memcpy(out + *len, s, n);
            *len += n;
        }
        return;
    }
    if (*len + 2 * n + 3 >= cap)
        return;
    out[(*len)++] = '"';
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"' || s[i] == '\\')
            out[(*len)++] = '\\';
        out[(*len)++] = s[i];
    }
    out[(*len)++] = '"';
}

int px_backend_login(int fd, const char *user, const char *pass, char *reply, size_t replylen,
                     char **extra, size_t *nextra, hv_err *err)
{
    char cmd[2 * (DIR_ADDRESS_MAX + PASSWORD_MAX) + 64];
    size_t len = (size_t)snprintf(cmd, sizeof(cmd), "P1 LOGIN ");
    put_string(cmd, sizeof(cmd), &len, user);
    cmd[len++] = ' ';
    put_string(cmd, sizeof(cmd), &len, pass);
    if (len + 2 >= sizeof(cmd))
        return hv_err_set(err, -EINVAL, "login too long");
    cmd[len++] = '\r';
    cmd[len++] = '\n';
    int rc = write_all(fd, cmd, len);
    memset(cmd, 0, sizeof(cmd));
    if (rc < 0)
        return hv_err_set(err, -EIO, "store connection lost: %s", strerror(-rc));
    char rb[LINE_MAX_BACKEND], line[LINE_MAX_BACKEND];
    size_t rpos = 0, rlen = 0;
    for (;;) {
        if (read_line(fd, rb, sizeof(rb), &rpos, &rlen, line, sizeof(line)) < 0)
            return hv_err_set(err, -EIO, "store closed the connection during login");
        if (strncmp(line, "P1 ", 3) != 0)
            continue; /* untagged lines before the reply: the client gets them later */
        snprintf(reply, replylen, "%s\r\n", line + 3);
        *extra = NULL;
        *nextra = 0;
        if (rlen > rpos) {
            *nextra = rlen - rpos;
            *extra = malloc(*nextra);
            memcpy(*extra, rb + rpos, *nextra);
        }
        if (strncasecmp(line + 3, "OK", 2) == 0)
            return 0;
        return hv_err_set(err, -EACCES, "store refused the login: %.200s", line + 3);
    }
}

/* ---- the pool ---- */

/* Whether an idle connection is still good: nothing to read (a BYE or
 * EOF means the store let it go). */
static int still_idle(int fd)
{
    char c;
    ssize_t r = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

static px_pool_entry *pool_find(px_server *srv, const char *address, int create)
{
    for (unsigned i = 0; i < srv->npool; i++)
        if (strcmp(srv->pool[i].address, address) == 0)
            return &srv->pool[i];
    if (!create)
        return NULL;
    if (srv->npool < PX_POOL_ADDRS) {
        px_pool_entry *e = &srv->pool[srv->npool++];
        memset(e, 0, sizeof(*e));
        snprintf(e->address, sizeof(e->address), "%s", address);
        return e;
    }
    /* Full: take over the least recently used address. */
    px_pool_entry *lru = &srv->pool[0];
    for (unsigned i = 1; i < srv->npool; i++)
        if (srv->pool[i].last_used < lru->last_used)
            lru = &srv->pool[i];
    for (unsigned k = 0; k < lru->n; k++)
        close(lru->fds[k]);
    memset(lru, 0, sizeof(*lru));
    snprintf(lru->address, sizeof(lru->address), "%s", address);
    return lru;
}

void px_pool_touch(px_server *srv, const char *address)
{
    pthread_mutex_lock(&srv->pmu);
    px_pool_entry *e = pool_find(srv, address, 1);
    e->last_used = now_s();
    pthread_mutex_unlock(&srv->pmu);
}

int px_backend_get(px_server *srv, const char *address, int *fd_out, hv_err *err)
{
    int fd = -1;
    pthread_mutex_lock(&srv->pmu);
    px_pool_entry *e = pool_find(srv, address, 1);
    e->last_used = now_s();
    while (e->n > 0) {
        int cand = e->fds[--e->n]; /* newest first */
        if (still_idle(cand)) {
            fd = cand;
            break;
        }
        close(cand);
    }
    pthread_mutex_unlock(&srv->pmu);
    if (fd >= 0) {
        *fd_out = fd;
        return 0;
    }
    return px_backend_connect(address, fd_out, err);
}

void px_pool_refill(px_server *srv)
{
    int64_t now = now_s();
    for (unsigned i = 0;; i++) {
        char address[DIR_STORE_ADDRESS_MAX + 1];
        unsigned want = 0;
        pthread_mutex_lock(&srv->pmu);
        if (i >= srv->npool) {
            pthread_mutex_unlock(&srv->pmu);
            return;
        }
        px_pool_entry *e = &srv->pool[i];
        /* Drop connections that aged or that the store closed. */
        unsigned w = 0;
        for (unsigned k = 0; k < e->n; k++) {
            if (now - e->since[k] > PX_POOL_MAX_AGE || !still_idle(e->fds[k])) {
                close(e->fds[k]);
                continue;
            }
            e->fds[w] = e->fds[k];
            e->since[w] = e->since[k];
            w++;
        }
        e->n = w;
        /* Addresses unused for an hour keep no connections. */
        if (e->last_used == 0 || now - e->last_used < 3600)
            want = srv->pool_size > e->n ? srv->pool_size - e->n : 0;
        snprintf(address, sizeof(address), "%s", e->address);
        pthread_mutex_unlock(&srv->pmu);
        /* Connect outside the lock (a slow store must not stall logins). */
        for (unsigned k = 0; k < want; k++) {
            int fd;
            hv_err err = {0};
            if (px_backend_connect(address, &fd, &err) < 0) {
                log_debug("proxy: pool address=%s connect failed reason=\"%s\"", address,
                          err.msg);
                break;
            }
            pthread_mutex_lock(&srv->pmu);
            px_pool_entry *e2 = pool_find(srv, address, 0);
            if (e2 && e2->n < PX_POOL_MAX) {
                e2->fds[e2->n] = fd;
                e2->since[e2->n] = now;
                e2->n++;
                fd = -1;
            }
            pthread_mutex_unlock(&srv->pmu);
            if (fd >= 0)
                close(fd);
        }
    }
}

void px_pool_drop(px_server *srv, const char *address)
{
    pthread_mutex_lock(&srv->pmu);
    px_pool_entry *e = pool_find(srv, address, 0);
    if (e) {
        for (unsigned k = 0; k < e->n; k++)
            close(e->fds[k]);
        e->n = 0;
        e->last_used = 1; /* long ago: not refilled until used again */
    }
    pthread_mutex_unlock(&srv->pmu);
}

void px_pool_free(px_server *srv)
{
    pthread_mutex_lock(&srv->pmu);
    for (unsigned i = 0; i < srv->npool; i++)
        for (unsigned k = 0; k < srv->pool[i].n; k++)
            close(srv->pool[i].fds[k]);
    srv->npool = 0;
    pthread_mutex_unlock(&srv->pmu);
}
