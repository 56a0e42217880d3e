/*
 * test_queue_route.c - where the queue delivers local mail (queue_route.c):
 * the lookup rule (this node's store, a store with or without an
 * lmtp_address, a store without a row, a row that does not parse), the
 * table of destinations that do not answer (marked down, probed, up
 * again, and the late-hold recheck), and a delivery thread's connections
 * (reused per destination, dropped, the oldest closed when all slots are
 * taken), against small LMTP listeners on loopback.
 *
 * The whole runner, end to end with two stores, is
 * tests/integration/test_queue_route.py. Waits poll with generous limits;
 * nothing asserts how long anything took.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "dir/dir.h"
#include "lib/conf.h"
#include "lib/log.h"
#include "queue/queue_route.h"
#include "testlib.h"

/* ---------- an LMTP listener that greets, answers LHLO and QUIT ---------- */

typedef struct lsn {
    int fd, port;
    pthread_t tid;
    pthread_mutex_t mu;
    int accepted;
} lsn;

static int read_line(int fd, char *out, size_t max)
{
    size_t n = 0;
    while (n + 1 < max) {
        char c;
        if (recv(fd, &c, 1, 0) <= 0)
            return -1;
        if (c == '\n')
            break;
        if (c != '\r')
            out[n++] = c;
    }
    out[n] = 0;
    return (int)n;
}

static void say(int fd, const char *s) { (void)!send(fd, s, strlen(s), MSG_NOSIGNAL); }

static void *conn_main(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char line[1024];
    say(fd, "220 lsn ready\r\n");
    while (read_line(fd, line, sizeof(line)) >= 0) {
        if (!strncasecmp(line, "LHLO", 4)) {
            say(fd, "250-lsn\r\n250 PIPELINING\r\n");
        } else if (!strcasecmp(line, "QUIT")) {
            say(fd, "221 2.0.0 bye\r\n");
            break;
        } else {
            say(fd, "250 2.0.0 ok\r\n");
        }
    }
    close(fd);
    return NULL;
}

static void *lsn_main(void *arg)
{
    lsn *l = arg;
    for (;;) {
        int c = accept(l->fd, NULL, NULL);
        if (c < 0)
            break;
        pthread_mutex_lock(&l->mu);
        l->accepted++;
        pthread_mutex_unlock(&l->mu);
        pthread_t t;
        pthread_create(&t, NULL, conn_main, (void *)(intptr_t)c);
        pthread_detach(t);
    }
    return NULL;
}

/* Listens on port (0: any free one) of 127.0.0.1. */
static int lsn_start(lsn *l, int port)
{
    memset(l, 0, sizeof(*l));
    pthread_mutex_init(&l->mu, NULL);
    l->fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    if (bind(l->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(l->fd, 16) < 0 ||
        getsockname(l->fd, (struct sockaddr *)&sa, &sl) < 0) {
        close(l->fd);
        return -1;
    }
    l->port = ntohs(sa.sin_port);
    pthread_create(&l->tid, NULL, lsn_main, l);
    return 0;
}

static void lsn_stop(lsn *l)
{
    shutdown(l->fd, SHUT_RDWR);
    close(l->fd);
    pthread_join(l->tid, NULL);
}

static int lsn_accepted(lsn *l)
{
    pthread_mutex_lock(&l->mu);
    int n = l->accepted;
    pthread_mutex_unlock(&l->mu);
    return n;
}

/* A loopback port nobody listens on (bound, then closed). */
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

/* ---------- setup ---------- */

/* The probe interval here (the runner's is 3 s). */
#define PROBE_MS 100

/* A config in a fresh folder: store_name s1, lmtp_port 2400 on listen. */
static conf *make_conf(const char *listen, char dirpath[4200])
{
    const char *tmp = t_tmpdir();
    char path[4200];
    snprintf(path, sizeof(path), "%s/haven.conf", tmp);
    snprintf(dirpath, 4200, "%s/dir.sqlite", tmp);
    FILE *f = fopen(path, "w");
    if (!f)
        return NULL;
    fprintf(f, "hostname = mx.test\nlisten = %s\nlmtp_port = 2400\nstore_name = S1\n"
               "directory = sqlite:dir.sqlite\n", listen);
    fclose(f);
    conf *c = NULL;
    hv_err err;
    if (conf_load(path, &c, &err) < 0) {
        fprintf(stderr, "  conf_load: %s\n", err.msg);
        return NULL;
    }
    return c;
}

static int account_on(dir *d, const char *address, const char *store, dir_account *out)
{
    hv_err err;
    if (dir_account_add(d, address, NULL, store, 0, &err) < 0 ||
        dir_account_get(d, address, out, &err) < 0) {
        fprintf(stderr, "  %s: %s\n", address, err.msg);
        return -1;
    }
    return 0;
}

TEST(test_lookup_rule)
{
    char dirpath[4200];
    conf *c = make_conf("127.0.0.1", dirpath);
    CHECK(c);
    hv_err err = {0};
    dir *d = NULL;
    CHECKM(dir_open_conf(c, &d, &err) == 0, "%s", err.msg);
    qroute *r = qroute_new(c, 5000, PROBE_MS, &err);
    CHECK(r);
    const qroute_dest *local = qroute_local(r);
    int local_ok = strcmp(local->key, "127.0.0.1:2400") == 0 && local->port == 2400 &&
                   local->local && strcmp(local->store, "s1") == 0;

    dir_account a1, a2, a3, a4, a5, a6;
    int setup = account_on(d, "one@x.org", "s1", &a1) == 0 &&
                account_on(d, "two@x.org", "s2", &a2) == 0 &&
                account_on(d, "three@x.org", "s3", &a3) == 0 &&
                account_on(d, "four@x.org", "s4", &a4) == 0 &&
                account_on(d, "five@x.org", "s5", &a5) == 0 &&
                account_on(d, "six@x.org", "s6", &a6) == 0 &&
                /* s1 has a row pointing elsewhere: its own node still
                 * delivers locally, whatever the row says. */
                dir_store_add(d, "s1", "10.0.0.1:143", DIR_ROLE_PRIMARY, &err) == 0 &&
                dir_store_set_lmtp_address(d, "s1", "10.0.0.1:24", &err) == 0 &&
                dir_store_add(d, "s2", "10.0.0.2:143", DIR_ROLE_PRIMARY, &err) == 0 &&
                dir_store_set_lmtp_address(d, "s2", "10.0.0.2:24", &err) == 0 &&
                dir_store_add(d, "s3", "10.0.0.3:143", DIR_ROLE_PRIMARY, &err) == 0 &&
                dir_store_add(d, "s5", "[2001:db8::5]:143", DIR_ROLE_PRIMARY, &err) == 0 &&
                dir_store_set_lmtp_address(d, "s5", "[2001:db8::5]:2424", &err) == 0 &&
                dir_store_add(d, "s6", "127.0.0.1:1143", DIR_ROLE_PRIMARY, &err) == 0 &&
                dir_store_set_lmtp_address(d, "s6", "127.0.0.1:2400", &err) == 0;
    qroute_dest o1, o2, o3, o4, o5, o6;
    int l1 = qroute_lookup(r, d, &a1, &o1, &err) == 0 && o1.local &&
             strcmp(o1.key, "127.0.0.1:2400") == 0 && strcmp(o1.store, "s1") == 0;
    int l2 = qroute_lookup(r, d, &a2, &o2, &err) == 0 && !o2.local &&
             strcmp(o2.key, "10.0.0.2:24") == 0 && strcmp(o2.host, "10.0.0.2") == 0 &&
             o2.port == 24 && strcmp(o2.store, "s2") == 0;
    /* A row without lmtp_address, and no row at all: ours. */
    int l3 = qroute_lookup(r, d, &a3, &o3, &err) == 0 && o3.local &&
             strcmp(o3.key, local->key) == 0 && strcmp(o3.store, "s3") == 0;
    int l4 = qroute_lookup(r, d, &a4, &o4, &err) == 0 && o4.local &&
             strcmp(o4.key, local->key) == 0;
    int l5 = qroute_lookup(r, d, &a5, &o5, &err) == 0 && !o5.local &&
             strcmp(o5.host, "2001:db8::5") == 0 && o5.port == 2424 &&
             strcmp(o5.key, "[2001:db8::5]:2424") == 0;
    /* Another store at our own address is our own service. */
    int l6 = qroute_lookup(r, d, &a6, &o6, &err) == 0 && o6.local &&
             strcmp(o6.key, local->key) == 0 && strcmp(o6.store, "s6") == 0;
    dir_close(d);
    /* A row the directory code would not have written: an error, no guess. */
    sqlite3 *db;
    int raw = sqlite3_open(dirpath, &db) == SQLITE_OK &&
              sqlite3_exec(db, "UPDATE stores SET lmtp_address = 'nonsense' WHERE name = 's2'",
                           NULL, NULL, NULL) == SQLITE_OK;
    sqlite3_close(db);
    d = NULL;
    int reopen = dir_open_conf(c, &d, &err) == 0;
    qroute_dest o;
    int bad = reopen && qroute_lookup(r, d, &a2, &o, &err) == -EINVAL &&
              strstr(err.msg, "s2") && strstr(err.msg, "nonsense");
    if (reopen)
        dir_close(d);
    qroute_free(r);
    conf_free(c);
    CHECK(local_ok);
    CHECKM(setup, "%s", err.msg);
    CHECK(l1);
    CHECK(l2);
    CHECK(l3);
    CHECK(l4);
    CHECK(l5);
    CHECK(l6);
    CHECK(raw);
    CHECKM(bad, "%s", err.msg);
}

/* A wildcard `listen` is reached on loopback. */
TEST(test_local_wildcards)
{
    char dirpath[4200];
    hv_err err;
    conf *c = make_conf("0.0.0.0", dirpath);
    CHECK(c);
    qroute *r = qroute_new(c, 5000, PROBE_MS, &err);
    int v4 = r && strcmp(qroute_local(r)->key, "127.0.0.1:2400") == 0;
    qroute_free(r);
    conf_free(c);
    c = make_conf("::", dirpath);
    CHECK(c);
    r = qroute_new(c, 5000, PROBE_MS, &err);
    int v6 = r && strcmp(qroute_local(r)->host, "::1") == 0 &&
             strcmp(qroute_local(r)->key, "[::1]:2400") == 0;
    qroute_free(r);
    conf_free(c);
    CHECK(v4);
    CHECK(v6);
}

static void nap(void)
{
    struct timespec ts = {0, 50 * 1000000}; /* 50 ms */
    nanosleep(&ts, NULL);
}

/* Waits until the prober says "look again" (at most ~15 s). */
static int wait_recheck(qroute *r)
{
    for (int i = 0; i < 300; i++) {
        if (qroute_recheck(r))
            return 1;
        nap();
    }
    return 0;
}

static qroute_dest dest_at(int port, const char *store)
{
    qroute_dest d = {0};
    snprintf(d.host, sizeof(d.host), "127.0.0.1");
    d.port = port;
    snprintf(d.key, sizeof(d.key), "127.0.0.1:%d", port);
    snprintf(d.store, sizeof(d.store), "%s", store);
    return d;
}

TEST(test_down_and_up)
{
    char dirpath[4200];
    hv_err err;
    conf *c = make_conf("127.0.0.1", dirpath);
    CHECK(c);
    qroute *r = qroute_new(c, 5000, PROBE_MS, &err);
    CHECK(r);
    int port = free_port();
    qroute_dest a = dest_at(port, "s2"), b = dest_at(free_port(), "s3");
    int fresh = !qroute_is_down(r, &a) && !qroute_recheck(r);
    qroute_mark_down(r, &a, "connection refused");
    qroute_mark_down(r, &a, "again"); /* one entry, one log line */
    int down = qroute_is_down(r, &a) && !qroute_is_down(r, &b);
    /* Held while still down: nothing to look at again. */
    qroute_held(r, &a);
    int quiet = !qroute_recheck(r);
    /* Not answering when its probes come due: still down, nothing to say. */
    int still = 1;
    for (int i = 0; i < 3 * PROBE_MS / 50 && still; i++) { /* past a probe or two */
        still = !qroute_recheck(r);
        nap();
    }
    still = still && qroute_is_down(r, &a);
    /* It answers: up at a later probe, which says so, once. */
    lsn l;
    int listening = lsn_start(&l, port) == 0;
    int up = listening && wait_recheck(r) && !qroute_is_down(r, &a);
    int quiet2 = !qroute_recheck(r);
    /* Mail held after the release looked (a late hold): another look,
     * once. */
    qroute_held(r, &a);
    int late = qroute_recheck(r) && !qroute_recheck(r);
    if (listening)
        lsn_stop(&l);
    qroute_free(r);
    conf_free(c);
    CHECK(fresh);
    CHECK(down);
    CHECK(quiet);
    CHECK(still);
    CHECK(listening);
    CHECK(up);
    CHECK(quiet2);
    CHECK(late);
}

TEST(test_connections)
{
    char dirpath[4200];
    hv_err err = {0};
    conf *c = make_conf("127.0.0.1", dirpath);
    CHECK(c);
    qroute *r = qroute_new(c, 5000, PROBE_MS, &err);
    CHECK(r);
    enum { N = QROUTE_CONNS + 1 };
    lsn l[N];
    int n = 0;
    while (n < N && lsn_start(&l[n], 0) == 0)
        n++;
    qroute_conns cs;
    memset(&cs, 0, sizeof(cs));
    qroute_dest d0 = dest_at(n > 0 ? l[0].port : 1, "s0"),
                d1 = dest_at(n > 1 ? l[1].port : 1, "s1");
    smtp_client *c0 = NULL, *c0b = NULL, *c1 = NULL, *cx;
    int reused = -1, ok = n == N;
    ok = ok && qroute_conn_get(r, &cs, &d0, &c0, &reused, &err) == 0 && !reused;
    ok = ok && qroute_conn_get(r, &cs, &d0, &c0b, &reused, &err) == 0 && reused && c0b == c0;
    int one_conn = ok && lsn_accepted(&l[0]) == 1;
    ok = ok && qroute_conn_get(r, &cs, &d1, &c1, &reused, &err) == 0 && !reused && c1 != c0;
    /* Dropped after an error: the next get connects afresh. */
    qroute_conn_drop(&cs, &d0);
    int redial = ok && qroute_conn_get(r, &cs, &d0, &cx, &reused, &err) == 0 && !reused;
    int accepted2 = redial && lsn_accepted(&l[0]) == 2;
    /* All slots taken (d0 used last, d1 before it, then 2..N-1): a new
     * destination closes the least recently used, d1, not d0. */
    int filled = 1;
    for (int i = 2; i < N && filled; i++) {
        qroute_dest di = dest_at(l[i].port, "sx");
        filled = qroute_conn_get(r, &cs, &di, &cx, &reused, &err) == 0 && !reused;
        if (i == 2)
            filled = filled && qroute_conn_get(r, &cs, &d0, &cx, &reused, &err) == 0 && reused;
    }
    int kept = filled && qroute_conn_get(r, &cs, &d0, &cx, &reused, &err) == 0 && reused;
    int evicted = filled && qroute_conn_get(r, &cs, &d1, &cx, &reused, &err) == 0 && !reused &&
                  lsn_accepted(&l[1]) == 2;
    /* Nothing listens: the reason comes back, nothing is cached. */
    qroute_dest dead = dest_at(free_port(), "sd");
    int refused = qroute_conn_get(r, &cs, &dead, &cx, &reused, &err) < 0 && err.msg[0];
    qroute_conns_close(&cs);
    for (int i = 0; i < n; i++)
        lsn_stop(&l[i]);
    qroute_free(r);
    conf_free(c);
    CHECKM(ok, "%s", err.msg);
    CHECK(one_conn);
    CHECK(redial);
    CHECK(accepted2);
    CHECKM(filled, "%s", err.msg);
    CHECK(kept);
    CHECK(evicted);
    CHECK(refused);
}

int main(void)
{
    log_init("test_queue_route", 0, LOG_LVL_ERROR);
    RUN(test_lookup_rule);
    RUN(test_local_wildcards);
    RUN(test_down_and_up);
    RUN(test_connections);
    return t_done();
}
