/*
 * test_http_parser.c - the http service's input readers: the request-head
 * parser (src/http/http_parser.h) and the move progress files
 * (src/http/http_moves.c).
 *
 * Every request is fed whole, one byte at a time and in chunks of 2, 3 and
 * 7 bytes; all must give the same result, written as a string: "GET
 * /path?q 1 ka=1 path=/path" for a request, "ERR 414" for a refusal, one
 * entry per request for pipelined input.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "http/http_internal.h"
#include "http/http_parser.h"
#include "lib/buf.h"
#include "testlib.h"

/* Feeds in[0..n) in chunks (0: whole) and describes what came out. */
static void run(const char *in, size_t n, size_t chunk, buf *out)
{
    http_parser p;
    http_parser_init(&p);
    size_t off = 0;
    while (off < n) {
        size_t take = chunk && n - off > chunk ? chunk : n - off;
        size_t pos = 0;
        while (pos < take) {
            size_t used, left = take - pos;
            int rc = http_parser_feed(&p, in + off + pos, left, &used);
            pos += used;
            if (rc == HTTP_PARSE_ERROR) {
                buf_printf(out, "ERR %d|", p.status);
                buf_put_u8(out, 0);
                return;
            }
            if (rc == HTTP_PARSE_DONE) {
                const http_request *r = &p.req;
                buf_printf(out, "%s %s %d ka=%d path=%.*s|", r->method, r->target, r->minor,
                           r->keep_alive, (int)r->path_len, r->target + r->path_off);
                http_parser_init(&p);
            } else if (used != left) {
                buf_printf(out, "SHORT|"); /* "more" must take everything */
                buf_put_u8(out, 0);
                return;
            }
        }
        off += take;
    }
    if (p.head_len)
        buf_printf(out, "PARTIAL|");
    buf_put_u8(out, 0);
}

static int check(const char *in, size_t n, const char *want)
{
    static const size_t chunks[] = {0, 1, 2, 3, 7};
    for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
        buf b;
        buf_init(&b);
        run(in, n, chunks[i], &b);
        int ok = strcmp((char *)b.data, want) == 0;
        if (!ok)
            fprintf(stderr, "  chunk %zu: got %s want %s\n", chunks[i], (char *)b.data, want);
        buf_free(&b);
        if (!ok)
            return 0;
    }
    return 1;
}

#define CHECK_REQ(in, want) CHECK(check(in, sizeof(in) - 1, want))

TEST(requests)
{
    CHECK_REQ("GET /metrics HTTP/1.1\r\nHost: localhost:8080\r\nAccept: */*\r\n\r\n",
              "GET /metrics 1 ka=1 path=/metrics|");
    CHECK_REQ("GET /health?verbose=1 HTTP/1.0\r\n\r\n",
              "GET /health?verbose=1 0 ka=0 path=/health|");
    CHECK_REQ("HEAD / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", "HEAD / 0 ka=1 path=/|");
    CHECK_REQ("GET /m HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n",
              "GET /m 1 ka=0 path=/m|");
    /* absolute-form: the path is what routes */
    CHECK_REQ("GET http://node:8080/metrics?x HTTP/1.1\r\nHost: node\r\n\r\n",
              "GET http://node:8080/metrics?x 1 ka=1 path=/metrics|");
    CHECK_REQ("GET HTTP://node HTTP/1.1\r\nHost: node\r\n\r\n", "GET HTTP://node 1 ka=1 path=|");
    /* lone LF ends lines; empty lines before the request line are skipped */
    CHECK_REQ("\r\n\nGET /health HTTP/1.1\nHost: x\n\n", "GET /health 1 ka=1 path=/health|");
    /* empty and whitespace-padded values; a name of any length */
    CHECK_REQ("GET / HTTP/1.1\r\nHost:\r\nX-A-Very-Long-Field-Name-Indeed: \t v \t\r\n"
              "Content-Length:  0 \r\n\r\n", "GET / 1 ka=1 path=/|");
    /* obs-text in a value is allowed */
    CHECK_REQ("GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: caf\xc3\xa9\r\n\r\n",
              "GET / 1 ka=1 path=/|");
    /* pipelined: two heads in one piece */
    CHECK_REQ("GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.0\r\n\r\n",
              "GET /a 1 ka=1 path=/a|GET /b 0 ka=0 path=/b|");
    /* method case is kept: the server judges it */
    CHECK_REQ("get / HTTP/1.0\r\n\r\n", "get / 0 ka=0 path=/|");
    CHECK_REQ("GET /health HTTP/1.1\r\nHost: x\r\n", "PARTIAL|");
}

TEST(refusals)
{
    CHECK_REQ("GET /health HTTP/1.1\r\n\r\n", "ERR 400|");                  /* no Host */
    CHECK_REQ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "ERR 400|");   /* two */
    CHECK_REQ("GET / HTTP/1.1\rHost: a\r\n\r\n", "ERR 400|");               /* bare CR */
    CHECK_REQ("GET / HTTP/1.1\r\nHost: a\r\r\n\r\n", "ERR 400|");
    CHECK_REQ("GET / HTTP/1.1\r\nHost: a\r\n\r\r\n", "ERR 400|");
    CHECK_REQ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", "ERR 400|");            /* space before : */
    CHECK_REQ("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", "ERR 400|");  /* obs-fold */
    CHECK_REQ("GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n", "ERR 400|");         /* control */
    CHECK_REQ("GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n", "ERR 400|");          /* NUL */
    CHECK_REQ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", "ERR 400|");
    CHECK_REQ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n", "ERR 400|");
    CHECK_REQ("GET / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\n\r\n", "ERR 400|");
    CHECK_REQ("GET  / HTTP/1.1\r\n", "ERR 400|");                           /* two spaces */
    CHECK_REQ("GET / HTTP/1.1 \r\n", "ERR 400|");
    CHECK_REQ("GET /\r\n\r\n", "ERR 400|");                                 /* HTTP/0.9 */
    CHECK_REQ("GET * HTTP/1.1\r\nHost: a\r\n\r\n", "ERR 400|");
    CHECK_REQ("GET /a\x7f HTTP/1.1\r\n", "ERR 400|");
    CHECK_REQ("G(T / HTTP/1.1\r\n", "ERR 400|");
    CHECK_REQ("GET / HTTP/1.2\r\n", "ERR 505|");
    CHECK_REQ("GET / HTTP/2.0\r\n", "ERR 505|");
    CHECK_REQ("GET / HTTX/1.1\r\n", "ERR 400|");
    CHECK_REQ("GETGETGETGETGETGETGET / HTTP/1.1\r\n", "ERR 501|");
}

/* The limits, at and one past each. */
TEST(limits)
{
    buf in;
    buf_init(&in);
    /* target: 1024 bytes pass, 1025 are refused with 414 */
    buf_append_str(&in, "GET /");
    for (int i = 0; i < HTTP_TARGET_MAX - 1; i++)
        buf_put_u8(&in, 'a');
    buf_append_str(&in, " HTTP/1.0\r\n\r\n");
    buf out;
    buf_init(&out);
    run((char *)in.data, in.len, 0, &out);
    CHECKM(strncmp((char *)out.data, "GET /aaa", 8) == 0, "%s", (char *)out.data);
    buf_reset(&in);
    buf_reset(&out);
    buf_append_str(&in, "GET /");
    for (int i = 0; i < HTTP_TARGET_MAX; i++)
        buf_put_u8(&in, 'a');
    buf_append_str(&in, " HTTP/1.0\r\n\r\n");
    CHECK(check((char *)in.data, in.len, "ERR 414|"));

    /* the head: exactly HTTP_HEAD_MAX bytes pass, one more is 431 */
    for (int extra = 0; extra <= 1; extra++) {
        buf_reset(&in);
        buf_append_str(&in, "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ");
        size_t fill = HTTP_HEAD_MAX - in.len - 4 + (size_t)extra; /* "\r\n\r\n" ends it */
        for (size_t i = 0; i < fill; i++)
            buf_put_u8(&in, 'p');
        buf_append_str(&in, "\r\n\r\n");
        CHECK(in.len == (size_t)HTTP_HEAD_MAX + (size_t)extra);
        CHECK(check((char *)in.data, in.len, extra ? "ERR 431|" : "GET / 1 ka=1 path=/|"));
    }

    /* 64 fields pass, 65 are 431 */
    for (int extra = 0; extra <= 1; extra++) {
        buf_reset(&in);
        buf_append_str(&in, "GET / HTTP/1.1\r\nHost: x\r\n");
        for (int i = 1; i < HTTP_FIELDS_MAX + extra; i++)
            buf_printf(&in, "X-%d: y\r\n", i);
        buf_append_str(&in, "\r\n");
        CHECK(check((char *)in.data, in.len, extra ? "ERR 431|" : "GET / 1 ka=1 path=/|"));
    }

    /* endless empty lines before a request still hit the head limit */
    buf_reset(&in);
    for (int i = 0; i < HTTP_HEAD_MAX; i++)
        buf_append_str(&in, "\r\n");
    CHECK(check((char *)in.data, in.len, "ERR 431|"));
    buf_free(&in);
    buf_free(&out);
}

/* After an error or a complete head the parser takes nothing more. */
TEST(sticky)
{
    http_parser p;
    http_parser_init(&p);
    size_t used;
    const char bad[] = "GET / HTTP/9.9\r\nmore";
    CHECK(http_parser_feed(&p, bad, sizeof(bad) - 1, &used) == HTTP_PARSE_ERROR);
    CHECK(used == 15); /* up to and with the CR that ended the version */
    CHECK(p.status == 505 && p.reason && *p.reason);
    CHECK(http_parser_feed(&p, "x", 1, &used) == HTTP_PARSE_ERROR && used == 0);
    http_parser_init(&p);
    const char two[] = "GET / HTTP/1.0\r\n\r\nGET";
    CHECK(http_parser_feed(&p, two, sizeof(two) - 1, &used) == HTTP_PARSE_DONE);
    CHECK(used == sizeof(two) - 1 - 3);
    CHECK(http_parser_feed(&p, "GET", 3, &used) == HTTP_PARSE_DONE && used == 0);
}

/* ---- move progress files ---- */

TEST(move_files)
{
    http_move m;
    hv_err err = {0};
    const char ok[] = "# written by haven move\naccount=a@example.org\nfrom = s1 \nto=s2\r\n"
                      "phase=copying\nbytes_total=1000\nbytes_done=250\nstarted=1700000000\n"
                      "updated=1700000060\nreason=\nfuture_key=whatever it is\n\n";
    CHECKM(http_move_parse(ok, sizeof(ok) - 1, &m, &err) == 0, "%s", err.msg);
    CHECK(strcmp(m.account, "a@example.org") == 0 && strcmp(m.from, "s1") == 0 &&
          strcmp(m.to, "s2") == 0 && strcmp(m.phase, "copying") == 0);
    CHECK(m.bytes_total == 1000 && m.bytes_done == 250 && m.started == 1700000000 &&
          m.updated == 1700000060);
    /* numbers not given stay unknown */
    const char sparse[] = "account=b@x\nphase=rolled-back\nbytes_total=\n";
    CHECK(http_move_parse(sparse, sizeof(sparse) - 1, &m, &err) == 0);
    CHECK(m.bytes_total == -1 && m.bytes_done == -1 && m.from[0] == 0);

    static const char *const bad[] = {
        "account=a@x\nphase=done\nno equals sign here\n",
        "account=a@x\nphase=done\nbytes_done=12abc\n",
        "account=a@x\nphase=done\nbytes_done=-5\n",
        "account=a@x\nphase=done\nbytes_done=inf\n",
        "account=a@x\nphase=Copying Now\n",
        "phase=done\n",
        "account=a@x\n",
        "account=a\x01@x\nphase=done\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err.msg[0] = 0;
        CHECKM(http_move_parse(bad[i], strlen(bad[i]), &m, &err) == -EINVAL, "case %zu", i);
        CHECK(err.msg[0]);
    }
    /* a NUL inside the text is not a number's end */
    const char nul[] = "account=a@x\nphase=done\nbytes_done=12\0abc\n";
    CHECK(http_move_parse(nul, sizeof(nul) - 1, &m, &err) == -EINVAL);

    http_evac e;
    const char ev[] = "from=s1\nto=s2\nslots=4\naccounts_total=10\naccounts_done=3\n"
                      "accounts_failed=1\nbytes_total=5e9\nbytes_done=1e9\nstarted=1\nupdated=2\n"
                      "eta_s=-1\n";
    CHECKM(http_evac_parse(ev, sizeof(ev) - 1, &e, &err) == 0, "%s", err.msg);
    CHECK(e.slots == 4 && e.accounts_total == 10 && e.accounts_done == 3 &&
          e.accounts_failed == 1 && e.bytes_total == 5e9 && e.eta_s == -1);
    const char ev_bad[] = "from=s1\nslots=4\n";
    CHECK(http_evac_parse(ev_bad, sizeof(ev_bad) - 1, &e, &err) == -EINVAL);
}

/* The folder: good files read, bad ones skipped and counted, names that
 * are not progress files ignored. */
TEST(move_folder)
{
    const char *dir = t_tmpdir();
    char path[4200];
    snprintf(path, sizeof(path), "%s/moves", dir);
    http_moves mv;
    hv_err err = {0};
    CHECK(http_moves_read(dir, &mv, &err) == 0 && mv.nmoves == 0 && mv.skipped == 0);
    CHECK(mkdir(path, 0700) == 0);
    static const struct {
        const char *name, *text;
    } files[] = {
        {"b@x.move", "account=b@x\nphase=done\n"},
        {"a@x.move", "account=a@x\nphase=copying\nbytes_done=3\n"},
        {"c@x.move", "account=c@x\nphase=done\nbytes_done=zz\n"},     /* malformed */
        {"d@x.move", "account=someone-else@x\nphase=done\n"},         /* not its file */
        {".e@x.move.tmp", "account=e@x\nphase=done\n"},               /* being written */
        {"notes.txt", "whatever"},
        {"evacuate-s1-s2.state", "from=s1\nto=s2\nslots=2\n"},
        {"evacuate-s1-s3.state", "from=s1\nto=s2\nslots=2\n"},        /* not its file */
    };
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char f[4400];
        snprintf(f, sizeof(f), "%s/%s", path, files[i].name);
        FILE *fp = fopen(f, "w");
        CHECK(fp);
        fputs(files[i].text, fp);
        fclose(fp);
    }
    CHECKM(http_moves_read(dir, &mv, &err) == 0, "%s", err.msg);
    CHECK(mv.nmoves == 2 && mv.nevacs == 1 && mv.skipped == 3);
    CHECK(strcmp(mv.moves[0].account, "a@x") == 0 && strcmp(mv.moves[1].account, "b@x") == 0);
    CHECK(mv.moves[0].bytes_done == 3 && strcmp(mv.evacs[0].to, "s2") == 0);
    http_moves_free(&mv);
}

int main(void)
{
    RUN(requests);
    RUN(refusals);
    RUN(limits);
    RUN(sticky);
    RUN(move_files);
    RUN(move_folder);
    return t_done();
}
