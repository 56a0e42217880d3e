/*
 * repl_move.c - online account moves over the replication protocol
 * (docs/move.md).
 *
 * Two sides, one per file half:
 *   - the mover (`haven move`, on the node of the account's current store)
 *     reads the account's log with store_changes_since, like a primary,
 *     and streams it to the target store's repl service in rounds; then it
 *     freezes the account (directory state "moving", the account's fence
 *     here), ships the last delta, checks digests, has the target commit
 *     and flips the directory;
 *   - the target (the repl service of the destination store, which
 *     accepts a link whose HELLO says "mover") applies what arrives with
 *     store_apply_frames, as a replica does, and acks what is durable.
 * The target's copy is byte-identical to the source's log (same frames,
 * same modseqs), so a move that is run again, or that finds an older copy
 * on the target (a restored backup), sends only what the target lacks.
 *
 * SECURITY: the target trusts only authenticated movers (the shared repl
 * secret) and refuses an account the directory says lives on the target
 * and is active there: a stray mover cannot overwrite a live account.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dir/dir.h"
#include "lib/fsutil.h"
#include "lib/log.h"
#include "repl/repl.h"
#include "repl/repl_internal.h"
#include "store/store_internal.h"

/* A FRAMES message carries at most this much; the target applies each
 * with one fdatasync. */
#define MOVE_BATCH (4u << 20)
/* Unacknowledged bytes in flight from a mover. */
#define MOVE_WINDOW (32u << 20)
/* The target drops a mover that queues more than this. */
#define MOVE_PENDING_MAX (MOVE_WINDOW + (8u << 20))
#define MOVE_MAX_ROUNDS 20

/* ================= target side ================= */

typedef struct titem {
    struct titem *next;
    uint8_t type;
    uint64_t a, b;
    uint8_t id[32];
    char account[REPL_ACCOUNT_MAX + 1];
    size_t len;
    uint8_t data[];
} titem;

typedef struct tmove {
    repl_cfg *cfg;
    repl_link *link;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    titem *head, *tail;
    size_t pending;
    int dead;
    /* the account being received (one per link, set by ACCOUNT) */
    char account[REPL_ACCOUNT_MAX + 1];
    char dir[4400];
    store_account *st;
    uint64_t expect;
    buf blob;
    uint8_t blob_id[32];
    uint64_t blob_size;
    int blob_active, blobs_unsynced;
    buf msg;
    uint64_t records, bytes;
} tmove;

static void t_on_msg(void *ctx, repl_link *l, const repl_msg *m)
{
    tmove *t = ctx;
    switch (m->type) {
    case REPL_ACCOUNT:
    case REPL_BLOB:
    case REPL_FRAMES:
    case REPL_DIGEST_REQ:
    case REPL_MOVE_RESET:
    case REPL_MOVE_COMMIT:
        break;
    case REPL_ERROR:
        log_warn("move: mover_error peer=%s account=%.*s reason=\"%.*s\"",
                 repl_link_peer_addr(l), (int)m->account_len, m->account, (int)m->text_len,
                 m->text);
        return;
    default:
        repl_link_shutdown(l, "mover sent a message a mover does not send");
        return;
    }
    titem *it = malloc(sizeof(*it) + m->data_len);
    if (!it)
        abort();
    it->next = NULL;
    it->type = (uint8_t)m->type;
    it->a = m->a;
    it->b = m->b;
    if (m->bytes32)
        memcpy(it->id, m->bytes32, 32);
    repl_msg_account(m, it->account);
    it->len = m->data_len;
    if (m->data_len)
        memcpy(it->data, m->data, m->data_len);
    pthread_mutex_lock(&t->mu);
    if (t->pending + m->data_len > MOVE_PENDING_MAX) {
        pthread_mutex_unlock(&t->mu);
        free(it);
        repl_link_shutdown(l, "mover sent more than its window allows");
        return;
    }
    t->pending += m->data_len;
    if (t->tail)
        t->tail->next = it;
    else
        t->head = it;
    t->tail = it;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

static void t_on_closed(void *ctx, repl_link *l, const char *reason)
{
    tmove *t = ctx;
    (void)l;
    pthread_mutex_lock(&t->mu);
    t->dead = 1;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    if (t->account[0])
        log_info("move: link_down account=%s records=%llu bytes=%llu reason=\"%s\"", t->account,
                 (unsigned long long)t->records, (unsigned long long)t->bytes, reason);
}

static void t_send(tmove *t)
{
    repl_link_send(t->link, &t->msg, 0);
    buf_reset(&t->msg);
}

static void t_close_account(tmove *t)
{
    if (t->st)
        store_close(t->st);
    t->st = NULL;
    t->blob_active = 0;
    buf_free(&t->blob);
}

/* Refuses to receive an account the directory says lives here and is
 * served here: its log here is the truth, not a copy. */
static int t_check_directory(tmove *t, const char *account, hv_err *err)
{
    dir *d;
    int rc = dir_open_conf(t->cfg->c, &d, err);
    if (rc < 0)
        return rc;
    dir_account a;
    rc = dir_account_get(d, account, &a, err);
    dir_close(d);
    if (rc < 0)
        return rc;
    if (strcmp(a.store, t->cfg->store_name) == 0 && a.state == DIR_STATE_ACTIVE)
        return hv_err_set(err, -EEXIST, "account %s lives on this store (%s) already; a move "
                          "here would overwrite it", account, t->cfg->store_name);
    return 0;
}

static int t_open(tmove *t, hv_err *err)
{
    int rc = store_account_dir(t->cfg->data_dir, t->account, t->dir, sizeof(t->dir), err);
    if (rc == 0)
        rc = store_open(t->dir, t->account, STORE_OPEN_CREATE, &t->cfg->sopt, &t->st, err);
    return rc;
}

static int t_position(tmove *t, hv_err *err)
{
    uint64_t hi = store_highest_modseq(t->st);
    uint32_t crc = 0;
    int rc = repl_record_crc(t->st, hi, &crc, err);
    if (rc < 0)
        return rc;
    t->expect = hi + 1;
    repl_build_position(&t->msg, t->account, hi, crc);
    t_send(t);
    return 0;
}

/* The copy here is not a prefix of the mover's log (it was written to on
 * its own, or comes from elsewhere): keep it aside, start empty. */
static int t_reset(tmove *t, hv_err *err)
{
    t_close_account(t);
    char aside[4700], base[4300];
    snprintf(base, sizeof(base), "%s/diverged", t->cfg->data_dir);
    int rc = fs_mkdir_p(base, 0700, err);
    if (rc < 0)
        return rc;
    snprintf(aside, sizeof(aside), "%s/%s.move-%lld", base, t->account, (long long)time(NULL));
    if (rename(t->dir, aside) < 0 && errno != ENOENT)
        return hv_err_sys(err, "set aside %s", t->dir);
    if ((rc = fs_fsync_dir(base, err)) < 0)
        return rc;
    log_warn("move: target_copy_set_aside account=%s kept=\"%s\" reason=\"not a prefix of the "
             "source's log\"", t->account, aside);
    if ((rc = t_open(t, err)) < 0)
        return rc;
    return t_position(t, err);
}

static int t_sync_blobs(tmove *t, hv_err *err)
{
    if (!t->blobs_unsynced)
        return 0;
    int fd = open(t->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return hv_err_sys(err, "open %s", t->dir);
    int rc = syncfs(fd) < 0 ? hv_err_sys(err, "syncfs %s", t->dir) : 0;
    close(fd);
    if (rc == 0)
        t->blobs_unsynced = 0;
    return rc;
}

static int t_item(tmove *t, const titem *it, hv_err *err)
{
    int rc;
    if (it->type != REPL_ACCOUNT && (!t->st || strcmp(it->account, t->account) != 0))
        return hv_err_set(err, -EPROTO, "%s for account %s before its ACCOUNT",
                          repl_msg_type_name(it->type), it->account);
    switch (it->type) {
    case REPL_ACCOUNT:
        t_close_account(t);
        snprintf(t->account, sizeof(t->account), "%s", it->account);
        if ((rc = t_check_directory(t, t->account, err)) < 0 || (rc = t_open(t, err)) < 0)
            return rc;
        log_info("move: receiving account=%s from=%s source_modseq=%llu here_modseq=%llu",
                 t->account, repl_link_peer_store(t->link), (unsigned long long)it->a,
                 (unsigned long long)store_highest_modseq(t->st));
        return t_position(t, err);
    case REPL_MOVE_RESET:
        if ((rc = t_check_directory(t, t->account, err)) < 0)
            return rc;
        return t_reset(t, err);
    case REPL_BLOB:
        if (it->b == 0 && it->len == it->a) {
            /* The whole blob in one chunk (most messages): no reassembly. */
            store_blob_id got;
            if ((rc = blob_write(t->dir, it->data, it->len, &got, 0, err)) < 0)
                return rc;
            if (memcmp(got.b, it->id, 32) != 0)
                return hv_err_set(err, -EBADMSG, "account %s: received blob does not match its "
                                  "id", t->account);
            t->bytes += it->len;
            t->blobs_unsynced = 1;
            t->blob_active = 0;
            return 0;
        }
        if (it->b == 0) {
            buf_reset(&t->blob);
            memcpy(t->blob_id, it->id, 32);
            t->blob_size = it->a;
            t->blob_active = 1;
            buf_reserve(&t->blob, (size_t)it->a);
        } else if (!t->blob_active || memcmp(t->blob_id, it->id, 32) != 0 ||
                   it->b != t->blob.len || it->a != t->blob_size) {
            return hv_err_set(err, -EPROTO, "account %s: blob chunk out of order", t->account);
        }
        buf_append(&t->blob, it->data, it->len);
        if (t->blob.len == t->blob_size) {
            store_blob_id got;
            /* Synced once before the frames naming it (t_sync_blobs). */
            if ((rc = blob_write(t->dir, t->blob.data, t->blob.len, &got, 0, err)) < 0)
                return rc;
            if (memcmp(got.b, t->blob_id, 32) != 0)
                return hv_err_set(err, -EBADMSG, "account %s: received blob does not match its "
                                  "id", t->account);
            t->bytes += t->blob.len;
            t->blobs_unsynced = 1;
            t->blob_active = 0;
            buf_free(&t->blob);
        }
        return 0;
    case REPL_FRAMES:
        if (it->a != t->expect)
            return hv_err_set(err, -ESPIPE, "account %s: frames from modseq %llu, expected %llu",
                              t->account, (unsigned long long)it->a,
                              (unsigned long long)t->expect);
        if ((rc = t_sync_blobs(t, err)) < 0 ||
            (rc = store_apply_frames(t->st, it->data, it->len, err)) < 0)
            return rc;
        t->records += it->b - it->a + 1;
        t->bytes += it->len;
        t->expect = it->b + 1;
        repl_build_ack(&t->msg, t->account, store_highest_modseq(t->st));
        t_send(t);
        return 0;
    case REPL_DIGEST_REQ: {
        if ((rc = store_refresh(t->st, err)) < 0)
            return rc;
        uint8_t d[32];
        store_digest(t->st, d);
        repl_build_digest(&t->msg, t->account, it->a, store_highest_modseq(t->st), 1, d);
        t_send(t);
        return 0;
    }
    case REPL_MOVE_COMMIT:
        if ((rc = store_refresh(t->st, err)) < 0)
            return rc;
        if (store_highest_modseq(t->st) != it->a)
            return hv_err_set(err, -ESPIPE, "account %s: commit at modseq %llu but this copy "
                              "ends at %llu", t->account, (unsigned long long)it->a,
                              (unsigned long long)store_highest_modseq(t->st));
        /* A fence left by an earlier move away from this store goes: the
         * account is about to live here again. */
        if ((rc = store_account_unfence(t->st, err)) < 0)
            return rc;
        log_info("move: target_committed account=%s from=%s modseq=%llu records=%llu bytes=%llu",
                 t->account, repl_link_peer_store(t->link), (unsigned long long)it->a,
                 (unsigned long long)t->records, (unsigned long long)t->bytes);
        repl_build_move(&t->msg, REPL_MOVE_DONE, t->account, it->a);
        t_send(t);
        return 0;
    }
    return 0;
}

static void *t_main(void *arg)
{
    tmove *t = arg;
    for (;;) {
        pthread_mutex_lock(&t->mu);
        while (!t->head && !t->dead)
            pthread_cond_wait(&t->cv, &t->mu);
        titem *it = t->head;
        if (it) {
            t->head = it->next;
            if (!t->head)
                t->tail = NULL;
            t->pending -= it->len;
        }
        pthread_mutex_unlock(&t->mu);
        if (!it)
            break;
        hv_err err = {0};
        if (t_item(t, it, &err) < 0) {
            log_error("move: target_failed account=%s reason=\"%s\"", it->account, err.msg);
            repl_build_error(&t->msg, it->account, err.code ? err.code : -EIO, err.msg);
            t_send(t);
            /* Let the ERROR go out before the link ends. */
            usleep(100000);
            repl_link_shutdown(t->link, "move failed on the target");
            free(it);
            pthread_mutex_lock(&t->mu);
            while (!t->dead)
                pthread_cond_wait(&t->cv, &t->mu);
            pthread_mutex_unlock(&t->mu);
            continue;
        }
        free(it);
    }
    repl_link_free(t->link);
    t_close_account(t);
    buf_free(&t->msg);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
    free(t);
    return NULL;
}

void repl_move_target_start(repl_cfg *cfg, repl_link *l)
{
    tmove *t = calloc(1, sizeof(*t));
    if (!t)
        abort();
    t->cfg = cfg;
    t->link = l;
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    buf_init(&t->blob);
    buf_init(&t->msg);
    log_info("move: mover_connected peer=%s from=%s", repl_link_peer_addr(l),
             repl_link_peer_store(l));
    repl_link_start(l, t_on_msg, t_on_closed, t);
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&th, &at, t_main, t) != 0) {
        repl_link_shutdown(l, "cannot start a thread for the move");
        log_error("move: cannot start a thread peer=%s", repl_link_peer_addr(l));
    }
    pthread_attr_destroy(&at);
}

/* ================= mover side ================= */

typedef struct mark {
    uint64_t modseq, cum;
} mark;

typedef struct mover {
    const conf *c;
    repl_cfg cfg;
    const char *account;
    const char *to;
    char from[DIR_STORE_NAME_MAX + 1];
    char state_path[4400];
    int verbose;
    repl_link *link;
    store_account *st;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int closed;
    char closed_why[300];
    int have_err;
    char err[480];
    int have_pos;
    uint64_t pos;
    uint32_t pos_crc;
    uint64_t acked;
    int have_digest;
    uint64_t dg_cookie, dg_modseq;
    uint8_t dg[32];
    int have_done;
    uint64_t done_modseq;
    /* window bookkeeping: bytes sent, per FRAMES message */
    uint64_t cum, acked_cum;
    uint64_t done_before; /* acknowledged bytes of earlier positions (m_position resets cum) */
    mark *marks;
    size_t nmarks, capmarks;
    /* progress */
    uint64_t bytes_total, bytes_sent, records_sent;
    int64_t started, last_state_write;
    const char *phase;
    int rounds;
} mover;

static int64_t now_ms(void) { return repl_now_ms(); }

static uint64_t m_unacked_locked(mover *m);

static void m_state_write(mover *m, const char *phase, const char *reason)
{
    m->phase = phase;
    /* Done means durable on the target: bytes of the batches it acked
     * before this round, plus this round's acknowledged part. */
    pthread_mutex_lock(&m->mu);
    (void)m_unacked_locked(m);
    uint64_t done = m->done_before + m->acked_cum;
    pthread_mutex_unlock(&m->mu);
    if (!strcmp(phase, "done"))
        done = m->bytes_sent;
    char text[1200];
    int n = snprintf(text, sizeof(text),
                     "account=%s\nfrom=%s\nto=%s\nphase=%s\nbytes_total=%llu\nbytes_done=%llu\n"
                     "bytes_sent=%llu\nrecords_done=%llu\nrounds=%d\nstarted=%lld\nupdated=%lld\n"
                     "reason=%s\n",
                     m->account, m->from, m->to, phase, (unsigned long long)m->bytes_total,
                     (unsigned long long)done, (unsigned long long)m->bytes_sent,
                     (unsigned long long)m->records_sent,
                     m->rounds, (long long)m->started, (long long)time(NULL),
                     reason ? reason : "");
    hv_err err = {0};
    if (fs_write_file_atomic(m->state_path, text, (size_t)n, 0644, &err) < 0)
        log_warn("move: cannot write progress account=%s reason=\"%s\"", m->account, err.msg);
    m->last_state_write = now_ms();
    if (m->verbose)
        fprintf(stderr, "move %s: %s %llu/%llu bytes, %llu records, round %d\n", m->account,
                phase, (unsigned long long)m->bytes_sent, (unsigned long long)m->bytes_total,
                (unsigned long long)m->records_sent, m->rounds);
}

static void m_on_msg(void *ctx, repl_link *l, const repl_msg *mm)
{
    mover *m = ctx;
    char name[REPL_ACCOUNT_MAX + 1] = "";
    if (mm->account_len)
        repl_msg_account(mm, name);
    if (mm->account_len && strcmp(name, m->account) != 0) {
        repl_link_shutdown(l, "target answered about another account");
        return;
    }
    pthread_mutex_lock(&m->mu);
    switch (mm->type) {
    case REPL_POSITION:
        m->have_pos = 1;
        m->pos = mm->a;
        m->pos_crc = mm->u32;
        m->acked = mm->a;
        break;
    case REPL_ACK:
        if (mm->a > m->acked)
            m->acked = mm->a;
        break;
    case REPL_DIGEST:
        m->have_digest = 1;
        m->dg_cookie = mm->a;
        m->dg_modseq = mm->b;
        memcpy(m->dg, mm->bytes32, 32);
        break;
    case REPL_MOVE_DONE:
        m->have_done = 1;
        m->done_modseq = mm->a;
        break;
    case REPL_ERROR:
        m->have_err = 1;
        snprintf(m->err, sizeof(m->err), "target: %.*s", (int)mm->text_len, mm->text);
        break;
    default:
        pthread_mutex_unlock(&m->mu);
        repl_link_shutdown(l, "target sent a message a target does not send");
        return;
    }
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
}

static void m_on_closed(void *ctx, repl_link *l, const char *reason)
{
    mover *m = ctx;
    (void)l;
    pthread_mutex_lock(&m->mu);
    m->closed = 1;
    snprintf(m->closed_why, sizeof(m->closed_why), "%s", reason);
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
}

/* Waits (mutex held) until pred or the link fails; no overall timeout: a
 * dead peer ends the link (REPL_LINK_DEAD_MS), a slow one just takes
 * longer. */
static int m_wait_locked(mover *m, hv_err *err)
{
    if (m->have_err)
        return hv_err_set(err, -EIO, "%s", m->err);
    if (m->closed)
        return hv_err_set(err, -EPIPE, "link to the target ended: %s", m->closed_why);
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 1;
    pthread_cond_timedwait(&m->cv, &m->mu, &dl);
    return 0;
}

static int m_send(mover *m, const buf *b, hv_err *err)
{
    int rc = repl_link_send(m->link, b, -1);
    if (rc < 0) {
        pthread_mutex_lock(&m->mu);
        rc = m_wait_locked(m, err);
        pthread_mutex_unlock(&m->mu);
        return rc < 0 ? rc : hv_err_set(err, -EPIPE, "link to the target ended");
    }
    return 0;
}

/* Bytes sent and not yet acknowledged: everything after the last FRAMES
 * message the target has acked (blobs count with the frames after them). */
static uint64_t m_unacked_locked(mover *m)
{
    size_t k = 0;
    while (k < m->nmarks && m->marks[k].modseq <= m->acked)
        m->acked_cum = m->marks[k++].cum;
    if (k) {
        memmove(m->marks, m->marks + k, (m->nmarks - k) * sizeof(mark));
        m->nmarks -= k;
    }
    return m->cum - m->acked_cum;
}

static int m_window(mover *m, uint64_t more, hv_err *err)
{
    pthread_mutex_lock(&m->mu);
    int rc = 0;
    uint64_t u;
    while (rc == 0 && (u = m_unacked_locked(m)) > 0 && u + more > MOVE_WINDOW)
        rc = m_wait_locked(m, err);
    pthread_mutex_unlock(&m->mu);
    return rc;
}

typedef struct mstream {
    mover *m;
    uint64_t hi;
    buf batch, msg;
    uint64_t first, last;
    uint64_t blob_bytes; /* blob bytes sent since the last FRAMES */
    int rc;
    hv_err *err;
} mstream;

static int ms_flush(mstream *x)
{
    if (!x->batch.len)
        return 0;
    mover *m = x->m;
    int rc = m_window(m, x->batch.len, x->err);
    if (rc < 0)
        return rc;
    buf_reset(&x->msg);
    repl_build_frames(&x->msg, m->account, x->first, x->last, x->batch.data, x->batch.len);
    if ((rc = m_send(m, &x->msg, x->err)) < 0)
        return rc;
    pthread_mutex_lock(&m->mu);
    m->cum += x->batch.len;
    if (m->nmarks == m->capmarks) {
        m->capmarks = m->capmarks ? m->capmarks * 2 : 64;
        m->marks = realloc(m->marks, m->capmarks * sizeof(mark));
    }
    m->marks[m->nmarks++] = (mark){.modseq = x->last, .cum = m->cum};
    pthread_mutex_unlock(&m->mu);
    m->bytes_sent += x->batch.len;
    m->records_sent += x->last - x->first + 1;
    buf_reset(&x->batch);
    x->first = x->last = 0;
    x->blob_bytes = 0;
    if (now_ms() - m->last_state_write >= 1000)
        m_state_write(m, m->phase, NULL);
    return 0;
}

static int ms_blob(mstream *x, const store_record *r)
{
    mover *m = x->m;
    int fd;
    uint64_t size;
    int rc = store_blob_open(m->st, &r->blob, &fd, &size, x->err);
    if (rc < 0)
        return rc;
    if (size != r->size) {
        close(fd);
        return hv_err_set(x->err, -EUCLEAN, "account %s: blob of modseq %llu has %llu bytes, its "
                          "record says %llu", m->account, (unsigned long long)r->modseq,
                          (unsigned long long)size, (unsigned long long)r->size);
    }
    uint8_t *chunk = malloc(REPL_BLOB_CHUNK);
    uint64_t off = 0;
    do {
        size_t n = size - off > REPL_BLOB_CHUNK ? REPL_BLOB_CHUNK : (size_t)(size - off);
        if ((rc = m_window(m, n, x->err)) < 0)
            break;
        ssize_t got = n ? pread(fd, chunk, n, (off_t)off) : 0;
        if (got != (ssize_t)n) {
            rc = hv_err_set(x->err, -EIO, "account %s: short read of a blob", m->account);
            break;
        }
        buf_reset(&x->msg);
        repl_build_blob(&x->msg, m->account, r->blob.b, size, off, chunk, n);
        if ((rc = m_send(m, &x->msg, x->err)) < 0)
            break;
        pthread_mutex_lock(&m->mu);
        m->cum += n;
        pthread_mutex_unlock(&m->mu);
        m->bytes_sent += n;
        off += n;
        if (now_ms() - m->last_state_write >= 1000)
            m_state_write(m, m->phase, NULL);
    } while (off < size);
    free(chunk);
    close(fd);
    return rc;
}

static int ms_cb(void *ctx, const store_record *r)
{
    mstream *x = ctx;
    if (r->modseq > x->hi)
        return 1;
    if (x->batch.len && x->batch.len + r->raw_len > MOVE_BATCH && (x->rc = ms_flush(x)) < 0)
        return 1;
    if (r->type == STORE_REC_APPEND && !r->body) {
        /* The blob goes before the frame that names it, which waits in
         * the batch: the target applies a batch with one sync however many
         * blobs came before it (a flush per blob made a 100 KiB-message
         * account move at an eighth of the disk's speed). */
        if ((x->rc = ms_blob(x, r)) < 0)
            return 1;
        /* Blobs are acknowledged with the frames after them: flush before
         * the window fills with blobs whose frames still wait here. */
        x->blob_bytes += r->size;
        if (x->blob_bytes >= MOVE_WINDOW / 4 && (x->rc = ms_flush(x)) < 0)
            return 1;
    }
    if (!x->batch.len)
        x->first = r->modseq;
    buf_append(&x->batch, r->raw, r->raw_len);
    x->last = r->modseq;
    return 0;
}

/* Sends everything after `from` up to the log's end now; returns the last
 * modseq sent through *hi_out. */
static int m_stream(mover *m, uint64_t from, uint64_t *hi_out, hv_err *err)
{
    int rc = store_refresh(m->st, err);
    if (rc < 0)
        return rc;
    uint64_t hi = store_highest_modseq(m->st);
    *hi_out = hi;
    if (hi <= from)
        return 0;
    mstream x = {.m = m, .hi = hi, .err = err};
    buf_init(&x.batch);
    buf_init(&x.msg);
    rc = store_changes_since(m->st, from, ms_cb, &x, err);
    if (rc >= 0 && x.rc == 0)
        rc = ms_flush(&x);
    else if (x.rc < 0)
        rc = x.rc;
    buf_free(&x.batch);
    buf_free(&x.msg);
    return rc < 0 ? rc : 0;
}

static int m_wait_acked(mover *m, uint64_t modseq, hv_err *err)
{
    pthread_mutex_lock(&m->mu);
    int rc = 0;
    while (rc == 0 && m->acked < modseq)
        rc = m_wait_locked(m, err);
    pthread_mutex_unlock(&m->mu);
    return rc;
}

/* ACCOUNT, then POSITION; a target copy that is not a prefix of ours is
 * set aside there (MOVE_RESET). Returns the target's position. */
static int m_position(mover *m, uint64_t *pos_out, hv_err *err)
{
    buf b;
    buf_init(&b);
    for (int attempt = 0; attempt < 2; attempt++) {
        pthread_mutex_lock(&m->mu);
        m->have_pos = 0;
        pthread_mutex_unlock(&m->mu);
        buf_reset(&b);
        if (attempt == 0)
            repl_build_account(&b, m->account, store_highest_modseq(m->st));
        else
            repl_build_move(&b, REPL_MOVE_RESET, m->account, 0);
        int rc = m_send(m, &b, err);
        pthread_mutex_lock(&m->mu);
        while (rc == 0 && !m->have_pos)
            rc = m_wait_locked(m, err);
        uint64_t pos = m->pos;
        uint32_t crc = m->pos_crc;
        pthread_mutex_unlock(&m->mu);
        if (rc < 0) {
            buf_free(&b);
            return rc;
        }
        uint32_t mine = 0;
        hv_err e2 = {0};
        int ok = pos <= store_highest_modseq(m->st) &&
                 repl_record_crc(m->st, pos, &mine, &e2) == 0 && mine == crc;
        if (ok) {
            buf_free(&b);
            pthread_mutex_lock(&m->mu);
            m->acked = pos;
            m->cum = m->acked_cum = 0;
            m->nmarks = 0;
            pthread_mutex_unlock(&m->mu);
            *pos_out = pos;
            if (pos)
                log_info("move: target_has account=%s to=%s modseq=%llu action=\"sending only "
                         "the rest\"", m->account, m->to, (unsigned long long)pos);
            return 0;
        }
        log_warn("move: target_copy_differs account=%s to=%s target_modseq=%llu "
                 "action=\"target sets its copy aside\"", m->account, m->to,
                 (unsigned long long)pos);
    }
    buf_free(&b);
    return hv_err_set(err, -EPROTO, "the target's copy of %s still differs after a reset",
                      m->account);
}

static int m_digest_check(mover *m, uint64_t head, hv_err *err)
{
    buf b;
    buf_init(&b);
    uint64_t cookie = (uint64_t)now_ms();
    pthread_mutex_lock(&m->mu);
    m->have_digest = 0;
    pthread_mutex_unlock(&m->mu);
    repl_build_digest_req(&b, m->account, cookie);
    int rc = m_send(m, &b, err);
    buf_free(&b);
    pthread_mutex_lock(&m->mu);
    while (rc == 0 && !(m->have_digest && m->dg_cookie == cookie))
        rc = m_wait_locked(m, err);
    uint64_t theirs = m->dg_modseq;
    uint8_t dg[32];
    memcpy(dg, m->dg, 32);
    pthread_mutex_unlock(&m->mu);
    if (rc < 0)
        return rc;
    uint8_t mine[32];
    store_digest(m->st, mine);
    if (theirs != head || memcmp(dg, mine, 32) != 0)
        return hv_err_set(err, -EUCLEAN, "digests differ after the last delta (source modseq "
                          "%llu, target modseq %llu)", (unsigned long long)head,
                          (unsigned long long)theirs);
    return 0;
}

static int m_commit_target(mover *m, uint64_t head, hv_err *err)
{
    buf b;
    buf_init(&b);
    repl_build_move(&b, REPL_MOVE_COMMIT, m->account, head);
    int rc = m_send(m, &b, err);
    buf_free(&b);
    pthread_mutex_lock(&m->mu);
    while (rc == 0 && !(m->have_done && m->done_modseq == head))
        rc = m_wait_locked(m, err);
    pthread_mutex_unlock(&m->mu);
    return rc;
}

static int m_connect(mover *m, const char *address, hv_err *err)
{
    const char *colon = strrchr(address, ':');
    if (!colon || colon == address || !colon[1] ||
        (size_t)(colon - address) >= sizeof(m->cfg.primary_host))
        return hv_err_set(err, -EINVAL, "store %s: repl address '%s' is not HOST:PORT", m->to,
                          address);
    const char *h = address;
    size_t hl = (size_t)(colon - address);
    if (h[0] == '[' && hl > 2 && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    memcpy(m->cfg.primary_host, h, hl);
    m->cfg.primary_host[hl] = 0;
    snprintf(m->cfg.primary_port, sizeof(m->cfg.primary_port), "%s", colon + 1);
    int fd;
    int rc = repl_dial(&m->cfg, &fd, err);
    if (rc < 0)
        return rc;
    repl_link_opts o;
    repl_link_options(&m->cfg, 0, &o);
    o.role = REPL_ROLE_MOVER;
    o.rate_bytes_per_s = m->cfg.rate;
    if ((rc = repl_link_handshake(fd, &o, &m->link, err)) < 0)
        return rc;
    if (strcmp(repl_link_peer_store(m->link), m->to) != 0) {
        hv_err_set(err, -EINVAL, "%s answers as store %s, not %s (check `haven store address "
                   "%s --repl`)", address, repl_link_peer_store(m->link), m->to, m->to);
        repl_link_free(m->link);
        m->link = NULL;
        return err->code;
    }
    repl_link_start(m->link, m_on_msg, m_on_closed, m);
    return 0;
}

static __thread uint64_t move_du;

static int account_bytes_cb(const char *path, const struct stat *sb, int flag, struct FTW *f)
{
    (void)path;
    (void)f;
    if (flag == FTW_F)
        move_du += (uint64_t)sb->st_size;
    return 0;
}

uint64_t repl_move_account_bytes(const conf *c, const char *account)
{
    char data[4096], adir[4400];
    hv_err err = {0};
    conf_path(c, "data_dir", data, sizeof(data));
    if (store_account_dir(data, account, adir, sizeof(adir), &err) < 0)
        return 0;
    move_du = 0;
    nftw(adir, account_bytes_cb, 16, FTW_PHYS);
    return move_du;
}

/* Undoes a freeze that did not reach the directory flip: the account is
 * the source's again, writable, and active. */
static void m_rollback(mover *m, dir *d, const char *why)
{
    hv_err e = {0};
    dir_account a;
    if (dir_account_get(d, m->account, &a, &e) == 0 && strcmp(a.store, m->to) == 0) {
        /* The flip did commit (its answer was lost): nothing to undo. */
        return;
    }
    if (m->st && store_account_unfence(m->st, &e) < 0)
        log_error("move: rollback cannot unfence account=%s reason=\"%s\"", m->account, e.msg);
    if (dir_account_set_state(d, m->account, DIR_STATE_ACTIVE, &e) < 0)
        log_error("move: rollback cannot reset the state account=%s reason=\"%s\"", m->account,
                  e.msg);
    log_warn("move: rolled_back account=%s to=%s reason=\"%s\"", m->account, m->to, why);
    m_state_write(m, "rolled-back", why);
}

int repl_move_account(const conf *c, const repl_move_opts *o, repl_move_result *res,
                      hv_err *err)
{
    memset(res, 0, sizeof(*res));
    mover mv = {.c = c, .account = o->account, .to = o->to, .verbose = o->verbose};
    mover *m = &mv;
    pthread_mutex_init(&m->mu, NULL);
    pthread_cond_init(&m->cv, NULL);
    int64_t t_start = now_ms();
    dir *d = NULL;
    int rc = dir_open_conf(c, &d, err);
    if (rc < 0)
        return rc;
    dir_account a;
    dir_store ts;
    int fenced = 0, rolled = 0, lock_fd = -1;
    if ((rc = dir_account_get(d, o->account, &a, err)) < 0)
        goto out;
    snprintf(m->from, sizeof(m->from), "%s", a.store);
    const char *here = conf_get(c, "store_name");
    char data[4096];
    conf_path(c, "data_dir", data, sizeof(data));
    snprintf(m->state_path, sizeof(m->state_path), "%s/moves", data);
    if ((rc = fs_mkdir_p(m->state_path, 0755, err)) < 0)
        goto out;
    snprintf(m->state_path, sizeof(m->state_path), "%s/moves/%s.move", data, o->account);
    /* One mover per account: a second one failing and rolling back could
     * otherwise unfence the account under the first one's final delta. */
    char lock_path[sizeof(m->state_path) + 8];
    memcpy(lock_path, m->state_path, sizeof(m->state_path));
    strcat(lock_path, ".lock");
    lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock_fd < 0) {
        rc = hv_err_sys(err, "open %s", lock_path);
        goto out;
    }
    if (flock(lock_fd, LOCK_EX | LOCK_NB) < 0) {
        rc = hv_err_set(err, -EBUSY, "another move of %s is running on this node", o->account);
        goto out;
    }
    if (strcmp(a.store, o->to) == 0) {
        res->already = 1;
        m->started = time(NULL);
        m_state_write(m, "done", "the directory has it on the target");
        goto out;
    }
    if (strcmp(a.store, here) != 0) {
        rc = hv_err_set(err, -EXDEV, "account %s lives on store %s; run the move on that "
                        "store's node (this one is %s)", o->account, a.store, here);
        goto out;
    }
    if (a.state != DIR_STATE_ACTIVE && a.state != DIR_STATE_MOVING) {
        rc = hv_err_set(err, -EBUSY, "account %s is %s; only an active account moves (or one a "
                        "killed move left moving)", o->account, dir_state_name(a.state));
        goto out;
    }
    if ((rc = dir_store_get(d, o->to, &ts, err)) < 0)
        goto out;
    if (!ts.repl_address[0]) {
        rc = hv_err_set(err, -EINVAL, "store %s has no repl address (haven store address %s "
                        "--repl HOST:PORT)", o->to, o->to);
        goto out;
    }
    char adir[4400];
    if ((rc = store_account_dir(data, o->account, adir, sizeof(adir), err)) < 0)
        goto out;
    store_options sopt = {
        .segment_size = (uint64_t)conf_get_int(c, "store_segment_size"),
        .checkpoint_records = (uint32_t)conf_get_int(c, "store_checkpoint_records"),
        .max_message_size = (uint64_t)conf_get_int(c, "store_max_message_size"),
    };
    if ((rc = store_open(adir, o->account, STORE_OPEN_CREATE, &sopt, &m->st, err)) < 0)
        goto out;
    if ((rc = repl_load_cfg(c, &m->cfg, err)) < 0)
        goto out;
    m->started = time(NULL);
    m->bytes_total = repl_move_account_bytes(c, o->account);
    m_state_write(m, "copying", NULL);
    log_info("move: start account=%s from=%s to=%s bytes=%llu modseq=%llu", o->account, m->from,
             o->to, (unsigned long long)m->bytes_total,
             (unsigned long long)store_highest_modseq(m->st));
    if ((rc = m_connect(m, ts.repl_address, err)) < 0)
        goto out;
    uint64_t pos = 0, hi = 0;
    if ((rc = m_position(m, &pos, err)) < 0)
        goto out;
    uint64_t freeze_at = o->freeze_records ? o->freeze_records : 500;
    /* Rounds while the owner keeps writing: each sends what the last one
     * left; the account freezes once a round leaves little. */
    for (;;) {
        m->rounds++;
        if ((rc = m_stream(m, pos, &hi, err)) < 0 || (rc = m_wait_acked(m, hi, err)) < 0)
            goto out;
        pos = hi;
        if ((rc = store_refresh(m->st, err)) < 0)
            goto out;
        uint64_t left = store_highest_modseq(m->st) - pos;
        if (left <= freeze_at || m->rounds >= MOVE_MAX_ROUNDS)
            break;
    }
    /* The freeze. */
    int64_t t_freeze = now_ms();
    m_state_write(m, "freezing", NULL);
    if (a.state != DIR_STATE_MOVING &&
        (rc = dir_account_set_state(d, o->account, DIR_STATE_MOVING, err)) < 0)
        goto out;
    fenced = 1;
    char why[300];
    snprintf(why, sizeof(why), "account is moving to store %s", o->to);
    if ((rc = store_account_fence(m->st, why, err)) < 0)
        goto out;
    m_state_write(m, "final", NULL);
    if ((rc = m_stream(m, pos, &hi, err)) < 0 || (rc = m_wait_acked(m, hi, err)) < 0)
        goto out;
    if ((rc = m_digest_check(m, hi, err)) < 0)
        goto out;
    m_state_write(m, "committing", NULL);
    if ((rc = m_commit_target(m, hi, err)) < 0)
        goto out;
    if ((rc = dir_account_move_commit(d, o->account, o->to, a.slot, DIR_STATE_ACTIVE, err)) < 0)
        goto out;
    fenced = 0; /* the fence stays: the copy here is no longer the account */
    snprintf(why, sizeof(why), "account moved to store %s", o->to);
    hv_err e2 = {0};
    if (store_account_fence(m->st, why, &e2) < 0)
        log_warn("move: cannot rewrite the fence account=%s reason=\"%s\"", o->account, e2.msg);
    res->freeze_ms = now_ms() - t_freeze;
    res->modseq = hi;
    m_state_write(m, "done", NULL);
    log_info("move: done account=%s from=%s to=%s modseq=%llu rounds=%d bytes=%llu "
             "records=%llu freeze_ms=%lld total_ms=%lld", o->account, m->from, o->to,
             (unsigned long long)hi, m->rounds, (unsigned long long)m->bytes_sent,
             (unsigned long long)m->records_sent, (long long)res->freeze_ms,
             (long long)(now_ms() - t_start));
out:
    if (rc < 0 && m->state_path[0] && m->started) {
        if (fenced || (a.state == DIR_STATE_MOVING && m->st)) {
            m_rollback(m, d, err->msg);
            rolled = 1;
        } else {
            m_state_write(m, "failed", err->msg);
        }
        log_error("move: failed account=%s to=%s rolled_back=%d reason=\"%s\"", o->account,
                  o->to, rolled, err->msg);
    }
    if (m->link) {
        repl_link_shutdown(m->link, rc < 0 ? "move failed" : "move done");
        repl_link_free(m->link);
    }
    if (m->st)
        store_close(m->st);
    repl_cfg_free(&m->cfg);
    free(m->marks);
    res->bytes_sent = m->bytes_sent;
    res->records_sent = m->records_sent;
    res->rounds = m->rounds;
    res->total_ms = now_ms() - t_start;
    if (d)
        dir_close(d);
    if (lock_fd >= 0)
        close(lock_fd);
    pthread_mutex_destroy(&m->mu);
    pthread_cond_destroy(&m->cv);
    return rc < 0 ? rc : 0;
}
