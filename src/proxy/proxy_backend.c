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
 *
 * TLS (proxy_backend_tls): the proxy replays the user's password to the
 * store, so a store that is not on loopback is reached with STARTTLS and
 * a verified certificate before LOGIN. A store that refuses STARTTLS or
 * whose certificate does not verify is an error for the login, never a
 * reason to go on in clear text. Pooled connections keep their TLS
 * session, so the handshake is paid off the login path.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/tls.h"
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

/* ---- blocking line I/O on a backend connection ---- */

static int64_t now_s(void) { return (int64_t)time(NULL); }

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int write_all(px_conn *c, const char *p, size_t n)
{
    while (n > 0) {
        if (c->ssl) {
            size_t w = 0;
            ERR_clear_error();
            if (SSL_write_ex(c->ssl, p, n, &w) != 1) {
                ERR_clear_error();
                return -EIO;
            }
            p += w;
            n -= w;
            continue;
        }
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
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

/* Some bytes into p: their count, or -EIO (closed, error, timeout). */
static ssize_t read_some(px_conn *c, char *p, size_t n)
{
    if (c->ssl) {
        size_t got = 0;
        ERR_clear_error();
        if (SSL_read_ex(c->ssl, p, n, &got) != 1) {
            ERR_clear_error();
            return -EIO;
        }
        return (ssize_t)got;
    }
    for (;;) {
        ssize_t r = recv(c->fd, p, n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        return r > 0 ? r : -EIO;
    }
}

/* Reads one CRLF line into line (without the line end). Bytes read past
 * it stay in rb[*rpos..*rlen). 1: a line; -EIO otherwise. */
static int read_line(px_conn *c, char *rb, size_t rbcap, size_t *rpos, size_t *rlen,
                     char *line, size_t linecap)
{
    for (;;) {
        char *nl = memchr(rb + *rpos, '\n', *rlen - *rpos);
        if (nl) {
            size_t k = (size_t)(nl - (rb + *rpos));
            size_t cl = k && nl[-1] == '\r' ? k - 1 : k;
            if (cl >= linecap)
                return -EIO;
            memcpy(line, rb + *rpos, cl);
            line[cl] = 0;
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
        ssize_t r = read_some(c, rb + *rlen, rbcap - *rlen);
        if (r < 0)
            return -EIO;
        *rlen += (size_t)r;
    }
}

void px_conn_close(px_conn *c)
{
    if (c->ssl) {
        /* close_notify, without waiting for the store's: it only has to
         * tell a clean end from a cut. */
        SSL_shutdown(c->ssl);
        ERR_clear_error();
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
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

/* ---- TLS towards the stores ---- */

int px_backend_setup(px_server *srv, const conf *c, hv_err *err)
{
    const char *mode = conf_get(c, "proxy_backend_tls");
    if (strcmp(mode, "auto") == 0)
        srv->be_tls = PX_BE_TLS_AUTO;
    else if (strcmp(mode, "always") == 0)
        srv->be_tls = PX_BE_TLS_ALWAYS;
    else if (strcmp(mode, "never") == 0)
        srv->be_tls = PX_BE_TLS_NEVER;
    else
        return hv_err_set(err, -EINVAL, "proxy_backend_tls is '%s': auto, always or never",
                          mode);
    snprintf(srv->be_name, sizeof(srv->be_name), "%s", conf_get(c, "proxy_backend_verify_name"));
    if (srv->be_tls == PX_BE_TLS_NEVER)
        return 0;
    char ca[4096] = "";
    if (*conf_get(c, "proxy_backend_ca"))
        conf_path(c, "proxy_backend_ca", ca, sizeof(ca));
    srv->be_ssl = tls_client_context(ca, err);
    return srv->be_ssl ? 0 : -EINVAL;
}

/* auto: TLS unless the store is on this machine (the socket's peer is a
 * loopback address, whatever name the address gave). */
static int wants_tls(const px_server *srv, int fd)
{
    if (srv->be_tls != PX_BE_TLS_AUTO)
        return srv->be_tls == PX_BE_TLS_ALWAYS;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) != 0)
        return 1;
    if (ss.ss_family == AF_INET)
        return (ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) != 127;
    if (ss.ss_family == AF_INET6) {
        const struct in6_addr *a = &((struct sockaddr_in6 *)&ss)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a))
            return a->s6_addr[12] != 127;
        return !IN6_IS_ADDR_LOOPBACK(a);
    }
    return 1;
}

/* STARTTLS on a greeted connection, then the handshake with the store's
 * certificate checked against proxy_backend_ca and the expected name. */
static int start_tls(px_server *srv, const char *address, px_conn *c, hv_err *err)
{
    static const char cmd[] = "P0 STARTTLS\r\n";
    if (write_all(c, cmd, sizeof(cmd) - 1) < 0)
        return hv_err_set(err, -EIO, "store at %s: connection lost before STARTTLS", address);
    char rb[LINE_MAX_BACKEND], line[LINE_MAX_BACKEND];
    size_t rpos = 0, rlen = 0;
    for (;;) {
        if (read_line(c, rb, sizeof(rb), &rpos, &rlen, line, sizeof(line)) < 0)
            return hv_err_set(err, -EIO, "store at %s: no answer to STARTTLS", address);
        if (strncmp(line, "P0 ", 3) == 0)
            break;
    }
    if (strncasecmp(line + 3, "OK", 2) != 0)
        return hv_err_set(err, -EPROTO, "store at %s refused STARTTLS: %.120s", address,
                          line + 3);
    /* Whatever came with the OK came in clear text: not to be taken as
     * part of the TLS session (the same rule as for clients). */
    if (rpos != rlen)
        return hv_err_set(err, -EPROTO, "store at %s sent data after its STARTTLS reply",
                          address);
    char host[256], port[32];
    const char *name = srv->be_name;
    if (!*name) {
        if (split_hostport(address, host, sizeof(host), port, sizeof(port)) < 0)
            return hv_err_set(err, -EINVAL, "store address '%s' is not host:port", address);
        name = host;
    }
    c->ssl = SSL_new(srv->be_ssl);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1)
        return hv_err_set(err, -ENOMEM, "store at %s: TLS: cannot create a session", address);
    int rc = tls_client_expect(c->ssl, name, err);
    if (rc < 0)
        return rc;
    ERR_clear_error();
    if (SSL_connect(c->ssl) != 1) {
        long v = SSL_get_verify_result(c->ssl);
        char e[200] = "connection closed or timed out";
        unsigned long code = ERR_get_error();
        if (code)
            ERR_error_string_n(code, e, sizeof(e));
        ERR_clear_error();
        if (v != X509_V_OK)
            return hv_err_set(err, -EACCES,
                              "store at %s: TLS: certificate not accepted (name %s): %s", address,
                              name, X509_verify_cert_error_string(v));
        return hv_err_set(err, -EPROTO, "store at %s: TLS handshake failed: %s", address, e);
    }
    return 0;
}

int px_backend_connect(px_server *srv, const char *address, px_conn *out, hv_err *err)
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
    px_conn c = {.fd = fd, .ssl = NULL};
    char rb[LINE_MAX_BACKEND], line[LINE_MAX_BACKEND];
    size_t rpos = 0, rlen = 0;
    if (read_line(&c, rb, sizeof(rb), &rpos, &rlen, line, sizeof(line)) < 0) {
        px_conn_close(&c);
        return hv_err_set(err, -EIO, "store at %s sent no greeting", address);
    }
    if (strncmp(line, "* OK", 4) != 0 || rpos != rlen) {
        px_conn_close(&c);
        return hv_err_set(err, -EIO, "store at %s greeted with '%.80s'", address, line);
    }
    if (wants_tls(srv, fd) && (rc = start_tls(srv, address, &c, err)) < 0) {
        px_conn_close(&c);
        return rc;
    }
    *out = c;
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

int px_backend_login(px_conn *c, const char *user, const char *pass, char *reply,
                     size_t replylen, char **extra, size_t *nextra, hv_err *err)
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
    int rc = write_all(c, cmd, len);
    memset(cmd, 0, sizeof(cmd));
    if (rc < 0)
        return hv_err_set(err, -EIO, "store connection lost: %s", strerror(-rc));
    char rb[LINE_MAX_BACKEND], line[LINE_MAX_BACKEND];
    size_t rpos = 0, rlen = 0;
    for (;;) {
        if (read_line(c, rb, sizeof(rb), &rpos, &rlen, line, sizeof(line)) < 0)
            return hv_err_set(err, -EIO, "store closed the connection during login");
        if (strncmp(line, "P1 ", 3) != 0)
            continue; /* untagged lines before the reply: the client gets them later */
        snprintf(reply, replylen, "%s\r\n", line + 3);
        /* The bytes past the reply, and under TLS also what the last
         * record held beyond what was read: the relay's TLS layer only
         * sees what is still on the socket. */
        size_t pend = c->ssl ? (size_t)SSL_pending(c->ssl) : 0;
        *extra = NULL;
        *nextra = 0;
        if (rlen > rpos || pend) {
            *extra = malloc(rlen - rpos + pend);
            if (!*extra)
                return hv_err_set(err, -ENOMEM, "out of memory");
            memcpy(*extra, rb + rpos, rlen - rpos);
            *nextra = rlen - rpos;
            while (pend > 0) {
                ssize_t r = read_some(c, *extra + *nextra, pend);
                if (r < 0) {
                    free(*extra);
                    *extra = NULL;
                    *nextra = 0;
                    return hv_err_set(err, -EIO, "store connection lost during login");
                }
                *nextra += (size_t)r;
                pend -= (size_t)r;
            }
        }
        if (strncasecmp(line + 3, "OK", 2) == 0)
            return 0;
        return hv_err_set(err, -EACCES, "store refused the login: %.200s", line + 3);
    }
}

/* ---- the pool ---- */

/* Whether an idle connection is still good: nothing to read (a BYE or
 * EOF means the store let it go). Under TLS the store may have sent
 * records that carry no data (TLS 1.3 session tickets): those are read
 * and the connection stays good. */
static int still_idle(px_conn *c)
{
    char ch;
    if (c->ssl && SSL_pending(c->ssl) > 0)
        return 0;
    ssize_t r = recv(c->fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return 1;
    if (!c->ssl || r <= 0)
        return 0;
    int fl = fcntl(c->fd, F_GETFL);
    if (fl < 0 || fcntl(c->fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return 0;
    size_t got = 0;
    ERR_clear_error();
    int ok = SSL_read_ex(c->ssl, &ch, 1, &got);
    int idle = !ok && SSL_get_error(c->ssl, ok) == SSL_ERROR_WANT_READ;
    ERR_clear_error();
    if (fcntl(c->fd, F_SETFL, fl) < 0)
        return 0;
    return idle;
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
        px_conn_close(&lru->conns[k]);
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

int px_backend_get(px_server *srv, const char *address, px_conn *out, hv_err *err)
{
    px_conn got = {.fd = -1, .ssl = NULL};
    pthread_mutex_lock(&srv->pmu);
    px_pool_entry *e = pool_find(srv, address, 1);
    e->last_used = now_s();
    while (e->n > 0) {
        px_conn cand = e->conns[--e->n]; /* newest first */
        if (still_idle(&cand)) {
            got = cand;
            break;
        }
        px_conn_close(&cand);
    }
    pthread_mutex_unlock(&srv->pmu);
    if (got.fd >= 0) {
        *out = got;
        return 0;
    }
    return px_backend_connect(srv, address, out, err);
}

void px_pool_refill(px_server *srv)
{
    int64_t now = now_s(), tick = now_ms();
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
            if (now - e->since[k] > PX_POOL_MAX_AGE || !still_idle(&e->conns[k])) {
                px_conn_close(&e->conns[k]);
                continue;
            }
            e->conns[w] = e->conns[k];
            e->since[w] = e->since[k];
            w++;
        }
        e->n = w;
        /* Addresses unused for an hour keep no connections. */
        if ((e->last_used == 0 || now - e->last_used < 3600) && tick >= e->retry_ms)
            want = srv->pool_size > e->n ? srv->pool_size - e->n : 0;
        snprintf(address, sizeof(address), "%s", e->address);
        pthread_mutex_unlock(&srv->pmu);
        /* Connect outside the lock (a slow store must not stall logins). */
        for (unsigned k = 0; k < want; k++) {
            px_conn c;
            hv_err err = {0};
            int rc = px_backend_connect(srv, address, &c, &err);
            pthread_mutex_lock(&srv->pmu);
            px_pool_entry *e2 = pool_find(srv, address, 0);
            unsigned fails = 0;
            if (e2 && rc < 0) {
                /* Back off, doubling from one tick to 30 s. */
                fails = ++e2->fails;
                int64_t wait = (int64_t)PX_WATCH_MS << (fails < 8 ? fails : 8);
                e2->retry_ms = tick + (wait < 30000 ? wait : 30000);
            } else if (e2) {
                e2->fails = 0;
                if (e2->n < PX_POOL_MAX) {
                    e2->conns[e2->n] = c;
                    e2->since[e2->n] = now;
                    e2->n++;
                    c.fd = -1;
                    c.ssl = NULL;
                }
            }
            pthread_mutex_unlock(&srv->pmu);
            if (rc < 0) {
                /* Once per run of failures: a store down, or one whose
                 * certificate does not verify, is worth one line. */
                if (fails == 1)
                    log_warn("proxy: pool address=%s connect failed reason=\"%s\"", address,
                             err.msg);
                else
                    log_debug("proxy: pool address=%s connect failed reason=\"%s\"", address,
                              err.msg);
                break;
            }
            px_conn_close(&c);
        }
    }
}

void px_pool_drop(px_server *srv, const char *address)
{
    pthread_mutex_lock(&srv->pmu);
    px_pool_entry *e = pool_find(srv, address, 0);
    if (e) {
        for (unsigned k = 0; k < e->n; k++)
            px_conn_close(&e->conns[k]);
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
            px_conn_close(&srv->pool[i].conns[k]);
    srv->npool = 0;
    pthread_mutex_unlock(&srv->pmu);
}
