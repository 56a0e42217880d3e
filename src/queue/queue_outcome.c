/*
 * queue_outcome.c - what a delivery attempt's replies do to the queue.
 *
 * A reply becomes an outcome (queue_reply_result: the LMTP contract in
 * queue.h's callers' brief: 2xx delivered, 450 4.2.1 held, other 4xx
 * deferred, 5xx bounced, no reply from the store held until it answers),
 * and queue_finish applies the outcomes: state records, the retry timer
 * (queue_retry_min doubling up to queue_retry_max, never past the
 * lifetime), and DSNs. A bounce's DSN and the bounced state are one record
 * (the DSN message names the recipients it finishes), so a crash can
 * neither lose the DSN nor send it twice.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "queue/queue_internal.h"

void queue_reply_result(int lmtp, int code, const char *enhanced, const char *text,
                        qresult *out)
{
    memset(out, 0, sizeof(*out));
    if (code == 0) {
        if (lmtp) {
            out->out = QOUT_HELD;
            out->hold_kind = QHOLD_STORE;
            snprintf(out->reason, sizeof(out->reason), "store not answering%s%s",
                     text && *text ? ": " : "", text ? text : "");
        } else {
            out->out = QOUT_DEFERRED;
            snprintf(out->reason, sizeof(out->reason), "connection lost%s%s",
                     text && *text ? ": " : "", text ? text : "");
        }
        return;
    }
    snprintf(out->reason, sizeof(out->reason), "%d%s%s %s", code,
             enhanced && *enhanced ? " " : "", enhanced ? enhanced : "", text ? text : "");
    if (code >= 200 && code < 300)
        out->out = QOUT_DELIVERED;
    else if (lmtp && code == 450 && enhanced && strcmp(enhanced, "4.2.1") == 0) {
        out->out = QOUT_HELD;
        out->hold_kind = QHOLD_ACCOUNT;
    } else if (code >= 500 && code < 600)
        out->out = QOUT_BOUNCED;
    else
        out->out = QOUT_DEFERRED;
}

/* "550 5.1.1 ..." -> "5.1.1"; else def. */
static void status_of(const char *reason, const char *def, char out[16])
{
    const char *p = reason;
    if (isdigit((unsigned char)p[0]) && isdigit((unsigned char)p[1]) &&
        isdigit((unsigned char)p[2]) && p[3] == ' ') {
        p += 4;
        size_t n = strspn(p, "0123456789.");
        if (n >= 5 && n < 16 && (p[0] == '2' || p[0] == '4' || p[0] == '5') && p[1] == '.') {
            memcpy(out, p, n);
            out[n] = 0;
            return;
        }
    }
    snprintf(out, 16, "%s", def);
}

static int is_finished(int st)
{
    return st == QUEUE_DELIVERED || st == QUEUE_BOUNCED || st == QSTATE_DELETED;
}

/* A report to collect while locked and send once unlocked. */
typedef struct report {
    size_t n;
    char **addr, **orcpt, **diag;
    char (*status)[16];
    uint32_t *idx;
} report;

static void report_init(report *r, size_t max)
{
    r->n = 0;
    r->addr = calloc(max, sizeof(char *));
    r->orcpt = calloc(max, sizeof(char *));
    r->diag = calloc(max, sizeof(char *));
    r->status = calloc(max, 16);
    r->idx = calloc(max, sizeof(uint32_t));
    if (!r->addr || !r->orcpt || !r->diag || !r->status || !r->idx)
        abort();
}

static void report_add(report *r, const qrcpt *x, const char *diag, const char *status_def)
{
    size_t i = r->n++;
    r->addr[i] = strdup(x->address);
    r->orcpt[i] = x->orcpt ? strdup(x->orcpt) : NULL;
    r->diag[i] = strdup(diag);
    status_of(diag, status_def, r->status[i]);
    r->idx[i] = x->idx;
}

static void report_free(report *r, size_t max)
{
    for (size_t i = 0; i < max && i < r->n; i++) {
        free(r->addr[i]);
        free(r->orcpt[i]);
        free(r->diag[i]);
    }
    free(r->addr);
    free(r->orcpt);
    free(r->diag);
    free(r->status);
    free(r->idx);
}

static uint64_t dsn_counter;

/* Composes and queues a DSN about m (unlocked; m is pinned by the caller).
 * parent, when set, is finished by the DSN's record. */
static int send_report(queue *q, qmsg *m, enum qdsn_kind kind, const report *rep,
                       const qbounce *parent, queue_resolve_fn resolve, void *rctx,
                       hv_err *err)
{
    buf data, out;
    buf_init(&data);
    buf_init(&out);
    int rc = queue_read_data(q, m, &data, err);
    if (rc < 0) {
        buf_free(&data);
        return rc;
    }
    qdsn_rcpt *rs = calloc(rep->n ? rep->n : 1, sizeof(*rs));
    if (!rs)
        abort();
    for (size_t i = 0; i < rep->n; i++)
        rs[i] = (qdsn_rcpt){rep->addr[i], rep->orcpt[i], rep->status[i], rep->diag[i], NULL};
    int64_t now = queue_now(q);
    uint64_t dsn_id = (uint64_t)now << 12 | (__atomic_add_fetch(&dsn_counter, 1, __ATOMIC_RELAXED) & 0xfff);
    qdsn_compose(&out, q->hostname, now, m, data.data, data.len, kind,
                 m->arrival + q->opt.lifetime_s * 1000, rs, rep->n, dsn_id);
    free(rs);
    buf_free(&data);
    char account[256] = "";
    int local = resolve ? resolve(rctx, m->mail_from, account) : 0;
    if (local < 0) {
        /* A hosted domain without that address: nobody to tell. */
        buf_free(&out);
        log_info("queue_dsn_dropped to=<%s> reason=\"sender unknown here\"", m->mail_from);
        return 1;
    }
    queue_rcpt_in rin = {
        .address = m->mail_from,
        .account = local > 0 ? account : NULL,
        .notify = QUEUE_NOTIFY_NEVER,
    };
    queue_envelope env = {
        .mail_from = "",
        .rcpts = &rin,
        .nrcpts = 1,
        .body_8bit = (m->flags & (QMSG_8BIT | QMSG_SMTPUTF8)) != 0,
        .smtputf8 = (m->flags & QMSG_SMTPUTF8) != 0,
        .client_addr = "",
        .client_helo = q->hostname,
    };
    char id[QUEUE_ID_LEN + 1];
    if (out.len > q->opt.max_message_size) {
        /* The original made it too big: a failure report keeps the header. */
        buf_free(&out);
        return hv_err_set(err, -EFBIG, "DSN too big");
    }
    rc = queue_submit_ex(q, &env, QMSG_IS_DSN, out.data, out.len, parent, id, err);
    buf_free(&out);
    if (rc == 0) {
        char mid[QUEUE_ID_LEN + 1];
        queue_format_id(m->id, mid);
        log_info("queue_dsn id=%s dsn=%s kind=%s to=<%s> recipients=%zu", mid, id,
                 kind == QDSN_FAILED ? "failed" : kind == QDSN_DELAYED ? "delayed"
                 : kind == QDSN_RELAYED ? "relayed" : "delivered",
                 m->mail_from, rep->n);
    }
    return rc;
}

void queue_finish(queue *q, qrcpt **rs, const qresult *res, size_t n, queue_resolve_fn resolve,
                  void *rctx)
{
    if (!n)
        return;
    qmsg *m = rs[0]->msg;
    pthread_mutex_lock(&q->mu);
    m->busy++; /* pinned: nothing below frees it */
    int64_t now = queue_now(q);
    int64_t expires = m->arrival + q->opt.lifetime_s * 1000;
    int want_dsn = m->mail_from[0] && !(m->flags & QMSG_IS_DSN);
    report bounce, success, relayed, delayed;
    report_init(&bounce, n);
    report_init(&success, n);
    report_init(&relayed, n);
    report_init(&delayed, n);
    qrcpt **bl = calloc(n, sizeof(qrcpt *));
    if (!bl)
        abort();
    int need_sync = 0;
    char mid[QUEUE_ID_LEN + 1];
    queue_format_id(m->id, mid);

    for (size_t i = 0; i < n; i++) {
        qrcpt *r = rs[i];
        const qresult *o = &res[i];
        if (!m->in_table || is_finished(r->state)) {
            sched_release_busy(q, r); /* deleted meanwhile */
            continue;
        }
        switch (o->out) {
        case QOUT_DELIVERED:
        case QOUT_RELAYED:
            sched_release_busy(q, r);
            if (want_dsn && (r->notify & QUEUE_NOTIFY_SUCCESS))
                report_add(o->out == QOUT_RELAYED ? &relayed : &success, r, o->reason, "2.0.0");
            if (!r->account)
                need_sync = 1; /* a lost record would relay it twice */
            log_info("queue_delivered id=%s rcpt=<%s> reply=\"%s\"", mid, r->address, o->reason);
            queue_set_state(q, r, QUEUE_DELIVERED, 0, o->reason);
            break;
        case QOUT_HELD:
            sched_release_busy(q, r);
            log_info("queue_held id=%s rcpt=<%s> reason=\"%s\"", mid, r->address, o->reason);
            queue_set_state(q, r, QUEUE_HELD, o->hold_kind ? o->hold_kind : QHOLD_ACCOUNT,
                            o->reason);
            break;
        case QOUT_DEFERRED: {
            r->attempts++;
            if (now >= expires) {
                char why[600];
                snprintf(why, sizeof(why), "%s (gave up: queue lifetime reached)", o->reason);
                report_add(&bounce, r, why, "4.4.7");
                bl[bounce.n - 1] = r;
                break;
            }
            int64_t delay = q->opt.retry_min_s * 1000;
            for (uint32_t k = 1; k < r->attempts && delay < q->opt.retry_max_s * 1000; k++)
                delay *= 2;
            if (delay > q->opt.retry_max_s * 1000)
                delay = q->opt.retry_max_s * 1000;
            r->next_try = now + delay < expires ? now + delay : expires;
            sched_release_busy(q, r);
            if (want_dsn && (r->notify & QUEUE_NOTIFY_DELAY) && !(r->flags & QRCPT_DELAY_SENT)) {
                r->flags |= QRCPT_DELAY_SENT;
                report_add(&delayed, r, o->reason, "4.0.0");
            }
            log_info("queue_deferred id=%s rcpt=<%s> attempts=%u retry_in_s=%lld reason=\"%s\"",
                     mid, r->address, r->attempts, (long long)((r->next_try - now) / 1000),
                     o->reason);
            queue_set_state(q, r, QUEUE_DEFERRED, 0, o->reason);
            break;
        }
        case QOUT_BOUNCED:
            report_add(&bounce, r, o->reason, "5.0.0");
            bl[bounce.n - 1] = r;
            break;
        case QOUT_REQUEUE:
            sched_release_busy(q, r);
            sched_make_ready(q, r);
            break;
        }
    }

    if (bounce.n) {
        /* Who gets told: not the null sender, never about a DSN, and not
         * recipients that asked for NOTIFY=NEVER or only other events. */
        report tell;
        report_init(&tell, bounce.n);
        for (size_t i = 0; i < bounce.n; i++) {
            qrcpt *r = bl[i];
            int wants = r->notify == 0 || (r->notify & QUEUE_NOTIFY_FAILURE);
            if (want_dsn && wants && !(r->notify & QUEUE_NOTIFY_NEVER)) {
                size_t k = tell.n++;
                tell.addr[k] = strdup(bounce.addr[i]);
                tell.orcpt[k] = bounce.orcpt[i] ? strdup(bounce.orcpt[i]) : NULL;
                tell.diag[k] = strdup(bounce.diag[i]);
                memcpy(tell.status[k], bounce.status[i], 16);
                tell.idx[k] = bounce.idx[i];
            }
            log_info("queue_bounced id=%s rcpt=<%s> dsn=%s reason=\"%s\"", mid, r->address,
                     tell.n && tell.idx[tell.n - 1] == r->idx ? "yes" : "no", bounce.diag[i]);
        }
        int sent = 0;
        if (tell.n) {
            qbounce parent = {m, bounce.idx, bounce.diag, bounce.n};
            hv_err err;
            pthread_mutex_unlock(&q->mu);
            int rc = send_report(q, m, QDSN_FAILED, &tell, &parent, resolve, rctx, &err);
            pthread_mutex_lock(&q->mu);
            if (rc == 0) {
                sent = 1;
                for (size_t i = 0; i < bounce.n; i++)
                    sched_release_busy(q, bl[i]);
            } else if (rc > 0) {
                sent = 0; /* nobody to tell: just bounced */
            } else {
                log_error("queue_dsn_failed id=%s reason=\"%s\"", mid, err.msg);
                /* Try again later; the next failure bounces again. */
                for (size_t i = 0; i < bounce.n; i++) {
                    qrcpt *r = bl[i];
                    sched_release_busy(q, r);
                    if (!m->in_table || is_finished(r->state))
                        continue;
                    r->next_try = now + q->opt.retry_min_s * 1000;
                    queue_set_state(q, r, QUEUE_DEFERRED, 0, bounce.diag[i]);
                }
                sent = 1;
            }
        }
        if (!sent) {
            for (size_t i = 0; i < bounce.n; i++) {
                sched_release_busy(q, bl[i]);
                queue_set_state(q, bl[i], QUEUE_BOUNCED, 0, bounce.diag[i]);
            }
            need_sync = 1;
        }
        report_free(&tell, tell.n);
    }
    if (need_sync) {
        hv_err err;
        if (queue_sync_locked(q, &err) < 0)
            log_error("queue_sync_failed reason=\"%s\"", err.msg);
    }
    struct {
        report *r;
        enum qdsn_kind k;
    } notes[] = {{&success, QDSN_DELIVERED}, {&relayed, QDSN_RELAYED}, {&delayed, QDSN_DELAYED}};
    for (size_t i = 0; i < 3; i++) {
        if (!notes[i].r->n)
            continue;
        hv_err err;
        pthread_mutex_unlock(&q->mu);
        int rc = send_report(q, m, notes[i].k, notes[i].r, NULL, resolve, rctx, &err);
        pthread_mutex_lock(&q->mu);
        if (rc < 0)
            log_error("queue_dsn_failed id=%s reason=\"%s\"", mid, err.msg);
    }
    report_free(&bounce, bounce.n);
    report_free(&success, success.n);
    report_free(&relayed, relayed.n);
    report_free(&delayed, delayed.n);
    free(bl);
    m->busy--;
    if (!m->in_table && m->busy == 0)
        queue_msg_free(m);
    /* A destination's slot came free: someone else may go now. */
    pthread_cond_signal(&q->work_cv);
    pthread_mutex_unlock(&q->mu);
}
