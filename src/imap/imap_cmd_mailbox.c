/*
 * imap_cmd_mailbox.c - commands on mailboxes as a whole: SELECT/EXAMINE
 * (with CONDSTORE/QRESYNC), CREATE, DELETE, RENAME, SUBSCRIBE, LIST/LSUB
 * (with LIST-EXTENDED and LIST-STATUS), STATUS, UNSELECT, CLOSE, CHECK,
 * GETQUOTA/GETQUOTAROOT.
 *
 * Mailbox names are kept as the client sends them (UTF-8 for IMAP4rev2
 * clients, modified UTF-7 for older ones); "/" separates levels.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imap/imap_internal.h"

static const char *astr(const imap_command *c, size_t i)
{
    if (i >= c->nargs || (c->args[i].type != IMAP_ARG_ATOM && c->args[i].type != IMAP_ARG_STRING))
        return NULL;
    return c->args[i].str;
}

static void out_name(imap_session *s, const char *name)
{
    buf b;
    buf_init(&b);
    imap_out_astring(&b, name);
    imap_out_raw(s, b.data, b.len);
    buf_free(&b);
}

static void close_view(imap_session *s, int expunge_deleted)
{
    if (s->state != IMAP_SELECTED)
        return;
    if (expunge_deleted && !s->view.readonly) {
        uint32_t n, *del = NULL;
        size_t nd = 0;
        if (store_msg_count(s->acct->st, s->view.mailbox, &n) == 0) {
            del = malloc((n ? n : 1) * sizeof(uint32_t));
            for (uint32_t i = 0; i < n; i++) {
                store_msg m;
                if (store_msg_at(s->acct->st, s->view.mailbox, i, &m) == 0 &&
                    (m.flags & STORE_FLAG_DELETED))
                    del[nd++] = m.uid;
            }
            hv_err err;
            if (nd)
                store_expunge(s->acct->st, s->view.mailbox, del, nd, &err);
        }
        free(del);
    }
    imap_view_free(&s->view);
    s->state = IMAP_AUTH;
}

/* ---- SELECT / EXAMINE ---- */

static uint32_t count_unseen(store_account *st, uint32_t mbox, uint32_t *first_unseen)
{
    uint32_t n, unseen = 0;
    if (first_unseen)
        *first_unseen = 0;
    if (store_msg_count(st, mbox, &n) < 0)
        return 0;
    for (uint32_t i = 0; i < n; i++) {
        store_msg m;
        if (store_msg_at(st, mbox, i, &m) == 0 && !(m.flags & STORE_FLAG_SEEN)) {
            if (!unseen && first_unseen)
                *first_unseen = i + 1;
            unseen++;
        }
    }
    return unseen;
}

typedef struct qresync_ctx {
    uint32_t mailbox;
    uint32_t *uids;
    size_t n, cap;
} qresync_ctx;

static int collect_expunged(void *ctx, const store_record *r)
{
    qresync_ctx *q = ctx;
    if (r->type != STORE_REC_EXPUNGE || r->mailbox != q->mailbox)
        return 0;
    for (size_t k = 0; k < r->nranges; k++)
        for (uint64_t u = r->ranges[k].lo; u <= r->ranges[k].hi && q->n < 1000000; u++) {
            if (q->n == q->cap) {
                q->cap = q->cap ? q->cap * 2 : 64;
                q->uids = realloc(q->uids, q->cap * sizeof(uint32_t));
            }
            q->uids[q->n++] = (uint32_t)u;
        }
    return 0;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

void imap_cmd_select(imap_session *s, const imap_command *c)
{
    int examine = strcasecmp(c->name, "EXAMINE") == 0;
    const char *name = astr(c, 0);
    if (!name) {
        imap_tagged(s, "BAD", "usage: %s mailbox [(CONDSTORE | QRESYNC (...))]", c->name);
        return;
    }
    /* Optional parameters: (CONDSTORE) or (QRESYNC (uidvalidity modseq [uids])) */
    uint32_t q_validity = 0;
    uint64_t q_modseq = 0;
    const char *q_known = NULL;
    int qres = 0;
    if (c->nargs > 1) {
        const imap_arg *p = &c->args[1];
        if (p->type != IMAP_ARG_LIST) {
            imap_tagged(s, "BAD", "select parameters must be a list");
            return;
        }
        for (size_t i = 0; i < p->nlist; i++) {
            const imap_arg *x = &p->list[i];
            if (x->type == IMAP_ARG_ATOM && strcasecmp(x->str, "CONDSTORE") == 0) {
                s->condstore = 1;
            } else if (x->type == IMAP_ARG_ATOM && strcasecmp(x->str, "QRESYNC") == 0 &&
                       i + 1 < p->nlist && p->list[i + 1].type == IMAP_ARG_LIST) {
                if (!s->qresync) {
                    imap_tagged(s, "BAD", "QRESYNC is not enabled");
                    return;
                }
                const imap_arg *ql = &p->list[++i];
                if (ql->nlist < 2) {
                    imap_tagged(s, "BAD", "QRESYNC needs uidvalidity and modseq");
                    return;
                }
                uint64_t v;
                if (imap_arg_number(&ql->list[0], &v) < 0 || v == 0 || v > UINT32_MAX ||
                    imap_arg_number(&ql->list[1], &q_modseq) < 0 || q_modseq == 0) {
                    imap_tagged(s, "BAD", "QRESYNC needs uidvalidity and modseq numbers");
                    return;
                }
                q_validity = (uint32_t)v;
                if (ql->nlist > 2 && ql->list[2].type == IMAP_ARG_ATOM)
                    q_known = ql->list[2].str;
                qres = 1;
            } else {
                imap_tagged(s, "BAD", "unknown select parameter");
                return;
            }
        }
    }
    if (s->state == IMAP_SELECTED) {
        close_view(s, 0);
        if (s->qresync)
            imap_out(s, "* OK [CLOSED] Previous mailbox closed\r\n");
    }
    store_account *st = s->acct->st;
    store_mailbox_info mi;
    if (store_mailbox_find(st, name, &mi) < 0) {
        imap_tagged(s, "NO", "[NONEXISTENT] No such mailbox");
        return;
    }
    imap_view *v = &s->view;
    memset(v, 0, sizeof(*v));
    v->mailbox = mi.id;
    v->readonly = examine;
    v->uidvalidity = mi.uidvalidity;
    uint32_t n = 0;
    store_msg_count(st, mi.id, &n);
    v->uids = malloc((n ? n : 1) * sizeof(uint32_t));
    v->flags = malloc((n ? n : 1) * sizeof(uint64_t));
    v->cap = n ? n : 1;
    uint32_t first_unseen = 0;
    for (uint32_t i = 0; i < n; i++) {
        store_msg m;
        store_msg_at(st, mi.id, i, &m);
        v->uids[i] = m.uid;
        v->flags[i] = m.flags;
        if (!first_unseen && !(m.flags & STORE_FLAG_SEEN))
            first_unseen = i + 1;
    }
    v->n = n;
    v->modseq = mi.highestmodseq;
    buf f;
    buf_init(&f);
    imap_flags_format(s, &f, ~0ull, 0);
    imap_out(s, "* FLAGS (%s)\r\n", (char *)f.data);
    imap_out(s, "* OK [PERMANENTFLAGS (%s%s\\*)] Flags permitted\r\n", (char *)f.data,
             f.len ? " " : "");
    buf_free(&f);
    imap_out(s, "* %u EXISTS\r\n", n);
    if (!s->rev2) {
        imap_out(s, "* 0 RECENT\r\n");
        if (first_unseen)
            imap_out(s, "* OK [UNSEEN %u] First unseen\r\n", first_unseen);
    }
    imap_out(s, "* OK [UIDVALIDITY %u] UIDs valid\r\n", mi.uidvalidity);
    imap_out(s, "* OK [UIDNEXT %u] Predicted next UID\r\n", mi.uidnext);
    imap_out(s, "* OK [HIGHESTMODSEQ %llu] Highest\r\n", (unsigned long long)mi.highestmodseq);
    imap_out(s, "* OK [MAILBOXID (M%u-%u)] Ok\r\n", mi.id, mi.uidvalidity);
    if (s->rev2) {
        imap_out(s, "* LIST () \"/\" ");
        out_name(s, mi.name);
        imap_out(s, "\r\n");
    }
    s->state = IMAP_SELECTED;
    if (qres && q_validity == mi.uidvalidity && q_modseq < mi.highestmodseq) {
        /* Expunged since the client's modseq, then changed messages. */
        qresync_ctx q = {mi.id, NULL, 0, 0};
        hv_err err;
        store_changes_since(st, q_modseq, collect_expunged, &q, &err);
        if (q.n) {
            qsort(q.uids, q.n, sizeof(uint32_t), cmp_u32);
            uint32_t *known = NULL;
            size_t nk = 0;
            if (q_known && imap_uidset_parse(q_known, mi.uidnext, &known, &nk, 10000000) == 0) {
                size_t w = 0, j = 0;
                for (size_t i = 0; i < q.n; i++) {
                    while (j < nk && known[j] < q.uids[i])
                        j++;
                    if (j < nk && known[j] == q.uids[i])
                        q.uids[w++] = q.uids[i];
                }
                q.n = w;
            }
            free(known);
            if (q.n) {
                buf b;
                buf_init(&b);
                imap_uidset_format(&b, q.uids, q.n);
                imap_out(s, "* VANISHED (EARLIER) %s\r\n", (char *)b.data);
                buf_free(&b);
            }
        }
        free(q.uids);
        for (uint32_t i = 0; i < n; i++) {
            store_msg m;
            if (store_msg_at(st, mi.id, i, &m) == 0 && m.modseq > q_modseq) {
                buf fl;
                buf_init(&fl);
                imap_flags_format(s, &fl, m.flags, 0);
                /* By length: an empty flag list is not NUL-terminated. */
                imap_out(s, "* %u FETCH (UID %u FLAGS (%.*s) MODSEQ (%llu))\r\n", i + 1, m.uid,
                         (int)fl.len, (char *)fl.data, (unsigned long long)m.modseq);
                buf_free(&fl);
            }
        }
    }
    imap_out(s, "%s OK [%s] %s completed\r\n", s->tag, examine ? "READ-ONLY" : "READ-WRITE",
             examine ? "EXAMINE" : "SELECT");
}

void imap_cmd_unselect(imap_session *s, const imap_command *c)
{
    (void)c;
    close_view(s, 0);
    imap_out(s, "%s OK UNSELECT completed\r\n", s->tag);
}

void imap_cmd_close(imap_session *s, const imap_command *c)
{
    (void)c;
    close_view(s, 1);
    imap_out(s, "%s OK CLOSE completed\r\n", s->tag);
}

void imap_cmd_check(imap_session *s, const imap_command *c)
{
    (void)c;
    imap_tagged(s, "OK", "CHECK completed");
}

/* ---- CREATE / DELETE / RENAME / SUBSCRIBE ---- */

void imap_cmd_create(imap_session *s, const imap_command *c)
{
    const char *name = astr(c, 0);
    if (!name) {
        imap_tagged(s, "BAD", "usage: CREATE mailbox");
        return;
    }
    char tmp[1024];
    snprintf(tmp, sizeof(tmp), "%s", name);
    size_t len = strlen(tmp);
    if (len > 1 && tmp[len - 1] == '/')
        tmp[len - 1] = 0; /* "create a/" means the hierarchy a: create a */
    hv_err err = {0};
    if (store_mailbox_find(s->acct->st, tmp, NULL) == 0) {
        imap_tagged(s, "NO", "[ALREADYEXISTS] Mailbox already exists");
        return;
    }
    if (store_mailbox_create(s->acct->st, tmp, 0, NULL, &err) < 0) {
        imap_tagged(s, err.code == -EINVAL ? "NO" : "NO", "%s%s",
                    err.code == -EEXIST ? "[ALREADYEXISTS] " : "", err.msg);
        return;
    }
    imap_tagged(s, "OK", "CREATE completed");
}

void imap_cmd_delete(imap_session *s, const imap_command *c)
{
    const char *name = astr(c, 0);
    if (!name) {
        imap_tagged(s, "BAD", "usage: DELETE mailbox");
        return;
    }
    store_mailbox_info mi;
    if (store_mailbox_find(s->acct->st, name, &mi) < 0) {
        imap_tagged(s, "NO", "[NONEXISTENT] No such mailbox");
        return;
    }
    if (strcmp(mi.name, "INBOX") == 0) {
        imap_tagged(s, "NO", "INBOX cannot be deleted");
        return;
    }
    if (s->state == IMAP_SELECTED && s->view.mailbox == mi.id)
        close_view(s, 0);
    hv_err err;
    if (store_mailbox_delete(s->acct->st, mi.id, &err) < 0) {
        imap_tagged(s, "NO", "%s", err.msg);
        return;
    }
    imap_tagged(s, "OK", "DELETE completed");
}

void imap_cmd_rename(imap_session *s, const imap_command *c)
{
    const char *from = astr(c, 0), *to = astr(c, 1);
    if (!from || !to) {
        imap_tagged(s, "BAD", "usage: RENAME from to");
        return;
    }
    store_account *st = s->acct->st;
    store_mailbox_info mi;
    hv_err err = {0};
    if (store_mailbox_find(st, from, &mi) < 0) {
        imap_tagged(s, "NO", "[NONEXISTENT] No such mailbox");
        return;
    }
    if (store_mailbox_find(st, to, NULL) == 0) {
        imap_tagged(s, "NO", "[ALREADYEXISTS] Target mailbox exists");
        return;
    }
    if (strcmp(mi.name, "INBOX") == 0) {
        /* RFC 3501: renaming INBOX moves its messages to a new mailbox and
         * leaves INBOX empty. */
        uint32_t dst, n;
        if (store_mailbox_create(st, to, 0, &dst, &err) < 0) {
            imap_tagged(s, "NO", "%s", err.msg);
            return;
        }
        store_msg_count(st, mi.id, &n);
        uint32_t *uids = malloc((n ? n : 1) * sizeof(uint32_t));
        for (uint32_t i = 0; i < n; i++) {
            store_msg m;
            store_msg_at(st, mi.id, i, &m);
            uids[i] = m.uid;
        }
        int rc = store_copy(st, mi.id, uids, n, dst, NULL, &err);
        if (rc == 0)
            rc = store_expunge(st, mi.id, uids, n, &err);
        free(uids);
        if (rc < 0)
            imap_tagged(s, "NO", "%s", err.msg);
        else
            imap_tagged(s, "OK", "RENAME completed");
        return;
    }
    /* Children move with their parent: "a/b" follows "a". Collect first,
     * since each rename reorders the list. */
    size_t plen = strlen(mi.name), nmb = store_mailbox_count(st), nch = 0;
    uint32_t *ids = malloc((nmb + 1) * sizeof(uint32_t));
    char **names = malloc((nmb + 1) * sizeof(char *));
    for (size_t i = 0; i < nmb; i++) {
        store_mailbox_info x;
        if (store_mailbox_at(st, i, &x) == 0 && strncmp(x.name, mi.name, plen) == 0 &&
            x.name[plen] == '/') {
            ids[nch] = x.id;
            size_t need = strlen(to) + strlen(x.name + plen) + 1;
            names[nch] = malloc(need);
            snprintf(names[nch], need, "%s%s", to, x.name + plen);
            nch++;
        }
    }
    int rc = store_mailbox_rename(st, mi.id, to, &err);
    for (size_t i = 0; rc == 0 && i < nch; i++)
        rc = store_mailbox_rename(st, ids[i], names[i], &err);
    for (size_t i = 0; i < nch; i++)
        free(names[i]);
    free(names);
    free(ids);
    if (rc < 0)
        imap_tagged(s, "NO", "%s", err.msg);
    else
        imap_tagged(s, "OK", "RENAME completed");
}

void imap_cmd_subscribe(imap_session *s, const imap_command *c)
{
    const char *name = astr(c, 0);
    int on = strcasecmp(c->name, "SUBSCRIBE") == 0;
    if (!name) {
        imap_tagged(s, "BAD", "usage: %s mailbox", c->name);
        return;
    }
    char norm[1024];
    snprintf(norm, sizeof(norm), "%s", name);
    if (strncasecmp(norm, "INBOX", 5) == 0 && (norm[5] == 0 || norm[5] == '/'))
        memcpy(norm, "INBOX", 5);
    hv_err err;
    if (store_subscribe(s->acct->st, norm, on, &err) < 0) {
        imap_tagged(s, "NO", "%s", err.msg);
        return;
    }
    imap_tagged(s, "OK", "%s completed", c->name);
}

/* ---- STATUS ---- */

/* Appends "(ITEM value ...)" for the items list; returns -1 on a bad item. */
static int status_items(imap_session *s, const store_mailbox_info *mi, const imap_arg *items,
                        buf *b)
{
    buf_put_u8(b, '(');
    for (size_t i = 0; i < items->nlist; i++) {
        const imap_arg *it = &items->list[i];
        if (it->type != IMAP_ARG_ATOM)
            return -1;
        const char *x = it->str;
        if (i)
            buf_put_u8(b, ' ');
        if (strcasecmp(x, "MESSAGES") == 0)
            buf_printf(b, "MESSAGES %u", mi->exists);
        else if (strcasecmp(x, "RECENT") == 0)
            buf_printf(b, "RECENT 0");
        else if (strcasecmp(x, "UIDNEXT") == 0)
            buf_printf(b, "UIDNEXT %u", mi->uidnext);
        else if (strcasecmp(x, "UIDVALIDITY") == 0)
            buf_printf(b, "UIDVALIDITY %u", mi->uidvalidity);
        else if (strcasecmp(x, "UNSEEN") == 0)
            buf_printf(b, "UNSEEN %u", count_unseen(s->acct->st, mi->id, NULL));
        else if (strcasecmp(x, "HIGHESTMODSEQ") == 0)
            buf_printf(b, "HIGHESTMODSEQ %llu", (unsigned long long)mi->highestmodseq);
        else if (strcasecmp(x, "SIZE") == 0)
            buf_printf(b, "SIZE %llu", (unsigned long long)mi->total_size);
        else if (strcasecmp(x, "MAILBOXID") == 0)
            buf_printf(b, "MAILBOXID (M%u-%u)", mi->id, mi->uidvalidity);
        else if (strcasecmp(x, "APPENDLIMIT") == 0)
            buf_printf(b, "APPENDLIMIT %llu", (unsigned long long)s->srv->lim.max_message);
        else if (strcasecmp(x, "DELETED") == 0) {
            uint32_t n, del = 0;
            store_msg_count(s->acct->st, mi->id, &n);
            for (uint32_t k = 0; k < n; k++) {
                store_msg m;
                if (store_msg_at(s->acct->st, mi->id, k, &m) == 0 &&
                    (m.flags & STORE_FLAG_DELETED))
                    del++;
            }
            buf_printf(b, "DELETED %u", del);
        } else
            return -1;
    }
    buf_put_u8(b, ')');
    return 0;
}

void imap_cmd_status(imap_session *s, const imap_command *c)
{
    const char *name = astr(c, 0);
    if (!name || c->nargs != 2 || c->args[1].type != IMAP_ARG_LIST) {
        imap_tagged(s, "BAD", "usage: STATUS mailbox (items)");
        return;
    }
    store_mailbox_info mi;
    if (store_mailbox_find(s->acct->st, name, &mi) < 0) {
        imap_tagged(s, "NO", "[NONEXISTENT] No such mailbox");
        return;
    }
    buf b;
    buf_init(&b);
    if (status_items(s, &mi, &c->args[1], &b) < 0) {
        buf_free(&b);
        imap_tagged(s, "BAD", "unknown STATUS item");
        return;
    }
    imap_out(s, "* STATUS ");
    out_name(s, mi.name);
    imap_out(s, " %s\r\n", (char *)b.data);
    buf_free(&b);
    imap_tagged(s, "OK", "STATUS completed");
}

/* ---- LIST / LSUB ---- */

/* IMAP wildcard match: '*' anything, '%' anything but the separator. */
static int wild_match(const char *pat, const char *name)
{
    while (*pat) {
        if (*pat == '*' || *pat == '%') {
            int any = *pat == '*';
            pat++;
            if (!*pat && any)
                return 1;
            for (const char *n = name;; n++) {
                if (wild_match(pat, n))
                    return 1;
                if (!*n || (!any && *n == '/'))
                    return 0;
            }
        }
        if (*pat != *name)
            return 0;
        pat++;
        name++;
    }
    return *name == 0;
}

static int pattern_match(const char *pat, const char *name)
{
    /* INBOX is case-insensitive, in patterns too. */
    char p2[1100];
    snprintf(p2, sizeof(p2), "%s", pat);
    if (strncasecmp(p2, "INBOX", 5) == 0 && (p2[5] == 0 || p2[5] == '/' || p2[5] == '*' ||
                                             p2[5] == '%'))
        memcpy(p2, "INBOX", 5);
    return wild_match(p2, name);
}

static const char *use_attr(uint32_t use)
{
    static const char *names[] = {"\\All", "\\Archive", "\\Drafts", "\\Flagged",
                                  "\\Junk", "\\Sent", "\\Trash"};
    for (int i = 0; i < 7; i++)
        if (use & (1u << i))
            return names[i];
    return NULL;
}

typedef struct list_opts {
    int lsub, sel_subscribed, sel_special, ret_subscribed, ret_children, ret_special;
    const imap_arg *ret_status;
} list_opts;

static int has_children(store_account *st, const char *name)
{
    size_t n = store_mailbox_count(st), len = strlen(name);
    for (size_t i = 0; i < n; i++) {
        store_mailbox_info x;
        if (store_mailbox_at(st, i, &x) == 0 && strncmp(x.name, name, len) == 0 &&
            x.name[len] == '/')
            return 1;
    }
    return 0;
}

static void list_one(imap_session *s, const list_opts *o, const char *name,
                     const store_mailbox_info *mi)
{
    store_account *st = s->acct->st;
    buf attrs;
    buf_init(&attrs);
    int subscribed = store_is_subscribed(st, name);
#define ATTR(x)                                \
    do {                                       \
        if (attrs.len)                         \
            buf_put_u8(&attrs, ' ');           \
        buf_append_str(&attrs, x);             \
    } while (0)
    if (!mi)
        ATTR(o->lsub ? "\\Noselect" : (o->sel_subscribed ? "\\NonExistent" : "\\Noselect"));
    if (!o->lsub)
        ATTR(has_children(st, name) ? "\\HasChildren" : "\\HasNoChildren");
    if (mi && use_attr(mi->special_use))
        ATTR(use_attr(mi->special_use));
    if (subscribed && !o->lsub && (o->ret_subscribed || o->sel_subscribed))
        ATTR("\\Subscribed");
    imap_out(s, "* %s (%s) \"/\" ", o->lsub ? "LSUB" : "LIST", attrs.len ? (char *)attrs.data : "");
    out_name(s, name);
    imap_out(s, "\r\n");
    buf_free(&attrs);
    if (o->ret_status && mi) {
        buf b;
        buf_init(&b);
        if (status_items(s, mi, o->ret_status, &b) == 0) {
            imap_out(s, "* STATUS ");
            out_name(s, name);
            imap_out(s, " %s\r\n", (char *)b.data);
        }
        buf_free(&b);
    }
}

void imap_cmd_list(imap_session *s, const imap_command *c)
{
    list_opts o = {0};
    o.lsub = strcasecmp(c->name, "LSUB") == 0;
    size_t i = 0;
    if (!o.lsub && i < c->nargs && c->args[i].type == IMAP_ARG_LIST) {
        const imap_arg *sel = &c->args[i++];
        for (size_t k = 0; k < sel->nlist; k++) {
            const char *x = sel->list[k].str;
            if (!x) continue;
            if (strcasecmp(x, "SUBSCRIBED") == 0)
                o.sel_subscribed = 1;
            else if (strcasecmp(x, "SPECIAL-USE") == 0)
                o.sel_special = 1;
            else if (strcasecmp(x, "REMOTE") != 0 && strcasecmp(x, "RECURSIVEMATCH") != 0) {
                imap_tagged(s, "BAD", "unknown LIST selection option");
                return;
            }
        }
    }
    const char *ref = astr(c, i);
    if (!ref || i + 1 >= c->nargs) {
        imap_tagged(s, "BAD", "usage: %s reference mailbox-pattern", c->name);
        return;
    }
    i++;
    const imap_arg *pats = &c->args[i++];
    const imap_arg *patlist = pats->type == IMAP_ARG_LIST ? pats->list : pats;
    size_t npat = pats->type == IMAP_ARG_LIST ? pats->nlist : 1;
    if (i < c->nargs) {
        if (c->args[i].type != IMAP_ARG_ATOM || strcasecmp(c->args[i].str, "RETURN") != 0 ||
            i + 1 >= c->nargs || c->args[i + 1].type != IMAP_ARG_LIST) {
            imap_tagged(s, "BAD", "expected RETURN (options)");
            return;
        }
        const imap_arg *ret = &c->args[i + 1];
        for (size_t k = 0; k < ret->nlist; k++) {
            const char *x = ret->list[k].str;
            if (!x) continue;
            if (strcasecmp(x, "SUBSCRIBED") == 0)
                o.ret_subscribed = 1;
            else if (strcasecmp(x, "CHILDREN") == 0)
                o.ret_children = 1;
            else if (strcasecmp(x, "SPECIAL-USE") == 0)
                o.ret_special = 1;
            else if (strcasecmp(x, "STATUS") == 0 && k + 1 < ret->nlist &&
                     ret->list[k + 1].type == IMAP_ARG_LIST)
                o.ret_status = &ret->list[++k];
            else {
                imap_tagged(s, "BAD", "unknown LIST return option");
                return;
            }
        }
    }
    store_account *st = s->acct->st;
    for (size_t p = 0; p < npat; p++) {
        const char *pat = patlist[p].str;
        if (!pat)
            continue;
        if (!*pat && npat == 1) {
            /* The hierarchy delimiter and root. */
            imap_out(s, "* %s (\\Noselect) \"/\" \"\"\r\n", o.lsub ? "LSUB" : "LIST");
            continue;
        }
        char full[1100];
        snprintf(full, sizeof(full), "%s%s", pat[0] == '/' ? "" : ref, pat);
        size_t nmb = store_mailbox_count(st);
        /* Existing mailboxes, then ancestors that only exist as a level. */
        char **seen = NULL;
        size_t nseen = 0;
        for (size_t k = 0; k < nmb; k++) {
            store_mailbox_info mi;
            if (store_mailbox_at(st, k, &mi) < 0)
                continue;
            const char *nm = mi.name;
            if ((o.lsub || o.sel_subscribed) && !store_is_subscribed(st, nm))
                continue;
            if (o.sel_special && !mi.special_use)
                continue;
            if (pattern_match(full, nm)) {
                list_one(s, &o, nm, &mi);
                continue;
            }
            /* "%" stops at a level: an ancestor of nm may match. */
            char anc[1100];
            snprintf(anc, sizeof(anc), "%s", nm);
            for (char *slash = strrchr(anc, '/'); slash; slash = strrchr(anc, '/')) {
                *slash = 0;
                if (store_mailbox_find(st, anc, NULL) == 0 || !pattern_match(full, anc))
                    continue;
                int dup = 0;
                for (size_t q = 0; q < nseen; q++)
                    dup |= strcmp(seen[q], anc) == 0;
                if (dup)
                    break;
                seen = realloc(seen, (nseen + 1) * sizeof(char *));
                seen[nseen++] = strdup(anc);
                list_one(s, &o, anc, NULL);
                break;
            }
        }
        /* Subscribed names with no mailbox behind them are listed too
         * (RFC 5258 3.1; LSUB in RFC 3501). */
        if (o.lsub || o.sel_subscribed) {
            size_t nsub = store_subscription_count(st);
            for (size_t k = 0; k < nsub; k++) {
                const char *nm = store_subscription_at(st, k);
                if (!nm || store_mailbox_find(st, nm, NULL) == 0 || !pattern_match(full, nm))
                    continue;
                char copy[1100];
                snprintf(copy, sizeof(copy), "%s", nm); /* list_one may refresh */
                list_one(s, &o, copy, NULL);
            }
        }
        for (size_t q = 0; q < nseen; q++)
            free(seen[q]);
        free(seen);
    }
    imap_tagged(s, "OK", "%s completed", c->name);
}

void imap_cmd_getquota(imap_session *s, const imap_command *c)
{
    /* One quota root per account, "" (RFC 9208). The limit comes from the
     * directory; usage is the sum of the mailboxes' sizes. */
    hv_err err;
    dir *d = imap_worker_dir(s->srv, &err);
    dir_account acc;
    uint64_t limit = 0, used = 0;
    if (d && dir_account_get(d, s->user, &acc, &err) == 0)
        limit = acc.quota_bytes;
    size_t n = store_mailbox_count(s->acct->st);
    for (size_t i = 0; i < n; i++) {
        store_mailbox_info mi;
        if (store_mailbox_at(s->acct->st, i, &mi) == 0)
            used += mi.total_size;
    }
    if (strcasecmp(c->name, "GETQUOTAROOT") == 0) {
        imap_out(s, "* QUOTAROOT ");
        out_name(s, astr(c, 0) ? astr(c, 0) : "INBOX");
        imap_out(s, " \"\"\r\n");
    }
    if (limit)
        imap_out(s, "* QUOTA \"\" (STORAGE %llu %llu)\r\n", (unsigned long long)(used / 1024),
                 (unsigned long long)(limit / 1024));
    else
        imap_out(s, "* QUOTA \"\" ()\r\n");
    imap_tagged(s, "OK", "%s completed", c->name);
}
