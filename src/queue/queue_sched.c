/*
 * queue_sched.c - which recipient is delivered next.
 *
 * Not one FIFO over the whole queue (a flood would delay everyone behind
 * it) but round robin at two levels: over senders (the authenticated user,
 * else the client address), and within one sender over its destinations
 * (an account, or a remote domain). Each destination has a cap on
 * deliveries in flight, so a flood to one account, or a slow store, takes
 * at most that many delivery threads and the others keep going.
 *
 * A destination whose held mail is released goes into release mode: its
 * mail is delivered one at a time in arrival order (so the account's uids
 * follow arrival), taking turns with the senders' round robin.
 *
 * Retries wait in a heap by due time. Everything here runs under the queue
 * lock and touches no disk or socket, so it can be tested with a fake
 * clock (tests/unit/test_queue.c).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue/queue_internal.h"

/* ---------- string-keyed tables ---------- */

static uint64_t str_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* The two tables (senders, destinations) share this shape through the
 * first two members' offsets; written out twice to stay type-checked. */
static qsender *sender_get(queue *q, const char *key)
{
    if (q->stab_cap) {
        for (qsender *s = q->stab[str_hash(key) & (q->stab_cap - 1)]; s; s = s->hnext)
            if (strcmp(s->key, key) == 0)
                return s;
    }
    if (q->nsenders_all + 1 > q->stab_cap / 2) {
        size_t cap = q->stab_cap ? q->stab_cap * 2 : 64;
        qsender **t = calloc(cap, sizeof(*t));
        if (!t)
            abort();
        for (size_t i = 0; i < q->stab_cap; i++)
            for (qsender *x = q->stab[i], *nx; x; x = nx) {
                nx = x->hnext;
                size_t h = str_hash(x->key) & (cap - 1);
                x->hnext = t[h];
                t[h] = x;
            }
        free(q->stab);
        q->stab = t;
        q->stab_cap = cap;
    }
    qsender *s = calloc(1, sizeof(*s));
    if (!s)
        abort();
    s->key = strdup(key);
    size_t h = str_hash(key) & (q->stab_cap - 1);
    s->hnext = q->stab[h];
    q->stab[h] = s;
    q->nsenders_all++;
    return s;
}

static void sender_put(queue *q, qsender *s)
{
    if (--s->refs || s->in_ring)
        return;
    for (qsender **pp = &q->stab[str_hash(s->key) & (q->stab_cap - 1)]; *pp; pp = &(*pp)->hnext)
        if (*pp == s) {
            *pp = s->hnext;
            break;
        }
    q->nsenders_all--;
    free(s->key);
    free(s);
}

qdest *sched_dest_find(queue *q, const char *key)
{
    if (!q->dtab_cap)
        return NULL;
    for (qdest *d = q->dtab[str_hash(key) & (q->dtab_cap - 1)]; d; d = d->hnext)
        if (strcmp(d->key, key) == 0)
            return d;
    return NULL;
}

static qdest *dest_get(queue *q, const char *key, int remote)
{
    qdest *d = sched_dest_find(q, key);
    if (d)
        return d;
    if (q->ndests + 1 > q->dtab_cap / 2) {
        size_t cap = q->dtab_cap ? q->dtab_cap * 2 : 64;
        qdest **t = calloc(cap, sizeof(*t));
        if (!t)
            abort();
        for (size_t i = 0; i < q->dtab_cap; i++)
            for (qdest *x = q->dtab[i], *nx; x; x = nx) {
                nx = x->hnext;
                size_t h = str_hash(x->key) & (cap - 1);
                x->hnext = t[h];
                t[h] = x;
            }
        free(q->dtab);
        q->dtab = t;
        q->dtab_cap = cap;
    }
    d = calloc(1, sizeof(*d));
    if (!d)
        abort();
    d->key = strdup(key);
    d->remote = remote;
    size_t h = str_hash(key) & (q->dtab_cap - 1);
    d->hnext = q->dtab[h];
    q->dtab[h] = d;
    q->ndests++;
    return d;
}

static void rring_remove(queue *q, qdest *d);

static void dest_maybe_free(queue *q, qdest *d)
{
    if (d->refs || d->inflight || d->sds || d->rel_head)
        return;
    if (d->in_rring)
        rring_remove(q, d);
    for (qdest **pp = &q->dtab[str_hash(d->key) & (q->dtab_cap - 1)]; *pp; pp = &(*pp)->hnext)
        if (*pp == d) {
            *pp = d->hnext;
            break;
        }
    q->ndests--;
    free(d->key);
    free(d);
}

/* ---------- rings ---------- */

static void sring_add(queue *q, qsender *s)
{
    if (s->in_ring)
        return;
    s->in_ring = 1;
    if (!q->sring) {
        s->next = s->prev = s;
        q->sring = s;
    } else {
        /* Just before the cursor: it gets its turn after everyone else. */
        s->next = q->sring;
        s->prev = q->sring->prev;
        s->prev->next = s;
        q->sring->prev = s;
    }
}

static void sring_remove(queue *q, qsender *s)
{
    if (!s->in_ring)
        return;
    s->in_ring = 0;
    if (s->next == s) {
        q->sring = NULL;
    } else {
        s->prev->next = s->next;
        s->next->prev = s->prev;
        if (q->sring == s)
            q->sring = s->next;
    }
    s->next = s->prev = NULL;
}

static void rring_add(queue *q, qdest *d)
{
    if (d->in_rring)
        return;
    d->in_rring = 1;
    if (!q->rring) {
        d->rnext = d->rprev = d;
        q->rring = d;
    } else {
        d->rnext = q->rring;
        d->rprev = q->rring->rprev;
        d->rprev->rnext = d;
        q->rring->rprev = d;
    }
}

static void rring_remove(queue *q, qdest *d)
{
    if (!d->in_rring)
        return;
    d->in_rring = 0;
    if (d->rnext == d) {
        q->rring = NULL;
    } else {
        d->rprev->rnext = d->rnext;
        d->rnext->rprev = d->rprev;
        if (q->rring == d)
            q->rring = d->rnext;
    }
    d->rnext = d->rprev = NULL;
}

/* ---------- sender x destination FIFOs ---------- */

static qsd *sd_find(qdest *d, qsender *s)
{
    for (qsd *x = d->sds; x; x = x->dnext)
        if (x->sender == s)
            return x;
    return NULL;
}

static qsd *sd_get(queue *q, qdest *d, qsender *s)
{
    qsd *x = sd_find(d, s);
    if (x)
        return x;
    x = calloc(1, sizeof(*x));
    if (!x)
        abort();
    x->sender = s;
    x->dest = d;
    x->dnext = d->sds;
    if (d->sds)
        d->sds->dprev = x;
    d->sds = x;
    /* Into the sender's ring, behind its cursor. */
    if (!s->ring) {
        x->next = x->prev = x;
        s->ring = x;
    } else {
        x->next = s->ring;
        x->prev = s->ring->prev;
        x->prev->next = x;
        s->ring->prev = x;
    }
    s->nsd++;
    s->refs++; /* the sd keeps the sender alive */
    sring_add(q, s);
    return x;
}

static void sd_free(queue *q, qsd *x)
{
    qsender *s = x->sender;
    qdest *d = x->dest;
    if (x->next == x) {
        s->ring = NULL;
    } else {
        x->prev->next = x->next;
        x->next->prev = x->prev;
        if (s->ring == x)
            s->ring = x->next;
    }
    s->nsd--;
    if (x->dprev)
        x->dprev->dnext = x->dnext;
    else
        d->sds = x->dnext;
    if (x->dnext)
        x->dnext->dprev = x->dprev;
    free(x);
    if (!s->ring)
        sring_remove(q, s);
    sender_put(q, s);
}

static int rcpt_before(const qrcpt *a, const qrcpt *b)
{
    return a->msg->id < b->msg->id || (a->msg->id == b->msg->id && a->idx < b->idx);
}

void sched_make_ready(queue *q, qrcpt *r)
{
    if (r->queued || r->busy || !r->dest)
        return;
    qdest *d = r->dest;
    r->next_ready = NULL;
    r->queued = 1;
    if (d->releasing) {
        /* Arrival order; mostly an append. */
        if (!d->rel_head) {
            d->rel_head = d->rel_tail = r;
        } else if (rcpt_before(d->rel_tail, r)) {
            d->rel_tail->next_ready = r;
            d->rel_tail = r;
        } else if (rcpt_before(r, d->rel_head)) {
            r->next_ready = d->rel_head;
            d->rel_head = r;
        } else {
            qrcpt *p = d->rel_head;
            while (p->next_ready && rcpt_before(p->next_ready, r))
                p = p->next_ready;
            r->next_ready = p->next_ready;
            p->next_ready = r;
        }
        return;
    }
    qsd *x = sd_get(q, d, r->msg->sender);
    if (x->tail)
        x->tail->next_ready = r;
    else
        x->head = r;
    x->tail = r;
}

static int fifo_remove(qrcpt **head, qrcpt **tail, qrcpt *r)
{
    qrcpt *prev = NULL;
    for (qrcpt *p = *head; p; prev = p, p = p->next_ready)
        if (p == r) {
            if (prev)
                prev->next_ready = r->next_ready;
            else
                *head = r->next_ready;
            if (*tail == r)
                *tail = prev;
            r->next_ready = NULL;
            return 1;
        }
    return 0;
}

void sched_unqueue(queue *q, qrcpt *r)
{
    if (!r->queued)
        return;
    r->queued = 0;
    qdest *d = r->dest;
    if (fifo_remove(&d->rel_head, &d->rel_tail, r))
        return;
    qsd *x = sd_find(d, r->msg->sender);
    if (x && fifo_remove(&x->head, &x->tail, r) && !x->head)
        sd_free(q, x);
}

/* ---------- retry heap ---------- */

static void heap_swap(queue *q, size_t a, size_t b)
{
    qrcpt *t = q->heap[a];
    q->heap[a] = q->heap[b];
    q->heap[b] = t;
    q->heap[a]->heap_idx = a;
    q->heap[b]->heap_idx = b;
}

static void heap_up(queue *q, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (q->heap[p]->next_try <= q->heap[i]->next_try)
            break;
        heap_swap(q, p, i);
        i = p;
    }
}

static void heap_down(queue *q, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < q->heap_len && q->heap[l]->next_try < q->heap[m]->next_try)
            m = l;
        if (r < q->heap_len && q->heap[r]->next_try < q->heap[m]->next_try)
            m = r;
        if (m == i)
            return;
        heap_swap(q, i, m);
        i = m;
    }
}

void sched_heap_push(queue *q, qrcpt *r)
{
    if (r->heap_idx != SIZE_MAX)
        sched_heap_remove(q, r);
    if (q->heap_len == q->heap_cap) {
        q->heap_cap = q->heap_cap ? q->heap_cap * 2 : 64;
        q->heap = realloc(q->heap, q->heap_cap * sizeof(qrcpt *));
        if (!q->heap)
            abort();
    }
    r->heap_idx = q->heap_len;
    q->heap[q->heap_len++] = r;
    heap_up(q, r->heap_idx);
}

void sched_heap_remove(queue *q, qrcpt *r)
{
    size_t i = r->heap_idx;
    if (i == SIZE_MAX)
        return;
    r->heap_idx = SIZE_MAX;
    q->heap_len--;
    if (i == q->heap_len)
        return;
    q->heap[i] = q->heap[q->heap_len];
    q->heap[i]->heap_idx = i;
    heap_up(q, i);
    heap_down(q, q->heap[i]->heap_idx);
}

int64_t sched_due(queue *q, int64_t now)
{
    while (q->heap_len && q->heap[0]->next_try <= now) {
        qrcpt *r = q->heap[0];
        sched_heap_remove(q, r);
        /* It stays DEFERRED (with its last error) while it is retried. */
        sched_make_ready(q, r);
    }
    return q->heap_len ? q->heap[0]->next_try : INT64_MAX;
}

size_t sched_flush(queue *q)
{
    size_t n = 0;
    while (q->heap_len) {
        qrcpt *r = q->heap[0];
        sched_heap_remove(q, r);
        sched_make_ready(q, r);
        n++;
    }
    return n;
}

/* ---------- attach / detach ---------- */

static void dest_key(const qrcpt *r, char *out, size_t len)
{
    if (r->account) {
        snprintf(out, len, "%s", r->account);
        return;
    }
    const char *at = strrchr(r->address, '@');
    const char *dom = at ? at + 1 : r->address;
    size_t k = 0;
    out[k++] = '@';
    for (; *dom && k + 1 < len; dom++)
        out[k++] = (char)(*dom >= 'A' && *dom <= 'Z' ? *dom + 32 : *dom);
    out[k] = 0;
}

static int finished(int st)
{
    return st == QUEUE_DELIVERED || st == QUEUE_BOUNCED || st == QSTATE_DELETED;
}

void sched_attach(queue *q, qmsg *m)
{
    char key[QUEUE_ID_LEN + 4200];
    if (m->flags & QMSG_IS_DSN)
        snprintf(key, sizeof(key), "dsn");
    else if (m->auth_user)
        snprintf(key, sizeof(key), "u:%s", m->auth_user);
    else
        snprintf(key, sizeof(key), "a:%s", m->client_addr ? m->client_addr : "");
    m->sender = sender_get(q, key);
    m->sender->refs++;
    for (uint32_t i = 0; i < m->nrcpts; i++) {
        qrcpt *r = &m->rcpts[i];
        if (finished(r->state))
            continue;
        dest_key(r, key, sizeof(key));
        r->dest = dest_get(q, key, r->account == NULL);
        r->dest->refs++;
        if (r->state == QUEUE_READY)
            sched_make_ready(q, r);
        else if (r->state == QUEUE_DEFERRED)
            sched_heap_push(q, r);
        else if (QRCPT_AUTO_HELD(r))
            r->dest->held++;
    }
}

void sched_detach(queue *q, qmsg *m)
{
    for (uint32_t i = 0; i < m->nrcpts; i++) {
        qrcpt *r = &m->rcpts[i];
        if (!r->dest)
            continue;
        sched_unqueue(q, r);
        sched_heap_remove(q, r);
        if (QRCPT_AUTO_HELD(r))
            r->dest->held--;
        if (r->busy)
            continue; /* sched_release_busy lets go of its destination */
        qdest *d = r->dest;
        r->dest = NULL;
        d->refs--;
        dest_maybe_free(q, d);
    }
    if (m->sender) {
        sender_put(q, m->sender);
        m->sender = NULL;
    }
}

/* ---------- picking ---------- */

static int dest_cap(const queue *q, const qdest *d)
{
    return d->remote ? q->domain_cap : q->account_cap;
}

static void take(queue *q, qrcpt *r)
{
    r->queued = 0;
    r->next_ready = NULL;
    r->busy = 1;
    r->msg->busy++;
    r->dest->inflight++;
    (void)q;
}

static void maybe_end_release(queue *q, qdest *d)
{
    if (d->releasing && !d->rel_head && d->inflight == 0) {
        d->releasing = 0;
        rring_remove(q, d);
        /* Mail that came while it was releasing waits in the senders' FIFOs
         * and is picked up from there as usual. */
        dest_maybe_free(q, d);
    }
}

static qrcpt *pick_release(queue *q)
{
    size_t n = 0;
    if (q->rring) {
        qdest *d = q->rring;
        do {
            n++;
            d = d->rnext;
        } while (d != q->rring);
    }
    for (qdest *d = q->rring; d && n--; d = q->rring) {
        q->rring = d->rnext;
        if (d->inflight)
            continue; /* one at a time, so the store sees arrival order */
        if (!d->rel_head) {
            maybe_end_release(q, d);
            continue;
        }
        qrcpt *r = d->rel_head;
        d->rel_head = r->next_ready;
        if (!d->rel_head)
            d->rel_tail = NULL;
        take(q, r);
        return r;
    }
    return NULL;
}

/* One turn around the senders from the cursor; the cursor moves past the
 * sender served, and stays put when nobody could be. */
static qrcpt *pick_sender(queue *q)
{
    qsender *start = q->sring;
    if (!start)
        return NULL;
    qsender *s = start;
    do {
        qsender *next = s->next;
        size_t n = s->nsd;
        for (size_t j = 0; j < n; j++) {
            qsd *x = s->ring;
            s->ring = x->next;
            qdest *d = x->dest;
            if (d->releasing || d->inflight >= dest_cap(q, d))
                continue;
            qrcpt *r = x->head;
            x->head = r->next_ready;
            q->sring = next;
            if (!x->head) {
                x->tail = NULL;
                sd_free(q, x); /* may take s out of the ring */
            }
            take(q, r);
            return r;
        }
        s = next;
    } while (s != start);
    return NULL;
}

qrcpt *sched_pick(queue *q, int64_t now)
{
    sched_due(q, now);
    for (int i = 0; i < 2; i++) {
        int rel = q->pick_release_next;
        q->pick_release_next = !rel;
        qrcpt *r = rel ? pick_release(q) : pick_sender(q);
        if (r)
            return r;
    }
    return NULL;
}

size_t sched_take_siblings(queue *q, qrcpt *r, qrcpt **out, size_t max)
{
    size_t n = 0;
    qmsg *m = r->msg;
    for (uint32_t i = 0; i < m->nrcpts && n < max; i++) {
        qrcpt *x = &m->rcpts[i];
        if (x == r || x->dest != r->dest || !x->queued || x->busy)
            continue;
        sched_unqueue(q, x);
        x->busy = 2;
        m->busy++;
        out[n++] = x;
    }
    return n;
}

void sched_release_busy(queue *q, qrcpt *r)
{
    if (!r->busy)
        return;
    qdest *d = r->dest;
    if (r->busy == 1 && d)
        d->inflight--;
    r->busy = 0;
    r->msg->busy--;
    if (!d)
        return;
    if (!r->msg->in_table) {
        r->dest = NULL;
        d->refs--;
    }
    maybe_end_release(q, d);
    dest_maybe_free(q, d);
}

size_t sched_release_dest(queue *q, qdest *d, unsigned kinds)
{
    size_t n = 0, cap = 0;
    qrcpt **list = NULL;
    for (size_t i = 0; i < q->tab_cap; i++)
        for (qmsg *m = q->tab[i]; m; m = m->hnext)
            for (uint32_t k = 0; k < m->nrcpts; k++) {
                qrcpt *r = &m->rcpts[k];
                if (r->dest != d || r->state != QUEUE_HELD || r->busy ||
                    !(kinds & (1u << r->hold_kind)))
                    continue;
                if (n == cap) {
                    cap = cap ? cap * 2 : 64;
                    list = realloc(list, cap * sizeof(*list));
                    if (!list)
                        abort();
                }
                list[n++] = r;
            }
    if (n) {
        d->releasing = 1;
        rring_add(q, d);
        /* Each goes into the release FIFO in arrival order. */
        for (size_t i = 0; i < n; i++)
            queue_set_state(q, list[i], QUEUE_READY, 0, "");
        pthread_cond_broadcast(&q->work_cv);
    }
    free(list);
    return n;
}

void sched_release_one(queue *q, qrcpt *r)
{
    if (r->state != QUEUE_HELD || r->busy || !r->dest)
        return;
    r->dest->releasing = 1;
    rring_add(q, r->dest);
    queue_set_state(q, r, QUEUE_READY, 0, "");
    pthread_cond_broadcast(&q->work_cv);
}
