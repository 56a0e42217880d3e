/*
 * test_import.c - the mbox and Maildir parsers behind `haven import` and
 * `haven export`.
 *
 * Every mbox case is parsed whole, one byte at a time and in random
 * chunks, and must give the same messages each way: the parser may not
 * depend on where reads happen to end. The writers are checked by round
 * trips: what export writes, import must read back to the same bytes.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/fsutil.h"
#include "store/maildir_reader.h"
#include "store/mbox_parser.h"
#include "store/store.h"
#include "testlib.h"

#define NOW 1700000000

typedef struct got_msg {
    buf data;
    uint64_t size, number, offset;
    int too_big;
    int64_t date;
    enum mbox_date_source src;
} got_msg;

typedef struct got {
    got_msg m[64];
    int n;
    int rc;
    hv_err err;
    int stop_at; /* return an error from the callback at this message (1-based) */
} got;

static int collect(void *ctx, const mbox_message *m, hv_err *err)
{
    got *g = ctx;
    if (g->stop_at && (int)m->number == g->stop_at)
        return hv_err_set(err, -EIO, "stop requested");
    if (g->n >= 64)
        return hv_err_set(err, -E2BIG, "too many messages for the test");
    got_msg *o = &g->m[g->n++];
    buf_init(&o->data);
    if (m->data)
        buf_append(&o->data, m->data, m->size);
    o->size = m->size;
    o->number = m->number;
    o->offset = m->offset;
    o->too_big = m->too_big;
    o->date = m->internal_date;
    o->src = m->date_source;
    return 0;
}

static void got_free(got *g)
{
    for (int i = 0; i < g->n; i++)
        buf_free(&g->m[i].data);
    g->n = 0;
}

/* chunk: 0 whole, 1 one byte at a time, -1 random chunks (seeded). */
static void parse(const void *in, size_t len, int chunk, uint64_t max, got *g)
{
    int stop_at = g->stop_at;
    got_free(g);
    memset(g, 0, sizeof(*g));
    g->stop_at = stop_at;
    mbox_parser_options opt = {.max_message_size = max, .now = NOW};
    mbox_parser *p = mbox_parser_new(&opt, collect, g);
    const uint8_t *d = in;
    size_t i = 0;
    unsigned seed = 12345;
    int rc = 0;
    while (i < len && rc == 0) {
        size_t n = len - i;
        if (chunk == 1)
            n = 1;
        else if (chunk < 0) {
            seed = seed * 1103515245 + 12345;
            size_t r = (seed >> 16) % 17 + 1;
            n = r < n ? r : n;
        }
        rc = mbox_parser_feed(p, d + i, n, &g->err);
        i += n;
    }
    if (rc == 0)
        rc = mbox_parser_finish(p, &g->err);
    g->rc = rc;
    mbox_parser_free(p);
}

static int same(const got *a, const got *b)
{
    if (a->rc != b->rc || a->n != b->n)
        return 0;
    for (int i = 0; i < a->n; i++) {
        const got_msg *x = &a->m[i], *y = &b->m[i];
        if (x->size != y->size || x->number != y->number || x->offset != y->offset ||
            x->too_big != y->too_big || x->date != y->date || x->src != y->src ||
            x->data.len != y->data.len ||
            (x->data.len && memcmp(x->data.data, y->data.data, x->data.len) != 0))
            return 0;
    }
    return 1;
}

/* Parses whole, byte by byte and in random chunks; all must agree. The
 * whole-input result is left in g. */
static int parse_all_ways(const void *in, size_t len, uint64_t max, got *g)
{
    got one = {0}, rnd = {0};
    one.stop_at = rnd.stop_at = g->stop_at;
    parse(in, len, 0, max, g);
    parse(in, len, 1, max, &one);
    parse(in, len, -1, max, &rnd);
    int ok = same(g, &one) && same(g, &rnd);
    got_free(&one);
    got_free(&rnd);
    return ok;
}

static int body_is(const got_msg *m, const char *s)
{
    size_t n = strlen(s);
    return m->data.len == n && (n == 0 || memcmp(m->data.data, s, n) == 0);
}

#define PARSE(str, g) CHECK(parse_all_ways(str, strlen(str), 0, g))

TEST(empty_file_is_empty_mbox)
{
    got g = {0};
    CHECK(parse_all_ways("", 0, 0, &g));
    CHECK(g.rc == 0);
    CHECK(g.n == 0);
}

TEST(not_an_mbox)
{
    got g = {0};
    PARSE("Subject: hi\n\nbody\n", &g);
    CHECK(g.rc == -EINVAL);
    CHECK(strstr(g.err.msg, "not an mbox") != NULL);
    CHECK(g.n == 0);
    PARSE("Fro", &g);
    CHECK(g.rc == -EINVAL);
    CHECK(strstr(g.err.msg, "not an mbox") != NULL);
    PARSE("\nFrom a Tue Jan  2 15:04:05 2024\n", &g);
    CHECK(g.rc == -EINVAL);
}

TEST(two_messages_lf)
{
    const char *in = "From a@b Tue Jan  2 15:04:05 2024\n"
                     "Subject: one\n\nbody one\n\n"
                     "From c@d Wed Jan  3 10:00:00 2024\n"
                     "Subject: two\n\nbody two\n";
    got g = {0};
    PARSE(in, &g);
    CHECK(g.rc == 0);
    CHECK(g.n == 2);
    CHECK(body_is(&g.m[0], "Subject: one\r\n\r\nbody one\r\n"));
    CHECK(body_is(&g.m[1], "Subject: two\r\n\r\nbody two\r\n"));
    CHECK(g.m[0].number == 1 && g.m[1].number == 2);
    CHECK(g.m[0].offset == 0);
    CHECK(g.m[1].offset == (uint64_t)(strstr(in, "From c@d") - in));
    CHECK(g.m[0].src == MBOX_DATE_FROM_LINE);
    CHECK(g.m[0].date == 1704207845); /* 2024-01-02 15:04:05 UTC */
    CHECK(g.m[1].date == 1704276000);
    CHECK(g.m[0].size == g.m[0].data.len);
    got_free(&g);
}

TEST(crlf_input_same_as_lf)
{
    const char *lf = "From a Tue Jan  2 15:04:05 2024\nA: 1\n\nx\n\nFrom b Tue Jan  2 15:04:06 2024\n"
                     "B: 2\n\ny\n\n";
    const char *crlf = "From a Tue Jan  2 15:04:05 2024\r\nA: 1\r\n\r\nx\r\n\r\n"
                       "From b Tue Jan  2 15:04:06 2024\r\nB: 2\r\n\r\ny\r\n\r\n";
    got a = {0}, b = {0};
    PARSE(lf, &a);
    PARSE(crlf, &b);
    CHECK(a.rc == 0 && a.n == 2);
    CHECK(body_is(&a.m[0], "A: 1\r\n\r\nx\r\n"));
    CHECK(body_is(&a.m[1], "B: 2\r\n\r\ny\r\n"));
    CHECK(b.n == 2);
    CHECK(body_is(&b.m[0], "A: 1\r\n\r\nx\r\n"));
    CHECK(body_is(&b.m[1], "B: 2\r\n\r\ny\r\n"));
    got_free(&a);
    got_free(&b);
}

TEST(lone_cr_kept)
{
    got g = {0};
    PARSE("From a Tue Jan  2 15:04:05 2024\nX: a\rb\n\nc\r\r\nd\r", &g);
    CHECK(g.rc == 0 && g.n == 1);
    CHECK(body_is(&g.m[0], "X: a\rb\r\n\r\nc\r\r\nd\r\n"));
    got_free(&g);
}

TEST(from_only_after_blank_line)
{
    got g = {0};
    PARSE("From a Tue Jan  2 15:04:05 2024\nS: 1\n\nline\nFrom here on, text\n\n"
          "From b Tue Jan  2 15:04:05 2024\nS: 2\n\nFrom the start\nx\n",
          &g);
    CHECK(g.rc == 0);
    CHECK(g.n == 3);
    CHECK(body_is(&g.m[0], "S: 1\r\n\r\nline\r\nFrom here on, text\r\n"));
    /* unquoted after a blank line it is a separator, even in a body: this
     * is why writers quote ^From (and what mboxo files get wrong) */
    CHECK(body_is(&g.m[1], "S: 2\r\n"));
    CHECK(body_is(&g.m[2], "x\r\n"));
    CHECK(g.m[2].src == MBOX_DATE_NOW);
    got_free(&g);
}

TEST(mboxrd_unquoting)
{
    got g = {0};
    PARSE("From a Tue Jan  2 15:04:05 2024\nS: 1\n\n"
          ">From one\n>>From two\n>>>From three\n> From no\n>Fromage\n>From\n>>\nFrom\n",
          &g);
    CHECK(g.rc == 0 && g.n == 1);
    CHECK(body_is(&g.m[0], "S: 1\r\n\r\nFrom one\r\n>From two\r\n>>From three\r\n> From no\r\n"
                           ">Fromage\r\n>From\r\n>>\r\nFrom\r\n"));
    got_free(&g);
}

TEST(quoted_from_after_blank_is_not_a_separator)
{
    got g = {0};
    PARSE("From a Tue Jan  2 15:04:05 2024\nS: 1\n\n>From x\n", &g);
    CHECK(g.n == 1);
    CHECK(body_is(&g.m[0], "S: 1\r\n\r\nFrom x\r\n"));
    got_free(&g);
}

TEST(missing_final_newline)
{
    got g = {0};
    PARSE("From a Tue Jan  2 15:04:05 2024\nS: 1\n\nlast line", &g);
    CHECK(g.rc == 0 && g.n == 1);
    CHECK(body_is(&g.m[0], "S: 1\r\n\r\nlast line\r\n"));
    PARSE("From a Tue Jan  2 15:04:05 2024\nS: 1\n\n>Fro", &g);
    CHECK(body_is(&g.m[0], "S: 1\r\n\r\n>Fro\r\n"));
    PARSE("From a Tue Jan  2 15:04:05 2024", &g);
    CHECK(g.rc == 0 && g.n == 1 && g.m[0].size == 0);
    got_free(&g);
}

TEST(trailing_blank_lines)
{
    got g = {0};
    /* one blank line at the end belongs to the format; more are body */
    PARSE("From a Tue Jan  2 15:04:05 2024\nS: 1\n\nx\n\n\n", &g);
    CHECK(body_is(&g.m[0], "S: 1\r\n\r\nx\r\n\r\n"));
    PARSE("From a Tue Jan  2 15:04:05 2024\n\nFrom b Tue Jan  2 15:04:05 2024\n\n", &g);
    CHECK(g.n == 2);
    CHECK(g.m[0].size == 0 && g.m[1].size == 0);
    got_free(&g);
}

TEST(nul_bytes_kept)
{
    static const char in[] = "From a Tue Jan  2 15:04:05 2024\nS: 1\n\na\0b\n\0\n";
    got g = {0};
    CHECK(parse_all_ways(in, sizeof(in) - 1, 0, &g));
    CHECK(g.rc == 0 && g.n == 1);
    static const char want[] = "S: 1\r\n\r\na\0b\r\n\0\r\n";
    CHECK(g.m[0].data.len == sizeof(want) - 1);
    CHECK(memcmp(g.m[0].data.data, want, sizeof(want) - 1) == 0);
    got_free(&g);
}

TEST(long_lines)
{
    buf in;
    buf_init(&in);
    buf_append_str(&in, "From ");
    for (int i = 0; i < 5000; i++)
        buf_append(&in, "x", 1); /* a From line far past MBOX_FROM_LINE_MAX */
    buf_append_str(&in, " Tue Jan  2 15:04:05 2024\nDate: Wed, 3 Jan 2024 00:00:00 +0000\n\n");
    for (int i = 0; i < 300000; i++)
        buf_append(&in, i % 2 ? "F" : ">", 1);
    buf_append_str(&in, "\n");
    got g = {0};
    CHECK(parse_all_ways(in.data, in.len, 0, &g));
    CHECK(g.rc == 0 && g.n == 1);
    CHECK(g.m[0].src == MBOX_DATE_HEADER); /* the From line's date was cut off */
    CHECK(g.m[0].date == 1704240000);
    CHECK(g.m[0].data.len == 38 + 2 + 300000 + 2);
    buf_free(&in);
    got_free(&g);
}

TEST(dates_fallbacks)
{
    got g = {0};
    PARSE("From sender\nDate: Tue, 2 Jan 2024 16:04:05 +0100 (CET)\n\nx\n\n"
          "From sender garbage\nSubject: no date\n\nx\n\n"
          "From  Tue Jan  2 15:04:05 2024\n\nx\n\n"
          "From x Tue Jan  2 15:04:05 PST 2024\n\nx\n\n"
          "From x Tue Jan  2 15:04:05 2024 -0800\n\nx\n\n"
          "From x Tue Feb 30 15:04:05 2024\nDate: nonsense\n\nx\n\n"
          "From a(b Tue Jan  2 15:04:05 2024\n\nx\n",
          &g);
    CHECK(g.rc == 0 && g.n == 7);
    CHECK(g.m[0].src == MBOX_DATE_HEADER && g.m[0].date == 1704207845);
    CHECK(g.m[1].src == MBOX_DATE_NOW && g.m[1].date == NOW);
    CHECK(g.m[2].src == MBOX_DATE_FROM_LINE && g.m[2].date == 1704207845);
    CHECK(g.m[3].src == MBOX_DATE_FROM_LINE && g.m[3].date == 1704207845 + 8 * 3600);
    CHECK(g.m[4].src == MBOX_DATE_FROM_LINE && g.m[4].date == 1704207845 + 8 * 3600);
    CHECK(g.m[5].src == MBOX_DATE_NOW);
    /* a '(' in the sender is not an RFC 5322 comment hiding the date */
    CHECK(g.m[6].src == MBOX_DATE_FROM_LINE && g.m[6].date == 1704207845);
    got_free(&g);
}

TEST(rfc5322_dates)
{
    int64_t t;
    static const struct { const char *s; int64_t want; } ok[] = {
        {"Tue, 2 Jan 2024 15:04:05 +0000", 1704207845},
        {"2 Jan 2024 15:04:05 GMT", 1704207845},
        {"Tue,  2 Jan 2024 10:04:05 EST", 1704207845},
        {"Tue, 02 Jan 24 15:04 +0000", 1704207840},
        {"Tue, 2 January 2024 15:04:05 +0000 (UTC)", 1704207845},
        {"(comment) Tue, 2 Jan 2024 15:04:05 Z", 1704207845},
        {"Thu, 1 Jan 1970 00:00:00 +0000", 0},
        {"Thu, 29 Feb 2024 9:00:00 +0000", 1709197200},
        {"Tue Jan  2 15:04:05 2024", 1704207845},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        t = -1;
        CHECKM(mbox_date_parse_rfc5322(ok[i].s, strlen(ok[i].s), &t) == 0, "%s", ok[i].s);
        CHECKM(t == ok[i].want, "%s -> %lld", ok[i].s, (long long)t);
    }
    static const char *bad[] = {"", "yesterday", "Tue, 30 Feb 2023 10:00:00 +0000",
                                "Tue, 2 Jan 2024 25:00:00 +0000", "Tue, 2 Foo 2024 10:00:00",
                                "2 Jan 1800 10:00:00"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECKM(mbox_date_parse_rfc5322(bad[i], strlen(bad[i]), &t) < 0, "%s", bad[i]);
    const char *hdr = "Subject: x\r\nDATE:\r\n Tue, 2 Jan 2024\r\n\t15:04:05 +0000\r\n\r\n";
    CHECK(mbox_date_from_header((const uint8_t *)hdr, strlen(hdr), &t) == 0 && t == 1704207845);
    const char *body_date = "Subject: x\r\n\r\nDate: Tue, 2 Jan 2024 15:04:05 +0000\r\n";
    CHECK(mbox_date_from_header((const uint8_t *)body_date, strlen(body_date), &t) == -ENOENT);
}

TEST(asctime_round_trip)
{
    static const int64_t ts[] = {0, 1704207845, 951782400 /* 2000-02-29 */, 4102444799,
                                 253402300799 /* 9999-12-31 23:59:59 */, 86399, 1709197200};
    for (size_t i = 0; i < sizeof(ts) / sizeof(ts[0]); i++) {
        char s[25];
        mbox_format_asctime(ts[i], s);
        int64_t back = -1;
        CHECKM(strlen(s) == 24, "%s", s);
        CHECKM(mbox_date_from_line(s, strlen(s), &back) == 0 && back == ts[i], "%s", s);
    }
    char s[25];
    mbox_format_asctime(1704207845, s);
    CHECK(strcmp(s, "Tue Jan  2 15:04:05 2024") == 0);
}

TEST(oversize_reported_and_skipped)
{
    buf in;
    buf_init(&in);
    buf_append_str(&in, "From a Tue Jan  2 15:04:05 2024\nS: 1\n\nsmall\n\n");
    size_t off2 = in.len;
    buf_append_str(&in, "From b Tue Jan  2 15:04:05 2024\nS: 2\n\n");
    for (int i = 0; i < 100; i++)
        buf_append_str(&in, "0123456789012345678901234567890123456789\n");
    buf_append_str(&in, "\n");
    buf_append_str(&in, "From c Tue Jan  2 15:04:05 2024\nS: 3\n\nsmall too\n");
    got g = {0};
    CHECK(parse_all_ways(in.data, in.len, 1000, &g));
    CHECK(g.rc == 0 && g.n == 3);
    CHECK(!g.m[0].too_big && body_is(&g.m[0], "S: 1\r\n\r\nsmall\r\n"));
    CHECK(g.m[1].too_big && g.m[1].number == 2 && g.m[1].offset == off2);
    CHECK(g.m[1].size == 8 + 100 * 42);
    CHECK(g.m[1].data.len == 0);
    CHECK(!g.m[2].too_big && body_is(&g.m[2], "S: 3\r\n\r\nsmall too\r\n"));
    buf_free(&in);
    got_free(&g);
}

TEST(size_limit_is_exact)
{
    /* "S: 1\r\n\r\n" + 12 * "x" + "\r\n" = 22 stored bytes */
    const char *in = "From a Tue Jan  2 15:04:05 2024\nS: 1\n\nxxxxxxxxxxxx\n\n"
                     "From a Tue Jan  2 15:04:05 2024\nS: 1\n\nxxxxxxxxxxxx\n";
    got g = {0};
    CHECK(parse_all_ways(in, strlen(in), 22, &g));
    CHECK(g.n == 2 && !g.m[0].too_big && !g.m[1].too_big && g.m[0].size == 22);
    CHECK(parse_all_ways(in, strlen(in), 21, &g));
    CHECK(g.n == 2 && g.m[0].too_big && g.m[1].too_big && g.m[0].size == 22);
    got_free(&g);
}

TEST(callback_error_stops)
{
    const char *in = "From a Tue Jan  2 15:04:05 2024\n\nx\n\nFrom b Tue Jan  2 15:04:05 2024\n\n"
                     "y\n\nFrom c Tue Jan  2 15:04:05 2024\n\nz\n";
    got g = {.stop_at = 2};
    CHECK(parse_all_ways(in, strlen(in), 0, &g));
    CHECK(g.rc == -EIO && g.n == 1);
    CHECK(strcmp(g.err.msg, "stop requested") == 0);
    got_free(&g);
}

/* The byte-at-a-time check over one input holding every case above. */
TEST(one_byte_equals_whole_on_mixed_input)
{
    static const char in[] =
        "From a@b Tue Jan  2 15:04:05 2024\r\nS: 1\r\n\r\n>From x\r\n\r\n"
        "From b Tue Jan  2 15:04:05 2024\nS: 2\n\nFrom y\n>>From z\n\x00\r\r\n\n"
        "From c garbage\nDate: 3 Jan 2024 00:00 +0000\n\n>\n>F\n>Fr\n>Fro\n>From\nFrom \n\n"
        "From d\n\n\n\n"
        "From e Tue Jan  2 15:04:05 2024\nlast";
    got g = {0};
    CHECK(parse_all_ways(in, sizeof(in) - 1, 0, &g));
    CHECK(g.rc == 0 && g.n == 6);
    CHECK(body_is(&g.m[1], "S: 2\r\n"));
    /* and every split into two chunks */
    for (size_t cut = 0; cut <= sizeof(in) - 1; cut++) {
        got h = {0};
        mbox_parser_options opt = {.now = NOW};
        mbox_parser *p = mbox_parser_new(&opt, collect, &h);
        int rc = mbox_parser_feed(p, in, cut, &h.err);
        if (rc == 0)
            rc = mbox_parser_feed(p, in + cut, sizeof(in) - 1 - cut, &h.err);
        if (rc == 0)
            rc = mbox_parser_finish(p, &h.err);
        h.rc = rc;
        mbox_parser_free(p);
        int ok = same(&g, &h);
        got_free(&h);
        CHECKM(ok, "split at %zu", cut);
    }
    got_free(&g);
}

/* Messages as import stores them (every LF after a CR, ending in CRLF),
 * built from pieces that stress the quoting and line-end rules. */
static void random_stored_body(unsigned *seed, buf *out)
{
    static const char *const pieces[] = {"From ", ">", ">From ", "From", "x", " ", "\r",
                                         "\0", "\r\n", "\r\n", "\r\n", "F", "rom "};
    buf_reset(out);
    int n = (int)(*seed % 40);
    for (int i = 0; i < n; i++) {
        *seed = *seed * 1103515245 + 12345;
        const char *p = pieces[(*seed >> 16) % 13];
        buf_append(out, p, (*seed >> 16) % 13 == 7 ? 1 : strlen(p));
    }
    *seed = *seed * 1103515245 + 12345;
    if (out->len && !(out->len >= 2 && out->data[out->len - 1] == '\n'))
        buf_append(out, "\r\n", 2);
    /* a bare LF cannot come out of import: make every LF a CRLF */
    buf fixed;
    buf_init(&fixed);
    maildir_lf_to_crlf(&fixed, out->data, out->len);
    buf_reset(out);
    buf_append(out, fixed.data, fixed.len);
    buf_free(&fixed);
}

TEST(mboxrd_round_trip)
{
    unsigned seed = 42;
    buf body, mbox;
    buf_init(&body);
    buf_init(&mbox);
    for (int round = 0; round < 300; round++) {
        buf_reset(&mbox);
        buf bodies[8];
        int64_t dates[8];
        for (int i = 0; i < 8; i++) {
            buf_init(&bodies[i]);
            random_stored_body(&seed, &body);
            buf_append(&bodies[i], body.data, body.len);
            dates[i] = (int64_t)(seed % 2000000000u);
            mbox_write_message(&mbox, bodies[i].data, bodies[i].len, dates[i]);
        }
        got g = {0};
        int ok = parse_all_ways(mbox.data, mbox.len, 0, &g);
        int good = ok && g.rc == 0 && g.n == 8;
        for (int i = 0; good && i < 8; i++)
            good = g.m[i].data.len == bodies[i].len &&
                   (!bodies[i].len || memcmp(g.m[i].data.data, bodies[i].data, bodies[i].len) == 0) &&
                   g.m[i].date == dates[i] && g.m[i].src == MBOX_DATE_FROM_LINE;
        for (int i = 0; i < 8; i++)
            buf_free(&bodies[i]);
        got_free(&g);
        CHECKM(good, "round %d", round);
    }
    buf_free(&body);
    buf_free(&mbox);
}

TEST(mbox_writer_format)
{
    buf out;
    buf_init(&out);
    const char *msg = "Return-Path: <a@b.example>\r\nS: x\r\n\r\nFrom me\r\n>From you\r\nend";
    mbox_write_message(&out, (const uint8_t *)msg, strlen(msg), 1704207845);
    const char *want = "From a@b.example Tue Jan  2 15:04:05 2024\nReturn-Path: <a@b.example>\n"
                       "S: x\n\n>From me\n>>From you\nend\n\n";
    CHECKM(out.len == strlen(want) && memcmp(out.data, want, out.len) == 0, "%s", out.data);
    buf_reset(&out);
    msg = "Return-Path: <>\r\n\r\n";
    mbox_write_message(&out, (const uint8_t *)msg, strlen(msg), 0);
    CHECK(strncmp((char *)out.data, "From MAILER-DAEMON Thu Jan  1 00:00:00 1970\n", 44) == 0);
    buf_free(&out);
}

/* ---- Maildir ---- */

static int write_file(const char *path, const char *data, size_t n, int64_t mtime)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return -1;
    int rc = fs_write_full(fd, data, n);
    struct timespec ts[2] = {{.tv_sec = mtime}, {.tv_sec = mtime}};
    futimens(fd, ts);
    close(fd);
    return rc;
}

static void make_maildir(const char *dir)
{
    char p[4200];
    mkdir(dir, 0700);
    snprintf(p, sizeof(p), "%s/cur", dir);
    mkdir(p, 0700);
    snprintf(p, sizeof(p), "%s/new", dir);
    mkdir(p, 0700);
    snprintf(p, sizeof(p), "%s/tmp", dir);
    mkdir(p, 0700);
}

TEST(maildir_list_sorted_with_flags)
{
    const char *t = t_tmpdir();
    char md[4096], p[4200];
    snprintf(md, sizeof(md), "%s/Maildir", t);
    make_maildir(md);
    snprintf(p, sizeof(p), "%s/cur/1700000300.M1.host:2,S", md);
    CHECK(write_file(p, "S: c\n\nthree\n", 12, 1700000300) == 0);
    snprintf(p, sizeof(p), "%s/new/1700000100.M1.host", md);
    CHECK(write_file(p, "S: a\n\none\n", 10, 1700000100) == 0);
    snprintf(p, sizeof(p), "%s/cur/1700000200.M2.host:2,FRTDS", md);
    CHECK(write_file(p, "S: b\r\n\r\ntwo", 11, 1700000200) == 0);
    snprintf(p, sizeof(p), "%s/cur/999.M9.host:2,a", md);
    CHECK(write_file(p, "S: 0\n\nzero\n", 11, 999) == 0);
    snprintf(p, sizeof(p), "%s/cur/.hidden", md);
    CHECK(write_file(p, "x", 1, 1) == 0);
    snprintf(p, sizeof(p), "%s/tmp/1700000400.M1.host", md);
    CHECK(write_file(p, "in progress", 11, 1) == 0);
    snprintf(p, sizeof(p), "%s/cur/nostamp:2,S", md);
    CHECK(write_file(p, "S: z\n\nlast\n", 11, 5) == 0);

    maildir_list l;
    hv_err err = {0};
    CHECKM(maildir_list_messages(md, &l, &err) == 0, "%s", err.msg);
    CHECK(l.n == 5);
    CHECK(strcmp(l.v[0].name, "999.M9.host:2,a") == 0 && l.v[0].flags == 0);
    CHECK(strcmp(l.v[1].name, "1700000100.M1.host") == 0 && l.v[1].flags == 0);
    CHECK(l.v[1].mtime == 1700000100);
    CHECK(l.v[2].flags == (STORE_FLAG_FLAGGED | STORE_FLAG_ANSWERED | STORE_FLAG_DELETED |
                           STORE_FLAG_DRAFT | STORE_FLAG_SEEN));
    CHECK(l.v[3].flags == STORE_FLAG_SEEN);
    CHECK(strcmp(l.v[4].name, "nostamp:2,S") == 0);

    buf body;
    buf_init(&body);
    uint64_t size;
    CHECK(maildir_read_message(l.v[1].path, 1000, &body, &size, &err) == 0);
    CHECK(body.len == 13 && memcmp(body.data, "S: a\r\n\r\none\r\n", 13) == 0 && size == 13);
    CHECK(maildir_read_message(l.v[2].path, 1000, &body, &size, &err) == 0);
    CHECK(body.len == 11 && memcmp(body.data, "S: b\r\n\r\ntwo", 11) == 0);
    CHECK(maildir_read_message(l.v[1].path, 12, &body, &size, &err) == -EFBIG);
    CHECK(size == 13);
    CHECK(maildir_read_message(l.v[1].path, 9, &body, &size, &err) == -EFBIG);
    unlink(l.v[3].path);
    CHECK(maildir_read_message(l.v[3].path, 1000, &body, &size, &err) == -ENOENT);
    buf_free(&body);
    maildir_list_free(&l);

    CHECK(maildir_is_maildir(md) == 1);
    CHECK(maildir_is_maildir(t) == 0);
    CHECK(maildir_list_messages(t, &l, &err) == -EINVAL);
}

TEST(maildir_flags_suffix_order)
{
    char s[16];
    maildir_flags_suffix(STORE_FLAG_SEEN | STORE_FLAG_DRAFT | STORE_FLAG_ANSWERED, s);
    CHECK(strcmp(s, ":2,DRS") == 0);
    maildir_flags_suffix(0, s);
    CHECK(strcmp(s, ":2,") == 0);
    maildir_flags_suffix(STORE_FLAG_SEEN | STORE_FLAG_ANSWERED | STORE_FLAG_FLAGGED |
                             STORE_FLAG_DELETED | STORE_FLAG_DRAFT | (1ull << 9),
                         s);
    CHECK(strcmp(s, ":2,DFRST") == 0);
    CHECK(maildir_flags_from_name("x:2,DFRST") ==
          (STORE_FLAG_SEEN | STORE_FLAG_ANSWERED | STORE_FLAG_FLAGGED | STORE_FLAG_DELETED |
           STORE_FLAG_DRAFT));
    CHECK(maildir_flags_from_name("x:1,S") == 0);
    CHECK(maildir_flags_from_name("x") == 0);
}

TEST(maildir_folder_names)
{
    static const struct { const char *mailbox, *dotted; } cases[] = {
        {"Sent", ".Sent"},
        {"A/B", ".A.B"},
        {"Entw\xc3\xbc" "rfe", ".Entw&APw-rfe"},
        {"a.b/c", ".a&AC4-b.c"},
        {"R&D", ".R&-D"},
        {"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e", ".&ZeVnLIqe-"},
        {"\xf0\x9f\x93\xa7 mail", ".&2D3c5w- mail"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char out[256];
        CHECKM(maildir_folder_name(cases[i].mailbox, out, sizeof(out)) == 0, "%s",
               cases[i].mailbox);
        CHECKM(strcmp(out, cases[i].dotted) == 0, "%s -> %s", cases[i].mailbox, out);
    }
    char out[8];
    CHECK(maildir_folder_name("A//B", out, sizeof(out)) == -EINVAL);
    CHECK(maildir_folder_name("bad\xff", out, sizeof(out)) == -EINVAL);
    CHECK(maildir_folder_name("far too long a name", out, sizeof(out)) == -ENAMETOOLONG);

    buf b;
    buf_init(&b);
    CHECK(maildir_mutf7_decode("Entw&APw-rfe", 12, &b) == 0);
    CHECK(strcmp((char *)b.data, "Entw\xc3\xbcrfe") == 0);
    static const char *bad[] = {"&", "&APw", "&-A&", "&2D0-", "&AP-", "&A*A-"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        buf_reset(&b);
        CHECKM(maildir_mutf7_decode(bad[i], strlen(bad[i]), &b) == -EINVAL, "%s", bad[i]);
    }
    buf_free(&b);

    const char *t = t_tmpdir();
    char p[4200];
    make_maildir(t);
    static const char *subs[] = {".Sent", ".A", ".A.B", ".Entw&APw-rfe", ".notmaildir", "plain"};
    for (size_t i = 0; i < 6; i++) {
        snprintf(p, sizeof(p), "%s/%s", t, subs[i]);
        if (strcmp(subs[i], ".notmaildir") == 0)
            mkdir(p, 0700);
        else
            make_maildir(p);
    }
    maildir_folder_list fl;
    hv_err err = {0};
    CHECKM(maildir_list_folders(t, &fl, &err) == 0, "%s", err.msg);
    CHECK(fl.n == 4);
    CHECK(strcmp(fl.v[0].name, "A") == 0);
    CHECK(strcmp(fl.v[1].name, "A/B") == 0);
    CHECK(strcmp(fl.v[2].name, "Entw\xc3\xbcrfe") == 0);
    CHECK(strcmp(fl.v[3].name, "Sent") == 0);
    maildir_folder_list_free(&fl);
    snprintf(p, sizeof(p), "%s/.X..Y", t);
    make_maildir(p);
    CHECK(maildir_list_folders(t, &fl, &err) == -EINVAL);
    CHECK(strstr(err.msg, ".X..Y") != NULL);
}

TEST(maildir_body_round_trip)
{
    const char *t = t_tmpdir();
    char p[4200];
    snprintf(p, sizeof(p), "%s/msg", t);
    unsigned seed = 7;
    buf body, lf, back;
    buf_init(&body);
    buf_init(&lf);
    buf_init(&back);
    for (int round = 0; round < 200; round++) {
        random_stored_body(&seed, &body);
        if (round % 3 == 0 && body.len >= 2)
            body.len -= 2; /* Maildir can hold a message without a final line end */
        buf_reset(&lf);
        mbox_crlf_to_lf(&lf, body.data, body.len, 0);
        CHECK(write_file(p, (const char *)lf.data, lf.len, 1) == 0);
        uint64_t size;
        hv_err err;
        CHECK(maildir_read_message(p, 1 << 20, &back, &size, &err) == 0);
        CHECKM(back.len == body.len && (!body.len || memcmp(back.data, body.data, body.len) == 0),
               "round %d", round);
    }
    buf_free(&body);
    buf_free(&lf);
    buf_free(&back);
}

int main(void)
{
    RUN(empty_file_is_empty_mbox);
    RUN(not_an_mbox);
    RUN(two_messages_lf);
    RUN(crlf_input_same_as_lf);
    RUN(lone_cr_kept);
    RUN(from_only_after_blank_line);
    RUN(mboxrd_unquoting);
    RUN(quoted_from_after_blank_is_not_a_separator);
    RUN(missing_final_newline);
    RUN(trailing_blank_lines);
    RUN(nul_bytes_kept);
    RUN(long_lines);
    RUN(dates_fallbacks);
    RUN(rfc5322_dates);
    RUN(asctime_round_trip);
    RUN(oversize_reported_and_skipped);
    RUN(size_limit_is_exact);
    RUN(callback_error_stops);
    RUN(one_byte_equals_whole_on_mixed_input);
    RUN(mboxrd_round_trip);
    RUN(mbox_writer_format);
    RUN(maildir_list_sorted_with_flags);
    RUN(maildir_flags_suffix_order);
    RUN(maildir_folder_names);
    RUN(maildir_body_round_trip);
    return t_done();
}
