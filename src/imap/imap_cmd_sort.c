/*
 * imap_cmd_sort.c - SORT, UID SORT, THREAD and UID THREAD (RFC 5256), with
 * ESORT's RETURN options (RFC 5267) and SORT=DISPLAY (RFC 5957).
 *
 * Both commands first narrow the mailbox with imap_search_run, then read
 * each matching message's header once - only the header, straight from
 * the blob file up to its blank line - and keep the few keys they need in
 * an array that qsort orders. Strings are compared as i;ascii-casemap:
 * they are upper-cased once when extracted, so comparing is strcmp. Ties
 * go to the lower sequence number; a message whose Date: is missing or
 * unparseable uses its internal date as sent date (RFC 5256 2.2).
 *
 * THREAD=REFERENCES follows RFC 5256 section 3 step by step: containers
 * found through a hash table keyed by Message-ID, dummies for referenced
 * messages that are not in the set, pruning, subject merging, sorting.
 * No walk over the thread tree recurses, so a hostile References chain
 * cannot exhaust the worker's stack. Memory is linear in
 * the number of matching messages and the size of their threading
 * headers. The loop check when linking walks no further than the smaller
 * of the two trees involved (would_loop).
 *
 * SECURITY: header bytes come from anyone who can send mail; they are
 * read through the MIME parser's bounds (mime.h) and at most
 * MIME_DEFAULT_MAX_HEADER bytes of a header are read.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "imap/imap_internal.h"
#include "imap/mime.h"
#include "lib/log.h"

#define HDR_CHUNK 8192
#define HDR_MAX (MIME_DEFAULT_MAX_HEADER + HDR_CHUNK)
#define SORT_MAX_KEYS 32
#define NONE UINT32_MAX

/* ---- shared: search, header reading, key strings ---- */

/* Offset just past the header's blank line in p[0..n), 0 when not there
 * yet; *from remembers how far the search got. */
static size_t header_end(const uint8_t *p, size_t n, size_t *from)
{
    if (n >= 1 && p[0] == '\n')
        return 1;
    if (n >= 2 && p[0] == '\r' && p[1] == '\n')
        return 2;
    size_t i = *from > 2 ? *from - 2 : 0;
    for (; i + 1 < n; i++) {
        if (p[i] != '\n')
            continue;
        if (p[i + 1] == '\n')
            return i + 2;
        if (i + 2 < n && p[i + 1] == '\r' && p[i + 2] == '\n')
            return i + 3;
    }
    *from = n;
    return 0;
}

/* Reads the header of a message (up to and with its blank line, at most
 * HDR_MAX bytes) into hb and parses it. An unreadable blob reads as an
 * empty header: the message then sorts on empty keys and its internal
 * date instead of failing the whole command. */
static mime_part *load_header(imap_session *s, const store_msg *m, buf *hb)
{
    hv_err err;
    int fd;
    buf_reset(hb);
    if (store_blob_open(s->acct->st, &m->blob, &fd, NULL, &err) == 0) {
        size_t from = 0, end = 0;
        while (hb->len < HDR_MAX) {
            buf_reserve(hb, HDR_CHUNK);
            ssize_t r = read(fd, hb->data + hb->len, HDR_CHUNK);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                break;
            hb->len += (size_t)r;
            if ((end = header_end(hb->data, hb->len, &from)) != 0) {
                hb->len = end;
                break;
            }
        }
        close(fd);
    } else {
        log_warn("imap: session=%s uid=%u reason=\"unreadable for SORT/THREAD: %s\"", s->id,
                 m->uid, err.msg);
    }
    buf_reserve(hb, 0);
    hb->data[hb->len] = 0;
    return mime_parse((const char *)hb->data, hb->len, NULL);
}

/* Appends p[0..n) to pool, NULs dropped, NUL-terminated, and upper-cased
 * when upper is set (keys compared as i;ascii-casemap); returns its
 * offset. */
static size_t pool_put(buf *pool, const uint8_t *p, size_t n, int upper)
{
    size_t off = pool->len;
    buf_reserve(pool, n + 1);
    for (size_t i = 0; i < n; i++) {
        uint8_t ch = p[i];
        if (ch == 0)
            continue;
        if (upper && ch >= 'a' && ch <= 'z')
            ch = (uint8_t)(ch - 'a' + 'A');
        pool->data[pool->len++] = ch;
    }
    pool->data[pool->len++] = 0;
    return off;
}

/* The base subject of the header (first Subject field) into pool;
 * returns its offset and sets *reply when a Re:/Fwd: marker was removed. */
static size_t subject_key(const mime_part *mp, const char *hdr, buf *tmp, buf *tmp2, buf *pool,
                          uint8_t *reply)
{
    buf_reset(tmp);
    buf_reset(tmp2);
    mime_header_value(mp, hdr, "Subject", tmp);
    /* Several Subject fields come joined with "\n": the first one counts. */
    uint8_t *nl = memchr(tmp->data, '\n', tmp->len);
    if (nl)
        *nl = 0;
    int r = mime_base_subject((const char *)tmp->data, tmp2);
    if (reply)
        *reply = (uint8_t)r;
    return pool_put(pool, tmp2->data, tmp2->len, 1);
}

static int64_t sent_date(const mime_part *mp, const char *hdr, const store_msg *m)
{
    int64_t d = mime_date(mp, hdr);
    return d < 0 ? m->internal_date : d;
}

static int cmp_i64(int64_t a, int64_t b) { return (a > b) - (a < b); }

/* CHARSET and search criteria at c->args[i..]: runs the search. Returns
 * 0, or -1 after answering the command. */
static int run_search(imap_session *s, const imap_command *c, size_t i, uint32_t **hits,
                      size_t *nh, uint64_t *maxmod, int *uses_modseq)
{
    if (i >= c->nargs ||
        (c->args[i].type != IMAP_ARG_ATOM && c->args[i].type != IMAP_ARG_STRING)) {
        imap_tagged(s, "BAD", "missing charset");
        return -1;
    }
    const char *cs = c->args[i].str;
    if (strcasecmp(cs, "UTF-8") != 0 && strcasecmp(cs, "US-ASCII") != 0) {
        imap_tagged(s, "NO", "[BADCHARSET (UTF-8 US-ASCII)] unsupported charset");
        return -1;
    }
    if (++i >= c->nargs) {
        imap_tagged(s, "BAD", "missing search criteria");
        return -1;
    }
    const char *why = NULL;
    if (imap_search_run(s, c->args + i, c->nargs - i, hits, nh, maxmod, uses_modseq, &why) < 0) {
        imap_tagged(s, "BAD", "%s", why ? why : "invalid search");
        return -1;
    }
    return 0;
}

/* The index entry of a uid found by the search; -1 when it is gone. */
static int msg_of(imap_session *s, uint32_t uid, store_msg *m)
{
    uint32_t idx;
    if (store_msg_seek(s->acct->st, s->view.mailbox, uid, &idx) < 0 ||
        store_msg_at(s->acct->st, s->view.mailbox, idx, m) < 0 || m->uid != uid)
        return -1;
    return 0;
}

static uint32_t out_num(imap_session *s, int by_uid, uint32_t uid)
{
    return by_uid ? uid : imap_view_seq(&s->view, uid);
}

/* ---- SORT ---- */

/* String keys first: they index sort_msg.str. */
enum sort_kind {
    K_SUBJECT, K_FROM, K_TO, K_CC, K_DISPLAYFROM, K_DISPLAYTO, K_NSTR,
    K_ARRIVAL = K_NSTR, K_DATE, K_SIZE,
};

static const struct { const char *name; enum sort_kind kind; } sort_names[] = {
    {"ARRIVAL", K_ARRIVAL}, {"CC", K_CC},
    {"DATE", K_DATE},       {"FROM", K_FROM},
    {"SIZE", K_SIZE},       {"SUBJECT", K_SUBJECT},
    {"TO", K_TO},           {"DISPLAYFROM", K_DISPLAYFROM}, /* RFC 5957 */
    {"DISPLAYTO", K_DISPLAYTO},
};

typedef struct sort_key {
    uint8_t kind, reverse;
} sort_key;

typedef struct sort_msg {
    uint32_t uid;
    int64_t arrival, date;
    uint64_t size;
    size_t str[K_NSTR]; /* offsets into the key pool; 0 is "" */
} sort_msg;

typedef struct sort_ctx {
    const sort_key *keys;
    size_t nkeys;
    const char *pool;
} sort_ctx;

static int sort_cmp(const void *pa, const void *pb, void *vctx)
{
    const sort_ctx *x = vctx;
    const sort_msg *a = pa, *b = pb;
    for (size_t k = 0; k < x->nkeys; k++) {
        int r;
        switch (x->keys[k].kind) {
        case K_ARRIVAL: r = cmp_i64(a->arrival, b->arrival); break;
        case K_DATE: r = cmp_i64(a->date, b->date); break;
        case K_SIZE: r = (a->size > b->size) - (a->size < b->size); break;
        default: {
            unsigned i = x->keys[k].kind;
            r = strcmp(x->pool + a->str[i], x->pool + b->str[i]);
            r = (r > 0) - (r < 0);
        }
        }
        if (r)
            return x->keys[k].reverse ? -r : r;
    }
    /* REVERSE never applies to this implicit last key (RFC 5256 3). */
    return (a->uid > b->uid) - (a->uid < b->uid);
}

/* (REVERSE DATE SUBJECT ...) -> keys; -1 on a bad program. */
static int parse_program(const imap_arg *list, sort_key *keys, size_t *nkeys, unsigned *need)
{
    if (list->type != IMAP_ARG_LIST || list->nlist == 0)
        return -1;
    *nkeys = 0;
    *need = 0;
    int reverse = 0;
    for (size_t i = 0; i < list->nlist; i++) {
        const imap_arg *a = &list->list[i];
        if (a->type != IMAP_ARG_ATOM)
            return -1;
        if (strcasecmp(a->str, "REVERSE") == 0) {
            if (reverse)
                return -1;
            reverse = 1;
            continue;
        }
        size_t k;
        for (k = 0; k < sizeof(sort_names) / sizeof(sort_names[0]); k++)
            if (strcasecmp(a->str, sort_names[k].name) == 0)
                break;
        if (k == sizeof(sort_names) / sizeof(sort_names[0]) || *nkeys == SORT_MAX_KEYS)
            return -1;
        keys[*nkeys].kind = (uint8_t)sort_names[k].kind;
        keys[*nkeys].reverse = (uint8_t)reverse;
        (*nkeys)++;
        *need |= 1u << sort_names[k].kind;
        reverse = 0;
    }
    return reverse || *nkeys == 0 ? -1 : 0;
}

static void sort_extract(imap_session *s, const store_msg *sm, unsigned need, sort_msg *m,
                         buf *hb, buf *tmp, buf *tmp2, buf *pool)
{
    memset(m, 0, sizeof(*m));
    m->uid = sm->uid;
    m->arrival = sm->internal_date;
    m->date = sm->internal_date;
    m->size = sm->size;
    if (!(need & (((1u << K_NSTR) - 1) | (1u << K_DATE))))
        return; /* ARRIVAL and SIZE come from the index */
    mime_part *mp = load_header(s, sm, hb);
    const char *hdr = (const char *)hb->data;
    if (need & 1u << K_DATE)
        m->date = sent_date(mp, hdr, sm);
    if (need & 1u << K_SUBJECT)
        m->str[K_SUBJECT] = subject_key(mp, hdr, tmp, tmp2, pool, NULL);
    static const struct { enum sort_kind kind; const char *field; int display; } addr[] = {
        {K_FROM, "From", 0}, {K_TO, "To", 0}, {K_CC, "Cc", 0},
        {K_DISPLAYFROM, "From", 1}, {K_DISPLAYTO, "To", 1},
    };
    for (size_t i = 0; i < sizeof(addr) / sizeof(addr[0]); i++) {
        if (!(need & 1u << addr[i].kind))
            continue;
        buf_reset(tmp);
        mime_first_address(mp, hdr, addr[i].field, addr[i].display ? NULL : tmp,
                           addr[i].display ? tmp : NULL);
        m->str[addr[i].kind] = pool_put(pool, tmp->data, tmp->len, 1);
    }
    mime_free(mp);
}

/* ESORT's ALL: the numbers in sort order as a sequence set, ascending
 * runs of consecutive numbers joined into ranges. */
static void format_sorted_set(buf *b, const uint32_t *v, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j + 1 < n && v[j + 1] == v[j] + 1)
            j++;
        buf_printf(b, i ? ",%u" : "%u", v[i]);
        if (j > i)
            buf_printf(b, ":%u", v[j]);
        i = j + 1;
    }
}

void imap_cmd_sort(imap_session *s, const imap_command *c)
{
    int by_uid = strncasecmp(c->name, "UID", 3) == 0;
    s->no_expunge = !by_uid;
    size_t i = 0;
    int esort = 0, r_min = 0, r_max = 0, r_count = 0, r_all = 0;
    if (c->nargs >= 2 && c->args[0].type == IMAP_ARG_ATOM &&
        strcasecmp(c->args[0].str, "RETURN") == 0 && c->args[1].type == IMAP_ARG_LIST) {
        const imap_arg *r = &c->args[1];
        esort = 1;
        for (size_t k = 0; k < r->nlist; k++) {
            const char *x = r->list[k].type == IMAP_ARG_ATOM ? r->list[k].str : "";
            if (strcasecmp(x, "MIN") == 0) r_min = 1;
            else if (strcasecmp(x, "MAX") == 0) r_max = 1;
            else if (strcasecmp(x, "COUNT") == 0) r_count = 1;
            else if (strcasecmp(x, "ALL") == 0) r_all = 1;
            else {
                imap_tagged(s, "BAD", "unknown RETURN option");
                return;
            }
        }
        if (!r_min && !r_max && !r_count)
            r_all = 1;
        i = 2;
    }
    sort_key keys[SORT_MAX_KEYS];
    size_t nkeys;
    unsigned need;
    if (i >= c->nargs || parse_program(&c->args[i], keys, &nkeys, &need) < 0) {
        imap_tagged(s, "BAD", "invalid sort criteria");
        return;
    }
    uint32_t *hits;
    size_t nh;
    uint64_t maxmod = 0;
    int uses_modseq = 0;
    if (run_search(s, c, i + 1, &hits, &nh, &maxmod, &uses_modseq) < 0)
        return;

    sort_msg *msgs = malloc((nh ? nh : 1) * sizeof(sort_msg));
    if (!msgs)
        abort();
    buf pool, hb, tmp, tmp2;
    buf_init(&pool);
    buf_init(&hb);
    buf_init(&tmp);
    buf_init(&tmp2);
    buf_append(&pool, "", 1); /* offset 0: the empty key */
    size_t n = 0;
    for (size_t k = 0; k < nh; k++) {
        store_msg sm;
        if (msg_of(s, hits[k], &sm) == 0)
            sort_extract(s, &sm, need, &msgs[n++], &hb, &tmp, &tmp2, &pool);
    }
    buf_free(&hb);
    buf_free(&tmp);
    buf_free(&tmp2);
    sort_ctx ctx = {keys, nkeys, (const char *)pool.data};
    qsort_r(msgs, n, sizeof(sort_msg), sort_cmp, &ctx);
    for (size_t k = 0; k < n; k++)
        hits[k] = out_num(s, by_uid, msgs[k].uid);
    free(msgs);
    buf_free(&pool);

    buf b;
    buf_init(&b);
    if (esort) {
        buf_printf(&b, "* ESEARCH (TAG \"%s\")%s", s->tag, by_uid ? " UID" : "");
        if (n && r_min)
            buf_printf(&b, " MIN %u", hits[0]);
        if (n && r_max)
            buf_printf(&b, " MAX %u", hits[n - 1]);
        if (r_count)
            buf_printf(&b, " COUNT %zu", n);
        if (n && r_all) {
            buf_append_str(&b, " ALL ");
            format_sorted_set(&b, hits, n);
        }
        if (n && uses_modseq)
            buf_printf(&b, " MODSEQ %llu", (unsigned long long)maxmod);
    } else {
        buf_append_str(&b, "* SORT");
        for (size_t k = 0; k < n; k++)
            buf_printf(&b, " %u", hits[k]);
        if (n && uses_modseq)
            buf_printf(&b, " (MODSEQ %llu)", (unsigned long long)maxmod);
    }
    buf_append_str(&b, "\r\n");
    imap_out_raw(s, b.data, b.len);
    buf_free(&b);
    free(hits);
    imap_tagged(s, "OK", "SORT completed");
}

/* ---- THREAD ---- */

typedef struct thr_msg {
    uint32_t num;  /* what the answer shows: seq or uid */
    uint8_t reply; /* the subject had a Re:/Fwd: marker */
    int64_t date;
    size_t subj; /* base subject, upper-cased, in the key pool */
} thr_msg;

/* A container (RFC 5256 3): a message, or a dummy (msg == NONE). */
typedef struct tnode {
    uint32_t msg;
    uint32_t parent, kid, next, prev; /* kid: the first child */
} tnode;

/* Open-addressing table from a string (an offset into a pool) to a
 * number; grows at half full. */
typedef struct strtab {
    struct stent { size_t key; uint32_t hash, val; } *e;
    size_t cap, used;
} strtab;

typedef struct thr {
    thr_msg *msgs;
    uint32_t nmsgs;
    tnode *nodes;
    uint32_t nnodes, capnodes;
    buf pool;   /* subjects */
    buf ids;    /* Message-IDs */
    strtab byid;
    uint32_t *stack; /* scratch, one entry per node */
} thr;

static uint32_t str_hash(const char *p)
{
    uint32_t h = 2166136261u;
    for (; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    return h;
}

static struct stent *strtab_slot(strtab *t, const char *base, const char *key, uint32_t h)
{
    size_t mask = t->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        struct stent *e = &t->e[i];
        if (e->val == NONE || (e->hash == h && strcmp(base + e->key, key) == 0))
            return e;
    }
}

static void strtab_grow(strtab *t)
{
    if (t->cap && (t->used + 1) * 2 <= t->cap)
        return;
    size_t cap = t->cap ? t->cap * 2 : 1024;
    struct stent *e = malloc(cap * sizeof(*e));
    if (!e)
        abort();
    for (size_t i = 0; i < cap; i++)
        e[i].val = NONE;
    for (size_t i = 0; i < t->cap; i++) {
        if (t->e[i].val == NONE)
            continue;
        size_t j = t->e[i].hash & (cap - 1);
        while (e[j].val != NONE)
            j = (j + 1) & (cap - 1);
        e[j] = t->e[i];
    }
    free(t->e);
    t->e = e;
    t->cap = cap;
}

static uint32_t node_new(thr *t, uint32_t msg)
{
    if (t->nnodes == t->capnodes) {
        t->capnodes = t->capnodes ? t->capnodes * 2 : 1024;
        t->nodes = realloc(t->nodes, t->capnodes * sizeof(tnode));
        if (!t->nodes)
            abort();
    }
    tnode *n = &t->nodes[t->nnodes];
    n->msg = msg;
    n->parent = n->kid = n->next = n->prev = NONE;
    return t->nnodes++;
}

/* The container of a Message-ID, created as a dummy when new. */
static uint32_t node_of_id(thr *t, const char *id)
{
    strtab_grow(&t->byid);
    uint32_t h = str_hash(id);
    struct stent *e = strtab_slot(&t->byid, (const char *)t->ids.data, id, h);
    if (e->val != NONE)
        return e->val;
    e->key = pool_put(&t->ids, (const uint8_t *)id, strlen(id), 0);
    e->hash = h;
    e->val = node_new(t, NONE);
    t->byid.used++;
    return e->val;
}

static void unlink_node(thr *t, uint32_t x)
{
    tnode *n = &t->nodes[x];
    if (n->parent == NONE)
        return;
    if (n->prev != NONE)
        t->nodes[n->prev].next = n->next;
    else
        t->nodes[n->parent].kid = n->next;
    if (n->next != NONE)
        t->nodes[n->next].prev = n->prev;
    n->parent = n->next = n->prev = NONE;
}

/* Makes x the first child of p (order is settled by sorting later). */
static void add_child(thr *t, uint32_t p, uint32_t x)
{
    tnode *n = &t->nodes[x];
    n->parent = p;
    n->prev = NONE;
    n->next = t->nodes[p].kid;
    if (n->next != NONE)
        t->nodes[n->next].prev = x;
    t->nodes[p].kid = x;
}

/* The node after d in a pre-order walk of x's subtree, NONE at its end. */
static uint32_t subtree_next(const thr *t, uint32_t d, uint32_t x)
{
    if (t->nodes[d].kid != NONE)
        return t->nodes[d].kid;
    for (; d != x; d = t->nodes[d].parent)
        if (t->nodes[d].next != NONE)
            return t->nodes[d].next;
    return NONE;
}

/* Would making x (which has no parent) a child of p close a loop, i.e. is
 * x p or one of p's ancestors? Walks up from p and through x's subtree in
 * step and stops when either ends, so it costs the smaller of p's depth
 * and x's subtree: a long References chain of new ids (each a fresh,
 * childless container) links in constant time per id. */
static int would_loop(const thr *t, uint32_t x, uint32_t p)
{
    uint32_t up = p, down = x;
    for (;;) {
        if (up == x || down == p)
            return 1;
        up = t->nodes[up].parent;
        down = subtree_next(t, down, x);
        if (up == NONE || down == NONE)
            return 0;
    }
}

/* The next msg-id "<...@...>" of p[*i..n): its inside, blanks removed,
 * NUL-terminated in out. Returns 0 when there is no more. */
static int next_msgid(const uint8_t *p, size_t n, size_t *i, buf *out)
{
    while (*i < n) {
        const uint8_t *lt = memchr(p + *i, '<', n - *i);
        if (!lt)
            break;
        size_t a = (size_t)(lt - p) + 1, j = a;
        int at = 0;
        while (j < n && p[j] != '>' && p[j] != '<')
            at |= p[j++] == '@';
        if (j >= n)
            break;
        *i = p[j] == '<' ? j : j + 1;
        if (p[j] == '<' || !at)
            continue;
        buf_reset(out);
        for (size_t k = a; k < j; k++)
            if (p[k] != ' ' && p[k] != '\t' && p[k] != '\r' && p[k] != '\n' && p[k] != 0)
                buf_append(out, &p[k], 1);
        buf_append(out, "", 0);
        return 1;
    }
    *i = n;
    return 0;
}

/* RFC 5256 3 step 1 for message mi: its container, the chain of its
 * References (or In-Reply-To) and its place under the last reference. */
static void thread_link(thr *t, uint32_t mi, const mime_part *mp, const char *hdr, buf *tmp,
                        buf *id)
{
    uint32_t c = NONE;
    size_t i = 0;
    buf_reset(tmp);
    if (mime_header_value(mp, hdr, "Message-ID", tmp) &&
        next_msgid(tmp->data, tmp->len, &i, id)) {
        c = node_of_id(t, (const char *)id->data);
        if (t->nodes[c].msg != NONE)
            c = NONE; /* a duplicate: only the first message keeps the id */
    }
    if (c == NONE)
        c = node_new(t, mi);
    t->nodes[c].msg = mi;

    uint32_t prev = NONE;
    int any = 0;
    for (int pass = 0; pass < 2 && !any; pass++) {
        buf_reset(tmp);
        if (!mime_header_value(mp, hdr, pass ? "In-Reply-To" : "References", tmp))
            continue;
        i = 0;
        while (next_msgid(tmp->data, tmp->len, &i, id)) {
            uint32_t r = node_of_id(t, (const char *)id->data);
            any = 1;
            /* Link only a container without a parent (References may be
             * truncated: keep the first link) and never into a loop. */
            if (prev != NONE && t->nodes[r].parent == NONE && !would_loop(t, r, prev))
                add_child(t, prev, r);
            prev = r;
            if (pass)
                break; /* In-Reply-To: its first msg-id only */
        }
    }
    /* Step 1.B: the message goes under its last reference, or to the top. */
    unlink_node(t, c);
    if (prev != NONE && !would_loop(t, c, prev))
        add_child(t, prev, c);
}

/* Node x's representative message: itself, or a dummy's first child. */
static uint32_t node_msg(const thr *t, uint32_t x)
{
    while (x != NONE && t->nodes[x].msg == NONE)
        x = t->nodes[x].kid;
    return x == NONE ? NONE : t->nodes[x].msg;
}

typedef struct kidref {
    uint32_t node, msg;
} kidref;

static int msg_cmp(const thr *t, uint32_t a, uint32_t b)
{
    if (a == NONE || b == NONE)
        return (a == NONE) - (b == NONE);
    int r = cmp_i64(t->msgs[a].date, t->msgs[b].date);
    return r ? r : (a > b) - (a < b); /* message order = sequence order */
}

static int kid_cmp(const void *pa, const void *pb, void *vt)
{
    const kidref *a = pa, *b = pb;
    return msg_cmp(vt, a->msg, b->msg);
}

/* Sorts p's children by sent date (a dummy by its first child's). */
static void sort_kids(thr *t, uint32_t p, kidref *scratch)
{
    size_t n = 0;
    for (uint32_t x = t->nodes[p].kid; x != NONE; x = t->nodes[x].next)
        scratch[n++] = (kidref){x, node_msg(t, x)};
    if (n < 2)
        return;
    qsort_r(scratch, n, sizeof(kidref), kid_cmp, t);
    t->nodes[p].kid = scratch[0].node;
    for (size_t i = 0; i < n; i++) {
        tnode *x = &t->nodes[scratch[i].node];
        x->prev = i ? scratch[i - 1].node : NONE;
        x->next = i + 1 < n ? scratch[i + 1].node : NONE;
    }
}

/* The nodes under root in pre-order (root first); returns the count. */
static uint32_t preorder(thr *t, uint32_t root, uint32_t *order)
{
    uint32_t n = 0, sp = 0;
    t->stack[sp++] = root;
    while (sp) {
        uint32_t x = t->stack[--sp];
        order[n++] = x;
        for (uint32_t k = t->nodes[x].kid; k != NONE; k = t->nodes[k].next)
            t->stack[sp++] = k;
    }
    return n;
}

/* Step 4: dummies without children go; a dummy's children take its place,
 * except at the top where only a single child is promoted. Children are
 * pruned before their parent, so the decision sees what is left. */
static void prune(thr *t, uint32_t root, uint32_t *order)
{
    uint32_t n = preorder(t, root, order);
    for (uint32_t i = n; i-- > 1;) {
        uint32_t x = order[i];
        tnode *d = &t->nodes[x];
        if (d->msg != NONE)
            continue;
        if (d->kid == NONE) {
            unlink_node(t, x);
            continue;
        }
        uint32_t p = d->parent;
        if (p == root && t->nodes[d->kid].next != NONE)
            continue;
        while (d->kid != NONE) {
            uint32_t k = d->kid;
            unlink_node(t, k);
            add_child(t, p, k);
        }
        unlink_node(t, x);
    }
}

static const char *node_subject(const thr *t, uint32_t x)
{
    uint32_t m = node_msg(t, x);
    return m == NONE ? "" : (const char *)t->pool.data + t->msgs[m].subj;
}

/* Step 6: threads whose top messages share a base subject are merged. */
static void merge_subjects(thr *t, uint32_t root, kidref *scratch)
{
    size_t n = 0;
    for (uint32_t x = t->nodes[root].kid; x != NONE; x = t->nodes[x].next)
        scratch[n++].node = x;
    strtab tab = {0};
    const char *base = (const char *)t->pool.data;
    for (size_t i = 0; i < n; i++) {
        uint32_t x = scratch[i].node;
        uint32_t m = node_msg(t, x);
        if (m == NONE || base[t->msgs[m].subj] == 0)
            continue;
        strtab_grow(&tab);
        uint32_t h = str_hash(base + t->msgs[m].subj);
        struct stent *e = strtab_slot(&tab, base, base + t->msgs[m].subj, h);
        if (e->val == NONE) {
            e->key = t->msgs[m].subj;
            e->hash = h;
            e->val = x;
            tab.used++;
            continue;
        }
        tnode *old = &t->nodes[e->val];
        int x_dummy = t->nodes[x].msg == NONE;
        if (old->msg != NONE &&
            (x_dummy || (t->msgs[old->msg].reply && !t->msgs[t->nodes[x].msg].reply)))
            e->val = x;
    }
    for (size_t i = 0; i < n; i++) {
        uint32_t x = scratch[i].node;
        const char *subj = node_subject(t, x);
        if (!*subj)
            continue;
        if (!tab.cap)
            break;
        struct stent *e = strtab_slot(&tab, base, subj, str_hash(subj));
        uint32_t y = e->val;
        if (y == NONE || y == x)
            continue;
        tnode *X = &t->nodes[x], *Y = &t->nodes[y];
        int x_dummy = X->msg == NONE, y_dummy = Y->msg == NONE;
        if (x_dummy && y_dummy) {
            while (X->kid != NONE) {
                uint32_t k = X->kid;
                unlink_node(t, k);
                add_child(t, y, k);
            }
            unlink_node(t, x);
        } else if (y_dummy || (!x_dummy && t->msgs[X->msg].reply && !t->msgs[Y->msg].reply)) {
            unlink_node(t, x);
            add_child(t, y, x);
        } else {
            uint32_t d = node_new(t, NONE); /* may move t->nodes */
            unlink_node(t, x);
            unlink_node(t, y);
            add_child(t, root, d);
            add_child(t, d, x);
            add_child(t, d, y);
            e->val = d;
        }
    }
    free(tab.e);
}

/* One thread-list (RFC 5256 5): "(1 2 (3)(4 5))"; a dummy shows no number. */
static void write_thread(thr *t, uint32_t top, buf *b)
{
    uint32_t sp = 0, cur = top;
    for (;;) {
        /* open cur's list and follow its chain of only children */
        buf_put_u8(b, '(');
        int wrote = 0;
        uint32_t e = cur;
        for (;;) {
            if (t->nodes[e].msg != NONE) {
                buf_printf(b, wrote ? " %u" : "%u", t->msgs[t->nodes[e].msg].num);
                wrote = 1;
            }
            uint32_t k = t->nodes[e].kid;
            if (k == NONE || t->nodes[k].next != NONE)
                break;
            e = k;
        }
        if (t->nodes[e].kid != NONE) {
            /* two or more children: each its own list, inside this one */
            if (wrote)
                buf_put_u8(b, ' ');
            cur = t->nodes[e].kid;
            t->stack[sp++] = cur;
            continue;
        }
        buf_put_u8(b, ')');
        /* climb: the next sibling's list, or close the enclosing one */
        cur = NONE;
        while (sp) {
            uint32_t done = t->stack[--sp];
            if (t->nodes[done].next != NONE) {
                cur = t->nodes[done].next;
                t->stack[sp++] = cur;
                break;
            }
            buf_put_u8(b, ')');
        }
        if (cur == NONE)
            return;
    }
}

static void thread_references(thr *t, buf *b)
{
    /* Step 2: the root set; node 0 is the root. */
    for (uint32_t x = 1; x < t->nnodes; x++)
        if (t->nodes[x].parent == NONE)
            add_child(t, 0, x);
    /* Step 3: the id table is no longer needed. */
    free(t->byid.e);
    t->byid = (strtab){0};
    /* Subject merging adds at most one dummy per top-level thread. */
    uint32_t room = t->nnodes * 2 + 1;
    t->stack = malloc(room * sizeof(uint32_t));
    uint32_t *order = malloc(room * sizeof(uint32_t));
    kidref *scratch = malloc(room * sizeof(kidref));
    if (!t->stack || !order || !scratch)
        abort();
    prune(t, 0, order);
    /* Step 5: the top level by date, dummies by their first child. */
    for (uint32_t x = t->nodes[0].kid; x != NONE; x = t->nodes[x].next)
        if (t->nodes[x].msg == NONE)
            sort_kids(t, x, scratch);
    sort_kids(t, 0, scratch);
    merge_subjects(t, 0, scratch);
    /* Step 7: every set of siblings, children before their parents. */
    uint32_t n = preorder(t, 0, order);
    for (uint32_t i = n; i-- > 0;)
        sort_kids(t, order[i], scratch);
    for (uint32_t x = t->nodes[0].kid; x != NONE; x = t->nodes[x].next)
        write_thread(t, x, b);
    free(order);
    free(scratch);
}

static int subj_cmp(const void *pa, const void *pb, void *vt)
{
    const thr *t = vt;
    uint32_t a = *(const uint32_t *)pa, b = *(const uint32_t *)pb;
    int r = strcmp((const char *)t->pool.data + t->msgs[a].subj,
                   (const char *)t->pool.data + t->msgs[b].subj);
    return r ? r : msg_cmp(t, a, b);
}

static int first_cmp(const void *pa, const void *pb, void *vt)
{
    return msg_cmp(vt, ((const kidref *)pa)->msg, ((const kidref *)pb)->msg);
}

/* ORDEREDSUBJECT: by base subject then date; one thread per subject, the
 * first message its root and the others its children; threads by the
 * date of their first message. */
static void thread_orderedsubject(thr *t, buf *b)
{
    uint32_t n = t->nmsgs;
    uint32_t *ix = malloc((n ? n : 1) * sizeof(uint32_t));
    kidref *groups = malloc((n ? n : 1) * sizeof(kidref));
    if (!ix || !groups)
        abort();
    for (uint32_t i = 0; i < n; i++)
        ix[i] = i;
    qsort_r(ix, n, sizeof(uint32_t), subj_cmp, t);
    size_t ng = 0;
    const char *base = (const char *)t->pool.data;
    for (uint32_t i = 0; i < n; i++)
        if (i == 0 || strcmp(base + t->msgs[ix[i]].subj, base + t->msgs[ix[i - 1]].subj) != 0)
            groups[ng++] = (kidref){i, ix[i]}; /* node: where the group starts in ix */
    qsort_r(groups, ng, sizeof(kidref), first_cmp, t);
    for (size_t g = 0; g < ng; g++) {
        uint32_t start = groups[g].node, end = start + 1;
        while (end < n && strcmp(base + t->msgs[ix[end]].subj, base + t->msgs[ix[start]].subj) == 0)
            end++;
        buf_printf(b, "(%u", t->msgs[ix[start]].num);
        if (end - start == 2) {
            buf_printf(b, " %u", t->msgs[ix[start + 1]].num);
        } else if (end - start > 2) {
            buf_put_u8(b, ' ');
            for (uint32_t k = start + 1; k < end; k++)
                buf_printf(b, "(%u)", t->msgs[ix[k]].num);
        }
        buf_put_u8(b, ')');
    }
    free(ix);
    free(groups);
}

void imap_cmd_thread(imap_session *s, const imap_command *c)
{
    int by_uid = strncasecmp(c->name, "UID", 3) == 0;
    s->no_expunge = !by_uid;
    if (c->nargs < 1 || c->args[0].type != IMAP_ARG_ATOM) {
        imap_tagged(s, "BAD", "usage: THREAD algorithm charset criteria");
        return;
    }
    int refs;
    if (strcasecmp(c->args[0].str, "REFERENCES") == 0)
        refs = 1;
    else if (strcasecmp(c->args[0].str, "ORDEREDSUBJECT") == 0)
        refs = 0;
    else {
        imap_tagged(s, "BAD", "unknown threading algorithm");
        return;
    }
    uint32_t *hits;
    size_t nh;
    if (run_search(s, c, 1, &hits, &nh, NULL, NULL) < 0)
        return;

    thr t = {0};
    t.msgs = malloc((nh ? nh : 1) * sizeof(thr_msg));
    if (!t.msgs)
        abort();
    buf_append(&t.pool, "", 1);
    if (refs)
        node_new(&t, NONE); /* node 0: the root */
    buf hb, tmp, tmp2;
    buf_init(&hb);
    buf_init(&tmp);
    buf_init(&tmp2);
    for (size_t k = 0; k < nh; k++) {
        store_msg sm;
        if (msg_of(s, hits[k], &sm) < 0)
            continue;
        uint32_t mi = t.nmsgs++;
        thr_msg *m = &t.msgs[mi];
        m->num = out_num(s, by_uid, sm.uid);
        mime_part *mp = load_header(s, &sm, &hb);
        const char *hdr = (const char *)hb.data;
        m->date = sent_date(mp, hdr, &sm);
        m->subj = subject_key(mp, hdr, &tmp, &tmp2, &t.pool, &m->reply);
        if (refs)
            thread_link(&t, mi, mp, hdr, &tmp, &tmp2);
        mime_free(mp);
    }
    buf_free(&hb);
    buf_free(&tmp);
    buf_free(&tmp2);
    free(hits);

    buf b;
    buf_init(&b);
    buf_append_str(&b, t.nmsgs ? "* THREAD " : "* THREAD");
    if (refs)
        thread_references(&t, &b);
    else
        thread_orderedsubject(&t, &b);
    buf_append_str(&b, "\r\n");
    imap_out_raw(s, b.data, b.len);
    buf_free(&b);
    free(t.msgs);
    free(t.nodes);
    free(t.stack);
    free(t.byid.e);
    buf_free(&t.pool);
    buf_free(&t.ids);
    imap_tagged(s, "OK", "THREAD completed");
}
