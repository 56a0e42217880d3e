/* buf.c - growable buffers and bounded readers; see buf.h. */
#include "lib/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void buf_init(buf *b) { b->data = NULL; b->len = b->cap = 0; }

void buf_free(buf *b)
{
    free(b->data);
    buf_init(b);
}

void buf_reset(buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = 0;
}

void buf_reserve(buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1)
        cap *= 2;
    uint8_t *p = realloc(b->data, cap);
    if (!p)
        abort();
    b->data = p;
    b->cap = cap;
}

void buf_append(buf *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
}

void buf_append_str(buf *b, const char *s) { buf_append(b, s, strlen(s)); }

void buf_printf(buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void buf_put_u8(buf *b, uint8_t v) { buf_append(b, &v, 1); }
void buf_put_u16(buf *b, uint16_t v) { uint8_t t[2]; st16(t, v); buf_append(b, t, 2); }
void buf_put_u32(buf *b, uint32_t v) { uint8_t t[4]; st32(t, v); buf_append(b, t, 4); }
void buf_put_u64(buf *b, uint64_t v) { uint8_t t[8]; st64(t, v); buf_append(b, t, 8); }

const uint8_t *rd_bytes(rd *r, size_t n)
{
    if (!r->ok || r->left < n) {
        r->ok = 0;
        return NULL;
    }
    const uint8_t *p = r->p;
    r->p += n;
    r->left -= n;
    return p;
}

uint8_t rd_u8(rd *r) { const uint8_t *p = rd_bytes(r, 1); return p ? p[0] : 0; }
uint16_t rd_u16(rd *r) { const uint8_t *p = rd_bytes(r, 2); return p ? le16(p) : 0; }
uint32_t rd_u32(rd *r) { const uint8_t *p = rd_bytes(r, 4); return p ? le32(p) : 0; }
uint64_t rd_u64(rd *r) { const uint8_t *p = rd_bytes(r, 8); return p ? le64(p) : 0; }
