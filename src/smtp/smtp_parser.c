/*
 * smtp_parser.c - the server-side SMTP/LMTP parsers; see smtp_parser.h.
 *
 * Each reader is a byte-driven state machine whose state lives in its
 * struct, so input split anywhere walks the same states. The data reader
 * takes runs of ordinary bytes in one step (messages are most of the
 * traffic) and looks at CR, LF, NUL and a line-leading "." one at a time.
 * Commands are parsed from a whole line with a cursor; every field has a
 * fixed-size home in smtp_cmd, so a command cannot make us allocate.
 */
#include "smtp/smtp_parser.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- lines ---- */

void smtp_line_init(smtp_line_reader *r, size_t max)
{
    memset(r, 0, sizeof(*r));
    r->max = max ? max : SMTP_LINE_MAX_ANY;
    buf_init(&r->line);
}

void smtp_line_free(smtp_line_reader *r) { buf_free(&r->line); }

static void line_restart(smtp_line_reader *r)
{
    if (r->line.cap > 4096)
        buf_free(&r->line); /* an AUTH line was long: do not keep its memory */
    buf_reset(&r->line);
    r->cr = 0;
    r->errors = 0;
    r->total = 0;
    r->done = 0;
}

static void line_put(smtp_line_reader *r, char c)
{
    /* max counts the CRLF too */
    if (++r->total + 2 > r->max) {
        r->errors |= SMTP_LINE_TOO_LONG;
        return;
    }
    buf_put_u8(&r->line, (uint8_t)c);
}

enum smtp_line_result smtp_line_feed(smtp_line_reader *r, const char *data, size_t len,
                                     size_t *used)
{
    if (r->done)
        line_restart(r);
    for (size_t i = 0; i < len; i++) {
        char c = data[i];
        if (c == '\n') {
            *used = i + 1;
            if (!r->cr)
                r->errors |= SMTP_LINE_BARE_LF;
            r->cr = 0;
            r->done = 1;
            if (r->line.data)
                r->line.data[r->line.len] = 0;
            return r->errors ? SMTP_LINE_BAD : SMTP_LINE_OK;
        }
        if (r->cr) {
            /* The CR before this byte was not part of a CRLF. */
            r->errors |= SMTP_LINE_BARE_CR;
            r->cr = 0;
        }
        if (c == '\r') {
            r->cr = 1;
            continue;
        }
        if (c == 0)
            r->errors |= SMTP_LINE_NUL;
        line_put(r, c);
    }
    *used = len;
    return SMTP_LINE_MORE;
}

const char *smtp_line_text(const smtp_line_reader *r, size_t *len)
{
    if (len)
        *len = r->line.len;
    return r->line.data ? (const char *)r->line.data : "";
}

unsigned smtp_line_errors(const smtp_line_reader *r) { return r->errors; }

const char *smtp_line_error_reply(unsigned errors)
{
    if (errors & SMTP_LINE_BARE_LF)
        return "500 5.5.2 Command line ended by a bare LF: lines end with CRLF";
    if (errors & SMTP_LINE_BARE_CR)
        return "500 5.5.2 Bare CR in command line";
    if (errors & SMTP_LINE_NUL)
        return "500 5.5.2 NUL byte in command line";
    if (errors & SMTP_LINE_TOO_LONG)
        return "500 5.5.2 Line too long";
    return "500 5.5.2 Syntax error";
}

/* ---- commands ---- */

static int set_reply(char *reply, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int set_reply(char *reply, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reply, n, fmt, ap);
    va_end(ap);
    return -1;
}

/* Length of the well-formed UTF-8 sequence at p (lead byte >= 0x80), or 0.
 * Overlong forms, surrogates and code points above U+10FFFF are refused. */
static size_t utf8_seq(const unsigned char *p, const unsigned char *end)
{
    unsigned char c = p[0];
    size_t n;
    unsigned lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0)
            lo = 0xa0;
        if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0)
            lo = 0x90;
        if (c == 0xf4)
            hi = 0x8f;
    } else
        return 0;
    if ((size_t)(end - p) < n)
        return 0;
    if (p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xbf)
            return 0;
    return n;
}

static int is_atext(unsigned char c)
{
    return isalnum(c) || (c && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

/* A dot-string (RFC 5321 4.1.2, with RFC 6531's UTF-8): atoms of atext
 * separated by single dots. Returns 1 when s[0..n) is one. */
static int is_dot_string(const unsigned char *s, size_t n, int *utf8)
{
    if (n == 0 || s[0] == '.' || s[n - 1] == '.')
        return 0;
    for (size_t i = 0; i < n;) {
        if (s[i] >= 0x80) {
            size_t k = utf8_seq(s + i, s + n);
            if (!k)
                return 0;
            *utf8 = 1;
            i += k;
            continue;
        }
        if (s[i] == '.') {
            if (s[i + 1] == '.')
                return 0;
        } else if (!is_atext(s[i]))
            return 0;
        i++;
    }
    return 1;
}

/* Domain (labels of letters, digits, hyphens or UTF-8; not starting or
 * ending with a hyphen) or address literal, at p. Returns its length, or 0. */
static size_t scan_domain(const unsigned char *p, const unsigned char *end, int *utf8)
{
    const unsigned char *s = p;
    if (s < end && *s == '[') {
        s++;
        const unsigned char *in = s;
        while (s < end && *s != ']') {
            /* dcontent: %d33-90 / %d94-126 */
            if (*s < 33 || *s > 126 || *s == '[' || *s == '\\')
                return 0;
            s++;
        }
        if (s == end || s == in)
            return 0;
        return (size_t)(s + 1 - p);
    }
    for (;;) {
        const unsigned char *label = s;
        while (s < end) {
            if (*s >= 0x80) {
                size_t k = utf8_seq(s, end);
                if (!k)
                    return 0;
                *utf8 = 1;
                s += k;
            } else if (isalnum(*s) || *s == '-') {
                s++;
            } else
                break;
        }
        if (s == label || s - label > 63 || *label == '-' || s[-1] == '-')
            return 0;
        if (s < end && *s == '.' && s + 1 < end &&
            (isalnum(s[1]) || s[1] >= 0x80)) {
            s++;
            continue;
        }
        break;
    }
    if ((size_t)(s - p) > SMTP_DOMAIN_MAX)
        return 0;
    return (size_t)(s - p);
}

int smtp_parse_path(const char *str, int allow_null, int allow_postmaster, smtp_path *out,
                    const char **endp, char *reply, size_t replylen)
{
    const unsigned char *s = (const unsigned char *)str;
    const unsigned char *end = s + strlen(str);
    const char *enh = allow_null ? "5.1.7" : "5.1.3";
    const char *what = allow_null ? "sender" : "recipient";
    memset(out, 0, sizeof(*out));
    if (*s != '<')
        return set_reply(reply, replylen, "501 %s Syntax: %s address must be in <>", enh,
                         what);
    s++;
    if (*s == '>') {
        if (!allow_null)
            return set_reply(reply, replylen, "501 5.1.3 The null address <> is no recipient");
        *endp = (const char *)s + 1;
        return 0;
    }
    if (*s == '@') {
        /* A source route: @a,@b:local@domain. Checked, then ignored. */
        for (;;) {
            s++;
            int u = 0;
            size_t k = scan_domain(s, end, &u);
            if (!k)
                return set_reply(reply, replylen, "501 %s Bad source route in %s address", enh,
                                 what);
            s += k;
            if (*s == ',' && s[1] == '@') {
                s++;
                continue;
            }
            if (*s != ':')
                return set_reply(reply, replylen, "501 %s Bad source route in %s address", enh,
                                 what);
            s++;
            break;
        }
    }
    /* local part */
    char local[SMTP_LOCAL_MAX * 2 + 3];
    size_t ll = 0;
    int quoted = 0;
    if (*s == '"') {
        quoted = 1;
        char raw[SMTP_LOCAL_MAX + 1];
        size_t rl = 0;
        s++;
        for (;;) {
            if (s >= end)
                return set_reply(reply, replylen, "501 %s Unterminated quoted local part", enh);
            unsigned char c = *s;
            if (c == '"')
                break;
            size_t k = 1;
            if (c == '\\') {
                if (s + 1 >= end || s[1] < 32 || s[1] > 126)
                    return set_reply(reply, replylen, "501 %s Bad quoted pair in %s address",
                                     enh, what);
                s++;
                c = *s;
            } else if (c >= 0x80) {
                k = utf8_seq(s, end);
                if (!k)
                    return set_reply(reply, replylen, "501 %s Malformed UTF-8 in %s address",
                                     enh, what);
                out->utf8 = 1;
            } else if (c < 32 || c > 126) {
                return set_reply(reply, replylen, "501 %s Bad character in %s address", enh,
                                 what);
            }
            if (rl + k > SMTP_LOCAL_MAX)
                return set_reply(reply, replylen, "501 %s Local part too long", enh);
            memcpy(raw + rl, s, k);
            rl += k;
            s += k;
        }
        s++; /* closing quote */
        raw[rl] = 0;
        int u = 0;
        if (is_dot_string((const unsigned char *)raw, rl, &u)) {
            memcpy(local, raw, rl);
            ll = rl;
        } else {
            local[ll++] = '"';
            for (size_t i = 0; i < rl; i++) {
                if (raw[i] == '"' || raw[i] == '\\')
                    local[ll++] = '\\';
                local[ll++] = raw[i];
            }
            local[ll++] = '"';
        }
    } else {
        const unsigned char *st = s;
        while (s < end && (is_atext(*s) || *s == '.' || *s >= 0x80))
            s++;
        ll = (size_t)(s - st);
        if (ll > SMTP_LOCAL_MAX)
            return set_reply(reply, replylen, "501 %s Local part too long", enh);
        if (!is_dot_string(st, ll, &out->utf8))
            return set_reply(reply, replylen, "501 %s Syntax error in %s address", enh, what);
        memcpy(local, st, ll);
    }
    local[ll] = 0;
    if (*s == '>' && allow_postmaster && !quoted && strcasecmp(local, "postmaster") == 0) {
        snprintf(out->addr, sizeof(out->addr), "%s", local);
        out->postmaster = 1;
        *endp = (const char *)s + 1;
        return 0;
    }
    if (*s != '@')
        return set_reply(reply, replylen, "501 %s %s address needs a domain", enh,
                         allow_null ? "Sender" : "Recipient");
    s++;
    size_t dl = scan_domain(s, end, &out->utf8);
    if (!dl)
        return set_reply(reply, replylen, "501 %s Bad domain in %s address", enh, what);
    if (s[dl] != '>')
        return set_reply(reply, replylen, "501 %s Syntax error in %s address", enh, what);
    if (ll + 1 + dl > SMTP_ADDRESS_MAX)
        return set_reply(reply, replylen, "501 %s Address too long", enh);
    memcpy(out->addr, local, ll);
    out->addr[ll] = '@';
    memcpy(out->addr + ll + 1, s, dl);
    out->addr[ll + 1 + dl] = 0;
    out->at = ll;
    *endp = (const char *)s + dl + 1;
    return 0;
}

static const struct {
    const char *name;
    enum smtp_verb verb;
} verbs[] = {
    {"HELO", SMTP_V_HELO}, {"EHLO", SMTP_V_EHLO}, {"LHLO", SMTP_V_LHLO},
    {"MAIL", SMTP_V_MAIL}, {"RCPT", SMTP_V_RCPT}, {"DATA", SMTP_V_DATA},
    {"BDAT", SMTP_V_BDAT}, {"RSET", SMTP_V_RSET}, {"NOOP", SMTP_V_NOOP},
    {"QUIT", SMTP_V_QUIT}, {"VRFY", SMTP_V_VRFY}, {"EXPN", SMTP_V_EXPN},
    {"HELP", SMTP_V_HELP}, {"STARTTLS", SMTP_V_STARTTLS}, {"AUTH", SMTP_V_AUTH},
};

/* xtext (RFC 3461 4): "+" HEX HEX for anything outside %d33-42 / %d44-60 /
 * %d62-126. Decodes into out (cap bytes with the NUL); -1 when malformed
 * or too long; a decoded NUL or control byte is refused too. */
static int xtext_decode(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '+') {
            if (i + 2 >= n)
                return -1;
            char hx[3] = {s[i + 1], s[i + 2], 0};
            if (!isxdigit((unsigned char)hx[0]) || !isxdigit((unsigned char)hx[1]))
                return -1;
            c = (unsigned char)strtoul(hx, NULL, 16);
            if (c < 32 || c == 127)
                return -1;
            i += 2;
        } else if (c < 33 || c > 126 || c == '=') {
            return -1;
        }
        if (o + 1 >= cap)
            return -1;
        out[o++] = (char)c;
    }
    out[o] = 0;
    return 0;
}

static int ieq(const char *a, size_t n, const char *b)
{
    return strlen(b) == n && strncasecmp(a, b, n) == 0;
}

/* One "KEYWORD[=value]" of MAIL or RCPT. */
static int parse_param(smtp_cmd *c, unsigned flags, const char *kw, size_t kl, const char *val,
                       size_t vl, int has_val, unsigned *seen, char *reply, size_t rl)
{
    int mail = c->verb == SMTP_V_MAIL;
#define ONCE(bit)                                                                          \
    do {                                                                                   \
        if (*seen & (bit))                                                                 \
            return set_reply(reply, rl, "501 5.5.4 Duplicate parameter %.*s", (int)kl, kw); \
        *seen |= (bit);                                                                    \
    } while (0)
#define NEED_VAL()                                                                          \
    do {                                                                                    \
        if (!has_val || vl == 0)                                                            \
            return set_reply(reply, rl, "501 5.5.4 Parameter %.*s needs a value", (int)kl, kw); \
    } while (0)
    if (mail && ieq(kw, kl, "SIZE")) {
        ONCE(1u << 0);
        NEED_VAL();
        uint64_t v = 0;
        for (size_t i = 0; i < vl; i++) {
            if (!isdigit((unsigned char)val[i]))
                return set_reply(reply, rl, "501 5.5.4 SIZE must be a number");
            unsigned d = (unsigned)(val[i] - '0');
            v = v > (UINT64_MAX - d) / 10 ? UINT64_MAX : v * 10 + d;
        }
        c->has_size = 1;
        c->size = v;
        return 0;
    }
    if (mail && ieq(kw, kl, "BODY")) {
        ONCE(1u << 1);
        NEED_VAL();
        if (ieq(val, vl, "7BIT"))
            c->body = SMTP_BODY_7BIT;
        else if (ieq(val, vl, "8BITMIME"))
            c->body = SMTP_BODY_8BITMIME;
        else if (ieq(val, vl, "BINARYMIME"))
            return set_reply(reply, rl, "555 5.5.4 BODY=BINARYMIME is not supported");
        else
            return set_reply(reply, rl, "501 5.5.4 BODY must be 7BIT or 8BITMIME");
        return 0;
    }
    if (mail && ieq(kw, kl, "SMTPUTF8")) {
        ONCE(1u << 2);
        if (has_val)
            return set_reply(reply, rl, "501 5.5.4 SMTPUTF8 takes no value");
        c->smtputf8 = 1;
        return 0;
    }
    if (mail && ieq(kw, kl, "RET")) {
        ONCE(1u << 3);
        NEED_VAL();
        if (ieq(val, vl, "FULL"))
            c->ret = SMTP_RET_FULL;
        else if (ieq(val, vl, "HDRS"))
            c->ret = SMTP_RET_HDRS;
        else
            return set_reply(reply, rl, "501 5.5.4 RET must be FULL or HDRS");
        return 0;
    }
    if (mail && ieq(kw, kl, "ENVID")) {
        ONCE(1u << 4);
        NEED_VAL();
        if (xtext_decode(val, vl, c->envid, sizeof(c->envid)) < 0 || !c->envid[0])
            return set_reply(reply, rl, "501 5.5.4 Bad ENVID (xtext of at most %d bytes)",
                             SMTP_ENVID_MAX);
        return 0;
    }
    if (mail && ieq(kw, kl, "AUTH")) {
        ONCE(1u << 5);
        NEED_VAL();
        c->has_auth = 1;
        if (ieq(val, vl, "<>")) {
            c->auth[0] = 0;
            return 0;
        }
        if (xtext_decode(val, vl, c->auth, sizeof(c->auth)) < 0)
            return set_reply(reply, rl, "501 5.5.4 Bad AUTH parameter");
        return 0;
    }
    if (!mail && ieq(kw, kl, "NOTIFY")) {
        ONCE(1u << 8);
        NEED_VAL();
        unsigned bits = 0;
        for (size_t i = 0; i < vl;) {
            size_t j = i;
            while (j < vl && val[j] != ',')
                j++;
            unsigned b = ieq(val + i, j - i, "NEVER")     ? SMTP_NOTIFY_NEVER
                         : ieq(val + i, j - i, "SUCCESS") ? SMTP_NOTIFY_SUCCESS
                         : ieq(val + i, j - i, "FAILURE") ? SMTP_NOTIFY_FAILURE
                         : ieq(val + i, j - i, "DELAY")   ? SMTP_NOTIFY_DELAY
                                                          : 0;
            if (!b || (bits & b))
                return set_reply(reply, rl,
                                 "501 5.5.4 NOTIFY must be NEVER or a list of SUCCESS, FAILURE, "
                                 "DELAY");
            bits |= b;
            i = j + 1;
            if (j < vl && i == vl)
                return set_reply(reply, rl, "501 5.5.4 Bad NOTIFY list");
        }
        if ((bits & SMTP_NOTIFY_NEVER) && bits != SMTP_NOTIFY_NEVER)
            return set_reply(reply, rl, "501 5.5.4 NOTIFY=NEVER cannot be combined");
        c->notify = bits;
        return 0;
    }
    if (!mail && ieq(kw, kl, "ORCPT")) {
        ONCE(1u << 9);
        NEED_VAL();
        if (vl > SMTP_ORCPT_MAX)
            return set_reply(reply, rl, "501 5.5.4 ORCPT too long");
        const char *semi = memchr(val, ';', vl);
        if (!semi || semi == val)
            return set_reply(reply, rl, "501 5.5.4 ORCPT must be addr-type;address");
        for (const char *p = val; p < semi; p++)
            if (!isalnum((unsigned char)*p) && *p != '-')
                return set_reply(reply, rl, "501 5.5.4 Bad ORCPT address type");
        char tmp[SMTP_ORCPT_MAX + 1];
        size_t rest = vl - (size_t)(semi + 1 - val);
        if (rest == 0 || xtext_decode(semi + 1, rest, tmp, sizeof(tmp)) < 0)
            return set_reply(reply, rl, "501 5.5.4 Bad ORCPT address (xtext)");
        memcpy(c->orcpt, val, vl);
        c->orcpt[vl] = 0;
        return 0;
    }
    if (!mail && (flags & SMTP_PARSE_LMTP) && ieq(kw, kl, "XHAVEN-DID")) {
        ONCE(1u << 10);
        NEED_VAL();
        if (vl > SMTP_DID_MAX)
            return set_reply(reply, rl, "501 5.5.4 XHAVEN-DID longer than %d bytes",
                             SMTP_DID_MAX);
        memcpy(c->did, val, vl);
        c->did[vl] = 0;
        return 0;
    }
#undef ONCE
#undef NEED_VAL
    return set_reply(reply, rl, "555 5.5.4 Unsupported parameter %.*s", (int)(kl > 40 ? 40 : kl),
                     kw);
}

/* The parameters after a path: SP-separated KEYWORD[=VALUE]. */
static int parse_params(smtp_cmd *c, unsigned flags, const char *p, char *reply, size_t rl)
{
    unsigned seen = 0;
    while (*p) {
        if (*p != ' ')
            return set_reply(reply, rl, "501 5.5.4 Syntax error after the address");
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        const char *kw = p;
        if (!isalnum((unsigned char)*p))
            return set_reply(reply, rl, "501 5.5.4 Bad parameter name");
        while (isalnum((unsigned char)*p) || *p == '-')
            p++;
        size_t kl = (size_t)(p - kw);
        const char *val = NULL;
        size_t vl = 0;
        int has_val = 0;
        if (*p == '=') {
            has_val = 1;
            val = ++p;
            /* esmtp-value: %d33-60 / %d62-126 */
            while ((unsigned char)*p >= 33 && (unsigned char)*p <= 126 && *p != '=')
                p++;
            vl = (size_t)(p - val);
        }
        if (*p && *p != ' ')
            return set_reply(reply, rl, "501 5.5.4 Bad character in parameter %.*s",
                             (int)(kl > 40 ? 40 : kl), kw);
        if (parse_param(c, flags, kw, kl, val, vl, has_val, &seen, reply, rl) < 0)
            return -1;
    }
    return 0;
}

static size_t line_limit(enum smtp_verb v)
{
    switch (v) {
    case SMTP_V_MAIL:
    case SMTP_V_RCPT:
        return SMTP_LINE_MAX_PARAMS;
    case SMTP_V_AUTH:
        return SMTP_LINE_MAX_ANY;
    default:
        return SMTP_LINE_MAX;
    }
}

int smtp_parse_command(const char *line, size_t len, unsigned flags, smtp_cmd *c, char *reply,
                       size_t rl)
{
    memset(c, 0, sizeof(*c));
    c->arg = "";
    size_t vl = 0;
    while (vl < len && line[vl] != ' ')
        vl++;
    for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
        if (ieq(line, vl, verbs[i].name))
            c->verb = verbs[i].verb;
    int lmtp = (flags & SMTP_PARSE_LMTP) != 0;
    if (c->verb == SMTP_V_UNKNOWN)
        return set_reply(reply, rl, "500 5.5.1 Unknown command");
    if (lmtp && (c->verb == SMTP_V_HELO || c->verb == SMTP_V_EHLO)) {
        c->verb = SMTP_V_UNKNOWN;
        return set_reply(reply, rl, "500 5.5.1 This is LMTP: say LHLO");
    }
    if (!lmtp && c->verb == SMTP_V_LHLO) {
        c->verb = SMTP_V_UNKNOWN;
        return set_reply(reply, rl, "500 5.5.1 Unknown command (LHLO is LMTP)");
    }
    if (len + 2 > line_limit(c->verb))
        return set_reply(reply, rl, "500 5.5.2 Line too long");
    const char *p = line + vl;
    /* One space separates the verb from its argument; tolerate more, and
     * trailing spaces, which some clients send. */
    while (*p == ' ')
        p++;
    size_t alen = strlen(p);
    while (alen && p[alen - 1] == ' ')
        alen--;
    int has_arg = alen > 0;
    c->arg = p;

    switch (c->verb) {
    case SMTP_V_HELO:
    case SMTP_V_EHLO:
    case SMTP_V_LHLO: {
        size_t n = 0;
        while (n < alen && p[n] != ' ')
            n++;
        if (n == 0)
            return set_reply(reply, rl, "501 5.5.4 Syntax: %s hostname",
                             c->verb == SMTP_V_HELO ? "HELO"
                             : c->verb == SMTP_V_EHLO ? "EHLO"
                                                      : "LHLO");
        if (n > SMTP_HELO_MAX)
            return set_reply(reply, rl, "501 5.5.4 Host name too long");
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)p[i] < 33 || p[i] == 127)
                return set_reply(reply, rl, "501 5.5.4 Bad character in host name");
        memcpy(c->helo, p, n);
        c->helo[n] = 0;
        return 0;
    }
    case SMTP_V_DATA:
    case SMTP_V_RSET:
    case SMTP_V_QUIT:
    case SMTP_V_STARTTLS:
        if (has_arg)
            return set_reply(reply, rl, "501 5.5.4 Syntax: %.*s takes no arguments", (int)vl,
                             line);
        return 0;
    case SMTP_V_NOOP:
    case SMTP_V_HELP:
        return 0;
    case SMTP_V_VRFY:
    case SMTP_V_EXPN:
        if (!has_arg)
            return set_reply(reply, rl, "501 5.5.4 Syntax: %.*s address", (int)vl, line);
        return 0;
    case SMTP_V_MAIL:
    case SMTP_V_RCPT: {
        int mail = c->verb == SMTP_V_MAIL;
        const char *kw = mail ? "FROM:" : "TO:";
        size_t kl = strlen(kw);
        if (strncasecmp(p, kw, kl) != 0)
            return set_reply(reply, rl, "501 5.5.4 Syntax: %s", mail ? "MAIL FROM:<address>"
                                                                    : "RCPT TO:<address>");
        p += kl;
        while (*p == ' ')
            p++;
        const char *end;
        if (smtp_parse_path(p, mail, !mail, &c->path, &end, reply, rl) < 0)
            return -1;
        /* parse_params wants the params without trailing spaces */
        char tail[SMTP_LINE_MAX_PARAMS];
        size_t tl = strlen(end);
        while (tl && end[tl - 1] == ' ')
            tl--;
        if (tl >= sizeof(tail))
            return set_reply(reply, rl, "500 5.5.2 Line too long");
        memcpy(tail, end, tl);
        tail[tl] = 0;
        if (parse_params(c, flags, tail, reply, rl) < 0)
            return -1;
        if (mail && c->path.utf8 && !c->smtputf8)
            return set_reply(reply, rl,
                             "553 5.6.7 Non-ASCII sender address needs the SMTPUTF8 parameter");
        return 0;
    }
    case SMTP_V_BDAT: {
        c->bdat_size = UINT64_MAX;
        size_t i = 0;
        uint64_t v = 0;
        while (i < alen && isdigit((unsigned char)p[i])) {
            unsigned d = (unsigned)(p[i] - '0');
            if (v > (UINT64_MAX - 1 - d) / 10)
                return set_reply(reply, rl, "501 5.5.4 BDAT chunk size too large");
            v = v * 10 + d;
            i++;
        }
        if (i == 0)
            return set_reply(reply, rl, "501 5.5.4 Syntax: BDAT size [LAST]");
        c->bdat_size = v;
        const char *q = p + i;
        size_t ql = alen - i;
        while (ql && *q == ' ') {
            q++;
            ql--;
        }
        if (ql == 0)
            return 0;
        if (q == p + i)
            return set_reply(reply, rl, "501 5.5.4 Syntax: BDAT size [LAST]");
        if (!ieq(q, ql, "LAST"))
            return set_reply(reply, rl, "501 5.5.4 Syntax: BDAT size [LAST]");
        c->bdat_last = 1;
        return 0;
    }
    case SMTP_V_AUTH: {
        size_t n = 0;
        while (n < alen && p[n] != ' ')
            n++;
        if (n == 0)
            return set_reply(reply, rl, "501 5.5.4 Syntax: AUTH mechanism [initial-response]");
        if (n >= sizeof(c->mech))
            return set_reply(reply, rl, "504 5.5.4 Unknown authentication mechanism");
        for (size_t i = 0; i < n; i++) {
            unsigned char ch = (unsigned char)p[i];
            if (!isalnum(ch) && ch != '-' && ch != '_')
                return set_reply(reply, rl, "501 5.5.4 Bad mechanism name");
            c->mech[i] = (char)toupper(ch);
        }
        c->mech[n] = 0;
        const char *q = p + n;
        while (*q == ' ')
            q++;
        if (q < p + alen) {
            size_t il = (size_t)(p + alen - q);
            for (size_t i = 0; i < il; i++) {
                unsigned char ch = (unsigned char)q[i];
                if (!isalnum(ch) && ch != '+' && ch != '/' && ch != '=')
                    return set_reply(reply, rl, "501 5.5.2 Initial response is not base64");
            }
            c->initial = q;
        }
        return 0;
    }
    case SMTP_V_UNKNOWN:
        break;
    }
    return set_reply(reply, rl, "500 5.5.1 Unknown command");
}

/* ---- message data ---- */

enum ds {
    DS_LS,     /* at the start of a line */
    DS_TEXT,   /* inside a line */
    DS_CR,     /* after a CR */
    DS_DOT,    /* after a "." that starts a line (DATA) */
    DS_DOT_CR, /* after "." CR at the start of a line */
    DS_END,    /* DATA: the final line was read */
};

void smtp_data_init(smtp_data_reader *r, int dot_mode, uint64_t max_size, buf *out)
{
    memset(r, 0, sizeof(*r));
    r->dot_mode = dot_mode;
    r->max_size = max_size;
    r->out = out;
    r->state = DS_LS;
}

static void data_error(smtp_data_reader *r, unsigned e)
{
    if (!r->errors && r->out)
        buf_free(r->out); /* the message is refused: keep none of it */
    r->errors |= e;
}

static void emit(smtp_data_reader *r, const char *p, size_t n)
{
    r->size += n;
    if (r->max_size && r->size > r->max_size && !(r->errors & SMTP_DATA_TOO_BIG))
        data_error(r, SMTP_DATA_TOO_BIG);
    if (!r->errors && r->out)
        buf_append(r->out, p, n);
}

static void line_bytes(smtp_data_reader *r, size_t n)
{
    r->line_len += n;
    if (r->line_len > SMTP_DATA_LINE_MAX && !(r->errors & SMTP_DATA_LONG_LINE))
        data_error(r, SMTP_DATA_LONG_LINE);
}

enum smtp_data_result smtp_data_feed(smtp_data_reader *r, const char *data, size_t len,
                                     size_t *used)
{
    size_t i = 0;
    while (i < len) {
        unsigned char c = (unsigned char)data[i];
        switch (r->state) {
        case DS_END:
            *used = i;
            return SMTP_DATA_END;
        case DS_LS:
            if (r->dot_mode && c == '.') {
                r->state = DS_DOT;
                line_bytes(r, 1);
                i++;
                break;
            }
            r->state = DS_TEXT;
            break;
        case DS_TEXT: {
            size_t j = i;
            while (j < len && data[j] != '\r' && data[j] != '\n' && data[j] != 0)
                j++;
            if (j > i) {
                emit(r, data + i, j - i);
                line_bytes(r, j - i);
                i = j;
                break;
            }
            if (c == '\r') {
                r->state = DS_CR;
                line_bytes(r, 1);
            } else if (c == '\n') {
                /* A bare LF ends no line: a "." after it is text, and
                 * only CRLF "." CRLF ends the message (no smuggling). */
                data_error(r, SMTP_DATA_BARE_LF);
                emit(r, "\n", 1);
                r->line_len = 0;
            } else {
                data_error(r, SMTP_DATA_NUL);
                emit(r, data + i, 1);
                line_bytes(r, 1);
            }
            i++;
            break;
        }
        case DS_CR:
            if (c == '\n') {
                emit(r, "\r\n", 2);
                line_bytes(r, 1);
                r->line_len = 0;
                r->state = DS_LS;
                i++;
            } else {
                data_error(r, SMTP_DATA_BARE_CR);
                emit(r, "\r", 1);
                r->state = DS_TEXT; /* this byte is looked at again */
            }
            break;
        case DS_DOT:
            if (c == '\r') {
                r->state = DS_DOT_CR;
                line_bytes(r, 1);
                i++;
            } else {
                /* The leading dot is dropped (RFC 5321 4.5.2); what
                 * follows, a second dot included, is text. */
                r->state = DS_TEXT;
            }
            break;
        case DS_DOT_CR:
            if (c == '\n') {
                r->state = DS_END;
                *used = i + 1;
                return SMTP_DATA_END;
            }
            data_error(r, SMTP_DATA_BARE_CR);
            emit(r, "\r", 1);
            r->state = DS_TEXT;
            break;
        }
    }
    *used = len;
    return r->state == DS_END ? SMTP_DATA_END : SMTP_DATA_MORE;
}

void smtp_data_finish(smtp_data_reader *r)
{
    if (r->state == DS_CR) {
        data_error(r, SMTP_DATA_BARE_CR);
        emit(r, "\r", 1);
        r->state = DS_TEXT;
    }
}

const char *smtp_data_error_reply(unsigned errors)
{
    if (errors & (SMTP_DATA_BARE_LF | SMTP_DATA_BARE_CR))
        return "550 5.6.11 Bare LF or bare CR in the message: lines must end with CRLF "
               "(message refused)";
    if (errors & SMTP_DATA_NUL)
        return "550 5.6.0 NUL byte in the message (message refused)";
    if (errors & SMTP_DATA_TOO_BIG)
        return "552 5.3.4 Message too big (message refused)";
    if (errors & SMTP_DATA_LONG_LINE)
        return "550 5.6.0 Line longer than 1000 bytes in the message (message refused)";
    return "451 4.3.0 Message refused";
}

/* ---- AUTH ---- */

static int b64val(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '+')
        return 62;
    if (ch == '/')
        return 63;
    return -1;
}

long smtp_b64_decode(const char *in, size_t len, char *out)
{
    if (len == 1 && in[0] == '=')
        return 0;
    long o = 0;
    unsigned acc = 0;
    int bits = 0;
    size_t i, data = 0;
    for (i = 0; i < len && in[i] != '='; i++) {
        int v = b64val((unsigned char)in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        data++;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    size_t pad = len - i;
    for (; i < len; i++)
        if (in[i] != '=')
            return -1;
    if (data % 4 == 1 || pad > 2 || (pad && (data + pad) % 4 != 0))
        return -1;
    return o;
}

int smtp_sasl_plain(char *raw, size_t n, const char **authz, const char **authc,
                    const char **pass)
{
    raw[n] = 0;
    char *a = memchr(raw, 0, n);
    if (!a)
        return -1;
    char *b = memchr(a + 1, 0, (size_t)(raw + n - (a + 1)));
    if (!b || memchr(b + 1, 0, (size_t)(raw + n - (b + 1))))
        return -1;
    *authz = raw;
    *authc = a + 1;
    *pass = b + 1;
    if (!**authc || !**pass)
        return -1;
    return 0;
}
