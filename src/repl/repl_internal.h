/*
 * repl_internal.h - what the files of the repl service share.
 *
 * repl.c owns the process (config, TLS contexts, the control socket) and
 * hands over to repl_primary.c or repl_replica.c. Each side keeps its
 * state behind one mutex; slow work (store reads, fsyncs, network waits)
 * happens outside it on worker threads.
 */
#ifndef HV_REPL_INTERNAL_H
#define HV_REPL_INTERNAL_H

#include <openssl/ssl.h>
#include <stdint.h>

#include "lib/buf.h"
#include "lib/conf.h"
#include "repl/repl_link.h"
#include "store/store.h"

typedef struct repl_cfg {
    const conf *c;
    char data_dir[4096];
    char store_name[REPL_STORE_NAME_MAX + 1];
    uint8_t secret[256];
    size_t secret_len;
    SSL_CTX *server_ssl, *client_ssl;
    unsigned workers;
    uint64_t rate;          /* bytes/s, 0 unlimited */
    uint64_t window;        /* unacked bytes per replica link */
    char primary_host[256];
    char primary_port[16];
    store_options sopt;
    int sync;               /* repl_mode = sync */
    unsigned sync_k;        /* repl_sync_replicas */
    int sync_timeout_ms;
    int sync_refuse;        /* repl_sync_on_timeout = refuse */
    /* Roles (docs/replication.md, "Promotion and fencing"): the role this
     * node plays now and its epoch come from DATA/repl-state when that
     * exists, else from the config (repl_primary set: replica). Who dials
     * whom does not change with the role: a node with repl_primary dials
     * that address, a node with repl_port accepts. */
    int role;               /* enum repl_role */
    uint64_t epoch;
    int fd_listen;          /* -1 when repl_port is not set */
    char fence_path[4200];
} repl_cfg;

/* The replication settings of c (secret, TLS contexts, limits), for the
 * service and for `haven move`, which dials a store's repl service as a
 * mover. repl_cfg_free releases the contexts. */
int repl_load_cfg(const conf *c, repl_cfg *cfg, hv_err *err);
void repl_cfg_free(repl_cfg *cfg);

/* Account moves, target side (repl_move.c): a link whose peer said it is a
 * mover gets its own thread that applies the one account it streams. */
void repl_move_target_start(repl_cfg *cfg, repl_link *l);

/* Role changes (repl.c). After one, the service restarts itself in its
 * new role (it returns and havend starts it again). */
/* Writes DATA/fence (why) and DATA/repl-state (replica at epoch), durably,
 * then asks the service to restart. */
void repl_demote(repl_cfg *cfg, uint64_t epoch, const char *why);
/* Takes the primary role at epoch: directory epoch and role, state file,
 * fence removed. The caller then asks for the restart. */
int repl_take_primary(repl_cfg *cfg, uint64_t epoch, hv_err *err);
void repl_request_restart(void);
/* Writes DATA/fence (every process of the instance stops writing) or
 * removes it. */
int repl_fence(repl_cfg *cfg, const char *why, hv_err *err);
int repl_unfence(repl_cfg *cfg, hv_err *err);
/* After a handshake: 0 when this link may be used in our role, -1 when it
 * must be closed (a stale primary on either side: the stale one steps
 * down by itself; two primaries at one epoch; two replicas). */
int repl_resolve_link(repl_cfg *cfg, repl_link *l);
/* Dials the configured peer (repl_primary's address). */
int repl_dial(repl_cfg *cfg, int *fd_out, hv_err *err);
/* The handshake options for our current role. */
void repl_link_options(repl_cfg *cfg, int is_server, repl_link_opts *o);

/* Planned switchover, primary side: the replica on link l asked to take
 * over at epoch. Runs on its own thread: fence, drain, SWITCHED, demote. */
void repl_primary_switchover(repl_link *l, uint64_t epoch);
/* Replica side (repl_replica.c): asks the primary to hand over; waits for
 * its SWITCHED. 0 done, -ENOTCONN when no link is up, other -errno. */
int repl_replica_switchover(uint64_t epoch, hv_err *err);
/* The primary's epoch as the current link said (0 without a link). */
uint64_t repl_replica_peer_epoch(void);

/* Primary side (repl_primary.c). */
int repl_primary_start(repl_cfg *cfg, int fd_listen, hv_err *err);
void repl_primary_stop(void);
void repl_primary_status(buf *out);
/* The "metrics" command: the same numbers, one "KIND key=value ..." line
 * per node, link and lagging account, for the http service. */
void repl_primary_metrics(buf *out);
/* Writes the replcheck report for one account (NULL: all) into out;
 * returns how many accounts differ (>= 0) or -errno. */
int repl_primary_replcheck(const char *account, buf *out, hv_err *err);

/* Sync mode: waits until cfg->sync_k replicas have acknowledged modseq of
 * account. 0: they have; 1: the store is degraded to async (why says
 * since when and why; the write stands); -EAGAIN: refused by policy. */
int repl_primary_wait(const char *account, uint64_t modseq, char *why, size_t whylen);

/* Replica side (repl_replica.c). */
int repl_replica_start(repl_cfg *cfg, hv_err *err);
void repl_replica_stop(void);
void repl_replica_status(buf *out);
void repl_replica_metrics(buf *out);

/* Shared helpers (repl.c). */
/* CRC of the record with this modseq (0 when modseq is 0); -ENOENT when
 * the log has no such record. */
int repl_record_crc(store_account *st, uint64_t modseq, uint32_t *crc, hv_err *err);
/* Calls cb for each account folder under data_dir/accounts (name is
 * local@domain, dir its folder). */
typedef void (*repl_account_cb)(void *ctx, const char *name, const char *dir);
void repl_scan_accounts(const char *data_dir, repl_account_cb cb, void *ctx);

/* repl_tail.c: records with modseq in (since, upto] read from the log
 * position (seg, off) where the record `since` ends. 0 done, 1 stopped by
 * cb, -ESTALE when the position does not continue as expected (then use
 * store_changes_since). */
int repl_tail_read(const char *acct_dir, uint64_t seg, uint64_t off, uint64_t since,
                   uint64_t upto, store_record_cb cb, void *ctx, hv_err *err);
/* fdatasync of the account's newest log segment (at or after hint_seg when
 * that is not 0): whatever a reader saw before the call is durable after
 * it, so a replica never holds a record the primary could still lose. */
int repl_sync_log(const char *acct_dir, uint64_t hint_seg, hv_err *err);
/* What one pass over an account's log knows of what is durable. */
typedef struct repl_durable {
    uint64_t seg, off;     /* the store's durable mark, once looked at */
    uint64_t synced_seg;   /* a segment this pass fdatasynced (0 none) */
    int looked;
} repl_durable;
/* Before a record ending at (seg, end) is shipped: makes sure it is
 * durable. Cheap when the writer's own sync covered it (the store's
 * durable mark says so); else one fdatasync of its segment, which covers
 * every record written before the pass began. */
int repl_make_durable(const char *acct_dir, uint64_t seg, uint64_t end, repl_durable *d,
                      hv_err *err);

#endif
