/*
 * imap_session.c - one IMAP client, from accept to close.
 *
 * The loop thread reads bytes into the bounded parser; a finished command
 * is checked against the command table (name, allowed states) and handed to
 * a worker; while it runs the session reads nothing more (pipelined
 * commands wait in the socket buffer, which is what bounds a client that
 * sends faster than we answer). The worker writes the whole response into
 * s->out; the loop then sends it and goes on with the next command. IDLE
 * and SASL exchanges read plain lines instead of commands.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "imap/imap_internal.h"
#include "repl/repl_sync.h"
#include "lib/log.h"
#include "lib/tls.h"

void imap_session_accept(imap_server *srv, int fd, int tls);
void imap_session_run(imap_session *s);
void imap_session_job_done(imap_session *s);
void imap_session_idle_wake(imap_session *s);

#define MAX_BAD_COMMANDS 20
#define MAX_IDLE_LINE 1024
#define OUT_LOW_WATER (256u << 10)
#define OUT_HANDOVER (64u << 10)

static void process_input(imap_session *s);
static void session_free(imap_session *s);
static void idle_unlink(imap_session *s);

/* ---- output ---- */

void imap_out(imap_session *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char small[512];
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < (int)sizeof(small)) {
        buf_append(&s->out, small, (size_t)n);
        return;
    }
    buf_reserve(&s->out, (size_t)n);
    va_start(ap, fmt);
    vsnprintf((char *)s->out.data + s->out.len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    s->out.len += (size_t)n;
}

void imap_out_raw(imap_session *s, const void *p, size_t n) { buf_append(&s->out, p, n); }

void imap_out_string(buf *b, const char *p, size_t n)
{
    if (!p) {
        buf_append(b, "NIL", 3);
        return;
    }
    int quotable = n < 1024;
    for (size_t i = 0; quotable && i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\r' || c == '\n' || c == 0 || c >= 0x80)
            quotable = 0;
    }
    if (!quotable) {
        buf_printf(b, "{%zu}\r\n", n);
        buf_append(b, p, n);
        return;
    }
    buf_reserve(b, n + 2);
    buf_put_u8(b, '"');
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '"' || p[i] == '\\')
            buf_put_u8(b, '\\');
        buf_put_u8(b, (uint8_t)p[i]);
    }
    buf_put_u8(b, '"');
}

void imap_out_astring(buf *b, const char *p)
{
    size_t n = strlen(p);
    int atom = n > 0;
    for (size_t i = 0; atom && i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c <= ' ' || c >= 0x7f || strchr("(){%*\"\\]", c))
            atom = 0;
    }
    if (atom && strcasecmp(p, "NIL") != 0)
        buf_append(b, p, n);
    else
        imap_out_string(b, p, n);
}

void imap_tagged(imap_session *s, const char *status, const char *fmt, ...)
{
    if (s->state == IMAP_SELECTED && s->acct && strcmp(status, "BAD") != 0)
        imap_view_sync(s, !s->no_expunge);
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    imap_out(s, "%s %s %s\r\n", s->tag, status, text);
}

/* ---- the view of the selected mailbox ---- */

void imap_view_free(imap_view *v)
{
    free(v->uids);
    free(v->flags);
    memset(v, 0, sizeof(*v));
}

uint32_t imap_view_seq(const imap_view *v, uint32_t uid)
{
    uint32_t lo = 0, hi = v->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (v->uids[mid] < uid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < v->n && v->uids[lo] == uid ? lo + 1 : 0;
}

static void view_reserve(imap_view *v, uint32_t want)
{
    if (want <= v->cap)
        return;
    uint32_t cap = v->cap ? v->cap : 64;
    while (cap < want)
        cap *= 2;
    v->uids = realloc(v->uids, cap * sizeof(uint32_t));
    v->flags = realloc(v->flags, cap * sizeof(uint64_t));
    if (!v->uids || !v->flags)
        abort();
    v->cap = cap;
}

void imap_view_sync(imap_session *s, int allow_expunge)
{
    imap_view *v = &s->view;
    store_account *st = s->acct->st;
    uint32_t n;
    store_mailbox_info mi;
    if (store_msg_count(st, v->mailbox, &n) < 0 || store_mailbox_get(st, v->mailbox, &mi) < 0) {
        /* Deleted (or renamed away and deleted) under us. */
        if (allow_expunge && v->n) {
            if (s->qresync) {
                buf b;
                buf_init(&b);
                imap_uidset_format(&b, v->uids, v->n);
                imap_out(s, "* VANISHED %s\r\n", (char *)b.data);
                buf_free(&b);
            } else {
                for (uint32_t i = v->n; i > 0; i--)
                    imap_out(s, "* %u EXPUNGE\r\n", i);
            }
            v->n = 0;
        }
        return;
    }
    if (mi.highestmodseq == v->modseq)
        return;
    /* Walk the view and the store side by side. */
    uint32_t i = 0, k = 0, w = 0, removed = 0, withheld = 0;
    buf vanished;
    buf_init(&vanished);
    uint32_t *gone = s->qresync && allow_expunge ? malloc((v->n ? v->n : 1) * sizeof(uint32_t)) : NULL;
    size_t ngone = 0;
    store_msg m;
    while (i < v->n) {
        int have = k < n && store_msg_at(st, v->mailbox, k, &m) == 0;
        if (have && m.uid < v->uids[i]) {
            k++; /* expunged and re-added? cannot happen: uids only grow */
            continue;
        }
        if (!have || m.uid > v->uids[i]) {
            /* Gone from the store. */
            if (allow_expunge) {
                if (s->qresync) {
                    gone[ngone++] = v->uids[i];
                } else {
                    imap_out(s, "* %u EXPUNGE\r\n", i + 1 - removed);
                }
                removed++;
                i++;
                continue;
            }
            v->uids[w] = v->uids[i];
            v->flags[w] = v->flags[i];
            withheld++;
            w++;
            i++;
            continue;
        }
        /* Present in both: report flag changes. */
        v->uids[w] = v->uids[i];
        if (m.modseq > v->modseq && m.flags != v->flags[i]) {
            buf f;
            buf_init(&f);
            imap_flags_format(s, &f, m.flags, 0);
            /* By length: an empty flag list is not NUL-terminated. */
            if (s->condstore)
                imap_out(s, "* %u FETCH (UID %u MODSEQ (%llu) FLAGS (%.*s))\r\n", w + 1,
                         m.uid, (unsigned long long)m.modseq, (int)f.len, (char *)f.data);
            else
                imap_out(s, "* %u FETCH (UID %u FLAGS (%.*s))\r\n", w + 1, m.uid, (int)f.len,
                         (char *)f.data);
            buf_free(&f);
        }
        v->flags[w] = m.flags;
        w++;
        i++;
        k++;
    }
    if (ngone) {
        imap_uidset_format(&vanished, gone, ngone);
        imap_out(s, "* VANISHED %s\r\n", (char *)vanished.data);
    }
    free(gone);
    buf_free(&vanished);
    v->n = w;
    uint32_t before = v->n;
    uint32_t last = v->n ? v->uids[v->n - 1] : 0;
    uint32_t from;
    store_msg_seek(st, v->mailbox, last + 1, &from);
    for (uint32_t j = from; j < n; j++) {
        if (store_msg_at(st, v->mailbox, j, &m) < 0)
            break;
        view_reserve(v, v->n + 1);
        v->uids[v->n] = m.uid;
        v->flags[v->n] = m.flags;
        v->n++;
    }
    if (v->n != before || removed)
        imap_out(s, "* %u EXISTS\r\n", v->n);
    /* Expunges held back (FETCH/STORE/SEARCH by number) are still owed:
     * keep the old modseq so the next sync walks again and tells them,
     * or the client would keep numbering messages that are gone. Flag
     * changes already told are not repeated (v->flags has them). */
    if (!withheld)
        v->modseq = mi.highestmodseq;
}

/* ---- session lifecycle (loop thread) ---- */

static void start_job(imap_session *s);

/* Bytes not yet handed to the kernel: after STARTTLS the TLS filter has
 * the plain socket's bufferevent beneath it, with its own buffer. */
static size_t out_pending(imap_session *s) { return tls_bev_unsent(s->bev); }

static void linger_cb(evutil_socket_t fd, short what, void *arg);

/* Frees a closing session once its last words are out. The write callback
 * does not see the buffer under a TLS filter drain, so poll briefly. */
static void close_when_flushed(imap_session *s)
{
    if (s->busy)
        return;
    if (out_pending(s) == 0 || s->peer_gone || ++s->linger_tries > 100) {
        session_free(s);
        return;
    }
    if (!s->delay_ev) {
        struct timeval tv = {0, 20000};
        s->delay_ev = evtimer_new(s->srv->base, linger_cb, s);
        evtimer_add(s->delay_ev, &tv);
    }
}

static void linger_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    imap_session *s = arg;
    event_free(s->delay_ev);
    s->delay_ev = NULL;
    close_when_flushed(s);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    imap_session *s = arg;
    if (s->busy)
        return;
    (void)bev;
    if (s->closing) {
        close_when_flushed(s);
        return;
    }
    if (s->cont)
        start_job(s); /* the client took most of the last slice */
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    process_input(arg);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    imap_session *s = arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
        if (what & BEV_EVENT_TIMEOUT)
            log_info("imap: session=%s user=%s closed reason=timeout", s->id,
                     s->user[0] ? s->user : "-");
        s->closing = 1;
        s->peer_gone = 1;
        if (!s->busy)
            close_when_flushed(s);
    }
}

static void done_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    imap_session_job_done(arg);
}

static void set_callbacks(imap_session *s)
{
    bufferevent_setcb(s->bev, read_cb, write_cb, event_cb, s);
    struct timeval idle = {30 * 60 + 60, 0}; /* RFC 3501: at least 30 minutes */
    bufferevent_set_timeouts(s->bev, &idle, NULL);
    bufferevent_setwatermark(s->bev, EV_WRITE, OUT_LOW_WATER, 0);
    /* libevent writes at most 16 KiB per call by default: a big answer
     * would take hundreds of writev calls. */
    bufferevent_set_max_single_write(s->bev, OUT_LOW_WATER);
    bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

static void out_release(const void *data, size_t len, void *arg)
{
    (void)len;
    (void)arg;
    free((void *)data);
}

static void send_out(imap_session *s)
{
    if (s->out.len >= OUT_HANDOVER &&
        evbuffer_add_reference(bufferevent_get_output(s->bev), s->out.data, s->out.len,
                               out_release, NULL) == 0) {
        /* A big answer (a FETCH slice) is handed over, not copied: the
         * copy into fresh memory was a quarter of the loop thread's time
         * in "FETCH 1:* (FLAGS)". libevent frees it once sent. */
        buf_init(&s->out);
        return;
    }
    if (s->out.len) {
        bufferevent_write(s->bev, s->out.data, s->out.len);
        buf_reset(&s->out);
        if (s->out.cap > 65536)
            buf_free(&s->out); /* idle sessions keep little memory */
    }
}

void imap_session_accept(imap_server *srv, int fd, int tls)
{
    if (srv->nsessions >= srv->lim.max_sessions) {
        static const char bye[] = "* BYE [UNAVAILABLE] too many connections\r\n";
        if (write(fd, bye, sizeof(bye) - 1) < 0) {
        }
        close(fd);
        return;
    }
    /* Answers end in a short piece: without this, Nagle holds it back until
     * the client's delayed ACK (40 ms on every response over 16 KiB). */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    imap_session *s = calloc(1, sizeof(*s));
    static unsigned long long counter;
    s->srv = srv;
    s->fd = fd;
    snprintf(s->id, sizeof(s->id), "%x-%llx", (unsigned)getpid(), ++counter);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    snprintf(s->peer, sizeof(s->peer), "?");
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *in = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &in->sin_addr, s->peer, sizeof(s->peer));
            s->is_loopback = (ntohl(in->sin_addr.s_addr) >> 24) == 127;
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &in6->sin6_addr, s->peer, sizeof(s->peer));
            s->is_loopback = IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
        } else if (ss.ss_family == AF_UNIX) {
            snprintf(s->peer, sizeof(s->peer), "local");
            s->is_loopback = 1;
        }
    }
    if (tls) {
        SSL *ssl = SSL_new(srv->ssl);
        s->bev = bufferevent_openssl_socket_new(srv->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                BEV_OPT_CLOSE_ON_FREE);
        s->tls = 1;
    } else {
        s->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    }
    s->done_ev = event_new(srv->base, -1, 0, done_cb, s);
    imap_parser_limits lim = {.max_line = srv->lim.max_line_preauth, .max_literal = 65536,
                              .max_total = 65536};
    s->parser = imap_parser_new(&lim);
    buf_init(&s->out);
    buf_init(&s->line);
    srv->nsessions++;
    set_callbacks(s);
    log_info("imap: session=%s connect peer=%s tls=%d", s->id, s->peer, tls);
    imap_out(s, "* OK [CAPABILITY %s] %s Haven IMAP ready\r\n", imap_capabilities(s),
             srv->hostname);
    send_out(s);
}

static void session_free(imap_session *s)
{
    log_info("imap: session=%s user=%s disconnect", s->id, s->user[0] ? s->user : "-");
    if (s->acct)
        idle_unlink(s);
    if (s->cont_state && s->cont_free)
        s->cont_free(s->cont_state);
    if (s->delay_ev)
        event_free(s->delay_ev);
    imap_account_put(s->srv, s->acct);
    imap_view_free(&s->view);
    if (s->tls) {
        /* Say goodbye properly (close_notify), or TLS clients report a
         * truncation attack instead of our last line. */
        SSL *ssl = bufferevent_openssl_get_ssl(s->bev);
        if (ssl)
            SSL_shutdown(ssl);
    }
    bufferevent_free(s->bev);
    event_free(s->done_ev);
    imap_parser_free(s->parser);
    buf_free(&s->out);
    buf_free(&s->line);
    s->srv->nsessions--;
    free(s);
}

static void start_job(imap_session *s)
{
    s->busy = 1;
    bufferevent_disable(s->bev, EV_READ);
    imap_server_submit(s->srv, s);
}

static void idle_unlink(imap_session *s)
{
    if (!s->in_idlers)
        return;
    imap_session **pp = &s->acct->idlers;
    while (*pp && *pp != s)
        pp = &(*pp)->idle_next;
    if (*pp)
        *pp = s->idle_next;
    s->idle_next = NULL;
    s->in_idlers = 0;
}

void imap_session_idle_wake(imap_session *s)
{
    if (s->busy || s->closing || s->mode != IMAP_MODE_IDLE)
        return;
    s->cmd = NULL;
    s->line.len = 0;
    s->idle_wake = 1;
    start_job(s);
}

/* Reads one line for IDLE/SASL; returns 1 with s->line filled (no CRLF),
 * 0 when incomplete, -1 when the line is too long. */
static int read_line(imap_session *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, NULL, EVBUFFER_EOL_CRLF);
    if (p.pos < 0)
        return evbuffer_get_length(in) > MAX_IDLE_LINE ? -1 : 0;
    if ((size_t)p.pos > 65536)
        return -1;
    buf_reset(&s->line);
    buf_reserve(&s->line, (size_t)p.pos + 1);
    evbuffer_remove(in, s->line.data, (size_t)p.pos);
    s->line.len = (size_t)p.pos;
    s->line.data[s->line.len] = 0;
    char eol[2];
    evbuffer_remove(in, eol, 1);
    if (eol[0] == '\r')
        evbuffer_remove(in, eol, 1);
    return 1;
}

static void process_input(imap_session *s)
{
    while (!s->busy && !s->closing) {
        struct evbuffer *in = bufferevent_get_input(s->bev);
        size_t avail = evbuffer_get_length(in);
        if (avail == 0)
            break;
        if (s->mode == IMAP_MODE_IDLE || s->mode == IMAP_MODE_SASL) {
            int r = read_line(s);
            if (r == 0)
                break;
            if (r < 0) {
                imap_out(s, "* BYE line too long\r\n");
                send_out(s);
                s->closing = 1;
                break;
            }
            if (s->mode == IMAP_MODE_IDLE)
                idle_unlink(s);
            s->cmd = NULL;
            s->idle_wake = 0;
            start_job(s);
            break;
        }
        size_t chunk = avail > 65536 ? 65536 : avail;
        const char *p = (const char *)evbuffer_pullup(in, (ssize_t)chunk);
        size_t used = 0;
        enum imap_parse_result r = imap_parser_feed(s->parser, p, chunk, &used);
        evbuffer_drain(in, used);
        if (r == IMAP_PARSE_MORE)
            continue;
        if (r == IMAP_PARSE_CONTINUE) {
            size_t want = imap_parser_pending_literal(s->parser);
            if (want > s->srv->lim.max_message + 65536) {
                const char *tag = imap_parser_tag(s->parser);
                imap_out(s, "%s NO [TOOBIG] literal of %zu bytes is over the limit\r\n",
                         tag ? tag : "*", want);
                imap_parser_refuse_literal(s->parser);
                imap_parser_reset(s->parser);
            } else {
                imap_out(s, "+ OK\r\n");
            }
            send_out(s);
            continue;
        }
        if (r == IMAP_PARSE_ERROR) {
            const char *tag = NULL;
            const char *why = imap_parser_error(s->parser, &tag);
            int toobig = imap_parser_error_too_big(s->parser);
            imap_out(s, "%s BAD %s%s\r\n", tag ? tag : "*", toobig ? "[TOOBIG] " : "", why);
            int fatal = imap_parser_error_fatal(s->parser);
            imap_parser_reset(s->parser);
            if (fatal || ++s->bad_count > MAX_BAD_COMMANDS) {
                /* Say which: after a {n+} too large to count, the next
                 * command cannot be found, however few errors came before. */
                imap_out(s, "* BYE %s\r\n",
                         fatal ? "literal too large to skip, closing" : "too many bad commands");
                s->closing = 1;
            }
            send_out(s);
            continue;
        }
        /* IMAP_PARSE_DONE */
        const imap_command *c = imap_parser_command(s->parser);
        const imap_cmd_def *def = imap_cmd_find(c->name);
        snprintf(s->tag, sizeof(s->tag), "%s", c->tag);
        if (!def) {
            imap_out(s, "%s BAD unknown command %.40s\r\n", c->tag, c->name);
            imap_parser_reset(s->parser);
            if (++s->bad_count > MAX_BAD_COMMANDS) {
                imap_out(s, "* BYE too many bad commands\r\n");
                s->closing = 1;
            }
            send_out(s);
            continue;
        }
        if (!(def->states & ST(s->state))) {
            imap_out(s, "%s BAD %s is not allowed %s\r\n", c->tag, def->name,
                     s->state == IMAP_NOT_AUTH ? "before login" : "in this state");
            imap_parser_reset(s->parser);
            send_out(s);
            continue;
        }
        char fence_why[256];
        if (s->acct && store_account_fenced(s->acct->st, fence_why, sizeof(fence_why))) {
            /* The account is being moved or has moved to another store:
             * end the session so the client reconnects (through the proxy,
             * to wherever the account lives once the move commits). */
            log_info("imap: session=%s user=%s closed reason=\"%s\"", s->id, s->user, fence_why);
            imap_out(s, "* BYE [UNAVAILABLE] %s; please reconnect\r\n", fence_why);
            imap_parser_reset(s->parser);
            s->closing = 1;
            send_out(s);
            break;
        }
        s->bad_count = 0;
        s->cmd = c;
        s->def = def;
        start_job(s);
    }
    if (s->closing && !s->busy)
        close_when_flushed(s);
}

/* In sync replication mode, a command that wrote is answered only once
 * enough replicas hold its changes (repl_sync_wait). If they do not in
 * time and the store refuses unconfirmed writes, the tagged OK already in
 * the output becomes NO [UNAVAILABLE]: the change is kept on this server
 * (it is durable here, and replicas get it when they return), but the
 * client is not told it is safe. Worker thread, account mutex not held. */
static void await_replicas(imap_session *s, uint64_t modseq)
{
    struct repl_sync *rs = NULL;
    hv_err err = {0};
    int degraded = 0;
    int rc = imap_worker_repl_sync(s->srv, &rs, &err);
    if (rc == 0 && !rs)
        return; /* async: nothing to wait for */
    if (rc == 0)
        rc = repl_sync_wait(rs, s->acct->address, modseq, &degraded, &err);
    if (rc == 0)
        return;
    log_warn("imap: session=%s account=%s modseq=%llu not confirmed by replicas: %s", s->id,
             s->acct->address, (unsigned long long)modseq, err.msg);
    size_t tl = strlen(s->tag);
    buf *o = &s->out;
    /* The tagged reply is the last line of the output. */
    size_t i = o->len >= 2 ? o->len - 2 : 0;
    while (i > 0 && !(o->data[i - 1] == '\n'))
        i--;
    if (o->len - i > tl + 4 && memcmp(o->data + i, s->tag, tl) == 0 &&
        memcmp(o->data + i + tl, " OK", 3) == 0) {
        o->len = i;
        imap_out(s, "%s NO [UNAVAILABLE] done on this server, but not confirmed by its "
                    "replicas: %s\r\n", s->tag, err.msg);
    }
}

/* Worker thread. */
void imap_session_run(imap_session *s)
{
    imap_account *a = s->acct;
    uint64_t before = 0;
    if (a) {
        pthread_mutex_lock(&a->mu);
        before = store_highest_modseq(a->st);
    }
    s->after = AFTER_NONE;
    s->no_expunge = 0;
    if (s->cont) {
        s->cont(s);
    } else if (s->cmd) {
        s->def->fn(s, s->cmd);
    } else if (s->mode == IMAP_MODE_IDLE && s->idle_wake) {
        imap_view_sync(s, 1);
        s->after = AFTER_IDLE;
    } else if (s->mode == IMAP_MODE_IDLE) {
        imap_idle_done(s);
    } else if (s->mode == IMAP_MODE_SASL) {
        imap_sasl_line(s, (const char *)s->line.data);
    }
    uint64_t after = a ? store_highest_modseq(a->st) : 0;
    int changed = a && after != before;
    if (a)
        pthread_mutex_unlock(&a->mu);
    if (changed)
        await_replicas(s, after);
    /* A command that changed the account wakes the idlers of other
     * sessions in this process (other processes hear it via inotify);
     * read-only commands wake nobody. */
    if (changed && s->acct->idlers)
        imap_account_changed(s->acct);
    event_active(s->done_ev, EV_READ, 0);
}

static void start_tls(imap_session *s)
{
    /* Anything the client sent after STARTTLS was sent in clear text and
     * must not be taken as if it came over TLS (command injection). */
    struct evbuffer *in = bufferevent_get_input(s->bev);
    evbuffer_drain(in, evbuffer_get_length(in));
    SSL *ssl = SSL_new(s->srv->ssl);
    struct bufferevent *tls = bufferevent_openssl_filter_new(
        s->srv->base, s->bev, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
    s->bev = tls;
    s->tls = 1;
    set_callbacks(s);
}

/* Loop thread: the worker finished (called through done_ev). */
static void delay_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    imap_session *s = arg;
    event_free(s->delay_ev);
    s->delay_ev = NULL;
    imap_session_job_done(s);
}

void imap_session_job_done(imap_session *s)
{
    if (!s->busy)
        return;
    if (s->delay_ms) {
        struct timeval tv = {s->delay_ms / 1000, (s->delay_ms % 1000) * 1000};
        s->delay_ms = 0;
        s->delay_ev = evtimer_new(s->srv->base, delay_cb, s);
        evtimer_add(s->delay_ev, &tv);
        return;
    }
    send_out(s);
    s->busy = 0;
    if (s->cont) {
        /* More to come: write_cb resumes it when the output drains. */
        if (!s->closing &&
            evbuffer_get_length(bufferevent_get_output(s->bev)) <= OUT_LOW_WATER)
            start_job(s);
        else if (s->closing)
            process_input(s);
        return;
    }
    if (s->cmd)
        imap_parser_reset(s->parser);
    s->cmd = NULL;
    if (s->closing) {
        process_input(s);
        return;
    }
    switch (s->after) {
    case AFTER_STARTTLS:
        bufferevent_flush(s->bev, EV_WRITE, BEV_FLUSH);
        start_tls(s);
        break;
    case AFTER_CLOSE:
        s->closing = 1;
        break;
    case AFTER_IDLE:
        s->mode = IMAP_MODE_IDLE;
        if (!s->in_idlers) {
            s->idle_next = s->acct->idlers;
            s->acct->idlers = s;
            s->in_idlers = 1;
        }
        break;
    case AFTER_SASL:
        s->mode = IMAP_MODE_SASL;
        break;
    case AFTER_NONE:
        s->mode = IMAP_MODE_COMMAND;
        break;
    }
    if (s->closing) {
        close_when_flushed(s);
        return;
    }
    bufferevent_enable(s->bev, EV_READ);
    process_input(s);
}
