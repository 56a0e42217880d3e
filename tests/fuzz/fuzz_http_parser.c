/*
 * fuzz_http_parser.c - libFuzzer target for the http service's request
 * reader (src/http/http_parser.h), which reads what arrives on http_port.
 *
 * The first input byte picks the size of the pieces the rest is fed in
 * (1..64 bytes, 0: all at once). Requests are read one after the other,
 * as a keep-alive connection would. Besides "no crash, no leak, no UB" it
 * checks: the outcome (each request's method, target, version and
 * keep-alive, then the error status) is the same however the bytes are
 * split; "needs more" takes everything it is given; no head is longer
 * than HTTP_HEAD_MAX; a request's method is a token of at most
 * HTTP_METHOD_MAX bytes, its target visible ASCII of at most
 * HTTP_TARGET_MAX bytes whose path lies inside it and starts with '/'
 * (or is empty: the root of an absolute URI); an error carries one of
 * the statuses the header promises and a reason.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/http_parser.h"
#include "lib/buf.h"

static void check_request(const http_parser *p)
{
    const http_request *r = &p->req;
    size_t ml = strnlen(r->method, sizeof(r->method));
    size_t tl = strnlen(r->target, sizeof(r->target));
    if (ml == 0 || ml > HTTP_METHOD_MAX || tl == 0 || tl > HTTP_TARGET_MAX)
        __builtin_trap();
    for (size_t i = 0; i < tl; i++)
        if ((unsigned char)r->target[i] < 0x21 || (unsigned char)r->target[i] > 0x7e)
            __builtin_trap();
    if (r->path_off > tl || r->path_len > tl - r->path_off)
        __builtin_trap();
    if (r->path_len && r->target[r->path_off] != '/')
        __builtin_trap();
    if (memchr(r->target + r->path_off, '?', r->path_len))
        __builtin_trap();
    if (r->minor != 0 && r->minor != 1)
        __builtin_trap();
    if (p->head_len > HTTP_HEAD_MAX || r->fields > HTTP_FIELDS_MAX)
        __builtin_trap();
}

static void check_error(const http_parser *p)
{
    static const int allowed[] = {400, 414, 431, 501, 505};
    int ok = 0;
    for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
        ok |= p->status == allowed[i];
    if (!ok || !p->reason || !*p->reason || p->head_len > HTTP_HEAD_MAX)
        __builtin_trap();
}

/* Feeds data in pieces of step bytes (0: whole) and writes a description
 * of every outcome into out. */
static void run(const char *data, size_t n, size_t step, buf *out)
{
    http_parser p;
    http_parser_init(&p);
    size_t off = 0;
    while (off < n) {
        size_t piece = step ? (n - off < step ? n - off : step) : n - off;
        size_t used = 0;
        int rc = http_parser_feed(&p, data + off, piece, &used);
        if (used > piece)
            __builtin_trap();
        off += used;
        if (rc == HTTP_PARSE_ERROR) {
            check_error(&p);
            buf_printf(out, "E%d", p.status);
            return;
        }
        if (rc == HTTP_PARSE_DONE) {
            check_request(&p);
            const http_request *r = &p.req;
            buf_printf(out, "R%s %s %d %d %zu %zu|", r->method, r->target, r->minor,
                       r->keep_alive, r->path_off, r->path_len);
            http_parser_init(&p);
        } else if (used != piece) {
            __builtin_trap(); /* "needs more" must take everything */
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    size_t step = data[0] % 65;
    const char *in = (const char *)data + 1;
    size_t n = size - 1;
    buf a, b;
    buf_init(&a);
    buf_init(&b);
    run(in, n, 0, &a);
    run(in, n, step, &b);
    if (a.len != b.len || (a.len && memcmp(a.data, b.data, a.len) != 0))
        __builtin_trap();
    buf_free(&a);
    buf_free(&b);
    return 0;
}
