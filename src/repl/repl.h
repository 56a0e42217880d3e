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

#endif
