/*
 * repl_primary.c - the primary side of replication.
 *
 * Threads: an acceptor (handshakes run on their own short-lived threads),
 * a watcher (inotify on every account's log folder, a rescan for new
 * accounts, retries, progress), a pool of workers, and one I/O thread per
 * replica link (repl_link.c). All shared state sits behind P.mu.
 *
 * Per replica and per account there is a stream position: `sent` (last
 * modseq queued to the link) and `acked` (last modseq the replica made
 * durable). A job moves one account of one replica forward: it reads the
 * log after `sent` (store_changes_since, raw frames), sends the blobs that
 * non-inline APPENDs name, then the frames, in FRAMES messages of about
 * 1 MiB. Jobs are queued FIFO, so many accounts are in flight at once and
 * a big or busy account takes turns with the others; an account whose
 * replica has too much unacknowledged (its window, or the link's) waits
 * for acks instead of holding a worker. Reading needs no lock on the
 * account, so a writer holding it never stalls replication of others.
 *
 * On (re)connect each account starts with ACCOUNT -> POSITION: the
 * replica says what it has durably and the CRC of that record; the primary
 * checks the CRC against its own record of that modseq. A replica that is
 * ahead, or whose record differs, has diverged (a former primary with
 * writes this one never got): the account is not streamed; the primary
 * finds the last modseq both logs share (record CRCs, as replcheck) and
 * sends REJOIN. The replica sends the messages appended after it as
 * SALVAGE; they are appended here as new messages (store_append_once, so a
 * repeated rejoin adds nothing twice), SALVAGE_OK tells the replica to set
 * its copy aside, and the account streams to it again from modseq 0.
 * Nothing the replica held is overwritten or dropped.
 */
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/sha256.h"
#include "repl/repl_internal.h"

#define MAX_LINKS 8
/* One account may fill 3/4 of a link's window: alone it streams at full
 * speed (the window covers the replica's apply-and-ack round trip), and
 * other accounts still find room. */
#define ACCT_WINDOW (P.cfg->window / 4 * 3)
#define BATCH_BYTES (1u << 20)   /* FRAMES message size aimed at */
#define QUANTUM_BYTES (8u << 20) /* a job yields after this when others wait */
#define OPEN_MAX 256             /* store handles kept open when idle */
#define LAT_BUCKETS 1000         /* ack latency histogram, 1 ms buckets */

enum sstate { S_NEW, S_WAIT_POS, S_VERIFY, S_READY, S_DIVERGED, S_FAILED, S_REJOIN };
static const char *const sstate_names[] = {"new", "asking", "verifying", "streaming",
                                           "diverged", "failed", "rejoining"};

typedef struct pacct {
    char name[REPL_ACCOUNT_MAX + 1];
    char dir[4400];
    pthread_mutex_t mu; /* use of st */
    store_account *st;
    int wd;
    int64_t poke_at;    /* a log change to look at then (0: none); see watcher_main */
} pacct;

typedef struct win_ent {
    uint64_t modseq, cum;
    int64_t t_first, t_last; /* wall ms the first and last record were written */
} win_ent;

typedef struct sacct {
    uint8_t state, queued, in_work, dirty, blocked;
    uint64_t pos;
    uint32_t pos_crc;
    uint64_t sent, acked, hi;
    uint64_t bytes_sent, bytes_acked;
    win_ent *win;
    uint32_t wn, whead, wcap;
    int64_t retry_at;
    uint64_t tail_seg, tail_off, tail_modseq; /* where the record `sent` ends */
    char why[200];
} sacct;

typedef struct psess {
    int used, dead, running;
    uint32_t gen;
    repl_link *link;
    sacct *acc;
    size_t nacc;
    uint64_t unacked;
    int blocked_any;
    char peer[64], peer_store[REPL_STORE_NAME_MAX + 1];
    int64_t connected_ms;
    uint64_t lat[LAT_BUCKETS + 1], lat_n;
    int64_t last_progress;
    uint64_t last_synced_logged;
    /* replcheck's one outstanding request */
    uint64_t rq_cookie;
    int rq_done;
    uint64_t rq_modseq, rq_first;
    int rq_exists;
    uint8_t rq_digest[32];
    uint32_t *rq_crcs;
    uint32_t rq_n;
    int rq_busy;        /* one request at a time: replcheck and rejoins share it */
    /* The salvage in progress on this link (the replica sends one account's
     * messages at a time, each message's chunks in a row). Used only by
     * the link's I/O thread, and by the watcher once the link is dead. */
    char sv_acct[REPL_ACCOUNT_MAX + 1];
    store_account *sv_st;
    buf sv_body;
    uint64_t sv_modseq, sv_size, sv_stored, sv_dups;
    int sv_failed;
    char sv_why[200];
} psess;

typedef struct job {
    int slot;
    uint32_t gen;
    size_t idx;
} job;

/* A writer waiting in sync mode (repl_primary_wait): woken by the ack it
 * waits for, not by every ack of every account. */
typedef struct sync_waiter {
    struct sync_waiter *next;
    long idx;
    uint64_t modseq;
    pthread_cond_t cv;
} sync_waiter;

static struct {
    repl_cfg *cfg;
    pthread_mutex_t mu;
    pthread_cond_t work_cv, acked_cv, rq_cv;
    pacct **accts;
    size_t n, cap;
    size_t *hash; /* open addressing: idx + 1, 0 empty */
    size_t *wd_idx; /* inotify watch -> idx + 1 */
    size_t nwd;
    size_t *pokes;  /* accounts with poke_at set */
    size_t npokes, cappokes;
    size_t hcap;
    psess sess[MAX_LINKS];
    job *q;
    size_t qhead, qn, qcap;
    int stopping;
    int open_count;
    int inotify_fd, fd_listen;
    int handshakes;
    pthread_t acceptor, watcher, dialer, *workers;
    int switching;
    uint64_t cookie;
    /* sync mode: set when a wait timed out, cleared once enough replicas
     * have caught up again */
    int degraded;
    sync_waiter *waiters;
    int64_t degraded_since;
    char degraded_why[200];
    uint64_t sync_waits, sync_timeouts;
} P;

/* ---- accounts ---- */

static uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static long find_acct(const char *name)
{
    if (!P.hcap)
        return -1;
    for (size_t i = name_hash(name) & (P.hcap - 1);; i = (i + 1) & (P.hcap - 1)) {
        if (!P.hash[i])
            return -1;
        if (strcmp(P.accts[P.hash[i] - 1]->name, name) == 0)
            return (long)(P.hash[i] - 1);
    }
}

static void hash_insert(size_t idx)
{
    for (size_t i = name_hash(P.accts[idx]->name) & (P.hcap - 1);; i = (i + 1) & (P.hcap - 1))
        if (!P.hash[i]) {
            P.hash[i] = idx + 1;
            return;
        }
}

static void enqueue(int slot, size_t idx)
{
    psess *s = &P.sess[slot];
    sacct *sa = &s->acc[idx];
    if (sa->queued || s->dead)
        return;
    if (sa->in_work) {
        sa->dirty = 1;
        return;
    }
    if (P.qn == P.qcap) {
        size_t nc = P.qcap ? P.qcap * 2 : 1024;
        job *nq = malloc(nc * sizeof(*nq));
        for (size_t i = 0; i < P.qn; i++)
            nq[i] = P.q[(P.qhead + i) % P.qcap];
        free(P.q);
        P.q = nq;
        P.qcap = nc;
        P.qhead = 0;
    }
    P.q[(P.qhead + P.qn) % P.qcap] = (job){slot, s->gen, idx};
    P.qn++;
    sa->queued = 1;
    pthread_cond_signal(&P.work_cv);
}

/* Under P.mu. */
static void add_account(const char *name, const char *dir)
{
    if (find_acct(name) >= 0)
        return;
    char logdir[4500];
    snprintf(logdir, sizeof(logdir), "%s/log", dir);
    int wd = inotify_add_watch(P.inotify_fd, logdir, IN_MODIFY | IN_CREATE | IN_MOVED_TO);
    if (wd < 0)
        return; /* not created yet (or gone): the next rescan tries again */
    if (P.n == P.cap) {
        P.cap = P.cap ? P.cap * 2 : 256;
        P.accts = realloc(P.accts, P.cap * sizeof(*P.accts));
    }
    if ((P.n + 1) * 2 > P.hcap) {
        free(P.hash);
        P.hcap = P.hcap ? P.hcap * 2 : 1024;
        while (P.hcap < (P.n + 1) * 2)
            P.hcap *= 2;
        P.hash = calloc(P.hcap, sizeof(*P.hash));
        for (size_t i = 0; i < P.n; i++)
            hash_insert(i);
    }
    pacct *a = calloc(1, sizeof(*a));
    snprintf(a->name, sizeof(a->name), "%s", name);
    snprintf(a->dir, sizeof(a->dir), "%s", dir);
    pthread_mutex_init(&a->mu, NULL);
    a->wd = wd;
    if ((size_t)wd >= P.nwd) {
        size_t nn = (size_t)wd * 2 + 64;
        P.wd_idx = realloc(P.wd_idx, nn * sizeof(*P.wd_idx));
        memset(P.wd_idx + P.nwd, 0, (nn - P.nwd) * sizeof(*P.wd_idx));
        P.nwd = nn;
    }
    P.wd_idx[wd] = P.n + 1;
    P.accts[P.n] = a;
    hash_insert(P.n);
    P.n++;
    for (int k = 0; k < MAX_LINKS; k++) {
        psess *s = &P.sess[k];
        if (!s->used)
            continue;
        s->acc = realloc(s->acc, P.n * sizeof(*s->acc));
        memset(&s->acc[P.n - 1], 0, sizeof(sacct));
        s->nacc = P.n;
    }
}

static void scan_cb(void *ctx, const char *name, const char *dir)
{
    (void)ctx;
    add_account(name, dir);
}

/* Collects "name\0dir\0" for every account folder, without P.mu;
 * add_account, under it, skips the ones already known. */
static void collect_cb(void *ctx, const char *name, const char *dir)
{
    buf *b = ctx;
    buf_append(b, name, strlen(name) + 1);
    buf_append(b, dir, strlen(dir) + 1);
}

/* ---- windows ---- */

static void win_reset(psess *s, sacct *sa)
{
    s->unacked -= sa->bytes_sent - sa->bytes_acked;
    sa->bytes_acked = sa->bytes_sent;
    sa->wn = sa->whead = 0;
}

static void win_push(sacct *sa, const win_ent *e)
{
    if (sa->whead + sa->wn == sa->wcap) {
        if (sa->whead) {
            memmove(sa->win, sa->win + sa->whead, sa->wn * sizeof(*sa->win));
            sa->whead = 0;
        } else {
            sa->wcap = sa->wcap ? sa->wcap * 2 : 16;
            sa->win = realloc(sa->win, sa->wcap * sizeof(*sa->win));
        }
    }
    sa->win[sa->whead + sa->wn++] = *e;
}

/* ---- link callbacks (I/O thread) ---- */

static int slot_of(repl_link *l)
{
    for (int k = 0; k < MAX_LINKS; k++)
        if (P.sess[k].used && P.sess[k].link == l)
            return k;
    return -1;
}

static void on_ack(psess *s, int slot, size_t idx, uint64_t m)
{
    sacct *sa = &s->acc[idx];
    if (sa->state != S_READY || m <= sa->acked || m > sa->sent)
        return;
    sa->acked = m;
    int64_t now = repl_wall_ms();
    while (sa->wn && sa->win[sa->whead].modseq <= m) {
        win_ent *e = &sa->win[sa->whead];
        int64_t lat = now - e->t_last;
        s->lat[lat < 0 ? 0 : lat > LAT_BUCKETS ? LAT_BUCKETS : lat]++;
        s->lat_n++;
        s->unacked -= e->cum - sa->bytes_acked;
        sa->bytes_acked = e->cum;
        sa->whead++;
        sa->wn--;
    }
    if (sa->blocked && sa->bytes_sent - sa->bytes_acked < ACCT_WINDOW / 2) {
        sa->blocked = 0;
        enqueue(slot, idx);
    }
    if (s->blocked_any && s->unacked < P.cfg->window / 2) {
        s->blocked_any = 0;
        for (size_t i = 0; i < s->nacc; i++)
            if (s->acc[i].blocked && s->acc[i].bytes_sent - s->acc[i].bytes_acked < ACCT_WINDOW) {
                s->acc[i].blocked = 0;
                enqueue(slot, i);
            }
    }
    for (sync_waiter *w = P.waiters; w; w = w->next)
        if (w->idx == (long)idx && w->modseq <= m)
            pthread_cond_signal(&w->cv);
    pthread_cond_broadcast(&P.acked_cv);
}

/* ---- salvage: a rejoining replica's divergent tail (I/O thread) ---- */

static void sv_close(psess *s)
{
    if (s->sv_st)
        store_close(s->sv_st);
    s->sv_st = NULL;
    buf_free(&s->sv_body);
    s->sv_acct[0] = 0;
    s->sv_stored = s->sv_dups = 0;
    s->sv_failed = 0;
    s->sv_why[0] = 0;
}

static void sv_fail(psess *s, const char *why)
{
    if (!s->sv_failed)
        snprintf(s->sv_why, sizeof(s->sv_why), "%.190s", why);
    s->sv_failed = 1;
}

/* Stores the complete message in s->sv_body. */
static void sv_store(psess *s, const repl_msg *m)
{
    hv_err err = {0};
    char box[REPL_MAILBOX_MAX + 1], kw[REPL_KEYWORDS_MAX + 1], did[STORE_DELIVERY_ID_MAX + 1];
    memcpy(box, m->text, m->text_len);
    box[m->text_len] = 0;
    memcpy(kw, m->text2 ? m->text2 : "", m->text2_len);
    kw[m->text2_len] = 0;
    uint64_t flags = m->d;
    store_mailbox_info mi;
    uint32_t mbox = 0;
    int rc = 0;
    if (store_mailbox_find(s->sv_st, box, &mi) == 0)
        mbox = mi.id;
    else
        rc = store_mailbox_create(s->sv_st, box, 0, &mbox, &err);
    char *save = NULL;
    for (char *k = strtok_r(kw, " ", &save); k && rc == 0; k = strtok_r(NULL, " ", &save)) {
        uint64_t bit;
        hv_err e2 = {0};
        if (store_keyword(s->sv_st, k, 1, &bit, &e2) == 0)
            flags |= bit;
        else
            log_warn("repl: salvage_keyword_dropped account=%s old_modseq=%llu keyword=\"%s\" "
                     "reason=\"%s\"", s->sv_acct, (unsigned long long)m->a, k, e2.msg);
    }
    /* The id makes a repeated rejoin (the link broke before SALVAGE_OK)
     * add nothing twice. */
    snprintf(did, sizeof(did), "salvage-%llu-%llu", (unsigned long long)P.cfg->epoch,
             (unsigned long long)m->a);
    uint32_t uid = 0;
    int dup = 0;
    if (rc == 0)
        rc = store_append_once(s->sv_st, mbox, did, s->sv_body.data, s->sv_body.len, flags,
                               (int64_t)m->e, &uid, &dup, &err);
    if (rc < 0) {
        log_error("repl: salvage_failed account=%s peer=%s old_modseq=%llu mailbox=\"%s\" "
                  "reason=\"%s\"", s->sv_acct, s->peer_store, (unsigned long long)m->a, box,
                  err.msg);
        sv_fail(s, err.msg);
        return;
    }
    if (dup)
        s->sv_dups++;
    else
        s->sv_stored++;
    log_warn("repl: salvaged account=%s peer=%s old_modseq=%llu mailbox=\"%s\" uid=%u "
             "size=%zu%s", s->sv_acct, s->peer_store, (unsigned long long)m->a, box, uid,
             s->sv_body.len, dup ? " duplicate=1 (stored by an earlier rejoin)" : "");
}

static void sv_chunk(psess *s, const char *name, const char *dir, const repl_msg *m)
{
    if (strcmp(s->sv_acct, name) != 0) {
        sv_close(s);
        snprintf(s->sv_acct, sizeof(s->sv_acct), "%s", name);
        hv_err err = {0};
        if (store_open(dir, name, 0, &P.cfg->sopt, &s->sv_st, &err) < 0) {
            s->sv_st = NULL;
            sv_fail(s, err.msg);
        }
    }
    if (s->sv_failed)
        return;
    if (m->c == 0) {
        buf_reset(&s->sv_body);
        s->sv_modseq = m->a;
        s->sv_size = m->b;
    } else if (m->a != s->sv_modseq || m->b != s->sv_size || m->c != s->sv_body.len) {
        sv_fail(s, "salvage chunks out of order");
        return;
    }
    buf_append(&s->sv_body, m->data, m->data_len);
    if (s->sv_body.len == s->sv_size)
        sv_store(s, m);
}

static void sv_end(psess *s, repl_link *l, const char *name, const repl_msg *m)
{
    if (strcmp(s->sv_acct, name) != 0) {
        sv_close(s); /* no message came for this account */
        snprintf(s->sv_acct, sizeof(s->sv_acct), "%s", name);
    }
    if (!s->sv_failed && s->sv_stored + s->sv_dups != m->b) {
        char why[120];
        snprintf(why, sizeof(why), "stored %llu of %llu salvaged messages",
                 (unsigned long long)(s->sv_stored + s->sv_dups), (unsigned long long)m->b);
        sv_fail(s, why);
    }
    buf msg;
    buf_init(&msg);
    int failed = s->sv_failed;
    char why[200];
    snprintf(why, sizeof(why), "%s", s->sv_why);
    if (failed) {
        log_error("repl: salvage_incomplete account=%s peer=%s common_modseq=%llu reason=\"%s\" "
                  "action=\"the replica keeps its copy; retry in 5 s\"", name, s->peer_store,
                  (unsigned long long)m->a, why);
        repl_build_error(&msg, name, -EIO, why);
    } else {
        log_warn("repl: salvage_done account=%s peer=%s common_modseq=%llu messages=%llu "
                 "stored=%llu already_there=%llu other_records_not_replayed=%llu", name,
                 s->peer_store, (unsigned long long)m->a, (unsigned long long)m->b,
                 (unsigned long long)s->sv_stored, (unsigned long long)s->sv_dups,
                 (unsigned long long)m->c);
        repl_build_salvage_ok(&msg, name, s->sv_stored, s->sv_dups);
    }
    sv_close(s);
    /* Queued before the state allows the watcher's next ACCOUNT, so the
     * replica reads them in this order. */
    repl_link_send(l, &msg, 0);
    buf_free(&msg);
    pthread_mutex_lock(&P.mu);
    long idx = find_acct(name);
    if (idx >= 0 && (size_t)idx < s->nacc && s->acc[idx].state == S_REJOIN) {
        sacct *sa = &s->acc[idx];
        if (failed) {
            sa->state = S_FAILED;
            snprintf(sa->why, sizeof(sa->why), "salvage: %.180s", why);
            sa->retry_at = repl_now_ms() + 5000;
        } else {
            /* The replica sets its copy aside on SALVAGE_OK, before it
             * reads the ACCOUNT the watcher sends next: it answers from 0. */
            sa->state = S_NEW;
            sa->why[0] = 0;
        }
    }
    pthread_mutex_unlock(&P.mu);
}

static void on_msg(void *ctx, repl_link *l, const repl_msg *m)
{
    (void)ctx;
    char name[REPL_ACCOUNT_MAX + 1];
    repl_msg_account(m, name);
    pthread_mutex_lock(&P.mu);
    int slot = slot_of(l);
    long idx = find_acct(name);
    psess *s = slot >= 0 ? &P.sess[slot] : NULL;
    if (s && m->type == REPL_SWITCHOVER) {
        int busy = P.switching;
        P.switching = 1;
        pthread_mutex_unlock(&P.mu);
        if (!busy)
            repl_primary_switchover(l, m->a);
        return;
    }
    if (!s || (idx < 0 && m->type != REPL_ERROR)) {
        pthread_mutex_unlock(&P.mu);
        if (s)
            log_warn("repl: peer=%s unknown_account=%s msg=%s", repl_link_peer_addr(l), name,
                     repl_msg_type_name(m->type));
        return;
    }
    sacct *sa = idx >= 0 ? &s->acc[idx] : NULL;
    if (m->type == REPL_SALVAGE || m->type == REPL_SALVAGE_END) {
        if (sa->state != S_REJOIN) {
            pthread_mutex_unlock(&P.mu);
            repl_link_shutdown(l, "replica sent SALVAGE for an account that is not rejoining");
            return;
        }
        char dir[sizeof(P.accts[idx]->dir)];
        snprintf(dir, sizeof(dir), "%s", P.accts[idx]->dir);
        pthread_mutex_unlock(&P.mu);
        /* Appends and their fsyncs, on the I/O thread: a rejoin is rare,
         * and waiting here holds back the replica's sending (TCP), which
         * bounds what a long tail costs in memory. */
        if (m->type == REPL_SALVAGE)
            sv_chunk(s, name, dir, m);
        else
            sv_end(s, l, name, m);
        return;
    }
    switch (m->type) {
    case REPL_POSITION:
        if (sa->state == S_WAIT_POS) {
            sa->state = S_VERIFY;
            sa->pos = m->a;
            sa->pos_crc = m->u32;
            enqueue(slot, (size_t)idx);
        }
        break;
    case REPL_ACK:
        on_ack(s, slot, (size_t)idx, m->a);
        break;
    case REPL_ERROR:
        if (sa && sa->state != S_DIVERGED) {
            sa->state = S_FAILED;
            snprintf(sa->why, sizeof(sa->why), "replica: %.*s", (int)m->text_len, m->text);
            sa->retry_at = repl_now_ms() + 5000;
            win_reset(s, sa);
            log_error("repl: account=%s peer=%s replica_failed reason=\"%.*s\" retry_in_s=5",
                      name, s->peer_store, (int)m->text_len, m->text);
        }
        break;
    case REPL_DIGEST:
        if (m->a == s->rq_cookie && !s->rq_done) {
            s->rq_modseq = m->b;
            s->rq_exists = (int)m->c;
            memcpy(s->rq_digest, m->bytes32, 32);
            s->rq_done = 1;
            pthread_cond_broadcast(&P.rq_cv);
        }
        break;
    case REPL_CRCS:
        if (m->a == s->rq_cookie && !s->rq_done) {
            free(s->rq_crcs);
            s->rq_crcs = malloc((m->u32 ? m->u32 : 1) * sizeof(uint32_t));
            for (uint32_t i = 0; i < m->u32; i++)
                s->rq_crcs[i] = le32(m->data + 4 * (size_t)i);
            s->rq_n = m->u32;
            s->rq_first = m->b;
            s->rq_done = 1;
            pthread_cond_broadcast(&P.rq_cv);
        }
        break;
    default:
        pthread_mutex_unlock(&P.mu);
        repl_link_shutdown(l, "replica sent a message only a primary sends");
        return;
    }
    pthread_mutex_unlock(&P.mu);
}

static void on_closed(void *ctx, repl_link *l, const char *reason)
{
    (void)ctx;
    pthread_mutex_lock(&P.mu);
    int slot = slot_of(l);
    if (slot >= 0) {
        P.sess[slot].dead = 1;
        log_warn("repl: link_down peer=%s store=%s reason=\"%s\"", P.sess[slot].peer,
                 P.sess[slot].peer_store, reason);
    }
    pthread_cond_broadcast(&P.rq_cv);
    pthread_cond_broadcast(&P.acked_cv);
    pthread_mutex_unlock(&P.mu);
}

/* ---- the worker's stream ---- */

typedef struct stream {
    int slot;
    uint32_t gen;
    size_t idx;
    pacct *pa;
    repl_link *link;
    buf batch, msg;
    uint64_t first, last;
    int64_t t_first, t_last;
    uint64_t extra;     /* blob bytes sent since the last FRAMES */
    uint64_t hi;        /* ship nothing above: it is what was made durable */
    uint64_t last_seg, last_end, added; /* the last record taken into the batch */
    uint64_t sent_seg, sent_end, sent_modseq;
    uint64_t job_bytes;
    repl_durable dur;   /* what the writers' syncs already made durable */
    int stop;           /* 1 yield (more to do), 2 window full, 3 link/account gone, 4 error */
    hv_err err;
} stream;

/* Still ours to stream? Under P.mu. */
static sacct *stream_sa(stream *x)
{
    psess *s = &P.sess[x->slot];
    if (!s->used || s->dead || s->gen != x->gen || x->idx >= s->nacc)
        return NULL;
    sacct *sa = &s->acc[x->idx];
    return sa->state == S_READY ? sa : NULL;
}

/* Waits (briefly, only when no other job is waiting) for the windows to
 * take `bytes` more. 0 ok, else the stop reason. */
static int window_room(stream *x, uint64_t bytes)
{
    pthread_mutex_lock(&P.mu);
    int64_t until = repl_now_ms() + 500;
    for (;;) {
        sacct *sa = stream_sa(x);
        if (!sa) {
            pthread_mutex_unlock(&P.mu);
            return 3;
        }
        psess *s = &P.sess[x->slot];
        uint64_t mine = sa->bytes_sent - sa->bytes_acked;
        int acct_full = mine > 0 && mine + bytes > ACCT_WINDOW;
        int link_full = s->unacked > 0 && s->unacked + bytes > P.cfg->window;
        if (!acct_full && !link_full) {
            pthread_mutex_unlock(&P.mu);
            return 0;
        }
        if (P.qn > 0 || repl_now_ms() >= until || P.stopping) {
            sa->blocked = 1;
            if (link_full)
                s->blocked_any = 1;
            pthread_mutex_unlock(&P.mu);
            return 2;
        }
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_nsec += 50 * 1000000;
        if (dl.tv_nsec >= 1000000000) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&P.acked_cv, &P.mu, &dl);
    }
}

static int flush_frames(stream *x)
{
    if (!x->batch.len)
        return 0;
    uint64_t bytes = x->batch.len + x->extra;
    int w = window_room(x, bytes);
    if (w)
        return w;
    buf_reset(&x->msg);
    repl_build_frames(&x->msg, x->pa->name, x->first, x->last, x->batch.data, x->batch.len);
    /* Account for it before it can be acked. */
    pthread_mutex_lock(&P.mu);
    sacct *sa = stream_sa(x);
    if (!sa) {
        pthread_mutex_unlock(&P.mu);
        return 3;
    }
    psess *s = &P.sess[x->slot];
    uint64_t prev_sent = sa->sent;
    sa->bytes_sent += bytes;
    s->unacked += bytes;
    win_push(sa, &(win_ent){x->last, sa->bytes_sent, x->t_first, x->t_last});
    sa->sent = x->last;
    pthread_mutex_unlock(&P.mu);
    int rc = repl_link_send(x->link, &x->msg, 2000);
    if (rc < 0) {
        pthread_mutex_lock(&P.mu);
        sa = stream_sa(x);
        if (sa && sa->wn && sa->win[sa->whead + sa->wn - 1].modseq == x->last) {
            sa->wn--;
            sa->bytes_sent -= bytes;
            s->unacked -= bytes;
            sa->sent = prev_sent;
        }
        pthread_mutex_unlock(&P.mu);
        return rc == -ETIMEDOUT ? 1 : 3;
    }
    x->job_bytes += bytes;
    x->extra = 0;
    x->sent_seg = x->last_seg;
    x->sent_end = x->last_end;
    x->sent_modseq = x->last;
    buf_reset(&x->batch);
    x->first = x->last = 0;
    return 0;
}

/* The window was checked by the caller. */
static int send_blob(stream *x, const store_record *r)
{
    int fd;
    uint64_t size;
    if (store_blob_open(x->pa->st, &r->blob, &fd, &size, &x->err) < 0)
        return 4;
    if (size != r->size) {
        close(fd);
        hv_err_set(&x->err, -EUCLEAN, "account %s: blob of modseq %llu has %llu bytes, its "
                   "record says %llu", x->pa->name, (unsigned long long)r->modseq,
                   (unsigned long long)size, (unsigned long long)r->size);
        return 4;
    }
    uint8_t *chunk = malloc(REPL_BLOB_CHUNK);
    int stop = 0;
    uint64_t off = 0;
    do {
        size_t n = size - off > REPL_BLOB_CHUNK ? REPL_BLOB_CHUNK : (size_t)(size - off);
        ssize_t got = n ? pread(fd, chunk, n, (off_t)off) : 0;
        if (got != (ssize_t)n) {
            hv_err_set(&x->err, -EIO, "account %s: short read of a blob", x->pa->name);
            stop = 4;
            break;
        }
        buf_reset(&x->msg);
        repl_build_blob(&x->msg, x->pa->name, r->blob.b, size, off, chunk, n);
        int rc = repl_link_send(x->link, &x->msg, 5000);
        if (rc < 0) {
            stop = rc == -ETIMEDOUT ? 1 : 3;
            break;
        }
        off += n;
        x->extra += n;
    } while (off < size);
    free(chunk);
    close(fd);
    return stop;
}

static int stream_cb(void *ctx, const store_record *r)
{
    stream *x = ctx;
    if (r->modseq > x->hi)
        return 1; /* not visible when the job began: the next job takes it */
    uint64_t blob = r->type == STORE_REC_APPEND && !r->body ? r->size : 0;
    /* A FRAMES message carries about BATCH_BYTES, counting the blobs sent
     * ahead of it (the window accounts them with their frames). */
    if (x->batch.len && x->batch.len + x->extra + r->raw_len + blob > BATCH_BYTES) {
        if ((x->stop = flush_frames(x)))
            return 1;
        if (x->job_bytes >= QUANTUM_BYTES) {
            pthread_mutex_lock(&P.mu);
            int others = P.qn > 0 || P.stopping;
            pthread_mutex_unlock(&P.mu);
            if (others) {
                x->stop = 1;
                return 1;
            }
        }
    }
    /* Never ship a record a crash could still take from this primary. */
    if (repl_make_durable(x->pa->dir, r->segment, r->offset + r->raw_len, &x->dur, &x->err) < 0) {
        x->stop = 4;
        return 1;
    }
    if (blob) {
        /* The blob goes first: the replica applies a frame only when the
         * blob it names is there. */
        int w = window_room(x, x->batch.len + x->extra + blob);
        if (w == 2 && x->batch.len) {
            /* Full: what is pending goes now, so that its blobs are not
             * sent again by the next job. */
            x->stop = flush_frames(x);
            if (!x->stop)
                x->stop = 2;
            return 1;
        }
        if (w || (w = send_blob(x, r))) {
            x->stop = w;
            return 1;
        }
    }
    if (!x->batch.len) {
        x->first = r->modseq;
        x->t_first = r->time_ms;
    }
    buf_append(&x->batch, r->raw, r->raw_len);
    x->last = r->modseq;
    x->t_last = r->time_ms;
    x->added = r->modseq;
    x->last_seg = r->segment;
    x->last_end = r->offset + r->raw_len;
    return 0;
}

static int ensure_open(pacct *pa, hv_err *err)
{
    if (pa->st)
        return store_refresh(pa->st, err);
    int rc = store_open(pa->dir, pa->name, STORE_OPEN_READONLY, &P.cfg->sopt, &pa->st, err);
    if (rc == 0) {
        pthread_mutex_lock(&P.mu);
        P.open_count++;
        pthread_mutex_unlock(&P.mu);
    }
    return rc;
}

static void maybe_close(pacct *pa)
{
    pthread_mutex_lock(&P.mu);
    int close_it = P.open_count > OPEN_MAX;
    if (close_it)
        P.open_count--;
    pthread_mutex_unlock(&P.mu);
    if (close_it) {
        store_close(pa->st);
        pa->st = NULL;
    }
}

static int first_difference(int slot, uint32_t gen, pacct *pa, uint64_t mp, uint64_t mr,
                            uint64_t *out, hv_err *err);

/* A replica diverged on an account (it holds records this primary lacks):
 * find the last modseq both logs share and ask it to rejoin from there
 * (REJOIN). Called by the worker that found it, without pa->mu. */
static void start_rejoin(job j, pacct *pa, repl_link *link, uint64_t pos, uint64_t hi)
{
    hv_err err = {0};
    uint64_t first = 0;
    pthread_mutex_lock(&P.mu);
    psess *s = &P.sess[j.slot];
    int rc = first_difference(j.slot, j.gen, pa, hi, pos, &first, &err);
    uint64_t upto = hi < pos ? hi : pos;
    uint64_t common = first ? first - 1 : upto;
    char store[REPL_STORE_NAME_MAX + 1];
    snprintf(store, sizeof(store), "%s", s->peer_store);
    int live = s->gen == j.gen && !s->dead && j.idx < s->nacc &&
               s->acc[j.idx].state == S_REJOIN;
    if (live && rc < 0) {
        sacct *sa = &s->acc[j.idx];
        sa->state = S_DIVERGED;
        snprintf(sa->why, sizeof(sa->why), "cannot find where the logs part: %.150s", err.msg);
    } else if (live && common >= pos) {
        /* The replica's log is a prefix after all: ask again. */
        s->acc[j.idx].state = S_NEW;
        live = 0;
    }
    pthread_mutex_unlock(&P.mu);
    if (!live)
        return;
    if (rc < 0) {
        log_error("repl: account=%s peer=%s diverged reason=\"cannot find where the logs part: "
                  "%s\" action=\"not streamed\"", pa->name, store, err.msg);
        return;
    }
    log_warn("repl: rejoin_start account=%s peer=%s common_modseq=%llu replica_modseq=%llu "
             "primary_modseq=%llu replica_only_records=%llu action=\"the replica's messages "
             "after common_modseq are appended here as new messages\"", pa->name, store,
             (unsigned long long)common, (unsigned long long)pos, (unsigned long long)hi,
             (unsigned long long)(pos - common));
    buf m;
    buf_init(&m);
    repl_build_rejoin(&m, pa->name, common, P.cfg->epoch);
    if (repl_link_send(link, &m, 5000) < 0)
        repl_link_shutdown(link, "cannot send REJOIN");
    buf_free(&m);
}

static void run_job(job j)
{
    pthread_mutex_lock(&P.mu);
    psess *s = &P.sess[j.slot];
    if (!s->used || s->dead || s->gen != j.gen || j.idx >= s->nacc) {
        pthread_mutex_unlock(&P.mu);
        return;
    }
    sacct *sa = &s->acc[j.idx];
    sa->queued = 0;
    if (sa->state != S_VERIFY && sa->state != S_READY) {
        pthread_mutex_unlock(&P.mu);
        return;
    }
    sa->in_work = 1;
    sa->dirty = 0;
    s->running++;
    int state = sa->state;
    uint64_t pos = sa->pos;
    uint32_t pos_crc = sa->pos_crc;
    pacct *pa = P.accts[j.idx];
    repl_link *link = s->link;
    pthread_mutex_unlock(&P.mu);

    stream x = {.slot = j.slot, .gen = j.gen, .idx = j.idx, .pa = pa, .link = link};
    buf_init(&x.batch);
    buf_init(&x.msg);
    int new_state = state;
    char why[200] = "";
    uint64_t hi = 0;
    pthread_mutex_lock(&pa->mu);
    int rc = ensure_open(pa, &x.err);
    if (rc == 0)
        hi = store_highest_modseq(pa->st);
    if (rc < 0) {
        new_state = S_FAILED;
        snprintf(why, sizeof(why), "primary: %.180s", x.err.msg);
    } else if (state == S_VERIFY) {
        uint32_t crc = 0;
        if (pos > hi) {
            new_state = S_DIVERGED;
            snprintf(why, sizeof(why), "replica has modseq %llu, primary only %llu",
                     (unsigned long long)pos, (unsigned long long)hi);
        } else if (repl_record_crc(pa->st, pos, &crc, &x.err) < 0 || crc != pos_crc) {
            new_state = S_DIVERGED;
            snprintf(why, sizeof(why), "replica's record %llu differs from the primary's",
                     (unsigned long long)pos);
        } else {
            new_state = S_READY;
        }
        pthread_mutex_lock(&P.mu);
        if (s->gen == j.gen && !s->dead) {
            sa = &s->acc[j.idx];
            /* A divergent replica rejoins: its tail is salvaged here. */
            if (new_state == S_DIVERGED)
                new_state = S_REJOIN;
            sa->state = (uint8_t)new_state;
            sa->hi = hi;
            if (new_state == S_READY)
                sa->sent = sa->acked = pos;
            else
                snprintf(sa->why, sizeof(sa->why), "%s", why);
        }
        pthread_mutex_unlock(&P.mu);
        if (new_state == S_REJOIN)
            log_error("repl: account=%s peer=%s diverged reason=\"%s\" action=\"rejoin: the "
                      "replica's divergent messages are salvaged, then it resyncs\"", pa->name,
                      s->peer_store, why);
    }
    if (new_state == S_READY) {
        pthread_mutex_lock(&P.mu);
        sa = &s->acc[j.idx];
        uint64_t since = sa->sent;
        uint64_t tseg = sa->tail_modseq == since ? sa->tail_seg : 0;
        uint64_t toff = sa->tail_off;
        sa->hi = hi;
        pthread_mutex_unlock(&P.mu);
        /* stream_cb makes sure each record is durable before it is
         * shipped (repl_make_durable). */
        x.hi = hi;
        if (since < hi && !x.stop) {
            rc = tseg ? repl_tail_read(pa->dir, tseg, toff, since, hi, stream_cb, &x, &x.err)
                      : -ESTALE;
            if (rc == -ESTALE && !x.stop)
                rc = store_changes_since(pa->st, x.added ? x.added : since, stream_cb, &x,
                                         &x.err);
            if (rc < 0) {
                x.stop = 4;
            } else if (!x.stop) {
                x.stop = flush_frames(&x);
            }
            if (x.stop == 4) {
                new_state = S_FAILED;
                snprintf(why, sizeof(why), "primary: %.180s", x.err.msg);
            }
        }
    }
    if (new_state == S_FAILED)
        log_error("repl: account=%s peer=%s failed reason=\"%s\" retry_in_s=5", pa->name,
                  s->peer_store, why);
    maybe_close(pa);
    pthread_mutex_unlock(&pa->mu);
    buf_free(&x.batch);
    buf_free(&x.msg);
    if (new_state == S_REJOIN)
        start_rejoin(j, pa, link, pos, hi);

    pthread_mutex_lock(&P.mu);
    s->running--;
    if (s->gen == j.gen && !s->dead) {
        sa = &s->acc[j.idx];
        sa->in_work = 0;
        if (x.sent_modseq && sa->sent == x.sent_modseq) {
            sa->tail_seg = x.sent_seg;
            sa->tail_off = x.sent_end;
            sa->tail_modseq = x.sent_modseq;
        }
        if (new_state == S_FAILED && sa->state == S_READY) {
            sa->state = S_FAILED;
            snprintf(sa->why, sizeof(sa->why), "%s", why);
            sa->retry_at = repl_now_ms() + 5000;
            win_reset(s, sa);
        }
        if (sa->state == S_READY && !sa->blocked && (sa->dirty || x.stop == 1))
            enqueue(j.slot, j.idx);
        sa->dirty = 0;
    }
    pthread_cond_broadcast(&P.acked_cv);
    pthread_mutex_unlock(&P.mu);
}

static void *worker_main(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&P.mu);
        while (!P.qn && !P.stopping)
            pthread_cond_wait(&P.work_cv, &P.mu);
        if (P.stopping) {
            pthread_mutex_unlock(&P.mu);
            return NULL;
        }
        job j = P.q[P.qhead];
        P.qhead = (P.qhead + 1) % P.qcap;
        P.qn--;
        pthread_mutex_unlock(&P.mu);
        run_job(j);
    }
}

/* ---- watcher ---- */

static void mark_changed(size_t idx)
{
    for (int k = 0; k < MAX_LINKS; k++) {
        psess *s = &P.sess[k];
        if (s->used && !s->dead && idx < s->nacc && s->acc[idx].state == S_READY)
            enqueue(k, idx);
    }
}

static void progress(psess *s, int64_t now)
{
    size_t synced = 0, diverged = 0, failed = 0;
    uint64_t behind = 0;
    for (size_t i = 0; i < s->nacc; i++) {
        sacct *sa = &s->acc[i];
        if (sa->state == S_READY && sa->acked >= sa->hi)
            synced++;
        else if (sa->state == S_DIVERGED)
            diverged++;
        else if (sa->state == S_FAILED)
            failed++;
        if (sa->hi > sa->acked)
            behind += sa->hi - sa->acked;
    }
    if (synced == s->last_synced_logged && synced == s->nacc)
        return;
    s->last_synced_logged = synced;
    /* The big ones by name: an initial sync of a 180,000-message or 5 GB
     * account shows how far it is. */
    int named = 0;
    for (size_t i = 0; i < s->nacc && named < 5; i++) {
        sacct *sa = &s->acc[i];
        if (sa->state == S_READY && sa->hi > sa->acked && sa->hi - sa->acked >= 10000) {
            log_info("repl: progress peer=%s account=%s acked=%llu of=%llu bytes_acked=%llu",
                     s->peer_store, P.accts[i]->name, (unsigned long long)sa->acked,
                     (unsigned long long)sa->hi, (unsigned long long)sa->bytes_acked);
            named++;
        }
    }
    repl_link_stats st;
    repl_link_get_stats(s->link, &st);
    log_info("repl: progress peer=%s store=%s accounts=%zu in_sync=%zu diverged=%zu failed=%zu "
             "records_behind=%llu bytes_sent=%llu rate_bps=%.0f", s->peer, s->peer_store,
             s->nacc, synced, diverged, failed, (unsigned long long)behind,
             (unsigned long long)st.bytes_out, st.rate_out);
    s->last_progress = now;
}

/* Links on which every account is streaming and fully acknowledged.
 * Under P.mu. */
static unsigned caught_up_links(void)
{
    unsigned n = 0;
    for (int k = 0; k < MAX_LINKS; k++) {
        psess *s = &P.sess[k];
        if (!s->used || s->dead || s->nacc < P.n)
            continue;
        int ok = 1;
        for (size_t i = 0; i < s->nacc && ok; i++) {
            sacct *sa = &s->acc[i];
            ok = sa->state == S_READY && sa->acked == sa->sent && !sa->queued && !sa->in_work;
        }
        n += (unsigned)ok;
    }
    return n;
}

/* Under P.mu. */
static void poke_later(size_t idx, int64_t at)
{
    pacct *pa = P.accts[idx];
    if (pa->poke_at)
        return;
    if (P.npokes == P.cappokes) {
        P.cappokes = P.cappokes ? P.cappokes * 2 : 64;
        P.pokes = realloc(P.pokes, P.cappokes * sizeof(*P.pokes));
    }
    P.pokes[P.npokes++] = idx;
    pa->poke_at = at;
}

/* Under P.mu: the deferred looks that are due; returns ms until the next. */
static int pokes_due(int64_t now)
{
    int next = 200;
    for (size_t i = 0; i < P.npokes;) {
        pacct *pa = P.accts[P.pokes[i]];
        if (!pa->poke_at || pa->poke_at <= now) {
            if (pa->poke_at)
                mark_changed(P.pokes[i]);
            pa->poke_at = 0;
            P.pokes[i] = P.pokes[--P.npokes];
            continue;
        }
        if (pa->poke_at - now < next)
            next = (int)(pa->poke_at - now);
        i++;
    }
    return next;
}

static void *watcher_main(void *arg)
{
    (void)arg;
    int64_t last_scan = 0;
    int timeout = 200;
    char evbuf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    buf msg;
    buf_init(&msg);
    for (;;) {
        struct pollfd p = {.fd = P.inotify_fd, .events = POLLIN};
        poll(&p, 1, timeout);
        pthread_mutex_lock(&P.mu);
        if (P.stopping) {
            pthread_mutex_unlock(&P.mu);
            break;
        }
        ssize_t n;
        int overflow = 0;
        int64_t now = repl_now_ms();
        while ((n = read(P.inotify_fd, evbuf, sizeof(evbuf))) > 0) {
            for (char *q = evbuf; q < evbuf + n;) {
                struct inotify_event *ie = (struct inotify_event *)q;
                if (ie->mask & IN_Q_OVERFLOW)
                    overflow = 1;
                if (ie->wd >= 0 && (size_t)ie->wd < P.nwd && P.wd_idx[ie->wd]) {
                    size_t idx = P.wd_idx[ie->wd] - 1;
                    /* A writer writes its records, syncs, then moves the
                     * store's durable mark (log/durable); only then can a
                     * reader see them, so that event starts the job. Other
                     * changes (a segment written) are looked at a moment
                     * later, in case their writer died before its mark:
                     * a job at once would find nothing to ship. */
                    if (ie->len && strcmp(ie->name, "durable") == 0) {
                        P.accts[idx]->poke_at = 0;
                        mark_changed(idx);
                    } else {
                        poke_later(idx, now + 100);
                    }
                }
                q += sizeof(struct inotify_event) + ie->len;
            }
        }
        if (overflow)
            for (size_t i = 0; i < P.n; i++)
                mark_changed(i);
        timeout = pokes_due(now);
        if (now - last_scan >= 2000) {
            last_scan = now;
            /* The folders are listed without the lock (acks keep flowing
             * meanwhile); only the adding takes it. */
            pthread_mutex_unlock(&P.mu);
            buf found;
            buf_init(&found);
            repl_scan_accounts(P.cfg->data_dir, collect_cb, &found);
            pthread_mutex_lock(&P.mu);
            for (size_t off = 0; off < found.len;) {
                const char *name = (const char *)found.data + off;
                const char *dir = name + strlen(name) + 1;
                add_account(name, dir);
                off += strlen(name) + strlen(dir) + 2;
            }
            buf_free(&found);
            if (P.stopping) {
                pthread_mutex_unlock(&P.mu);
                break;
            }
        }
        /* Ask every new account's position; retry failed ones. */
        repl_link *to_free[MAX_LINKS];
        int nfree = 0;
        for (int k = 0; k < MAX_LINKS; k++) {
            psess *s = &P.sess[k];
            if (!s->used)
                continue;
            if (s->dead) {
                if (s->running == 0) {
                    to_free[nfree++] = s->link;
                    for (size_t i = 0; i < s->nacc; i++)
                        free(s->acc[i].win);
                    free(s->acc);
                    free(s->rq_crcs);
                    sv_close(s);
                    uint32_t gen = s->gen;
                    memset(s, 0, sizeof(*s));
                    s->gen = gen + 1;
                }
                continue;
            }
            for (size_t i = 0; i < s->nacc; i++) {
                sacct *sa = &s->acc[i];
                if (sa->state == S_NEW ||
                    (sa->state == S_FAILED && !sa->in_work && now >= sa->retry_at)) {
                    buf_reset(&msg);
                    repl_build_account(&msg, P.accts[i]->name, sa->hi);
                    if (repl_link_send(s->link, &msg, 0) == 0)
                        sa->state = S_WAIT_POS;
                }
            }
            if (now - s->last_progress >= 5000)
                progress(s, now);
        }
        if (P.degraded && caught_up_links() >= P.cfg->sync_k) {
            P.degraded = 0;
            log_warn("repl: sync_restored after_ms=%lld replicas_in_sync=%u",
                     (long long)(repl_wall_ms() - P.degraded_since), P.cfg->sync_k);
        }
        pthread_mutex_unlock(&P.mu);
        for (int i = 0; i < nfree; i++)
            repl_link_free(to_free[i]);
    }
    buf_free(&msg);
    return NULL;
}

/* ---- accepting replicas ---- */

typedef struct hs_arg {
    int fd;
} hs_arg;

/* Makes a handshaken link a replica session. Returns its slot, or -1
 * (the link is freed). */
static int install(repl_link *l)
{
    if (repl_link_peer_role(l) == REPL_ROLE_MOVER) {
        /* `haven move` streaming an account here: not a replica. */
        repl_move_target_start(P.cfg, l);
        return -1;
    }
    if (repl_resolve_link(P.cfg, l) < 0) {
        repl_link_free(l);
        return -1;
    }
    pthread_mutex_lock(&P.mu);
    int slot = -1;
    for (int k = 0; k < MAX_LINKS && slot < 0; k++)
        if (!P.sess[k].used)
            slot = k;
    if (slot < 0 || P.stopping) {
        pthread_mutex_unlock(&P.mu);
        log_warn("repl: refused peer=%s reason=\"already %d replicas connected\"",
                 repl_link_peer_addr(l), MAX_LINKS);
        repl_link_free(l);
        return -1;
    }
    psess *s = &P.sess[slot];
    s->used = 1;
    s->dead = 0;
    s->link = l;
    s->acc = calloc(P.n ? P.n : 1, sizeof(*s->acc));
    s->nacc = P.n;
    s->connected_ms = repl_wall_ms();
    snprintf(s->peer, sizeof(s->peer), "%s", repl_link_peer_addr(l));
    snprintf(s->peer_store, sizeof(s->peer_store), "%s", repl_link_peer_store(l));
    repl_link_start(l, on_msg, on_closed, NULL);
    log_info("repl: link_up peer=%s store=%s accounts=%zu epoch=%llu", s->peer, s->peer_store,
             s->nacc, (unsigned long long)P.cfg->epoch);
    pthread_mutex_unlock(&P.mu);
    return slot;
}

static void *handshake_main(void *arg)
{
    hs_arg *h = arg;
    repl_link_opts o;
    repl_link_options(P.cfg, 1, &o);
    repl_link *l;
    hv_err err = {0};
    int rc = repl_link_handshake(h->fd, &o, &l, &err);
    free(h);
    pthread_mutex_lock(&P.mu);
    P.handshakes--;
    pthread_mutex_unlock(&P.mu);
    if (rc < 0) {
        log_warn("repl: handshake_failed reason=\"%s\"", err.msg);
        return NULL;
    }
    install(l);
    return NULL;
}

/* A primary whose config names a peer (repl_primary: it was that peer's
 * replica before a promotion) dials it and streams to it. */
static void *dialer_main(void *arg)
{
    (void)arg;
    /* Short at first: after a failover the old primary is typically
     * restarted within a second or two, and it learns it was replaced
     * only from this dial. */
    unsigned backoff = 200;
    for (;;) {
        pthread_mutex_lock(&P.mu);
        int stop = P.stopping;
        pthread_mutex_unlock(&P.mu);
        if (stop)
            return NULL;
        hv_err err = {0};
        int fd = -1;
        repl_link *l = NULL;
        int rc = repl_dial(P.cfg, &fd, &err);
        if (rc == 0) {
            repl_link_opts o;
            repl_link_options(P.cfg, 0, &o);
            rc = repl_link_handshake(fd, &o, &l, &err);
        }
        int slot = rc == 0 ? install(l) : -1;
        if (slot < 0) {
            if (rc < 0)
                log_warn("repl: connect_failed peer=%s:%s reason=\"%s\" retry_in_ms=%u",
                         P.cfg->primary_host, P.cfg->primary_port, err.msg, backoff);
            for (unsigned w = 0; w < backoff; w += 100) {
                pthread_mutex_lock(&P.mu);
                stop = P.stopping;
                pthread_mutex_unlock(&P.mu);
                if (stop)
                    return NULL;
                usleep(100000);
            }
            backoff = backoff >= 8000 ? 10000 : backoff * 2;
            continue;
        }
        backoff = 200;
        pthread_mutex_lock(&P.mu);
        uint32_t gen = P.sess[slot].gen;
        while (!P.stopping && P.sess[slot].used && P.sess[slot].gen == gen &&
               !P.sess[slot].dead) {
            struct timespec dl;
            clock_gettime(CLOCK_REALTIME, &dl);
            dl.tv_sec += 1;
            pthread_cond_timedwait(&P.acked_cv, &P.mu, &dl);
        }
        pthread_mutex_unlock(&P.mu);
    }
}

/* ---- planned switchover ---- */

typedef struct sw_arg {
    repl_link *l;
    uint64_t epoch;
} sw_arg;

static int ensure_open(pacct *pa, hv_err *err);
static void mark_changed(size_t idx);

/* 1 when every account is streaming to the link's replica and acked up
 * to its highest modseq; -1 when one cannot get there (diverged). */
static int drained(repl_link *l, char *why, size_t whylen)
{
    pthread_mutex_lock(&P.mu);
    repl_scan_accounts(P.cfg->data_dir, scan_cb, NULL);
    int slot = slot_of(l);
    size_t n = P.n;
    pthread_mutex_unlock(&P.mu);
    if (slot < 0)
        return snprintf(why, whylen, "the replica's link went down"), -1;
    int all = 1;
    for (size_t i = 0; i < n; i++) {
        pthread_mutex_lock(&P.mu);
        pacct *pa = P.accts[i];
        pthread_mutex_unlock(&P.mu);
        hv_err err = {0};
        uint64_t hi = 0;
        pthread_mutex_lock(&pa->mu);
        int rc = ensure_open(pa, &err);
        if (rc == 0)
            hi = store_highest_modseq(pa->st);
        pthread_mutex_unlock(&pa->mu);
        if (rc < 0)
            return snprintf(why, whylen, "%.250s", err.msg), -1;
        pthread_mutex_lock(&P.mu);
        psess *s = &P.sess[slot];
        if (!s->used || s->dead || s->link != l) {
            pthread_mutex_unlock(&P.mu);
            return snprintf(why, whylen, "the replica's link went down"), -1;
        }
        sacct *sa = i < s->nacc ? &s->acc[i] : NULL;
        if (sa && sa->state == S_DIVERGED) {
            snprintf(why, whylen, "account %.60s diverged on the replica: %.150s", pa->name, sa->why);
            pthread_mutex_unlock(&P.mu);
            return -1;
        }
        if (!sa || sa->state != S_READY || sa->acked < hi) {
            all = 0;
            if (sa && sa->state == S_READY)
                mark_changed(i);
        }
        pthread_mutex_unlock(&P.mu);
    }
    return all;
}

/* After the fence is written: a writer that checked it just before it
 * existed may still be committing (the store checks the fence under the
 * account's write lock). Taking each account's lock once waits for such
 * a write, so the heads the drain then measures hold every write that
 * got past the fence. */
static int fence_barrier(char *why, size_t whylen)
{
    buf found;
    buf_init(&found);
    repl_scan_accounts(P.cfg->data_dir, collect_cb, &found);
    int rc = 0;
    for (size_t off = 0; off < found.len && rc == 0;) {
        const char *name = (const char *)found.data + off;
        const char *dir = name + strlen(name) + 1;
        hv_err err = {0};
        rc = store_account_barrier(dir, 0, &err);
        if (rc == -EWOULDBLOCK) {
            log_info("repl: switchover_waits_for_writer account=%s", name);
            rc = store_account_barrier(dir, 1, &err);
        }
        if (rc < 0)
            snprintf(why, whylen, "account %.60s: %.200s", name, err.msg);
        off += strlen(name) + strlen(dir) + 2;
    }
    buf_free(&found);
    return rc;
}

static void *switchover_main(void *arg)
{
    sw_arg *a = arg;
    char why[300], fence[300];
    snprintf(fence, sizeof(fence), "fenced: store %s switched over to %s at epoch %llu",
             P.cfg->store_name, repl_link_peer_addr(a->l), (unsigned long long)a->epoch);
    hv_err err = {0};
    int rc = a->epoch > P.cfg->epoch ? repl_fence(P.cfg, fence, &err)
                                     : hv_err_set(&err, -ESTALE, "epoch %llu is not above ours",
                                                  (unsigned long long)a->epoch);
    log_warn("repl: switchover_start peer=%s epoch=%llu", repl_link_peer_addr(a->l),
             (unsigned long long)a->epoch);
    int d = 0;
    int64_t t0 = repl_now_ms();
    if (rc == 0 && fence_barrier(why, sizeof(why)) < 0)
        d = -1;
    while (rc == 0 && d == 0 && (d = drained(a->l, why, sizeof(why))) == 0) {
        pthread_mutex_lock(&P.mu);
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_nsec += 100 * 1000000;
        if (dl.tv_nsec >= 1000000000) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000;
        }
        if (!P.stopping)
            pthread_cond_timedwait(&P.acked_cv, &P.mu, &dl);
        int stop = P.stopping;
        pthread_mutex_unlock(&P.mu);
        if (stop) {
            snprintf(why, sizeof(why), "stopping");
            d = -1;
            break;
        }
    }
    if (rc < 0 || d < 0) {
        if (rc < 0)
            snprintf(why, sizeof(why), "%.250s", err.msg);
        log_error("repl: switchover_aborted peer=%s reason=\"%s\"", repl_link_peer_addr(a->l),
                  why);
        hv_err e2 = {0};
        if (rc == 0)
            repl_unfence(P.cfg, &e2);
        repl_link_shutdown(a->l, "switchover aborted");
    } else {
        buf m;
        buf_init(&m);
        repl_build_ping(&m, REPL_SWITCHED, a->epoch);
        repl_link_send(a->l, &m, 5000);
        buf_free(&m);
        /* Let SWITCHED leave before the role change closes the link. */
        for (int i = 0; i < 50; i++) {
            repl_link_stats st;
            repl_link_get_stats(a->l, &st);
            if (!st.queued_bytes)
                break;
            usleep(20000);
        }
        log_warn("repl: switchover_done peer=%s epoch=%llu drain_ms=%lld",
                 repl_link_peer_addr(a->l), (unsigned long long)a->epoch,
                 (long long)(repl_now_ms() - t0));
        repl_demote(P.cfg, a->epoch, fence);
    }
    pthread_mutex_lock(&P.mu);
    P.switching = 0;
    pthread_mutex_unlock(&P.mu);
    free(a);
    return NULL;
}

void repl_primary_switchover(repl_link *l, uint64_t epoch)
{
    sw_arg *a = malloc(sizeof(*a));
    a->l = l;
    a->epoch = epoch;
    pthread_t t;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &at, switchover_main, a) != 0) {
        free(a);
        repl_link_shutdown(l, "cannot start the switchover");
    }
    pthread_attr_destroy(&at);
}

static void *acceptor_main(void *arg)
{
    (void)arg;
    for (;;) {
        struct pollfd p = {.fd = P.fd_listen, .events = POLLIN};
        int r = poll(&p, 1, 500);
        pthread_mutex_lock(&P.mu);
        int stop = P.stopping;
        pthread_mutex_unlock(&P.mu);
        if (stop)
            return NULL;
        if (r <= 0)
            continue;
        int fd = accept4(P.fd_listen, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        pthread_mutex_lock(&P.mu);
        int busy = P.handshakes >= 4;
        if (!busy)
            P.handshakes++;
        pthread_mutex_unlock(&P.mu);
        if (busy) {
            close(fd);
            continue;
        }
        hs_arg *h = malloc(sizeof(*h));
        h->fd = fd;
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &at, handshake_main, h) != 0) {
            close(fd);
            free(h);
            pthread_mutex_lock(&P.mu);
            P.handshakes--;
            pthread_mutex_unlock(&P.mu);
        }
        pthread_attr_destroy(&at);
    }
}

int repl_primary_start(repl_cfg *cfg, int fd_listen, hv_err *err)
{
    memset(&P, 0, sizeof(P));
    P.cfg = cfg;
    P.fd_listen = fd_listen;
    pthread_mutex_init(&P.mu, NULL);
    pthread_cond_init(&P.work_cv, NULL);
    pthread_cond_init(&P.acked_cv, NULL);
    pthread_cond_init(&P.rq_cv, NULL);
    P.inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (P.inotify_fd < 0)
        return hv_err_sys(err, "inotify");
    pthread_mutex_lock(&P.mu);
    repl_scan_accounts(cfg->data_dir, scan_cb, NULL);
    pthread_mutex_unlock(&P.mu);
    P.workers = calloc(cfg->workers, sizeof(pthread_t));
    for (unsigned i = 0; i < cfg->workers; i++)
        pthread_create(&P.workers[i], NULL, worker_main, NULL);
    pthread_create(&P.watcher, NULL, watcher_main, NULL);
    if (fd_listen >= 0)
        pthread_create(&P.acceptor, NULL, acceptor_main, NULL);
    if (cfg->primary_host[0])
        pthread_create(&P.dialer, NULL, dialer_main, NULL);
    log_info("repl: primary ready store=%s accounts=%zu workers=%u window=%llu rate_limit=%llu",
             cfg->store_name, P.n, cfg->workers, (unsigned long long)cfg->window,
             (unsigned long long)cfg->rate);
    return 0;
}

void repl_primary_stop(void)
{
    pthread_mutex_lock(&P.mu);
    P.stopping = 1;
    for (sync_waiter *w = P.waiters; w; w = w->next)
        pthread_cond_signal(&w->cv);
    pthread_cond_broadcast(&P.work_cv);
    pthread_cond_broadcast(&P.acked_cv);
    pthread_cond_broadcast(&P.rq_cv);
    for (int k = 0; k < MAX_LINKS; k++)
        if (P.sess[k].used)
            repl_link_shutdown(P.sess[k].link, "primary stopping");
    pthread_mutex_unlock(&P.mu);
    if (P.fd_listen >= 0)
        pthread_join(P.acceptor, NULL);
    if (P.cfg->primary_host[0])
        pthread_join(P.dialer, NULL);
    for (unsigned i = 0; i < P.cfg->workers; i++)
        pthread_join(P.workers[i], NULL);
    pthread_join(P.watcher, NULL);
    /* Only now: the watcher may have freed dead links until it ended. */
    for (int k = 0; k < MAX_LINKS; k++)
        if (P.sess[k].used)
            repl_link_free(P.sess[k].link);
}

/* ---- sync mode ---- */

static int policy(char *why, size_t len)
{
    snprintf(why, len, "replication degraded since %lld ms ago: %s",
             (long long)(repl_wall_ms() - P.degraded_since), P.degraded_why);
    return P.cfg->sync_refuse ? -EAGAIN : 1;
}

int repl_primary_wait(const char *account, uint64_t modseq, char *why, size_t whylen)
{
    pthread_mutex_lock(&P.mu);
    P.sync_waits++;
    long idx = find_acct(account);
    if (idx < 0) {
        /* A write to an account created a moment ago: look now. */
        repl_scan_accounts(P.cfg->data_dir, scan_cb, NULL);
        idx = find_acct(account);
    }
    /* Ship it now, unless every link has it on its way already (the
     * commit's inotify event usually comes first): a job for nothing would
     * only take a worker from someone else. */
    int shipped = idx >= 0;
    for (int k = 0; k < MAX_LINKS && shipped; k++) {
        psess *s = &P.sess[k];
        if (s->used && !s->dead && (size_t)idx < s->nacc && s->acc[idx].state == S_READY &&
            s->acc[idx].sent < modseq)
            shipped = 0;
    }
    if (idx >= 0 && !shipped)
        mark_changed((size_t)idx);
    int64_t deadline = repl_now_ms() + P.cfg->sync_timeout_ms;
    sync_waiter me = {.next = P.waiters, .idx = idx, .modseq = modseq};
    pthread_cond_init(&me.cv, NULL);
    P.waiters = &me;
    int rc;
    for (;;) {
        unsigned have = 0;
        for (int k = 0; k < MAX_LINKS && idx >= 0; k++) {
            psess *s = &P.sess[k];
            if (s->used && !s->dead && (size_t)idx < s->nacc && s->acc[idx].state == S_READY &&
                s->acc[idx].acked >= modseq)
                have++;
        }
        if (have >= P.cfg->sync_k) {
            rc = 0;
            break;
        }
        if (P.degraded) {
            rc = policy(why, whylen);
            break;
        }
        int64_t now = repl_now_ms();
        if (now >= deadline || P.stopping) {
            P.degraded = 1;
            P.degraded_since = repl_wall_ms();
            P.sync_timeouts++;
            snprintf(P.degraded_why, sizeof(P.degraded_why), "account %s modseq %llu had %u of "
                     "%u replica acks after %d ms", account, (unsigned long long)modseq, have,
                     P.cfg->sync_k, P.cfg->sync_timeout_ms);
            log_error("repl: sync_degraded alarm=1 policy=%s reason=\"%s\"",
                      P.cfg->sync_refuse ? "refuse" : "async", P.degraded_why);
            rc = policy(why, whylen);
            break;
        }
        int64_t wait = deadline - now;
        if (wait > 200)
            wait = 200;
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_nsec += (long)wait * 1000000;
        while (dl.tv_nsec >= 1000000000) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&me.cv, &P.mu, &dl);
        if (idx < 0) {
            repl_scan_accounts(P.cfg->data_dir, scan_cb, NULL);
            me.idx = idx = find_acct(account);
            if (idx >= 0)
                mark_changed((size_t)idx);
        }
    }
    for (sync_waiter **pp = &P.waiters; *pp; pp = &(*pp)->next)
        if (*pp == &me) {
            *pp = me.next;
            break;
        }
    pthread_mutex_unlock(&P.mu);
    pthread_cond_destroy(&me.cv);
    return rc;
}

/* ---- status ---- */

static uint64_t lat_pct(const psess *s, double q)
{
    if (!s->lat_n)
        return 0;
    uint64_t want = (uint64_t)((double)s->lat_n * q), seen = 0;
    for (int i = 0; i <= LAT_BUCKETS; i++) {
        seen += s->lat[i];
        if (seen > want)
            return (uint64_t)i;
    }
    return LAT_BUCKETS;
}

void repl_primary_status(buf *o)
{
    pthread_mutex_lock(&P.mu);
    int64_t now = repl_wall_ms();
    int links = 0;
    buf_printf(o, "role: primary\nstore: %s\nepoch: %llu\naccounts: %zu\n", P.cfg->store_name,
               (unsigned long long)P.cfg->epoch, P.n);
    if (P.cfg->sync)
        buf_printf(o, "mode: sync replicas=%u timeout_ms=%d on_timeout=%s state=%s waits=%llu "
                   "timeouts=%llu%s%s%s\n", P.cfg->sync_k, P.cfg->sync_timeout_ms,
                   P.cfg->sync_refuse ? "refuse" : "async",
                   P.degraded ? (P.cfg->sync_refuse ? "refusing" : "degraded-async") : "sync",
                   (unsigned long long)P.sync_waits, (unsigned long long)P.sync_timeouts,
                   P.degraded ? " alarm=\"" : "", P.degraded ? P.degraded_why : "",
                   P.degraded ? "\"" : "");
    else
        buf_printf(o, "mode: async\n");
    for (int k = 0; k < MAX_LINKS; k++) {
        psess *s = &P.sess[k];
        if (!s->used)
            continue;
        links++;
        repl_link_stats st;
        repl_link_get_stats(s->link, &st);
        size_t synced = 0, syncing = 0, diverged = 0, failed = 0;
        int64_t max_lag = 0;
        uint64_t behind = 0;
        for (size_t i = 0; i < s->nacc; i++) {
            sacct *sa = &s->acc[i];
            if (sa->state == S_READY && sa->acked >= sa->hi)
                synced++;
            else if (sa->state == S_DIVERGED)
                diverged++;
            else if (sa->state == S_FAILED)
                failed++;
            else
                syncing++;
            if (sa->hi > sa->acked)
                behind += sa->hi - sa->acked;
            if (sa->wn) {
                int64_t lag = now - sa->win[sa->whead].t_first;
                if (lag > max_lag)
                    max_lag = lag;
            }
        }
        buf_printf(o, "replica %s: link=%s peer=%s accounts=%zu in_sync=%zu syncing=%zu "
                   "diverged=%zu failed=%zu records_behind=%llu max_lag_ms=%lld "
                   "unacked_bytes=%llu bytes_out=%llu out_bps=%.0f bytes_in=%llu "
                   "ack_latency_ms_p50=%llu ack_latency_ms_p99=%llu acks=%llu\n",
                   s->peer_store, s->dead ? "down" : "up", s->peer, s->nacc, synced, syncing,
                   diverged, failed, (unsigned long long)behind, (long long)max_lag,
                   (unsigned long long)s->unacked, (unsigned long long)st.bytes_out,
                   st.rate_out, (unsigned long long)st.bytes_in,
                   (unsigned long long)lat_pct(s, 0.5), (unsigned long long)lat_pct(s, 0.99),
                   (unsigned long long)s->lat_n);
        for (size_t i = 0; i < s->nacc; i++) {
            sacct *sa = &s->acc[i];
            if (sa->state == S_READY && sa->acked >= sa->hi)
                continue;
            int64_t lag = sa->wn ? now - sa->win[sa->whead].t_first : 0;
            buf_printf(o, "  account %s: state=%s acked=%llu sent=%llu highest=%llu lag_ms=%lld%s%s%s\n",
                       P.accts[i]->name, sstate_names[sa->state],
                       (unsigned long long)sa->acked, (unsigned long long)sa->sent,
                       (unsigned long long)sa->hi, (long long)lag, sa->why[0] ? " reason=\"" : "",
                       sa->why, sa->why[0] ? "\"" : "");
        }
    }
    if (!links)
        buf_printf(o, "replicas: none connected\n");
    pthread_mutex_unlock(&P.mu);
}

/* ---- replcheck ---- */

/* Sends a request and waits for its answer. Under P.mu on entry and exit. */
static int ask(int slot, uint32_t gen, const buf *req, uint64_t cookie)
{
    psess *s = &P.sess[slot];
    while (s->gen == gen && !s->dead && !P.stopping && s->rq_busy)
        pthread_cond_wait(&P.rq_cv, &P.mu);
    if (s->gen != gen || s->dead || P.stopping)
        return -EPIPE;
    s->rq_busy = 1;
    s->rq_cookie = cookie;
    s->rq_done = 0;
    repl_link *l = s->link;
    pthread_mutex_unlock(&P.mu);
    int rc = repl_link_send(l, req, 10000);
    pthread_mutex_lock(&P.mu);
    int64_t until = repl_now_ms() + 60000;
    while (rc == 0 && !(s->gen == gen && s->rq_done)) {
        if (s->gen != gen || s->dead || P.stopping)
            rc = -EPIPE;
        else if (repl_now_ms() > until)
            rc = -ETIMEDOUT;
        else {
            struct timespec dl;
            clock_gettime(CLOCK_REALTIME, &dl);
            dl.tv_sec += 1;
            pthread_cond_timedwait(&P.rq_cv, &P.mu, &dl);
        }
    }
    if (s->gen == gen)
        s->rq_busy = 0;
    pthread_cond_broadcast(&P.rq_cv);
    return rc;
}

typedef struct crc_collect {
    uint32_t *crcs;
    uint32_t n, max;
    uint64_t first;
} crc_collect;

static int crc_cb(void *ctx, const store_record *r)
{
    crc_collect *c = ctx;
    if (c->n == 0)
        c->first = r->modseq;
    c->crcs[c->n++] = le32(r->raw + 4);
    return c->n >= c->max;
}

/* First modseq at which the two logs differ, 0 when they agree up to the
 * shorter one's end. Under P.mu on entry and exit. */
static int first_difference(int slot, uint32_t gen, pacct *pa, uint64_t mp, uint64_t mr,
                            uint64_t *out, hv_err *err)
{
    uint64_t upto = mp < mr ? mp : mr;
    crc_collect c = {.crcs = malloc(REPL_CRCS_MAX * sizeof(uint32_t)), .max = REPL_CRCS_MAX};
    buf req;
    buf_init(&req);
    int rc = 0;
    *out = 0;
    for (uint64_t from = 1; from <= upto && !*out;) {
        c.n = 0;
        pthread_mutex_unlock(&P.mu);
        pthread_mutex_lock(&pa->mu);
        rc = ensure_open(pa, err);
        if (rc == 0)
            rc = store_changes_since(pa->st, from - 1, crc_cb, &c, err);
        pthread_mutex_unlock(&pa->mu);
        pthread_mutex_lock(&P.mu);
        if (rc < 0)
            break;
        buf_reset(&req);
        uint64_t cookie = ++P.cookie;
        repl_build_crcs_req(&req, pa->name, cookie, from, REPL_CRCS_MAX);
        if ((rc = ask(slot, gen, &req, cookie)) < 0) {
            hv_err_set(err, rc, "replica did not answer CRCS_REQ");
            break;
        }
        psess *s = &P.sess[slot];
        uint32_t n = c.n < s->rq_n ? c.n : s->rq_n;
        if (c.n && c.first != from) {
            *out = from; /* the primary lacks records it should have */
            break;
        }
        for (uint32_t i = 0; i < n; i++)
            if (c.crcs[i] != s->rq_crcs[i]) {
                *out = from + i;
                break;
            }
        if (!n)
            break;
        from += n;
    }
    if (!*out && rc == 0 && mp != mr)
        *out = upto + 1;
    free(c.crcs);
    buf_free(&req);
    return rc;
}

static void hex32(const uint8_t *d, char *out) { hex_encode(d, 32, out); }

/* One account against one replica. Under P.mu on entry and exit.
 * Returns 1 differs, 0 same, <0 could not check. */
static int check_one(int slot, size_t idx, buf *o, hv_err *err)
{
    psess *s = &P.sess[slot];
    uint32_t gen = s->gen;
    pacct *pa = P.accts[idx];
    char store[REPL_STORE_NAME_MAX + 1];
    snprintf(store, sizeof(store), "%s", s->peer_store);
    uint64_t mp = 0, mr = 0, last_mp = UINT64_MAX;
    uint8_t dp[32], dr[32];
    int exists = 0, rc = 0, same = 0;
    buf req;
    buf_init(&req);
    for (int attempt = 0; attempt < 30; attempt++) {
        pthread_mutex_unlock(&P.mu);
        pthread_mutex_lock(&pa->mu);
        rc = ensure_open(pa, err);
        if (rc == 0) {
            mp = store_highest_modseq(pa->st);
            store_digest(pa->st, dp);
        }
        pthread_mutex_unlock(&pa->mu);
        pthread_mutex_lock(&P.mu);
        if (rc < 0)
            break;
        buf_reset(&req);
        uint64_t cookie = ++P.cookie;
        repl_build_digest_req(&req, pa->name, cookie);
        if ((rc = ask(slot, gen, &req, cookie)) < 0) {
            hv_err_set(err, rc, "replica %s did not answer for %s", store, pa->name);
            break;
        }
        mr = s->rq_modseq;
        exists = s->rq_exists;
        memcpy(dr, s->rq_digest, 32);
        if (mr == mp) {
            same = memcmp(dp, dr, 32) == 0;
            break;
        }
        sacct *sa = &s->acc[idx];
        if (sa->state == S_DIVERGED || sa->state == S_FAILED || sa->state == S_REJOIN ||
            (mr > mp && mp == last_mp))
            break;
        last_mp = mp;
        /* Behind: give the stream a moment to catch up, then look again. */
        int64_t until = repl_now_ms() + 2000;
        while (s->gen == gen && !s->dead && s->acc[idx].acked < mp && repl_now_ms() < until) {
            struct timespec dl;
            clock_gettime(CLOCK_REALTIME, &dl);
            dl.tv_nsec += 100 * 1000000;
            if (dl.tv_nsec >= 1000000000) {
                dl.tv_sec++;
                dl.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&P.acked_cv, &P.mu, &dl);
        }
        if (s->gen != gen || s->dead) {
            rc = hv_err_set(err, -EPIPE, "link to replica %s went down", store);
            break;
        }
    }
    buf_free(&req);
    if (rc < 0)
        return rc;
    if (same)
        return 0;
    uint64_t first = 0;
    hv_err e2 = {0};
    if (first_difference(slot, gen, pa, mp, mr, &first, &e2) < 0) {
        buf_printf(o, "differs %s replica=%s primary_modseq=%llu replica_modseq=%llu "
                   "first_modseq=unknown reason=\"%s\"\n", pa->name, store,
                   (unsigned long long)mp, (unsigned long long)mr, e2.msg);
        return 1;
    }
    char hp[65], hr[65];
    hex32(dp, hp);
    hex32(dr, hr);
    if (first)
        buf_printf(o, "differs %s replica=%s first_modseq=%llu primary_modseq=%llu "
                   "replica_modseq=%llu%s\n", pa->name, store, (unsigned long long)first,
                   (unsigned long long)mp, (unsigned long long)mr,
                   exists ? "" : " (account missing on the replica)");
    else
        buf_printf(o, "differs %s replica=%s first_modseq=none primary_modseq=%llu "
                   "replica_modseq=%llu reason=\"logs agree, states differ: primary digest %s, "
                   "replica %s\"\n", pa->name, store, (unsigned long long)mp,
                   (unsigned long long)mr, hp, hr);
    return 1;
}

int repl_primary_replcheck(const char *account, buf *o, hv_err *err)
{
    pthread_mutex_lock(&P.mu);
    repl_scan_accounts(P.cfg->data_dir, scan_cb, NULL);
    long only = -1;
    if (account) {
        only = find_acct(account);
        if (only < 0) {
            pthread_mutex_unlock(&P.mu);
            return hv_err_set(err, -ENOENT, "account %s has no store on this primary", account);
        }
    }
    int links = 0, differ = 0;
    size_t checked = 0;
    for (int k = 0; k < MAX_LINKS; k++) {
        psess *s = &P.sess[k];
        if (!s->used || s->dead)
            continue;
        links++;
        uint32_t gen = s->gen;
        for (size_t i = only >= 0 ? (size_t)only : 0; i < P.n; i++) {
            if (s->gen != gen || s->dead)
                break;
            int rc = check_one(k, i, o, err);
            if (rc < 0) {
                pthread_mutex_unlock(&P.mu);
                return rc;
            }
            differ += rc;
            checked++;
            if (only >= 0) {
                if (rc == 0)
                    buf_printf(o, "same %s replica=%s\n", P.accts[i]->name, s->peer_store);
                break;
            }
        }
    }
    pthread_mutex_unlock(&P.mu);
    if (!links)
        return hv_err_set(err, -ENOTCONN, "no replica is connected to this primary");
    buf_printf(o, "summary: replicas=%d checked=%zu differ=%d\n", links, checked, differ);
    return differ;
}

/* ---- metrics (the "metrics" command, for the http service) ---- */

/* Accounts not in sync listed one by one, per link: a replica that lost
 * everything must not turn one scrape into 100,000 lines. The link's
 * totals still count them all. */
#define METRICS_ACCOUNTS_MAX 500

/* The numbers of repl_primary_status as "KIND key=value ..." lines (no
 * value holds a space): node, sync, one link per replica, one account per
 * account not in sync. Lags are in ms. */
void repl_primary_metrics(buf *o)
{
    pthread_mutex_lock(&P.mu);
    int64_t now = repl_wall_ms();
    buf_printf(o, "node role=primary store=%s epoch=%llu accounts=%zu\n", P.cfg->store_name,
               (unsigned long long)P.cfg->epoch, P.n);
    if (P.cfg->sync)
        buf_printf(o, "sync mode=sync state=%s waits=%llu timeouts=%llu\n",
                   P.degraded ? (P.cfg->sync_refuse ? "refusing" : "degraded") : "sync",
                   (unsigned long long)P.sync_waits, (unsigned long long)P.sync_timeouts);
    else
        buf_printf(o, "sync mode=async\n");
    for (int k = 0; k < MAX_LINKS; k++) {
        psess *s = &P.sess[k];
        if (!s->used)
            continue;
        repl_link_stats st;
        repl_link_get_stats(s->link, &st);
        size_t synced = 0, diverged = 0, failed = 0;
        int64_t max_lag = 0;
        uint64_t behind = 0;
        for (size_t i = 0; i < s->nacc; i++) {
            sacct *sa = &s->acc[i];
            int64_t lag = sa->wn ? now - sa->win[sa->whead].t_first : 0;
            if (lag > max_lag)
                max_lag = lag;
            if (sa->hi > sa->acked)
                behind += sa->hi - sa->acked;
            synced += sa->state == S_READY && sa->acked >= sa->hi;
            diverged += sa->state == S_DIVERGED;
            failed += sa->state == S_FAILED;
        }
        size_t lagging = s->nacc - synced;
        buf_printf(o, "link replica=%s up=%d accounts=%zu in_sync=%zu syncing=%zu diverged=%zu "
                   "failed=%zu records_behind=%llu max_lag_ms=%lld unacked_bytes=%llu "
                   "bytes_sent=%llu bytes_received=%llu send_bps=%.0f ack_p50_ms=%llu "
                   "ack_p99_ms=%llu acks=%llu accounts_not_listed=%zu\n",
                   s->peer_store, !s->dead, s->nacc, synced, lagging - diverged - failed,
                   diverged, failed, (unsigned long long)behind, (long long)max_lag,
                   (unsigned long long)s->unacked, (unsigned long long)st.bytes_out,
                   (unsigned long long)st.bytes_in, st.rate_out,
                   (unsigned long long)lat_pct(s, 0.5), (unsigned long long)lat_pct(s, 0.99),
                   (unsigned long long)s->lat_n,
                   lagging > METRICS_ACCOUNTS_MAX ? lagging - METRICS_ACCOUNTS_MAX : 0);
        size_t listed = 0;
        for (size_t i = 0; i < s->nacc && listed < METRICS_ACCOUNTS_MAX; i++) {
            sacct *sa = &s->acc[i];
            if (sa->state == S_READY && sa->acked >= sa->hi)
                continue;
            int64_t lag = sa->wn ? now - sa->win[sa->whead].t_first : 0;
            buf_printf(o, "account replica=%s account=%s state=%s records_behind=%llu "
                       "lag_ms=%lld\n", s->peer_store, P.accts[i]->name, sstate_names[sa->state],
                       (unsigned long long)(sa->hi > sa->acked ? sa->hi - sa->acked : 0),
                       (long long)(lag > 0 ? lag : 0));
            listed++;
        }
    }
    pthread_mutex_unlock(&P.mu);
}
