/*
 * proxy_session.c - one client of the proxy, from accept to close.
 *
 * Before login the loop thread parses commands with the bounded IMAP
 * parser (pre-login limits) and answers them itself; a LOGIN or
 * AUTHENTICATE PLAIN goes to a worker, which checks the password against
 * the directory, finds the account's store and logs in there. While it
 * runs the session reads nothing more. Once logged in, bytes are moved
 * between the two sockets without copying (evbuffer to evbuffer), each
 * side held back while the other's output is over PX_HIGH_WATER. The
 * store's responses pass a small scanner that knows when the stream is
 * between two responses: that is where the proxy's own "* BYE" goes when
 * the account moves.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <stdarg.h>
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

#define PX_HIGH_WATER (1u << 20)
#define PX_LOW_WATER (256u << 10)
#define MAX_BAD_COMMANDS 20
#define MAX_SASL_LINE 8192
#define PRELOGIN_TIMEOUT_S 120
/* How long a login waits for an account in state "moving" to land. */
#define PX_MOVING_WAIT_MS 5000

void px_server_submit(px_server *srv, px_session *s); /* proxy_server.c */

static void session_free(px_session *s);
static void process_pre(px_session *s);
static void close_when_flushed(px_session *s);

/* ---- output ---- */

static void out(px_session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out(px_session *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    evbuffer_add_vprintf(bufferevent_get_output(s->cli), fmt, ap);
    va_end(ap);
}

static int clear_text_allowed(px_session *s)
{
    return s->tls || (s->is_loopback && s->srv->plaintext_loopback);
}

static const char *capabilities(px_session *s)
{
    static char caps[256];
    snprintf(caps, sizeof(caps), "IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR ID%s%s",
             s->tls ? "" : " STARTTLS", clear_text_allowed(s) ? " AUTH=PLAIN" : " LOGINDISABLED");
    return caps;
}

/* ---- relaying ---- */

static size_t out_pending(px_session *s) { return tls_bev_unsent(s->cli); }

/* Store -> client: every byte passes the scanner, then moves over. */
static void pass_to_client(px_session *s)
{
    struct evbuffer *in = bufferevent_get_input(s->be);
    size_t len = evbuffer_get_length(in);
    if (len == 0)
        return;
    struct evbuffer_iovec vs[16];
    int n = evbuffer_peek(in, -1, NULL, vs, 16);
    if (n > 16) {
        struct evbuffer_iovec *vh = malloc((size_t)n * sizeof(*vh));
        evbuffer_peek(in, -1, NULL, vh, n);
        for (int i = 0; i < n; i++)
            px_scan_feed(&s->scan, vh[i].iov_base, vh[i].iov_len);
        free(vh);
    } else {
        for (int i = 0; i < n; i++)
            px_scan_feed(&s->scan, vs[i].iov_base, vs[i].iov_len);
    }
    evbuffer_add_buffer(bufferevent_get_output(s->cli), in);
    if (out_pending(s) > PX_HIGH_WATER)
        bufferevent_disable(s->be, EV_READ);
}

static void pass_to_backend(px_session *s)
{
    struct evbuffer *in = bufferevent_get_input(s->cli);
    if (evbuffer_get_length(in) == 0)
        return;
    struct evbuffer *o = bufferevent_get_output(s->be);
    evbuffer_add_buffer(o, in);
    if (evbuffer_get_length(o) > PX_HIGH_WATER)
        bufferevent_disable(s->cli, EV_READ);
}

static void drop_backend(px_session *s)
{
    if (!s->be)
        return;
    /* TLS to the store: close_notify, so it logs an end, not a cut. */
    SSL *ssl = bufferevent_openssl_get_ssl(s->be);
    if (ssl) {
        SSL_shutdown(ssl);
        ERR_clear_error();
    }
    bufferevent_free(s->be);
    s->be = NULL;
}

/* The account moved and the stream is between two responses: say so. */
static void finish_kill(px_session *s)
{
    drop_backend(s);
    px_route_unregister(s->srv, s->id);
    if (s->timer_ev)
        evtimer_del(s->timer_ev);
    out(s, "* BYE [UNAVAILABLE] account moved, reconnect\r\n");
    log_info("proxy: session=%s user=%s bye reason=moved store=%s", s->ids, s->user,
             s->route.store);
    s->state = PX_CLOSING;
    close_when_flushed(s);
}

static void be_read_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    px_session *s = arg;
    pass_to_client(s);
    if (s->state == PX_KILLING && px_scan_at_boundary(&s->scan))
        finish_kill(s);
}

static void be_write_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    px_session *s = arg;
    if (s->state == PX_RELAY)
        bufferevent_enable(s->cli, EV_READ);
}

static void be_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    px_session *s = arg;
    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        return;
    /* The store ended the session (LOGOUT, autologout, shutdown): what it
     * said last is already on its way to the client. Nothing more to say
     * to it, not even close_notify. */
    SSL *ssl = bufferevent_openssl_get_ssl(s->be);
    if (ssl)
        SSL_set_quiet_shutdown(ssl, 1);
    pass_to_client(s);
    drop_backend(s);
    px_route_unregister(s->srv, s->id);
    s->state = PX_CLOSING;
    close_when_flushed(s);
}

/* ---- client side ---- */

static void linger_cb(evutil_socket_t fd, short what, void *arg);

static void close_when_flushed(px_session *s)
{
    if (s->state == PX_BUSY)
        return; /* the worker still has it; done_cb comes back here */
    bufferevent_disable(s->cli, EV_READ);
    if (out_pending(s) == 0 || s->peer_gone || ++s->linger > 100) {
        session_free(s);
        return;
    }
    struct timeval tv = {0, 20000};
    if (!s->timer_ev)
        s->timer_ev = evtimer_new(s->srv->base, linger_cb, s);
    evtimer_add(s->timer_ev, &tv);
}

static void linger_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    px_session *s = arg;
    if (s->state == PX_KILLING) {
        /* No gap between responses came in time: cut without a BYE
         * (it would land inside a literal). */
        log_info("proxy: session=%s user=%s cut reason=moved store=%s", s->ids, s->user,
                 s->route.store);
        drop_backend(s);
        px_route_unregister(s->srv, s->id);
        s->state = PX_CLOSING;
        s->peer_gone = 1;
    }
    close_when_flushed(s);
}

static void cli_write_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    px_session *s = arg;
    if (s->state == PX_CLOSING)
        close_when_flushed(s);
    else if ((s->state == PX_RELAY || s->state == PX_KILLING) && s->be)
        bufferevent_enable(s->be, EV_READ);
}

static void cli_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    px_session *s = arg;
    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)))
        return;
    if (what & BEV_EVENT_TIMEOUT)
        log_info("proxy: session=%s closed reason=timeout", s->ids);
    s->peer_gone = 1;
    if (s->state == PX_BUSY)
        return;
    if (s->state == PX_RELAY && s->be) {
        /* Let the store see the end too. */
        pass_to_backend(s);
    }
    s->state = PX_CLOSING;
    close_when_flushed(s);
}

static int read_line(px_session *s, char *line, size_t cap)
{
    struct evbuffer *in = bufferevent_get_input(s->cli);
    struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, NULL, EVBUFFER_EOL_CRLF);
    if (p.pos < 0)
        return evbuffer_get_length(in) >= cap ? -1 : 0;
    if ((size_t)p.pos >= cap)
        return -1;
    evbuffer_remove(in, line, (size_t)p.pos);
    line[p.pos] = 0;
    char eol;
    evbuffer_remove(in, &eol, 1);
    if (eol == '\r')
        evbuffer_remove(in, &eol, 1);
    return 1;
}

static void cli_read_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    px_session *s = arg;
    switch (s->state) {
    case PX_PRE:
    case PX_SASL:
        process_pre(s);
        break;
    case PX_RELAY:
        pass_to_backend(s);
        break;
    default: {
        struct evbuffer *in = bufferevent_get_input(s->cli);
        evbuffer_drain(in, evbuffer_get_length(in));
    }
    }
}

static void set_callbacks(px_session *s)
{
    bufferevent_setcb(s->cli, cli_read_cb, cli_write_cb, cli_event_cb, s);
    struct timeval t = {PRELOGIN_TIMEOUT_S, 0};
    bufferevent_set_timeouts(s->cli, &t, NULL);
    bufferevent_setwatermark(s->cli, EV_WRITE, PX_LOW_WATER, 0);
    bufferevent_enable(s->cli, EV_READ | EV_WRITE);
}

static void done_cb(evutil_socket_t fd, short what, void *arg);

void px_session_accept(px_server *srv, int fd, int tls)
{
    if (srv->nsessions >= srv->max_sessions) {
        static const char bye[] = "* BYE [UNAVAILABLE] too many connections\r\n";
        if (write(fd, bye, sizeof(bye) - 1) < 0) {
        }
        close(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    px_session *s = calloc(1, sizeof(*s));
    s->srv = srv;
    s->id = ++srv->next_id;
    s->be_conn.fd = -1;
    snprintf(s->ids, sizeof(s->ids), "%llx", (unsigned long long)s->id);
    snprintf(s->peer, sizeof(s->peer), "?");
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *in = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &in->sin_addr, s->peer, sizeof(s->peer));
            s->is_loopback = (ntohl(in->sin_addr.s_addr) >> 24) == 127;
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &in6->sin6_addr, s->peer, sizeof(s->peer));
            s->is_loopback = IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
        }
    }
    if (tls) {
        SSL *ssl = SSL_new(srv->ssl);
        s->cli = bufferevent_openssl_socket_new(srv->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                BEV_OPT_CLOSE_ON_FREE);
        s->tls = 1;
    } else {
        s->cli = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    }
    s->done_ev = event_new(srv->base, -1, 0, done_cb, s);
    imap_parser_limits lim = {.max_line = 8192, .max_literal = 65536, .max_total = 65536};
    s->parser = imap_parser_new(&lim);
    s->state = PX_PRE;
    s->next = srv->sessions;
    if (srv->sessions)
        srv->sessions->prev = s;
    srv->sessions = s;
    srv->nsessions++;
    set_callbacks(s);
    log_info("proxy: session=%s connect peer=%s tls=%d", s->ids, s->peer, tls);
    out(s, "* OK [CAPABILITY %s] %s Haven IMAP proxy ready\r\n", capabilities(s),
        srv->hostname);
}

static void session_free(px_session *s)
{
    px_server *srv = s->srv;
    log_info("proxy: session=%s user=%s disconnect", s->ids, s->user[0] ? s->user : "-");
    px_route_unregister(srv, s->id);
    drop_backend(s);
    px_conn_close(&s->be_conn);
    if (s->tls && !s->peer_gone) {
        SSL *ssl = bufferevent_openssl_get_ssl(s->cli);
        if (ssl)
            SSL_shutdown(ssl);
    }
    bufferevent_free(s->cli);
    if (s->timer_ev)
        event_free(s->timer_ev);
    event_free(s->done_ev);
    if (s->parser)
        imap_parser_free(s->parser);
    free(s->extra);
    memset(s->pass, 0, sizeof(s->pass));
    if (s->prev)
        s->prev->next = s->next;
    else
        srv->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    srv->nsessions--;
    free(s);
}

/* ---- before login ---- */

static void start_login(px_session *s)
{
    s->state = PX_BUSY;
    bufferevent_disable(s->cli, EV_READ);
    px_server_submit(s->srv, s);
}

static int b64val(int ch)
{
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    if (ch == '+') return 62;
    if (ch == '/') return 63;
    return -1;
}

/* Strict base64 into out (room for len*3/4+3); the length or -1. */
static long b64_decode(const char *in, size_t len, char *o)
{
    long n = 0;
    unsigned acc = 0;
    int bits = 0;
    size_t i;
    for (i = 0; i < len && in[i] != '='; i++) {
        int v = b64val((unsigned char)in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            o[n++] = (char)((acc >> bits) & 0xff);
        }
    }
    for (; i < len; i++)
        if (in[i] != '=')
            return -1;
    return n;
}

/* RFC 4616: [authzid] NUL authcid NUL passwd. 0 with s->user/s->pass
 * set, or -1 after answering. */
static int sasl_plain(px_session *s, const char *b64)
{
    size_t len = strlen(b64);
    char raw[MAX_SASL_LINE];
    long n = strcmp(b64, "=") == 0 ? 0 : len < sizeof(raw) * 4 / 3 - 4 ? b64_decode(b64, len, raw) : -1;
    if (n < 0) {
        out(s, "%s BAD invalid base64\r\n", s->tag);
        return -1;
    }
    char *authz = raw, *authc = memchr(raw, 0, (size_t)n);
    char *pass = authc && authc + 1 < raw + n ? memchr(authc + 1, 0, (size_t)(raw + n - authc - 1))
                                              : NULL;
    if (!authc || !pass) {
        out(s, "%s BAD malformed PLAIN response\r\n", s->tag);
        return -1;
    }
    authc++;
    pass++;
    size_t plen = (size_t)(raw + n - pass);
    if (*authz && strcasecmp(authz, authc) != 0) {
        out(s, "%s NO [AUTHENTICATIONFAILED] authorization identity differs (not supported)\r\n",
            s->tag);
        return -1;
    }
    if (strlen(authc) > DIR_ADDRESS_MAX || plen == 0 || plen > PASSWORD_MAX ||
        memchr(pass, 0, plen)) {
        out(s, "%s NO [AUTHENTICATIONFAILED] Authentication failed\r\n", s->tag);
        return -1;
    }
    snprintf(s->user, sizeof(s->user), "%s", authc);
    memcpy(s->pass, pass, plen);
    s->pass[plen] = 0;
    memset(raw, 0, sizeof(raw));
    return 0;
}

static void start_tls(px_session *s)
{
    /* Bytes sent after STARTTLS in clear text must not count as sent
     * over TLS (command injection). */
    struct evbuffer *in = bufferevent_get_input(s->cli);
    evbuffer_drain(in, evbuffer_get_length(in));
    SSL *ssl = SSL_new(s->srv->ssl);
    s->cli = bufferevent_openssl_filter_new(s->srv->base, s->cli, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                            BEV_OPT_CLOSE_ON_FREE);
    s->tls = 1;
    set_callbacks(s);
}

/* One whole command before login. 1: a login was started (stop reading). */
static int pre_command(px_session *s, const imap_command *c)
{
    snprintf(s->tag, sizeof(s->tag), "%s", c->tag);
    const char *name = c->name;
    if (strcmp(name, "CAPABILITY") == 0) {
        out(s, "* CAPABILITY %s\r\n%s OK CAPABILITY completed\r\n", capabilities(s), s->tag);
    } else if (strcmp(name, "NOOP") == 0) {
        out(s, "%s OK NOOP completed\r\n", s->tag);
    } else if (strcmp(name, "ID") == 0) {
        out(s, "* ID (\"name\" \"Haven\" \"vendor\" \"Haven\")\r\n%s OK ID completed\r\n",
            s->tag);
    } else if (strcmp(name, "LOGOUT") == 0) {
        out(s, "* BYE Haven logging out\r\n%s OK LOGOUT completed\r\n", s->tag);
        s->state = PX_CLOSING;
    } else if (strcmp(name, "STARTTLS") == 0) {
        if (s->tls) {
            out(s, "%s BAD TLS is already active\r\n", s->tag);
        } else {
            out(s, "%s OK Begin TLS negotiation now\r\n", s->tag);
            imap_parser_reset(s->parser);
            start_tls(s);
            return 1; /* nothing pipelined survives STARTTLS */
        }
    } else if (strcmp(name, "LOGIN") == 0) {
        if (c->nargs != 2 || c->args[0].type == IMAP_ARG_LIST ||
            c->args[1].type == IMAP_ARG_LIST || c->args[0].type == IMAP_ARG_NIL ||
            c->args[1].type == IMAP_ARG_NIL) {
            out(s, "%s BAD usage: LOGIN user password\r\n", s->tag);
        } else if (!clear_text_allowed(s)) {
            out(s, "%s NO [PRIVACYREQUIRED] Use STARTTLS or port 993 first\r\n", s->tag);
        } else if (c->args[0].len > DIR_ADDRESS_MAX || c->args[1].len == 0 ||
                   c->args[1].len > PASSWORD_MAX || memchr(c->args[0].str, 0, c->args[0].len) ||
                   memchr(c->args[1].str, 0, c->args[1].len)) {
            out(s, "%s NO [AUTHENTICATIONFAILED] Authentication failed\r\n", s->tag);
        } else {
            snprintf(s->user, sizeof(s->user), "%s", c->args[0].str);
            memcpy(s->pass, c->args[1].str, c->args[1].len);
            s->pass[c->args[1].len] = 0;
            start_login(s);
            return 1;
        }
    } else if (strcmp(name, "AUTHENTICATE") == 0) {
        if (c->nargs < 1 || c->args[0].type != IMAP_ARG_ATOM) {
            out(s, "%s BAD usage: AUTHENTICATE mechanism [initial-response]\r\n", s->tag);
        } else if (strcasecmp(c->args[0].str, "PLAIN") != 0) {
            out(s, "%s NO Unsupported authentication mechanism\r\n", s->tag);
        } else if (!clear_text_allowed(s)) {
            out(s, "%s NO [PRIVACYREQUIRED] Use STARTTLS or port 993 first\r\n", s->tag);
        } else if (c->nargs >= 2) {
            if (sasl_plain(s, c->args[1].str) == 0) {
                start_login(s);
                return 1;
            }
        } else {
            out(s, "+ \r\n");
            s->state = PX_SASL;
        }
    } else {
        out(s, "%s BAD %.40s is not allowed before login\r\n", s->tag, name);
        if (++s->bad_count > MAX_BAD_COMMANDS) {
            out(s, "* BYE too many bad commands\r\n");
            s->state = PX_CLOSING;
        }
        return 0;
    }
    s->bad_count = 0;
    return 0;
}

static void process_pre(px_session *s)
{
    while (s->state == PX_PRE || s->state == PX_SASL) {
        struct evbuffer *in = bufferevent_get_input(s->cli);
        size_t avail = evbuffer_get_length(in);
        if (avail == 0)
            break;
        if (s->state == PX_SASL) {
            char line[MAX_SASL_LINE];
            int r = read_line(s, line, sizeof(line));
            if (r == 0)
                break;
            s->state = PX_PRE;
            if (r < 0) {
                out(s, "* BYE line too long\r\n");
                s->state = PX_CLOSING;
                break;
            }
            if (strcmp(line, "*") == 0)
                out(s, "%s BAD Authentication cancelled\r\n", s->tag);
            else if (sasl_plain(s, line) == 0)
                start_login(s);
            memset(line, 0, sizeof(line));
            continue;
        }
        size_t chunk = avail > 65536 ? 65536 : avail;
        const char *p = (const char *)evbuffer_pullup(in, (ssize_t)chunk);
        size_t used = 0;
        enum imap_parse_result r = imap_parser_feed(s->parser, p, chunk, &used);
        evbuffer_drain(in, used);
        if (r == IMAP_PARSE_MORE)
            continue;
        if (r == IMAP_PARSE_CONTINUE) {
            out(s, "+ OK\r\n");
            continue;
        }
        if (r == IMAP_PARSE_ERROR) {
            const char *tag = NULL;
            const char *why = imap_parser_error(s->parser, &tag);
            out(s, "%s BAD %s%s\r\n", tag ? tag : "*",
                imap_parser_error_too_big(s->parser) ? "[TOOBIG] " : "", why);
            int fatal = imap_parser_error_fatal(s->parser);
            imap_parser_reset(s->parser);
            if (fatal || ++s->bad_count > MAX_BAD_COMMANDS) {
                out(s, "* BYE %s\r\n", fatal ? "literal too large to skip, closing"
                                             : "too many bad commands");
                s->state = PX_CLOSING;
            }
            continue;
        }
        int stop = pre_command(s, imap_parser_command(s->parser));
        if (s->state != PX_BUSY)
            imap_parser_reset(s->parser);
        if (stop)
            break;
    }
    if (s->state == PX_CLOSING)
        close_when_flushed(s);
}

/* ---- the login (worker thread) ---- */

static void login_failed(px_session *s, const char *why)
{
    unsigned delay = ratelimit_fail(s->srv->rl, s->peer, s->srv->fail_delay_ms);
    log_info("proxy: session=%s peer=%s user=%s login failed reason=\"%s\" delay_ms=%u", s->ids,
             s->peer, s->user[0] ? s->user : "-", why, delay);
    s->delay_ms = delay;
    snprintf(s->reply, sizeof(s->reply), "NO [AUTHENTICATIONFAILED] Authentication failed\r\n");
}

static void login_work(px_session *s)
{
    hv_err err = {0};
    char user[DIR_ADDRESS_MAX + 1];
    if (dir_address_normalize(s->user, user, &err) < 0) {
        login_failed(s, "malformed user name");
        return;
    }
    snprintf(s->user, sizeof(s->user), "%s", user);
    dir *d = px_worker_dir(s->srv, &err);
    dir_account a;
    int rc = d ? dir_account_get(d, user, &a, &err) : -EIO;
    if (rc == -ENOENT) {
        login_failed(s, "no such account");
        return;
    }
    if (rc < 0) {
        log_error("proxy: session=%s directory unavailable reason=\"%s\"", s->ids, err.msg);
        snprintf(s->reply, sizeof(s->reply),
                 "NO [UNAVAILABLE] directory unavailable, try again later\r\n");
        return;
    }
    if (password_verify(s->pass, a.password_hash) != 0) {
        login_failed(s, "wrong password");
        return;
    }
    /* A move freezes an account for well under a second (docs/move.md):
     * hold the login (on this worker, not the loop) until the directory
     * shows where the account lives now, instead of sending the client
     * away to retry. */
    for (int waited = 0; a.state == DIR_STATE_MOVING && waited < PX_MOVING_WAIT_MS; waited += 50) {
        usleep(50000);
        if (dir_account_get(d, user, &a, &err) < 0)
            break;
    }
    if (a.state != DIR_STATE_ACTIVE) {
        dir_account_login_attempt(d, user, (int64_t)time(NULL), NULL);
        const char *why = a.state == DIR_STATE_MOVING      ? "is being moved"
                          : a.state == DIR_STATE_RESTORING ? "is being restored"
                                                           : "is on hold";
        log_info("proxy: session=%s user=%s login refused state=%s", s->ids, user,
                 dir_state_name(a.state));
        snprintf(s->reply, sizeof(s->reply),
                 "NO [UNAVAILABLE] Your mailbox %s; please try again later\r\n", why);
        return;
    }
    ratelimit_fail_clear(s->srv->rl, s->peer);
    if (proxy_route_lookup(d, s->srv->conf, &a, &s->route, &err) < 0) {
        log_error("proxy: session=%s user=%s no route reason=\"%s\"", s->ids, user, err.msg);
        snprintf(s->reply, sizeof(s->reply),
                 "NO [UNAVAILABLE] Your mailbox is unavailable; try again later\r\n");
        return;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    px_conn conn = {.fd = -1, .ssl = NULL};
    if (px_backend_get(s->srv, s->route.address, &conn, &err) < 0) {
        log_error("proxy: session=%s user=%s store=%s address=%s unreachable reason=\"%s\"",
                  s->ids, user, s->route.store, s->route.address, err.msg);
        snprintf(s->reply, sizeof(s->reply),
                 "NO [UNAVAILABLE] Your mailbox is unavailable; try again later\r\n");
        return;
    }
    rc = px_backend_login(&conn, user, s->pass, s->reply, sizeof(s->reply), &s->extra,
                          &s->nextra, &err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (rc < 0) {
        px_conn_close(&conn);
        log_error("proxy: session=%s user=%s store=%s address=%s backend login failed "
                  "reason=\"%s\"", s->ids, user, s->route.store, s->route.address, err.msg);
        /* The store's own refusal when it gave a reason clients know
         * (UNAVAILABLE: not active there), else a generic one: the
         * directory and the store disagree, which is ours to fix. */
        if (rc != -EACCES || !strstr(s->reply, "[UNAVAILABLE]"))
            snprintf(s->reply, sizeof(s->reply),
                     "NO [UNAVAILABLE] Your mailbox is unavailable; try again later\r\n");
        free(s->extra);
        s->extra = NULL;
        s->nextra = 0;
        return;
    }
    long us = (t1.tv_sec - t0.tv_sec) * 1000000L + (t1.tv_nsec - t0.tv_nsec) / 1000;
    log_info("proxy: session=%s user=%s login peer=%s tls=%d store=%s address=%s epoch=%llu "
             "backend_tls=%d backend_us=%ld", s->ids, user, s->peer, s->tls, s->route.store,
             s->route.address, s->route.epoch, conn.ssl != NULL, us);
    s->ok = 1;
    s->be_conn = conn;
}

void px_session_login_job(px_session *s)
{
    s->ok = 0;
    s->delay_ms = 0;
    login_work(s);
    memset(s->pass, 0, sizeof(s->pass));
    event_active(s->done_ev, EV_READ, 0);
}

/* ---- back on the loop ---- */

static void delay_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    done_cb(-1, 0, arg);
}

static void start_relay(px_session *s)
{
    int fd = s->be_conn.fd;
    SSL *ssl = s->be_conn.ssl;
    s->be_conn.fd = -1;
    s->be_conn.ssl = NULL;
    struct timeval none = {0, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &none, sizeof(none));
    evutil_make_socket_nonblocking(fd);
    if (ssl) {
        /* The worker finished the handshake; the TLS session goes on
         * here, the bufferevent owning (and freeing) it and the fd. */
        s->be = bufferevent_openssl_socket_new(s->srv->base, fd, ssl, BUFFEREVENT_SSL_OPEN,
                                               BEV_OPT_CLOSE_ON_FREE);
        /* A store that closes without close_notify has still ended the
         * session: an end, not an error. */
        bufferevent_openssl_set_allow_dirty_shutdown(s->be, 1);
    } else {
        s->be = bufferevent_socket_new(s->srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    }
    bufferevent_setcb(s->be, be_read_cb, be_write_cb, be_event_cb, s);
    bufferevent_setwatermark(s->be, EV_WRITE, PX_LOW_WATER, 0);
    bufferevent_enable(s->be, EV_READ | EV_WRITE);
    /* From now on the store keeps time (autologout); the proxy none. */
    bufferevent_set_timeouts(s->cli, NULL, NULL);
    imap_parser_free(s->parser);
    s->parser = NULL;
    memset(&s->scan, 0, sizeof(s->scan));
    s->state = PX_RELAY;
    out(s, "%s %s", s->tag, s->reply);
    if (s->nextra) {
        px_scan_feed(&s->scan, s->extra, s->nextra);
        evbuffer_add(bufferevent_get_output(s->cli), s->extra, s->nextra);
        free(s->extra);
        s->extra = NULL;
        s->nextra = 0;
    }
    px_route_register(s->srv, s);
    bufferevent_enable(s->cli, EV_READ);
    pass_to_backend(s); /* commands the client pipelined after LOGIN */
}

static void done_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    px_session *s = arg;
    if (s->delay_ms && !s->peer_gone) {
        struct timeval tv = {s->delay_ms / 1000, (s->delay_ms % 1000) * 1000};
        s->delay_ms = 0;
        if (!s->timer_ev)
            s->timer_ev = evtimer_new(s->srv->base, delay_cb, s);
        else
            event_assign(s->timer_ev, s->srv->base, -1, 0, delay_cb, s);
        evtimer_add(s->timer_ev, &tv);
        return;
    }
    if (s->timer_ev) {
        event_free(s->timer_ev);
        s->timer_ev = NULL;
    }
    if (s->peer_gone) {
        s->state = PX_CLOSING;
        session_free(s);
        return;
    }
    if (s->ok) {
        start_relay(s);
        return;
    }
    out(s, "%s %s", s->tag, s->reply);
    s->user[0] = 0;
    s->state = PX_PRE;
    imap_parser_reset(s->parser);
    bufferevent_enable(s->cli, EV_READ);
    process_pre(s);
}

void px_session_kill(px_server *srv, uint64_t id)
{
    px_session *s;
    for (s = srv->sessions; s; s = s->next)
        if (s->id == id)
            break;
    if (!s || s->state != PX_RELAY)
        return;
    s->state = PX_KILLING;
    /* No more commands to the old place; what it is saying now is
     * finished first, so the BYE falls between two responses. */
    bufferevent_disable(s->cli, EV_READ);
    if (px_scan_at_boundary(&s->scan) &&
        evbuffer_get_length(bufferevent_get_input(s->be)) == 0) {
        finish_kill(s);
        return;
    }
    struct timeval tv = {0, PX_KILL_GRACE_MS * 1000};
    if (!s->timer_ev)
        s->timer_ev = evtimer_new(srv->base, linger_cb, s);
    evtimer_add(s->timer_ev, &tv);
}
