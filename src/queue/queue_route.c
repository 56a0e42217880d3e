/*
 * queue_route.c - where the queue delivers a local recipient's mail, and
 * which of those destinations answer; see queue_route.h.
 *
 * The one rule: an account on this node's store (store_name), or on a
 * store whose directory row has no lmtp_address (or no row at all), is
 * delivered by this node's lmtp service; any other account by its
 * store's lmtp_address. The first case costs no directory read beyond the
 * account lookup the runner does anyway, so a single node pays nothing.
 *
 * The table of destinations that do not answer is small (one entry per
 * store address that is down, gone when it answers again) and guarded by
 * its own mutex, never held while talking to a server. A thread of its
 * own (the prober) tries each of them every probe_ms, so a store on a
 * host that drops packets delays no delivery and not the runner's
 * watcher, which only asks qroute_recheck whether anything came back.
 *
 * SECURITY: addresses come from the directory, which the runner trusts
 * (the operator wrote them); they are parsed by dir_hostport_split all
 * the same, and a row that does not parse is an error, not a guess.
 */
#include "queue/queue_route.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

#include "lib/log.h"

/* Every step of a probe (connect, greeting, LHLO): a store that takes
 * longer to greet is as good as down, and a probe of a host that drops
 * packets must not keep the prober from the others for long. */
#define PROBE_TIMEOUT_MS 5000

typedef struct qroute_down {
    qroute_dest dst;
    int64_t next_probe; /* monotonic ms */
} qroute_down;

struct qroute {
    char store_name[DIR_STORE_NAME_MAX + 1];
    char helo[256];
    int timeout_ms;
    int probe_ms; /* how often a destination that does not answer is tried */
    qroute_dest local;
    pthread_mutex_t mu; /* guards down, ndown, cap, recheck, stop */
    pthread_cond_t cv;  /* the prober's sleep: a destination went down, or stop */
    qroute_down *down;
    size_t ndown, cap;
    int recheck; /* a destination came back (or qroute_held saw one had) */
    int stop;
    pthread_t prober;
};

static void *prober_main(void *arg);

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Fills dst's host, port and its key, the canonical "host:port". */
static void dest_set(qroute_dest *dst, const char *host, int port)
{
    snprintf(dst->host, sizeof(dst->host), "%s", host);
    dst->port = port;
    snprintf(dst->key, sizeof(dst->key), strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
}

qroute *qroute_new(const conf *c, int timeout_ms, int probe_ms, hv_err *err)
{
    qroute *r = calloc(1, sizeof(*r));
    if (!r) {
        hv_err_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    /* An invalid store_name names no account's store (the directory
     * refuses such names): every account then goes by its store's row. */
    if (dir_store_name_normalize(conf_get(c, "store_name"), r->store_name, NULL) < 0)
        r->store_name[0] = 0;
    snprintf(r->helo, sizeof(r->helo), "%s", conf_get(c, "hostname"));
    r->timeout_ms = timeout_ms;
    r->probe_ms = probe_ms;
    /* The lmtp service listens on the first `listen` address; a wildcard
     * is reached on loopback. */
    const char *listen = conf_get(c, "listen");
    char host[256];
    snprintf(host, sizeof(host), "%.*s", (int)strcspn(listen, ", \t"), listen);
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') { /* "[::1]" */
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = 0;
    }
    if (strcmp(host, "0.0.0.0") == 0 || host[0] == 0)
        snprintf(host, sizeof(host), "127.0.0.1");
    else if (strcmp(host, "::") == 0)
        snprintf(host, sizeof(host), "::1");
    dest_set(&r->local, host, (int)conf_get_int(c, "lmtp_port"));
    snprintf(r->local.store, sizeof(r->local.store), "%s", r->store_name);
    r->local.local = 1;
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    int rc = pthread_create(&r->prober, NULL, prober_main, r);
    if (rc != 0) {
        hv_err_set(err, -rc, "queue: cannot start the store prober thread");
        pthread_cond_destroy(&r->cv);
        pthread_mutex_destroy(&r->mu);
        free(r);
        return NULL;
    }
    return r;
}

void qroute_free(qroute *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->prober, NULL);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r->down);
    free(r);
}

const qroute_dest *qroute_local(const qroute *r) { return &r->local; }

int qroute_lookup(qroute *r, dir *d, const dir_account *a, qroute_dest *out, hv_err *err)
{
    *out = r->local;
    snprintf(out->store, sizeof(out->store), "%s", a->store);
    if (strcmp(a->store, r->store_name) == 0)
        return 0;
    dir_store st;
    hv_err e2 = {0};
    int rc = dir_store_get(d, a->store, &st, &e2);
    if (rc == -ENOENT || (rc == 0 && !st.lmtp_address[0]))
        return 0; /* no lmtp service of its own published: ours, as before stores had one */
    if (rc < 0)
        return hv_err_set(err, rc, "%s", e2.msg);
    char host[DIR_STORE_ADDRESS_MAX + 1];
    int port;
    rc = dir_hostport_split(st.lmtp_address, host, sizeof(host), &port, &e2);
    if (rc < 0)
        return hv_err_set(err, rc, "store %s: lmtp_address: %s", a->store, e2.msg);
    dest_set(out, host, port);
    out->local = strcmp(out->key, r->local.key) == 0;
    return 0;
}

/* The index of key in the down table, or -1 (locked). */
static ssize_t down_find(qroute *r, const char *key)
{
    for (size_t i = 0; i < r->ndown; i++)
        if (strcmp(r->down[i].dst.key, key) == 0)
            return (ssize_t)i;
    return -1;
}

int qroute_is_down(qroute *r, const qroute_dest *dst)
{
    pthread_mutex_lock(&r->mu);
    int down = down_find(r, dst->key) >= 0;
    pthread_mutex_unlock(&r->mu);
    return down;
}

void qroute_mark_down(qroute *r, const qroute_dest *dst, const char *why)
{
    pthread_mutex_lock(&r->mu);
    if (down_find(r, dst->key) < 0) {
        if (r->ndown == r->cap) {
            size_t cap = r->cap ? r->cap * 2 : 4;
            qroute_down *n = realloc(r->down, cap * sizeof(*n));
            if (!n)
                abort();
            r->down = n;
            r->cap = cap;
        }
        r->down[r->ndown].dst = *dst;
        r->down[r->ndown].next_probe = mono_ms() + r->probe_ms;
        r->ndown++;
        pthread_cond_signal(&r->cv);
        log_warn("queue_store_down store=%s host=%s port=%d reason=\"%s\"", dst->store,
                 dst->host, dst->port, why);
    }
    pthread_mutex_unlock(&r->mu);
}

void qroute_held(qroute *r, const qroute_dest *dst)
{
    pthread_mutex_lock(&r->mu);
    if (down_find(r, dst->key) < 0)
        r->recheck = 1;
    pthread_mutex_unlock(&r->mu);
}

static int lmtp_open(qroute *r, const qroute_dest *dst, int timeout_ms, smtp_client **out,
                     hv_err *err)
{
    smtp_client_opts o = {.lmtp = 1, .tls = SMTP_TLS_NONE, .helo = r->helo,
                          .timeout_ms = timeout_ms};
    return smtp_client_connect(dst->host, dst->port, &o, out, err);
}

/* One probe round (unlocked on entry): connects to each destination
 * whose probe is due; those that answer leave the down table. */
static void probe_due(qroute *r)
{
    int64_t now = mono_ms();
    pthread_mutex_lock(&r->mu);
    size_t n = 0;
    qroute_dest *due = r->ndown ? malloc(r->ndown * sizeof(*due)) : NULL;
    for (size_t i = 0; due && i < r->ndown; i++)
        if (now >= r->down[i].next_probe)
            due[n++] = r->down[i].dst;
    pthread_mutex_unlock(&r->mu);
    for (size_t i = 0; i < n; i++) {
        smtp_client *c;
        hv_err err;
        int ok = lmtp_open(r, &due[i], PROBE_TIMEOUT_MS, &c, &err) == 0;
        if (ok)
            smtp_client_close(c);
        pthread_mutex_lock(&r->mu);
        ssize_t k = down_find(r, due[i].key);
        if (k >= 0 && ok) {
            r->down[k] = r->down[--r->ndown];
            r->recheck = 1;
            log_info("queue_store_up store=%s host=%s port=%d", due[i].store, due[i].host,
                     due[i].port);
        } else if (k >= 0) {
            r->down[k].next_probe = mono_ms() + r->probe_ms;
        }
        pthread_mutex_unlock(&r->mu);
    }
    free(due);
}

/* The prober: sleeps until the next probe is due (or a destination is
 * marked down, or qroute_free), probes, and so on. */
static void *prober_main(void *arg)
{
    qroute *r = arg;
    pthread_mutex_lock(&r->mu);
    while (!r->stop) {
        int64_t next = INT64_MAX;
        for (size_t i = 0; i < r->ndown; i++)
            if (r->down[i].next_probe < next)
                next = r->down[i].next_probe;
        int64_t now = mono_ms();
        if (next > now) {
            /* Nothing down: wait for a mark_down's signal (and look again
             * now and then, which costs nothing). */
            int64_t wait = next == INT64_MAX ? 1000 : next - now;
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += (time_t)(wait / 1000);
            ts.tv_nsec += (long)(wait % 1000) * 1000000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&r->cv, &r->mu, &ts);
            continue;
        }
        pthread_mutex_unlock(&r->mu);
        probe_due(r);
        pthread_mutex_lock(&r->mu);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

int qroute_recheck(qroute *r)
{
    pthread_mutex_lock(&r->mu);
    int v = r->recheck;
    r->recheck = 0;
    pthread_mutex_unlock(&r->mu);
    return v;
}

/* ---- one delivery thread's connections ---- */

static int conn_find(qroute_conns *cs, const char *key)
{
    for (int i = 0; i < QROUTE_CONNS; i++)
        if (cs->slot[i].c && strcmp(cs->slot[i].key, key) == 0)
            return i;
    return -1;
}

int qroute_conn_get(qroute *r, qroute_conns *cs, const qroute_dest *dst, smtp_client **out,
                    int *reused, hv_err *err)
{
    int i = conn_find(cs, dst->key);
    if (i >= 0) {
        cs->slot[i].used = ++cs->tick;
        *out = cs->slot[i].c;
        *reused = 1;
        return 0;
    }
    *reused = 0;
    smtp_client *c;
    int rc = lmtp_open(r, dst, r->timeout_ms, &c, err);
    if (rc < 0)
        return rc;
    /* A free slot, else the least recently used one. */
    int victim = 0;
    for (i = 0; i < QROUTE_CONNS; i++) {
        if (!cs->slot[i].c) {
            victim = i;
            break;
        }
        if (cs->slot[i].used < cs->slot[victim].used)
            victim = i;
    }
    if (cs->slot[victim].c)
        smtp_client_close(cs->slot[victim].c);
    snprintf(cs->slot[victim].key, sizeof(cs->slot[victim].key), "%s", dst->key);
    cs->slot[victim].c = c;
    cs->slot[victim].used = ++cs->tick;
    *out = c;
    return 0;
}

void qroute_conn_drop(qroute_conns *cs, const qroute_dest *dst)
{
    int i = conn_find(cs, dst->key);
    if (i < 0)
        return;
    smtp_client_close(cs->slot[i].c);
    cs->slot[i].c = NULL;
    cs->slot[i].key[0] = 0;
}

void qroute_conns_close(qroute_conns *cs)
{
    for (int i = 0; i < QROUTE_CONNS; i++) {
        if (cs->slot[i].c)
            smtp_client_close(cs->slot[i].c);
        cs->slot[i].c = NULL;
    }
}
