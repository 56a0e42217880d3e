/*
 * test_smtp_client.c - the SMTP/LMTP client, its reply reader and the
 * static routes.
 *
 * The client talks to a scripted fake server in a thread on a loopback
 * port. A script is a list of steps: "S:" sends a line, "C:" expects the
 * next client line exactly, "D" takes the data up to the final "." and
 * keeps it as sent on the wire, "P:n" reads n lines before answering any
 * (a client that waits for replies between them would time out, so this
 * proves pipelining), "N" fails when the client sent more than was
 * answered (proves lock-step), "T" does the server side of TLS, "W"
 * waits for (and drops) whatever the client sends next, "X" closes, "A"
 * accepts the next connection. The server records the first
 * difference; every test checks both sides. Routes through DNS ask a
 * fake DNS server on a loopback UDP port, never the network.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "lib/buf.h"
#include "smtp/smtp_client.h"
#include "smtp/smtp_reply.h"
#include "testlib.h"

/* --- the fake server --- */

typedef struct fake {
    int lfd, fd, port;
    SSL *ssl;
    const char *const *script;
    char fail[512];
    buf data;       /* what "D" read, as on the wire, final ".\r\n" included */
    char rb[65536]; /* read buffer */
    size_t rpos, rlen;
    pthread_t th;
} fake;

static SSL_CTX *server_ctx;
static char cert_file[4096];

static ssize_t fk_read(fake *f, void *p, size_t n)
{
    if (f->ssl) {
        int r = SSL_read(f->ssl, p, (int)n);
        return r > 0 ? r : -1;
    }
    ssize_t r = recv(f->fd, p, n, 0);
    return r > 0 ? r : -1;
}

static void fk_write(fake *f, const char *s, size_t n)
{
    if (f->ssl)
        SSL_write(f->ssl, s, (int)n);
    else
        (void)!send(f->fd, s, n, MSG_NOSIGNAL);
}

/* One client line into line (without CRLF); -1 at EOF. */
static int fk_line(fake *f, buf *line)
{
    buf_reset(line);
    for (;;) {
        if (f->rpos < f->rlen) {
            char *s = f->rb + f->rpos;
            char *lf = memchr(s, '\n', f->rlen - f->rpos);
            size_t take = lf ? (size_t)(lf - s) + 1 : f->rlen - f->rpos;
            buf_append(line, s, take);
            f->rpos += take;
            if (lf) {
                line->len -= (line->len >= 2 && line->data[line->len - 2] == '\r') ? 2 : 1;
                line->data[line->len] = 0;
                return 0;
            }
        }
        ssize_t r = fk_read(f, f->rb, sizeof(f->rb));
        if (r <= 0)
            return -1;
        f->rpos = 0;
        f->rlen = (size_t)r;
    }
}

static void fk_close(fake *f)
{
    if (f->ssl) {
        SSL_free(f->ssl);
        f->ssl = NULL;
    }
    if (f->fd >= 0)
        close(f->fd);
    f->fd = -1;
    f->rpos = f->rlen = 0;
}

static int fk_accept(fake *f)
{
    fk_close(f);
    struct pollfd p = {.fd = f->lfd, .events = POLLIN};
    if (poll(&p, 1, 10000) != 1)
        return -1;
    f->fd = accept(f->lfd, NULL, NULL);
    if (f->fd < 0)
        return -1;
    /* A client that stops talking fails the test instead of hanging it. */
    struct timeval tv = {10, 0};
    setsockopt(f->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    int one = 1;
    setsockopt(f->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return 0;
}

static void *fk_run(void *arg)
{
    fake *f = arg;
    buf line;
    buf_init(&line);
    if (fk_accept(f) < 0) {
        snprintf(f->fail, sizeof(f->fail), "accept failed");
        goto out;
    }
    for (size_t i = 0; f->script[i] && !f->fail[0]; i++) {
        const char *st = f->script[i];
        if (strncmp(st, "S:", 2) == 0) {
            buf_reset(&line);
            buf_append_str(&line, st + 2);
            buf_append(&line, "\r\n", 2);
            fk_write(f, (char *)line.data, line.len);
        } else if (strncmp(st, "R:", 2) == 0) {
            fk_write(f, st + 2, strlen(st + 2));
        } else if (strncmp(st, "C:", 2) == 0) {
            if (fk_line(f, &line) < 0)
                snprintf(f->fail, sizeof(f->fail), "step %zu: EOF, wanted \"%s\"", i, st + 2);
            else if (strcmp((char *)line.data, st + 2) != 0)
                snprintf(f->fail, sizeof(f->fail), "step %zu: got \"%.200s\", wanted \"%s\"", i,
                         (char *)line.data, st + 2);
        } else if (strncmp(st, "P:", 2) == 0) {
            /* Reads n lines, then checks them against the next n "C:" steps. */
            int n = atoi(st + 2);
            buf got[8];
            int k = 0;
            for (; k < n && k < 8; k++) {
                buf_init(&got[k]);
                if (fk_line(f, &got[k]) < 0) {
                    snprintf(f->fail, sizeof(f->fail), "step %zu: EOF in a pipelined group", i);
                    k++;
                    break;
                }
            }
            for (int j = 0; j < k && !f->fail[0]; j++) {
                const char *want = f->script[i + 1 + (size_t)j];
                if (!want || strncmp(want, "C:", 2) != 0 || strcmp((char *)got[j].data, want + 2))
                    snprintf(f->fail, sizeof(f->fail), "pipelined line %d: got \"%.200s\"", j,
                             (char *)got[j].data);
            }
            for (int j = 0; j < k; j++)
                buf_free(&got[j]);
            i += (size_t)n;
        } else if (strcmp(st, "N") == 0) {
            struct pollfd p = {.fd = f->fd, .events = POLLIN};
            if (f->rpos < f->rlen || (!f->ssl && poll(&p, 1, 0) > 0))
                snprintf(f->fail, sizeof(f->fail), "step %zu: client did not wait for a reply", i);
        } else if (strcmp(st, "D") == 0) {
            buf_reset(&f->data);
            for (;;) {
                if (fk_line(f, &line) < 0) {
                    snprintf(f->fail, sizeof(f->fail), "step %zu: EOF in data", i);
                    break;
                }
                buf_append(&f->data, line.data, line.len);
                buf_append(&f->data, "\r\n", 2);
                if (line.len == 1 && line.data[0] == '.')
                    break;
            }
        } else if (strcmp(st, "T") == 0) {
            f->ssl = SSL_new(server_ctx);
            SSL_set_fd(f->ssl, f->fd);
            if (f->rpos < f->rlen || SSL_accept(f->ssl) != 1)
                snprintf(f->fail, sizeof(f->fail), "step %zu: TLS accept failed", i);
        } else if (strcmp(st, "W") == 0) {
            char tmp[4096];
            if (f->rpos == f->rlen && fk_read(f, tmp, sizeof(tmp)) <= 0)
                snprintf(f->fail, sizeof(f->fail), "step %zu: EOF", i);
            f->rpos = f->rlen = 0;
        } else if (strcmp(st, "X") == 0) {
            fk_close(f);
        } else if (strcmp(st, "A") == 0) {
            if (fk_accept(f) < 0)
                snprintf(f->fail, sizeof(f->fail), "step %zu: accept failed", i);
        } else {
            snprintf(f->fail, sizeof(f->fail), "bad script step \"%s\"", st);
        }
    }
    /* Wait for the client to hang up, so that it never sees an early EOF. */
    while (f->fd >= 0 && fk_line(f, &line) == 0)
        ;
out:
    fk_close(f);
    buf_free(&line);
    return NULL;
}

static void fake_start_at(fake *f, const char *const *script, uint32_t addr)
{
    memset(f, 0, sizeof(*f));
    f->fd = -1;
    f->script = script;
    buf_init(&f->data);
    f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(addr)};
    socklen_t al = sizeof(a);
    if (bind(f->lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(f->lfd, 4) < 0 ||
        getsockname(f->lfd, (struct sockaddr *)&a, &al) < 0) {
        perror("fake server");
        exit(2);
    }
    f->port = ntohs(a.sin_port);
    pthread_create(&f->th, NULL, fk_run, f);
}

static void fake_start(fake *f, const char *const *script)
{
    fake_start_at(f, script, INADDR_LOOPBACK);
}

/* Joins the server; returns its verdict ("" when the script ran as written). */
static const char *fake_end(fake *f)
{
    pthread_join(f->th, NULL);
    close(f->lfd);
    return f->fail;
}

static void fake_free(fake *f) { buf_free(&f->data); }

static smtp_client_opts opts(int lmtp)
{
    smtp_client_opts o = {.lmtp = lmtp, .helo = "client.test", .timeout_ms = 5000};
    return o;
}

/* --- a self-signed certificate for localhost / 127.0.0.1 --- */

static int make_cert(void)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    if (!key || !x)
        return -1;
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600L * 24 * 30);
    X509_set_version(x, 2);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1,
                               0);
    X509_set_issuer_name(x, name);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    const char *exts[][2] = {{"subjectAltName", "DNS:localhost,IP:127.0.0.1"},
                             {"basicConstraints", "critical,CA:TRUE"}};
    for (size_t i = 0; i < 2; i++) {
        X509_EXTENSION *e = X509V3_EXT_conf(NULL, &v3, exts[i][0], exts[i][1]);
        if (!e)
            return -1;
        X509_add_ext(x, e, -1);
        X509_EXTENSION_free(e);
    }
    if (!X509_sign(x, key, EVP_sha256()))
        return -1;
    server_ctx = SSL_CTX_new(TLS_server_method());
    if (SSL_CTX_use_certificate(server_ctx, x) != 1 || SSL_CTX_use_PrivateKey(server_ctx, key) != 1)
        return -1;
    snprintf(cert_file, sizeof(cert_file), "%s/ca.pem", t_tmpdir());
    FILE *fp = fopen(cert_file, "w");
    if (!fp || PEM_write_X509(fp, x) != 1)
        return -1;
    fclose(fp);
    X509_free(x);
    EVP_PKEY_free(key);
    return 0;
}

/* --- the reply reader --- */

/* Feeds s whole, then one byte at a time; both must agree. */
static int parse_one(const char *s, smtp_reply *out, hv_err *err)
{
    smtp_reply_parser p;
    smtp_reply a, b;
    size_t used = 0, n = strlen(s);
    smtp_reply_parser_init(&p, NULL, NULL);
    int rc = smtp_reply_feed(&p, s, n, &used, &a, err);
    smtp_reply_parser_init(&p, NULL, NULL);
    int rc2 = 0;
    for (size_t i = 0; i < n && rc2 == 0; i++) {
        size_t u = 0;
        rc2 = smtp_reply_feed(&p, s + i, 1, &u, &b, NULL);
    }
    if (rc != rc2 || (rc == 1 && memcmp(&a, &b, sizeof(a)) != 0))
        return -1000;
    *out = a;
    return rc;
}

TEST(reply_basic)
{
    smtp_reply r;
    hv_err err = {0};
    CHECK(parse_one("250 2.1.0 Ok sender\r\n", &r, &err) == 1);
    CHECK(r.code == 250 && strcmp(r.enhanced, "2.1.0") == 0 && strcmp(r.text, "Ok sender") == 0);
    CHECK(parse_one("354\r\n", &r, &err) == 1);
    CHECK(r.code == 354 && r.enhanced[0] == 0 && r.text[0] == 0);
    CHECK(parse_one("250-first\r\n250-2.0.0 second\r\n250 2.0.0 last one\r\n", &r, &err) == 1);
    CHECK(r.code == 250 && strcmp(r.enhanced, "2.0.0") == 0 && strcmp(r.text, "last one") == 0);
    /* A class that does not match the code is not an enhanced code. */
    CHECK(parse_one("550 4.1.1 odd\r\n", &r, &err) == 1);
    CHECK(r.enhanced[0] == 0 && strcmp(r.text, "4.1.1 odd") == 0);
    CHECK(parse_one("550 5.1.1234 no\r\n", &r, &err) == 1 && r.enhanced[0] == 0);
    CHECK(parse_one("451 4.3.0\r\n", &r, &err) == 1 && strcmp(r.enhanced, "4.3.0") == 0);
    /* Bare LF is read as a line end; control bytes in text are masked. */
    CHECK(parse_one("220 hi\tthere\n", &r, &err) == 1 && strcmp(r.text, "hi?there") == 0);
    CHECK(parse_one("250-a\r\n250-b", &r, &err) == 0);
}

TEST(reply_malformed)
{
    smtp_reply r;
    hv_err err = {0};
    const char *bad[] = {"25O ok\r\n",        "2500 ok\r\n",          "250_ok\r\n",
                         "\r\n",              "25\r\n",               "650 no\r\n",
                         "160 x\r\n",         "260 x\r\n",            "250-a\r\n251 b\r\n",
                         "250-a\r\n550 b\r\n", "ok\r\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err.code = 0;
        CHECKM(parse_one(bad[i], &r, &err) == -EPROTO, "%s", bad[i]);
        CHECK(err.code == -EPROTO && err.msg[0]);
    }
    char nul[] = "250 a\0b\r\n";
    smtp_reply_parser p;
    size_t used;
    smtp_reply_parser_init(&p, NULL, NULL);
    CHECK(smtp_reply_feed(&p, nul, sizeof(nul) - 1, &used, &r, &err) == -EPROTO);
}

TEST(reply_limits)
{
    smtp_reply r;
    hv_err err = {0};
    buf b;
    buf_init(&b);
    /* Exactly 100 lines pass, 101 do not. */
    for (int i = 0; i < 99; i++)
        buf_append_str(&b, "250-x\r\n");
    buf_append_str(&b, "250 end\r\n");
    int ok100 = parse_one((char *)b.data, &r, &err);
    buf_reset(&b);
    for (int i = 0; i < 100; i++)
        buf_append_str(&b, "250-x\r\n");
    buf_append_str(&b, "250 end\r\n");
    int bad101 = parse_one((char *)b.data, &r, &err);
    /* A line of 2048 bytes passes, 2049 does not, and the failure comes
     * before the line end does. */
    buf_reset(&b);
    buf_append_str(&b, "250 ");
    for (int i = 0; i < 2044; i++)
        buf_append(&b, "y", 1);
    buf_append_str(&b, "\r\n");
    int ok2048 = parse_one((char *)b.data, &r, &err);
    size_t textlen = strlen(r.text);
    buf_reset(&b);
    buf_append_str(&b, "250 ");
    for (int i = 0; i < 2045; i++)
        buf_append(&b, "y", 1);
    buf_append_str(&b, "\r\n");
    int bad2049 = parse_one((char *)b.data, &r, &err);
    smtp_reply_parser p;
    size_t used;
    smtp_reply_parser_init(&p, NULL, NULL);
    int early = smtp_reply_feed(&p, (char *)b.data, 2100, &used, &r, &err);
    buf_free(&b);
    CHECK(ok100 == 1 && bad101 == -EPROTO);
    CHECK(ok2048 == 1 && textlen == sizeof(r.text) - 1);
    CHECK(bad2049 == -EPROTO && early == -EPROTO);
}

TEST(reply_two_in_one_feed)
{
    const char *s = "250 one\r\n251 two\r\n";
    smtp_reply_parser p;
    smtp_reply r;
    size_t used;
    smtp_reply_parser_init(&p, NULL, NULL);
    CHECK(smtp_reply_feed(&p, s, strlen(s), &used, &r, NULL) == 1);
    CHECK(used == 9 && r.code == 250);
    CHECK(smtp_reply_feed(&p, s + used, strlen(s) - used, &used, &r, NULL) == 1);
    CHECK(r.code == 251 && strcmp(r.text, "two") == 0);
}

/* --- the client over plain TCP --- */

static const char *const EHLO_PIPE[] = {
    "S:220 fake.test ESMTP", "C:EHLO client.test", "S:250-fake.test hello",
    "S:250-PIPELINING",      "S:250-SIZE 1000000", "S:250-8BITMIME",
    "S:250 ENHANCEDSTATUSCODES"};

TEST(smtp_pipelined_dot_stuffing)
{
    const char *script[] = {
        EHLO_PIPE[0], EHLO_PIPE[1], EHLO_PIPE[2], EHLO_PIPE[3], EHLO_PIPE[4], EHLO_PIPE[5],
        EHLO_PIPE[6],
        "P:4",
        "C:MAIL FROM:<a@x.test> SIZE=41 BODY=8BITMIME",
        "C:RCPT TO:<b@y.test>",
        "C:RCPT TO:<c@y.test>",
        "C:DATA",
        "S:250 2.1.0 ok",
        "S:250 2.1.5 ok",
        "S:550-5.1.1 no such",
        "S:550 5.1.1 user here",
        "S:354 go on",
        "D",
        "S:250 2.0.0 queued as X",
        "C:QUIT",
        "S:221 bye",
        NULL};
    fake f;
    fake_start(&f, script);
    smtp_client_opts o = opts(0);
    smtp_client *c = NULL;
    hv_err err = {0};
    int rc = smtp_client_connect("127.0.0.1", f.port, &o, &c, &err);
    int pipe = c && smtp_client_has(c, "pipelining"), size = c && smtp_client_has(c, "SIZE");
    int nostarttls = c && !smtp_client_has(c, "STARTTLS") && !smtp_client_has(c, "PIPE");
    uint64_t lim = smtp_client_size_limit(c);
    const char *rcpts[] = {"b@y.test", "c@y.test"};
    const char msg[] = ".first\r\nSubject: x\r\n\r\n..two\r\nmid.\r\n.\r\nend"; /* 41 bytes */
    smtp_tx tx = {.mail_from = "a@x.test", .mail_params = "BODY=8BITMIME", .rcpts = rcpts,
                  .nrcpts = 2, .data = msg, .len = sizeof(msg) - 1};
    smtp_reply res[2];
    int sr = rc == 0 ? smtp_client_send(c, &tx, res, &err) : -1;
    smtp_client_close(c);
    const char *verdict = fake_end(&f);
    CHECKM(rc == 0, "%s", err.msg);
    CHECKM(sr == 0, "%s", err.msg);
    CHECKM(verdict[0] == 0, "%s", verdict);
    CHECK(pipe && size && nostarttls && lim == 1000000);
    CHECK(res[0].code == 250 && strcmp(res[0].enhanced, "2.0.0") == 0 &&
          strcmp(res[0].text, "queued as X") == 0);
    CHECK(res[1].code == 550 && strcmp(res[1].enhanced, "5.1.1") == 0 &&
          strcmp(res[1].text, "user here") == 0);
    const char want[] = "..first\r\nSubject: x\r\n\r\n...two\r\nmid.\r\n..\r\nend\r\n.\r\n";
    CHECKM(f.data.len == sizeof(want) - 1 && memcmp(f.data.data, want, f.data.len) == 0, "%.*s",
           (int)f.data.len, (char *)f.data.data);
    fake_free(&f);
}

TEST(smtp_lockstep_and_params)
{
    /* No PIPELINING, no DSN: one command per reply; DSN parameters dropped,
     * unknown ones kept, SIZE not sent (not offered). */
    const char *script[] = {
        "S:220 old.test",
        "C:EHLO client.test",
        "S:250-old.test",
        "S:250 8BITMIME",
        "C:MAIL FROM:<> BODY=8BITMIME XFOO=1",
        "N",
        "S:250 ok",
        "C:RCPT TO:<b@y.test>",
        "N",
        "S:250 ok",
        "C:DATA",
        "N",
        "S:354 go",
        "D",
        "S:250 done",
        /* a second transaction on the same connection */
        "C:MAIL FROM:<z@x.test> BODY=8BITMIME XFOO=1",
        "S:250 ok",
        "C:RCPT TO:<b@y.test>",
        "S:250 ok",
        "C:DATA",
        "S:354 go",
        "D",
        "S:451 4.3.0 try later",
        "C:QUIT",
        "S:221 bye",
        NULL};
    fake f;
    fake_start(&f, script);
    smtp_client_opts o = opts(0);
    smtp_client *c = NULL;
    hv_err err = {0};
    int rc = smtp_client_connect("localhost", f.port, &o, &c, &err);
    const char *rcpts[] = {"b@y.test"};
    const char *params[] = {"NOTIFY=FAILURE ORCPT=rfc822;b@y.test"};
    smtp_tx tx = {.mail_from = "", .mail_params = "BODY=8BITMIME RET=HDRS XFOO=1 ENVID=abc",
                  .rcpts = rcpts, .rcpt_params = params, .nrcpts = 1, .data = "", .len = 0};
    smtp_reply res[1], res2[1];
    int sr = rc == 0 ? smtp_client_send(c, &tx, res, &err) : -1;
    tx.mail_from = "z@x.test";
    tx.data = "one line\r\n";
    tx.len = 10;
    int sr2 = sr == 0 ? smtp_client_send(c, &tx, res2, &err) : -1;
    smtp_client_close(c);
    const char *verdict = fake_end(&f);
    CHECKM(rc == 0 && sr == 0 && sr2 == 0, "%s", err.msg);
    CHECKM(verdict[0] == 0, "%s", verdict);
    CHECK(res[0].code == 250 && res2[0].code == 451 && strcmp(res2[0].enhanced, "4.3.0") == 0);
    CHECK(f.data.len == 13 && memcmp(f.data.data, "one line\r\n.\r\n", 13) == 0);
    fake_free(&f);
}

TEST(smtp_helo_fallback)
{
    const char *script[] = {
        "S:220 ancient.test",  "C:EHLO client.test", "S:502 what?",  "C:HELO client.test",
        "S:250 ancient.test",  "C:MAIL FROM:<a@x>",  "S:250 ok",     "C:RCPT TO:<b@y>",
        "S:250 ok",            "C:DATA",             "S:354 go",     "D",
        "S:250 ok",            "C:QUIT",             "S:221 bye",    NULL};
    fake f;
    fake_start(&f, script);
    smtp_client_opts o = opts(0);
    smtp_client *c = NULL;
    hv_err err = {0};
    int rc = smtp_client_connect("127.0.0.1", f.port, &o, &c, &err);
    int pipe = c ? smtp_client_has(c, "PIPELINING") : -1;
    const char *rcpts[] = {"b@y"};
    smtp_tx tx = {.mail_from = "a@x", .rcpts = rcpts, .nrcpts = 1, .data = "x\r\n", .len = 3};
    smtp_reply res[1];
    int sr = rc == 0 ? smtp_client_send(c, &tx, res, &err) : -1;
    smtp_client_close(c);
    const char *verdict = fake_end(&f);
    CHECKM(rc == 0 && sr == 0, "%s", err.msg);
    CHECKM(verdict[0] == 0, "%s", verdict);
    CHECK(pipe == 0 && res[0].code == 250);
    fake_free(&f);
}

TEST(lmtp_per_recipient_replies)
{
    const char *script[] = {
        "S:220 store LMTP",
        "C:LHLO client.test",
        "S:250-store",
        "S:250-PIPELINING",
        "S:250-ENHANCEDSTATUSCODES",
        "S:250 XHAVEN-DID",
        "P:5",
        "C:MAIL FROM:<s@x.test>",
        "C:RCPT TO:<a@h.test> XHAVEN-DID=q1-0",
        "C:RCPT TO:<b@h.test> XHAVEN-DID=q1-1",
        "C:RCPT TO:<c@h.test> XHAVEN-DID=q1-2",
        "C:DATA",
        "S:250 2.1.0 ok",
        "S:250 2.1.5 ok",
        "S:550 5.1.1 <b@h.test> unknown",
        "S:250 2.1.5 ok",
        "S:354 go",
        "D",
        "S:250 2.0.0 <a@h.test> delivered",
        "S:452-4.2.2 <c@h.test>",
        "S:452 4.2.2 <c@h.test> over quota",
        "C:QUIT",
        "S:221 bye",
        NULL};
    fake f;
    fake_start(&f, script);
    smtp_client_opts o = opts(1);
    smtp_client *c = NULL;
    hv_err err = {0};
    int rc = smtp_client_connect("127.0.0.1", f.port, &o, &c, &err);
    int did = c && smtp_client_has(c, "XHAVEN-DID");
    const char *rcpts[] = {"a@h.test", "b@h.test", "c@h.test"};
    const char *params[] = {"XHAVEN-DID=q1-0", "XHAVEN-DID=q1-1", "XHAVEN-DID=q1-2"};
    smtp_tx tx = {.mail_from = "s@x.test", .rcpts = rcpts, .rcpt_params = params, .nrcpts = 3,
                  .data = "Subject: s\r\n\r\nhi\r\n", .len = 18};
    smtp_reply res[3];
    int sr = rc == 0 ? smtp_client_send(c, &tx, res, &err) : -1;
    smtp_client_close(c);
    const char *verdict = fake_end(&f);
    CHECKM(rc == 0 && sr == 0, "%s", err.msg);
    CHECKM(verdict[0] == 0, "%s", verdict);
    CHECK(did);
    CHECK(res[0].code == 250 && strcmp(res[0].text, "<a@h.test> delivered") == 0);
    CHECK(res[1].code == 550 && strcmp(res[1].enhanced, "5.1.1") == 0);
    CHECK(res[2].code == 452 && strcmp(res[2].enhanced, "4.2.2") == 0 &&
          strcmp(res[2].text, "<c@h.test> over quota") == 0);
    fake_free(&f);
}

TEST(all_refused_rset)
{
    /* Lock-step: RSET instead of DATA. Pipelined: DATA was in the group
     * and is refused, then RSET. Both leave the connection usable. */
    const char *script[] = {
        "S:220 x",           "C:EHLO client.test",     "S:250 x",
        "C:MAIL FROM:<a@x>", "S:250 ok",               "C:RCPT TO:<b@y>",
        "S:550 5.1.1 no",    "C:RCPT TO:<c@y>",        "S:450 4.2.1 <c@y> account is held",
        "C:RSET",            "S:250 ok",               "C:QUIT",
        "S:221 bye",         NULL};
    const char *script2[] = {
        "S:220 x",           "C:EHLO client.test", "S:250-x",
        "S:250 PIPELINING",  "P:3",                "C:MAIL FROM:<a@x>",
        "C:RCPT TO:<b@y>",   "C:DATA",             "S:250 ok",
        "S:550 5.1.1 no",    "S:554 5.5.1 no valid recipients",
        "C:RSET",            "S:250 ok",           "C:MAIL FROM:<a@x>",
        "C:RCPT TO:<b@y>",   "C:DATA",             "S:250 ok",
        "S:250 ok",          "S:354 go",           "D",
        "S:250 ok",          "C:QUIT",             "S:221 bye",
        NULL};
    fake f, g;
    fake_start(&f, script);
    smtp_client_opts o = opts(0);
    smtp_client *c = NULL, *d = NULL;
    hv_err err = {0}, err2 = {0};
    int rc = smtp_client_connect("127.0.0.1", f.port, &o, &c, &err);
    const char *rcpts[] = {"b@y", "c@y"};
    smtp_tx tx = {.mail_from = "a@x", .rcpts = rcpts, .nrcpts = 2, .data = "x\r\n", .len = 3};
    smtp_reply res[2], res2[1], res3[1];
    int sr = rc == 0 ? smtp_client_send(c, &tx, res, &err) : -1;
    smtp_client_close(c);
    const char *verdict = fake_end(&f);

    fake_start(&g, script2);
    int rc2 = smtp_client_connect("127.0.0.1", g.port, &o, &d, &err2);
    tx.nrcpts = 1;
    int sr2 = rc2 == 0 ? smtp_client_send(d, &tx, res2, &err2) : -1;
    int sr3 = sr2 == 0 ? smtp_client_send(d, &tx, res3, &err2) : -1;
    smtp_client_close(d);
    const char *verdict2 = fake_end(&g);
    CHECKM(rc == 0 && sr == 0, "%s", err.msg);
    CHECKM(verdict[0] == 0, "%s", verdict);
    CHECK(res[0].code == 550 && res[1].code == 450 &&
          strcmp(res[1].text, "<c@y> account is held") == 0);
    CHECKM(rc2 == 0 && sr2 == 0 && sr3 == 0, "%s", err2.msg);
    CHECKM(verdict2[0] == 0, "%s", verdict2);
    CHECK(res2[0].code == 550 && res3[0].code == 250);
    fake_free(&f);
    fake_free(&g);
}

TEST(mail_refused)
{
    /* A refused MAIL is every recipient's answer; RCPTs already pipelined
     * get their 503 read but not reported. */
    const char *script[] = {
        "S:220 x",           "C:EHLO client.test", "S:250-x",
        "S:250 PIPELINING",  "P:4",                "C:MAIL FROM:<a@x>",
        "C:RCPT TO:<b@y>",   "C:RCPT TO:<c@y>",    "C:DATA",
        "S:553 5.1.8 bad sender", "S:503 5.5.1 need MAIL", "S:503 5.5.1 need MAIL",
        "S:503 5.5.1 need MAIL",  "C:RSET",         "S:250 ok",
        "C:QUIT",            "S:221 bye",          NULL};
    fake f;
    fake_start(&f, script);
    smtp_client_opts o = opts(0);
    smtp_client *c = NULL;
    hv_err err = {0};
    int rc = smtp_client_connect("127.0.0.1", f.port, &o, &c, &err);
    const char *rcpts[] = {"b@y", "c@y"};
    smtp_tx tx = {.mail_from = "a@x", .rcpts = rcpts, .nrcpts = 2, .data = "x\r\n", .len = 3};
    smtp_reply res[2];
    int sr = rc == 0 ? smtp_client_send(c, &tx, res, &err) : -1;
    smtp_client_close(c);
    const char *verdict = fake_end(&f);
    CHECKM(rc == 0 && sr == 0, "%s", err.msg);
    CHECKM(verdict[0] == 0, "%s", verdict);
    CHECK(res[0].code == 553 && res[1].code == 553 && strcmp(res[1].enhanced, "5.1.8") == 0);
    fake_free(&f);
}

/* Runs a script that should fail the connect; returns connect's code. */
static int connect_fails(const char *const *script, int lmtp, const char **verdict, hv_err *err)
{
    static fake f;
    fake_start(&f, script);
    smtp_client_opts o = opts(lmtp);
    smtp_client *c = NULL;
    int rc = smtp_client_connect("127.0.0.1", f.port, &o, &c, err);
    smtp_client_close(c);
    *verdict = fake_end(&f);
    fake_free(&f);
    return rc;
}

TEST(malformed_and_refusing_servers)
{
    const char *verdict;
    hv_err err = {0};
    const char *s1[] = {"S:220-x", "S:221 y", NULL};
    CHECK(connect_fails(s1, 0, &verdict, &err) == -EPROTO && !verdict[0]);
    const char *s2[] = {"S:220 x", "C:EHLO client.test", "S:250-x", "S:25O PIPELINING", NULL};
    CHECK(connect_fails(s2, 0, &verdict, &err) == -EPROTO && !verdict[0]);
    const char *s3[] = {"S:554 5.7.1 go away", NULL};
    CHECK(connect_fails(s3, 0, &verdict, &err) == -EPERM && strstr(err.msg, "go away"));
    const char *s4[] = {"S:421 4.3.2 busy", NULL};
    CHECK(connect_fails(s4, 0, &verdict, &err) == -EAGAIN);
    /* LMTP has no HELO to fall back to. */
    const char *s5[] = {"S:220 x", "C:LHLO client.test", "S:500 no", NULL};
    CHECK(connect_fails(s5, 1, &verdict, &err) == -EPERM && !verdict[0]);
    const char *s6[] = {"S:220 x", "X", NULL};
    CHECK(connect_fails(s6, 0, &verdict, &err) == -ECONNRESET);
    const char *s7[] = {"R:220 a line with no end", "X", NULL};
    CHECK(connect_fails(s7, 0, &verdict, &err) == -ECONNRESET);
    /* A greeting line over the limit. */
    static char longline[3000];
    memset(longline, 'z', sizeof(longline) - 1);
    memcpy(longline, "S:220 ", 6);
    const char *s8[] = {longline, NULL};
    CHECK(connect_fails(s8, 0, &verdict, &err) == -EPROTO);
    /* STARTTLS required but not offered. */
    static fake f;
    const char *s9[] = {"S:220 x", "C:EHLO client.test", "S:250 x", NULL};
    fake_start(&f, s9);
    smtp_client_opts o = opts(0);
    o.tls = SMTP_TLS_REQUIRED;
    smtp_client *c = NULL;
    int rc = smtp_client_connect("127.0.0.1", f.port, &o, &c, &err);
    smtp_client_close(c);
    verdict = fake_end(&f);
    fake_free(&f);
    CHECK(rc == -ENOTSUP && !verdict[0]);
    /* Nobody listening. */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    bind(s, (struct sockaddr *)&a, sizeof(a));
    getsockname(s, (struct sockaddr *)&a, &al);
    close(s);
    rc = smtp_client_connect("127.0.0.1", ntohs(a.sin_port), &o, &c, &err);
    CHECK(rc == -ECONNREFUSED && c == NULL);
}

TEST(connection_drops)
{
    /* Dropped after the data: accepted recipients have no reply (code 0),
     * refused ones keep theirs, and the call says the connection is dead. */
    const char *script[] = {
        "S:220 x",         "C:LHLO client.test", "S:250-x",   "S:250 PIPELINING",
        "P:4",             "C:MAIL FROM:<a@x>",  "C:RCPT TO:<b@y>", "C:RCPT TO:<c@y>",
        "C:DATA",          "S:250 ok",           "S:550 no",  "S:250 ok",
        "S:354 go",        "D",                  "X",         NULL};
    fake f;
    fake_start(&f, script);
    smtp_client_opts o = opts(1);
    smtp_client *c = NULL;
    hv_err err = {0};
    int rc = smtp_client_connect("127.0.0.1", f.port, &o, &c, &err);
    const char *rcpts[] = {"b@y", "c@y"};
    smtp_tx tx = {.mail_from = "a@x", .rcpts = rcpts, .nrcpts = 2, .data = "x\r\n", .len = 3};
    smtp_reply res[2];
    int sr = rc == 0 ? smtp_client_send(c, &tx, res, &err) : 0;
    hv_err err2 = {0};
    smtp_reply res2[2];
    res2[0].code = 999;
    int sr2 = smtp_client_send(c, &tx, res2, &err2); /* on the dead connection */
    smtp_client_close(c);
    const char *verdict = fake_end(&f);
    CHECK(rc == 0);
    CHECKM(sr == -ECONNRESET, "%d %s", sr, err.msg);
    CHECKM(verdict[0] == 0, "%s", verdict);
    CHECK(res[0].code == 550 && res[1].code == 0);
    CHECK(sr2 == -ENOTCONN && res2[0].code == 0);
    fake_free(&f);

    /* 421 in the middle of RCPT replies: that recipient gets the 421,
     * the rest nothing. */
    const char *script2[] = {
        "S:220 x",          "C:EHLO client.test", "S:250 x", "C:MAIL FROM:<a@x>",
        "S:250 ok",         "C:RCPT TO:<b@y>",    "S:421 4.4.2 shutting down", NULL};
    fake_start(&f, script2);
    o = opts(0);
    rc = smtp_client_connect("127.0.0.1", f.port, &o, &c, &err);
    sr = rc == 0 ? smtp_client_send(c, &tx, res, &err) : 0;
    smtp_client_close(c);
    verdict = fake_end(&f);
    CHECK(rc == 0 && sr < 0);
    CHECKM(verdict[0] == 0, "%s", verdict);
    CHECK(res[0].code == 421 && res[1].code == 0);
    fake_free(&f);
}

TEST(refuses_injection)
{
    const char *script[] = {"S:220 x", "C:EHLO client.test", "S:250 x", NULL};
    fake f;
    fake_start(&f, script);
    smtp_client_opts o = opts(0);
    smtp_client *c = NULL;
    hv_err err = {0};
    int rc = smtp_client_connect("127.0.0.1", f.port, &o, &c, &err);
    const char *rcpts[] = {"b@y>\r\nRCPT TO:<evil@z"};
    smtp_tx tx = {.mail_from = "a@x", .rcpts = rcpts, .nrcpts = 1, .data = "x\r\n", .len = 3};
    smtp_reply res[1];
    int sr = rc == 0 ? smtp_client_send(c, &tx, res, &err) : 0;
    smtp_client_close(c);
    const char *verdict = fake_end(&f);
    CHECK(rc == 0 && sr == -EINVAL && res[0].code == 0);
    CHECKM(verdict[0] == 0, "%s", verdict);
    fake_free(&f);
}

TEST(auth_plain_loopback)
{
    const char *script[] = {
        "S:220 x", "C:EHLO client.test", "S:250-x", "S:250 AUTH LOGIN PLAIN",
        "C:AUTH PLAIN AHVzZXIAcGFzcw==", "S:235 2.7.0 ok", "C:QUIT", "S:221 bye", NULL};
    fake f;
    fake_start(&f, script);
    smtp_client_opts o = opts(0);
    o.auth_user = "user";
    o.auth_pass = "pass";
    smtp_client *c = NULL;
    hv_err err = {0};
    int rc = smtp_client_connect("127.0.0.1", f.port, &o, &c, &err);
    smtp_client_close(c);
    const char *verdict = fake_end(&f);
    CHECKM(rc == 0, "%s", err.msg);
    CHECKM(verdict[0] == 0, "%s", verdict);
    fake_free(&f);

    const char *script2[] = {"S:220 x", "C:EHLO client.test", "S:250-x", "S:250 AUTH PLAIN",
                             "C:AUTH PLAIN AHVzZXIAcGFzcw==", "S:535 5.7.8 bad", NULL};
    fake_start(&f, script2);
    c = NULL;
    rc = smtp_client_connect("127.0.0.1", f.port, &o, &c, &err);
    smtp_client_close(c);
    verdict = fake_end(&f);
    CHECK(rc == -EACCES && c == NULL);
    CHECKM(verdict[0] == 0, "%s", verdict);
    fake_free(&f);
}

TEST(large_message)
{
    /* 1 MiB with many lines that need stuffing; the server's copy must be
     * the message stuffed, byte for byte. */
    size_t n = 1 << 20;
    char *m = malloc(n);
    buf want;
    buf_init(&want);
    for (size_t i = 0; i < n; i++) {
        size_t col = i % 100;
        m[i] = col == 98 ? '\r' : col == 99 ? '\n' : (col == 0 && (i / 100) % 3 == 0) ? '.' : 'a';
    }
    for (size_t i = 0; i < n; i++) {
        if (m[i] == '.' && (i == 0 || m[i - 1] == '\n'))
            buf_append(&want, ".", 1);
        buf_append(&want, m + i, 1);
    }
    /* n is not a multiple of 100: the message ends mid-line and gets a CRLF. */
    buf_append_str(&want, "\r\n.\r\n");
    const char *script[] = {
        "S:220 x",         "C:EHLO client.test", "S:250-x",   "S:250 PIPELINING",
        "P:3",             "C:MAIL FROM:<a@x>",  "C:RCPT TO:<b@y>",  "C:DATA",
        "S:250 ok",        "S:250 ok",           "S:354 go",  "D",
        "S:250 ok",        "C:QUIT",             "S:221 bye", NULL};
    fake f;
    fake_start(&f, script);
    smtp_client_opts o = opts(0);
    smtp_client *c = NULL;
    hv_err err = {0};
    int rc = smtp_client_connect("127.0.0.1", f.port, &o, &c, &err);
    const char *rcpts[] = {"b@y"};
    smtp_tx tx = {.mail_from = "a@x", .rcpts = rcpts, .nrcpts = 1, .data = m, .len = n};
    smtp_reply res[1];
    int sr = rc == 0 ? smtp_client_send(c, &tx, res, &err) : -1;
    smtp_client_close(c);
    const char *verdict = fake_end(&f);
    int same = f.data.len == want.len && memcmp(f.data.data, want.data, want.len) == 0;
    free(m);
    buf_free(&want);
    fake_free(&f);
    CHECKM(rc == 0 && sr == 0, "%s", err.msg);
    CHECKM(verdict[0] == 0, "%s", verdict);
    CHECK(same && res[0].code == 250);
}

/* --- TLS --- */

static const char *const TLS_SCRIPT[] = {
    "S:220 x",           "C:EHLO client.test", "S:250-x",          "S:250-STARTTLS",
    "S:250 PIPELINING",  "C:STARTTLS",         "S:220 go ahead",   "T",
    "C:EHLO client.test", "S:250-x",           "S:250-PIPELINING", "S:250 AUTH PLAIN",
    "P:3",               "C:MAIL FROM:<a@x>",  "C:RCPT TO:<b@y>",  "C:DATA",
    "S:250 ok",          "S:250 ok",           "S:354 go",         "D",
    "S:250 ok",          "C:QUIT",             "S:221 bye",        NULL};

static int tls_run(const char *host, enum smtp_client_tls mode, const char *ca, int *is_tls,
                   int *starttls_after, const char **verdict, hv_err *err)
{
    static fake f;
    fake_start(&f, TLS_SCRIPT);
    smtp_client_opts o = opts(0);
    o.tls = mode;
    o.tls_ca_file = ca;
    smtp_client *c = NULL;
    int rc = smtp_client_connect(host, f.port, &o, &c, err);
    *is_tls = smtp_client_is_tls(c);
    *starttls_after = c && smtp_client_has(c, "STARTTLS");
    if (rc == 0) {
        const char *rcpts[] = {"b@y"};
        smtp_tx tx = {.mail_from = "a@x", .rcpts = rcpts, .nrcpts = 1, .data = "x\r\n", .len = 3};
        smtp_reply res[1];
        rc = smtp_client_send(c, &tx, res, err);
        if (rc == 0 && res[0].code != 250)
            rc = -1000;
    }
    smtp_client_close(c);
    *verdict = fake_end(&f);
    fake_free(&f);
    return rc;
}

TEST(starttls_modes)
{
    int tls = 0, st = 0;
    const char *verdict;
    hv_err err = {0};
    CHECK(server_ctx != NULL);
    int rc = tls_run("127.0.0.1", SMTP_TLS_OPPORTUNISTIC, NULL, &tls, &st, &verdict, &err);
    CHECKM(rc == 0, "%s", err.msg);
    CHECKM(!verdict[0], "%s", verdict);
    CHECK(tls == 1 && st == 0); /* extensions are the ones said after TLS */
    rc = tls_run("localhost", SMTP_TLS_REQUIRED, cert_file, &tls, &st, &verdict, &err);
    CHECKM(rc == 0 && tls == 1 && !verdict[0], "%s %s", err.msg, verdict);
    rc = tls_run("127.0.0.1", SMTP_TLS_REQUIRED, cert_file, &tls, &st, &verdict, &err);
    CHECKM(rc == 0 && tls == 1 && !verdict[0], "%s %s", err.msg, verdict);
}

TEST(starttls_verification_failures)
{
    /* The self-signed certificate is not in the system store; and with it
     * trusted, 127.0.0.2 is not an address it carries. The server's TLS
     * step then fails; only the client's answer matters here. */
    const char *script[] = {"S:220 x",    "C:EHLO client.test", "S:250-x", "S:250 STARTTLS",
                            "C:STARTTLS", "S:220 go",           "T",       NULL};
    const char *hosts[] = {"localhost", "127.0.0.2"};
    const char *cas[] = {NULL, cert_file};
    for (int i = 0; i < 2; i++) {
        static fake f;
        fake_start_at(&f, script, i == 0 ? 0x7f000001 : 0x7f000002);
        smtp_client_opts o = opts(0);
        o.tls = SMTP_TLS_REQUIRED;
        o.tls_ca_file = cas[i];
        smtp_client *c = NULL;
        hv_err err = {0};
        int rc = smtp_client_connect(hosts[i], f.port, &o, &c, &err);
        smtp_client_close(c);
        fake_end(&f);
        fake_free(&f);
        CHECKM(rc == -EACCES && strstr(err.msg, "certificate"), "%d %s", rc, err.msg);
    }
}

TEST(implicit_tls)
{
    const char *script[] = {"T",       "S:220 x",  "C:EHLO client.test", "S:250 x",
                            "C:QUIT",  "S:221 bye", NULL};
    fake f;
    fake_start(&f, script);
    smtp_client_opts o = opts(0);
    o.tls = SMTP_TLS_IMPLICIT;
    o.tls_ca_file = cert_file;
    smtp_client *c = NULL;
    hv_err err = {0};
    int rc = smtp_client_connect("localhost", f.port, &o, &c, &err);
    int tls = smtp_client_is_tls(c);
    smtp_client_close(c);
    const char *verdict = fake_end(&f);
    CHECKM(rc == 0 && tls, "%s", err.msg);
    CHECKM(!verdict[0], "%s", verdict);
    fake_free(&f);
}

TEST(starttls_fallback_and_injection)
{
    /* Opportunistic: a broken handshake is retried in plaintext on a new
     * connection. */
    const char *script[] = {"S:220 x",           "C:EHLO client.test", "S:250-x",
                            "S:250 STARTTLS",    "C:STARTTLS",         "S:220 go",
                            "W",                 "R:this is not TLS\r\n", "X",             "A",
                            "S:220 x",           "C:EHLO client.test", "S:250-x",
                            "S:250 STARTTLS",    "C:QUIT",             "S:221 bye",
                            NULL};
    fake f;
    fake_start(&f, script);
    smtp_client_opts o = opts(0);
    o.tls = SMTP_TLS_OPPORTUNISTIC;
    smtp_client *c = NULL;
    hv_err err = {0};
    int rc = smtp_client_connect("127.0.0.1", f.port, &o, &c, &err);
    int tls = smtp_client_is_tls(c);
    smtp_client_close(c);
    const char *verdict = fake_end(&f);
    CHECKM(rc == 0 && !tls, "%s", err.msg);
    CHECKM(!verdict[0], "%s", verdict);
    fake_free(&f);

    /* Plaintext sent right behind the 220 would be read as if it came
     * over TLS: refused. */
    const char *script2[] = {"S:220 x", "C:EHLO client.test", "S:250-x", "S:250 STARTTLS",
                             "C:STARTTLS", "R:220 go\r\n250 injected\r\n", NULL};
    fake_start(&f, script2);
    rc = smtp_client_connect("127.0.0.1", f.port, &o, &c, &err);
    verdict = fake_end(&f);
    CHECKM(rc == -EPROTO && strstr(err.msg, "after the STARTTLS"), "%d %s", rc, err.msg);
    fake_free(&f);
}

/* --- routes --- */

TEST(routes_static)
{
    smtp_hop h[4];
    hv_err err = {0};
    const char *routes = " example.com = mx.example.net:2525 , *=[::1]:26,Other.ORG=10.0.0.1 ";
    int n = smtp_route_lookup("example.com", routes, h, 4, &err);
    CHECKM(n == 1, "%d %s", n, err.msg);
    CHECK(strcmp(h[0].host, "mx.example.net") == 0 && h[0].port == 2525);
    n = smtp_route_lookup("EXAMPLE.com.", routes, h, 4, &err);
    CHECK(n == 1 && h[0].port == 2525);
    n = smtp_route_lookup("other.org", routes, h, 4, &err);
    CHECK(n == 1 && strcmp(h[0].host, "10.0.0.1") == 0 && h[0].port == 25);
    n = smtp_route_lookup("anything.test", routes, h, 4, &err);
    CHECK(n == 1 && strcmp(h[0].host, "::1") == 0 && h[0].port == 26);
    /* exact beats "*" even when "*" comes first */
    n = smtp_route_lookup("a.test", "*=h1:1,a.test=h2:2", h, 4, &err);
    CHECK(n == 1 && strcmp(h[0].host, "h2") == 0 && h[0].port == 2);
    /* several hops for one domain, in order */
    n = smtp_route_lookup("a.test", "a.test=h1:1, a.test=h2:2", h, 4, &err);
    CHECK(n == 2 && strcmp(h[0].host, "h1") == 0 && strcmp(h[1].host, "h2") == 0 &&
          h[0].preference < h[1].preference);
    /* a domain literal needs no DNS */
    n = smtp_route_lookup("[192.0.2.7]", "", h, 4, &err);
    CHECK(n == 1 && strcmp(h[0].host, "192.0.2.7") == 0 && h[0].port == 25);
    n = smtp_route_lookup("[IPv6:2001:db8::1]", NULL, h, 4, &err);
    CHECK(n == 1 && strcmp(h[0].host, "2001:db8::1") == 0);
}

TEST(routes_errors)
{
    smtp_hop h[4];
    hv_err err = {0};
    const char *bad[] = {"example.com", "=h:25", "a.test=", "a.test=h:0", "a.test=h:99999",
                         "a.test=h:x", "a.test=[::1", "a.test=[::1]x", "a.test=h:25 junk",
                         "a.test=h:25,b.test"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err.code = 0;
        int n = smtp_route_lookup("a.test", bad[i], h, 4, &err);
        CHECKM(n == -EINVAL && err.msg[0], "%s -> %d", bad[i], n);
    }
    /* names that cannot be domains are refused before any DNS */
    CHECK(smtp_route_lookup("", "", h, 4, &err) == -ENOENT);
    CHECK(smtp_route_lookup("a b.test", "", h, 4, &err) == -ENOENT);
    CHECK(smtp_route_lookup("a..test", "", h, 4, &err) == -ENOENT);
    CHECK(smtp_route_lookup("[300.1.1.1]", "", h, 4, &err) == -ENOENT);
    CHECK(smtp_route_lookup("a.test", "a.test=h:25", h, 0, &err) == -EINVAL);
}

/* --- routes through DNS: a fake DNS server on a loopback UDP port --- */

typedef struct dns_fake {
    int fd, port;
    pthread_t th;
} dns_fake;

static size_t put_name(uint8_t *p, const char *name)
{
    size_t n = 0;
    while (*name) {
        const char *dot = strchr(name, '.');
        size_t l = dot ? (size_t)(dot - name) : strlen(name);
        p[n++] = (uint8_t)l;
        memcpy(p + n, name, l);
        n += l;
        name += l + (dot ? 1 : 0);
    }
    p[n++] = 0;
    return n;
}

/* Appends one answer record for the question's name (pointer 0xc00c). */
static size_t put_rr(uint8_t *p, int type, const uint8_t *rdata, size_t rdlen)
{
    uint8_t h[] = {0xc0, 0x0c, 0, (uint8_t)type, 0, 1, 0, 0, 0x0e, 0x10, 0, (uint8_t)rdlen};
    memcpy(p, h, sizeof(h));
    memcpy(p + sizeof(h), rdata, rdlen);
    return sizeof(h) + rdlen;
}

static size_t put_mx(uint8_t *p, int pref, const char *host)
{
    uint8_t rdata[300];
    rdata[0] = (uint8_t)(pref >> 8);
    rdata[1] = (uint8_t)pref;
    size_t n = 2 + put_name(rdata + 2, host);
    return put_rr(p, 15, rdata, n);
}

/* The zone: mx.test has three MX (two of preference 20), nomx.test only
 * an A, v6.test only an AAAA, noaddr.test nothing, nullmx.test a null MX,
 * nx.test does not exist, fail.test fails (SERVFAIL). */
static void *dns_run(void *arg)
{
    dns_fake *d = arg;
    uint8_t q[1500], r[1500];
    for (;;) {
        struct sockaddr_in from;
        socklen_t fl = sizeof(from);
        ssize_t n = recvfrom(d->fd, q, sizeof(q), 0, (struct sockaddr *)&from, &fl);
        if (n == 4 && memcmp(q, "stop", 4) == 0)
            break;
        if (n < 17)
            continue;
        /* the question: name labels, type, class */
        char name[256];
        size_t i = 12, k = 0;
        while (i < (size_t)n && q[i] && k < 200) {
            size_t l = q[i++];
            if (k)
                name[k++] = '.';
            memcpy(name + k, q + i, l);
            k += l;
            i += l;
        }
        name[k] = 0;
        i++;
        int type = q[i] << 8 | q[i + 1];
        size_t qend = i + 4;
        memcpy(r, q, qend);
        r[2] = 0x81; /* QR, RD */
        r[3] = 0x80; /* RA, NOERROR */
        memset(r + 6, 0, 6);
        size_t len = qend, an = 0;
        if (strcmp(name, "nx.test") == 0) {
            r[3] |= 3;
        } else if (strcmp(name, "fail.test") == 0) {
            r[3] |= 2;
        } else if (strcmp(name, "mx.test") == 0 && type == 15) {
            len += put_mx(r + len, 20, "b.mx.test");
            len += put_mx(r + len, 10, "a.mx.test");
            len += put_mx(r + len, 20, "c.mx.test");
            an = 3;
        } else if (strcmp(name, "nullmx.test") == 0 && type == 15) {
            len += put_mx(r + len, 0, "");
            an = 1;
        } else if (strcmp(name, "nomx.test") == 0 && type == 1) {
            uint8_t a[4] = {127, 0, 0, 1};
            len += put_rr(r + len, 1, a, 4);
            an = 1;
        } else if (strcmp(name, "v6.test") == 0 && type == 28) {
            uint8_t a[16] = {0};
            a[15] = 1;
            len += put_rr(r + len, 28, a, 16);
            an = 1;
        }
        r[7] = (uint8_t)an;
        sendto(d->fd, r, len, 0, (struct sockaddr *)&from, fl);
    }
    return NULL;
}

static void dns_start(dns_fake *d)
{
    d->fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    bind(d->fd, (struct sockaddr *)&a, sizeof(a));
    getsockname(d->fd, (struct sockaddr *)&a, &al);
    d->port = ntohs(a.sin_port);
    pthread_create(&d->th, NULL, dns_run, d);
    smtp_route_set_dns_server("127.0.0.1", d->port);
}

static void dns_stop(dns_fake *d)
{
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons((uint16_t)d->port)};
    sendto(s, "stop", 4, 0, (struct sockaddr *)&a, sizeof(a));
    close(s);
    pthread_join(d->th, NULL);
    close(d->fd);
    smtp_route_set_dns_server(NULL, 0);
}

TEST(routes_dns)
{
    dns_fake d;
    dns_start(&d);
    smtp_hop h[8];
    hv_err e[8];
    int n[8];
    memset(e, 0, sizeof(e));
    n[0] = smtp_route_lookup("mx.test", "", h, 8, &e[0]);
    smtp_hop mx[3];
    memcpy(mx, h, sizeof(mx));
    n[1] = smtp_route_lookup("nomx.test", NULL, h, 8, &e[1]);
    smtp_hop nomx = h[0];
    n[2] = smtp_route_lookup("v6.test.", NULL, h, 8, &e[2]);
    smtp_hop v6 = h[0];
    n[3] = smtp_route_lookup("noaddr.test", NULL, h, 8, &e[3]);
    n[4] = smtp_route_lookup("nullmx.test", NULL, h, 8, &e[4]);
    n[5] = smtp_route_lookup("nx.test", NULL, h, 8, &e[5]);
    n[6] = smtp_route_lookup("fail.test", NULL, h, 8, &e[6]);
    n[7] = smtp_route_lookup("mx.test", "other.test=h:25", h, 2, &e[7]);
    dns_stop(&d);
    CHECKM(n[0] == 3, "%d %s", n[0], e[0].msg);
    CHECK(strcmp(mx[0].host, "a.mx.test") == 0 && mx[0].preference == 10 && mx[0].port == 25);
    CHECK(mx[1].preference == 20 && mx[2].preference == 20);
    CHECK((strcmp(mx[1].host, "b.mx.test") == 0 && strcmp(mx[2].host, "c.mx.test") == 0) ||
          (strcmp(mx[1].host, "c.mx.test") == 0 && strcmp(mx[2].host, "b.mx.test") == 0));
    CHECKM(n[1] == 1 && strcmp(nomx.host, "nomx.test") == 0 && nomx.port == 25, "%d %s", n[1],
           e[1].msg);
    CHECKM(n[2] == 1 && strcmp(v6.host, "v6.test") == 0, "%d %s", n[2], e[2].msg);
    CHECKM(n[3] == -ENOENT && strstr(e[3].msg, "no MX and no address"), "%d %s", n[3], e[3].msg);
    CHECKM(n[4] == -ENOENT && strstr(e[4].msg, "null MX"), "%d %s", n[4], e[4].msg);
    CHECKM(n[5] == -ENOENT && strstr(e[5].msg, "no such domain"), "%d %s", n[5], e[5].msg);
    CHECKM(n[6] == -EAGAIN, "%d %s", n[6], e[6].msg);
    CHECK(n[7] == 2);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (make_cert() != 0) {
        fprintf(stderr, "cannot make a test certificate\n");
        return 2;
    }
    RUN(reply_basic);
    RUN(reply_malformed);
    RUN(reply_limits);
    RUN(reply_two_in_one_feed);
    RUN(smtp_pipelined_dot_stuffing);
    RUN(smtp_lockstep_and_params);
    RUN(smtp_helo_fallback);
    RUN(lmtp_per_recipient_replies);
    RUN(all_refused_rset);
    RUN(mail_refused);
    RUN(malformed_and_refusing_servers);
    RUN(connection_drops);
    RUN(refuses_injection);
    RUN(auth_plain_loopback);
    RUN(large_message);
    RUN(starttls_modes);
    RUN(starttls_verification_failures);
    RUN(implicit_tls);
    RUN(starttls_fallback_and_injection);
    RUN(routes_static);
    RUN(routes_errors);
    RUN(routes_dns);
    SSL_CTX_free(server_ctx);
    return t_done();
}
