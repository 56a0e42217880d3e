/*
 * repl_replica.c - the replica side of replication.
 *
 * A connector thread dials the primary (repl_primary), authenticates and
 * keeps the link up, redialling with backoff after any failure. The link's
 * I/O thread files each message under its account, in order; a pool of
 * workers applies them, one account per worker at a time, so a slow fsync
 * on one account never holds up another:
 *   ACCOUNT     open (create) the account, answer POSITION: the highest
 *               modseq this store holds durably and that record's CRC;
 *   BLOB        collect the chunks, then write the blob file (a pool of
 *               blob writers does it, several at once), hash checked;
 *   FRAMES      collect, then, once the account's blobs are written and
 *               made durable (one syncfs), one store_apply_frames for
 *               everything that is waiting (checked whole, then one
 *               fdatasync), then ACK the account's highest modseq, which
 *               is now durable;
 *   DIGEST_REQ, CRCS_REQ   answers for replcheck, after applying;
 *   REJOIN      this store's log parted from the primary's after a modseq
 *               (a former primary with writes the new one never got):
 *               send every message appended after it as SALVAGE, then
 *               SALVAGE_END;
 *   SALVAGE_OK  the primary stored them: move the account folder aside to
 *               DATA/diverged/ (kept, never deleted) and let the next
 *               ACCOUNT start it afresh from modseq 0.
 * When an account fails (a gap, a bad frame, a full disk) the replica says
 * ERROR and ignores that account's messages until the primary asks again
 * (ACCOUNT), which resumes from what is durable here. Nothing already
 * written is ever rewritten: a replica's log stays a prefix of the
 * primary's or replication of that account stops.
 *
 * SECURITY: only an authenticated primary gets here; still, every message
 * is checked (account names by the parser, frames by store_apply_frames,
 * blobs by their hash) and pending data per link is capped.
 */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/fsutil.h"
#include "lib/log.h"
#include "repl/repl_internal.h"
#include "store/store_internal.h"

#define APPLY_MAX (16u << 20)       /* frames applied in one go */
/* Bytes taken in between two applies while a backlog is worked through:
 * each apply costs a syncfs (the blobs) and an fdatasync (the log), so
 * fewer, larger ones make an initial sync faster; the primary's window
 * (3/4 of repl_window per account, 48 MiB by default) must stay larger,
 * or it would wait for acks. */
#define ACK_EVERY (16u << 20)
#define PENDING_MAX (512ull << 20)  /* more than any window: a broken primary */
#define RUN_MAX (32u << 20)         /* bytes one account's run takes before others' turn */
#define BLOBQ_MAX (32u << 20)       /* blob bytes queued for the blob writers */
#define OPEN_MAX 256

typedef struct ritem {
    struct ritem *next;
    uint8_t type;
    uint64_t a, b;
    uint32_t u32;
    uint8_t id[32];
    size_t len;
    uint8_t data[];
} ritem;

typedef struct racct {
    char name[REPL_ACCOUNT_MAX + 1];
    char *dir;          /* its folder, once known */
    store_account *st;
    ritem *head, *tail;
    size_t pending;
    int queued, in_work, failed;
    struct racct *hnext, *qnext;
    /* blob being collected */
    uint8_t blob_id[32];
    uint64_t blob_size;
    buf blob;
    int blob_active;
    uint64_t expect; /* next modseq this account may receive */
    int waiting;      /* its worker waits for more or for its blobs (run_account) */
    int blobs_unsynced; /* blobs written since the last syncfs */
    int blobs_queued;   /* handed to the blob writers, not written yet */
    int blob_rc;        /* the first failure of a blob writer, 0 none */
    char blob_why[200];
    uint64_t applied_records;
} racct;

/* A blob waiting for a blob writer. */
typedef struct bjob {
    struct bjob *next;
    racct *a;
    ritem *it;
} bjob;

static struct {
    repl_cfg *cfg;
    pthread_mutex_t mu;
    pthread_cond_t work_cv, idle_cv, link_cv, more_cv;
    racct **hash;
    size_t hcap, n;
    racct *qhead, *qtail;
    repl_link *link;
    int link_dead;
    int running;
    uint64_t pending;
    int stopping;
    int open_count;
    pthread_t connector, *workers, *blobbers;
    /* Blob writers: a backlog's blobs (one file each) are written by these
     * threads, several at once, while the account's worker goes on with
     * the next messages; it waits for them before it applies the frames
     * that name them. File creation blocks on the file system's journal
     * and takes far longer than the copy: in parallel those waits overlap. */
    pthread_cond_t bq_cv, bdone_cv;
    bjob *bq_head, *bq_tail;
    size_t bq_bytes;
    int blobbers_stop;
    char state[200];
    int64_t connected_ms;
    uint64_t peer_epoch;
    uint64_t switched;     /* epoch of the SWITCHED received, 0 none */
    uint64_t records_applied, blobs_imported, acks_sent;
} R;

static uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* Under R.mu. */
static racct *get_acct(const char *name)
{
    if (!R.hcap) {
        R.hcap = 1024;
        R.hash = calloc(R.hcap, sizeof(*R.hash));
    }
    size_t h = name_hash(name) & (R.hcap - 1);
    for (racct *a = R.hash[h]; a; a = a->hnext)
        if (strcmp(a->name, name) == 0)
            return a;
    racct *a = calloc(1, sizeof(*a));
    snprintf(a->name, sizeof(a->name), "%s", name);
    buf_init(&a->blob);
    a->hnext = R.hash[h];
    R.hash[h] = a;
    R.n++;
    return a;
}

static void enqueue(racct *a)
{
    if (a->queued || a->in_work)
        return;
    a->queued = 1;
    a->qnext = NULL;
    if (R.qtail)
        R.qtail->qnext = a;
    else
        R.qhead = a;
    R.qtail = a;
    pthread_cond_signal(&R.work_cv);
}

static void on_msg(void *ctx, repl_link *l, const repl_msg *m)
{
    (void)ctx;
    switch (m->type) {
    case REPL_ACCOUNT:
    case REPL_BLOB:
    case REPL_FRAMES:
    case REPL_DIGEST_REQ:
    case REPL_CRCS_REQ:
    case REPL_REJOIN:
    case REPL_SALVAGE_OK:
        break;
    case REPL_SWITCHED:
        /* Everything before it on this link was acknowledged, hence is
         * durable here: the primary has fenced itself and drained. */
        pthread_mutex_lock(&R.mu);
        R.switched = m->a;
        pthread_cond_broadcast(&R.link_cv);
        pthread_mutex_unlock(&R.mu);
        return;
    case REPL_ERROR:
        log_warn("repl: primary_error account=%.*s reason=\"%.*s\"", (int)m->account_len,
                 m->account, (int)m->text_len, m->text);
        return;
    default:
        repl_link_shutdown(l, "primary sent a message only a replica sends");
        return;
    }
    char name[REPL_ACCOUNT_MAX + 1];
    repl_msg_account(m, name);
    ritem *it = malloc(sizeof(*it) + m->data_len);
    if (!it)
        abort();
    it->next = NULL;
    it->type = (uint8_t)m->type;
    it->a = m->a;
    it->b = m->b;
    it->u32 = m->u32;
    if (m->bytes32)
        memcpy(it->id, m->bytes32, 32);
    it->len = m->data_len;
    if (m->data_len)
        memcpy(it->data, m->data, m->data_len);
    pthread_mutex_lock(&R.mu);
    if (R.pending + m->data_len > PENDING_MAX) {
        pthread_mutex_unlock(&R.mu);
        free(it);
        repl_link_shutdown(l, "primary sent more than any window allows");
        return;
    }
    racct *a = get_acct(name);
    if (a->tail)
        a->tail->next = it;
    else
        a->head = it;
    a->tail = it;
    a->pending += m->data_len;
    R.pending += m->data_len;
    enqueue(a);
    if (a->waiting)
        pthread_cond_broadcast(&R.more_cv);
    pthread_mutex_unlock(&R.mu);
}

static void on_closed(void *ctx, repl_link *l, const char *reason)
{
    (void)ctx;
    (void)l;
    pthread_mutex_lock(&R.mu);
    R.link_dead = 1;
    snprintf(R.state, sizeof(R.state), "down: %.150s", reason);
    pthread_cond_broadcast(&R.link_cv);
    pthread_cond_broadcast(&R.more_cv);
    pthread_mutex_unlock(&R.mu);
    log_warn("repl: link_down primary=%s:%s reason=\"%s\"", R.cfg->primary_host,
             R.cfg->primary_port, reason);
}

/* ---- applying ---- */

typedef struct apply {
    racct *a;
    repl_link *link;
    buf frames, msg;
    uint64_t last;
    uint64_t since_flush; /* bytes taken in since the last apply */
    hv_err err;
} apply;

typedef struct crc_collect {
    uint32_t *crcs;
    uint32_t n, max;
} crc_collect;

static int crc_cb(void *ctx, const store_record *r)
{
    crc_collect *c = ctx;
    c->crcs[c->n++] = le32(r->raw + 4);
    return c->n >= c->max;
}

static int acct_dir(racct *a, hv_err *err)
{
    if (a->dir)
        return 0;
    char dir[4400];
    int rc = store_account_dir(R.cfg->data_dir, a->name, dir, sizeof(dir), err);
    if (rc == 0)
        a->dir = strdup(dir);
    return rc;
}

static int open_acct(racct *a, hv_err *err)
{
    if (a->st)
        return store_refresh(a->st, err);
    int rc = acct_dir(a, err);
    if (rc == 0)
        rc = store_open(a->dir, a->name, STORE_OPEN_CREATE, &R.cfg->sopt, &a->st, err);
    if (rc == 0) {
        pthread_mutex_lock(&R.mu);
        R.open_count++;
        pthread_mutex_unlock(&R.mu);
    }
    return rc;
}

/* Opened (created) once; unlike open_acct, no refresh when it is open
 * already (a blob needs only the folder to exist). */
static int open_acct_once(racct *a, hv_err *err)
{
    return a->st ? 0 : open_acct(a, err);
}

/* Starts writing a new blob's pages to the disk now, so that the syncfs
 * before the next apply finds little left to write and a backlog's disk
 * writes overlap with receiving the next blobs. */
static void start_writeback(const char *dir, const store_blob_id *id)
{
    char path[4400];
    blob_path(dir, id, path, sizeof(path));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    (void)sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
    close(fd);
}

/* Waits until every blob of the account handed to the blob writers is
 * written; their first failure, if any. */
static int blobs_wait(apply *x)
{
    racct *a = x->a;
    pthread_mutex_lock(&R.mu);
    while (a->blobs_queued)
        pthread_cond_wait(&R.bdone_cv, &R.mu);
    int rc = a->blob_rc;
    if (rc)
        hv_err_set(&x->err, rc, "%s", a->blob_why);
    a->blob_rc = 0;
    pthread_mutex_unlock(&R.mu);
    return rc;
}

static void blob_queue(racct *a, ritem *it)
{
    bjob *j = malloc(sizeof(*j));
    if (!j)
        abort();
    j->next = NULL;
    j->a = a;
    j->it = it;
    pthread_mutex_lock(&R.mu);
    while (R.bq_bytes > BLOBQ_MAX && !R.stopping)
        pthread_cond_wait(&R.bdone_cv, &R.mu);
    if (R.bq_tail)
        R.bq_tail->next = j;
    else
        R.bq_head = j;
    R.bq_tail = j;
    R.bq_bytes += it->len;
    a->blobs_queued++;
    pthread_cond_signal(&R.bq_cv);
    pthread_mutex_unlock(&R.mu);
}

static void *blobber_main(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&R.mu);
        while (!R.bq_head && !R.blobbers_stop)
            pthread_cond_wait(&R.bq_cv, &R.mu);
        bjob *j = R.bq_head;
        if (!j) { /* stopping, and nothing left: a worker may wait for it */
            pthread_mutex_unlock(&R.mu);
            return NULL;
        }
        R.bq_head = j->next;
        if (!R.bq_head)
            R.bq_tail = NULL;
        pthread_mutex_unlock(&R.mu);
        racct *a = j->a;
        ritem *it = j->it;
        hv_err err = {0};
        store_blob_id got;
        /* store_blob_import, minus its per-blob syncs (see sync_blobs);
         * the name is the content's hash, checked here. */
        int rc = blob_write(a->dir, it->data, it->len, &got, 0, &err);
        if (rc == 0 && memcmp(got.b, it->id, 32) != 0)
            rc = hv_err_set(&err, -EBADMSG, "account %s: received blob does not match its id",
                            a->name);
        if (rc == 0)
            start_writeback(a->dir, &got);
        pthread_mutex_lock(&R.mu);
        R.bq_bytes -= it->len;
        if (rc == 0) {
            a->blobs_unsynced = 1;
            R.blobs_imported++;
        } else if (!a->blob_rc) {
            a->blob_rc = rc;
            snprintf(a->blob_why, sizeof(a->blob_why), "%.190s", err.msg);
        }
        a->blobs_queued--;
        pthread_cond_broadcast(&R.bdone_cv);
        if (a->waiting && !a->blobs_queued)
            pthread_cond_broadcast(&R.more_cv);
        pthread_mutex_unlock(&R.mu);
        free(it);
        free(j);
    }
}

static void reply(apply *x)
{
    repl_link_send(x->link, &x->msg, 0);
    buf_reset(&x->msg);
}

/* Blobs are written without a sync each (two fsyncs per blob made a
 * 180,000-message initial sync crawl); one syncfs makes them all durable
 * before the first record naming them is applied, as the store does for
 * its own batches. */
static int sync_blobs(apply *x)
{
    if (!x->a->blobs_unsynced)
        return 0;
    int rc = acct_dir(x->a, &x->err);
    if (rc < 0)
        return rc;
    int fd = open(x->a->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return hv_err_sys(&x->err, "open %s", x->a->dir);
    rc = syncfs(fd) < 0 ? hv_err_sys(&x->err, "syncfs %s", x->a->dir) : 0;
    close(fd);
    if (rc == 0)
        x->a->blobs_unsynced = 0;
    return rc;
}

static int flush(apply *x)
{
    if (!x->frames.len)
        return 0;
    int rc = blobs_wait(x);
    if (rc == 0)
        rc = sync_blobs(x);
    if (rc < 0)
        return rc;
    rc = store_apply_frames(x->a->st, x->frames.data, x->frames.len, &x->err);
    if (rc < 0)
        return rc;
    uint64_t n = x->last - (x->a->expect - 1);
    pthread_mutex_lock(&R.mu);
    R.records_applied += n;
    R.acks_sent++;
    pthread_mutex_unlock(&R.mu);
    x->a->expect = x->last + 1;
    x->since_flush = 0;
    buf_reset(&x->frames);
    repl_build_ack(&x->msg, x->a->name, store_highest_modseq(x->a->st));
    reply(x);
    return 0;
}

/* ---- rejoining with a divergent tail ---- */

/* One salvage at a time on the link: the primary collects the chunks of
 * one message at a time, so two accounts' chunks must not interleave. */
static pthread_mutex_t salvage_mu = PTHREAD_MUTEX_INITIALIZER;

typedef struct tail_msg {
    uint64_t modseq, flags, size;
    int64_t date;
    uint32_t mailbox;
    store_blob_id blob;
} tail_msg;

typedef struct mbox_name {
    uint32_t id;
    char *name;
} mbox_name;

typedef struct tail_scan {
    const char *account;
    uint64_t common;
    tail_msg *msgs;
    size_t n, cap;
    mbox_name *boxes; /* every mailbox the log ever named, last name kept */
    size_t nboxes, capboxes;
    uint64_t others;
} tail_scan;

static const char *const rec_names[] = {"?", "mailbox_create", "mailbox_rename",
                                        "mailbox_delete", "append", "flags", "expunge",
                                        "subscribe", "setting", "keyword", "checkpoint",
                                        "append"};

static void box_name(tail_scan *t, uint32_t id, const char *name, size_t len)
{
    size_t i = 0;
    while (i < t->nboxes && t->boxes[i].id != id)
        i++;
    if (i == t->nboxes) {
        if (t->nboxes == t->capboxes) {
            t->capboxes = t->capboxes ? t->capboxes * 2 : 16;
            t->boxes = realloc(t->boxes, t->capboxes * sizeof(*t->boxes));
        }
        t->boxes[t->nboxes++] = (mbox_name){id, NULL};
    }
    free(t->boxes[i].name);
    t->boxes[i].name = strndup(name, len);
}

static int tail_cb(void *ctx, const store_record *r)
{
    tail_scan *t = ctx;
    if (r->type == STORE_REC_MAILBOX_CREATE || r->type == STORE_REC_MAILBOX_RENAME)
        box_name(t, r->mailbox, r->name, r->name_len);
    if (r->modseq <= t->common)
        return 0;
    if (r->type == STORE_REC_APPEND) {
        if (t->n == t->cap) {
            t->cap = t->cap ? t->cap * 2 : 64;
            t->msgs = realloc(t->msgs, t->cap * sizeof(*t->msgs));
        }
        t->msgs[t->n++] = (tail_msg){r->modseq, r->flags, r->size, r->internal_date,
                                     r->mailbox, r->blob};
        return 0;
    }
    /* Not replayed on the primary (docs/replication.md): said here, so the
     * operator can see what the copy set aside holds beyond the messages. */
    t->others++;
    if (t->others <= 100)
        log_warn("repl: rejoin_not_replayed account=%s modseq=%llu record=%s mailbox=%u%s%.*s%s",
                 t->account, (unsigned long long)r->modseq,
                 r->type <= STORE_REC_APPEND_INLINE ? rec_names[r->type] : "?", r->mailbox,
                 r->name_len ? " name=\"" : "", (int)(r->name_len > 200 ? 200 : r->name_len),
                 r->name_len ? r->name : "", r->name_len ? "\"" : "");
    return 0;
}

/* Mailbox name for a salvaged message: the mailbox's name now, else the
 * last name the log gave it (deleted since), else INBOX. */
static const char *salvage_mailbox(store_account *st, tail_scan *t, uint32_t id)
{
    store_mailbox_info mi;
    if (store_mailbox_get(st, id, &mi) == 0)
        return mi.name;
    for (size_t i = 0; i < t->nboxes; i++)
        if (t->boxes[i].id == id && t->boxes[i].name && t->boxes[i].name[0])
            return t->boxes[i].name;
    return "INBOX";
}

static int salvage_tail(apply *x, uint64_t common, uint64_t epoch)
{
    racct *a = x->a;
    int rc = open_acct(a, &x->err);
    if (rc < 0)
        return rc;
    tail_scan t = {.account = a->name, .common = common};
    rc = store_changes_since(a->st, 0, tail_cb, &t, &x->err);
    uint64_t hi = store_highest_modseq(a->st);
    buf m, kw;
    buf_init(&m);
    buf_init(&kw);
    if (rc == 0) {
        log_warn("repl: rejoin account=%s common_modseq=%llu highest=%llu epoch=%llu "
                 "messages_to_salvage=%zu other_records=%llu", a->name,
                 (unsigned long long)common, (unsigned long long)hi, (unsigned long long)epoch,
                 t.n, (unsigned long long)t.others);
        pthread_mutex_lock(&salvage_mu);
        for (size_t i = 0; i < t.n && rc == 0; i++) {
            tail_msg *tm = &t.msgs[i];
            char *body = NULL;
            size_t len = 0;
            if ((rc = store_blob_read(a->st, &tm->blob, &body, &len, &x->err)) < 0)
                break;
            const char *box = salvage_mailbox(a->st, &t, tm->mailbox);
            /* Keyword bits are this account's own numbering: send names. */
            buf_reset(&kw);
            for (int k = STORE_KEYWORD_FIRST; k < 64; k++) {
                const char *kn = tm->flags & (1ull << k) ? store_keyword_name(a->st, 1ull << k)
                                                         : NULL;
                if (kn && kw.len + strlen(kn) + 1 <= REPL_KEYWORDS_MAX) {
                    if (kw.len)
                        buf_append(&kw, " ", 1);
                    buf_append_str(&kw, kn);
                }
            }
            size_t off = 0;
            do {
                size_t n = len - off > REPL_BLOB_CHUNK ? REPL_BLOB_CHUNK : len - off;
                buf_reset(&m);
                repl_build_salvage(&m, a->name, tm->modseq, len, off, tm->flags & 0xff,
                                   tm->date, box, strlen(box), (const char *)kw.data, kw.len,
                                   body + off, n);
                if ((rc = repl_link_send(x->link, &m, 30000)) < 0) {
                    hv_err_set(&x->err, rc, "account %s: the link went down while salvaging",
                               a->name);
                    break;
                }
                off += n;
            } while (off < len);
            free(body);
        }
        if (rc == 0) {
            buf_reset(&m);
            repl_build_salvage_end(&m, a->name, common, t.n, t.others);
            if ((rc = repl_link_send(x->link, &m, 30000)) < 0)
                hv_err_set(&x->err, rc, "account %s: the link went down while salvaging",
                           a->name);
        }
        pthread_mutex_unlock(&salvage_mu);
    }
    for (size_t i = 0; i < t.nboxes; i++)
        free(t.boxes[i].name);
    free(t.boxes);
    free(t.msgs);
    buf_free(&m);
    buf_free(&kw);
    return rc;
}

/* The primary holds the salvaged messages now: the account's folder goes
 * to DATA/diverged/ACCOUNT.UNIXTIME (the operator's to keep or remove),
 * and the next ACCOUNT creates it empty, to be synced from modseq 0. */
static int set_aside(apply *x, uint64_t stored, uint64_t dups)
{
    racct *a = x->a;
    char dir[4400], parent[4400], aside_dir[4200], target[4700];
    int rc = store_account_dir(R.cfg->data_dir, a->name, dir, sizeof(dir), &x->err);
    if (rc < 0)
        return rc;
    if (a->st) {
        store_close(a->st);
        a->st = NULL;
        pthread_mutex_lock(&R.mu);
        R.open_count--;
        pthread_mutex_unlock(&R.mu);
    }
    snprintf(aside_dir, sizeof(aside_dir), "%s/diverged", R.cfg->data_dir);
    if ((rc = fs_mkdir_p(aside_dir, 0700, &x->err)) < 0)
        return rc;
    long long now = (long long)time(NULL);
    struct stat sb;
    snprintf(target, sizeof(target), "%s/%s.%lld", aside_dir, a->name, now);
    for (int i = 1; lstat(target, &sb) == 0; i++)
        snprintf(target, sizeof(target), "%s/%s.%lld.%d", aside_dir, a->name, now, i);
    if (rename(dir, target) < 0)
        return hv_err_sys(&x->err, "account %s: move %s to %s", a->name, dir, target);
    snprintf(parent, sizeof(parent), "%s", dir);
    char *slash = strrchr(parent, '/');
    if (slash)
        *slash = 0;
    if ((rc = fs_fsync_dir(aside_dir, &x->err)) < 0 ||
        (rc = fs_fsync_dir(parent, &x->err)) < 0)
        return rc;
    a->expect = 1;
    a->blobs_unsynced = 0;
    log_warn("repl: rejoin_set_aside account=%s kept=\"%s\" salvaged_on_primary=%llu "
             "already_there=%llu action=\"resync from the primary\"", a->name, target,
             (unsigned long long)stored, (unsigned long long)dups);
    return 0;
}

/* 0 done, 1 the item was handed over (a blob writer frees it), -errno. */
static int do_item(apply *x, ritem *it)
{
    racct *a = x->a;
    int rc;
    uint64_t want;
    /* Everything but more data for the apply in progress sees the blobs
     * written. */
    if (it->type != REPL_BLOB && it->type != REPL_FRAMES && it->type != REPL_ACCOUNT &&
        (rc = blobs_wait(x)) < 0)
        return rc;
    switch (it->type) {
    case REPL_ACCOUNT: {
        blobs_wait(x); /* a fresh start: an old failure does not count */
        buf_reset(&x->frames);
        a->failed = 0;
        a->blob_active = 0;
        buf_free(&a->blob);
        if ((rc = open_acct(a, &x->err)) < 0)
            return rc;
        uint64_t hi = store_highest_modseq(a->st);
        uint32_t crc = 0;
        if ((rc = repl_record_crc(a->st, hi, &crc, &x->err)) < 0)
            return rc;
        a->expect = hi + 1;
        repl_build_position(&x->msg, a->name, hi, crc);
        reply(x);
        return 0;
    }
    case REPL_BLOB:
        if (it->b == 0 && it->len == it->a) {
            /* In one chunk (most blobs): a blob writer writes it from the
             * message itself, while this worker goes on. */
            a->blob_active = 0;
            if ((rc = open_acct_once(a, &x->err)) < 0)
                return rc;
            blob_queue(a, it);
            return 1;
        }
        if (it->b == 0) {
            buf_reset(&a->blob);
            memcpy(a->blob_id, it->id, 32);
            a->blob_size = it->a;
            a->blob_active = 1;
            buf_reserve(&a->blob, (size_t)it->a);
        } else if (!a->blob_active || memcmp(a->blob_id, it->id, 32) != 0 ||
                   it->b != a->blob.len || it->a != a->blob_size) {
            return hv_err_set(&x->err, -EPROTO, "account %s: blob chunk out of order", a->name);
        }
        buf_append(&a->blob, it->data, it->len);
        if (a->blob.len == a->blob_size) {
            store_blob_id got;
            if ((rc = open_acct_once(a, &x->err)) < 0)
                return rc;
            /* store_blob_import, minus its per-blob syncs (see sync_blobs);
             * the name is the content's hash, checked here. */
            if ((rc = blob_write(a->dir, a->blob.data, a->blob.len, &got, 0, &x->err)) < 0)
                return rc;
            if (memcmp(got.b, a->blob_id, 32) != 0)
                return hv_err_set(&x->err, -EBADMSG, "account %s: received blob does not "
                                  "match its id", a->name);
            start_writeback(a->dir, &got);
            a->blobs_unsynced = 1;
            a->blob_active = 0;
            buf_free(&a->blob);
            pthread_mutex_lock(&R.mu);
            R.blobs_imported++;
            pthread_mutex_unlock(&R.mu);
        }
        return 0;
    case REPL_FRAMES:
        want = x->frames.len ? x->last + 1 : a->expect;
        if (!a->st || it->a != want)
            return hv_err_set(&x->err, -ESPIPE, "account %s: frames from modseq %llu, expected "
                              "%llu", a->name, (unsigned long long)it->a,
                              (unsigned long long)want);
        buf_append(&x->frames, it->data, it->len);
        x->last = it->b;
        /* Apply and ack every few MiB, so the primary's window keeps
         * moving while a big backlog is worked through. */
        if (x->frames.len >= APPLY_MAX || x->since_flush >= ACK_EVERY)
            return flush(x);
        return 0;
    case REPL_DIGEST_REQ: {
        if ((rc = flush(x)) < 0)
            return rc;
        uint8_t d[32] = {0};
        uint64_t hi = 0;
        int exists = 0;
        if (!a->st) {
            char dir[4400];
            store_account *st;
            if (store_account_dir(R.cfg->data_dir, a->name, dir, sizeof(dir), &x->err) == 0 &&
                store_open(dir, a->name, STORE_OPEN_READONLY, &R.cfg->sopt, &st, &x->err) == 0) {
                exists = 1;
                hi = store_highest_modseq(st);
                store_digest(st, d);
                store_close(st);
            }
        } else {
            if ((rc = store_refresh(a->st, &x->err)) < 0)
                return rc;
            exists = 1;
            hi = store_highest_modseq(a->st);
            store_digest(a->st, d);
        }
        repl_build_digest(&x->msg, a->name, it->a, hi, exists, d);
        reply(x);
        return 0;
    }
    case REPL_CRCS_REQ: {
        if ((rc = flush(x)) < 0)
            return rc;
        crc_collect c = {.crcs = malloc(it->u32 * sizeof(uint32_t)), .max = it->u32};
        if (a->st || open_acct(a, &x->err) == 0)
            rc = store_changes_since(a->st, it->b - 1, crc_cb, &c, &x->err);
        if (rc >= 0) {
            repl_build_crcs(&x->msg, a->name, it->a, it->b, c.crcs, c.n);
            reply(x);
        }
        free(c.crcs);
        return rc < 0 ? rc : 0;
    }
    case REPL_REJOIN:
        if ((rc = flush(x)) < 0)
            return rc;
        return salvage_tail(x, it->a, it->b);
    case REPL_SALVAGE_OK:
        return set_aside(x, it->a, it->b);
    }
    return 0;
}

static void run_account(racct *a)
{
    pthread_mutex_lock(&R.mu);
    ritem *items = a->head;
    a->head = a->tail = NULL;
    size_t bytes = a->pending;
    a->pending = 0;
    a->queued = 0;
    if (!R.link || R.link_dead) {
        /* The link these came from is gone; the next one starts over. */
        R.pending -= bytes;
        pthread_mutex_unlock(&R.mu);
        while (items) {
            ritem *next = items->next;
            free(items);
            items = next;
        }
        return;
    }
    a->in_work = 1;
    R.running++;
    apply x = {.a = a, .link = R.link};
    pthread_mutex_unlock(&R.mu);
    buf_init(&x.frames);
    buf_init(&x.msg);
    int rc = 0;
    ritem *done = NULL; /* to free; blobs handed to a blob writer are its own */
    size_t taken = bytes;
    for (;;) {
        for (ritem *it = items, *next; it; it = next) {
            next = it->next;
            int handed = 0;
            if (it->type == REPL_ACCOUNT)
                rc = 0;
            if (it->type == REPL_ACCOUNT || (!a->failed && rc >= 0)) {
                x.since_flush += it->len;
                rc = do_item(&x, it);
                handed = rc == 1;
                if (handed)
                    rc = 0;
                if (rc < 0) {
                    buf_reset(&x.frames);
                    a->failed = 1;
                    log_error("repl: account=%s apply_failed reason=\"%s\"", a->name,
                              x.err.msg);
                    repl_build_error(&x.msg, a->name, rc, x.err.msg);
                    reply(&x);
                }
            }
            if (!handed) {
                it->next = done;
                done = it;
            }
        }
        /* More came in meanwhile: it joins the apply in progress (one
         * fdatasync for both: a backlog is applied every ACK_EVERY bytes,
         * and two writes to one account close together share a sync),
         * up to RUN_MAX, then other accounts get their turn. */
        pthread_mutex_lock(&R.mu);
        /* Blobs still being written: the apply waits for them anyway.
         * What comes in meanwhile joins it, so a backlog costs one syncfs
         * and one fdatasync per ACK_EVERY bytes rather than per message
         * the primary sent; a live change without blobs is applied at
         * once. */
        a->waiting = 1;
        while (!a->head && a->blobs_queued && x.frames.len && !a->failed && taken < RUN_MAX &&
               !R.link_dead && !R.stopping)
            pthread_cond_wait(&R.more_cv, &R.mu);
        a->waiting = 0;
        int more = a->head && !a->failed && taken < RUN_MAX && !R.link_dead && R.link == x.link;
        items = NULL;
        if (more) {
            items = a->head;
            a->head = a->tail = NULL;
            bytes += a->pending;
            taken += a->pending;
            a->pending = 0;
        }
        pthread_mutex_unlock(&R.mu);
        if (!more)
            break;
    }
    items = done;
    if (!a->failed && flush(&x) < 0) {
        a->failed = 1;
        log_error("repl: account=%s apply_failed reason=\"%s\"", a->name, x.err.msg);
        repl_build_error(&x.msg, a->name, -EIO, x.err.msg);
        reply(&x);
    }
    while (items) {
        ritem *next = items->next;
        free(items);
        items = next;
    }
    buf_free(&x.frames);
    buf_free(&x.msg);
    pthread_mutex_lock(&R.mu);
    R.pending -= bytes;
    R.running--;
    a->in_work = 0;
    int close_it = 0;
    if (a->head)
        enqueue(a);
    else if (a->st && R.open_count > OPEN_MAX && !a->blob_active) {
        close_it = 1;
        R.open_count--;
    }
    pthread_cond_broadcast(&R.idle_cv);
    pthread_mutex_unlock(&R.mu);
    if (close_it) {
        store_close(a->st);
        a->st = NULL;
    }
}

static void *worker_main(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&R.mu);
        while (!R.qhead && !R.stopping)
            pthread_cond_wait(&R.work_cv, &R.mu);
        if (R.stopping) {
            pthread_mutex_unlock(&R.mu);
            return NULL;
        }
        racct *a = R.qhead;
        R.qhead = a->qnext;
        if (!R.qhead)
            R.qtail = NULL;
        pthread_mutex_unlock(&R.mu);
        run_account(a);
    }
}

/* ---- the connection ---- */

/* Gets the next link to the primary: dialled when repl_primary names
 * it, else accepted on repl_port (a former primary rejoining: the new
 * primary dials it). */
static int next_link(repl_link **out, hv_err *err)
{
    int fd = -1, rc;
    repl_link_opts o;
    if (R.cfg->primary_host[0]) {
        if ((rc = repl_dial(R.cfg, &fd, err)) < 0)
            return rc;
        repl_link_options(R.cfg, 0, &o);
    } else {
        for (;;) {
            pthread_mutex_lock(&R.mu);
            int stop = R.stopping;
            pthread_mutex_unlock(&R.mu);
            if (stop)
                return hv_err_set(err, -ECANCELED, "stopping");
            struct pollfd p = {.fd = R.cfg->fd_listen, .events = POLLIN};
            if (poll(&p, 1, 500) <= 0)
                continue;
            fd = accept4(R.cfg->fd_listen, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0)
                break;
        }
        repl_link_options(R.cfg, 1, &o);
    }
    if ((rc = repl_link_handshake(fd, &o, out, err)) < 0)
        return rc;
    if (repl_resolve_link(R.cfg, *out) < 0) {
        rc = hv_err_set(err, -EPROTO, "peer %s (%s at epoch %llu) is no primary for us",
                        repl_link_peer_addr(*out),
                        repl_link_peer_role(*out) == REPL_ROLE_PRIMARY ? "primary" : "replica",
                        (unsigned long long)repl_link_peer_epoch(*out));
        repl_link_free(*out);
        *out = NULL;
        return rc;
    }
    return 0;
}

uint64_t repl_replica_peer_epoch(void)
{
    pthread_mutex_lock(&R.mu);
    uint64_t e = R.link && !R.link_dead ? R.peer_epoch : 0;
    pthread_mutex_unlock(&R.mu);
    return e;
}

int repl_replica_switchover(uint64_t epoch, hv_err *err)
{
    pthread_mutex_lock(&R.mu);
    if (!R.link || R.link_dead) {
        pthread_mutex_unlock(&R.mu);
        return hv_err_set(err, -ENOTCONN, "the primary is not connected (%s)", R.state);
    }
    repl_link *l = R.link;
    R.switched = 0;
    buf m;
    buf_init(&m);
    repl_build_ping(&m, REPL_SWITCHOVER, epoch);
    int rc = repl_link_send(l, &m, 5000);
    buf_free(&m);
    /* The drain takes as long as the backlog: wait while the link lives. */
    while (rc == 0 && R.switched != epoch && R.link == l && !R.link_dead && !R.stopping)
        pthread_cond_wait(&R.link_cv, &R.mu);
    int done = R.switched == epoch;
    pthread_mutex_unlock(&R.mu);
    if (done) {
        log_warn("repl: switchover_drained epoch=%llu", (unsigned long long)epoch);
        return 0;
    }
    return hv_err_set(err, -ECONNRESET, "the primary went away during the switchover; it may "
                      "stay fenced: run haven promote again to take over without it");
}

/* Drops what the old link queued: the primary re-asks every account on the
 * next link and resumes from what is durable. Under R.mu. */
static void drop_pending(void)
{
    for (size_t h = 0; h < R.hcap; h++)
        for (racct *a = R.hash[h]; a; a = a->hnext) {
            while (a->head) {
                ritem *next = a->head->next;
                free(a->head);
                a->head = next;
            }
            a->tail = NULL;
            R.pending -= a->pending;
            a->pending = 0;
            a->queued = 0;
            a->failed = 1; /* until the new link's ACCOUNT */
            a->blob_active = 0;
        }
    R.qhead = R.qtail = NULL;
}

static void *connector_main(void *arg)
{
    (void)arg;
    unsigned backoff = 200;
    for (;;) {
        pthread_mutex_lock(&R.mu);
        if (R.stopping) {
            pthread_mutex_unlock(&R.mu);
            return NULL;
        }
        pthread_mutex_unlock(&R.mu);
        hv_err err = {0};
        repl_link *l = NULL;
        int rc = next_link(&l, &err);
        if (rc == -ECANCELED)
            return NULL;
        if (rc < 0) {
            pthread_mutex_lock(&R.mu);
            snprintf(R.state, sizeof(R.state), "connecting: %.160s", err.msg);
            struct timespec dl;
            clock_gettime(CLOCK_REALTIME, &dl);
            dl.tv_sec += backoff / 1000;
            dl.tv_nsec += (long)(backoff % 1000) * 1000000;
            if (dl.tv_nsec >= 1000000000) {
                dl.tv_sec++;
                dl.tv_nsec -= 1000000000;
            }
            if (!R.stopping)
                pthread_cond_timedwait(&R.link_cv, &R.mu, &dl);
            pthread_mutex_unlock(&R.mu);
            log_warn("repl: connect_failed primary=%s:%s reason=\"%s\" retry_in_ms=%u",
                     R.cfg->primary_host, R.cfg->primary_port, err.msg, backoff);
            backoff = backoff >= 16000 ? 30000 : backoff * 2;
            continue;
        }
        backoff = 200;
        pthread_mutex_lock(&R.mu);
        R.link = l;
        R.link_dead = 0;
        R.peer_epoch = repl_link_peer_epoch(l);
        R.connected_ms = repl_wall_ms();
        snprintf(R.state, sizeof(R.state), "up");
        pthread_mutex_unlock(&R.mu);
        log_info("repl: link_up primary=%s:%s store=%s", R.cfg->primary_host,
                 R.cfg->primary_port, repl_link_peer_store(l));
        repl_link_start(l, on_msg, on_closed, NULL);
        pthread_mutex_lock(&R.mu);
        while (!R.link_dead && !R.stopping)
            pthread_cond_wait(&R.link_cv, &R.mu);
        pthread_mutex_unlock(&R.mu);
        repl_link_shutdown(l, "replica stopping");
        /* Wait for the workers to let go of the link before freeing it. */
        pthread_mutex_lock(&R.mu);
        drop_pending();
        while (R.running)
            pthread_cond_wait(&R.idle_cv, &R.mu);
        drop_pending();
        R.link = NULL;
        pthread_mutex_unlock(&R.mu);
        repl_link_free(l);
    }
}

int repl_replica_start(repl_cfg *cfg, hv_err *err)
{
    (void)err;
    memset(&R, 0, sizeof(R));
    R.cfg = cfg;
    /* Messages (up to 64 MiB) are received into fresh buffers and freed by
     * another thread. By default glibc maps the big ones and hands freed
     * arena memory back at once, so every byte received first costs a
     * page fault: keep the memory instead (the windows bound how much). */
    mallopt(M_MMAP_THRESHOLD, 96 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    pthread_mutex_init(&R.mu, NULL);
    pthread_cond_init(&R.work_cv, NULL);
    pthread_cond_init(&R.idle_cv, NULL);
    pthread_cond_init(&R.link_cv, NULL);
    snprintf(R.state, sizeof(R.state), "connecting");
    pthread_cond_init(&R.bq_cv, NULL);
    pthread_cond_init(&R.more_cv, NULL);
    pthread_cond_init(&R.bdone_cv, NULL);
    R.workers = calloc(cfg->workers, sizeof(pthread_t));
    for (unsigned i = 0; i < cfg->workers; i++)
        pthread_create(&R.workers[i], NULL, worker_main, NULL);
    R.blobbers = calloc(cfg->workers, sizeof(pthread_t));
    for (unsigned i = 0; i < cfg->workers; i++)
        pthread_create(&R.blobbers[i], NULL, blobber_main, NULL);
    pthread_create(&R.connector, NULL, connector_main, NULL);
    log_info("repl: replica ready store=%s primary=%s:%s workers=%u epoch=%llu",
             cfg->store_name, cfg->primary_host[0] ? cfg->primary_host : "(accepting)",
             cfg->primary_port, cfg->workers, (unsigned long long)cfg->epoch);
    return 0;
}

void repl_replica_stop(void)
{
    pthread_mutex_lock(&R.mu);
    R.stopping = 1;
    pthread_cond_broadcast(&R.work_cv);
    pthread_cond_broadcast(&R.link_cv);
    pthread_cond_broadcast(&R.more_cv);
    pthread_mutex_unlock(&R.mu);
    for (unsigned i = 0; i < R.cfg->workers; i++)
        pthread_join(R.workers[i], NULL);
    pthread_join(R.connector, NULL);
    /* Only now: a worker may have waited for its blobs until it ended. */
    pthread_mutex_lock(&R.mu);
    R.blobbers_stop = 1;
    pthread_cond_broadcast(&R.bq_cv);
    pthread_mutex_unlock(&R.mu);
    for (unsigned i = 0; i < R.cfg->workers; i++)
        pthread_join(R.blobbers[i], NULL);
}

void repl_replica_status(buf *o)
{
    pthread_mutex_lock(&R.mu);
    buf_printf(o, "role: replica\nstore: %s\nepoch: %llu\nprimary: %s:%s\nlink: %s\n",
               R.cfg->store_name, (unsigned long long)R.cfg->epoch,
               R.cfg->primary_host[0] ? R.cfg->primary_host : "(accepting)",
               R.cfg->primary_port, R.state);
    if (R.link) {
        repl_link_stats st;
        repl_link_get_stats(R.link, &st);
        buf_printf(o, "bytes_in: %llu\nin_bps: %.0f\n", (unsigned long long)st.bytes_in,
                   st.rate_in);
    }
    buf_printf(o, "accounts: %zu\nrecords_applied: %llu\nblobs_imported: %llu\nacks: %llu\n"
               "pending_bytes: %llu\n", R.n, (unsigned long long)R.records_applied,
               (unsigned long long)R.blobs_imported, (unsigned long long)R.acks_sent,
               (unsigned long long)R.pending);
    pthread_mutex_unlock(&R.mu);
}

/* The "metrics" command (see repl_primary_metrics): this replica's link to
 * its primary, as one "upstream key=value ..." line. */
void repl_replica_metrics(buf *o)
{
    pthread_mutex_lock(&R.mu);
    size_t failed = 0;
    for (size_t h = 0; h < R.hcap; h++)
        for (racct *a = R.hash[h]; a; a = a->hnext)
            failed += a->failed != 0;
    /* R.state is "up", "connecting[: why]" or "down: why": its first word */
    char state[32];
    snprintf(state, sizeof(state), "%.*s", (int)strcspn(R.state, ": "), R.state);
    uint64_t in = 0;
    double rate = 0;
    if (R.link) {
        repl_link_stats st;
        repl_link_get_stats(R.link, &st);
        in = st.bytes_in;
        rate = st.rate_in;
    }
    buf_printf(o, "node role=replica store=%s epoch=%llu accounts=%zu\n", R.cfg->store_name,
               (unsigned long long)R.cfg->epoch, R.n);
    buf_printf(o, "upstream primary=%s%s%s state=%s up=%d bytes_received=%llu receive_bps=%.0f "
               "accounts=%zu failed_accounts=%zu records_applied=%llu blobs_imported=%llu "
               "acks=%llu pending_bytes=%llu\n",
               R.cfg->primary_host[0] ? R.cfg->primary_host : "none",
               R.cfg->primary_host[0] ? ":" : "", R.cfg->primary_host[0] ? R.cfg->primary_port : "",
               state[0] ? state : "unknown", strcmp(state, "up") == 0 && R.link && !R.link_dead,
               (unsigned long long)in, rate, R.n, failed, (unsigned long long)R.records_applied,
               (unsigned long long)R.blobs_imported, (unsigned long long)R.acks_sent,
               (unsigned long long)R.pending);
    pthread_mutex_unlock(&R.mu);
}
