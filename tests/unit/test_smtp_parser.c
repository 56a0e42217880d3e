/*
 * test_smtp_parser.c - the server-side SMTP parsers: command lines, commands
 * with paths and parameters, message data (DATA and BDAT), AUTH payloads.
 *
 * The line and data readers are fed each input whole, one byte at a time
 * and in chunks of 2, 3 and 7 bytes; all must give the same result. The
 * smuggling cases are the published ones (bare LF or bare CR around the
 * final dot): none may end the message early.
 */
#include <stdlib.h>
#include <string.h>

#include "smtp/smtp_parser.h"
#include "testlib.h"

/* ---- lines ---- */

/* Feeds input in chunks; writes "OK:text" / "BAD:errors" per line into out. */
static void lines(const char *in, size_t n, size_t chunk, size_t max, buf *out)
{
    smtp_line_reader r;
    smtp_line_init(&r, max);
    size_t off = 0;
    while (off < n) {
        size_t take = chunk && n - off > chunk ? chunk : n - off;
        size_t pos = 0;
        while (pos < take) {
            size_t used;
            enum smtp_line_result res = smtp_line_feed(&r, in + off + pos, take - pos, &used);
            pos += used;
            if (res == SMTP_LINE_OK) {
                size_t len;
                const char *t = smtp_line_text(&r, &len);
                buf_printf(out, "OK:%.*s|", (int)len, t);
            } else if (res == SMTP_LINE_BAD) {
                buf_printf(out, "BAD:%u|", smtp_line_errors(&r));
            }
        }
        off += take;
    }
    buf_put_u8(out, 0);
    smtp_line_free(&r);
}

static int lines_check(const char *in, size_t n, size_t max, const char *want)
{
    static const size_t chunks[] = {0, 1, 2, 3, 7};
    for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
        buf b;
        buf_init(&b);
        lines(in, n, chunks[i], max, &b);
        int ok = strcmp((char *)b.data, want) == 0;
        if (!ok)
            fprintf(stderr, "  chunk %zu: got %s want %s\n", chunks[i], (char *)b.data, want);
        buf_free(&b);
        if (!ok)
            return 0;
    }
    return 1;
}

TEST(line_basic)
{
    const char in[] = "EHLO a\r\nMAIL FROM:<>\r\n\r\npartial";
    CHECK(lines_check(in, sizeof(in) - 1, 0, "OK:EHLO a|OK:MAIL FROM:<>|OK:|"));
}

TEST(line_errors)
{
    char buf1[] = "NOOP\nQUIT\r\n";
    CHECK(lines_check(buf1, sizeof(buf1) - 1, 0, "BAD:2|OK:QUIT|"));
    char buf2[] = "NO\rOP\r\nQUIT\r\n";
    CHECK(lines_check(buf2, sizeof(buf2) - 1, 0, "BAD:4|OK:QUIT|"));
    char buf3[] = "NO\0OP\r\nQUIT\r\n";
    CHECK(lines_check(buf3, sizeof(buf3) - 1, 0, "BAD:8|OK:QUIT|"));
    char buf4[] = "NOOP\r\r\nQUIT\r\n";
    CHECK(lines_check(buf4, sizeof(buf4) - 1, 0, "BAD:4|OK:QUIT|"));
    /* max 8: 6 bytes of text and CRLF fit, 7 do not */
    char buf5[] = "123456\r\n1234567\r\nok\r\n";
    CHECK(lines_check(buf5, sizeof(buf5) - 1, 8, "OK:123456|BAD:1|OK:ok|"));
}

TEST(line_long_bounded)
{
    size_t n = 100000;
    char *in = malloc(n + 2);
    memset(in, 'a', n);
    in[n] = '\r';
    in[n + 1] = '\n';
    smtp_line_reader r;
    smtp_line_init(&r, 0);
    size_t used;
    CHECK(smtp_line_feed(&r, in, n + 2, &used) == SMTP_LINE_BAD);
    CHECK(used == n + 2);
    CHECK(smtp_line_errors(&r) == SMTP_LINE_TOO_LONG);
    CHECK(r.line.cap <= 2 * SMTP_LINE_MAX_ANY);
    smtp_line_free(&r);
    free(in);
}

/* ---- commands ---- */

static int parse(const char *line, unsigned flags, smtp_cmd *c, char *reply)
{
    return smtp_parse_command(line, strlen(line), flags, c, reply, 512);
}

TEST(cmd_verbs)
{
    smtp_cmd c;
    char reply[512];
    CHECK(parse("EHLO client.example", 0, &c, reply) == 0 && c.verb == SMTP_V_EHLO);
    CHECK(strcmp(c.helo, "client.example") == 0);
    CHECK(parse("helo [192.0.2.1]", 0, &c, reply) == 0 && c.verb == SMTP_V_HELO);
    CHECK(strcmp(c.helo, "[192.0.2.1]") == 0);
    CHECK(parse("EHLO", 0, &c, reply) < 0 && strncmp(reply, "501 5.5.4", 9) == 0);
    CHECK(parse("data", 0, &c, reply) == 0 && c.verb == SMTP_V_DATA);
    CHECK(parse("DATA x", 0, &c, reply) < 0 && strncmp(reply, "501", 3) == 0);
    CHECK(parse("QUIT ", 0, &c, reply) == 0 && c.verb == SMTP_V_QUIT);
    CHECK(parse("XYZZY", 0, &c, reply) < 0 && strncmp(reply, "500 5.5.1", 9) == 0);
    CHECK(parse("", 0, &c, reply) < 0 && strncmp(reply, "500 5.5.1", 9) == 0);
    CHECK(parse("LHLO x", 0, &c, reply) < 0);
    CHECK(parse("LHLO x", SMTP_PARSE_LMTP, &c, reply) == 0 && c.verb == SMTP_V_LHLO);
    CHECK(parse("EHLO x", SMTP_PARSE_LMTP, &c, reply) < 0);
    CHECK(parse("VRFY", 0, &c, reply) < 0);
    CHECK(parse("VRFY bob", 0, &c, reply) == 0 && strcmp(c.arg, "bob") == 0);
    CHECK(parse("NOOP anything", 0, &c, reply) == 0);
    CHECK(parse("STARTTLS", 0, &c, reply) == 0 && c.verb == SMTP_V_STARTTLS);
}

TEST(cmd_line_limits)
{
    smtp_cmd c;
    char reply[512];
    char line[SMTP_LINE_MAX_ANY + 10];
    /* NOOP: 510 bytes of text is the most (512 with CRLF) */
    memset(line, 'a', sizeof(line));
    memcpy(line, "NOOP ", 5);
    line[510] = 0;
    CHECK(parse(line, 0, &c, reply) == 0);
    line[510] = 'a';
    line[511] = 0;
    CHECK(parse(line, 0, &c, reply) < 0 && strncmp(reply, "500 5.5.2", 9) == 0);
    /* MAIL may be longer (parameters) */
    snprintf(line, sizeof(line), "MAIL FROM:<a@b.example> ENVID=");
    size_t l = strlen(line);
    memset(line + l, 'x', 100);
    line[l + 100] = 0;
    CHECK(parse(line, 0, &c, reply) == 0);
    CHECK(strlen(c.envid) == 100);
    line[l + 101] = 0;
    line[l + 100] = 'x';
    CHECK(parse(line, 0, &c, reply) < 0);
}

TEST(cmd_mail)
{
    smtp_cmd c;
    char reply[512];
    CHECK(parse("MAIL FROM:<>", 0, &c, reply) == 0 && c.path.addr[0] == 0);
    CHECK(parse("MAIL FROM:<Bob@Example.ORG>", 0, &c, reply) == 0);
    CHECK(strcmp(c.path.addr, "Bob@Example.ORG") == 0 && c.path.at == 3);
    CHECK(parse("mail from: <a@b.c>", 0, &c, reply) == 0 && strcmp(c.path.addr, "a@b.c") == 0);
    CHECK(parse("MAIL FROM:a@b.c", 0, &c, reply) < 0 && strncmp(reply, "501 5.1.7", 9) == 0);
    CHECK(parse("MAIL TO:<a@b.c>", 0, &c, reply) < 0);
    CHECK(parse("MAIL FROM:<a@b.c> SIZE=1000 BODY=8BITMIME RET=HDRS ENVID=QQ+2B1", 0, &c,
                reply) == 0);
    CHECK(c.has_size && c.size == 1000 && c.body == SMTP_BODY_8BITMIME && c.ret == SMTP_RET_HDRS);
    CHECK(strcmp(c.envid, "QQ+1") == 0);
    CHECK(parse("MAIL FROM:<a@b.c> SIZE=99999999999999999999999", 0, &c, reply) == 0);
    CHECK(c.size == UINT64_MAX);
    CHECK(parse("MAIL FROM:<a@b.c> SIZE=12x", 0, &c, reply) < 0);
    CHECK(parse("MAIL FROM:<a@b.c> SIZE=1 SIZE=2", 0, &c, reply) < 0);
    CHECK(parse("MAIL FROM:<a@b.c> BODY=BINARYMIME", 0, &c, reply) < 0 &&
          strncmp(reply, "555", 3) == 0);
    CHECK(parse("MAIL FROM:<a@b.c> FOO=bar", 0, &c, reply) < 0 && strncmp(reply, "555", 3) == 0);
    CHECK(parse("MAIL FROM:<a@b.c> AUTH=<>", 0, &c, reply) == 0 && c.has_auth && !c.auth[0]);
    CHECK(parse("MAIL FROM:<a@b.c> AUTH=x+40y.z", 0, &c, reply) == 0 &&
          strcmp(c.auth, "x@y.z") == 0);
    CHECK(parse("MAIL FROM:<a@b.c> ENVID=bad+zz", 0, &c, reply) < 0);
    CHECK(parse("MAIL FROM:<a@b.c> ENVID=a+0", 0, &c, reply) < 0);
    CHECK(parse("MAIL FROM:<a@b.c> XHAVEN-DID=x", SMTP_PARSE_LMTP, &c, reply) < 0);
    CHECK(parse("MAIL FROM:<a@b.c>   ", 0, &c, reply) == 0);
    CHECK(parse("MAIL FROM:<a@b.c>x", 0, &c, reply) < 0);
    /* UTF-8 needs SMTPUTF8 */
    CHECK(parse("MAIL FROM:<j\xc3\xb6rg@b.c>", 0, &c, reply) < 0 &&
          strncmp(reply, "553 5.6.7", 9) == 0);
    CHECK(parse("MAIL FROM:<j\xc3\xb6rg@b.c> SMTPUTF8", 0, &c, reply) == 0 && c.path.utf8 &&
          c.smtputf8);
    /* malformed UTF-8 */
    CHECK(parse("MAIL FROM:<j\xc3@b.c> SMTPUTF8", 0, &c, reply) < 0);
    CHECK(parse("MAIL FROM:<j\xc0\xaf@b.c> SMTPUTF8", 0, &c, reply) < 0);
}

TEST(cmd_paths)
{
    smtp_cmd c;
    char reply[512];
    /* quoted local parts: unquoted when plain, kept quoted otherwise */
    CHECK(parse("RCPT TO:<\"bob\"@x.org>", 0, &c, reply) == 0);
    CHECK(strcmp(c.path.addr, "bob@x.org") == 0);
    CHECK(parse("RCPT TO:<\"b o\\\"b\"@x.org>", 0, &c, reply) == 0);
    CHECK(strcmp(c.path.addr, "\"b o\\\"b\"@x.org") == 0);
    CHECK(parse("RCPT TO:<\"unterminated@x.org>", 0, &c, reply) < 0);
    /* source routes are dropped */
    CHECK(parse("RCPT TO:<@relay.example,@r2.example:bob@x.org>", 0, &c, reply) == 0);
    CHECK(strcmp(c.path.addr, "bob@x.org") == 0);
    CHECK(parse("RCPT TO:<@relay.example bob@x.org>", 0, &c, reply) < 0);
    /* postmaster without a domain, RCPT only */
    CHECK(parse("RCPT TO:<Postmaster>", 0, &c, reply) == 0 && c.path.postmaster);
    CHECK(parse("RCPT TO:<bob>", 0, &c, reply) < 0 && strncmp(reply, "501 5.1.3", 9) == 0);
    CHECK(parse("MAIL FROM:<postmaster>", 0, &c, reply) < 0);
    CHECK(parse("RCPT TO:<>", 0, &c, reply) < 0);
    /* domains */
    CHECK(parse("RCPT TO:<a@[192.0.2.1]>", 0, &c, reply) == 0);
    CHECK(parse("RCPT TO:<a@[IPv6:2001:db8::1]>", 0, &c, reply) == 0);
    CHECK(parse("RCPT TO:<a@-x.org>", 0, &c, reply) < 0);
    CHECK(parse("RCPT TO:<a@x-.org>", 0, &c, reply) < 0);
    CHECK(parse("RCPT TO:<a@x..org>", 0, &c, reply) < 0);
    CHECK(parse("RCPT TO:<a@x.org.>", 0, &c, reply) < 0);
    CHECK(parse("RCPT TO:<a@>", 0, &c, reply) < 0);
    CHECK(parse("RCPT TO:<.a@x.org>", 0, &c, reply) < 0);
    CHECK(parse("RCPT TO:<a..b@x.org>", 0, &c, reply) < 0);
    CHECK(parse("RCPT TO:<a b@x.org>", 0, &c, reply) < 0);
    CHECK(parse("RCPT TO:<a@x.org", 0, &c, reply) < 0);
    /* local part of 64 is the most */
    char line[400];
    memset(line, 0, sizeof(line));
    strcpy(line, "RCPT TO:<");
    memset(line + 9, 'l', 64);
    strcat(line, "@x.org>");
    CHECK(parse(line, 0, &c, reply) == 0);
    memset(line, 0, sizeof(line));
    strcpy(line, "RCPT TO:<");
    memset(line + 9, 'l', 65);
    strcat(line, "@x.org>");
    CHECK(parse(line, 0, &c, reply) < 0);
}

TEST(cmd_rcpt_params)
{
    smtp_cmd c;
    char reply[512];
    CHECK(parse("RCPT TO:<a@b.c> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a+40b.c", 0, &c, reply) ==
          0);
    CHECK(c.notify == (SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_DELAY));
    CHECK(strcmp(c.orcpt, "rfc822;a+40b.c") == 0);
    CHECK(parse("RCPT TO:<a@b.c> NOTIFY=NEVER", 0, &c, reply) == 0 &&
          c.notify == SMTP_NOTIFY_NEVER);
    CHECK(parse("RCPT TO:<a@b.c> NOTIFY=NEVER,SUCCESS", 0, &c, reply) < 0);
    CHECK(parse("RCPT TO:<a@b.c> NOTIFY=SUCCESS,", 0, &c, reply) < 0);
    CHECK(parse("RCPT TO:<a@b.c> NOTIFY=SUCCESS,SUCCESS", 0, &c, reply) < 0);
    CHECK(parse("RCPT TO:<a@b.c> ORCPT=rfc822", 0, &c, reply) < 0);
    CHECK(parse("RCPT TO:<a@b.c> SIZE=10", 0, &c, reply) < 0);
    CHECK(parse("RCPT TO:<a@b.c> XHAVEN-DID=0123456789abcdef-0", 0, &c, reply) < 0);
    CHECK(parse("RCPT TO:<a@b.c> XHAVEN-DID=0123456789abcdef-0", SMTP_PARSE_LMTP, &c, reply) ==
          0);
    CHECK(strcmp(c.did, "0123456789abcdef-0") == 0);
    char line[200];
    snprintf(line, sizeof(line), "RCPT TO:<a@b.c> XHAVEN-DID=%065d", 0);
    CHECK(parse(line, SMTP_PARSE_LMTP, &c, reply) < 0);
}

TEST(cmd_bdat_auth)
{
    smtp_cmd c;
    char reply[512];
    CHECK(parse("BDAT 100", 0, &c, reply) == 0 && c.bdat_size == 100 && !c.bdat_last);
    CHECK(parse("BDAT 0 LAST", 0, &c, reply) == 0 && c.bdat_size == 0 && c.bdat_last);
    CHECK(parse("bdat 5 last", 0, &c, reply) == 0 && c.bdat_last);
    /* size readable: the session skips it; unreadable: it must close */
    CHECK(parse("BDAT 5 FIRST", 0, &c, reply) < 0 && c.bdat_size == 5);
    CHECK(parse("BDAT x", 0, &c, reply) < 0 && c.bdat_size == UINT64_MAX);
    CHECK(parse("BDAT 99999999999999999999999", 0, &c, reply) < 0 &&
          c.bdat_size == UINT64_MAX);
    CHECK(parse("AUTH PLAIN", 0, &c, reply) == 0 && strcmp(c.mech, "PLAIN") == 0 && !c.initial);
    CHECK(parse("auth login dXNlcg==", 0, &c, reply) == 0 && strcmp(c.mech, "LOGIN") == 0);
    CHECK(c.initial && strcmp(c.initial, "dXNlcg==") == 0);
    CHECK(parse("AUTH PLAIN a*b", 0, &c, reply) < 0);
    CHECK(parse("AUTH", 0, &c, reply) < 0);
}

/* ---- data ---- */

typedef struct data_out {
    int ended;
    size_t rest;      /* bytes left after the end */
    unsigned errors;
    uint64_t size;
    buf msg;
} data_out;

static void data_run(const char *in, size_t n, size_t chunk, int dot, uint64_t max, data_out *o)
{
    memset(o, 0, sizeof(*o));
    buf_init(&o->msg);
    smtp_data_reader r;
    smtp_data_init(&r, dot, max, &o->msg);
    size_t off = 0;
    while (off < n && !o->ended) {
        size_t take = chunk && n - off > chunk ? chunk : n - off;
        size_t used;
        if (smtp_data_feed(&r, in + off, take, &used) == SMTP_DATA_END) {
            o->ended = 1;
            o->rest = n - off - used;
        }
        off += used;
    }
    if (!dot)
        smtp_data_finish(&r);
    o->errors = r.errors;
    o->size = r.size;
}

/* Checks every chunking gives the same; returns the whole-feed result. */
static int data_check(const char *in, size_t n, int dot, uint64_t max, data_out *res)
{
    static const size_t chunks[] = {1, 2, 3, 7};
    data_run(in, n, 0, dot, max, res);
    for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
        data_out o;
        data_run(in, n, chunks[i], dot, max, &o);
        int same = o.ended == res->ended && o.rest == res->rest && o.errors == res->errors &&
                   o.size == res->size && o.msg.len == res->msg.len &&
                   (o.msg.len == 0 || memcmp(o.msg.data, res->msg.data, o.msg.len) == 0);
        buf_free(&o.msg);
        if (!same) {
            fprintf(stderr, "  chunk %zu differs\n", chunks[i]);
            return 0;
        }
    }
    return 1;
}

static int msg_is(data_out *o, const char *want)
{
    return o->msg.len == strlen(want) && memcmp(o->msg.data, want, o->msg.len) == 0;
}

TEST(data_basic)
{
    data_out o;
    const char in[] = "Subject: x\r\n\r\n..dot\r\n.x\r\nbody\r\n.\r\nQUIT\r\n";
    CHECK(data_check(in, sizeof(in) - 1, 1, 0, &o));
    CHECK(o.ended && o.errors == 0 && o.rest == 6);
    CHECK(msg_is(&o, "Subject: x\r\n\r\n.dot\r\nx\r\nbody\r\n"));
    buf_free(&o.msg);
    /* an empty message */
    CHECK(data_check(".\r\n", 3, 1, 0, &o));
    CHECK(o.ended && o.errors == 0 && o.msg.len == 0 && o.rest == 0);
    buf_free(&o.msg);
    /* no end yet */
    CHECK(data_check("a\r\n.", 4, 1, 0, &o));
    CHECK(!o.ended && o.errors == 0);
    buf_free(&o.msg);
}

TEST(data_smuggling)
{
    /* Each must not end before the real CRLF.CRLF, and must be refused. */
    static const char *cases[] = {
        "a\n.\nMAIL FROM:<x@y>\r\n.\r\n",
        "a\n.\r\nMAIL FROM:<x@y>\r\n.\r\n",
        "a\r\n.\nMAIL FROM:<x@y>\r\n.\r\n",
        "a\r.\rMAIL FROM:<x@y>\r\n.\r\n",
        "a\r\n.\rMAIL FROM:<x@y>\r\n.\r\n",
        "a\r.\r\nMAIL FROM:<x@y>\r\n.\r\n",
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        data_out o;
        size_t n = strlen(cases[i]);
        CHECK(data_check(cases[i], n, 1, 0, &o));
        CHECKM(o.ended && o.rest == 0, "case %zu ended=%d rest=%zu", i, o.ended, o.rest);
        CHECKM(o.errors & (SMTP_DATA_BARE_LF | SMTP_DATA_BARE_CR), "case %zu errors=%u", i,
               o.errors);
        CHECK(strncmp(smtp_data_error_reply(o.errors), "550 5.6.11", 10) == 0);
        buf_free(&o.msg);
    }
}

TEST(data_limits)
{
    data_out o;
    /* NUL */
    const char nul[] = "a\0b\r\n.\r\n";
    CHECK(data_check(nul, sizeof(nul) - 1, 1, 0, &o));
    CHECK(o.ended && o.errors == SMTP_DATA_NUL && o.msg.len == 0);
    buf_free(&o.msg);
    /* a line of 998 + CRLF passes, 999 + CRLF does not */
    char *in = malloc(3000);
    memset(in, 'x', 998);
    memcpy(in + 998, "\r\n.\r\n", 5);
    CHECK(data_check(in, 1003, 1, 0, &o));
    CHECK(o.ended && o.errors == 0 && o.msg.len == 1000);
    buf_free(&o.msg);
    memset(in, 'x', 999);
    memcpy(in + 999, "\r\n.\r\n", 5);
    CHECK(data_check(in, 1004, 1, 0, &o));
    CHECK(o.ended && o.errors == SMTP_DATA_LONG_LINE);
    buf_free(&o.msg);
    /* the stuffed dot counts on the wire: "." + 998 + CRLF is too long */
    in[0] = '.';
    memset(in + 1, '.', 998);
    memcpy(in + 999, "\r\n.\r\n", 5);
    CHECK(data_check(in, 1004, 1, 0, &o));
    CHECK(o.errors == SMTP_DATA_LONG_LINE);
    buf_free(&o.msg);
    /* size: counted to the end, nothing kept */
    const char big[] = "0123456789\r\n0123456789\r\n.\r\n";
    CHECK(data_check(big, sizeof(big) - 1, 1, 12, &o));
    CHECK(o.ended && o.errors == SMTP_DATA_TOO_BIG && o.size == 24 && o.msg.len == 0);
    CHECK(strncmp(smtp_data_error_reply(o.errors), "552 5.3.4", 9) == 0);
    buf_free(&o.msg);
    CHECK(data_check(big, sizeof(big) - 1, 1, 24, &o));
    CHECK(o.ended && o.errors == 0 && o.size == 24);
    buf_free(&o.msg);
    free(in);
}

TEST(data_bdat)
{
    data_out o;
    const char in[] = "a\r\n.\r\nb\r\n";
    CHECK(data_check(in, sizeof(in) - 1, 0, 0, &o));
    CHECK(!o.ended && o.errors == 0 && msg_is(&o, "a\r\n.\r\nb\r\n"));
    buf_free(&o.msg);
    CHECK(data_check("a\nb", 3, 0, 0, &o));
    CHECK(o.errors == SMTP_DATA_BARE_LF);
    buf_free(&o.msg);
    /* a CR at the very end of the last chunk is bare */
    CHECK(data_check("a\r", 2, 0, 0, &o));
    CHECK(o.errors == SMTP_DATA_BARE_CR);
    buf_free(&o.msg);
}

/* ---- AUTH ---- */

TEST(auth_payloads)
{
    char out[64];
    CHECK(smtp_b64_decode("AGJvYgBzZWNyZXQ=", 16, out) == 11);
    const char *z, *c, *p;
    char raw[16];
    memcpy(raw, out, 11);
    CHECK(smtp_sasl_plain(raw, 11, &z, &c, &p) == 0);
    CHECK(*z == 0 && strcmp(c, "bob") == 0 && strcmp(p, "secret") == 0);
    CHECK(smtp_b64_decode("=", 1, out) == 0);
    CHECK(smtp_b64_decode("AGJvYgBzZWNyZXQ", 15, out) == 11); /* padding optional */
    CHECK(smtp_b64_decode("A", 1, out) < 0);
    CHECK(smtp_b64_decode("AB=C", 4, out) < 0);
    CHECK(smtp_b64_decode("A*==", 4, out) < 0);
    CHECK(smtp_b64_decode("AB===", 5, out) < 0);
    /* three fields, none empty but authzid, no extra NUL */
    memcpy(raw, "a\0b\0c\0d", 7);
    CHECK(smtp_sasl_plain(raw, 7, &z, &c, &p) < 0);
    memcpy(raw, "\0\0c", 3);
    CHECK(smtp_sasl_plain(raw, 3, &z, &c, &p) < 0);
    memcpy(raw, "\0b\0", 3);
    CHECK(smtp_sasl_plain(raw, 3, &z, &c, &p) < 0);
    memcpy(raw, "nonul", 5);
    CHECK(smtp_sasl_plain(raw, 5, &z, &c, &p) < 0);
}

int main(void)
{
    RUN(line_basic);
    RUN(line_errors);
    RUN(line_long_bounded);
    RUN(cmd_verbs);
    RUN(cmd_line_limits);
    RUN(cmd_mail);
    RUN(cmd_paths);
    RUN(cmd_rcpt_params);
    RUN(cmd_bdat_auth);
    RUN(data_basic);
    RUN(data_smuggling);
    RUN(data_limits);
    RUN(data_bdat);
    RUN(auth_payloads);
    return t_done();
}
