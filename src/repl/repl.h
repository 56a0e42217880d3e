/*
 * repl.h - the repl service: replication of account logs between a
 * primary store and its replicas (docs/replication.md).
 *
 * havend runs it as a child process when replication is configured:
 *   - on a primary (repl_port set, repl_primary empty) it listens for
 *     replicas and streams every account's log records and the blobs they
 *     name, one stream position per account and per replica;
 *   - on a replica (repl_primary set) it dials the primary, applies what it
 *     receives with store_apply_frames (same bytes, same modseqs) and acks
 *     the modseq it has made durable.
 * Both sides answer on RUN_DIR/repl.sock (mode 0600), one command per
 * connection: "status" (links, lag) and, on the primary, "replcheck
 * [ACCOUNT]" (haven replcheck). Replies end with a line holding ".".
 */
#ifndef HV_REPL_H
#define HV_REPL_H

#include "lib/buf.h"
#include "lib/conf.h"
#include "lib/err.h"

/* fd_listen: the bound repl_port socket, or -1 on a replica. Returns when
 * SIGTERM/SIGINT arrive (0) or when it cannot run (-errno, reason). */
int repl_service_run(const conf *c, int fd_listen, hv_err *err);

/* Whether c configures replication at all (the service is started only
 * then). */
int repl_configured(const conf *c);

/* Path of the control socket of the instance of c. */
void repl_control_path(const conf *c, char *out, size_t len);

/* Path of the socket writers wait on in sync mode (repl_sync.h). */
void repl_wait_path(const conf *c, char *out, size_t len);

/* Client side (repl_ctl.c): sends one command ("status", "replcheck
 * [ACCOUNT]") to the control socket of c's instance and collects the reply
 * without its final "." line. timeout_ms bounds each wait for bytes (-1:
 * none; replcheck takes as long as the accounts take). */
int repl_ctl_ask(const conf *c, const char *cmd, buf *reply, int timeout_ms, hv_err *err);

/* ---- account moves (repl_move.c, docs/move.md) ----
 *
 * repl_move_account moves one account from this node's store to another
 * store, live: it dials the target's repl service (the store's
 * repl_address in the directory) as a "mover", streams the account's log
 * and blobs in rounds while the owner keeps using it, then freezes it
 * (directory state "moving": the queue holds new mail; the account's fence
 * here stops writers and ends IMAP sessions), ships the last delta,
 * compares digests, has the target take the account, and flips the
 * directory (store and state in one transaction). Run it again after a
 * crash and it goes on from what the target holds; a failure before the
 * flip rolls back to the source and says why. Progress goes to
 * DATA/moves/ACCOUNT.move (key=value lines, docs/move.md). */
typedef struct repl_move_opts {
    const char *account;
    const char *to;              /* target store name */
    uint64_t freeze_records;     /* freeze once a round leaves at most this many (0: 500) */
    int verbose;                 /* progress lines on stderr */
} repl_move_opts;

typedef struct repl_move_result {
    int already;                 /* 1: the directory had it on the target already */
    uint64_t bytes_sent, records_sent, modseq;
    int rounds;
    int64_t freeze_ms, total_ms;
} repl_move_result;

int repl_move_account(const conf *c, const repl_move_opts *o, repl_move_result *res,
                      hv_err *err);

/* Bytes an account takes on disk (log and blobs): the move's progress
 * total. 0 when it has no folder here. */
uint64_t repl_move_account_bytes(const conf *c, const char *account);

#endif
