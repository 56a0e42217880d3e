/*
 * smtp_internal.h - what the files of the smtp and lmtp services share.
 *
 * smtp_server.c   event loop, listeners, TLS, worker pool, per-address
 *                 limits, the lmtp account cache; the two service entries
 * smtp_session.c  one client: input (lines, DATA, BDAT), the command table
 *                 and state machine, replies; MX and submission commands
 *                 (recipient checks, AUTH, the queue hand-over)
 * lmtp_session.c  LMTP's recipient checks (state, quota) and deliveries
 *                 into the account stores, one reply per recipient
 *
 * Threads (as in imap): a session belongs to the loop thread, except while
 * a job of it runs on a worker (s->busy): then only that worker touches the
 * session (for the end of a message, the queue's syncing thread after it:
 * submit_done). The loop parses nothing more of a busy session, so
 * pipelined commands wait (socket, or input buffer) and are answered in
 * order. A store handle is shared by the lmtp sessions delivering to that
 * account and guarded by the account's mutex.
 */
#ifndef HV_SMTP_INTERNAL_H
#define HV_SMTP_INTERNAL_H

#include <openssl/ssl.h>
#include <pthread.h>
#include <stdint.h>

#include "dir/dir.h"
#include "lib/buf.h"
#include "lib/ratelimit.h"
#include "queue/queue.h"
#include "smtp/smtp.h"
#include "smtp/smtp_parser.h"
#include "store/store.h"

struct event_base;
struct event;
struct sockaddr;
struct bufferevent;
typedef struct smtp_server smtp_server;
typedef struct smtp_session smtp_session;

/* Which port a session came in on: what it may do follows from it. */
enum smtp_port {
    SMTP_PORT_MX = 0,      /* 25: mail for hosted domains, no AUTH */
    SMTP_PORT_SUBMISSION,  /* 587: STARTTLS, AUTH required */
    SMTP_PORT_SUBMISSIONS, /* 465: implicit TLS, AUTH required */
    SMTP_PORT_LMTP,        /* lmtp_port: delivery into stores */
};

/* ---- lmtp: accounts open in this process ---- */
struct lmtp_delivery;

/* Concurrent deliveries to one account share one store batch, so one
 * fdatasync makes them all durable (lmtp_session.c): whoever finds the
 * store free takes every pending delivery and commits them together. */
typedef struct lmtp_account {
    char address[DIR_ADDRESS_MAX + 1];
    store_account *st;
    pthread_mutex_t mu;   /* guards busy and pending */
    pthread_cond_t cv;    /* busy dropped, or deliveries done */
    int busy;             /* a thread is using st (outside mu) */
    struct lmtp_delivery *pending, **pending_tail;
    int refs;             /* registry mutex */
    int opening;          /* registry mutex: st being opened (opened: amu_cv) */
    struct lmtp_account *next;
} lmtp_account;

lmtp_account *lmtp_account_get(smtp_server *srv, const char *address, hv_err *err);
void lmtp_account_put(smtp_server *srv, lmtp_account *a);
/* The calling worker's handle for sync replication waits (NULL when the
 * store is not in sync mode); repl/repl_sync.h. */
struct repl_sync;
int lmtp_worker_repl_sync(smtp_server *srv, struct repl_sync **out, hv_err *err);

/* ---- the server ---- */
struct smtp_server {
    const conf *conf;
    int lmtp; /* this process serves LMTP (else MX + submission) */
    struct event_base *base;
    SSL_CTX *ssl;
    char data_dir[4096];
    char dir_spec[4200];
    char hostname[256];
    int plaintext_loopback;
    uint64_t max_message;
    unsigned max_rcpts;
    unsigned max_sessions;
    unsigned client_max_sessions;
    unsigned client_msgs_per_minute;
    unsigned auth_fail_delay_ms;
    store_options store_opt;
    unsigned nsessions;
    ratelimit *rl;
    queue *q; /* smtp only */
    /* workers (lib/workq.h) */
    struct workq *work;
    unsigned nthreads;
    /* lmtp accounts */
    pthread_mutex_t amu;
    pthread_cond_t amu_cv;
    lmtp_account *accounts;
    unsigned idle_accounts;
};

/* Directory handle of the calling worker thread (opened lazily, one per
 * thread: a dir handle is not thread-safe). NULL with err on failure. */
dir *smtp_worker_dir(smtp_server *srv, hv_err *err);
/* Runs s->job on a worker; the worker then wakes the loop (done_ev). */
void smtp_server_submit(smtp_server *srv, smtp_session *s);

/* ---- sessions ---- */
enum smtp_state {
    SS_INIT,  /* before HELO/EHLO/LHLO */
    SS_READY, /* greeted, no transaction */
    SS_MAIL,  /* MAIL accepted, no recipient yet */
    SS_RCPT,  /* at least one recipient accepted */
};

enum smtp_mode {
    SM_COMMAND, /* reading command lines */
    SM_DATA,    /* after 354: message data up to CRLF.CRLF */
    SM_BDAT,    /* reading the bytes of a BDAT chunk */
    SM_SASL,    /* after 334: a SASL response line */
};

enum smtp_after { SA_NONE, SA_STARTTLS, SA_CLOSE };

typedef struct smtp_rcpt {
    char addr[SMTP_ADDRESS_MAX + 1];    /* as given in RCPT TO */
    char account[DIR_ADDRESS_MAX + 1];  /* local account, "" when relayed */
    unsigned notify;
    char *orcpt;                        /* malloc'd, or NULL */
    char did[SMTP_DID_MAX + 1];         /* lmtp: XHAVEN-DID, "" when none */
    uint64_t quota;                     /* lmtp: the account's quota, 0 none */
} smtp_rcpt;

struct smtp_session {
    smtp_server *srv;
    struct bufferevent *bev;
    struct event *rd_ev;   /* plain sessions: reading the socket (smtp_session.c) */
    struct event *done_ev;
    struct event *delay_ev;
    int fd;
    enum smtp_port port;
    char peer[64];
    char id[24];
    int is_loopback;
    int tls;
    int counted; /* holds a ratelimit session slot */
    enum smtp_state state;
    enum smtp_mode mode;
    enum smtp_after after;
    int busy, closing, peer_gone, linger_tries;
    unsigned bad;      /* errors in a row: too many and we hang up */
    unsigned delay_ms; /* hold the next answer back (failed AUTH) */
    buf out;
    smtp_line_reader lr;
    char helo[SMTP_HELO_MAX + 1];
    int esmtp;
    /* AUTH */
    char user[DIR_ADDRESS_MAX + 1]; /* "" until authenticated */
    int sasl_mech;                  /* 1 PLAIN, 2 LOGIN while a SASL exchange runs */
    int sasl_step;
    char sasl_login[DIR_ADDRESS_MAX + 1];
    char *sasl_plain;               /* decoded PLAIN message for the job, malloc'd */
    size_t sasl_plain_len;
    /* the command handed to a job */
    smtp_cmd cmd;
    void (*job)(smtp_session *s);
    /* the transaction */
    char mail_from[SMTP_ADDRESS_MAX + 1];
    uint64_t mail_size;
    int body_8bit, smtputf8, ret_hdrs;
    char envid[SMTP_ENVID_MAX + 1];
    smtp_rcpt *rcpts;
    size_t nrcpts, caprcpts;
    buf msg;              /* the message (after our own header lines) */
    smtp_data_reader dr;
    int data_started;     /* a DATA or the first BDAT chunk began */
    uint64_t bdat_left;
    int bdat_last;
    char bdat_reply[512]; /* an error to give once the chunk is skipped */
    unsigned messages;    /* in this session, for Received ids */
    /* lmtp: per recipient replies after the data */
    struct timespec t_end; /* when the final data arrived (for the log) */
};

/* Reply helpers (loop or the job's worker): append "fmt\r\n" to s->out. */
void smtp_out(smtp_session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* sa, salen: the peer's address as accept gave it (NULL: asked of fd). */
void smtp_session_accept(smtp_server *srv, int fd, const struct sockaddr *sa, int salen,
                         enum smtp_port port);
/* Worker: runs s->job. Loop: after the job. */
void smtp_session_run(smtp_session *s);
void smtp_session_job_done(smtp_session *s);
/* Frees the transaction (recipients, message), back to SS_READY. */
void smtp_session_reset_tx(smtp_session *s);
/* Adds a recipient to the transaction (zeroed). */
smtp_rcpt *smtp_session_add_rcpt(smtp_session *s);

/* lmtp_session.c (worker jobs) */
void lmtp_job_rcpt(smtp_session *s);
void lmtp_job_deliver(smtp_session *s);

#endif
