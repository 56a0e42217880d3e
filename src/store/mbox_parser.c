/*
 * mbox_parser.c - the incremental mbox reader and the mboxrd writer; see
 * mbox_parser.h for what is accepted and produced.
 *
 * The reader never holds more than one message (bounded by
 * max_message_size) plus a capped copy of its From line: a line is never
 * buffered as a line. Instead each line's first bytes go through a small
 * prefix matcher (a count of '>' and how much of "From " matched) that
 * decides between separator, quoted line and ordinary body before any of
 * the line is emitted; the rest of the line is copied in spans found with
 * memchr. Feeding one byte at a time walks the same states as feeding the
 * whole file, which the unit tests and the fuzz target check.
 */
#include "store/mbox_parser.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

enum mbox_state {
    MBOX_ST_START,      /* matching "From " at the very start of the input */
    MBOX_ST_FROM_LINE,  /* inside a separator line */
    MBOX_ST_LINE_START, /* before the first byte of a message line */
    MBOX_ST_PREFIX,     /* matching ^>*From  at the start of a line */
    MBOX_ST_BODY,       /* copying the rest of a line */
    MBOX_ST_DONE,       /* finished, or stopped by an error */
};

static const char from_[] = "From ";
#define FROM_LEN 5

struct mbox_parser {
    mbox_parser_options opt;
    mbox_message_cb cb;
    void *ctx;
    enum mbox_state state;

    uint64_t offset;      /* input bytes consumed */
    uint64_t line_offset; /* input offset where the current line began */
    uint64_t number;      /* messages begun */

    /* The prefix matcher: '>' seen, then bytes of "From " matched. */
    uint64_t gt;
    unsigned match;

    /* What the end of the current line needs to know. */
    unsigned line_len; /* input bytes on the line, saturating at 2 */
    int last_cr;       /* the last byte emitted on this line was CR */
    int prev_blank;    /* the line before this one was blank */

    /* The message being read. */
    int in_msg;
    uint64_t msg_offset;
    uint64_t size; /* stored bytes so far, counted even when not kept */
    int too_big;
    buf msg;
    char from_line[MBOX_FROM_LINE_MAX + 1];
    size_t from_len;
    int stop_rc; /* the error that ended the parser, returned again */
};

mbox_parser *mbox_parser_new(const mbox_parser_options *opt, mbox_message_cb cb, void *ctx)
{
    mbox_parser *p = calloc(1, sizeof(*p));
    if (!p)
        abort();
    if (opt)
        p->opt = *opt;
    if (!p->opt.max_message_size)
        p->opt.max_message_size = MBOX_DEFAULT_MAX_MESSAGE;
    p->cb = cb;
    p->ctx = ctx;
    p->state = MBOX_ST_START;
    buf_init(&p->msg);
    return p;
}

void mbox_parser_free(mbox_parser *p)
{
    if (!p)
        return;
    buf_free(&p->msg);
    free(p);
}

uint64_t mbox_parser_offset(const mbox_parser *p) { return p->offset; }
uint64_t mbox_parser_messages(const mbox_parser *p) { return p->number; }

/* Adds stored bytes to the message. The two bytes of slack let a message
 * of exactly the limit arrive with its separator's blank line, which is
 * removed when the message ends. Past that, the message is only counted. */
static void mbox_emit(mbox_parser *p, const void *data, size_t n)
{
    p->size += n;
    if (p->too_big)
        return;
    if (p->size > p->opt.max_message_size + 2) {
        p->too_big = 1;
        buf_free(&p->msg);
        return;
    }
    buf_append(&p->msg, data, n);
}

/* Bytes of a line's content, as they are in the input. */
static void mbox_body_bytes(mbox_parser *p, const void *data, size_t n)
{
    if (!n)
        return;
    mbox_emit(p, data, n);
    p->line_len = p->line_len + n > 2 ? 2 : p->line_len + (unsigned)n;
    p->last_cr = ((const uint8_t *)data)[n - 1] == '\r';
}

/* The line end: a CR already emitted makes the CRLF, a bare LF gets one. */
static void mbox_end_line(mbox_parser *p)
{
    if (p->last_cr)
        mbox_emit(p, "\n", 1);
    else
        mbox_emit(p, "\r\n", 2);
    p->prev_blank = p->line_len == 0 || (p->line_len == 1 && p->last_cr);
    p->line_len = 0;
    p->last_cr = 0;
    p->line_offset = p->offset;
    p->state = MBOX_ST_LINE_START;
}

/* Emits the '>'s and the part of "From " that turned out not to start a
 * separator or a quoted line. */
static void mbox_flush_prefix(mbox_parser *p, uint64_t gt)
{
    static const char gts[64] = {
        '>', '>', '>', '>', '>', '>', '>', '>', '>', '>', '>', '>', '>', '>', '>', '>',
        '>', '>', '>', '>', '>', '>', '>', '>', '>', '>', '>', '>', '>', '>', '>', '>',
        '>', '>', '>', '>', '>', '>', '>', '>', '>', '>', '>', '>', '>', '>', '>', '>',
        '>', '>', '>', '>', '>', '>', '>', '>', '>', '>', '>', '>', '>', '>', '>', '>',
    };
    while (gt) {
        size_t n = gt > sizeof(gts) ? sizeof(gts) : (size_t)gt;
        mbox_body_bytes(p, gts, n);
        gt -= n;
    }
    mbox_body_bytes(p, from_, p->match);
}

static int64_t mbox_now(const mbox_parser *p)
{
    return p->opt.now ? p->opt.now : (int64_t)time(NULL);
}

/* Ends the current message and hands it to the callback. strip removes
 * the blank line that belongs to the separator (or to the end of input). */
static int mbox_end_message(mbox_parser *p, int strip, hv_err *err)
{
    if (!p->in_msg)
        return 0;
    p->in_msg = 0;
    if (strip && p->size >= 2) {
        p->size -= 2;
        if (!p->too_big)
            p->msg.len -= 2;
    }
    if (p->size > p->opt.max_message_size && !p->too_big) {
        p->too_big = 1;
        buf_free(&p->msg);
    }
    mbox_message m = {0};
    m.size = p->size;
    m.too_big = p->too_big;
    m.number = p->number;
    m.offset = p->msg_offset;
    if (!p->too_big) {
        m.data = p->msg.data ? p->msg.data : (const uint8_t *)"";
        if (mbox_date_from_line(p->from_line, p->from_len, &m.internal_date) == 0) {
            m.date_source = MBOX_DATE_FROM_LINE;
        } else if (mbox_date_from_header(m.data, p->msg.len, &m.internal_date) == 0) {
            m.date_source = MBOX_DATE_HEADER;
        } else {
            m.internal_date = mbox_now(p);
            m.date_source = MBOX_DATE_NOW;
        }
    }
    int rc = p->cb ? p->cb(p->ctx, &m, err) : 0;
    buf_reset(&p->msg);
    p->size = 0;
    p->too_big = 0;
    if (rc) {
        p->state = MBOX_ST_DONE;
        p->stop_rc = rc < 0 ? rc : -ECANCELED;
        return p->stop_rc;
    }
    return 0;
}

/* A separator line has begun at line_offset ("From " already matched). */
static void mbox_begin_message(mbox_parser *p)
{
    p->in_msg = 1;
    p->number++;
    p->msg_offset = p->line_offset;
    memcpy(p->from_line, from_, FROM_LEN);
    p->from_len = FROM_LEN;
    p->state = MBOX_ST_FROM_LINE;
}

/* ^>*From  matched in full: a separator, a quoted line or a body line. */
static int mbox_prefix_done(mbox_parser *p, hv_err *err)
{
    if (p->gt == 0 && p->prev_blank) {
        int rc = mbox_end_message(p, 1, err);
        if (rc)
            return rc;
        mbox_begin_message(p);
        return 0;
    }
    p->match = FROM_LEN;
    mbox_flush_prefix(p, p->gt ? p->gt - 1 : 0);
    p->state = MBOX_ST_BODY;
    return 0;
}

static int mbox_stopped(mbox_parser *p, hv_err *err)
{
    if (p->stop_rc)
        return hv_err_set(err, p->stop_rc, "mbox parser stopped after an earlier error");
    return hv_err_set(err, -EINVAL, "mbox parser fed after the end of input");
}

int mbox_parser_feed(mbox_parser *p, const void *data, size_t len, hv_err *err)
{
    const uint8_t *d = data;
    size_t i = 0;
    int rc;
    if (p->state == MBOX_ST_DONE)
        return mbox_stopped(p, err);
    while (i < len) {
        uint8_t c = d[i];
        switch (p->state) {
        case MBOX_ST_START:
            if (c != (uint8_t)from_[p->match]) {
                p->state = MBOX_ST_DONE;
                p->stop_rc = -EINVAL;
                return hv_err_set(err, -EINVAL,
                                  "not an mbox: the first line does not start with \"From \"");
            }
            i++;
            p->offset++;
            if (++p->match == FROM_LEN) {
                p->line_offset = 0;
                mbox_begin_message(p);
            }
            break;
        case MBOX_ST_FROM_LINE: {
            const uint8_t *nl = memchr(d + i, '\n', len - i);
            size_t n = nl ? (size_t)(nl - (d + i)) : len - i;
            size_t room = MBOX_FROM_LINE_MAX - p->from_len;
            memcpy(p->from_line + p->from_len, d + i, n < room ? n : room);
            p->from_len += n < room ? n : room;
            i += n;
            p->offset += n;
            if (nl) {
                i++;
                p->offset++;
                p->prev_blank = 0;
                p->line_len = 0;
                p->last_cr = 0;
                p->line_offset = p->offset;
                p->state = MBOX_ST_LINE_START;
            }
            break;
        }
        case MBOX_ST_LINE_START:
            p->gt = 0;
            p->match = 0;
            p->state = c == '>' || c == 'F' ? MBOX_ST_PREFIX : MBOX_ST_BODY;
            break; /* the byte is looked at again in the new state */
        case MBOX_ST_PREFIX:
            if (p->match == 0 && c == '>') {
                p->gt++;
                i++;
                p->offset++;
            } else if (c == (uint8_t)from_[p->match]) {
                i++;
                p->offset++;
                if (++p->match == FROM_LEN && (rc = mbox_prefix_done(p, err)))
                    return rc;
            } else {
                mbox_flush_prefix(p, p->gt);
                p->state = MBOX_ST_BODY;
            }
            break;
        case MBOX_ST_BODY: {
            const uint8_t *nl = memchr(d + i, '\n', len - i);
            size_t n = nl ? (size_t)(nl - (d + i)) : len - i;
            mbox_body_bytes(p, d + i, n);
            i += n;
            p->offset += n;
            if (nl) {
                i++;
                p->offset++;
                mbox_end_line(p);
            }
            break;
        }
        case MBOX_ST_DONE:
            return mbox_stopped(p, err);
        }
    }
    return 0;
}

int mbox_parser_finish(mbox_parser *p, hv_err *err)
{
    int strip = 0;
    switch (p->state) {
    case MBOX_ST_START:
        p->state = MBOX_ST_DONE;
        if (p->offset == 0)
            return 0; /* an empty file is an empty mbox */
        p->stop_rc = -EINVAL;
        return hv_err_set(err, -EINVAL, "not an mbox: it ends before its first \"From \" line");
    case MBOX_ST_FROM_LINE:
        break; /* a message with no lines at all */
    case MBOX_ST_PREFIX:
        mbox_flush_prefix(p, p->gt);
        mbox_end_line(p);
        strip = p->prev_blank;
        break;
    case MBOX_ST_BODY:
        mbox_end_line(p);
        strip = p->prev_blank;
        break;
    case MBOX_ST_LINE_START:
        strip = p->prev_blank;
        break;
    case MBOX_ST_DONE:
        return mbox_stopped(p, err);
    }
    int rc = mbox_end_message(p, strip, err);
    p->state = MBOX_ST_DONE;
    return rc;
}

/* ---- dates ---- */

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
 * days_from_civil), so no time zone or libc state is involved. */
static int64_t mbox_days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static int mbox_days_in_month(int y, int m)
{
    static const int dm[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : dm[m - 1];
}

#define DATE_TOKS 16
#define DATE_TOK_LEN 24

typedef struct date_toks {
    char t[DATE_TOKS][DATE_TOK_LEN];
    int n;
} date_toks;

/* Splits at white space and commas and, with comments set, drops
 * (comments) as RFC 5322 allows; a From line has none, and a '(' in its
 * sender must not hide the date. Long tokens are cut (they can only fail
 * to parse) and tokens past DATE_TOKS ignored. */
static void date_tokenize(const char *s, size_t len, int comments, date_toks *tk)
{
    tk->n = 0;
    size_t i = 0;
    int depth = 0;
    while (i < len && tk->n < DATE_TOKS) {
        char c = s[i];
        if (c == '(' && comments) {
            depth++;
            i++;
            continue;
        }
        if (depth) {
            if (c == ')')
                depth--;
            i++;
            continue;
        }
        if (isspace((unsigned char)c) || c == ',' || (comments && c == ')') || c == '\0') {
            i++;
            continue;
        }
        size_t n = 0;
        while (i < len && !isspace((unsigned char)s[i]) && s[i] != ',' &&
               !(comments && (s[i] == '(' || s[i] == ')')) && s[i] != '\0') {
            if (n < DATE_TOK_LEN - 1)
                tk->t[tk->n][n++] = s[i];
            i++;
        }
        tk->t[tk->n][n] = 0;
        tk->n++;
    }
}

static int date_is_wday(const char *t)
{
    static const char *const wd[] = {"mon", "tue", "wed", "thu", "fri", "sat", "sun"};
    for (int i = 0; i < 7; i++)
        if (strncasecmp(t, wd[i], 3) == 0 && isalpha((unsigned char)t[0]))
            return 1;
    return 0;
}

/* 1..12 for "Jan", "jan", "January"; 0 otherwise. */
static int date_month(const char *t)
{
    static const char *const mn[] = {"january", "february", "march",     "april",
                                     "may",     "june",     "july",      "august",
                                     "september", "october", "november", "december"};
    size_t n = strlen(t);
    if (n < 3)
        return 0;
    for (int i = 0; i < 12; i++)
        if (n <= strlen(mn[i]) && strncasecmp(t, mn[i], n) == 0)
            return i + 1;
    return 0;
}

/* A decimal of 1..maxdig digits and nothing else. */
static int date_num(const char *t, int maxdig, int *out)
{
    int n = 0, v = 0;
    for (; t[n]; n++) {
        if (!isdigit((unsigned char)t[n]) || n >= maxdig)
            return -1;
        v = v * 10 + (t[n] - '0');
    }
    if (n == 0)
        return -1;
    *out = v;
    return n;
}

static int date_year(const char *t, int *y)
{
    int n = date_num(t, 4, y);
    if (n < 2)
        return -1;
    if (n == 2) /* RFC 5322 4.3: 00-49 are 20xx, 50-99 are 19xx */
        *y += *y < 50 ? 2000 : 1900;
    else if (n == 3)
        *y += 1900;
    return *y >= 1900 ? 0 : -1;
}

/* "15:04:05", "15:04" or "9:04:05". */
static int date_time(const char *t, int *h, int *mi, int *s)
{
    int v[3] = {0, 0, 0}, n = 0;
    const char *c = t;
    for (;;) {
        int digits = 0;
        while (isdigit((unsigned char)*c) && digits < 2) {
            v[n] = v[n] * 10 + (*c++ - '0');
            digits++;
        }
        if (digits == 0 || (n > 0 && digits != 2))
            return -1;
        n++;
        if (*c != ':' || n == 3)
            break;
        c++;
    }
    if (*c || n < 2)
        return -1;
    *h = v[0];
    *mi = v[1];
    *s = v[2];
    return *h <= 23 && *mi <= 59 && *s <= 60 ? 0 : -1;
}

/* Seconds east of UTC for "+0100", "-0800", "GMT", "EST", ...; unknown
 * alphabetic zones count as UTC (RFC 5322 4.3 says to treat military
 * zones as -0000). -1 when t is not a zone at all. */
static int date_zone(const char *t, int *off)
{
    static const struct { const char *n; int h; } names[] = {
        {"UT", 0}, {"UTC", 0}, {"GMT", 0}, {"Z", 0}, {"EST", -5}, {"EDT", -4}, {"CST", -6},
        {"CDT", -5}, {"MST", -7}, {"MDT", -6}, {"PST", -8}, {"PDT", -7},
    };
    if ((t[0] == '+' || t[0] == '-') && strlen(t) == 5) {
        int v;
        if (date_num(t + 1, 4, &v) != 4 || v % 100 > 59)
            return -1;
        *off = (v / 100 * 3600 + v % 100 * 60) * (t[0] == '-' ? -1 : 1);
        return 0;
    }
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcasecmp(t, names[i].n) == 0) {
            *off = names[i].h * 3600;
            return 0;
        }
    }
    for (const char *c = t; *c; c++)
        if (!isalpha((unsigned char)*c))
            return -1;
    *off = 0;
    return t[0] ? 0 : -1;
}

static int date_make(int y, int mo, int d, int h, int mi, int s, int off, int64_t *out)
{
    if (mo < 1 || mo > 12 || d < 1 || d > mbox_days_in_month(y, mo))
        return -EINVAL;
    *out = mbox_days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 + s -
           off;
    return 0;
}

/* "Jan  2 15:04:05 [TZ] 2024 [+zone]" starting with the month at tk->t[i]. */
static int date_asctime_at(const date_toks *tk, int i, int64_t *out)
{
    int mo = date_month(tk->t[i]), d, h, mi, s, y, off = 0;
    if (!mo || i + 3 >= tk->n || date_num(tk->t[i + 1], 2, &d) < 1 ||
        date_time(tk->t[i + 2], &h, &mi, &s) < 0)
        return -EINVAL;
    int j = i + 3;
    if (date_year(tk->t[j], &y) < 0) {
        /* a zone name between time and year: "15:04:05 PST 2024" */
        if (date_zone(tk->t[j], &off) < 0 || j + 1 >= tk->n || date_year(tk->t[j + 1], &y) < 0)
            return -EINVAL;
        j++;
    } else if (j + 1 < tk->n && (tk->t[j + 1][0] == '+' || tk->t[j + 1][0] == '-')) {
        if (date_zone(tk->t[j + 1], &off) < 0)
            off = 0;
    }
    return date_make(y, mo, d, h, mi, s, off, out);
}

static int date_asctime_search(const date_toks *tk, int from, int64_t *out)
{
    for (int i = from; i < tk->n; i++)
        if (date_month(tk->t[i]) && date_asctime_at(tk, i, out) == 0)
            return 0;
    return -EINVAL;
}

int mbox_date_from_line(const char *line, size_t len, int64_t *out)
{
    if (len >= FROM_LEN && memcmp(line, from_, FROM_LEN) == 0) {
        line += FROM_LEN;
        len -= FROM_LEN;
    }
    date_toks tk;
    date_tokenize(line, len, 0, &tk);
    /* Token 0 is the envelope sender; an empty sender ("From  Tue ...")
     * makes the weekday token 0, hence the search rather than a fixed slot. */
    for (int i = 0; i + 1 < tk.n; i++)
        if (date_is_wday(tk.t[i]) && date_asctime_at(&tk, i + 1, out) == 0)
            return 0;
    return date_asctime_search(&tk, 1, out);
}

int mbox_date_parse_rfc5322(const char *s, size_t len, int64_t *out)
{
    date_toks tk;
    date_tokenize(s, len, 1, &tk);
    int i = 0, d, mo, y, h, mi, sec, off = 0;
    if (i < tk.n && isalpha((unsigned char)tk.t[i][0]) && date_is_wday(tk.t[i]))
        i++;
    if (i + 3 < tk.n && date_num(tk.t[i], 2, &d) >= 1 && (mo = date_month(tk.t[i + 1])) &&
        date_year(tk.t[i + 2], &y) == 0 && date_time(tk.t[i + 3], &h, &mi, &sec) == 0) {
        if (i + 4 < tk.n && date_zone(tk.t[i + 4], &off) < 0)
            off = 0;
        return date_make(y, mo, d, h, mi, sec, off, out);
    }
    /* Some mailers write asctime into Date: too. */
    return date_asctime_search(&tk, 0, out);
}

int mbox_date_from_header(const uint8_t *msg, size_t len, int64_t *out)
{
    size_t i = 0;
    while (i < len) {
        const uint8_t *nl = memchr(msg + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - msg) : len;
        size_t llen = end - i;
        if (llen && msg[end - 1] == '\r')
            llen--;
        if (llen == 0)
            return -ENOENT; /* the end of the header section */
        if (llen >= 5 && strncasecmp((const char *)msg + i, "date:", 5) == 0) {
            char val[256];
            size_t vn = 0;
            size_t s = i + 5, e = i + llen;
            for (;;) {
                for (size_t k = s; k < e && vn < sizeof(val) - 1; k++)
                    val[vn++] = (char)msg[k];
                /* a folded header continues on lines starting with SP/HT */
                size_t next = nl ? end + 1 : len;
                if (next >= len || (msg[next] != ' ' && msg[next] != '\t'))
                    break;
                nl = memchr(msg + next, '\n', len - next);
                end = nl ? (size_t)(nl - msg) : len;
                s = next;
                e = end > s && msg[end - 1] == '\r' ? end - 1 : end;
                if (vn < sizeof(val) - 1)
                    val[vn++] = ' ';
            }
            return mbox_date_parse_rfc5322(val, vn, out);
        }
        i = nl ? end + 1 : len;
    }
    return -ENOENT;
}

void mbox_format_asctime(int64_t t, char out[25])
{
    static const char wd[7][4] = {"Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"};
    static const char mn[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    int64_t days = t >= 0 ? t / 86400 : -((-t + 86399) / 86400);
    int64_t secs = t - days * 86400;
    /* civil_from_days, the inverse of mbox_days_from_civil */
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = (int64_t)yoe + era * 400;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    unsigned d = doy - (153 * mp + 2) / 5 + 1;
    unsigned m = mp < 10 ? mp + 3 : mp - 9;
    y += m <= 2;
    if (y < 0 || y > 9999) { /* not representable in four digits: clamp */
        y = y < 0 ? 1970 : 9999;
    }
    int w = (int)(((days % 7) + 7) % 7);
    snprintf(out, 25, "%s %s %2u %02d:%02d:%02d %04d", wd[w], mn[m - 1], d,
             (int)(secs / 3600), (int)(secs / 60 % 60), (int)(secs % 60), (int)y);
}

/* ---- writing ---- */

/* The envelope sender for the From line: Return-Path's address when it is
 * a plain one (no spaces, control bytes or parentheses, which some readers
 * take for a comment), else MAILER-DAEMON. */
static void mbox_sender(const uint8_t *msg, size_t len, char *out, size_t outlen)
{
    snprintf(out, outlen, "MAILER-DAEMON");
    size_t i = 0;
    while (i < len) {
        const uint8_t *nl = memchr(msg + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - msg) : len;
        size_t llen = end - i;
        if (llen && msg[end - 1] == '\r')
            llen--;
        if (llen == 0)
            return;
        if (llen > 12 && strncasecmp((const char *)msg + i, "return-path:", 12) == 0) {
            size_t s = i + 12, e = i + llen;
            while (s < e && (msg[s] == ' ' || msg[s] == '\t'))
                s++;
            while (e > s && (msg[e - 1] == ' ' || msg[e - 1] == '\t'))
                e--;
            if (e > s && msg[s] == '<' && msg[e - 1] == '>') {
                s++;
                e--;
            }
            if (e <= s || e - s >= outlen)
                return;
            for (size_t k = s; k < e; k++)
                if (msg[k] <= ' ' || msg[k] >= 0x7f || strchr("<>()", msg[k]))
                    return;
            memcpy(out, msg + s, e - s);
            out[e - s] = 0;
            return;
        }
        i = nl ? end + 1 : len;
    }
}

void mbox_crlf_to_lf(buf *out, const uint8_t *msg, size_t len, int quote_from)
{
    size_t i = 0;
    while (i < len) {
        const uint8_t *nl = memchr(msg + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - msg) : len;
        if (quote_from) {
            size_t k = i;
            while (k < end && msg[k] == '>')
                k++;
            if (end - k >= FROM_LEN && memcmp(msg + k, from_, FROM_LEN) == 0)
                buf_append(out, ">", 1);
        }
        if (!nl) {
            buf_append(out, msg + i, end - i);
            break;
        }
        /* CRLF becomes LF, except after another CR: readers take "x\r\n"
         * as the line "x", so a line "x\r" must keep its CRLF. */
        size_t content = end - i;
        if (content && msg[end - 1] == '\r' && !(content >= 2 && msg[end - 2] == '\r'))
            content--;
        buf_append(out, msg + i, content);
        buf_append(out, "\n", 1);
        i = end + 1;
    }
}

void mbox_write_message(buf *out, const uint8_t *msg, size_t len, int64_t internal_date)
{
    char sender[256], date[25];
    mbox_sender(msg, len, sender, sizeof(sender));
    mbox_format_asctime(internal_date, date);
    buf_printf(out, "From %s %s\n", sender, date);
    mbox_crlf_to_lf(out, msg, len, 1);
    if (len && msg[len - 1] != '\n')
        buf_append(out, "\n", 1); /* mbox cannot end a message mid-line */
    buf_append(out, "\n", 1);
}
