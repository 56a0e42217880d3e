/*
 * repl.c - the repl service process: configuration, TLS contexts, the
 * control socket, and the helpers both sides share (repl.h).
 *
 * SECURITY: the replication port is open to the network; a peer gets past
 * the handshake only with the shared secret (repl_secret_file) and, when
 * repl_tls_ca is set, a certificate signed by that CA as well. The control
 * socket is mode 0600 in RUN_DIR, like the admin socket; its input is
 * still bounded (one line of at most 512 bytes, 10 s to send it).
 */
#include "repl/repl.h"

#include <dirent.h>
#include <netdb.h>
#include <errno.h>
#include <openssl/err.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "dir/dir.h"
#include "lib/crc32c.h"
#include "lib/fsutil.h"
#include "lib/log.h"
#include "lib/tls.h"
#include "repl/repl_internal.h"

int repl_configured(const conf *c)
{
    return conf_get_int(c, "repl_port") > 0 || *conf_get(c, "repl_primary");
}

void repl_control_path(const conf *c, char *out, size_t len)
{
    char run[4096];
    conf_path(c, "run_dir", run, sizeof(run));
    snprintf(out, len, "%s/repl.sock", run);
}

void repl_wait_path(const conf *c, char *out, size_t len)
{
    char run[4096];
    conf_path(c, "run_dir", run, sizeof(run));
    snprintf(out, len, "%s/repl-wait.sock", run);
}

/* ---- shared helpers ---- */

typedef struct crc_find {
    uint64_t modseq;
    uint32_t crc;
    int found;
} crc_find;

static int crc_find_cb(void *ctx, const store_record *r)
{
    crc_find *f = ctx;
    if (r->modseq == f->modseq) {
        f->crc = le32(r->raw + 4);
        f->found = 1;
    }
    return 1;
}

int repl_record_crc(store_account *st, uint64_t modseq, uint32_t *crc, hv_err *err)
{
    *crc = 0;
    if (modseq == 0)
        return 0;
    crc_find f = {.modseq = modseq};
    int rc = store_changes_since(st, modseq - 1, crc_find_cb, &f, err);
    if (rc < 0)
        return rc;
    if (!f.found)
        return hv_err_set(err, -ENOENT, "account %s: no record with modseq %llu",
                          store_name(st), (unsigned long long)modseq);
    *crc = f.crc;
    return 0;
}

void repl_scan_accounts(const char *data_dir, repl_account_cb cb, void *ctx)
{
    char top[4200];
    snprintf(top, sizeof(top), "%s/accounts", data_dir);
    DIR *d = opendir(top);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char dom[4500];
        snprintf(dom, sizeof(dom), "%s/%s", top, e->d_name);
        DIR *d2 = opendir(dom);
        if (!d2)
            continue;
        struct dirent *u;
        while ((u = readdir(d2))) {
            if (u->d_name[0] == '.')
                continue;
            char name[600], folder[4800];
            snprintf(name, sizeof(name), "%s@%s", u->d_name, e->d_name);
            if (strlen(name) > REPL_ACCOUNT_MAX)
                continue;
            snprintf(folder, sizeof(folder), "%s/%s", dom, u->d_name);
            cb(ctx, name, folder);
        }
        closedir(d2);
    }
    closedir(d);
}

/* ---- configuration ---- */

static int load_secret(const conf *c, repl_cfg *cfg, hv_err *err)
{
    char path[4096];
    if (!*conf_get(c, "repl_secret_file"))
        return hv_err_set(err, -EINVAL, "replication needs repl_secret_file: a file (mode 0600) "
                          "holding the secret primary and replicas share");
    conf_path(c, "repl_secret_file", path, sizeof(path));
    struct stat st;
    if (stat(path, &st) < 0)
        return hv_err_sys(err, "repl_secret_file %s", path);
    if (st.st_mode & 077)
        return hv_err_set(err, -EPERM, "repl_secret_file %s is readable by others (mode %o); "
                          "chmod 600 it", path, (unsigned)(st.st_mode & 0777));
    char *text;
    size_t len;
    int rc = fs_read_file(path, &text, &len, err);
    if (rc < 0)
        return rc;
    while (len && (text[len - 1] == '\n' || text[len - 1] == '\r' || text[len - 1] == ' '))
        len--;
    if (len < 16 || len > sizeof(cfg->secret)) {
        free(text);
        return hv_err_set(err, -EINVAL, "repl_secret_file %s must hold 16 to %zu bytes "
                          "(e.g. openssl rand -hex 32)", path, sizeof(cfg->secret));
    }
    memcpy(cfg->secret, text, len);
    cfg->secret_len = len;
    memset(text, 0, len);
    free(text);
    return 0;
}

static int ssl_fail(hv_err *err, const char *what)
{
    char e[256];
    ERR_error_string_n(ERR_get_error(), e, sizeof(e));
    return hv_err_set(err, -EINVAL, "TLS: %s: %s", what, e);
}

static int make_contexts(const conf *c, repl_cfg *cfg, hv_err *err)
{
    char ca[4096] = "", cert[4096], key[4096];
    if (*conf_get(c, "repl_tls_ca"))
        conf_path(c, "repl_tls_ca", ca, sizeof(ca));
    conf_path(c, "tls_cert", cert, sizeof(cert));
    conf_path(c, "tls_key", key, sizeof(key));
    cfg->server_ssl = tls_server_context(c, err);
    if (!cfg->server_ssl)
        return -EINVAL;
    cfg->client_ssl = SSL_CTX_new(TLS_client_method());
    if (!cfg->client_ssl)
        return ssl_fail(err, "cannot create a client context");
    SSL_CTX_set_min_proto_version(cfg->client_ssl, TLS1_2_VERSION);
    SSL_CTX_set_options(cfg->client_ssl, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    if (*ca) {
        /* Certificates as well as the secret: each side shows the
         * instance's certificate and checks the other's against the CA. */
        if (SSL_CTX_load_verify_locations(cfg->server_ssl, ca, NULL) != 1 ||
            SSL_CTX_load_verify_locations(cfg->client_ssl, ca, NULL) != 1)
            return ssl_fail(err, ca);
        SSL_CTX_set_verify(cfg->server_ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                           NULL);
        SSL_CTX_set_verify(cfg->client_ssl, SSL_VERIFY_PEER, NULL);
        if (SSL_CTX_use_certificate_chain_file(cfg->client_ssl, cert) != 1 ||
            SSL_CTX_use_PrivateKey_file(cfg->client_ssl, key, SSL_FILETYPE_PEM) != 1)
            return ssl_fail(err, cert);
    } else {
        /* The handshake's proof of the secret is bound to this TLS
         * session, so a man in the middle gains nothing from an
         * unverified certificate. */
        SSL_CTX_set_verify(cfg->client_ssl, SSL_VERIFY_NONE, NULL);
    }
    return 0;
}

static int load_cfg(const conf *c, repl_cfg *cfg, hv_err *err)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->c = c;
    conf_path(c, "data_dir", cfg->data_dir, sizeof(cfg->data_dir));
    snprintf(cfg->store_name, sizeof(cfg->store_name), "%s", conf_get(c, "store_name"));
    long long w = conf_get_int(c, "repl_workers");
    cfg->workers = w < 1 ? 1 : w > 64 ? 64 : (unsigned)w;
    long long rate = conf_get_int(c, "repl_max_bytes_per_second");
    cfg->rate = rate > 0 ? (uint64_t)rate : 0;
    long long win = conf_get_int(c, "repl_window");
    cfg->window = win < (4 << 20) ? (4u << 20) : (uint64_t)win;
    cfg->sopt = (store_options){
        .segment_size = (uint64_t)conf_get_int(c, "store_segment_size"),
        .checkpoint_records = (uint32_t)conf_get_int(c, "store_checkpoint_records"),
        .max_message_size = (uint64_t)conf_get_int(c, "store_max_message_size"),
    };
    const char *mode = conf_get(c, "repl_mode"), *pol = conf_get(c, "repl_sync_on_timeout");
    if (strcmp(mode, "sync") != 0 && strcmp(mode, "async") != 0)
        return hv_err_set(err, -EINVAL, "repl_mode '%s' is not async or sync", mode);
    if (strcmp(pol, "async") != 0 && strcmp(pol, "refuse") != 0)
        return hv_err_set(err, -EINVAL, "repl_sync_on_timeout '%s' is not async or refuse", pol);
    cfg->sync = strcmp(mode, "sync") == 0;
    cfg->sync_refuse = strcmp(pol, "refuse") == 0;
    long long k = conf_get_int(c, "repl_sync_replicas");
    cfg->sync_k = k < 1 ? 1 : k > 8 ? 8 : (unsigned)k;
    long long to = conf_get_int(c, "repl_sync_timeout_ms");
    cfg->sync_timeout_ms = to < 1 ? 1 : to > 3600000 ? 3600000 : (int)to;
    const char *pri = conf_get(c, "repl_primary");
    if (*pri) {
        const char *colon = strrchr(pri, ':');
        if (!colon || colon == pri || !colon[1] || (size_t)(colon - pri) >= sizeof(cfg->primary_host) ||
            strlen(colon + 1) >= sizeof(cfg->primary_port))
            return hv_err_set(err, -EINVAL, "repl_primary '%s' is not HOST:PORT", pri);
        const char *h = pri;
        size_t hl = (size_t)(colon - pri);
        if (h[0] == '[' && hl > 2 && h[hl - 1] == ']') {
            h++;
            hl -= 2;
        }
        memcpy(cfg->primary_host, h, hl);
        cfg->primary_host[hl] = 0;
        snprintf(cfg->primary_port, sizeof(cfg->primary_port), "%s", colon + 1);
    }
    int rc = load_secret(c, cfg, err);
    if (rc == 0)
        rc = make_contexts(c, cfg, err);
    return rc;
}

int repl_load_cfg(const conf *c, repl_cfg *cfg, hv_err *err) { return load_cfg(c, cfg, err); }

void repl_cfg_free(repl_cfg *cfg)
{
    if (cfg->server_ssl)
        SSL_CTX_free(cfg->server_ssl);
    if (cfg->client_ssl)
        SSL_CTX_free(cfg->client_ssl);
    cfg->server_ssl = cfg->client_ssl = NULL;
    memset(cfg->secret, 0, sizeof(cfg->secret));
}

/* ---- roles, epochs, fencing ----
 *
 * DATA/repl-state says which role this node plays and at which epoch:
 *
 *     haven-repl-state 1
 *     role primary|replica
 *     epoch N
 *     crc XXXXXXXX        (CRC32C, hex, of the lines above)
 *
 * It is written atomically (temp file, fsync, rename, folder fsync) at
 * every role change; without it the config decides (repl_primary set:
 * replica) at epoch 0, or the directory's epoch of the store when higher.
 * A replica keeps DATA/fence in place, so no process of this instance
 * writes to its stores except the replication itself. */

static void state_path(const repl_cfg *cfg, char *out, size_t len)
{
    snprintf(out, len, "%s/repl-state", cfg->data_dir);
}

static int state_read(const repl_cfg *cfg, int *role, uint64_t *epoch, hv_err *err)
{
    char path[4300], *text;
    size_t len;
    state_path(cfg, path, sizeof(path));
    int rc = fs_read_file(path, &text, &len, err);
    if (rc < 0)
        return rc;
    char r[16] = "";
    unsigned long long e = 0;
    unsigned crc = 0;
    const char *c = len < 4096 ? strstr(text, "crc ") : NULL;
    rc = -EUCLEAN;
    if (c && sscanf(text, "haven-repl-state 1\nrole %15s\nepoch %llu\n", r, &e) == 2 &&
        sscanf(c, "crc %8x", &crc) == 1 &&
        crc32c(0, text, (size_t)(c - text)) == crc &&
        (strcmp(r, "primary") == 0 || strcmp(r, "replica") == 0)) {
        *role = strcmp(r, "primary") == 0 ? REPL_ROLE_PRIMARY : REPL_ROLE_REPLICA;
        *epoch = e;
        rc = 0;
    } else {
        hv_err_set(err, rc, "%s is damaged (bad format or CRC); fix or remove it", path);
    }
    free(text);
    return rc;
}

static int state_write(const repl_cfg *cfg, int role, uint64_t epoch, hv_err *err)
{
    char path[4300], text[200];
    state_path(cfg, path, sizeof(path));
    int n = snprintf(text, sizeof(text), "haven-repl-state 1\nrole %s\nepoch %llu\n",
                     role == REPL_ROLE_PRIMARY ? "primary" : "replica",
                     (unsigned long long)epoch);
    snprintf(text + n, sizeof(text) - (size_t)n, "crc %08x\n", crc32c(0, text, (size_t)n));
    return fs_write_file_atomic(path, text, strlen(text), 0600, err);
}

static int fence_write(const repl_cfg *cfg, const char *why, hv_err *err)
{
    char line[400];
    snprintf(line, sizeof(line), "%s\n", why);
    return fs_write_file_atomic(cfg->fence_path, line, strlen(line), 0644, err);
}

static int fence_remove(const repl_cfg *cfg, hv_err *err)
{
    if (unlink(cfg->fence_path) < 0 && errno != ENOENT)
        return hv_err_sys(err, "remove %s", cfg->fence_path);
    char folder[4096];
    snprintf(folder, sizeof(folder), "%s", cfg->data_dir);
    return fs_fsync_dir(folder, err);
}

/* The store's epoch in this node's directory (0 when it is not there). */
static uint64_t dir_epoch(const repl_cfg *cfg)
{
    dir *d;
    hv_err err = {0};
    dir_store st;
    uint64_t e = 0;
    if (dir_open_conf(cfg->c, &d, &err) < 0)
        return 0;
    if (dir_store_get(d, cfg->store_name, &st, &err) == 0)
        e = st.epoch;
    dir_close(d);
    return e;
}

/* Decides the role at start (and after each role change). */
static int load_role(repl_cfg *cfg, hv_err *err)
{
    int role = cfg->primary_host[0] ? REPL_ROLE_REPLICA : REPL_ROLE_PRIMARY;
    uint64_t epoch = 0;
    hv_err e2 = {0};
    int rc = state_read(cfg, &role, &epoch, &e2);
    if (rc < 0 && rc != -ENOENT)
        return hv_err_set(err, rc, "%s", e2.msg);
    uint64_t de = dir_epoch(cfg);
    if (role == REPL_ROLE_PRIMARY && de > epoch) {
        /* The directory (shared by the nodes when it is PostgreSQL) says
         * the store was promoted elsewhere: this node cannot confirm it is
         * the primary, so it writes nothing. */
        char why[200];
        snprintf(why, sizeof(why), "fenced: store %s promoted elsewhere at epoch %llu",
                 cfg->store_name, (unsigned long long)de);
        if ((rc = fence_write(cfg, why, err)) < 0 ||
            (rc = state_write(cfg, REPL_ROLE_REPLICA, de, err)) < 0)
            return rc;
        log_error("repl: fenced store=%s epoch=%llu directory_epoch=%llu reason=\"%s\"",
                  cfg->store_name, (unsigned long long)epoch, (unsigned long long)de, why);
        role = REPL_ROLE_REPLICA;
    }
    if (de > epoch)
        epoch = de;
    cfg->role = role;
    cfg->epoch = epoch;
    if (role == REPL_ROLE_REPLICA) {
        char why[200];
        snprintf(why, sizeof(why), "replica of store %s (epoch %llu): writes go to the primary",
                 cfg->store_name, (unsigned long long)epoch);
        char cur[256] = "";
        if (store_fenced(cur, sizeof(cur)) && strncmp(cur, "fenced:", 7) == 0)
            snprintf(why, sizeof(why), "%s", cur); /* keep the more telling reason */
        if ((rc = fence_write(cfg, why, err)) < 0)
            return rc;
    } else {
        char cur[256] = "";
        if (store_fenced(cur, sizeof(cur)))
            log_warn("repl: primary is fenced store=%s reason=\"%s\" action=\"writes refused "
                     "until haven promote %s\"", cfg->store_name, cur, cfg->store_name);
    }
    return 0;
}

void repl_demote(repl_cfg *cfg, uint64_t epoch, const char *why)
{
    hv_err err = {0};
    /* Fence first: from this moment no process writes here. */
    int rc = fence_write(cfg, why, &err);
    if (rc == 0)
        rc = state_write(cfg, REPL_ROLE_REPLICA, epoch, &err);
    if (rc < 0) {
        log_error("repl: demote_failed store=%s reason=\"%s\"", cfg->store_name, err.msg);
        return;
    }
    log_error("repl: demoted store=%s old_epoch=%llu epoch=%llu reason=\"%s\"", cfg->store_name,
              (unsigned long long)cfg->epoch, (unsigned long long)epoch, why);
    repl_request_restart();
}

int repl_take_primary(repl_cfg *cfg, uint64_t epoch, hv_err *err)
{
    dir *d;
    int rc = dir_open_conf(cfg->c, &d, err);
    if (rc < 0)
        return rc;
    dir_store st;
    hv_err e2 = {0};
    if (dir_store_get(d, cfg->store_name, &st, &e2) == -ENOENT) {
        char addr[300];
        snprintf(addr, sizeof(addr), "%s", conf_get(cfg->c, "hostname"));
        if (!*addr)
            snprintf(addr, sizeof(addr), "localhost");
        rc = dir_store_add(d, cfg->store_name, addr, DIR_ROLE_PRIMARY, err);
        if (rc == 0)
            st.epoch = 0;
    } else if ((rc = dir_store_get(d, cfg->store_name, &st, err)) < 0) {
        dir_close(d);
        return rc;
    }
    if (rc == 0 && st.epoch >= epoch)
        rc = hv_err_set(err, -ESTALE, "store %s is at epoch %llu in the directory already: "
                        "promoted elsewhere?", cfg->store_name, (unsigned long long)st.epoch);
    if (rc == 0)
        rc = dir_store_set_epoch(d, cfg->store_name, epoch, err);
    if (rc == 0)
        rc = dir_store_set_role(d, cfg->store_name, DIR_ROLE_PRIMARY, err);
    dir_close(d);
    if (rc == 0)
        rc = state_write(cfg, REPL_ROLE_PRIMARY, epoch, err);
    if (rc == 0)
        rc = fence_remove(cfg, err);
    if (rc == 0)
        log_warn("repl: promoted store=%s epoch=%llu", cfg->store_name,
                 (unsigned long long)epoch);
    return rc;
}

int repl_fence(repl_cfg *cfg, const char *why, hv_err *err) { return fence_write(cfg, why, err); }
int repl_unfence(repl_cfg *cfg, hv_err *err) { return fence_remove(cfg, err); }

void repl_request_restart(void)
{
    kill(getpid(), SIGUSR1);
}

int repl_resolve_link(repl_cfg *cfg, repl_link *l)
{
    int me = cfg->role, peer = repl_link_peer_role(l);
    uint64_t mine = cfg->epoch, theirs = repl_link_peer_epoch(l);
    const char *addr = repl_link_peer_addr(l);
    char why[200];
    if (me == REPL_ROLE_PRIMARY && theirs > mine) {
        snprintf(why, sizeof(why), "fenced: store %s promoted elsewhere at epoch %llu (peer %s)",
                 cfg->store_name, (unsigned long long)theirs, addr);
        repl_demote(cfg, theirs, why);
        return -1;
    }
    if (me == peer) {
        if (me == REPL_ROLE_PRIMARY && theirs == mine)
            log_error("repl: split_brain store=%s peer=%s epoch=%llu action=\"both are primary "
                      "at one epoch; run haven promote %s on the node to keep\"",
                      cfg->store_name, addr, (unsigned long long)mine, cfg->store_name);
        else if (me == REPL_ROLE_PRIMARY)
            log_warn("repl: stale_primary peer=%s peer_epoch=%llu epoch=%llu action=\"it steps "
                     "down\"", addr, (unsigned long long)theirs, (unsigned long long)mine);
        else
            log_warn("repl: peer=%s is a replica too; waiting for a primary", addr);
        return -1;
    }
    if (me == REPL_ROLE_REPLICA && theirs < mine) {
        log_warn("repl: stale_primary peer=%s peer_epoch=%llu epoch=%llu action=\"refused; it "
                 "steps down\"", addr, (unsigned long long)theirs, (unsigned long long)mine);
        return -1;
    }
    if (me == REPL_ROLE_REPLICA && theirs > mine) {
        hv_err err = {0};
        if (state_write(cfg, REPL_ROLE_REPLICA, theirs, &err) == 0)
            cfg->epoch = theirs;
    }
    return 0;
}

int repl_dial(repl_cfg *cfg, int *fd_out, hv_err *err)
{
    struct addrinfo hints = {0}, *res, *ai;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(cfg->primary_host, cfg->primary_port, &hints, &res);
    if (rc != 0)
        return hv_err_set(err, -EHOSTUNREACH, "peer %s:%s: %s", cfg->primary_host,
                          cfg->primary_port, gai_strerror(rc));
    int fd = -1;
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        struct timeval tv = {10, 0};
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return hv_err_sys(err, "connect to %s:%s", cfg->primary_host, cfg->primary_port);
    *fd_out = fd;
    return 0;
}

void repl_link_options(repl_cfg *cfg, int is_server, repl_link_opts *o)
{
    *o = (repl_link_opts){
        .ssl = is_server ? cfg->server_ssl : cfg->client_ssl,
        .is_server = is_server,
        .role = (enum repl_role)cfg->role,
        .secret = cfg->secret,
        .secret_len = cfg->secret_len,
        .store = cfg->store_name,
        .rate_bytes_per_s = cfg->rate,
        .handshake_ms = 10000,
        .epoch = cfg->epoch,
    };
}

/* ---- control socket ---- */

static struct {
    int fd, wait_fd;
    char wait_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int waiters;
    pthread_mutex_t wmu;
    int is_primary;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    volatile int stopping;
    repl_cfg *cfg;
    int restart_after; /* a promotion answered: restart in the new role */
    pthread_mutex_t role_mu; /* one promotion at a time; role switches */
} ctl;

/* `haven promote`: with the primary reachable, a switchover (it fences
 * itself, drains to us, hands over); without it, a failover at once. */
static void promote(buf *o)
{
    repl_cfg *cfg = ctl.cfg;
    pthread_mutex_lock(&ctl.role_mu);
    if (ctl.is_primary) {
        buf_printf(o, "error: store %s is the primary here already (epoch %llu)\n",
                   cfg->store_name, (unsigned long long)cfg->epoch);
        pthread_mutex_unlock(&ctl.role_mu);
        return;
    }
    uint64_t pe = repl_replica_peer_epoch();
    uint64_t e = (pe > cfg->epoch ? pe : cfg->epoch) + 1;
    hv_err err = {0};
    const char *mode = "switchover";
    log_warn("repl: promote store=%s epoch=%llu", cfg->store_name, (unsigned long long)e);
    int rc = repl_replica_switchover(e, &err);
    if (rc == -ENOTCONN) {
        mode = "failover";
        log_warn("repl: promote store=%s mode=failover reason=\"%s\"", cfg->store_name, err.msg);
        rc = 0;
    }
    if (rc == 0)
        rc = repl_take_primary(cfg, e, &err);
    if (rc < 0) {
        buf_printf(o, "error: %s\n", err.msg);
    } else {
        buf_printf(o, "promoted store=%s epoch=%llu mode=%s\n", cfg->store_name,
                   (unsigned long long)e, mode);
        ctl.restart_after = 1;
    }
    pthread_mutex_unlock(&ctl.role_mu);
}

static void serve_one(int fd)
{
    char line[513];
    size_t n = 0;
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    while (n < sizeof(line) - 1) {
        ssize_t r = read(fd, line + n, sizeof(line) - 1 - n);
        if (r <= 0)
            return;
        n += (size_t)r;
        if (memchr(line, '\n', n))
            break;
    }
    line[n] = 0;
    char *nl = strchr(line, '\n');
    if (!nl) {
        static const char msg[] = "error: line too long\n.\n";
        (void)!write(fd, msg, sizeof(msg) - 1);
        return;
    }
    *nl = 0;
    if (nl > line && nl[-1] == '\r')
        nl[-1] = 0;
    buf o;
    buf_init(&o);
    char arg[300] = "";
    if (strcmp(line, "status") == 0) {
        if (ctl.is_primary)
            repl_primary_status(&o);
        else
            repl_replica_status(&o);
    } else if (strcmp(line, "replcheck") == 0 || sscanf(line, "replcheck %299s", arg) == 1) {
        if (!ctl.is_primary) {
            buf_printf(&o, "error: this node is a replica; run replcheck on the primary\n");
        } else {
            hv_err err = {0};
            int rc = repl_primary_replcheck(*arg ? arg : NULL, &o, &err);
            if (rc < 0)
                buf_printf(&o, "error: %s\n", err.msg);
        }
    } else if (strcmp(line, "metrics") == 0) {
        if (ctl.is_primary)
            repl_primary_metrics(&o);
        else
            repl_replica_metrics(&o);
    } else if (strcmp(line, "promote") == 0) {
        promote(&o);
    } else if (strcmp(line, "role") == 0) {
        buf_printf(&o, "role: %s\nepoch: %llu\n", ctl.is_primary ? "primary" : "replica",
                   (unsigned long long)ctl.cfg->epoch);
    } else {
        buf_printf(&o, "error: unknown command (status, replcheck [ACCOUNT], promote, role)\n");
    }
    buf_append_str(&o, ".\n");
    fs_write_full(fd, o.data, o.len);
    buf_free(&o);
}

static void *ctl_main(void *arg)
{
    (void)arg;
    while (!ctl.stopping) {
        struct pollfd p = {.fd = ctl.fd, .events = POLLIN};
        if (poll(&p, 1, 500) <= 0)
            continue;
        int fd = accept4(ctl.fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        serve_one(fd);
        close(fd);
        if (ctl.restart_after) {
            ctl.restart_after = 0;
            repl_request_restart();
        }
    }
    return NULL;
}

/* ---- the wait socket: writers in sync mode ----
 *
 * RUN_DIR/repl-wait.sock (0600). A writer (imap, lmtp) keeps a connection
 * and, after each committed write, sends "wait ACCOUNT MODSEQ"; the answer
 * is "ok", "degraded REASON" (the store runs async now; the write stands)
 * or "refused REASON". One thread per connection: writers are few (their
 * worker threads), and each waits for its own write only. */

#define WAITERS_MAX 256

static void *waiter_main(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char line[400];
    size_t n = 0;
    for (;;) {
        char *nl = memchr(line, '\n', n);
        if (!nl) {
            if (n == sizeof(line))
                break; /* no line fits: a confused client */
            ssize_t r = read(fd, line + n, sizeof(line) - n);
            if (r <= 0)
                break;
            n += (size_t)r;
            continue;
        }
        *nl = 0;
        char acct[REPL_ACCOUNT_MAX + 2];
        unsigned long long modseq;
        char reply[300], why[240] = "";
        if (sscanf(line, "wait %255s %llu", acct, &modseq) != 2 || strlen(acct) > REPL_ACCOUNT_MAX) {
            snprintf(reply, sizeof(reply), "refused bad request (wait ACCOUNT MODSEQ)\n");
        } else if (!ctl.is_primary) {
            snprintf(reply, sizeof(reply), "refused this node is a replica\n");
        } else {
            int rc = repl_primary_wait(acct, modseq, why, sizeof(why));
            snprintf(reply, sizeof(reply), "%s%s%s\n",
                     rc == 0 ? "ok" : rc > 0 ? "degraded" : "refused", rc ? " " : "",
                     rc ? why : "");
        }
        if (fs_write_full(fd, reply, strlen(reply)) < 0)
            break;
        size_t used = (size_t)(nl - line) + 1;
        memmove(line, line + used, n - used);
        n -= used;
    }
    close(fd);
    pthread_mutex_lock(&ctl.wmu);
    ctl.waiters--;
    pthread_mutex_unlock(&ctl.wmu);
    return NULL;
}

static void *wait_accept_main(void *arg)
{
    (void)arg;
    while (!ctl.stopping) {
        struct pollfd p = {.fd = ctl.wait_fd, .events = POLLIN};
        if (poll(&p, 1, 500) <= 0)
            continue;
        int fd = accept4(ctl.wait_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        pthread_mutex_lock(&ctl.wmu);
        int full = ctl.waiters >= WAITERS_MAX;
        if (!full)
            ctl.waiters++;
        pthread_mutex_unlock(&ctl.wmu);
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        if (full || pthread_create(&t, &at, waiter_main, (void *)(intptr_t)fd) != 0) {
            static const char busy[] = "refused too many waiting writers\n";
            (void)!write(fd, busy, sizeof(busy) - 1);
            close(fd);
            if (!full) {
                pthread_mutex_lock(&ctl.wmu);
                ctl.waiters--;
                pthread_mutex_unlock(&ctl.wmu);
            }
        }
        pthread_attr_destroy(&at);
    }
    return NULL;
}

static int unix_listen(const char *path, int *fd_out, hv_err *err)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path) - 1)
        return hv_err_set(err, -ENAMETOOLONG, "socket path %s is too long", path);
    strcpy(sa.sun_path, path);
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return hv_err_sys(err, "socket");
    mode_t old = umask(0177);
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old);
    if (rc < 0 || listen(fd, 64) < 0) {
        rc = hv_err_sys(err, "socket %s", path);
        close(fd);
        return rc;
    }
    *fd_out = fd;
    return 0;
}

static int ctl_open(const conf *c, hv_err *err)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    repl_control_path(c, ctl.path, sizeof(ctl.path));
    if (strlen(ctl.path) >= sizeof(sa.sun_path) - 1)
        return hv_err_set(err, -ENAMETOOLONG, "control socket path %s is too long", ctl.path);
    strcpy(sa.sun_path, ctl.path);
    unlink(ctl.path);
    ctl.fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (ctl.fd < 0)
        return hv_err_sys(err, "socket");
    mode_t old = umask(0177);
    int rc = bind(ctl.fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old);
    if (rc < 0 || listen(ctl.fd, 8) < 0) {
        rc = hv_err_sys(err, "control socket %s", ctl.path);
        close(ctl.fd);
        return rc;
    }
    return 0;
}

static int start_role(repl_cfg *cfg, hv_err *err)
{
    int rc = load_role(cfg, err);
    if (rc < 0)
        return rc;
    ctl.is_primary = cfg->role == REPL_ROLE_PRIMARY;
    log_info("repl: role=%s store=%s epoch=%llu", ctl.is_primary ? "primary" : "replica",
             cfg->store_name, (unsigned long long)cfg->epoch);
    return ctl.is_primary ? repl_primary_start(cfg, cfg->fd_listen, err)
                          : repl_replica_start(cfg, err);
}

static void stop_role(void)
{
    if (ctl.is_primary)
        repl_primary_stop();
    else
        repl_replica_stop();
}

int repl_service_run(const conf *c, int fd_listen, hv_err *err)
{
    static repl_cfg cfg;
    int rc = load_cfg(c, &cfg, err);
    if (rc < 0)
        return rc;
    cfg.fd_listen = fd_listen;
    snprintf(cfg.fence_path, sizeof(cfg.fence_path), "%s/fence", cfg.data_dir);
    store_set_fence(cfg.fence_path);
    if (!cfg.primary_host[0] && fd_listen < 0)
        return hv_err_set(err, -EINVAL, "replication: set repl_port (primary) or repl_primary "
                          "(replica)");
    signal(SIGPIPE, SIG_IGN);
    /* Every thread inherits the mask; only sigwait below takes them.
     * SIGUSR1 is a role change (promotion, demotion): restart in it. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    ctl.cfg = &cfg;
    pthread_mutex_init(&ctl.role_mu, NULL);
    if ((rc = ctl_open(c, err)) < 0)
        return rc;
    rc = start_role(&cfg, err);
    if (rc < 0) {
        close(ctl.fd);
        unlink(ctl.path);
        return rc;
    }
    pthread_t ct, wt;
    pthread_create(&ct, NULL, ctl_main, NULL);
    pthread_mutex_init(&ctl.wmu, NULL);
    repl_wait_path(c, ctl.wait_path, sizeof(ctl.wait_path));
    if ((rc = unix_listen(ctl.wait_path, &ctl.wait_fd, err)) < 0) {
        ctl.stopping = 1;
        pthread_join(ct, NULL);
        return rc;
    }
    pthread_create(&wt, NULL, wait_accept_main, NULL);
    int sig = 0;
    for (;;) {
        sigwait(&set, &sig);
        if (sig != SIGUSR1)
            break;
        pthread_mutex_lock(&ctl.role_mu);
        log_info("repl: role_change store=%s", cfg.store_name);
        stop_role();
        rc = start_role(&cfg, err);
        pthread_mutex_unlock(&ctl.role_mu);
        if (rc < 0) {
            log_error("repl: role_change_failed reason=\"%s\"", err->msg);
            sig = 0;
            break;
        }
    }
    log_info("repl: signal=%d stopping", sig);
    ctl.stopping = 1;
    pthread_join(ct, NULL);
    pthread_join(wt, NULL);
    close(ctl.fd);
    unlink(ctl.path);
    close(ctl.wait_fd);
    unlink(ctl.wait_path);
    if (rc >= 0)
        stop_role();
    return rc < 0 ? rc : 0;
}
