/*
 * mime_bodystructure.c - FETCH BODY and BODYSTRUCTURE (RFC 3501 7.4.2,
 * RFC 9051 7.5.2) from the part tree.
 *
 * The tree is walked without recursion (down the first children, then to
 * the next sibling or back up to close the parent), so a deep tree costs
 * no stack. Media types, subtypes, encodings, parameter names and
 * disposition types are upper-cased tokens; parameter values are as
 * written, RFC 2231 values decoded to UTF-8. Parts the parser could not
 * open are shown the way mime.h says: a multipart without a usable
 * boundary or without parts as TEXT/PLAIN, a part over the limits as
 * APPLICATION/OCTET-STREAM.
 *
 * Line counts: nested message/rfc822 parts each need the lines of a range
 * that contains the next one, so counting each range on its own would cost
 * depth x size. Instead the offsets that bound counted ranges are sorted
 * and the message is swept once, giving the number of line feeds before
 * each of them.
 */
#include <stdlib.h>
#include <string.h>

#include "imap/mime_internal.h"

/* Counted in blocks with a 32-bit counter so that the compiler
 * vectorizes the loop: faster than a memchr call per (short) line. */
static size_t count_lf(const uint8_t *m, size_t s, size_t e)
{
    size_t n = 0;
    while (s < e) {
        size_t blk = e - s < 4096 ? e - s : 4096;
        uint32_t k = 0;
        for (size_t j = 0; j < blk; j++)
            k += m[s + j] == '\n';
        n += k;
        s += blk;
    }
    return n;
}

/* Line feeds before each offset that bounds a counted range. */
typedef struct line_index {
    size_t *off, *lf;
    size_t n;
} line_index;

static int needs_lines(const mime_part *p) { return p->kind == MIME_MESSAGE || mime_is_text_leaf(p); }

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

static void line_index_build(const mime_part *root, const uint8_t *m, line_index *li)
{
    li->off = li->lf = NULL;
    li->n = 0;
    if (root->count < 2)
        return; /* one range: counted directly */
    size_t k = 0;
    for (uint32_t i = 0; i < root->count; i++)
        k += needs_lines(&root[i]) ? 2 : 0;
    if (k == 0)
        return;
    li->off = malloc(k * sizeof(size_t));
    li->lf = malloc(k * sizeof(size_t));
    if (!li->off || !li->lf)
        abort();
    for (uint32_t i = 0; i < root->count; i++)
        if (needs_lines(&root[i])) {
            li->off[li->n++] = root[i].hdr_end;
            li->off[li->n++] = root[i].end;
        }
    qsort(li->off, li->n, sizeof(size_t), cmp_size);
    size_t u = 0, lf = 0, pos = li->off[0];
    for (size_t j = 0; j < li->n; j++) {
        if (u && li->off[j] == li->off[u - 1])
            continue;
        lf += count_lf(m, pos, li->off[j]);
        pos = li->off[j];
        li->off[u] = pos;
        li->lf[u++] = lf;
    }
    li->n = u;
}

static size_t lf_before(const line_index *li, size_t off)
{
    size_t lo = 0, hi = li->n;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (li->off[mid] <= off)
            lo = mid;
        else
            hi = mid;
    }
    return li->lf[lo];
}

/* Lines of the body of p; an unterminated last line is a line too. */
static size_t body_lines(const line_index *li, const uint8_t *m, const mime_part *p)
{
    size_t s = p->hdr_end, e = p->end;
    if (e == s)
        return 0;
    size_t lf = li->n ? lf_before(li, e) - lf_before(li, s) : count_lf(m, s, e);
    return lf + (m[e - 1] != '\n');
}

typedef struct param_out {
    buf *out;
    unsigned n;
    int has_charset;
} param_out;

static void param_cb(void *vctx, const uint8_t *name, size_t nlen, const uint8_t *val, size_t vlen)
{
    param_out *o = vctx;
    buf_append(o->out, o->n++ ? " " : "(", 1);
    mime_put_upper(o->out, name, nlen);
    buf_append(o->out, " ", 1);
    mime_put_string(o->out, val, vlen);
    if (mime_name_eq(name, nlen, "charset"))
        o->has_charset = 1;
}

/* A parameter list from params to end; text parts get the default
 * charset when they name none (RFC 2045 5.2). */
static void put_params(const uint8_t *m, size_t params, size_t end, int text, buf *out)
{
    param_out o = {out, 0, 0};
    if (params < end)
        mime_params_each(m, params, end, param_cb, &o);
    if (text && !o.has_charset) {
        buf_append_str(out, o.n++ ? " " : "(");
        buf_append_str(out, "\"CHARSET\" \"us-ascii\"");
    }
    buf_append_str(out, o.n ? ")" : "NIL");
}

static void put_field(const uint8_t *m, const mime_part *p, int id, buf *tmp, buf *out)
{
    buf_reset(tmp);
    if (p->f[id].off)
        mime_unfold(m + p->f[id].off, p->f[id].len, tmp);
    mime_put_nstring(out, tmp->data, tmp->len);
}

static void put_disposition(const uint8_t *m, const mime_part *p, buf *out)
{
    mime_span tok;
    size_t after;
    if (!p->f[MF_DISP].off || !mime_first_token(m, p->f[MF_DISP], &tok, &after)) {
        buf_append_str(out, "NIL");
        return;
    }
    buf_append(out, "(", 1);
    mime_put_upper(out, m + tok.off, tok.len);
    buf_append(out, " ", 1);
    put_params(m, after, p->f[MF_DISP].off + p->f[MF_DISP].len, 0, out);
    buf_append(out, ")", 1);
}

/* Content-Language: a comma-separated list of language tags. */
static void put_language(const uint8_t *m, const mime_part *p, buf *out)
{
    unsigned n = 0;
    if (p->f[MF_LANG].off) {
        size_t i = p->f[MF_LANG].off, end = i + p->f[MF_LANG].len;
        while (i < end) {
            i = mime_skip_cfws(m, i, end);
            if (i < end && m[i] == ',') {
                i++;
                continue;
            }
            size_t s = i;
            while (i < end && !mime_is_wsp(m[i]) && m[i] != ',' && m[i] != '(')
                i++;
            if (i > s) {
                buf_append(out, n++ ? " " : "(", 1);
                mime_put_string(out, m + s, i - s);
            }
        }
    }
    buf_append_str(out, n ? ")" : "NIL");
}

/* md5 (single parts only), disposition, language, location. */
static void put_extension(const uint8_t *m, const mime_part *p, int md5, buf *tmp, buf *out)
{
    if (md5) {
        buf_append(out, " ", 1);
        put_field(m, p, MF_MD5, tmp, out);
    }
    buf_append(out, " ", 1);
    put_disposition(m, p, out);
    buf_append(out, " ", 1);
    put_language(m, p, out);
    buf_append(out, " ", 1);
    put_field(m, p, MF_LOC, tmp, out);
}

/* Type, subtype and parameters; returns 1 for a text part. */
static int put_type(const uint8_t *m, const mime_part *p, buf *out)
{
    mime_span type, sub;
    size_t params;
    if (p->shape == MIME_OPAQUE) {
        buf_append_str(out, "\"APPLICATION\" \"OCTET-STREAM\" NIL");
        return 0;
    }
    if (p->shape == MIME_BROKEN_TEXT || !p->ct_declared ||
        !mime_ctype_split(m, p->f[MF_CTYPE], &type, &sub, &params)) {
        if (p->ct == MIME_CT_RFC822) {
            buf_append_str(out, "\"MESSAGE\" \"RFC822\" NIL");
            return 0;
        }
        buf_append_str(out, "\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\")");
        return 1;
    }
    mime_put_upper(out, m + type.off, type.len);
    buf_append(out, " ", 1);
    mime_put_upper(out, m + sub.off, sub.len);
    buf_append(out, " ", 1);
    int text = mime_is_text_leaf(p);
    put_params(m, params, p->f[MF_CTYPE].off + p->f[MF_CTYPE].len, p->ct == MIME_CT_TEXT, out);
    return text;
}

/* body-fields after the parameters: id, description, encoding, size. */
static void put_fields(const uint8_t *m, const mime_part *p, buf *tmp, buf *out)
{
    buf_append(out, " ", 1);
    put_field(m, p, MF_ID, tmp, out);
    buf_append(out, " ", 1);
    put_field(m, p, MF_DESC, tmp, out);
    buf_append(out, " ", 1);
    mime_span tok;
    if (p->f[MF_CTE].off && mime_first_token(m, p->f[MF_CTE], &tok, NULL))
        mime_put_upper(out, m + tok.off, tok.len);
    else
        buf_append_str(out, "\"7BIT\"");
    buf_printf(out, " %zu", p->end - p->hdr_end);
}

static void open_part(const mime_part *root, const uint8_t *m, const line_index *li,
                      const mime_part *p, int ext, buf *tmp, buf *out)
{
    if (p->kind == MIME_MULTIPART) {
        buf_append(out, "(", 1);
        return;
    }
    buf_append(out, "(", 1);
    int text = put_type(m, p, out);
    put_fields(m, p, tmp, out);
    if (p->kind == MIME_MESSAGE) {
        buf_append(out, " ", 1);
        mime_envelope_of(m, &root[p->first_child], out);
        buf_append(out, " ", 1);
        return; /* the embedded body follows, then close_part */
    }
    if (text)
        buf_printf(out, " %zu", body_lines(li, m, p));
    if (ext)
        put_extension(m, p, 1, tmp, out);
    buf_append(out, ")", 1);
}

static void close_part(const uint8_t *m, const line_index *li, const mime_part *p, int ext,
                       buf *tmp, buf *out)
{
    if (p->kind == MIME_MULTIPART) {
        mime_span type, sub;
        size_t params = 0;
        buf_append(out, " ", 1);
        mime_ctype_split(m, p->f[MF_CTYPE], &type, &sub, &params);
        mime_put_upper(out, m + sub.off, sub.len);
        if (ext) {
            buf_append(out, " ", 1);
            put_params(m, params, p->f[MF_CTYPE].off + p->f[MF_CTYPE].len, 0, out);
            put_extension(m, p, 0, tmp, out);
        }
    } else {
        buf_printf(out, " %zu", body_lines(li, m, p));
        if (ext)
            put_extension(m, p, 1, tmp, out);
    }
    buf_append(out, ")", 1);
}

void mime_bodystructure(const mime_part *root, const char *msg, int extended, buf *out)
{
    const uint8_t *m = (const uint8_t *)(msg ? msg : "");
    if (!root)
        root = mime_empty_tree();
    buf tmp;
    buf_init(&tmp);
    line_index li;
    line_index_build(root, m, &li);
    uint32_t i = 0;
    for (;;) {
        /* Down: open parts until a leaf. */
        while (root[i].kind != MIME_LEAF) {
            open_part(root, m, &li, &root[i], extended, &tmp, out);
            i = root[i].first_child;
        }
        open_part(root, m, &li, &root[i], extended, &tmp, out);
        /* Up: close parents until one has a next child. */
        while (i != 0 && root[i].next == MIME_NONE) {
            i = root[i].parent;
            close_part(m, &li, &root[i], extended, &tmp, out);
        }
        if (i == 0)
            break;
        i = root[i].next;
    }
    free(li.off);
    free(li.lf);
    buf_free(&tmp);
}
