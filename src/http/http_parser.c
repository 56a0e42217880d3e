/*
 * http_parser.c - the bounded HTTP/1.x request-head reader; see
 * http_parser.h for what it accepts and refuses.
 *
 * One byte at a time through an explicit state; nothing is buffered but
 * the few bytes routing needs, so splitting the input anywhere gives the
 * same result (tests/unit/test_http_parser.c feeds it byte by byte,
 * tests/fuzz/fuzz_http_parser.c compares whole and split feeding).
 */
#include "http/http_parser.h"

#include <string.h>
#include <strings.h>

enum state {
    S_START,       /* before the request line: empty lines are skipped */
    S_METHOD,
    S_TARGET,
    S_VERSION,
    S_LINE_LF,     /* a CR ended a line: only LF may follow */
    S_FIELD_START, /* at the start of a field line, or of the final empty line */
    S_NAME,
    S_VALUE_OWS,   /* whitespace before a field's value */
    S_VALUE,
    S_END_LF,      /* the CR of the final empty line came */
    S_DONE,
    S_ERROR,
};

/* The fields the parser looks at; all others are checked and dropped. */
enum field { F_OTHER, F_HOST, F_CONNECTION, F_CONTENT_LENGTH, F_TRANSFER_ENCODING };

static int is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return 1;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* What may stand in a field value (RFC 9110 5.5): visible ASCII, SP, HTAB
 * and obs-text. */
static int is_value_char(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

static void fail(http_parser *p, int status, const char *reason)
{
    p->state = S_ERROR;
    p->status = status;
    p->reason = reason;
}

void http_parser_init(http_parser *p)
{
    memset(p, 0, sizeof(*p));
    p->state = S_START;
}

/* The request target is complete: find the path routing uses. */
static void end_target(http_parser *p)
{
    http_request *r = &p->req;
    const char *t = r->target;
    size_t start;
    if (t[0] == '/') {
        start = 0;
    } else if (strncasecmp(t, "http://", 7) == 0 || strncasecmp(t, "https://", 8) == 0) {
        /* absolute-form (RFC 9112 3.2.2): the authority is not ours to judge */
        start = (size_t)(strchr(t, ':') - t) + 3;
        start += strcspn(t + start, "/?");
        if (t[start] != '/') {
            r->path_off = start; /* no path: the root */
            r->path_len = 0;
            return;
        }
    } else {
        fail(p, 400, "the request target is neither a path nor an absolute URI");
        return;
    }
    r->path_off = start;
    r->path_len = strcspn(t + start, "?");
}

static void end_request_line(http_parser *p)
{
    const char *v = p->tok;
    if (p->len != 8 || memcmp(v, "HTTP/", 5) != 0 || v[5] < '0' || v[5] > '9' || v[6] != '.' ||
        v[7] < '0' || v[7] > '9') {
        fail(p, 400, "malformed request line");
        return;
    }
    if (v[5] != '1' || (v[7] != '0' && v[7] != '1')) {
        fail(p, 505, "only HTTP/1.0 and HTTP/1.1 are served");
        return;
    }
    p->req.minor = v[7] - '0';
}

static int token_is(const char *s, size_t n, const char *want)
{
    return strlen(want) == n && strncasecmp(s, want, n) == 0;
}

static void end_field(http_parser *p)
{
    if (++p->req.fields > HTTP_FIELDS_MAX) {
        fail(p, 431, "more than 64 header fields");
        return;
    }
    /* What was kept of the value, without trailing whitespace. Only a
     * value that fit whole is judged where its whole matters. */
    size_t n = p->value_len;
    while (n && (p->value[n - 1] == ' ' || p->value[n - 1] == '\t'))
        n--;
    int whole = p->len <= sizeof(p->value);
    switch (p->field) {
    case F_HOST:
        if (++p->hosts > 1)
            fail(p, 400, "more than one Host field");
        break;
    case F_CONNECTION:
        for (size_t i = 0; i < n;) {
            size_t e = i;
            while (e < n && p->value[e] != ',')
                e++;
            size_t a = i, b = e;
            while (a < b && (p->value[a] == ' ' || p->value[a] == '\t'))
                a++;
            while (b > a && (p->value[b - 1] == ' ' || p->value[b - 1] == '\t'))
                b--;
            if (token_is(p->value + a, b - a, "close"))
                p->conn_close = 1;
            else if (token_is(p->value + a, b - a, "keep-alive"))
                p->conn_keep = 1;
            i = e + 1;
        }
        break;
    case F_CONTENT_LENGTH: {
        int digits = whole && n > 0, nonzero = 0;
        for (size_t i = 0; i < n && digits; i++) {
            digits = p->value[i] >= '0' && p->value[i] <= '9';
            nonzero |= p->value[i] != '0';
        }
        if (!digits)
            fail(p, 400, "malformed Content-Length");
        else if (nonzero)
            fail(p, 400, "request bodies are not accepted");
        break;
    }
    case F_TRANSFER_ENCODING:
        fail(p, 400, "request bodies are not accepted");
        break;
    }
}

static void end_head(http_parser *p)
{
    if (p->req.minor == 1 && p->hosts != 1) {
        fail(p, 400, "an HTTP/1.1 request needs a Host field");
        return;
    }
    p->req.keep_alive = p->req.minor == 1 ? !p->conn_close : p->conn_keep && !p->conn_close;
    p->state = S_DONE;
}

static void start_field(http_parser *p, unsigned char c)
{
    p->state = S_NAME;
    p->len = 0;
    p->value_len = 0;
    p->field = F_OTHER;
    p->tok[p->len++] = (char)c;
}

static void classify_field(http_parser *p)
{
    size_t n = p->len;
    const char *s = p->tok;
    p->field = n >= sizeof(p->tok)                 ? F_OTHER
             : token_is(s, n, "host")              ? F_HOST
             : token_is(s, n, "connection")        ? F_CONNECTION
             : token_is(s, n, "content-length")    ? F_CONTENT_LENGTH
             : token_is(s, n, "transfer-encoding") ? F_TRANSFER_ENCODING
                                                   : F_OTHER;
    p->len = 0;
}

/* A line ended (CR or LF) in state st: finish what it held. */
static void end_line(http_parser *p, int st)
{
    if (st == S_VERSION)
        end_request_line(p);
    else
        end_field(p);
}

static void step(http_parser *p, unsigned char c)
{
    http_request *r = &p->req;
    switch (p->state) {
    case S_START:
        if (c == '\r' || c == '\n')
            break;
        p->state = S_METHOD;
        /* fall through */
    case S_METHOD:
        if (c == ' ' && p->len > 0) {
            p->state = S_TARGET;
            p->len = 0;
        } else if (!is_tchar(c)) {
            fail(p, 400, "malformed request line");
        } else if (p->len == HTTP_METHOD_MAX) {
            fail(p, 501, "method not implemented");
        } else {
            r->method[p->len++] = (char)c;
        }
        break;
    case S_TARGET:
        if (c == ' ' && p->len > 0) {
            end_target(p);
            if (p->state != S_ERROR)
                p->state = S_VERSION;
            p->len = 0;
        } else if (c < 0x21 || c > 0x7e) {
            fail(p, 400, "malformed request line");
        } else if (p->len == HTTP_TARGET_MAX) {
            fail(p, 414, "request target longer than 1024 bytes");
        } else {
            r->target[p->len++] = (char)c;
        }
        break;
    case S_VERSION:
        if (c == '\r' || c == '\n') {
            end_line(p, S_VERSION);
            if (p->state != S_ERROR)
                p->state = c == '\r' ? S_LINE_LF : S_FIELD_START;
        } else if (p->len == 8 || c < 0x21 || c > 0x7e) {
            fail(p, 400, "malformed request line");
        } else {
            p->tok[p->len++] = (char)c;
        }
        break;
    case S_LINE_LF:
        if (c == '\n')
            p->state = S_FIELD_START;
        else
            fail(p, 400, "bare CR in the request head");
        break;
    case S_FIELD_START:
        if (c == '\r')
            p->state = S_END_LF;
        else if (c == '\n')
            end_head(p);
        else if (c == ' ' || c == '\t')
            fail(p, 400, "folded or indented header line");
        else if (is_tchar(c))
            start_field(p, c);
        else
            fail(p, 400, "malformed header field");
        break;
    case S_NAME:
        if (c == ':') {
            classify_field(p);
            p->state = S_VALUE_OWS;
        } else if (!is_tchar(c)) {
            fail(p, 400, "malformed header field name");
        } else if (p->len < sizeof(p->tok)) {
            p->tok[p->len++] = (char)c;
        }
        /* else: too long for any field looked at; the length stays at the
         * cap, which classify_field takes for "other" */
        break;
    case S_VALUE_OWS:
        if (c == ' ' || c == '\t')
            break;
        p->state = S_VALUE;
        /* fall through */
    case S_VALUE:
        if (c == '\r' || c == '\n') {
            end_line(p, S_VALUE);
            if (p->state != S_ERROR)
                p->state = c == '\r' ? S_LINE_LF : S_FIELD_START;
        } else if (!is_value_char(c)) {
            fail(p, 400, "control character in a header field");
        } else {
            if (p->field != F_OTHER && p->value_len < sizeof(p->value))
                p->value[p->value_len++] = (char)c;
            if (p->len <= sizeof(p->value))
                p->len++; /* counts to one past the cap: "did not fit" */
        }
        break;
    case S_END_LF:
        if (c == '\n')
            end_head(p);
        else
            fail(p, 400, "bare CR in the request head");
        break;
    }
}

int http_parser_feed(http_parser *p, const char *data, size_t n, size_t *used)
{
    size_t i = 0;
    while (i < n && p->state != S_ERROR && p->state != S_DONE) {
        unsigned char c = (unsigned char)data[i++];
        if (++p->head_len > HTTP_HEAD_MAX) {
            fail(p, 431, "request head longer than 8192 bytes");
            break;
        }
        step(p, c);
    }
    *used = i;
    return p->state == S_ERROR ? HTTP_PARSE_ERROR : p->state == S_DONE ? HTTP_PARSE_DONE
                                                                         : HTTP_PARSE_MORE;
}
