/*
 * fuzz_smtp_reply.c - libFuzzer target for the SMTP reply reader
 * (src/smtp/smtp_reply.h), which reads what remote servers send.
 *
 * The first input byte picks the size of the pieces the rest is fed in
 * (1..64 bytes, 0: all at once), so that replies split anywhere are
 * covered. Besides "no crash, no leak, no UB" it checks: the replies and
 * the error are the same however the bytes are split; every reply has a
 * valid code, an enhanced code of its class or none, and a bounded,
 * printable text; no reply has more than SMTP_REPLY_MAX_LINES lines or a
 * line longer than SMTP_REPLY_MAX_LINE bytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtp/smtp_reply.h"

typedef struct seen {
    int lines;
} seen;

static void on_line(void *arg, int index, const char *text, size_t len)
{
    seen *s = arg;
    if (index != s->lines || len > SMTP_REPLY_MAX_LINE - 4)
        __builtin_trap();
    s->lines++;
    if (s->lines > SMTP_REPLY_MAX_LINES)
        __builtin_trap();
    (void)text;
}

static void check_reply(const smtp_reply *r)
{
    if (r->code < 200 || r->code > 559 || r->code % 100 > 59)
        __builtin_trap();
    size_t tl = strnlen(r->text, sizeof(r->text));
    if (tl >= sizeof(r->text))
        __builtin_trap();
    for (size_t i = 0; i < tl; i++)
        if ((unsigned char)r->text[i] < 0x20 || r->text[i] == 0x7f)
            __builtin_trap();
    size_t el = strnlen(r->enhanced, sizeof(r->enhanced));
    if (el >= sizeof(r->enhanced) || (el > 0 && r->enhanced[0] != '0' + r->code / 100))
        __builtin_trap();
}

/* Feeds data in pieces of step bytes (0: whole); writes the codes of the
 * replies read into codes (at most max) and returns their count, or -1 -
 * count when it stopped at an error. */
static int run(const char *data, size_t n, size_t step, int *codes, int max)
{
    smtp_reply_parser p;
    seen s = {0};
    smtp_reply_parser_init(&p, on_line, &s);
    int count = 0;
    size_t off = 0;
    while (off < n) {
        size_t piece = step ? (n - off < step ? n - off : step) : n - off;
        size_t used = 0;
        smtp_reply r;
        hv_err err = {0};
        int rc = smtp_reply_feed(&p, data + off, piece, &used, &r, &err);
        if (used > piece)
            __builtin_trap();
        off += used;
        if (rc < 0) {
            if (err.code != rc || !err.msg[0])
                __builtin_trap();
            return -1 - count;
        }
        if (rc == 1) {
            check_reply(&r);
            if (s.lines < 1)
                __builtin_trap();
            s.lines = 0;
            if (count < max)
                codes[count] = r.code;
            count++;
        } else if (used != piece) {
            __builtin_trap(); /* "needs more" must take everything */
        }
    }
    return count;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    size_t step = data[0] % 65;
    size_t n = size - 1;
    char *buf = malloc(n ? n : 1);
    if (n)
        memcpy(buf, data + 1, n);
    int a[64], b[64];
    int ra = run(buf, n, 0, a, 64);
    int rb = run(buf, n, step, b, 64);
    int k = ra < 0 ? -1 - ra : ra;
    if (ra != rb || memcmp(a, b, sizeof(int) * (size_t)(k < 64 ? k : 64)) != 0)
        __builtin_trap();
    free(buf);
    return 0;
}
