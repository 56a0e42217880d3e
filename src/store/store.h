/*
 * store.h - one account's mail on disk: the account store API.
 *
 * An account is a folder holding three things (docs/store-format.md):
 *   log/    the truth: an append-only, segmented log of CRC32C-framed
 *           records, each with the account's next modseq;
 *   blobs/  message bodies, stored once, named by their SHA-256;
 *   index/  a checkpoint of the derived per-mailbox state, checksummed,
 *           rebuilt from the log whenever it is missing, stale or damaged.
 *
 * Every service and the haven command use this API. Several processes may
 * open one account: writers are serialised by an flock() on the account's
 * lock file (the kernel drops it when a holder dies, so it is never stale);
 * readers take no lock and see committed changes at their next call, which
 * re-reads the log tail (store_refresh).
 *
 * A write returns 0 only once its blob, its log record and the folders
 * naming them are durable. Opening after a crash truncates a torn tail and
 * replays from the last checkpoint, so it costs time in proportion to the
 * tail, not the account. A log record that fails its CRC before the tail is
 * damage: the account is refused (-EUCLEAN) with the segment and offset.
 *
 * A store_account handle is not thread-safe; use one handle per thread.
 */
#ifndef HV_STORE_H
#define HV_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "lib/err.h"

/* System flags are fixed bits; keywords get bits 8..63, assigned per account
 * on first use (store_keyword), so an account has at most 56 keywords. */
enum {
    STORE_FLAG_SEEN = 1u << 0,
    STORE_FLAG_ANSWERED = 1u << 1,
    STORE_FLAG_FLAGGED = 1u << 2,
    STORE_FLAG_DELETED = 1u << 3,
    STORE_FLAG_DRAFT = 1u << 4,
};
#define STORE_KEYWORD_FIRST 8
#define STORE_KEYWORD_MAX 56

/* SPECIAL-USE attributes of a mailbox (RFC 6154). */
enum {
    STORE_USE_ALL = 1u << 0,
    STORE_USE_ARCHIVE = 1u << 1,
    STORE_USE_DRAFTS = 1u << 2,
    STORE_USE_FLAGGED = 1u << 3,
    STORE_USE_JUNK = 1u << 4,
    STORE_USE_SENT = 1u << 5,
    STORE_USE_TRASH = 1u << 6,
};

enum store_flags_mode { STORE_FLAGS_ADD = 0, STORE_FLAGS_REMOVE = 1, STORE_FLAGS_REPLACE = 2 };

/* Log record kinds (docs/store-format.md gives their layout). */
enum store_rec_type {
    STORE_REC_MAILBOX_CREATE = 1,
    STORE_REC_MAILBOX_RENAME = 2,
    STORE_REC_MAILBOX_DELETE = 3,
    STORE_REC_APPEND = 4,
    STORE_REC_FLAGS = 5,
    STORE_REC_EXPUNGE = 6,
    STORE_REC_SUBSCRIBE = 7,
    STORE_REC_SETTING = 8,
    STORE_REC_KEYWORD = 9,
    STORE_REC_CHECKPOINT = 10,
    /* On disk only: an APPEND that carries the message body itself (see
     * store_append). Decoded as STORE_REC_APPEND with body set. */
    STORE_REC_APPEND_INLINE = 11,
};

typedef struct store_blob_id {
    uint8_t b[32];
} store_blob_id;

typedef struct store_msg {
    uint32_t uid;
    uint64_t flags;
    uint64_t modseq;
    int64_t internal_date; /* seconds since the epoch */
    uint64_t size;
    store_blob_id blob;
} store_msg;

typedef struct store_mailbox_info {
    uint32_t id;           /* stable for the mailbox's life, survives rename */
    const char *name;      /* UTF-8, '/' separates levels; valid until next call */
    uint32_t uidvalidity;
    uint32_t uidnext;
    uint64_t highestmodseq;
    uint32_t special_use;  /* STORE_USE_* */
    uint32_t exists;       /* messages */
    uint64_t total_size;   /* bytes, for STATUS=SIZE and quota */
} store_mailbox_info;

typedef struct store_uid_range {
    uint32_t lo, hi; /* inclusive */
} store_uid_range;

/* A decoded log record, as yielded by store_changes_since and the log
 * readers. Pointers point into the record and live until the callback
 * returns. */
typedef struct store_record {
    enum store_rec_type type;
    uint64_t modseq;
    int64_t time_ms;         /* wall clock when written */
    uint32_t mailbox;        /* mailbox id, where the record has one */
    uint32_t uid;            /* APPEND */
    uint64_t flags;          /* APPEND, FLAGS */
    int mode;                /* FLAGS: store_flags_mode; SUBSCRIBE: 1 on, 0 off */
    int64_t internal_date;   /* APPEND */
    uint64_t size;           /* APPEND */
    store_blob_id blob;      /* APPEND */
    const uint8_t *body;     /* APPEND: the body (size bytes) when it travels in the record */
    const char *delivery_id; /* APPEND: store_append_once's id (not NUL-terminated), or NULL */
    size_t delivery_id_len;
    uint32_t uidvalidity;    /* MAILBOX_CREATE */
    uint32_t special_use;    /* MAILBOX_CREATE */
    uint32_t keyword_bit;    /* KEYWORD */
    const char *name;        /* mailbox name, subscription, keyword, setting key */
    size_t name_len;
    const char *value;       /* SETTING */
    size_t value_len;
    const store_uid_range *ranges; /* FLAGS, EXPUNGE */
    size_t nranges;
    /* The raw framed bytes, so replication can ship the record as it is. */
    const uint8_t *raw;
    size_t raw_len;
    /* Where it is: segment number and byte offset of the frame. */
    uint64_t segment;
    uint64_t offset;
} store_record;

typedef struct store_account store_account;

typedef struct store_options {
    uint64_t segment_size;        /* 0: 64 MiB */
    uint32_t checkpoint_records;  /* 0: 4096 */
    uint64_t max_message_size;    /* 0: 100 MiB */
} store_options;

enum {
    STORE_OPEN_CREATE = 1 << 0,   /* create the account folder if missing */
    STORE_OPEN_READONLY = 1 << 1, /* never write, never truncate (verify) */
};

/* Opens the account stored in dir. name is used in messages only. */
int store_open(const char *dir, const char *name, int flags, const store_options *opt,
               store_account **out, hv_err *err);
void store_close(store_account *a);

/* Applies records committed by other handles since the last call. Every
 * read call below does this itself; it is public for idle loops. */
int store_refresh(store_account *a, hv_err *err);

uint64_t store_highest_modseq(const store_account *a);
const char *store_name(const store_account *a);

/* --- mailboxes --- */
size_t store_mailbox_count(store_account *a);
/* i in [0, count); the order is by name. Returns 0 or -ENOENT. */
int store_mailbox_at(store_account *a, size_t i, store_mailbox_info *out);
/* Finds by exact name (INBOX is matched case-insensitively). */
int store_mailbox_find(store_account *a, const char *name, store_mailbox_info *out);
int store_mailbox_get(store_account *a, uint32_t id, store_mailbox_info *out);
int store_mailbox_create(store_account *a, const char *name, uint32_t special_use,
                         uint32_t *id_out, hv_err *err);
int store_mailbox_rename(store_account *a, uint32_t id, const char *new_name, hv_err *err);
int store_mailbox_delete(store_account *a, uint32_t id, hv_err *err);

/* --- messages --- */
/* Stores the body (once per account) and appends it to a mailbox.
 * A message of up to STORE_INLINE_MAX bytes travels inside its log record,
 * so one fdatasync makes it durable, and the log is its only copy (no blob
 * file; the index checkpoint says where such bodies are). Larger ones:
 * blob synced, then record. */
#define STORE_INLINE_MAX (128u << 10)
int store_append(store_account *a, uint32_t mailbox, const void *data, size_t len,
                 uint64_t flags, int64_t internal_date, uint32_t *uid_out, hv_err *err);

/* A delivery that may be retried after a crash (LMTP from the queue): the
 * same delivery_id never appends twice. The id (1..STORE_DELIVERY_ID_MAX
 * printable ASCII bytes, e.g. "<queue id>-<recipient index>") travels in
 * the APPEND record, and the account remembers the ids of its last
 * STORE_DELIVERY_IDS_KEPT deliveries (across restarts: they are in the
 * index checkpoint, and replay restores the rest), which covers every retry
 * the queue makes after a crash. When the id was delivered already,
 * nothing is written, *dup_out is 1 and *uid_out the uid it got then (the
 * message may have been expunged since). */
#define STORE_DELIVERY_ID_MAX 64
#define STORE_DELIVERY_IDS_KEPT 4096
int store_append_once(store_account *a, uint32_t mailbox, const char *delivery_id,
                      const void *data, size_t len, uint64_t flags, int64_t internal_date,
                      uint32_t *uid_out, int *dup_out, hv_err *err);

/* Several appends made durable together (one set of syncs): import, LMTP
 * batches, replication. Add with store_batch_add, then commit. uid_out of
 * each add is filled at commit. A batch holds the account's write lock from
 * the first add until commit or abort. */
typedef struct store_batch store_batch;
int store_batch_begin(store_account *a, store_batch **out, hv_err *err);
int store_batch_add(store_batch *b, uint32_t mailbox, const void *data, size_t len,
                    uint64_t flags, int64_t internal_date, uint32_t *uid_out, hv_err *err);
/* store_append_once inside a batch: an id delivered already (or added to
 * this batch before) adds nothing and sets *dup_out. */
int store_batch_add_once(store_batch *b, uint32_t mailbox, const char *delivery_id,
                         const void *data, size_t len, uint64_t flags, int64_t internal_date,
                         uint32_t *uid_out, int *dup_out, hv_err *err);
int store_batch_commit(store_batch *b, hv_err *err); /* frees b */
void store_batch_abort(store_batch *b);              /* frees b, writes nothing */

/* COPY: new messages in dst naming the same blobs; no new blob is written.
 * uids_out (may be NULL) receives the new uids, in the order of src uids. */
int store_copy(store_account *a, uint32_t src, const uint32_t *uids, size_t n, uint32_t dst,
               uint32_t *uids_out, hv_err *err);

/* Changes flags of the given uids (missing uids are skipped). When
 * unchanged_since is non-zero, messages whose modseq is greater are left
 * alone and reported in *n_failed (CONDSTORE). */
int store_set_flags(store_account *a, uint32_t mailbox, const uint32_t *uids, size_t n,
                    enum store_flags_mode mode, uint64_t flags, uint64_t unchanged_since,
                    size_t *n_failed, hv_err *err);
int store_expunge(store_account *a, uint32_t mailbox, const uint32_t *uids, size_t n,
                  hv_err *err);

/* Keyword name -> flag bit; creates one when create is set. -ENOSPC when the
 * account has no bits left, -ENOENT when unknown and !create. */
int store_keyword(store_account *a, const char *name, int create, uint64_t *bit_out,
                  hv_err *err);
/* Name of a keyword bit, or NULL. */
const char *store_keyword_name(store_account *a, uint64_t bit);

int store_subscribe(store_account *a, const char *name, int on, hv_err *err);
int store_is_subscribed(store_account *a, const char *name);
/* Subscribed names (mailboxes may not exist): count, and the i-th; the
 * pointer is valid until the next call on the account. */
size_t store_subscription_count(store_account *a);
const char *store_subscription_at(store_account *a, size_t i);
int store_setting_set(store_account *a, const char *key, const char *value, hv_err *err);
const char *store_setting_get(store_account *a, const char *key);

/* --- reading --- */
/* Messages of a mailbox, in uid order: count, and the i-th (0-based). */
int store_msg_count(store_account *a, uint32_t mailbox, uint32_t *count_out);
int store_msg_at(store_account *a, uint32_t mailbox, uint32_t i, store_msg *out);
/* Index of the first message with uid >= uid (== count when none). */
int store_msg_seek(store_account *a, uint32_t mailbox, uint32_t uid, uint32_t *i_out);

typedef int (*store_msg_cb)(void *ctx, const store_msg *m);
/* Calls cb for each message with lo <= uid <= hi; a non-zero return stops. */
int store_msg_iter(store_account *a, uint32_t mailbox, uint32_t lo, uint32_t hi,
                   store_msg_cb cb, void *ctx, hv_err *err);

typedef int (*store_record_cb)(void *ctx, const store_record *r);
/* Every committed log record with modseq > since, in order (expunges and
 * mailbox changes included). The basis of CONDSTORE/QRESYNC, replication
 * and moves. Checkpoint records (local) are not yielded. */
int store_changes_since(store_account *a, uint64_t since, store_record_cb cb, void *ctx,
                        hv_err *err);

/* Opens a blob for reading; returns an fd (caller closes) and its size,
 * reading from offset 0 (for a body kept in the log, a memfd holding a
 * copy of it). */
int store_blob_open(store_account *a, const store_blob_id *id, int *fd_out, uint64_t *size_out,
                    hv_err *err);
/* Reads a whole blob into a malloc'd buffer (small messages, tests). */
int store_blob_read(store_account *a, const store_blob_id *id, char **out, size_t *len,
                    hv_err *err);

/* A checksum of the account's state (mailboxes, messages, flags,
 * subscriptions, settings), kept up to date incrementally: two copies with
 * the same state have the same digest, whatever their history. */
void store_digest(store_account *a, uint8_t out[32]);

/* Writes an index checkpoint now (writers also do it every
 * checkpoint_records records). */
int store_checkpoint(store_account *a, hv_err *err);

/* --- replication: a replica applies the primary's records as they are ---
 *
 * The primary reads its records with store_changes_since (r->raw, r->raw_len
 * are the framed bytes) and ships them, with the blobs that non-inline
 * APPENDs name, to the replica. The replica first stores those blobs with
 * store_blob_import, then applies the frames with store_apply_frames: the
 * same bytes, the same modseqs, so both sides reach the same digest.
 */

/* Stores a blob received from elsewhere, durably (file and folder synced),
 * after checking that data hashes to id (-EBADMSG otherwise). */
int store_blob_import(store_account *a, const store_blob_id *id, const void *data, size_t len,
                      hv_err *err);
/* Appends framed records (one or more, back to back, as yielded in
 * store_record.raw) durably and applies them. Every frame's CRC is checked;
 * the first must carry modseq highest+1 and each next one the next modseq
 * (-ESPIPE otherwise: the caller resends from store_highest_modseq()+1);
 * CHECKPOINT records are refused; an APPEND whose body is not inline needs
 * its blob present (-ENOENT). All or nothing: on error nothing is written. */
int store_apply_frames(store_account *a, const void *frames, size_t len, hv_err *err);

/* --- fencing (replication and failover) ---
 *
 * While the file at path exists, every write through this process's
 * handles fails with -EROFS, the file's first line being the reason
 * ("replica of store X", "fenced: store promoted elsewhere at epoch N").
 * Replicas keep applying the primary's frames (store_apply_frames). The
 * file is checked at every write, so creating or removing it takes effect
 * at once in every process. Services and the haven command set it to
 * DATA/fence; NULL or "" turns fencing off (tests, tools). */
void store_set_fence(const char *path);
/* 1 when fenced now (why gets the reason), else 0. */
int store_fenced(char *why, size_t len);

/* One account's fence (ACCOUNT/fence): a move writes it before shipping
 * its final delta, so the account is written nowhere while the directory
 * flips, and leaves it once the account lives elsewhere. Writes check it
 * under the account lock; store_account_fence takes that lock once after
 * writing the file, so on return no write that missed the fence is still
 * in flight. Replicas and moves applying frames are not stopped by it. */
int store_account_fence(store_account *a, const char *why, hv_err *err);
int store_account_unfence(store_account *a, hv_err *err);
/* 1 when fenced (why gets the reason when not NULL), else 0. */
int store_account_fenced(store_account *a, char *why, size_t len);

/* --- offline tools (haven verify / reconstruct) --- */
typedef void (*store_report_cb)(void *ctx, const char *problem);
/* Checks every CRC, every blob hash and the index against the log; reports
 * each problem with its place. Returns the number of problems (>= 0) or a
 * negative error if the account could not be read at all. */
int store_verify(const char *dir, const char *name, store_report_cb report, void *ctx,
                 hv_err *err);
/* Rebuilds the index checkpoint from the log alone. */
int store_reconstruct(const char *dir, const char *name, hv_err *err);

/* The folder of an account under a store's data folder:
 * DATA/accounts/DOMAIN/LOCALPART. Returns -EINVAL for unsafe addresses. */
int store_account_dir(const char *data_dir, const char *address, char *out, size_t outlen,
                      hv_err *err);

/* How many accounts DATA holds (folders DATA/accounts/DOMAIN/LOCALPART;
 * names starting with '.' are work in progress). -errno if unreadable. */
long store_account_count(const char *data_dir);

/* Takes the account's write lock once and lets go (an exclusive flock on
 * ACCOUNT/lock), waiting for a writer that holds it when wait is set;
 * without wait, -EWOULDBLOCK when one does. Writers check the fences
 * under that lock, so after a fence is written one barrier per account
 * means every write that got past the check is in the log. 0 at once
 * when the account has no lock file (never opened for writing). */
int store_account_barrier(const char *acct_dir, int wait, hv_err *err);

/* Counters for tests and benchmarks (process-wide). */
typedef struct store_stats {
    uint64_t records_replayed; /* applied from the log at open/refresh */
    uint64_t index_rebuilds;   /* full rebuilds because the index was bad */
    uint64_t tail_truncations; /* torn tails cut at open */
} store_stats;
void store_get_stats(store_stats *out);

#endif
