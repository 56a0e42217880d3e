/*
 * workq.h - a pool of worker threads fed from one FIFO queue.
 *
 * The network services keep their event loops free of anything that can
 * block (directory look-ups, password hashing, fsync): the loop pushes an
 * item, a worker runs fn(item), and fn wakes the loop when it is done.
 * Items run in the order they were pushed, each on one worker.
 */
#ifndef HV_WORKQ_H
#define HV_WORKQ_H

#include "lib/err.h"

typedef struct workq workq;
typedef void (*workq_fn)(void *item);

/* Starts n (at least 1) workers that call fn for each item. */
int workq_start(workq **out, unsigned n, workq_fn fn, hv_err *err);
/* Queues an item; never blocks on the workers. */
void workq_push(workq *q, void *item);
/* Lets the queued items run, then joins the workers and frees q. */
void workq_stop(workq *q);

#endif
