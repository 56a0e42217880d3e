/*
 * mime_decode.c - undoing encodings: base64 and quoted-printable bodies
 * (RFC 2045), encoded words in headers (RFC 2047), charsets to UTF-8
 * (glibc iconv), and the decoded text SEARCH compares against.
 *
 * The decoders are lenient the way readers must be: base64 skips what is
 * not in its alphabet and restarts after padding (concatenated chunks),
 * quoted-printable keeps a malformed "=" as it is, an encoded word that
 * does not parse stays text, a charset iconv does not know is passed
 * through, and bytes invalid in their charset become U+FFFD. Adjacent
 * encoded words in the same charset are converted together, so a UTF-8
 * character split across two words survives.
 */
#include <errno.h>
#include <iconv.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imap/mime_internal.h"

static const uint8_t replacement[3] = {0xEF, 0xBF, 0xBD}; /* U+FFFD */

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

static int b64val(uint8_t c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

void mime_decode_base64(const uint8_t *p, size_t n, buf *out)
{
    buf_reserve(out, n / 4 * 3 + 3);
    uint8_t *o = out->data + out->len;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '=') {
            bits = 0; /* padding ends a chunk; another may follow */
            continue;
        }
        int v = b64val(p[i]);
        if (v < 0)
            continue;
        acc = (acc << 6 | (uint32_t)v) & 0xFFFFFF;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            *o++ = (uint8_t)(acc >> bits);
        }
    }
    out->len = (size_t)(o - out->data);
    out->data[out->len] = 0;
}

void mime_decode_qp(const uint8_t *p, size_t n, buf *out)
{
    buf_reserve(out, n);
    uint8_t *o = out->data + out->len;
    size_t i = 0;
    while (i < n) {
        const uint8_t *nl = memchr(p + i, '\n', n - i);
        size_t le = nl ? (size_t)(nl - p) : n; /* line content is [i, e) */
        size_t e = le;
        if (nl && e > i && p[e - 1] == '\r')
            e--;
        size_t eol = e; /* the line break as it is: [eol, next) */
        size_t next = nl ? le + 1 : n;
        /* Trailing blanks were added in transport (RFC 2045 6.7 (3)). */
        while (e > i && (p[e - 1] == ' ' || p[e - 1] == '\t'))
            e--;
        int soft = 0;
        for (size_t j = i; j < e; j++) {
            int h, l;
            if (p[j] != '=') {
                *o++ = p[j];
            } else if (j + 1 == e) {
                soft = 1;
            } else if (j + 2 < e && (h = hexval(p[j + 1])) >= 0 && (l = hexval(p[j + 2])) >= 0) {
                *o++ = (uint8_t)(h << 4 | l);
                j += 2;
            } else {
                *o++ = '=';
            }
        }
        if (!soft)
            for (size_t j = eol; j < next; j++)
                *o++ = p[j];
        i = next;
    }
    out->len = (size_t)(o - out->data);
    out->data[out->len] = 0;
}

/* --- charsets --- */

/* iconv_open loads the charset's gconv module and iconv_close unloads it:
 * tens of microseconds of mmap/munmap for every encoded word. So each
 * thread keeps its last few converters (and misses) open; iconv_t is not
 * shareable between threads, and the key's destructor closes them when a
 * thread ends. */
#define CONV_CACHE 8

typedef struct conv_cache {
    struct {
        char name[48];
        iconv_t cd;
    } e[CONV_CACHE];
    unsigned used, next;
} conv_cache;

static pthread_key_t conv_key;
static pthread_once_t conv_once = PTHREAD_ONCE_INIT;

static void conv_cache_free(void *v)
{
    conv_cache *c = v;
    for (unsigned i = 0; i < c->used; i++)
        if (c->e[i].cd != (iconv_t)-1)
            iconv_close(c->e[i].cd);
    free(c);
}

static void conv_key_init(void) { pthread_key_create(&conv_key, conv_cache_free); }

/* A converter from name to UTF-8 in its initial state, or (iconv_t)-1. */
static iconv_t converter(const char *name)
{
    pthread_once(&conv_once, conv_key_init);
    conv_cache *c = pthread_getspecific(conv_key);
    if (!c) {
        c = calloc(1, sizeof(*c));
        if (!c)
            abort();
        pthread_setspecific(conv_key, c);
    }
    for (unsigned i = 0; i < c->used; i++)
        if (strcasecmp(c->e[i].name, name) == 0) {
            if (c->e[i].cd != (iconv_t)-1)
                iconv(c->e[i].cd, NULL, NULL, NULL, NULL);
            return c->e[i].cd;
        }
    unsigned slot = c->used < CONV_CACHE ? c->used++ : c->next++ % CONV_CACHE;
    if (c->e[slot].name[0] && c->e[slot].cd != (iconv_t)-1)
        iconv_close(c->e[slot].cd);
    snprintf(c->e[slot].name, sizeof(c->e[slot].name), "%s", name);
    c->e[slot].cd = iconv_open("UTF-8", name);
    return c->e[slot].cd;
}

static int cs_is(const uint8_t *cs, size_t n, const char *name)
{
    return strlen(name) == n && strncasecmp((const char *)cs, name, n) == 0;
}

void mime_to_utf8(const uint8_t *cs, size_t cslen, const uint8_t *p, size_t n, buf *out)
{
    /* A language suffix (RFC 2231: "utf-8*en") is not part of the name. */
    const uint8_t *star = cslen ? memchr(cs, '*', cslen) : NULL;
    if (star)
        cslen = (size_t)(star - cs);
    if (n == 0)
        return;
    if (cslen == 0 || cslen > 40 || cs_is(cs, cslen, "utf-8") || cs_is(cs, cslen, "utf8") ||
        cs_is(cs, cslen, "us-ascii") || cs_is(cs, cslen, "ascii")) {
        buf_append(out, p, n);
        return;
    }
    /* Only plain names go to iconv: no "//TRANSLIT"-style suffixes from
     * the message. */
    char name[48];
    for (size_t i = 0; i < cslen; i++) {
        uint8_t c = cs[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.' || c == ':' || c == '+')) {
            buf_append(out, p, n);
            return;
        }
        name[i] = (char)c;
    }
    name[cslen] = 0;
    iconv_t cd = converter(name);
    if (cd == (iconv_t)-1) {
        buf_append(out, p, n);
        return;
    }
    char *in = (char *)(uintptr_t)p;
    size_t inleft = n;
    while (inleft > 0) {
        buf_reserve(out, inleft * 2 + 16);
        char *o = (char *)out->data + out->len;
        size_t oleft = out->cap - out->len - 1;
        size_t r = iconv(cd, &in, &inleft, &o, &oleft);
        out->len = (size_t)((uint8_t *)o - out->data);
        if (r != (size_t)-1)
            break;
        if (errno == E2BIG)
            continue;
        buf_append(out, replacement, sizeof(replacement));
        if (errno == EILSEQ && inleft > 0) {
            in++;
            inleft--;
            continue;
        }
        break; /* EINVAL: an incomplete sequence at the end */
    }
    /* Shift back to the initial state (stateful charsets). */
    buf_reserve(out, 32);
    char *o = (char *)out->data + out->len;
    size_t oleft = out->cap - out->len - 1;
    iconv(cd, NULL, NULL, &o, &oleft);
    out->len = (size_t)((uint8_t *)o - out->data);
    out->data[out->len] = 0;
}

/* --- RFC 2047 --- */

typedef struct enc_word {
    size_t cs, cslen; /* charset, relative to the word */
    int b64;
    size_t text, textlen;
    size_t len; /* the whole word */
} enc_word;

/* Parses "=?charset?e?text?=" at p; returns 1 when it is one. Each
 * attempt stops at the third '?', which keeps the scan linear. */
static int parse_word(const uint8_t *p, size_t n, enc_word *w)
{
    if (n < 8 || p[0] != '=' || p[1] != '?')
        return 0;
    size_t i = 2;
    while (i < n && p[i] != '?' && i < 2 + 64) {
        if (mime_is_wsp(p[i]) || p[i] < 32 || p[i] >= 127)
            return 0;
        i++;
    }
    if (i >= n || p[i] != '?' || i == 2)
        return 0;
    w->cs = 2;
    w->cslen = i - 2;
    if (i + 2 >= n || p[i + 2] != '?')
        return 0;
    uint8_t e = p[i + 1];
    if (e == 'B' || e == 'b')
        w->b64 = 1;
    else if (e == 'Q' || e == 'q')
        w->b64 = 0;
    else
        return 0;
    size_t t = i + 3, j = t;
    while (j < n && p[j] != '?') {
        if (mime_is_wsp(p[j]))
            return 0;
        j++;
    }
    if (j + 1 >= n || p[j + 1] != '=')
        return 0;
    w->text = t;
    w->textlen = j - t;
    w->len = j + 2;
    return 1;
}

static void decode_q(const uint8_t *p, size_t n, buf *out)
{
    for (size_t i = 0; i < n; i++) {
        int h, l;
        uint8_t c = p[i];
        if (c == '_') {
            c = ' ';
        } else if (c == '=' && i + 2 < n && (h = hexval(p[i + 1])) >= 0 &&
                   (l = hexval(p[i + 2])) >= 0) {
            c = (uint8_t)(h << 4 | l);
            i += 2;
        }
        buf_append(out, &c, 1);
    }
}

void mime_decode_2047(const uint8_t *p, size_t n, buf *out)
{
    buf pending; /* decoded bytes of adjacent words in one charset */
    buf_init(&pending);
    const uint8_t *pcs = NULL;
    size_t pcslen = 0;
    size_t i = 0;
    int after_word = 0;
    while (i < n) {
        enc_word w;
        if (p[i] == '=' && parse_word(p + i, n - i, &w)) {
            const uint8_t *cs = p + i + w.cs;
            if (pcs && !(pcslen == w.cslen && strncasecmp((const char *)pcs, (const char *)cs,
                                                          pcslen) == 0)) {
                mime_to_utf8(pcs, pcslen, pending.data, pending.len, out);
                buf_reset(&pending);
            }
            pcs = cs;
            pcslen = w.cslen;
            if (w.b64)
                mime_decode_base64(p + i + w.text, w.textlen, &pending);
            else
                decode_q(p + i + w.text, w.textlen, &pending);
            i += w.len;
            after_word = 1;
            continue;
        }
        if (after_word && mime_is_wsp(p[i])) {
            /* Blanks between two encoded words are not text (6.2). */
            size_t j = i;
            while (j < n && mime_is_wsp(p[j]))
                j++;
            if (j < n && p[j] == '=' && parse_word(p + j, n - j, &w)) {
                i = j;
                continue;
            }
        }
        if (pcs) {
            mime_to_utf8(pcs, pcslen, pending.data, pending.len, out);
            buf_reset(&pending);
            pcs = NULL;
        }
        after_word = 0;
        /* Copy up to the next possible encoded word in one go. */
        size_t j = i + 1;
        while (j < n && p[j] != '=')
            j++;
        buf_append(out, p + i, j - i);
        i = j;
    }
    if (pcs)
        mime_to_utf8(pcs, pcslen, pending.data, pending.len, out);
    buf_free(&pending);
}

/* --- what SEARCH reads --- */

static const uint8_t *bytes_of(const char *msg) { return (const uint8_t *)(msg ? msg : ""); }

static void decode_value(const uint8_t *m, size_t off, size_t len, buf *tmp, buf *out)
{
    buf_reset(tmp);
    mime_unfold(m + off, len, tmp);
    mime_decode_2047(tmp->data ? tmp->data : (const uint8_t *)"", tmp->len, out);
}

int mime_header_value(const mime_part *root, const char *msg, const char *name, buf *out)
{
    if (!root)
        root = mime_empty_tree();
    const uint8_t *m = bytes_of(msg);
    mime_hdr_iter it;
    mime_field f;
    buf tmp;
    buf_init(&tmp);
    int found = 0;
    mime_hdr_iter_init(&it, m, root);
    while (mime_hdr_next(&it, &f)) {
        if (!mime_name_eq(m + f.name, f.name_len, name))
            continue;
        if (found)
            buf_append(out, "\n", 1);
        found = 1;
        decode_value(m, f.value, f.value_len, &tmp, out);
    }
    buf_append(out, "", 0); /* out->data is a string even when empty */
    buf_free(&tmp);
    return found;
}

static void decoded_header(const uint8_t *m, const mime_part *p, buf *tmp, buf *out)
{
    mime_hdr_iter it;
    mime_field f;
    mime_hdr_iter_init(&it, m, p);
    while (mime_hdr_next(&it, &f)) {
        buf_append(out, m + f.name, f.name_len);
        buf_append(out, ": ", 2);
        decode_value(m, f.value, f.value_len, tmp, out);
        buf_append(out, "\n", 1);
    }
}

static void text_of_part(const uint8_t *m, const mime_part *p, buf *tmp, buf *out)
{
    const uint8_t *body = m + p->hdr_end;
    size_t n = p->end - p->hdr_end;
    buf_reset(tmp);
    if (p->cte == MIME_CTE_BASE64) {
        mime_decode_base64(body, n, tmp);
        body = tmp->data;
        n = tmp->len;
    } else if (p->cte == MIME_CTE_QP) {
        mime_decode_qp(body, n, tmp);
        body = tmp->data;
        n = tmp->len;
    }
    buf cs;
    buf_init(&cs);
    mime_span type, sub;
    size_t params;
    if (p->shape == MIME_AS_DECLARED && p->ct_declared &&
        mime_ctype_split(m, p->f[MF_CTYPE], &type, &sub, &params))
        mime_param_get(m, params, p->f[MF_CTYPE].off + p->f[MF_CTYPE].len, "charset", &cs);
    mime_to_utf8(cs.data ? cs.data : (const uint8_t *)"", cs.len, body ? body : m, n, out);
    buf_free(&cs);
    buf_append(out, "\n", 1);
}

void mime_text_parts(const mime_part *root, const char *msg, buf *out)
{
    if (!root)
        root = mime_empty_tree();
    const uint8_t *m = bytes_of(msg);
    buf tmp;
    buf_init(&tmp);
    buf_append(out, "", 0);
    for (uint32_t i = 0; i < root->count; i++) {
        const mime_part *p = mime_node(root, i);
        if (i > 0 && root[p->parent].kind == MIME_MESSAGE) {
            decoded_header(m, p, &tmp, out);
            buf_append(out, "\n", 1);
        }
        if (mime_is_text_leaf(p))
            text_of_part(m, p, &tmp, out);
    }
    buf_free(&tmp);
}

void mime_body_text(const mime_part *root, const char *msg, buf *out)
{
    if (!root)
        root = mime_empty_tree();
    buf tmp;
    buf_init(&tmp);
    decoded_header(bytes_of(msg), root, &tmp, out);
    buf_free(&tmp);
    buf_append(out, "\n", 1);
    mime_text_parts(root, msg, out);
}
