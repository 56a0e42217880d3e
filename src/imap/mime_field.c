/*
 * mime_field.c - reading structured MIME header values: Content-Type and
 * its parameters (RFC 2045, RFC 2231 continuations and charset'lang'value
 * encoding), Content-Transfer-Encoding, comments, unfolding.
 *
 * Everything here scans a value once, left to right, and tolerates what
 * mailers actually send: comments anywhere, unquoted values holding
 * tspecials ("boundary=----=_Part_1"), stray semicolons, parameters without
 * a value (skipped), quoted extended values. The number of parameters read
 * from one value is capped so that joining continuations stays cheap.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imap/mime_internal.h"

#define MAX_PARAMS 64
#define MAX_SECTION 999

size_t mime_skip_cfws(const uint8_t *m, size_t i, size_t end)
{
    while (i < end) {
        if (mime_is_wsp(m[i])) {
            i++;
        } else if (m[i] == '(') {
            unsigned depth = 0;
            while (i < end) {
                if (m[i] == '\\' && i + 1 < end) {
                    i += 2;
                    continue;
                }
                if (m[i] == '(')
                    depth++;
                else if (m[i] == ')' && --depth == 0) {
                    i++;
                    break;
                }
                i++;
            }
        } else {
            break;
        }
    }
    return i;
}

/* RFC 2045 token characters. */
static int is_tchar(uint8_t c) { return c > 32 && c < 127 && !strchr("()<>@,;:\\\"/[]?=", c); }

static size_t token_end(const uint8_t *m, size_t i, size_t end)
{
    while (i < end && is_tchar(m[i]))
        i++;
    return i;
}

int mime_span_eq(const uint8_t *m, mime_span s, const char *lit)
{
    return mime_name_eq(m + s.off, s.len, lit);
}

int mime_ctype_split(const uint8_t *m, mime_span v, mime_span *type, mime_span *sub,
                     size_t *params)
{
    size_t end = v.off + v.len;
    size_t i = mime_skip_cfws(m, v.off, end);
    size_t e = token_end(m, i, end);
    type->off = i;
    type->len = e - i;
    i = mime_skip_cfws(m, e, end);
    if (type->len == 0 || i >= end || m[i] != '/')
        return 0;
    i = mime_skip_cfws(m, i + 1, end);
    e = token_end(m, i, end);
    sub->off = i;
    sub->len = e - i;
    *params = e;
    return sub->len > 0;
}

int mime_first_token(const uint8_t *m, mime_span v, mime_span *tok, size_t *after)
{
    size_t end = v.off + v.len;
    size_t i = mime_skip_cfws(m, v.off, end);
    size_t e = token_end(m, i, end);
    tok->off = i;
    tok->len = e - i;
    if (after)
        *after = e;
    return e > i;
}

enum mime_cte mime_cte_parse(const uint8_t *m, mime_span v)
{
    mime_span t;
    if (!mime_first_token(m, v, &t, NULL))
        return MIME_CTE_7BIT; /* empty or junk: the default */
    if (mime_span_eq(m, t, "7bit"))
        return MIME_CTE_7BIT;
    if (mime_span_eq(m, t, "8bit"))
        return MIME_CTE_8BIT;
    if (mime_span_eq(m, t, "binary"))
        return MIME_CTE_BINARY;
    if (mime_span_eq(m, t, "base64"))
        return MIME_CTE_BASE64;
    if (mime_span_eq(m, t, "quoted-printable"))
        return MIME_CTE_QP;
    return MIME_CTE_UNKNOWN;
}

void mime_unfold(const uint8_t *p, size_t n, buf *out)
{
    size_t s = 0, e = n;
    while (s < e && mime_is_wsp(p[s]))
        s++;
    while (e > s && mime_is_wsp(p[e - 1]))
        e--;
    buf_reserve(out, e - s);
    uint8_t *o = out->data + out->len;
    for (size_t i = s; i < e; i++) {
        if (p[i] == '\n' || (p[i] == '\r' && i + 1 < e && p[i + 1] == '\n'))
            continue;
        *o++ = p[i];
    }
    out->len = (size_t)(o - out->data);
    out->data[out->len] = 0;
}

/* --- parameters --- */

typedef struct raw_param {
    const uint8_t *name;
    size_t nlen;
    long sect; /* RFC 2231 section number, -1 when none */
    int ext;   /* RFC 2231 extended value (name*) */
    size_t voff, vlen;
    int quoted;
} raw_param;

static size_t skip_to_semicolon(const uint8_t *m, size_t i, size_t end)
{
    while (i < end && m[i] != ';') {
        if (m[i] == '"') {
            for (i++; i < end && m[i] != '"'; i++)
                if (m[i] == '\\')
                    i++;
            i++;
        } else if (m[i] == '(') {
            i = mime_skip_cfws(m, i, end);
        } else {
            i++;
        }
    }
    return i < end ? i : end;
}

/* Splits "name*3*" into its base name, section and extended flag. */
static void split_name(raw_param *p, const uint8_t *s, size_t n)
{
    p->name = s;
    p->nlen = n;
    p->sect = -1;
    p->ext = 0;
    const uint8_t *star = memchr(s, '*', n);
    if (!star)
        return;
    size_t base = (size_t)(star - s), i = base + 1;
    if (i == n) { /* name* */
        p->nlen = base;
        p->ext = 1;
        return;
    }
    long sect = 0;
    size_t d = i;
    while (i < n && s[i] >= '0' && s[i] <= '9' && sect <= MAX_SECTION)
        sect = sect * 10 + (s[i++] - '0');
    if (i == d || sect > MAX_SECTION || (i - d > 1 && s[d] == '0'))
        return; /* not RFC 2231 after all: keep the whole name */
    if (i + 1 == n && s[i] == '*')
        p->ext = 1;
    else if (i != n)
        return;
    p->nlen = base;
    p->sect = sect;
}

static size_t params_raw(const uint8_t *m, size_t i, size_t end, raw_param *out)
{
    size_t n = 0;
    while (i < end && n < MAX_PARAMS) {
        i = mime_skip_cfws(m, i, end);
        if (i >= end)
            break;
        if (m[i] != ';') {
            i = skip_to_semicolon(m, i, end);
            continue;
        }
        i = mime_skip_cfws(m, i + 1, end);
        size_t s = i;
        i = token_end(m, i, end);
        if (i == s)
            continue;
        size_t name_end = i;
        i = mime_skip_cfws(m, i, end);
        if (i >= end || m[i] != '=')
            continue;
        i = mime_skip_cfws(m, i + 1, end);
        raw_param *p = &out[n];
        if (i < end && m[i] == '"') {
            size_t j = i + 1;
            while (j < end && m[j] != '"')
                j += m[j] == '\\' && j + 1 < end ? 2 : 1;
            p->voff = i + 1;
            p->vlen = j - (i + 1);
            p->quoted = 1;
            i = j < end ? j + 1 : end;
        } else {
            size_t v = i;
            while (i < end && !mime_is_wsp(m[i]) && m[i] != ';' && m[i] != '"' && m[i] != '(')
                i++;
            p->voff = v;
            p->vlen = i - v;
            p->quoted = 0;
        }
        split_name(p, m + s, name_end - s);
        if (p->nlen > 0)
            n++;
    }
    return n;
}

static void append_unquoted(const uint8_t *p, size_t n, int quoted, buf *out)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\r' || p[i] == '\n')
            continue;
        if (quoted && p[i] == '\\' && i + 1 < n)
            i++;
        buf_append(out, &p[i], 1);
    }
}

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static void append_pct(const uint8_t *p, size_t n, buf *out)
{
    for (size_t i = 0; i < n; i++) {
        int h, l;
        if (p[i] == '%' && i + 2 < n && (h = hexval(p[i + 1])) >= 0 &&
            (l = hexval(p[i + 2])) >= 0) {
            uint8_t c = (uint8_t)(h << 4 | l);
            buf_append(out, &c, 1);
            i += 2;
        } else {
            buf_append(out, &p[i], 1);
        }
    }
}

/* Appends one segment of a parameter's value. The first segment of an
 * extended value starts with charset'lang', whose charset goes to cs. */
static void append_segment(const uint8_t *m, const raw_param *p, int first, buf *tmp, buf *out,
                           buf *cs)
{
    if (!p->ext) {
        append_unquoted(m + p->voff, p->vlen, p->quoted, out);
        return;
    }
    buf_reset(tmp);
    append_unquoted(m + p->voff, p->vlen, p->quoted, tmp);
    const uint8_t *v = tmp->data ? tmp->data : (const uint8_t *)"";
    size_t n = tmp->len, s = 0;
    if (first) {
        const uint8_t *q1 = memchr(v, '\'', n);
        const uint8_t *q2 = q1 ? memchr(q1 + 1, '\'', n - (size_t)(q1 + 1 - v)) : NULL;
        if (q2) {
            buf_append(cs, v, (size_t)(q1 - v));
            s = (size_t)(q2 + 1 - v);
        }
    }
    append_pct(v + s, n - s, out);
}

static int cmp_sect(const void *a, const void *b)
{
    const raw_param *x = *(const raw_param *const *)a, *y = *(const raw_param *const *)b;
    return x->sect < y->sect ? -1 : x->sect > y->sect;
}

void mime_params_each(const uint8_t *m, size_t params, size_t end, mime_param_cb cb, void *ctx)
{
    raw_param raw[MAX_PARAMS];
    const raw_param *group[MAX_PARAMS];
    uint8_t done[MAX_PARAMS] = {0};
    size_t n = params_raw(m, params, end, raw);
    buf val, tmp, cs;
    buf_init(&val);
    buf_init(&tmp);
    buf_init(&cs);
    for (size_t i = 0; i < n; i++) {
        if (done[i])
            continue;
        size_t ng = 0;
        const raw_param *plain = NULL, *ext = NULL;
        for (size_t j = i; j < n; j++) {
            if (done[j] || raw[j].nlen != raw[i].nlen ||
                strncasecmp((const char *)raw[j].name, (const char *)raw[i].name, raw[i].nlen))
                continue;
            done[j] = 1;
            if (raw[j].sect >= 0)
                group[ng++] = &raw[j];
            else if (raw[j].ext && !ext)
                ext = &raw[j];
            else if (!raw[j].ext && !plain)
                plain = &raw[j];
        }
        buf_reset(&val);
        buf_reset(&cs);
        int have = 0;
        if (ng > 0) {
            qsort(group, ng, sizeof(group[0]), cmp_sect);
            long want = 0;
            for (size_t g = 0; g < ng; g++) {
                if (group[g]->sect < want)
                    continue; /* a repeated section: the first one counts */
                if (group[g]->sect != want)
                    break; /* a gap ends the value */
                append_segment(m, group[g], want == 0, &tmp, &val, &cs);
                want++;
                have = 1;
            }
        }
        if (!have && ext) {
            append_segment(m, ext, 1, &tmp, &val, &cs);
            have = 1;
        }
        if (!have && plain) {
            append_unquoted(m + plain->voff, plain->vlen, plain->quoted, &val);
            have = 1;
        }
        if (!have)
            continue;
        if (cs.len) {
            buf_reset(&tmp);
            mime_to_utf8(cs.data, cs.len, val.data ? val.data : (const uint8_t *)"", val.len, &tmp);
            cb(ctx, raw[i].name, raw[i].nlen, tmp.data ? tmp.data : (const uint8_t *)"", tmp.len);
        } else {
            cb(ctx, raw[i].name, raw[i].nlen, val.data ? val.data : (const uint8_t *)"", val.len);
        }
    }
    buf_free(&val);
    buf_free(&tmp);
    buf_free(&cs);
}

typedef struct param_get_ctx {
    const char *name;
    buf *out;
    int found;
} param_get_ctx;

static void param_get_cb(void *vctx, const uint8_t *name, size_t nlen, const uint8_t *val,
                         size_t vlen)
{
    param_get_ctx *c = vctx;
    if (!c->found && mime_name_eq(name, nlen, c->name)) {
        buf_append(c->out, val, vlen);
        c->found = 1;
    }
}

int mime_param_get(const uint8_t *m, size_t params, size_t end, const char *name, buf *out)
{
    param_get_ctx c = {name, out, 0};
    mime_params_each(m, params, end, param_get_cb, &c);
    return c.found;
}
