/*
 * havend_services.c - the services havend runs as child processes.
 *
 * The master binds every service's ports while it may still be root, then
 * forks one child per service, which inherits only its own listening
 * sockets. A child that dies is restarted with a growing delay (1 s,
 * doubling to 60 s, back to 1 s once it has stayed up a minute): the
 * failed unit is restarted, never the whole server, and never in a tight
 * loop. Children get SIGTERM if the master dies.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cmd/havend.h"
#include "http/http.h"
#include "imap/imap.h"
#include "lib/log.h"
#include "proxy/proxy.h"
#include "repl/repl.h"
#include "smtp/smtp.h"
#include "store/store.h"

#define SERVICE_FDS 3

typedef struct service {
    const char *name;
    int fds[SERVICE_FDS]; /* listening sockets, -1 when a port is disabled */
    pid_t pid;
    int64_t started_ms, restart_at_ms;
    unsigned backoff_ms;
    int enabled; /* configured to run (a port, or repl configured) */
} service;

enum { SV_IMAP, SV_SMTP, SV_LMTP, SV_REPL, SV_PROXY, SV_HTTP };

static service services[] = {
    [SV_IMAP] = {"imap", {-1, -1, -1}, 0, 0, 0, 1000},
    [SV_SMTP] = {"smtp", {-1, -1, -1}, 0, 0, 0, 1000},
    [SV_LMTP] = {"lmtp", {-1, -1, -1}, 0, 0, 0, 1000},
    [SV_REPL] = {"repl", {-1, -1, -1}, 0, 0, 0, 1000},
    [SV_PROXY] = {"proxy", {-1, -1, -1}, 0, 0, 0, 1000},
    [SV_HTTP] = {"http", {-1, -1, -1}, 0, 0, 0, 1000},
};
#define NSERVICES (sizeof(services) / sizeof(services[0]))

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int bind_port(const char *addr, long port, hv_err *err)
{
    if (port <= 0)
        return -1;
    struct addrinfo hints = {0}, *res;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST;
    char ps[24];
    snprintf(ps, sizeof(ps), "%ld", port);
    int rc = getaddrinfo(*addr ? addr : NULL, ps, &hints, &res);
    if (rc != 0) {
        hv_err_set(err, -EINVAL, "listen address %s: %s", addr, gai_strerror(rc));
        return -2;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
        hv_err_sys(err, "listen on %s port %ld", addr, port);
        if (fd >= 0)
            close(fd);
        freeaddrinfo(res);
        return -2;
    }
    freeaddrinfo(res);
    return fd;
}

int havend_services_bind(havend *d, hv_err *err)
{
    /* http has an address of its own (http_listen): a node whose mail
     * ports face the world keeps its health and metrics on loopback. */
    static const struct {
        int service, slot;
        const char *key, *addr_key;
    } ports[] = {
        {SV_IMAP, 0, "imap_port", "listen"},        {SV_IMAP, 1, "imaps_port", "listen"},
        {SV_SMTP, 0, "smtp_port", "listen"},        {SV_SMTP, 1, "submission_port", "listen"},
        {SV_SMTP, 2, "submissions_port", "listen"}, {SV_LMTP, 0, "lmtp_port", "listen"},
        {SV_REPL, 0, "repl_port", "listen"},        {SV_PROXY, 0, "proxy_port", "listen"},
        {SV_PROXY, 1, "proxy_imaps_port", "listen"}, {SV_HTTP, 0, "http_port", "http_listen"},
    };
    for (size_t i = 0; i < sizeof(ports) / sizeof(ports[0]); i++) {
        const char *addr = conf_get(d->conf, ports[i].addr_key);
        int fd = bind_port(addr, conf_get_int(d->conf, ports[i].key), err);
        if (fd == -2)
            return -1;
        services[ports[i].service].fds[ports[i].slot] = fd;
        if (fd >= 0)
            services[ports[i].service].enabled = 1;
    }
    /* A replica listens on no port but still runs repl (it dials out). */
    services[SV_REPL].enabled = repl_configured(d->conf);
    return 0;
}

/* The child's work: runs the service on its inherited sockets. */
static int run_service(havend *d, service *sv, hv_err *err)
{
    if (sv == &services[SV_SMTP])
        return smtp_service_run(d->conf, sv->fds[0], sv->fds[1], sv->fds[2], err);
    if (sv == &services[SV_LMTP])
        return lmtp_service_run(d->conf, sv->fds[0], err);
    if (sv == &services[SV_REPL])
        return repl_service_run(d->conf, sv->fds[0], err);
    if (sv == &services[SV_PROXY])
        return proxy_service_run(d->conf, sv->fds[0], sv->fds[1], err);
    if (sv == &services[SV_HTTP]) {
        http_master m = {d->started_wall,
                         (int64_t)d->started.tv_sec * 1000 + d->started.tv_nsec / 1000000};
        return http_service_run(d->conf, sv->fds[0], &m, err);
    }
    return imap_service_run(d->conf, sv->fds[0], sv->fds[1], err);
}

static void start_one(havend *d, service *sv)
{
    int any = 0;
    for (int k = 0; k < SERVICE_FDS; k++)
        if (sv->fds[k] >= 0)
            any = 1;
    /* A replica listens on no port but still runs repl (it dials out). */
    if (sv == &services[SV_REPL])
        any = repl_configured(d->conf);
    if (!any)
        return;
    pid_t pid = fork();
    if (pid < 0) {
        log_error("service=%s fork failed reason=\"%s\"", sv->name, strerror(errno));
        sv->restart_at_ms = now_ms() + sv->backoff_ms;
        return;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != d->pid)
            _exit(0); /* the master died before prctl took effect */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGHUP, SIG_IGN);
        signal(SIGCHLD, SIG_DFL);
        for (size_t i = 0; i < NSERVICES; i++)
            if (&services[i] != sv)
                for (int k = 0; k < SERVICE_FDS; k++)
                    if (services[i].fds[k] >= 0)
                        close(services[i].fds[k]);
        log_init(sv->name, !d->foreground, LOG_LVL_INFO);
        char data[4096], fence[4200];
        conf_path(d->conf, "data_dir", data, sizeof(data));
        snprintf(fence, sizeof(fence), "%s/fence", data);
        store_set_fence(fence);
        hv_err err = {0};
        int rc = run_service(d, sv, &err);
        if (rc < 0)
            log_error("service=%s failed reason=\"%s\"", sv->name, err.msg);
        _exit(rc < 0 ? 1 : 0);
    }
    sv->pid = pid;
    sv->started_ms = now_ms();
    sv->restart_at_ms = 0;
    log_info("service=%s started pid=%d", sv->name, (int)pid);
}

void havend_services_start(havend *d)
{
    for (size_t i = 0; i < NSERVICES; i++)
        start_one(d, &services[i]);
}

void havend_services_reap(havend *d, int stopping)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (size_t i = 0; i < NSERVICES; i++) {
            service *sv = &services[i];
            if (sv->pid != pid)
                continue;
            sv->pid = 0;
            if (stopping)
                break;
            int64_t up = now_ms() - sv->started_ms;
            if (up > 60000)
                sv->backoff_ms = 1000;
            log_error("service=%s pid=%d exited status=%d signal=%d uptime_ms=%lld "
                      "restart_in_ms=%u",
                      sv->name, (int)pid, WIFEXITED(status) ? WEXITSTATUS(status) : -1,
                      WIFSIGNALED(status) ? WTERMSIG(status) : 0, (long long)up,
                      sv->backoff_ms);
            sv->restart_at_ms = now_ms() + sv->backoff_ms;
            sv->backoff_ms = sv->backoff_ms >= 30000 ? 60000 : sv->backoff_ms * 2;
        }
    }
    if (stopping)
        return;
    int64_t now = now_ms();
    for (size_t i = 0; i < NSERVICES; i++)
        if (!services[i].pid && services[i].restart_at_ms && services[i].restart_at_ms <= now)
            start_one(d, &services[i]);
}

int havend_services_timeout(void)
{
    int64_t now = now_ms(), best = -1;
    for (size_t i = 0; i < NSERVICES; i++) {
        if (services[i].pid || !services[i].restart_at_ms)
            continue;
        int64_t wait = services[i].restart_at_ms - now;
        if (wait < 0)
            wait = 0;
        if (best < 0 || wait < best)
            best = wait;
    }
    return (int)best;
}

void havend_services_stop(void)
{
    for (size_t i = 0; i < NSERVICES; i++)
        if (services[i].pid)
            kill(services[i].pid, SIGTERM);
    for (int tries = 0; tries < 100; tries++) {
        int alive = 0;
        for (size_t i = 0; i < NSERVICES; i++) {
            if (!services[i].pid)
                continue;
            if (waitpid(services[i].pid, NULL, WNOHANG) == services[i].pid)
                services[i].pid = 0;
            else
                alive = 1;
        }
        if (!alive)
            return;
        usleep(100000);
    }
    for (size_t i = 0; i < NSERVICES; i++)
        if (services[i].pid) {
            kill(services[i].pid, SIGKILL);
            waitpid(services[i].pid, NULL, 0);
            services[i].pid = 0;
        }
}

void havend_services_status(buf *out)
{
    for (size_t i = 0; i < NSERVICES; i++)
        buf_printf(out, "service %s: %s pid=%d\n", services[i].name,
                   services[i].pid ? "running" : services[i].enabled ? "stopped" : "off",
                   (int)services[i].pid);
}
