/*
 * lmtp_session.c - what LMTP does differently from SMTP (RFC 2033): the
 * recipient checks against the account (state, quota) and the delivery
 * into the account stores, with one reply per recipient.
 *
 * The replies are a contract with the queue runner (docs/smtp.md):
 *   250 2.1.5           delivered (or delivered before: same XHAVEN-DID)
 *   450 4.2.1 <a> account is <state>   account not active: the queue holds
 *   452 4.2.2           over quota: the queue defers
 *   451 4.3.0           store or directory trouble: the queue defers
 *   550 5.1.1           no such address: the queue bounces
 * Both jobs run on workers. A store handle stays open in the account cache
 * (smtp_server.c) between deliveries. Deliveries to one account that
 * arrive while another is being written are committed together in one
 * store batch: one fdatasync for all of them (the queue runs several
 * deliveries per account at once), which is what lets delivery keep up
 * with intake when mail converges on one account.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/log.h"
#include "repl/repl_sync.h"
#include "smtp/smtp_internal.h"

/* Bytes the account holds (the sum over its mailboxes), as quota counts. */
static uint64_t account_usage(store_account *st)
{
    uint64_t used = 0;
    size_t n = store_mailbox_count(st);
    store_mailbox_info mi;
    for (size_t i = 0; i < n; i++)
        if (store_mailbox_at(st, i, &mi) == 0)
            used += mi.total_size;
    return used;
}

/* Exclusive use of an account's store handle, outside its mutex. */
static void store_take(lmtp_account *a)
{
    pthread_mutex_lock(&a->mu);
    while (a->busy)
        pthread_cond_wait(&a->cv, &a->mu);
    a->busy = 1;
    pthread_mutex_unlock(&a->mu);
}

static void store_give(lmtp_account *a)
{
    pthread_mutex_lock(&a->mu);
    a->busy = 0;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

/* One delivery waiting for, or taken into, an account's next batch. */
typedef struct lmtp_delivery {
    const char *did;   /* "" for none */
    const void *data;
    size_t len;
    uint64_t quota;
    /* results */
    int done, rc, dup;
    uint32_t uid;
    uint64_t used;
    char why[512];
    struct lmtp_delivery *next;
} lmtp_delivery;

/* Writes a group of deliveries in one batch. Runs with the store taken. */
static void write_group(smtp_server *srv, lmtp_account *a, lmtp_delivery *list)
{
    hv_err err = {0};
    store_account *st = a->st;
    store_mailbox_info mi;
    uint32_t inbox = 0;
    store_batch *b = NULL;
    /* The batch takes the account lock and catches up with the log: the
     * lookups below then cost no reading (outside the lock, each would). */
    int rc = store_batch_begin(st, &b, &err);
    if (rc == 0 && store_mailbox_find(st, "INBOX", &mi) == 0) {
        inbox = mi.id;
    } else if (rc == 0) {
        store_batch_abort(b);
        b = NULL;
        rc = store_mailbox_create(st, "INBOX", 0, &inbox, &err);
        if (rc == 0)
            store_subscribe(st, "INBOX", 1, NULL);
        if (rc == 0)
            rc = store_batch_begin(st, &b, &err);
    }
    uint64_t used = 0;
    for (lmtp_delivery *d = list; d; d = d->next)
        if (d->quota) {
            used = account_usage(st);
            break;
        }
    int64_t now = (int64_t)time(NULL);
    for (lmtp_delivery *d = list; d; d = d->next) {
        d->used = used;
        if (rc < 0) {
            d->rc = rc;
            snprintf(d->why, sizeof(d->why), "%s", err.msg);
            continue;
        }
        if (d->quota && used + d->len > d->quota) {
            d->rc = -EDQUOT;
            continue;
        }
        hv_err e2 = {0};
        if (d->did[0])
            d->rc = store_batch_add_once(b, inbox, d->did, d->data, d->len, 0, now, &d->uid,
                                         &d->dup, &e2);
        else
            d->rc = store_batch_add(b, inbox, d->data, d->len, 0, now, &d->uid, &e2);
        if (d->rc < 0) {
            snprintf(d->why, sizeof(d->why), "%s", e2.msg);
        } else if (!d->dup) {
            used += d->len;
        }
    }
    if (b) {
        rc = store_batch_commit(b, &err);
        if (rc < 0) /* nothing of the batch is acknowledged */
            for (lmtp_delivery *d = list; d; d = d->next)
                if (d->rc == 0) {
                    d->rc = rc;
                    snprintf(d->why, sizeof(d->why), "%s", err.msg);
                }
    }
    /* Sync replication: success only once replicas hold the batch (also
     * for duplicates: a retry must not be acknowledged before the first
     * copy is replicated). One wait covers the whole batch. */
    int any = 0;
    for (lmtp_delivery *d = list; d; d = d->next)
        any |= d->rc == 0;
    if (any) {
        hv_err rerr = {0};
        repl_sync *rs = NULL;
        int degraded = 0;
        int wrc = lmtp_worker_repl_sync(srv, &rs, &rerr);
        if (wrc == 0 && rs)
            wrc = repl_sync_wait(rs, a->address, store_highest_modseq(st), &degraded, &rerr);
        if (wrc < 0)
            for (lmtp_delivery *d = list; d; d = d->next)
                if (d->rc == 0) {
                    d->rc = -EAGAIN;
                    snprintf(d->why, sizeof(d->why), "not confirmed by replicas: %.400s", rerr.msg);
                }
    }
}

/* Hands one delivery to the account's next batch and waits for it. */
static void deliver_grouped(smtp_server *srv, lmtp_account *a, lmtp_delivery *me)
{
    pthread_mutex_lock(&a->mu);
    me->next = NULL;
    *a->pending_tail = me;
    a->pending_tail = &me->next;
    while (!me->done) {
        if (a->busy) {
            pthread_cond_wait(&a->cv, &a->mu);
            continue;
        }
        /* The store is free: take everything waiting, ours included. */
        lmtp_delivery *list = a->pending;
        a->pending = NULL;
        a->pending_tail = &a->pending;
        a->busy = 1;
        pthread_mutex_unlock(&a->mu);
        write_group(srv, a, list);
        pthread_mutex_lock(&a->mu);
        for (lmtp_delivery *d = list, *nx; d; d = nx) {
            nx = d->next; /* d may be gone once done is seen */
            d->done = 1;
        }
        a->busy = 0;
        pthread_cond_broadcast(&a->cv);
    }
    pthread_mutex_unlock(&a->mu);
}

static void dir_trouble(smtp_session *s, const hv_err *err)
{
    log_error("lmtp: session=%s directory unavailable: %s", s->id, err->msg);
    smtp_out(s, "451 4.3.0 <%s> directory unavailable; try again later", s->cmd.path.addr);
}

void lmtp_job_rcpt(smtp_session *s)
{
    const smtp_path *p = &s->cmd.path;
    hv_err err = {0};
    dir *d = smtp_worker_dir(s->srv, &err);
    if (!d) {
        dir_trouble(s, &err);
        return;
    }
    char norm[DIR_ADDRESS_MAX + 1], account[DIR_ADDRESS_MAX + 1];
    dir_account acc;
    int rc = p->postmaster ? -ENOENT : dir_address_normalize(p->addr, norm, &err);
    /* Mail goes to the account itself far more often than to an alias:
     * look the account up first, which then answers in one query what
     * dir_alias_resolve and dir_account_get would answer in two. */
    int have_acc = 0;
    if (rc == 0) {
        rc = dir_account_get(d, norm, &acc, &err);
        if (rc == 0) {
            have_acc = 1;
            snprintf(account, sizeof(account), "%s", norm);
        } else if (rc == -ENOENT) {
            rc = dir_alias_resolve(d, norm, account, &err);
        }
    } else {
        rc = -ENOENT;
    }
    if (rc == -ENOENT) {
        log_info("lmtp: session=%s rcpt=<%s> refused reason=\"no such user\"", s->id, p->addr);
        smtp_out(s, "550 5.1.1 <%s> no such user here", p->addr);
        return;
    }
    if (rc == -ELOOP) {
        smtp_out(s, "550 5.4.6 <%s> alias loop", p->addr);
        return;
    }
    if (rc < 0) {
        dir_trouble(s, &err);
        return;
    }
    if (!have_acc)
        rc = dir_account_get(d, account, &acc, &err);
    if (rc == -ENOENT) {
        smtp_out(s, "550 5.1.1 <%s> no such user here", p->addr);
        return;
    }
    if (rc < 0) {
        dir_trouble(s, &err);
        return;
    }
    if (acc.state != DIR_STATE_ACTIVE) {
        log_info("lmtp: session=%s rcpt=<%s> account=%s refused reason=\"account is %s\"",
                 s->id, p->addr, account, dir_state_name(acc.state));
        smtp_out(s, "450 4.2.1 <%s> account is %s", p->addr, dir_state_name(acc.state));
        return;
    }
    const char *here = conf_get(s->srv->conf, "store_name");
    if (strcmp(acc.store, here) != 0) {
        /* Another store's account (moved away, or a sender with an old
         * route): filing it here would split the mailbox. Temporary: the
         * queue asks the directory again and goes to the right store. */
        log_info("lmtp: session=%s rcpt=<%s> account=%s refused reason=\"account lives on "
                 "store %s, this is %s\"", s->id, p->addr, account, acc.store, here);
        smtp_out(s, "451 4.3.0 <%s> account lives on store %s, not here", p->addr, acc.store);
        return;
    }
    if (acc.quota_bytes) {
        lmtp_account *a = lmtp_account_get(s->srv, account, &err);
        if (!a) {
            log_error("lmtp: session=%s account=%s store unavailable: %s", s->id, account,
                      err.msg);
            smtp_out(s, "451 4.3.0 <%s> mailbox unavailable; try again later", p->addr);
            return;
        }
        store_take(a);
        uint64_t used = account_usage(a->st);
        store_give(a);
        lmtp_account_put(s->srv, a);
        if (used + s->mail_size > acc.quota_bytes) {
            log_info("lmtp: session=%s rcpt=<%s> account=%s refused reason=\"over quota\" "
                     "used=%llu quota=%llu",
                     s->id, p->addr, account, (unsigned long long)used,
                     (unsigned long long)acc.quota_bytes);
            smtp_out(s, "452 4.2.2 <%s> mailbox full (over quota)", p->addr);
            return;
        }
    }
    smtp_rcpt *r = smtp_session_add_rcpt(s);
    snprintf(r->addr, sizeof(r->addr), "%s", p->addr);
    snprintf(r->account, sizeof(r->account), "%s", account);
    snprintf(r->did, sizeof(r->did), "%s", s->cmd.did);
    r->quota = acc.quota_bytes;
    s->state = SS_RCPT;
    smtp_out(s, "250 2.1.5 <%s> Ok", p->addr);
}

/* Delivers into one recipient's INBOX; writes that recipient's reply. */
static void deliver_one(smtp_session *s, smtp_rcpt *r, buf *tmp)
{
    hv_err err = {0};
    lmtp_account *a = lmtp_account_get(s->srv, r->account, &err);
    if (!a) {
        log_error("lmtp: session=%s rcpt=<%s> account=%s store unavailable: %s", s->id,
                  r->addr, r->account, err.msg);
        smtp_out(s, "451 4.3.0 <%s> %s", r->addr,
                   err.code == -EUCLEAN ? "mailbox needs repair; try again later"
                                        : "mailbox unavailable; try again later");
        return;
    }
    buf_reset(tmp);
    buf_printf(tmp, "Return-Path: <%s>\r\nDelivered-To: %s\r\n", s->mail_from, r->addr);
    buf_append(tmp, s->msg.data ? s->msg.data : (const uint8_t *)"", s->msg.len);
    lmtp_delivery dl = {.did = r->did, .data = tmp->data, .len = tmp->len, .quota = r->quota};
    deliver_grouped(s->srv, a, &dl);
    lmtp_account_put(s->srv, a);
    int rc = dl.rc, dup = dl.dup;
    uint32_t uid = dl.uid;
    uint64_t used = dl.used;
    snprintf(err.msg, sizeof(err.msg), "%s", dl.why);
    if (rc == -EDQUOT) {
        log_info("lmtp: session=%s from=<%s> rcpt=<%s> account=%s size=%zu deferred "
                 "reason=\"over quota\" used=%llu quota=%llu",
                 s->id, s->mail_from, r->addr, r->account, tmp->len, (unsigned long long)used,
                 (unsigned long long)r->quota);
        smtp_out(s, "452 4.2.2 <%s> mailbox full (over quota)", r->addr);
        return;
    }
    if (rc < 0) {
        log_error("lmtp: session=%s from=<%s> rcpt=<%s> account=%s size=%zu failed "
                  "reason=\"%s\"",
                  s->id, s->mail_from, r->addr, r->account, tmp->len, err.msg);
        if (rc == -ENOSPC)
            smtp_out(s, "452 4.3.1 <%s> insufficient system storage", r->addr);
        else if (rc == -EAGAIN)
            smtp_out(s, "451 4.3.0 <%s> stored here but not confirmed by replicas; try again "
                        "later", r->addr);
        else if (rc == -EFBIG)
            smtp_out(s, "552 5.3.4 <%s> message too big for the mailbox", r->addr);
        else
            smtp_out(s, "451 4.3.0 <%s> mailbox write failed; try again later", r->addr);
        return;
    }
    log_info("lmtp: session=%s from=<%s> rcpt=<%s> account=%s size=%zu uid=%u did=%s %s",
             s->id, s->mail_from, r->addr, r->account, tmp->len, uid, r->did[0] ? r->did : "-",
             dup ? "duplicate" : "delivered");
    if (dup)
        smtp_out(s, "250 2.1.5 <%s> already delivered (uid %u)", r->addr, uid);
    else
        smtp_out(s, "250 2.1.5 <%s> delivered (uid %u)", r->addr, uid);
}

/* Each worker's own delivery buffer, kept between deliveries: a fresh one
 * per message cost its page faults every time. Freed when the thread
 * ends; huge ones are let go at once. */
static pthread_key_t tmp_key;
static pthread_once_t tmp_once = PTHREAD_ONCE_INIT;

static void tmp_free(void *p)
{
    buf_free(p);
    free(p);
}

static void tmp_key_make(void) { pthread_key_create(&tmp_key, tmp_free); }

static buf *worker_tmp(void)
{
    pthread_once(&tmp_once, tmp_key_make);
    buf *b = pthread_getspecific(tmp_key);
    if (!b) {
        b = malloc(sizeof(*b));
        if (!b)
            abort();
        buf_init(b);
        pthread_setspecific(tmp_key, b);
    }
    return b;
}

void lmtp_job_deliver(smtp_session *s)
{
    buf *tmp = worker_tmp();
    for (size_t i = 0; i < s->nrcpts; i++)
        deliver_one(s, &s->rcpts[i], tmp);
    if (tmp->cap > (4u << 20))
        buf_free(tmp);
    s->messages++;
    smtp_session_reset_tx(s);
}
