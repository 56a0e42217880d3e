/*
 * test_store_torn.c - torn writes, cut logs and flipped bits: what open
 * keeps, cuts, refuses and rebuilds, and what verify reports.
 *
 * One account is built once: a few segments, then a checkpoint, then a long
 * tail of records of every kind in the last segment. While building, the
 * test notes for every modseq of the tail how many messages the account
 * held and, where an operation ended, its digest. Each round then damages a
 * fresh copy of that account:
 *   - the tail is cut at a random offset, or overwritten with garbage from
 *     it to the end (a write torn by a crash): open must keep exactly the
 *     records that end before the damage, cut the rest and count the cut;
 *   - one byte of a record that valid records follow is flipped: that is
 *     damage, not a torn write, and open must refuse the account, naming
 *     it, the segment and the offset, without cutting anything;
 *   - bytes of the index checkpoint are flipped: open rebuilds it from the
 *     log and gets the same digest;
 *   - a blob is flipped: verify and store_blob_read say so.
 * The test finds frame boundaries itself (u32 body length, u32 CRC32C, body;
 * 40-byte segment header) rather than trusting the reader under test.
 *
 * HAVEN_SEED picks the random sequence (printed at start, so a failure can
 * be replayed); HAVEN_TORN_ROUNDS sets the number of cut/overwrite rounds.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/crc32c.h"
#include "lib/fsutil.h"
#include "store/store.h"
#include "testlib.h"

#define NAME "torn@example.org"
#define DEFAULT_ROUNDS 300
#define SEG_HDR 40
#define FRAME_HDR 8
#define BODY_HDR 24
#define TAIL_OPS 400

/* Small segments while the head of the log is written, so there are
 * several; then one big enough that the whole tail stays in the last. A
 * checkpoint only when asked, so the tail is long. */
static const store_options head_opts = {.segment_size = 8192, .checkpoint_records = 1000000};
static const store_options tail_opts = {.segment_size = 4u << 20, .checkpoint_records = 1000000};

#define EXPECT(cond, ...)                                                      \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "  %s:%d: %s: ", __FILE__, __LINE__, #cond);       \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
            return -1;                                                         \
        }                                                                      \
    } while (0)

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dULL;
}

static uint64_t rng_below(uint64_t *s, uint64_t n) { return n ? rng_next(s) % n : 0; }

/* ---- the account and what the test knows about it ---- */

typedef struct frame {
    uint64_t start, end, modseq;
    int type;
} frame;

static struct {
    char base[4096], work[4096], ref[4096];
    uint64_t last_seg;     /* number of the last segment */
    size_t nsegs;
    frame *fr;             /* frames of the last segment */
    size_t nfr;
    uint64_t seg_size;     /* its size */
    uint8_t *seg_bytes;    /* and content, as built */
    uint8_t *ix_bytes;     /* the index checkpoint as built */
    size_t ix_size;
    size_t ckpt_frame;     /* index in fr of the checkpoint marker */
    uint64_t ckpt_pos;     /* = fr[ckpt_frame].start: what the checkpoint covers */
    uint64_t m0, mmax;     /* modseq at the checkpoint, and at the end */
    uint32_t *count;       /* messages after modseq m0 + i */
    uint8_t (*digest)[32]; /* digest after modseq m0 + i, when have[i] */
    uint8_t *have;
    uint8_t batched[4096]; /* serials of messages appended by a batch */
} ac;

static void count_problems(void *ctx, const char *p)
{
    if (strncmp(p, "note: ", 6) != 0)
        (*(int *)ctx)++;
    fprintf(stderr, "    verify: %s\n", p);
}

typedef struct reports {
    int problems;
    int matched;         /* a report (problem or note) contained every want[] */
    int matched_problem; /* one that was a problem, not a note */
    const char *want[8]; /* NULL-terminated */
    char line[1200];     /* the first report that matched */
} reports;

static void collect(void *ctx, const char *p)
{
    reports *r = ctx;
    fprintf(stderr, "    verify: %s\n", p);
    int problem = strncmp(p, "note: ", 6) != 0, all = 1;
    r->problems += problem;
    for (int i = 0; i < 8 && r->want[i]; i++)
        all &= strstr(p, r->want[i]) != NULL;
    if (all && !r->matched)
        snprintf(r->line, sizeof(r->line), "%s", p);
    r->matched |= all;
    r->matched_problem |= all && problem;
}

static int verify_problems(const char *dir)
{
    int n = 0;
    hv_err err = {0};
    int rc = store_verify(dir, NAME, count_problems, &n, &err);
    if (rc < 0)
        fprintf(stderr, "    verify failed: %s\n", err.msg);
    return rc < 0 ? -1 : rc;
}

static uint32_t total_messages(store_account *a)
{
    uint32_t total = 0;
    size_t n = store_mailbox_count(a);
    for (size_t i = 0; i < n; i++) {
        store_mailbox_info mi;
        if (store_mailbox_at(a, i, &mi) == 0)
            total += mi.exists;
    }
    return total;
}

static void seg_path(const char *dir, uint64_t no, char *out, size_t len)
{
    snprintf(out, len, "%s/log/%020" PRIu64 ".log", dir, no);
}

static int last_segment(const char *dir, uint64_t *no, size_t *nsegs)
{
    char p[4200];
    snprintf(p, sizeof(p), "%s/log", dir);
    DIR *d = opendir(p);
    if (!d)
        return -1;
    *no = 0;
    *nsegs = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strlen(de->d_name) != 24 || strcmp(de->d_name + 20, ".log") != 0)
            continue;
        uint64_t n = strtoull(de->d_name, NULL, 10);
        if (n > *no)
            *no = n;
        (*nsegs)++;
    }
    closedir(d);
    return *nsegs ? 0 : -1;
}

static uint8_t *read_all(const char *path, size_t *len)
{
    char *data;
    if (fs_read_file(path, &data, len, NULL) < 0)
        return NULL;
    return (uint8_t *)data;
}

static int write_all(const char *path, const uint8_t *p, size_t len)
{
    int fd = open(path, O_WRONLY | O_TRUNC | O_CREAT, 0600);
    if (fd < 0)
        return -1;
    int rc = fs_write_full(fd, p, len);
    close(fd);
    return rc;
}

/* Frames of a segment file, found by their length and CRC alone. Returns
 * the offset where valid frames stop. */
static uint64_t scan_frames(const uint8_t *p, size_t size, frame **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    size_t cap = 0, off = SEG_HDR;
    while (off + FRAME_HDR <= size) {
        uint32_t len = le32(p + off);
        if (len < BODY_HDR || len > size - off - FRAME_HDR ||
            crc32c(crc32c(0, p + off, 4), p + off + FRAME_HDR, len) != le32(p + off + 4))
            break;
        if (*n == cap) {
            cap = cap ? cap * 2 : 256;
            *out = realloc(*out, cap * sizeof(frame));
        }
        (*out)[(*n)++] = (frame){off, off + FRAME_HDR + len, le64(p + off + FRAME_HDR + 8),
                                 p[off + FRAME_HDR]};
        off += FRAME_HDR + len;
    }
    return off;
}

/* A copy of the account folder. Blobs are hard links (open never changes
 * a blob; a test that damages one unshares it first); the log and index
 * are real copies. */
static int copy_tree(const char *src, const char *dst, int in_blobs)
{
    if (mkdir(dst, 0700) < 0 && errno != EEXIST)
        return -1;
    DIR *d = opendir(src);
    if (!d)
        return -1;
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char s[4400], t[4400];
        snprintf(s, sizeof(s), "%s/%s", src, de->d_name);
        snprintf(t, sizeof(t), "%s/%s", dst, de->d_name);
        struct stat st;
        if (lstat(s, &st) < 0) {
            rc = -1;
        } else if (S_ISDIR(st.st_mode)) {
            rc = copy_tree(s, t, in_blobs || strcmp(de->d_name, "blobs") == 0);
        } else if (in_blobs) {
            rc = link(s, t);
        } else {
            size_t len;
            uint8_t *data = read_all(s, &len);
            rc = data ? write_all(t, data, len) : -1;
            free(data);
        }
    }
    closedir(d);
    return rc;
}

/* Puts a working copy back to the account as built. Only the last segment
 * and the index change in a round (blobs a round adds are harmless), so
 * only they are rewritten: copying whole folders is slow on a busy disk. */
static int reset(const char *dir)
{
    char p[4300];
    seg_path(dir, ac.last_seg, p, sizeof(p));
    if (write_all(p, ac.seg_bytes, ac.seg_size) < 0)
        return -1;
    seg_path(dir, ac.last_seg + 1, p, sizeof(p));
    unlink(p);
    snprintf(p, sizeof(p), "%s/index/index.ckpt", dir);
    return write_all(p, ac.ix_bytes, ac.ix_size);
}

/* ---- building the account ---- */

static size_t make_body(uint64_t n, uint64_t *rng, char *out, size_t cap)
{
    size_t len = (size_t)snprintf(out, cap, "From: a@example.org\r\nSubject: torn %" PRIu64
                                            "\r\n\r\n", n);
    size_t want = len + 20 + (size_t)rng_below(rng, 3000);
    if (want > cap)
        want = cap;
    while (len < want)
        out[len++] = (char)('A' + rng_below(rng, 26));
    return len;
}

static void pick_uids(store_account *a, uint32_t mbox, uint64_t *rng, uint32_t *uids, size_t max,
                      size_t *n)
{
    uint32_t count = 0;
    *n = 0;
    if (store_msg_count(a, mbox, &count) < 0 || count == 0)
        return;
    size_t want = 1 + (size_t)rng_below(rng, max);
    for (size_t i = 0; i < want; i++) {
        store_msg m;
        store_msg_at(a, mbox, (uint32_t)rng_below(rng, count), &m);
        uids[(*n)++] = m.uid;
    }
}

/* One random operation of any kind. Returns the store's status; *appends
 * is set when every record it wrote is an append (batches, copies). */
static int random_op(store_account *a, uint64_t *rng, uint64_t *serial, int *appends, hv_err *err)
{
    static char body[4096];
    store_mailbox_info inbox, work, mi;
    if (store_mailbox_find(a, "INBOX", &inbox) < 0 || store_mailbox_find(a, "Work", &work) < 0)
        return hv_err_set(err, -ENOENT, "INBOX or Work missing");
    uint32_t box = rng_below(rng, 3) ? inbox.id : work.id, uids[8], out[8];
    size_t n;
    int r = (int)rng_below(rng, 100);
    *appends = 0;
    if (r < 35) {
        size_t len = make_body((*serial)++, rng, body, sizeof(body));
        *appends = 1;
        return store_append(a, box, body, len, rng_below(rng, 4) ? 0 : STORE_FLAG_SEEN,
                            1700000000 + (int64_t)*serial, NULL, err);
    }
    if (r < 45) {
        store_batch *b;
        int rc = store_batch_begin(a, &b, err);
        for (int k = 0, nb = 2 + (int)rng_below(rng, 5); rc == 0 && k < nb; k++) {
            if (*serial < sizeof(ac.batched))
                ac.batched[*serial] = 1;
            size_t len = make_body((*serial)++, rng, body, sizeof(body));
            rc = store_batch_add(b, rng_below(rng, 2) ? inbox.id : work.id, body, len, 0,
                                 1700000000 + (int64_t)*serial, NULL, err);
        }
        if (rc < 0) {
            store_batch_abort(b);
            return rc;
        }
        *appends = 1;
        return store_batch_commit(b, err);
    }
    if (r < 58) {
        static const uint64_t fl[] = {STORE_FLAG_SEEN, STORE_FLAG_FLAGGED, STORE_FLAG_ANSWERED,
                                      STORE_FLAG_DELETED | STORE_FLAG_SEEN};
        pick_uids(a, box, rng, uids, 6, &n);
        uint64_t f = fl[rng_below(rng, 4)];
        uint64_t bit;
        if (rng_below(rng, 3) == 0 && store_keyword(a, "$Label1", 0, &bit, NULL) == 0)
            f = bit;
        return store_set_flags(a, box, uids, n, (enum store_flags_mode)rng_below(rng, 3), f, 0,
                               NULL, err);
    }
    if (r < 66) {
        pick_uids(a, box, rng, uids, 3, &n);
        return store_expunge(a, box, uids, n, err);
    }
    if (r < 72) {
        pick_uids(a, inbox.id, rng, uids, 4, &n);
        *appends = 1;
        return store_copy(a, inbox.id, uids, n, work.id, out, err);
    }
    if (r < 78) {
        char name[64];
        int k = (int)rng_below(rng, 4);
        snprintf(name, sizeof(name), "Tmp/%d", k);
        if (store_mailbox_find(a, name, &mi) < 0)
            return store_mailbox_create(a, name, rng_below(rng, 2) ? STORE_USE_TRASH : 0, NULL,
                                        err);
        if (rng_below(rng, 2))
            return store_mailbox_delete(a, mi.id, err);
        char to[64];
        snprintf(to, sizeof(to), "Tmp/%d", 4 + (int)rng_below(rng, 4));
        return store_mailbox_find(a, to, NULL) == 0 ? store_mailbox_delete(a, mi.id, err)
                                                    : store_mailbox_rename(a, mi.id, to, err);
    }
    if (r < 84) {
        char name[64];
        snprintf(name, sizeof(name), "Lists/%d", (int)rng_below(rng, 6));
        return store_subscribe(a, name, (int)rng_below(rng, 2), err);
    }
    if (r < 94) {
        /* Long values make long frames: cuts land inside them too. */
        char key[32];
        static char val[1024];
        size_t vl = (size_t)rng_below(rng, sizeof(val) - 1);
        for (size_t i = 0; i < vl; i++)
            val[i] = (char)('a' + rng_below(rng, 26));
        val[vl] = 0;
        snprintf(key, sizeof(key), "pref.%d", (int)rng_below(rng, 8));
        return store_setting_set(a, key, val, err);
    }
    char kw[32];
    uint64_t bit;
    snprintf(kw, sizeof(kw), "$Label%d", (int)rng_below(rng, 12));
    return store_keyword(a, kw, 1, &bit, err);
}

/* Notes the state after each record an operation wrote. */
static void note_state(store_account *a, uint64_t before, uint32_t count_before, int appends)
{
    uint64_t after = store_highest_modseq(a);
    size_t want = (size_t)(after - ac.m0 + 1);
    ac.count = realloc(ac.count, want * sizeof(uint32_t));
    ac.digest = realloc(ac.digest, want * 32);
    ac.have = realloc(ac.have, want);
    uint32_t count = total_messages(a);
    for (uint64_t m = before + 1; m <= after; m++) {
        size_t i = (size_t)(m - ac.m0);
        /* Only appends write several records in one call, one message each. */
        ac.count[i] = m == after ? count : count_before + (appends ? (uint32_t)(m - before) : 0);
        ac.have[i] = m == after;
        if (m == after)
            store_digest(a, ac.digest[i]);
    }
}

static int build_account(uint64_t rseed)
{
    uint64_t rng = rseed * 0x9e3779b97f4a7c15ULL + 7, serial = 0;
    store_account *a;
    hv_err err = {0};
    EXPECT(store_open(ac.base, NAME, STORE_OPEN_CREATE, &head_opts, &a, &err) == 0, "%s",
           err.msg);
    EXPECT(store_mailbox_create(a, "INBOX", 0, NULL, &err) == 0, "%s", err.msg);
    EXPECT(store_mailbox_create(a, "Work", STORE_USE_ARCHIVE, NULL, &err) == 0, "%s", err.msg);
    uint64_t bit;
    EXPECT(store_keyword(a, "$Label1", 1, &bit, &err) == 0, "%s", err.msg);
    int appends;
    for (int i = 0; i < 150; i++)
        EXPECT(random_op(a, &rng, &serial, &appends, &err) == 0, "head op %d: %s", i, err.msg);
    store_close(a);

    EXPECT(store_open(ac.base, NAME, 0, &tail_opts, &a, &err) == 0, "%s", err.msg);
    EXPECT(store_checkpoint(a, &err) == 0, "%s", err.msg);
    ac.m0 = store_highest_modseq(a);
    note_state(a, ac.m0 - 1, 0, 0); /* fills slot 0: the checkpoint's state */
    for (int i = 0; i < TAIL_OPS; i++) {
        uint64_t before = store_highest_modseq(a);
        uint32_t count_before = total_messages(a);
        EXPECT(random_op(a, &rng, &serial, &appends, &err) == 0, "tail op %d: %s", i, err.msg);
        note_state(a, before, count_before, appends);
    }
    ac.mmax = store_highest_modseq(a);
    store_close(a);

    /* Where everything is, found from outside. */
    EXPECT(last_segment(ac.base, &ac.last_seg, &ac.nsegs) == 0, "no log");
    EXPECT(ac.nsegs >= 3, "only %zu segments: the head should span several", ac.nsegs);
    char path[4300];
    seg_path(ac.base, ac.last_seg, path, sizeof(path));
    size_t size;
    uint8_t *p = read_all(path, &size);
    EXPECT(p, "cannot read %s", path);
    uint64_t end = scan_frames(p, size, &ac.fr, &ac.nfr);
    ac.seg_bytes = p;
    ac.seg_size = size;
    snprintf(path, sizeof(path), "%s/index/index.ckpt", ac.base);
    ac.ix_bytes = read_all(path, &ac.ix_size);
    EXPECT(ac.ix_bytes, "cannot read %s", path);
    EXPECT(end == size, "the undamaged segment has an invalid frame at %" PRIu64, end);
    size_t ck = ac.nfr;
    for (size_t i = 0; i < ac.nfr; i++)
        if (ac.fr[i].type == STORE_REC_CHECKPOINT)
            ck = i;
    EXPECT(ck < ac.nfr && ac.fr[ck].modseq == ac.m0, "no checkpoint marker in the tail");
    ac.ckpt_frame = ck;
    ac.ckpt_pos = ac.fr[ck].start;
    uint64_t want = ac.m0;
    for (size_t i = ck + 1; i < ac.nfr; i++)
        EXPECT(ac.fr[i].modseq == ++want, "frame %zu has modseq %" PRIu64 ", want %" PRIu64,
               i, ac.fr[i].modseq, want);
    EXPECT(want == ac.mmax, "the tail ends at modseq %" PRIu64 ", the store at %" PRIu64, want,
           ac.mmax);
    printf("account: %zu segments, tail of %zu records (%" PRIu64 " bytes) after the checkpoint "
           "at offset %" PRIu64 ", %u messages\n",
           ac.nsegs, ac.nfr - ck - 1, ac.seg_size - ac.ckpt_pos, ac.ckpt_pos,
           ac.count[ac.mmax - ac.m0]);
    return 0;
}

/* The digest an account holding exactly the records up to modseq m has.
 * Where an operation ended there, the one noted while building; inside a
 * batch, that of a copy cut cleanly after that record. */
static int expected_digest(uint64_t m, uint64_t end_off, uint8_t out[32])
{
    size_t i = (size_t)(m - ac.m0);
    if (ac.have[i]) {
        memcpy(out, ac.digest[i], 32);
        return 0;
    }
    char path[4300];
    EXPECT(reset(ac.ref) == 0, "copy");
    seg_path(ac.ref, ac.last_seg, path, sizeof(path));
    EXPECT(truncate(path, (off_t)end_off) == 0, "truncate");
    store_account *a;
    hv_err err = {0};
    EXPECT(store_open(ac.ref, NAME, 0, &tail_opts, &a, &err) == 0, "%s", err.msg);
    uint64_t got_m = store_highest_modseq(a);
    uint32_t got_n = total_messages(a);
    store_digest(a, ac.digest[i]);
    store_close(a);
    EXPECT(got_m == m && got_n == ac.count[i], "reference copy holds modseq %" PRIu64 " and %u "
           "messages, want %" PRIu64 " and %u", got_m, got_n, m, ac.count[i]);
    ac.have[i] = 1;
    memcpy(out, ac.digest[i], 32);
    return 0;
}

static uint64_t file_size(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 ? (uint64_t)st.st_size : UINT64_MAX;
}

enum damage { CUT, GARBAGE };

/* Cuts the last segment at x, or overwrites it from x to the end with
 * bytes that all differ from what was there, then checks open and verify. */
static int torn_round(enum damage how, uint64_t x, uint64_t *rng, int extra_append)
{
    char path[4300];
    EXPECT(reset(ac.work) == 0, "copy");
    seg_path(ac.work, ac.last_seg, path, sizeof(path));
    if (how == CUT) {
        EXPECT(truncate(path, (off_t)x) == 0, "truncate");
    } else {
        size_t len;
        uint8_t *p = read_all(path, &len);
        EXPECT(p && len == ac.seg_size, "read segment");
        for (size_t i = x; i < len; i++)
            p[i] ^= (uint8_t)(1 + rng_below(rng, 255));
        int rc = write_all(path, p, len);
        free(p);
        EXPECT(rc == 0, "write segment");
    }
    /* What must survive: every record that ends at or before x. */
    uint64_t keep_end = ac.ckpt_pos, keep_m = ac.m0;
    for (size_t i = ac.ckpt_frame; i < ac.nfr && ac.fr[i].end <= x; i++) {
        keep_end = ac.fr[i].end;
        keep_m = ac.fr[i].modseq;
    }
    int cut = how == GARBAGE || x != keep_end;

    store_stats s0, s1;
    store_account *a;
    hv_err err = {0};
    store_get_stats(&s0);
    EXPECT(store_open(ac.work, NAME, 0, &tail_opts, &a, &err) == 0, "open: %s", err.msg);
    store_get_stats(&s1);
    uint64_t got_m = store_highest_modseq(a);
    uint32_t got_n = total_messages(a);
    uint8_t got_d[32], want_d[32];
    store_digest(a, got_d);
    store_close(a);
    EXPECT(s1.tail_truncations - s0.tail_truncations == (uint64_t)cut,
           "%" PRIu64 " tail cuts reported, want %d", s1.tail_truncations - s0.tail_truncations,
           cut);
    EXPECT(s1.index_rebuilds == s0.index_rebuilds,
           "damage after the checkpoint made open rebuild the whole index");
    EXPECT(got_m == keep_m, "open kept up to modseq %" PRIu64 ", want %" PRIu64, got_m, keep_m);
    EXPECT(got_n == ac.count[keep_m - ac.m0], "%u messages, want %u", got_n,
           ac.count[keep_m - ac.m0]);
    EXPECT(file_size(path) == keep_end, "segment is %" PRIu64 " bytes after open, want %" PRIu64,
           file_size(path), keep_end);
    if (expected_digest(keep_m, keep_end, want_d) < 0)
        return -1;
    EXPECT(memcmp(got_d, want_d, 32) == 0, "digest differs from the state at modseq %" PRIu64,
           keep_m);
    EXPECT(verify_problems(ac.work) == 0, "verify after recovery");
    if (!extra_append)
        return 0;
    /* The account goes on: the next write lands right after the cut. */
    EXPECT(store_open(ac.work, NAME, 0, &tail_opts, &a, &err) == 0, "reopen: %s", err.msg);
    store_mailbox_info mi;
    uint32_t uid = 0;
    EXPECT(store_mailbox_find(a, "INBOX", &mi) == 0, "INBOX");
    int rc = store_append(a, mi.id, "Subject: after\r\n\r\nx\r\n", 21, 0, 1, &uid, &err);
    uint64_t m_after = store_highest_modseq(a);
    store_close(a);
    EXPECT(rc == 0 && uid == mi.uidnext, "append after recovery: rc %d uid %u, want uid %u: %s",
           rc, uid, mi.uidnext, err.msg);
    EXPECT(m_after == keep_m + 1, "append after recovery took modseq %" PRIu64, m_after);
    EXPECT(verify_problems(ac.work) == 0, "verify after the next append");
    return 0;
}

static uint64_t env_u64(const char *name, uint64_t def)
{
    const char *v = getenv(name);
    return v && *v ? strtoull(v, NULL, 0) : def;
}

static uint64_t seed;

TEST(build)
{
    seed = env_u64("HAVEN_SEED", 20261125);
    printf("seed=%" PRIu64 " (set HAVEN_SEED to change)\n", seed);
    const char *t = t_tmpdir();
    snprintf(ac.base, sizeof(ac.base), "%s/base", t);
    snprintf(ac.work, sizeof(ac.work), "%s/work", t);
    snprintf(ac.ref, sizeof(ac.ref), "%s/ref", t);
    CHECK(build_account(seed) == 0);
    CHECK(verify_problems(ac.base) == 0);
    CHECK(copy_tree(ac.base, ac.work, 0) == 0 && copy_tree(ac.base, ac.ref, 0) == 0);
}

TEST(torn_tail_keeps_every_complete_record)
{
    CHECK(ac.nfr > 0);
    uint64_t rng = seed ^ 0x746f726eULL, rounds = env_u64("HAVEN_TORN_ROUNDS", DEFAULT_ROUNDS);
    uint64_t lo = ac.ckpt_pos, span = ac.seg_size - lo;
    unsigned cuts = 0, garbage = 0, clean = 0;
    /* Random offsets, cut or overwritten... */
    for (uint64_t r = 0; r < rounds; r++) {
        enum damage how = rng_below(&rng, 2) ? CUT : GARBAGE;
        uint64_t x = lo + rng_below(&rng, span);
        if (how == GARBAGE)
            garbage++;
        else
            cuts++;
        CHECKM(torn_round(how, x, &rng, r % 4 == 0) == 0,
               "round %" PRIu64 ": %s at offset %" PRIu64 " of segment %" PRIu64 " (seed %" PRIu64
               ")", r, how == CUT ? "cut" : "garbage", x, ac.last_seg, seed);
    }
    /* ...and cuts exactly at frame boundaries and one byte either side,
     * where the torn-or-not decision is closest. */
    for (size_t i = ac.ckpt_frame; i < ac.nfr; i += 1 + (size_t)rng_below(&rng, 16)) {
        for (int d = -1; d <= 1; d++) {
            uint64_t x = ac.fr[i].end + (uint64_t)(int64_t)d;
            if (x >= ac.seg_size)
                continue;
            clean += d == 0;
            CHECKM(torn_round(CUT, x, &rng, 0) == 0,
                   "boundary cut at offset %" PRIu64 " of segment %" PRIu64 " (seed %" PRIu64 ")",
                   x, ac.last_seg, seed);
        }
    }
    printf("torn tails: %u random cuts, %u garbage overwrites, %u cuts on frame boundaries (plus "
           "one byte either side) in a tail of %" PRIu64 " bytes\n",
           cuts, garbage, clean, span);
}

TEST(flipped_byte_mid_log_refuses_account)
{
    CHECK(ac.nfr > ac.ckpt_frame + 2);
    uint64_t rng = seed ^ 0x666c6970ULL;
    char path[4300];
    seg_path(ac.work, ac.last_seg, path, sizeof(path));
    for (int r = 0; r < 40; r++) {
        /* A record of the tail that a valid record follows. */
        size_t i = ac.ckpt_frame + (size_t)rng_below(&rng, ac.nfr - 1 - ac.ckpt_frame);
        const frame *f = &ac.fr[i];
        uint64_t off = f->start + rng_below(&rng, f->end - f->start);
        CHECK(reset(ac.work) == 0);
        size_t len;
        uint8_t *p = read_all(path, &len);
        CHECK(p);
        p[off] ^= (uint8_t)(1u << rng_below(&rng, 8));
        CHECK(write_all(path, p, len) == 0);

        char where[128];
        snprintf(where, sizeof(where), "log segment %" PRIu64 " offset %" PRIu64, ac.last_seg,
                 f->start);
        store_account *a;
        hv_err err = {0};
        int rc = store_open(ac.work, NAME, 0, &tail_opts, &a, &err);
        if (rc == 0)
            store_close(a);
        CHECKM(rc == -EUCLEAN, "round %d: flip at %" PRIu64 " (record at %" PRIu64 "): open "
               "returned %d", r, off, f->start, rc);
        CHECKM(strstr(err.msg, NAME) && strstr(err.msg, where),
               "round %d: the error does not name the account and '%s': %s", r, where, err.msg);
        /* Damage is reported, never "repaired" by cutting good records. */
        size_t len2;
        uint8_t *p2 = read_all(path, &len2);
        CHECK(p2);
        int same = len2 == len && memcmp(p, p2, len) == 0;
        free(p);
        free(p2);
        CHECKM(same, "round %d: a refused open changed the segment", r);
        rc = store_open(ac.work, NAME, STORE_OPEN_READONLY, &tail_opts, &a, &err);
        if (rc == 0)
            store_close(a);
        CHECKM(rc == -EUCLEAN, "round %d: a read-only open returned %d", r, rc);

        reports rep = {.want = {NAME, where}};
        CHECK(store_verify(ac.work, NAME, collect, &rep, &err) >= 1);
        CHECKM(rep.matched_problem, "round %d: verify did not name '%s'", r, where);
    }
}

static int collect_changes(void *ctx, const store_record *r)
{
    (*(uint64_t *)ctx)++;
    (void)r;
    return 0;
}

/* Flips a byte in a record before the checkpoint (in segment seg) and
 * checks verify and store_changes_since; undoes the damage before returning. */
static int old_damage_round(uint64_t seg, uint64_t *rng, unsigned *refused)
{
    char path[4300];
    seg_path(ac.work, seg, path, sizeof(path));
    size_t len;
    uint8_t *orig = read_all(path, &len), *p = malloc(len ? len : 1);
    EXPECT(orig && p, "read %s", path);
    memcpy(p, orig, len);
    frame *fr;
    size_t nfr;
    scan_frames(p, len, &fr, &nfr);
    /* In the last segment, only records before the checkpoint's. */
    size_t limit = seg == ac.last_seg ? ac.ckpt_frame : nfr - 1;
    if (limit == 0) {
        free(fr);
        free(p);
        free(orig);
        return 0;
    }
    const frame f = fr[rng_below(rng, limit)];
    free(fr);
    p[f.start + FRAME_HDR + rng_below(rng, f.end - f.start - FRAME_HDR)] ^= 0x10;
    int rc = write_all(path, p, len);
    free(p);
    char where[128];
    snprintf(where, sizeof(where), "log segment %" PRIu64 " offset %" PRIu64, seg, f.start);

    reports rep = {.want = {NAME, where}};
    hv_err err = {0}, oerr = {0};
    int vr = rc == 0 ? store_verify(ac.work, NAME, collect, &rep, &err) : -1;
    store_account *a;
    uint64_t n = 0;
    int orc = store_open(ac.work, NAME, 0, &tail_opts, &a, &oerr);
    if (orc == 0) {
        rc = store_changes_since(a, 0, collect_changes, &n, &err);
        store_close(a);
    }
    /* Later rounds and tests use this copy: undo the damage before judging. */
    int wr = write_all(path, orig, len);
    free(orig);
    EXPECT(wr == 0, "restore %s", path);
    EXPECT(vr >= 1 && rep.matched_problem, "verify did not name '%s'", where);
    if (orc < 0) {
        /* Fair too: the checkpoint's own last record was hit, so open
         * rebuilt from the whole log and met the damage itself. */
        EXPECT(orc == -EUCLEAN && strstr(oerr.msg, where), "open: %s", oerr.msg);
        (*refused)++;
        return 0;
    }
    EXPECT(rc == -EUCLEAN && strstr(err.msg, where),
           "store_changes_since over damaged %s returned %d after %" PRIu64 " records (of %" PRIu64
           "): %s",
           where, rc, n, ac.mmax, rc < 0 ? err.msg : "a gap, silently");
    return 0;
}

TEST(damage_before_checkpoint_is_found_and_not_shipped)
{
    /* Open reads only the tail after the checkpoint, by design; damage
     * further back is verify's to find, and anything that streams the
     * whole log (replication, moves) must stop at it, not skip it. */
    uint64_t rng = seed ^ 0x6f6c64ULL;
    unsigned refused = 0;
    CHECK(reset(ac.work) == 0);
    for (int r = 0; r < 12; r++) {
        uint64_t seg = ac.last_seg - rng_below(&rng, ac.nsegs);
        CHECKM(old_damage_round(seg, &rng, &refused) == 0, "round %d (segment %" PRIu64 ")", r,
               seg);
    }
    printf("damage before the checkpoint: 12 rounds, %u refused at open\n", refused);
}

TEST(damaged_index_is_reported_then_rebuilt)
{
    uint64_t rng = seed ^ 0x696e6478ULL;
    char ix[4300];
    snprintf(ix, sizeof(ix), "%s/index/index.ckpt", ac.work);
    const uint8_t *want_d = ac.digest[ac.mmax - ac.m0];
    for (int r = 0; r < 12; r++) {
        CHECK(reset(ac.work) == 0);
        size_t len;
        uint8_t *p = read_all(ix, &len);
        CHECK(p && len > 0);
        for (int k = 0, nk = 1 + (int)rng_below(&rng, 4); k < nk; k++)
            p[rng_below(&rng, len)] ^= (uint8_t)(1 + rng_below(&rng, 255));
        CHECK(write_all(ix, p, len) == 0);
        free(p);

        reports rep = {.want = {NAME, "index"}};
        hv_err err = {0};
        CHECKM(store_verify(ac.work, NAME, collect, &rep, &err) >= 1 && rep.matched_problem,
               "round %d: verify did not report the damaged index", r);
        store_stats s0, s1;
        store_account *a;
        store_get_stats(&s0);
        CHECKM(store_open(ac.work, NAME, 0, &tail_opts, &a, &err) == 0, "round %d: %s", r,
               err.msg);
        store_get_stats(&s1);
        uint8_t d[32];
        store_digest(a, d);
        uint64_t m = store_highest_modseq(a);
        store_close(a);
        CHECK(s1.index_rebuilds == s0.index_rebuilds + 1);
        CHECK(s1.tail_truncations == s0.tail_truncations);
        CHECK(m == ac.mmax && memcmp(d, want_d, 32) == 0);
        CHECK(verify_problems(ac.work) == 0);
    }
}

TEST(segment_roll_cut_short_is_removed)
{
    /* A crash while a new segment is being created leaves it empty or with
     * part of its header: no record was ever in it, so open removes it
     * (that is no torn tail) and verify calls it a note, not damage. A
     * complete header with no records yet is simply the next segment. */
    uint8_t h[SEG_HDR] = {0};
    memcpy(h, "HAVENLOG", 8);
    st32(h + 8, 1);
    st64(h + 16, ac.last_seg + 1);
    st64(h + 24, ac.mmax);
    st32(h + 36, crc32c(0, h, 36));
    static const size_t sizes[] = {0, 1, 8, 20, 39, SEG_HDR};
    char path[4300];
    seg_path(ac.work, ac.last_seg + 1, path, sizeof(path));
    const uint8_t *want_d = ac.digest[ac.mmax - ac.m0];
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        CHECK(reset(ac.work) == 0);
        CHECK(write_all(path, h, sizes[k]) == 0);
        CHECKM(verify_problems(ac.work) == 0, "a %zu-byte new segment is not damage", sizes[k]);
        store_stats s0, s1;
        store_account *a;
        hv_err err = {0};
        store_get_stats(&s0);
        CHECKM(store_open(ac.work, NAME, 0, &tail_opts, &a, &err) == 0, "%zu bytes: %s",
               sizes[k], err.msg);
        store_get_stats(&s1);
        uint8_t d[32];
        store_digest(a, d);
        CHECK(store_highest_modseq(a) == ac.mmax && memcmp(d, want_d, 32) == 0);
        CHECK(s1.tail_truncations == s0.tail_truncations && s1.index_rebuilds == s0.index_rebuilds);
        CHECKM((file_size(path) == UINT64_MAX) == (sizes[k] < SEG_HDR),
               "a %zu-byte new segment was %s", sizes[k],
               sizes[k] < SEG_HDR ? "kept" : "removed");
        /* Writing goes on, into the new segment when its header is whole. */
        store_mailbox_info mi;
        uint32_t uid;
        CHECK(store_mailbox_find(a, "INBOX", &mi) == 0);
        CHECKM(store_append(a, mi.id, "Subject: next\r\n\r\n", 17, 0, 1, &uid, &err) == 0, "%s",
               err.msg);
        store_close(a);
        uint64_t after = file_size(path);
        CHECK((after > SEG_HDR && after != UINT64_MAX) == (sizes[k] == SEG_HDR));
        CHECK(verify_problems(ac.work) == 0);
    }
    unlink(path);
}

typedef struct blob_refs {
    store_blob_id id;
    char where[4][128];
    int n;
} blob_refs;

static int find_refs(void *ctx, const store_record *r)
{
    blob_refs *b = ctx;
    if (r->type == STORE_REC_APPEND && memcmp(r->blob.b, b->id.b, 32) == 0 && b->n < 4)
        snprintf(b->where[b->n++], sizeof(b->where[0]), "log segment %" PRIu64 " offset %" PRIu64,
                 r->segment, r->offset);
    return 0;
}

TEST(damaged_blob_is_reported_with_its_record)
{
    uint64_t rng = seed ^ 0x626c6f62ULL;
    unsigned refused = 0, mended = 0;
    for (int r = 0; r < 10; r++) {
        CHECK(reset(ac.work) == 0);
        store_account *a;
        hv_err err = {0};
        CHECK(store_open(ac.work, NAME, 0, &tail_opts, &a, &err) == 0);
        store_mailbox_info mi;
        uint32_t n = 0;
        CHECK(store_mailbox_find(a, "INBOX", &mi) == 0 && store_msg_count(a, mi.id, &n) == 0);
        CHECK(n > 0);
        /* Half the rounds take a message that came in a batch, the other
         * half any: appends may be stored differently (a body small
         * enough may also travel in its log record), and both kinds must
         * be covered. Verify's verdict below says which case it is. */
        store_msg m;
        for (int tries = 0; tries < 100; tries++) {
            CHECK(store_msg_at(a, mi.id, (uint32_t)rng_below(&rng, n), &m) == 0);
            char *body = NULL;
            size_t blen;
            unsigned long long serial = ~0ull;
            if (store_blob_read(a, &m.blob, &body, &blen, NULL) == 0)
                sscanf(body, "From: a@example.org\r\nSubject: torn %llu", &serial);
            free(body);
            if (r % 2 || (serial < sizeof(ac.batched) && ac.batched[serial]))
                break;
        }
        blob_refs refs = {.id = m.blob};
        CHECK(store_changes_since(a, 0, find_refs, &refs, &err) == 0 && refs.n >= 1);

        /* Unshare the hard link before damaging it, then flip one byte. */
        char hex[65], path[4400];
        static const char digits[] = "0123456789abcdef";
        for (int i = 0; i < 32; i++) {
            hex[2 * i] = digits[m.blob.b[i] >> 4];
            hex[2 * i + 1] = digits[m.blob.b[i] & 15];
        }
        hex[64] = 0;
        snprintf(path, sizeof(path), "%s/blobs/%.2s/%s", ac.work, hex, hex);
        size_t len;
        uint8_t *p = read_all(path, &len);
        if (!p) {
            /* An inline body has no file (the log is its only copy): plant
             * a damaged one, as an older version could have left. */
            char *body;
            CHECK(store_blob_read(a, &m.blob, &body, &len, &err) == 0);
            p = (uint8_t *)body;
        }
        CHECK(p && len == m.size);
        size_t at = (size_t)rng_below(&rng, len);
        uint8_t was = p[at];
        p[at] ^= (uint8_t)(1u << rng_below(&rng, 8));
        CHECK((unlink(path) == 0 || errno == ENOENT) && write_all(path, p, len) == 0);

        /* Verify first: a read may mend the file (see below). The blob may
         * be named by several records (copies): any of them will do. */
        reports rep = {.want = {NAME, hex}};
        int vr = store_verify(ac.work, NAME, collect, &rep, &err);
        char *data = NULL;
        size_t dlen = 0;
        hv_err rerr = {0};
        int rc = store_blob_read(a, &m.blob, &data, &dlen, &rerr);
        store_close(a);
        p[at] = was;
        int right = rc == 0 && dlen == len && memcmp(data, p, len) == 0;
        free(data);
        int wr = write_all(path, p, len); /* later rounds use this copy */
        free(p);
        CHECK(wr == 0);
        CHECKM(rep.matched, "round %d: verify did not mention blob %s", r, hex);
        int named = 0;
        for (int k = 0; k < refs.n; k++)
            named |= strstr(rep.line, refs.where[k]) != NULL;
        CHECKM(named, "round %d: verify did not name the record of blob %s (%s)", r, hex,
               refs.where[0]);
        if (rep.matched_problem) {
            /* The only copy is damaged: refuse, never serve wrong bytes. */
            CHECK(vr == 1);
            CHECKM(rc == -EUCLEAN && strstr(rerr.msg, NAME),
                   "round %d: store_blob_read gave %d: %s", r, rc, rerr.msg);
            refused++;
        } else {
            /* A note: the body has a second copy in the log (an inline
             * append), so the read must give the true bytes from there. */
            CHECK(vr == 0);
            CHECKM(right, "round %d: store_blob_read gave %d and %s bytes", r, rc,
                   rc == 0 ? "wrong" : "no");
            mended++;
        }
    }
    printf("damaged blobs: %u refused (only copy), %u read from the log's copy\n", refused,
           mended);
}

int main(void)
{
    RUN(build);
    RUN(torn_tail_keeps_every_complete_record);
    RUN(flipped_byte_mid_log_refuses_account);
    RUN(damage_before_checkpoint_is_found_and_not_shipped);
    RUN(segment_roll_cut_short_is_removed);
    RUN(damaged_index_is_reported_then_rebuilt);
    RUN(damaged_blob_is_reported_with_its_record);
    free(ac.fr);
    free(ac.seg_bytes);
    free(ac.ix_bytes);
    free(ac.count);
    free(ac.digest);
    free(ac.have);
    return t_done();
}
