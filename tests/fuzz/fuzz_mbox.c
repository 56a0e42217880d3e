/*
 * fuzz_mbox.c - libFuzzer target for the mbox reader and writer.
 *
 * The first bytes choose the message size limit and the seed of the chunk
 * sizes; the rest is the mbox. Checked on every input:
 *   - feeding in random chunks gives exactly what feeding it whole gives
 *     (the parser does not depend on where reads end);
 *   - every message read, written out again with mbox_write_message and
 *     read back, is the same bytes (and date), and is one message;
 *   - nothing emitted is over the limit, and sanitizers see no fault;
 *   - on the side, a Maildir++ folder name that decodes encodes back to a
 *     name that decodes to the same (the export/import naming round trip).
 * Build: make build/fuzz/fuzz_mbox; run: make fuzz (or the binary with a
 * corpus folder, e.g. tests/fuzz/corpus/fuzz_mbox).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "store/maildir_reader.h"
#include "store/mbox_parser.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MAX_MSGS 4096

typedef struct fuzz_run {
    uint64_t digest[FUZZ_MAX_MSGS];
    size_t n;
    uint64_t max;
    int check_round_trip;
} fuzz_run;

static uint64_t fuzz_fnv(uint64_t h, const void *p, size_t n)
{
    const uint8_t *c = p;
    for (size_t i = 0; i < n; i++) {
        h ^= c[i];
        h *= 1099511628211ull;
    }
    return h;
}

typedef struct fuzz_one {
    int n;
    buf data;
    int64_t date;
} fuzz_one;

static int fuzz_keep_one(void *ctx, const mbox_message *m, hv_err *err)
{
    (void)err;
    fuzz_one *o = ctx;
    if (o->n++ == 0 && m->data) {
        buf_append(&o->data, m->data, (size_t)m->size);
        o->date = m->internal_date;
    }
    return 0;
}

/* Write m out as mboxrd and read it back: it must come back unchanged. */
static void fuzz_round_trip(const mbox_message *m, uint64_t max)
{
    buf w;
    buf_init(&w);
    mbox_write_message(&w, m->data, (size_t)m->size, m->internal_date);
    fuzz_one o = {0};
    buf_init(&o.data);
    mbox_parser_options opt = {.max_message_size = max, .now = 1};
    mbox_parser *p = mbox_parser_new(&opt, fuzz_keep_one, &o);
    hv_err err;
    if (mbox_parser_feed(p, w.data, w.len, &err) != 0 || mbox_parser_finish(p, &err) != 0)
        abort();
    if (o.n != 1 || o.data.len != m->size || (m->size && memcmp(o.data.data, m->data, m->size)))
        abort();
    /* asctime holds years 1900..9999 (and the parser takes no older) */
    if (m->internal_date >= -2208988800ll && m->internal_date <= 253402300799ll &&
        o.date != m->internal_date)
        abort();
    mbox_parser_free(p);
    buf_free(&o.data);
    buf_free(&w);
}

static int fuzz_collect(void *ctx, const mbox_message *m, hv_err *err)
{
    (void)err;
    fuzz_run *r = ctx;
    if (m->too_big != (m->size > r->max) || (m->too_big && m->data) || (!m->too_big && !m->data))
        abort();
    uint64_t h = 14695981039346656037ull;
    if (m->data)
        h = fuzz_fnv(h, m->data, (size_t)m->size);
    h = fuzz_fnv(h, &m->size, sizeof(m->size));
    h = fuzz_fnv(h, &m->number, sizeof(m->number));
    h = fuzz_fnv(h, &m->offset, sizeof(m->offset));
    h = fuzz_fnv(h, &m->internal_date, sizeof(m->internal_date));
    h = fuzz_fnv(h, &m->date_source, sizeof(m->date_source));
    if (r->n < FUZZ_MAX_MSGS)
        r->digest[r->n] = h;
    r->n++;
    if (r->check_round_trip && m->data)
        fuzz_round_trip(m, r->max);
    return 0;
}

static int fuzz_parse(const uint8_t *d, size_t n, uint32_t seed, fuzz_run *r, hv_err *err)
{
    mbox_parser_options opt = {.max_message_size = r->max, .now = 1};
    mbox_parser *p = mbox_parser_new(&opt, fuzz_collect, r);
    size_t i = 0;
    int rc = 0;
    while (i < n && rc == 0) {
        size_t k = n - i;
        if (seed) {
            seed = seed * 1664525u + 1013904223u;
            size_t want = (seed >> 24) % 4 == 0 ? 1 : (seed >> 8) % 64 + 1;
            k = want < k ? want : k;
        }
        rc = mbox_parser_feed(p, d + i, k, err);
        i += k;
    }
    if (rc == 0)
        rc = mbox_parser_finish(p, err);
    if (mbox_parser_feed(p, "x", 1, err) == 0) /* a finished parser must refuse input */
        abort();
    mbox_parser_free(p);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    static const uint64_t limits[4] = {16, 100, 4096, 0};
    uint32_t seed = (uint32_t)data[1] | (uint32_t)data[2] << 8 | (uint32_t)data[3] << 16 | 1u;
    static fuzz_run whole, chunked;
    memset(&whole, 0, sizeof(whole));
    memset(&chunked, 0, sizeof(chunked));
    whole.max = chunked.max = limits[data[0] & 3] ? limits[data[0] & 3] : MBOX_DEFAULT_MAX_MESSAGE;
    whole.check_round_trip = 1;
    hv_err e1, e2;
    int rc1 = fuzz_parse(data + 4, size - 4, 0, &whole, &e1);
    int rc2 = fuzz_parse(data + 4, size - 4, seed, &chunked, &e2);
    if (rc1 != rc2 || whole.n != chunked.n)
        abort();
    for (size_t i = 0; i < whole.n && i < FUZZ_MAX_MSGS; i++)
        if (whole.digest[i] != chunked.digest[i])
            abort();

    /* The date parsers on raw bytes: no crash, no out-of-bounds read. */
    int64_t t;
    mbox_date_parse_rfc5322((const char *)data + 4, size - 4, &t);
    mbox_date_from_line((const char *)data + 4, size - 4, &t);
    mbox_date_from_header(data + 4, size - 4, &t);

    if (size - 4 < 256) {
        buf name, again;
        buf_init(&name);
        buf_init(&again);
        char enc[2048];
        if (maildir_mutf7_decode((const char *)data + 4, size - 4, &name) == 0 &&
            name.len == strlen((const char *)name.data) && !memchr(name.data, '/', name.len) &&
            maildir_folder_name((const char *)name.data, enc, sizeof(enc)) == 0) {
            if (enc[0] != '.' || strchr(enc + 1, '.') ||
                maildir_mutf7_decode(enc + 1, strlen(enc + 1), &again) < 0 ||
                again.len != name.len || memcmp(again.data, name.data, name.len) != 0)
                abort();
        }
        buf_free(&name);
        buf_free(&again);
    }
    return 0;
}
