/*
 * imap_server.c - the imap service process: loop, listeners, workers.
 *
 * One libevent loop accepts connections and moves bytes; commands run on a
 * fixed pool of worker threads so that a password hash, an fsync or a big
 * blob read in one session never holds up the others. Sessions on the same
 * account share one store handle (imap_account), serialised by its mutex;
 * changes made by other processes (LMTP delivery, another imap process,
 * the haven command) are noticed through inotify on the account's log
 * folder and pushed to idling sessions at once.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "imap/imap_internal.h"
#include "lib/log.h"
#include "lib/workq.h"
#include "repl/repl_sync.h"
#include "lib/tls.h"

void imap_session_accept(imap_server *srv, int fd, int tls);
void imap_session_run(imap_session *s);
void imap_session_job_done(imap_session *s);

/* ---- workers ---- */





/* The worker's handle on the repl service's sync waits; NULL when the
 * store is not in sync mode (or the handle cannot be made: then the wait
 * is refused, never skipped). */
int imap_worker_repl_sync(imap_server *srv, repl_sync **out, hv_err *err)
{
    return repl_sync_thread(srv->conf, out, err);
}

dir *imap_worker_dir(imap_server *srv, hv_err *err) { return dir_thread(srv->dir_spec, err); }

void imap_server_submit(imap_server *srv, imap_session *s) { workq_push(srv->work, s); }

/* Worker thread: runs the session's command, then wakes the loop. */
static void run_job(void *item) { imap_session_run(item); }

/* ---- accounts ---- */

static void account_notify_cb(evutil_socket_t fd, short what, void *arg);

imap_account *imap_account_get(imap_server *srv, const char *address, hv_err *err)
{
    pthread_mutex_lock(&srv->amu);
    imap_account *a;
    for (a = srv->accounts; a; a = a->next)
        if (strcmp(a->address, address) == 0)
            break;
    if (a) {
        if (a->refs++ == 0)
            srv->idle_accounts--;
        pthread_mutex_unlock(&srv->amu);
        return a;
    }
    char path[4400];
    store_account *st;
    store_options opt = {
        .segment_size = (uint64_t)conf_get_int(srv->conf, "store_segment_size"),
        .checkpoint_records = (uint32_t)conf_get_int(srv->conf, "store_checkpoint_records"),
        .max_message_size = (uint64_t)conf_get_int(srv->conf, "store_max_message_size"),
    };
    if (store_account_dir(srv->data_dir, address, path, sizeof(path), err) < 0 ||
        store_open(path, address, STORE_OPEN_CREATE, &opt, &st, err) < 0) {
        pthread_mutex_unlock(&srv->amu);
        return NULL;
    }
    a = calloc(1, sizeof(*a));
    snprintf(a->address, sizeof(a->address), "%s", address);
    a->st = st;
    pthread_mutex_init(&a->mu, NULL);
    a->refs = 1;
    a->notify = event_new(srv->base, -1, 0, account_notify_cb, a);
    char logdir[4500];
    snprintf(logdir, sizeof(logdir), "%s/log", path);
    a->watch = srv->inotify_fd >= 0
                   ? inotify_add_watch(srv->inotify_fd, logdir, IN_MODIFY | IN_CREATE)
                   : -1;
    a->next = srv->accounts;
    srv->accounts = a;
    pthread_mutex_unlock(&srv->amu);
    return a;
}

/* Accounts nobody uses stay open (up to ACCOUNT_CACHE of them): a client
 * that logs in again, as most do all day, then finds its index in memory
 * instead of reopening and replaying the log. */
#define ACCOUNT_CACHE 256

static void account_free(imap_server *srv, imap_account *a)
{
    if (a->watch >= 0)
        inotify_rm_watch(srv->inotify_fd, a->watch);
    event_free(a->notify);
    store_close(a->st);
    pthread_mutex_destroy(&a->mu);
    free(a);
}

void imap_account_put(imap_server *srv, imap_account *a)
{
    if (!a)
        return;
    pthread_mutex_lock(&srv->amu);
    if (--a->refs > 0) {
        pthread_mutex_unlock(&srv->amu);
        return;
    }
    imap_account *evict = NULL;
    if (++srv->idle_accounts > ACCOUNT_CACHE) {
        /* The list is newest first: drop the unused one furthest back. */
        imap_account **pp, **victim = NULL;
        for (pp = &srv->accounts; *pp; pp = &(*pp)->next)
            if ((*pp)->refs == 0 && *pp != a)
                victim = pp;
        if (victim) {
            evict = *victim;
            *victim = evict->next;
            srv->idle_accounts--;
        }
    }
    pthread_mutex_unlock(&srv->amu);
    if (evict)
        account_free(srv, evict);
}

void imap_account_changed(imap_account *a) { event_active(a->notify, EV_READ, 0); }

void imap_session_idle_wake(imap_session *s);

static void account_notify_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    imap_account *a = arg;
    for (imap_session *s = a->idlers; s; s = s->idle_next)
        imap_session_idle_wake(s);
}

static void inotify_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    imap_server *srv = arg;
    char evbuf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t n;
    while ((n = read(fd, evbuf, sizeof(evbuf))) > 0) {
        for (char *p = evbuf; p < evbuf + n;) {
            struct inotify_event *ie = (struct inotify_event *)p;
            pthread_mutex_lock(&srv->amu);
            for (imap_account *a = srv->accounts; a; a = a->next)
                if (a->watch == ie->wd && a->idlers)
                    event_active(a->notify, EV_READ, 0);
            pthread_mutex_unlock(&srv->amu);
            p += sizeof(struct inotify_event) + ie->len;
        }
    }
}

/* ---- listeners ---- */

static void accept_plain(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                         int len, void *arg)
{
    (void)l;
    (void)sa;
    (void)len;
    imap_session_accept(arg, fd, 0);
}

static void accept_tls(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                       int len, void *arg)
{
    (void)l;
    (void)sa;
    (void)len;
    imap_session_accept(arg, fd, 1);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    imap_server *srv = arg;
    log_info("imap: signal=%d stopping", (int)sig);
    event_base_loopbreak(srv->base);
}

int imap_service_run(const conf *c, int fd_plain, int fd_tls, hv_err *err)
{
    static imap_server srv_store;
    imap_server *srv = &srv_store;
    memset(srv, 0, sizeof(*srv));
    srv->conf = c;
    conf_path(c, "data_dir", srv->data_dir, sizeof(srv->data_dir));
    const char *spec = conf_get(c, "directory");
    if (strncmp(spec, "sqlite:", 7) == 0 && spec[7] != '/')
        snprintf(srv->dir_spec, sizeof(srv->dir_spec), "sqlite:%s/%s", conf_dir(c), spec + 7);
    else
        snprintf(srv->dir_spec, sizeof(srv->dir_spec), "%s", spec);
    snprintf(srv->hostname, sizeof(srv->hostname), "%s", conf_get(c, "hostname"));
    srv->plaintext_loopback = conf_get_bool(c, "plaintext_loopback");
    srv->lim.max_line_preauth = 8192;
    srv->lim.max_line = (size_t)conf_get_int(c, "imap_max_line");
    srv->lim.max_message = (uint64_t)conf_get_int(c, "store_max_message_size");
    srv->lim.max_sessions = (unsigned)conf_get_int(c, "imap_max_sessions");
    srv->lim.auth_fail_delay_ms = (unsigned)conf_get_int(c, "imap_auth_fail_delay_ms");
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();
    srv->ssl = tls_server_context(c, err);
    if (!srv->ssl)
        return -EINVAL;
    srv->base = event_base_new();
    pthread_mutex_init(&srv->amu, NULL);
    pthread_mutex_init(&srv->fmu, NULL);
    srv->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (srv->inotify_fd >= 0) {
        srv->inotify_ev = event_new(srv->base, srv->inotify_fd, EV_READ | EV_PERSIST, inotify_cb,
                                    srv);
        event_add(srv->inotify_ev, NULL);
    }
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
    srv->nthreads = (unsigned)conf_get_int(c, "imap_workers");
    if (srv->nthreads < 1)
        srv->nthreads = 1;
    if (workq_start(&srv->work, srv->nthreads, run_job, err) < 0)
        return err->code;
    struct event *sterm = evsignal_new(srv->base, SIGTERM, on_signal, srv);
    struct event *sint = evsignal_new(srv->base, SIGINT, on_signal, srv);
    event_add(sterm, NULL);
    event_add(sint, NULL);
    log_info("imap: ready workers=%u plain_fd=%d tls_fd=%d", srv->nthreads, fd_plain, fd_tls);
    event_base_dispatch(srv->base);

    workq_stop(srv->work);
    if (lp)
        evconnlistener_free(lp);
    if (lt)
        evconnlistener_free(lt);
    event_free(sterm);
    event_free(sint);
    return 0;
}
