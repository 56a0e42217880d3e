/*
 * smtp_client.c - the blocking SMTP/LMTP client of the queue's delivery
 * threads (LMTP into the lmtp service, relay to other servers); see
 * smtp_client.h.
 *
 * The socket is non-blocking underneath so that every read, write,
 * connect and TLS step waits in poll() with the caller's timeout; to the
 * caller the calls simply block. Commands are assembled in one output
 * buffer and written with as few writes as possible: with PIPELINING the
 * whole MAIL/RCPT/DATA group goes in one write (RFC 2920; DATA last), and
 * the message goes dot-stuffed in one pass, with its final ".", as one
 * large write.
 *
 * SECURITY: replies come from remote servers and are read by the bounded
 * reader of smtp_reply.c; anything malformed drops the connection.
 * Plaintext read ahead of the TLS handshake after STARTTLS is refused
 * (command injection, CVE-2011-0411 style). What we send is checked for
 * CR/LF so that an address cannot smuggle a command. AUTH is only sent
 * over TLS or to a loopback peer.
 */
#include "smtp/smtp_client.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "smtp/smtp_reply.h"

/* Commands in flight at once when pipelining: bounded so that neither
 * side can fill its socket buffers with unread replies. */
#define PIPELINE_BATCH 100
#define CONNECT_TIMEOUT_MS 30000

struct smtp_client {
    int fd;
    SSL *ssl;
    int timeout_ms;
    int lmtp;
    int dead;          /* no further command may be sent */
    int loopback;      /* the peer is 127/8 or ::1 */
    char host[256];
    /* What the last EHLO/LHLO offered: upper-case keywords, space
     * separated, bounded (extensions past the room are forgotten). */
    char exts[1024];
    size_t exts_len;
    uint64_t size_max;
    int auth_plain;
    smtp_reply_parser rp;
    char rbuf[8192];
    size_t rpos, rlen;
    buf out;
};

/* --- low-level I/O: everything waits in poll() for at most timeout_ms --- */

static int wait_fd(smtp_client *c, short events, hv_err *err)
{
    struct pollfd pfd = {.fd = c->fd, .events = events};
    for (;;) {
        int r = poll(&pfd, 1, c->timeout_ms);
        if (r > 0)
            return 0; /* errors and hangups are found by the retried call */
        if (r == 0)
            return hv_err_set(err, -ETIMEDOUT, "%s: no answer within %d ms", c->host,
                              c->timeout_ms);
        if (errno != EINTR)
            return hv_err_sys(err, "%s: poll", c->host);
    }
}

static int tls_error(smtp_client *c, int sslerr, const char *what, hv_err *err)
{
    unsigned long e = ERR_get_error();
    if (sslerr == SSL_ERROR_ZERO_RETURN || (sslerr == SSL_ERROR_SYSCALL && e == 0 && errno == 0))
        return hv_err_set(err, -ECONNRESET, "%s: connection closed by server", c->host);
    if (sslerr == SSL_ERROR_SYSCALL && e == 0)
        return hv_err_sys(err, "%s: TLS %s", c->host, what);
    char s[256];
    ERR_error_string_n(e, s, sizeof(s));
    ERR_clear_error();
    /* OpenSSL 3 reports a plain close without close_notify as an error. */
    if (strstr(s, "unexpected eof"))
        return hv_err_set(err, -ECONNRESET, "%s: connection closed by server", c->host);
    return hv_err_set(err, -EPROTO, "%s: TLS %s: %s", c->host, what, s);
}

/* Reads what is there (at least one byte). */
static ssize_t io_read(smtp_client *c, void *p, size_t n, hv_err *err)
{
    for (;;) {
        if (c->ssl) {
            size_t got = 0;
            ERR_clear_error();
            errno = 0;
            int r = SSL_read_ex(c->ssl, p, n, &got);
            if (r == 1)
                return (ssize_t)got;
            int e = SSL_get_error(c->ssl, r);
            int rc = e == SSL_ERROR_WANT_READ    ? wait_fd(c, POLLIN, err)
                     : e == SSL_ERROR_WANT_WRITE ? wait_fd(c, POLLOUT, err)
                                                 : tls_error(c, e, "read", err);
            if (rc < 0)
                return rc;
            continue;
        }
        ssize_t r = recv(c->fd, p, n, 0);
        if (r > 0)
            return r;
        if (r == 0)
            return hv_err_set(err, -ECONNRESET, "%s: connection closed by server", c->host);
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int rc = wait_fd(c, POLLIN, err);
            if (rc < 0)
                return rc;
        } else if (errno != EINTR) {
            return hv_err_sys(err, "%s: read", c->host);
        }
    }
}

static int io_write_all(smtp_client *c, const void *p, size_t n, hv_err *err)
{
    const char *s = p;
    while (n > 0) {
        if (c->ssl) {
            size_t put = 0;
            ERR_clear_error();
            errno = 0;
            int r = SSL_write_ex(c->ssl, s, n, &put);
            if (r == 1) {
                s += put;
                n -= put;
                continue;
            }
            int e = SSL_get_error(c->ssl, r);
            int rc = e == SSL_ERROR_WANT_READ    ? wait_fd(c, POLLIN, err)
                     : e == SSL_ERROR_WANT_WRITE ? wait_fd(c, POLLOUT, err)
                                                 : tls_error(c, e, "write", err);
            if (rc < 0)
                return rc;
            continue;
        }
        ssize_t r = send(c->fd, s, n, MSG_NOSIGNAL);
        if (r > 0) {
            s += r;
            n -= (size_t)r;
        } else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int rc = wait_fd(c, POLLOUT, err);
            if (rc < 0)
                return rc;
        } else if (r < 0 && errno != EINTR) {
            return hv_err_sys(err, "%s: write", c->host);
        }
    }
    return 0;
}

/* Writes the output buffer; the connection is dead when that fails. */
static int flush_out(smtp_client *c, hv_err *err)
{
    int rc = io_write_all(c, c->out.data, c->out.len, err);
    buf_reset(&c->out);
    if (rc < 0)
        c->dead = 1;
    return rc;
}

/* Reads one whole reply. A 421 (the server is closing, RFC 5321 3.8)
 * ends the connection after it. */
static int read_reply(smtp_client *c, smtp_reply *out, hv_err *err)
{
    if (c->dead)
        return hv_err_set(err, -ENOTCONN, "%s: connection already lost", c->host);
    for (;;) {
        if (c->rpos < c->rlen) {
            size_t used = 0;
            int r = smtp_reply_feed(&c->rp, c->rbuf + c->rpos, c->rlen - c->rpos, &used, out, err);
            c->rpos += used;
            if (r == 1) {
                if (out->code == 421) {
                    c->dead = 1;
                    hv_err_set(err, -ECONNRESET, "%s: server closing: 421 %s", c->host, out->text);
                }
                return 0;
            }
            if (r < 0) {
                hv_err_prefix(err, "%s", c->host);
                c->dead = 1;
                return r;
            }
        }
        c->rpos = c->rlen = 0;
        ssize_t n = io_read(c, c->rbuf, sizeof(c->rbuf), err);
        if (n < 0) {
            c->dead = 1;
            return (int)n;
        }
        c->rlen = (size_t)n;
    }
}

/* --- EHLO --- */

static void ext_line(void *arg, int index, const char *text, size_t len)
{
    smtp_client *c = arg;
    if (index == 0)
        return; /* the server's name and greeting */
    size_t k = 0;
    while (k < len && text[k] != ' ')
        k++;
    if (k == 0 || k > 64 || c->exts_len + k + 2 > sizeof(c->exts))
        return;
    char *w = c->exts + c->exts_len;
    *w++ = ' ';
    for (size_t i = 0; i < k; i++) {
        char ch = text[i];
        *w++ = (ch >= 'a' && ch <= 'z') ? (char)(ch - 32) : ch;
    }
    *w = 0;
    const char *kw = c->exts + c->exts_len + 1;
    c->exts_len += k + 1;
    if (strcmp(kw, "SIZE") == 0) {
        uint64_t v = 0;
        for (size_t i = k + 1; i < len && text[i] >= '0' && text[i] <= '9' && v < (1ull << 50); i++)
            v = v * 10 + (uint64_t)(text[i] - '0');
        c->size_max = v;
    } else if (strcmp(kw, "AUTH") == 0) {
        for (size_t i = k; i + 5 <= len; i++)
            if (text[i] == ' ' && strncasecmp(text + i + 1, "PLAIN", 5) == 0 &&
                (i + 6 == len || text[i + 6] == ' '))
                c->auth_plain = 1;
    }
}

int smtp_client_has(const smtp_client *c, const char *extension)
{
    size_t n = strlen(extension);
    if (!c || n == 0)
        return 0;
    for (const char *p = c->exts; (p = strchr(p, ' ')) != NULL;) {
        p++;
        size_t k = strcspn(p, " ");
        if (k == n && strncasecmp(p, extension, n) == 0)
            return 1;
        p += k;
    }
    return 0;
}

int smtp_client_is_tls(const smtp_client *c) { return c && c->ssl != NULL; }

uint64_t smtp_client_size_limit(const smtp_client *c) { return c ? c->size_max : 0; }

static int has_crlf(const char *s) { return s && strpbrk(s, "\r\n") != NULL; }

/* What a refused greeting or hello means for the caller. */
static int reply_error(smtp_client *c, const char *what, const smtp_reply *r, hv_err *err)
{
    char t[600];
    smtp_reply_format(r, t, sizeof(t));
    return hv_err_set(err, r->code / 100 == 4 ? -EAGAIN : r->code / 100 == 5 ? -EPERM : -EPROTO,
                      "%s: %s: %s", c->host, what, t);
}

static int hello(smtp_client *c, const char *name, hv_err *err)
{
    smtp_reply r;
    c->exts[0] = 0;
    c->exts_len = 0;
    c->size_max = 0;
    c->auth_plain = 0;
    buf_printf(&c->out, "%s %s\r\n", c->lmtp ? "LHLO" : "EHLO", name);
    int rc = flush_out(c, err);
    if (rc < 0)
        return rc;
    c->rp.on_line = ext_line;
    rc = read_reply(c, &r, err);
    c->rp.on_line = NULL;
    if (rc < 0)
        return rc;
    if (r.code / 100 == 2)
        return 0;
    c->exts[0] = 0;
    c->exts_len = 0;
    c->size_max = 0;
    c->auth_plain = 0;
    if (c->lmtp || r.code / 100 != 5 || c->dead)
        return reply_error(c, c->lmtp ? "LHLO" : "EHLO", &r, err);
    /* An old server that does not know EHLO (RFC 5321 3.2). */
    buf_printf(&c->out, "HELO %s\r\n", name);
    if ((rc = flush_out(c, err)) < 0 || (rc = read_reply(c, &r, err)) < 0)
        return rc;
    return r.code / 100 == 2 ? 0 : reply_error(c, "HELO", &r, err);
}

/* --- TLS --- */

/* Client contexts are shared by all connections of the process (loading
 * the system's trust store for each connection would cost milliseconds):
 * one per (verify, CA file). */
static pthread_mutex_t ctx_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    int verify;
    char ca[512];
    SSL_CTX *ctx;
} ctx_cache[8];
static int ctx_count;

/* Returns a context the caller owns one reference of. */
static SSL_CTX *tls_ctx(int verify, const char *ca_file, hv_err *err)
{
    const char *ca = (verify && ca_file) ? ca_file : "";
    pthread_mutex_lock(&ctx_mu);
    for (int i = 0; i < ctx_count; i++)
        if (ctx_cache[i].verify == verify && strcmp(ctx_cache[i].ca, ca) == 0) {
            SSL_CTX *ctx = ctx_cache[i].ctx;
            SSL_CTX_up_ref(ctx);
            pthread_mutex_unlock(&ctx_mu);
            return ctx;
        }
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        pthread_mutex_unlock(&ctx_mu);
        hv_err_set(err, -ENOMEM, "TLS: cannot create a client context");
        return NULL;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    if (verify) {
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        int ok = ca[0] ? SSL_CTX_load_verify_locations(ctx, ca, NULL)
                       : SSL_CTX_set_default_verify_paths(ctx);
        if (ok != 1) {
            char e[256];
            ERR_error_string_n(ERR_get_error(), e, sizeof(e));
            ERR_clear_error();
            pthread_mutex_unlock(&ctx_mu);
            SSL_CTX_free(ctx);
            hv_err_set(err, -EINVAL, "TLS: cannot load the trusted certificates %s: %s",
                       ca[0] ? ca : "(system default)", e);
            return NULL;
        }
    } else {
        /* Opportunistic TLS (RFC 7435): any encryption beats none. */
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    if (ctx_count < (int)(sizeof(ctx_cache) / sizeof(ctx_cache[0])) &&
        strlen(ca) < sizeof(ctx_cache[0].ca)) {
        ctx_cache[ctx_count].verify = verify;
        snprintf(ctx_cache[ctx_count].ca, sizeof(ctx_cache[0].ca), "%s", ca);
        ctx_cache[ctx_count].ctx = ctx;
        ctx_count++;
        SSL_CTX_up_ref(ctx);
    }
    pthread_mutex_unlock(&ctx_mu);
    return ctx;
}

static int is_ip_literal(const char *h)
{
    unsigned char a[16];
    return inet_pton(AF_INET, h, a) == 1 || inet_pton(AF_INET6, h, a) == 1;
}

/* Sets *handshake_failed when the TLS exchange itself failed (as opposed
 * to a certificate that does not verify), which opportunistic TLS
 * answers by trying again in plaintext. */
static int tls_start(smtp_client *c, int verify, const char *ca_file, int *handshake_failed,
                     hv_err *err)
{
    SSL_CTX *ctx = tls_ctx(verify, ca_file, err);
    if (!ctx)
        return err ? err->code : -EINVAL;
    c->ssl = SSL_new(ctx);
    SSL_CTX_free(ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1)
        return hv_err_set(err, -ENOMEM, "%s: TLS: cannot create a session", c->host);
    int literal = is_ip_literal(c->host);
    if (!literal)
        SSL_set_tlsext_host_name(c->ssl, c->host);
    if (verify) {
        int ok = literal ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), c->host)
                         : SSL_set1_host(c->ssl, c->host);
        if (ok != 1)
            return hv_err_set(err, -EINVAL, "%s: TLS: cannot set the name to verify", c->host);
    }
    for (;;) {
        ERR_clear_error();
        errno = 0;
        int r = SSL_connect(c->ssl);
        if (r == 1)
            break;
        int e = SSL_get_error(c->ssl, r);
        int rc;
        if (e == SSL_ERROR_WANT_READ)
            rc = wait_fd(c, POLLIN, err);
        else if (e == SSL_ERROR_WANT_WRITE)
            rc = wait_fd(c, POLLOUT, err);
        else if (verify && SSL_get_verify_result(c->ssl) != X509_V_OK) {
            ERR_clear_error();
            return hv_err_set(err, -EACCES, "%s: TLS: certificate not accepted: %s", c->host,
                              X509_verify_cert_error_string(SSL_get_verify_result(c->ssl)));
        } else {
            *handshake_failed = 1;
            rc = tls_error(c, e, "handshake", err);
        }
        if (rc < 0) {
            c->dead = 1;
            return rc;
        }
    }
    log_debug("smtp_client: tls host=%s version=%s cipher=%s verified=%d", c->host,
              SSL_get_version(c->ssl), SSL_get_cipher_name(c->ssl), verify);
    return 0;
}

/* --- connecting --- */

static int is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a))
            return 1;
        return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
    }
    return 0;
}

/* Connects to one of host's addresses, in getaddrinfo's order. */
static int tcp_connect(smtp_client *c, int port, hv_err *err)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    char ports[16];
    snprintf(ports, sizeof(ports), "%d", port);
    int g = getaddrinfo(c->host, ports, &hints, &res);
    if (g != 0) {
        int code = g == EAI_AGAIN ? -EAGAIN : g == EAI_SYSTEM ? -(errno ? errno : EIO) : -EHOSTUNREACH;
        return hv_err_set(err, code, "%s: cannot resolve: %s", c->host, gai_strerror(g));
    }
    int rc = hv_err_set(err, -EHOSTUNREACH, "%s: no address", c->host);
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            rc = hv_err_sys(err, "%s: socket", c->host);
            continue;
        }
        c->fd = fd;
        int r = connect(fd, ai->ai_addr, ai->ai_addrlen);
        if (r < 0 && errno == EINPROGRESS) {
            /* A host that does not answer SYNs must not hold a delivery
             * thread for the whole 5-minute command timeout per address
             * (Postfix waits 30 s too). */
            int saved = c->timeout_ms;
            if (c->timeout_ms > CONNECT_TIMEOUT_MS)
                c->timeout_ms = CONNECT_TIMEOUT_MS;
            r = wait_fd(c, POLLOUT, err);
            c->timeout_ms = saved;
            if (r == 0) {
                int soerr = 0;
                socklen_t sl = sizeof(soerr);
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
                    soerr = errno;
                if (soerr) {
                    errno = soerr;
                    r = -1;
                }
            } else {
                errno = ETIMEDOUT;
                r = -1;
            }
        }
        if (r == 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            c->loopback = is_loopback(ai->ai_addr);
            freeaddrinfo(res);
            return 0;
        }
        char addr[INET6_ADDRSTRLEN] = "?";
        const void *a = ai->ai_family == AF_INET
                            ? (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
                            : (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
        inet_ntop(ai->ai_family, a, addr, sizeof(addr));
        rc = hv_err_sys(err, "%s: connect to %s port %d", c->host, addr, port);
        close(fd);
        c->fd = -1;
    }
    freeaddrinfo(res);
    return rc;
}

static int auth_plain(smtp_client *c, const char *user, const char *pass, hv_err *err)
{
    if (!c->ssl && !c->loopback)
        return hv_err_set(err, -EPERM, "%s: refusing AUTH without TLS", c->host);
    if (!c->auth_plain)
        return hv_err_set(err, -ENOTSUP, "%s: server does not offer AUTH PLAIN", c->host);
    size_t ul = strlen(user), pl = strlen(pass ? pass : "");
    if (ul > 512 || pl > 512 || has_crlf(user))
        return hv_err_set(err, -EINVAL, "%s: AUTH user or password too long", c->host);
    unsigned char raw[1030];
    raw[0] = 0;
    memcpy(raw + 1, user, ul);
    raw[1 + ul] = 0;
    memcpy(raw + 2 + ul, pass ? pass : "", pl);
    unsigned char b64[1400];
    EVP_EncodeBlock(b64, raw, (int)(ul + pl + 2));
    OPENSSL_cleanse(raw, sizeof(raw));
    buf_printf(&c->out, "AUTH PLAIN %s\r\n", (const char *)b64);
    OPENSSL_cleanse(b64, sizeof(b64));
    int rc = flush_out(c, err);
    smtp_reply r;
    if (rc < 0 || (rc = read_reply(c, &r, err)) < 0)
        return rc;
    if (r.code == 235)
        return 0;
    char t[600];
    smtp_reply_format(&r, t, sizeof(t));
    return hv_err_set(err, r.code / 100 == 4 ? -EAGAIN : -EACCES, "%s: AUTH refused: %s", c->host,
                      t);
}

static void client_free(smtp_client *c)
{
    if (!c)
        return;
    if (c->ssl)
        SSL_free(c->ssl);
    if (c->fd >= 0)
        close(c->fd);
    buf_free(&c->out);
    free(c);
}

static int connect_once(const char *host, int port, const smtp_client_opts *o,
                        enum smtp_client_tls tls, int *handshake_failed, smtp_client **out,
                        hv_err *err)
{
    smtp_client *c = calloc(1, sizeof(*c));
    if (!c)
        return hv_err_set(err, -ENOMEM, "out of memory");
    c->fd = -1;
    c->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 300000;
    c->lmtp = o->lmtp;
    buf_init(&c->out);
    smtp_reply_parser_init(&c->rp, NULL, c);
    /* A literal IPv6 address may come in brackets ("[::1]"). */
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']')
        snprintf(c->host, sizeof(c->host), "%.*s", (int)(hl - 2), host + 1);
    else
        snprintf(c->host, sizeof(c->host), "%s", host);
    const char *name = o->helo && o->helo[0] ? o->helo : "localhost";
    smtp_reply r;
    int rc;
    if (has_crlf(name) || strchr(name, ' ')) {
        rc = hv_err_set(err, -EINVAL, "bad HELO name");
        goto fail;
    }
    if ((rc = tcp_connect(c, port, err)) < 0)
        goto fail;
    if (tls == SMTP_TLS_IMPLICIT &&
        (rc = tls_start(c, 1, o->tls_ca_file, handshake_failed, err)) < 0)
        goto fail;
    if ((rc = read_reply(c, &r, err)) < 0)
        goto fail;
    if (r.code != 220) {
        rc = reply_error(c, "greeting", &r, err);
        goto fail;
    }
    if ((rc = hello(c, name, err)) < 0)
        goto fail;
    if ((tls == SMTP_TLS_OPPORTUNISTIC || tls == SMTP_TLS_REQUIRED) && !c->ssl) {
        if (!smtp_client_has(c, "STARTTLS")) {
            if (tls == SMTP_TLS_REQUIRED) {
                rc = hv_err_set(err, -ENOTSUP, "%s: server does not offer STARTTLS", c->host);
                goto fail;
            }
        } else {
            buf_append_str(&c->out, "STARTTLS\r\n");
            if ((rc = flush_out(c, err)) < 0 || (rc = read_reply(c, &r, err)) < 0)
                goto fail;
            if (r.code == 220) {
                if (c->rpos < c->rlen) {
                    rc = hv_err_set(err, -EPROTO, "%s: data after the STARTTLS reply", c->host);
                    goto fail;
                }
                if ((rc = tls_start(c, tls == SMTP_TLS_REQUIRED, o->tls_ca_file,
                                    handshake_failed, err)) < 0)
                    goto fail;
                /* Forget everything learnt before TLS (RFC 3207 4.2). */
                if ((rc = hello(c, name, err)) < 0)
                    goto fail;
            } else if (tls == SMTP_TLS_REQUIRED) {
                rc = reply_error(c, "STARTTLS", &r, err);
                goto fail;
            }
        }
    }
    if (o->auth_user && o->auth_user[0] &&
        (rc = auth_plain(c, o->auth_user, o->auth_pass, err)) < 0)
        goto fail;
    *out = c;
    return 0;
fail:
    client_free(c);
    return rc;
}

int smtp_client_connect(const char *host, int port, const smtp_client_opts *o,
                        smtp_client **out, hv_err *err)
{
    static const smtp_client_opts defaults;
    *out = NULL;
    if (!o)
        o = &defaults;
    int handshake_failed = 0;
    int rc = connect_once(host, port, o, o->tls, &handshake_failed, out, err);
    if (rc < 0 && handshake_failed && o->tls == SMTP_TLS_OPPORTUNISTIC) {
        /* Opportunistic TLS that fails to negotiate falls back to
         * plaintext on a new connection, as other MTAs do. */
        log_info("smtp_client: tls_fallback host=%s port=%d reason=\"%s\"", host, port,
                 err ? err->msg : "");
        handshake_failed = 0;
        rc = connect_once(host, port, o, SMTP_TLS_NONE, &handshake_failed, out, err);
    }
    return rc;
}

/* --- one transaction --- */

/* Keeps the parameters the server can understand: an extension's
 * parameters are dropped when it was not offered (BODY= without 8BITMIME
 * is sent as is, like other MTAs do; DSN's without DSN are dropped, RFC
 * 3461 4.1 lets the relay act as if none were given). SMTPUTF8 is always
 * kept: the server must refuse what it cannot carry. SIZE is ours. */
static void append_params(smtp_client *c, const char *params)
{
    if (!params)
        return;
    const char *p = params;
    while (*p) {
        while (*p == ' ')
            p++;
        size_t n = strcspn(p, " ");
        if (n == 0)
            break;
        size_t k = strcspn(p, "= ");
        if (k > n)
            k = n;
        const char *ext = NULL;
        if (k == 4 && strncasecmp(p, "BODY", 4) == 0)
            ext = "8BITMIME";
        else if ((k == 3 && strncasecmp(p, "RET", 3) == 0) ||
                 (k == 5 && strncasecmp(p, "ENVID", 5) == 0) ||
                 (k == 6 && strncasecmp(p, "NOTIFY", 6) == 0) ||
                 (k == 5 && strncasecmp(p, "ORCPT", 5) == 0))
            ext = "DSN";
        else if (k == 4 && strncasecmp(p, "SIZE", 4) == 0)
            ext = "";
        if (!ext || (ext[0] && smtp_client_has(c, ext))) {
            buf_append(&c->out, " ", 1);
            buf_append(&c->out, p, n);
        }
        p += n;
    }
}

/* The message, dot-stuffed (RFC 5321 4.5.2) in one pass, ending in
 * CRLF "." CRLF. Every line that starts with '.' gets one more, lines
 * being counted after any LF so that no bare-LF trick can end the data
 * early at a server that accepts bare LF. */
static void append_data(buf *b, const char *p, size_t n)
{
    if (n == 0) {
        buf_append(b, ".\r\n", 3);
        return;
    }
    buf_reserve(b, n + n / 256 + 8);
    const char *end = p + n;
    if (p[0] == '.')
        buf_append(b, ".", 1);
    const char *q = p;
    const char *hit;
    while (q < end && (hit = memmem(q, (size_t)(end - q), "\n.", 2)) != NULL) {
        buf_append(b, q, (size_t)(hit + 1 - q));
        buf_append(b, ".", 1);
        q = hit + 1;
    }
    buf_append(b, q, (size_t)(end - q));
    if (n < 2 || p[n - 2] != '\r' || p[n - 1] != '\n')
        buf_append(b, "\r\n", 2);
    buf_append(b, ".\r\n", 3);
}

static int rset(smtp_client *c, hv_err *err)
{
    smtp_reply r;
    buf_append_str(&c->out, "RSET\r\n");
    int rc = flush_out(c, err);
    if (rc < 0 || (rc = read_reply(c, &r, err)) < 0)
        return rc;
    if (r.code / 100 != 2) {
        c->dead = 1;
        return reply_error(c, "RSET", &r, err);
    }
    return 0;
}

static int lost(smtp_client *c, int rc, hv_err *err)
{
    c->dead = 1;
    if (rc >= 0)
        rc = hv_err_set(err, -ECONNRESET, "%s: connection lost", c->host);
    return rc;
}

int smtp_client_send(smtp_client *c, const smtp_tx *tx, smtp_reply *results, hv_err *err)
{
    for (size_t i = 0; i < tx->nrcpts; i++)
        memset(&results[i], 0, sizeof(results[i]));
    if (!c || c->dead)
        return hv_err_set(err, -ENOTCONN, "%s: connection already lost", c ? c->host : "smtp");
    int bad = tx->nrcpts == 0 || has_crlf(tx->mail_from) || has_crlf(tx->mail_params);
    for (size_t i = 0; i < tx->nrcpts && !bad; i++)
        bad = !tx->rcpts[i] || has_crlf(tx->rcpts[i]) ||
              (tx->rcpt_params && has_crlf(tx->rcpt_params[i]));
    if (bad) {
        /* Nothing was sent; the contract has no "usable but failed". */
        c->dead = 1;
        return hv_err_set(err, -EINVAL, "%s: no recipients, or CR/LF in an address or parameter",
                          c->host);
    }
    unsigned char *accepted = calloc(tx->nrcpts, 1);
    if (!accepted) {
        c->dead = 1;
        return hv_err_set(err, -ENOMEM, "out of memory");
    }
    int pipelining = smtp_client_has(c, "PIPELINING");
    size_t batch = pipelining ? PIPELINE_BATCH : 1;
    /* Commands are numbered: 0 MAIL, 1..n RCPT, n+1 DATA. */
    size_t n = tx->nrcpts, total = n + 2, sent = 0, answered = 0, naccepted = 0;
    smtp_reply r, mail_reply = {0}, data_reply = {0};
    int data_sent = 0, stop = 0, rc = 0;
    buf_reset(&c->out);
    while (answered < total) {
        while (!stop && sent < total && sent - answered < batch) {
            if (sent == 0) {
                buf_printf(&c->out, "MAIL FROM:<%s>", tx->mail_from ? tx->mail_from : "");
                if (smtp_client_has(c, "SIZE"))
                    buf_printf(&c->out, " SIZE=%zu", tx->len);
                append_params(c, tx->mail_params);
            } else if (sent <= n) {
                buf_printf(&c->out, "RCPT TO:<%s>", tx->rcpts[sent - 1]);
                if (tx->rcpt_params)
                    append_params(c, tx->rcpt_params[sent - 1]);
            } else {
                /* DATA goes last in a pipelined group (RFC 2920 3.1);
                 * without pipelining, or once every recipient was
                 * refused, RSET is sent instead. */
                if (answered == sent && naccepted == 0) {
                    stop = 1;
                    break;
                }
                buf_append_str(&c->out, "DATA");
                data_sent = 1;
            }
            buf_append(&c->out, "\r\n", 2);
            sent++;
        }
        if (c->out.len > 0 && (rc = flush_out(c, err)) < 0)
            goto done;
        if (answered == sent)
            break; /* stopped */
        while (answered < sent) {
            if ((rc = read_reply(c, &r, err)) < 0)
                goto done;
            if (answered == 0) {
                mail_reply = r;
                if (r.code / 100 != 2)
                    stop = 1;
            } else if (answered <= n) {
                size_t i = answered - 1;
                if (mail_reply.code / 100 != 2)
                    results[i] = mail_reply;
                else if (r.code / 100 == 2)
                    accepted[i] = 1, naccepted++;
                else
                    results[i] = r;
            } else {
                data_reply = r;
            }
            answered++;
            if (c->dead) { /* 421 */
                rc = lost(c, err ? err->code : -ECONNRESET, err);
                goto done;
            }
        }
    }
    if (mail_reply.code / 100 != 2) {
        /* Recipients never sent share the refusal of MAIL. */
        for (size_t i = 0; i < n; i++)
            if (results[i].code == 0)
                results[i] = mail_reply;
    }
    if (data_sent && data_reply.code == 354) {
        if (naccepted == 0) {
            rc = hv_err_set(err, -EPROTO, "%s: server took DATA without recipients", c->host);
            c->dead = 1;
            goto done;
        }
        append_data(&c->out, tx->data, tx->len);
        if ((rc = flush_out(c, err)) < 0)
            goto done;
        if (c->lmtp) {
            /* One reply per accepted recipient, in RCPT order (RFC 2033 4.2). */
            for (size_t i = 0; i < n; i++) {
                if (!accepted[i])
                    continue;
                if ((rc = read_reply(c, &results[i], err)) < 0)
                    goto done;
                if (c->dead) {
                    rc = lost(c, err ? err->code : -ECONNRESET, err);
                    goto done;
                }
            }
        } else {
            if ((rc = read_reply(c, &r, err)) < 0)
                goto done;
            for (size_t i = 0; i < n; i++)
                if (accepted[i])
                    results[i] = r;
            if (c->dead) {
                rc = lost(c, err ? err->code : -ECONNRESET, err);
                goto done;
            }
        }
        rc = 0;
        goto done;
    }
    if (data_sent) {
        if (data_reply.code / 100 == 2 || data_reply.code / 100 == 3) {
            /* 250 to DATA, or any other 3xx: nothing sane can follow. */
            c->dead = 1;
            rc = reply_error(c, "DATA", &data_reply, err);
            goto done;
        }
        for (size_t i = 0; i < n; i++)
            if (accepted[i])
                results[i] = data_reply;
    }
    rc = rset(c, err);
done:
    free(accepted);
    if (rc < 0)
        c->dead = 1;
    /* Do not keep a huge message's copy for the connection's lifetime. */
    if (c->out.cap > (4u << 20)) {
        buf_free(&c->out);
        buf_init(&c->out);
    } else {
        buf_reset(&c->out);
    }
    return rc;
}

void smtp_client_close(smtp_client *c)
{
    if (!c)
        return;
    if (!c->dead && c->fd >= 0) {
        /* Polite QUIT, but a slow server must not hold a delivery thread. */
        if (c->timeout_ms > 10000)
            c->timeout_ms = 10000;
        smtp_reply r;
        buf_reset(&c->out);
        buf_append_str(&c->out, "QUIT\r\n");
        if (flush_out(c, NULL) == 0)
            (void)read_reply(c, &r, NULL);
        if (c->ssl && !c->dead) {
            ERR_clear_error();
            (void)SSL_shutdown(c->ssl); /* our close_notify; not waiting for theirs */
        }
    }
    ERR_clear_error();
    client_free(c);
}
