/*
 * imap_cmd_fetch.c - FETCH and UID FETCH.
 *
 * The item list is parsed once into fetch_items; then messages are answered
 * in slices: when the output passes FETCH_SLICE bytes the command yields
 * (s->cont), the loop sends what is ready and resumes it once the client
 * has taken most of it. So "FETCH 1:* BODY[]" on a 5 GB mailbox uses a
 * bounded amount of memory and one slow reader holds no worker. Items that
 * need only the index (FLAGS, UID, sizes, dates, MODSEQ) never touch the
 * message file; the rest read the blob once per message and parse its MIME
 * structure only when an item needs it.
 *
 * "UID FETCH 1:* (FLAGS)" on a big mailbox is what a client's resync does,
 * so the per-message path of index-only items is kept cheap: the uid list
 * is walked with a cursor into the view and one into the store (no binary
 * search while uids come in order), numbers are written without printf,
 * and each distinct flags value is formatted once per slice.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "imap/imap_internal.h"
#include "imap/mime.h"
#include "lib/sha256.h"

/* Small enough that the few slices in flight reuse memory the worker's
 * malloc arena already has (1 MiB slices came from fresh pages each time,
 * and page faults were a large part of "FETCH 1:* (FLAGS)"). */
#define FETCH_SLICE (256u << 10)

enum fetch_kind {
    F_UID, F_FLAGS, F_INTERNALDATE, F_SIZE, F_ENVELOPE, F_BODY, F_BODYSTRUCTURE, F_MODSEQ,
    F_EMAILID, F_THREADID, F_SECTION, F_BINARY, F_BINARY_SIZE,
};

typedef struct fetch_item {
    enum fetch_kind kind;
    char section[512]; /* inside the brackets */
    int peek;
    int64_t origin, count; /* partial <origin.count>; origin -1 when none */
    char key[600];         /* how the item is named in the answer */
} fetch_item;

/* "FLAGS (...)" of recently seen flags values: a mailbox has few distinct
 * ones, and formatting walks 64 bits and the keyword names. Direct-mapped;
 * emptied at each slice, so a keyword named meanwhile is never missed. */
#define FLAGS_CACHE 16

typedef struct flags_text {
    uint64_t flags;
    int valid;
    buf text;
} flags_text;

typedef struct fetch_state {
    fetch_item *items;
    size_t n;
    int by_uid;
    uint32_t *uids;
    size_t nuids, pos;
    uint64_t changedsince;
    int need_blob, need_mime, sets_seen;
    int unknown_cte; /* a BINARY item met an encoding we cannot undo */
    /* Where the next uid is expected in the view and in the store: just
     * past the previous one (hints only; every hit is checked). */
    uint32_t view_hint, store_hint;
    flags_text fcache[FLAGS_CACHE];
    /* "1:*" (a client's resync): the uids are the view's own list, which
     * does not change while the command runs (the view is synced when it
     * ends), instead of a copy: 180,000 uids copied into fresh memory cost
     * more page faults than the answer's formatting took. */
    int whole_view;
} fetch_state;

static const uint32_t *fetch_uids(const imap_session *s, const fetch_state *f)
{
    return f->whole_view ? s->view.uids : f->uids;
}

static void fetch_free(fetch_state *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < FLAGS_CACHE; i++)
        buf_free(&f->fcache[i].text);
    free(f->items);
    free(f->uids);
    free(f);
}

/* Output of the per-message path. buf_append per piece (a call, a reserve
 * check and a NUL each) showed in the profile; this grows only when it
 * must, and fetch_one writes the NUL once at the end of its line. */
static inline void put_mem(buf *b, const void *p, size_t n)
{
    if (b->len + n + 1 > b->cap)
        buf_reserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}
#define PUT(b, lit) put_mem((b), (lit), sizeof(lit) - 1)

/* Decimal v at the end of b (the FETCH loop writes several numbers per
 * message; vsnprintf was a third of its time). */
static inline void put_u64(buf *b, uint64_t v)
{
    char t[20];
    size_t i = sizeof(t);
    do {
        t[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put_mem(b, t + i, sizeof(t) - i);
}

/* Appends "FLAGS (...)" for flags, formatted once per slice per value. */
static void put_flags(imap_session *s, fetch_state *f, uint64_t flags)
{
    uint64_t h = flags * 0x9E3779B97F4A7C15ULL;
    flags_text *e = &f->fcache[h >> 60];
    if (!e->valid || e->flags != flags) {
        buf_reset(&e->text);
        PUT(&e->text, "FLAGS (");
        imap_flags_format(s, &e->text, flags, 0);
        PUT(&e->text, ")");
        e->flags = flags;
        e->valid = 1;
    }
    put_mem(&s->out, e->text.data, e->text.len);
}

/* Index of uid in the ascending a[0..n), or n when absent. *hint is where
 * the next uid of an ascending set is expected (just past the previous
 * one): checked first, never trusted. */
static uint32_t find_uid(const uint32_t *a, uint32_t n, uint32_t uid, uint32_t *hint)
{
    uint32_t lo = 0, hi = n, h = *hint;
    if (h < n) {
        if (a[h] == uid) {
            *hint = h + 1;
            return h;
        }
        if (a[h] < uid)
            lo = h + 1;
        else
            hi = h;
    }
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (a[mid] < uid)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < n && a[lo] == uid) {
        *hint = lo + 1;
        return lo;
    }
    return n;
}

/* The store's message with this uid: tries the slot after the previous
 * one before seeking. */
static int store_find(store_account *st, uint32_t mailbox, fetch_state *f, uint32_t uid,
                      store_msg *m)
{
    uint32_t idx = f->store_hint;
    if (store_msg_at(st, mailbox, idx, m) < 0 || m->uid != uid) {
        if (store_msg_seek(st, mailbox, uid, &idx) < 0 ||
            store_msg_at(st, mailbox, idx, m) < 0 || m->uid != uid)
            return -1;
    }
    f->store_hint = idx + 1;
    return 0;
}

static void add_item(fetch_state *f, enum fetch_kind k, const char *key)
{
    f->items = realloc(f->items, (f->n + 1) * sizeof(fetch_item));
    fetch_item *it = &f->items[f->n++];
    memset(it, 0, sizeof(*it));
    it->kind = k;
    it->origin = -1;
    snprintf(it->key, sizeof(it->key), "%s", key);
}

/* BODY[...]<o.c>, BODY.PEEK[...], BINARY[...], BINARY.PEEK[...], BINARY.SIZE[...] */
static int parse_section_item(fetch_state *f, const char *a)
{
    const char *lb = strchr(a, '[');
    const char *rb = lb ? strrchr(a, ']') : NULL;
    if (!lb || !rb || rb < lb)
        return -1;
    size_t plen = (size_t)(lb - a);
    enum fetch_kind k;
    int peek = 0;
    if (plen == 4 && strncasecmp(a, "BODY", 4) == 0)
        k = F_SECTION;
    else if (plen == 9 && strncasecmp(a, "BODY.PEEK", 9) == 0)
        k = F_SECTION, peek = 1;
    else if (plen == 6 && strncasecmp(a, "BINARY", 6) == 0)
        k = F_BINARY;
    else if (plen == 11 && strncasecmp(a, "BINARY.PEEK", 11) == 0)
        k = F_BINARY, peek = 1;
    else if (plen == 11 && strncasecmp(a, "BINARY.SIZE", 11) == 0)
        k = F_BINARY_SIZE, peek = 1;
    else
        return -1;
    size_t slen = (size_t)(rb - lb - 1);
    if (slen >= 500)
        return -1;
    add_item(f, k, "");
    fetch_item *it = &f->items[f->n - 1];
    memcpy(it->section, lb + 1, slen);
    it->section[slen] = 0;
    it->peek = peek;
    /* A spec that is not RFC 3501 syntax (BODY[FOO], BODY[0]) is BAD for
     * the whole command, before anything is sent; fetch_one would answer
     * it with empty content. The spec is read before any lookup, so an
     * empty message is enough to check it. */
    buf chk;
    buf_init(&chk);
    int valid = (k == F_SECTION ? mime_section(NULL, "", 0, it->section, &chk)
                                : mime_binary(NULL, "", 0, it->section, &chk)) != -EINVAL;
    buf_free(&chk);
    if (!valid)
        return -1;
    const char *rest = rb + 1;
    if (*rest == '<') {
        char *end;
        unsigned long long o = strtoull(rest + 1, &end, 10), cnt = 0;
        if (*end != '.' || k == F_BINARY_SIZE)
            return -1;
        cnt = strtoull(end + 1, &end, 10);
        if (*end != '>' || end[1] || cnt == 0)
            return -1;
        it->origin = (int64_t)o;
        it->count = (int64_t)cnt;
    } else if (*rest) {
        return -1;
    }
    const char *name = k == F_SECTION ? "BODY" : k == F_BINARY ? "BINARY" : "BINARY.SIZE";
    snprintf(it->key, sizeof(it->key), "%s[%s]", name, it->section);
    f->need_blob = 1;
    if (it->section[0])
        f->need_mime = 1;
    if (!peek && k != F_BINARY_SIZE)
        f->sets_seen = 1;
    return 0;
}

static int parse_item(fetch_state *f, const char *a)
{
    if (strcasecmp(a, "UID") == 0)
        add_item(f, F_UID, "UID");
    else if (strcasecmp(a, "FLAGS") == 0)
        add_item(f, F_FLAGS, "FLAGS");
    else if (strcasecmp(a, "INTERNALDATE") == 0)
        add_item(f, F_INTERNALDATE, "INTERNALDATE");
    else if (strcasecmp(a, "RFC822.SIZE") == 0)
        add_item(f, F_SIZE, "RFC822.SIZE");
    else if (strcasecmp(a, "MODSEQ") == 0)
        add_item(f, F_MODSEQ, "MODSEQ");
    else if (strcasecmp(a, "EMAILID") == 0)
        add_item(f, F_EMAILID, "EMAILID");
    else if (strcasecmp(a, "THREADID") == 0)
        add_item(f, F_THREADID, "THREADID");
    else if (strcasecmp(a, "ENVELOPE") == 0) {
        add_item(f, F_ENVELOPE, "ENVELOPE");
        f->need_blob = f->need_mime = 1;
    } else if (strcasecmp(a, "BODYSTRUCTURE") == 0) {
        add_item(f, F_BODYSTRUCTURE, "BODYSTRUCTURE");
        f->need_blob = f->need_mime = 1;
    } else if (strcasecmp(a, "BODY") == 0) {
        add_item(f, F_BODY, "BODY");
        f->need_blob = f->need_mime = 1;
    } else if (strcasecmp(a, "RFC822") == 0) {
        if (parse_section_item(f, "BODY[]") < 0)
            return -1;
        snprintf(f->items[f->n - 1].key, sizeof(f->items[0].key), "RFC822");
    } else if (strcasecmp(a, "RFC822.HEADER") == 0) {
        if (parse_section_item(f, "BODY.PEEK[HEADER]") < 0)
            return -1;
        snprintf(f->items[f->n - 1].key, sizeof(f->items[0].key), "RFC822.HEADER");
    } else if (strcasecmp(a, "RFC822.TEXT") == 0) {
        if (parse_section_item(f, "BODY[TEXT]") < 0)
            return -1;
        snprintf(f->items[f->n - 1].key, sizeof(f->items[0].key), "RFC822.TEXT");
    } else if (strcasecmp(a, "ALL") == 0 || strcasecmp(a, "FAST") == 0 ||
               strcasecmp(a, "FULL") == 0) {
        parse_item(f, "FLAGS");
        parse_item(f, "INTERNALDATE");
        parse_item(f, "RFC822.SIZE");
        if (strcasecmp(a, "FAST") != 0)
            parse_item(f, "ENVELOPE");
        if (strcasecmp(a, "FULL") == 0)
            parse_item(f, "BODY");
    } else
        return parse_section_item(f, a);
    return 0;
}

static void out_literal(imap_session *s, const char *p, size_t n, int binary)
{
    int has_nul = binary && memchr(p, 0, n) != NULL;
    imap_out(s, "%s{%zu}\r\n", has_nul ? "~" : "", n);
    imap_out_raw(s, p, n);
}

static void out_date(imap_session *s, int64_t t)
{
    static const char *mon[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    imap_out(s, "\"%2d-%s-%04d %02d:%02d:%02d +0000\"", tm.tm_mday, mon[tm.tm_mon],
             tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* Answers one message. Returns 0, or -1 when the message is gone. */
static int fetch_one(imap_session *s, fetch_state *f, uint32_t uid)
{
    store_account *st = s->acct->st;
    store_msg m;
    if (store_find(st, s->view.mailbox, f, uid, &m) < 0)
        return -1;
    uint32_t vi = find_uid(s->view.uids, s->view.n, uid, &f->view_hint);
    if (vi == s->view.n)
        return -1;
    uint32_t seq = vi + 1;
    if (f->changedsince && m.modseq <= f->changedsince)
        return 0;
    char *data = NULL;
    size_t len = 0;
    mime_part *mp = NULL;
    if (f->need_blob) {
        hv_err err;
        if (store_blob_read(st, &m.blob, &data, &len, &err) < 0) {
            /* Never serve wrong data: say so and go on with the others. */
            imap_out(s, "* NO [SERVERBUG] message %u is unreadable: %s\r\n", uid, err.msg);
            return 0;
        }
        if (f->need_mime)
            mp = mime_parse(data, len, NULL);
    }
    PUT(&s->out, "* ");
    put_u64(&s->out, seq);
    PUT(&s->out, " FETCH (");
    int first = 1;
    int have_uid = 0, have_flags = 0;
    for (size_t i = 0; i < f->n; i++) {
        fetch_item *it = &f->items[i];
        if ((it->kind == F_UID && have_uid) || (it->kind == F_FLAGS && have_flags))
            continue;
        if (!first)
            imap_out_raw(s, " ", 1);
        first = 0;
        buf b;
        switch (it->kind) {
        case F_UID:
            have_uid = 1;
            PUT(&s->out, "UID ");
            put_u64(&s->out, m.uid);
            break;
        case F_FLAGS:
            have_flags = 1;
            put_flags(s, f, m.flags);
            s->view.flags[seq - 1] = m.flags;
            break;
        case F_INTERNALDATE:
            imap_out(s, "INTERNALDATE ");
            out_date(s, m.internal_date);
            break;
        case F_SIZE:
            PUT(&s->out, "RFC822.SIZE ");
            put_u64(&s->out, m.size);
            break;
        case F_MODSEQ:
            PUT(&s->out, "MODSEQ (");
            put_u64(&s->out, m.modseq);
            PUT(&s->out, ")");
            break;
        case F_EMAILID: {
            char hex[65];
            hex_encode(m.blob.b, 32, hex);
            imap_out(s, "EMAILID (M%.24s)", hex);
            break;
        }
        case F_THREADID:
            imap_out(s, "THREADID NIL");
            break;
        case F_ENVELOPE:
            buf_init(&b);
            mime_envelope(mp, data, &b);
            imap_out(s, "ENVELOPE ");
            imap_out_raw(s, b.data, b.len);
            buf_free(&b);
            break;
        case F_BODY:
        case F_BODYSTRUCTURE:
            buf_init(&b);
            mime_bodystructure(mp, data, it->kind == F_BODYSTRUCTURE, &b);
            imap_out(s, "%s ", it->key);
            imap_out_raw(s, b.data, b.len);
            buf_free(&b);
            break;
        case F_SECTION:
        case F_BINARY:
        case F_BINARY_SIZE: {
            buf_init(&b);
            int rc = 0;
            const char *p = data;
            size_t n = len;
            if (it->kind == F_SECTION && it->section[0] == 0) {
                /* BODY[]: the message as stored, no copy */
            } else if (it->kind == F_SECTION) {
                rc = mime_section(mp, data, len, it->section, &b);
                p = (const char *)b.data;
                n = b.len;
            } else {
                rc = mime_binary(mp, data, len, it->section, &b);
                p = (const char *)b.data;
                n = b.len;
            }
            if (rc == -EILSEQ) {
                imap_out(s, "%s NIL", it->key);
                f->unknown_cte = 1;
            } else if (it->kind == F_BINARY_SIZE) {
                imap_out(s, "%s %zu", it->key, n);
            } else if (it->origin >= 0) {
                size_t o = (uint64_t)it->origin < n ? (size_t)it->origin : n;
                size_t cnt = n - o < (uint64_t)it->count ? n - o : (size_t)it->count;
                imap_out(s, "%s<%lld> ", it->key, (long long)it->origin);
                out_literal(s, p ? p + o : "", cnt, it->kind == F_BINARY);
            } else {
                imap_out(s, "%s ", it->key);
                out_literal(s, p ? p : "", n, it->kind == F_BINARY);
            }
            buf_free(&b);
            break;
        }
        }
    }
    PUT(&s->out, ")\r\n");
    s->out.data[s->out.len] = 0;
    if (mp)
        mime_free(mp);
    free(data);
    return 0;
}

static void fetch_continue(imap_session *s)
{
    fetch_state *f = s->cont_state;
    s->no_expunge = !f->by_uid;
    for (size_t i = 0; i < FLAGS_CACHE; i++)
        f->fcache[i].valid = 0;
    /* Index-only answers of many messages fill a whole slice: make room
     * once rather than doubling up to it. */
    if (!f->need_blob && f->nuids - f->pos > 4096)
        buf_reserve(&s->out, FETCH_SLICE + (16u << 10));
    if (f->whole_view && f->nuids > s->view.n)
        f->nuids = s->view.n; /* never, as said above; but never read past it */
    const uint32_t *uids = fetch_uids(s, f);
    while (f->pos < f->nuids) {
        fetch_one(s, f, uids[f->pos++]);
        if (s->out.len >= FETCH_SLICE && f->pos < f->nuids)
            return; /* yield: the loop sends this slice and calls us again */
    }
    s->cont = NULL;
    s->cont_state = NULL;
    int cte = f->unknown_cte;
    fetch_free(f);
    if (cte)
        imap_tagged(s, "NO", "[UNKNOWN-CTE] a part has a transfer encoding we cannot decode");
    else
        imap_tagged(s, "OK", "FETCH completed");
}

void imap_cmd_fetch(imap_session *s, const imap_command *c)
{
    int by_uid = strncasecmp(c->name, "UID", 3) == 0;
    s->no_expunge = !by_uid;
    if (c->nargs < 2 || c->args[0].type != IMAP_ARG_ATOM) {
        imap_tagged(s, "BAD", "usage: FETCH set items");
        return;
    }
    fetch_state *f = calloc(1, sizeof(*f));
    f->by_uid = by_uid;
    const imap_arg *items = &c->args[1];
    int bad = 0;
    if (items->type == IMAP_ARG_LIST) {
        for (size_t i = 0; i < items->nlist && !bad; i++)
            bad = items->list[i].type != IMAP_ARG_ATOM || parse_item(f, items->list[i].str) < 0;
    } else {
        bad = items->type != IMAP_ARG_ATOM || parse_item(f, items->str) < 0;
    }
    int vanished = 0;
    if (!bad && c->nargs > 2) {
        /* (CHANGEDSINCE n [VANISHED]) */
        const imap_arg *mod = &c->args[2];
        bad = mod->type != IMAP_ARG_LIST;
        for (size_t i = 0; !bad && i < mod->nlist; i++) {
            const char *x = mod->list[i].str;
            if (x && strcasecmp(x, "CHANGEDSINCE") == 0 && i + 1 < mod->nlist) {
                bad = imap_arg_number(&mod->list[++i], &f->changedsince) < 0 ||
                      f->changedsince == 0;
                s->condstore = 1;
            } else if (x && strcasecmp(x, "VANISHED") == 0 && by_uid && s->qresync) {
                vanished = 1;
            } else {
                bad = 1;
            }
        }
    }
    if (bad || f->n == 0) {
        fetch_free(f);
        imap_tagged(s, "BAD", "invalid FETCH items");
        return;
    }
    if (by_uid)
        add_item(f, F_UID, "UID");
    if (f->changedsince || s->condstore) {
        int have = 0;
        for (size_t i = 0; i < f->n; i++)
            have |= f->items[i].kind == F_MODSEQ;
        if (!have && f->changedsince)
            add_item(f, F_MODSEQ, "MODSEQ");
    }
    int rc = 0;
    if (strcmp(c->args[0].str, "1:*") == 0) {
        f->whole_view = 1;
        f->nuids = s->view.n;
    } else {
        rc = imap_seqset_uids(&s->view, c->args[0].str, by_uid, &f->uids, &f->nuids);
    }
    if (rc < 0) {
        fetch_free(f);
        imap_tagged(s, "BAD", "invalid message set");
        return;
    }
    if (vanished && f->changedsince) {
        /* UID FETCH ... (CHANGEDSINCE m VANISHED): expunged since m, within
         * the requested uid range (RFC 7162 3.2.6). */
        uint32_t *req;
        size_t nreq;
        uint32_t star = s->view.n ? s->view.uids[s->view.n - 1] : 1;
        if (imap_uidset_parse(c->args[0].str, star, &req, &nreq, 10000000) == 0) {
            buf b;
            buf_init(&b);
            uint32_t *gone = malloc((nreq ? nreq : 1) * sizeof(uint32_t));
            size_t ng = 0;
            for (size_t i = 0; i < nreq; i++) {
                uint32_t idx;
                store_msg m;
                if (req[i] >= star)
                    break;
                if (store_msg_seek(s->acct->st, s->view.mailbox, req[i], &idx) == 0 &&
                    (store_msg_at(s->acct->st, s->view.mailbox, idx, &m) < 0 || m.uid != req[i]))
                    gone[ng++] = req[i];
            }
            if (ng) {
                imap_uidset_format(&b, gone, ng);
                imap_out(s, "* VANISHED (EARLIER) %s\r\n", (char *)b.data);
            }
            free(gone);
            buf_free(&b);
            free(req);
        }
    }
    if (f->sets_seen && !s->view.readonly) {
        /* Reading a body sets \Seen: one store call for the whole set. */
        hv_err err;
        if (f->nuids)
            store_set_flags(s->acct->st, s->view.mailbox, fetch_uids(s, f), f->nuids,
                            STORE_FLAGS_ADD, STORE_FLAG_SEEN, 0, NULL, &err);
        int have = 0;
        for (size_t i = 0; i < f->n; i++)
            have |= f->items[i].kind == F_FLAGS;
        if (!have)
            add_item(f, F_FLAGS, "FLAGS");
    }
    s->cont = fetch_continue;
    s->cont_state = f;
    s->cont_free = (void (*)(void *))fetch_free;
    fetch_continue(s);
}
