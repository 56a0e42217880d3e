/*
 * fuzz_imap_parser.c - libFuzzer target for the IMAP command parser.
 *
 * The first bytes of the input choose the limits, which literals to refuse
 * and the chunk sizes; the rest is the client's byte stream. It is fed
 * three ways (whole, in input-chosen chunks, one byte at a time) like a
 * session would: "+" at CONTINUE unless refused, reset after DONE and
 * ERROR. The three transcripts of events must be identical, and every
 * command must respect the limits. Crashes, sanitizer reports and abort()
 * on a mismatch are the findings.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "imap/imap_parser.h"
#include "lib/buf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define HDR 4

typedef struct run_cfg {
    imap_parser_limits pre, post; /* before and after the first command ("login") */
    uint8_t refuse;               /* bit k: refuse the k-th literal (mod 8) */
    uint32_t seed;                /* chunk sizes; 0 = whole input; 1 = one byte */
} run_cfg;

static void check_args(const imap_parser_limits *lim, const imap_arg *a, size_t n,
                       unsigned depth, size_t *count, uint64_t *lit)
{
    if (n && !a)
        abort();
    for (size_t i = 0; i < n; i++, a++) {
        ++*count;
        if (a->type == IMAP_ARG_LIST) {
            if (depth + 1 > lim->max_depth)
                abort();
            check_args(lim, a->list, a->nlist, depth + 1, count, lit);
            continue;
        }
        if (!a->str || a->str[a->len] != 0)
            abort();
        if (a->type != IMAP_ARG_STRING && (a->len == 0 || memchr(a->str, 0, a->len)))
            abort();
        if (a->type == IMAP_ARG_STRING && !a->literal && memchr(a->str, 0, a->len))
            abort();
        if (a->literal) {
            if (a->len > lim->max_literal)
                abort();
            *lit += a->len;
        }
    }
}

static void record_args(buf *t, const imap_arg *a, size_t n)
{
    buf_put_u32(t, (uint32_t)n);
    for (size_t i = 0; i < n; i++, a++) {
        buf_put_u8(t, (uint8_t)(a->type | a->literal << 4));
        if (a->type == IMAP_ARG_LIST) {
            record_args(t, a->list, a->nlist);
        } else {
            buf_put_u32(t, (uint32_t)a->len);
            buf_append(t, a->str, a->len);
        }
    }
}

static void record_str(buf *t, const char *s)
{
    if (!s) {
        buf_put_u8(t, 0);
        return;
    }
    buf_put_u8(t, 1);
    buf_append(t, s, strlen(s) + 1);
}

static void run(const run_cfg *cfg, const uint8_t *in, size_t len, buf *t)
{
    imap_parser *p = imap_parser_new(&cfg->pre);
    imap_parser_limits lim = cfg->pre;
    imap_parser_limits_default(&lim);
    uint32_t rng = cfg->seed;
    size_t pos = 0;
    unsigned conts = 0, dones = 0;
    buf_reset(t);
    while (pos < len) {
        size_t n = len - pos;
        if (cfg->seed == 1) {
            n = 1;
        } else if (cfg->seed) {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            size_t want = 1 + (rng & 0xff) % (rng & 0x100 ? 7 : 97);
            n = want < n ? want : n;
        }
        size_t used = (size_t)-1;
        enum imap_parse_result r = imap_parser_feed(p, (const char *)in + pos, n, &used);
        if (used > n || (r == IMAP_PARSE_MORE && used != n))
            abort();
        pos += used;
        if (r == IMAP_PARSE_MORE)
            continue;
        buf_put_u8(t, (uint8_t)r);
        buf_put_u64(t, pos); /* events must happen at the same place too */
        if (r == IMAP_PARSE_CONTINUE) {
            buf_put_u64(t, imap_parser_pending_literal(p));
            if (imap_parser_pending_literal(p) > lim.max_literal)
                abort();
            if (!imap_parser_name(p) || !imap_parser_tag(p))
                abort();
            if (!(cfg->refuse & (1u << (conts++ & 7))))
                continue;
            imap_parser_refuse_literal(p);
            r = IMAP_PARSE_ERROR;
        }
        if (r == IMAP_PARSE_DONE) {
            const imap_command *c = imap_parser_command(p);
            if (!c || !c->tag || !c->name || imap_parser_error(p, NULL))
                abort();
            size_t count = 0;
            uint64_t lit = 0;
            check_args(&lim, c->args, c->nargs, 0, &count, &lit);
            if (count > lim.max_args || lit > lim.max_total)
                abort();
            record_str(t, c->tag);
            record_str(t, c->name);
            record_args(t, c->args, c->nargs);
        } else {
            const char *tag;
            const char *why = imap_parser_error(p, &tag);
            if (!why || imap_parser_command(p))
                abort();
            record_str(t, why);
            record_str(t, tag);
            buf_put_u8(t, (uint8_t)(imap_parser_error_too_big(p) | imap_parser_error_fatal(p) << 1));
            if (imap_parser_error_fatal(p)) {
                /* Stays failed and swallows everything. */
                imap_parser_reset(p);
                size_t u;
                if (imap_parser_feed(p, "a NOOP\r\n", 8, &u) != IMAP_PARSE_ERROR || u != 8)
                    abort();
                break;
            }
        }
        imap_parser_reset(p);
        if (r == IMAP_PARSE_DONE && ++dones == 1) {
            imap_parser_set_limits(p, &cfg->post);
            lim = cfg->post;
            imap_parser_limits_default(&lim);
        }
    }
    imap_parser_free(p);
}

static void small_limits(imap_parser_limits *l, uint8_t b)
{
    l->max_line = 1 + (b & 0x3f);
    l->max_literal = 1 + (b & 0x0f);
    l->max_total = 1 + (b >> 3);
    l->max_depth = 1 + (b & 3);
    l->max_args = 1 + (b >> 4);
    l->max_literal_nonsync = b & 0x80 ? 2 : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < HDR)
        return 0;
    run_cfg cfg = {0};
    if (data[0] & 1)
        small_limits(&cfg.pre, data[1]);
    if (data[0] & 2)
        small_limits(&cfg.post, (uint8_t)(data[1] * 7 + 3));
    cfg.refuse = data[0] & 4 ? data[2] : 0;
    uint32_t seed = (uint32_t)data[3] << 8 | data[2] | 2; /* never 0 or 1 */

    const uint8_t *in = data + HDR;
    size_t len = size - HDR;
    buf whole, chunked, bytes;
    buf_init(&whole);
    buf_init(&chunked);
    buf_init(&bytes);
    cfg.seed = 0;
    run(&cfg, in, len, &whole);
    cfg.seed = seed;
    run(&cfg, in, len, &chunked);
    cfg.seed = 1;
    run(&cfg, in, len, &bytes);
    /* (memcmp of empty outputs would pass NULL pointers) */
    if (whole.len != chunked.len || (whole.len && memcmp(whole.data, chunked.data, whole.len) != 0))
        abort();
    if (whole.len != bytes.len || (whole.len && memcmp(whole.data, bytes.data, whole.len) != 0))
        abort();
    buf_free(&whole);
    buf_free(&chunked);
    buf_free(&bytes);
    return 0;
}
