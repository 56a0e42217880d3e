/*
 * test_repl_proto.c - the replication protocol: messages built by the
 * builders parse back to the same fields, whole and one byte at a time;
 * bad CRCs, oversize payloads, unknown types, malformed fields and bad
 * account names end the stream with a reason; the handshake proof depends
 * on every input and on the direction.
 */
#include <string.h>

#include "lib/buf.h"
#include "repl/repl_proto.h"
#include "testlib.h"

/* Parses all of b; returns how many messages, the last one in *last. */
static int parse_all(const buf *b, int bytewise, uint32_t limit, repl_msg *last, buf *keep,
                     hv_err *err)
{
    repl_parser p;
    repl_parser_init(&p, limit);
    int n = 0, rc = 0;
    size_t off = 0;
    while (off < b->len) {
        size_t len = bytewise ? 1 : b->len - off, used;
        repl_msg m;
        rc = repl_parser_feed(&p, b->data + off, len, &used, &m, err);
        off += used;
        if (rc < 0)
            break;
        if (rc == 1) {
            n++;
            /* Keep a copy: the message points into the parser. */
            static char acct[REPL_ACCOUNT_MAX + 1], text[REPL_TEXT_MAX + 1];
            static uint8_t b32[32];
            buf_reset(keep);
            buf_append(keep, m.data ? m.data : (const uint8_t *)"", m.data_len);
            *last = m;
            last->data = keep->data;
            memcpy(acct, m.account ? m.account : "", m.account_len);
            last->account = acct;
            memcpy(text, m.text ? m.text : "", m.text_len);
            last->text = text;
            if (m.bytes32) {
                memcpy(b32, m.bytes32, 32);
                last->bytes32 = b32;
            }
        }
    }
    repl_parser_free(&p);
    return rc < 0 ? rc : n;
}

TEST(round_trip_every_builder)
{
    uint8_t id[32], d[32];
    for (int i = 0; i < 32; i++) {
        id[i] = (uint8_t)i;
        d[i] = (uint8_t)(255 - i);
    }
    uint32_t crcs[3] = {1, 2, 0xffffffffu};
    for (int bytewise = 0; bytewise < 2; bytewise++) {
        buf b, keep;
        buf_init(&b);
        buf_init(&keep);
        repl_msg m;
        hv_err err = {0};

        repl_build_frames(&b, "user@example.org", 5, 9, "0123456789abcdef0123456789abcdefXYZ", 35);
        CHECK(parse_all(&b, bytewise, REPL_MAX_PAYLOAD, &m, &keep, &err) == 1);
        CHECK(m.type == REPL_FRAMES && m.a == 5 && m.b == 9 && m.data_len == 35);
        CHECK(m.account_len == 16 && memcmp(m.account, "user@example.org", 16) == 0);
        CHECK(memcmp(m.data, "0123456789abcdef0123456789abcdefXYZ", 35) == 0);

        buf_reset(&b);
        repl_build_blob(&b, "a.b+c@x-y.example", id, 10, 4, "hello!", 6);
        CHECK(parse_all(&b, bytewise, REPL_MAX_PAYLOAD, &m, &keep, &err) == 1);
        CHECK(m.type == REPL_BLOB && m.a == 10 && m.b == 4 && m.data_len == 6);

        buf_reset(&b);
        repl_build_position(&b, "u@d.org", 77, 0xdeadbeef);
        repl_build_ack(&b, "u@d.org", 78);
        repl_build_digest(&b, "u@d.org", 3, 78, 1, d);
        CHECK(parse_all(&b, bytewise, REPL_MAX_PAYLOAD, &m, &keep, &err) == 3);
        CHECK(m.type == REPL_DIGEST && m.a == 3 && m.b == 78 && m.c == 1);
        CHECK(memcmp(m.bytes32, d, 32) == 0);

        buf_reset(&b);
        repl_build_crcs(&b, "u@d.org", 9, 100, crcs, 3);
        CHECK(parse_all(&b, bytewise, REPL_MAX_PAYLOAD, &m, &keep, &err) == 1);
        CHECK(m.type == REPL_CRCS && m.b == 100 && m.u32 == 3 && le32(m.data + 8) == 0xffffffffu);

        buf_reset(&b);
        repl_build_hello(&b, REPL_ROLE_REPLICA, id, "store-b");
        CHECK(parse_all(&b, bytewise, REPL_MAX_PAYLOAD_PREAUTH, &m, &keep, &err) == 1);
        CHECK(m.type == REPL_HELLO && m.role == REPL_ROLE_REPLICA && m.version == 1);
        CHECK(m.text_len == 7 && memcmp(m.text, "store-b", 7) == 0);

        buf_reset(&b);
        repl_build_rejoin(&b, "u@d.org", 41, 3);
        repl_build_salvage_end(&b, "u@d.org", 41, 6, 2);
        repl_build_salvage_ok(&b, "u@d.org", 5, 1);
        CHECK(parse_all(&b, bytewise, REPL_MAX_PAYLOAD, &m, &keep, &err) == 3);
        CHECK(m.type == REPL_SALVAGE_OK && m.a == 5 && m.b == 1);
        buf_reset(&b);
        repl_build_salvage_end(&b, "u@d.org", 41, 6, 2);
        CHECK(parse_all(&b, bytewise, REPL_MAX_PAYLOAD, &m, &keep, &err) == 1);
        CHECK(m.type == REPL_SALVAGE_END && m.a == 41 && m.b == 6 && m.c == 2);
        buf_reset(&b);
        repl_build_rejoin(&b, "u@d.org", 41, 3);
        CHECK(parse_all(&b, bytewise, REPL_MAX_PAYLOAD, &m, &keep, &err) == 1);
        CHECK(m.type == REPL_REJOIN && m.a == 41 && m.b == 3);

        buf_reset(&b);
        repl_build_salvage(&b, "u@d.org", 42, 10, 4, 0x5, -86400, "Work/Q1", 7,
                           "$Project Later", 14, "hello!", 6);
        CHECK(parse_all(&b, bytewise, REPL_MAX_PAYLOAD, &m, &keep, &err) == 1);
        CHECK(m.type == REPL_SALVAGE && m.a == 42 && m.b == 10 && m.c == 4 && m.d == 5);
        CHECK((int64_t)m.e == -86400 && m.data_len == 6 && memcmp(m.data, "hello!", 6) == 0);
        CHECK(m.text_len == 7 && memcmp(m.text, "Work/Q1", 7) == 0);
        CHECK(m.text2_len == 14);

        buf_reset(&b);
        repl_build_error(&b, "u@d.org", -28, "disk full\n(no space)");
        CHECK(parse_all(&b, bytewise, REPL_MAX_PAYLOAD, &m, &keep, &err) == 1);
        CHECK(m.type == REPL_ERROR && m.code == -28 && m.text_len == 20);
        CHECK(memchr(m.text, '\n', m.text_len) == NULL); /* cleaned to printable */
        buf_free(&b);
        buf_free(&keep);
    }
}

TEST(damage_is_refused)
{
    buf b, keep;
    buf_init(&b);
    buf_init(&keep);
    repl_msg m;
    hv_err err = {0};
    repl_build_ack(&b, "u@d.org", 5);
    b.data[b.len - 1] ^= 1; /* payload bit flip */
    CHECK(parse_all(&b, 0, REPL_MAX_PAYLOAD, &m, &keep, &err) == -EBADMSG);
    CHECKM(strstr(err.msg, "CRC") != NULL, "%s", err.msg);

    buf_reset(&b);
    repl_build_frames(&b, "u@d.org", 1, 1, "0123456789abcdef0123456789abcdefXYZ", 35);
    CHECK(parse_all(&b, 1, 40, &m, &keep, &err) == -EMSGSIZE); /* over the limit */

    buf_reset(&b);
    repl_build_ack(&b, "u@d.org", 5);
    b.data[4] = 99; /* unknown type */
    CHECK(parse_all(&b, 0, REPL_MAX_PAYLOAD, &m, &keep, &err) == -EPROTO);

    static const char *bad_names[] = {"../etc@x.org", "u@", "@d.org", "u@@d.org", "U@d.org",
                                      "u@d..org", ".u@d.org", "u d@x.org", "noat"};
    for (size_t i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++) {
        buf_reset(&b);
        repl_build_ack(&b, bad_names[i], 5);
        CHECKM(parse_all(&b, 0, REPL_MAX_PAYLOAD, &m, &keep, &err) == -EPROTO, "%s",
               bad_names[i]);
    }

    /* A chunk past the blob's end, and FRAMES with last < first. */
    uint8_t id[32] = {0};
    buf_reset(&b);
    repl_build_blob(&b, "u@d.org", id, 4, 2, "abc", 3);
    CHECK(parse_all(&b, 0, REPL_MAX_PAYLOAD, &m, &keep, &err) == -EPROTO);
    buf_reset(&b);
    repl_build_frames(&b, "u@d.org", 9, 5, "0123456789abcdef0123456789abcdefXYZ", 35);
    CHECK(parse_all(&b, 0, REPL_MAX_PAYLOAD, &m, &keep, &err) == -EPROTO);

    /* SALVAGE: keyword bits (the sender's numbering) instead of names, a
     * chunk past the end, an empty or control-character mailbox name. */
    buf_reset(&b);
    repl_build_salvage(&b, "u@d.org", 42, 3, 0, 1ull << 8, 0, "INBOX", 5, "", 0, "abc", 3);
    CHECK(parse_all(&b, 0, REPL_MAX_PAYLOAD, &m, &keep, &err) == -EPROTO);
    buf_reset(&b);
    repl_build_salvage(&b, "u@d.org", 42, 3, 2, 0, 0, "INBOX", 5, "", 0, "abc", 3);
    CHECK(parse_all(&b, 0, REPL_MAX_PAYLOAD, &m, &keep, &err) == -EPROTO);
    buf_reset(&b);
    repl_build_salvage(&b, "u@d.org", 42, 3, 0, 0, 0, "", 0, "", 0, "abc", 3);
    CHECK(parse_all(&b, 0, REPL_MAX_PAYLOAD, &m, &keep, &err) == -EPROTO);
    buf_reset(&b);
    repl_build_salvage(&b, "u@d.org", 42, 3, 0, 0, 0, "IN\nBOX", 6, "", 0, "abc", 3);
    CHECK(parse_all(&b, 0, REPL_MAX_PAYLOAD, &m, &keep, &err) == -EPROTO);
    buf_reset(&b);
    repl_build_salvage(&b, "u@d.org", 0, 3, 0, 0, 0, "INBOX", 5, "", 0, "abc", 3);
    CHECK(parse_all(&b, 0, REPL_MAX_PAYLOAD, &m, &keep, &err) == -EPROTO); /* modseq 0 */

    /* Trailing bytes inside a payload. */
    buf_reset(&b);
    size_t s = repl_msg_begin(&b, REPL_ACK);
    repl_put_name(&b, "u@d.org", 7);
    buf_put_u64(&b, 5);
    buf_put_u8(&b, 0);
    repl_msg_end(&b, s);
    CHECK(parse_all(&b, 0, REPL_MAX_PAYLOAD, &m, &keep, &err) == -EPROTO);

    /* After a failure the parser stays failed. */
    repl_parser p;
    repl_parser_init(&p, 8);
    size_t used;
    buf_reset(&b);
    repl_build_ack(&b, "u@d.org", 5);
    CHECK(repl_parser_feed(&p, b.data, b.len, &used, &m, &err) < 0);
    CHECK(repl_parser_feed(&p, b.data, b.len, &used, &m, &err) < 0);
    repl_parser_free(&p);
    buf_free(&b);
    buf_free(&keep);
}

TEST(auth_mac_binds_everything)
{
    uint8_t na[32] = {1}, nb[32] = {2}, ex[32] = {3}, m1[32], m2[32];
    const uint8_t *s = (const uint8_t *)"sixteen-byte-key!";
    repl_auth_mac(s, 17, REPL_ROLE_PRIMARY, na, nb, ex, m1);
    repl_auth_mac(s, 17, REPL_ROLE_PRIMARY, na, nb, ex, m2);
    CHECK(memcmp(m1, m2, 32) == 0);
    repl_auth_mac(s, 17, REPL_ROLE_REPLICA, na, nb, ex, m2); /* reflection */
    CHECK(memcmp(m1, m2, 32) != 0);
    repl_auth_mac(s, 17, REPL_ROLE_PRIMARY, nb, na, ex, m2);
    CHECK(memcmp(m1, m2, 32) != 0);
    ex[5] = 1; /* another TLS session */
    repl_auth_mac(s, 17, REPL_ROLE_PRIMARY, na, nb, ex, m2);
    CHECK(memcmp(m1, m2, 32) != 0);
    ex[5] = 0;
    repl_auth_mac((const uint8_t *)"sixteen-byte-key?", 17, REPL_ROLE_PRIMARY, na, nb, ex, m2);
    CHECK(memcmp(m1, m2, 32) != 0);
}

int main(void)
{
    RUN(round_trip_every_builder);
    RUN(damage_is_refused);
    RUN(auth_mac_binds_everything);
    return t_done();
}
