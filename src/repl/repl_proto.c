/*
 * repl_proto.c - encoding, bounded parsing and the handshake proof of the
 * replication protocol (see repl_proto.h and docs/replication.md).
 */
#include "repl/repl_proto.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <string.h>

#include "lib/crc32c.h"

static const char *const type_names[] = {
    "?",     "HELLO", "AUTH", "ACCOUNT", "POSITION", "BLOB",       "FRAMES", "ACK",
    "ERROR", "PING",  "PONG", "DIGEST_REQ", "DIGEST", "CRCS_REQ", "CRCS",
    "EPOCH", "SWITCHOVER", "SWITCHED", "REJOIN", "SALVAGE", "SALVAGE_END", "SALVAGE_OK",
    "MOVE_RESET", "MOVE_COMMIT", "MOVE_DONE",
};

const char *repl_msg_type_name(int type)
{
    return type >= 1 && type <= REPL_MSG_TYPE_MAX ? type_names[type] : "?";
}

void repl_parser_init(repl_parser *p, uint32_t limit)
{
    memset(p, 0, sizeof(*p));
    buf_init(&p->payload);
    p->limit = limit;
}

void repl_parser_free(repl_parser *p) { buf_free(&p->payload); }

void repl_parser_set_limit(repl_parser *p, uint32_t limit) { p->limit = limit; }

static uint32_t msg_crc(const uint8_t *hdr, const uint8_t *payload, size_t len)
{
    return crc32c(crc32c(0, hdr, 8), payload, len);
}

int repl_parser_feed(repl_parser *p, const uint8_t *data, size_t len, size_t *used,
                     repl_msg *out, hv_err *err)
{
    size_t off = 0;
    *used = 0;
    if (p->failed)
        return hv_err_set(err, -EPROTO, "replication stream already failed");
    for (;;) {
        if (!p->in_payload) {
            size_t take = REPL_HDR - p->hlen;
            if (take > len - off)
                take = len - off;
            memcpy(p->hdr + p->hlen, data + off, take);
            p->hlen += take;
            off += take;
            if (p->hlen < REPL_HDR) {
                *used = off;
                return 0;
            }
            uint32_t plen = le32(p->hdr);
            uint8_t type = p->hdr[4], ver = p->hdr[5];
            if (ver != REPL_PROTO_VERSION || le16(p->hdr + 6) != 0) {
                p->failed = 1;
                *used = off;
                return hv_err_set(err, -EPROTO, "message version %u (want %u) or reserved bits set",
                                  ver, REPL_PROTO_VERSION);
            }
            if (type < 1 || type > REPL_MSG_TYPE_MAX) {
                p->failed = 1;
                *used = off;
                return hv_err_set(err, -EPROTO, "unknown message type %u", type);
            }
            if (plen > p->limit) {
                p->failed = 1;
                *used = off;
                return hv_err_set(err, -EMSGSIZE, "%s message of %u bytes is over the limit of %u",
                                  repl_msg_type_name(type), plen, p->limit);
            }
            buf_reset(&p->payload);
            buf_reserve(&p->payload, plen);
            p->need = plen;
            p->in_payload = 1;
        }
        size_t take = p->need;
        if (take > len - off)
            take = len - off;
        buf_append(&p->payload, data + off, take);
        p->need -= take;
        off += take;
        *used = off;
        if (p->need)
            return 0;
        p->in_payload = 0;
        p->hlen = 0;
        if (msg_crc(p->hdr, p->payload.data, p->payload.len) != le32(p->hdr + 8)) {
            p->failed = 1;
            return hv_err_set(err, -EBADMSG, "%s message fails its CRC",
                              repl_msg_type_name(p->hdr[4]));
        }
        int rc = repl_msg_decode(p->hdr[4], p->payload.data, p->payload.len, out, err);
        if (rc < 0) {
            p->failed = 1;
            return rc;
        }
        return 1;
    }
}

/* --- decoding --- */

static int account_ok(const char *s, size_t n)
{
    if (n < 3 || n > REPL_ACCOUNT_MAX || s[0] == '.' || s[0] == '-' || s[0] == '@')
        return 0;
    int ats = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '@') {
            if (++ats > 1 || i + 1 == n || s[i - 1] == '.' || s[i + 1] == '.' || s[i + 1] == '-')
                return 0;
        } else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                     c == '+' || c == '-')) {
            return 0;
        }
        if (c == '.' && i + 1 < n && s[i + 1] == '.')
            return 0;
    }
    return ats == 1 && s[n - 1] != '.';
}

static int text_ok(const char *s, size_t n, size_t max)
{
    if (n > max)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] == 0x7f)
            return 0;
    return 1;
}

static const char *rd_name(rd *r, size_t *len)
{
    uint16_t n = rd_u16(r);
    const uint8_t *p = rd_bytes(r, n);
    *len = r->ok ? n : 0;
    return (const char *)p;
}

int repl_msg_decode(uint8_t type, const uint8_t *p, size_t len, repl_msg *m, hv_err *err)
{
    memset(m, 0, sizeof(*m));
    m->type = (enum repl_msg_type)type;
    rd r;
    rd_init(&r, p, len);
    int need_account = 1, rest = 0;
    switch (type) {
    case REPL_HELLO:
        need_account = 0;
        m->version = rd_u16(&r);
        m->role = rd_u8(&r);
        if (rd_u8(&r) != 0 || m->role > REPL_ROLE_MOVER)
            return hv_err_set(err, -EPROTO, "HELLO with unknown role or reserved bits");
        m->bytes32 = rd_bytes(&r, 32);
        m->text = rd_name(&r, &m->text_len);
        if (r.ok && (m->text_len > REPL_STORE_NAME_MAX || !text_ok(m->text, m->text_len, 64)))
            return hv_err_set(err, -EPROTO, "HELLO with a bad store name");
        break;
    case REPL_AUTH:
        need_account = 0;
        m->bytes32 = rd_bytes(&r, 32);
        break;
    case REPL_PING:
    case REPL_PONG:
    case REPL_EPOCH:
    case REPL_SWITCHOVER:
    case REPL_SWITCHED:
        need_account = 0;
        m->a = rd_u64(&r);
        break;
    case REPL_ERROR:
        m->account = rd_name(&r, &m->account_len);
        need_account = m->account_len > 0;
        m->code = (int32_t)rd_u32(&r);
        m->text = rd_name(&r, &m->text_len);
        if (r.ok && !text_ok(m->text, m->text_len, REPL_TEXT_MAX))
            return hv_err_set(err, -EPROTO, "ERROR with an unprintable or long reason");
        break;
    default:
        m->account = rd_name(&r, &m->account_len);
        switch (type) {
        case REPL_ACCOUNT:
        case REPL_ACK:
        case REPL_MOVE_COMMIT:
        case REPL_MOVE_DONE:
            m->a = rd_u64(&r);
            break;
        case REPL_MOVE_RESET:
            break;
        case REPL_POSITION:
            m->a = rd_u64(&r);
            m->u32 = rd_u32(&r);
            break;
        case REPL_BLOB:
            m->bytes32 = rd_bytes(&r, 32);
            m->a = rd_u64(&r);
            m->b = rd_u64(&r);
            rest = 1;
            break;
        case REPL_FRAMES:
            m->a = rd_u64(&r);
            m->b = rd_u64(&r);
            rest = 1;
            break;
        case REPL_DIGEST_REQ:
            m->a = rd_u64(&r);
            break;
        case REPL_DIGEST:
            m->a = rd_u64(&r);
            m->b = rd_u64(&r);
            m->c = rd_u8(&r);
            m->bytes32 = rd_bytes(&r, 32);
            if (m->c > 1)
                return hv_err_set(err, -EPROTO, "DIGEST with a bad exists field");
            break;
        case REPL_CRCS_REQ:
            m->a = rd_u64(&r);
            m->b = rd_u64(&r);
            m->u32 = rd_u32(&r);
            if (r.ok && (m->u32 == 0 || m->u32 > REPL_CRCS_MAX || m->b == 0))
                return hv_err_set(err, -EPROTO, "CRCS_REQ out of range");
            break;
        case REPL_CRCS:
            m->a = rd_u64(&r);
            m->b = rd_u64(&r);
            m->u32 = rd_u32(&r);
            if (r.ok && m->u32 > REPL_CRCS_MAX)
                return hv_err_set(err, -EPROTO, "CRCS with too many entries");
            m->data = rd_bytes(&r, (size_t)m->u32 * 4);
            m->data_len = (size_t)m->u32 * 4;
            break;
        case REPL_REJOIN:
        case REPL_SALVAGE_OK:
            m->a = rd_u64(&r);
            m->b = rd_u64(&r);
            break;
        case REPL_SALVAGE_END:
            m->a = rd_u64(&r);
            m->b = rd_u64(&r);
            m->c = rd_u64(&r);
            break;
        case REPL_SALVAGE:
            m->a = rd_u64(&r);
            m->b = rd_u64(&r);
            m->c = rd_u64(&r);
            m->d = rd_u64(&r);
            m->e = rd_u64(&r);
            m->text = rd_name(&r, &m->text_len);
            m->text2 = rd_name(&r, &m->text2_len);
            if (r.ok && (m->text_len == 0 || !text_ok(m->text, m->text_len, REPL_MAILBOX_MAX) ||
                         !text_ok(m->text2, m->text2_len, REPL_KEYWORDS_MAX)))
                return hv_err_set(err, -EPROTO, "SALVAGE with a bad mailbox name or keywords");
            if (r.ok && (m->d & ~0xffull))
                return hv_err_set(err, -EPROTO, "SALVAGE with flags beyond the system flags");
            rest = 1;
            break;
        }
    }
    if (rest && r.ok) {
        m->data = r.p;
        m->data_len = r.left;
        r.left = 0;
    }
    if (!r.ok)
        return hv_err_set(err, -EPROTO, "%s message is truncated", repl_msg_type_name(type));
    if (r.left)
        return hv_err_set(err, -EPROTO, "%s message has %zu unexpected bytes at its end",
                          repl_msg_type_name(type), r.left);
    if (need_account && !account_ok(m->account, m->account_len))
        return hv_err_set(err, -EPROTO, "%s message names no valid account",
                          repl_msg_type_name(type));
    if (type == REPL_BLOB) {
        if (m->a > (1ull << 40) || m->b > m->a || m->data_len > REPL_BLOB_CHUNK ||
            m->data_len > m->a - m->b || (m->data_len == 0 && m->a != 0))
            return hv_err_set(err, -EPROTO, "BLOB chunk out of range (size %llu offset %llu "
                              "length %zu)", (unsigned long long)m->a,
                              (unsigned long long)m->b, m->data_len);
    }
    if (type == REPL_SALVAGE) {
        if (m->a == 0 || m->b > (1ull << 40) || m->c > m->b || m->data_len > REPL_BLOB_CHUNK ||
            m->data_len > m->b - m->c || (m->data_len == 0 && m->b != 0))
            return hv_err_set(err, -EPROTO, "SALVAGE chunk out of range (modseq %llu size %llu "
                              "offset %llu length %zu)", (unsigned long long)m->a,
                              (unsigned long long)m->b, (unsigned long long)m->c, m->data_len);
    }
    if (type == REPL_FRAMES && (m->a == 0 || m->b < m->a || m->data_len < 32))
        return hv_err_set(err, -EPROTO, "FRAMES with a bad modseq range or no frames");
    return 0;
}

/* --- encoding --- */

size_t repl_msg_begin(buf *b, enum repl_msg_type type)
{
    size_t start = b->len;
    uint8_t h[REPL_HDR] = {0};
    h[4] = (uint8_t)type;
    h[5] = REPL_PROTO_VERSION;
    buf_append(b, h, sizeof(h));
    return start;
}

void repl_msg_end(buf *b, size_t start)
{
    uint8_t *h = b->data + start;
    size_t plen = b->len - start - REPL_HDR;
    st32(h, (uint32_t)plen);
    st32(h + 8, msg_crc(h, h + REPL_HDR, plen));
}

void repl_put_name(buf *b, const char *s, size_t len)
{
    buf_put_u16(b, (uint16_t)len);
    buf_append(b, s, len);
}

static void put_acct(buf *b, const char *acct) { repl_put_name(b, acct, strlen(acct)); }

void repl_build_hello(buf *b, enum repl_role role, const uint8_t nonce[32], const char *store)
{
    size_t s = repl_msg_begin(b, REPL_HELLO);
    buf_put_u16(b, REPL_PROTO_VERSION);
    buf_put_u8(b, (uint8_t)role);
    buf_put_u8(b, 0);
    buf_append(b, nonce, 32);
    put_acct(b, store);
    repl_msg_end(b, s);
}

void repl_build_auth(buf *b, const uint8_t mac[32])
{
    size_t s = repl_msg_begin(b, REPL_AUTH);
    buf_append(b, mac, 32);
    repl_msg_end(b, s);
}

void repl_build_account(buf *b, const char *acct, uint64_t highest)
{
    size_t s = repl_msg_begin(b, REPL_ACCOUNT);
    put_acct(b, acct);
    buf_put_u64(b, highest);
    repl_msg_end(b, s);
}

void repl_build_position(buf *b, const char *acct, uint64_t modseq, uint32_t crc)
{
    size_t s = repl_msg_begin(b, REPL_POSITION);
    put_acct(b, acct);
    buf_put_u64(b, modseq);
    buf_put_u32(b, crc);
    repl_msg_end(b, s);
}

void repl_build_blob(buf *b, const char *acct, const uint8_t id[32], uint64_t size,
                     uint64_t offset, const void *data, size_t len)
{
    size_t s = repl_msg_begin(b, REPL_BLOB);
    put_acct(b, acct);
    buf_append(b, id, 32);
    buf_put_u64(b, size);
    buf_put_u64(b, offset);
    buf_append(b, data, len);
    repl_msg_end(b, s);
}

void repl_build_frames(buf *b, const char *acct, uint64_t first, uint64_t last,
                       const void *frames, size_t len)
{
    size_t s = repl_msg_begin(b, REPL_FRAMES);
    put_acct(b, acct);
    buf_put_u64(b, first);
    buf_put_u64(b, last);
    buf_append(b, frames, len);
    repl_msg_end(b, s);
}

void repl_build_ack(buf *b, const char *acct, uint64_t modseq)
{
    size_t s = repl_msg_begin(b, REPL_ACK);
    put_acct(b, acct);
    buf_put_u64(b, modseq);
    repl_msg_end(b, s);
}

void repl_build_error(buf *b, const char *acct, int32_t code, const char *reason)
{
    size_t s = repl_msg_begin(b, REPL_ERROR);
    put_acct(b, acct ? acct : "");
    buf_put_u32(b, (uint32_t)code);
    /* The reason is ours, but keep it printable and short as the parser
     * demands, whatever an error message happened to contain. */
    char clean[REPL_TEXT_MAX + 1];
    size_t n = 0;
    for (; reason[n] && n < REPL_TEXT_MAX; n++)
        clean[n] = (unsigned char)reason[n] < 0x20 || reason[n] == 0x7f ? '?' : reason[n];
    repl_put_name(b, clean, n);
    repl_msg_end(b, s);
}

void repl_build_ping(buf *b, enum repl_msg_type type, uint64_t cookie)
{
    size_t s = repl_msg_begin(b, type);
    buf_put_u64(b, cookie);
    repl_msg_end(b, s);
}

void repl_build_digest_req(buf *b, const char *acct, uint64_t cookie)
{
    size_t s = repl_msg_begin(b, REPL_DIGEST_REQ);
    put_acct(b, acct);
    buf_put_u64(b, cookie);
    repl_msg_end(b, s);
}

void repl_build_digest(buf *b, const char *acct, uint64_t cookie, uint64_t modseq, int exists,
                       const uint8_t digest[32])
{
    size_t s = repl_msg_begin(b, REPL_DIGEST);
    put_acct(b, acct);
    buf_put_u64(b, cookie);
    buf_put_u64(b, modseq);
    buf_put_u8(b, exists ? 1 : 0);
    buf_append(b, digest, 32);
    repl_msg_end(b, s);
}

void repl_build_crcs_req(buf *b, const char *acct, uint64_t cookie, uint64_t first,
                         uint32_t max)
{
    size_t s = repl_msg_begin(b, REPL_CRCS_REQ);
    put_acct(b, acct);
    buf_put_u64(b, cookie);
    buf_put_u64(b, first);
    buf_put_u32(b, max);
    repl_msg_end(b, s);
}

void repl_build_crcs(buf *b, const char *acct, uint64_t cookie, uint64_t first,
                     const uint32_t *crcs, uint32_t n)
{
    size_t s = repl_msg_begin(b, REPL_CRCS);
    put_acct(b, acct);
    buf_put_u64(b, cookie);
    buf_put_u64(b, first);
    buf_put_u32(b, n);
    for (uint32_t i = 0; i < n; i++)
        buf_put_u32(b, crcs[i]);
    repl_msg_end(b, s);
}

void repl_build_rejoin(buf *b, const char *acct, uint64_t common, uint64_t epoch)
{
    size_t s = repl_msg_begin(b, REPL_REJOIN);
    put_acct(b, acct);
    buf_put_u64(b, common);
    buf_put_u64(b, epoch);
    repl_msg_end(b, s);
}

void repl_build_salvage(buf *b, const char *acct, uint64_t modseq, uint64_t size,
                        uint64_t offset, uint64_t flags, int64_t internal_date,
                        const char *mailbox, size_t mailbox_len, const char *keywords,
                        size_t keywords_len, const void *chunk, size_t len)
{
    size_t s = repl_msg_begin(b, REPL_SALVAGE);
    put_acct(b, acct);
    buf_put_u64(b, modseq);
    buf_put_u64(b, size);
    buf_put_u64(b, offset);
    buf_put_u64(b, flags);
    buf_put_u64(b, (uint64_t)internal_date);
    repl_put_name(b, mailbox, mailbox_len);
    repl_put_name(b, keywords, keywords_len);
    buf_append(b, chunk, len);
    repl_msg_end(b, s);
}

void repl_build_salvage_end(buf *b, const char *acct, uint64_t common, uint64_t messages,
                            uint64_t others)
{
    size_t s = repl_msg_begin(b, REPL_SALVAGE_END);
    put_acct(b, acct);
    buf_put_u64(b, common);
    buf_put_u64(b, messages);
    buf_put_u64(b, others);
    repl_msg_end(b, s);
}

void repl_build_salvage_ok(buf *b, const char *acct, uint64_t stored, uint64_t dups)
{
    size_t s = repl_msg_begin(b, REPL_SALVAGE_OK);
    put_acct(b, acct);
    buf_put_u64(b, stored);
    buf_put_u64(b, dups);
    repl_msg_end(b, s);
}

void repl_build_move(buf *b, enum repl_msg_type type, const char *acct, uint64_t modseq)
{
    size_t s = repl_msg_begin(b, type);
    put_acct(b, acct);
    if (type != REPL_MOVE_RESET)
        buf_put_u64(b, modseq);
    repl_msg_end(b, s);
}

void repl_msg_account(const repl_msg *m, char *out)
{
    size_t n = m->account_len > REPL_ACCOUNT_MAX ? REPL_ACCOUNT_MAX : m->account_len;
    if (n) /* account is NULL for messages without one */
        memcpy(out, m->account, n);
    out[n] = 0;
}

void repl_auth_mac(const uint8_t *secret, size_t secret_len, enum repl_role sender,
                   const uint8_t nonce_sender[32], const uint8_t nonce_receiver[32],
                   const uint8_t exporter[32], uint8_t out[32])
{
    static const char label[] = "haven-repl-auth-v1";
    uint8_t msg[sizeof(label) + 1 + 96];
    memcpy(msg, label, sizeof(label));
    msg[sizeof(label)] = (uint8_t)sender;
    memcpy(msg + sizeof(label) + 1, nonce_sender, 32);
    memcpy(msg + sizeof(label) + 33, nonce_receiver, 32);
    memcpy(msg + sizeof(label) + 65, exporter, 32);
    unsigned int n = 32;
    HMAC(EVP_sha256(), secret, (int)secret_len, msg, sizeof(msg), out, &n);
}
