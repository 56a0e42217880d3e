/*
 * test_queue_runner.c - the delivery runner against a fake LMTP/SMTP
 * server on loopback: the LMTP contract (delivery id, 5xx bounce with a
 * DSN that goes out through the relay), a store that does not answer
 * (held, then released when it answers), an account that is not active
 * (held, then released by a directory change), and the control socket.
 *
 * Waits poll with generous limits; nothing asserts how long anything took.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "dir/dir.h"
#include "lib/buf.h"
#include "lib/conf.h"
#include "lib/log.h"
#include "queue/queue_internal.h"
#include "testlib.h"

/* ---------- a fake server ---------- */

typedef struct got {
    int lmtp;
    char from[256];
    char rcpt[256];
    char params[256];
    char *data;
} got;

typedef struct fake {
    int fd;
    int port;
    int lmtp;
    pthread_t tid;
    pthread_mutex_t mu;
    got msgs[64];
    int n;
    int stop;
} fake;

static int read_line(int fd, char *out, size_t max)
{
    size_t n = 0;
    while (n + 1 < max) {
        char c;
        ssize_t r = recv(fd, &c, 1, 0);
        if (r <= 0)
            return -1;
        out[n++] = c;
        if (c == '\n')
            break;
    }
    out[n] = 0;
    while (n && (out[n - 1] == '\n' || out[n - 1] == '\r'))
        out[--n] = 0;
    return (int)n;
}

static void say(int fd, const char *s) { (void)!send(fd, s, strlen(s), MSG_NOSIGNAL); }

typedef struct conn {
    fake *f;
    int fd;
} conn;

static void *conn_main(void *arg)
{
    conn *c = arg;
    fake *f = c->f;
    int fd = c->fd;
    free(c);
    char line[2048];
    char from[256] = "", rcpts[8][256], params[8][256];
    int nr = 0;
    say(fd, "220 fake ready\r\n");
    while (read_line(fd, line, sizeof(line)) >= 0) {
        if (!strncasecmp(line, "LHLO", 4) || !strncasecmp(line, "EHLO", 4)) {
            say(fd, f->lmtp ? "250-fake\r\n250-PIPELINING\r\n250-XHAVEN-DID\r\n250 8BITMIME\r\n"
                            : "250-fake\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
        } else if (!strncasecmp(line, "MAIL FROM:<", 11)) {
            snprintf(from, sizeof(from), "%.*s", (int)strcspn(line + 11, ">"), line + 11);
            nr = 0;
            say(fd, "250 2.1.0 ok\r\n");
        } else if (!strncasecmp(line, "RCPT TO:<", 9)) {
            const char *a = line + 9;
            size_t l = strcspn(a, ">");
            if (nr < 8) {
                snprintf(rcpts[nr], 256, "%.*s", (int)(l < 255 ? l : 255), a);
                snprintf(params[nr], 256, "%.255s", a[l] ? a + l + 1 : "");
            }
            if (strstr(a, "unknown"))
                say(fd, "550 5.1.1 no such user\r\n");
            else {
                nr++;
                say(fd, "250 2.1.5 ok\r\n");
            }
        } else if (!strcasecmp(line, "DATA")) {
            if (!nr) {
                say(fd, "554 5.5.1 no valid recipients\r\n");
                continue;
            }
            say(fd, "354 go\r\n");
            buf d;
            buf_init(&d);
            while (read_line(fd, line, sizeof(line)) >= 0 && strcmp(line, ".") != 0) {
                buf_append_str(&d, line[0] == '.' ? line + 1 : line);
                buf_append_str(&d, "\r\n");
            }
            pthread_mutex_lock(&f->mu);
            for (int i = 0; i < nr && f->n < 64; i++) {
                got *g = &f->msgs[f->n++];
                g->lmtp = f->lmtp;
                snprintf(g->from, sizeof(g->from), "%s", from);
                memcpy(g->rcpt, rcpts[i], sizeof(g->rcpt));
                memcpy(g->params, params[i], sizeof(g->params));
                g->data = strdup(d.data ? (char *)d.data : "");
            }
            pthread_mutex_unlock(&f->mu);
            buf_free(&d);
            for (int i = 0; i < (f->lmtp ? nr : 1); i++)
                say(fd, "250 2.0.0 stored\r\n");
            nr = 0;
        } else if (!strcasecmp(line, "RSET") || !strcasecmp(line, "NOOP")) {
            nr = 0;
            say(fd, "250 2.0.0 ok\r\n");
        } else if (!strcasecmp(line, "QUIT")) {
            say(fd, "221 2.0.0 bye\r\n");
            break;
        } else {
            say(fd, "500 5.5.2 what\r\n");
        }
    }
    close(fd);
    return NULL;
}

static void *fake_main(void *arg)
{
    fake *f = arg;
    for (;;) {
        int c = accept(f->fd, NULL, NULL);
        if (c < 0)
            break;
        conn *x = malloc(sizeof(*x));
        x->f = f;
        x->fd = c;
        pthread_t t;
        pthread_create(&t, NULL, conn_main, x);
        pthread_detach(t);
    }
    return NULL;
}

/* A free port: bound and closed again (the store-down test needs nobody
 * listening there at first). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    socklen_t l = sizeof(sa);
    getsockname(fd, (struct sockaddr *)&sa, &l);
    close(fd);
    return ntohs(sa.sin_port);
}

static int fake_start(fake *f, int port, int lmtp)
{
    memset(f, 0, sizeof(*f));
    pthread_mutex_init(&f->mu, NULL);
    f->port = port;
    f->lmtp = lmtp;
    f->fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(f->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(f->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(f->fd, 16) < 0)
        return -1;
    pthread_create(&f->tid, NULL, fake_main, f);
    return 0;
}

static void fake_stop(fake *f)
{
    shutdown(f->fd, SHUT_RDWR);
    close(f->fd);
    pthread_join(f->tid, NULL);
    for (int i = 0; i < f->n; i++)
        free(f->msgs[i].data);
}

static int fake_count(fake *f)
{
    pthread_mutex_lock(&f->mu);
    int n = f->n;
    pthread_mutex_unlock(&f->mu);
    return n;
}

/* ---------- waiting ---------- */

static void nap(void)
{
    struct timespec ts = {0, 20 * 1000000};
    nanosleep(&ts, NULL);
}

#define WAIT_FOR(cond)                                                   \
    do {                                                                 \
        for (int w_ = 0; w_ < 1500 && !(cond); w_++)                     \
            nap();                                                       \
    } while (0)

static int rcpt_state(queue *q, const char *id, int *kind, char *reason, size_t rlen)
{
    uint64_t v;
    queue_parse_id(id, &v);
    pthread_mutex_lock(&q->mu);
    qmsg *m = queue_find(q, v);
    int st = -1;
    if (m) {
        st = m->rcpts[0].state;
        if (kind)
            *kind = m->rcpts[0].hold_kind;
        if (reason)
            snprintf(reason, rlen, "%s", m->rcpts[0].reason);
    }
    pthread_mutex_unlock(&q->mu);
    return st;
}

static int submit1(queue *q, const char *from, const char *rcpt, const char *account,
                   const char *body, char id[QUEUE_ID_LEN + 1])
{
    queue_rcpt_in r = {.address = rcpt, .account = account};
    queue_envelope env = {.mail_from = from, .rcpts = &r, .nrcpts = 1,
                          .client_addr = "192.0.2.1", .client_helo = "c.example"};
    return queue_submit(q, &env, body, strlen(body), id, NULL);
}

static int ctl_list(const char *path, char *out, size_t len)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        close(fd);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return -1;
    }
    say(fd, "list\n");
    size_t n = 0;
    ssize_t r;
    while (n + 1 < len && (r = recv(fd, out + n, len - n - 1, 0)) > 0)
        n += (size_t)r;
    out[n] = 0;
    close(fd);
    return 0;
}

TEST(runner_end_to_end)
{
    const char *tmp = t_tmpdir();
    int lport = free_port(), rport = free_port();
    char path[4300];
    snprintf(path, sizeof(path), "%s/haven.conf", tmp);
    FILE *f = fopen(path, "w");
    CHECK(f);
    fprintf(f, "hostname = mx.test\nlisten = 127.0.0.1\nlmtp_port = %d\n"
               "directory = sqlite:dir.sqlite\nqueue_dir = queue\nrun_dir = run\n"
               "queue_delivery_threads = 3\nqueue_retry_min = 1\nqueue_retry_max = 2\n"
               "relay_routes = far.example=127.0.0.1:%d\nrelay_tls = none\n", lport, rport);
    fclose(f);
    conf *c;
    hv_err err = {0};
    CHECKM(conf_load(path, &c, &err) == 0, "%s", err.msg);
    struct dir *d;
    CHECKM(dir_open_conf(c, &d, &err) == 0, "%s", err.msg);
    CHECK(dir_account_add(d, "bob@example.org", NULL, "local", 0, &err) == 0);
    CHECK(dir_account_add(d, "carol@example.org", NULL, "local", 0, &err) == 0);
    CHECK(dir_account_set_state(d, "carol@example.org", DIR_STATE_RESTORING, &err) == 0);
    queue *q;
    CHECKM(queue_open_conf(c, &q, &err) == 0, "%s", err.msg);
    CHECKM(queue_runner_start(q, c, &err) == 0, "%s", err.msg);

    /* 1. The store does not answer: held, not bounced, not deferred. */
    char id1[QUEUE_ID_LEN + 1];
    CHECK(submit1(q, "s@far.example", "bob@example.org", "bob@example.org",
                  "Subject: one\r\n\r\nfirst\r\n", id1) == 0);
    int kind = 0;
    char reason[512] = "";
    WAIT_FOR(rcpt_state(q, id1, &kind, reason, sizeof(reason)) == QUEUE_HELD);
    CHECKM(rcpt_state(q, id1, &kind, reason, sizeof(reason)) == QUEUE_HELD, "state %d",
           rcpt_state(q, id1, NULL, NULL, 0));
    CHECK(kind == QHOLD_STORE && strstr(reason, "store not answering"));

    /* It answers: the probe finds it and the mail goes, with its delivery id. */
    fake lmtp, relay;
    CHECK(fake_start(&lmtp, lport, 1) == 0);
    CHECK(fake_start(&relay, rport, 0) == 0);
    WAIT_FOR(rcpt_state(q, id1, NULL, NULL, 0) < 0);
    CHECK(rcpt_state(q, id1, NULL, NULL, 0) < 0);
    CHECK(fake_count(&lmtp) == 1);
    char did[64];
    snprintf(did, sizeof(did), "XHAVEN-DID=%s-0", id1);
    CHECK(strcmp(lmtp.msgs[0].rcpt, "bob@example.org") == 0);
    CHECKM(strstr(lmtp.msgs[0].params, did), "%s", lmtp.msgs[0].params);
    CHECK(strcmp(lmtp.msgs[0].from, "s@far.example") == 0);
    CHECK(strstr(lmtp.msgs[0].data, "first"));

    /* 2. An account being restored: held without asking the store, then
     * released by the directory change, in arrival order. */
    char ids[3][QUEUE_ID_LEN + 1];
    for (int i = 0; i < 3; i++) {
        char body[64];
        snprintf(body, sizeof(body), "Subject: c%d\r\n\r\nx\r\n", i);
        CHECK(submit1(q, "s@far.example", "carol@example.org", "carol@example.org", body, ids[i]) == 0);
    }
    for (int i = 0; i < 3; i++) {
        WAIT_FOR(rcpt_state(q, ids[i], NULL, NULL, 0) == QUEUE_HELD);
        CHECK(rcpt_state(q, ids[i], &kind, reason, sizeof(reason)) == QUEUE_HELD);
        CHECK(kind == QHOLD_ACCOUNT && strcmp(reason, "account is restoring") == 0);
    }
    CHECK(fake_count(&lmtp) == 1);
    char rundir[4096], sock[4200], listing[8192];
    conf_path(c, "run_dir", rundir, sizeof(rundir));
    snprintf(sock, sizeof(sock), "%s/queue.sock", rundir);
    CHECK(ctl_list(sock, listing, sizeof(listing)) == 0);
    CHECK(strncmp(listing, "ok\n", 3) == 0);
    CHECK(strstr(listing, ids[2]) && strstr(listing, "carol@example.org held account is restoring"));
    CHECK(dir_account_set_state(d, "carol@example.org", DIR_STATE_ACTIVE, &err) == 0);
    WAIT_FOR(fake_count(&lmtp) == 4);
    CHECK(fake_count(&lmtp) == 4);
    for (int i = 0; i < 3; i++) {
        char subj[32];
        snprintf(subj, sizeof(subj), "Subject: c%d", i);
        CHECK(strstr(lmtp.msgs[1 + i].data, subj));
    }

    /* 3. A 5xx bounces; the DSN goes to the remote sender via the route. */
    char id3[QUEUE_ID_LEN + 1];
    CHECK(submit1(q, "s@far.example", "unknown@example.org", "unknown@example.org",
                  "Subject: lost\r\n\r\nnobody\r\n", id3) == 0);
    WAIT_FOR(fake_count(&relay) == 1);
    CHECK(fake_count(&relay) == 1);
    CHECK(relay.msgs[0].from[0] == 0 && strcmp(relay.msgs[0].rcpt, "s@far.example") == 0);
    CHECK(strstr(relay.msgs[0].data, "Action: failed"));
    CHECK(strstr(relay.msgs[0].data, "Status: 5.1.1"));
    CHECK(strstr(relay.msgs[0].data, "Reporting-MTA: dns; mx.test"));
    WAIT_FOR(rcpt_state(q, id3, NULL, NULL, 0) < 0);
    CHECK(rcpt_state(q, id3, NULL, NULL, 0) < 0);

    /* 4. Relay of submitted mail. */
    char id4[QUEUE_ID_LEN + 1];
    CHECK(submit1(q, "bob@example.org", "z@far.example", NULL, "Subject: out\r\n\r\nout\r\n", id4) == 0);
    WAIT_FOR(fake_count(&relay) == 2);
    CHECK(fake_count(&relay) == 2);
    CHECK(strcmp(relay.msgs[1].rcpt, "z@far.example") == 0 && strstr(relay.msgs[1].data, "out"));

    queue_runner_stop(q);
    queue_close(q);
    dir_close(d);
    conf_free(c);
    fake_stop(&lmtp);
    fake_stop(&relay);
}

int main(void)
{
    log_init("test_queue_runner", 0, LOG_LVL_ERROR);
    RUN(runner_end_to_end);
    return t_done();
}
