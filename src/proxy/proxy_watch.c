/*
 * proxy_watch.c - where an account is served, and noticing when that
 * changes.
 *
 * Every relaying session is registered with the route it took (store,
 * address, epoch). The watcher thread polls the directory's version every
 * PX_WATCH_MS; when it moved, it looks every registered account up again,
 * and a session whose account now lives elsewhere (another store, or its
 * store got another address or a new epoch, i.e. failed over), or that
 * was deleted, is handed to the loop to be ended with BYE [UNAVAILABLE].
 * A session registered after the last look is looked up on the next
 * tick whatever the version, so a login that read the directory just
 * before a change is not missed. With a directory that notifies changes
 * (dir_watch_fd: PostgreSQL LISTEN/NOTIFY) the thread wakes at once;
 * with SQLite it polls the version every PX_WATCH_MS. New logins always read the directory afresh, so they go to the new place
 * at once. The poll is the fallback a SQLite directory needs; a directory
 * with change notification (PostgreSQL LISTEN/NOTIFY) can wake the same
 * check sooner.
 *
 * A second thread keeps the backend pool filled (proxy_backend.c).
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/log.h"
#include "proxy/proxy_internal.h"

int proxy_route_lookup(dir *d, const conf *c, const dir_account *a, proxy_route *out,
                       hv_err *err)
{
    memset(out, 0, sizeof(*out));
    snprintf(out->store, sizeof(out->store), "%s", a->store);
    dir_store st;
    hv_err e2 = {0};
    int rc = dir_store_get(d, a->store, &st, &e2);
    if (rc == 0) {
        snprintf(out->address, sizeof(out->address), "%s", st.address);
        out->epoch = (unsigned long long)st.epoch;
        return 0;
    }
    if (rc != -ENOENT)
        return hv_err_set(err, -EIO, "directory: %s", e2.msg);
    /* No row: only this node's own store has a known place. */
    char local[DIR_STORE_NAME_MAX + 1];
    if (dir_store_name_normalize(conf_get(c, "store_name"), local, NULL) < 0 ||
        strcmp(local, a->store) != 0)
        return hv_err_set(err, -ENOENT, "store %s has no address in the directory", a->store);
    const char *listen = conf_get(c, "listen");
    if (!*listen || strcmp(listen, "0.0.0.0") == 0)
        listen = "127.0.0.1";
    else if (strcmp(listen, "::") == 0)
        listen = "::1";
    if (strchr(listen, ':'))
        snprintf(out->address, sizeof(out->address), "[%s]:%lld", listen,
                 conf_get_int(c, "imap_port"));
    else
        snprintf(out->address, sizeof(out->address), "%s:%lld", listen,
                 conf_get_int(c, "imap_port"));
    return 0;
}

void px_route_register(px_server *srv, px_session *s)
{
    px_route_reg *r = calloc(1, sizeof(*r));
    r->id = s->id;
    snprintf(r->account, sizeof(r->account), "%s", s->user);
    r->route = s->route;
    r->fresh = 1;
    pthread_mutex_lock(&srv->rmu);
    r->next = srv->routes;
    srv->routes = r;
    pthread_mutex_unlock(&srv->rmu);
}

void px_route_unregister(px_server *srv, uint64_t id)
{
    pthread_mutex_lock(&srv->rmu);
    for (px_route_reg **pp = &srv->routes; *pp; pp = &(*pp)->next)
        if ((*pp)->id == id) {
            px_route_reg *r = *pp;
            *pp = r->next;
            free(r);
            break;
        }
    pthread_mutex_unlock(&srv->rmu);
}

typedef struct snap {
    uint64_t id;
    char account[DIR_ADDRESS_MAX + 1];
    proxy_route route;
} snap;

static int snap_cmp(const void *a, const void *b)
{
    return strcmp(((const snap *)a)->account, ((const snap *)b)->account);
}

/* Looks every relaying account up again; returns how many sessions were
 * condemned. -1 when the directory failed (the next tick retries). */
static int check_routes(px_server *srv, dir *d, int all)
{
    pthread_mutex_lock(&srv->rmu);
    size_t n = 0;
    for (px_route_reg *r = srv->routes; r; r = r->next)
        n += all || r->fresh;
    snap *v = n ? malloc(n * sizeof(*v)) : NULL;
    size_t i = 0;
    for (px_route_reg *r = srv->routes; r; r = r->next) {
        if (!all && !r->fresh)
            continue;
        r->fresh = 0;
        v[i].id = r->id;
        memcpy(v[i].account, r->account, sizeof(v[i].account));
        v[i].route = r->route;
        i++;
    }
    pthread_mutex_unlock(&srv->rmu);
    if (n > 1)
        qsort(v, n, sizeof(*v), snap_cmp);
    int condemned = 0, failed = 0;
    proxy_route now;
    const char *why = NULL;
    int have = 0;
    for (i = 0; i < n && !failed; i++) {
        if (i == 0 || strcmp(v[i].account, v[i - 1].account) != 0) {
            /* One lookup per account, however many sessions it has. */
            dir_account a;
            hv_err err = {0};
            int rc = dir_account_get(d, v[i].account, &a, &err);
            have = 0;
            why = NULL;
            if (rc == -ENOENT) {
                why = "account deleted";
            } else if (rc < 0) {
                log_warn("proxy: directory lookup failed account=%s reason=\"%s\"",
                         v[i].account, err.msg);
                failed = 1;
                break;
            } else if (proxy_route_lookup(d, srv->conf, &a, &now, &err) < 0) {
                if (err.code == -EIO) {
                    failed = 1;
                    break;
                }
                why = "store has no address";
            } else {
                have = 1;
            }
        }
        const char *reason = why;
        if (!reason && have) {
            if (strcmp(now.store, v[i].route.store) != 0)
                reason = "account moved to another store";
            else if (strcmp(now.address, v[i].route.address) != 0)
                reason = "store moved to another address";
            else if (now.epoch != v[i].route.epoch)
                reason = "store failed over";
        }
        if (!reason)
            continue;
        log_info("proxy: session=%llx account=%s ending reason=\"%s\" store=%s address=%s",
                 (unsigned long long)v[i].id, v[i].account, reason, v[i].route.store,
                 v[i].route.address);
        px_pool_drop(srv, v[i].route.address);
        pthread_mutex_lock(&srv->rmu);
        if (srv->nkills == srv->capkills) {
            srv->capkills = srv->capkills ? srv->capkills * 2 : 64;
            srv->kills = realloc(srv->kills, srv->capkills * sizeof(uint64_t));
        }
        srv->kills[srv->nkills++] = v[i].id;
        pthread_mutex_unlock(&srv->rmu);
        condemned++;
    }
    free(v);
    if (condemned)
        event_active(srv->kill_ev, EV_READ, 0);
    return failed ? -1 : condemned;
}

static int warm_store(void *ctx, const dir_store *st)
{
    px_server *srv = ctx;
    if (st->role == DIR_ROLE_PRIMARY) {
        pthread_mutex_lock(&srv->pmu);
        int known = 0;
        for (unsigned i = 0; i < srv->npool; i++)
            if (strcmp(srv->pool[i].address, st->address) == 0)
                known = 1;
        if (!known && srv->npool < PX_POOL_ADDRS) {
            px_pool_entry *e = &srv->pool[srv->npool++];
            memset(e, 0, sizeof(*e));
            snprintf(e->address, sizeof(e->address), "%s", st->address);
        }
        pthread_mutex_unlock(&srv->pmu);
    }
    return 0;
}

static int stopping(px_server *srv)
{
    pthread_mutex_lock(&srv->qmu);
    int stop = srv->stopping;
    pthread_mutex_unlock(&srv->qmu);
    return stop;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

void *px_watch_main(void *arg)
{
    px_server *srv = arg;
    /* One handle to watch on, one for lookups (dir.h: a lookup on the
     * watching handle could swallow a notification). */
    dir *dw = NULL, *d = NULL;
    int pending_all = 1;
    while (!stopping(srv)) {
        hv_err err = {0};
        if ((!dw && dir_open(srv->dir_spec, &dw, &err) < 0) ||
            (!d && dir_open(srv->dir_spec, &d, &err) < 0)) {
            log_warn("proxy: directory unavailable reason=\"%s\"", err.msg);
            sleep_ms(PX_WATCH_MS);
            continue;
        }
        uint64_t v;
        int rc = dir_watch_drain(dw, &v, &err);
        if (rc != 0)
            pending_all = 1; /* changed, or cannot tell: look at everyone */
        if (rc < 0) {
            log_warn("proxy: directory watch failed reason=\"%s\"", err.msg);
            dir_close(dw);
            dw = NULL;
        }
        /* All sessions when the directory changed; else only those
         * registered since the last look (their login may have read the
         * directory just before a change this thread already saw). */
        if (check_routes(srv, d, pending_all) >= 0)
            pending_all = 0;
        else {
            dir_close(d);
            d = NULL;
        }
        int fd = dw ? dir_watch_fd(dw) : -1;
        if (fd >= 0) {
            struct pollfd pf = {.fd = fd, .events = POLLIN};
            poll(&pf, 1, PX_WATCH_MS);
        } else {
            sleep_ms(PX_WATCH_MS);
        }
    }
    if (dw)
        dir_close(dw);
    if (d)
        dir_close(d);
    return NULL;
}

/* Keeps the backend pool filled, on a thread of its own: connecting to a
 * store that does not answer takes seconds, which must not delay noticing
 * a move. */
void *px_pool_main(void *arg)
{
    px_server *srv = arg;
    dir *d = NULL;
    hv_err err = {0};
    if (dir_open(srv->dir_spec, &d, &err) == 0) {
        /* Primaries in the directory get ready connections from the
         * start (the local store too, when it has no row). */
        dir_store_list(d, warm_store, srv, NULL);
        dir_close(d);
    }
    if (srv->local_address[0])
        px_pool_touch(srv, srv->local_address);
    while (!stopping(srv)) {
        px_pool_refill(srv);
        sleep_ms(PX_WATCH_MS);
    }
    return NULL;
}
