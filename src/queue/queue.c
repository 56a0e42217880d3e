/*
 * queue.c - opening the queue, submitting messages, recipient states.
 *
 * The queue folder holds a lock file (one writer: the smtp service, or
 * `haven queue` when havend is not running) and the log segments
 * (queue_log.c). In memory every message that still has an unfinished
 * recipient is in a hash table by id; the data stays on disk and is read
 * (and its CRC checked again) when a delivery needs it.
 *
 * queue_submit returns only when the message's record is durable, and
 * queue_submit_async (the smtp service's) calls back only then: the
 * message becomes visible to the delivery threads only then, so nothing is
 * delivered (or answered 250) that a crash could take back.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "lib/crc32c.h"
#include "lib/fsutil.h"
#include "lib/log.h"
#include "queue/queue_internal.h"

#define QUEUE_MAX_STR 4096 /* longest envelope string kept (addresses are far shorter) */
#define QUEUE_MAX_RCPTS 100000

int64_t queue_now(queue *q)
{
    if (q->tune.now_ms)
        return q->tune.now_ms(q->tune.now_ctx);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void queue_format_id(uint64_t id, char out[QUEUE_ID_LEN + 1])
{
    snprintf(out, QUEUE_ID_LEN + 1, "%016llx", (unsigned long long)id);
}

int queue_parse_id(const char *s, uint64_t *out)
{
    if (strlen(s) != QUEUE_ID_LEN)
        return -EINVAL;
    uint64_t v = 0;
    for (int i = 0; i < QUEUE_ID_LEN; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0)
            return -EINVAL;
        v = v << 4 | (uint64_t)d;
    }
    *out = v;
    return 0;
}

const char *queue_state_name(int state)
{
    switch (state) {
    case QUEUE_READY: return "ready";
    case QUEUE_DEFERRED: return "deferred";
    case QUEUE_HELD: return "held";
    case QUEUE_DELIVERED: return "delivered";
    case QUEUE_BOUNCED: return "bounced";
    case QSTATE_DELETED: return "deleted";
    }
    return "?";
}

/* ---------- the table ---------- */

static size_t id_hash(uint64_t id, size_t cap)
{
    return (size_t)(id * 0x9E3779B97F4A7C15ull >> 20) & (cap - 1);
}

void queue_table_insert(queue *q, qmsg *m)
{
    if (q->nmsgs + 1 > q->tab_cap / 2) {
        size_t cap = q->tab_cap ? q->tab_cap * 2 : 1024;
        qmsg **t = calloc(cap, sizeof(qmsg *));
        if (!t)
            abort();
        for (size_t i = 0; i < q->tab_cap; i++)
            for (qmsg *x = q->tab[i], *nx; x; x = nx) {
                nx = x->hnext;
                size_t h = id_hash(x->id, cap);
                x->hnext = t[h];
                t[h] = x;
            }
        free(q->tab);
        q->tab = t;
        q->tab_cap = cap;
    }
    size_t h = id_hash(m->id, q->tab_cap);
    m->hnext = q->tab[h];
    q->tab[h] = m;
    m->in_table = 1;
    q->nmsgs++;
}

qmsg *queue_find(queue *q, uint64_t id)
{
    if (!q->tab_cap)
        return NULL;
    for (qmsg *m = q->tab[id_hash(id, q->tab_cap)]; m; m = m->hnext)
        if (m->id == id)
            return m;
    return NULL;
}

static void table_remove(queue *q, qmsg *m)
{
    for (qmsg **pp = &q->tab[id_hash(m->id, q->tab_cap)]; *pp; pp = &(*pp)->hnext)
        if (*pp == m) {
            *pp = m->hnext;
            m->hnext = NULL;
            m->in_table = 0;
            q->nmsgs--;
            return;
        }
}

static int cmp_msg(const void *a, const void *b)
{
    const qmsg *x = *(qmsg *const *)a, *y = *(qmsg *const *)b;
    return x->id < y->id ? -1 : x->id > y->id;
}

qmsg **queue_sorted(queue *q, size_t *n)
{
    qmsg **all = malloc((q->nmsgs ? q->nmsgs : 1) * sizeof(qmsg *));
    if (!all)
        abort();
    size_t k = 0;
    for (size_t i = 0; i < q->tab_cap; i++)
        for (qmsg *m = q->tab[i]; m; m = m->hnext)
            all[k++] = m;
    qsort(all, k, sizeof(qmsg *), cmp_msg);
    *n = k;
    return all;
}

void queue_msg_free(qmsg *m)
{
    for (uint32_t i = 0; i < m->nrcpts; i++) {
        free(m->rcpts[i].address);
        free(m->rcpts[i].account);
        free(m->rcpts[i].orcpt);
        free(m->rcpts[i].reason);
    }
    free(m->rcpts);
    free(m->mail_from);
    free(m->envid);
    free(m->client_addr);
    free(m->client_helo);
    free(m->auth_user);
    free(m);
}

void queue_msg_finished(queue *q, qmsg *m)
{
    if (m->in_table) {
        table_remove(q, m);
        sched_detach(q, m);
        m->seg->live--;
        m->seg->live_bytes -= m->frame_len;
    }
    if (m->busy == 0)
        queue_msg_free(m);
    /* else the last delivery thread to let go frees it (queue_finish) */
}

static void syncer_end(queue *q);

/* ---------- opening ---------- */

static int take_lock(queue *q, hv_err *err)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/lock", q->dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return hv_err_sys(err, "open %s", path);
    /* The smtp service may be restarting while an operator looks: wait a
     * little rather than fail at once. */
    for (int i = 0; i < 100; i++) {
        if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
            q->lock_fd = fd;
            return 0;
        }
        if (errno != EWOULDBLOCK) {
            int rc = hv_err_sys(err, "lock %s", path);
            close(fd);
            return rc;
        }
        struct timespec ts = {0, 50 * 1000000};
        nanosleep(&ts, NULL);
    }
    close(fd);
    return hv_err_set(err, -EBUSY, "queue %s is in use by another process", q->dir);
}

int queue_open_ex(const char *dir, const queue_options *opt, const queue_tuning *tune,
                  queue **out, hv_err *err)
{
    *out = NULL;
    int rc = fs_mkdir_p(dir, 0700, err);
    if (rc < 0)
        return rc;
    queue *q = calloc(1, sizeof(*q));
    if (!q)
        abort();
    q->dir = strdup(dir);
    q->lock_fd = -1;
    if (opt)
        q->opt = *opt;
    if (q->opt.lifetime_s <= 0)
        q->opt.lifetime_s = 432000;
    if (q->opt.retry_min_s <= 0)
        q->opt.retry_min_s = 60;
    if (q->opt.retry_max_s <= 0)
        q->opt.retry_max_s = 3600;
    if (q->opt.retry_max_s < q->opt.retry_min_s)
        q->opt.retry_max_s = q->opt.retry_min_s;
    if (!q->opt.max_message_size)
        q->opt.max_message_size = 50u << 20;
    if (tune)
        q->tune = *tune;
    q->account_cap = 4;
    q->domain_cap = 10;
    snprintf(q->hostname, sizeof(q->hostname), "localhost");
    /* Every submit, delivery thread and worker takes this lock for a few
     * microseconds at a time, many times per message: spinning briefly
     * before sleeping spares most of the futex calls (each a costly trip
     * into the kernel and often two context switches). */
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
    pthread_mutex_init(&q->mu, &ma);
    pthread_mutexattr_destroy(&ma);
    pthread_cond_init(&q->sync_cv, NULL);
    pthread_cond_init(&q->work_cv, NULL);
    pthread_cond_init(&q->pend_cv, NULL);
    q->pend_tail = &q->pend_head;
    rc = take_lock(q, err);
    if (rc == 0)
        rc = qlog_open(q, err);
    if (rc < 0) {
        hv_err_prefix(err, "queue %s", dir);
        queue_close(q);
        return rc;
    }
    /* Hand every recovered message to the scheduler in arrival order. */
    size_t n;
    qmsg **all = queue_sorted(q, &n);
    for (size_t i = 0; i < n; i++)
        sched_attach(q, all[i]);
    free(all);
    log_info("queue_open dir=%s messages=%zu torn_bytes=%zu damaged_places=%zu", dir,
             q->nmsgs, q->dropped_tail, q->ndamage);
    *out = q;
    return 0;
}

int queue_open(const char *dir, const queue_options *opt, queue **out, hv_err *err)
{
    return queue_open_ex(dir, opt, NULL, out, err);
}

int queue_open_conf(const conf *c, queue **out, hv_err *err)
{
    char dir[4096];
    conf_path(c, "queue_dir", dir, sizeof(dir));
    queue_options o = {
        .lifetime_s = conf_get_int(c, "queue_lifetime"),
        .retry_min_s = conf_get_int(c, "queue_retry_min"),
        .retry_max_s = conf_get_int(c, "queue_retry_max"),
        .max_message_size = (uint64_t)conf_get_int(c, "smtp_max_message_size"),
    };
    int rc = queue_open(dir, &o, out, err);
    if (rc == 0)
        snprintf((*out)->hostname, sizeof((*out)->hostname), "%s", conf_get(c, "hostname"));
    return rc;
}

void queue_close(queue *q)
{
    if (!q)
        return;
    syncer_end(q);
    if (q->runner)
        queue_runner_stop(q);
    for (size_t i = 0; i < q->tab_cap; i++)
        for (qmsg *m = q->tab[i], *nx; m; m = nx) {
            nx = m->hnext;
            sched_detach(q, m);
            queue_msg_free(m);
        }
    free(q->tab);
    free(q->stab);
    free(q->dtab);
    free(q->heap);
    qlog_close(q);
    if (q->lock_fd >= 0)
        close(q->lock_fd);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->sync_cv);
    pthread_cond_destroy(&q->work_cv);
    pthread_cond_destroy(&q->pend_cv);
    free(q->dir);
    free(q);
}

/* ---------- submitting ---------- */

static char *dup_or_null(const char *s) { return s && *s ? strdup(s) : NULL; }

static int str_ok(const char *s) { return !s || strlen(s) <= QUEUE_MAX_STR; }

static uint64_t next_id(queue *q)
{
    uint64_t id = (uint64_t)queue_now(q) << 20;
    if (id <= q->last_id)
        id = q->last_id + 1;
    q->last_id = id;
    return id;
}

/* A durable message becomes visible: to the table, the scheduler and a
 * delivery thread (locked). */
static void submit_visible(queue *q, qmsg *m, const qbounce *parent)
{
    queue_table_insert(q, m);
    q->nsubmits++;
    if (parent) {
        /* The DSN's record finished these recipients (see queue_finish). */
        for (size_t i = 0; i < parent->n; i++) {
            qrcpt *r = &parent->msg->rcpts[parent->idx[i]];
            free(r->reason);
            r->reason = strdup(parent->reason[i]);
            r->state = QUEUE_BOUNCED;
            r->hold_kind = 0;
            parent->msg->unfinished--;
        }
        if (parent->msg->unfinished == 0)
            queue_msg_finished(q, parent->msg);
    }
    sched_attach(q, m);
    /* One recipient needs one thread; waking all of them for it would cost
     * a crowd of futile wake-ups per message. */
    if (m->nrcpts == 1)
        pthread_cond_signal(&q->work_cv);
    else
        pthread_cond_broadcast(&q->work_cv);
}

/* ---------- submitting without waiting (queue_submit_async) ----------
 *
 * The record is written by the submitting thread; one syncing thread
 * (started at the first such submit) makes everything written meanwhile
 * durable with one fdatasync, then makes those messages visible and calls
 * their done functions. A submitting session thus holds no thread while
 * the disk works, and no crowd of waiters wakes after each sync. */
typedef struct qpending {
    qmsg *m;
    uint64_t end;
    queue_done_fn done;
    void *ctx;
    char id[QUEUE_ID_LEN + 1];
    struct qpending *next;
} qpending;

static void *syncer_main(void *arg)
{
    queue *q = arg;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        if (!q->pend_head) {
            if (q->syncer_stop)
                break;
            pthread_cond_wait(&q->pend_cv, &q->mu);
            continue;
        }
        /* Up to the newest pending record (appends only grow the log). */
        uint64_t need = 0;
        for (qpending *p = q->pend_head; p; p = p->next)
            need = p->end > need ? p->end : need;
        hv_err err = {0};
        int rc = qlog_sync_to(q, need, &err);
        qpending *done = NULL, **dt = &done;
        while (q->pend_head && (rc < 0 || q->pend_head->end <= q->synced)) {
            qpending *p = q->pend_head;
            q->pend_head = p->next;
            if (!q->pend_head)
                q->pend_tail = &q->pend_head;
            p->next = NULL;
            if (rc == 0) {
                submit_visible(q, p->m, NULL);
            } else {
                p->m->seg->live--;
                p->m->seg->live_bytes -= p->m->frame_len;
                queue_msg_free(p->m);
            }
            p->m = NULL; /* visible: a delivery thread may free it from now on */
            *dt = p;
            dt = &p->next;
        }
        pthread_mutex_unlock(&q->mu);
        for (qpending *p = done, *nx; p; p = nx) {
            nx = p->next;
            p->done(p->ctx, rc, rc == 0 ? p->id : "", rc == 0 ? NULL : &err);
            free(p);
        }
        pthread_mutex_lock(&q->mu);
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

static void syncer_end(queue *q)
{
    pthread_mutex_lock(&q->mu);
    int on = q->syncer_on;
    q->syncer_stop = 1;
    pthread_cond_signal(&q->pend_cv);
    pthread_mutex_unlock(&q->mu);
    if (on)
        pthread_join(q->syncer, NULL); /* after completing what is pending */
}

static int submit_common(queue *q, const queue_envelope *env, uint32_t flags, const void *data,
                         size_t len, const qbounce *parent, char id_out[QUEUE_ID_LEN + 1],
                         queue_done_fn done, void *ctx, hv_err *err)
{
    if (!env->nrcpts || env->nrcpts > QUEUE_MAX_RCPTS)
        return hv_err_set(err, -EINVAL, "a message needs 1 to %d recipients", QUEUE_MAX_RCPTS);
    if (len > q->opt.max_message_size)
        return hv_err_set(err, -EFBIG, "message of %zu bytes is over the limit of %llu", len,
                          (unsigned long long)q->opt.max_message_size);
    if (!env->mail_from || !str_ok(env->mail_from) || !str_ok(env->envid) ||
        !str_ok(env->client_addr) || !str_ok(env->client_helo) || !str_ok(env->auth_user))
        return hv_err_set(err, -EINVAL, "envelope field missing or too long");
    for (size_t i = 0; i < env->nrcpts; i++) {
        const queue_rcpt_in *r = &env->rcpts[i];
        if (!r->address || !*r->address || !str_ok(r->address) || !str_ok(r->account) ||
            !str_ok(r->orcpt))
            return hv_err_set(err, -EINVAL, "recipient %zu missing or too long", i);
    }
    qmsg *m = calloc(1, sizeof(*m));
    if (!m)
        abort();
    m->flags = flags | (env->ret_headers_only ? QMSG_RET_HDRS : 0) |
               (env->body_8bit ? QMSG_8BIT : 0) | (env->smtputf8 ? QMSG_SMTPUTF8 : 0);
    m->mail_from = strdup(env->mail_from);
    m->envid = dup_or_null(env->envid);
    m->client_addr = strdup(env->client_addr ? env->client_addr : "");
    m->client_helo = strdup(env->client_helo ? env->client_helo : "");
    m->auth_user = dup_or_null(env->auth_user);
    m->size = len;
    m->nrcpts = (uint32_t)env->nrcpts;
    m->rcpts = calloc(env->nrcpts, sizeof(qrcpt));
    if (!m->rcpts)
        abort();
    for (uint32_t i = 0; i < m->nrcpts; i++) {
        qrcpt *r = &m->rcpts[i];
        r->msg = m;
        r->idx = i;
        r->heap_idx = SIZE_MAX;
        r->address = strdup(env->rcpts[i].address);
        r->account = dup_or_null(env->rcpts[i].account);
        r->orcpt = dup_or_null(env->rcpts[i].orcpt);
        r->notify = env->rcpts[i].notify;
        r->reason = strdup("");
    }
    m->unfinished = m->nrcpts;
    int64_t now = queue_now(q);
    m->arrival = now;

    /* Encode outside the lock; the id is patched in under it. The data
     * is written from where it is, not copied into the frame. */
    buf fr;
    buf_init(&fr);
    size_t start = qlog_frame_begin(&fr, QREC_MESSAGE, now);
    size_t id_at = fr.len;
    qlog_put_message(&fr, m, parent, NULL, len, &m->data_rel);
    st32(fr.data + start, (uint32_t)(fr.len + len - start - QLOG_FRAME_HDR));
    m->frame_len = (uint32_t)(fr.len + len);

    pthread_mutex_lock(&q->mu);
    m->id = next_id(q);
    st64(fr.data + id_at, m->id);
    uint64_t end;
    int rc = qlog_append_tail(q, &fr, data, len, &m->seg, &m->frame_off, &end, err);
    if (rc == 0) {
        m->seg->live++;
        m->seg->live_bytes += m->frame_len;
        if (done) {
            /* The syncing thread takes it from here. */
            if (!q->syncer_on) {
                q->syncer_on = pthread_create(&q->syncer, NULL, syncer_main, q) == 0;
                if (!q->syncer_on)
                    rc = hv_err_set(err, -EAGAIN, "queue: cannot start the syncing thread");
            }
            if (rc == 0) {
                qpending *p = calloc(1, sizeof(*p));
                if (!p)
                    abort();
                *p = (qpending){m, end, done, ctx, "", NULL};
                queue_format_id(m->id, p->id);
                *q->pend_tail = p;
                q->pend_tail = &p->next;
                pthread_cond_signal(&q->pend_cv);
                pthread_mutex_unlock(&q->mu);
                buf_free(&fr);
                return 0;
            }
        } else {
            rc = qlog_sync_to(q, end, err);
        }
        if (rc < 0) {
            m->seg->live--;
            m->seg->live_bytes -= m->frame_len;
        }
    }
    if (rc < 0) {
        pthread_mutex_unlock(&q->mu);
        buf_free(&fr);
        queue_msg_free(m);
        return rc;
    }
    submit_visible(q, m, parent);
    pthread_mutex_unlock(&q->mu);
    buf_free(&fr);
    queue_format_id(m->id, id_out);
    return 0;
}

int queue_submit_ex(queue *q, const queue_envelope *env, uint32_t flags, const void *data,
                    size_t len, const qbounce *parent, char id_out[QUEUE_ID_LEN + 1],
                    hv_err *err)
{
    return submit_common(q, env, flags, data, len, parent, id_out, NULL, NULL, err);
}

int queue_submit_async(queue *q, const queue_envelope *env, const void *data, size_t len,
                       queue_done_fn done, void *ctx, hv_err *err)
{
    char id[QUEUE_ID_LEN + 1];
    return submit_common(q, env, 0, data, len, NULL, id, done, ctx, err);
}

int queue_submit(queue *q, const queue_envelope *env, const void *data, size_t len,
                 char id_out[QUEUE_ID_LEN + 1], hv_err *err)
{
    return queue_submit_ex(q, env, 0, data, len, NULL, id_out, err);
}

/* ---------- states ---------- */

void queue_set_state(queue *q, qrcpt *r, int state, int hold_kind, const char *reason)
{
    qmsg *m = r->msg;
    int was_finished = r->state == QUEUE_DELIVERED || r->state == QUEUE_BOUNCED ||
                       r->state == QSTATE_DELETED;
    sched_unqueue(q, r);
    sched_heap_remove(q, r);
    if (QRCPT_AUTO_HELD(r) && r->dest)
        r->dest->held--;
    r->state = (uint8_t)state;
    r->hold_kind = state == QUEUE_HELD ? (uint8_t)hold_kind : 0;
    if (reason) {
        free(r->reason);
        r->reason = strdup(reason);
    }
    if (QRCPT_AUTO_HELD(r) && r->dest)
        r->dest->held++;
    if (state == QUEUE_DEFERRED)
        sched_heap_push(q, r);
    if (state == QUEUE_READY && !r->busy)
        sched_make_ready(q, r);
    buf fr;
    buf_init(&fr);
    size_t start = qlog_frame_begin(&fr, QREC_STATE, queue_now(q));
    qlog_put_state(&fr, m, r);
    qlog_frame_end(&fr, start);
    hv_err err;
    if (qlog_append(q, &fr, NULL, NULL, NULL, &err) < 0)
        log_error("queue_state_lost id=%016llx rcpt=%u reason=\"%s\"",
                  (unsigned long long)m->id, r->idx, err.msg);
    buf_free(&fr);
    int finished = state == QUEUE_DELIVERED || state == QUEUE_BOUNCED || state == QSTATE_DELETED;
    if (finished && !was_finished && --m->unfinished == 0)
        queue_msg_finished(q, m);
}

int queue_sync_locked(queue *q, hv_err *err) { return qlog_sync_to(q, q->written, err); }

int queue_read_data(queue *q, qmsg *m, buf *out, hv_err *err)
{
    pthread_mutex_lock(&q->mu);
    qseg *s = m->seg;
    uint64_t off = m->frame_off;
    uint32_t flen = m->frame_len, rel = m->data_rel;
    uint64_t size = m->size;
    s->refs++;
    pthread_mutex_unlock(&q->mu);
    /* The envelope part into a scratch buffer, the data straight to where
     * the caller wants it (no moving 100 KiB around afterwards). */
    uint8_t small[4096];
    uint8_t *head = rel <= sizeof(small) ? small : malloc(rel);
    buf_reset(out);
    buf_reserve(out, (size_t)size);
    int rc = 0;
    if (!head || (uint64_t)rel + size != flen || rel < QLOG_FRAME_HDR) {
        rc = hv_err_set(err, -EUCLEAN, "queue segment %llu offset %llu: message record damaged",
                        (unsigned long long)s->no, (unsigned long long)off);
    } else {
        struct iovec iov[2] = {{head, rel}, {out->data, (size_t)size}};
        ssize_t r = preadv(s->fd, iov, 2, (off_t)off);
        if (r >= 0 && r < (ssize_t)flen) /* short (rare): the rest one by one */
            r = fs_pread_full(s->fd, head, rel, (off_t)off) == (ssize_t)rel &&
                        fs_pread_full(s->fd, out->data, (size_t)size, (off_t)(off + rel)) ==
                            (ssize_t)size
                    ? (ssize_t)flen
                    : -EIO;
        if (r != (ssize_t)flen) {
            rc = r < 0 ? (int)(r == -1 ? -errno : r) : -EIO;
            errno = -rc;
            rc = hv_err_set(err, rc, "queue segment %llu offset %llu: cannot read message",
                            (unsigned long long)s->no, (unsigned long long)off);
        } else {
            uint32_t crc = crc32c(0, head, 4);
            crc = crc32c(crc, head + QLOG_FRAME_HDR, rel - QLOG_FRAME_HDR);
            crc = crc32c(crc, out->data, (size_t)size);
            if (le32(head) != flen - QLOG_FRAME_HDR || crc != le32(head + 4))
                rc = hv_err_set(err, -EUCLEAN,
                                "queue segment %llu offset %llu: message record damaged",
                                (unsigned long long)s->no, (unsigned long long)off);
        }
    }
    if (head != small)
        free(head);
    pthread_mutex_lock(&q->mu);
    qseg_unref(q, s);
    pthread_mutex_unlock(&q->mu);
    if (rc == 0) {
        out->len = (size_t)size;
        out->data[size] = 0;
    }
    return rc;
}
