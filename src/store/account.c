/*
 * account.c - the store API: opening, recovery, reads and durable writes.
 *
 * The in-memory index (index.c) always reflects the log up to a position
 * (segment, offset). Every write goes the same way: take the account lock,
 * catch up with the log (other processes may have written), encode the new
 * records with the next modseqs, append them at the end of the current
 * segment, fdatasync, then read them back through the same replay path that
 * recovery uses. One code path applies records, whoever wrote them.
 *
 * Recovery is that replay too: from the checkpoint's position to the end.
 * An invalid frame at the very end of the last segment is a torn write: a
 * writer (holding the lock, so nobody is mid-write) cuts it off and logs
 * what was dropped; a reader just stops before it. An invalid frame with a
 * valid one after it is damage, and the account is refused.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/crc32c.h"
#include "lib/fsutil.h"
#include "lib/log.h"
#include "lib/sha256.h"
#include "store/store_internal.h"

#define OPEN_REBUILD (1 << 8) /* internal: ignore the checkpoint */

struct store_account {
    char *dir, *name;
    char logdir[4096], ckpt_path[4096];
    int flags;
    store_options opt;
    int lock_fd;
    int lock_depth;
    int durable_fd;       /* log/durable, opened at the first synced commit */
    int seg_fd;           /* the segment at ix.seg */
    store_index ix;
    uint32_t since_ckpt;  /* records applied since the last checkpoint */
    int fresh;            /* lock held and caught up with the log: no replay needed */
    buf wbuf;             /* records being written */
    buf scratch;          /* decoded ranges */
    /* Inline appends applied since the checkpoint in ix: where each body is
     * in the log (their only copy: no blob file is written for them). The
     * checkpoint's INLB section (ix.inl) has the ones before it; the next
     * checkpoint merges both. Open addressing on the id. */
    struct inline_ref {
        store_blob_id id;
        uint64_t seg, off;
        uint32_t len; /* frame length; 0 = empty slot */
    } *inl;
    size_t inl_n, inl_cap;
};

static uint64_t inl_hash(const store_blob_id *id)
{
    uint64_t h;
    memcpy(&h, id->b, 8);
    return h;
}

static void inl_put(store_account *a, const store_blob_id *id, uint64_t seg, uint64_t off,
                    uint32_t len)
{
    if ((a->inl_n + 1) * 2 > a->inl_cap) {
        size_t cap = a->inl_cap ? a->inl_cap * 2 : 64;
        struct inline_ref *old = a->inl;
        size_t oldcap = a->inl_cap;
        a->inl = calloc(cap, sizeof(*a->inl));
        a->inl_cap = cap;
        a->inl_n = 0;
        for (size_t i = 0; i < oldcap; i++)
            if (old[i].len)
                inl_put(a, &old[i].id, old[i].seg, old[i].off, old[i].len);
        free(old);
    }
    size_t i = inl_hash(id) & (a->inl_cap - 1);
    while (a->inl[i].len && memcmp(a->inl[i].id.b, id->b, 32) != 0)
        i = (i + 1) & (a->inl_cap - 1);
    if (!a->inl[i].len)
        a->inl_n++;
    a->inl[i] = (struct inline_ref){*id, seg, off, len};
}

static const struct inline_ref *inl_get(const store_account *a, const store_blob_id *id)
{
    if (!a->inl_cap)
        return NULL;
    size_t i = inl_hash(id) & (a->inl_cap - 1);
    while (a->inl[i].len) {
        if (memcmp(a->inl[i].id.b, id->b, 32) == 0)
            return &a->inl[i];
        i = (i + 1) & (a->inl_cap - 1);
    }
    return NULL;
}

static void inl_clear(store_account *a)
{
    free(a->inl);
    a->inl = NULL;
    a->inl_n = a->inl_cap = 0;
}

struct store_batch {
    store_account *a;
    buf frames;
    uint32_t nrec;
    struct { uint32_t mailbox, next; } *next_uid; /* uid counters per mailbox */
    size_t n_next;
    store_blob_id *blobs; /* blobs written by this batch, to sync at commit */
    size_t nblobs;
    uint64_t *dids;       /* delivery ids added by this batch (hashes) */
    size_t ndids;
};

static store_stats stats;

void store_get_stats(store_stats *out) { *out = stats; }
uint64_t store_highest_modseq(const store_account *a) { return a->ix.modseq; }
const char *store_name(const store_account *a) { return a->name; }

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- locking ---- */

static int lock_take(store_account *a, hv_err *err)
{
    if (a->lock_depth++ > 0)
        return 0;
    while (flock(a->lock_fd, LOCK_EX) < 0) {
        if (errno != EINTR) {
            a->lock_depth--;
            return hv_err_sys(err, "account %s: lock", a->name);
        }
    }
    return 0;
}

static void lock_drop(store_account *a)
{
    if (--a->lock_depth == 0) {
        a->fresh = 0; /* others may write from now on */
        flock(a->lock_fd, LOCK_UN);
    }
}

/* ---- replay ---- */

static int seg_open(store_account *a, uint64_t no, hv_err *err)
{
    char path[4200];
    log_seg_path(a->logdir, no, path, sizeof(path));
    int fd = open(path, (a->flags & STORE_OPEN_READONLY ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (fd < 0)
        return hv_err_sys(err, "account %s: open %s", a->name, path);
    if (a->seg_fd >= 0)
        close(a->seg_fd);
    a->seg_fd = fd;
    return 0;
}

static int seg_exists(store_account *a, uint64_t no)
{
    char path[4200];
    struct stat st;
    log_seg_path(a->logdir, no, path, sizeof(path));
    return stat(path, &st) == 0;
}

static int damaged(store_account *a, uint64_t seg, uint64_t off, const char *why)
{
    (void)a;
    log_error("store: account=%s damaged log segment=%llu offset=%llu reason=\"%s\"", a->name,
              (unsigned long long)seg, (unsigned long long)off, why);
    return -EUCLEAN;
}

/* Reads and applies every committed record after ix's position. */
/* ---- what a reader may see ----
 *
 * A writer appends its frames, then fdatasyncs, then answers. A reader in
 * another process must not show records in between: after a power loss
 * they could be gone, and a client would have seen a uid that is later
 * reused. So a reader replays only what is durable:
 *   - when no writer holds the lock (a shared flock succeeds), everything in
 *     the log is: writers sync before they unlock;
 *   - while a writer is at work, up to the mark it wrote after its last
 *     sync (log/durable: u64 segment, u64 offset, u32 CRC32C of those 16
 *     bytes). The mark is never synced itself: after a crash the lock is
 *     free and the first rule applies. Writing it also wakes the readers
 *     that watch the log folder (IDLE), now that the record is durable. */
#define DURABLE_FILE "durable"

static void durable_mark(store_account *a)
{
    if (a->durable_fd < 0) {
        char path[4200];
        snprintf(path, sizeof(path), "%s/" DURABLE_FILE, a->logdir);
        a->durable_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (a->durable_fd < 0)
            return; /* readers then wait for the lock to be free */
    }
    uint8_t m[20];
    st64(m, a->ix.seg);
    st64(m + 8, a->ix.off);
    st32(m + 16, crc32c(0, m, 16));
    if (pwrite(a->durable_fd, m, sizeof(m), 0) != (ssize_t)sizeof(m))
        log_warn("store: account=%s cannot write the durable mark: %s", a->name,
                 strerror(errno));
}

/* The end of what a reader (no lock held) may replay. */
static void reader_limit(store_account *a, uint64_t *seg, uint64_t *off)
{
    *seg = UINT64_MAX;
    *off = UINT64_MAX;
    if (a->lock_fd < 0)
        return;
    if (flock(a->lock_fd, LOCK_SH | LOCK_NB) == 0) {
        uint64_t last = a->ix.seg;
        while (seg_exists(a, last + 1))
            last++;
        char path[4200];
        struct stat st;
        log_seg_path(a->logdir, last, path, sizeof(path));
        if (stat(path, &st) == 0) {
            *seg = last;
            *off = (uint64_t)st.st_size;
        }
        flock(a->lock_fd, LOCK_UN);
        return;
    }
    *seg = a->ix.seg; /* no mark: stay where we are */
    *off = a->ix.off;
    char path[4200];
    snprintf(path, sizeof(path), "%s/" DURABLE_FILE, a->logdir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    uint8_t m[20];
    if (pread(fd, m, sizeof(m), 0) == (ssize_t)sizeof(m) && crc32c(0, m, 16) == le32(m + 16)) {
        uint64_t ms = le64(m), mo = le64(m + 8);
        if (ms > a->ix.seg || (ms == a->ix.seg && mo > a->ix.off)) {
            *seg = ms;
            *off = mo;
        }
    }
    close(fd);
}

/* Applies one frame (f, n bytes, CRC checked) found at a->ix.seg,
 * a->ix.off: the one place where records reach the index, whether read
 * from the log (replay) or just written by this handle (wr_commit). */
static int apply_frame(store_account *a, const uint8_t *f, size_t n, hv_err *err)
{
    store_record rec;
    uint64_t at = a->ix.off;
    if (rec_decode(f + REC_FRAME_HDR, n - REC_FRAME_HDR, &rec, &a->scratch) < 0 ||
        ix_apply(&a->ix, &rec, err) < 0) {
        char why[600];
        snprintf(why, sizeof(why), "%s", err && err->code ? err->msg : "malformed record");
        int rc = damaged(a, a->ix.seg, at, why);
        return hv_err_set(err, rc, "account %s is damaged: log segment %llu offset %llu: %s",
                          a->name, (unsigned long long)a->ix.seg, (unsigned long long)at, why);
    }
    if (rec.type == STORE_REC_APPEND && rec.body)
        inl_put(a, &rec.blob, a->ix.seg, at, (uint32_t)n);
    a->ix.last_seg = a->ix.seg;
    a->ix.last_off = at;
    a->ix.off = at + n;
    /* A record that touched many messages (STORE 1:*, a big EXPUNGE)
     * weighs more: the next open would replay it all. */
    uint64_t span = 0;
    for (size_t k = 0; k < rec.nranges && span < (1u << 24); k++)
        span += rec.ranges[k].hi - rec.ranges[k].lo + 1u;
    a->since_ckpt += 1 + (uint32_t)(span / 64);
    stats.records_replayed++;
    return 0;
}

static int replay_log(store_account *a, hv_err *err);

static int replay(store_account *a, hv_err *err)
{
    /* Under the lock nobody else writes: once caught up, stay so. */
    if (a->lock_depth > 0 && a->fresh)
        return 0;
    int rc = replay_log(a, err);
    if (rc == 0 && a->lock_depth > 0)
        a->fresh = 1;
    return rc;
}

static int replay_log(store_account *a, hv_err *err)
{
    uint64_t lim_seg = UINT64_MAX, lim_off = UINT64_MAX;
    if (a->lock_depth == 0)
        reader_limit(a, &lim_seg, &lim_off);
    for (;;) {
        struct stat st;
        if (fstat(a->seg_fd, &st) < 0)
            return hv_err_sys(err, "account %s: stat log", a->name);
        uint64_t end = (uint64_t)st.st_size;
        if (a->ix.seg == lim_seg && end > lim_off)
            end = lim_off < a->ix.off ? a->ix.off : lim_off;
        log_reader lr;
        log_reader_init(&lr, a->seg_fd, a->ix.seg, a->ix.off, end);
        const uint8_t *f;
        size_t n;
        enum log_next r;
        int rc = 0;
        while ((r = log_reader_next(&lr, &f, &n)) == LOG_FRAME)
            if ((rc = apply_frame(a, f, n, err)) < 0)
                break;
        uint64_t bad_off = lr.off, size = lr.size;
        log_reader_free(&lr);
        if (rc < 0)
            return rc;
        int next = seg_exists(a, a->ix.seg + 1);
        if (r == LOG_END) {
            if (!next || a->ix.seg >= lim_seg)
                return 0;
            uint64_t base;
            if ((rc = seg_open(a, a->ix.seg + 1, err)) < 0)
                return rc;
            if (log_seg_check_header(a->seg_fd, a->ix.seg + 1, &base, err) < 0) {
                /* A segment whose creation was cut short holds no record. */
                struct stat s2;
                if (fstat(a->seg_fd, &s2) == 0 && s2.st_size <= SEG_HDR &&
                    !seg_exists(a, a->ix.seg + 2) && a->lock_depth > 0) {
                    char path[4200];
                    log_seg_path(a->logdir, a->ix.seg + 1, path, sizeof(path));
                    unlink(path);
                    fs_fsync_dir(a->logdir, NULL);
                    log_warn("store: account=%s removed half-created log segment %llu",
                             a->name, (unsigned long long)a->ix.seg + 1);
                    return seg_open(a, a->ix.seg, err);
                }
                if (a->lock_depth == 0 && s2.st_size <= SEG_HDR)
                    return seg_open(a, a->ix.seg, err); /* being created right now */
                return hv_err_set(err, damaged(a, a->ix.seg + 1, 0, "bad segment header"),
                                  "account %s is damaged: log segment %llu: bad header",
                                  a->name, (unsigned long long)a->ix.seg + 1);
            }
            if (base != a->ix.modseq)
                return hv_err_set(err, damaged(a, a->ix.seg + 1, 0, "segment base modseq"),
                                  "account %s is damaged: log segment %llu starts at modseq "
                                  "%llu, previous ends at %llu",
                                  a->name, (unsigned long long)a->ix.seg + 1,
                                  (unsigned long long)base, (unsigned long long)a->ix.modseq);
            a->ix.seg++;
            a->ix.off = SEG_HDR;
            continue;
        }
        /* LOG_BAD */
        uint64_t valid_off;
        if (next || log_find_valid_after(a->seg_fd, bad_off, size, a->ix.modseq, &valid_off)) {
            rc = damaged(a, a->ix.seg, bad_off, "invalid record before the end of the log");
            return hv_err_set(err, rc,
                              "account %s is damaged: log segment %llu offset %llu: invalid "
                              "record (CRC or length) before the end of the log",
                              a->name, (unsigned long long)a->ix.seg,
                              (unsigned long long)bad_off);
        }
        if (a->lock_depth == 0)
            return 0; /* maybe a write in progress: stop before it */
        if (ftruncate(a->seg_fd, (off_t)bad_off) < 0 || fdatasync(a->seg_fd) < 0)
            return hv_err_sys(err, "account %s: truncate torn log tail", a->name);
        stats.tail_truncations++;
        log_warn("store: account=%s torn log tail cut segment=%llu offset=%llu dropped=%llu "
                 "bytes (a write that never completed)",
                 a->name, (unsigned long long)a->ix.seg, (unsigned long long)bad_off,
                 (unsigned long long)(size - bad_off));
        return 0;
    }
}

/* Is the checkpoint's position a real record boundary of this log? */
static int ckpt_matches_log(store_account *a, const seg_list *segs)
{
    store_index *ix = &a->ix;
    int found = 0;
    for (size_t i = 0; i < segs->n; i++)
        found |= segs->no[i] == ix->seg;
    if (!found || seg_open(a, ix->seg, NULL) < 0 ||
        log_seg_check_header(a->seg_fd, ix->seg, NULL, NULL) < 0)
        return 0;
    struct stat st;
    if (fstat(a->seg_fd, &st) < 0 || ix->off > (uint64_t)st.st_size || ix->off < SEG_HDR)
        return 0;
    if (ix->modseq == 0)
        return ix->off == SEG_HDR && ix->seg == segs->no[0];
    /* The record just before the position must be there with that modseq. */
    char path[4200];
    log_seg_path(a->logdir, ix->last_seg, path, sizeof(path));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    struct stat s2;
    fstat(fd, &s2);
    log_reader lr;
    log_reader_init(&lr, fd, ix->last_seg, ix->last_off, (uint64_t)s2.st_size);
    const uint8_t *f;
    size_t n;
    int ok = 0;
    if (log_reader_next(&lr, &f, &n) == LOG_FRAME) {
        store_record r;
        ok = rec_decode(f + REC_FRAME_HDR, n - REC_FRAME_HDR, &r, &a->scratch) == 0 &&
             r.modseq == ix->modseq &&
             (ix->last_seg != ix->seg || ix->last_off + n == ix->off);
    }
    log_reader_free(&lr);
    close(fd);
    return ok;
}

static void start_empty(store_account *a, uint64_t first_seg)
{
    ix_free(&a->ix);
    inl_clear(a);
    a->ix.seg = first_seg;
    a->ix.off = SEG_HDR;
    a->ix.last_seg = first_seg;
    a->since_ckpt = 0;
}

static int mkdir_one(const char *path, hv_err *err)
{
    if (mkdir(path, 0700) < 0 && errno != EEXIST)
        return hv_err_sys(err, "mkdir %s", path);
    return 0;
}

static int create_layout(const char *dir, hv_err *err)
{
    static const char *subs[] = {"log", "blobs", "blobs/tmp", "index"};
    char p[4200];
    int rc = fs_mkdir_p(dir, 0700, err);
    for (size_t i = 0; rc == 0 && i < sizeof(subs) / sizeof(subs[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, subs[i]);
        rc = mkdir_one(p, err);
    }
    /* All 256 fan-out folders up front, so that storing a blob never has
     * to make (and sync) a folder on the write path. */
    for (int i = 0; rc == 0 && i < 256; i++) {
        snprintf(p, sizeof(p), "%s/blobs/%02x", dir, i);
        rc = mkdir_one(p, err);
    }
    if (rc == 0) {
        snprintf(p, sizeof(p), "%s/blobs", dir);
        rc = fs_fsync_dir(p, err);
    }
    if (rc == 0)
        rc = fs_fsync_dir(dir, err);
    if (rc == 0) {
        /* The account folder's own entry must survive a crash too. */
        snprintf(p, sizeof(p), "%s", dir);
        char *slash = strrchr(p, '/');
        if (slash && slash != p) {
            *slash = 0;
            rc = fs_fsync_dir(p, err);
        }
    }
    return rc;
}

/* Removes temp files of writers that died: files in sub whose name is
 * prefix followed by the writer's pid. Only a writer holding the lock may
 * do this, and only for pids that are gone. */
static void clean_tmp_in(store_account *a, const char *sub, const char *prefix)
{
    char p[4200];
    snprintf(p, sizeof(p), "%s/%s", a->dir, sub);
    DIR *d = opendir(p);
    if (!d)
        return;
    size_t plen = strlen(prefix);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, prefix, plen) != 0)
            continue;
        int pid = atoi(e->d_name + plen);
        if (pid <= 0 || (kill(pid, 0) == 0 || errno != ESRCH))
            continue;
        char f[4600];
        snprintf(f, sizeof(f), "%s/%s", p, e->d_name);
        unlink(f);
    }
    closedir(d);
}

static void clean_tmp(store_account *a)
{
    clean_tmp_in(a, "blobs/tmp", "");            /* blob.c: PID.XXXXXX */
    clean_tmp_in(a, "index", "index.ckpt.tmp."); /* fs_write_file_atomic: PATH.tmp.PID */
}

int store_checkpoint(store_account *a, hv_err *err);

int store_open(const char *dir, const char *name, int flags, const store_options *opt,
               store_account **out, hv_err *err)
{
    int rc;
    *out = NULL;
    /* The lock file is made only after create_layout has made and synced
     * every folder: where it exists, there is nothing left to create (and
     * the 260 mkdirs of create_layout need not be paid at every open). */
    char lockp[4200];
    snprintf(lockp, sizeof(lockp), "%s/lock", dir);
    if ((flags & STORE_OPEN_CREATE) && !(flags & STORE_OPEN_READONLY) &&
        access(lockp, F_OK) < 0 && (rc = create_layout(dir, err)) < 0)
        return rc;
    struct stat st;
    char p[4200];
    snprintf(p, sizeof(p), "%s/log", dir);
    if (stat(p, &st) < 0)
        return hv_err_set(err, -ENOENT, "no such account %s (no store folder %s)", name, dir);

    store_account *a = calloc(1, sizeof(*a));
    a->dir = strdup(dir);
    a->name = strdup(name);
    a->flags = flags;
    if (opt)
        a->opt = *opt;
    if (!a->opt.segment_size)
        a->opt.segment_size = 64ull << 20;
    if (!a->opt.checkpoint_records)
        a->opt.checkpoint_records = 4096;
    if (!a->opt.max_message_size)
        a->opt.max_message_size = 100ull << 20;
    snprintf(a->logdir, sizeof(a->logdir), "%s/log", dir);
    snprintf(a->ckpt_path, sizeof(a->ckpt_path), "%s/index/index.ckpt", dir);
    a->seg_fd = -1;
    a->durable_fd = -1;
    ix_init(&a->ix);
    buf_init(&a->wbuf);
    buf_init(&a->scratch);
    snprintf(p, sizeof(p), "%s/lock", dir);
    a->lock_fd = open(p, (flags & STORE_OPEN_READONLY ? O_RDONLY : O_RDWR | O_CREAT) | O_CLOEXEC,
                      0600);
    if (a->lock_fd < 0 && !(flags & STORE_OPEN_READONLY)) {
        rc = hv_err_sys(err, "account %s: open lock file", name);
        store_close(a);
        return rc;
    }

    seg_list segs;
    if ((rc = log_list_segments(a->logdir, &segs, err)) < 0) {
        store_close(a);
        return rc;
    }
    int writable = !(flags & STORE_OPEN_READONLY);
    if (segs.n == 0) {
        if (!writable) {
            free(segs.no);
            store_close(a);
            return hv_err_set(err, -EUCLEAN, "account %s has no log", name);
        }
        if ((rc = lock_take(a, err)) == 0) {
            free(segs.no);
            rc = log_list_segments(a->logdir, &segs, err);
            if (rc == 0 && segs.n == 0 && (rc = log_seg_create(a->logdir, 1, 0, err)) == 0)
                rc = log_list_segments(a->logdir, &segs, err);
            lock_drop(a);
        }
        if (rc < 0) {
            free(segs.no);
            store_close(a);
            return rc;
        }
    }
    if (writable && (rc = lock_take(a, err)) < 0) {
        free(segs.no);
        store_close(a);
        return rc;
    }
    hv_err lerr = {0};
    int loaded = !(flags & OPEN_REBUILD) && ix_load(&a->ix, a->ckpt_path, &lerr) == 0;
    if (loaded && !ckpt_matches_log(a, &segs)) {
        log_warn("store: account=%s index checkpoint does not match the log; rebuilding", name);
        loaded = 0;
    } else if (!loaded && lerr.code == -EUCLEAN) {
        log_warn("store: account=%s %s; rebuilding from the log", name, lerr.msg);
    }
    if (!loaded) {
        stats.index_rebuilds++;
        start_empty(a, segs.no[0]);
    }
    rc = seg_open(a, a->ix.seg, err);
    if (rc == 0 && !loaded)
        rc = log_seg_check_header(a->seg_fd, a->ix.seg, NULL, err);
    free(segs.no);
    if (rc == 0)
        rc = replay(a, err);
    if (rc == 0 && writable) {
        clean_tmp(a);
        if (!loaded || a->since_ckpt >= a->opt.checkpoint_records)
            rc = store_checkpoint(a, err);
    }
    if (writable)
        lock_drop(a);
    if (rc < 0) {
        store_close(a);
        return rc;
    }
    *out = a;
    return 0;
}

void store_close(store_account *a)
{
    if (!a)
        return;
    if (a->seg_fd >= 0)
        close(a->seg_fd);
    if (a->lock_fd >= 0)
        close(a->lock_fd);
    if (a->durable_fd >= 0)
        close(a->durable_fd);
    ix_free(&a->ix);
    inl_clear(a);
    buf_free(&a->wbuf);
    buf_free(&a->scratch);
    free(a->dir);
    free(a->name);
    free(a);
}

int store_refresh(store_account *a, hv_err *err) { return replay(a, err); }

/* ---- writing ---- */

/* ---- fencing ---- */

static char fence_path[4096];
static __thread int fence_bypass; /* store_apply_frames on a replica */

void store_set_fence(const char *path)
{
    snprintf(fence_path, sizeof(fence_path), "%s", path ? path : "");
}

int store_fenced(char *why, size_t len)
{
    if (!fence_path[0])
        return 0;
    int fd = open(fence_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, why, len ? len - 1 : 0);
    close(fd);
    if (len) {
        why[n > 0 ? n : 0] = 0;
        why[strcspn(why, "\r\n")] = 0;
        if (!why[0])
            snprintf(why, len, "this store is fenced");
    }
    return 1;
}

/* The account's own fence: ACCOUNT/fence, written by a move that is about
 * to hand the account to another store (and left there once it has). */
static int account_fence_read(const store_account *a, char *why, size_t len)
{
    char p[4200];
    snprintf(p, sizeof(p), "%s/fence", a->dir);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, why, len - 1);
    close(fd);
    why[n > 0 ? n : 0] = 0;
    why[strcspn(why, "\r\n")] = 0;
    if (!why[0])
        snprintf(why, len, "the account is fenced");
    return 1;
}

int store_account_fenced(store_account *a, char *why, size_t len)
{
    char tmp[256];
    return account_fence_read(a, why && len ? why : tmp, why && len ? len : sizeof(tmp));
}

int store_account_fence(store_account *a, const char *why, hv_err *err)
{
    char p[4200];
    snprintf(p, sizeof(p), "%s/fence", a->dir);
    int rc = fs_write_file_atomic(p, why, strlen(why), 0644, err);
    if (rc < 0)
        return rc;
    /* A writer that read "no fence" before the file existed holds the lock
     * until its records are in the log: taking the lock once waits for it,
     * and every later writer sees the fence (wr_begin checks under the
     * lock). */
    if ((rc = lock_take(a, err)) < 0)
        return rc;
    rc = replay(a, err);
    lock_drop(a);
    return rc;
}

int store_account_unfence(store_account *a, hv_err *err)
{
    char p[4200];
    snprintf(p, sizeof(p), "%s/fence", a->dir);
    if (unlink(p) < 0 && errno != ENOENT)
        return hv_err_sys(err, "account %s: remove %s", a->name, p);
    return fs_fsync_dir(a->dir, err);
}

static int wr_begin(store_account *a, hv_err *err)
{
    if (a->flags & STORE_OPEN_READONLY)
        return hv_err_set(err, -EROFS, "account %s is open read-only", a->name);
    /* The fences are checked under the lock, so that whoever fences and then
     * takes the lock once knows no write that missed the fence is still on
     * its way (switchover drains, moves ship a final delta). */
    int rc = lock_take(a, err);
    if (rc < 0)
        return rc;
    char why[256];
    if (!fence_bypass && (store_fenced(why, sizeof(why)) || account_fence_read(a, why, sizeof(why)))) {
        lock_drop(a);
        return hv_err_set(err, -EROFS, "account %s cannot be written here: %s", a->name, why);
    }
    if ((rc = replay(a, err)) < 0)
        lock_drop(a);
    return rc;
}

static int wr_end(store_account *a, int rc, hv_err *err)
{
    if (rc == 0 && a->lock_depth == 1 && a->since_ckpt >= a->opt.checkpoint_records) {
        hv_err cerr;
        /* The records are durable already; a failed checkpoint only costs
         * a longer replay at the next open. */
        if (store_checkpoint(a, &cerr) < 0)
            log_warn("store: account=%s checkpoint failed: %s", a->name, cerr.msg);
    }
    lock_drop(a);
    (void)err;
    return rc;
}

/* Appends the encoded frames in b at the log's end, durably, and applies
 * them. Called with the lock held and the index caught up. */
static int wr_commit(store_account *a, const buf *b, int sync, hv_err *err)
{
    if (b->len == 0)
        return 0;
    int rc;
    if (a->ix.off + b->len > a->opt.segment_size && a->ix.off > SEG_HDR) {
        if ((rc = log_seg_create(a->logdir, a->ix.seg + 1, a->ix.modseq, err)) < 0)
            return rc;
        if ((rc = seg_open(a, a->ix.seg + 1, err)) < 0)
            return rc;
        a->ix.seg++;
        a->ix.off = SEG_HDR;
    }
    rc = fs_pwrite_full(a->seg_fd, b->data, b->len, (off_t)a->ix.off);
    if (rc == 0 && sync && fdatasync(a->seg_fd) < 0)
        rc = -errno;
    if (rc < 0) {
        errno = -rc;
        rc = hv_err_sys(err, "account %s: write log", a->name);
        /* Nothing was acknowledged: take the partial write back out. */
        if (ftruncate(a->seg_fd, (off_t)a->ix.off) < 0)
            log_error("store: account=%s cannot cut failed write: %s", a->name, strerror(errno));
        return rc;
    }
    /* The frames now in the log are exactly b (we hold the lock and were
     * caught up): apply them from memory rather than reading them back. */
    for (size_t p = 0; rc == 0 && p < b->len;) {
        size_t n = REC_FRAME_HDR + le32(b->data + p);
        rc = apply_frame(a, b->data + p, n, err);
        p += n;
    }
    if (rc == 0)
        a->fresh = 1;
    if (rc == 0 && sync)
        durable_mark(a);
    return rc;
}

static void rec_base(store_account *a, store_record *r, enum store_rec_type t, uint32_t mailbox,
                     uint32_t nth)
{
    memset(r, 0, sizeof(*r));
    r->type = t;
    r->mailbox = mailbox;
    r->modseq = a->ix.modseq + 1 + nth;
    r->time_ms = now_ms();
}

static int write_one(store_account *a, store_record *r, hv_err *err)
{
    buf_reset(&a->wbuf);
    rec_encode(&a->wbuf, r);
    return wr_commit(a, &a->wbuf, 1, err);
}

/* Where the inline body named id is in the log, if it is one: appended
 * since the checkpoint (the hash) or before it (the checkpoint's INLB). */
static int inl_find(const store_account *a, const store_blob_id *id, struct inline_ref *out)
{
    const struct inline_ref *r = inl_get(a, id);
    if (r) {
        *out = *r;
        return 1;
    }
    const ix_inl *e = ix_inl_find(&a->ix, id);
    if (!e)
        return 0;
    *out = (struct inline_ref){e->id, e->seg, e->off, e->len};
    return 1;
}

/* Reads the body of the inline append whose frame is at seg/off: one
 * pread of exactly that frame, whose CRC and blob id are checked. */
static int inl_read(store_account *a, const struct inline_ref *r, char **out, size_t *len,
                    hv_err *err)
{
    int fd = a->seg_fd;
    if (fd < 0 || r->seg != a->ix.seg) {
        char path[4200];
        log_seg_path(a->logdir, r->seg, path, sizeof(path));
        if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
            return hv_err_sys(err, "account %s: open %s", a->name, path);
    }
    uint8_t *f = r->len >= REC_FRAME_HDR + REC_BODY_HDR ? malloc((size_t)r->len + 1) : NULL;
    ssize_t got = f ? fs_pread_full(fd, f, r->len, (off_t)r->off) : -1;
    if (fd != a->seg_fd)
        close(fd);
    store_record rec;
    uint32_t blen = r->len - REC_FRAME_HDR;
    if (got == (ssize_t)r->len && le32(f) == blen &&
        rec_crc(f, f + REC_FRAME_HDR, blen) == le32(f + 4) &&
        rec_decode(f + REC_FRAME_HDR, blen, &rec, &a->scratch) == 0 && rec.body &&
        memcmp(rec.blob.b, r->id.b, 32) == 0) {
        size_t n = (size_t)rec.size;
        memmove(f, rec.body, n);
        f[n] = 0;
        *out = (char *)f;
        *len = n;
        return 0;
    }
    free(f);
    return hv_err_set(err, -EUCLEAN, "account %s: inline body at segment %llu offset %llu is "
                                     "unreadable", a->name, (unsigned long long)r->seg,
                      (unsigned long long)r->off);
}

static int cmp_inl(const void *x, const void *y)
{
    return memcmp(((const ix_inl *)x)->id.b, ((const ix_inl *)y)->id.b, 32);
}

/* The checkpoint's INLB: its predecessor's entries and those since, by id
 * (for a body stored again, the later place; either holds the same bytes). */
static ix_inl *inl_merged(const store_account *a, size_t *n_out)
{
    ix_inl *fresh = malloc((a->inl_n ? a->inl_n : 1) * sizeof(ix_inl));
    size_t nf = 0;
    for (size_t i = 0; i < a->inl_cap; i++)
        if (a->inl[i].len)
            fresh[nf++] = (ix_inl){a->inl[i].id, a->inl[i].seg, a->inl[i].off, a->inl[i].len, 0};
    qsort(fresh, nf, sizeof(ix_inl), cmp_inl);
    const ix_inl *old = a->ix.inl;
    size_t no = (size_t)a->ix.ninl, i = 0, j = 0, n = 0;
    ix_inl *all = malloc((no + nf ? no + nf : 1) * sizeof(ix_inl));
    while (i < no || j < nf) {
        int c = i == no ? 1 : j == nf ? -1 : memcmp(old[i].id.b, fresh[j].id.b, 32);
        if (c < 0) {
            all[n] = old[i++];
            all[n++].reserved = 0;
        } else {
            all[n++] = fresh[j++];
            i += c == 0;
        }
    }
    free(fresh);
    *n_out = n;
    return all;
}

int store_checkpoint(store_account *a, hv_err *err)
{
    /* Local upkeep of the index, not a change of mail: allowed when
     * fenced (replicas checkpoint too). */
    int bypass = fence_bypass;
    fence_bypass = 1;
    int rc = wr_begin(a, err);
    fence_bypass = bypass;
    if (rc < 0)
        return rc;
    /* Inline bodies stay in the log, their only copy: the checkpoint says
     * where each one is (INLB), so no blob file is ever needed for them. */
    size_t ninl;
    ix_inl *inl = inl_merged(a, &ninl);
    uint64_t inl_at = 0;
    rc = ix_save(&a->ix, inl, ninl, a->ckpt_path, &inl_at, err);
    free(inl);
    if (rc == 0) {
        hv_err merr;
        /* Without the new mapping the old entries and the hash still
         * answer every lookup; the next checkpoint merges them again. */
        if (ix_map_inl(&a->ix, a->ckpt_path, inl_at, ninl, &merr) == 0)
            inl_clear(a);
        else
            log_warn("store: account=%s %s", a->name, merr.msg);
    }
    if (rc == 0) {
        store_record r;
        rec_base(a, &r, STORE_REC_CHECKPOINT, 0, 0);
        r.modseq = a->ix.modseq; /* local marker: takes no modseq of its own */
        buf_reset(&a->wbuf);
        rec_encode(&a->wbuf, &r);
        /* Not synced: the next durable write covers it, and losing it
         * loses nothing but the marker. */
        rc = wr_commit(a, &a->wbuf, 0, err);
        a->since_ckpt = 0;
    }
    lock_drop(a);
    return rc;
}

/* ---- mailboxes ---- */

int mailbox_name_normalize(const char *in, char *out, size_t outlen, hv_err *err)
{
    size_t n = strlen(in);
    if (n == 0 || n >= outlen || n > 1000)
        return hv_err_set(err, -EINVAL, "mailbox name is empty or too long");
    if (in[0] == '/' || in[n - 1] == '/' || strstr(in, "//"))
        return hv_err_set(err, -EINVAL, "mailbox name has an empty level: %s", in);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)in[i] < 0x20 || in[i] == 0x7f)
            return hv_err_set(err, -EINVAL, "mailbox name has a control character");
    memcpy(out, in, n + 1);
    if (strncasecmp(out, "INBOX", 5) == 0 && (out[5] == 0 || out[5] == '/'))
        memcpy(out, "INBOX", 5);
    return 0;
}

static void fill_info(const ix_mbox *m, store_mailbox_info *out)
{
    out->id = m->id;
    out->name = m->name;
    out->uidvalidity = m->uidvalidity;
    out->uidnext = m->uidnext;
    out->highestmodseq = m->highestmodseq;
    out->special_use = m->special_use;
    out->exists = m->n;
    out->total_size = m->total_size;
}

size_t store_mailbox_count(store_account *a)
{
    replay(a, NULL);
    return a->ix.nmb;
}

int store_mailbox_at(store_account *a, size_t i, store_mailbox_info *out)
{
    if (i >= a->ix.nmb)
        return -ENOENT;
    fill_info(a->ix.mb[i], out);
    return 0;
}

int store_mailbox_find(store_account *a, const char *name, store_mailbox_info *out)
{
    char norm[1024];
    if (mailbox_name_normalize(name, norm, sizeof(norm), NULL) < 0)
        return -ENOENT;
    replay(a, NULL);
    ix_mbox *m = ix_mbox_by_name(&a->ix, norm);
    if (!m)
        return -ENOENT;
    if (out)
        fill_info(m, out);
    return 0;
}

int store_mailbox_get(store_account *a, uint32_t id, store_mailbox_info *out)
{
    ix_mbox *m = ix_mbox_by_id(&a->ix, id);
    if (!m) {
        replay(a, NULL);
        m = ix_mbox_by_id(&a->ix, id);
    }
    if (!m)
        return -ENOENT;
    if (out)
        fill_info(m, out);
    return 0;
}

int store_mailbox_create(store_account *a, const char *name, uint32_t special_use,
                         uint32_t *id_out, hv_err *err)
{
    char norm[1024];
    int rc = mailbox_name_normalize(name, norm, sizeof(norm), err);
    if (rc < 0 || (rc = wr_begin(a, err)) < 0)
        return rc;
    if (ix_mbox_by_name(&a->ix, norm)) {
        rc = hv_err_set(err, -EEXIST, "mailbox %s already exists", norm);
    } else {
        store_record r;
        rec_base(a, &r, STORE_REC_MAILBOX_CREATE, a->ix.next_mailbox_id, 0);
        uint32_t now = (uint32_t)time(NULL);
        r.uidvalidity = now > a->ix.last_uidvalidity ? now : a->ix.last_uidvalidity + 1;
        r.special_use = special_use;
        r.name = norm;
        r.name_len = strlen(norm);
        rc = write_one(a, &r, err);
        if (rc == 0 && id_out)
            *id_out = r.mailbox;
    }
    return wr_end(a, rc, err);
}

int store_mailbox_rename(store_account *a, uint32_t id, const char *new_name, hv_err *err)
{
    char norm[1024];
    int rc = mailbox_name_normalize(new_name, norm, sizeof(norm), err);
    if (rc < 0 || (rc = wr_begin(a, err)) < 0)
        return rc;
    ix_mbox *m = ix_mbox_by_id(&a->ix, id);
    if (!m)
        rc = hv_err_set(err, -ENOENT, "no such mailbox (id %u)", id);
    else if (ix_mbox_by_name(&a->ix, norm))
        rc = hv_err_set(err, -EEXIST, "mailbox %s already exists", norm);
    else {
        store_record r;
        rec_base(a, &r, STORE_REC_MAILBOX_RENAME, id, 0);
        r.name = norm;
        r.name_len = strlen(norm);
        rc = write_one(a, &r, err);
    }
    return wr_end(a, rc, err);
}

int store_mailbox_delete(store_account *a, uint32_t id, hv_err *err)
{
    int rc = wr_begin(a, err);
    if (rc < 0)
        return rc;
    if (!ix_mbox_by_id(&a->ix, id)) {
        rc = hv_err_set(err, -ENOENT, "no such mailbox (id %u)", id);
    } else {
        store_record r;
        rec_base(a, &r, STORE_REC_MAILBOX_DELETE, id, 0);
        rc = write_one(a, &r, err);
    }
    return wr_end(a, rc, err);
}

/* ---- messages ---- */

static int check_delivery_id(const char *id, hv_err *err)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n > STORE_DELIVERY_ID_MAX)
        return hv_err_set(err, -EINVAL, "delivery id must be 1 to %d bytes",
                          STORE_DELIVERY_ID_MAX);
    for (size_t i = 0; i < n; i++)
        if (id[i] <= ' ' || id[i] > '~')
            return hv_err_set(err, -EINVAL, "delivery id must be printable ASCII");
    return 0;
}

static int append_small(store_account *a, uint32_t mailbox, const char *did, const void *data,
                        size_t len, uint64_t flags, int64_t internal_date, uint32_t *uid_out,
                        int *dup_out, hv_err *err);

int store_append(store_account *a, uint32_t mailbox, const void *data, size_t len,
                 uint64_t flags, int64_t internal_date, uint32_t *uid_out, hv_err *err)
{
    if (len <= STORE_INLINE_MAX && len <= a->opt.max_message_size)
        return append_small(a, mailbox, NULL, data, len, flags, internal_date, uid_out, NULL,
                            err);
    store_batch *b;
    int rc = store_batch_begin(a, &b, err);
    if (rc < 0)
        return rc;
    if ((rc = store_batch_add(b, mailbox, data, len, flags, internal_date, uid_out, err)) < 0) {
        store_batch_abort(b);
        return rc;
    }
    return store_batch_commit(b, err);
}

int store_append_once(store_account *a, uint32_t mailbox, const char *delivery_id,
                      const void *data, size_t len, uint64_t flags, int64_t internal_date,
                      uint32_t *uid_out, int *dup_out, hv_err *err)
{
    int rc = check_delivery_id(delivery_id, err);
    if (rc < 0)
        return rc;
    *dup_out = 0;
    if (len <= STORE_INLINE_MAX && len <= a->opt.max_message_size)
        return append_small(a, mailbox, delivery_id, data, len, flags, internal_date, uid_out,
                            dup_out, err);
    store_batch *b;
    if ((rc = store_batch_begin(a, &b, err)) < 0)
        return rc;
    if ((rc = store_batch_add_once(b, mailbox, delivery_id, data, len, flags, internal_date,
                                   uid_out, dup_out, err)) < 0) {
        store_batch_abort(b);
        return rc;
    }
    return store_batch_commit(b, err);
}

/* An append whose body travels in its record (len <= STORE_INLINE_MAX). */
static int append_small(store_account *a, uint32_t mailbox, const char *did, const void *data,
                        size_t len, uint64_t flags, int64_t internal_date, uint32_t *uid_out,
                        int *dup_out, hv_err *err)
{
    /* The body travels in the record: one write, one fdatasync, and the
     * log is its only copy (readers find it through inl_find). */
    store_record r;
    store_blob_id id;
    sha256(data, len, id.b);
    int rc = wr_begin(a, err);
    if (rc < 0)
        return rc;
    if (did) {
        /* Under the lock and caught up with the log: a delivery that
         * committed before a crash is seen here, whoever wrote it. */
        const ix_did *seen = ix_did_find(&a->ix, ix_did_hash(did, strlen(did)));
        if (seen) {
            *dup_out = 1;
            if (uid_out)
                *uid_out = seen->uid;
            return wr_end(a, 0, err);
        }
    }
    const ix_mbox *m = ix_mbox_by_id(&a->ix, mailbox);
    if (!m)
        return wr_end(a, hv_err_set(err, -ENOENT, "no such mailbox (id %u)", mailbox), err);
    if (m->uidnext == UINT32_MAX)
        return wr_end(a, hv_err_set(err, -EOVERFLOW, "mailbox %s has used every uid", m->name),
                      err);
    rec_base(a, &r, STORE_REC_APPEND, mailbox, 0);
    r.uid = m->uidnext;
    r.flags = flags;
    r.internal_date = internal_date;
    r.size = len;
    r.blob = id;
    r.body = data;
    r.delivery_id = did;
    r.delivery_id_len = did ? strlen(did) : 0;
    rc = write_one(a, &r, err);
    if (rc == 0 && uid_out)
        *uid_out = r.uid;
    return wr_end(a, rc, err);
}

int store_batch_begin(store_account *a, store_batch **out, hv_err *err)
{
    int rc = wr_begin(a, err);
    if (rc < 0)
        return rc;
    store_batch *b = calloc(1, sizeof(*b));
    b->a = a;
    /* The account's write buffer, kept between writes (its pages stay
     * mapped: deliveries of big bodies come one batch after another). */
    b->frames = a->wbuf;
    buf_init(&a->wbuf);
    buf_reset(&b->frames);
    *out = b;
    return 0;
}

static uint32_t *batch_next_uid(store_batch *b, const ix_mbox *m)
{
    for (size_t i = 0; i < b->n_next; i++)
        if (b->next_uid[i].mailbox == m->id)
            return &b->next_uid[i].next;
    b->next_uid = realloc(b->next_uid, (b->n_next + 1) * sizeof(*b->next_uid));
    b->next_uid[b->n_next].mailbox = m->id;
    b->next_uid[b->n_next].next = m->uidnext;
    return &b->next_uid[b->n_next++].next;
}

/* Encodes one APPEND of the batch; body (inline) and did may be NULL. */
static void batch_add_record_ex(store_batch *b, const ix_mbox *m, uint64_t flags, int64_t idate,
                                uint64_t size, const store_blob_id *blob, const void *body,
                                const char *did, uint32_t *uid_out)
{
    store_record r;
    rec_base(b->a, &r, STORE_REC_APPEND, m->id, b->nrec++);
    uint32_t *next = batch_next_uid(b, m);
    r.uid = (*next)++;
    r.flags = flags;
    r.internal_date = idate;
    r.size = size;
    r.blob = *blob;
    r.body = body;
    r.delivery_id = did;
    r.delivery_id_len = did ? strlen(did) : 0;
    rec_encode(&b->frames, &r);
    if (uid_out)
        *uid_out = r.uid;
}

static void batch_add_record(store_batch *b, const ix_mbox *m, uint64_t flags, int64_t idate,
                             uint64_t size, const store_blob_id *blob, uint32_t *uid_out)
{
    batch_add_record_ex(b, m, flags, idate, size, blob, NULL, NULL, uid_out);
}

int store_batch_add(store_batch *b, uint32_t mailbox, const void *data, size_t len,
                    uint64_t flags, int64_t internal_date, uint32_t *uid_out, hv_err *err)
{
    store_account *a = b->a;
    if (len > a->opt.max_message_size)
        return hv_err_set(err, -EFBIG, "message of %zu bytes is over the limit of %llu", len,
                          (unsigned long long)a->opt.max_message_size);
    const ix_mbox *m = ix_mbox_by_id(&a->ix, mailbox);
    if (!m)
        return hv_err_set(err, -ENOENT, "no such mailbox (id %u)", mailbox);
    uint32_t *next = batch_next_uid(b, m);
    if (*next == UINT32_MAX)
        return hv_err_set(err, -EOVERFLOW, "mailbox %s has used every uid", m->name);
    store_blob_id id;
    int rc = blob_write(a->dir, data, len, &id, 0, err);
    if (rc < 0)
        return rc;
    b->blobs = realloc(b->blobs, (b->nblobs + 1) * sizeof(store_blob_id));
    b->blobs[b->nblobs++] = id;
    batch_add_record(b, m, flags, internal_date, len, &id, uid_out);
    return 0;
}

int store_batch_add_once(store_batch *b, uint32_t mailbox, const char *delivery_id,
                         const void *data, size_t len, uint64_t flags, int64_t internal_date,
                         uint32_t *uid_out, int *dup_out, hv_err *err)
{
    store_account *a = b->a;
    int rc = check_delivery_id(delivery_id, err);
    if (rc < 0)
        return rc;
    *dup_out = 0;
    uint64_t h = ix_did_hash(delivery_id, strlen(delivery_id));
    const ix_did *seen = ix_did_find(&a->ix, h);
    if (seen) {
        *dup_out = 1;
        if (uid_out)
            *uid_out = seen->uid;
        return 0;
    }
    for (size_t i = 0; i < b->ndids; i++)
        if (b->dids[i] == h) {
            *dup_out = 1;
            if (uid_out)
                *uid_out = 0; /* not committed yet */
            return 0;
        }
    if (len > a->opt.max_message_size)
        return hv_err_set(err, -EFBIG, "message of %zu bytes is over the limit of %llu", len,
                          (unsigned long long)a->opt.max_message_size);
    const ix_mbox *m = ix_mbox_by_id(&a->ix, mailbox);
    if (!m)
        return hv_err_set(err, -ENOENT, "no such mailbox (id %u)", mailbox);
    uint32_t *next = batch_next_uid(b, m);
    if (*next == UINT32_MAX)
        return hv_err_set(err, -EOVERFLOW, "mailbox %s has used every uid", m->name);
    store_blob_id id;
    const void *body = NULL;
    if (len <= STORE_INLINE_MAX) {
        /* Deliveries are small and want one fdatasync for the lot: the
         * bodies ride in their records, as in store_append. */
        sha256(data, len, id.b);
        body = data;
    } else {
        if ((rc = blob_write(a->dir, data, len, &id, 0, err)) < 0)
            return rc;
        b->blobs = realloc(b->blobs, (b->nblobs + 1) * sizeof(store_blob_id));
        b->blobs[b->nblobs++] = id;
    }
    b->dids = realloc(b->dids, (b->ndids + 1) * sizeof(uint64_t));
    b->dids[b->ndids++] = h;
    batch_add_record_ex(b, m, flags, internal_date, len, &id, body, delivery_id, uid_out);
    return 0;
}

static void batch_free(store_batch *b)
{
    free(b->dids);
    if (b->a->wbuf.cap == 0 && b->frames.cap <= (8u << 20)) {
        b->a->wbuf = b->frames; /* back to the account, for the next write */
        buf_init(&b->frames);
    }
    buf_free(&b->frames);
    free(b->next_uid);
    free(b->blobs);
    free(b);
}

/* Every blob of a batch (data and folder entry) must be durable before the
 * records naming them. A few blobs are synced one by one; many at once with
 * one syncfs, which is far cheaper than thousands of fsyncs. */
static int batch_sync_blobs(store_batch *b, hv_err *err)
{
    store_account *a = b->a;
    int rc = 0;
    if (b->nblobs <= 4) {
        for (size_t i = 0; rc == 0 && i < b->nblobs; i++) {
            char path[4200];
            blob_path(a->dir, &b->blobs[i], path, sizeof(path));
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0 || fsync(fd) < 0)
                rc = hv_err_sys(err, "account %s: sync blob %s", a->name, path);
            if (fd >= 0)
                close(fd);
            *strrchr(path, '/') = 0;
            if (rc == 0)
                rc = fs_fsync_dir(path, err);
        }
        return rc;
    }
    int dfd = open(a->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || syncfs(dfd) < 0)
        rc = hv_err_sys(err, "account %s: sync blobs", a->name);
    if (dfd >= 0)
        close(dfd);
    return rc;
}

int store_batch_commit(store_batch *b, hv_err *err)
{
    store_account *a = b->a;
    int rc = 0;
    if (b->nrec) {
        rc = batch_sync_blobs(b, err);
        if (rc == 0)
            rc = wr_commit(a, &b->frames, 1, err);
    }
    rc = wr_end(a, rc, err);
    batch_free(b);
    return rc;
}

void store_batch_abort(store_batch *b)
{
    lock_drop(b->a);
    batch_free(b);
}

static int cmp_u32(const void *x, const void *y)
{
    uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
    return a < b ? -1 : a > b;
}

/* Sorted, de-duplicated copy of a uid list. */
static uint32_t *sorted_uids(const uint32_t *uids, size_t n, size_t *nout)
{
    uint32_t *s = malloc((n ? n : 1) * sizeof(uint32_t));
    if (n)
        memcpy(s, uids, n * sizeof(uint32_t));
    if (n)
        qsort(s, n, sizeof(uint32_t), cmp_u32);
    size_t w = 0;
    for (size_t i = 0; i < n; i++)
        if (w == 0 || s[w - 1] != s[i])
            s[w++] = s[i];
    *nout = w;
    return s;
}

int store_copy(store_account *a, uint32_t src, const uint32_t *uids, size_t n, uint32_t dst,
               uint32_t *uids_out, hv_err *err)
{
    store_batch *b;
    int rc = store_batch_begin(a, &b, err);
    if (rc < 0)
        return rc;
    const ix_mbox *s = ix_mbox_by_id(&a->ix, src), *d = ix_mbox_by_id(&a->ix, dst);
    if (!s || !d) {
        store_batch_abort(b);
        return hv_err_set(err, -ENOENT, "no such mailbox");
    }
    for (size_t k = 0; k < n; k++) {
        uint32_t i = ix_seek(s, uids[k]);
        if (i >= s->n || s->uid[i] != uids[k]) {
            if (uids_out)
                uids_out[k] = 0;
            continue;
        }
        /* The blob is already durable: it is named by a committed record. */
        batch_add_record(b, d, s->flags[i], s->idate[i], s->size[i], &s->blob[i],
                         uids_out ? &uids_out[k] : NULL);
    }
    rc = wr_commit(a, &b->frames, 1, err);
    rc = wr_end(a, rc, err);
    batch_free(b);
    return rc;
}

/* Collects the messages (by index) selected by uids into ranges of
 * consecutive indexes, as uid ranges. */
typedef struct range_acc {
    store_uid_range *r;
    size_t n, cap;
    uint32_t last_i;
} range_acc;

static void range_add(range_acc *acc, const ix_mbox *m, uint32_t i)
{
    if (acc->n && acc->last_i + 1 == i) {
        acc->r[acc->n - 1].hi = m->uid[i];
    } else {
        if (acc->n == acc->cap) {
            acc->cap = acc->cap ? acc->cap * 2 : 16;
            acc->r = realloc(acc->r, acc->cap * sizeof(store_uid_range));
        }
        acc->r[acc->n].lo = acc->r[acc->n].hi = m->uid[i];
        acc->n++;
    }
    acc->last_i = i;
}

int store_set_flags(store_account *a, uint32_t mailbox, const uint32_t *uids, size_t n,
                    enum store_flags_mode mode, uint64_t flags, uint64_t unchanged_since,
                    size_t *n_failed, hv_err *err)
{
    if (n_failed)
        *n_failed = 0;
    int rc = wr_begin(a, err);
    if (rc < 0)
        return rc;
    const ix_mbox *m = ix_mbox_by_id(&a->ix, mailbox);
    if (!m)
        return wr_end(a, hv_err_set(err, -ENOENT, "no such mailbox (id %u)", mailbox), err);
    size_t ns;
    uint32_t *s = sorted_uids(uids, n, &ns);
    range_acc acc = {0};
    uint32_t i = ns ? ix_seek(m, s[0]) : m->n;
    for (size_t k = 0; k < ns && i < m->n; k++) {
        while (i < m->n && m->uid[i] < s[k])
            i++;
        if (i >= m->n || m->uid[i] != s[k])
            continue;
        if (unchanged_since && m->modseq[i] > unchanged_since) {
            if (n_failed)
                (*n_failed)++;
            continue;
        }
        uint64_t nf = mode == STORE_FLAGS_ADD      ? m->flags[i] | flags
                      : mode == STORE_FLAGS_REMOVE ? m->flags[i] & ~flags
                                                   : flags;
        if (nf != m->flags[i])
            range_add(&acc, m, i);
    }
    free(s);
    if (acc.n) {
        store_record r;
        rec_base(a, &r, STORE_REC_FLAGS, mailbox, 0);
        r.mode = mode;
        r.flags = flags;
        r.ranges = acc.r;
        r.nranges = acc.n;
        rc = write_one(a, &r, err);
    }
    free(acc.r);
    return wr_end(a, rc, err);
}

int store_expunge(store_account *a, uint32_t mailbox, const uint32_t *uids, size_t n,
                  hv_err *err)
{
    int rc = wr_begin(a, err);
    if (rc < 0)
        return rc;
    const ix_mbox *m = ix_mbox_by_id(&a->ix, mailbox);
    if (!m)
        return wr_end(a, hv_err_set(err, -ENOENT, "no such mailbox (id %u)", mailbox), err);
    size_t ns;
    uint32_t *s = sorted_uids(uids, n, &ns);
    range_acc acc = {0};
    uint32_t i = ns ? ix_seek(m, s[0]) : m->n;
    for (size_t k = 0; k < ns && i < m->n; k++) {
        while (i < m->n && m->uid[i] < s[k])
            i++;
        if (i < m->n && m->uid[i] == s[k])
            range_add(&acc, m, i);
    }
    free(s);
    if (acc.n) {
        store_record r;
        rec_base(a, &r, STORE_REC_EXPUNGE, mailbox, 0);
        r.ranges = acc.r;
        r.nranges = acc.n;
        rc = write_one(a, &r, err);
    }
    free(acc.r);
    return wr_end(a, rc, err);
}

/* ---- keywords, subscriptions, settings ---- */

static int keyword_lookup(const store_index *ix, const char *name)
{
    for (int i = 0; i < STORE_KEYWORD_MAX; i++)
        if (ix->keywords[i] && strcasecmp(ix->keywords[i], name) == 0)
            return i;
    return -1;
}

int store_keyword(store_account *a, const char *name, int create, uint64_t *bit_out,
                  hv_err *err)
{
    size_t len = strlen(name);
    if (len == 0 || len > 200 || name[0] == '\\')
        return hv_err_set(err, -EINVAL, "invalid keyword");
    replay(a, NULL);
    int i = keyword_lookup(&a->ix, name);
    if (i < 0 && create) {
        int rc = wr_begin(a, err);
        if (rc < 0)
            return rc;
        i = keyword_lookup(&a->ix, name);
        if (i < 0) {
            int slot;
            for (slot = 0; slot < STORE_KEYWORD_MAX && a->ix.keywords[slot]; slot++)
                ;
            if (slot == STORE_KEYWORD_MAX) {
                rc = hv_err_set(err, -ENOSPC, "account %s has %d keywords already", a->name,
                                STORE_KEYWORD_MAX);
            } else {
                store_record r;
                rec_base(a, &r, STORE_REC_KEYWORD, 0, 0);
                r.keyword_bit = (uint32_t)(slot + STORE_KEYWORD_FIRST);
                r.name = name;
                r.name_len = len;
                rc = write_one(a, &r, err);
                i = slot;
            }
        }
        wr_end(a, rc, err);
        if (rc < 0)
            return rc;
    }
    if (i < 0)
        return -ENOENT;
    *bit_out = 1ull << (i + STORE_KEYWORD_FIRST);
    return 0;
}

const char *store_keyword_name(store_account *a, uint64_t bit)
{
    for (int i = 0; i < STORE_KEYWORD_MAX; i++)
        if (bit == 1ull << (i + STORE_KEYWORD_FIRST))
            return a->ix.keywords[i];
    return NULL;
}

int store_subscribe(store_account *a, const char *name, int on, hv_err *err)
{
    int rc = wr_begin(a, err);
    if (rc < 0)
        return rc;
    store_record r;
    rec_base(a, &r, STORE_REC_SUBSCRIBE, 0, 0);
    r.mode = on ? 1 : 0;
    r.name = name;
    r.name_len = strlen(name);
    rc = store_is_subscribed(a, name) == !!on ? 0 : write_one(a, &r, err);
    return wr_end(a, rc, err);
}

int store_is_subscribed(store_account *a, const char *name)
{
    for (size_t i = 0; i < a->ix.nsubs; i++)
        if (strcmp(a->ix.subs[i], name) == 0)
            return 1;
    return 0;
}

size_t store_subscription_count(store_account *a)
{
    replay(a, NULL);
    return a->ix.nsubs;
}

const char *store_subscription_at(store_account *a, size_t i)
{
    return i < a->ix.nsubs ? a->ix.subs[i] : NULL;
}

int store_setting_set(store_account *a, const char *key, const char *value, hv_err *err)
{
    if (!*key || strlen(key) > 200)
        return hv_err_set(err, -EINVAL, "invalid setting name");
    int rc = wr_begin(a, err);
    if (rc < 0)
        return rc;
    store_record r;
    rec_base(a, &r, STORE_REC_SETTING, 0, 0);
    r.name = key;
    r.name_len = strlen(key);
    r.value = value ? value : "";
    r.value_len = strlen(r.value);
    rc = write_one(a, &r, err);
    return wr_end(a, rc, err);
}

const char *store_setting_get(store_account *a, const char *key)
{
    for (size_t i = 0; i < a->ix.nsettings; i++)
        if (strcmp(a->ix.settings[i].key, key) == 0)
            return a->ix.settings[i].val;
    return NULL;
}

/* ---- reading ---- */

int store_msg_count(store_account *a, uint32_t mailbox, uint32_t *count_out)
{
    replay(a, NULL);
    const ix_mbox *m = ix_mbox_by_id(&a->ix, mailbox);
    if (!m)
        return -ENOENT;
    *count_out = m->n;
    return 0;
}

int store_msg_at(store_account *a, uint32_t mailbox, uint32_t i, store_msg *out)
{
    const ix_mbox *m = ix_mbox_by_id(&a->ix, mailbox);
    if (!m || i >= m->n)
        return -ENOENT;
    out->uid = m->uid[i];
    out->flags = m->flags[i];
    out->modseq = m->modseq[i];
    out->internal_date = m->idate[i];
    out->size = m->size[i];
    out->blob = m->blob[i];
    return 0;
}

int store_msg_seek(store_account *a, uint32_t mailbox, uint32_t uid, uint32_t *i_out)
{
    const ix_mbox *m = ix_mbox_by_id(&a->ix, mailbox);
    if (!m)
        return -ENOENT;
    *i_out = ix_seek(m, uid);
    return 0;
}

int store_msg_iter(store_account *a, uint32_t mailbox, uint32_t lo, uint32_t hi,
                   store_msg_cb cb, void *ctx, hv_err *err)
{
    int rc = replay(a, err);
    if (rc < 0)
        return rc;
    const ix_mbox *m = ix_mbox_by_id(&a->ix, mailbox);
    if (!m)
        return hv_err_set(err, -ENOENT, "no such mailbox (id %u)", mailbox);
    for (uint32_t i = ix_seek(m, lo); i < m->n && m->uid[i] <= hi; i++) {
        store_msg msg = {m->uid[i], m->flags[i], m->modseq[i], m->idate[i], m->size[i],
                         m->blob[i]};
        if (cb(ctx, &msg))
            break;
    }
    return 0;
}

int store_changes_since(store_account *a, uint64_t since, store_record_cb cb, void *ctx,
                        hv_err *err)
{
    int rc = replay(a, err);
    if (rc < 0)
        return rc;
    if (since >= a->ix.modseq)
        return 0;
    seg_list segs;
    if ((rc = log_list_segments(a->logdir, &segs, err)) < 0)
        return rc;
    /* Start in the last segment that begins at or before the wanted modseq. */
    size_t start = 0;
    for (size_t i = segs.n; i-- > 0;) {
        char path[4200];
        log_seg_path(a->logdir, segs.no[i], path, sizeof(path));
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        uint64_t base = UINT64_MAX;
        if (fd >= 0) {
            log_seg_check_header(fd, segs.no[i], &base, NULL);
            close(fd);
        }
        if (base <= since) {
            start = i;
            break;
        }
    }
    buf scratch;
    buf_init(&scratch);
    for (size_t i = start; rc == 0 && i < segs.n && segs.no[i] <= a->ix.seg; i++) {
        char path[4200];
        log_seg_path(a->logdir, segs.no[i], path, sizeof(path));
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            rc = hv_err_sys(err, "account %s: open %s", a->name, path);
            break;
        }
        struct stat st;
        fstat(fd, &st);
        uint64_t end = segs.no[i] == a->ix.seg ? a->ix.off : (uint64_t)st.st_size;
        log_reader lr;
        log_reader_init(&lr, fd, segs.no[i], SEG_HDR, end);
        const uint8_t *f;
        size_t n;
        enum log_next nx = LOG_END;
        while (rc == 0 && (nx = log_reader_next(&lr, &f, &n)) == LOG_FRAME) {
            store_record r;
            if (rec_decode(f + REC_FRAME_HDR, n - REC_FRAME_HDR, &r, &scratch) < 0) {
                nx = LOG_BAD;
                lr.off -= n;
                break;
            }
            if (r.modseq <= since || r.type == STORE_REC_CHECKPOINT)
                continue;
            r.raw = f;
            r.raw_len = n;
            r.segment = segs.no[i];
            r.offset = lr.off - n;
            if (cb(ctx, &r))
                rc = 1;
        }
        /* Everything before our position was committed, so a bad frame
         * here is damage (from before the checkpoint, which open does not
         * read). Skipping it would ship a log with a hole in it. */
        if (rc == 0 && nx == LOG_BAD)
            rc = hv_err_set(err, damaged(a, segs.no[i], lr.off, "invalid record"),
                            "account %s is damaged: log segment %llu offset %llu: invalid "
                            "record (CRC, length or content)",
                            a->name, (unsigned long long)segs.no[i],
                            (unsigned long long)lr.off);
        log_reader_free(&lr);
        close(fd);
    }
    buf_free(&scratch);
    free(segs.no);
    return rc < 0 ? rc : 0;
}

/* An fd reading as the bytes given, from offset 0: an inline body for
 * callers that want a file (they read it, or pread from 0). */
static int memfd_of(const char *data, size_t len)
{
    int fd = memfd_create("haven-blob", MFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (fs_pwrite_full(fd, data, len, 0) < 0) {
        int rc = -errno;
        close(fd);
        return rc ? rc : -EIO;
    }
    return fd;
}

int store_blob_open(store_account *a, const store_blob_id *id, int *fd_out, uint64_t *size_out,
                    hv_err *err)
{
    struct inline_ref r;
    if (inl_find(a, id, &r)) {
        /* Its only copy is in the log. */
        char *body;
        size_t len;
        if (inl_read(a, &r, &body, &len, err) < 0)
            return err ? err->code : -EUCLEAN;
        int fd = memfd_of(body, len);
        free(body);
        if (fd < 0) {
            errno = -fd;
            return hv_err_sys(err, "account %s: memfd for an inline body", a->name);
        }
        *fd_out = fd;
        if (size_out)
            *size_out = len;
        return 0;
    }
    char path[4200];
    blob_path(a->dir, id, path, sizeof(path));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return hv_err_sys(err, "account %s: blob %s", a->name, path);
    struct stat st;
    if (fstat(fd, &st) < 0) {
        close(fd);
        return hv_err_sys(err, "account %s: stat blob", a->name);
    }
    *fd_out = fd;
    if (size_out)
        *size_out = (uint64_t)st.st_size;
    return 0;
}

/* The body of an inline append anywhere in the log: the slow path for a
 * blob file that a crash left short or wrong after its checkpoint. */
static int inl_search(store_account *a, const store_blob_id *id, char **out, size_t *len)
{
    seg_list segs;
    if (log_list_segments(a->logdir, &segs, NULL) < 0)
        return -ENOENT;
    int found = -ENOENT;
    for (size_t i = 0; i < segs.n && found < 0; i++) {
        char path[4200];
        log_seg_path(a->logdir, segs.no[i], path, sizeof(path));
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        struct stat st;
        fstat(fd, &st);
        log_reader lr;
        log_reader_init(&lr, fd, segs.no[i], SEG_HDR, (uint64_t)st.st_size);
        const uint8_t *f;
        size_t n;
        while (found < 0 && log_reader_next(&lr, &f, &n) == LOG_FRAME) {
            struct inline_ref r = {*id, segs.no[i], lr.off - n, (uint32_t)n};
            if (f[REC_FRAME_HDR] == STORE_REC_APPEND_INLINE &&
                memcmp(f + REC_FRAME_HDR + REC_BODY_HDR + 28, id->b, 32) == 0)
                found = inl_read(a, &r, out, len, NULL);
        }
        log_reader_free(&lr);
        close(fd);
    }
    free(segs.no);
    return found;
}

int store_blob_read(store_account *a, const store_blob_id *id, char **out, size_t *len,
                    hv_err *err)
{
    struct inline_ref ir;
    if (inl_find(a, id, &ir) && inl_read(a, &ir, out, len, NULL) == 0)
        return 0; /* an inline body: the log is its only copy */
    char path[4200];
    blob_path(a->dir, id, path, sizeof(path));
    hv_err ferr = {0};
    int rc = fs_read_file(path, out, len, &ferr);
    if (rc == 0) {
        uint8_t got[32];
        sha256(*out, *len, got);
        if (memcmp(got, id->b, 32) == 0)
            return 0;
        free(*out);
        *out = NULL;
    }
    /* Missing or wrong: an inline append anywhere in the log may hold the
     * body (a file written by an older version, before a checkpoint). */
    if (inl_search(a, id, out, len) == 0) {
        if (rc == 0) /* the file was there but wrong: mend it */
            blob_put(a->dir, id, *out, *len, NULL);
        return 0;
    }
    if (rc < 0)
        return hv_err_set(err, rc, "account %s: %s", a->name, ferr.msg);
    log_error("store: account=%s damaged blob=%s reason=\"content does not match its "
              "SHA-256\"",
              a->name, path);
    return hv_err_set(err, -EUCLEAN, "account %s: blob %s is damaged", a->name, path);
}

void store_digest(store_account *a, uint8_t out[32])
{
    replay(a, NULL);
    ix_digest_final(&a->ix, out);
}

int store_reconstruct(const char *dir, const char *name, hv_err *err)
{
    store_account *a;
    int rc = store_open(dir, name, OPEN_REBUILD, NULL, &a, err);
    if (rc < 0)
        return rc;
    store_close(a);
    return 0;
}

/* Exposed to verify.c only. */
const store_index *store_index_of(store_account *a);
const store_index *store_index_of(store_account *a) { return &a->ix; }

int store_account_dir(const char *data_dir, const char *address, char *out, size_t outlen,
                      hv_err *err)
{
    const char *at = strrchr(address, '@');
    size_t n = strlen(address);
    if (!at || at == address || !at[1] || n > 254)
        return hv_err_set(err, -EINVAL, "invalid account address '%s'", address);
    for (const char *p = address; *p; p++) {
        char c = *p;
        int ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' ||
                 c == '_' || c == '+' || (c == '@' && p == at);
        if (!ok)
            return hv_err_set(err, -EINVAL,
                              "invalid account address '%s' (lowercase letters, digits, . _ + -)",
                              address);
    }
    if (address[0] == '.' || at[-1] == '.' || at[1] == '.' || address[n - 1] == '.' ||
        strstr(address, ".."))
        return hv_err_set(err, -EINVAL, "invalid account address '%s'", address);
    int w = snprintf(out, outlen, "%s/accounts/%s/%.*s", data_dir, at + 1, (int)(at - address),
                     address);
    if (w < 0 || (size_t)w >= outlen)
        return hv_err_set(err, -ENAMETOOLONG, "account path too long");
    return 0;
}

long store_account_count(const char *data_dir)
{
    char top[4200];
    snprintf(top, sizeof(top), "%s/accounts", data_dir);
    DIR *d = opendir(top);
    if (!d)
        return errno == ENOENT ? 0 : -errno;
    long n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        int dfd = openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
            continue; /* a stray file, not a domain */
        DIR *dd = fdopendir(dfd);
        if (!dd) {
            close(dfd);
            continue;
        }
        struct dirent *a;
        while ((a = readdir(dd))) {
            struct stat st;
            if (a->d_name[0] != '.' && fstatat(dfd, a->d_name, &st, 0) == 0 &&
                S_ISDIR(st.st_mode))
                n++;
        }
        closedir(dd);
    }
    closedir(d);
    return n;
}

/* ---- replication ---- */

int store_blob_import(store_account *a, const store_blob_id *id, const void *data, size_t len,
                      hv_err *err)
{
    if (a->flags & STORE_OPEN_READONLY)
        return hv_err_set(err, -EROFS, "account %s is open read-only", a->name);
    store_blob_id got;
    sha256(data, len, got.b);
    if (memcmp(got.b, id->b, 32) != 0)
        return hv_err_set(err, -EBADMSG, "account %s: received blob does not match its id",
                          a->name);
    return blob_write(a->dir, data, len, &got, 1, err);
}

int store_apply_frames(store_account *a, const void *frames, size_t len, hv_err *err)
{
    /* A fenced store is a replica (or an old primary rejoining as one):
     * the primary's records are exactly what it must still take. */
    fence_bypass = 1;
    int rc = wr_begin(a, err);
    fence_bypass = 0;
    if (rc < 0)
        return rc;
    /* Check everything before writing anything: a replica's log must stay
     * a byte-exact prefix of the primary's. */
    const uint8_t *p = frames;
    size_t left = len;
    uint64_t want = a->ix.modseq + 1;
    while (left) {
        if (left < REC_FRAME_HDR + REC_BODY_HDR) {
            rc = hv_err_set(err, -EBADMSG, "account %s: truncated frame", a->name);
            break;
        }
        uint32_t blen = le32(p);
        if (blen > REC_MAX_BODY || blen > left - REC_FRAME_HDR ||
            rec_crc(p, p + REC_FRAME_HDR, blen) != le32(p + 4)) {
            rc = hv_err_set(err, -EBADMSG, "account %s: frame fails its CRC", a->name);
            break;
        }
        store_record r;
        if (rec_decode(p + REC_FRAME_HDR, blen, &r, &a->scratch) < 0 ||
            r.type == STORE_REC_CHECKPOINT) {
            rc = hv_err_set(err, -EBADMSG, "account %s: malformed or local record", a->name);
            break;
        }
        if (r.modseq != want) {
            rc = hv_err_set(err, -ESPIPE, "account %s: record has modseq %llu, expected %llu",
                            a->name, (unsigned long long)r.modseq, (unsigned long long)want);
            break;
        }
        if (r.type == STORE_REC_APPEND && !r.body) {
            char path[4200];
            struct stat st;
            blob_path(a->dir, &r.blob, path, sizeof(path));
            if (stat(path, &st) < 0 || (uint64_t)st.st_size != r.size) {
                rc = hv_err_set(err, -ENOENT, "account %s: blob of modseq %llu not received",
                                a->name, (unsigned long long)r.modseq);
                break;
            }
        }
        want++;
        p += REC_FRAME_HDR + blen;
        left -= REC_FRAME_HDR + blen;
    }
    if (rc == 0) {
        buf b = {(uint8_t *)frames, len, len};
        rc = wr_commit(a, &b, 1, err);
    }
    return wr_end(a, rc, err);
}

/* ---- for other processes: replication ---- */

int store_account_barrier(const char *acct_dir, int wait, hv_err *err)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/lock", acct_dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : hv_err_sys(err, "open %s", path);
    int rc = 0;
    while (flock(fd, LOCK_EX | (wait ? 0 : LOCK_NB)) < 0) {
        if (errno == EWOULDBLOCK && !wait) {
            rc = -EWOULDBLOCK;
            break;
        }
        if (errno != EINTR) {
            rc = hv_err_sys(err, "lock %s", path);
            break;
        }
    }
    close(fd); /* lets go of the lock */
    return rc;
}

int store_durable_end(const char *acct_dir, uint64_t *seg, uint64_t *off)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/log/" DURABLE_FILE, acct_dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    uint8_t m[20];
    ssize_t n = pread(fd, m, sizeof(m), 0);
    close(fd);
    if (n != (ssize_t)sizeof(m) || crc32c(0, m, 16) != le32(m + 16))
        return -EUCLEAN;
    *seg = le64(m);
    *off = le64(m + 8);
    return 0;
}
