/* workq.c - worker threads fed from one FIFO queue; see workq.h. */
#include "lib/workq.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

typedef struct workq_item {
    void *item;
    struct workq_item *next;
} workq_item;

struct workq {
    workq_fn fn;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    workq_item *head, *tail;
    int stopping;
    unsigned n;
    pthread_t *threads;
};

static void *worker_main(void *arg)
{
    workq *q = arg;
    for (;;) {
        pthread_mutex_lock(&q->mu);
        while (!q->head && !q->stopping)
            pthread_cond_wait(&q->cv, &q->mu);
        workq_item *it = q->head;
        if (!it) {
            pthread_mutex_unlock(&q->mu);
            return NULL;
        }
        q->head = it->next;
        if (!q->head)
            q->tail = NULL;
        pthread_mutex_unlock(&q->mu);
        void *item = it->item;
        free(it);
        q->fn(item);
    }
}

int workq_start(workq **out, unsigned n, workq_fn fn, hv_err *err)
{
    workq *q = calloc(1, sizeof(*q));
    if (!q)
        return hv_err_set(err, -ENOMEM, "out of memory");
    q->fn = fn;
    q->n = n ? n : 1;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    q->threads = calloc(q->n, sizeof(pthread_t));
    if (!q->threads) {
        free(q);
        return hv_err_set(err, -ENOMEM, "out of memory");
    }
    for (unsigned i = 0; i < q->n; i++) {
        int rc = pthread_create(&q->threads[i], NULL, worker_main, q);
        if (rc != 0) {
            q->n = i; /* join the ones that started */
            workq_stop(q);
            return hv_err_set(err, -rc, "cannot start worker threads");
        }
    }
    *out = q;
    return 0;
}

void workq_push(workq *q, void *item)
{
    workq_item *it = malloc(sizeof(*it));
    if (!it)
        abort(); /* a session left unanswered forever is worse than a restart */
    it->item = item;
    it->next = NULL;
    pthread_mutex_lock(&q->mu);
    if (q->tail)
        q->tail->next = it;
    else
        q->head = it;
    q->tail = it;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

void workq_stop(workq *q)
{
    if (!q)
        return;
    pthread_mutex_lock(&q->mu);
    q->stopping = 1;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    for (unsigned i = 0; i < q->n; i++)
        pthread_join(q->threads[i], NULL);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
    free(q->threads);
    free(q);
}
