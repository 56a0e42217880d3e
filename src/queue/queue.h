/*
 * queue.h - the durable SMTP queue and its delivery runner.
 *
 * The smtp service hands every accepted message to queue_submit, which
 * returns only once the message and its recipients are on disk (fsync):
 * only then may the session answer 250. Each recipient then has its own
 * state: ready, deferred (next attempt, last error), held (reason),
 * delivered or bounced (docs/queue-format.md).
 *
 * The runner (started by the smtp service) delivers ready recipients:
 * local accounts over LMTP to the lmtp service, remote domains through the
 * relay (smtp_client.h). It is fair between senders and between
 * destination accounts, so a flood from one source cannot delay others.
 * Mail for an account that is not active, or whose store does not answer,
 * is held, never expires, and is released by itself the moment the
 * account is active again, in arrival order. Delivery is idempotent: each
 * (queue id, recipient) carries a delivery id that the store remembers, so
 * a crash between the store's success and the queue's bookkeeping never
 * shows a message twice.
 *
 * All functions are thread-safe: many sessions submit at once and share
 * disk syncs (group commit).
 */
#ifndef HV_QUEUE_H
#define HV_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"
#include "lib/conf.h"
#include "lib/err.h"

/* A queue id: 16 lowercase hex digits, unique in this queue, sortable by
 * arrival. */
#define QUEUE_ID_LEN 16

typedef struct queue queue;

enum queue_rcpt_state {
    QUEUE_READY = 0,
    QUEUE_DEFERRED = 1,
    QUEUE_HELD = 2,
    QUEUE_DELIVERED = 3,
    QUEUE_BOUNCED = 4,
};

/* DSN NOTIFY (RFC 3461) bits of a recipient; 0 means the default
 * (FAILURE only). */
enum {
    QUEUE_NOTIFY_NEVER = 1u << 0,
    QUEUE_NOTIFY_SUCCESS = 1u << 1,
    QUEUE_NOTIFY_FAILURE = 1u << 2,
    QUEUE_NOTIFY_DELAY = 1u << 3,
};

typedef struct queue_rcpt_in {
    const char *address;  /* the recipient as given in RCPT TO (no brackets) */
    /* The local account it resolves to (aliases followed), or NULL when the
     * domain is not hosted here and the message goes to the relay. */
    const char *account;
    unsigned notify;      /* QUEUE_NOTIFY_* */
    const char *orcpt;    /* ORCPT parameter as given, or NULL */
} queue_rcpt_in;

typedef struct queue_envelope {
    const char *mail_from;   /* "" for the null sender <> */
    const queue_rcpt_in *rcpts;
    size_t nrcpts;
    const char *envid;       /* DSN ENVID, or NULL */
    int ret_headers_only;    /* DSN RET=HDRS */
    int body_8bit;           /* BODY=8BITMIME */
    int smtputf8;            /* SMTPUTF8 */
    /* Who sent it, for Received:, logs and fair scheduling. */
    const char *client_addr; /* textual IP */
    const char *client_helo;
    const char *auth_user;   /* submission: the authenticated account, else NULL */
} queue_envelope;

typedef struct queue_options {
    int64_t lifetime_s;     /* 0: 432000 (5 days) */
    int64_t retry_min_s;    /* 0: 60 */
    int64_t retry_max_s;    /* 0: 3600 */
    uint64_t max_message_size; /* 0: 50 MiB */
} queue_options;

/* Opens (creating when missing) the queue in dir and recovers it: every
 * message that was acknowledged is there, every torn write is cut. */
int queue_open(const char *dir, const queue_options *opt, queue **out, hv_err *err);
/* Fills options from the config (queue_lifetime, queue_retry_*, ...) and
 * opens conf's queue_dir. */
int queue_open_conf(const conf *c, queue **out, hv_err *err);
void queue_close(queue *q);

/* Stores one message (data: the message as received, CRLF line ends,
 * dot-stuffing removed, without the final "." line; the smtp service has
 * already prepended its Received: header). Returns 0 only when it is
 * durable; id_out receives its id (NUL-terminated). Wakes the runner. */
int queue_submit(queue *q, const queue_envelope *env, const void *data, size_t len,
                 char id_out[QUEUE_ID_LEN + 1], hv_err *err);

/* queue_submit without waiting for the disk: writes the record and
 * returns at once; done(ctx, 0, id, NULL) follows on the queue's syncing
 * thread once the record is durable (and the message visible to the
 * runner), or done(ctx, rc < 0, "", err) when the sync failed. Syncs are
 * shared by every message written meanwhile (group commit), and no thread
 * waits for them. Returns < 0 (and done is never called) when the record
 * could not be written at all. */
typedef void (*queue_done_fn)(void *ctx, int rc, const char *id, const hv_err *err);
int queue_submit_async(queue *q, const queue_envelope *env, const void *data, size_t len,
                       queue_done_fn done, void *ctx, hv_err *err);

/* --- the runner --- */

/* Starts the delivery threads (queue_delivery_threads of them) and the
 * control socket (run_dir/queue.sock, used by `haven queue`). Reads from c:
 * data_dir, directory, lmtp_port, listen, hostname, relay_routes,
 * relay_tls, queue_* limits. Returns once they run. */
int queue_runner_start(queue *q, const conf *c, hv_err *err);
/* Stops the threads; deliveries in flight finish or are left ready. */
void queue_runner_stop(queue *q);

/* --- the operator's commands (`haven queue`, docs/queue.md) --- */

/* Runs one command on q: argv[0] is list, show, hold, release, flush or
 * delete, the rest its arguments (IDs, --account A, --recipient R,
 * --state S, --all, --message). Appends the output to out. Returns 0, or
 * -errno with the reason (-EINVAL bad arguments, -ENOENT unknown id). The
 * runner serves the same on run_dir/queue.sock. */
int queue_control(queue *q, int argc, char **argv, buf *out, hv_err *err);

#endif
