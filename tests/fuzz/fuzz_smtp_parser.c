/*
 * fuzz_smtp_parser.c - libFuzzer target for the server-side SMTP parsers.
 *
 * The first byte chooses what is fed (bits 0-1: command lines, DATA, BDAT,
 * AUTH payloads; bit 2: LMTP), the second the chunk size and the third the
 * size limit; the rest is the client's byte stream. Lines and message data
 * are fed whole and in chunks, like a session would, and the transcripts
 * must match. Invariants checked on every event: a line is within its
 * limit and holds no NUL, CR or LF; a parsed command's strings are
 * NUL-terminated within their fields; kept message data never exceeds the
 * size limit and holds no bare LF or CR; a refused message keeps nothing.
 * Crashes, sanitizer reports and abort() on a broken invariant are the
 * findings.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "smtp/smtp_parser.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define HDR 3

static void check_cmd(const smtp_cmd *c)
{
    if (strlen(c->helo) > SMTP_HELO_MAX || strlen(c->path.addr) > SMTP_ADDRESS_MAX ||
        strlen(c->envid) > SMTP_ENVID_MAX || strlen(c->orcpt) > SMTP_ORCPT_MAX ||
        strlen(c->did) > SMTP_DID_MAX || strlen(c->mech) >= sizeof(c->mech))
        abort();
    if ((c->verb == SMTP_V_MAIL || c->verb == SMTP_V_RCPT) && c->path.addr[0] &&
        !c->path.postmaster && c->path.addr[c->path.at] != '@')
        abort();
}

static void run_lines(const uint8_t *d, size_t n, size_t chunk, unsigned flags, buf *t)
{
    smtp_line_reader r;
    smtp_line_init(&r, 0);
    size_t off = 0;
    while (off < n) {
        size_t take = chunk && n - off > chunk ? chunk : n - off;
        size_t pos = 0;
        while (pos < take) {
            size_t used;
            enum smtp_line_result res =
                smtp_line_feed(&r, (const char *)d + off + pos, take - pos, &used);
            if (used == 0 || used > take - pos)
                abort();
            pos += used;
            if (res == SMTP_LINE_MORE)
                continue;
            if (res == SMTP_LINE_BAD) {
                buf_printf(t, "BAD %u\n", smtp_line_errors(&r));
                continue;
            }
            size_t len;
            const char *line = smtp_line_text(&r, &len);
            if (len + 2 > SMTP_LINE_MAX_ANY || line[len] != 0 || strlen(line) != len ||
                memchr(line, '\r', len) || memchr(line, '\n', len))
                abort();
            smtp_cmd c;
            char reply[512];
            int rc = smtp_parse_command(line, len, flags, &c, reply, sizeof(reply));
            if (rc < 0) {
                if (reply[0] < '4' || reply[0] > '5' || strlen(reply) < 4)
                    abort();
                buf_printf(t, "ERR %s\n", reply);
            } else {
                check_cmd(&c);
                buf_printf(t, "CMD %d %s %llu\n", (int)c.verb, c.path.addr,
                           (unsigned long long)c.bdat_size);
            }
        }
        off += take;
    }
    smtp_line_free(&r);
}

static void check_kept(const buf *m, uint64_t max)
{
    if (max && m->len > max)
        abort();
    for (size_t i = 0; i < m->len; i++) {
        uint8_t c = m->data[i];
        if (c == '\r' && (i + 1 >= m->len || m->data[i + 1] != '\n'))
            abort();
        if (c == '\n' && (i == 0 || m->data[i - 1] != '\r'))
            abort();
        if (c == 0)
            abort();
    }
}

static void run_data(const uint8_t *d, size_t n, size_t chunk, int dot, uint64_t max, buf *t)
{
    buf msg;
    buf_init(&msg);
    smtp_data_reader r;
    smtp_data_init(&r, dot, max, &msg);
    size_t off = 0;
    int ended = 0;
    while (off < n && !ended) {
        size_t take = chunk && n - off > chunk ? chunk : n - off;
        size_t used;
        if (smtp_data_feed(&r, (const char *)d + off, take, &used) == SMTP_DATA_END)
            ended = 1;
        if (used > take || (!ended && used != take))
            abort();
        off += used;
    }
    if (!dot)
        smtp_data_finish(&r);
    if (r.errors && msg.len)
        abort();
    if (!r.errors)
        check_kept(&msg, max);
    buf_printf(t, "%d %zu %u %llu %zu ", ended, off, r.errors, (unsigned long long)r.size,
               msg.len);
    buf_append(t, msg.data, msg.len);
    buf_free(&msg);
}

static void run_auth(const uint8_t *d, size_t n)
{
    char *out = malloc(n / 4 * 3 + 4);
    long k = smtp_b64_decode((const char *)d, n, out);
    if (k > (long)(n / 4 * 3 + 3))
        abort();
    if (k >= 0) {
        const char *z, *c, *p;
        if (smtp_sasl_plain(out, (size_t)k, &z, &c, &p) == 0 && (!*c || !*p))
            abort();
    }
    free(out);
    /* and the raw bytes as a PLAIN message */
    char *raw = malloc(n + 1);
    memcpy(raw, d, n);
    const char *z, *c, *p;
    smtp_sasl_plain(raw, n, &z, &c, &p);
    free(raw);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < HDR)
        return 0;
    unsigned mode = data[0] & 3;
    unsigned flags = (data[0] & 4) ? SMTP_PARSE_LMTP : 0;
    size_t chunk = 1 + data[1] % 17;
    uint64_t max = data[2] ? (uint64_t)data[2] * 8 : 0;
    const uint8_t *d = data + HDR;
    size_t n = size - HDR;
    buf a, b;
    buf_init(&a);
    buf_init(&b);
    switch (mode) {
    case 0:
        run_lines(d, n, 0, flags, &a);
        run_lines(d, n, chunk, flags, &b);
        break;
    case 1:
    case 2:
        run_data(d, n, 0, mode == 1, max, &a);
        run_data(d, n, chunk, mode == 1, max, &b);
        break;
    default:
        run_auth(d, n);
        break;
    }
    if (a.len != b.len || (a.len && memcmp(a.data, b.data, a.len) != 0))
        abort();
    buf_free(&a);
    buf_free(&b);
    return 0;
}
