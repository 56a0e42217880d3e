/*
 * smtp_server.c - the smtp and lmtp service processes: loop, listeners,
 * workers, the lmtp account cache.
 *
 * Same shape as the imap service: one libevent loop accepts connections,
 * moves bytes and parses; jobs that may block (directory lookups, password
 * hashes, the queue's fsync, store writes) run on a fixed pool of worker
 * threads, so one slow disk or one yescrypt never holds up other sessions.
 * The smtp process also runs the queue's delivery runner (its own threads).
 */
#include <errno.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/workq.h"
#include "repl/repl_sync.h"
#include "lib/tls.h"
#include "smtp/smtp_internal.h"

/* ---- workers ---- */




dir *smtp_worker_dir(smtp_server *srv, hv_err *err) { return dir_thread(srv->dir_spec, err); }

void smtp_server_submit(smtp_server *srv, smtp_session *s) { workq_push(srv->work, s); }

/* Worker thread: runs the session's job, then wakes the loop. */
static void run_job(void *item) { smtp_session_run(item); }

/* ---- lmtp accounts ---- */

/* Accounts nobody delivers to right now stay open (up to ACCOUNT_CACHE):
 * the next delivery to the same account, the usual case under load, finds
 * its index in memory instead of replaying the log. */
#define ACCOUNT_CACHE 256

int lmtp_worker_repl_sync(smtp_server *srv, repl_sync **out, hv_err *err)
{
    return repl_sync_thread(srv->conf, out, err);
}

lmtp_account *lmtp_account_get(smtp_server *srv, const char *address, hv_err *err)
{
    pthread_mutex_lock(&srv->amu);
    lmtp_account *a;
    for (;;) {
        for (a = srv->accounts; a; a = a->next)
            if (strcmp(a->address, address) == 0)
                break;
        if (!a || !a->opening)
            break;
        /* Another delivery is opening it: wait for that one open, rather
         * than each of the account's first deliveries opening (and
         * checkpointing) the account anew. */
        pthread_cond_wait(&srv->amu_cv, &srv->amu);
    }
    if (a) {
        if (a->refs++ == 0)
            srv->idle_accounts--;
        pthread_mutex_unlock(&srv->amu);
        return a;
    }
    a = calloc(1, sizeof(*a));
    if (!a)
        abort();
    snprintf(a->address, sizeof(a->address), "%s", address);
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    a->pending_tail = &a->pending;
    a->refs = 1;
    a->opening = 1;
    a->next = srv->accounts;
    srv->accounts = a;
    /* Opening replays the log tail: not under the registry mutex, or every
     * other delivery would wait for it. */
    pthread_mutex_unlock(&srv->amu);
    char path[4400];
    store_account *st = NULL;
    int rc = store_account_dir(srv->data_dir, address, path, sizeof(path), err);
    if (rc == 0)
        rc = store_open(path, address, STORE_OPEN_CREATE, &srv->store_opt, &st, err);
    pthread_mutex_lock(&srv->amu);
    a->opening = 0;
    if (rc < 0) {
        /* Out of the registry; those who waited for it open it themselves. */
        for (lmtp_account **pp = &srv->accounts; *pp; pp = &(*pp)->next)
            if (*pp == a) {
                *pp = a->next;
                break;
            }
    } else {
        a->st = st;
    }
    pthread_cond_broadcast(&srv->amu_cv);
    pthread_mutex_unlock(&srv->amu);
    if (rc < 0) {
        pthread_mutex_destroy(&a->mu);
        pthread_cond_destroy(&a->cv);
        free(a);
        return NULL;
    }
    return a;
}

void lmtp_account_put(smtp_server *srv, lmtp_account *a)
{
    if (!a)
        return;
    pthread_mutex_lock(&srv->amu);
    if (--a->refs > 0) {
        pthread_mutex_unlock(&srv->amu);
        return;
    }
    lmtp_account *evict = NULL;
    if (++srv->idle_accounts > ACCOUNT_CACHE) {
        /* The list is newest first: drop the unused one furthest back. */
        lmtp_account **pp, **victim = NULL;
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
    if (evict) {
        store_close(evict->st);
        pthread_mutex_destroy(&evict->mu);
        pthread_cond_destroy(&evict->cv);
        free(evict);
    }
}

static void accounts_free(smtp_server *srv)
{
    while (srv->accounts) {
        lmtp_account *a = srv->accounts;
        srv->accounts = a->next;
        store_close(a->st);
        pthread_mutex_destroy(&a->mu);
        pthread_cond_destroy(&a->cv);
        free(a);
    }
}

/* ---- listeners ---- */

typedef struct listener {
    smtp_server *srv;
    enum smtp_port port;
    struct evconnlistener *l;
} listener;

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
                      void *arg)
{
    (void)l;
    listener *li = arg;
    smtp_session_accept(li->srv, fd, sa, len, li->port);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    smtp_server *srv = arg;
    log_info("%s: signal=%d stopping", srv->lmtp ? "lmtp" : "smtp", (int)sig);
    event_base_loopbreak(srv->base);
}

static void server_init(smtp_server *srv, const conf *c, int lmtp)
{
    memset(srv, 0, sizeof(*srv));
    srv->conf = c;
    srv->lmtp = lmtp;
    conf_path(c, "data_dir", srv->data_dir, sizeof(srv->data_dir));
    const char *spec = conf_get(c, "directory");
    if (strncmp(spec, "sqlite:", 7) == 0 && spec[7] != '/')
        snprintf(srv->dir_spec, sizeof(srv->dir_spec), "sqlite:%s/%s", conf_dir(c), spec + 7);
    else
        snprintf(srv->dir_spec, sizeof(srv->dir_spec), "%s", spec);
    snprintf(srv->hostname, sizeof(srv->hostname), "%s", conf_get(c, "hostname"));
    srv->plaintext_loopback = conf_get_bool(c, "plaintext_loopback");
    srv->max_message = (uint64_t)conf_get_int(c, "smtp_max_message_size");
    srv->max_rcpts = (unsigned)conf_get_int(c, "smtp_max_recipients");
    srv->max_sessions = (unsigned)conf_get_int(c, "smtp_max_sessions");
    srv->client_max_sessions = (unsigned)conf_get_int(c, "smtp_client_max_sessions");
    srv->client_msgs_per_minute = (unsigned)conf_get_int(c, "smtp_client_max_messages_per_minute");
    srv->auth_fail_delay_ms = (unsigned)conf_get_int(c, "smtp_auth_fail_delay_ms");
    if (srv->max_rcpts < 1)
        srv->max_rcpts = 1;
    srv->store_opt.segment_size = (uint64_t)conf_get_int(c, "store_segment_size");
    srv->store_opt.checkpoint_records = (uint32_t)conf_get_int(c, "store_checkpoint_records");
    srv->store_opt.max_message_size = (uint64_t)conf_get_int(c, "store_max_message_size");
    pthread_mutex_init(&srv->amu, NULL);
    pthread_cond_init(&srv->amu_cv, NULL);
}

/* Runs the loop over the given listeners until a signal. */
static int server_run(smtp_server *srv, const int *fds, const enum smtp_port *ports, size_t n,
                      const char *workers_key, hv_err *err)
{
    const char *name = srv->lmtp ? "lmtp" : "smtp";
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();
    int need_tls = 0;
    for (size_t i = 0; i < n; i++)
        if (fds[i] >= 0 && ports[i] != SMTP_PORT_LMTP)
            need_tls = 1;
    if (need_tls) {
        srv->ssl = tls_server_context(srv->conf, err);
        if (!srv->ssl)
            return -EINVAL;
    }
    srv->rl = ratelimit_new();
    /* The changelist folds the add/delete of a write event around each
     * reply into at most one epoll_ctl per loop turn: system calls are
     * what a message costs here, not computation. */
    struct event_config *ecfg = event_config_new();
    event_config_set_flag(ecfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    srv->base = event_base_new_with_config(ecfg);
    event_config_free(ecfg);
    if (!srv->base)
        return hv_err_set(err, -ENOMEM, "%s: cannot create the event loop", name);
    listener li[4] = {0};
    for (size_t i = 0; i < n && i < 4; i++) {
        if (fds[i] < 0)
            continue;
        evutil_make_socket_nonblocking(fds[i]);
        /* Accepted sockets inherit it: replies go out at once, without a
         * setsockopt per connection. */
        int one = 1;
        setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        li[i].srv = srv;
        li[i].port = ports[i];
        li[i].l = evconnlistener_new(srv->base, accept_cb, &li[i], LEV_OPT_CLOSE_ON_FREE, -1,
                                     fds[i]);
    }
    srv->nthreads = (unsigned)conf_get_int(srv->conf, workers_key);
    if (srv->nthreads < 1)
        srv->nthreads = 1;
    if (workq_start(&srv->work, srv->nthreads, run_job, err) < 0)
        return err->code;
    struct event *sterm = evsignal_new(srv->base, SIGTERM, on_signal, srv);
    struct event *sint = evsignal_new(srv->base, SIGINT, on_signal, srv);
    event_add(sterm, NULL);
    event_add(sint, NULL);
    log_info("%s: ready workers=%u max_message=%llu", name, srv->nthreads,
             (unsigned long long)srv->max_message);
    event_base_dispatch(srv->base);

    workq_stop(srv->work);
    for (size_t i = 0; i < 4; i++)
        if (li[i].l)
            evconnlistener_free(li[i].l);
    event_free(sterm);
    event_free(sint);
    accounts_free(srv);
    ratelimit_free(srv->rl);
    if (srv->ssl)
        SSL_CTX_free(srv->ssl);
    return 0;
}

int smtp_service_run(const conf *c, int fd_smtp, int fd_submission, int fd_submissions,
                     hv_err *err)
{
    static smtp_server srv_store;
    smtp_server *srv = &srv_store;
    server_init(srv, c, 0);
    int rc = queue_open_conf(c, &srv->q, err);
    if (rc < 0)
        return rc;
    rc = queue_runner_start(srv->q, c, err);
    if (rc < 0) {
        queue_close(srv->q);
        return rc;
    }
    int fds[3] = {fd_smtp, fd_submission, fd_submissions};
    enum smtp_port ports[3] = {SMTP_PORT_MX, SMTP_PORT_SUBMISSION, SMTP_PORT_SUBMISSIONS};
    rc = server_run(srv, fds, ports, 3, "smtp_workers", err);
    queue_runner_stop(srv->q);
    queue_close(srv->q);
    return rc;
}

int lmtp_service_run(const conf *c, int fd_lmtp, hv_err *err)
{
    static smtp_server srv_store;
    smtp_server *srv = &srv_store;
    server_init(srv, c, 1);
    int fds[1] = {fd_lmtp};
    enum smtp_port ports[1] = {SMTP_PORT_LMTP};
    return server_run(srv, fds, ports, 1, "lmtp_workers", err);
}
