/*
 * smtp_reply.c - the bounded SMTP reply reader; see smtp_reply.h.
 *
 * It is a line-level state machine: bytes are gathered into one line
 * buffer (never more than SMTP_REPLY_MAX_LINE bytes are kept, longer lines
 * fail the moment they pass the limit, not when their LF arrives), each
 * complete line is checked and either continues the reply ('-') or ends
 * it (' ' or nothing after the code).
 */
#include "smtp/smtp_reply.h"

#include <stdio.h>
#include <string.h>

void smtp_reply_parser_init(smtp_reply_parser *p, smtp_reply_line_fn on_line, void *arg)
{
    p->code = 0;
    p->nlines = 0;
    p->len = 0;
    p->on_line = on_line;
    p->arg = arg;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* The first bytes of a bad line, printable, for the one-line reason. */
static const char *shown(const char *s, size_t n, char *tmp, size_t tmplen)
{
    size_t k = n < tmplen - 1 ? n : tmplen - 1;
    for (size_t i = 0; i < k; i++) {
        unsigned char c = (unsigned char)s[i];
        tmp[i] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
    }
    tmp[k] = 0;
    return tmp;
}

/* Length of an RFC 3463 code "c.sss.ddd" at the start of s (followed by
 * the end or a space), 0 when there is none. */
static size_t enhanced_len(const char *s, size_t n, char cls)
{
    if (n < 5 || s[0] != cls || s[1] != '.')
        return 0;
    size_t i = 2, k = 0;
    while (i < n && is_digit(s[i]) && k < 3)
        i++, k++;
    if (k == 0 || i >= n || s[i] != '.')
        return 0;
    i++;
    k = 0;
    while (i < n && is_digit(s[i]) && k < 3)
        i++, k++;
    if (k == 0 || (i < n && s[i] != ' '))
        return 0;
    return i;
}

static void fill_reply(smtp_reply *out, int code, const char *text, size_t len)
{
    memset(out, 0, sizeof(*out));
    out->code = code;
    size_t el = enhanced_len(text, len, (char)('0' + code / 100));
    if (el > 0 && el < sizeof(out->enhanced)) {
        memcpy(out->enhanced, text, el);
        out->enhanced[el] = 0;
        text += el;
        len -= el;
        while (len > 0 && *text == ' ')
            text++, len--;
    }
    if (len > sizeof(out->text) - 1)
        len = sizeof(out->text) - 1;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        out->text[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    out->text[len] = 0;
}

/* Checks one complete line (without its line end). Returns 1 when it
 * ended the reply, 0 when more lines follow, < 0 on a malformed line. */
static int take_line(smtp_reply_parser *p, smtp_reply *out, hv_err *err)
{
    const char *s = p->line;
    size_t n = p->len;
    char tmp[41];
    if (n < 3 || !is_digit(s[0]) || !is_digit(s[1]) || !is_digit(s[2]) || s[0] < '2' ||
        s[0] > '5' || s[1] > '5')
        return hv_err_set(err, -EPROTO, "malformed reply line \"%s\"", shown(s, n, tmp, sizeof(tmp)));
    if (n > 3 && s[3] != ' ' && s[3] != '-')
        return hv_err_set(err, -EPROTO, "malformed reply line \"%s\"", shown(s, n, tmp, sizeof(tmp)));
    if (memchr(s, 0, n))
        return hv_err_set(err, -EPROTO, "NUL byte in reply");
    int code = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
    if (p->nlines > 0 && code != p->code)
        return hv_err_set(err, -EPROTO, "reply continuation with code %d after %d", code, p->code);
    if (p->nlines >= SMTP_REPLY_MAX_LINES)
        return hv_err_set(err, -EPROTO, "reply of more than %d lines", SMTP_REPLY_MAX_LINES);
    p->code = code;
    const char *text = n > 4 ? s + 4 : s + n;
    size_t tlen = n > 4 ? n - 4 : 0;
    if (p->on_line)
        p->on_line(p->arg, p->nlines, text, tlen);
    p->nlines++;
    if (n > 3 && s[3] == '-')
        return 0;
    fill_reply(out, code, text, tlen);
    p->code = 0;
    p->nlines = 0;
    return 1;
}

int smtp_reply_feed(smtp_reply_parser *p, const char *data, size_t n, size_t *used,
                    smtp_reply *out, hv_err *err)
{
    size_t i = 0;
    while (i < n) {
        const char *lf = memchr(data + i, '\n', n - i);
        size_t take = lf ? (size_t)(lf - (data + i)) : n - i;
        /* The line may end in CR; keep one byte more than the limit so
         * that "2048 bytes + CR" still fits before the LF is seen. */
        if (p->len + take > SMTP_REPLY_MAX_LINE + 1) {
            *used = i;
            return hv_err_set(err, -EPROTO, "reply line longer than %d bytes",
                              SMTP_REPLY_MAX_LINE);
        }
        memcpy(p->line + p->len, data + i, take);
        p->len += take;
        i += take;
        if (!lf)
            break;
        i++; /* the LF */
        if (p->len > 0 && p->line[p->len - 1] == '\r')
            p->len--;
        if (p->len > SMTP_REPLY_MAX_LINE) {
            *used = i;
            return hv_err_set(err, -EPROTO, "reply line longer than %d bytes",
                              SMTP_REPLY_MAX_LINE);
        }
        p->line[p->len] = 0;
        int rc = take_line(p, out, err);
        p->len = 0;
        if (rc != 0) {
            *used = i;
            return rc;
        }
    }
    *used = i;
    return 0;
}

void smtp_reply_format(const smtp_reply *r, char *out, size_t outlen)
{
    if (r->code == 0)
        snprintf(out, outlen, "no reply (connection lost)");
    else if (r->enhanced[0])
        snprintf(out, outlen, "%d %s %s", r->code, r->enhanced, r->text);
    else
        snprintf(out, outlen, "%d %s", r->code, r->text);
}
