/*
 * imap_seqset.c - sequence sets ("1:3,5,7:*") and uid sets.
 *
 * A client controls these strings, so the work they cause is bounded by
 * what exists: a range is clipped to the messages of the view before it is
 * expanded, so "1:4294967295" costs no more than "1:*".
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "imap/imap_internal.h"

static int parse_num(const char **p, uint32_t star, uint32_t *out)
{
    if (**p == '*') {
        (*p)++;
        *out = star;
        return 0;
    }
    if (**p < '1' || **p > '9')
        return -1;
    uint64_t v = 0;
    while (**p >= '0' && **p <= '9') {
        v = v * 10 + (uint64_t)(**p - '0');
        if (v > UINT32_MAX)
            return -1;
        (*p)++;
    }
    *out = (uint32_t)v;
    return 0;
}

/* Calls fn(lo, hi) for each range of the set; returns -1 on bad syntax. */
static int walk(const char *set, uint32_t star, void (*fn)(void *, uint32_t, uint32_t),
                void *ctx)
{
    const char *p = set;
    if (!*p)
        return -1;
    for (;;) {
        uint32_t a, b;
        if (parse_num(&p, star, &a) < 0)
            return -1;
        b = a;
        if (*p == ':') {
            p++;
            if (parse_num(&p, star, &b) < 0)
                return -1;
        }
        if (a > b) {
            uint32_t t = a;
            a = b;
            b = t;
        }
        fn(ctx, a, b);
        if (*p == 0)
            return 0;
        if (*p != ',')
            return -1;
        p++;
    }
}

typedef struct collect {
    const imap_view *v;
    int by_uid;
    uint32_t *out;
    size_t n, cap, max;
    int overflow;
} collect;

static void push(collect *c, uint32_t uid)
{
    if (c->n == c->max) {
        c->overflow = 1;
        return;
    }
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 64;
        c->out = realloc(c->out, c->cap * sizeof(uint32_t));
    }
    c->out[c->n++] = uid;
}

/* Room for want more uids (a range is copied in one go). */
static void reserve(collect *c, size_t want)
{
    if (c->cap - c->n >= want)
        return;
    size_t cap = c->cap ? c->cap : 64;
    while (cap - c->n < want)
        cap *= 2;
    c->out = realloc(c->out, cap * sizeof(uint32_t));
    if (!c->out)
        abort();
    c->cap = cap;
}

static void add_view_range(void *ctx, uint32_t lo, uint32_t hi)
{
    collect *c = ctx;
    const imap_view *v = c->v;
    uint32_t first, end; /* view indexes [first, end) */
    if (c->by_uid) {
        /* binary search the first uid >= lo, then the first > hi */
        uint32_t l = 0, h = v->n;
        while (l < h) {
            uint32_t mid = l + (h - l) / 2;
            if (v->uids[mid] < lo)
                l = mid + 1;
            else
                h = mid;
        }
        first = l;
        h = v->n;
        while (l < h) {
            uint32_t mid = l + (h - l) / 2;
            if (v->uids[mid] <= hi)
                l = mid + 1;
            else
                h = mid;
        }
        end = l;
    } else {
        if (lo == 0)
            lo = 1;
        first = lo - 1;
        end = hi < v->n ? hi : v->n;
    }
    if (first >= end)
        return;
    reserve(c, end - first);
    memcpy(c->out + c->n, v->uids + first, (size_t)(end - first) * sizeof(uint32_t));
    c->n += end - first;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void sort_unique(collect *c)
{
    /* "1:*" and most sets a client sends come out ascending already. */
    int sorted = 1;
    for (size_t i = 1; i < c->n && sorted; i++)
        sorted = c->out[i - 1] < c->out[i];
    if (sorted)
        return;
    qsort(c->out, c->n, sizeof(uint32_t), cmp_u32);
    size_t w = 0;
    for (size_t i = 0; i < c->n; i++)
        if (w == 0 || c->out[w - 1] != c->out[i])
            c->out[w++] = c->out[i];
    c->n = w;
}

int imap_seqset_uids(const imap_view *v, const char *set, int by_uid, uint32_t **uids, size_t *n)
{
    collect c = {v, by_uid, NULL, 0, 0, SIZE_MAX, 0};
    uint32_t star = by_uid ? (v->n ? v->uids[v->n - 1] : 0) : v->n;
    /* RFC 3501: "*" in a UID set with an empty mailbox still matches
     * nothing; in a seq set with no messages it is an error (BAD). */
    if (!by_uid && v->n == 0 && strchr(set, '*')) {
        *uids = NULL;
        *n = 0;
        return walk(set, 1, add_view_range, &c) < 0 ? -EINVAL : 0;
    }
    if (walk(set, star ? star : 1, add_view_range, &c) < 0) {
        free(c.out);
        return -EINVAL;
    }
    if (!by_uid) {
        /* A sequence number past the end is an error (RFC 3501 6.4.8 says
         * BAD for invalid message sequence numbers). */
        const char *p = set;
        while (*p) {
            uint32_t x;
            if (*p >= '0' && *p <= '9') {
                if (parse_num(&p, v->n, &x) == 0 && x > v->n) {
                    free(c.out);
                    return -ERANGE;
                }
            } else {
                p++;
            }
        }
    }
    sort_unique(&c);
    *uids = c.out;
    *n = c.n;
    return 0;
}

static void add_raw_range(void *ctx, uint32_t lo, uint32_t hi)
{
    collect *c = ctx;
    if (lo == 0)
        lo = 1;
    for (uint64_t u = lo; u <= hi && !c->overflow; u++)
        push(c, (uint32_t)u);
}

int imap_uidset_parse(const char *set, uint32_t star, uint32_t **uids, size_t *n, size_t max)
{
    collect c = {NULL, 1, NULL, 0, 0, max, 0};
    if (walk(set, star ? star : 1, add_raw_range, &c) < 0 || c.overflow) {
        free(c.out);
        return c.overflow ? -E2BIG : -EINVAL;
    }
    sort_unique(&c);
    *uids = c.out;
    *n = c.n;
    return 0;
}

void imap_uidset_format(buf *b, const uint32_t *uids, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j + 1 < n && uids[j + 1] == uids[j] + 1)
            j++;
        if (i)
            buf_put_u8(b, ',');
        if (j > i)
            buf_printf(b, "%u:%u", uids[i], uids[j]);
        else
            buf_printf(b, "%u", uids[i]);
        i = j + 1;
    }
}
