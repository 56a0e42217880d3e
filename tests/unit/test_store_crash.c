/*
 * test_store_crash.c - kill -9 a writer at random moments: nothing it was
 * told is durable may be lost, and nothing else may appear.
 *
 * A child process writes to one account in a loop (appends, 5-message
 * batches, flag changes, expunges, a mailbox created and deleted) and, each
 * time a call has returned success, tells the parent through a pipe what was
 * acknowledged. The pipe is the point: the child writes to it only after the
 * store said yes, so an ack the parent holds is a promise the store made.
 * Before each call the child also announces its intent, so the parent knows
 * the one change that may be in flight at the kill and may go either way.
 *
 * The parent SIGKILLs the child after a random delay, reopens the account as
 * a writer (which runs recovery), compares the store with the acks, then
 * runs store_verify. Rounds continue on the account the earlier rounds left,
 * with small segments and frequent checkpoints, so kills also land in
 * recovery, checkpoint writes and segment rolls.
 *
 * HAVEN_SEED picks the random sequence (printed at start, so a failure can
 * be replayed); HAVEN_CRASH_ROUNDS shortens the run for local iteration.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/crc32c.h"
#include "store/store.h"
#include "testlib.h"

#define NAME "crash@example.org"
#define DEFAULT_ROUNDS 200
#define MAX_DELAY_US 20000
#define MAX_ACKS_WAITED 8
#define BATCH 5
#define SPARE "Spare/Box"

/* What the child tells the parent; one write() each (or one per batch), far
 * below PIPE_BUF, so a kill never leaves half an event in the pipe. Each
 * EV_ACK_x is its EV_INTENT_x plus one (apply_events relies on it). */
enum ev_kind {
    EV_READY = 1,
    EV_INTENT_APPEND, /* seq, flags; n messages (1 or BATCH) from seq on */
    EV_ACK_APPEND,    /* seq, uid, flags */
    EV_INTENT_FLAGS,  /* uid, flags: the value the message will have */
    EV_ACK_FLAGS,     /* uid, flags */
    EV_INTENT_EXPUNGE,
    EV_ACK_EXPUNGE,   /* uid */
    EV_INTENT_MBOX,   /* n: 1 when SPARE will exist afterwards, 0 when not */
    EV_ACK_MBOX,
};

typedef struct ev {
    uint32_t kind;
    uint32_t uid;
    uint32_t n;
    uint32_t pad;
    uint64_t seq;
    uint64_t flags;
} ev;

static const store_options opts = {.segment_size = 16384, .checkpoint_records = 24};
static char acct_dir[4096];

/* ---- deterministic randomness ---- */

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

/* ---- message bodies: the seq is inside, the rest follows from it ---- */

static size_t make_body(uint64_t seq, char *out, size_t cap)
{
    int h = snprintf(out, cap,
                     "From: writer@example.org\r\nTo: " NAME "\r\nSubject: crash test %" PRIu64
                     "\r\nX-Seq: %" PRIu64 "\r\n\r\n",
                     seq, seq);
    size_t len = (size_t)h, want = len + 100 + (size_t)(seq * 7919 % 1400);
    if (want > cap)
        want = cap;
    for (size_t col = 0; len < want; len++, col++)
        out[len] = col % 72 == 70 ? '\r' : col % 72 == 71 ? '\n' : (char)('a' + (seq + len) % 26);
    return len;
}

static int body_seq(const char *data, size_t len, uint64_t *seq)
{
    const char *p = memmem(data, len, "\r\nX-Seq: ", 9);
    if (!p)
        return -1;
    *seq = strtoull(p + 9, NULL, 10);
    return 0;
}

static int64_t idate_of(uint64_t seq) { return 1700000000 + (int64_t)seq; }

/* ---- the child ---- */

static void send_ev(int fd, const ev *e, size_t n)
{
    if (write(fd, e, n * sizeof(ev)) != (ssize_t)(n * sizeof(ev)))
        _exit(4);
}

__attribute__((noreturn)) static void child_fail(const char *what, const hv_err *err)
{
    fprintf(stderr, "child: %s failed: %s\n", what, err->msg);
    _exit(3);
}

static uint64_t next_flags(uint64_t old, uint64_t kw, uint64_t *rng, enum store_flags_mode *mode,
                           uint64_t *arg)
{
    /* Every choice changes the message, so every call writes a record. */
    if (!(old & STORE_FLAG_SEEN)) {
        *mode = STORE_FLAGS_ADD;
        *arg = STORE_FLAG_SEEN;
        return old | STORE_FLAG_SEEN;
    }
    if (!(old & kw)) {
        *mode = STORE_FLAGS_ADD;
        *arg = kw;
        return old | kw;
    }
    if (rng_below(rng, 2)) {
        *mode = STORE_FLAGS_REMOVE;
        *arg = STORE_FLAG_SEEN;
        return old & ~(uint64_t)STORE_FLAG_SEEN;
    }
    *mode = STORE_FLAGS_REPLACE;
    *arg = STORE_FLAG_FLAGGED | STORE_FLAG_ANSWERED;
    return *arg;
}

__attribute__((noreturn)) static void child_main(int wfd, uint64_t seq, uint64_t rng)
{
    store_account *a;
    hv_err err = {0};
    if (store_open(acct_dir, NAME, 0, &opts, &a, &err) < 0)
        child_fail("open", &err);
    store_mailbox_info mi;
    if (store_mailbox_find(a, "INBOX", &mi) < 0)
        child_fail("find INBOX", &err);
    uint32_t inbox = mi.id;
    uint64_t kw;
    if (store_keyword(a, "$Crash", 1, &kw, &err) < 0)
        child_fail("keyword", &err);
    ev e = {.kind = EV_READY};
    send_ev(wfd, &e, 1);
    static char body[2048];
    for (uint64_t i = 0;; i++) {
        uint32_t n = 0;
        if (store_msg_count(a, inbox, &n) < 0)
            child_fail("count", &err);
        if (i % 3 == 2 && n > 0) {
            /* A flag change on one of the last few messages. */
            store_msg m;
            uint32_t k = n - 1 - (uint32_t)rng_below(&rng, n < 8 ? n : 8);
            store_msg_at(a, inbox, k, &m);
            enum store_flags_mode mode;
            uint64_t arg, nf = next_flags(m.flags, kw, &rng, &mode, &arg);
            e = (ev){.kind = EV_INTENT_FLAGS, .uid = m.uid, .flags = nf};
            send_ev(wfd, &e, 1);
            if (store_set_flags(a, inbox, &m.uid, 1, mode, arg, 0, NULL, &err) < 0)
                child_fail("set flags", &err);
            e.kind = EV_ACK_FLAGS;
            send_ev(wfd, &e, 1);
        } else if (i % 7 == 6 && n > 3) {
            store_msg m;
            store_msg_at(a, inbox, (uint32_t)rng_below(&rng, n - 1), &m);
            e = (ev){.kind = EV_INTENT_EXPUNGE, .uid = m.uid};
            send_ev(wfd, &e, 1);
            if (store_expunge(a, inbox, &m.uid, 1, &err) < 0)
                child_fail("expunge", &err);
            e.kind = EV_ACK_EXPUNGE;
            send_ev(wfd, &e, 1);
        } else if (i % 13 == 12) {
            int exists = store_mailbox_find(a, SPARE, &mi) == 0;
            e = (ev){.kind = EV_INTENT_MBOX, .n = !exists};
            send_ev(wfd, &e, 1);
            if (exists ? store_mailbox_delete(a, mi.id, &err)
                       : store_mailbox_create(a, SPARE, STORE_USE_ARCHIVE, NULL, &err))
                child_fail("mailbox create/delete", &err);
            e.kind = EV_ACK_MBOX;
            send_ev(wfd, &e, 1);
        } else if (i % 5 == 4) {
            uint64_t fl = seq % 4 == 0 ? STORE_FLAG_FLAGGED : 0;
            e = (ev){.kind = EV_INTENT_APPEND, .n = BATCH, .seq = seq, .flags = fl};
            send_ev(wfd, &e, 1);
            store_batch *b;
            uint32_t uids[BATCH];
            if (store_batch_begin(a, &b, &err) < 0)
                child_fail("batch begin", &err);
            for (int k = 0; k < BATCH; k++) {
                size_t len = make_body(seq + (uint64_t)k, body, sizeof(body));
                if (store_batch_add(b, inbox, body, len, fl, idate_of(seq + (uint64_t)k),
                                    &uids[k], &err) < 0)
                    child_fail("batch add", &err);
            }
            if (store_batch_commit(b, &err) < 0)
                child_fail("batch commit", &err);
            ev acks[BATCH];
            for (int k = 0; k < BATCH; k++)
                acks[k] = (ev){.kind = EV_ACK_APPEND, .uid = uids[k],
                               .seq = seq + (uint64_t)k, .flags = fl};
            send_ev(wfd, acks, BATCH);
            seq += BATCH;
        } else {
            uint64_t fl = seq % 5 == 0 ? STORE_FLAG_SEEN : 0;
            e = (ev){.kind = EV_INTENT_APPEND, .n = 1, .seq = seq, .flags = fl};
            send_ev(wfd, &e, 1);
            size_t len = make_body(seq, body, sizeof(body));
            uint32_t uid;
            if (store_append(a, inbox, body, len, fl, idate_of(seq), &uid, &err) < 0)
                child_fail("append", &err);
            e.kind = EV_ACK_APPEND;
            e.uid = uid;
            send_ev(wfd, &e, 1);
            seq++;
        }
    }
}

/* ---- the parent's model of what must be there ---- */

static int is_ack(uint32_t kind)
{
    return kind == EV_ACK_APPEND || kind == EV_ACK_FLAGS || kind == EV_ACK_EXPUNGE ||
           kind == EV_ACK_MBOX;
}

typedef struct model_msg {
    uint32_t uid;
    uint64_t seq, flags;
} model_msg;

typedef struct model {
    model_msg *m;
    size_t n, cap;
    uint32_t max_uid;  /* highest uid ever acked or seen */
    uint64_t next_seq; /* first seq no child has announced */
    int spare;         /* SPARE exists */
} model;

static model_msg *model_find(model *md, uint32_t uid)
{
    size_t lo = 0, hi = md->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (md->m[mid].uid < uid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < md->n && md->m[lo].uid == uid ? &md->m[lo] : NULL;
}

static void model_push(model *md, uint32_t uid, uint64_t seq, uint64_t flags)
{
    if (md->n == md->cap) {
        md->cap = md->cap ? md->cap * 2 : 256;
        md->m = realloc(md->m, md->cap * sizeof(model_msg));
    }
    md->m[md->n++] = (model_msg){uid, seq, flags};
}

/* The change that was announced but not acknowledged when the child died. */
typedef struct inflight {
    ev intent;
    int open;
} inflight;

typedef struct round_stats {
    unsigned acks, inflight_kept, inflight_lost, torn_seen, before_ready, short_segments;
} round_stats;

/* Applies the acks of one round to the model, checking each as it comes. */
static int apply_events(model *md, const ev *evs, size_t n, inflight *fl, unsigned *acks)
{
    fl->open = 0;
    for (size_t i = 0; i < n; i++) {
        const ev *e = &evs[i];
        switch (e->kind) {
        case EV_READY:
            break;
        case EV_INTENT_APPEND:
        case EV_INTENT_FLAGS:
        case EV_INTENT_EXPUNGE:
        case EV_INTENT_MBOX:
            fl->intent = *e;
            fl->open = 1;
            if (e->kind == EV_INTENT_APPEND) {
                if (e->seq != md->next_seq) {
                    fprintf(stderr, "  child announced seq %" PRIu64 ", want %" PRIu64 "\n",
                            e->seq, md->next_seq);
                    return -1;
                }
                md->next_seq = e->seq + e->n;
            }
            break;
        case EV_ACK_APPEND:
            if (e->uid <= md->max_uid) {
                fprintf(stderr, "  acked uid %u is not above %u\n", e->uid, md->max_uid);
                return -1;
            }
            md->max_uid = e->uid;
            model_push(md, e->uid, e->seq, e->flags);
            (*acks)++;
            if (!fl->open || fl->intent.kind != EV_INTENT_APPEND || e->seq < fl->intent.seq ||
                e->seq >= fl->intent.seq + fl->intent.n) {
                fprintf(stderr, "  append of seq %" PRIu64 " acked without its intent\n", e->seq);
                return -1;
            }
            /* A batch's acks come in one write: the last one settles it. */
            fl->open = e->seq + 1 != fl->intent.seq + fl->intent.n;
            break;
        case EV_ACK_FLAGS:
        case EV_ACK_EXPUNGE:
        case EV_ACK_MBOX:
            /* Each ack answers the intent just before it. */
            if (!fl->open || fl->intent.kind + 1 != e->kind || fl->intent.uid != e->uid) {
                fprintf(stderr, "  ack %u (uid %u) does not answer the intent before it\n",
                        e->kind, e->uid);
                return -1;
            }
            if (e->kind == EV_ACK_FLAGS) {
                model_msg *m = model_find(md, e->uid);
                if (!m) {
                    fprintf(stderr, "  flags acked on uid %u, which the model lacks\n", e->uid);
                    return -1;
                }
                m->flags = e->flags;
            } else if (e->kind == EV_ACK_EXPUNGE) {
                model_msg *m = model_find(md, e->uid);
                if (!m) {
                    fprintf(stderr, "  expunge acked on uid %u, which the model lacks\n", e->uid);
                    return -1;
                }
                memmove(m, m + 1, (size_t)(md->m + md->n - (m + 1)) * sizeof(model_msg));
                md->n--;
            } else {
                md->spare = (int)e->n;
            }
            (*acks)++;
            fl->open = 0;
            break;
        default:
            fprintf(stderr, "  unknown event %u from the child\n", e->kind);
            return -1;
        }
    }
    return 0;
}

/* ---- looking at the log from outside ---- */

/* The last segment's path and whether it ends in a torn frame (bytes after
 * the last frame whose length and CRC check out). A segment shorter than
 * its header is a roll cut short: removed at open, not a torn tail. */
static int last_segment_torn(const char *dir, int *short_seg)
{
    char logdir[4200], path[4300];
    snprintf(logdir, sizeof(logdir), "%s/log", dir);
    DIR *d = opendir(logdir);
    if (!d)
        return -1;
    char best[256] = "";
    struct dirent *de;
    while ((de = readdir(d)))
        if (strlen(de->d_name) == 24 && strcmp(de->d_name + 20, ".log") == 0 &&
            strcmp(de->d_name, best) > 0)
            snprintf(best, sizeof(best), "%s", de->d_name);
    closedir(d);
    snprintf(path, sizeof(path), "%s/%s", logdir, best);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    struct stat st;
    fstat(fd, &st);
    size_t size = (size_t)st.st_size;
    uint8_t *data = malloc(size ? size : 1);
    ssize_t got = pread(fd, data, size, 0);
    close(fd);
    int torn = 0;
    if (short_seg)
        *short_seg = size < 40;
    if (got == (ssize_t)size && size > 40) {
        size_t off = 40;
        while (off + 8 <= size) {
            uint32_t len = le32(data + off);
            if (len < 24 || len > size - off - 8 ||
                crc32c(crc32c(0, data + off, 4), data + off + 8, len) != le32(data + off + 4))
                break;
            off += 8 + len;
        }
        torn = off != size;
    }
    free(data);
    return torn;
}

/* ---- checks after a kill ---- */

/* Files in dir/sub other than keep: temp files a killed writer left. */
static int stray_files(const char *dir, const char *sub, const char *keep)
{
    char p[4300];
    snprintf(p, sizeof(p), "%s/%s", dir, sub);
    DIR *d = opendir(p);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.' && strcmp(de->d_name, keep) != 0) {
            fprintf(stderr, "    left behind: %s/%s\n", sub, de->d_name);
            n++;
        }
    closedir(d);
    return n;
}

static void count_problems(void *ctx, const char *p)
{
    if (strncmp(p, "note: ", 6) != 0)
        (*(int *)ctx)++;
    fprintf(stderr, "    verify: %s\n", p);
}

static int in_flight(const inflight *fl, uint32_t kind, uint32_t uid)
{
    return fl->open && fl->intent.kind == kind && fl->intent.uid == uid;
}

/* Compares the reopened account with the model; on success the model
 * becomes what the store holds (the in-flight change settled one way). */
static int check_store(store_account *a, model *md, const inflight *fl, round_stats *rs)
{
    store_mailbox_info mi;
    if (store_mailbox_find(a, "INBOX", &mi) < 0) {
        fprintf(stderr, "  INBOX is gone\n");
        return -1;
    }
    uint32_t inbox = mi.id, n = 0;
    store_msg_count(a, inbox, &n);
    int spare = store_mailbox_find(a, SPARE, &mi) == 0;
    int fl_mbox = fl->open && fl->intent.kind == EV_INTENT_MBOX;
    if (spare != md->spare && !(fl_mbox && spare == (int)fl->intent.n)) {
        fprintf(stderr, "  mailbox %s %s, acks say it should %s\n", SPARE,
                spare ? "exists" : "is missing", md->spare ? "exist" : "not");
        return -1;
    }
    model nw = {0};
    nw.max_uid = md->max_uid;
    nw.next_seq = md->next_seq;
    nw.spare = spare;
    uint8_t *seen = calloc(md->next_seq + 1, 1);
    size_t mi_model = 0;
    int rc = 0, kept = 0;
    uint32_t prev_uid = 0;
    for (uint32_t i = 0; i < n && rc == 0; i++) {
        store_msg m;
        hv_err err = {0};
        char *data = NULL;
        size_t len = 0;
        uint64_t seq;
        static char want[2048];
        if (store_msg_at(a, inbox, i, &m) < 0 || m.uid <= prev_uid) {
            fprintf(stderr, "  message %u: uid %u after %u\n", i, m.uid, prev_uid);
            rc = -1;
            break;
        }
        prev_uid = m.uid;
        if (store_blob_read(a, &m.blob, &data, &len, &err) < 0 || body_seq(data, len, &seq) < 0 ||
            seq >= md->next_seq) {
            fprintf(stderr, "  uid %u: body unreadable or unknown: %s\n", m.uid, err.msg);
            free(data);
            rc = -1;
            break;
        }
        size_t wlen = make_body(seq, want, sizeof(want));
        if (wlen != len || memcmp(want, data, len) != 0 || m.size != len ||
            m.internal_date != idate_of(seq)) {
            fprintf(stderr, "  uid %u (seq %" PRIu64 "): body, size or date damaged (len %zu/%zu,"
                    " size %" PRIu64 ", date %" PRId64 ")\n", m.uid, seq, len, wlen, m.size,
                    m.internal_date);
            rc = -1;
        }
        free(data);
        if (seen[seq]++) {
            fprintf(stderr, "  seq %" PRIu64 " appears twice (uid %u)\n", seq, m.uid);
            rc = -1;
        }
        /* Every model message before this uid must have been expunged in flight. */
        while (rc == 0 && mi_model < md->n && md->m[mi_model].uid < m.uid) {
            const model_msg *gone = &md->m[mi_model++];
            if (!in_flight(fl, EV_INTENT_EXPUNGE, gone->uid)) {
                fprintf(stderr, "  acked uid %u (seq %" PRIu64 ") is missing\n", gone->uid,
                        gone->seq);
                rc = -1;
            }
        }
        if (rc < 0)
            break;
        if (mi_model < md->n && md->m[mi_model].uid == m.uid) {
            const model_msg *mm = &md->m[mi_model++];
            int fl_here = in_flight(fl, EV_INTENT_FLAGS, m.uid);
            if (mm->seq != seq) {
                fprintf(stderr, "  uid %u holds seq %" PRIu64 ", acked %" PRIu64 "\n", m.uid, seq,
                        mm->seq);
                rc = -1;
            } else if (m.flags != mm->flags && !(fl_here && m.flags == fl->intent.flags)) {
                fprintf(stderr, "  uid %u flags %#" PRIx64 ", acked %#" PRIx64 "\n", m.uid,
                        m.flags, mm->flags);
                rc = -1;
            }
        } else {
            /* Not acked: only the in-flight append may show up, in order. */
            int ok = fl->open && fl->intent.kind == EV_INTENT_APPEND && seq >= fl->intent.seq &&
                     seq < fl->intent.seq + fl->intent.n && m.uid > md->max_uid &&
                     m.flags == fl->intent.flags &&
                     (seq == fl->intent.seq || seen[seq - 1]);
            if (!ok) {
                fprintf(stderr, "  uid %u (seq %" PRIu64 ", flags %#" PRIx64
                                ") was never acked and is not the write in flight\n",
                        m.uid, seq, m.flags);
                rc = -1;
            }
            kept = 1;
            if (m.uid > nw.max_uid)
                nw.max_uid = m.uid;
        }
        model_push(&nw, m.uid, seq, m.flags);
    }
    while (rc == 0 && mi_model < md->n) {
        const model_msg *gone = &md->m[mi_model++];
        if (!in_flight(fl, EV_INTENT_EXPUNGE, gone->uid)) {
            fprintf(stderr, "  acked uid %u (seq %" PRIu64 ") is missing\n", gone->uid, gone->seq);
            rc = -1;
        }
    }
    free(seen);
    if (rc < 0) {
        free(nw.m);
        return rc;
    }
    if (fl->open) {
        if (kept || (fl->intent.kind == EV_INTENT_FLAGS && model_find(&nw, fl->intent.uid) &&
                     model_find(&nw, fl->intent.uid)->flags == fl->intent.flags) ||
            (fl->intent.kind == EV_INTENT_EXPUNGE && !model_find(&nw, fl->intent.uid)) ||
            (fl_mbox && spare == (int)fl->intent.n))
            rs->inflight_kept++;
        else
            rs->inflight_lost++;
    }
    free(md->m);
    *md = nw;
    return 0;
}

static int env_int(const char *name, int def)
{
    const char *v = getenv(name);
    return v && *v ? atoi(v) : def;
}

static uint64_t env_u64(const char *name, uint64_t def)
{
    const char *v = getenv(name);
    return v && *v ? strtoull(v, NULL, 0) : def;
}

static void sleep_us(uint64_t us)
{
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Reads what is in the pipe until EOF; returns the number of events. */
static size_t drain(int fd, ev **evs, size_t *cap, size_t have)
{
    size_t bytes = have * sizeof(ev);
    for (;;) {
        if ((bytes + sizeof(ev) * 64) > *cap * sizeof(ev)) {
            *cap = *cap ? *cap * 2 : 1024;
            *evs = realloc(*evs, *cap * sizeof(ev));
        }
        ssize_t r = read(fd, (char *)*evs + bytes, *cap * sizeof(ev) - bytes);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        bytes += (size_t)r;
    }
    return bytes / sizeof(ev);
}

TEST(kill_writer_at_random_moments)
{
    uint64_t seed = env_u64("HAVEN_SEED", 20261125);
    int rounds = env_int("HAVEN_CRASH_ROUNDS", DEFAULT_ROUNDS);
    printf("seed=%" PRIu64 " rounds=%d (set HAVEN_SEED / HAVEN_CRASH_ROUNDS to change)\n", seed,
           rounds);
    fflush(stdout);
    uint64_t rng = seed * 0x9e3779b97f4a7c15ULL + 1;

    snprintf(acct_dir, sizeof(acct_dir), "%s/acct_dir", t_tmpdir());
    store_account *a;
    hv_err err = {0};
    CHECKM(store_open(acct_dir, NAME, STORE_OPEN_CREATE, &opts, &a, &err) == 0, "%s", err.msg);
    CHECK(store_mailbox_create(a, "INBOX", 0, NULL, &err) == 0);
    store_close(a);

    model md = {0};
    round_stats rs = {0};
    ev *evs = NULL;
    size_t cap = 0;
    store_stats st0, st1;
    for (int round = 0; round < rounds; round++) {
        int p[2];
        CHECK(pipe2(p, O_CLOEXEC) == 0);
        fflush(stdout);
        fflush(stderr);
        uint64_t child_rng = rng_next(&rng) | 1;
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            close(p[0]);
            child_main(p[1], md.next_seq, child_rng);
        }
        close(p[1]);
        /* The moment is random in two ways: after a random number of acks
         * (so a slow disk still sees writes finish between kills), then
         * after a random delay within the next writes. One round in five
         * skips the first part and may land in the child's open, that is in
         * the recovery of the previous kill. */
        size_t nev = 0;
        if (cap == 0) {
            cap = 1024;
            evs = realloc(evs, cap * sizeof(ev));
        }
        if (rng_below(&rng, 5) == 0) {
            rs.before_ready++;
        } else {
            unsigned want = (unsigned)rng_below(&rng, MAX_ACKS_WAITED + 1), got = 0;
            while (got < want || nev == 0) {
                if (nev == cap) {
                    cap *= 2;
                    evs = realloc(evs, cap * sizeof(ev));
                }
                ssize_t r = read(p[0], &evs[nev], sizeof(ev));
                if (r < 0 && errno == EINTR)
                    continue;
                if (r != (ssize_t)sizeof(ev))
                    break; /* the child died: the checks below say why */
                got += is_ack(evs[nev++].kind);
            }
        }
        sleep_us(rng_below(&rng, MAX_DELAY_US + 1));
        kill(pid, SIGKILL);
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        nev = drain(p[0], &evs, &cap, nev);
        close(p[0]);
        CHECKM(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
               "round %d: the child ended by itself (status %#x): a write failed", round, status);

        inflight fl = {0};
        unsigned acks = 0;
        CHECKM(apply_events(&md, evs, nev, &fl, &acks) == 0, "round %d: bad event stream",
               round);
        rs.acks += acks;
        int short_seg = 0, torn = last_segment_torn(acct_dir, &short_seg);
        CHECK(torn >= 0);
        rs.torn_seen += (unsigned)torn;
        rs.short_segments += (unsigned)short_seg;

        store_get_stats(&st0);
        CHECKM(store_open(acct_dir, NAME, 0, &opts, &a, &err) == 0, "round %d: reopen: %s", round,
               err.msg);
        store_get_stats(&st1);
        CHECKM(st1.tail_truncations - st0.tail_truncations == (uint64_t)torn,
               "round %d: torn tail %d but %" PRIu64 " truncations", round, torn,
               st1.tail_truncations - st0.tail_truncations);
        int rc = check_store(a, &md, &fl, &rs);
        store_close(a);
        /* A writer's open sweeps up after writers that died: a kill during
         * a checkpoint or a blob write must not leak a file per crash. */
        CHECKM(stray_files(acct_dir, "index", "index.ckpt") == 0 &&
                   stray_files(acct_dir, "blobs/tmp", "") == 0,
               "round %d: temp files of the killed writer survived a writer's open", round);
        CHECKM(rc == 0, "round %d (seed %" PRIu64 "): the store does not hold what was acked",
               round, seed);
        CHECKM(last_segment_torn(acct_dir, NULL) == 0, "round %d: a torn tail survived the reopen",
               round);
        int problems = 0;
        int vr = store_verify(acct_dir, NAME, count_problems, &problems, &err);
        CHECKM(vr == 0 && problems == 0, "round %d: verify found %d problems (%s)", round, vr,
               vr < 0 ? err.msg : "see above");
    }
    printf("kills=%d acked=%u in-flight kept=%u lost=%u torn-tails=%u half-made-segments=%u "
           "killed-before-ready=%u messages=%zu\n",
           rounds, rs.acks, rs.inflight_kept, rs.inflight_lost, rs.torn_seen, rs.short_segments,
           rs.before_ready, md.n);
    /* A run that acked nothing would prove nothing. */
    CHECK(rounds < 20 || rs.acks > (unsigned)rounds);
    free(evs);
    free(md.m);
}

int main(void)
{
    RUN(kill_writer_at_random_moments);
    return t_done();
}
