/*
 * queue_route.h - where the queue delivers a local recipient's mail: the
 * lmtp service of the store that holds the account (queue_route.c).
 *
 * The directory says which store holds an account and, per store, where
 * that store's lmtp service listens (lmtp_address). Mail for an account
 * on this node's own store (config `store_name`), or on a store that has
 * no lmtp_address, goes to this node's lmtp service (listen:lmtp_port),
 * as on a single node; any other goes to its store's lmtp_address. A
 * destination is one host:port, whichever stores share it.
 *
 * Per destination, the runner keeps whether it answers: one that did not
 * is marked down (its mail is held without trying, QHOLD_STORE), probed
 * every few seconds by qroute's own thread, and up again when it answers,
 * when the runner's watcher releases what was held for it. Each delivery thread keeps
 * one LMTP connection per destination open between deliveries
 * (qroute_conns, a few slots, least recently used goes first).
 *
 * qroute is shared by the runner's threads (its own mutex and prober
 * thread); qroute_conns belongs to one thread.
 */
#ifndef HV_QUEUE_ROUTE_H
#define HV_QUEUE_ROUTE_H

#include <stdint.h>

#include "dir/dir.h"
#include "lib/conf.h"
#include "lib/err.h"
#include "smtp/smtp_client.h"

/* One delivery's destination. */
typedef struct qroute_dest {
    char key[DIR_STORE_ADDRESS_MAX + 3];  /* "host:port" ("[v6]:port"): the table key */
    char host[DIR_STORE_ADDRESS_MAX + 1];
    int port;
    char store[DIR_STORE_NAME_MAX + 1];   /* the account's store */
    int local;                            /* this node's own lmtp service */
} qroute_dest;

typedef struct qroute qroute;

/* Reads store_name, listen, lmtp_port and hostname from c. timeout_ms
 * bounds every step of an LMTP conversation; a destination that does not
 * answer is tried again every probe_ms. */
qroute *qroute_new(const conf *c, int timeout_ms, int probe_ms, hv_err *err);
void qroute_free(qroute *r);
/* This node's own lmtp service. */
const qroute_dest *qroute_local(const qroute *r);

/* Where mail for account a (as dir_account_get gave it) goes. Reads the
 * store's row with d (the calling thread's handle) unless a is on this
 * node's store. -errno with the reason when the directory cannot say
 * (the caller defers). */
int qroute_lookup(qroute *r, dir *d, const dir_account *a, qroute_dest *out, hv_err *err);

/* Whether dst is marked as not answering. */
int qroute_is_down(qroute *r, const qroute_dest *dst);
/* Marks dst as not answering (logs queue_store_down once, until it is up
 * again); it is probed from now on. */
void qroute_mark_down(qroute *r, const qroute_dest *dst, const char *why);
/* After holding mail because dst was down: when dst came back meanwhile
 * (the watcher's release may have looked before this mail was held), the
 * next qroute_recheck says so again, so no mail waits for an event that
 * has passed. */
void qroute_held(qroute *r, const qroute_dest *dst);
/* 1 once after a destination answered again (queue_store_up) or
 * qroute_held asked: the caller looks at held mail again. Never blocks:
 * a thread of qroute's own probes the destinations that are down, every
 * probe_ms, each step of a probe bounded by 5 s. */
int qroute_recheck(qroute *r);

/* ---- one delivery thread's connections ---- */

#define QROUTE_CONNS 8

typedef struct qroute_conns {
    struct {
        char key[DIR_STORE_ADDRESS_MAX + 3];
        smtp_client *c;
        uint64_t used; /* tick of the last use: the oldest is closed first */
    } slot[QROUTE_CONNS];
    uint64_t tick;
} qroute_conns;

/* The open connection to dst, or a new one (then *reused is 0). On
 * failure (connect, greeting, LHLO) -errno with the reason. */
int qroute_conn_get(qroute *r, qroute_conns *cs, const qroute_dest *dst, smtp_client **out,
                    int *reused, hv_err *err);
/* Closes the connection to dst (after an error on it). */
void qroute_conn_drop(qroute_conns *cs, const qroute_dest *dst);
void qroute_conns_close(qroute_conns *cs);

#endif
