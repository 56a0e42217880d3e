/*
 * record.c - the byte layout of account log records.
 *
 * A frame is: u32 body length, u32 CRC32C (over the length field and the
 * body), then the body. The body starts with a 24-byte header (type,
 * version, reserved, mailbox id, modseq, wall-clock milliseconds) followed
 * by the kind's fields; all integers little-endian. docs/store-format.md is
 * the reference; keep both in step.
 */
#include <errno.h>
#include <string.h>

#include "lib/crc32c.h"
#include "store/store_internal.h"

uint32_t rec_crc(const uint8_t *len_field, const uint8_t *body, size_t len)
{
    return crc32c(crc32c(0, len_field, 4), body, len);
}

static void put_name(buf *b, const char *s, size_t n)
{
    buf_put_u16(b, (uint16_t)n);
    buf_append(b, s, n);
}

static void put_ranges(buf *b, const store_uid_range *r, size_t n)
{
    buf_put_u32(b, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        buf_put_u32(b, r[i].lo);
        buf_put_u32(b, r[i].hi);
    }
}

void rec_encode(buf *out, const store_record *r)
{
    size_t start = out->len;
    buf_put_u32(out, 0); /* length, patched below */
    buf_put_u32(out, 0); /* crc */
    int inline_body = r->type == STORE_REC_APPEND && r->body;
    buf_put_u8(out, (uint8_t)(inline_body ? STORE_REC_APPEND_INLINE : r->type));
    buf_put_u8(out, REC_VERSION);
    int has_did = r->type == STORE_REC_APPEND && r->delivery_id && r->delivery_id_len;
    buf_put_u16(out, has_did ? REC_FLAG_DELIVERY_ID : 0);
    buf_put_u32(out, r->mailbox);
    buf_put_u64(out, r->modseq);
    buf_put_u64(out, (uint64_t)r->time_ms);
    switch (r->type) {
    case STORE_REC_MAILBOX_CREATE:
        buf_put_u32(out, r->uidvalidity);
        buf_put_u32(out, r->special_use);
        put_name(out, r->name, r->name_len);
        break;
    case STORE_REC_MAILBOX_RENAME:
        put_name(out, r->name, r->name_len);
        break;
    case STORE_REC_MAILBOX_DELETE:
        break;
    case STORE_REC_APPEND:
    case STORE_REC_APPEND_INLINE:
        buf_put_u32(out, r->uid);
        buf_put_u64(out, r->flags);
        buf_put_u64(out, (uint64_t)r->internal_date);
        buf_put_u64(out, r->size);
        buf_append(out, r->blob.b, 32);
        if (has_did)
            put_name(out, r->delivery_id, r->delivery_id_len);
        if (inline_body)
            buf_append(out, r->body, (size_t)r->size);
        break;
    case STORE_REC_FLAGS:
        buf_put_u8(out, (uint8_t)r->mode);
        buf_put_u8(out, 0);
        buf_put_u16(out, 0);
        buf_put_u64(out, r->flags);
        put_ranges(out, r->ranges, r->nranges);
        break;
    case STORE_REC_EXPUNGE:
        put_ranges(out, r->ranges, r->nranges);
        break;
    case STORE_REC_SUBSCRIBE:
        buf_put_u8(out, (uint8_t)r->mode);
        put_name(out, r->name, r->name_len);
        break;
    case STORE_REC_SETTING:
        put_name(out, r->name, r->name_len);
        buf_put_u32(out, (uint32_t)r->value_len);
        buf_append(out, r->value, r->value_len);
        break;
    case STORE_REC_KEYWORD:
        buf_put_u8(out, (uint8_t)r->keyword_bit);
        put_name(out, r->name, r->name_len);
        break;
    case STORE_REC_CHECKPOINT:
        break;
    }
    size_t body_len = out->len - start - REC_FRAME_HDR;
    uint8_t *f = out->data + start;
    st32(f, (uint32_t)body_len);
    st32(f + 4, rec_crc(f, f + REC_FRAME_HDR, body_len));
}

static int get_name(rd *r, const char **s, size_t *n)
{
    *n = rd_u16(r);
    *s = (const char *)rd_bytes(r, *n);
    return r->ok ? 0 : -1;
}

static int get_ranges(rd *r, store_record *out, buf *scratch)
{
    uint32_t n = rd_u32(r);
    if (!r->ok || (uint64_t)n * 8 > r->left)
        return -1;
    buf_reset(scratch);
    buf_reserve(scratch, (size_t)n * sizeof(store_uid_range));
    store_uid_range *rg = (store_uid_range *)scratch->data;
    for (uint32_t i = 0; i < n; i++) {
        rg[i].lo = rd_u32(r);
        rg[i].hi = rd_u32(r);
        if (rg[i].lo > rg[i].hi || rg[i].lo == 0 || (i && rg[i].lo <= rg[i - 1].hi))
            return -1; /* ranges are sorted, disjoint and non-empty */
    }
    out->ranges = rg;
    out->nranges = n;
    return r->ok ? 0 : -1;
}

int rec_decode(const uint8_t *body, size_t len, store_record *out, buf *scratch)
{
    rd r;
    rd_init(&r, body, len);
    memset(out, 0, sizeof(*out));
    out->type = rd_u8(&r);
    if (rd_u8(&r) != REC_VERSION)
        return -EINVAL;
    uint16_t rflags = rd_u16(&r);
    if (rflags & ~REC_FLAG_DELIVERY_ID ||
        (rflags && out->type != STORE_REC_APPEND && out->type != STORE_REC_APPEND_INLINE))
        return -EINVAL; /* a bit this version does not know: never guess */
    out->mailbox = rd_u32(&r);
    out->modseq = rd_u64(&r);
    out->time_ms = (int64_t)rd_u64(&r);
    if (!r.ok)
        return -EINVAL;
    int bad = 0;
    switch (out->type) {
    case STORE_REC_MAILBOX_CREATE:
        out->uidvalidity = rd_u32(&r);
        out->special_use = rd_u32(&r);
        bad = get_name(&r, &out->name, &out->name_len);
        break;
    case STORE_REC_MAILBOX_RENAME:
        bad = get_name(&r, &out->name, &out->name_len);
        break;
    case STORE_REC_MAILBOX_DELETE:
    case STORE_REC_CHECKPOINT:
        break;
    case STORE_REC_APPEND:
    case STORE_REC_APPEND_INLINE: {
        out->uid = rd_u32(&r);
        out->flags = rd_u64(&r);
        out->internal_date = (int64_t)rd_u64(&r);
        out->size = rd_u64(&r);
        const uint8_t *b = rd_bytes(&r, 32);
        if (b)
            memcpy(out->blob.b, b, 32);
        if (rflags & REC_FLAG_DELIVERY_ID) {
            bad = get_name(&r, &out->delivery_id, &out->delivery_id_len) ||
                  out->delivery_id_len == 0 || out->delivery_id_len > STORE_DELIVERY_ID_MAX;
        }
        if (!bad && out->type == STORE_REC_APPEND_INLINE) {
            out->body = out->size <= REC_MAX_BODY ? rd_bytes(&r, (size_t)out->size) : NULL;
            bad = out->body == NULL;
            out->type = STORE_REC_APPEND;
        }
        break;
    }
    case STORE_REC_FLAGS:
        out->mode = rd_u8(&r);
        rd_u8(&r);
        rd_u16(&r);
        out->flags = rd_u64(&r);
        bad = get_ranges(&r, out, scratch) || out->mode > STORE_FLAGS_REPLACE;
        break;
    case STORE_REC_EXPUNGE:
        bad = get_ranges(&r, out, scratch);
        break;
    case STORE_REC_SUBSCRIBE:
        out->mode = rd_u8(&r);
        bad = get_name(&r, &out->name, &out->name_len);
        break;
    case STORE_REC_SETTING: {
        bad = get_name(&r, &out->name, &out->name_len);
        out->value_len = rd_u32(&r);
        out->value = (const char *)rd_bytes(&r, out->value_len);
        break;
    }
    case STORE_REC_KEYWORD:
        out->keyword_bit = rd_u8(&r);
        bad = get_name(&r, &out->name, &out->name_len) ||
              out->keyword_bit < STORE_KEYWORD_FIRST || out->keyword_bit > 63;
        break;
    default:
        return -EINVAL;
    }
    if (bad || !r.ok || r.left != 0)
        return -EINVAL;
    return 0;
}

const char *rec_type_name(int type)
{
    static const char *names[] = {"?", "mailbox-create", "mailbox-rename", "mailbox-delete",
                                  "append", "flags", "expunge", "subscribe", "setting",
                                  "keyword", "checkpoint"};
    return type >= 1 && type <= 10 ? names[type] : type == 11 ? "append" : "unknown";
}
