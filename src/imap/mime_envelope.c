/*
 * mime_envelope.c - the IMAP ENVELOPE (RFC 3501 7.4.2), the RFC 5322
 * address lists it is made of, the first address SORT needs, and the IMAP
 * string syntax every FETCH string goes through.
 *
 * Addresses are read by a small tokenizer (atoms, quoted strings, domain
 * literals, comments, specials) and a one-token-lookahead parser that
 * accepts the obsolete syntax of RFC 5322 section 4.4 (routes, phrases with
 * dots, blanks around dots, empty list elements) and repairs the usual
 * breakage: a group without its ";", an address without "@" (host
 * "MISSING_DOMAIN"), text after ">". Each token is looked at once. A
 * comment stands in for a missing display name ("user@host (Name)").
 * Display names stay raw: IMAP clients decode the encoded words.
 */
#include <string.h>

#include "imap/mime_internal.h"

/* Longer strings go out as literals: some clients cap quoted strings. */
#define QUOTED_MAX 1000

void mime_put_string(buf *out, const uint8_t *p, size_t n)
{
    size_t nul = 0;
    int quoted = 1;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (c == 0)
            nul++;
        else if (c >= 0x80 || c == '\r' || c == '\n')
            quoted = 0;
    }
    if (n - nul > QUOTED_MAX)
        quoted = 0;
    if (quoted) {
        buf_reserve(out, n * 2 + 2);
        uint8_t *o = out->data + out->len;
        *o++ = '"';
        for (size_t i = 0; i < n; i++) {
            if (p[i] == 0)
                continue;
            if (p[i] == '"' || p[i] == '\\')
                *o++ = '\\';
            *o++ = p[i];
        }
        *o++ = '"';
        out->len = (size_t)(o - out->data);
        out->data[out->len] = 0;
        return;
    }
    buf_printf(out, "{%zu}\r\n", n - nul);
    if (!nul) {
        buf_append(out, p, n);
        return;
    }
    for (size_t i = 0, s = 0; i <= n; i++)
        if (i == n || p[i] == 0) {
            buf_append(out, p + s, i - s);
            s = i + 1;
        }
}

void mime_put_nstring(buf *out, const uint8_t *p, size_t n)
{
    if (n == 0)
        buf_append_str(out, "NIL");
    else
        mime_put_string(out, p, n);
}

void mime_put_upper(buf *out, const uint8_t *p, size_t n)
{
    /* Tokens (types, parameter names) are nearly always short and plain:
     * written straight out, without a copy. */
    int plain = n <= QUOTED_MAX;
    for (size_t i = 0; i < n && plain; i++)
        plain = p[i] >= 0x20 && p[i] < 0x7f && p[i] != '"' && p[i] != '\\';
    if (plain) {
        buf_reserve(out, n + 2);
        uint8_t *o = out->data + out->len;
        *o++ = '"';
        for (size_t i = 0; i < n; i++)
            *o++ = (uint8_t)(p[i] >= 'a' && p[i] <= 'z' ? p[i] - 32 : p[i]);
        *o++ = '"';
        out->len = (size_t)(o - out->data);
        out->data[out->len] = 0;
        return;
    }
    buf t;
    buf_init(&t);
    buf_reserve(&t, n);
    for (size_t i = 0; i < n; i++)
        t.data[i] = (uint8_t)(p[i] >= 'a' && p[i] <= 'z' ? p[i] - 32 : p[i]);
    t.len = n;
    mime_put_string(out, t.data, n);
    buf_free(&t);
}

/* --- address lists --- */

enum { T_END, T_ATOM, T_QSTR, T_DLIT, T_SPECIAL };

typedef struct alex {
    const uint8_t *p;
    size_t i, n;
    size_t cmt_off, cmt_len; /* the first comment of the current element */
    int have_cmt;
} alex;

typedef struct atok {
    int t;
    uint8_t c;    /* T_SPECIAL */
    size_t s, e;  /* content: inside the quotes for T_QSTR */
    int ws;       /* blanks or comments came before it */
} atok;

static size_t comment_end(const uint8_t *p, size_t i, size_t n)
{
    unsigned depth = 0;
    while (i < n) {
        if (p[i] == '\\' && i + 1 < n) {
            i += 2;
            continue;
        }
        if (p[i] == '(')
            depth++;
        else if (p[i] == ')' && --depth == 0)
            return i + 1;
        i++;
    }
    return n;
}

static void lex(alex *L, atok *t)
{
    const uint8_t *p = L->p;
    t->ws = 0;
    for (;;) {
        while (L->i < L->n && mime_is_wsp(p[L->i])) {
            L->i++;
            t->ws = 1;
        }
        if (L->i >= L->n || p[L->i] != '(')
            break;
        size_t e = comment_end(p, L->i, L->n);
        if (!L->have_cmt) {
            L->have_cmt = 1;
            L->cmt_off = L->i + 1;
            L->cmt_len = e - L->i - 1 - (e > L->i + 1 && p[e - 1] == ')');
        }
        L->i = e;
        t->ws = 1;
    }
    if (L->i >= L->n) {
        t->t = T_END;
        t->s = t->e = L->n;
        return;
    }
    size_t i = L->i;
    uint8_t c = p[i];
    if (c == '"' || c == '[') {
        uint8_t close = c == '"' ? '"' : ']';
        size_t j = i + 1;
        while (j < L->n && p[j] != close)
            j += p[j] == '\\' && j + 1 < L->n ? 2 : 1;
        if (c == '"') {
            t->t = T_QSTR;
            t->s = i + 1;
            t->e = j;
        } else {
            t->t = T_DLIT;
            t->s = i;
            t->e = j < L->n ? j + 1 : L->n;
        }
        L->i = j < L->n ? j + 1 : L->n;
        return;
    }
    if (c && strchr("<>:;@,.", c)) {
        t->t = T_SPECIAL;
        t->c = c;
        t->s = i;
        t->e = L->i = i + 1;
        return;
    }
    size_t j = i;
    while (j < L->n && !mime_is_wsp(p[j]) && !(p[j] && strchr("<>:;@,.\"([", p[j])))
        j++;
    t->t = T_ATOM;
    t->s = i;
    t->e = L->i = j;
}

static int is_sp(const atok *t, uint8_t c) { return t->t == T_SPECIAL && t->c == c; }
static int is_word(const atok *t) { return t->t == T_ATOM || t->t == T_QSTR; }

/* Appends a token's text: quoted strings unescaped, line breaks dropped. */
static void put_tok(buf *b, const uint8_t *p, const atok *t)
{
    for (size_t i = t->s; i < t->e; i++) {
        if (p[i] == '\r' || p[i] == '\n')
            continue;
        if (t->t != T_ATOM && p[i] == '\\' && i + 1 < t->e)
            i++;
        buf_append(b, &p[i], 1);
    }
}

enum { ADDR_MAILBOX, ADDR_GROUP_START, ADDR_GROUP_END };

typedef struct mime_addr {
    int kind;
    buf name, adl, local, domain;
} mime_addr;

/* Returns non-zero to stop. */
typedef int (*addr_cb)(void *ctx, const mime_addr *a);

static int emit(mime_addr *a, int kind, addr_cb cb, void *ctx)
{
    a->kind = kind;
    buf_append(&a->name, "", 0);
    buf_append(&a->local, "", 0);
    buf_append(&a->domain, "", 0);
    buf_append(&a->adl, "", 0);
    return cb(ctx, a);
}

static void reset_addr(mime_addr *a)
{
    buf_reset(&a->name);
    buf_reset(&a->adl);
    buf_reset(&a->local);
    buf_reset(&a->domain);
}

/* Domain tokens (atoms, literals, dots; blanks dropped) into b. */
static void read_domain(alex *L, atok *t, buf *b)
{
    while (t->t == T_ATOM || t->t == T_DLIT || is_sp(t, '.')) {
        put_tok(b, L->p, t);
        lex(L, t);
    }
}

static int mailbox_done(alex *L, mime_addr *a, addr_cb cb, void *ctx)
{
    if (a->local.len == 0 && a->domain.len == 0)
        return 0; /* "<>" and the like: nothing to show */
    if (a->name.len == 0 && L->have_cmt) {
        buf t;
        buf_init(&t);
        atok c = {T_QSTR, 0, L->cmt_off, L->cmt_off + L->cmt_len, 0};
        put_tok(&t, L->p, &c);
        mime_unfold(t.data ? t.data : (const uint8_t *)"", t.len, &a->name);
        buf_free(&t);
    }
    return emit(a, ADDR_MAILBOX, cb, ctx);
}

static void addr_parse(const uint8_t *p, size_t n, addr_cb cb, void *ctx)
{
    alex L = {p, 0, n, 0, 0, 0};
    atok t;
    mime_addr a;
    buf_init(&a.name);
    buf_init(&a.adl);
    buf_init(&a.local);
    buf_init(&a.domain);
    int in_group = 0, stop = 0;
    lex(&L, &t);
    while (t.t != T_END && !stop) {
        reset_addr(&a);
        int words = 0, prev_dot = 0;
        /* A phrase, or the local part of an addr-spec: both are kept
         * until the next token says which it was. */
        while (is_word(&t) || is_sp(&t, '.')) {
            if (t.ws && a.name.len)
                buf_append(&a.name, " ", 1);
            put_tok(&a.name, p, &t);
            int dot = is_sp(&t, '.');
            if (!dot && !prev_dot && t.ws && a.local.len)
                buf_append(&a.local, " ", 1);
            put_tok(&a.local, p, &t);
            prev_dot = dot;
            words++;
            lex(&L, &t);
        }
        if (is_sp(&t, ':') && !in_group) {
            in_group = 1;
            stop = emit(&a, ADDR_GROUP_START, cb, ctx);
            L.have_cmt = 0;
            lex(&L, &t);
            continue;
        }
        if (is_sp(&t, '<')) {
            buf_reset(&a.local);
            lex(&L, &t);
            if (is_sp(&t, '@')) { /* obs-route: "<@a,@b:user@host>" */
                while (is_sp(&t, '@') || is_sp(&t, ',')) {
                    if (is_sp(&t, '@')) {
                        if (a.adl.len)
                            buf_append(&a.adl, ",", 1);
                        buf_append(&a.adl, "@", 1);
                        lex(&L, &t);
                        read_domain(&L, &t, &a.adl);
                    } else {
                        lex(&L, &t);
                    }
                }
                if (is_sp(&t, ':'))
                    lex(&L, &t);
            }
            while (is_word(&t) || is_sp(&t, '.')) {
                put_tok(&a.local, p, &t);
                lex(&L, &t);
            }
            if (is_sp(&t, '@')) {
                lex(&L, &t);
                read_domain(&L, &t, &a.domain);
            }
            while (t.t != T_END && !is_sp(&t, '>') && !is_sp(&t, ',') && !is_sp(&t, ';'))
                lex(&L, &t);
            if (is_sp(&t, '>'))
                lex(&L, &t);
            while (t.t != T_END && !is_sp(&t, ',') && !is_sp(&t, ';'))
                lex(&L, &t);
            stop = mailbox_done(&L, &a, cb, ctx);
        } else if (is_sp(&t, '@')) {
            buf_reset(&a.name);
            lex(&L, &t);
            read_domain(&L, &t, &a.domain);
            while (t.t != T_END && !is_sp(&t, ',') && !is_sp(&t, ';'))
                lex(&L, &t);
            stop = mailbox_done(&L, &a, cb, ctx);
        } else if (words) {
            buf_reset(&a.name);
            stop = mailbox_done(&L, &a, cb, ctx);
        }
        if (stop)
            break;
        if (is_sp(&t, ';') && in_group) {
            in_group = 0;
            reset_addr(&a);
            stop = emit(&a, ADDR_GROUP_END, cb, ctx);
        }
        if (t.t != T_END) {
            L.have_cmt = 0;
            lex(&L, &t);
        }
    }
    if (in_group && !stop) {
        reset_addr(&a);
        emit(&a, ADDR_GROUP_END, cb, ctx);
    }
    buf_free(&a.name);
    buf_free(&a.adl);
    buf_free(&a.local);
    buf_free(&a.domain);
}

/* --- ENVELOPE --- */

typedef struct env_list {
    buf *out;
    unsigned count;
} env_list;

static int env_addr(void *vctx, const mime_addr *a)
{
    env_list *l = vctx;
    buf *o = l->out;
    l->count++;
    if (l->count == 1)
        buf_append(o, "(", 1);
    if (a->kind == ADDR_GROUP_END) {
        buf_append_str(o, "(NIL NIL NIL NIL)");
        return 0;
    }
    if (a->kind == ADDR_GROUP_START) {
        buf_append_str(o, "(NIL NIL ");
        mime_put_string(o, a->name.data, a->name.len);
        buf_append_str(o, " NIL)");
        return 0;
    }
    buf_append(o, "(", 1);
    mime_put_nstring(o, a->name.data, a->name.len);
    buf_append(o, " ", 1);
    mime_put_nstring(o, a->adl.data, a->adl.len);
    buf_append(o, " ", 1);
    if (a->local.len)
        mime_put_string(o, a->local.data, a->local.len);
    else
        buf_append_str(o, "\"MISSING_MAILBOX\"");
    buf_append(o, " ", 1);
    if (a->domain.len)
        mime_put_string(o, a->domain.data, a->domain.len);
    else
        buf_append_str(o, "\"MISSING_DOMAIN\"");
    buf_append(o, ")", 1);
    return 0;
}

/* An address list, or NIL when the field is absent or holds none. */
static void env_addresses(const uint8_t *m, const mime_span *v, buf *out)
{
    env_list l = {out, 0};
    if (v->off)
        addr_parse(m + v->off, v->len, env_addr, &l);
    if (l.count)
        buf_append(out, ")", 1);
    else
        buf_append_str(out, "NIL");
}

static void env_string(const uint8_t *m, const mime_span *v, buf *tmp, buf *out)
{
    if (!v->off) {
        buf_append_str(out, "NIL");
        return;
    }
    buf_reset(tmp);
    mime_unfold(m + v->off, v->len, tmp);
    mime_put_string(out, tmp->data ? tmp->data : (const uint8_t *)"", tmp->len);
}

enum { E_DATE, E_SUBJECT, E_FROM, E_SENDER, E_REPLY_TO, E_TO, E_CC, E_BCC, E_IN_REPLY_TO,
       E_MESSAGE_ID, E_COUNT };

void mime_envelope_of(const uint8_t *m, const mime_part *p, buf *out)
{
    static const char *const names[E_COUNT] = {"date", "subject", "from", "sender",
                                               "reply-to", "to", "cc", "bcc",
                                               "in-reply-to", "message-id"};
    mime_span v[E_COUNT];
    memset(v, 0, sizeof(v));
    mime_hdr_iter it;
    mime_field f;
    mime_hdr_iter_init(&it, m, p);
    while (mime_hdr_next(&it, &f))
        for (int i = 0; i < E_COUNT; i++)
            if (!v[i].off && mime_name_eq(m + f.name, f.name_len, names[i])) {
                v[i].off = f.value;
                v[i].len = f.value_len;
                break;
            }
    buf tmp, from;
    buf_init(&tmp);
    buf_init(&from);
    env_addresses(m, &v[E_FROM], &from);
    buf_append(out, "(", 1);
    env_string(m, &v[E_DATE], &tmp, out);
    buf_append(out, " ", 1);
    env_string(m, &v[E_SUBJECT], &tmp, out);
    buf_append(out, " ", 1);
    buf_append(out, from.data, from.len);
    /* Sender and Reply-To default to From when absent or empty. */
    for (int i = E_SENDER; i <= E_REPLY_TO; i++) {
        buf_append(out, " ", 1);
        buf_reset(&tmp);
        env_addresses(m, &v[i], &tmp);
        if (tmp.len == 3 && memcmp(tmp.data, "NIL", 3) == 0)
            buf_append(out, from.data, from.len);
        else
            buf_append(out, tmp.data, tmp.len);
    }
    for (int i = E_TO; i <= E_BCC; i++) {
        buf_append(out, " ", 1);
        env_addresses(m, &v[i], out);
    }
    buf_append(out, " ", 1);
    env_string(m, &v[E_IN_REPLY_TO], &tmp, out);
    buf_append(out, " ", 1);
    env_string(m, &v[E_MESSAGE_ID], &tmp, out);
    buf_append(out, ")", 1);
    buf_free(&tmp);
    buf_free(&from);
}

void mime_envelope(const mime_part *root, const char *msg, buf *out)
{
    mime_envelope_of((const uint8_t *)(msg ? msg : ""), root ? root : mime_empty_tree(), out);
}

/* --- the first address, for SORT --- */

typedef struct first_addr {
    buf *mailbox, *display;
    int found;
} first_addr;

static int first_cb(void *vctx, const mime_addr *a)
{
    first_addr *f = vctx;
    if (a->kind != ADDR_MAILBOX)
        return 0;
    f->found = 1;
    if (f->mailbox)
        buf_append(f->mailbox, a->local.data, a->local.len);
    if (f->display) {
        size_t before = f->display->len;
        mime_decode_2047(a->name.data, a->name.len, f->display);
        if (f->display->len == before) {
            buf_append(f->display, a->local.data, a->local.len);
            if (a->domain.len) {
                buf_append(f->display, "@", 1);
                buf_append(f->display, a->domain.data, a->domain.len);
            }
        }
    }
    return 1;
}

int mime_first_address(const mime_part *root, const char *msg, const char *header, buf *mailbox,
                       buf *display_name)
{
    const uint8_t *m = (const uint8_t *)(msg ? msg : "");
    mime_span v;
    first_addr f = {mailbox, display_name, 0};
    if (mime_find_field(m, root ? root : mime_empty_tree(), header, &v))
        addr_parse(m + v.off, v.len, first_cb, &f);
    if (mailbox)
        buf_append(mailbox, "", 0);
    if (display_name)
        buf_append(display_name, "", 0);
    return f.found;
}
