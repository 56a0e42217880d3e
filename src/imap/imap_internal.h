/*
 * imap_internal.h - what the imap service's files share.
 *
 * imap_server.c    event loop, listeners, TLS, worker pool, account registry
 * imap_session.c   one client: input, parser, dispatch, output, mailbox view
 * imap_cmd_*.c     the commands, one file per family
 * imap_seqset.c    sequence sets and uid sets
 *
 * Threads: a session belongs to the loop thread, except while one of its
 * commands runs on a worker (s->busy): then only that worker touches the
 * session's command state and output buffer. An account's store handle is
 * shared by every session of the process on that account and guarded by
 * the account's mutex, held for the whole command.
 */
#ifndef HV_IMAP_INTERNAL_H
#define HV_IMAP_INTERNAL_H

#include <pthread.h>
#include <stdint.h>
#include <openssl/ssl.h>

#include "dir/dir.h"
#include "imap/imap.h"
#include "imap/imap_parser.h"
#include "lib/buf.h"
#include "store/store.h"

struct event_base;
struct event;
struct bufferevent;
typedef struct imap_server imap_server;
typedef struct imap_session imap_session;

/* ---- accounts shared by the sessions of this process ---- */
typedef struct imap_account {
    char address[DIR_ADDRESS_MAX + 1];
    store_account *st;
    pthread_mutex_t mu;   /* held while a command uses st */
    int refs;             /* registry mutex */
    struct event *notify; /* loop: wake this account's idle sessions */
    int watch;            /* inotify watch on the log folder, -1 */
    imap_session *idlers; /* loop thread only */
    struct imap_account *next;
} imap_account;

imap_account *imap_account_get(imap_server *srv, const char *address, hv_err *err);
void imap_account_put(imap_server *srv, imap_account *a);
/* A change was committed (from any thread): wake idle sessions. */
void imap_account_changed(imap_account *a);

/* Sync replication: the calling worker's handle (NULL when not in sync
 * mode). See repl/repl_sync.h. */
struct repl_sync;
int imap_worker_repl_sync(struct imap_server *srv, struct repl_sync **out, hv_err *err);

/* ---- the server ---- */
typedef struct imap_limits {
    size_t max_line_preauth, max_line;
    uint64_t max_message; /* APPENDLIMIT */
    unsigned max_sessions;
    unsigned auth_fail_delay_ms;
} imap_limits;

struct imap_server {
    const conf *conf;
    struct event_base *base;
    SSL_CTX *ssl;
    char data_dir[4096];
    char dir_spec[4200];
    char hostname[256];
    imap_limits lim;
    int plaintext_loopback;
    unsigned nsessions;
    /* workers (lib/workq.h) */
    struct workq *work;
    unsigned nthreads;
    /* accounts */
    pthread_mutex_t amu;
    imap_account *accounts;
    unsigned idle_accounts; /* open but used by no session (amu) */
    int inotify_fd;
    struct event *inotify_ev;
    /* failed logins per client address: a small table, loop + workers */
    pthread_mutex_t fmu;
    struct { char addr[64]; unsigned fails; int64_t last; } fails[256];
};

/* Directory handle of the calling worker thread (opened lazily). */
dir *imap_worker_dir(imap_server *srv, hv_err *err);
void imap_server_submit(imap_server *srv, imap_session *s);

typedef struct imap_cmd_def imap_cmd_def;

/* ---- sessions ---- */
enum imap_state { IMAP_NOT_AUTH, IMAP_AUTH, IMAP_SELECTED, IMAP_LOGOUT };

enum imap_mode {
    IMAP_MODE_COMMAND, /* reading commands */
    IMAP_MODE_IDLE,    /* after "+ idling", waiting for DONE */
    IMAP_MODE_SASL,    /* after "+ ", waiting for the client's SASL line */
};

/* What a command asks the loop to do once its output is flushed. */
enum imap_after { AFTER_NONE, AFTER_STARTTLS, AFTER_CLOSE, AFTER_IDLE, AFTER_SASL };

/* The selected mailbox as this session sees it: sequence numbers map to
 * view_uids, which changes only when this session is told of expunges. */
typedef struct imap_view {
    uint32_t mailbox;
    int readonly;
    uint32_t uidvalidity;
    uint32_t *uids;
    uint64_t *flags;    /* as last reported to the client */
    uint32_t n, cap;
    uint64_t modseq;    /* the mailbox's highestmodseq when last synced */
    uint32_t recent_floor; /* uids >= this are \Recent for us */
} imap_view;

struct imap_session {
    imap_server *srv;
    struct bufferevent *bev;
    struct event *done_ev;
    struct event *delay_ev;
    int fd;
    char peer[64];
    char id[24];
    int is_loopback;
    int tls;
    enum imap_state state;
    enum imap_mode mode;
    int busy;
    int closing;
    imap_parser *parser;
    /* the command being run on a worker */
    const imap_command *cmd;
    char tag[128];
    enum imap_after after;
    buf out;
    buf line; /* IDLE / SASL line being read */
    /* login */
    char user[DIR_ADDRESS_MAX + 1];
    imap_account *acct;
    /* enabled extensions */
    int condstore, qresync, utf8;
    int rev2;
    imap_view view;
    imap_session *idle_next;
    int in_idlers;  /* on acct->idlers (loop thread) */
    int idle_wake;  /* the job is a wake-up, not DONE */
    int sasl_step;
    int no_expunge; /* answering FETCH/STORE/SEARCH by sequence number */
    int bad_count;  /* consecutive BADs: too many and we hang up */
    unsigned delay_ms; /* hold the answer back this long (failed login) */
    int peer_gone;     /* EOF or error: nothing more can be sent */
    int linger_tries;
    const imap_cmd_def *def;
    /* A command that answers in slices (FETCH): called again on a worker
     * once the client has taken most of the previous slice. */
    void (*cont)(imap_session *s);
    void *cont_state;
    void (*cont_free)(void *state);
};

/* Output helpers (worker side, into s->out). */
void imap_out(imap_session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void imap_out_raw(imap_session *s, const void *p, size_t n);
/* An IMAP string: quoted when safe, a literal otherwise; NULL -> NIL. */
void imap_out_string(buf *b, const char *p, size_t n);
void imap_out_astring(buf *b, const char *p);
void imap_tagged(imap_session *s, const char *status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Runs on the worker, holding the account mutex: tells the client about
 * changes to the selected mailbox since the last sync. allow_expunge is 0
 * while answering FETCH/STORE/SEARCH by sequence number (RFC 3501 7.4.1). */
void imap_view_sync(imap_session *s, int allow_expunge);
void imap_view_free(imap_view *v);
/* Message sequence number of uid in the view, 0 if absent. */
uint32_t imap_view_seq(const imap_view *v, uint32_t uid);

/* ---- commands ---- */
typedef void (*imap_cmd_fn)(imap_session *s, const imap_command *c);
struct imap_cmd_def {
    const char *name;
    unsigned states; /* bit per enum imap_state */
    int needs_account; /* hold the account mutex while running */
    imap_cmd_fn fn;
};
#define ST(x) (1u << (x))
const imap_cmd_def *imap_cmd_find(const char *name);

/* Sequence sets: "1:3,5,7:*" resolved against a view (by seq or by uid)
 * into a sorted, de-duplicated uid list. */
int imap_seqset_uids(const imap_view *v, const char *set, int by_uid, uint32_t **uids,
                     size_t *n);
/* A raw uid set (for UID commands that name uids not in the view). */
int imap_uidset_parse(const char *set, uint32_t star, uint32_t **uids, size_t *n,
                      size_t max);
/* "1:3,5" from a sorted uid list. */
void imap_uidset_format(buf *b, const uint32_t *uids, size_t n);

/* A number argument (an atom of digits, fits 64 bits): 0, or -1. Clients
 * send anything where a number belongs; never strtoull a raw arg. */
int imap_arg_number(const imap_arg *a, uint64_t *out);

/* flags <-> text */
int imap_flags_parse(imap_session *s, const imap_arg *list, size_t n, uint64_t *flags,
                     int create_keywords);
void imap_flags_format(imap_session *s, buf *b, uint64_t flags, int recent);
const char *imap_capabilities(imap_session *s);

/* Commands (imap_cmd_*.c) */
void imap_cmd_capability(imap_session *s, const imap_command *c);
void imap_cmd_noop(imap_session *s, const imap_command *c);
void imap_cmd_logout(imap_session *s, const imap_command *c);
void imap_cmd_starttls(imap_session *s, const imap_command *c);
void imap_cmd_login(imap_session *s, const imap_command *c);
void imap_cmd_authenticate(imap_session *s, const imap_command *c);
void imap_sasl_line(imap_session *s, const char *line);
void imap_cmd_id(imap_session *s, const imap_command *c);
void imap_cmd_enable(imap_session *s, const imap_command *c);
void imap_cmd_namespace(imap_session *s, const imap_command *c);
void imap_cmd_select(imap_session *s, const imap_command *c);
void imap_cmd_create(imap_session *s, const imap_command *c);
void imap_cmd_delete(imap_session *s, const imap_command *c);
void imap_cmd_rename(imap_session *s, const imap_command *c);
void imap_cmd_subscribe(imap_session *s, const imap_command *c);
void imap_cmd_list(imap_session *s, const imap_command *c);
void imap_cmd_status(imap_session *s, const imap_command *c);
void imap_cmd_unselect(imap_session *s, const imap_command *c);
void imap_cmd_close(imap_session *s, const imap_command *c);
void imap_cmd_check(imap_session *s, const imap_command *c);
void imap_cmd_append(imap_session *s, const imap_command *c);
void imap_cmd_fetch(imap_session *s, const imap_command *c);
void imap_cmd_store(imap_session *s, const imap_command *c);
void imap_cmd_copy(imap_session *s, const imap_command *c);
void imap_cmd_expunge(imap_session *s, const imap_command *c);
void imap_cmd_search(imap_session *s, const imap_command *c);
/* Evaluates search criteria (args after RETURN/CHARSET) on the selected
 * mailbox: the matching uids in uid order (malloc'd). -EINVAL with *why on
 * a bad program. uses_modseq: a MODSEQ criterion was used. */
int imap_search_run(imap_session *s, const imap_arg *args, size_t nargs, uint32_t **hits,
                    size_t *n, uint64_t *maxmod, int *uses_modseq, const char **why);
/* SORT / UID SORT (RFC 5256, ESORT's RETURN, SORT=DISPLAY) and THREAD /
 * UID THREAD (ORDEREDSUBJECT, REFERENCES): imap_cmd_sort.c */
void imap_cmd_sort(imap_session *s, const imap_command *c);
void imap_cmd_thread(imap_session *s, const imap_command *c);
void imap_cmd_idle(imap_session *s, const imap_command *c);
void imap_idle_done(imap_session *s);
void imap_cmd_getquota(imap_session *s, const imap_command *c);

#endif
