/*
 * imap_cmd_message.c - commands that change messages: APPEND, STORE,
 * COPY/MOVE, EXPUNGE (and their UID forms), with UIDPLUS answers
 * (APPENDUID, COPYUID) and CONDSTORE's UNCHANGEDSINCE / MODIFIED.
 *
 * Every change is one durable store call; the OK goes out only after it
 * returned, i.e. after fdatasync.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "imap/imap_internal.h"

static const char *astr(const imap_command *c, size_t i)
{
    if (i >= c->nargs || (c->args[i].type != IMAP_ARG_ATOM && c->args[i].type != IMAP_ARG_STRING))
        return NULL;
    return c->args[i].str;
}

/* "dd-Mon-yyyy hh:mm:ss +zzzz" (RFC 3501 date-time); -1 if malformed. */
static int64_t parse_date_time(const char *s)
{
    static const char *mon[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    int d, y, hh, mm, ss, zone;
    char m[4], sign;
    while (*s == ' ')
        s++;
    if (sscanf(s, "%2d-%3s-%4d %2d:%2d:%2d %c%4d", &d, m, &y, &hh, &mm, &ss, &sign, &zone) != 8)
        return -1;
    int mi;
    for (mi = 0; mi < 12; mi++)
        if (strcasecmp(m, mon[mi]) == 0)
            break;
    if (mi == 12 || d < 1 || d > 31 || hh > 23 || mm > 59 || ss > 60 || (sign != '+' && sign != '-'))
        return -1;
    struct tm tm = {0};
    tm.tm_year = y - 1900;
    tm.tm_mon = mi;
    tm.tm_mday = d;
    tm.tm_hour = hh;
    tm.tm_min = mm;
    tm.tm_sec = ss;
    int64_t t = (int64_t)timegm(&tm);
    int off = (zone / 100) * 3600 + (zone % 100) * 60;
    return sign == '+' ? t - off : t + off;
}

void imap_cmd_append(imap_session *s, const imap_command *c)
{
    const char *name = astr(c, 0);
    size_t i = 1;
    uint64_t flags = 0;
    int64_t idate = (int64_t)time(NULL);
    if (!name || c->nargs < 2) {
        imap_tagged(s, "BAD", "usage: APPEND mailbox [(flags)] [date-time] literal");
        return;
    }
    if (c->args[i].type == IMAP_ARG_LIST) {
        int rc = imap_flags_parse(s, c->args[i].list, c->args[i].nlist, &flags, 1);
        if (rc < 0) {
            imap_tagged(s, rc == -2 ? "NO" : "BAD",
                        rc == -2 ? "[LIMIT] too many keywords" : "invalid flag list");
            return;
        }
        i++;
    }
    if (i + 1 < c->nargs && c->args[i].type == IMAP_ARG_STRING && !c->args[i].literal) {
        idate = parse_date_time(c->args[i].str);
        if (idate < 0) {
            imap_tagged(s, "BAD", "invalid date-time");
            return;
        }
        i++;
    }
    if (i + 1 != c->nargs || c->args[i].type != IMAP_ARG_STRING) {
        imap_tagged(s, "BAD", "expected the message as a literal");
        return;
    }
    const imap_arg *msg = &c->args[i];
    store_mailbox_info mi;
    if (store_mailbox_find(s->acct->st, name, &mi) < 0) {
        imap_tagged(s, "NO", "[TRYCREATE] No such mailbox");
        return;
    }
    if (msg->len > s->srv->lim.max_message) {
        imap_tagged(s, "NO", "[TOOBIG] message is over the size limit");
        return;
    }
    if (msg->len == 0) {
        imap_tagged(s, "NO", "empty message");
        return;
    }
    hv_err err = {0};
    uint32_t uid;
    if (store_append(s->acct->st, mi.id, msg->str, msg->len, flags, idate, &uid, &err) < 0) {
        imap_tagged(s, "NO", "%s%s", err.code == -EFBIG ? "[TOOBIG] " : "[SERVERBUG] ", err.msg);
        return;
    }
    imap_tagged(s, "OK", "[APPENDUID %u %u] APPEND completed", mi.uidvalidity, uid);
}

/* ---- STORE ---- */

void imap_cmd_store(imap_session *s, const imap_command *c)
{
    int by_uid = strncasecmp(c->name, "UID", 3) == 0;
    s->no_expunge = !by_uid;
    size_t i = 0;
    const char *set = astr(c, i++);
    uint64_t unchanged = 0;
    if (i < c->nargs && c->args[i].type == IMAP_ARG_LIST) {
        const imap_arg *mod = &c->args[i++];
        if (mod->nlist != 2 || !mod->list[0].str ||
            strcasecmp(mod->list[0].str, "UNCHANGEDSINCE") != 0 ||
            imap_arg_number(&mod->list[1], &unchanged) < 0) {
            imap_tagged(s, "BAD", "unknown STORE modifier");
            return;
        }
        s->condstore = 1;
    }
    const char *item = astr(c, i++);
    if (!set || !item || i >= c->nargs) {
        imap_tagged(s, "BAD", "usage: STORE set [(UNCHANGEDSINCE n)] [+-]FLAGS[.SILENT] (flags)");
        return;
    }
    enum store_flags_mode mode = STORE_FLAGS_REPLACE;
    const char *p = item;
    if (*p == '+') {
        mode = STORE_FLAGS_ADD;
        p++;
    } else if (*p == '-') {
        mode = STORE_FLAGS_REMOVE;
        p++;
    }
    int silent;
    if (strcasecmp(p, "FLAGS") == 0)
        silent = 0;
    else if (strcasecmp(p, "FLAGS.SILENT") == 0)
        silent = 1;
    else {
        imap_tagged(s, "BAD", "unknown STORE item");
        return;
    }
    if (s->view.readonly) {
        imap_tagged(s, "NO", "[READ-ONLY] Mailbox is read-only");
        return;
    }
    uint64_t flags;
    int rc;
    if (c->args[i].type == IMAP_ARG_LIST)
        rc = imap_flags_parse(s, c->args[i].list, c->args[i].nlist, &flags, mode != STORE_FLAGS_REMOVE);
    else
        rc = imap_flags_parse(s, &c->args[i], c->nargs - i, &flags, mode != STORE_FLAGS_REMOVE);
    if (rc < 0) {
        imap_tagged(s, rc == -2 ? "NO" : "BAD", rc == -2 ? "[LIMIT] too many keywords" : "invalid flags");
        return;
    }
    uint32_t *uids;
    size_t n;
    rc = imap_seqset_uids(&s->view, set, by_uid, &uids, &n);
    if (rc < 0) {
        imap_tagged(s, "BAD", "invalid message set");
        return;
    }
    store_account *st = s->acct->st;
    /* CONDSTORE: which of them have changed since unchanged? */
    uint32_t *failed = NULL;
    size_t nfailed = 0;
    if (unchanged) {
        size_t w = 0;
        for (size_t k = 0; k < n; k++) {
            uint32_t idx;
            store_msg m;
            if (store_msg_seek(st, s->view.mailbox, uids[k], &idx) == 0 &&
                store_msg_at(st, s->view.mailbox, idx, &m) == 0 && m.uid == uids[k] &&
                m.modseq > unchanged) {
                failed = realloc(failed, (nfailed + 1) * sizeof(uint32_t));
                failed[nfailed++] = uids[k];
            } else {
                uids[w++] = uids[k];
            }
        }
        n = w;
    }
    hv_err err = {0};
    if (n && store_set_flags(st, s->view.mailbox, uids, n, mode, flags, unchanged, NULL, &err) < 0) {
        free(uids);
        free(failed);
        imap_tagged(s, "NO", "%s", err.msg);
        return;
    }
    for (size_t k = 0; k < n; k++) {
        uint32_t seq = imap_view_seq(&s->view, uids[k]), idx;
        store_msg m;
        if (!seq || store_msg_seek(st, s->view.mailbox, uids[k], &idx) < 0 ||
            store_msg_at(st, s->view.mailbox, idx, &m) < 0 || m.uid != uids[k])
            continue;
        s->view.flags[seq - 1] = m.flags; /* told now: no repeat at sync */
        if (silent && !unchanged)
            continue;
        buf f;
        buf_init(&f);
        imap_flags_format(s, &f, m.flags, 0);
        /* By length: with no flags set, f.data holds no NUL (buf_reserve
         * does not write one), and %s printed heap garbage as flags. */
        int fl = (int)f.len;
        buf line;
        buf_init(&line);
        buf_printf(&line, "* %u FETCH (", seq);
        if (by_uid)
            buf_printf(&line, "UID %u ", m.uid);
        if (silent)
            buf_printf(&line, "MODSEQ (%llu))\r\n", (unsigned long long)m.modseq);
        else if (s->condstore)
            buf_printf(&line, "FLAGS (%.*s) MODSEQ (%llu))\r\n", fl, (char *)f.data,
                       (unsigned long long)m.modseq);
        else
            buf_printf(&line, "FLAGS (%.*s))\r\n", fl, (char *)f.data);
        imap_out_raw(s, line.data, line.len);
        buf_free(&line);
        buf_free(&f);
    }
    free(uids);
    if (nfailed) {
        buf b;
        buf_init(&b);
        if (by_uid) {
            imap_uidset_format(&b, failed, nfailed);
        } else {
            uint32_t *seqs = malloc(nfailed * sizeof(uint32_t));
            for (size_t k = 0; k < nfailed; k++)
                seqs[k] = imap_view_seq(&s->view, failed[k]);
            imap_uidset_format(&b, seqs, nfailed);
            free(seqs);
        }
        imap_tagged(s, "OK", "[MODIFIED %s] Conditional STORE failed for some", (char *)b.data);
        buf_free(&b);
    } else {
        imap_tagged(s, "OK", "STORE completed");
    }
    free(failed);
}

/* ---- COPY / MOVE ---- */

void imap_cmd_copy(imap_session *s, const imap_command *c)
{
    int by_uid = strncasecmp(c->name, "UID", 3) == 0;
    int move = strcasecmp(c->name + (by_uid ? 4 : 0), "MOVE") == 0;
    const char *set = astr(c, 0), *dst = astr(c, 1);
    if (!set || !dst || c->nargs != 2) {
        imap_tagged(s, "BAD", "usage: %s set mailbox", c->name);
        return;
    }
    if (move && s->view.readonly) {
        imap_tagged(s, "NO", "[READ-ONLY] Mailbox is read-only");
        return;
    }
    store_account *st = s->acct->st;
    store_mailbox_info di;
    if (store_mailbox_find(st, dst, &di) < 0) {
        imap_tagged(s, "NO", "[TRYCREATE] No such mailbox");
        return;
    }
    uint32_t *uids;
    size_t n;
    if (imap_seqset_uids(&s->view, set, by_uid, &uids, &n) < 0) {
        imap_tagged(s, "BAD", "invalid message set");
        return;
    }
    if (n == 0) {
        free(uids);
        imap_tagged(s, "OK", "%s completed (nothing to do)", c->name);
        return;
    }
    uint32_t *nu = calloc(n, sizeof(uint32_t));
    hv_err err = {0};
    if (store_copy(st, s->view.mailbox, uids, n, di.id, nu, &err) < 0) {
        free(uids);
        free(nu);
        imap_tagged(s, "NO", "%s", err.msg);
        return;
    }
    /* COPYUID lists source and destination uids in the same order; drop
     * messages that were expunged meanwhile (new uid 0). */
    size_t w = 0;
    for (size_t k = 0; k < n; k++)
        if (nu[k]) {
            uids[w] = uids[k];
            nu[w] = nu[k];
            w++;
        }
    buf src, dstb;
    buf_init(&src);
    buf_init(&dstb);
    imap_uidset_format(&src, uids, w);
    imap_uidset_format(&dstb, nu, w);
    if (move) {
        imap_out(s, "* OK [COPYUID %u %s %s] Moved\r\n", di.uidvalidity,
                 w ? (char *)src.data : "", w ? (char *)dstb.data : "");
        if (w && store_expunge(st, s->view.mailbox, uids, w, &err) < 0)
            imap_tagged(s, "NO", "copied but not removed: %s", err.msg);
        else
            imap_tagged(s, "OK", "MOVE completed");
    } else if (w) {
        imap_tagged(s, "OK", "[COPYUID %u %s %s] COPY completed", di.uidvalidity,
                    (char *)src.data, (char *)dstb.data);
    } else {
        imap_tagged(s, "OK", "COPY completed");
    }
    buf_free(&src);
    buf_free(&dstb);
    free(uids);
    free(nu);
}

/* ---- EXPUNGE ---- */

void imap_cmd_expunge(imap_session *s, const imap_command *c)
{
    int by_uid = strncasecmp(c->name, "UID", 3) == 0;
    if (s->view.readonly) {
        imap_tagged(s, "NO", "[READ-ONLY] Mailbox is read-only");
        return;
    }
    uint32_t *limit = NULL;
    size_t nlimit = 0;
    if (by_uid) {
        const char *set = astr(c, 0);
        if (!set || imap_seqset_uids(&s->view, set, 1, &limit, &nlimit) < 0) {
            imap_tagged(s, "BAD", "usage: UID EXPUNGE uid-set");
            return;
        }
    }
    store_account *st = s->acct->st;
    uint32_t n;
    store_msg_count(st, s->view.mailbox, &n);
    uint32_t *del = malloc((n ? n : 1) * sizeof(uint32_t));
    size_t nd = 0, j = 0;
    for (uint32_t i = 0; i < n; i++) {
        store_msg m;
        if (store_msg_at(st, s->view.mailbox, i, &m) < 0 || !(m.flags & STORE_FLAG_DELETED))
            continue;
        if (by_uid) {
            while (j < nlimit && limit[j] < m.uid)
                j++;
            if (j >= nlimit || limit[j] != m.uid)
                continue;
        }
        del[nd++] = m.uid;
    }
    free(limit);
    hv_err err = {0};
    if (nd && store_expunge(st, s->view.mailbox, del, nd, &err) < 0) {
        free(del);
        imap_tagged(s, "NO", "%s", err.msg);
        return;
    }
    free(del);
    imap_tagged(s, "OK", "EXPUNGE completed");
}
