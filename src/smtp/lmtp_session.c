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
 * (smtp_server.c) between deliveries; its mutex is held while it is used.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/log.h"
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
    int rc = p->postmaster ? -ENOENT : dir_address_normalize(p->addr, norm, &err);
    if (rc == 0)
        rc = dir_alias_resolve(d, norm, account, &err);
    else
        rc = -ENOENT;
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
    dir_account acc;
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
    if (acc.quota_bytes) {
        lmtp_account *a = lmtp_account_get(s->srv, account, &err);
        if (!a) {
            log_error("lmtp: session=%s account=%s store unavailable: %s", s->id, account,
                      err.msg);
            smtp_out(s, "451 4.3.0 <%s> mailbox unavailable; try again later", p->addr);
            return;
        }
        pthread_mutex_lock(&a->mu);
        uint64_t used = account_usage(a->st);
        pthread_mutex_unlock(&a->mu);
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
    uint32_t uid = 0;
    int dup = 0, rc;
    pthread_mutex_lock(&a->mu);
    store_account *st = a->st;
    uint64_t used = r->quota ? account_usage(st) : 0;
    store_mailbox_info mi;
    uint32_t inbox = 0;
    if (r->quota && used + tmp->len > r->quota) {
        rc = -EDQUOT;
    } else if (store_mailbox_find(st, "INBOX", &mi) == 0) {
        inbox = mi.id;
        rc = 0;
    } else {
        rc = store_mailbox_create(st, "INBOX", 0, &inbox, &err);
        if (rc == 0)
            store_subscribe(st, "INBOX", 1, NULL);
    }
    if (rc == 0) {
        int64_t now = (int64_t)time(NULL);
        if (r->did[0])
            rc = store_append_once(st, inbox, r->did, tmp->data, tmp->len, 0, now, &uid, &dup,
                                   &err);
        else
            rc = store_append(st, inbox, tmp->data, tmp->len, 0, now, &uid, &err);
    }
    pthread_mutex_unlock(&a->mu);
    lmtp_account_put(s->srv, a);
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

void lmtp_job_deliver(smtp_session *s)
{
    buf tmp;
    buf_init(&tmp);
    for (size_t i = 0; i < s->nrcpts; i++)
        deliver_one(s, &s->rcpts[i], &tmp);
    buf_free(&tmp);
    s->messages++;
    smtp_session_reset_tx(s);
}
