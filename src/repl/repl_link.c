/*
 * repl_link.c - a replication connection: TLS, the shared-secret
 * handshake, and the I/O thread that owns the SSL object (repl_link.h).
 *
 * SECURITY: before AUTH has been verified the peer can send only HELLO
 * and AUTH, of at most REPL_MAX_PAYLOAD_PREAUTH bytes, within the
 * handshake deadline. The proof binds the TLS session (an exported
 * keying value), so it is worthless on any other connection.
 */
#include "repl/repl_link.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "lib/log.h"

typedef struct out_node {
    struct out_node *next;
    size_t len;
    uint8_t data[];
} out_node;

struct repl_link {
    int fd, wake_fd;
    SSL *ssl;
    char peer_store[REPL_STORE_NAME_MAX + 1];
    char peer_addr[64];
    int peer_role;
    uint64_t peer_epoch;
    uint64_t rate;
    repl_parser parser;
    pthread_t thread;
    int started;

    pthread_mutex_t mu;
    pthread_cond_t room;
    out_node *head, *tail;
    size_t head_off;
    size_t queued;
    int closed;          /* the I/O thread has ended (or never started) */
    int stop;            /* asked to end */
    char reason[200];

    repl_link_handler handler;
    repl_link_closed on_closed;
    void *ctx;

    /* stats (under mu) */
    uint64_t bytes_in, bytes_out, msgs_in, msgs_out;
    uint64_t win_in, win_out;
    int64_t win_start;
    double rate_in, rate_out;
    int64_t up_since;
};

int64_t repl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t repl_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *ssl_reason(void)
{
    static __thread char e[160];
    unsigned long code = ERR_get_error();
    if (!code)
        return errno ? strerror(errno) : "connection closed";
    ERR_error_string_n(code, e, sizeof(e));
    return e;
}

/* Blocking exact I/O, for the handshake only (the socket has timeouts). */
static int ssl_write_all(SSL *ssl, const void *p, size_t n)
{
    while (n) {
        int w = SSL_write(ssl, p, (int)n);
        if (w <= 0)
            return -1;
        p = (const uint8_t *)p + w;
        n -= (size_t)w;
    }
    return 0;
}

static int ssl_read_all(SSL *ssl, void *p, size_t n)
{
    while (n) {
        int r = SSL_read(ssl, p, (int)n);
        if (r <= 0)
            return -1;
        p = (uint8_t *)p + r;
        n -= (size_t)r;
    }
    return 0;
}

/* Reads exactly one message during the handshake (no bytes beyond it, so
 * nothing is left over for the I/O thread to miss). */
static int read_one(repl_link *l, repl_msg *m, hv_err *err)
{
    uint8_t hdr[REPL_HDR];
    if (ssl_read_all(l->ssl, hdr, sizeof(hdr)) < 0)
        return hv_err_set(err, -ECONNRESET, "handshake with %s: %s", l->peer_addr, ssl_reason());
    uint32_t plen = le32(hdr);
    if (plen > REPL_MAX_PAYLOAD_PREAUTH)
        return hv_err_set(err, -EPROTO, "handshake with %s: message of %u bytes before "
                          "authentication", l->peer_addr, plen);
    uint8_t payload[REPL_MAX_PAYLOAD_PREAUTH];
    if (ssl_read_all(l->ssl, payload, plen) < 0)
        return hv_err_set(err, -ECONNRESET, "handshake with %s: %s", l->peer_addr, ssl_reason());
    size_t used;
    int rc = repl_parser_feed(&l->parser, hdr, sizeof(hdr), &used, m, err);
    if (rc == 0)
        rc = repl_parser_feed(&l->parser, payload, plen, &used, m, err);
    if (rc < 0) {
        hv_err_prefix(err, "handshake with %s", l->peer_addr);
        return rc;
    }
    if (rc != 1)
        return hv_err_set(err, -EPROTO, "handshake with %s: incomplete message", l->peer_addr);
    return 0;
}

static int send_now(repl_link *l, const buf *b, hv_err *err)
{
    if (ssl_write_all(l->ssl, b->data, b->len) < 0)
        return hv_err_set(err, -ECONNRESET, "handshake with %s: %s", l->peer_addr, ssl_reason());
    return 0;
}

int repl_link_handshake(int fd, const repl_link_opts *o, repl_link **out, hv_err *err)
{
    repl_link *l = calloc(1, sizeof(*l));
    if (!l)
        abort();
    l->fd = fd;
    l->wake_fd = -1;
    l->rate = o->rate_bytes_per_s;
    l->closed = 1;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->room, NULL);
    repl_parser_init(&l->parser, REPL_MAX_PAYLOAD_PREAUTH);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    snprintf(l->peer_addr, sizeof(l->peer_addr), "?");
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
        char host[INET6_ADDRSTRLEN] = "?";
        int port = 0;
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
            port = ntohs(s4->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
            port = ntohs(s6->sin6_port);
        }
        snprintf(l->peer_addr, sizeof(l->peer_addr), "%s:%d", host, port);
    }
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    struct timeval tv = {o->handshake_ms / 1000, (o->handshake_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    int rc;
    l->ssl = SSL_new(o->ssl);
    if (!l->ssl) {
        rc = hv_err_set(err, -ENOMEM, "TLS: cannot create a session");
        goto fail;
    }
    SSL_set_fd(l->ssl, fd);
    SSL_set_mode(l->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    ERR_clear_error();
    if ((o->is_server ? SSL_accept(l->ssl) : SSL_connect(l->ssl)) != 1) {
        rc = hv_err_set(err, -ECONNREFUSED, "TLS handshake with %s failed: %s", l->peer_addr,
                        ssl_reason());
        goto fail;
    }
    uint8_t exporter[32], mine[32], mac[32], want[32];
    static const char label[] = "EXPORTER-haven-repl";
    if (SSL_export_keying_material(l->ssl, exporter, sizeof(exporter), label, sizeof(label) - 1,
                                   NULL, 0, 0) != 1 ||
        RAND_bytes(mine, sizeof(mine)) != 1) {
        rc = hv_err_set(err, -EPROTO, "TLS with %s: cannot derive the session binding",
                        l->peer_addr);
        goto fail;
    }
    buf b;
    buf_init(&b);
    repl_build_hello(&b, o->role, mine, o->store);
    rc = send_now(l, &b, err);
    repl_msg m;
    if (rc == 0)
        rc = read_one(l, &m, err);
    if (rc == 0 && m.type != REPL_HELLO)
        rc = hv_err_set(err, -EPROTO, "handshake with %s: got %s instead of HELLO", l->peer_addr,
                        repl_msg_type_name(m.type));
    /* The roles are not compared here: two nodes that both believe they
     * are the primary must still meet, so the epochs can say which one is
     * stale (the caller decides, repl_link_peer_role/epoch). */
    if (rc == 0 && m.version != REPL_PROTO_VERSION)
        rc = hv_err_set(err, -EPROTO, "handshake with %s: peer speaks version %u as %s; we are "
                        "version %u %s", l->peer_addr, m.version,
                        m.role ? "replica" : "primary", REPL_PROTO_VERSION,
                        o->role ? "replica" : "primary");
    if (rc < 0) {
        buf_free(&b);
        goto fail;
    }
    uint8_t theirs[32];
    memcpy(theirs, m.bytes32, 32);
    snprintf(l->peer_store, sizeof(l->peer_store), "%.*s", (int)m.text_len, m.text);
    enum repl_role peer_role = (enum repl_role)m.role;
    repl_auth_mac(o->secret, o->secret_len, o->role, mine, theirs, exporter, mac);
    buf_reset(&b);
    repl_build_auth(&b, mac);
    rc = send_now(l, &b, err);
    if (rc == 0)
        rc = read_one(l, &m, err);
    if (rc == 0 && m.type != REPL_AUTH)
        rc = hv_err_set(err, -EPROTO, "handshake with %s: got %s instead of AUTH", l->peer_addr,
                        repl_msg_type_name(m.type));
    if (rc == 0) {
        repl_auth_mac(o->secret, o->secret_len, peer_role, theirs, mine, exporter, want);
        if (CRYPTO_memcmp(want, m.bytes32, 32) != 0) {
            buf_reset(&b);
            repl_build_error(&b, NULL, -EACCES, "authentication failed: the shared secrets differ");
            (void)send_now(l, &b, NULL);
            rc = hv_err_set(err, -EACCES, "replication peer %s (store %s) failed authentication: "
                            "the shared secrets differ", l->peer_addr, l->peer_store);
        }
    }
    if (rc == 0) {
        /* Authenticated: now each side says its epoch. */
        buf_reset(&b);
        repl_build_ping(&b, REPL_EPOCH, o->epoch);
        rc = send_now(l, &b, err);
        if (rc == 0)
            rc = read_one(l, &m, err);
        if (rc == 0 && m.type != REPL_EPOCH)
            rc = hv_err_set(err, -EPROTO, "handshake with %s: got %s instead of EPOCH",
                            l->peer_addr, repl_msg_type_name(m.type));
        if (rc == 0) {
            l->peer_role = (int)peer_role;
            l->peer_epoch = m.a;
        }
    }
    buf_free(&b);
    if (rc < 0)
        goto fail;
    repl_parser_set_limit(&l->parser, REPL_MAX_PAYLOAD);
    struct timeval none = {0, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &none, sizeof(none));
    *out = l;
    return 0;
fail:
    if (l->ssl)
        SSL_free(l->ssl);
    close(fd);
    repl_parser_free(&l->parser);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->room);
    free(l);
    return rc;
}

const char *repl_link_peer_store(const repl_link *l) { return l->peer_store; }
const char *repl_link_peer_addr(const repl_link *l) { return l->peer_addr; }
int repl_link_peer_role(const repl_link *l) { return l->peer_role; }
uint64_t repl_link_peer_epoch(const repl_link *l) { return l->peer_epoch; }

static void wake(repl_link *l)
{
    uint64_t one = 1;
    if (l->wake_fd >= 0)
        (void)!write(l->wake_fd, &one, sizeof(one));
}

int repl_link_send(repl_link *l, const buf *msg, int wait_ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    if (wait_ms > 0) {
        dl.tv_sec += wait_ms / 1000;
        dl.tv_nsec += (long)(wait_ms % 1000) * 1000000;
        if (dl.tv_nsec >= 1000000000) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000;
        }
    }
    pthread_mutex_lock(&l->mu);
    while (!l->closed && !l->stop && wait_ms != 0 && l->queued > 0 &&
           l->queued + msg->len > REPL_LINK_QUEUE_MAX) {
        if (wait_ms < 0)
            pthread_cond_wait(&l->room, &l->mu);
        else if (pthread_cond_timedwait(&l->room, &l->mu, &dl) == ETIMEDOUT)
            break;
    }
    if (l->closed || l->stop) {
        pthread_mutex_unlock(&l->mu);
        return -EPIPE;
    }
    if (wait_ms != 0 && l->queued > 0 && l->queued + msg->len > REPL_LINK_QUEUE_MAX) {
        pthread_mutex_unlock(&l->mu);
        return -ETIMEDOUT;
    }
    out_node *n = malloc(sizeof(*n) + msg->len);
    if (!n)
        abort();
    n->next = NULL;
    n->len = msg->len;
    memcpy(n->data, msg->data, msg->len);
    if (l->tail)
        l->tail->next = n;
    else
        l->head = n;
    l->tail = n;
    l->queued += msg->len;
    l->msgs_out++;
    pthread_mutex_unlock(&l->mu);
    wake(l);
    return 0;
}

int repl_link_alive(repl_link *l)
{
    pthread_mutex_lock(&l->mu);
    int alive = !l->closed && !l->stop;
    pthread_mutex_unlock(&l->mu);
    return alive;
}

void repl_link_shutdown(repl_link *l, const char *reason)
{
    pthread_mutex_lock(&l->mu);
    if (!l->stop) {
        l->stop = 1;
        snprintf(l->reason, sizeof(l->reason), "%s", reason);
    }
    pthread_cond_broadcast(&l->room);
    pthread_mutex_unlock(&l->mu);
    wake(l);
}

static void count(repl_link *l, uint64_t in, uint64_t outb)
{
    pthread_mutex_lock(&l->mu);
    l->bytes_in += in;
    l->bytes_out += outb;
    l->win_in += in;
    l->win_out += outb;
    int64_t now = repl_now_ms();
    if (now - l->win_start >= 2000) {
        double secs = (double)(now - l->win_start) / 1000.0;
        l->rate_in = (double)l->win_in / secs;
        l->rate_out = (double)l->win_out / secs;
        l->win_in = l->win_out = 0;
        l->win_start = now;
    }
    pthread_mutex_unlock(&l->mu);
}

static void *io_main(void *arg)
{
    repl_link *l = arg;
    char reason[200] = "";
    int fl = fcntl(l->fd, F_GETFL);
    fcntl(l->fd, F_SETFL, fl | O_NONBLOCK);
    uint8_t *rbuf = malloc(1 << 16);
    int64_t last_in = repl_now_ms(), last_ping = last_in, last_refill = last_in;
    double tokens = l->rate ? (double)l->rate : 0;
    size_t retry_len = 0; /* SSL_write wants the same length after WANT_WRITE */
    for (;;) {
        pthread_mutex_lock(&l->mu);
        if (l->stop) {
            snprintf(reason, sizeof(reason), "%s", l->reason);
            pthread_mutex_unlock(&l->mu);
            break;
        }
        pthread_mutex_unlock(&l->mu);
        int64_t now = repl_now_ms();
        if (l->rate) {
            tokens += (double)l->rate * (double)(now - last_refill) / 1000.0;
            if (tokens > (double)l->rate)
                tokens = (double)l->rate;
            last_refill = now;
        }
        /* write what the queue holds, within the rate */
        int want_out = 0, want_in_for_write = 0, failed = 0;
        uint64_t wrote = 0;
        for (;;) {
            pthread_mutex_lock(&l->mu);
            out_node *n = l->head;
            size_t off = l->head_off;
            pthread_mutex_unlock(&l->mu);
            if (!n)
                break;
            size_t len = n->len - off;
            if (len > (256u << 10))
                len = 256u << 10;
            if (l->rate) {
                if (tokens < 1024) {
                    want_out = 2;
                    break;
                }
                if ((double)len > tokens)
                    len = (size_t)tokens;
            }
            if (retry_len)
                len = retry_len;
            ERR_clear_error();
            int w = SSL_write(l->ssl, n->data + off, (int)len);
            if (w <= 0) {
                int e = SSL_get_error(l->ssl, w);
                if (e == SSL_ERROR_WANT_WRITE) {
                    want_out = 1;
                    retry_len = len;
                } else if (e == SSL_ERROR_WANT_READ) {
                    want_in_for_write = 1;
                    retry_len = len;
                } else {
                    snprintf(reason, sizeof(reason), "write: %s", ssl_reason());
                    failed = 1;
                }
                break;
            }
            retry_len = 0;
            wrote += (uint64_t)w;
            if (l->rate)
                tokens -= w;
            pthread_mutex_lock(&l->mu);
            l->head_off += (size_t)w;
            l->queued -= (size_t)w;
            if (l->head_off == n->len) {
                l->head = n->next;
                if (!l->head)
                    l->tail = NULL;
                l->head_off = 0;
                free(n);
            }
            pthread_cond_broadcast(&l->room);
            pthread_mutex_unlock(&l->mu);
        }
        if (failed)
            break;
        /* read and dispatch everything available */
        uint64_t got = 0;
        for (;;) {
            ERR_clear_error();
            int r = SSL_read(l->ssl, rbuf, 1 << 16);
            if (r <= 0) {
                int e = SSL_get_error(l->ssl, r);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                    break;
                snprintf(reason, sizeof(reason), "%s",
                         e == SSL_ERROR_ZERO_RETURN ? "peer closed the link" : ssl_reason());
                failed = 1;
                break;
            }
            got += (uint64_t)r;
            last_in = repl_now_ms();
            size_t off = 0;
            while (off < (size_t)r) {
                size_t used;
                repl_msg m;
                hv_err err = {0};
                int rc = repl_parser_feed(&l->parser, rbuf + off, (size_t)r - off, &used, &m, &err);
                off += used;
                if (rc < 0) {
                    snprintf(reason, sizeof(reason), "bad message from peer: %.170s", err.msg);
                    failed = 1;
                    break;
                }
                if (rc == 0)
                    break;
                pthread_mutex_lock(&l->mu);
                l->msgs_in++;
                pthread_mutex_unlock(&l->mu);
                if (m.type == REPL_PING) {
                    buf pb;
                    buf_init(&pb);
                    repl_build_ping(&pb, REPL_PONG, m.a);
                    repl_link_send(l, &pb, 0);
                    buf_free(&pb);
                } else if (m.type == REPL_PONG) {
                    /* liveness only */
                } else if (m.type == REPL_HELLO || m.type == REPL_AUTH) {
                    snprintf(reason, sizeof(reason), "peer sent %s after the handshake",
                             repl_msg_type_name(m.type));
                    failed = 1;
                    break;
                } else if (m.type == REPL_ERROR && m.account_len == 0) {
                    snprintf(reason, sizeof(reason), "peer ended the link: %.*s",
                             (int)m.text_len, m.text);
                    failed = 1;
                    break;
                } else {
                    l->handler(l->ctx, l, &m);
                }
            }
            if (failed)
                break;
        }
        if (got || wrote)
            count(l, got, wrote);
        if (failed)
            break;
        now = repl_now_ms();
        if (now - last_in > REPL_LINK_DEAD_MS) {
            snprintf(reason, sizeof(reason), "nothing heard for %d s", REPL_LINK_DEAD_MS / 1000);
            break;
        }
        if (now - last_ping >= REPL_LINK_PING_MS) {
            buf pb;
            buf_init(&pb);
            repl_build_ping(&pb, REPL_PING, (uint64_t)now);
            repl_link_send(l, &pb, 0);
            buf_free(&pb);
            last_ping = now;
            continue;
        }
        pthread_mutex_lock(&l->mu);
        int have_out = l->head != NULL;
        pthread_mutex_unlock(&l->mu);
        struct pollfd p[2] = {{.fd = l->fd, .events = POLLIN}, {.fd = l->wake_fd, .events = POLLIN}};
        if (have_out && want_out == 1)
            p[0].events |= POLLOUT;
        int timeout = 1000;
        if (have_out && want_out == 0 && !want_in_for_write)
            timeout = 0; /* more to write right away */
        if (want_out == 2)
            timeout = 10;
        if (SSL_pending(l->ssl))
            timeout = 0;
        if (poll(p, 2, timeout) < 0 && errno != EINTR) {
            snprintf(reason, sizeof(reason), "poll: %s", strerror(errno));
            break;
        }
        if (p[1].revents & POLLIN) {
            uint64_t v;
            (void)!read(l->wake_fd, &v, sizeof(v));
        }
    }
    free(rbuf);
    pthread_mutex_lock(&l->mu);
    l->closed = 1;
    pthread_cond_broadcast(&l->room);
    pthread_mutex_unlock(&l->mu);
    SSL_shutdown(l->ssl);
    shutdown(l->fd, SHUT_RDWR);
    if (l->on_closed)
        l->on_closed(l->ctx, l, reason);
    return NULL;
}

void repl_link_start(repl_link *l, repl_link_handler h, repl_link_closed c, void *ctx)
{
    l->handler = h;
    l->on_closed = c;
    l->ctx = ctx;
    l->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    l->closed = 0;
    l->up_since = repl_wall_ms();
    l->win_start = repl_now_ms();
    l->started = 1;
    pthread_create(&l->thread, NULL, io_main, l);
}

void repl_link_free(repl_link *l)
{
    if (!l)
        return;
    if (l->started) {
        repl_link_shutdown(l, "closed locally");
        pthread_join(l->thread, NULL);
    }
    out_node *n = l->head;
    while (n) {
        out_node *next = n->next;
        free(n);
        n = next;
    }
    SSL_free(l->ssl);
    close(l->fd);
    if (l->wake_fd >= 0)
        close(l->wake_fd);
    repl_parser_free(&l->parser);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->room);
    free(l);
}

void repl_link_get_stats(repl_link *l, repl_link_stats *o)
{
    pthread_mutex_lock(&l->mu);
    o->bytes_in = l->bytes_in;
    o->bytes_out = l->bytes_out;
    o->msgs_in = l->msgs_in;
    o->msgs_out = l->msgs_out;
    o->queued_bytes = l->queued;
    int64_t age = repl_now_ms() - l->win_start;
    /* A link idle since the last window has a rate of zero, not the old one. */
    o->rate_in = age > 4000 ? 0 : l->rate_in;
    o->rate_out = age > 4000 ? 0 : l->rate_out;
    o->up_since_ms = l->up_since;
    pthread_mutex_unlock(&l->mu);
}
