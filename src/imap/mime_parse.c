/*
 * mime_parse.c - reading a message into the part tree; see mime.h.
 *
 * One pass, left to right, line by line, with an explicit stack instead of
 * recursion. The stack holds the open multiparts and their boundaries; a
 * line that starts with "--" is compared with every open boundary (the
 * longest match wins, so an outer boundary that extends an inner one is
 * still found; RFC 2046 makes the match a prefix match). A delimiter of
 * an outer multipart also ends every part opened inside it, which is how
 * missing close delimiters are repaired. Parts still open at the end of
 * the buffer end there. A single-part message has no open boundary, so
 * its body is not scanned at all: BODYSTRUCTURE of a plain message costs
 * one pass over its header.
 *
 * Cost: each byte is visited once (bodies by a memchr for '-'); a line
 * starting with "--" is compared with at most max_depth boundaries. Parts are appended to one array (document order),
 * so the tree is a single allocation and freeing it is free(root).
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imap/mime_internal.h"

/* An open multipart: its part and its boundary in parser.bounds. */
typedef struct mime_frame {
    uint32_t node;
    uint32_t last_child;
    size_t boff, blen;
    int digest; /* multipart/digest: parts default to message/rfc822 */
} mime_frame;

typedef struct mime_parser {
    const uint8_t *m;
    size_t len;
    mime_limits lim;
    mime_part *nodes;
    uint32_t n, cap;
    mime_frame *frames;
    size_t nframes, capframes;
    buf bounds;
    buf tmp;
} mime_parser;

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p)
        abort();
    return p;
}

/* --- header lines --- */

long mime_field_line(const uint8_t *p, size_t n, size_t *colon)
{
    size_t i = 0;
    while (i < n && p[i] > 32 && p[i] < 127 && p[i] != ':')
        i++;
    size_t name_len = i;
    /* obs-optional: "Subject : x" */
    while (i < n && (p[i] == ' ' || p[i] == '\t'))
        i++;
    if (name_len == 0 || i >= n || p[i] != ':')
        return -1;
    *colon = i;
    return (long)name_len;
}

int mime_name_eq(const uint8_t *p, size_t n, const char *name)
{
    size_t l = strlen(name);
    return n == l && strncasecmp((const char *)p, name, l) == 0;
}

/* Line at pos: *content_end before its CR LF / LF, returns the start of
 * the next line. */
static size_t line_end(const uint8_t *m, size_t pos, size_t end, size_t *content_end)
{
    const uint8_t *nl = memchr(m + pos, '\n', end - pos);
    size_t e = nl ? (size_t)(nl - m) : end;
    size_t next = nl ? e + 1 : end;
    if (nl && e > pos && m[e - 1] == '\r')
        e--;
    *content_end = e;
    return next;
}

void mime_hdr_iter_init(mime_hdr_iter *it, const uint8_t *m, const mime_part *p)
{
    it->m = m;
    it->pos = p->start;
    it->end = p->fields_end;
}

int mime_hdr_next(mime_hdr_iter *it, mime_field *f)
{
    const uint8_t *m = it->m;
    while (it->pos < it->end) {
        size_t ls = it->pos, ce;
        size_t next = line_end(m, ls, it->end, &ce);
        if (ce == ls) { /* the blank line */
            it->pos = it->end;
            return 0;
        }
        it->pos = next;
        size_t colon;
        long nl;
        if (m[ls] == ' ' || m[ls] == '\t' || (nl = mime_field_line(m + ls, ce - ls, &colon)) < 0)
            continue; /* a stray continuation or a line without a colon */
        f->name = ls;
        f->name_len = (size_t)nl;
        f->value = ls + colon + 1;
        size_t vend = ce;
        while (it->pos < it->end && (m[it->pos] == ' ' || m[it->pos] == '\t')) {
            it->pos = line_end(m, it->pos, it->end, &ce);
            vend = ce;
        }
        f->value_len = vend - f->value;
        f->end = it->pos;
        return 1;
    }
    return 0;
}

int mime_find_field(const uint8_t *m, const mime_part *p, const char *name, mime_span *val)
{
    mime_hdr_iter it;
    mime_field f;
    mime_hdr_iter_init(&it, m, p);
    while (mime_hdr_next(&it, &f))
        if (mime_name_eq(m + f.name, f.name_len, name)) {
            val->off = f.value;
            val->len = f.value_len;
            return 1;
        }
    return 0;
}

/* Which remembered field a name is, or -1. */
static int field_id(const uint8_t *p, size_t n)
{
    if (n < 9 || strncasecmp((const char *)p, "content-", 8) != 0)
        return -1;
    p += 8;
    n -= 8;
    static const struct {
        const char *name;
        int id;
    } t[] = {
        {"type", MF_CTYPE},       {"transfer-encoding", MF_CTE}, {"id", MF_ID},
        {"description", MF_DESC}, {"md5", MF_MD5},               {"disposition", MF_DISP},
        {"language", MF_LANG},    {"location", MF_LOC},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        if (mime_name_eq(p, n, t[i].name))
            return t[i].id;
    return -1;
}

/* --- boundaries --- */

/* The open frame whose delimiter starts the line at pos, or -1. */
static long match_delimiter(const mime_parser *ps, size_t pos)
{
    if (ps->nframes == 0 || pos + 2 > ps->len || ps->m[pos] != '-' || ps->m[pos + 1] != '-')
        return -1;
    const uint8_t *p = ps->m + pos + 2;
    size_t avail = ps->len - pos - 2;
    long best = -1;
    size_t best_len = 0;
    for (size_t k = ps->nframes; k-- > 0;) {
        const mime_frame *f = &ps->frames[k];
        const uint8_t *b = ps->bounds.data + f->boff;
        if (f->blen <= avail && f->blen > best_len && p[0] == b[0] && memcmp(p, b, f->blen) == 0) {
            best = (long)k;
            best_len = f->blen;
        }
    }
    return best;
}

/* The next line start after pos whose line begins with "--", or len.
 * Searching for '-' rather than walking lines skips base64 (which has no
 * '-') and most text in one memchr. */
static size_t next_dash_line(const uint8_t *m, size_t pos, size_t len)
{
    for (size_t i = pos + 1; i < len;) {
        const uint8_t *d = memchr(m + i, '-', len - i);
        if (!d)
            break;
        size_t j = (size_t)(d - m);
        if (m[j - 1] == '\n' && j + 1 < len && m[j + 1] == '-')
            return j;
        i = j + 1;
    }
    return len;
}

/* --- parts --- */

static uint32_t new_node(mime_parser *ps, uint32_t parent, size_t start)
{
    if (ps->n == ps->cap) {
        ps->cap = ps->cap ? ps->cap * 2 : 8;
        ps->nodes = xrealloc(ps->nodes, (size_t)ps->cap * sizeof(mime_part));
    }
    uint32_t i = ps->n++;
    mime_part *p = &ps->nodes[i];
    memset(p, 0, sizeof(*p));
    p->start = p->hdr_end = p->end = p->fields_end = start;
    p->parent = parent;
    p->first_child = p->next = MIME_NONE;
    p->depth = parent == MIME_NONE ? 0 : ps->nodes[parent].depth + 1;
    return i;
}

static void add_child(mime_parser *ps, uint32_t parent, uint32_t *last_child, uint32_t c)
{
    if (*last_child == MIME_NONE)
        ps->nodes[parent].first_child = c;
    else
        ps->nodes[*last_child].next = c;
    *last_child = c;
    ps->nodes[parent].nchildren++;
}

/* Reads the header of part i: up to and including its blank line, or up
 * to a delimiter line of an open multipart, or to the end. A first line
 * that is not a header field means the part has no header at all. */
static void scan_header(mime_parser *ps, uint32_t i)
{
    const uint8_t *m = ps->m;
    mime_part *p = &ps->nodes[i];
    size_t pos = p->start;
    size_t limit = p->start + ps->lim.max_header_bytes;
    int cur = -1; /* the remembered field the last line belonged to */
    int first = 1;
    p->fields_end = p->start;
    for (;;) {
        if (pos >= ps->len) {
            p->hdr_end = ps->len;
            break;
        }
        size_t ce, colon;
        size_t next = line_end(m, pos, ps->len, &ce);
        if (ce == pos) {
            p->hdr_end = next;
            p->blank = 1;
            if (pos < limit)
                p->fields_end = next;
            break;
        }
        if (match_delimiter(ps, pos) >= 0) {
            p->hdr_end = pos;
            break;
        }
        int wsp = m[pos] == ' ' || m[pos] == '\t';
        long nl = wsp ? -1 : mime_field_line(m + pos, ce - pos, &colon);
        if (first && nl < 0) {
            p->hdr_end = p->start;
            break;
        }
        first = 0;
        if (pos < limit) {
            if (wsp) {
                if (cur >= 0)
                    p->f[cur].len = ce - p->f[cur].off;
            } else if (nl < 0) {
                cur = -1;
            } else {
                cur = field_id(m + pos, (size_t)nl);
                if (cur >= 0 && p->f[cur].off == 0) {
                    p->f[cur].off = pos + colon + 1;
                    p->f[cur].len = ce - p->f[cur].off;
                } else {
                    cur = -1; /* only the first occurrence counts */
                }
            }
            p->fields_end = next;
        }
        pos = next;
    }
}

/* Decides what part i is after its header and opens it: a multipart gets
 * a frame, a message/rfc822 gets its embedded message (whose header is
 * read in turn). Returns the innermost part now open. */
static uint32_t open_part(mime_parser *ps, uint32_t i, int digest_child)
{
    for (;;) {
        scan_header(ps, i);
        mime_part *p = &ps->nodes[i];
        const uint8_t *m = ps->m;
        mime_span type, sub;
        size_t params = 0;
        p->ct = digest_child ? MIME_CT_RFC822 : MIME_CT_TEXT;
        if (p->f[MF_CTYPE].off && mime_ctype_split(m, p->f[MF_CTYPE], &type, &sub, &params)) {
            p->ct_declared = 1;
            if (mime_span_eq(m, type, "text"))
                p->ct = MIME_CT_TEXT;
            else if (mime_span_eq(m, type, "multipart"))
                p->ct = MIME_CT_MULTIPART;
            else if (mime_span_eq(m, type, "message") && mime_span_eq(m, sub, "rfc822"))
                p->ct = MIME_CT_RFC822;
            else
                p->ct = MIME_CT_OTHER;
        }
        p->cte = (uint8_t)(p->f[MF_CTE].off ? mime_cte_parse(m, p->f[MF_CTE]) : MIME_CTE_7BIT);
        p->kind = MIME_LEAF;
        p->shape = MIME_AS_DECLARED;
        int room = p->depth < ps->lim.max_depth && ps->n < ps->lim.max_parts;

        if (p->ct == MIME_CT_MULTIPART) {
            buf_reset(&ps->tmp);
            size_t vend = p->f[MF_CTYPE].off + p->f[MF_CTYPE].len;
            if (!mime_param_get(m, params, vend, "boundary", &ps->tmp) || ps->tmp.len == 0 ||
                ps->tmp.len > 998 || memchr(ps->tmp.data, '\n', ps->tmp.len) ||
                memchr(ps->tmp.data, '\r', ps->tmp.len)) {
                p->shape = MIME_BROKEN_TEXT;
                return i;
            }
            if (!room) {
                p->shape = MIME_OPAQUE;
                return i;
            }
            if (ps->nframes == ps->capframes) {
                ps->capframes = ps->capframes ? ps->capframes * 2 : 8;
                ps->frames = xrealloc(ps->frames, ps->capframes * sizeof(mime_frame));
            }
            mime_frame *f = &ps->frames[ps->nframes++];
            f->node = i;
            f->last_child = MIME_NONE;
            f->boff = ps->bounds.len;
            f->blen = ps->tmp.len;
            f->digest = mime_span_eq(m, sub, "digest");
            buf_append(&ps->bounds, ps->tmp.data, ps->tmp.len);
            p->kind = MIME_MULTIPART;
            return i;
        }
        if (p->ct == MIME_CT_RFC822) {
            /* An encoded message cannot be parsed in place (RFC 2046
             * forbids encoding it anyway): it stays one opaque part. */
            if (!room || p->cte == MIME_CTE_BASE64 || p->cte == MIME_CTE_QP ||
                p->cte == MIME_CTE_UNKNOWN) {
                p->shape = MIME_OPAQUE;
                return i;
            }
            p->kind = MIME_MESSAGE;
            size_t body = p->hdr_end;
            uint32_t c = new_node(ps, i, body);
            uint32_t last = MIME_NONE;
            add_child(ps, i, &last, c);
            i = c;
            digest_child = 0;
            continue;
        }
        return i;
    }
}

/* Ends every part from cur up to (not including) stop at end. */
static void close_up_to(mime_parser *ps, uint32_t cur, uint32_t stop, size_t end)
{
    while (cur != stop && cur != MIME_NONE) {
        mime_part *p = &ps->nodes[cur];
        p->end = end > p->hdr_end ? end : p->hdr_end;
        cur = p->parent;
    }
}

static void limits_of(const mime_limits *lim, mime_limits *out)
{
    out->max_depth = lim && lim->max_depth ? lim->max_depth : MIME_DEFAULT_MAX_DEPTH;
    out->max_parts = lim && lim->max_parts ? lim->max_parts : MIME_DEFAULT_MAX_PARTS;
    if (out->max_parts >= MIME_NONE)
        out->max_parts = MIME_NONE - 1;
    out->max_header_bytes =
        lim && lim->max_header_bytes ? lim->max_header_bytes : MIME_DEFAULT_MAX_HEADER;
}

mime_part *mime_parse(const char *msg, size_t len, const mime_limits *lim)
{
    mime_parser ps;
    memset(&ps, 0, sizeof(ps));
    ps.m = (const uint8_t *)(msg ? msg : "");
    ps.len = msg ? len : 0;
    limits_of(lim, &ps.lim);
    buf_init(&ps.bounds);
    buf_init(&ps.tmp);

    uint32_t root = new_node(&ps, MIME_NONE, 0);
    uint32_t cur = open_part(&ps, root, 0);
    size_t pos = ps.nodes[cur].hdr_end;
    const uint8_t *m = ps.m;

    while (ps.nframes > 0 && pos < ps.len) {
        long k = match_delimiter(&ps, pos);
        if (k < 0) {
            pos = next_dash_line(m, pos, ps.len);
            continue;
        }
        size_t ce;
        size_t next = line_end(m, pos, ps.len, &ce);
        mime_frame *f = &ps.frames[k];
        size_t after = pos + 2 + f->blen;
        int is_close = after + 2 <= ps.len && m[after] == '-' && m[after + 1] == '-';
        if (!is_close && ps.n >= ps.lim.max_parts) {
            pos = next; /* no room for another part: it stays in the last one */
            continue;
        }
        /* The line break before a delimiter belongs to the delimiter. */
        size_t end = pos;
        if (end > 0 && m[end - 1] == '\n') {
            end--;
            if (end > 0 && m[end - 1] == '\r')
                end--;
        }
        uint32_t owner = f->node;
        close_up_to(&ps, cur, owner, end);
        ps.nframes = (size_t)k + 1;
        ps.bounds.len = f->boff + f->blen;
        if (is_close) {
            /* The epilogue: the multipart stays open until an outer
             * delimiter or the end, but its own boundary is done. */
            ps.nframes--;
            ps.bounds.len = f->boff;
            cur = owner;
            pos = next;
            continue;
        }
        int digest = f->digest;
        uint32_t c = new_node(&ps, owner, next);
        f = &ps.frames[k];
        add_child(&ps, owner, &f->last_child, c);
        cur = open_part(&ps, c, digest);
        pos = ps.nodes[cur].hdr_end;
    }
    close_up_to(&ps, cur, MIME_NONE, ps.len);

    /* A multipart in which no part was found is shown as its text. */
    for (uint32_t i = 0; i < ps.n; i++) {
        mime_part *p = &ps.nodes[i];
        if (p->kind == MIME_MULTIPART && p->nchildren == 0) {
            p->kind = MIME_LEAF;
            p->shape = MIME_BROKEN_TEXT;
        }
    }
    ps.nodes[0].count = ps.n;
    free(ps.frames);
    buf_free(&ps.bounds);
    buf_free(&ps.tmp);
    return ps.nodes;
}

void mime_free(mime_part *root) { free(root); }

unsigned mime_part_count(const mime_part *root) { return root ? root->count : 1; }

const mime_part *mime_empty_tree(void)
{
    static const mime_part empty = {
        .parent = MIME_NONE, .first_child = MIME_NONE, .next = MIME_NONE, .count = 1,
        .kind = MIME_LEAF, .shape = MIME_AS_DECLARED, .ct = MIME_CT_TEXT,
    };
    return &empty;
}
