/*
 * proxy_server.c - the proxy service process: loop, listeners, login
 * workers and the directory watcher.
 *
 * The loop accepts connections and moves bytes; logins (a directory read,
 * a deliberately slow password hash, a connection and LOGIN to the store)
 * run on a small pool of worker threads so that they never hold up the
 * relaying of other sessions. See proxy_session.c for one session and
 * proxy_watch.c for what happens when an account moves.
 */
#include <errno.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "lib/workq.h"
#include "lib/tls.h"
#include "proxy/proxy_internal.h"


dir *px_worker_dir(px_server *srv, hv_err *err) { return dir_thread(srv->dir_spec, err); }

void px_server_submit(px_server *srv, px_session *s);
void px_server_submit(px_server *srv, px_session *s) { workq_push(srv->work, s); }

/* Worker thread: a login (directory, password, store connection). */
static void run_job(void *item) { px_session_login_job(item); }

/* The watcher condemned sessions: end them here, on the loop. */
static void kill_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    px_server *srv = arg;
    pthread_mutex_lock(&srv->rmu);
    uint64_t *ids = srv->kills;
    size_t n = srv->nkills;
    srv->kills = NULL;
    srv->nkills = srv->capkills = 0;
    pthread_mutex_unlock(&srv->rmu);
    for (size_t i = 0; i < n; i++)
        px_session_kill(srv, ids[i]);
    free(ids);
}

static void accept_plain(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                         int len, void *arg)
{
    (void)l;
    (void)sa;
    (void)len;
    px_session_accept(arg, fd, 0);
}

static void accept_tls(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                       int len, void *arg)
{
    (void)l;
    (void)sa;
    (void)len;
    px_session_accept(arg, fd, 1);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    px_server *srv = arg;
    log_info("proxy: signal=%d stopping", (int)sig);
    event_base_loopbreak(srv->base);
}

int proxy_service_run(const conf *c, int fd_plain, int fd_tls, hv_err *err)
{
    static px_server srv_store;
    px_server *srv = &srv_store;
    memset(srv, 0, sizeof(*srv));
    srv->conf = c;
    const char *spec = conf_get(c, "directory");
    if (strncmp(spec, "sqlite:", 7) == 0 && spec[7] != '/')
        snprintf(srv->dir_spec, sizeof(srv->dir_spec), "sqlite:%s/%s", conf_dir(c), spec + 7);
    else
        snprintf(srv->dir_spec, sizeof(srv->dir_spec), "%s", spec);
    snprintf(srv->hostname, sizeof(srv->hostname), "%s", conf_get(c, "hostname"));
    srv->plaintext_loopback = conf_get_bool(c, "plaintext_loopback");
    srv->max_sessions = (unsigned)conf_get_int(c, "imap_max_sessions");
    srv->fail_delay_ms = (unsigned)conf_get_int(c, "imap_auth_fail_delay_ms");
    long long pool = conf_get_int(c, "proxy_pool_size");
    srv->pool_size = pool < 0 ? 0 : pool > PX_POOL_MAX ? PX_POOL_MAX : (unsigned)pool;
    /* The local store's own address, for when it has no directory row. */
    dir_account local = {0};
    dir_store_name_normalize(conf_get(c, "store_name"), srv->local_store, NULL);
    memcpy(local.store, srv->local_store, sizeof(local.store));
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();
    srv->ssl = tls_server_context(c, err);
    if (!srv->ssl)
        return -EINVAL;
    if (px_backend_setup(srv, c, err) < 0)
        return -EINVAL;
    {
        dir *d;
        proxy_route r;
        if (dir_open(srv->dir_spec, &d, err) < 0)
            return -EIO;
        if (proxy_route_lookup(d, c, &local, &r, NULL) == 0)
            snprintf(srv->local_address, sizeof(srv->local_address), "%s", r.address);
        dir_close(d);
    }
    srv->rl = ratelimit_new();
    srv->base = event_base_new();
    pthread_mutex_init(&srv->qmu, NULL);
    pthread_mutex_init(&srv->rmu, NULL);
    pthread_mutex_init(&srv->pmu, NULL);
    srv->kill_ev = event_new(srv->base, -1, 0, kill_cb, srv);
    struct evconnlistener *lp = NULL, *lt = NULL;
    if (fd_plain >= 0) {
        evutil_make_socket_nonblocking(fd_plain);
        lp = evconnlistener_new(srv->base, accept_plain, srv, LEV_OPT_CLOSE_ON_FREE, -1,
                                fd_plain);
    }
    if (fd_tls >= 0) {
        evutil_make_socket_nonblocking(fd_tls);
        lt = evconnlistener_new(srv->base, accept_tls, srv, LEV_OPT_CLOSE_ON_FREE, -1, fd_tls);
    }
    srv->nthreads = (unsigned)conf_get_int(c, "proxy_workers");
    if (srv->nthreads < 1)
        srv->nthreads = 1;
    if (workq_start(&srv->work, srv->nthreads, run_job, err) < 0)
        return err->code;
    pthread_create(&srv->watcher, NULL, px_watch_main, srv);
    pthread_create(&srv->pooler, NULL, px_pool_main, srv);
    struct event *sterm = evsignal_new(srv->base, SIGTERM, on_signal, srv);
    struct event *sint = evsignal_new(srv->base, SIGINT, on_signal, srv);
    event_add(sterm, NULL);
    event_add(sint, NULL);
    log_info("proxy: ready workers=%u pool=%u plain_fd=%d tls_fd=%d local_store=%s "
             "local_address=%s backend_tls=%s", srv->nthreads, srv->pool_size, fd_plain, fd_tls,
             srv->local_store, srv->local_address[0] ? srv->local_address : "-",
             conf_get(c, "proxy_backend_tls"));
    event_base_dispatch(srv->base);

    pthread_mutex_lock(&srv->qmu);
    srv->stopping = 1; /* the watcher and the pooler look at it */
    pthread_mutex_unlock(&srv->qmu);
    workq_stop(srv->work);
    pthread_join(srv->watcher, NULL);
    pthread_join(srv->pooler, NULL);
    px_pool_free(srv);
    if (srv->be_ssl)
        SSL_CTX_free(srv->be_ssl);
    if (lp)
        evconnlistener_free(lp);
    if (lt)
        evconnlistener_free(lt);
    event_free(sterm);
    event_free(sint);
    return 0;
}
