/*
 * proxy_internal.h - what the parts of the proxy service share: the
 * server, a client session, the backend pool and the response scanner.
 *
 * Threads: one libevent loop owns every session and all socket I/O once a
 * session relays; worker threads run logins (directory, password hash,
 * backend connect and LOGIN, all blocking); one watcher thread follows
 * the directory's changes, one more keeps the backend pool filled.
 */
#ifndef HV_PROXY_INTERNAL_H
#define HV_PROXY_INTERNAL_H

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdint.h>

#include "dir/dir.h"
#include "dir/password.h"
#include "imap/imap_parser.h"
#include "lib/conf.h"
#include "lib/ratelimit.h"
#include "proxy/proxy.h"

#define PX_POOL_ADDRS 64     /* backend addresses the pool keeps connections for */
#define PX_POOL_MAX 16       /* idle connections per address at most */
#define PX_POOL_MAX_AGE 600  /* seconds an idle backend connection is kept */
#define PX_WATCH_MS 200      /* directory poll interval */
#define PX_KILL_GRACE_MS 500 /* wait this long for a response boundary before cutting */

/* Tracks where the store's response stream is, so that the proxy's own
 * "* BYE" goes in between two responses, never into a literal. Bounded:
 * a few counters and the last bytes of the current line. */
typedef struct px_scan {
    uint64_t literal; /* bytes of literal data still to come */
    size_t linelen;   /* bytes of the current line so far (0: at a line start) */
    char tail[24];    /* last bytes of the current line */
    size_t taillen;
} px_scan;

void px_scan_feed(px_scan *sc, const char *p, size_t n);
/* Between two response lines, outside any literal. */
int px_scan_at_boundary(const px_scan *sc);

/* A connection to a store's IMAP, greeting read; TLS up (after STARTTLS,
 * certificate verified) when ssl is set. Blocking with timeouts while a
 * worker or the pooler owns it. */
typedef struct px_conn {
    int fd;
    SSL *ssl;
} px_conn;

/* proxy_backend_tls */
enum px_backend_tls { PX_BE_TLS_AUTO, PX_BE_TLS_ALWAYS, PX_BE_TLS_NEVER };

typedef struct px_pool_entry {
    char address[DIR_STORE_ADDRESS_MAX + 1];
    px_conn conns[PX_POOL_MAX];
    int64_t since[PX_POOL_MAX];
    unsigned n;
    int64_t last_used; /* seconds; 0: warmed at start, never used */
    /* Failed refills in a row, and when the next may be tried (ms,
     * monotonic): a store that is down or whose certificate does not
     * verify is not hammered every tick. */
    unsigned fails;
    int64_t retry_ms;
} px_pool_entry;

typedef struct px_server px_server;
typedef struct px_session px_session;

enum px_state {
    PX_PRE,     /* not logged in: the proxy speaks IMAP */
    PX_SASL,    /* waiting for the AUTHENTICATE PLAIN response line */
    PX_BUSY,    /* a login runs on a worker */
    PX_RELAY,   /* bytes go both ways */
    PX_KILLING, /* the account moved: finishing the current response, then BYE */
    PX_CLOSING, /* last words out, then free */
};

struct px_session {
    px_server *srv;
    uint64_t id;
    char ids[32];
    struct bufferevent *cli;
    struct bufferevent *be;
    imap_parser *parser;
    enum px_state state;
    char peer[64];
    int is_loopback, tls, bad_count, peer_gone, linger;
    char tag[64];
    /* The login being checked (worker): cleared once it is done. */
    char user[DIR_ADDRESS_MAX + 1];
    char pass[PASSWORD_MAX + 1];
    /* The worker's answer. */
    int ok;
    px_conn be_conn; /* fd -1: none */
    char reply[1200];   /* the tagged reply text after the tag, with CRLF */
    char *extra;        /* backend bytes read past its tagged reply */
    size_t nextra;
    unsigned delay_ms;
    proxy_route route;
    px_scan scan;
    struct event *done_ev, *timer_ev;
    px_session *next, *prev;
};

typedef struct px_route_reg {
    uint64_t id;
    char account[DIR_ADDRESS_MAX + 1];
    proxy_route route;
    int fresh; /* not looked at by the watcher yet */
    struct px_route_reg *next;
} px_route_reg;

struct px_server {
    const conf *conf;
    char dir_spec[4200];
    char hostname[256];
    char local_store[DIR_STORE_NAME_MAX + 1];
    char local_address[DIR_STORE_ADDRESS_MAX + 1];
    int plaintext_loopback;
    unsigned max_sessions, nsessions, fail_delay_ms, pool_size;
    struct event_base *base;
    SSL_CTX *ssl;
    /* towards the stores: proxy_backend_tls, the client context (NULL
     * when never), proxy_backend_verify_name (empty: the address's host) */
    enum px_backend_tls be_tls;
    SSL_CTX *be_ssl;
    char be_name[256];
    ratelimit *rl;
    px_session *sessions; /* loop thread only */
    uint64_t next_id;
    /* login jobs (lib/workq.h); stopping (under qmu) ends the watcher and
     * the pooler */
    struct workq *work;
    unsigned nthreads;
    pthread_mutex_t qmu;
    int stopping;
    /* relaying sessions by account, for the watcher; and its verdicts */
    pthread_mutex_t rmu;
    px_route_reg *routes;
    uint64_t *kills;
    size_t nkills, capkills;
    struct event *kill_ev;
    pthread_t watcher, pooler;
    /* idle backend connections by address */
    pthread_mutex_t pmu;
    px_pool_entry pool[PX_POOL_ADDRS];
    unsigned npool;
};

/* proxy_backend.c (any thread but the loop) */
/* Reads proxy_backend_tls, proxy_backend_ca and proxy_backend_verify_name
 * into srv (the client context too). -EINVAL with the reason. */
int px_backend_setup(px_server *srv, const conf *c, hv_err *err);
/* A backend connection with the greeting read (and TLS up when wanted):
 * from the pool when one is ready, else a fresh connection. -errno with
 * the reason; a store whose certificate does not verify, or that refuses
 * STARTTLS, is an error, never a clear-text connection. */
int px_backend_get(px_server *srv, const char *address, px_conn *out, hv_err *err);
/* LOGIN on the backend; 0 with the tagged reply text (after the tag) in
 * reply when it said OK; -EACCES with the reply when it said NO/BAD;
 * -EIO when the connection failed. Bytes read past the reply (TLS:
 * decrypted) go to *extra (malloc'd) / *nextra. */
int px_backend_login(px_conn *c, const char *user, const char *pass, char *reply,
                     size_t replylen, char **extra, size_t *nextra, hv_err *err);
/* Connects one fresh backend, reads its greeting, does STARTTLS when
 * wanted. */
int px_backend_connect(px_server *srv, const char *address, px_conn *out, hv_err *err);
/* Closes a backend connection (fd -1: nothing to do). */
void px_conn_close(px_conn *c);
/* Remembers address as used (the watcher keeps its pool filled). */
void px_pool_touch(px_server *srv, const char *address);
/* Watcher: tops every address's pool up and drops stale connections. */
void px_pool_refill(px_server *srv);
/* Drops the idle connections to address (its store moved away). */
void px_pool_drop(px_server *srv, const char *address);
void px_pool_free(px_server *srv);

/* proxy_watch.c */
void *px_watch_main(void *arg);
void *px_pool_main(void *arg);
void px_route_register(px_server *srv, px_session *s);
void px_route_unregister(px_server *srv, uint64_t id);

/* proxy_session.c (loop thread) */
void px_session_accept(px_server *srv, int fd, int tls);
void px_session_kill(px_server *srv, uint64_t id);
/* Worker thread: runs the login of s, then wakes the loop. */
void px_session_login_job(px_session *s);
dir *px_worker_dir(px_server *srv, hv_err *err);

#endif
