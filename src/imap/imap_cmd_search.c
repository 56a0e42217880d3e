/*
 * imap_cmd_search.c - SEARCH and UID SEARCH, with ESEARCH (RETURN) and
 * CONDSTORE's MODSEQ criterion.
 *
 * The criteria become a small tree (depth and size bounded), evaluated per
 * message with the cheap tests first: flags, sizes, dates and uids come
 * from the index; a message file is read and parsed only when a header or
 * text criterion is reached, and at most once per message.
 *
 * The values of header fields that were searched are kept in a process-wide
 * cache keyed by blob and field name (see hcache_*): blobs are named by their
 * SHA-256 and never change, so an entry never goes stale, and a repeated
 * "SEARCH FROM x" / "HEADER Subject y" reads no message file.
 */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "imap/imap_internal.h"
#include "imap/mime.h"

#define SEARCH_MAX_DEPTH 32
#define SEARCH_MAX_NODES 1000

enum sop {
    S_ALL, S_NONE, S_AND, S_OR, S_NOT, S_FLAG_SET, S_FLAG_CLEAR, S_LARGER, S_SMALLER,
    S_BEFORE, S_ON, S_SINCE, S_SENTBEFORE, S_SENTON, S_SENTSINCE, S_HEADER, S_BODY, S_TEXT,
    S_UIDS, S_MODSEQ,
};

typedef struct snode {
    enum sop op;
    uint64_t num;
    const char *hdr, *str;
    uint32_t *uids;
    size_t nuids;
    struct snode **kids;
    size_t nkids;
} snode;

typedef struct sparse {
    imap_session *s;
    const imap_arg *args;
    size_t n, i;
    int nodes, uses_modseq;
    const char *err;
} sparse;

typedef struct smsg {
    store_msg m;
    char *data;
    size_t len;
    mime_part *mp;
    int loaded, failed;
    int header_only; /* data holds just the header (loaded by load_header) */
} smsg;

static void node_free(snode *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->nkids; i++)
        node_free(n->kids[i]);
    free(n->kids);
    free(n->uids);
    free(n);
}

static snode *node_new(sparse *p, enum sop op)
{
    if (++p->nodes > SEARCH_MAX_NODES) {
        p->err = "search program too large";
        return NULL;
    }
    snode *n = calloc(1, sizeof(*n));
    n->op = op;
    return n;
}

static void kid(snode *n, snode *k)
{
    n->kids = realloc(n->kids, (n->nkids + 1) * sizeof(snode *));
    n->kids[n->nkids++] = k;
}

static const char *next_str(sparse *p)
{
    if (p->i >= p->n || (p->args[p->i].type != IMAP_ARG_ATOM &&
                         p->args[p->i].type != IMAP_ARG_STRING)) {
        p->err = "missing search argument";
        return NULL;
    }
    return p->args[p->i++].str;
}

/* "1-Feb-1994" -> midnight UTC of that day */
static int64_t parse_date(const char *s)
{
    static const char *mon[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                "jul", "aug", "sep", "oct", "nov", "dec"};
    int d, y;
    char m[4];
    if (sscanf(s, "%2d-%3s-%4d", &d, m, &y) != 3)
        return -1;
    int mi;
    for (mi = 0; mi < 12; mi++)
        if (strcasecmp(m, mon[mi]) == 0)
            break;
    if (mi == 12 || d < 1 || d > 31 || y < 1900)
        return -1;
    struct tm tm = {0};
    tm.tm_year = y - 1900;
    tm.tm_mon = mi;
    tm.tm_mday = d;
    return (int64_t)timegm(&tm);
}

static snode *parse_key(sparse *p, int depth);

static snode *parse_list(sparse *p, const imap_arg *list, size_t n, int depth)
{
    sparse sub = *p;
    sub.args = list;
    sub.n = n;
    sub.i = 0;
    snode *and = node_new(p, S_AND);
    if (!and)
        return NULL;
    while (sub.i < sub.n && !sub.err) {
        snode *k = parse_key(&sub, depth + 1);
        if (!k)
            break;
        kid(and, k);
    }
    p->nodes = sub.nodes;
    p->uses_modseq |= sub.uses_modseq;
    if (sub.err || and->nkids == 0) {
        p->err = sub.err ? sub.err : "empty search list";
        node_free(and);
        return NULL;
    }
    return and;
}

static const struct { const char *name; uint64_t flag; int set; } flag_keys[] = {
    {"ANSWERED", STORE_FLAG_ANSWERED, 1}, {"DELETED", STORE_FLAG_DELETED, 1},
    {"DRAFT", STORE_FLAG_DRAFT, 1},       {"FLAGGED", STORE_FLAG_FLAGGED, 1},
    {"SEEN", STORE_FLAG_SEEN, 1},         {"UNANSWERED", STORE_FLAG_ANSWERED, 0},
    {"UNDELETED", STORE_FLAG_DELETED, 0}, {"UNDRAFT", STORE_FLAG_DRAFT, 0},
    {"UNFLAGGED", STORE_FLAG_FLAGGED, 0}, {"UNSEEN", STORE_FLAG_SEEN, 0},
    {"OLD", 0, 2}, {"NEW", STORE_FLAG_SEEN, 3}, {"RECENT", 0, 3},
};

static snode *parse_key(sparse *p, int depth)
{
    if (depth > SEARCH_MAX_DEPTH) {
        p->err = "search program nested too deep";
        return NULL;
    }
    if (p->i >= p->n) {
        p->err = "missing search key";
        return NULL;
    }
    const imap_arg *a = &p->args[p->i++];
    if (a->type == IMAP_ARG_LIST)
        return parse_list(p, a->list, a->nlist, depth);
    if (a->type != IMAP_ARG_ATOM) {
        p->err = "unexpected string in search";
        return NULL;
    }
    const char *k = a->str;
    snode *n;
    for (size_t i = 0; i < sizeof(flag_keys) / sizeof(flag_keys[0]); i++) {
        if (strcasecmp(k, flag_keys[i].name) != 0)
            continue;
        if (flag_keys[i].set == 2)
            return node_new(p, S_ALL); /* OLD: nothing is \Recent here */
        if (flag_keys[i].set == 3)
            return node_new(p, S_NONE); /* NEW, RECENT */
        n = node_new(p, flag_keys[i].set ? S_FLAG_SET : S_FLAG_CLEAR);
        if (n)
            n->num = flag_keys[i].flag;
        return n;
    }
    if (strcasecmp(k, "ALL") == 0)
        return node_new(p, S_ALL);
    if (strcasecmp(k, "NOT") == 0) {
        snode *x = parse_key(p, depth + 1);
        if (!x)
            return NULL;
        n = node_new(p, S_NOT);
        if (n)
            kid(n, x);
        else
            node_free(x);
        return n;
    }
    if (strcasecmp(k, "OR") == 0) {
        snode *x = parse_key(p, depth + 1);
        snode *y = x ? parse_key(p, depth + 1) : NULL;
        if (!y) {
            node_free(x);
            return NULL;
        }
        n = node_new(p, S_OR);
        if (!n) {
            node_free(x);
            node_free(y);
            return NULL;
        }
        kid(n, x);
        kid(n, y);
        return n;
    }
    if (strcasecmp(k, "KEYWORD") == 0 || strcasecmp(k, "UNKEYWORD") == 0) {
        const char *kw = next_str(p);
        if (!kw)
            return NULL;
        uint64_t bit;
        hv_err err;
        int known = store_keyword(p->s->acct->st, kw, 0, &bit, &err) == 0;
        int set = toupper((unsigned char)k[0]) == 'K';
        if (!known)
            return node_new(p, set ? S_NONE : S_ALL);
        n = node_new(p, set ? S_FLAG_SET : S_FLAG_CLEAR);
        if (n)
            n->num = bit;
        return n;
    }
    if (strcasecmp(k, "LARGER") == 0 || strcasecmp(k, "SMALLER") == 0 ||
        strcasecmp(k, "MODSEQ") == 0) {
        enum sop op = toupper((unsigned char)k[0]) == 'L' ? S_LARGER
                      : toupper((unsigned char)k[0]) == 'S' ? S_SMALLER : S_MODSEQ;
        if (op == S_MODSEQ && p->i + 2 < p->n + 1 && p->i < p->n &&
            p->args[p->i].type == IMAP_ARG_STRING) {
            p->i += 2; /* entry-name entry-type-req: one entry for all flags */
        }
        const char *v = next_str(p);
        if (!v)
            return NULL;
        char *end;
        unsigned long long x = strtoull(v, &end, 10);
        if (*end || !isdigit((unsigned char)v[0])) {
            p->err = "expected a number";
            return NULL;
        }
        n = node_new(p, op);
        if (n)
            n->num = x;
        if (op == S_MODSEQ)
            p->uses_modseq = 1;
        return n;
    }
    static const struct { const char *name; enum sop op; } date_keys[] = {
        {"BEFORE", S_BEFORE}, {"ON", S_ON}, {"SINCE", S_SINCE},
        {"SENTBEFORE", S_SENTBEFORE}, {"SENTON", S_SENTON}, {"SENTSINCE", S_SENTSINCE},
    };
    for (size_t i = 0; i < 6; i++) {
        if (strcasecmp(k, date_keys[i].name) != 0)
            continue;
        const char *v = next_str(p);
        if (!v)
            return NULL;
        int64_t d = parse_date(v);
        if (d < 0) {
            p->err = "invalid date";
            return NULL;
        }
        n = node_new(p, date_keys[i].op);
        if (n)
            n->num = (uint64_t)d;
        return n;
    }
    static const char *hdr_keys[] = {"FROM", "TO", "CC", "BCC", "SUBJECT"};
    for (size_t i = 0; i < 5; i++) {
        if (strcasecmp(k, hdr_keys[i]) != 0)
            continue;
        const char *v = next_str(p);
        if (!v)
            return NULL;
        n = node_new(p, S_HEADER);
        if (n) {
            n->hdr = hdr_keys[i];
            n->str = v;
        }
        return n;
    }
    if (strcasecmp(k, "HEADER") == 0) {
        const char *h = next_str(p);
        const char *v = h ? next_str(p) : NULL;
        if (!v)
            return NULL;
        n = node_new(p, S_HEADER);
        if (n) {
            n->hdr = h;
            n->str = v;
        }
        return n;
    }
    if (strcasecmp(k, "BODY") == 0 || strcasecmp(k, "TEXT") == 0) {
        const char *v = next_str(p);
        if (!v)
            return NULL;
        n = node_new(p, toupper((unsigned char)k[0]) == 'B' ? S_BODY : S_TEXT);
        if (n)
            n->str = v;
        return n;
    }
    int uid = strcasecmp(k, "UID") == 0;
    const char *set = uid ? next_str(p) : k;
    if (!set)
        return NULL;
    if (strcmp(set, "$") == 0) {
        p->err = "SEARCHRES ($) is not supported";
        return NULL;
    }
    n = node_new(p, S_UIDS);
    if (!n)
        return NULL;
    if (imap_seqset_uids(&p->s->view, set, uid, &n->uids, &n->nuids) == -EINVAL) {
        node_free(n);
        p->err = "unknown search key";
        return NULL;
    }
    return n;
}

/* ---- evaluation ---- */

static int load(imap_session *s, smsg *m)
{
    if (m->loaded && !m->header_only)
        return !m->failed;
    if (m->header_only) {
        if (m->mp)
            mime_free(m->mp);
        free(m->data);
        m->mp = NULL;
        m->data = NULL;
        m->header_only = 0;
    }
    m->loaded = 1;
    hv_err err;
    if (store_blob_read(s->acct->st, &m->m.blob, &m->data, &m->len, &err) < 0) {
        m->failed = 1;
        return 0;
    }
    m->mp = mime_parse(m->data, m->len, NULL);
    return 1;
}

/* Header criteria need only the header: read up to the blank line that
 * ends it (at most 256 KiB) instead of the whole message. */
static int load_header(imap_session *s, smsg *m)
{
    if (m->loaded)
        return !m->failed;
    int fd;
    hv_err err;
    if (store_blob_open(s->acct->st, &m->m.blob, &fd, NULL, &err) < 0)
        return load(s, m);
    size_t cap = 8192, len = 0;
    char *p = malloc(cap + 1);
    for (;;) {
        ssize_t r = read(fd, p + len, cap - len);
        if (r <= 0)
            break;
        size_t from = len > 3 ? len - 3 : 0;
        len += (size_t)r;
        p[len] = 0;
        if (memmem(p + from, len - from, "\r\n\r\n", 4) || memmem(p + from, len - from, "\n\n", 2))
            break;
        if (len == cap) {
            if (cap >= (256u << 10))
                break;
            cap *= 2;
            p = realloc(p, cap + 1);
        }
    }
    close(fd);
    p[len] = 0;
    m->data = p;
    m->len = len;
    m->mp = mime_parse(p, len, NULL);
    m->loaded = 1;
    m->header_only = 1;
    return 1;
}

/* Case-insensitive (ASCII) substring search; an empty needle matches. */
static int contains(const char *hay, size_t hn, const char *needle)
{
    size_t nn = strlen(needle);
    if (nn == 0)
        return 1;
    if (hn < nn)
        return 0;
    int c0 = tolower((unsigned char)needle[0]);
    for (size_t i = 0; i + nn <= hn; i++) {
        if (tolower((unsigned char)hay[i]) != c0)
            continue;
        size_t j = 1;
        while (j < nn && tolower((unsigned char)hay[i + j]) == tolower((unsigned char)needle[j]))
            j++;
        if (j == nn)
            return 1;
    }
    return 0;
}

/* ---- header value cache ----
 *
 * Without it every header search opens, reads and parses every message
 * file: 2.2 s for 180,000 messages each time, where Dovecot answers the
 * second time from its cache file in 0.35 s. An entry is a blob id, a field
 * name (lower case) and the decoded value or "absent"; about 100 bytes for
 * a Subject, so the budget holds a few hundred thousand. When the budget is
 * reached the cache is emptied and fills again: memory stays bounded, and
 * unlike LRU a scan bigger than the cache still hits on what fits. */
#define HCACHE_BYTES (48u << 20)
#define HCACHE_BUCKETS (1u << 16)
#define HCACHE_MAX_NAME 64
#define HCACHE_MAX_VALUE 4096

typedef struct hc_entry {
    struct hc_entry *next;
    store_blob_id blob;
    uint32_t hash;
    uint16_t name_len;
    uint8_t present;
    size_t value_len;
    char data[]; /* name, then value (no NULs needed: lengths) */
} hc_entry;

static struct {
    pthread_mutex_t mu;
    hc_entry **bucket; /* HCACHE_BUCKETS chains, allocated at first use */
    size_t bytes;
} hcache = {PTHREAD_MUTEX_INITIALIZER, NULL, 0};

/* The field name in lower case; 0 when too long to cache. */
static size_t hc_name(const char *name, char *out)
{
    size_t n = strlen(name);
    if (n == 0 || n > HCACHE_MAX_NAME)
        return 0;
    for (size_t i = 0; i < n; i++)
        out[i] = (char)tolower((unsigned char)name[i]);
    return n;
}

static uint32_t hc_hash(const store_blob_id *blob, const char *name, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a over the name, then the blob's bytes */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)name[i]) * 16777619u;
    uint32_t b;
    memcpy(&b, blob->b, sizeof(b)); /* SHA-256 bytes: already uniform */
    return h ^ b;
}

static hc_entry *hc_find(const store_blob_id *blob, const char *name, size_t n, uint32_t h)
{
    if (!hcache.bucket)
        return NULL;
    for (hc_entry *e = hcache.bucket[h % HCACHE_BUCKETS]; e; e = e->next)
        if (e->hash == h && e->name_len == n && memcmp(e->blob.b, blob->b, 32) == 0 &&
            memcmp(e->data, name, n) == 0)
            return e;
    return NULL;
}

static void hc_clear(void)
{
    for (size_t i = 0; i < HCACHE_BUCKETS; i++) {
        hc_entry *e = hcache.bucket[i];
        while (e) {
            hc_entry *next = e->next;
            free(e);
            e = next;
        }
        hcache.bucket[i] = NULL;
    }
    hcache.bytes = 0;
}

/* 1 or 0: does the cached value of name in blob contain str; -1 when not
 * cached. */
static int hcache_match(const store_blob_id *blob, const char *name, const char *str)
{
    char ln[HCACHE_MAX_NAME];
    size_t n = hc_name(name, ln);
    if (!n)
        return -1;
    uint32_t h = hc_hash(blob, ln, n);
    pthread_mutex_lock(&hcache.mu);
    hc_entry *e = hc_find(blob, ln, n, h);
    int r = !e ? -1 : e->present && contains(e->data + n, e->value_len, str);
    pthread_mutex_unlock(&hcache.mu);
    return r;
}

static void hcache_put(const store_blob_id *blob, const char *name, int present,
                       const char *value, size_t len)
{
    char ln[HCACHE_MAX_NAME];
    size_t n = hc_name(name, ln);
    if (!n || len > HCACHE_MAX_VALUE)
        return;
    uint32_t h = hc_hash(blob, ln, n);
    size_t size = sizeof(hc_entry) + n + len;
    hc_entry *e = malloc(size);
    if (!e)
        return;
    e->blob = *blob;
    e->hash = h;
    e->name_len = (uint16_t)n;
    e->present = present != 0;
    e->value_len = len;
    memcpy(e->data, ln, n);
    if (len)
        memcpy(e->data + n, value, len);
    pthread_mutex_lock(&hcache.mu);
    if (!hcache.bucket)
        hcache.bucket = calloc(HCACHE_BUCKETS, sizeof(hc_entry *));
    if (!hcache.bucket || hc_find(blob, ln, n, h)) {
        pthread_mutex_unlock(&hcache.mu);
        free(e); /* another worker put it meanwhile */
        return;
    }
    if (hcache.bytes + size + 16 > HCACHE_BYTES)
        hc_clear();
    e->next = hcache.bucket[h % HCACHE_BUCKETS];
    hcache.bucket[h % HCACHE_BUCKETS] = e;
    hcache.bytes += size + 16; /* malloc's own header, roughly */
    pthread_mutex_unlock(&hcache.mu);
}

static int64_t day_of(int64_t t) { return t - (((t % 86400) + 86400) % 86400); }

static int eval(imap_session *s, const snode *n, smsg *m)
{
    switch (n->op) {
    case S_ALL: return 1;
    case S_NONE: return 0;
    case S_AND:
        for (size_t i = 0; i < n->nkids; i++)
            if (!eval(s, n->kids[i], m))
                return 0;
        return 1;
    case S_OR: return eval(s, n->kids[0], m) || eval(s, n->kids[1], m);
    case S_NOT: return !eval(s, n->kids[0], m);
    case S_FLAG_SET: return (m->m.flags & n->num) == n->num;
    case S_FLAG_CLEAR: return (m->m.flags & n->num) == 0;
    case S_LARGER: return m->m.size > n->num;
    case S_SMALLER: return m->m.size < n->num;
    case S_MODSEQ: return m->m.modseq >= n->num;
    case S_BEFORE: return day_of(m->m.internal_date) < (int64_t)n->num;
    case S_ON: return day_of(m->m.internal_date) == (int64_t)n->num;
    case S_SINCE: return day_of(m->m.internal_date) >= (int64_t)n->num;
    case S_SENTBEFORE:
    case S_SENTON:
    case S_SENTSINCE: {
        if (!load_header(s, m))
            return 0;
        int64_t d = mime_date(m->mp, m->data);
        if (d < 0)
            d = m->m.internal_date;
        d = day_of(d);
        return n->op == S_SENTBEFORE ? d < (int64_t)n->num
               : n->op == S_SENTON   ? d == (int64_t)n->num
                                     : d >= (int64_t)n->num;
    }
    case S_HEADER: {
        int r = hcache_match(&m->m.blob, n->hdr, n->str);
        if (r >= 0)
            return r;
        if (!load_header(s, m))
            return 0;
        buf v;
        buf_init(&v);
        int present = mime_header_value(m->mp, m->data, n->hdr, &v);
        r = present && contains((const char *)v.data, v.len, n->str);
        hcache_put(&m->m.blob, n->hdr, present, (const char *)v.data, v.len);
        buf_free(&v);
        return r;
    }
    case S_BODY:
    case S_TEXT: {
        if (!load(s, m))
            return 0;
        buf v;
        buf_init(&v);
        /* BODY: the decoded text parts; TEXT: the header as well. */
        if (n->op == S_BODY)
            mime_text_parts(m->mp, m->data, &v);
        else
            mime_body_text(m->mp, m->data, &v);
        int r = contains((const char *)v.data, v.len, n->str);
        buf_free(&v);
        return r;
    }
    case S_UIDS: {
        size_t lo = 0, hi = n->nuids;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (n->uids[mid] < m->m.uid)
                lo = mid + 1;
            else
                hi = mid;
        }
        return lo < n->nuids && n->uids[lo] == m->m.uid;
    }
    }
    return 0;
}

int imap_search_run(imap_session *s, const imap_arg *args, size_t nargs, uint32_t **hits_out,
                    size_t *n_out, uint64_t *maxmod_out, int *uses_modseq, const char **why)
{
    sparse p = {s, args, nargs, 0, 0, 0, NULL};
    *hits_out = NULL;
    *n_out = 0;
    snode *root = parse_list(&p, args, nargs, 0);
    if (!root) {
        *why = p.err ? p.err : "invalid search";
        return -EINVAL;
    }
    store_account *st = s->acct->st;
    imap_view *v = &s->view;
    uint32_t *hits = malloc((v->n ? v->n : 1) * sizeof(uint32_t));
    size_t nh = 0;
    uint64_t maxmod = 0;
    for (uint32_t i = 0; i < v->n; i++) {
        smsg m = {0};
        uint32_t idx;
        if (store_msg_seek(st, v->mailbox, v->uids[i], &idx) < 0 ||
            store_msg_at(st, v->mailbox, idx, &m.m) < 0 || m.m.uid != v->uids[i])
            continue; /* expunged meanwhile */
        if (eval(s, root, &m)) {
            hits[nh++] = v->uids[i];
            if (m.m.modseq > maxmod)
                maxmod = m.m.modseq;
        }
        if (m.mp)
            mime_free(m.mp);
        free(m.data);
    }
    node_free(root);
    *hits_out = hits;
    *n_out = nh;
    if (maxmod_out)
        *maxmod_out = maxmod;
    if (uses_modseq)
        *uses_modseq = p.uses_modseq;
    return 0;
}

void imap_cmd_search(imap_session *s, const imap_command *c)
{
    int by_uid = strncasecmp(c->name, "UID", 3) == 0;
    s->no_expunge = !by_uid;
    size_t i = 0;
    int esearch = 0, r_min = 0, r_max = 0, r_count = 0, r_all = 0;
    if (i < c->nargs && c->args[i].type == IMAP_ARG_ATOM &&
        strcasecmp(c->args[i].str, "RETURN") == 0 && i + 1 < c->nargs &&
        c->args[i + 1].type == IMAP_ARG_LIST) {
        const imap_arg *r = &c->args[i + 1];
        esearch = 1;
        for (size_t k = 0; k < r->nlist; k++) {
            const char *x = r->list[k].str;
            if (x && strcasecmp(x, "MIN") == 0) r_min = 1;
            else if (x && strcasecmp(x, "MAX") == 0) r_max = 1;
            else if (x && strcasecmp(x, "COUNT") == 0) r_count = 1;
            else if (x && strcasecmp(x, "ALL") == 0) r_all = 1;
            else {
                imap_tagged(s, "BAD", "unknown RETURN option");
                return;
            }
        }
        if (!r_min && !r_max && !r_count)
            r_all = 1;
        i += 2;
    }
    if (i + 1 < c->nargs && c->args[i].type == IMAP_ARG_ATOM &&
        strcasecmp(c->args[i].str, "CHARSET") == 0) {
        const char *cs = c->args[i + 1].str;
        if (!cs || (strcasecmp(cs, "UTF-8") != 0 && strcasecmp(cs, "US-ASCII") != 0)) {
            imap_tagged(s, "NO", "[BADCHARSET (UTF-8 US-ASCII)] unsupported charset");
            return;
        }
        i += 2;
    }
    if (i >= c->nargs) {
        imap_tagged(s, "BAD", "missing search criteria");
        return;
    }
    uint32_t *hits;
    size_t nh;
    uint64_t maxmod;
    int uses_modseq;
    const char *why = NULL;
    if (imap_search_run(s, c->args + i, c->nargs - i, &hits, &nh, &maxmod, &uses_modseq, &why) <
        0) {
        imap_tagged(s, "BAD", "%s", why);
        return;
    }
    if (!by_uid)
        for (size_t k = 0; k < nh; k++)
            hits[k] = imap_view_seq(&s->view, hits[k]);
    buf b;
    buf_init(&b);
    if (esearch) {
        buf_printf(&b, "* ESEARCH (TAG \"%s\")%s", s->tag, by_uid ? " UID" : "");
        if (nh && r_min)
            buf_printf(&b, " MIN %u", hits[0]);
        if (nh && r_max)
            buf_printf(&b, " MAX %u", hits[nh - 1]);
        if (r_count)
            buf_printf(&b, " COUNT %zu", nh);
        if (nh && r_all) {
            buf_append_str(&b, " ALL ");
            imap_uidset_format(&b, hits, nh);
        }
        if (nh && uses_modseq)
            buf_printf(&b, " MODSEQ %llu", (unsigned long long)maxmod);
    } else {
        buf_append_str(&b, "* SEARCH");
        for (size_t k = 0; k < nh; k++)
            buf_printf(&b, " %u", hits[k]);
        if (nh && uses_modseq)
            buf_printf(&b, " (MODSEQ %llu)", (unsigned long long)maxmod);
    }
    buf_append_str(&b, "\r\n");
    imap_out_raw(s, b.data, b.len);
    buf_free(&b);
    free(hits);
    imap_tagged(s, "OK", "SEARCH completed");
}
