/*
 * ratelimit.h - per client address: sessions open now, a message rate and
 * failed logins, for services that must not let one address crowd out the
 * others (smtp; imap has its own older table of failures).
 *
 * One table per process, thread-safe (a mutex; every call is a hash lookup).
 * Memory is bounded: entries of addresses with no open session and nothing
 * recent to remember are dropped once the table grows, and past
 * RATELIMIT_MAX_ENTRIES such entries are dropped regardless of what they
 * remember (an address then starts afresh, which errs on its side).
 */
#ifndef HV_RATELIMIT_H
#define HV_RATELIMIT_H

#define RATELIMIT_MAX_ENTRIES 65536

typedef struct ratelimit ratelimit;

ratelimit *ratelimit_new(void);
void ratelimit_free(ratelimit *rl);

/* A session from addr begins: 0, or -EBUSY when addr has max open already
 * (max 0: no limit; the session is then not counted). */
int ratelimit_session_open(ratelimit *rl, const char *addr, unsigned max);
/* The session ends (only after a successful open). */
void ratelimit_session_close(ratelimit *rl, const char *addr);

/* One event (a message) from addr: 0, or -EAGAIN when addr used up its
 * per_minute (a token bucket: per_minute at once, refilled evenly over a
 * minute). per_minute 0: no limit. */
int ratelimit_take(ratelimit *rl, const char *addr, unsigned per_minute);

/* A failed login from addr; returns how long to hold the answer back:
 * base_ms, doubling with each further failure within an hour (16x at
 * most), never above 30 s. */
unsigned ratelimit_fail(ratelimit *rl, const char *addr, unsigned base_ms);
/* A good login: forget addr's failures. */
void ratelimit_fail_clear(ratelimit *rl, const char *addr);

#endif
