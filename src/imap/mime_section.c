/*
 * mime_section.c - BODY[section] (RFC 3501 6.4.5) and BINARY[section]
 * (RFC 3516): reading a section spec and finding its bytes in the tree.
 *
 * A spec is checked completely before anything is looked up, so a bad
 * spec is always -EINVAL (BAD) and a good one for a part that is not there
 * is always empty content. Part numbers follow RFC 3501: numbers index the
 * parts of a multipart; a message/rfc822 part is entered, so its number
 * followed by another one indexes the embedded message's body; a
 * non-multipart message (top-level or embedded) has its body as part 1.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imap/mime_internal.h"

enum sec_text { ST_NONE, ST_HEADER, ST_TEXT, ST_MIME, ST_FIELDS, ST_FIELDS_NOT };

typedef struct sec_spec {
    const char *path; /* "1.2.3", no trailing dot */
    size_t path_len;
    enum sec_text text;
    const char *list; /* "(A B)" of HEADER.FIELDS */
    size_t list_len;
} sec_spec;

static int is_astring_char(unsigned char c)
{
    return c > ' ' && c < 127 && !strchr("(){%*\"\\", c);
}

/* Reads one header-fld-name (astring) at s[i]; with out, appends its
 * value. Returns the index after it, or -1. */
static long read_astring(const char *s, size_t i, size_t n, buf *out)
{
    if (i < n && s[i] == '"') {
        for (i++; i < n && s[i] != '"'; i++) {
            if (s[i] == '\\') {
                if (++i >= n || (s[i] != '"' && s[i] != '\\'))
                    return -1;
            } else if (s[i] == '\r' || s[i] == '\n') {
                return -1;
            }
            if (out)
                buf_append(out, &s[i], 1);
        }
        return i < n ? (long)i + 1 : -1;
    }
    if (i < n && s[i] == '{') { /* a literal, as the command carried it */
        size_t len = 0, j = i + 1;
        while (j < n && s[j] >= '0' && s[j] <= '9' && len < 100000)
            len = len * 10 + (size_t)(s[j++] - '0');
        if (j == i + 1 || len >= 100000)
            return -1;
        if (j < n && s[j] == '+')
            j++;
        if (j + 3 > n || s[j] != '}' || s[j + 1] != '\r' || s[j + 2] != '\n' || n - (j + 3) < len)
            return -1;
        if (out)
            buf_append(out, s + j + 3, len);
        return (long)(j + 3 + len);
    }
    size_t st = i;
    while (i < n && (is_astring_char((unsigned char)s[i]) || s[i] == ']'))
        i++;
    if (i == st)
        return -1;
    if (out)
        buf_append(out, s + st, i - st);
    return (long)i;
}

/* header-list = "(" header-fld-name *(SP header-fld-name) ")" */
static int check_list(const char *s, size_t n)
{
    if (n < 3 || s[0] != '(' || s[n - 1] != ')')
        return -EINVAL;
    size_t i = 1;
    for (;;) {
        long e = read_astring(s, i, n - 1, NULL);
        if (e < 0)
            return -EINVAL;
        i = (size_t)e;
        if (i == n - 1)
            return 0;
        if (s[i] != ' ')
            return -EINVAL;
        i++;
    }
}

static int kw(const char *s, size_t n, const char *k)
{
    size_t l = strlen(k);
    return n >= l && strncasecmp(s, k, l) == 0;
}

static int parse_spec(const char *s, sec_spec *sp, int binary)
{
    size_t n = strlen(s), i = 0;
    memset(sp, 0, sizeof(*sp));
    sp->path = s;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        size_t st = i;
        uint64_t v = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9' && v <= UINT32_MAX)
            v = v * 10 + (uint64_t)(s[i++] - '0');
        if (s[st] == '0' || v > UINT32_MAX) /* nz-number */
            return -EINVAL;
        sp->path_len = i;
        if (i == n)
            return 0;
        if (s[i] != '.')
            return -EINVAL;
        i++;
        if (i == n)
            return -EINVAL;
    }
    if (i == n)
        return 0; /* "" */
    if (binary)
        return -EINVAL;
    const char *t = s + i;
    size_t tn = n - i;
    size_t kl;
    if (kw(t, tn, "HEADER.FIELDS.NOT ")) {
        sp->text = ST_FIELDS_NOT;
        kl = 18;
    } else if (kw(t, tn, "HEADER.FIELDS ")) {
        sp->text = ST_FIELDS;
        kl = 14;
    } else if (tn == 6 && kw(t, tn, "HEADER")) {
        sp->text = ST_HEADER;
        return 0;
    } else if (tn == 4 && kw(t, tn, "TEXT")) {
        sp->text = ST_TEXT;
        return 0;
    } else if (tn == 4 && kw(t, tn, "MIME") && sp->path_len) {
        sp->text = ST_MIME;
        return 0;
    } else {
        return -EINVAL;
    }
    sp->list = t + kl;
    sp->list_len = tn - kl;
    return check_list(sp->list, sp->list_len);
}

/* The n-th (1-based) part of a multipart. */
static const mime_part *nth_child(const mime_part *root, const mime_part *p, uint64_t n)
{
    if (n > p->nchildren)
        return NULL;
    uint32_t c = p->first_child;
    while (--n > 0)
        c = root[c].next;
    return &root[c];
}

/* Walks the part numbers; NULL when the part is not there. */
static const mime_part *resolve(const mime_part *root, const sec_spec *sp)
{
    const mime_part *p = root;
    int as_message = 1; /* p is a message, not a part of one */
    size_t i = 0;
    while (i < sp->path_len) {
        uint64_t n = 0;
        while (i < sp->path_len && sp->path[i] != '.')
            n = n * 10 + (uint64_t)(sp->path[i++] - '0');
        i++;
        if (!as_message && p->kind == MIME_MESSAGE) {
            p = &root[p->first_child];
            as_message = 1;
        }
        if (p->kind == MIME_MULTIPART)
            p = nth_child(root, p, n);
        else if (!(as_message && n == 1))
            p = NULL;
        if (!p)
            return NULL;
        as_message = 0;
    }
    return p;
}

static int name_listed(const uint8_t *name, size_t n, const buf *names)
{
    /* names: each name preceded by its length as a size_t */
    for (size_t i = 0; i + sizeof(size_t) <= names->len;) {
        size_t l;
        memcpy(&l, names->data + i, sizeof(l));
        i += sizeof(l);
        if (l == n && strncasecmp((const char *)names->data + i, (const char *)name, n) == 0)
            return 1;
        i += l;
    }
    return 0;
}

static void header_fields(const uint8_t *m, const mime_part *p, const sec_spec *sp, buf *out)
{
    buf names, one;
    buf_init(&names);
    buf_init(&one);
    size_t i = 1, n = sp->list_len - 1;
    while (i < n) {
        buf_reset(&one);
        i = (size_t)read_astring(sp->list, i, n, &one) + 1;
        buf_append(&names, &one.len, sizeof(one.len));
        buf_append(&names, one.data ? one.data : (const uint8_t *)"", one.len);
    }
    int want = sp->text == ST_FIELDS;
    mime_hdr_iter it;
    mime_field f;
    mime_hdr_iter_init(&it, m, p);
    while (mime_hdr_next(&it, &f))
        if (name_listed(m + f.name, f.name_len, &names) == want)
            buf_append(out, m + f.name, f.end - f.name);
    /* RFC 3501: the blank line is part of every header fetch, except for
     * a message that has none. */
    if (p->blank) {
        if (p->hdr_end >= p->start + 2 && m[p->hdr_end - 2] == '\r')
            buf_append(out, "\r\n", 2);
        else
            buf_append(out, "\n", 1);
    }
    buf_free(&names);
    buf_free(&one);
}

int mime_section(const mime_part *root, const char *msg, size_t len, const char *section,
                 buf *out)
{
    sec_spec sp;
    int rc = parse_spec(section ? section : "", &sp, 0);
    if (rc < 0)
        return rc;
    const uint8_t *m = (const uint8_t *)(msg ? msg : "");
    mime_part *own = NULL;
    if (!root)
        root = own = mime_parse(msg, len, NULL);
    buf_append(out, "", 0);
    const mime_part *p = root;
    if (sp.path_len == 0 && sp.text == ST_NONE) {
        buf_append(out, m, root->end);
        goto done;
    }
    if (sp.path_len) {
        p = resolve(root, &sp);
        if (!p)
            goto done;
        if (sp.text == ST_NONE) {
            buf_append(out, m + p->hdr_end, p->end - p->hdr_end);
            goto done;
        }
        if (sp.text == ST_MIME) {
            buf_append(out, m + p->start, p->hdr_end - p->start);
            goto done;
        }
        /* HEADER/TEXT after a number: only of a message/rfc822 part. */
        if (p->kind != MIME_MESSAGE)
            goto done;
        p = &root[p->first_child];
    }
    if (sp.text == ST_HEADER)
        buf_append(out, m + p->start, p->hdr_end - p->start);
    else if (sp.text == ST_TEXT)
        buf_append(out, m + p->hdr_end, p->end - p->hdr_end);
    else
        header_fields(m, p, &sp, out);
done:
    mime_free(own);
    return 0;
}

int mime_binary(const mime_part *root, const char *msg, size_t len, const char *section,
                buf *out)
{
    sec_spec sp;
    int rc = parse_spec(section ? section : "", &sp, 1);
    if (rc < 0)
        return rc;
    const uint8_t *m = (const uint8_t *)(msg ? msg : "");
    buf_append(out, "", 0);
    if (sp.path_len == 0) {
        buf_append(out, m, msg ? len : 0);
        return 0;
    }
    mime_part *own = NULL;
    if (!root)
        root = own = mime_parse(msg, len, NULL);
    const mime_part *p = resolve(root, &sp);
    rc = 0;
    if (p) {
        const uint8_t *b = m + p->hdr_end;
        size_t n = p->end - p->hdr_end;
        switch (p->cte) {
        case MIME_CTE_BASE64:
            mime_decode_base64(b, n, out);
            break;
        case MIME_CTE_QP:
            mime_decode_qp(b, n, out);
            break;
        case MIME_CTE_UNKNOWN:
            rc = -EILSEQ;
            break;
        default:
            buf_append(out, b, n);
        }
    }
    mime_free(own);
    return rc;
}
