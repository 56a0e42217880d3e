/*
 * buf.h - a growable byte buffer that always knows its length.
 *
 * Used everywhere bytes are assembled: log records, protocol replies,
 * index checkpoints. The data is kept NUL-terminated for convenience but
 * may hold NUL bytes itself. Allocation failure aborts (there is no sane
 * way on; see buf_* callers never checking for NULL).
 */
#ifndef HV_BUF_H
#define HV_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct buf {
    uint8_t *data;
    size_t len;
    size_t cap;
} buf;

void buf_init(buf *b);
void buf_free(buf *b);
void buf_reset(buf *b);                 /* len = 0, keeps memory */
void buf_reserve(buf *b, size_t extra); /* ensure room for extra bytes */
void buf_append(buf *b, const void *p, size_t n);
void buf_append_str(buf *b, const char *s);
void buf_printf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_put_u8(buf *b, uint8_t v);
void buf_put_u16(buf *b, uint16_t v);   /* little-endian */
void buf_put_u32(buf *b, uint32_t v);
void buf_put_u64(buf *b, uint64_t v);

/* Little-endian loads/stores for fixed-layout on-disk formats. */
static inline uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t le64(const uint8_t *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }
static inline void st16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void st32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void st64(uint8_t *p, uint64_t v) { st32(p, (uint32_t)v); st32(p + 4, (uint32_t)(v >> 32)); }

/* A bounds-checked reader over a byte range: every get fails cleanly
 * (sets ok = 0 and returns 0) instead of reading past the end. */
typedef struct rd {
    const uint8_t *p;
    size_t left;
    int ok;
} rd;

static inline void rd_init(rd *r, const void *p, size_t n) { r->p = p; r->left = n; r->ok = 1; }
const uint8_t *rd_bytes(rd *r, size_t n);
uint8_t rd_u8(rd *r);
uint16_t rd_u16(rd *r);
uint32_t rd_u32(rd *r);
uint64_t rd_u64(rd *r);

#endif
