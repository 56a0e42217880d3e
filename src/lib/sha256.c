/* sha256.c - thin wrapper over OpenSSL's EVP digest; see sha256.h. */
#include "lib/sha256.h"

#include <openssl/evp.h>
#include <stdlib.h>

struct sha256_ctx {
    EVP_MD_CTX *md;
};

sha256_ctx *sha256_new(void)
{
    sha256_ctx *c = malloc(sizeof(*c));
    if (!c)
        abort();
    c->md = EVP_MD_CTX_new();
    if (!c->md || EVP_DigestInit_ex(c->md, EVP_sha256(), NULL) != 1)
        abort();
    return c;
}

void sha256_update(sha256_ctx *c, const void *p, size_t n) { EVP_DigestUpdate(c->md, p, n); }

void sha256_final(sha256_ctx *c, uint8_t out[32])
{
    unsigned int len = 32;
    EVP_DigestFinal_ex(c->md, out, &len);
    EVP_MD_CTX_free(c->md);
    free(c);
}

void sha256(const void *p, size_t n, uint8_t out[32])
{
    unsigned int len = 32;
    EVP_Digest(p, n, out, &len, EVP_sha256(), NULL);
}

void hex_encode(const uint8_t *in, size_t n, char *out)
{
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[in[i] >> 4];
        out[2 * i + 1] = d[in[i] & 15];
    }
    out[2 * n] = 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int hex_decode(const char *in, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int h = hexval(in[2 * i]), l = h < 0 ? -1 : hexval(in[2 * i + 1]);
        if (h < 0 || l < 0)
            return -1;
        out[i] = (uint8_t)(h << 4 | l);
    }
    return in[2 * n] == 0 ? 0 : -1;
}
