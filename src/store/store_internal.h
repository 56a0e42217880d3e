/*
 * store_internal.h - what the store's own files share and nobody else sees.
 *
 * record.c  encodes/decodes log records (the frame and body layouts);
 * segment.c segment files: listing, reading frames, appending, truncating;
 * blob.c    content-addressed message bodies;
 * index.c   the derived state in memory, applying records, the digest,
 *           and the checkpoint file;
 * account.c the public API, locking and recovery;
 * verify.c  the offline checks.
 */
#ifndef HV_STORE_INTERNAL_H
#define HV_STORE_INTERNAL_H

#include <stdint.h>

#include "lib/buf.h"
#include "store/store.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the index checkpoint copies arrays as they are; only little-endian hosts are supported"
#endif

/* ---- record.c ---- */
#define REC_FRAME_HDR 8          /* u32 body length, u32 crc32c */
#define REC_BODY_HDR 24          /* type, version, reserved, mailbox, modseq, time */
#define REC_MAX_BODY (64u << 20) /* larger lengths are damage, not records */
#define REC_VERSION 1
/* Bits of the header's flags field (was "reserved", always 0 before). */
#define REC_FLAG_DELIVERY_ID 0x0001 /* APPEND: a delivery id (a name) follows the blob id */

/* Appends one framed record to out. r->raw, segment and offset are ignored. */
void rec_encode(buf *out, const store_record *r);
/* Decodes the body of a frame (after the 8-byte frame header). Ranges are
 * decoded into scratch. Returns 0 or -EINVAL when the body is malformed. */
int rec_decode(const uint8_t *body, size_t len, store_record *r, buf *scratch);
/* CRC of a frame: over the length field, then the body. */
uint32_t rec_crc(const uint8_t *len_field, const uint8_t *body, size_t len);
const char *rec_type_name(int type);

/* ---- segment.c ---- */
#define SEG_HDR 40
#define SEG_MAGIC "HAVENLOG"

typedef struct seg_list {
    uint64_t *no;
    size_t n;
} seg_list;

int log_list_segments(const char *logdir, seg_list *out, hv_err *err);
void log_seg_path(const char *logdir, uint64_t no, char *out, size_t outlen);
/* The end of the log that the last synced commit made durable (the
 * account's log/durable mark, account.c), for readers in other processes:
 * a record ending at or before it is on disk. -ENOENT without a mark. */
int store_durable_end(const char *acct_dir, uint64_t *seg, uint64_t *off);
/* Creates segment no with its header, durable (file and folder synced). */
int log_seg_create(const char *logdir, uint64_t no, uint64_t base_modseq, hv_err *err);
/* Checks a segment header; fills base_modseq. */
int log_seg_check_header(int fd, uint64_t no, uint64_t *base_modseq, hv_err *err);

/* A sequential frame reader over one segment, reading in large chunks. */
typedef struct log_reader {
    int fd;
    uint64_t seg;
    uint64_t off;      /* offset of the next frame */
    uint64_t size;     /* file size when opened/refreshed */
    buf chunk;         /* bytes [chunk_off, chunk_off + chunk.len) of the file */
    uint64_t chunk_off;
} log_reader;

enum log_next { LOG_FRAME = 0, LOG_END = 1, LOG_BAD = 2 };
void log_reader_init(log_reader *lr, int fd, uint64_t seg, uint64_t off, uint64_t size);
void log_reader_free(log_reader *lr);
/* Next frame: on LOG_FRAME, *frame points at the whole frame (header and
 * body), valid until the next call, and lr->off has moved past it. LOG_END:
 * clean end of file. LOG_BAD: an incomplete or corrupt frame at lr->off. */
enum log_next log_reader_next(log_reader *lr, const uint8_t **frame, size_t *len);
/* After LOG_BAD at off: is there any valid frame later in the file? (Then
 * the bad frame is damage, not a torn tail.) Fills *found_off. */
int log_find_valid_after(int fd, uint64_t off, uint64_t size, uint64_t after_modseq,
                         uint64_t *found_off);

/* ---- blob.c ---- */
void blob_path(const char *acct_dir, const store_blob_id *id, char *out, size_t outlen);
/* Writes the blob unless present. With sync, the blob and its folder are
 * durable on return; without, the caller syncs later (batches). */
int blob_write(const char *acct_dir, const void *data, size_t len, store_blob_id *id_out,
               int sync, hv_err *err);
/* Writes (or rewrites) a blob file without syncing: for bodies whose
 * durable copy is in the log (inline appends). */
int blob_put(const char *acct_dir, const store_blob_id *id, const void *data, size_t len,
             hv_err *err);
/* Hashes the blob file and compares with its name and expected size. */
int blob_check(const char *acct_dir, const store_blob_id *id, uint64_t size, hv_err *err);

/* ---- index.c ---- */
typedef struct ix_mbox {
    uint32_t id;
    char *name;
    uint32_t uidvalidity, uidnext, special_use;
    uint64_t highestmodseq, total_size;
    uint32_t n, cap;
    int mapped; /* arrays point into the checkpoint's mapping */
    uint32_t *uid;
    uint64_t *flags;
    uint64_t *modseq;
    int64_t *idate;
    uint64_t *size;
    store_blob_id *blob;
} ix_mbox;

typedef struct ix_kv {
    char *key;
    char *val;
} ix_kv;

/* One remembered delivery (store_append_once): the id is kept as the first
 * 8 bytes of its SHA-256, which is all a duplicate check needs. */
typedef struct ix_did {
    uint64_t hash;
    uint32_t mailbox, uid;
} ix_did;

/* Where an inline append's body is in the log: the frame of the
 * APPEND_INLINE record carrying it (the INLB section of the checkpoint,
 * sorted by blob id; 56 bytes, used in place from the mapping). */
typedef struct ix_inl {
    store_blob_id id;
    uint64_t seg, off;
    uint32_t len; /* the whole frame */
    uint32_t reserved;
} ix_inl;

typedef struct store_index {
    ix_mbox **mb; /* sorted by name */
    size_t nmb;
    char *keywords[STORE_KEYWORD_MAX];
    char **subs;
    size_t nsubs;
    ix_kv *settings;
    size_t nsettings;
    uint64_t modseq;         /* highest applied */
    uint32_t next_mailbox_id;
    uint32_t last_uidvalidity;
    uint64_t digest[4];      /* additive lanes, see index.c */
    /* Log position just after the last applied record, and that record. */
    uint64_t seg, off;
    uint64_t last_seg, last_off;
    /* The last STORE_DELIVERY_IDS_KEPT delivery ids, a ring: oldest at
     * did_head once full. Allocated on first use. */
    ix_did *dids;
    uint32_t ndids, dids_cap, did_head;
    void *map; /* the checkpoint the arrays may point into */
    size_t maplen;
    /* Inline bodies up to the checkpoint, sorted by id: in map, or in
     * inl_map (the checkpoint this process wrote since it loaded map). */
    const ix_inl *inl;
    uint64_t ninl;
    void *inl_map;
    size_t inl_maplen;
} store_index;

void ix_init(store_index *ix);
void ix_free(store_index *ix);
/* Applies a decoded record. Returns 0, or -EUCLEAN with a reason when the
 * record cannot follow the current state (the log is damaged). */
int ix_apply(store_index *ix, const store_record *r, hv_err *err);
ix_mbox *ix_mbox_by_id(const store_index *ix, uint32_t id);
ix_mbox *ix_mbox_by_name(const store_index *ix, const char *name);
/* Index of the first message with uid >= uid. */
uint32_t ix_seek(const ix_mbox *m, uint32_t uid);
void ix_digest_final(const store_index *ix, uint8_t out[32]);
uint64_t ix_did_hash(const char *id, size_t len);
void ix_did_add(store_index *ix, uint64_t hash, uint32_t mailbox, uint32_t uid);
const ix_did *ix_did_find(const store_index *ix, uint64_t hash);
/* Writes the checkpoint, with inl[ninl] (sorted by id) as its INLB
 * section; *inl_at gets the file offset of inl[0] (for ix_map_inl). */
int ix_save(const store_index *ix, const ix_inl *inl, size_t ninl, const char *path,
            uint64_t *inl_at, hv_err *err);
/* Points ix->inl at the ninl entries at offset at of the checkpoint at
 * path (just written by ix_save), mapped; the previous ones are let go. */
int ix_map_inl(store_index *ix, const char *path, uint64_t at, uint64_t ninl, hv_err *err);
/* The entry for id among ix->inl, or NULL. */
const ix_inl *ix_inl_find(const store_index *ix, const store_blob_id *id);
/* Loads a checkpoint; -EUCLEAN (with reason) when damaged, -ENOENT if absent. */
int ix_load(store_index *ix, const char *path, hv_err *err);
/* Compares two indexes; reports differences; returns their number. */
int ix_compare(const store_index *a, const store_index *b, store_report_cb report, void *ctx,
               const char *name);

/* ---- shared helpers ---- */
int mailbox_name_normalize(const char *in, char *out, size_t outlen, hv_err *err);

#endif
