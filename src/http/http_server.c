/*
 * http_server.c - the http service process: the loop, connections,
 * routing and responses (http.h says what is served).
 *
 * One libevent loop owns the connections. Each connection reads one
 * request head at a time through the bounded parser; /health and
 * /metrics are gathered on a worker (they talk to other processes and
 * read files), everything else is answered on the loop. Keep-alive and
 * pipelining work, one request after the other.
 *
 * Limits: HTTP_MAX_CONNS connections (more get a 503 and are closed); a
 * connection must deliver a complete request head within
 * HTTP_REQUEST_TIMEOUT_S of being ready for one (408 if it started one,
 * closed quietly if it sent nothing); responses piling up unread stop
 * the reading; a connection being closed has HTTP_LINGER_MS to take its
 * last response before it is cut.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "http/http_internal.h"
#include "http/http_parser.h"
#include "lib/log.h"
#include "lib/workq.h"

#define HTTP_MAX_CONNS 8
#define HTTP_WORKERS 2
#define HTTP_REQUEST_TIMEOUT_S 10
#define HTTP_WRITE_TIMEOUT_S 30
#define HTTP_LINGER_MS 2000
#define HTTP_OUT_HIGH (256u << 10) /* unread responses before reading stops */

#define CT_TEXT "text/plain; charset=utf-8"
#define CT_PROM "text/plain; version=0.0.4; charset=utf-8"

typedef struct http_server {
    http_ctx ctx;
    struct event_base *base;
    workq *work;
    unsigned nconns;
} http_server;

enum route { ROUTE_HEALTH, ROUTE_METRICS };

typedef struct http_conn {
    http_server *srv;
    struct bufferevent *bev;
    struct event *timer;   /* request deadline, then the linger limit */
    struct event *done_ev; /* a worker finished the request */
    http_parser p;
    char peer[64];
    int busy;      /* a worker has the request */
    int gone;      /* the peer left while busy: free when the worker is done */
    int closing;   /* no more requests: flush, then linger */
    int lingering; /* output sent, write side shut: waiting for the peer's EOF */
    int peer_eof;  /* the peer sent all it will (it may still read) */
    int head_only; /* HEAD: the same response without its body */
    int keep_alive;
    enum route route;
    /* the worker's answer */
    int status;
    const char *ctype;
    buf body;
} http_conn;

static const char *status_text(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

static void conn_free(http_conn *c)
{
    bufferevent_free(c->bev);
    event_free(c->timer);
    event_free(c->done_ev);
    buf_free(&c->body);
    c->srv->nconns--;
    free(c);
}

static void arm_timer(http_conn *c, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

/* Everything is sent: shut our side and give the peer a moment to read
 * it and close. Closing at once with its unread bytes still queued here
 * would make the kernel send a reset, which can destroy the response on
 * its way (RFC 9112 9.6). */
static void start_linger(http_conn *c)
{
    if (c->peer_eof) { /* nothing more to wait for */
        conn_free(c);
        return;
    }
    c->lingering = 1;
    shutdown(bufferevent_getfd(c->bev), SHUT_WR);
    bufferevent_enable(c->bev, EV_READ);
    arm_timer(c, HTTP_LINGER_MS);
}

static void log_request(const http_conn *c, int status, const char *reason)
{
    const http_request *r = &c->p.req;
    /* Successful scrapes come every few seconds: not worth a line each. */
    if (status < 400)
        log_debug("http: request peer=%s method=%s target=%.200s status=%d", c->peer,
                  r->method, r->target, status);
    else
        log_info("http: request peer=%s method=%s target=%.200s status=%d reason=\"%s\"",
                 c->peer, r->method[0] ? r->method : "-", r->target[0] ? r->target : "-",
                 status, reason);
}

/* Queues a whole response. close_after: the connection ends with it. */
static void respond(http_conn *c, int status, const char *ctype, const void *body, size_t len,
                    const char *extra, int close_after)
{
    if (close_after)
        c->keep_alive = 0;
    char date[64];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    struct evbuffer *out = bufferevent_get_output(c->bev);
    evbuffer_add_printf(out,
                        "HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: %s\r\n"
                        "Content-Length: %zu\r\nCache-Control: no-store\r\n"
                        "Connection: %s\r\n%s\r\n",
                        status, status_text(status), date, ctype, len,
                        c->keep_alive ? "keep-alive" : "close", extra ? extra : "");
    if (!c->head_only && len)
        evbuffer_add(out, body, len);
    if (!c->keep_alive) {
        c->closing = 1;
        bufferevent_disable(c->bev, EV_READ);
        evtimer_del(c->timer);
    } else {
        http_parser_init(&c->p);
        arm_timer(c, HTTP_REQUEST_TIMEOUT_S * 1000);
    }
}

static void respond_text(http_conn *c, int status, const char *text, const char *extra,
                         int close_after)
{
    respond(c, status, CT_TEXT, text, strlen(text), extra, close_after);
}

static void start_job(http_conn *c, enum route route)
{
    c->route = route;
    c->busy = 1;
    bufferevent_disable(c->bev, EV_READ);
    evtimer_del(c->timer);
    workq_push(c->srv->work, c);
}

static void handle_request(http_conn *c)
{
    const http_request *r = &c->p.req;
    c->keep_alive = r->keep_alive;
    int get = strcmp(r->method, "GET") == 0;
    c->head_only = strcmp(r->method, "HEAD") == 0;
    if (!get && !c->head_only) {
        log_request(c, 405, "only GET and HEAD");
        respond_text(c, 405, "method not allowed: only GET and HEAD\n", "Allow: GET, HEAD\r\n",
                     0);
        return;
    }
    const char *path = r->target + r->path_off;
    size_t n = r->path_len;
    if (n == 7 && memcmp(path, "/health", 7) == 0) {
        start_job(c, ROUTE_HEALTH);
    } else if (n == 8 && memcmp(path, "/metrics", 8) == 0) {
        start_job(c, ROUTE_METRICS);
    } else {
        log_request(c, 404, "no such path");
        respond_text(c, 404, "not found: this service has /health and /metrics\n", NULL, 0);
    }
}

/* Reads request heads from what has arrived, as long as nothing else is
 * in the way (a worker, the end of the connection, unread responses). */
static void process_input(http_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    while (!c->busy && !c->closing) {
        if (evbuffer_get_length(bufferevent_get_output(c->bev)) > HTTP_OUT_HIGH) {
            bufferevent_disable(c->bev, EV_READ); /* write_cb resumes */
            return;
        }
        size_t n = evbuffer_get_length(in);
        if (!n)
            return;
        const char *d = (const char *)evbuffer_pullup(in, (ssize_t)n);
        size_t used;
        int rc = http_parser_feed(&c->p, d, n, &used);
        evbuffer_drain(in, used);
        if (rc == HTTP_PARSE_MORE)
            return;
        if (rc == HTTP_PARSE_ERROR) {
            char text[160];
            snprintf(text, sizeof(text), "%s\n", c->p.reason);
            log_request(c, c->p.status, c->p.reason);
            c->head_only = 0;
            respond_text(c, c->p.status, text, NULL, 1);
            return;
        }
        handle_request(c);
    }
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    http_conn *c = arg;
    if (c->lingering) { /* whatever comes now is dropped */
        struct evbuffer *in = bufferevent_get_input(bev);
        evbuffer_drain(in, evbuffer_get_length(in));
        return;
    }
    process_input(c);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    http_conn *c = arg;
    if (c->closing && !c->lingering && !c->busy) {
        if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
            start_linger(c);
    } else if (!c->busy && !c->closing) {
        bufferevent_enable(bev, EV_READ);
        process_input(c);
    }
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    http_conn *c = arg;
    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)))
        return;
    if (what == (BEV_EVENT_EOF | BEV_EVENT_READING) && !c->lingering) {
        /* The peer has sent all it will, and may still read what it asked
         * for (a client that half-closes after its request). */
        c->peer_eof = 1;
        if (c->busy)
            return; /* done_cb answers, then closes */
        c->keep_alive = 0;
        c->closing = 1;
        evtimer_del(c->timer);
        if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
            conn_free(c); /* nothing owed */
        return;            /* else write_cb ends it once it is sent */
    }
    if (c->busy) {
        c->gone = 1;
        return;
    }
    if ((what & BEV_EVENT_TIMEOUT) && !c->lingering)
        log_info("http: peer=%s closed reason=\"response not taken within %d s\"", c->peer,
                 HTTP_WRITE_TIMEOUT_S);
    conn_free(c);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_conn *c = arg;
    if (c->lingering || c->busy) {
        if (!c->busy)
            conn_free(c);
        return;
    }
    /* The clock for the next request starts once the last answer is out;
     * a peer that does not read it meets the write timeout instead. */
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) > 0) {
        arm_timer(c, HTTP_REQUEST_TIMEOUT_S * 1000);
        return;
    }
    if (c->p.head_len == 0 || c->closing) {
        log_debug("http: peer=%s closed reason=idle", c->peer);
        conn_free(c);
        return;
    }
    log_request(c, 408, "request head not complete in time");
    c->head_only = 0;
    respond_text(c, 408, "request head not complete within 10 s\n", NULL, 1);
    write_cb(c->bev, c);
}

/* Worker thread. */
static void run_job(void *item)
{
    http_conn *c = item;
    http_server *srv = c->srv;
    buf_reset(&c->body);
    if (c->route == ROUTE_HEALTH) {
        buf reasons;
        buf_init(&reasons);
        int ok = http_health(&srv->ctx, &reasons);
        c->status = ok ? 200 : 503;
        if (ok)
            buf_append_str(&c->body, "ok\n");
        else
            buf_printf(&c->body, "unavailable\n%.*s", (int)reasons.len, (char *)reasons.data);
        buf_free(&reasons);
    } else {
        http_metrics(&srv->ctx, &c->body);
        c->status = 200;
    }
    c->ctype = c->route == ROUTE_METRICS ? CT_PROM : CT_TEXT;
    event_active(c->done_ev, EV_READ, 0);
}

/* Loop thread: the worker is done with c. */
static void done_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_conn *c = arg;
    c->busy = 0;
    if (c->gone) {
        conn_free(c);
        return;
    }
    /* For the log, the first reason is enough (the body has them all). */
    const char *why = strchr((const char *)c->body.data, '\n');
    why = why && c->status >= 400 ? why + 1 : "";
    char first[200];
    snprintf(first, sizeof(first), "%.*s", (int)strcspn(why, "\n"), why);
    log_request(c, c->status, first);
    respond(c, c->status, c->ctype, c->body.data, c->body.len, NULL, c->peer_eof);
    if (!c->closing) {
        bufferevent_enable(c->bev, EV_READ);
        process_input(c);
    }
    if (c->closing && !c->lingering &&
        evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        start_linger(c);
}

static void peer_name(int fd, char *out, size_t len)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    snprintf(out, len, "?");
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) != 0)
        return;
    if (ss.ss_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, out, (socklen_t)len);
    else if (ss.ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, out, (socklen_t)len);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    (void)l;
    (void)sa;
    (void)salen;
    http_server *srv = arg;
    char peer[64];
    peer_name(fd, peer, sizeof(peer));
    if (srv->nconns >= HTTP_MAX_CONNS) {
        static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\n"
                                   "Content-Type: " CT_TEXT "\r\n"
                                   "Content-Length: 21\r\nConnection: close\r\n\r\n"
                                   "too many connections\n";
        log_info("http: peer=%s refused reason=\"too many connections\" limit=%d", peer,
                 HTTP_MAX_CONNS);
        (void)!send(fd, busy, sizeof(busy) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
        close(fd);
        return;
    }
    http_conn *c = calloc(1, sizeof(*c));
    if (!c)
        abort();
    c->srv = srv;
    snprintf(c->peer, sizeof(c->peer), "%s", peer);
    c->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    c->timer = evtimer_new(srv->base, timer_cb, c);
    c->done_ev = event_new(srv->base, -1, 0, done_cb, c);
    buf_init(&c->body);
    http_parser_init(&c->p);
    srv->nconns++;
    bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
    struct timeval wt = {HTTP_WRITE_TIMEOUT_S, 0};
    bufferevent_set_timeouts(c->bev, NULL, &wt);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    arm_timer(c, HTTP_REQUEST_TIMEOUT_S * 1000);
    log_debug("http: peer=%s connect", c->peer);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    http_server *srv = arg;
    log_info("http: signal=%d stopping", (int)sig);
    event_base_loopbreak(srv->base);
}

int http_service_run(const conf *c, int fd, const http_master *m, hv_err *err)
{
    static http_server srv_store;
    http_server *srv = &srv_store;
    memset(srv, 0, sizeof(*srv));
    srv->ctx.c = c;
    srv->ctx.master = *m;
    conf_path(c, "run_dir", srv->ctx.run_dir, sizeof(srv->ctx.run_dir));
    conf_path(c, "data_dir", srv->ctx.data_dir, sizeof(srv->ctx.data_dir));
    conf_path(c, "queue_dir", srv->ctx.queue_dir, sizeof(srv->ctx.queue_dir));
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();
    srv->base = event_base_new();
    if (!srv->base)
        return hv_err_set(err, -ENOMEM, "event_base_new failed");
    evutil_make_socket_nonblocking(fd);
    struct evconnlistener *l =
        evconnlistener_new(srv->base, accept_cb, srv, LEV_OPT_CLOSE_ON_FREE, -1, fd);
    if (!l)
        return hv_err_set(err, -EIO, "cannot listen on the http socket");
    int rc = workq_start(&srv->work, HTTP_WORKERS, run_job, err);
    if (rc < 0) {
        evconnlistener_free(l);
        return rc;
    }
    struct event *sterm = evsignal_new(srv->base, SIGTERM, on_signal, srv);
    struct event *sint = evsignal_new(srv->base, SIGINT, on_signal, srv);
    event_add(sterm, NULL);
    event_add(sint, NULL);
    log_info("http: ready listen=%s port=%lld max_connections=%d", conf_get(c, "http_listen"),
             conf_get_int(c, "http_port"), HTTP_MAX_CONNS);
    event_base_dispatch(srv->base);

    /* Requests still on a worker finish; their connections go with the
     * process. */
    workq_stop(srv->work);
    evconnlistener_free(l);
    event_free(sterm);
    event_free(sint);
    return 0;
}
