/*
 * sha256.h - SHA-256 through OpenSSL, for blob names and digests.
 */
#ifndef HV_SHA256_H
#define HV_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct sha256_ctx sha256_ctx;

sha256_ctx *sha256_new(void);
void sha256_update(sha256_ctx *c, const void *p, size_t n);
void sha256_final(sha256_ctx *c, uint8_t out[32]); /* also frees c */
void sha256(const void *p, size_t n, uint8_t out[32]);

/* 64 lowercase hex digits plus NUL. */
void hex_encode(const uint8_t *in, size_t n, char *out);
int hex_decode(const char *in, uint8_t *out, size_t n); /* 0 or -1 */

#endif
