/*
 * imap_cmd_table.c - which commands exist, in which states, and the
 * capability list that advertises them; flag names to bits and back.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "imap/imap_internal.h"

#define ANY (ST(IMAP_NOT_AUTH) | ST(IMAP_AUTH) | ST(IMAP_SELECTED))
#define AUTHED (ST(IMAP_AUTH) | ST(IMAP_SELECTED))
#define SEL ST(IMAP_SELECTED)

static const imap_cmd_def commands[] = {
    {"CAPABILITY", ANY, 0, imap_cmd_capability},
    {"NOOP", ANY, 0, imap_cmd_noop},
    {"LOGOUT", ANY, 0, imap_cmd_logout},
    {"ID", ANY, 0, imap_cmd_id},
    {"STARTTLS", ST(IMAP_NOT_AUTH), 0, imap_cmd_starttls},
    {"LOGIN", ST(IMAP_NOT_AUTH), 0, imap_cmd_login},
    {"AUTHENTICATE", ST(IMAP_NOT_AUTH), 0, imap_cmd_authenticate},
    {"ENABLE", AUTHED, 1, imap_cmd_enable},
    {"NAMESPACE", AUTHED, 1, imap_cmd_namespace},
    {"SELECT", AUTHED, 1, imap_cmd_select},
    {"EXAMINE", AUTHED, 1, imap_cmd_select},
    {"CREATE", AUTHED, 1, imap_cmd_create},
    {"DELETE", AUTHED, 1, imap_cmd_delete},
    {"RENAME", AUTHED, 1, imap_cmd_rename},
    {"SUBSCRIBE", AUTHED, 1, imap_cmd_subscribe},
    {"UNSUBSCRIBE", AUTHED, 1, imap_cmd_subscribe},
    {"LIST", AUTHED, 1, imap_cmd_list},
    {"LSUB", AUTHED, 1, imap_cmd_list},
    {"STATUS", AUTHED, 1, imap_cmd_status},
    {"APPEND", AUTHED, 1, imap_cmd_append},
    {"GETQUOTA", AUTHED, 1, imap_cmd_getquota},
    {"GETQUOTAROOT", AUTHED, 1, imap_cmd_getquota},
    {"CHECK", SEL, 1, imap_cmd_check},
    {"CLOSE", SEL, 1, imap_cmd_close},
    {"UNSELECT", SEL, 1, imap_cmd_unselect},
    {"EXPUNGE", SEL, 1, imap_cmd_expunge},
    {"UID EXPUNGE", SEL, 1, imap_cmd_expunge},
    {"FETCH", SEL, 1, imap_cmd_fetch},
    {"UID FETCH", SEL, 1, imap_cmd_fetch},
    {"STORE", SEL, 1, imap_cmd_store},
    {"UID STORE", SEL, 1, imap_cmd_store},
    {"COPY", SEL, 1, imap_cmd_copy},
    {"UID COPY", SEL, 1, imap_cmd_copy},
    {"MOVE", SEL, 1, imap_cmd_copy},
    {"UID MOVE", SEL, 1, imap_cmd_copy},
    {"SEARCH", SEL, 1, imap_cmd_search},
    {"UID SEARCH", SEL, 1, imap_cmd_search},
    {"SORT", SEL, 1, imap_cmd_sort},
    {"UID SORT", SEL, 1, imap_cmd_sort},
    {"THREAD", SEL, 1, imap_cmd_thread},
    {"UID THREAD", SEL, 1, imap_cmd_thread},
    {"IDLE", AUTHED, 1, imap_cmd_idle},
    {NULL, 0, 0, NULL},
};

const imap_cmd_def *imap_cmd_find(const char *name)
{
    for (const imap_cmd_def *d = commands; d->name; d++)
        if (strcasecmp(d->name, name) == 0)
            return d;
    return NULL;
}

const char *imap_capabilities(imap_session *s)
{
    static __thread char caps[1024];
    const char *base = "IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UNSELECT "
                       "UIDPLUS MOVE CHILDREN SPECIAL-USE LIST-EXTENDED LIST-STATUS ESEARCH "
                       "CONDSTORE QRESYNC OBJECTID STATUS=SIZE QUOTA SORT SORT=DISPLAY ESORT "
                       "THREAD=ORDEREDSUBJECT THREAD=REFERENCES";
    if (s->state == IMAP_NOT_AUTH) {
        int clear_ok = s->tls || (s->is_loopback && s->srv->plaintext_loopback);
        snprintf(caps, sizeof(caps), "%s%s%s", base, s->tls ? "" : " STARTTLS",
                 clear_ok ? " AUTH=PLAIN" : " LOGINDISABLED");
    } else {
        snprintf(caps, sizeof(caps), "%s APPENDLIMIT=%llu", base,
                 (unsigned long long)s->srv->lim.max_message);
    }
    return caps;
}

static const char *sys_flags[] = {"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"};

int imap_flags_parse(imap_session *s, const imap_arg *list, size_t n, uint64_t *flags,
                     int create_keywords)
{
    *flags = 0;
    for (size_t i = 0; i < n; i++) {
        if (list[i].type != IMAP_ARG_ATOM)
            return -1;
        const char *f = list[i].str;
        if (f[0] == '\\') {
            int k;
            for (k = 0; k < 5; k++)
                if (strcasecmp(f, sys_flags[k]) == 0)
                    break;
            if (k < 5)
                *flags |= 1ull << k;
            else if (strcasecmp(f, "\\Recent") != 0)
                return -1;
            continue;
        }
        for (const char *p = f; *p; p++)
            if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f || strchr("(){%*\"\\]", *p))
                return -1;
        uint64_t bit;
        hv_err err;
        int rc = store_keyword(s->acct->st, f, create_keywords, &bit, &err);
        if (rc == 0)
            *flags |= bit;
        else if (rc != -ENOENT)
            return -2; /* no room for more keywords */
    }
    return 0;
}

void imap_flags_format(imap_session *s, buf *b, uint64_t flags, int recent)
{
    size_t start = b->len;
    for (int k = 0; k < 5; k++)
        if (flags & (1ull << k)) {
            if (b->len > start)
                buf_put_u8(b, ' ');
            buf_append_str(b, sys_flags[k]);
        }
    for (int k = STORE_KEYWORD_FIRST; k < 64; k++)
        if (flags & (1ull << k)) {
            const char *name = store_keyword_name(s->acct->st, 1ull << k);
            if (!name)
                continue;
            if (b->len > start)
                buf_put_u8(b, ' ');
            buf_append_str(b, name);
        }
    if (recent) {
        if (b->len > start)
            buf_put_u8(b, ' ');
        buf_append_str(b, "\\Recent");
    }
    if (b->len == start)
        buf_append(b, "", 0); /* an empty, NUL-terminated string */
}

int imap_arg_number(const imap_arg *a, uint64_t *out)
{
    if (!a || a->type != IMAP_ARG_ATOM || !a->str || !a->str[0] || a->len > 20)
        return -1;
    uint64_t v = 0;
    for (const char *p = a->str; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        uint64_t d = (uint64_t)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}
