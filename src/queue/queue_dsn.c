/*
 * queue_dsn.c - delivery status notifications (RFC 3464, RFC 3461).
 *
 * A DSN is a multipart/report (RFC 6522) with three parts: a few lines
 * for people, the machine-readable message/delivery-status (one block for
 * the message, one per recipient), and the original message, whole or
 * only its header (RET=HDRS, and always for delay and success reports).
 * For a message sent with SMTPUTF8 the global types of RFC 6533 are used,
 * since addresses may then be UTF-8.
 *
 * The DSN is queued as a new message from <> (so it is never bounced
 * itself: see queue_finish), which makes it as durable as any mail.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "queue/queue_internal.h"

static void rfc5322_date(int64_t ms, char *out, size_t len)
{
    static const char *days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *mons[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, len, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday], tm.tm_mday,
             mons[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* The header of a message: everything up to and including the empty line
 * (or all of it when it has no body). */
static size_t header_len(const char *data, size_t len)
{
    if (len >= 2 && data[0] == '\r' && data[1] == '\n')
        return 2;
    for (size_t i = 0; i + 3 < len; i++)
        if (data[i] == '\r' && data[i + 1] == '\n' && data[i + 2] == '\r' && data[i + 3] == '\n')
            return i + 4;
    return len;
}

/* Copies text into a header field value, dropping CR/LF (a remote reply
 * must not be able to add header fields). */
static void put_clean(buf *b, const char *s)
{
    for (; *s; s++)
        buf_put_u8(b, *s == '\r' || *s == '\n' ? ' ' : (uint8_t)*s);
}

static int is_ascii(const char *s)
{
    for (; s && *s; s++)
        if ((unsigned char)*s >= 0x80)
            return 0;
    return 1;
}

void qdsn_compose(buf *out, const char *hostname, int64_t now_ms, const qmsg *m,
                  const void *data, size_t len, enum qdsn_kind kind, int64_t retry_until,
                  const qdsn_rcpt *rcpts, size_t n, uint64_t dsn_id)
{
    char date[64], arrival[64], boundary[64], until[64];
    rfc5322_date(retry_until, until, sizeof(until));
    rfc5322_date(now_ms, date, sizeof(date));
    rfc5322_date(m->arrival, arrival, sizeof(arrival));
    snprintf(boundary, sizeof(boundary), "=_haven_dsn_%016llx_%016llx",
             (unsigned long long)m->id, (unsigned long long)dsn_id);
    int global = (m->flags & QMSG_SMTPUTF8) != 0;
    const char *subject = kind == QDSN_FAILED    ? "Undelivered Mail Returned to Sender"
                          : kind == QDSN_DELAYED ? "Delayed Mail (still being retried)"
                          : kind == QDSN_RELAYED ? "Mail Relayed (no further reports)"
                                                 : "Successful Mail Delivery Report";
    const char *action = kind == QDSN_FAILED    ? "failed"
                         : kind == QDSN_DELAYED ? "delayed"
                         : kind == QDSN_RELAYED ? "relayed"
                                                : "delivered";

    buf_printf(out, "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n", hostname);
    buf_append_str(out, "To: <");
    put_clean(out, m->mail_from);
    buf_append_str(out, ">\r\n");
    buf_printf(out, "Subject: %s\r\n", subject);
    buf_printf(out, "Date: %s\r\n", date);
    buf_printf(out, "Message-ID: <%016llx.dsn@%s>\r\n", (unsigned long long)dsn_id, hostname);
    buf_append_str(out, "Auto-Submitted: auto-replied\r\n");
    buf_append_str(out, "MIME-Version: 1.0\r\n");
    buf_printf(out,
               "Content-Type: multipart/report; report-type=%s;\r\n"
               "\tboundary=\"%s\"\r\n\r\n",
               global ? "global-delivery-status" : "delivery-status", boundary);
    buf_append_str(out, "This is a MIME-encapsulated message.\r\n\r\n");

    /* For people. */
    buf_printf(out, "--%s\r\n", boundary);
    buf_printf(out, "Content-Type: text/plain; charset=%s\r\n\r\n", global ? "utf-8" : "us-ascii");
    buf_printf(out, "This is the mail system at %s.\r\n\r\n", hostname);
    switch (kind) {
    case QDSN_FAILED:
        buf_append_str(out, "Your message could not be delivered to the recipients below.\r\n"
                            "It was not delivered to them and nobody will try again.\r\n");
        break;
    case QDSN_DELAYED:
        buf_append_str(out, "Your message could not be delivered yet to the recipients below.\r\n"
                            "It is still in the queue and will be tried again; you do not\r\n"
                            "need to send it again.\r\n");
        break;
    case QDSN_DELIVERED:
        buf_append_str(out, "Your message was delivered to the recipients below.\r\n");
        break;
    case QDSN_RELAYED:
        buf_append_str(out, "Your message was passed on to a server that does not send\r\n"
                            "delivery reports; you will get no further report.\r\n");
        break;
    }
    buf_append_str(out, "\r\n");
    for (size_t i = 0; i < n; i++) {
        buf_append_str(out, "<");
        put_clean(out, rcpts[i].address);
        buf_append_str(out, ">");
        if (rcpts[i].diagnostic && *rcpts[i].diagnostic) {
            buf_append_str(out, ": ");
            put_clean(out, rcpts[i].diagnostic);
        }
        buf_append_str(out, "\r\n");
    }
    buf_append_str(out, "\r\n");

    /* For machines. */
    buf_printf(out, "--%s\r\n", boundary);
    buf_printf(out, "Content-Type: message/%s\r\n\r\n",
               global ? "global-delivery-status" : "delivery-status");
    buf_printf(out, "Reporting-MTA: dns; %s\r\n", hostname);
    if (m->envid) {
        buf_append_str(out, "Original-Envelope-Id: ");
        put_clean(out, m->envid);
        buf_append_str(out, "\r\n");
    }
    buf_printf(out, "Arrival-Date: %s\r\n", arrival);
    for (size_t i = 0; i < n; i++) {
        const qdsn_rcpt *r = &rcpts[i];
        buf_append_str(out, "\r\n");
        buf_printf(out, "Final-Recipient: %s; ", !is_ascii(r->address) ? "utf-8" : "rfc822");
        put_clean(out, r->address);
        buf_append_str(out, "\r\n");
        if (r->orcpt && *r->orcpt) {
            /* As given in ORCPT: "addr-type;xtext". */
            buf_append_str(out, "Original-Recipient: ");
            put_clean(out, r->orcpt);
            buf_append_str(out, "\r\n");
        }
        buf_printf(out, "Action: %s\r\n", action);
        buf_printf(out, "Status: %s\r\n", r->status);
        if (r->remote_mta && *r->remote_mta) {
            buf_append_str(out, "Remote-MTA: dns; ");
            put_clean(out, r->remote_mta);
            buf_append_str(out, "\r\n");
        }
        if (r->diagnostic && *r->diagnostic) {
            buf_append_str(out, "Diagnostic-Code: smtp; ");
            put_clean(out, r->diagnostic);
            buf_append_str(out, "\r\n");
        }
        if (kind == QDSN_DELAYED)
            buf_printf(out, "Will-Retry-Until: %s\r\n", until);
    }
    buf_append_str(out, "\r\n");

    /* The original. */
    int whole = kind == QDSN_FAILED && !(m->flags & QMSG_RET_HDRS);
    size_t take = whole ? len : header_len(data, len);
    buf_printf(out, "--%s\r\n", boundary);
    if (whole)
        buf_printf(out, "Content-Type: message/%s\r\n", global ? "global" : "rfc822");
    else
        buf_printf(out, "Content-Type: %s\r\n",
                   global ? "message/global-headers" : "text/rfc822-headers");
    if (m->flags & QMSG_8BIT || global)
        buf_append_str(out, "Content-Transfer-Encoding: 8bit\r\n");
    buf_append_str(out, "\r\n");
    buf_append(out, data, take);
    if (take < 2 || memcmp((const char *)data + take - 2, "\r\n", 2) != 0)
        buf_append_str(out, "\r\n");
    buf_printf(out, "\r\n--%s--\r\n", boundary);
}
