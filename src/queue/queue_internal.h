/*
 * queue_internal.h - what the queue's own files share (and its tests use).
 *
 * queue_log.c    the log on disk: segments, frames, encoding, recovery,
 *                appends with group commit, segment reclaim and compaction;
 * queue.c        open/close/submit, the message table, state changes;
 * queue_sched.c  the picker: fair round robin over senders and
 *                destinations, per-destination caps, retry timers, release;
 * queue_dsn.c    delivery status notifications (RFC 3464);
 * queue_ctl.c    the operator commands (list, show, hold, ...) and the
 *                control socket;
 * queue_runner.c the delivery threads (LMTP, relay), the directory watch.
 *
 * One mutex (queue.mu) guards everything in memory. Disk reads of message
 * data and fdatasync happen outside it, with the segment pinned by a
 * reference count.
 */
#ifndef HV_QUEUE_INTERNAL_H
#define HV_QUEUE_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "lib/buf.h"
#include "queue/queue.h"

/* ---- on disk (docs/queue-format.md) ---- */
#define QLOG_MAGIC "HAVENQLG"
#define QLOG_SEG_HDR 48
#define QLOG_FRAME_HDR 8              /* u32 body length, u32 crc32c */
#define QLOG_BODY_HDR 24              /* type, version, reserved, seq, time */
#define QLOG_MAX_BODY ((64u + 1u) << 20) /* 50 MiB messages and their envelope fit */
#define QLOG_VERSION 1
#define QLOG_SEG_SIZE_DEFAULT (64u << 20)

enum qrec_type {
    QREC_MESSAGE = 1, /* a message: envelope, recipient states, data */
    QREC_STATE = 2,   /* one recipient's new state */
    QREC_DELETE = 3,  /* an operator removed the message */
};

/* Recipient states beyond the public ones: removed by an operator. */
#define QSTATE_DELETED 5

/* Why a recipient is held, which decides what releases it. */
enum qhold_kind {
    QHOLD_NONE = 0,
    QHOLD_ACCOUNT = 1,  /* account not active: released when it is */
    QHOLD_STORE = 2,    /* store not answering: released when it answers */
    QHOLD_OPERATOR = 3, /* `haven queue hold`: released only by an operator */
};

#define QRCPT_AUTO_HELD(r) ((r)->state == QUEUE_HELD && (r)->hold_kind != QHOLD_OPERATOR)

/* Message flags (on disk). */
#define QMSG_RET_HDRS 0x1u
#define QMSG_8BIT 0x2u
#define QMSG_SMTPUTF8 0x4u
#define QMSG_IS_DSN 0x8u /* generated here: never bounced */

/* Recipient flags (on disk). */
#define QRCPT_DELAY_SENT 0x1u /* a "delayed" DSN went out already */

/* ---- in memory ---- */
typedef struct qseg {
    uint64_t no;
    int fd;
    uint64_t size;       /* bytes in the file (the tail, for the last one) */
    uint32_t live;       /* messages whose newest copy lives here */
    uint64_t live_bytes; /* their frames' bytes */
    int refs;            /* users of fd outside the lock */
    int gone;            /* unlinked: close fd once refs is 0 */
    int damaged;         /* kept (renamed .damaged) instead of deleted */
    struct qseg *next;   /* in number order */
} qseg;

struct qmsg;
struct qdest;

typedef struct qrcpt {
    char *address;
    char *account; /* NULL: remote */
    char *orcpt;   /* NULL when none */
    unsigned notify;
    uint8_t state;     /* enum queue_rcpt_state or QSTATE_DELETED */
    uint8_t hold_kind; /* enum qhold_kind while HELD */
    uint8_t flags;     /* QRCPT_* */
    uint32_t attempts;
    int64_t next_try; /* ms since the epoch, DEFERRED only */
    char *reason;     /* last error or hold reason, "" when none */
    /* scheduling */
    struct qmsg *msg;
    uint32_t idx;
    int busy;              /* a delivery thread has it: 1 counted in its
                              destination's inflight, 2 riding along */
    int queued;            /* in a ready FIFO (sd or release) */
    struct qrcpt *next_ready;
    size_t heap_idx;       /* in the retry heap, SIZE_MAX when not */
    struct qdest *dest;
} qrcpt;

typedef struct qmsg {
    uint64_t id;
    int64_t arrival; /* ms since the epoch */
    uint32_t flags;
    char *mail_from, *envid, *client_addr, *client_helo, *auth_user;
    uint64_t size;
    qseg *seg;          /* where its newest copy lives */
    uint64_t frame_off; /* of that frame in seg */
    uint32_t frame_len;
    uint32_t data_rel;  /* offset of the data within the frame */
    uint32_t nrcpts;
    qrcpt *rcpts;
    uint32_t unfinished; /* recipients not delivered, bounced or deleted */
    uint32_t busy;       /* recipients a delivery thread has */
    int in_table;
    struct qmsg *hnext;
    struct qsender *sender;
} qmsg;

/* One sender's ready recipients for one destination, in arrival order. */
typedef struct qsd {
    struct qsender *sender;
    struct qdest *dest;
    qrcpt *head, *tail;
    struct qsd *next, *prev;  /* ring of the sender's non-empty sds */
    struct qsd *dnext, *dprev; /* list of the destination's sds */
} qsd;

typedef struct qsender {
    char *key;
    qsd *ring;          /* cursor into its ring of non-empty sds */
    size_t nsd;
    uint32_t refs;      /* messages naming it */
    struct qsender *next, *prev; /* global ring of senders with ready mail */
    int in_ring;
    struct qsender *hnext;
} qsender;

/* A destination: a local account or a remote domain ("@domain"). */
typedef struct qdest {
    char *key;
    int remote;
    int inflight;
    uint32_t refs;     /* recipients pointing here */
    uint32_t held;     /* of them, HELD for the account or the store (not
                          by an operator): what a release looks for */
    int releasing;     /* delivering its released mail one at a time */
    qrcpt *rel_head, *rel_tail;
    struct qdest *rnext, *rprev; /* ring of releasing destinations */
    int in_rring;
    qsd *sds;          /* its sds (one per sender with ready mail here) */
    struct qdest *hnext;
} qdest;

/* A damaged place found at open. */
typedef struct qdamage {
    uint64_t seg, off, bytes;
} qdamage;

/* A pending bounce: recipients of one message whose DSN is being made. */
typedef struct qbounce {
    qmsg *msg;
    uint32_t *idx;
    char **reason;
    size_t n;
} qbounce;

/* Test hooks and tuning beyond queue_options. */
typedef struct queue_tuning {
    uint64_t segment_size; /* 0: QLOG_SEG_SIZE_DEFAULT */
    /* The clock (ms since the epoch); NULL: the real one. */
    int64_t (*now_ms)(void *ctx);
    void *now_ctx;
} queue_tuning;

struct queue_runner;

struct queue {
    char *dir;
    int lock_fd;
    queue_options opt;
    queue_tuning tune;
    pthread_mutex_t mu;
    pthread_cond_t sync_cv;   /* a group commit finished */
    pthread_cond_t work_cv;   /* new work for the delivery threads */
    /* queue_submit_async: written, waiting for a sync (queue.c) */
    struct qpending *pend_head, **pend_tail;
    pthread_cond_t pend_cv;   /* pending submits, or stop */
    pthread_t syncer;
    int syncer_on, syncer_stop;
    /* the log */
    qseg *segs, *tail;        /* list; tail is written to */
    uint64_t seq;             /* last record sequence number */
    uint64_t written;         /* bytes appended since open (all segments) */
    uint64_t synced;          /* of them, known durable */
    int syncing;              /* a leader is in fdatasync */
    uint64_t nsyncs, nsubmits; /* for the log and tests: syncs shared */
    int broken;               /* a write or sync failed: refuse more */
    char broken_msg[256];
    uint64_t last_id;
    qdamage *damage;
    size_t ndamage;
    size_t dropped_tail;      /* bytes cut at open */
    /* messages */
    qmsg **tab;
    size_t tab_cap, nmsgs;
    /* scheduling */
    qsender **stab;
    size_t stab_cap, nsenders_all;
    qsender *sring;           /* cursor into senders with ready mail */
    qdest **dtab;
    size_t dtab_cap, ndests;
    qdest *rring;             /* cursor into releasing destinations */
    int pick_release_next;    /* alternate senders and releases */
    qrcpt **heap;             /* retry timers, earliest first */
    size_t heap_len, heap_cap;
    int account_cap, domain_cap;
    char hostname[256];       /* for DSNs (Reporting-MTA) */
    struct queue_runner *runner;
};

/* ---- queue.c ---- */
int64_t queue_now(queue *q);
int queue_open_ex(const char *dir, const queue_options *opt, const queue_tuning *tune,
                  queue **out, hv_err *err);
qmsg *queue_find(queue *q, uint64_t id); /* locked */
void queue_table_insert(queue *q, qmsg *m);
void queue_format_id(uint64_t id, char out[QUEUE_ID_LEN + 1]);
int queue_parse_id(const char *s, uint64_t *out);
/* Submits a message that also finishes recipients of another (a DSN for
 * bounced recipients: both happen in one record, so a crash cannot leave
 * one without the other). parent may be NULL. */
int queue_submit_ex(queue *q, const queue_envelope *env, uint32_t flags, const void *data,
                    size_t len, const qbounce *parent, char id_out[QUEUE_ID_LEN + 1],
                    hv_err *err);
/* Changes a recipient's state in memory and appends its STATE record
 * (locked). The record is synced with the next group commit, not now. */
void queue_set_state(queue *q, qrcpt *r, int state, int hold_kind, const char *reason);
/* Waits (locked) until everything appended so far is durable. */
int queue_sync_locked(queue *q, hv_err *err);
/* Drops a finished or deleted message from memory (locked). */
void queue_msg_finished(queue *q, qmsg *m);
void queue_msg_free(qmsg *m);
/* Reads a message's data (unlocked; pins the segment). */
int queue_read_data(queue *q, qmsg *m, buf *out, hv_err *err);
/* Sorted snapshot of the table (locked); caller frees the array. */
qmsg **queue_sorted(queue *q, size_t *n);
const char *queue_state_name(int state);

/* ---- queue_log.c ---- */
int qlog_open(queue *q, hv_err *err);   /* recovery: fills the table */
void qlog_close(queue *q);
/* Appends records (locked). They are complete frames from qlog_frame*;
 * seq and CRC are filled in here. Sets *end to the position to sync to.
 * Returns the segment and frame offset of the first frame. */
int qlog_append(queue *q, buf *frames, qseg **seg_out, uint64_t *off_out, uint64_t *end,
                hv_err *err);
/* qlog_append of one frame whose last tail_len bytes are at tail rather
 * than in frame (a message's data, written without copying it into the
 * frame); frame's length field counts them. */
int qlog_append_tail(queue *q, buf *frame, const void *tail, size_t tail_len, qseg **seg_out,
                     uint64_t *off_out, uint64_t *end, hv_err *err);
/* Waits (locked) until position end is durable; one waiter syncs for all. */
int qlog_sync_to(queue *q, uint64_t end, hv_err *err);
/* Begins a frame of type in b; qlog_frame_end fills its length. */
size_t qlog_frame_begin(buf *b, int type, int64_t now);
void qlog_frame_end(buf *b, size_t start);
void qlog_put_str(buf *b, const char *s);
/* Encodes a MESSAGE body (after qlog_frame_begin) for m with its data
 * (data NULL: all but the data's bytes, for qlog_append_tail). */
void qlog_put_message(buf *b, const qmsg *m, const qbounce *parent, const void *data,
                      size_t len, uint32_t *data_rel);
void qlog_put_state(buf *b, const qmsg *m, const qrcpt *r);
/* Deletes finished prefix segments and copies long-lived messages
 * forward (takes and drops the lock itself). */
int qlog_reclaim(queue *q, hv_err *err);
void qseg_unref(queue *q, qseg *s); /* locked */

/* ---- queue_sched.c ---- */
void sched_attach(queue *q, qmsg *m);  /* new or recovered message */
void sched_detach(queue *q, qmsg *m);  /* leaving memory */
void sched_make_ready(queue *q, qrcpt *r);
void sched_unqueue(queue *q, qrcpt *r);
void sched_heap_push(queue *q, qrcpt *r);
void sched_heap_remove(queue *q, qrcpt *r);
/* Moves due retries to ready; returns the next due time or INT64_MAX. */
int64_t sched_due(queue *q, int64_t now);
/* The next recipient to deliver, or NULL; marks it busy and counts it in
 * its destination (locked). */
qrcpt *sched_pick(queue *q, int64_t now);
/* Other ready recipients of r's message for the same remote domain. */
size_t sched_take_siblings(queue *q, qrcpt *r, qrcpt **out, size_t max);
/* A delivery of r ended: it leaves the busy set (and, when its message
 * left the table meanwhile, its destination). */
void sched_release_busy(queue *q, qrcpt *r);
/* Retry every deferred recipient now. */
size_t sched_flush(queue *q);
/* Releases held recipients of dest whose hold kind is in kinds (bit mask
 * 1 << kind): ready again, delivered one at a time in arrival order. */
size_t sched_release_dest(queue *q, qdest *d, unsigned kinds);
/* Releases one held recipient (an operator's release by id). */
void sched_release_one(queue *q, qrcpt *r);
qdest *sched_dest_find(queue *q, const char *key);

/* Outcome of one recipient's delivery attempt. */
enum qoutcome {
    QOUT_DELIVERED = 0,
    QOUT_DEFERRED = 1, /* temporary failure: retry later */
    QOUT_HELD = 2,     /* account not active or store down: hold_kind says */
    QOUT_BOUNCED = 3,  /* permanent failure: DSN */
    QOUT_RELAYED = 4,  /* delivered to a server that does not do DSN */
    QOUT_REQUEUE = 5,  /* not attempted: ready again, no record */
};
typedef struct qresult {
    enum qoutcome out;
    int hold_kind;
    char reason[512];
} qresult;

/* Applies the outcomes of a delivery of n recipients (all of one
 * message), then makes any DSN it calls for. Takes the lock itself. */
typedef int (*queue_resolve_fn)(void *ctx, const char *address, char account[256]);
void queue_finish(queue *q, qrcpt **r, const qresult *res, size_t n,
                  queue_resolve_fn resolve, void *resolve_ctx);
/* Maps an LMTP or SMTP reply to an outcome (code 0: no reply). */
void queue_reply_result(int lmtp, int code, const char *enhanced, const char *text,
                        qresult *out);

/* ---- queue_dsn.c ---- */
enum qdsn_kind { QDSN_FAILED, QDSN_DELAYED, QDSN_DELIVERED, QDSN_RELAYED };
typedef struct qdsn_rcpt {
    const char *address;
    const char *orcpt;
    const char *status;     /* "5.1.1" */
    const char *diagnostic; /* the remote reply, or NULL */
    const char *remote_mta; /* or NULL */
} qdsn_rcpt;
/* Composes the DSN for message m (its data in data/len) to m's sender. */
void qdsn_compose(buf *out, const char *hostname, int64_t now_ms, const qmsg *m,
                  const void *data, size_t len, enum qdsn_kind kind, int64_t retry_until,
                  const qdsn_rcpt *rcpts, size_t n, uint64_t dsn_id);

/* ---- queue_ctl.c ---- */
/* Serves queue_control on a unix socket at path (mode 0600) from a
 * thread of its own; NULL on failure. */
void *queue_ctl_start(queue *q, const char *path, hv_err *err);
void queue_ctl_stop(void *ctl);

#endif
