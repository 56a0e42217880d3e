/* test_workq.c - the worker pool the services share (lib/workq.c). */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "lib/workq.h"
#include "testlib.h"

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int seen[1000], order[1000], nseen;

static void record(void *item)
{
    int i = (int)(intptr_t)item;
    pthread_mutex_lock(&mu);
    seen[i]++;
    order[nseen++] = i;
    pthread_mutex_unlock(&mu);
}

/* Every item runs exactly once, also those still queued at stop. */
TEST(every_item_runs_once)
{
    workq *q;
    hv_err err = {0};
    nseen = 0;
    for (int i = 0; i < 1000; i++)
        seen[i] = 0;
    CHECK(workq_start(&q, 4, record, &err) == 0);
    for (int i = 0; i < 1000; i++)
        workq_push(q, (void *)(intptr_t)i);
    workq_stop(q);
    CHECK(nseen == 1000);
    for (int i = 0; i < 1000; i++)
        CHECK(seen[i] == 1);
}

/* One worker runs items in the order they were pushed. */
TEST(one_worker_keeps_order)
{
    workq *q;
    hv_err err = {0};
    nseen = 0;
    CHECK(workq_start(&q, 0, record, &err) == 0); /* 0 means 1 */
    for (int i = 0; i < 500; i++)
        workq_push(q, (void *)(intptr_t)i);
    workq_stop(q);
    CHECK(nseen == 500);
    for (int i = 0; i < 500; i++)
        CHECK(order[i] == i);
}

int main(void)
{
    RUN(every_item_runs_once);
    RUN(one_worker_keeps_order);
    return t_done();
}
