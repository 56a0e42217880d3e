/*
 * repl_sync.h - what a writer (imap, lmtp) calls in sync mode before it
 * answers OK / LMTP success.
 *
 * With repl_mode = sync, a write is acknowledged to the client only once
 * repl_sync_replicas replicas hold it durably. The writer commits as
 * usual, then calls repl_sync_wait with the account and the modseq its
 * commit reached (store_highest_modseq after the write). The repl service
 * answers when enough replicas have acked it, or after
 * repl_sync_timeout_ms applies repl_sync_on_timeout: degrade to async (an
 * alarm is raised; the write stands and is acknowledged) or refuse (the
 * writer answers a temporary failure: IMAP NO [UNAVAILABLE], LMTP 451;
 * the data is durable on the primary and reaches replicas when they are
 * back). A repl service that does not answer counts as a timeout.
 *
 * One handle per thread (a persistent connection to RUN_DIR/repl-wait.sock,
 * reopened when it breaks).
 */
#ifndef HV_REPL_SYNC_H
#define HV_REPL_SYNC_H

#include <stdint.h>

#include "lib/conf.h"
#include "lib/err.h"

typedef struct repl_sync repl_sync;

/* *out is NULL (and 0 returned) when c is not in sync mode: then there is
 * nothing to wait for and repl_sync_wait(NULL, ...) returns 0 at once. */
int repl_sync_open(const conf *c, repl_sync **out, hv_err *err);
/* 0: acknowledge the write (replicas have it, or the store degraded to
 * async; *degraded set to 1 then if degraded is not NULL). -EAGAIN: refuse
 * it with a temporary failure, reason in err. */
int repl_sync_wait(repl_sync *s, const char *account, uint64_t modseq, int *degraded,
                   hv_err *err);
void repl_sync_close(repl_sync *s);
/* The calling thread's own handle (opened at its first call, closed when
 * the thread ends): what the writers' worker threads use. *out is NULL
 * when not in sync mode. */
int repl_sync_thread(const conf *c, repl_sync **out, hv_err *err);

#endif
