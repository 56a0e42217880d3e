/*
 * test_queue.c - the durable queue: storage, recovery, the scheduler, DSNs
 * and the operator commands, without sockets.
 *
 * The scheduler is driven by hand with a fake clock: sched_pick gives the
 * next recipient, queue_finish records a made-up outcome. Everything that
 * touches the network lives in queue_runner.c and is covered by the
 * integration tests.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/crc32c.h"
#include "lib/fsutil.h"
#include "lib/log.h"
#include "queue/queue_internal.h"
#include "testlib.h"

/* ---------- helpers ---------- */

static int64_t fake_now = 1700000000000;
static int64_t clock_fn(void *ctx)
{
    (void)ctx;
    return fake_now;
}

static queue *open_q(const char *dir, uint64_t segsize)
{
    queue_options o = {.lifetime_s = 3600, .retry_min_s = 60, .retry_max_s = 600};
    queue_tuning t = {.segment_size = segsize, .now_ms = clock_fn};
    queue *q = NULL;
    hv_err err = {0};
    if (queue_open_ex(dir, &o, &t, &q, &err) < 0) {
        fprintf(stderr, "  queue_open: %s\n", err.msg);
        return NULL;
    }
    return q;
}

static int submit(queue *q, const char *from, const char *client, const char *rcpt,
                  const char *account, const char *body, char id[QUEUE_ID_LEN + 1])
{
    queue_rcpt_in r = {.address = rcpt, .account = account};
    queue_envelope env = {.mail_from = from, .rcpts = &r, .nrcpts = 1,
                          .client_addr = client, .client_helo = "client.example"};
    hv_err err = {0};
    int rc = queue_submit(q, &env, body, strlen(body), id, &err);
    if (rc < 0)
        fprintf(stderr, "  queue_submit: %s\n", err.msg);
    return rc;
}

static size_t count_msgs(queue *q)
{
    pthread_mutex_lock(&q->mu);
    size_t n = q->nmsgs;
    pthread_mutex_unlock(&q->mu);
    return n;
}

static qmsg *find(queue *q, const char *id)
{
    uint64_t v;
    if (queue_parse_id(id, &v) < 0)
        return NULL;
    return queue_find(q, v);
}

static int data_is(queue *q, const char *id, const char *body)
{
    qmsg *m = find(q, id);
    if (!m)
        return 0;
    buf b;
    buf_init(&b);
    hv_err err;
    int ok = queue_read_data(q, m, &b, &err) == 0 && b.len == strlen(body) &&
             memcmp(b.data, body, b.len) == 0;
    buf_free(&b);
    return ok;
}

static void finish(queue *q, qrcpt *r, enum qoutcome out, int kind, const char *reason)
{
    qresult res = {.out = out, .hold_kind = kind};
    snprintf(res.reason, sizeof(res.reason), "%s", reason);
    queue_finish(q, &r, &res, 1, NULL, NULL);
}

static qrcpt *pick(queue *q)
{
    pthread_mutex_lock(&q->mu);
    qrcpt *r = sched_pick(q, fake_now);
    pthread_mutex_unlock(&q->mu);
    return r;
}

static char *ctl(queue *q, const char *cmd)
{
    char copy[1024];
    snprintf(copy, sizeof(copy), "%s", cmd);
    char *argv[16];
    int argc = 0;
    for (char *p = strtok(copy, " "); p && argc < 16; p = strtok(NULL, " "))
        argv[argc++] = p;
    buf out;
    buf_init(&out);
    hv_err err = {0};
    if (queue_control(q, argc, argv, &out, &err) < 0) {
        buf_free(&out);
        char *e = malloc(600);
        snprintf(e, 600, "ERROR %s", err.msg);
        return e;
    }
    char *s = strdup(out.data ? (char *)out.data : "");
    buf_free(&out);
    return s;
}

/* ---------- storage ---------- */

TEST(submit_then_recover)
{
    const char *dir = t_tmpdir();
    queue *q = open_q(dir, 0);
    CHECK(q);
    char ids[20][QUEUE_ID_LEN + 1];
    for (int i = 0; i < 20; i++) {
        char body[64];
        snprintf(body, sizeof(body), "Subject: %d\r\n\r\nbody %d\r\n", i, i);
        CHECK(submit(q, "a@remote.example", "192.0.2.1", "bob@example.org", "bob@example.org",
                     body, ids[i]) == 0);
        CHECK(strlen(ids[i]) == QUEUE_ID_LEN);
        if (i)
            CHECK(strcmp(ids[i - 1], ids[i]) < 0); /* sortable by arrival */
    }
    queue_close(q);
    q = open_q(dir, 0);
    CHECK(q);
    CHECK(count_msgs(q) == 20);
    for (int i = 0; i < 20; i++) {
        char body[64];
        snprintf(body, sizeof(body), "Subject: %d\r\n\r\nbody %d\r\n", i, i);
        CHECK(data_is(q, ids[i], body));
        CHECK(find(q, ids[i])->rcpts[0].state == QUEUE_READY);
    }
    /* New ids stay above the old ones even when the clock went back. */
    fake_now -= 100000;
    char id[QUEUE_ID_LEN + 1];
    CHECK(submit(q, "", "192.0.2.1", "x@example.org", "x@example.org", "x\r\n", id) == 0);
    CHECK(strcmp(id, ids[19]) > 0);
    fake_now += 100000;
    queue_close(q);
}

TEST(bad_input_refused)
{
    queue *q = open_q(t_tmpdir(), 0);
    CHECK(q);
    char id[QUEUE_ID_LEN + 1];
    queue_envelope env = {.mail_from = "a@b", .rcpts = NULL, .nrcpts = 0};
    hv_err err = {0};
    CHECK(queue_submit(q, &env, "x", 1, id, &err) == -EINVAL);
    queue_rcpt_in r = {.address = "b@c"};
    env.rcpts = &r;
    env.nrcpts = 1;
    size_t big = 50u << 20;
    char *p = calloc(1, big + 1);
    CHECK(queue_submit(q, &env, p, big + 1, id, &err) == -EFBIG);
    free(p);
    CHECK(count_msgs(q) == 0);
    queue_close(q);
}

TEST(state_changes_recovered)
{
    const char *dir = t_tmpdir();
    queue *q = open_q(dir, 0);
    CHECK(q);
    char a[QUEUE_ID_LEN + 1], b[QUEUE_ID_LEN + 1], c[QUEUE_ID_LEN + 1];
    CHECK(submit(q, "s@x.example", "192.0.2.1", "bob@example.org", "bob@example.org", "A\r\n", a) == 0);
    CHECK(submit(q, "s@x.example", "192.0.2.1", "bob@example.org", "bob@example.org", "B\r\n", b) == 0);
    CHECK(submit(q, "s@x.example", "192.0.2.1", "bob@example.org", "bob@example.org", "C\r\n", c) == 0);
    qrcpt *r1 = pick(q), *r2 = pick(q), *r3 = pick(q);
    CHECK(r1 && r2 && r3);
    CHECK(r1->msg->id < r2->msg->id && r2->msg->id < r3->msg->id); /* FIFO per sender */
    finish(q, r1, QOUT_DELIVERED, 0, "250 2.0.0 ok");
    finish(q, r2, QOUT_DEFERRED, 0, "451 4.3.0 try later");
    finish(q, r3, QOUT_HELD, QHOLD_ACCOUNT, "450 4.2.1 account is restoring");
    pthread_mutex_lock(&q->mu);
    CHECK(queue_sync_locked(q, NULL) == 0);
    pthread_mutex_unlock(&q->mu);
    queue_close(q);
    q = open_q(dir, 0);
    CHECK(q);
    CHECK(count_msgs(q) == 2);
    CHECK(!find(q, a));
    qrcpt *x = &find(q, b)->rcpts[0];
    CHECK(x->state == QUEUE_DEFERRED && x->attempts == 1);
    CHECK(x->next_try == fake_now + 60000);
    CHECK(strcmp(x->reason, "451 4.3.0 try later") == 0);
    x = &find(q, c)->rcpts[0];
    CHECK(x->state == QUEUE_HELD && x->hold_kind == QHOLD_ACCOUNT);
    CHECK(strstr(x->reason, "restoring"));
    CHECK(pick(q) == NULL); /* nothing ready: one waits, one is held */
    queue_close(q);
}

/* The last segment's file, for the damage tests. */
static void last_segment(const char *dir, char *out, size_t len)
{
    snprintf(out, len, "%s/%020d.qlog", dir, 1);
}

TEST(torn_tail_at_every_boundary)
{
    /* Write 6 messages, note the file size after each, then for every
     * size in between cut the file there: recovery keeps exactly the
     * messages that were complete and accepts new ones afterwards. */
    const char *base = t_tmpdir();
    char dir[4200];
    snprintf(dir, sizeof(dir), "%s/orig", base);
    queue *q = open_q(dir, 0);
    CHECK(q);
    char path[4400];
    last_segment(dir, path, sizeof(path));
    off_t sizes[7];
    struct stat st;
    CHECK(stat(path, &st) == 0);
    sizes[0] = st.st_size;
    char ids[6][QUEUE_ID_LEN + 1];
    for (int i = 0; i < 6; i++) {
        char body[200];
        snprintf(body, sizeof(body), "Subject: m%d\r\n\r\n%0*d\r\n", i, 20 + i * 7, i);
        CHECK(submit(q, "s@x.example", "192.0.2.1", "bob@example.org", "bob@example.org", body, ids[i]) == 0);
        CHECK(stat(path, &st) == 0);
        sizes[i + 1] = st.st_size;
    }
    queue_close(q);
    char *orig;
    size_t olen;
    CHECK(fs_read_file(path, &orig, &olen, NULL) == 0);
    int cases = 0;
    for (off_t cut = sizes[0]; cut <= sizes[6]; cut++) {
        char d2[4200], p2[4400];
        snprintf(d2, sizeof(d2), "%s/cut", base);
        fs_rm_rf(d2);
        CHECK(fs_mkdir_p(d2, 0700, NULL) == 0);
        last_segment(d2, p2, sizeof(p2));
        int fd = open(p2, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        CHECK(fd >= 0);
        CHECK(write(fd, orig, (size_t)cut) == (ssize_t)cut);
        close(fd);
        q = open_q(d2, 0);
        CHECK(q);
        int whole = 0;
        while (whole < 6 && sizes[whole + 1] <= cut)
            whole++;
        CHECKM(count_msgs(q) == (size_t)whole, "cut %lld: %zu messages, want %d",
               (long long)cut, count_msgs(q), whole);
        for (int i = 0; i < whole; i++)
            CHECK(find(q, ids[i]));
        CHECK(q->ndamage == 0);
        CHECK(q->dropped_tail == (size_t)(cut - sizes[whole]));
        char id[QUEUE_ID_LEN + 1];
        CHECK(submit(q, "s@x.example", "192.0.2.1", "bob@example.org", "bob@example.org", "new\r\n", id) == 0);
        queue_close(q);
        q = open_q(d2, 0);
        CHECK(q);
        CHECK(count_msgs(q) == (size_t)whole + 1);
        CHECK(data_is(q, id, "new\r\n"));
        queue_close(q);
        cases++;
    }
    free(orig);
    CHECK(cases > 100);
}

TEST(mid_log_damage_reported_and_skipped)
{
    const char *dir = t_tmpdir();
    queue *q = open_q(dir, 0);
    CHECK(q);
    char path[4400];
    last_segment(dir, path, sizeof(path));
    char ids[3][QUEUE_ID_LEN + 1];
    struct stat st;
    off_t mid_at = 0;
    for (int i = 0; i < 3; i++) {
        if (i == 1) {
            CHECK(stat(path, &st) == 0);
            mid_at = st.st_size;
        }
        CHECK(submit(q, "s@x.example", "192.0.2.1", "bob@example.org", "bob@example.org",
                     "Subject: x\r\n\r\nhello\r\n", ids[i]) == 0);
    }
    queue_close(q);
    /* Flip a byte inside the second message's frame. */
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0);
    char c;
    CHECK(pread(fd, &c, 1, mid_at + 40) == 1);
    c ^= 0x55;
    CHECK(pwrite(fd, &c, 1, mid_at + 40) == 1);
    close(fd);
    q = open_q(dir, 0);
    CHECK(q);
    CHECK(q->ndamage == 1);
    CHECK(q->damage[0].seg == 1 && q->damage[0].off == (uint64_t)mid_at);
    CHECK(count_msgs(q) == 2);
    CHECK(find(q, ids[0]) && !find(q, ids[1]) && find(q, ids[2]));
    CHECK(q->dropped_tail == 0);
    queue_close(q);
}

typedef struct submitter {
    queue *q;
    int n, k;
    int failed;
} submitter;

static void *submit_thread(void *arg)
{
    submitter *s = arg;
    for (int i = 0; i < s->n; i++) {
        char body[100], id[QUEUE_ID_LEN + 1];
        snprintf(body, sizeof(body), "Subject: t%d-%d\r\n\r\nx\r\n", s->k, i);
        char client[32];
        snprintf(client, sizeof(client), "192.0.2.%d", s->k);
        if (submit(s->q, "s@x.example", client, "bob@example.org", "bob@example.org", body, id) < 0)
            s->failed = 1;
    }
    return NULL;
}

TEST(group_commit_under_threads)
{
    const char *dir = t_tmpdir();
    queue *q = open_q(dir, 64 * 1024); /* small segments: rotations too */
    CHECK(q);
    enum { T = 16, N = 60 };
    pthread_t tid[T];
    submitter s[T];
    for (int i = 0; i < T; i++) {
        s[i] = (submitter){q, N, i, 0};
        pthread_create(&tid[i], NULL, submit_thread, &s[i]);
    }
    for (int i = 0; i < T; i++)
        pthread_join(tid[i], NULL);
    for (int i = 0; i < T; i++)
        CHECK(!s[i].failed);
    CHECK(count_msgs(q) == T * N);
    /* Information, not an assertion (it depends on the disk's speed). */
    fprintf(stderr, "  %llu submits, %llu syncs\n", (unsigned long long)q->nsubmits,
            (unsigned long long)q->nsyncs);
    queue_close(q);
    q = open_q(dir, 64 * 1024);
    CHECK(q);
    CHECK(count_msgs(q) == T * N);
    CHECK(q->ndamage == 0 && q->dropped_tail == 0);
    queue_close(q);
}

/* ---------- the scheduler ---------- */

static queue *sched_q(void)
{
    queue *q = open_q(t_tmpdir(), 0);
    if (q) {
        q->account_cap = 4;
        q->domain_cap = 10;
    }
    return q;
}

TEST(flood_from_one_sender_does_not_delay_another)
{
    queue *q = sched_q();
    CHECK(q);
    char id[QUEUE_ID_LEN + 1];
    for (int i = 0; i < 300; i++)
        CHECK(submit(q, "spam@flood.example", "198.51.100.9", "x@example.org", "x@example.org", "f\r\n", id) == 0);
    for (int i = 0; i < 300; i++) {
        char a[64];
        snprintf(a, sizeof(a), "u%d@example.org", i);
        CHECK(submit(q, "spam@flood.example", "198.51.100.9", a, a, "f\r\n", id) == 0);
    }
    char normal[QUEUE_ID_LEN + 1];
    CHECK(submit(q, "friend@ok.example", "203.0.113.5", "y@example.org", "y@example.org", "n\r\n", normal) == 0);
    /* The normal message is among the first two picks although 600 came
     * before it: senders take turns. */
    qrcpt *r1 = pick(q), *r2 = pick(q);
    CHECK(r1 && r2);
    CHECK(find(q, normal) == r1->msg || find(q, normal) == r2->msg);
    finish(q, r1, QOUT_DELIVERED, 0, "250 ok");
    finish(q, r2, QOUT_DELIVERED, 0, "250 ok");
    queue_close(q);
}

TEST(account_cap_and_destination_round_robin)
{
    queue *q = sched_q();
    CHECK(q);
    char id[QUEUE_ID_LEN + 1];
    for (int i = 0; i < 50; i++)
        CHECK(submit(q, "a@s.example", "192.0.2.1", "x@example.org", "x@example.org", "x\r\n", id) == 0);
    char y[QUEUE_ID_LEN + 1];
    CHECK(submit(q, "a@s.example", "192.0.2.1", "y@example.org", "y@example.org", "y\r\n", y) == 0);
    /* At most 4 to x in flight; y is not stuck behind x's backlog. */
    qrcpt *got[10];
    int nx = 0, ny = 0, n = 0;
    for (; n < 10; n++) {
        got[n] = pick(q);
        if (!got[n])
            break;
        if (strcmp(got[n]->account, "x@example.org") == 0)
            nx++;
        else
            ny++;
    }
    CHECK(nx == 4 && ny == 1 && n == 5);
    /* One finishes: exactly one more to x. */
    finish(q, got[0], QOUT_DELIVERED, 0, "250 ok");
    qrcpt *r = pick(q);
    CHECK(r && strcmp(r->account, "x@example.org") == 0);
    CHECK(pick(q) == NULL);
    finish(q, r, QOUT_DELIVERED, 0, "250 ok");
    for (int i = 1; i < n; i++)
        finish(q, got[i], QOUT_DELIVERED, 0, "250 ok");
    queue_close(q);
}

TEST(two_senders_share_a_capped_account)
{
    queue *q = sched_q();
    CHECK(q);
    q->account_cap = 1;
    char id[QUEUE_ID_LEN + 1], b[QUEUE_ID_LEN + 1];
    for (int i = 0; i < 100; i++)
        CHECK(submit(q, "a@s.example", "192.0.2.1", "x@example.org", "x@example.org", "x\r\n", id) == 0);
    CHECK(submit(q, "b@t.example", "192.0.2.2", "x@example.org", "x@example.org", "b\r\n", b) == 0);
    int at = -1;
    for (int i = 0; i < 4 && at < 0; i++) {
        qrcpt *r = pick(q);
        CHECK(r);
        CHECK(pick(q) == NULL); /* the cap */
        if (r->msg == find(q, b))
            at = i;
        finish(q, r, QOUT_DELIVERED, 0, "250 ok");
    }
    CHECK(at >= 0 && at <= 1);
    queue_close(q);
}

TEST(backoff_doubles_to_max_then_lifetime_bounces)
{
    queue *q = sched_q();
    CHECK(q);
    int64_t t0 = fake_now;
    char id[QUEUE_ID_LEN + 1];
    CHECK(submit(q, "s@remote.example", "192.0.2.1", "bob@example.org", "bob@example.org",
                 "Subject: hi\r\n\r\nbody\r\n", id) == 0);
    int64_t want[] = {60, 120, 240, 480, 600, 600};
    for (int i = 0; i < 6; i++) {
        qrcpt *r = pick(q);
        CHECKM(r, "attempt %d", i);
        finish(q, r, QOUT_DEFERRED, 0, "451 4.3.0 later");
        r = &find(q, id)->rcpts[0];
        CHECK(r->state == QUEUE_DEFERRED && r->attempts == (uint32_t)i + 1);
        CHECKM(r->next_try == fake_now + want[i] * 1000, "attempt %d: %lld", i,
               (long long)(r->next_try - fake_now));
        CHECK(pick(q) == NULL); /* not before its time */
        fake_now = r->next_try;
    }
    /* Retries never go past the lifetime (3600 s)... */
    while (fake_now < t0 + 3600 * 1000) {
        qrcpt *r = pick(q);
        CHECK(r);
        finish(q, r, QOUT_DEFERRED, 0, "451 4.3.0 later");
        r = &find(q, id)->rcpts[0];
        CHECK(r->next_try <= t0 + 3600 * 1000);
        fake_now = r->next_try;
    }
    /* ... and the first failure at it bounces, with a DSN to the sender. */
    qrcpt *r = pick(q);
    CHECK(r);
    finish(q, r, QOUT_DEFERRED, 0, "451 4.3.0 later");
    CHECK(!find(q, id));
    CHECK(count_msgs(q) == 1);
    pthread_mutex_lock(&q->mu);
    size_t n;
    qmsg **all = queue_sorted(q, &n);
    qmsg *dsn = all[0];
    free(all);
    pthread_mutex_unlock(&q->mu);
    CHECK(dsn->flags & QMSG_IS_DSN);
    CHECK(strcmp(dsn->mail_from, "") == 0);
    CHECK(strcmp(dsn->rcpts[0].address, "s@remote.example") == 0);
    buf b;
    buf_init(&b);
    CHECK(queue_read_data(q, dsn, &b, NULL) == 0);
    const char *t = (const char *)b.data;
    CHECK(strstr(t, "Action: failed"));
    CHECK(strstr(t, "Status: 4.3.0"));
    CHECK(strstr(t, "queue lifetime"));
    buf_free(&b);
    fake_now = t0 + 7200 * 1000;
    queue_close(q);
}

TEST(held_never_expires)
{
    queue *q = sched_q();
    CHECK(q);
    char id[QUEUE_ID_LEN + 1];
    CHECK(submit(q, "s@remote.example", "192.0.2.1", "bob@example.org", "bob@example.org", "x\r\n", id) == 0);
    qrcpt *r = pick(q);
    finish(q, r, QOUT_HELD, QHOLD_ACCOUNT, "account is restoring");
    fake_now += 30LL * 86400 * 1000;
    CHECK(pick(q) == NULL);
    CHECK(find(q, id) && find(q, id)->rcpts[0].state == QUEUE_HELD);
    CHECK(count_msgs(q) == 1);
    queue_close(q);
}

TEST(release_delivers_held_mail_in_arrival_order_one_at_a_time)
{
    queue *q = sched_q();
    CHECK(q);
    char ids[30][QUEUE_ID_LEN + 1];
    /* From three senders, interleaved. */
    for (int i = 0; i < 30; i++) {
        char client[32];
        snprintf(client, sizeof(client), "192.0.2.%d", i % 3);
        CHECK(submit(q, "s@remote.example", client, "bob@example.org", "bob@example.org", "x\r\n", ids[i]) == 0);
    }
    char other[QUEUE_ID_LEN + 1];
    CHECK(submit(q, "s@remote.example", "192.0.2.1", "carol@example.org", "carol@example.org", "c\r\n", other) == 0);
    for (;;) {
        qrcpt *r = pick(q);
        if (!r)
            break;
        if (strcmp(r->account, "bob@example.org") == 0)
            finish(q, r, QOUT_HELD, QHOLD_ACCOUNT, "account is restoring");
        else
            finish(q, r, QOUT_DELIVERED, 0, "250 ok");
    }
    CHECK(count_msgs(q) == 30);
    /* A new message for bob comes while he is still held, and is picked
     * first: the runner sees the account active and held mail waiting,
     * and puts it behind them. */
    char late[QUEUE_ID_LEN + 1];
    CHECK(submit(q, "s@remote.example", "192.0.2.7", "bob@example.org", "bob@example.org", "late\r\n", late) == 0);
    qrcpt *lr = pick(q);
    CHECK(lr && lr->msg == find(q, late));
    pthread_mutex_lock(&q->mu);
    qdest *d = lr->dest;
    CHECK(d->held == 30);
    size_t k = sched_release_dest(q, d, 1u << QHOLD_ACCOUNT | 1u << QHOLD_STORE);
    sched_release_busy(q, lr);
    sched_make_ready(q, lr);
    pthread_mutex_unlock(&q->mu);
    CHECK(k == 30);
    for (int i = 0; i <= 30; i++) {
        qrcpt *r = pick(q);
        CHECKM(r, "release %d", i);
        CHECK(r->msg == find(q, i < 30 ? ids[i] : late));
        CHECK(pick(q) == NULL); /* one at a time */
        finish(q, r, QOUT_DELIVERED, 0, "250 ok");
    }
    CHECK(count_msgs(q) == 0);
    pthread_mutex_lock(&q->mu);
    CHECK(q->ndests == 0 && q->rring == NULL && q->sring == NULL);
    pthread_mutex_unlock(&q->mu);
    queue_close(q);
}

TEST(reply_mapping_follows_the_lmtp_contract)
{
    qresult r;
    queue_reply_result(1, 250, "2.1.5", "ok", &r);
    CHECK(r.out == QOUT_DELIVERED);
    queue_reply_result(1, 450, "4.2.1", "<b@x> account is restoring", &r);
    CHECK(r.out == QOUT_HELD && r.hold_kind == QHOLD_ACCOUNT);
    CHECK(strcmp(r.reason, "450 4.2.1 <b@x> account is restoring") == 0);
    queue_reply_result(1, 452, "4.2.2", "over quota", &r);
    CHECK(r.out == QOUT_DEFERRED);
    queue_reply_result(1, 451, "4.3.0", "x", &r);
    CHECK(r.out == QOUT_DEFERRED);
    queue_reply_result(1, 550, "5.1.1", "unknown", &r);
    CHECK(r.out == QOUT_BOUNCED);
    queue_reply_result(1, 0, "", "connection refused", &r);
    CHECK(r.out == QOUT_HELD && r.hold_kind == QHOLD_STORE);
    CHECK(strstr(r.reason, "store not answering"));
    queue_reply_result(0, 0, "", "connection reset", &r);
    CHECK(r.out == QOUT_DEFERRED);
    queue_reply_result(0, 450, "4.2.1", "mailbox busy", &r); /* SMTP: just temporary */
    CHECK(r.out == QOUT_DEFERRED);
}

/* ---------- DSNs ---------- */

static qmsg *only_dsn(queue *q)
{
    pthread_mutex_lock(&q->mu);
    size_t n;
    qmsg **all = queue_sorted(q, &n);
    qmsg *d = NULL;
    for (size_t i = 0; i < n; i++)
        if (all[i]->flags & QMSG_IS_DSN)
            d = all[i];
    free(all);
    pthread_mutex_unlock(&q->mu);
    return d;
}

static char *dsn_text(queue *q, qmsg *m)
{
    buf b;
    buf_init(&b);
    if (queue_read_data(q, m, &b, NULL) < 0) {
        buf_free(&b);
        return strdup("");
    }
    return (char *)b.data;
}

static int resolve_local(void *ctx, const char *address, char account[256])
{
    (void)ctx;
    if (strstr(address, "@example.org")) {
        snprintf(account, 256, "%s", address);
        return 1;
    }
    return 0;
}

TEST(bounce_dsn_is_rfc3464_and_atomic)
{
    const char *dir = t_tmpdir();
    queue *q = open_q(dir, 0);
    CHECK(q);
    queue_rcpt_in rs[2] = {
        {.address = "bob@example.org", .account = "bob@example.org", .orcpt = "rfc822;bob@example.org"},
        {.address = "carol@example.org", .account = "carol@example.org"},
    };
    queue_envelope env = {.mail_from = "alice@example.org", .rcpts = rs, .nrcpts = 2,
                          .client_addr = "192.0.2.1", .envid = "ENV123"};
    const char *body = "From: alice@example.org\r\nSubject: lunch\r\n\r\nsecret body\r\n";
    char id[QUEUE_ID_LEN + 1];
    CHECK(queue_submit(q, &env, body, strlen(body), id, NULL) == 0);
    qrcpt *r1 = pick(q), *r2 = pick(q);
    CHECK(r1 && r2);
    qrcpt *rr[2] = {r1, r2};
    qresult res[2] = {{.out = QOUT_BOUNCED}, {.out = QOUT_DELIVERED}};
    snprintf(res[0].reason, sizeof(res[0].reason), "550 5.1.1 <bob@example.org> unknown user");
    snprintf(res[1].reason, sizeof(res[1].reason), "250 2.0.0 ok");
    if (r1->idx == 1) {
        rr[0] = r2;
        rr[1] = r1;
    }
    queue_finish(q, rr, res, 2, resolve_local, NULL);
    CHECK(!find(q, id));
    qmsg *d = only_dsn(q);
    CHECK(d);
    CHECK(d->mail_from[0] == 0 && strcmp(d->rcpts[0].address, "alice@example.org") == 0);
    CHECK(d->rcpts[0].account && strcmp(d->rcpts[0].account, "alice@example.org") == 0);
    char *t = dsn_text(q, d);
    CHECK(strstr(t, "Content-Type: multipart/report; report-type=delivery-status;"));
    CHECK(strstr(t, "Content-Type: message/delivery-status"));
    CHECK(strstr(t, "Reporting-MTA: dns; localhost\r\n"));
    CHECK(strstr(t, "Original-Envelope-Id: ENV123\r\n"));
    CHECK(strstr(t, "Arrival-Date: "));
    CHECK(strstr(t, "Final-Recipient: rfc822; bob@example.org\r\n"));
    CHECK(strstr(t, "Original-Recipient: rfc822;bob@example.org\r\n"));
    CHECK(strstr(t, "Action: failed\r\n"));
    CHECK(strstr(t, "Status: 5.1.1\r\n"));
    CHECK(strstr(t, "Diagnostic-Code: smtp; 550 5.1.1 <bob@example.org> unknown user\r\n"));
    CHECK(!strstr(t, "carol@example.org")); /* delivered: not in the report */
    CHECK(strstr(t, "Content-Type: message/rfc822"));
    CHECK(strstr(t, "secret body")); /* RET=FULL by default */
    CHECK(strstr(t, "To: <alice@example.org>"));
    free(t);
    /* Recovery: the DSN is there and the original is finished. */
    queue_close(q);
    q = open_q(dir, 0);
    CHECK(q);
    CHECK(count_msgs(q) == 1 && only_dsn(q) && !find(q, id));
    /* A DSN that bounces is dropped, never bounced again. */
    qrcpt *r = pick(q);
    CHECK(r);
    finish(q, r, QOUT_BOUNCED, 0, "550 5.1.1 no");
    CHECK(count_msgs(q) == 0);
    queue_close(q);
}

TEST(dsn_options)
{
    queue *q = sched_q();
    CHECK(q);
    char id[QUEUE_ID_LEN + 1];
    /* Null sender: bounced without a DSN. */
    CHECK(submit(q, "", "192.0.2.1", "bob@example.org", "bob@example.org", "x\r\n", id) == 0);
    finish(q, pick(q), QOUT_BOUNCED, 0, "550 5.1.1 no");
    CHECK(count_msgs(q) == 0);
    /* NOTIFY=NEVER: none either. */
    queue_rcpt_in r = {.address = "bob@example.org", .account = "bob@example.org",
                       .notify = QUEUE_NOTIFY_NEVER};
    queue_envelope env = {.mail_from = "a@remote.example", .rcpts = &r, .nrcpts = 1,
                          .client_addr = "192.0.2.1"};
    CHECK(queue_submit(q, &env, "x\r\n", 3, id, NULL) == 0);
    finish(q, pick(q), QOUT_BOUNCED, 0, "550 5.1.1 no");
    CHECK(count_msgs(q) == 0);
    /* NOTIFY=SUCCESS: a "delivered" report, headers only. */
    r.notify = QUEUE_NOTIFY_SUCCESS;
    const char *body = "Subject: s\r\n\r\nthe body\r\n";
    CHECK(queue_submit(q, &env, body, strlen(body), id, NULL) == 0);
    finish(q, pick(q), QOUT_DELIVERED, 0, "250 2.0.0 ok");
    qmsg *d = only_dsn(q);
    CHECK(d && !find(q, id));
    char *t = dsn_text(q, d);
    CHECK(strstr(t, "Action: delivered\r\n") && strstr(t, "Status: 2.0.0"));
    CHECK(strstr(t, "text/rfc822-headers") && strstr(t, "Subject: s") && !strstr(t, "the body"));
    free(t);
    finish(q, pick(q), QOUT_DELIVERED, 0, "250 ok");
    CHECK(count_msgs(q) == 0);
    /* NOTIFY=DELAY,FAILURE and RET=HDRS: one "delayed" report, then on the
     * bounce a failure report with the header only. */
    r.notify = QUEUE_NOTIFY_DELAY | QUEUE_NOTIFY_FAILURE;
    env.ret_headers_only = 1;
    CHECK(queue_submit(q, &env, body, strlen(body), id, NULL) == 0);
    finish(q, pick(q), QOUT_DEFERRED, 0, "451 4.3.0 later");
    d = only_dsn(q);
    CHECK(d);
    t = dsn_text(q, d);
    CHECK(strstr(t, "Action: delayed\r\n") && strstr(t, "Will-Retry-Until: "));
    free(t);
    finish(q, pick(q), QOUT_DELIVERED, 0, "250 ok"); /* the delay report */
    fake_now += 60000;
    finish(q, pick(q), QOUT_DEFERRED, 0, "451 4.3.0 later");
    CHECK(only_dsn(q) == NULL); /* only once */
    fake_now += 120000;
    finish(q, pick(q), QOUT_BOUNCED, 0, "554 5.0.0 give up");
    d = only_dsn(q);
    CHECK(d);
    t = dsn_text(q, d);
    CHECK(strstr(t, "Action: failed") && strstr(t, "Subject: s") && !strstr(t, "the body"));
    free(t);
    queue_close(q);
}

/* ---------- the operator's commands ---------- */

TEST(control_commands)
{
    fake_now = 1700000000000;
    const char *dir = t_tmpdir();
    queue *q = open_q(dir, 0);
    CHECK(q);
    char a[QUEUE_ID_LEN + 1], b[QUEUE_ID_LEN + 1], c[QUEUE_ID_LEN + 1];
    CHECK(submit(q, "s@remote.example", "192.0.2.1", "bob@example.org", "bob@example.org", "AAAA\r\n", a) == 0);
    CHECK(submit(q, "", "192.0.2.1", "carol@example.org", "carol@example.org", "BB\r\n", b) == 0);
    CHECK(submit(q, "s@remote.example", "192.0.2.1", "dave@far.example", NULL, "C\r\n", c) == 0);
    char *out = ctl(q, "list");
    char want[300];
    snprintf(want, sizeof(want), "%s\t2023-11-14T22:13:20Z\t6\ts@remote.example\tbob@example.org ready\n", a);
    CHECKM(strstr(out, want), "%s", out);
    snprintf(want, sizeof(want), "\t4\t<>\tcarol@example.org ready\n");
    CHECK(strstr(out, want));
    free(out);
    out = ctl(q, "list --account bob@example.org");
    CHECK(strstr(out, a) && !strstr(out, b) && !strstr(out, c));
    free(out);
    out = ctl(q, "list --recipient dave@far.example");
    CHECK(!strstr(out, a) && strstr(out, c));
    free(out);
    /* hold by account; held mail is not picked. */
    out = ctl(q, "hold --account bob@example.org");
    CHECK(strcmp(out, "held 1\n") == 0);
    free(out);
    out = ctl(q, "list --state held");
    CHECK(strstr(out, a) && strstr(out, "bob@example.org held held by operator"));
    free(out);
    for (qrcpt *r; (r = pick(q));)
        finish(q, r, QOUT_DEFERRED, 0, "451 4.3.0 later");
    out = ctl(q, "list --state deferred");
    CHECK(strstr(out, b) && strstr(out, c) && !strstr(out, a));
    CHECK(strstr(out, "carol@example.org deferred 451 4.3.0 later"));
    free(out);
    /* flush makes deferred ready now. */
    CHECK(pick(q) == NULL);
    out = ctl(q, "flush");
    CHECK(strcmp(out, "flushed 2\n") == 0);
    free(out);
    qrcpt *r = pick(q);
    CHECK(r);
    finish(q, r, QOUT_DEFERRED, 0, "451 4.3.0 later");
    r = pick(q);
    CHECK(r);
    finish(q, r, QOUT_DEFERRED, 0, "451 4.3.0 later");
    /* release by id. */
    snprintf(want, sizeof(want), "release %s", a);
    out = ctl(q, want);
    CHECK(strcmp(out, "released 1\n") == 0);
    free(out);
    r = pick(q);
    CHECK(r && r->msg == find(q, a));
    finish(q, r, QOUT_DELIVERED, 0, "250 ok");
    /* show. */
    snprintf(want, sizeof(want), "show %s", c);
    out = ctl(q, want);
    CHECK(strstr(out, "sender: s@remote.example\n") && strstr(out, "rcpt: 0 dave@far.example\n"));
    CHECK(strstr(out, "  state: deferred\n") && strstr(out, "  next_attempt: "));
    free(out);
    snprintf(want, sizeof(want), "show %s --message", c);
    out = ctl(q, want);
    CHECK(strstr(out, "\n\nC\r\n"));
    free(out);
    /* delete by id and by recipient. */
    snprintf(want, sizeof(want), "delete %s", c);
    out = ctl(q, want);
    CHECK(strcmp(out, "deleted 1\n") == 0);
    free(out);
    out = ctl(q, "delete --recipient carol@example.org");
    CHECK(strcmp(out, "deleted 1\n") == 0);
    free(out);
    CHECK(count_msgs(q) == 0);
    /* Errors. */
    out = ctl(q, "show 0123456789abcdef");
    CHECK(strncmp(out, "ERROR no message", 16) == 0);
    free(out);
    out = ctl(q, "hold");
    CHECK(strncmp(out, "ERROR hold needs", 16) == 0);
    free(out);
    out = ctl(q, "list --state bogus");
    CHECK(strncmp(out, "ERROR bad --state", 17) == 0);
    free(out);
    out = ctl(q, "frobnicate");
    CHECK(strncmp(out, "ERROR unknown", 13) == 0);
    free(out);
    queue_close(q);
    q = open_q(dir, 0);
    CHECK(q);
    CHECK(count_msgs(q) == 0);
    queue_close(q);
}

/* ---------- reclaiming space ---------- */

static int count_segments(const char *dir)
{
    char cmd[4300];
    snprintf(cmd, sizeof(cmd), "ls %s | grep -c '\\.qlog$'", dir);
    FILE *p = popen(cmd, "r");
    int n = -1;
    if (p) {
        if (fscanf(p, "%d", &n) != 1)
            n = -1;
        pclose(p);
    }
    return n;
}

TEST(finished_segments_go_and_held_mail_is_copied_forward)
{
    const char *dir = t_tmpdir();
    queue *q = open_q(dir, 4096);
    CHECK(q);
    char held[QUEUE_ID_LEN + 1], id[QUEUE_ID_LEN + 1];
    char body[600];
    memset(body, 'x', sizeof(body) - 3);
    memcpy(body + sizeof(body) - 3, "\r\n", 3);
    CHECK(submit(q, "s@r.example", "192.0.2.1", "held@example.org", "held@example.org", body, held) == 0);
    for (int i = 0; i < 40; i++)
        CHECK(submit(q, "s@r.example", "192.0.2.1", "bob@example.org", "bob@example.org", body, id) == 0);
    int before = count_segments(dir);
    CHECK(before >= 6);
    for (qrcpt *r; (r = pick(q));) {
        if (strcmp(r->account, "held@example.org") == 0)
            finish(q, r, QOUT_HELD, QHOLD_ACCOUNT, "account is moving");
        else
            finish(q, r, QOUT_DELIVERED, 0, "250 ok");
    }
    CHECK(qlog_reclaim(q, NULL) == 0);
    CHECK(qlog_reclaim(q, NULL) == 0);
    int after = count_segments(dir);
    CHECKM(after <= 2, "%d segments left of %d", after, before);
    CHECK(count_msgs(q) == 1);
    CHECK(data_is(q, held, body));
    queue_close(q);
    q = open_q(dir, 4096);
    CHECK(q);
    CHECK(count_msgs(q) == 1);
    CHECK(data_is(q, held, body));
    qrcpt *x = &find(q, held)->rcpts[0];
    CHECK(x->state == QUEUE_HELD && strcmp(x->reason, "account is moving") == 0);
    queue_close(q);
}

/* ---------- crash ---------- */

/* The child submits from 4 threads, marks some delivered, reclaims now and
 * then; after each acknowledged submit it writes "seq id\n" to the pipe.
 * The parent kills it at a random moment and checks the queue. */
typedef struct crash_ctx {
    queue *q;
    int fd;
    int k;
} crash_ctx;

static void *crash_thread(void *arg)
{
    crash_ctx *c = arg;
    for (unsigned i = 0;; i++) {
        unsigned seq = (unsigned)c->k << 24 | i;
        char body[300], id[QUEUE_ID_LEN + 1];
        int pad = (int)(i * 37 % 200);
        snprintf(body, sizeof(body), "Subject: %u\r\n\r\n%0*u\r\n", seq, pad + 1, seq);
        if (submit(c->q, "s@r.example", "192.0.2.1", "bob@example.org", "bob@example.org", body, id) < 0)
            _exit(3);
        char line[64];
        int n = snprintf(line, sizeof(line), "%08x %s\n", seq, id);
        if (write(c->fd, line, (size_t)n) != n)
            _exit(4);
        if (i % 3 == 0) {
            qrcpt *r = pick(c->q);
            if (r)
                finish(c->q, r, QOUT_DELIVERED, 0, "250 ok");
        }
        if (i % 50 == 0 && c->k == 0)
            qlog_reclaim(c->q, NULL);
    }
    return NULL;
}

typedef struct acked {
    unsigned seq;
    char id[QUEUE_ID_LEN + 1];
} acked;

TEST(crash_kill9_loses_no_acknowledged_message)
{
    const char *dir = t_tmpdir();
    const char *env = getenv("HAVEN_CRASH_ROUNDS");
    int rounds = env ? atoi(env) : 40;
    unsigned seed = (unsigned)getpid();
    srand(seed);
    fprintf(stderr, "  seed %u, %d rounds\n", seed, rounds);
    size_t cap = 1 << 16, nack = 0;
    acked *acks = malloc(cap * sizeof(acked));
    for (int round = 0; round < rounds; round++) {
        int p[2];
        CHECK(pipe(p) == 0);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            close(p[0]);
            log_init("child", 0, LOG_LVL_ERROR);
            queue *q = open_q(dir, 16384);
            if (!q)
                _exit(2);
            crash_ctx c[4];
            pthread_t t[4];
            for (int i = 0; i < 4; i++) {
                c[i] = (crash_ctx){q, p[1], round * 4 + i};
                pthread_create(&t[i], NULL, crash_thread, &c[i]);
            }
            for (;;)
                pause();
        }
        close(p[1]);
        usleep((useconds_t)(2000 + rand() % 40000));
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        CHECK(WIFSIGNALED(status));
        /* Everything acknowledged, read after the kill. */
        FILE *f = fdopen(p[0], "r");
        char line[64];
        while (fgets(line, sizeof(line), f)) {
            if (strlen(line) != 8 + 1 + QUEUE_ID_LEN + 1)
                continue; /* a line cut by the kill was never fully acked */
            if (nack == cap)
                acks = realloc(acks, (cap *= 2) * sizeof(acked));
            sscanf(line, "%x %16s", &acks[nack].seq, acks[nack].id);
            nack++;
        }
        fclose(f);
        queue *q = open_q(dir, 16384);
        CHECK(q);
        CHECK(q->ndamage == 0);
        /* Every acked message that was not delivered is there with its
         * data (delivered ones may come back: delivery is idempotent). */
        size_t present = 0;
        for (size_t i = 0; i < nack; i++) {
            qmsg *m = find(q, acks[i].id);
            if (!m)
                continue;
            present++;
            char body[300];
            int pad = (int)((acks[i].seq & 0xffffff) * 37 % 200);
            snprintf(body, sizeof(body), "Subject: %u\r\n\r\n%0*u\r\n", acks[i].seq, pad + 1,
                     acks[i].seq);
            CHECKM(data_is(q, acks[i].id, body), "round %d: %s has wrong data", round, acks[i].id);
        }
        /* Nothing appears twice: every message in the queue has its own
         * body, and at most the 4 unacknowledged ones are extra. */
        pthread_mutex_lock(&q->mu);
        size_t n;
        qmsg **all = queue_sorted(q, &n);
        pthread_mutex_unlock(&q->mu);
        for (size_t i = 1; i < n; i++)
            CHECK(all[i - 1]->id != all[i]->id);
        free(all);
        CHECK(n >= present && n <= present + 4 + (size_t)round * 4);
        /* Finish everything so rounds start small (and reclaim runs). */
        for (qrcpt *r; (r = pick(q));)
            finish(q, r, QOUT_DELIVERED, 0, "250 ok");
        pthread_mutex_lock(&q->mu);
        queue_sync_locked(q, NULL);
        pthread_mutex_unlock(&q->mu);
        qlog_reclaim(q, NULL);
        queue_close(q);
        /* Undelivered acks were delivered now: forget them. */
        nack = 0;
    }
    free(acks);
}

int main(void)
{
    log_init("test_queue", 0, LOG_LVL_ERROR);
    RUN(submit_then_recover);
    RUN(bad_input_refused);
    RUN(state_changes_recovered);
    RUN(torn_tail_at_every_boundary);
    RUN(mid_log_damage_reported_and_skipped);
    RUN(group_commit_under_threads);
    RUN(flood_from_one_sender_does_not_delay_another);
    RUN(account_cap_and_destination_round_robin);
    RUN(two_senders_share_a_capped_account);
    RUN(backoff_doubles_to_max_then_lifetime_bounces);
    RUN(held_never_expires);
    RUN(release_delivers_held_mail_in_arrival_order_one_at_a_time);
    RUN(reply_mapping_follows_the_lmtp_contract);
    RUN(bounce_dsn_is_rfc3464_and_atomic);
    RUN(dsn_options);
    RUN(control_commands);
    RUN(finished_segments_go_and_held_mail_is_copied_forward);
    RUN(crash_kill9_loses_no_acknowledged_message);
    return t_done();
}
