/*
 * havend.c - the Haven daemon's master process.
 *
 * The master loads haven.conf, makes sure it is the only havend of its
 * instance (an flock on RUN_DIR/havend.pid, which the kernel drops when the
 * holder dies, so it is never stale), binds the services' ports, drops
 * privileges, forks one supervised child per service (havend_services.c)
 * and serves the admin socket from one poll loop. Services the design has
 * but that are not built yet are named as such in --help and the logs.
 *
 * SECURITY: reads only its config file (trusted: owned by the operator)
 * and the admin socket (see havend_admin.c). When started as root with
 * `user` set, it gives up root after binding; nothing after that point
 * needs it.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cmd/havend.h"
#include "cmd/version.h"
#include "lib/buf.h"
#include "lib/fsutil.h"
#include "lib/log.h"

static volatile sig_atomic_t stop_signal;
static volatile sig_atomic_t reload_requested;

/* In daemon mode, the write end of a pipe to the process the operator
 * started: it waits for "ok PID" or a reason, so `havend` without -f
 * exits 1 with the real reason when startup fails. -1 otherwise. */
static int ready_fd = -1;

static void on_signal(int sig)
{
    if (sig == SIGHUP)
        reload_requested = 1;
    else if (sig != SIGCHLD) /* SIGCHLD only wakes ppoll: children are reaped there */
        stop_signal = sig;
}

static void usage(FILE *f)
{
    fputs("usage: havend [-c CONF] [-f]\n"
          "       havend --help | --version\n"
          "\n"
          "The Haven daemon: a master process that binds the mail ports, drops\n"
          "privileges and supervises one child process per service.\n"
          "\n"
          "Options:\n"
          "  -c CONF      the instance's config file (default: $HAVEN_CONF if set, else\n"
          "               ./haven.conf); 'haven init DIR' writes one\n"
          "  -f           stay in the foreground and log to stderr (systemd, make run,\n"
          "               debugging); without -f havend detaches, logs to syslog\n"
          "               (facility mail) and exits 0 only once it is up, or 1 with\n"
          "               the reason why it could not start\n"
          "  -h, --help   this text\n"
          "  --version    print the version\n"
          "\n"
          "Services:\n"
          "  master       built: holds RUN_DIR/havend.pid (one havend per instance),\n"
          "               answers on RUN_DIR/admin.sock (mode 0600; 'haven status'),\n"
          "               re-reads haven.conf on SIGHUP, stops cleanly on SIGTERM\n"
          "  smtp         built: MX on smtp_port (25), submission on submission_port\n"
          "               (587, STARTTLS then AUTH) and submissions_port (465, TLS);\n"
          "               the durable queue and its delivery runner (docs/smtp.md)\n"
          "  lmtp         built: LMTP on lmtp_port, delivery into the account stores\n"
          "  imap         built: IMAP4rev1/IMAP4rev2 on imap_port (STARTTLS) and\n"
          "               imaps_port (TLS); restarted with backoff if it dies\n"
          "  proxy        built: front-end IMAP on proxy_port (STARTTLS) and\n"
          "               proxy_imaps_port (TLS), relaying each login to its\n"
          "               account's store (docs/proxy.md); off while both are 0\n"
          "  repl         built: streams each account's log to replicas (repl_port on\n"
          "               a primary; repl_primary on a replica), sync or async;\n"
          "               started only when configured (docs/replication.md)\n"
          "  http         built: GET /health and /metrics (Prometheus) on http_port\n"
          "               (8080) at http_listen (127.0.0.1) (docs/http.md); the admin\n"
          "               API and the status page are coming later\n"
          "  A service whose ports are all 0 in haven.conf is not started.\n"
          "\n"
          "Privileges: started as root with 'user' set in haven.conf, havend binds\n"
          "what it needs, gives RUN_DIR to that user, then drops to it (its groups,\n"
          "group and user, checked so root cannot be regained). Without 'user' it\n"
          "keeps the identity it was started with.\n"
          "\n"
          "Signals: SIGTERM, SIGINT stop it (the admin socket is removed); SIGHUP\n"
          "re-reads haven.conf (a bad file is logged and the old one kept).\n"
          "\n"
          "Exit status: 0 after a clean stop; 1 when it cannot start, with a one-line\n"
          "reason on stderr; 2 usage error. More: docs/operations.md.\n",
          f);
}

/* One-line startup failure: to stderr, or in daemon mode through the
 * pipe to the waiting parent (stderr is /dev/null by then) and syslog. */
__attribute__((format(printf, 1, 2), noreturn)) static void start_fail(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (ready_fd >= 0) {
        log_error("start_failed reason=\"%s\"", msg);
        (void)!write(ready_fd, msg, strlen(msg));
    } else {
        fprintf(stderr, "havend: %s\n", msg);
    }
    exit(1);
}

static int parse_level(const char *s, enum log_level *out)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (strcmp(s, names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    return -1;
}

/* Detaches. The parent stays until the daemon reports "ok PID" or a
 * reason, so the exit status of `havend` tells whether it started. */
static void daemonize(void)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        start_fail("pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0)
        start_fail("fork: %s", strerror(errno));
    if (pid > 0) {
        close(p[1]);
        char msg[1025];
        size_t len = 0;
        for (;;) {
            ssize_t r = read(p[0], msg + len, sizeof(msg) - 1 - len);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                break;
            len += (size_t)r;
            if (len == sizeof(msg) - 1)
                break;
        }
        msg[len] = 0;
        waitpid(pid, NULL, 0);
        if (strncmp(msg, "ok ", 3) == 0) {
            printf("havend: started (pid %s)\n", msg + 3);
            exit(0);
        }
        fprintf(stderr, "havend: %s\n",
                len ? msg : "exited during startup without a reason (see syslog)");
        exit(1);
    }
    close(p[0]);
    ready_fd = p[1];
    if (setsid() < 0)
        start_fail("setsid: %s", strerror(errno));
    /* A second fork, so the daemon is not a session leader and can never
     * acquire a controlling terminal by opening one. */
    pid = fork();
    if (pid < 0)
        start_fail("fork: %s", strerror(errno));
    if (pid > 0)
        _exit(0);
    if (chdir("/") < 0)
        start_fail("chdir /: %s", strerror(errno));
    int null = open("/dev/null", O_RDWR);
    if (null < 0)
        start_fail("open /dev/null: %s", strerror(errno));
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
    if (null > 2)
        close(null);
}

/* The lock, not the file's existence, says whether a havend runs: the file
 * is left in place (emptied) on exit, and a crashed holder's lock is gone
 * with it. */
static int pidfile_lock(const char *path, int *fd_out, hv_err *err)
{
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return hv_err_sys(err, "open %s", path);
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        char holder[32] = "";
        ssize_t r = pread(fd, holder, sizeof(holder) - 1, 0);
        holder[r > 0 ? r : 0] = 0;
        holder[strcspn(holder, "\n")] = 0;
        close(fd);
        if (e == EWOULDBLOCK)
            return hv_err_set(err, -EEXIST,
                              "another havend (pid %s) is running for this instance: %s is locked",
                              *holder ? holder : "unknown", path);
        errno = e;
        return hv_err_sys(err, "lock %s", path);
    }
    char line[32];
    int n = snprintf(line, sizeof(line), "%d\n", (int)getpid());
    if (ftruncate(fd, 0) < 0 || fs_pwrite_full(fd, line, (size_t)n, 0) < 0) {
        int rc = hv_err_sys(err, "write %s", path);
        close(fd);
        return rc;
    }
    *fd_out = fd;
    return 0;
}

/* Whether run_dir holds nothing but havend's own files: only then is it
 * safe to give the folder away (a run_dir of /run by mistake must not
 * hand /run to the mail user). */
static int run_dir_is_ours(const char *run_dir)
{
    DIR *d = opendir(run_dir);
    if (!d)
        return 0;
    int ours = 1;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0 &&
            strcmp(e->d_name, "havend.pid") != 0 && strcmp(e->d_name, "admin.sock") != 0)
            ours = 0;
    closedir(d);
    return ours;
}

/* After this, nothing havend does can use root again. RUN_DIR and what is
 * in it go to the user first, so the unprivileged daemon can still remove
 * its socket on exit (and later services can make theirs). */
static int drop_privileges(const char *user, const char *run_dir, const char *sock, int pidfd,
                           hv_err *err)
{
    errno = 0;
    struct passwd *pw = getpwnam(user);
    if (!pw)
        return errno ? hv_err_sys(err, "look up user '%s'", user)
                     : hv_err_set(err, -ENOENT, "user '%s' (config key user) does not exist", user);
    uid_t uid = pw->pw_uid;
    gid_t gid = pw->pw_gid;
    if (uid == 0)
        return hv_err_set(err, -EINVAL,
                          "user '%s' is uid 0: set 'user' to an unprivileged user or leave it empty",
                          user);
    if (chown(sock, uid, gid) < 0 || fchown(pidfd, uid, gid) < 0)
        return hv_err_sys(err, "hand %s/admin.sock and havend.pid to user %s", run_dir, user);
    if (!run_dir_is_ours(run_dir))
        log_warn("run_dir_shared path=%s reason=\"holds other files; not given to %s, so the "
                 "admin socket stays behind on exit\"", run_dir, user);
    else if (chown(run_dir, uid, gid) < 0)
        return hv_err_sys(err, "hand %s to user %s", run_dir, user);
    if (initgroups(user, gid) < 0)
        return hv_err_sys(err, "initgroups %s", user);
    if (setgid(gid) < 0)
        return hv_err_sys(err, "setgid %d", (int)gid);
    if (setuid(uid) < 0)
        return hv_err_sys(err, "setuid %d", (int)uid);
    if (setuid(0) == 0 || getuid() != uid || geteuid() != uid || getgid() != gid ||
        getegid() != gid)
        return hv_err_set(err, -EPERM, "dropping privileges to %s did not stick", user);
    return 0;
}

/* Keys read once at startup: a change needs a restart, and the operator
 * is told so instead of believing it took effect. */
static int restart_only(const char *key)
{
    size_t n = strlen(key);
    return strcmp(key, "run_dir") == 0 || strcmp(key, "user") == 0 ||
           strcmp(key, "listen") == 0 || strcmp(key, "http_listen") == 0 ||
           (n > 5 && strcmp(key + n - 5, "_port") == 0);
}

static void reload(havend *d)
{
    conf *nc;
    hv_err err = {0};
    if (conf_load(d->conf_path, &nc, &err) < 0) {
        log_error("reload_failed reason=\"%s\" kept=previous", err.msg);
        return;
    }
    enum log_level lvl;
    if (parse_level(conf_get(nc, "log_level"), &lvl) < 0) {
        log_error("reload_failed reason=\"log_level '%s' is not debug, info, warn or error\" "
                  "kept=previous", conf_get(nc, "log_level"));
        conf_free(nc);
        return;
    }
    buf changed;
    buf_init(&changed);
    for (int i = 0; conf_keys[i].name; i++) {
        const char *k = conf_keys[i].name;
        if (strcmp(conf_get(d->conf, k), conf_get(nc, k)) == 0)
            continue;
        buf_printf(&changed, "%s%s", changed.len ? "," : "", k);
        if (restart_only(k))
            log_warn("reload_pending key=%s reason=\"takes effect at the next start\"", k);
    }
    conf_free(d->conf);
    d->conf = nc;
    d->reloads++;
    log_init("havend", !d->foreground, lvl);
    log_info("reload config=%s changed=%s", d->conf_path,
             changed.len ? (const char *)changed.data : "none");
    buf_free(&changed);
}

int main(int argc, char **argv)
{
    havend d = {0};
    const char *env = getenv("HAVEN_CONF");
    const char *conf_arg = env && *env ? env : "haven.conf";

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--version") == 0) {
            printf("havend %s\n", HAVEN_VERSION);
            return 0;
        } else if (strcmp(a, "-f") == 0) {
            d.foreground = 1;
        } else if (strcmp(a, "-c") == 0 && i + 1 < argc) {
            conf_arg = argv[++i];
        } else if (strncmp(a, "-c", 2) == 0 && a[2]) {
            conf_arg = a + 2;
        } else {
            fprintf(stderr, "havend: %s '%s' (see 'havend --help')\n",
                    strcmp(a, "-c") == 0 ? "missing file after" : "unknown argument", a);
            return 2;
        }
    }

    /* Absolute, because a daemon runs from "/" and SIGHUP re-reads it. */
    if (!realpath(conf_arg, d.conf_path))
        start_fail("cannot read %s: %s (run 'haven init DIR' first or pass -c)", conf_arg,
                   strerror(errno));
    hv_err err = {0};
    if (conf_load(d.conf_path, &d.conf, &err) < 0)
        start_fail("%s", err.msg);
    enum log_level lvl;
    if (parse_level(conf_get(d.conf, "log_level"), &lvl) < 0)
        start_fail("%s: log_level '%s' is not debug, info, warn or error", d.conf_path,
                   conf_get(d.conf, "log_level"));

    if (!d.foreground)
        daemonize();
    log_init("havend", !d.foreground, lvl);
    d.pid = getpid();
    clock_gettime(CLOCK_MONOTONIC, &d.started);
    d.started_wall = time(NULL);

    /* Blocked except inside ppoll(), so a signal is never lost between
     * checking the flags and going to sleep; one arriving during startup
     * waits for the loop and then stops havend cleanly. */
    sigset_t blocked, waiting;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGINT);
    sigaddset(&blocked, SIGHUP);
    sigaddset(&blocked, SIGCHLD);
    sigprocmask(SIG_BLOCK, &blocked, &waiting);
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGCHLD, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    char run_dir[4096], pid_path[4200], sock_path[4200];
    conf_path(d.conf, "run_dir", run_dir, sizeof(run_dir));
    snprintf(pid_path, sizeof(pid_path), "%s/havend.pid", run_dir);
    snprintf(sock_path, sizeof(sock_path), "%s/admin.sock", run_dir);
    if (fs_mkdir_p(run_dir, 0750, &err) < 0)
        start_fail("%s", err.msg);
    int pidfd = -1;
    /* The lock comes before anything else in RUN_DIR is touched, so a
     * second havend refused here cannot disturb the first one's socket. */
    if (pidfile_lock(pid_path, &pidfd, &err) < 0)
        start_fail("%s", err.msg);
    havend_admin *admin;
    if (havend_admin_open(sock_path, &admin, &err) < 0)
        start_fail("%s", err.msg);

    /* Ports below 1024 need root: bind them all before dropping it. */
    if (havend_services_bind(&d, &err) < 0) {
        havend_admin_close(admin);
        start_fail("%s", err.msg);
    }

    const char *user = conf_get(d.conf, "user");
    if (*user && geteuid() == 0) {
        if (drop_privileges(user, run_dir, sock_path, pidfd, &err) < 0) {
            havend_admin_close(admin);
            start_fail("%s", err.msg);
        }
        log_info("privileges_dropped user=%s uid=%d gid=%d", user, (int)getuid(), (int)getgid());
    } else if (*user) {
        struct passwd *pw = getpwuid(geteuid());
        if (!pw || strcmp(pw->pw_name, user) != 0)
            log_warn("privileges_kept user=%s reason=\"not started as root; running as uid %d\"",
                     user, (int)geteuid());
    }

    log_info("start version=%s pid=%d config=%s mode=%s admin_socket=%s built=master,imap,smtp,lmtp,repl,proxy,http "
             "not_built=http_admin_api,status_page",
             HAVEN_VERSION, (int)d.pid, d.conf_path, d.foreground ? "foreground" : "daemon",
             sock_path);
    if (ready_fd >= 0) {
        char ok[32];
        int n = snprintf(ok, sizeof(ok), "ok %d", (int)d.pid);
        (void)!write(ready_fd, ok, (size_t)n);
        close(ready_fd);
        ready_fd = -1;
    }

    /* After the readiness note: a service child must not hold the pipe the
     * starting command waits on. */
    havend_services_start(&d);
    int rc = 0;
    while (!stop_signal) {
        /* SIGCHLD only interrupts ppoll: reap and restart here, each turn. */
        havend_services_reap(&d, 0);
        if (reload_requested) {
            reload_requested = 0;
            reload(&d);
        }
        struct pollfd fds[HAVEND_ADMIN_MAX_FDS];
        size_t n = havend_admin_pollfds(admin, fds, HAVEND_ADMIN_MAX_FDS);
        int ms = havend_admin_timeout(admin);
        int sms = havend_services_timeout();
        if (sms >= 0 && (ms < 0 || sms < ms))
            ms = sms;
        struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
        int r = ppoll(fds, n, ms < 0 ? NULL : &ts, &waiting);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            log_error("poll_failed reason=\"%s\"", strerror(errno));
            rc = 1;
            break;
        }
        havend_admin_handle(admin, fds, n, &d);
    }
    havend_services_stop();

    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    havend_admin_close(admin);
    if (ftruncate(pidfd, 0) < 0)
        log_warn("pidfile_left path=%s reason=\"%s\"", pid_path, strerror(errno));
    close(pidfd);
    log_info("stop signal=SIG%s uptime=%llds", stop_signal ? sigabbrev_np(stop_signal) : "NONE",
             (long long)(now.tv_sec - d.started.tv_sec));
    conf_free(d.conf);
    return rc;
}
