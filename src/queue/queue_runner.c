/*
 * queue_runner.c - the delivery threads and the watcher.
 *
 * queue_delivery_threads threads each loop: pick the next recipient
 * (queue_sched.c, fair), deliver it, record the outcome (queue_outcome.c).
 * Local recipients go over LMTP to the lmtp service of the store holding
 * the account (queue_route.c: this node's own, listen:lmtp_port, or the
 * store's lmtp_address in the directory); each thread keeps one LMTP
 * connection per destination open between deliveries and has its own
 * directory handle, because handles are not thread-safe. Before an LMTP
 * delivery the account's state is checked: mail for an account that is
 * not active is held at once, without bothering the store.
 * Remote recipients of one message and domain go in one SMTP transaction
 * through smtp_route_lookup and the relay settings.
 *
 * The watcher thread polls dir_version every 200 ms; when it moves, every
 * account with held mail is looked up again, and held mail of accounts
 * that are active now is released (in arrival order, one at a time). While
 * a store's lmtp service does not answer, mail for it is held without
 * trying, and it is probed every few seconds (queue_route.c); when it
 * answers, the watcher releases that mail the same way (per destination: one store down
 * holds only its own accounts' mail). The watcher also syncs state
 * records that nobody waited for, and reclaims log segments.
 *
 * SECURITY: the runner trusts the directory and the lmtp services of the
 * stores it names (this instance's, or another node's of the same
 * directory). Replies of remote servers are untrusted text; they only
 * ever go into logs, state reasons and DSNs after CR/LF are removed.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dir/dir.h"
#include "lib/log.h"
#include "queue/queue_internal.h"
#include "queue/queue_route.h"
#include "smtp/smtp_client.h"

#define PROBE_INTERVAL_MS 3000 /* a store's lmtp service that did not answer */
#define WATCH_INTERVAL_MS 200
#define SYNC_INTERVAL_MS 1000
#define RECLAIM_INTERVAL_MS 5000
#define MAX_BATCH 100           /* recipients of one message per relay transaction */
#define LMTP_TIMEOUT_MS 120000
#define RELAY_TIMEOUT_MS 300000 /* RFC 5321 4.5.3.2 */

typedef struct qthread {
    struct queue_runner *run;
    pthread_t tid;
    dir *d;
    qroute_conns conns; /* LMTP connections, one per destination */
    int index;
    buf data;           /* message data, kept between deliveries */
} qthread;

struct queue_runner {
    queue *q;
    char hostname[256];
    qroute *route; /* which store's lmtp service, and which answer */
    char *routes;
    enum smtp_client_tls relay_tls;
    int nthreads;
    qthread *threads;
    qthread watcher;
    int stop;
    void *ctl; /* queue_ctl.c's server */
};


static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* DSN recipients: a local account (1, account filled), remote (0), or an
 * unknown address in a hosted domain (-1). */
static int resolve_sender(void *ctx, const char *address, char account[256])
{
    qthread *t = ctx;
    char out[DIR_ADDRESS_MAX + 1];
    hv_err err;
    if (dir_alias_resolve(t->d, address, out, &err) == 0) {
        snprintf(account, 256, "%s", out);
        return 1;
    }
    const char *at = strrchr(address, '@');
    if (at && dir_domain_exists(t->d, at + 1, &err) == 0)
        return -1;
    return 0;
}

static void finish_one(qthread *t, qrcpt *r, enum qoutcome out, int kind, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void finish_one(qthread *t, qrcpt *r, enum qoutcome out, int kind, const char *fmt, ...)
{
    qresult res = {.out = out, .hold_kind = kind};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res.reason, sizeof(res.reason), fmt, ap);
    va_end(ap);
    queue_finish(t->run->q, &r, &res, 1, resolve_sender, t);
}

/* The envelope of one delivery, copied out under the lock so the message
 * may change (a copy forward, an operator) while we talk to a server. */
typedef struct job {
    char id[QUEUE_ID_LEN + 1];
    char *mail_from;
    uint32_t flags;
    char *envid;
} job;

static void job_init(job *j, qmsg *m)
{
    queue_format_id(m->id, j->id);
    j->mail_from = strdup(m->mail_from);
    j->flags = m->flags;
    j->envid = m->envid ? strdup(m->envid) : NULL;
}

static void job_free(job *j)
{
    free(j->mail_from);
    free(j->envid);
}

static void deliver_local(qthread *t, qrcpt *r)
{
    struct queue_runner *run = t->run;
    queue *q = run->q;
    job j;
    pthread_mutex_lock(&q->mu);
    job_init(&j, r->msg);
    char *account = strdup(r->account);
    uint32_t idx = r->idx;
    pthread_mutex_unlock(&q->mu);

    hv_err err;
    /* The thread's buffer, kept between deliveries: a fresh one per
     * message cost its page faults every time. */
    buf data = t->data;
    buf_reset(&data);
    dir_account a = {0};
    int rc = dir_account_get(t->d, account, &a, &err);
    if (rc == 0 && a.state != DIR_STATE_ACTIVE) {
        finish_one(t, r, QOUT_HELD, QHOLD_ACCOUNT, "account is %s", dir_state_name(a.state));
        goto out;
    }
    if (rc < 0 && rc != -ENOENT) {
        finish_one(t, r, QOUT_DEFERRED, 0, "451 4.3.0 directory error: %s", err.msg);
        goto out;
    }
    /* The lmtp service of the account's store; an account that is gone
     * is our own lmtp service's to refuse. */
    qroute_dest dst = *qroute_local(run->route);
    if (rc == 0 && qroute_lookup(run->route, t->d, &a, &dst, &err) < 0) {
        finish_one(t, r, QOUT_DEFERRED, 0, "451 4.3.0 directory error: %s", err.msg);
        goto out;
    }
    int down = qroute_is_down(run->route, &dst);
    if (down) {
        finish_one(t, r, QOUT_HELD, QHOLD_STORE, "store not answering: %s at %s", dst.store,
                   dst.key);
        qroute_held(run->route, &dst);
        goto out;
    }
    /* Older held mail of this account goes first, in arrival order. */
    pthread_mutex_lock(&q->mu);
    qdest *d = r->dest;
    if (d && d->held && !d->releasing &&
        sched_release_dest(q, d, 1u << QHOLD_ACCOUNT | (down ? 0 : 1u << QHOLD_STORE))) {
        /* r joins the released mail at its place in arrival order. */
        sched_release_busy(q, r);
        sched_make_ready(q, r);
        pthread_mutex_unlock(&q->mu);
        goto out;
    }
    pthread_mutex_unlock(&q->mu);

    rc = queue_read_data(q, r->msg, &data, &err);
    if (rc < 0) {
        log_error("queue_read_failed id=%s reason=\"%s\"", j.id, err.msg);
        finish_one(t, r, QOUT_DEFERRED, 0, "451 4.3.0 %.480s", err.msg);
        goto out;
    }
    char did[QUEUE_ID_LEN + 32];
    snprintf(did, sizeof(did), "XHAVEN-DID=%s-%u", j.id, idx);
    const char *rcpts[1] = {account};
    const char *params[1] = {did};
    smtp_reply res;
    int rerouted = 0;
deliver:
    for (int attempt = 0; attempt < 2; attempt++) {
        smtp_client *lmtp;
        int reused;
        if (qroute_conn_get(run->route, &t->conns, &dst, &lmtp, &reused, &err) < 0) {
            qroute_mark_down(run->route, &dst, err.msg);
            finish_one(t, r, QOUT_HELD, QHOLD_STORE, "store not answering: %s", err.msg);
            goto out;
        }
        char mparams[64] = "";
        if ((j.flags & QMSG_8BIT) && smtp_client_has(lmtp, "8BITMIME"))
            snprintf(mparams, sizeof(mparams), "BODY=8BITMIME");
        if ((j.flags & QMSG_SMTPUTF8) && smtp_client_has(lmtp, "SMTPUTF8"))
            snprintf(mparams + strlen(mparams), sizeof(mparams) - strlen(mparams), "%sSMTPUTF8",
                     mparams[0] ? " " : "");
        smtp_tx tx = {
            .mail_from = j.mail_from,
            .mail_params = mparams[0] ? mparams : NULL,
            .rcpts = rcpts,
            .rcpt_params = smtp_client_has(lmtp, "XHAVEN-DID") ? params : NULL,
            .nrcpts = 1,
            .data = data.data,
            .len = data.len,
        };
        memset(&res, 0, sizeof(res));
        rc = smtp_client_send(lmtp, &tx, &res, &err);
        if (rc < 0) {
            qroute_conn_drop(&t->conns, &dst);
            /* A kept connection the server closed meanwhile: once more on a
             * fresh one (the delivery id makes a repeat harmless). */
            if (res.code == 0 && reused)
                continue;
        }
        break;
    }
    if (res.code >= 400 && res.code < 500 && !rerouted) {
        /* A store refuses writes to an account it is handing over (the
         * account's fence, docs/move.md). The directory has changed by
         * then: hold while it is moving (released when active), or go to
         * its new store at once, instead of backing off for minutes. */
        dir_account now;
        if (dir_account_get(t->d, account, &now, &err) == 0) {
            if (now.state != DIR_STATE_ACTIVE) {
                finish_one(t, r, QOUT_HELD, QHOLD_ACCOUNT, "account is %s",
                           dir_state_name(now.state));
                goto out;
            }
            if (strcmp(now.store, a.store) != 0) {
                a = now;
                rerouted = 1;
                if (qroute_lookup(run->route, t->d, &a, &dst, &err) == 0)
                    goto deliver;
            }
        }
    }
    qresult out;
    queue_reply_result(1, res.code, res.enhanced, res.code ? res.text : err.msg, &out);
    if (res.code == 0)
        qroute_mark_down(run->route, &dst, err.msg);
    queue_finish(q, &r, &out, 1, resolve_sender, t);
out:
    if (data.cap > (4u << 20))
        buf_free(&data);
    t->data = data;
    free(account);
    job_free(&j);
}

/* xtext (RFC 3461 4) is already how ENVID and ORCPT arrive; NOTIFY we
 * write from the bits. */
static void notify_param(unsigned n, char *out, size_t len)
{
    if (n & QUEUE_NOTIFY_NEVER) {
        snprintf(out, len, "NOTIFY=NEVER");
        return;
    }
    snprintf(out, len, "NOTIFY=%s%s%s%s%s", n & QUEUE_NOTIFY_SUCCESS ? "SUCCESS" : "",
             (n & QUEUE_NOTIFY_SUCCESS) && (n & (QUEUE_NOTIFY_FAILURE | QUEUE_NOTIFY_DELAY)) ? "," : "",
             n & QUEUE_NOTIFY_FAILURE ? "FAILURE" : "",
             (n & QUEUE_NOTIFY_FAILURE) && (n & QUEUE_NOTIFY_DELAY) ? "," : "",
             n & QUEUE_NOTIFY_DELAY ? "DELAY" : "");
}

static void deliver_remote(qthread *t, qrcpt *first)
{
    struct queue_runner *run = t->run;
    queue *q = run->q;
    qrcpt *rs[MAX_BATCH];
    job j;
    char domain[300];
    char *addr[MAX_BATCH], *rparam[MAX_BATCH];
    unsigned notify[MAX_BATCH];
    pthread_mutex_lock(&q->mu);
    rs[0] = first;
    size_t n = 1 + sched_take_siblings(q, first, rs + 1, MAX_BATCH - 1);
    job_init(&j, first->msg);
    snprintf(domain, sizeof(domain), "%s", first->dest->key + 1);
    for (size_t i = 0; i < n; i++) {
        addr[i] = strdup(rs[i]->address);
        notify[i] = rs[i]->notify;
        char np[64];
        notify_param(rs[i]->notify, np, sizeof(np));
        size_t need = strlen(np) + (rs[i]->orcpt ? strlen(rs[i]->orcpt) + 8 : 0) + 2;
        rparam[i] = malloc(need);
        if (!rparam[i])
            abort();
        if (rs[i]->notify && rs[i]->orcpt)
            snprintf(rparam[i], need, "%s ORCPT=%s", np, rs[i]->orcpt);
        else if (rs[i]->notify)
            snprintf(rparam[i], need, "%s", np);
        else if (rs[i]->orcpt)
            snprintf(rparam[i], need, "ORCPT=%s", rs[i]->orcpt);
        else
            rparam[i][0] = 0;
    }
    pthread_mutex_unlock(&q->mu);

    qresult res[MAX_BATCH];
    memset(res, 0, sizeof(res));
    hv_err err;
    smtp_hop hops[16];
    int nh = smtp_route_lookup(domain, run->routes, hops, 16, &err);
    buf data;
    buf_init(&data);
    if (nh == -ENOENT) {
        for (size_t i = 0; i < n; i++) {
            res[i].out = QOUT_BOUNCED;
            snprintf(res[i].reason, sizeof(res[i].reason), "550 5.1.2 %.480s", err.msg);
        }
        goto done;
    }
    if (nh < 0) {
        for (size_t i = 0; i < n; i++) {
            res[i].out = QOUT_DEFERRED;
            snprintf(res[i].reason, sizeof(res[i].reason), "451 4.4.3 %.480s", err.msg);
        }
        goto done;
    }
    int rc = queue_read_data(q, first->msg, &data, &err);
    if (rc < 0) {
        for (size_t i = 0; i < n; i++) {
            res[i].out = QOUT_DEFERRED;
            snprintf(res[i].reason, sizeof(res[i].reason), "451 4.3.0 %.480s", err.msg);
        }
        goto done;
    }
    char last_err[512] = "no route";
    int done_ok = 0;
    for (int h = 0; h < nh && !done_ok; h++) {
        smtp_client_opts o = {.lmtp = 0, .tls = run->relay_tls, .helo = run->hostname,
                              .timeout_ms = RELAY_TIMEOUT_MS};
        if (hops[h].port == 465)
            o.tls = SMTP_TLS_IMPLICIT;
        smtp_client *c;
        if (smtp_client_connect(hops[h].host, hops[h].port, &o, &c, &err) < 0) {
            snprintf(last_err, sizeof(last_err), "%.200s:%d: %.280s", hops[h].host, hops[h].port,
                     err.msg);
            continue;
        }
        done_ok = 1;
        if ((j.flags & QMSG_SMTPUTF8) && !smtp_client_has(c, "SMTPUTF8")) {
            for (size_t i = 0; i < n; i++) {
                res[i].out = QOUT_BOUNCED;
                snprintf(res[i].reason, sizeof(res[i].reason),
                         "550 5.6.7 %.255s does not support SMTPUTF8", hops[h].host);
            }
            smtp_client_close(c);
            break;
        }
        int dsn = smtp_client_has(c, "DSN");
        char mparams[600] = "";
        size_t ml = 0;
        if ((j.flags & QMSG_8BIT) && smtp_client_has(c, "8BITMIME"))
            ml += (size_t)snprintf(mparams + ml, sizeof(mparams) - ml, "BODY=8BITMIME ");
        if (j.flags & QMSG_SMTPUTF8)
            ml += (size_t)snprintf(mparams + ml, sizeof(mparams) - ml, "SMTPUTF8 ");
        if (dsn && j.mail_from[0]) {
            ml += (size_t)snprintf(mparams + ml, sizeof(mparams) - ml, "RET=%s ",
                                   j.flags & QMSG_RET_HDRS ? "HDRS" : "FULL");
            if (j.envid && strlen(j.envid) < 200)
                ml += (size_t)snprintf(mparams + ml, sizeof(mparams) - ml, "ENVID=%s ", j.envid);
        }
        if (ml && mparams[ml - 1] == ' ')
            mparams[--ml] = 0;
        const char *rp[MAX_BATCH];
        for (size_t i = 0; i < n; i++)
            rp[i] = rparam[i];
        smtp_tx tx = {
            .mail_from = j.mail_from,
            .mail_params = ml ? mparams : NULL,
            .rcpts = (const char *const *)addr,
            .rcpt_params = dsn ? rp : NULL,
            .nrcpts = n,
            .data = data.data,
            .len = data.len,
        };
        smtp_reply rep[MAX_BATCH];
        memset(rep, 0, sizeof(rep));
        smtp_client_send(c, &tx, rep, &err);
        for (size_t i = 0; i < n; i++) {
            queue_reply_result(0, rep[i].code, rep[i].enhanced,
                               rep[i].code ? rep[i].text : err.msg, &res[i]);
            if (res[i].out == QOUT_DELIVERED && !dsn && (notify[i] & QUEUE_NOTIFY_SUCCESS))
                res[i].out = QOUT_RELAYED;
            if (rep[i].code) {
                size_t rl = strlen(res[i].reason);
                snprintf(res[i].reason + rl, sizeof(res[i].reason) - rl, " (%.200s)",
                         hops[h].host);
            }
        }
        smtp_client_close(c);
    }
    if (!done_ok)
        for (size_t i = 0; i < n; i++) {
            res[i].out = QOUT_DEFERRED;
            snprintf(res[i].reason, sizeof(res[i].reason), "451 4.4.1 %.480s", last_err);
        }
done:
    queue_finish(q, rs, res, n, resolve_sender, t);
    for (size_t i = 0; i < n; i++) {
        free(addr[i]);
        free(rparam[i]);
    }
    buf_free(&data);
    job_free(&j);
}

static void *delivery_main(void *arg)
{
    qthread *t = arg;
    struct queue_runner *run = t->run;
    queue *q = run->q;
    pthread_mutex_lock(&q->mu);
    while (!run->stop) {
        int64_t now = queue_now(q);
        qrcpt *r = sched_pick(q, now);
        if (!r) {
            int64_t due = q->heap_len ? q->heap[0]->next_try : INT64_MAX;
            int64_t wait = due == INT64_MAX ? 1000 : due - now;
            if (wait > 1000)
                wait = 1000;
            if (wait < 1)
                wait = 1;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += wait / 1000;
            ts.tv_nsec += (wait % 1000) * 1000000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&q->work_cv, &q->mu, &ts);
            continue;
        }
        int local = r->account != NULL;
        pthread_mutex_unlock(&q->mu);
        if (local)
            deliver_local(t, r);
        else
            deliver_remote(t, r);
        pthread_mutex_lock(&q->mu);
    }
    pthread_mutex_unlock(&q->mu);
    qroute_conns_close(&t->conns);
    buf_free(&t->data);
    return NULL;
}

/* ---------- the watcher ---------- */

/* Looks every account with held mail up again; releases those active now
 * (and, while their store answers, mail held because it did not). */
static void recheck_held(struct queue_runner *run, dir *d)
{
    queue *q = run->q;
    pthread_mutex_lock(&q->mu);
    size_t n = 0;
    char **keys = malloc((q->ndests ? q->ndests : 1) * sizeof(char *));
    if (!keys)
        abort();
    for (size_t i = 0; i < q->dtab_cap; i++)
        for (qdest *x = q->dtab[i]; x; x = x->hnext)
            if (!x->remote && x->held)
                keys[n++] = strdup(x->key);
    pthread_mutex_unlock(&q->mu);
    for (size_t i = 0; i < n; i++) {
        dir_account a;
        hv_err err;
        int rc = dir_account_get(d, keys[i], &a, &err);
        if (rc == 0 && a.state == DIR_STATE_ACTIVE) {
            /* Its store now, which may not be the one its mail waited for. */
            qroute_dest dst;
            int up = qroute_lookup(run->route, d, &a, &dst, &err) == 0 &&
                     !qroute_is_down(run->route, &dst);
            unsigned kinds = 1u << QHOLD_ACCOUNT | (up ? 1u << QHOLD_STORE : 0);
            pthread_mutex_lock(&q->mu);
            qdest *x = sched_dest_find(q, keys[i]);
            size_t k = x ? sched_release_dest(q, x, kinds) : 0;
            pthread_mutex_unlock(&q->mu);
            if (k)
                log_info("queue_released account=%s messages=%zu", keys[i], k);
        }
        free(keys[i]);
    }
    free(keys);
}

static void *watcher_main(void *arg)
{
    qthread *t = arg;
    struct queue_runner *run = t->run;
    queue *q = run->q;
    uint64_t seen = UINT64_MAX;
    int64_t last_sync = mono_ms(), last_reclaim = mono_ms();
    for (;;) {
        pthread_mutex_lock(&q->mu);
        int stop = run->stop;
        pthread_mutex_unlock(&q->mu);
        if (stop)
            break;
        hv_err err;
        uint64_t v;
        if (dir_version(t->d, &v, &err) == 0 && v != seen) {
            seen = v;
            recheck_held(run, t->d);
        }
        /* Stores whose lmtp service answers again get their held mail. */
        if (qroute_recheck(run->route))
            recheck_held(run, t->d);
        int64_t now = mono_ms();
        if (now - last_sync >= SYNC_INTERVAL_MS) {
            last_sync = now;
            pthread_mutex_lock(&q->mu);
            if (q->synced < q->written && !q->broken && queue_sync_locked(q, &err) < 0)
                log_error("queue_sync_failed reason=\"%s\"", err.msg);
            pthread_mutex_unlock(&q->mu);
        }
        if (now - last_reclaim >= RECLAIM_INTERVAL_MS) {
            last_reclaim = now;
            if (qlog_reclaim(q, &err) < 0)
                log_error("queue_reclaim_failed reason=\"%s\"", err.msg);
        }
        sleep_ms(WATCH_INTERVAL_MS);
    }
    return NULL;
}

/* ---------- start / stop ---------- */

static void runner_free(struct queue_runner *run)
{
    for (int i = 0; i < run->nthreads; i++)
        if (run->threads[i].d)
            dir_close(run->threads[i].d);
    if (run->watcher.d)
        dir_close(run->watcher.d);
    free(run->threads);
    free(run->routes);
    qroute_free(run->route);
    free(run);
}

int queue_runner_start(queue *q, const conf *c, hv_err *err)
{
    if (q->runner)
        return hv_err_set(err, -EALREADY, "queue runner already running");
    struct queue_runner *run = calloc(1, sizeof(*run));
    if (!run)
        abort();
    run->q = q;
    snprintf(run->hostname, sizeof(run->hostname), "%s", conf_get(c, "hostname"));
    run->route = qroute_new(c, LMTP_TIMEOUT_MS, PROBE_INTERVAL_MS, err);
    if (!run->route) {
        free(run);
        return err ? err->code : -ENOMEM;
    }
    run->routes = strdup(conf_get(c, "relay_routes"));
    const char *tls = conf_get(c, "relay_tls");
    run->relay_tls = strcmp(tls, "none") == 0       ? SMTP_TLS_NONE
                     : strcmp(tls, "required") == 0 ? SMTP_TLS_REQUIRED
                                                    : SMTP_TLS_OPPORTUNISTIC;
    run->nthreads = (int)conf_get_int(c, "queue_delivery_threads");
    if (run->nthreads < 1)
        run->nthreads = 1;
    if (run->nthreads > 1024)
        run->nthreads = 1024;
    int acap = (int)conf_get_int(c, "queue_account_concurrency");
    int dcap = (int)conf_get_int(c, "queue_domain_concurrency");
    run->threads = calloc((size_t)run->nthreads, sizeof(qthread));
    if (!run->threads)
        abort();
    int rc = 0;
    for (int i = 0; i < run->nthreads && rc == 0; i++) {
        run->threads[i].run = run;
        run->threads[i].index = i;
        rc = dir_open_conf(c, &run->threads[i].d, err);
    }
    run->watcher.run = run;
    run->watcher.index = -1;
    if (rc == 0)
        rc = dir_open_conf(c, &run->watcher.d, err);
    if (rc < 0) {
        runner_free(run);
        return rc;
    }
    char rundir[4096], path[4200];
    conf_path(c, "run_dir", rundir, sizeof(rundir));
    snprintf(path, sizeof(path), "%s/queue.sock", rundir);
    run->ctl = queue_ctl_start(q, path, err);
    if (!run->ctl) {
        runner_free(run);
        return err ? err->code : -EIO;
    }
    pthread_mutex_lock(&q->mu);
    q->runner = run;
    q->account_cap = acap > 0 ? acap : 1;
    q->domain_cap = dcap > 0 ? dcap : 1;
    snprintf(q->hostname, sizeof(q->hostname), "%s", run->hostname);
    pthread_mutex_unlock(&q->mu);
    for (int i = 0; i < run->nthreads; i++)
        pthread_create(&run->threads[i].tid, NULL, delivery_main, &run->threads[i]);
    pthread_create(&run->watcher.tid, NULL, watcher_main, &run->watcher);
    log_info("queue_runner_start threads=%d store=%s lmtp=%s account_concurrency=%d "
             "domain_concurrency=%d", run->nthreads, qroute_local(run->route)->store,
             qroute_local(run->route)->key, q->account_cap, q->domain_cap);
    return 0;
}

void queue_runner_stop(queue *q)
{
    struct queue_runner *run = q->runner;
    if (!run)
        return;
    queue_ctl_stop(run->ctl);
    pthread_mutex_lock(&q->mu);
    run->stop = 1;
    pthread_cond_broadcast(&q->work_cv);
    pthread_mutex_unlock(&q->mu);
    for (int i = 0; i < run->nthreads; i++)
        pthread_join(run->threads[i].tid, NULL);
    pthread_join(run->watcher.tid, NULL);
    pthread_mutex_lock(&q->mu);
    q->runner = NULL;
    hv_err err;
    if (!q->broken && queue_sync_locked(q, &err) < 0)
        log_error("queue_sync_failed reason=\"%s\"", err.msg);
    pthread_mutex_unlock(&q->mu);
    runner_free(run);
}
