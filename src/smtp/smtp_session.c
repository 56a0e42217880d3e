/*
 * smtp_session.c - one SMTP, submission or LMTP client, from accept to
 * close.
 *
 * The loop thread cuts the input into command lines (smtp_line_*), parses
 * them (smtp_parse_command) and checks each against the command table
 * (verb, the states it is allowed in). Commands that need nothing but the
 * session are answered at once; RCPT (a directory lookup), AUTH (a
 * password hash) and the end of a message (the queue's fsync, or LMTP's
 * store writes) become a job on a worker, and the session reads nothing
 * more until it is done. Pipelined commands therefore wait in the socket
 * buffer and are answered in order; replies collect in s->out and go out
 * together when the input runs dry.
 *
 * Message data is read by smtp_data_* (DATA: dot-stuffing and the final
 * ".", BDAT: counted bytes) straight from libevent's buffers into the
 * message buffer, behind the header lines we prepend.
 */
#include <arpa/inet.h>
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
#include <time.h>
#include <unistd.h>

#include "dir/password.h"
#include "lib/log.h"
#include "lib/tls.h"
#include "smtp/smtp_internal.h"

/* Syntax and sequence errors one session may make before we hang up
 * (refused recipients do not count: a sender may well guess wrong). */
#define MAX_ERRORS 20
/* RFC 5321 4.5.3.2.7: the server waits at least 5 minutes for a command. */
#define IDLE_TIMEOUT_S 300

static void process_input(smtp_session *s);
static void session_free(smtp_session *s);
static void start_job(smtp_session *s);

/* ---- output ---- */

void smtp_out(smtp_session *s, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line) - 2, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof(line) - 3)
        n = (int)sizeof(line) - 3;
    line[n++] = '\r';
    line[n++] = '\n';
    buf_append(&s->out, line, (size_t)n);
}

static void send_out(smtp_session *s)
{
    if (s->out.len && !s->peer_gone) {
        size_t sent = 0;
        /* Plain and nothing queued: straight to the socket. Through the
         * bufferevent each reply would cost a write event added, woken
         * and removed (two epoll_ctl) besides the write itself. */
        if (!s->tls && evbuffer_get_length(bufferevent_get_output(s->bev)) == 0) {
            ssize_t n = send(s->fd, s->out.data, s->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n > 0)
                sent = (size_t)n;
        }
        /* The rest (or an error, which the bufferevent then reports).
         * Plain sessions enable its writing only now: enabling adds the
         * write event at once, even with nothing to write. */
        if (sent < s->out.len) {
            if (!s->tls)
                bufferevent_enable(s->bev, EV_WRITE);
            bufferevent_write(s->bev, s->out.data + sent, s->out.len - sent);
        }
    }
    buf_reset(&s->out);
    if (s->out.cap > 65536)
        buf_free(&s->out);
}

static const char *svc(const smtp_session *s) { return s->port == SMTP_PORT_LMTP ? "lmtp" : "smtp"; }

static void note_error(smtp_session *s)
{
    if (++s->bad >= MAX_ERRORS) {
        log_info("%s: session=%s peer=%s closed reason=\"too many errors\"", svc(s), s->id,
                 s->peer);
        smtp_out(s, "421 4.7.0 %s Too many errors, closing connection", s->srv->hostname);
        s->closing = 1;
    }
}

/* ---- message buffers ----
 *
 * A message is collected in one buffer that grows with it. A fresh one per
 * message meant growing it by doubling (copying it over and over) and
 * faulting in its pages anew: for 100 KiB messages that was most of what
 * the smtp process spent. Buffers are therefore given back to a small
 * pool when a transaction ends (on whichever thread ends it) and taken
 * from it when the next message begins. */
#define MSG_POOL 64
#define MSG_POOL_KEEP (1u << 20) /* bigger buffers are freed, not kept */
#define MSG_FIRST (64u << 10)

static pthread_mutex_t msg_pool_mu = PTHREAD_MUTEX_INITIALIZER;
static buf msg_pool[MSG_POOL];
static size_t msg_pool_n;

static void msg_buf_take(buf *b, size_t want)
{
    buf_free(b);
    pthread_mutex_lock(&msg_pool_mu);
    if (msg_pool_n)
        *b = msg_pool[--msg_pool_n];
    pthread_mutex_unlock(&msg_pool_mu);
    buf_reset(b);
    buf_reserve(b, want);
}

static void msg_buf_give(buf *b)
{
    if (b->cap && b->cap <= MSG_POOL_KEEP) {
        pthread_mutex_lock(&msg_pool_mu);
        if (msg_pool_n < MSG_POOL) {
            buf_reset(b);
            msg_pool[msg_pool_n++] = *b;
            buf_init(b);
        }
        pthread_mutex_unlock(&msg_pool_mu);
    }
    buf_free(b);
}

/* ---- transaction ---- */

void smtp_session_reset_tx(smtp_session *s)
{
    for (size_t i = 0; i < s->nrcpts; i++)
        free(s->rcpts[i].orcpt);
    s->nrcpts = 0;
    if (s->caprcpts > 16) {
        free(s->rcpts);
        s->rcpts = NULL;
        s->caprcpts = 0;
    }
    msg_buf_give(&s->msg);
    s->mail_from[0] = 0;
    s->mail_size = 0;
    s->body_8bit = s->smtputf8 = s->ret_hdrs = 0;
    s->envid[0] = 0;
    s->data_started = 0;
    s->bdat_left = 0;
    s->bdat_last = 0;
    s->bdat_reply[0] = 0;
    if (s->state != SS_INIT)
        s->state = SS_READY;
}

smtp_rcpt *smtp_session_add_rcpt(smtp_session *s)
{
    if (s->nrcpts == s->caprcpts) {
        size_t cap = s->caprcpts ? s->caprcpts * 2 : 4;
        smtp_rcpt *r = realloc(s->rcpts, cap * sizeof(*r));
        if (!r)
            abort();
        s->rcpts = r;
        s->caprcpts = cap;
    }
    smtp_rcpt *r = &s->rcpts[s->nrcpts++];
    memset(r, 0, sizeof(*r));
    return r;
}

/* ---- session lifecycle (loop thread) ---- */

static size_t out_pending(smtp_session *s) { return tls_bev_unsent(s->bev); }

static void linger_cb(evutil_socket_t fd, short what, void *arg);

/* Frees a closing session once its last words are out (polling briefly:
 * the write callback does not see the buffer under a TLS filter drain). */
static void close_when_flushed(smtp_session *s)
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
    smtp_session *s = arg;
    event_free(s->delay_ev);
    s->delay_ev = NULL;
    close_when_flushed(s);
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    process_input(arg);
}

/* ---- input of plain sessions ----
 *
 * libevent 2.1 reads at most 4096 bytes per call, each after an
 * ioctl(FIONREAD): a 100 KiB message cost some fifty system calls and as
 * many trips through the loop. Plain sessions therefore read their socket
 * themselves, up to READ_CHUNK at once, into the bufferevent's input
 * buffer (which process_input takes from, as for TLS sessions, whose
 * reading stays with the bufferevent). The event stays added for the
 * whole session, also while a job runs (no epoll_ctl per job): what
 * arrives meanwhile waits in the buffer, and past INPUT_HELD_MAX reading
 * stops until the job is done. */
#define READ_CHUNK 65536
#define INPUT_HELD_MAX (1u << 20)

static void on_timeout(smtp_session *s)
{
    log_info("%s: session=%s peer=%s closed reason=timeout", svc(s), s->id, s->peer);
    if (!s->busy) {
        smtp_out(s, "421 4.4.2 %s Timeout, closing connection", s->srv->hostname);
        send_out(s);
    }
    s->closing = 1;
    if (!s->busy)
        close_when_flushed(s);
}

static void raw_read_cb(evutil_socket_t fd, short what, void *arg)
{
    smtp_session *s = arg;
    if (what & EV_TIMEOUT) {
        if (!s->busy) /* a job's own time is not the client's idleness */
            on_timeout(s);
        return;
    }
    struct evbuffer *in = bufferevent_get_input(s->bev);
    struct evbuffer_iovec v;
    ssize_t n = -1;
    int rerr = ENOMEM;
    /* The bufferevent keeps the end of its input frozen but for its own
     * reads: thaw it for ours. */
    evbuffer_unfreeze(in, 0);
    if (evbuffer_reserve_space(in, READ_CHUNK, &v, 1) == 1) {
        n = read(fd, v.iov_base, v.iov_len);
        rerr = n < 0 ? errno : 0;
        if (n > 0) {
            v.iov_len = (size_t)n;
            evbuffer_commit_space(in, &v, 1);
        }
    }
    evbuffer_freeze(in, 0);
    if (n < 0 && (rerr == EAGAIN || rerr == EWOULDBLOCK || rerr == EINTR))
        return;
    if (n <= 0) { /* end of input, or an error: the peer is gone */
        event_del(s->rd_ev);
        s->peer_gone = 1;
        s->closing = 1;
        if (!s->busy)
            close_when_flushed(s);
        return;
    }
    if (s->busy) {
        if (evbuffer_get_length(in) > INPUT_HELD_MAX)
            event_del(s->rd_ev); /* added again when the job is done */
        return;
    }
    process_input(s);
}

static void raw_read_add(smtp_session *s)
{
    struct timeval t = {IDLE_TIMEOUT_S, 0};
    event_add(s->rd_ev, &t);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    smtp_session *s = arg;
    if (s->closing && !s->busy)
        close_when_flushed(s);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    smtp_session *s = arg;
    if (what & BEV_EVENT_TIMEOUT) {
        on_timeout(s);
    } else if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        if (s->rd_ev)
            event_del(s->rd_ev);
        s->peer_gone = 1;
        s->closing = 1;
        if (!s->busy)
            close_when_flushed(s);
    }
}

static void done_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    smtp_session_job_done(arg);
}

static void set_callbacks(smtp_session *s)
{
    bufferevent_setcb(s->bev, read_cb, write_cb, event_cb, s);
    struct timeval t = {IDLE_TIMEOUT_S, 0};
    bufferevent_set_timeouts(s->bev, &t, &t);
    /* Plain sessions read through rd_ev (raw_read_cb), and write mostly
     * without the bufferevent (send_out). */
    if (s->rd_ev)
        raw_read_add(s);
    else
        bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

static void peer_name(int fd, const struct sockaddr *sa, int salen, char *out, size_t len,
                      int *loopback)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    snprintf(out, len, "?");
    *loopback = 0;
    if (sa && salen > 0 && (size_t)salen <= sizeof(ss))
        memcpy(&ss, sa, (size_t)salen);
    else if (getpeername(fd, (struct sockaddr *)&ss, &sl) != 0)
        return;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &in->sin_addr, out, (socklen_t)len);
        *loopback = (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, out, (socklen_t)len);
        *loopback = IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
    } else if (ss.ss_family == AF_UNIX) {
        snprintf(out, len, "local");
        *loopback = 1;
    }
}

static void refuse_early(int fd, enum smtp_port port, const char *line)
{
    /* Plain text only: on 465 the client expects a TLS handshake, and a
     * closed connection says enough. */
    if (port != SMTP_PORT_SUBMISSIONS && write(fd, line, strlen(line)) < 0) {
    }
    close(fd);
}

void smtp_session_accept(smtp_server *srv, int fd, const struct sockaddr *sa, int salen,
                         enum smtp_port port)
{
    char peer[64];
    int loopback;
    peer_name(fd, sa, salen, peer, sizeof(peer), &loopback);
    const char *name = port == SMTP_PORT_LMTP ? "lmtp" : "smtp";
    if (srv->nsessions >= srv->max_sessions) {
        log_warn("%s: peer=%s refused reason=\"too many sessions\" sessions=%u", name, peer,
                 srv->nsessions);
        refuse_early(fd, port, "421 4.3.2 Too many connections, try again later\r\n");
        return;
    }
    /* LMTP clients are our own queue runners (and trusted MTAs), all from
     * one address: only the process-wide limit applies to them. */
    int counted = 0;
    if (port != SMTP_PORT_LMTP && srv->client_max_sessions) {
        if (ratelimit_session_open(srv->rl, peer, srv->client_max_sessions) < 0) {
            log_warn("%s: peer=%s refused reason=\"too many sessions from this address\" "
                     "limit=%u",
                     name, peer, srv->client_max_sessions);
            refuse_early(fd, port, "421 4.7.0 Too many connections from your address, try "
                                   "again later\r\n");
            return;
        }
        counted = 1;
    }
    /* TCP_NODELAY comes from the listening socket (smtp_server.c). */
    smtp_session *s = calloc(1, sizeof(*s));
    if (!s)
        abort();
    static unsigned long long counter;
    s->srv = srv;
    s->fd = fd;
    s->port = port;
    s->counted = counted;
    s->is_loopback = loopback;
    snprintf(s->peer, sizeof(s->peer), "%s", peer);
    snprintf(s->id, sizeof(s->id), "%x-%llx", (unsigned)getpid(), ++counter);
    if (port == SMTP_PORT_SUBMISSIONS) {
        SSL *ssl = SSL_new(srv->ssl);
        s->bev = bufferevent_openssl_socket_new(srv->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                BEV_OPT_CLOSE_ON_FREE);
        s->tls = 1;
    } else {
        s->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
        s->rd_ev = event_new(srv->base, fd, EV_READ | EV_PERSIST, raw_read_cb, s);
    }
    s->done_ev = event_new(srv->base, -1, 0, done_cb, s);
    smtp_line_init(&s->lr, SMTP_LINE_MAX_ANY);
    buf_init(&s->out);
    buf_init(&s->msg);
    srv->nsessions++;
    set_callbacks(s);
    log_info("%s: session=%s connect peer=%s port=%s", name, s->id, s->peer,
             port == SMTP_PORT_MX           ? "mx"
             : port == SMTP_PORT_SUBMISSION ? "submission"
             : port == SMTP_PORT_SUBMISSIONS ? "submissions"
                                             : "lmtp");
    smtp_out(s, "220 %s %s Haven", srv->hostname, port == SMTP_PORT_LMTP ? "LMTP" : "ESMTP");
    send_out(s);
}

static void session_free(smtp_session *s)
{
    log_info("%s: session=%s peer=%s disconnect messages=%u", svc(s), s->id, s->peer,
             s->messages);
    smtp_session_reset_tx(s);
    free(s->rcpts);
    if (s->sasl_plain) {
        memset(s->sasl_plain, 0, s->sasl_plain_len);
        free(s->sasl_plain);
    }
    if (s->delay_ev)
        event_free(s->delay_ev);
    if (s->rd_ev)
        event_free(s->rd_ev); /* before the bufferevent closes the fd */
    if (s->tls) {
        SSL *ssl = bufferevent_openssl_get_ssl(s->bev);
        if (ssl)
            SSL_shutdown(ssl);
    }
    bufferevent_free(s->bev);
    event_free(s->done_ev);
    smtp_line_free(&s->lr);
    buf_free(&s->out);
    if (s->counted)
        ratelimit_session_close(s->srv->rl, s->peer);
    s->srv->nsessions--;
    free(s);
}

static void start_job(smtp_session *s)
{
    /* Replies to earlier pipelined commands go out meanwhile; LMTP's client
     * (our queue) waits for the whole group anyway, so there they go out
     * together after the job, in one write and one read for the client. */
    if (s->port != SMTP_PORT_LMTP)
        send_out(s);
    s->busy = 1;
    if (!s->rd_ev) /* plain sessions keep reading into the buffer (raw_read_cb) */
        bufferevent_disable(s->bev, EV_READ);
    smtp_server_submit(s->srv, s);
}

static void start_tls(smtp_session *s)
{
    /* Anything the client sent after STARTTLS came in clear text and must
     * not be taken as if it came over TLS (command injection). */
    if (s->rd_ev) {
        /* From here on the TLS filter reads and writes, through the
         * bufferevent. */
        event_free(s->rd_ev);
        s->rd_ev = NULL;
        bufferevent_enable(s->bev, EV_READ | EV_WRITE);
    }
    struct evbuffer *in = bufferevent_get_input(s->bev);
    evbuffer_drain(in, evbuffer_get_length(in));
    SSL *ssl = SSL_new(s->srv->ssl);
    struct bufferevent *tls = bufferevent_openssl_filter_new(
        s->srv->base, s->bev, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
    s->bev = tls;
    s->tls = 1;
    set_callbacks(s);
    /* RFC 3207 4.2: forget everything learnt before, the client starts
     * again with EHLO. */
    smtp_session_reset_tx(s);
    s->state = SS_INIT;
    s->helo[0] = 0;
    s->esmtp = 0;
}

static void job_submit(smtp_session *s);

/* Worker thread. */
void smtp_session_run(smtp_session *s)
{
    /* job_submit ends the job itself (submit_done, maybe on another
     * thread, maybe before it returns): s must not be touched after it. */
    int ends_itself = s->job == job_submit;
    s->job(s);
    if (!ends_itself)
        event_active(s->done_ev, EV_READ, 0);
}

static void delay_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    smtp_session *s = arg;
    event_free(s->delay_ev);
    s->delay_ev = NULL;
    smtp_session_job_done(s);
}

/* Loop thread: the worker finished (through done_ev). */
void smtp_session_job_done(smtp_session *s)
{
    if (!s->busy)
        return;
    if (s->delay_ms) {
        /* A failed AUTH is answered late; the worker is already free. */
        struct timeval tv = {s->delay_ms / 1000, (s->delay_ms % 1000) * 1000};
        s->delay_ms = 0;
        s->delay_ev = evtimer_new(s->srv->base, delay_cb, s);
        evtimer_add(s->delay_ev, &tv);
        return;
    }
    s->busy = 0;
    s->job = NULL;
    if (s->after == SA_CLOSE)
        s->closing = 1;
    s->after = SA_NONE;
    if (s->closing) {
        send_out(s);
        close_when_flushed(s);
        return;
    }
    if (!s->rd_ev)
        bufferevent_enable(s->bev, EV_READ);
    else if (!event_pending(s->rd_ev, EV_READ, NULL) && !s->peer_gone)
        raw_read_add(s); /* reading stopped while the job ran (INPUT_HELD_MAX) */
    process_input(s);
}

/* ---- the Received: header (RFC 5321 4.4) ---- */

static void rfc5322_date(char *out, size_t len, time_t t)
{
    struct tm tm;
    localtime_r(&t, &tm);
    static const char *days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *mons[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    long off = tm.tm_gmtoff / 60;
    char sign = off < 0 ? '-' : '+';
    if (off < 0)
        off = -off;
    snprintf(out, len, "%s, %d %s %d %02d:%02d:%02d %c%02ld%02ld", days[tm.tm_wday], tm.tm_mday,
             mons[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec, sign,
             off / 60, off % 60);
}

static void prepend_received(smtp_session *s)
{
    char date[64];
    rfc5322_date(date, sizeof(date), time(NULL));
    /* RFC 3848 protocol names: ESMTP, ESMTPS, ESMTPA, ESMTPSA; RFC 6531
     * UTF8SMTP... for SMTPUTF8 transactions. */
    char proto[16];
    snprintf(proto, sizeof(proto), "%s%s%s%s", s->smtputf8 ? "UTF8" : "",
             s->esmtp ? (s->smtputf8 ? "SMTP" : "ESMTP") : "SMTP", s->tls ? "S" : "",
             s->user[0] ? "A" : "");
    int v6 = strchr(s->peer, ':') != NULL;
    buf_printf(&s->msg,
               "Received: from %s ([%s%s])\r\n\tby %s (Haven) with %s id %s.%u", s->helo,
               v6 ? "IPv6:" : "", s->peer, s->srv->hostname, proto, s->id, s->messages + 1);
    if (s->nrcpts == 1)
        buf_printf(&s->msg, "\r\n\tfor <%s>", s->rcpts[0].addr);
    buf_printf(&s->msg, "; %s\r\n", date);
}

/* ---- the end of a message ---- */

static void job_submit(smtp_session *s);

static void message_done(smtp_session *s)
{
    s->mode = SM_COMMAND;
    if (s->dr.errors) {
        const char *r = smtp_data_error_reply(s->dr.errors);
        log_info("%s: session=%s peer=%s from=<%s> rcpts=%zu size=%llu refused reason=\"%s\"",
                 svc(s), s->id, s->peer, s->mail_from, s->nrcpts,
                 (unsigned long long)s->dr.size, r + 10);
        if (s->port == SMTP_PORT_LMTP) {
            /* RFC 2033 4.2: one reply per recipient, also for a refusal. */
            for (size_t i = 0; i < s->nrcpts; i++)
                smtp_out(s, "%s", r);
        } else {
            smtp_out(s, "%s", r);
        }
        smtp_session_reset_tx(s);
        return;
    }
    clock_gettime(CLOCK_MONOTONIC, &s->t_end);
    s->job = s->port == SMTP_PORT_LMTP ? lmtp_job_deliver : job_submit;
    start_job(s);
}

/* The queue's syncing thread (or the worker, on failure): the message is
 * durable (rc 0) or not; the job ends here. */
static void submit_done(void *ctx, int rc, const char *id, const hv_err *err)
{
    smtp_session *s = ctx;
    if (rc < 0) {
        log_error("smtp: session=%s peer=%s from=<%s> rcpts=%zu size=%zu queue failed "
                  "reason=\"%s\"",
                  s->id, s->peer, s->mail_from, s->nrcpts, s->msg.len, err ? err->msg : "");
        smtp_out(s, "451 4.3.0 Queue write failed; try again later");
    } else {
        s->messages++;
        log_info("smtp: session=%s peer=%s from=<%s> rcpts=%zu size=%zu queue_id=%s%s%s "
                 "queued",
                 s->id, s->peer, s->mail_from, s->nrcpts, s->msg.len, id,
                 s->user[0] ? " user=" : "", s->user);
        smtp_out(s, "250 2.0.0 Ok: queued as %s", id);
    }
    smtp_session_reset_tx(s);
    event_active(s->done_ev, EV_READ, 0);
}

/* Worker: the message into the queue, durable before the 250. The worker
 * only writes it: the queue's syncing thread calls submit_done once the
 * record is durable, so no worker waits for the disk. */
static void job_submit(smtp_session *s)
{
    queue_rcpt_in *ri = calloc(s->nrcpts, sizeof(*ri));
    if (!ri)
        abort();
    for (size_t i = 0; i < s->nrcpts; i++) {
        ri[i].address = s->rcpts[i].addr;
        ri[i].account = s->rcpts[i].account[0] ? s->rcpts[i].account : NULL;
        ri[i].notify = s->rcpts[i].notify;
        ri[i].orcpt = s->rcpts[i].orcpt;
    }
    queue_envelope env = {
        .mail_from = s->mail_from,
        .rcpts = ri,
        .nrcpts = s->nrcpts,
        .envid = s->envid[0] ? s->envid : NULL,
        .ret_headers_only = s->ret_hdrs,
        .body_8bit = s->body_8bit,
        .smtputf8 = s->smtputf8,
        .client_addr = s->peer,
        .client_helo = s->helo,
        .auth_user = s->user[0] ? s->user : NULL,
    };
    hv_err err = {0};
    int rc = queue_submit_async(s->srv->q, &env,
                                s->msg.data ? s->msg.data : (const uint8_t *)"", s->msg.len,
                                submit_done, s, &err);
    free(ri);
    if (rc < 0) /* not written: submit_done is ours to call */
        submit_done(s, rc, "", &err);
}

/* ---- recipients (smtp) ---- */

/* Worker: is the recipient ours (550 5.1.1 when the domain is but the
 * address is not), or may this session relay? */
static void job_rcpt(smtp_session *s)
{
    const smtp_path *p = &s->cmd.path;
    hv_err err = {0};
    dir *d = smtp_worker_dir(s->srv, &err);
    if (!d) {
        log_error("smtp: session=%s directory unavailable: %s", s->id, err.msg);
        smtp_out(s, "451 4.3.0 Directory unavailable; try again later");
        return;
    }
    char lookup[SMTP_ADDRESS_MAX + 300];
    if (p->postmaster)
        snprintf(lookup, sizeof(lookup), "postmaster@%s", s->srv->hostname);
    else
        snprintf(lookup, sizeof(lookup), "%s", p->addr);
    const char *domain = strchr(lookup, '@') + 1;
    char dom[DIR_DOMAIN_MAX + 1];
    char account[DIR_ADDRESS_MAX + 1] = "";
    int hosted = 0;
    /* Most mail is for an account itself: one query says so (an account's
     * domain is hosted), where the domain and alias checks below take two. */
    char norm0[DIR_ADDRESS_MAX + 1];
    dir_account acc;
    if (dir_address_normalize(lookup, norm0, &err) == 0) {
        int rc = dir_account_get(d, norm0, &acc, &err);
        if (rc == 0) {
            snprintf(account, sizeof(account), "%s", norm0);
            goto found;
        }
        if (rc != -ENOENT && rc != -EINVAL) {
            log_error("smtp: session=%s directory lookup failed: %s", s->id, err.msg);
            smtp_out(s, "451 4.3.0 Directory unavailable; try again later");
            return;
        }
    }
    if (dir_domain_normalize(domain, dom, &err) == 0) {
        int rc = dir_domain_exists(d, dom, &err);
        if (rc == 0)
            hosted = 1;
        else if (rc != -ENOENT) {
            log_error("smtp: session=%s directory lookup failed: %s", s->id, err.msg);
            smtp_out(s, "451 4.3.0 Directory unavailable; try again later");
            return;
        }
    }
    if (hosted) {
        char norm[DIR_ADDRESS_MAX + 1];
        int rc = dir_address_normalize(lookup, norm, &err);
        if (rc == 0)
            rc = dir_alias_resolve(d, norm, account, &err);
        else
            rc = -ENOENT; /* a local part we never give out */
        if (rc == -ENOENT) {
            log_info("smtp: session=%s peer=%s from=<%s> rcpt=<%s> refused reason=\"no such "
                     "user\"",
                     s->id, s->peer, s->mail_from, p->addr);
            smtp_out(s, "550 5.1.1 <%s>: Recipient address rejected: no such user here",
                       p->addr);
            return;
        }
        if (rc == -ELOOP) {
            log_error("smtp: session=%s rcpt=<%s> alias loop: %s", s->id, p->addr, err.msg);
            smtp_out(s, "550 5.4.6 <%s>: Alias loop", p->addr);
            return;
        }
        if (rc < 0) {
            log_error("smtp: session=%s directory lookup failed: %s", s->id, err.msg);
            smtp_out(s, "451 4.3.0 Directory unavailable; try again later");
            return;
        }
    } else if (!s->user[0]) {
        log_info("smtp: session=%s peer=%s from=<%s> rcpt=<%s> refused reason=\"relaying "
                 "denied\"",
                 s->id, s->peer, s->mail_from, p->addr);
        smtp_out(s, "550 5.7.1 <%s>: Relaying denied", p->addr);
        return;
    }
found:;
    smtp_rcpt *r = smtp_session_add_rcpt(s);
    snprintf(r->addr, sizeof(r->addr), "%s", p->addr);
    snprintf(r->account, sizeof(r->account), "%s", account);
    r->notify = s->cmd.notify;
    if (s->cmd.orcpt[0])
        r->orcpt = strdup(s->cmd.orcpt);
    s->state = SS_RCPT;
    smtp_out(s, "250 2.1.5 Ok");
}

/* ---- AUTH ---- */

static int clear_text_allowed(smtp_session *s)
{
    return s->tls || (s->is_loopback && s->srv->plaintext_loopback);
}

static void auth_failed(smtp_session *s, const char *user, const char *why)
{
    unsigned delay = ratelimit_fail(s->srv->rl, s->peer, s->srv->auth_fail_delay_ms);
    log_info("smtp: session=%s peer=%s user=%s auth failed reason=\"%s\" delay_ms=%u", s->id,
             s->peer, user, why, delay);
    s->delay_ms = delay;
    smtp_out(s, "535 5.7.8 Authentication credentials invalid");
}

/* Worker: checks the PLAIN message in s->sasl_plain. */
static void job_auth(smtp_session *s)
{
    const char *authz, *authc, *pass;
    char *raw = s->sasl_plain;
    size_t n = s->sasl_plain_len;
    s->sasl_plain = NULL;
    s->sasl_plain_len = 0;
    if (smtp_sasl_plain(raw, n, &authz, &authc, &pass) < 0) {
        smtp_out(s, "501 5.5.2 Malformed PLAIN response");
        goto out;
    }
    char user[DIR_ADDRESS_MAX + 1];
    hv_err err = {0};
    if (dir_address_normalize(authc, user, &err) < 0) {
        auth_failed(s, "-", "malformed user name");
        goto out;
    }
    if (*authz && strcasecmp(authz, authc) != 0) {
        auth_failed(s, user, "authorization identity differs (not supported)");
        goto out;
    }
    dir *d = smtp_worker_dir(s->srv, &err);
    dir_account acc;
    int rc = d ? dir_account_get(d, user, &acc, &err) : -EIO;
    if (rc < 0 && rc != -ENOENT) {
        log_error("smtp: session=%s directory unavailable: %s", s->id, err.msg);
        smtp_out(s, "454 4.7.0 Temporary authentication failure");
        goto out;
    }
    if (rc == -ENOENT) {
        /* Same cost as a wrong password: timing does not tell them apart. */
        password_verify(pass, "");
        auth_failed(s, user, "no such account");
        goto out;
    }
    if (password_verify(pass, acc.password_hash) != 0) {
        auth_failed(s, user, "wrong password");
        goto out;
    }
    if (acc.state == DIR_STATE_HELD) {
        /* Stopped by an operator: sending stops too. Moves and restores
         * do not touch what the account sends. */
        log_info("smtp: session=%s user=%s auth refused state=held", s->id, user);
        smtp_out(s, "535 5.7.8 Account is held; contact the operators");
        goto out;
    }
    ratelimit_fail_clear(s->srv->rl, s->peer);
    snprintf(s->user, sizeof(s->user), "%s", user);
    log_info("smtp: session=%s peer=%s user=%s auth ok tls=%d", s->id, s->peer, user, s->tls);
    smtp_out(s, "235 2.7.0 Authentication successful");
out:
    memset(raw, 0, n + 1);
    free(raw);
}

/* Decodes base64 text into a fresh buffer (one spare byte for a NUL). */
static char *b64_fresh(const char *in, size_t len, size_t *outlen)
{
    char *raw = malloc(len / 4 * 3 + 4);
    if (!raw)
        abort();
    long n = smtp_b64_decode(in, len, raw);
    if (n < 0) {
        free(raw);
        return NULL;
    }
    raw[n] = 0;
    *outlen = (size_t)n;
    return raw;
}

static void auth_plain(smtp_session *s, const char *b64, size_t len)
{
    size_t n;
    char *raw = b64_fresh(b64, len, &n);
    if (!raw) {
        smtp_out(s, "501 5.5.2 Invalid base64");
        note_error(s);
        return;
    }
    s->sasl_plain = raw;
    s->sasl_plain_len = n;
    s->job = job_auth;
    start_job(s);
}

/* LOGIN: user name and password in two steps, then the PLAIN check. */
static void auth_login_user(smtp_session *s, const char *b64, size_t len)
{
    size_t n;
    char *raw = b64_fresh(b64, len, &n);
    if (!raw || n == 0 || n > DIR_ADDRESS_MAX || memchr(raw, 0, n)) {
        free(raw);
        smtp_out(s, "501 5.5.2 Invalid user name");
        note_error(s);
        s->mode = SM_COMMAND;
        return;
    }
    memcpy(s->sasl_login, raw, n + 1);
    free(raw);
    s->sasl_mech = 2;
    s->sasl_step = 2;
    s->mode = SM_SASL;
    smtp_out(s, "334 UGFzc3dvcmQ6"); /* "Password:" */
}

static void auth_login_pass(smtp_session *s, const char *b64, size_t len)
{
    size_t n;
    char *raw = b64_fresh(b64, len, &n);
    if (!raw || memchr(raw, 0, n)) {
        free(raw);
        smtp_out(s, "501 5.5.2 Invalid password encoding");
        note_error(s);
        return;
    }
    size_t ul = strlen(s->sasl_login);
    char *plain = malloc(ul + n + 3);
    if (!plain)
        abort();
    plain[0] = 0;
    memcpy(plain + 1, s->sasl_login, ul + 1);
    memcpy(plain + ul + 2, raw, n);
    memset(raw, 0, n);
    free(raw);
    s->sasl_plain = plain;
    s->sasl_plain_len = ul + n + 2;
    s->sasl_login[0] = 0;
    s->job = job_auth;
    start_job(s);
}

static void sasl_line(smtp_session *s, const char *line, size_t len)
{
    int mech = s->sasl_mech, step = s->sasl_step;
    s->mode = SM_COMMAND;
    s->sasl_mech = s->sasl_step = 0;
    if (len == 1 && line[0] == '*') {
        smtp_out(s, "501 5.0.0 Authentication cancelled");
        return;
    }
    if (mech == 1)
        auth_plain(s, line, len);
    else if (step == 1)
        auth_login_user(s, line, len);
    else
        auth_login_pass(s, line, len);
}

/* ---- commands ---- */

typedef void (*cmd_fn)(smtp_session *s, smtp_cmd *c);
typedef struct cmd_def {
    enum smtp_verb verb;
    unsigned states; /* bit per enum smtp_state */
    cmd_fn fn;
} cmd_def;
#define ST(x) (1u << (x))
#define ANY (ST(SS_INIT) | ST(SS_READY) | ST(SS_MAIL) | ST(SS_RCPT))

static void cmd_ehlo(smtp_session *s, smtp_cmd *c)
{
    smtp_session_reset_tx(s);
    snprintf(s->helo, sizeof(s->helo), "%s", c->helo);
    s->state = SS_READY;
    s->esmtp = c->verb != SMTP_V_HELO;
    if (!s->esmtp) {
        smtp_out(s, "250 %s", s->srv->hostname);
        return;
    }
    smtp_out(s, "250-%s Hello %s [%s]", s->srv->hostname, s->helo, s->peer);
    smtp_out(s, "250-PIPELINING");
    smtp_out(s, "250-SIZE %llu", (unsigned long long)s->srv->max_message);
    smtp_out(s, "250-8BITMIME");
    smtp_out(s, "250-SMTPUTF8");
    smtp_out(s, "250-CHUNKING");
    if (s->port == SMTP_PORT_LMTP) {
        smtp_out(s, "250-XHAVEN-DID");
    } else {
        smtp_out(s, "250-DSN");
        if (!s->tls && s->srv->ssl)
            smtp_out(s, "250-STARTTLS");
        /* AUTH only on the submission ports, and only where a password may
         * travel (TLS, or loopback when the config allows clear text). */
        if (s->port != SMTP_PORT_MX && clear_text_allowed(s))
            smtp_out(s, "250-AUTH PLAIN LOGIN");
    }
    smtp_out(s, "250 ENHANCEDSTATUSCODES");
}

static void cmd_mail(smtp_session *s, smtp_cmd *c)
{
    if (s->port != SMTP_PORT_MX && s->port != SMTP_PORT_LMTP && !s->user[0]) {
        smtp_out(s, "530 5.7.0 Authentication required");
        return;
    }
    if (c->has_size && s->srv->max_message && c->size > s->srv->max_message) {
        log_info("%s: session=%s peer=%s from=<%s> size=%llu refused reason=\"too big\"",
                 svc(s), s->id, s->peer, c->path.addr, (unsigned long long)c->size);
        smtp_out(s, "552 5.3.4 Message size exceeds the limit of %llu bytes",
                   (unsigned long long)s->srv->max_message);
        return;
    }
    if (s->port != SMTP_PORT_LMTP &&
        ratelimit_take(s->srv->rl, s->peer, s->srv->client_msgs_per_minute) < 0) {
        log_info("smtp: session=%s peer=%s from=<%s> refused reason=\"message rate\" "
                 "limit_per_minute=%u",
                 s->id, s->peer, c->path.addr, s->srv->client_msgs_per_minute);
        smtp_out(s, "451 4.7.0 Too many messages from your address; slow down");
        return;
    }
    snprintf(s->mail_from, sizeof(s->mail_from), "%s", c->path.addr);
    s->mail_size = c->has_size ? c->size : 0;
    s->body_8bit = c->body == SMTP_BODY_8BITMIME;
    s->smtputf8 = c->smtputf8;
    s->ret_hdrs = c->ret == SMTP_RET_HDRS;
    snprintf(s->envid, sizeof(s->envid), "%s", c->envid);
    s->state = SS_MAIL;
    smtp_out(s, "250 2.1.0 Ok");
}

static void cmd_rcpt(smtp_session *s, smtp_cmd *c)
{
    if (s->nrcpts >= s->srv->max_rcpts) {
        smtp_out(s, "452 4.5.3 Too many recipients");
        return;
    }
    if (c->path.utf8 && !s->smtputf8) {
        smtp_out(s, "553 5.6.7 Non-ASCII recipient address needs SMTPUTF8 on MAIL");
        return;
    }
    s->job = s->port == SMTP_PORT_LMTP ? lmtp_job_rcpt : job_rcpt;
    start_job(s);
}

/* Room to set aside for the message: what SIZE announced, but at most
 * 1 MiB up front, since SIZE is only the client's word and fifty sessions
 * announcing 50 MiB each must not reserve 2.5 GiB; bigger messages grow
 * the buffer as their bytes actually arrive. */
static uint64_t reserve_hint(smtp_session *s)
{
    uint64_t want = s->mail_size;
    return want > (1u << 20) ? (1u << 20) : want;
}

/* The first DATA or BDAT of a message: the reader and our header. */
static void begin_message(smtp_session *s, int dot_mode)
{
    size_t want = (size_t)reserve_hint(s) + 512;
    msg_buf_take(&s->msg, want > MSG_FIRST ? want : MSG_FIRST);
    if (s->port != SMTP_PORT_LMTP)
        prepend_received(s);
    smtp_data_init(&s->dr, dot_mode, s->srv->max_message, &s->msg);
    s->data_started = 1;
}

static void cmd_data(smtp_session *s, smtp_cmd *c)
{
    (void)c;
    if (s->data_started) {
        smtp_out(s, "503 5.5.1 DATA cannot follow BDAT");
        note_error(s);
        return;
    }
    begin_message(s, 1);
    s->mode = SM_DATA;
    smtp_out(s, "354 End data with <CR><LF>.<CR><LF>");
}

/* The whole chunk has been read (or skipped). */
static void bdat_chunk_done(smtp_session *s)
{
    s->mode = SM_COMMAND;
    if (s->bdat_reply[0]) {
        smtp_out(s, "%s", s->bdat_reply);
        s->bdat_reply[0] = 0;
        note_error(s);
        return;
    }
    if (s->bdat_last) {
        smtp_data_finish(&s->dr);
        message_done(s);
        return;
    }
    smtp_out(s, "250 2.0.0 %llu octets received", (unsigned long long)s->dr.size);
}

/* A BDAT whose bytes must be read past and then refused with reply. */
static void bdat_skip(smtp_session *s, uint64_t size, const char *reply)
{
    snprintf(s->bdat_reply, sizeof(s->bdat_reply), "%s", reply);
    s->bdat_left = size;
    s->mode = SM_BDAT;
    if (size == 0)
        bdat_chunk_done(s);
}

static void cmd_bdat(smtp_session *s, smtp_cmd *c)
{
    if (!s->data_started) {
        begin_message(s, 0);
    } else if (s->dr.dot_mode) {
        bdat_skip(s, c->bdat_size, "503 5.5.1 BDAT cannot follow DATA");
        return;
    }
    s->bdat_left = c->bdat_size;
    s->bdat_last = c->bdat_last;
    s->mode = SM_BDAT;
    if (c->bdat_size == 0)
        bdat_chunk_done(s);
}

static void cmd_rset(smtp_session *s, smtp_cmd *c)
{
    (void)c;
    smtp_session_reset_tx(s);
    smtp_out(s, "250 2.0.0 Ok");
}

static void cmd_noop(smtp_session *s, smtp_cmd *c)
{
    (void)c;
    smtp_out(s, "250 2.0.0 Ok");
}

static void cmd_quit(smtp_session *s, smtp_cmd *c)
{
    (void)c;
    smtp_out(s, "221 2.0.0 %s Bye", s->srv->hostname);
    s->closing = 1;
}

static void cmd_vrfy(smtp_session *s, smtp_cmd *c)
{
    (void)c;
    /* Telling which addresses exist helps only those harvesting them. */
    smtp_out(s, "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery");
}

static void cmd_expn(smtp_session *s, smtp_cmd *c)
{
    (void)c;
    smtp_out(s, "502 5.5.1 EXPN not available");
}

static void cmd_help(smtp_session *s, smtp_cmd *c)
{
    (void)c;
    smtp_out(s, "214 2.0.0 Haven %s: see RFC %s", svc(s),
               s->port == SMTP_PORT_LMTP ? "2033" : "5321");
}

static void cmd_starttls(smtp_session *s, smtp_cmd *c)
{
    (void)c;
    if (s->port == SMTP_PORT_LMTP || !s->srv->ssl) {
        smtp_out(s, "502 5.5.1 STARTTLS not available");
        note_error(s);
        return;
    }
    if (s->tls) {
        smtp_out(s, "503 5.5.1 TLS already active");
        note_error(s);
        return;
    }
    smtp_out(s, "220 2.0.0 Ready to start TLS");
    send_out(s);
    start_tls(s);
}

static void cmd_auth(smtp_session *s, smtp_cmd *c)
{
    if (s->port == SMTP_PORT_MX || s->port == SMTP_PORT_LMTP) {
        smtp_out(s, "502 5.5.1 AUTH is offered on the submission ports only");
        note_error(s);
        return;
    }
    if (s->user[0]) {
        smtp_out(s, "503 5.5.1 Already authenticated");
        note_error(s);
        return;
    }
    if (!clear_text_allowed(s)) {
        smtp_out(s, "538 5.7.11 Encryption required: use STARTTLS first");
        return;
    }
    if (strcmp(c->mech, "PLAIN") == 0) {
        if (c->initial) {
            auth_plain(s, c->initial, strlen(c->initial));
            return;
        }
        s->sasl_mech = 1;
        s->sasl_step = 1;
        s->mode = SM_SASL;
        smtp_out(s, "334 ");
        return;
    }
    if (strcmp(c->mech, "LOGIN") == 0) {
        if (c->initial) {
            auth_login_user(s, c->initial, strlen(c->initial));
            return;
        }
        s->sasl_mech = 2;
        s->sasl_step = 1;
        s->mode = SM_SASL;
        smtp_out(s, "334 VXNlcm5hbWU6"); /* "Username:" */
        return;
    }
    smtp_out(s, "504 5.5.4 Unrecognized authentication mechanism");
}

static const cmd_def commands[] = {
    {SMTP_V_HELO, ANY, cmd_ehlo},
    {SMTP_V_EHLO, ANY, cmd_ehlo},
    {SMTP_V_LHLO, ANY, cmd_ehlo},
    {SMTP_V_MAIL, ST(SS_READY), cmd_mail},
    {SMTP_V_RCPT, ST(SS_MAIL) | ST(SS_RCPT), cmd_rcpt},
    {SMTP_V_DATA, ST(SS_RCPT), cmd_data},
    {SMTP_V_BDAT, ST(SS_RCPT), cmd_bdat},
    {SMTP_V_RSET, ANY, cmd_rset},
    {SMTP_V_NOOP, ANY, cmd_noop},
    {SMTP_V_QUIT, ANY, cmd_quit},
    {SMTP_V_VRFY, ANY, cmd_vrfy},
    {SMTP_V_EXPN, ANY, cmd_expn},
    {SMTP_V_HELP, ANY, cmd_help},
    {SMTP_V_STARTTLS, ST(SS_INIT) | ST(SS_READY), cmd_starttls},
    {SMTP_V_AUTH, ST(SS_READY), cmd_auth},
};

/* The reply to a command sent in a state that does not allow it. */
static const char *sequence_error(smtp_session *s, enum smtp_verb v)
{
    if (s->state == SS_INIT)
        return s->port == SMTP_PORT_LMTP ? "503 5.5.1 Send LHLO first"
                                         : "503 5.5.1 Send HELO/EHLO first";
    switch (v) {
    case SMTP_V_MAIL:
        return "503 5.5.1 Nested MAIL command";
    case SMTP_V_RCPT:
        return "503 5.5.1 Need MAIL before RCPT";
    case SMTP_V_DATA:
    case SMTP_V_BDAT:
        return s->state == SS_MAIL ? "554 5.5.1 No valid recipients"
                                   : "503 5.5.1 Need MAIL before DATA";
    case SMTP_V_STARTTLS:
        return "503 5.5.1 STARTTLS is not allowed during a mail transaction";
    case SMTP_V_AUTH:
        return "503 5.5.1 AUTH is not allowed during a mail transaction";
    default:
        return "503 5.5.1 Bad sequence of commands";
    }
}

static void command_line(smtp_session *s, const char *line, size_t len)
{
    smtp_cmd *c = &s->cmd;
    char reply[512];
    unsigned flags = s->port == SMTP_PORT_LMTP ? SMTP_PARSE_LMTP : 0;
    if (smtp_parse_command(line, len, flags, c, reply, sizeof(reply)) < 0) {
        if (c->verb == SMTP_V_BDAT) {
            if (c->bdat_size == UINT64_MAX) {
                /* We cannot know where the chunk ends: stop here. */
                smtp_out(s, "%s", reply);
                smtp_out(s, "421 4.7.0 %s Cannot resynchronise after a bad BDAT, closing",
                           s->srv->hostname);
                s->closing = 1;
                return;
            }
            bdat_skip(s, c->bdat_size, reply);
            return;
        }
        smtp_out(s, "%s", reply);
        note_error(s);
        return;
    }
    const cmd_def *def = NULL;
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (commands[i].verb == c->verb)
            def = &commands[i];
    if (!def) {
        smtp_out(s, "500 5.5.1 Unknown command");
        note_error(s);
        return;
    }
    if (!(def->states & ST(s->state))) {
        const char *r = sequence_error(s, c->verb);
        if (c->verb == SMTP_V_BDAT) {
            bdat_skip(s, c->bdat_size, r);
            return;
        }
        smtp_out(s, "%s", r);
        note_error(s);
        return;
    }
    def->fn(s, c);
}

/* The first contiguous piece of the input buffer (no copy). */
static size_t input_piece(struct evbuffer *in, const char **p)
{
    struct evbuffer_iovec v;
    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
        return 0;
    *p = v.iov_base;
    return v.iov_len;
}

static void process_input(smtp_session *s)
{
    while (!s->busy && !s->closing) {
        struct evbuffer *in = bufferevent_get_input(s->bev);
        const char *p;
        size_t avail = input_piece(in, &p);
        if (avail == 0)
            break;
        size_t used = 0;
        switch (s->mode) {
        case SM_BDAT: {
            size_t take = avail < s->bdat_left ? avail : (size_t)s->bdat_left;
            if (!s->bdat_reply[0])
                smtp_data_feed(&s->dr, p, take, &used);
            evbuffer_drain(in, take);
            s->bdat_left -= take;
            if (s->bdat_left == 0)
                bdat_chunk_done(s);
            break;
        }
        case SM_DATA: {
            enum smtp_data_result r = smtp_data_feed(&s->dr, p, avail, &used);
            evbuffer_drain(in, used);
            if (r == SMTP_DATA_END)
                message_done(s);
            break;
        }
        case SM_COMMAND:
        case SM_SASL: {
            enum smtp_line_result r = smtp_line_feed(&s->lr, p, avail, &used);
            evbuffer_drain(in, used);
            if (r == SMTP_LINE_MORE)
                break;
            if (r == SMTP_LINE_BAD) {
                smtp_out(s, "%s", smtp_line_error_reply(smtp_line_errors(&s->lr)));
                if (s->mode == SM_SASL) {
                    s->mode = SM_COMMAND;
                    s->sasl_mech = s->sasl_step = 0;
                }
                note_error(s);
                break;
            }
            size_t len;
            const char *line = smtp_line_text(&s->lr, &len);
            if (s->mode == SM_SASL)
                sasl_line(s, line, len);
            else
                command_line(s, line, len);
            break;
        }
        }
    }
    if (!s->busy)
        send_out(s);
    if (s->closing && !s->busy)
        close_when_flushed(s);
}
