/*
 * repl_link.h - one authenticated replication connection (TLS over TCP).
 *
 * The handshake runs blocking, with a deadline: TLS, then HELLO and AUTH
 * both ways (repl_proto.h). After that one I/O thread owns the SSL object
 * (OpenSSL does not allow two threads on it): it reads messages and hands
 * each to the owner's handler, and writes what other threads queued with
 * repl_link_send. The queue is bounded: senders wait for room, so a slow
 * peer holds back the workers feeding it, never memory. Writes respect a
 * byte-rate limit. A link that has heard nothing for REPL_LINK_DEAD_MS
 * (pings go every few seconds both ways) is closed.
 */
#ifndef HV_REPL_LINK_H
#define HV_REPL_LINK_H

#include <openssl/ssl.h>
#include <stdint.h>

#include "lib/buf.h"
#include "lib/err.h"
#include "repl/repl_proto.h"

#define REPL_LINK_DEAD_MS 30000
#define REPL_LINK_PING_MS 5000
#define REPL_LINK_QUEUE_MAX (8u << 20)

typedef struct repl_link repl_link;

/* Called on the I/O thread for every message after the handshake; must
 * not block (queue work elsewhere). m is valid only during the call. */
typedef void (*repl_link_handler)(void *ctx, repl_link *l, const repl_msg *m);
/* Called once on the I/O thread when the link ends (reason given). */
typedef void (*repl_link_closed)(void *ctx, repl_link *l, const char *reason);

typedef struct repl_link_opts {
    SSL_CTX *ssl;
    int is_server;               /* TLS server side (the primary) */
    enum repl_role role;         /* our role */
    const uint8_t *secret;
    size_t secret_len;
    const char *store;           /* our store name, for the peer's logs */
    uint64_t rate_bytes_per_s;   /* 0: unlimited */
    int handshake_ms;
    uint64_t epoch;              /* ours, sent in the handshake's EPOCH */
} repl_link_opts;

/* Takes over fd (connected); runs the handshake. On success *out is a link
 * that is not yet reading (call repl_link_start). */
int repl_link_handshake(int fd, const repl_link_opts *o, repl_link **out, hv_err *err);
const char *repl_link_peer_store(const repl_link *l);
const char *repl_link_peer_addr(const repl_link *l);
/* What the peer said in the handshake: its role (enum repl_role; the
 * handshake does not require it to differ from ours) and its epoch. */
int repl_link_peer_role(const repl_link *l);
uint64_t repl_link_peer_epoch(const repl_link *l);
void repl_link_start(repl_link *l, repl_link_handler h, repl_link_closed c, void *ctx);

/* Queues a message (copied). Waits up to wait_ms for room (-1: forever,
 * 0: never wait, queue regardless: for small replies from the handler).
 * -EPIPE when the link is closed, -ETIMEDOUT when there was no room. */
int repl_link_send(repl_link *l, const buf *msg, int wait_ms);
int repl_link_alive(repl_link *l);
/* Asks the I/O thread to end the link (any thread). */
void repl_link_shutdown(repl_link *l, const char *reason);
/* Waits for the I/O thread and frees the link. Not from the I/O thread. */
void repl_link_free(repl_link *l);

typedef struct repl_link_stats {
    uint64_t bytes_in, bytes_out, msgs_in, msgs_out;
    uint64_t queued_bytes;
    double rate_in, rate_out;    /* bytes/s over the last seconds */
    int64_t up_since_ms;         /* wall clock */
} repl_link_stats;
void repl_link_get_stats(repl_link *l, repl_link_stats *out);

int64_t repl_now_ms(void);       /* monotonic */
int64_t repl_wall_ms(void);

#endif
