/*
 * ratelimit.c - per-address sessions, rates and failures; see ratelimit.h.
 *
 * A chained hash table keyed by the textual address. Time is the monotonic
 * clock, so a wall-clock jump neither lifts nor doubles a limit.
 */
#include "lib/ratelimit.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NBUCKETS 4096
#define SWEEP_AT 4096            /* entries before idle ones are looked for */
#define FAIL_MEMORY_MS 3600000   /* failures are forgotten after an hour */
#define RATE_MEMORY_MS 60000     /* a bucket refills fully within a minute */

typedef struct rl_entry {
    char addr[64];
    unsigned sessions;
    double tokens;
    unsigned per_minute; /* of the bucket, when tokens was last set */
    int64_t refill_ms;
    unsigned fails;
    int64_t fail_ms;
    struct rl_entry *next;
} rl_entry;

struct ratelimit {
    pthread_mutex_t mu;
    rl_entry *b[NBUCKETS];
    size_t n;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

ratelimit *ratelimit_new(void)
{
    ratelimit *rl = calloc(1, sizeof(*rl));
    if (!rl)
        abort();
    pthread_mutex_init(&rl->mu, NULL);
    return rl;
}

void ratelimit_free(ratelimit *rl)
{
    if (!rl)
        return;
    for (size_t i = 0; i < NBUCKETS; i++)
        while (rl->b[i]) {
            rl_entry *e = rl->b[i];
            rl->b[i] = e->next;
            free(e);
        }
    pthread_mutex_destroy(&rl->mu);
    free(rl);
}

static unsigned hash(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h % NBUCKETS;
}

static int idle(const rl_entry *e, int64_t now, int force)
{
    if (e->sessions)
        return 0;
    if (force)
        return 1;
    return now - e->refill_ms >= RATE_MEMORY_MS &&
           (!e->fails || now - e->fail_ms >= FAIL_MEMORY_MS);
}

static void sweep(ratelimit *rl, int64_t now, int force)
{
    for (size_t i = 0; i < NBUCKETS; i++)
        for (rl_entry **pp = &rl->b[i]; *pp;) {
            rl_entry *e = *pp;
            if (idle(e, now, force)) {
                *pp = e->next;
                free(e);
                rl->n--;
            } else {
                pp = &e->next;
            }
        }
}

/* The entry of addr, created when missing (mutex held). */
static rl_entry *get(ratelimit *rl, const char *addr, int64_t now)
{
    unsigned h = hash(addr);
    for (rl_entry *e = rl->b[h]; e; e = e->next)
        if (strcmp(e->addr, addr) == 0)
            return e;
    if (rl->n >= SWEEP_AT)
        sweep(rl, now, 0);
    if (rl->n >= RATELIMIT_MAX_ENTRIES)
        sweep(rl, now, 1);
    rl_entry *e = calloc(1, sizeof(*e));
    if (!e)
        abort();
    snprintf(e->addr, sizeof(e->addr), "%s", addr);
    e->refill_ms = now;
    e->tokens = -1; /* full at first use */
    e->next = rl->b[h];
    rl->b[h] = e;
    rl->n++;
    return e;
}

int ratelimit_session_open(ratelimit *rl, const char *addr, unsigned max)
{
    if (!max)
        return 0;
    int rc = 0;
    pthread_mutex_lock(&rl->mu);
    rl_entry *e = get(rl, addr, now_ms());
    if (e->sessions >= max)
        rc = -EBUSY;
    else
        e->sessions++;
    pthread_mutex_unlock(&rl->mu);
    return rc;
}

void ratelimit_session_close(ratelimit *rl, const char *addr)
{
    pthread_mutex_lock(&rl->mu);
    rl_entry *e = get(rl, addr, now_ms());
    if (e->sessions)
        e->sessions--;
    pthread_mutex_unlock(&rl->mu);
}

int ratelimit_take(ratelimit *rl, const char *addr, unsigned per_minute)
{
    if (!per_minute)
        return 0;
    int rc = 0;
    int64_t now = now_ms();
    pthread_mutex_lock(&rl->mu);
    rl_entry *e = get(rl, addr, now);
    if (e->tokens < 0 || e->per_minute != per_minute) {
        e->tokens = per_minute;
        e->per_minute = per_minute;
    } else {
        e->tokens += (double)(now - e->refill_ms) * per_minute / 60000.0;
        if (e->tokens > per_minute)
            e->tokens = per_minute;
    }
    e->refill_ms = now;
    if (e->tokens >= 1)
        e->tokens -= 1;
    else
        rc = -EAGAIN;
    pthread_mutex_unlock(&rl->mu);
    return rc;
}

unsigned ratelimit_fail(ratelimit *rl, const char *addr, unsigned base_ms)
{
    int64_t now = now_ms();
    pthread_mutex_lock(&rl->mu);
    rl_entry *e = get(rl, addr, now);
    if (now - e->fail_ms > FAIL_MEMORY_MS)
        e->fails = 0;
    unsigned n = ++e->fails;
    e->fail_ms = now;
    pthread_mutex_unlock(&rl->mu);
    unsigned shift = n > 4 ? 4 : n - 1;
    uint64_t d = (uint64_t)base_ms << shift;
    return d > 30000 ? 30000 : (unsigned)d;
}

void ratelimit_fail_clear(ratelimit *rl, const char *addr)
{
    pthread_mutex_lock(&rl->mu);
    unsigned h = hash(addr);
    for (rl_entry *e = rl->b[h]; e; e = e->next)
        if (strcmp(e->addr, addr) == 0)
            e->fails = 0;
    pthread_mutex_unlock(&rl->mu);
}
